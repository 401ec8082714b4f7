/* Token masks: a walk of the vocabulary's byte trie with the matcher's memoized transitions,
 * skipping every subtree whose prefix no stack accepts, behind the grammar's mask cache. */
#include <stdlib.h>
#include <string.h>

#include "gram_impl.h"

/* Sets the bits of every trie token whose bytes the current state accepts (SL_ERR_NOMEM: see
 * gram_fail). Each node costs a lookup in the memo row of its parent's state (computed on first
 * use); a dead transition skips the node's whole subtree. A subtree whose bytes all lead the
 * state back to itself (plain text inside a string: its ASCII bytes loop, and so do whole UTF-8
 * characters) is accepted whole without walking it: its tokens are a range of pre_tok. Only big
 * nodes (gram_impl.h) are asked, the rest costs one test of a byte already loaded. */
static sl_status walk(sl_gram_matcher *m, uint32_t *bits, uint64_t *visited)
{
    const sl_gram_vocab *v = m->v;
    const gram_node *node = v->node;
    const uint8_t *cls = m->g->cls;
    const int32_t *row = m->row;
    const uint32_t sh = m->row_shift;
    uint32_t *st = m->walk; /* st[d]: the state after the first d bytes of the current path */
    uint64_t seen = 0;
    uint32_t bi = 0; /* big[bi]: the first big node not before i (nodes are visited ascending) */
    st[0] = m->state;
    for (uint32_t i = 0; i < v->n_nodes;) {
        gram_node x = node[i];
        uint32_t c = cls[x.byte];
        int32_t t = row[((size_t)st[x.depth - 1] << sh) + c];
        seen++;
        if (t < 0) { /* first use of this transition (may rebuild the memo: reload the rows) */
            if ((t = (int32_t)gram_next(m, st[x.depth - 1], c, st, x.depth)) == (int32_t)GRAM_NONE)
                return SL_ERR_NOMEM;
            row = m->row;
        }
        if (t == GRAM_DEAD) {
            i = v->end[i];
            continue;
        }
        st[x.depth] = (uint32_t)t;
        if (x.below) {
            while (v->big[bi].node < i)
                bi++;
            const gram_big *b = &v->big[bi];
            const gram_loop *l = gram_state_loop(m, (uint32_t)t);
            row = m->row;
            if (l && !(b->ascii[0] & ~l->ascii[0]) && !(b->ascii[1] & ~l->ascii[1]) &&
                ((x.below & GRAM_BELOW_ASCII) || ((x.below & GRAM_BELOW_UTF8) && l->utf8))) {
                for (uint32_t k = b->tok_lo; k < b->tok_hi; k++)
                    bits[v->pre_tok[k] >> 5] |= 1u << (v->pre_tok[k] & 31);
                i = v->end[i];
                continue;
            }
        }
        if (x.tok >= 0)
            bits[x.tok >> 5] |= 1u << (x.tok & 31);
        else if (x.tok < -1)
            for (uint32_t k = v->dup_off[-2 - x.tok]; k < v->dup_off[-1 - x.tok]; k++)
                bits[v->dup_id[k] >> 5] |= 1u << (v->dup_id[k] & 31);
        i++;
    }
    *visited = seen;
    return SL_OK;
}

sl_status sl_gram_matcher_fill_mask(sl_gram_matcher *m, uint32_t *bits, sl_err *e)
{
    const sl_gram_vocab *v = m->v;
    if (!v) return sl_err_set(e, SL_ERR_INVALID, "grammar matcher has no vocabulary");
    size_t words = sl_gram_vocab_mask_words(v);
    memset(bits, 0, words * sizeof *bits);
    m->stats.masks++;
    if (m->ended) return SL_OK;
    sl_gram *g = m->g;
    /* the key: the vocabulary, then the state's canonical stacks */
    m->key.n = 0;
    if (gram_words_push(&m->key, (uint32_t)v->uid) || gram_words_push(&m->key, (uint32_t)(v->uid >> 32)) ||
        gram_state_key(m, m->state, &m->key))
        return sl_err_set(e, SL_ERR_NOMEM, "grammar mask: out of memory");
    size_t key_bytes = m->key.n * sizeof *m->key.v;
    uint64_t h = gram_hash(m->key.v, key_bytes);
    pthread_mutex_lock(&g->mu);
    gram_lru_entry *x = gram_lru_get(&g->masks, h, m->key.v, key_bytes);
    if (x) memcpy(bits, x->value, words * sizeof *bits);
    int caching = g->masks.limit > 0;
    pthread_mutex_unlock(&g->mu);
    if (x) {
        m->stats.mask_hits++;
        return SL_OK;
    }
    uint64_t visited = 0;
    if (walk(m, bits, &visited)) return gram_fail(m, e);
    m->stats.trie_nodes += visited;
    if (gram_state_can_end(m, m->state))
        for (int k = 0; k < v->n_eos; k++)
            bits[v->eos[k] >> 5] |= 1u << (v->eos[k] & 31);
    uint32_t *copy = caching ? malloc(words * sizeof *copy) : NULL;
    if (!copy) return SL_OK; /* the cache is an optimization: no room, no entry */
    memcpy(copy, bits, words * sizeof *copy);
    pthread_mutex_lock(&g->mu);
    /* another matcher may have put the same state meanwhile: keep the first */
    if (gram_lru_get(&g->masks, h, m->key.v, key_bytes) ||
        gram_lru_put(&g->masks, h, m->key.v, key_bytes, copy,
                     words * sizeof *copy + key_bytes + sizeof(gram_lru_entry)))
        free(copy);
    pthread_mutex_unlock(&g->mu);
    return SL_OK;
}

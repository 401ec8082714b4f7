/* Byte-level BPE: the tables of an sl_tok (id maps, merge slots), its
 * lookups and its release. See tokenizer.h for the contract and tokenizer_impl.h for the
 * layout; encoding is in tokenizer_encode.c, loading tokenizer.json in tokenizer_load.c. */
#define XXH_INLINE_ALL

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "tokenizer_impl.h"

/* ---- byte string -> id maps: see tokenizer_impl.h ---- */

static uint64_t key_hash(const void *p, size_t n)
{
    return XXH3_64bits(p, n);
}

int sl_tok_idmap_init(idmap *m, size_t n_keys)
{
    uint32_t cap = 1024;
    while (cap < n_keys * 2)
        cap *= 2; /* load <= 0.5 */
    m->slot = calloc(cap, sizeof *m->slot);
    m->mask = cap - 1;
    return m->slot ? 0 : -1;
}

int32_t sl_tok_idmap_find(const idmap *m, const keyset *k, const void *p, size_t n)
{
    uint64_t h = key_hash(p, n);
    for (uint32_t i = (uint32_t)h & m->mask;; i = (i + 1) & m->mask) {
        uint64_t s = m->slot[i];
        if (!s) return -1;
        if (s >> 32 != h >> 32) continue;
        int32_t id = (int32_t)(uint32_t)s - 1;
        uint32_t a = k->off[id], len = k->off[id + 1] - a - k->pad;
        if (len == n && !memcmp(k->base + a, p, n)) return id;
    }
}

void sl_tok_idmap_put(idmap *m, const keyset *k, int32_t id)
{
    const uint8_t *p = k->base + k->off[id];
    size_t n = k->off[id + 1] - k->off[id] - k->pad;
    uint64_t h = key_hash(p, n);
    for (uint32_t i = (uint32_t)h & m->mask;; i = (i + 1) & m->mask) {
        uint64_t s = m->slot[i];
        if (s && s >> 32 == h >> 32) {
            int32_t old = (int32_t)(uint32_t)s - 1;
            uint32_t a = k->off[old], len = k->off[old + 1] - a - k->pad;
            if (len != n || memcmp(k->base + a, p, n)) continue;
        } else if (s)
            continue;
        m->slot[i] = (h >> 32) << 32 | (uint32_t)(id + 1);
        return;
    }
}


/* ---- merges: see tokenizer_impl.h ---- */

uint64_t sl_tok_merge_slot(const sl_tok *t, uint64_t key)
{
    uint64_t mask = UINT64_MAX >> t->merge_shift;
    uint64_t i = (key * 0x9E3779B97F4A7C15ull) >> t->merge_shift;
    while (t->merges[i] != SLOT_EMPTY && t->merges[i] >> RANK_BITS != key)
        i = (i + 1) & mask;
    return i;
}

int sl_tok_ids_push(sl_tok_ids *ids, int32_t id)
{
    if (ids->n == ids->cap) {
        size_t cap = ids->cap ? ids->cap * 2 : 256;
        int32_t *v = realloc(ids->v, cap * sizeof *v);
        if (!v) return -1;
        ids->v = v;
        ids->cap = cap;
    }
    ids->v[ids->n++] = id;
    return 0;
}

void sl_tok_ids_free(sl_tok_ids *ids)
{
    free(ids->v);
    *ids = (sl_tok_ids){0};
}

int sl_tok_spans_push(sl_tok_spans *s, size_t start, size_t end)
{
    if (start >= end) return 0;
    if (s->n && s->v[s->n - 1].end == start) {
        s->v[s->n - 1].end = end;
        return 0;
    }
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        sl_tok_span *v = realloc(s->v, cap * sizeof *v);
        if (!v) return -1;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = (sl_tok_span){start, end};
    return 0;
}

void sl_tok_spans_free(sl_tok_spans *s)
{
    free(s->v);
    *s = (sl_tok_spans){0};
}

/* ======================================================================== lookups */

int32_t sl_tok_vocab_size(const sl_tok *t)
{
    return t->n_ids;
}

int32_t sl_tok_token_id(const sl_tok *t, const char *token)
{
    keyset k = str_keys(t);
    return sl_tok_idmap_find(&t->by_str, &k, token, strlen(token));
}

static int id_ok(const sl_tok *t, int32_t id)
{
    return id >= 0 && id < t->n_ids && (t->flags[id] & TOK_PRESENT);
}

const char *sl_tok_token_str(const sl_tok *t, int32_t id)
{
    return id_ok(t, id) ? t->str + t->str_off[id] : NULL;
}

const uint8_t *sl_tok_token_bytes(const sl_tok *t, int32_t id, size_t *len)
{
    if (!id_ok(t, id)) return NULL;
    *len = t->raw_off[id + 1] - t->raw_off[id];
    return t->raw + t->raw_off[id];
}

int sl_tok_is_special(const sl_tok *t, int32_t id)
{
    return id_ok(t, id) && (t->flags[id] & TOK_SPECIAL);
}



void sl_tok_free(sl_tok *t)
{
    if (!t) return;
    free(t->flags);
    free(t->str);
    free(t->str_off);
    free(t->raw);
    free(t->raw_off);
    free(t->by_str.slot);
    free(t->by_raw.slot);
    free(t->merges);
    free(t->merge_id);
    free(t->raw_added.tok);
    free(t->norm_added.tok);
    free(t->added_text);
    free(t->nfc_unsafe);
    pcre2_code_free(t->re);
    pcre2_match_context_free(t->re_ctx);
    free(t);
}

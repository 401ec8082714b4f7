/* gram_impl.h: the layout of a compiled grammar and the helpers the grammar files share.
 * Not a public header: only the files of common/grammar include it.
 *
 * A compiled grammar is a flat array of elements. Rule r has alternatives
 * alt_pos[alt_off[r] .. alt_off[r+1]); each is a run of elements ended by GEL_END. An element
 * matches one byte out of a 256-bit set (GEL_BYTES) or a whole rule (GEL_REF). Character classes
 * and literals are compiled to bytes at compile time: a class becomes a rule whose alternatives
 * are its UTF-8 byte sequences ([a-zé] -> [a-z] | C3 A9), so the matcher never decodes UTF-8 and
 * a token that stops inside a character is just a stack in the middle of a sequence.
 *
 * The bytes that no set tells apart form one byte class (cls[b]); the matcher memoizes its
 * transitions per class, so a state's row has n_cls entries instead of 256. */
#ifndef SL_GRAM_IMPL_H
#define SL_GRAM_IMPL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "grammar.h"

enum { GEL_END, GEL_BYTES, GEL_REF };

typedef struct gel {
    uint32_t kind : 2;
    uint32_t arg : 30; /* GEL_BYTES: index into set; GEL_REF: rule */
} gel;

#define GRAM_NONE UINT32_MAX

/* ---- open-addressing map from a 64-bit hash to a uint32 id ----
 * The caller resolves collisions (equal hashes of different keys) by comparing the keys the
 * ids stand for:
 *   for (uint32_t i = gram_map_first(m, h); m->val[i] != GRAM_NONE; i = gram_map_after(m, i))
 *       if (m->key[i] == h && same_key(m->val[i])) return m->val[i];
 */
typedef struct gram_map {
    uint64_t *key;
    uint32_t *val; /* GRAM_NONE: empty slot */
    uint32_t mask, n;
} gram_map;

static inline uint32_t gram_map_first(const gram_map *m, uint64_t h)
{
    return (uint32_t)(h ^ h >> 32) & m->mask;
}
static inline uint32_t gram_map_after(const gram_map *m, uint32_t i)
{
    return (i + 1) & m->mask;
}
/* 0, or -1 when out of memory. */
int gram_map_init(gram_map *m, uint32_t cap);
/* Adds (h, val) without looking for it first; grows at half load. 0 or -1 (out of memory). */
int gram_map_put(gram_map *m, uint64_t h, uint32_t val);
void gram_map_clear(gram_map *m);
void gram_map_free(gram_map *m);
uint64_t gram_hash(const void *p, size_t n);

/* ---- LRU of byte-string keys to values with a cost (the caller's unit), bounded by the total ----
 * Not locked: the cache that embeds it holds its own mutex around every call. */
typedef struct gram_lru_entry {
    struct gram_lru_entry *hnext;       /* hash chain */
    struct gram_lru_entry *prev, *next; /* recency list, most recent first */
    uint64_t hash;
    size_t key_len, cost;
    void *value;
    uint8_t key[]; /* key_len bytes */
} gram_lru_entry;

typedef struct gram_lru {
    gram_lru_entry **bucket;
    uint32_t n_bucket; /* power of two */
    uint32_t n;
    gram_lru_entry *head, *tail;
    size_t cost, limit;
    void (*drop)(void *value); /* frees an evicted entry's value */
} gram_lru;

void gram_lru_init(gram_lru *l, size_t limit, void (*drop)(void *value));
/* The entry of key (made most recent), or NULL. */
gram_lru_entry *gram_lru_get(gram_lru *l, uint64_t hash, const void *key, size_t key_len);
/* Inserts key -> value (key copied; the caller checked it is absent), then evicts the least
 * recent entries until the cost is within the limit, the new one last. A value that alone
 * exceeds the limit is dropped at once. 0, or -1 when out of memory (value not taken). */
int gram_lru_put(gram_lru *l, uint64_t hash, const void *key, size_t key_len, void *value,
                 size_t cost);
/* Evicts entries until the cost is within limit (which becomes the new limit). */
void gram_lru_set_limit(gram_lru *l, size_t limit);
void gram_lru_free(gram_lru *l);

/* ---- the compiled grammar ---- */

struct sl_gram {
    atomic_int refs;
    gel *el;
    uint32_t n_el;
    uint32_t n_rules, root;
    uint32_t *alt_off; /* [n_rules + 1] into alt_pos */
    uint32_t *alt_pos; /* element index where each alternative starts */
    uint64_t (*set)[4]; /* byte sets of the GEL_BYTES elements */
    uint32_t n_sets;
    uint8_t cls[256];      /* byte -> byte class */
    uint8_t cls_byte[256]; /* byte class -> one byte of it */
    uint32_t n_cls;
    /* The mask cache: keyed by vocabulary id + the state's canonical stacks
     * (gram_mask.c). Only part of the grammar that changes after compiling. */
    pthread_mutex_t mu;
    gram_lru masks;
};

static inline int gram_set_has(const sl_gram *g, uint32_t set, unsigned b)
{
    return (int)(g->set[set][b >> 6] >> (b & 63) & 1);
}

/* ---- the vocabulary and its byte trie (gram_vocab.c) ----
 * The trie is stored in preorder: node i's subtree is [i, end[i]). A node holds what the mask
 * walk reads for every node, in 8 bytes: its last byte, its depth (the length of the byte string
 * it spells, >= 1) and the token that ends there: tok >= 0 one token, -1 none, tok <= -2 several
 * tokens with the same bytes, dup_id[dup_off[-2 - tok] .. dup_off[-1 - tok]).
 *
 * For skipping subtrees (gram_mask.c), a node with at least GRAM_BIG_NODES nodes in its
 * subtree says what its descendants' bytes are, read from just after it to each token's end:
 * whether they are all ASCII (GRAM_BELOW_ASCII) or all UTF-8 from a character boundary, the
 * last character of a token possibly unfinished (GRAM_BELOW_UTF8); big[] (by node, ascending)
 * has the set of their ASCII bytes and the subtree's tokens, pre_tok[tok_lo .. tok_hi) (the
 * trie's tokens in preorder). Smaller nodes have below == 0. */
#define GRAM_BIG_NODES 32
enum { GRAM_BELOW_BIG = 1, GRAM_BELOW_ASCII = 2, GRAM_BELOW_UTF8 = 4 };

typedef struct gram_big {
    uint32_t node, tok_lo, tok_hi;
    uint64_t ascii[2]; /* bit b of word b / 64: ASCII byte b occurs below the node */
} gram_big;

typedef struct gram_node {
    uint8_t byte;
    uint8_t below; /* GRAM_BELOW_* */
    uint16_t depth;
    int32_t tok;
} gram_node;

struct sl_gram_vocab {
    atomic_int refs;
    uint64_t uid; /* distinct per vocabulary made in this process: part of the mask keys */
    int32_t n;
    uint32_t *off; /* [n + 1] into bytes */
    uint8_t *bytes;
    uint8_t *hole; /* 1: never allowed (special, unnamed, padding) */
    int32_t *eos;
    int n_eos;
    gram_node *node;
    uint32_t *end;
    uint32_t n_nodes, max_depth;
    uint32_t *dup_off;
    int32_t *dup_id;
    gram_big *big;
    uint32_t n_big;
    int32_t *pre_tok;
};

/* ---- the matcher (gram_match.c; the mask walk in gram_mask.c reads it) ----
 *
 * A stack is a chain of frames: frame f = (pos[f], up[f]) says "match from element pos[f],
 * then continue with frame up[f]"; frame 0 is the bottom (the root is done). Frames are
 * interned, so equal stacks are equal ids. A state is the sorted set of the stacks the text can
 * be in: each one's top frame sits on a GEL_BYTES element, or is frame 0 (the text may end).
 * States are interned too, and memoized as a DFA: row[s * n_cls + c] is the state after a byte
 * of class c, computed on first use (-1 until then). The memo is bounded (memo_limit): when it
 * grows past that it is rebuilt around the states still in use. */
#define GRAM_DEAD 0u /* the state with no stack: nothing matches */

typedef struct gram_words {
    uint32_t *v;
    size_t n, cap;
} gram_words;
int gram_words_push(gram_words *w, uint32_t x); /* 0, or -1 when out of memory */

/* What a state does with the bytes of plain text (gram_state_loop): the ASCII bytes that lead
 * it back to itself, and whether every UTF-8 character does too (through live states: a
 * token may stop inside one). Inside a JSON string both hold for nearly everything. */
typedef struct gram_loop {
    uint64_t ascii[2];
    uint8_t known, utf8;
} gram_loop;

typedef struct gram_hist {
    uint32_t state;
    int ended;
} gram_hist;

struct sl_gram_matcher {
    sl_gram *g;
    sl_gram_vocab *v; /* may be NULL */
    /* frames */
    uint32_t *f_pos, *f_up, *f_seen; /* f_seen: expansion epoch that last visited the frame */
    uint32_t n_f, cap_f;
    gram_map f_map;
    /* states */
    uint32_t *s_off, *s_len; /* into pool */
    uint32_t n_s, cap_s;
    uint32_t *pool;
    size_t n_pool, cap_pool;
    gram_map s_map;
    int32_t *row;
    gram_loop *loop; /* per state, computed on first use */
    uint32_t row_shift; /* a row has 1 << row_shift entries (>= n_cls): s << row_shift indexes it */
    size_t memo_limit;
    int pinned; /* no rebuild now: state ids held in locals must stay valid */
    /* expansion scratch */
    int too_many; /* the last expansion stopped at SL_GRAM_MAX_STACKS (else: out of memory) */
    uint32_t epoch;
    uint32_t *work, *found;
    uint32_t n_work, cap_work, n_found, cap_found;
    /* where the text is */
    uint32_t start, state;
    int ended; /* an eos token was accepted */
    gram_hist hist[SL_GRAM_MAX_ROLLBACK];
    int hist_n, hist_at;
    sl_gram_stats stats;
    /* fill_mask scratch: the cache key, the state per trie depth */
    gram_words key;
    uint32_t *walk;
};

/* The state after byte class c from state s (not GRAM_DEAD), computing and memoizing it when
 * new. keep[0..n_keep) are states the caller still holds: if the memo is rebuilt they are
 * renumbered in place (s and the matcher's own states always are). GRAM_NONE: see gram_fail. */
uint32_t gram_next(sl_gram_matcher *m, uint32_t s, uint32_t c, uint32_t *keep, int n_keep);
/* The loop summary of state s (which stays valid: the memo is not rebuilt meanwhile); NULL when
 * it cannot be computed (then callers assume no loop). */
const gram_loop *gram_state_loop(sl_gram_matcher *m, uint32_t s);
/* The error for a GRAM_NONE from gram_next: too many stacks or out of memory. */
sl_status gram_fail(const sl_gram_matcher *m, sl_err *e);
/* Appends the canonical content of state s (independent of the matcher's numbering) to key.
 * 0, or -1 when out of memory. */
int gram_state_key(sl_gram_matcher *m, uint32_t s, gram_words *key);

static inline int gram_state_can_end(const sl_gram_matcher *m, uint32_t s)
{
    return m->s_len[s] && m->pool[m->s_off[s]] == 0; /* sorted: frame 0 comes first */
}

/* UTF-8 of code point cp (a Unicode scalar value) into out; returns the length 1..4. */
static inline int gram_utf8_put(uint32_t cp, uint8_t out[4])
{
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xC0 | cp >> 6);
        out[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xE0 | cp >> 12);
        out[1] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | cp >> 18);
    out[1] = (uint8_t)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
    out[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

#endif

/* grammar: GBNF grammars for constrained decoding.
 *
 * A grammar (llama.cpp's GBNF dialect, docs/grammar.md) is compiled once into an immutable
 * sl_gram. A matcher follows one generated sequence through it: it holds the set of pushdown
 * stacks the text so far can be in, advances them byte by byte over UTF-8 (a token may end in
 * the middle of a character), and says which tokens of a vocabulary may come next as a bitmask.
 * The router compiles a request's grammar to check it (a 400 with the parser's message); the
 * worker keeps the compiled grammar in an sl_gram_cache and runs one matcher per request.
 *
 *   sl_err e = {0};
 *   sl_gram *g;
 *   if (sl_gram_compile(text, len, &g, &e) != SL_OK) return reply_400(e.msg); // "3:7: ..."
 *
 *   sl_gram_vocab *v;                       // once per model
 *   sl_gram_vocab_load("tokenizer.json", model_vocab_size, eos_ids, n_eos, &v, &e);
 *
 *   sl_gram_matcher *m;
 *   sl_gram_matcher_new(g, v, &m, &e);       // per request; takes references on g and v
 *   uint32_t *bits = malloc(4 * sl_gram_vocab_mask_words(v));
 *   for (;;) {
 *       sl_gram_matcher_fill_mask(m, bits, &e); // bit id set: token id may come next
 *       int32_t id = sample_with_mask(logits, bits);
 *       if (sl_gram_matcher_accept_token(m, id, &e) != SL_OK) ... // not allowed: state unchanged
 *       if (id is eos || sl_gram_matcher_must_end(m)) break;
 *   }
 *   sl_gram_matcher_free(m);
 *   sl_gram_free(g);
 *
 * Checking text without a vocabulary (tests, converters): sl_gram_matcher_new(g, NULL, ...),
 * then sl_gram_matcher_accept_bytes and sl_gram_matcher_can_end.
 *
 * Threads and ownership: an sl_gram and an sl_gram_vocab are immutable once made and may be
 * shared by any number of threads; both are reference-counted (the maker holds the first
 * reference, _ref adds one, _free drops one and frees at zero). The only mutable part of an
 * sl_gram, its cache of masks, is behind a mutex. A matcher is used by one thread at a time
 * (it is not locked); different matchers of one grammar run in parallel. sl_gram_cache is
 * thread-safe. No call blocks except on those short critical sections; none aborts on bad
 * input: every failure is an sl_status with a message in the sl_err.
 */
#ifndef SL_GRAMMAR_H
#define SL_GRAMMAR_H

#include <stddef.h>
#include <stdint.h>

#include "sl_err.h"

/* Limits of what sl_gram_compile accepts (beyond them: SL_ERR_LIMIT naming the limit). */
#define SL_GRAM_MAX_TEXT (4u << 20)     /* bytes of grammar text */
#define SL_GRAM_MAX_NEST 200            /* nesting depth of ( ) groups */
#define SL_GRAM_MAX_REPEAT 10000        /* m and n of {m,n} */
#define SL_GRAM_MAX_ELEMENTS (1u << 21) /* grammar size once repetitions are expanded */
/* Stacks a matcher state may hold: an ambiguous grammar can double them per byte
 * (e ::= "(" e ")" | "(" e e ")" | "x"); past this a call fails with SL_ERR_LIMIT. */
#define SL_GRAM_MAX_STACKS 65536
/* Tokens a matcher can roll back (sl_gram_matcher_rollback). */
#define SL_GRAM_MAX_ROLLBACK 64

typedef struct sl_gram sl_gram;
typedef struct sl_gram_vocab sl_gram_vocab;
typedef struct sl_gram_matcher sl_gram_matcher;
typedef struct sl_gram_cache sl_gram_cache;

/* ---- grammars ---- */

/* Compiles GBNF text[0..len) (UTF-8; need not be NUL-terminated) with start rule `root`.
 * Errors (SL_ERR_PARSE, SL_ERR_LIMIT, SL_ERR_NOMEM) say where, as "line:column: ..." with what
 * was expected, or name the rule: undefined rules, a missing root, left recursion. */
sl_status sl_gram_compile(const char *text, size_t len, sl_gram **out, sl_err *e);
/* Adds a reference; returns g. */
sl_gram *sl_gram_ref(sl_gram *g);
/* Drops a reference (NULL is a no-op); the last one frees the grammar and its mask cache. */
void sl_gram_free(sl_gram *g);
/* Bounds the grammar's mask cache (bytes of masks and keys; 0 turns it off). The cache is
 * shared by every matcher of the grammar; the default is SL_GRAM_MASK_CACHE_DEFAULT. */
#define SL_GRAM_MASK_CACHE_DEFAULT ((size_t)64 << 20)
void sl_gram_set_mask_cache(sl_gram *g, size_t bytes);

/* ---- vocabularies: token id -> bytes ---- */

/* From explicit byte strings: token i is tok[i][0..len[i]); tok[i] == NULL is a hole, never
 * allowed (use it for special tokens too). eos ids (each < n) are allowed exactly when the
 * grammar can end, whatever their bytes. The strings are copied. */
sl_status sl_gram_vocab_new(const char *const *tok, const size_t *len, int32_t n,
                            const int32_t *eos_ids, int n_eos, sl_gram_vocab **out, sl_err *e);
/* From a Hugging Face tokenizer.json with a ByteLevel decoder (path: the file or the directory
 * holding it). Vocabulary strings are decoded through GPT-2's byte alphabet; added tokens marked
 * "special" are never allowed (except the eos ids), other added tokens match their content text.
 * vocab_size (0: the tokenizer's own) may exceed the tokenizer's size, as a model's embedding
 * often does: the ids past it, and ids the file does not name, are never allowed. */
sl_status sl_gram_vocab_load(const char *path, int32_t vocab_size, const int32_t *eos_ids,
                             int n_eos, sl_gram_vocab **out, sl_err *e);
sl_gram_vocab *sl_gram_vocab_ref(sl_gram_vocab *v);
void sl_gram_vocab_free(sl_gram_vocab *v);
int32_t sl_gram_vocab_size(const sl_gram_vocab *v);
/* uint32_t words of a mask: ceil(size / 32). Bit i of the mask is bits[i / 32] >> (i % 32) & 1. */
size_t sl_gram_vocab_mask_words(const sl_gram_vocab *v);
/* Token id's bytes (valid while v lives), or NULL for holes, special tokens and ids out of
 * range; *len gets the length. */
const uint8_t *sl_gram_vocab_token(const sl_gram_vocab *v, int32_t id, size_t *len);
/* 1 when id is one of v's eos ids. */
int sl_gram_vocab_is_eos(const sl_gram_vocab *v, int32_t id);

/* ---- matchers: one per generated sequence, one thread at a time ---- */

/* A matcher at the start of g. v may be NULL: then only the byte-level calls work (accept_bytes,
 * can_end, must_end, rollback). Takes a reference on g and v, dropped by _free. */
sl_status sl_gram_matcher_new(sl_gram *g, sl_gram_vocab *v, sl_gram_matcher **out, sl_err *e);
void sl_gram_matcher_free(sl_gram_matcher *m);
/* Back to the start of the grammar (rollback history cleared). */
void sl_gram_matcher_reset(sl_gram_matcher *m);

/* Advances by token id's bytes. A token the grammar does not allow here, a hole, a special token
 * or an eos id while the grammar cannot end is SL_ERR_INVALID, and the state is unchanged. An
 * eos id accepted ends the matcher: nothing else is accepted and the mask is empty. Like every
 * call that advances or masks, it can also fail with SL_ERR_LIMIT (SL_GRAM_MAX_STACKS) or
 * SL_ERR_NOMEM, the state unchanged. */
sl_status sl_gram_matcher_accept_token(sl_gram_matcher *m, int32_t id, sl_err *e);
/* Advances by raw bytes (may stop inside a UTF-8 character). All or nothing, like accept_token;
 * the message gives the offset of the first byte that no stack accepts. */
sl_status sl_gram_matcher_accept_bytes(sl_gram_matcher *m, const void *bytes, size_t n,
                                       sl_err *e);
/* 1 when the text so far is a complete sentence of the grammar (root fully matched). */
int sl_gram_matcher_can_end(const sl_gram_matcher *m);
/* 1 when no byte can continue the text (then can_end is 1 too, or the matcher has ended). */
int sl_gram_matcher_must_end(const sl_gram_matcher *m);
/* Writes the allowed tokens of the current state into bits[0..sl_gram_vocab_mask_words(v)):
 * bit id set = token id may come next. eos ids are set exactly when can_end. The result comes
 * from the grammar's mask cache when another matcher (or this one) was in the same state
 * before; otherwise it is computed by walking the vocabulary's byte trie. Fails without a
 * vocabulary (SL_ERR_INVALID), past SL_GRAM_MAX_STACKS (SL_ERR_LIMIT) or out of memory. */
sl_status sl_gram_matcher_fill_mask(sl_gram_matcher *m, uint32_t *bits, sl_err *e);
/* Undoes the last n successful accept_token / accept_bytes calls (n <= SL_GRAM_MAX_ROLLBACK and
 * no more than were made since the start or the last reset; else SL_ERR_LIMIT, unchanged). */
sl_status sl_gram_matcher_rollback(sl_gram_matcher *m, int n, sl_err *e);

/* Bounds the matcher's memo of states and transitions (default SL_GRAM_MEMO_DEFAULT bytes; at
 * most about twice that is allocated). Past it the memo is rebuilt around the states in use:
 * slower masks for a while, same answers. */
#define SL_GRAM_MEMO_DEFAULT ((size_t)16 << 20)
void sl_gram_matcher_set_memo_bytes(sl_gram_matcher *m, size_t bytes);

/* Counters since the matcher was made (for benchmarks and tests). */
typedef struct sl_gram_stats {
    uint64_t masks;       /* fill_mask calls */
    uint64_t mask_hits;   /* of them answered by the grammar's mask cache */
    uint64_t trie_nodes;  /* vocabulary trie nodes visited by the mask walks */
    uint32_t dfa_states;  /* stack sets the matcher knows now (its transition memo) */
    uint32_t dfa_resets;  /* times the memo was rebuilt for its memory bound */
} sl_gram_stats;
void sl_gram_matcher_stats(const sl_gram_matcher *m, sl_gram_stats *s);

/* ---- compiled-grammar cache (thread-safe) ---- */

/* Keeps up to capacity (>= 1) compiled grammars, least recently used evicted, keyed by text. */
sl_status sl_gram_cache_new(int capacity, sl_gram_cache **out, sl_err *e);
/* Frees the cache; grammars it handed out stay valid (they hold their own references). */
void sl_gram_cache_free(sl_gram_cache *c);
/* The cached grammar of text[0..len) with a new reference for the caller, or NULL. */
sl_gram *sl_gram_cache_get(sl_gram_cache *c, const char *text, size_t len);
/* Caches g (compiled from text) and returns a reference for the caller: g's, or that of an equal
 * grammar another thread put first (then g is dropped). Takes over the caller's reference on g. */
sl_gram *sl_gram_cache_put(sl_gram_cache *c, const char *text, size_t len, sl_gram *g);
/* get, else compile and put: what a worker calls per request. */
sl_status sl_gram_cache_compile(sl_gram_cache *c, const char *text, size_t len, sl_gram **out,
                                sl_err *e);

#endif

/* tokenizer_impl.h: the layout of an sl_tok, shared by tokenizer.c (the tables
 * and lookups), tokenizer_encode.c and tokenizer_load.c. Private to the
 * tokenizer module.
 *
 * Layout of an sl_tok (all arrays indexed by token id, filled at load, read-only afterwards):
 *   str/str_off   the tokenizer.json spelling ("Ġthe", "<|im_end|>"), NUL-terminated
 *   raw/raw_off   the bytes the token stands for (byte-level alphabet undone)
 *   flags         TOK_* bits
 * plus two byte-string -> id maps (spellings; raw bytes of the model vocabulary), the merge
 * table (pair of ids -> rank and merged id), the added tokens bucketed by first byte, the
 * compiled pre-tokenizer regex and a bitmap of code points that NFC may change. */
#ifndef SL_TOKENIZER_IMPL_H
#define SL_TOKENIZER_IMPL_H

#define PCRE2_CODE_UNIT_WIDTH 8

#include <pcre2.h>
#include <stddef.h>
#include <stdint.h>

#include "sl_buf.h"
#include "tokenizer.h"

enum {
    TOK_PRESENT = 1, /* the id names a token (ids may have gaps) */
    TOK_SPECIAL = 2, /* added token marked special: dropped by skip_special decoding */
    TOK_ADDED = 4,   /* added token: matched in the text before BPE */
    TOK_WHOLE = 8,   /* vocabulary entry that BPE leaves as one token: encode it without merging */
};

/* Merge table slots pack a pair of ids and a rank into 64 bits. */
#define ID_BITS 20
#define RANK_BITS 24
#define TOK_MAX_IDS ((1 << ID_BITS) - 1) /* larger ids are refused at load */

/* ---- byte string -> id maps ----
 * Open addressing over a power-of-two table; a slot holds the upper half of the key's hash
 * and id + 1 (0 = empty), so a probe compares bytes only when the hashes agree. The keys live
 * in the token arrays, found through the id. */

typedef struct keyset {
    const uint8_t *base;
    const uint32_t *off; /* key of id: base[off[id] .. off[id + 1] - pad) */
    uint32_t pad;        /* 1 when the keys are stored NUL-terminated */
} keyset;

typedef struct idmap {
    uint64_t *slot;
    uint32_t mask;
} idmap;

/* A map for n_keys keys; -1 when out of memory. */
int sl_tok_idmap_init(idmap *m, size_t n_keys);
/* The id whose key is p[0..n), or -1. */
int32_t sl_tok_idmap_find(const idmap *m, const keyset *k, const void *p, size_t n);
/* Maps key(id) to id, replacing an entry with the same key. */
void sl_tok_idmap_put(idmap *m, const keyset *k, int32_t id);

/* ---- merges: (left id, right id) -> rank ----
 * One 64-bit slot per merge: the pair (left << ID_BITS | right) above its rank, the line of
 * the merge in tokenizer.json (lower merges first). The merged token is merge_id[rank]. Small
 * slots keep the table (2 MiB for Qwen) friendly to the cache BPE hammers. */

#define SLOT_EMPTY UINT64_MAX
#define NO_RANK UINT32_MAX

static inline uint64_t sl_tok_pair_key(int32_t a, int32_t b)
{
    return (uint64_t)a << ID_BITS | (uint64_t)b;
}


/* ---- added tokens ---- */

typedef struct added_tok {
    const char *text; /* what is matched: the content, or NFC(content) for normalized tokens */
    uint32_t len;
    int32_t id;
    uint8_t lstrip, rstrip, single_word;
} added_tok;

/* The added tokens of one matching pass, sorted by first byte, longest first within a byte,
 * so the first hit at a position is the leftmost-longest match. */
typedef struct added_set {
    added_tok *tok;
    int n;
    int first[257]; /* tokens starting with byte b: tok[first[b] .. first[b + 1]) */
} added_set;

struct sl_tok {
    int32_t n_ids;
    uint8_t *flags;
    char *str;
    uint32_t *str_off;
    uint8_t *raw;
    uint32_t *raw_off;
    idmap by_str; /* spelling -> id: added tokens win over vocabulary entries, as in HF */
    idmap by_raw; /* bytes -> id, model vocabulary only */
    int32_t byte_id[256];
    uint64_t *merges;
    int merge_shift;   /* table size is 2^(64 - merge_shift) */
    int32_t *merge_id; /* by rank */
    int ignore_merges;
    added_set raw_added;  /* normalized=false: matched in the text as given */
    added_set norm_added; /* normalized=true: matched after NFC */
    char *added_text;     /* storage of the normalized added-token texts */
    int nfc;
    uint8_t *nfc_unsafe; /* bit per code point: NFC may change text containing it */
    pcre2_code *re;      /* pre-tokenizer; NULL: each stretch of text is one piece */
    int re_jit;          /* re is JIT-compiled: match through the direct entry point */
    pcre2_match_context *re_ctx;
};

static inline keyset str_keys(const sl_tok *t)
{
    return (keyset){(const uint8_t *)t->str, t->str_off, 1};
}
static inline keyset raw_keys(const sl_tok *t)
{
    return (keyset){t->raw, t->raw_off, 0};
}

/* Index of the merge slot holding key, or of the empty slot where it belongs. */
uint64_t sl_tok_merge_slot(const sl_tok *t, uint64_t key);
/* Pieces up to this many bytes merge by rescanning an array (quadratic, but cache-friendly and
 * allocation-free); longer ones (whitespace runs, long CJK sentences) use a tournament tree. */
#define BPE_SMALL 128
/* Repeatedly merges the lowest-ranked adjacent pair, leftmost on ties, in sym[0..n) (n at
 * most BPE_SMALL); returns the final symbol count. */
int sl_tok_bpe_small(const sl_tok *t, int32_t *sym, int n);
/* Appends NFC(s[0..n)) as tokenizers computes it to out: utf8proc's NFC on the text between
 * the code points that gained normalization properties after tokenizers' Unicode 9.0 tables
 * (tokenizer_encode.c lists them), which stay as they are (a starter that composes with
 * nothing splits NFC into independent parts). -1 when out of memory. */
int sl_tok_nfc_append(sl_buf *out, const uint8_t *s, size_t n);

#endif

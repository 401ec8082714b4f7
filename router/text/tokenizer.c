/* Byte-level BPE: loading tokenizer.json and encoding. See tokenizer.h for the contract.
 *
 * Layout of an sl_tok (all arrays indexed by token id, filled at load, read-only afterwards):
 *   str/str_off   the tokenizer.json spelling ("Ġthe", "<|im_end|>"), NUL-terminated
 *   raw/raw_off   the bytes the token stands for (byte-level alphabet undone)
 *   flags         TOK_* bits
 * plus two byte-string -> id maps (spellings; raw bytes of the model vocabulary), the merge
 * table (pair of ids -> rank and merged id), the added tokens bucketed by first byte, the
 * compiled pre-tokenizer regex and a bitmap of code points that NFC may change. */
#define PCRE2_CODE_UNIT_WIDTH 8
#define XXH_INLINE_ALL

#include "tokenizer.h"

#include <jansson.h>
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <utf8proc.h>
#include <xxhash.h>

#include "sl_buf.h"
#include "sl_file.h"
#include "utf8.h"

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

/* GPT-2's pattern, used by a ByteLevel pre-tokenizer with use_regex=true */
static const char gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* ---- byte-level alphabet ----
 * GPT-2 spells every byte as a printable code point: bytes that are printable Latin-1 keep
 * their own code point, the other 68 take U+0100.. in byte order. */

static int byte_is_printable(int b)
{
    return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

/* byte_of_cp[cp]: the byte code point cp spells, or -1 (the alphabet ends at U+0143). */
static void byte_alphabet(int16_t byte_of_cp[324])
{
    int extra = 0;
    for (int i = 0; i < 324; i++)
        byte_of_cp[i] = -1;
    for (int b = 0; b < 256; b++)
        byte_of_cp[byte_is_printable(b) ? b : 0x100 + extra++] = (int16_t)b;
}

/* Rust regex's \s (the White_Space property): what lstrip/rstrip of added tokens remove. */
static int cp_is_white_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

/* Rust regex's \w (Alphabetic, marks, decimal digits, connector punctuation, joiners): what
 * single_word added tokens must not touch. Other_Alphabetic outside the marks is only the
 * circled and squared Latin letters. */
static int cp_is_word(uint32_t c)
{
    switch (utf8proc_category((utf8proc_int32_t)c)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_PC:
        return 1;
    default:
        return c == 0x200C || c == 0x200D || (c >= 0x24B6 && c <= 0x24E9) ||
               (c >= 0x1F130 && c <= 0x1F149) || (c >= 0x1F150 && c <= 0x1F169) ||
               (c >= 0x1F170 && c <= 0x1F189);
    }
}

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

static uint64_t key_hash(const void *p, size_t n)
{
    return XXH3_64bits(p, n);
}

static int idmap_init(idmap *m, size_t n_keys)
{
    uint32_t cap = 1024;
    while (cap < n_keys * 2)
        cap *= 2; /* load <= 0.5 */
    m->slot = calloc(cap, sizeof *m->slot);
    m->mask = cap - 1;
    return m->slot ? 0 : -1;
}

static int32_t idmap_find(const idmap *m, const keyset *k, const void *p, size_t n)
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

/* Maps key(id) to id, replacing an entry with the same key. */
static void idmap_put(idmap *m, const keyset *k, int32_t id)
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

/* ---- merges: (left id, right id) -> rank ----
 * One 64-bit slot per merge: the pair (left << ID_BITS | right) above its rank, the line of
 * the merge in tokenizer.json (lower merges first). The merged token is merge_id[rank]. Small
 * slots keep the table (2 MiB for Qwen) friendly to the cache BPE hammers. */

#define SLOT_EMPTY UINT64_MAX
#define NO_RANK UINT32_MAX

static uint64_t pair_key(int32_t a, int32_t b)
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

static keyset str_keys(const sl_tok *t)
{
    return (keyset){(const uint8_t *)t->str, t->str_off, 1};
}
static keyset raw_keys(const sl_tok *t)
{
    return (keyset){t->raw, t->raw_off, 0};
}

/* Index of the slot holding key, or of the empty slot where it belongs. */
static uint64_t merge_slot(const sl_tok *t, uint64_t key)
{
    uint64_t mask = UINT64_MAX >> t->merge_shift;
    uint64_t i = (key * 0x9E3779B97F4A7C15ull) >> t->merge_shift;
    while (t->merges[i] != SLOT_EMPTY && t->merges[i] >> RANK_BITS != key)
        i = (i + 1) & mask;
    return i;
}

/* Rank of merging a with b, or NO_RANK. */
static uint32_t pair_rank(const sl_tok *t, int32_t a, int32_t b)
{
    uint64_t s = t->merges[merge_slot(t, pair_key(a, b))];
    return s == SLOT_EMPTY ? NO_RANK : (uint32_t)(s & ((1u << RANK_BITS) - 1));
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

/* ======================================================================== encoding */

/* Per-call scratch: one encode allocates a handful of buffers, never one per token. */
typedef struct enc enc;
typedef void (*piece_fn)(enc *c, const uint8_t *p, size_t n);

struct enc {
    const sl_tok *t;
    sl_tok_ids *out;
    piece_fn piece;       /* what to do with each pre-tokenized piece: BPE, or record it */
    const uint8_t *start; /* the text, for sl_tok_split's offsets */
    pcre2_match_data *md;
    int32_t *sym, *prev, *next; /* long pieces: symbols as a linked list */
    uint64_t *tree;             /* long pieces: pairs as a tournament tree (bpe_large) */
    size_t cap;                 /* symbols the buffers above hold */
    int oom;
};

/* Pieces up to this many bytes merge by rescanning an array (quadratic, but cache-friendly and
 * allocation-free); longer ones (whitespace runs, long CJK sentences) use a tournament tree. */
#define BPE_SMALL 128

static void emit(enc *c, int32_t id)
{
    if (sl_tok_ids_push(c->out, id)) c->oom = 1;
}

/* Repeatedly merges the lowest-ranked adjacent pair, leftmost on ties, in sym[0..n);
 * returns the final symbol count. */
static int bpe_small(const sl_tok *t, int32_t *sym, int n)
{
    uint32_t rank[BPE_SMALL]; /* rank[i]: merging sym[i] with sym[i + 1] */
    for (int i = 0; i + 1 < n; i++)
        rank[i] = pair_rank(t, sym[i], sym[i + 1]);
    while (n > 1) {
        int best = 0;
        for (int i = 1; i + 1 < n; i++)
            if (rank[i] < rank[best]) best = i;
        if (rank[best] == NO_RANK) break;
        sym[best] = t->merge_id[rank[best]];
        n--;
        memmove(sym + best + 1, sym + best + 2, (size_t)(n - best - 1) * sizeof *sym);
        memmove(rank + best, rank + best + 1, (size_t)(n - best - 1) * sizeof *rank);
        if (best > 0) rank[best - 1] = pair_rank(t, sym[best - 1], sym[best]);
        if (best + 1 < n) rank[best] = pair_rank(t, sym[best], sym[best + 1]);
    }
    return n;
}

/* Sets leaf i of the tournament tree (2p entries, leaves at p..2p) and the minima above it,
 * up to the first that does not change. */
static void tree_set(uint64_t *tree, size_t p, size_t i, uint64_t v)
{
    size_t k = p + i;
    tree[k] = v;
    for (k /= 2; k; k /= 2) {
        uint64_t m = tree[2 * k] < tree[2 * k + 1] ? tree[2 * k] : tree[2 * k + 1];
        if (tree[k] == m) break;
        tree[k] = m;
    }
}

static uint64_t pair_entry(const sl_tok *t, const int32_t *sym, int32_t i, int32_t j)
{
    uint32_t r = pair_rank(t, sym[i], sym[j]);
    return r == NO_RANK ? UINT64_MAX : (uint64_t)r << 32 | (uint32_t)i;
}

/* Same merge order as bpe_small, in O(n log n): the leaves of a tournament tree hold
 * (rank << 32 | position) of the pair starting at each symbol, so its root is the
 * lowest-ranked pair, leftmost on ties. The symbols end up in c->sym, linked by c->next from
 * position 0. */
static void bpe_large(enc *c, int n)
{
    const sl_tok *t = c->t;
    int32_t *sym = c->sym, *prev = c->prev, *next = c->next;
    uint64_t *tree = c->tree;
    size_t p = 1;
    while (p < (size_t)n)
        p *= 2;
    for (int i = 0; i < n; i++) {
        prev[i] = i - 1;
        next[i] = i + 1 < n ? i + 1 : -1;
        tree[p + (size_t)i] = i + 1 < n ? pair_entry(t, sym, i, i + 1) : UINT64_MAX;
    }
    for (size_t k = p + (size_t)n; k < 2 * p; k++)
        tree[k] = UINT64_MAX;
    for (size_t k = p - 1; k >= 1; k--)
        tree[k] = tree[2 * k] < tree[2 * k + 1] ? tree[2 * k] : tree[2 * k + 1];
    while (tree[1] != UINT64_MAX) {
        int32_t i = (int32_t)(uint32_t)tree[1], j = next[i];
        sym[i] = t->merge_id[tree[1] >> 32];
        next[i] = next[j];
        if (next[i] >= 0) prev[next[i]] = i;
        tree_set(tree, p, (size_t)j, UINT64_MAX);
        tree_set(tree, p, (size_t)i, next[i] >= 0 ? pair_entry(t, sym, i, next[i]) : UINT64_MAX);
        if (prev[i] >= 0) tree_set(tree, p, (size_t)prev[i], pair_entry(t, sym, prev[i], i));
    }
}

static int enc_reserve(enc *c, size_t n)
{
    if (n <= c->cap) return 0;
    size_t cap = c->cap ? c->cap : 1024;
    while (cap < n)
        cap *= 2;
    int32_t *s = realloc(c->sym, cap * sizeof *s), *p = NULL, *q = NULL;
    uint64_t *h = NULL;
    if (s) c->sym = s;
    if (s && (p = realloc(c->prev, cap * sizeof *p))) c->prev = p;
    if (p && (q = realloc(c->next, cap * sizeof *q))) c->next = q;
    /* cap is a power of two, so the tree over at most cap leaves has 2 * cap entries */
    if (q && (h = realloc(c->tree, 2 * cap * sizeof *h))) c->tree = h;
    if (!h) return -1;
    c->cap = cap;
    return 0;
}

/* BPE of one pre-tokenized piece, appended to c->out. */
static void bpe_piece(enc *c, const uint8_t *p, size_t n)
{
    const sl_tok *t = c->t;
    if (n == 1) {
        emit(c, t->byte_id[p[0]]);
        return;
    }
    keyset raw = raw_keys(t);
    int32_t id = idmap_find(&t->by_raw, &raw, p, n);
    if (id >= 0 && (t->ignore_merges || (t->flags[id] & TOK_WHOLE))) {
        emit(c, id);
        return;
    }
    if (n <= BPE_SMALL) {
        int32_t sym[BPE_SMALL];
        for (size_t i = 0; i < n; i++)
            sym[i] = t->byte_id[p[i]];
        int m = bpe_small(t, sym, (int)n);
        for (int i = 0; i < m; i++)
            emit(c, sym[i]);
        return;
    }
    if (enc_reserve(c, n)) {
        c->oom = 1;
        return;
    }
    for (size_t i = 0; i < n; i++)
        c->sym[i] = t->byte_id[p[i]];
    bpe_large(c, (int)n);
    for (int32_t i = 0; i >= 0; i = c->next[i])
        emit(c, c->sym[i]);
}

/* Splits s[0..n) with the pre-tokenizer regex ("Isolated": matches and the gaps between them
 * are pieces) and hands every piece to c->piece. */
static sl_status pretokenize(enc *c, const uint8_t *s, size_t n, sl_err *e)
{
    if (!c->t->re) {
        if (n) c->piece(c, s, n);
        return SL_OK;
    }
    size_t pos = 0, from = 0;
    while (from < n && !c->oom) {
        const sl_tok *t = c->t;
        int rc = t->re_jit ? pcre2_jit_match(t->re, s, n, from, 0, c->md, t->re_ctx)
                           : pcre2_match(t->re, s, n, from, PCRE2_NO_UTF_CHECK, c->md, t->re_ctx);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[120];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return sl_err_set(e, SL_ERR_LIMIT, "pre-tokenizer regex failed at byte %zu: %s", from,
                              (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->md);
        size_t ms = ov[0], me = ov[1];
        if (me == ms) { /* an empty match splits nothing: look again one character on */
            from = ms;
            sl_utf8_next(s, &from);
            continue;
        }
        if (ms > pos) c->piece(c, s + pos, ms - pos);
        c->piece(c, s + ms, me - ms);
        pos = from = me;
    }
    if (pos < n && !c->oom) c->piece(c, s + pos, n - pos);
    return SL_OK;
}

/* Finds the leftmost-longest added token in s[from..n); returns its index in set or -1. */
static int added_find(const added_set *set, const uint8_t *s, size_t n, size_t from, size_t *at)
{
    for (size_t i = from; i < n; i++) {
        int b = s[i];
        for (int k = set->first[b]; k < set->first[b + 1]; k++) {
            const added_tok *a = &set->tok[k];
            if (a->len <= n - i && !memcmp(s + i, a->text, a->len)) {
                *at = i;
                return k;
            }
        }
    }
    return -1;
}

typedef sl_status (*stretch_fn)(enc *c, const uint8_t *s, size_t n, sl_err *e);

/* Splits s[0..n) on the tokens of set, emitting their ids and handing the stretches between
 * them to fn. Mirrors tokenizers' AddedVocabulary::find_matches: a single_word token touching a
 * word character is skipped (the search goes on after it), lstrip/rstrip swallow the white
 * space beside a token, and the search resumes at the end of the match itself. */
static sl_status added_split(enc *c, const added_set *set, const uint8_t *s, size_t n,
                             stretch_fn fn, sl_err *e)
{
    size_t done = 0, from = 0, at;
    int k;
    while (set->n && (k = added_find(set, s, n, from, &at)) >= 0) {
        const added_tok *a = &set->tok[k];
        size_t start = at, stop = at + a->len, j;
        from = stop;
        if (a->single_word) {
            size_t q = stop;
            if ((start > 0 && cp_is_word(sl_utf8_prev(s, start, &j))) ||
                (stop < n && cp_is_word(sl_utf8_next(s, &q))))
                continue;
        }
        if (a->lstrip) {
            while (start > 0 && cp_is_white_space(sl_utf8_prev(s, start, &j)))
                start = j;
            if (start < done) start = done; /* already taken by the previous token */
        }
        if (a->rstrip) {
            for (size_t q = stop; q < n && cp_is_white_space(sl_utf8_next(s, &q));)
                stop = q;
        }
        if (start > done) {
            sl_status st = fn(c, s + done, start - done, e);
            if (st != SL_OK) return st;
        }
        emit(c, a->id);
        done = stop;
    }
    return done < n ? fn(c, s + done, n - done, e) : SL_OK;
}

static sl_status norm_stretch(enc *c, const uint8_t *s, size_t n, sl_err *e)
{
    return added_split(c, &c->t->norm_added, s, n, pretokenize, e);
}

static int nfc_may_change(const sl_tok *t, const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        uint32_t cp = sl_utf8_next(s, &i);
        if (t->nfc_unsafe[cp >> 3] & (1 << (cp & 7))) return 1;
    }
    return 0;
}

/* Code points that gained normalization properties (a decomposition, a combining class, a
 * part in a composition) after Unicode 9.0, the version of tokenizers' NFC tables: there they
 * are plain starters that nothing composes with. utf8proc knows them; nfc_append keeps them
 * as they are. Listed from utf8proc's tables and Unicode's DerivedAge; checked against
 * tokenizers by tests/py/test_tokenizer_parity.py (test_every_code_point). */
static const uint32_t nfc_newer[][2] = {
    {0x7FD, 0x7FD},     {0x898, 0x89F},     {0x8CA, 0x8D3},     {0x9FE, 0x9FE},
    {0xC3C, 0xC3C},     {0xD3B, 0xD3C},     {0xEBA, 0xEBA},     {0x1715, 0x1715},
    {0x1ABF, 0x1ACE},   {0x1DF6, 0x1DFA},   {0xA82C, 0xA82C},   {0x10D24, 0x10D27},
    {0x10EAB, 0x10EAC}, {0x10EFD, 0x10EFF}, {0x10F46, 0x10F50}, {0x10F82, 0x10F85},
    {0x11070, 0x11070}, {0x1133B, 0x1133B}, {0x1145E, 0x1145E}, {0x11839, 0x1183A},
    {0x11930, 0x11930}, {0x11938, 0x11938}, {0x1193D, 0x1193E}, {0x11943, 0x11943},
    {0x119E0, 0x119E0}, {0x11A34, 0x11A34}, {0x11A47, 0x11A47}, {0x11A99, 0x11A99},
    {0x11D42, 0x11D42}, {0x11D44, 0x11D45}, {0x11D97, 0x11D97}, {0x11F41, 0x11F42},
    {0x16FF0, 0x16FF1}, {0x1E08F, 0x1E08F}, {0x1E130, 0x1E136}, {0x1E2AE, 0x1E2AE},
    {0x1E2EC, 0x1E2EF}, {0x1E4EC, 0x1E4EF}};

static int is_nfc_newer(uint32_t cp)
{
    size_t lo = 0, hi = sizeof nfc_newer / sizeof nfc_newer[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < nfc_newer[mid][0])
            hi = mid;
        else if (cp > nfc_newer[mid][1])
            lo = mid + 1;
        else
            return 1;
    }
    return 0;
}

/* Appends NFC(s[0..n)) to out; -1 when memory runs out. */
static int nfc_part(sl_buf *out, const uint8_t *s, size_t n)
{
    if (!n) return 0;
    utf8proc_uint8_t *norm = NULL;
    utf8proc_ssize_t m =
        utf8proc_map(s, (utf8proc_ssize_t)n, &norm, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    int rc = m < 0 ? -1 : sl_buf_append(out, norm, (size_t)m);
    free(norm);
    return rc;
}

/* Appends NFC(s[0..n)) as tokenizers computes it to out: utf8proc's NFC on the text between
 * the is_nfc_newer code points, which stay as they are (a starter that composes with nothing
 * splits NFC into independent parts). */
static int nfc_append(sl_buf *out, const uint8_t *s, size_t n)
{
    size_t part = 0;
    for (size_t i = 0; i < n;) {
        size_t at = i;
        if (is_nfc_newer(sl_utf8_next(s, &i))) {
            if (nfc_part(out, s + part, at - part) || sl_buf_append(out, s + at, i - at)) return -1;
            part = i;
        }
    }
    return nfc_part(out, s + part, n - part);
}

/* A stretch between non-normalized added tokens: NFC it (when configured and needed), then
 * match the normalized added tokens in it. */
static sl_status raw_stretch(enc *c, const uint8_t *s, size_t n, sl_err *e)
{
    if (!c->t->nfc || !nfc_may_change(c->t, s, n)) return norm_stretch(c, s, n, e);
    sl_buf norm = {0};
    sl_status st = SL_OK;
    if (nfc_append(&norm, s, n) || sl_buf_append(&norm, "", 0))
        c->oom = 1;
    else
        st = norm_stretch(c, (const uint8_t *)norm.data, norm.len, e);
    sl_buf_free(&norm);
    return st;
}

/* What every input must be: valid UTF-8, under 2 GiB (BPE keeps positions in 32 bits). */
static sl_status check_text(const uint8_t *s, size_t len, sl_err *e)
{
    if (len > INT32_MAX)
        return sl_err_set(e, SL_ERR_LIMIT, "text of %zu bytes is over the 2 GiB limit", len);
    size_t bad = sl_utf8_valid_prefix(s, len);
    if (bad < len)
        return sl_err_set(e, SL_ERR_INVALID, "text is not valid UTF-8 (byte 0x%02X at offset %zu)",
                          s[bad], bad);
    return SL_OK;
}

/* Runs fn over text[0..len) with the scratch of one call, appending to out: on failure (or
 * when memory ran out) out is put back as it was. */
static sl_status enc_run(const sl_tok *t, const char *text, size_t len, sl_tok_ids *out,
                         piece_fn piece, stretch_fn fn, sl_err *e)
{
    const uint8_t *s = (const uint8_t *)text;
    sl_status st = check_text(s, len, e);
    if (st != SL_OK) return st;
    size_t n0 = out->n;
    enc c = {.t = t, .out = out, .piece = piece, .start = s};
    if (t->re && !(c.md = pcre2_match_data_create_from_pattern(t->re, NULL)))
        c.oom = 1;
    else
        st = fn(&c, s, len, e);
    if (st == SL_OK && c.oom) st = sl_err_set(e, SL_ERR_NOMEM, "tokenizing: out of memory");
    if (st != SL_OK) out->n = n0;
    pcre2_match_data_free(c.md);
    free(c.sym);
    free(c.prev);
    free(c.next);
    free(c.tree);
    return st;
}

static sl_status encode_text(enc *c, const uint8_t *s, size_t n, sl_err *e)
{
    return added_split(c, &c->t->raw_added, s, n, raw_stretch, e);
}

sl_status sl_tok_encode(const sl_tok *t, const char *text, size_t len, sl_tok_ids *out, sl_err *e)
{
    return enc_run(t, text, len, out, bpe_piece, encode_text, e);
}

/* Records the end offset of a piece. */
static void split_piece(enc *c, const uint8_t *p, size_t n)
{
    emit(c, (int32_t)(p + n - c->start));
}

sl_status sl_tok_split(const sl_tok *t, const char *text, size_t len, sl_tok_ids *ends, sl_err *e)
{
    return enc_run(t, text, len, ends, split_piece, pretokenize, e);
}

/* ======================================================================== lookups */

int32_t sl_tok_vocab_size(const sl_tok *t)
{
    return t->n_ids;
}

int32_t sl_tok_token_id(const sl_tok *t, const char *token)
{
    keyset k = str_keys(t);
    return idmap_find(&t->by_str, &k, token, strlen(token));
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

/* ======================================================================== loading */

/* What the JSON names per id, before the arrays are built. */
typedef struct entry {
    const char *s; /* spelling, owned by the JSON document */
    size_t len;
    int8_t in_vocab;
    int8_t added;
    int8_t special, lstrip, rstrip, single_word, normalized;
} entry;

typedef struct loader {
    sl_tok *t;
    json_t *root;
    entry *ent;
    int32_t n_ent;
    const char *path;
    sl_err *e;
} loader;

static const char *jstr(const json_t *obj, const char *key)
{
    const json_t *v = json_object_get(obj, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static int jtrue(const json_t *obj, const char *key)
{
    return json_is_true(json_object_get(obj, key));
}

/* A string option that must be absent, null or empty. */
static int jempty(const json_t *obj, const char *key)
{
    const json_t *v = json_object_get(obj, key);
    return !v || json_is_null(v) || (json_is_string(v) && !json_string_length(v));
}

static sl_status unsupported(loader *L, const char *what, const json_t *node)
{
    char *dump = node ? json_dumps(node, JSON_COMPACT) : NULL;
    if (dump && strlen(dump) > 200) strcpy(dump + 197, "...");
    sl_err_set(L->e, SL_ERR_UNSUPPORTED, "%s: unsupported %s%s%s", L->path, what, dump ? " " : "",
               dump ? dump : "");
    free(dump);
    return SL_ERR_UNSUPPORTED;
}

/* Bytes a spelling decodes to, as the ByteLevel decoder does it: the byte of each code point
 * when all of them are in the alphabet, else the spelling's own UTF-8 (written to dst, which
 * has room for len bytes; returns the count). */
static size_t spelling_bytes(const int16_t byte_of_cp[324], const char *s, size_t len, uint8_t *dst)
{
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp = sl_utf8_next((const uint8_t *)s, &i);
        if (cp >= 324 || byte_of_cp[cp] < 0) {
            memcpy(dst, s, len);
            return len;
        }
        dst[n++] = (uint8_t)byte_of_cp[cp];
    }
    return n;
}

static sl_status load_vocab(loader *L, const json_t *model)
{
    const json_t *vocab = json_object_get(model, "vocab");
    const json_t *added = json_object_get(L->root, "added_tokens");
    if (!json_is_object(vocab))
        return sl_err_set(L->e, SL_ERR_PARSE, "%s: model.vocab is not an object", L->path);
    if (added && !json_is_array(added) && !json_is_null(added))
        return sl_err_set(L->e, SL_ERR_PARSE, "%s: added_tokens is not an array", L->path);
    int64_t max_id = -1;
    const char *key;
    const json_t *v;
    size_t i;
    json_object_foreach((json_t *)vocab, key, v)
    {
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) >= TOK_MAX_IDS)
            return sl_err_set(L->e, SL_ERR_PARSE, "%s: vocab entry '%s' has a bad id", L->path,
                              key);
        if (json_integer_value(v) > max_id) max_id = json_integer_value(v);
    }
    json_array_foreach(added, i, v)
    {
        json_int_t id = json_integer_value(json_object_get(v, "id"));
        if (!json_is_integer(json_object_get(v, "id")) || id < 0 || id >= TOK_MAX_IDS ||
            !jstr(v, "content"))
            return sl_err_set(L->e, SL_ERR_PARSE,
                              "%s: added_tokens[%zu] lacks a good id or content", L->path, i);
        if (id > max_id) max_id = id;
    }
    if (max_id < 0) return sl_err_set(L->e, SL_ERR_PARSE, "%s: empty vocabulary", L->path);
    L->n_ent = (int32_t)max_id + 1;
    L->ent = calloc((size_t)L->n_ent, sizeof *L->ent);
    if (!L->ent) return sl_err_set(L->e, SL_ERR_NOMEM, "%s: out of memory", L->path);
    json_object_foreach((json_t *)vocab, key, v)
    {
        entry *en = &L->ent[json_integer_value(v)];
        if (en->s)
            return sl_err_set(L->e, SL_ERR_PARSE, "%s: id %lld is used by '%s' and '%s'", L->path,
                              (long long)json_integer_value(v), en->s, key);
        *en = (entry){.s = key, .len = strlen(key), .in_vocab = 1};
    }
    json_array_foreach(added, i, v)
    {
        const char *content = jstr(v, "content");
        size_t len = json_string_length(json_object_get(v, "content"));
        entry *en = &L->ent[json_integer_value(json_object_get(v, "id"))];
        if (!len) continue; /* HF ignores empty added tokens */
        if (en->s && (en->len != len || memcmp(en->s, content, len)))
            return sl_err_set(L->e, SL_ERR_UNSUPPORTED,
                              "%s: added token '%s' reuses the id of vocabulary entry '%s'",
                              L->path, content, en->s);
        en->s = content;
        en->len = len;
        en->added = 1;
        en->special = (int8_t)jtrue(v, "special");
        en->lstrip = (int8_t)jtrue(v, "lstrip");
        en->rstrip = (int8_t)jtrue(v, "rstrip");
        en->single_word = (int8_t)jtrue(v, "single_word");
        en->normalized = (int8_t)jtrue(v, "normalized");
    }
    return SL_OK;
}

/* Builds the per-id arrays and both maps from L->ent. */
static sl_status build_tokens(loader *L)
{
    sl_tok *t = L->t;
    int16_t byte_of_cp[324];
    byte_alphabet(byte_of_cp);
    size_t total = 0;
    for (int32_t id = 0; id < L->n_ent; id++)
        total += L->ent[id].len + 1;
    if (total >= UINT32_MAX)
        return sl_err_set(L->e, SL_ERR_LIMIT, "%s: vocabulary too large", L->path);
    t->n_ids = L->n_ent;
    t->flags = calloc((size_t)t->n_ids, 1);
    t->str = malloc(total);
    t->str_off = malloc(((size_t)t->n_ids + 1) * sizeof *t->str_off);
    t->raw = malloc(total);
    t->raw_off = malloc(((size_t)t->n_ids + 1) * sizeof *t->raw_off);
    if (!t->flags || !t->str || !t->str_off || !t->raw || !t->raw_off ||
        idmap_init(&t->by_str, (size_t)t->n_ids) || idmap_init(&t->by_raw, (size_t)t->n_ids))
        return sl_err_set(L->e, SL_ERR_NOMEM, "%s: out of memory", L->path);
    uint32_t so = 0, ro = 0;
    for (int32_t id = 0; id < t->n_ids; id++) {
        const entry *en = &L->ent[id];
        t->str_off[id] = so;
        t->raw_off[id] = ro;
        if (en->s) {
            /* a spelling is a JSON string: valid UTF-8, possibly with NUL characters */
            memcpy(t->str + so, en->s, en->len);
            ro += (uint32_t)spelling_bytes(byte_of_cp, en->s, en->len, t->raw + ro);
            so += (uint32_t)en->len;
            t->flags[id] =
                TOK_PRESENT | (en->added ? TOK_ADDED : 0) | (en->special ? TOK_SPECIAL : 0);
        }
        t->str[so++] = 0;
    }
    t->str_off[t->n_ids] = so;
    t->raw_off[t->n_ids] = ro;
    keyset sk = str_keys(t), rk = raw_keys(t);
    for (int32_t id = 0; id < t->n_ids; id++)
        if (L->ent[id].in_vocab) {
            idmap_put(&t->by_str, &sk, id);
            idmap_put(&t->by_raw, &rk, id);
        }
    for (int b = 0; b < 256; b++) {
        uint8_t one = (uint8_t)b;
        if ((t->byte_id[b] = idmap_find(&t->by_raw, &rk, &one, 1)) < 0)
            return sl_err_set(L->e, SL_ERR_UNSUPPORTED,
                              "%s: the vocabulary has no token for byte 0x%02X", L->path, b);
    }
    return SL_OK;
}

/* Left and right token of one merge: "a b" or ["a", "b"]. */
static int merge_parts(const json_t *m, const char **a, size_t *na, const char **b, size_t *nb)
{
    if (json_is_string(m)) {
        const char *s = json_string_value(m), *sp = strchr(s, ' ');
        if (!sp || strchr(sp + 1, ' ')) return -1;
        *a = s;
        *na = (size_t)(sp - s);
        *b = sp + 1;
        *nb = strlen(sp + 1);
        return 0;
    }
    if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
        json_is_string(json_array_get(m, 1))) {
        *a = json_string_value(json_array_get(m, 0));
        *na = json_string_length(json_array_get(m, 0));
        *b = json_string_value(json_array_get(m, 1));
        *nb = json_string_length(json_array_get(m, 1));
        return 0;
    }
    return -1;
}

static sl_status load_merges(loader *L, const json_t *model)
{
    sl_tok *t = L->t;
    const json_t *merges = json_object_get(model, "merges");
    if (!json_is_array(merges))
        return sl_err_set(L->e, SL_ERR_PARSE, "%s: model.merges is not an array", L->path);
    size_t n = json_array_size(merges), cap = 1024;
    if (n >= NO_RANK >> (32 - RANK_BITS))
        return sl_err_set(L->e, SL_ERR_LIMIT, "%s: more than %u merges", L->path,
                          NO_RANK >> (32 - RANK_BITS));
    int bits = 10;
    while (cap < n * 2)
        cap *= 2, bits++;
    t->merge_shift = 64 - bits;
    t->merges = malloc(cap * sizeof *t->merges);
    t->merge_id = malloc((n + 1) * sizeof *t->merge_id);
    char *cat = malloc(1024);
    if (!t->merges || !t->merge_id || !cat) {
        free(cat);
        return sl_err_set(L->e, SL_ERR_NOMEM, "%s: out of memory", L->path);
    }
    memset(t->merges, 0xFF, cap * sizeof *t->merges); /* SLOT_EMPTY */
    keyset sk = str_keys(t);
    sl_status st = SL_OK;
    for (size_t r = 0; r < n && st == SL_OK; r++) {
        const char *a, *b;
        size_t na, nb;
        int32_t ia = -1, ib = -1, im = -1;
        if (merge_parts(json_array_get(merges, r), &a, &na, &b, &nb) || na + nb > 1024) {
            st = sl_err_set(L->e, SL_ERR_PARSE, "%s: merges[%zu] is not a pair of tokens", L->path,
                            r);
            break;
        }
        memcpy(cat, a, na);
        memcpy(cat + na, b, nb);
        ia = idmap_find(&t->by_str, &sk, a, na);
        ib = idmap_find(&t->by_str, &sk, b, nb);
        im = idmap_find(&t->by_str, &sk, cat, na + nb);
        if (ia < 0 || ib < 0 || im < 0) {
            st = sl_err_set(
                L->e, SL_ERR_PARSE,
                "%s: merges[%zu] ('%.*s' '%.*s') names a token missing from the vocabulary",
                L->path, r, (int)na, a, (int)nb, b);
            break;
        }
        /* a repeated pair keeps its last rank, as HF's map does */
        uint64_t key = pair_key(ia, ib);
        t->merges[merge_slot(t, key)] = key << RANK_BITS | r;
        t->merge_id[r] = im;
    }
    free(cat);
    return st;
}

/* Marks the vocabulary entries that BPE of their own bytes leaves whole. */
static void mark_whole_tokens(sl_tok *t)
{
    int32_t sym[BPE_SMALL];
    for (int32_t id = 0; id < t->n_ids; id++) {
        uint32_t n = t->raw_off[id + 1] - t->raw_off[id];
        const uint8_t *p = t->raw + t->raw_off[id];
        keyset rk = raw_keys(t);
        if (!(t->flags[id] & TOK_PRESENT) || !n || n > BPE_SMALL ||
            idmap_find(&t->by_raw, &rk, p, n) != id)
            continue;
        for (uint32_t i = 0; i < n; i++)
            sym[i] = t->byte_id[p[i]];
        if (bpe_small(t, sym, (int)n) == 1 && sym[0] == id) t->flags[id] |= TOK_WHOLE;
    }
}

static sl_status load_model(loader *L)
{
    const json_t *model = json_object_get(L->root, "model");
    if (!json_is_object(model))
        return sl_err_set(L->e, SL_ERR_PARSE, "%s: no model object", L->path);
    const char *type = jstr(model, "type");
    if ((type && strcmp(type, "BPE")) || !json_object_get(model, "merges"))
        return unsupported(L, "model", json_object_get(model, "type"));
    const json_t *dropout = json_object_get(model, "dropout");
    if ((dropout && !json_is_null(dropout)) || !jempty(model, "continuing_subword_prefix") ||
        !jempty(model, "end_of_word_suffix"))
        return unsupported(
            L, "BPE option (dropout, continuing_subword_prefix or end_of_word_suffix)", NULL);
    L->t->ignore_merges = jtrue(model, "ignore_merges");
    sl_status st = load_vocab(L, model);
    if (st == SL_OK) st = build_tokens(L);
    if (st == SL_OK) st = load_merges(L, model);
    if (st == SL_OK) mark_whole_tokens(L->t);
    return st;
}

static sl_status load_normalizer(loader *L)
{
    const json_t *n = json_object_get(L->root, "normalizer");
    if (!n || json_is_null(n)) return SL_OK;
    const char *type = jstr(n, "type");
    if (type && !strcmp(type, "NFC")) {
        L->t->nfc = 1;
        return SL_OK;
    }
    if (type && !strcmp(type, "Sequence")) {
        size_t i;
        const json_t *sub;
        json_array_foreach(json_object_get(n, "normalizers"), i, sub)
        {
            const char *st = jstr(sub, "type");
            if (!st || strcmp(st, "NFC")) return unsupported(L, "normalizer", sub);
            L->t->nfc = 1;
        }
        return SL_OK;
    }
    return unsupported(L, "normalizer", n);
}

/* Marks the code points whose presence means NFC may change a text: those with a canonical
 * decomposition, a non-zero combining class, or that can be the second half of a composition
 * (all code points after the first in some canonical decomposition, plus the Hangul vowel and
 * trailing jamo). Precomposed Hangul syllables are already NFC and stay unmarked so Korean
 * text needs no normalization pass. A text without marked code points is its own NFC. */
static sl_status build_nfc_table(loader *L)
{
    uint8_t *u = calloc(0x110000 / 8, 1);
    if (!u) return sl_err_set(L->e, SL_ERR_NOMEM, "%s: out of memory", L->path);
#define MARK(cp) (u[(cp) >> 3] |= (uint8_t)(1 << ((cp)&7)))
    for (utf8proc_int32_t cp = 0x80; cp < 0x110000; cp++) {
        const utf8proc_property_t *p = utf8proc_get_property(cp);
        if (p->combining_class) MARK(cp);
        if (p->decomp_seqindex == UINT16_MAX || (cp >= 0xAC00 && cp <= 0xD7A3)) continue;
        utf8proc_int32_t d[32];
        int boundclass = 0;
        utf8proc_ssize_t n = utf8proc_decompose_char(cp, d, 32, UTF8PROC_DECOMPOSE, &boundclass);
        if (n == 1 && d[0] == cp) continue; /* a compatibility mapping only */
        MARK(cp);
        for (utf8proc_ssize_t i = 1; i < n && i < 32; i++)
            MARK(d[i]);
    }
    for (uint32_t cp = 0x1161; cp <= 0x1175; cp++)
        MARK(cp);
    for (uint32_t cp = 0x11A8; cp <= 0x11C2; cp++)
        MARK(cp);
#undef MARK
    L->t->nfc_unsafe = u;
    return SL_OK;
}

/* pcre2 10.42's Unicode tables (Unicode 14) disagree with Oniguruma's (Unicode 16, in
 * tokenizers 0.23) on three classes the pre-tokenizer patterns use: pcre2's \s also matches
 * U+180E MONGOLIAN VOWEL SEPARATOR (white space before Unicode 6.3), and its \p{L} and \p{N}
 * lack the letters and digits assigned in Unicode 15 and 16. The pattern is rewritten to spell
 * the three classes out; inside a character class only their positive forms can be. The
 * ranges come from splitting every code point in several contexts with both libraries
 * (tests/py/test_tokenizer_parity.py, test_pre_tokenizer_every_code_point, checks them). */
#define WS_SET                                                                                     \
    "\\t-\\r\\x20\\x85\\xA0\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}"       \
    "\\x{3000}"
#define L_SET                                                                                      \
    "\\p{L}\\x{1C89}-\\x{1C8A}\\x{A7CB}-\\x{A7CD}\\x{A7DA}-\\x{A7DC}\\x{105C0}-\\x{105F3}"         \
    "\\x{10D4A}-\\x{10D65}\\x{10D6F}-\\x{10D85}\\x{10EC2}-\\x{10EC4}\\x{1123F}-\\x{11240}"         \
    "\\x{11380}-\\x{11389}\\x{1138B}\\x{1138E}\\x{11390}-\\x{113B5}\\x{113B7}\\x{113D1}"           \
    "\\x{113D3}\\x{11BC0}-\\x{11BE0}\\x{11F02}\\x{11F04}-\\x{11F10}\\x{11F12}-\\x{11F33}"          \
    "\\x{1342F}\\x{13441}-\\x{13446}\\x{13460}-\\x{143FA}\\x{16100}-\\x{1611D}"                    \
    "\\x{16D40}-\\x{16D6C}\\x{18CFF}\\x{1B132}\\x{1B155}\\x{1DF25}-\\x{1DF2A}"                     \
    "\\x{1E030}-\\x{1E06D}\\x{1E4D0}-\\x{1E4EB}\\x{1E5D0}-\\x{1E5ED}\\x{1E5F0}\\x{2B739}"          \
    "\\x{2EBF0}-\\x{2EE5D}\\x{31350}-\\x{323AF}"
#define N_SET                                                                                      \
    "\\p{N}\\x{10D40}-\\x{10D49}\\x{116D0}-\\x{116E3}\\x{11BF0}-\\x{11BF9}\\x{11F50}-\\x{11F59}"   \
    "\\x{16130}-\\x{16139}\\x{16D70}-\\x{16D79}\\x{1CCF0}-\\x{1CCF9}\\x{1D2C0}-\\x{1D2D3}"         \
    "\\x{1E4F0}-\\x{1E4F9}\\x{1E5F1}-\\x{1E5FA}"

/* The spelled-out set for the class escape at p[0..n) (\s \S \p{L} \P{L} \p{N} \P{N}), with
 * its length in *len and whether it is negated in *neg; NULL for any other text. */
static const char *class_set(const char *p, size_t n, size_t *len, int *neg)
{
    if (n < 2 || p[0] != '\\') return NULL;
    *neg = p[1] == 'S' || p[1] == 'P';
    if (p[1] == 's' || p[1] == 'S') {
        *len = 2;
        return WS_SET;
    }
    if ((p[1] != 'p' && p[1] != 'P') || n < 5) return NULL;
    *len = 5;
    return !memcmp(p + 2, "{L}", 3) ? L_SET : !memcmp(p + 2, "{N}", 3) ? N_SET : NULL;
}

static int rewrite_classes(const char *p, size_t n, sl_buf *out)
{
    int in_class = 0, bad = 0;
    for (size_t i = 0; i < n && !bad; i++) {
        size_t len;
        int neg;
        const char *set = class_set(p + i, n - i, &len, &neg);
        if (set && in_class && neg) return -1;
        if (set) {
            bad |= in_class ? sl_buf_puts(out, set)
                            : sl_buf_printf(out, "[%s%s]", neg ? "^" : "", set);
            i += len - 1;
            continue;
        }
        if (p[i] == '\\' && i + 1 < n) { /* any other escape, e.g. \[ or \x{..}, stays as is */
            bad |= sl_buf_append(out, p + i, 2);
            i++;
            continue;
        }
        if (!in_class && p[i] == '[') {
            in_class = 1;
            size_t j = i + 1; /* "[]" and "[^]" start with a literal ']' */
            if (j < n && p[j] == '^') j++;
            if (j < n && p[j] == ']') j++;
            bad |= sl_buf_append(out, p + i, j - i);
            i = j - 1;
            continue;
        }
        if (in_class && p[i] == ']') in_class = 0;
        bad |= sl_buf_append(out, p + i, 1);
    }
    return bad || sl_buf_reserve(out, 0) ? -1 : 0;
}

static sl_status set_regex(loader *L, const char *pattern, size_t len, int literal)
{
    if (L->t->re)
        return unsupported(L, "pre-tokenizer with more than one regex",
                           json_object_get(L->root, "pre_tokenizer"));
    sl_buf fixed = {0};
    if (!literal && rewrite_classes(pattern, len, &fixed)) {
        sl_buf_free(&fixed);
        return sl_err_set(L->e, SL_ERR_UNSUPPORTED,
                          "%s: pre-tokenizer regex uses \\S, \\P{L} or \\P{N} inside a class: %s",
                          L->path, pattern);
    }
    int err;
    PCRE2_SIZE off;
    L->t->re = literal ? pcre2_compile((PCRE2_SPTR)pattern, len, PCRE2_UTF | PCRE2_LITERAL, &err,
                                       &off, NULL)
                       : pcre2_compile((PCRE2_SPTR)fixed.data, fixed.len, PCRE2_UTF | PCRE2_UCP,
                                       &err, &off, NULL);
    sl_buf_free(&fixed);
    if (!L->t->re) {
        PCRE2_UCHAR msg[120];
        pcre2_get_error_message(err, msg, sizeof msg);
        return sl_err_set(L->e, SL_ERR_UNSUPPORTED, "%s: pre-tokenizer regex %s: %s", L->path,
                          pattern, (const char *)msg);
    }
    /* JIT is an optimisation: without it, pretokenize() uses the interpreter */
    L->t->re_jit = pcre2_jit_compile(L->t->re, PCRE2_JIT_COMPLETE) == 0;
    /* The default match limit (10M steps) stops `\s*[\r\n]+` on a few million spaces; the
     * patterns tokenizers ship are linear, so the limit only needs to stop a runaway one. */
    if (!(L->t->re_ctx = pcre2_match_context_create(NULL)))
        return sl_err_set(L->e, SL_ERR_NOMEM, "%s: out of memory", L->path);
    pcre2_set_match_limit(L->t->re_ctx, UINT32_MAX);
    return SL_OK;
}

static sl_status load_pretokenizer(loader *L, const json_t *p)
{
    const char *type = p ? jstr(p, "type") : NULL;
    if (!p || json_is_null(p)) return SL_OK;
    if (type && !strcmp(type, "Sequence")) {
        size_t i;
        const json_t *sub;
        json_array_foreach(json_object_get(p, "pretokenizers"), i, sub)
        {
            sl_status st = load_pretokenizer(L, sub);
            if (st != SL_OK) return st;
        }
        return SL_OK;
    }
    if (type && !strcmp(type, "ByteLevel")) {
        if (jtrue(p, "add_prefix_space")) return unsupported(L, "pre-tokenizer", p);
        const json_t *use = json_object_get(p, "use_regex");
        if (!use || json_is_true(use)) return set_regex(L, gpt2_pattern, strlen(gpt2_pattern), 0);
        return SL_OK;
    }
    if (type && !strcmp(type, "Split")) {
        const char *behavior = jstr(p, "behavior"),
                   *re = jstr(json_object_get(p, "pattern"), "Regex"),
                   *lit = jstr(json_object_get(p, "pattern"), "String");
        if (!behavior || strcmp(behavior, "Isolated") || jtrue(p, "invert") || (!re && !lit))
            return unsupported(L, "pre-tokenizer", p);
        return re ? set_regex(L, re, strlen(re), 0) : set_regex(L, lit, strlen(lit), 1);
    }
    return unsupported(L, "pre-tokenizer", p);
}

/* The decoder must be ByteLevel (what detok implements); post-processing must add nothing. */
static sl_status check_ends(loader *L)
{
    const json_t *d = json_object_get(L->root, "decoder"),
                 *pp = json_object_get(L->root, "post_processor");
    const char *dt = d ? jstr(d, "type") : NULL, *pt = pp ? jstr(pp, "type") : NULL;
    if (!dt || strcmp(dt, "ByteLevel")) return unsupported(L, "decoder", d);
    if (pp && !json_is_null(pp) && (!pt || strcmp(pt, "ByteLevel")))
        return unsupported(L, "post_processor", pp);
    return SL_OK;
}

static int added_cmp(const void *pa, const void *pb)
{
    const added_tok *a = pa, *b = pb;
    uint8_t fa = (uint8_t)a->text[0], fb = (uint8_t)b->text[0];
    if (fa != fb) return fa < fb ? -1 : 1;
    if (a->len != b->len) return a->len > b->len ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

static void added_index(added_set *set)
{
    qsort(set->tok, (size_t)set->n, sizeof *set->tok, added_cmp);
    int k = 0;
    for (int b = 0; b <= 256; b++) {
        while (k < set->n && (uint8_t)set->tok[k].text[0] < b)
            k++;
        set->first[b] = k;
    }
}

/* Collects the added tokens into the two matching passes; normalized ones are matched in
 * their NFC form when the normalizer is NFC. */
static sl_status build_added(loader *L)
{
    sl_tok *t = L->t;
    int n_raw = 0, n_norm = 0;
    size_t text = 0;
    for (int32_t id = 0; id < t->n_ids; id++) {
        const entry *en = &L->ent[id];
        if (!en->added) continue;
        if (en->normalized)
            n_norm++, text += 4 * en->len + 1; /* NFC grows text at most 3x */
        else
            n_raw++;
    }
    t->raw_added.tok = calloc((size_t)n_raw + 1, sizeof(added_tok));
    t->norm_added.tok = calloc((size_t)n_norm + 1, sizeof(added_tok));
    t->added_text = malloc(text + 1);
    if (!t->raw_added.tok || !t->norm_added.tok || !t->added_text)
        return sl_err_set(L->e, SL_ERR_NOMEM, "%s: out of memory", L->path);
    size_t used = 0;
    for (int32_t id = 0; id < t->n_ids; id++) {
        const entry *en = &L->ent[id];
        if (!en->added) continue;
        added_tok a = {t->str + t->str_off[id], (uint32_t)en->len,   id,
                       (uint8_t)en->lstrip,     (uint8_t)en->rstrip, (uint8_t)en->single_word};
        if (en->normalized && t->nfc) {
            sl_buf norm = {0};
            if (nfc_append(&norm, (const uint8_t *)a.text, a.len) || norm.len > 4 * en->len) {
                sl_buf_free(&norm);
                return sl_err_set(L->e, SL_ERR_NOMEM, "%s: cannot normalize added token '%s'",
                                  L->path, en->s);
            }
            if (norm.len) memcpy(t->added_text + used, norm.data, norm.len);
            a.text = t->added_text + used;
            a.len = (uint32_t)norm.len;
            used += norm.len + 1;
            sl_buf_free(&norm);
        }
        added_set *set = en->normalized ? &t->norm_added : &t->raw_added;
        set->tok[set->n++] = a;
    }
    added_index(&t->raw_added);
    added_index(&t->norm_added);
    keyset sk = str_keys(t);
    for (int32_t id = 0; id < t->n_ids; id++)
        if (L->ent[id].added) idmap_put(&t->by_str, &sk, id);
    return SL_OK;
}

sl_status sl_tok_load(sl_tok **out, const char *path, sl_err *e)
{
    char file[4096];
    struct stat st_;
    *out = NULL;
    if (stat(path, &st_) != 0)
        return sl_err_set(e, SL_ERR_IO, "tokenizer: %s does not exist", path);
    if (S_ISDIR(st_.st_mode))
        sl_path_join(file, sizeof file, path, "tokenizer.json");
    else
        snprintf(file, sizeof file, "%s", path);
    char *text;
    size_t len;
    sl_status st = sl_file_read(file, &text, &len, e);
    if (st != SL_OK) return st;
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_ALLOW_NUL, &je);
    free(text);
    if (!root) return sl_err_set(e, SL_ERR_PARSE, "%s: line %d: %s", file, je.line, je.text);
    loader L = {.t = calloc(1, sizeof(sl_tok)), .root = root, .path = file, .e = e};
    if (!L.t) st = sl_err_set(e, SL_ERR_NOMEM, "%s: out of memory", file);
    if (st == SL_OK) st = load_normalizer(&L);
    if (st == SL_OK) st = load_pretokenizer(&L, json_object_get(root, "pre_tokenizer"));
    if (st == SL_OK) st = check_ends(&L);
    if (st == SL_OK) st = load_model(&L);
    if (st == SL_OK) st = build_added(&L);
    if (st == SL_OK && L.t->nfc) st = build_nfc_table(&L);
    free(L.ent);
    json_decref(root);
    if (st != SL_OK) {
        sl_tok_free(L.t);
        return st;
    }
    *out = L.t;
    return SL_OK;
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

/* Byte-level BPE: encoding (added tokens, normalization, pre-tokenization, merges) with an
 * sl_tok loaded by tokenizer_load.c. See tokenizer.h for the contract. */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "sl_buf.h"
#include "tokenizer_impl.h"
#include "utf8.h"

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

/* Rank of merging a with b, or NO_RANK. */
static uint32_t pair_rank(const sl_tok *t, int32_t a, int32_t b)
{
    uint64_t s = t->merges[sl_tok_merge_slot(t, sl_tok_pair_key(a, b))];
    return s == SLOT_EMPTY ? NO_RANK : (uint32_t)(s & ((1u << RANK_BITS) - 1));
}

/* ======================================================================== encoding */

/* sl_tok_encode_literal: the ranges where special tokens are plain text (n = 0: none), as
 * offsets into base: the text, or a stretch's NFC while its normalized added tokens are
 * matched (raw_stretch). */
typedef struct lit_ranges {
    const sl_tok_span *v;
    size_t n;
    const uint8_t *base;
} lit_ranges;

/* Per-call scratch: one encode allocates a handful of buffers, never one per token. */
typedef struct enc enc;
typedef void (*piece_fn)(enc *c, const uint8_t *p, size_t n);

struct enc {
    const sl_tok *t;
    sl_tok_ids *out;
    piece_fn piece;       /* what to do with each pre-tokenized piece: BPE, or record it */
    const uint8_t *start; /* the text, for sl_tok_split's offsets */
    lit_ranges lit;
    pcre2_match_data *md;
    int32_t *sym, *prev, *next; /* long pieces: symbols as a linked list */
    uint64_t *tree;             /* long pieces: pairs as a tournament tree (bpe_large) */
    size_t cap;                 /* symbols the buffers above hold */
    int oom;
};

static void emit(enc *c, int32_t id)
{
    if (sl_tok_ids_push(c->out, id)) c->oom = 1;
}

int sl_tok_bpe_small(const sl_tok *t, int32_t *sym, int n)
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

/* Same merge order as sl_tok_bpe_small, in O(n log n): the leaves of a tournament tree hold
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
    int32_t id = sl_tok_idmap_find(&t->by_raw, &raw, p, n);
    if (id >= 0 && (t->ignore_merges || (t->flags[id] & TOK_WHOLE))) {
        emit(c, id);
        return;
    }
    if (n <= BPE_SMALL) {
        int32_t sym[BPE_SMALL];
        for (size_t i = 0; i < n; i++)
            sym[i] = t->byte_id[p[i]];
        int m = sl_tok_bpe_small(t, sym, (int)n);
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

/* Index of the first literal range that ends after offset o (l->n when none does). */
static size_t lit_after(const lit_ranges *l, size_t o)
{
    size_t lo = 0, hi = l->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (l->v[mid].end <= o)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* 1 when p[0..n) (inside l->base's text) shares a byte with a literal range. */
static int lit_overlaps(const lit_ranges *l, const uint8_t *p, size_t n)
{
    size_t o = (size_t)(p - l->base), k = lit_after(l, o);
    return k < l->n && l->v[k].start < o + n;
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
 * word character is skipped (the search goes on after it), and so is a special token that
 * touches literal text (encode_special_tokens), lstrip/rstrip swallow the white space beside a
 * token, and the search resumes at the end of the match itself. */
static sl_status added_split(enc *c, const added_set *set, const uint8_t *s, size_t n,
                             stretch_fn fn, sl_err *e)
{
    size_t done = 0, from = 0, at;
    int k;
    while (set->n && (k = added_find(set, s, n, from, &at)) >= 0) {
        const added_tok *a = &set->tok[k];
        size_t start = at, stop = at + a->len, j;
        from = stop;
        if (c->lit.n && (c->t->flags[a->id] & TOK_SPECIAL) && lit_overlaps(&c->lit, s + at, a->len))
            continue;
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
 * are plain starters that nothing composes with. utf8proc knows them; sl_tok_nfc_append keeps them
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

int sl_tok_nfc_append(sl_buf *out, const uint8_t *s, size_t n)
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

/* NFC of s[0..n) (a stretch of the text) run by run, each run wholly inside or outside the
 * literal ranges, so that the ranges' places in the normalized text are known: they go to lit.
 * -1 when memory runs out. */
static int nfc_runs(const lit_ranges *l, const uint8_t *s, size_t n, sl_buf *norm,
                    sl_tok_spans *lit)
{
    size_t off = (size_t)(s - l->base), at = 0;
    for (size_t k = lit_after(l, off); at < n; k++) {
        size_t ls = n, le = n; /* the next literal run, s[ls..le) */
        if (k < l->n && l->v[k].start < off + n) {
            ls = l->v[k].start > off + at ? l->v[k].start - off : at;
            le = l->v[k].end < off + n ? l->v[k].end - off : n;
        }
        if (sl_tok_nfc_append(norm, s + at, ls - at)) return -1;
        size_t from = norm->len;
        if (sl_tok_nfc_append(norm, s + ls, le - ls) || sl_tok_spans_push(lit, from, norm->len))
            return -1;
        at = le;
    }
    return 0;
}

/* A stretch between non-normalized added tokens: NFC it (when configured and needed), then
 * match the normalized added tokens in it, with the literal ranges carried over to the NFC. */
static sl_status raw_stretch(enc *c, const uint8_t *s, size_t n, sl_err *e)
{
    if (!c->t->nfc || !nfc_may_change(c->t, s, n)) return norm_stretch(c, s, n, e);
    sl_buf norm = {0};
    sl_tok_spans lit = {0};
    sl_status st = SL_OK;
    lit_ranges outer = c->lit;
    if ((outer.n ? nfc_runs(&outer, s, n, &norm, &lit) : sl_tok_nfc_append(&norm, s, n)) ||
        sl_buf_append(&norm, "", 0)) {
        c->oom = 1;
    } else {
        if (outer.n) c->lit = (lit_ranges){lit.v, lit.n, (const uint8_t *)norm.data};
        st = norm_stretch(c, (const uint8_t *)norm.data, norm.len, e);
        c->lit = outer;
    }
    sl_tok_spans_free(&lit);
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

/* What literal ranges must be: ordered, disjoint, non-empty, inside s[0..len) and on
 * character boundaries (NFC runs inside and outside them separately). */
static sl_status check_literal(const uint8_t *s, size_t len, const sl_tok_spans *lit, sl_err *e)
{
    for (size_t i = 0; i < lit->n; i++) {
        size_t a = lit->v[i].start, b = lit->v[i].end;
        if (a >= b || b > len || (i && a < lit->v[i - 1].end) || (s[a] & 0xC0) == 0x80 ||
            (b < len && (s[b] & 0xC0) == 0x80))
            return sl_err_set(e, SL_ERR_INVALID,
                              "literal range %zu [%zu, %zu) is empty, out of order, past the end "
                              "of the %zu-byte text or inside a character",
                              i, a, b, len);
    }
    return SL_OK;
}

/* Runs fn over text[0..len) with the scratch of one call, appending to out: on failure (or
 * when memory ran out) out is put back as it was. */
static sl_status enc_run(const sl_tok *t, const char *text, size_t len, const sl_tok_spans *lit,
                         sl_tok_ids *out, piece_fn piece, stretch_fn fn, sl_err *e)
{
    const uint8_t *s = (const uint8_t *)text;
    sl_status st = check_text(s, len, e);
    if (st == SL_OK && lit) st = check_literal(s, len, lit, e);
    if (st != SL_OK) return st;
    size_t n0 = out->n;
    enc c = {.t = t, .out = out, .piece = piece, .start = s};
    if (lit) c.lit = (lit_ranges){lit->v, lit->n, s};
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
    return sl_tok_encode_literal(t, text, len, NULL, out, e);
}

sl_status sl_tok_encode_literal(const sl_tok *t, const char *text, size_t len,
                                const sl_tok_spans *literal, sl_tok_ids *out, sl_err *e)
{
    return enc_run(t, text, len, literal, out, bpe_piece, encode_text, e);
}

/* Records the end offset of a piece. */
static void split_piece(enc *c, const uint8_t *p, size_t n)
{
    emit(c, (int32_t)(p + n - c->start));
}

sl_status sl_tok_split(const sl_tok *t, const char *text, size_t len, sl_tok_ids *ends, sl_err *e)
{
    return enc_run(t, text, len, NULL, ends, split_piece, pretokenize, e);
}


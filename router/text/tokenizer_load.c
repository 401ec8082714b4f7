/* Byte-level BPE: loading tokenizer.json into an sl_tok (tokenizer_impl.h). See
 * tokenizer.h for what is supported and refused. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <utf8proc.h>

#include "sl_buf.h"
#include "sl_bytelevel.h"
#include "sl_file.h"
#include "tokenizer_impl.h"

/* GPT-2's pattern, used by a ByteLevel pre-tokenizer with use_regex=true */
static const char gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";


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
        sl_tok_idmap_init(&t->by_str, (size_t)t->n_ids) || sl_tok_idmap_init(&t->by_raw, (size_t)t->n_ids))
        return sl_err_set(L->e, SL_ERR_NOMEM, "%s: out of memory", L->path);
    uint32_t so = 0, ro = 0;
    for (int32_t id = 0; id < t->n_ids; id++) {
        const entry *en = &L->ent[id];
        t->str_off[id] = so;
        t->raw_off[id] = ro;
        if (en->s) {
            /* a spelling is a JSON string: valid UTF-8, possibly with NUL characters */
            memcpy(t->str + so, en->s, en->len);
            ro += (uint32_t)sl_bytelevel_decode(en->s, en->len, t->raw + ro);
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
            sl_tok_idmap_put(&t->by_str, &sk, id);
            sl_tok_idmap_put(&t->by_raw, &rk, id);
        }
    for (int b = 0; b < 256; b++) {
        uint8_t one = (uint8_t)b;
        if ((t->byte_id[b] = sl_tok_idmap_find(&t->by_raw, &rk, &one, 1)) < 0)
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
        ia = sl_tok_idmap_find(&t->by_str, &sk, a, na);
        ib = sl_tok_idmap_find(&t->by_str, &sk, b, nb);
        im = sl_tok_idmap_find(&t->by_str, &sk, cat, na + nb);
        if (ia < 0 || ib < 0 || im < 0) {
            st = sl_err_set(
                L->e, SL_ERR_PARSE,
                "%s: merges[%zu] ('%.*s' '%.*s') names a token missing from the vocabulary",
                L->path, r, (int)na, a, (int)nb, b);
            break;
        }
        /* a repeated pair keeps its last rank, as HF's map does */
        uint64_t key = sl_tok_pair_key(ia, ib);
        t->merges[sl_tok_merge_slot(t, key)] = key << RANK_BITS | r;
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
            sl_tok_idmap_find(&t->by_raw, &rk, p, n) != id)
            continue;
        for (uint32_t i = 0; i < n; i++)
            sym[i] = t->byte_id[p[i]];
        if (sl_tok_bpe_small(t, sym, (int)n) == 1 && sym[0] == id) t->flags[id] |= TOK_WHOLE;
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
            if (sl_tok_nfc_append(&norm, (const uint8_t *)a.text, a.len) || norm.len > 4 * en->len) {
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
        if (L->ent[id].added) sl_tok_idmap_put(&t->by_str, &sk, id);
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

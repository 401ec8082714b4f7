/* The grammar's view of a vocabulary: token id -> bytes, the eos ids, and the byte trie the
 * mask walk descends (gram_impl.h). Made from byte strings or from a tokenizer.json. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "gram_impl.h"
#include "sl_bytelevel.h"

static atomic_uint_fast64_t vocab_uids = 1;

sl_gram_vocab *sl_gram_vocab_ref(sl_gram_vocab *v)
{
    atomic_fetch_add(&v->refs, 1);
    return v;
}

void sl_gram_vocab_free(sl_gram_vocab *v)
{
    if (!v || atomic_fetch_sub(&v->refs, 1) != 1) return;
    free(v->off), free(v->bytes), free(v->hole), free(v->eos);
    free(v->node), free(v->end), free(v->dup_off), free(v->dup_id);
    free(v->big), free(v->pre_tok);
    free(v);
}

int32_t sl_gram_vocab_size(const sl_gram_vocab *v)
{
    return v->n;
}

size_t sl_gram_vocab_mask_words(const sl_gram_vocab *v)
{
    return ((size_t)v->n + 31) / 32;
}

const uint8_t *sl_gram_vocab_token(const sl_gram_vocab *v, int32_t id, size_t *len)
{
    *len = 0;
    if (id < 0 || id >= v->n || v->hole[id]) return NULL;
    *len = v->off[id + 1] - v->off[id];
    return v->bytes + v->off[id];
}

int sl_gram_vocab_is_eos(const sl_gram_vocab *v, int32_t id)
{
    for (int k = 0; k < v->n_eos; k++)
        if (v->eos[k] == id) return 1;
    return 0;
}

/* ---- the trie ---- */

typedef struct tok_ref {
    const uint8_t *p;
    uint32_t len;
    int32_t id;
} tok_ref;

static int tok_cmp(const void *a, const void *b)
{
    const tok_ref *x = a, *y = b;
    int c = memcmp(x->p, y->p, x->len < y->len ? x->len : y->len);
    if (c) return c;
    if (x->len != y->len) return x->len < y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static uint32_t lcp(const tok_ref *a, const tok_ref *b)
{
    uint32_t n = a->len < b->len ? a->len : b->len, k = 0;
    while (k < n && a->p[k] == b->p[k])
        k++;
    return k;
}

/* 1 when s[0..n) is UTF-8 that starts at a character boundary and is well-formed up to its end,
 * where a character may be unfinished (a token cut inside a character). */
static int utf8_from_boundary(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        uint8_t c = s[i], lo = 0x80, hi = 0xBF;
        size_t need;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF)
            need = 1;
        else if (c >= 0xE0 && c <= 0xEF)
            need = 2, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
        else if (c >= 0xF0 && c <= 0xF4)
            need = 3, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
        else
            return 0;
        for (size_t k = 1; k <= need; k++, lo = 0x80, hi = 0xBF) {
            if (i + k == n) return 1; /* unfinished at the end */
            if (s[i + k] < lo || s[i + k] > hi) return 0;
        }
        i += need + 1;
    }
    return 1;
}

/* What lies below the big nodes (gram_impl.h): each token informs the big nodes on its path
 * about its bytes after them. Tokens are short (Qwen3: 128 bytes at most), so this is
 * quadratic in token length only. */
static sl_status describe_below(sl_gram_vocab *v, const tok_ref *t, uint32_t nt, sl_err *e)
{
    uint32_t n = v->n_nodes, at = 0, n_big = 0;
    for (uint32_t i = 0; i < n; i++)
        n_big += v->end[i] - i >= GRAM_BIG_NODES;
    uint32_t *path = malloc(((size_t)v->max_depth + 1) * sizeof *path);
    uint32_t *slot = malloc(((size_t)n + 1) * sizeof *slot); /* node -> index in big, or NONE */
    uint32_t *before = malloc(((size_t)n + 1) * sizeof *before); /* tokens at nodes < i */
    v->big = calloc((size_t)n_big + 1, sizeof *v->big);
    v->pre_tok = malloc(((size_t)nt + 1) * sizeof *v->pre_tok);
    if (!path || !slot || !before || !v->big || !v->pre_tok) {
        free(path), free(slot), free(before);
        return sl_err_set(e, SL_ERR_NOMEM, "grammar vocabulary: out of memory");
    }
    /* the tokens in preorder are the nodes' tokens in node order */
    uint32_t k = 0;
    for (uint32_t i = 0; i < n; i++) {
        before[i] = k;
        int32_t tk = v->node[i].tok;
        if (tk >= 0)
            v->pre_tok[k++] = tk;
        else if (tk < -1)
            for (uint32_t d = v->dup_off[-2 - tk]; d < v->dup_off[-1 - tk]; d++)
                v->pre_tok[k++] = v->dup_id[d];
    }
    before[n] = k;
    for (uint32_t i = 0, b = 0; i < n; i++) {
        slot[i] = GRAM_NONE;
        if (v->end[i] - i < GRAM_BIG_NODES) continue;
        slot[i] = b;
        v->big[b++] = (gram_big){.node = i, .tok_lo = before[i], .tok_hi = before[v->end[i]]};
        v->node[i].below = GRAM_BELOW_BIG | GRAM_BELOW_ASCII | GRAM_BELOW_UTF8;
    }
    v->n_big = n_big;
    /* walk the trie again in the sorted token order to know each token's path */
    for (uint32_t q = 0; q < nt; q++) {
        uint32_t l = q ? lcp(&t[q - 1], &t[q]) : 0;
        for (uint32_t depth = l; depth < t[q].len; depth++)
            path[depth + 1] = at++;
        for (uint32_t d = 1; d < t[q].len; d++) {
            uint32_t i = path[d];
            if (slot[i] == GRAM_NONE) continue;
            for (uint32_t j = d; j < t[q].len; j++)
                if (t[q].p[j] < 0x80)
                    v->big[slot[i]].ascii[t[q].p[j] >> 6] |= 1ull << (t[q].p[j] & 63);
                else
                    v->node[i].below &= (uint8_t)~GRAM_BELOW_ASCII;
            if (!utf8_from_boundary(t[q].p + d, t[q].len - d))
                v->node[i].below &= (uint8_t)~GRAM_BELOW_UTF8;
        }
    }
    free(path), free(slot), free(before);
    return SL_OK;
}

/* The preorder trie of every token a mask can allow: not holes, not eos, not empty. */
static sl_status build_trie(sl_gram_vocab *v, sl_err *e)
{
    tok_ref *t = malloc(((size_t)v->n + 1) * sizeof *t);
    uint32_t nt = 0, *path = NULL;
    if (!t) return sl_err_set(e, SL_ERR_NOMEM, "grammar vocabulary: out of memory");
    for (int32_t id = 0; id < v->n; id++) {
        uint32_t len = v->off[id + 1] - v->off[id];
        if (v->hole[id] || !len || sl_gram_vocab_is_eos(v, id)) continue;
        if (len > UINT16_MAX) {
            free(t);
            return sl_err_set(e, SL_ERR_UNSUPPORTED, "token %d has %u bytes (at most %u supported)",
                              id, len, UINT16_MAX);
        }
        t[nt++] = (tok_ref){v->bytes + v->off[id], len, id};
        if (len > v->max_depth) v->max_depth = len;
    }
    qsort(t, nt, sizeof *t, tok_cmp);
    uint32_t n = 0, n_same = 0; /* n_same: tokens with the bytes of the one before */
    for (uint32_t k = 0; k < nt; k++) {
        uint32_t l = k ? lcp(&t[k - 1], &t[k]) : 0;
        n += t[k].len - l;
        n_same += k && l == t[k].len && l == t[k - 1].len;
    }
    v->n_nodes = n;
    v->node = malloc(((size_t)n + 1) * sizeof *v->node);
    v->end = malloc(((size_t)n + 1) * sizeof *v->end);
    v->dup_off = malloc(((size_t)n_same + 1) * sizeof *v->dup_off);
    v->dup_id = malloc((2 * (size_t)n_same + 1) * sizeof *v->dup_id);
    path = malloc(((size_t)v->max_depth + 1) * sizeof *path);
    if (!v->node || !v->end || !v->dup_off || !v->dup_id || !path) {
        free(t), free(path);
        return sl_err_set(e, SL_ERR_NOMEM, "grammar vocabulary: out of memory");
    }
    /* path[d]: the node at depth d on the way to the last token; a node's subtree closes when a
     * token no longer shares its prefix. Tokens with equal bytes are adjacent in the order. */
    uint32_t at = 0, depth = 0, n_lists = 0, n_ids = 0;
    v->dup_off[0] = 0;
    for (uint32_t k = 0; k < nt; k++) {
        uint32_t l = k ? lcp(&t[k - 1], &t[k]) : 0;
        for (; depth > l; depth--)
            v->end[path[depth]] = at;
        for (; depth < t[k].len; depth++) {
            path[depth + 1] = at;
            v->node[at++] = (gram_node){t[k].p[depth], 0, (uint16_t)(depth + 1), -1};
        }
        gram_node *x = &v->node[path[t[k].len]];
        if (x->tok == -1) {
            x->tok = t[k].id;
            continue;
        }
        if (x->tok >= 0) { /* a second token with these bytes: a list, the first one in it */
            v->dup_off[n_lists] = n_ids;
            v->dup_id[n_ids++] = x->tok;
            x->tok = -2 - (int32_t)n_lists++;
        }
        v->dup_id[n_ids++] = t[k].id; /* lists are built one at a time: equal bytes are adjacent */
        v->dup_off[n_lists] = n_ids;
    }
    for (; depth > 0; depth--)
        v->end[path[depth]] = at;
    free(path);
    sl_status st = describe_below(v, t, nt, e);
    free(t);
    return st;
}

/* Takes over off/bytes/hole (n tokens), copies the eos ids, builds the trie. */
static sl_status vocab_finish(sl_gram_vocab *v, const int32_t *eos_ids, int n_eos,
                              sl_gram_vocab **out, sl_err *e)
{
    atomic_init(&v->refs, 1);
    v->uid = atomic_fetch_add(&vocab_uids, 1);
    sl_status st = SL_OK;
    if (n_eos < 0 || (n_eos && !eos_ids))
        st = sl_err_set(e, SL_ERR_INVALID, "grammar vocabulary: bad eos id list");
    else if (!(v->eos = malloc(((size_t)n_eos + 1) * sizeof *v->eos)))
        st = sl_err_set(e, SL_ERR_NOMEM, "grammar vocabulary: out of memory");
    for (int k = 0; k < n_eos && st == SL_OK; k++) {
        if (eos_ids[k] < 0 || eos_ids[k] >= v->n)
            st = sl_err_set(e, SL_ERR_INVALID, "eos id %d is outside the vocabulary (size %d)",
                            eos_ids[k], v->n);
        v->eos[k] = eos_ids[k];
    }
    v->n_eos = n_eos;
    if (st == SL_OK) st = build_trie(v, e);
    if (st) {
        sl_gram_vocab_free(v);
        return st;
    }
    *out = v;
    return SL_OK;
}

/* A vocabulary of n ids with room for total bytes. */
static sl_gram_vocab *vocab_alloc(int32_t n, size_t total)
{
    sl_gram_vocab *v = calloc(1, sizeof *v);
    if (!v) return NULL;
    atomic_init(&v->refs, 1);
    v->n = n;
    v->off = calloc((size_t)n + 1, sizeof *v->off);
    v->bytes = malloc(total + 1);
    v->hole = calloc((size_t)n + 1, 1);
    if (!v->off || !v->bytes || !v->hole) {
        sl_gram_vocab_free(v);
        return NULL;
    }
    return v;
}

sl_status sl_gram_vocab_new(const char *const *tok, const size_t *len, int32_t n,
                            const int32_t *eos_ids, int n_eos, sl_gram_vocab **out, sl_err *e)
{
    *out = NULL;
    if (n <= 0 || !tok || !len)
        return sl_err_set(e, SL_ERR_INVALID, "grammar vocabulary: no tokens");
    size_t total = 0;
    for (int32_t i = 0; i < n; i++)
        if (tok[i]) total += len[i];
    if (total >= UINT32_MAX)
        return sl_err_set(e, SL_ERR_LIMIT, "grammar vocabulary: more than 4 GiB of token bytes");
    sl_gram_vocab *v = vocab_alloc(n, total);
    if (!v) return sl_err_set(e, SL_ERR_NOMEM, "grammar vocabulary: out of memory");
    uint32_t at = 0;
    for (int32_t i = 0; i < n; i++) {
        v->off[i] = at;
        v->hole[i] = !tok[i];
        if (tok[i] && len[i]) memcpy(v->bytes + at, tok[i], len[i]);
        if (tok[i]) at += (uint32_t)len[i];
    }
    v->off[n] = at;
    return vocab_finish(v, eos_ids, n_eos, out, e);
}

/* ---- tokenizer.json ---- */

/* 1 when a decoder is ByteLevel, alone or inside a Sequence. */
static int decoder_is_bytelevel(const json_t *d)
{
    const char *type = json_string_value(json_object_get(d, "type"));
    if (type && !strcmp(type, "ByteLevel")) return 1;
    if (!type || strcmp(type, "Sequence")) return 0;
    size_t i;
    const json_t *x;
    json_array_foreach(json_object_get(d, "decoders"), i, x) if (decoder_is_bytelevel(x)) return 1;
    return 0;
}

/* What an id is in the file, before the byte arrays are made. */
typedef struct spelling {
    const char *s; /* owned by the JSON document; NULL: the file does not name the id */
    size_t len;
    int added, special;
} spelling;

static sl_status load_spellings(const json_t *root, const char *path, spelling **out, int32_t *n,
                                sl_err *e)
{
    const json_t *vocab = json_object_get(json_object_get(root, "model"), "vocab");
    const json_t *added = json_object_get(root, "added_tokens");
    if (!json_is_object(vocab))
        return sl_err_set(e, SL_ERR_PARSE, "%s: model.vocab is not an object", path);
    if (added && !json_is_array(added) && !json_is_null(added))
        return sl_err_set(e, SL_ERR_PARSE, "%s: added_tokens is not an array", path);
    json_int_t max_id = -1;
    const char *key;
    const json_t *x;
    size_t i;
    json_object_foreach((json_t *)vocab, key, x)
    {
        if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) >= INT32_MAX)
            return sl_err_set(e, SL_ERR_PARSE, "%s: vocab entry '%s' has a bad id", path, key);
        if (json_integer_value(x) > max_id) max_id = json_integer_value(x);
    }
    json_array_foreach(added, i, x)
    {
        const json_t *id = json_object_get(x, "id");
        if (!json_is_integer(id) || json_integer_value(id) < 0 ||
            json_integer_value(id) >= INT32_MAX || !json_is_string(json_object_get(x, "content")))
            return sl_err_set(e, SL_ERR_PARSE, "%s: added_tokens[%zu] lacks a good id or content",
                              path, i);
        if (json_integer_value(id) > max_id) max_id = json_integer_value(id);
    }
    if (max_id < 0) return sl_err_set(e, SL_ERR_PARSE, "%s: empty vocabulary", path);
    spelling *sp = calloc((size_t)max_id + 1, sizeof *sp);
    if (!sp) return sl_err_set(e, SL_ERR_NOMEM, "%s: out of memory", path);
    json_object_foreach((json_t *)vocab, key, x)
    {
        spelling *s = &sp[json_integer_value(x)];
        if (s->s) {
            sl_status st = sl_err_set(e, SL_ERR_PARSE, "%s: id %lld is used by '%s' and '%s'", path,
                                      (long long)json_integer_value(x), s->s, key);
            free(sp);
            return st;
        }
        *s = (spelling){key, strlen(key), 0, 0};
    }
    json_array_foreach(added, i, x)
    { /* an added token replaces a vocabulary entry of the same id: its content is plain text */
        const json_t *c = json_object_get(x, "content");
        sp[json_integer_value(json_object_get(x, "id"))] =
            (spelling){json_string_value(c), json_string_length(c), 1,
                       json_is_true(json_object_get(x, "special"))};
    }
    *out = sp;
    *n = (int32_t)max_id + 1;
    return SL_OK;
}

sl_status sl_gram_vocab_load(const char *path, int32_t vocab_size, const int32_t *eos_ids,
                             int n_eos, sl_gram_vocab **out, sl_err *e)
{
    *out = NULL;
    char file[4096];
    struct stat sb;
    if (!stat(path, &sb) && S_ISDIR(sb.st_mode))
        snprintf(file, sizeof file, "%s/tokenizer.json", path);
    else
        snprintf(file, sizeof file, "%s", path);
    json_error_t je;
    json_t *root = json_load_file(file, 0, &je);
    if (!root) return sl_err_set(e, SL_ERR_IO, "%s: %s (line %d)", file, je.text, je.line);
    spelling *sp = NULL;
    int32_t n = 0;
    sl_status st = SL_OK;
    if (!decoder_is_bytelevel(json_object_get(root, "decoder")))
        st = sl_err_set(e, SL_ERR_UNSUPPORTED,
                        "%s: the decoder is not ByteLevel (grammar masks need byte-level tokens)",
                        file);
    if (st == SL_OK) st = load_spellings(root, file, &sp, &n, e);
    if (st == SL_OK && vocab_size && vocab_size < n)
        st = sl_err_set(e, SL_ERR_INVALID,
                        "%s: the vocabulary size %d is below the tokenizer's %d ids", file,
                        vocab_size, n);
    sl_gram_vocab *v = NULL;
    if (st == SL_OK) {
        size_t total = 0;
        for (int32_t i = 0; i < n; i++)
            total += sp[i].len;
        if (!(v = vocab_alloc(vocab_size ? vocab_size : n, total)))
            st = sl_err_set(e, SL_ERR_NOMEM, "%s: out of memory", file);
    }
    if (st == SL_OK) {
        uint32_t at = 0;
        for (int32_t i = 0; i < v->n; i++) {
            v->off[i] = at;
            const spelling *s = i < n ? &sp[i] : NULL;
            if (!s || !s->s || s->special) {
                v->hole[i] = 1;
            } else if (s->added) {
                memcpy(v->bytes + at, s->s, s->len);
                at += (uint32_t)s->len;
            } else
                at += (uint32_t)sl_bytelevel_decode(s->s, s->len, v->bytes + at);
        }
        v->off[v->n] = at;
        st = vocab_finish(v, eos_ids, n_eos, out, e);
        if (st) sl_err_wrap(e, "%s", file);
    }
    free(sp);
    json_decref(root);
    return st;
}

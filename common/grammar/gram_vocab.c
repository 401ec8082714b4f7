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
            v->node[at++] = (gram_node){t[k].p[depth], (uint16_t)(depth + 1), -1};
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
    free(t), free(path);
    return SL_OK;
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

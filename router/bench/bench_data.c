/* The random dataset of `sluice bench`: numpy-compatible draws for lengths and
 * arrival gaps, token ids from a tokenizer's non-special vocabulary. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "sl_file.h"
#include "sl_rng.h"

/* ---- MT19937 as numpy's legacy RandomState uses it ----------------------------- */

void sl_bench_mt_seed(sl_bench_mt *mt, uint32_t seed)
{
    /* np.random.seed(int) is the reference init_genrand */
    mt->s[0] = seed;
    for (int i = 1; i < 624; i++)
        mt->s[i] = 1812433253u * (mt->s[i - 1] ^ (mt->s[i - 1] >> 30)) + (uint32_t)i;
    mt->i = 624;
}

static void mt_regenerate(sl_bench_mt *mt)
{
    for (int k = 0; k < 624; k++) {
        uint32_t y = (mt->s[k] & 0x80000000u) | (mt->s[(k + 1) % 624] & 0x7fffffffu);
        mt->s[k] = mt->s[(k + 397) % 624] ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
    }
    mt->i = 0;
}

uint32_t sl_bench_mt_next(sl_bench_mt *mt)
{
    if (mt->i >= 624) mt_regenerate(mt);
    uint32_t y = mt->s[mt->i++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    return y ^ (y >> 18);
}

static uint64_t mask_of(uint64_t x)
{
    for (int sh = 1; sh < 64; sh *= 2) x |= x >> sh;
    return x;
}

int64_t sl_bench_mt_randint(sl_bench_mt *mt, int64_t lo, int64_t hi)
{
    /* numpy's masked rejection sampling (legacy randint): no draw at all for
     * an empty range, 32-bit draws while the range fits in 32 bits. */
    uint64_t range = (uint64_t)(hi - lo);
    if (range == 0) return lo;
    uint64_t mask = mask_of(range), v;
    if (range <= 0xffffffffu) {
        do v = sl_bench_mt_next(mt) & mask;
        while (v > range);
    } else {
        do v = (((uint64_t)sl_bench_mt_next(mt) << 32) | sl_bench_mt_next(mt)) & mask;
        while (v > range);
    }
    return lo + (int64_t)v;
}

double sl_bench_mt_exponential(sl_bench_mt *mt, double scale)
{
    uint32_t a = sl_bench_mt_next(mt) >> 5, b = sl_bench_mt_next(mt) >> 6;
    double u = (a * 67108864.0 + b) / 9007199254740992.0; /* 53-bit uniform in [0, 1) */
    return scale * -log1p(-u);
}

/* ---- vocabulary ---------------------------------------------------------------- */

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* vocab_size of a config.json, or 0 when there is none. */
static sl_status config_vocab_size(const char *dir, long long *out, sl_err *e)
{
    char path[4096];
    sl_path_join(path, sizeof path, dir, "config.json");
    *out = 0;
    if (!sl_file_exists(path)) return SL_OK;
    json_error_t je;
    json_t *cfg = json_load_file(path, 0, &je);
    if (!cfg) return sl_err_set(e, SL_ERR_PARSE, "%s: %s (line %d)", path, je.text, je.line);
    json_t *vs = json_object_get(cfg, "vocab_size");
    if (!vs) { /* multimodal configs nest the language model's */
        json_t *tc = json_object_get(cfg, "text_config");
        vs = tc ? json_object_get(tc, "vocab_size") : NULL;
    }
    if (json_is_integer(vs)) *out = json_integer_value(vs);
    json_decref(cfg);
    if (*out < 0) return sl_err_set(e, SL_ERR_INVALID, "%s: negative vocab_size", path);
    return SL_OK;
}

/* Collects the ids of tokenizer.json's model vocabulary (BPE/WordPiece map or
 * Unigram list), skipping special added tokens and ids >= cap (if cap > 0). */
static sl_status tokenizer_ids(const char *path, long long cap, sl_bench_vocab *v, sl_err *e)
{
    json_error_t je;
    json_t *tok = json_load_file(path, 0, &je);
    if (!tok) return sl_err_set(e, SL_ERR_PARSE, "%s: %s (line %d)", path, je.text, je.line);
    sl_status s = SL_OK;
    json_t *model = json_object_get(tok, "model");
    json_t *vocab = model ? json_object_get(model, "vocab") : NULL;
    size_t n = json_is_object(vocab) ? json_object_size(vocab) : json_array_size(vocab);
    if (!n) {
        s = sl_err_set(e, SL_ERR_PARSE, "%s: no model.vocab", path);
        goto out;
    }
    v->ids = malloc(n * sizeof *v->ids);
    if (!v->ids) {
        s = sl_err_set(e, SL_ERR_NOMEM, "%s: vocabulary of %zu ids", path, n);
        goto out;
    }
    if (json_is_object(vocab)) {
        const char *key;
        json_t *id;
        json_object_foreach(vocab, key, id)
        {
            if (!json_is_integer(id) || json_integer_value(id) < 0 ||
                json_integer_value(id) > INT32_MAX) {
                s = sl_err_set(e, SL_ERR_PARSE, "%s: model.vocab[\"%s\"] is not a token id", path,
                               key);
                goto out;
            }
            v->ids[v->n++] = (int32_t)json_integer_value(id);
        }
    } else {
        for (size_t i = 0; i < n; i++) v->ids[v->n++] = (int32_t)i; /* Unigram: id = index */
    }
    qsort(v->ids, (size_t)v->n, sizeof *v->ids, cmp_i32);

    /* special added tokens (eos, chat markup) would end or distort prompts */
    size_t i;
    json_t *t;
    json_array_foreach(json_object_get(tok, "added_tokens"), i, t)
    {
        json_t *id = json_object_get(t, "id");
        if (!json_is_true(json_object_get(t, "special")) || !json_is_integer(id)) continue;
        int32_t key = (int32_t)json_integer_value(id);
        int32_t *hit = bsearch(&key, v->ids, (size_t)v->n, sizeof *v->ids, cmp_i32);
        if (hit) {
            memmove(hit, hit + 1, (size_t)(v->ids + v->n - hit - 1) * sizeof *hit);
            v->n--;
        }
    }
    if (cap > 0)
        while (v->n > 0 && v->ids[v->n - 1] >= cap) v->n--;
    if (v->n == 0) s = sl_err_set(e, SL_ERR_INVALID, "%s: no non-special token ids", path);
out:
    json_decref(tok);
    if (s) sl_bench_vocab_free(v);
    return s;
}

sl_status sl_bench_vocab_load(sl_bench_vocab *v, const char *path, sl_err *e)
{
    memset(v, 0, sizeof *v);
    size_t len = strlen(path);
    if (len >= 5 && !strcmp(path + len - 5, ".json")) return tokenizer_ids(path, 0, v, e);

    long long cap = 0;
    sl_status s = config_vocab_size(path, &cap, e);
    if (s) return s;
    char tok[4096];
    sl_path_join(tok, sizeof tok, path, "tokenizer.json");
    if (sl_file_exists(tok)) return tokenizer_ids(tok, cap, v, e);
    if (cap <= 0)
        return sl_err_set(e, SL_ERR_NOTFOUND, "%s: no tokenizer.json (nor a config.json with "
                                              "vocab_size)", path);
    if (cap > INT32_MAX) return sl_err_set(e, SL_ERR_INVALID, "%s: vocab_size too large", path);
    v->ids = malloc((size_t)cap * sizeof *v->ids);
    if (!v->ids) return sl_err_set(e, SL_ERR_NOMEM, "%s: vocabulary of %lld ids", path, cap);
    for (v->n = 0; v->n < cap; v->n++) v->ids[v->n] = v->n;
    return SL_OK;
}

void sl_bench_vocab_free(sl_bench_vocab *v)
{
    free(v->ids);
    memset(v, 0, sizeof *v);
}

/* ---- dataset ------------------------------------------------------------------- */

/* sglang's compute_random_lens: lengths in [max(int(full * ratio), 1), full]. */
static void random_lens(sl_bench_mt *mt, int full, double ratio, int n, int *out)
{
    int64_t lo = (int64_t)(full * ratio);
    if (lo < 1) lo = 1;
    for (int i = 0; i < n; i++) out[i] = (int)sl_bench_mt_randint(mt, lo, full);
}

sl_status sl_bench_dataset_random(sl_bench_dataset *d, const sl_bench_vocab *v,
                                  const sl_bench_random_spec *spec, sl_bench_mt *mt,
                                  uint64_t seed, sl_err *e)
{
    memset(d, 0, sizeof *d);
    int n = spec->num_prompts;
    if (n < 1 || spec->input_len < 1 || spec->output_len < 1 || !(spec->range_ratio >= 0) ||
        spec->range_ratio > 1)
        return sl_err_set(e, SL_ERR_INVALID, "random dataset: bad spec (%d prompts, %d/%d "
                                             "tokens, ratio %g)", n, spec->input_len,
                          spec->output_len, spec->range_ratio);
    if (v->n < 1) return sl_err_set(e, SL_ERR_INVALID, "random dataset: empty vocabulary");
    int *in = malloc((size_t)n * sizeof *in), *out = malloc((size_t)n * sizeof *out);
    d->p = calloc((size_t)n, sizeof *d->p);
    if (!in || !out || !d->p) goto nomem;
    random_lens(mt, spec->input_len, spec->range_ratio, n, in);
    random_lens(mt, spec->output_len, spec->range_ratio, n, out);
    for (int i = 0; i < n; i++) {
        d->total_in += in[i];
        d->total_out += out[i];
    }
    d->pool = malloc((size_t)d->total_in * sizeof *d->pool);
    if (!d->pool) goto nomem;
    int32_t *w = d->pool;
    for (int i = 0; i < n; i++) {
        d->p[i] = (sl_bench_prompt){.ids = w, .n_in = in[i], .n_out = out[i]};
        for (int j = 0; j < in[i]; j++) {
            uint64_t r = sl_rng_mix(seed ^ sl_rng_mix(((uint64_t)i << 32) | (uint32_t)j));
            *w++ = v->ids[r % (uint64_t)v->n];
        }
    }
    d->n = n;
    free(in);
    free(out);
    return SL_OK;
nomem:
    free(in);
    free(out);
    sl_bench_dataset_free(d);
    return sl_err_set(e, SL_ERR_NOMEM, "random dataset of %d prompts", n);
}

void sl_bench_dataset_free(sl_bench_dataset *d)
{
    free(d->p);
    free(d->pool);
    memset(d, 0, sizeof *d);
}

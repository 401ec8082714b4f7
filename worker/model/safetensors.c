#include "safetensors.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_file.h"

#define MAX_SHARDS 256
#define MAX_HEADER (100u << 20) /* the format's own limit on header size */

struct sl_safetensors {
    sl_mmap maps[MAX_SHARDS];
    char *names[MAX_SHARDS];
    int n_maps;
    sl_safetensors_tensor *t;
    int n, cap;
};

sl_safetensors *sl_safetensors_new_empty(void) { return calloc(1, sizeof(sl_safetensors)); }

static int parse_dtype(const char *s, sl_dtype *dt)
{
    if (!strcmp(s, "BF16")) *dt = SL_DTYPE_BF16;
    else if (!strcmp(s, "F16")) *dt = SL_DTYPE_F16;
    else if (!strcmp(s, "F32")) *dt = SL_DTYPE_F32;
    else if (!strcmp(s, "I32")) *dt = SL_DTYPE_I32;
    else if (!strcmp(s, "F8_E4M3")) *dt = SL_DTYPE_F8E4M3;
    else return -1;
    return 0;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(((const sl_safetensors_tensor *)a)->name, ((const sl_safetensors_tensor *)b)->name);
}

sl_status sl_safetensors_parse(sl_safetensors *st, const void *file, size_t len, const char *fname, sl_err *e)
{
    const unsigned char *p = file;
    if (len < 8) return sl_err_set(e, SL_ERR_PARSE, "%s: too short for a safetensors file", fname);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | p[i];
    if (hlen > MAX_HEADER || hlen > len - 8)
        return sl_err_set(e, SL_ERR_PARSE, "%s: header length %llu exceeds the file", fname,
                          (unsigned long long)hlen);
    json_error_t je;
    json_t *h = json_loadb((const char *)p + 8, (size_t)hlen, 0, &je);
    if (!json_is_object(h)) {
        json_decref(h);
        return sl_err_set(e, SL_ERR_PARSE, "%s: bad header JSON: %s", fname, je.text);
    }
    const unsigned char *data = p + 8 + hlen;
    size_t dlen = len - 8 - (size_t)hlen;
    const char *key;
    json_t *v;
    sl_status s = SL_OK;
    json_object_foreach(h, key, v)
    {
        if (!strcmp(key, "__metadata__")) continue;
        const char *dts = json_string_value(json_object_get(v, "dtype"));
        json_t *shape = json_object_get(v, "shape"), *off = json_object_get(v, "data_offsets");
        sl_safetensors_tensor t = {0};
        if (!dts || !json_is_array(shape) || !json_is_array(off) || json_array_size(off) != 2) {
            s = sl_err_set(e, SL_ERR_PARSE, "%s: tensor %s: malformed entry", fname, key);
            break;
        }
        if (parse_dtype(dts, &t.dtype)) {
            s = sl_err_set(e, SL_ERR_UNSUPPORTED, "%s: tensor %s: dtype %s not supported (BF16, F16, F32, I32, F8_E4M3)",
                           fname, key, dts);
            break;
        }
        if (json_array_size(shape) > SL_MAX_DIMS) {
            s = sl_err_set(e, SL_ERR_UNSUPPORTED, "%s: tensor %s: more than %d dims", fname, key, SL_MAX_DIMS);
            break;
        }
        uint64_t numel = 1;
        t.ndim = (int)json_array_size(shape);
        for (int d = 0; d < t.ndim; d++) {
            json_int_t x = json_integer_value(json_array_get(shape, (size_t)d));
            if (!json_is_integer(json_array_get(shape, (size_t)d)) || x < 0 || x > (1ll << 40)) {
                s = sl_err_set(e, SL_ERR_PARSE, "%s: tensor %s: bad shape", fname, key);
                goto out;
            }
            t.shape[d] = x;
            numel *= (uint64_t)x;
            if (numel > (1ull << 40)) {
                s = sl_err_set(e, SL_ERR_PARSE, "%s: tensor %s: too large", fname, key);
                goto out;
            }
        }
        json_int_t b = json_integer_value(json_array_get(off, 0));
        json_int_t en = json_integer_value(json_array_get(off, 1));
        if (b < 0 || en < b || (uint64_t)en > dlen ||
            (uint64_t)(en - b) != numel * sl_dtype_size(t.dtype)) {
            s = sl_err_set(e, SL_ERR_PARSE, "%s: tensor %s: data_offsets [%lld, %lld] do not match "
                           "shape and dtype or the file size", fname, key, (long long)b, (long long)en);
            break;
        }
        t.data = data + b;
        t.nbytes = (size_t)(en - b);
        t.file = st->n_maps > 0 ? st->n_maps - 1 : 0;
        t.name = strdup(key);
        if (st->n == st->cap) {
            int cap = st->cap ? st->cap * 2 : 64;
            sl_safetensors_tensor *nt = realloc(st->t, sizeof *nt * (size_t)cap);
            if (!nt) {
                free((char *)t.name);
                s = sl_err_set(e, SL_ERR_NOMEM, "out of memory");
                break;
            }
            st->t = nt;
            st->cap = cap;
        }
        st->t[st->n++] = t;
    }
out:
    json_decref(h);
    /* sorted by name so lookups are binary searches (real MoE checkpoints hold
     * tens of thousands of tensors, each looked up once at load) */
    if (st->n > 1) qsort(st->t, (size_t)st->n, sizeof *st->t, by_name);
    return s;
}

static sl_status open_file(sl_safetensors *st, const char *dir, const char *name, sl_err *e)
{
    char path[4096];
    if (st->n_maps == MAX_SHARDS) return sl_err_set(e, SL_ERR_LIMIT, "more than %d shards", MAX_SHARDS);
    sl_mmap *m = &st->maps[st->n_maps];
    sl_status s = sl_mmap_open(m, sl_path_join(path, sizeof path, dir, name), e);
    if (s) return s;
    if (!(st->names[st->n_maps] = strdup(name))) {
        sl_mmap_close(m);
        return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    }
    st->n_maps++;
    return sl_safetensors_parse(st, m->data, m->len, name, e);
}

sl_status sl_safetensors_open(sl_safetensors **out, const char *dir, sl_err *e)
{
    sl_safetensors *st = sl_safetensors_new_empty();
    if (!st) return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    char path[4096];
    sl_status s;
    sl_path_join(path, sizeof path, dir, "model.safetensors.index.json");
    if (sl_file_exists(path)) {
        char *txt = NULL;
        if ((s = sl_file_read(path, &txt, NULL, e))) goto fail;
        json_error_t je;
        json_t *idx = json_loads(txt, 0, &je);
        free(txt);
        json_t *wm = json_object_get(idx, "weight_map");
        if (!json_is_object(wm)) {
            json_decref(idx);
            s = sl_err_set(e, SL_ERR_PARSE, "%s: no weight_map object", path);
            goto fail;
        }
        /* open each distinct shard once, in order of first mention */
        const char *files[MAX_SHARDS];
        int nf = 0;
        const char *key;
        json_t *v;
        json_object_foreach(wm, key, v)
        {
            const char *f = json_string_value(v);
            if (!f || strchr(f, '/')) {
                json_decref(idx);
                s = sl_err_set(e, SL_ERR_PARSE, "%s: bad shard name for %s", path, key);
                goto fail;
            }
            int seen = 0;
            for (int i = 0; i < nf; i++) seen |= !strcmp(files[i], f);
            if (!seen && nf < MAX_SHARDS) files[nf++] = f;
        }
        for (int i = 0; i < nf; i++)
            if ((s = open_file(st, dir, files[i], e))) {
                json_decref(idx);
                goto fail;
            }
        json_decref(idx);
    } else {
        if ((s = open_file(st, dir, "model.safetensors", e))) goto fail;
    }
    *out = st;
    return SL_OK;
fail:
    sl_safetensors_close(st);
    return s;
}

const sl_safetensors_tensor *sl_safetensors_find(const sl_safetensors *st, const char *name)
{
    sl_safetensors_tensor key = {.name = name};
    return st->n ? bsearch(&key, st->t, (size_t)st->n, sizeof *st->t, by_name) : NULL;
}

void sl_safetensors_close(sl_safetensors *st)
{
    if (!st) return;
    for (int i = 0; i < st->n; i++) free((char *)st->t[i].name);
    free(st->t);
    for (int i = 0; i < st->n_maps; i++) {
        sl_mmap_close(&st->maps[i]);
        free(st->names[i]);
    }
    free(st);
}

int sl_safetensors_count(const sl_safetensors *st) { return st->n; }

const sl_safetensors_tensor *sl_safetensors_at(const sl_safetensors *st, int i) { return &st->t[i]; }

int sl_safetensors_files(const sl_safetensors *st) { return st->n_maps; }

const char *sl_safetensors_file_name(const sl_safetensors *st, int file) { return st->names[file]; }

sl_status sl_safetensors_write(const char *path, const sl_safetensors_tensor *ts, int n, sl_err *e)
{
    static const char *dname[] = {"F32", "BF16", "F16", "I32", "F8_E4M3"};
    json_t *h = json_object();
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        json_t *shape = json_array();
        for (int d = 0; d < ts[i].ndim; d++) json_array_append_new(shape, json_integer(ts[i].shape[d]));
        json_object_set_new(h, ts[i].name,
                            json_pack("{s:s, s:o, s:[I,I]}", "dtype", dname[ts[i].dtype], "shape", shape,
                                      "data_offsets", (json_int_t)off, (json_int_t)(off + ts[i].nbytes)));
        off += ts[i].nbytes;
    }
    char *hs = json_dumps(h, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(h);
    size_t hl = strlen(hs), pad = (8 - hl % 8) % 8; /* data aligned to 8 bytes */
    FILE *f = fopen(path, "wb");
    if (!f) {
        free(hs);
        return sl_err_set(e, SL_ERR_IO, "cannot create %s", path);
    }
    uint64_t total = hl + pad;
    unsigned char lenb[8];
    for (int i = 0; i < 8; i++) lenb[i] = (unsigned char)(total >> (8 * i));
    int ok = fwrite(lenb, 1, 8, f) == 8 && fwrite(hs, 1, hl, f) == hl &&
             fwrite("        ", 1, pad, f) == pad;
    for (int i = 0; ok && i < n; i++) ok = fwrite(ts[i].data, 1, ts[i].nbytes, f) == ts[i].nbytes;
    free(hs);
    if (fclose(f) != 0 || !ok) return sl_err_set(e, SL_ERR_IO, "cannot write %s", path);
    return SL_OK;
}

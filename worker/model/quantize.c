#include "quantize.h"

#include <dirent.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model.h"
#include "sl_file.h"

#define INDEX_JSON "model.safetensors.index.json"

void sl_quantize_free(sl_safetensors_tensor *t)
{
    free((char *)t->name);
    free((void *)t->data);
    t->name = NULL;
    t->data = NULL;
}

sl_status sl_quantize_fp8_tensor(const sl_safetensors_tensor *t, sl_safetensors_tensor out[2], sl_err *e)
{
    memset(out, 0, 2 * sizeof *out);
    if (t->ndim != 2 || (t->dtype != SL_DTYPE_BF16 && t->dtype != SL_DTYPE_F16 && t->dtype != SL_DTYPE_F32))
        return sl_err_set(e, SL_ERR_INVALID, "tensor %s: only 2-D BF16, F16 or F32 weights quantize to FP8 (%s)",
                          t->name, sl_dtype_name(t->dtype));
    const int64_t R = t->shape[0], C = t->shape[1], B = SL_FP8_BLOCK;
    const int64_t nrb = (R + B - 1) / B, ncb = (C + B - 1) / B;
    float *f = malloc(sizeof(float) * (size_t)(R * C)), *sc = malloc(sizeof(float) * (size_t)(nrb * ncb));
    uint8_t *q = malloc((size_t)(R * C));
    char *qn = strdup(t->name), *sn = malloc(strlen(t->name) + sizeof "_scale_inv");
    if (!f || !sc || !q || !qn || !sn) {
        free(f), free(sc), free(q), free(qn), free(sn);
        return sl_err_set(e, SL_ERR_NOMEM, "quantizing %s: out of memory", t->name);
    }
    for (int64_t i = 0; i < R * C; i++) f[i] = sl_load_f32(t->data, t->dtype, i);
    sl_fp8_quantize_blocks(f, R, C, q, sc);
    free(f);
    sprintf(sn, "%s_scale_inv", t->name);
    out[0] = (sl_safetensors_tensor){.name = qn, .dtype = SL_DTYPE_F8E4M3, .ndim = 2, .shape = {R, C},
                                     .data = q, .nbytes = (size_t)(R * C), .file = t->file};
    out[1] = (sl_safetensors_tensor){.name = sn, .dtype = SL_DTYPE_F32, .ndim = 2, .shape = {nrb, ncb},
                                     .data = sc, .nbytes = sizeof(float) * (size_t)(nrb * ncb), .file = t->file};
    return SL_OK;
}

int sl_quantize_kept_linear(const char *name, int ndim)
{
    size_t n = strlen(name);
    return ndim == 2 && n > 7 && !strcmp(name + n - 7, ".weight") && !sl_model_fp8_target(name) &&
           !strstr(name, "embed_tokens");
}

static int by_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

json_t *sl_quantize_fp8_config(const char *const *kept, int n)
{
    const char **v = malloc(sizeof *v * (size_t)(n ? n : 1));
    json_t *q = json_pack("{s:s, s:s, s:s, s:[i,i], s:[]}", "quant_method", "fp8", "fmt", "e4m3", "activation_scheme",
                          "dynamic", "weight_block_size", SL_FP8_BLOCK, SL_FP8_BLOCK, "modules_to_not_convert");
    if (!v || !q) {
        free(v);
        json_decref(q);
        return NULL;
    }
    memcpy(v, kept, sizeof *v * (size_t)n);
    qsort(v, (size_t)n, sizeof *v, by_str);
    json_t *arr = json_object_get(q, "modules_to_not_convert");
    for (int i = 0; i < n; i++) json_array_append_new(arr, json_stringn(v[i], strlen(v[i]) - 7)); /* less ".weight" */
    free(v);
    return q;
}

/* The tensors of one shard in file order (as the source laid them out). */
static int by_data(const void *a, const void *b)
{
    const char *x = (*(const sl_safetensors_tensor *const *)a)->data;
    const char *y = (*(const sl_safetensors_tensor *const *)b)->data;
    return x < y ? -1 : x > y;
}

/* A shard's projections quantized by several threads: job i fills
 * out[slot[i]], out[slot[i] + 1] from in[src[i]]; the first error wins. */
typedef struct shard_jobs {
    const sl_safetensors_tensor **in;
    sl_safetensors_tensor *out;
    const int *src, *slot;
    int n;
    atomic_int next;
    pthread_mutex_t mu;
    sl_status status;
    sl_err *e;
} shard_jobs;

static void *quantize_worker(void *arg)
{
    shard_jobs *j = arg;
    for (int i; (i = atomic_fetch_add(&j->next, 1)) < j->n;) {
        sl_err e = {0};
        if (!sl_quantize_fp8_tensor(j->in[j->src[i]], j->out + j->slot[i], &e)) continue;
        pthread_mutex_lock(&j->mu);
        if (!j->status) j->status = sl_err_set(j->e, e.code, "%s", e.msg);
        pthread_mutex_unlock(&j->mu);
        atomic_store(&j->next, j->n); /* the others stop at their next job */
    }
    return NULL;
}

/* Runs the jobs on up to one thread a core (at most 16: the copies are
 * memory-bound beyond that). */
static sl_status run_jobs(shard_jobs *j)
{
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int nt = cores < 1 ? 1 : cores > 16 ? 16 : (int)cores, started = 0;
    if (nt > j->n) nt = j->n;
    pthread_t th[16];
    for (; started < nt - 1; started++)
        if (pthread_create(&th[started], NULL, quantize_worker, j)) break;
    quantize_worker(j);
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    return j->status;
}

/* Shard `file` of st to out_dir under its own name; every output tensor's
 * name -> shard into wm. */
static sl_status write_shard(const sl_safetensors *st, int file, const char *out_dir, json_t *wm,
                             sl_quantize_report *r, sl_err *e)
{
    int n = 0, total = sl_safetensors_count(st);
    size_t cap = (size_t)(total ? total : 1);
    const sl_safetensors_tensor **in = malloc(sizeof *in * cap);
    sl_safetensors_tensor *out = calloc(2 * cap, sizeof *out);
    int *src = malloc(sizeof(int) * cap), *slot = malloc(sizeof(int) * cap);
    shard_jobs j = {.mu = PTHREAD_MUTEX_INITIALIZER, .e = e};
    sl_status s = SL_OK;
    int m = 0;
    if (!in || !out || !src || !slot) {
        s = sl_err_set(e, SL_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < total; i++)
        if (sl_safetensors_at(st, i)->file == file) in[n++] = sl_safetensors_at(st, i);
    qsort(in, (size_t)n, sizeof *in, by_data);
    for (int i = 0; i < n && !s; i++) {
        const sl_safetensors_tensor *t = in[i];
        r->in_bytes += (int64_t)t->nbytes;
        if (t->dtype == SL_DTYPE_F8E4M3) {
            s = sl_err_set(e, SL_ERR_INVALID, "tensor %s is already F8_E4M3 (config.json has no quantization_config)",
                           t->name);
        } else if (t->ndim == 2 && sl_model_fp8_target(t->name)) {
            src[j.n] = i;
            slot[j.n++] = m;
            m += 2;
        } else {
            out[m++] = *t;
        }
    }
    j.in = in, j.out = out, j.src = src, j.slot = slot;
    if (!s && j.n) s = run_jobs(&j);
    r->quantized += j.n;
    const char *fname = sl_safetensors_file_name(st, file);
    char path[4096];
    if (!s) s = sl_safetensors_write(sl_path_join(path, sizeof path, out_dir, fname), out, m, e);
    for (int i = 0; i < m && !s; i++) {
        json_object_set_new(wm, out[i].name, json_string(fname));
        r->out_bytes += (int64_t)out[i].nbytes;
        r->tensors++;
    }
done:
    for (int i = 0; slot && i < j.n; i++) {
        sl_quantize_free(&out[slot[i]]); /* (zeroed where a job did not run) */
        sl_quantize_free(&out[slot[i] + 1]);
    }
    free(in);
    free(out);
    free(src);
    free(slot);
    return s;
}

/* config.json of in_dir (refused if already quantized) with the FP8
 * quantization_config for st's tensors, as text into *txt (malloc'd). */
static sl_status fp8_config(const char *in_dir, const sl_safetensors *st, char **txt, sl_err *e)
{
    char path[4096], *src = NULL;
    sl_status s = sl_file_read(sl_path_join(path, sizeof path, in_dir, "config.json"), &src, NULL, e);
    if (s) return s;
    json_error_t je;
    json_t *cfg = json_loads(src, 0, &je);
    free(src);
    json_t *q = json_object_get(cfg, "quantization_config");
    const char *m = json_string_value(json_object_get(q, "quant_method"));
    if (!json_is_object(cfg))
        s = sl_err_set(e, SL_ERR_PARSE, "%s: %s", path, je.text);
    else if (q && !json_is_null(q))
        s = sl_err_set(e, SL_ERR_INVALID, "%s is already quantized (quantization_config.quant_method '%s')", in_dir,
                       m ? m : "?");
    int n = sl_safetensors_count(st), nk = 0;
    const char **kept = s ? NULL : malloc(sizeof *kept * (size_t)(n ? n : 1));
    if (!s && !kept) s = sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    for (int i = 0; !s && i < n; i++)
        if (sl_quantize_kept_linear(sl_safetensors_at(st, i)->name, sl_safetensors_at(st, i)->ndim))
            kept[nk++] = sl_safetensors_at(st, i)->name;
    json_t *qc = s ? NULL : sl_quantize_fp8_config(kept, nk);
    free(kept);
    if (!s && !qc) s = sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    if (!s) {
        json_object_set_new(cfg, "quantization_config", qc);
        if (!(*txt = json_dumps(cfg, JSON_INDENT(2) | JSON_PRESERVE_ORDER)))
            s = sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    }
    json_decref(cfg);
    return s;
}

/* Whether a file of the checkpoint directory is weights (rewritten here or
 * not carried: pickled copies of the same weights). */
static int is_weights(const char *name)
{
    static const char *sfx[] = {".safetensors", ".bin", ".pt", ".pth", ".gguf"};
    size_t n = strlen(name);
    if (!strcmp(name, INDEX_JSON) || !strcmp(name, "pytorch_model.bin.index.json")) return 1;
    for (size_t i = 0; i < sizeof sfx / sizeof sfx[0]; i++) {
        size_t k = strlen(sfx[i]);
        if (n >= k && !strcmp(name + n - k, sfx[i])) return 1;
    }
    return 0;
}

/* The other regular files at in_dir's top level (tokenizer, generation
 * config, chat template, license) to out_dir. */
static sl_status copy_rest(const char *in_dir, const char *out_dir, sl_err *e)
{
    DIR *d = opendir(in_dir);
    if (!d) return sl_err_set(e, SL_ERR_IO, "cannot list %s", in_dir);
    sl_status s = SL_OK;
    struct dirent *de;
    while (!s && (de = readdir(d))) {
        char src[4096], dst[4096], *buf = NULL;
        size_t len = 0;
        struct stat sb;
        sl_path_join(src, sizeof src, in_dir, de->d_name);
        if (de->d_name[0] == '.' || !strcmp(de->d_name, "config.json") || is_weights(de->d_name) ||
            stat(src, &sb) || !S_ISREG(sb.st_mode))
            continue;
        if (!(s = sl_file_read(src, &buf, &len, e)))
            s = sl_file_write(sl_path_join(dst, sizeof dst, out_dir, de->d_name), buf, len, e);
        free(buf);
    }
    closedir(d);
    return s;
}

sl_status sl_quantize_fp8_checkpoint(const char *in_dir, const char *out_dir, sl_quantize_report *r, sl_err *e)
{
    memset(r, 0, sizeof *r);
    char path[4096], cfg_path[4096], a[PATH_MAX], b[PATH_MAX], *cfg = NULL;
    sl_path_join(cfg_path, sizeof cfg_path, out_dir, "config.json");
    if (sl_file_exists(cfg_path))
        return sl_err_set(e, SL_ERR_INVALID, "%s already holds a model (config.json): give a new directory", out_dir);
    sl_safetensors *st = NULL;
    sl_status s = sl_safetensors_open(&st, in_dir, e);
    if (!s) s = fp8_config(in_dir, st, &cfg, e);
    if (!s) s = sl_mkdirs(out_dir, e);
    if (!s && realpath(in_dir, a) && realpath(out_dir, b) && !strcmp(a, b))
        s = sl_err_set(e, SL_ERR_INVALID, "the output directory is the input %s", in_dir);
    json_t *wm = json_object();
    for (int f = 0; !s && f < sl_safetensors_files(st); f++) s = write_shard(st, f, out_dir, wm, r, e);
    if (!s && sl_file_exists(sl_path_join(path, sizeof path, in_dir, INDEX_JSON))) {
        json_t *idx = json_pack("{s:{s:I}, s:O}", "metadata", "total_size", (json_int_t)r->out_bytes, "weight_map", wm);
        char *txt = json_dumps(idx, JSON_INDENT(2) | JSON_SORT_KEYS);
        json_decref(idx);
        s = txt ? sl_file_write(sl_path_join(path, sizeof path, out_dir, INDEX_JSON), txt, strlen(txt), e)
                : sl_err_set(e, SL_ERR_NOMEM, "out of memory");
        free(txt);
    }
    json_decref(wm);
    sl_safetensors_close(st);
    if (!s) s = copy_rest(in_dir, out_dir, e);
    /* config.json last: a directory this failed to finish is not a model */
    if (!s) s = sl_file_write(cfg_path, cfg, strlen(cfg), e);
    free(cfg);
    return s;
}

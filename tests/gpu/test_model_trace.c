/* Op-by-op comparison of whole models on the CUDA backend against the CPU
 * reference, through the model's trace hook (sl_model_set_trace).
 *
 * Each golden prompt (and a 70-token prompt continued by a 9-token chunk)
 * runs on the CPU, whose op outputs are recorded, then twice on CUDA:
 *   free    CUDA runs on its own; the final logits' error is reported, with
 *           the first op whose accumulated error passes bf16 noise.
 *   forced  after each op, CUDA's output is compared with the CPU's and then
 *           overwritten by it (rounded to the tensor's dtype), so every op
 *           starts from the reference inputs: its error is its own, not
 *           inherited. A routing near-tie or a recurrence that amplifies
 *           noise shows up in the free run only; a wrong kernel shows up here.
 * Checks: every forced op is within bf16 rounding of the CPU (rel L2 < 2e-2)
 * and chooses the same experts. The router computes its logits and its choice
 * in one op, before the trace can force the logits: its ids and weights are
 * compared with the CPU's routing of CUDA's own logits. The free runs are reported, not checked:
 * bf16 may flip a routing near-tie (the golden MoE fixtures have router
 * logit gaps down to 3e-4), which changes that token's MoE output wholesale
 * and, through attention and the recurrent state, every later token's.
 *
 *   SLUICE_SRC=. build/bin/test_model_trace [arch]   (SL_TRACE_ALL=1: every op)
 */
#include <cuda_runtime.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "sl_test.h"
#include "solo.h"

#define NOISE 1e-2 /* accumulated error above this is flagged (free runs) */
#define OWN 2e-2   /* one op's own error must stay below this (forced runs) */

typedef struct rec {
    int layer;
    char op[24];
    int64_t rows, cols;
    float *v;
} rec;

/* One traced forward sequence: recording (ref NULL) or replaying against ref. */
typedef struct trace {
    sl_backend *be;
    rec *r;
    int n, cap;
    const struct trace *ref; /* CPU records to compare with */
    int force;               /* overwrite each output with the reference */
    int bad;                 /* download or shape trouble: stop comparing */
} trace;

static int is_ids(const char *op) { return !strcmp(op, "route_ids"); }
static int is_route(const char *op) { return is_ids(op) || !strcmp(op, "route_w"); }

/* Writes host f32 values v into t (a device tensor, any row stride) in t's dtype. */
static void force_to(const sl_tensor *t, const float *v)
{
    int64_t R = sl_tensor_rows(t), C = sl_tensor_cols(t), ld = sl_tensor_ld(t);
    size_t esz = sl_dtype_size(t->dtype);
    char *buf = malloc(esz * (size_t)(R * C));
    SL_ASSERT(buf);
    for (int64_t i = 0; i < R * C; i++) {
        switch (t->dtype) {
        case SL_DTYPE_BF16: ((uint16_t *)buf)[i] = sl_f32_to_bf16(v[i]); break;
        case SL_DTYPE_F16: ((uint16_t *)buf)[i] = sl_f32_to_f16(v[i]); break;
        case SL_DTYPE_I32: ((int32_t *)buf)[i] = (int32_t)v[i]; break;
        default: ((float *)buf)[i] = v[i]; break;
        }
    }
    /* the op that produced t has finished (its download waited); the next
     * ops are queued only after this returns */
    cudaError_t err = cudaMemcpy2D(t->data, esz * (size_t)ld, buf, esz * (size_t)C, esz * (size_t)C,
                                   (size_t)R, cudaMemcpyHostToDevice);
    if (err == cudaSuccess) err = cudaDeviceSynchronize();
    CHECK_MSG(err == cudaSuccess, "forcing a traced tensor: %s", cudaGetErrorString(err));
    free(buf);
}

static void on_op(void *ctx, int layer, const char *op, const sl_tensor *t)
{
    trace *tr = ctx;
    if (tr->bad) return;
    if (tr->n == tr->cap) {
        tr->cap = tr->cap ? 2 * tr->cap : 256;
        tr->r = realloc(tr->r, sizeof(rec) * (size_t)tr->cap);
        SL_ASSERT(tr->r);
    }
    rec *r = &tr->r[tr->n];
    r->layer = layer;
    snprintf(r->op, sizeof r->op, "%s", op);
    r->rows = sl_tensor_rows(t);
    r->cols = sl_tensor_cols(t);
    r->v = malloc(sizeof(float) * (size_t)(r->rows * r->cols));
    SL_ASSERT(r->v);
    sl_err e = {0};
    if (sl_be_download(tr->be, t, r->v, &e) != SL_OK) {
        CHECK_MSG(0, "download of %s: %s", op, e.msg);
        free(r->v);
        tr->bad = 1;
        return;
    }
    tr->n++;
    if (!tr->force) return;
    const rec *c = tr->n <= tr->ref->n ? &tr->ref->r[tr->n - 1] : NULL;
    if (!c || strcmp(c->op, op) || c->rows != r->rows || c->cols != r->cols) {
        CHECK_MSG(0, "op %d (%s) does not match the cpu trace", tr->n - 1, op);
        tr->bad = 1;
        return;
    }
    force_to(t, c->v);
}

static void trace_clear(trace *tr)
{
    for (int i = 0; i < tr->n; i++) free(tr->r[i].v);
    free(tr->r);
    memset(tr, 0, sizeof *tr);
}

/* Feeds ids in pieces of the given lengths (a fresh sequence) on m, traced
 * into tr; out (room for the longest piece) gets the last piece's logits. */
static int feed(sl_model *m, const int32_t *ids, const int *pieces, int n_pieces, trace *tr, float *out)
{
    sl_err e = {0};
    sl_solo s;
    if (sl_solo_init(&s, m, 512, 16, &e) != SL_OK) {
        CHECK_MSG(0, "%s", e.msg);
        return -1;
    }
    tr->be = sl_model_backend(m);
    sl_model_set_trace(m, on_op, tr);
    int ok = 1;
    for (int i = 0; i < n_pieces && ok; i++) {
        ok = sl_solo_feed(&s, ids, pieces[i], 1, out, &e) == SL_OK;
        ids += pieces[i];
    }
    CHECK_MSG(ok, "forward on %s: %s", sl_be_name(tr->be), e.msg);
    sl_model_set_trace(m, NULL, NULL);
    sl_solo_free(&s);
    return ok && !tr->bad ? 0 : -1;
}

/* Error of CUDA record b against CPU record a: rel L2, or for routing ids the
 * share of differing choices. */
static double op_err(const rec *a, const rec *b)
{
    int64_t n = a->rows * a->cols;
    if (!is_ids(a->op)) return sl_test_rel_l2(b->v, a->v, n);
    int64_t diff = 0;
    for (int64_t k = 0; k < n; k++) diff += a->v[k] != b->v[k];
    return (double)diff / (double)n;
}

/* The CPU's routing of CUDA's router logits lg into ids and w (records shaped
 * as CUDA's ids and w: k routed experts, then any fused shared expert). */
static void route_own(sl_backend *cpu, const sl_model_config *g, const rec *lg, rec *ids, rec *w)
{
    int64_t T = lg->rows, E = lg->cols, K = ids->cols;
    int k = g->n_experts_per_tok;
    int32_t *iv = malloc(sizeof(int32_t) * (size_t)(T * K));
    SL_ASSERT(iv);
    sl_tensor tl = sl_tensor_make(lg->v, SL_DTYPE_F32, 2, (int64_t[]){T, E});
    sl_tensor ti = sl_tensor_make(iv, SL_DTYPE_I32, 2, (int64_t[]){T, K});
    sl_tensor tw = sl_tensor_make(w->v, SL_DTYPE_F32, 2, (int64_t[]){T, K});
    sl_be_moe_route(cpu, &ti, &tw, &tl, k, g->norm_topk_prob, (int)K - k);
    for (int64_t i = 0; i < T * K; i++) ids->v[i] = (float)iv[i];
    free(iv);
}

static void print_op(const char *what, const rec *a, double err, const char *mark)
{
    printf("  %-6s L%-2d %-14s [%4lld x %4lld] %s %.3e%s\n", what, a->layer, a->op, (long long)a->rows,
           (long long)a->cols, is_ids(a->op) ? "differ" : "rel L2", err, mark);
}

/* The tokens whose expert choices differ between a and b. */
static void print_flips(const rec *a, const rec *b)
{
    printf("  free   L%-2d experts chosen differently for token", a->layer);
    for (int64_t r = 0; r < a->rows; r++)
        for (int64_t c = 0; c < a->cols; c++)
            if (a->v[r * a->cols + c] != b->v[r * a->cols + c]) {
                printf(" %lld", (long long)r);
                break;
            }
    printf("\n");
}

/* One case: CPU record, CUDA free and forced replays, report and checks. */
static void run_case(const char *arch, const char *name, sl_model *mc, sl_model *mg, const int32_t *ids,
                     const int *pieces, int n_pieces)
{
    int all = getenv("SL_TRACE_ALL") != NULL, len = pieces[n_pieces - 1], most = 0;
    for (int i = 0; i < n_pieces; i++) most = pieces[i] > most ? pieces[i] : most;
    int V = sl_model_cfg(mc)->vocab_size;
    float *lc = malloc(sizeof(float) * (size_t)most * (size_t)V);
    float *lg = malloc(sizeof(float) * (size_t)most * (size_t)V);
    trace tc = {0}, tf = {0}, tx = {0};
    tf.ref = tx.ref = &tc;
    tx.force = 1;
    if (feed(mc, ids, pieces, n_pieces, &tc, lc) || feed(mg, ids, pieces, n_pieces, &tf, lg)) goto out;
    double free_err = sl_test_rel_l2(lg, lc, (long)len * V);
    int agree = 0;
    for (int t = 0; t < len; t++) agree += sl_argmax(lg + (size_t)t * V, V) == sl_argmax(lc + (size_t)t * V, V);
    if (feed(mg, ids, pieces, n_pieces, &tx, lg)) goto out;
    CHECK_MSG(tc.n == tf.n && tc.n == tx.n, "%s %s: %d ops traced on cpu, %d and %d on cuda", arch, name,
              tc.n, tf.n, tx.n);
    if (tc.n != tf.n || tc.n != tx.n) goto out;
    printf("%s %s: free run: logits rel L2 %.3e, argmax %d/%d as cpu\n", arch, name, free_err, agree, len);
    int jumped = 0;
    double worst = 0;
    int wi = 0;
    rec own[2] = {{0}}; /* the CPU's route_ids and route_w from CUDA's router logits */
    for (int i = 0; i < tc.n; i++) {
        const rec *a = &tc.r[i];
        double ef = op_err(a, &tf.r[i]);
        if (is_ids(a->op) && i > 0 && i + 1 < tc.n && !strcmp(tc.r[i - 1].op, "router") &&
            !strcmp(tc.r[i + 1].op, "route_w")) {
            for (int j = 0; j < 2; j++) {
                float *v = realloc(own[j].v, sizeof(float) * (size_t)(tc.r[i + j].rows * tc.r[i + j].cols));
                SL_ASSERT(v);
                own[j] = tc.r[i + j];
                own[j].v = v;
            }
            route_own(sl_model_backend(mc), sl_model_cfg(mc), &tx.r[i - 1], &own[0], &own[1]);
        }
        double ex = op_err(is_route(a->op) && own[0].v ? &own[is_ids(a->op) ? 0 : 1] : a, &tx.r[i]);
        int ids_op = is_ids(a->op);
        if (all) {
            print_op("free", a, ef, "");
            print_op("forced", a, ex, "");
        } else if (!ids_op && ef > NOISE && !jumped) {
            print_op("free", a, ef, "   <== first above bf16 noise (accumulated)");
        }
        if (ids_op && ef > 0) print_flips(a, &tf.r[i]);
        if (!ids_op && ef > NOISE) jumped = 1;
        if (ids_op ? ex > 0 : ex > OWN) print_op("forced", a, ex, "   <== this op alone is off");
        CHECK_MSG(ids_op ? ex == 0 : ex < OWN, "%s %s: %s (layer %d) alone is off by %.3e", arch, name,
                  a->op, a->layer, ex);
        if (!ids_op && ex > worst) {
            worst = ex;
            wi = i;
        }
    }
    printf("%s %s: forced run: worst op %s (layer %d) rel L2 %.3e\n", arch, name, tc.r[wi].op,
           tc.r[wi].layer, worst);
    free(own[0].v);
    free(own[1].v);
out:
    trace_clear(&tc);
    trace_clear(&tf);
    trace_clear(&tx);
    free(lc);
    free(lg);
}

int main(int argc, char **argv)
{
    const char *src = getenv("SLUICE_SRC");
    const char *archs[] = {"qwen3", "qwen3_moe", "qwen3_next"};
    sl_err e = {0};
    sl_backend *gpu = sl_backend_cuda_new(0, &e);
    if (!gpu) {
        printf("test_model_trace: no CUDA device (%s)\n", e.msg);
        return 1;
    }
    sl_backend *cpu = sl_backend_cpu_new();
    for (int a = 0; a < 3; a++) {
        if (argc > 1 && strcmp(argv[1], archs[a])) continue;
        char dir[1024], path[1100];
        snprintf(dir, sizeof dir, "%s/tests/golden/data/%s", src ? src : ".", archs[a]);
        snprintf(path, sizeof path, "%s/golden.json", dir);
        json_error_t je;
        json_t *g = json_load_file(path, 0, &je);
        CHECK_MSG(g != NULL, "%s: %s", path, je.text);
        snprintf(path, sizeof path, "%s/model", dir);
        sl_model *mc = NULL, *mg = NULL;
        int ok = sl_model_load(&mc, path, cpu, NULL, &e) == SL_OK;
        ok = ok && sl_model_load(&mg, path, gpu, NULL, &e) == SL_OK;
        CHECK_MSG(ok, "%s: %s", path, e.msg);
        if (ok && g) {
            int32_t ids[512];
            json_t *prompts = json_object_get(g, "prompts"), *p;
            size_t i;
            json_array_foreach(prompts, i, p)
            {
                int n = (int)json_array_size(p);
                if (n > 512) continue;
                for (int t = 0; t < n; t++) ids[t] = (int32_t)json_integer_value(json_array_get(p, (size_t)t));
                char name[64];
                snprintf(name, sizeof name, "prompt %zu (%d tokens)", i, n);
                run_case(archs[a], name, mc, mg, ids, &n, 1);
            }
            /* a prompt, then a chunk continuing it from the caches */
            for (int t = 0; t < 79; t++) ids[t] = (int32_t)((t * 193 + 7) % sl_model_cfg(mc)->vocab_size);
            run_case(archs[a], "70 + 9 chunk", mc, mg, ids, (const int[]){70, 9}, 2);
        }
        sl_model_free(mc);
        sl_model_free(mg);
        json_decref(g);
    }
    sl_backend_free(cpu);
    sl_backend_free(gpu);
    return sl_test_done("test_model_trace");
}

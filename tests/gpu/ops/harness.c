/* tests/gpu/ops/harness.c: every CUDA op against the CPU reference
 * (the way llama.cpp's test-backend-ops checks a backend); the cases and
 * their runners live in one file per op family (ops_*.c), see harness.h.
 *
 * Each case draws fresh seeded random inputs (never zeros), rounds them to
 * what the CUDA tensor can hold so both backends see the same values, runs
 * the op on both, and compares each output by relative L2 error
 * ‖cuda − cpu‖ / ‖cpu‖ against the case's tolerance. CUDA outputs are
 * poisoned with NaN (or a sentinel id) first, so an element the op never
 * wrote fails the case. Ends with a coverage list: ops without cases and ops
 * the CUDA backend does not support.
 *
 *   test_backend_ops [--seed N] [--filter OP]   correctness
 *   ... --case P0,P1,...                          only the cases whose shape (the family's p[])
 *                                                 starts with these numbers: a few cases of a
 *                                                 family in seconds, e.g. --filter
 *                                                 moe_experts_fp8 --case 1000,320,192
 *   test_backend_ops --perf [--filter OP]        timings only (of OP's family)
 *   ... --perf --max-tokens N                     only the shapes of at most N tokens
 *   ... --perf --min-tokens N                     only the shapes of at least N tokens
 *
 * --perf times each op at Qwen3-8B / Qwen3-30B-A3B / Qwen3-Coder-Next shapes
 * with CUDA events (warm-up, median of many reps, inputs rotated through more
 * than the L2) and prints achieved GB/s or TFLOP/s against the peaks measured
 * in the same run: a large device-to-device copy, a large bf16 GEMM and a
 * large unscaled FP8 GEMM (the FP8 mma rate; PERF lines of FP8 ops say their
 * fraction of it in their note).
 * Decode-sized moe_experts is also timed as a replayed CUDA graph.
 */
#include <limits.h>
#include <math.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include <cublasLt.h>

#include "harness.h"

int sl_test_failed, sl_test_checked; /* SL_TEST_SHARED: every family file counts here */

/* The families in the order they run (and their --perf groups). */
static const tb_family *const families[] = {
    &tb_family_matmul, &tb_family_attention, &tb_family_norm, &tb_family_moe,
    &tb_family_gdn,    &tb_family_misc,      &tb_family_sample, &tb_family_fp8,
};

/* bf16 round trip on the host, so CPU inputs equal what the GPU stores */
float tb_bf16_round(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&f, &u, 4);
    return f;
}

void tb_die(const char *what, sl_err *e)
{
    fprintf(stderr, "%s: %s\n", what, e->msg);
    abort();
}

void tb_pair_alloc(tb *t, tb_pair *p, sl_dtype gdt, int ndim, const int64_t *ne)
{
    sl_err e = {0};
    sl_dtype cdt = gdt == SL_DTYPE_I32 ? SL_DTYPE_I32 : SL_DTYPE_F32;
    if (sl_be_alloc(t->cpu, &p->c, cdt, ndim, ne, &e) || sl_be_alloc(t->gpu, &p->g, gdt, ndim, ne, &e))
        tb_die("alloc", &e);
}

void tb_pair_free(tb *t, tb_pair *p)
{
    sl_be_release(t->cpu, &p->c);
    sl_be_release(t->gpu, &p->g);
}

/* Uploads host f32 values (already representable in the GPU dtype) to both. */
void tb_pair_set(tb *t, tb_pair *p, const float *v)
{
    sl_err e = {0};
    if (sl_be_upload(t->cpu, &p->c, v, SL_DTYPE_F32, &e) ||
        sl_be_upload(t->gpu, &p->g, v, SL_DTYPE_F32, &e))
        tb_die("upload", &e);
}

/* Uniform in [lo, hi), rounded to the GPU dtype; a fresh stream per call. */
void tb_pair_rand(tb *t, tb_pair *p, sl_dtype gdt, int ndim, const int64_t *ne, float lo, float hi)
{
    tb_pair_alloc(t, p, gdt, ndim, ne);
    int64_t n = sl_tensor_numel(&p->c);
    float *v = malloc(sizeof(float) * (size_t)n);
    uint64_t s = sl_rng_mix(t->seed++);
    for (int64_t i = 0; i < n; i++) {
        float f = lo + (hi - lo) * sl_rng_uniform(s, (uint64_t)i);
        v[i] = gdt == SL_DTYPE_BF16 ? tb_bf16_round(f) : f;
    }
    tb_pair_set(t, p, v);
    free(v);
}

void tb_poison(tb *t, sl_tensor *g)
{
    int64_t n = sl_tensor_numel(g);
    sl_err e = {0};
    if (g->dtype == SL_DTYPE_I32) {
        int32_t *v = malloc(sizeof(int32_t) * (size_t)n);
        for (int64_t i = 0; i < n; i++) v[i] = INT32_MIN;
        if (sl_be_upload(t->gpu, g, v, SL_DTYPE_I32, &e)) tb_die("poison", &e);
        free(v);
    } else {
        float *v = malloc(sizeof(float) * (size_t)n);
        for (int64_t i = 0; i < n; i++) v[i] = NAN;
        if (sl_be_upload(t->gpu, g, v, SL_DTYPE_F32, &e)) tb_die("poison", &e);
        free(v);
    }
}

/* An output: the GPU side poisoned (NaN, or INT32_MIN for ids). */
void tb_pair_out(tb *t, tb_pair *p, sl_dtype gdt, int ndim, const int64_t *ne)
{
    tb_pair_alloc(t, p, gdt, ndim, ne);
    tb_poison(t, &p->g);
}

float *tb_download(sl_backend *be, const sl_tensor *x)
{
    sl_err e = {0};
    float *v = malloc(sizeof(float) * (size_t)(sl_tensor_rows(x) * sl_tensor_cols(x) + 1));
    if (sl_be_download(be, x, v, &e)) tb_die("download", &e);
    return v;
}

int tb_fp8_act_level(void)
{
    const char *v = getenv("SL_CUDA_FP8_ACT");
    return v && v[0] >= '0' && v[0] <= '2' && !v[1] ? v[0] - '0' : 1;
}

void tb_check_codes(tb *t, const char *desc, const sl_tensor *y, const sl_fp8_act *q)
{
    int64_t M = sl_tensor_rows(y), K = sl_tensor_cols(y), G = K / 128, bad = 0;
    int64_t m4 = M > 8 ? M & ~3 : 0; /* cuBLASLt's rows: scales group-major (cu_fp8_sidx) */
    float *yv = tb_download(t->gpu, y), *cv = tb_download(t->gpu, &q->codes), *sv = tb_download(t->gpu, &q->scales);
    for (int64_t m = 0; m < M; m++)
        for (int64_t g = 0; g < G; g++) {
            float mx = 0.0f;
            for (int64_t k = g * 128; k < g * 128 + 128; k++) mx = fmaxf(mx, fabsf(yv[m * K + k]));
            float s = mx / SL_FP8_MAX;
            bad += sv[m < m4 ? g * m4 + m : m4 * G + (m - m4) * G + g] != s;
            for (int64_t k = g * 128; k < g * 128 + 128; k++) {
                float want = s > 0.0f ? sl_e4m3_to_f32(sl_f32_to_e4m3(yv[m * K + k] / s)) : 0.0f;
                bad += cv[m * G * 128 + k] != want;
            }
        }
    printf("  %-4s %-12s %-44s %-6s FP8 codes\n", bad ? "FAIL" : "ok", "codes", desc, "");
    if (bad) t->n_fail++;
    else t->n_pass++;
    CHECK_MSG(bad == 0, "%s: %lld codes or scales differ from the quantization of the output", desc, (long long)bad);
    free(yv);
    free(cv);
    free(sv);
}

/* Compares one output; tol < 0 asks for exact equality. */
void tb_compare(tb *t, sl_op op, const char *desc, const char *what, const sl_tensor *c,
                    const sl_tensor *g, double tol)
{
    int64_t n = sl_tensor_rows(c) * sl_tensor_cols(c);
    float *vc = tb_download(t->cpu, c), *vg = tb_download(t->gpu, g);
    int64_t unwritten = 0, mism = 0;
    double maxd = 0;
    for (int64_t i = 0; i < n; i++) {
        if (isnan(vg[i]) || vg[i] == (float)INT32_MIN) unwritten++;
        double d = fabs((double)vg[i] - (double)vc[i]);
        if (d > maxd || isnan(d)) maxd = isnan(d) ? INFINITY : d;
        if (vg[i] != vc[i]) mism++;
    }
    double rel = sl_test_rel_l2(vg, vc, (long)n);
    int ok = unwritten == 0 && (tol < 0 ? mism == 0 : rel <= tol);
    printf("  %-4s %-12s %-44s %-6s rel_l2 %.2e (tol %.0e) max|d| %.2e%s\n", ok ? "ok" : "FAIL",
           sl_op_name(op), desc, what, rel, tol < 0 ? 0.0 : tol, maxd,
           unwritten ? "  UNWRITTEN ELEMENTS" : "");
    if (ok) t->n_pass++;
    else t->n_fail++;
    CHECK_MSG(ok, "%s %s %s", sl_op_name(op), desc, what);
    free(vc);
    free(vg);
}

int64_t tb_ne2(int64_t *ne, int64_t a, int64_t b)
{
    ne[0] = a;
    ne[1] = b;
    return a * b;
}

/* The same device tensor downloaded twice must match bit for bit. */
void tb_compare_exact(tb *t, sl_op op, const char *desc, const char *what,
                              const sl_tensor *a, const sl_tensor *b)
{
    int64_t n = sl_tensor_rows(a) * sl_tensor_cols(a);
    float *va = tb_download(t->gpu, a), *vb = tb_download(t->gpu, b);
    int ok = memcmp(va, vb, sizeof(float) * (size_t)n) == 0;
    printf("  %-4s %-12s %-44s %-6s bit-identical\n", ok ? "ok" : "FAIL", sl_op_name(op), desc,
           what);
    if (ok)
        t->n_pass++;
    else
        t->n_fail++;
    CHECK_MSG(ok, "%s %s %s", sl_op_name(op), desc, what);
    free(va);
    free(vb);
}


/* n_seqs sequences: seq s has q_len[s] new tokens after prefix[s] cached ones;
 * pages are a random permutation, so the page table is really followed. */
void tb_batch_make(tb *t, tb_batch *b, int n_seqs, const int *q_len, const int *prefix,
                       int page_size, int vocab)
{
    memset(b, 0, sizeof *b);
    int T = 0, max_pages = 1;
    for (int s = 0; s < n_seqs; s++) {
        T += q_len[s];
        int np = (prefix[s] + q_len[s] + page_size - 1) / page_size;
        if (np > max_pages) max_pages = np;
    }
    b->n_pages = n_seqs * max_pages;
    b->ids = malloc(sizeof(int32_t) * (size_t)(T + 1));
    b->pos = malloc(sizeof(int32_t) * (size_t)(T + 1));
    b->kv_slot = malloc(sizeof(int32_t) * (size_t)(T + 1));
    b->q_start = malloc(sizeof(int32_t) * (size_t)(n_seqs + 1));
    b->kv_len = malloc(sizeof(int32_t) * (size_t)n_seqs);
    b->state_slot = malloc(sizeof(int32_t) * (size_t)n_seqs);
    b->state_fresh = malloc(sizeof(int32_t) * (size_t)n_seqs);
    b->track_slot = malloc(sizeof(int32_t) * (size_t)n_seqs);
    b->track_len = malloc(sizeof(int32_t) * (size_t)n_seqs);
    b->pages = malloc(sizeof(int32_t) * (size_t)b->n_pages);
    b->logit_rows = malloc(sizeof(int32_t) * (size_t)n_seqs);
    for (int i = 0; i < b->n_pages; i++) b->pages[i] = i;
    uint64_t rs = sl_rng_mix(t->seed++);
    for (int i = b->n_pages - 1; i > 0; i--) {
        int j = (int)(sl_rng_uniform(rs, (uint64_t)i) * (float)(i + 1));
        int32_t x = b->pages[i];
        b->pages[i] = b->pages[j];
        b->pages[j] = x;
    }
    int tok = 0;
    for (int s = 0; s < n_seqs; s++) {
        b->q_start[s] = tok;
        b->kv_len[s] = prefix[s] + q_len[s];
        b->state_slot[s] = s;
        b->state_fresh[s] = 0;
        b->track_slot[s] = -1;
        b->track_len[s] = 0;
        const int32_t *pt = b->pages + (int64_t)s * max_pages;
        for (int i = 0; i < q_len[s]; i++, tok++) {
            int p = prefix[s] + i;
            b->ids[tok] = (int32_t)(sl_rng_uniform(rs, 100000u + (uint64_t)tok) * (float)vocab);
            b->pos[tok] = p;
            b->kv_slot[tok] = pt[p / page_size] * page_size + p % page_size;
        }
    }
    b->q_start[n_seqs] = tok;
    for (int s = 0; s < n_seqs; s++) b->logit_rows[s] = b->q_start[s + 1] - 1;
    sl_batch_meta *m = &b->m;
    m->n_tokens = T;
    m->n_seqs = n_seqs;
    m->page_size = page_size;
    m->max_pages = max_pages;
    m->ids = b->ids;
    m->pos = b->pos;
    m->q_start = b->q_start;
    m->kv_len = b->kv_len;
    m->page_table = b->pages;
    m->kv_slot = b->kv_slot;
    m->state_slot = b->state_slot;
    m->state_fresh = b->state_fresh;
    m->track_slot = b->track_slot;
    m->track_len = b->track_len;
    m->n_logits = n_seqs;
    m->logit_rows = b->logit_rows;
    sl_err e = {0};
    if (sl_be_prepare(t->gpu, m, &e)) tb_die("prepare", &e);
}

/* Hybrid-model state handling: seq s % 3 == 1 starts fresh, even seqs write
 * a snapshot after about half their tokens into slot n_seqs + s. */
void tb_batch_hybrid(tb *t, tb_batch *b)
{
    for (int s = 0; s < b->m.n_seqs; s++) {
        int qn = b->q_start[s + 1] - b->q_start[s];
        b->state_fresh[s] = s % 3 == 1;
        b->track_slot[s] = s % 2 == 0 ? b->m.n_seqs + s : -1;
        b->track_len[s] = 1 + (qn - 1) / 2;
    }
    sl_err e = {0};
    if (sl_be_prepare(t->gpu, &b->m, &e)) tb_die("prepare", &e);
}

void tb_batch_free(tb_batch *b)
{
    free(b->ids);
    free(b->pos);
    free(b->kv_slot);
    free(b->q_start);
    free(b->kv_len);
    free(b->state_slot);
    free(b->state_fresh);
    free(b->track_slot);
    free(b->track_len);
    free(b->pages);
    free(b->logit_rows);
}

/* ---- perf ------------------------------------------------------------------- */

int tb_cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* A host function that holds the stream until *arg is set (or 2 s pass, so an
 * op that synchronizes inside cannot hang the run: it is then timed as it is
 * launched). */
static void CUDART_CB hold_stream(void *arg)
{
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        clock_gettime(CLOCK_MONOTONIC, &t1);
    } while (!atomic_load((atomic_int *)arg) &&
             (t1.tv_sec - t0.tv_sec) * 1000000000L + (t1.tv_nsec - t0.tv_nsec) < 2000000000L);
}

/* Median ms of one call of fn over reps, after warm-up; set rotates inputs.
 * The reps are queued behind hold_stream and then run back to back, as a CUDA
 * graph replays a decode step: the events time the GPU, not how fast this
 * thread launches (a few µs per call, more than a small GEMV takes).
 * b2b (may be NULL): the mean ms per call of the same reps queued with no
 * events between them, a graph's view (no per-call event overhead). */
double tb_time_op(tb *t, tb_perf_fn fn, void *ctx, int n_sets, int reps, double *b2b)
{
    cudaStream_t s = (cudaStream_t)sl_cuda_stream(t->gpu);
    cudaEvent_t ev[2 * 64];
    float ms[64];
    if (reps > 64) reps = 64;
    for (int i = 0; i < 2 * reps; i++) TB_CK(cudaEventCreate(&ev[i]));
    for (int i = 0; i < 3; i++) fn(t, ctx, i % n_sets);
    TB_CK(cudaStreamSynchronize(s));
    atomic_int go = 0;
    TB_CK(cudaLaunchHostFunc(s, hold_stream, &go));
    for (int i = 0; i < reps; i++) {
        TB_CK(cudaEventRecord(ev[2 * i], s));
        fn(t, ctx, i % n_sets);
        TB_CK(cudaEventRecord(ev[2 * i + 1], s));
    }
    atomic_store(&go, 1);
    TB_CK(cudaStreamSynchronize(s));
    for (int i = 0; i < reps; i++) TB_CK(cudaEventElapsedTime(&ms[i], ev[2 * i], ev[2 * i + 1]));
    if (b2b) {
        float all;
        atomic_store(&go, 0);
        TB_CK(cudaLaunchHostFunc(s, hold_stream, &go));
        TB_CK(cudaEventRecord(ev[0], s));
        for (int i = 0; i < reps; i++) fn(t, ctx, i % n_sets);
        TB_CK(cudaEventRecord(ev[1], s));
        atomic_store(&go, 1);
        TB_CK(cudaStreamSynchronize(s));
        TB_CK(cudaEventElapsedTime(&all, ev[0], ev[1]));
        *b2b = all / reps;
    }
    for (int i = 0; i < 2 * reps; i++) cudaEventDestroy(ev[i]);
    qsort(ms, (size_t)reps, sizeof(float), tb_cmp_float);
    return ms[reps / 2];
}

/* Mean ms of one call of fn when n_sets calls (one per set) replay as one
 * CUDA graph, as a captured decode step runs them: no host work between
 * kernels. */
double tb_time_graph(tb *t, tb_perf_fn fn, void *ctx, int n_sets, int reps)
{
    cudaStream_t s = (cudaStream_t)sl_cuda_stream(t->gpu);
    cudaGraph_t g;
    cudaGraphExec_t ge;
    cudaEvent_t e0, e1;
    TB_CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < n_sets; i++)
        fn(t, ctx, i);
    TB_CK(cudaStreamEndCapture(s, &g));
    TB_CK(cudaGraphInstantiate(&ge, g, 0));
    TB_CK(cudaEventCreate(&e0));
    TB_CK(cudaEventCreate(&e1));
    TB_CK(cudaGraphLaunch(ge, s));
    TB_CK(cudaEventRecord(e0, s));
    for (int i = 0; i < reps; i++)
        TB_CK(cudaGraphLaunch(ge, s));
    TB_CK(cudaEventRecord(e1, s));
    TB_CK(cudaEventSynchronize(e1));
    float ms;
    TB_CK(cudaEventElapsedTime(&ms, e0, e1));
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaGraphExecDestroy(ge);
    cudaGraphDestroy(g);
    return ms / (reps * n_sets);
}

sl_tensor tb_gpu_rand(tb *t, sl_dtype dt, int ndim, const int64_t *ne, float scale)
{
    sl_tensor x;
    sl_err e = {0};
    if (sl_be_alloc(t->gpu, &x, dt, ndim, ne, &e)) tb_die("alloc", &e);
    sl_be_fill_random(t->gpu, &x, sl_rng_mix(t->seed++), scale, 0.0f);
    return x;
}

int tb_moe_perf_ids(tb *t, int T, int k, int E, int shared, sl_tensor *ids, int n_sets, sl_tensor *wt)
{
    int kr = k - shared, Er = E - shared; /* routed columns and experts */
    int32_t *iv = malloc(sizeof(int32_t) * (size_t)T * k);
    float *wv = malloc(sizeof(float) * (size_t)T * k);
    int *used = calloc((size_t)E, sizeof(int)), active = 0;
    const int64_t ne[2] = {T, k};
    sl_err e = {0};
    for (int st = 0; st < n_sets; st++) {
        for (int i = 0; i < T; i++)
            for (int j = 0; j < k; j++) {
                unsigned v = j == kr ? (unsigned)Er /* the fused shared expert: every token */
                                     : (unsigned)(i * 7919 + j * (Er / kr) + i / 3 + st * 13) % (unsigned)Er;
                iv[i * k + j] = (int32_t)v;
                wv[i * k + j] = 1.0f / (float)k;
                if (st == 0 && !used[v]++) active++;
            }
        if (sl_be_alloc(t->gpu, &ids[st], SL_DTYPE_I32, 2, ne, &e) ||
            sl_be_upload(t->gpu, &ids[st], iv, SL_DTYPE_I32, &e))
            tb_die("moe perf routing", &e);
    }
    if (sl_be_alloc(t->gpu, wt, SL_DTYPE_F32, 2, ne, &e) || sl_be_upload(t->gpu, wt, wv, SL_DTYPE_F32, &e))
        tb_die("moe perf routing", &e);
    free(used);
    free(iv);
    free(wv);
    return active;
}

/* note: appended to the line (matmul: which kernel ran, and each one forced) */
void tb_report(tb *t, const char *op, const char *desc, double ms, double bytes, double flops,
                   const char *note)
{
    double bw = bytes / (ms * 1e-3), fl = flops / (ms * 1e-3);
    double fb = bw / t->peak_bw, ff = fl / t->peak_flops;
    printf("PERF %-12s %-46s %9.3f ms %8.1f GB/s (%4.0f%% bw) %7.1f TFLOP/s (%4.0f%% mma) -> %s %.0f%%%s\n",
           op, desc, ms, bw * 1e-9, 100 * fb, fl * 1e-12, 100 * ff, fb > ff ? "bw" : "mma",
           100 * (fb > ff ? fb : ff), note);
}


/* the GEMM of measure_peaks */
typedef struct tb_gemm {
    sl_tensor w, x, y;
} tb_gemm;

static void pf_gemm(tb *t, void *ctx, int set)
{
    tb_gemm *c = ctx;
    (void)set;
    sl_be_matmul(t->gpu, &c->y, &c->x, &c->w);
}

#define LT_CK(x)                                                                                    \
    do {                                                                                            \
        cublasStatus_t st_ = (x);                                                                   \
        if (st_ != CUBLAS_STATUS_SUCCESS) {                                                         \
            fprintf(stderr, "%s:%d: %s: cuBLAS status %d\n", __FILE__, __LINE__, #x, (int)st_);     \
            exit(2);                                                                                \
        }                                                                                           \
    } while (0)

/* The unscaled FP8 GEMM of fp8_gemm_rate: cuBLASLt objects and operands. */
typedef struct tb_fp8_gemm {
    cublasLtHandle_t lt;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, ld;
    cublasLtMatmulHeuristicResult_t h;
    sl_tensor a, b, d;
    void *ws;
    size_t ws_bytes;
} tb_fp8_gemm;

static void pf_fp8_gemm(tb *t, void *ctx, int set)
{
    tb_fp8_gemm *c = ctx;
    float one = 1.0f, zero = 0.0f;
    (void)set;
    LT_CK(cublasLtMatmul(c->lt, c->desc, &one, c->a.data, c->la, c->b.data, c->lb, &zero, c->d.data, c->ld,
                         c->d.data, c->ld, &c->h.algo, c->ws, c->ws_bytes, (cudaStream_t)sl_cuda_stream(t->gpu)));
}

/* The FP8 tensor-core rate: cuBLASLt's e4m3 GEMM N³ (no scales, bf16 out) on
 * random codes, the heuristic's first algorithm, timed as every op is (0:
 * cuBLASLt has no such algorithm). */
static double fp8_gemm_rate(tb *t, int N)
{
    tb_fp8_gemm c;
    int64_t ne[2];
    c.a = tb_gpu_rand(t, SL_DTYPE_F8E4M3, 2, (tb_ne2(ne, N, N), ne), 448.0f);
    c.b = tb_gpu_rand(t, SL_DTYPE_F8E4M3, 2, (tb_ne2(ne, N, N), ne), 448.0f);
    c.d = tb_gpu_rand(t, BF, 2, (tb_ne2(ne, N, N), ne), 1.0f);
    c.ws_bytes = (size_t)64 << 20;
    TB_CK(cudaMalloc(&c.ws, c.ws_bytes));
    cublasLtMatmulPreference_t pref;
    cublasOperation_t opT = CUBLAS_OP_T, opN = CUBLAS_OP_N;
    LT_CK(cublasLtCreate(&c.lt));
    LT_CK(cublasLtMatmulDescCreate(&c.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    LT_CK(cublasLtMatmulDescSetAttribute(c.desc, CUBLASLT_MATMUL_DESC_TRANSA, &opT, sizeof opT));
    LT_CK(cublasLtMatmulDescSetAttribute(c.desc, CUBLASLT_MATMUL_DESC_TRANSB, &opN, sizeof opN));
    LT_CK(cublasLtMatrixLayoutCreate(&c.la, CUDA_R_8F_E4M3, N, N, N));
    LT_CK(cublasLtMatrixLayoutCreate(&c.lb, CUDA_R_8F_E4M3, N, N, N));
    LT_CK(cublasLtMatrixLayoutCreate(&c.ld, CUDA_R_16BF, N, N, N));
    LT_CK(cublasLtMatmulPreferenceCreate(&pref));
    LT_CK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &c.ws_bytes,
                                               sizeof c.ws_bytes));
    int found = 0;
    LT_CK(cublasLtMatmulAlgoGetHeuristic(c.lt, c.desc, c.la, c.lb, c.ld, c.ld, pref, 1, &c.h, &found));
    double ms = found ? tb_time_op(t, pf_fp8_gemm, &c, 1, 10, NULL) : 0.0;
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(c.la);
    cublasLtMatrixLayoutDestroy(c.lb);
    cublasLtMatrixLayoutDestroy(c.ld);
    cublasLtMatmulDescDestroy(c.desc);
    cublasLtDestroy(c.lt);
    TB_CK(cudaFree(c.ws));
    sl_be_release(t->gpu, &c.a);
    sl_be_release(t->gpu, &c.b);
    sl_be_release(t->gpu, &c.d);
    return found ? 2.0 * N * (double)N * N / (ms * 1e-3) : 0.0;
}

static void measure_peaks(tb *t)
{
    cudaStream_t s = (cudaStream_t)sl_cuda_stream(t->gpu);
    size_t n = (size_t)2 << 30;
    void *a, *b;
    TB_CK(cudaMalloc(&a, n));
    TB_CK(cudaMalloc(&b, n));
    TB_CK(cudaMemsetAsync(a, 1, n, s));
    cudaEvent_t e0, e1;
    TB_CK(cudaEventCreate(&e0));
    TB_CK(cudaEventCreate(&e1));
    float best = 1e30f;
    for (int i = 0; i < 6; i++) {
        float ms;
        TB_CK(cudaEventRecord(e0, s));
        TB_CK(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice, s));
        TB_CK(cudaEventRecord(e1, s));
        TB_CK(cudaEventSynchronize(e1));
        TB_CK(cudaEventElapsedTime(&ms, e0, e1));
        if (i > 0 && ms < best) best = ms;
    }
    t->peak_bw = 2.0 * (double)n / (best * 1e-3);
    TB_CK(cudaFree(a));
    TB_CK(cudaFree(b));
    tb_gemm c;
    int64_t ne[2];
    int N = 8192;
    c.w = tb_gpu_rand(t, BF, 2, (tb_ne2(ne, N, N), ne), 0.05f);
    c.x = tb_gpu_rand(t, BF, 2, (tb_ne2(ne, N, N), ne), 1.0f);
    c.y = tb_gpu_rand(t, BF, 2, (tb_ne2(ne, N, N), ne), 1.0f);
    double ms = tb_time_op(t, pf_gemm, &c, 1, 10, NULL);
    t->peak_flops = 2.0 * N * (double)N * N / (ms * 1e-3);
    sl_be_release(t->gpu, &c.w);
    sl_be_release(t->gpu, &c.x);
    sl_be_release(t->gpu, &c.y);
    t->peak_fp8 = fp8_gemm_rate(t, N);
    printf("PEAK copy %.0f GB/s (2 GiB D2D, read+write); bf16 GEMM %.1f TFLOP/s, fp8 GEMM %.1f TFLOP/s "
           "(8192^3 cuBLASLt, random)\n",
           t->peak_bw * 1e-9, t->peak_flops * 1e-12, t->peak_fp8 * 1e-12);
}

/* Whether the perf group of op runs under --filter. */
int tb_perf_on(const char *filter, sl_op op)
{
    return !filter || !strcmp(filter, sl_op_name(op));
}

static void run_perf(tb *t, const char *filter)
{
    measure_peaks(t);
    for (size_t f = 0; f < sizeof families / sizeof families[0]; f++)
        if (families[f]->perf) families[f]->perf(t, filter);
}

/* --case's comma-separated integers into want (at most 9: a case's p[]); their
 * count, or 0 for anything else. */
static int parse_case(const char *s, int want[9])
{
    int n = 0;
    for (;;) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || n == 9 || v < INT_MIN || v > INT_MAX) return 0;
        want[n++] = (int)v;
        if (!*end) return n;
        if (*end != ',') return 0;
        s = end + 1;
    }
}

int main(int argc, char **argv)
{
    tb t;
    memset(&t, 0, sizeof t);
    int perf = 0, n_case = 0, want[9];
    const char *filter = NULL;
    t.seed = (uint64_t)time(NULL);
    t.max_tokens = 1 << 30;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--perf")) perf = 1;
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc) t.seed = strtoull(argv[++i], NULL, 0);
        else if (!strcmp(argv[i], "--filter") && i + 1 < argc) filter = argv[++i];
        else if (!strcmp(argv[i], "--max-tokens") && i + 1 < argc) t.max_tokens = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--min-tokens") && i + 1 < argc) t.min_tokens = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--case") && i + 1 < argc && (n_case = parse_case(argv[++i], want)) > 0)
            continue;
        else {
            fprintf(stderr,
                    "usage: %s [--seed N] [--perf] [--filter OP] [--case P0,P1,...] [--max-tokens N] "
                    "[--min-tokens N]\n",
                    argv[0]);
            return 2;
        }
    }
    setvbuf(stdout, NULL, _IOLBF, 0); /* a hang or crash still leaves the log */
    sl_err e = {0};
    t.cpu = sl_backend_cpu_new();
    t.gpu = sl_backend_cuda_new(0, &e);
    if (!t.gpu) {
        fprintf(stderr, "test_backend_ops: no CUDA backend: %s\n", e.msg);
        return 1;
    }
    printf("test_backend_ops: seed %llu\n", (unsigned long long)t.seed);
    if (perf) { /* perf mode times only: correctness is the plain run */
        run_perf(&t, filter);
        sl_backend_free(t.gpu);
        sl_backend_free(t.cpu);
        return 0;
    }
    for (size_t f = 0; f < sizeof families / sizeof families[0]; f++)
        for (size_t i = 0; i < families[f]->n_cases; i++) {
            const tb_case *c = &families[f]->cases[i];
            if (filter && strcmp(filter, sl_op_name(c->op))) continue;
            if (n_case && memcmp(c->p, want, sizeof(int) * (size_t)n_case)) continue;
            t.cases[c->op]++;
            if (!sl_be_supports_op(t.gpu, c->op)) continue;
            families[f]->run(&t, c);
            if (sl_be_sync(t.gpu, &e)) tb_die("after case", &e);
        }
    printf("coverage:\n");
    for (int op = 0; op < SL_OP_COUNT; op++) {
        int sup = sl_be_supports_op(t.gpu, (sl_op)op);
        if (!sup || !t.cases[op])
            printf("  %-14s %s\n", sl_op_name((sl_op)op),
                   !sup ? "NOT SUPPORTED by cuda" : "no cases");
    }
    printf("correctness: %d passed, %d failed\n", t.n_pass, t.n_fail);
    sl_backend_free(t.gpu);
    sl_backend_free(t.cpu);
    return sl_test_done("test_backend_ops");
}

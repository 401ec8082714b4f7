/* tests/gpu/test_backend_ops.c: every CUDA op against the CPU reference
 * (the way llama.cpp's test-backend-ops checks a backend).
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
 *   test_backend_ops --perf [--filter OP]        timings only (of OP's family)
 *
 * --perf times each op at Qwen3-8B / Qwen3-30B-A3B / Qwen3-Coder-Next shapes
 * with CUDA events (warm-up, median of many reps, inputs rotated through more
 * than the L2) and prints achieved GB/s or TFLOP/s against the peaks measured
 * in the same run: a large device-to-device copy and a large bf16 GEMM.
 * Decode-sized moe_experts is also timed as a replayed CUDA graph.
 */
#include <cuda_runtime.h>
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "cuda/cuda_backend.h"
#include "sl_rng.h"
#include "sl_test.h"

/* bf16 round trip on the host, so CPU inputs equal what the GPU stores */
static float bf16_round(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&f, &u, 4);
    return f;
}

typedef struct tb {
    sl_backend *cpu, *gpu;
    uint64_t seed;
    int n_pass, n_fail;
    int cases[SL_OP_COUNT];
} tb;

/* The same tensor on both backends: CPU always F32 (or I32), GPU as asked. */
typedef struct pair {
    sl_tensor c, g;
} pair;

static void die_err(const char *what, sl_err *e)
{
    fprintf(stderr, "%s: %s\n", what, e->msg);
    abort();
}

static void pair_alloc(tb *t, pair *p, sl_dtype gdt, int ndim, const int64_t *ne)
{
    sl_err e = {0};
    sl_dtype cdt = gdt == SL_DTYPE_I32 ? SL_DTYPE_I32 : SL_DTYPE_F32;
    if (sl_be_alloc(t->cpu, &p->c, cdt, ndim, ne, &e) || sl_be_alloc(t->gpu, &p->g, gdt, ndim, ne, &e))
        die_err("alloc", &e);
}

static void pair_free(tb *t, pair *p)
{
    sl_be_release(t->cpu, &p->c);
    sl_be_release(t->gpu, &p->g);
}

/* Uploads host f32 values (already representable in the GPU dtype) to both. */
static void pair_set(tb *t, pair *p, const float *v)
{
    sl_err e = {0};
    if (sl_be_upload(t->cpu, &p->c, v, SL_DTYPE_F32, &e) ||
        sl_be_upload(t->gpu, &p->g, v, SL_DTYPE_F32, &e))
        die_err("upload", &e);
}

/* Uniform in [lo, hi), rounded to the GPU dtype; a fresh stream per call. */
static void pair_rand(tb *t, pair *p, sl_dtype gdt, int ndim, const int64_t *ne, float lo, float hi)
{
    pair_alloc(t, p, gdt, ndim, ne);
    int64_t n = sl_tensor_numel(&p->c);
    float *v = malloc(sizeof(float) * (size_t)n);
    uint64_t s = sl_rng_mix(t->seed++);
    for (int64_t i = 0; i < n; i++) {
        float f = lo + (hi - lo) * sl_rng_uniform(s, (uint64_t)i);
        v[i] = gdt == SL_DTYPE_BF16 ? bf16_round(f) : f;
    }
    pair_set(t, p, v);
    free(v);
}

/* An output: the GPU side poisoned (NaN, or INT32_MIN for ids). */
static void pair_out(tb *t, pair *p, sl_dtype gdt, int ndim, const int64_t *ne)
{
    pair_alloc(t, p, gdt, ndim, ne);
    int64_t n = sl_tensor_numel(&p->g);
    sl_err e = {0};
    if (gdt == SL_DTYPE_I32) {
        int32_t *v = malloc(sizeof(int32_t) * (size_t)n);
        for (int64_t i = 0; i < n; i++) v[i] = INT32_MIN;
        if (sl_be_upload(t->gpu, &p->g, v, SL_DTYPE_I32, &e)) die_err("poison", &e);
        free(v);
    } else {
        float *v = malloc(sizeof(float) * (size_t)n);
        for (int64_t i = 0; i < n; i++) v[i] = NAN;
        if (sl_be_upload(t->gpu, &p->g, v, SL_DTYPE_F32, &e)) die_err("poison", &e);
        free(v);
    }
}

static float *download(sl_backend *be, const sl_tensor *x)
{
    sl_err e = {0};
    float *v = malloc(sizeof(float) * (size_t)(sl_tensor_rows(x) * sl_tensor_cols(x) + 1));
    if (sl_be_download(be, x, v, &e)) die_err("download", &e);
    return v;
}

/* Compares one output; tol < 0 asks for exact equality. */
static void compare(tb *t, sl_op op, const char *desc, const char *what, const sl_tensor *c,
                    const sl_tensor *g, double tol)
{
    int64_t n = sl_tensor_rows(c) * sl_tensor_cols(c);
    float *vc = download(t->cpu, c), *vg = download(t->gpu, g);
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

#define CK(call)                                                                                   \
    do {                                                                                           \
        cudaError_t err_ = (call);                                                                 \
        if (err_ != cudaSuccess) {                                                                 \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,                        \
                    cudaGetErrorString(err_));                                                     \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* ---- batch metadata --------------------------------------------------------- */

typedef struct tb_batch {
    sl_batch_meta m;
    int32_t *ids, *pos, *q_start, *kv_len, *pages, *kv_slot, *state_slot, *state_fresh,
        *track_slot, *track_len, *logit_rows;
    int n_pages;
} tb_batch;

/* n_seqs sequences: seq s has q_len[s] new tokens after prefix[s] cached ones;
 * pages are a random permutation, so the page table is really followed. */
static void batch_make(tb *t, tb_batch *b, int n_seqs, const int *q_len, const int *prefix,
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
    if (sl_be_prepare(t->gpu, m, &e)) die_err("prepare", &e);
}

/* Hybrid-model state handling: seq s % 3 == 1 starts fresh, even seqs write
 * a snapshot after about half their tokens into slot n_seqs + s. */
static void batch_hybrid(tb *t, tb_batch *b)
{
    for (int s = 0; s < b->m.n_seqs; s++) {
        int qn = b->q_start[s + 1] - b->q_start[s];
        b->state_fresh[s] = s % 3 == 1;
        b->track_slot[s] = s % 2 == 0 ? b->m.n_seqs + s : -1;
        b->track_len[s] = 1 + (qn - 1) / 2;
    }
    sl_err e = {0};
    if (sl_be_prepare(t->gpu, &b->m, &e)) die_err("prepare", &e);
}

static void batch_free(tb_batch *b)
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

/* ---- sample ------------------------------------------------------------------ */

enum { SMIX = 16, SPEN = 30 };

/* Parameter mix m of a sample row; penalised mixes get pen entries. */
static int sample_mix(sl_sample_row *w, int m)
{
    *w = (sl_sample_row){.temperature = 1.0f, .top_p = 1.0f, .repetition_penalty = 1.0f, .pending = -1};
    int pen = 0;
    switch (m) {
    case 0: w->temperature = 0.0f; break;                       /* greedy */
    case 1: w->temperature = 0.8f; w->logprobs = 1; w->n_top = 20; break; /* temperature only */
    case 2: w->top_k = 50; break;
    case 3: w->temperature = 0.7f; w->top_p = 0.9f; break;
    case 4: w->temperature = 1.1f; w->top_k = 40; w->top_p = 0.8f; break;
    case 5: w->min_p = 0.05f; break;                            /* id-order path + min-p */
    case 6: w->temperature = 0.9f; w->top_k = 200; w->top_p = 0.95f; w->min_p = 0.1f; break;
    case 7: w->temperature = 0.9f; w->top_p = 0.95f; w->logprobs = 1; w->n_top = 5; pen = 1; break;
    case 8: w->temperature = 0.0f; w->logprobs = 1; w->n_top = 20; pen = 1; break;
    case 9: w->temperature = 1.3f; w->top_k = 1000; w->logprobs = 1; w->n_top = 0; break;
    /* edges: most probabilities 0, top_p 0, min_p above 1 (keeps one / id-order fallback) */
    case 10: w->temperature = 0.02f; w->top_k = 300; w->top_p = 0.5f; break;
    case 11: w->temperature = 0.05f; w->min_p = 0.2f; break;
    case 12: w->top_p = 0.0f; break;
    case 13: w->min_p = 1.5f; w->top_k = 10; break;
    case 14: w->min_p = 1.5f; break;
    default: w->temperature = 2.0f; w->top_p = 0.999f; w->min_p = 0.001f; w->logprobs = 1; w->n_top = 20; break;
    }
    if (pen) {
        w->repetition_penalty = 1.3f;
        w->frequency_penalty = 0.4f;
        w->presence_penalty = 0.3f;
    }
    return pen;
}

/* The CPU op on row r alone with row parameters w (boundary checks). */
static int32_t sample_cpu_row(tb *t, const pair *lg, int r, const sl_sample_row *w,
                              const sl_sample_args *a)
{
    int32_t id = -1;
    float lp[2 + 2 * SL_SAMPLE_MAX_TOP];
    sl_tensor lv = sl_tensor_rowview(&lg->c, r, 1);
    sl_tensor iv = sl_tensor_make(&id, SL_DTYPE_I32, 1, (int64_t[]){1});
    sl_tensor pv = sl_tensor_make(lp, SL_DTYPE_F32, 2, (int64_t[]){1, 2 + 2 * SL_SAMPLE_MAX_TOP});
    sl_sample_args one = *a;
    one.n_rows = 1;
    one.rows = w;
    sl_be_sample(t->cpu, &iv, &pv, &lv, &one);
    return id;
}

/* 1 when the CPU op lands on want once u (or top_p) moves by 1e-5 relative:
 * float summation order alone may then pick the neighbour. */
static int sample_at_boundary(tb *t, const pair *lg, int r, const sl_sample_args *a, int32_t want)
{
    for (int k = 0; k < 4; k++) {
        sl_sample_row w = a->rows[r];
        float f = k & 1 ? 1.00001f : 0.99999f;
        if (k < 2) w.u = fminf(w.u * f, 0.99999994f);
        else if (w.top_p < 1.0f) w.top_p *= f;
        else continue;
        if (sample_cpu_row(t, lg, r, &w, a) == want) return 1;
    }
    return 0;
}

/* Case {V, R, kind}: every parameter mix on rows of logits of that kind, CUDA against the CPU op.
 * (Before the case table, so it reads no tb_case.) */
static void run_sample(tb *t, int V, int R, int kind, double tol, char *desc, size_t ndesc)
{
    static const char *kinds[] = {"bf16 ties", "f32", "quarter steps"};
    pair lg, ids, lp, pend;
    pair_alloc(t, &lg, SL_DTYPE_F32, 2, (int64_t[]){R, V});
    float *v = malloc(sizeof(float) * (size_t)R * V);
    uint64_t s0 = sl_rng_mix(t->seed++);
    for (int64_t i = 0; i < (int64_t)R * V; i++) {
        float u = sl_rng_uniform(s0, (uint64_t)i);
        v[i] = kind == 0 ? bf16_round(12.0f * u - 6.0f)
             : kind == 1 ? 16.0f * u - 8.0f
                         : (float)(int)(u * u * u * 60.0f) * 0.25f; /* few high, many low */
    }
    pair_set(t, &lg, v);
    pair_out(t, &ids, SL_DTYPE_I32, 1, (int64_t[]){R});
    pair_out(t, &lp, SL_DTYPE_F32, 2, (int64_t[]){R, 2 + 2 * SL_SAMPLE_MAX_TOP});
    pair_alloc(t, &pend, SL_DTYPE_I32, 1, (int64_t[]){R});
    sl_sample_row *rows = malloc(sizeof *rows * (size_t)R);
    int32_t *ptok = malloc(sizeof(int32_t) * (size_t)R * SPEN), *pout = malloc(sizeof(int32_t) * (size_t)R * SPEN),
            *pprm = malloc(sizeof(int32_t) * (size_t)R * SPEN), *pid = malloc(sizeof(int32_t) * (size_t)R),
            *pid_poison = malloc(sizeof(int32_t) * (size_t)R);
    sl_err e = {0};
    int rounds = (SMIX + R - 1) / R, n_bad = 0, n_boundary = 0, n_rows = 0;
    double lp_err = 0;
    for (int round = 0; round < rounds; round++) {
        int n_pen = 0;
        for (int r = 0; r < R; r++) {
            sl_sample_row *w = &rows[r];
            int m = (round * R + r) % SMIX;
            int pen = sample_mix(w, m);
            w->u = sl_rng_uniform(s0 ^ 0xabcdef, (uint64_t)(round * R + r));
            const float *row = v + (size_t)r * V;
            int best = 0;
            for (int i = 1; i < V; i++) best = row[i] > row[best] ? i : best;
            pid[r] = r % 2 ? best : (best + V / 2) % V; /* merged into an entry / an entry of its own */
            if (!pen) continue;
            w->pen_start = n_pen;
            w->pen_n = SPEN;
            w->pending = r;
            for (int j = 0; j < SPEN; j++) { /* distinct tokens, the row's top one first */
                ptok[n_pen] = (int32_t)((best + (int64_t)j * 7919) % V);
                pout[n_pen] = j % 4;
                pprm[n_pen] = j % 3 == 0;
                n_pen++;
            }
        }
        if (sl_be_upload(t->cpu, &pend.c, pid, SL_DTYPE_I32, &e) ||
            sl_be_upload(t->gpu, &pend.g, pid, SL_DTYPE_I32, &e))
            die_err("upload", &e);
        for (int r = 0; r < R; r++) pid_poison[r] = INT32_MIN; /* every round must write every id */
        if (sl_be_upload(t->gpu, &ids.g, pid_poison, SL_DTYPE_I32, &e)) die_err("poison", &e);
        sl_sample_args a = {R, rows, n_pen, ptok, pout, pprm, &pend.c};
        sl_be_sample(t->cpu, &ids.c, &lp.c, &lg.c, &a);
        a.pending_ids = &pend.g;
        sl_be_sample(t->gpu, &ids.g, &lp.g, &lg.g, &a);
        a.pending_ids = &pend.c;
        float *ic = download(t->cpu, &ids.c), *ig = download(t->gpu, &ids.g);
        float *lc = download(t->cpu, &lp.c), *lgv = download(t->gpu, &lp.g);
        for (int r = 0; r < R; r++, n_rows++) {
            if (ic[r] != ig[r]) {
                if (ig[r] >= 0 && ig[r] < V && sample_at_boundary(t, &lg, r, &a, (int32_t)ig[r])) {
                    n_boundary++;
                } else {
                    n_bad++;
                    printf("    row %d mix %d: cpu %d cuda %d\n", r, (round * R + r) % SMIX,
                           (int)ic[r], (int)ig[r]);
                }
                continue;
            }
            if (!rows[r].logprobs) continue;
            const float *a1 = lc + r * (2 + 2 * SL_SAMPLE_MAX_TOP), *b1 = lgv + r * (2 + 2 * SL_SAMPLE_MAX_TOP);
            int n = (int)a1[1], ok = b1[1] == a1[1] && fabsf(a1[0] - b1[0]) <= tol;
            lp_err = fmax(lp_err, fabs((double)a1[0] - b1[0]));
            for (int j = 0; j < n && ok; j++) {
                ok = a1[2 + j] == b1[2 + j] &&
                     fabsf(a1[2 + SL_SAMPLE_MAX_TOP + j] - b1[2 + SL_SAMPLE_MAX_TOP + j]) <= tol;
                lp_err = fmax(lp_err, fabs((double)a1[2 + SL_SAMPLE_MAX_TOP + j] - b1[2 + SL_SAMPLE_MAX_TOP + j]));
            }
            if (!ok) {
                n_bad++;
                printf("    row %d mix %d: logprobs differ (n %g/%g, lp %g/%g)\n", r,
                       (round * R + r) % SMIX, a1[1], b1[1], a1[0], b1[0]);
            }
        }
        free(ic);
        free(ig);
        free(lc);
        free(lgv);
    }
    snprintf(desc, ndesc, "V=%d R=%d %s", V, R, kinds[kind]);
    /* boundary rows must stay rare: more means a real disagreement */
    int ok = n_bad == 0 && n_boundary <= 1 + n_rows / 20;
    printf("  %-4s %-12s %-44s rows %d, at a boundary %d, max|d| logprob %.2e (tol %.0e)\n",
           ok ? "ok" : "FAIL", sl_op_name(SL_OP_SAMPLE), desc, n_rows, n_boundary, lp_err, tol);
    if (ok) t->n_pass++;
    else t->n_fail++;
    CHECK_MSG(ok, "sample %s", desc);
    free(v);
    free(rows);
    free(ptok);
    free(pout);
    free(pprm);
    free(pid);
    free(pid_poison);
    pair_free(t, &lg);
    pair_free(t, &ids);
    pair_free(t, &lp);
    pair_free(t, &pend);
}

/* ---- cases ------------------------------------------------------------------ */

typedef struct tb_case {
    sl_op op;
    sl_dtype dt;   /* GPU dtype of the op's activations / outputs */
    int p[9];      /* op-specific shape, see run_case */
    double tol;    /* max rel L2; < 0: exact */
} tb_case;

#define BF SL_DTYPE_BF16
#define F32 SL_DTYPE_F32

static const tb_case cases[] = {
    /* embed: vocab, H, T */
    {SL_OP_EMBED, BF, {1000, 512, 37}, 0},
    {SL_OP_EMBED, F32, {300, 4096, 5}, 0},
    /* matmul: M, N, K, x dtype (0 bf16, 1 f32), w dtype, x column offset into a wider row,
     * kernel (0 autotuned, 1 forced GEMV, 2 forced GEMV inside a CUDA graph capture) */
    {SL_OP_MATMUL, BF, {1, 512, 1024, 0, 0, 0}, 1e-2},
    {SL_OP_MATMUL, BF, {3, 77, 1000, 0, 0, 0}, 1e-2},
    {SL_OP_MATMUL, F32, {8, 300, 520, 0, 0, 8}, 1e-2},
    {SL_OP_MATMUL, BF, {2, 64, 100, 0, 0, 0}, 1e-2},      /* K % 8 != 0: cuBLASLt */
    {SL_OP_MATMUL, BF, {37, 768, 512, 0, 0, 0}, 1e-2},
    {SL_OP_MATMUL, BF, {130, 200, 328, 0, 0, 8}, 1e-2},
    {SL_OP_MATMUL, F32, {7, 1000, 256, 0, 0, 0}, 5e-3},   /* f32 logits */
    {SL_OP_MATMUL, F32, {9, 300, 256, 1, 0, 0}, 5e-3},    /* f32 x, bf16 w */
    {SL_OP_MATMUL, F32, {9, 300, 256, 1, 1, 0}, 1e-5},    /* all fp32 */
    /* qwen3_next's narrow outputs: shared_expert_gate [1,H] -> [T,1] (ld 1), in_proj_ba -> [T,8],
     * router -> f32 [T,E] */
    {SL_OP_MATMUL, BF, {1, 1, 64, 0, 0, 0}, 1e-2},
    {SL_OP_MATMUL, BF, {70, 1, 64, 0, 0, 0}, 1e-2},
    {SL_OP_MATMUL, BF, {9, 8, 64, 0, 0, 0}, 1e-2},
    {SL_OP_MATMUL, F32, {70, 8, 64, 0, 0, 0}, 1e-2},
    /* the decode GEMV forced: every M of a decode batch, N and K tails (N % 16, K % 128), K
     * split over a cluster (narrow N), several staged x chunks per block, one block per
     * weight-row tile (wide N: no split), views, f32 x, f32 out */
    {SL_OP_MATMUL, BF, {1, 4096, 4096, 0, 0, 0, 1}, 1e-2},
    {SL_OP_MATMUL, BF, {1, 77, 1000, 0, 0, 0, 1}, 1e-2},
    {SL_OP_MATMUL, F32, {2, 300, 520, 0, 0, 8, 1}, 1e-2},
    {SL_OP_MATMUL, BF, {3, 40000, 256, 0, 0, 0, 1}, 1e-2},
    {SL_OP_MATMUL, BF, {4, 2048, 4096, 0, 0, 0, 1}, 1e-2},
    {SL_OP_MATMUL, F32, {8, 1000, 2056, 0, 0, 0, 1}, 1e-2},
    {SL_OP_MATMUL, F32, {9, 300, 256, 1, 0, 0, 1}, 1e-2},
    {SL_OP_MATMUL, BF, {13, 600, 12288, 0, 0, 8, 1}, 1e-2},
    {SL_OP_MATMUL, BF, {16, 129, 1032, 0, 0, 8, 1}, 1e-2},
    {SL_OP_MATMUL, F32, {16, 34000, 1000, 0, 0, 0, 1}, 1e-2},
    {SL_OP_MATMUL, BF, {16, 4096, 4096, 0, 0, 0, 1}, 1e-2},
    {SL_OP_MATMUL, BF, {5, 1000, 2048, 0, 0, 0, 2}, 1e-2},
    {SL_OP_MATMUL, F32, {16, 2048, 4096, 1, 0, 8, 2}, 1e-2},
    /* rmsnorm: rows, cols, one_plus, in place, group D (0: whole row) */
    {SL_OP_RMSNORM, BF, {64, 128, 0, 0}, 1e-2},
    {SL_OP_RMSNORM, BF, {19, 8 * 128, 0, 1, 128}, 1e-2},   /* per-head q/k norm */
    {SL_OP_RMSNORM, BF, {5, 4 * 256, 1, 0, 256}, 1e-2},
    {SL_OP_RMSNORM, BF, {6, 3 * 100, 0, 0, 100}, 1e-2},    /* unaligned: scalar path */
    {SL_OP_RMSNORM, BF, {7, 4096, 1, 0}, 1e-2},
    {SL_OP_RMSNORM, BF, {33, 2048, 0, 1}, 1e-2},
    {SL_OP_RMSNORM, F32, {5, 3000, 1, 0}, 1e-5},
    /* add_rmsnorm: rows, D, one_plus, resid dtype (0 bf16, 1 f32) */
    {SL_OP_ADD_RMSNORM, BF, {17, 4096, 0, 0}, 1e-2},
    {SL_OP_ADD_RMSNORM, BF, {9, 2048, 1, 1}, 1e-2},
    {SL_OP_ADD_RMSNORM, BF, {40, 256, 0, 1}, 1e-2},
    /* rope: T, heads, head_dim, rot_dim, max position */
    {SL_OP_ROPE, BF, {19, 8, 128, 128, 40000}, 1e-2},
    {SL_OP_ROPE, BF, {11, 4, 256, 64, 5000}, 1e-2},
    {SL_OP_ROPE, F32, {5, 2, 64, 64, 100000}, 1e-4},
    /* silu_mul: M, I */
    {SL_OP_SILU_MUL, BF, {13, 1536}, 1e-2},
    {SL_OP_SILU_MUL, F32, {3, 1000}, 1e-5},
    /* sigmoid_mul: M, N */
    {SL_OP_SIGMOID_MUL, BF, {21, 4096}, 1e-2},
    {SL_OP_SIGMOID_MUL, BF, {7, 512, 1}, 1e-2},     /* one gate per row */
    /* kv_store: seqs, q_len, prefix, page size, Hkv*D */
    {SL_OP_KV_STORE, BF, {3, 20, 30, 16, 512}, 0},
    {SL_OP_KV_STORE, BF, {2, 5, 3, 1, 256}, 0},
    /* attn_prep: seqs, q_len (even seqs; odd seqs decode 1), prefix, page size, Hq, Hkv, D,
     * rot_dim, one_plus */
    {SL_OP_ATTN_PREP, BF, {3, 20, 30, 16, 32, 8, 128, 128, 0}, 1e-2},     /* qwen3 */
    {SL_OP_ATTN_PREP, BF, {4, 1, 500, 1, 32, 4, 128, 128, 0}, 1e-2},      /* decode, page 1 */
    {SL_OP_ATTN_PREP, BF, {2, 9, 3, 16, 16, 2, 256, 64, 1}, 1e-2},        /* qwen3_next */
    {SL_OP_ATTN_PREP, BF, {2, 5, 7, 32, 4, 4, 64, 64, 0}, 1e-2},
    /* attention: seqs, q_len (even seqs; odd seqs decode 1), prefix, page size, Hq, Hkv, D */
    {SL_OP_ATTENTION, BF, {4, 1, 300, 16, 32, 8, 128}, 2e-2},     /* decode, GQA 4 */
    {SL_OP_ATTENTION, BF, {2, 1, 3000, 32, 16, 2, 128}, 2e-2},    /* long decode: split-KV */
    {SL_OP_ATTENTION, BF, {3, 45, 70, 64, 8, 4, 64}, 2e-2},       /* mixed prefill + decode */
    {SL_OP_ATTENTION, BF, {2, 33, 0, 1, 4, 4, 256}, 2e-2},        /* MHA, page 1, D 256 */
    {SL_OP_ATTENTION, BF, {3, 70, 20, 16, 32, 4, 128}, 2e-2},     /* GQA 8 prefill */
    {SL_OP_ATTENTION, BF, {2, 17, 40, 32, 16, 16, 64}, 2e-2},
    {SL_OP_ATTENTION, BF, {3, 1, 5000, 16, 16, 2, 256}, 2e-2},    /* qwen3_next decode */
    {SL_OP_ATTENTION, BF, {3, 5, 100, 16, 32, 8, 128}, 2e-2},     /* short chunks: 16-row tiles */
    {SL_OP_ATTENTION, BF, {1, 20, 3000, 16, 16, 2, 128}, 2e-2},   /* 64-row tiles + split-KV */
    {SL_OP_ATTENTION, BF, {2, 30, 10, 16, 12, 2, 64}, 2e-2},      /* G = 6 */
    {SL_OP_ATTENTION, BF, {1, 200, 0, 16, 16, 2, 256}, 2e-2},     /* qwen3_next prefill */
    /* moe_route: T, E, k, norm */
    {SL_OP_MOE_ROUTE, F32, {33, 128, 8, 1}, 1e-5},
    {SL_OP_MOE_ROUTE, F32, {9, 60, 4, 0}, 1e-5},
    /* moe_experts: T, H, I, E, k, pool (experts drawn from a random pool of that many; 0: all
     * E, skewed to low ids). Up to MOE_GV_MAX_PAIRS (moe.cu) pairs T*k take the few-token path,
     * more the grouped GEMM. */
    {SL_OP_MOE_EXPERTS, BF, {5, 256, 96, 16, 4}, 2e-2},
    {SL_OP_MOE_EXPERTS, BF, {70, 512, 128, 32, 8}, 2e-2},
    {SL_OP_MOE_EXPERTS, BF, {150, 512, 128, 32, 8}, 2e-2},       /* grouped GEMM */
    {SL_OP_MOE_EXPERTS, BF, {1, 256, 96, 16, 4}, 2e-2},          /* tiny shape */
    {SL_OP_MOE_EXPERTS, BF, {3, 256, 96, 16, 4, 5}, 2e-2},
    {SL_OP_MOE_EXPERTS, F32, {8, 264, 40, 16, 4, 6}, 2e-2},      /* f32 x/out, ragged tiles */
    {SL_OP_MOE_EXPERTS, BF, {64, 256, 96, 16, 4, 6}, 2e-2},      /* ~43 tokens per expert */
    {SL_OP_MOE_EXPERTS, BF, {1, 2048, 768, 128, 8, 8}, 2e-2},    /* Qwen3-30B-A3B */
    {SL_OP_MOE_EXPERTS, BF, {3, 2048, 768, 128, 8, 12}, 2e-2},
    {SL_OP_MOE_EXPERTS, BF, {8, 2048, 768, 128, 8, 16}, 2e-2},
    {SL_OP_MOE_EXPERTS, BF, {64, 2048, 768, 128, 8, 24}, 2e-2},
    {SL_OP_MOE_EXPERTS, BF, {1, 2048, 512, 512, 10, 10}, 2e-2},  /* Qwen3-Coder-Next */
    {SL_OP_MOE_EXPERTS, BF, {8, 2048, 512, 512, 10, 24}, 2e-2},
    {SL_OP_MOE_EXPERTS, BF, {64, 2048, 512, 512, 10, 32}, 2e-2},
    /* gather_rows: seqs, q pattern, cols */
    {SL_OP_GATHER_ROWS, BF, {7, 3, 1000}, 0},
    {SL_OP_GATHER_ROWS, F32, {12, 5, 333}, 0},
    /* copy_slots: slots, row elements, n */
    {SL_OP_COPY_SLOTS, F32, {12, 4096, 4}, -1},
    {SL_OP_COPY_SLOTS, BF, {9, 333, 3}, -1},
    /* fill_random: n, scale*1000, offset*1000 */
    {SL_OP_FILL_RANDOM, BF, {100003, 20, 0}, -1},
    {SL_OP_FILL_RANDOM, F32, {65536, 1000, 1000}, -1},
    /* conv1d: seqs, q_len (even seqs; odd seqs 1), C, K */
    {SL_OP_CONV1D, BF, {3, 40, 512, 4}, 1e-2},
    {SL_OP_CONV1D, BF, {4, 1, 8192, 4}, 1e-2},
    /* gdn: seqs, q_len (even seqs; odd seqs 1), Hk, Hv, Dk, Dv */
    {SL_OP_GDN, BF, {3, 20, 2, 4, 128, 128}, 1e-2},
    {SL_OP_GDN, BF, {4, 1, 1, 2, 64, 64}, 1e-2},
    {SL_OP_GDN, BF, {2, 70, 1, 1, 128, 128}, 1e-2},
    {SL_OP_GDN, BF, {2, 9, 2, 4, 64, 64}, 1e-2},          /* the golden qwen3_next */
    /* rmsnorm_gated: rows, cols, -, -, group D */
    {SL_OP_RMSNORM_GATED, BF, {48, 128, 0, 0, 0}, 1e-2},
    {SL_OP_RMSNORM_GATED, BF, {9, 4 * 128, 0, 0, 128}, 1e-2},
    {SL_OP_RMSNORM_GATED, BF, {70, 4 * 64, 0, 0, 64}, 1e-2},
    /* add: rows, cols, b dtype (0 bf16, 1 f32), in place */
    {SL_OP_ADD, BF, {17, 4096, 0, 1}, 1e-2},
    {SL_OP_ADD, F32, {5, 1000, 0, 0}, 1e-6},
    {SL_OP_ADD, BF, {3, 333, 1, 0}, 1e-2},
    /* sample: V, R, logits (0: bf16-rounded uniform, ties; 1: f32 uniform; 2: quarter steps,
     * peaked, many ties). Ids exact but for rows at a draw/top-p boundary; logprobs 1e-4 abs. */
    {SL_OP_SAMPLE, F32, {1000, 1, 0}, 1e-4},
    {SL_OP_SAMPLE, F32, {1000, 7, 1}, 1e-4},
    {SL_OP_SAMPLE, F32, {1000, 64, 2}, 1e-4},
    {SL_OP_SAMPLE, F32, {32000, 1, 1}, 1e-4},
    {SL_OP_SAMPLE, F32, {32000, 7, 2}, 1e-4},
    {SL_OP_SAMPLE, F32, {32000, 64, 0}, 1e-4},
    {SL_OP_SAMPLE, F32, {151936, 1, 2}, 1e-4},
    {SL_OP_SAMPLE, F32, {151936, 7, 0}, 1e-4},
    {SL_OP_SAMPLE, F32, {151936, 64, 1}, 1e-4},
};

static int64_t ne2(int64_t *ne, int64_t a, int64_t b)
{
    ne[0] = a;
    ne[1] = b;
    return a * b;
}

/* The same device tensor downloaded twice must match bit for bit. */
static void compare_gpu_exact(tb *t, sl_op op, const char *desc, const char *what,
                              const sl_tensor *a, const sl_tensor *b)
{
    int64_t n = sl_tensor_rows(a) * sl_tensor_cols(a);
    float *va = download(t->gpu, a), *vb = download(t->gpu, b);
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

/* Routing for moe_experts (draw `round` of it): distinct experts per token;
 * with a pool, CPU ids ic index pool_e (the GPU's ids iv); without one, ids
 * skew toward low ids so some experts get many tokens (several GEMM tiles)
 * and some none. */
static void moe_draw_ids(uint64_t rs, int round, int T, int k, int E, int pool,
                         const int32_t *pool_e, int32_t *iv, int32_t *ic, float *wv)
{
    uint64_t salt = (uint64_t)round << 40;
    for (int i = 0; i < T; i++)
        for (int j = 0; j < k; j++) {
            int m, dup;
            uint64_t n = 0;
            do {
                float u = sl_rng_uniform(rs, salt + (uint64_t)(i * 64 + j) * 1000 + n++);
                m = pool ? (int)(u * (float)pool) : (int)(u * u * (float)E);
                dup = 0;
                for (int jj = 0; jj < j; jj++)
                    dup |= ic[i * k + jj] == m;
            } while (dup);
            ic[i * k + j] = m;
            iv[i * k + j] = pool_e[m];
            wv[i * k + j] = 0.05f + sl_rng_uniform(rs, salt + (uint64_t)(i * 64 + j)) * 0.3f;
        }
}

/* moe_experts. With a pool, ids come from `pool` random experts of E (each
 * token distinct ones, so tokens share experts), the GPU gets the full
 * [E, ...] weights with every other expert NaN (reading a wrong expert
 * fails the case) and the CPU only the pool's experts, ids remapped: the
 * real model shapes without E full experts on the host. The GPU op also
 * runs captured in a CUDA graph: bit for bit the direct run, then replayed
 * on other routing. */
static void run_moe_experts(tb *t, const tb_case *c)
{
    const int *p = c->p;
    int T = p[0], H = p[1], I = p[2], E = p[3], k = p[4], pool = p[5];
    char desc[96];
    snprintf(desc, sizeof desc, "T=%d H=%d I=%d E=%d k=%d%s %s", T, H, I, E, k,
             pool ? " pooled" : "", sl_dtype_name(c->dt));
    int64_t ne[3];
    pair x, y, ids, wt;
    pair_rand(t, &x, c->dt, 2, (ne2(ne, T, H), ne), -2, 2);
    int n_cpu = pool ? pool : E;
    int32_t *pool_e = malloc(sizeof(int32_t) * (size_t)n_cpu); /* CPU expert -> GPU expert */
    uint64_t rs = sl_rng_mix(t->seed++);
    for (int i = 0; i < n_cpu; i++) {
        int e, dup;
        uint64_t n = 0;
        do {
            e = pool ? (int)(sl_rng_uniform(rs, 5000000u + (uint64_t)i * 1000 + n++) * (float)E)
                     : i;
            dup = 0;
            for (int j = 0; j < i; j++)
                dup |= pool_e[j] == e;
        } while (dup);
        pool_e[i] = e;
    }
    /* weights: CPU [n_cpu, ...] f32; GPU [E, ...] bf16, experts outside the pool NaN */
    sl_tensor gu_c, dn_c, gu_g, dn_g;
    sl_err e = {0};
    int64_t gu_n = 2 * (int64_t)I * H, dn_n = (int64_t)H * I;
    int64_t ne_gu[3] = {n_cpu, 2 * (int64_t)I, H}, ne_dn[3] = {n_cpu, H, I};
    if (sl_be_alloc(t->cpu, &gu_c, F32, 3, ne_gu, &e) ||
        sl_be_alloc(t->cpu, &dn_c, F32, 3, ne_dn, &e))
        die_err("alloc", &e);
    ne_gu[0] = ne_dn[0] = E;
    if (sl_be_alloc(t->gpu, &gu_g, BF, 3, ne_gu, &e) ||
        sl_be_alloc(t->gpu, &dn_g, BF, 3, ne_dn, &e))
        die_err("alloc", &e);
    if (pool) {
        CK(cudaMemset(gu_g.data, 0xff, sizeof(uint16_t) * (size_t)(E * gu_n))); /* bf16 NaN */
        CK(cudaMemset(dn_g.data, 0xff, sizeof(uint16_t) * (size_t)(E * dn_n)));
        CK(cudaDeviceSynchronize()); /* before uploads on the backend's stream */
    }
    for (int i = 0; i < n_cpu; i++) {
        sl_tensor *cs[2] = {&gu_c, &dn_c}, *gs[2] = {&gu_g, &dn_g};
        int64_t n2[2] = {gu_n, dn_n};
        for (int w = 0; w < 2; w++) {
            float *hc = (float *)cs[w]->data + (int64_t)i * n2[w];
            uint64_t s = sl_rng_mix(t->seed++);
            for (int64_t j = 0; j < n2[w]; j++)
                hc[j] = bf16_round(-0.1f + 0.2f * sl_rng_uniform(s, (uint64_t)j));
            sl_tensor slice =
                sl_tensor_make((uint16_t *)gs[w]->data + (int64_t)pool_e[i] * n2[w], BF, 1, &n2[w]);
            slice.on_device = 1;
            if (sl_be_upload(t->gpu, &slice, hc, F32, &e)) die_err("upload", &e);
        }
    }
    int32_t *iv = malloc(sizeof(int32_t) * (size_t)(T * k)),
            *ic = malloc(sizeof(int32_t) * (size_t)(T * k));
    float *wv = malloc(sizeof(float) * (size_t)(T * k));
    moe_draw_ids(rs, 0, T, k, E, pool, pool_e, iv, ic, wv);
    pair_alloc(t, &ids, SL_DTYPE_I32, 2, (ne2(ne, T, k), ne));
    if (sl_be_upload(t->cpu, &ids.c, ic, SL_DTYPE_I32, &e) ||
        sl_be_upload(t->gpu, &ids.g, iv, SL_DTYPE_I32, &e))
        die_err("upload", &e);
    pair_alloc(t, &wt, F32, 2, (ne2(ne, T, k), ne));
    pair_set(t, &wt, wv);
    pair_out(t, &y, c->dt, 2, (ne2(ne, T, H), ne));
    sl_tensor y2;
    if (sl_be_alloc(t->gpu, &y2, c->dt, 2, (ne2(ne, T, H), ne), &e)) die_err("alloc", &e);
    sl_be_moe_experts(t->cpu, &y.c, &x.c, &ids.c, &wt.c, &gu_c, &dn_c);
    sl_be_moe_experts(t->gpu, &y.g, &x.g, &ids.g, &wt.g, &gu_g, &dn_g);
    compare(t, c->op, desc, "out", &y.c, &y.g, c->tol);
    /* as a decode graph runs it: captured once, replayed (bit-identical to the
     * direct run), then replayed with other ids and weights in the same tensors */
    cudaStream_t st = (cudaStream_t)sl_cuda_stream(t->gpu);
    cudaGraph_t gr;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    sl_be_moe_experts(t->gpu, &y2, &x.g, &ids.g, &wt.g, &gu_g, &dn_g);
    CK(cudaStreamEndCapture(st, &gr));
    CK(cudaGraphInstantiate(&ge, gr, 0));
    CK(cudaGraphLaunch(ge, st));
    compare_gpu_exact(t, c->op, desc, "graph", &y.g, &y2);
    moe_draw_ids(rs, 1, T, k, E, pool, pool_e, iv, ic, wv);
    if (sl_be_upload(t->cpu, &ids.c, ic, SL_DTYPE_I32, &e) ||
        sl_be_upload(t->gpu, &ids.g, iv, SL_DTYPE_I32, &e))
        die_err("upload", &e);
    pair_set(t, &wt, wv);
    sl_be_moe_experts(t->cpu, &y.c, &x.c, &ids.c, &wt.c, &gu_c, &dn_c);
    CK(cudaGraphLaunch(ge, st));
    compare(t, c->op, desc, "replay", &y.c, &y2, c->tol);
    CK(cudaGraphExecDestroy(ge));
    CK(cudaGraphDestroy(gr));
    free(pool_e);
    free(iv);
    free(ic);
    free(wv);
    sl_be_release(t->cpu, &gu_c);
    sl_be_release(t->cpu, &dn_c);
    sl_be_release(t->gpu, &gu_g);
    sl_be_release(t->gpu, &dn_g);
    sl_be_release(t->gpu, &y2);
    pair_free(t, &ids);
    pair_free(t, &wt);
    pair_free(t, &x);
    pair_free(t, &y);
}

static void run_case(tb *t, const tb_case *c)
{
    const int *p = c->p;
    char desc[96];
    int64_t ne[4];
    pair x, y, w, z;
    sl_dtype dt = c->dt;
    switch (c->op) {
    case SL_OP_EMBED: {
        snprintf(desc, sizeof desc, "V=%d H=%d T=%d %s", p[0], p[1], p[2], sl_dtype_name(dt));
        int q[1] = {p[2]}, pre[1] = {0};
        tb_batch b;
        batch_make(t, &b, 1, q, pre, 16, p[0]);
        pair_rand(t, &w, dt, 2, (ne2(ne, p[0], p[1]), ne), -1, 1);
        pair_out(t, &y, dt, 2, (ne2(ne, p[2], p[1]), ne));
        sl_be_embed(t->cpu, &y.c, &w.c, &b.m);
        sl_be_embed(t->gpu, &y.g, &w.g, &b.m);
        compare(t, c->op, desc, "out", &y.c, &y.g, c->tol);
        pair_free(t, &w);
        pair_free(t, &y);
        batch_free(&b);
        break;
    }
    case SL_OP_MATMUL: {
        int M = p[0], N = p[1], K = p[2], off = p[5];
        sl_dtype xdt = p[3] ? F32 : BF, wdt = p[4] ? F32 : BF;
        static const char *kern[] = {"", " gemv", " gemv graph"};
        snprintf(desc, sizeof desc, "M=%d N=%d K=%d x%s w%s ->%s%s%s", M, N, K, sl_dtype_name(xdt),
                 sl_dtype_name(wdt), sl_dtype_name(dt), off ? " view" : "", kern[p[6]]);
        pair_rand(t, &x, xdt, 2, (ne2(ne, M, K + 2 * off), ne), -1, 1);
        pair_rand(t, &w, wdt, 2, (ne2(ne, N, K), ne), -1, 1);
        pair_out(t, &y, dt, 2, (ne2(ne, M, N), ne));
        sl_tensor xc = sl_tensor_colview(&x.c, off, K), xg = sl_tensor_colview(&x.g, off, K);
        sl_be_matmul(t->cpu, &y.c, &xc, &w.c);
        if (p[6]) sl_cuda_matmul_force(t->gpu, SL_CUDA_MM_GEMV);
        if (p[6] == 2) { /* captured, then replayed: no sync, no allocation outside the graph */
            cudaStream_t s = (cudaStream_t)sl_cuda_stream(t->gpu);
            cudaGraph_t gr;
            cudaGraphExec_t ge;
            CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal) == cudaSuccess);
            sl_be_matmul(t->gpu, &y.g, &xg, &w.g);
            CHECK(cudaStreamEndCapture(s, &gr) == cudaSuccess);
            CHECK(cudaGraphInstantiate(&ge, gr, 0) == cudaSuccess);
            CHECK(cudaGraphLaunch(ge, s) == cudaSuccess);
            CHECK(cudaStreamSynchronize(s) == cudaSuccess);
            cudaGraphExecDestroy(ge);
            cudaGraphDestroy(gr);
        } else {
            sl_be_matmul(t->gpu, &y.g, &xg, &w.g);
        }
        if (p[6]) {
            const char *ran = sl_cuda_matmul_last(t->gpu);
            CHECK_MSG(ran && !strcmp(ran, "gemv"), "%s ran %s", desc, ran ? ran : "nothing");
            sl_cuda_matmul_force(t->gpu, SL_CUDA_MM_AUTO);
        }
        compare(t, c->op, desc, "out", &y.c, &y.g, c->tol);
        pair_free(t, &x);
        pair_free(t, &w);
        pair_free(t, &y);
        break;
    }
    case SL_OP_RMSNORM:
    case SL_OP_ADD_RMSNORM:
    case SL_OP_RMSNORM_GATED: {
        int R = p[0], D = p[1], one = p[2], G = p[4] ? p[4] : p[1];
        snprintf(desc, sizeof desc, "R=%d C=%d D=%d%s%s %s", R, D, G, one ? " 1+w" : "",
                 c->op == SL_OP_RMSNORM && p[3] ? " in-place"
                 : c->op == SL_OP_ADD_RMSNORM && p[3] ? " resid f32" : "",
                 sl_dtype_name(dt));
        pair_rand(t, &x, dt, 2, (ne2(ne, R, D), ne), -2, 2);
        pair_rand(t, &w, dt, 1, (ne[0] = G, ne), -1, 1);
        int inplace = c->op == SL_OP_RMSNORM && p[3];
        if (!inplace) pair_out(t, &y, dt, 2, (ne2(ne, R, D), ne));
        pair *o = inplace ? &x : &y;
        if (c->op == SL_OP_RMSNORM) {
            sl_be_rmsnorm(t->cpu, &o->c, &x.c, &w.c, 1e-6f, one);
            sl_be_rmsnorm(t->gpu, &o->g, &x.g, &w.g, 1e-6f, one);
        } else if (c->op == SL_OP_ADD_RMSNORM) {
            pair_rand(t, &z, p[3] ? F32 : BF, 2, (ne2(ne, R, D), ne), -3, 3);
            sl_be_add_rmsnorm(t->cpu, &o->c, &z.c, &x.c, &w.c, 1e-6f, one);
            sl_be_add_rmsnorm(t->gpu, &o->g, &z.g, &x.g, &w.g, 1e-6f, one);
            compare(t, c->op, desc, "resid", &z.c, &z.g, c->tol);
            pair_free(t, &z);
        } else {
            pair_rand(t, &z, dt, 2, (ne2(ne, R, D), ne), -3, 3);
            sl_be_rmsnorm_gated(t->cpu, &o->c, &x.c, &z.c, &w.c, 1e-6f);
            sl_be_rmsnorm_gated(t->gpu, &o->g, &x.g, &z.g, &w.g, 1e-6f);
            pair_free(t, &z);
        }
        compare(t, c->op, desc, "out", &o->c, &o->g, c->tol);
        pair_free(t, &x);
        pair_free(t, &w);
        if (!inplace) pair_free(t, &y);
        break;
    }
    case SL_OP_ADD: {
        int R = p[0], C = p[1];
        snprintf(desc, sizeof desc, "R=%d C=%d b %s%s %s", R, C, p[2] ? "f32" : "bf16",
                 p[3] ? " in-place" : "", sl_dtype_name(dt));
        pair_rand(t, &x, dt, 2, (ne2(ne, R, C), ne), -2, 2);
        pair_rand(t, &z, p[2] ? F32 : BF, 2, (ne2(ne, R, C), ne), -2, 2);
        if (!p[3]) pair_out(t, &y, dt, 2, (ne2(ne, R, C), ne));
        pair *o = p[3] ? &x : &y;
        sl_be_add(t->cpu, &o->c, &x.c, &z.c);
        sl_be_add(t->gpu, &o->g, &x.g, &z.g);
        compare(t, c->op, desc, "out", &o->c, &o->g, c->tol);
        pair_free(t, &x);
        pair_free(t, &z);
        if (!p[3]) pair_free(t, &y);
        break;
    }
    case SL_OP_ROPE: {
        int T = p[0], Hh = p[1], D = p[2], rot = p[3];
        snprintf(desc, sizeof desc, "T=%d heads=%d D=%d rot=%d pos<%d %s", T, Hh, D, rot, p[4],
                 sl_dtype_name(dt));
        int q[1] = {T}, pre[1] = {p[4] - T};
        tb_batch b;
        batch_make(t, &b, 1, q, pre, 16, 10);
        /* x is a column view of a wider row, as q inside a fused qkv projection */
        pair_rand(t, &x, dt, 2, (ne2(ne, T, (int64_t)(Hh + 2) * D), ne), -2, 2);
        sl_tensor xc = sl_tensor_colview(&x.c, D, (int64_t)Hh * D);
        sl_tensor xg = sl_tensor_colview(&x.g, D, (int64_t)Hh * D);
        sl_be_rope(t->cpu, &xc, Hh, D, rot, 1e6f, &b.m);
        sl_be_rope(t->gpu, &xg, Hh, D, rot, 1e6f, &b.m);
        compare(t, c->op, desc, "x", &x.c, &x.g, c->tol);
        pair_free(t, &x);
        batch_free(&b);
        break;
    }
    case SL_OP_SILU_MUL:
    case SL_OP_SIGMOID_MUL: {
        int M = p[0], N = p[1];
        snprintf(desc, sizeof desc, "M=%d N=%d %s", M, N, sl_dtype_name(dt));
        pair_rand(t, &x, dt, 2, (ne2(ne, M, 2 * (int64_t)N), ne), -4, 4);
        if (c->op == SL_OP_SILU_MUL) {
            pair_out(t, &y, dt, 2, (ne2(ne, M, N), ne));
            sl_be_silu_mul(t->cpu, &y.c, &x.c);
            sl_be_silu_mul(t->gpu, &y.g, &x.g);
            compare(t, c->op, desc, "out", &y.c, &y.g, c->tol);
            pair_free(t, &y);
        } else { /* gate read from the second half of x's rows, or its last column */
            pair_rand(t, &y, dt, 2, (ne2(ne, M, N), ne), -2, 2);
            int gn = p[2] ? 1 : N;
            sl_tensor gc = sl_tensor_colview(&x.c, 2 * N - gn, gn);
            sl_tensor gg = sl_tensor_colview(&x.g, 2 * N - gn, gn);
            sl_be_sigmoid_mul(t->cpu, &y.c, &gc);
            sl_be_sigmoid_mul(t->gpu, &y.g, &gg);
            compare(t, c->op, desc, "x", &y.c, &y.g, c->tol);
            pair_free(t, &y);
        }
        pair_free(t, &x);
        break;
    }
    case SL_OP_KV_STORE:
    case SL_OP_ATTENTION: {
        int S = p[0], P = p[3];
        int Hq = p[4], Hkv = p[5], D = p[6], C = c->op == SL_OP_KV_STORE ? p[4] : Hkv * D;
        int q[16], pre[16], T = 0;
        for (int s = 0; s < S; s++) {
            q[s] = s % 2 == 0 ? p[1] : 1;
            pre[s] = p[2] + 37 * s;
            T += q[s];
        }
        if (c->op == SL_OP_KV_STORE)
            snprintf(desc, sizeof desc, "S=%d q=%d pre=%d page=%d C=%d", S, p[1], p[2], P, C);
        else
            snprintf(desc, sizeof desc, "S=%d q=%d pre=%d page=%d Hq=%d Hkv=%d D=%d", S, p[1],
                     p[2], P, Hq, Hkv, D);
        tb_batch b;
        batch_make(t, &b, S, q, pre, P, 10);
        int64_t rows = (int64_t)b.n_pages * P;
        pair kc, vc;
        pair_rand(t, &kc, dt, 2, (ne2(ne, rows, C), ne), -2, 2); /* cached prefix: random */
        pair_rand(t, &vc, dt, 2, (ne2(ne, rows, C), ne), -2, 2);
        pair_rand(t, &x, dt, 2, (ne2(ne, T, C), ne), -2, 2);
        pair_rand(t, &z, dt, 2, (ne2(ne, T, C), ne), -2, 2);
        sl_be_kv_store(t->cpu, &kc.c, &vc.c, &x.c, &z.c, &b.m);
        sl_be_kv_store(t->gpu, &kc.g, &vc.g, &x.g, &z.g, &b.m);
        if (c->op == SL_OP_KV_STORE) {
            compare(t, c->op, desc, "kcache", &kc.c, &kc.g, c->tol);
            compare(t, c->op, desc, "vcache", &vc.c, &vc.g, c->tol);
        } else {
            pair qq;
            pair_rand(t, &qq, dt, 2, (ne2(ne, T, (int64_t)Hq * D), ne), -2, 2);
            pair_out(t, &y, dt, 2, (ne2(ne, T, (int64_t)Hq * D), ne));
            float scale = 1.0f / sqrtf((float)D);
            sl_be_attention(t->cpu, &y.c, &qq.c, &kc.c, &vc.c, Hq, Hkv, D, scale, &b.m);
            sl_be_attention(t->gpu, &y.g, &qq.g, &kc.g, &vc.g, Hq, Hkv, D, scale, &b.m);
            compare(t, c->op, desc, "out", &y.c, &y.g, c->tol);
            pair_free(t, &qq);
            pair_free(t, &y);
        }
        pair_free(t, &kc);
        pair_free(t, &vc);
        pair_free(t, &x);
        pair_free(t, &z);
        batch_free(&b);
        break;
    }
    case SL_OP_ATTN_PREP: {
        int S = p[0], P = p[3], Hq = p[4], Hkv = p[5], D = p[6], rot = p[7], op1 = p[8];
        int q[16], pre[16], T = 0;
        for (int s = 0; s < S; s++) {
            q[s] = s % 2 == 0 ? p[1] : 1;
            pre[s] = p[2] + 37 * s;
            T += q[s];
        }
        snprintf(desc, sizeof desc, "S=%d q=%d page=%d Hq=%d Hkv=%d D=%d rot=%d%s", S, p[1], P,
                 Hq, Hkv, D, rot, op1 ? " 1+w" : "");
        tb_batch b;
        batch_make(t, &b, S, q, pre, P, 10);
        int64_t rows = (int64_t)b.n_pages * P, C = (int64_t)Hkv * D, W = (int64_t)(Hq + 2 * Hkv) * D;
        pair kc, vc, qn, kn;
        pair_rand(t, &kc, dt, 2, (ne2(ne, rows, C), ne), -2, 2);
        pair_rand(t, &vc, dt, 2, (ne2(ne, rows, C), ne), -2, 2);
        pair_rand(t, &x, dt, 2, (ne2(ne, T, W), ne), -2, 2); /* the fused qkv projection */
        pair_rand(t, &qn, SL_DTYPE_F32, 1, (ne[0] = D, ne), -1, 1);
        pair_rand(t, &kn, SL_DTYPE_F32, 1, (ne[0] = D, ne), -1, 1);
        for (int side = 0; side < 2; side++) {
            sl_backend *be = side ? t->gpu : t->cpu;
            sl_tensor *xx = side ? &x.g : &x.c;
            sl_tensor qv = sl_tensor_colview(xx, 0, (int64_t)Hq * D);
            sl_tensor kv = sl_tensor_colview(xx, (int64_t)Hq * D, C);
            sl_tensor vv = sl_tensor_colview(xx, (int64_t)Hq * D + C, C);
            sl_be_attn_prep(be, &qv, &kv, &vv, side ? &qn.g : &qn.c, side ? &kn.g : &kn.c, 1e-6f,
                            op1, D, rot, 1e6f, side ? &kc.g : &kc.c, side ? &vc.g : &vc.c, &b.m);
        }
        compare(t, c->op, desc, "qkv", &x.c, &x.g, c->tol);
        compare(t, c->op, desc, "kcache", &kc.c, &kc.g, c->tol);
        compare(t, c->op, desc, "vcache", &vc.c, &vc.g, c->tol);
        pair_free(t, &kc);
        pair_free(t, &vc);
        pair_free(t, &qn);
        pair_free(t, &kn);
        pair_free(t, &x);
        batch_free(&b);
        break;
    }
    case SL_OP_CONV1D:
    case SL_OP_GDN: {
        int S = p[0], q[16], pre[16], T = 0;
        for (int i = 0; i < S; i++) {
            q[i] = i % 2 == 0 ? p[1] : 1;
            pre[i] = 9;
            T += q[i];
        }
        tb_batch b;
        batch_make(t, &b, S, q, pre, 16, 10);
        batch_hybrid(t, &b);
        pair pool;
        if (c->op == SL_OP_CONV1D) {
            int C = p[2], K = p[3];
            snprintf(desc, sizeof desc, "S=%d q=%d C=%d K=%d", S, p[1], C, K);
            int64_t ne3[3] = {2 * S, C, K - 1};
            pair_rand(t, &pool, F32, 3, ne3, -1, 1);
            pair_rand(t, &w, dt, 2, (ne2(ne, C, K), ne), -0.5f, 0.5f);
            pair_rand(t, &x, dt, 2, (ne2(ne, T, C), ne), -2, 2);
            pair_out(t, &y, dt, 2, (ne2(ne, T, C), ne));
            sl_be_conv1d(t->cpu, &y.c, &x.c, &w.c, &pool.c, &b.m);
            sl_be_conv1d(t->gpu, &y.g, &x.g, &w.g, &pool.g, &b.m);
            compare(t, c->op, desc, "y", &y.c, &y.g, c->tol);
            compare(t, c->op, desc, "state", &pool.c, &pool.g, 1e-6);
            pair_free(t, &w);
        } else {
            int Hk = p[2], Hv = p[3], Dk = p[4], Dv = p[5];
            snprintf(desc, sizeof desc, "S=%d q=%d Hk=%d Hv=%d Dk=%d Dv=%d", S, p[1], Hk, Hv, Dk, Dv);
            int64_t ne4[4] = {2 * S, Hv, Dk, Dv};
            pair_rand(t, &pool, F32, 4, ne4, -0.2f, 0.2f);
            pair_rand(t, &x, dt, 2, (ne2(ne, T, 2 * (int64_t)Hk * Dk + (int64_t)Hv * Dv), ne), -1, 1);
            pair aa, bb, al, dtb;
            pair_rand(t, &aa, dt, 2, (ne2(ne, T, Hv), ne), -2, 2);
            pair_rand(t, &bb, dt, 2, (ne2(ne, T, Hv), ne), -2, 2);
            pair_rand(t, &al, F32, 1, (ne[0] = Hv, ne), -1, 1);
            pair_rand(t, &dtb, F32, 1, (ne[0] = Hv, ne), -1, 1);
            pair_out(t, &y, dt, 2, (ne2(ne, T, (int64_t)Hv * Dv), ne));
            sl_be_gdn(t->cpu, &y.c, &x.c, &aa.c, &bb.c, &al.c, &dtb.c, &pool.c, Hk, Hv, Dk, Dv, &b.m);
            sl_be_gdn(t->gpu, &y.g, &x.g, &aa.g, &bb.g, &al.g, &dtb.g, &pool.g, Hk, Hv, Dk, Dv, &b.m);
            compare(t, c->op, desc, "out", &y.c, &y.g, c->tol);
            compare(t, c->op, desc, "ssm", &pool.c, &pool.g, 1e-4);
            pair_free(t, &aa);
            pair_free(t, &bb);
            pair_free(t, &al);
            pair_free(t, &dtb);
        }
        pair_free(t, &pool);
        pair_free(t, &x);
        pair_free(t, &y);
        batch_free(&b);
        break;
    }
    case SL_OP_MOE_ROUTE: {
        int T = p[0], E = p[1], k = p[2];
        snprintf(desc, sizeof desc, "T=%d E=%d k=%d%s", T, E, k, p[3] ? " norm" : "");
        pair_rand(t, &x, dt, 2, (ne2(ne, T, E), ne), -4, 4);
        pair_out(t, &y, SL_DTYPE_I32, 2, (ne2(ne, T, k), ne));
        pair_out(t, &w, F32, 2, (ne2(ne, T, k), ne));
        sl_be_moe_route(t->cpu, &y.c, &w.c, &x.c, k, p[3]);
        sl_be_moe_route(t->gpu, &y.g, &w.g, &x.g, k, p[3]);
        compare(t, c->op, desc, "ids", &y.c, &y.g, -1);
        compare(t, c->op, desc, "weights", &w.c, &w.g, c->tol);
        pair_free(t, &x);
        pair_free(t, &y);
        pair_free(t, &w);
        break;
    }
    case SL_OP_MOE_EXPERTS:
        run_moe_experts(t, c);
        break;
    case SL_OP_GATHER_ROWS: { /* the last token row of each sequence */
        int S = p[0], C = p[2];
        snprintf(desc, sizeof desc, "seqs=%d C=%d %s", S, C, sl_dtype_name(dt));
        int q[16], pre[16], T = 0;
        for (int i = 0; i < S; i++) {
            q[i] = 1 + (p[1] * i) % 7;
            pre[i] = 5;
            T += q[i];
        }
        tb_batch b;
        batch_make(t, &b, S, q, pre, 16, 10);
        pair_rand(t, &x, dt, 2, (ne2(ne, T, C), ne), -1, 1);
        pair_out(t, &y, dt, 2, (ne2(ne, S, C), ne));
        sl_be_gather_rows(t->cpu, &y.c, &x.c, &b.m);
        sl_be_gather_rows(t->gpu, &y.g, &x.g, &b.m);
        compare(t, c->op, desc, "out", &y.c, &y.g, c->tol);
        pair_free(t, &x);
        pair_free(t, &y);
        batch_free(&b);
        break;
    }
    case SL_OP_COPY_SLOTS: {
        int S = p[0], C = p[1], n = p[2];
        snprintf(desc, sizeof desc, "slots=%d row=%d n=%d %s", S, C, n, sl_dtype_name(dt));
        int32_t dst[8], src[8];
        for (int i = 0; i < n; i++) {
            dst[i] = i;
            src[i] = i == n - 1 ? -1 : n + 2 * i; /* the last one zeroes its slot */
        }
        int64_t ne3[3] = {S, 2, C / 2 + 1};
        pair_rand(t, &x, dt, 3, ne3, -1, 1);
        sl_be_copy_slots(t->cpu, &x.c, dst, src, n);
        sl_be_copy_slots(t->gpu, &x.g, dst, src, n);
        compare(t, c->op, desc, "pool", &x.c, &x.g, c->tol);
        pair_free(t, &x);
        break;
    }
    case SL_OP_FILL_RANDOM: {
        int64_t n = p[0];
        float scale = (float)p[1] / 1000.0f, offset = (float)p[2] / 1000.0f;
        snprintf(desc, sizeof desc, "n=%lld scale=%g offset=%g %s", (long long)n, scale, offset,
                 sl_dtype_name(dt));
        pair_out(t, &x, dt, 1, &n);
        /* the CPU side in the GPU dtype too: bit-exact after the same rounding */
        sl_tensor cref;
        sl_err e = {0};
        if (sl_be_alloc(t->cpu, &cref, dt, 1, &n, &e)) die_err("alloc", &e);
        uint64_t seed = sl_rng_mix(t->seed++);
        sl_be_fill_random(t->cpu, &cref, seed, scale, offset);
        sl_be_fill_random(t->gpu, &x.g, seed, scale, offset);
        compare(t, c->op, desc, "t", &cref, &x.g, c->tol);
        sl_be_release(t->cpu, &cref);
        pair_free(t, &x);
        break;
    }
    case SL_OP_SAMPLE: run_sample(t, p[0], p[1], p[2], c->tol, desc, sizeof desc); break;
    default:
        SL_ASSERT(0 && "no runner for this op");
    }
}

/* ---- perf ------------------------------------------------------------------- */


static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

typedef void (*tb_perf_fn)(tb *t, void *ctx, int set);

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
static double time_op(tb *t, tb_perf_fn fn, void *ctx, int n_sets, int reps, double *b2b)
{
    cudaStream_t s = (cudaStream_t)sl_cuda_stream(t->gpu);
    cudaEvent_t ev[2 * 64];
    float ms[64];
    if (reps > 64) reps = 64;
    for (int i = 0; i < 2 * reps; i++) CK(cudaEventCreate(&ev[i]));
    for (int i = 0; i < 3; i++) fn(t, ctx, i % n_sets);
    CK(cudaStreamSynchronize(s));
    atomic_int go = 0;
    CK(cudaLaunchHostFunc(s, hold_stream, &go));
    for (int i = 0; i < reps; i++) {
        CK(cudaEventRecord(ev[2 * i], s));
        fn(t, ctx, i % n_sets);
        CK(cudaEventRecord(ev[2 * i + 1], s));
    }
    atomic_store(&go, 1);
    CK(cudaStreamSynchronize(s));
    for (int i = 0; i < reps; i++) CK(cudaEventElapsedTime(&ms[i], ev[2 * i], ev[2 * i + 1]));
    if (b2b) {
        float all;
        atomic_store(&go, 0);
        CK(cudaLaunchHostFunc(s, hold_stream, &go));
        CK(cudaEventRecord(ev[0], s));
        for (int i = 0; i < reps; i++) fn(t, ctx, i % n_sets);
        CK(cudaEventRecord(ev[1], s));
        atomic_store(&go, 1);
        CK(cudaStreamSynchronize(s));
        CK(cudaEventElapsedTime(&all, ev[0], ev[1]));
        *b2b = all / reps;
    }
    for (int i = 0; i < 2 * reps; i++) cudaEventDestroy(ev[i]);
    qsort(ms, (size_t)reps, sizeof(float), cmp_float);
    return ms[reps / 2];
}

/* Mean ms of one call of fn when n_sets calls (one per set) replay as one
 * CUDA graph, as a captured decode step runs them: no host work between
 * kernels. */
static double time_graph(tb *t, tb_perf_fn fn, void *ctx, int n_sets, int reps)
{
    cudaStream_t s = (cudaStream_t)sl_cuda_stream(t->gpu);
    cudaGraph_t g;
    cudaGraphExec_t ge;
    cudaEvent_t e0, e1;
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < n_sets; i++)
        fn(t, ctx, i);
    CK(cudaStreamEndCapture(s, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    CK(cudaGraphLaunch(ge, s));
    CK(cudaEventRecord(e0, s));
    for (int i = 0; i < reps; i++)
        CK(cudaGraphLaunch(ge, s));
    CK(cudaEventRecord(e1, s));
    CK(cudaEventSynchronize(e1));
    float ms;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaGraphExecDestroy(ge);
    cudaGraphDestroy(g);
    return ms / (reps * n_sets);
}

static double peak_bw, peak_flops;                   /* bytes/s, flop/s */
static const int64_t L2_ROTATE = (int64_t)256 << 20; /* rotate inputs through >= 256 MB */

static sl_tensor gpu_rand(tb *t, sl_dtype dt, int ndim, const int64_t *ne, float scale)
{
    sl_tensor x;
    sl_err e = {0};
    if (sl_be_alloc(t->gpu, &x, dt, ndim, ne, &e)) die_err("alloc", &e);
    sl_be_fill_random(t->gpu, &x, sl_rng_mix(t->seed++), scale, 0.0f);
    return x;
}

/* note: appended to the line (matmul: which kernel ran, and each one forced) */
static void report(const char *op, const char *desc, double ms, double bytes, double flops,
                   const char *note)
{
    double bw = bytes / (ms * 1e-3), fl = flops / (ms * 1e-3);
    double fb = bw / peak_bw, ff = fl / peak_flops;
    printf("PERF %-12s %-46s %9.3f ms %8.1f GB/s (%4.0f%% bw) %7.1f TFLOP/s (%4.0f%% mma) -> %s %.0f%%%s\n",
           op, desc, ms, bw * 1e-9, 100 * fb, fl * 1e-12, 100 * ff, fb > ff ? "bw" : "mma",
           100 * (fb > ff ? fb : ff), note);
}

/* matmul: sets of (w, x, out), so the weight is not served from L2 either */
typedef struct pm_mm {
    sl_tensor w[64], x[64], y[64];
} pm_mm;

static void pf_mm(tb *t, void *ctx, int set)
{
    pm_mm *c = ctx;
    sl_be_matmul(t->gpu, &c->y[set], &c->x[set], &c->w[set]);
}

/* sets: how many (w, x, out) sets to rotate through; 0: enough to exceed 256 MB */
static void perf_matmul(tb *t, const char *name, int M, int N, int K, int sets)
{
    pm_mm c;
    int64_t ne[2];
    int64_t set_bytes = 2 * ((int64_t)M * K + (int64_t)M * N);
    int64_t wb = 2 * (int64_t)N * K;
    int ns = sets ? sets : (int)(L2_ROTATE / (wb + set_bytes) + 1);
    if (ns > 64) ns = 64;
    for (int i = 0; i < ns; i++) {
        c.w[i] = gpu_rand(t, BF, 2, (ne2(ne, N, K), ne), 0.05f);
        c.x[i] = gpu_rand(t, BF, 2, (ne2(ne, M, K), ne), 1.0f);
        c.y[i] = gpu_rand(t, BF, 2, (ne2(ne, M, N), ne), 1.0f);
    }
    double bytes = (double)wb + (double)set_bytes, b2b;
    double ms = time_op(t, pf_mm, &c, ns, 30, &b2b); /* autotuned */
    char desc[96], note[200];
    const char *chosen = sl_cuda_matmul_last(t->gpu);
    snprintf(note, sizeof note, " [%s; b2b %.1f us %.0f%%", chosen, b2b * 1e3,
             100 * bytes / (b2b * 1e-3) / peak_bw);
    if (M <= 16) { /* decode: both kernels forced too */
        static const sl_cuda_mm force[] = {SL_CUDA_MM_GEMV, SL_CUDA_MM_CUBLASLT};
        for (int f = 0; f < 2; f++) {
            sl_cuda_matmul_force(t->gpu, force[f]);
            double mf = time_op(t, pf_mm, &c, ns, 30, &b2b);
            size_t n = strlen(note);
            snprintf(note + n, sizeof note - n, "; %s %.1f us %.0f%% b2b %.1f us %.0f%%",
                     f ? "cublaslt" : "gemv", mf * 1e3, 100 * bytes / (mf * 1e-3) / peak_bw,
                     b2b * 1e3, 100 * bytes / (b2b * 1e-3) / peak_bw);
        }
        sl_cuda_matmul_force(t->gpu, SL_CUDA_MM_AUTO);
    }
    strcat(note, "]");
    snprintf(desc, sizeof desc, "%s M=%d N=%d K=%d%s", name, M, N, K, sets ? " 1 set" : "");
    report("matmul", desc, ms, bytes, 2.0 * M * N * K, note);
    for (int i = 0; i < ns; i++) {
        sl_be_release(t->gpu, &c.w[i]);
        sl_be_release(t->gpu, &c.x[i]);
        sl_be_release(t->gpu, &c.y[i]);
    }
}

/* attention: one cache, sets of q/out */
typedef struct pm_attn {
    sl_tensor kc, vc, q[16], y[16];
    tb_batch b;
    int Hq, Hkv, D;
} pm_attn;

static void pf_attn(tb *t, void *ctx, int set)
{
    pm_attn *c = ctx;
    sl_be_attention(t->gpu, &c->y[set], &c->q[set], &c->kc, &c->vc, c->Hq, c->Hkv, c->D,
                    0.088f, &c->b.m);
}

static void perf_attention(tb *t, const char *name, int S, int qlen, int ctx, int P, int Hq,
                           int Hkv, int D)
{
    pm_attn c;
    int q[256], pre[256], T = 0;
    double kv_tokens = 0, flops = 0;
    for (int s = 0; s < S; s++) {
        q[s] = qlen;
        pre[s] = ctx - qlen;
        T += qlen;
        kv_tokens += ctx;
        for (int i = 0; i < qlen; i++) flops += 4.0 * (pre[s] + i + 1) * D * Hq;
    }
    batch_make(t, &c.b, S, q, pre, P, 10);
    int64_t ne[2];
    int64_t rows = (int64_t)c.b.n_pages * P;
    c.kc = gpu_rand(t, BF, 2, (ne2(ne, rows, (int64_t)Hkv * D), ne), 1.0f);
    c.vc = gpu_rand(t, BF, 2, (ne2(ne, rows, (int64_t)Hkv * D), ne), 1.0f);
    int ns = 4;
    for (int i = 0; i < ns; i++) {
        c.q[i] = gpu_rand(t, BF, 2, (ne2(ne, T, (int64_t)Hq * D), ne), 1.0f);
        c.y[i] = gpu_rand(t, BF, 2, (ne2(ne, T, (int64_t)Hq * D), ne), 1.0f);
    }
    c.Hq = Hq;
    c.Hkv = Hkv;
    c.D = D;
    double ms = time_op(t, pf_attn, &c, ns, 20, NULL);
    double bytes = kv_tokens * Hkv * D * 2 * 2 + 2.0 * 2 * T * Hq * D;
    char desc[96];
    snprintf(desc, sizeof desc, "%s S=%d q=%d ctx=%d page=%d", name, S, qlen, ctx, P);
    report("attention", desc, ms, bytes, flops, "");
    sl_be_release(t->gpu, &c.kc);
    sl_be_release(t->gpu, &c.vc);
    for (int i = 0; i < ns; i++) {
        sl_be_release(t->gpu, &c.q[i]);
        sl_be_release(t->gpu, &c.y[i]);
    }
    batch_free(&c.b);
}

/* sample at V = 151936 (Qwen3): R rows, one parameter mix for all of them; median of 30 calls
 * timed with events, logits rotated through more than the L2. */
#define SAMPLE_SETS 8
static void perf_sample(tb *t, int R)
{
    enum { V = 151936, REPS = 30 };
    const int reps = REPS;
    static const struct { const char *n; float temp, top_p, min_p; int top_k, logprobs; } mix[] = {
        {"temperature 0.8", 0.8f, 1.0f, 0.0f, 0, 0},
        {"top-k 50 top-p 0.9", 0.8f, 0.9f, 0.0f, 50, 0},
        {"top-p 0.95", 1.0f, 0.95f, 0.0f, 0, 0},
        {"min-p 0.05 + logprobs 20", 1.0f, 1.0f, 0.05f, 0, 1},
        {"greedy + penalties 64/row", 0.0f, 1.0f, 0.0f, 0, 0},
    };
    enum { NPEN = 64 };
    sl_tensor lg[SAMPLE_SETS], ids, lp;
    sl_sample_row *rows = malloc(sizeof *rows * (size_t)R);
    int32_t *ptok = malloc(sizeof(int32_t) * (size_t)R * NPEN), *pcnt = malloc(sizeof(int32_t) * (size_t)R * NPEN);
    int64_t ne[2];
    int ns = (int)(L2_ROTATE / ((int64_t)R * V * 4) + 1);
    if (ns > SAMPLE_SETS) ns = SAMPLE_SETS;
    for (int i = 0; i < ns; i++) lg[i] = gpu_rand(t, F32, 2, (ne2(ne, R, V), ne), 8.0f);
    ids = gpu_rand(t, SL_DTYPE_I32, 1, (ne[0] = R, ne), 0.0f);
    lp = gpu_rand(t, F32, 2, (ne2(ne, R, 2 + 2 * SL_SAMPLE_MAX_TOP), ne), 0.0f);
    for (int i = 0; i < R * NPEN; i++) {
        ptok[i] = (int32_t)((i * 7919) % V);
        pcnt[i] = 1 + i % 3;
    }
    cudaStream_t s = (cudaStream_t)sl_cuda_stream(t->gpu);
    cudaEvent_t ev[2 * REPS];
    float ms[REPS];
    for (int i = 0; i < 2 * reps; i++) CK(cudaEventCreate(&ev[i]));
    for (size_t m = 0; m < sizeof mix / sizeof mix[0]; m++) {
        int pen = mix[m].temp <= 0.0f;
        for (int r = 0; r < R; r++)
            rows[r] = (sl_sample_row){.temperature = mix[m].temp,
                                      .top_k = mix[m].top_k,
                                      .top_p = mix[m].top_p,
                                      .min_p = mix[m].min_p,
                                      .repetition_penalty = pen ? 1.2f : 1.0f,
                                      .frequency_penalty = pen ? 0.5f : 0.0f,
                                      .u = sl_rng_uniform(t->seed, (uint64_t)r),
                                      .logprobs = mix[m].logprobs,
                                      .n_top = mix[m].logprobs ? 20 : 0,
                                      .pen_start = r * NPEN,
                                      .pen_n = pen ? NPEN : 0,
                                      .pending = -1};
        sl_sample_args a = {R, rows, R * NPEN, ptok, pcnt, pcnt, NULL};
        for (int i = 0; i < 3; i++) sl_be_sample(t->gpu, &ids, &lp, &lg[i % ns], &a);
        for (int i = 0; i < reps; i++) {
            CK(cudaEventRecord(ev[2 * i], s));
            sl_be_sample(t->gpu, &ids, &lp, &lg[i % ns], &a);
            CK(cudaEventRecord(ev[2 * i + 1], s));
        }
        CK(cudaStreamSynchronize(s));
        for (int i = 0; i < reps; i++) CK(cudaEventElapsedTime(&ms[i], ev[2 * i], ev[2 * i + 1]));
        qsort(ms, (size_t)reps, sizeof(float), cmp_float);
        printf("PERF sample       R=%-3d V=%d %-28s %9.1f us per call\n", R, V, mix[m].n, ms[reps / 2] * 1e3);
    }
    for (int i = 0; i < 2 * reps; i++) cudaEventDestroy(ev[i]);
    for (int i = 0; i < ns; i++) sl_be_release(t->gpu, &lg[i]);
    sl_be_release(t->gpu, &ids);
    sl_be_release(t->gpu, &lp);
    free(rows);
    free(ptok);
    free(pcnt);
}

/* row-wise ops on [M, N] bf16: sets of inputs */
typedef struct pm_row {
    sl_op op;
    sl_tensor x[64], y[64], r[64], w;
} pm_row;

static void pf_row(tb *t, void *ctx, int set)
{
    pm_row *c = ctx;
    switch (c->op) {
    case SL_OP_RMSNORM: sl_be_rmsnorm(t->gpu, &c->y[set], &c->x[set], &c->w, 1e-6f, 0); break;
    case SL_OP_ADD_RMSNORM:
        sl_be_add_rmsnorm(t->gpu, &c->y[set], &c->r[set], &c->x[set], &c->w, 1e-6f, 0);
        break;
    default: sl_be_silu_mul(t->gpu, &c->y[set], &c->x[set]); break;
    }
}

static void perf_row(tb *t, sl_op op, int M, int N)
{
    pm_row c;
    c.op = op;
    int64_t ne[2];
    int xin = op == SL_OP_SILU_MUL ? 2 * N : N;
    c.w = gpu_rand(t, BF, 1, (ne[0] = N, ne), 1.0f);
    int64_t set_bytes = 2 * ((int64_t)M * xin + (int64_t)M * N) * (op == SL_OP_ADD_RMSNORM ? 2 : 1);
    int ns = (int)(L2_ROTATE / set_bytes + 1);
    if (ns > 64) ns = 64;
    for (int i = 0; i < ns; i++) {
        c.x[i] = gpu_rand(t, BF, 2, (ne2(ne, M, xin), ne), 1.0f);
        c.y[i] = gpu_rand(t, BF, 2, (ne2(ne, M, N), ne), 1.0f);
        if (op == SL_OP_ADD_RMSNORM) c.r[i] = gpu_rand(t, BF, 2, (ne2(ne, M, N), ne), 1.0f);
    }
    double ms = time_op(t, pf_row, &c, ns, 30, NULL);
    /* add_rmsnorm: x, resid read; resid, out written */
    double bytes = op == SL_OP_ADD_RMSNORM ? 2.0 * M * N * 4 : 2.0 * ((double)M * xin + (double)M * N);
    char desc[96];
    snprintf(desc, sizeof desc, "M=%d N=%d bf16", M, N);
    report(sl_op_name(op), desc, ms, bytes, 0, "");
    sl_be_release(t->gpu, &c.w);
    for (int i = 0; i < ns; i++) {
        sl_be_release(t->gpu, &c.x[i]);
        sl_be_release(t->gpu, &c.y[i]);
        if (op == SL_OP_ADD_RMSNORM) sl_be_release(t->gpu, &c.r[i]);
    }
}

/* MoE experts at Qwen3-30B-A3B and Qwen3-Coder-Next shapes; bytes count the distinct
 * active experts' weights (what a decode step must stream) plus x and out */
#define MOE_SETS 8
typedef struct pm_moe {
    sl_tensor x, ids[MOE_SETS], wt, gu, dn, y;
} pm_moe;

static void pf_moe(tb *t, void *ctx, int set)
{
    pm_moe *c = ctx;
    sl_be_moe_experts(t->gpu, &c->y, &c->x, &c->ids[set], &c->wt, &c->gu, &c->dn);
}

static void perf_moe(tb *t, const char *name, int T, int H, int I, int E, int k)
{
    pm_moe c;
    int64_t ne[3] = {E, 2 * (int64_t)I, H};
    c.gu = gpu_rand(t, BF, 3, ne, 0.05f);
    ne[1] = H;
    ne[2] = I;
    c.dn = gpu_rand(t, BF, 3, ne, 0.05f);
    c.x = gpu_rand(t, BF, 2, (ne2(ne, T, H), ne), 1.0f);
    c.y = gpu_rand(t, BF, 2, (ne2(ne, T, H), ne), 1.0f);
    int32_t *iv = malloc(sizeof(int32_t) * (size_t)(T * k));
    float *wv = malloc(sizeof(float) * (size_t)(T * k));
    int *used = calloc((size_t)E, sizeof(int));
    sl_err e = {0};
    int active = 0; /* distinct experts of set 0 (all sets alike) */
    for (int st = 0; st < MOE_SETS; st++) {
        for (int i = 0; i < T; i++)
            for (int j = 0; j < k; j++) {
                unsigned v = (unsigned)(i * 7919 + j * (E / k) + i / 3 + st * 13) % (unsigned)E;
                iv[i * k + j] = (int32_t)v;
                wv[i * k + j] = 1.0f / (float)k;
                if (st == 0 && !used[v]++) active++;
            }
        if (sl_be_alloc(t->gpu, &c.ids[st], SL_DTYPE_I32, 2, (ne2(ne, T, k), ne), &e) ||
            sl_be_upload(t->gpu, &c.ids[st], iv, SL_DTYPE_I32, &e))
            die_err("moe perf", &e);
    }
    if (sl_be_alloc(t->gpu, &c.wt, F32, 2, (ne2(ne, T, k), ne), &e) ||
        sl_be_upload(t->gpu, &c.wt, wv, F32, &e))
        die_err("moe perf", &e);
    double ms = time_op(t, pf_moe, &c, MOE_SETS, 24, NULL);
    double bytes = (double)active * 3.0 * I * H * 2 + 2.0 * T * H * 2;
    double flops = 2.0 * T * k * 3.0 * I * H;
    char desc[96];
    snprintf(desc, sizeof desc, "%s T=%d E=%d k=%d I=%d (%d active)", name, T, E, k, I, active);
    report("moe_experts", desc, ms, bytes, flops, "");
    if (T <= 128) { /* decode sizes: also as a captured graph replays them */
        ms = time_graph(t, pf_moe, &c, MOE_SETS, 10);
        snprintf(desc, sizeof desc, "%s T=%d graph", name, T);
        report("moe_experts", desc, ms, bytes, flops, "");
    }
    free(iv);
    free(wv);
    free(used);
    sl_be_release(t->gpu, &c.x);
    sl_be_release(t->gpu, &c.y);
    for (int st = 0; st < MOE_SETS; st++) sl_be_release(t->gpu, &c.ids[st]);
    sl_be_release(t->gpu, &c.wt);
    sl_be_release(t->gpu, &c.gu);
    sl_be_release(t->gpu, &c.dn);
}

static void measure_peaks(tb *t)
{
    cudaStream_t s = (cudaStream_t)sl_cuda_stream(t->gpu);
    size_t n = (size_t)2 << 30;
    void *a, *b;
    CK(cudaMalloc(&a, n));
    CK(cudaMalloc(&b, n));
    CK(cudaMemsetAsync(a, 1, n, s));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    float best = 1e30f;
    for (int i = 0; i < 6; i++) {
        float ms;
        CK(cudaEventRecord(e0, s));
        CK(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice, s));
        CK(cudaEventRecord(e1, s));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&ms, e0, e1));
        if (i > 0 && ms < best) best = ms;
    }
    peak_bw = 2.0 * (double)n / (best * 1e-3);
    CK(cudaFree(a));
    CK(cudaFree(b));
    pm_mm c;
    int64_t ne[2];
    int N = 8192;
    c.w[0] = gpu_rand(t, BF, 2, (ne2(ne, N, N), ne), 0.05f);
    c.x[0] = gpu_rand(t, BF, 2, (ne2(ne, N, N), ne), 1.0f);
    c.y[0] = gpu_rand(t, BF, 2, (ne2(ne, N, N), ne), 1.0f);
    double ms = time_op(t, pf_mm, &c, 1, 10, NULL);
    peak_flops = 2.0 * N * (double)N * N / (ms * 1e-3);
    sl_be_release(t->gpu, &c.w[0]);
    sl_be_release(t->gpu, &c.x[0]);
    sl_be_release(t->gpu, &c.y[0]);
    printf("PEAK copy %.0f GB/s (2 GiB D2D, read+write); bf16 GEMM %.1f TFLOP/s (8192^3 cuBLASLt, random)\n",
           peak_bw * 1e-9, peak_flops * 1e-12);
}

/* Whether the perf group of op runs under --filter. */
static int perf_on(const char *filter, sl_op op)
{
    return !filter || !strcmp(filter, sl_op_name(op));
}

static void run_perf(tb *t, const char *filter)
{
    measure_peaks(t);
    /* Qwen3-8B: H=4096, Hq=32, Hkv=8, D=128, I=12288, vocab 151936; Qwen3-30B-A3B attention:
     * H=2048, Hq=32, Hkv=4, D=128. Prefill sizes (M = 64, 4096) only where they were timed before. */
    const struct { const char *n; int N, K, prefill; } ws[] = {
        {"8B qkv", (32 + 2 * 8) * 128, 4096, 1},
        {"8B o", 4096, 32 * 128, 1},
        {"8B gate_up", 2 * 12288, 4096, 1},
        {"8B down", 4096, 12288, 1},
        {"8B lm_head", 151936, 4096, 0},
        {"30B qkv", (32 + 2 * 4) * 128, 2048, 0},
        {"30B o", 2048, 32 * 128, 0},
    };
    int Ms[] = {1, 2, 4, 8, 16, 64, 4096};
    if (perf_on(filter, SL_OP_MATMUL)) {
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++)
            for (size_t j = 0; j < sizeof Ms / sizeof Ms[0]; j++)
                if (Ms[j] <= 16 || ws[i].prefill)
                    perf_matmul(t, ws[i].n, Ms[j], ws[i].N, ws[i].K, 0);
        /* where the fixed cost per call goes: launch + events (a tiny GEMV), and
         * the same weights every call (pages already mapped) against a fresh set */
        perf_matmul(t, "tiny", 1, 64, 256, 0);
        perf_matmul(t, "8B down", 1, 4096, 12288, 1);
    }
    if (perf_on(filter, SL_OP_ATTENTION)) {
        perf_attention(t, "8B decode", 32, 1, 4096, 16, 32, 8, 128);
        perf_attention(t, "8B decode", 8, 1, 16384, 16, 32, 8, 128);
        perf_attention(t, "8B decode", 128, 1, 1024, 64, 32, 8, 128);
        perf_attention(t, "30B decode", 32, 1, 4096, 16, 32, 4, 128);
        perf_attention(t, "8B prefill", 1, 4096, 4096, 16, 32, 8, 128);
        perf_attention(t, "8B prefill", 4, 1024, 1024, 16, 32, 8, 128);
        perf_attention(t, "next decode", 32, 1, 4096, 16, 16, 2, 256);
    }
    if (perf_on(filter, SL_OP_RMSNORM)) perf_row(t, SL_OP_RMSNORM, 4096, 4096);
    if (perf_on(filter, SL_OP_ADD_RMSNORM)) perf_row(t, SL_OP_ADD_RMSNORM, 4096, 4096);
    if (perf_on(filter, SL_OP_SILU_MUL)) perf_row(t, SL_OP_SILU_MUL, 4096, 12288);
    if (perf_on(filter, SL_OP_RMSNORM)) perf_row(t, SL_OP_RMSNORM, 64, 4096);
    if (perf_on(filter, SL_OP_MOE_EXPERTS)) {
        /* 1-128 tokens: the few-token path (T*k <= MOE_GV_MAX_PAIRS in moe.cu) and its
         * threshold; 4096: the grouped GEMM */
        int moe_T[] = {1, 8, 64, 128};
        for (size_t i = 0; i < sizeof moe_T / sizeof moe_T[0]; i++) {
            perf_moe(t, "30B-A3B", moe_T[i], 2048, 768, 128, 8);
            perf_moe(t, "Coder-Next", moe_T[i], 2048, 512, 512, 10);
        }
        perf_moe(t, "30B-A3B", 4096, 2048, 768, 128, 8);
    }
    if (perf_on(filter, SL_OP_SAMPLE)) {
        perf_sample(t, 1);
        perf_sample(t, 64);
    }
}

int main(int argc, char **argv)
{
    tb t;
    memset(&t, 0, sizeof t);
    int perf = 0;
    const char *filter = NULL;
    t.seed = (uint64_t)time(NULL);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--perf")) perf = 1;
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc) t.seed = strtoull(argv[++i], NULL, 0);
        else if (!strcmp(argv[i], "--filter") && i + 1 < argc) filter = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--seed N] [--perf] [--filter OP]\n", argv[0]);
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
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const tb_case *c = &cases[i];
        if (filter && strcmp(filter, sl_op_name(c->op))) continue;
        t.cases[c->op]++;
        if (!sl_be_supports_op(t.gpu, c->op)) continue;
        run_case(&t, c);
        if (sl_be_sync(t.gpu, &e)) die_err("after case", &e);
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

/* tests/gpu/ops/harness.h: the op-by-op check of the CUDA backend against the
 * CPU reference (the way llama.cpp's test-backend-ops checks a backend), shared
 * by the op families' files (ops_*.c); harness.c has main and describes the
 * command line.
 *
 * A family file holds a table of cases {op, dtype, shape, tolerance}, a
 * runner that draws seeded inputs with tb_pair_rand, runs the op on both
 * backends and checks each output with tb_compare, and optionally a --perf
 * function; it exports them as one tb_family, listed in harness.c.
 */
#ifndef SL_TEST_OPS_HARNESS_H
#define SL_TEST_OPS_HARNESS_H

#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "backend.h"
#include "cuda/cuda_backend.h"
#include "sl_rng.h"
#define SL_TEST_SHARED /* the families' CHECKs count with the harness's */
#include "sl_test.h"

typedef struct tb {
    sl_backend *cpu, *gpu;
    uint64_t seed;
    int n_pass, n_fail;
    int cases[SL_OP_COUNT];
    double peak_bw, peak_flops; /* --perf: bytes/s, bf16 flop/s measured at start */
    double peak_fp8;            /* --perf: e4m3 GEMM flop/s (0: cuBLASLt has none) */
    int max_tokens;             /* --perf --max-tokens: the largest M / T a group times */
    int min_tokens;             /* --perf --min-tokens: the smallest */
} tb;

/* The same tensor on both backends: CPU always F32 (or I32), GPU as asked. */
typedef struct tb_pair {
    sl_tensor c, g;
} tb_pair;

typedef struct tb_case {
    sl_op op;
    sl_dtype dt;   /* GPU dtype of the op's activations / outputs */
    int p[9];      /* op-specific shape, see the family's runner */
    double tol;    /* max rel L2; < 0: exact */
} tb_case;

#define BF SL_DTYPE_BF16
#define F32 SL_DTYPE_F32

/* An op family: its cases, their runner and its --perf timings (NULL: none;
 * it runs its groups that --filter selects, see tb_perf_on). */
typedef struct tb_family {
    const tb_case *cases;
    size_t n_cases;
    void (*run)(tb *t, const tb_case *c);
    void (*perf)(tb *t, const char *filter);
} tb_family;

extern const tb_family tb_family_matmul, tb_family_attention, tb_family_norm, tb_family_moe,
    tb_family_gdn, tb_family_misc, tb_family_sample, tb_family_fp8;

#define TB_CK(call)                                                                                   \
    do {                                                                                           \
        cudaError_t err_ = (call);                                                                 \
        if (err_ != cudaSuccess) {                                                                 \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,                        \
                    cudaGetErrorString(err_));                                                     \
            abort();                                                                               \
        }                                                                                          \
    } while (0)


float tb_bf16_round(float f);
void tb_die(const char *what, sl_err *e);
void tb_pair_alloc(tb *t, tb_pair *p, sl_dtype gdt, int ndim, const int64_t *ne);
void tb_pair_free(tb *t, tb_pair *p);
/* Uploads host f32 values (already representable in the GPU dtype) to both. */
void tb_pair_set(tb *t, tb_pair *p, const float *v);
/* Uniform in [lo, hi), rounded to the GPU dtype; a fresh stream per call. */
void tb_pair_rand(tb *t, tb_pair *p, sl_dtype gdt, int ndim, const int64_t *ne, float lo, float hi);
/* g (a GPU tensor) filled with NaN, or INT32_MIN for ids: an element an op
 * never writes fails its comparison. */
void tb_poison(tb *t, sl_tensor *g);
/* An output: the GPU side poisoned (NaN, or INT32_MIN for ids). */
void tb_pair_out(tb *t, tb_pair *p, sl_dtype gdt, int ndim, const int64_t *ne);
/* x's elements as f32 (ids converted); the caller frees. */
float *tb_download(sl_backend *be, const sl_tensor *x);
/* Compares one output; tol < 0 asks for exact equality. */
void tb_compare(tb *t, sl_op op, const char *desc, const char *what, const sl_tensor *c,
                const sl_tensor *g, double tol);
/* The same device tensor downloaded twice must match bit for bit. */
void tb_compare_exact(tb *t, sl_op op, const char *desc, const char *what, const sl_tensor *a,
                      const sl_tensor *b);
/* q (sl_fp8_act, made for y [M, K], K whole 128-groups) against the quantization of y's
 * stored values by the CPU op's rule, bit for bit: one check. Scales token-major, past 8
 * rows (SL_CUDA_FP8_ACT=2) in the CUDA backend's cuBLASLt layout (fp8.cuh cu_fp8_sidx). */
void tb_check_codes(tb *t, const char *desc, const sl_tensor *y, const sl_fp8_act *q);
/* SL_CUDA_FP8_ACT as the CUDA backend reads it: 0 no codes, 1 (unset) up to 8 rows, 2 up
 * to sl_be_fp8_act_rows. */
int tb_fp8_act_level(void);
/* ne[0] = a, ne[1] = b; returns a * b. */
int64_t tb_ne2(int64_t *ne, int64_t a, int64_t b);

/* ---- batch metadata --------------------------------------------------------- */

typedef struct tb_batch {
    sl_batch_meta m;
    int32_t *ids, *pos, *q_start, *kv_len, *pages, *kv_slot, *state_slot, *state_fresh,
        *track_slot, *track_len, *logit_rows;
    int n_pages;
} tb_batch;

/* n_seqs sequences: seq s has q_len[s] new tokens after prefix[s] cached ones;
 * pages are a random permutation, so the page table is really followed. */
void tb_batch_make(tb *t, tb_batch *b, int n_seqs, const int *q_len, const int *prefix,
                   int page_size, int vocab);
/* Hybrid-model state handling: seq s % 3 == 1 starts fresh, even seqs write
 * a snapshot after about half their tokens into slot n_seqs + s. */
void tb_batch_hybrid(tb *t, tb_batch *b);
void tb_batch_free(tb_batch *b);

/* ---- perf ------------------------------------------------------------------- */

#define TB_L2_ROTATE ((int64_t)256 << 20) /* rotate inputs through >= 256 MB */

typedef void (*tb_perf_fn)(tb *t, void *ctx, int set);

/* Whether the perf group of op runs under --filter. */
int tb_perf_on(const char *filter, sl_op op);
int tb_cmp_float(const void *a, const void *b);
/* Median ms of one call of fn over reps (see harness.c); b2b (may be NULL): the
 * mean ms per call queued back to back. */
double tb_time_op(tb *t, tb_perf_fn fn, void *ctx, int n_sets, int reps, double *b2b);
/* Mean ms of one call of fn when n_sets calls replay as one CUDA graph. */
double tb_time_graph(tb *t, tb_perf_fn fn, void *ctx, int n_sets, int reps);
/* A GPU tensor filled with random values. */
sl_tensor tb_gpu_rand(tb *t, sl_dtype dt, int ndim, const int64_t *ne, float scale);
/* Routing of the n_sets perf sets on the GPU: ids[st] [T, k] sends T tokens to
 * k of E experts each (distinct within a token, a spread that shifts with st);
 * shared: the last column is expert E-1 for every token, as the model's fused
 * shared expert (the spread covers the other E-1). wt [T, k] weighs them 1/k;
 * returns how many distinct experts set 0 hits (every set alike). */
int tb_moe_perf_ids(tb *t, int T, int k, int E, int shared, sl_tensor *ids, int n_sets, sl_tensor *wt);
/* One PERF line: achieved GB/s and TFLOP/s against the measured peaks; note is
 * appended to the line. */
void tb_report(tb *t, const char *op, const char *desc, double ms, double bytes, double flops,
               const char *note);

#endif

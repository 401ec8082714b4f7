// kernels/cuda/matmul.cu: out = x · wᵀ through cuBLASLt. Row-major [M,K] data
// is column-major [K,M], so the product is computed as outᵀ[N,M] = w[K,N]ᵀ ·
// xᵀ[K,M] in cuBLAS's column-major terms: A = w (transposed), B = x.
// A plan (descriptors + the heuristic's algorithm) is cached per shape, dtype,
// leading dimensions and pointer alignment: the heuristic query costs more
// than a decode GEMV. For decode shapes the hand-written tensor-core GEMV
// (gemv.cu) is one more candidate.
// FP8 (cu_matmul_fp8_plan/run, called by fp8.cu): e4m3 operands with fp32
// block scales, cuBLAS >= 12.9 on Hopper: x with one scale per 128 K values
// of every row (VEC128_32F), the weight with the checkpoint's 128×128 blocks
// as stored (BLK128x128_32F) or, for per-row scales, VEC128_32F too. The
// product is Σ_g (x_q·w_q)_g · s_x · s_w with fp32 promotion per group, the
// CPU oracle's arithmetic. A shape cuBLASLt has no algorithm for is
// remembered as such and fp8.cu runs its own kernels.
#include <string.h>

#include "gemv.cuh"
#include "matmul.cuh"
// after cuda_common.cuh, which declares backend.h extern "C"
#include "cuda_backend.h"

#define CU_MM_CACHE 64
#define CU_MM_CANDIDATES 16
// The heuristic's first choice is not always the fastest (small-N decode
// GEMVs especially): on a plan's first use outside graph capture, its top
// candidates (and cu_gemv where it applies) run on the real operands and the
// fastest is kept (unless SL_CUDA_MM_TUNE=0: timing makes the choice, and so
// the rounding, differ between processes).
// Up to CU_MM_EXACT_M rows (decode batches: graph buckets, a bounded set) a
// plan is per exact M and tuned. Above (prefill chunks: every prompt length a
// new M) one plan serves a power-of-two bucket of M: the heuristic's first
// choice for the bucket's top M, no timing (a timing synchronizes and runs
// the GEMM ~50 times: per new prompt length that was a TTFT spike, and 64
// cached plans thrashed under varied lengths), its x and out layouts resized
// to each call's M (cu_mm_plan.m).
#define CU_MM_EXACT_M 64

typedef struct cu_mm_key {
    int64_t M, N, K, ldx, ldw, ldo;
    int in_dt, out_dt;
    int align; // min alignment (bytes) of the three pointers, capped at 256
    int w_blk; // FP8: the weight's scales per 128×128 block (else per row)
} cu_mm_key;

struct cu_mm_plan {
    cu_mm_key key;
    int used;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo; // the fastest cuBLASLt candidate
    int gemv;                  // cu_gemv beat it
    int n_cand; // heuristic candidates still to be timed (0: tuned, -1: FP8 shape unsupported)
    int64_t m;  // the M its x and out layouts hold now (key.M: the bucket's top above CU_MM_EXACT_M)
    cublasLtMatmulHeuristicResult_t cand[CU_MM_CANDIDATES];
};

struct cu_matmul_cache {
    cu_mm_plan p[CU_MM_CACHE];
    int next; // round-robin victim
};

static void plan_destroy(cu_mm_plan *p)
{
    if (!p->used) return;
    cublasLtMatmulDescDestroy(p->desc);
    cublasLtMatrixLayoutDestroy(p->a);
    cublasLtMatrixLayoutDestroy(p->b);
    cublasLtMatrixLayoutDestroy(p->c);
    p->used = 0;
}

void cu_matmul_free(cu_backend *b)
{
    if (!b->mm_cache) return;
    for (int i = 0; i < CU_MM_CACHE; i++) plan_destroy(&b->mm_cache->p[i]);
    free(b->mm_cache);
    b->mm_cache = NULL;
}

static cudaDataType_t cu_dt(int dt)
{
    switch (dt) {
    case SL_DTYPE_BF16: return CUDA_R_16BF;
    case SL_DTYPE_F16: return CUDA_R_16F;
    case SL_DTYPE_F8E4M3: return CUDA_R_8F_E4M3;
    default: return CUDA_R_32F;
    }
}

static int ptr_align(const void *p)
{
    uintptr_t u = (uintptr_t)p;
    int a = 1;
    while (a < 256 && !(u & (uintptr_t)a)) a <<= 1;
    return a;
}

static void plan_query(cu_backend *b, cu_mm_plan *p);

static cu_mm_plan *plan_get(cu_backend *b, const cu_mm_key *k)
{
    if (!b->mm_cache) {
        b->mm_cache = (cu_matmul_cache *)calloc(1, sizeof(cu_matmul_cache));
        SL_ASSERT(b->mm_cache);
    }
    cu_matmul_cache *c = b->mm_cache;
    for (int i = 0; i < CU_MM_CACHE; i++)
        if (c->p[i].used && !memcmp(&c->p[i].key, k, sizeof *k)) return &c->p[i];
    cu_mm_plan *p = &c->p[c->next];
    c->next = (c->next + 1) % CU_MM_CACHE;
    plan_destroy(p);
    p->key = *k;
    cudaDataType_t in = cu_dt(k->in_dt), out = cu_dt(k->out_dt);
    cublasComputeType_t ct = CUBLAS_COMPUTE_32F; // fp32 accumulate, no TF32 shortcut
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->desc, ct, CUDA_R_32F));
    cublasOperation_t opT = CUBLAS_OP_T, opN = CUBLAS_OP_N;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &opT, sizeof opT));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &opN, sizeof opN));
    int fp8 = k->in_dt == SL_DTYPE_F8E4M3;
    if (fp8) {
        int32_t vec = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F, blk = CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
        int32_t *wm = k->w_blk ? &blk : &vec;
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, wm, sizeof *wm));
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &vec, sizeof vec));
        // the heuristic finds nothing while the scale pointers are unset; each
        // run sets its own (the workspace stands in: aligned, never read here)
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &b->lt_ws,
                                                    sizeof b->lt_ws));
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &b->lt_ws,
                                                    sizeof b->lt_ws));
    }
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->a, in, (uint64_t)k->K, (uint64_t)k->N, k->ldw));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->b, in, (uint64_t)k->K, (uint64_t)k->M, k->ldx));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->c, out, (uint64_t)k->N, (uint64_t)k->M, k->ldo));
    p->m = k->M;
    plan_query(b, p);
    p->gemv = 0;
    p->used = 1;
    return p;
}

// The heuristic's candidates for p's descriptors as they are now (its
// layouts' M); p->algo its first. An FP8 plan without any: n_cand = -1.
static void plan_query(cu_backend *b, cu_mm_plan *p)
{
    const cu_mm_key *k = &p->key;
    int fp8 = k->in_dt == SL_DTYPE_F8E4M3;
    cublasLtMatmulPreference_t pref;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    uint64_t ws = b->lt_ws_bytes;
    uint32_t al = (uint32_t)k->align;
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al, sizeof al));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al, sizeof al));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al, sizeof al));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al, sizeof al));
    int found = 0;
    cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(b->lt, p->desc, p->a, p->b, p->c, p->c, pref,
                                                       CU_MM_CANDIDATES, p->cand, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (!fp8) CUBLAS_CHECK(st);
    if (!found && !fp8) cu_fail("cublasLtMatmulAlgoGetHeuristic", "no algorithm for this matmul", __FILE__, __LINE__);
    p->n_cand = st == CUBLAS_STATUS_SUCCESS && found ? found : -1;
    p->algo = p->cand[0].algo;
}

// p's x and out layouts set to M rows (bucketed plans: each call's own M).
static void plan_resize(cu_mm_plan *p, int64_t M)
{
    if (p->m == M) return;
    uint64_t cols = (uint64_t)M;
    CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(p->b, CUBLASLT_MATRIX_LAYOUT_COLS, &cols, sizeof cols));
    CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(p->c, CUBLASLT_MATRIX_LAYOUT_COLS, &cols, sizeof cols));
    p->m = M;
}

static cublasStatus_t lt_run(cu_backend *b, cu_mm_plan *p, const cublasLtMatmulAlgo_t *algo,
                             cu_mat O, cu_mat X, cu_mat W)
{
    float one = 1.0f, zero = 0.0f;
    if (b->prof) cu_prof_begin(b);
    cublasStatus_t st = cublasLtMatmul(b->lt, p->desc, &one, W.p, p->a, X.p, p->b, &zero, O.p, p->c, O.p,
                                       p->c, algo, b->lt_ws, b->lt_ws_bytes, b->stream);
    if (b->prof) cu_prof_end(b, NULL, p->key.in_dt == SL_DTYPE_F8E4M3 ? "cublasLtMatmul fp8" : "cublasLtMatmul");
    return st;
}

// Runs the plan's algorithm at X's M. A bucketed plan whose algorithm this M
// does not take asks the heuristic again for the M at hand.
static cublasStatus_t lt_run_m(cu_backend *b, cu_mm_plan *p, cu_mat O, cu_mat X, cu_mat W)
{
    plan_resize(p, X.rows);
    cublasStatus_t st = lt_run(b, p, &p->algo, O, X, W);
    if (st != CUBLAS_STATUS_SUCCESS && p->key.M > CU_MM_EXACT_M) {
        plan_query(b, p);
        if (p->n_cand < 0) return st;
        st = lt_run(b, p, &p->algo, O, X, W);
    }
    return st;
}

// Times each candidate (cuBLASLt's, then cu_gemv if gemv_ok) on the real
// operands and keeps the fastest. Each timed run follows a 64 MB memset of
// the workspace: the weights come from HBM as in a decode step (not from L2,
// where the warm-up run left them), and the GPU is busy while this thread
// enqueues the run, so the events time the kernel and not the launch rate.
// Synchronizes.
static void plan_tune(cu_backend *b, cu_mm_plan *p, cu_mat O, cu_mat X, cu_mat W, int gemv_ok)
{
    cudaEvent_t e0, e1;
    CU_CHECK(cudaEventCreate(&e0));
    CU_CHECK(cudaEventCreate(&e1));
    float best = 1e30f, best_lt = 1e30f;
    for (int c = 0; c < p->n_cand + gemv_ok; c++) {
        float ms = 0.0f;
        for (int rep = 0; rep < 3; rep++) { // the first run warms up
            cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
            CU_CHECK(cudaMemsetAsync(b->lt_ws, rep, b->lt_ws_bytes, b->stream));
            CU_CHECK(cudaEventRecord(e0, b->stream));
            if (c < p->n_cand) st = lt_run(b, p, &p->cand[c].algo, O, X, W);
            else cu_gemv(b, O, X, W);
            CU_CHECK(cudaEventRecord(e1, b->stream));
            CU_CHECK(cudaEventSynchronize(e1));
            float t = 0.0f;
            CU_CHECK(cudaEventElapsedTime(&t, e0, e1));
            if (st != CUBLAS_STATUS_SUCCESS) t = 1e30f;
            if (rep > 0) ms += t;
        }
        if (c < p->n_cand && ms < best_lt) {
            best_lt = ms;
            p->algo = p->cand[c].algo;
        }
        if (ms < best) {
            best = ms;
            p->gemv = c == p->n_cand;
        }
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    // an FP8 shape none of whose candidates ran is unsupported after all
    p->n_cand = best_lt >= 1e30f && p->key.in_dt == SL_DTYPE_F8E4M3 ? -1 : 0;
}

// The cached plan for out = x · wᵀ with inputs of in_dt (the key's dtype).
static cu_mm_plan *plan_for(cu_backend *b, cu_mat O, cu_mat X, cu_mat W, int in_dt, int w_blk)
{
    cu_mm_key k;
    memset(&k, 0, sizeof k);
    k.M = X.rows;
    if (k.M > CU_MM_EXACT_M) { // the bucket's top: a power of two
        int64_t top = 2 * CU_MM_EXACT_M;
        while (top < k.M) top <<= 1;
        k.M = top;
    }
    k.N = W.rows;
    k.K = X.cols;
    k.ldx = X.ld;
    k.ldw = W.ld;
    k.ldo = O.ld;
    k.in_dt = in_dt;
    k.out_dt = O.dt;
    int a = ptr_align(X.p), aw = ptr_align(W.p), ao = ptr_align(O.p);
    k.align = a < aw ? a : aw;
    if (ao < k.align) k.align = ao;
    k.w_blk = w_blk;
    return plan_get(b, &k);
}

// A plan's first use outside graph capture times its candidates (unless
// SL_CUDA_MM_TUNE=0).
static void tune_once(cu_backend *b, cu_mm_plan *p, cu_mat O, cu_mat X, cu_mat W, int gemv_ok)
{
    if (p->n_cand <= 0 || !b->mm_tune || p->key.M > CU_MM_EXACT_M) return;
    cudaStreamCaptureStatus cap;
    CU_CHECK(cudaStreamIsCapturing(b->stream, &cap));
    if (cap == cudaStreamCaptureStatusNone) plan_tune(b, p, O, X, W, gemv_ok);
}

__global__ void k_to_bf16(__nv_bfloat16 *dst, cu_mat m)
{
    int64_t n = m.rows * m.cols;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16_rn(cu_mat_ld(m, i / m.cols, i % m.cols));
}

// A dense bf16 copy of a non-bf16 operand, in scratch memory.
static cu_mat to_bf16(cu_backend *b, cu_mat m)
{
    int64_t n = m.rows * m.cols;
    __nv_bfloat16 *d = (__nv_bfloat16 *)cu_tmp_alloc(b, sizeof(__nv_bfloat16) * (size_t)n);
    unsigned g = (unsigned)(n < 8192 * 256 ? cu_blocks(n, 256) : 8192);
    k_to_bf16<<<g, 256, 0, b->stream>>>(d, m);
    CU_CHECK_LAUNCH();
    cu_mat r = {d, SL_DTYPE_BF16, m.rows, m.cols, m.cols};
    return r;
}

void cu_matmul(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *w)
{
    cu_backend *b = cu_be(be);
    cu_mat X = cu_mat_of(x), W = cu_mat_of(w), O = cu_mat_of(out);
    if (X.rows == 0 || W.rows == 0) return;
    SL_ASSERT(O.dt == SL_DTYPE_BF16 || O.dt == SL_DTYPE_F32);
    int all_f32 = X.dt == SL_DTYPE_F32 && W.dt == SL_DTYPE_F32 && O.dt == SL_DTYPE_F32;
    void *tx = NULL, *tw = NULL;
    if (!all_f32 && X.dt != SL_DTYPE_BF16) {
        X = to_bf16(b, X);
        tx = X.p;
    }
    if (!all_f32 && W.dt != SL_DTYPE_BF16) {
        W = to_bf16(b, W);
        tw = W.p;
    }
    cu_mm_plan *p = plan_for(b, O, X, W, all_f32 ? SL_DTYPE_F32 : SL_DTYPE_BF16, 0);
    int gemv_ok = !tw && cu_gemv_ok(&X, &W, &O); // only bf16 weights as they are
    tune_once(b, p, O, X, W, gemv_ok);
    int gemv = b->mm_force == SL_CUDA_MM_AUTO ? p->gemv : b->mm_force == SL_CUDA_MM_GEMV;
    if (gemv_ok && gemv) {
        cu_gemv(b, O, X, W);
        b->mm_last = "gemv";
    } else {
        CUBLAS_CHECK(lt_run_m(b, p, O, X, W));
        b->mm_last = "cublaslt";
    }
    cu_tmp_free(b, tx);
    cu_tmp_free(b, tw);
}

cu_mm_plan *cu_matmul_fp8_plan(cu_backend *b, cu_mat O, cu_mat X, cu_mat W, int w_blk)
{
    cu_mm_plan *p = plan_for(b, O, X, W, SL_DTYPE_F8E4M3, w_blk);
    return p->n_cand < 0 ? NULL : p;
}

int cu_matmul_fp8_run(cu_backend *b, cu_mm_plan *p, cu_mat O, cu_mat X, const float *sx_t, cu_mat W,
                      const float *sw)
{
    // the scale tensors are per call (scratch): set on the cached descriptor,
    // which cublasLtMatmul reads when it enqueues
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sw, sizeof sw));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sx_t, sizeof sx_t));
    tune_once(b, p, O, X, W, 0);
    if (p->n_cand < 0) return -1;
    cublasStatus_t st = lt_run_m(b, p, O, X, W);
    if (p->n_cand < 0) return -1; // the heuristic has nothing for this M after all: nothing ran
    CUBLAS_CHECK(st);
    return 0;
}

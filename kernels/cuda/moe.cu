// kernels/cuda/moe.cu: routing (one warp per token) and the expert FFNs,
// all on the device (no host sync). Up to MOE_GV_MAX_PAIRS (token, expert)
// pairs (decode) the FFNs run as GEMVs over the active experts' weights
// (see "few tokens" below); more as grouped GEMMs:
//   count   pairs (t, j) per expert, each pair's rank within its expert
//   plan    offsets = exclusive scan of counts; tiles of BM rows per expert
//   gather  xs[offset[e] + rank] = bf16(x[t])   (token permutation)
//   gemm1   act = silu(xs·gateᵀ) ⊙ (xs·upᵀ)      (fused GLU epilogue, bf16)
//   gemm2   y = act·downᵀ                        (fp32)
//   combine out[t] = Σ_j w[t,j] · y[pos(t,j)]    (fixed order: deterministic)
// The GEMM grid is sized by an upper bound on the tile count; blocks past
// the real count (known only on the device) exit at once.
#include <cuda_pipeline.h>
#include <mma.h>

#include "fp8.cuh"
#include "moe.cuh"
#include "norm.cuh"

// ---- routing --------------------------------------------------------------------

// A warp per token. Its E probabilities stay in registers, NPL a lane (expert
// lane + 32 i); each of the k picks is one redux.sync max over the lanes'
// best keys and one min over the indices that hold it, then the winning lane
// rescans its own values. The previous form rescanned all E from shared
// memory and reduced (value, index) pairs with 10 shuffles per pick: at
// Coder-Next's 512 experts and k = 10, most of a layer's routing time at one
// token. Same results: probabilities, picks (largest first, lowest index on
// ties) and sums in the same order.
// CG: the logits are f32 written by other blocks of this kernel: read them
// from L2 (ld.global.cg), past this SM's L1.
template <int NPL, bool CG = false>
__device__ void moe_route_token(const cu_mat &logits, int64_t t, int32_t *ids, int64_t ids_ld, float *w,
                                int64_t w_ld, int k, int norm, int shared)
{
    const int lane = threadIdx.x & 31;
    auto ld = [&](int64_t e) {
        return CG ? __ldcg((const float *)logits.p + t * logits.ld + e) : cu_mat_ld(logits, t, e);
    };
    int E = (int)logits.cols - shared; // the shared expert's gate logit is not routed
    float v[NPL];
    float mx = -INFINITY;
#pragma unroll
    for (int i = 0; i < NPL; i++) {
        int e = lane + 32 * i;
        v[i] = e < E ? ld(e) : -INFINITY;
        mx = fmaxf(mx, v[i]);
    }
    mx = cu_warp_max(mx);
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < NPL; i++)
        if (lane + 32 * i < E) {
            v[i] = expf(v[i] - mx);
            sum += v[i];
        }
    sum = cu_warp_sum(sum);
    // probabilities; -1 marks what is not a candidate (past E, picked)
#pragma unroll
    for (int i = 0; i < NPL; i++) v[i] = lane + 32 * i < E ? v[i] / sum : -1.0f;
    // this lane's best candidate: key 0 for none, else the value's bits + 1
    // (probabilities are >= 0, so their bits order as they do), and its expert
    unsigned key = 0;
    int bi = 0x7fffffff;
    auto rescan = [&]() {
        float bv = -1.0f;
        bi = 0x7fffffff;
#pragma unroll
        for (int i = 0; i < NPL; i++)
            if (v[i] > bv) { // strict: the lowest expert of equal values
                bv = v[i];
                bi = lane + 32 * i;
            }
        key = bv >= 0.0f ? __float_as_uint(bv) + 1u : 0u;
    };
    rescan();
    float tot = 0.0f, mine = 0.0f;
    int my_id = 0;
    for (int j = 0; j < k; j++) {
        unsigned top = __reduce_max_sync(0xffffffffu, key);
        int win = (int)__reduce_min_sync(0xffffffffu, key == top ? (unsigned)bi : 0xffffffffu);
        float bv = __uint_as_float(top - 1u);
        tot += bv;
        if (lane == j) {
            mine = bv;
            my_id = win;
        }
        if (lane == (win & 31)) {
#pragma unroll
            for (int i = 0; i < NPL; i++)
                if (i == win >> 5) v[i] = -1.0f;
            rescan();
        }
    }
    // k <= 32 holders: lane j keeps pick j
    if (lane < k) {
        ids[t * ids_ld + lane] = my_id;
        w[t * w_ld + lane] = norm ? mine / tot : mine;
    }
    if (shared && lane == 0) { // the shared expert, gated by σ of its own logit
        ids[t * ids_ld + k] = E;
        w[t * w_ld + k] = 1.0f / (1.0f + expf(-ld(E)));
    }
}

template <int NPL>
__global__ void k_moe_route(cu_mat logits, int32_t *ids, int64_t ids_ld, float *w, int64_t w_ld, int k, int norm,
                            int shared)
{
    int64_t t = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    cu_pdl_wait();
    cu_pdl_trigger();
    if (t < logits.rows) moe_route_token<NPL>(logits, t, ids, ids_ld, w, w_ld, k, norm, shared);
}

// Launches kernel K<NPL> with NPL the experts a lane holds (E routed experts)
template <template <int> class K, class... A>
static void moe_route_dispatch(cu_backend *b, int64_t E, dim3 grid, size_t smem, A... args)
{
    if (E <= 128) K<4>::launch(b, grid, smem, args...);
    else if (E <= 256) K<8>::launch(b, grid, smem, args...);
    else if (E <= 512) K<16>::launch(b, grid, smem, args...);
    else K<32>::launch(b, grid, smem, args...);
}

template <int NPL> struct moe_route_k {
    template <class... A> static void launch(cu_backend *b, dim3 grid, size_t smem, A... args)
    {
        cu_launch(b, k_moe_route<NPL>, grid, 256, smem, args...);
    }
};

void cu_moe_route(sl_backend *be, sl_tensor *ids, sl_tensor *weights, const sl_tensor *logits,
                  int k, int norm, int shared)
{
    cu_backend *b = cu_be(be);
    cu_mat L = cu_mat_of(logits);
    int64_t E = L.cols - shared;
    SL_ASSERT(E <= 1024 && k <= 32 && k <= E);
    if (L.rows == 0) return;
    moe_route_dispatch<moe_route_k>(b, E, dim3(cu_blocks(L.rows, 8)), 0, L, (int32_t *)ids->data,
                                    sl_tensor_ld(ids), (float *)weights->data, sl_tensor_ld(weights), k, norm,
                                    shared);
}

// ---- router: logits and routing in one kernel (decode) ---------------------------
//
// At one token a layer's router was a cuBLASLt GEMV (E + shared rows of H
// bf16, 0.5-2 MB) and k_moe_route: two launches of a few µs each for tiny
// work. k_moe_router: warp w of block b takes router row r = 8b + w, its
// weights requested before the PDL wait (16 bytes a lane per 256 columns,
// all in registers), x's T ≤ MOE_ROUTER_MAX_T rows staged in shared memory
// after it; each lane's products summed, then the warp's (fp32), into
// logits[t][r]. The block that finishes last (a counter, reset by that
// block for the next launch) routes every token from those logits
// (moe_route_token, reading them from L2: f32, asserted where it is chosen).
// With NORM the residual add + RMSNorm before it too (sl_be_add_rmsnorm_router,
// NOTES.md v45): every block computes x = rmsnorm(resid + d) of the T rows
// into its shared memory with norm_group, as k_norm_block does (256 threads,
// 8-wide), from a shared copy of resid, and the last block writes resid and x
// back: one launch fewer a MoE layer, the same values.
#define MOE_ROUTER_MAX_T 8
#define MOE_ROUTER_MAX_C 16 // 16-byte chunks a lane: H up to 4096
// x (and resid) staged in shared memory: the 48 KB a launch gets without opting in, less the
// kernel's static red[] and last. Counting the 48 KB for the rows alone let 6 rows of
// Coder-Next's H 2048 with resid (exactly 48 KB) launch with 132 bytes too many: "invalid
// argument" (v45 on the H200, NOTES v53).
#define MOE_ROUTER_SMEM (48 * 1024 - 256)

typedef struct moe_router_norm {
    cu_mat resid, d, w; // resid [T, H] bf16 (updated), d [T, H], w [1, H]
    float eps;
    int one_plus;
} moe_router_norm;

template <int NPL, bool NORM>
__global__ void __launch_bounds__(256) k_moe_router(cu_mat x, const __nv_bfloat16 *rw, int64_t ldr, cu_mat logits,
                                                    int32_t *ids, int64_t ids_ld, float *w, int64_t w_ld, int k,
                                                    int norm, int shared, unsigned *done, moe_router_norm nr)
{
    extern __shared__ __align__(16) __nv_bfloat16 rx[]; // [T][H] x, then (NORM) [T][H] resid
    __shared__ bool last;
    __shared__ float red[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, H = (int)x.cols, T = (int)x.rows;
    const int64_t r = (int64_t)blockIdx.x * 8 + warp;
    const bool ok = r < logits.cols;
    const int nc = H / 256; // chunks a lane
    uint4 wv[MOE_ROUTER_MAX_C];
#pragma unroll
    for (int c = 0; c < MOE_ROUTER_MAX_C; c++)
        wv[c] = ok && c < nc ? __ldg((const uint4 *)(rw + r * ldr + (c * 32 + lane) * 8)) : make_uint4(0, 0, 0, 0);
    cu_pdl_wait();
    cu_pdl_trigger();
    // x's rows (NORM: resid's) into shared memory
    const cu_mat &src_m = NORM ? nr.resid : x;
    __nv_bfloat16 *dst = NORM ? rx + T * H : rx;
    for (int i = threadIdx.x; i < T * (H / 8); i += blockDim.x) {
        int t = i / (H / 8), c = i - t * (H / 8);
        uint32_t d = (uint32_t)__cvta_generic_to_shared(dst + t * H + c * 8);
        const __nv_bfloat16 *src = (const __nv_bfloat16 *)src_m.p + t * src_m.ld + c * 8;
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src));
    }
    asm volatile("cp.async.commit_group;\n" ::);
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
    __syncthreads();
    if constexpr (NORM) { // x = rmsnorm(resid + d), resid + d kept in the shared copy
        cu_norm_args na = {{rx, SL_DTYPE_BF16, T, H, H}, nr.d, {rx + T * H, SL_DTYPE_BF16, T, H, H}, cu_norm_none(),
                           nr.w, nr.eps, nr.one_plus, 1, {}};
        for (int t = 0; t < T; t++)
            norm_group<true, false>(na, t, threadIdx.x, blockDim.x, [&](float v) { return cu_block_sum(v, red); });
        __syncthreads();
    }
    for (int t = 0; t < T; t++) {
        float s = 0.0f;
#pragma unroll
        for (int c = 0; c < MOE_ROUTER_MAX_C; c++) {
            if (c >= nc) break;
            uint4 xu = *(const uint4 *)(rx + t * H + (c * 32 + lane) * 8);
            const __nv_bfloat162 *xa = (const __nv_bfloat162 *)&xu, *wa = (const __nv_bfloat162 *)&wv[c];
#pragma unroll
            for (int q = 0; q < 4; q++) {
                float2 xf = __bfloat1622float2(xa[q]), wf = __bfloat1622float2(wa[q]);
                s = fmaf(xf.x, wf.x, s);
                s = fmaf(xf.y, wf.y, s);
            }
        }
        s = cu_warp_sum(s);
        if (ok && lane == 0) cu_mat_st(logits, t, r, s);
    }
    // the last block routes (its reads see every block's logits: each block
    // fences its writes before counting itself done)
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(done, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    if constexpr (NORM) // the new resid and x, for the kernels after
        for (int i = threadIdx.x; i < T * (H / 8); i += blockDim.x) {
            int t = i / (H / 8), c = i - t * (H / 8);
            *(uint4 *)((__nv_bfloat16 *)nr.resid.p + t * nr.resid.ld + c * 8) = *(const uint4 *)(rx + (T + t) * H + c * 8);
            *(uint4 *)((__nv_bfloat16 *)x.p + t * x.ld + c * 8) = *(const uint4 *)(rx + t * H + c * 8);
        }
    for (int t = warp; t < T; t += blockDim.x >> 5)
        moe_route_token<NPL, true>(logits, t, ids, ids_ld, w, w_ld, k, norm, shared);
    if (threadIdx.x == 0) *done = 0;
}

template <int NPL> struct moe_router_k {
    template <class... A> static void launch(cu_backend *b, dim3 grid, size_t smem, A... args)
    {
        cu_launch(b, k_moe_router<NPL, false>, grid, 256, smem, args...);
    }
};

template <int NPL> struct moe_router_nk {
    template <class... A> static void launch(cu_backend *b, dim3 grid, size_t smem, A... args)
    {
        cu_launch(b, k_moe_router<NPL, true>, grid, 256, smem, args...);
    }
};

// k_moe_router where it applies (nr: with the residual add + norm before it);
// returns whether it ran.
static int moe_router_run(cu_backend *b, sl_tensor *ids, sl_tensor *weights, sl_tensor *logits, const sl_tensor *x,
                          const sl_tensor *router, int k, int norm, int shared, const moe_router_norm *nr)
{
    cu_mat X = cu_mat_of(x), L = cu_mat_of(logits), R = cu_mat_of(router);
    int64_t E = L.cols - shared, H = X.cols, xs = (nr ? 2 : 1) * X.rows * H * (int64_t)sizeof(__nv_bfloat16);
    if (!b->moe_router || X.rows < 1 || X.rows > MOE_ROUTER_MAX_T || X.dt != SL_DTYPE_BF16 || R.dt != SL_DTYPE_BF16 ||
        L.dt != SL_DTYPE_F32 || H % 256 || H > 256 * MOE_ROUTER_MAX_C || X.ld % 8 || R.ld % 8 ||
        (uintptr_t)X.p % 16 || (uintptr_t)R.p % 16 || E > 1024 || k > 32 || k > E ||
        xs > MOE_ROUTER_SMEM)
        return 0;
    dim3 grid((unsigned)cu_blocks(L.cols, 8));
    const __nv_bfloat16 *rw = (const __nv_bfloat16 *)R.p;
    int32_t *id = (int32_t *)ids->data;
    float *wt = (float *)weights->data;
    if (nr)
        moe_route_dispatch<moe_router_nk>(b, E, grid, (size_t)xs, X, rw, R.ld, L, id, sl_tensor_ld(ids), wt,
                                          sl_tensor_ld(weights), k, norm, shared, b->router_done, *nr);
    else
        moe_route_dispatch<moe_router_k>(b, E, grid, (size_t)xs, X, rw, R.ld, L, id, sl_tensor_ld(ids), wt,
                                         sl_tensor_ld(weights), k, norm, shared, b->router_done, moe_router_norm{});
    return 1;
}

int cu_moe_router(sl_backend *be, sl_tensor *ids, sl_tensor *weights, sl_tensor *logits, const sl_tensor *x,
                  const sl_tensor *router, int k, int norm, int shared)
{
    return moe_router_run(cu_be(be), ids, weights, logits, x, router, k, norm, shared, NULL);
}

int cu_add_rmsnorm_router(sl_backend *be, sl_tensor *x, sl_tensor *resid, const sl_tensor *d, const sl_tensor *w,
                          float eps, int one_plus, sl_tensor *ids, sl_tensor *weights, sl_tensor *logits,
                          const sl_tensor *router, int k, int norm, int shared)
{
    cu_backend *b = cu_be(be);
    moe_router_norm nr = {cu_mat_of(resid), cu_mat_of(d), cu_norm_w(w), eps, one_plus};
    // the 8-wide norm over whole bf16 rows (norm_group<true>), resid copied in 16-byte chunks
    if (!b->router_norm || nr.resid.dt != SL_DTYPE_BF16 || nr.w.cols != nr.d.cols || !cu_mat_vec_ok(nr.d) ||
        !cu_mat_vec_ok(nr.w) || !cu_mat_vec_ok(nr.resid) || nr.resid.cols != nr.d.cols)
        return 0;
    return moe_router_run(b, ids, weights, logits, x, router, k, norm, shared, &nr);
}

// ---- expert FFNs -----------------------------------------------------------------

#define MOE_BM 64
#define MOE_BN 64
#define MOE_BK 32
#define MOE_THREADS 128
#define MOE_STAGES 3

// Row of pair i in the permuted order (the plan's offsets and ranks are in)
__device__ __forceinline__ int64_t moe_pair_row(const int32_t *ids, int64_t ld, int k, const cu_moe_plan &p,
                                                int64_t i)
{
    int e = ids[(i / k) * ld + i % k];
    return p.offset[e] + p.rank[i];
}

__global__ void k_moe_count(const int32_t *ids, int64_t ld, int64_t T, int k, cu_moe_plan p)
{
    int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i >= T * k) return;
    int e = ids[(i / k) * ld + i % k];
    p.rank[i] = atomicAdd(&p.count[e], 1);
}

__global__ void k_moe_plan(int E, int bm, cu_moe_plan p)
{
    if (threadIdx.x != 0) return;
    int off = 0, nt = 0;
    for (int e = 0; e < E; e++) {
        p.offset[e] = off;
        for (int m0 = 0; m0 < p.count[e]; m0 += bm) p.tiles[nt++] = make_int2(e, m0);
        off += p.count[e];
    }
    p.offset[E] = off;
    *p.n_tiles = nt;
}

// pos and perm of every pair, for consumers that read x through the permutation
__global__ void k_moe_index(const int32_t *ids, int64_t ld, int64_t T, int k, cu_moe_plan p)
{
    int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i >= T * k) return;
    int64_t row = moe_pair_row(ids, ld, k, p, i);
    p.pos[i] = (int32_t)row;
    p.perm[row] = (int32_t)i;
}

__global__ void k_moe_gather(__nv_bfloat16 *xs, cu_mat x, const int32_t *ids, int64_t ld, int k,
                             cu_moe_plan p)
{
    int64_t i = blockIdx.x, t = i / k;
    int64_t row = moe_pair_row(ids, ld, k, p, i);
    if (threadIdx.x == 0) p.pos[i] = (int32_t)row;
    for (int64_t c = threadIdx.x; c < x.cols; c += blockDim.x)
        xs[row * x.cols + c] = __float2bfloat16_rn(cu_mat_ld(x, t, c));
}

void cu_moe_plan_make(cu_backend *b, cu_moe_plan *p, const int32_t *ids, int64_t ld, int64_t T, int k,
                      int E, int bm, int index)
{
    int64_t P = T * k;
    p->max_tiles = (int)((P + bm - 1) / bm + E);
    // one scratch block: count [E], offset [E+1], n_tiles, rank, pos, perm [P], tiles
    size_t n = (size_t)(2 * E + 2 + 3 * P + 2 * (int64_t)p->max_tiles + 2);
    int32_t *ints = (int32_t *)cu_tmp_alloc(b, sizeof(int32_t) * n);
    p->count = ints;
    p->offset = p->count + E;
    p->n_tiles = p->offset + E + 1;
    p->rank = p->n_tiles + 1;
    p->pos = p->rank + P;
    p->perm = index ? p->pos + P : NULL;
    p->tiles = (int2 *)(((uintptr_t)(p->pos + 2 * P) + 7) & ~(uintptr_t)7);
    CU_CHECK(cudaMemsetAsync(p->count, 0, sizeof(int32_t) * (size_t)E, b->stream));
    k_moe_count<<<cu_blocks(P, 256), 256, 0, b->stream>>>(ids, ld, T, k, *p);
    CU_CHECK_LAUNCH();
    k_moe_plan<<<1, 32, 0, b->stream>>>(E, bm, *p);
    CU_CHECK_LAUNCH();
    if (index) {
        k_moe_index<<<cu_blocks(P, 256), 256, 0, b->stream>>>(ids, ld, T, k, *p);
        CU_CHECK_LAUNCH();
    }
}

void cu_moe_plan_free(cu_backend *b, cu_moe_plan *p)
{
    cu_tmp_free(b, p->count);
    p->count = NULL;
}

// C[rows of expert e, N] = A[rows, K] · B_e[N, K]ᵀ on bf16 tensor cores
// (wmma 16x16x16, fp32 accumulate). GLU: B_e holds 2N rows (gate then up) and
// the block computes both tiles, writing silu(gate)·up. The A and B tiles of
// the next MOE_STAGES-1 K-steps load with cp.async while this one computes:
// at decode sizes the kernel streams expert weights and lives on loads in
// flight.
template <bool GLU>
__global__ void __launch_bounds__(MOE_THREADS) k_moe_gemm(const __nv_bfloat16 *A,
                                                          const __nv_bfloat16 *B, int64_t b_estride,
                                                          void *C, int c_dt, int N, int K,
                                                          cu_moe_plan p)
{
    using namespace nvcuda;
    constexpr int NB = GLU ? 2 : 1;
    constexpr int LDS = MOE_BK + 8;          // bf16 row pitch in shared memory
    constexpr int LDC = MOE_BN + 4;          // fp32 pitch of the epilogue tile
    constexpr int ROWS = MOE_BM + NB * MOE_BN;
    constexpr int STAGE = ROWS * LDS;        // bf16 elements per stage
    constexpr int AB_BYTES = MOE_STAGES * STAGE * 2;
    constexpr int C_BYTES = NB * MOE_BM * LDC * 4;
    __shared__ __align__(128) char smem[AB_BYTES > C_BYTES ? AB_BYTES : C_BYTES];
    __nv_bfloat16 *stages = (__nv_bfloat16 *)smem;
    float *Cs = (float *)smem;

    if ((int)blockIdx.y >= *p.n_tiles) return;
    int2 tile = p.tiles[blockIdx.y];
    int e = tile.x;
    int64_t r0 = p.offset[e] + tile.y;
    int rows = min(MOE_BM, p.offset[e + 1] - (int)r0);
    int n0 = blockIdx.x * MOE_BN;
    const __nv_bfloat16 *Be = B + e * b_estride;

    // rows [0, BM) of a stage: A; then NB*BN rows of B (zeros past the edges)
    auto load = [&](int k0, int st) {
        __nv_bfloat16 *S = stages + st * STAGE;
        for (int c = threadIdx.x; c < ROWS * (MOE_BK / 8); c += MOE_THREADS) {
            int r = c / (MOE_BK / 8), kc = (c % (MOE_BK / 8)) * 8;
            const __nv_bfloat16 *src;
            bool ok;
            if (r < MOE_BM) {
                ok = r < rows && k0 + kc < K;
                src = A + (r0 + r) * K + k0 + kc;
            } else {
                int rb = r - MOE_BM, half = rb / MOE_BN, n = n0 + rb % MOE_BN;
                ok = n < N && k0 + kc < K;
                src = Be + ((int64_t)half * N + n) * K + k0 + kc;
            }
            __pipeline_memcpy_async(S + r * LDS + kc, ok ? src : A, 16, ok ? 0 : 16);
        }
        __pipeline_commit();
    };

    int warp = threadIdx.x >> 5, wm = warp >> 1, wn = warp & 1;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[NB][2][2];
#pragma unroll
    for (int nb = 0; nb < NB; nb++)
#pragma unroll
        for (int i = 0; i < 2; i++)
#pragma unroll
            for (int j = 0; j < 2; j++) wmma::fill_fragment(acc[nb][i][j], 0.0f);

    int nk = (K + MOE_BK - 1) / MOE_BK;
    for (int st = 0; st < MOE_STAGES - 1; st++) {
        if (st < nk) load(st * MOE_BK, st);
        else __pipeline_commit(); // empty groups keep wait_prior exact
    }
    for (int kt = 0; kt < nk; kt++) {
        int pf = kt + MOE_STAGES - 1;
        if (pf < nk) load(pf * MOE_BK, pf % MOE_STAGES);
        else __pipeline_commit();
        __pipeline_wait_prior(MOE_STAGES - 1);
        __syncthreads();
        const __nv_bfloat16 *As = stages + (kt % MOE_STAGES) * STAGE, *Bs = As + MOE_BM * LDS;
#pragma unroll
        for (int kk = 0; kk < MOE_BK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa[2];
#pragma unroll
            for (int i = 0; i < 2; i++)
                wmma::load_matrix_sync(fa[i], As + (wm * 32 + i * 16) * LDS + kk, LDS);
#pragma unroll
            for (int nb = 0; nb < NB; nb++)
#pragma unroll
                for (int j = 0; j < 2; j++) {
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
                    wmma::load_matrix_sync(fb, Bs + (nb * MOE_BN + wn * 32 + j * 16) * LDS + kk, LDS);
#pragma unroll
                    for (int i = 0; i < 2; i++) wmma::mma_sync(acc[nb][i][j], fa[i], fb, acc[nb][i][j]);
                }
        }
        __syncthreads(); // this stage is refilled next iteration
    }
    __pipeline_wait_prior(0);
#pragma unroll
    for (int nb = 0; nb < NB; nb++)
#pragma unroll
        for (int i = 0; i < 2; i++)
#pragma unroll
            for (int j = 0; j < 2; j++)
                wmma::store_matrix_sync(Cs + nb * MOE_BM * LDC + (wm * 32 + i * 16) * LDC + wn * 32 + j * 16,
                                        acc[nb][i][j], LDC, wmma::mem_row_major);
    __syncthreads();
    for (int c = threadIdx.x; c < MOE_BM * MOE_BN; c += MOE_THREADS) {
        int r = c / MOE_BN, n = c % MOE_BN;
        if (r >= rows || n0 + n >= N) continue;
        float v = Cs[r * LDC + n];
        if (GLU) {
            float u = Cs[MOE_BM * LDC + r * LDC + n];
            v = v / (1.0f + expf(-v)) * u;
        }
        cu_stf(C, c_dt, (r0 + r) * N + n0 + n, v);
    }
}

__global__ void k_moe_combine(cu_mat out, const float *y, const float *w, int64_t w_ld, int k,
                              cu_moe_plan p)
{
    int64_t t = blockIdx.y;
    for (int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c < out.cols;
         c += (int64_t)gridDim.x * blockDim.x) {
        float acc = cu_wsum(w + t * w_ld, k, [&](int j) { return y[p.pos[t * k + j] * out.cols + c]; });
        cu_mat_st(out, t, c, acc);
    }
}

void cu_moe_combine_run(cu_backend *b, cu_mat out, const float *y, const float *w, int64_t w_ld, int k,
                        const cu_moe_plan *p)
{
    k_moe_combine<<<cu_row_grid(out.rows, out.cols), 256, 0, b->stream>>>(out, y, w, w_ld, k, *p);
    CU_CHECK_LAUNCH();
}

// ---- expert FFNs for few tokens (decode) ----------------------------------------
//
// With a few pairs per expert the FFNs are GEMVs that must stream each
// active expert's weights once; the grouped GEMM above gets too few tiles
// for that (8 experts x 12 column tiles at one token). Two kernels, each a
// wave of blocks sharing the work items (pass of up to 8 of an active
// expert's tokens, 16-row tile):
//   glu   act[i] = silu(gate_e x_t) ⊙ (up_e x_t)   i = (t, j): pair t*k + j
//   down  y[i] = down_e act[i]; the block finishing a row tile's last item
//         writes out[t] = Σ_j w[t,j] y[t,j] for those rows (fixed order, no
//         float atomics: deterministic)
// Every block plans from ids alone (the pairs of each active expert, in
// shared memory), so the routing never leaves the device and no planning
// kernel runs in between. Both kernels are launched programmatically
// dependent (PDL, cu_launch): glu's blocks are resident while the previous
// kernel drains, down's plan while glu drains. Prefetching the first item's
// weights into L2 was tried (glu: NOTES.md v7; down, before its wait: v8)
// and cost 3-8 % at T=1.
//
// A warp computes a 16-row x 8-token tile over a slice of K with
// mma.m16n8k16 (bf16 in, fp32 accumulate): each lane loads 16 bytes of a
// row straight from global memory, several in flight, and the tensor cores
// make the math free, so up to 8 tokens of an expert share one pass over
// its weights (more go over them again, from L2, per 8). Tokens' vectors
// sit in shared memory as bf16; warps of a block that split K add their
// tiles in warp order.
//
// FP8 experts (sl_be_moe_experts_fp8, AUTO up to the pairs these kernels
// take) run the same two kernels, each after cu_fp8_quant of its vectors (x;
// silu·up, which glu then keeps in f32): blocks copy codes and scales into
// shared memory, and a warp's slice is whole 128-groups on mma.m16n8k32
// e4m3, each group's sum scaled by s_x·s_w into fp32 (the CPU op's
// arithmetic). The per-pair and per-expert GEMVs (fp8.cu) re-read an
// expert's weights per pair or per 16-row tile and block.

#ifndef MOE_GV_MAX_PAIRS
// Up to this many (token, expert) pairs: 512 and 640 (T=64) gain, 1024
// (30B-A3B T=128, 8 tokens an expert) loses to the grouped GEMM (NOTES.md v7).
// 704: Coder-Next's 64 tokens with the shared expert fused (11 pairs a token;
// that expert takes all 64 in eight passes of 8) stay here, as they did at 640.
#define MOE_GV_MAX_PAIRS 704
#endif
#ifndef MOE_GV_GLU_RW
#define MOE_GV_GLU_RW 1 // glu: 16-row groups a block takes (its warps split K among them)
#endif
#ifndef MOE_GV_DOWN_RW
#define MOE_GV_DOWN_RW 2 // down: same
#endif
// FP8 weights: an item of the bf16 kernels' rows is half the bytes for the
// same fixed cost (the pass's vectors, the block reduction, the down
// kernel's counter), so items take more rows. On an H200 (glu, down) = (4,
// 8) against the bf16 (1, 2): Coder-Next at 64 tokens 0.467 -> 0.391 ms,
// 30B-A3B 0.270 -> 0.250, 1 token 0.040 -> 0.035 (NOTES.md v30).
#ifndef MOE_GV_GLU_RW8
#define MOE_GV_GLU_RW8 4
#endif
#ifndef MOE_GV_DOWN_RW8
#define MOE_GV_DOWN_RW8 8
#endif
template <bool F8> __host__ __device__ constexpr int moe_gv_glu_rw() { return F8 ? MOE_GV_GLU_RW8 : MOE_GV_GLU_RW; }
template <bool F8> __host__ __device__ constexpr int moe_gv_down_rw() { return F8 ? MOE_GV_DOWN_RW8 : MOE_GV_DOWN_RW; }
#ifndef MOE_GV_BLOCKS_PER_SM
#define MOE_GV_BLOCKS_PER_SM 3 // the grid: one wave of these
#endif
#ifndef MOE_GV_J
#define MOE_GV_J 4 // 32-wide K chunks a lane has in flight (2 rows: 2*J loads)
#endif
#ifndef MOE_GV_J8
#define MOE_GV_J8 2 // FP8: 128-groups a lane has in flight (2 rows: 8*J8 16-byte loads)
#endif
#define MOE_GV_WARPS 8
#define MOE_GV_THREADS (MOE_GV_WARPS * 32)
#define MOE_GV_NT 8       // tokens of one mma tile
#define MOE_GV_MAX_E 1024 // experts the plan can hold

// The routing as every block sees it (shared memory): active experts in
// ascending id, and per expert its pairs in ascending order at
// pairs[off[e] .. off[e] + cnt[e]); an expert's pairs go in passes of
// MOE_GV_NT, slot s's first pass is number pass0[s] of n_passes.
typedef struct moe_gv_plan {
    int n_active, n_passes;
    int *slot_e; // [n_active] expert of each slot
    int *off;    // [E]
    int *cnt;    // [E]
    int *pairs;  // [P] pair indices grouped by expert
    int *pass0;  // [n_active + 1]
} moe_gv_plan;

// Exclusive prefix sums over val(0..n-1): sink(i, prefix) for each i;
// returns the total. All threads of the block call it.
template <class V, class S> __device__ int moe_block_scan(int n, V val, S sink)
{
    __shared__ int warp_sum[32];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5, base = 0;
    for (int c0 = 0; c0 < n; c0 += blockDim.x) {
        int i = c0 + threadIdx.x, v = i < n ? val(i) : 0, x = v;
        for (int o = 1; o < 32; o <<= 1) {
            int y = __shfl_up_sync(0xffffffffu, x, o);
            if (lane >= o) x += y;
        }
        if (lane == 31) warp_sum[w] = x;
        __syncthreads();
        int before = base, tot = 0;
        for (int j = 0; j < nw; j++) {
            if (j < w) before += warp_sum[j];
            tot += warp_sum[j];
        }
        if (i < n) sink(i, before + x - v);
        base += tot;
        __syncthreads(); // warp_sum is rewritten next round
    }
    return base;
}

// Shared-memory bytes: the plan (slot_e, off, cnt [E]; pairs [P]; pass0
// [E + 1]; while planning ids and ranks [P]), the warps' tiles for the K
// reduction, then the MOE_GV_NT vectors of K an item multiplies: bf16
// (padded, see moe_gv_xld), or (FP8 weights) their e4m3 codes, pitch
// moe_gv_qld, and the codes' [MOE_GV_NT][G] scales.
__host__ __device__ inline int moe_gv_xld(int64_t K)
{
    return (int)((K + 31) / 32 * 32 + 8);
}
// 16 bytes past whole groups: the 8 token rows of an mma B load fall in
// different banks
__host__ __device__ inline int moe_gv_qld(int64_t K)
{
    return fp8_groups(K) * FP8_G + 16;
}
__host__ __device__ inline size_t moe_gv_plan_bytes(int64_t P, int E)
{
    return (sizeof(int) * (size_t)(4 * E + 1 + 3 * P) + 15) & ~(size_t)15;
}
__host__ __device__ inline size_t moe_gv_smem(int64_t P, int E, int64_t K, bool f8)
{
    size_t vec = f8 ? MOE_GV_NT * ((size_t)moe_gv_qld(K) + sizeof(float) * (size_t)fp8_groups(K))
                    : 2 * MOE_GV_NT * (size_t)moe_gv_xld(K);
    return moe_gv_plan_bytes(P, E) + sizeof(float) * MOE_GV_THREADS * 4 + vec;
}

// Builds the plan in smem. Ranks within an expert follow the pair order
// (one warp, 32 pairs a step), so every run groups the tokens alike.
__device__ moe_gv_plan moe_gv_make_plan(const int32_t *ids, int64_t ld, int T, int k, int E,
                                        int *sm)
{
    int P = T * k, lane = threadIdx.x & 31;
    moe_gv_plan p;
    p.slot_e = sm;
    p.off = sm + E;
    p.cnt = p.off + E;
    p.pairs = p.cnt + E;
    p.pass0 = p.pairs + P;
    int *sid = p.pass0 + E + 1, *rank = sid + P;
    for (int e = threadIdx.x; e < E; e += blockDim.x)
        p.cnt[e] = 0;
    for (int i = threadIdx.x; i < P; i += blockDim.x)
        sid[i] = ids[(int64_t)(i / k) * ld + i % k];
    __syncthreads();
    if (threadIdx.x < 32)
        for (int c0 = 0; c0 < P; c0 += 32) {
            int i = c0 + lane;
            unsigned live = __ballot_sync(0xffffffffu, i < P);
            if (i < P) {
                int e = sid[i];
                unsigned same = __match_any_sync(live, e);
                int lead = __ffs(same) - 1, base = 0;
                if (lane == lead) base = p.cnt[e];
                base = __shfl_sync(same, base, lead);
                rank[i] = base + __popc(same & ((1u << lane) - 1));
                if (lane == lead) p.cnt[e] = base + __popc(same);
            }
            __syncwarp();
        }
    __syncthreads();
    p.n_active = moe_block_scan(
        E, [&](int e) { return p.cnt[e] > 0 ? 1 : 0; },
        [&](int e, int s) {
            if (p.cnt[e] > 0) p.slot_e[s] = e;
        });
    moe_block_scan(
        E, [&](int e) { return p.cnt[e]; }, [&](int e, int s) { p.off[e] = s; });
    p.n_passes = moe_block_scan(
        p.n_active, [&](int s) { return (p.cnt[p.slot_e[s]] + MOE_GV_NT - 1) / MOE_GV_NT; },
        [&](int s, int v) { p.pass0[s] = v; });
    if (threadIdx.x == 0) p.pass0[p.n_active] = p.n_passes;
    for (int i = threadIdx.x; i < P; i += blockDim.x)
        p.pairs[p.off[sid[i]] + rank[i]] = i;
    __syncthreads();
    return p;
}

__device__ __forceinline__ uint4 moe_ld_stream(const __nv_bfloat16 *p)
{
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
        : "l"(p));
    return r;
}

__device__ __forceinline__ void moe_mma(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                        uint32_t a3, uint32_t b0, uint32_t b1)
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// c += W·Xᵀ over 32-wide K chunks [ch0, ch1): W rows lo (tile row g) and hi
// (row g+8), X the 8 token vectors at xs (bf16, row pitch xld). Lane (g, q)
// loads k = 32ch + 8q .. +7 of its two rows and of token g's vector; the
// two mma steps of a chunk take k 8q+4s .. +3 (s = 0, 1) as their logical
// k 2q, 2q+1, 2q+8, 2q+9: the same permutation of k in A and B, so the
// dot products are unchanged and no register moves are needed. c: rows g,
// g+8 x tokens 2q, 2q+1 (the mma accumulator layout).
__device__ __forceinline__ void moe_gv_tile(const __nv_bfloat16 *lo, const __nv_bfloat16 *hi, int K,
                                            int ch0, int ch1, const __nv_bfloat16 *xs, int xld,
                                            float (&c)[4])
{
    int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    for (int c0 = ch0; c0 < ch1; c0 += MOE_GV_J) {
        uint4 a[MOE_GV_J][2];
#pragma unroll
        for (int j = 0; j < MOE_GV_J; j++) {
            int k0 = 32 * (c0 + j) + 8 * q;
            bool ok = c0 + j < ch1 && k0 < K;
            a[j][0] = ok ? moe_ld_stream(lo + k0) : make_uint4(0, 0, 0, 0);
            a[j][1] = ok ? moe_ld_stream(hi + k0) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int j = 0; j < MOE_GV_J; j++) {
            if (c0 + j >= ch1) break;
            uint4 b = *(const uint4 *)(xs + g * xld + 32 * (c0 + j) + 8 * q);
            moe_mma(c, a[j][0].x, a[j][1].x, a[j][0].y, a[j][1].y, b.x, b.y);
            moe_mma(c, a[j][0].z, a[j][1].z, a[j][0].w, a[j][1].w, b.z, b.w);
        }
    }
}

// The same over FP8 weights, 128-groups [g0, g1) of K: W codes of rows lo,
// hi (zero past K; vec: 16-byte loads) with per-group scales slo, shi, X the
// 8 token code rows at xq (pitch qld) with scales sxq[t·G + g]. Per group the
// mma sum (m16n8k32 e4m3, fp8.cu's K permutation) is scaled by
// s_x(token)·s_w(row) into c, the arithmetic of the CPU op.
__device__ __forceinline__ void moe_gv_tile_f8(const uint8_t *lo, const uint8_t *hi, const float *slo,
                                               const float *shi, int K, int vec, int g0, int g1, const uint8_t *xq,
                                               int qld, const float *sxq, int G, float (&c)[4])
{
    int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    for (int c0 = g0; c0 < g1; c0 += MOE_GV_J8) {
        uint4 a[MOE_GV_J8][2][2]; // [group][half][row lo / hi] (fp8_group_acc's A)
        float sa[MOE_GV_J8], sb[MOE_GV_J8];
#pragma unroll
        for (int j = 0; j < MOE_GV_J8; j++) {
            bool ok = c0 + j < g1;
            int kb = (c0 + j) * FP8_G + 16 * q;
#pragma unroll
            for (int h = 0; h < 2; h++) {
                a[j][h][0] = ok ? fp8_ld16(lo, kb + 64 * h, K, vec) : make_uint4(0, 0, 0, 0);
                a[j][h][1] = ok ? fp8_ld16(hi, kb + 64 * h, K, vec) : make_uint4(0, 0, 0, 0);
            }
            sa[j] = ok ? slo[c0 + j] : 0.0f;
            sb[j] = ok ? shi[c0 + j] : 0.0f;
        }
#pragma unroll
        for (int j = 0; j < MOE_GV_J8; j++) {
            if (c0 + j >= g1) break;
            int kb = (c0 + j) * FP8_G + 16 * q;
            uint4 b[2];
#pragma unroll
            for (int h = 0; h < 2; h++) b[h] = *(const uint4 *)(xq + g * qld + kb + 64 * h);
            fp8_group_acc(c, a[j], b, sxq[2 * q * G + c0 + j], sxq[(2 * q + 1) * G + c0 + j], sa[j], sb[j]);
        }
    }
}

// Item range of this block: items are (pass, tile), pass-major (passes
// slot-major), so a block's consecutive items mostly share the pass and its
// loaded vectors; every item is one pass of at most MOE_GV_NT tokens over
// one tile, so equal ranges are equal work even when one expert has many
// tokens (Coder-Next's fused shared expert has every token: at 64 tokens,
// items of (slot, tile) put its 8 passes on a tile into one block's range).
__device__ __forceinline__ void moe_gv_items(int n_items, int *lo, int *hi)
{
    *lo = (int)((int64_t)blockIdx.x * n_items / gridDim.x);
    *hi = (int)((int64_t)(blockIdx.x + 1) * n_items / gridDim.x);
}

typedef struct moe_gv_args {
    cu_mat x, out;
    int x_vec; // x rows allow cu_ld8
    const int32_t *ids;
    int64_t ids_ld, w_ld;
    const float *w;
    int T, k, E, H, I;
    const void *gu, *dn;  // bf16, or FP8 codes with the scales below
    int64_t gu_es, dn_es; // expert strides (elements)
    int64_t gu_ld, dn_ld; // row strides (elements)
    // FP8: per-row scales [E][rows][G] (expert and row strides in floats);
    // w8_vec: the weight rows take 16-byte loads (fp8_ld16)
    const float *gus, *dns;
    int64_t gus_es, dns_es, gus_ld, dns_ld;
    int w8_vec;
    const uint8_t *xq8, *aq8; // FP8: x and act quantized (cu_fp8_quant)
    const float *sx8, *sa8;   // and their scales, token-major
    void *act;            // [P, I]: bf16, or f32 (FP8: quantized for down)
    float *y;             // [P, H]
    int32_t *done;        // [down row tiles] items finished, over all experts
} moe_gv_args;

// The K-split tile of this block's warps for one item and token group:
// warp w takes 16-row group rg = w / KW and slice w % KW of the n units of K
// (32-wide chunks, or FP8 groups): tile(rg, u0, u1, c) adds its units'
// products; the sums of the slices land, in warp order, in every lane of
// the group's first warp: rows g, g+8 x tokens 2q, 2q+1. Returns whether
// this warp holds a result.
template <int RW, class Tile> __device__ bool moe_gv_block_tile(int n, Tile tile, float *red, float (&c)[4])
{
    constexpr int KW = MOE_GV_WARPS / RW;
    int warp = threadIdx.x >> 5, rg = warp / KW, ks = warp % KW, per = (n + KW - 1) / KW;
    c[0] = c[1] = c[2] = c[3] = 0.0f;
    tile(rg, ks * per, min(n, (ks + 1) * per), c);
    if (KW == 1) return true;
    *(float4 *)(red + 4 * threadIdx.x) = make_float4(c[0], c[1], c[2], c[3]);
    __syncthreads();
    bool mine = ks == 0;
    if (mine)
        for (int s = 1; s < KW; s++) {
            float4 v = *(const float4 *)(red + 4 * (threadIdx.x + 32 * s));
            c[0] += v.x, c[1] += v.y, c[2] += v.z, c[3] += v.w;
        }
    __syncthreads(); // red is reused by the next tile
    return mine;
}

// Loads the vectors of nt pairs (load8(t, c, f): 8 floats at column c of
// pair t's vector) into xs as bf16; tokens nt..7 and the padding are zero.
template <class L> __device__ void moe_gv_load(__nv_bfloat16 *xs, int K, int nt, L load8)
{
    int xld = moe_gv_xld(K), nch = xld / 8;
    for (int i = threadIdx.x; i < MOE_GV_NT * nch; i += blockDim.x) {
        int t = i / nch, c = 8 * (i % nch);
        float f[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        if (t < nt && c < K) load8(t, c, f);
        uint4 u;
        __nv_bfloat162 *h = (__nv_bfloat162 *)&u;
#pragma unroll
        for (int j = 0; j < 4; j++)
            h[j] = __floats2bfloat162_rn(f[2 * j], f[2 * j + 1]);
        *(uint4 *)(xs + t * xld + c) = u;
    }
}

// FP8: the codes and scales of nt pairs' rows src_row(t) of q [rows, G·128]
// and s [rows, G] (quantized by cu_fp8_quant before the kernel; quantizing
// in the blocks, once per block and pass, cost 0.53 ms a 30B-A3B layer at 64
// tokens when the routing piled tokens on a few experts, NOTES.md v21) into
// xq (pitch moe_gv_qld) and sxq [t·G + g]. Rows nt..7 keep what they held:
// their products land in accumulator columns nobody stores.
template <class R>
__device__ void moe_gv_load_f8(uint8_t *xq, float *sxq, const uint8_t *q, const float *s, int K, int nt, R src_row)
{
    int G = fp8_groups(K), qld = moe_gv_qld(K), n16 = G * FP8_G / 16;
    for (int i = threadIdx.x; i < nt * n16; i += blockDim.x) {
        int t = i / n16, c = i % n16;
        *(uint4 *)(xq + t * qld + 16 * c) = ((const uint4 *)(q + (int64_t)src_row(t) * G * FP8_G))[c];
    }
    for (int i = threadIdx.x; i < nt * G; i += blockDim.x)
        sxq[i] = s[(int64_t)src_row(i / G) * G + i % G];
}

// The warps' tiles for the K reduction, right after the plan in smem (the
// vectors follow them).
__device__ __forceinline__ float *moe_gv_red(int *sm, const moe_gv_args &a)
{
    return (float *)((char *)sm + moe_gv_plan_bytes(a.T * a.k, a.E));
}

// Calls tile_fn(tile, e, pairs + p0, nt) for each of the block's items (one
// pass of nt <= MOE_GV_NT pairs from p0 of expert e, one tile), with the
// pass's vectors loaded by load(pairs + p0, nt) (moe_gv_load, moe_gv_load_f8)
// when they are not there yet, then done_fn(tile).
template <class L, class F, class D>
__device__ void moe_gv_for_items(const moe_gv_plan &p, int tiles, L load, F tile_fn, D done_fn)
{
    int lo, hi, have = -1;
    moe_gv_items(p.n_passes * tiles, &lo, &hi);
    if (lo >= hi) return;
    // the slot of the first item: the last s with pass0[s] <= its pass (block-uniform)
    int slot = 0, first = lo / tiles;
    for (int l = 0, h = p.n_active - 1; l <= h;) {
        int m = (l + h) / 2;
        if (p.pass0[m] <= first) slot = m, l = m + 1;
        else h = m - 1;
    }
    for (int it = lo; it < hi; it++) {
        int pass = it / tiles, tile = it % tiles;
        while (pass >= p.pass0[slot + 1]) slot++;
        int e = p.slot_e[slot], p0 = (pass - p.pass0[slot]) * MOE_GV_NT, nt = min(MOE_GV_NT, p.cnt[e] - p0);
        const int *pr = p.pairs + p.off[e];
        if (pass != have) { // block-uniform
            __syncthreads();
            load(pr + p0, nt);
            __syncthreads();
            have = pass;
        }
        tile_fn(tile, e, pr + p0, nt);
        done_fn(tile);
    }
}

// The vectors an item multiplies, after the plan and the reduction tiles:
// bf16 rows (moe_gv_load), or FP8 codes then their scales (moe_gv_load_f8)
struct moe_gv_vecs {
    __nv_bfloat16 *xs;
    uint8_t *xq;
    float *sxq;
};
__device__ __forceinline__ moe_gv_vecs moe_gv_vecs_of(float *red, int K)
{
    moe_gv_vecs v;
    v.xs = (__nv_bfloat16 *)(red + MOE_GV_THREADS * 4);
    v.xq = (uint8_t *)v.xs;
    v.sxq = (float *)(v.xq + MOE_GV_NT * moe_gv_qld(K));
    return v;
}

// One warp's slice of an item: weight rows lo / hi of W (row stride ld; FP8:
// scales S, row stride sld) times the loaded vectors over units [u0, u1) of
// K: 32-wide chunks (bf16) or groups (FP8).
template <bool F8>
__device__ __forceinline__ void moe_gv_slice(const void *W, int64_t ld, const float *S, int64_t sld, int64_t lo,
                                             int64_t hi, int K, int vec, int u0, int u1, const moe_gv_vecs &v,
                                             float (&c)[4])
{
    if constexpr (F8) {
        const uint8_t *w = (const uint8_t *)W;
        moe_gv_tile_f8(w + lo * ld, w + hi * ld, S + lo * sld, S + hi * sld, K, vec, u0, u1, v.xq, moe_gv_qld(K),
                       v.sxq, fp8_groups(K), c);
    } else {
        const __nv_bfloat16 *w = (const __nv_bfloat16 *)W;
        moe_gv_tile(w + lo * ld, w + hi * ld, K, u0, u1, v.xs, moe_gv_xld(K), c);
    }
}

// Units of K a slice splits: 32-wide chunks, or FP8 groups
template <bool F8> __host__ __device__ __forceinline__ int moe_gv_units(int K)
{
    return F8 ? fp8_groups(K) : (K + 31) / 32;
}

// Expert e's weights: bf16 elements or FP8 bytes
template <bool F8> __device__ __forceinline__ const void *moe_gv_expert(const void *W, int64_t es, int e)
{
    return (const char *)W + e * es * (F8 ? 1 : 2);
}

template <bool F8>
__global__ void __launch_bounds__(MOE_GV_THREADS, MOE_GV_BLOCKS_PER_SM)
    k_moe_gv_glu(moe_gv_args a, int n_down_tiles)
{
    extern __shared__ __align__(16) int moe_sm[];
    // nothing is read or written before the wait (the plan reads ids); the
    // down kernel's blocks may start (and plan) as this grid's retire
    cu_pdl_wait();
    cu_pdl_trigger();
    if (blockIdx.x == 0) // the down kernel's counters
        for (int i = threadIdx.x; i < n_down_tiles; i += blockDim.x)
            a.done[i] = 0;
    moe_gv_plan p = moe_gv_make_plan(a.ids, a.ids_ld, a.T, a.k, a.E, moe_sm);
    float *red = moe_gv_red(moe_sm, a);
    moe_gv_vecs v = moe_gv_vecs_of(red, a.H);
    constexpr int RW = moe_gv_glu_rw<F8>(), RT = 8 * RW; // columns a tile: gate rows g, up rows g+8
    int tiles = (a.I + RT - 1) / RT, lane = threadIdx.x & 31;
    moe_gv_for_items(
        p, tiles,
        [&](const int *pr, int nt) {
            if constexpr (F8) {
                moe_gv_load_f8(v.xq, v.sxq, a.xq8, a.sx8, a.H, nt, [&](int t) { return pr[t] / a.k; });
            } else {
                moe_gv_load(v.xs, a.H, nt, [&](int t, int c, float *f) {
                    int64_t tok = pr[t] / a.k;
                    if (a.x_vec)
                        cu_ld8(a.x, tok, c, f);
                    else
                        for (int j = 0; j < 8; j++)
                            f[j] = cu_mat_ld(a.x, tok, c + j);
                });
            }
        },
        [&](int tile, int e, const int *pr, int nt) {
            float c[4];
            auto slice = [&](int rg, int u0, int u1, float (&cc)[4]) {
                int64_t n = min(tile * RT + rg * 8 + (lane >> 2), a.I - 1); // past the edge: dropped
                moe_gv_slice<F8>(moe_gv_expert<F8>(a.gu, a.gu_es, e), a.gu_ld, a.gus + e * a.gus_es, a.gus_ld, n,
                                 a.I + n, a.H, a.w8_vec, u0, u1, v, cc);
            };
            if (!moe_gv_block_tile<RW>(moe_gv_units<F8>(a.H), slice, red, c)) return;
            int rg = (threadIdx.x >> 5) / (MOE_GV_WARPS / RW);
            int n = tile * RT + rg * 8 + (lane >> 2), t = 2 * (lane & 3);
            if (n >= a.I) return;
            for (int u = 0; u < 2; u++)
                if (t + u < nt) {
                    float h = c[u] / (1.0f + expf(-c[u])) * c[2 + u];
                    int64_t i = (int64_t)pr[t + u] * a.I + n;
                    if constexpr (F8) ((float *)a.act)[i] = h;
                    else ((__nv_bfloat16 *)a.act)[i] = __float2bfloat16_rn(h);
                }
        },
        [](int) {});
}

template <bool F8>
__global__ void __launch_bounds__(MOE_GV_THREADS, MOE_GV_BLOCKS_PER_SM) k_moe_gv_down(moe_gv_args a)
{
    extern __shared__ __align__(16) int moe_sm[];
    __shared__ int last;
    moe_gv_plan p = moe_gv_make_plan(a.ids, a.ids_ld, a.T, a.k, a.E, moe_sm);
    float *red = moe_gv_red(moe_sm, a);
    moe_gv_vecs v = moe_gv_vecs_of(red, a.I);
    constexpr int RW = moe_gv_down_rw<F8>(), RT = 16 * RW;
    int tiles = (a.H + RT - 1) / RT, lane = threadIdx.x & 31;
    // act and the counters come from the glu kernel
    cu_pdl_wait();
    cu_pdl_trigger();
    moe_gv_for_items(
        p, tiles,
        [&](const int *pr, int nt) {
            if constexpr (F8) {
                moe_gv_load_f8(v.xq, v.sxq, a.aq8, a.sa8, a.I, nt, [&](int t) { return pr[t]; });
            } else {
                moe_gv_load(v.xs, a.I, nt, [&](int t, int c, float *f) {
                    uint4 u = *(const uint4 *)((const __nv_bfloat16 *)a.act + (int64_t)pr[t] * a.I + c);
                    const __nv_bfloat162 *h = (const __nv_bfloat162 *)&u;
                    for (int j = 0; j < 4; j++) {
                        float2 fv = __bfloat1622float2(h[j]);
                        f[2 * j] = fv.x, f[2 * j + 1] = fv.y;
                    }
                });
            }
        },
        [&](int tile, int e, const int *pr, int nt) {
            float c[4];
            auto slice = [&](int rg, int u0, int u1, float (&cc)[4]) {
                int r = tile * RT + rg * 16 + (lane >> 2);
                moe_gv_slice<F8>(moe_gv_expert<F8>(a.dn, a.dn_es, e), a.dn_ld, a.dns + e * a.dns_es, a.dns_ld,
                                 min(r, a.H - 1), min(r + 8, a.H - 1), a.I, a.w8_vec, u0, u1, v, cc);
            };
            if (!moe_gv_block_tile<RW>(moe_gv_units<F8>(a.I), slice, red, c)) return;
            int rg = (threadIdx.x >> 5) / (MOE_GV_WARPS / RW);
            int r = tile * RT + rg * 16 + (lane >> 2), t = 2 * (lane & 3);
            for (int h = 0; h < 2; h++)
                for (int u = 0; u < 2; u++)
                    if (t + u < nt && r + 8 * h < a.H)
                        a.y[(int64_t)pr[t + u] * a.H + r + 8 * h] = c[2 * h + u];
        },
        [&](int tile) {
            // The block finishing a row tile's last item (over all experts)
            // sums its rows for every token, in pair order. Per item, so
            // these sums spread over the kernel instead of piling up at its
            // end (measured: batching them per block cost 10 % at T=64).
            __threadfence();
            __syncthreads();
            if (threadIdx.x == 0) last = atomicAdd(&a.done[tile], 1) == p.n_passes - 1;
            __syncthreads();
            if (!last) return;
            __threadfence();
            int r0 = tile * RT, nr = min(RT, a.H - r0);
            for (int i = threadIdx.x; i < a.T * nr; i += blockDim.x) {
                int t = i / nr, col = r0 + i % nr;
                // 4 terms a batch: 8 spilled (the kernel's register bound)
                float s = cu_wsum<4>(a.w + (int64_t)t * a.w_ld, a.k,
                                     [&](int j) { return __ldcg(a.y + ((int64_t)t * a.k + j) * a.H + col); });
                cu_mat_st(a.out, t, col, s);
            }
        });
}

// Whether the few-token path takes this call; it needs the plan and
// MOE_GV_NT vectors of H (glu) and of I (down) in shared memory.
static int moe_gv_fits(cu_backend *b, int64_t P, int E, int64_t H, int64_t I, bool f8)
{
    if (P > MOE_GV_MAX_PAIRS || E > MOE_GV_MAX_E) return 0;
    int max_smem = 0;
    CU_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, b->device));
    return moe_gv_smem(P, E, H, f8) <= (size_t)max_smem && moe_gv_smem(P, E, I, f8) <= (size_t)max_smem;
}

// The two kernels over the experts gate_up [E, 2I, H] and down [E, H, I]
// (bf16, or FP8 codes with per-row scales gus [E, 2I, GH], dns [E, H, GI]).
template <bool F8>
static void moe_gv_run(cu_backend *b, const sl_tensor *out, const sl_tensor *x, const sl_tensor *ids,
                       const sl_tensor *weights, const sl_tensor *gate_up, const sl_tensor *gus,
                       const sl_tensor *down, const sl_tensor *dns)
{
    moe_gv_args a;
    memset(&a, 0, sizeof a);
    a.x = cu_mat_of(x);
    a.out = cu_mat_of(out);
    a.x_vec = cu_mat_vec_ok(a.x);
    a.ids = (const int32_t *)ids->data;
    a.ids_ld = sl_tensor_ld(ids);
    a.w = (const float *)weights->data;
    a.w_ld = sl_tensor_ld(weights);
    a.T = (int)sl_tensor_rows(x);
    a.k = (int)sl_tensor_cols(ids);
    a.E = (int)gate_up->ne[0];
    a.H = (int)sl_tensor_cols(x);
    a.I = (int)down->ne[2];
    a.gu = gate_up->data;
    a.dn = down->data;
    a.gu_es = gate_up->st[0];
    a.dn_es = down->st[0];
    a.gu_ld = gate_up->st[1];
    a.dn_ld = down->st[1];
    if (F8) {
        a.gus = (const float *)gus->data;
        a.dns = (const float *)dns->data;
        a.gus_es = gus->st[0];
        a.dns_es = dns->st[0];
        a.gus_ld = gus->st[1];
        a.dns_ld = dns->st[1];
        a.w8_vec = a.H % 16 == 0 && a.I % 16 == 0 && a.gu_ld % 16 == 0 && a.dn_ld % 16 == 0 &&
                   a.gu_es % 16 == 0 && a.dn_es % 16 == 0 && (uintptr_t)a.gu % 16 == 0 && (uintptr_t)a.dn % 16 == 0;
    }
    int64_t P = (int64_t)a.T * a.k, slots = P < a.E ? P : a.E;
    constexpr int GRT = 8 * moe_gv_glu_rw<F8>(), DRT = 16 * moe_gv_down_rw<F8>();
    int64_t glu_tiles = (a.I + GRT - 1) / GRT, down_tiles = (a.H + DRT - 1) / DRT;
    // one scratch block: act (bf16; f32 for FP8, quantized from there as
    // the CPU op does), y, counters; FP8: the codes and scales of x and act
    int GH = fp8_groups(a.H), GI = fp8_groups(a.I);
    auto al = [](size_t n) { return (n + 255) & ~(size_t)255; };
    size_t act_b = al((F8 ? sizeof(float) : sizeof(__nv_bfloat16)) * (size_t)(P * a.I));
    size_t y_b = al(sizeof(float) * (size_t)(P * a.H)), done_b = al(sizeof(int32_t) * (size_t)down_tiles);
    size_t xq_b = F8 ? al((size_t)a.T * GH * FP8_G) : 0, sx_b = F8 ? al(sizeof(float) * (size_t)a.T * GH) : 0;
    size_t aq_b = F8 ? al((size_t)P * GI * FP8_G) : 0, sa_b = F8 ? al(sizeof(float) * (size_t)P * GI) : 0;
    char *tmp = (char *)cu_tmp_alloc(b, act_b + y_b + done_b + xq_b + sx_b + aq_b + sa_b);
    a.act = tmp;
    a.y = (float *)(tmp + act_b);
    a.done = (int32_t *)(tmp + act_b + y_b);
    char *q = tmp + act_b + y_b + done_b;
    a.xq8 = (const uint8_t *)q;
    a.sx8 = (const float *)(q + xq_b);
    a.aq8 = (const uint8_t *)(q + xq_b + sx_b);
    a.sa8 = (const float *)(q + xq_b + sx_b + aq_b);
    // one wave: blocks share the items (their number is known on the device only)
    int64_t wave = (int64_t)b->n_sm * MOE_GV_BLOCKS_PER_SM;
    size_t s1 = moe_gv_smem(P, a.E, a.H, F8), s2 = moe_gv_smem(P, a.E, a.I, F8);
    cudaFuncAttribute smem_attr = cudaFuncAttributeMaxDynamicSharedMemorySize;
    CU_CHECK(cudaFuncSetAttribute(k_moe_gv_glu<F8>, smem_attr, (int)s1));
    CU_CHECK(cudaFuncSetAttribute(k_moe_gv_down<F8>, smem_attr, (int)s2));
    // items: (pass, tile); at most min(P, slots + P / MOE_GV_NT) passes
    int64_t passes = slots + P / MOE_GV_NT < P ? slots + P / MOE_GV_NT : P;
    unsigned g1 = (unsigned)(wave < passes * glu_tiles ? wave : passes * glu_tiles);
    unsigned g2 = (unsigned)(wave < passes * down_tiles ? wave : passes * down_tiles);
    if (F8) cu_fp8_quant(b, a.x, a.H, a.T, (uint8_t *)a.xq8, (float *)a.sx8);
    cu_launch(b, k_moe_gv_glu<F8>, g1, MOE_GV_THREADS, s1, a, (int)down_tiles);
    if (F8) {
        cu_mat act = {a.act, SL_DTYPE_F32, P, a.I, a.I};
        cu_fp8_quant(b, act, a.I, (int)P, (uint8_t *)a.aq8, (float *)a.sa8);
    }
    cu_launch(b, k_moe_gv_down<F8>, g2, MOE_GV_THREADS, s2, a);
    cu_tmp_free(b, tmp);
}

int cu_moe_experts_fp8_gv(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *ids,
                          const sl_tensor *weights, const sl_tensor *gate_up, const sl_tensor *gate_up_scale,
                          const sl_tensor *down, const sl_tensor *down_scale)
{
    cu_backend *b = cu_be(be);
    int64_t T = sl_tensor_rows(x), H = sl_tensor_cols(x), I = down->ne[2];
    if (!moe_gv_fits(b, T * sl_tensor_cols(ids), (int)gate_up->ne[0], H, I, true)) return 0;
    moe_gv_run<true>(b, out, x, ids, weights, gate_up, gate_up_scale, down, down_scale);
    return 1;
}

void cu_moe_experts(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *ids,
                    const sl_tensor *weights, const sl_tensor *gate_up, const sl_tensor *down)
{
    cu_backend *b = cu_be(be);
    SL_ASSERT(gate_up->dtype == SL_DTYPE_BF16 && down->dtype == SL_DTYPE_BF16);
    int64_t T = sl_tensor_rows(x), H = sl_tensor_cols(x), I = down->ne[2];
    int E = (int)gate_up->ne[0], k = (int)sl_tensor_cols(ids);
    SL_ASSERT(H % 8 == 0 && I % 8 == 0);
    if (T == 0) return;
    int64_t P = T * k;
    if (moe_gv_fits(b, P, E, H, I, false)) {
        moe_gv_run<false>(b, out, x, ids, weights, gate_up, NULL, down, NULL);
        return;
    }
    const int32_t *idp = (const int32_t *)ids->data;
    int64_t id_ld = sl_tensor_ld(ids);
    cu_moe_plan p;
    cu_moe_plan_make(b, &p, idp, id_ld, T, k, E, MOE_BM, 0);
    __nv_bfloat16 *xs = (__nv_bfloat16 *)cu_tmp_alloc(b, sizeof(__nv_bfloat16) * (size_t)(P * H));
    __nv_bfloat16 *act = (__nv_bfloat16 *)cu_tmp_alloc(b, sizeof(__nv_bfloat16) * (size_t)(P * I));
    float *y = (float *)cu_tmp_alloc(b, sizeof(float) * (size_t)(P * H));

    k_moe_gather<<<(unsigned)P, 256, 0, b->stream>>>(xs, cu_mat_of(x), idp, id_ld, k, p);
    CU_CHECK_LAUNCH();
    dim3 g1(cu_blocks(I, MOE_BN), (unsigned)p.max_tiles);
    k_moe_gemm<true><<<g1, MOE_THREADS, 0, b->stream>>>(xs, (const __nv_bfloat16 *)gate_up->data,
                                                        gate_up->st[0], act, SL_DTYPE_BF16,
                                                        (int)I, (int)H, p);
    CU_CHECK_LAUNCH();
    dim3 g2(cu_blocks(H, MOE_BN), (unsigned)p.max_tiles);
    k_moe_gemm<false><<<g2, MOE_THREADS, 0, b->stream>>>(act, (const __nv_bfloat16 *)down->data,
                                                         down->st[0], y, SL_DTYPE_F32, (int)H,
                                                         (int)I, p);
    CU_CHECK_LAUNCH();
    cu_moe_combine_run(b, cu_mat_of(out), y, (const float *)weights->data, sl_tensor_ld(weights), k, &p);
    cu_moe_plan_free(b, &p);
    cu_tmp_free(b, xs);
    cu_tmp_free(b, act);
    cu_tmp_free(b, y);
}

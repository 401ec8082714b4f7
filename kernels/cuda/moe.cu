// kernels/cuda/moe.cu: routing (one warp per token) and the expert FFNs as
// grouped GEMMs over the active experts, all on the device (no host sync):
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

#include "moe.cuh"

// ---- routing --------------------------------------------------------------------

__global__ void k_moe_route(cu_mat logits, int32_t *ids, int64_t ids_ld, float *w, int64_t w_ld,
                            int k, int norm)
{
    extern __shared__ float sp[];
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    int64_t t = (int64_t)blockIdx.x * (blockDim.x >> 5) + wid;
    if (t >= logits.rows) return;
    int E = (int)logits.cols;
    float *p = sp + (size_t)wid * E;
    float mx = -INFINITY;
    for (int e = lane; e < E; e += 32) {
        p[e] = cu_mat_ld(logits, t, e);
        mx = fmaxf(mx, p[e]);
    }
    mx = cu_warp_max(mx);
    float sum = 0.0f;
    for (int e = lane; e < E; e += 32) {
        p[e] = expf(p[e] - mx);
        sum += p[e];
    }
    sum = cu_warp_sum(sum);
    for (int e = lane; e < E; e += 32) p[e] /= sum;
    __syncwarp();
    float tot = 0.0f, mine = 0.0f;
    for (int j = 0; j < k; j++) {
        float bv = -1.0f;
        int bi = 0x7fffffff;
        for (int e = lane; e < E; e += 32)
            if (p[e] >= 0.0f && p[e] > bv) {
                bv = p[e];
                bi = e;
            }
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (ov > bv || (ov == bv && oi < bi)) {
                bv = ov;
                bi = oi;
            }
        }
        tot += bv;
        if (lane == j) mine = bv;
        if (lane == 0) {
            ids[t * ids_ld + j] = bi;
            p[bi] = -1.0f;
        }
        __syncwarp();
    }
    // k <= 32 holders: lane j keeps weight j
    for (int j = lane; j < k; j += 32) w[t * w_ld + j] = norm ? mine / tot : mine;
}

void cu_moe_route(sl_backend *be, sl_tensor *ids, sl_tensor *weights, const sl_tensor *logits,
                  int k, int norm)
{
    cu_backend *b = cu_be(be);
    cu_mat L = cu_mat_of(logits);
    SL_ASSERT(L.cols <= 1024 && k <= 32);
    if (L.rows == 0) return;
    size_t smem = sizeof(float) * 8 * (size_t)L.cols;
    k_moe_route<<<cu_blocks(L.rows, 8), 256, smem, b->stream>>>(
        L, (int32_t *)ids->data, sl_tensor_ld(ids), (float *)weights->data, sl_tensor_ld(weights),
        k, norm);
    CU_CHECK_LAUNCH();
}

// ---- expert FFNs -----------------------------------------------------------------

#define MOE_BM 64
#define MOE_BN 64
#define MOE_BK 32
#define MOE_THREADS 128
#define MOE_STAGES 3

typedef struct cu_moe_plan {
    int32_t *count;   // [E]
    int32_t *offset;  // [E+1]
    int32_t *rank;    // [T*k] rank of pair (t,j) within its expert
    int32_t *pos;     // [T*k] row of pair (t,j) in the permuted order
    int32_t *n_tiles; // [1]
    int2 *tiles;      // [max_tiles] (expert, first row within the expert)
} cu_moe_plan;

__global__ void k_moe_count(const int32_t *ids, int64_t ld, int64_t T, int k, cu_moe_plan p)
{
    int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i >= T * k) return;
    int e = ids[(i / k) * ld + i % k];
    p.rank[i] = atomicAdd(&p.count[e], 1);
}

__global__ void k_moe_plan(int E, cu_moe_plan p)
{
    if (threadIdx.x != 0) return;
    int off = 0, nt = 0;
    for (int e = 0; e < E; e++) {
        p.offset[e] = off;
        for (int m0 = 0; m0 < p.count[e]; m0 += MOE_BM) p.tiles[nt++] = make_int2(e, m0);
        off += p.count[e];
    }
    p.offset[E] = off;
    *p.n_tiles = nt;
}

__global__ void k_moe_gather(__nv_bfloat16 *xs, cu_mat x, const int32_t *ids, int64_t ld, int k,
                             cu_moe_plan p)
{
    int64_t i = blockIdx.x, t = i / k;
    int e = ids[t * ld + i % k];
    int64_t row = p.offset[e] + p.rank[i];
    if (threadIdx.x == 0) p.pos[i] = (int32_t)row;
    for (int64_t c = threadIdx.x; c < x.cols; c += blockDim.x)
        xs[row * x.cols + c] = __float2bfloat16_rn(cu_mat_ld(x, t, c));
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
        float acc = 0.0f;
        for (int j = 0; j < k; j++) acc += w[t * w_ld + j] * y[p.pos[t * k + j] * out.cols + c];
        cu_mat_st(out, t, c, acc);
    }
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
    int64_t P = T * k, max_tiles = (P + MOE_BM - 1) / MOE_BM + E;
    const int32_t *idp = (const int32_t *)ids->data;
    int64_t id_ld = sl_tensor_ld(ids);
    cu_moe_plan p;
    int32_t *ints = (int32_t *)cu_tmp_alloc(b, sizeof(int32_t) * (size_t)(2 * E + 2 + 2 * P + 2 * max_tiles + 2));
    p.count = ints;
    p.offset = p.count + E;
    p.n_tiles = p.offset + E + 1;
    p.rank = p.n_tiles + 1;
    p.pos = p.rank + P;
    p.tiles = (int2 *)(((uintptr_t)(p.pos + P) + 7) & ~(uintptr_t)7);
    __nv_bfloat16 *xs = (__nv_bfloat16 *)cu_tmp_alloc(b, sizeof(__nv_bfloat16) * (size_t)(P * H));
    __nv_bfloat16 *act = (__nv_bfloat16 *)cu_tmp_alloc(b, sizeof(__nv_bfloat16) * (size_t)(P * I));
    float *y = (float *)cu_tmp_alloc(b, sizeof(float) * (size_t)(P * H));

    CU_CHECK(cudaMemsetAsync(p.count, 0, sizeof(int32_t) * (size_t)E, b->stream));
    k_moe_count<<<cu_blocks(P, 256), 256, 0, b->stream>>>(idp, id_ld, T, k, p);
    CU_CHECK_LAUNCH();
    k_moe_plan<<<1, 32, 0, b->stream>>>(E, p);
    CU_CHECK_LAUNCH();
    k_moe_gather<<<(unsigned)P, 256, 0, b->stream>>>(xs, cu_mat_of(x), idp, id_ld, k, p);
    CU_CHECK_LAUNCH();
    dim3 g1(cu_blocks(I, MOE_BN), (unsigned)max_tiles);
    k_moe_gemm<true><<<g1, MOE_THREADS, 0, b->stream>>>(xs, (const __nv_bfloat16 *)gate_up->data,
                                                        gate_up->st[0], act, SL_DTYPE_BF16,
                                                        (int)I, (int)H, p);
    CU_CHECK_LAUNCH();
    dim3 g2(cu_blocks(H, MOE_BN), (unsigned)max_tiles);
    k_moe_gemm<false><<<g2, MOE_THREADS, 0, b->stream>>>(act, (const __nv_bfloat16 *)down->data,
                                                         down->st[0], y, SL_DTYPE_F32, (int)H,
                                                         (int)I, p);
    CU_CHECK_LAUNCH();
    k_moe_combine<<<cu_row_grid(T, H), 256, 0, b->stream>>>(cu_mat_of(out), y,
                                                             (const float *)weights->data,
                                                             sl_tensor_ld(weights), k, p);
    CU_CHECK_LAUNCH();
    cu_tmp_free(b, ints);
    cu_tmp_free(b, xs);
    cu_tmp_free(b, act);
    cu_tmp_free(b, y);
}

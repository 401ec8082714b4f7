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

// ---- expert FFNs for few tokens (decode) ----------------------------------------
//
// With a few pairs per expert the FFNs are GEMVs that stream each active
// expert's weights once; the grouped GEMM above gets too few tiles for that
// (8 experts x 12 column tiles at one token). Two kernels, each a single
// wave of blocks that share the work items (active expert, tile) evenly:
//   glu   act[i] = silu(gate_e x_t) ⊙ (up_e x_t)   i = (t, j), 16 columns a tile
//   down  y[i] = down_e act[i]                      32 rows a tile; the block
//         finishing a row tile's last item writes out[t] = Σ_j w[t,j] y[t,j]
//         for those rows (fixed order, no float atomics: deterministic)
// Every block plans from ids alone (the pairs of each active expert, in
// shared memory), so the routing never leaves the device and no planning
// kernel runs in between. A warp owns a few weight rows; lanes take
// 16-byte chunks of a row, several in flight, and reuse each chunk for up
// to MOE_GV_NT of the expert's tokens whose vectors sit in shared memory
// (fp32, fp32 accumulation). An expert with more tokens goes over its
// tile again per group of MOE_GV_NT (from L2).

#ifndef MOE_GV_MAX_PAIRS
#define MOE_GV_MAX_PAIRS 1024 // up to this many (token, expert) pairs
#endif
#ifndef MOE_GV_COLS
#define MOE_GV_COLS 2 // glu: columns a warp owns (gate and up rows of each)
#endif
#ifndef MOE_GV_ROWS
#define MOE_GV_ROWS 4 // down: rows a warp owns
#endif
#define MOE_GV_WARPS 8
#define MOE_GV_THREADS (MOE_GV_WARPS * 32)
#define MOE_GV_NT 8       // tokens sharing one pass over a weight tile
#define MOE_GV_MAX_E 1024 // experts the plan can hold

// The routing as every block sees it (shared memory): active experts in
// ascending id, and per expert its pairs (t*k + j) in off[e] .. off[e]+cnt[e].
typedef struct moe_gv_plan {
    int n_active;
    int *slot_e;  // [n_active] expert of each slot
    int *off;     // [E]
    int *cnt;     // [E]
    int *pairs;   // [P] pair indices grouped by expert
} moe_gv_plan;

// Exclusive prefix sums over val(0..n-1): sink(i, prefix) for each i;
// returns the total. All threads of the block call it.
template <class V, class S>
__device__ int moe_block_scan(int n, V val, S sink)
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

// Builds the plan in smem (see moe_gv_smem for the layout). The order of
// pairs within an expert depends on shared-memory atomics, but each pair's
// result does not depend on its position, so outputs stay deterministic.
__device__ moe_gv_plan moe_gv_make_plan(const int32_t *ids, int64_t ld, int T, int k, int E,
                                        int *sm)
{
    int P = T * k;
    moe_gv_plan p;
    p.slot_e = sm;
    p.off = sm + E;
    p.cnt = p.off + E;
    p.pairs = p.cnt + E;
    int *sid = p.pairs + P, *rank = sid + P;
    for (int e = threadIdx.x; e < E; e += blockDim.x) p.cnt[e] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < P; i += blockDim.x) {
        int e = ids[(int64_t)(i / k) * ld + i % k];
        sid[i] = e;
        rank[i] = atomicAdd(&p.cnt[e], 1);
    }
    __syncthreads();
    p.n_active = moe_block_scan(E, [&](int e) { return p.cnt[e] > 0 ? 1 : 0; },
                                [&](int e, int s) { if (p.cnt[e] > 0) p.slot_e[s] = e; });
    moe_block_scan(E, [&](int e) { return p.cnt[e]; }, [&](int e, int s) { p.off[e] = s; });
    for (int i = threadIdx.x; i < P; i += blockDim.x) p.pairs[p.off[sid[i]] + rank[i]] = i;
    __syncthreads();
    return p;
}

// Shared-memory bytes: the plan (slot_e, off, cnt [E]; pairs, and while
// planning ids and ranks [P]), then MOE_GV_NT vectors of K floats.
static __host__ __device__ size_t moe_gv_smem(int64_t P, int E, int64_t K)
{
    size_t plan = sizeof(int) * (size_t)(3 * E + 3 * P);
    plan = (plan + 15) & ~(size_t)15;
    return plan + sizeof(float) * MOE_GV_NT * (size_t)K;
}

// Vectors in shared memory are split per 8-element chunk c: elements 0-3
// at v[4c], 4-7 at v[K/2 + 4c], so that lanes reading consecutive chunks
// hit consecutive 16-byte words (no bank conflicts).
__device__ __forceinline__ void moe_gv_put8(float *v, int K, int c, const float *f)
{
    *(float4 *)(v + 4 * c) = make_float4(f[0], f[1], f[2], f[3]);
    *(float4 *)(v + K / 2 + 4 * c) = make_float4(f[4], f[5], f[6], f[7]);
}

__device__ __forceinline__ uint4 moe_ld_stream(const __nv_bfloat16 *p)
{
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
    return r;
}

// acc[r][t] = row[r] · v[t] (K long) for R bf16 rows and NT vectors in the
// split layout at v + t*K; every lane gets the sums. U chunks per row are
// loaded before any is used: R*U 16-byte loads in flight per lane.
template <int R, int NT>
__device__ __forceinline__ void moe_gv_dots(const __nv_bfloat16 *const (&row)[R], int K,
                                            const float *v, float (&acc)[R][NT])
{
    constexpr int U = NT <= 2 ? 4 : NT <= 4 ? 2 : 1;
    int lane = threadIdx.x & 31, nch = K / 8;
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < NT; t++) acc[r][t] = 0.0f;
    for (int c0 = 0; c0 < nch; c0 += 32 * U) {
        uint4 w[U][R];
#pragma unroll
        for (int u = 0; u < U; u++) {
            int c = c0 + u * 32 + lane;
#pragma unroll
            for (int r = 0; r < R; r++)
                w[u][r] = c < nch ? moe_ld_stream(row[r] + 8 * c) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            int c = c0 + u * 32 + lane;
            if (c >= nch) break;
            float wf[R][8];
#pragma unroll
            for (int r = 0; r < R; r++) {
                const uint32_t *q = (const uint32_t *)&w[u][r];
#pragma unroll
                for (int h = 0; h < 4; h++) {
                    wf[r][2 * h] = __uint_as_float(q[h] << 16);
                    wf[r][2 * h + 1] = __uint_as_float(q[h] & 0xffff0000u);
                }
            }
#pragma unroll
            for (int t = 0; t < NT; t++) {
                float4 a = *(const float4 *)(v + (size_t)t * K + 4 * c);
                float4 b = *(const float4 *)(v + (size_t)t * K + K / 2 + 4 * c);
                float xv[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
                for (int r = 0; r < R; r++)
#pragma unroll
                    for (int j = 0; j < 8; j++) acc[r][t] = fmaf(wf[r][j], xv[j], acc[r][t]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < NT; t++) acc[r][t] = cu_warp_sum(acc[r][t]);
}

// Item range of this block: items are (slot, tile), slot-major, so a
// block's consecutive items mostly share the expert and its loaded vectors.
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
    const __nv_bfloat16 *gu, *dn;
    int64_t gu_es, dn_es; // expert strides (elements)
    float *act;           // [P, I]
    float *y;             // [P, H]
    int32_t *done;        // [H row tiles] items finished per down row tile
} moe_gv_args;


// The vector-group height a group of nt tokens runs with: registers and
// FMAs follow the real token count (1 at T=1).
__device__ __forceinline__ int moe_gv_ntd(int nt) { return nt <= 2 ? nt : nt <= 4 ? 4 : 8; }

// Loads the vectors of nt tokens (rows src_row(t) of a [.., K] matrix)
// into v in the split layout; rows nt .. ntd-1 are zeroed.
template <class L>
__device__ void moe_gv_load(float *v, int K, int nt, int ntd, L load8)
{
    int nch = K / 8;
    for (int i = threadIdx.x; i < ntd * nch; i += blockDim.x) {
        int t = i / nch, c = i % nch;
        float f[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        if (t < nt) load8(t, 8 * c, f);
        moe_gv_put8(v + (size_t)t * K, K, c, f);
    }
}

// One glu tile (MOE_GV_WARPS * MOE_GV_COLS columns) for a group of nt pairs.
template <int NT>
__device__ void moe_gv_glu_group(const moe_gv_args &a, const int *pairs, int nt, int e, int tile,
                                 const float *xv)
{
    constexpr int C = MOE_GV_COLS;
    int lane = threadIdx.x & 31, n0 = (tile * MOE_GV_WARPS + (threadIdx.x >> 5)) * C;
    if (n0 >= a.I) return;
    const __nv_bfloat16 *W = a.gu + e * a.gu_es, *row[2 * C];
#pragma unroll
    for (int c = 0; c < C; c++) { // past the edge: a valid row, result dropped
        int64_t n = min(n0 + c, a.I - 1);
        row[c] = W + n * a.H;
        row[C + c] = W + (a.I + n) * a.H;
    }
    float acc[2 * C][NT];
    moe_gv_dots<2 * C, NT>(row, a.H, xv, acc);
#pragma unroll
    for (int c = 0; c < C; c++)
#pragma unroll
        for (int t = 0; t < NT; t++)
            if (((c * NT + t) & 31) == lane && t < nt && n0 + c < a.I) {
                float g = acc[c][t];
                a.act[(int64_t)pairs[t] * a.I + n0 + c] = g / (1.0f + expf(-g)) * acc[C + c][t];
            }
}

// One down tile (MOE_GV_WARPS * MOE_GV_ROWS rows of H) for a group of nt pairs.
template <int NT>
__device__ void moe_gv_down_group(const moe_gv_args &a, const int *pairs, int nt, int e, int tile,
                                  const float *av)
{
    constexpr int R = MOE_GV_ROWS;
    int lane = threadIdx.x & 31, r0 = (tile * MOE_GV_WARPS + (threadIdx.x >> 5)) * R;
    if (r0 >= a.H) return;
    const __nv_bfloat16 *W = a.dn + e * a.dn_es, *row[R];
#pragma unroll
    for (int r = 0; r < R; r++) row[r] = W + (int64_t)min(r0 + r, a.H - 1) * a.I;
    float acc[R][NT];
    moe_gv_dots<R, NT>(row, a.I, av, acc);
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < NT; t++)
            if (((r * NT + t) & 31) == lane && t < nt && r0 + r < a.H)
                a.y[(int64_t)pairs[t] * a.H + r0 + r] = acc[r][t];
}

#define MOE_GV_DISPATCH(fn, ntd, ...)                                                              \
    switch (ntd) {                                                                                 \
    case 1: fn<1>(__VA_ARGS__); break;                                                             \
    case 2: fn<2>(__VA_ARGS__); break;                                                             \
    case 4: fn<4>(__VA_ARGS__); break;                                                             \
    default: fn<MOE_GV_NT>(__VA_ARGS__); break;                                                    \
    }

__global__ void __launch_bounds__(MOE_GV_THREADS, 2) k_moe_gv_glu(moe_gv_args a, int n_down_tiles)
{
    extern __shared__ __align__(16) int moe_sm[];
    if (blockIdx.x == 0) // the down kernel's counters (it runs after this one)
        for (int i = threadIdx.x; i < n_down_tiles; i += blockDim.x) a.done[i] = 0;
    moe_gv_plan p = moe_gv_make_plan(a.ids, a.ids_ld, a.T, a.k, a.E, moe_sm);
    float *xv = (float *)((char *)moe_sm + moe_gv_smem(a.T * a.k, a.E, 0));
    int tiles = (a.I + MOE_GV_WARPS * MOE_GV_COLS - 1) / (MOE_GV_WARPS * MOE_GV_COLS), lo, hi;
    moe_gv_items(p.n_active * tiles, &lo, &hi);
    int have_slot = -1, have_p0 = 0;
    for (int it = lo; it < hi; it++) {
        int slot = it / tiles, tile = it % tiles, e = p.slot_e[slot], n = p.cnt[e];
        const int *pr = p.pairs + p.off[e];
        for (int p0 = 0; p0 < n; p0 += MOE_GV_NT) {
            int nt = min(MOE_GV_NT, n - p0), ntd = moe_gv_ntd(nt);
            if (slot != have_slot || p0 != have_p0) { // block-uniform
                __syncthreads();
                moe_gv_load(xv, a.H, nt, ntd, [&](int t, int c, float *f) {
                    int64_t tok = pr[p0 + t] / a.k;
                    if (a.x_vec) cu_ld8(a.x, tok, c, f);
                    else
                        for (int j = 0; j < 8; j++) f[j] = cu_mat_ld(a.x, tok, c + j);
                });
                __syncthreads();
                have_slot = slot;
                have_p0 = p0;
            }
            MOE_GV_DISPATCH(moe_gv_glu_group, ntd, a, pr + p0, nt, e, tile, xv);
        }
    }
}

__global__ void __launch_bounds__(MOE_GV_THREADS, 2) k_moe_gv_down(moe_gv_args a)
{
    extern __shared__ __align__(16) int moe_sm[];
    __shared__ int last;
    moe_gv_plan p = moe_gv_make_plan(a.ids, a.ids_ld, a.T, a.k, a.E, moe_sm);
    float *av = (float *)((char *)moe_sm + moe_gv_smem(a.T * a.k, a.E, 0));
    constexpr int RT = MOE_GV_WARPS * MOE_GV_ROWS;
    int tiles = (a.H + RT - 1) / RT, lo, hi;
    moe_gv_items(p.n_active * tiles, &lo, &hi);
    int have_slot = -1, have_p0 = 0;
    for (int it = lo; it < hi; it++) {
        int slot = it / tiles, tile = it % tiles, e = p.slot_e[slot], n = p.cnt[e];
        const int *pr = p.pairs + p.off[e];
        for (int p0 = 0; p0 < n; p0 += MOE_GV_NT) {
            int nt = min(MOE_GV_NT, n - p0), ntd = moe_gv_ntd(nt);
            if (slot != have_slot || p0 != have_p0) {
                __syncthreads();
                moe_gv_load(av, a.I, nt, ntd, [&](int t, int c, float *f) {
                    const float4 *s = (const float4 *)(a.act + (int64_t)pr[p0 + t] * a.I + c);
                    float4 u = s[0], v = s[1];
                    f[0] = u.x, f[1] = u.y, f[2] = u.z, f[3] = u.w;
                    f[4] = v.x, f[5] = v.y, f[6] = v.z, f[7] = v.w;
                });
                __syncthreads();
                have_slot = slot;
                have_p0 = p0;
            }
            MOE_GV_DISPATCH(moe_gv_down_group, ntd, a, pr + p0, nt, e, tile, av);
        }
        // The block that finishes a row tile's last item (over all experts)
        // sums its rows for every token, in pair order.
        __threadfence();
        __syncthreads();
        if (threadIdx.x == 0) last = atomicAdd(&a.done[tile], 1) == p.n_active - 1;
        __syncthreads();
        if (!last) continue;
        __threadfence();
        int r0 = tile * RT, nr = min(RT, a.H - r0);
        for (int i = threadIdx.x; i < a.T * nr; i += blockDim.x) {
            int t = i / nr, c = r0 + i % nr;
            float s = 0.0f;
            for (int j = 0; j < a.k; j++)
                s += a.w[(int64_t)t * a.w_ld + j] * __ldcg(a.y + ((int64_t)t * a.k + j) * a.H + c);
            cu_mat_st(a.out, t, c, s);
        }
    }
}

// Grid of one wave (the occupancy of kernel fn at smem bytes), capped by
// the most items the routing can produce.
static unsigned moe_gv_grid(cu_backend *b, const void *fn, size_t smem, int64_t max_items)
{
    CU_CHECK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    int occ = 0;
    CU_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, fn, MOE_GV_THREADS, smem));
    int64_t g = (int64_t)b->n_sm * (occ > 0 ? occ : 1);
    return (unsigned)(g < max_items ? g : max_items);
}

// Whether the few-token path takes this call; it needs the plan and
// MOE_GV_NT vectors of H in shared memory.
static int moe_gv_fits(int64_t P, int E, int64_t H)
{
    if (P > MOE_GV_MAX_PAIRS || E > MOE_GV_MAX_E) return 0;
    int dev = 0, max_smem = 0;
    CU_CHECK(cudaGetDevice(&dev));
    CU_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    return moe_gv_smem(P, E, H) <= (size_t)max_smem;
}

static void moe_gv_run(cu_backend *b, moe_gv_args &a)
{
    int64_t P = (int64_t)a.T * a.k, slots = P < a.E ? P : a.E;
    int glu_tiles = (a.I + MOE_GV_WARPS * MOE_GV_COLS - 1) / (MOE_GV_WARPS * MOE_GV_COLS);
    int down_tiles = (a.H + MOE_GV_WARPS * MOE_GV_ROWS - 1) / (MOE_GV_WARPS * MOE_GV_ROWS);
    a.act = (float *)cu_tmp_alloc(b, sizeof(float) * (size_t)(P * a.I));
    a.y = (float *)cu_tmp_alloc(b, sizeof(float) * (size_t)(P * a.H));
    a.done = (int32_t *)cu_tmp_alloc(b, sizeof(int32_t) * (size_t)down_tiles);
    size_t s1 = moe_gv_smem(P, a.E, a.H), s2 = moe_gv_smem(P, a.E, a.I);
    unsigned g1 = moe_gv_grid(b, (const void *)k_moe_gv_glu, s1, slots * glu_tiles);
    unsigned g2 = moe_gv_grid(b, (const void *)k_moe_gv_down, s2, slots * down_tiles);
    k_moe_gv_glu<<<g1, MOE_GV_THREADS, s1, b->stream>>>(a, down_tiles);
    CU_CHECK_LAUNCH();
    k_moe_gv_down<<<g2, MOE_GV_THREADS, s2, b->stream>>>(a);
    CU_CHECK_LAUNCH();
    cu_tmp_free(b, a.act);
    cu_tmp_free(b, a.y);
    cu_tmp_free(b, a.done);
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
    if (moe_gv_fits(P, E, H)) {
        moe_gv_args a;
        a.x = cu_mat_of(x);
        a.out = cu_mat_of(out);
        a.x_vec = cu_mat_vec_ok(a.x);
        a.ids = (const int32_t *)ids->data;
        a.ids_ld = sl_tensor_ld(ids);
        a.w = (const float *)weights->data;
        a.w_ld = sl_tensor_ld(weights);
        a.T = (int)T;
        a.k = k;
        a.E = E;
        a.H = (int)H;
        a.I = (int)I;
        a.gu = (const __nv_bfloat16 *)gate_up->data;
        a.dn = (const __nv_bfloat16 *)down->data;
        a.gu_es = gate_up->st[0];
        a.dn_es = down->st[0];
        moe_gv_run(b, a);
        return;
    }
    int64_t max_tiles = (P + MOE_BM - 1) / MOE_BM + E;
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

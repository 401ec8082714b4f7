// kernels/cuda/fp8.cu: FP8 (e4m3, 128-wide K groups) matmuls and FP8 MoE experts,
// checked against kernels/cpu/fp8.c by tests/gpu/ops/ops_fp8.c.
//
// 1. k_fp8_quant: one warp per (token, group): s = max|x|/448, codes
//    e4m3(x/s) (s = 0: zero codes, no NaN), as the CPU op. Codes go to
//    stream-ordered scratch [M, G*128] u8 (row stride padded to whole groups,
//    the pad zero, so readers never guard K), scales [M, G] f32.
// 2. k_fp8_gemv_tc<NT> (M ≤ 8; M ≤ 16 where cuBLASLt does not run, ≤ 64 with
//    K % 16 != 0; cuBLASLt's 1-3 rows past a multiple of 4; MoE pairs and expert
//    tiles): FP8 tensor cores (mma.sync m16n8k32
//    e4m3) with the weights as the A operand (16 rows per warp, 16·RT per
//    block: fp8_gemv_rt) and up to NT·8 tokens as B, so each weight byte is
//    read once for all tokens. The warps of a block (8/RT per 16 rows) split
//    the 128-groups of K (a narrow output with a long K also splits them over
//    a cluster of 2 blocks: fp8_gemv_split); per group a warp sums the group in
//    a fresh mma accumulator and adds it ·s_x·s_w into fp32; the warps' sums are
//    added in warp order through shared memory (deterministic). (Blocks
//    quantizing their own x rows instead of k_fp8_quant measured slower on
//    an H200, 2-14 µs a decode projection: NOTES.md v20.)
//    K permutation: a lane (groupID g, thread-in-group t) loads 16 contiguous
//    bytes at k0 + t·16 of its A rows (g, g+8) and of its B token g; bytes 0-7
//    feed one mma, 8-15 the next. The mma's logical k order is a permutation of
//    the physical one, the same for A and B, so each group's dot product is
//    unchanged (fp32 sums in another order: fp32-rounding agreement with the
//    CPU, as any GPU order).
// 3. M > 8 (decode batches and prefill), K % 128 == 0, 16-byte aligned
//    weights: cuBLASLt's block-scaled FP8 GEMM (matmul.cu; x's scales
//    group-major as k_fp8_quant writes them for it, the weight's 128×128
//    block scales as stored, per-row scales made group-major by
//    k_fp8_scales_t). Other K % 16 == 0 weights from M > 16:
//    k_fp8_gemm_tc<BM>: BM×128 output tiles (tc_tile; BM 64
//    up to 64 tokens, else 128), 8 warps of BM/2×32, BK = 128 = one scale
//    group, four cp.async stages (zero-filled past M, N, K) in XOR-swizzled
//    shared memory, the same K permutation; per group the mma partials are
//    scaled by s_x(token)·s_w(row) into the fp32 accumulator.
// 4. k_fp8_gemm (CUDA cores, 64×64 tiles): only for weights the tensor-core
//    GEMM cannot stage (K % 16 != 0 or unaligned rows).
// 5. cu_moe_experts_fp8, per pair (small batches): the GEMV kernel with the
//    pair's expert (gate_up), silu·up quantized per pair row, the GEMV again
//    (down), then the routing-weighted sum in j order. It streams an expert
//    once per pair.
// 6. cu_moe_experts_fp8, grouped (sl_cuda_moe_fp8 AUTO, the default, from
//    prefill-sized batches; GROUPED): pairs sorted by expert with moe.cu's plan,
//    k_fp8_moe_gemm_tc = tc_tile on BM×128 tiles of one expert's rows (BM 128,
//    64 or 32), gate_up reading x rows through the plan's perm, silu·up requantized
//    per row, down, then moe.cu's combine in j order (kernels/dev/NOTES.md v11).
#include <cooperative_groups.h>

#include "fp8.cuh"
#include "wgmma.cuh"

#include "cuda_backend.h"
#include "matmul.cuh"
#include "moe.cuh"

// One warp quantizes the 128-group g of row r: s = max|v|/448, codes
// e4m3(v/s) to q[0..127] (zero past K, and for an all-zero group, where s = 0
// and v/0 would be NaN), as the CPU op; v = src[r, k], or with silu (src rows
// [gate | up] of width 2K, the MoE down's input) silu(gate)·up. Returns s.
// q: 4-byte aligned.
__device__ __forceinline__ float fp8_quant_group(cu_mat src, int silu, int64_t r, int g, int K, uint8_t *q)
{
    int lane = threadIdx.x & 31, k0 = g * FP8_G + lane * 4;
    float v[4], u[4], mx = 0.0f;
    cu_typed(src.dt, [&](auto ty) { // typed: the loads issue together (NOTES v58)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            v[i] = k0 + i < K ? cu_mat_ld_as(src, r, k0 + i, ty) : 0.0f;
            u[i] = k0 + i < K && silu ? cu_mat_ld_as(src, r, K + k0 + i, ty) : 0.0f;
        }
    });
#pragma unroll
    for (int i = 0; i < 4; i++) {
        if (k0 + i < K && silu) v[i] = v[i] / (1.0f + expf(-v[i])) * u[i];
        mx = fmaxf(mx, fabsf(v[i]));
    }
    float s = fp8_scale(cu_warp_max(mx));
    uint32_t codes = 0;
#pragma unroll
    for (int i = 0; i < 4; i++)
        if (k0 + i < K) codes |= fp8_code(v[i], s) << (8 * i);
    *(uint32_t *)(q + lane * 4) = codes;
    return s;
}

#define FP8_QUANT_WARPS 8
// Rows of x (K wide; silu: see fp8_quant_group) to codes xq [rows, G·128]
// (the pad zero, so readers never guard K) and scales, (row m, group g) at
// sx[m·sxm + g·sxg]: token-major (G, 1) for the own kernels, group-major
// (1, rows) for cuBLASLt. A warp per (row, group): one block per (row, group)
// of 128 threads, as before, ran 131k tiny blocks for a 4096-token prefill.
// With perm, row m of the codes is x's row perm[m] / div (a MoE's tokens in its
// routing plan's pair order, k_fp8_moe_ws's token tiles).
__global__ void __launch_bounds__(32 * FP8_QUANT_WARPS)
    k_fp8_quant(cu_mat x, int silu, int K, int rows, uint8_t *xq, float *sx, int G, int64_t sxm, int64_t sxg,
                const int32_t *perm, int div)
{
    cu_pdl_wait(); // PDL (cuda_common.cuh): wait before reading x / writing
    cu_pdl_trigger();
    int64_t job = (int64_t)blockIdx.x * FP8_QUANT_WARPS + (threadIdx.x >> 5);
    if (job >= (int64_t)rows * G) return;
    int m = (int)(job / G), g = (int)(job % G);
    float s = fp8_quant_group(x, silu, perm ? perm[m] / div : m, g, K, xq + ((int64_t)m * G + g) * FP8_G);
    if ((threadIdx.x & 31) == 0) sx[m * sxm + g * sxg] = s;
}

static void fp8_quant_launch(cu_backend *b, cu_mat x, int silu, int K, int rows, uint8_t *xq, float *sx, int G,
                             int64_t sxm, int64_t sxg, const int32_t *perm = nullptr, int div = 1)
{
    int64_t jobs = (int64_t)rows * G;
    cu_launch(b, k_fp8_quant, dim3((unsigned)cu_blocks(jobs, FP8_QUANT_WARPS)), dim3(32 * FP8_QUANT_WARPS), 0, x,
              silu, K, rows, xq, sx, G, sxm, sxg, perm, div);
}

void cu_fp8_quant(cu_backend *b, cu_mat x, int K, int rows, uint8_t *xq, float *sx)
{
    int G = fp8_groups(K);
    fp8_quant_launch(b, x, 0, K, rows, xq, sx, G, G, 1);
}

// The weight scales group-major (for cuBLASLt, k_fp8_moe_ws): st[g·ldst + n] =
// ws[(n >> shift)·ldws + g], of matrix blockIdx.y (ws + y·ews, st + y·G·ldst)
__global__ void k_fp8_scales_t(const float *ws, int64_t ldws, int64_t ews, int shift, int N, int G, float *st,
                               int64_t ldst)
{
    cu_pdl_wait();
    cu_pdl_trigger();
    int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i >= (int64_t)N * G) return;
    int g = (int)(i / N), n = (int)(i % N);
    ws += blockIdx.y * ews;
    st += blockIdx.y * G * ldst;
    st[g * ldst + n] = ws[(int64_t)(n >> shift) * ldws + g];
}

static void fp8_scales_t_launch(cu_backend *b, const float *ws, int64_t ldws, int64_t ews, int shift, int N, int G,
                                int mats, float *st, int64_t ldst)
{
    cu_launch(b, k_fp8_scales_t, dim3((unsigned)cu_blocks((int64_t)N * G, 256), (unsigned)mats), dim3(256), 0, ws,
              ldws, ews, shift, N, G, st, ldst);
}

typedef struct fp8_args {
    const uint8_t *w, *xq;
    const float *ws, *sx;
    int64_t ldw, ldws, ldx; // ldx: xq row stride (G*128)
    int M, N, K, G, srow_shift;
    int vec; // weight rows 16-byte aligned and K % 16 == 0
    cu_mat out;
    // MoE (ids != NULL; M = 1): blockIdx.x = pair p (blockIdx.y: row block) = t·topk + j, expert
    // e = ids[t·ids_ld + j], weights w + e·ew (scales ws + e·ews), x row
    // p / x_div (x_div = topk: the token's row; 1: the pair's), out row p
    const int32_t *ids;
    int64_t ids_ld, ew, ews;
    int topk, x_div;
    // ids were written two or more launches back (the launch just before
    // this one writes none of them): k_fp8_gemv_cp reads its expert, and
    // streams its weights, before its PDL wait. Safe because every kernel
    // lets the next one start only after its own wait, so when this one
    // starts the kernel before the previous one has completed.
    int ids_early;
    int x_perm; // k_fp8_moe_gemm_tc: x rows through the plan's perm (see there)
    // k_fp8_gemv_tc over a routing plan (moe.cuh; blockIdx.x = tile of one
    // expert's pairs, blockIdx.y = 16 weight rows): the tile's tokens are the
    // B columns, x rows through the plan's perm as k_fp8_moe_gemm_tc, out rows
    // in the permuted order: one pass over each active expert's weights
    int plan;
    // dense k_fp8_gemv_tc: K split over a thread-block cluster of this many
    // blocks (grid.y; fp8_gemv_split)
    int split;
    // fp8_gemv_launch: x not quantized yet: its rows are xin (xsilu: rows
    // [gate | up] of width 2K, quantized as silu(gate)·up); k_fp8_gemv_cp
    // quantizes them itself, else k_fp8_quant runs first into xq / sx
    cu_mat xin;
    int xsilu;
    // k_fp8_moe_wg: 128-row weight blocks a block walks (blockIdx.x · npb ..),
    // one copy pipeline across them (moe_fp8_wg_npb)
    int npb;
    // k_fp8_moe_wg: its weight tiles by TMA through this map of w (fp8_moe_tma_map;
    // tma 0: by cp.async)
    int tma;
    CUtensorMap tw;
    // k_fp8_moe_ws: its token tiles by TMA through these maps (fp8_moe_tma_x): xq
    // in the plan's pair order and sx group-major (sx[g · sxg + q]); the weight
    // scales group-major likewise (expert e's group g: row e · G + g)
    CUtensorMap tx, tsx, tsw;
} fp8_args;

#define GV8_WARPS 8
#define GV8_MAXM 64
// Without cuBLASLt (K % 128 != 0, or a shape it refuses), dense FP8 matmuls
// of more tokens than this take the tensor-core GEMM tiles (64 tokens a tile
// up to GV8_MAXM): the GEMV re-reads all of x for every 16 weight rows
#define FP8_GEMV_MAX_M 16
// AUTO: dense FP8 matmuls of more tokens than this run cuBLASLt's block-scaled
// GEMM; on an H200 at 64 tokens it took 8B's qkv in 22 µs where the own
// 64-token tiles took 77, and at 4096 tokens it reaches 59-82 % of the FP8 mma
// rate (NOTES.md v20); at 4-8 tokens it ties the GEMV, which runs up to here.
#define FP8_LT_MIN_M 8
// cuBLASLt 13.1's block-scaled algorithms on an H200 refused K = 128..1024
// (the heuristic has none for M = 9..513 there) and at M = 8, K = 256 one
// returned wrong results; every K >= 2048 checked agreed with the CPU (the
// models' hidden sizes and attention/GDN widths are 2048 and up)
#define FP8_LT_MIN_K 2048
// cuBLASLt's BLK128x128 weight scales against VEC128 (per-row, transposed) on an H200 (v20):
// 1.3-1.4x faster from 512 tokens (1,424 against 1,060 TFLOP/s at 4096 x 6144 x 4096), slower at
// 64 (14 against 9 us); between, unmeasured
#ifndef FP8_LT_BLK_MIN_M
#define FP8_LT_BLK_MIN_M 512
#endif

// 16-row tiles a block of k_fp8_gemv_tc takes (its warps split into teams of
// 8/RT, each a tile's groups of K), from the group count G: with fewer groups
// than warps a block of one tile would leave warps idle (Coder-Next's expert
// down, K = 512: 0.236 -> 0.207 ms at 16 tokens on an H200 with RT 2).
// (Loading 2 or 4 of a warp's groups before the first mma measured slower at
// every decode shape: the registers cost more occupancy than the loads gain.)
__host__ __device__ constexpr int fp8_gemv_rt(int G)
{
    return G <= 2 ? 4 : G <= 4 ? 2 : 1;
}

// Blocks of 16·RT weight rows over a's N rows
__host__ __device__ inline unsigned fp8_gemv_row_blocks(const fp8_args &a)
{
    int rows = 16 * fp8_gemv_rt(a.G);
    return (unsigned)((a.N + rows - 1) / rows);
}

// cp.async of 16 / 4 bytes (bytes = 0: zeros, nothing read)
__device__ __forceinline__ void cp_async16(uint32_t dst, const void *src, int bytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}

__device__ __forceinline__ void cp_async4(uint32_t dst, const void *src, int bytes)
{
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}

// acc += group g of this lane's weight rows (A[half][row gq / gq+8], their
// scales sa, sb) times the B columns (tokens) below M: xb(m, h) the 16 codes
// of token m at this lane's k of half h, xs(m) token m's scale of the group.
// Both GEMV kernels run this, so they add in the same order.
template <int NT, class XB, class XS>
__device__ __forceinline__ void fp8_gemv_group(float (&acc)[NT][4], const uint4 (&A)[2][2], float sa, float sb,
                                               int M, XB xb, XS xs)
{
    const int lane = threadIdx.x & 31, gq = lane >> 2, tq = lane & 3;
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        int m = nt * 8 + gq; // B column of this lane
        if (nt * 8 < M) {    // warp-uniform
            uint4 B[2];
#pragma unroll
            for (int h = 0; h < 2; h++) B[h] = m < M ? xb(m, h) : make_uint4(0, 0, 0, 0);
            // C: rows (weights) gq, gq+8; columns (tokens) 2tq, 2tq+1
            int m0 = nt * 8 + 2 * tq;
            fp8_group_acc(acc[nt], A, B, m0 < M ? xs(m0) : 0.0f, m0 + 1 < M ? xs(m0 + 1) : 0.0f, sa, sb);
        }
    }
}

// Each warp's partial sums to its own slice of red (one barrier, not one per
// warp: a block's share of the work is small).
template <int NT>
__device__ __forceinline__ void fp8_gemv_partials(float (*red)[16][NT * 8 + 1], const float (&acc)[NT][4])
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gq = lane >> 2, tq = lane & 3;
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        int c = nt * 8 + 2 * tq;
        red[warp][gq][c] = acc[nt][0];
        red[warp][gq][c + 1] = acc[nt][1];
        red[warp][gq + 8][c] = acc[nt][2];
        red[warp][gq + 8][c + 1] = acc[nt][3];
    }
    __syncthreads();
}

// Out rows orow0 + m, columns from nb: each of the block's rt tiles summed
// over its team's warps in warp order.
template <int NT>
__device__ __forceinline__ void fp8_gemv_store(float (*red)[16][NT * 8 + 1], const fp8_args &a, int rt, int team,
                                               int nb, int M, int64_t orow0)
{
    for (int i = threadIdx.x; i < rt * 16 * NT * 8; i += blockDim.x) {
        int tile = i / (16 * NT * 8), m = (i >> 4) % (NT * 8), r = i & 15;
        int n = nb + tile * 16 + r;
        if (m < M && n < a.N) {
            const int w0 = tile * team;
            float v = red[w0][r][m];
            for (int wv = 1; wv < team; wv++) v += red[w0 + wv][r][m];
            cu_mat_st(a.out, orow0 + m, n, v);
        }
    }
}

template <int NT>
__global__ void __launch_bounds__(32 * GV8_WARPS, NT <= 4 ? 4 : 2) k_fp8_gemv_tc(fp8_args a, cu_moe_plan pl)
{
    __shared__ float red[GV8_WARPS][16][NT * 8 + 1]; // each warp's partial sums
    __shared__ int xr[NT * 8]; // a.plan: the x row of each of the tile's tokens
    cu_pdl_wait();
    cu_pdl_trigger();
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gq = lane >> 2, tq = lane & 3;
    const int rt = fp8_gemv_rt(a.G), team = GV8_WARPS / rt, tw = warp % team;
    const int nb = (a.ids || a.plan ? blockIdx.y : blockIdx.x) * rt * 16; // the block's first row
    int n0 = nb + warp / team * 16;                                       // this warp's tile
    const uint8_t *w = a.w, *xq = a.xq;
    const float *ws = a.ws, *sx = a.sx;
    int M = a.M;
    int64_t orow0 = 0, xrow0 = 0, e = -1;
    int2 pt = make_int2(0, 0); // a.plan: this block's tile (expert, first row)
    if (a.plan) {
        // the tile count and this block's tile in one round trip (tiles has
        // max_tiles entries: reading one past n_tiles stays in bounds)
        int n_tiles = *pl.n_tiles;
        pt = pl.tiles[blockIdx.x];
        if ((int)blockIdx.x >= n_tiles) return; // the grid is an upper bound (block-uniform)
        e = pt.x;
    } else if (a.ids) {
        int p = blockIdx.x, t = p / a.topk, j = p - t * a.topk;
        e = a.ids[(int64_t)t * a.ids_ld + j];
        xrow0 = p / a.x_div;
        orow0 = p;
        M = 1;
    }
    if (e >= 0) {
        w += e * a.ew;
        ws += e * a.ews;
    }
    int ra = n0 + gq, rb = n0 + gq + 8; // this lane's weight rows
    bool oka = ra < a.N, okb = rb < a.N;
    const uint8_t *wa = w + (int64_t)(oka ? ra : 0) * a.ldw, *wb = w + (int64_t)(okb ? rb : 0) * a.ldw;
    const float *swa = ws + (int64_t)((oka ? ra : 0) >> a.srow_shift) * a.ldws;
    const float *swb = ws + (int64_t)((okb ? rb : 0) >> a.srow_shift) * a.ldws;
    // group g's weights of this lane's rows (A[half][row g / g+8]) and scales
    uint4 A[2][2];
    float sa = 0.0f, sb = 0.0f;
    auto load_group = [&](int g) {
        int kb = g * FP8_G + tq * 16;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            A[h][0] = oka ? fp8_ld16(wa, kb + h * 64, a.K, a.vec) : make_uint4(0, 0, 0, 0);
            A[h][1] = okb ? fp8_ld16(wb, kb + h * 64, a.K, a.vec) : make_uint4(0, 0, 0, 0);
        }
        sa = oka ? swa[g] : 0.0f;
        sb = okb ? swb[g] : 0.0f;
    };
    // K split over a cluster (dense): block rank of the cluster takes the
    // groups from g0 in steps of gs, after the same split in the block
    const int S = a.split, rank = S > 1 ? (int)blockIdx.y : 0, g0 = tw + rank * team, gs = team * S;
    // The first group's loads go out before the plan's other lookups (the
    // expert's offsets, then the permutation) and the barrier they need: in
    // plan mode a block is short, and those round trips preceded every
    // weight byte.
    if (g0 < a.G) load_group(g0);
    if (a.plan) {
        int r0 = pl.offset[e] + pt.y;
        M = min(NT * 8, pl.offset[e + 1] - r0);
        orow0 = r0;
        for (int i = threadIdx.x; i < M; i += blockDim.x) xr[i] = a.x_perm ? pl.perm[r0 + i] / a.x_div : r0 + i;
        __syncthreads();
    }
    xq += xrow0 * a.ldx;
    sx += xrow0 * a.G;
    // row of xq / sx holding token (B column) m
    auto xrow = [&](int m) -> int64_t { return a.plan ? xr[m] : m; };
    float acc[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int i = 0; i < 4; i++) acc[nt][i] = 0.0f;
    for (int g = g0; g < a.G; g += gs) {
        if (g != g0) load_group(g);
        int kb = g * FP8_G + tq * 16;
        fp8_gemv_group<NT>(
            acc, A, sa, sb, M, [&](int m, int h) { return *(const uint4 *)(xq + xrow(m) * a.ldx + kb + h * 64); },
            [&](int m) { return sx[xrow(m) * a.G + g]; });
    }
    // the warps' partials, then each tile's summed in its team's warp order
    fp8_gemv_partials<NT>(red, acc);
    if (S > 1) {
        // the cluster's partials meet in distributed shared memory, added in
        // rank order, then warp order (deterministic); the blocks share out
        // the outputs
        namespace cg = cooperative_groups;
        cg::cluster_group cl = cg::this_cluster();
        cl.sync();
        for (int i = rank * blockDim.x + threadIdx.x; i < rt * 16 * NT * 8; i += S * blockDim.x) {
            int tile = i / (16 * NT * 8), m = (i >> 4) % (NT * 8), r = i & 15;
            int n = nb + tile * 16 + r;
            if (m < M && n < a.N) {
                float v = 0.0f;
                for (int s = 0; s < S; s++) {
                    const float(*rs)[16][NT * 8 + 1] = cl.map_shared_rank(red, s);
                    for (int wv = tile * team; wv < (tile + 1) * team; wv++) v += rs[wv][r][m];
                }
                cu_mat_st(a.out, orow0 + m, n, v);
            }
        }
        cl.sync(); // red stays alive until every block of the cluster has read it
        return;
    }
    fp8_gemv_store<NT>(red, a, rt, team, nb, M, orow0);
}

// ---- decode GEMV through shared memory ----------------------------------------
//
// k_fp8_gemv_cp<NT> is k_fp8_gemv_tc's dense and per-pair modes (same blocks,
// rows, warp teams and arithmetic, so the same results bit for bit) with the
// block's whole weight tile (16·RT rows × K codes, and their scales) copied
// into shared memory by cp.async before anything else: every byte of the
// tile is in flight at once without holding a register, where the register
// kernel keeps one 128-group a warp in flight and pays a DRAM round trip per
// group (a 16 MB GEMV took 12-16 µs whose bytes need 4, NOTES.md v21; U
// groups in registers cost occupancy). Dense weights are requested before the
// PDL wait (they depend on no kernel); the per-pair mode first needs its
// expert from the routing. x's codes and scales follow after the wait.
// Rows are FP8_CP_PAD bytes past whole groups: the 8 lanes of a shared-memory
// phase read 64 bytes of each of two rows, on disjoint banks.
#define FP8_CP_PAD 64
// Dynamic shared memory a block may take: K up to ~5.9k at 16 rows (with the
// static reduction buffer, 2 blocks an SM at K = 4096, 5 at 2048)
#define FP8_CP_MAX_SMEM (100 * 1024)

__host__ __device__ inline int fp8_cp_pitch(int G) { return G * FP8_G + FP8_CP_PAD; }

// Bytes of n staged rows: codes [n][pitch] and scales [n][G + 1] (the + 1
// spreads a column over banks)
__host__ __device__ inline size_t fp8_cp_rows_bytes(int G, int n)
{
    return (size_t)n * fp8_cp_pitch(G) + sizeof(float) * (size_t)n * (G + 1);
}

// k_fp8_gemv_cp's: the 16·RT weight rows, then MX x rows
__host__ __device__ inline size_t fp8_cp_smem(int G, int MX) { return fp8_cp_rows_bytes(G, 16 * fp8_gemv_rt(G) + MX); }

// cp.async of weight rows nb .. nb + RB - 1 of w (codes, zeros past a.N and
// a.K, rows fp8_cp_pitch(a.G) apart) into sw and their scales (a.G + 1 a
// row) into sws: the staging of k_fp8_gemv_cp and k_fp8_moe_one
__device__ __forceinline__ void fp8_stage_tile(uint8_t *sw, float *sws, const fp8_args &a, const uint8_t *w,
                                               const float *ws, int nb, int RB)
{
    const int G = a.G, GP = G + 1, pitch = fp8_cp_pitch(G), nch = G * (FP8_G / 16);
    for (int i = threadIdx.x; i < RB * nch; i += blockDim.x) {
        int r = i / nch, c = i - r * nch, n = nb + r;
        bool ok = n < a.N && c * 16 < a.K;
        cp_async16((uint32_t)__cvta_generic_to_shared(sw + r * pitch + c * 16),
                   ok ? w + (int64_t)n * a.ldw + c * 16 : w, ok ? 16 : 0);
    }
    for (int i = threadIdx.x; i < RB * G; i += blockDim.x) {
        int r = i / G, g = i - r * G, n = nb + r;
        bool ok = n < a.N;
        cp_async4((uint32_t)__cvta_generic_to_shared(sws + r * GP + g),
                  ok ? ws + (int64_t)(n >> a.srow_shift) * a.ldws + g : ws, ok ? 4 : 0);
    }
}

// The products of a staged weight tile (fp8_stage_tile: 16·RT rows) with M
// staged x rows (codes sxq, scales ssx; the same pitch and G + 1) into red,
// each warp on its team's 16 rows and its share of the groups: k_fp8_gemv_tc's
// arithmetic, whose order every staged kernel keeps.
template <int NT>
__device__ __forceinline__ void fp8_cp_tile(float (*red)[16][NT * 8 + 1], const uint8_t *sw, const float *sws,
                                            const uint8_t *sxq, const float *ssx, int G, int M)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gq = lane >> 2, tq = lane & 3;
    const int team = GV8_WARPS / fp8_gemv_rt(G), tw = warp % team, GP = G + 1, pitch = fp8_cp_pitch(G);
    const int r0 = warp / team * 16; // this warp's tile in the block
    const uint8_t *wa = sw + (r0 + gq) * pitch, *wb = sw + (r0 + gq + 8) * pitch;
    const float *swa = sws + (r0 + gq) * GP, *swb = sws + (r0 + gq + 8) * GP;
    float acc[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int i = 0; i < 4; i++) acc[nt][i] = 0.0f;
    for (int g = tw; g < G; g += team) {
        const int kb = g * FP8_G + tq * 16;
        uint4 A[2][2];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            A[h][0] = *(const uint4 *)(wa + kb + h * 64);
            A[h][1] = *(const uint4 *)(wb + kb + h * 64);
        }
        fp8_gemv_group<NT>(
            acc, A, swa[g], swb[g], M, [&](int m, int h) { return *(const uint4 *)(sxq + m * pitch + kb + h * 64); },
            [&](int m) { return ssx[m * GP + g]; });
    }
    fp8_gemv_partials<NT>(red, acc);
}

template <int NT> __global__ void __launch_bounds__(32 * GV8_WARPS) k_fp8_gemv_cp(fp8_args a)
{
    extern __shared__ __align__(16) uint8_t cp_sm[];
    __shared__ float red[GV8_WARPS][16][NT * 8 + 1];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int rt = fp8_gemv_rt(a.G), RB = 16 * rt, team = GV8_WARPS / rt;
    const int G = a.G, GP = G + 1, pitch = fp8_cp_pitch(G), nch = G * (FP8_G / 16);
    const int MX = a.ids ? 1 : min(a.M, NT * 8);
    uint8_t *sw = cp_sm, *sxq = cp_sm + (size_t)RB * pitch;
    float *sws = (float *)(cp_sm + (size_t)(RB + MX) * pitch), *ssx = sws + RB * GP;
    const int nb = (a.ids ? blockIdx.y : blockIdx.x) * RB; // the block's first row
    const uint8_t *w = a.w;
    const float *ws = a.ws;
    int M = a.M;
    int64_t xrow0 = 0, orow0 = 0;
    // per pair: the pair's expert (after the wait unless a.ids_early)
    auto pair = [&]() {
        int p = blockIdx.x, t = p / a.topk, j = p - t * a.topk;
        int64_t e = a.ids[(int64_t)t * a.ids_ld + j];
        w += e * a.ew;
        ws += e * a.ews;
        xrow0 = p / a.x_div;
        orow0 = p;
        M = 1;
    };
    if (!a.ids || a.ids_early) {
        if (a.ids) pair();
        fp8_stage_tile(sw, sws, a, w, ws, nb, RB);
    }
    cu_pdl_wait();
    cu_pdl_trigger();
    if (a.ids && !a.ids_early) {
        pair();
        fp8_stage_tile(sw, sws, a, w, ws, nb, RB);
    }
    if (a.xin.p) {
        // x's rows quantized here, a warp per (row, group), while the weights
        // stream: the arithmetic of k_fp8_quant (the same function)
        for (int job = warp; job < MX * G; job += GV8_WARPS) {
            int m = job / G, g = job - m * G;
            float s = fp8_quant_group(a.xin, a.xsilu, xrow0 + m, g, a.K, sxq + m * pitch + g * FP8_G);
            if (lane == 0) ssx[m * GP + g] = s;
        }
    } else {
        const uint8_t *xq = a.xq + xrow0 * a.ldx;
        const float *sx = a.sx + xrow0 * G;
        for (int i = threadIdx.x; i < MX * nch; i += blockDim.x) {
            int m = i / nch, c = i - m * nch;
            cp_async16((uint32_t)__cvta_generic_to_shared(sxq + m * pitch + c * 16), xq + m * a.ldx + c * 16, 16);
        }
        for (int i = threadIdx.x; i < MX * G; i += blockDim.x) {
            int m = i / G, g = i - m * G;
            cp_async4((uint32_t)__cvta_generic_to_shared(ssx + m * GP + g), sx + m * G + g, 4);
        }
    }
    asm volatile("cp.async.commit_group;\n" ::);
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
    __syncthreads();
    fp8_cp_tile<NT>(red, sw, sws, sxq, ssx, G, M);
    fp8_gemv_store<NT>(red, a, rt, team, nb, M, orow0);
}

// ---- one token's MoE in one kernel ---------------------------------------------
//
// k_fp8_moe_one (T = 1; SL_CUDA_MOE_FP8_ONE=1, NOTES.md v43): the k pairs'
// gate_up GEMVs, silu·up, the down GEMVs and the routing-weighted sum in one
// launch, where the per-pair path takes four (x's quantization, gate_up, down,
// combine), each a few µs of fixed cost at one token. Work items: phase 1,
// (pair p, 16·RT rows of gate_up); phase 2, (pair j, 16·RT rows of down); both
// pair-major. Block b takes items b, b + gridDim.x, ... in order (all of its
// phase-1 items first), staging each one's weight tile with cp.async
// MOE1_STAGES - 1 items ahead: a phase-2 tile needs only the routing, so the
// first ones stream during phase 1. A phase-2 item waits until its pair's
// phase-1 items are all done (a counter a pair) and quantizes that pair's
// silu·up itself; the last of a row block's k phase-2 items adds the k outputs
// in j order. The grid is at most what the GPU holds at once (occupancy × SMs),
// so a waiting block never keeps off the GPU a block it waits for, and blocks
// only wait on phase-1 items, which wait on nothing. The tiles, warp teams,
// quantization and sums are the per-pair GEMVs' and k_fp8_moe_combine's: the
// same result bit for bit.
#define MOE1_STAGES 3
#define MOE1_MAXK 64    // pairs (counters a pair)
#define MOE1_MAXRB 1024 // row blocks of down (counters a row block)

typedef struct moe1_args {
    // the per-pair GEMVs' arguments (ids, topk = k, expert strides): gu.out is
    // h [k, 2I] (f32), dn.out y [k, H] (f32)
    fp8_args gu, dn;
    cu_mat x;        // the token, [1, H]
    const float *wt; // its routing weights [k]
    cu_mat out;      // [1, H]
    // MOE1_MAXK pairs done, MOE1_MAXRB row blocks done, then the blocks done:
    // zero between launches (the last block to finish resets them)
    unsigned *sync;
} moe1_args;

// Shared memory: x's codes and scales, a pair's silu·up codes and scales,
// then the stages, each a tile of either phase (fp8_stage_tile's layout).
__host__ __device__ inline size_t moe1_row_bytes(int G) { return (fp8_cp_rows_bytes(G, 1) + 15) & ~(size_t)15; }
__host__ __device__ inline size_t moe1_tile_bytes(int G)
{
    return (fp8_cp_rows_bytes(G, 16 * fp8_gemv_rt(G)) + 15) & ~(size_t)15;
}
__host__ __device__ inline size_t moe1_stage_bytes(int G1, int G2)
{
    return moe1_tile_bytes(G1) > moe1_tile_bytes(G2) ? moe1_tile_bytes(G1) : moe1_tile_bytes(G2);
}
__host__ __device__ inline size_t moe1_smem(int G1, int G2)
{
    return moe1_row_bytes(G1) + moe1_row_bytes(G2) + MOE1_STAGES * moe1_stage_bytes(G1, G2);
}

__device__ __forceinline__ unsigned moe1_ld_acquire(const unsigned *p)
{
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
    return v;
}

__global__ void __launch_bounds__(32 * GV8_WARPS) k_fp8_moe_one(moe1_args a)
{
    extern __shared__ __align__(16) uint8_t m1_sm[];
    __shared__ float red[GV8_WARPS][16][9];
    __shared__ int last;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int k = a.gu.topk, G1 = a.gu.G, G2 = a.dn.G;
    const int nb1 = (int)fp8_gemv_row_blocks(a.gu), nb2 = (int)fp8_gemv_row_blocks(a.dn); // row blocks a pair
    const int n1 = k * nb1, n = n1 + k * nb2;
    uint8_t *sx = m1_sm, *sh = m1_sm + moe1_row_bytes(G1), *st = sh + moe1_row_bytes(G2);
    float *ssx = (float *)(sx + fp8_cp_pitch(G1)), *ssh = (float *)(sh + fp8_cp_pitch(G2));
    const size_t stage = moe1_stage_bytes(G1, G2);
    unsigned *pair_done = a.sync, *rb_done = a.sync + MOE1_MAXK, *blocks_done = rb_done + MOE1_MAXRB;
    cu_pdl_wait(); // the routing and x come from the kernels before
    cu_pdl_trigger();
    // the block's i-th item: its phase, GEMV arguments, pair, row block, rows
    // a block, and its stage (weight codes, then scales)
    struct item {
        bool p1;
        const fp8_args *f;
        int pair, rb, RB;
        uint8_t *sw;
        float *sws;
    };
    auto item_of = [&](int i) {
        int it = blockIdx.x + i * gridDim.x;
        item m;
        m.p1 = it < n1;
        m.f = m.p1 ? &a.gu : &a.dn;
        int q = m.p1 ? it : it - n1, nbk = m.p1 ? nb1 : nb2;
        m.pair = q / nbk;
        m.rb = q % nbk;
        m.RB = 16 * fp8_gemv_rt(m.f->G);
        m.sw = st + (size_t)(i % MOE1_STAGES) * stage;
        m.sws = (float *)(m.sw + (size_t)m.RB * fp8_cp_pitch(m.f->G));
        return m;
    };
    // item i into its stage (none past the last: an empty group, so that every
    // iteration waits for the same count)
    auto issue = [&](int i) {
        if (blockIdx.x + i * gridDim.x < n) {
            item m = item_of(i);
            const fp8_args &f = *m.f;
            int64_t e = f.ids[m.pair];
            fp8_stage_tile(m.sw, m.sws, f, f.w + e * f.ew, f.ws + e * f.ews, m.rb * m.RB, m.RB);
        }
        asm volatile("cp.async.commit_group;\n" ::);
    };
#pragma unroll
    for (int i = 0; i < MOE1_STAGES - 1; i++) issue(i);
    // x's codes (k_fp8_quant's arithmetic) while the first tiles stream
    for (int g = warp; g < G1; g += GV8_WARPS) {
        float s = fp8_quant_group(a.x, 0, 0, g, a.gu.K, sx + g * FP8_G);
        if (lane == 0) ssx[g] = s;
    }
    for (int i = 0; blockIdx.x + i * gridDim.x < n; i++) {
        issue(i + MOE1_STAGES - 1);
        asm volatile("cp.async.wait_group %0;\n" ::"n"(MOE1_STAGES - 1) : "memory");
        const item m = item_of(i);
        const fp8_args &f = *m.f;
        const int pair = m.pair, rb = m.rb, RB = m.RB;
        const bool p1 = m.p1;
        if (!p1) {
            // the pair's gate_up rows are all written: quantize its silu·up
            if (threadIdx.x == 0) { // (a grid that is not all resident would wait forever: trap instead)
                long long t0 = clock64();
                while (moe1_ld_acquire(pair_done + pair) < (unsigned)nb1) {
                    __nanosleep(32);
                    if (clock64() - t0 > WG_SPIN_LIMIT) __trap(); // ~2 s: a lost pair
                }
            }
            __syncthreads();
            for (int g = warp; g < G2; g += GV8_WARPS) {
                float s = fp8_quant_group(a.gu.out, 1, pair, g, a.dn.K, sh + g * FP8_G);
                if (lane == 0) ssh[g] = s;
            }
        }
        __syncthreads(); // the stage's copies (every thread's) and the codes
        fp8_cp_tile<1>(red, m.sw, m.sws, p1 ? sx : sh, p1 ? ssx : ssh, f.G, 1);
        fp8_gemv_store<1>(red, f, RB / 16, GV8_WARPS / (RB / 16), rb * RB, 1, pair);
        __threadfence(); // the outputs before the counters that publish them
        __syncthreads();
        if (p1) {
            if (threadIdx.x == 0) atomicAdd(pair_done + pair, 1u);
        } else {
            if (threadIdx.x == 0) last = atomicAdd(rb_done + rb, 1u) == (unsigned)k - 1;
            __syncthreads();
            if (last) { // the row block's k outputs, added in j order (k_fp8_moe_combine)
                __threadfence();
                const float *y = (const float *)a.dn.out.p;
                for (int c = rb * RB + threadIdx.x; c < min((rb + 1) * RB, a.dn.N); c += blockDim.x) {
                    float acc = cu_wsum(a.wt, k, [&](int j) { return __ldcg(y + (int64_t)j * a.dn.out.ld + c); });
                    cu_mat_st(a.out, 0, c, acc);
                }
            }
        }
        __syncthreads(); // red, last and the stage are reused
    }
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
    if (threadIdx.x == 0) { // the last block out resets the counters
        __threadfence();
        if (atomicAdd(blocks_done, 1u) == gridDim.x - 1) {
            for (int j = 0; j < k; j++) pair_done[j] = 0;
            for (int r = 0; r < nb2; r++) rb_done[r] = 0;
            *blocks_done = 0;
            __threadfence();
        }
    }
}

// ---- tensor-core GEMM ----------------------------------------------------------
//
// tc_tile<BM> computes one BM×128 output tile (BM = 128, 64 or 32): 8 warps of
// BM/2 × 32 (warp rows wm = 0, 1; columns wn = 0..3), BK = 128 = one scale
// group, TC_STAGES cp.async stages (groups g+1 .. g+3 in flight while group g
// computes: with one block per SM, two stages left the weight stream waiting
// on each group's latency). The x rows come through xrow(r) (tile row r ->
// row of xq / sx, -1: none), so the dense GEMM (x row m0 + r) and the MoE
// experts (rows through the routing plan's permutation) share it.

#define TC_BM 128
#define TC_BN 128
#define TC_THREADS 256
#define TC_STAGES 4

template <int BM> struct tc_cfg {
    static constexpr int MI = BM / 32; // m16 tiles of a warp
    // x tile, w tile, then the group's scales of the x rows and the w rows
    static constexpr int SCALES = (BM + TC_BN) * FP8_G;
    static constexpr int STAGE = SCALES + (BM + TC_BN) * 4; // bytes
    static constexpr int SMEM = TC_STAGES * STAGE;          // 132 KB at BM 128, 99 KB at 64, 82.5 KB at 32
};

// 16-byte chunk c of tile row r lives at chunk c ^ 4·(r & 1): the 8 lanes of a
// quarter warp (rows 2q, 2q+1; chunks t or 4 + t) hit all 32 banks once
__device__ __forceinline__ int tc_off(int r, int c) { return r * FP8_G + ((c ^ ((r & 1) << 2)) << 4); }

// Where tc_tile keeps a stage: x tile, weight tile, then the group's scales
// of the x rows and of the weight rows (L::x(r, c), L::w(r, c): byte offset of
// 16-byte chunk c of a tile row; L::SCALES).
template <int BM> struct tc_lay {
    static constexpr int SCALES = tc_cfg<BM>::SCALES;
    __device__ static int x(int r, int c) { return tc_off(r, c); }
    __device__ static int w(int r, int c) { return BM * FP8_G + tc_off(r, c); }
};

// Group g of the tile into a stage laid out by L: chunk tid & 7 of x rows
// (tid >> 3) + 32i (row xrow(r) of xq; past rows zero-filled) and of weight
// rows n0 + (tid >> 3) + 32i of w (past N or K zero-filled), then the group's
// scale of x row tid (tid < BM) or of weight row n0 + tid - BM (zero past rows
// / N). Addresses are recomputed per load: holding them in registers made the
// dense kernel spill. (The scales came from global memory in the compute step,
// after the group's mma: a dependent round trip in every group's critical
// path.)
// The block's TC_THREADS threads copy, TC_THREADS / 8 rows a round. Without WT
// the weight tile is left to the caller (TMA).
template <int BM, class L, bool WT = true, class XR>
__device__ __forceinline__ void tc_load(const fp8_args &a, const uint8_t *w, const float *ws, XR xrow, int rows,
                                        int n0, uint32_t sbase, int g)
{
    constexpr int RR = TC_THREADS / 8;
    static_assert(BM % RR == 0 && TC_BN % RR == 0, "whole rounds of rows");
    int k0 = g * FP8_G, ch = threadIdx.x & 7, r = threadIdx.x >> 3;
#pragma unroll
    for (int i = 0; i < BM / RR; i++) {
        int64_t m = r + RR * i < rows ? xrow(r + RR * i) : -1;
        const uint8_t *src = m >= 0 ? a.xq + m * a.ldx + k0 + ch * 16 : a.xq;
        cp_async16(sbase + L::x(r + RR * i, ch), src, m >= 0 ? 16 : 0);
    }
#pragma unroll
    for (int i = 0; i < (WT ? TC_BN / RR : 0); i++) {
        int n = n0 + r + RR * i, k = k0 + ch * 16;
        bool ok = n < a.N && k < a.K;
        const uint8_t *src = ok ? w + (int64_t)n * a.ldw + k : a.xq;
        cp_async16(sbase + L::w(r + RR * i, ch), src, ok ? 16 : 0);
    }
#pragma unroll
    for (int j = threadIdx.x; j < BM + TC_BN; j += TC_THREADS) {
        uint32_t sc = sbase + L::SCALES + 4 * j;
        if (j < BM) {
            int64_t m = j < rows ? xrow(j) : -1;
            cp_async4(sc, m >= 0 ? a.sx + m * a.G + g : a.sx, m >= 0 ? 4 : 0);
        } else {
            int n = n0 + j - BM;
            cp_async4(sc, n < a.N ? ws + (int64_t)(n >> a.srow_shift) * a.ldws + g : ws, n < a.N ? 4 : 0);
        }
    }
    asm volatile("cp.async.commit_group;\n" ::);
}

// An empty commit group past the last K group: every iteration commits one,
// so wait_group's count stays the same to the end.
__device__ __forceinline__ void tc_commit_empty() { asm volatile("cp.async.commit_group;\n" ::); }

// A warp's MI×4 mma tiles of 4 floats each, zeroed in registers.
template <int MI> __device__ __forceinline__ void tc_zero(float (&v)[MI][4][4])
{
#pragma unroll
    for (int i = 0; i < MI; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int q = 0; q < 4; q++) v[i][j][q] = 0.0f;
}

// out[obase + r, n0 + c] for r < rows, n0 + c < a.N: Σ_g (x_q·w_q)_g · s_x(row, g)·s_w(n, g)
// with x row xrow(r) of a.xq / a.sx (row strides a.ldx, a.G) and weight rows of
// w / ws (strides a.ldw, a.ldws >> a.srow_shift), a.K columns. smem: tc_cfg<BM>::SMEM bytes.
template <int BM, class XR>
__device__ __forceinline__ void tc_tile(const fp8_args &a, uint8_t *smem, const uint8_t *w, const float *ws,
                                        XR xrow, int rows, int64_t obase, int n0)
{
    constexpr int MI = tc_cfg<BM>::MI, STAGE = tc_cfg<BM>::STAGE, WR = BM / 2;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gq = lane >> 2, tq = lane & 3;
    int wm = warp >> 2, wn = warp & 3; // warp tile rows wm·BM/2, cols wn·32
    uint32_t s0 = (uint32_t)__cvta_generic_to_shared(smem);
    float acc[MI][4][4];
    tc_zero<MI>(acc);
#pragma unroll
    for (int st = 0; st < TC_STAGES - 1; st++) {
        if (st < a.G) tc_load<BM, tc_lay<BM>>(a, w, ws, xrow, rows, n0, s0 + st * STAGE, st);
        else tc_commit_empty();
    }
    for (int g = 0; g < a.G; g++) {
        // groups 0..g have landed (g + TC_STAGES - 1 committed, TC_STAGES - 2 may pend)
        asm volatile("cp.async.wait_group %0;\n" ::"n"(TC_STAGES - 2));
        // every warp is past group g - 1's compute: its stage can be refilled
        __syncthreads();
        int gn = g + TC_STAGES - 1;
        if (gn < a.G) tc_load<BM, tc_lay<BM>>(a, w, ws, xrow, rows, n0, s0 + (gn % TC_STAGES) * STAGE, gn);
        else tc_commit_empty();
        const uint8_t *xs = smem + (g % TC_STAGES) * STAGE, *wsm = xs + BM * FP8_G;
        float part[MI][4][4];
        tc_zero<MI>(part);
#pragma unroll
        for (int h = 0; h < 2; h++) {
            uint4 A[MI][2], B[4];
#pragma unroll
            for (int i = 0; i < MI; i++) {
                int r = wm * WR + i * 16 + gq;
                A[i][0] = *(const uint4 *)(xs + tc_off(r, h * 4 + tq));
                A[i][1] = *(const uint4 *)(xs + tc_off(r + 8, h * 4 + tq));
            }
#pragma unroll
            for (int j = 0; j < 4; j++) B[j] = *(const uint4 *)(wsm + tc_off(wn * 32 + j * 8 + gq, h * 4 + tq));
#pragma unroll
            for (int i = 0; i < MI; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    mma_e4m3(part[i][j], A[i][0].x, A[i][1].x, A[i][0].y, A[i][1].y, B[j].x, B[j].y);
                    mma_e4m3(part[i][j], A[i][0].z, A[i][1].z, A[i][0].w, A[i][1].w, B[j].z, B[j].w);
                }
        }
        // C: rows (tokens) gq, gq+8 of each m16 tile; columns (weights) 2tq,
        // 2tq+1; their scales from the stage (zero past rows / N)
        const float *xss = (const float *)(xs + tc_cfg<BM>::SCALES), *wss = xss + BM;
        float xsc[MI][2], wsc[4][2];
#pragma unroll
        for (int i = 0; i < MI; i++)
#pragma unroll
            for (int u = 0; u < 2; u++) xsc[i][u] = xss[wm * WR + i * 16 + gq + 8 * u];
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int u = 0; u < 2; u++) wsc[j][u] = wss[wn * 32 + j * 8 + 2 * tq + u];
#pragma unroll
        for (int i = 0; i < MI; i++)
#pragma unroll
            for (int j = 0; j < 4; j++) {
                acc[i][j][0] += part[i][j][0] * (xsc[i][0] * wsc[j][0]);
                acc[i][j][1] += part[i][j][1] * (xsc[i][0] * wsc[j][1]);
                acc[i][j][2] += part[i][j][2] * (xsc[i][1] * wsc[j][0]);
                acc[i][j][3] += part[i][j][3] * (xsc[i][1] * wsc[j][1]);
            }
    }
#pragma unroll
    for (int i = 0; i < MI; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int q = 0; q < 4; q++) {
                int r = wm * WR + i * 16 + gq + 8 * (q >> 1);
                int n = n0 + wn * 32 + j * 8 + 2 * tq + (q & 1);
                if (r < rows && n < a.N) cu_mat_st(a.out, obase + r, n, acc[i][j][q]);
            }
}

template <int BM>
__global__ void __launch_bounds__(TC_THREADS, 1) k_fp8_gemm_tc(fp8_args a)
{
    extern __shared__ __align__(128) uint8_t tc_smem[];
    cu_pdl_wait();
    cu_pdl_trigger();
    int m0 = blockIdx.y * BM;
    tc_tile<BM>(a, tc_smem, a.w, a.ws, [&](int r) -> int64_t { return m0 + r; }, min(BM, a.M - m0), m0,
                blockIdx.x * TC_BN);
}

// The x row of row r of a plan tile whose rows start at r0 (-1 past rows).
__device__ __forceinline__ int moe_x_row(const fp8_args &a, const cu_moe_plan &p, int r0, int rows, int r)
{
    return r >= rows ? -1 : a.x_perm ? p.perm[r0 + r] / a.x_div : r0 + r;
}

// MoE experts, grouped: blockIdx.y = tile of the routing plan (expert e, BM
// rows from r0 = offset[e] + first), blockIdx.x = 128 weight rows of expert e
// (w + e·ew, ws + e·ews). Out rows r0 + r (the permuted order); x row of
// permuted row q: perm[q] / x_div (x_perm: gate_up reads the token's row) or
// q (down reads the pair's activation row). Fills xr (-1 past the tile's rows)
// and returns false for blocks past the plan's tiles (block-uniform).
template <int BM>
__device__ __forceinline__ bool moe_tile_of(const fp8_args &a, const cu_moe_plan &p, int *xr, int64_t &e, int &r0,
                                            int &rows)
{
    cu_pdl_wait(); // the plan, x and the activations come from earlier kernels
    cu_pdl_trigger();
    if ((int)blockIdx.y >= *p.n_tiles) return false; // the grid is an upper bound
    int2 tile = p.tiles[blockIdx.y];
    e = tile.x;
    r0 = p.offset[e] + tile.y;
    rows = min(BM, p.offset[e + 1] - r0);
    for (int r = threadIdx.x; r < BM; r += blockDim.x) xr[r] = moe_x_row(a, p, r0, rows, r);
    __syncthreads();
    return true;
}

template <int BM>
__global__ void __launch_bounds__(TC_THREADS, 1) k_fp8_moe_gemm_tc(fp8_args a, cu_moe_plan p)
{
    extern __shared__ __align__(128) uint8_t tc_smem[];
    __shared__ int xr[BM];
    int64_t e;
    int r0, rows;
    if (!moe_tile_of<BM>(a, p, xr, e, r0, rows)) return;
    tc_tile<BM>(a, tc_smem, a.w + e * a.ew, a.ws + e * a.ews, [&](int r) -> int64_t { return xr[r]; }, rows, r0,
                blockIdx.x * TC_BN);
}

// ---- grouped MoE GEMM on wgmma (NOTES.md v35) --------------------------------------
//
// k_fp8_moe_wg<BT>: the plan tiles of k_fp8_moe_gemm_tc with the roles swapped
// for Hopper's warpgroup mma (wgmma.m64nBTk32 e4m3, kernels/cuda/wgmma.cuh):
// the block's 128 weight rows are the A operand (warpgroup w: rows 64w ..
// 64w + 63) and the tile's BT token rows the B operand, both K-major in
// 128-byte-swizzled shared memory, where one 128-byte row is one scale group
// of K. Per group each warpgroup sums its 4 k32 steps into a fresh
// accumulator and adds it ·(s_x(token)·s_w(row)) into fp32, the arithmetic of
// tc_tile and the CPU op. The stages are tc_tile's (tc_load, 4 cp.async
// stages, one barrier per group). Accumulator rows are weight rows and
// columns tokens: one store of a warp covers 4 tokens × 8 consecutive weight
// rows, whole 32-byte sectors of out.
#define WG8_STAGES 4
template <int BT> struct wg8_cfg {
    static constexpr int X = 128 * FP8_G;              // the token tile after the weight tile
    static constexpr int SCALES = X + BT * FP8_G;
    static constexpr int STAGE = (SCALES + (BT + TC_BN) * 4 + 1023) / 1024 * 1024;
    static constexpr int BAR = WG8_STAGES * STAGE; // a stage's weight tile landed (TMA): mbarriers
    static constexpr int SMEM = 1024 + BAR + 8 * WG8_STAGES; // + rounding the base to 1024
    static_assert(BT % 32 == 0 && BT <= 128, "whole rounds of token chunks, a scale per thread");
};

template <int BT> struct wg8_lay {
    static constexpr int SCALES = wg8_cfg<BT>::SCALES;
    __device__ static int x(int r, int c) { return wg8_cfg<BT>::X + (int)wg_swz(BT, r, c); }
    __device__ static int w(int r, int c) { return (int)wg_swz(128, r, c); }
};

template <int N> __device__ __forceinline__ void tc_wait(void)
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// A wgmma kernel's pieces (warpgroup wg: weight rows 64wg .., this thread's
// rows rw and rw + 8, token columns 8f + 2tq, + 1). The stage at shared
// address st: its group's products into a fresh accumulator (the first
// product's scale-d 0), committed.
template <int BT>
__device__ __forceinline__ void wg8_mma(uint32_t st, int wg, float (&part)[BT / 8][4])
{
    const uint64_t da = wg_desc(st + wg * 64 * FP8_G, 16, 1024), db = wg_desc(st + wg8_cfg<BT>::X, 16, 1024);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < FP8_G / 32; kk++) wg_ss8<BT>(part, da + 2 * kk, db + 2 * kk, kk > 0); // 32 bytes a step
    wg_commit();
}

// The group's sums (waited for) ·(s_x(token)·s_w(row)) into acc, the scales
// from the stage at stage.
template <int BT>
__device__ __forceinline__ void wg8_promote(const uint8_t *stage, int rw, int tq, float (&part)[BT / 8][4],
                                            float (&acc)[BT / 8][4])
{
    wg_hold(part);
    const float *xs = (const float *)(stage + wg8_cfg<BT>::SCALES), *wsc = xs + BT;
    const float sa = wsc[rw], sb = wsc[rw + 8];
#pragma unroll
    for (int f = 0; f < BT / 8; f++) {
        float x0 = xs[8 * f + 2 * tq], x1 = xs[8 * f + 2 * tq + 1];
        acc[f][0] += part[f][0] * (x0 * sa);
        acc[f][1] += part[f][1] * (x1 * sa);
        acc[f][2] += part[f][2] * (x0 * sb);
        acc[f][3] += part[f][3] * (x1 * sb);
    }
}

// A weight block's outputs (weight rows from n0; the tile's rows rows of out
// from r0), and a fresh accumulator. v76: a lane holds weight rows rw and
// rw + 8 (out's columns) of two token rows; lanes gq and gq ^ 1 (lane ^ 4)
// swap one value of each pair of rows so each stores two adjacent columns of
// one row (even gq the first row, odd the second) as one store, typed once
// (cu_typed): one element a store with the dtype's switch at each took 11k
// cycles a 128 × 128 block (NOTES v76's probe).
template <int BT>
__device__ __forceinline__ void wg8_store(const fp8_args &a, int r0, int rows, int n0, int rw, int tq,
                                          float (&acc)[BT / 8][4])
{
    const int odd = rw & 1; // gq's parity
    const bool paired = cu_mat_pair_ok(a.out);
    cu_typed(a.out.dt, [&](auto ty) {
#pragma unroll
        for (int f = 0; f < BT / 8; f++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const float got = __shfl_xor_sync(0xffffffffu, odd ? acc[f][2 * h] : acc[f][2 * h + 1], 4);
                const float lo = odd ? got : acc[f][2 * h], hi = odd ? acc[f][2 * h + 1] : got;
                const int r = 8 * f + 2 * tq + odd, n = n0 + rw - odd + 8 * h; // n even
                if (r >= rows || n >= a.N) continue;
                if (n + 1 == a.N) cu_mat_st(a.out, r0 + r, n, lo); // an odd N's last column
                else if (paired) cu_mat_st2_as(a.out, r0 + r, n, lo, hi, ty);
                else cu_mat_st2_as(a.out, r0 + r, n, lo, hi, cu_dyn_t());
            }
    });
#pragma unroll
    for (int f = 0; f < BT / 8; f++) acc[f][0] = acc[f][1] = acc[f][2] = acc[f][3] = 0.0f;
}

// One step's copies into stage st by the block: the tokens' rows and scales and
// the weight scales by cp.async (one commit group), and the weight tile (expert
// e's rows n0 .., group g) by cp.async too or, with a.tma, as one TMA box from
// thread 0 whose bytes it announces with its arrival on bar.
template <int BT, class XR>
__device__ __forceinline__ void wg8_load(const fp8_args &a, int64_t e, XR xrow, int rows, int n0, uint32_t st, int g,
                                         uint32_t bar)
{
    const uint8_t *w = a.w + e * a.ew;
    const float *ws = a.ws + e * a.ews;
    if (!a.tma) {
        tc_load<BT, wg8_lay<BT>>(a, w, ws, xrow, rows, n0, st, g);
        return;
    }
    if (threadIdx.x == 0) {
        wg_mbar_expect_tx(bar, TC_BN * FP8_G);
        wg_tma_load3(st, &a.tw, g * FP8_G, n0, (int)e, bar);
    }
    tc_load<BT, wg8_lay<BT>, false>(a, w, ws, xrow, rows, n0, st, g);
}

// v72: with a.tma each step's weight tile (128 rows × the group's 128 bytes of
// this expert's w, zero past N and K) is one TMA box issued by thread 0 into the
// stage's 128-byte-swizzled tile, its bytes counted by the stage's mbarrier;
// the token rows and scales still come by cp.async. 16 of a thread's 16-byte
// copies a step at BT 128 become 8 (BT 32: 5 → 1): prefill attention measured
// the copies' issue as the largest cost of the products' warps (v70).
template <int BT>
__global__ void __launch_bounds__(TC_THREADS, BT == 128 ? 1 : 2)
    k_fp8_moe_wg(const __grid_constant__ fp8_args a, cu_moe_plan p)
{
    using C = wg8_cfg<BT>;
    constexpr int F = BT / 8, S = WG8_STAGES;
    extern __shared__ __align__(1024) uint8_t wg8_smem[];
    __shared__ int xr[BT];
    int64_t e;
    int r0, rows;
    if (!moe_tile_of<BT>(a, p, xr, e, r0, rows)) return;
    auto xrow = [&](int r) -> int64_t { return xr[r]; };
    const int wg = threadIdx.x >> 7, warp = (threadIdx.x >> 5) & 3;
    const int lane = threadIdx.x & 31, gq = lane >> 2, tq = lane & 3;
    const uint8_t *sm = (const uint8_t *)wg_align((char *)wg8_smem);
    const uint32_t s0 = (uint32_t)__cvta_generic_to_shared(sm);
    const int rw = wg * 64 + warp * 16 + gq; // this thread's weight rows rw, rw + 8
    // The block's weight blocks blockIdx.x·npb + j (those below N) one after the
    // other as one stream of U scale groups: step u is group u % G of weight
    // block u / G, so the copies run ahead across blocks and a short K (the
    // down's 4 groups) does not restart the pipeline for every 128 rows.
    const int nb0 = blockIdx.x * a.npb, nbs = min(a.npb, (a.N + TC_BN - 1) / TC_BN - nb0);
    const int U = nbs * a.G;
    if (U <= 0) return; // block-uniform
    auto n0_of = [&](int u) { return (nb0 + u / a.G) * TC_BN; };

    float acc[F][4];
#pragma unroll
    for (int f = 0; f < F; f++) acc[f][0] = acc[f][1] = acc[f][2] = acc[f][3] = 0.0f;
    const uint32_t bar = s0 + (uint32_t)C::BAR; // full[S] (TMA)
    if (a.tma && threadIdx.x == 0) {
        for (int st = 0; st < S; st++) wg_mbar_init(bar + 8 * st, 1);
        wg_fence_smem(); // the barriers made, before the copies that count on them
    }
    // the next step's copies into stage u % S (one commit group each, empty
    // past U); steps are loaded in order, so (weight block, group) is counted
    int lu = 0, lj = 0, lg = 0;
    auto load = [&]() {
        if (lu < U)
            wg8_load<BT>(a, e, xrow, rows, (nb0 + lj) * TC_BN, s0 + (lu % S) * C::STAGE, lg, bar + 8 * (lu % S));
        else tc_commit_empty();
        lu++;
        if (++lg == a.G) lg = 0, lj++;
    };
    // after a weight block's last group: its outputs, and a fresh accumulator
    auto finish = [&](int u) {
        if (u % a.G == a.G - 1) wg8_store<BT>(a, r0, rows, n0_of(u), rw, tq, acc);
    };
    // the copies waited for (by the caller, tc_wait) become visible to wgmma,
    // and every thread is past the previous group's use of its stage
    auto land = [&]() {
        wg_fence_smem();
        __syncthreads();
    };
    auto mma = [&](int g, float (&part)[F][4]) { wg8_mma<BT>(s0 + (g % S) * C::STAGE, wg, part); };
    auto promote = [&](int g, float (&part)[F][4]) { wg8_promote<BT>(sm + (g % S) * C::STAGE, rw, tq, part, acc); };
#pragma unroll
    for (int g = 0; g < S - 1; g++) load();
    float p0[F][4];
    for (int j = 0, g = 0; j < nbs; j++) {
        for (int e = 0; e < a.G; e++, g++) {
            tc_wait<S - 2>(); // groups 0..g landed (g + S - 1 committed)
            land();
            load(); // step g + S - 1, into step g - 1's stage
            if (a.tma) wg_mbar_wait(bar + 8 * (g % S), (g / S) & 1); // and its weight tile
            mma(g, p0);
            wg_wait<0>();
            promote(g, p0);
        }
        finish(g - 1);
    }
}

// v47: k_fp8_moe_wg's tiles and arithmetic warp-specialized (attention.cu's
// v46 structure): a producer warpgroup streams the (weight block, group) steps
// into a ring of stages, and each consumer warpgroup waits for a step's full
// barrier, runs its products and promotion, and releases the stage (empty
// barrier: one arrival from each of the 8 consumer warps, v73); the warpgroups
// drift apart, so one's promotion overlaps the other's products. One block an
// SM (the register split of setmaxnreg).
//
// v52: the work comes in items (a plan tile × npb weight blocks, item w =
// tile · nwbx + weight-block group), block b taking items b, b + gridDim.x,
// ... with every step of them in one ring. Launched with a block an item or
// with a block an SM (persistent, DeepGEMM's structure): then the producer
// streams the next item's weights while the consumers finish and store the
// last one, and no block pays a ring's fill and a launch per item.
//
// v77 (DeepGEMM's operand roles): the 128 tokens of a tile are wgmma's A
// operand (64 a consumer warpgroup) and the 128 weight rows its B, and every
// step's tiles come by TMA: the weight box (v72's map), the token box of x's
// codes in the plan's pair order (fp8_moe_ws_prepare quantizes gate_up's x
// into that order; the down's input is in it) and the tokens' scales,
// group-major. The probe of v76 had the producer issuing 1,024 cp.async copies
// of token rows a step for 76 % of gate_up's time; now one thread issues three
// boxes (and a fourth: the weight rows' scales, made group-major for it).
//
// v78: a finished weight block goes into shared memory (fp32 rows, padded so a
// warp's two-column writes do not collide) and the producer warpgroup's three
// idle warps write it out a row a warp instruction (4 columns a lane) while the
// consumers go on with the next one; v77's probe had the consumers' own stores
// (8 cache lines a warp instruction) at ~30 % of their time. The tile's room
// costs two of v77's six stages (H100: −10 to −12 % at 2048-8192 tokens).
// 128-row tiles only (the plan's at prefill sizes; smaller ones run k_fp8_moe_wg).
#define WS8_THREADS 384
// (80 / 216 asked for 1 K registers more than the block has: v53's launch failure)
#define WS8_PRODUCER_REGS 72
#define WS8_CONSUMER_REGS 216
static_assert(wg_ws_regs_fit<WS8_PRODUCER_REGS, WS8_CONSUMER_REGS>(), "setmaxnreg within the block's registers");
// A stage: the weight tile, then the token tile (128 rows × one 128-byte group
// each, 128-byte-swizzled); the stages' scales apart (WS8_SC bytes a stage: the
// 128 weight rows', then WS8_XSC tokens' from the tile's first row rounded down
// to a multiple of 4: a TMA box must start 16-byte aligned in its inner
// dimension, else the copy is "an illegal instruction" — v77's first runs); then
// the finished tile (TC_BN rows of WS8_OP floats: 544 bytes, so a half-warp's
// float2 writes of 4 rows fall in distinct banks)
#define WS8_STAGE (2 * TC_BN * FP8_G)
#define WS8_XSC (TC_BN + 4)
#define WS8_SC_TX ((TC_BN + WS8_XSC) * 4) // a stage's scale bytes
#define WS8_SC 1152                        // their slot (128-byte-aligned boxes)
static_assert(WS8_SC >= WS8_SC_TX && WS8_SC % 128 == 0, "a stage's scales fit their 128-byte-aligned slot");
#define WS8_STAGES 4
#define WS8_OP (TC_BN + 8)
#define WS8_OUT_AT (WS8_STAGES * WS8_STAGE)
#define WS8_SC_AT (WS8_OUT_AT + TC_BN * WS8_OP * 4)
#define WS8_BAR (WS8_SC_AT + WS8_STAGES * WS8_SC) // full[STAGES], empty[STAGES], the tile's full, empty
#define WS8_XO (WS8_BAR + 8 * (2 * WS8_STAGES + 2)) // a stage's token-scale offset (int)
#define WS8_SMEM (1024 + WS8_XO + 4 * WS8_STAGES)
#define WS8_STORERS 96 // the producer warpgroup's warps 1-3

// Weight-block groups of npb a tile has (items per plan tile).
__host__ __device__ __forceinline__ int ws8_nwbx(const fp8_args &a)
{
    return ((a.N + TC_BN - 1) / TC_BN + a.npb - 1) / a.npb;
}

// Item w's (weight block, group) steps: its group of up to npb weight blocks
// (the last group of a tile may have fewer) times G.
__device__ __forceinline__ int ws8_steps(const fp8_args &a, int w)
{
    return min(a.npb, (a.N + TC_BN - 1) / TC_BN - w % ws8_nwbx(a) * a.npb) * a.G;
}

// Item w: plan tile w / nwbx (expert e, rows r0 .. r0 + rows - 1), weight
// blocks from nb0, U steps.
struct ws8_item {
    int64_t e;
    int r0, rows, nb0, U;
};
__device__ __forceinline__ ws8_item ws8_item_of(const fp8_args &a, const cu_moe_plan &p, int w)
{
    const int nwbx = ws8_nwbx(a);
    int2 tile = p.tiles[w / nwbx];
    ws8_item it;
    it.e = tile.x;
    it.r0 = p.offset[tile.x] + tile.y;
    it.rows = min(TC_BN, p.offset[tile.x + 1] - it.r0);
    it.nb0 = w % nwbx * a.npb;
    it.U = ws8_steps(a, w);
    return it;
}

// A finished weight block's sums into the staged tile (this thread's token rows
// rt and rt + 8, columns 8f + 2tq and + 1), and a fresh accumulator.
__device__ __forceinline__ void ws8_stage(float *ot, int rt, int tq, float (&acc)[TC_BN / 8][4])
{
#pragma unroll
    for (int f = 0; f < TC_BN / 8; f++) {
        *(float2 *)(ot + rt * WS8_OP + 8 * f + 2 * tq) = make_float2(acc[f][0], acc[f][1]);
        *(float2 *)(ot + (rt + 8) * WS8_OP + 8 * f + 2 * tq) = make_float2(acc[f][2], acc[f][3]);
        acc[f][0] = acc[f][1] = acc[f][2] = acc[f][3] = 0.0f;
    }
}

// The storers (threads 32..127): every finished weight block of the block's
// items, in the consumers' order, from the staged tile to out's rows r0 ..
// r0 + rows - 1 (those of the item's expert), a warp a row, 4 columns a lane
// (one 16-byte store of f32, 8-byte of bf16, where out's rows allow it); then
// the tile is the consumers' again.
__device__ __forceinline__ void ws8_drain(const fp8_args &a, const cu_moe_plan &p, int n_items, const float *ot,
                                          uint32_t ofull, uint32_t oempty)
{
    const int sw = (int)(threadIdx.x >> 5) - 1, c = 4 * (threadIdx.x & 31);
    const int es = a.out.dt == SL_DTYPE_F32 ? 4 : 2;
    const bool vec = a.out.ld % 4 == 0 && (uintptr_t)a.out.p % (4 * es) == 0;
    int k = 0;
    for (int w = blockIdx.x; w < n_items; w += gridDim.x) {
        const ws8_item it = ws8_item_of(a, p, w);
        for (int b = 0; b < it.U / a.G; b++, k++) {
            const int n = (it.nb0 + b) * TC_BN + c;
            wg_mbar_wait(ofull, k & 1);
            cu_typed(a.out.dt, [&](auto ty) {
#pragma unroll 4
                for (int r = sw; r < it.rows; r += WS8_STORERS / 32) {
                    const float4 v = *(const float4 *)(ot + r * WS8_OP + c);
                    if (vec && n + 4 <= a.N) cu_mat_st4_as(a.out, it.r0 + r, n, v, ty);
                    else {
                        const float f[4] = {v.x, v.y, v.z, v.w};
                        for (int i = 0; i < 4 && n + i < a.N; i++) cu_mat_st(a.out, it.r0 + r, n + i, f[i]);
                    }
                }
            });
            wg_mbar_arrive(oempty);
        }
    }
}

__global__ void __launch_bounds__(WS8_THREADS, 1) k_fp8_moe_ws(const __grid_constant__ fp8_args a, cu_moe_plan p)
{
    constexpr int F = TC_BN / 8, S = WS8_STAGES;
    extern __shared__ __align__(1024) uint8_t wg8_smem[];
    cu_pdl_wait(); // the plan, x and the activations come from earlier kernels
    cu_pdl_trigger();
    const int n_items = *p.n_tiles * ws8_nwbx(a);
    if ((int)blockIdx.x >= n_items) return; // the grid is an upper bound (block-uniform)
    int n = 0; // this block's steps: those of each of its items, in a row
    for (int w = blockIdx.x; w < n_items; w += gridDim.x) n += ws8_steps(a, w);
    uint8_t *sm = (uint8_t *)wg_align((char *)wg8_smem);
    const uint32_t s0 = (uint32_t)__cvta_generic_to_shared(sm), full = s0 + WS8_BAR, empty = full + 8 * S,
                   ofull = empty + 8 * S, oempty = ofull + 8;
    float *ot = (float *)(sm + WS8_OUT_AT);
    int *xo = (int *)(sm + WS8_XO); // the stage's first token scale in its box (the tile's first row % 4)
    if (threadIdx.x == 0) {
        for (int st = 0; st < S; st++) {
            wg_mbar_init(full + 8 * st, 1); // the producer's arrival with the boxes' bytes
            wg_mbar_init(empty + 8 * st, 8); // a consumer warp's one arrival (v73: not 256 atomics a step)
        }
        wg_mbar_init(ofull, 256); // every consumer thread's, its part of the tile written
        wg_mbar_init(oempty, WS8_STORERS); // every storer's, its rows read
        wg_fence_smem(); // the inits visible to the async proxy before this thread's first box
    }
    __syncthreads();
    const int wg = (int)(threadIdx.x >> 7) - 1; // -1: the producer

    if (wg < 0) {
        wg_regs_dec<WS8_PRODUCER_REGS>(); // (the whole warpgroup: setmaxnreg)
        if (threadIdx.x >= 128 - WS8_STORERS) ws8_drain(a, p, n_items, ot, ofull, oempty);
        if (threadIdx.x != 0) return;
        int w = blockIdx.x, j = 0; // the item being issued, its next step
        ws8_item it = ws8_item_of(a, p, w);
        for (int u = 0; u < n; u++, j++) {
            if (j == it.U) {
                w += gridDim.x;
                j = 0;
                it = ws8_item_of(a, p, w);
            }
            const int n0 = (it.nb0 + j / a.G) * TC_BN, g = j % a.G, st = u % S;
            const uint32_t bar = full + 8 * st, t = s0 + st * WS8_STAGE, sc = s0 + WS8_SC_AT + st * WS8_SC;
            if (u >= S) wg_mbar_wait(empty + 8 * st, (u / S - 1) & 1);
            xo[st] = it.r0 & 3; // (published by the arrival's release)
            wg_mbar_expect_tx(bar, WS8_STAGE + WS8_SC_TX); // the arrival, with the four boxes' bytes
            wg_tma_load3(t, &a.tw, g * FP8_G, n0, (int)it.e, bar);
            wg_tma_load2(t + TC_BN * FP8_G, &a.tx, g * FP8_G, it.r0, bar);
            wg_tma_load2(sc, &a.tsw, n0, (int)it.e * a.G + g, bar);
            wg_tma_load2(sc + TC_BN * 4, &a.tsx, it.r0 & ~3, g, bar);
        }
        return;
    }
    wg_regs_inc<WS8_CONSUMER_REGS>();
    const int warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31, gq = lane >> 2, tq = lane & 3;
    const int rt = wg * 64 + warp * 16 + gq; // this thread's token rows rt, rt + 8 of the tile
    float acc[F][4], p0[F][4], p1[F][4];
#pragma unroll
    for (int f = 0; f < F; f++) acc[f][0] = acc[f][1] = acc[f][2] = acc[f][3] = 0.0f;
    // the item being promoted, its steps and its next step: no plan loads here
    // (v78: the item's first row came with the stage; reading the plan at each
    // item's start put two dependent global loads on the consumers' path)
    // kg: the step's group in its weight block (U is a multiple of G: no j % G on the path)
    int w = blockIdx.x, U = ws8_steps(a, w), j = 0, kg = 0, nst = 0; // nst: weight blocks staged
    // step u's products into part, once its stage has landed
    auto issue = [&](float(&part)[F][4], int u) {
        const int st = u % S;
        wg_mbar_wait(full + 8 * st, (u / S) & 1);
        const uint32_t t = s0 + st * WS8_STAGE;
        const uint64_t da = wg_desc(t + (TC_BN + wg * 64) * FP8_G, 16, 1024), db = wg_desc(t, 16, 1024);
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < FP8_G / 32; kk++) wg_ss8<TC_BN>(part, da + 2 * kk, db + 2 * kk, kk > 0);
        wg_commit();
    };
    // step u's token scales (rows rt, rt + 8; its stage has landed): read before
    // the products' wait, so the promotion's first FMAs do not wait on two
    // dependent shared loads (xo, then the scales)
    auto xscales = [&](int u) {
        const int st = u % S;
        const float *xs = (const float *)(sm + WS8_SC_AT + st * WS8_SC) + TC_BN + xo[st];
        return make_float2(xs[rt], xs[rt + 8]);
    };
    // step u's products (done) · (s_x(token) · s_w(weight row)) into acc, its
    // stage released, a finished weight block staged for the storers
    auto finish = [&](float(&part)[F][4], int u, float2 sx) {
        const int st = u % S;
        wg_hold(part);
        const float *wsc = (const float *)(sm + WS8_SC_AT + st * WS8_SC);
        const float sa = sx.x, sb = sx.y;
#pragma unroll
        for (int f = 0; f < F; f++) {
            const float2 w2 = *(const float2 *)(wsc + 8 * f + 2 * tq);
            acc[f][0] += part[f][0] * (sa * w2.x);
            acc[f][1] += part[f][1] * (sa * w2.y);
            acc[f][2] += part[f][2] * (sb * w2.x);
            acc[f][3] += part[f][3] * (sb * w2.y);
        }
        __syncwarp(); // every lane's scales read: the warp releases the stage
        if (lane == 0) wg_mbar_arrive(empty + 8 * st);
        if (++kg == a.G) { // a weight block done (the storers done with the tile before)
            kg = 0;
            if (nst) wg_mbar_wait(oempty, (nst - 1) & 1);
            ws8_stage(ot, rt, tq, acc);
            wg_mbar_arrive(ofull);
            nst++;
        }
        if (++j == U) {
            w += gridDim.x;
            j = 0;
            U = ws8_steps(a, w);
        }
    };
    // v81: step u + 1's products are issued before step u's promotion (two banks
    // of products, wait_group 1), so the tensor cores run through it: v78's probe
    // had the promotion at ~490 of a ~1,600-cycle step with the products idle.
    // Every branch has the same products in flight on both its sides (ptxas
    // cannot tell which are, and waits for them all, C7517: at the loop's exits
    // when it tested what was left after a promotion). n >= 1: the block has an item.
    // step u + 1 issued into nxt, then step u (in cur) promoted
    auto ahead = [&](float(&cur)[F][4], float(&nxt)[F][4], int u) {
        const float2 sx = xscales(u);
        issue(nxt, u + 1);
        wg_wait<1>();
        finish(cur, u, sx);
    };
    issue(p0, 0);
    int u = 0;
    for (; u + 2 < n; u += 2) { // step u in p0, in flight
        ahead(p0, p1, u);
        ahead(p1, p0, u + 1);
    }
    if (u + 1 < n) { // the last two steps
        ahead(p0, p1, u);
        const float2 sx = xscales(u + 1);
        wg_wait<0>();
        finish(p1, u + 1, sx);
    } else {
        const float2 sx = xscales(u);
        wg_wait<0>();
        finish(p0, u, sx);
    }
}

// ---- CUDA-core GEMM (odd K or unaligned weights) ------------------------------

#define TM 64
#define TN 64
#define TK 32

__global__ void __launch_bounds__(256) k_fp8_gemm(fp8_args a)
{
    __shared__ float xs[TK][TM + 1], wsm[TK][TN + 1];
    cu_pdl_wait();
    cu_pdl_trigger();
    int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    int m0 = blockIdx.y * TM, n0 = blockIdx.x * TN;
    float acc[4][4] = {}, part[4][4];
    for (int g = 0; g < a.G; g++) {
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < 4; j++) part[i][j] = 0.0f;
        int kend = min((g + 1) * FP8_G, a.K);
        for (int k0 = g * FP8_G; k0 < kend; k0 += TK) {
            // stage TK columns of 64 x rows and 64 w rows (decoded; zeros outside)
            for (int i = threadIdx.x; i < TK * TM; i += 256) {
                int r = i / TK, c = i % TK, k = k0 + c;
                int m = m0 + r, n = n0 + r;
                xs[c][r] = (m < a.M && k < kend) ? cu_e4m3_to_f32(a.xq[(int64_t)m * a.ldx + k]) : 0.0f;
                wsm[c][r] = (n < a.N && k < kend) ? cu_e4m3_to_f32(a.w[(int64_t)n * a.ldw + k]) : 0.0f;
            }
            __syncthreads();
#pragma unroll 8
            for (int c = 0; c < TK; c++) {
                float xv[4], wv[4];
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    xv[i] = xs[c][ty * 4 + i];
                    wv[i] = wsm[c][tx * 4 + i];
                }
#pragma unroll
                for (int i = 0; i < 4; i++)
#pragma unroll
                    for (int j = 0; j < 4; j++) part[i][j] += xv[i] * wv[j];
            }
            __syncthreads();
        }
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int m = m0 + ty * 4 + i;
            float s = m < a.M ? a.sx[(int64_t)m * a.G + g] : 0.0f;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                int n = n0 + tx * 4 + j;
                float sw = n < a.N ? a.ws[(int64_t)(n >> a.srow_shift) * a.ldws + g] : 0.0f;
                acc[i][j] += part[i][j] * (s * sw);
            }
        }
    }
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int m = m0 + ty * 4 + i, n = n0 + tx * 4 + j;
            if (m < a.M && n < a.N) cu_mat_st(a.out, m, n, acc[i][j]);
        }
}

// ---- host ----------------------------------------------------------------------

// Blocks of k_fp8_gemv_tc over N weight rows
// Dense GEMVs split K in two over a thread-block cluster where the output has
// fewer than two blocks an SM and each warp still streams at least
// FP8_GV_SPLIT_GROUPS groups of its half: Qwen3-8B's down (N = 4096, K =
// 12288: 256 blocks) 28.4 -> 22.8 µs at M = 1 on an H200. Narrower K lost:
// the cluster's barriers cost more than the extra blocks gain (30B-A3B's o,
// N = 2048, K = 4096, 4 ways: 11.3 -> 13.1 µs; its qkv 2 ways 9.0 -> 12.8).
#define FP8_GV_SPLIT_GROUPS 6

static int fp8_gemv_split(const cu_backend *b, const fp8_args &a)
{
    int64_t rows = fp8_gemv_row_blocks(a), team = GV8_WARPS / fp8_gemv_rt(a.G);
    return rows < 2 * (int64_t)b->n_sm && a.G >= 2 * team * FP8_GV_SPLIT_GROUPS ? 2 : 1;
}

// Raises k's dynamic shared-memory limit to smem once per backend (bit: k's
// bit in b->fp8_smem_set; per kernel and device).
template <class F> static void fp8_smem_raise(cu_backend *b, F *k, int bit, int smem)
{
    if (b->fp8_smem_set & bit) return;
    CU_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    b->fp8_smem_set |= bit;
}

// k_fp8_gemv_cp where it applies (b->fp8_gemv_cp: per pair, 2 also dense;
// up to 16 tokens, whole 16-byte rows, the tile within FP8_CP_MAX_SMEM):
// returns whether it ran.
static int fp8_gemv_cp_launch(cu_backend *b, const fp8_args &a, dim3 grid, int M)
{
    size_t smem = fp8_cp_smem(a.G, a.ids ? 1 : M);
    if (!b->fp8_gemv_cp || (!a.ids && b->fp8_gemv_cp < 2) || M > 16 || !a.vec || smem > FP8_CP_MAX_SMEM)
        return 0;
    if (M <= 8) {
        fp8_smem_raise(b, k_fp8_gemv_cp<1>, 32, FP8_CP_MAX_SMEM);
        cu_launch(b, k_fp8_gemv_cp<1>, grid, dim3(32 * GV8_WARPS), smem, a);
    } else {
        fp8_smem_raise(b, k_fp8_gemv_cp<2>, 64, FP8_CP_MAX_SMEM);
        cu_launch(b, k_fp8_gemv_cp<2>, grid, dim3(32 * GV8_WARPS), smem, a);
    }
    return 1;
}

// Returns the kernel's name (for sl_cuda_matmul_last).
static const char *fp8_gemv_launch(cu_backend *b, const fp8_args &args, unsigned pairs)
{
    fp8_args a = args;
    unsigned rows = fp8_gemv_row_blocks(a);
    if (fp8_gemv_cp_launch(b, a, a.ids ? dim3(pairs, rows) : dim3(rows), a.ids ? 1 : a.M)) return "fp8_gemv_cp";
    if (a.xin.p) // x rows: per pair p / x_div, else M
        fp8_quant_launch(b, a.xin, a.xsilu, a.K, a.ids ? (int)(pairs / a.x_div) : a.M, (uint8_t *)a.xq,
                         (float *)a.sx, a.G, a.G, 1);
    a.split = a.ids ? 1 : fp8_gemv_split(b, a);
    dim3 grid = a.ids ? dim3(pairs, rows) : dim3(rows, (unsigned)a.split);
    int M = a.ids ? 1 : a.M;
    cu_moe_plan none;
    memset(&none, 0, sizeof none);
    dim3 blk(32 * GV8_WARPS);
    unsigned cl = (unsigned)a.split;
    if (M <= 8)
        cu_launch_cl(b, cl, k_fp8_gemv_tc<1>, grid, blk, 0, a, none);
    else if (M <= 16)
        cu_launch_cl(b, cl, k_fp8_gemv_tc<2>, grid, blk, 0, a, none);
    else if (M <= 32)
        cu_launch_cl(b, cl, k_fp8_gemv_tc<4>, grid, blk, 0, a, none);
    else
        cu_launch_cl(b, cl, k_fp8_gemv_tc<8>, grid, blk, 0, a, none);
    return "fp8_gemv_tc";
}

// Tokens a k_fp8_gemv_tc block takes per pass over an expert's rows in plan
// mode (the plan's tile size): 16 (two n8 token tiles); an expert with more
// pairs has several tiles, each streaming its weights (from L2 after the first).
#define MOE_FP8_GV_NT 2

// The GEMV over a plan's tiles (a.plan set): one block per (tile, 16·RT rows).
static void fp8_gemv_plan_launch(cu_backend *b, const fp8_args &a, const cu_moe_plan &p)
{
    cu_launch(b, k_fp8_gemv_tc<MOE_FP8_GV_NT>, dim3((unsigned)p.max_tiles, fp8_gemv_row_blocks(a)),
              dim3(32 * GV8_WARPS), 0, a, p);
}

static fp8_args fp8_args_of(const uint8_t *w, int64_t ldw, const float *ws, int64_t ldws, int N, int K,
                            int srow_shift, const uint8_t *xq, const float *sx, int M, cu_mat out)
{
    fp8_args a;
    memset(&a, 0, sizeof a);
    a.w = w;
    a.xq = xq;
    a.ws = ws;
    a.sx = sx;
    a.ldw = ldw;
    a.ldws = ldws;
    a.M = M;
    a.N = N;
    a.K = K;
    a.G = (K + FP8_G - 1) / FP8_G;
    a.ldx = (int64_t)a.G * FP8_G;
    a.srow_shift = srow_shift;
    a.vec = (K % 16) == 0 && (ldw % 16) == 0 && ((uintptr_t)w % 16) == 0;
    a.out = out;
    a.split = 1;
    return a;
}

cu_fp8_dst cu_fp8_dst_for(sl_backend *be, sl_fp8_act *q, cu_mat y, int vec, int64_t D)
{
    cu_fp8_dst d = {NULL, NULL, fp8_groups(y.cols), 0};
    int level = cu_be(be)->fp8_act; // 0 none, 1 the GEMV's rows, 2 cuBLASLt's too (NOTES.md v110)
    if (!level || (level == 1 && y.rows > FP8_LT_MIN_M) || !vec || y.cols % FP8_G || D % FP8_G ||
        !sl_fp8_act_fits(be, q, y.rows, y.cols))
        return d;
    d.codes = (uint8_t *)q->codes.data;
    d.scales = (float *)q->scales.data;
    d.m4 = y.rows > FP8_LT_MIN_M ? y.rows & ~3 : 0; // fp8_lt's layout
    q->rows = y.rows;
    q->cols = y.cols;
    return d;
}

// The weights' scales group-major as cuBLASLt's VEC128 mode reads them
// (k_fp8_scales_t's layout, ldst = N), made at a weight's first cuBLASLt call
// outside graph capture and kept (NOTES.md v109): the scales never change
// after load, and the transposition was one more launch, ~3 µs, in every call
// from 9 tokens (decode batches and prefill chunks). A call captured before
// any uncaptured one, or one whose copy does not fit in memory, transposes into
// scratch as before. The copies cost 4 bytes per 128 weights of the dense
// projections (3 %; the MoE's per-call transposition for k_fp8_moe_ws keeps
// its scratch: its copies would be 2.4 GB for Coder-Next). cu_release and
// cu_upload drop the copies of scales in the memory they free or overwrite, so
// no later call is given a stale one. FP8_ST_CACHE=0 builds the per-call form
// (A/B timing).
#ifndef FP8_ST_CACHE
#define FP8_ST_CACHE 1
#endif
typedef struct cu_fp8_st {
    const float *ws; // the per-row or block scales (key), NULL: an empty slot
    int64_t ldws;
    int shift, N, G;
    float *st; // their group-major copy (cudaMalloc)
} cu_fp8_st;

struct cu_fp8_st_cache {
    cu_fp8_st *slot; // open addressing by ws, cap a power of two, at most half full
    int n, cap;
};

static unsigned fp8_st_hash(const void *ws, int cap) { return (unsigned)(((uintptr_t)ws >> 8) * 2654435761u) & (cap - 1); }

// The slot of e's key in c (an empty one if absent).
static cu_fp8_st *fp8_st_find(cu_fp8_st_cache *c, const cu_fp8_st &e)
{
    for (unsigned i = fp8_st_hash(e.ws, c->cap);; i = (i + 1) & (c->cap - 1)) {
        cu_fp8_st *s = &c->slot[i];
        if (!s->ws || (s->ws == e.ws && s->ldws == e.ldws && s->shift == e.shift && s->N == e.N && s->G == e.G))
            return s;
    }
}

// c's entries re-inserted into cap slots, except those whose scales lie in
// [drop, drop + bytes).
static int fp8_st_rehash(cu_fp8_st_cache *c, int cap, const void *drop, size_t bytes)
{
    const char *d0 = (const char *)drop;
    cu_fp8_st *old = c->slot;
    int n = c->cap;
    if (!(c->slot = (cu_fp8_st *)calloc((size_t)cap, sizeof *c->slot))) {
        c->slot = old;
        return -1;
    }
    c->cap = cap;
    c->n = 0;
    for (int i = 0; i < n; i++)
        if (old[i].ws && !((const char *)old[i].ws >= d0 && (const char *)old[i].ws < d0 + bytes)) {
            *fp8_st_find(c, old[i]) = old[i];
            c->n++;
        } else if (old[i].ws) {
            cudaFree(old[i].st);
        }
    free(old);
    return 0;
}

// a's weight scales group-major from the cache, made now if absent and
// possible; NULL: the caller transposes into scratch.
static const float *fp8_st_cached(cu_backend *b, const fp8_args &a)
{
    if (!FP8_ST_CACHE) return NULL;
    if (!b->fp8_st && !(b->fp8_st = (cu_fp8_st_cache *)calloc(1, sizeof *b->fp8_st))) return NULL;
    cu_fp8_st_cache *c = b->fp8_st;
    if (!c->cap && fp8_st_rehash(c, 64, NULL, 0)) return NULL;
    cu_fp8_st key = {a.ws, a.ldws, a.srow_shift, a.N, a.G, NULL}, *s = fp8_st_find(c, key);
    if (s->ws) return s->st;
    cudaStreamCaptureStatus cap;
    CU_CHECK(cudaStreamIsCapturing(b->stream, &cap));
    if (cap != cudaStreamCaptureStatusNone) return NULL;
    if (2 * (c->n + 1) > c->cap) {
        if (fp8_st_rehash(c, 2 * c->cap, NULL, 0)) return NULL;
        s = fp8_st_find(c, key);
    }
    if (cudaMalloc((void **)&key.st, sizeof(float) * (size_t)a.N * a.G) != cudaSuccess) {
        cudaGetLastError(); // not sticky: the scratch form still runs
        return NULL;
    }
    fp8_scales_t_launch(b, a.ws, a.ldws, 0, a.srow_shift, a.N, a.G, 1, key.st, a.N);
    *s = key;
    c->n++;
    return key.st;
}

void cu_fp8_st_forget(cu_backend *b, const void *base, size_t bytes)
{
    cu_fp8_st_cache *c = b->fp8_st;
    if (!c || !c->n) return;
    const char *d0 = (const char *)base;
    int hit = 0;
    for (int i = 0; i < c->cap && !hit; i++)
        hit = c->slot[i].ws && (const char *)c->slot[i].ws >= d0 && (const char *)c->slot[i].ws < d0 + bytes;
    if (hit && fp8_st_rehash(c, c->cap, base, bytes)) cu_fp8_st_free(b); // (no memory: all go)
}

void cu_fp8_st_free(cu_backend *b)
{
    cu_fp8_st_cache *c = b->fp8_st;
    if (!c) return;
    for (int i = 0; i < c->cap; i++)
        if (c->slot[i].ws) cudaFree(c->slot[i].st);
    free(c->slot);
    free(c);
    b->fp8_st = NULL;
}

// The GEMM through cuBLASLt (matmul.cu) where it is chosen and supported:
// AUTO from FP8_LT_MIN_M + 1 tokens (below, the own GEMV), any size when
// forced (SL_CUDA_MM_CUBLASLT); SL_CUDA_MM_GEMV keeps the own kernels. x is
// quantized into a.xq with group-major scales in a.sx; the checkpoint's block
// scales go to cuBLASLt as they are, per-row scales are made group-major in
// scratch. cuBLASLt takes the rows up to a multiple of 4 (a group's x scales,
// M floats, must start 16-byte aligned: it refused every M % 4 != 0), the
// own GEMV the 1-3 left (token-major scales after the group-major ones).
// xa: x's codes made by the op that wrote x in this layout (cu_fp8_dst's m4,
// made exactly where M > FP8_LT_MIN_M), used instead of quantizing x here.
// Returns 1 when it ran, 0 when the own kernels must.
static int fp8_lt(cu_backend *b, const fp8_args &a, const sl_tensor *x, const sl_fp8_act *xa)
{
    int force = b->mm_force, M4 = a.M & ~3, rest = a.M - M4;
    // whole 128-groups only (every checkpoint's K is; cuBLASLt's block scales
    // assume them), and K >= FP8_LT_MIN_K
    if (force == SL_CUDA_MM_GEMV || !a.vec || a.K % FP8_G || a.K < FP8_LT_MIN_K || M4 == 0 ||
        (force == SL_CUDA_MM_AUTO && a.M <= FP8_LT_MIN_M))
        return 0;
    // the checkpoint's [ceil(N/128), G] blocks as they are (BLK128x128) from FP8_LT_BLK_MIN_M rows;
    // below, VEC128 on their per-row transposition (fp8_st_cached) was the faster (NOTES.md v20, v111)
    int blk = a.srow_shift == 7 && a.ldws == a.G && a.M >= FP8_LT_BLK_MIN_M;
    cu_mat X = {(void *)a.xq, SL_DTYPE_F8E4M3, M4, a.K, a.ldx}, W = {(void *)a.w, SL_DTYPE_F8E4M3, a.N, a.K, a.ldw};
    cu_mat O = cu_mat_rows(a.out, 0, M4), xm = cu_mat_of(x);
    cu_mm_plan *p = cu_matmul_fp8_plan(b, O, X, W, blk);
    if (!p) return 0;
    xa = a.M > FP8_LT_MIN_M ? xa : NULL; // (below it a producer's codes are token-major)
    float *sx = xa ? (float *)xa->scales.data : (float *)a.sx;
    if (xa) X.p = xa->codes.data;
    else fp8_quant_launch(b, cu_mat_rows(xm, 0, M4), 0, a.K, M4, (uint8_t *)a.xq, sx, a.G, 1, M4);
    const float *kept = blk ? NULL : fp8_st_cached(b, a);
    float *st = NULL; // the scratch form (fp8_st_cached)
    if (!blk && !kept) {
        st = (float *)cu_tmp_alloc(b, sizeof(float) * (size_t)a.N * a.G);
        fp8_scales_t_launch(b, a.ws, a.ldws, 0, a.srow_shift, a.N, a.G, 1, st, a.N);
    }
    int ran = cu_matmul_fp8_run(b, p, O, X, sx, W, blk ? a.ws : kept ? kept : st) == 0;
    cu_tmp_free(b, st);
    if (ran && rest) {
        fp8_args t = a;
        t.M = rest;
        t.xq = (const uint8_t *)X.p + (int64_t)M4 * a.ldx;
        t.sx = sx + (int64_t)M4 * a.G;
        t.out = cu_mat_rows(a.out, M4, rest);
        if (!xa) t.xin = cu_mat_rows(xm, M4, rest); // (else its codes follow the M4 rows')
        fp8_gemv_launch(b, t, 1);
    }
    if (ran) b->mm_last = "fp8_cublaslt";
    return ran;
}

void cu_matmul_fp8(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *w,
                   const sl_tensor *w_scale, const sl_fp8_act *xa)
{
    cu_backend *b = cu_be(be);
    int M = (int)sl_tensor_rows(x), K = (int)sl_tensor_cols(x), N = (int)sl_tensor_rows(w);
    int G = (K + FP8_G - 1) / FP8_G;
    if (M == 0) return;
    fp8_args a = fp8_args_of((const uint8_t *)w->data, sl_tensor_ld(w), (const float *)w_scale->data,
                             sl_tensor_ld(w_scale), N, K, sl_tensor_rows(w_scale) == N ? 0 : 7, NULL, NULL, M,
                             cu_mat_of(out));
    uint8_t *xq = (uint8_t *)cu_tmp_alloc(b, (size_t)M * G * FP8_G);
    float *sx = (float *)cu_tmp_alloc(b, sizeof(float) * (size_t)M * G);
    a.xq = xq;
    a.sx = sx;
    if (fp8_lt(b, a, x, xa)) {
        cu_tmp_free(b, sx);
        cu_tmp_free(b, xq);
        return;
    }
    if (M <= FP8_GEMV_MAX_M || (M <= GV8_MAXM && !a.vec)) {
        if (xa && M <= FP8_LT_MIN_M) { // x's codes, made by the op that wrote x (token-major, as k_fp8_quant's)
            a.xq = (const uint8_t *)xa->codes.data;
            a.sx = (const float *)xa->scales.data;
        } else {
            a.xin = cu_mat_of(x); // quantized by the GEMV itself, or just before it
        }
        b->mm_last = fp8_gemv_launch(b, a, 1);
    } else {
        fp8_quant_launch(b, cu_mat_of(x), 0, K, M, xq, sx, G, G, 1);
        if (a.vec && M <= GV8_MAXM) { // 64-token tiles: x read once per 128 weight rows
            fp8_smem_raise(b, k_fp8_gemm_tc<64>, 8, tc_cfg<64>::SMEM);
            cu_launch(b, k_fp8_gemm_tc<64>, dim3(cu_blocks(N, TC_BN), 1), dim3(TC_THREADS), tc_cfg<64>::SMEM, a);
            b->mm_last = "fp8_gemm_tc";
        } else if (a.vec) {
            fp8_smem_raise(b, k_fp8_gemm_tc<TC_BM>, 1, tc_cfg<TC_BM>::SMEM);
            cu_launch(b, k_fp8_gemm_tc<TC_BM>, dim3(cu_blocks(N, TC_BN), cu_blocks(M, TC_BM)), dim3(TC_THREADS),
                      tc_cfg<TC_BM>::SMEM, a);
            b->mm_last = "fp8_gemm_tc";
        } else {
            cu_launch(b, k_fp8_gemm, dim3(cu_blocks(N, TN), cu_blocks(M, TM)), dim3(256), 0, a);
            b->mm_last = "fp8_gemm";
        }
    }
    cu_tmp_free(b, sx);
    cu_tmp_free(b, xq);
}

// out[t, c] = Σ_j weights[t, j] · y[t·k + j, c], j in order (as the CPU op)
__global__ void k_fp8_moe_combine(cu_mat out, const float *y, const float *wt, int64_t wt_ld, int k, int H)
{
    cu_pdl_wait();
    cu_pdl_trigger();
    int t = blockIdx.y, c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= H) return;
    float acc = cu_wsum(wt + (int64_t)t * wt_ld, k, [&](int j) { return y[((int64_t)t * k + j) * H + c]; });
    cu_mat_st(out, t, c, acc);
}

// AUTO (sl_cuda_moe_fp8), measured on an H200 (NOTES.md v17, v20) at
// 30B-A3B and Coder-Next shapes: per-pair GEMVs below MOE_FP8_EXPERT_GEMV_MIN_T
// tokens (at 16 tokens 0.24 / 0.26 ms, one pass per expert 0.25 / 0.40);
// from there one GEMV pass per active expert over its tokens (the plan; at 64
// tokens 0.36 / 0.84 ms against the pairs' ~1.0 and the grouped GEMMs'
// 0.58 / 1.19); the grouped GEMMs once the experts average
// MOE_FP8_GROUPED_PAIRS_PER_EXPERT pairs (the GEMV pass re-streams an expert
// for every 16 of its tokens). With 32-row tiles below 40 pairs an expert
// (v24): at 512 tokens 30B's grouped 0.53 ms against 0.84, Coder-Next's (11
// pairs an expert) 0.97 against 1.12; at 128 tokens 30B (8 an expert) 0.36
// both ways, at 256 Coder-Next (5.5) 0.92 against 0.86.
#define MOE_FP8_EXPERT_GEMV_MIN_T 32
// AUTO: moe.cu's few-token kernels from this many tokens up to their
// MOE_GV_MAX_PAIRS (at one token the per-pair GEMVs measured 32-34 µs against
// their 35-36 on an H200; from 4 tokens they win or tie, NOTES.md v29, v30)
#define MOE_FP8_GV_MIN_T 2
#define MOE_FP8_GROUPED_PAIRS_PER_EXPERT 8
// AUTO: the grouped GEMMs from this many pairs whatever the experts average,
// in the few-token kernels' place too: on wgmma (v40's tiles) they beat them
// at 64 tokens (30B-A3B 0.272 against 0.297 ms, Coder-Next 0.443 against
// 0.466 on an H100) and tie at 32 (256 and 352 pairs), and beat the GEMV pass
// per expert from 16 tokens (NOTES v66)
#define MOE_FP8_GROUPED_MIN_PAIRS 512
// The grouped GEMMs' token tile rows from the pairs an expert averages
// (moe_fp8_grouped); #ifndef so that kernels/dev/variants.sh can time others
#ifndef MOE_FP8_BM128_ROWS
#define MOE_FP8_BM128_ROWS 96
#endif
#ifndef MOE_FP8_BM64_ROWS
#define MOE_FP8_BM64_ROWS 40
#endif

size_t cu_moe1_sync_bytes(void) { return sizeof(unsigned) * (MOE1_MAXK + MOE1_MAXRB + 1); }

#define MOE1_MAX_SMEM (220 * 1024)
// k_fp8_moe_one where it applies (one token, whole 16-byte weight rows, the
// counters and shared memory enough): returns whether it ran. The grid is
// what the GPU holds at once (a block may wait on any other), at most one
// block an item.
static int moe1_launch(cu_backend *b, const fp8_args &gu, const fp8_args &dn, const sl_tensor *x,
                       const sl_tensor *weights, cu_mat out)
{
    int k = gu.topk, nb2 = (int)fp8_gemv_row_blocks(dn), n = k * ((int)fp8_gemv_row_blocks(gu) + nb2);
    size_t smem = moe1_smem(gu.G, dn.G);
    if (!gu.vec || !dn.vec || k > MOE1_MAXK || nb2 > MOE1_MAXRB || smem > MOE1_MAX_SMEM ||
        sl_tensor_cols(weights) != k)
        return 0;
    if (!(b->fp8_smem_set & (1 << 16))) // all of the SM's memory as shared: what the occupancy assumes
        CU_CHECK(cudaFuncSetAttribute(k_fp8_moe_one, cudaFuncAttributePreferredSharedMemoryCarveout,
                                      cudaSharedmemCarveoutMaxShared));
    fp8_smem_raise(b, k_fp8_moe_one, 1 << 16, MOE1_MAX_SMEM);
    if (b->moe1_smem != smem) {
        CU_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b->moe1_per_sm, k_fp8_moe_one, 32 * GV8_WARPS, smem));
        b->moe1_smem = smem;
    }
    if (b->moe1_per_sm < 1) return 0;
    moe1_args m;
    m.gu = gu;
    m.dn = dn;
    m.x = cu_mat_of(x);
    m.wt = (const float *)weights->data;
    m.out = out;
    m.sync = b->moe1_sync;
    int grid = b->moe1_per_sm * b->n_sm < n ? b->moe1_per_sm * b->n_sm : n;
    cu_launch(b, k_fp8_moe_one, dim3((unsigned)grid), dim3(32 * GV8_WARPS), smem, m);
    return 1;
}

// silu(gate)·up of the rows of the gate_up output (a.out, [rows, 2I]) quantized
// as the down's input (d.xq, d.sx; d.K = I), the scales token-major (sxg 0) or
// group-major (sx[g · sxg + row]: k_fp8_moe_ws)
static void fp8_quant_silu(cu_backend *b, const fp8_args &a, const fp8_args &d, int rows, int64_t sxg)
{
    fp8_quant_launch(b, a.out, 1, d.K, rows, (uint8_t *)d.xq, (float *)d.sx, d.G, sxg ? 1 : d.G, sxg ? sxg : 1);
}

// Weight blocks a block of k_fp8_moe_wg walks: enough that blocks are not
// mostly pipeline fill (a short K), few enough that the grid keeps about 4
// waves of blocks (max_tiles bounds the plan's tiles from above; a divisor of
// the weight blocks, so every block gets as many) when SL_CUDA_MOE_FP8_NPB=0;
// n fixes it (the default 1, a block per weight block as v35: the walk measured
// no faster on an H200, NOTES.md v38).
static int moe_fp8_wg_npb(const cu_backend *b, const fp8_args &a, const cu_moe_plan &p, int bm)
{
    int nb = cu_blocks(a.N, TC_BN);
    if (b->moe_fp8_npb > 0) return b->moe_fp8_npb < nb ? b->moe_fp8_npb : nb;
    int per_sm = bm == 128 ? 1 : 2; // wg8_cfg's shared memory
    int64_t target = (int64_t)nb * p.max_tiles / (4LL * per_sm * b->n_sm);
    int npb = 1;
    for (int d = 1; d <= nb; d++)
        if (nb % d == 0 && d <= target) npb = d;
    return npb;
}

template <int BM> static void moe_fp8_gemm_launch_bm(cu_backend *b, fp8_args a, const cu_moe_plan &p, cu_moe_wg wg)
{
    dim3 grid(cu_blocks(a.N, TC_BN), (unsigned)p.max_tiles);
    if (wg != CU_MOE_WG_TC) {
        a.npb = wg == CU_MOE_WG_WSP ? 1 : moe_fp8_wg_npb(b, a, p, BM);
        grid.x = (unsigned)((grid.x + a.npb - 1) / a.npb);
    }
    if (wg == CU_MOE_WG_WS || wg == CU_MOE_WG_WSP) { // items in x: one a block, or one block an SM walking them
        SL_ASSERT(BM == TC_BN); // (moe_fp8_ws_prepare)
        int64_t items = (int64_t)ws8_nwbx(a) * p.max_tiles;
        grid = dim3((unsigned)(wg == CU_MOE_WG_WSP && items > b->n_sm ? b->n_sm : items));
        fp8_smem_raise(b, k_fp8_moe_ws, 1 << 17, WS8_SMEM);
        cu_launch(b, k_fp8_moe_ws, grid, dim3(WS8_THREADS), WS8_SMEM, a, p);
    } else if (wg == CU_MOE_WG_WG) {
        fp8_smem_raise(b, k_fp8_moe_wg<BM>, (BM == 32 ? 1 : BM == 64 ? 2 : 4) << 8, wg8_cfg<BM>::SMEM);
        cu_launch(b, k_fp8_moe_wg<BM>, grid, dim3(TC_THREADS), wg8_cfg<BM>::SMEM, a, p);
    } else {
        fp8_smem_raise(b, k_fp8_moe_gemm_tc<BM>, BM == 32 ? 16 : BM == 64 ? 4 : 2, tc_cfg<BM>::SMEM);
        cu_launch(b, k_fp8_moe_gemm_tc<BM>, grid, dim3(TC_THREADS), tc_cfg<BM>::SMEM, a, p);
    }
}

// The grouped GEMM over the plan's tiles of bm (32, 64 or 128) rows on kernel wg
// (not AUTO).
static void moe_fp8_gemm_launch(cu_backend *b, const fp8_args &a, const cu_moe_plan &p, int bm, cu_moe_wg wg)
{
    if (bm == 128) moe_fp8_gemm_launch_bm<128>(b, a, p, wg);
    else if (bm == 64) moe_fp8_gemm_launch_bm<64>(b, a, p, wg);
    else moe_fp8_gemm_launch_bm<32>(b, a, p, wg);
}

// A 2-D TMA map of rows × cols elements of esz bytes (row stride ld elements)
// in boxes of bc × br, 128-byte-swizzled or not, zero past the tensor; 0 where
// TMA cannot serve (a base or a stride not 16-byte aligned, no encoder).
static int fp8_tma_map2(CUtensorMap *m, const void *p, int esz, int64_t cols, int64_t rows, int64_t ld, int bc, int br,
                        int swizzle)
{
    const PFN_cuTensorMapEncodeTiled_v12000 encode = cu_tensor_map_encoder();
    cuuint64_t dim[2] = {(cuuint64_t)cols, (cuuint64_t)rows}, stride[1] = {(cuuint64_t)(ld * esz)};
    cuuint32_t box[2] = {(cuuint32_t)bc, (cuuint32_t)br}, step[2] = {1, 1};
    return encode && ((uintptr_t)p & 15) == 0 && ld * esz % 16 == 0 &&
           encode(m, esz == 1 ? CU_TENSOR_MAP_DATA_TYPE_UINT8 : CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 2, (void *)p, dim,
                  stride, box, step, CU_TENSOR_MAP_INTERLEAVE_NONE,
                  swizzle ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_NONE,
                  CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// k_fp8_moe_ws's maps (v77) of a's token rows, x's codes (rows × ldx bytes,
// the plan's pair order) in boxes of one group × 128 rows, 128-byte-swizzled,
// and their scales group-major (G rows of sxg floats) in boxes of 128; and of
// the weight scales made group-major into st (E · G rows of ldst floats).
static int fp8_moe_tma_ws(fp8_args &a, int rows, int64_t sxg, const float *st, int E, int64_t ldst)
{
    return fp8_tma_map2(&a.tx, a.xq, 1, a.ldx, rows, a.ldx, FP8_G, TC_BN, 1) &&
           fp8_tma_map2(&a.tsx, a.sx, 4, rows, a.G, sxg, WS8_XSC, 1, 0) &&
           fp8_tma_map2(&a.tsw, st, 4, a.N, (int64_t)E * a.G, ldst, TC_BN, 1, 0);
}

// What k_fp8_moe_ws (v77) reads, where it can run (both weights' tiles by
// TMA): gate_up's x quantized in the plan's pair order (row q: token perm[q] /
// k), its scales group-major; both weights' scales group-major (per expert, G
// rows of the N rows' scales: per-row scales, a box of 128 a step); the maps of
// those and of the down's input (d.xq, d.sx: its scales to be written group-
// major, d.sx holding G × sxg floats). The scratch is tmp[0..2], freed by the
// caller. Returns the scales' row stride sxg (P rounded up to 16-byte rows), or
// 0 with nothing done.
static int64_t moe_fp8_ws_prepare(cu_backend *b, fp8_args &a, fp8_args &d, cu_mat x, const cu_moe_plan &p, int P,
                                  int k, int E, void *tmp[3])
{
    const int64_t sxg = ((int64_t)P + 3) & ~3LL, lda = (a.N + 3) & ~3, ldd = (d.N + 3) & ~3;
    if (!a.tma || !d.tma) return 0;
    uint8_t *xp = (uint8_t *)cu_tmp_alloc(b, (size_t)P * a.ldx);
    float *sp = (float *)cu_tmp_alloc(b, sizeof(float) * (size_t)a.G * sxg);
    float *st = (float *)cu_tmp_alloc(b, sizeof(float) * (size_t)E * (a.G * lda + d.G * ldd));
    fp8_args ax = a, dx = d;
    ax.xq = xp;
    ax.sx = sp;
    if (!fp8_moe_tma_ws(ax, P, sxg, st, E, lda) || !fp8_moe_tma_ws(dx, P, sxg, st + (size_t)E * a.G * lda, E, ldd)) {
        cu_tmp_free(b, st);
        cu_tmp_free(b, sp);
        cu_tmp_free(b, xp);
        return 0;
    }
    a = ax;
    d = dx;
    tmp[0] = xp;
    tmp[1] = sp;
    tmp[2] = st;
    fp8_quant_launch(b, x, 0, a.K, P, xp, sp, a.G, 1, sxg, p.perm, k);
    fp8_scales_t_launch(b, a.ws, a.ldws, a.ews, a.srow_shift, a.N, a.G, E, st, lda);
    fp8_scales_t_launch(b, d.ws, d.ldws, d.ews, d.srow_shift, d.N, d.G, E, st + (size_t)E * a.G * lda, ldd);
    return sxg;
}

// The grouped path: pairs sorted by expert (moe.cuh's plan, with perm), per
// tile of one expert's rows the tensor-core GEMM over that expert's gate_up
// (x rows read through perm: no gather) into h in the permuted order, silu·up
// quantized per row, the GEMM over down into y (permuted rows), then the
// combine in j order through pos. Every row is computed from its own codes
// and scales alone, so results do not depend on the permutation.
// gemv: the tiles go to k_fp8_gemv_tc in plan mode (16 tokens a tile, 16
// weight rows a block: decode batches, a few pairs per expert) instead of the
// tensor-core GEMM (32/64/128-row tiles, 128 weight rows a block).
static void moe_fp8_grouped(cu_backend *b, fp8_args a, fp8_args d, cu_mat x, int T, int k, int E, cu_mat out,
                            const sl_tensor *weights, const float *y, int gemv, cu_moe_wg wg)
{
    int64_t P = (int64_t)T * k;
    // 128-row tiles once experts average MOE_FP8_BM128_ROWS rows, 64 from
    // MOE_FP8_BM64_ROWS, else 32: less padding (Coder-Next's 1000-token prefill
    // averages 21 pairs an expert, and its 64-row tiles ran 3 rows of mma for
    // each row used; 32 is written blind, NOTES.md v24)
    int bm = gemv                                      ? 8 * MOE_FP8_GV_NT
             : P >= MOE_FP8_BM128_ROWS * (int64_t)E ? 128
             : P >= MOE_FP8_BM64_ROWS * (int64_t)E  ? 64
                                                     : 32;
    // AUTO: the persistent warp-specialized kernel at 128-row tiles (v74, H100:
    // 30B-A3B 2048 / 4096 / 8192 tokens 0.901 / 1.517 / 2.716 ms against the plain
    // kernel's 0.977 / 1.648 / 2.975, Coder-Next 8192 3.595 against 4.004), the plain
    // one at 32 and 64 rows (Coder-Next 4096: 1.708 against 2.318)
    if (wg == CU_MOE_WG_AUTO) wg = bm == 128 ? CU_MOE_WG_WSP : CU_MOE_WG_WG;
    cu_moe_plan p;
    cu_moe_plan_make(b, &p, a.ids, a.ids_ld, T, k, E, bm, 1);
    int64_t sxg = 0; // the down's scales token-major, or group-major for k_fp8_moe_ws
    void *tmp[3] = {NULL, NULL, NULL};
    if (!gemv && bm == TC_BN && (wg == CU_MOE_WG_WS || wg == CU_MOE_WG_WSP))
        sxg = moe_fp8_ws_prepare(b, a, d, x, p, (int)P, k, E, tmp);
    if (!sxg) {
        if (wg == CU_MOE_WG_WS || wg == CU_MOE_WG_WSP) wg = CU_MOE_WG_WG; // (what k_fp8_moe_ws needs is missing)
        fp8_quant_launch(b, x, 0, a.K, T, (uint8_t *)a.xq, (float *)a.sx, a.G, a.G, 1);
    }
    a.M = (int)P;
    a.x_perm = 1;
    a.plan = gemv;
    if (gemv) fp8_gemv_plan_launch(b, a, p);
    else moe_fp8_gemm_launch(b, a, p, bm, wg);
    fp8_quant_silu(b, a, d, (int)P, sxg);
    d.M = (int)P;
    d.x_perm = 0;
    d.plan = gemv;
    if (gemv) fp8_gemv_plan_launch(b, d, p);
    else moe_fp8_gemm_launch(b, d, p, bm, wg);
    cu_moe_combine_run(b, out, y, (const float *)weights->data, sl_tensor_ld(weights), k, &p);
    cu_moe_plan_free(b, &p);
    for (int i = 0; i < 3; i++) cu_tmp_free(b, tmp[i]);
    static const char *names[4][3] = {{"fp8_moe_grouped_tc32", "fp8_moe_grouped_tc64", "fp8_moe_grouped_tc128"},
                                      {"fp8_moe_grouped_wg32", "fp8_moe_grouped_wg64", "fp8_moe_grouped_wg128"},
                                      {"fp8_moe_grouped_ws32", "fp8_moe_grouped_ws64", "fp8_moe_grouped_ws128"},
                                      {"fp8_moe_grouped_wsp32", "fp8_moe_grouped_wsp64", "fp8_moe_grouped_wsp128"}};
    b->mm_last = gemv ? "fp8_moe_expert_gemv" : names[wg][bm == 128 ? 2 : bm == 64 ? 1 : 0];
}

// The per-pair path (after x's quantization): the GEMV over each pair's
// expert (gate_up), again over down with silu·up quantized by it, then the
// routing-weighted sum in j order.
static void moe_fp8_pairs(cu_backend *b, fp8_args a, fp8_args d, int T, int k, cu_mat out, const sl_tensor *weights,
                          const float *y)
{
    unsigned P = (unsigned)(T * k);
    int H = d.N;
    // each GEMV right after a quantization, which writes no ids
    a.ids_early = d.ids_early = 1;
    fp8_gemv_launch(b, a, P);
    d.xin = a.out; // silu·up quantized by the down GEMV (or just before it)
    d.xsilu = 1;
    fp8_gemv_launch(b, d, P);
    cu_launch(b, k_fp8_moe_combine, dim3((unsigned)cu_blocks(H, 256), (unsigned)T), dim3(256), 0, out, y,
              (const float *)weights->data, sl_tensor_ld(weights), k, H);
    b->mm_last = "fp8_moe_gemv";
}

// k_fp8_moe_wg's TMA map of the experts' weights (v72): a 3-D tensor of E experts × N rows
// × K bytes, boxes of one scale group (128 bytes) × 128 rows with the 128-byte swizzle of
// the wgmma operand layout, zero past N and K. 0 (cp.async) where TMA cannot serve: a base
// or a stride not 16-byte aligned, no encoder in the driver.
static int fp8_moe_tma_map(fp8_args &a, int E)
{
    const PFN_cuTensorMapEncodeTiled_v12000 encode = cu_tensor_map_encoder();
    cuuint64_t dim[3] = {(cuuint64_t)a.K, (cuuint64_t)a.N, (cuuint64_t)E};
    cuuint64_t stride[2] = {(cuuint64_t)a.ldw, (cuuint64_t)a.ew};
    cuuint32_t box[3] = {FP8_G, TC_BN, 1}, step[3] = {1, 1, 1};
    return encode && ((uintptr_t)a.w & 15) == 0 && a.ldw % 16 == 0 && a.ew % 16 == 0 &&
           encode(&a.tw, CU_TENSOR_MAP_DATA_TYPE_UINT8, 3, (void *)a.w, dim, stride, box, step,
                  CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                  CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

void cu_moe_experts_fp8(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *ids,
                        const sl_tensor *weights, const sl_tensor *gate_up, const sl_tensor *gate_up_scale,
                        const sl_tensor *down, const sl_tensor *down_scale)
{
    cu_backend *b = cu_be(be);
    int T = (int)sl_tensor_rows(x), H = (int)sl_tensor_cols(x), I = (int)down->ne[2];
    int k = (int)sl_tensor_cols(ids), P = T * k, E = (int)gate_up->ne[0];
    int GH = (H + FP8_G - 1) / FP8_G, GI = (I + FP8_G - 1) / FP8_G;
    SL_ASSERT(ids->dtype == SL_DTYPE_I32 && weights->dtype == SL_DTYPE_F32);
    if (T == 0) return;
    // AUTO: the wgmma grouped GEMMs take batches this large (v66)
    bool wg_batch = b->moe_fp8_wg != CU_MOE_WG_TC && P >= MOE_FP8_GROUPED_MIN_PAIRS;
    // the few-token kernels (moe.cu) where their pairs fit (NOTES.md v29, v30)
    if ((b->moe_fp8_path == SL_CUDA_MOE_FP8_GV ||
         (b->moe_fp8_path == SL_CUDA_MOE_FP8_AUTO && T >= MOE_FP8_GV_MIN_T && !wg_batch)) &&
        cu_moe_experts_fp8_gv(be, out, x, ids, weights, gate_up, gate_up_scale, down, down_scale)) {
        b->mm_last = "fp8_moe_gv";
        return;
    }
    float *h = (float *)cu_tmp_alloc(b, sizeof(float) * (size_t)P * 2 * I);
    float *y = (float *)cu_tmp_alloc(b, sizeof(float) * (size_t)P * H);
    // the codes of x and of silu·up, and their scales
    uint8_t *xq = (uint8_t *)cu_tmp_alloc(b, (size_t)T * GH * FP8_G);
    uint8_t *hq = (uint8_t *)cu_tmp_alloc(b, (size_t)P * GI * FP8_G);
    float *sx = (float *)cu_tmp_alloc(b, sizeof(float) * (size_t)T * GH);
    // (P rounded up to 4 rows: k_fp8_moe_ws's group-major scales, moe_fp8_ws_prepare)
    float *sh = (float *)cu_tmp_alloc(b, sizeof(float) * (size_t)((P + 3) & ~3) * GI);

    cu_mat hm = {h, SL_DTYPE_F32, P, 2 * I, 2 * I};
    fp8_args a = fp8_args_of((const uint8_t *)gate_up->data, gate_up->st[1], (const float *)gate_up_scale->data,
                             gate_up_scale->st[1], 2 * I, H, 0, xq, sx, 1, hm);
    a.ids = (const int32_t *)ids->data;
    a.ids_ld = sl_tensor_ld(ids);
    a.topk = k;
    a.x_div = k;
    a.ew = gate_up->st[0];
    a.ews = gate_up_scale->st[0];
    a.vec = a.vec && (a.ew % 16) == 0;

    cu_mat ym = {y, SL_DTYPE_F32, P, H, H};
    fp8_args d = fp8_args_of((const uint8_t *)down->data, down->st[1], (const float *)down_scale->data,
                             down_scale->st[1], H, I, 0, hq, sh, 1, ym);
    d.ids = a.ids;
    d.ids_ld = a.ids_ld;
    d.topk = k;
    d.x_div = 1;
    d.ew = down->st[0];
    d.ews = down_scale->st[0];
    d.vec = d.vec && (d.ew % 16) == 0;

    int path = b->moe_fp8_path;
    int grouped = (path == SL_CUDA_MOE_FP8_GROUPED || path == SL_CUDA_MOE_FP8_GROUPED_TC ||
                   path == SL_CUDA_MOE_FP8_GROUPED_WS || path == SL_CUDA_MOE_FP8_GROUPED_WSP ||
                   (path == SL_CUDA_MOE_FP8_AUTO && (P >= MOE_FP8_GROUPED_PAIRS_PER_EXPERT * E || wg_batch))) &&
                  a.vec && d.vec;
    cu_moe_wg wg = path == SL_CUDA_MOE_FP8_GROUPED       ? CU_MOE_WG_WG
                   : path == SL_CUDA_MOE_FP8_GROUPED_WS  ? CU_MOE_WG_WS
                   : path == SL_CUDA_MOE_FP8_GROUPED_WSP ? CU_MOE_WG_WSP
                   : path == SL_CUDA_MOE_FP8_AUTO        ? (cu_moe_wg)b->moe_fp8_wg
                                                         : CU_MOE_WG_TC;
    if (grouped && wg != CU_MOE_WG_TC && b->moe_fp8_tma) { // the wgmma kernels' weight tiles by TMA (v72, v73)
        a.tma = fp8_moe_tma_map(a, E) && fp8_moe_tma_map(d, E);
        d.tma = a.tma;
    }
    int expert_gemv = !grouped && (path == SL_CUDA_MOE_FP8_EXPERT_GEMV ||
                                   (path == SL_CUDA_MOE_FP8_AUTO && T >= MOE_FP8_EXPERT_GEMV_MIN_T));
    int one = T == 1 && (path == SL_CUDA_MOE_FP8_ONE || (path == SL_CUDA_MOE_FP8_AUTO && b->moe_fp8_one));
    if (one && !grouped && !expert_gemv && moe1_launch(b, a, d, x, weights, cu_mat_of(out))) {
        b->mm_last = "fp8_moe_one"; // (it quantizes x itself)
    } else if (grouped || expert_gemv) { // (it quantizes x, in its order)
        moe_fp8_grouped(b, a, d, cu_mat_of(x), T, k, E, cu_mat_of(out), weights, y, expert_gemv, wg);
    } else {
        fp8_quant_launch(b, cu_mat_of(x), 0, H, T, xq, sx, GH, GH, 1);
        moe_fp8_pairs(b, a, d, T, k, cu_mat_of(out), weights, y);
    }
    cu_tmp_free(b, y);
    cu_tmp_free(b, sh);
    cu_tmp_free(b, hq);
    cu_tmp_free(b, h);
    cu_tmp_free(b, sx);
    cu_tmp_free(b, xq);
}

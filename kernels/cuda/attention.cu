// kernels/cuda/attention.cu: paged attention, one kernel for prefill and
// decode (flash-attention style, bf16 tensor cores through wmma, fp32 softmax
// and accumulators).
//
// A block owns one query tile of 16 rows: qt consecutive tokens of one
// sequence (from the tiles prepare built) times gh query heads that share one
// KV head (GQA: every K/V row loaded serves all of them), and one split of
// the key range. Its 4 warps take 16-key tiles in turn: K and V rows are
// gathered through the page table into shared memory with cp.async (the next
// tile loads while this one computes), S = Q·Kᵀ and O += P·V run on the
// tensor cores, and the online softmax runs one row per lane. The warps merge
// through shared memory at the end. With one split the block writes the
// normalised output; with several (long contexts and few tiles: decode) it
// writes (max, sum, acc) partials that k_attn_combine merges per (token, head).
// Prefill batches run k_attn_fa2 (64-row tiles on mma.sync, FlashAttention-2
// style: S, P and O in registers; kernels/dev/NOTES.md v12) or, with
// SL_CUDA_ATTN_FA2=0, k_attn_prefill (the same tiles on wmma).
#include <cuda_pipeline.h>
#include <mma.h>

#include "attention.cuh"
#include "cuda_backend.h"
#include "fp8.cuh"
#include "mma.cuh"
#include "wgmma.cuh"

#define ATTN_WARPS 4

__global__ void k_kv_store(cu_mat kc, cu_mat vc, cu_mat k, cu_mat v, const int32_t *slot)
{
    cu_pdl_wait();
    cu_pdl_trigger();
    int64_t t = blockIdx.x, row = slot[t];
    cu_copy_row(kc, row, k, t, k.cols);
    cu_copy_row(vc, row, v, t, v.cols);
}

void cu_kv_store(sl_backend *be, sl_tensor *kcache, sl_tensor *vcache, const sl_tensor *k,
                 const sl_tensor *v, const sl_batch_meta *m)
{
    cu_backend *b = cu_be(be);
    const cu_meta *cm = cu_meta_of(m);
    if (cm->n_tokens == 0) return;
    cu_launch(b, k_kv_store, cm->n_tokens, 256, 0, cu_mat_of(kcache), cu_mat_of(vcache),
              cu_mat_of(k), cu_mat_of(v), cm->kv_slot);
}

// The attention prologue: block (t, y) takes token t's heads y·PREP_WARPS +
// warp (q heads, then k heads), one per warp: the sum of squares through the
// warp, the normalised head rounded to the tensor's dtype (what a separate
// rmsnorm would store) in shared memory, then rotated from there and written
// back, k heads also to the cache row; blocks y = 0 copy v to the cache.
#define PREP_WARPS 8

typedef struct cu_prep_args {
    cu_mat q, k, v, qn, kn, kc, vc;
    float eps;
    int one_plus, D, half, Hq, Hkv;
    cu_rope_freqs f;
    const int32_t *pos, *slot;
} cu_prep_args;

__global__ void __launch_bounds__(PREP_WARPS * 32) k_attn_prep(cu_prep_args a)
{
    __shared__ float hs[PREP_WARPS][256];
    int t = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int h = blockIdx.y * PREP_WARPS + warp;
    cu_pdl_wait();
    cu_pdl_trigger();
    int64_t slot = a.slot[t];
    if (h < a.Hq + a.Hkv) {
        bool isk = h >= a.Hq;
        const cu_mat &x = isk ? a.k : a.q, &w = isk ? a.kn : a.qn;
        int64_t c0 = (int64_t)(isk ? h - a.Hq : h) * a.D;
        // the head and its norm weight through registers, every load issued
        // before the first use (typed, cu_typed: a round trip each, not once
        // a column)
        constexpr int J = 256 / 32;
        float *row = hs[warp], ss = 0.0f, xv[J], wv[J];
        cu_typed(w.dt, [&](auto ty) {
#pragma unroll
            for (int j = 0; j < J; j++) wv[j] = lane + 32 * j < a.D ? cu_mat_ld_as(w, 0, lane + 32 * j, ty) : 0.0f;
        });
        cu_typed(x.dt, [&](auto ty) {
#pragma unroll
            for (int j = 0; j < J; j++)
                xv[j] = lane + 32 * j < a.D ? cu_mat_ld_as(x, t, c0 + lane + 32 * j, ty) : 0.0f;
        });
#pragma unroll
        for (int j = 0; j < J; j++) ss += xv[j] * xv[j];
        float inv = 1.0f / sqrtf(cu_warp_sum(ss) / (float)a.D + a.eps);
#pragma unroll
        for (int j = 0; j < J; j++) {
            int c = lane + 32 * j;
            if (c < a.D) row[c] = cu_round(x.dt, xv[j] * inv * (a.one_plus ? 1.0f + wv[j] : wv[j]));
        }
        __syncwarp();
        float p = (float)a.pos[t];
        for (int c = lane; c < a.D; c += 32) {
            float y = row[c];
            if (c < 2 * a.half) {
                int i = c < a.half ? c : c - a.half;
                float sn, cs;
                sincosf(p * a.f.v[i], &sn, &cs);
                float x0 = row[i], x1 = row[i + a.half];
                y = c < a.half ? x0 * cs - x1 * sn : x1 * cs + x0 * sn;
            }
            cu_mat_st(x, t, c0 + c, y);
            if (isk) cu_mat_st(a.kc, slot, c0 + c, y);
        }
    }
    if (blockIdx.y == 0) cu_copy_row(a.vc, slot, a.v, t, a.v.cols);
}

void cu_attn_prep(sl_backend *be, sl_tensor *q, sl_tensor *k, const sl_tensor *v,
                  const sl_tensor *q_norm, const sl_tensor *k_norm, float eps, int one_plus,
                  int head_dim, int rot_dim, float theta, sl_tensor *kcache, sl_tensor *vcache,
                  const sl_batch_meta *m)
{
    cu_backend *b = cu_be(be);
    const cu_meta *cm = cu_meta_of(m);
    if (cm->n_tokens == 0) return;
    SL_ASSERT(head_dim <= 256);
    cu_prep_args a;
    a.q = cu_mat_of(q);
    a.k = cu_mat_of(k);
    a.v = cu_mat_of(v);
    a.qn = cu_mat_of(q_norm);
    a.kn = cu_mat_of(k_norm);
    a.qn.cols = a.kn.cols = head_dim; // [D] as one row
    a.qn.rows = a.kn.rows = 1;
    a.kc = cu_mat_of(kcache);
    a.vc = cu_mat_of(vcache);
    a.eps = eps;
    a.one_plus = one_plus;
    a.D = head_dim;
    a.half = rot_dim / 2;
    a.Hq = (int)(a.q.cols / head_dim);
    a.Hkv = (int)(a.k.cols / head_dim);
    a.f = cu_rope_freqs_make(theta, rot_dim);
    a.pos = cm->pos;
    a.slot = cm->kv_slot;
    dim3 grid((unsigned)cm->n_tokens, (unsigned)((a.Hq + a.Hkv + PREP_WARPS - 1) / PREP_WARPS));
    cu_launch(b, k_attn_prep, grid, PREP_WARPS * 32, 0, a);
}

typedef struct cu_attn_args {
    cu_mat q, out;
    const __nv_bfloat16 *kc, *vc;
    int64_t kld, vld;                  // cache row strides (elements)
    int Hq, G, gh, qt;                 // group size G = Hq/Hkv; gh heads per block
    float scale_log2;                  // scale·log2(e): softmax in base 2
    const int2 *tiles;
    const int32_t *q_start, *kv_len, *page_table, *seq_of;
    int page_size, max_pages;
    int nsplit;                        // key splits (blockIdx.z)
    float *part;                       // [T, Hq, nsplit, D+2] when nsplit > 1
    cu_fp8_dst oq;                     // k_attn_combine: out's FP8 codes too (sl_fp8_act)
    // k_attn_wg2: whole K/V tiles by TMA through these maps of the caches (attn_tma_maps;
    // tma 0: cp.async only)
    int tma;
    CUtensorMap tk, tv;
} cu_attn_args;

// Keys per split of a sequence with kv_len cached keys: its splits share them
// evenly in multiples of ATTN_SPLIT_KEYS (one 16-key tile per warp), so one
// launch sized for the longest context serves every length (a decode graph
// replays at any context); splits past the sequence's keys exit at once.
// Decode at one sequence has only Hkv blocks per split: with 256-key splits
// 30B-A3B at 1000 keys ran 16 blocks of ~4 serial tiles a warp (24 µs a
// layer on an H200); the merge of more, shorter splits costs less.
#define ATTN_SPLIT_KEYS 64
__device__ __forceinline__ int attn_chunk(const cu_attn_args &a, int kv_len)
{
    return a.nsplit == 1 ? kv_len
                         : ((kv_len + a.nsplit - 1) / a.nsplit + ATTN_SPLIT_KEYS - 1) / ATTN_SPLIT_KEYS * ATTN_SPLIT_KEYS;
}

// What a block of k_attn / k_attn_prefill works on: query tile x (blockIdx.x)
// (tokens [i0, i0 + ntok) of sequence s, rows q0 + i0 .. of q; prefix cached
// keys before them), the gh query heads from h0 of kv head kh (blockIdx.y),
// and split blockIdx.z's keys [kbeg, kend) (kbeg a multiple of 16, kend the
// last row's causal limit; empty when no row has keys in this split).
struct attn_tile {
    int s, i0, kh, h0, q0, prefix, ntok, kbeg, kend;
};

__device__ __forceinline__ attn_tile attn_tile_of(const cu_attn_args &a, int x)
{
    attn_tile t;
    int2 tile = a.tiles[x];
    t.s = tile.x;
    t.i0 = tile.y;
    int n_hb = a.G / a.gh;
    t.kh = blockIdx.y / n_hb;
    t.h0 = t.kh * a.G + (blockIdx.y % n_hb) * a.gh;
    t.q0 = a.q_start[t.s];
    int qn = a.q_start[t.s + 1] - t.q0;
    t.prefix = a.kv_len[t.s] - qn;
    t.ntok = min(a.qt, qn - t.i0);
    int chunk = attn_chunk(a, a.kv_len[t.s]);
    t.kbeg = blockIdx.z * chunk;
    t.kend = min(t.kbeg + chunk, t.prefix + t.i0 + t.ntok);
    return t;
}

// The tile's ROWS query rows into Qs (bf16; element (r, d) at at(r, d)): row
// r = (token i0 + r / gh, head h0 + r % gh); zero past the tile's tokens and,
// with PAD, from row qt·gh on (padding up to the 16 rows of k_attn). A
// thread's elements go through registers QB at a time, all QB loads issued
// before the first store (a store to shared memory may alias the generic
// source, so load, store, load... paid a round trip per element). Each load
// reads a clamped address (row q0, column 0 where the element is zero) and is
// masked after: a branch around a load and its conversion made every load
// wait for the one before (NOTES v60). bf16 Q with 16-byte rows goes 8
// elements a load (at(r, d .. d + 7) is contiguous in every layout: a row, or
// a 16-byte chunk of the swizzled one), 4 loads in flight (no spill in any
// kernel); other dtypes are typed (cu_typed) one element a load, the decode
// kernel's 16 rows one load in flight: with 4 scalar ones, k_attn<128>
// spilled.
template <int ROWS, bool PAD, int D, class At>
__device__ __forceinline__ void attn_load_q(const cu_attn_args &a, const attn_tile &t, __nv_bfloat16 *Qs, At at)
{
    // where element e (row-major r, d) of the tile comes from; false: a zero
    auto src = [&](int e, int64_t &row, int64_t &col) {
        int r = e / D, d = e % D, ti = r / a.gh;
        bool ok = e < ROWS * D && (!PAD || r < a.qt * a.gh) && ti < t.ntok;
        row = ok ? t.q0 + t.i0 + ti : t.q0;
        col = ok ? (int64_t)(t.h0 + r % a.gh) * D + d : 0;
        return ok;
    };
    if (a.q.dt == SL_DTYPE_BF16 && a.q.ld % 8 == 0 && ((uintptr_t)a.q.p & 15) == 0) {
        constexpr int QB = 4, N8 = ROWS * D / 8;
        const __nv_bfloat16 *q = (const __nv_bfloat16 *)a.q.p;
        for (int c0 = threadIdx.x; c0 < N8; c0 += QB * blockDim.x) {
            uint4 v[QB];
#pragma unroll
            for (int j = 0; j < QB; j++) {
                int64_t row, col;
                bool ok = src((c0 + j * blockDim.x) * 8, row, col);
                uint4 x = *(const uint4 *)(q + row * a.q.ld + col);
                v[j] = ok ? x : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (int j = 0; j < QB; j++) {
                int e = (c0 + j * blockDim.x) * 8;
                if (e < ROWS * D) *(uint4 *)&Qs[at(e / D, e % D)] = v[j];
            }
        }
        return;
    }
    constexpr int QB = ROWS > 16 ? 8 : 1;
    cu_typed(a.q.dt, [&](auto ty) {
        for (int e0 = threadIdx.x; e0 < ROWS * D; e0 += QB * blockDim.x) {
            float v[QB];
#pragma unroll
            for (int j = 0; j < QB; j++) {
                int64_t row, col;
                bool ok = src(e0 + j * blockDim.x, row, col);
                float x = cu_mat_ld_as(a.q, row, col, ty);
                v[j] = ok ? x : 0.0f;
            }
#pragma unroll
            for (int j = 0; j < QB; j++) {
                int e = e0 + j * blockDim.x;
                if (e < ROWS * D) Qs[at(e / D, e % D)] = __float2bfloat16_rn(v[j]);
            }
        }
    });
}

// Row-major Q with pitch KP (the wmma and mma.sync kernels).
template <int KP> struct attn_pitch {
    __device__ int operator()(int r, int d) const { return r * KP + d; }
};

// Which row of a 16x16 wmma accumulator each of a lane's elements holds (the
// fragment layout is opaque): a warp loads a tile of row numbers from its fp32
// scratch Ss (pitch SP) once. Ends with a barrier of the block.
#define ATTN_ACC_NE 8
template <int SP> __device__ __forceinline__ void attn_acc_rows(float *Ss, int (&rowof)[ATTN_ACC_NE])
{
    using namespace nvcuda;
    for (int e = threadIdx.x & 31; e < 256; e += 32) Ss[(e / 16) * SP + e % 16] = (float)(e / 16);
    __syncthreads();
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> rf;
    static_assert(sizeof(rf.x) / sizeof(rf.x[0]) == ATTN_ACC_NE, "a lane's accumulator elements");
    wmma::load_matrix_sync(rf, Ss, SP, wmma::mem_row_major);
#pragma unroll
    for (int i = 0; i < ATTN_ACC_NE; i++) rowof[i] = (int)rf.x[i];
}

// Shared memory of k_attn: the block's 16 query rows, then per warp NS
// stages of (K tile, V tile) of 16 keys, the 16x16 score tile (fp32), the
// probability tile (bf16) and the per-row rescale factors. After the key loop
// a warp's stages hold its fp32 output rows for the merge.
// NS: a warp keeps NS − 1 tiles in flight while it works on one. A third
// stage at D 256 (214 KB, v56) measured no faster on an H100 (Coder-Next
// decode 32 x 4096: 0.173 -> 0.179 ms); at D ≤ 128 it would cost the second
// block an SM.
template <int D> struct attn_smem {
    static constexpr int NS = 2;
    static constexpr int KP = D + 8;                    // bf16 row pitch (16-byte pad)
    static constexpr int SP = 20;                       // fp32 pitch of the score tile
    static constexpr int OP = D + 4;                    // fp32 pitch of the merge tile
    static constexpr size_t Q = 16 * KP * 2;
    static constexpr size_t STAGE = 2 * 16 * KP * 2;    // K then V
    static constexpr size_t WARP = NS * STAGE + 16 * SP * 4 + 16 * 16 * 2 + 16 * 4;
    static constexpr size_t BYTES = Q + ATTN_WARPS * WARP;
    static_assert(16 * OP * 4 <= 2 * STAGE, "merge tile fits in the stages");
    static_assert(BYTES <= 227 * 1024, "shared memory");
};

template <int D>
__global__ void __launch_bounds__(ATTN_WARPS * 32) k_attn(cu_attn_args a)
{
    using namespace nvcuda;
    using L = attn_smem<D>;
    constexpr int KP = L::KP, NF = D / 16;
    extern __shared__ __align__(128) char smem[];
    __shared__ float wm[ATTN_WARPS][16], wl[ATTN_WARPS][16];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    __nv_bfloat16 *Qs = (__nv_bfloat16 *)smem;
    char *wb = smem + L::Q + warp * L::WARP;
    float *Ss = (float *)(wb + L::NS * L::STAGE);
    __nv_bfloat16 *Ps = (__nv_bfloat16 *)(Ss + 16 * L::SP);
    float *corr = (float *)(Ps + 16 * 16);

    cu_pdl_wait();
    cu_pdl_trigger();
    const attn_tile tl = attn_tile_of(a, blockIdx.x);
    const int s = tl.s, i0 = tl.i0, kh = tl.kh, h0 = tl.h0, q0 = tl.q0, prefix = tl.prefix,
              ntok = tl.ntok, kbeg = tl.kbeg, kend = tl.kend;
    if (kbeg >= kend) return; // no row has keys in this split

    const int32_t *pages = a.page_table + (int64_t)s * a.max_pages;
    const int P = a.page_size;
    const int64_t koff = (int64_t)kh * D;
    // K and V rows of keys [j0, j0+16) into a stage, keys past kend zeros; one commit
    // group a tile (empty for a tile past kend), so wait_prior(NS − 1) stays exact.
    // Lane l looks key j0 + l % 16 up in the page table once and the copies take
    // their rows by shuffle: with a lookup in each copy's iteration, every copy
    // waited for its lookup, 16 round trips a tile at D 256 (NOTES v61).
    auto issue = [&](int j0, __nv_bfloat16 *st) {
        if (j0 < kend) { // warp-uniform
            int jl = j0 + (lane & 15);
            long long mine = jl < kend ? (long long)pages[jl / P] * P + jl % P : 0;
            for (int c = lane; c < 16 * (D / 8); c += 32) {
                int rr = c / (D / 8), cc = (c % (D / 8)) * 8;
                bool ok = j0 + rr < kend;
                int64_t row = __shfl_sync(0xffffffffu, mine, rr);
                __pipeline_memcpy_async(st + rr * KP + cc, a.kc + row * a.kld + koff + cc, 16,
                                        ok ? 0 : 16);
                __pipeline_memcpy_async(st + (16 + rr) * KP + cc, a.vc + row * a.vld + koff + cc,
                                        16, ok ? 0 : 16);
            }
        }
        __pipeline_commit();
    };
    constexpr int NS = L::NS;
    const int step = ATTN_WARPS * 16;
    int j0 = kbeg + warp * 16;
    auto stage = [&](int i) { return (__nv_bfloat16 *)(wb + i * L::STAGE); };
    // the first K/V tiles in flight while Q loads
    for (int i = 0; i < NS - 1; i++) issue(j0 + i * step, stage(i));
    attn_load_q<16, true, D>(a, tl, Qs, attn_pitch<KP>());
    int rowof[ATTN_ACC_NE];
    attn_acc_rows<L::SP>(Ss, rowof);
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> of[NF];
    constexpr int NE = ATTN_ACC_NE;
#pragma unroll
    for (int f = 0; f < NF; f++) wmma::fill_fragment(of[f], 0.0f);

    // lanes 0..15 keep the softmax state of row r = lane
    int r_ti = lane / a.gh;
    int nkv_r = lane < 16 && lane < a.qt * a.gh && r_ti < ntok ? prefix + i0 + r_ti + 1 : 0;
    float m_r = -INFINITY, l_r = 0.0f;

    for (int it = 0; j0 < kend; j0 += step, it++) {
        issue(j0 + (NS - 1) * step, stage((it + NS - 1) % NS));
        __pipeline_wait_prior(NS - 1);
        __syncwarp();
        const __nv_bfloat16 *Ks = stage(it % NS), *Vs = Ks + 16 * KP;
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> sf;
        wmma::fill_fragment(sf, 0.0f);
#pragma unroll
        for (int f = 0; f < NF; f++) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> qf;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> kf;
            wmma::load_matrix_sync(qf, Qs + f * 16, KP);
            wmma::load_matrix_sync(kf, Ks + f * 16, KP);
            wmma::mma_sync(sf, qf, kf, sf);
        }
        wmma::store_matrix_sync(Ss, sf, L::SP, wmma::mem_row_major);
        __syncwarp();
        if (lane < 16) {
            float sc[16], mt = -INFINITY;
#pragma unroll
            for (int c = 0; c < 16; c++) {
                int j = j0 + c;
                sc[c] = j < nkv_r && j < kend ? Ss[lane * L::SP + c] * a.scale_log2 : -INFINITY;
                mt = fmaxf(mt, sc[c]);
            }
            float mn = fmaxf(m_r, mt);
            float cr = mn == -INFINITY ? 1.0f : exp2f(m_r - mn), sum = 0.0f;
#pragma unroll
            for (int c = 0; c < 16; c++) {
                float p = mn == -INFINITY ? 0.0f : exp2f(sc[c] - mn);
                Ps[lane * 16 + c] = __float2bfloat16_rn(p);
                sum += p;
            }
            l_r = l_r * cr + sum;
            m_r = mn;
            corr[lane] = cr;
        }
        __syncwarp();
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> pf;
        wmma::load_matrix_sync(pf, Ps, 16);
#pragma unroll
        for (int f = 0; f < NF; f++) {
#pragma unroll
            for (int i = 0; i < NE; i++) of[f].x[i] *= corr[rowof[i]];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> vf;
            wmma::load_matrix_sync(vf, Vs + f * 16, KP);
            wmma::mma_sync(of[f], pf, vf, of[f]);
        }
        __syncwarp(); // this stage is refilled by the next step's issue
    }
    __pipeline_wait_prior(0);

    // merge the warps: rescale each to the block-wide row max, sum in smem
    if (lane < 16) {
        wm[warp][lane] = m_r;
        wl[warp][lane] = l_r;
    }
    __syncthreads();
    float *Os = (float *)wb;
#pragma unroll
    for (int i = 0; i < NE; i++) {
        int r = rowof[i];
        float M = -INFINITY;
        for (int w = 0; w < ATTN_WARPS; w++) M = fmaxf(M, wm[w][r]);
        float f = wm[warp][r] == -INFINITY ? 0.0f : exp2f(wm[warp][r] - M);
#pragma unroll
        for (int k = 0; k < NF; k++) of[k].x[i] *= f;
    }
#pragma unroll
    for (int f = 0; f < NF; f++)
        wmma::store_matrix_sync(Os + f * 16, of[f], L::OP, wmma::mem_row_major);
    __syncthreads();
    for (int e = threadIdx.x; e < 16 * D; e += ATTN_WARPS * 32) {
        int r = e / D, d = e % D, ti = r / a.gh;
        if (r >= a.qt * a.gh || ti >= ntok || prefix + i0 + ti + 1 <= kbeg) continue;
        float M = -INFINITY, Lsum = 0.0f, o = 0.0f;
        for (int w = 0; w < ATTN_WARPS; w++) M = fmaxf(M, wm[w][r]);
        for (int w = 0; w < ATTN_WARPS; w++) {
            if (wm[w][r] != -INFINITY) Lsum += wl[w][r] * exp2f(wm[w][r] - M);
            o += ((const float *)(smem + L::Q + w * L::WARP))[r * L::OP + d];
        }
        int t = q0 + i0 + ti, h = h0 + r % a.gh;
        if (a.nsplit == 1) {
            cu_mat_st(a.out, t, (int64_t)h * D + d, o / Lsum);
        } else {
            float *p = a.part + (((int64_t)t * a.Hq + h) * a.nsplit + blockIdx.z) * (D + 2);
            if (d == 0) {
                p[0] = M;
                p[1] = Lsum;
            }
            p[2 + d] = o;
        }
    }
}

// Prefill: 4 warps own 16 query rows each (64 rows: tokens × heads of one KV
// head) and share every 32-key K/V tile, loaded by the whole block with
// cp.async one tile ahead (the FA2 layout: K/V traffic is amortised over 64
// rows instead of 16). A warp skips the tiles its rows cannot see.
#define PF_KEYS 32
template <int D> struct attn_pf_smem {
    static constexpr int KP = D + 8;                      // bf16 pitch of Q/K/V rows
    static constexpr int SP = PF_KEYS + 4;                // fp32 pitch of a warp's scores
    static constexpr int PP = PF_KEYS + 8;                // bf16 pitch of a warp's P
    static constexpr int OP = D + 4;                      // fp32 pitch of the output tile
    static constexpr size_t Q = 64 * KP * 2;
    static constexpr size_t STAGE = 2 * PF_KEYS * KP * 2; // K then V
    static constexpr size_t WARP = 16 * SP * 4 + 16 * PP * 2 + 16 * 4 + 16 * 4;
    static constexpr size_t BYTES = Q + 2 * STAGE + ATTN_WARPS * WARP;
    static_assert(ATTN_WARPS * 16 * OP * 4 <= 2 * STAGE, "output tiles fit in the stages");
};

template <int D>
__global__ void __launch_bounds__(ATTN_WARPS * 32) k_attn_prefill(cu_attn_args a)
{
    using namespace nvcuda;
    using L = attn_pf_smem<D>;
    constexpr int KP = L::KP, NF = D / 16;
    extern __shared__ __align__(128) char smem[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    __nv_bfloat16 *Qs = (__nv_bfloat16 *)smem;
    char *stages = smem + L::Q;
    char *wb = stages + 2 * L::STAGE + warp * L::WARP;
    float *Ss = (float *)wb;
    __nv_bfloat16 *Ps = (__nv_bfloat16 *)(Ss + 16 * L::SP);
    float *corr = (float *)(Ps + 16 * L::PP), *lrow = corr + 16;

    cu_pdl_wait();
    cu_pdl_trigger();
    const attn_tile tl = attn_tile_of(a, blockIdx.x);
    const int s = tl.s, i0 = tl.i0, kh = tl.kh, h0 = tl.h0, q0 = tl.q0, prefix = tl.prefix,
              ntok = tl.ntok, kbeg = tl.kbeg, kend = tl.kend;
    if (kbeg >= kend) return;

    attn_load_q<64, false, D>(a, tl, Qs, attn_pitch<KP>());
    int rowof[ATTN_ACC_NE];
    attn_acc_rows<L::SP>(Ss, rowof);
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> of[NF];
    constexpr int NE = ATTN_ACC_NE;
#pragma unroll
    for (int f = 0; f < NF; f++) wmma::fill_fragment(of[f], 0.0f);

    // lane r < 16 keeps the softmax state of the warp's row 16·warp + r
    int R0 = warp * 16, r_ti = (R0 + lane) / a.gh;
    int nkv_r = lane < 16 && r_ti < ntok ? prefix + i0 + r_ti + 1 : 0;
    int warp_ti = min((R0 + 15) / a.gh, ntok - 1);
    int warp_end = R0 / a.gh < ntok ? prefix + i0 + warp_ti + 1 : 0; // keys this warp sees
    float m_r = -INFINITY, l_r = 0.0f;

    const int32_t *pages = a.page_table + (int64_t)s * a.max_pages;
    const int P = a.page_size;
    const int64_t koff = (int64_t)kh * D;
    auto stage = [&](int i) { return (__nv_bfloat16 *)(stages + i * L::STAGE); };
    auto issue = [&](int j0, __nv_bfloat16 *st) {
        for (int c = threadIdx.x; c < PF_KEYS * (D / 8); c += ATTN_WARPS * 32) {
            int rr = c / (D / 8), cc = (c % (D / 8)) * 8, j = j0 + rr;
            bool ok = j < kend;
            int64_t row = ok ? (int64_t)pages[j / P] * P + j % P : 0;
            __pipeline_memcpy_async(st + rr * KP + cc, a.kc + row * a.kld + koff + cc, 16,
                                    ok ? 0 : 16);
            __pipeline_memcpy_async(st + (PF_KEYS + rr) * KP + cc, a.vc + row * a.vld + koff + cc,
                                    16, ok ? 0 : 16);
        }
        __pipeline_commit();
    };
    int buf = 0;
    issue(kbeg, stage(0));
    for (int j0 = kbeg; j0 < kend; j0 += PF_KEYS, buf ^= 1) {
        if (j0 + PF_KEYS < kend) issue(j0 + PF_KEYS, stage(buf ^ 1));
        else __pipeline_commit();
        __pipeline_wait_prior(1);
        __syncthreads();
        if (j0 < warp_end) {
            const __nv_bfloat16 *Ks = stage(buf), *Vs = Ks + PF_KEYS * KP;
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> sf[2];
            wmma::fill_fragment(sf[0], 0.0f);
            wmma::fill_fragment(sf[1], 0.0f);
#pragma unroll
            for (int f = 0; f < NF; f++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> qf;
                wmma::load_matrix_sync(qf, Qs + R0 * KP + f * 16, KP);
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> kf;
                    wmma::load_matrix_sync(kf, Ks + h * 16 * KP + f * 16, KP);
                    wmma::mma_sync(sf[h], qf, kf, sf[h]);
                }
            }
            wmma::store_matrix_sync(Ss, sf[0], L::SP, wmma::mem_row_major);
            wmma::store_matrix_sync(Ss + 16, sf[1], L::SP, wmma::mem_row_major);
            __syncwarp();
            if (lane < 16) {
                float sc[PF_KEYS], mt = -INFINITY;
#pragma unroll
                for (int c = 0; c < PF_KEYS; c++) {
                    int j = j0 + c;
                    sc[c] = j < nkv_r && j < kend ? Ss[lane * L::SP + c] * a.scale_log2 : -INFINITY;
                    mt = fmaxf(mt, sc[c]);
                }
                float mn = fmaxf(m_r, mt);
                float cr = mn == -INFINITY ? 1.0f : exp2f(m_r - mn), sum = 0.0f;
#pragma unroll
                for (int c = 0; c < PF_KEYS; c++) {
                    float p = mn == -INFINITY ? 0.0f : exp2f(sc[c] - mn);
                    Ps[lane * L::PP + c] = __float2bfloat16_rn(p);
                    sum += p;
                }
                l_r = l_r * cr + sum;
                m_r = mn;
                corr[lane] = cr;
            }
            __syncwarp();
#pragma unroll
            for (int f = 0; f < NF; f++)
#pragma unroll
                for (int i = 0; i < NE; i++) of[f].x[i] *= corr[rowof[i]];
#pragma unroll
            for (int h = 0; h < 2; h++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> pf;
                wmma::load_matrix_sync(pf, Ps + h * 16, L::PP);
#pragma unroll
                for (int f = 0; f < NF; f++) {
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> vf;
                    wmma::load_matrix_sync(vf, Vs + h * 16 * KP + f * 16, KP);
                    wmma::mma_sync(of[f], pf, vf, of[f]);
                }
            }
        }
        __syncthreads(); // the stage just read is refilled next iteration
    }
    __pipeline_wait_prior(0);
    __syncthreads();

    // each warp writes its own rows: stage memory holds the fp32 tiles
    float *Os = (float *)stages + warp * 16 * L::OP;
#pragma unroll
    for (int f = 0; f < NF; f++)
        wmma::store_matrix_sync(Os + f * 16, of[f], L::OP, wmma::mem_row_major);
    if (lane < 16) {
        corr[lane] = m_r;
        lrow[lane] = l_r;
    }
    __syncwarp();
    for (int e = lane; e < 16 * D; e += 32) {
        int r = e / D, d = e % D, ti = (R0 + r) / a.gh;
        if (ti >= ntok || prefix + i0 + ti + 1 <= kbeg) continue; // padding, or no keys here
        int t = q0 + i0 + ti, h = h0 + (R0 + r) % a.gh;
        float o = Os[r * L::OP + d];
        if (a.nsplit == 1) {
            cu_mat_st(a.out, t, (int64_t)h * D + d, o / lrow[r]);
        } else {
            float *p = a.part + (((int64_t)t * a.Hq + h) * a.nsplit + blockIdx.z) * (D + 2);
            if (d == 0) {
                p[0] = corr[r];
                p[1] = lrow[r];
            }
            p[2 + d] = o;
        }
    }
}

// ---- FlashAttention-2 prefill (the default; SL_CUDA_ATTN_FA2=0: wmma) ---------
//
// The same tiles, grid, key splits and outputs as k_attn_prefill (64 query
// rows per block: tokens × the gh q heads of one KV head, so every K/V tile
// serves all of them), on mma.sync m16n8k16 bf16 with fp32 accumulators and
// no round trip of S through shared memory. Warp w owns rows 16w..16w+15;
// its S (16 × BC), P and O (16 × D) live in registers in the mma fragment
// layout: lane = 4·g + q holds rows g and g + 8, columns 8n + 2q, 8n + 2q + 1
// of every 8-column block n. The online softmax runs on those registers (row
// max and sum over the 4 lanes of a row group by shuffles), P is repacked to
// bf16 A fragments in place (an S accumulator pair is exactly a P A-fragment
// pair) and multiplied with V loaded by ldmatrix.trans. K/V tiles of BC keys
// are gathered through the page table with cp.async by the whole block, the
// next one in flight while this one computes (two stages). Q is staged once in
// shared memory; with D ≤ 128 its fragments then stay in registers.
//
// Shared memory (bf16, rows padded by 8 elements so the 8 rows of an ldmatrix
// phase fall on 8 distinct 16-byte bank groups): Q [64][D+8], 2 × (K [BC][D+8],
// V [BC][D+8]). D 128: BC 64, 87 040 B; D 256: BC 32 (O alone takes 128
// registers), 101 376 B; D 64: BC 64, 46 080 B. Two blocks per SM.
#define FA2_WARPS 4
static_assert(FA2_WARPS == ATTN_WARPS, "attn_load_q strides by ATTN_WARPS threads");

template <int D> struct fa2_cfg {
    static constexpr int BC = D == 256 ? 32 : 64; // keys per K/V tile
    static constexpr int KP = D + 8;              // bf16 row pitch
    static constexpr bool QREG = D <= 128;        // Q fragments kept in registers
    static constexpr size_t Q = 64 * KP * 2;
    static constexpr size_t STAGE = 2 * BC * KP * 2; // K then V
    static constexpr size_t BYTES = Q + 2 * STAGE;
    static_assert(BC % 16 == 0 && D % 16 == 0, "whole mma tiles");
};

// Two floats as a bf16 pair, lo in the low half (the lower column index).
__device__ __forceinline__ uint32_t fa2_pack(float lo, float hi)
{
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    uint32_t u;
    memcpy(&u, &h, 4);
    return u;
}

// The cache row of key j of the sequence whose page-table row is pages.
__device__ __forceinline__ int64_t attn_row(const cu_attn_args &a, const int32_t *pages, int j)
{
    return (int64_t)pages[j / a.page_size] * a.page_size + j % a.page_size;
}

// Box L of a K/V tile by TMA (keys 16L .. 16L + 15, cache row `row`: one page):
// D / 64 boxes of 64 columns of K into the stage at s0, of V BC · D · 2 bytes
// on, their bytes counted on bar (K) and vbar (V; the same barrier or not)
// (v70's maps a.tk, a.tv).
template <int D, int BC>
__device__ __forceinline__ void fa_tma_box(const cu_attn_args &a, const attn_tile &tl, uint32_t s0, int L, int row,
                                           uint32_t bar, uint32_t vbar)
{
#pragma unroll
    for (int cb = 0; cb < D / 64; cb++) {
        const uint32_t o = (uint32_t)(cb * BC * 128 + L * 16 * 128);
        wg_tma_load2(s0 + o, &a.tk, tl.kh * D + cb * 64, row, bar);
        wg_tma_load2(s0 + (uint32_t)(BC * D * 2) + o, &a.tv, tl.kh * D + cb * 64, row, vbar);
    }
}

// K and V rows of keys [j0, j0 + BC) of the tile's KV head, gathered through
// the page table into ks and vs by cp.async (16-byte chunk c of key row r at
// byte dst(r, c) of each; a null ks or vs: that half not copied) and
// committed as one group by NTH threads (threadIdx.x % NTH: the block or a
// warpgroup of it); keys past kend are zeros (a zero V row times a masked
// p = 0 keeps garbage out of O). Rows below r0 are left alone.
template <int D, int BC, int NTH = ATTN_WARPS * 32, int UNROLL = BC * (D / 8) / NTH, class Dst>
__device__ __forceinline__ void fa_issue(const cu_attn_args &a, const attn_tile &tl, int j0,
                                         char *ks, char *vs, Dst dst, int r0 = 0)
{
    constexpr int CH = D / 8; // 16-byte chunks per row
    static_assert(BC * CH % NTH == 0, "whole rounds of chunks");
    const int32_t *pages = a.page_table + (int64_t)tl.s * a.max_pages;
    const int64_t koff = (int64_t)tl.kh * D;
#pragma unroll UNROLL
    for (int it = 0; it < BC * CH / NTH; it++) {
        int c = (int)threadIdx.x % NTH + it * NTH;
        int rr = c / CH, cc = c % CH, j = j0 + rr;
        if (rr < r0) continue;
        bool ok = j < tl.kend;
        int64_t row = ok ? attn_row(a, pages, j) : 0;
        uint32_t o = dst(rr, cc);
        if (ks) __pipeline_memcpy_async(ks + o, a.kc + row * a.kld + koff + cc * 8, 16, ok ? 0 : 16);
        if (vs) __pipeline_memcpy_async(vs + o, a.vc + row * a.vld + koff + cc * 8, 16, ok ? 0 : 16);
    }
    __pipeline_commit();
}

// The online softmax's start: O zero, no max yet, sums zero.
template <int NO>
__device__ __forceinline__ void fa_start(float (&o)[NO][4], float (&m)[2], float (&l)[2])
{
#pragma unroll
    for (int f = 0; f < NO; f++) o[f][0] = o[f][1] = o[f][2] = o[f][3] = 0.0f;
    m[0] = m[1] = -INFINITY;
    l[0] = l[1] = 0.0f;
}

// The causal / split-end mask on a tile's scores (keys from j0): key
// j0 + 8n + 2q + (e & 1) is hidden from row g (e < 2) from limit lim[0] on,
// from row g + 8 from lim[1] on.
template <int NB>
__device__ __forceinline__ void fa_mask(float (&s)[NB][4], int j0, int q, const int (&lim)[2])
{
#pragma unroll
    for (int n = 0; n < NB; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            int j = j0 + n * 8 + 2 * q + (e & 1);
            if (j >= lim[e >> 1]) s[n][e] = -INFINITY;
        }
}

// 2^x on the MUFU alone: exp2f is ex2.approx.f32, which keeps subnormal
// results at the cost of a range test and two multiplies around each
// MUFU.EX2; a softmax term below 2^-126 adds nothing to the sums (v75:
// k_attn_ws at 4096 tokens, D 128, 0.330 -> 0.313 ms on an H100).
__device__ __forceinline__ float fa_ex2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// One K/V tile's online-softmax step on rows g (index 0) and g + 8 (index 1)
// of a warp's 16, in the accumulator layout: the row max over the quad, then
// s (raw dot products) becomes p = 2^(s·sl2 - m) in place, and this lane's
// part of the running sum l is rescaled to the new max m (base 2, scaled);
// c gets the factors O must be rescaled by (fa_rescale).
template <int NB>
__device__ __forceinline__ void fa_softmax_p(float (&s)[NB][4], float (&m)[2], float (&l)[2], float (&c)[2],
                                             float sl2)
{
#pragma unroll
    for (int h = 0; h < 2; h++) {
        float x = -INFINITY;
#pragma unroll
        for (int n = 0; n < NB; n++) x = fmaxf(x, fmaxf(s[n][2 * h], s[n][2 * h + 1]));
        x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
        x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
        float nm = fmaxf(m[h], x * sl2);
        // a row with no visible key yet keeps m = -inf: subtract 0 instead,
        // so every p and the rescale factor are 0, never NaN
        float u = nm == -INFINITY ? 0.0f : nm, sum = 0.0f;
        c[h] = fa_ex2(m[h] - u);
        m[h] = nm;
#pragma unroll
        for (int n = 0; n < NB; n++) {
            s[n][2 * h] = fa_ex2(fmaf(s[n][2 * h], sl2, -u));
            s[n][2 * h + 1] = fa_ex2(fmaf(s[n][2 * h + 1], sl2, -u));
            sum += s[n][2 * h] + s[n][2 * h + 1];
        }
        l[h] = l[h] * c[h] + sum;
    }
}

template <int NO> __device__ __forceinline__ void fa_rescale(float (&o)[NO][4], const float (&c)[2])
{
#pragma unroll
    for (int f = 0; f < NO; f++) {
        o[f][0] *= c[0];
        o[f][1] *= c[0];
        o[f][2] *= c[1];
        o[f][3] *= c[1];
    }
}

// P of key step kk (keys 16kk .. 16kk + 15) as an mma A fragment: the S
// accumulators of key blocks 2kk and 2kk + 1, as bf16 pairs.
template <int NB>
__device__ __forceinline__ void fa_p_frag(uint32_t (&pa)[4], const float (&s)[NB][4], int kk)
{
    pa[0] = fa2_pack(s[2 * kk][0], s[2 * kk][1]);
    pa[1] = fa2_pack(s[2 * kk][2], s[2 * kk][3]);
    pa[2] = fa2_pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
    pa[3] = fa2_pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
}

// The end of a 64-row tile: rows R0 + g and R0 + g + 8 of O (accumulator
// layout) normalised by the quad-summed l into out, or with key splits their
// (m, l, O) partials for k_attn_combine. Padding rows and rows with no key in
// this split write nothing.
template <int D>
__device__ __forceinline__ void fa_store(const cu_attn_args &a, const attn_tile &tl, int R0, int g,
                                         int q, const float (&o)[D / 8][4], const float (&m)[2],
                                         float (&l)[2])
{
    constexpr int NO = D / 8;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
        l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
    }
    const bool bf2 = a.out.dt == SL_DTYPE_BF16 && cu_mat_pair_ok(a.out);
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        int r = R0 + g + 8 * hf, ti = r / a.gh;
        if (ti >= tl.ntok || tl.prefix + tl.i0 + ti + 1 <= tl.kbeg) continue; // padding, no keys
        int64_t t = tl.q0 + tl.i0 + ti;
        int h = tl.h0 + r % a.gh;
        int64_t c0 = (int64_t)h * D + 2 * q;
        if (a.nsplit == 1) {
            float inv = 1.0f / l[hf];
            if (bf2) {
                __nv_bfloat16 *dst = (__nv_bfloat16 *)a.out.p + t * a.out.ld + c0;
#pragma unroll
                for (int f = 0; f < NO; f++)
                    *(__nv_bfloat162 *)(dst + f * 8) =
                        __floats2bfloat162_rn(o[f][2 * hf] * inv, o[f][2 * hf + 1] * inv);
            } else {
#pragma unroll
                for (int f = 0; f < NO; f++) {
                    cu_mat_st(a.out, t, c0 + f * 8, o[f][2 * hf] * inv);
                    cu_mat_st(a.out, t, c0 + f * 8 + 1, o[f][2 * hf + 1] * inv);
                }
            }
        } else {
            float *p = a.part + (((int64_t)t * a.Hq + h) * a.nsplit + blockIdx.z) * (D + 2);
            if (q == 0) {
                p[0] = m[hf];
                p[1] = l[hf];
            }
#pragma unroll
            for (int f = 0; f < NO; f++) {
                p[2 + f * 8 + 2 * q] = o[f][2 * hf];
                p[2 + f * 8 + 2 * q + 1] = o[f][2 * hf + 1];
            }
        }
    }
}

// Causal limits of a tile's rows: keys [kbeg, lim(r)) are visible to row r,
// capped at the split's end; rows past the tile's tokens (zero Q rows, never
// written) take the last token's, so no row is fully masked but by a split.
struct fa_lim {
    const cu_attn_args &a;
    const attn_tile &tl;
    __device__ int operator()(int r) const
    {
        return min(tl.prefix + tl.i0 + min(r / a.gh, tl.ntok - 1) + 1, tl.kend);
    }
};

template <int D>
__global__ void __launch_bounds__(FA2_WARPS * 32, 2) k_attn_fa2(cu_attn_args a)
{
    using C = fa2_cfg<D>;
    constexpr int KP = C::KP, BC = C::BC, NB = BC / 8, NO = D / 8, NK = D / 16;
    extern __shared__ __align__(128) char smem[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, q = lane & 3; // fragment row group, lane in the group
    __nv_bfloat16 *Qs = (__nv_bfloat16 *)smem;
    char *stages = smem + C::Q;

    cu_pdl_wait();
    cu_pdl_trigger();
    // tiles in reverse: a sequence's last tiles see the most keys, so the
    // longest blocks start first and the short ones fill the tail of the wave
    const attn_tile tl = attn_tile_of(a, gridDim.x - 1 - blockIdx.x);
    if (tl.kbeg >= tl.kend) return; // no row has keys in this split

    attn_load_q<64, false, D>(a, tl, Qs, attn_pitch<KP>());

    const int R0 = warp * 16, last = tl.ntok - 1;
    const fa_lim lim{a, tl};
    const int limr[2] = {lim(R0 + g), lim(R0 + g + 8)};
    const int warp_lo = lim(R0);                               // below: no mask in this warp
    const int warp_end = R0 / a.gh <= last ? lim(R0 + 15) : 0; // from here: nothing to do

    auto issue = [&](int j0, int i) {
        char *st = stages + i * C::STAGE;
        fa_issue<D, BC>(a, tl, j0, st, st + BC * KP * 2,
                        [](int r, int c) { return (uint32_t)((r * C::KP + c * 8) * 2); });
    };
    issue(tl.kbeg, 0);

    // ldmatrix row addresses of this lane (bytes): Q as A fragments (rows
    // lane & 15, columns + 8 for lanes 16-31), K as B fragments of two 8-key
    // blocks (keys + 8 for lanes 16-31, d + 8 for lanes 8-15 and 24-31), V
    // transposed as B fragments of two 8-column blocks (keys + 8 for lanes
    // 8-15 and 24-31, d + 8 for lanes 16-31).
    const uint32_t q_addr =
        (uint32_t)__cvta_generic_to_shared(Qs + (R0 + (lane & 15)) * KP + (lane >> 4) * 8);
    const uint32_t k_off = (uint32_t)((((lane >> 4) * 8 + (lane & 7)) * KP + ((lane >> 3) & 1) * 8) * 2);
    const uint32_t v_off =
        (uint32_t)(((((lane >> 3) & 1) * 8 + (lane & 7)) * KP + (lane >> 4) * 8) * 2 + BC * KP * 2);
    const uint32_t st0 = (uint32_t)__cvta_generic_to_shared(stages);

    __syncthreads(); // Q stored
    uint32_t qf[C::QREG ? NK : 1][4];
    if constexpr (C::QREG) {
#pragma unroll
        for (int kk = 0; kk < NK; kk++) mma_ldsm4(qf[kk], q_addr + kk * 32);
    }

    // O, and for rows g and g + 8 the running max (scaled, base 2) and this
    // lane's part of the running sum (the 4 lanes of a row are summed at the end)
    float o[NO][4], m[2], l[2];
    fa_start(o, m, l);
    const float sl2 = a.scale_log2;

    int buf = 0;
    for (int j0 = tl.kbeg; j0 < tl.kend; j0 += BC, buf ^= 1) {
        if (j0 + BC < tl.kend) issue(j0 + BC, buf ^ 1);
        else __pipeline_commit(); // an empty group keeps wait_prior(1) exact
        __pipeline_wait_prior(1);
        __syncthreads();
        if (j0 < warp_end) {
            const uint32_t kb = st0 + buf * (uint32_t)C::STAGE + k_off;
            const uint32_t vb = st0 + buf * (uint32_t)C::STAGE + v_off;
            // S = Q·Kᵀ (raw dot products)
            float s[NB][4];
#pragma unroll
            for (int n = 0; n < NB; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < NK; kk++) {
                uint32_t qa[4];
                if constexpr (C::QREG) {
                    qa[0] = qf[kk][0], qa[1] = qf[kk][1], qa[2] = qf[kk][2], qa[3] = qf[kk][3];
                } else {
                    mma_ldsm4(qa, q_addr + kk * 32);
                }
#pragma unroll
                for (int p = 0; p < BC / 16; p++) {
                    uint32_t kf[4];
                    mma_ldsm4(kf, kb + (uint32_t)((p * 16 * KP + kk * 16) * 2));
                    mma_bf16(s[2 * p], qa, kf[0], kf[1]);
                    mma_bf16(s[2 * p + 1], qa, kf[2], kf[3]);
                }
            }
            if (j0 + BC > warp_lo) fa_mask(s, j0, q, limr); // warp-uniform test
            float c[2];
            fa_softmax_p(s, m, l, c, sl2);
            fa_rescale(o, c);
            // O += P·V
#pragma unroll
            for (int kk = 0; kk < BC / 16; kk++) {
                uint32_t pa[4];
                fa_p_frag(pa, s, kk);
#pragma unroll
                for (int dp = 0; dp < D / 16; dp++) {
                    uint32_t vf[4];
                    mma_ldsm4_t(vf, vb + (uint32_t)((kk * 16 * KP + dp * 16) * 2));
                    mma_bf16(o[2 * dp], pa, vf[0], vf[1]);
                    mma_bf16(o[2 * dp + 1], pa, vf[2], vf[3]);
                }
            }
        }
        __syncthreads(); // the stage just read is refilled next iteration
    }
    __pipeline_wait_prior(0);
    fa_store<D>(a, tl, R0, g, q, o, m, l);
}

// The wgmma kernels' pieces. A tile's ROWS query rows into smem as a
// 128-byte-swizzled K-major operand.
template <int ROWS, int D>
__device__ __forceinline__ void fa_wg_load_q(const cu_attn_args &a, const attn_tile &tl, char *smem)
{
    attn_load_q<ROWS, false, D>(a, tl, (__nv_bfloat16 *)smem,
                                [](int r, int d) { return (int)(wg_swz(ROWS, r, d / 8) / 2) + d % 8; });
}

// S = Q·Kᵀ of one K tile (raw dot products), issued and committed: the
// warpgroup's 64 Q rows at dq in a tile of QR rows, BC keys at dk, both K-major.
template <int BC, int D, int QR>
__device__ __forceinline__ void fa_wg_s(float (&s)[BC / 8][4], uint64_t dq, uint64_t dk)
{
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) wg_ss<BC>(s, dq + wg_kstep(QR, kk), dk + wg_kstep(BC, kk), kk > 0);
    wg_commit();
}

// O += P·V of one V tile (BC keys at dv, N-major: k16 step kk is 16 key rows,
// 2048 bytes), issued and committed (O and P written before: fenced).
template <int D, int BC>
__device__ __forceinline__ void fa_wg_pv(float (&o)[D / 8][4], const uint32_t (&pa)[BC / 16][4], uint64_t dv)
{
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < BC / 16; kk++) wg_rs<D>(o, pa[kk], dv + (uint64_t)(kk * 2048 >> 4));
    wg_commit();
}

struct fa_nop {
    __device__ void operator()() const {}
};

// The rest of a tile once its S product is issued (k_attn_wg2, k_attn_ws's
// plain loop): S waited for, masked where the tile crosses a row's limit,
// softmaxed, O rescaled, O += P·V from the V tile at dv (pre_v first: a wait
// for V where it lands apart from K), waited for.
template <int D, int BC, class PreV = fa_nop>
__device__ __forceinline__ void fa_wg_tile(float (&s)[BC / 8][4], float (&o)[D / 8][4], bool mask, int j0, int q,
                                           const int (&limr)[2], float (&m)[2], float (&l)[2], float sl2,
                                           uint64_t dv, PreV pre_v = {})
{
    float c[2];
    uint32_t pa[BC / 16][4];
    wg_wait<0>();
    wg_hold(s);
    if (mask) fa_mask(s, j0, q, limr); // warp-uniform test
    fa_softmax_p(s, m, l, c, sl2);
    fa_rescale(o, c);
#pragma unroll
    for (int kk = 0; kk < BC / 16; kk++) fa_p_frag(pa[kk], s, kk);
    pre_v();
    fa_wg_pv<D, BC>(o, pa, dv);
    wg_wait<0>();
    wg_hold(o);
}

// The same tiles, grid, key splits and outputs as k_attn_fa2, on Hopper's
// warpgroup mma (wgmma, kernels/cuda/wgmma.cuh): the block's 4 warps are one
// warpgroup, S = Q·Kᵀ is one m64nBC product (Q and K read from shared memory
// by descriptor, each byte once per block instead of once per warp), O += P·V
// takes P from registers (the S accumulators repacked, as in k_attn_fa2) and
// V from shared memory read N-major. The accumulators have the mma.sync
// layout, so the mask, online softmax and output are k_attn_fa2's. Q, K and V
// sit in 128-byte-swizzled tiles (wg_swz), K/V in two cp.async stages as in
// k_attn_fa2; every warp joins every product (wgmma is warpgroup-wide), so a
// warp whose rows see no key of a tile computes masked zeros.
//
// Shared memory (after rounding the base up to 1024 bytes): Q [64][D], 2 ×
// (K [BC][D], V [BC][D]). D 128: BC 64, 82 944 B; D 256: BC 32, 99 328 B;
// D 64: BC 64, 41 984 B. Two blocks per SM.
template <int D> struct wg_cfg {
    static constexpr int BC = D == 256 ? 32 : 64; // keys per K/V tile
    static constexpr size_t Q = 64 * D * 2;
    static constexpr size_t KV = (size_t)BC * D * 2;
    static constexpr size_t STAGE = 2 * KV; // K then V
    static constexpr size_t BYTES = 1024 + Q + 2 * STAGE;
    static_assert(Q % 1024 == 0 && KV % 1024 == 0, "tiles on the swizzle period");
};

// OV (v37, FlashAttention-3's intra-warpgroup overlap): tile t + 1's S = Q·Kᵀ
// and tile t's O += P·V are issued together, and the softmax of t + 1 runs
// while P·V is on the tensor cores (O is rescaled after it retires). K and V
// then travel as separate copy groups (K one tile further ahead).
template <int D, bool OV>
__global__ void __launch_bounds__(ATTN_WARPS * 32, 2) k_attn_wg(cu_attn_args a)
{
    using C = wg_cfg<D>;
    constexpr int BC = C::BC, NB = BC / 8, NO = D / 8;
    extern __shared__ __align__(1024) char smem_raw[];
    char *smem = wg_align(smem_raw);
    const uint32_t sq = (uint32_t)__cvta_generic_to_shared(smem), sst = sq + (uint32_t)C::Q;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, q = lane & 3;

    cu_pdl_wait();
    cu_pdl_trigger();
    const attn_tile tl = attn_tile_of(a, gridDim.x - 1 - blockIdx.x); // longest first
    if (tl.kbeg >= tl.kend) return; // no row has keys in this split

    fa_wg_load_q<64, D>(a, tl, smem);

    const int R0 = warp * 16;
    const fa_lim lim{a, tl};
    const int limr[2] = {lim(R0 + g), lim(R0 + g + 8)};
    const int warp_lo = lim(R0); // below: no mask in this warp
    const int nt = (tl.kend - tl.kbeg + BC - 1) / BC;

    // tile t's K and / or V into stage t % 2 (one commit group; empty past the tiles)
    char *stages = smem + C::Q;
    auto issue = [&](int t, bool k, bool v) {
        if (t >= nt) {
            __pipeline_commit();
            return;
        }
        char *st = stages + (t & 1) * C::STAGE;
        fa_issue<D, BC>(a, tl, tl.kbeg + t * BC, k ? st : nullptr, v ? st + C::KV : nullptr,
                        [](int r, int c) { return wg_swz(C::BC, r, c); });
    };
    // Descriptors: Q and K K-major, V N-major
    const uint64_t dq = wg_desc(sq, 16, 1024);
    // the copies waited for (by the caller) become visible to wgmma, and every
    // thread is past the products that read the stages about to be refilled
    auto land = [&]() {
        wg_fence_smem();
        __syncthreads();
    };
    // S = Q·Kᵀ and O += P·V of tile t, issued and committed
    auto s_mma = [&](int t, float (&s)[NB][4]) {
        fa_wg_s<BC, D, 64>(s, dq, wg_desc(sst + (t & 1) * (uint32_t)C::STAGE, 16, 1024));
    };
    float o[NO][4];
    uint32_t pa[BC / 16][4];
    auto pv_mma = [&](int t) {
        fa_wg_pv<D, BC>(o, pa, wg_desc(sst + (t & 1) * (uint32_t)C::STAGE + (uint32_t)C::KV, BC * 128, 1024));
    };
    // O, and for rows g and g + 8 the running max (scaled, base 2) and this
    // lane's part of the running sum (the 4 lanes of a row are summed at the end)
    float m[2], l[2], s[NB][4], c[2];
    fa_start(o, m, l);
    const float sl2 = a.scale_log2;
    // tile t's S (retired) masked and turned into P (rescale factors in c).
    // P is a copy: ordinary instructions writing the S accumulators while
    // P·V is in flight made ptxas serialise every wgmma (C7515, v37).
    float pf[NB][4];
    auto soft = [&](int t) {
        wg_hold(s);
#pragma unroll
        for (int n = 0; n < NB; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) pf[n][e] = s[n][e];
        int j0 = tl.kbeg + t * BC;
        if (j0 + BC > warp_lo) fa_mask(pf, j0, q, limr); // warp-uniform test
        fa_softmax_p(pf, m, l, c, sl2);
    };
    auto pack = [&]() {
#pragma unroll
        for (int kk = 0; kk < BC / 16; kk++) fa_p_frag(pa[kk], pf, kk);
    };

    if constexpr (!OV) {
        issue(0, true, true);
        for (int t = 0; t < nt; t++) {
            issue(t + 1, true, true);
            __pipeline_wait_prior(1); // tile t landed
            land();
            s_mma(t, s);
            wg_wait<0>();
            soft(t);
            fa_rescale(o, c);
            pack();
            pv_mma(t);
            wg_wait<0>();
            wg_hold(o);
            __syncthreads(); // the stage just read is refilled next iteration
        }
    } else {
        // copy groups in order K0, V0, K1, then per tile t: V(t + 1), K(t + 2)
        issue(0, true, false);
        issue(0, false, true);
        issue(1, true, false);
        __pipeline_wait_prior(2); // K0 landed
        land();
        s_mma(0, s);
        wg_wait<0>();
        soft(0);
        fa_rescale(o, c);
        pack();
        for (int t = 0; t < nt; t++) {
            __pipeline_wait_prior(0); // V(t) and K(t + 1) landed
            land();                   // tile t - 1's products retired everywhere
            issue(t + 1, false, true); // into V(t - 1)'s half
            issue(t + 2, true, false); // into K(t)'s half: S(t) retired
            if (t + 1 < nt) s_mma(t + 1, s);
            pv_mma(t);
            if (t + 1 < nt) {
                wg_wait<1>(); // S(t + 1) retired, P·V(t) in flight
                soft(t + 1);
                wg_wait<0>();
                wg_hold(o);
                fa_rescale(o, c);
                pack();
            } else {
                wg_wait<0>();
                wg_hold(o);
            }
        }
    }
    __pipeline_wait_prior(0);
    fa_store<D>(a, tl, R0, g, q, o, m, l);
}

// v40: k_attn_wg's arithmetic on 128-row tiles, two warpgroups of 64 rows
// (FlashAttention-3's two consumer warpgroups, without its producer): both
// read each K/V tile, so a copied byte serves twice the FLOPs of k_attn_wg's
// 64-row tiles (there, the copies from L2 were about as long as the products:
// 18 % of the mma rate on an H200, NOTES.md v39), and the key tiles are
// larger (128 keys at D <= 128: S is one m64n128 product a warpgroup). Each
// warpgroup issues its own products (wgmma is warpgroup-wide: a warpgroup
// whose rows see no key of a tile skips it). Three stages where they fit
// (D <= 128), else two; one block an SM.
//
// v70: the copies. With the 256 threads gathering each tile by cp.async
// (16-byte copies through the page table) the kernel ran at 33 % of the mma
// rate on an H100 (8B shape, 4096 tokens), 50 % with the loop's copies left
// out: issuing them (addresses, page-table loads) stalled the same warps that
// run the products and the softmax. Where the page size is a multiple of 16
// (a.tma: k_attn_wg2<D, true>), a whole tile is 16-key boxes of 64 columns copied by TMA
// (attn_tma_maps: the 128-byte swizzle of the operand layout), issued by
// BC / 16 lanes of warp 0, each box's cache row loaded a tile ahead; the
// tile's mbarrier (full[stage]) counts its bytes and every thread waits on
// it. A tile the keys end inside (the block's last, partial) still goes by
// cp.async, its rows past the keys zero-filled (a zero V row keeps garbage out
// of O), as every tile does in k_attn_wg2<D, false>.
//
// Shared memory (after rounding the base up to 1024 bytes): Q [128][D],
// STAGES × (K [BC][D], V [BC][D]), full[STAGES]. D 128: 230 424 B; D 256:
// 197 648 B; D 64: 115 736 B.
#define WG2_THREADS 256
template <int D> struct wg2_cfg {
    static constexpr int BC = D == 256 ? 64 : 128; // keys per K/V tile
    static constexpr int STAGES = D == 256 ? 2 : 3;
    static constexpr size_t Q = 128 * D * 2;
    static constexpr size_t KV = (size_t)BC * D * 2;
    static constexpr size_t STAGE = 2 * KV; // K then V
    static constexpr size_t BAR = Q + STAGES * STAGE; // full[STAGES]
    static constexpr size_t BYTES = 1024 + BAR + 8 * STAGES;
    static_assert(Q % 1024 == 0 && KV % 1024 == 0, "tiles on the swizzle period");
};

template <int D, bool TMA>
__global__ void __launch_bounds__(WG2_THREADS, 1) k_attn_wg2(const __grid_constant__ cu_attn_args a)
{
    using C = wg2_cfg<D>;
    constexpr int BC = C::BC, NB = BC / 8, NO = D / 8, S = C::STAGES;
    extern __shared__ __align__(1024) char smem_raw[];
    char *smem = wg_align(smem_raw);
    const uint32_t sq = (uint32_t)__cvta_generic_to_shared(smem), sst = sq + (uint32_t)C::Q;
    const uint32_t full = sq + (uint32_t)C::BAR;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, wgi = warp >> 2;
    const int g = lane >> 2, q = lane & 3;

    cu_pdl_wait();
    cu_pdl_trigger();
    const attn_tile tl = attn_tile_of(a, gridDim.x - 1 - blockIdx.x); // longest first
    if (tl.kbeg >= tl.kend) return; // no row has keys in this split

    if (TMA && threadIdx.x == 0)
        for (int st = 0; st < S; st++) wg_mbar_init(full + 8 * st, 1);
    fa_wg_load_q<128, D>(a, tl, smem);
    if constexpr (TMA) { // (else the first tile's barrier does it)
        wg_fence_smem();
        __syncthreads(); // Q stored and the barriers made, before any copy or product
    }

    // warp w holds rows 16w .. 16w + 15: warpgroup wgi's m64 accumulators
    const int R0 = warp * 16, last = tl.ntok - 1;
    const fa_lim lim{a, tl};
    const int limr[2] = {lim(R0 + g), lim(R0 + g + 8)};
    const int warp_lo = lim(R0); // below: no mask in this warp
    // from here this warpgroup has nothing to do (warpgroup-uniform)
    const int wg_end = wgi * 64 / a.gh <= last ? lim(wgi * 64 + 63) : 0;
    const int nt = (tl.kend - tl.kbeg + BC - 1) / BC;

    char *stages = smem + C::Q;
    // tile t whole by TMA (block-uniform): only the last can end inside. A
    // kernel of its own (TMA): tested per tile at run time, these branches
    // cost the cp.async form about 4 % (H100: v70's one kernel 0.550 ms, v71's
    // split 0.527 at 8B 4096 tokens)
    auto by_tma = [&](int t) { return TMA && tl.kbeg + (t + 1) * BC <= tl.kend; };
    // lane L < BC / 16 of warp 0: the cache row of tile t's keys 16L .. 16L + 15
    // (one page: the page size is a multiple of 16, the tile starts on 16)
    const int32_t *pages = a.page_table + (int64_t)tl.s * a.max_pages;
    auto box_row = [&](int t) {
        const int j = tl.kbeg + t * BC + 16 * lane;
        return lane < BC / 16 && t < nt && by_tma(t) ? (int)attn_row(a, pages, j) : 0;
    };
    int row_next = TMA && warp == 0 ? box_row(0) : 0; // the next tile's, loaded a tile ahead
    // tile t into stage t % S (one cp.async commit group a tile, empty for a
    // TMA tile and past the tiles, so wait_prior counts tiles)
    auto issue = [&](int t) {
        const uint32_t s0 = sst + (uint32_t)(t % S) * (uint32_t)C::STAGE;
        if (t < nt && by_tma(t)) {
            if (warp == 0) {
                const int row = row_next;
                row_next = box_row(t + 1);
                const uint32_t bar = full + 8 * (t % S);
                if (lane == 0) wg_mbar_expect_tx(bar, (uint32_t)C::STAGE);
                __syncwarp(); // the bytes announced before any lands
                if (lane < BC / 16) fa_tma_box<D, BC>(a, tl, s0, lane, row, bar, bar);
            }
            __pipeline_commit();
        } else if (t < nt) {
            char *st = stages + (t % S) * C::STAGE;
            fa_issue<D, BC, WG2_THREADS>(a, tl, tl.kbeg + t * BC, st, st + C::KV,
                                         [](int r, int c) { return wg_swz(C::BC, r, c); });
        } else {
            __pipeline_commit();
        }
    };
    // Q's 64 rows of this warpgroup start 64 · 128 bytes into each 128-row
    // column block
    const uint64_t dq = wg_desc(sq + (uint32_t)wgi * 64 * 128, 16, 1024);
    float o[NO][4], m[2], l[2], s[NB][4];
    fa_start(o, m, l);
    const float sl2 = a.scale_log2;

    for (int t = 0; t + 1 < S; t++) issue(t);
    for (int t = 0; t < nt; t++) {
        // into the stage read at t - 1 (every thread is past it: the barrier below)
        issue(t + S - 1);
        if (by_tma(t)) {
            wg_mbar_wait(full + 8 * (t % S), (t / S) & 1); // phase t / S: every tile before t went by TMA
        } else {
            __pipeline_wait_prior(S - 1); // tile t's copies landed
            wg_fence_smem();
            __syncthreads();
        }
        const int j0 = tl.kbeg + t * BC;
        if (j0 < wg_end) {
            const uint32_t st = sst + (uint32_t)(t % S) * (uint32_t)C::STAGE;
            fa_wg_s<BC, D, 128>(s, dq, wg_desc(st, 16, 1024));
            fa_wg_tile<D, BC>(s, o, j0 + BC > warp_lo, j0, q, limr, m, l, sl2,
                              wg_desc(st + (uint32_t)C::KV, BC * 128, 1024));
        }
        __syncthreads(); // the stage just read is refilled next iteration
    }
    __pipeline_wait_prior(0);
    fa_store<D>(a, tl, R0, g, q, o, m, l);
}

// v46: k_attn_wg2's tiles, stages and arithmetic, warp-specialized as in
// FlashAttention-3. In k_attn_wg2 all 8 warps copy and then wait at one
// block barrier a tile, so both warpgroups run their products and their
// softmax at the same time and the tensor cores idle through every softmax.
// Here a producer warpgroup gathers the K/V tiles through the page table
// (cp.async) into the ring of stages, and the two consumer warpgroups take
// turns issuing their S products (named barriers 1 and 2: consumer 1 issues
// tile t after consumer 0 did, consumer 0 tile t + 1 after consumer 1 issued
// tile t), so one's softmax overlaps the other's products. Stages change
// hands through mbarriers: full[s] completes when the producer's 128 threads
// have each seen their copies land and fenced them for wgmma (one tile
// behind the newest issued, so no thread blocks on a copy before issuing the
// next); empty[s] when the consumers' 8 warps are past their products
// reading it (one arrival a warp). Registers move from the producer to the
// consumers (setmaxnreg).
//
// v73: with a.tma (v70's tensor maps) the producer's warp 0 copies the tiles
// instead, a lane a 16-key box, and full[s] is one arrival (lane 0's, with
// the tile's bytes); a tile the keys end inside takes its other rows by
// cp.async from the whole producer warpgroup first (zero past the keys),
// landed and fenced before that arrival. The consumer release was one
// arrival a thread (256 shared-memory atomics on one word a tile, 128 more
// for full): the likely reason the form ran 52 % of the mma rate against
// k_attn_wg2's 73 % with neither copies nor softmax (H100, v70's variants).
// Measured (H100, 4096 tokens): D 256 0.303 ms (57 % of mma) against
// k_attn_wg2's 0.386. At D 128 v48's overlap inside a warpgroup (tile t + 1's
// S issued with tile t's P·V, softmaxed while P·V ran) cost it 0.442 against
// this plain loop's 0.329 ms (52 %): removed (v74); the turns between the
// two warpgroups already keep the tensor cores busy through a softmax.
// v75: probes (kernels/dev/attn_probe.py) put a D 128 tile's time at ~4,000
// cycles a consumer warpgroup: a quarter of it waiting for the tile to land
// (full), a third in the softmax (ex2 since then without its subnormal
// range fix, fa_ex2: 0.330 -> 0.313 ms). At D 256 (two stages) V lands on a
// barrier of its own (fullv), waited for just before P·V.
// Shared memory: k_attn_wg2's, then the barriers.
#define WS_THREADS 384
#define WS_PRODUCER_BAR 3 // the producer warpgroup's named barrier (the consumers take 1 and 2)
#define WS_PRODUCER_REGS 40 // 128 · 40 + 256 · 232: all of the block's registers
#define WS_CONSUMER_REGS 232
static_assert(wg_ws_regs_fit<WS_PRODUCER_REGS, WS_CONSUMER_REGS>(), "setmaxnreg within the block's registers");
template <int D> struct ws_cfg {
    using W = wg2_cfg<D>;
    static constexpr size_t BAR = W::BAR; // full[STAGES] (k_attn_wg2's), empty[STAGES], fullv[STAGES]
    static constexpr size_t BYTES = W::BYTES + 16 * W::STAGES;
};

template <int D>
__global__ void __launch_bounds__(WS_THREADS, 1) k_attn_ws(const __grid_constant__ cu_attn_args a)
{
    using C = wg2_cfg<D>;
    constexpr int BC = C::BC, NB = BC / 8, NO = D / 8, S = C::STAGES;
    extern __shared__ __align__(1024) char smem_raw[];
    char *smem = wg_align(smem_raw);
    const uint32_t sq = (uint32_t)__cvta_generic_to_shared(smem), sst = sq + (uint32_t)C::Q;
    const uint32_t full = sq + (uint32_t)ws_cfg<D>::BAR, empty = full + 8 * S;
    // v75: by TMA with two stages (D 256) the V tile lands on a barrier of its
    // own, so S = Q·Kᵀ starts once K is in (0.298 -> 0.293 ms at 4096 tokens on
    // an H100; at D 128's three stages it measured 1 % slower)
    const uint32_t fullv = S == 2 && a.tma ? empty + 8 * S : full;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, wgi = warp / 4 - 1; // -1: the producer

    cu_pdl_wait();
    cu_pdl_trigger();
    const attn_tile tl = attn_tile_of(a, gridDim.x - 1 - blockIdx.x); // longest first
    if (tl.kbeg >= tl.kend) return; // no row has keys in this split
    if (threadIdx.x == 0)
        for (int st = 0; st < S; st++) {
            wg_mbar_init(full + 8 * st, a.tma ? 1 : 128);
            wg_mbar_init(empty + 8 * st, 8);
            if (fullv != full) wg_mbar_init(fullv + 8 * st, 1);
        }
    fa_wg_load_q<128, D>(a, tl, smem);
    wg_fence_smem();
    __syncthreads(); // Q and the barriers ready; the last block-wide barrier
    const int nt = (tl.kend - tl.kbeg + BC - 1) / BC;

    if (wgi < 0) {
        wg_regs_dec<WS_PRODUCER_REGS>();
        auto swz = [](int r, int c) { return wg_swz(C::BC, r, c); };
        if (!a.tma) {
            wg_produce<S>(nt, full, empty, [&](int t) {
                char *st = smem + C::Q + (t % S) * C::STAGE;
                fa_issue<D, BC, 128, 4>(a, tl, tl.kbeg + t * BC, st, st + C::KV, swz);
            });
            return;
        }
        const int32_t *pages = a.page_table + (int64_t)tl.s * a.max_pages;
        for (int t = 0; t < nt; t++) {
            if (t >= S) wg_mbar_wait(empty + 8 * (t % S), (t / S - 1) & 1);
            const int j0 = tl.kbeg + t * BC, nb = min(BC, tl.kend - j0) / 16; // whole 16-key boxes
            const uint32_t bar = full + 8 * (t % S), s0 = sst + (uint32_t)(t % S) * (uint32_t)C::STAGE;
            if (nb < BC / 16) { // the keys end inside: the other rows by cp.async, landed and fenced
                char *st = smem + C::Q + (t % S) * C::STAGE;
                fa_issue<D, BC, 128, 4>(a, tl, j0, st, st + C::KV, swz, 16 * nb);
                __pipeline_wait_prior(0);
                wg_fence_smem();
                wg_bar_sync(WS_PRODUCER_BAR, 128);
            }
            if (warp == 0) {
                const int j = j0 + 16 * lane;
                const int row = lane < nb ? (int)attn_row(a, pages, j) : 0;
                const uint32_t vbar = fullv + 8 * (t % S);
                if (lane == 0) { // K and V: 16 rows × D × 2 bytes a box each
                    const uint32_t kv = (uint32_t)(nb * 32 * D);
                    wg_mbar_expect_tx(bar, vbar == bar ? 2 * kv : kv);
                    if (vbar != bar) wg_mbar_expect_tx(vbar, kv);
                }
                __syncwarp(); // the bytes announced before any lands
                if (lane < nb) fa_tma_box<D, BC>(a, tl, s0, lane, row, bar, vbar);
            }
        }
        return;
    }
    wg_regs_inc<WS_CONSUMER_REGS>();

    // consumer warp cw holds rows 16cw .. 16cw + 15: warpgroup wgi's m64 accumulators
    const int g = lane >> 2, q = lane & 3, R0 = (warp - 4) * 16, last = tl.ntok - 1;
    const fa_lim lim{a, tl};
    const int limr[2] = {lim(R0 + g), lim(R0 + g + 8)};
    const int warp_lo = lim(R0); // below: no mask in this warp
    // from here this warpgroup has nothing to do (warpgroup-uniform)
    const int wg_end = wgi * 64 / a.gh <= last ? lim(wgi * 64 + 63) : 0;
    const uint64_t dq = wg_desc(sq + (uint32_t)wgi * 64 * 128, 16, 1024);
    float o[NO][4], m[2], l[2], s[NB][4];
    fa_start(o, m, l);
    const float sl2 = a.scale_log2;
    // the turn, taken every tile t (also where this warpgroup skips its
    // products) so that every arrival has its wait
    auto turn = [&](int t) {
        if (wgi == 1 || t > 0) wg_bar_sync(1 + wgi, 256);
    };
    auto pass = [&](int t) {
        if (wgi == 0 || t + 1 < nt) wg_bar_arrive(2 - wgi, 256);
    };
    for (int t = 0; t < nt; t++) {
        wg_mbar_wait(full + 8 * (t % S), (t / S) & 1);
        const int j0 = tl.kbeg + t * BC;
        const uint32_t st = sst + (uint32_t)(t % S) * (uint32_t)C::STAGE;
        if (j0 >= wg_end) { // V landed too before the stage is released
            wg_mbar_wait(fullv + 8 * (t % S), (t / S) & 1);
            turn(t);
            pass(t);
        } else { // the products in one branch: ptxas serialises wgmma split over several (C7518)
            turn(t);
            fa_wg_s<BC, D, 128>(s, dq, wg_desc(st, 16, 1024));
            pass(t);
            fa_wg_tile<D, BC>(s, o, j0 + BC > warp_lo, j0, q, limr, m, l, sl2,
                              wg_desc(st + (uint32_t)C::KV, BC * 128, 1024),
                              [&] { wg_mbar_wait(fullv + 8 * (t % S), (t / S) & 1); });
        }
        __syncwarp(); // the warp's products retired: one arrival a warp
        if (lane == 0) wg_mbar_arrive(empty + 8 * (t % S));
    }
    fa_store<D>(a, tl, R0, g, q, o, m, l);
}

// With a.oq (128 threads, D a multiple of 128) out's FP8 codes too: a head's
// 128-group is one pass of the block. The splits' maxima and sums load a split
// a thread, their weights e_x = 2^(m_x − M) go to shared memory (2 · nsplit
// floats), and each column's sum loads its terms in batches (cu_wsum): the
// three loops over the splits, rolled, waited a round trip a split or four
// (NOTES v65). The sums keep their order: L and O add the splits in x order.
__global__ void k_attn_combine(cu_attn_args a, int D)
{
    __shared__ float mx[4];
    extern __shared__ float cs[];
    float *e = cs, *l = cs + a.nsplit;
    int t = blockIdx.x, h = blockIdx.y;
    cu_pdl_wait();
    cu_pdl_trigger();
    int s = a.seq_of[t], q0 = a.q_start[s], qn = a.q_start[s + 1] - q0;
    int nkv = a.kv_len[s] - qn + (t - q0) + 1;
    int chunk = attn_chunk(a, a.kv_len[s]), ns = (nkv + chunk - 1) / chunk;
    const float *p = a.part + ((int64_t)t * a.Hq + h) * a.nsplit * (D + 2);
    float M = -INFINITY;
    for (int x = threadIdx.x; x < ns; x += blockDim.x) M = fmaxf(M, p[x * (D + 2)]);
    M = cu_warp_max(M);
    if ((threadIdx.x & 31) == 0) mx[threadIdx.x >> 5] = M;
    __syncthreads();
    M = fmaxf(fmaxf(mx[0], mx[1]), fmaxf(mx[2], mx[3]));
    for (int x = threadIdx.x; x < ns; x += blockDim.x) {
        e[x] = exp2f(p[x * (D + 2)] - M);
        l[x] = p[x * (D + 2) + 1];
    }
    __syncthreads(); // mx is free again (fp8_quant_block)
    float L = 0.0f;
    for (int x = 0; x < ns; x++) L += l[x] * e[x];
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float o = cu_wsum(e, ns, [&](int x) { return p[x * (D + 2) + 2 + d]; });
        cu_mat_st(a.out, t, (int64_t)h * D + d, o / L);
        if (a.oq.codes) fp8_quant_block(a.oq, a.out.dt, o / L, t, (int64_t)h * D + d, mx); // block-uniform
    }
}

// The kernels: 16-row tiles (decode, short chunks), 64-row tiles (prefill)
// on wmma, mma.sync (FlashAttention-2 style) or wgmma, plain or overlapped,
// and 128-row tiles on wgmma (sl_cuda_attn_prefill).
enum { ATTN_K_DECODE, ATTN_K_PREFILL, ATTN_K_FA2, ATTN_K_WG, ATTN_K_WGO, ATTN_K_WG2, ATTN_K_WS, ATTN_K_WG2_TMA };
template <int D, int K> struct attn_kernel {
    static constexpr bool WG2 = K == ATTN_K_WG2 || K == ATTN_K_WG2_TMA;
    static constexpr int THREADS = K == ATTN_K_WS ? WS_THREADS : WG2 ? WG2_THREADS : ATTN_WARPS * 32;
    static constexpr size_t BYTES = K == ATTN_K_WS        ? ws_cfg<D>::BYTES
                                    : WG2                 ? wg2_cfg<D>::BYTES
                                    : K >= ATTN_K_WG      ? wg_cfg<D>::BYTES
                                    : K == ATTN_K_FA2     ? fa2_cfg<D>::BYTES
                                    : K == ATTN_K_PREFILL ? attn_pf_smem<D>::BYTES
                                                          : attn_smem<D>::BYTES;
    static void (*fn(void))(cu_attn_args)
    {
        return K == ATTN_K_WS        ? k_attn_ws<D>
               : K == ATTN_K_WG2_TMA ? k_attn_wg2<D, true>
               : K == ATTN_K_WG2     ? k_attn_wg2<D, false>
               : K == ATTN_K_WGO     ? k_attn_wg<D, true>
               : K == ATTN_K_WG      ? k_attn_wg<D, false>
               : K == ATTN_K_FA2     ? k_attn_fa2<D>
               : K == ATTN_K_PREFILL ? k_attn_prefill<D>
                                     : k_attn<D>;
    }
};

// Allows the kernel more than 48 KB of shared memory (a per-device setting,
// so done before every launch: it is cheap) and returns how many of its
// blocks fit on one multiprocessor.
template <int D, int K>
static int attn_prepare_kernel(void)
{
    using A = attn_kernel<D, K>;
    CU_CHECK(cudaFuncSetAttribute(A::fn(), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  (int)A::BYTES));
    int n = 0;
    CU_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, A::fn(), A::THREADS, A::BYTES));
    return n > 0 ? n : 1;
}

template <int D, int K>
static int attn_run(cu_backend *b, cu_attn_args &a, const cu_meta *cm, int level, int Hkv)
{
    using A = attn_kernel<D, K>;
    int n_hb = a.G / a.gh;
    int64_t base = (int64_t)cm->n_tiles[level] * Hkv * n_hb;
    int max_kv = cm->max_kv_len > 0 ? cm->max_kv_len : 1;
    // Split the keys only to fill one wave of blocks (decode, few tiles): a
    // partial second wave would cost more than the splits save.
    int64_t capacity = (int64_t)attn_prepare_kernel<D, K>() * b->n_sm;
    int ns = base >= capacity ? 1 : (int)(capacity / base);
    int ns_cap = (max_kv + ATTN_SPLIT_KEYS - 1) / ATTN_SPLIT_KEYS;
    if (ns > ns_cap) ns = ns_cap;
    if (ns < 1) ns = 1;
    a.nsplit = ns;
    if (a.nsplit > 1)
        a.part = (float *)cu_tmp_alloc(b, sizeof(float) * (size_t)cm->n_tokens * a.Hq * a.nsplit *
                                              (D + 2));
    dim3 grid((unsigned)cm->n_tiles[level], (unsigned)(Hkv * n_hb), (unsigned)a.nsplit);
    cu_launch(b, A::fn(), grid, A::THREADS, A::BYTES, a);
    return a.nsplit;
}

template <int D>
static int attn_run_d(cu_backend *b, cu_attn_args &a, const cu_meta *cm, int level, int Hkv,
                      int kind)
{
    switch (kind) {
    case ATTN_K_DECODE: return attn_run<D, ATTN_K_DECODE>(b, a, cm, level, Hkv);
    case ATTN_K_PREFILL: return attn_run<D, ATTN_K_PREFILL>(b, a, cm, level, Hkv);
    case ATTN_K_FA2: return attn_run<D, ATTN_K_FA2>(b, a, cm, level, Hkv);
    case ATTN_K_WG: return attn_run<D, ATTN_K_WG>(b, a, cm, level, Hkv);
    case ATTN_K_WGO: return attn_run<D, ATTN_K_WGO>(b, a, cm, level, Hkv);
    case ATTN_K_WG2: return attn_run<D, ATTN_K_WG2>(b, a, cm, level, Hkv);
    case ATTN_K_WG2_TMA: return attn_run<D, ATTN_K_WG2_TMA>(b, a, cm, level, Hkv);
    default: return attn_run<D, ATTN_K_WS>(b, a, cm, level, Hkv);
    }
}

// k_attn_wg2's TMA maps (v70): each cache as a 2-D tensor of its rows (slots) by
// the Hkv · D columns of its heads, copied in boxes of 16 rows × 64 columns (128
// bytes) with the 128-byte swizzle of the wgmma operand layout. 0 (cp.async
// copies) where TMA cannot serve: a page size not a multiple of 16 (a 16-key box
// would cross pages), a cache not 16-byte aligned, no encoder in the driver.
static int attn_tma_maps(cu_attn_args &a, const sl_tensor *kc, const sl_tensor *vc, int Hkv, int D)
{
    const PFN_cuTensorMapEncodeTiled_v12000 encode = cu_tensor_map_encoder();
    if (!encode || a.page_size % 16) return 0;
    auto map = [&](CUtensorMap *m, const sl_tensor *c) {
        cuuint64_t dim[2] = {(cuuint64_t)Hkv * D, (cuuint64_t)sl_tensor_rows(c)};
        cuuint64_t stride[1] = {(cuuint64_t)sl_tensor_ld(c) * 2};
        cuuint32_t box[2] = {64, 16}, step[2] = {1, 1};
        return ((uintptr_t)c->data & 15) == 0 &&
               encode(m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, c->data, dim, stride, box, step,
                      CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
    };
    return map(&a.tk, kc) && map(&a.tv, vc);
}

void cu_attention(sl_backend *be, sl_tensor *out, const sl_tensor *q, const sl_tensor *kcache,
                  const sl_tensor *vcache, int Hq, int Hkv, int D, float scale,
                  const sl_batch_meta *m, sl_fp8_act *oq)
{
    cu_backend *b = cu_be(be);
    const cu_meta *cm = cu_meta_of(m);
    if (cm->n_tokens == 0) return;
    SL_ASSERT(kcache->dtype == SL_DTYPE_BF16 && vcache->dtype == SL_DTYPE_BF16);
    SL_ASSERT(D == 64 || D == 128 || D == 256);
    cu_attn_args a;
    memset(&a, 0, sizeof a);
    a.q = cu_mat_of(q);
    a.out = cu_mat_of(out);
    a.kc = (const __nv_bfloat16 *)kcache->data;
    a.vc = (const __nv_bfloat16 *)vcache->data;
    a.kld = sl_tensor_ld(kcache);
    a.vld = sl_tensor_ld(vcache);
    SL_ASSERT(a.kld % 8 == 0 && a.vld % 8 == 0);
    a.Hq = Hq;
    a.G = Hq / Hkv;
    // 64-row tiles once a sequence brings 16 or more new tokens (prefill),
    // else 16-row tiles; gh heads (a power of two dividing G) × qt tokens.
    bool pf = cm->max_q_len >= 16;
    int rows = pf ? 64 : 16;
    a.gh = 1;
    while (a.G % (a.gh * 2) == 0 && a.gh * 2 <= rows) a.gh *= 2;
    static const int pf_kind[] = {ATTN_K_PREFILL, ATTN_K_FA2, ATTN_K_WG, ATTN_K_WGO,
                                  ATTN_K_WG2,     ATTN_K_WS,  ATTN_K_WG2}; // sl_cuda_attn_kernel order
    int kind = pf ? pf_kind[b->attn_pf] : ATTN_K_DECODE;
    int level = 0;
    if (pf) {
        while ((a.gh << level) < 64) level++;
        // 128-row tiles are twice the tokens: one level up, if there is one
        // (a single query head per KV head would need 128-token tiles)
        if (kind == ATTN_K_WG2 || kind == ATTN_K_WS) {
            if (level + 1 < CU_TILE_LEVELS) level++;
            else kind = ATTN_K_WG;
        }
    } else {
        while (cm->max_q_len > (1 << level) && (a.gh << (level + 1)) <= 16) level++;
    }
    SL_ASSERT(level < CU_TILE_LEVELS);
    a.qt = 1 << level;
    a.scale_log2 = scale * 1.4426950408889634f;
    a.tiles = cm->tiles[level];
    a.q_start = cm->q_start;
    a.kv_len = cm->kv_len;
    a.page_table = cm->page_table;
    a.seq_of = cm->seq_of;
    a.page_size = cm->page_size;
    a.max_pages = cm->max_pages;
    a.tma = (kind == ATTN_K_WG2 || kind == ATTN_K_WS) && b->attn_tma && attn_tma_maps(a, kcache, vcache, Hkv, D);
    // AUTO: the warp-specialized tiles where their copies go by TMA (v74, H100,
    // 4096 tokens: D 128 0.329 against k_attn_wg2's 0.421 ms, D 256 0.303
    // against 0.386); its cp.async producer has not measured faster than wg2's
    if (a.tma && kind == ATTN_K_WG2)
        kind = b->attn_pf == SL_CUDA_ATTN_AUTO ? ATTN_K_WS : ATTN_K_WG2_TMA;
    int nsplit = D == 64    ? attn_run_d<64>(b, a, cm, level, Hkv, kind)
                 : D == 128 ? attn_run_d<128>(b, a, cm, level, Hkv, kind)
                            : attn_run_d<256>(b, a, cm, level, Hkv, kind);
    if (nsplit > 1) { // out's codes where asked and made: by the combine, a head a block
        a.oq = cu_fp8_dst_for(be, oq, a.out, 1, D);
        cu_launch(b, k_attn_combine, dim3((unsigned)cm->n_tokens, (unsigned)Hq), 128,
                  2 * sizeof(float) * (size_t)a.nsplit, a, D);
        cu_tmp_free(b, a.part);
    }
}

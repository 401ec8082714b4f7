// kernels/cuda/gdn.cu: Gated DeltaNet, two forms of each op.
// Recurrent (decode, short prompts), exact to the CPU's order of operations
// and sequential over each sequence's tokens:
//   conv1d: one thread per (sequence, channel); the K-1 history in registers.
//   gdn:    one block per (sequence, value head); two adjacent lanes own
//           column c of the Dk x Dv fp32 state in registers (half the rows
//           each, partial dots summed by one shuffle); q and k
//           (l2-normalised) go through shared memory each token.
// Parallel / chunked (prefill; see kernels/dev/NOTES.md, "gdn chunked"):
//   conv1d: one thread per (4-token tile, channel) reading its window from x
//           or, before the sequence's first token, from the old state; a
//           second kernel per (sequence, channel) writes snapshot and state.
//   gdn:    the WY chunked form (flash-linear-attention's
//           chunk_gated_delta_rule), 64-token chunks, one block per
//           (sequence, value head, value-column tile), tf32 tensor cores
//           (wmma m16n16k8, mma.sync m16n8k8) with fp32 accumulation, fp32
//           state and solve; or split (sl_cuda_gdn_split): the chunk-local
//           part for every chunk in parallel (tf32 mma.sync), then a scan
//           over the chunks doing only what depends on the state (kept fp32
//           in registers; bf16 mma.sync); the records between them in bf16.
#include <limits.h>
#include <cuda_pipeline.h>
#include <mma.h>

#include "gdn.cuh"
#include "mma.cuh"
#include "norm.cuh"

using namespace nvcuda;

// tf32 mma.sync m16n8k8 (row.col, fp32 accumulators) for the split form's
// products, several independent chains a warp. A fragment's operands are
// rounded as wmma::__float_to_tf32 rounds them (cvt.rna); the results are
// not wmma's to the bit on the GPU (kernels/dev/NOTES.md v84), only within
// the op test's tolerances of the CPU. The emulator has its own.
__device__ __forceinline__ uint32_t gdn_tf32(float x)
{
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
}

// An operand stored already rounded (gdn_tf32's bits: the prep's q, k, T and
// V tiles) is rounded once where it is written, not at each of the fragment
// loads that read it (cvt.rna is ~5 instructions; they were half of a loop's
// instructions in the SASS, NOTES v86 / v87). The products are the same to the bit.
__device__ __forceinline__ uint32_t gdn_tf32(uint32_t x) { return x; }
// x rounded as a tf32 operand, kept a float (a wmma operand of the single
// kernel converts it again to the same value)
__device__ __forceinline__ float gdn_rounded(float x) { return __uint_as_float(gdn_tf32(x)); }

__device__ __forceinline__ void gdn_mma8(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

#define CONV_MAXK 8
// Batches whose longest sequence has at least this many new tokens run the
// parallel conv1d (both kernels handle every sequence; not measured: a guess).
#define CONV_PAR_MIN 8
#define CONV_TT 4 // tokens per thread of the parallel conv1d

// The K-1 history of one (slot, channel) into registers (zeros past H or when
// fresh); returns where that history lives in the state.
__device__ __forceinline__ float *conv_load_hist(float (&v)[CONV_MAXK], float *state, int32_t slot,
                                                 int64_t C, int64_t c, int H, bool fresh)
{
    float *mine = state + ((int64_t)slot * C + c) * H;
#pragma unroll
    for (int j = 0; j < CONV_MAXK; j++) v[j] = j < H && !fresh ? mine[j] : 0.0f;
    return mine;
}

// conv1d of channel c of sequence s (a thread of k_conv1d, or of the fused
// decode k_gdn): its new tokens in order from the K-1 history in the state
// (zeros if fresh), y = silu(conv), the track snapshot, the history written back
__device__ __forceinline__ void conv_channel(cu_mat y, cu_mat x, cu_mat w, float *state, int K, int s, int64_t c,
                                             const int32_t *q_start, const int32_t *state_slot,
                                             const int32_t *state_fresh, const int32_t *track_slot,
                                             const int32_t *track_len)
{
    const int H = K - 1;
    // loads in flight together: the history (plain floats), then the weights
    // typed (cu_typed; through cu_mat_ld's switch each of them waited for the
    // one before, NOTES v58)
    int q0 = q_start[s], qn = q_start[s + 1] - q0;
    float hist[CONV_MAXK], wc[CONV_MAXK];
    float *mine = conv_load_hist(hist, state, state_slot[s], x.cols, c, H, state_fresh[s]);
    cu_typed(w.dt, [&](auto ty) {
#pragma unroll
        for (int j = 0; j < CONV_MAXK; j++) wc[j] = j < K ? cu_mat_ld_as(w, c, j, ty) : 0.0f;
    });
    for (int i = 0; i < qn; i++) {
        float xt, acc = 0.0f;
        cu_typed(x.dt, [&](auto ty) { xt = cu_mat_ld_as(x, q0 + i, c, ty); });
#pragma unroll
        for (int j = 0; j < CONV_MAXK - 1; j++)
            if (j < H) acc += wc[j] * hist[j];
#pragma unroll
        for (int j = 0; j < CONV_MAXK; j++)
            if (j == H) acc += wc[j] * xt;
#pragma unroll
        for (int j = 0; j + 1 < CONV_MAXK; j++)
            if (j + 1 < H) hist[j] = hist[j + 1];
#pragma unroll
        for (int j = 0; j < CONV_MAXK; j++)
            if (j == H - 1) hist[j] = xt;
        cu_mat_st(y, q0 + i, c, acc / (1.0f + expf(-acc)));
        if (track_slot[s] >= 0 && i + 1 == track_len[s]) {
            float *snap = state + ((int64_t)track_slot[s] * x.cols + c) * H;
#pragma unroll
            for (int j = 0; j < CONV_MAXK; j++)
                if (j < H) snap[j] = hist[j];
        }
    }
#pragma unroll
    for (int j = 0; j < CONV_MAXK; j++)
        if (j < H) mine[j] = hist[j];
}

__global__ void k_conv1d(cu_mat y, cu_mat x, cu_mat w, float *state, int K, const int32_t *q_start,
                         const int32_t *state_slot, const int32_t *state_fresh,
                         const int32_t *track_slot, const int32_t *track_len)
{
    int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    cu_pdl_wait();
    cu_pdl_trigger();
    if (c >= x.cols) return;
    conv_channel(y, x, w, state, K, blockIdx.y, c, q_start, state_slot, state_fresh, track_slot, track_len);
}

// y only: thread (tile, c) computes CONV_TT consecutive tokens of channel c
// (any sequence each); the K-1 inputs before a sequence's first token come
// from its old state (zeros if fresh), which k_conv1d_state rewrites only
// after this kernel has finished. KM >= K: the unrolled window (4 for the
// models' K = 4, else CONV_MAXK). Every load of x and w is issued before the
// first use, from a clamped address, then masked: branching around each load
// (and its conversion) made them wait one after another (13 % of bandwidth,
// NOTES v60). The weights sit shifted by KM − K so that window element
// tt + jj multiplies weight slot jj, compile-time indices both; the terms are
// added in the CPU's order (history oldest first, then the current input).
template <int KM>
__global__ void k_conv1d_par(cu_mat y, cu_mat x, cu_mat w, const float *state, int K, const int32_t *q_start,
                             const int32_t *seq_of, const int32_t *state_slot, const int32_t *state_fresh)
{
    constexpr int NW = CONV_TT + KM - 1; // x rows t0 − (KM − 1) .. t0 + CONV_TT − 1
    int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x, C = x.cols;
    int t0 = blockIdx.y * CONV_TT;
    cu_pdl_wait();
    cu_pdl_trigger();
    if (c >= C) return;
    const int H = K - 1, sh = KM - K;
    float ws[KM], xw[NW];
    int q0[CONV_TT], s_of[CONV_TT];
    cu_typed(w.dt, [&](auto ty) {
#pragma unroll
        for (int jj = 0; jj < KM; jj++) {
            float v = cu_mat_ld_as(w, c, max(jj - sh, 0), ty);
            ws[jj] = jj >= sh ? v : 0.0f;
        }
    });
    cu_typed(x.dt, [&](auto ty) {
#pragma unroll
        for (int m = 0; m < NW; m++) {
            int p = t0 - (KM - 1) + m;
            float v = cu_mat_ld_as(x, min(max(p, 0), (int)x.rows - 1), c, ty);
            xw[m] = p >= 0 && p < x.rows ? v : 0.0f;
        }
    });
#pragma unroll
    for (int tt = 0; tt < CONV_TT; tt++) s_of[tt] = seq_of[min(t0 + tt, (int)x.rows - 1)];
#pragma unroll
    for (int tt = 0; tt < CONV_TT; tt++) q0[tt] = q_start[s_of[tt]];
#pragma unroll
    for (int tt = 0; tt < CONV_TT; tt++) {
        int t = t0 + tt, s = s_of[tt];
        if (t >= x.rows) break;
        float acc = 0.0f;
#pragma unroll
        for (int jj = 0; jj < KM; jj++) {
            if (jj < sh) continue;
            int p = t - (KM - 1) + jj;
            float xv = xw[tt + jj];
            if (p < q0[tt]) // before the sequence: its old state
                xv = state_fresh[s] ? 0.0f : state[((int64_t)state_slot[s] * C + c) * H + p - q0[tt] + H];
            acc += ws[jj] * xv;
        }
        cu_mat_st(y, t, c, acc / (1.0f + expf(-acc)));
    }
}

// Register array element i (i not a compile-time constant) without local memory.
__device__ __forceinline__ float conv_pick(const float (&v)[CONV_MAXK], int i)
{
    float r = 0.0f;
#pragma unroll
    for (int j = 0; j < CONV_MAXK; j++)
        if (j == i) r = v[j];
    return r;
}

// The conv state after the sequence (and the track snapshot): the K-1 inputs
// before that point, from x or, for a sequence shorter than K-1, partly from
// the old state. One thread per (sequence, channel) reads all of its old
// state before writing.
__global__ void k_conv1d_state(cu_mat x, float *state, int K, const int32_t *q_start,
                               const int32_t *state_slot, const int32_t *state_fresh,
                               const int32_t *track_slot, const int32_t *track_len)
{
    int s = blockIdx.y;
    int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x, C = x.cols;
    cu_pdl_wait();
    cu_pdl_trigger();
    if (c >= C) return;
    const int H = K - 1;
    float old[CONV_MAXK], fin[CONV_MAXK], snap[CONV_MAXK];
    bool fresh = state_fresh[s];
    float *mine = conv_load_hist(old, state, state_slot[s], C, c, H, fresh);
    int q0 = q_start[s], qn = q_start[s + 1] - q0;
    int ts = track_slot[s], tl = ts >= 0 ? track_len[s] : 0;
#pragma unroll
    for (int j = 0; j < CONV_MAXK; j++) {
        if (j >= H) break;
        int p = qn - H + j; // sequence-relative input index
        fin[j] = p >= 0 ? cu_mat_ld(x, q0 + p, c) : conv_pick(old, p + H);
        p = tl - H + j;
        snap[j] = p >= 0 ? cu_mat_ld(x, q0 + p, c) : conv_pick(old, p + H);
    }
    if (ts >= 0 && tl >= 1 && tl <= qn) {
        float *sp = state + ((int64_t)ts * C + c) * H;
#pragma unroll
        for (int j = 0; j < CONV_MAXK; j++)
            if (j < H) sp[j] = snap[j];
    }
#pragma unroll
    for (int j = 0; j < CONV_MAXK; j++)
        if (j < H) mine[j] = fin[j];
}

void cu_conv1d(sl_backend *be, sl_tensor *y, const sl_tensor *x, const sl_tensor *w,
               sl_tensor *state, const sl_batch_meta *m)
{
    cu_backend *b = cu_be(be);
    const cu_meta *cm = cu_meta_of(m);
    int K = (int)sl_tensor_cols(w);
    SL_ASSERT(state->dtype == SL_DTYPE_F32 && K >= 1 && K <= CONV_MAXK);
    if (cm->n_seqs == 0) return;
    int64_t C = sl_tensor_cols(x);
    if (cm->max_q_len >= CONV_PAR_MIN && cm->n_tokens > 0) {
        dim3 gy(cu_blocks(C, 128), (unsigned)((cm->n_tokens + CONV_TT - 1) / CONV_TT));
        cu_launch(b, K <= 4 ? k_conv1d_par<4> : k_conv1d_par<CONV_MAXK>, gy, 128, 0, cu_mat_of(y), cu_mat_of(x),
                  cu_mat_of(w), (const float *)state->data, K, cm->q_start, cm->seq_of, cm->state_slot,
                  cm->state_fresh);
        dim3 gs(cu_blocks(C, 128), (unsigned)cm->n_seqs);
        cu_launch(b, k_conv1d_state, gs, 128, 0, cu_mat_of(x), (float *)state->data, K,
                  cm->q_start, cm->state_slot, cm->state_fresh, cm->track_slot, cm->track_len);
        return;
    }
    dim3 grid(cu_blocks(C, 128), (unsigned)cm->n_seqs);
    cu_launch(b, k_conv1d, grid, 128, 0, cu_mat_of(y), cu_mat_of(x), cu_mat_of(w),
              (float *)state->data, K, cm->q_start, cm->state_slot, cm->state_fresh,
              cm->track_slot, cm->track_len);
}

typedef struct cu_gdn_args {
    cu_mat out, qkv, a, b;
    const void *A_log, *dt_bias;
    int A_dt, bias_dt;
    float *ssm;
    int Hk, Hv, Dv;
    const int32_t *q_start, *state_slot, *state_fresh, *track_slot, *track_len;
} cu_gdn_args;

__device__ __forceinline__ float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

// Value head h's gate constants: −e^(A_log) (the log-decay's scale) and dt_bias
__device__ __forceinline__ void gdn_gate_consts(const cu_gdn_args &g, int h, float &Aexp, float &bias)
{
    Aexp = -expf(cu_ldf(g.A_log, g.A_dt, h));
    bias = cu_ldf(g.dt_bias, g.bias_dt, h);
}

// The fused decode form of k_gdn (FUSE; every sequence one new token): conv1d
// of the block's channels before the recurrence (conv_channel into g.qkv, as
// k_conv1d), rmsnorm_gated of its heads' outputs after it (norm_group on
// g.out, as k_norm_warp; Q: with FP8 codes): three launches in one, the same
// arithmetic to the bit.
typedef struct cu_gdn_fuse {
    cu_mat mixed, conv_w; // conv1d's input and weights (its output is g.qkv)
    float *conv_state;
    int K;
    cu_norm_args norm; // rmsnorm_gated: x = g.out
} cu_gdn_fuse;

// One block per (sequence, HB value heads): HB = 1, or all of a key head's
// value heads, whose q and k the block then normalises once (FUSE needs the
// latter: the block owns those channels' conv state). max_len: sequences with
// more new tokens are left to k_gdn_chunk.
template <int DK, int HB, bool FUSE, bool Q>
__global__ void __launch_bounds__(512) k_gdn(cu_gdn_args g, int max_len, cu_gdn_fuse f)
{
    constexpr int DH = DK / 2; // state rows per thread
    __shared__ float qs[DK], ks[DK], red[32];
    const int Dv = g.Dv, s = blockIdx.x / (g.Hv / HB), h0 = blockIdx.x % (g.Hv / HB) * HB;
    const int kh = h0 / (g.Hv / g.Hk), tid = threadIdx.x, lt = tid % (2 * Dv);
    const int h = h0 + tid / (2 * Dv), c = lt >> 1, d0 = (lt & 1) * DH;
    cu_pdl_wait();
    cu_pdl_trigger();
    if (g.q_start[s + 1] - g.q_start[s] > max_len) return; // block-uniform
    if constexpr (FUSE) { // the token's q, k (key head kh) and v (heads h0 ..) through conv1d
        for (int j = tid; j < 2 * DK + HB * Dv; j += blockDim.x) {
            int64_t ch = j < DK       ? (int64_t)kh * DK + j
                         : j < 2 * DK ? (int64_t)g.Hk * DK + (int64_t)kh * DK + (j - DK)
                                      : (int64_t)2 * g.Hk * DK + (int64_t)h0 * Dv + (j - 2 * DK);
            conv_channel(g.qkv, f.mixed, f.conv_w, f.conv_state, f.K, s, ch, g.q_start, g.state_slot,
                         g.state_fresh, g.track_slot, g.track_len);
        }
        __syncthreads(); // the block's conv outputs, read below from g.qkv
    }
    int64_t sz = (int64_t)DK * Dv, slot_sz = (int64_t)g.Hv * sz;
    float *mine = g.ssm + (int64_t)g.state_slot[s] * slot_sz + h * sz;
    float S[DH];
    bool fresh = g.state_fresh[s];
#pragma unroll
    for (int d = 0; d < DH; d++) S[d] = fresh ? 0.0f : mine[(int64_t)(d0 + d) * Dv + c];
    float A, bias;
    gdn_gate_consts(g, h, A, bias);
    float qscale = 1.0f / sqrtf((float)DK);
    int q0 = g.q_start[s], qn = g.q_start[s + 1] - q0;
    for (int i = 0; i < qn; i++) {
        int t = q0 + i;
        // l2norm(q), l2norm(k) over DK (DK <= 2·Dv threads, checked on the
        // host; the other threads add zeros, so HB does not change the sums)
        // loaded together, typed (cu_typed: a round trip per dtype, not per
        // load), before the shared stores below, which may alias them
        bool own = tid < DK;
        float qv = 0.0f, kv = 0.0f, vv, ga, gb;
        cu_typed(g.qkv.dt, [&](auto ty) {
            if (own) {
                qv = cu_mat_ld_as(g.qkv, t, (int64_t)kh * DK + tid, ty);
                kv = cu_mat_ld_as(g.qkv, t, (int64_t)g.Hk * DK + (int64_t)kh * DK + tid, ty);
            }
            vv = cu_mat_ld_as(g.qkv, t, (int64_t)2 * g.Hk * DK + (int64_t)h * Dv + c, ty);
        });
        cu_typed(g.a.dt, [&](auto ty) { ga = cu_mat_ld_as(g.a, t, h, ty); });
        cu_typed(g.b.dt, [&](auto ty) { gb = cu_mat_ld_as(g.b, t, h, ty); });
        float qss = cu_block_sum(qv * qv, red);
        float kss = cu_block_sum(kv * kv, red);
        if (own) {
            qs[tid] = qv * (1.0f / sqrtf(qss + 1e-6f)) * qscale;
            ks[tid] = kv * (1.0f / sqrtf(kss + 1e-6f));
        }
        __syncthreads();
        float decay = expf(A * softplus(ga + bias));
        float beta = 1.0f / (1.0f + expf(-gb));
        // S <- e^g S;  u = beta (v - S^T k);  S <- S + k u^T;  o = S^T q
        float sk = 0.0f;
#pragma unroll
        for (int d = 0; d < DH; d++) {
            S[d] *= decay;
            sk += S[d] * ks[d0 + d];
        }
        sk += __shfl_xor_sync(0xffffffffu, sk, 1);
        float u = beta * (vv - sk);
        float o = 0.0f;
#pragma unroll
        for (int d = 0; d < DH; d++) {
            S[d] += ks[d0 + d] * u;
            o += S[d] * qs[d0 + d];
        }
        o += __shfl_xor_sync(0xffffffffu, o, 1);
        if (d0 == 0) cu_mat_st(g.out, t, (int64_t)h * Dv + c, o);
        if (g.track_slot[s] >= 0 && i + 1 == g.track_len[s]) {
            float *snap = g.ssm + (int64_t)g.track_slot[s] * slot_sz + h * sz;
#pragma unroll
            for (int d = 0; d < DH; d++) snap[(int64_t)(d0 + d) * Dv + c] = S[d];
        }
        __syncthreads(); // qs/ks are rewritten next token
    }
#pragma unroll
    for (int d = 0; d < DH; d++) mine[(int64_t)(d0 + d) * Dv + c] = S[d];
    if constexpr (FUSE) { // (the loop's last barrier: every head's output is in g.out)
        int w = tid >> 5;
        if (w < HB)
            norm_group<true, Q>(f.norm, (int64_t)q0 * g.Hv + h0 + w, tid & 31, 32,
                                [](float v) { return cu_warp_sum(v); });
    }
}

// ---- chunked form ----------------------------------------------------------------
//
// Per sequence, chunks of up to C = 64 tokens; a chunk also ends where the
// track snapshot is asked for, so the snapshot is always a chunk-end state.
// Within a chunk (i, j token indices, G the inclusive cumulative log gate
// from the chunk start, S0 the state at the chunk start):
//   L  = strictly lower (β_i e^(G_i−G_j) k_i·k_j),   T = (I + L)⁻¹ (fp32)
//   W  = T diag(β e^G) K,   U = T diag(β) V − W S0          (= v_new)
//   O  = (Q ⊙ e^G) S0 + (Q Kᵀ ⊙ e^(G_i−G_j), j ≤ i) U
//   S  = e^(G_last) S0 + (K ⊙ e^(G_last−G))ᵀ U
// Only differences G_i − G_j with j ≤ i are exponentiated (all ≤ 0). Padding
// rows of a short chunk have q = k = v = 0, β = 0, g = 0: their L rows and
// U rows are zero and G stays at the last real token's value.
// The value columns are independent in all of it, so a block owns BV of
// them; the chunk-local L, T, W, QKᵀ are recomputed by each column tile.

#define GDN_C 64
// Sequences with at least this many new tokens take the chunked kernel (a
// guess, not measured: one chunk costs about what a few recurrent tokens do).
#define GDN_CHUNK_MIN 16

template <int DK, int BV> struct gdn_smem {
    static constexpr int LK = DK + 4, LC = GDN_C + 4, LV = BV + 4; // padded row strides
    static constexpr int Q = 0;                      // [C][LK] q, then q ⊙ e^G
    static constexpr int K = Q + GDN_C * LK;         // [C][LK] k, then k ⊙ e^(G_last−G)
    static constexpr int W = K + GDN_C * LK;         // [C][LK] w
    static constexpr int L = W + GDN_C * LK;         // [C][LC] L, then T diag(β)
    static constexpr int T = L + GDN_C * LC;         // [C][LC] T, then T diag(β e^G)
    static constexpr int QK = T + GDN_C * LC;        // [C][LC] masked, decayed q kᵀ
    static constexpr int V = QK + GDN_C * LC;        // [C][LV] v, then o
    static constexpr int U = V + GDN_C * LV;         // [C][LV] solve scratch, u, then v_new
    static constexpr int S = U + GDN_C * LV;         // [DK][LV] state columns, fp32
    static constexpr int G = S + DK * LV;            // [C] cumulative log gate
    static constexpr int E = G + GDN_C;              // [C] e^G
    static constexpr int B = E + GDN_C;              // [C] β
    static constexpr int FLOATS = B + GDN_C;
    static constexpr size_t BYTES = FLOATS * sizeof(float);
    static_assert(Q % 8 == 0 && K % 8 == 0 && W % 8 == 0 && L % 8 == 0 && T % 8 == 0 &&
                      QK % 8 == 0 && V % 8 == 0 && U % 8 == 0 && S % 8 == 0,
                  "wmma tiles need 32-byte aligned bases");
    static_assert(4 * 256 <= GDN_C * LV, "solve scratch");
};

typedef wmma::fragment<wmma::accumulator, 16, 16, 8, float> gdn_acc;

// c += A·B over NK k-steps of 8. A: 16 x 8NK (layout LA, leading dim lda,
// astep floats per k-step); B: 8NK x 16 (LB, ldb, bstep). Operands rounded
// to tf32 (nearest). Unrolled, so a step's fragments load while the one
// before multiplies: rolled, each step paid its loads' and the mma's latency
// in turn (≈ 200 cycles a step, NOTES v57).
template <class LA, class LB, int NK>
__device__ __forceinline__ void gdn_mma(gdn_acc &c, const float *A, int lda, int astep,
                                        const float *B, int ldb, int bstep)
{
    wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, LA> a;
    wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, LB> b;
#pragma unroll
    for (int k = 0; k < NK; k++) {
        wmma::load_matrix_sync(a, A + k * astep, lda);
        wmma::load_matrix_sync(b, B + k * bstep, ldb);
#pragma unroll
        for (int i = 0; i < a.num_elements; i++) a.x[i] = wmma::__float_to_tf32(a.x[i]);
#pragma unroll
        for (int i = 0; i < b.num_elements; i++) b.x[i] = wmma::__float_to_tf32(b.x[i]);
        wmma::mma_sync(c, a, b, c);
    }
}

// c += A·B for row block mi of a lower block-triangular A (row-major, the
// k-steps of its blocks 0..mi) and B row-major: gdn_mma at each step count.
__device__ __forceinline__ void gdn_mma_lower(gdn_acc &c, const float *A, int lda, const float *B, int ldb, int mi)
{
    using R = wmma::row_major;
    switch (mi) {
    case 0: gdn_mma<R, R, 2>(c, A, lda, 8, B, ldb, 8 * ldb); break;
    case 1: gdn_mma<R, R, 4>(c, A, lda, 8, B, ldb, 8 * ldb); break;
    case 2: gdn_mma<R, R, 6>(c, A, lda, 8, B, ldb, 8 * ldb); break;
    default: gdn_mma<R, R, 8>(c, A, lda, 8, B, ldb, 8 * ldb); break;
    }
}

// Lower-triangular 16x16 tile index (10 tiles of a 4x4 grid) -> (mi, nj).
__device__ __forceinline__ void gdn_tri(int idx, int &mi, int &nj)
{
    mi = idx < 1 ? 0 : idx < 3 ? 1 : idx < 6 ? 2 : 3;
    nj = idx - mi * (mi + 1) / 2;
}

// A block's DK x BV state tile from its slot (row stride Dv; zeros for a
// fresh state) into shared memory (row stride LV).
template <int DK, int BV, int LV>
__device__ __forceinline__ void gdn_state_in(float *Ss, const float *src, int Dv, bool fresh)
{
    for (int e = threadIdx.x; e < DK * BV; e += blockDim.x) {
        int d = e / BV, c = e % BV;
        Ss[d * LV + c] = fresh ? 0.0f : src[(int64_t)d * Dv + c];
    }
}

// ROWS x BV floats of shared memory (row stride LS) to dst (row stride ld), 16
// bytes a store (BV, LS, ld and both bases multiples of 4 floats).
template <int ROWS, int BV, int LS>
__device__ __forceinline__ void gdn_tile_st(const float *src, float *dst, int64_t ld)
{
    constexpr int B4 = BV / 4;
    for (int e = threadIdx.x; e < ROWS * B4; e += blockDim.x) {
        int r = e / B4, c = (e % B4) * 4;
        *(float4 *)(dst + r * ld + c) = *(const float4 *)(src + r * LS + c);
    }
}

// The split form's records (below): one (chunk, value head) record in bf16
// (its elements' count, a multiple of 8, and their offsets), G_last a float
// in two elements. bf16 halves the bytes every split kernel moves (fp32
// records were ~2 GB at 8192 tokens, NOTES v83); the scan's products run on
// bf16 mma.sync with the state in fp32 (below, v88).
typedef __nv_bfloat16 gdn_rt;
template <int DK> struct gdn_rec {
    static constexpr int QG = 0, KD = GDN_C * DK, W = 2 * GDN_C * DK, QK = 3 * GDN_C * DK;
    static constexpr int U = QK + GDN_C * GDN_C; // then [C][Dv]
    __host__ __device__ static int64_t size(int Dv) { return U + (int64_t)GDN_C * Dv + 8; }
    __host__ __device__ static int64_t glast(int Dv) { return U + (int64_t)GDN_C * Dv; }
};

// Two adjacent elements (p 4- or 8-byte aligned) as one store.
__device__ __forceinline__ void gdn_st2(float *p, float a, float b) { *(float2 *)p = make_float2(a, b); }
__device__ __forceinline__ void gdn_st2(gdn_rt *p, float a, float b)
{
    *(__nv_bfloat162 *)p = __floats2bfloat162_rn(a, b);
}

// Four adjacent elements (p 8- or 16-byte aligned) as one store / load.
__device__ __forceinline__ void gdn_st4(float *p, float a, float b, float c, float d)
{
    *(float4 *)p = make_float4(a, b, c, d);
}
__device__ __forceinline__ void gdn_st4(gdn_rt *p, float a, float b, float c, float d)
{
    __nv_bfloat162 lo = __floats2bfloat162_rn(a, b), hi = __floats2bfloat162_rn(c, d);
    *(uint2 *)p = make_uint2(*(const uint32_t *)&lo, *(const uint32_t *)&hi);
}
__device__ __forceinline__ float4 gdn_ld4(const float *p) { return *(const float4 *)p; }
__device__ __forceinline__ float4 gdn_ld4(const gdn_rt *p)
{
    uint2 u = *(const uint2 *)p;
    float2 lo = __bfloat1622float2(*(const __nv_bfloat162 *)&u.x), hi = __bfloat1622float2(*(const __nv_bfloat162 *)&u.y);
    return make_float4(lo.x, lo.y, hi.x, hi.y);
}

// v stored as the mma operand it becomes: a tf32-rounded float (the single
// kernel's), or bf16 (the prep's); gdn_f reads either back.
__device__ __forceinline__ void gdn_put(float *p, float v) { *p = gdn_rounded(v); }
__device__ __forceinline__ void gdn_put(gdn_rt *p, float v) { *p = __float2bfloat16_rn(v); }
__device__ __forceinline__ void gdn_put4(float *p, float4 v)
{
    gdn_st4(p, gdn_rounded(v.x), gdn_rounded(v.y), gdn_rounded(v.z), gdn_rounded(v.w));
}
__device__ __forceinline__ void gdn_put4(gdn_rt *p, float4 v) { gdn_st4(p, v.x, v.y, v.z, v.w); }
__device__ __forceinline__ float gdn_f(float x) { return x; }
__device__ __forceinline__ float gdn_f(gdn_rt x) { return __bfloat162float(x); }

// Shared address of lane l's row in an ldmatrix x4 of a 16 x 16 bf16 tile at
// p (row stride ld elements). gdn_sm_a: read as an A operand (rows = m,
// columns = k; matrices: rows 0-7 / 8-15 at k 0-7, then at k 8-15), or with
// .trans as two B operands stored k-major (rows = k: b0 / b1 of n 0-7, then
// of n 8-15). gdn_sm_b: read as two B operands stored n-major (rows = n,
// columns = k: n 0-7 at k 0-7 / 8-15, then n 8-15), or with .trans as an A
// operand stored k-major (rows = k, columns = m).
__device__ __forceinline__ uint32_t gdn_sm_a(const gdn_rt *p, int ld)
{
    const int l = threadIdx.x & 31;
    return (uint32_t)__cvta_generic_to_shared(p + (l & 15) * ld + (l >> 4) * 8);
}
__device__ __forceinline__ uint32_t gdn_sm_b(const gdn_rt *p, int ld)
{
    const int l = threadIdx.x & 31;
    return (uint32_t)__cvta_generic_to_shared(p + ((l & 7) + (l >> 4) * 8) * ld + ((l >> 3) & 1) * 8);
}

// tf32 mma.sync's fragments from shared memory (fp32, or tf32 bits), each
// element through gdn_tf32. A of a 16 x 8 tile, p at lane (g, t)'s element
// (row g, column t), row-major, rows ld apart. B of an 8 x 8 tile, p at
// (row t, column g), rows ld apart.
struct gdn_afrag {
    uint32_t r[4];
};
template <class T> __device__ __forceinline__ gdn_afrag gdn_a_rows(const T *p, int ld)
{
    return {{gdn_tf32(p[0]), gdn_tf32(p[8 * ld]), gdn_tf32(p[4]), gdn_tf32(p[8 * ld + 4])}};
}
__device__ __forceinline__ void gdn_mma(float (&d)[4], const gdn_afrag &a, uint32_t b0, uint32_t b1)
{
    gdn_mma8(d, a.r[0], a.r[1], a.r[2], a.r[3], b0, b1);
}
template <class T> __device__ __forceinline__ void gdn_mma_b(float (&d)[4], const gdn_afrag &a, const T *p, int ld)
{
    gdn_mma(d, a, gdn_tf32(p[0]), gdn_tf32(p[4 * ld]));
}

// A triangular product's accumulators to dst (row stride ldd): row blocks
// mb[0] and mb[1], n8 tile u at column col(u), in mma.sync's layout.
template <int NU, class T, class F>
__device__ __forceinline__ void gdn_tri_st(T *dst, int ldd, const float (&d)[NU][2][4], const int (&mb)[2], F col)
{
    const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
#pragma unroll
    for (int u = 0; u < NU; u++)
#pragma unroll
        for (int x = 0; x < 2; x++)
#pragma unroll
            for (int h = 0; h < 2; h++)
                gdn_st2(dst + (16 * mb[x] + g + 8 * h) * ldd + col(u) + 2 * t, d[u][x][2 * h], d[u][x][2 * h + 1]);
}

// dst [C x NC] (row stride ldd; shared memory, or a record) = A · B, A a chunk's lower block-triangular
// C x C matrix (T or T diag(β), row stride LC), B [C x NC] (stride ldb), on tf32 mma.sync:
// warp w the row blocks p = w % 2 and 3 − p (as many k-steps for every warp)
// of the n8 column tiles w / 2 + 4u, u < NC / 32, one chain a tile stopping
// at its diagonal block (wmma's order: equal to the bit), every tile of a
// k-step issued together (a wmma job ran one chain at a time: W took ~16k
// cycles of a prep block, NOTES v57's probe).
template <int NC, int LC, class T, class TA, class TB>
__device__ __forceinline__ void gdn_tri_mm(T *dst, int ldd, const TA *A, const TB *B, int ldb)
{
    constexpr int NU = NC / 32;
    static_assert(NU >= 1 && NC % 32 == 0, "column tiles over the warps");
    const int w = threadIdx.x >> 5, g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3, p = w & 1;
    const int mb[2] = {p, 3 - p};
    float d[NU][2][4] = {};
#pragma unroll
    for (int k = 0; k < GDN_C; k += 8) {
        uint32_t b[NU][2];
#pragma unroll
        for (int u = 0; u < NU; u++) {
            const TB *bp = B + (k + t) * ldb + ((w >> 1) + 4 * u) * 8 + g;
            b[u][0] = gdn_tf32(bp[0]);
            b[u][1] = gdn_tf32(bp[4 * ldb]);
        }
#pragma unroll
        for (int x = 0; x < 2; x++) {
            if (k >= 16 * (mb[x] + 1)) continue; // past the diagonal block (warp-uniform)
            gdn_afrag a = gdn_a_rows(A + (16 * mb[x] + g) * LC + k + t, LC);
#pragma unroll
            for (int u = 0; u < NU; u++) gdn_mma(d[u][x], a, b[u][0], b[u][1]);
        }
    }
    gdn_tri_st(dst, ldd, d, mb, [&](int u) { return ((w >> 1) + 4 * u) * 8; });
}

// The same product on bf16 operands (the prep's): A (lda) and B (k-major,
// ldb) bf16, on mma.sync m16n8k16 with every fragment by ldmatrix (B by
// .trans): a k-step is one diagonal block, so row block mb takes mb + 1 of
// them; warp w the row blocks w % 2 and 3 − w % 2 of the NC / 4 columns from
// (w / 2) NC / 4.
template <int NC, class T>
__device__ __forceinline__ void gdn_tri_mm_bf(T *dst, int ldd, const gdn_rt *A, int lda, const gdn_rt *B, int ldb)
{
    constexpr int NU = NC / 32; // n8 tiles a warp, in ldmatrix pairs
    static_assert(NC % 64 == 0, "column tiles over the warps in pairs");
    const int w = threadIdx.x >> 5, p = w & 1;
    const int mb[2] = {p, 3 - p}, n0 = (w >> 1) * (NC / 4);
    float d[NU][2][4] = {};
#pragma unroll
    for (int kb = 0; kb < 4; kb++) {
        uint32_t b[NU / 2][4];
#pragma unroll
        for (int u = 0; u < NU / 2; u++) mma_ldsm4_t(b[u], gdn_sm_a(B + 16 * kb * ldb + n0 + 16 * u, ldb));
#pragma unroll
        for (int x = 0; x < 2; x++) {
            if (kb > mb[x]) continue; // past the diagonal block (warp-uniform)
            uint32_t a[4];
            mma_ldsm4(a, gdn_sm_a(A + 16 * mb[x] * lda + 16 * kb, lda));
#pragma unroll
            for (int u = 0; u < NU / 2; u++) {
                mma_bf16(d[2 * u][x], a, b[u][0], b[u][1]);
                mma_bf16(d[2 * u + 1][x], a, b[u][2], b[u][3]);
            }
        }
    }
    gdn_tri_st(dst, ldd, d, mb, [&](int u) { return n0 + 8 * u; });
}

// An element of m as its stored bits (bf16, or the float of every other
// dtype), and back: a thread keeps bits while its other loads go out, where a
// conversion right at the load made it wait for that load there (NOTES v87,
// v95)
__device__ __forceinline__ uint32_t gdn_bits(const cu_mat &m, int64_t r, int64_t c, __nv_bfloat16)
{
    return ((const uint16_t *)m.p)[r * m.ld + c];
}
template <class T> __device__ __forceinline__ uint32_t gdn_bits(const cu_mat &m, int64_t r, int64_t c, T t)
{
    return __float_as_uint(cu_mat_ld_as(m, r, c, t));
}
__device__ __forceinline__ float gdn_unbits(uint32_t v, bool bf16) { return __uint_as_float(bf16 ? v << 16 : v); }

// Whether gdn_qk_rows16 may load m's q and k: bf16, rows and their DK-wide
// slices 16-byte aligned
__device__ __forceinline__ bool gdn_rows16_ok(const cu_mat &m)
{
    return m.dt == SL_DTYPE_BF16 && m.ld % 8 == 0 && (uintptr_t)m.p % 16 == 0;
}

// Eight bf16 elements of m (gdn_rows16_ok, col a multiple of 8) at row r as
// one 16-byte load; zeros where !in (rows past a chunk's end)
__device__ __forceinline__ uint4 gdn_ld16(const cu_mat &m, int64_t r, int64_t col, bool in)
{
    return in ? *(const uint4 *)((const __nv_bfloat16 *)m.p + r * m.ld + col) : make_uint4(0, 0, 0, 0);
}

// gdn_chunk_inputs' q and k rows warp + 8 r, r < R, by 16-byte loads
// (gdn_rows16_ok): a row's DK / 8 lanes take 8 elements each, 32 / (DK / 8)
// rows a load instruction, every load out before the first use; its norms
// summed over the row's lanes. The 2-byte loads of the general form (a warp
// a row) took 11.5 K cycles of a prep block's ~53 K (v95's probe).
template <int DK, int LK, int R, class TQ>
__device__ __forceinline__ void gdn_qk_rows16(const cu_gdn_args &g, TQ *Qs, TQ *Ks, int tb, int n, int64_t qoff,
                                              int64_t koff, float qscale)
{
    constexpr int NW = 8, LPR = DK / 8, RPI = 32 / LPR, NI = R / RPI;
    static_assert(NI * RPI == R && LPR <= 32, "whole rows a load instruction");
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, c = (lane % LPR) * 8;
    auto row = [&](int k) { return warp + NW * (k * RPI + lane / LPR); };
    uint4 qr[NI], kr[NI];
#pragma unroll
    for (int k = 0; k < NI; k++) {
        int i = row(k);
        qr[k] = gdn_ld16(g.qkv, tb + i, qoff + c, i < n);
        kr[k] = gdn_ld16(g.qkv, tb + i, koff + c, i < n);
    }
#pragma unroll
    for (int k = 0; k < NI; k++) {
        float qv[8], kv[8], qss = 0.0f, kss = 0.0f;
        const __nv_bfloat162 *q2 = (const __nv_bfloat162 *)&qr[k], *k2 = (const __nv_bfloat162 *)&kr[k];
#pragma unroll
        for (int e = 0; e < 4; e++) {
            float2 a = __bfloat1622float2(q2[e]), b = __bfloat1622float2(k2[e]);
            qv[2 * e] = a.x, qv[2 * e + 1] = a.y, kv[2 * e] = b.x, kv[2 * e + 1] = b.y;
        }
#pragma unroll
        for (int e = 0; e < 8; e++) {
            qss += qv[e] * qv[e];
            kss += kv[e] * kv[e];
        }
#pragma unroll
        for (int o = LPR / 2; o; o >>= 1) { // the row's lanes (aligned groups of LPR)
            qss += __shfl_xor_sync(0xffffffffu, qss, o);
            kss += __shfl_xor_sync(0xffffffffu, kss, o);
        }
        float qi = 1.0f / sqrtf(qss + 1e-6f), ki = 1.0f / sqrtf(kss + 1e-6f);
        int i = row(k);
#pragma unroll
        for (int e = 0; e < 8; e++) {
            gdn_put(Qs + i * LK + c + e, qv[e] * qi * qscale);
            gdn_put(Ks + i * LK + c + e, kv[e] * ki);
        }
    }
}

// gdn_chunk_inputs' q and k rows warp + 8 r, r < R, a warp a row: any dtype or
// alignment, each element as its stored bits until every load is out
template <int DK, int LK, int R, class TQ>
__device__ __forceinline__ void gdn_qk_rows(const cu_gdn_args &g, TQ *Qs, TQ *Ks, int tb, int n, int64_t qoff,
                                            int64_t koff, float qscale)
{
    constexpr int NW = 8, J = DK / 32;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    // stored bits: every row's loads go out before the first conversion
    // (converted at the load, each row waited for its loads: v95)
    uint32_t qb[R][J], kb[R][J];
    cu_typed(g.qkv.dt, [&](auto t) {
#pragma unroll
        for (int r = 0; r < R; r++) {
            int i = warp + NW * r;
#pragma unroll
            for (int j = 0; j < J; j++) {
                qb[r][j] = i < n ? gdn_bits(g.qkv, tb + i, qoff + lane + 32 * j, t) : 0u;
                kb[r][j] = i < n ? gdn_bits(g.qkv, tb + i, koff + lane + 32 * j, t) : 0u;
            }
        }
    });
    const bool bf = g.qkv.dt == SL_DTYPE_BF16;
#pragma unroll
    for (int r = 0; r < R; r++) {
        int i = warp + NW * r;
        float qv[J], kv[J], qss = 0.0f, kss = 0.0f;
#pragma unroll
        for (int j = 0; j < J; j++) {
            qv[j] = gdn_unbits(qb[r][j], bf);
            kv[j] = gdn_unbits(kb[r][j], bf);
            qss += qv[j] * qv[j];
            kss += kv[j] * kv[j];
        }
        qss = cu_warp_sum(qss);
        kss = cu_warp_sum(kss);
        float qi = 1.0f / sqrtf(qss + 1e-6f), ki = 1.0f / sqrtf(kss + 1e-6f);
#pragma unroll
        for (int j = 0; j < J; j++) {
            gdn_put(Qs + i * LK + lane + 32 * j, qv[j] * qi * qscale);
            gdn_put(Ks + i * LK + lane + 32 * j, kv[j] * ki);
        }
    }
}

// A chunk's inputs (tokens tb .. tb+n-1, rows past n zero): q and k
// l2-normalised (q also scaled by Dk^-1/2) into Qs, Ks (row stride LK), one
// warp per row, stored as the operands every product reads them as (gdn_put:
// tf32-rounded floats, loaded with no conversion — it was ~5 instructions an
// operand, NOTES v87 — or the prep's bf16); the inclusive cumulative log gates
// into Gs, e^G into Es and β into Bs (warp 0). Every load of a thread is issued before the first use of one
// (a load's round trip is paid once, not once a row: typed, cu_typed). No
// barrier at the end (the caller adds its own loads first).
template <int DK, int LK, class TQ>
__device__ __forceinline__ void gdn_chunk_inputs(const cu_gdn_args &g, TQ *Qs, TQ *Ks, float *Gs,
                                                 float *Es, float *Bs, int tb, int n, int64_t qoff, int64_t koff, int h,
                                                 float Aexp, float bias)
{
    constexpr int C = GDN_C, NW = 256 / 32, R = C / NW;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float qscale = 1.0f / sqrtf((float)DK);
    float ga[2] = {0.0f, 0.0f}, gb[2] = {0.0f, 0.0f}; // warp 0: tokens lane, lane + 32
    auto gates = [&](const cu_mat &m, float *v) {
        cu_typed(m.dt, [&](auto t) {
#pragma unroll
            for (int k = 0; k < 2; k++)
                if (lane + 32 * k < n) v[k] = cu_mat_ld_as(m, tb + lane + 32 * k, h, t);
        });
    };
    if (warp == 0) {
        gates(g.a, ga);
        gates(g.b, gb);
    }
    if (gdn_rows16_ok(g.qkv)) // block-uniform
        gdn_qk_rows16<DK, LK, R>(g, Qs, Ks, tb, n, qoff, koff, qscale);
    else
        gdn_qk_rows<DK, LK, R>(g, Qs, Ks, tb, n, qoff, koff, qscale);
    if (warp == 0) { // gates: inclusive scan over the chunk
        float gl[2];
#pragma unroll
        for (int k = 0; k < 2; k++) {
            int i = lane + 32 * k;
            float gi = 0.0f, bi = 0.0f;
            if (i < n) {
                gi = Aexp * softplus(ga[k] + bias);
                bi = 1.0f / (1.0f + expf(-gb[k]));
            }
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                float up = __shfl_up_sync(0xffffffffu, gi, o);
                if (lane >= o) gi += up;
            }
            gl[k] = gi;
            Bs[i] = bi;
        }
        gl[1] += __shfl_sync(0xffffffffu, gl[0], 31);
        Gs[lane] = gl[0];
        Gs[lane + 32] = gl[1];
        Es[lane] = expf(gl[0]);
        Es[lane + 32] = expf(gl[1]);
    }
}

// The rows tb .. tb+n-1 (zeros past n) of NC columns of m from col0, C rows,
// a thread's share in registers: gdn_tile_ld issues every load (typed,
// cu_typed) and keeps the stored bits, gdn_tile_put converts and stores them
// into dst (row stride LD; floats, or tf32 bits for k_gdn_prep's mma.sync), so
// work between the two hides the loads' round trip (a conversion at the load
// made the thread wait for it there, NOTES v87). No barrier. Where m is bf16
// and 16-byte aligned (gdn_rows16_ok, col0 too) a thread loads groups of 8
// elements (16 loads of 2 bytes were a V tile's share) into v's first words,
// and a bf16 dst takes them as they are.
template <int NC> struct gdn_tile {
    static constexpr int PER = GDN_C * NC / 256, PER16 = PER / 8;
    static_assert(PER * 256 == GDN_C * NC && PER16 * 8 == PER, "whole tile steps");
    uint32_t v[PER]; // bf16 bits (bf16) or float bits (every other dtype); wide: bf16 pairs
    bool bf16, wide;
};
template <int NC>
__device__ __forceinline__ void gdn_tile_ld(gdn_tile<NC> &r, const cu_mat &m, int tb, int n, int64_t col0)
{
    r.bf16 = m.dt == SL_DTYPE_BF16;
    r.wide = gdn_rows16_ok(m) && col0 % 8 == 0;
    if (r.wide) {
#pragma unroll
        for (int k = 0; k < gdn_tile<NC>::PER16; k++) {
            int e = threadIdx.x + 256 * k, i = e / (NC / 8);
            uint4 x = gdn_ld16(m, tb + i, col0 + e % (NC / 8) * 8, i < n);
            r.v[4 * k] = x.x, r.v[4 * k + 1] = x.y, r.v[4 * k + 2] = x.z, r.v[4 * k + 3] = x.w;
        }
        return;
    }
    cu_typed(m.dt, [&](auto t) {
#pragma unroll
        for (int k = 0; k < gdn_tile<NC>::PER; k++) {
            int e = threadIdx.x + 256 * k, i = e / NC;
            r.v[k] = i < n ? gdn_bits(m, tb + i, col0 + e % NC, t) : 0u;
        }
    });
}
// Eight bf16 (four words of pairs) to p: as stored, or as gdn_put's floats
__device__ __forceinline__ void gdn_put8(gdn_rt *p, const uint32_t *w)
{
    *(uint4 *)p = make_uint4(w[0], w[1], w[2], w[3]);
}
__device__ __forceinline__ void gdn_put8(float *p, const uint32_t *w)
{
#pragma unroll
    for (int e = 0; e < 4; e++) {
        gdn_put(p + 2 * e, __uint_as_float(w[e] << 16));
        gdn_put(p + 2 * e + 1, __uint_as_float(w[e] & 0xffff0000u));
    }
}
template <int NC, int LD, class TD> __device__ __forceinline__ void gdn_tile_put(TD *dst, const gdn_tile<NC> &r)
{
    if (r.wide) {
#pragma unroll
        for (int k = 0; k < gdn_tile<NC>::PER16; k++) {
            int e = threadIdx.x + 256 * k;
            gdn_put8(dst + (e / (NC / 8)) * LD + e % (NC / 8) * 8, r.v + 4 * k);
        }
        return;
    }
#pragma unroll
    for (int k = 0; k < gdn_tile<NC>::PER; k++) {
        int e = threadIdx.x + 256 * k;
        gdn_put(dst + (e / NC) * LD + e % NC, gdn_unbits(r.v[k], r.bf16));
    }
}
template <int NC, int LD, class TD>
__device__ __forceinline__ void gdn_tile_in(TD *dst, const cu_mat &m, int tb, int n, int64_t col0)
{
    gdn_tile<NC> r;
    gdn_tile_ld<NC>(r, m, tb, n, col0);
    gdn_tile_put<NC, LD>(dst, r);
}

// The lower 16x16 tiles of K Kᵀ (jobs 0-9, into Ls) and Q Kᵀ (10-19, into
// QKs), row stride LC. q and k in fp32 (the single kernel's, stored rounded
// by gdn_chunk_inputs): 40 m16n8 halves on tf32 mma.sync, warp w the halves
// w + 8i, five chains at a time (wmma's order).
template <int DK, int LK, int LC>
__device__ __forceinline__ void gdn_kk_qk(const float *Qs, const float *Ks, float *Ls, float *QKs)
{
    const int warp = threadIdx.x >> 5, g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3, half = warp & 1;
    const uint32_t *ar[5], *br[5];
    float d[5][4] = {};
#pragma unroll
    for (int i = 0; i < 5; i++) {
        int job = (warp >> 1) + 4 * i, mi, nj;
        gdn_tri(job % 10, mi, nj);
        ar[i] = (const uint32_t *)(job < 10 ? Ks : Qs) + (mi * 16 + g) * LK + t;
        br[i] = (const uint32_t *)Ks + (nj * 16 + half * 8 + g) * LK + t;
    }
#pragma unroll
    for (int k = 0; k < DK; k += 8)
#pragma unroll
        for (int i = 0; i < 5; i++) gdn_mma_b(d[i], gdn_a_rows(ar[i] + k, LK), br[i] + k, 1); // Kᵀ: k along rows
#pragma unroll
    for (int i = 0; i < 5; i++) {
        int job = (warp >> 1) + 4 * i, mi, nj;
        gdn_tri(job % 10, mi, nj);
        float *o = (job < 10 ? Ls : QKs) + (mi * 16 + g) * LC + nj * 16 + half * 8 + 2 * t;
        gdn_st2(o, d[i][0], d[i][1]);
        gdn_st2(o + 8 * LC, d[i][2], d[i][3]);
    }
}

// The same from bf16 q and k (the prep's): the 20 tiles on bf16 mma.sync
// m16n8k16, every fragment by ldmatrix, warp w the tiles w, w + 8, w + 16.
template <int DK, int LK, int LC>
__device__ __forceinline__ void gdn_kk_qk(const gdn_rt *Qs, const gdn_rt *Ks, float *Ls, float *QKs)
{
    const int warp = threadIdx.x >> 5, g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
    float d[3][2][4] = {};
#pragma unroll
    for (int k = 0; k < DK; k += 16)
#pragma unroll
        for (int i = 0; i < 3; i++) {
            int job = warp + 8 * i, mi, nj;
            if (job >= 20) continue; // warp-uniform
            gdn_tri(job % 10, mi, nj);
            uint32_t a[4], b[4];
            mma_ldsm4(a, gdn_sm_a((job < 10 ? Ks : Qs) + mi * 16 * LK + k, LK));
            mma_ldsm4(b, gdn_sm_b(Ks + nj * 16 * LK + k, LK)); // Kᵀ: k's rows are B's columns
            mma_bf16(d[i][0], a, b[0], b[1]);
            mma_bf16(d[i][1], a, b[2], b[3]);
        }
#pragma unroll
    for (int i = 0; i < 3; i++) {
        int job = warp + 8 * i, mi, nj;
        if (job >= 20) continue;
        gdn_tri(job % 10, mi, nj);
#pragma unroll
        for (int x = 0; x < 2; x++) {
            float *o = (job < 10 ? Ls : QKs) + (mi * 16 + g) * LC + nj * 16 + x * 8 + 2 * t;
            gdn_st2(o, d[i][x][0], d[i][x][1]);
            gdn_st2(o + 8 * LC, d[i][x][2], d[i][x][3]);
        }
    }
}

// A lane's E (8 or 4) adjacent elements of a 16 x 16 fp32 tile product, in
// registers: acc[j] += Σ_{i<k} a[i] · b[i·ldb + j], a the lane's row, b its
// first column (16-byte aligned, k a multiple of 4).
template <int E>
__device__ __forceinline__ void gdn_row_fma(float (&acc)[E], const float *a, const float *b, int ldb, int k)
{
    for (int i = 0; i < k; i += 4) {
        float4 a4 = *(const float4 *)(a + i);
        float ar[4] = {a4.x, a4.y, a4.z, a4.w};
#pragma unroll
        for (int ii = 0; ii < 4; ii++)
#pragma unroll
            for (int j = 0; j < E; j += 4) {
                float4 b4 = *(const float4 *)(b + (i + ii) * ldb + j);
                acc[j] += ar[ii] * b4.x;
                acc[j + 1] += ar[ii] * b4.y;
                acc[j + 2] += ar[ii] * b4.z;
                acc[j + 3] += ar[ii] * b4.w;
            }
    }
}

template <int E>
__device__ __forceinline__ void gdn_row_st(float *p, const float (&acc)[E], float sign)
{
#pragma unroll
    for (int j = 0; j < E; j += 4)
        *(float4 *)(p + j) = make_float4(sign * acc[j], sign * acc[j + 1], sign * acc[j + 2], sign * acc[j + 3]);
}

// T's 16 x 16 diagonal blocks, (I + L_bb)⁻¹, by forward substitution down
// the columns with every warp: warp w takes block w / 2, columns 8 (w % 2) ..,
// two at a time (lanes 0-15 and 16-31 hold one's rows), each x_j broadcast by
// a shuffle once final. L_bb is zero on and above its diagonal, so the terms
// j >= r subtract 0: the sums are the row-wise substitution's, in its order.
template <int LC>
__device__ __forceinline__ void gdn_t_diag(const float *Ls, float *Ts)
{
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, bb = warp >> 1, r = lane & 15;
    const float *Lr = Ls + (bb * 16 + r) * LC + bb * 16;
    float l[16], x[4];
#pragma unroll
    for (int j = 0; j < 16; j += 4) {
        float4 v = *(const float4 *)(Lr + j);
        l[j] = v.x, l[j + 1] = v.y, l[j + 2] = v.z, l[j + 3] = v.w;
    }
    int c0 = 8 * (warp & 1) + (lane >> 4);
#pragma unroll
    for (int p = 0; p < 4; p++) x[p] = r == c0 + 2 * p ? 1.0f : 0.0f;
#pragma unroll
    for (int j = 0; j < 15; j++)
#pragma unroll
        for (int p = 0; p < 4; p++) x[p] -= l[j] * __shfl_sync(0xffffffffu, x[p], (lane & 16) | j);
#pragma unroll
    for (int p = 0; p < 4; p++) Ts[(bb * 16 + r) * LC + bb * 16 + c0 + 2 * p] = x[p];
}

// T = (I+L)⁻¹ below its 16 x 16 diagonal blocks (Ts holds those; Us: 1024
// floats of scratch), in three barrier-separated phases instead of two a
// block row: first T_10 and T_32 (T_{a,a-1} = −T_aa (L_{a,a-1} T_{a-1,a-1}),
// a warp each, its X in its own scratch); then the lower 32 x 32 quadrant by
// doubling, X_sc = Σ_{c<=m<2} L_sm T_mc (s = 2, 3; c = 0, 1), then T_2c =
// −T_22 X_2c and T_3c = −(T_32 X_2c + T_33 X_3c), two warps a block (eight
// rows each). Every
// product in fp32 in registers, a lane's row against 8 or 4 columns (its
// 16-byte loads of b shared by the lanes of its column group).
template <int LC>
__device__ __forceinline__ void gdn_t_offdiag(const float *Ls, float *Ts, float *Us)
{
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (warp < 2) {
        int a = 1 + 2 * warp, r = lane >> 1, cl = (lane & 1) * 8;
        float *X = Us + warp * 256;
        float x[8] = {};
        gdn_row_fma<8>(x, Ls + (16 * a + r) * LC + 16 * (a - 1), Ts + 16 * (a - 1) * LC + 16 * (a - 1) + cl, LC, 16);
        gdn_row_st<8>(X + r * 16 + cl, x, 1.0f);
        __syncwarp();
        float y[8] = {};
        gdn_row_fma<8>(y, Ts + (16 * a + r) * LC + 16 * a, X + cl, 16, 16);
        gdn_row_st<8>(Ts + (16 * a + r) * LC + 16 * (a - 1) + cl, y, -1.0f);
    }
    __syncthreads();
    // warp w: block (s, c) = (2 + (w >> 2), (w >> 1) & 1), rows 8 (w & 1) ..;
    // X_sc at Us + 512 c + 256 (s − 2), so X_2c over X_3c is one 32-row operand
    int s = 2 + (warp >> 2), c = (warp >> 1) & 1, r = 8 * (warp & 1) + (lane >> 2), cl = (lane & 3) * 4;
    float *X = Us + 512 * c;
    float x[4] = {};
    gdn_row_fma<4>(x, Ls + (16 * s + r) * LC + 16 * c, Ts + 16 * c * LC + 16 * c + cl, LC, 16 * (2 - c));
    gdn_row_st<4>(X + 256 * (s - 2) + r * 16 + cl, x, 1.0f);
    __syncthreads();
    float y[4] = {};
    gdn_row_fma<4>(y, Ts + (16 * s + r) * LC + 32, X + cl, 16, 16 * (s - 1));
    gdn_row_st<4>(Ts + (16 * s + r) * LC + 16 * c + cl, y, -1.0f);
}

// A chunk's local algebra once its inputs are in (after a barrier): the
// lower-triangular K Kᵀ and Q Kᵀ tiles, masked and decayed (QKs), T = (I+L)⁻¹
// (the four 16x16 diagonal blocks by gdn_t_diag, then the blocks below them
// by gdn_t_offdiag, with Us as scratch), then T diag(β) into TLs, T diag(β
// e^G) into TGs (row stride lo, rounded as the operands they become: tf32
// floats, or bf16) and q ⊙ e^G into Qs (Es: e^G). Ends with a barrier.
// With rec (k_gdn_prep: a chunk's record in global memory) the masked QKᵀ
// and q ⊙ e^G go there instead, written before the scratch is, so QKs may be
// Ts (its raw tiles are read once, by the thread that overwrites them) and Us
// may be Qs: the kernel keeps two C x C buffers fewer.
template <int DK, int LK, int LC, class TQ, class TO>
__device__ __forceinline__ void gdn_chunk_solve(TQ *Qs, const TQ *Ks, float *Ls, float *Ts, float *QKs, float *Us,
                                                const float *Gs, const float *Es, const float *Bs, gdn_rt *rec,
                                                TO *TLs, TO *TGs, int lo)
{
    constexpr int C = GDN_C, NT = 256;
    int tid = threadIdx.x;
    gdn_kk_qk<DK, LK, LC>(Qs, Ks, Ls, QKs);
    __syncthreads();
    for (int e = tid; e < C * C / 4; e += NT) { // four columns: one store (the record's bf16: 8 bytes)
        int i = 4 * e / C, j = 4 * e % C;
        float4 lr = *(const float4 *)(Ls + i * LC + j), qr = *(const float4 *)(QKs + i * LC + j);
        float4 gj = *(const float4 *)(Gs + j);
        float l[4] = {lr.x, lr.y, lr.z, lr.w}, qk[4] = {qr.x, qr.y, qr.z, qr.w}, g[4] = {gj.x, gj.y, gj.z, gj.w};
        float gi = Gs[i], bi = Bs[i];
#pragma unroll
        for (int x = 0; x < 4; x++) {
            float dec = j + x <= i ? expf(gi - g[x]) : 0.0f;
            l[x] = j + x < i ? bi * dec * l[x] : 0.0f;
            qk[x] = j + x <= i ? dec * qk[x] : 0.0f;
        }
        gdn_st4(Ls + i * LC + j, l[0], l[1], l[2], l[3]);
        if (rec) gdn_st4(rec + gdn_rec<DK>::QK + 4 * e, qk[0], qk[1], qk[2], qk[3]);
        else gdn_st4(QKs + i * LC + j, qk[0], qk[1], qk[2], qk[3]);
        if ((j >> 4) > (i >> 4)) gdn_st4(Ts + i * LC + j, 0.0f, 0.0f, 0.0f, 0.0f);
    }
    if (rec)
        for (int e = tid; e < C * DK / 8; e += NT) { // eight elements: two 8-byte stores
            int i = 8 * e / DK, d = 8 * e % DK;
            float ei = Es[i];
#pragma unroll
            for (int x = 0; x < 8; x += 4) {
                float4 q4 = gdn_ld4(Qs + i * LK + d + x);
                gdn_st4(rec + gdn_rec<DK>::QG + 8 * e + x, q4.x * ei, q4.y * ei, q4.z * ei, q4.w * ei);
            }
        }
    __syncthreads();
    gdn_t_diag<LC>(Ls, Ts);
    __syncthreads();
    gdn_t_offdiag<LC>(Ls, Ts, Us);
    __syncthreads();
    for (int e = tid; e < C * C / 4; e += NT) {
        int i = 4 * e / C, j = 4 * e % C;
        float4 t = *(const float4 *)(Ts + i * LC + j), b = *(const float4 *)(Bs + j), ex = *(const float4 *)(Es + j);
        float4 tl = make_float4(t.x * b.x, t.y * b.y, t.z * b.z, t.w * b.w);
        gdn_put4(TLs + i * lo + j, tl); // only ever mma operands from here
        gdn_put4(TGs + i * lo + j, make_float4(tl.x * ex.x, tl.y * ex.y, tl.z * ex.z, tl.w * ex.w));
    }
    if constexpr (std::is_same<TQ, float>::value)
        if (!rec)
            for (int e = tid; e < C * DK; e += NT) {
                int i = e / DK, d = e % DK;
                Qs[i * LK + d] *= Es[i];
            }
    __syncthreads();
}

// The single kernel's state-dependent part of a chunk, BV value columns, in
// three phases that each start after a barrier (the split form's scan has
// its own, on registers): v_new = U − W S0 into Us.
template <int DK, int BV, int LK, int LV>
__device__ __forceinline__ void gdn_vnew(const float *Ws, const float *Ss, float *Us)
{
    constexpr int NW = 256 / 32;
    for (int job = threadIdx.x >> 5; job < 4 * (BV / 16); job += NW) {
        int mi = job / (BV / 16), nv = job % (BV / 16);
        gdn_acc u, ws;
        wmma::fill_fragment(ws, 0.0f);
        gdn_mma<wmma::row_major, wmma::row_major, DK / 8>(ws, Ws + mi * 16 * LK, LK, 8, Ss + nv * 16, LV, 8 * LV);
        float *up = Us + mi * 16 * LV + nv * 16;
        wmma::load_matrix_sync(u, up, LV, wmma::mem_row_major);
#pragma unroll
        for (int i = 0; i < u.num_elements; i++) u.x[i] -= ws.x[i];
        wmma::store_matrix_sync(up, u, LV, wmma::mem_row_major);
    }
}

// O = (Q ⊙ e^G) S0 + QKm v_new into Os.
template <int DK, int BV, int LK, int LC, int LV>
__device__ __forceinline__ void gdn_out(const float *Qs, const float *QKs, const float *Ss, const float *Us,
                                        float *Os)
{
    constexpr int NW = 256 / 32;
    for (int job = threadIdx.x >> 5; job < 4 * (BV / 16); job += NW) {
        int mi = job / (BV / 16), nv = job % (BV / 16);
        gdn_acc o;
        wmma::fill_fragment(o, 0.0f);
        gdn_mma<wmma::row_major, wmma::row_major, DK / 8>(o, Qs + mi * 16 * LK, LK, 8, Ss + nv * 16, LV, 8 * LV);
        gdn_mma_lower(o, QKs + mi * 16 * LC, LC, Us + nv * 16, LV, mi);
        wmma::store_matrix_sync(Os + mi * 16 * LV + nv * 16, o, LV, wmma::mem_row_major);
    }
}

// S = e^(G_last) S0 + Kdᵀ v_new in Ss (Ks holds k ⊙ e^(G_last−G); its rows
// past n and v_new's are zero, so all C of them are summed: exact, and a
// fixed count unrolls).
template <int DK, int BV, int LK, int LV>
__device__ __forceinline__ void gdn_advance(const float *Ks, const float *Us, float *Ss, float glast)
{
    constexpr int NW = 256 / 32;
    float el = expf(glast);
    for (int job = threadIdx.x >> 5; job < (DK / 16) * (BV / 16); job += NW) {
        int md = job / (BV / 16), nv = job % (BV / 16);
        float *sp = Ss + md * 16 * LV + nv * 16;
        gdn_acc acc;
        wmma::load_matrix_sync(acc, sp, LV, wmma::mem_row_major);
#pragma unroll
        for (int i = 0; i < acc.num_elements; i++) acc.x[i] *= el;
        gdn_mma<wmma::col_major, wmma::row_major, GDN_C / 8>(acc, Ks + md * 16, LK, 8 * LK, Us + nv * 16, LV, 8 * LV);
        wmma::store_matrix_sync(sp, acc, LV, wmma::mem_row_major);
    }
}

// Rows < n of a chunk's O (shared, row stride LV) to out (row orow..,
// columns ooff..).
template <int BV, int LV>
__device__ __forceinline__ void gdn_rows_out(const float *Os, int n, cu_mat out, int64_t orow, int64_t ooff)
{
    for (int e = threadIdx.x; e < n * BV; e += blockDim.x) {
        int i = e / BV, c = e % BV;
        cu_mat_st(out, orow + i, ooff + c, Os[i * LV + c]);
    }
}

// The three phases in turn (after a barrier), then the snapshot to snap (row
// stride Dv) when given. Ends with a barrier.
template <int DK, int BV, int LK, int LC, int LV>
__device__ __forceinline__ void gdn_chunk_state(const float *Qs, const float *Ks, const float *Ws, const float *QKs,
                                                float *Us, float *Os, float *Ss, float glast, int n, cu_mat out,
                                                int64_t orow, int64_t ooff, float *snap, int Dv)
{
    gdn_vnew<DK, BV, LK, LV>(Ws, Ss, Us);
    __syncthreads();
    gdn_out<DK, BV, LK, LC, LV>(Qs, QKs, Ss, Us, Os);
    __syncthreads();
    gdn_advance<DK, BV, LK, LV>(Ks, Us, Ss, glast);
    gdn_rows_out<BV, LV>(Os, n, out, orow, ooff);
    __syncthreads();
    if (snap) gdn_tile_st<DK, BV, LV>(Ss, snap, Dv);
}

// Block (sequence, value head, value-column tile of BV); 256 threads;
// sequences with fewer than min_len new tokens are left to k_gdn.
template <int DK, int BV>
__global__ void __launch_bounds__(256) k_gdn_chunk(cu_gdn_args g, int min_len)
{
    using SM = gdn_smem<DK, BV>;
    constexpr int C = GDN_C, LK = SM::LK, LC = SM::LC, LV = SM::LV, NT = 256;
    extern __shared__ __align__(128) float sm[];
    float *Qs = sm + SM::Q, *Ks = sm + SM::K, *Ws = sm + SM::W, *Ls = sm + SM::L;
    float *Ts = sm + SM::T, *QKs = sm + SM::QK, *Vs = sm + SM::V, *Us = sm + SM::U;
    float *Ss = sm + SM::S, *Gs = sm + SM::G, *Es = sm + SM::E, *Bs = sm + SM::B;
    const int Dv = g.Dv, nvt = Dv / BV;
    int s = blockIdx.x / (g.Hv * nvt), rem = blockIdx.x % (g.Hv * nvt);
    int h = rem / nvt, vt = rem % nvt, kh = h / (g.Hv / g.Hk);
    int tid = threadIdx.x;
    cu_pdl_wait();
    cu_pdl_trigger();
    int q0 = g.q_start[s], qn = g.q_start[s + 1] - q0;
    if (qn < min_len) return; // block-uniform
    int64_t sz = (int64_t)DK * Dv, slot_sz = (int64_t)g.Hv * sz;
    float *mine = g.ssm + (int64_t)g.state_slot[s] * slot_sz + h * sz + vt * BV; // row stride Dv
    gdn_state_in<DK, BV, LV>(Ss, mine, Dv, g.state_fresh[s]);
    float Aexp, bias;
    gdn_gate_consts(g, h, Aexp, bias);
    int tslot = g.track_slot[s], tlen = tslot >= 0 ? g.track_len[s] : -1;
    int64_t koff = (int64_t)g.Hk * DK + (int64_t)kh * DK, qoff = (int64_t)kh * DK;
    int64_t voff = 2 * (int64_t)g.Hk * DK + (int64_t)h * Dv + vt * BV;
    int64_t ooff = (int64_t)h * Dv + vt * BV;
    for (int c0 = 0; c0 < qn;) {
        int n = min(C, qn - c0);
        if (c0 < tlen && c0 + n > tlen) n = tlen - c0; // end the chunk at the snapshot
        int tb = q0 + c0;
        __syncthreads(); // the previous chunk's readers of Q, K, V (o), G, B are done
        gdn_chunk_inputs<DK, LK>(g, Qs, Ks, Gs, Es, Bs, tb, n, qoff, koff, h, Aexp, bias);
        gdn_tile_in<BV, LV>(Vs, g.qkv, tb, n, voff);
        __syncthreads();
        gdn_chunk_solve<DK, LK, LC>(Qs, Ks, Ls, Ts, QKs, Us, Gs, Es, Bs, NULL, Ls, Ts, LC);
        // W = T diag(β e^G) K [C x DK];  U = T diag(β) V [C x BV]
        gdn_tri_mm<DK, LC>(Ws, LK, Ts, (const uint32_t *)Ks, LK); // k stored rounded
        gdn_tri_mm<BV, LC>(Us, LV, Ls, Vs, LV);
        __syncthreads();
        // k ⊙ e^(G_last − G) (no reader until the state update), then the state part
        float glast = Gs[C - 1];
        for (int e = tid; e < C * DK; e += NT) {
            int i = e / DK, d = e % DK;
            Ks[i * LK + d] *= expf(glast - Gs[i]);
        }
        float *snap = c0 + n == tlen ? g.ssm + (int64_t)tslot * slot_sz + h * sz + vt * BV : NULL;
        gdn_chunk_state<DK, BV, LK, LC, LV>(Qs, Ks, Ws, QKs, Us, Vs, Ss, glast, n, g.out, tb, ooff, snap, Dv);
        c0 += n;
    }
    gdn_tile_st<DK, BV, LV>(Ss, mine, Dv);
}

// ---- chunked form, split (kernels/dev/NOTES.md v15) ------------------------------
//
// The single kernel above walks a sequence's chunks one after another and
// redoes all of a chunk's local work (normalisation, gates, L, the solve, W,
// U, QKᵀ) on that sequential path. Only two products carry the state from
// chunk to chunk (v_new = U − W S0, S = e^(G_last) S0 + (K⊙e^(G_last−G))ᵀ
// v_new); the output O = (Q⊙e^G) S0 + QKm v_new needs S0 and v_new but
// feeds nothing after it. So the split form runs two kernels:
//   k_gdn_prep: one block per (chunk, value head), every chunk of every long
//     sequence in parallel: the chunk-local part, written to a record in
//     scratch memory (bf16: Qg = q⊙e^G, Kd = k⊙e^(G_last−G), W, QKm, U; G_last);
//   k_gdn_scan: one block per (sequence, value head, value-column tile)
//     walking the chunks: v_new, the state update and O beside it (off the
//     chain: nothing waits for O), snapshots and the final state as the
//     single kernel.
// O had its own kernel from S0 and v_new passed through memory (v59: then the
// scan's wmma chains made O a third of its time); with the scan's products in
// registers (v82) that traffic (S0 and v_new written and read again, ~400 MB
// at 8192 tokens of Coder-Next in bf16) costs more than O does (NOTES v84).
// Chunks are numbered over the long sequences in order (gdn_chunks), a chunk
// ending at the snapshot as above; prep finds a chunk's sequence, the scan a
// sequence's first chunk, by summing the chunk counts of the sequences before
// it.

// Chunks of a sequence with qn new tokens and snapshot after tlen (0 when it
// is left to the recurrent kernel): 64-token chunks, one cut at tlen.
__host__ __device__ __forceinline__ int gdn_nchunks(int qn, int tlen, int min_len)
{
    if (qn < min_len) return 0;
    if (tlen > 0 && tlen < qn) return (tlen + GDN_C - 1) / GDN_C + (qn - tlen + GDN_C - 1) / GDN_C;
    return (qn + GDN_C - 1) / GDN_C;
}

// Start (sequence-relative) and length of chunk ci of such a sequence.
__device__ __forceinline__ void gdn_chunk_at(int qn, int tlen, int ci, int &c0, int &n)
{
    int na = tlen > 0 && tlen < qn ? (tlen + GDN_C - 1) / GDN_C : INT_MAX;
    if (ci < na) {
        c0 = ci * GDN_C;
        n = min(GDN_C, (na == INT_MAX ? qn : tlen) - c0);
    } else {
        c0 = tlen + (ci - na) * GDN_C;
        n = min(GDN_C, qn - c0);
    }
}

// The snapshot length of sequence s as the chunking sees it (-1: none).
__device__ __forceinline__ int gdn_tlen(const cu_gdn_args &g, int s)
{
    return g.track_slot[s] >= 0 ? g.track_len[s] : -1;
}

// The walks below over the batch's sequences go 32 at a time, a lane a
// sequence: one at a time, each step's loads waited for the step before (a
// round trip a sequence, before any work of a block, in every prep, scan and
// out block of a batch whose long prompt comes after its decodes; NOTES v64).
// The warp's lanes must all take part; every warp gets the same result.

// Chunks of sequence s of the batch's n (0 past them).
__device__ __forceinline__ int gdn_seq_chunks(const cu_gdn_args &g, int s, int n, int min_len)
{
    return s < n ? gdn_nchunks(g.q_start[s + 1] - g.q_start[s], gdn_tlen(g, s), min_len) : 0;
}

// The warp's inclusive prefix sum of v.
__device__ __forceinline__ int gdn_warp_scan(int v)
{
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        int u = __shfl_up_sync(0xffffffffu, v, o);
        if (lane >= o) v += u;
    }
    return v;
}

// The sequence s of record chunk q and its start c0 and length n in it;
// false past the last chunk.
__device__ __forceinline__ bool gdn_chunk_seq(const cu_gdn_args &g, int64_t q, int min_len, int n_seqs, int &s,
                                              int &c0, int &n)
{
    const int lane = threadIdx.x & 31;
    int64_t left = q; // chunks before q not yet passed
    for (int b = 0; b < n_seqs; b += 32) {
        int nc = gdn_seq_chunks(g, b + lane, n_seqs, min_len), inc = gdn_warp_scan(nc);
        int total = __shfl_sync(0xffffffffu, inc, 31);
        if (left < total) {
            int before = cu_warp_sum((int)(inc <= left)); // sequences of this step wholly before q
            int excl = __shfl_sync(0xffffffffu, inc - nc, before);
            s = b + before;
            gdn_chunk_at(g.q_start[s + 1] - g.q_start[s], gdn_tlen(g, s), (int)(left - excl), c0, n);
            return true;
        }
        left -= total;
    }
    return false;
}

// Shared memory of k_gdn_prep, in bytes: q and k (bf16; the solve's scratch
// and then T diag(β e^G) in Q's place), L and T (fp32 for the solve: its raw
// Q Kᵀ in T's place; then T diag(β) in L's place and a V tile in T's, bf16),
// G, e^G, β. The record's Qg, QKm, W and U go to global memory as they are
// made; bf16 q and k (v89: fp32 they took 67 of 103 KB) leave room for three
// blocks an SM (GDN_PREP_MINB below). bf16 rows 8 elements past a multiple of 64 (16-byte aligned
// ldmatrix rows in distinct banks), fp32 rows 4 floats past a multiple of 32.
template <int DK> struct gdn_prep_smem {
    static constexpr int LK = DK + 8, LC = GDN_C + 4, LT = GDN_C + 8, LV = 64 + 8;
    static constexpr int QB = GDN_C * (LK > LT ? LK : LT) * 2;
    static constexpr int Q = 0, K = Q + QB, L = K + GDN_C * LK * 2, T = L + GDN_C * LC * 4;
    static constexpr int G = T + GDN_C * LC * 4, E = G + GDN_C * 4, B = E + GDN_C * 4;
    static constexpr size_t BYTES = (size_t)B + GDN_C * 4;
    static_assert(K % 16 == 0 && L % 16 == 0 && T % 16 == 0, "16-byte aligned rows");
    static_assert(3 * 256 * 4 <= QB && GDN_C * LT * 2 <= GDN_C * LC * 4 && GDN_C * LV * 2 <= GDN_C * LC * 4,
                  "the scratch in Q's place, T diag(β) in L's, a V tile in T's");
    static_assert(BYTES <= 75 * 1024, "three blocks an SM");
};
// k_gdn_prep's blocks an SM as registers allow (__launch_bounds__): its shared
// memory allows three, but at 80 registers a thread it spills 224 bytes
// (v89) and measured slower (H100,
// 2026-12-07: 1 × 8192 tokens 0.85–0.90 against 0.82–0.85 ms, 1 × 1000 0.145
// against 0.117): two.
#ifndef GDN_PREP_MINB
#define GDN_PREP_MINB 2
#endif

// k_gdn_scan, in bytes: two stages (a chunk's record and the next one's
// landing) of W, Kd, the U columns, Qg and QKm (bf16, as the record), then
// v_new and two of the start state's columns (bf16, column-major: O reads a
// chunk's while the next one's is stored). Every row 8 elements past a
// multiple of 64 (16-byte aligned, and an ldmatrix's eight rows fall in
// distinct banks).
template <int DK, int BV> struct gdn_scan_smem {
    static constexpr int LW = DK + 8, LU = BV + 8, LC = GDN_C + 8; // LW: W, Kd and Qg
    static constexpr int LT = GDN_C + 8, LS = DK + 8;               // v_new and S0, column-major
    static constexpr int W = 0, K = W + GDN_C * LW * 2, Q = K + GDN_C * LW * 2, QK = Q + GDN_C * LW * 2;
    static constexpr int U = QK + GDN_C * LC * 2, STAGE = U + GDN_C * LU * 2;
    static constexpr int V = 2 * STAGE, S = V + BV * LT * 2, SB = BV * LS * 2;
    static constexpr size_t BYTES = (size_t)S + 2 * SB;
    static_assert(K % 16 == 0 && Q % 16 == 0 && QK % 16 == 0 && U % 16 == 0 && STAGE % 16 == 0 && V % 16 == 0 &&
                      S % 16 == 0 && SB % 16 == 0,
                  "16-byte copies and ldmatrix rows");
    static_assert(BYTES <= 227 * 1024, "shared memory");
};

// The first record index of sequence s (chunks of the sequences before it).
__device__ __forceinline__ int64_t gdn_chunk_base(const cu_gdn_args &g, int s, int min_len)
{
    int64_t base = 0;
    for (int b = 0; b < s; b += 32) base += cu_warp_sum(gdn_seq_chunks(g, b + (threadIdx.x & 31), s, min_len));
    return base;
}

// Issues the copy of ROWS x COLS elements (row stride ld_src) to shared
// memory rows of stride ld_dst as cp.async, 16 bytes a thread step (COLS,
// strides and addresses multiples of 16 bytes), by 256 threads; the caller
// commits and waits. Unrolled over a constant shape: as loops, their
// control (compare, branch, index arithmetic) ran at each of a chunk's 15
// steps on the scan's chain (v90).
template <int ROWS, int COLS, class T>
__device__ __forceinline__ void gdn_copy_async(T *dst, int ld_dst, const T *src, int64_t ld_src)
{
    constexpr int CE = COLS * (int)sizeof(T) / 16, STEPS = ROWS * CE / 256;
    static_assert(COLS * sizeof(T) % 16 == 0 && STEPS * 256 == ROWS * CE, "whole 16-byte steps");
#pragma unroll
    for (int k = 0; k < STEPS; k++) {
        int e = threadIdx.x + 256 * k, r = e / CE, c = e % CE * (16 / (int)sizeof(T));
        __pipeline_memcpy_async(dst + r * ld_dst + c, src + r * ld_src + c, 16);
    }
}

// Block (chunk x, value head y): 256 threads. rec: the records, base of
// (chunk q, head h) at ((q · Hv) + h) · gdn_rec<DK>::size(Dv).
template <int DK>
__global__ void __launch_bounds__(256, GDN_PREP_MINB) k_gdn_prep(cu_gdn_args g, int min_len, int n_seqs, gdn_rt *rec)
{
    using SM = gdn_prep_smem<DK>;
    using RC = gdn_rec<DK>;
    constexpr int C = GDN_C, LK = SM::LK, LC = SM::LC, LT = SM::LT, LV = SM::LV, NT = 256;
    extern __shared__ __align__(128) char smc[];
    gdn_rt *Qs = (gdn_rt *)(smc + SM::Q), *Ks = (gdn_rt *)(smc + SM::K);
    float *Ls = (float *)(smc + SM::L), *Ts = (float *)(smc + SM::T);
    float *Gs = (float *)(smc + SM::G), *Es = (float *)(smc + SM::E), *Bs = (float *)(smc + SM::B);
    const int Dv = g.Dv, h = blockIdx.y, kh = h / (g.Hv / g.Hk);
    int tid = threadIdx.x;
    cu_pdl_wait();
    cu_pdl_trigger();
    int64_t q = blockIdx.x;
    int s, c0, n;
    if (!gdn_chunk_seq(g, q, min_len, n_seqs, s, c0, n)) return; // block-uniform
    gdn_rt *out = rec + (q * g.Hv + h) * RC::size(Dv);
    float Aexp, bias;
    gdn_gate_consts(g, h, Aexp, bias);
    int64_t koff = (int64_t)g.Hk * DK + (int64_t)kh * DK, qoff = (int64_t)kh * DK;
    int64_t voff = 2 * (int64_t)g.Hk * DK + (int64_t)h * Dv;
    int tb = g.q_start[s] + c0;
    gdn_chunk_inputs<DK, LK>(g, Qs, Ks, Gs, Es, Bs, tb, n, qoff, koff, h, Aexp, bias);
    __syncthreads();
    // U's first V tile in flight through the solve: loaded after its products
    // it cost a round trip a tile (U took a quarter of a block, NOTES v87)
    gdn_tile<64> vt;
    gdn_tile_ld<64>(vt, g.qkv, tb, n, voff);
    // Qg and QKm to the record; the solve's scratch, then T diag(β e^G), in Q's
    // place; T diag(β) in L's
    gdn_rt *TGs = Qs, *TLs = (gdn_rt *)Ls;
    gdn_chunk_solve<DK, LK, LC>(Qs, Ks, Ls, Ts, Ts, (float *)Qs, Gs, Es, Bs, out, TLs, TGs, LT);
    gdn_rt *Vs = (gdn_rt *)Ts; // T's place, free since the solve's last barrier
    gdn_tile_put<64, LV>(Vs, vt);
    // the rest of the record: W = T diag(β e^G) K, k ⊙ e^(G_last − G), G_last
    gdn_tri_mm_bf<DK>(out + RC::W, DK, TGs, LT, Ks, LK);
    float glast = Gs[C - 1];
    for (int e = tid; e < C * DK / 8; e += NT) { // eight elements: two 8-byte stores
        int i = 8 * e / DK, d = 8 * e % DK;
        float sc = expf(glast - Gs[i]);
#pragma unroll
        for (int x = 0; x < 8; x += 4) {
            float4 k4 = gdn_ld4(Ks + i * LK + d + x);
            gdn_st4(out + RC::KD + 8 * e + x, k4.x * sc, k4.y * sc, k4.z * sc, k4.w * sc);
        }
    }
    if (tid == 0) *(float *)(out + RC::glast(Dv)) = glast;
    // U = T diag(β) V [C x Dv], 64 value columns at a time, each next tile's
    // loads issued before this one's products
    for (int v0 = 0; v0 < Dv; v0 += 64) {
        __syncthreads(); // tile v0 in Vs
        bool more = v0 + 64 < Dv;
        if (more) gdn_tile_ld<64>(vt, g.qkv, tb, n, voff + v0 + 64);
        gdn_tri_mm_bf<64>(out + RC::U + v0, Dv, TLs, LT, Vs, LV);
        if (more) {
            __syncthreads(); // every product of tile v0 read Vs
            gdn_tile_put<64, LV>(Vs, vt);
        }
    }
}

// A k_gdn_scan warp's share of the DK x BV state, kept in registers over the
// whole walk: the 16 rows from 16 (w % MW) and the BV / NW columns from
// (w / MW) BV / NW (MW = DK / 16 row tiles, NW = 8 / MW column groups), as NT
// m16n8 accumulator tiles in mma.sync's layout (lane (g, t) = (l / 4, l % 4)
// holds rows g and g + 8, columns 2t and 2t + 1 of each).
template <int DK, int BV> struct gdn_scan_part {
    static constexpr int MW = DK / 16, NW = 8 / MW, NT = BV / NW / 8;
    static_assert(MW * NW == 8 && NT >= 1, "eight warps tile the state");
    __device__ static int row() { return (threadIdx.x >> 5) % MW * 16 + (threadIdx.x & 31) / 4; }
    __device__ static int col() { return (threadIdx.x >> 5) / MW * NT * 8 + 2 * (threadIdx.x & 3); }
};

// A warp's state tiles from rows of stride ld (zeros for a fresh state) ...
template <int DK, int BV>
__device__ __forceinline__ void gdn_part_ld(float (&S)[gdn_scan_part<DK, BV>::NT][4], const float *p, int64_t ld,
                                            bool fresh)
{
    using P = gdn_scan_part<DK, BV>;
    const float *r = p + P::row() * ld + P::col();
#pragma unroll
    for (int j = 0; j < P::NT; j++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            float2 e = fresh ? make_float2(0.0f, 0.0f) : *(const float2 *)(r + h * 8 * ld + j * 8);
            S[j][2 * h] = e.x, S[j][2 * h + 1] = e.y;
        }
}

// ... and to them (fp32, row stride ld).
template <int DK, int BV>
__device__ __forceinline__ void gdn_part_st(const float (&S)[gdn_scan_part<DK, BV>::NT][4], float *p, int64_t ld)
{
    using P = gdn_scan_part<DK, BV>;
    float *r = p + P::row() * ld + P::col();
#pragma unroll
    for (int j = 0; j < P::NT; j++)
#pragma unroll
        for (int h = 0; h < 2; h++) gdn_st2(r + h * 8 * ld + j * 8, S[j][2 * h], S[j][2 * h + 1]);
}

// The scan's products run on bf16 mma.sync (m16n8k16, fp32 accumulators) with
// every fragment from ldmatrix: the record is bf16 already, and S0 and v_new
// are rounded to bf16 as operands (the state itself stays fp32 in registers)
// — flash-linear-attention's arithmetic (h and v_new cast to the inputs'
// dtype for their products). On tf32 m16n8k8 each fp32 B operand and each
// bf16 A element was a load of its own: 1,412 instructions a warp a chunk
// and its shared memory traffic bound the scan (NOTES v88). S0 and v_new are
// stored transposed (value column major, "St" / "Vt"), so that as B operands
// (k along their rows) ldmatrix reads them without .trans.

// d[j] += A · B_j over the k-steps below kend (a multiple of 16, at most K;
// warp-uniform): A the warp's 16 rows (row-major, stride la), B_j its n8
// column tile j, stored n-major (Bt[n][k], stride lb); one chain a tile.
template <int VN, int K>
__device__ __forceinline__ void gdn_rows_chain(float (&d)[VN][4], const gdn_rt *A, int la, const gdn_rt *Bt, int lb,
                                               int kend = K)
{
    static_assert(VN % 2 == 0, "B tiles in pairs (ldmatrix x4)");
#pragma unroll
    for (int k = 0; k < K; k += 16) {
        if (k >= kend) break;
        uint32_t a[4];
        mma_ldsm4(a, gdn_sm_a(A + k, la));
#pragma unroll
        for (int j = 0; j < VN; j += 2) {
            uint32_t b[4];
            mma_ldsm4(b, gdn_sm_b(Bt + j * 8 * lb + k, lb));
            mma_bf16(d[j], a, b[0], b[1]);
            mma_bf16(d[j + 1], a, b[2], b[3]);
        }
    }
}

// A warp's state tiles, as bf16 operands, into St (column-major: St[c][d],
// stride ls) for the next chunk's v_new and O.
template <int DK, int BV>
__device__ __forceinline__ void gdn_part_st_t(const float (&S)[gdn_scan_part<DK, BV>::NT][4], gdn_rt *St, int ls)
{
    using P = gdn_scan_part<DK, BV>;
    const int r = P::row(), c = P::col();
#pragma unroll
    for (int j = 0; j < P::NT; j++)
#pragma unroll
        for (int i = 0; i < 4; i++) St[(c + j * 8 + (i & 1)) * ls + r + (i >> 1) * 8] = __float2bfloat16_rn(S[j][i]);
}

// v_new = U − W S0 (C x BV; W, U of the record) into Vt (bf16, column-major:
// Vt[c][i], stride lt): warp w the 16 rows from 16 (w % 4) and BV / 2
// columns from (w / 4) BV / 2, one chain of DK / 16 products a tile.
template <int DK, int BV, int LW, int LU, int LS, int LT>
__device__ __forceinline__ void gdn_scan_vnew(const gdn_rt *Ws, const gdn_rt *St, const gdn_rt *Us, gdn_rt *Vt)
{
    constexpr int VN = BV / 16;
    const int w = threadIdx.x >> 5, g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
    const int m0 = (w & 3) * 16, n0 = (w >> 2) * VN * 8;
    float d[VN][4] = {};
    gdn_rows_chain<VN, DK>(d, Ws + m0 * LW, LW, St + n0 * LS, LS);
#pragma unroll
    for (int j = 0; j < VN; j++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            int r = m0 + g + 8 * h, c = n0 + j * 8 + 2 * t;
            float2 u = __bfloat1622float2(*(const __nv_bfloat162 *)(Us + r * LU + c));
            Vt[c * LT + r] = __float2bfloat16_rn(u.x - d[j][2 * h]);
            Vt[(c + 1) * LT + r] = __float2bfloat16_rn(u.y - d[j][2 * h + 1]);
        }
}

// S = e^(G_last) S0 + Kdᵀ v_new on a warp's state tiles (Ks: k ⊙ e^(G_last−G),
// bf16 [i][d], stride LK, read transposed by ldmatrix .trans; its rows past n
// and v_new's are zero, so all C are summed: exact, and a fixed count
// unrolls): the state scaled, then C / 16 products a tile.
template <int DK, int BV, int LK, int LT>
__device__ __forceinline__ void gdn_scan_advance(float (&S)[gdn_scan_part<DK, BV>::NT][4], const gdn_rt *Ks,
                                                 const gdn_rt *Vt, float glast)
{
    using P = gdn_scan_part<DK, BV>;
    static_assert(P::NT % 2 == 0, "B tiles in pairs (ldmatrix x4)");
    const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3, r0 = P::row() - g, c0 = P::col() - 2 * t;
    float el = expf(glast);
#pragma unroll
    for (int j = 0; j < P::NT; j++)
#pragma unroll
        for (int i = 0; i < 4; i++) S[j][i] *= el;
#pragma unroll
    for (int k = 0; k < GDN_C; k += 16) {
        uint32_t a[4]; // Kdᵀ's 16 x 16 tile (rows d r0.., columns i k..), stored k-major
        mma_ldsm4_t(a, gdn_sm_b(Ks + k * LK + r0, LK));
#pragma unroll
        for (int j = 0; j < P::NT; j += 2) {
            uint32_t b[4];
            mma_ldsm4(b, gdn_sm_b(Vt + (c0 + j * 8) * LT + k, LT));
            mma_bf16(S[j], a, b[0], b[1]);
            mma_bf16(S[j + 1], a, b[2], b[3]);
        }
    }
}

// O = (Q ⊙ e^G) S0 + QKm v_new for the block's BV value columns (Qs, QKs
// bf16 as the record holds them, row strides LQ and LC; St and Vt the S0 and
// v_new columns, column-major, strides LS and LT), rows < n to out (row
// orow.., columns ooff..): warp w the 16 rows from 16 (w % 4) and BV / 2
// columns from (w / 4) BV / 2, one chain a tile (S0's DK / 16 products, then
// QKm's up to its diagonal block).
template <int DK, int BV, int LQ, int LC, int LS, int LT>
__device__ __forceinline__ void gdn_scan_out(const gdn_rt *Qs, const gdn_rt *QKs, const gdn_rt *St, const gdn_rt *Vt,
                                             int n, cu_mat out, int64_t orow, int64_t ooff)
{
    constexpr int VN = BV / 16;
    const int w = threadIdx.x >> 5, g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
    const int mi = w & 3, m0 = mi * 16, n0 = (w >> 2) * VN * 8;
    float d[VN][4] = {};
    gdn_rows_chain<VN, DK>(d, Qs + m0 * LQ, LQ, St + n0 * LS, LS);
    gdn_rows_chain<VN, GDN_C>(d, QKs + m0 * LC, LC, Vt + n0 * LT, LT, (mi + 1) * 16);
    // column pairs as one store of the output's type (ooff is even): a dtype
    // switch a store was 40 stores and 65 branches of a chunk's SASS
    const bool paired = cu_mat_pair_ok(out);
    cu_typed(out.dt, [&](auto ty) {
#pragma unroll
        for (int j = 0; j < VN; j++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                int r = m0 + g + 8 * h, c = n0 + j * 8 + 2 * t;
                if (r >= n) continue;
                if (paired) cu_mat_st2_as(out, orow + r, ooff + c, d[j][2 * h], d[j][2 * h + 1], ty);
                else cu_mat_st2_as(out, orow + r, ooff + c, d[j][2 * h], d[j][2 * h + 1], cu_dyn_t());
            }
    });
}

// Block (sequence, value head, value-column tile of BV): 256 threads; walks
// the sequence's records in order (sequences left to k_gdn exit) with the
// state in registers (gdn_scan_part) on bf16 mma.sync: a wmma tile went
// through shared memory at every product and a warp's tiles ran one long
// chain each (a chunk took ~8.8k cycles for 1 MFLOP, NOTES v82; 3.8k now). A chunk's
// record (W, Kd, its U columns, Qg, QKm) arrives by cp.async in one commit
// group, issued a chunk ahead into the other of two stages. After v_new, the
// state update and the chunk's O (gdn_scan_out) share the warps: O feeds
// nothing, so its products fill the update's latency. One block an SM (its
// shared memory).
template <int DK, int BV>
__global__ void __launch_bounds__(256, 1) k_gdn_scan(cu_gdn_args g, int min_len, const gdn_rt *rec)
{
    using SM = gdn_scan_smem<DK, BV>;
    using RC = gdn_rec<DK>;
    using P = gdn_scan_part<DK, BV>;
    constexpr int C = GDN_C, LW = SM::LW, LU = SM::LU, LC = SM::LC, LT = SM::LT, LS = SM::LS;
    extern __shared__ __align__(128) char smc[];
    gdn_rt *Vt = (gdn_rt *)(smc + SM::V);
    const int Dv = g.Dv, nvt = Dv / BV;
    int s = blockIdx.x / (g.Hv * nvt), rem = blockIdx.x % (g.Hv * nvt);
    int h = rem / nvt, vt = rem % nvt;
    cu_pdl_wait();
    cu_pdl_trigger();
    int q0 = g.q_start[s], qn = g.q_start[s + 1] - q0, tlen = gdn_tlen(g, s);
    int nc = gdn_nchunks(qn, tlen, min_len);
    if (nc == 0) return; // block-uniform
    int64_t first = gdn_chunk_base(g, s, min_len);
    int64_t sz = (int64_t)DK * Dv, slot_sz = (int64_t)g.Hv * sz;
    float *mine = g.ssm + (int64_t)g.state_slot[s] * slot_sz + h * sz + vt * BV; // row stride Dv
    auto record = [&](int ci) { return rec + ((first + ci) * g.Hv + h) * RC::size(Dv); };
    auto stage = [&](int ci, int part) { return (gdn_rt *)(smc + (ci & 1) * SM::STAGE + part); };
    auto state = [&](int ci) { return (gdn_rt *)(smc + SM::S + (ci & 1) * SM::SB); };
    auto issue = [&](int ci) { // chunk ci's record (an empty group past the last chunk)
        if (ci < nc) {
            const gdn_rt *r = record(ci);
            gdn_copy_async<C, DK>(stage(ci, SM::W), LW, r + RC::W, DK);
            gdn_copy_async<C, DK>(stage(ci, SM::K), LW, r + RC::KD, DK);
            gdn_copy_async<C, DK>(stage(ci, SM::Q), LW, r + RC::QG, DK);
            gdn_copy_async<C, C>(stage(ci, SM::QK), LC, r + RC::QK, C);
            gdn_copy_async<C, BV>(stage(ci, SM::U), LU, r + RC::U + vt * BV, Dv);
        }
        __pipeline_commit();
    };
    issue(0);
    float S[P::NT][4];
    gdn_part_ld<DK, BV>(S, mine, Dv, g.state_fresh[s]);
    for (int ci = 0; ci < nc; ci++) {
        int c0, n;
        gdn_chunk_at(qn, tlen, ci, c0, n);
        float glast = *(const float *)(record(ci) + RC::glast(Dv));
        gdn_rt *St = state(ci);
        gdn_part_st_t<DK, BV>(S, St, LS); // its last readers (chunk ci − 2's O) are past the last barrier
        __pipeline_wait_prior(0);
        __syncthreads(); // the record and S0 in; the previous chunk's readers of the other stage and Vs done
        issue(ci + 1);
        gdn_scan_vnew<DK, BV, LW, LU, LS, LT>(stage(ci, SM::W), St, stage(ci, SM::U), Vt);
        __syncthreads();
        gdn_scan_advance<DK, BV, LW, LT>(S, stage(ci, SM::K), Vt, glast);
        gdn_scan_out<DK, BV, LW, LC, LS, LT>(stage(ci, SM::Q), stage(ci, SM::QK), St, Vt, n, g.out, q0 + c0,
                                         (int64_t)h * Dv + vt * BV);
        if (c0 + n == tlen)
            gdn_part_st<DK, BV>(S, g.ssm + (int64_t)g.track_slot[s] * slot_sz + h * sz + vt * BV, Dv);
    }
    __pipeline_wait_prior(0); // the empty group past the last chunk
    gdn_part_st<DK, BV>(S, mine, Dv);
}

// ---- the split form's launches ------------------------------------------------

// The scan at BV value columns a block (blocks of short sequences exit).
template <int DK, int BV>
static void gdn_scan_launch(cu_backend *b, const cu_gdn_args &g, int n_seqs, const gdn_rt *rec)
{
    size_t ss = gdn_scan_smem<DK, BV>::BYTES;
    CU_CHECK(cudaFuncSetAttribute(k_gdn_scan<DK, BV>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)ss));
    cu_launch(b, k_gdn_scan<DK, BV>, (unsigned)(n_seqs * g.Hv * (g.Dv / BV)), 256, ss, g, GDN_CHUNK_MIN, rec);
}

// Whether the scan may take 64 value columns a block where that still gives
// every SM a block (v91: each of a head's column blocks reads the head's W,
// Kd, Qg and QKm a chunk; at 64 columns half of them do). 0: always 32.
#ifndef GDN_SCAN_WIDE
#define GDN_SCAN_WIDE 1
#endif

// The split form over every long sequence of the batch (n_chunks records,
// n_long sequences).
template <int DK>
static void gdn_split_launch(cu_backend *b, const cu_gdn_args &g, int n_seqs, int n_long, int64_t n_chunks)
{
    gdn_rt *rec = (gdn_rt *)cu_tmp_alloc(b, sizeof(gdn_rt) * (size_t)(n_chunks * g.Hv * gdn_rec<DK>::size(g.Dv)));
    size_t ps = gdn_prep_smem<DK>::BYTES;
    CU_CHECK(cudaFuncSetAttribute(k_gdn_prep<DK>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)ps));
    CU_CHECK(cudaFuncSetAttribute(k_gdn_prep<DK>, cudaFuncAttributePreferredSharedMemoryCarveout,
                                  cudaSharedmemCarveoutMaxShared)); // room for two blocks
    cu_launch(b, k_gdn_prep<DK>, dim3((unsigned)n_chunks, (unsigned)g.Hv), 256, ps, g, GDN_CHUNK_MIN, n_seqs, rec);
    if (GDN_SCAN_WIDE && (int64_t)n_long * g.Hv * (g.Dv / 64) >= b->n_sm)
        gdn_scan_launch<DK, 64>(b, g, n_seqs, rec);
    else
        gdn_scan_launch<DK, 32>(b, g, n_seqs, rec);
    cu_tmp_free(b, rec);
}

template <int DK, int BV>
static void gdn_chunk_launch(cu_backend *b, const cu_gdn_args &g, int n_seqs)
{
    size_t smem = gdn_smem<DK, BV>::BYTES;
    CU_CHECK(cudaFuncSetAttribute(k_gdn_chunk<DK, BV>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  (int)smem));
    unsigned grid = (unsigned)(n_seqs * g.Hv * (g.Dv / BV));
    cu_launch(b, k_gdn_chunk<DK, BV>, grid, 256, smem, g, GDN_CHUNK_MIN);
}

void cu_gdn(sl_backend *be, sl_tensor *out, const sl_tensor *qkv, const sl_tensor *a,
            const sl_tensor *b, const sl_tensor *A_log, const sl_tensor *dt_bias, sl_tensor *ssm,
            int Hk, int Hv, int Dk, int Dv, const sl_batch_meta *m)
{
    cu_backend *bk = cu_be(be);
    const cu_meta *cm = cu_meta_of(m);
    SL_ASSERT((Dk == 64 || Dk == 128) && Dv % 16 == 0 && 2 * Dv >= Dk && Dv <= 256);
    if (cm->n_seqs == 0) return;
    cu_gdn_args g = {cu_mat_of(out), cu_mat_of(qkv), cu_mat_of(a), cu_mat_of(b), A_log->data,
                     dt_bias->data, A_log->dtype, dt_bias->dtype, (float *)ssm->data, Hk, Hv, Dv,
                     cm->q_start, cm->state_slot, cm->state_fresh, cm->track_slot, cm->track_len};
    // Per sequence: >= GDN_CHUNK_MIN new tokens chunked, fewer recurrent; a
    // kernel launches only if some sequence is its (each skips the others).
    int n_long = 0;
    for (int s = 0; s < cm->n_seqs; s++)
        n_long += m->q_start[s + 1] - m->q_start[s] >= GDN_CHUNK_MIN;
    if (Dv % 32 != 0) n_long = 0; // no column tiling: all recurrent
    if (n_long < cm->n_seqs) {
        unsigned grid = (unsigned)(cm->n_seqs * Hv);
        int max_len = n_long ? GDN_CHUNK_MIN - 1 : INT_MAX;
        cu_gdn_fuse none;
        memset(&none, 0, sizeof none);
        cu_launch(bk, Dk == 64 ? k_gdn<64, 1, false, false> : k_gdn<128, 1, false, false>, grid, 2 * Dv, 0, g,
                  max_len, none);
    }
    if (n_long) {
        if (bk->gdn_split && Dv % 64 == 0) {
            int64_t n_chunks = 0;
            for (int s = 0; s < cm->n_seqs; s++)
                n_chunks += gdn_nchunks(m->q_start[s + 1] - m->q_start[s],
                                        m->track_slot[s] >= 0 ? m->track_len[s] : -1, GDN_CHUNK_MIN);
            if (Dk == 64) gdn_split_launch<64>(bk, g, cm->n_seqs, n_long, n_chunks);
            else gdn_split_launch<128>(bk, g, cm->n_seqs, n_long, n_chunks);
            return;
        }
        // 64 value columns a block unless that leaves SMs idle (one long prompt)
        bool wide = Dv % 64 == 0 && (int64_t)n_long * Hv * (Dv / 64) >= bk->n_sm;
        if (Dk == 64) {
            if (wide) gdn_chunk_launch<64, 64>(bk, g, cm->n_seqs);
            else gdn_chunk_launch<64, 32>(bk, g, cm->n_seqs);
        } else {
            if (wide) gdn_chunk_launch<128, 64>(bk, g, cm->n_seqs);
            else gdn_chunk_launch<128, 32>(bk, g, cm->n_seqs);
        }
    }
}

template <int DK, int HB> static void gdn_fused_launch(cu_backend *b, unsigned grid, const cu_gdn_args &g,
                                                       const cu_gdn_fuse &f)
{
    if (f.norm.q.codes) cu_launch(b, k_gdn<DK, HB, true, true>, grid, HB * 2 * g.Dv, 0, g, INT_MAX, f);
    else cu_launch(b, k_gdn<DK, HB, true, false>, grid, HB * 2 * g.Dv, 0, g, INT_MAX, f);
}

int cu_gdn_decode(sl_backend *be, sl_tensor *normed, sl_tensor *core, sl_tensor *conv, const sl_tensor *mixed,
                  const sl_tensor *z, const sl_tensor *a, const sl_tensor *b, const sl_gdn_layer *l,
                  sl_tensor *conv_state, sl_tensor *ssm, const sl_batch_meta *m, sl_fp8_act *q)
{
    cu_backend *bk = cu_be(be);
    const cu_meta *cm = cu_meta_of(m);
    int Hk = l->n_k_heads, Hv = l->n_v_heads, Dk = l->k_dim, Dv = l->v_dim, K = (int)sl_tensor_cols(l->conv_w);
    // one block a key head's value heads (it owns their q / k conv state); the
    // recurrence's register budget allows 512 threads
    int HB = Hv / Hk;
    if (!bk->gdn_fuse || cm->n_seqs == 0 || cm->max_q_len != 1 || (Dk != 64 && Dk != 128) || Dv % 16 ||
        2 * Dv < Dk || Dv > 256 || Hv % Hk || (HB != 1 && HB != 2) || HB * 2 * Dv > 512 || K < 1 ||
        K > CONV_MAXK || conv_state->dtype != SL_DTYPE_F32 || ssm->dtype != SL_DTYPE_F32)
        return 0;
    cu_gdn_fuse f;
    if (!cu_norm_gated_args(be, &f.norm, normed, core, z, l->gnorm, l->eps, q)) return 0; // no 8-wide norm
    f.mixed = cu_mat_of(mixed);
    f.conv_w = cu_mat_of(l->conv_w);
    f.conv_state = (float *)conv_state->data;
    f.K = K;
    cu_gdn_args g = {cu_mat_of(core), cu_mat_of(conv), cu_mat_of(a), cu_mat_of(b), l->A_log->data,
                     l->dt_bias->data, l->A_log->dtype, l->dt_bias->dtype, (float *)ssm->data, Hk, Hv, Dv,
                     cm->q_start, cm->state_slot, cm->state_fresh, cm->track_slot, cm->track_len};
    unsigned grid = (unsigned)(cm->n_seqs * (Hv / HB));
    if (Dk == 64) HB == 2 ? gdn_fused_launch<64, 2>(bk, grid, g, f) : gdn_fused_launch<64, 1>(bk, grid, g, f);
    else HB == 2 ? gdn_fused_launch<128, 2>(bk, grid, g, f) : gdn_fused_launch<128, 1>(bk, grid, g, f);
    return 1;
}

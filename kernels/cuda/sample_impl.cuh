// kernels/cuda/sample_impl.cuh: what the sampling op's files share (see
// sample.cu for how the op works): the kernels' argument block and shared
// memory, the slices' partials and their fold, the order-preserving keys and
// fixed-order block reductions and scans.
#ifndef SL_CUDA_SAMPLE_IMPL_CUH
#define SL_CUDA_SAMPLE_IMPL_CUH

#include <math.h>

#include "sample.cuh"

#define SB_NT 1024
#define SB_BINS 2048
#define SB_FULL 0xffffffffu
#define SB_MAXB 64 // slices per row at most
#define SB_CB 8    // chunks per round of the exp sums

typedef unsigned long long u64;

// One slice's share of its row (pass 1 to 3), folded by sb_fold.
struct sb_part {
    u64 best;            // greedy: max of (key, ~id)
    u64 nzero, mass;     // zero probabilities, fixed-point mass
    u64 kept;            // mass of the probabilities >= the min-p floor
    float mx_raw, mx;
    int last;            // last id kept by the floor, + 1 (0: none)
    int n_cand, n_top;   // head sizes (top-k of probabilities, n_top of raw logits)
};

struct sb_args {
    const float *logits;
    int64_t ld;
    int V;
    int32_t *ids;
    float *lp;
    int64_t lp_ld;
    const sl_sample_row *rows;
    const int32_t *pen_tok, *pen_out, *pen_prompt;
    const int32_t *pending;
    const uint32_t *mask; // [n_mask_rows][mask_words] on the device, or NULL
    int mask_words;
    float *scratch; // [R, V]: penalised logits, then probabilities
    int B, S;       // slices per row, ids per slice (whole chunks of SB_NT ids)
    int NC;         // chunks per row
    sb_part *part;  // [R, B]
    double *csum;   // [R, NC, 2]: per chunk, sums of exp of the raw / tempered logits
    // slice heads ([R, B, SB_NT] for top-k, [R, B, SL_SAMPLE_MAX_TOP] for
    // the top raw logits) and the same laid end to end per row
    float *cand_v, *join_v, *head_v, *hjoin_v;
    int32_t *cand_id, *join_id, *head_id, *hjoin_id;
};

struct sb_shared {
    uint32_t cnt[SB_BINS];
    u64 mass[SB_BINS];
    u64 red[SB_NT / 32];
    u64 slot[SB_NT / 32][32]; // per-warp exchange of histogram masses
    int found, n_gt, n_c, pen_found;
    uint32_t digit;
    u64 above_c, above_m, grp_c;
    int32_t id;
    int32_t top[SL_SAMPLE_MAX_TOP];
    sl_sample_row w;
};

// Order-preserving key (-0 folded into +0, as the CPU's comparisons see it).
__device__ __forceinline__ uint32_t sb_key(float f)
{
    uint32_t u = __float_as_uint(__fadd_rn(f, 0.0f));
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float sb_val(uint32_t k)
{
    return __uint_as_float((k & 0x80000000u) ? (k ^ 0x80000000u) : ~k);
}

// Probability (of a key of p in [0, 1]) as 2^-50 fixed point.
__device__ __forceinline__ u64 sb_mass(uint32_t k)
{
    return __float2ull_rn(__fmul_rn(sb_val(k), 0x1p50f));
}

// Block-wide reduction, every thread gets the result (fixed order: the same
// bits every run).
template <typename T, typename Op> __device__ T sb_reduce(T v, Op op, sb_shared &s)
{
    for (int o = 16; o > 0; o >>= 1)
        v = op(v, __shfl_xor_sync(SB_FULL, v, o));
    T *r = reinterpret_cast<T *>(s.red);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) r[threadIdx.x >> 5] = v;
    __syncthreads();
    v = r[0];
    for (int i = 1; i < SB_NT / 32; i++)
        v = op(v, r[i]);
    return v;
}

// Exclusive scan over threads in thread order; *total = the block's sum.
static __device__ u64 sb_scan(u64 v, sb_shared &s, u64 *total)
{
    int lane = threadIdx.x & 31, wp = threadIdx.x >> 5;
    u64 x = v;
    for (int o = 1; o < 32; o <<= 1) {
        u64 y = __shfl_up_sync(SB_FULL, x, o);
        if (lane >= o) x += y;
    }
    __syncthreads();
    if (lane == 31) s.red[wp] = x;
    __syncthreads();
    u64 before = 0, tot = 0;
    for (int i = 0; i < SB_NT / 32; i++) {
        u64 r = s.red[i];
        if (i < wp) before += r;
        tot += r;
    }
    *total = tot;
    return before + x - v;
}

// What every kernel of the op needs to know about its row.
struct sb_row {
    sl_sample_row w;
    int32_t pend;   // the pending token, or -1
    const uint32_t *mask; // this row's allowed-token bits, or NULL
    int pen, greedy;      // pen: the row is rewritten into scratch (penalties or a mask)
    int k;          // top-k, V when off
    int cand;       // top-k through per-slice candidates (k < V, k <= SB_NT)
    int lo, len;    // this block's slice of the vocabulary
};

static __device__ sb_row sb_row_of(const sb_args &g, int r, int b, sb_shared &s)
{
    if (threadIdx.x == 0) {
        s.w = g.rows[r];
        s.n_gt = 0;
        s.pen_found = 0;
    }
    __syncthreads();
    sb_row q;
    q.w = s.w;
    const sl_sample_row &w = q.w;
    const int V = g.V;
    q.pend = w.pending >= 0 ? g.pending[w.pending] : -1;
    q.mask = g.mask && w.mask_row >= 0 ? g.mask + (size_t)w.mask_row * g.mask_words : NULL;
    q.pen = ((w.pen_n > 0 || q.pend >= 0) &&
             (w.repetition_penalty != 1.0f || w.frequency_penalty != 0.0f ||
              w.presence_penalty != 0.0f)) ||
            q.mask;
    q.greedy = w.temperature <= 0.0f || w.top_k == 1;
    q.k = w.top_k > 0 && w.top_k < V ? w.top_k : V;
    q.cand = !q.greedy && q.k < V && q.k <= SB_NT;
    q.lo = min(b * g.S, V);
    q.len = min(g.S, V - q.lo);
    return q;
}

// The row's maxima and sums, folded from its slices (maxima, integers) and
// its chunks (the fp64 sums, in chunk order): every kernel folds the same
// way, so all see the same bits, and the sums do not depend on the slicing
// (nor, through it, on the batch size).
struct sb_tot {
    float mx_raw, mx;
    double sum_raw, sum;
    u64 nzero, mass, kept;
    int last;
};

static __device__ sb_tot sb_fold(const sb_args &g, int r, bool sums = true)
{
    sb_tot t = {-INFINITY, -INFINITY, 0, 0, 0, 0, 0, 0};
    const double *cs = g.csum + (size_t)r * g.NC * 2;
    for (int c = 0; sums && c < g.NC; c++) {
        t.sum_raw += cs[2 * c];
        t.sum += cs[2 * c + 1];
    }
    for (int b = 0; b < g.B; b++) {
        const sb_part &p = g.part[(size_t)r * g.B + b];
        t.mx_raw = fmaxf(t.mx_raw, p.mx_raw);
        t.mx = fmaxf(t.mx, p.mx);
        t.nzero += p.nzero;
        t.mass += p.mass;
        t.kept += p.kept;
        t.last = max(t.last, p.last);
    }
    return t;
}

// The op's four passes, launched in this order by cu_sample (sample.cu).
__global__ void __launch_bounds__(SB_NT, 1) k_sample_max(sb_args g);  // sample_pass.cu
__global__ void __launch_bounds__(SB_NT, 1) k_sample_sum(sb_args g);  // sample_pass.cu
__global__ void __launch_bounds__(SB_NT, 1) k_sample_prob(sb_args g); // sample_pass.cu
__global__ void __launch_bounds__(SB_NT, 1) k_sample_draw(sb_args g); // sample_draw.cu

#endif

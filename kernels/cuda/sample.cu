// kernels/cuda/sample.cu: sl_be_sample on the device; it draws the same
// token as the CPU op (kernels/cpu/sample.c) on the same inputs, up to
// summation order.
//
// Four kernels. The first three split each row into B slices of the
// vocabulary, one 1024-thread block per (slice, row), B chosen so that a few
// rows still fill the GPU (a row is 600 KB at V = 151936; one SM walking it
// many times made a single row cost 50-600 us): pass 1 copies and penalises
// the slice and takes its maxima (argmax for greedy rows) and its head of
// n_top raw logits; pass 2 its sums of exponentials under the row's maxima;
// pass 3 its probabilities, their zero count and masses, and its head of k
// (top-k rows). Each block folds the slices' partials in slice order, so
// every kernel sees the same row maximum and sum. Pass 4, one block per row,
// cuts and draws. A slice's head holds every member of the row's head in
// that slice (rank order is the same total order everywhere), so top-k of at
// most 1024 and the top logprobs are chosen among the slices' heads laid end
// to end (still in id order) instead of the row; the id-order draw without
// top-k and top-p finds the slice where the cumulative kept mass crosses and
// walks that slice alone. Top-p without top-k and top-k above 1024 still
// walk the whole row in the draw block.
//
// Nothing is sorted. Every cut (top-k, top-p, min-p) and the draw keep a
// prefix of the rank order (prob desc, id asc), so the surviving set is
// (K, m): every token whose key exceeds K plus the first m, in id order, of
// those whose key equals K, where a key is the order-preserving uint32 of the
// float. A cut is a radix select over keys (digits of 11, 11 and 10 bits,
// shared-memory histograms) by count (top-k) or by probability mass (top-p,
// the draw); ties at the final key are resolved by arithmetic (they all weigh
// the same) and their ids found by a walk in id order. Masses are
// 2^-50 fixed point in 64-bit integer sums, so a row samples the same token
// on every run, and the slices' masses add up exactly. Once top-k has left
// at most 1024 tokens (Qwen3's default is 20) they are gathered into shared
// memory and ranked, and top-p, min-p and the draw are block scans there.
//
// Host arrays (rows, penalty entries) reach the device through a pinned
// staging buffer owned by the op, double-buffered with an event like
// prepare's (so the op is not for CUDA graph capture: a replay would read
// the staged rows of capture time); the probabilities, the slices' partials
// and heads live in stream-ordered scratch.
#include <math.h>
#include <string.h>

#include "sample.cuh"

#define SB_NT 1024
#define SB_BINS 2048
#define SB_FULL 0xffffffffu
#define SB_MAXB 64 // slices per row at most
#define SB_CB 8    // chunks per round of the exp sums

typedef unsigned long long u64;

typedef struct cu_sample_stage {
    struct {
        char *host, *dev; // pinned / device, cap bytes each
        size_t cap;
        cudaEvent_t copied;
    } buf[2];
    int next;
} cu_sample_stage;

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
__device__ u64 sb_scan(u64 v, sb_shared &s, u64 *total)
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

// Candidate set: keys > key, plus the first m (id order) with key == key.
struct sb_cand {
    uint32_t key;
    u64 m;
};

// Result of a select: the element sought is the j-th (1-based, id order)
// with key == key; above_* = count and mass of the set ranked before them.
struct sb_pick {
    int found;
    uint32_t key;
    u64 j, above_c, above_m;
};

// The first element of c in rank order whose inclusive cumulative weight
// (count, or fixed-point mass when MASS) exceeds t. found = 0 when the whole
// set weighs no more than t. TRACK: also sum the mass above the pick (a
// must with MASS; a's values are probabilities).
template <bool MASS, bool TRACK>
__device__ sb_pick sb_select(const float *a, int V, sb_cand c, double t, sb_shared &s)
{
    static_assert(TRACK || !MASS, "a select by mass tracks mass");
    const int lo_of[3] = {21, 10, 0}, wd_of[3] = {11, 11, 10};
    sb_pick pk = {0, 0, 0, 0, 0};
    uint32_t pfx = 0;
    u64 ac = 0, am = 0, gc = 0;
    for (int pass = 0; pass < 3; pass++) {
        int lo = lo_of[pass], wd = wd_of[pass], nb = 1 << wd, hi = lo + wd;
        __syncthreads(); // the previous pass's results have been read
        for (int d = threadIdx.x; d < nb; d += SB_NT) {
            s.cnt[d] = 0;
            s.mass[d] = 0;
        }
        if (threadIdx.x == 0) s.found = 0;
        __syncthreads();
        if (threadIdx.x == 0 && c.m && (uint32_t)((u64)c.key >> hi) == pfx) {
            int d = (int)((c.key >> lo) & (uint32_t)(nb - 1));
            atomicAdd(&s.cnt[d], (uint32_t)c.m);
            if (TRACK) atomicAdd(&s.mass[d], c.m * sb_mass(c.key));
        }
        // one atomic per distinct digit per warp: the first pass puts most of
        // the row in a few bins, and 64-bit shared atomics retry on conflict
        u64 *slot = s.slot[threadIdx.x >> 5];
        int lane = threadIdx.x & 31;
        for (int i0 = 0; i0 < V; i0 += SB_NT) {
            int i = i0 + (int)threadIdx.x;
            uint32_t k = i < V ? sb_key(a[i]) : 0u;
            int d = i < V && k > c.key && (uint32_t)((u64)k >> hi) == pfx
                        ? (int)((k >> lo) & (uint32_t)(nb - 1))
                        : -1;
            unsigned peers = __match_any_sync(SB_FULL, d);
            if (TRACK) {
                slot[lane] = d >= 0 ? sb_mass(k) : 0;
                __syncwarp();
            }
            if (d >= 0 && lane == __ffs(peers) - 1) {
                atomicAdd(&s.cnt[d], (uint32_t)__popc(peers));
                if (TRACK) {
                    u64 m = 0;
                    for (unsigned b = peers; b; b &= b - 1)
                        m += slot[__ffs(b) - 1];
                    atomicAdd(&s.mass[d], m);
                }
            }
            if (TRACK) __syncwarp(); // slot is rewritten next round
        }
        __syncthreads();
        // thread order = descending digit order
        int per = nb / SB_NT, d0 = nb - 1 - (int)threadIdx.x * per;
        u64 lc = 0, lm = 0, tc, tm;
        for (int q = 0; q < per; q++) {
            lc += s.cnt[d0 - q];
            lm += s.mass[d0 - q];
        }
        u64 rc = ac + sb_scan(lc, s, &tc), rm = TRACK ? am + sb_scan(lm, s, &tm) : 0;
        for (int q = 0; q < per; q++) {
            int d = d0 - q;
            u64 wc = s.cnt[d], wm = s.mass[d], run = MASS ? rm : rc, w = MASS ? wm : wc;
            if ((double)run <= t && t < (double)(run + w)) { // unique: runs only grow
                s.found = 1;
                s.digit = (uint32_t)d;
                s.above_c = rc;
                s.above_m = rm;
                s.grp_c = wc;
            }
            rc += wc;
            rm += wm;
        }
        __syncthreads();
        if (!s.found) return pk;
        pfx = (pfx << wd) | s.digit;
        ac = s.above_c;
        am = s.above_m;
        gc = s.grp_c;
    }
    pk.found = 1;
    pk.key = pfx;
    pk.above_c = ac;
    pk.above_m = am;
    if (MASS) { // smallest j with am + j*v > t; all ties weigh v > 0
        u64 v = sb_mass(pfx), j = (u64)((t - (double)am) / (double)v) + 1;
        while (j > 1 && (double)(am + (j - 1) * v) > t)
            j--;
        while (j < gc && (double)(am + j * v) <= t)
            j++;
        pk.j = j;
    } else {
        pk.j = (u64)(t - (double)ac) + 1;
    }
    return pk;
}

// Walks of the row in id order go by tiles of SB_TILE ids, each thread
// taking 4 consecutive ones (a warp reads 512 contiguous bytes per load), with
// one block scan per tile; per-thread chunks of the whole row would make
// every warp load touch 32 cache lines.
#define SB_TILE (4 * SB_NT)

// out[r - r0] = id of the r-th (0-based, id order) element with key == K,
// for r in [r0, r1).
__device__ void sb_emit(const float *a, int V, uint32_t K, u64 r0, u64 r1, int32_t *out,
                        sb_shared &s)
{
    u64 base = 0; // matches in the tiles before this one (the same in every thread)
    for (int t0 = 0; t0 < V && base < r1; t0 += SB_TILE) {
        int i0 = t0 + 4 * (int)threadIdx.x;
        bool hit[4];
        u64 n = 0, tot;
        for (int q = 0; q < 4; q++) {
            hit[q] = i0 + q < V && sb_key(a[i0 + q]) == K;
            n += hit[q];
        }
        u64 r = base + sb_scan(n, s, &tot);
        for (int q = 0; q < 4; q++)
            if (hit[q]) {
                if (r >= r0 && r < r1) out[r - r0] = i0 + q;
                r++;
            }
        base += tot;
    }
    __syncthreads();
}

// Id-order inverse CDF over the tokens with p >= floor_p: the first whose
// inclusive cumulative mass, counted from base (the mass before p[0]),
// exceeds t, or -1 when they weigh no more than t.
__device__ int sb_find_mass(const float *p, int V, float floor_p, double t, u64 base,
                            sb_shared &s)
{
    for (int t0 = 0; t0 < V; t0 += SB_TILE) {
        int i0 = t0 + 4 * (int)threadIdx.x;
        u64 w[4], m = 0, tot;
        for (int q = 0; q < 4; q++) {
            w[q] = i0 + q < V && p[i0 + q] >= floor_p ? sb_mass(sb_key(p[i0 + q])) : 0;
            m += w[q];
        }
        u64 r = base + sb_scan(m, s, &tot);
        if ((double)(base + tot) > t) { // the crossing is in this tile
            if ((double)r <= t && t < (double)(r + m))
                for (int q = 0; q < 4; q++) {
                    r += w[q];
                    if ((double)r > t) {
                        s.id = i0 + q;
                        break;
                    }
                }
            __syncthreads();
            int id = s.id;
            __syncthreads();
            return id;
        }
        base += tot;
    }
    return -1;
}

// The ranked path once the candidate set c holds at most SB_NT tokens (a
// top-k of up to 1024, or a small vocabulary): the set is gathered into
// shared memory, ranked, and top-p, min-p and the draw run on block scans of
// the ranked masses instead of passes over the row. Same cuts, same integer
// masses as the radix path. The histograms are free by now: their memory
// holds the gathered ids and keys, then the ranked ids.
__device__ int32_t sb_draw_small(const float *ps, int V, sb_cand c, const sl_sample_row &w,
                                 float pmax, sb_shared &s)
{
    int32_t *cid = reinterpret_cast<int32_t *>(s.cnt),
            *ranked = reinterpret_cast<int32_t *>(s.mass);
    uint32_t *ckey = s.cnt + SB_NT;
    const int tid = threadIdx.x;
    auto umin_op = [](u64 a, u64 b) { return a < b ? a : b; };
    auto usum_op = [](u64 a, u64 b) { return a + b; };
    __syncthreads(); // the last select has read its histograms
    if (tid == 0) s.n_c = 0;
    __syncthreads();
    for (int i = tid; i < V; i += SB_NT)
        if (sb_key(ps[i]) > c.key) cid[atomicAdd(&s.n_c, 1)] = i;
    __syncthreads();
    int ngt = s.n_c, n = ngt + (int)c.m;
    sb_emit(ps, V, c.key, 0, c.m, cid + ngt, s); // ends with a barrier
    if (tid < n) ckey[tid] = sb_key(ps[cid[tid]]);
    __syncthreads();
    if (tid < n) { // rank = how many come first (prob desc, id asc)
        int32_t me = cid[tid];
        uint32_t mk = ckey[tid];
        int r = 0;
        for (int j = 0; j < n; j++)
            r += ckey[j] > mk || (ckey[j] == mk && cid[j] < me);
        ranked[r] = me;
    }
    __syncthreads();
    uint32_t key = tid < n ? sb_key(ps[ranked[tid]]) : 0u;
    u64 m = tid < n ? sb_mass(key) : 0, tot;
    u64 cum = sb_scan(m, s, &tot) + m; // inclusive, rank order
    // index of the first rank < lim whose cumulative mass exceeds t (SB_NT: none)
    auto first_over = [&](double t, int lim) {
        return (int)sb_reduce(tid < lim && (double)cum > t ? (u64)tid : (u64)SB_NT, umin_op, s);
    };
    int np = n;
    if (w.top_p < 1.0f)
        np = first_over(fmax(ceil((double)w.top_p * (double)tot) - 1.0, 0.0), n) + 1;
    int nm = np;
    if (w.min_p > 0) { // probabilities fall with rank: the kept ones are a prefix
        float floor_p = __fmul_rn(w.min_p, pmax);
        u64 keep = sb_reduce((u64)(tid < np && sb_val(key) >= floor_p), usum_op, s);
        nm = keep ? (int)keep : 1;
    }
    u64 kept = sb_reduce(tid == nm - 1 ? cum : 0ull, usum_op, s);
    int at = first_over((double)w.u * (double)kept, nm);
    return ranked[at < nm ? at : nm - 1];
}

// The ranked path over the whole row: cuts and the draw by radix selects;
// c (with mass cmass) is the set left by top-k, or every token.
__device__ int32_t sb_draw_radix(const float *ps, int V, sb_cand c, u64 cmass,
                                 const sl_sample_row &w, float pmax, sb_shared &s)
{
    const int tid = threadIdx.x;
    auto usum_op = [](u64 a, u64 b) { return a + b; };
    auto umin_op = [](u64 a, u64 b) { return a < b ? a : b; };
    if (w.top_p < 1.0f) {
        // first prefix with mass >= top_p*tot, i.e. > ceil(top_p*tot) - 1
        double t = fmax(ceil((double)w.top_p * (double)cmass) - 1.0, 0.0);
        sb_pick pk = sb_select<true, true>(ps, V, c, t, s);
        c = sb_cand{pk.key, pk.j};
        cmass = pk.above_m + pk.j * sb_mass(pk.key);
    }
    if (w.min_p > 0) {
        float floor_p = __fmul_rn(w.min_p, pmax);
        if (sb_val(c.key) < floor_p) {
            // the smallest key of the set that is still >= floor_p
            u64 kmin = ~0ull;
            for (int i = tid; i < V; i += SB_NT) {
                uint32_t kk = sb_key(ps[i]);
                if (kk > c.key && ps[i] >= floor_p && kk < kmin) kmin = kk;
            }
            kmin = sb_reduce(kmin, umin_op, s);
            if (kmin == ~0ull) { // keeps the top token
                c = sb_cand{sb_key(pmax), 1};
                cmass = sb_mass(c.key);
            } else {
                u64 n = 0, m = 0;
                for (int i = tid; i < V; i += SB_NT) {
                    uint32_t kk = sb_key(ps[i]);
                    n += kk == (uint32_t)kmin;
                    if (kk >= (uint32_t)kmin) m += sb_mass(kk);
                }
                c = sb_cand{(uint32_t)kmin, sb_reduce(n, usum_op, s)};
                cmass = sb_reduce(m, usum_op, s);
            }
        }
    }
    sb_pick pk = sb_select<true, true>(ps, V, c, (double)w.u * (double)cmass, s);
    if (!pk.found) { // u*tot at the very end: the last of the set
        pk.key = c.key;
        pk.j = c.m;
    }
    sb_emit(ps, V, pk.key, pk.j - 1, pk.j, &s.id, s);
    return s.id;
}

__device__ __forceinline__ float sb_penalize(float l, int out, int prompt, const sl_sample_row &w)
{
    // no contraction into fma: the CPU rounds each step
    if (out > 0 || prompt)
        l = l > 0 ? __fdiv_rn(l, w.repetition_penalty) : __fmul_rn(l, w.repetition_penalty);
    if (out > 0)
        l = __fsub_rn(l, __fadd_rn(__fmul_rn(w.frequency_penalty, (float)out), w.presence_penalty));
    return l;
}

// The n largest raw logits (largest first, lower id on ties) into s.top;
// returns how many (n unless the row is mostly NaN).
__device__ int sb_top_raw(const float *raw, int V, int n, sb_shared &s)
{
    sb_pick pk = sb_select<false, false>(raw, V, sb_cand{0u, 0}, (double)(n - 1), s);
    if (!pk.found) return 0;
    int ngt = (int)pk.above_c;
    for (int i = threadIdx.x; i < V; i += SB_NT)
        if (sb_key(raw[i]) > pk.key) s.top[atomicAdd(&s.n_gt, 1)] = i;
    sb_emit(raw, V, pk.key, 0, pk.j, s.top + ngt, s); // ends with a barrier
    if (threadIdx.x == 0)
        for (int a = 1; a < ngt; a++) { // insertion sort of the (< 20) strictly larger ones
            int32_t x = s.top[a];
            int b = a;
            for (; b > 0; b--) {
                int32_t y = s.top[b - 1];
                if (raw[y] > raw[x] || (raw[y] == raw[x] && y < x)) break;
                s.top[b] = y;
            }
            s.top[b] = x;
        }
    __syncthreads();
    return ngt + (int)pk.j;
}

// What every kernel of the op needs to know about its row.
struct sb_row {
    sl_sample_row w;
    int32_t pend;   // the pending token, or -1
    int pen, greedy;
    int k;          // top-k, V when off
    int cand;       // top-k through per-slice candidates (k < V, k <= SB_NT)
    int lo, len;    // this block's slice of the vocabulary
};

__device__ sb_row sb_row_of(const sb_args &g, int r, int b, sb_shared &s)
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
    q.pen = (w.pen_n > 0 || q.pend >= 0) &&
            (w.repetition_penalty != 1.0f || w.frequency_penalty != 0.0f ||
             w.presence_penalty != 0.0f);
    q.greedy = w.temperature <= 0.0f || w.top_k == 1;
    q.k = w.top_k > 0 && w.top_k < V ? w.top_k : V;
    q.cand = !q.greedy && q.k < V && q.k <= SB_NT;
    q.lo = min(b * g.S, V);
    q.len = min(g.S, V - q.lo);
    return q;
}

// The first k of a slice a[0, len) in rank order (key desc, id asc), written
// in id order to out_v/out_id (ids offset by lo); returns how many (k, or
// len when the slice is shorter). The union of the slices' heads holds the
// row's head, in id order when the slices are laid end to end.
__device__ int sb_slice_head(const float *a, int len, int lo, int k, float *out_v,
                             int32_t *out_id, sb_shared &s)
{
    uint32_t K = 0;
    u64 j = 0;
    if (len > k) {
        sb_pick pk = sb_select<false, false>(a, len, sb_cand{0u, 0}, (double)(k - 1), s);
        if (pk.found) {
            K = pk.key;
            j = pk.j;
        }
    }
    u64 ties = 0, kept = 0; // before this tile (the same in every thread)
    for (int t0 = 0; t0 < len; t0 += SB_TILE) {
        int i0 = t0 + 4 * (int)threadIdx.x;
        uint32_t key[4];
        u64 nt = 0, nk = 0, tt, tk;
        for (int q = 0; q < 4; q++) {
            key[q] = i0 + q < len ? sb_key(a[i0 + q]) : 0u;
            nt += i0 + q < len && key[q] == K;
        }
        u64 rt = ties + sb_scan(nt, s, &tt);
        bool keep[4];
        for (int q = 0; q < 4; q++) {
            bool tie = i0 + q < len && key[q] == K;
            keep[q] = i0 + q < len && (key[q] > K || (tie && rt < j));
            rt += tie;
            nk += keep[q];
        }
        u64 rk = kept + sb_scan(nk, s, &tk);
        for (int q = 0; q < 4; q++)
            if (keep[q]) {
                out_v[rk] = a[i0 + q];
                out_id[rk] = lo + i0 + q;
                rk++;
            }
        ties += tt;
        kept += tk;
    }
    return (int)kept;
}

// Lays the slices' heads (n of slice b at cap*b) end to end into dst;
// returns their total.
__device__ int sb_join(const float *v, const int32_t *id, const sb_part *part, int B, int cap,
                       float *dst_v, int32_t *dst_id, bool top)
{
    int off = 0;
    for (int b = 0; b < B; b++) {
        int n = top ? part[b].n_top : part[b].n_cand;
        for (int i = threadIdx.x; i < n; i += SB_NT) {
            dst_v[off + i] = v[(size_t)b * cap + i];
            dst_id[off + i] = id[(size_t)b * cap + i];
        }
        off += n;
    }
    __syncthreads();
    return off;
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

__device__ sb_tot sb_fold(const sb_args &g, int r, bool sums = true)
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

// Pass 1, one block per (slice, row): the penalised copy of the slice, its
// maxima (raw and penalised; the argmax for greedy rows) and its head of n_top
// raw logits.
__global__ void __launch_bounds__(SB_NT, 1) k_sample_max(sb_args g)
{
    __shared__ sb_shared s;
    const int r = blockIdx.y, b = blockIdx.x, tid = threadIdx.x;
    const sb_row q = sb_row_of(g, r, b, s);
    const sl_sample_row &w = q.w;
    const int lo = q.lo, hi = q.lo + q.len;
    const float *raw = g.logits + r * g.ld;
    float *ps = g.scratch + (int64_t)r * g.V;
    sb_part *part = g.part + (size_t)r * g.B + b;
    auto fmax_op = [](float a, float b) { return fmaxf(a, b); };
    auto umax_op = [](u64 a, u64 b) { return a > b ? a : b; };

    if (w.logprobs) {
        float mx = -INFINITY;
        for (int i = lo + tid; i < hi; i += SB_NT)
            mx = fmaxf(mx, raw[i]);
        mx = sb_reduce(mx, fmax_op, s);
        int n = 0;
        if (w.n_top > 0) {
            size_t at = ((size_t)r * g.B + b) * SL_SAMPLE_MAX_TOP;
            n = sb_slice_head(raw + lo, q.len, lo, w.n_top, g.head_v + at, g.head_id + at, s);
        }
        if (tid == 0) {
            part->mx_raw = mx;
            part->n_top = n;
        }
    }

    const float *x = raw;
    if (q.pen) {
        for (int i = lo + tid; i < hi; i += SB_NT)
            ps[i] = raw[i];
        __syncthreads();
        for (int e = tid; e < w.pen_n; e += SB_NT) { // tokens are distinct: no write conflicts
            int32_t t = g.pen_tok[w.pen_start + e];
            if (t == q.pend) s.pen_found = 1;
            if (t >= lo && t < hi)
                ps[t] = sb_penalize(ps[t], g.pen_out[w.pen_start + e] + (t == q.pend),
                                    g.pen_prompt[w.pen_start + e], w);
        }
        __syncthreads();
        if (tid == 0 && q.pend >= lo && q.pend < hi && !s.pen_found)
            ps[q.pend] = sb_penalize(ps[q.pend], 1, 0, w);
        __syncthreads();
        x = ps;
    }
    if (q.greedy) {
        // argmax, lowest id on ties: max of (key, ~id)
        u64 best = 0;
        for (int i = lo + tid; i < hi; i += SB_NT) {
            u64 c = ((u64)sb_key(x[i]) << 32) | (uint32_t)~i;
            best = c > best ? c : best;
        }
        best = sb_reduce(best, umax_op, s);
        if (tid == 0) part->best = best;
    } else {
        float mx = -INFINITY;
        for (int i = lo + tid; i < hi; i += SB_NT)
            mx = fmaxf(mx, x[i]);
        mx = sb_reduce(mx, fmax_op, s);
        if (tid == 0) part->mx = mx;
    }
}

// Pass 2, per (slice, row): the sums of exponentials under the row's maxima,
// one per chunk of SB_NT ids (a slice is whole chunks).
__global__ void __launch_bounds__(SB_NT, 1) k_sample_sum(sb_args g)
{
    __shared__ sb_shared s;
    const int r = blockIdx.y, b = blockIdx.x, tid = threadIdx.x;
    const sb_row q = sb_row_of(g, r, b, s);
    const sl_sample_row &w = q.w;
    if (q.greedy && !w.logprobs) return;
    const int lo = q.lo, hi = q.lo + q.len;
    const float *raw = g.logits + r * g.ld;
    const float *x = q.pen ? g.scratch + (int64_t)r * g.V : raw;
    const sb_tot t = sb_fold(g, r, false); // the sums are this pass's output
    float inv_t = q.greedy ? 1.0f : __fdiv_rn(1.0f, w.temperature);
    // SB_CB chunks per round, each summed by the same fixed tree (warp
    // butterflies, then the 32 warps in order) whatever the round holds
    double *red = reinterpret_cast<double *>(s.slot); // [2][SB_CB][32]
    const int lane = tid & 31, wp = tid >> 5;
    for (int c0 = lo; c0 < hi; c0 += SB_CB * SB_NT) {
        double v[2][SB_CB];
        for (int j = 0; j < SB_CB; j++) {
            int i = c0 + j * SB_NT + tid;
            v[0][j] = i < hi && w.logprobs ? exp((double)__fsub_rn(raw[i], t.mx_raw)) : 0.0;
            v[1][j] = i < hi && !q.greedy ? (double)expf(__fmul_rn(__fsub_rn(x[i], t.mx), inv_t))
                                          : 0.0;
            for (int h = 0; h < 2; h++)
                for (int o = 16; o > 0; o >>= 1)
                    v[h][j] += __shfl_xor_sync(SB_FULL, v[h][j], o);
        }
        __syncthreads(); // the previous round's partials have been read
        if (lane == 0)
            for (int h = 0; h < 2; h++)
                for (int j = 0; j < SB_CB; j++)
                    red[(h * SB_CB + j) * 32 + wp] = v[h][j];
        __syncthreads();
        int h = tid / SB_CB, j = tid % SB_CB;
        if (tid < 2 * SB_CB && c0 + j * SB_NT < hi) {
            const double *rr = red + (h * SB_CB + j) * 32;
            double sum = rr[0];
            for (int k = 1; k < SB_NT / 32; k++)
                sum += rr[k];
            g.csum[((size_t)r * g.NC + c0 / SB_NT + j) * 2 + h] = sum;
        }
    }
}

// Pass 3, per (slice, row) of sampled rows: the slice's probabilities (in
// place), its zeros and mass, and either its top-k head (top-k rows) or,
// for the id-order draw, its kept mass and last kept id (+1).
__global__ void __launch_bounds__(SB_NT, 1) k_sample_prob(sb_args g)
{
    __shared__ sb_shared s;
    const int r = blockIdx.y, b = blockIdx.x, tid = threadIdx.x;
    const sb_row q = sb_row_of(g, r, b, s);
    const sl_sample_row &w = q.w;
    if (q.greedy) return;
    const int lo = q.lo, hi = q.lo + q.len;
    const float *x = q.pen ? g.scratch + (int64_t)r * g.V : g.logits + r * g.ld;
    float *ps = g.scratch + (int64_t)r * g.V;
    const sb_tot t = sb_fold(g, r);
    sb_part *part = g.part + (size_t)r * g.B + b;
    auto usum_op = [](u64 a, u64 b) { return a + b; };
    auto umax_op = [](u64 a, u64 b) { return a > b ? a : b; };
    float inv_t = __fdiv_rn(1.0f, w.temperature);
    float pmax = (float)(1.0 / t.sum); // the top logit's exp is exactly 1
    float floor_p = w.min_p > 0 ? __fmul_rn(w.min_p, pmax) : 0.0f;
    // each thread rewrites what it read
    u64 nzero = 0, mass = 0, kept = 0, last = 0;
    for (int i = lo + tid; i < hi; i += SB_NT) {
        float p = (float)((double)expf(__fmul_rn(__fsub_rn(x[i], t.mx), inv_t)) / t.sum);
        ps[i] = p;
        u64 m = sb_mass(sb_key(p));
        nzero += p == 0.0f;
        mass += m;
        if (p >= floor_p) { // as sb_find_mass keeps them
            kept += m;
            last = (u64)i + 1;
        }
    }
    nzero = sb_reduce(nzero, usum_op, s);
    mass = sb_reduce(mass, usum_op, s); // the barriers inside publish ps
    kept = sb_reduce(kept, usum_op, s);
    last = sb_reduce(last, umax_op, s);
    int n = 0;
    if (q.cand) {
        size_t at = ((size_t)r * g.B + b) * SB_NT;
        n = sb_slice_head(ps + lo, q.len, lo, q.k, g.cand_v + at, g.cand_id + at, s);
    }
    if (tid == 0) {
        part->nzero = nzero;
        part->mass = mass;
        part->kept = kept;
        part->last = (int)last;
        part->n_cand = n;
    }
}

// Pass 4, one block per row: the cuts and the draw, and the logprobs.
__global__ void __launch_bounds__(SB_NT, 1) k_sample_draw(sb_args g)
{
    __shared__ sb_shared s;
    const int r = blockIdx.x, tid = threadIdx.x, V = g.V;
    const sb_row q = sb_row_of(g, r, 0, s);
    const sl_sample_row &w = q.w;
    const float *raw = g.logits + r * g.ld;
    const float *ps = g.scratch + (int64_t)r * V;
    const sb_part *part = g.part + (size_t)r * g.B;
    const sb_tot t = sb_fold(g, r);

    int32_t tok;
    if (q.greedy) {
        u64 best = 0;
        for (int b = 0; b < g.B; b++)
            best = part[b].best > best ? part[b].best : best;
        tok = (int32_t) ~(uint32_t)best;
    } else {
        float pmax = (float)(1.0 / t.sum);
        if (q.cand) { // the row's top-k is within the slices' heads, laid end to end
            size_t at = (size_t)r * g.B * SB_NT;
            float *a = g.join_v + at;
            int32_t *id = g.join_id + at;
            int n = sb_join(g.cand_v + at, g.cand_id + at, part, g.B, SB_NT, a, id, false);
            sb_pick pk = sb_select<false, false>(a, n, sb_cand{0u, 0}, (double)(q.k - 1), s);
            tok = id[sb_draw_small(a, n, sb_cand{pk.key, pk.j}, w, pmax, s)];
        } else if (q.k == V && w.top_p >= 1.0f) {
            // id-order inverse CDF: the slice where the cumulative kept mass
            // crosses u*kept, then a walk of that slice alone
            double u = (double)w.u * (double)t.kept;
            float floor_p = w.min_p > 0 ? __fmul_rn(w.min_p, pmax) : 0.0f;
            u64 base = 0;
            tok = -1;
            for (int b = 0; b < g.B && tok < 0; b++) {
                if ((double)(base + part[b].kept) > u) {
                    int lo = b * g.S, f = sb_find_mass(ps + lo, min(g.S, V - lo), floor_p, u, base, s);
                    tok = f < 0 ? -1 : lo + f;
                }
                base += part[b].kept;
            }
            if (tok < 0) // rounding left u*kept at the very end: the last kept token
                tok = t.last ? t.last - 1 : 0;
        } else {
            sb_cand c = {sb_key(0.0f), t.nzero};
            u64 cmass = t.mass;
            if (q.k < V) {
                sb_pick pk = sb_select<false, true>(ps, V, c, (double)(q.k - 1), s);
                c = sb_cand{pk.key, pk.j};
                cmass = pk.above_m + pk.j * sb_mass(pk.key);
            }
            tok = q.k <= SB_NT ? sb_draw_small(ps, V, c, w, pmax, s)
                               : sb_draw_radix(ps, V, c, cmass, w, pmax, s);
        }
    }
    if (w.logprobs) {
        float lse = __fadd_rn(t.mx_raw, (float)log(t.sum_raw));
        int n_top = 0;
        size_t at = (size_t)r * g.B * SL_SAMPLE_MAX_TOP;
        float *a = g.hjoin_v + at;
        int32_t *id = g.hjoin_id + at;
        if (w.n_top > 0) {
            int n = sb_join(g.head_v + at, g.head_id + at, part, g.B, SL_SAMPLE_MAX_TOP, a, id,
                            true);
            n_top = sb_top_raw(a, n, min(w.n_top, n), s);
        }
        if (tid == 0) {
            float *l = g.lp + r * g.lp_ld;
            l[0] = __fsub_rn(raw[tok], lse);
            l[1] = (float)n_top;
            for (int j = 0; j < n_top; j++) {
                l[2 + j] = (float)id[s.top[j]];
                l[2 + SL_SAMPLE_MAX_TOP + j] = __fsub_rn(a[s.top[j]], lse);
            }
        }
    }
    if (tid == 0) g.ids[r] = tok;
}

// Copies the host arrays into this call's half of the staging buffer and on
// to the device; returns the device copy (rows first, then pen_tok, pen_out,
// pen_prompt).
static char *stage(cu_backend *b, const sl_sample_args *a)
{
    if (!b->sample) {
        b->sample = (cu_sample_stage *)calloc(1, sizeof *b->sample);
        SL_ASSERT(b->sample && "out of memory for the sampling stage");
        for (int i = 0; i < 2; i++)
            CU_CHECK(cudaEventCreateWithFlags(&b->sample->buf[i].copied, cudaEventDisableTiming));
    }
    cu_sample_stage *st = b->sample;
    size_t rows = sizeof(sl_sample_row) * (size_t)a->n_rows,
           pen = sizeof(int32_t) * (size_t)a->n_pen;
    size_t need = rows + 3 * pen;
    auto *buf = &st->buf[st->next];
    st->next ^= 1;
    // the host half may still be the source of its previous copy
    CU_CHECK(cudaEventSynchronize(buf->copied));
    if (need > buf->cap) {
        size_t cap = need * 2 + 4096;
        CU_CHECK(cudaStreamSynchronize(b->stream)); // the old device buffer may be in use
        cudaFreeHost(buf->host);
        cudaFree(buf->dev);
        CU_CHECK(cudaMallocHost(&buf->host, cap));
        CU_CHECK(cudaMalloc(&buf->dev, cap));
        buf->cap = cap;
    }
    memcpy(buf->host, a->rows, rows);
    if (pen) {
        memcpy(buf->host + rows, a->pen_tok, pen);
        memcpy(buf->host + rows + pen, a->pen_out, pen);
        memcpy(buf->host + rows + 2 * pen, a->pen_prompt, pen);
    }
    CU_CHECK(cudaMemcpyAsync(buf->dev, buf->host, need, cudaMemcpyHostToDevice, b->stream));
    CU_CHECK(cudaEventRecord(buf->copied, b->stream));
    return buf->dev;
}

void cu_sample(sl_backend *be, sl_tensor *ids, sl_tensor *lp, const sl_tensor *logits,
               const sl_sample_args *a)
{
    cu_backend *b = cu_be(be);
    int R = a->n_rows;
    int64_t V = sl_tensor_cols(logits);
    if (R == 0) return;
    SL_ASSERT(V > 0 && V < INT32_MAX / 2);
    char *dev = stage(b, a);
    size_t rows = sizeof(sl_sample_row) * (size_t)R, pen = sizeof(int32_t) * (size_t)a->n_pen;
    sb_args g;
    g.logits = (const float *)logits->data;
    g.ld = sl_tensor_ld(logits);
    g.V = (int)V;
    g.ids = (int32_t *)ids->data;
    g.lp = lp ? (float *)lp->data : NULL;
    g.lp_ld = lp ? sl_tensor_ld(lp) : 0;
    g.rows = (const sl_sample_row *)dev;
    g.pen_tok = (const int32_t *)(dev + rows);
    g.pen_out = (const int32_t *)(dev + rows + pen);
    g.pen_prompt = (const int32_t *)(dev + rows + 2 * pen);
    g.pending = a->pending_ids ? (const int32_t *)a->pending_ids->data : NULL;
    // slices of whole chunks, enough to fill the GPU twice over
    int NC = (int)((V + SB_NT - 1) / SB_NT), B = (2 * b->n_sm + R - 1) / R;
    B = B < SB_MAXB ? B : SB_MAXB;
    B = B < NC ? B : NC;
    int per = (NC + B - 1) / B; // chunks per slice
    B = (NC + per - 1) / per;
    SL_ASSERT(R < 65536);
    g.B = B;
    g.S = per * SB_NT;
    g.NC = NC;
    size_t nrb = (size_t)R * (size_t)B, off[9], at = 0;
    const size_t bytes[9] = {
        sizeof(float) * (size_t)R * (size_t)V,          sizeof(sb_part) * nrb,
        sizeof(float) * nrb * SB_NT,                    sizeof(float) * nrb * SB_NT,
        sizeof(int32_t) * nrb * SB_NT,                  sizeof(int32_t) * nrb * SB_NT,
        2 * sizeof(float) * nrb * SL_SAMPLE_MAX_TOP,   2 * sizeof(int32_t) * nrb * SL_SAMPLE_MAX_TOP,
        2 * sizeof(double) * (size_t)R * (size_t)NC};
    for (int i = 0; i < 9; i++) {
        off[i] = at;
        at += (bytes[i] + 255) & ~(size_t)255;
    }
    char *tmp = (char *)cu_tmp_alloc(b, at);
    g.scratch = (float *)(tmp + off[0]);
    g.part = (sb_part *)(tmp + off[1]);
    g.cand_v = (float *)(tmp + off[2]);
    g.join_v = (float *)(tmp + off[3]);
    g.cand_id = (int32_t *)(tmp + off[4]);
    g.join_id = (int32_t *)(tmp + off[5]);
    g.head_v = (float *)(tmp + off[6]);
    g.hjoin_v = g.head_v + nrb * SL_SAMPLE_MAX_TOP;
    g.head_id = (int32_t *)(tmp + off[7]);
    g.hjoin_id = g.head_id + nrb * SL_SAMPLE_MAX_TOP;
    g.csum = (double *)(tmp + off[8]);
    dim3 grid((unsigned)B, (unsigned)R);
    k_sample_max<<<grid, SB_NT, 0, b->stream>>>(g);
    CU_CHECK_LAUNCH();
    k_sample_sum<<<grid, SB_NT, 0, b->stream>>>(g);
    CU_CHECK_LAUNCH();
    k_sample_prob<<<grid, SB_NT, 0, b->stream>>>(g);
    CU_CHECK_LAUNCH();
    k_sample_draw<<<(unsigned)R, SB_NT, 0, b->stream>>>(g);
    CU_CHECK_LAUNCH();
    cu_tmp_free(b, tmp);
}

void cu_sample_free(cu_backend *b)
{
    cu_sample_stage *st = b->sample;
    if (!st) return;
    for (int i = 0; i < 2; i++) {
        cudaFreeHost(st->buf[i].host);
        cudaFree(st->buf[i].dev);
        cudaEventDestroy(st->buf[i].copied);
    }
    free(st);
    b->sample = NULL;
}

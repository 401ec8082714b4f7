// kernels/cuda/sample_pass.cu: passes 1 to 3 of the sampling op (see
// sample.cu), one block per (slice, row): penalties, maxima, sums of
// exponentials, probabilities and the slices' heads.
#include "sample_select.cuh"

__device__ __forceinline__ float sb_penalize(float l, int out, int prompt, const sl_sample_row &w)
{
    // no contraction into fma: the CPU rounds each step
    if (out > 0 || prompt)
        l = l > 0 ? __fdiv_rn(l, w.repetition_penalty) : __fmul_rn(l, w.repetition_penalty);
    if (out > 0)
        l = __fsub_rn(l, __fadd_rn(__fmul_rn(w.frequency_penalty, (float)out), w.presence_penalty));
    return l;
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
        if (q.mask) // a token the grammar excludes is -inf for every later step of the op
            for (int i = lo + tid; i < hi; i += SB_NT)
                ps[i] = q.mask[i >> 5] >> (i & 31) & 1 ? raw[i] : -INFINITY;
        else
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
    float floor_p = w.min_p > 0 ? __fmul_rn(fminf(w.min_p, 1.0f), pmax) : 0.0f;
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
            if (p > 0.0f) last = (u64)i + 1; // never a masked-out (or underflowed) token
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

// kernels/cuda/sample_draw.cu: pass 4 of the sampling op (see sample.cu),
// one block per row: the cuts (top-k, top-p, min-p), the draw and the
// logprobs.
#include "sample_select.cuh"

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
        float floor_p = __fmul_rn(fminf(w.min_p, 1.0f), pmax);
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
        float floor_p = __fmul_rn(fminf(w.min_p, 1.0f), pmax);
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
            float floor_p = w.min_p > 0 ? __fmul_rn(fminf(w.min_p, 1.0f), pmax) : 0.0f;
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

// kernels/cuda/sample_select.cuh: the sampling op's radix select over
// order-preserving keys and the id-order walks that resolve its ties; used by
// the slice heads (sample_pass.cu) and the cuts and the draw (sample_draw.cu).
#ifndef SL_CUDA_SAMPLE_SELECT_CUH
#define SL_CUDA_SAMPLE_SELECT_CUH

#include "sample_impl.cuh"

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
static __device__ void sb_emit(const float *a, int V, uint32_t K, u64 r0, u64 r1,
                               int32_t *out, sb_shared &s)
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

#endif

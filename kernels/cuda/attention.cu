// kernels/cuda/attention.cu: paged attention, one kernel for prefill and
// decode (flash-decoding style, fp32 on CUDA cores).
//
// A block owns one query tile (qt consecutive tokens of one sequence, from
// the tiles prepare built), gh query heads that share one KV head, and one
// split of the key range: R = qt·gh rows reuse every K/V row the block loads
// (GQA sharing). Within the block, groups of D/8 lanes each take a key,
// every lane holding 8 of its dims (16-byte loads), and run an online softmax
// per row; the groups merge through shared memory at the end. With one split
// the block writes the normalised output; with several (long contexts and
// few tiles: decode) it writes (max, sum, acc) partials that k_attn_combine
// merges per (token, head).
#include "attention.cuh"

#define ATTN_THREADS 128

__global__ void k_kv_store(cu_mat kc, cu_mat vc, cu_mat k, cu_mat v, const int32_t *slot)
{
    int64_t t = blockIdx.x, row = slot[t];
    for (int64_t c = threadIdx.x; c < k.cols; c += blockDim.x)
        cu_mat_st(kc, row, c, cu_mat_ld(k, t, c));
    for (int64_t c = threadIdx.x; c < v.cols; c += blockDim.x)
        cu_mat_st(vc, row, c, cu_mat_ld(v, t, c));
}

void cu_kv_store(sl_backend *be, sl_tensor *kcache, sl_tensor *vcache, const sl_tensor *k,
                 const sl_tensor *v, const sl_batch_meta *m)
{
    cu_backend *b = cu_be(be);
    const cu_meta *cm = cu_meta_of(m);
    if (cm->n_tokens == 0) return;
    k_kv_store<<<cm->n_tokens, 256, 0, b->stream>>>(cu_mat_of(kcache), cu_mat_of(vcache),
                                                    cu_mat_of(k), cu_mat_of(v), cm->kv_slot);
    CU_CHECK_LAUNCH();
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
    int chunk, nsplit;                 // keys per split
    float *part;                       // [T, Hq, nsplit, D+2] when nsplit > 1
} cu_attn_args;

__device__ __forceinline__ void bf16x8_to_f32(uint4 u, float *f)
{
    const __nv_bfloat162 *h = (const __nv_bfloat162 *)&u;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 v = __bfloat1622float2(h[i]);
        f[2 * i] = v.x;
        f[2 * i + 1] = v.y;
    }
}

template <int D, int R>
__global__ void __launch_bounds__(ATTN_THREADS) k_attn(cu_attn_args a)
{
    constexpr int LPG = D / 8;            // lanes per key group
    constexpr int NG = ATTN_THREADS / LPG; // key groups per block
    __shared__ float qs[R][D];
    __shared__ float accs[R][D];
    __shared__ float ms[NG][R], ls[NG][R];

    int2 tile = a.tiles[blockIdx.x];
    int s = tile.x, i0 = tile.y;
    int n_hb = a.G / a.gh;
    int kh = blockIdx.y / n_hb, h0 = kh * a.G + (blockIdx.y % n_hb) * a.gh;
    int q0 = a.q_start[s], qn = a.q_start[s + 1] - q0, prefix = a.kv_len[s] - qn;
    int ntok = min(a.qt, qn - i0);
    int kbeg = blockIdx.z * a.chunk;
    int kend = min(kbeg + a.chunk, prefix + i0 + ntok); // last row's causal limit
    if (kbeg >= kend) return;                            // no row has keys in this split

    for (int e = threadIdx.x; e < R * D; e += ATTN_THREADS) {
        int r = e / D, d = e % D, ti = r / a.gh;
        float v = 0.0f;
        if (ti < ntok) v = cu_mat_ld(a.q, q0 + i0 + ti, (int64_t)(h0 + r % a.gh) * D + d);
        qs[r][d] = v * a.scale_log2;
        accs[r][d] = 0.0f;
    }
    __syncthreads();

    int g = threadIdx.x / LPG, gl = threadIdx.x % LPG;
    float q[R][8], acc[R][8], m[R], l[R];
    int nkv[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
        int ti = r / a.gh;
        nkv[r] = ti < ntok ? prefix + i0 + ti + 1 : 0;
        m[r] = -INFINITY;
        l[r] = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; e++) {
            q[r][e] = qs[r][gl * 8 + e];
            acc[r][e] = 0.0f;
        }
    }
    const int32_t *pages = a.page_table + (int64_t)s * a.max_pages;
    const int P = a.page_size;
    const int64_t koff = (int64_t)kh * D + gl * 8;
    // The loop bound is per warp, not per group: every lane of a warp must
    // take part in each shuffle. Keys past kend are masked. The next step's
    // K/V rows are loaded before this step's arithmetic (register double
    // buffering), so loads stay in flight while the lanes compute.
    constexpr int GPW = 32 / LPG;
    constexpr int NK = R <= 4 ? 4 : 2; // keys per lane group per step
    const int wg0 = (threadIdx.x / 32) * GPW, step = NG * NK;
    uint4 kr[NK], vr[NK];
    auto load = [&](int j0, uint4 *kd, uint4 *vd) {
#pragma unroll
        for (int kk = 0; kk < NK; kk++) {
            int j = j0 + kk;
            if (j < kend) {
                int64_t row = (int64_t)pages[j / P] * P + j % P;
                kd[kk] = *(const uint4 *)(a.kc + row * a.kld + koff);
                vd[kk] = *(const uint4 *)(a.vc + row * a.vld + koff);
            } else {
                kd[kk] = make_uint4(0, 0, 0, 0);
                vd[kk] = kd[kk];
            }
        }
    };
    load(kbeg + wg0 * NK + (g - wg0) * NK, kr, vr);
    for (int jw = kbeg + wg0 * NK; jw < kend; jw += step) {
        int j0 = jw + (g - wg0) * NK;
        uint4 kn[NK], vn[NK];
        load(j0 + step, kn, vn);
        float sc[NK][R];
#pragma unroll
        for (int kk = 0; kk < NK; kk++) {
            float kf[8];
            bf16x8_to_f32(kr[kk], kf);
#pragma unroll
            for (int r = 0; r < R; r++) {
                float d = 0.0f;
#pragma unroll
                for (int e = 0; e < 8; e++) d += q[r][e] * kf[e];
#pragma unroll
                for (int o = LPG / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
                sc[kk][r] = j0 + kk < nkv[r] && j0 + kk < kend ? d : -INFINITY;
            }
        }
        float vf[NK][8];
#pragma unroll
        for (int kk = 0; kk < NK; kk++) bf16x8_to_f32(vr[kk], vf[kk]);
#pragma unroll
        for (int r = 0; r < R; r++) {
            float mt = sc[0][r];
#pragma unroll
            for (int kk = 1; kk < NK; kk++) mt = fmaxf(mt, sc[kk][r]);
            // Lazy rescale: keep the running max unless a score exceeds it
            // by 2^8; p <= 256 is harmless in fp32 and the final merge uses
            // the same m for l and acc.
            if (mt > m[r] + 8.0f) {
                float corr = exp2f(m[r] - mt);
                m[r] = mt;
                l[r] *= corr;
#pragma unroll
                for (int e = 0; e < 8; e++) acc[r][e] *= corr;
            }
            if (m[r] == -INFINITY) continue; // nothing visible yet for this row
#pragma unroll
            for (int kk = 0; kk < NK; kk++) {
                float p = exp2f(sc[kk][r] - m[r]);
                l[r] += p;
#pragma unroll
                for (int e = 0; e < 8; e++) acc[r][e] += p * vf[kk][e];
            }
        }
#pragma unroll
        for (int kk = 0; kk < NK; kk++) {
            kr[kk] = kn[kk];
            vr[kk] = vn[kk];
        }
    }

    if (gl == 0)
#pragma unroll
        for (int r = 0; r < R; r++) {
            ms[g][r] = m[r];
            ls[g][r] = l[r];
        }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < R; r++) {
        float M = -INFINITY;
        for (int x = 0; x < NG; x++) M = fmaxf(M, ms[x][r]);
        float f = m[r] == -INFINITY ? 0.0f : exp2f(m[r] - M);
#pragma unroll
        for (int e = 0; e < 8; e++) atomicAdd(&accs[r][gl * 8 + e], acc[r][e] * f);
    }
    __syncthreads();
    for (int e = threadIdx.x; e < R * D; e += ATTN_THREADS) {
        int r = e / D, d = e % D, ti = r / a.gh;
        if (ti >= ntok || prefix + i0 + ti + 1 <= kbeg) continue; // no keys here
        float M = -INFINITY, L = 0.0f;
        for (int x = 0; x < NG; x++) M = fmaxf(M, ms[x][r]);
        for (int x = 0; x < NG; x++)
            if (ms[x][r] != -INFINITY) L += ls[x][r] * exp2f(ms[x][r] - M);
        int t = q0 + i0 + ti, h = h0 + r % a.gh;
        if (a.nsplit == 1) {
            cu_mat_st(a.out, t, (int64_t)h * D + d, accs[r][d] / L);
        } else {
            float *p = a.part + (((int64_t)t * a.Hq + h) * a.nsplit + blockIdx.z) * (D + 2);
            if (d == 0) {
                p[0] = M;
                p[1] = L;
            }
            p[2 + d] = accs[r][d];
        }
    }
}

__global__ void k_attn_combine(cu_attn_args a, int D)
{
    int t = blockIdx.x, h = blockIdx.y;
    int s = a.seq_of[t], q0 = a.q_start[s], qn = a.q_start[s + 1] - q0;
    int nkv = a.kv_len[s] - qn + (t - q0) + 1;
    int ns = (nkv + a.chunk - 1) / a.chunk;
    const float *p = a.part + ((int64_t)t * a.Hq + h) * a.nsplit * (D + 2);
    float M = -INFINITY;
    for (int x = 0; x < ns; x++) M = fmaxf(M, p[x * (D + 2)]);
    float L = 0.0f;
    for (int x = 0; x < ns; x++) L += p[x * (D + 2) + 1] * exp2f(p[x * (D + 2)] - M);
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float o = 0.0f;
        for (int x = 0; x < ns; x++) o += p[x * (D + 2) + 2 + d] * exp2f(p[x * (D + 2)] - M);
        cu_mat_st(a.out, t, (int64_t)h * D + d, o / L);
    }
}

template <int D>
static void attn_launch(cu_backend *b, const cu_attn_args &a, int R, dim3 grid)
{
    switch (R) {
    case 1: k_attn<D, 1><<<grid, ATTN_THREADS, 0, b->stream>>>(a); break;
    case 2: k_attn<D, 2><<<grid, ATTN_THREADS, 0, b->stream>>>(a); break;
    case 4: k_attn<D, 4><<<grid, ATTN_THREADS, 0, b->stream>>>(a); break;
    default: k_attn<D, 8><<<grid, ATTN_THREADS, 0, b->stream>>>(a); break;
    }
    CU_CHECK_LAUNCH();
}

void cu_attention(sl_backend *be, sl_tensor *out, const sl_tensor *q, const sl_tensor *kcache,
                  const sl_tensor *vcache, int Hq, int Hkv, int D, float scale,
                  const sl_batch_meta *m)
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
    a.gh = 1;
    for (int d = 1; d <= 8; d++)
        if (a.G % d == 0) a.gh = d;
    int level = 0;
    while (cm->max_q_len > (1 << level) && (a.gh << (level + 1)) <= 8 && level + 1 < CU_TILE_LEVELS)
        level++;
    a.qt = 1 << level;
    int R = a.gh * a.qt;
    R = R <= 1 ? 1 : R <= 2 ? 2 : R <= 4 ? 4 : 8;
    a.scale_log2 = scale * 1.4426950408889634f;
    a.tiles = cm->tiles[level];
    a.q_start = cm->q_start;
    a.kv_len = cm->kv_len;
    a.page_table = cm->page_table;
    a.seq_of = cm->seq_of;
    a.page_size = cm->page_size;
    a.max_pages = cm->max_pages;
    int n_hb = a.G / a.gh;
    int64_t base = (int64_t)cm->n_tiles[level] * Hkv * n_hb;
    int max_kv = cm->max_kv_len > 0 ? cm->max_kv_len : 1;
    int ns = (int)((4 * (int64_t)b->n_sm + base - 1) / base);
    int ns_cap = (max_kv + 255) / 256;
    if (ns > ns_cap) ns = ns_cap;
    if (ns < 1) ns = 1;
    a.chunk = (((max_kv + ns - 1) / ns) + 63) / 64 * 64;
    a.nsplit = (max_kv + a.chunk - 1) / a.chunk;
    if (a.nsplit > 1)
        a.part = (float *)cu_tmp_alloc(b, sizeof(float) * (size_t)cm->n_tokens * Hq * a.nsplit *
                                              (D + 2));
    dim3 grid((unsigned)cm->n_tiles[level], (unsigned)(Hkv * n_hb), (unsigned)a.nsplit);
    switch (D) {
    case 64: attn_launch<64>(b, a, R, grid); break;
    case 128: attn_launch<128>(b, a, R, grid); break;
    default: attn_launch<256>(b, a, R, grid); break;
    }
    if (a.nsplit > 1) {
        k_attn_combine<<<dim3((unsigned)cm->n_tokens, (unsigned)Hq), 128, 0, b->stream>>>(a, D);
        CU_CHECK_LAUNCH();
        cu_tmp_free(b, a.part);
    }
}

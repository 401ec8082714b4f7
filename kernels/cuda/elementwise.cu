// kernels/cuda/elementwise.cu: memory-bound ops, one grid-stride pass each.
// Rows go to blocks (blockIdx.x = row) so index math stays out of the loop.
#include "elementwise.cuh"

#include "fp8.cuh"
#include "sl_rng.h"

// v0: first vocabulary row of table (vocab-parallel shard); other ids give zeros
__global__ void k_embed(cu_mat out, cu_mat table, int64_t v0, const int32_t *ids, const int32_t *feed,
                        const int32_t *feed_ids)
{
    cu_pdl_wait();
    cu_pdl_trigger();
    int64_t t = blockIdx.x, row = (feed && feed[t] >= 0 ? feed_ids[feed[t]] : ids[t]) - v0;
    if (row >= 0 && row < table.rows) {
        cu_copy_row(out, t, table, row, out.cols);
        return;
    }
    for (int64_t c = threadIdx.x; c < out.cols; c += blockDim.x) cu_mat_st(out, t, c, 0.0f);
}

void cu_embed(sl_backend *be, sl_tensor *out, const sl_tensor *table, int64_t v0, const sl_batch_meta *m)
{
    cu_backend *b = cu_be(be);
    const cu_meta *cm = cu_meta_of(m);
    if (cm->n_tokens == 0) return;
    cu_launch(b, k_embed, cm->n_tokens, 256, 0, cu_mat_of(out), cu_mat_of(table), v0, cm->ids,
              m->feed_ids ? cm->feed : (const int32_t *)NULL, (const int32_t *)m->feed_ids);
}

__global__ void k_rope(cu_mat x, int n_heads, int head_dim, int half, cu_rope_freqs f,
                       const int32_t *pos)
{
    int64_t t = blockIdx.x;
    cu_pdl_wait();
    cu_pdl_trigger();
    float p = (float)pos[t];
    for (int j = threadIdx.x; j < n_heads * half; j += blockDim.x) {
        int h = j / half, i = j % half;
        float ang = p * f.v[i], s, c;
        sincosf(ang, &s, &c);
        int64_t c0 = (int64_t)h * head_dim + i, c1 = c0 + half;
        float x0 = cu_mat_ld(x, t, c0), x1 = cu_mat_ld(x, t, c1);
        cu_mat_st(x, t, c0, x0 * c - x1 * s);
        cu_mat_st(x, t, c1, x1 * c + x0 * s);
    }
}

void cu_rope(sl_backend *be, sl_tensor *x, int n_heads, int head_dim, int rot_dim, float theta,
             const sl_batch_meta *m)
{
    cu_backend *b = cu_be(be);
    const cu_meta *cm = cu_meta_of(m);
    int half = rot_dim / 2;
    SL_ASSERT(half <= 128);
    if (cm->n_tokens == 0 || half == 0) return;
    cu_rope_freqs f = cu_rope_freqs_make(theta, rot_dim);
    cu_launch(b, k_rope, cm->n_tokens, 256, 0, cu_mat_of(x), n_heads, head_dim, half, f, cm->pos);
}

// VEC: 8 elements per thread step (16-byte bf16 accesses). Q (with VEC): the
// output's FP8 codes too (sl_fp8_act; a 256-thread block's 2048 columns are
// whole 128-groups, one a half warp).
template <bool VEC, bool Q>
__global__ void k_silu_mul(cu_mat out, cu_mat gu, cu_fp8_dst q)
{
    constexpr int V = VEC ? 8 : 1;
    int64_t r = blockIdx.y;
    cu_pdl_wait();
    cu_pdl_trigger();
    cu_row_cols_all<VEC>(out.cols, [&](int64_t c, bool in) {
        float g[V] = {}, u[V];
        if (in) {
            cu_pend pg = cu_ldv_start<VEC>(gu, r, c), pu = cu_ldv_start<VEC>(gu, r, out.cols + c);
            cu_ldv_end<VEC>(pg, g);
            cu_ldv_end<VEC>(pu, u);
#pragma unroll
            for (int k = 0; k < V; k++) g[k] = g[k] / (1.0f + expf(-g[k])) * u[k];
            cu_stv<VEC>(out, r, c, g);
        }
        if constexpr (Q) fp8_quant8(q, out.dt, g, in, r, c);
    });
}

void cu_silu_mul(sl_backend *be, sl_tensor *out, const sl_tensor *gu, sl_fp8_act *q)
{
    cu_backend *b = cu_be(be);
    cu_mat O = cu_mat_of(out), G = cu_mat_of(gu);
    if (O.rows == 0) return;
    int vec = cu_mat_vec_ok(O) && cu_mat_vec_ok(G);
    cu_fp8_dst d = cu_fp8_dst_for(be, q, O, vec, O.cols);
    if (d.codes)
        cu_launch(b, k_silu_mul<true, true>, cu_row_grid(O.rows, O.cols / 8), 256, 0, O, G, d);
    else if (vec)
        cu_launch(b, k_silu_mul<true, false>, cu_row_grid(O.rows, O.cols / 8), 256, 0, O, G, d);
    else
        cu_launch(b, k_silu_mul<false, false>, cu_row_grid(O.rows, O.cols), 256, 0, O, G, d);
}

// g has x's columns, or one (a per-row gate, broadcast). Q: as k_silu_mul.
template <bool VEC, bool Q>
__global__ void k_sigmoid_mul(cu_mat x, cu_mat g, cu_fp8_dst q)
{
    constexpr int V = VEC ? 8 : 1;
    int64_t r = blockIdx.y;
    cu_pdl_wait();
    cu_pdl_trigger();
    float g1 = g.cols == 1 ? cu_mat_ld(g, r, 0) : 0.0f;
    cu_row_cols_all<VEC>(x.cols, [&](int64_t c, bool in) {
        float v[V] = {}, w[V];
        if (in) {
            cu_pend px = cu_ldv_start<VEC>(x, r, c), pg = {};
            if (g.cols != 1) pg = cu_ldv_start<VEC>(g, r, c);
            cu_ldv_end<VEC>(px, v);
            if (g.cols != 1) cu_ldv_end<VEC>(pg, w);
#pragma unroll
            for (int k = 0; k < V; k++) v[k] = v[k] / (1.0f + expf(-(g.cols == 1 ? g1 : w[k])));
            cu_stv<VEC>(x, r, c, v);
        }
        if constexpr (Q) fp8_quant8(q, x.dt, v, in, r, c);
    });
}

void cu_sigmoid_mul(sl_backend *be, sl_tensor *x, const sl_tensor *g, sl_fp8_act *q)
{
    cu_backend *b = cu_be(be);
    cu_mat X = cu_mat_of(x), G = cu_mat_of(g);
    if (X.rows == 0) return;
    int vec = cu_mat_vec_ok(X) && (G.cols == 1 || cu_mat_vec_ok(G));
    cu_fp8_dst d = cu_fp8_dst_for(be, q, X, vec, X.cols);
    if (d.codes)
        cu_launch(b, k_sigmoid_mul<true, true>, cu_row_grid(X.rows, X.cols / 8), 256, 0, X, G, d);
    else if (vec)
        cu_launch(b, k_sigmoid_mul<true, false>, cu_row_grid(X.rows, X.cols / 8), 256, 0, X, G, d);
    else
        cu_launch(b, k_sigmoid_mul<false, false>, cu_row_grid(X.rows, X.cols), 256, 0, X, G, d);
}

__global__ void k_gather_rows(cu_mat out, cu_mat x, const int32_t *idx)
{
    cu_pdl_wait();
    cu_pdl_trigger();
    int64_t i = blockIdx.y, r = idx[i];
    for (int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c < x.cols;
         c += (int64_t)gridDim.x * blockDim.x)
        cu_mat_st(out, i, c, cu_mat_ld(x, r, c));
}

void cu_gather_rows(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_batch_meta *m)
{
    cu_backend *b = cu_be(be);
    const cu_meta *cm = cu_meta_of(m);
    if (cm->n_logits == 0) return;
    cu_launch(b, k_gather_rows, cu_row_grid(cm->n_logits, sl_tensor_cols(x)), 256, 0,
              cu_mat_of(out), cu_mat_of(x), cm->logit_rows);
}

// pairs[i] = (dst, src); blockIdx.y = pair.
template <typename V>
__global__ void k_copy_slots(char *pool, int64_t row_bytes, const int32_t *dst, const int32_t *src)
{
    int i = blockIdx.y;
    V *d = (V *)(pool + dst[i] * row_bytes);
    const V *s = src[i] < 0 ? NULL : (const V *)(pool + src[i] * row_bytes);
    int64_t n = row_bytes / (int64_t)sizeof(V);
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < n;
         j += (int64_t)gridDim.x * blockDim.x) {
        V v;
        if (s) v = s[j];
        else memset(&v, 0, sizeof v);
        d[j] = v;
    }
}

void cu_copy_slots(sl_backend *be, sl_tensor *pool, const int32_t *dst, const int32_t *src, int n)
{
    cu_backend *b = cu_be(be);
    if (n == 0) return;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) SL_ASSERT(dst[i] != src[j] || i == j);
    int64_t row = sl_tensor_numel(pool) / pool->ne[0] * (int64_t)sl_dtype_size(pool->dtype);
    int32_t *pairs = (int32_t *)cu_tmp_alloc(b, sizeof(int32_t) * 2 * (size_t)n);
    CU_CHECK(cudaMemcpyAsync(pairs, dst, sizeof(int32_t) * n, cudaMemcpyHostToDevice, b->stream));
    CU_CHECK(cudaMemcpyAsync(pairs + n, src, sizeof(int32_t) * n, cudaMemcpyHostToDevice,
                             b->stream));
    uintptr_t al = (uintptr_t)pool->data | (uintptr_t)row;
    int vsz = al % 16 == 0 ? 16 : al % 4 == 0 ? 4 : 1;
    unsigned gx = cu_blocks(row / vsz, 256);
    dim3 grid(gx > 128 ? 128 : gx, (unsigned)n);
    char *p = (char *)pool->data;
    if (vsz == 16) k_copy_slots<uint4><<<grid, 256, 0, b->stream>>>(p, row, pairs, pairs + n);
    else if (vsz == 4) k_copy_slots<uint32_t><<<grid, 256, 0, b->stream>>>(p, row, pairs, pairs + n);
    else k_copy_slots<uint8_t><<<grid, 256, 0, b->stream>>>(p, row, pairs, pairs + n);
    CU_CHECK_LAUNCH();
    cu_tmp_free(b, pairs);
}

// Bit-identical to the CPU before the final rounding: the explicit _rn
// intrinsics keep the compiler from fusing scale·u + offset into one FMA.
__global__ void k_fill_random(void *p, int dt, int64_t n, uint64_t seed, float scale, float offset)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        float u = sl_rng_uniform(seed, (uint64_t)i);
        float v = __fadd_rn(offset, __fmul_rn(scale, __fsub_rn(__fmul_rn(2.0f, u), 1.0f)));
        cu_stf(p, dt, i, v);
    }
}

// Sliced fill (sl_fill_index): one block-row loop per tensor row; rows is a
// device copy of the host row list or NULL (row0 + r).
__global__ void k_fill_random_at(cu_mat t, const int64_t *rows, int64_t row0, int64_t g_cols,
                                 int64_t col0, uint64_t seed, float scale, float offset)
{
    for (int64_t r = blockIdx.x; r < t.rows; r += gridDim.x) {
        int64_t base = (rows ? rows[r] : row0 + r) * g_cols + col0;
        for (int64_t c = threadIdx.x; c < t.cols; c += blockDim.x) {
            float u = sl_rng_uniform(seed, (uint64_t)(base + c));
            cu_mat_st(t, r, c, __fadd_rn(offset, __fmul_rn(scale, __fsub_rn(__fmul_rn(2.0f, u), 1.0f))));
        }
    }
}

void cu_fill_random(sl_backend *be, sl_tensor *t, uint64_t seed, float scale, float offset,
                    const sl_fill_index *ix)
{
    cu_backend *b = cu_be(be);
    int64_t n = sl_tensor_numel(t);
    if (n == 0) return;
    if (ix) {
        int64_t R = sl_tensor_rows(t);
        int64_t *rows = NULL;
        if (ix->rows) {
            rows = (int64_t *)cu_tmp_alloc(b, sizeof(int64_t) * (size_t)R);
            CU_CHECK(cudaMemcpyAsync(rows, ix->rows, sizeof(int64_t) * (size_t)R, cudaMemcpyHostToDevice,
                                     b->stream));
            CU_CHECK(cudaStreamSynchronize(b->stream)); // ix->rows is the caller's, reused at once
        }
        unsigned g = (unsigned)(R < 65535 ? R : 65535);
        k_fill_random_at<<<g, 256, 0, b->stream>>>(cu_mat_of(t), rows, ix->row0, ix->g_cols, ix->col0,
                                                   seed, scale, offset);
        CU_CHECK_LAUNCH();
        if (rows) cu_tmp_free(b, rows);
        b->pdl_fence = 1;
        return;
    }
    unsigned g = (unsigned)(n < 8192 * 256 ? cu_blocks(n, 256) : 8192);
    k_fill_random<<<g, 256, 0, b->stream>>>(t->data, t->dtype, n, seed, scale, offset);
    CU_CHECK_LAUNCH();
    b->pdl_fence = 1; // t may be a weight the next kernel reads before its wait
}

// (v, i) becomes the better of it and (v2, i2): the larger value, the lower
// index on ties.
__device__ __forceinline__ void cu_better(float &v, int &i, float v2, int i2)
{
    if (v2 > v || (v2 == v && i2 < i)) {
        v = v2;
        i = i2;
    }
}

// The block's best of its threads' (value, index) to thread 0: warp shuffles,
// then the warps' winners through shared memory.
__device__ __forceinline__ void argmax_block(float &best, int &bi)
{
    for (int o = 16; o > 0; o >>= 1)
        cu_better(best, bi, __shfl_down_sync(0xffffffffu, best, o), __shfl_down_sync(0xffffffffu, bi, o));
    __shared__ float sv[32];
    __shared__ int si[32];
    int w = threadIdx.x / 32, l = threadIdx.x % 32;
    if (l == 0) {
        sv[w] = best;
        si[w] = bi;
    }
    __syncthreads();
    if (w == 0) {
        int nw = blockDim.x / 32;
        best = l < nw ? sv[l] : -INFINITY;
        bi = l < nw ? si[l] : 0x7fffffff;
        for (int o = 16; o > 0; o >>= 1)
            cu_better(best, bi, __shfl_down_sync(0xffffffffu, best, o), __shfl_down_sync(0xffffffffu, bi, o));
    }
}

// Argmax in two passes: one block of a row's ARGMAX_COLS-column chunk could
// not stream a 152k-vocabulary row alone (one block per row took 120 µs on
// an H200, a decode step's), so block (chunk, row) leaves its chunk's best in
// pv/pi and one block per row picks among them (lowest column on ties, as
// the CPU op: chunks are in column order).
#define ARGMAX_COLS 4096
__global__ void k_argmax_part(float *pv, int *pi, cu_mat x)
{
    int64_t r = blockIdx.y;
    cu_pdl_wait();
    cu_pdl_trigger();
    float best = -INFINITY;
    int bi = 0x7fffffff;
    int64_t c1 = min((int64_t)(blockIdx.x + 1) * ARGMAX_COLS, x.cols);
#pragma unroll 4
    for (int64_t c = (int64_t)blockIdx.x * ARGMAX_COLS + threadIdx.x; c < c1; c += blockDim.x)
        cu_better(best, bi, cu_mat_ld(x, r, c), (int)c);
    argmax_block(best, bi);
    if (threadIdx.x == 0) {
        pv[r * gridDim.x + blockIdx.x] = best;
        pi[r * gridDim.x + blockIdx.x] = bi;
    }
}

__global__ void k_argmax(int32_t *ids, const float *pv, const int *pi, int n)
{
    int64_t r = blockIdx.x;
    cu_pdl_wait();
    cu_pdl_trigger();
    float best = -INFINITY;
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < n; i += blockDim.x) cu_better(best, bi, pv[r * n + i], pi[r * n + i]);
    argmax_block(best, bi);
    if (threadIdx.x == 0) ids[r] = bi == 0x7fffffff ? 0 : bi;
}

void cu_argmax(sl_backend *be, sl_tensor *ids, const sl_tensor *x)
{
    cu_backend *b = cu_be(be);
    int64_t rows = sl_tensor_rows(x), cols = sl_tensor_cols(x);
    if (rows == 0) return;
    SL_ASSERT(rows <= 65535); // rows are gridDim.y (sampled rows: a batch)
    int n = (int)((cols + ARGMAX_COLS - 1) / ARGMAX_COLS);
    if (n < 1) n = 1;
    float *pv = (float *)cu_tmp_alloc(b, sizeof(float) * (size_t)(rows * n));
    int *pi = (int *)cu_tmp_alloc(b, sizeof(int) * (size_t)(rows * n));
    cu_launch(b, k_argmax_part, dim3((unsigned)n, (unsigned)rows), 256, 0, pv, pi, cu_mat_of(x));
    cu_launch(b, k_argmax, (unsigned)rows, 64, 0, (int32_t *)ids->data, (const float *)pv, (const int *)pi, n);
    cu_tmp_free(b, pi);
    cu_tmp_free(b, pv);
}

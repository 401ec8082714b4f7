// kernels/cuda/norm.cu: RMSNorm over groups of D = numel(w) columns (the whole
// row, or one head). One group per warp when D <= 1024 (per-head norms), one
// per block otherwise. Two passes over the group: the sum of squares, then
// the scaled write; the second read hits L1/L2. With VEC, each thread moves 8
// elements (16 bytes of bf16) at a time. The fused residual add rounds resid
// to its dtype before squaring, as the CPU op reads the stored value back.
// With Q the second pass also writes out's FP8 codes (sl_fp8_act): a half
// warp holds each 128-group (8 columns a thread, D a multiple of 128).
#include "norm.cuh"

template <bool VEC, bool Q>
__global__ void k_norm_warp(cu_norm_args a, int64_t n_groups)
{
    int64_t g = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    cu_pdl_wait();
    cu_pdl_trigger();
    if (g >= n_groups) return; // warp-uniform
    norm_group<VEC, Q>(a, g, threadIdx.x & 31, 32, [](float v) { return cu_warp_sum(v); });
}

template <bool VEC, bool Q>
__global__ void k_norm_block(cu_norm_args a)
{
    __shared__ float red[32];
    cu_pdl_wait();
    cu_pdl_trigger();
    norm_group<VEC, Q>(a, blockIdx.x, threadIdx.x, blockDim.x,
                       [&](float v) { return cu_block_sum(v, red); });
}

// The groups a row, and out's FP8 codes into q (sl_fp8_act, NULL for none)
// where made; returns whether the 8-wide form applies.
static bool norm_prepare(sl_backend *be, cu_norm_args &a, sl_fp8_act *q)
{
    int64_t D = a.w.cols;
    SL_ASSERT(D > 0 && a.x.cols % D == 0);
    a.groups_per_row = a.x.cols / D;
    bool vec = D % 8 == 0 && cu_mat_vec_ok(a.out) && cu_mat_vec_ok(a.x) &&
               cu_mat_vec_ok(a.resid) && cu_mat_vec_ok(a.z) && cu_mat_vec_ok(a.w);
    a.q = cu_fp8_dst_for(be, q, a.out, vec, D);
    return vec;
}

static void norm_launch(sl_backend *be, cu_norm_args a, sl_fp8_act *q)
{
    cu_backend *b = cu_be(be);
    int64_t D = a.w.cols, n = a.x.rows * (a.x.cols / D);
    if (n == 0) return;
    bool vec = norm_prepare(be, a, q), Q = a.q.codes != NULL;
    if (D <= 1024) {
        cu_launch(b, Q ? k_norm_warp<true, true> : vec ? k_norm_warp<true, false> : k_norm_warp<false, false>,
                  cu_blocks(n, 8), 256, 0, a, n);
    } else {
        if (vec) cu_launch(b, Q ? k_norm_block<true, true> : k_norm_block<true, false>, (unsigned)n, 256, 0, a);
        else cu_launch(b, k_norm_block<false, false>, (unsigned)n, 512, 0, a);
    }
}

void cu_rmsnorm(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *w, float eps,
                int one_plus)
{
    cu_norm_args a = {cu_mat_of(out), cu_mat_of(x), cu_norm_none(), cu_norm_none(), cu_norm_w(w), eps, one_plus, 0, {}};
    norm_launch(be, a, NULL);
}

void cu_add_rmsnorm(sl_backend *be, sl_tensor *out, sl_tensor *resid, const sl_tensor *x,
                    const sl_tensor *w, float eps, int one_plus, sl_fp8_act *q)
{
    SL_ASSERT(sl_tensor_numel(w) == sl_tensor_cols(x));
    cu_norm_args a = {cu_mat_of(out), cu_mat_of(x), cu_mat_of(resid), cu_norm_none(), cu_norm_w(w),
                      eps, one_plus, 0, {}};
    norm_launch(be, a, q);
}

static cu_norm_args gated_args(sl_tensor *out, const sl_tensor *x, const sl_tensor *z, const sl_tensor *w, float eps)
{
    cu_norm_args a = {cu_mat_of(out), cu_mat_of(x), cu_norm_none(), cu_mat_of(z), cu_norm_w(w), eps, 0, 0, {}};
    return a;
}

void cu_rmsnorm_gated(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *z,
                      const sl_tensor *w, float eps, sl_fp8_act *q)
{
    norm_launch(be, gated_args(out, x, z, w, eps), q);
}

bool cu_norm_gated_args(sl_backend *be, cu_norm_args *a, sl_tensor *out, const sl_tensor *x, const sl_tensor *z,
                        const sl_tensor *w, float eps, sl_fp8_act *q)
{
    *a = gated_args(out, x, z, w, eps);
    return norm_prepare(be, *a, q);
}

template <bool VEC>
__global__ void k_add(cu_mat out, cu_mat a, cu_mat b)
{
    constexpr int V = VEC ? 8 : 1;
    int64_t r = blockIdx.y;
    cu_pdl_wait();
    cu_pdl_trigger();
    cu_row_cols<VEC>(out.cols, [&](int64_t c) {
        float x[V], y[V];
        cu_pend pa = cu_ldv_start<VEC>(a, r, c), pb = cu_ldv_start<VEC>(b, r, c);
        cu_ldv_end<VEC>(pa, x);
        cu_ldv_end<VEC>(pb, y);
#pragma unroll
        for (int k = 0; k < V; k++) x[k] += y[k];
        cu_stv<VEC>(out, r, c, x);
    });
}

void cu_add(sl_backend *be, sl_tensor *out, const sl_tensor *a, const sl_tensor *b)
{
    cu_backend *bk = cu_be(be);
    cu_mat O = cu_mat_of(out), A = cu_mat_of(a), B = cu_mat_of(b);
    if (O.rows == 0) return;
    if (cu_mat_vec_ok(O) && cu_mat_vec_ok(A) && cu_mat_vec_ok(B))
        cu_launch(bk, k_add<true>, cu_row_grid(O.rows, O.cols / 8), 256, 0, O, A, B);
    else
        cu_launch(bk, k_add<false>, cu_row_grid(O.rows, O.cols), 256, 0, O, A, B);
}

// kernels/cuda/norm.cu: one row per warp when rows are short (per-head norms,
// D <= 1024), one row per block otherwise. Two passes over the row: the sum
// of squares, then the scaled write; the second read hits L1/L2. The fused
// residual add rounds resid to its dtype before squaring, as the CPU op reads
// the stored value back.
#include "norm.cuh"

typedef struct cu_norm_args {
    cu_mat out, x, resid, z, w; // resid.p / z.p NULL when unused
    float eps;
    int one_plus;
} cu_norm_args;

// Computes the row's inverse RMS; with a residual, first resid += x in place.
// Threads [t0, t0+nt) of a group cooperate on row r; sum() reduces over them.
template <typename Reduce>
__device__ __forceinline__ void norm_row(const cu_norm_args &a, int64_t r, int t0, int nt,
                                         Reduce sum)
{
    int64_t D = a.x.cols;
    const cu_mat &src = a.resid.p ? a.resid : a.x;
    float ss = 0.0f;
    for (int64_t c = t0; c < D; c += nt) {
        float v;
        if (a.resid.p) {
            v = cu_round(a.resid.dt, cu_mat_ld(a.resid, r, c) + cu_mat_ld(a.x, r, c));
            cu_mat_st(a.resid, r, c, v);
        } else {
            v = cu_mat_ld(a.x, r, c);
        }
        ss += v * v;
    }
    ss = sum(ss);
    float inv = 1.0f / sqrtf(ss / (float)D + a.eps);
    for (int64_t c = t0; c < D; c += nt) {
        float wv = cu_ldf(a.w.p, a.w.dt, c);
        float g = a.one_plus ? 1.0f + wv : wv;
        float y = cu_mat_ld(src, r, c) * inv * g;
        if (a.z.p) {
            float z = cu_mat_ld(a.z, r, c);
            y *= z / (1.0f + expf(-z));
        }
        cu_mat_st(a.out, r, c, y);
    }
}

__global__ void k_norm_warp(cu_norm_args a)
{
    int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (r >= a.x.rows) return;
    norm_row(a, r, threadIdx.x & 31, 32, [](float v) { return cu_warp_sum(v); });
}

__global__ void k_norm_block(cu_norm_args a)
{
    __shared__ float red[32];
    norm_row(a, blockIdx.x, threadIdx.x, blockDim.x,
             [&](float v) { return cu_block_sum(v, red); });
}

static void norm_launch(cu_backend *b, const cu_norm_args &a)
{
    if (a.x.rows == 0) return;
    if (a.x.cols <= 1024) {
        k_norm_warp<<<cu_blocks(a.x.rows, 8), 256, 0, b->stream>>>(a);
    } else {
        k_norm_block<<<(unsigned)a.x.rows, 512, 0, b->stream>>>(a);
    }
    CU_CHECK_LAUNCH();
}

static cu_mat no_mat(void)
{
    cu_mat m = {NULL, SL_DTYPE_F32, 0, 0, 0};
    return m;
}

void cu_rmsnorm(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *w, float eps,
                int one_plus)
{
    cu_norm_args a = {cu_mat_of(out), cu_mat_of(x), no_mat(), no_mat(), cu_mat_of(w), eps, one_plus};
    norm_launch(cu_be(be), a);
}

void cu_add_rmsnorm(sl_backend *be, sl_tensor *out, sl_tensor *resid, const sl_tensor *x,
                    const sl_tensor *w, float eps, int one_plus)
{
    cu_norm_args a = {cu_mat_of(out), cu_mat_of(x), cu_mat_of(resid), no_mat(), cu_mat_of(w),
                      eps, one_plus};
    norm_launch(cu_be(be), a);
}

void cu_rmsnorm_gated(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *z,
                      const sl_tensor *w, float eps)
{
    cu_norm_args a = {cu_mat_of(out), cu_mat_of(x), no_mat(), cu_mat_of(z), cu_mat_of(w), eps, 0};
    norm_launch(cu_be(be), a);
}

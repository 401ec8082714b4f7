// kernels/cuda/norm.cuh: RMSNorm family (plain, 1+w, per-head groups, fused
// residual add, gated) and the plain residual add.
#ifndef SL_CUDA_NORM_CUH
#define SL_CUDA_NORM_CUH

#include "cuda_common.cuh"
#include "fp8.cuh"

typedef struct cu_norm_args {
    cu_mat out, x, resid, z, w; // resid.p / z.p NULL when unused; w is [1, D]
    float eps;
    int one_plus;
    int64_t groups_per_row;
    cu_fp8_dst q; // Q: out's codes
} cu_norm_args;

// Threads [t0, t0+nt) of a warp or block cooperate on group g; sum() reduces
// over them.
template <bool VEC, bool Q, typename Reduce>
__device__ __forceinline__ void norm_group(const cu_norm_args &a, int64_t g, int t0, int nt,
                                           Reduce sum)
{
    constexpr int V = VEC ? 8 : 1;
    int64_t D = a.w.cols, r = g / a.groups_per_row, c0 = (g % a.groups_per_row) * D;
    const cu_mat &src = a.resid.p ? a.resid : a.x;
    float ss = 0.0f;
    for (int64_t c = (int64_t)t0 * V; c < D; c += (int64_t)nt * V) {
        float v[V];
        cu_pend px = cu_ldv_start<VEC>(a.x, r, c0 + c), pr = {}; // both loads in flight, then converted
        if (a.resid.p) pr = cu_ldv_start<VEC>(a.resid, r, c0 + c);
        cu_ldv_end<VEC>(px, v);
        if (a.resid.p) {
            float rv[V];
            cu_ldv_end<VEC>(pr, rv);
#pragma unroll
            for (int k = 0; k < V; k++) v[k] = cu_round(a.resid.dt, rv[k] + v[k]);
            cu_stv<VEC>(a.resid, r, c0 + c, v);
        }
#pragma unroll
        for (int k = 0; k < V; k++) ss += v[k] * v[k];
    }
    ss = sum(ss);
    float inv = 1.0f / sqrtf(ss / (float)D + a.eps);
    // every thread the same number of steps (fp8_quant8 shuffles)
    for (int64_t cb = 0; cb < D; cb += (int64_t)nt * V) {
        int64_t c = cb + (int64_t)t0 * V;
        bool in = c < D;
        float v[V] = {}, w[V], z[V];
        if (in) {
            cu_pend ps = cu_ldv_start<VEC>(src, r, c0 + c), pw = cu_ldv_start<VEC>(a.w, 0, c), pz = {};
            if (a.z.p) pz = cu_ldv_start<VEC>(a.z, r, c0 + c);
            cu_ldv_end<VEC>(ps, v);
            cu_ldv_end<VEC>(pw, w);
            if (a.z.p) cu_ldv_end<VEC>(pz, z);
#pragma unroll
            for (int k = 0; k < V; k++) {
                float y = v[k] * inv * (a.one_plus ? 1.0f + w[k] : w[k]);
                if (a.z.p) y *= z[k] / (1.0f + expf(-z[k]));
                v[k] = y;
            }
            cu_stv<VEC>(a.out, r, c0 + c, v);
        }
        if constexpr (Q) fp8_quant8(a.q, a.out.dt, v, in, r, c0 + c);
    }
}

void cu_rmsnorm(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *w, float eps,
                int one_plus);
void cu_add(sl_backend *be, sl_tensor *out, const sl_tensor *a, const sl_tensor *b);
void cu_add_rmsnorm(sl_backend *be, sl_tensor *out, sl_tensor *resid, const sl_tensor *x,
                    const sl_tensor *w, float eps, int one_plus, sl_fp8_act *q);
void cu_rmsnorm_gated(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *z,
                      const sl_tensor *w, float eps, sl_fp8_act *q);
// cu_rmsnorm_gated's arguments for a kernel that runs norm_group itself (out's
// codes into q where made, a->q); returns whether the 8-wide form applies.
bool cu_norm_gated_args(sl_backend *be, cu_norm_args *a, sl_tensor *out, const sl_tensor *x, const sl_tensor *z,
                        const sl_tensor *w, float eps, sl_fp8_act *q);

// An absent operand (resid, z)
__host__ __device__ inline cu_mat cu_norm_none(void)
{
    cu_mat m = {NULL, SL_DTYPE_F32, 0, 0, 0};
    return m;
}

// The norm weights w as a [1, D] row
static inline cu_mat cu_norm_w(const sl_tensor *w)
{
    cu_mat m = {w->data, w->dtype, 1, sl_tensor_numel(w), sl_tensor_numel(w)};
    return m;
}

#endif

// kernels/cuda/norm.cuh: RMSNorm family (plain, 1+w, per-head groups, fused
// residual add, gated) and the plain residual add.
#ifndef SL_CUDA_NORM_CUH
#define SL_CUDA_NORM_CUH

#include "cuda_common.cuh"

void cu_rmsnorm(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *w, float eps,
                int one_plus);
void cu_add(sl_backend *be, sl_tensor *out, const sl_tensor *a, const sl_tensor *b);
void cu_add_rmsnorm(sl_backend *be, sl_tensor *out, sl_tensor *resid, const sl_tensor *x,
                    const sl_tensor *w, float eps, int one_plus, sl_fp8_act *q);
void cu_rmsnorm_gated(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *z,
                      const sl_tensor *w, float eps, sl_fp8_act *q);

#endif

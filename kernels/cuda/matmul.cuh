// kernels/cuda/matmul.cuh: dense matmul through cuBLASLt.
#ifndef SL_CUDA_MATMUL_CUH
#define SL_CUDA_MATMUL_CUH

#include "cuda_common.cuh"

// out[M,N] = x[M,K] · w[N,K]ᵀ. bf16 operands with fp32 accumulate (an F32 or
// F16 operand is first converted to bf16), or plain fp32 when x, w and out are
// all F32. out is BF16 or F32. Row-strided views are used in place (ld).
void cu_matmul(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *w);
// FP8 through cuBLASLt (see matmul.cu): out[M,N] = Σ_g (x_q·w_q)_g · s_x · s_w
// with X the e4m3 codes [M, K] (ld: X.ld bytes) and W the e4m3 weights [N, K].
// cu_matmul_fp8_plan returns the cached plan for these operands, or NULL when
// cuBLASLt has no algorithm for them (the caller runs its own kernel).
// cu_matmul_fp8_run runs it with x's scales group-major, sx_t[g·M + m]
// (g = K / 128 group; cuBLASLt's outer-dim-major layout), and the weight's
// either per 128×128 block as checkpoints store them, sw[(n/128)·G + g]
// (w_blk), or per row group-major, sw[g·N + n]; it returns -1, having run
// nothing, when no algorithm runs: the plan is unsupported from then on.
typedef struct cu_mm_plan cu_mm_plan;
cu_mm_plan *cu_matmul_fp8_plan(cu_backend *b, cu_mat O, cu_mat X, cu_mat W, int w_blk);
int cu_matmul_fp8_run(cu_backend *b, cu_mm_plan *p, cu_mat O, cu_mat X, const float *sx_t, cu_mat W,
                      const float *sw);
// Releases the cached cuBLASLt plans.
void cu_matmul_free(cu_backend *b);

#endif

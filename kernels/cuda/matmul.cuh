// kernels/cuda/matmul.cuh: dense matmul through cuBLASLt.
#ifndef SL_CUDA_MATMUL_CUH
#define SL_CUDA_MATMUL_CUH

#include "cuda_common.cuh"

// out[M,N] = x[M,K] · w[N,K]ᵀ. bf16 operands with fp32 accumulate (an F32 or
// F16 operand is first converted to bf16), or plain fp32 when x, w and out are
// all F32. out is BF16 or F32. Row-strided views are used in place (ld).
void cu_matmul(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *w);
// Releases the cached cuBLASLt plans.
void cu_matmul_free(cu_backend *b);

#endif

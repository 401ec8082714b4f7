// kernels/cuda/gemv.cuh: decode-shaped matmul (M ≤ 16) on the tensor cores, a
// candidate beside cuBLASLt in matmul.cu's per-shape autotune.
#ifndef SL_CUDA_GEMV_CUH
#define SL_CUDA_GEMV_CUH

#include "cuda_common.cuh"

// Whether cu_gemv applies: bf16 x and w, BF16 or F32 out, M ≤ 16, K % 8 == 0,
// x and w rows 16-byte aligned (pointer and ld).
int cu_gemv_ok(const cu_mat *X, const cu_mat *W, const cu_mat *O);
// O[M,N] = X[M,K] · W[N,K]ᵀ with fp32 accumulation, on b's stream; no
// allocation, no synchronization (graph-capturable). Deterministic.
void cu_gemv(cu_backend *b, cu_mat O, cu_mat X, cu_mat W);

#endif

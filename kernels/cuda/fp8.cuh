// kernels/cuda/fp8.cuh: FP8 block-quantized matmul (sl_be_matmul_fp8).
#ifndef SL_CUDA_FP8_CUH
#define SL_CUDA_FP8_CUH

#include "cuda_common.cuh"

// out[M,N] = x[M,K] · dequant(w)ᵀ, the arithmetic of the CPU op
// (kernels/cpu/fp8.c): activations quantized per token and 128-group first
// (k_fp8_quant_act), then a GEMV (M ≤ 16) or a tiled GEMM.
void cu_matmul_fp8(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *w,
                   const sl_tensor *w_scale);

// sl_be_moe_experts_fp8 (kernels/backend.h), the arithmetic of the CPU op.
void cu_moe_experts_fp8(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *ids,
                        const sl_tensor *weights, const sl_tensor *gate_up, const sl_tensor *gate_up_scale,
                        const sl_tensor *down, const sl_tensor *down_scale);

#endif

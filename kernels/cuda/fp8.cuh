// kernels/cuda/fp8.cuh: FP8 block-quantized matmul (sl_be_matmul_fp8).
#ifndef SL_CUDA_FP8_CUH
#define SL_CUDA_FP8_CUH

#include "cuda_common.cuh"

#define FP8_G 128 // K group of one activation / weight scale

// mma.sync m16n8k32 e4m3 with fp32 accumulation: c += A(16x32) · B(32x8).
__device__ __forceinline__ void mma_e4m3(float c[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
                 "{%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// 16 weight codes of row wr at k (zeros past K); vec: one 16-byte load where whole
__device__ __forceinline__ uint4 fp8_ld16(const uint8_t *wr, int k, int K, int vec)
{
    if (vec && k + 16 <= K) return __ldg((const uint4 *)(wr + k));
    uint32_t v[4] = {0, 0, 0, 0};
    for (int i = 0; i < 16; i++)
        if (k + i < K) v[i >> 2] |= (uint32_t)wr[k + i] << (8 * (i & 3));
    return make_uint4(v[0], v[1], v[2], v[3]);
}

// Rows of x (K wide) quantized as the CPU op does: codes [rows, G·128] (the
// pad zero), scales token-major [rows, G]. Launched on b's stream (PDL).
void cu_fp8_quant(cu_backend *b, cu_mat x, int K, int rows, uint8_t *xq, float *sx);

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

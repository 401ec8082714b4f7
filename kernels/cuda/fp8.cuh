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

// 128-groups of K
__host__ __device__ __forceinline__ int fp8_groups(int64_t K) { return (int)((K + FP8_G - 1) / FP8_G); }

// acc += one 128-group of a lane's two weight rows (A[half][row g / g+8], the
// lane's 16 codes of each 64-wide half) times its token column's codes B[half],
// the group's sums scaled by the token's x0 / x1 (columns 2q, 2q+1) and the
// rows' sa / sb into fp32: the CPU op's arithmetic, in one order for every
// kernel that runs it.
__device__ __forceinline__ void fp8_group_acc(float (&acc)[4], const uint4 (&A)[2][2], const uint4 (&B)[2], float x0,
                                              float x1, float sa, float sb)
{
    float part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int h = 0; h < 2; h++) {
        mma_e4m3(part, A[h][0].x, A[h][1].x, A[h][0].y, A[h][1].y, B[h].x, B[h].y);
        mma_e4m3(part, A[h][0].z, A[h][1].z, A[h][0].w, A[h][1].w, B[h].z, B[h].w);
    }
    acc[0] += part[0] * (x0 * sa);
    acc[1] += part[1] * (x1 * sa);
    acc[2] += part[2] * (x0 * sb);
    acc[3] += part[3] * (x1 * sb);
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

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

// The per-group quantization rule (the CPU op's, kernels/cpu/fp8.c), one
// place for every kernel that quantizes: the group's scale s = max|x| / 448,
// a value's code e4m3(x / s), zero where s = 0 (an all-zero group).
__device__ __forceinline__ float fp8_scale(float amax) { return amax / SL_FP8_MAX; }
__device__ __forceinline__ uint32_t fp8_code(float x, float s) { return s > 0.0f ? cu_f32_to_e4m3(x / s) : 0u; }

// Where an op writing an activation puts its FP8 codes (sl_fp8_act): row r's
// codes at codes + r·G·128; codes NULL: none. Scales (cu_fp8_sidx) token-major,
// row r's at scales + r·G, or where m4 > 0 (more rows than the decode GEMV
// takes: cuBLASLt's, fp8_lt) the first m4 rows' group-major (g·m4 + r, the
// layout of cuBLASLt's VEC128 x scales) and the rest token-major after them
// (the GEMV's 1-3 rows past a multiple of 4).
typedef struct cu_fp8_dst {
    uint8_t *codes;
    float *scales;
    int64_t G;
    int64_t m4;
} cu_fp8_dst;

__host__ __device__ __forceinline__ int64_t cu_fp8_sidx(const cu_fp8_dst &q, int64_t r, int64_t g)
{
    return r < q.m4 ? g * q.m4 + r : q.m4 * q.G + (r - q.m4) * q.G + g;
}

// The codes of the 128-group a half warp holds, 8 consecutive values v each
// (columns c .. c+7 of row r, as the tensor of dtype dt stores them after
// rounding): the k_fp8_quant arithmetic (s = max|v|/448 over the group, codes
// e4m3(v/s), zeros where s = 0), so the same codes. Every lane of the warp
// calls it (shuffles); lanes past the row pass in = false and store nothing.
__device__ __forceinline__ void fp8_quant8(const cu_fp8_dst &q, int dt, const float (&v)[8], bool in, int64_t r,
                                           int64_t c)
{
    float x[8], mx = 0.0f;
#pragma unroll
    for (int k = 0; k < 8; k++) {
        x[k] = in ? cu_round(dt, v[k]) : 0.0f;
        mx = fmaxf(mx, fabsf(x[k]));
    }
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if (!in) return;
    float s = fp8_scale(mx);
    uint32_t w[2] = {0, 0};
#pragma unroll
    for (int k = 0; k < 8; k++) w[k >> 2] |= fp8_code(x[k], s) << (8 * (k & 3));
    *(uint2 *)(q.codes + r * q.G * FP8_G + c) = make_uint2(w[0], w[1]);
    if (c % FP8_G == 0) q.scales[cu_fp8_sidx(q, r, c / FP8_G)] = s;
}

// The same for a 128-group held one value a thread by a block of 128 threads
// (column c of row r): every thread calls it; mx: 4 floats of shared memory.
__device__ __forceinline__ void fp8_quant_block(const cu_fp8_dst &q, int dt, float v, int64_t r, int64_t c, float *mx)
{
    float x = cu_round(dt, v), m = cu_warp_max(fabsf(x));
    if ((threadIdx.x & 31) == 0) mx[threadIdx.x >> 5] = m;
    __syncthreads();
    float s = fp8_scale(fmaxf(fmaxf(mx[0], mx[1]), fmaxf(mx[2], mx[3])));
    q.codes[r * q.G * FP8_G + c] = (uint8_t)fp8_code(x, s);
    if (c % FP8_G == 0) q.scales[cu_fp8_sidx(q, r, c / FP8_G)] = s;
    __syncthreads(); // mx is reused
}

// The codes destination of an op writing y (K columns) in groups of D columns
// with 8-wide vector accesses (vec), where it makes them: y's rows fit q (up to
// FP8_LT_MIN_M rows, the decode GEMV's; with SL_CUDA_FP8_ACT=2 up to
// fp8_act_rows, those past FP8_LT_MIN_M in cuBLASLt's layout: m4), whole
// 128-groups that no norm group straddles (K, D multiples of 128), and
// SL_CUDA_FP8_ACT not 0. Marks q as made (rows, cols); codes NULL otherwise.
cu_fp8_dst cu_fp8_dst_for(sl_backend *be, sl_fp8_act *q, cu_mat y, int vec, int64_t D);

// Rows of x (K wide) quantized as the CPU op does: codes [rows, G·128] (the
// pad zero), scales token-major [rows, G]. Launched on b's stream (PDL).
void cu_fp8_quant(cu_backend *b, cu_mat x, int K, int rows, uint8_t *xq, float *sx);

// out[M,N] = x[M,K] · dequant(w)ᵀ, the arithmetic of the CPU op
// (kernels/cpu/fp8.c): activations quantized per token and 128-group first
// (k_fp8_quant_act), then a GEMV (M ≤ 16) or a tiled GEMM.
void cu_matmul_fp8(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *w,
                   const sl_tensor *w_scale, const sl_fp8_act *xa);

// The weights' group-major scale copies (fp8.cu fp8_st_cached): forget drops
// those of scales in [base, base + bytes) (an allocation cu_release frees),
// free all of them.
void cu_fp8_st_forget(cu_backend *b, const void *base, size_t bytes);
void cu_fp8_st_free(cu_backend *b);

// Bytes of k_fp8_moe_one's counters (the backend allocates them zeroed)
size_t cu_moe1_sync_bytes(void);

// sl_be_moe_experts_fp8 (kernels/backend.h), the arithmetic of the CPU op.
void cu_moe_experts_fp8(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *ids,
                        const sl_tensor *weights, const sl_tensor *gate_up, const sl_tensor *gate_up_scale,
                        const sl_tensor *down, const sl_tensor *down_scale);

#endif

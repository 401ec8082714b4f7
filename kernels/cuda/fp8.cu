// kernels/cuda/fp8.cu: FP8 (e4m3, 128-wide K groups) matmuls, checked against
// kernels/cpu/fp8.c by tests/gpu/ops/ops_fp8.c.
//
// 1. k_fp8_quant_act: one block of 128 threads per (token, group): s = max|x|/448,
//    codes e4m3(x/s) (s = 0: zero codes, no NaN), as the CPU op. Codes [M, K]
//    u8 and scales [M, G] f32 go to stream-ordered scratch.
// 2. k_fp8_gemv (M ≤ 16, decode): one warp per weight row; each lane loads 16
//    codes (one uint4) at a time, so 8 lanes cover one 128-group; the 16
//    products of each token are summed in fp32 and scaled by s_x·s_w of the
//    group before the warp reduction. The CPU sums the whole group before
//    scaling: results agree to fp32 rounding, not bit for bit.
// 3. k_fp8_gemm (prefill): 64×64 output tiles, 256 threads with 4×4 outputs
//    each; per 128-group, 32-wide K slices of decoded codes are staged in shared
//    memory and the group's partial sums are scaled into the fp32 accumulator
//    once per group. CUDA cores only: the first correct version. Next steps:
//    mma.sync m16n8k32 e4m3 (or wgmma) on the same staging, with the per-group
//    rescale of the mma accumulator.
#include "fp8.cuh"

#define FP8_G 128

__global__ void k_fp8_quant_act(cu_mat x, uint8_t *xq, float *sx, int G)
{
    __shared__ float red[4];
    cu_pdl_wait(); // PDL (cuda_common.cuh): wait before reading x / writing
    cu_pdl_trigger();
    int m = blockIdx.y, g = blockIdx.x, k = g * FP8_G + threadIdx.x;
    float v = k < x.cols ? cu_mat_ld(x, m, k) : 0.0f;
    float a = cu_warp_max(fabsf(v));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = a;
    __syncthreads();
    a = fmaxf(fmaxf(red[0], red[1]), fmaxf(red[2], red[3]));
    float s = a / SL_FP8_MAX;
    // an all-zero group: s = 0 and zero codes (x / 0 would be NaN)
    if (k < x.cols) xq[(int64_t)m * x.cols + k] = s > 0.0f ? cu_f32_to_e4m3(v / s) : 0;
    if (threadIdx.x == 0) sx[(int64_t)m * G + g] = s;
}

typedef struct fp8_args {
    const uint8_t *w, *xq;
    const float *ws, *sx;
    int64_t ldw, ldws;
    int M, N, K, G, srow_shift;
    cu_mat out;
} fp8_args;

#define GV8_MAXM 16

__global__ void __launch_bounds__(256) k_fp8_gemv(fp8_args a)
{
    cu_pdl_wait();
    cu_pdl_trigger();
    int lane = threadIdx.x & 31;
    int n = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (n >= a.N) return;
    const uint8_t *wr = a.w + n * a.ldw;
    const float *wsr = a.ws + (int64_t)(n >> a.srow_shift) * a.ldws;
    float acc[GV8_MAXM];
#pragma unroll
    for (int m = 0; m < GV8_MAXM; m++) acc[m] = 0.0f;
    bool vec = (a.K % 16) == 0 && ((uintptr_t)wr % 16) == 0;
    if (vec) {
        for (int k0 = lane * 16; k0 < a.K; k0 += 32 * 16) {
            uint4 u = *(const uint4 *)(wr + k0);
            const uint8_t *wb = (const uint8_t *)&u;
            float wf[16];
#pragma unroll
            for (int i = 0; i < 16; i++) wf[i] = cu_e4m3_to_f32(wb[i]);
            int g = k0 / FP8_G;
            float sw = wsr[g];
#pragma unroll
            for (int m = 0; m < GV8_MAXM; m++) {
                if (m >= a.M) break;
                const uint8_t *xr = a.xq + (int64_t)m * a.K + k0;
                uint4 xu = *(const uint4 *)xr;
                const uint8_t *xb = (const uint8_t *)&xu;
                float p = 0.0f;
#pragma unroll
                for (int i = 0; i < 16; i++) p += cu_e4m3_to_f32(xb[i]) * wf[i];
                acc[m] += p * (a.sx[(int64_t)m * a.G + g] * sw);
            }
        }
    } else { // any K or alignment: one code per lane and step
        for (int k = lane; k < a.K; k += 32) {
            float wf = cu_e4m3_to_f32(wr[k]);
            int g = k / FP8_G;
            for (int m = 0; m < a.M; m++)
                acc[m] += cu_e4m3_to_f32(a.xq[(int64_t)m * a.K + k]) * wf * (a.sx[(int64_t)m * a.G + g] * wsr[g]);
        }
    }
#pragma unroll
    for (int m = 0; m < GV8_MAXM; m++) {
        if (m >= a.M) break;
        float v = cu_warp_sum(acc[m]);
        if (lane == 0) cu_mat_st(a.out, m, n, v);
    }
}

#define TM 64
#define TN 64
#define TK 32

__global__ void __launch_bounds__(256) k_fp8_gemm(fp8_args a)
{
    __shared__ float xs[TK][TM + 1], wsm[TK][TN + 1];
    cu_pdl_wait();
    cu_pdl_trigger();
    int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    int m0 = blockIdx.y * TM, n0 = blockIdx.x * TN;
    float acc[4][4] = {}, part[4][4];
    for (int g = 0; g < a.G; g++) {
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < 4; j++) part[i][j] = 0.0f;
        int kend = min((g + 1) * FP8_G, a.K);
        for (int k0 = g * FP8_G; k0 < kend; k0 += TK) {
            // stage TK columns of 64 x rows and 64 w rows (decoded; zeros outside)
            for (int i = threadIdx.x; i < TK * TM; i += 256) {
                int r = i / TK, c = i % TK, k = k0 + c;
                int m = m0 + r, n = n0 + r;
                xs[c][r] = (m < a.M && k < kend) ? cu_e4m3_to_f32(a.xq[(int64_t)m * a.K + k]) : 0.0f;
                wsm[c][r] = (n < a.N && k < kend) ? cu_e4m3_to_f32(a.w[(int64_t)n * a.ldw + k]) : 0.0f;
            }
            __syncthreads();
#pragma unroll 8
            for (int c = 0; c < TK; c++) {
                float xv[4], wv[4];
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    xv[i] = xs[c][ty * 4 + i];
                    wv[i] = wsm[c][tx * 4 + i];
                }
#pragma unroll
                for (int i = 0; i < 4; i++)
#pragma unroll
                    for (int j = 0; j < 4; j++) part[i][j] += xv[i] * wv[j];
            }
            __syncthreads();
        }
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int m = m0 + ty * 4 + i;
            float s = m < a.M ? a.sx[(int64_t)m * a.G + g] : 0.0f;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                int n = n0 + tx * 4 + j;
                float sw = n < a.N ? a.ws[(int64_t)(n >> a.srow_shift) * a.ldws + g] : 0.0f;
                acc[i][j] += part[i][j] * (s * sw);
            }
        }
    }
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int m = m0 + ty * 4 + i, n = n0 + tx * 4 + j;
            if (m < a.M && n < a.N) cu_mat_st(a.out, m, n, acc[i][j]);
        }
}

void cu_matmul_fp8(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *w,
                   const sl_tensor *w_scale)
{
    cu_backend *b = cu_be(be);
    int M = (int)sl_tensor_rows(x), K = (int)sl_tensor_cols(x), N = (int)sl_tensor_rows(w);
    int G = (K + FP8_G - 1) / FP8_G;
    if (M == 0) return;
    uint8_t *xq = (uint8_t *)cu_tmp_alloc(b, (size_t)M * K);
    float *sx = (float *)cu_tmp_alloc(b, sizeof(float) * (size_t)M * G);
    cu_launch(b, k_fp8_quant_act, dim3((unsigned)G, (unsigned)M), dim3(FP8_G), 0, cu_mat_of(x), xq, sx, G);
    fp8_args a;
    a.w = (const uint8_t *)w->data;
    a.xq = xq;
    a.ws = (const float *)w_scale->data;
    a.sx = sx;
    a.ldw = sl_tensor_ld(w);
    a.ldws = sl_tensor_ld(w_scale);
    a.M = M;
    a.N = N;
    a.K = K;
    a.G = G;
    a.srow_shift = sl_tensor_rows(w_scale) == N ? 0 : 7;
    a.out = cu_mat_of(out);
    if (M <= GV8_MAXM)
        cu_launch(b, k_fp8_gemv, dim3(cu_blocks(N, 8)), dim3(256), 0, a);
    else
        cu_launch(b, k_fp8_gemm, dim3(cu_blocks(N, TN), cu_blocks(M, TM)), dim3(256), 0, a);
    b->mm_last = M <= GV8_MAXM ? "fp8_gemv" : "fp8_gemm";
    cu_tmp_free(b, sx);
    cu_tmp_free(b, xq);
}

/* FP8 block-quantized matmuls on the CPU: the oracle of the arithmetic the
 * CUDA kernels (kernels/cuda/fp8.cu) and DeepGEMM / w8a8_block_fp8_matmul
 * use. Weights are e4m3 codes with one fp32 scale per 128-wide group of K
 * (per output row or per 128-row block); activations are quantized here, per
 * token and 128-wide group, just before each product. See docs/numerics.md. */
#include <math.h>
#include <stdlib.h>

#include "../backend_impl.h"
#include "cpu_ops.h"

#define G SL_FP8_BLOCK

static int64_t n_groups(int64_t K) { return (K + G - 1) / G; }

/* x[K] -> xq[K] (the e4m3 values as floats) and sx[ceil(K/128)]:
 * s = max|x_g| / 448, xq = e4m3(x / s). An all-zero group has s = 0: its
 * codes are 0 (x / 0 would be NaN), and it contributes 0 to every product. */
void sl_cpu_fp8_quant_row(const float *x, int64_t K, float *xq, float *sx)
{
    for (int64_t g = 0; g < n_groups(K); g++) {
        int64_t k0 = g * G, k1 = k0 + G < K ? k0 + G : K;
        float amax = 0.0f;
        for (int64_t k = k0; k < k1; k++) amax = fmaxf(amax, fabsf(x[k]));
        float s = amax / SL_FP8_MAX;
        sx[g] = s;
        for (int64_t k = k0; k < k1; k++) xq[k] = s > 0.0f ? sl_e4m3_to_f32(sl_f32_to_e4m3(x[k] / s)) : 0.0f;
    }
}

/* Σ_g (Σ_{k∈g} xq[k]·w[k]) · (sx[g]·ws[g]), in this order, fp32. lut decodes
 * the e4m3 codes of the weight row w. */
static float dot_fp8(const float *xq, const float *sx, const uint8_t *w, const float *ws, int64_t K,
                     const float *lut)
{
    float acc = 0.0f;
    for (int64_t g = 0; g < n_groups(K); g++) {
        int64_t k0 = g * G, k1 = k0 + G < K ? k0 + G : K;
        float p = 0.0f;
        for (int64_t k = k0; k < k1; k++) p += xq[k] * lut[w[k]];
        acc += p * (sx[g] * ws[g]);
    }
    return acc;
}

static void make_lut(float *lut)
{
    for (int v = 0; v < 256; v++) lut[v] = sl_e4m3_to_f32((uint8_t)v);
}

static float ld2(const sl_tensor *t, int64_t r, int64_t c)
{
    return sl_load_f32(t->data, t->dtype, r * sl_tensor_ld(t) + c);
}

static void st2(sl_tensor *t, int64_t r, int64_t c, float v)
{
    int64_t i = r * sl_tensor_ld(t) + c;
    switch (t->dtype) {
    case SL_DTYPE_F32: ((float *)t->data)[i] = v; break;
    case SL_DTYPE_BF16: ((uint16_t *)t->data)[i] = sl_f32_to_bf16(v); break;
    case SL_DTYPE_F16: ((uint16_t *)t->data)[i] = sl_f32_to_f16(v); break;
    default: SL_ASSERT(0 && "fp8 matmul output must be a float dtype");
    }
}

void sl_cpu_fp8_act_make(sl_backend *be, sl_fp8_act *q, const sl_tensor *y)
{
    int64_t M = sl_tensor_rows(y), K = sl_tensor_cols(y), NG = n_groups(K);
    if (!sl_fp8_act_fits(be, q, M, K)) return;
    float *yr = malloc(sizeof(float) * (size_t)K), *yq = malloc(sizeof(float) * (size_t)K);
    SL_ASSERT(yr && yq);
    for (int64_t m = 0; m < M; m++) {
        uint8_t *codes = (uint8_t *)q->codes.data + m * NG * G;
        for (int64_t k = 0; k < K; k++) yr[k] = ld2(y, m, k);
        sl_cpu_fp8_quant_row(yr, K, yq, (float *)q->scales.data + m * NG);
        for (int64_t k = 0; k < NG * G; k++) codes[k] = k < K ? sl_f32_to_e4m3(yq[k]) : 0; /* exact */
    }
    free(yr);
    free(yq);
    q->rows = M;
    q->cols = K;
}

void sl_cpu_matmul_fp8(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *w,
                       const sl_tensor *w_scale, const sl_fp8_act *xa)
{
    (void)be;
    int64_t M = sl_tensor_rows(x), K = sl_tensor_cols(x), N = sl_tensor_rows(w), NG = n_groups(K);
    int64_t SR = sl_tensor_rows(w_scale);
    SL_ASSERT(w->dtype == SL_DTYPE_F8E4M3 && w_scale->dtype == SL_DTYPE_F32);
    SL_ASSERT(sl_tensor_cols(w) == K && sl_tensor_cols(w_scale) == NG);
    SL_ASSERT(SR == N || SR == n_groups(N));
    int shift = SR == N ? 0 : 7; /* scale row of output row n: n or n / 128 */
    float lut[256], *xr = malloc(sizeof(float) * (size_t)K), *xq = malloc(sizeof(float) * (size_t)K);
    float *sx = malloc(sizeof(float) * (size_t)NG);
    make_lut(lut);
    for (int64_t i = 0; i < M; i++) {
        if (xa) { /* the codes the op that wrote x made (sl_fp8_act) */
            const uint8_t *codes = (const uint8_t *)xa->codes.data + i * NG * G;
            for (int64_t k = 0; k < K; k++) xq[k] = lut[codes[k]];
            for (int64_t g = 0; g < NG; g++) sx[g] = ((const float *)xa->scales.data)[i * NG + g];
        } else {
            for (int64_t k = 0; k < K; k++) xr[k] = ld2(x, i, k);
            sl_cpu_fp8_quant_row(xr, K, xq, sx);
        }
        for (int64_t n = 0; n < N; n++) {
            const uint8_t *wr = (const uint8_t *)w->data + n * sl_tensor_ld(w);
            const float *ws = (const float *)w_scale->data + (n >> shift) * sl_tensor_ld(w_scale);
            st2(out, i, n, dot_fp8(xq, sx, wr, ws, K, lut));
        }
    }
    free(xr);
    free(xq);
    free(sx);
}

void sl_cpu_moe_experts_fp8(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *ids,
                            const sl_tensor *weights, const sl_tensor *gate_up,
                            const sl_tensor *gate_up_scale, const sl_tensor *down,
                            const sl_tensor *down_scale)
{
    (void)be;
    int64_t T = sl_tensor_rows(x), H = sl_tensor_cols(x), I = down->ne[2];
    int64_t GH = n_groups(H), GI = n_groups(I);
    int k = (int)sl_tensor_cols(ids);
    SL_ASSERT(gate_up->dtype == SL_DTYPE_F8E4M3 && down->dtype == SL_DTYPE_F8E4M3);
    SL_ASSERT(gate_up_scale->ne[1] == 2 * I && gate_up_scale->ne[2] == GH);
    SL_ASSERT(down_scale->ne[1] == H && down_scale->ne[2] == GI);
    float lut[256];
    make_lut(lut);
    float *xr = malloc(sizeof(float) * (size_t)H), *xq = malloc(sizeof(float) * (size_t)H);
    float *sx = malloc(sizeof(float) * (size_t)GH), *h = malloc(sizeof(float) * (size_t)(2 * I));
    float *hq = malloc(sizeof(float) * (size_t)I), *sh = malloc(sizeof(float) * (size_t)GI);
    float *acc = malloc(sizeof(float) * (size_t)H);
    for (int64_t t = 0; t < T; t++) {
        for (int64_t c = 0; c < H; c++) {
            xr[c] = ld2(x, t, c);
            acc[c] = 0.0f;
        }
        sl_cpu_fp8_quant_row(xr, H, xq, sx);
        const int32_t *idr = (const int32_t *)ids->data + t * sl_tensor_ld(ids);
        const float *wr = (const float *)weights->data + t * sl_tensor_ld(weights);
        for (int j = 0; j < k; j++) {
            int64_t e = idr[j];
            const uint8_t *gu = (const uint8_t *)gate_up->data + e * gate_up->st[0];
            const float *gus = (const float *)gate_up_scale->data + e * gate_up_scale->st[0];
            const uint8_t *dn = (const uint8_t *)down->data + e * down->st[0];
            const float *dns = (const float *)down_scale->data + e * down_scale->st[0];
            for (int64_t o = 0; o < 2 * I; o++) h[o] = dot_fp8(xq, sx, gu + o * H, gus + o * GH, H, lut);
            for (int64_t o = 0; o < I; o++) h[o] = h[o] / (1.0f + expf(-h[o])) * h[I + o];
            sl_cpu_fp8_quant_row(h, I, hq, sh);
            for (int64_t c = 0; c < H; c++) acc[c] += wr[j] * dot_fp8(hq, sh, dn + c * I, dns + c * GI, I, lut);
        }
        for (int64_t c = 0; c < H; c++) st2(out, t, c, acc[c]);
    }
    free(xr);
    free(xq);
    free(sx);
    free(h);
    free(hq);
    free(sh);
    free(acc);
}

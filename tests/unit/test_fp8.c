/* FP8 (e4m3, 128×128 block scales): conversions, the CPU matmul_fp8 and
 * experts_fp8 ops against double-precision references, and the loader's
 * quantization_config / weight_scale_inv checks. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "model.h"
#include "sl_rng.h"
#include "sl_test.h"

/* ---- conversions ---------------------------------------------------------- */

/* The 256 codes decoded from the format's definition. */
static double e4m3_ref(int v)
{
    int s = v >> 7, e = (v >> 3) & 15, m = v & 7;
    double x = e == 0 ? m * ldexp(1.0, -9) : (8 + m) * ldexp(1.0, e - 10);
    return s ? -x : x;
}

static void test_conversions(void)
{
    /* every code decodes as defined and re-encodes to itself (NaN: 0x7f/0xff) */
    for (int v = 0; v < 256; v++) {
        float f = sl_e4m3_to_f32((uint8_t)v);
        if ((v & 0x7f) == 0x7f) {
            CHECK(isnan(f));
            CHECK(sl_f32_to_e4m3(f) == (uint8_t)((v & 0x80) | 0x7f));
            continue;
        }
        CHECK_MSG((double)f == e4m3_ref(v), "code %#x: %g", v, f);
        uint8_t back = sl_f32_to_e4m3(f);
        CHECK_MSG(back == v || (f == 0.0f && (back & 0x7f) == 0), "code %#x -> %g -> %#x", v, f, back);
    }
    CHECK(sl_e4m3_to_f32(0x7e) == 448.0f && sl_e4m3_to_f32(0x01) == ldexpf(1.0f, -9));
    CHECK(sl_e4m3_to_f32(0x08) == ldexpf(1.0f, -6));
    /* exhaustive nearest-even: between each pair of adjacent positive codes, the
     * midpoint goes to the even code, just below to the lower, just above to the upper */
    for (int v = 0; v < 0x7e; v++) {
        float lo = sl_e4m3_to_f32((uint8_t)v), hi = sl_e4m3_to_f32((uint8_t)(v + 1));
        float mid = (lo + hi) / 2; /* exact in f32 */
        CHECK_MSG(sl_f32_to_e4m3(mid) == ((v & 1) ? v + 1 : v), "tie between %#x and %#x", v, v + 1);
        CHECK(sl_f32_to_e4m3(nextafterf(mid, 0.0f)) == v);
        CHECK(sl_f32_to_e4m3(nextafterf(mid, 1000.0f)) == v + 1);
        CHECK(sl_f32_to_e4m3(-nextafterf(mid, 1000.0f)) == (0x80 | (v + 1)));
    }
    /* saturation: above 448 (even where plain RNE would overflow), inf */
    CHECK(sl_f32_to_e4m3(448.0f) == 0x7e && sl_f32_to_e4m3(463.9f) == 0x7e);
    CHECK(sl_f32_to_e4m3(464.0f) == 0x7e && sl_f32_to_e4m3(1e30f) == 0x7e);
    CHECK(sl_f32_to_e4m3(INFINITY) == 0x7e && sl_f32_to_e4m3(-INFINITY) == 0xfe);
    CHECK(sl_f32_to_e4m3(-500.0f) == 0xfe);
    /* underflow: half the smallest subnormal ties to zero, anything above rounds up */
    CHECK(sl_f32_to_e4m3(ldexpf(1.0f, -10)) == 0x00);
    CHECK(sl_f32_to_e4m3(nextafterf(ldexpf(1.0f, -10), 1.0f)) == 0x01);
    CHECK(sl_f32_to_e4m3(1e-30f) == 0x00 && sl_f32_to_e4m3(-1e-30f) == 0x80);
    CHECK(sl_f32_to_e4m3(ldexpf(1.5f, -9)) == 0x02); /* tie 1.5 units -> even 2 */
    CHECK(sl_f32_to_e4m3(ldexpf(2.5f, -9)) == 0x02); /* tie 2.5 units -> even 2 */
    CHECK(sl_f32_to_e4m3(NAN) == 0x7f);
    CHECK(sl_dtype_size(SL_DTYPE_F8E4M3) == 1 && !strcmp(sl_dtype_name(SL_DTYPE_F8E4M3), "f8e4m3"));
}

/* block quantization: scales, codes, partial edge blocks and zero blocks */
static void test_quantize_blocks(void)
{
    enum { R = 200, C = 192 };
    float *w = malloc(sizeof(float) * R * C);
    uint8_t *q = malloc(R * C);
    float s[2 * 2];
    for (int i = 0; i < R * C; i++) w[i] = 2.0f * sl_rng_uniform(7, (uint64_t)i) - 1.0f;
    for (int r = 128; r < R; r++) /* bottom-right block all zero */
        for (int c = 128; c < C; c++) w[r * C + c] = 0.0f;
    sl_fp8_quantize_blocks(w, R, C, q, s);
    CHECK(s[3] == 0.0f);
    for (int rb = 0; rb < 2; rb++)
        for (int cb = 0; cb < 2; cb++) {
            float amax = 0;
            for (int r = rb * 128; r < R && r < rb * 128 + 128; r++)
                for (int c = cb * 128; c < C && c < cb * 128 + 128; c++) amax = fmaxf(amax, fabsf(w[r * C + c]));
            CHECK(s[rb * 2 + cb] == amax / 448.0f);
        }
    double err = 0, ref = 0;
    int has448 = 0;
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) {
            float sc = s[(r / 128) * 2 + c / 128];
            float deq = sl_e4m3_to_f32(q[r * C + c]) * sc;
            if ((q[r * C + c] & 0x7f) == 0x7e) has448 = 1;
            err += (deq - w[r * C + c]) * (double)(deq - w[r * C + c]);
            ref += w[r * C + c] * (double)w[r * C + c];
            if (sc == 0.0f) CHECK(q[r * C + c] == 0);
        }
    CHECK(has448);
    CHECK_MSG(sqrt(err / ref) < 0.04, "block quantization rel err %g", sqrt(err / ref));
    free(w);
    free(q);
}

/* ---- ops ------------------------------------------------------------------- */

static float urand(uint64_t seed, uint64_t i) { return 2.0f * sl_rng_uniform(seed, i) - 1.0f; }

/* The same arithmetic in double: activations quantized exactly as specified
 * (the quantization itself is f32: it defines the codes), then every sum in
 * double. srow_shift: 0 (scale per row) or 7 (per 128-row block). */
static void ref_fp8(double *y, const float *x, int M, int K, const uint8_t *w, const float *ws, int N,
                    int srow_shift)
{
    int NG = (K + 127) / 128;
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double acc = 0;
            for (int g = 0; g < NG; g++) {
                int k1 = g * 128 + 128 < K ? g * 128 + 128 : K;
                float amax = 0;
                for (int k = g * 128; k < k1; k++) amax = fmaxf(amax, fabsf(x[m * K + k]));
                float sx = amax / 448.0f;
                double p = 0;
                for (int k = g * 128; k < k1; k++) {
                    double xq = sx > 0 ? sl_e4m3_to_f32(sl_f32_to_e4m3(x[m * K + k] / sx)) : 0.0;
                    p += xq * sl_e4m3_to_f32(w[n * K + k]);
                }
                acc += p * sx * ws[(n >> srow_shift) * NG + g];
            }
            y[m * N + n] = acc;
        }
}

/* fp8 weights from random f32 ones: codes, block scales and per-row scales */
typedef struct qw {
    int N, K;
    float *w;      /* [N, K] original */
    uint8_t *q;    /* [N, K] */
    float *sblk;   /* [ceil(N/128), ceil(K/128)] */
    float *srow;   /* [N, ceil(K/128)] */
} qw;

static qw qw_make(int N, int K, uint64_t seed)
{
    qw a = {.N = N, .K = K};
    int NG = (K + 127) / 128, NB = (N + 127) / 128;
    a.w = malloc(sizeof(float) * (size_t)N * K);
    a.q = malloc((size_t)N * K);
    a.sblk = malloc(sizeof(float) * (size_t)NB * NG);
    a.srow = malloc(sizeof(float) * (size_t)N * NG);
    for (int i = 0; i < N * K; i++) a.w[i] = urand(seed, (uint64_t)i) * (1.0f + (float)(i % 7));
    sl_fp8_quantize_blocks(a.w, N, K, a.q, a.sblk);
    for (int n = 0; n < N; n++)
        for (int g = 0; g < NG; g++) a.srow[n * NG + g] = a.sblk[(n / 128) * NG + g];
    return a;
}

static void qw_free(qw *a)
{
    free(a->w);
    free(a->q);
    free(a->sblk);
    free(a->srow);
}

static void test_matmul_fp8(int M, int N, int K)
{
    sl_backend *be = sl_backend_cpu_new();
    CHECK(sl_be_supports_op(be, SL_OP_MATMUL_FP8) && sl_be_supports_op(be, SL_OP_MOE_EXPERTS_FP8));
    qw a = qw_make(N, K, 11 + (uint64_t)N);
    int NG = (K + 127) / 128, NB = (N + 127) / 128;
    float *x = malloc(sizeof(float) * (size_t)M * K);
    for (int i = 0; i < M * K; i++) x[i] = urand(5, (uint64_t)i) * 3.0f;
    if (M > 1) /* row 0, group 0 all zero: s_x = 0 */
        for (int k = 0; k < K && k < 128; k++) x[k] = 0.0f;
    sl_tensor xt = sl_tensor_make(x, SL_DTYPE_F32, 2, (int64_t[]){M, K});
    sl_tensor wt = sl_tensor_make(a.q, SL_DTYPE_F8E4M3, 2, (int64_t[]){N, K});
    sl_tensor sr = sl_tensor_make(a.srow, SL_DTYPE_F32, 2, (int64_t[]){N, NG});
    sl_tensor sb = sl_tensor_make(a.sblk, SL_DTYPE_F32, 2, (int64_t[]){NB, NG});
    float *y1 = malloc(sizeof(float) * (size_t)M * N), *y2 = malloc(sizeof(float) * (size_t)M * N);
    float *yd = malloc(sizeof(float) * (size_t)M * N), *yf = malloc(sizeof(float) * (size_t)M * N);
    double *yr = malloc(sizeof(double) * (size_t)M * N);
    sl_tensor o1 = sl_tensor_make(y1, SL_DTYPE_F32, 2, (int64_t[]){M, N});
    sl_tensor o2 = sl_tensor_make(y2, SL_DTYPE_F32, 2, (int64_t[]){M, N});
    sl_be_matmul_fp8(be, &o1, &xt, &wt, &sr, NULL);
    sl_be_matmul_fp8(be, &o2, &xt, &wt, &sb, NULL);
    CHECK(!memcmp(y1, y2, sizeof(float) * (size_t)M * N)); /* per-row and per-block scales agree */
    ref_fp8(yr, x, M, K, a.q, a.sblk, N, 7);
    double err = 0, ref = 0;
    for (int i = 0; i < M * N; i++) {
        err += (y1[i] - yr[i]) * (y1[i] - yr[i]);
        ref += yr[i] * yr[i];
        CHECK(isfinite(y1[i]));
    }
    CHECK_MSG(sqrt(err / ref) < 1e-6, "M=%d N=%d K=%d: vs double reference %g", M, N, K, sqrt(err / ref));
    /* loose: the plain f32 matmul with dequantized weights and unquantized x */
    float *wd = malloc(sizeof(float) * (size_t)N * K);
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++) wd[n * K + k] = sl_e4m3_to_f32(a.q[n * K + k]) * a.sblk[(n / 128) * NG + k / 128];
    sl_tensor wdt = sl_tensor_make(wd, SL_DTYPE_F32, 2, (int64_t[]){N, K});
    sl_tensor od = sl_tensor_make(yd, SL_DTYPE_F32, 2, (int64_t[]){M, N});
    sl_be_matmul(be, &od, &xt, &wdt);
    double rd = sl_test_rel_l2(y1, yd, (long)M * N);
    CHECK_MSG(rd > 0 && rd < 0.05, "M=%d N=%d K=%d: vs dequantized matmul %g", M, N, K, rd);
    /* and against the unquantized weights: further, but still close */
    sl_tensor wft = sl_tensor_make(a.w, SL_DTYPE_F32, 2, (int64_t[]){N, K});
    sl_tensor of = sl_tensor_make(yf, SL_DTYPE_F32, 2, (int64_t[]){M, N});
    sl_be_matmul(be, &of, &xt, &wft);
    double rf = sl_test_rel_l2(y1, yf, (long)M * N);
    CHECK_MSG(rf < 0.08, "M=%d N=%d K=%d: vs f32 weights %g", M, N, K, rf);
    free(wd);
    free(x);
    free(y1);
    free(y2);
    free(yd);
    free(yf);
    free(yr);
    qw_free(&a);
    sl_backend_free(be);
}

/* The producer ops' FP8 codes (sl_fp8_act): they are the codes matmul_fp8
 * makes of the output itself (so the same products), the matmul reads them
 * (a changed scale changes its result), and they are made only for rows up
 * to sl_be_fp8_act_rows and used only for the activation they describe. */
static void test_act_codes(void)
{
    enum { M = 3, K = 320, N = 136, GQ = 3, MAXR = 8 };
    sl_backend *be = sl_backend_cpu_new();
    CHECK(sl_be_fp8_act_rows(be) == MAXR);
    qw a = qw_make(N, K, 31);
    sl_tensor wt = sl_tensor_make(a.q, SL_DTYPE_F8E4M3, 2, (int64_t[]){N, K});
    sl_tensor st = sl_tensor_make(a.srow, SL_DTYPE_F32, 2, (int64_t[]){N, GQ});
    static uint8_t codes[(MAXR + 2) * GQ * 128];
    static float scales[(MAXR + 2) * GQ], x[(MAXR + 2) * 2 * K], r[(MAXR + 2) * K], o[(MAXR + 2) * K];
    static float w[K], y1[M * N], y2[M * N];
    for (int i = 0; i < (MAXR + 2) * 2 * K; i++) x[i] = urand(41, (uint64_t)i) * 4.0f;
    for (int i = 0; i < (MAXR + 2) * K; i++) r[i] = urand(42, (uint64_t)i);
    for (int i = 0; i < K; i++) w[i] = 0.5f + 0.5f * urand(43, (uint64_t)i);
    sl_fp8_act q = {sl_tensor_make(codes, SL_DTYPE_F8E4M3, 1, (int64_t[]){sizeof codes}),
                    sl_tensor_make(scales, SL_DTYPE_F32, 1, (int64_t[]){(MAXR + 2) * GQ}), 0, 0};
    sl_tensor xt = sl_tensor_make(x, SL_DTYPE_F32, 2, (int64_t[]){M, K});
    sl_tensor gu = sl_tensor_make(x, SL_DTYPE_F32, 2, (int64_t[]){M, 2 * K});
    sl_tensor rt = sl_tensor_make(r, SL_DTYPE_F32, 2, (int64_t[]){M, K});
    sl_tensor wn = sl_tensor_make(w, SL_DTYPE_F32, 1, (int64_t[]){K});
    sl_tensor wh = sl_tensor_make(w, SL_DTYPE_F32, 1, (int64_t[]){64});
    sl_tensor ot = sl_tensor_make(o, SL_DTYPE_F32, 2, (int64_t[]){M, K});
    sl_tensor o1 = sl_tensor_make(y1, SL_DTYPE_F32, 2, (int64_t[]){M, N});
    sl_tensor o2 = sl_tensor_make(y2, SL_DTYPE_F32, 2, (int64_t[]){M, N});
    for (int op = 0; op < 4; op++) {
        q.rows = q.cols = -1; /* the op says whether it made them */
        switch (op) {
        case 0: sl_be_add_rmsnorm(be, &ot, &rt, &xt, &wn, 1e-6f, 1, &q); break;
        case 1: sl_be_silu_mul(be, &ot, &gu, &q); break;
        case 2: sl_be_rmsnorm_gated(be, &ot, &xt, &rt, &wh, 1e-6f, &q); break;
        default: memcpy(o, x, sizeof(float) * M * K); sl_be_sigmoid_mul(be, &ot, &rt, &q); break;
        }
        CHECK_MSG(q.rows == M && q.cols == K, "op %d: codes made for %lld x %lld", op, (long long)q.rows,
                  (long long)q.cols);
        sl_be_matmul_fp8(be, &o1, &ot, &wt, &st, &q);
        sl_be_matmul_fp8(be, &o2, &ot, &wt, &st, NULL);
        CHECK_MSG(!memcmp(y1, y2, sizeof y1), "op %d: the codes' product differs from the matmul's own", op);
        for (int m = 0; m < M; m++) /* the pad past K is zero */
            for (int k = K; k < GQ * 128; k++) CHECK(codes[m * GQ * 128 + k] == 0);
    }
    /* the matmul reads them: one changed scale changes row 1's products */
    scales[1 * GQ + 2] *= 2.0f;
    sl_be_matmul_fp8(be, &o1, &ot, &wt, &st, &q);
    CHECK(memcmp(y1, y2, sizeof(float) * N) == 0 && memcmp(y1 + N, y2 + N, sizeof(float) * N) != 0);
    /* codes of another shape are not x's: ignored */
    q.rows = M - 1;
    sl_be_matmul_fp8(be, &o1, &ot, &wt, &st, &q);
    CHECK(!memcmp(y1, y2, sizeof y1));
    /* more rows than the backend makes codes for: none made */
    sl_tensor big = sl_tensor_make(x, SL_DTYPE_F32, 2, (int64_t[]){MAXR + 1, K});
    sl_tensor bigr = sl_tensor_make(r, SL_DTYPE_F32, 2, (int64_t[]){MAXR + 1, K});
    sl_tensor bigo = sl_tensor_make(o, SL_DTYPE_F32, 2, (int64_t[]){MAXR + 1, K});
    sl_be_add_rmsnorm(be, &bigo, &bigr, &big, &wn, 1e-6f, 0, &q);
    CHECK(q.rows == 0);
    /* a buffer too small for the rows: none made */
    sl_fp8_act small = q;
    small.scales = sl_tensor_make(scales, SL_DTYPE_F32, 1, (int64_t[]){M * GQ - 1});
    sl_be_silu_mul(be, &ot, &gu, &small);
    CHECK(small.rows == 0);
    qw_free(&a);
    sl_backend_free(be);
}

/* experts_fp8 against a double reference built from ref_fp8 */
static void test_experts_fp8(void)
{
    enum { T = 5, H = 192, I = 160, E = 3, KS = 2 };
    sl_backend *be = sl_backend_cpu_new();
    int GH = (H + 127) / 128, GI = (I + 127) / 128;
    qw gu[E], dn[E];
    uint8_t *guq = malloc((size_t)E * 2 * I * H), *dnq = malloc((size_t)E * H * I);
    float *gus = malloc(sizeof(float) * E * 2 * I * GH), *dns = malloc(sizeof(float) * E * H * GI);
    for (int e = 0; e < E; e++) {
        gu[e] = qw_make(2 * I, H, 100 + (uint64_t)e);
        dn[e] = qw_make(H, I, 200 + (uint64_t)e);
        memcpy(guq + (size_t)e * 2 * I * H, gu[e].q, (size_t)2 * I * H);
        memcpy(gus + (size_t)e * 2 * I * GH, gu[e].srow, sizeof(float) * 2 * I * GH);
        memcpy(dnq + (size_t)e * H * I, dn[e].q, (size_t)H * I);
        memcpy(dns + (size_t)e * H * GI, dn[e].srow, sizeof(float) * H * GI);
    }
    float x[T * H], wts[T * KS], y[T * H];
    int32_t ids[T * KS];
    for (int i = 0; i < T * H; i++) x[i] = urand(9, (uint64_t)i);
    for (int t = 0; t < T; t++) {
        ids[t * KS] = t % E;
        ids[t * KS + 1] = (t + 1) % E;
        wts[t * KS] = 0.7f;
        wts[t * KS + 1] = 0.3f;
    }
    sl_tensor xt = sl_tensor_make(x, SL_DTYPE_F32, 2, (int64_t[]){T, H});
    sl_tensor it = sl_tensor_make(ids, SL_DTYPE_I32, 2, (int64_t[]){T, KS});
    sl_tensor wt = sl_tensor_make(wts, SL_DTYPE_F32, 2, (int64_t[]){T, KS});
    sl_tensor gut = sl_tensor_make(guq, SL_DTYPE_F8E4M3, 3, (int64_t[]){E, 2 * I, H});
    sl_tensor gust = sl_tensor_make(gus, SL_DTYPE_F32, 3, (int64_t[]){E, 2 * I, GH});
    sl_tensor dnt = sl_tensor_make(dnq, SL_DTYPE_F8E4M3, 3, (int64_t[]){E, H, I});
    sl_tensor dnst = sl_tensor_make(dns, SL_DTYPE_F32, 3, (int64_t[]){E, H, GI});
    sl_tensor yt = sl_tensor_make(y, SL_DTYPE_F32, 2, (int64_t[]){T, H});
    sl_be_moe_experts_fp8(be, &yt, &xt, &it, &wt, &gut, &gust, &dnt, &dnst);
    double err = 0, ref = 0;
    for (int t = 0; t < T; t++) {
        double acc[H] = {0};
        for (int j = 0; j < KS; j++) {
            int e = ids[t * KS + j];
            double h[2 * I], hy[H];
            ref_fp8(h, x + t * H, 1, H, gu[e].q, gu[e].srow, 2 * I, 0);
            float act[I];
            for (int o = 0; o < I; o++) {
                float g = (float)h[o]; /* the op keeps h in f32 */
                act[o] = g / (1.0f + expf(-g)) * (float)h[I + o];
            }
            ref_fp8(hy, act, 1, I, dn[e].q, dn[e].srow, H, 0);
            for (int c = 0; c < H; c++) acc[c] += wts[t * KS + j] * hy[c];
        }
        for (int c = 0; c < H; c++) {
            err += (y[t * H + c] - acc[c]) * (y[t * H + c] - acc[c]);
            ref += acc[c] * acc[c];
        }
    }
    CHECK_MSG(sqrt(err / ref) < 1e-4, "experts_fp8 vs double reference %g", sqrt(err / ref));
    for (int e = 0; e < E; e++) {
        qw_free(&gu[e]);
        qw_free(&dn[e]);
    }
    free(guq);
    free(dnq);
    free(gus);
    free(dns);
    sl_backend_free(be);
}

/* ---- quantization_config --------------------------------------------------- */

static void test_config(void)
{
    const char *base = "{\"architectures\":[\"Qwen3ForCausalLM\"],\"vocab_size\":10,\"hidden_size\":8,"
                       "\"num_hidden_layers\":1,\"num_attention_heads\":2,\"num_key_value_heads\":1,"
                       "\"head_dim\":4,\"intermediate_size\":8,\"quantization_config\":";
    struct {
        const char *q;
        sl_status want;
        const char *msg;
    } cases[] = {
        {"{\"quant_method\":\"fp8\",\"fmt\":\"e4m3\",\"activation_scheme\":\"dynamic\","
         "\"weight_block_size\":[128,128],\"modules_to_not_convert\":[\"lm_head\"]}", SL_OK, NULL},
        {"{\"quant_method\":\"fp8\",\"fmt\":\"e5m2\",\"weight_block_size\":[128,128]}",
         SL_ERR_UNSUPPORTED, "fmt 'e5m2'"},
        {"{\"quant_method\":\"fp8\",\"weight_block_size\":[64,128]}", SL_ERR_UNSUPPORTED, "weight_block_size"},
        {"{\"quant_method\":\"fp8\"}", SL_ERR_UNSUPPORTED, "weight_block_size"},
        {"{\"quant_method\":\"fp8\",\"activation_scheme\":\"static\",\"weight_block_size\":[128,128]}",
         SL_ERR_UNSUPPORTED, "activation_scheme 'static'"},
        {"{\"quant_method\":\"awq\"}", SL_ERR_UNSUPPORTED, "quant_method 'awq'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char js[1024];
        snprintf(js, sizeof js, "%s%s}", base, cases[i].q);
        sl_model_config c;
        sl_err e = {0};
        sl_status s = sl_model_config_parse(&c, js, NULL, &e);
        CHECK_MSG(s == cases[i].want, "case %zu: %d (%s)", i, s, e.msg);
        if (cases[i].msg) CHECK_MSG(strstr(e.msg, cases[i].msg) != NULL, "case %zu: %s", i, e.msg);
        else CHECK(c.quant_fp8 == 1);
    }
    CHECK(sl_model_fp8_target("model.layers.3.self_attn.k_proj.weight"));
    CHECK(sl_model_fp8_target("model.layers.3.mlp.experts.7.down_proj.weight"));
    CHECK(sl_model_fp8_target("model.layers.0.linear_attn.in_proj_qkvz.weight"));
    CHECK(!sl_model_fp8_target("model.layers.0.linear_attn.in_proj_ba.weight"));
    CHECK(!sl_model_fp8_target("model.layers.0.mlp.gate.weight"));
    CHECK(!sl_model_fp8_target("model.layers.0.mlp.shared_expert_gate.weight"));
    CHECK(!sl_model_fp8_target("lm_head.weight"));
}

int main(void)
{
    test_config();
    test_conversions();
    test_quantize_blocks();
    test_matmul_fp8(1, 128, 128);
    test_matmul_fp8(3, 320, 192); /* partial row and column blocks */
    test_matmul_fp8(7, 96, 64);   /* everything smaller than one block */
    test_matmul_fp8(2, 257, 385);
    test_experts_fp8();
    test_act_codes();
    return sl_test_done("test_fp8");
}

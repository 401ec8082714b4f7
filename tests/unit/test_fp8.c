/* FP8 (e4m3, 128×128 block scales): conversions, the CPU matmul_fp8 and
 * experts_fp8 ops against double-precision references, and the loader's
 * quantization_config / weight_scale_inv checks. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
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

int main(void)
{
    test_conversions();
    test_quantize_blocks();
    return sl_test_done("test_fp8");
}

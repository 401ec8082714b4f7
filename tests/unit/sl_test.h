/* Minimal test helpers: CHECK records a failure with file:line and goes on;
 * sl_test_done() prints the count and gives main's exit status. */
#ifndef SL_TEST_H
#define SL_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#ifdef SL_TEST_SHARED
/* a test of several files (tests/gpu/ops): one count for all, defined in one of them */
extern int sl_test_failed, sl_test_checked;
#else
static int sl_test_failed, sl_test_checked;
#endif

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        sl_test_checked++;                                                                         \
        if (!(cond)) {                                                                             \
            sl_test_failed++;                                                                      \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);               \
        }                                                                                          \
    } while (0)

#define CHECK_MSG(cond, ...)                                                                       \
    do {                                                                                           \
        sl_test_checked++;                                                                         \
        if (!(cond)) {                                                                             \
            sl_test_failed++;                                                                      \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

static inline int sl_test_done(const char *name)
{
    printf("%s: %d checks, %d failed\n", name, sl_test_checked, sl_test_failed);
    return sl_test_failed ? 1 : 0;
}

/* ‖a − b‖ / ‖b‖ over n floats (NaN in either gives +inf). */
static inline double sl_test_rel_l2(const float *a, const float *b, long n)
{
    double num = 0, den = 0;
    for (long i = 0; i < n; i++) {
        if (isnan(a[i]) || isnan(b[i])) return INFINITY;
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

#endif

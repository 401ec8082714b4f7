/* sl_err: the recoverable-error channel shared by every module.
 *
 * A function that can fail returns an sl_status and, when given a non-NULL
 * sl_err, writes a human-readable message naming what failed (a tensor, a
 * flag, a field). Broken invariants are not errors: they go through SL_ASSERT,
 * which records file:line and aborts; library code never calls exit().
 *
 *   sl_err e = {0};
 *   if (sl_model_load(&m, dir, &e) != SL_OK) fprintf(stderr, "%s\n", e.msg);
 */
#ifndef SL_ERR_H
#define SL_ERR_H

#include <stdarg.h>

typedef enum sl_status {
    SL_OK = 0,
    SL_ERR_IO,          /* file or socket could not be read or written */
    SL_ERR_PARSE,       /* malformed input: JSON, safetensors header, message */
    SL_ERR_INVALID,     /* well-formed input with a bad value or shape */
    SL_ERR_UNSUPPORTED, /* valid but not implemented (architecture, dtype, op) */
    SL_ERR_NOMEM,       /* allocation failed or a pool is exhausted */
    SL_ERR_LIMIT,       /* a configured limit was exceeded */
    SL_ERR_NOTFOUND,    /* a named thing does not exist */
    SL_ERR_DEVICE,      /* CUDA / NCCL runtime failure */
    SL_ERR_CLOSED,      /* the peer or object was shut down */
} sl_status;

typedef struct sl_err {
    sl_status code;
    char msg[512];
} sl_err;

/* Records code and a printf-style message in e (if e is non-NULL); returns code
 * so callers can write `return sl_err_set(e, SL_ERR_PARSE, "...")`. */
sl_status sl_err_set(sl_err *e, sl_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefixes the message already in e with more context ("loading X: "). */
sl_status sl_err_wrap(sl_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

const char *sl_status_str(sl_status s);

/* Invariant check: aborts with file:line. For bugs, never for bad input. */
#define SL_ASSERT(cond)                                                                            \
    do {                                                                                           \
        if (!(cond)) sl_assert_fail(#cond, __FILE__, __LINE__);                                    \
    } while (0)
__attribute__((noreturn)) void sl_assert_fail(const char *what, const char *file, int line);

#endif

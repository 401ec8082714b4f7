#include "sl_err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

sl_status sl_err_set(sl_err *e, sl_status code, const char *fmt, ...)
{
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
        e->code = code;
    }
    return code;
}

sl_status sl_err_wrap(sl_err *e, const char *fmt, ...)
{
    if (!e) return SL_ERR_INVALID;
    char prefix[256], old[sizeof e->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, e->msg, sizeof old);
    size_t n = strlen(prefix);
    if (n > sizeof e->msg - 3) n = sizeof e->msg - 3;
    memcpy(e->msg, prefix, n);
    memcpy(e->msg + n, ": ", 2);
    size_t rest = sizeof e->msg - n - 3;
    size_t ol = strnlen(old, rest);
    memcpy(e->msg + n + 2, old, ol);
    e->msg[n + 2 + ol] = 0;
    return e->code;
}

const char *sl_status_str(sl_status s)
{
    switch (s) {
    case SL_OK: return "ok";
    case SL_ERR_IO: return "i/o error";
    case SL_ERR_PARSE: return "parse error";
    case SL_ERR_INVALID: return "invalid argument";
    case SL_ERR_UNSUPPORTED: return "unsupported";
    case SL_ERR_NOMEM: return "out of memory";
    case SL_ERR_LIMIT: return "limit exceeded";
    case SL_ERR_NOTFOUND: return "not found";
    case SL_ERR_DEVICE: return "device error";
    case SL_ERR_CLOSED: return "closed";
    }
    return "unknown error";
}

__attribute__((noreturn)) void sl_assert_fail(const char *what, const char *file, int line)
{
    fprintf(stderr, "sluice: assertion failed: %s (%s:%d)\n", what, file, line);
    abort();
}

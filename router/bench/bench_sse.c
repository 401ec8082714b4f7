/* Incremental Server-Sent Events parser (the subset a completion stream uses:
 * data fields, comments, blank-line dispatch; any line ending). */
#include <stdlib.h>
#include <string.h>

#include "bench.h"

static int grow(char **p, size_t *cap, size_t need)
{
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 256;
    while (c < need) c *= 2;
    char *q = realloc(*p, c);
    if (!q) return -1;
    *p = q;
    *cap = c;
    return 0;
}

static int dispatch(sl_bench_sse *s, sl_bench_sse_cb cb, void *arg)
{
    if (!s->has_data) return 0;
    s->has_data = 0;
    size_t n = s->data_len;
    s->data_len = 0;
    s->data[n] = 0;
    return cb(arg, s->data, n);
}

/* One complete line (without its terminator). */
static int on_line(sl_bench_sse *s, const char *l, size_t n, sl_bench_sse_cb cb, void *arg)
{
    if (n == 0) return dispatch(s, cb, arg);
    if (l[0] == ':') return 0;
    const char *colon = memchr(l, ':', n);
    size_t name_len = colon ? (size_t)(colon - l) : n;
    if (name_len != 4 || memcmp(l, "data", 4)) return 0;
    const char *v = colon ? colon + 1 : l + n;
    if (v < l + n && *v == ' ') v++;
    size_t vn = (size_t)(l + n - v);
    /* data lines of one event join with '\n'; +1 for that and +1 for the NUL */
    if (grow(&s->data, &s->data_cap, s->data_len + vn + 2)) return -1;
    if (s->has_data) s->data[s->data_len++] = '\n';
    memcpy(s->data + s->data_len, v, vn);
    s->data_len += vn;
    s->has_data = 1;
    return 0;
}

int sl_bench_sse_feed(sl_bench_sse *s, const char *p, size_t n, sl_bench_sse_cb cb, void *arg)
{
    const char *end = p + n;
    while (p < end) {
        if (s->last_cr) { /* "\r\n" is one terminator, already taken at the '\r' */
            s->last_cr = 0;
            if (*p == '\n') {
                p++;
                continue;
            }
        }
        const char *q = p;
        while (q < end && *q != '\n' && *q != '\r') q++;
        if (q == end) { /* partial line: keep it for the next feed */
            if (grow(&s->line, &s->line_cap, s->line_len + (size_t)(q - p) + 1)) return -1;
            memcpy(s->line + s->line_len, p, (size_t)(q - p));
            s->line_len += (size_t)(q - p);
            return 0;
        }
        int rc;
        if (s->line_len) {
            if (grow(&s->line, &s->line_cap, s->line_len + (size_t)(q - p) + 1)) return -1;
            memcpy(s->line + s->line_len, p, (size_t)(q - p));
            size_t ln = s->line_len + (size_t)(q - p);
            s->line_len = 0;
            rc = on_line(s, s->line, ln, cb, arg);
        } else {
            rc = on_line(s, p, (size_t)(q - p), cb, arg);
        }
        if (rc) return rc;
        s->last_cr = *q == '\r';
        p = q + 1;
    }
    return 0;
}

int sl_bench_sse_finish(sl_bench_sse *s, sl_bench_sse_cb cb, void *arg)
{
    if (s->line_len) {
        size_t ln = s->line_len;
        s->line_len = 0;
        int rc = on_line(s, s->line, ln, cb, arg);
        if (rc) return rc;
    }
    return dispatch(s, cb, arg);
}

void sl_bench_sse_reset(sl_bench_sse *s)
{
    s->line_len = s->data_len = 0;
    s->has_data = s->last_cr = 0;
}

void sl_bench_sse_free(sl_bench_sse *s)
{
    free(s->line);
    free(s->data);
    memset(s, 0, sizeof *s);
}

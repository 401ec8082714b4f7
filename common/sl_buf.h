/* sl_buf: a growable byte buffer (owned memory, always NUL-terminated). */
#ifndef SL_BUF_H
#define SL_BUF_H

#include <stddef.h>

typedef struct sl_buf {
    char *data; /* NUL-terminated; NULL until the first append */
    size_t len;
    size_t cap;
} sl_buf;

int sl_buf_reserve(sl_buf *b, size_t extra); /* 0 or -1 on allocation failure */
int sl_buf_append(sl_buf *b, const void *p, size_t n);
int sl_buf_puts(sl_buf *b, const char *s);
int sl_buf_printf(sl_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sl_buf_clear(sl_buf *b); /* keeps capacity */
void sl_buf_free(sl_buf *b);
/* Hands the memory to the caller (free() it); b is reset. */
char *sl_buf_take(sl_buf *b);

#endif

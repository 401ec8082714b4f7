/* text_scan: byte-string helpers shared by the output parsers (reasoning.c,
 * tool_parser.c). Tags are ASCII, so byte searches are safe on UTF-8 text. */
#ifndef SL_TEXT_SCAN_H
#define SL_TEXT_SCAN_H

#include <stddef.h>
#include <string.h>

#include "sl_buf.h"

/* First occurrence of tag in s[0..n), or NULL. */
static inline const char *sl_scan_find(const char *s, size_t n, const char *tag)
{
    size_t k = strlen(tag);
    for (size_t i = 0; i + k <= n; i++)
        if (s[i] == tag[0] && !memcmp(s + i, tag, k)) return s + i;
    return NULL;
}

/* Length of the longest end of s[0..n) that is a proper beginning of tag:
 * the bytes a streaming parser must hold back because the next chunk may
 * complete the tag ("<tool_" of "<tool_call>"). */
static inline size_t sl_scan_partial(const char *s, size_t n, const char *tag)
{
    size_t k = strlen(tag) - 1;
    for (k = k < n ? k : n; k > 0; k--)
        if (!memcmp(s + n - k, tag, k)) return k;
    return 0;
}

/* s[0..n) is a beginning of tag (the whole tag may follow). */
static inline int sl_scan_is_prefix(const char *s, size_t n, const char *tag)
{
    size_t k = strlen(tag);
    return !memcmp(s, tag, n < k ? n : k) && n <= k;
}

static inline int sl_scan_space(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }

/* Number of leading whitespace bytes of s[0..n). */
static inline size_t sl_scan_lead_space(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n && sl_scan_space(s[i])) i++;
    return i;
}

/* Drops the first n bytes of b. */
static inline void sl_scan_consume(sl_buf *b, size_t n)
{
    if (!n) return;
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
    b->data[b->len] = 0;
}

#endif

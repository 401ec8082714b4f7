/* utf8: the few UTF-8 primitives the text layer shares (header-only, no state).
 *
 * sl_utf8_scan classifies the sequence at the start of a byte string the way Unicode's "maximal
 * subpart" rule (and so Rust's from_utf8_lossy and Python's errors="replace") reads it:
 *
 *   size_t k;
 *   switch (sl_utf8_scan(s, n, &k)) {
 *   case SL_UTF8_CHAR:  ... s[0..k) is one character
 *   case SL_UTF8_BAD:   ... s[0..k) is ill-formed: one U+FFFD, go on at s[k]
 *   case SL_UTF8_SHORT: ... s[0..k) == s[0..n) starts a character that needs more bytes
 *   }
 *
 * sl_utf8_next/sl_utf8_prev walk text already known to be valid. */
#ifndef SL_UTF8_H
#define SL_UTF8_H

#include <stddef.h>
#include <stdint.h>

typedef enum sl_utf8_kind {
    SL_UTF8_CHAR,
    SL_UTF8_BAD,
    SL_UTF8_SHORT,
} sl_utf8_kind;

/* n >= 1. Well-formed means Unicode table 3-7: no overlongs, surrogates or values past
 * U+10FFFF. */
static inline sl_utf8_kind sl_utf8_scan(const uint8_t *s, size_t n, size_t *k)
{
    uint8_t c = s[0], lo = 0x80, hi = 0xBF; /* lo..hi: allowed second byte */
    size_t need;
    if (c < 0x80) {
        *k = 1;
        return SL_UTF8_CHAR;
    }
    if (c >= 0xC2 && c <= 0xDF)
        need = 1;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        *k = 1;
        return SL_UTF8_BAD;
    }
    for (size_t i = 1; i <= need; i++) {
        if (i >= n) {
            *k = i;
            return SL_UTF8_SHORT;
        }
        if (s[i] < lo || s[i] > hi) {
            *k = i;
            return SL_UTF8_BAD;
        }
        lo = 0x80;
        hi = 0xBF;
    }
    *k = need + 1;
    return SL_UTF8_CHAR;
}

/* Offset of the first byte of s[0..n) that does not begin a complete character, or n. */
static inline size_t sl_utf8_valid_prefix(const uint8_t *s, size_t n)
{
    size_t i = 0, k;
    while (i < n) {
        if (i + 8 <= n) { /* ASCII runs dominate: test 8 bytes at a time */
            uint64_t w;
            __builtin_memcpy(&w, s + i, 8);
            if (!(w & 0x8080808080808080ull)) {
                i += 8;
                continue;
            }
        }
        if (sl_utf8_scan(s + i, n - i, &k) != SL_UTF8_CHAR) return i;
        i += k;
    }
    return n;
}

/* Decodes the code point at s[*i] of valid UTF-8 and advances *i past it. */
static inline uint32_t sl_utf8_next(const uint8_t *s, size_t *i)
{
    uint32_t c = s[*i];
    if (c < 0x80) {
        *i += 1;
        return c;
    }
    if (c < 0xE0) {
        c = (c & 0x1F) << 6 | (s[*i + 1] & 0x3Fu);
        *i += 2;
    } else if (c < 0xF0) {
        c = (c & 0x0F) << 12 | (s[*i + 1] & 0x3Fu) << 6 | (s[*i + 2] & 0x3Fu);
        *i += 3;
    } else {
        c = (c & 0x07) << 18 | (s[*i + 1] & 0x3Fu) << 12 | (s[*i + 2] & 0x3Fu) << 6 |
            (s[*i + 3] & 0x3Fu);
        *i += 4;
    }
    return c;
}

/* The code point of valid UTF-8 that ends at s[end) (end > 0); *start gets its offset. */
static inline uint32_t sl_utf8_prev(const uint8_t *s, size_t end, size_t *start)
{
    size_t i = end - 1;
    while (i > 0 && (s[i] & 0xC0) == 0x80)
        i--;
    *start = i;
    return sl_utf8_next(s, &i);
}

#endif

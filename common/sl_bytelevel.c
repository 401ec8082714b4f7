/* GPT-2's byte alphabet as arithmetic (sl_bytelevel.h): the 68 unprintable bytes are the runs
 * 0x00..0x20, 0x7F..0xA0 and 0xAD, numbered from U+0100 in byte order. */
#include "sl_bytelevel.h"

#include <string.h>

uint32_t sl_bytelevel_cp(uint8_t b)
{
    if (b <= 0x20) return 0x100u + b;
    if (b >= 0x7F && b <= 0xA0) return 0x100u + 33 + (b - 0x7Fu);
    if (b == 0xAD) return 0x100u + 67;
    return b;
}

int sl_bytelevel_byte(uint32_t cp)
{
    if ((cp >= '!' && cp <= '~') || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE && cp <= 0xFF))
        return (int)cp;
    if (cp < 0x100 || cp > 0x143) return -1;
    uint32_t k = cp - 0x100;
    return k < 33 ? (int)k : k < 67 ? (int)(0x7F + k - 33) : 0xAD;
}

size_t sl_bytelevel_decode(const char *s, size_t len, uint8_t *dst)
{
    const uint8_t *u = (const uint8_t *)s;
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        /* the alphabet is U+0021..U+0143: one or two UTF-8 bytes; anything else falls back */
        uint32_t cp = u[i];
        if (cp >= 0xC0 && cp < 0xE0 && i + 1 < len) {
            cp = (cp & 0x1Fu) << 6 | (u[i + 1] & 0x3Fu);
            i += 2;
        } else if (cp < 0x80)
            i += 1;
        else
            cp = UINT32_MAX;
        int b = cp == UINT32_MAX ? -1 : sl_bytelevel_byte(cp);
        if (b < 0) {
            memcpy(dst, s, len);
            return len;
        }
        dst[n++] = (uint8_t)b;
    }
    return n;
}

/* sl_bytelevel: GPT-2's byte-level alphabet, shared by the router's tokenizer, the grammar
 * vocabulary and make-tiny's tokenizer writer.
 *
 * Byte-level BPE vocabularies (GPT-2, Qwen, Llama 3) spell every byte as one printable code
 * point: the printable Latin-1 bytes ('!'..'~', 0xA1..0xAC, 0xAE..0xFF) stand for themselves,
 * the other 68 bytes take U+0100..U+0143 in byte order (so ' ' is U+0120 'Ġ', '\n' U+010A 'Ċ').
 *
 *   uint8_t raw[64];
 *   size_t n = sl_bytelevel_decode("Ġhello", 7, raw);   // raw = " hello", n = 6
 *
 * Pure functions of their arguments: safe from any thread. */
#ifndef SL_BYTELEVEL_H
#define SL_BYTELEVEL_H

#include <stddef.h>
#include <stdint.h>

/* The code point that spells byte b. */
uint32_t sl_bytelevel_cp(uint8_t b);
/* The byte code point cp spells, or -1 when cp is not in the alphabet. */
int sl_bytelevel_byte(uint32_t cp);
/* Bytes a vocabulary spelling s[0..len) (valid UTF-8) stands for, as the ByteLevel decoder
 * reads it: the byte of each code point when all of them are in the alphabet, else the
 * spelling's own bytes unchanged. Writes dst (room for len bytes); returns the count. */
size_t sl_bytelevel_decode(const char *s, size_t len, uint8_t *dst);

#endif

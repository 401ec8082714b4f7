/* libFuzzer: arbitrary bytes through the real Qwen3 tokenizer. Byte 0 picks the mode.
 * Text mode: invalid UTF-8 must be refused with SL_ERR_INVALID; valid text must encode, and
 * encoding its decode must give the same ids again (decode(encode(x)) is NFC(x), which
 * encodes like x). Ids mode: every 3 bytes are an id (mod a range a little past the
 * vocabulary); streaming and one-shot decoding must agree, write valid UTF-8 only, and refuse
 * exactly the unknown ids. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "detok.h"
#include "tokenizer.h"
#include "utf8.h"

static sl_tok *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    /* this file is <repo>/tests/fuzz/fuzz_tokenizer.c; the tokenizer is <repo>/tests/data/qwen3-tokenizer */
    char path[4096];
    snprintf(path, sizeof path, "%s", __FILE__);
    for (int up = 0; up < 2; up++) {
        char *slash = strrchr(path, '/');
        if (slash) *slash = 0;
    }
    strncat(path, "/data/qwen3-tokenizer", sizeof path - strlen(path) - 1);
    sl_err e = {0};
    if (sl_tok_load(&tok, path, &e) != SL_OK) {
        fprintf(stderr, "fuzz_tokenizer: %s\n", e.msg);
        abort();
    }
    return 0;
}

static void check_text(const uint8_t *s, size_t n)
{
    sl_tok_ids ids = {0}, again = {0};
    sl_buf text = {0};
    sl_err e = {0};
    int valid = sl_utf8_valid_prefix(s, n) == n;
    sl_status st = sl_tok_encode(tok, (const char *)s, n, &ids, &e);
    if (st != (valid ? SL_OK : SL_ERR_INVALID) || (!valid && ids.n)) __builtin_trap();
    if (valid) {
        if (sl_detok_decode(tok, ids.v, ids.n, 0, &text, &e) != SL_OK) __builtin_trap();
        if (sl_tok_encode(tok, text.data ? text.data : "", text.len, &again, &e) != SL_OK ||
            again.n != ids.n || (ids.n && memcmp(again.v, ids.v, ids.n * sizeof *ids.v)))
            __builtin_trap();
    }
    sl_buf_free(&text);
    sl_tok_ids_free(&ids);
    sl_tok_ids_free(&again);
}

static void check_ids(const uint8_t *s, size_t n, unsigned flags)
{
    uint32_t limit = (uint32_t)sl_tok_vocab_size(tok) + 8;
    int32_t kept[4096]; /* the ids the stream accepted, for the one-shot decode */
    size_t m = 0;
    sl_detok d;
    sl_buf streamed = {0}, whole = {0};
    sl_err e = {0};
    sl_buf_append(&streamed, "", 0);
    sl_detok_init(&d, tok, flags);
    for (size_t i = 0; i + 3 <= n && m < 4096; i += 3) {
        int32_t id = (int32_t)(((uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2]) % limit);
        size_t at = streamed.len, len;
        int known = sl_tok_token_bytes(tok, id, &len) != NULL;
        if (sl_detok_push(&d, id, &streamed, &e) != (known ? SL_OK : SL_ERR_INVALID) ||
            sl_utf8_valid_prefix((const uint8_t *)streamed.data + at, streamed.len - at) !=
                streamed.len - at)
            __builtin_trap();
        if (known) kept[m++] = id;
    }
    if (sl_detok_finish(&d, &streamed, &e) != SL_OK ||
        sl_detok_decode(tok, kept, m, flags, &whole, &e) != SL_OK || whole.len != streamed.len ||
        (whole.len && memcmp(whole.data, streamed.data, whole.len)))
        __builtin_trap();
    sl_buf_free(&streamed);
    sl_buf_free(&whole);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    if (data[0] & 1)
        check_text(data + 1, size - 1);
    else
        check_ids(data + 1, size - 1, data[0] & 2 ? SL_DETOK_SKIP_SPECIAL : 0);
    return 0;
}

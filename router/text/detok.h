/* detok: token ids back to text, all at once or one token at a time as a worker streams them.
 *
 * Decoding concatenates the bytes of the tokens (sl_tok_token_bytes; special tokens dropped on
 * request) and reads them as UTF-8, replacing each maximal ill-formed subsequence by U+FFFD:
 * byte for byte what Hugging Face's ByteLevel decoder and from_utf8_lossy produce. The output
 * is therefore always valid UTF-8, whatever the ids.
 *
 * Streaming: a character whose bytes are spread over several tokens (CJK, emoji, a lone byte
 * token) is held back until it is complete or proven ill-formed, so every piece written is
 * valid UTF-8 ending on a character boundary; nothing is written twice or dropped. Everything
 * sl_detok_push and sl_detok_finish append, concatenated, equals sl_detok_decode of the same
 * ids.
 *
 *   sl_detok d;
 *   sl_detok_init(&d, tok, SL_DETOK_SKIP_SPECIAL);
 *   for each id the worker sends:
 *       size_t at = text.len;
 *       if (sl_detok_push(&d, id, &text, &e) != SL_OK) fail(e.msg);
 *       send_delta(text.data + at, text.len - at);   // may be empty
 *   sl_detok_finish(&d, &text, &e);                  // end of stream: flush a dangling byte
 *
 * Threads: an sl_detok belongs to one request and is used by one thread at a time; several
 * may share one sl_tok (which is immutable). It holds no heap memory: nothing to free.
 */
#ifndef SL_DETOK_H
#define SL_DETOK_H

#include <stddef.h>
#include <stdint.h>

#include "sl_buf.h"
#include "sl_err.h"
#include "tokenizer.h"

enum {
    SL_DETOK_SKIP_SPECIAL = 1, /* drop added tokens marked special (<|im_end|>, not <think>) */
};

/* Caller-allocated; fields are private. */
typedef struct sl_detok {
    const sl_tok *tok;
    unsigned flags;
    uint8_t pend[4]; /* start of a character still missing bytes (at most 3) */
    uint8_t npend;
} sl_detok;

/* t must outlive d. */
void sl_detok_init(sl_detok *d, const sl_tok *t, unsigned flags);

/* Appends to out the text that id completes (possibly nothing). SL_ERR_INVALID for an id the
 * tokenizer does not know (d and out unchanged: the caller may skip it and go on),
 * SL_ERR_NOMEM when out cannot grow. */
sl_status sl_detok_push(sl_detok *d, int32_t id, sl_buf *out, sl_err *e);

/* Ends the stream: appends U+FFFD if a character was left incomplete, and makes d ready for a
 * new stream. SL_ERR_NOMEM when out cannot grow. */
sl_status sl_detok_finish(sl_detok *d, sl_buf *out, sl_err *e);

/* Appends the text of ids[0..n) to out (the one-shot form of the above). Fails on the first
 * unknown id, naming its position; out may then hold a prefix of the text. */
sl_status sl_detok_decode(const sl_tok *t, const int32_t *ids, size_t n, unsigned flags,
                          sl_buf *out, sl_err *e);

#endif

/* Incremental lossy UTF-8 decoding of token bytes. See detok.h. */
#include "detok.h"

#include <string.h>

#include "utf8.h"

static const char replacement[] = "\xEF\xBF\xBD"; /* U+FFFD */

/* Appends the characters of s[0..n), U+FFFD for each ill-formed subpart, and returns how many
 * bytes it used: all but an incomplete character at the very end, which needs the next token. */
static size_t lossy_append(sl_buf *out, const uint8_t *s, size_t n, int *oom)
{
    size_t i = 0, run = 0, k; /* s[run..i) is well-formed and not yet written */
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        sl_utf8_kind kind = sl_utf8_scan(s + i, n - i, &k);
        if (kind == SL_UTF8_CHAR) {
            i += k;
            continue;
        }
        if (kind == SL_UTF8_SHORT) break;
        if (sl_buf_append(out, s + run, i - run) || sl_buf_append(out, replacement, 3)) *oom = 1;
        run = i += k;
    }
    if (sl_buf_append(out, s + run, i - run)) *oom = 1;
    return i;
}

void sl_detok_init(sl_detok *d, const sl_tok *t, unsigned flags)
{
    *d = (sl_detok){.tok = t, .flags = flags};
}

sl_status sl_detok_push(sl_detok *d, int32_t id, sl_buf *out, sl_err *e)
{
    size_t n, k;
    const uint8_t *s = sl_tok_token_bytes(d->tok, id, &n);
    if (!s)
        return sl_err_set(e, SL_ERR_INVALID, "token id %d is not in the vocabulary (size %d)", id,
                          sl_tok_vocab_size(d->tok));
    if ((d->flags & SL_DETOK_SKIP_SPECIAL) && sl_tok_is_special(d->tok, id)) return SL_OK;
    int oom = 0;
    /* First finish the held-back character, a byte at a time: either it completes, or a byte
     * proves it ill-formed (that byte then starts afresh below). */
    while (d->npend && n) {
        d->pend[d->npend] = *s;
        sl_utf8_kind kind = sl_utf8_scan(d->pend, d->npend + 1u, &k);
        if (kind == SL_UTF8_BAD) {
            if (sl_buf_append(out, replacement, 3)) oom = 1;
            d->npend = 0;
            break;
        }
        d->npend++;
        s++, n--;
        if (kind == SL_UTF8_CHAR) {
            if (sl_buf_append(out, d->pend, d->npend)) oom = 1;
            d->npend = 0;
        }
    }
    if (!d->npend && n) {
        size_t used = lossy_append(out, s, n, &oom);
        memcpy(d->pend, s + used, n - used); /* at most 3 bytes: lossy_append stops at a SHORT */
        d->npend = (uint8_t)(n - used);
    }
    return oom ? sl_err_set(e, SL_ERR_NOMEM, "detokenizing: out of memory") : SL_OK;
}

sl_status sl_detok_finish(sl_detok *d, sl_buf *out, sl_err *e)
{
    int held = d->npend != 0;
    d->npend = 0;
    if (held && sl_buf_append(out, replacement, 3))
        return sl_err_set(e, SL_ERR_NOMEM, "detokenizing: out of memory");
    return SL_OK;
}

sl_status sl_detok_decode(const sl_tok *t, const int32_t *ids, size_t n, unsigned flags,
                          sl_buf *out, sl_err *e)
{
    sl_detok d;
    sl_detok_init(&d, t, flags);
    for (size_t i = 0; i < n; i++) {
        sl_status st = sl_detok_push(&d, ids[i], out, e);
        if (st == SL_ERR_INVALID) return sl_err_wrap(e, "ids[%zu]", i);
        if (st != SL_OK) return st;
    }
    return sl_detok_finish(&d, out, e);
}

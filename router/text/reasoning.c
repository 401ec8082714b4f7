#include "reasoning.h"

#include <stdlib.h>
#include <string.h>

#include "sl_buf.h"
#include "text_scan.h"

#define THINK_OPEN "<think>"
#define THINK_CLOSE "</think>"

typedef enum phase {
    PHASE_START,       /* DETECT: does the output open with <think>? */
    PHASE_THINK_LEAD,  /* whitespace after <think> is dropped */
    PHASE_THINK,       /* reasoning until </think> */
    PHASE_ANSWER_LEAD, /* whitespace after </think> is dropped */
    PHASE_ANSWER,      /* content to the end */
} phase;

struct sl_reasoning {
    phase phase;
    sl_buf held; /* fed text not yet resolved into deltas */
};

sl_reasoning_mode sl_reasoning_mode_for_prompt(const char *prompt, size_t len)
{
    static const char closed[] = THINK_OPEN "\n\n" THINK_CLOSE "\n\n";
    if (len >= strlen(closed) && !memcmp(prompt + len - strlen(closed), closed, strlen(closed)))
        return SL_REASONING_MODE_OFF;
    /* only the turn being generated matters: from the last <|im_start|> on */
    const char *turn = prompt, *hit;
    while ((hit = sl_scan_find(turn, len - (size_t)(turn - prompt), "<|im_start|>")))
        turn = hit + 1;
    const char *open = NULL;
    for (const char *p = turn; (hit = sl_scan_find(p, len - (size_t)(p - prompt), THINK_OPEN));
         p = hit + 1)
        open = hit;
    if (open && !sl_scan_find(open, len - (size_t)(open - prompt), THINK_CLOSE))
        return SL_REASONING_MODE_OPEN;
    return SL_REASONING_MODE_DETECT;
}

sl_reasoning *sl_reasoning_new(sl_reasoning_mode mode)
{
    sl_reasoning *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->phase = mode == SL_REASONING_MODE_OFF    ? PHASE_ANSWER
               : mode == SL_REASONING_MODE_OPEN ? PHASE_THINK_LEAD
                                             : PHASE_START;
    return r;
}

void sl_reasoning_free(sl_reasoning *r)
{
    if (!r) return;
    sl_buf_free(&r->held);
    free(r);
}

/* Resolves as much of r->held as possible; at_end resolves all of it. */
static int step(sl_reasoning *r, sl_deltas *out, int at_end)
{
    sl_buf *h = &r->held;
    for (;;) {
        const char *s = h->data ? h->data : "";
        size_t n = h->len, ws = sl_scan_lead_space(s, n);
        switch (r->phase) {
        case PHASE_START:
            if (n - ws >= strlen(THINK_OPEN) && !memcmp(s + ws, THINK_OPEN, strlen(THINK_OPEN))) {
                sl_scan_consume(h, ws + strlen(THINK_OPEN));
                r->phase = PHASE_THINK_LEAD;
            } else if (!at_end && sl_scan_is_prefix(s + ws, n - ws, THINK_OPEN)) {
                return 0;
            } else {
                r->phase = PHASE_ANSWER; /* no think block: the held text is content */
            }
            break;
        case PHASE_THINK_LEAD:
        case PHASE_ANSWER_LEAD:
            if (ws) sl_scan_consume(h, ws);
            if (!h->len) return 0;
            r->phase = r->phase == PHASE_THINK_LEAD ? PHASE_THINK : PHASE_ANSWER;
            break;
        case PHASE_THINK: {
            const char *close = sl_scan_find(s, n, THINK_CLOSE);
            size_t emit =
                close ? (size_t)(close - s) : n - (at_end ? 0 : sl_scan_partial(s, n, THINK_CLOSE));
            /* whitespace before </think> is dropped, so trailing whitespace
             * waits until something follows it */
            while (emit && sl_scan_space(s[emit - 1])) emit--;
            if (sl_deltas_text(out, SL_DELTA_REASONING, 0, s, emit)) return -1;
            if (close) {
                sl_scan_consume(h, (size_t)(close - s) + strlen(THINK_CLOSE));
                r->phase = PHASE_ANSWER_LEAD;
                break;
            }
            sl_scan_consume(h, at_end ? n : emit);
            return 0;
        }
        case PHASE_ANSWER:
            if (sl_deltas_text(out, SL_DELTA_CONTENT, 0, s, n)) return -1;
            sl_scan_consume(h, n);
            return 0;
        }
    }
}

sl_status sl_reasoning_feed(sl_reasoning *r, const char *text, size_t len, sl_deltas *out,
                            sl_err *e)
{
    if (sl_buf_append(&r->held, text, len) || step(r, out, 0))
        return sl_err_set(e, SL_ERR_NOMEM, "reasoning parser: out of memory");
    return SL_OK;
}

sl_status sl_reasoning_finish(sl_reasoning *r, sl_deltas *out, sl_err *e)
{
    if (step(r, out, 1)) return sl_err_set(e, SL_ERR_NOMEM, "reasoning parser: out of memory");
    return SL_OK;
}

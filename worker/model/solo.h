/* worker/solo.h: one sequence at a time on a model, with its own small cache
 * (KV pages in scrambled order, one state slot). For the `logits` and
 * `generate` commands and for tests that need a cold reference run; the
 * serving engine has its own scheduler and pools.
 *
 *   sl_solo s; sl_solo_init(&s, m, 4096, 16, &e);
 *   sl_solo_feed(&s, prompt, n, 1, logits, &e);   // logits of every position
 *   sl_solo_feed(&s, &tok, 1, 0, last, &e);       // one decode step
 *   sl_solo_free(&s);
 */
#ifndef SL_SOLO_H
#define SL_SOLO_H

#include "model.h"

typedef struct sl_solo {
    sl_model *m;
    sl_model_cache cache;
    int32_t *pages;   /* page table of the one sequence */
    int max_pages, len, max_len;
    sl_tensor logits; /* [cap, vocab] f32 on the model's backend */
    int logits_cap;
} sl_solo;

sl_status sl_solo_init(sl_solo *s, sl_model *m, int max_len, int page_size, sl_err *e);
/* Appends n tokens and runs one forward. out receives f32 logits on the
 * host: [n, vocab] if all_logits, else [1, vocab] for the last token. */
sl_status sl_solo_feed(sl_solo *s, const int32_t *ids, int n, int all_logits, float *out, sl_err *e);
/* Forgets the sequence (the cache memory is kept). */
void sl_solo_reset(sl_solo *s);
void sl_solo_free(sl_solo *s);
/* Index of the largest of n logits (lowest index on ties). */
int sl_argmax(const float *v, int n);

#endif

/* worker/runner/sampler_op.h: the front end of the sampling op (sl_be_sample,
 * kernels/backend.h), which does the math on the backend so only ids and
 * logprob rows cross to the host. Turns sampler states (engine/sampler.h)
 * into the op's rows, and its results back into samples.
 *
 *   sl_sample_pen pen = {0};
 *   sl_sample_row row;
 *   sl_sampler_row(s, &row, &pen, -1, &e);             // one row per sampled request
 *   sl_be_sample(be, &ids, &lp, &logits, &(sl_sample_args){1, &row, pen.n, pen.tok,
 *                                                          pen.out, pen.prompt, NULL});
 *   ... download ids (and lp rows) ...
 *   sl_sample out;
 *   sl_sampler_commit(s, id, lp_row_or_NULL, &out);     // records the token
 *   sl_sample_pen_free(&pen);
 *
 * A row may be built before the previous token is committed (a pipelined
 * engine): pass that token's place in the op's pending_ids as pending; the op
 * counts it as one more output and the draw uses the next output index.
 *
 * Threads: the runner's (one thread at a time per state).
 */
#ifndef SL_SAMPLER_OP_H
#define SL_SAMPLER_OP_H

#include <stdint.h>

#include "backend.h"
#include "sampler.h"
#include "sl_err.h"

/* Penalty entries of a batch's rows (the pen_* arrays of sl_sample_args),
 * grown by sl_sampler_row. Start a batch with n = 0; the arrays are kept. */
typedef struct sl_sample_pen {
    int n, cap;
    int32_t *tok, *out, *prompt;
} sl_sample_pen;
/* Frees the arrays; pen is then empty ({0}) and may be reused. */
void sl_sample_pen_free(sl_sample_pen *pen);

/* Fills row for s's next token and appends its penalty entries to pen.
 * pending: row->pending (see the overview), or -1. SL_ERR_NOMEM when pen
 * cannot grow (row and pen then unchanged). */
sl_status sl_sampler_row(const sl_sampler_state *s, sl_sample_row *row, sl_sample_pen *pen,
                         int32_t pending, sl_err *e);
/* Records token, sampled from s's row, as this step's sample; fills out,
 * with logprobs from lp_row (a row of the op's lp; NULL: none asked). */
void sl_sampler_commit(sl_sampler_state *s, int32_t token, const float *lp_row, sl_sample *out);

#endif

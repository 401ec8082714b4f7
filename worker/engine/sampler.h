/* worker/sampler.h: per-request sampling state, the front end of the
 * sampling op (sl_be_sample, kernels/backend.h), which does the math on the
 * backend so only ids and logprob rows cross to the host.
 *
 * Order of operations (as in SGLang/vLLM): penalties (repetition over prompt
 * and output tokens, HF style; frequency and presence over output tokens,
 * OpenAI style) -> greedy if temperature is 0 -> temperature -> top-k -> top-p
 * -> min-p -> one draw. The draw uses sl_rng_uniform(seed, output index), so a
 * request with a seed gives the same tokens however it is batched, retracted
 * or resumed. Logprobs (when asked) are log-softmax of the raw logits, before
 * penalties and temperature, like vLLM's default.
 *
 *   sl_sampler_state *s = sl_sampler_state_new(&params, prompt, n_prompt, rid);
 *   sl_sample_pen pen = {0};
 *   sl_sample_row row;
 *   sl_sampler_row(s, &row, &pen, -1, &e);             // one row per sampled request
 *   sl_be_sample(be, &ids, &lp, &logits, &(sl_sample_args){1, &row, pen.n, pen.tok,
 *                                                          pen.out, pen.prompt, NULL});
 *   ... download ids (and lp rows) ...
 *   sl_sample out;
 *   sl_sampler_commit(s, id, lp_row_or_NULL, &out);     // records the token
 *   sl_sample_pen_free(&pen);
 *   sl_sampler_state_free(s);
 *
 * A row may be built before the previous token is committed (a pipelined
 * engine): pass that token's place in the op's pending_ids as pending; the op
 * counts it as one more output and the draw uses the next output index.
 *
 * Threads: a state is used by one thread at a time (the runner); it may be
 * created on another thread before it is handed over.
 */
#ifndef SL_SAMPLER_H
#define SL_SAMPLER_H

#include <stdint.h>

#include "backend.h"
#include "sl_err.h"

typedef struct sl_sampling {
    float temperature;        /* 0: greedy */
    float top_p;              /* 1: off */
    int top_k;                /* <= 0: off */
    float min_p;              /* 0: off */
    float repetition_penalty; /* 1: off */
    float frequency_penalty, presence_penalty;
    int has_seed;
    uint64_t seed;
    int logprobs;     /* report the sampled token's logprob */
    int top_logprobs; /* 0..SL_SAMPLE_MAX_TOP alternatives */
} sl_sampling;

typedef struct sl_sample {
    int32_t token;
    float logprob;
    int n_top;
    int32_t top_ids[SL_SAMPLE_MAX_TOP];
    float top_logprobs[SL_SAMPLE_MAX_TOP];
} sl_sample;

typedef struct sl_sampler_state sl_sampler_state;

/* Copies params; the prompt is read only when a repetition penalty is set.
 * rid seeds the draws of requests without a seed. NULL when out of memory. */
sl_sampler_state *sl_sampler_state_new(const sl_sampling *params, const int32_t *prompt,
                                       int n_prompt, uint64_t rid);
void sl_sampler_state_free(sl_sampler_state *s);
/* Counts already generated tokens (a migrated request's output). */
void sl_sampler_state_add_output(sl_sampler_state *s, const int32_t *ids, int n);
/* The token sampled last (-1 before the first). */
int32_t sl_sampler_last_token(const sl_sampler_state *s);
const sl_sampling *sl_sampler_params(const sl_sampler_state *s);

/* 1 when the next token is the plain argmax of the raw logits (greedy, no
 * penalties, no logprobs): the runner may then take it from a device argmax
 * instead of downloading the logits. */
int sl_sampler_is_argmax(const sl_sampler_state *s);
/* Records token, chosen by a device argmax, as this step's sample (a commit
 * without logprobs). */
void sl_sampler_take(sl_sampler_state *s, int32_t token, sl_sample *out);

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

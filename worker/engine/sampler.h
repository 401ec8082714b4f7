/* worker/engine/sampler.h: per-request sampling state (parameters, the
 * tokens counted for penalties, the seed and the output index of the next
 * draw). The front end of the sampling op that turns a state into a row of
 * sl_be_sample (kernels/backend.h) is the runner's: runner/sampler_op.h.
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
 *   ... the runner samples (runner/sampler_op.h) and records the token:
 *   sl_sample out;
 *   sl_sampler_take(s, token, &out);   // or sl_sampler_commit with logprobs
 *   sl_sampler_state_free(s);
 *
 * Threads: a state is used by one thread at a time (the runner); it may be
 * created on another thread before it is handed over.
 *
 * The table (sl_sampler_table) is how states cross threads: the owner (the
 * scheduler, on the leader) adds and removes states, and batches carry their
 * ids; the runner looks an id up on its own thread. A removed state's id is
 * stale and looks up as NULL.
 */
#ifndef SL_SAMPLER_H
#define SL_SAMPLER_H

#include <stdint.h>

#include "grammar.h"
#include "sl_err.h"

/* Top logprobs a sample can carry; equal to the sampling op's
 * SL_SAMPLE_MAX_TOP (runner/sampler_op.c checks it). */
#define SL_SAMPLER_MAX_TOP 20

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
    int top_logprobs; /* 0..SL_SAMPLER_MAX_TOP alternatives */
} sl_sampling;

typedef struct sl_sample {
    int32_t token;
    int complete; /* the constrained output is complete with token: the request stops here */
    float logprob;
    int n_top;
    int32_t top_ids[SL_SAMPLER_MAX_TOP];
    float top_logprobs[SL_SAMPLER_MAX_TOP];
} sl_sample;

typedef struct sl_sampler_state sl_sampler_state;

/* Copies params; the prompt is read only when a repetition penalty is set.
 * rid seeds the draws of requests without a seed. NULL when out of memory. */
sl_sampler_state *sl_sampler_state_new(const sl_sampling *params, const int32_t *prompt,
                                       int n_prompt, uint64_t rid);
void sl_sampler_state_free(sl_sampler_state *s);
/* Constrained decoding: s takes m (the grammar's matcher, freed with s).
 * end_ids (eos and stop ids) are allowed exactly when the grammar can end;
 * with start_ids the grammar starts after the first of them is sampled (the
 * end of a reasoning model's thinking), else at the first token. Call
 * before sl_sampler_state_add_output. SL_ERR_NOMEM: m is not taken. */
sl_status sl_sampler_set_grammar(sl_sampler_state *s, sl_gram_matcher *m, const int32_t *end_ids,
                                 int n_end, const int32_t *start_ids, int n_start, sl_err *e);
/* 1 when s has a grammar (its draws are never a plain argmax). */
int sl_sampler_constrained(const sl_sampler_state *s);
/* Fills bits (words words, vocab ids) with the tokens the grammar allows
 * next; returns 1, or 0 when the next token is unconstrained (the grammar
 * has not started, or allows nothing: then bits are meaningless). */
int sl_sampler_fill_mask(sl_sampler_state *s, uint32_t *bits, int words, int vocab);
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

/* What the sampling op's row needs (runner/sampler_op.c): the draw of the
 * output ahead outputs after those recorded (ahead 1: a token sampled but
 * not yet committed), and the penalty table: n entries (token, count in the
 * output, 1 if in the prompt), in a fixed order. */
float sl_sampler_uniform(const sl_sampler_state *s, int ahead);
int sl_sampler_pen_count(const sl_sampler_state *s);
void sl_sampler_pen_fill(const sl_sampler_state *s, int32_t *tok, int32_t *out, int32_t *prompt);

/* A state's handle: its index and generation in an sl_sampler_table. {0}
 * names no state. */
typedef struct sl_sampler_id {
    uint64_t v;
} sl_sampler_id;

typedef struct sl_sampler_table sl_sampler_table;

/* Entries live at fixed addresses (the table grows by segments), so a
 * lookup never races with an add of another entry. */
sl_status sl_sampler_table_new(sl_sampler_table **out, sl_err *e);
/* Frees the table and every state still in it. */
void sl_sampler_table_free(sl_sampler_table *t);
/* Takes s and names it by *id. SL_ERR_LIMIT/NOMEM: s is not taken. Owner
 * thread only. */
sl_status sl_sampler_table_add(sl_sampler_table *t, sl_sampler_state *s, sl_sampler_id *id,
                               sl_err *e);
/* Frees id's state; id is stale from then on (an unknown id is ignored).
 * Owner thread only, and only once no other thread may look id up. */
void sl_sampler_table_remove(sl_sampler_table *t, sl_sampler_id id);
/* id's state, NULL for {0} or a stale id. Any thread, for ids it received
 * after their add through a lock (the engine's hand-off). */
sl_sampler_state *sl_sampler_table_get(const sl_sampler_table *t, sl_sampler_id id);

#endif

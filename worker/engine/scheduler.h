/* worker/scheduler.h: the scheduler. Continuous batching over KV pages and mamba
 * state slots, with the radix prefix cache; it never touches the device.
 *
 * Each call to sl_sched_next_batch builds one explicit batch (sl_sched_batch:
 * its shape and flat arrays, plus state copies and sampling duties; the
 * runner turns it into the backend's sl_batch_meta) from:
 *   1. decode steps of every running request that has finished its prompt
 *      (one token each; a step that needs a new page and finds none, even
 *      after evicting the tree, retracts the lowest-priority, newest request:
 *      its memory is freed, it returns to the queue with its outputs, and is
 *      prefilled again later: resumed, never lost);
 *   2. prefill chunks of running requests that are still prefilling;
 *   3. new requests from the queue (priority, then FCFS), matched against the
 *      radix cache, while --max-running-requests, the chunk budget
 *      (--chunked-prefill-size tokens per batch) and memory allow.
 * Prefill and decode share one batch (mixed batches).
 *
 * Hybrid models (mamba_extra_buffer, docs/mamba_cache.md §8): a running request
 * owns a working slot W and one track slot T. The batch asks the kernels for
 * a snapshot of the state into T at checkpoint targets (extend: the last
 * multiple of C = max(64, page) inside a chunk, or the branching point of its
 * match; decode: every --mamba-track-interval tokens). As soon as the
 * snapshot's key tokens are all known (at once for extends; for a decode
 * step under overlap once the fed token has been sampled) T is inserted into
 * the tree by index and the request takes a fresh T. Every reader of an
 * inserted slot or page runs in a later forward, so nothing races on the
 * single device stream. no_buffer: a non-final chunk ending on a page
 * boundary snapshots its end, and W itself goes to the tree at finish.
 *
 * Overlap: the engine may build batch N+1 before batch N's results are
 * processed. Then a decode step's input token is "the last token sampled for
 * this request" (feed_last), read by the runner from the sampler state, and a
 * request that finishes in batch N runs one discarded step in N+1.
 *
 * Usage (one thread):
 *   sl_sched *s; sl_sched_new(&s, &cfg, &e);
 *   sl_sched_submit(s, &req, &e);
 *   while ((b = sl_sched_next_batch(s))) { run(b); sl_sched_complete(s, b); }
 *   sl_sched_event ev; while (sl_sched_pop_event(s, &ev)) send(ev);
 *   sl_sched_free(s);
 *
 * Threads: every call from one thread (the leader). A batch handed out may be
 * read by the runner thread (and its out[] written) until it is given back
 * with sl_sched_complete. It names sampler states by id (sl_sampler_id); the
 * runner looks them up in sl_sched_samplers' table and is the only user of a
 * state while a batch naming it is out; the scheduler removes a state only
 * once no batch out names it.
 */
#ifndef SL_SCHED_H
#define SL_SCHED_H

#include <stdint.h>

#include "sampler.h"
#include "sl_err.h"

typedef enum sl_mamba_strategy {
    SL_MAMBA_EXTRA_BUFFER = 0,
    SL_MAMBA_NO_BUFFER,
} sl_mamba_strategy;

typedef struct sl_sched_config {
    int page_size;
    int n_pages; /* KV pool */
    int n_slots; /* state pool (0 for pure-attention models) */
    int hybrid;  /* the model has linear-attention layers */
    int max_running;
    int context_len;
    int chunked_prefill_size; /* prefill tokens per batch (<= 0: unlimited) */
    int mixed_prefill_tokens; /* prefill tokens of a batch that also decodes (<= 0: no
                                 other limit than chunked_prefill_size) */
    int disable_radix;
    sl_mamba_strategy strategy;
    int track_interval; /* decode snapshot interval (multiple of page_size) */
    int overlap;        /* batches are built one ahead of their results */
    int vocab;
    int eos[8], n_eos;
} sl_sched_config;

/* Page/interval rules shared with the command line (docs/mamba_cache.md §3):
 * max(64,page) % min(64,page) == 0 and interval % page == 0. */
sl_status sl_sched_config_check(const sl_sched_config *c, sl_err *e);

/* Prefill/decode disaggregation (docs/disaggregation.md): a PREFILL request
 * computes its prompt and first token, then is HELD with its pages and
 * working state until sl_sched_pd_release (the transfer has read them); a
 * DECODE request is admitted like any other (its memory limits honoured) but
 * only allocates pages for its tokens and a working slot, announces itself
 * with a pd_ready event and WAITS until sl_sched_pd_activate gives it the
 * first token (its KV and state written into the slots by the caller). */
typedef enum sl_pd_role {
    SL_PD_NONE = 0,
    SL_PD_PREFILL,
    SL_PD_DECODE,
} sl_pd_role;

typedef struct sl_sched_req {
    uint64_t rid;
    sl_pd_role pd;
    const int32_t *prompt;
    int n_prompt;
    const int32_t *output; /* already generated (migration), may be NULL */
    int n_output;
    int max_new, min_new;
    const int32_t *stop_ids;
    int n_stop;
    int ignore_eos;
    int priority; /* higher first */
    sl_sampling sampling;
    /* constrained decoding (NULL: none): sl_sched_submit takes the matcher
     * (a failed submit frees it); the grammar starts after one of
     * grammar_start (n_grammar_start 0: at the first token) */
    sl_gram_matcher *grammar;
    const int32_t *grammar_start;
    int n_grammar_start;
} sl_sched_req;

typedef enum sl_finish {
    SL_FINISH_NONE = 0,
    SL_FINISH_STOP,
    SL_FINISH_LENGTH,
    SL_FINISH_ABORT,
    SL_FINISH_ERROR,
} sl_finish;

/* One output token (token >= 0) and/or the end of a request (finish set,
 * with usage). Events of one request come in order. */
typedef struct sl_sched_event {
    uint64_t rid;
    int32_t token; /* -1: no token (abort, error) */
    sl_sample sample;
    int has_sample;
    int want_logprobs; /* the request asked for logprobs (sample.logprob is meaningful) */
    sl_finish finish;
    int prompt_tokens, completion_tokens, cached_tokens;
    /* decode role: memory is allocated (no token, no finish); cached_tokens
     * = the prefix already in the tree, prompt_tokens = tokens to receive */
    int pd_ready;
} sl_sched_event;

typedef struct sl_sched_req_impl sl_sched_req_impl;

/* The shape of one forward (the plain part of the backend's sl_batch_meta). */
typedef struct sl_sched_shape {
    int n_tokens, n_seqs;
    int page_size, max_pages; /* page_table is [n_seqs * max_pages] */
} sl_sched_shape;

/* One forward (SGLang's ScheduleBatch): plain arrays owned by the scheduler,
 * no backend types. The runner translates it into an sl_batch_meta
 * (ForwardBatch) for the model. */
typedef struct sl_sched_batch {
    uint64_t seq; /* batch number */
    sl_sched_shape meta;
    /* [n_tokens]: ids, pos, kv_slot; [n_seqs + 1]: q_start; [n_seqs]: the rest */
    int32_t *ids, *pos, *q_start, *kv_len, *page_table, *kv_slot;
    int32_t *state_slot, *state_fresh, *track_slot, *track_len;
    /* before the forward: state slot copies (dst <- src; src -1 zeroes) */
    int n_copy;
    int32_t *copy_dst, *copy_src;
    /* per sequence: sampler (in sl_sched_samplers; {0}: no sample from this
     * sequence), feed_last (1: ids[q_start[s]] is the sampler's last token,
     * resolved by the runner), and the logits row of the sequence's last token */
    sl_sampler_id *sampler;
    int32_t *feed_last;
    int32_t *rows; /* [n_rows] token indices whose logits are sampled */
    int32_t *row_seq;
    int n_rows;
    sl_sample *out; /* [n_seqs] written by the runner */
    uint64_t *rid;  /* [n_seqs] request of each sequence */
    /* private */
    sl_sched_req_impl **reqs;
    int cap_tokens, cap_seqs, cap_pt, cap_copy;
} sl_sched_batch;

typedef struct sl_sched sl_sched;

sl_status sl_sched_new(sl_sched **out, const sl_sched_config *cfg, sl_err *e);
/* Frees everything; batches must have been completed. */
void sl_sched_free(sl_sched *s);

/* Queues a request (copies its arrays). Errors: duplicate rid, a prompt that
 * can never fit (context length or KV pool), out of memory. */
sl_status sl_sched_submit(sl_sched *s, const sl_sched_req *r, sl_err *e);
/* Aborts a queued or running request: its memory is freed at once and an
 * abort event is queued. Unknown rids are ignored (returns 0, else 1). */
int sl_sched_abort(sl_sched *s, uint64_t rid);

/* Ends every queued and running request with an SL_FINISH_ERROR event
 * (shutdown, device failure). */
void sl_sched_fail_all(sl_sched *s);

/* The next batch to run, or NULL when there is nothing to do. At most two
 * batches are out at a time (overlap). */
sl_sched_batch *sl_sched_next_batch(sl_sched *s);
/* Processes the runner's results (out[]) of b and takes b back. Batches are
 * completed in the order they were built. */
void sl_sched_complete(sl_sched *s, sl_sched_batch *b);

/* Takes b back without results (its forward failed): the requests it held
 * are as if it never ran, except that their KV is no longer trustworthy; only
 * for shutting down after a device error. */
void sl_sched_abandon(sl_sched *s, sl_sched_batch *b);

int sl_sched_pop_event(sl_sched *s, sl_sched_event *ev);

/* The table of the requests' sampler states that batches' sampler ids name
 * (lookups only, from the runner; see Threads above). */
const sl_sampler_table *sl_sched_samplers(const sl_sched *s);

typedef struct sl_sched_stats {
    int running, queued, in_flight;
    int free_pages, total_pages, free_slots, total_slots;
    int evictable_pages, evictable_states, tree_pages, tree_states;
    int64_t prompt_tokens, cached_tokens; /* admitted so far: hit rate = cached / prompt */
    int64_t retractions, evicted_pages;
    int checkpoint_tokens;
    int pd_waiting; /* held (prefill) and awaiting (decode) requests */
} sl_sched_stats;
void sl_sched_get_stats(const sl_sched *s, sl_sched_stats *st);
/* ---- disaggregation (see sl_pd_role) ---- */

/* The memory of a held (prefill) or awaiting (decode) request. pages[i]
 * holds tokens [i*P, (i+1)*P); valid until release, activate or finish. */
typedef struct sl_sched_pd_mem {
    const int32_t *pages;
    int n_pages;
    int n_tokens;      /* tokens whose KV is (to be) there */
    int skip_tokens;   /* decode: the prefix the tree already holds */
    int32_t state;     /* working slot W (-1: pure attention) */
    int32_t state_copy; /* decode: a second slot that takes the same state for the tree (-1) */
} sl_sched_pd_mem;
/* 0 and *m, or -1 when rid is not held/awaiting. */
int sl_sched_pd_view(const sl_sched *s, uint64_t rid, sl_sched_pd_mem *m);
/* Prefill: the transfer is done (or abandoned): the computed prefix goes to
 * the tree, the rest back to the pools. No event. */
int sl_sched_pd_release(sl_sched *s, uint64_t rid);
/* Decode: the KV and state are in place; token is the first output token
 * (sample: its logprobs, may be NULL). The request decodes from now on; the
 * transferred prefix enters the tree as if computed here. */
sl_status sl_sched_pd_activate(sl_sched *s, uint64_t rid, int32_t token, const sl_sample *sample,
                               sl_err *e);
/* Ends a queued, held or awaiting request with an error event. */
int sl_sched_fail(sl_sched *s, uint64_t rid);

/* Evicts every unlocked cache entry (returns the pages freed). */
int sl_sched_flush_cache(sl_sched *s);
/* Runs sl_radix_check with what the requests hold. */
sl_status sl_sched_check(const sl_sched *s, sl_err *e);
/* 1 when nothing is queued, running or in flight. */
int sl_sched_idle(const sl_sched *s);

#endif

/* worker/engine.h: the leader loop that joins scheduler, model and sampler.
 *
 * One engine step: the scheduler builds the next batch (radix matching, page
 * and slot allocation, metadata), the runner executes it (state copies,
 * forward, logits download, sampling), and the scheduler processes the
 * results (tokens, finish checks, cache inserts).
 *
 * Overlap (default on): the runner is a compute thread. Step k builds batch
 * N+1 and hands it to the compute thread while batch N is still computing,
 * then waits for N and processes its results. The compute thread launches
 * N+1 at once, behind N on the device queue, and only then waits for N's
 * sampled ids: N+1's decode inputs are N's samples still on the device (the
 * embedding reads them from the token buffer through meta->feed), so the
 * device runs step after step without waiting for the host. Decode batches
 * replay CUDA graphs (sl_model_enable_graphs) on backends that have them.
 * --disable-overlap-schedule runs build, forward and results in sequence.
 *
 * The hand-off carries ids, not pointers: the leader parks a batch in a slot
 * of an engine-owned ring and passes its ticket (the slot is ticket % ring
 * size) under the engine's lock; the compute thread owns that slot until it
 * marks the ticket finished, and only then does the leader complete the
 * batch. The batch names its sampler states by id; the compute thread looks
 * them up in the scheduler's table once per launch (a stale id fails the
 * step) and is their only user while the batch is out. Nothing is allocated
 * per step.
 *
 * Tensor parallelism plugs in at the runner: a batch (sl_sched_batch) is a
 * set of flat arrays, so rank 0 broadcasts it from the plan hook and every
 * follower, which built an identical engine (same flags: same pools), runs
 * it with sl_engine_follow; only rank 0 schedules and samples.
 *
 *   sl_engine *g; sl_engine_new(&g, model, &cfg, &e);
 *   sl_engine_submit(g, &req, &e);
 *   while (!sl_engine_idle(g)) {
 *       sl_engine_step(g, &e);
 *       while (sl_engine_pop_event(g, &ev)) ...;
 *   }
 *   sl_engine_free(g);
 *
 * Threads: every call from one thread (the leader); the engine owns its
 * compute thread. The model must not be used by anyone else meanwhile.
 */
#ifndef SL_ENGINE_H
#define SL_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "scheduler.h"

typedef struct sl_engine_config {
    int page_size;            /* --page-size (1) */
    int context_len;          /* --context-length (0: the model's max positions) */
    int chunked_prefill_size; /* --chunked-prefill-size (8192; <= 0: off) */
    int mixed_prefill_tokens; /* --mixed-prefill-tokens (0: off) */
    int max_running;          /* --max-running-requests (0: derive from memory) */
    double mem_fraction;      /* --mem-fraction-static: share of the memory for caches */
    size_t mem_bytes;         /* --mem-bytes: cache budget in bytes (overrides the fraction) */
    int max_total_tokens;     /* --max-total-tokens: KV pool in tokens (0: from the budget) */
    int max_mamba_slots;      /* --max-mamba-cache-size (0: from the budget) */
    sl_mamba_strategy strategy;
    int track_interval; /* --mamba-track-interval (256) */
    int overlap;        /* 0 with --disable-overlap-schedule */
    int disable_radix;  /* --disable-radix-cache */
    int graph_max_bs;   /* --cuda-graph-max-bs (256; 0 with --disable-cuda-graph) */
    int step_timing;    /* --step-timing: time decode steps on the device */
    int defer_warmup;   /* graphs are warmed by sl_engine_warm, not sl_engine_new (a
                           tensor-parallel group: the warm-up forwards run collectives,
                           so every rank warms at the same point of its start-up) */
} sl_engine_config;

void sl_engine_config_default(sl_engine_config *c);

typedef struct sl_engine sl_engine;

/* Sizes the pools, allocates the cache and starts the compute thread. The
 * engine uses m but does not own it. */
sl_status sl_engine_new(sl_engine **out, sl_model *m, const sl_engine_config *c, sl_err *e);
/* Captures the decode graphs (forwards of every bucket; a no-op without
 * graphs). sl_engine_new calls it unless c->defer_warmup. */
sl_status sl_engine_warm(sl_engine *g, sl_err *e);
/* Finishes batches in flight, stops the thread, frees the cache. */
void sl_engine_free(sl_engine *g);

sl_status sl_engine_submit(sl_engine *g, const sl_sched_req *r, sl_err *e);
int sl_engine_abort(sl_engine *g, uint64_t rid);
/* Ends every request with an error event (shutdown or a failed device). */
void sl_engine_fail_all(sl_engine *g);
/* One iteration; *worked (may be NULL) says whether anything ran. A failed
 * forward (device error) is returned; the engine cannot continue then. */
sl_status sl_engine_step(sl_engine *g, int *worked, sl_err *e);
int sl_engine_pop_event(sl_engine *g, sl_sched_event *ev);
int sl_engine_idle(const sl_engine *g);
void sl_engine_stats(const sl_engine *g, sl_sched_stats *st);
sl_status sl_engine_check(const sl_engine *g, sl_err *e);
int sl_engine_flush_cache(sl_engine *g);
const sl_sched_config *sl_engine_sched_config(const sl_engine *g);

/* Called on the runner (compute thread) with every batch just before its
 * forward, input ids resolved: where rank 0 broadcasts the plan. An error
 * fails the step. */
typedef sl_status (*sl_engine_plan_fn)(void *ctx, const sl_sched_batch *b, sl_err *e);
void sl_engine_set_plan_hook(sl_engine *g, sl_engine_plan_fn fn, void *ctx);
/* Optional (set after the hook, same ctx): called on the runner right after
 * the forward of every batch whose plan hook returned SL_OK, whatever the
 * forward returned. Hook, forward and end are one section: under tensor
 * parallelism the forward runs collectives on the group's comm, and nothing
 * else (a keep-alive from another thread) may use the comm in between. */
typedef void (*sl_engine_plan_end_fn)(void *ctx);
void sl_engine_set_plan_end(sl_engine *g, sl_engine_plan_end_fn end);
/* Follower side: runs a received batch (state copies + forward) on this
 * engine's model and cache, without scheduling or sampling (its sampler ids
 * are rank 0's and are not looked up). */
sl_status sl_engine_follow(sl_engine *g, sl_sched_batch *b, sl_err *e);
/* Disaggregation (worker/pd): the scheduler's sl_sched_pd_* calls, and the
 * cache the transfer reads and writes. Only between steps on the leader;
 * a held request's memory is never touched by a batch, an awaiting one's
 * not before activate (device caches: only without overlap). */
int sl_engine_pd_view(const sl_engine *g, uint64_t rid, sl_sched_pd_mem *m);
int sl_engine_pd_release(sl_engine *g, uint64_t rid);
sl_status sl_engine_pd_activate(sl_engine *g, uint64_t rid, int32_t token, const sl_sample *s,
                                sl_err *e);
int sl_engine_fail_req(sl_engine *g, uint64_t rid);
sl_model_cache *sl_engine_cache_rw(sl_engine *g);
/* The engine's KV/state cache (read-only; for tests and diagnostics). */
const sl_model_cache *sl_engine_cache(const sl_engine *g);

/* Steady-decode timing (--step-timing): for every two consecutive decode
 * batches, the device time of the first and the idle gap between its end and
 * the start of the next, from device events. Logged every 2000 steps. */
#define SL_GAP_BINS 6
typedef struct sl_engine_gaps {
    int64_t steps;
    double busy_us_sum, gap_us_sum;
    float gap_us_max;
    int64_t hist[SL_GAP_BINS]; /* gaps < 2, 5, 10, 50, 200 us, and longer */
} sl_engine_gaps;
/* Read on the leader while the engine is idle. */
void sl_engine_get_gaps(const sl_engine *g, sl_engine_gaps *out);

/* Test hook: called on the compute thread with the logits row of every
 * sampled token (pos = position of the token these logits follow). */
typedef void (*sl_engine_logits_fn)(void *ctx, uint64_t rid, int pos, const float *logits,
                                    int vocab);
void sl_engine_set_logits_hook(sl_engine *g, sl_engine_logits_fn fn, void *ctx);

#endif

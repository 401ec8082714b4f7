/* worker/pool.h: fixed-size id pools for KV pages and mamba state slots, and
 * the start-up sizing that turns a memory budget into pool sizes.
 *
 * A pool hands out integer ids 0..n-1 (a KV page id indexes the paged KV
 * cache, a slot id the conv + SSM state tensors of sl_model_cache). It only
 * does the bookkeeping: the memory behind the ids belongs to the model cache.
 * Every id is either free or owned by exactly one holder (a request or the
 * radix tree); double frees and frees of unknown ids are bugs (SL_ASSERT).
 *
 *   sl_pool *pages; sl_pool_new(&pages, "kv page", n_pages, &e);
 *   int32_t ids[4];
 *   if (sl_pool_alloc(pages, 4, ids) == 0) { ...; sl_pool_release(pages, ids, 4); }
 *   sl_pool_free(pages);
 *
 * Threads: one thread (the scheduler) uses a pool.
 */
#ifndef SL_POOL_H
#define SL_POOL_H

#include <stddef.h>
#include <stdint.h>

#include "sl_err.h"

typedef struct sl_pool sl_pool;

/* what names the ids in messages ("kv page"); n may be 0 (an empty pool). */
sl_status sl_pool_new(sl_pool **out, const char *what, int n, sl_err *e);
void sl_pool_free(sl_pool *p);
/* All-or-nothing: 0 and n ids in out, or -1 (nothing taken) if fewer are free. */
int sl_pool_alloc(sl_pool *p, int n, int32_t *out);
/* Returns ids to the pool; every id must be allocated (asserted). */
void sl_pool_release(sl_pool *p, const int32_t *ids, int n);
int sl_pool_free_count(const sl_pool *p);
int sl_pool_total(const sl_pool *p);
int sl_pool_is_used(const sl_pool *p, int32_t id);

/* ---- sizing ---------------------------------------------------------------- */

typedef struct sl_pool_sizing {
    size_t budget_bytes; /* memory for KV pages + state slots together */
    size_t page_bytes;   /* one KV page over all attention layers */
    size_t slot_bytes;   /* one state slot over all linear layers (0: no linear layers) */
    int page_size;
    int context_len;       /* longest sequence a request may reach */
    int max_running;       /* requested --max-running-requests (0: derive) */
    int slots_per_request; /* working + track slots a running request holds */
    int max_total_tokens;  /* --max-total-tokens: fixes the KV pool (0: from budget) */
    int max_state_slots;   /* --max-mamba-cache-size: fixes the slot pool (0: from budget) */
    double state_ratio;    /* --mamba-full-memory-ratio: state bytes / KV bytes (0.9) */
} sl_pool_sizing;

typedef struct sl_pool_plan {
    int n_pages, n_slots, max_running;
} sl_pool_plan;

/* Splits the budget between KV pages and state slots (state gets
 * budget·r/(1+r) like SGLang, unless fixed), and derives max_running when
 * not given. Errors say which number is too small: the KV pool must hold one
 * full-context request, the slot pool one slot set per running request plus
 * one cached state. */
sl_status sl_pool_plan_sizes(const sl_pool_sizing *s, sl_pool_plan *out, sl_err *e);

#endif

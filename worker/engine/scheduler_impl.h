/* worker/engine/scheduler_impl.h: the scheduler's private state, shared by
 * scheduler.c (requests, results, introspection) and sched_batch.c (memory
 * and batch building). Not for other modules. */
#ifndef SL_SCHEDULER_IMPL_H
#define SL_SCHEDULER_IMPL_H

#include <stdlib.h>

#include "pool.h"
#include "radix.h"
#include "scheduler.h"
#include "sl_log.h"

/* HELD: a prefill-role request whose first token is out, keeping its memory
 * for the transfer; AWAIT: a decode-role request with memory, waiting for it */
typedef enum req_state { REQ_QUEUED, REQ_RUNNING, REQ_HELD, REQ_AWAIT, REQ_DONE } req_state;

struct sl_sched_req_impl {
    uint64_t rid, arrival;
    int priority;
    int32_t *toks; /* prompt + every output token known so far */
    int n_tok, cap_tok, n_prompt, n_out;
    int max_new, min_new, ignore_eos, n_stop;
    int32_t *stop;
    sl_sampler_id sampler; /* its state in the scheduler's table */
    int want_logprobs;
    req_state st;
    int inflight;  /* built batches (not yet completed) that hold this request */
    int n_pending; /* of those, how many sample a token for it */
    /* memory: pages[0 .. tree_len/P) belong to the tree (locked through
     * node), the rest to the request */
    int32_t *pages;
    int n_pages, cap_pages;
    int kv_len;   /* tokens whose KV is computed or being computed */
    int tree_len; /* cached prefix held through node */
    sl_radix_node *node;
    int32_t W, T;      /* working and track state slots (-1: none) */
    int32_t copy_from; /* state to copy into W before the first chunk */
    int32_t pend_slot; /* snapshot (or -1 for a KV-only insert) waiting for its key */
    int pend_len;      /* its depth; 0: nothing pending */
    int branch_len;    /* hybrid: where siblings would hit, from the match */
    int cached_tokens, admitted;
    sl_pd_role pd;
    sl_sched_req_impl *prev, *next;
};

typedef struct req_list {
    sl_sched_req_impl *head, *tail;
    int n;
} req_list;

/* rid -> live request (queued or running): open addressing, tombstones. */
typedef struct rid_slot {
    uint64_t rid;
    sl_sched_req_impl *r; /* NULL: empty; &rid_tomb: deleted */
} rid_slot;
extern sl_sched_req_impl sched_rid_tomb;

struct sl_sched {
    sl_sched_config cfg;
    sl_sampler_table *samplers; /* request sampling states, read by the runner */
    rid_slot *map;
    int map_cap, map_used; /* used counts tombstones too */
    int C;                 /* checkpoint unit max(64, page) */
    int max_seq;           /* longest sequence: context length, and what the KV pool can hold with a
                            * spare page for the discarded step of overlap */
    sl_pool *pages, *slots;
    sl_radix *tree; /* NULL with --disable-radix-cache */
    req_list queue, running;
    req_list held, await; /* disaggregation: see req_state */
    uint64_t arrivals, batch_seq;
    sl_sched_batch batch[2];
    int busy[2];
    int32_t *match_pages;
    sl_sched_event *ev;
    int ev_head, ev_n, ev_cap;
    sl_sched_stats stats;
};

/* ---- small helpers ------------------------------------------------------------- */

static inline void list_remove(req_list *l, sl_sched_req_impl *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        l->head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        l->tail = r->prev;
    r->prev = r->next = NULL;
    l->n--;
}

static inline void list_append(req_list *l, sl_sched_req_impl *r)
{
    r->next = NULL;
    r->prev = l->tail;
    if (l->tail)
        l->tail->next = r;
    else
        l->head = r;
    l->tail = r;
    l->n++;
}

/* Queue order: higher priority first, then arrival. */
static inline void queue_insert(req_list *l, sl_sched_req_impl *r)
{
    sl_sched_req_impl *at = l->head;
    while (at && (at->priority > r->priority ||
                  (at->priority == r->priority && at->arrival < r->arrival)))
        at = at->next;
    if (!at) {
        list_append(l, r);
        return;
    }
    r->next = at;
    r->prev = at->prev;
    if (at->prev)
        at->prev->next = r;
    else
        l->head = r;
    at->prev = r;
    l->n++;
}

static inline int ceil_div(int a, int b)
{
    return (a + b - 1) / b;
}

static inline int hybrid_cache(const sl_sched *s)
{
    return s->cfg.hybrid && s->tree;
}

/* ---- shared between scheduler.c and sched_batch.c ---- */

void sched_push_event(sl_sched *s, const sl_sched_event *ev);
/* scheduler.c: the rid map and request records */
sl_sched_req_impl *sched_find(const sl_sched *s, uint64_t rid);
void sched_map_del(sl_sched *s, uint64_t rid);
void sched_free_req(sl_sched *s, sl_sched_req_impl *r);
/* sched_batch.c: memory, finishing, batches */
void sched_release_memory(sl_sched *s, sl_sched_req_impl *r, int cache);
void sched_finish(sl_sched *s, sl_sched_req_impl *r, sl_finish why);
void sched_emit_finish(sl_sched *s, sl_sched_req_impl *r, sl_finish why);
/* scheduler.c: appends a sampled token to r, emits it and finishes r if it
 * ends there */
void sched_take_token(sl_sched *s, sl_sched_req_impl *r, int32_t t, const sl_sample *sample);
/* sched_batch.c: admits a decode-role request (memory, pd_ready event) */
int sched_admit_await(sl_sched *s, sl_sched_req_impl *r);
void sched_batch_free(sl_sched_batch *b);

#endif

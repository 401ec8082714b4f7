#include "scheduler.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "pool.h"
#include "radix.h"
#include "sl_log.h"

typedef enum req_state { REQ_QUEUED, REQ_RUNNING, REQ_DONE } req_state;

struct sl_sched_req_impl {
    uint64_t rid, arrival;
    int priority;
    int32_t *toks; /* prompt + every output token known so far */
    int n_tok, cap_tok, n_prompt, n_out;
    int max_new, min_new, ignore_eos, n_stop;
    int32_t *stop;
    sl_sampler_state *ss;
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
static sl_sched_req_impl rid_tomb;

struct sl_sched {
    sl_sched_config cfg;
    rid_slot *map;
    int map_cap, map_used; /* used counts tombstones too */
    int C;                 /* checkpoint unit max(64, page) */
    int max_seq;           /* longest sequence: context length, and what the KV pool can hold with a
                            * spare page for the discarded step of overlap */
    sl_pool *pages, *slots;
    sl_radix *tree; /* NULL with --disable-radix-cache */
    req_list queue, running;
    uint64_t arrivals, batch_seq;
    sl_sched_batch batch[2];
    int busy[2];
    int32_t *match_pages;
    sl_sched_event *ev;
    int ev_head, ev_n, ev_cap;
    sl_sched_stats stats;
};

/* ---- small helpers ------------------------------------------------------------- */

static void list_remove(req_list *l, sl_sched_req_impl *r)
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

static void list_append(req_list *l, sl_sched_req_impl *r)
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
static void queue_insert(req_list *l, sl_sched_req_impl *r)
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

static int ceil_div(int a, int b)
{
    return (a + b - 1) / b;
}

static void push_event(sl_sched *s, const sl_sched_event *ev)
{
    if (s->ev_n == s->ev_cap) {
        int ncap = s->ev_cap ? 2 * s->ev_cap : 256;
        sl_sched_event *n = malloc(sizeof *n * (size_t)ncap);
        SL_ASSERT(n); /* events are small; running out of memory here is fatal */
        for (int i = 0; i < s->ev_n; i++)
            n[i] = s->ev[(s->ev_head + i) % s->ev_cap];
        free(s->ev);
        s->ev = n;
        s->ev_cap = ncap;
        s->ev_head = 0;
    }
    s->ev[(s->ev_head + s->ev_n++) % s->ev_cap] = *ev;
}

int sl_sched_pop_event(sl_sched *s, sl_sched_event *ev)
{
    if (!s->ev_n) return 0;
    *ev = s->ev[s->ev_head];
    s->ev_head = (s->ev_head + 1) % s->ev_cap;
    s->ev_n--;
    return 1;
}

static int hybrid_cache(const sl_sched *s)
{
    return s->cfg.hybrid && s->tree;
}

/* ---- configuration ------------------------------------------------------------- */

sl_status sl_sched_config_check(const sl_sched_config *c, sl_err *e)
{
    int P = c->page_size;
    if (P <= 0) return sl_err_set(e, SL_ERR_INVALID, "--page-size must be positive");
    int hi = P > 64 ? P : 64, lo = P > 64 ? 64 : P;
    if (c->hybrid && hi % lo)
        return sl_err_set(e, SL_ERR_INVALID,
                          "--page-size %d is incompatible with the 64-token GDN chunk: "
                          "max(64, page) must be a multiple of min(64, page)",
                          P);
    if (c->hybrid && (c->track_interval <= 0 || c->track_interval % P))
        return sl_err_set(e, SL_ERR_INVALID,
                          "--mamba-track-interval %d must be a positive multiple of --page-size %d",
                          c->track_interval, P);
    if (c->hybrid && c->strategy == SL_MAMBA_NO_BUFFER && c->overlap)
        return sl_err_set(e, SL_ERR_INVALID,
                          "--mamba-scheduler-strategy no_buffer needs --disable-overlap-schedule");
    if (c->chunked_prefill_size > 0 && c->chunked_prefill_size < P)
        return sl_err_set(e, SL_ERR_INVALID,
                          "--chunked-prefill-size %d is smaller than --page-size %d: a chunk "
                          "must hold at least one page",
                          c->chunked_prefill_size, P);
    if (c->max_running <= 0 || c->context_len <= 1 || c->n_pages < 2 || c->vocab <= 0)
        return sl_err_set(e, SL_ERR_INVALID, "scheduler: bad sizes");
    if (c->hybrid && c->n_slots < 2)
        return sl_err_set(e, SL_ERR_INVALID, "scheduler: a hybrid model needs state slots");
    return SL_OK;
}

sl_status sl_sched_new(sl_sched **out, const sl_sched_config *cfg, sl_err *e)
{
    *out = NULL;
    sl_status st = sl_sched_config_check(cfg, e);
    if (st) return st;
    sl_sched *s = calloc(1, sizeof *s);
    if (!s) return sl_err_set(e, SL_ERR_NOMEM, "scheduler: out of memory");
    s->cfg = *cfg;
    s->C = cfg->page_size > 64 ? cfg->page_size : 64;
    s->max_seq = (cfg->n_pages - 1) * cfg->page_size;
    if (s->max_seq > cfg->context_len) s->max_seq = cfg->context_len;
    st = sl_pool_new(&s->pages, "kv page", cfg->n_pages, e);
    if (!st && cfg->hybrid) st = sl_pool_new(&s->slots, "state slot", cfg->n_slots, e);
    if (!st && !cfg->disable_radix) {
        sl_radix_config rc = {.page_size = cfg->page_size,
                              .hybrid = cfg->hybrid,
                              .chunk = s->C,
                              .pages = s->pages,
                              .slots = s->slots};
        st = sl_radix_new(&s->tree, &rc, e);
    }
    if (!st) {
        s->match_pages = malloc(sizeof(int32_t) * (size_t)cfg->n_pages);
        if (!s->match_pages) st = sl_err_set(e, SL_ERR_NOMEM, "scheduler: out of memory");
    }
    if (st) {
        sl_sched_free(s);
        return st;
    }
    *out = s;
    return SL_OK;
}

static void free_req(sl_sched_req_impl *r)
{
    sl_sampler_state_free(r->ss);
    free(r->toks);
    free(r->stop);
    free(r->pages);
    free(r);
}

static void release_memory(sl_sched *s, sl_sched_req_impl *r, int cache);
static void batch_free(sl_sched_batch *b);

void sl_sched_free(sl_sched *s)
{
    if (!s) return;
    SL_ASSERT(!s->busy[0] && !s->busy[1]);
    while (s->running.head) {
        sl_sched_req_impl *r = s->running.head;
        list_remove(&s->running, r);
        release_memory(s, r, 0);
        free_req(r);
    }
    while (s->queue.head) {
        sl_sched_req_impl *r = s->queue.head;
        list_remove(&s->queue, r);
        free_req(r);
    }
    sl_radix_destroy(s->tree);
    sl_pool_free(s->pages);
    sl_pool_free(s->slots);
    batch_free(&s->batch[0]);
    batch_free(&s->batch[1]);
    free(s->match_pages);
    free(s->map);
    free(s->ev);
    free(s);
}

/* ---- submit / abort ------------------------------------------------------------ */

static uint64_t rid_hash(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    return x ^ (x >> 33);
}

static sl_sched_req_impl *find(const sl_sched *s, uint64_t rid)
{
    if (!s->map_cap) return NULL;
    for (uint64_t i = rid_hash(rid);; i++) {
        const rid_slot *e = &s->map[i & (uint64_t)(s->map_cap - 1)];
        if (!e->r) return NULL;
        if (e->r != &rid_tomb && e->rid == rid) return e->r;
    }
}

static int map_put(sl_sched *s, sl_sched_req_impl *r)
{
    if (2 * (s->map_used + 1) > s->map_cap) {
        int live = 0, cap = 256; /* rehashing also drops the tombstones */
        for (int i = 0; i < s->map_cap; i++)
            live += s->map[i].r && s->map[i].r != &rid_tomb;
        while (cap < 4 * (live + 1))
            cap *= 2;
        rid_slot *old = s->map, *nm = calloc((size_t)cap, sizeof *nm);
        if (!nm) return -1;
        int ocap = s->map_cap;
        s->map = nm;
        s->map_cap = cap;
        s->map_used = 0;
        for (int i = 0; i < ocap; i++)
            if (old[i].r && old[i].r != &rid_tomb) map_put(s, old[i].r);
        free(old);
    }
    for (uint64_t i = rid_hash(r->rid);; i++) {
        rid_slot *e = &s->map[i & (uint64_t)(s->map_cap - 1)];
        if (!e->r) {
            e->rid = r->rid;
            e->r = r;
            s->map_used++;
            return 0;
        }
    }
}

static void map_del(sl_sched *s, uint64_t rid)
{
    for (uint64_t i = rid_hash(rid);; i++) {
        rid_slot *e = &s->map[i & (uint64_t)(s->map_cap - 1)];
        SL_ASSERT(e->r);
        if (e->r != &rid_tomb && e->rid == rid) {
            e->r = &rid_tomb;
            return;
        }
    }
}

sl_status sl_sched_submit(sl_sched *s, const sl_sched_req *q, sl_err *e)
{
    int n = q->n_prompt + q->n_output;
    if (q->n_prompt <= 0)
        return sl_err_set(e, SL_ERR_INVALID, "request %llu: empty prompt",
                          (unsigned long long)q->rid);
    if (n >= s->max_seq)
        return sl_err_set(e, SL_ERR_LIMIT,
                          "request %llu: %d input tokens leave no room to generate (context length "
                          "%d, KV pool %d tokens)",
                          (unsigned long long)q->rid, n, s->cfg.context_len,
                          s->cfg.n_pages * s->cfg.page_size);
    if (q->max_new < 0 || q->min_new < 0)
        return sl_err_set(e, SL_ERR_INVALID, "request %llu: negative token limits",
                          (unsigned long long)q->rid);
    if (find(s, q->rid))
        return sl_err_set(e, SL_ERR_INVALID, "request %llu is already running",
                          (unsigned long long)q->rid);
    sl_sched_req_impl *r = calloc(1, sizeof *r);
    if (!r) return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    r->cap_tok = n + 16;
    r->toks = malloc(sizeof(int32_t) * (size_t)r->cap_tok);
    r->stop = malloc(sizeof(int32_t) * (size_t)(q->n_stop + 1));
    r->ss = sl_sampler_state_new(&q->sampling, q->prompt, q->n_prompt, q->rid);
    if (!r->toks || !r->stop || !r->ss) {
        free_req(r);
        return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    }
    memcpy(r->toks, q->prompt, sizeof(int32_t) * (size_t)q->n_prompt);
    if (q->n_output) {
        memcpy(r->toks + q->n_prompt, q->output, sizeof(int32_t) * (size_t)q->n_output);
        sl_sampler_state_add_output(r->ss, q->output, q->n_output);
    }
    if (q->n_stop) memcpy(r->stop, q->stop_ids, sizeof(int32_t) * (size_t)q->n_stop);
    r->rid = q->rid;
    r->arrival = s->arrivals++;
    r->priority = q->priority;
    r->n_tok = n;
    r->n_prompt = q->n_prompt;
    r->n_out = q->n_output;
    r->max_new = q->max_new;
    r->min_new = q->min_new;
    r->ignore_eos = q->ignore_eos;
    r->n_stop = q->n_stop;
    r->W = r->T = r->copy_from = r->pend_slot = -1;
    r->st = REQ_QUEUED;
    if (map_put(s, r)) {
        free_req(r);
        return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    }
    queue_insert(&s->queue, r);
    return SL_OK;
}

/* ---- memory -------------------------------------------------------------------- */

/* Ids from a pool, evicting unlocked cache entries first if needed. */
static int take_pages(sl_sched *s, int n, int32_t *out)
{
    int lack = n - sl_pool_free_count(s->pages);
    if (lack > 0 && s->tree) s->stats.evicted_pages += sl_radix_evict(s->tree, lack);
    return sl_pool_alloc(s->pages, n, out);
}

static int take_slot(sl_sched *s, int32_t *out)
{
    if (sl_pool_free_count(s->slots) == 0 && s->tree) sl_radix_evict_states(s->tree, 1);
    return sl_pool_alloc(s->slots, 1, out);
}

static void free_slot(sl_sched *s, int32_t *slot)
{
    if (*slot < 0) return;
    sl_pool_release(s->slots, slot, 1);
    *slot = -1;
}

/* Grows r's page table to cover tokens [0, end). */
static int grow_pages(sl_sched *s, sl_sched_req_impl *r, int end)
{
    int need = ceil_div(end, s->cfg.page_size);
    if (need <= r->n_pages) return 0;
    if (need > r->cap_pages) {
        int cap = need + 16;
        int32_t *p = realloc(r->pages, sizeof(int32_t) * (size_t)cap);
        if (!p) return -1;
        r->pages = p;
        r->cap_pages = cap;
    }
    if (take_pages(s, need - r->n_pages, r->pages + r->n_pages)) return -1;
    r->n_pages = need;
    return 0;
}

/* Caches r's first len tokens (with state slot, or -1) and moves r's lock to
 * the new node. */
static void cache_prefix(sl_sched *s, sl_sched_req_impl *r, int len, int32_t slot)
{
    SL_ASSERT(len > r->tree_len && len % s->cfg.page_size == 0 && len <= r->n_tok &&
              len <= r->n_pages * s->cfg.page_size);
    sl_radix_node *end;
    sl_radix_insert(s->tree, r->toks, len, r->pages, slot, &end);
    sl_radix_lock(s->tree, end);
    if (r->node) sl_radix_unlock(s->tree, r->node);
    r->node = end;
    r->tree_len = len;
}

/* Inserts the pending snapshot (or KV prefix) of r if its key is known. */
static void resolve_pending(sl_sched *s, sl_sched_req_impl *r)
{
    if (!r->pend_len || r->pend_len > r->n_tok) return;
    if (r->pend_len > r->tree_len) {
        cache_prefix(s, r, r->pend_len, r->pend_slot);
    } else if (r->pend_slot >= 0) {
        free_slot(s, &r->pend_slot);
    }
    r->pend_slot = -1;
    r->pend_len = 0;
}

/* Gives back everything r holds. With cache, what r computed is offered to
 * the tree first (pure attention: its whole pages; no_buffer: W at its exact
 * depth; extra_buffer has handed its snapshots over already). */
static void release_memory(sl_sched *s, sl_sched_req_impl *r, int cache)
{
    int P = s->cfg.page_size, known = r->kv_len < r->n_tok ? r->kv_len : r->n_tok;
    if (cache && s->tree) {
        resolve_pending(s, r);
        if (!s->cfg.hybrid) {
            int L = known / P * P;
            if (L > r->tree_len) cache_prefix(s, r, L, -1);
        } else if (s->cfg.strategy == SL_MAMBA_NO_BUFFER && r->W >= 0 && known == r->kv_len &&
                   known % P == 0 && known > r->tree_len) {
            cache_prefix(s, r, known, r->W);
            r->W = -1;
        }
    }
    if (r->node) sl_radix_unlock(s->tree, r->node);
    int own = r->tree_len / P;
    if (r->n_pages > own) sl_pool_release(s->pages, r->pages + own, r->n_pages - own);
    if (s->slots) {
        free_slot(s, &r->W);
        free_slot(s, &r->T);
        free_slot(s, &r->pend_slot);
    }
    r->node = NULL;
    r->n_pages = r->kv_len = r->tree_len = r->pend_len = r->branch_len = 0;
    r->copy_from = -1;
}

static void emit_finish(sl_sched *s, sl_sched_req_impl *r, sl_finish why)
{
    sl_sched_event ev = {.rid = r->rid,
                         .token = -1,
                         .finish = why,
                         .prompt_tokens = r->n_prompt,
                         .completion_tokens = r->n_out,
                         .cached_tokens = r->cached_tokens};
    push_event(s, &ev);
}

/* Ends r (running or queued): memory goes back at once; the struct lives on
 * while a built batch still refers to it. */
static void finish(sl_sched *s, sl_sched_req_impl *r, sl_finish why)
{
    emit_finish(s, r, why);
    if (r->st == REQ_RUNNING)
        list_remove(&s->running, r);
    else if (r->st == REQ_QUEUED)
        list_remove(&s->queue, r);
    release_memory(s, r, why == SL_FINISH_STOP || why == SL_FINISH_LENGTH);
    map_del(s, r->rid);
    r->st = REQ_DONE;
    if (!r->inflight) free_req(r);
}

int sl_sched_abort(sl_sched *s, uint64_t rid)
{
    sl_sched_req_impl *r = find(s, rid);
    if (!r) return 0;
    finish(s, r, SL_FINISH_ABORT);
    return 1;
}

void sl_sched_fail_all(sl_sched *s)
{
    while (s->running.head)
        finish(s, s->running.head, SL_FINISH_ERROR);
    while (s->queue.head)
        finish(s, s->queue.head, SL_FINISH_ERROR);
}

/* Back to the queue with its tokens; prefilled again when memory allows. */
static void retract(sl_sched *s, sl_sched_req_impl *r)
{
    list_remove(&s->running, r);
    release_memory(s, r, 1);
    r->st = REQ_QUEUED;
    queue_insert(&s->queue, r);
    s->stats.retractions++;
    SL_LOGD("sched", "retracted request %llu (%d tokens)", (unsigned long long)r->rid, r->n_tok);
}

/* ---- batch building ------------------------------------------------------------ */

static int grow(void **p, int *cap, int need, size_t elem)
{
    if (need <= *cap) return 0;
    int ncap = need * 2 + 16;
    void *n = realloc(*p, elem * (size_t)ncap);
    if (!n) return -1;
    *p = n;
    *cap = ncap;
    return 0;
}

#define BATCH_REALLOC(field, n)                                                                    \
    do {                                                                                           \
        void *np_ = realloc(b->field, sizeof(*b->field) * (size_t)(n));                            \
        if (!np_) return -1;                                                                       \
        b->field = np_;                                                                            \
    } while (0)

/* Room for `tokens` tokens and `seqs` sequences (contents kept). */
static int batch_room(sl_sched_batch *b, int tokens, int seqs)
{
    if (tokens > b->cap_tokens) {
        int cap = tokens * 2 + 64;
        BATCH_REALLOC(ids, cap);
        BATCH_REALLOC(pos, cap);
        BATCH_REALLOC(kv_slot, cap);
        b->cap_tokens = cap;
    }
    if (seqs > b->cap_seqs) {
        int cap = seqs * 2 + 16;
        BATCH_REALLOC(q_start, cap + 1);
        BATCH_REALLOC(kv_len, cap);
        BATCH_REALLOC(state_slot, cap);
        BATCH_REALLOC(state_fresh, cap);
        BATCH_REALLOC(track_slot, cap);
        BATCH_REALLOC(track_len, cap);
        BATCH_REALLOC(feed_last, cap);
        BATCH_REALLOC(rows, cap);
        BATCH_REALLOC(row_seq, cap);
        BATCH_REALLOC(sampler, cap);
        BATCH_REALLOC(out, cap);
        BATCH_REALLOC(reqs, cap);
        BATCH_REALLOC(rid, cap);
        b->cap_seqs = cap;
    }
    return 0;
}

static int add_copy(sl_sched_batch *b, int32_t dst, int32_t src)
{
    if (b->n_copy == b->cap_copy) {
        int cap = 2 * b->cap_copy + 16;
        BATCH_REALLOC(copy_dst, cap);
        BATCH_REALLOC(copy_src, cap);
        b->cap_copy = cap;
    }
    b->copy_dst[b->n_copy] = dst;
    b->copy_src[b->n_copy] = src;
    b->n_copy++;
    return 0;
}

static void batch_free(sl_sched_batch *b)
{
    void *arrays[] = {b->ids,        b->pos,         b->kv_slot,    b->q_start,   b->kv_len,
                      b->state_slot, b->state_fresh, b->track_slot, b->track_len, b->feed_last,
                      b->rows,       b->row_seq,     b->sampler,    b->out,       b->reqs,
                      b->rid,        b->copy_dst,    b->copy_src,   b->page_table};
    for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++)
        free(arrays[i]);
}

/* Appends q tokens of r starting at kv_len; r's pages must cover them. */
static int add_seq(sl_sched *s, sl_sched_batch *b, sl_sched_req_impl *r, int q, int sample,
                   int feed_last, int32_t track_slot, int track_len)
{
    int P = s->cfg.page_size, i = b->meta.n_seqs, t0 = b->meta.n_tokens;
    if (batch_room(b, t0 + q, i + 1)) return -1;
    if (r->copy_from >= 0 && add_copy(b, r->W, r->copy_from)) return -1;
    r->copy_from = -1;
    for (int k = 0; k < q; k++) {
        int p = r->kv_len + k;
        b->ids[t0 + k] = p < r->n_tok ? r->toks[p] : -1;
        b->pos[t0 + k] = p;
        b->kv_slot[t0 + k] = r->pages[p / P] * P + p % P;
    }
    b->q_start[i] = t0;
    b->q_start[i + 1] = t0 + q;
    b->kv_len[i] = r->kv_len + q;
    b->state_slot[i] = s->cfg.hybrid ? r->W : -1;
    b->state_fresh[i] = r->kv_len == 0;
    b->track_slot[i] = track_slot;
    b->track_len[i] = track_slot >= 0 ? track_len : 0;
    b->feed_last[i] = feed_last;
    b->sampler[i] = sample ? r->ss : NULL;
    b->reqs[i] = r;
    b->rid[i] = r->rid;
    if (sample) {
        b->rows[b->n_rows] = t0 + q - 1;
        b->row_seq[b->n_rows] = i;
        b->n_rows++;
        r->n_pending++;
    }
    b->meta.n_seqs = i + 1;
    b->meta.n_tokens = t0 + q;
    r->kv_len += q;
    r->inflight++;
    return 0;
}

/* A track slot for r (allocated lazily; -1 if the pool is exhausted, which
 * only costs cache hits). */
static int32_t track_slot(sl_sched *s, sl_sched_req_impl *r)
{
    if (r->pend_len) return -1; /* one snapshot in flight per request */
    if (r->T < 0 && take_slot(s, &r->T)) r->T = -1;
    return r->T;
}

static void decode_step(sl_sched *s, sl_sched_batch *b, sl_sched_req_impl *r)
{
    int L = r->kv_len + 1, feed = r->kv_len >= r->n_tok;
    int32_t ts = -1;
    if (hybrid_cache(s) && s->cfg.strategy == SL_MAMBA_EXTRA_BUFFER &&
        L % s->cfg.track_interval == 0 && (ts = track_slot(s, r)) >= 0) {
        r->pend_slot = ts;
        r->pend_len = L;
        r->T = -1;
    }
    if (add_seq(s, b, r, 1, 1, feed, ts, 1))
        SL_ASSERT(!"out of memory building a batch"); /* arrays only grow by a few ints */
}

/* Adds the next prefill chunk of r within *budget tokens. Returns 0, or -1
 * when no chunk fits (budget or memory). */
static int prefill_chunk(sl_sched *s, sl_sched_batch *b, sl_sched_req_impl *r, int *budget)
{
    int P = s->cfg.page_size, C = s->C, s0 = r->kv_len, rem = r->n_tok - s0;
    int q = rem < *budget ? rem : *budget;
    if (q < rem) q = q >= C ? q / C * C : q / P * P; /* chunk ends stay checkpoint aligned */
    if (q <= 0) return -1;
    if (grow_pages(s, r, s0 + q)) return -1;
    int32_t ts = -1;
    int tl = 0;
    if (hybrid_cache(s) && s->cfg.strategy == SL_MAMBA_EXTRA_BUFFER) {
        int target = 0;
        if (r->branch_len > s0 && r->branch_len <= s0 + q && (r->branch_len - s0) % C == 0)
            target = r->branch_len; /* replaces this chunk's end snapshot */
        else if (q >= C)
            target = s0 + q / C * C;
        if (target && (ts = track_slot(s, r)) >= 0) {
            tl = target - s0;
            r->pend_slot = ts;
            r->pend_len = target;
            r->T = -1;
            if (target == r->branch_len) r->branch_len = 0;
        }
    } else if (hybrid_cache(s) && q < rem && (s0 + q) % P == 0 && !r->pend_len) {
        /* no_buffer: snapshot the end of an unfinished prefill */
        if (!take_slot(s, &ts)) {
            tl = q;
            r->pend_slot = ts;
            r->pend_len = s0 + q;
        }
    } else if (s->tree && !s->cfg.hybrid && q < rem && (s0 + q) / P * P > r->tree_len) {
        r->pend_len = (s0 + q) / P * P; /* share the finished part of the prompt early */
        r->pend_slot = -1;
    }
    int sample = s0 + q == r->n_tok;
    if (add_seq(s, b, r, q, sample, 0, ts, tl)) SL_ASSERT(!"out of memory building a batch");
    *budget -= q;
    return 0;
}

/* Matches r against the cache, takes its state slots and makes it running. */
static int admit(sl_sched *s, sl_sched_req_impl *r)
{
    sl_radix_match m = {0};
    if (s->tree) sl_radix_match_prefix(s->tree, r->toks, r->n_tok, s->match_pages, &m);
    int P = s->cfg.page_size;
    if (s->cfg.hybrid) {
        /* Evicting the matched state while taking W is safe: its copy into W
         * runs before this batch's forward, ahead of any later writer. */
        if (m.len) sl_radix_lock(s->tree, m.node);
        if (take_slot(s, &r->W)) {
            if (m.len) sl_radix_unlock(s->tree, m.node);
            r->W = -1;
            return -1;
        }
        r->copy_from = m.len ? m.state : -1;
        if (s->tree && s->cfg.strategy == SL_MAMBA_EXTRA_BUFFER) {
            r->branch_len = m.branch_len;
            if (take_slot(s, &r->T)) r->T = -1;
        }
    } else if (m.len) {
        sl_radix_lock(s->tree, m.node);
    }
    if (m.len) {
        r->node = m.node;
        if (grow((void **)&r->pages, &r->cap_pages, m.len / P + 1, sizeof(int32_t))) {
            release_memory(s, r, 0);
            return -1;
        }
        memcpy(r->pages, s->match_pages, sizeof(int32_t) * (size_t)(m.len / P));
    }
    r->n_pages = m.len / P;
    r->kv_len = r->tree_len = m.len;
    if (!r->admitted) {
        r->admitted = 1;
        r->cached_tokens = m.len;
        s->stats.prompt_tokens += r->n_tok;
        s->stats.cached_tokens += m.len;
    }
    list_remove(&s->queue, r);
    list_append(&s->running, r);
    r->st = REQ_RUNNING;
    return 0;
}

static void unadmit(sl_sched *s, sl_sched_req_impl *r)
{
    list_remove(&s->running, r);
    release_memory(s, r, 0);
    r->st = REQ_QUEUED;
    queue_insert(&s->queue, r);
}

static int pages_available(const sl_sched *s)
{
    int n = sl_pool_free_count(s->pages);
    if (s->tree) {
        sl_radix_stats st;
        sl_radix_get_stats(s->tree, &st);
        n += st.evictable_pages;
    }
    return n;
}

static int is_decoding(const sl_sched_req_impl *r)
{
    return r->n_tok - r->kv_len <= 1;
}

/* Retracts requests until every decoding request can get its next page.
 * Returns how many were retracted. */
static int make_room_for_decode(sl_sched *s)
{
    for (int n = 0;; n++) {
        int need = 0;
        for (sl_sched_req_impl *r = s->running.head; r; r = r->next)
            if (is_decoding(r)) need += ceil_div(r->kv_len + 1, s->cfg.page_size) - r->n_pages;
        if (need <= pages_available(s) || s->running.n == 0) return n;
        sl_sched_req_impl *victim = NULL;
        for (sl_sched_req_impl *r = s->running.head; r; r = r->next)
            if (!victim || r->priority < victim->priority ||
                (r->priority == victim->priority && r->arrival > victim->arrival))
                victim = r;
        retract(s, victim);
    }
}

sl_sched_batch *sl_sched_next_batch(sl_sched *s)
{
    int k = s->busy[0] ? 1 : 0;
    if (s->busy[k]) return NULL;
    sl_sched_batch *b = &s->batch[k];
    memset(&b->meta, 0, sizeof b->meta);
    b->n_copy = b->n_rows = 0;
    for (sl_sched_req_impl *r = s->running.head; r; r = r->next)
        resolve_pending(s, r);

    int retracted = make_room_for_decode(s);
    for (sl_sched_req_impl *r = s->running.head; r; r = r->next)
        if (is_decoding(r)) {
            if (grow_pages(s, r, r->kv_len + 1)) SL_ASSERT(!"decode page vanished");
            decode_step(s, b, r);
        }

    int budget = s->cfg.chunked_prefill_size > 0 ? s->cfg.chunked_prefill_size : INT_MAX;
    for (sl_sched_req_impl *r = s->running.head; r && budget > 0; r = r->next)
        if (!is_decoding(r)) prefill_chunk(s, b, r, &budget); /* skipped if it does not fit */

    int n_decoding = 0;
    for (sl_sched_req_impl *r = s->running.head; r; r = r->next)
        n_decoding += is_decoding(r);
    /* no admissions right after a retraction: it would only thrash */
    for (sl_sched_req_impl *r = retracted ? NULL : s->queue.head, *nx; r && budget > 0; r = nx) {
        nx = r->next;
        if (s->running.n >= s->cfg.max_running) break;
        if (r->n_pending) continue; /* retracted with a token still being sampled */
        int want = r->n_tok < budget ? r->n_tok : budget;
        if (pages_available(s) < ceil_div(want, s->cfg.page_size) + n_decoding) break;
        if (admit(s, r)) break;
        if (prefill_chunk(s, b, r, &budget)) {
            unadmit(s, r);
            break;
        }
    }

    if (b->meta.n_seqs == 0) return NULL;
    /* page table, then the snapshots whose keys are known (their dedupe may
     * rewrite the requests' tables, never this batch's copy) */
    int maxp = 1, P = s->cfg.page_size;
    for (int i = 0; i < b->meta.n_seqs; i++) {
        int np = ceil_div(b->kv_len[i], P);
        if (np > maxp) maxp = np;
    }
    if (grow((void **)&b->page_table, &b->cap_pt, b->meta.n_seqs * maxp, sizeof(int32_t)))
        SL_ASSERT(!"out of memory building a batch");
    for (int i = 0; i < b->meta.n_seqs; i++) {
        int32_t *row = b->page_table + (size_t)i * maxp;
        int np = ceil_div(b->kv_len[i], P);
        memcpy(row, b->reqs[i]->pages, sizeof(int32_t) * (size_t)np);
        for (int j = np; j < maxp; j++)
            row[j] = 0;
    }
    for (sl_sched_req_impl *r = s->running.head; r; r = r->next)
        resolve_pending(s, r);

    b->seq = s->batch_seq++;
    b->meta.page_size = P;
    b->meta.max_pages = maxp;
    s->busy[k] = 1;
    return b;
}

/* ---- results ------------------------------------------------------------------- */

static int is_in(int32_t t, const int32_t *v, int n)
{
    for (int i = 0; i < n; i++)
        if (v[i] == t) return 1;
    return 0;
}

void sl_sched_complete(sl_sched *s, sl_sched_batch *b)
{
    int k = b == &s->batch[1];
    SL_ASSERT(s->busy[k]);
    for (int i = 0; i < b->meta.n_seqs; i++) {
        sl_sched_req_impl *r = b->reqs[i];
        r->inflight--;
        if (b->sampler[i]) r->n_pending--;
        if (r->st == REQ_DONE) {
            if (!r->inflight) free_req(r);
            continue;
        }
        if (!b->sampler[i]) continue;
        if (r->n_out >= r->max_new) { /* max_new_tokens = 0: prefill only */
            finish(s, r, SL_FINISH_LENGTH);
            continue;
        }
        int32_t t = b->out[i].token;
        if (r->n_tok == r->cap_tok) {
            int cap = r->cap_tok * 2;
            int32_t *nt = realloc(r->toks, sizeof(int32_t) * (size_t)cap);
            if (!nt) {
                finish(s, r, SL_FINISH_ERROR);
                continue;
            }
            r->toks = nt;
            r->cap_tok = cap;
        }
        r->toks[r->n_tok++] = t;
        r->n_out++;
        const sl_sampling *sp = sl_sampler_params(r->ss);
        sl_sched_event ev = {.rid = r->rid,
                             .token = t,
                             .sample = b->out[i],
                             .has_sample = 1,
                             .want_logprobs = sp->logprobs || sp->top_logprobs > 0};
        push_event(s, &ev);
        sl_finish why = SL_FINISH_NONE;
        if (r->n_out >= r->min_new && ((!r->ignore_eos && is_in(t, s->cfg.eos, s->cfg.n_eos)) ||
                                       is_in(t, r->stop, r->n_stop)))
            why = SL_FINISH_STOP;
        else if (r->n_out >= r->max_new || r->n_tok >= s->max_seq)
            why = SL_FINISH_LENGTH;
        if (why) finish(s, r, why);
    }
    s->busy[k] = 0;
}

void sl_sched_abandon(sl_sched *s, sl_sched_batch *b)
{
    int k = b == &s->batch[1];
    SL_ASSERT(s->busy[k]);
    for (int i = 0; i < b->meta.n_seqs; i++) {
        sl_sched_req_impl *r = b->reqs[i];
        r->inflight--;
        if (b->sampler[i]) r->n_pending--;
        if (r->st == REQ_DONE && !r->inflight) free_req(r);
    }
    s->busy[k] = 0;
}

/* ---- introspection ------------------------------------------------------------- */

void sl_sched_get_stats(const sl_sched *s, sl_sched_stats *st)
{
    *st = s->stats;
    st->running = s->running.n;
    st->queued = s->queue.n;
    st->in_flight = s->busy[0] + s->busy[1];
    st->free_pages = sl_pool_free_count(s->pages);
    st->total_pages = sl_pool_total(s->pages);
    st->free_slots = s->slots ? sl_pool_free_count(s->slots) : 0;
    st->total_slots = s->slots ? sl_pool_total(s->slots) : 0;
    st->checkpoint_tokens = s->cfg.hybrid ? s->C : 0;
    if (s->tree) {
        sl_radix_stats rs;
        sl_radix_get_stats(s->tree, &rs);
        st->evictable_pages = rs.evictable_pages;
        st->evictable_states = rs.evictable_states;
        st->tree_pages = rs.pages;
        st->tree_states = rs.states;
    }
}

int sl_sched_flush_cache(sl_sched *s)
{
    if (!s->tree) return 0;
    int n = sl_radix_evict(s->tree, INT_MAX);
    sl_radix_evict_states(s->tree, INT_MAX);
    return n;
}

int sl_sched_idle(const sl_sched *s)
{
    return !s->running.n && !s->queue.n && !s->busy[0] && !s->busy[1];
}

sl_status sl_sched_check(const sl_sched *s, sl_err *e)
{
    int P = s->cfg.page_size, held_pages = 0, held_slots = 0;
    for (const sl_sched_req_impl *r = s->running.head; r; r = r->next) {
        held_pages += r->n_pages - r->tree_len / P;
        held_slots += (r->W >= 0) + (r->T >= 0) + (r->pend_slot >= 0);
        if (r->kv_len > r->n_pages * P || r->tree_len > r->kv_len)
            return sl_err_set(e, SL_ERR_INVALID, "request %llu: kv %d, tree %d, %d pages",
                              (unsigned long long)r->rid, r->kv_len, r->tree_len, r->n_pages);
    }
    for (const sl_sched_req_impl *r = s->queue.head; r; r = r->next)
        if (r->n_pages || r->W >= 0 || r->T >= 0 || r->pend_slot >= 0 || r->node)
            return sl_err_set(e, SL_ERR_INVALID, "queued request %llu holds memory",
                              (unsigned long long)r->rid);
    if (s->tree) return sl_radix_check(s->tree, held_pages, held_slots, e);
    int pf = sl_pool_free_count(s->pages), pt = sl_pool_total(s->pages);
    if (pf + held_pages != pt)
        return sl_err_set(e, SL_ERR_INVALID, "page accounting: %d free + %d held != %d", pf,
                          held_pages, pt);
    if (s->slots && sl_pool_free_count(s->slots) + held_slots != sl_pool_total(s->slots))
        return sl_err_set(e, SL_ERR_INVALID, "slot accounting: %d free + %d held != %d",
                          sl_pool_free_count(s->slots), held_slots, sl_pool_total(s->slots));
    return SL_OK;
}

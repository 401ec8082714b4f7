#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "scheduler_impl.h"

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
void sched_release_memory(sl_sched *s, sl_sched_req_impl *r, int cache)
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

void sched_emit_finish(sl_sched *s, sl_sched_req_impl *r, sl_finish why)
{
    sl_sched_event ev = {.rid = r->rid,
                         .token = -1,
                         .finish = why,
                         .prompt_tokens = r->n_prompt,
                         .completion_tokens = r->n_out,
                         .cached_tokens = r->cached_tokens};
    sched_push_event(s, &ev);
}

/* Ends r (running or queued): memory goes back at once; the struct lives on
 * while a built batch still refers to it. */
void sched_finish(sl_sched *s, sl_sched_req_impl *r, sl_finish why)
{
    sched_emit_finish(s, r, why);
    if (r->st == REQ_RUNNING)
        list_remove(&s->running, r);
    else if (r->st == REQ_QUEUED)
        list_remove(&s->queue, r);
    else if (r->st == REQ_HELD)
        list_remove(&s->held, r);
    else if (r->st == REQ_AWAIT)
        list_remove(&s->await, r);
    sched_release_memory(s, r, why == SL_FINISH_STOP || why == SL_FINISH_LENGTH);
    sched_map_del(s, r->rid);
    r->st = REQ_DONE;
    if (!r->inflight) sched_free_req(s, r);
}

int sl_sched_abort(sl_sched *s, uint64_t rid)
{
    sl_sched_req_impl *r = sched_find(s, rid);
    if (!r) return 0;
    sched_finish(s, r, SL_FINISH_ABORT);
    return 1;
}

void sl_sched_fail_all(sl_sched *s)
{
    while (s->running.head)
        sched_finish(s, s->running.head, SL_FINISH_ERROR);
    while (s->queue.head)
        sched_finish(s, s->queue.head, SL_FINISH_ERROR);
    while (s->held.head)
        sched_finish(s, s->held.head, SL_FINISH_ERROR);
    while (s->await.head)
        sched_finish(s, s->await.head, SL_FINISH_ERROR);
}

/* Back to the queue with its tokens; prefilled again when memory allows. */
static void retract(sl_sched *s, sl_sched_req_impl *r)
{
    list_remove(&s->running, r);
    sched_release_memory(s, r, 1);
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

void sched_batch_free(sl_sched_batch *b)
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
    b->sampler[i] = sample ? r->sampler : (sl_sampler_id){0};
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
            sched_release_memory(s, r, 0);
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
    sched_release_memory(s, r, 0);
    r->st = REQ_QUEUED;
    queue_insert(&s->queue, r);
}

/* Decode role: the cached prefix (matched as usual), pages for every token,
 * W (and T), and for the tree a copy of the transferred prefix: pure
 * attention its whole pages, hybrid a second slot that receives the same
 * state (when the length is page aligned). The state arrives by transfer:
 * no copy from the matched node, no branch snapshot. */
int sched_admit_await(sl_sched *s, sl_sched_req_impl *r)
{
    int P = s->cfg.page_size, n = r->n_tok;
    if (admit(s, r)) return -1;
    r->copy_from = -1;
    r->branch_len = 0;
    if (grow_pages(s, r, n)) {
        unadmit(s, r);
        return -1;
    }
    if (s->tree && !s->cfg.hybrid && n / P * P > r->tree_len) {
        r->pend_len = n / P * P;
        r->pend_slot = -1;
    } else if (hybrid_cache(s) && n % P == 0 && n > r->tree_len) {
        int32_t slot;
        if (!take_slot(s, &slot)) {
            r->pend_slot = slot;
            r->pend_len = n;
        }
    }
    list_remove(&s->running, r);
    list_append(&s->await, r);
    r->st = REQ_AWAIT;
    sl_sched_event ev = {.rid = r->rid,
                         .token = -1,
                         .pd_ready = 1,
                         .prompt_tokens = n,
                         .cached_tokens = r->tree_len};
    sched_push_event(s, &ev);
    return 0;
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

    /* One token budget per step, shared: the decodes already in the batch
     * count against --chunked-prefill-size, so a long prompt arriving while
     * many requests decode cannot stretch their inter-token latency beyond
     * one budget's compute. --mixed-prefill-tokens bounds it further while
     * anything decodes (a step's time, and so every decoding request's
     * inter-token latency, grows with its prefill tokens); a prompt alone
     * still takes the whole budget. Prefill keeps at least one checkpoint
     * unit (C tokens) a step, so it is never starved by decodes. */
    int budget = INT_MAX;
    if (s->cfg.chunked_prefill_size > 0) budget = s->cfg.chunked_prefill_size - b->meta.n_tokens;
    if (s->cfg.mixed_prefill_tokens > 0 && b->meta.n_seqs > 0 && budget > s->cfg.mixed_prefill_tokens)
        budget = s->cfg.mixed_prefill_tokens;
    if (budget < s->C) {
        int cap = s->cfg.chunked_prefill_size > 0 ? s->cfg.chunked_prefill_size : INT_MAX;
        budget = s->C < cap ? s->C : cap;
    }
    for (sl_sched_req_impl *r = s->running.head; r && budget > 0; r = r->next)
        if (!is_decoding(r)) prefill_chunk(s, b, r, &budget); /* skipped if it does not fit */

    int n_decoding = 0;
    for (sl_sched_req_impl *r = s->running.head; r; r = r->next)
        n_decoding += is_decoding(r);
    /* no admissions right after a retraction: it would only thrash */
    for (sl_sched_req_impl *r = retracted ? NULL : s->queue.head, *nx; r && budget > 0; r = nx) {
        nx = r->next;
        if (s->running.n + s->await.n >= s->cfg.max_running) break;
        if (r->n_pending) continue;  /* retracted with a token still being sampled */
        if (r->pd == SL_PD_DECODE) { /* memory only: the prompt comes over the network */
            if (pages_available(s) < ceil_div(r->n_tok, s->cfg.page_size) + n_decoding) break;
            if (sched_admit_await(s, r)) break;
            continue;
        }
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

#include "scheduler.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "scheduler_impl.h"

sl_sched_req_impl sched_rid_tomb;

void sched_push_event(sl_sched *s, const sl_sched_event *ev)
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
    st = sl_sampler_table_new(&s->samplers, e);
    if (!st) st = sl_pool_new(&s->pages, "kv page", cfg->n_pages, e);
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

void sched_free_req(sl_sched *s, sl_sched_req_impl *r)
{
    sl_sampler_table_remove(s->samplers, r->sampler);
    free(r->toks);
    free(r->stop);
    free(r->pages);
    free(r);
}

void sl_sched_free(sl_sched *s)
{
    if (!s) return;
    SL_ASSERT(!s->busy[0] && !s->busy[1]);
    while (s->running.head) {
        sl_sched_req_impl *r = s->running.head;
        list_remove(&s->running, r);
        sched_release_memory(s, r, 0);
        sched_free_req(s, r);
    }
    req_list *lists[2] = {&s->held, &s->await};
    for (int k = 0; k < 2; k++)
        while (lists[k]->head) {
            sl_sched_req_impl *r = lists[k]->head;
            list_remove(lists[k], r);
            sched_release_memory(s, r, 0);
            sched_free_req(s, r);
        }
    while (s->queue.head) {
        sl_sched_req_impl *r = s->queue.head;
        list_remove(&s->queue, r);
        sched_free_req(s, r);
    }
    sl_radix_destroy(s->tree);
    sl_pool_free(s->pages);
    sl_pool_free(s->slots);
    sched_batch_free(&s->batch[0]);
    sched_batch_free(&s->batch[1]);
    free(s->match_pages);
    sl_sampler_table_free(s->samplers);
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

sl_sched_req_impl *sched_find(const sl_sched *s, uint64_t rid)
{
    if (!s->map_cap) return NULL;
    for (uint64_t i = rid_hash(rid);; i++) {
        const rid_slot *e = &s->map[i & (uint64_t)(s->map_cap - 1)];
        if (!e->r) return NULL;
        if (e->r != &sched_rid_tomb && e->rid == rid) return e->r;
    }
}

static int map_put(sl_sched *s, sl_sched_req_impl *r)
{
    if (2 * (s->map_used + 1) > s->map_cap) {
        int live = 0, cap = 256; /* rehashing also drops the tombstones */
        for (int i = 0; i < s->map_cap; i++)
            live += s->map[i].r && s->map[i].r != &sched_rid_tomb;
        while (cap < 4 * (live + 1))
            cap *= 2;
        rid_slot *old = s->map, *nm = calloc((size_t)cap, sizeof *nm);
        if (!nm) return -1;
        int ocap = s->map_cap;
        s->map = nm;
        s->map_cap = cap;
        s->map_used = 0;
        for (int i = 0; i < ocap; i++)
            if (old[i].r && old[i].r != &sched_rid_tomb) map_put(s, old[i].r);
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

void sched_map_del(sl_sched *s, uint64_t rid)
{
    for (uint64_t i = rid_hash(rid);; i++) {
        rid_slot *e = &s->map[i & (uint64_t)(s->map_cap - 1)];
        SL_ASSERT(e->r);
        if (e->r != &sched_rid_tomb && e->rid == rid) {
            e->r = &sched_rid_tomb;
            return;
        }
    }
}

static int is_in(int32_t t, const int32_t *v, int n)
{
    for (int i = 0; i < n; i++)
        if (v[i] == t) return 1;
    return 0;
}

/* Hands q's grammar to ss: the output may end with the request's stop ids
 * and, unless it ignores eos, the model's eos ids. The matcher is ss's once
 * this returns SL_OK; ss (and the matcher) are freed on a later failure. */
static sl_status set_grammar(sl_sched *s, const sl_sched_req *q, sl_sampler_state *ss, sl_err *e)
{
    int n = 0, cap = q->n_stop + s->cfg.n_eos;
    int32_t *ends = malloc(sizeof(int32_t) * (size_t)(cap > 0 ? cap : 1));
    if (!ends) return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    for (int i = 0; i < q->n_stop; i++) ends[n++] = q->stop_ids[i];
    for (int i = 0; !q->ignore_eos && i < s->cfg.n_eos; i++)
        if (!is_in(s->cfg.eos[i], ends, n)) ends[n++] = s->cfg.eos[i];
    sl_status st = sl_sampler_set_grammar(ss, q->grammar, ends, n, q->grammar_start,
                                          q->n_grammar_start, e);
    free(ends);
    return st;
}

/* sl_sched_submit; *taken: q->grammar went to the request's sampler state
 * (which frees it with itself). */
static sl_status submit_req(sl_sched *s, const sl_sched_req *q, int *taken, sl_err *e)
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
    if (sched_find(s, q->rid))
        return sl_err_set(e, SL_ERR_INVALID, "request %llu is already running",
                          (unsigned long long)q->rid);
    sl_sched_req_impl *r = calloc(1, sizeof *r);
    if (!r) return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    r->cap_tok = n + 16;
    r->toks = malloc(sizeof(int32_t) * (size_t)r->cap_tok);
    r->stop = malloc(sizeof(int32_t) * (size_t)(q->n_stop + 1));
    sl_sampler_state *ss = sl_sampler_state_new(&q->sampling, q->prompt, q->n_prompt, q->rid);
    if (!r->toks || !r->stop || !ss) {
        sl_sampler_state_free(ss);
        sched_free_req(s, r);
        return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    }
    sl_status st = q->grammar ? set_grammar(s, q, ss, e) : SL_OK;
    *taken = q->grammar && !st;
    if (!st) {
        if (q->n_output) sl_sampler_state_add_output(ss, q->output, q->n_output);
        st = sl_sampler_table_add(s->samplers, ss, &r->sampler, e);
    }
    if (st) {
        sl_sampler_state_free(ss);
        sched_free_req(s, r);
        return st;
    }
    memcpy(r->toks, q->prompt, sizeof(int32_t) * (size_t)q->n_prompt);
    if (q->n_output)
        memcpy(r->toks + q->n_prompt, q->output, sizeof(int32_t) * (size_t)q->n_output);
    r->want_logprobs = q->sampling.logprobs || q->sampling.top_logprobs > 0;
    if (q->n_stop) memcpy(r->stop, q->stop_ids, sizeof(int32_t) * (size_t)q->n_stop);
    r->rid = q->rid;
    r->pd = q->pd;
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
        sched_free_req(s, r);
        return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    }
    queue_insert(&s->queue, r);
    return SL_OK;
}

sl_status sl_sched_submit(sl_sched *s, const sl_sched_req *q, sl_err *e)
{
    int taken = 0;
    sl_status st = submit_req(s, q, &taken, e);
    if (st && !taken) sl_gram_matcher_free(q->grammar);
    return st;
}


/* Drops sequence i's hold on its request. Returns the request when it is
 * still live and i sampled a token for it (a result to process), else NULL;
 * a finished request is freed with its last hold. */
static sl_sched_req_impl *batch_release(sl_sched *s, sl_sched_batch *b, int i)
{
    sl_sched_req_impl *r = b->reqs[i];
    int sampled = b->sampler[i].v != 0;
    r->inflight--;
    r->n_pending -= sampled;
    if (r->st == REQ_DONE) {
        if (!r->inflight) sched_free_req(s, r);
        return NULL;
    }
    return sampled ? r : NULL;
}

/* Takes b back: its slot may be built again. */
static void batch_return(sl_sched *s, sl_sched_batch *b)
{
    int k = b == &s->batch[1];
    SL_ASSERT(s->busy[k]);
    s->busy[k] = 0;
}

void sched_take_token(sl_sched *s, sl_sched_req_impl *r, int32_t t, const sl_sample *sample)
{
    if (r->n_tok == r->cap_tok) {
        int cap = r->cap_tok * 2;
        int32_t *nt = realloc(r->toks, sizeof(int32_t) * (size_t)cap);
        if (!nt) {
            sched_finish(s, r, SL_FINISH_ERROR);
            return;
        }
        r->toks = nt;
        r->cap_tok = cap;
    }
    r->toks[r->n_tok++] = t;
    r->n_out++;
    sl_sched_event ev = {
        .rid = r->rid, .token = t, .has_sample = sample != NULL, .want_logprobs = r->want_logprobs};
    if (sample) ev.sample = *sample;
    sched_push_event(s, &ev);
    sl_finish why = SL_FINISH_NONE;
    if (sample && sample->complete) /* the grammar accepts nothing after t */
        why = SL_FINISH_STOP;
    else if (r->n_out >= r->min_new &&
        ((!r->ignore_eos && is_in(t, s->cfg.eos, s->cfg.n_eos)) || is_in(t, r->stop, r->n_stop)))
        why = SL_FINISH_STOP;
    else if (r->n_out >= r->max_new || r->n_tok >= s->max_seq)
        why = SL_FINISH_LENGTH;
    if (!why) return;
    if (r->pd == SL_PD_PREFILL) {
        /* hold the memory for the transfer (no batch out names r: prefill
         * workers run without overlap) */
        SL_ASSERT(!r->inflight);
        sched_emit_finish(s, r, why);
        list_remove(&s->running, r);
        list_append(&s->held, r);
        r->st = REQ_HELD;
        return;
    }
    sched_finish(s, r, why);
}

void sl_sched_complete(sl_sched *s, sl_sched_batch *b)
{
    for (int i = 0; i < b->meta.n_seqs; i++) {
        sl_sched_req_impl *r = batch_release(s, b, i);
        if (!r) continue;
        if (r->n_out >= r->max_new) { /* max_new_tokens = 0: prefill only */
            sched_finish(s, r, SL_FINISH_LENGTH);
            continue;
        }
        sched_take_token(s, r, b->out[i].token, &b->out[i]);
    }
    batch_return(s, b);
}

void sl_sched_abandon(sl_sched *s, sl_sched_batch *b)
{
    for (int i = 0; i < b->meta.n_seqs; i++)
        batch_release(s, b, i);
    batch_return(s, b);
}

/* ---- introspection ------------------------------------------------------------- */

const sl_sampler_table *sl_sched_samplers(const sl_sched *s)
{
    return s->samplers;
}

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
    st->pd_waiting = s->held.n + s->await.n;
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
    /* held and awaiting requests wait for the network, not for a step */
    return !s->running.n && !s->queue.n && !s->busy[0] && !s->busy[1];
}

sl_status sl_sched_check(const sl_sched *s, sl_err *e)
{
    int P = s->cfg.page_size, held_pages = 0, held_slots = 0;
    const req_list *lists[3] = {&s->running, &s->held, &s->await};
    for (int k = 0; k < 3; k++)
        for (const sl_sched_req_impl *r = lists[k]->head; r; r = r->next) {
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

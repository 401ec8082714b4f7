#include "engine.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pool.h"
#include "sl_log.h"

struct sl_engine {
    sl_model *m;
    sl_backend *be;
    sl_model_cache cache;
    sl_sched *sched;
    sl_sched_config scfg;
    int vocab, overlap;
    /* runner state (compute thread, or the leader without overlap) */
    sl_tensor logits;
    int logits_cap;
    sl_tensor argmax_ids; /* [logits_cap] I32: device argmax of greedy batches */
    int32_t *host_ids;
    float *host;
    int host_cap;
    sl_engine_logits_fn hook;
    void *hook_ctx;
    sl_engine_plan_fn plan;
    void *plan_ctx;
    /* compute thread: a FIFO of launched batches, finished in order */
    pthread_t thread;
    int have_thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    sl_sched_batch *fifo[4];
    int fifo_head, fifo_n, stop;
    uint64_t launched, finished;
    sl_status failed;
    sl_err fail_err;
    sl_sched_batch *prev; /* launched, results not yet processed */
    uint64_t prev_ticket;
};

void sl_engine_config_default(sl_engine_config *c)
{
    memset(c, 0, sizeof *c);
    c->page_size = 1;
    c->chunked_prefill_size = 8192;
    c->mem_fraction = 0.85;
    c->strategy = SL_MAMBA_EXTRA_BUFFER;
    c->track_interval = 256;
    c->overlap = 1;
}

/* ---- runner --------------------------------------------------------------------- */

/* State copies and the forward of b; logits of b's sampled rows land in
 * g->logits. */
static sl_status forward(sl_engine *g, sl_sched_batch *b, sl_err *e)
{
    if (b->n_copy) sl_model_cache_copy_slots(g->m, &g->cache, b->copy_dst, b->copy_src, b->n_copy);
    /* a batch of unfinished prefill chunks samples nothing; the model still
     * wants one row of logits */
    int n_rows = b->n_rows ? b->n_rows : 1;
    int32_t row0 = 0;
    const int32_t *rows = b->n_rows ? b->rows : &row0;
    if (n_rows > g->logits_cap) {
        sl_be_release(g->be, &g->logits);
        sl_be_release(g->be, &g->argmax_ids);
        free(g->host_ids);
        g->host_ids = NULL;
        g->logits_cap = 0;
        int cap = n_rows * 2;
        sl_status st = sl_be_alloc(g->be, &g->logits, SL_DTYPE_F32, 2, (int64_t[]){cap, g->vocab}, e);
        if (!st) st = sl_be_alloc(g->be, &g->argmax_ids, SL_DTYPE_I32, 1, (int64_t[]){cap}, e);
        if (!st && !(g->host_ids = malloc(sizeof(int32_t) * (size_t)cap)))
            st = sl_err_set(e, SL_ERR_NOMEM, "out of memory");
        if (st) return st;
        g->logits_cap = cap;
    }
    return sl_model_forward(g->m, &g->cache, &b->meta, rows, n_rows, &g->logits, e);
}

sl_status sl_engine_follow(sl_engine *g, sl_sched_batch *b, sl_err *e)
{
    return forward(g, b, e);
}

const sl_model_cache *sl_engine_cache(const sl_engine *g)
{
    return &g->cache;
}

static sl_status run_batch(sl_engine *g, sl_sched_batch *b, sl_err *e)
{
    for (int i = 0; i < b->meta.n_seqs; i++)
        if (b->feed_last[i]) b->ids[b->q_start[i]] = sl_sampler_last_token(b->sampler[i]);
    sl_status st = g->plan ? g->plan(g->plan_ctx, b, e) : SL_OK;
    if (!st) st = forward(g, b, e);
    if (st || !b->n_rows) return st;
    /* greedy rows need only their argmax: R ids cross to the host, not R×V logits */
    int all_argmax = !g->hook && sl_be_supports_op(g->be, SL_OP_ARGMAX);
    for (int r = 0; r < b->n_rows && all_argmax; r++)
        all_argmax = sl_sampler_is_argmax(b->sampler[b->row_seq[r]]);
    if (all_argmax) {
        sl_tensor lv = sl_tensor_rowview(&g->logits, 0, b->n_rows);
        sl_tensor iv = sl_tensor_make(g->argmax_ids.data, SL_DTYPE_I32, 1, (int64_t[]){b->n_rows});
        iv.on_device = g->argmax_ids.on_device;
        sl_be_argmax(g->be, &iv, &lv);
        float *f = (float *)g->host_ids; /* ids arrive as exact floats (< 2^24) */
        if ((st = sl_be_download(g->be, &iv, f, e))) return st;
        for (int r = 0; r < b->n_rows; r++) {
            int s = b->row_seq[r];
            sl_sampler_take(b->sampler[s], (int32_t)f[r], &b->out[s]);
        }
        return SL_OK;
    }
    if ((size_t)b->n_rows * g->vocab > (size_t)g->host_cap) {
        free(g->host);
        g->host_cap = b->n_rows * 2 * g->vocab;
        g->host = malloc(sizeof(float) * (size_t)g->host_cap);
        if (!g->host) {
            g->host_cap = 0;
            return sl_err_set(e, SL_ERR_NOMEM, "out of memory for logits");
        }
    }
    sl_tensor lv = sl_tensor_rowview(&g->logits, 0, b->n_rows);
    st = sl_be_download(g->be, &lv, g->host, e);
    if (st) return st;
    for (int r = 0; r < b->n_rows; r++) {
        int s = b->row_seq[r];
        float *row = g->host + (size_t)r * g->vocab;
        if (g->hook) g->hook(g->hook_ctx, b->rid[s], b->pos[b->rows[r]], row, g->vocab);
        sl_sampler_sample(b->sampler[s], row, g->vocab, &b->out[s]);
    }
    return SL_OK;
}

static void *compute_main(void *arg)
{
    sl_engine *g = arg;
    pthread_mutex_lock(&g->mu);
    for (;;) {
        while (!g->fifo_n && !g->stop)
            pthread_cond_wait(&g->cv, &g->mu);
        if (!g->fifo_n) break;
        sl_sched_batch *b = g->fifo[g->fifo_head];
        pthread_mutex_unlock(&g->mu);
        sl_err e = {0};
        /* after a failure the remaining batches are not run */
        sl_status st = g->failed ? g->failed : run_batch(g, b, &e);
        pthread_mutex_lock(&g->mu);
        if (st && !g->failed) {
            g->failed = st;
            g->fail_err = e;
        }
        g->fifo_head = (g->fifo_head + 1) % 4;
        g->fifo_n--;
        g->finished++;
        pthread_cond_broadcast(&g->cv);
    }
    pthread_mutex_unlock(&g->mu);
    return NULL;
}

static uint64_t launch(sl_engine *g, sl_sched_batch *b)
{
    pthread_mutex_lock(&g->mu);
    SL_ASSERT(g->fifo_n < 4);
    g->fifo[(g->fifo_head + g->fifo_n) % 4] = b;
    g->fifo_n++;
    uint64_t ticket = ++g->launched;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
    return ticket;
}

static sl_status wait_for(sl_engine *g, uint64_t ticket, sl_err *e)
{
    pthread_mutex_lock(&g->mu);
    while (g->finished < ticket)
        pthread_cond_wait(&g->cv, &g->mu);
    sl_status st = g->failed;
    if (st && e) *e = g->fail_err;
    pthread_mutex_unlock(&g->mu);
    return st;
}

/* ---- set-up --------------------------------------------------------------------- */

static size_t default_budget(const sl_engine_config *c, sl_backend *be)
{
    /* Device memory: as SGLang, --mem-fraction-static of the card holds the
     * weights (already loaded) plus the caches; the rest is for activations. */
    double frac = c->mem_fraction > 0 ? c->mem_fraction : 0.85;
    size_t free_b = 0, total_b = 0;
    if (sl_be_mem_info(be, &free_b, &total_b, NULL) == SL_OK) {
        double budget = (double)free_b - (double)total_b * (1.0 - frac);
        return budget > 0 ? (size_t)budget : 0;
    }
    /* CPU backend: a share of physical memory (--mem-bytes sets it exactly) */
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    double phys = pages > 0 && psz > 0 ? (double)pages * (double)psz : 8e9;
    return (size_t)(phys * frac * 0.25);
}

sl_status sl_engine_new(sl_engine **out, sl_model *m, const sl_engine_config *c, sl_err *e)
{
    *out = NULL;
    const sl_model_config *mc = sl_model_cfg(m);
    int hybrid = mc->n_linear_layers > 0;
    int ctx = c->context_len > 0 ? c->context_len : mc->max_position_embeddings;
    sl_pool_sizing sz = {
        .budget_bytes = c->mem_bytes ? c->mem_bytes : default_budget(c, sl_model_backend(m)),
        .page_bytes = sl_model_page_bytes(m, c->page_size),
        .slot_bytes = hybrid ? sl_model_slot_bytes(m) : 0,
        .page_size = c->page_size,
        .context_len = ctx,
        .max_running = c->max_running,
        .slots_per_request = c->strategy == SL_MAMBA_NO_BUFFER ? 2 : 3,
        .max_total_tokens = c->max_total_tokens,
        .max_state_slots = c->max_mamba_slots,
    };
    if (!sz.page_bytes) sz.page_bytes = 1; /* a model without attention layers */
    sl_pool_plan plan;
    sl_status st = sl_pool_plan_sizes(&sz, &plan, e);
    if (st) return st;
    /* no point in more KV than every running request at full context */
    long long useful = (long long)plan.max_running * ((ctx + c->page_size - 1) / c->page_size) + 1;
    if (!c->max_total_tokens && plan.n_pages > useful) plan.n_pages = (int)useful;
    sl_sched_config sc = {
        .page_size = c->page_size,
        .n_pages = plan.n_pages,
        .n_slots = hybrid ? plan.n_slots : 0,
        .hybrid = hybrid,
        .max_running = plan.max_running,
        .context_len = ctx,
        .chunked_prefill_size = c->chunked_prefill_size,
        .disable_radix = c->disable_radix,
        .strategy = c->strategy,
        .track_interval = c->track_interval,
        .overlap = c->overlap,
        .vocab = mc->vocab_size,
        .n_eos = mc->n_eos < 8 ? mc->n_eos : 8,
    };
    memcpy(sc.eos, mc->eos_token_ids, sizeof(int) * (size_t)sc.n_eos);
    sl_engine *g = calloc(1, sizeof *g);
    if (!g) return sl_err_set(e, SL_ERR_NOMEM, "engine: out of memory");
    g->m = m;
    g->be = sl_model_backend(m);
    g->vocab = mc->vocab_size;
    g->overlap = c->overlap;
    g->scfg = sc;
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    st = sl_sched_new(&g->sched, &sc, e);
    if (!st) st = sl_model_cache_alloc(m, &g->cache, sc.n_pages, sc.page_size, sc.n_slots, e);
    if (!st && g->overlap) {
        if (pthread_create(&g->thread, NULL, compute_main, g))
            st = sl_err_set(e, SL_ERR_NOMEM, "engine: cannot start the compute thread");
        else
            g->have_thread = 1;
    }
    if (st) {
        sl_engine_free(g);
        return st;
    }
    SL_LOGI("engine",
            "KV pool %d pages of %d tokens, %d state slots, max %d running, context %d, "
            "overlap %s",
            sc.n_pages, sc.page_size, sc.n_slots, sc.max_running, sc.context_len,
            g->overlap ? "on" : "off");
    *out = g;
    return SL_OK;
}

void sl_engine_free(sl_engine *g)
{
    if (!g) return;
    if (g->prev) {
        if (wait_for(g, g->prev_ticket, NULL))
            sl_sched_abandon(g->sched, g->prev);
        else
            sl_sched_complete(g->sched, g->prev);
        g->prev = NULL;
    }
    if (g->have_thread) {
        pthread_mutex_lock(&g->mu);
        g->stop = 1;
        pthread_cond_broadcast(&g->cv);
        pthread_mutex_unlock(&g->mu);
        pthread_join(g->thread, NULL);
    }
    sl_sched_free(g->sched);
    if (g->cache.k) sl_model_cache_free(g->m, &g->cache);
    sl_be_release(g->be, &g->logits);
    sl_be_release(g->be, &g->argmax_ids);
    free(g->host_ids);
    free(g->host);
    pthread_mutex_destroy(&g->mu);
    pthread_cond_destroy(&g->cv);
    free(g);
}

/* ---- loop ----------------------------------------------------------------------- */

sl_status sl_engine_submit(sl_engine *g, const sl_sched_req *r, sl_err *e)
{
    return sl_sched_submit(g->sched, r, e);
}

int sl_engine_abort(sl_engine *g, uint64_t rid)
{
    return sl_sched_abort(g->sched, rid);
}

void sl_engine_fail_all(sl_engine *g)
{
    sl_sched_fail_all(g->sched);
}

sl_status sl_engine_step(sl_engine *g, int *worked, sl_err *e)
{
    sl_sched_batch *b = sl_sched_next_batch(g->sched);
    if (worked) *worked = b || g->prev;
    if (!g->overlap) {
        if (!b) return SL_OK;
        sl_status st = run_batch(g, b, e);
        if (st)
            sl_sched_abandon(g->sched, b); /* the engine is unusable now */
        else
            sl_sched_complete(g->sched, b);
        return st;
    }
    uint64_t ticket = b ? launch(g, b) : 0;
    if (g->prev) {
        sl_status st = wait_for(g, g->prev_ticket, e);
        if (st) {
            /* the compute thread skips everything after a failure */
            if (b) {
                wait_for(g, ticket, NULL);
                sl_sched_abandon(g->sched, b);
            }
            sl_sched_abandon(g->sched, g->prev);
            g->prev = NULL;
            return st;
        }
        sl_sched_complete(g->sched, g->prev);
    }
    g->prev = b;
    g->prev_ticket = ticket;
    return SL_OK;
}

int sl_engine_pop_event(sl_engine *g, sl_sched_event *ev)
{
    return sl_sched_pop_event(g->sched, ev);
}

int sl_engine_idle(const sl_engine *g)
{
    return !g->prev && sl_sched_idle(g->sched);
}

void sl_engine_stats(const sl_engine *g, sl_sched_stats *st)
{
    sl_sched_get_stats(g->sched, st);
}

sl_status sl_engine_check(const sl_engine *g, sl_err *e)
{
    return sl_sched_check(g->sched, e);
}

int sl_engine_flush_cache(sl_engine *g)
{
    return sl_sched_flush_cache(g->sched);
}

const sl_sched_config *sl_engine_sched_config(const sl_engine *g)
{
    return &g->scfg;
}

void sl_engine_set_plan_hook(sl_engine *g, sl_engine_plan_fn fn, void *ctx)
{
    g->plan = fn;
    g->plan_ctx = ctx;
}

void sl_engine_set_logits_hook(sl_engine *g, sl_engine_logits_fn fn, void *ctx)
{
    g->hook = fn;
    g->hook_ctx = ctx;
}

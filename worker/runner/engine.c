#include "engine.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pool.h"
#include "sampler_op.h"
#include "sl_log.h"

#define LP_COLS (2 + 2 * SL_SAMPLE_MAX_TOP)
/* Batches handed to the compute thread and not yet finished: at most two
 * (the scheduler's limit), so ticket t's ring slot t % RING is free again
 * long before ticket t + RING. */
#define RING 4

/* A launched batch whose sampled ids are on their way to the host. Two
 * alternate: batch N+1 is launched before batch N's results are read. */
typedef struct flight {
    sl_sched_batch *b;
    sl_batch_meta meta;    /* b as the model's forward batch */
    sl_sampler_state **ss; /* [ss_cap] b's sampler states by sequence (NULL: none) */
    int ss_cap;
    int half;        /* token buffer half its samples went to */
    int32_t *ids;    /* host copy of the sampled ids (pinned) */
    float *lp;       /* host copy of the logprob rows (pinned), valid when has_lp */
    int has_lp;
    int sampled;     /* 0: every row took its argmax (no sampler row was built) */
    int decode;      /* every sequence brought one token */
    sl_be_event *start, *done;
} flight;

struct sl_engine {
    sl_model *m;
    sl_backend *be;
    sl_model_cache cache;
    sl_sched *sched;
    const sl_sampler_table *samplers; /* the scheduler's; looked up by the runner */
    sl_sched_config scfg;
    int vocab, overlap, timing;
    /* runner state (compute thread, or the leader without overlap) */
    int cap;          /* rows of logits / samples a batch may have */
    sl_tensor logits; /* [cap, vocab] F32 */
    sl_tensor tok;    /* [2, cap] I32: sampled ids, one half per launch parity */
    sl_tensor lp;     /* [cap, LP_COLS] F32: logprob rows of the op */
    sl_sample_row *rows;
    sl_sample_pen pen;
    uint32_t *mask;   /* [cap][mask_words] allowed-token bits of constrained rows (on first use) */
    int mask_words;
    int early;        /* this launch committed the pending batch (constrained rows) */
    flight fl[2];
    flight *pend;     /* launched, results not yet committed */
    uint64_t n_launch;
    int32_t *feed;    /* [feed_cap] per-token index into tok, -1: ids[t] */
    int feed_cap;
    float *host;      /* logits rows for the test hook */
    size_t host_cap;
    sl_engine_gaps gaps;
    sl_engine_logits_fn hook;
    void *hook_ctx;
    sl_engine_plan_fn plan;
    sl_engine_plan_end_fn plan_end;
    void *plan_ctx;
    /* compute thread hand-off: only tickets cross the lock. Ticket t (1, 2,
     * ...) is the t-th batch launched; the leader puts it in ring[t % RING]
     * and publishes launched = t; the compute thread takes tickets in order
     * (taken) and owns the slot until finished >= t, when the leader takes
     * the batch back. Batches finish in order. */
    pthread_t thread;
    int have_thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    sl_sched_batch *ring[RING];
    int stop;
    uint64_t launched, taken, finished, wanted;
    sl_status failed;
    sl_err fail_err;
    uint64_t prev; /* leader: ticket launched, results not yet processed (0: none) */
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
    c->graph_max_bs = 256;
}

/* ---- runner --------------------------------------------------------------------- */

/* The ScheduleBatch -> ForwardBatch step: the model's view of b's arrays. */
static void forward_meta(const sl_sched_batch *b, sl_batch_meta *m)
{
    *m = (sl_batch_meta){
        .n_tokens = b->meta.n_tokens,
        .n_seqs = b->meta.n_seqs,
        .page_size = b->meta.page_size,
        .max_pages = b->meta.max_pages,
        .ids = b->ids,
        .pos = b->pos,
        .q_start = b->q_start,
        .kv_len = b->kv_len,
        .page_table = b->page_table,
        .kv_slot = b->kv_slot,
        .state_slot = b->state_slot,
        .state_fresh = b->state_fresh,
        .track_slot = b->track_slot,
        .track_len = b->track_len,
    };
}

/* b's state copies, then its forward into g->logits. */
static sl_status copy_and_forward(sl_engine *g, const sl_sched_batch *b, sl_batch_meta *meta,
                                  sl_err *e)
{
    if (b->n_copy) sl_model_cache_copy_slots(g->m, &g->cache, b->copy_dst, b->copy_src, b->n_copy);
    /* a batch of unfinished prefill chunks samples nothing; the model still
     * wants one row of logits */
    int32_t row0 = 0;
    return sl_model_forward(g->m, &g->cache, meta, b->n_rows ? b->rows : &row0,
                            b->n_rows ? b->n_rows : 1, &g->logits, e);
}

sl_status sl_engine_follow(sl_engine *g, sl_sched_batch *b, sl_err *e)
{
    /* the leader's forward exactly: with a plan hook every fed id is on the
     * host (no feed), and the token buffer is this engine's own, as the
     * leader's is (a decode graph captured for it is replayed, not
     * recaptured every step) */
    sl_batch_meta meta;
    forward_meta(b, &meta);
    meta.feed_ids = g->tok.data;
    return copy_and_forward(g, b, &meta, e);
}

const sl_model_cache *sl_engine_cache(const sl_engine *g)
{
    return &g->cache;
}

/* Looks up b's sampler ids into f->ss; a stale id fails the batch. */
static sl_status lookup_samplers(sl_engine *g, const sl_sched_batch *b, flight *f, sl_err *e)
{
    int n = b->meta.n_seqs;
    if (n > f->ss_cap) {
        sl_sampler_state **ss = realloc(f->ss, sizeof *ss * (size_t)n * 2);
        if (!ss) return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
        f->ss = ss;
        f->ss_cap = n * 2;
    }
    for (int i = 0; i < n; i++) {
        f->ss[i] = b->sampler[i].v ? sl_sampler_table_get(g->samplers, b->sampler[i]) : NULL;
        if (b->sampler[i].v && !f->ss[i])
            return sl_err_set(e, SL_ERR_INVALID, "batch %llu: request %llu has no sampler state",
                              (unsigned long long)b->seq, (unsigned long long)b->rid[i]);
    }
    return SL_OK;
}

/* Whether every row of f's batch is the plain argmax of its logits. */
static int all_argmax(const flight *f)
{
    for (int r = 0; r < f->b->n_rows; r++)
        if (!sl_sampler_is_argmax(f->ss[f->b->row_seq[r]])) return 0;
    return 1;
}

/* The row of the sampler's last sample in the pending batch, or -1. */
static int pending_row(const flight *p, sl_sampler_id id)
{
    const sl_sched_batch *pb = p->b;
    for (int r = 0; r < pb->n_rows; r++)
        if (pb->sampler[pb->row_seq[r]].v == id.v) return r;
    return -1;
}

/* Resolves b's fed tokens: from the pending batch's samples on the device
 * when it has not committed yet, else from the sampler on the host. */
static sl_status resolve_inputs(sl_engine *g, flight *f, sl_err *e)
{
    sl_sched_batch *b = f->b;
    int T = b->meta.n_tokens;
    if (T > g->feed_cap) {
        int32_t *nf = realloc(g->feed, sizeof(int32_t) * (size_t)T * 2);
        if (!nf) return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
        g->feed = nf;
        g->feed_cap = T * 2;
    }
    for (int t = 0; t < T; t++) g->feed[t] = -1;
    for (int i = 0; i < b->meta.n_seqs; i++) {
        if (!b->feed_last[i]) continue;
        int t = b->q_start[i], r = g->pend ? pending_row(g->pend, b->sampler[i]) : -1;
        if (r >= 0) {
            b->ids[t] = 0; /* checked placeholder; the embedding reads tok */
            g->feed[t] = g->pend->half * g->cap + r;
        } else {
            b->ids[t] = sl_sampler_last_token(f->ss[i]);
        }
    }
    f->meta.feed = g->feed;
    f->meta.feed_ids = g->tok.data;
    return SL_OK;
}

/* The test hook sees every sampled row's logits (a download: waits). */
static sl_status run_hook(sl_engine *g, const sl_sched_batch *b, const sl_tensor *lv, sl_err *e)
{
    size_t n = (size_t)b->n_rows * (size_t)g->vocab;
    if (n > g->host_cap) {
        free(g->host);
        g->host_cap = 0;
        if (!(g->host = malloc(sizeof(float) * n))) return sl_err_set(e, SL_ERR_NOMEM, "out of memory for logits");
        g->host_cap = n;
    }
    sl_status st = sl_be_download(g->be, lv, g->host, e);
    for (int r = 0; r < b->n_rows && !st; r++) {
        int s = b->row_seq[r];
        g->hook(g->hook_ctx, b->rid[s], b->pos[b->rows[r]], g->host + (size_t)r * g->vocab, g->vocab);
    }
    return st;
}

static sl_status commit(sl_engine *g, flight *f, const flight *next, sl_err *e);

/* A grammar's next mask depends on the token sampled last: when b has a
 * constrained row, the pending batch commits now. The device is already
 * running b's forward, so the wait and the masks overlap with it. */
static sl_status commit_for_masks(sl_engine *g, flight *f, int *constrained, sl_err *e)
{
    const sl_sched_batch *b = f->b;
    *constrained = 0;
    for (int r = 0; r < b->n_rows && !*constrained; r++)
        *constrained = sl_sampler_constrained(f->ss[b->row_seq[r]]);
    if (!*constrained || !g->pend) return SL_OK;
    flight *p = g->pend;
    g->pend = NULL;
    g->early = 1;
    return commit(g, p, f, e);
}

/* The allowed-token bits of b's constrained rows into g->mask; sets their
 * mask_row. Returns the number of mask rows. */
static int fill_masks(sl_engine *g, flight *f, sl_err *e)
{
    const sl_sched_batch *b = f->b;
    if (!g->mask) {
        g->mask_words = (g->vocab + 31) / 32;
        g->mask = malloc(sizeof(uint32_t) * (size_t)g->cap * (size_t)g->mask_words);
        if (!g->mask) return sl_err_set(e, SL_ERR_NOMEM, "out of memory for token masks"), -1;
    }
    int n = 0;
    for (int r = 0; r < b->n_rows; r++) {
        sl_sampler_state *s = f->ss[b->row_seq[r]];
        if (sl_sampler_constrained(s) &&
            sl_sampler_fill_mask(s, g->mask + (size_t)n * g->mask_words, g->mask_words, g->vocab))
            g->rows[r].mask_row = n++;
    }
    return n;
}

/* Samples b's rows on the backend into iv: a plain argmax when every row is
 * greedy, else the sampling op with each sampler's row (pending: its token
 * from the uncommitted batch before, counted for penalties and the draw;
 * constrained rows: masked by their grammars). */
static sl_status sample_rows(sl_engine *g, flight *f, sl_tensor *iv, const sl_tensor *lv,
                             sl_err *e)
{
    const sl_sched_batch *b = f->b;
    f->sampled = !all_argmax(f) || !sl_be_supports_op(g->be, SL_OP_ARGMAX);
    f->has_lp = 0;
    if (!f->sampled) {
        sl_be_argmax(g->be, iv, lv);
        return SL_OK;
    }
    int constrained;
    sl_status st = commit_for_masks(g, f, &constrained, e);
    if (st) return st;
    g->pen.n = 0;
    for (int r = 0; r < b->n_rows; r++) {
        int s = b->row_seq[r], t = b->q_start[s];
        /* after an early commit every token is counted already */
        int32_t pending = !g->early && b->feed_last[s] && g->feed[t] >= 0 ? g->feed[t] : -1;
        st = sl_sampler_row(f->ss[s], &g->rows[r], &g->pen, pending, e);
        if (st) return st;
        f->has_lp |= g->rows[r].logprobs;
    }
    int n_mask = constrained ? fill_masks(g, f, e) : 0;
    if (n_mask < 0) return e->code;
    sl_tensor lpv = sl_tensor_rowview(&g->lp, 0, b->n_rows);
    sl_sample_args a = {b->n_rows, g->rows, g->pen.n, g->pen.tok, g->pen.out, g->pen.prompt, &g->tok,
                        n_mask ? g->mask : NULL, n_mask, g->mask_words};
    sl_be_sample(g->be, iv, f->has_lp ? &lpv : NULL, lv, &a);
    return f->has_lp ? sl_be_copy_out(g->be, &lpv, f->lp, e) : SL_OK;
}

/* Launches b: state copies, forward, sampling into its half of tok and the
 * copies of the results to the host. Returns without waiting (but for the
 * test hook). */
static sl_status launch_batch(sl_engine *g, sl_sched_batch *b, flight *f, sl_err *e)
{
    f->b = b;
    forward_meta(b, &f->meta);
    f->half = (int)(g->n_launch++ & 1);
    f->decode = b->meta.n_tokens == b->meta.n_seqs;
    sl_status st = SL_OK;
    if (g->timing) st = sl_be_event_record(g->be, f->start, e);
    if (!st) st = lookup_samplers(g, b, f, e);
    if (!st) st = resolve_inputs(g, f, e);
    if (!st && g->plan) {
        /* the plan's broadcast and the forward's collectives are one
         * section: plan_end closes it whatever the forward returned */
        if (!(st = g->plan(g->plan_ctx, b, e))) {
            st = copy_and_forward(g, b, &f->meta, e);
            if (g->plan_end) g->plan_end(g->plan_ctx);
        }
    } else if (!st) {
        st = copy_and_forward(g, b, &f->meta, e);
    }
    if (st || !b->n_rows) return st ? st : sl_be_event_record(g->be, f->done, e);
    SL_ASSERT(b->n_rows <= g->cap);
    sl_tensor lv = sl_tensor_rowview(&g->logits, 0, b->n_rows);
    sl_tensor iv = sl_tensor_make((int32_t *)g->tok.data + f->half * g->cap, SL_DTYPE_I32, 1,
                                  (int64_t[]){b->n_rows});
    iv.on_device = g->tok.on_device;
    if (g->hook) st = run_hook(g, b, &lv, e);
    if (!st) st = sample_rows(g, f, &iv, &lv, e);
    if (!st) st = sl_be_copy_out(g->be, &iv, f->ids, e);
    if (!st) st = sl_be_event_record(g->be, f->done, e);
    return st;
}

static void count_gap(sl_engine *g, const flight *f, const flight *next)
{
    if (!g->timing || !f->decode || !next || !next->decode) return;
    if (sl_be_event_wait(g->be, next->start, NULL)) return;
    float gap = sl_be_event_ms(g->be, f->done, next->start) * 1e3f;
    float busy = sl_be_event_ms(g->be, f->start, f->done) * 1e3f;
    if (gap < 0 || busy < 0) return;
    sl_engine_gaps *q = &g->gaps;
    static const float edge[SL_GAP_BINS - 1] = {2, 5, 10, 50, 200};
    int k = 0;
    while (k < SL_GAP_BINS - 1 && gap >= edge[k]) k++;
    q->hist[k]++;
    q->steps++;
    q->gap_us_sum += gap;
    q->busy_us_sum += busy;
    if (gap > q->gap_us_max) q->gap_us_max = gap;
    if (q->steps % 2000 == 0)
        SL_LOGI("engine", "decode steps %lld: GPU busy %.0f us/step, idle gap mean %.1f us, max %.0f us, "
                "<2us %lld, <5us %lld, <10us %lld, <50us %lld, <200us %lld, more %lld",
                (long long)q->steps, q->busy_us_sum / q->steps, q->gap_us_sum / q->steps,
                q->gap_us_max, (long long)q->hist[0], (long long)q->hist[1], (long long)q->hist[2],
                (long long)q->hist[3], (long long)q->hist[4], (long long)q->hist[5]);
}

/* --step-timing: a prefill (or mixed) step's device time from its first
 * launch to its samples, one line a step, so that a TTFT splits into the
 * forward and what comes before it (the router, the queue, the host). */
static void log_prefill(sl_engine *g, const flight *f)
{
    if (!g->timing || f->decode) return;
    const sl_sched_shape *m = &f->b->meta;
    SL_LOGI("engine", "prefill step: %d tokens of %d sequences, device %.2f ms", m->n_tokens, m->n_seqs,
            sl_be_event_ms(g->be, f->start, f->done));
}

/* Waits for f's ids and records them as its samples. */
static sl_status commit(sl_engine *g, flight *f, const flight *next, sl_err *e)
{
    sl_status st = sl_be_event_wait(g->be, f->done, e);
    if (st) return st;
    count_gap(g, f, next);
    log_prefill(g, f);
    sl_sched_batch *b = f->b;
    for (int r = 0; r < b->n_rows; r++) {
        int s = b->row_seq[r];
        if (f->sampled)
            sl_sampler_commit(f->ss[s], f->ids[r], f->has_lp ? f->lp + (size_t)r * LP_COLS : NULL,
                              &b->out[s]);
        else
            sl_sampler_take(f->ss[s], f->ids[r], &b->out[s]);
    }
    return SL_OK;
}

/* One batch through the runner: launched behind the pending one, which then
 * commits. *done_prev says whether a pending batch was committed. */
static sl_status run_batch(sl_engine *g, sl_sched_batch *b, int *done_prev, sl_err *e)
{
    flight *p = g->pend, *f = &g->fl[p == &g->fl[0]];
    sl_status st = SL_OK;
    *done_prev = 0;
    /* the plan hook broadcasts ids: they must be known on the host */
    if (p && g->plan) {
        st = commit(g, p, NULL, e);
        g->pend = NULL;
        *done_prev = 1;
        if (st) return st;
    }
    g->early = 0;
    st = launch_batch(g, b, f, e);
    if (g->early) *done_prev = 1; /* committed for the masks of b's constrained rows */
    if (g->pend) {
        sl_status cs = commit(g, g->pend, st ? NULL : f, e);
        *done_prev = 1;
        if (!st) st = cs;
    }
    g->pend = st ? NULL : f;
    return st;
}

static void mark_finished(sl_engine *g, sl_status st, const sl_err *e, int n)
{
    pthread_mutex_lock(&g->mu);
    if (st && !g->failed) {
        g->failed = st;
        g->fail_err = *e;
    }
    g->finished += (uint64_t)n;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

/* The compute thread launches each batch as soon as it arrives and commits
 * the one before it afterwards, so the device queue always holds the next
 * step while the host reads this one's ids; a pending batch alone commits
 * once the leader waits for it. */
static void *compute_main(void *arg)
{
    sl_engine *g = arg;
    pthread_mutex_lock(&g->mu);
    for (;;) {
        /* the pending batch is ticket `taken`: commit it alone once wanted */
        while (g->taken == g->launched && !g->stop && !(g->pend && g->wanted >= g->taken))
            pthread_cond_wait(&g->cv, &g->mu);
        if (g->taken < g->launched) {
            sl_sched_batch *b = g->ring[++g->taken % RING];
            sl_status failed = g->failed;
            pthread_mutex_unlock(&g->mu);
            sl_err e = {0};
            int done_prev = 0;
            sl_status st = failed;
            if (failed) { /* after a failure nothing runs: drop the pending batch too */
                done_prev = g->pend != NULL;
                g->pend = NULL;
            } else {
                st = run_batch(g, b, &done_prev, &e);
            }
            /* b itself finishes later, when its ids are committed; a failed
             * b finishes now */
            int n = done_prev + (st || failed ? 1 : 0);
            if (st || failed) g->pend = NULL;
            mark_finished(g, st, &e, n);
            pthread_mutex_lock(&g->mu);
        } else if (g->pend) {
            pthread_mutex_unlock(&g->mu);
            sl_err e = {0};
            sl_status st = commit(g, g->pend, NULL, &e);
            g->pend = NULL;
            mark_finished(g, st, &e, 1);
            pthread_mutex_lock(&g->mu);
        } else {
            break; /* stop, nothing left */
        }
    }
    pthread_mutex_unlock(&g->mu);
    return NULL;
}

/* Hands b to the compute thread; returns its ticket. */
static uint64_t launch(sl_engine *g, sl_sched_batch *b)
{
    pthread_mutex_lock(&g->mu);
    SL_ASSERT(g->launched - g->finished < RING);
    uint64_t ticket = ++g->launched;
    g->ring[ticket % RING] = b;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
    return ticket;
}

static sl_status wait_for(sl_engine *g, uint64_t ticket, sl_err *e)
{
    pthread_mutex_lock(&g->mu);
    if (ticket > g->wanted) {
        g->wanted = ticket;
        pthread_cond_broadcast(&g->cv);
    }
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
    /* Device memory: as SGLang, --mem-fraction-static of the card holds this
     * worker's weights (already loaded) plus its caches; the rest is for
     * activations. This worker's own tensors count, not the card's free
     * memory: two workers sharing a card (a PD pair, 0.4 each) would each
     * count the other's weights as their own. Capped by what is free, less
     * 5 % of the card for this worker's activations. */
    double frac = c->mem_fraction > 0 ? c->mem_fraction : 0.85;
    size_t free_b = 0, total_b = 0;
    if (sl_be_mem_info(be, &free_b, &total_b, NULL) == SL_OK) {
        double own = (double)total_b * frac - (double)sl_be_held_bytes(be);
        double room = (double)free_b - 0.05 * (double)total_b;
        double budget = own < room ? own : room;
        return budget > 0 ? (size_t)budget : 0;
    }
    /* CPU backend: a share of physical memory (--mem-bytes sets it exactly) */
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    double phys = pages > 0 && psz > 0 ? (double)pages * (double)psz : 8e9;
    return (size_t)(phys * frac * 0.25);
}

/* Buffers at fixed addresses (decode graphs bake them in): logits and
 * sampled ids for the largest batch, host copies, events; then the graphs. */
static sl_status runner_alloc(sl_engine *g, const sl_engine_config *c, int ctx, sl_err *e)
{
    g->cap = g->scfg.max_running > 0 ? g->scfg.max_running : 1;
    sl_status st = sl_be_alloc(g->be, &g->logits, SL_DTYPE_F32, 2, (int64_t[]){g->cap, g->vocab}, e);
    if (!st) st = sl_be_alloc(g->be, &g->tok, SL_DTYPE_I32, 1, (int64_t[]){2 * (int64_t)g->cap}, e);
    if (!st) st = sl_be_alloc(g->be, &g->lp, SL_DTYPE_F32, 2, (int64_t[]){g->cap, LP_COLS}, e);
    if (!st && !(g->rows = malloc(sizeof *g->rows * (size_t)g->cap)))
        st = sl_err_set(e, SL_ERR_NOMEM, "engine: out of memory");
    for (int i = 0; i < 2 && !st; i++) {
        flight *f = &g->fl[i];
        f->ss_cap = g->cap;
        if (!(f->ss = malloc(sizeof *f->ss * (size_t)f->ss_cap)))
            st = sl_err_set(e, SL_ERR_NOMEM, "engine: out of memory");
        f->ids = sl_be_host_alloc(g->be, sizeof(int32_t) * (size_t)g->cap);
        f->lp = sl_be_host_alloc(g->be, sizeof(float) * LP_COLS * (size_t)g->cap);
        if (!f->ids || !f->lp) st = sl_err_set(e, SL_ERR_NOMEM, "engine: out of pinned memory");
        if (!st) st = sl_be_event_new(g->be, &f->start, e);
        if (!st) st = sl_be_event_new(g->be, &f->done, e);
    }
    if (st || c->graph_max_bs <= 0 || !sl_be_has_graphs(g->be)) return st;
    int bs = c->graph_max_bs < g->cap ? c->graph_max_bs : g->cap;
    st = sl_model_enable_graphs(g->m, bs, ctx, e);
    if (!st && !c->defer_warmup) st = sl_engine_warm(g, e);
    return st;
}

sl_status sl_engine_warm(sl_engine *g, sl_err *e)
{
    if (sl_model_graph_max_bs(g->m) <= 0) return SL_OK;
    return sl_model_warm_graphs(g->m, &g->cache, &g->logits, g->tok.data, e);
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
        .mixed_prefill_tokens = c->mixed_prefill_tokens,
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
    g->timing = c->step_timing;
    g->scfg = sc;
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    st = sl_sched_new(&g->sched, &sc, e);
    if (!st) g->samplers = sl_sched_samplers(g->sched);
    if (!st) st = sl_model_cache_alloc(m, &g->cache, sc.n_pages, sc.page_size, sc.n_slots, e);
    if (!st) st = runner_alloc(g, c, ctx, e);
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
            "overlap %s, graphs up to %d",
            sc.n_pages, sc.page_size, sc.n_slots, sc.max_running, sc.context_len,
            g->overlap ? "on" : "off", sl_model_graph_max_bs(m));
    *out = g;
    return SL_OK;
}

void sl_engine_free(sl_engine *g)
{
    if (!g) return;
    if (g->prev) {
        sl_sched_batch *pb = g->ring[g->prev % RING];
        if (wait_for(g, g->prev, NULL))
            sl_sched_abandon(g->sched, pb);
        else
            sl_sched_complete(g->sched, pb);
        g->prev = 0;
    }
    if (g->have_thread) {
        pthread_mutex_lock(&g->mu);
        g->stop = 1;
        pthread_cond_broadcast(&g->cv);
        pthread_mutex_unlock(&g->mu);
        pthread_join(g->thread, NULL);
    }
    sl_sched_free(g->sched);
    sl_model_enable_graphs(g->m, 0, 0, NULL); /* graphs hold the cache's addresses */
    if (g->cache.k) sl_model_cache_free(g->m, &g->cache);
    sl_be_release(g->be, &g->logits);
    sl_be_release(g->be, &g->tok);
    sl_be_release(g->be, &g->lp);
    free(g->rows);
    free(g->mask);
    sl_sample_pen_free(&g->pen);
    for (int i = 0; i < 2; i++) {
        free(g->fl[i].ss);
        sl_be_host_free(g->be, g->fl[i].ids);
        sl_be_host_free(g->be, g->fl[i].lp);
        sl_be_event_free(g->be, g->fl[i].start);
        sl_be_event_free(g->be, g->fl[i].done);
    }
    free(g->feed);
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
        int done_prev;
        sl_status st = run_batch(g, b, &done_prev, e);
        if (!st) st = commit(g, g->pend, NULL, e);
        g->pend = NULL;
        if (st)
            sl_sched_abandon(g->sched, b); /* the engine is unusable now */
        else
            sl_sched_complete(g->sched, b);
        return st;
    }
    uint64_t ticket = b ? launch(g, b) : 0;
    if (g->prev) {
        sl_sched_batch *pb = g->ring[g->prev % RING];
        sl_status st = wait_for(g, g->prev, e);
        if (st) {
            /* the compute thread skips everything after a failure */
            if (b) {
                wait_for(g, ticket, NULL);
                sl_sched_abandon(g->sched, b);
            }
            sl_sched_abandon(g->sched, pb);
            g->prev = 0;
            return st;
        }
        sl_sched_complete(g->sched, pb);
    }
    g->prev = ticket;
    return SL_OK;
}

int sl_engine_pop_event(sl_engine *g, sl_sched_event *ev)
{
    return sl_sched_pop_event(g->sched, ev);
}

int sl_engine_pd_view(const sl_engine *g, uint64_t rid, sl_sched_pd_mem *m)
{
    return sl_sched_pd_view(g->sched, rid, m);
}

int sl_engine_pd_release(sl_engine *g, uint64_t rid)
{
    return sl_sched_pd_release(g->sched, rid);
}

sl_status sl_engine_pd_activate(sl_engine *g, uint64_t rid, int32_t token, const sl_sample *s,
                                sl_err *e)
{
    return sl_sched_pd_activate(g->sched, rid, token, s, e);
}

int sl_engine_fail_req(sl_engine *g, uint64_t rid)
{
    return sl_sched_fail(g->sched, rid);
}

sl_model_cache *sl_engine_cache_rw(sl_engine *g)
{
    return &g->cache;
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
    g->plan_end = NULL;
    g->plan_ctx = ctx;
}

void sl_engine_set_plan_end(sl_engine *g, sl_engine_plan_end_fn end)
{
    g->plan_end = end;
}

void sl_engine_get_gaps(const sl_engine *g, sl_engine_gaps *out)
{
    *out = g->gaps;
}

void sl_engine_set_logits_hook(sl_engine *g, sl_engine_logits_fn fn, void *ctx)
{
    g->hook = fn;
    g->hook_ctx = ctx;
}

#include "group.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "plan.h"
#include "sl_log.h"

#define AGREE_MSG 480 /* bytes of an error text in sl_group_agree */

struct sl_group {
    sl_comm *comm;
    int rank, world, timeout_ms, keep_ms;
    int sync_all; /* SLUICE_GROUP_SYNC_ALL=1: every message carries SYNC (tests) */
    int stopped;  /* leader: STOP sent; no plan may follow it */
    /* leader: held from a plan's broadcast to the end of its forward (the
     * forward's collectives use the same comm), by sl_group_tick while it
     * sends a KEEP, and by sl_group_stop */
    pthread_mutex_t mu;
    uint64_t seq;
    int64_t last_send_ms, last_sync_ms;
    sl_plan_buf buf;
    sl_sched_config sizes; /* the leader's pools */
    sl_group_side_fn side; /* side jobs (every rank), or NULL */
    void *side_ctx;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

sl_status sl_group_join(sl_group **out, const sl_group_config *c, sl_err *e)
{
    *out = NULL;
    if (c->tp_size < 1 || c->tp_rank < 0 || c->tp_rank >= c->tp_size)
        return sl_err_set(e, SL_ERR_INVALID, "--tp-rank %d outside [0, %d)", c->tp_rank,
                          c->tp_size);
    sl_group *g = calloc(1, sizeof *g);
    if (!g) return sl_err_set(e, SL_ERR_NOMEM, "group: out of memory");
    sl_comm_config cc = {.rank = c->tp_rank,
                         .world_size = c->tp_size,
                         .init_addr = c->init_addr,
                         .timeout_ms = c->timeout_ms,
                         .fingerprint = c->fingerprint,
                         .kind = SL_COMM_KIND_AUTO,
                         .be = c->be};
    sl_status st = sl_comm_new(&g->comm, &cc, e);
    if (st) {
        free(g);
        return st;
    }
    g->rank = c->tp_rank;
    g->world = c->tp_size;
    g->timeout_ms = c->timeout_ms;
    g->keep_ms = c->timeout_ms / 4 < 1000 ? c->timeout_ms / 4 : 1000;
    if (g->keep_ms < 10) g->keep_ms = 10;
    const char *sa = getenv("SLUICE_GROUP_SYNC_ALL");
    g->sync_all = sa && !strcmp(sa, "1");
    pthread_mutex_init(&g->mu, NULL);
    g->last_send_ms = g->last_sync_ms = now_ms();
    SL_LOGI("group", "rank %d of %d joined at %s (%s, %s transport)", g->rank, g->world,
            c->init_addr, sl_comm_kind_name(sl_comm_kind_of(g->comm)),
            sl_comm_transport_name(sl_comm_transport_of(g->comm)));
    *out = g;
    return SL_OK;
}

void sl_group_free(sl_group *g)
{
    if (!g) return;
    sl_comm_free(g->comm);
    sl_plan_buf_free(&g->buf);
    pthread_mutex_destroy(&g->mu);
    free(g);
}

sl_comm *sl_group_comm(sl_group *g)
{
    return g->comm;
}

int sl_group_rank(const sl_group *g)
{
    return g->rank;
}

/* A comm failure is final: abort so the peers fail fast too. */
static sl_status broken(sl_group *g, sl_status st, sl_err *e, const char *what)
{
    sl_comm_abort(g->comm);
    char msg[sizeof e->msg];
    snprintf(msg, sizeof msg, "%s", e->msg);
    return sl_err_set(e, st, "tensor-parallel group (rank %d of %d): %s: %s", g->rank, g->world,
                      what, msg);
}

sl_status sl_group_agree(sl_group *g, sl_status mine, const char *msg, sl_err *e)
{
    char first[AGREE_MSG + 64] = "";
    sl_status bad = SL_OK;
    for (int r = 0; r < g->world; r++) {
        struct {
            int32_t status;
            char msg[AGREE_MSG];
        } m;
        memset(&m, 0, sizeof m);
        if (r == g->rank) {
            m.status = mine;
            if (mine) snprintf(m.msg, sizeof m.msg, "%s", msg ? msg : "failed");
        }
        sl_err ce = {0};
        if (sl_comm_bcast_bytes(g->comm, &m, sizeof m, r, &ce)) {
            *e = ce;
            return broken(g, ce.code ? ce.code : SL_ERR_IO, e, "start-up");
        }
        m.msg[AGREE_MSG - 1] = 0;
        if (m.status && !bad) {
            bad = m.status > 0 ? (sl_status)m.status : SL_ERR_INVALID;
            snprintf(first, sizeof first, "rank %d: %s", r, m.msg);
        }
    }
    return bad ? sl_err_set(e, bad, "%s", first) : SL_OK;
}

typedef struct sizes_msg {
    int32_t n_pages, n_slots, max_running, context_len, page_size, vocab;
} sizes_msg;

sl_status sl_group_sizes(sl_group *g, sl_engine_config *c, const sl_sched_config *leader,
                         sl_err *e)
{
    sizes_msg m = {0};
    if (g->rank == 0)
        m = (sizes_msg){leader->n_pages, leader->n_slots,    leader->max_running,
                        leader->context_len, leader->page_size, leader->vocab};
    sl_err ce = {0};
    if (sl_comm_bcast_bytes(g->comm, &m, sizeof m, 0, &ce)) {
        *e = ce;
        return broken(g, ce.code ? ce.code : SL_ERR_IO, e, "pool sizes");
    }
    g->sizes = (sl_sched_config){.n_pages = m.n_pages, .n_slots = m.n_slots,
                                 .max_running = m.max_running, .context_len = m.context_len,
                                 .page_size = m.page_size, .vocab = m.vocab};
    if (g->rank == 0) return SL_OK;
    c->max_total_tokens = m.n_pages * m.page_size;
    c->max_mamba_slots = m.n_slots;
    c->max_running = m.max_running;
    c->context_len = m.context_len;
    c->overlap = 0;
    return SL_OK;
}

sl_status sl_group_check_sizes(sl_group *g, const sl_engine *eng, sl_err *e)
{
    const sl_sched_config *s = sl_engine_sched_config(eng), *l = &g->sizes;
    if (s->n_pages != l->n_pages || s->n_slots != l->n_slots ||
        s->max_running != l->max_running || s->context_len != l->context_len ||
        s->vocab != l->vocab || s->page_size != l->page_size)
        return sl_err_set(e, SL_ERR_INVALID,
                          "pools differ from the leader's: %d pages, %d slots, %d running, "
                          "context %d, vocab %d, page size %d here; %d, %d, %d, %d, %d, %d on rank 0",
                          s->n_pages, s->n_slots, s->max_running, s->context_len, s->vocab,
                          s->page_size, l->n_pages, l->n_slots, l->max_running, l->context_len,
                          l->vocab, l->page_size);
    return SL_OK;
}

/* ---- leader --------------------------------------------------------------------- */

/* Sends one message (header, then body); a SYNC one is followed by a
 * barrier, before anything else (a PLAN's forward) uses the comm: the
 * followers enter it at the same point (sl_group_follow). Caller holds mu. */
static sl_status send_locked(sl_group *g, sl_plan_header *h, const uint8_t *body, sl_err *e)
{
    int64_t now = now_ms();
    if (g->sync_all || now - g->last_sync_ms >= g->keep_ms) h->flags |= SL_PLAN_FLAG_SYNC;
    h->seq = ++g->seq;
    uint8_t hdr[SL_PLAN_HEADER_BYTES];
    sl_plan_header_pack(hdr, h);
    sl_status st = sl_comm_bcast_bytes(g->comm, hdr, sizeof hdr, 0, e);
    if (!st && h->body_len) st = sl_comm_bcast_bytes(g->comm, (void *)body, h->body_len, 0, e);
    if (!st && (h->flags & SL_PLAN_FLAG_SYNC)) {
        st = sl_comm_barrier(g->comm, e);
        g->last_sync_ms = now_ms();
    }
    g->last_send_ms = now_ms();
    return st ? broken(g, st, e, "a follower is gone or not answering") : SL_OK;
}

/* The plan hook: broadcasts b and keeps mu until on_plan_end, after b's
 * forward. Every rank then issues the same collectives in the same order:
 * the plan's broadcasts (and barrier), the forward's all-reduces and
 * all-gather; no KEEP or STOP from the main thread lands in the middle. */
static sl_status on_plan(void *ctx, const sl_sched_batch *b, sl_err *e)
{
    sl_group *g = ctx;
    pthread_mutex_lock(&g->mu);
    sl_plan_header h = {0};
    sl_status st = g->stopped ? sl_err_set(e, SL_ERR_CLOSED, "tensor-parallel group stopped")
                              : sl_plan_encode(b, &g->buf, &h, e);
    if (!st) st = send_locked(g, &h, g->buf.p, e);
    if (st) pthread_mutex_unlock(&g->mu);
    return st;
}

static void on_plan_end(void *ctx)
{
    sl_group *g = ctx;
    pthread_mutex_unlock(&g->mu);
}

void sl_group_lead(sl_group *g, sl_engine *eng)
{
    if (g->world < 2) return;
    sl_engine_set_plan_hook(eng, on_plan, g);
    sl_engine_set_plan_end(eng, on_plan_end);
}

sl_status sl_group_tick(void *ctx, sl_err *e)
{
    sl_group *g = ctx;
    if (g->world < 2) return SL_OK;
    sl_status st = SL_OK;
    /* the compute thread may be sending a plan or running its forward: then
     * the group is not idle */
    if (pthread_mutex_trylock(&g->mu)) return SL_OK;
    if (now_ms() - g->last_send_ms >= g->keep_ms) {
        sl_plan_header h = {.kind = SL_PLAN_KIND_KEEP};
        st = send_locked(g, &h, NULL, e);
    }
    pthread_mutex_unlock(&g->mu);
    return st;
}

void sl_group_stop(sl_group *g)
{
    if (!g || g->rank || g->world < 2) return;
    pthread_mutex_lock(&g->mu);
    if (g->stopped) {
        pthread_mutex_unlock(&g->mu);
        return;
    }
    g->stopped = 1;
    sl_plan_header h = {.kind = SL_PLAN_KIND_STOP};
    uint8_t hdr[SL_PLAN_HEADER_BYTES];
    h.seq = ++g->seq;
    sl_plan_header_pack(hdr, &h);
    sl_err e = {0};
    if (sl_comm_bcast_bytes(g->comm, hdr, sizeof hdr, 0, &e))
        SL_LOGW("group", "could not tell the followers to stop: %s", e.msg);
    pthread_mutex_unlock(&g->mu);
}

void sl_group_set_side(sl_group *g, sl_group_side_fn fn, void *ctx)
{
    g->side = fn;
    g->side_ctx = ctx;
}

sl_status sl_group_side(void *ctx, const uint8_t *body, size_t n, sl_err *e)
{
    sl_group *g = ctx;
    if (!g->side) return sl_err_set(e, SL_ERR_INVALID, "tensor-parallel group: no side handler");
    if (n < 4 || n > SL_PLAN_MAX_BODY || n % 4)
        return sl_err_set(e, SL_ERR_INVALID, "side job of %zu bytes", n);
    pthread_mutex_lock(&g->mu);
    sl_plan_header h = {.kind = SL_PLAN_KIND_SIDE, .body_len = (uint32_t)n,
                        .checksum = sl_plan_checksum(body, n)};
    sl_status st = g->stopped ? sl_err_set(e, SL_ERR_CLOSED, "tensor-parallel group stopped")
                              : send_locked(g, &h, body, e);
    if (!st && (st = g->side(g->side_ctx, body, n, e))) st = broken(g, st, e, "side job");
    pthread_mutex_unlock(&g->mu);
    return st;
}

/* ---- follower ------------------------------------------------------------------- */

sl_status sl_group_follow(sl_group *g, sl_engine *eng, volatile sig_atomic_t *stop, sl_err *e)
{
    const sl_sched_config *sc = sl_engine_sched_config(eng);
    sl_plan_limits lim = {.vocab = sc->vocab,
                          .page_size = sc->page_size,
                          .n_pages = sc->n_pages,
                          .n_slots = sc->hybrid ? sc->n_slots : 0,
                          .max_seqs = sc->max_running,
                          .max_rows = sc->max_running,
                          .context_len = sc->context_len};
    uint64_t plans = 0, expect = 1;
    SL_LOGI("group", "rank %d following rank 0", g->rank);
    while (!stop || !*stop) {
        uint8_t hdr[SL_PLAN_HEADER_BYTES];
        sl_plan_header h;
        sl_status st = sl_comm_bcast_bytes(g->comm, hdr, sizeof hdr, 0, e);
        if (st) return broken(g, st, e, "the leader (rank 0) is gone or silent");
        if ((st = sl_plan_header_unpack(&h, hdr, e))) return broken(g, st, e, "bad message");
        if (h.seq != expect)
            return broken(g, sl_err_set(e, SL_ERR_INVALID, "plan: seq %llu, expected %llu",
                                        (unsigned long long)h.seq, (unsigned long long)expect),
                          e, "bad message");
        expect++;
        if (h.kind == SL_PLAN_KIND_STOP) {
            SL_LOGI("group", "rank %d: the leader stopped the group after %llu plans", g->rank,
                    (unsigned long long)plans);
            return SL_OK;
        }
        if (h.kind == SL_PLAN_KIND_PLAN || h.kind == SL_PLAN_KIND_SIDE) {
            if (h.body_len > g->buf.cap) {
                uint8_t *p = realloc(g->buf.p, h.body_len);
                if (!p) return broken(g, sl_err_set(e, SL_ERR_NOMEM, "out of memory"), e, "plan");
                g->buf.p = p;
                g->buf.cap = h.body_len;
            }
            if ((st = sl_comm_bcast_bytes(g->comm, g->buf.p, h.body_len, 0, e)))
                return broken(g, st, e, "the leader (rank 0) is gone or silent");
        }
        /* the leader enters the barrier right after sending, before its
         * forward: so does every follower, or the barrier would pair with
         * one of the forward's collectives (wrong data over shared memory) */
        if ((h.flags & SL_PLAN_FLAG_SYNC) && (st = sl_comm_barrier(g->comm, e)))
            return broken(g, st, e, "the leader (rank 0) is gone or silent");
        if (h.kind == SL_PLAN_KIND_PLAN) {
            sl_sched_batch b;
            if ((st = sl_plan_decode(&h, g->buf.p, &lim, &b, e)))
                return broken(g, st, e, "rejected a plan");
            if ((st = sl_engine_follow(eng, &b, e))) return broken(g, st, e, "forward");
            plans++;
        } else if (h.kind == SL_PLAN_KIND_SIDE) {
            if (sl_plan_checksum(g->buf.p, h.body_len) != h.checksum)
                return broken(g, sl_err_set(e, SL_ERR_INVALID, "side job: checksum mismatch"), e,
                              "bad message");
            if (!g->side)
                return broken(g, sl_err_set(e, SL_ERR_INVALID, "no side handler on this rank"),
                              e, "side job");
            if ((st = g->side(g->side_ctx, g->buf.p, h.body_len, e)))
                return broken(g, st, e, "side job");
        }
    }
    return SL_OK;
}

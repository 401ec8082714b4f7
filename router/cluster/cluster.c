/* sl_cluster: see cluster.h.
 *
 * nng threads only touch the event queue (mutex) and the uv_async; the
 * worker table, the rid map and every callback live on the loop thread. */
#include "cluster.h"

#include <nng/nng.h>
#include <nng/protocol/pair1/pair.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "link_auth.h"
#include "sl_log.h"
#include "wire.h"

enum { EV_MSG, EV_PIPE_UP, EV_PIPE_DOWN };

typedef struct event {
    struct event *next;
    int worker;
    int kind;
    uint32_t pipe; /* pipe events */
    nng_msg *msg;
} event;

typedef struct worker {
    sl_cluster *cl; /* for nng callbacks */
    int idx;
    char url[256];
    nng_socket sock;
    nng_dialer dialer;
    nng_aio *aio;
    int open;  /* socket opened */
    int piped; /* pipes up: nng may report a new pipe before the old one's removal */
    int alive;
    int listed;
    int dns_source; /* index of the DNS entry that named it, or -1 */
    uint64_t last_rx_ms;
    uint64_t ping_seq;
    int inflight;
    Sluice__LoadReport load; /* scalar fields only */
    /* Messages nng's send buffer had no room for, sent in order as it
     * drains (flush_aborts): aborts first, never dropped; then generates. */
    uint64_t *abq;
    size_t nabq, capabq;
    struct outmsg {
        uint64_t rid;
        nng_msg *m;
    } *outq;
    size_t outq_head, nout, capout;
    char model[128];
    char transfer_url[256], layout[256];
    uint64_t failures;
    /* link authentication (cfg.secret) */
    uint32_t pipe;   /* the pipe last reported up */
    int authed;      /* that pipe passed the handshake */
    int auth_warned; /* logged that it has not, once per pipe */
    uint64_t pipe_up_ms;
    uint8_t nw[SL_LINK_NONCE], nr[SL_LINK_NONCE];
    int answered; /* sent our RESPONSE on this pipe */
    int refused;  /* failed the handshake: everything from this pipe is ignored */
} worker;

typedef struct gen {
    struct gen *next; /* hash chain */
    uint64_t rid;
    int worker;
    sl_cluster_chunk_cb cb;
    void *ud;
} gen;

/* A /flush_cache in progress: waiting[i] while worker i owes an answer. */
typedef struct flush_op {
    struct flush_op *next;
    uint64_t seq, deadline_ms;
    uint8_t *waiting;
    int n, nwait; /* workers when it started; answers owed */
    sl_cluster_flush_result res;
    sl_cluster_flush_cb cb;
    void *ud;
} flush_op;

typedef struct dns_entry {
    sl_cluster *cl;
    char host[256];
    int port;
    uv_getaddrinfo_t req;
    int busy;
} dns_entry;

struct sl_cluster {
    uv_loop_t *loop;
    sl_cluster_config cfg;
    sl_cluster_event on_event;
    void *ud;
    uv_async_t async;
    uv_timer_t timer;
    uv_mutex_t mu;
    event *q_head, *q_tail;
    worker **w;
    int nw, capw;
    dns_entry *dns[16];
    int ndns;
    uint64_t last_dns_ms;
    gen **buckets;
    size_t nbuckets, ngens;
    uint64_t next_rid;
    uint64_t last_tick_ms; /* when on_timer last ran: its lateness is the loop's stall */
    int closed;
    sl_cluster_kv_ready_cb kv_ready;
    void *kv_ready_ud;
    flush_op *flushes;
    uint64_t flush_seq;
};

sl_cluster_config sl_cluster_config_default(void)
{
    return (sl_cluster_config){
        .heartbeat_ms = 1000, .dead_after_ms = 5000, .dns_refresh_ms = 5000, .reconnect_ms = 200};
}

static uint64_t now_ms(void) { return uv_hrtime() / 1000000u; }

/* ----------------------------------------------------------- nng threads */

static void push_event(worker *w, int kind, nng_msg *m, uint32_t pipe)
{
    event *ev = malloc(sizeof *ev);
    if (!ev) {
        if (m) nng_msg_free(m);
        return;
    }
    ev->next = NULL;
    ev->worker = w->idx;
    ev->kind = kind;
    ev->msg = m;
    ev->pipe = pipe;
    sl_cluster *cl = w->cl;
    uv_mutex_lock(&cl->mu);
    if (cl->q_tail)
        cl->q_tail->next = ev;
    else
        cl->q_head = ev;
    cl->q_tail = ev;
    uv_mutex_unlock(&cl->mu);
    uv_async_send(&cl->async);
}

static void on_recv(void *arg)
{
    worker *w = arg;
    int rv = nng_aio_result(w->aio);
    if (rv == NNG_ECLOSED || rv == NNG_ECANCELED) return;
    if (rv == 0) push_event(w, EV_MSG, nng_aio_get_msg(w->aio), 0);
    nng_recv_aio(w->sock, w->aio);
}

static void on_pipe(nng_pipe p, nng_pipe_ev ev, void *arg)
{
    push_event(arg, ev == NNG_PIPE_EV_ADD_POST ? EV_PIPE_UP : EV_PIPE_DOWN, NULL,
               (uint32_t)nng_pipe_id(p));
}

/* ------------------------------------------------------------- rid map */

static size_t bucket_of(const sl_cluster *cl, uint64_t rid)
{
    return (size_t)((rid * 0x9e3779b97f4a7c15ull) >> 20) & (cl->nbuckets - 1);
}

static int map_grow(sl_cluster *cl)
{
    size_t nb = cl->nbuckets ? cl->nbuckets * 2 : 1024;
    gen **b = calloc(nb, sizeof *b);
    if (!b) return -1;
    size_t old = cl->nbuckets;
    gen **ob = cl->buckets;
    cl->buckets = b;
    cl->nbuckets = nb;
    for (size_t i = 0; i < old; i++)
        for (gen *g = ob[i], *nx; g; g = nx) {
            nx = g->next;
            size_t k = bucket_of(cl, g->rid);
            g->next = b[k];
            b[k] = g;
        }
    free(ob);
    return 0;
}

static gen *map_take(sl_cluster *cl, uint64_t rid)
{
    if (!cl->nbuckets) return NULL;
    for (gen **pp = &cl->buckets[bucket_of(cl, rid)]; *pp; pp = &(*pp)->next)
        if ((*pp)->rid == rid) {
            gen *g = *pp;
            *pp = g->next;
            cl->ngens--;
            cl->w[g->worker]->inflight--;
            return g;
        }
    return NULL;
}

static gen *map_find(sl_cluster *cl, uint64_t rid)
{
    if (!cl->nbuckets) return NULL;
    for (gen *g = cl->buckets[bucket_of(cl, rid)]; g; g = g->next)
        if (g->rid == rid) return g;
    return NULL;
}

/* ----------------------------------------------------------- sending */

/* Sends never block the loop thread. A ping that finds the queue full is
 * dropped (the next one follows); aborts and generates wait in the worker's
 * own queues instead (see worker.abq / worker.outq). */
static void send_ping(worker *w)
{
    if (w->open)
        sl_wire_send_ping(w->sock, SLUICE__ENVELOPE__MSG_PING, ++w->ping_seq, NNG_FLAG_NONBLOCK);
}

static void outq_clear(worker *w)
{
    for (size_t i = w->outq_head; i < w->outq_head + w->nout; i++) nng_msg_free(w->outq[i].m);
    w->outq_head = w->nout = 0;
}

/* Removes rid's generate if it is still waiting here: 1 when it was. */
static int outq_drop(worker *w, uint64_t rid)
{
    for (size_t i = w->outq_head; i < w->outq_head + w->nout; i++)
        if (w->outq[i].rid == rid) {
            nng_msg_free(w->outq[i].m);
            memmove(&w->outq[i], &w->outq[i + 1],
                    (w->outq_head + w->nout - i - 1) * sizeof *w->outq);
            w->nout--;
            return 1;
        }
    return 0;
}

/* Sends what waits for w, aborts first, until nng's buffer is full again. */
static void flush_worker(worker *w)
{
    if (!w->open) return;
    size_t k = 0;
    while (k < w->nabq && !sl_wire_send_abort(w->sock, w->abq[k], NNG_FLAG_NONBLOCK)) k++;
    if (k) { /* abq is NULL until the first abort waits */
        memmove(w->abq, w->abq + k, (w->nabq - k) * sizeof *w->abq);
        w->nabq -= k;
    }
    if (w->nabq) return;
    while (w->nout && !nng_sendmsg(w->sock, w->outq[w->outq_head].m, NNG_FLAG_NONBLOCK)) {
        w->outq_head++;
        w->nout--;
    }
    if (!w->nout) w->outq_head = 0;
}

static void flush_aborts(sl_cluster *cl)
{
    for (int i = 0; i < cl->nw; i++)
        if (cl->w[i]->nabq || cl->w[i]->nout) flush_worker(cl->w[i]);
}

/* An abort is never dropped: when nng's buffer is full it waits in abq and
 * goes out before anything else. A generate still waiting is just removed. */
static void send_abort(worker *w, uint64_t rid)
{
    if (!w->open || outq_drop(w, rid)) return;
    if (!w->nabq && !sl_wire_send_abort(w->sock, rid, NNG_FLAG_NONBLOCK)) return;
    if (w->nabq == w->capabq) {
        size_t cap = w->capabq ? w->capabq * 2 : 64;
        uint64_t *q = realloc(w->abq, cap * sizeof *q);
        if (!q) {
            SL_LOGE("cluster", "out of memory queueing an abort for %s", w->url);
            return;
        }
        w->abq = q;
        w->capabq = cap;
    }
    w->abq[w->nabq++] = rid;
}

/* A generate goes out now, or waits in outq (in order) while nng's buffer
 * is full: a burst (n = 64 over many prompts) queues instead of failing. */
static int send_generate(worker *w, Sluice__GenerateRequest *g)
{
    if (!w->open) return NNG_ECLOSED;
    Sluice__Envelope env = SLUICE__ENVELOPE__INIT;
    env.msg_case = SLUICE__ENVELOPE__MSG_GENERATE;
    env.generate = g;
    nng_msg *m;
    int rv = sl_wire_pack(&env, &m);
    if (rv) return rv;
    if (!w->nout && !w->nabq && !nng_sendmsg(w->sock, m, NNG_FLAG_NONBLOCK)) return 0;
    if (w->nout >= SL_CLUSTER_MAX_QUEUED) {
        nng_msg_free(m);
        return NNG_EAGAIN;
    }
    if (w->outq_head + w->nout == w->capout) {
        if (w->outq_head) {
            memmove(w->outq, w->outq + w->outq_head, w->nout * sizeof *w->outq);
            w->outq_head = 0;
        }
        if (w->nout == w->capout) {
            size_t cap = w->capout ? w->capout * 2 : 256;
            struct outmsg *q = realloc(w->outq, cap * sizeof *q);
            if (!q) {
                nng_msg_free(m);
                return NNG_ENOMEM;
            }
            w->outq = q;
            w->capout = cap;
        }
    }
    w->outq[w->outq_head + w->nout++] = (struct outmsg){g->rid, m};
    return 0;
}

/* --------------------------------------------------------- liveness */

/* Finishes every generation on worker idx with a lost-error chunk. The rids
 * are collected first: callbacks may submit (growing the map) or abort. */
static void fail_inflight(sl_cluster *cl, int idx, const char *why)
{
    worker *w = cl->w[idx];
    if (!w->inflight) return;
    char msg[400];
    snprintf(msg, sizeof msg, "worker %s %s; the request was lost", w->url, why);
    size_t n = 0, cap = (size_t)w->inflight;
    uint64_t *rids = malloc(cap * sizeof *rids);
    if (!rids) {
        SL_LOGE("cluster", "out of memory failing the requests of %s", w->url);
        return;
    }
    for (size_t b = 0; b < cl->nbuckets; b++)
        for (gen *g = cl->buckets[b]; g && n < cap; g = g->next)
            if (g->worker == idx) rids[n++] = g->rid;
    for (size_t i = 0; i < n; i++) {
        gen *g = map_take(cl, rids[i]);
        if (!g) continue; /* aborted by an earlier callback */
        /* A silent worker may only be slow: it must not go on generating
         * what another worker now continues. */
        if (w->piped) send_abort(w, g->rid);
        Sluice__TokenChunk ch = SLUICE__TOKEN_CHUNK__INIT;
        ch.rid = g->rid;
        ch.finish = SLUICE__FINISH_REASON__FINISH_ERROR;
        ch.error = msg;
        g->cb(g->ud, &ch, 1);
        free(g);
    }
    free(rids);
}

/* ---- /flush_cache ---- */

static void flush_note(flush_op *op, const char *url, const char *what)
{
    if (!op->res.error[0]) snprintf(op->res.error, sizeof op->res.error, "worker %s: %s", url, what);
}

/* Worker idx owes op nothing more; op ends when nobody owes it an answer
 * (unlinked before its callback, which may start another flush). Returns 1
 * when op ended (it is freed). */
static int flush_settle(sl_cluster *cl, flush_op *op, int idx, const Sluice__FlushCacheDone *d,
                        const char *failure)
{
    if (idx >= op->n || !op->waiting[idx]) return 0;
    op->waiting[idx] = 0;
    op->nwait--;
    const char *url = cl->w[idx]->url;
    if (d && d->ok) {
        op->res.flushed++;
        op->res.freed_pages += d->freed_pages;
    } else if (d) {
        op->res.refused++;
        flush_note(op, url, d->error && d->error[0] ? d->error : "refused");
    } else {
        op->res.failed++;
        flush_note(op, url, failure ? failure : "failed");
    }
    if (op->nwait) return 0;
    for (flush_op **pp = &cl->flushes; *pp; pp = &(*pp)->next)
        if (*pp == op) {
            *pp = op->next;
            break;
        }
    op->cb(op->ud, &op->res);
    free(op->waiting);
    free(op);
    return 1;
}

/* Settles worker idx's answer owed to every flush in progress (d: its
 * answer to seq; NULL: it failed them all for `failure`). */
static void flush_worker_done(sl_cluster *cl, int idx, const Sluice__FlushCacheDone *d, const char *failure)
{
    for (flush_op *op = cl->flushes, *nx; op; op = nx) {
        nx = op->next; /* flush_settle may free op */
        if (!d || d->seq == op->seq) flush_settle(cl, op, idx, d, failure);
    }
}

/* Ends op: every worker that still owes it an answer fails it for why. */
static void flush_fail(sl_cluster *cl, flush_op *op, const char *why)
{
    for (int i = 0; i < op->n; i++)
        if (flush_settle(cl, op, i, NULL, why)) return;
    SL_ASSERT(0 && "a flush in progress is owed an answer");
}

/* Flushes past their deadline fail the workers that did not answer. */
static void flush_expire(sl_cluster *cl, uint64_t now)
{
    for (flush_op *op = cl->flushes, *nx; op; op = nx) {
        nx = op->next;
        if (now >= op->deadline_ms) flush_fail(cl, op, "no answer to the flush in time");
    }
}

sl_status sl_cluster_flush_cache(sl_cluster *cl, sl_cluster_flush_cb cb, void *ud, sl_err *e)
{
    int alive = 0;
    for (int i = 0; i < cl->nw; i++) alive += cl->w[i]->alive;
    if (!alive) return sl_err_set(e, SL_ERR_CLOSED, "no worker is alive");
    flush_op *op = calloc(1, sizeof *op);
    uint8_t *waiting = calloc((size_t)cl->nw, 1);
    if (!op || !waiting) {
        free(op);
        free(waiting);
        return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    }
    op->seq = ++cl->flush_seq;
    op->deadline_ms = now_ms() + SL_CLUSTER_FLUSH_MS;
    op->waiting = waiting;
    op->n = cl->nw;
    op->cb = cb;
    op->ud = ud;
    op->next = cl->flushes;
    cl->flushes = op;
    for (int i = 0; i < cl->nw; i++) {
        worker *w = cl->w[i];
        if (!w->alive) continue;
        op->res.workers++;
        op->waiting[i] = 1;
        op->nwait++;
    }
    /* sent after the bookkeeping: a failed send settles (and may end) op */
    for (int i = 0, n = op->n; i < n; i++) {
        if (!waiting[i]) continue;
        int rv = sl_wire_send_flush_cache(cl->w[i]->sock, op->seq, NNG_FLAG_NONBLOCK);
        if (rv && flush_settle(cl, op, i, NULL, "the flush could not be sent")) break;
    }
    return SL_OK;
}

static void set_alive(sl_cluster *cl, int idx, int alive, const char *why)
{
    worker *w = cl->w[idx];
    if (w->alive == alive) return;
    w->alive = alive;
    if (alive) {
        SL_LOGI("cluster", "worker %s is up (model %s)", w->url, w->model);
    } else {
        w->failures++;
        SL_LOGW("cluster", "worker %s %s", w->url, why);
        outq_clear(w); /* their generations are failed (and migrated) now */
        fail_inflight(cl, idx, why);
        flush_worker_done(cl, idx, NULL, why);
    }
    if (cl->on_event) cl->on_event(cl->ud, idx, alive);
}

static void handle_load(sl_cluster *cl, worker *w, const Sluice__LoadReport *l)
{
    if (w->load.worker_id && l->worker_id && l->worker_id != w->load.worker_id) {
        /* Same address, new process: what ran on the old one is gone. */
        set_alive(cl, w->idx, 0, "restarted");
    }
    w->load = *l;
    w->load.model = w->load.transfer_url = w->load.layout = NULL;
    snprintf(w->layout, sizeof w->layout, "%s", l->layout ? l->layout : "");
    /* a decode worker listening on a wildcard address is reached on the host we dial */
    const char *tu = l->transfer_url ? l->transfer_url : "";
    const char *wild = strstr(tu, "://0.0.0.0:") ? "0.0.0.0" : strstr(tu, "://*:") ? "*" : NULL;
    const char *hs = strstr(w->url, "://"), *he = hs ? strrchr(hs + 3, ':') : NULL;
    if (wild && hs && he && !strncmp(w->url, "tcp", 3))
        snprintf(w->transfer_url, sizeof w->transfer_url, "tcp://%.*s%s", (int)(he - hs - 3),
                 hs + 3, strstr(tu, wild) + strlen(wild));
    else
        snprintf(w->transfer_url, sizeof w->transfer_url, "%s", tu);
    w->load.base.unknown_fields = NULL;
    w->load.base.n_unknown_fields = 0;
    snprintf(w->model, sizeof w->model, "%s", l->model ? l->model : "");
    set_alive(cl, w->idx, 1, "");
}

static int authenticating(const sl_cluster *cl)
{
    return cl->cfg.secret && cl->cfg.secret->len;
}

/* The pipe is ignored from now on (not closed: closing a pipe from here can
 * hang nng 1.5's reaper; a worker that fails the handshake gets nothing). */
static void refuse(worker *w, nng_pipe p, const char *why)
{
    (void)p;
    if (!w->refused) SL_LOGW("cluster", "worker %s refused: %s", w->url, why);
    w->refused = 1;
}

/* The handshake on a worker's pipe (link_auth.h): answer its challenge,
 * then check its proof. */
static void handle_auth(sl_cluster *cl, worker *w, nng_pipe p, const Sluice__LinkAuth *la)
{
    if (la->step == SLUICE__LINK_STEP__LINK_CHALLENGE && !w->answered &&
        la->nonce.len == SL_LINK_NONCE) {
        memcpy(w->nw, la->nonce.data, SL_LINK_NONCE);
        if (sl_link_random(w->nr, SL_LINK_NONCE)) return refuse(w, p, "no random bytes");
        uint8_t mac[SL_LINK_MAC];
        sl_link_mac(cl->cfg.secret, SL_LINK_ROLE_ROUTER, w->nw, w->nr, mac);
        Sluice__LinkAuth r = SLUICE__LINK_AUTH__INIT;
        r.step = SLUICE__LINK_STEP__LINK_RESPONSE;
        r.nonce.data = w->nr;
        r.nonce.len = SL_LINK_NONCE;
        r.mac.data = mac;
        r.mac.len = SL_LINK_MAC;
        Sluice__Envelope env = SLUICE__ENVELOPE__INIT;
        env.msg_case = SLUICE__ENVELOPE__MSG_AUTH;
        env.auth = &r;
        w->answered = 1;
        sl_wire_send(w->sock, &env, NNG_FLAG_NONBLOCK);
    } else if (la->step == SLUICE__LINK_STEP__LINK_ACCEPT && w->answered &&
               sl_link_mac_ok(cl->cfg.secret, SL_LINK_ROLE_WORKER, w->nw, w->nr, la->mac.data,
                              la->mac.len)) {
        w->authed = 1;
        SL_LOGI("cluster", "worker %s authenticated", w->url);
        send_ping(w); /* the pong's load report makes it alive */
    } else {
        refuse(w, p, "link authentication failed (wrong secret?)");
    }
}

static void handle_msg(sl_cluster *cl, worker *w, nng_msg *m)
{
    nng_pipe p = nng_msg_get_pipe(m);
    Sluice__Envelope *env = sl_wire_unpack(m);
    if (!env) {
        SL_LOGW("cluster", "worker %s sent a message that does not decode", w->url);
        return;
    }
    uint32_t pid = (uint32_t)nng_pipe_id(p);
    if (authenticating(cl) && env->msg_case == SLUICE__ENVELOPE__MSG_AUTH &&
        env->auth->step == SLUICE__LINK_STEP__LINK_CHALLENGE && pid != w->pipe) {
        /* a new pipe's challenge may come before its pipe event */
        w->pipe = pid;
        w->authed = w->answered = w->auth_warned = w->refused = 0;
        w->pipe_up_ms = now_ms();
    }
    if (authenticating(cl) && (!w->authed || pid != w->pipe)) {
        /* nothing counts before the handshake, not even as a sign of life */
        if (pid != w->pipe)
            ; /* a pipe already gone */
        else if (w->refused)
            ; /* until the pipe goes */
        else if (env->msg_case == SLUICE__ENVELOPE__MSG_AUTH)
            handle_auth(cl, w, p, env->auth);
        else
            refuse(w, p, "it sent a message before authenticating (no link secret?)");
        sluice__envelope__free_unpacked(env, NULL);
        return;
    }
    w->last_rx_ms = now_ms();
    switch (env->msg_case) {
    case SLUICE__ENVELOPE__MSG_LOAD: handle_load(cl, w, env->load); break;
    case SLUICE__ENVELOPE__MSG_KV_READY:
        if (cl->kv_ready) cl->kv_ready(cl->kv_ready_ud, w->idx, env->kv_ready);
        break;
    case SLUICE__ENVELOPE__MSG_PONG:
        if (w->load.worker_id) set_alive(cl, w->idx, 1, "");
        break;
    case SLUICE__ENVELOPE__MSG_FLUSH_DONE: flush_worker_done(cl, w->idx, env->flush_done, NULL); break;
    case SLUICE__ENVELOPE__MSG_CHUNK: {
        Sluice__TokenChunk *ch = env->chunk;
        gen *g = ch->finish != SLUICE__FINISH_REASON__FINISH_NONE ? map_take(cl, ch->rid)
                                                                  : map_find(cl, ch->rid);
        if (g) {
            /* A chunk from a worker proves it is alive even between pongs. */
            g->cb(g->ud, ch, 0);
            if (ch->finish != SLUICE__FINISH_REASON__FINISH_NONE) free(g);
        }
        break;
    }
    default: break;
    }
    sluice__envelope__free_unpacked(env, NULL);
}

static void drain_events(sl_cluster *cl)
{
    uv_mutex_lock(&cl->mu);
    event *ev = cl->q_head;
    cl->q_head = cl->q_tail = NULL;
    uv_mutex_unlock(&cl->mu);
    while (ev) {
        event *nx = ev->next;
        worker *w = cl->w[ev->worker];
        if (cl->closed) {
            if (ev->msg) nng_msg_free(ev->msg);
        } else if (ev->kind == EV_MSG) {
            handle_msg(cl, w, ev->msg);
        } else if (ev->kind == EV_PIPE_UP) {
            w->piped++;
            if (ev->pipe != w->pipe) { /* else its challenge came first */
                w->pipe = ev->pipe;
                w->authed = w->answered = w->auth_warned = w->refused = 0;
                w->pipe_up_ms = now_ms();
            }
            if (!authenticating(cl))
                send_ping(w); /* the pong's load report makes it alive */
        } else {
            if (ev->pipe == w->pipe) w->authed = w->answered = w->refused = 0;
            if (--w->piped <= 0) {
                w->piped = 0;
                w->nabq = 0; /* nothing runs there any more */
                set_alive(cl, w->idx, 0, "disconnected");
            }
        }
        free(ev);
        ev = nx;
    }
    flush_aborts(cl);
}

static void on_async(uv_async_t *a) { drain_events(a->data); }

/* --------------------------------------------------------- DNS */

static int find_url(const sl_cluster *cl, const char *url)
{
    for (int i = 0; i < cl->nw; i++)
        if (!strcmp(cl->w[i]->url, url)) return i;
    return -1;
}

static sl_status add_worker(sl_cluster *cl, const char *url, int dns_source, sl_err *e);

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    dns_entry *d = req->data;
    sl_cluster *cl = d->cl;
    d->busy = 0;
    if (cl->closed) {
        uv_freeaddrinfo(res);
        return;
    }
    if (status < 0) {
        SL_LOGW("cluster", "resolving %s: %s", d->host, uv_strerror(status));
        return; /* keep the last known list */
    }
    int didx = -1;
    for (int i = 0; i < cl->ndns; i++)
        if (cl->dns[i] == d) didx = i;
    for (int i = 0; i < cl->nw; i++)
        if (cl->w[i]->dns_source == didx) cl->w[i]->listed = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        char ip[64], url[256];
        if (ai->ai_family == AF_INET) {
            uv_ip4_name((struct sockaddr_in *)ai->ai_addr, ip, sizeof ip);
            snprintf(url, sizeof url, "tcp://%s:%d", ip, d->port);
        } else if (ai->ai_family == AF_INET6) {
            uv_ip6_name((struct sockaddr_in6 *)ai->ai_addr, ip, sizeof ip);
            snprintf(url, sizeof url, "tcp://[%s]:%d", ip, d->port);
        } else {
            continue;
        }
        int k = find_url(cl, url);
        if (k >= 0) {
            cl->w[k]->listed = 1;
            continue;
        }
        sl_err e = {0};
        if (add_worker(cl, url, didx, &e)) SL_LOGW("cluster", "%s", e.msg);
    }
    uv_freeaddrinfo(res);
}

static void dns_resolve(dns_entry *d)
{
    if (d->busy) return;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM};
    d->req.data = d;
    if (!uv_getaddrinfo(d->cl->loop, &d->req, on_resolved, d->host, NULL, &hints)) d->busy = 1;
}

/* --------------------------------------------------------- timer */

static void on_timer(uv_timer_t *t)
{
    sl_cluster *cl = t->data;
    /* Never blame a worker for the router's own stall: read what arrived
     * while the loop was busy first, and extend every deadline by how late
     * this tick runs (a stalled loop neither pinged nor read). */
    drain_events(cl);
    uint64_t now = now_ms();
    uint64_t late = now - cl->last_tick_ms > cl->cfg.heartbeat_ms
                        ? now - cl->last_tick_ms - cl->cfg.heartbeat_ms : 0;
    cl->last_tick_ms = now;
    if (late > cl->cfg.heartbeat_ms / 2) {
        SL_LOGW("cluster", "the router's loop stalled %llu ms; worker deadlines extended",
                (unsigned long long)late);
        for (int i = 0; i < cl->nw; i++)
            if (cl->w[i]->last_rx_ms)
                cl->w[i]->last_rx_ms =
                    cl->w[i]->last_rx_ms + late < now ? cl->w[i]->last_rx_ms + late : now;
    }
    for (int i = 0; i < cl->nw; i++) {
        worker *w = cl->w[i];
        if (!w->piped) continue;
        if (authenticating(cl) && !w->authed) {
            if (!w->auth_warned && !w->refused && now - w->pipe_up_ms > cl->cfg.dead_after_ms) {
                w->auth_warned = 1;
                SL_LOGW("cluster", "worker %s connected but has not authenticated (does it have "
                                   "the link secret?)", w->url);
            }
            continue;
        }
        if (w->alive && now - w->last_rx_ms > cl->cfg.dead_after_ms)
            set_alive(cl, i, 0, "stopped answering heartbeats");
        send_ping(w);
    }
    flush_expire(cl, now);
    if (now - cl->last_dns_ms >= cl->cfg.dns_refresh_ms) {
        cl->last_dns_ms = now;
        for (int i = 0; i < cl->ndns; i++) dns_resolve(cl->dns[i]);
    }
}

/* --------------------------------------------------------- public */

sl_status sl_cluster_new(sl_cluster **out, uv_loop_t *loop, const sl_cluster_config *cfg,
                         sl_cluster_event on_event, void *ud, sl_err *e)
{
    sl_cluster *cl = calloc(1, sizeof *cl);
    if (!cl || map_grow(cl)) {
        free(cl);
        return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    }
    cl->loop = loop;
    cl->cfg = cfg ? *cfg : sl_cluster_config_default();
    cl->on_event = on_event;
    cl->ud = ud;
    cl->next_rid = (uv_hrtime() & 0xffffffffu) << 20; /* distinct across router restarts */
    uv_mutex_init(&cl->mu);
    uv_async_init(loop, &cl->async, on_async);
    uv_timer_init(loop, &cl->timer);
    cl->async.data = cl->timer.data = cl;
    uv_timer_start(&cl->timer, on_timer, cl->cfg.heartbeat_ms, cl->cfg.heartbeat_ms);
    cl->last_dns_ms = cl->last_tick_ms = now_ms();
    *out = cl;
    return SL_OK;
}

static sl_status add_worker(sl_cluster *cl, const char *url, int dns_source, sl_err *e)
{
    if (strncmp(url, "tcp://", 6) && strncmp(url, "ipc://", 6) && strncmp(url, "inproc://", 9))
        return sl_err_set(e, SL_ERR_INVALID, "--worker %s: expected tcp://host:port or ipc://path",
                          url);
    if (find_url(cl, url) >= 0) return sl_err_set(e, SL_ERR_INVALID, "--worker %s: given twice", url);
    if (cl->nw == cl->capw) {
        int cap = cl->capw ? cl->capw * 2 : 8;
        worker **nw = realloc(cl->w, (size_t)cap * sizeof *nw);
        if (!nw) return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
        cl->w = nw;
        cl->capw = cap;
    }
    worker *w = calloc(1, sizeof *w);
    if (!w) return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    w->cl = cl;
    w->idx = cl->nw;
    w->listed = 1;
    w->dns_source = dns_source;
    snprintf(w->url, sizeof w->url, "%s", url);
    int rv = nng_pair1_open(&w->sock);
    if (!rv) rv = nng_aio_alloc(&w->aio, on_recv, w);
    if (rv) {
        if (w->sock.id) nng_close(w->sock);
        free(w);
        return sl_err_set(e, SL_ERR_IO, "worker %s: %s", url, nng_strerror(rv));
    }
    w->open = 1;
    cl->w[cl->nw++] = w;
    nng_socket_set_ms(w->sock, NNG_OPT_RECONNMINT, (nng_duration)cl->cfg.reconnect_ms);
    nng_socket_set_ms(w->sock, NNG_OPT_RECONNMAXT, (nng_duration)cl->cfg.reconnect_ms * 5);
    nng_socket_set_int(w->sock, NNG_OPT_SENDBUF, 1024);
    nng_socket_set_int(w->sock, NNG_OPT_RECVBUF, 1024);
    nng_socket_set_size(w->sock, NNG_OPT_RECVMAXSZ, 64u << 20);
    nng_pipe_notify(w->sock, NNG_PIPE_EV_ADD_POST, on_pipe, w);
    nng_pipe_notify(w->sock, NNG_PIPE_EV_REM_POST, on_pipe, w);
    nng_recv_aio(w->sock, w->aio);
    rv = nng_dial(w->sock, url, &w->dialer, NNG_FLAG_NONBLOCK);
    if (rv) SL_LOGW("cluster", "dialing %s: %s (will not retry)", url, nng_strerror(rv));
    return SL_OK;
}

sl_status sl_cluster_add(sl_cluster *cl, const char *url, sl_err *e)
{
    return add_worker(cl, url, -1, e);
}

sl_status sl_cluster_add_dns(sl_cluster *cl, const char *host, int port, sl_err *e)
{
    if (cl->ndns == (int)(sizeof cl->dns / sizeof cl->dns[0]))
        return sl_err_set(e, SL_ERR_LIMIT, "too many --worker-dns names");
    dns_entry *d = calloc(1, sizeof *d);
    if (!d) return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    d->cl = cl;
    snprintf(d->host, sizeof d->host, "%s", host);
    d->port = port;
    cl->dns[cl->ndns++] = d;
    dns_resolve(d);
    return SL_OK;
}

int sl_cluster_size(const sl_cluster *cl) { return cl->nw; }

int sl_cluster_alive(const sl_cluster *cl, int i)
{
    return i >= 0 && i < cl->nw && cl->w[i]->alive && cl->w[i]->listed;
}

void sl_cluster_info(const sl_cluster *cl, int i, sl_worker_info *o)
{
    const worker *w = cl->w[i];
    *o = (sl_worker_info){.url = w->url,
                          .alive = w->alive,
                          .listed = w->listed,
                          .inflight = w->inflight,
                          .running = w->load.running,
                          .queued = w->load.queued,
                          .free_kv_pages = w->load.free_kv_pages,
                          .total_kv_pages = w->load.total_kv_pages,
                          .checkpoint_tokens = w->load.checkpoint_tokens,
                          .context_length = w->load.context_length,
                          .vocab_size = w->load.vocab_size,
                          .cache_hit_rate = w->load.cache_hit_rate,
                          .model = w->model,
                          .worker_id = w->load.worker_id,
                          .failures = w->failures,
                          .steps = w->load.steps,
                          .busy_ms = w->load.busy_ms,
                          .pd_role = (int)w->load.disaggregation_mode,
                          .transfer_url = w->transfer_url,
                          .layout = w->layout,
                          .free_mamba_slots = w->load.free_mamba_slots,
                          .total_mamba_slots = w->load.total_mamba_slots,
                          .pd_waiting = w->load.pd_waiting,
                          .pd_transfers = w->load.pd_transfers,
                          .pd_transfer_bytes = w->load.pd_transfer_bytes,
                          .pd_failures = w->load.pd_failures,
                          .pd_transfer_seconds = w->load.pd_transfer_seconds,
                          .pd_queue_seconds = w->load.pd_queue_seconds,
                          .pd_hold_seconds = w->load.pd_hold_seconds};
}

void sl_cluster_set_kv_ready(sl_cluster *cl, sl_cluster_kv_ready_cb cb, void *ud)
{
    cl->kv_ready = cb;
    cl->kv_ready_ud = ud;
}

int sl_cluster_gen_worker(const sl_cluster *cl, uint64_t rid)
{
    gen *g = map_find((sl_cluster *)cl, rid);
    return g ? g->worker : -1;
}

sl_status sl_cluster_send_kv_ready(sl_cluster *cl, uint64_t rid, Sluice__KvReady *k, sl_err *e)
{
    gen *g = map_find(cl, rid);
    if (!g)
        return sl_err_set(e, SL_ERR_CLOSED, "generation %llu is not running",
                          (unsigned long long)rid);
    worker *w = cl->w[g->worker];
    k->rid = rid;
    Sluice__Envelope env = SLUICE__ENVELOPE__INIT;
    env.msg_case = SLUICE__ENVELOPE__MSG_KV_READY;
    env.kv_ready = k;
    int rv = w->open ? sl_wire_send(w->sock, &env, NNG_FLAG_NONBLOCK) : NNG_ECLOSED;
    if (rv)
        return sl_err_set(e, SL_ERR_CLOSED, "sending to worker %s: %s", w->url, nng_strerror(rv));
    return SL_OK;
}

sl_status sl_cluster_submit(sl_cluster *cl, int worker_idx, Sluice__GenerateRequest *g,
                            sl_cluster_chunk_cb cb, void *ud, uint64_t *rid, sl_err *e)
{
    if (worker_idx < 0 || worker_idx >= cl->nw || !sl_cluster_alive(cl, worker_idx))
        return sl_err_set(e, SL_ERR_CLOSED, "worker is not available");
    worker *w = cl->w[worker_idx];
    gen *gn = malloc(sizeof *gn);
    if (!gn) return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    if (cl->ngens >= cl->nbuckets && map_grow(cl)) {
        free(gn);
        return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    }
    g->rid = ++cl->next_rid;
    int rv = send_generate(w, g);
    if (rv == NNG_EAGAIN) {
        free(gn);
        return sl_err_set(e, SL_ERR_LIMIT,
                          "worker %s has %d requests waiting to be sent; try again later",
                          w->url, SL_CLUSTER_MAX_QUEUED);
    }
    if (rv) {
        free(gn);
        return sl_err_set(e, SL_ERR_CLOSED, "sending to worker %s: %s", w->url, nng_strerror(rv));
    }
    gn->rid = g->rid;
    gn->worker = worker_idx;
    gn->cb = cb;
    gn->ud = ud;
    size_t k = bucket_of(cl, gn->rid);
    gn->next = cl->buckets[k];
    cl->buckets[k] = gn;
    cl->ngens++;
    w->inflight++;
    *rid = gn->rid;
    return SL_OK;
}

void sl_cluster_abort(sl_cluster *cl, uint64_t rid)
{
    gen *g = map_take(cl, rid);
    if (!g) return;
    send_abort(cl->w[g->worker], rid);
    free(g);
}

static void on_handle_closed(uv_handle_t *h) {}

void sl_cluster_close(sl_cluster *cl)
{
    if (cl->closed) return;
    cl->closed = 1;
    for (int i = 0; i < cl->nw; i++) {
        worker *w = cl->w[i];
        /* nng_close waits for running callbacks: after it no thread touches w. */
        nng_close(w->sock);
        nng_aio_free(w->aio);
        w->open = 0;
    }
    for (size_t b = 0; b < cl->nbuckets; b++)
        for (gen *g = cl->buckets[b], *nx; g; g = nx) {
            nx = g->next;
            free(g);
        }
    memset(cl->buckets, 0, cl->nbuckets * sizeof *cl->buckets);
    cl->ngens = 0;
    while (cl->flushes) flush_fail(cl, cl->flushes, "the router is shutting down"); /* each unlinks itself */
    for (int i = 0; i < cl->ndns; i++)
        if (cl->dns[i]->busy) uv_cancel((uv_req_t *)&cl->dns[i]->req);
    uv_close((uv_handle_t *)&cl->async, on_handle_closed);
    uv_close((uv_handle_t *)&cl->timer, on_handle_closed);
}

void sl_cluster_free(sl_cluster *cl)
{
    if (!cl) return;
    SL_ASSERT(cl->closed);
    uv_mutex_lock(&cl->mu);
    for (event *ev = cl->q_head, *nx; ev; ev = nx) {
        nx = ev->next;
        if (ev->msg) nng_msg_free(ev->msg);
        free(ev);
    }
    uv_mutex_unlock(&cl->mu);
    uv_mutex_destroy(&cl->mu);
    for (int i = 0; i < cl->nw; i++) {
        outq_clear(cl->w[i]);
        free(cl->w[i]->outq);
        free(cl->w[i]->abq);
        free(cl->w[i]);
    }
    for (int i = 0; i < cl->ndns; i++) free(cl->dns[i]);
    free(cl->w);
    free(cl->buckets);
    free(cl);
}

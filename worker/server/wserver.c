#include "wserver.h"

#include <math.h>
#include <nng/nng.h>
#include <nng/protocol/pair1/pair.h>
#include <nng/supplemental/util/platform.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "link_auth.h"
#include "sl_log.h"
#include "sl_rng.h"
#include "sluice.pb-c.h"
#include "wire.h"

/* What the link thread hands the engine thread, in arrival order. */
typedef struct inbox_item {
    struct inbox_item *next;
    Sluice__Envelope *env; /* a generate, KV-ready or flush; NULL: the router's pipe went away */
} inbox_item;

/* Two threads share a server. The link thread (link_main) receives every
 * message as it arrives: it answers pings at once from the last published
 * progress, runs the handshake, and queues generates, flushes and aborts for the
 * engine thread (sl_wserver_run's caller), which applies them between steps
 * and publishes its progress after each. Pipe events (nng threads) mark the
 * router's pipe going away. Fields under mu are marked; the rest belong to
 * the engine thread, except what is set before the link thread starts. */
typedef struct server {
    nng_socket sock;
    sl_engine *g;
    const sl_model_config *mc;
    const sl_sched_config *sc;
    const char *model_name;
    uint64_t worker_id;
    int64_t last_load_ms;
    atomic_int peer_gone; /* a chunk send timed out; cleared by the next incoming message */
    const sl_link_secret *secret; /* NULL or len 0: every pipe is the router's */
    int handshake_ms;
    pthread_t link_thread;
    atomic_int link_stop;

    pthread_mutex_t mu;
    pthread_cond_t cv;          /* signalled when the inbox or the aborts grow */
    inbox_item *in_head, *in_tail; /* mu */
    uint64_t *aborts;           /* mu: rids to abort at the next step boundary */
    size_t n_aborts, cap_aborts;
    uint32_t router_pipe;       /* mu: the authenticated pipe (0: none) */
    uint32_t pending_pipe;      /* mu: the pipe being challenged (0: none) */
    uint8_t nonce[SL_LINK_NONCE]; /* mu: its challenge */
    int64_t pending_since_ms;   /* mu */
    sl_sched_stats stats;       /* mu: published after every step */
    uint64_t steps;             /* mu */
    int64_t step_start_ms;      /* mu: 0 while no step runs */
    sl_pd *pd;                  /* disaggregation role, or NULL */
    sl_gram_vocab *vocab;       /* constrained decoding: the model's tokens, or NULL */
    sl_gram_cache *grammars;    /* compiled grammars (made on first use) */
} server;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A PAIR1 send waits while no router is connected or its queue is full.
 * Lossy messages (load reports, pongs) never wait: they go out with
 * NNG_FLAG_NONBLOCK or not at all. Chunks wait up to the send timeout; after
 * one times out the router counts as gone and chunks stop waiting until the
 * next message arrives from it. */
static void log_send(int rv, int lossy)
{
    if (rv == NNG_ENOMEM)
        SL_LOGE("wserver", "out of memory sending a message");
    else if (rv && !lossy)
        SL_LOGW("wserver", "dropped an outgoing message: %s", nng_strerror(rv));
}

enum { SENDBUF = 8192 };

/* Drops what waits in the socket's send queue: PAIR1 keeps it across pipes
 * and would hand it to whoever connects next (resizing the queue frees
 * what does not fit). */
static void purge_sendq(server *sv)
{
    nng_socket_set_int(sv->sock, NNG_OPT_SENDBUF, 0);
    nng_socket_set_int(sv->sock, NNG_OPT_SENDBUF, SENDBUF);
}

static void send_chunk(server *sv, Sluice__TokenChunk *ch)
{
    int rv = sl_wire_send_chunk(sv->sock, ch, NNG_FLAG_NONBLOCK);
    if (rv == NNG_EAGAIN && !sv->peer_gone) { /* packed again: only when the queue is full */
        rv = sl_wire_send_chunk(sv->sock, ch, 0);
        if (rv == NNG_ETIMEDOUT) sv->peer_gone = 1;
    }
    log_send(rv, 0);
}

static void send_error(server *sv, uint64_t rid, const char *msg)
{
    SL_LOGW("wserver", "request %llu rejected: %s", (unsigned long long)rid, msg);
    Sluice__TokenChunk ch = SLUICE__TOKEN_CHUNK__INIT;
    ch.rid = rid;
    ch.finish = SLUICE__FINISH_REASON__FINISH_ERROR;
    ch.error = (char *)msg;
    send_chunk(sv, &ch);
}

/* One step of the link handshake, wrapped in its envelope. */
static void send_auth(server *sv, Sluice__LinkAuth *la)
{
    Sluice__Envelope env = SLUICE__ENVELOPE__INIT;
    env.msg_case = SLUICE__ENVELOPE__MSG_AUTH;
    env.auth = la;
    log_send(sl_wire_send(sv->sock, &env, NNG_FLAG_NONBLOCK), 0);
}

/* Sends a load report from the progress last published (any thread). */
static void send_load_published(server *sv)
{
    sl_sched_stats st;
    pthread_mutex_lock(&sv->mu);
    st = sv->stats;
    uint64_t steps = sv->steps;
    int64_t busy = sv->step_start_ms ? now_ms() - sv->step_start_ms : 0;
    if (busy < 1 && sv->step_start_ms) busy = 1; /* running, even if just begun */
    pthread_mutex_unlock(&sv->mu);
    Sluice__LoadReport lr = SLUICE__LOAD_REPORT__INIT;
    lr.running = st.running;
    lr.queued = st.queued;
    lr.free_kv_pages = st.free_pages + st.evictable_pages;
    lr.total_kv_pages = st.total_pages;
    lr.free_mamba_slots = st.free_slots + st.evictable_states;
    lr.total_mamba_slots = st.total_slots;
    lr.cache_hit_rate = st.prompt_tokens ? (float)st.cached_tokens / (float)st.prompt_tokens : 0;
    lr.page_size = sv->sc->page_size;
    lr.checkpoint_tokens = st.checkpoint_tokens;
    lr.context_length = sv->sc->context_len;
    lr.model = (char *)sv->model_name;
    lr.worker_id = sv->worker_id;
    lr.vocab_size = sv->mc->vocab_size;
    lr.steps = steps;
    lr.busy_ms = busy;
    if (sv->pd) sl_pd_fill_load(sv->pd, &lr);
    log_send(sl_wire_send_load(sv->sock, &lr, NNG_FLAG_NONBLOCK), 1);
}

/* Engine thread: publishes the engine's state for the link thread. */
static void publish(server *sv, int stepped)
{
    sl_sched_stats st;
    sl_engine_stats(sv->g, &st);
    pthread_mutex_lock(&sv->mu);
    sv->stats = st;
    sv->steps += (uint64_t)stepped;
    sv->step_start_ms = 0;
    pthread_mutex_unlock(&sv->mu);
}

static int link_up(server *sv)
{
    pthread_mutex_lock(&sv->mu);
    int up = sv->router_pipe != 0;
    pthread_mutex_unlock(&sv->mu);
    return up;
}

/* Engine thread: the periodic report (only to an authenticated router). */
static void send_load(server *sv)
{
    sv->last_load_ms = now_ms();
    /* state also changes between steps (PD transfers, releases): report it fresh */
    publish(sv, 0);
    if (link_up(sv)) send_load_published(sv);
}

/* ---- generate ------------------------------------------------------------------- */

static int ids_ok(const int32_t *ids, size_t n, int vocab)
{
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= vocab) return 0;
    return 1;
}

/* Fills s from the message (or the model's defaults); returns an error text. */
static const char *sampling_from(const Sluice__SamplingParams *p, const sl_gen_defaults *d,
                                 sl_sampling *s)
{
    memset(s, 0, sizeof *s);
    s->temperature = d->temperature;
    s->top_p = d->top_p > 0 ? d->top_p : 1.0f;
    s->top_k = d->top_k;
    s->min_p = d->min_p;
    s->repetition_penalty = d->repetition_penalty > 0 ? d->repetition_penalty : 1.0f;
    if (!p) return NULL;
    if (!isfinite(p->temperature) || p->temperature < 0 || p->temperature > 100)
        return "sampling.temperature must be in [0, 100]";
    if (!isfinite(p->top_p) || p->top_p < 0 || p->top_p > 1)
        return "sampling.top_p must be in (0, 1]";
    if (p->top_k < -1) return "sampling.top_k must be -1 (off), 0 (default) or positive";
    if (!isfinite(p->min_p) || p->min_p < 0 || p->min_p > 1)
        return "sampling.min_p must be in [0, 1]";
    if (!isfinite(p->repetition_penalty) || p->repetition_penalty < 0 ||
        p->repetition_penalty > 100)
        return "sampling.repetition_penalty must be in (0, 100]";
    if (!isfinite(p->frequency_penalty) || fabsf(p->frequency_penalty) > 2 ||
        !isfinite(p->presence_penalty) || fabsf(p->presence_penalty) > 2)
        return "sampling.frequency_penalty and presence_penalty must be in [-2, 2]";
    if (p->top_logprobs < 0 || p->top_logprobs > SL_SAMPLER_MAX_TOP)
        return "sampling.top_logprobs must be in [0, 20]";
    s->temperature = p->temperature;
    if (p->top_p > 0) s->top_p = p->top_p;
    if (p->top_k) s->top_k = p->top_k < 0 ? 0 : p->top_k;
    s->min_p = p->min_p;
    if (p->repetition_penalty > 0) s->repetition_penalty = p->repetition_penalty;
    s->frequency_penalty = p->frequency_penalty;
    s->presence_penalty = p->presence_penalty;
    s->has_seed = p->has_seed;
    s->seed = p->seed;
    s->logprobs = p->logprobs;
    s->top_logprobs = p->top_logprobs;
    return NULL;
}

/* A matcher of grammar over the model's vocabulary; each distinct grammar
 * is compiled once (the cache) and shares its masks between requests. */
static sl_status constraint_matcher(server *sv, const char *grammar, sl_gram_matcher **m, sl_err *e)
{
    if (!sv->vocab)
        return sl_err_set(e, SL_ERR_INVALID, "constrained decoding needs the model's tokenizer.json "
                                             "(this worker has none in its model directory)");
    if (!sv->grammars && sl_gram_cache_new(SL_WSERVER_GRAMMARS, &sv->grammars, e)) return e->code;
    sl_gram *gr;
    if (sl_gram_cache_compile(sv->grammars, grammar, strlen(grammar), &gr, e))
        return sl_err_wrap(e, "constraint.grammar: ");
    sl_status st = sl_gram_matcher_new(gr, sv->vocab, m, e);
    sl_gram_free(gr);
    return st;
}

static void on_generate(server *sv, const Sluice__GenerateRequest *g)
{
    char msg[256];
    int vocab = sv->mc->vocab_size, ctx = sv->sc->context_len;
    size_t n_in = g->n_input_ids, n_prev = g->n_output_ids;
    if (n_in == 0) return send_error(sv, g->rid, "input_ids is empty");
    if (n_in + n_prev >= (size_t)ctx) {
        snprintf(msg, sizeof msg, "%zu input tokens do not fit the context length %d",
                 n_in + n_prev, ctx);
        return send_error(sv, g->rid, msg);
    }
    if (!ids_ok(g->input_ids, n_in, vocab) || !ids_ok(g->output_ids, n_prev, vocab)) {
        snprintf(msg, sizeof msg, "a token id is outside the vocabulary [0, %d)", vocab);
        return send_error(sv, g->rid, msg);
    }
    if (g->n_stop_token_ids > SL_WIRE_MAX_STOP_IDS ||
        !ids_ok(g->stop_token_ids, g->n_stop_token_ids, vocab)) {
        snprintf(msg, sizeof msg, "stop_token_ids: at most %d ids inside the vocabulary",
                 SL_WIRE_MAX_STOP_IDS);
        return send_error(sv, g->rid, msg);
    }
    if (g->max_new_tokens < 0 || g->min_new_tokens < 0 || g->min_new_tokens > g->max_new_tokens)
        return send_error(sv, g->rid, "need 0 <= min_new_tokens <= max_new_tokens");
    if ((int64_t)n_in + (int64_t)n_prev + g->max_new_tokens > ctx) {
        snprintf(msg, sizeof msg,
                 "requested %lld tokens (%zu input + %d new) exceed the context length %d",
                 (long long)n_in + (long long)n_prev + g->max_new_tokens, n_in + n_prev,
                 g->max_new_tokens, ctx);
        return send_error(sv, g->rid, msg);
    }
    sl_sched_req r = {.rid = g->rid,
                      .prompt = g->input_ids,
                      .n_prompt = (int)n_in,
                      .output = g->output_ids,
                      .n_output = (int)n_prev,
                      /* the scheduler's limits count the migrated output too */
                      .max_new = (int)n_prev + g->max_new_tokens,
                      .min_new = (int)n_prev + g->min_new_tokens,
                      .stop_ids = g->stop_token_ids,
                      .n_stop = (int)g->n_stop_token_ids,
                      .ignore_eos = g->sampling && g->sampling->ignore_eos,
                      .priority = g->priority};
    const char *bad = sampling_from(g->sampling, &sv->mc->gen, &r.sampling);
    if (bad) return send_error(sv, g->rid, bad);
    if (g->pd && g->pd->role && !sv->pd)
        return send_error(sv, g->rid, "this worker runs without --disaggregation-mode");
    if (sv->pd && (bad = sl_pd_on_generate(sv->pd, g, &r))) return send_error(sv, g->rid, bad);
    sl_err e = {0};
    if (g->constraint && g->constraint->grammar && *g->constraint->grammar) {
        const Sluice__Constraint *c = g->constraint;
        if (!ids_ok(c->start_after, c->n_start_after, vocab))
            return send_error(sv, g->rid, "constraint.start_after: a token id is outside the vocabulary");
        if (constraint_matcher(sv, c->grammar, &r.grammar, &e)) return send_error(sv, g->rid, e.msg);
        r.grammar_start = c->start_after;
        r.n_grammar_start = (int)c->n_start_after;
    }
    if (sl_engine_submit(sv->g, &r, &e)) { /* the engine frees r.grammar */
        if (sv->pd) /* forget its room */
            sl_pd_on_event(
                sv->pd, &(sl_sched_event){.rid = g->rid, .token = -1, .finish = SL_FINISH_ERROR});
        return send_error(sv, g->rid, e.msg);
    }
}

/* The router's /flush_cache: every cache entry no request holds goes, but
 * only while no request is queued or running here (SGLang refuses the same
 * way); the answer carries the same seq. Returns 0 when a step still in
 * flight (the one after a request's last token) must end first: the caller
 * asks again after it. */
static int on_flush_cache(server *sv, uint64_t seq)
{
    Sluice__FlushCacheDone d = SLUICE__FLUSH_CACHE_DONE__INIT;
    char why[160];
    d.seq = seq;
    if (sl_engine_idle(sv->g)) {
        d.ok = 1;
        d.freed_pages = sl_engine_flush_cache(sv->g);
        SL_LOGI("wserver", "cache flushed: %d pages freed", d.freed_pages);
    } else {
        sl_sched_stats st;
        sl_engine_stats(sv->g, &st);
        if (!st.running && !st.queued) return 0;
        snprintf(why, sizeof why, "cache not flushed: requests are running or waiting (%d running, %d queued)",
                 st.running, st.queued);
        d.error = why;
        SL_LOGW("wserver", "%s", why);
    }
    log_send(sl_wire_send_flush_done(sv->sock, &d, NNG_FLAG_NONBLOCK), 0);
    return 1;
}

/* ---- the link thread ------------------------------------------------------------ */

static void inbox_push(server *sv, Sluice__Envelope *env)
{
    inbox_item *it = malloc(sizeof *it);
    if (!it) {
        SL_LOGE("wserver", "out of memory queueing a message");
        if (env) sluice__envelope__free_unpacked(env, NULL);
        return;
    }
    it->next = NULL;
    it->env = env;
    pthread_mutex_lock(&sv->mu);
    if (sv->in_tail)
        sv->in_tail->next = it;
    else
        sv->in_head = it;
    sv->in_tail = it;
    pthread_cond_signal(&sv->cv);
    pthread_mutex_unlock(&sv->mu);
}

/* An abort drops the request while it still waits in the inbox; otherwise
 * the engine aborts it at the next step boundary. */
static void abort_push(server *sv, uint64_t rid)
{
    pthread_mutex_lock(&sv->mu);
    for (inbox_item **pp = &sv->in_head, *prev = NULL; *pp; prev = *pp, pp = &(*pp)->next) {
        inbox_item *it = *pp;
        if (it->env && it->env->msg_case == SLUICE__ENVELOPE__MSG_GENERATE && it->env->generate->rid == rid) {
            *pp = it->next;
            if (sv->in_tail == it) sv->in_tail = prev;
            pthread_mutex_unlock(&sv->mu);
            /* the same end the scheduler gives an aborted request */
            Sluice__TokenChunk ch = SLUICE__TOKEN_CHUNK__INIT;
            Sluice__Usage usage = SLUICE__USAGE__INIT;
            usage.prompt_tokens = (int32_t)it->env->generate->n_input_ids;
            ch.rid = rid;
            ch.finish = SLUICE__FINISH_REASON__FINISH_ABORT;
            ch.usage = &usage;
            send_chunk(sv, &ch);
            sluice__envelope__free_unpacked(it->env, NULL);
            free(it);
            return;
        }
    }
    if (sv->n_aborts == sv->cap_aborts) {
        size_t cap = sv->cap_aborts ? sv->cap_aborts * 2 : 256;
        uint64_t *na = realloc(sv->aborts, cap * sizeof *na);
        if (!na) {
            pthread_mutex_unlock(&sv->mu);
            SL_LOGE("wserver", "out of memory queueing an abort");
            return;
        }
        sv->aborts = na;
        sv->cap_aborts = cap;
    }
    sv->aborts[sv->n_aborts++] = rid;
    pthread_cond_signal(&sv->cv);
    pthread_mutex_unlock(&sv->mu);
}

static int authenticating(const server *sv) { return sv->secret && sv->secret->len; }

/* nng thread: a pipe came or went. Without a secret the newest pipe is the
 * router's; with one, a new pipe is challenged (link_main finishes it). */
static void on_pipe(nng_pipe p, nng_pipe_ev ev, void *arg)
{
    server *sv = arg;
    uint32_t id = (uint32_t)nng_pipe_id(p);
    if (ev == NNG_PIPE_EV_ADD_POST) {
        if (!authenticating(sv)) {
            pthread_mutex_lock(&sv->mu);
            sv->router_pipe = id;
            pthread_mutex_unlock(&sv->mu);
            return;
        }
        uint8_t nonce[SL_LINK_NONCE];
        if (sl_link_random(nonce, sizeof nonce)) {
            SL_LOGE("wserver", "no random bytes for the link challenge; closing the pipe");
            nng_pipe_close(p);
            return;
        }
        pthread_mutex_lock(&sv->mu);
        memcpy(sv->nonce, nonce, sizeof nonce);
        sv->pending_pipe = id;
        sv->pending_since_ms = now_ms();
        pthread_mutex_unlock(&sv->mu);
        Sluice__LinkAuth la = SLUICE__LINK_AUTH__INIT;
        la.step = SLUICE__LINK_STEP__LINK_CHALLENGE;
        la.nonce.data = nonce;
        la.nonce.len = sizeof nonce;
        send_auth(sv, &la);
    } else if (ev == NNG_PIPE_EV_REM_POST) {
        pthread_mutex_lock(&sv->mu);
        int was_router = sv->router_pipe == id;
        if (was_router) sv->router_pipe = 0;
        if (sv->pending_pipe == id) sv->pending_pipe = 0;
        pthread_mutex_unlock(&sv->mu);
        if (was_router) {
            purge_sendq(sv);
            inbox_push(sv, NULL); /* abort what that router asked for */
        }
    }
}

/* Link thread: checks a RESPONSE on a challenged pipe; accepts or closes it. */
static void on_auth(server *sv, nng_pipe p, const Sluice__LinkAuth *la)
{
    uint32_t id = (uint32_t)nng_pipe_id(p);
    uint8_t nw[SL_LINK_NONCE];
    pthread_mutex_lock(&sv->mu);
    int pending = sv->pending_pipe == id;
    memcpy(nw, sv->nonce, sizeof nw);
    pthread_mutex_unlock(&sv->mu);
    if (!pending || la->step != SLUICE__LINK_STEP__LINK_RESPONSE ||
        la->nonce.len != SL_LINK_NONCE ||
        !sl_link_mac_ok(sv->secret, SL_LINK_ROLE_ROUTER, nw, la->nonce.data, la->mac.data,
                        la->mac.len)) {
        SL_LOGW("wserver", "refused a peer: link authentication failed (wrong secret?)");
        nng_pipe_close(p);
        return;
    }
    uint8_t mac[SL_LINK_MAC];
    sl_link_mac(sv->secret, SL_LINK_ROLE_WORKER, nw, la->nonce.data, mac);
    Sluice__LinkAuth ok = SLUICE__LINK_AUTH__INIT;
    ok.step = SLUICE__LINK_STEP__LINK_ACCEPT;
    ok.mac.data = mac;
    ok.mac.len = sizeof mac;
    pthread_mutex_lock(&sv->mu);
    sv->pending_pipe = 0;
    sv->router_pipe = id;
    pthread_mutex_unlock(&sv->mu);
    send_auth(sv, &ok);
    SL_LOGI("wserver", "router authenticated");
}

/* Link thread: handles and frees m. */
static void on_message(server *sv, nng_msg *m)
{
    size_t n = nng_msg_len(m);
    nng_pipe p = nng_msg_get_pipe(m);
    Sluice__Envelope *env = sl_wire_unpack(m);
    if (!env) {
        SL_LOGW("wserver", "dropped a malformed message of %zu bytes", n);
        return;
    }
    if (authenticating(sv)) {
        pthread_mutex_lock(&sv->mu);
        int ok = sv->router_pipe && sv->router_pipe == (uint32_t)nng_pipe_id(p);
        pthread_mutex_unlock(&sv->mu);
        if (!ok) {
            if (env->msg_case == SLUICE__ENVELOPE__MSG_AUTH) {
                on_auth(sv, p, env->auth);
            } else {
                SL_LOGW("wserver", "refused a peer: message of kind %d before authenticating",
                        (int)env->msg_case);
                nng_pipe_close(p);
            }
            sluice__envelope__free_unpacked(env, NULL);
            return;
        }
    } else {
        pthread_mutex_lock(&sv->mu);
        if (!sv->router_pipe) sv->router_pipe = (uint32_t)nng_pipe_id(p); /* before its event */
        pthread_mutex_unlock(&sv->mu);
    }
    atomic_store(&sv->peer_gone, 0);
    switch (env->msg_case) {
    case SLUICE__ENVELOPE__MSG_GENERATE:
        inbox_push(sv, env); /* the engine thread frees it */
        return;
    case SLUICE__ENVELOPE__MSG_ABORT: abort_push(sv, env->abort->rid); break;
    case SLUICE__ENVELOPE__MSG_KV_READY:
        if (sv->pd) {
            inbox_push(sv, env); /* the engine thread hands it to the PD side and frees it */
            return;
        }
        break;
    case SLUICE__ENVELOPE__MSG_FLUSH_CACHE:
        inbox_push(sv, env); /* after the generates before it: the engine thread answers */
        return;
    case SLUICE__ENVELOPE__MSG_PING:
        log_send(sl_wire_send_ping(sv->sock, SLUICE__ENVELOPE__MSG_PONG, env->ping->seq,
                                   NNG_FLAG_NONBLOCK),
                 1);
        send_load_published(sv);
        break;
    default:
        SL_LOGW("wserver", "dropped a message of unexpected kind %d", (int)env->msg_case);
        break;
    }
    sluice__envelope__free_unpacked(env, NULL);
}

/* A challenged pipe that stays silent is closed, so an idle peer cannot
 * hold a worker's only PAIR1 slot. */
static void check_handshake(server *sv)
{
    pthread_mutex_lock(&sv->mu);
    uint32_t id = sv->pending_pipe;
    int late = id && now_ms() - sv->pending_since_ms > sv->handshake_ms;
    if (late) sv->pending_pipe = 0;
    pthread_mutex_unlock(&sv->mu);
    if (late) {
        SL_LOGW("wserver", "refused a peer: no link authentication within %d ms", sv->handshake_ms);
        nng_pipe_close((nng_pipe){.id = id});
    }
}

static void *link_main(void *arg)
{
    server *sv = arg;
    while (!atomic_load(&sv->link_stop)) {
        nng_msg *msg;
        int rv = nng_recvmsg(sv->sock, &msg, 0); /* RECVTIMEO: 100 ms */
        if (rv == 0)
            on_message(sv, msg);
        else if (rv != NNG_ETIMEDOUT && rv != NNG_EAGAIN)
            break; /* closed */
        if (authenticating(sv)) check_handshake(sv);
    }
    return NULL;
}

/* ---- the engine thread's side ------------------------------------------------------ */

/* The router's pipe went away: nobody will read what its requests produce. */
static void router_gone(server *sv)
{
    sl_sched_stats st;
    sl_engine_stats(sv->g, &st);
    int n = st.running + st.queued;
    sl_engine_fail_all(sv->g);
    sl_sched_event ev;
    while (sl_engine_pop_event(sv->g, &ev)) {
    }
    if (!link_up(sv)) purge_sendq(sv); /* a chunk sent as the pipe went */
    if (n)
        SL_LOGW("wserver", "router disconnected: aborted %d requests", n);
    else
        SL_LOGI("wserver", "router disconnected: aborted %d requests", n);
}

/* Takes what the link thread queued (waiting up to wait_ms for something
 * when there is nothing) and applies it: generates and disconnects in
 * order, then the aborts; publishes the new state when anything came. */
static void take_inbox(server *sv, int wait_ms)
{
    pthread_mutex_lock(&sv->mu);
    if (wait_ms > 0 && !sv->in_head && !sv->n_aborts) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += (long)wait_ms * 1000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&sv->cv, &sv->mu, &ts);
    }
    inbox_item *it = sv->in_head;
    sv->in_head = sv->in_tail = NULL;
    size_t na = sv->n_aborts;
    uint64_t *aborts = NULL;
    if (na && (aborts = malloc(na * sizeof *aborts))) {
        memcpy(aborts, sv->aborts, na * sizeof *aborts);
        sv->n_aborts = 0;
    }
    pthread_mutex_unlock(&sv->mu);
    int any = it || aborts;
    while (it) {
        inbox_item *nx = it->next;
        if (it->env && it->env->msg_case == SLUICE__ENVELOPE__MSG_FLUSH_CACHE &&
            !on_flush_cache(sv, it->env->flush_cache->seq)) {
            /* after the step in flight: the flush and what came after it go
             * back to the front of the inbox, in order */
            inbox_item *last = it;
            while (last->next) last = last->next;
            pthread_mutex_lock(&sv->mu);
            last->next = sv->in_head;
            if (!sv->in_head) sv->in_tail = last;
            sv->in_head = it;
            pthread_mutex_unlock(&sv->mu);
            break;
        }
        if (it->env) {
            if (it->env->msg_case == SLUICE__ENVELOPE__MSG_KV_READY)
                sl_pd_on_kv_ready(sv->pd, it->env->kv_ready);
            else if (it->env->msg_case != SLUICE__ENVELOPE__MSG_FLUSH_CACHE)
                on_generate(sv, it->env->generate);
            sluice__envelope__free_unpacked(it->env, NULL);
        } else {
            router_gone(sv);
        }
        free(it);
        it = nx;
    }
    for (size_t i = 0; aborts && i < na; i++)
        if (!sl_engine_abort(sv->g, aborts[i]))
            SL_LOGD("wserver", "abort of unknown request %llu", (unsigned long long)aborts[i]);
    free(aborts);
    if (any) publish(sv, 0); /* pongs before the next step see the aborts */
}

/* ---- results -------------------------------------------------------------------- */

/* Sends one chunk per event: a token, or the finish (merged into the token
 * chunk when it follows it directly). error_text explains FINISH_ERROR. */
static void flush_events(server *sv, const char *error_text)
{
    sl_sched_event ev, next;
    if (!link_up(sv)) { /* no router to read them: never queue them for the next peer */
        while (sl_engine_pop_event(sv->g, &ev)) {
        }
        return;
    }
    int have_next = sl_engine_pop_event(sv->g, &next);
    while (have_next) {
        ev = next;
        have_next = sl_engine_pop_event(sv->g, &next);
        if (sv->pd && sl_pd_on_event(sv->pd, &ev)) continue;
        sl_finish fin = ev.finish;
        int prompt = ev.prompt_tokens, comp = ev.completion_tokens, cached = ev.cached_tokens;
        if (!fin && have_next && next.rid == ev.rid && next.finish && next.token < 0) {
            fin = next.finish;
            prompt = next.prompt_tokens;
            comp = next.completion_tokens;
            cached = next.cached_tokens;
            have_next = sl_engine_pop_event(sv->g, &next);
        }
        Sluice__TokenChunk ch = SLUICE__TOKEN_CHUNK__INIT;
        Sluice__TopLogprob top = SLUICE__TOP_LOGPROB__INIT, *tops[1] = {&top};
        Sluice__Usage usage = SLUICE__USAGE__INIT;
        int32_t id = ev.token;
        float lp = ev.sample.logprob;
        ch.rid = ev.rid;
        if (ev.token >= 0) {
            ch.n_ids = 1;
            ch.ids = &id;
            if (ev.want_logprobs) {
                ch.n_logprobs = 1;
                ch.logprobs = &lp;
            }
            if (ev.has_sample && ev.sample.n_top > 0) {
                top.n_ids = top.n_logprobs = (size_t)ev.sample.n_top;
                top.ids = ev.sample.top_ids;
                top.logprobs = ev.sample.top_logprobs;
                ch.n_top = 1;
                ch.top = tops;
            }
        }
        ch.finish = (Sluice__FinishReason)fin;
        if (fin) {
            usage.prompt_tokens = prompt;
            usage.completion_tokens = comp;
            usage.cached_tokens = cached;
            ch.usage = &usage;
            if (fin == SL_FINISH_ERROR) ch.error = (char *)error_text;
        }
        send_chunk(sv, &ch);
    }
}

/* Listens on c->url; ipc:// sockets are created owner-only (0600). */
static int listen_on(server *sv, const char *url)
{
    nng_listener l;
    int rv = nng_listener_create(&l, sv->sock, url);
    if (rv) return rv;
    if (!strncmp(url, "ipc://", 6)) {
        rv = nng_listener_set_int(l, NNG_OPT_IPC_PERMISSIONS, 0600);
        if (rv) SL_LOGW("wserver", "cannot restrict %s to its owner: %s", url, nng_strerror(rv));
    }
    rv = nng_listener_start(l, 0);
    if (rv) nng_listener_close(l);
    return rv;
}

sl_status sl_wserver_run(sl_engine *g, sl_model *m, const sl_wserver_config *c,
                         volatile sig_atomic_t *stop, sl_err *e)
{
    server sv = {.g = g,
                 .mc = sl_model_cfg(m),
                 .sc = sl_engine_sched_config(g),
                 .model_name = c->model_name ? c->model_name : "",
                 .secret = c->secret,
                 .handshake_ms = c->handshake_ms > 0 ? c->handshake_ms : 5000,
                 .pd = c->pd,
                 .vocab = c->vocab};
    sv.worker_id =
        sl_rng_mix((uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)&sv);
    pthread_mutex_init(&sv.mu, NULL);
    pthread_cond_init(&sv.cv, NULL);
    publish(&sv, 0);
    int rv = nng_pair1_open(&sv.sock);
    if (rv) {
        pthread_cond_destroy(&sv.cv);
        pthread_mutex_destroy(&sv.mu);
        return sl_err_set(e, SL_ERR_IO, "nng socket: %s", nng_strerror(rv));
    }
    nng_setopt_size(sv.sock, NNG_OPT_RECVMAXSZ, SL_WSERVER_MAX_MSG);
    nng_setopt_int(sv.sock, NNG_OPT_SENDBUF, SENDBUF); /* token chunks in flight */
    nng_setopt_int(sv.sock, NNG_OPT_RECVBUF, 1024);
    nng_setopt_ms(sv.sock, NNG_OPT_SENDTIMEO, 2000);
    nng_setopt_ms(sv.sock, NNG_OPT_RECVTIMEO, 100);
    nng_pipe_notify(sv.sock, NNG_PIPE_EV_ADD_POST, on_pipe, &sv);
    nng_pipe_notify(sv.sock, NNG_PIPE_EV_REM_POST, on_pipe, &sv);
    rv = listen_on(&sv, c->url);
    if (rv) {
        nng_close(sv.sock);
        pthread_cond_destroy(&sv.cv);
        pthread_mutex_destroy(&sv.mu);
        return sl_err_set(e, SL_ERR_IO, "listen on %s: %s", c->url, nng_strerror(rv));
    }
    if (!authenticating(&sv) && !strncmp(c->url, "tcp://", 6))
        SL_LOGW("wserver", "no link secret: any peer that reaches %s can send requests and "
                           "read results (docs/operations.md, --link-secret-file)", c->url);
    SL_LOGI("wserver", "listening on %s%s", c->url,
            authenticating(&sv) ? " (link authenticated)" : "");
    if (sv.pd) sl_pd_attach(sv.pd, sv.sock);
    if (pthread_create(&sv.link_thread, NULL, link_main, &sv)) {
        nng_close(sv.sock);
        pthread_cond_destroy(&sv.cv);
        pthread_mutex_destroy(&sv.mu);
        return sl_err_set(e, SL_ERR_IO, "cannot start the link thread");
    }
    int interval = c->load_interval_ms > 0 ? c->load_interval_ms : 1000, was_idle = 1;
    sl_status st = SL_OK;
    while (!*stop) {
        /* idle: wait briefly for work; busy: only take what is there */
        int idle = sl_engine_idle(g);
        if (idle && !was_idle && sl_engine_check(g, e)) /* verify the accounting when idle */
            SL_LOGE("wserver", "cache accounting is broken: %s", e->msg);
        was_idle = idle;
        int pd_wait = sv.pd && sl_pd_poll(sv.pd); /* transfers in, timeouts */
        take_inbox(&sv, idle ? (pd_wait ? 1 : 50) : 0);
        if (!sl_engine_idle(g)) {
            pthread_mutex_lock(&sv.mu);
            sv.step_start_ms = now_ms();
            pthread_mutex_unlock(&sv.mu);
            st = sl_engine_step(g, NULL, e);
            publish(&sv, 1);
            if (st) break;
        }
        flush_events(&sv, "internal error");
        if (now_ms() - sv.last_load_ms >= interval) send_load(&sv);
        if (c->tick && (st = c->tick(c->tick_ctx, e))) break;
    }
    SL_LOGI("wserver", "stopping (%s)", st ? e->msg : "signal");
    atomic_store(&sv.link_stop, 1);
    pthread_join(sv.link_thread, NULL);
    if (st && c->close_on_failure) {
        /* the group is down: vanish, so the router migrates what ran here */
        SL_LOGE("wserver", "closing the router link: %s", e->msg);
        sl_engine_fail_all(g);
        nng_close(sv.sock);
    } else {
        /* nothing in flight is lost silently: every request gets its end */
        char why[600];
        snprintf(why, sizeof why, "worker stopped: %s", st ? e->msg : "shutting down");
        sl_engine_fail_all(g);
        flush_events(&sv, why);
        /* requests queued or still on their way get the same answer (until
         * 100 ms of quiet, at most a second: a router that keeps pinging must
         * not hold the shutdown) */
        for (inbox_item *it = sv.in_head, *nx; it; it = nx) {
            nx = it->next;
            if (it->env) {
                if (it->env->msg_case == SLUICE__ENVELOPE__MSG_GENERATE)
                    send_error(&sv, it->env->generate->rid, why);
                sluice__envelope__free_unpacked(it->env, NULL);
            }
            free(it);
        }
        sv.in_head = sv.in_tail = NULL;
        for (int64_t until = now_ms() + 1000; now_ms() < until;) {
            nng_msg *msg;
            if (nng_recvmsg(sv.sock, &msg, 0)) break;
            nng_pipe p = nng_msg_get_pipe(msg);
            Sluice__Envelope *env = sl_wire_unpack(msg);
            if (env && env->msg_case == SLUICE__ENVELOPE__MSG_GENERATE &&
                (!authenticating(&sv) || (uint32_t)nng_pipe_id(p) == sv.router_pipe))
                send_error(&sv, env->generate->rid, why);
            if (env) sluice__envelope__free_unpacked(env, NULL);
        }
        nng_msleep(200); /* nng_close drops what the pipe has not written yet */
        SL_LOGD("wserver", "closing the router link");
        nng_close(sv.sock);
    }
    for (inbox_item *it = sv.in_head, *nx; it; it = nx) {
        nx = it->next;
        if (it->env) sluice__envelope__free_unpacked(it->env, NULL);
        free(it);
    }
    free(sv.aborts);
    sl_gram_cache_free(sv.grammars);
    pthread_cond_destroy(&sv.cv);
    pthread_mutex_destroy(&sv.mu);
    return st;
}

#include "wserver.h"

#include <math.h>
#include <nng/nng.h>
#include <nng/protocol/pair1/pair.h>
#include <nng/supplemental/util/platform.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sl_log.h"
#include "sl_rng.h"
#include "sluice.pb-c.h"
#include "wire.h"

typedef struct server {
    nng_socket sock;
    sl_engine *g;
    const sl_model_config *mc;
    const sl_sched_config *sc;
    const char *model_name;
    uint64_t worker_id;
    int64_t last_load_ms;
    int peer_gone; /* a chunk send timed out; cleared by the next incoming message */
    sl_pd *pd;     /* disaggregation role, or NULL */
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

static void send_load(server *sv)
{
    sl_sched_stats st;
    sl_engine_stats(sv->g, &st);
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
    if (sv->pd) sl_pd_fill_load(sv->pd, &lr);
    log_send(sl_wire_send_load(sv->sock, &lr, NNG_FLAG_NONBLOCK), 1);
    sv->last_load_ms = now_ms();
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
    if (sl_engine_submit(sv->g, &r, &e)) {
        if (sv->pd) /* forget its room */
            sl_pd_on_event(
                sv->pd, &(sl_sched_event){.rid = g->rid, .token = -1, .finish = SL_FINISH_ERROR});
        return send_error(sv, g->rid, e.msg);
    }
}

/* Handles and frees m. */
static void on_message(server *sv, nng_msg *m)
{
    size_t n = nng_msg_len(m);
    Sluice__Envelope *env = sl_wire_unpack(m);
    if (!env) {
        SL_LOGW("wserver", "dropped a malformed message of %zu bytes", n);
        return;
    }
    switch (env->msg_case) {
    case SLUICE__ENVELOPE__MSG_GENERATE:
        on_generate(sv, env->generate);
        break;
    case SLUICE__ENVELOPE__MSG_ABORT:
        if (!sl_engine_abort(sv->g, env->abort->rid))
            SL_LOGD("wserver", "abort of unknown request %llu",
                    (unsigned long long)env->abort->rid);
        break;
    case SLUICE__ENVELOPE__MSG_KV_READY:
        if (sv->pd) sl_pd_on_kv_ready(sv->pd, env->kv_ready);
        break;
    case SLUICE__ENVELOPE__MSG_PING:
        log_send(sl_wire_send_ping(sv->sock, SLUICE__ENVELOPE__MSG_PONG, env->ping->seq,
                                   NNG_FLAG_NONBLOCK),
                 1);
        send_load(sv);
        break;
    default:
        SL_LOGW("wserver", "dropped a message of unexpected kind %d", (int)env->msg_case);
        break;
    }
    sluice__envelope__free_unpacked(env, NULL);
}

/* ---- results -------------------------------------------------------------------- */

/* Sends one chunk per event: a token, or the finish (merged into the token
 * chunk when it follows it directly). error_text explains FINISH_ERROR. */
static void flush_events(server *sv, const char *error_text)
{
    sl_sched_event ev, next;
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

sl_status sl_wserver_run(sl_engine *g, sl_model *m, const sl_wserver_config *c,
                         volatile sig_atomic_t *stop, sl_err *e)
{
    server sv = {.g = g,
                 .mc = sl_model_cfg(m),
                 .sc = sl_engine_sched_config(g),
                 .model_name = c->model_name ? c->model_name : "",
                 .pd = c->pd};
    sv.worker_id =
        sl_rng_mix((uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)&sv);
    int rv = nng_pair1_open(&sv.sock);
    if (rv) return sl_err_set(e, SL_ERR_IO, "nng socket: %s", nng_strerror(rv));
    nng_setopt_size(sv.sock, NNG_OPT_RECVMAXSZ, SL_WSERVER_MAX_MSG);
    nng_setopt_int(sv.sock, NNG_OPT_SENDBUF, 8192); /* token chunks in flight */
    nng_setopt_ms(sv.sock, NNG_OPT_SENDTIMEO, 2000);
    rv = nng_listen(sv.sock, c->url, NULL, 0);
    if (rv) {
        nng_close(sv.sock);
        return sl_err_set(e, SL_ERR_IO, "listen on %s: %s", c->url, nng_strerror(rv));
    }
    SL_LOGI("wserver", "listening on %s", c->url);
    if (sv.pd) sl_pd_attach(sv.pd, sv.sock);
    int interval = c->load_interval_ms > 0 ? c->load_interval_ms : 1000, was_idle = 1;
    sl_status st = SL_OK;
    while (!*stop) {
        /* idle: wait briefly for a message; busy: only take what is there */
        int idle = sl_engine_idle(g);
        if (idle && !was_idle && sl_engine_check(g, e)) /* verify the accounting when idle */
            SL_LOGE("wserver", "cache accounting is broken: %s", e->msg);
        was_idle = idle;
        int pd_wait = sv.pd && sl_pd_poll(sv.pd); /* transfers in, timeouts */
        nng_setopt_ms(sv.sock, NNG_OPT_RECVTIMEO, idle ? (pd_wait ? 1 : 50) : 0);
        for (int first = 1;; first = 0) {
            nng_msg *msg;
            rv = nng_recvmsg(sv.sock, &msg, first && idle ? 0 : NNG_FLAG_NONBLOCK);
            if (rv) break;
            sv.peer_gone = 0;
            on_message(&sv, msg);
        }
        if (rv && rv != NNG_EAGAIN && rv != NNG_ETIMEDOUT) {
            st = sl_err_set(e, SL_ERR_IO, "receive: %s", nng_strerror(rv));
            break;
        }
        if (!sl_engine_idle(g)) {
            st = sl_engine_step(g, NULL, e);
            if (st) break;
        }
        flush_events(&sv, "internal error");
        if (now_ms() - sv.last_load_ms >= interval) send_load(&sv);
        if (c->tick && (st = c->tick(c->tick_ctx, e))) break;
    }
    if (st && c->close_on_failure) {
        /* the group is down: vanish, so the router migrates what ran here */
        SL_LOGE("wserver", "closing the router link: %s", e->msg);
        sl_engine_fail_all(g);
        nng_close(sv.sock);
        return st;
    }
    /* nothing in flight is lost silently: every request gets its end */
    char why[600];
    snprintf(why, sizeof why, "worker stopped: %s", st ? e->msg : "shutting down");
    sl_engine_fail_all(g);
    flush_events(&sv, why);
    /* requests still on their way get the same answer (until 100 ms of quiet) */
    nng_setopt_ms(sv.sock, NNG_OPT_RECVTIMEO, 100);
    for (;;) {
        nng_msg *msg;
        if (nng_recvmsg(sv.sock, &msg, 0)) break;
        Sluice__Envelope *env = sl_wire_unpack(msg);
        if (env && env->msg_case == SLUICE__ENVELOPE__MSG_GENERATE)
            send_error(&sv, env->generate->rid, why);
        if (env) sluice__envelope__free_unpacked(env, NULL);
    }
    nng_msleep(200); /* nng_close drops what the pipe has not written yet */
    nng_close(sv.sock);
    return st;
}

/* sl_router: see router.h. This file owns the life of a job (api.h):
 *
 *   new ─▶ decode ─▶ encode (inline or pool) ─▶ dispatch ─▶ chunks ─▶ complete
 *                 └──────────────┴──────────────┴───────────┴─▶ fail / client abort
 *
 * Every path ends in job_complete() or job_fail(), which complete the HTTP
 * request exactly once and free the job. */
#include "router.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api.h"
#include "metrics.h"
#include "sl_log.h"
#include "sl_rng.h"

struct sl_router {
    uv_loop_t *loop;
    sl_router_config cfg;
    sl_http *http;
    sl_cluster *cluster;
    sl_route *route;
    sl_metrics metrics;
    uv_timer_t tick;
    sl_job *jobs; /* in flight */
    int njobs;
    uint64_t id_seq;
    int shutting_down;
    void (*done)(void *);
    void *done_ud;
};

sl_router_config sl_router_config_default(void)
{
    return (sl_router_config){.host = "127.0.0.1",
                              .port = 30000,
                              .served_model_name = "default",
                              .keepalive_ms = 10000,
                              .inline_encode_bytes = 4096,
                              .max_n = 64,
                              .migration_limit = 3,
                              .default_temperature = 1.0f,
                              .default_top_p = 1.0f,
                              .default_top_k = -1,
                              .http = sl_http_config_default(),
                              .route = sl_route_config_default(),
                              .cluster = sl_cluster_config_default()};
}

static double now_ms(void) { return (double)uv_hrtime() / 1e6; }

/* ------------------------------------------------------------- responses */

static void respond_json(sl_router *rt, sl_http_req *r, const char *route, int status, json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(o);
    sl_http_respond(r, status, "application/json", s ? s : "{}", s ? strlen(s) : 2, NULL);
    free(s);
    sl_metrics_request(&rt->metrics, route, status);
}

/* An error in the shape of dialect d's API, before any header went out. */
static void respond_error(sl_http_req *r, const sl_api_dialect *d, sl_api_status st,
                          const char *msg)
{
    json_t *o = d->error_body(st, msg);
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    sl_http_respond(r, sl_api_status_get(st)->http, "application/json", s ? s : "{}",
                    s ? strlen(s) : 2, NULL);
    free(s);
}

static void respond_err(sl_router *rt, sl_http_req *r, const char *route,
                        const sl_api_dialect *d, const sl_api_err *err)
{
    respond_error(r, d, err->st, err->msg);
    sl_metrics_request(&rt->metrics, route, err->status);
}

/* -------------------------------------------------------------- jobs */

static void seq_clear(sl_job *j, sl_seq *s)
{
    const sl_text_ops *t = j->rt->cfg.text;
    if (s->detok) t->detok_free(s->detok);
    if (s->parser) t->parser_free(s->parser);
    sl_buf_free(&s->text);
    sl_buf_free(&s->content);
    sl_buf_free(&s->reasoning);
    for (int i = 0; i < s->ntools; i++) {
        free(s->tools[i].id);
        free(s->tools[i].name);
        sl_buf_free(&s->tools[i].args);
    }
    free(s->tools);
    json_decref(s->logprobs);
    json_decref(s->logprobs_new);
    sl_tok_ids_free(&s->out_ids);
}

/* What a decoded job owns (sl_api_decode's jobs have no router and no seqs). */
static void job_release(sl_job *j)
{
    for (int i = 0; i < j->nseqs; i++) seq_clear(j, &j->seqs[i]);
    free(j->seqs);
    for (int i = 0; i < j->nprompts; i++) {
        free(j->texts ? j->texts[i] : NULL);
        if (j->ids) sl_tok_ids_free(&j->ids[i]);
    }
    free(j->texts);
    free(j->is_ids);
    free(j->ids);
    for (int i = 0; i < j->p.n_stops; i++) free(j->p.stops[i]);
    sl_buf_free(&j->chat_prompt);
    json_decref(j->body);
    free(j);
}

static void job_free(sl_job *j)
{
    sl_router *rt = j->rt;
    if (j->prev)
        j->prev->next = j->next;
    else if (rt->jobs == j)
        rt->jobs = j->next;
    if (j->next) j->next->prev = j->prev;
    rt->njobs--;
    job_release(j);
}

void sl_api_job_free(sl_job *j)
{
    if (j) job_release(j);
}

static void abort_running(sl_job *j)
{
    for (int i = 0; i < j->nseqs; i++) {
        sl_seq *s = &j->seqs[i];
        if (s->running) {
            sl_cluster_abort(j->rt->cluster, s->rid);
            s->running = 0;
            j->nrunning--;
        }
    }
}

static void job_end_metrics(sl_job *j, int status)
{
    sl_router *rt = j->rt;
    sl_metrics_request(&rt->metrics, j->route, status);
    sl_metrics_observe(&rt->metrics, SL_METRIC_E2E, (now_ms() - j->t_arrival_ms) / 1e3);
    int p, c, k;
    sl_job_usage(j, &p, &c, &k);
    rt->metrics.prompt_tokens += (uint64_t)p;
    rt->metrics.generation_tokens += (uint64_t)c;
    rt->metrics.cached_tokens += (uint64_t)k;
}

/* Ends a job with an error: a JSON error before any header went out, an
 * in-stream error event after. */
static void job_fail(sl_job *j, sl_api_status st, const char *msg)
{
    abort_running(j);
    if (j->aborted) {
        /* The client is gone: complete the orphaned request silently. */
        if (j->headers_sent)
            sl_http_stream_end(j->http);
        else
            sl_http_respond(j->http, 499, "text/plain", "", 0, NULL);
        job_free(j);
        return;
    }
    if (j->headers_sent) {
        j->dialect->stream_error(j, msg);
        sl_http_stream_end(j->http);
    } else {
        respond_error(j->http, j->dialect, st, msg);
    }
    job_end_metrics(j, sl_api_status_get(st)->http);
    job_free(j);
}

static void job_complete(sl_job *j)
{
    if (j->p.stream) {
        j->dialect->stream_end(j);
        sl_http_stream_end(j->http);
    } else {
        json_t *o = j->dialect->final(j);
        char *s = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
        json_decref(o);
        sl_http_respond(j->http, 200, "application/json", s ? s : "{}", s ? strlen(s) : 2, NULL);
        free(s);
    }
    job_end_metrics(j, 200);
    job_free(j);
}

int sl_job_prompts(sl_job *j, int n, sl_api_err *err)
{
    j->nprompts = n;
    j->texts = calloc((size_t)n, sizeof *j->texts);
    j->is_ids = calloc((size_t)n, sizeof *j->is_ids);
    j->ids = calloc((size_t)n, sizeof *j->ids);
    if (!j->texts || !j->is_ids || !j->ids)
        return sl_api_fail(err, SL_API_STATUS_SERVER, "out of memory");
    return 0;
}

void sl_job_usage(const sl_job *j, int *prompt, int *completion, int *cached)
{
    /* n choices of one prompt are n prefills; OpenAI counts the prompt once. */
    *prompt = *completion = *cached = 0;
    for (int i = 0; i < j->nprompts && j->ids; i++) *prompt += (int)j->ids[i].n;
    for (int i = 0; i < j->nseqs; i++) {
        *completion += j->seqs[i].completion_tokens;
        *cached += j->seqs[i].cached_tokens;
    }
}

void sl_job_sse_raw(sl_job *j, const char *text)
{
    if (j->aborted) return;
    sl_http_stream_write(j->http, text, strlen(text));
    j->t_last_write_ms = now_ms();
}

void sl_job_sse(sl_job *j, const char *event, json_t *data)
{
    char *s = json_dumps(data, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(data);
    if (!s) return;
    sl_buf b = {0};
    if (event) sl_buf_printf(&b, "event: %s\n", event);
    sl_buf_puts(&b, "data: ");
    sl_buf_puts(&b, s);
    sl_buf_puts(&b, "\n\n");
    free(s);
    sl_job_sse_raw(j, b.data);
    sl_buf_free(&b);
}

char *sl_job_token_text(sl_job *j, int32_t id)
{
    sl_buf b = {0};
    const sl_router_config *c = &j->rt->cfg;
    if (c->text->decode(c->text_impl, &id, 1, &b, NULL) != SL_OK) sl_buf_clear(&b);
    if (!b.data) sl_buf_puts(&b, "");
    return sl_buf_take(&b);
}

/* ------------------------------------------------------ output pipeline */

static void sink_content(void *ud, const char *t, size_t n)
{
    sl_seq *s = ud;
    if (!n) return;
    if (s->job->p.stream)
        s->job->dialect->content(s, t, n);
    else
        sl_buf_append(&s->content, t, n);
}

static void sink_reasoning(void *ud, const char *t, size_t n)
{
    sl_seq *s = ud;
    if (!n) return;
    if (!s->job->p.separate_reasoning) {
        /* separate_reasoning=false: reasoning stays inline in the content. */
        sink_content(ud, t, n);
        return;
    }
    if (s->job->p.stream)
        s->job->dialect->reasoning(s, t, n);
    else
        sl_buf_append(&s->reasoning, t, n);
}

static void sink_tool_start(void *ud, int index, const char *id, const char *name)
{
    sl_seq *s = ud;
    sl_seq_tool *nt = realloc(s->tools, (size_t)(s->ntools + 1) * sizeof *nt);
    if (!nt) return;
    s->tools = nt;
    nt[s->ntools++] = (sl_seq_tool){.id = strdup(id), .name = strdup(name)};
    if (s->job->p.stream) s->job->dialect->tool_start(s, index, id, name);
}

static void sink_tool_args(void *ud, int index, const char *t, size_t n)
{
    sl_seq *s = ud;
    if (index >= 0 && index < s->ntools) sl_buf_append(&s->tools[index].args, t, n);
    if (s->job->p.stream) s->job->dialect->tool_args(s, index, t, n);
}

/* Text past the stop matcher goes to the output parser (or is content). */
static void release(sl_seq *s, const char *t, size_t n)
{
    if (!n) return;
    const sl_router_config *c = &s->job->rt->cfg;
    if (!s->parser) {
        sink_content(s, t, n);
        return;
    }
    sl_text_sink sink = {s, sink_content, sink_reasoning, sink_tool_start, sink_tool_args};
    sl_err e = {0};
    /* Parsers fail only when memory runs out; the text is then lost, not the request. */
    if (c->text->parser_feed(s->parser, t, n, &sink, &e) != SL_OK)
        SL_LOGW("router", "output parser: %s", e.msg);
}

static const char *find(const char *hay, size_t n, const char *needle, size_t m)
{
    for (size_t i = 0; m && i + m <= n; i++)
        if (hay[i] == needle[0] && !memcmp(hay + i, needle, m)) return hay + i;
    return NULL;
}

/* Releases s->text up to what cannot be the start of a stop string; returns
 * 1 when a stop string ended the choice (text cut before it). */
static int scan_stops(sl_seq *s, int final)
{
    sl_job_params *p = &s->job->p;
    sl_buf *t = &s->text;
    size_t cut = t->len;
    int hit = -1;
    for (int i = 0; i < p->n_stops; i++) {
        const char *f = t->len ? find(t->data, t->len, p->stops[i], strlen(p->stops[i])) : NULL;
        if (f && (size_t)(f - t->data) < cut) {
            cut = (size_t)(f - t->data);
            hit = i;
        }
    }
    size_t keep = 0;
    if (hit < 0 && !final) {
        for (int i = 0; i < p->n_stops; i++) {
            size_t sl = strlen(p->stops[i]);
            for (size_t k = sl - 1; k > keep; k--)
                if (k <= t->len && !memcmp(t->data + t->len - k, p->stops[i], k)) {
                    keep = k;
                    break;
                }
        }
        cut = t->len - keep;
    }
    release(s, t->data, cut);
    if (hit >= 0) {
        s->stop_index = hit;
        sl_buf_clear(t);
        return 1;
    }
    memmove(t->data, t->data + cut, keep);
    t->len = keep;
    if (t->data) t->data[keep] = 0;
    return 0;
}

static void job_maybe_complete(sl_job *j)
{
    if (!j->nrunning && !j->failed) job_complete(j);
}

/* A choice ended (finish is "stop" or "length"). */
static void seq_end(sl_seq *s, const char *finish)
{
    sl_job *j = s->job;
    const sl_router_config *c = &j->rt->cfg;
    if (s->running) {
        s->running = 0;
        j->nrunning--;
    }
    if (s->parser) {
        sl_text_sink sink = {s, sink_content, sink_reasoning, sink_tool_start, sink_tool_args};
        sl_err e = {0};
        if (c->text->parser_finish(s->parser, &sink, &e) != SL_OK)
            SL_LOGW("router", "output parser: %s", e.msg);
    }
    s->finish = s->ntools && !strcmp(finish, "stop") ? "tool_calls" : finish;
    /* The worker now caches prompt + output: later turns of a conversation
     * should find it. */
    sl_tok_ids *in = &j->ids[s->prompt];
    sl_tok_ids all = {0};
    for (size_t i = 0; i < in->n; i++) sl_tok_ids_push(&all, in->v[i]);
    for (size_t i = 0; i < s->out_ids.n; i++) sl_tok_ids_push(&all, s->out_ids.v[i]);
    sl_route_record(j->rt->route, s->worker, all.v, (int)all.n);
    sl_tok_ids_free(&all);
    if (j->p.stream) j->dialect->seq_done(s);
}

static void add_logprobs(sl_seq *s, const Sluice__TokenChunk *ch)
{
    sl_job *j = s->job;
    for (size_t i = 0; i < ch->n_ids && i < ch->n_logprobs; i++) {
        char *tok = sl_job_token_text(j, ch->ids[i]);
        json_t *bytes = json_array();
        for (const unsigned char *q = (const unsigned char *)tok; *q; q++)
            json_array_append_new(bytes, json_integer(*q));
        json_t *top = json_array();
        if (i < ch->n_top && ch->top[i])
            for (size_t k = 0; k < ch->top[i]->n_ids && k < ch->top[i]->n_logprobs; k++) {
                char *tt = sl_job_token_text(j, ch->top[i]->ids[k]);
                json_t *tb = json_array();
                for (const unsigned char *q = (const unsigned char *)tt; *q; q++)
                    json_array_append_new(tb, json_integer(*q));
                json_array_append_new(top, json_pack("{s:s,s:f,s:o}", "token", tt, "logprob",
                                                     (double)ch->top[i]->logprobs[k], "bytes",
                                                     tb));
                free(tt);
            }
        json_t *e = json_pack("{s:s,s:f,s:o,s:o}", "token", tok, "logprob",
                              (double)ch->logprobs[i], "bytes", bytes, "top_logprobs", top);
        free(tok);
        json_array_append(s->logprobs, e);
        json_array_append_new(s->logprobs_new, e);
    }
}

static int seq_migrate(sl_seq *s);

static void on_chunk(void *ud, const Sluice__TokenChunk *ch, int lost)
{
    sl_seq *s = ud;
    sl_job *j = s->job;
    sl_router *rt = j->rt;
    const sl_text_ops *t = rt->cfg.text;
    double now = now_ms();
    if (ch->finish == SLUICE__FINISH_REASON__FINISH_ERROR ||
        ch->finish == SLUICE__FINISH_REASON__FINISH_ABORT) {
        s->running = 0;
        j->nrunning--;
        if (lost && seq_migrate(s)) return;
        if (lost) rt->metrics.lost++;
        char msg[600];
        snprintf(msg, sizeof msg, "generation failed: %s%s",
                 ch->error && *ch->error ? ch->error : "aborted by the worker",
                 lost ? " (no other worker could continue it)" : "");
        j->failed = 1;
        job_fail(j, SL_API_STATUS_WORKER_LOST, msg);
        return;
    }
    if (ch->n_ids) {
        if (!j->t_first_ms) {
            j->t_first_ms = now;
            sl_metrics_observe(&rt->metrics, SL_METRIC_TTFT, (now - j->t_arrival_ms) / 1e3);
        } else if (s->t_last_ms) {
            sl_metrics_observe(&rt->metrics, SL_METRIC_ITL, (now - s->t_last_ms) / 1e3);
        }
        s->t_last_ms = now;
    }
    s->completion_tokens += (int)ch->n_ids;
    for (size_t i = 0; i < ch->n_ids; i++) sl_tok_ids_push(&s->out_ids, ch->ids[i]);
    if (ch->usage) s->cached_tokens = ch->usage->cached_tokens;
    if (j->p.logprobs && ch->n_logprobs) add_logprobs(s, ch);
    int final = ch->finish != SLUICE__FINISH_REASON__FINISH_NONE;
    t->detok_push(s->detok, (const int32_t *)ch->ids, ch->n_ids, &s->text);
    if (final) t->detok_finish(s->detok, &s->text);
    if (scan_stops(s, final)) {
        if (s->running) sl_cluster_abort(rt->cluster, s->rid);
        seq_end(s, "stop");
        job_maybe_complete(j);
        return;
    }
    if (final) {
        seq_end(s, ch->finish == SLUICE__FINISH_REASON__FINISH_LENGTH ? "length" : "stop");
        job_maybe_complete(j);
    }
}

/* ------------------------------------------------------------ dispatch */

static int context_length(sl_router *rt)
{
    if (rt->cfg.context_length > 0) return rt->cfg.context_length;
    int ctx = 0;
    for (int i = 0; i < sl_cluster_size(rt->cluster); i++) {
        sl_worker_info w;
        sl_cluster_info(rt->cluster, i, &w);
        if (sl_cluster_alive(rt->cluster, i) && w.context_length > 0 &&
            (!ctx || w.context_length < ctx))
            ctx = w.context_length;
    }
    return ctx;
}

/* /tokenize and /v1/messages/count_tokens end after encoding. */
static void respond_tokenize(sl_job *j)
{
    json_t *o;
    if (j->kind == SL_API_MESSAGES) {
        o = json_pack("{s:i}", "input_tokens", (int)j->ids[0].n);
    } else {
        json_t *toks = json_array();
        for (size_t i = 0; i < j->ids[0].n; i++)
            json_array_append_new(toks, json_integer(j->ids[0].v[i]));
        o = json_pack("{s:o,s:i,s:i}", "tokens", toks, "count", (int)j->ids[0].n,
                      "max_model_len", context_length(j->rt));
    }
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    sl_http_respond(j->http, 200, "application/json", s, strlen(s), NULL);
    free(s);
    sl_metrics_request(&j->rt->metrics, j->route, 200);
    job_free(j);
}

/* The alive workers and their loads, for sl_route_pick. */
static int candidates(sl_router *rt, sl_route_cand *cand, int max)
{
    int ncand = 0;
    for (int w = 0; w < sl_cluster_size(rt->cluster) && ncand < max; w++) {
        if (!sl_cluster_alive(rt->cluster, w)) continue;
        sl_worker_info wi;
        sl_cluster_info(rt->cluster, w, &wi);
        int reported = wi.running + wi.queued;
        cand[ncand++] = (sl_route_cand){.worker = w,
                                        .load = wi.inflight > reported ? wi.inflight : reported,
                                        .checkpoint_tokens = wi.checkpoint_tokens};
    }
    return ncand;
}

/* Sends choice s to worker: its prompt, the tokens it already produced
 * (output_ids, empty unless it migrates) and what is left of its budget.
 * Sampling (the seed of choice c is seed + c) and stop ids are the same on
 * every submit, so a continuation is the run that was interrupted. */
static sl_status seq_submit(sl_seq *s, int worker, sl_err *e)
{
    sl_job *j = s->job;
    sl_router *rt = j->rt;
    const sl_text_ops *t = rt->cfg.text;
    const sl_tok_ids *in = &j->ids[s->prompt];
    Sluice__SamplingParams sp = j->p.sampling;
    if (sp.has_seed) sp.seed += (uint64_t)(s->index % j->p.n);
    Sluice__GenerateRequest g = SLUICE__GENERATE_REQUEST__INIT;
    g.n_input_ids = in->n;
    g.input_ids = in->v;
    g.n_output_ids = s->out_ids.n;
    g.output_ids = s->out_ids.v;
    g.sampling = &sp;
    g.max_new_tokens = s->max_new - (int)s->out_ids.n;
    int32_t eos[SL_JOB_MAX_EOS_IDS];
    int neos = t->eos_ids ? t->eos_ids(rt->cfg.text_impl, eos, SL_JOB_MAX_EOS_IDS) : 0;
    int32_t stops[SL_WIRE_MAX_STOP_IDS];
    int nst = 0;
    for (int k = 0; k < j->p.n_stop_ids; k++) stops[nst++] = j->p.stop_ids[k];
    for (int k = 0; k < neos && !sp.ignore_eos; k++) stops[nst++] = eos[k];
    g.n_stop_token_ids = (size_t)nst;
    g.stop_token_ids = stops;
    if (sl_cluster_submit(rt->cluster, worker, &g, on_chunk, s, &s->rid, e) != SL_OK)
        return e ? e->code : SL_ERR_CLOSED;
    s->worker = worker;
    s->running = 1;
    j->nrunning++;
    return SL_OK;
}

/* The worker of s died before s finished (its callback already counted s
 * as stopped): continue s on another alive worker. Returns 1 when it runs
 * again, 0 when the caller must fail it. */
static int seq_migrate(sl_seq *s)
{
    sl_job *j = s->job;
    sl_router *rt = j->rt;
    if (s->migrations >= rt->cfg.migration_limit) return 0;
    sl_route_cand cand[256];
    int ncand = candidates(rt, cand, 256);
    if (!ncand) return 0;
    const sl_tok_ids *in = &j->ids[s->prompt];
    int pick = sl_route_pick(rt->route, cand, ncand, in->v, (int)in->n, NULL);
    int from = s->worker;
    sl_err e = {0};
    if (seq_submit(s, cand[pick].worker, &e) != SL_OK) {
        SL_LOGW("router", "%s: moving choice %d: %s", j->id, s->index, e.msg);
        return 0;
    }
    s->migrations++;
    rt->metrics.migrated++;
    sl_worker_info a, b;
    sl_cluster_info(rt->cluster, from, &a);
    sl_cluster_info(rt->cluster, s->worker, &b);
    SL_LOGW("router", "%s: choice %d moved from %s to %s after %zu tokens", j->id, s->index, a.url,
            b.url, s->out_ids.n);
    return 1;
}

static void job_dispatch(sl_job *j)
{
    sl_router *rt = j->rt;
    const sl_text_ops *t = rt->cfg.text;
    int ctx = context_length(rt);
    char msg[700];
    for (int i = 0; i < j->nprompts; i++) {
        int n = (int)j->ids[i].n;
        if (!n) {
            job_fail(j, SL_API_STATUS_INVALID, "the prompt is empty");
            return;
        }
        if (ctx && n >= ctx) {
            snprintf(msg, sizeof msg,
                     "This model's maximum context length is %d tokens. However, your request "
                     "has %d input tokens. Please reduce the length of the input.",
                     ctx, n);
            job_fail(j, SL_API_STATUS_INVALID, msg);
            return;
        }
        int vocab = 0;
        for (int w = 0; w < sl_cluster_size(rt->cluster); w++) {
            sl_worker_info wi;
            sl_cluster_info(rt->cluster, w, &wi);
            if (wi.vocab_size > vocab) vocab = wi.vocab_size;
        }
        for (int k = 0; vocab && k < n; k++)
            if (j->ids[i].v[k] < 0 || j->ids[i].v[k] >= vocab) {
                snprintf(msg, sizeof msg, "prompt token id %d is outside the vocabulary [0, %d)",
                         j->ids[i].v[k], vocab);
                job_fail(j, SL_API_STATUS_INVALID, msg);
                return;
            }
    }
    sl_route_cand cand[256];
    int ncand = candidates(rt, cand, 256);
    if (!ncand) {
        job_fail(j, SL_API_STATUS_UNAVAILABLE, "no worker is available; try again later");
        return;
    }
    j->nseqs = j->nprompts * j->p.n;
    j->seqs = calloc((size_t)j->nseqs, sizeof *j->seqs);
    if (!j->seqs) {
        job_fail(j, SL_API_STATUS_SERVER, "out of memory");
        return;
    }
    for (int i = 0; i < j->nprompts; i++) {
        int n = (int)j->ids[i].n;
        int pick = sl_route_pick(rt->route, cand, ncand, j->ids[i].v, n, NULL);
        int worker = cand[pick].worker;
        sl_route_record(rt->route, worker, j->ids[i].v, n);
        for (int c = 0; c < j->p.n; c++) cand[pick].load++;
        for (int c = 0; c < j->p.n; c++) {
            sl_seq *s = &j->seqs[i * j->p.n + c];
            s->job = j;
            s->index = i * j->p.n + c;
            s->prompt = i;
            s->stop_index = -1;
            s->block_open = -1;
            s->detok = t->detok_new(rt->cfg.text_impl);
            s->logprobs = json_array();
            s->logprobs_new = json_array();
            int room = ctx ? ctx - n : 1 << 30;
            s->max_new = j->p.max_tokens < 0 || j->p.max_tokens > room ? room : j->p.max_tokens;
            if (j->kind != SL_API_COMPLETIONS && t->parser_new) {
                sl_err e = {0};
                s->parser = t->parser_new(rt->cfg.text_impl, j->body, j->chat_prompt.data,
                                          j->chat_prompt.len, &e);
                if (!s->parser && e.code) {
                    job_fail(j, SL_API_STATUS_INVALID, e.msg);
                    return;
                }
            }
            sl_err e = {0};
            if (seq_submit(s, worker, &e) != SL_OK) {
                snprintf(msg, sizeof msg, "no worker could take the request: %s", e.msg);
                job_fail(j, SL_API_STATUS_UNAVAILABLE, msg);
                return;
            }
        }
    }
    if (j->p.stream) {
        sl_http_stream_begin(j->http, 200, "text/event-stream", NULL);
        j->headers_sent = 1;
        j->t_last_write_ms = now_ms();
    }
}

/* Renders and tokenizes the prompts: on the pool for long ones. */
static void encode_all(sl_job *j)
{
    const sl_router_config *c = &j->rt->cfg;
    sl_err *e = &j->work_err;
    if (j->kind == SL_API_CHAT || j->kind == SL_API_MESSAGES) {
        if (c->text->render_chat(c->text_impl, j->body, &j->chat_prompt, e) != SL_OK) return;
        if (c->text->encode(c->text_impl, j->chat_prompt.data, j->chat_prompt.len, &j->ids[0], e))
            return;
        return;
    }
    for (int i = 0; i < j->nprompts; i++)
        if (!j->is_ids[i] &&
            c->text->encode(c->text_impl, j->texts[i], strlen(j->texts[i]), &j->ids[i], e))
            return;
}

static void after_encode(sl_job *j)
{
    j->encoding = 0;
    if (j->aborted) {
        job_fail(j, SL_API_STATUS_CLIENT_GONE, "client closed the connection");
        return;
    }
    if (j->work_err.code) {
        char msg[600];
        snprintf(msg, sizeof msg, "%s", j->work_err.msg);
        job_fail(j, j->work_err.code == SL_ERR_NOMEM ? SL_API_STATUS_SERVER : SL_API_STATUS_INVALID,
                 msg);
        return;
    }
    if (!strcmp(j->route, "/tokenize") || !strcmp(j->route, "/v1/messages/count_tokens")) {
        respond_tokenize(j);
        return;
    }
    job_dispatch(j);
}

static void work_encode(uv_work_t *w) { encode_all(w->data); }

static void work_encode_done(uv_work_t *w, int status)
{
    sl_job *j = w->data;
    if (status == UV_ECANCELED) sl_err_set(&j->work_err, SL_ERR_CLOSED, "cancelled");
    after_encode(j);
}

static void job_start(sl_job *j)
{
    size_t bytes = 0;
    if (j->kind != SL_API_COMPLETIONS) {
        size_t n;
        sl_http_req_body(j->http, &n);
        bytes = n;
    }
    for (int i = 0; i < j->nprompts; i++)
        if (j->texts && j->texts[i]) bytes += strlen(j->texts[i]);
    if (bytes <= j->rt->cfg.inline_encode_bytes) {
        encode_all(j);
        after_encode(j);
        return;
    }
    j->encoding = 1;
    j->work.data = j;
    if (uv_queue_work(j->rt->loop, &j->work, work_encode, work_encode_done) < 0) {
        j->encoding = 0;
        encode_all(j);
        after_encode(j);
    }
}

static void on_client_abort(sl_http_req *r, void *ud)
{
    sl_job *j = ud;
    j->aborted = 1;
    j->rt->metrics.aborted++;
    abort_running(j);
    if (j->encoding) return; /* after_encode ends it */
    job_fail(j, SL_API_STATUS_CLIENT_GONE, "client closed the connection");
}

/* ------------------------------------------------------------ endpoints */

static int auth_ok(const sl_router *rt, sl_http_req *r)
{
    const char *key = rt->cfg.api_key;
    if (!key || !*key) return 1;
    const char *h = sl_http_req_header(r, "authorization");
    const char *given = NULL;
    if (h && !strncasecmp(h, "Bearer ", 7))
        given = h + 7;
    else
        given = sl_http_req_header(r, "x-api-key");
    if (!given) return 0;
    size_t a = strlen(key), b = strlen(given);
    /* Constant time in the key's length: every byte is compared. */
    unsigned diff = (unsigned)(a ^ b);
    for (size_t i = 0; i < a; i++) diff |= (unsigned char)key[i] ^ (unsigned char)(i < b ? given[i] : 0);
    return diff == 0;
}

static void handle_models(sl_router *rt, sl_http_req *r)
{
    json_t *m = json_pack("{s:s,s:s,s:i,s:s,s:s,s:i}", "id", rt->cfg.served_model_name, "object",
                          "model", "created", 0, "owned_by", "sluice", "root",
                          rt->cfg.served_model_name, "max_model_len", context_length(rt));
    respond_json(rt, r, "/v1/models", 200, json_pack("{s:s,s:[o]}", "object", "list", "data", m));
}

static void handle_health(sl_router *rt, sl_http_req *r)
{
    int alive = 0;
    for (int i = 0; i < sl_cluster_size(rt->cluster); i++) alive += sl_cluster_alive(rt->cluster, i);
    respond_json(rt, r, "/health", 200,
                 json_pack("{s:s,s:i,s:i}", "status", "ok", "workers", sl_cluster_size(rt->cluster),
                           "workers_alive", alive));
}

static void handle_metrics(sl_router *rt, sl_http_req *r)
{
    sl_buf o = {0};
    sl_metrics_render(&rt->metrics, &o);
    sl_buf_puts(&o, "# HELP sluice_worker_up 1 while the worker answers heartbeats.\n"
                    "# TYPE sluice_worker_up gauge\n");
    int n = sl_cluster_size(rt->cluster);
    for (int i = 0; i < n; i++) {
        sl_worker_info w;
        sl_cluster_info(rt->cluster, i, &w);
        sl_buf_printf(&o, "sluice_worker_up{worker=\"%s\"} %d\n", w.url, w.alive);
    }
    static const char *const gauges[][2] = {
        {"sluice_worker_inflight", "Requests this router has running on the worker."},
        {"sluice_worker_running", "Requests running on the worker (its report)."},
        {"sluice_worker_queued", "Requests queued on the worker (its report)."},
        {"sluice_worker_free_kv_pages", "Free KV cache pages (its report)."},
        {"sluice_worker_cache_hit_rate", "Prefix cache hit rate (its report)."},
        {"sluice_worker_route_tree_tokens", "Tokens in the router's prefix tree for it."}};
    for (int g = 0; g < 6; g++) {
        sl_buf_printf(&o, "# HELP %s %s\n# TYPE %s gauge\n", gauges[g][0], gauges[g][1],
                      gauges[g][0]);
        for (int i = 0; i < n; i++) {
            sl_worker_info w;
            sl_cluster_info(rt->cluster, i, &w);
            double v = g == 0 ? w.inflight
                     : g == 1 ? w.running
                     : g == 2 ? w.queued
                     : g == 3 ? w.free_kv_pages
                     : g == 4 ? w.cache_hit_rate
                              : (double)sl_route_tree_tokens(rt->route, i);
            sl_buf_printf(&o, "%s{worker=\"%s\"} %g\n", gauges[g][0], w.url, v);
        }
    }
    sl_http_respond(r, 200, "text/plain; version=0.0.4", o.data, o.len, NULL);
    sl_buf_free(&o);
    sl_metrics_request(&rt->metrics, "/metrics", 200);
}

static void handle_detokenize(sl_router *rt, sl_http_req *r, json_t *body)
{
    sl_api_err err = {0};
    json_t *toks = json_object_get(body, "tokens");
    if (!json_is_array(toks)) {
        sl_api_fail(&err, SL_API_STATUS_INVALID, "tokens: expected an array of token ids");
        respond_err(rt, r, "/detokenize", &sl_openai_chat, &err);
        return;
    }
    sl_tok_ids ids = {0};
    size_t i;
    json_t *v;
    json_array_foreach(toks, i, v)
    {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX) {
            sl_tok_ids_free(&ids);
            sl_api_fail(&err, SL_API_STATUS_INVALID, "tokens[%zu]: expected a token id", i);
            respond_err(rt, r, "/detokenize", &sl_openai_chat, &err);
            return;
        }
        sl_tok_ids_push(&ids, (int32_t)json_integer_value(v));
    }
    sl_buf out = {0};
    sl_err e = {0};
    if (rt->cfg.text->decode(rt->cfg.text_impl, ids.v, ids.n, &out, &e) != SL_OK) {
        sl_tok_ids_free(&ids);
        sl_buf_free(&out);
        sl_api_fail(&err, SL_API_STATUS_INVALID, "tokens: %s", e.msg);
        respond_err(rt, r, "/detokenize", &sl_openai_chat, &err);
        return;
    }
    sl_tok_ids_free(&ids);
    respond_json(rt, r, "/detokenize", 200,
                 json_pack("{s:s%}", "text", out.data ? out.data : "", out.len));
    sl_buf_free(&out);
}

/* /tokenize: {"prompt": text} or a chat body {"messages": [...]} */
static int decode_tokenize(sl_job *j, sl_api_err *err)
{
    json_t *msgs = json_object_get(j->body, "messages");
    json_t *prompt = json_object_get(j->body, "prompt");
    if (!prompt) prompt = json_object_get(j->body, "text");
    if (msgs) {
        j->kind = SL_API_CHAT;
        return 0;
    }
    if (!json_is_string(prompt))
        return sl_api_fail(err, SL_API_STATUS_INVALID, "prompt: expected a string (or messages: a chat)");
    j->texts[0] = strdup(json_string_value(prompt));
    return 0;
}

/* A new job with the request's defaults (cfg's sampling), body owned by it,
 * decoded for route; NULL with err set when it is bad or memory runs out
 * (body is then released). */
static sl_job *job_decode(const sl_router_config *cfg, const char *route, sl_api_kind kind,
                          json_t *body, sl_api_err *err)
{
    sl_job *j = calloc(1, sizeof *j);
    if (!j) {
        json_decref(body);
        sl_api_fail(err, SL_API_STATUS_SERVER, "out of memory");
        return NULL;
    }
    j->kind = kind;
    j->dialect = sl_api_dialect_of(kind);
    j->route = route;
    j->body = body;
    j->model = cfg->served_model_name;
    j->p.n = 1;
    j->p.max_tokens = -1;
    j->p.separate_reasoning = 1;
    j->p.sampling = (Sluice__SamplingParams)SLUICE__SAMPLING_PARAMS__INIT;
    j->p.sampling.temperature = cfg->default_temperature;
    j->p.sampling.top_p = cfg->default_top_p;
    j->p.sampling.top_k = cfg->default_top_k;
    j->p.sampling.min_p = cfg->default_min_p;
    j->p.sampling.repetition_penalty = 1.0f;
    int rc;
    if (!strcmp(route, "/tokenize")) {
        rc = sl_job_prompts(j, 1, err) ? -1 : decode_tokenize(j, err);
    } else {
        rc = j->dialect->decode(j, err);
    }
    if (!rc && j->p.n > cfg->max_n)
        rc = sl_api_fail(err, SL_API_STATUS_INVALID, "n: at most %d choices", cfg->max_n);
    if (rc) {
        job_release(j);
        return NULL;
    }
    return j;
}

sl_job *sl_api_decode(const sl_router_config *cfg, const char *route, sl_api_kind kind,
                      json_t *body, sl_api_err *err)
{
    return job_decode(cfg, route, kind, body, err);
}

static void handle_generate(sl_router *rt, sl_http_req *r, json_t *body, sl_api_kind kind,
                            const char *route)
{
    sl_api_err err = {0};
    sl_job *j = job_decode(&rt->cfg, route, kind, body, &err);
    if (!j) {
        respond_err(rt, r, route, sl_api_dialect_of(kind), &err);
        return;
    }
    j->rt = rt;
    j->http = r;
    j->t_arrival_ms = sl_http_req_arrival_ms(r);
    j->created = (long)time(NULL);
    uint64_t seq = ++rt->id_seq;
    snprintf(j->id, sizeof j->id, "%s%016llx%08llx", j->dialect->id_prefix,
             (unsigned long long)sl_rng_mix(uv_hrtime() ^ seq), (unsigned long long)seq);
    j->next = rt->jobs;
    if (rt->jobs) rt->jobs->prev = j;
    rt->jobs = j;
    rt->njobs++;
    sl_http_req_on_abort(r, on_client_abort, j);
    job_start(j);
}

static void on_request(sl_http_req *r, void *ud)
{
    sl_router *rt = ud;
    const char *path = sl_http_req_path(r);
    const char *method = sl_http_req_method(r);
    /* errors: each route answers in its API's dialect (OpenAI's when none) */
    static const struct {
        const char *path, *method;
        int kind; /* -1: not a generation */
        const sl_api_dialect *dialect;
    } routes[] = {{"/v1/chat/completions", "POST", SL_API_CHAT, &sl_openai_chat},
                  {"/v1/completions", "POST", SL_API_COMPLETIONS, &sl_openai_completions},
                  {"/v1/messages", "POST", SL_API_MESSAGES, &sl_anthropic_messages},
                  {"/v1/messages/count_tokens", "POST", SL_API_MESSAGES, &sl_anthropic_messages},
                  {"/tokenize", "POST", SL_API_COMPLETIONS, &sl_openai_completions},
                  {"/detokenize", "POST", -1, &sl_openai_chat},
                  {"/v1/models", "GET", -1, &sl_openai_chat},
                  {"/health", "GET", -1, &sl_openai_chat},
                  {"/metrics", "GET", -1, &sl_openai_chat}};
    int k = -1;
    for (int i = 0; i < (int)(sizeof routes / sizeof routes[0]); i++)
        if (!strcmp(path, routes[i].path)) k = i;
    sl_api_err err = {0};
    if (k < 0) {
        sl_api_fail(&err, SL_API_STATUS_NOT_FOUND, "no route %s %s", method, path);
        respond_err(rt, r, "other", &sl_openai_chat, &err);
        return;
    }
    const char *route = routes[k].path;
    const sl_api_dialect *d = routes[k].dialect;
    if (strcmp(method, routes[k].method)) {
        sl_api_fail(&err, SL_API_STATUS_METHOD, "%s takes %s, not %s", path, routes[k].method,
                    method);
        respond_err(rt, r, route, d, &err);
        return;
    }
    if (strcmp(route, "/health") && !auth_ok(rt, r)) {
        sl_api_fail(&err, SL_API_STATUS_UNAUTHORIZED, "invalid or missing API key (Authorization: Bearer <key>)");
        respond_err(rt, r, route, d, &err);
        return;
    }
    if (!strcmp(route, "/health")) return handle_health(rt, r);
    if (!strcmp(route, "/v1/models")) return handle_models(rt, r);
    if (!strcmp(route, "/metrics")) return handle_metrics(rt, r);
    if (rt->shutting_down) {
        sl_api_fail(&err, SL_API_STATUS_UNAVAILABLE, "the router is shutting down");
        respond_err(rt, r, route, d, &err);
        return;
    }
    size_t blen;
    const char *b = sl_http_req_body(r, &blen);
    json_error_t je;
    json_t *body = json_loadb(b, blen, JSON_REJECT_DUPLICATES, &je);
    if (!body || !json_is_object(body)) {
        if (body)
            sl_api_fail(&err, SL_API_STATUS_INVALID, "the body must be a JSON object");
        else
            sl_api_fail(&err, SL_API_STATUS_INVALID, "malformed JSON body: %s (line %d, column %d)", je.text, je.line,
                        je.column);
        json_decref(body);
        respond_err(rt, r, route, d, &err);
        return;
    }
    if (!strcmp(route, "/detokenize")) {
        handle_detokenize(rt, r, body);
        json_decref(body);
        return;
    }
    handle_generate(rt, r, body, (sl_api_kind)routes[k].kind, route);
}

/* --------------------------------------------------------- keep-alive */

/* A stream whose client stopped reading would buffer without bound. */
#define SL_ROUTER_MAX_BACKLOG (16u << 20)

static void on_tick(uv_timer_t *t)
{
    sl_router *rt = t->data;
    double now = now_ms();
    for (sl_job *j = rt->jobs, *nx; j; j = nx) {
        nx = j->next;
        if (!j->headers_sent || j->aborted) continue;
        if (sl_http_req_backlog(j->http) > SL_ROUTER_MAX_BACKLOG) {
            SL_LOGW("router", "%s: client is not reading its stream; aborting", j->id);
            j->aborted = 1;
            rt->metrics.aborted++;
            job_fail(j, SL_API_STATUS_CLIENT_GONE, "client too slow");
            continue;
        }
        if (now - j->t_last_write_ms >= rt->cfg.keepalive_ms) sl_job_sse_raw(j, ": keep-alive\n\n");
    }
}

/* ------------------------------------------------------------ lifetime */

/* A worker that died may come back empty (a restart): forget what the
 * route tree believes it caches. */
static void on_worker_event(void *ud, int worker, int alive)
{
    sl_router *rt = ud;
    if (!alive) sl_route_forget(rt->route, worker);
}

sl_status sl_router_new(sl_router **out, uv_loop_t *loop, const sl_router_config *cfg, sl_err *e)
{
    *out = NULL;
    if (!cfg->text) return sl_err_set(e, SL_ERR_INVALID, "router: no tokenizer configured");
    sl_router *rt = calloc(1, sizeof *rt);
    if (!rt) return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    rt->loop = loop;
    rt->cfg = *cfg;
    sl_metrics_init(&rt->metrics);
    if (sl_route_new(&rt->route, &cfg->route, e) ||
        sl_cluster_new(&rt->cluster, loop, &cfg->cluster, on_worker_event, rt, e)) {
        sl_route_free(rt->route);
        free(rt);
        return e ? e->code : SL_ERR_NOMEM;
    }
    if (sl_http_start(&rt->http, loop, cfg->host, cfg->port, &cfg->http, on_request, rt, e)) {
        sl_cluster_close(rt->cluster);
        uv_run(loop, UV_RUN_NOWAIT);
        sl_cluster_free(rt->cluster);
        sl_route_free(rt->route);
        free(rt);
        return e ? e->code : SL_ERR_IO;
    }
    uv_timer_init(loop, &rt->tick);
    rt->tick.data = rt;
    unsigned period = cfg->keepalive_ms < 1000 ? cfg->keepalive_ms / 2 + 1 : 500;
    uv_timer_start(&rt->tick, on_tick, period, period);
    *out = rt;
    return SL_OK;
}

sl_status sl_router_add_worker(sl_router *rt, const char *url, sl_err *e)
{
    return sl_cluster_add(rt->cluster, url, e);
}

sl_status sl_router_add_worker_dns(sl_router *rt, const char *host, int port, sl_err *e)
{
    return sl_cluster_add_dns(rt->cluster, host, port, e);
}

int sl_router_port(const sl_router *rt) { return sl_http_port(rt->http); }

static void on_tick_closed(uv_handle_t *h)
{
    sl_router *rt = h->data;
    if (rt->done) rt->done(rt->done_ud);
}

static void on_http_drained(void *ud)
{
    sl_router *rt = ud;
    /* Requests still running here have lost their clients: end them. */
    while (rt->jobs) {
        sl_job *j = rt->jobs;
        if (j->encoding) break; /* after_encode frees it; the loop keeps running */
        j->aborted = 1;
        job_fail(j, SL_API_STATUS_UNAVAILABLE, "the router is shutting down");
    }
    sl_cluster_close(rt->cluster);
    uv_close((uv_handle_t *)&rt->tick, on_tick_closed);
}

void sl_router_shutdown(sl_router *rt, void (*done)(void *), void *ud)
{
    if (rt->shutting_down) return;
    rt->shutting_down = 1;
    rt->done = done;
    rt->done_ud = ud;
    sl_http_shutdown(rt->http, on_http_drained, rt);
}

void sl_router_free(sl_router *rt)
{
    if (!rt) return;
    sl_http_free(rt->http);
    sl_cluster_free(rt->cluster);
    sl_route_free(rt->route);
    free(rt);
}

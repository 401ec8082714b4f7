/* job: see job.h. What runs between a job's start and its end:
 *
 *   encode (inline or pool) ─▶ dispatch (route, submit each choice)
 *   ─▶ chunks ─▶ detokenize ─▶ stop strings ─▶ parsers ─▶ the dialect
 *
 * and the move of a choice to another worker when its worker dies. */
#include "job.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "router_impl.h"
#include "sl_log.h"
#include "sl_rng.h"

/* ------------------------------------------------------ output pipeline */

/* Token text for logprobs (decoded single id). Caller frees. */
static char *token_text(sl_job *j, int32_t id)
{
    sl_buf b = {0};
    const sl_router_config *c = &j->rt->cfg;
    if (c->text->decode(c->text_impl, &id, 1, &b, NULL) != SL_OK) sl_buf_clear(&b);
    if (!b.data) sl_buf_puts(&b, "");
    return sl_buf_take(&b);
}

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
    /* parallel_tool_calls false: the first call is the answer, later ones are dropped */
    if (!s->job->p.parallel_tool_calls && index > 0) return;
    sl_seq_tool *nt = realloc(s->tools, (size_t)(s->ntools + 1) * sizeof *nt);
    if (!nt) return;
    s->tools = nt;
    nt[s->ntools++] = (sl_seq_tool){.id = strdup(id), .name = strdup(name)};
    if (s->job->p.stream) s->job->dialect->tool_start(s, index, id, name);
}

static void sink_tool_args(void *ud, int index, const char *t, size_t n)
{
    sl_seq *s = ud;
    if (index < 0 || index >= s->ntools) return; /* a dropped call's arguments */
    sl_buf_append(&s->tools[index].args, t, n);
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
    if (t->data) { /* NULL while no text came (a chunk of skipped special tokens) */
        memmove(t->data, t->data + cut, keep);
        t->data[keep] = 0;
    }
    t->len = keep;
    return 0;
}

static void job_maybe_complete(sl_job *j)
{
    if (!j->nrunning && !j->failed) sl_job_complete(j);
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
        char *tok = token_text(j, ch->ids[i]);
        json_t *bytes = json_array();
        for (const unsigned char *q = (const unsigned char *)tok; *q; q++)
            json_array_append_new(bytes, json_integer(*q));
        json_t *top = json_array();
        if (i < ch->n_top && ch->top[i])
            for (size_t k = 0; k < ch->top[i]->n_ids && k < ch->top[i]->n_logprobs; k++) {
                char *tt = token_text(j, ch->top[i]->ids[k]);
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
    double now = sl_router_now_ms();
    if (s->pd) sl_job_pd_seq_chunk(s, ch); /* disaggregation: the companion's fate */
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
        sl_job_fail(j, SL_API_STATUS_WORKER_LOST, msg);
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
    j->rt->out_tokens_live += ch->n_ids;
    for (size_t i = 0; i < ch->n_ids; i++) sl_tok_ids_push(&s->out_ids, ch->ids[i]);
    if (ch->usage) s->cached_tokens = ch->usage->cached_tokens;
    if (j->p.logprobs && ch->n_logprobs) add_logprobs(s, ch);
    int final = ch->finish != SLUICE__FINISH_REASON__FINISH_NONE;
    t->detok_push(s->detok, (const int32_t *)ch->ids, ch->n_ids, &s->text);
    if (final) t->detok_finish(s->detok, &s->text);
    if (scan_stops(s, final)) {
        if (s->running) sl_cluster_abort(rt->cluster, s->rid);
        sl_job_pd_seq_stop(s);
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

int sl_job_context_length(const sl_router *rt)
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
                      "max_model_len", sl_job_context_length(j->rt));
    }
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    sl_http_respond(j->http, 200, "application/json", s, strlen(s), NULL);
    free(s);
    sl_metrics_request(&j->rt->metrics, j->route, 200);
    sl_job_free(j);
}

/* The alive workers and their loads, for sl_route_pick. */
static int candidates(sl_router *rt, sl_route_cand *cand, int max)
{
    int ncand = 0;
    for (int w = 0; w < sl_cluster_size(rt->cluster) && ncand < max; w++) {
        if (!sl_cluster_alive(rt->cluster, w) || !sl_job_pd_decode_ok(rt, w)) continue;
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
sl_status sl_job_seq_submit(sl_seq *s, int worker, int allow_pd, sl_err *e)
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
    Sluice__Constraint cons = SLUICE__CONSTRAINT__INIT;
    if (j->grammar.len) {
        cons.grammar = j->grammar.data;
        cons.n_start_after = j->answer_start >= 0;
        cons.start_after = &j->answer_start;
        g.constraint = &cons;
    }
    sl_status st = allow_pd && rt->cfg.pd
                       ? sl_job_pd_submit(s, worker, &g, on_chunk, e)
                       : sl_cluster_submit(rt->cluster, worker, &g, on_chunk, s, &s->rid, e);
    if (st != SL_OK) return e ? e->code : SL_ERR_CLOSED;
    s->worker = worker;
    s->running = 1;
    j->nrunning++;
    return SL_OK;
}

static sl_status seq_submit(sl_seq *s, int worker, sl_err *e)
{
    return sl_job_seq_submit(s, worker, 1, e);
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
    int ctx = sl_job_context_length(rt);
    char msg[700];
    for (int i = 0; i < j->nprompts; i++) {
        int n = (int)j->ids[i].n;
        if (!n) {
            sl_job_fail(j, SL_API_STATUS_INVALID, "the prompt is empty");
            return;
        }
        if (ctx && n >= ctx) {
            snprintf(msg, sizeof msg,
                     "This model's maximum context length is %d tokens. However, your request "
                     "has %d input tokens. Please reduce the length of the input.",
                     ctx, n);
            sl_job_fail(j, SL_API_STATUS_INVALID, msg);
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
                sl_job_fail(j, SL_API_STATUS_INVALID, msg);
                return;
            }
        /* the worker refuses these (502) and cannot be blamed: ours is a 400 */
        for (int k = 0; vocab && i == 0 && k < j->p.n_stop_ids; k++)
            if (j->p.stop_ids[k] < 0 || j->p.stop_ids[k] >= vocab) {
                snprintf(msg, sizeof msg,
                         "stop_token_ids: token id %d is outside the vocabulary [0, %d)",
                         j->p.stop_ids[k], vocab);
                sl_job_fail(j, SL_API_STATUS_INVALID, msg);
                return;
            }
    }
    /* a thinking model's constrained answer starts when its thinking ends */
    if (j->grammar.len && j->kind != SL_API_COMPLETIONS && t->answer_start)
        j->answer_start = t->answer_start(rt->cfg.text_impl, j->body, j->chat_prompt.data,
                                          j->chat_prompt.len);
    sl_route_cand cand[256];
    int ncand = candidates(rt, cand, 256);
    if (!ncand) {
        sl_job_fail(j, SL_API_STATUS_UNAVAILABLE, "no worker is available; try again later");
        return;
    }
    j->nseqs = j->nprompts * j->p.n;
    j->seqs = calloc((size_t)j->nseqs, sizeof *j->seqs);
    if (!j->seqs) {
        sl_job_fail(j, SL_API_STATUS_SERVER, "out of memory");
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
            if (j->dialect->seq_init && j->dialect->seq_init(s)) {
                sl_job_fail(j, SL_API_STATUS_SERVER, "out of memory");
                return;
            }
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
                    sl_job_fail(j, SL_API_STATUS_INVALID, e.msg);
                    return;
                }
            }
            sl_err e = {0};
            if (seq_submit(s, worker, &e) != SL_OK) {
                snprintf(msg, sizeof msg, "no worker could take the request: %s", e.msg);
                sl_job_fail(j, SL_API_STATUS_UNAVAILABLE, msg);
                return;
            }
        }
    }
    if (j->p.stream) {
        sl_http_stream_begin(j->http, 200, "text/event-stream", NULL);
        j->headers_sent = 1;
        j->t_last_write_ms = sl_router_now_ms();
    }
}

/* Renders and tokenizes the prompts: on the pool for long ones. With
 * split_special_tokens the client's text (the template's record of it, or
 * a whole text prompt) is encoded with no control tokens. */
static void encode_all(sl_job *j)
{
    const sl_router_config *c = &j->rt->cfg;
    sl_err *e = &j->work_err;
    int split = j->p.split_special_tokens;
    if (j->kind == SL_API_CHAT || j->kind == SL_API_MESSAGES) {
        sl_tok_spans typed = {0};
        if (c->text->render_chat(c->text_impl, j->body, &j->chat_prompt, split ? &typed : NULL,
                                 e) == SL_OK)
            c->text->encode(c->text_impl, j->chat_prompt.data, j->chat_prompt.len,
                            split ? &typed : NULL, &j->ids[0], e);
        sl_tok_spans_free(&typed);
        return;
    }
    for (int i = 0; i < j->nprompts; i++) {
        if (j->is_ids[i]) continue;
        size_t len = strlen(j->texts[i]);
        sl_tok_span all = {0, len};
        sl_tok_spans typed = {&all, len ? 1 : 0, 1};
        if (c->text->encode(c->text_impl, j->texts[i], len, split ? &typed : NULL, &j->ids[i], e))
            return;
    }
}

static void after_encode(sl_job *j)
{
    j->encoding = 0;
    if (j->aborted) {
        sl_job_fail(j, SL_API_STATUS_CLIENT_GONE, "client closed the connection");
        return;
    }
    if (j->work_err.code) {
        char msg[600];
        snprintf(msg, sizeof msg, "%s", j->work_err.msg);
        sl_job_fail(j, j->work_err.code == SL_ERR_NOMEM ? SL_API_STATUS_SERVER : SL_API_STATUS_INVALID,
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

static void encode_start(sl_job *j)
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
    sl_job_abort_running(j);
    if (j->encoding) return; /* after_encode ends it */
    sl_job_fail(j, SL_API_STATUS_CLIENT_GONE, "client closed the connection");
}

void sl_job_start(sl_job *j, sl_router *rt, sl_http_req *r)
{
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
    encode_start(j);
}

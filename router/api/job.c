/* job: see job.h. The life cycle of a job (decode, free, the two ends) and
 * the helpers its dialect writes the response through. */
#include "job.h"

#include <stdlib.h>
#include <string.h>

#include "router_impl.h"

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

sl_job *sl_job_decode(const sl_router_config *cfg, const char *route, sl_api_kind kind,
                      const sl_api_dialect *d, json_t *body, sl_api_err *err)
{
    sl_job *j = calloc(1, sizeof *j);
    if (!j) {
        json_decref(body);
        sl_api_fail(err, SL_API_STATUS_SERVER, "out of memory");
        return NULL;
    }
    j->kind = kind;
    j->dialect = d;
    j->route = route;
    j->body = body;
    j->model = cfg->served_model_name;
    j->p.n = 1;
    j->p.max_tokens = -1;
    j->p.separate_reasoning = 1;
    j->p.parallel_tool_calls = 1;
    j->answer_start = -1;
    j->p.sampling = (Sluice__SamplingParams)SLUICE__SAMPLING_PARAMS__INIT;
    j->p.sampling.temperature = cfg->default_temperature;
    j->p.sampling.top_p = cfg->default_top_p;
    j->p.sampling.top_k = cfg->default_top_k;
    j->p.sampling.min_p = cfg->default_min_p;
    j->p.sampling.repetition_penalty = 1.0f;
    j->p.split_special_tokens = cfg->split_special_tokens;
    /* Read here for every route: the Anthropic and Responses decoders replace the body. */
    int rc = sl_api_get_bool(body, "split_special_tokens", &j->p.split_special_tokens, err);
    if (!rc && !strcmp(route, "/tokenize"))
        rc = sl_job_prompts(j, 1, err) ? -1 : decode_tokenize(j, err);
    else if (!rc)
        rc = j->dialect->decode(j, err);
    if (!rc && j->p.n > cfg->max_n)
        rc = sl_api_fail(err, SL_API_STATUS_INVALID, "n: at most %d choices", cfg->max_n);
    if (!rc) rc = sl_job_constraint_build(j, cfg, err);
    if (rc) {
        sl_job_free(j);
        return NULL;
    }
    return j;
}

static void seq_clear(sl_job *j, sl_seq *s)
{
    const sl_text_ops *t = j->rt->cfg.text;
    if (j->dialect->seq_fini) j->dialect->seq_fini(s);
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

void sl_job_free(sl_job *j)
{
    if (!j) return;
    sl_router *rt = j->rt;
    if (rt) {
        if (j->prev)
            j->prev->next = j->next;
        else if (rt->jobs == j)
            rt->jobs = j->next;
        if (j->next) j->next->prev = j->prev;
        rt->njobs--;
    }
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
    sl_buf_free(&j->grammar);
    sl_job_cons_free(&j->p.cons);
    json_decref(j->body);
    free(j);
}

void sl_job_abort_running(sl_job *j)
{
    for (int i = 0; i < j->nseqs; i++) {
        sl_seq *s = &j->seqs[i];
        if (s->running) {
            sl_cluster_abort(j->rt->cluster, s->rid);
            sl_job_pd_seq_stop(s);
            s->running = 0;
            j->nrunning--;
        }
    }
}

/* Tokens are counted for every job that ran, aborted ones included: the
 * workers spent them. */
static void job_count_tokens(sl_job *j, int *p, int *c)
{
    sl_router *rt = j->rt;
    int k;
    sl_job_usage(j, p, c, &k);
    rt->metrics.prompt_tokens += (uint64_t)*p;
    rt->metrics.generation_tokens += (uint64_t)*c;
    rt->metrics.cached_tokens += (uint64_t)k;
}

static void job_end_metrics(sl_job *j, int status)
{
    sl_router *rt = j->rt;
    int p, c;
    sl_metrics_request(&rt->metrics, j->route, status);
    sl_metrics_observe(&rt->metrics, SL_METRIC_E2E, (sl_router_now_ms() - j->t_arrival_ms) / 1e3);
    job_count_tokens(j, &p, &c);
    sl_router_access_log(rt, strcmp(j->route, "/health_generate") ? "POST" : "GET", j->route,
                         status, p, c, j->t_arrival_ms);
}

void sl_job_fail(sl_job *j, sl_api_status st, const char *msg)
{
    sl_job_abort_running(j);
    if (j->aborted) {
        /* The client is gone: complete the orphaned request silently. */
        int p, c;
        job_count_tokens(j, &p, &c);
        if (j->headers_sent)
            sl_http_stream_end(j->http);
        else
            sl_http_respond(j->http, 499, "text/plain", "", 0, NULL);
        sl_job_free(j);
        return;
    }
    if (j->headers_sent) {
        j->dialect->stream_error(j, msg);
        sl_http_stream_end(j->http);
    } else {
        sl_api_respond_error(j->http, j->dialect, st, msg);
    }
    job_end_metrics(j, sl_api_status_get(st)->http);
    sl_job_free(j);
}

void sl_job_complete(sl_job *j)
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
    sl_job_free(j);
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
    /* Likewise the cached share: per prompt the best any of its choices
     * found (the others usually hit what the first prefilled), never more
     * than the prompt itself. */
    for (int p = 0; p < j->nprompts && j->ids; p++) {
        int best = 0;
        for (int i = 0; i < j->nseqs; i++)
            if (j->seqs[i].prompt == p && j->seqs[i].cached_tokens > best)
                best = j->seqs[i].cached_tokens;
        *cached += best < (int)j->ids[p].n ? best : (int)j->ids[p].n;
    }
    for (int i = 0; i < j->nseqs; i++) *completion += j->seqs[i].completion_tokens;
}

void sl_job_sse_raw(sl_job *j, const char *text)
{
    if (j->aborted) return;
    sl_http_stream_write(j->http, text, strlen(text));
    j->t_last_write_ms = sl_router_now_ms();
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

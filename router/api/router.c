/* sl_router: see router.h. This file holds the endpoints (routing each
 * request to its handler and dialect), the keep-alive tick and the router's
 * lifetime; a generation request becomes a job (job.h), which answers it. */
#include "router.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "job.h"
#include "metrics.h"
#include "router_impl.h"
#include "sl_log.h"

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

/* ------------------------------------------------------------- responses */

static void respond_json(sl_router *rt, sl_http_req *r, const char *route, int status, json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(o);
    sl_http_respond(r, status, "application/json", s ? s : "{}", s ? strlen(s) : 2, NULL);
    free(s);
    sl_metrics_request(&rt->metrics, route, status);
}

static void respond_err(sl_router *rt, sl_http_req *r, const char *route,
                        const sl_api_dialect *d, const sl_api_err *err)
{
    sl_api_respond_error(r, d, err->st, err->msg);
    sl_metrics_request(&rt->metrics, route, err->status);
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
                          rt->cfg.served_model_name, "max_model_len", sl_job_context_length(rt));
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
    sl_job_pd_metrics(rt, &o);
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

static void handle_generate(sl_router *rt, sl_http_req *r, json_t *body, sl_api_kind kind,
                            const char *route, const sl_api_dialect *d)
{
    sl_api_err err = {0};
    sl_job *j = sl_job_decode(&rt->cfg, route, kind, d, body, &err);
    if (!j) {
        respond_err(rt, r, route, d, &err);
        return;
    }
    sl_job_start(j, rt, r);
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
    handle_generate(rt, r, body, (sl_api_kind)routes[k].kind, route, d);
}

/* --------------------------------------------------------- keep-alive */

/* A stream whose client stopped reading would buffer without bound. */
#define SL_ROUTER_MAX_BACKLOG (16u << 20)

static void on_tick(uv_timer_t *t)
{
    sl_router *rt = t->data;
    double now = sl_router_now_ms();
    for (sl_job *j = rt->jobs, *nx; j; j = nx) {
        nx = j->next;
        if (!j->headers_sent || j->aborted) continue;
        if (sl_http_req_backlog(j->http) > SL_ROUTER_MAX_BACKLOG) {
            SL_LOGW("router", "%s: client is not reading its stream; aborting", j->id);
            j->aborted = 1;
            rt->metrics.aborted++;
            sl_job_fail(j, SL_API_STATUS_CLIENT_GONE, "client too slow");
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
    sl_job_pd_init(rt);
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
        sl_job_fail(j, SL_API_STATUS_UNAVAILABLE, "the router is shutting down");
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
    sl_job_pd_free_all(rt);
    sl_cluster_free(rt->cluster);
    sl_route_free(rt->route);
    free(rt);
}

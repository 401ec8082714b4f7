/* sl_router: see router.h. This file holds the endpoints (routing each
 * request to its handler and dialect), the keep-alive tick and the router's
 * lifetime; a generation request becomes a job (job.h), which answers it. */
#include "router.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "intake.h"
#include "job.h"
#include "metrics.h"
#include "router_impl.h"
#include "sl_file.h"
#include "sl_log.h"
#include "sl_version.h"

sl_router_config sl_router_config_default(void)
{
    return (sl_router_config){.host = "127.0.0.1",
                              .port = 30000,
                              .served_model_name = "default",
                              .keepalive_ms = 10000,
                              .inline_encode_bytes = 4096,
                              .max_n = 64,
                              .stats_interval_ms = 10000,
                              .migration_limit = 3,
                              .default_temperature = 1.0f,
                              .default_top_p = 1.0f,
                              .default_top_k = -1,
                              .http = sl_http_config_default(),
                              .route = sl_route_config_default(),
                              .cluster = sl_cluster_config_default()};
}

/* ------------------------------------------------------------- responses */

void sl_router_access_log(const sl_router *rt, const char *method, const char *route, int status,
                          int prompt_tokens, int completion_tokens, double t_arrival_ms)
{
    if (!sl_log_enabled(SL_LOG_INFO)) return;
    sl_log_write(SL_LOG_INFO, "access", "%s %s %d prompt_tokens=%d completion_tokens=%d %.1fms",
                 method, route, status, prompt_tokens, completion_tokens,
                 sl_router_now_ms() - t_arrival_ms);
}

/* The method of r, copied: r is gone once it has been answered. */
static void method_of(sl_http_req *r, char out[16])
{
    snprintf(out, 16, "%s", sl_http_req_method(r));
}

/* Answers r with body (counted in the metrics and the access log). */
static void respond_body(sl_router *rt, sl_http_req *r, const char *route, int status, const char *type,
                         const char *body, size_t len)
{
    char m[16];
    method_of(r, m);
    double t0 = sl_router_now_ms();
    sl_http_respond(r, status, type, body, len, NULL);
    sl_metrics_request(&rt->metrics, route, status);
    sl_router_access_log(rt, m, route, status, 0, 0, t0);
}

static void respond_json(sl_router *rt, sl_http_req *r, const char *route, int status, json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(o);
    respond_body(rt, r, route, status, "application/json", s ? s : "{}", s ? strlen(s) : 2);
    free(s);
}

static void respond_err(sl_router *rt, sl_http_req *r, const char *route,
                        const sl_api_dialect *d, const sl_api_err *err)
{
    char m[16];
    method_of(r, m);
    double t0 = sl_router_now_ms();
    sl_api_respond_error(r, d, err->st, err->msg);
    sl_metrics_request(&rt->metrics, route, err->status);
    sl_router_access_log(rt, m, route, err->status, 0, 0, t0);
}

/* ------------------------------------------------------------ endpoints */

static void handle_models(sl_router *rt, sl_http_req *r)
{
    json_t *m = json_pack("{s:s,s:s,s:i,s:s,s:s,s:i}", "id", rt->cfg.served_model_name, "object",
                          "model", "created", 0, "owned_by", "sluice", "root",
                          rt->cfg.served_model_name, "max_model_len", sl_job_context_length(rt));
    respond_json(rt, r, "/v1/models", 200, json_pack("{s:s,s:[o]}", "object", "list", "data", m));
}

static int alive_workers(const sl_router *rt)
{
    int alive = 0;
    for (int i = 0; i < sl_cluster_size(rt->cluster); i++) alive += sl_cluster_alive(rt->cluster, i);
    return alive;
}

/* Sums over the alive workers, for /metrics and the periodic stats line. */
typedef struct {
    int alive, running, queued;
    double hit, used, total; /* hit: sum of hit rates; used/total: KV pages */
} router_totals;

static router_totals router_cluster_totals(const sl_router *rt)
{
    router_totals t = {0};
    int n = sl_cluster_size(rt->cluster);
    for (int i = 0; i < n; i++) {
        sl_worker_info w;
        sl_cluster_info(rt->cluster, i, &w);
        if (!w.alive) continue;
        t.alive++;
        t.running += w.running;
        t.queued += w.queued;
        t.hit += w.cache_hit_rate;
        t.used += w.total_kv_pages - w.free_kv_pages;
        t.total += w.total_kv_pages;
    }
    return t;
}

/* 200 once a worker (group) answers, 503 before (the model is loading) and
 * whenever none does, so a load balancer or `curl --fail` waits for it. */
static void handle_health(sl_router *rt, sl_http_req *r)
{
    int alive = alive_workers(rt), n = sl_cluster_size(rt->cluster);
    const char *status = alive ? "ok" : rt->ever_ready ? "unavailable" : "starting";
    json_t *o = json_pack("{s:s,s:i,s:i}", "status", status, "workers", n, "workers_alive", alive);
    if (!alive)
        json_object_set_new(o, "message",
                            json_string(rt->ever_ready
                                            ? "no worker is alive"
                                            : "no worker is ready yet (the model is loading)"));
    respond_json(rt, r, "/health", alive ? 200 : 503, o);
}

/* /flush_cache (SGLang's): every alive worker drops the prefix-cache
 * entries no request holds, e.g. between benchmark runs (`sluice bench
 * --flush-cache`), and the routing tree forgets them. 200 when all flushed;
 * 400 when one refused because
 * requests run or wait there (nothing is flushed on that worker, as in
 * SGLang); 503 when none is alive or one failed. */
typedef struct flush_req {
    sl_router *rt;
    sl_http_req *r;
} flush_req;

static void on_flushed(void *ud, const sl_cluster_flush_result *res)
{
    flush_req *f = ud;
    sl_router *rt = f->rt;
    if (res->flushed == res->workers) {
        /* the routing tree's record of what each worker caches is stale now */
        for (int i = 0, n = sl_cluster_size(rt->cluster); i < n; i++) sl_route_forget(rt->route, i);
        char body[160];
        int n = snprintf(body, sizeof body, "Cache flushed: %lld KV pages freed on %d worker(s).\n",
                         (long long)res->freed_pages, res->workers);
        respond_body(rt, f->r, "/flush_cache", 200, "text/plain; charset=utf-8", body, (size_t)n);
    } else {
        sl_api_err err = {0};
        sl_api_fail(&err, res->failed ? SL_API_STATUS_UNAVAILABLE : SL_API_STATUS_INVALID,
                    "cache flushed on %d of %d workers: %s", res->flushed, res->workers, res->error);
        respond_err(rt, f->r, "/flush_cache", &sl_openai_chat, &err);
    }
    free(f);
}

static void handle_flush_cache(sl_router *rt, sl_http_req *r)
{
    sl_api_err err = {0};
    sl_err e = {0};
    flush_req *f = malloc(sizeof *f);
    if (!f) {
        sl_api_fail(&err, SL_API_STATUS_SERVER, "out of memory");
        return respond_err(rt, r, "/flush_cache", &sl_openai_chat, &err);
    }
    f->rt = rt;
    f->r = r;
    if (sl_cluster_flush_cache(rt->cluster, on_flushed, f, &e)) {
        free(f);
        sl_api_fail(&err, SL_API_STATUS_UNAVAILABLE, "cache not flushed: %s", e.msg);
        respond_err(rt, r, "/flush_cache", &sl_openai_chat, &err);
    }
}

static void handle_version(sl_router *rt, sl_http_req *r)
{
    respond_json(rt, r, "/version", 200,
                 json_pack("{s:s,s:s}", "version", SLUICE_VERSION, "git", SLUICE_GIT_DESCRIBE));
}

/* SGLang's /get_model_info, with what config.json says of the model. */
static void handle_model_info(sl_router *rt, sl_http_req *r)
{
    const char *mp = rt->cfg.model_path ? rt->cfg.model_path : rt->cfg.served_model_name;
    json_t *o = json_pack("{s:s,s:s,s:b,s:n,s:n,s:b,s:b,s:s,s:i}", "model_path", mp,
                          "tokenizer_path", rt->cfg.tokenizer_path ? rt->cfg.tokenizer_path : mp,
                          "is_generation", 1, "preferred_sampling_params", "weight_version",
                          "has_image_understanding", 0, "has_audio_understanding", 0,
                          "served_model_name", rt->cfg.served_model_name, "max_model_len",
                          sl_job_context_length(rt));
    char path[4096];
    json_t *c = json_load_file(sl_path_join(path, sizeof path, mp, "config.json"), 0, NULL);
    json_t *v;
    if (json_is_string(v = json_object_get(c, "model_type"))) json_object_set(o, "model_type", v);
    if (json_is_array(v = json_object_get(c, "architectures")))
        json_object_set(o, "architectures", v);
    json_decref(c);
    respond_json(rt, r, "/get_model_info", 200, o);
}

static void handle_server_info(sl_router *rt, sl_http_req *r)
{
    json_t *o = rt->cfg.server_args_json ? json_loads(rt->cfg.server_args_json, 0, NULL) : NULL;
    if (!json_is_object(o)) {
        json_decref(o);
        o = json_object();
    }
    json_object_set_new(o, "version", json_string(SLUICE_VERSION));
    int n = sl_cluster_size(rt->cluster), alive = alive_workers(rt);
    json_t *ws = json_array();
    for (int i = 0; i < n; i++) {
        sl_worker_info w;
        sl_cluster_info(rt->cluster, i, &w);
        json_array_append_new(
            ws, json_pack("{s:s,s:b,s:i,s:i,s:i,s:i,s:f}", "url", w.url, "alive", w.alive,
                          "running", w.running, "queued", w.queued, "free_kv_pages",
                          w.free_kv_pages, "total_kv_pages", w.total_kv_pages, "cache_hit_rate",
                          (double)w.cache_hit_rate));
    }
    json_object_set_new(o, "workers", ws);
    json_object_set_new(o, "workers_alive", json_integer(alive));
    respond_json(rt, r, "/get_server_info", 200, o);
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
    /* SGLang's names for the cluster's totals, so its dashboards work. */
    router_totals t = router_cluster_totals(rt);
    static const char *const sg[][2] = {
        {"sglang:num_running_reqs", "Requests running on the workers."},
        {"sglang:num_queue_reqs", "Requests queued on the workers."},
        {"sglang:gen_throughput", "Output tokens per second (last stats interval)."},
        {"sglang:cache_hit_rate", "Prefix cache hit rate (mean over alive workers)."},
        {"sglang:token_usage", "Share of the KV pool in use."}};
    double sv[] = {t.running, t.queued, rt->gen_throughput, t.alive ? t.hit / t.alive : 0,
                   t.total > 0 ? t.used / t.total : 0};
    for (int g = 0; g < 5; g++)
        sl_buf_printf(&o, "# HELP %s %s\n# TYPE %s gauge\n%s %g\n", sg[g][0], sg[g][1], sg[g][0],
                      sg[g][0], sv[g]);
    sl_job_pd_metrics(rt, &o);
    sl_http_respond(r, 200, "text/plain; version=0.0.4", o.data, o.len, NULL);
    sl_buf_free(&o);
    sl_metrics_request(&rt->metrics, "/metrics", 200);
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
                  {"/v1/responses", "POST", SL_API_CHAT, &sl_openai_responses},
                  {"/v1/messages", "POST", SL_API_MESSAGES, &sl_anthropic_messages},
                  {"/v1/messages/count_tokens", "POST", SL_API_MESSAGES, &sl_anthropic_messages},
                  {"/tokenize", "POST", SL_API_COMPLETIONS, &sl_openai_completions},
                  {"/detokenize", "POST", -1, &sl_openai_chat},
                  {"/v1/models", "GET", -1, &sl_openai_chat},
                  {"/health", "GET", -1, &sl_openai_chat},
                  {"/health_generate", "GET", -1, &sl_openai_completions},
                  {"/get_model_info", "GET", -1, &sl_openai_chat},
                  {"/get_server_info", "GET", -1, &sl_openai_chat},
                  {"/version", "GET", -1, &sl_openai_chat},
                  {"/metrics", "GET", -1, &sl_openai_chat},
                  {"/flush_cache", "POST", -1, &sl_openai_chat},
                  {"/flush_cache", "GET", -1, &sl_openai_chat}};
    /* the route of this path and method, else the path's first (405) */
    int k = -1;
    for (int i = 0; i < (int)(sizeof routes / sizeof routes[0]); i++)
        if (!strcmp(path, routes[i].path) && (k < 0 || !strcmp(method, routes[i].method))) k = i;
    sl_api_err err = {0};
    if (!strcmp(method, "OPTIONS") && rt->cfg.allow_origin) {
        /* CORS preflight: Access-Control-Allow-Origin comes from the HTTP
         * layer on every answer (http.allow_origin). */
        sl_http_respond(r, 204, "text/plain", "", 0,
                        "Access-Control-Allow-Methods: GET, POST, OPTIONS\r\n"
                        "Access-Control-Allow-Headers: Authorization, Content-Type, x-api-key, "
                        "anthropic-version, anthropic-beta\r\n"
                        "Access-Control-Max-Age: 86400\r\n");
        sl_metrics_request(&rt->metrics, "other", 204);
        return;
    }
    if (k < 0) {
        sl_api_fail(&err, SL_API_STATUS_NOT_FOUND, "no route %s %s", method, path);
        respond_err(rt, r, "other", &sl_openai_chat, &err);
        return;
    }
    const char *route = routes[k].path;
    const sl_api_dialect *d = routes[k].dialect;
    int head = !strcmp(method, "HEAD") && !strcmp(routes[k].method, "GET");
    if (strcmp(method, routes[k].method) && !head) {
        sl_api_fail(&err, SL_API_STATUS_METHOD, "%s takes %s, not %s", path, routes[k].method,
                    method);
        respond_err(rt, r, route, d, &err);
        return;
    }
    if (!sl_intake_open_route(rt, route) && !sl_intake_auth_ok(rt, r)) {
        sl_api_fail(&err, SL_API_STATUS_UNAUTHORIZED, "invalid or missing API key (Authorization: Bearer <key>)");
        respond_err(rt, r, route, d, &err);
        return;
    }
    if (!strcmp(route, "/health")) return handle_health(rt, r);
    if (!strcmp(route, "/v1/models")) return handle_models(rt, r);
    if (!strcmp(route, "/metrics")) return handle_metrics(rt, r);
    if (!strcmp(route, "/version")) return handle_version(rt, r);
    if (!strcmp(route, "/get_model_info")) return handle_model_info(rt, r);
    if (!strcmp(route, "/get_server_info")) return handle_server_info(rt, r);
    if (!strcmp(route, "/health_generate")) {
        /* One token through a worker: 200 when the engine answers. */
        if (!alive_workers(rt)) {
            sl_api_fail(&err, SL_API_STATUS_UNAVAILABLE, "no worker is alive");
            respond_err(rt, r, route, d, &err);
            return;
        }
        json_t *probe = json_pack("{s:[i],s:i,s:f}", "prompt", 0, "max_tokens", 1,
                                  "temperature", 0.0);
        sl_job *j = sl_job_decode(&rt->cfg, route, SL_API_COMPLETIONS, d, probe, &err); /* owns probe */
        if (!j) {
            respond_err(rt, r, route, d, &err);
            return;
        }
        sl_job_start(j, rt, r);
        return;
    }
    if (rt->shutting_down) {
        sl_api_fail(&err, SL_API_STATUS_UNAVAILABLE, "the router is shutting down");
        respond_err(rt, r, route, d, &err);
        return;
    }
    if (!strcmp(route, "/flush_cache")) return handle_flush_cache(rt, r);
    /* JSON, decoding and /detokenize: off the loop when the body is big. */
    sl_intake_start(rt, r, route, routes[k].kind, d);
}

/* ---------------------------------------------------- periodic stats */

/* Every stats_interval_ms: the throughput gauge, and at info (when there was
 * traffic) one line like SGLang's "Decode batch" lines. */
static void log_stats(sl_router *rt, double now)
{
    double dt = (now - rt->t_stats_ms) / 1e3;
    uint64_t out = rt->out_tokens_live, in = rt->metrics.prompt_tokens;
    uint64_t d_out = out - rt->stats_out_tokens, d_in = in - rt->stats_in_tokens;
    rt->gen_throughput = dt > 0 ? (double)d_out / dt : 0;
    rt->t_stats_ms = now;
    rt->stats_out_tokens = out;
    rt->stats_in_tokens = in;
    if (dt <= 0 || (!d_out && !d_in && !rt->njobs)) return;
    int n = sl_cluster_size(rt->cluster);
    router_totals t = router_cluster_totals(rt);
    SL_LOGI("stats",
            "workers %d/%d, #running-req %d, #queue-req %d, #router-req %d, gen throughput "
            "%.1f tok/s, prompt %.1f tok/s, cache hit rate %.1f%%, token usage %.2f",
            t.alive, n, t.running, t.queued, rt->njobs, rt->gen_throughput, (double)d_in / dt,
            t.alive ? 100 * t.hit / t.alive : 0.0, t.total > 0 ? t.used / t.total : 0.0);
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
    if (rt->cfg.stats_interval_ms && now - rt->t_stats_ms >= rt->cfg.stats_interval_ms)
        log_stats(rt, now);
}

/* ------------------------------------------------------------ lifetime */

/* A worker that died may come back empty (a restart): forget what the
 * route tree believes it caches. */
static void on_worker_event(void *ud, int worker, int alive)
{
    sl_router *rt = ud;
    if (!alive) sl_route_forget(rt->route, worker);
    if (alive && !rt->ever_ready) {
        rt->ever_ready = 1;
        SL_LOGI("router", "ready: worker %d answers; serving requests", worker);
    }
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
    sl_http_set_gate(rt->http, sl_intake_gate);
    rt->t_stats_ms = sl_router_now_ms();
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

int sl_router_worker_ready(const sl_router *rt, int i)
{
    if (i < 0 || i >= sl_cluster_size(rt->cluster)) return 0;
    sl_worker_info wi;
    sl_cluster_info(rt->cluster, i, &wi);
    return wi.model && wi.model[0];
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
    if (rt->drained) rt->drained(rt->done_ud);
    sl_cluster_close(rt->cluster);
    uv_close((uv_handle_t *)&rt->tick, on_tick_closed);
}

void sl_router_shutdown(sl_router *rt, void (*drained)(void *), void (*done)(void *), void *ud)
{
    if (rt->shutting_down) return;
    rt->shutting_down = 1;
    rt->drained = drained;
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

/* sl_router: the router process's core. It owns the HTTP server, the worker
 * cluster and the routing policy on one libuv loop and serves:
 *
 *   POST /v1/chat/completions   POST /v1/completions   POST /v1/messages
 *   GET  /v1/models   POST /tokenize   POST /detokenize   GET /health   GET /metrics
 *   GET  /health_generate   GET /get_model_info   GET /get_server_info   GET /version
 *   (every GET also answers HEAD; OPTIONS preflights when allow_origin is set)
 *
 * (docs/api.md lists every field). A request's life:
 *
 *   HTTP body ─▶ JSON ─▶ decode (api_openai.c / api_anthropic.c) ─▶ job
 *   job ─▶ render + tokenize (inline when short, libuv pool when long)
 *       ─▶ route (sl_route) ─▶ one GenerateRequest per choice (sl_cluster)
 *   token chunks ─▶ detokenize ─▶ stop strings (held back while partial)
 *       ─▶ reasoning/tool parsers ─▶ SSE deltas or one JSON at the end
 *
 * The client going away aborts every generation of its request at once.
 * A worker dying does not end a request: each of its unfinished choices is
 * resubmitted to another alive worker with the prompt and the token ids
 * already received as GenerateRequest.output_ids, so the stream goes on with
 * no token lost or repeated (up to migration_limit times per choice).
 *
 *   sl_router_config cfg = sl_router_config_default();
 *   cfg.text = &ops; cfg.text_impl = impl; cfg.served_model_name = "qwen3";
 *   sl_router *rt; sl_router_new(&rt, loop, &cfg, &e);
 *   sl_router_add_worker(rt, "tcp://10.0.0.5:30000", &e);
 *   uv_run(loop, UV_RUN_DEFAULT);   // until sl_router_shutdown finishes
 *   sl_router_free(rt);
 *
 * Threads: all functions on the loop thread.
 */
#ifndef SL_ROUTER_H
#define SL_ROUTER_H

#include <uv.h>

#include "cluster.h"
#include "http.h"
#include "route.h"
#include "sl_err.h"
#include "text.h"

typedef struct sl_router_config {
    const char *host; /* default 127.0.0.1 */
    int port;         /* 0: any (see sl_router_port) */
    const char *served_model_name;
    const char *api_key;        /* NULL: no auth */
    int context_length;         /* 0: the smallest reported by the workers */
    unsigned keepalive_ms;      /* SSE comment after this long without output */
    size_t inline_encode_bytes; /* longer prompts are tokenized on the pool */
    int max_n;                  /* choices per request */
    /* times one choice may move to another worker after its worker died
     * (prompt + tokens so far are resent; 0: the client gets the error) */
    int migration_limit;
    /* --pd-disaggregation: choices run on decode workers with a prefill
     * companion (docs/disaggregation.md) */
    int pd;
    /* --grammar-backend none: requests that constrain their output get a 400 */
    int no_constraints;
    /* --split-special-tokens: special tokens spelled in a request's text
     * (messages, tools, text prompts) are encoded as plain text, not as
     * control tokens; a request's split_special_tokens overrides it */
    int split_special_tokens;
    /* sampling for fields a request leaves out (generation_config.json) */
    float default_temperature, default_top_p, default_min_p;
    int default_top_k;
    /* what GET /get_model_info and /get_server_info report */
    const char *model_path, *tokenizer_path;
    const char *server_args_json; /* a JSON object of the command's flags (NULL: {}) */
    int metrics_require_key;      /* /metrics needs the API key too (default: open) */
    const char *allow_origin;     /* CORS: Access-Control-Allow-Origin value (NULL: none) */
    unsigned stats_interval_ms;   /* periodic load line at info while busy (0: none) */
    sl_http_config http;
    sl_route_config route;
    sl_cluster_config cluster;
    const sl_text_ops *text;
    void *text_impl;
} sl_router_config;

sl_router_config sl_router_config_default(void);

typedef struct sl_router sl_router;

/* Starts listening; workers are added afterwards. */
sl_status sl_router_new(sl_router **out, uv_loop_t *loop, const sl_router_config *cfg,
                        sl_err *e);
sl_status sl_router_add_worker(sl_router *rt, const char *url, sl_err *e);
sl_status sl_router_add_worker_dns(sl_router *rt, const char *host, int port, sl_err *e);
int sl_router_port(const sl_router *rt);
/* 1 once worker i (in the order added) has sent a load report: it loaded its
 * model and served, so an exit later is a crash, not a failed start. */
int sl_router_worker_ready(const sl_router *rt, int i);
/* Stops accepting, lets in-flight responses finish (up to the HTTP drain
 * timeout), calls drained(ud) (may be NULL), closes the workers' sockets;
 * then done(ud). */
void sl_router_shutdown(sl_router *rt, void (*drained)(void *ud), void (*done)(void *ud), void *ud);
void sl_router_free(sl_router *rt);

#endif

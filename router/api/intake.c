/* intake: see intake.h. */
#include "intake.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api.h"
#include "job.h"
#include "router_impl.h"

typedef struct intake {
    uv_work_t work;
    sl_router *rt;
    sl_http_req *r;
    const char *route;
    int kind; /* -1: /detokenize */
    const sl_api_dialect *d;
    sl_job *job;     /* decoded (generation routes) */
    sl_buf text;     /* decoded (/detokenize) */
    sl_api_err err;  /* when failed */
    int failed;
} intake;

/* ------------------------------------------------------------- auth */

int sl_intake_auth_ok(const sl_router *rt, const sl_http_req *r)
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
    for (size_t i = 0; i < a; i++)
        diff |= (unsigned char)key[i] ^ (unsigned char)(i < b ? given[i] : 0);
    return diff == 0;
}

int sl_intake_open_route(const sl_router *rt, const char *route)
{
    /* Probes and scrapers carry no key (SGLang leaves these open too). */
    return !strcmp(route, "/health") || !strcmp(route, "/health_generate") ||
           !strcmp(route, "/version") ||
           (!strcmp(route, "/metrics") && !rt->cfg.metrics_require_key);
}

int sl_intake_gate(sl_http_req *r, void *ud)
{
    const sl_router *rt = ud;
    /* open routes answer without a key; on_request answers the rest (401 in
     * the route's dialect) from headers alone. */
    return !sl_intake_open_route(rt, sl_http_req_path(r)) && !sl_intake_auth_ok(rt, r);
}

/* ------------------------------------------------------------- limits */

int sl_intake_json_check(const char *s, size_t n, char *msg, size_t cap)
{
    size_t depth = 0, containers = 0, values = 1;
    int in_str = 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (in_str) {
            if (ch == '\\')
                i++;
            else if (ch == '"')
                in_str = 0;
            continue;
        }
        switch (ch) {
        case '"': in_str = 1; break;
        case '{':
        case '[':
            if (++depth > SL_INTAKE_MAX_DEPTH) {
                snprintf(msg, cap, "JSON body nested deeper than %d levels", SL_INTAKE_MAX_DEPTH);
                return -1;
            }
            if (++containers > SL_INTAKE_MAX_CONTAINERS) {
                snprintf(msg, cap, "JSON body has more than %d objects and arrays",
                         SL_INTAKE_MAX_CONTAINERS);
                return -1;
            }
            break;
        case '}':
        case ']':
            if (depth) depth--;
            break;
        case ',': /* every value but a container's first follows a comma */
            if (++values > SL_INTAKE_MAX_VALUES) {
                snprintf(msg, cap, "JSON body has more than %d values", SL_INTAKE_MAX_VALUES);
                return -1;
            }
            break;
        default: break;
        }
    }
    return 0;
}

/* ------------------------------------------------------------- work */

static void detokenize(intake *in, json_t *body)
{
    const sl_router_config *cfg = &in->rt->cfg;
    json_t *toks = json_object_get(body, "tokens");
    if (!json_is_array(toks)) {
        in->failed = 1;
        sl_api_fail(&in->err, SL_API_STATUS_INVALID, "tokens: expected an array of token ids");
        return;
    }
    sl_tok_ids ids = {0};
    size_t i;
    json_t *v;
    json_array_foreach(toks, i, v)
    {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX) {
            sl_tok_ids_free(&ids);
            in->failed = 1;
            sl_api_fail(&in->err, SL_API_STATUS_INVALID, "tokens[%zu]: expected a token id", i);
            return;
        }
        sl_tok_ids_push(&ids, (int32_t)json_integer_value(v));
    }
    sl_err e = {0};
    if (cfg->text->decode(cfg->text_impl, ids.v, ids.n, &in->text, &e) != SL_OK) {
        in->failed = 1;
        sl_api_fail(&in->err, SL_API_STATUS_INVALID, "tokens: %s", e.msg);
    }
    sl_tok_ids_free(&ids);
}

/* Pool (or loop, for small bodies): scan, parse, decode. */
static void intake_run(intake *in)
{
    size_t blen;
    const char *b = sl_http_req_body(in->r, &blen);
    char msg[160];
    if (sl_intake_json_check(b, blen, msg, sizeof msg)) {
        in->failed = 1;
        sl_api_fail(&in->err, SL_API_STATUS_INVALID, "%s", msg);
        return;
    }
    json_error_t je;
    json_t *body = json_loadb(b, blen, JSON_REJECT_DUPLICATES, &je);
    if (!body || !json_is_object(body)) {
        in->failed = 1;
        if (body)
            sl_api_fail(&in->err, SL_API_STATUS_INVALID, "the body must be a JSON object");
        else
            sl_api_fail(&in->err, SL_API_STATUS_INVALID,
                        "malformed JSON body: %s (line %d, column %d)", je.text, je.line,
                        je.column);
        json_decref(body);
        return;
    }
    if (in->kind < 0) {
        detokenize(in, body);
        json_decref(body);
        return;
    }
    in->job = sl_job_decode(&in->rt->cfg, in->route, (sl_api_kind)in->kind, in->d, body, &in->err);
    if (!in->job) in->failed = 1;
}

/* Loop: answer or start the job. */
static void intake_finish(intake *in)
{
    sl_router *rt = in->rt;
    sl_http_req *r = in->r;
    if (!in->failed && sl_http_req_aborted(r)) {
        in->failed = 1;
        rt->metrics.aborted++;
        sl_api_fail(&in->err, SL_API_STATUS_CLIENT_GONE, "client closed the connection");
    } else if (!in->failed && rt->shutting_down) {
        in->failed = 1;
        sl_api_fail(&in->err, SL_API_STATUS_UNAVAILABLE, "the router is shutting down");
    }
    if (in->failed) {
        if (in->job) sl_job_free(in->job);
        sl_api_respond_error(r, in->d, in->err.st, in->err.msg);
        sl_metrics_request(&rt->metrics, in->route, in->err.status);
    } else if (in->kind < 0) {
        json_t *o = json_pack("{s:s%}", "text", in->text.data ? in->text.data : "", in->text.len);
        char *s = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
        json_decref(o);
        sl_http_respond(r, 200, "application/json", s ? s : "{}", s ? strlen(s) : 2, NULL);
        free(s);
        sl_metrics_request(&rt->metrics, in->route, 200);
    } else {
        sl_job_start(in->job, rt, r);
    }
    sl_buf_free(&in->text);
    free(in);
}

static void work_run(uv_work_t *w) { intake_run(w->data); }

static void work_done(uv_work_t *w, int status)
{
    intake *in = w->data;
    (void)status; /* never cancelled: nothing calls uv_cancel on it */
    intake_finish(in);
}

void sl_intake_start(sl_router *rt, sl_http_req *r, const char *route, int kind,
                     const sl_api_dialect *d)
{
    intake *in = calloc(1, sizeof *in);
    if (!in) {
        sl_api_respond_error(r, d, SL_API_STATUS_SERVER, "out of memory");
        sl_metrics_request(&rt->metrics, route, 500);
        return;
    }
    *in = (intake){.rt = rt, .r = r, .route = route, .kind = kind, .d = d};
    size_t blen;
    sl_http_req_body(r, &blen);
    in->work.data = in;
    /* A big body would stall every other client for as long as it takes to
     * scan, parse and decode (seconds for 32 MiB): the pool does it. */
    if (blen > SL_INTAKE_INLINE_BYTES &&
        uv_queue_work(rt->loop, &in->work, work_run, work_done) == 0)
        return;
    intake_run(in);
    intake_finish(in);
}

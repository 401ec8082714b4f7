/* The load generator of `sluice bench`: one libuv loop, keep-alive HTTP/1.1
 * connections parsed with llhttp, one request in flight per connection and
 * at most max_concurrency connections, requests released by a Poisson (or
 * all-at-once) arrival process. Timing follows sglang's OpenAI completions
 * client: a request's clock starts when it leaves the queue (connection
 * set-up included), TTFT is the first chunk that carries text, ITLs are the
 * gaps between such chunks, E2E ends at the last event of the stream.
 *
 * Every job completes exactly once (job_finish); a connection is freed only
 * in its close callback; a write owns its buffers until its callback. */
#include <jansson.h>
#include <llhttp.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "bench.h"
#include "sl_buf.h"
#include "sl_log.h"

#define BODY_CAP (16u << 20) /* non-streamed bodies kept for parsing or error text */

typedef enum job_kind { JOB_COMPLETION, JOB_MODELS, JOB_FLUSH } job_kind;

typedef struct job {
    job_kind kind;
    const sl_bench_prompt *prompt;
    int max_tokens;
    sl_bench_outcome *out;
    uint64_t t_start, t_last_tok, t_last_event; /* uv_hrtime ns */
    int status, streaming, got_token, done;
    long long usage;  /* completion_tokens reported by the server, -1 if none */
    long long tokens; /* tokens seen so far */
    sl_bench_sse sse;
    sl_buf body;
    struct job *next; /* pending queue */
} job;

typedef struct client client;

struct write_req;

typedef struct conn {
    uv_tcp_t tcp;
    uv_connect_t connect_req;
    llhttp_t parser;
    client *c;
    job *job;
    int connected, closing, msg_done;
    int reused, got_bytes; /* carried a request before; bytes of this response seen */
    uint64_t now; /* arrival time of the bytes being parsed */
    struct write_req *pending; /* request waiting for the connection to open */
    struct conn *next_idle;
    char rbuf[64 * 1024];
} conn;

typedef struct write_req {
    uv_write_t req;
    sl_buf head, body;
} write_req;

struct client {
    uv_loop_t loop;
    llhttp_settings_t settings;
    const sl_bench_target *t;
    struct sockaddr_storage addr;
    char hostport[300], model_json[1024];
    int stream, ignore_eos, limit;
    const char *extra_body;
    job *jobs;
    int n_jobs, n_done, in_flight;
    job *pend_head, *pend_tail;
    conn *idle;
    /* arrivals: job i joins the queue at arrive[i]; the run lasts at least
     * until arrive_end */
    uv_timer_t timer;
    uint64_t *arrive, arrive_end, t0, t_last_done;
    int next_arrival, timer_open;
};

/* ---- job completion ---------------------------------------------------------------- */

static int run_over(const client *c);
static void maybe_end(client *c);
static void pump(client *c);

static void job_finish(client *c, job *j, int ok, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void job_finish(client *c, job *j, int ok, const char *fmt, ...)
{
    if (j->done) return;
    j->done = 1;
    uint64_t now = uv_hrtime();
    sl_bench_outcome *o = j->out;
    o->ok = ok;
    if (!ok && fmt) {
        char msg[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        o->error = strdup(msg);
    }
    o->start_s = (double)(j->t_start - c->t0) * 1e-9;
    sl_bench_sse_free(&j->sse);
    if (j->kind == JOB_COMPLETION) sl_buf_free(&j->body); /* others: the caller reads it */
    c->in_flight--;
    c->n_done++;
    c->t_last_done = now;
    maybe_end(c);
}

/* ---- streamed completions ----------------------------------------------------------- */

static int itl_push(sl_bench_outcome *o, double v)
{
    if (o->n_itl == o->cap_itl) {
        int cap = o->cap_itl ? 2 * o->cap_itl : 256;
        double *p = realloc(o->itl, (size_t)cap * sizeof *p);
        if (!p) return -1;
        o->itl = p;
        o->cap_itl = cap;
    }
    o->itl[o->n_itl++] = v;
    return 0;
}

/* A chunk with text arrived at `now`; usage is its completion_tokens or -1.
 * A chunk that brings k tokens (known from usage) counts as k gaps of 1/k of
 * its wait, as sglang does where it knows per-chunk token counts. */
static int on_token(job *j, uint64_t now, long long usage)
{
    if (!j->got_token) {
        j->got_token = 1;
        j->out->ttft_s = (double)(now - j->t_start) * 1e-9;
        j->tokens = usage > 1 ? usage : 1;
        j->t_last_tok = now;
        return 0;
    }
    long long k = usage >= 0 ? usage - j->tokens : 1;
    if (k <= 0) return 0; /* text without a new token (detokenizer catch-up) */
    double gap = (double)(now - j->t_last_tok) * 1e-9 / (double)k;
    for (long long i = 0; i < k; i++)
        if (itl_push(j->out, gap)) return -1;
    j->tokens += k;
    j->t_last_tok = now;
    return 0;
}

/* The usage.completion_tokens of a response object, or -1. */
static long long usage_tokens(json_t *obj)
{
    json_t *ct = json_object_get(json_object_get(obj, "usage"), "completion_tokens");
    return json_is_integer(ct) ? json_integer_value(ct) : -1;
}

static const char *first_text(json_t *obj)
{
    json_t *text = json_object_get(json_array_get(json_object_get(obj, "choices"), 0), "text");
    return json_is_string(text) ? json_string_value(text) : NULL;
}

/* The message of an OpenAI error object ({"error": {"message": ...}} or
 * {"error": "..."}, also {"message": ...}), or NULL. */
static const char *error_message(json_t *obj)
{
    json_t *err = json_object_get(obj, "error");
    if (json_is_string(err)) return json_string_value(err);
    json_t *msg = json_object_get(err ? err : obj, "message");
    return json_is_string(msg) ? json_string_value(msg) : (err ? "error object" : NULL);
}

static int on_event(void *arg, const char *data, size_t len)
{
    conn *k = arg;
    job *j = k->job;
    j->t_last_event = k->now;
    if (len == 6 && !memcmp(data, "[DONE]", 6)) return 0;
    json_error_t je;
    json_t *ev = json_loadb(data, len, 0, &je);
    if (!ev) {
        job_finish(k->c, j, 0, "bad event in the stream (%s): %.80s", je.text, data);
        return 1;
    }
    const char *err = error_message(ev);
    if (err && json_object_get(ev, "error")) {
        job_finish(k->c, j, 0, "error event in the stream: %.200s", err);
        json_decref(ev);
        return 1;
    }
    long long u = usage_tokens(ev);
    const char *text = first_text(ev);
    int rc = 0;
    if (text && *text) rc = on_token(j, k->now, u);
    if (u >= 0) j->usage = u;
    json_decref(ev);
    if (rc) job_finish(k->c, j, 0, "out of memory recording latencies");
    return rc;
}

/* ---- response completion ------------------------------------------------------------ */

static void finish_error_status(client *c, job *j)
{
    json_t *body = j->body.len ? json_loadb(j->body.data, j->body.len, 0, NULL) : NULL;
    const char *msg = body ? error_message(body) : NULL;
    if (!msg) msg = j->body.len ? j->body.data : "";
    job_finish(c, j, 0, "HTTP %d: %.300s", j->status, msg);
    json_decref(body);
}

static void finish_response(conn *k)
{
    client *c = k->c;
    job *j = k->job;
    if (j->done) return;
    if (j->status != 200) {
        finish_error_status(c, j);
        return;
    }
    sl_bench_outcome *o = j->out;
    uint64_t now = k->now;
    if (j->kind != JOB_COMPLETION) {
        job_finish(c, j, 1, NULL);
        return;
    }
    if (j->streaming) {
        if (sl_bench_sse_finish(&j->sse, on_event, k) || j->done) return;
        if (!j->t_last_event) { /* e.g. a server that ignored "stream": true */
            job_finish(c, j, 0, "the response carried no server-sent events");
            return;
        }
        o->latency_s = (double)(j->t_last_event - j->t_start) * 1e-9;
        o->n_out = (int)(j->usage >= 0 ? j->usage : j->tokens);
        job_finish(c, j, 1, NULL);
        return;
    }
    /* not streamed: the whole answer is the first (and only) chunk */
    json_error_t je;
    json_t *r = json_loadb(j->body.data ? j->body.data : "", j->body.len, 0, &je);
    if (!r) {
        job_finish(c, j, 0, "bad JSON response (%s)", je.text);
        return;
    }
    o->latency_s = (double)(now - j->t_start) * 1e-9;
    const char *text = first_text(r);
    if (text && *text) o->ttft_s = o->latency_s;
    long long u = usage_tokens(r);
    o->n_out = (int)(u >= 0 ? u : j->max_tokens);
    json_decref(r);
    job_finish(c, j, 1, NULL);
}

/* ---- llhttp callbacks ----------------------------------------------------------------- */

static int on_message_begin(llhttp_t *p)
{
    conn *k = p->data;
    return k->job && !k->msg_done ? 0 : -1; /* a response nobody asked for */
}

static int on_headers_complete(llhttp_t *p)
{
    conn *k = p->data;
    job *j = k->job;
    j->status = p->status_code;
    j->streaming = j->kind == JOB_COMPLETION && j->status == 200 && k->c->stream;
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    conn *k = p->data;
    job *j = k->job;
    if (j->done) return -1;
    if (j->streaming) {
        int rc = sl_bench_sse_feed(&j->sse, at, len, on_event, k);
        if (rc < 0) job_finish(k->c, j, 0, "out of memory parsing the stream");
        return rc ? -1 : 0;
    }
    if (j->body.len + len > BODY_CAP) len = BODY_CAP - j->body.len;
    if (len && sl_buf_append(&j->body, at, len)) {
        job_finish(k->c, j, 0, "out of memory reading the response");
        return -1;
    }
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    conn *k = p->data;
    k->msg_done = 1;
    return HPE_PAUSED; /* one response per request: stop here */
}

/* ---- connections ------------------------------------------------------------------------ */

static void on_close(uv_handle_t *h) { free(h->data); }

static void conn_close(conn *k)
{
    if (k->closing) return;
    k->closing = 1;
    client *c = k->c;
    for (conn **pp = &c->idle; *pp; pp = &(*pp)->next_idle)
        if (*pp == k) {
            *pp = k->next_idle;
            break;
        }
    uv_close((uv_handle_t *)&k->tcp, on_close);
}

/* The job on k is over (finished already or failing now): k goes back to
 * the idle pool if it can carry another request, else closes. */
static void conn_release(conn *k, int reusable)
{
    job *j = k->job;
    k->job = NULL;
    if (j && !j->done) job_finish(k->c, j, 0, "connection lost");
    if (reusable && !k->closing && !run_over(k->c)) {
        k->next_idle = k->c->idle;
        k->c->idle = k;
    } else {
        conn_close(k);
    }
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    conn *k = h->data;
    *buf = uv_buf_init(k->rbuf, sizeof k->rbuf);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    conn *k = s->data;
    client *c = k->c;
    k->now = uv_hrtime();
    if (nread == 0) return;
    job *j = k->job;
    if (nread < 0) {
        if (j && !j->done && k->reused && !k->got_bytes) {
            /* the server dropped a kept-alive connection as we reused it:
             * not the request's fault, send it again on a fresh one */
            SL_LOGD("bench", "%s dropped a kept-alive connection: sending again", c->hostport);
            k->job = NULL;
            c->in_flight--;
            j->next = c->pend_head;
            c->pend_head = j;
            if (!c->pend_tail) c->pend_tail = j;
            conn_close(k);
            pump(c);
            return;
        }
        if (j && !j->done) {
            /* a response delimited by the end of the connection ends here */
            if (nread == UV_EOF && llhttp_finish(&k->parser) == HPE_OK && k->msg_done)
                finish_response(k);
            else if (nread == UV_EOF)
                job_finish(c, j, 0, "server closed the connection before the response ended");
            else
                job_finish(c, j, 0, "reading the response: %s", uv_strerror((int)nread));
        }
        conn_release(k, 0);
        pump(c);
        return;
    }
    if (!j) { /* bytes on an idle connection: not a conversation we can follow */
        conn_close(k);
        return;
    }
    k->got_bytes = 1;
    llhttp_errno_t rc = llhttp_execute(&k->parser, buf->base, (size_t)nread);
    if (rc == HPE_PAUSED && k->msg_done) {
        size_t used = (size_t)(llhttp_get_error_pos(&k->parser) - buf->base);
        int keep = llhttp_should_keep_alive(&k->parser) && used == (size_t)nread;
        finish_response(k);
        conn_release(k, keep);
        pump(c);
    } else if (rc != HPE_OK) {
        if (!j->done)
            job_finish(c, j, 0, "bad HTTP response: %s (%s)", llhttp_errno_name(rc),
                       llhttp_get_error_reason(&k->parser));
        conn_release(k, 0);
        pump(c);
    }
}

static void on_write(uv_write_t *req, int status)
{
    write_req *w = req->data;
    conn *k = req->handle->data;
    if (status < 0 && status != UV_ECANCELED && k->job && !k->job->done) {
        job_finish(k->c, k->job, 0, "sending the request: %s", uv_strerror(status));
        conn_release(k, 0);
        pump(k->c);
    }
    sl_buf_free(&w->head);
    sl_buf_free(&w->body);
    free(w);
}

static void write_free(write_req *w)
{
    if (!w) return;
    sl_buf_free(&w->head);
    sl_buf_free(&w->body);
    free(w);
}

/* Hands w to libuv (which gives it back in on_write) or fails k's job. */
static void send_request(conn *k, write_req *w)
{
    uv_buf_t bufs[2] = {uv_buf_init(w->head.data, (unsigned)w->head.len),
                        uv_buf_init(w->body.data, (unsigned)w->body.len)};
    w->req.data = w;
    int rc = uv_write(&w->req, (uv_stream_t *)&k->tcp, bufs, w->body.len ? 2 : 1, on_write);
    if (rc) {
        write_free(w);
        job_finish(k->c, k->job, 0, "sending the request: %s", uv_strerror(rc));
        conn_release(k, 0);
    }
}

static void on_connect(uv_connect_t *req, int status)
{
    conn *k = req->data;
    client *c = k->c;
    write_req *w = k->pending;
    k->pending = NULL;
    int rc = status < 0 ? status : uv_read_start((uv_stream_t *)&k->tcp, on_alloc, on_read);
    if (rc) {
        write_free(w);
        if (status == UV_ECANCELED) return; /* closed while connecting */
        job_finish(c, k->job, 0, "cannot connect to %s: %s", c->hostport, uv_strerror(rc));
        conn_release(k, 0);
        pump(c);
        return;
    }
    k->connected = 1;
    send_request(k, w);
    pump(c);
}

/* Starts j on an idle connection, or on a new one while under the cap. */
static void start_job(client *c, job *j, write_req *w)
{
    j->t_start = uv_hrtime(); /* connection set-up counts, as in sglang's client */
    conn *k = c->idle;
    if (k) {
        c->idle = k->next_idle;
        k->reused = 1;
    } else {
        k = calloc(1, sizeof *k);
        if (!k) {
            write_free(w);
            job_finish(c, j, 0, "out of memory opening a connection");
            return;
        }
        k->c = c;
        int rc = uv_tcp_init(&c->loop, &k->tcp);
        if (rc) {
            free(k);
            write_free(w);
            job_finish(c, j, 0, "socket: %s", uv_strerror(rc));
            return;
        }
        k->tcp.data = k;
        k->connect_req.data = k;
        uv_tcp_nodelay(&k->tcp, 1);
        rc = uv_tcp_connect(&k->connect_req, &k->tcp, (struct sockaddr *)&c->addr, on_connect);
        if (rc) {
            write_free(w);
            job_finish(c, j, 0, "cannot connect to %s: %s", c->hostport, uv_strerror(rc));
            conn_close(k);
            return;
        }
    }
    k->job = j;
    k->msg_done = k->got_bytes = 0;
    llhttp_init(&k->parser, HTTP_RESPONSE, &c->settings);
    k->parser.data = k;
    if (k->connected) send_request(k, w);
    else k->pending = w;
}

/* ---- requests ------------------------------------------------------------------------------ */

static int put_request_head(client *c, sl_buf *h, const char *method, const char *path,
                            size_t body_len)
{
    int rc = sl_buf_printf(h, "%s %s%s HTTP/1.1\r\nHost: %s\r\nUser-Agent: sluice-bench\r\n"
                              "Accept: */*\r\n", method, c->t->prefix, path, c->hostport);
    if (c->t->api_key) rc |= sl_buf_printf(h, "Authorization: Bearer %s\r\n", c->t->api_key);
    if (body_len) rc |= sl_buf_puts(h, "Content-Type: application/json\r\n");
    if (body_len || !strcmp(method, "POST")) rc |= sl_buf_printf(h, "Content-Length: %zu\r\n", body_len);
    return rc | sl_buf_puts(h, "\r\n");
}

/* The path (and *method) of a request that is not a completion. */
static const char *admin_path(job_kind kind, const char **method)
{
    *method = kind == JOB_MODELS ? "GET" : "POST";
    return kind == JOB_MODELS ? "/v1/models" : "/flush_cache";
}

/* sglang's completions payload, with the prompt as token ids. */
static write_req *build_completion(client *c, const job *j)
{
    write_req *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    sl_buf *b = &w->body;
    int rc = sl_buf_printf(b, "{\"model\":%s,\"prompt\":[", c->model_json);
    /* ids by hand: printf per id would cost more than the request's own
     * network time on long prompts, delaying the reads of other streams */
    rc |= sl_buf_reserve(b, (size_t)j->prompt->n_in * 12);
    for (int i = 0; i < j->prompt->n_in && !rc; i++) {
        char digits[12];
        int nd = 0;
        uint32_t v = (uint32_t)j->prompt->ids[i];
        do digits[nd++] = (char)('0' + v % 10);
        while ((v /= 10));
        if (i) b->data[b->len++] = ',';
        while (nd) b->data[b->len++] = digits[--nd];
    }
    if (!rc) b->data[b->len] = 0;
    rc |= sl_buf_printf(b, "],\"temperature\":0.0,\"best_of\":1,\"max_tokens\":%d,\"stream\":%s,"
                           "\"ignore_eos\":%s",
                        j->max_tokens, c->stream ? "true" : "false",
                        c->ignore_eos ? "true" : "false");
    if (c->stream) rc |= sl_buf_puts(b, ",\"stream_options\":{\"include_usage\":true}");
    if (c->extra_body) rc |= sl_buf_printf(b, ",%s", c->extra_body);
    rc |= sl_buf_puts(b, "}");
    rc |= put_request_head(c, &w->head, "POST", "/v1/completions", b->len);
    if (rc) {
        write_free(w);
        return NULL;
    }
    return w;
}

/* Starts queued jobs while the concurrency cap allows. */
static void pump(client *c)
{
    while (c->pend_head && (!c->limit || c->in_flight < c->limit)) {
        job *j = c->pend_head;
        c->pend_head = j->next;
        if (!c->pend_head) c->pend_tail = NULL;
        c->in_flight++;
        write_req *w = NULL;
        if (j->kind == JOB_COMPLETION) {
            w = build_completion(c, j);
        } else if ((w = calloc(1, sizeof *w))) {
            const char *method, *path = admin_path(j->kind, &method);
            if (put_request_head(c, &w->head, method, path, 0)) {
                write_free(w);
                w = NULL;
            }
        }
        if (!w) {
            j->t_start = uv_hrtime();
            job_finish(c, j, 0, "out of memory building the request");
            continue;
        }
        start_job(c, j, w);
    }
}

/* ---- arrivals and the end of the run ---------------------------------------------------- */

/* Every job done and the arrival process over (the timer comes back at
 * arrive_end when that is still ahead). */
static int run_over(const client *c)
{
    return c->n_done == c->n_jobs && c->next_arrival == c->n_jobs && uv_hrtime() >= c->arrive_end;
}

/* Closes what is left once the run is over: the loop then runs dry. */
static void maybe_end(client *c)
{
    if (!run_over(c)) return;
    while (c->idle) conn_close(c->idle);
    if (c->timer_open) {
        c->timer_open = 0;
        uv_close((uv_handle_t *)&c->timer, NULL);
    }
}

static void on_timer(uv_timer_t *t)
{
    client *c = t->data;
    uint64_t now = uv_hrtime();
    while (c->next_arrival < c->n_jobs && c->arrive[c->next_arrival] <= now) {
        job *j = &c->jobs[c->next_arrival++];
        if (c->pend_tail) c->pend_tail->next = j;
        else c->pend_head = j;
        c->pend_tail = j;
    }
    pump(c);
    uint64_t next = c->next_arrival < c->n_jobs ? c->arrive[c->next_arrival] : c->arrive_end;
    if (next > now) uv_timer_start(&c->timer, on_timer, (next - now + 999999) / 1000000, 0);
    else maybe_end(c);
}

/* ---- client set-up ------------------------------------------------------------------------- */

static sl_status client_init(client *c, const sl_bench_target *t, sl_err *e)
{
    memset(c, 0, sizeof *c);
    c->t = t;
    snprintf(c->hostport, sizeof c->hostport, "%s:%d", t->host, t->port);
    if (t->model) {
        json_t *m = json_string(t->model);
        char *s = m ? json_dumps(m, JSON_ENCODE_ANY) : NULL;
        json_decref(m);
        if (!s || strlen(s) >= sizeof c->model_json) {
            free(s);
            return sl_err_set(e, SL_ERR_INVALID, "model name too long or not UTF-8");
        }
        strcpy(c->model_json, s);
        free(s);
    }
    int rc = uv_loop_init(&c->loop);
    if (rc) return sl_err_set(e, SL_ERR_IO, "event loop: %s", uv_strerror(rc));
    /* prefer IPv4: local servers often listen on 127.0.0.1 only */
    char port[16];
    snprintf(port, sizeof port, "%d", t->port);
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM};
    uv_getaddrinfo_t gai;
    rc = uv_getaddrinfo(&c->loop, &gai, NULL, t->host, port, &hints);
    if (rc) {
        hints.ai_family = AF_UNSPEC;
        rc = uv_getaddrinfo(&c->loop, &gai, NULL, t->host, port, &hints);
    }
    if (rc) {
        uv_loop_close(&c->loop);
        return sl_err_set(e, SL_ERR_IO, "cannot resolve host '%s': %s", t->host, uv_strerror(rc));
    }
    memcpy(&c->addr, gai.addrinfo->ai_addr, gai.addrinfo->ai_addrlen);
    uv_freeaddrinfo(gai.addrinfo);
    llhttp_settings_init(&c->settings);
    c->settings.on_message_begin = on_message_begin;
    c->settings.on_headers_complete = on_headers_complete;
    c->settings.on_body = on_body;
    c->settings.on_message_complete = on_message_complete;
    uv_timer_init(&c->loop, &c->timer);
    c->timer.data = c;
    c->timer_open = 1;
    return SL_OK;
}

/* Runs until every job is done and every handle closed. */
static void client_run(client *c)
{
    c->t0 = uv_hrtime();
    for (int i = 0; i < c->n_jobs; i++) c->arrive[i] += c->t0;
    c->arrive_end += c->t0;
    on_timer(&c->timer);
    uv_run(&c->loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&c->loop);
    SL_ASSERT(rc == 0); /* a handle left open is a bug of this file */
}

/* ---- public calls ------------------------------------------------------------------------- */

/* One request of kind (not a completion) on a client of its own: fills *o
 * (ok: answered 200) and j->body (the caller frees it); *where names the
 * request for messages. */
static sl_status admin_request(const sl_bench_target *t, job_kind kind, job *j, sl_bench_outcome *o,
                               char *where, size_t cap, sl_err *e)
{
    client c;
    sl_status s = client_init(&c, t, e);
    if (s) return s;
    *j = (job){.kind = kind, .out = o};
    uint64_t arrive = 0;
    c.jobs = j;
    c.n_jobs = 1;
    c.arrive = &arrive;
    const char *method, *path = admin_path(kind, &method);
    snprintf(where, cap, "%s %s%s on %s", method, t->prefix, path, c.hostport);
    client_run(&c);
    return SL_OK;
}

sl_status sl_bench_first_model(const sl_bench_target *t, char **id, sl_err *e)
{
    *id = NULL;
    job j;
    sl_bench_outcome o = {0};
    char where[1400];
    sl_status s = admin_request(t, JOB_MODELS, &j, &o, where, sizeof where, e);
    if (s) return s;
    if (!o.ok) {
        s = sl_err_set(e, SL_ERR_IO, "%s: %s", where, o.error ? o.error : "failed");
    } else {
        json_t *r = json_loadb(j.body.data ? j.body.data : "", j.body.len, 0, NULL);
        json_t *m = json_object_get(json_array_get(json_object_get(r, "data"), 0), "id");
        if (json_is_string(m)) *id = strdup(json_string_value(m));
        else s = sl_err_set(e, SL_ERR_PARSE, "%s: no model id in the answer", where);
        json_decref(r);
    }
    sl_buf_free(&j.body);
    sl_bench_outcome_free(&o);
    return s;
}

sl_status sl_bench_flush_cache(const sl_bench_target *t, sl_err *e)
{
    job j;
    sl_bench_outcome o = {0};
    char where[1400];
    sl_status s = admin_request(t, JOB_FLUSH, &j, &o, where, sizeof where, e);
    if (s) return s;
    if (!o.ok) s = sl_err_set(e, SL_ERR_IO, "%s: %s", where, o.error ? o.error : "failed");
    sl_buf_free(&j.body);
    sl_bench_outcome_free(&o);
    return s;
}

sl_status sl_bench_run(const sl_bench_target *t, const sl_bench_dataset *d,
                       const sl_bench_load *load, int max_out, sl_bench_outcome *out,
                       double *duration_s, sl_err *e)
{
    *duration_s = 0;
    if (d->n < 1) return SL_OK;
    if (!t->model) return sl_err_set(e, SL_ERR_INVALID, "no model name to send");
    if (!(load->request_rate > 0))
        return sl_err_set(e, SL_ERR_INVALID, "request rate must be positive");
    client c;
    sl_status s = client_init(&c, t, e);
    if (s) return s;
    c.stream = load->stream;
    c.ignore_eos = load->ignore_eos;
    c.extra_body = load->extra_body;
    c.limit = load->max_concurrency;
    c.jobs = calloc((size_t)d->n, sizeof *c.jobs);
    c.arrive = calloc((size_t)d->n, sizeof *c.arrive);
    if (!c.jobs || !c.arrive) {
        free(c.jobs);
        free(c.arrive);
        uv_close((uv_handle_t *)&c.timer, NULL);
        uv_run(&c.loop, UV_RUN_DEFAULT);
        uv_loop_close(&c.loop);
        return sl_err_set(e, SL_ERR_NOMEM, "%d requests", d->n);
    }
    /* sglang's get_request: the first request at once, then a gap drawn
     * after every request, the last one included (the run waits it out) */
    double at = 0;
    for (int i = 0; i < d->n; i++) {
        c.arrive[i] = (uint64_t)(at * 1e9);
        if (!isinf(load->request_rate)) at += sl_bench_mt_exponential(load->mt, 1.0 / load->request_rate);
        const sl_bench_prompt *p = &d->p[i];
        c.jobs[i] = (job){.kind = JOB_COMPLETION, .prompt = p, .out = &out[i], .usage = -1,
                          .max_tokens = max_out > 0 && max_out < p->n_out ? max_out : p->n_out};
        out[i].n_in = p->n_in;
    }
    c.arrive_end = (uint64_t)(at * 1e9);
    c.n_jobs = d->n;
    client_run(&c);
    uint64_t end = c.t_last_done > c.arrive_end ? c.t_last_done : c.arrive_end;
    *duration_s = (double)(end - c.t0) * 1e-9;
    free(c.jobs);
    free(c.arrive);
    return s;
}

/* sl_http: see http.h. Connection state machine:
 *
 *   accept ─▶ idle ──first byte──▶ headers ──▶ body ──▶ queued (handler owns it)
 *               ▲  (idle timer)    (header timer) (body timer)      │
 *               └───────────── queue empty ◀── responses written ◀─┘
 *
 * A connection keeps its requests in a FIFO; only the head writes to the
 * socket, the others buffer their output until they become the head. */
#include "http.h"

#include <jansson.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "sl_buf.h"
#include "sl_log.h"

#define MAX_HEADERS 96

typedef struct conn conn;

struct sl_http_req {
    conn *c;           /* NULL once the connection is gone (orphaned) */
    sl_http *srv;
    sl_http_req *next; /* connection FIFO */
    char method[16];
    sl_buf url;
    size_t path_len; /* url.data[0..path_len) is the path; query follows '?' */
    sl_buf hname[MAX_HEADERS], hval[MAX_HEADERS];
    int nhdr;
    sl_buf body;
    int keep_alive;
    int http10;
    int done;      /* completed by the handler (or the server, for errors) */
    int internal;  /* an error the server answered itself: never seen by a handler */
    int streaming; /* stream_begin was called */
    int aborted;
    sl_buf out; /* output waiting until this request is the head */
    void (*abort_cb)(sl_http_req *, void *);
    void *abort_ud;
    double arrival_ms;
    size_t counted; /* body bytes counted in srv->buffered */
    int wrote;      /* something of its response reached the socket */
};

struct conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_shutdown_t shut;
    sl_http *srv;
    llhttp_t parser;
    sl_http_req *cur; /* being parsed */
    sl_http_req *head, *tail;
    int nq;
    size_t hdr_bytes;
    int last_was_value;
    const char *value_end; /* end of the last header-value piece in this read */
    int closing;     /* uv_close issued */
    int close_after; /* close once the queue is empty */
    int failed;      /* a protocol error was answered; ignore further input */
    int paused;      /* reading stopped for the pipelining cap */
    int shutdown_sent;
    int peer_eof; /* the client half-closed after its requests */
    int open_handles;
    conn *prev, *next;
};

struct sl_http {
    uv_loop_t *loop;
    uv_tcp_t listener;
    uv_timer_t drain;
    sl_http_config cfg;
    sl_http_handler on_request;
    void *ud;
    llhttp_settings_t settings;
    conn *conns;
    int nconns;
    int inflight;
    int port;
    int shutting_down;
    size_t buffered; /* request body bytes held, all connections */
    int (*gate)(sl_http_req *, void *);
    int open_handles; /* listener + drain timer */
    void (*done)(void *);
    void *done_ud;
    char slab[65536];
};

sl_http_config sl_http_config_default(void)
{
    return (sl_http_config){.max_header_bytes = 64 * 1024,
                            .max_body_bytes = 32u << 20,
                            .header_timeout_ms = 10000,
                            .body_timeout_ms = 60000,
                            .idle_timeout_ms = 75000,
                            .drain_timeout_ms = 30000,
                            .max_pipelined = 32,
                            .max_connections = 4096,
                            .max_buffered_bytes = (size_t)1 << 30};
}

static double now_ms(void) { return (double)uv_hrtime() / 1e6; }

static const char *status_text(int s)
{
    switch (s) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Unknown";
    }
}

char *sl_http_error_json(const char *type, const char *message, int status)
{
    json_t *o = json_pack("{s:{s:s,s:s,s:n,s:i}}", "error", "message", message, "type", type,
                          "param", "code", status);
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

/* ---------------------------------------------------------------- requests */

static void req_free(sl_http_req *r)
{
    if (r->srv) r->srv->buffered -= r->counted;
    sl_buf_free(&r->url);
    for (int i = 0; i < r->nhdr; i++) {
        sl_buf_free(&r->hname[i]);
        sl_buf_free(&r->hval[i]);
    }
    sl_buf_free(&r->body);
    sl_buf_free(&r->out);
    free(r);
}

const char *sl_http_req_method(const sl_http_req *r) { return r->method; }

const char *sl_http_req_path(const sl_http_req *r) { return r->url.data ? r->url.data : "/"; }

const char *sl_http_req_query(const sl_http_req *r)
{
    if (!r->url.data || r->path_len >= r->url.len) return "";
    return r->url.data + r->path_len + 1;
}

const char *sl_http_req_header(const sl_http_req *r, const char *name)
{
    for (int i = 0; i < r->nhdr; i++)
        if (r->hname[i].data && !strcasecmp(r->hname[i].data, name))
            return r->hval[i].data ? r->hval[i].data : "";
    return NULL;
}

const char *sl_http_req_body(const sl_http_req *r, size_t *len)
{
    if (len) *len = r->body.len;
    return r->body.data ? r->body.data : "";
}

double sl_http_req_arrival_ms(const sl_http_req *r) { return r->arrival_ms; }
int sl_http_req_aborted(const sl_http_req *r) { return r->aborted; }

void sl_http_req_on_abort(sl_http_req *r, void (*cb)(sl_http_req *, void *), void *ud)
{
    r->abort_cb = cb;
    r->abort_ud = ud;
}

/* -------------------------------------------------------------- connection */

static void conn_close(conn *c);
static void conn_arm(conn *c, unsigned ms);
static void conn_arm_idle(conn *c);
static void conn_resume(conn *c);

typedef struct write_req {
    uv_write_t w;
    conn *c;
    char data[];
} write_req;

static void on_written(uv_write_t *w, int status)
{
    write_req *wr = (write_req *)w;
    conn *c = wr->c;
    free(wr);
    if (status < 0 && status != UV_ECANCELED && !c->closing) {
        SL_LOGD("http", "write failed: %s", uv_strerror(status));
        conn_close(c);
    }
}

static void conn_write(conn *c, const char *data, size_t len)
{
    if (c->closing || !len) return;
    write_req *wr = malloc(sizeof *wr + len);
    if (!wr) {
        conn_close(c);
        return;
    }
    memcpy(wr->data, data, len);
    wr->c = c;
    uv_buf_t b = uv_buf_init(wr->data, (unsigned)len);
    int rc = uv_write(&wr->w, (uv_stream_t *)&c->tcp, &b, 1, on_written);
    if (rc < 0) {
        free(wr);
        conn_close(c);
    }
}

/* Output of r: straight to the socket when r is the head, else buffered. */
static void req_emit(sl_http_req *r, const char *data, size_t len)
{
    if (!r->c || r->aborted) return;
    if (r->c->head == r) {
        r->wrote = 1;
        conn_write(r->c, data, len);
    }
    else if (sl_buf_append(&r->out, data, len))
        SL_LOGW("http", "out of memory buffering a pipelined response");
}

static void server_handle_closed(uv_handle_t *h);

static void on_close_handle(uv_handle_t *h)
{
    conn *c = h->data;
    if (--c->open_handles) return;
    sl_http *s = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    s->nconns--;
    free(c);
    if (s->shutting_down && !s->nconns && !uv_is_closing((uv_handle_t *)&s->drain))
        uv_close((uv_handle_t *)&s->drain, server_handle_closed);
    if (s->shutting_down && !s->nconns && !s->open_handles && s->done) {
        void (*done)(void *) = s->done;
        s->done = NULL;
        done(s->done_ud);
    }
}

/* Closes the socket; requests still in flight are orphaned and aborted. */
static void conn_close(conn *c)
{
    if (c->closing) return;
    c->closing = 1;
    sl_http_req *orphans = NULL;
    if (c->cur) {
        req_free(c->cur);
        c->cur = NULL;
    }
    for (sl_http_req *r = c->head, *nx; r; r = nx) {
        nx = r->next;
        if (r->done) {
            c->srv->inflight -= !r->internal;
            req_free(r);
        } else {
            r->c = NULL;
            r->aborted = 1;
            r->next = orphans;
            orphans = r;
        }
    }
    c->head = c->tail = NULL;
    c->nq = 0;
    uv_close((uv_handle_t *)&c->tcp, on_close_handle);
    uv_close((uv_handle_t *)&c->timer, on_close_handle);
    /* Abort callbacks may complete (and so free) their request. */
    for (sl_http_req *r = orphans, *nx; r; r = nx) {
        nx = r->next;
        if (r->abort_cb) r->abort_cb(r, r->abort_ud);
    }
}

static void on_shutdown(uv_shutdown_t *sh, int status)
{
    conn *c = sh->data;
    /* After an error the client may still be sending (a body refused at its
     * headers): closing with unread input would reset the connection and
     * could destroy the response before the client reads it. Input is
     * drained and dropped for a moment (lingering close), then closed. */
    if (c->failed && status == 0 && !c->closing)
        conn_arm(c, 1000);
    else
        conn_close(c);
}

/* Pops completed requests off the head, flushing the next one's buffered
 * output; closes or goes idle when the queue empties. */
static void conn_advance(conn *c)
{
    while (c->head && c->head->done) {
        sl_http_req *r = c->head;
        c->head = r->next;
        if (!c->head) c->tail = NULL;
        c->nq--;
        c->srv->inflight -= !r->internal;
        if (!r->keep_alive) c->close_after = 1;
        req_free(r);
        if (c->head && c->head->out.len) {
            conn_write(c, c->head->out.data, c->head->out.len);
            sl_buf_free(&c->head->out);
        }
    }
    if (c->closing) return;
    if (c->close_after && !c->head) {
        if (!c->failed) uv_read_stop((uv_stream_t *)&c->tcp);
        uv_timer_stop(&c->timer);
        c->shut.data = c;
        if (!c->shutdown_sent) {
            c->shutdown_sent = 1;
            if (uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, on_shutdown) < 0) conn_close(c);
        }
        return;
    }
    if (c->paused && c->nq < c->srv->cfg.max_pipelined) {
        c->paused = 0;
        conn_resume(c);
    }
    if (!c->head && !c->cur) conn_arm_idle(c);
}

/* Queues r behind c's requests: responses go out in request order. */
static void conn_enqueue(conn *c, sl_http_req *r)
{
    r->c = c;
    r->srv = c->srv;
    if (c->tail)
        c->tail->next = r;
    else
        c->head = r;
    c->tail = r;
    c->nq++;
}

/* Server-side error: answered in order after the requests already queued,
 * then the connection closes. */
static void conn_fail(conn *c, int status, const char *type, const char *msg)
{
    if (c->failed || c->closing) return;
    c->failed = 1;
    uv_timer_stop(&c->timer);
    /* Reading goes on (input is dropped) so that a client going away is still
     * noticed and the requests queued before the error are aborted. */
    if (c->cur) {
        req_free(c->cur);
        c->cur = NULL;
    }
    sl_http_req *r = calloc(1, sizeof *r);
    if (!r) {
        conn_close(c);
        return;
    }
    r->internal = 1;
    r->keep_alive = 0;
    conn_enqueue(c, r);
    sl_http_respond_error(r, status, type, msg);
}

/* ----------------------------------------------------------------- parsing */

static conn *parser_conn(llhttp_t *p) { return p->data; }

static int on_message_begin(llhttp_t *p)
{
    conn *c = parser_conn(p);
    if (c->closing || c->failed) return -1;
    c->cur = calloc(1, sizeof *c->cur);
    if (!c->cur) return -1;
    c->cur->srv = c->srv;
    c->hdr_bytes = 0;
    c->last_was_value = 0;
    uv_timer_stop(&c->timer);
    conn_arm(c, c->srv->cfg.header_timeout_ms);
    return 0;
}

static int count_header_bytes(conn *c, size_t n)
{
    c->hdr_bytes += n;
    if (c->hdr_bytes > c->srv->cfg.max_header_bytes) {
        conn_fail(c, 400, "invalid_request_error", "request headers too large");
        return -1;
    }
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    conn *c = parser_conn(p);
    if (count_header_bytes(c, n)) return -1;
    return sl_buf_append(&c->cur->url, at, n) ? -1 : 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    conn *c = parser_conn(p);
    sl_http_req *r = c->cur;
    if (count_header_bytes(c, n)) return -1;
    if (c->last_was_value || !r->nhdr) {
        if (r->nhdr == MAX_HEADERS) {
            conn_fail(c, 400, "invalid_request_error", "too many request headers");
            return -1;
        }
        r->nhdr++;
        c->last_was_value = 0;
    }
    return sl_buf_append(&r->hname[r->nhdr - 1], at, n) ? -1 : 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    conn *c = parser_conn(p);
    sl_http_req *r = c->cur;
    if (count_header_bytes(c, n)) return -1;
    if (c->last_was_value && c->value_end && at != c->value_end) {
        /* llhttp passes obs-fold ("Name: a\r\n b") as a second value piece
         * that does not continue the first in the same read */
        conn_fail(c, 400, "invalid_request_error",
                  "malformed HTTP request: obs-fold (a header value continued on the next line)");
        return -1;
    }
    c->last_was_value = 1;
    c->value_end = at + n;
    if (!r->nhdr) return -1;
    return sl_buf_append(&r->hval[r->nhdr - 1], at, n) ? -1 : 0;
}

/* RFC 9112: an HTTP/1.1 request names its Host; obs-fold (a value continued
 * on the next line) and bare CR/LF in values are refused, not unfolded. */
static const char *headers_invalid(const sl_http_req *r)
{
    if (!r->http10 && !sl_http_req_header(r, "host")) return "malformed HTTP request: no Host header";
    for (int i = 0; i < r->nhdr; i++)
        if (r->hval[i].data && strpbrk(r->hval[i].data, "\r\n"))
            return "malformed HTTP request: obs-fold or CR/LF in a header value";
    return NULL;
}

static int on_headers_complete(llhttp_t *p)
{
    conn *c = parser_conn(p);
    sl_http_req *r = c->cur;
    snprintf(r->method, sizeof r->method, "%s", llhttp_method_name(llhttp_get_method(p)));
    r->http10 = llhttp_get_http_major(p) == 1 && llhttp_get_http_minor(p) == 0;
    char *q = r->url.data ? strchr(r->url.data, '?') : NULL;
    r->path_len = q ? (size_t)(q - r->url.data) : r->url.len;
    if (q) *q = '\0';
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > c->srv->cfg.max_body_bytes) {
        conn_fail(c, 413, "invalid_request_error", "request body too large");
        return -1;
    }
    const char *bad = headers_invalid(r);
    if (bad) {
        conn_fail(c, 400, "invalid_request_error", bad);
        return -1;
    }
    if (c->srv->gate && c->srv->gate(r, c->srv->ud)) {
        /* Answered before its body (e.g. no API key): the body is dropped
         * unread and the connection closes after the response. */
        c->cur = NULL;
        uv_timer_stop(&c->timer);
        c->failed = 1;
        r->keep_alive = 0;
        r->arrival_ms = now_ms();
        sl_buf_append(&r->body, "", 0);
        conn_enqueue(c, r);
        c->close_after = 1;
        c->srv->inflight++;
        c->srv->on_request(r, c->srv->ud);
        return -1;
    }
    /* curl waits a second for this before sending bodies over 1 KiB; it may
     * only go out when no earlier response is still owed. */
    const char *expect = sl_http_req_header(r, "expect");
    if (expect && !strcasecmp(expect, "100-continue") && !c->head)
        conn_write(c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    conn_arm(c, c->srv->cfg.body_timeout_ms);
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    conn *c = parser_conn(p);
    sl_http_req *r = c->cur;
    if (r->body.len + n > c->srv->cfg.max_body_bytes) {
        conn_fail(c, 413, "invalid_request_error", "request body too large");
        return -1;
    }
    if (c->srv->buffered + n > c->srv->cfg.max_buffered_bytes) {
        conn_fail(c, 503, "server_error",
                  "the server holds too many request bodies; try again later");
        return -1;
    }
    /* body_timeout_ms is a deadline for the whole body (armed at the last
     * header): a byte every few seconds does not hold the connection. */
    if (sl_buf_append(&r->body, at, n)) return -1;
    r->counted += n;
    c->srv->buffered += n;
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    conn *c = parser_conn(p);
    sl_http_req *r = c->cur;
    c->cur = NULL;
    uv_timer_stop(&c->timer);
    /* Upgrade / CONNECT are not supported: answered normally, then closed. */
    r->keep_alive = llhttp_should_keep_alive(p) && !c->srv->shutting_down && !p->upgrade;
    r->arrival_ms = now_ms();
    if (!r->body.data) sl_buf_append(&r->body, "", 0);
    conn_enqueue(c, r);
    c->srv->inflight++;
    if (!r->keep_alive) {
        /* Nothing after a "Connection: close" request is answered; reading
         * goes on (dropping input) to notice the client going away. */
        c->close_after = 1;
    } else if (c->nq >= c->srv->cfg.max_pipelined) {
        c->paused = 1;
        uv_read_stop((uv_stream_t *)&c->tcp);
    }
    c->srv->on_request(r, c->srv->ud);
    return (c->closing || c->failed || c->close_after) ? HPE_PAUSED : 0;
}

/* ------------------------------------------------------------------ timers */

static void on_timer(uv_timer_t *t)
{
    conn *c = t->data;
    if (c->cur)
        conn_fail(c, 408, "invalid_request_error", "request not received in time");
    else if (!c->head)
        conn_close(c);
}

static void conn_arm(conn *c, unsigned ms)
{
    if (!c->closing) uv_timer_start(&c->timer, on_timer, ms, 0);
}

static void conn_arm_idle(conn *c) { conn_arm(c, c->srv->cfg.idle_timeout_ms); }

/* ----------------------------------------------------------------- reading */

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    /* One buffer per server: each read is parsed before the loop reads again. */
    conn *c = h->data;
    b->base = c->srv->slab;
    b->len = sizeof c->srv->slab;
}

/* A client that half-closed is still owed its responses; one that closed
 * completely resets the connection when written to. A 100 Continue (any
 * HTTP/1.1 client must skip an unexpected 1xx) is that write when nothing
 * else went out yet; the timer watches for the reset. */
static void on_eof_timer(uv_timer_t *t)
{
    conn *c = t->data;
    struct tcp_info ti;
    socklen_t len = sizeof ti;
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)&c->tcp, &fd) < 0 ||
        getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0 || ti.tcpi_state == TCP_CLOSE)
        conn_close(c);
}

static void conn_peer_eof(conn *c)
{
    c->peer_eof = 1;
    c->close_after = 1;
    uv_read_stop((uv_stream_t *)&c->tcp);
    if (c->head && !c->head->wrote && !c->head->done && !c->head->http10) {
        c->head->wrote = 1;
        conn_write(c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    }
    uv_timer_start(&c->timer, on_eof_timer, 50, 50);
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    conn *c = st->data;
    if (n == UV_EOF && c->head && !c->cur && !c->failed && !c->closing) {
        conn_peer_eof(c);
        return;
    }
    if (n < 0) {
        conn_close(c);
        return;
    }
    if (!n || c->failed || c->closing || c->close_after) return;
    c->value_end = NULL;
    llhttp_errno_t err = llhttp_execute(&c->parser, b->base, (size_t)n);
    if (c->closing || c->failed) return;
    if (err == HPE_PAUSED_UPGRADE) {
        c->close_after = 1; /* the request was answered; nothing follows */
        return;
    }
    if (err == HPE_PAUSED) {
        /* Only on_message_complete pauses, and only when it has closed,
         * failed or ended the connection; resume keeps the parser usable. */
        llhttp_resume(&c->parser);
        return;
    }
    if (err != HPE_OK) {
        char msg[160];
        snprintf(msg, sizeof msg, "malformed HTTP request: %s", llhttp_get_error_reason(&c->parser));
        conn_fail(c, 400, "invalid_request_error", msg);
    }
}

static void conn_resume(conn *c)
{
    if (!c->closing && !c->failed && !c->close_after)
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

static void on_connection(uv_stream_t *ls, int status)
{
    sl_http *s = ls->data;
    if (status < 0 || s->shutting_down) return;
    conn *c = calloc(1, sizeof *c);
    if (!c) return;
    c->srv = s;
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->open_handles = 2;
    c->next = s->conns;
    if (s->conns) s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    if (uv_accept(ls, (uv_stream_t *)&c->tcp) < 0) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    llhttp_init(&c->parser, HTTP_REQUEST, &s->settings);
    c->parser.data = c;
    if (s->nconns > s->cfg.max_connections) {
        conn_fail(c, 503, "server_error", "too many open connections; try again later");
        return;
    }
    conn_arm_idle(c);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

/* --------------------------------------------------------------- responses */

static void req_complete(sl_http_req *r)
{
    SL_ASSERT(!r->done);
    r->done = 1;
    conn *c = r->c;
    if (!c) {
        r->srv->inflight--; /* orphaned: the connection is gone */
        req_free(r);
        return;
    }
    if (c->head == r) conn_advance(c);
}

static void write_head(sl_http_req *r, int status, const char *ctype, const char *extra,
                       long content_length)
{
    int close = !r->keep_alive || (r->c && (r->c->close_after || r->c->srv->shutting_down));
    if (close) r->keep_alive = 0;
    sl_buf h = {0};
    sl_buf_printf(&h, "HTTP/1.1 %d %s\r\nServer: sluice\r\nContent-Type: %s\r\n", status,
                  status_text(status), ctype);
    if (content_length >= 0)
        sl_buf_printf(&h, "Content-Length: %ld\r\n", content_length);
    else if (!r->http10)
        sl_buf_puts(&h, "Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n");
    if (extra) sl_buf_puts(&h, extra);
    if (r->srv->cfg.allow_origin)
        sl_buf_printf(&h, "Access-Control-Allow-Origin: %s\r\nVary: Origin\r\n",
                      r->srv->cfg.allow_origin);
    sl_buf_puts(&h, close ? "Connection: close\r\n\r\n" : "Connection: keep-alive\r\n\r\n");
    if (content_length < 0 && r->http10) r->keep_alive = 0;
    req_emit(r, h.data, h.len);
    sl_buf_free(&h);
}

void sl_http_respond(sl_http_req *r, int status, const char *content_type, const char *body,
                     size_t len, const char *extra_headers)
{
    SL_ASSERT(!r->streaming);
    write_head(r, status, content_type, extra_headers, (long)len);
    if (strcmp(r->method, "HEAD")) req_emit(r, body, len); /* HEAD: the length, no body */
    req_complete(r);
}

void sl_http_respond_error(sl_http_req *r, int status, const char *type, const char *message)
{
    char *j = sl_http_error_json(type, message, status);
    sl_http_respond(r, status, "application/json", j ? j : "{}", j ? strlen(j) : 2, NULL);
    free(j);
}

void sl_http_stream_begin(sl_http_req *r, int status, const char *content_type,
                          const char *extra_headers)
{
    SL_ASSERT(!r->streaming && !r->done);
    r->streaming = 1;
    write_head(r, status, content_type, extra_headers, -1);
}

void sl_http_stream_write(sl_http_req *r, const char *data, size_t len)
{
    SL_ASSERT(r->streaming && !r->done);
    if (!len) return;
    if (r->http10) {
        req_emit(r, data, len);
        return;
    }
    char pre[24];
    int n = snprintf(pre, sizeof pre, "%zx\r\n", len);
    sl_buf b = {0};
    sl_buf_append(&b, pre, (size_t)n);
    sl_buf_append(&b, data, len);
    sl_buf_append(&b, "\r\n", 2);
    req_emit(r, b.data, b.len);
    sl_buf_free(&b);
}

void sl_http_stream_end(sl_http_req *r)
{
    SL_ASSERT(r->streaming);
    if (!r->http10) req_emit(r, "0\r\n\r\n", 5);
    req_complete(r);
}

size_t sl_http_req_backlog(const sl_http_req *r)
{
    if (!r->c) return 0;
    return r->out.len + uv_stream_get_write_queue_size((const uv_stream_t *)&r->c->tcp);
}

/* ------------------------------------------------------------------ server */

static void server_handle_closed(uv_handle_t *h)
{
    sl_http *s = h->data;
    s->open_handles--;
    if (s->shutting_down && !s->nconns && !s->open_handles && s->done) {
        void (*done)(void *) = s->done;
        s->done = NULL;
        done(s->done_ud);
    }
}

sl_status sl_http_start(sl_http **out, uv_loop_t *loop, const char *host, int port,
                        const sl_http_config *cfg, sl_http_handler on_request, void *ud,
                        sl_err *e)
{
    *out = NULL;
    struct sockaddr_storage ss;
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss))
        return sl_err_set(e, SL_ERR_INVALID, "--host %s: not an IPv4 or IPv6 address", host);
    sl_http *s = calloc(1, sizeof *s);
    if (!s) return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    s->loop = loop;
    s->cfg = cfg ? *cfg : sl_http_config_default();
    if (s->cfg.max_pipelined < 1) s->cfg.max_pipelined = 1;
    s->on_request = on_request;
    s->ud = ud;
    llhttp_settings_init(&s->settings);
    s->settings.on_message_begin = on_message_begin;
    s->settings.on_url = on_url;
    s->settings.on_header_field = on_header_field;
    s->settings.on_header_value = on_header_value;
    s->settings.on_headers_complete = on_headers_complete;
    s->settings.on_body = on_body;
    s->settings.on_message_complete = on_message_complete;
    uv_tcp_init(loop, &s->listener);
    uv_timer_init(loop, &s->drain);
    s->listener.data = s->drain.data = s;
    s->open_handles = 2;
    int rc = uv_tcp_bind(&s->listener, (struct sockaddr *)&ss, 0);
    if (!rc) rc = uv_listen((uv_stream_t *)&s->listener, 1024, on_connection);
    if (rc < 0) {
        sl_err_set(e, SL_ERR_IO, "listen on %s:%d: %s", host, port, uv_strerror(rc));
        s->shutting_down = 1;
        uv_close((uv_handle_t *)&s->listener, server_handle_closed);
        uv_close((uv_handle_t *)&s->drain, server_handle_closed);
        uv_run(loop, UV_RUN_NOWAIT); /* runs the close callbacks */
        free(s);
        return SL_ERR_IO;
    }
    struct sockaddr_storage bound;
    int blen = sizeof bound;
    uv_tcp_getsockname(&s->listener, (struct sockaddr *)&bound, &blen);
    s->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                : ((struct sockaddr_in *)&bound)->sin_port);
    *out = s;
    return SL_OK;
}

int sl_http_port(const sl_http *h) { return h->port; }
void sl_http_set_gate(sl_http *h, int (*gate)(sl_http_req *, void *)) { h->gate = gate; }
size_t sl_http_buffered_bytes(const sl_http *h) { return h->buffered; }
int sl_http_connections(const sl_http *h) { return h->nconns; }
int sl_http_inflight(const sl_http *h) { return h->inflight; }

static void on_drain_timeout(uv_timer_t *t)
{
    sl_http *s = t->data;
    for (conn *c = s->conns, *nx; c; c = nx) {
        nx = c->next;
        conn_close(c);
    }
    if (!uv_is_closing((uv_handle_t *)&s->drain))
        uv_close((uv_handle_t *)&s->drain, server_handle_closed);
}

void sl_http_shutdown(sl_http *s, void (*done)(void *), void *ud)
{
    SL_ASSERT(!s->shutting_down);
    s->shutting_down = 1;
    s->done = done;
    s->done_ud = ud;
    uv_close((uv_handle_t *)&s->listener, server_handle_closed);
    for (conn *c = s->conns, *nx; c; c = nx) {
        nx = c->next;
        c->close_after = 1;
        if (!c->head) {
            conn_close(c);
        } else {
            if (c->cur) {
                req_free(c->cur);
                c->cur = NULL;
            }
            uv_read_stop((uv_stream_t *)&c->tcp);
        }
    }
    if (s->nconns)
        uv_timer_start(&s->drain, on_drain_timeout, s->cfg.drain_timeout_ms, 0);
    else
        uv_close((uv_handle_t *)&s->drain, server_handle_closed);
}

void sl_http_free(sl_http *h) { free(h); }

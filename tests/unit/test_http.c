/* sl_http over real loopback sockets: a client thread drives scripted
 * exchanges while the main thread runs the server's loop. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http.h"
#include "http_client.h"
#include "sl_test.h"

static int port;
static int aborts;        /* abort callbacks seen (loop thread) */
static int stream_ended;  /* streams completed after shutdown began */
static uv_loop_t loop;
static sl_http *srv;
static uv_async_t stop_async;

/* ---- server side ---- */

typedef struct delayed {
    uv_timer_t t;
    sl_http_req *r;
    int step;
} delayed;

static void on_delayed_close(uv_handle_t *h) { free(h->data); }

static void delayed_fire(uv_timer_t *t)
{
    delayed *d = t->data;
    const char *path = sl_http_req_path(d->r);
    if (!strcmp(path, "/stream") || !strcmp(path, "/longstream")) {
        char part[32];
        int n = snprintf(part, sizeof part, "part%d\n", d->step);
        sl_http_stream_write(d->r, part, (size_t)n);
        if (++d->step == 3) {
            if (!strcmp(path, "/longstream")) stream_ended++;
            sl_http_stream_end(d->r);
            uv_close((uv_handle_t *)t, on_delayed_close);
        }
        return;
    }
    sl_http_respond(d->r, 200, "text/plain", path, strlen(path), NULL);
    uv_close((uv_handle_t *)t, on_delayed_close);
}

static void start_delayed(sl_http_req *r, unsigned ms, unsigned repeat)
{
    delayed *d = calloc(1, sizeof *d);
    d->r = r;
    uv_timer_init(&loop, &d->t);
    d->t.data = d;
    uv_timer_start(&d->t, delayed_fire, ms, repeat);
}

static void on_abort(sl_http_req *r, void *ud)
{
    __atomic_add_fetch(&aborts, 1, __ATOMIC_SEQ_CST); /* the client thread reads it */
    sl_http_respond(r, 200, "text/plain", "late", 4, NULL); /* must be dropped */
}

static void handler(sl_http_req *r, void *ud)
{
    const char *p = sl_http_req_path(r);
    size_t blen;
    const char *body = sl_http_req_body(r, &blen);
    if (!strcmp(p, "/echo")) {
        char h[128];
        const char *x = sl_http_req_header(r, "x-test");
        snprintf(h, sizeof h, "X-Query: %s\r\nX-Test: %s\r\n", sl_http_req_query(r), x ? x : "-");
        sl_http_respond(r, 200, "text/plain", body, blen, h);
    } else if (!strcmp(p, "/slow")) {
        start_delayed(r, 150, 0);
    } else if (!strcmp(p, "/stream")) {
        sl_http_stream_begin(r, 200, "text/event-stream", NULL);
        start_delayed(r, 10, 10);
    } else if (!strcmp(p, "/longstream")) {
        sl_http_stream_begin(r, 200, "text/event-stream", NULL);
        start_delayed(r, 100, 100);
    } else if (!strcmp(p, "/hold")) {
        sl_http_req_on_abort(r, on_abort, NULL);
    } else {
        sl_http_respond_error(r, 404, "invalid_request_error", "no such route");
    }
}

static void on_drained(void *ud) { *(int *)ud = 1; }

static void on_stop(uv_async_t *a)
{
    static int drained;
    sl_http_shutdown(srv, on_drained, &drained);
    uv_close((uv_handle_t *)a, NULL);
}

/* ---- client side (its own thread, blocking sockets) ---- */

static void send_all(int fd, const char *s) { (void)!write(fd, s, strlen(s)); }

/* Reads until `need` occurrences of `until` were seen, EOF, or timeout. */
static int read_until(int fd, char *buf, int cap, const char *until, int need, int timeout_ms)
{
    int len = 0;
    buf[0] = 0;
    for (;;) {
        int seen = 0;
        for (const char *p = buf; (p = strstr(p, until)); p += strlen(until)) seen++;
        if (seen >= need) return len;
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (poll(&pf, 1, timeout_ms) <= 0) return len;
        ssize_t n = read(fd, buf + len, (size_t)(cap - 1 - len));
        if (n <= 0) return len;
        len += (int)n;
        buf[len] = 0;
    }
}

/* Dials the server, sends `request` and reads the answer into buf until `until`
 * (or EOF, or timeout_ms); returns the connection, which the caller closes. */
static int exchange(const char *request, char *buf, int cap, const char *until, int timeout_ms)
{
    int fd = http_client_dial(port);
    send_all(fd, request);
    read_until(fd, buf, cap, until, 1, timeout_ms);
    return fd;
}

static int is_closed(int fd, int timeout_ms)
{
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    if (poll(&pf, 1, timeout_ms) <= 0) return 0;
    char c;
    return read(fd, &c, 1) == 0;
}

static void client(void *arg)
{
    char buf[16384];
    /* keep-alive: two requests on one connection, query and headers */
    int fd = exchange("POST /echo?a=1 HTTP/1.1\r\nHost: x\r\nX-Test: hi\r\n"
                      "Content-Length: 5\r\n\r\nhello",
                      buf, sizeof buf, "hello", 2000);
    CHECK(strstr(buf, "HTTP/1.1 200 OK") == buf);
    CHECK(strstr(buf, "X-Query: a=1") != NULL);
    CHECK(strstr(buf, "X-Test: hi") != NULL);
    CHECK(strstr(buf, "Connection: keep-alive") != NULL);
    send_all(fd, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc");
    read_until(fd, buf, sizeof buf, "abc", 1, 2000);
    CHECK(strstr(buf, "Content-Length: 3") != NULL);

    /* pipelining: the slow first response still comes first */
    send_all(fd, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
                 "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nsecond"
                 "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n");
    read_until(fd, buf, sizeof buf, "0\r\n\r\n", 1, 3000);
    char *a = strstr(buf, "/slow"), *b = strstr(buf, "second"), *c = strstr(buf, "part2");
    CHECK_MSG(a && b && c && a < b && b < c, "pipelined order: %s", buf);
    CHECK(strstr(buf, "Transfer-Encoding: chunked") != NULL);
    CHECK(strstr(buf, "6\r\npart0\n\r\n") != NULL);
    close(fd);

    /* chunked request body */
    fd = exchange("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  "4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n",
                  buf, sizeof buf, "abcdefg", 2000);
    CHECK(strstr(buf, "Content-Length: 7\r\n") != NULL);
    CHECK(strstr(buf, "\r\n\r\nabcdefg") != NULL);
    close(fd);

    /* Expect: 100-continue is answered before the body is sent */
    fd = exchange("POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                  "Content-Length: 4\r\n\r\n",
                  buf, sizeof buf, "\r\n\r\n", 2000);
    CHECK(!strcmp(buf, "HTTP/1.1 100 Continue\r\n\r\n"));
    send_all(fd, "body");
    read_until(fd, buf, sizeof buf, "body", 1, 2000);
    CHECK(strstr(buf, "HTTP/1.1 200 OK") == buf);
    close(fd);

    /* malformed request line -> 400 with OpenAI error JSON, closed */
    fd = exchange("BLAH\x01 / HTTP/1.1\r\n\r\n", buf, sizeof buf, "}}", 2000);
    CHECK(strstr(buf, "HTTP/1.1 400") == buf);
    CHECK(strstr(buf, "\"error\"") && strstr(buf, "malformed HTTP request"));
    CHECK(is_closed(fd, 2000));
    close(fd);

    /* header too large -> 400 */
    fd = http_client_dial(port);
    send_all(fd, "GET /echo HTTP/1.1\r\nX-Big: ");
    char big[5000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = 0;
    send_all(fd, big);
    read_until(fd, buf, sizeof buf, "}}", 1, 2000);
    CHECK(strstr(buf, "HTTP/1.1 400") == buf);
    CHECK(strstr(buf, "headers too large") != NULL);
    close(fd);

    /* body too large by Content-Length -> 413 before the body is sent */
    fd = exchange("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 999999\r\n\r\n",
                  buf, sizeof buf, "}}", 2000);
    CHECK(strstr(buf, "HTTP/1.1 413") == buf);
    CHECK(strstr(buf, "\"code\":413") != NULL);
    close(fd);

    /* body too large in chunks -> 413 */
    fd = http_client_dial(port);
    send_all(fd, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (int i = 0; i < 3; i++) {
        send_all(fd, "1000\r\n");
        char chunk[4097];
        memset(chunk, 'z', 4096);
        chunk[4096] = 0;
        send_all(fd, chunk);
        send_all(fd, "\r\n");
    }
    read_until(fd, buf, sizeof buf, "}}", 1, 2000);
    CHECK(strstr(buf, "HTTP/1.1 413") == buf);
    close(fd);

    /* slow headers -> 408 */
    fd = exchange("GET /echo HTTP/1.1\r\nHost: x\r\n", buf, sizeof buf, "}}", 3000);
    CHECK_MSG(strstr(buf, "HTTP/1.1 408") == buf, "%s", buf);
    close(fd);

    /* client disconnect: the handler's request is aborted once ... */
    fd = http_client_dial(port);
    send_all(fd, "GET /hold HTTP/1.1\r\nHost: x\r\n\r\n");
    usleep(100000);
    close(fd);
    usleep(200000);
    /* ... also after "Connection: close" and after a malformed pipelined
     * request, when nothing more is parsed but the socket is still watched */
    fd = http_client_dial(port);
    send_all(fd, "GET /hold HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    usleep(100000);
    close(fd);
    fd = http_client_dial(port);
    send_all(fd, "GET /hold HTTP/1.1\r\nHost: x\r\n\r\nG;ET / HTTP/1.1\r\n\r\n");
    usleep(100000);
    close(fd);
    usleep(200000);
    CHECK_MSG(__atomic_load_n(&aborts, __ATOMIC_SEQ_CST) == 3, "%d aborts before shutdown",
              __atomic_load_n(&aborts, __ATOMIC_SEQ_CST));

    /* graceful shutdown: a stream in flight is finished, then the server stops */
    fd = exchange("GET /longstream HTTP/1.1\r\nHost: x\r\n\r\n", buf, sizeof buf, "part0", 2000);
    CHECK(strstr(buf, "Connection: keep-alive") != NULL);
    uv_async_send(&stop_async);
    read_until(fd, buf, sizeof buf, "0\r\n\r\n", 1, 3000);
    CHECK_MSG(strstr(buf, "part2\n") != NULL, "drained stream: %s", buf);
    CHECK(is_closed(fd, 2000));
    close(fd);
    CHECK(http_client_dial(port) < 0); /* no longer listening */
}

int main(void)
{
    uv_loop_init(&loop);
    sl_http_config cfg = sl_http_config_default();
    cfg.max_header_bytes = 4096;
    cfg.max_body_bytes = 8192;
    cfg.header_timeout_ms = 300;
    sl_err e = {0};
    CHECK(sl_http_start(&srv, &loop, "127.0.0.1", 0, &cfg, handler, NULL, &e) == SL_OK);
    port = sl_http_port(srv);
    CHECK(port > 0);
    sl_http *dup;
    CHECK(sl_http_start(&dup, &loop, "127.0.0.1", port, &cfg, handler, NULL, &e) == SL_ERR_IO);
    CHECK(strstr(e.msg, "listen on 127.0.0.1") != NULL);
    CHECK(sl_http_start(&dup, &loop, "not-an-ip", 0, &cfg, handler, NULL, &e) == SL_ERR_INVALID);
    uv_async_init(&loop, &stop_async, on_stop);
    uv_thread_t th;
    uv_thread_create(&th, client, NULL);
    uv_run(&loop, UV_RUN_DEFAULT); /* returns once every handle is closed */
    uv_thread_join(&th);
    CHECK_MSG(aborts == 3, "%d aborts", aborts);
    CHECK(stream_ended == 1);
    CHECK(sl_http_connections(srv) == 0);
    CHECK(sl_http_inflight(srv) == 0);
    sl_http_free(srv);
    CHECK(uv_loop_close(&loop) == 0); /* a leaked handle fails this */
    return sl_test_done("test_http");
}

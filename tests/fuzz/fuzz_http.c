/* libFuzzer: raw bytes from a client into the router's HTTP server (sl_http:
 * llhttp parsing, limits, pipelining, chunked bodies, streaming, aborts). One
 * loopback connection per input: the bytes are written, the write side is
 * shut, and whatever comes back is read until the server closes. The server
 * must answer only with HTTP responses, close the connection and complete
 * every request; a hang or a connection left open traps. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "http.h"
#include "sl_buf.h"
#include "sl_log.h"

static uv_loop_t loop;
static sl_http *srv;
static int port;

static void check(int ok)
{
    if (!ok) __builtin_trap();
}

static void on_abort(sl_http_req *r, void *ud) { sl_http_respond(r, 499, "text/plain", "", 0, NULL); }

/* /stream streams the body back; /hold waits for the client to go away;
 * anything else gets an echo of what the parser saw. */
static void on_request(sl_http_req *r, void *ud)
{
    const char *path = sl_http_req_path(r);
    size_t n;
    const char *body = sl_http_req_body(r, &n);
    check(body && body[n] == 0);
    if (!strcmp(path, "/hold")) {
        sl_http_req_on_abort(r, on_abort, NULL);
        return;
    }
    if (!strcmp(path, "/stream")) {
        sl_http_stream_begin(r, 200, "text/event-stream", NULL);
        sl_http_stream_write(r, body, n);
        sl_http_stream_write(r, "data: [DONE]\n\n", 14);
        sl_http_stream_end(r);
        return;
    }
    sl_buf b = {0};
    const char *auth = sl_http_req_header(r, "authorization");
    sl_buf_printf(&b, "%s %s ?%s auth=%s len=%zu", sl_http_req_method(r), path,
                  sl_http_req_query(r), auth ? auth : "-", n);
    sl_http_respond(r, 200, "text/plain", b.data, b.len, "X-Fuzz: 1\r\n");
    sl_buf_free(&b);
}

static void start(void)
{
    sl_log_set_level(SL_LOG_ERROR);
    uv_loop_init(&loop);
    sl_http_config cfg = sl_http_config_default();
    cfg.max_header_bytes = 2048; /* small limits so inputs reach them */
    cfg.max_body_bytes = 4096;
    cfg.max_pipelined = 4;
    cfg.header_timeout_ms = cfg.body_timeout_ms = 1000;
    sl_err e = {0};
    check(sl_http_start(&srv, &loop, "127.0.0.1", 0, &cfg, on_request, NULL, &e) == SL_OK);
    port = sl_http_port(srv);
}

static uint64_t now_ms(void) { return uv_hrtime() / 1000000u; }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!srv) start();
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    check(fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0);
    fcntl(fd, F_SETFL, O_NONBLOCK);
    sl_buf got = {0};
    size_t sent = 0;
    int eof = 0, shut = 0;
    uint64_t t0 = now_ms();
    while (!eof) {
        check(now_ms() - t0 < 5000); /* the server must answer or close */
        uv_run(&loop, UV_RUN_NOWAIT);
        if (sent < size) {
            ssize_t w = send(fd, data + sent, size - sent, MSG_NOSIGNAL);
            if (w > 0) sent += (size_t)w;
            else if (w < 0 && errno != EAGAIN) sent = size; /* closed on us: fine */
        } else if (!shut) {
            shutdown(fd, SHUT_WR);
            shut = 1;
        }
        char buf[65536];
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r > 0) sl_buf_append(&got, buf, (size_t)r);
        else if (r == 0 || errno != EAGAIN) eof = 1;
        else poll(&(struct pollfd){.fd = fd, .events = POLLIN}, 1, 1);
    }
    close(fd);
    check(!got.len || (got.len >= 9 && !memcmp(got.data, "HTTP/1.1 ", 9)));
    sl_buf_free(&got);
    /* every connection and request is gone once the client is */
    t0 = now_ms();
    while (sl_http_connections(srv) || sl_http_inflight(srv)) {
        check(now_ms() - t0 < 2000);
        uv_run(&loop, UV_RUN_NOWAIT);
        poll(NULL, 0, 1);
    }
    return 0;
}

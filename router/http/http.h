/* sl_http: the router's HTTP/1.1 server (libuv + llhttp), one loop, no threads.
 *
 * Connections are keep-alive; pipelined requests are handed to the handler as
 * they arrive and their responses are written in request order (a response
 * produced early waits in memory until the ones before it are done). Request
 * bodies may be chunked. Limits and slow clients are answered by the server
 * itself with an OpenAI-style error JSON: headers over max_header_bytes -> 400,
 * body over max_body_bytes -> 413, malformed HTTP -> 400, headers or body not
 * received in time -> 408 (the body has one deadline for all of it, not per
 * piece), more than max_connections open or max_buffered_bytes of bodies held
 * -> 503; the connection is then closed. HTTP/1.1 without Host, obs-fold
 * (a header line continued on the next) and CR/LF in values -> 400. Upgrade
 * and CONNECT requests are answered like any other, then the connection
 * closes. A client that half-closes (shutdown(SHUT_WR)) after its requests
 * still gets their responses; one that closed completely is noticed with a
 * 100 Continue probe and its requests are aborted.
 *
 * Completion discipline: every sl_http_req handed to on_request is completed
 * exactly once by the handler, with sl_http_respond() or with
 * sl_http_stream_begin() ... sl_http_stream_end(). Until then the request
 * stays valid, even when the client goes away: the server calls the abort
 * callback (at most once, see sl_http_req_on_abort) and later completion
 * just frees the request. Nothing is written for an aborted request.
 *
 *   static void on_req(sl_http_req *r, void *ud) {
 *       sl_http_respond(r, 200, "application/json", "{}", 2, NULL);
 *   }
 *   sl_http_config cfg = sl_http_config_default();
 *   sl_http *h; sl_http_start(&h, loop, "127.0.0.1", 8000, &cfg, on_req, app, &e);
 *   ... uv_run(loop) ...
 *   sl_http_shutdown(h, on_drained, app);   // stop accepting, drain, close
 *   // in on_drained (or after uv_run returns): sl_http_free(h);
 *
 * Threads: every function runs on the loop thread.
 */
#ifndef SL_HTTP_H
#define SL_HTTP_H

#include <stddef.h>
#include <uv.h>

#include "sl_err.h"

typedef struct sl_http sl_http;
typedef struct sl_http_req sl_http_req;

typedef struct sl_http_config {
    size_t max_header_bytes;  /* request line + headers */
    size_t max_body_bytes;
    unsigned header_timeout_ms; /* from a message's first byte to its last header */
    unsigned body_timeout_ms;   /* whole body, from the last header to the last byte */
    unsigned idle_timeout_ms;   /* keep-alive connection with nothing in flight */
    unsigned drain_timeout_ms;  /* sl_http_shutdown: in-flight streams get this long */
    int max_pipelined;          /* queued requests per connection before reading pauses */
    int max_connections;        /* open connections; one more gets 503 and is closed */
    size_t max_buffered_bytes;  /* request bodies held in memory, all connections together;
                                   a body that would go over gets 503 */
    const char *allow_origin;   /* CORS: sent as Access-Control-Allow-Origin on every answer */
} sl_http_config;

sl_http_config sl_http_config_default(void);

typedef void (*sl_http_handler)(sl_http_req *r, void *ud);

/* Binds host:port (port 0 picks one: see sl_http_port) and starts accepting.
 * On failure nothing is left open. */
sl_status sl_http_start(sl_http **out, uv_loop_t *loop, const char *host, int port,
                        const sl_http_config *cfg, sl_http_handler on_request, void *ud,
                        sl_err *e);
int sl_http_port(const sl_http *h);
/* gate(r, ud) runs when r's headers are complete, before any of its body is
 * read. Returning nonzero hands r to on_request at once with an empty body
 * (the handler answers it, e.g. 401) and the connection closes after that
 * response: the body is never buffered. Optional; set before traffic. */
void sl_http_set_gate(sl_http *h, int (*gate)(sl_http_req *r, void *ud));
/* Bytes of request bodies held now (for tests and /metrics). */
size_t sl_http_buffered_bytes(const sl_http *h);
/* Stops accepting; idle connections close now, busy ones once their requests
 * are complete (responses carry Connection: close); after drain_timeout_ms the
 * rest are closed and their requests aborted. done(ud) runs once everything is
 * closed. Call once. */
void sl_http_shutdown(sl_http *h, void (*done)(void *ud), void *ud);
/* Frees a server whose shutdown has completed. */
void sl_http_free(sl_http *h);
/* Open connections and requests not yet completed (for tests and /metrics). */
int sl_http_connections(const sl_http *h);
int sl_http_inflight(const sl_http *h);

/* ---- a request (valid until completed) ---- */
const char *sl_http_req_method(const sl_http_req *r); /* "GET", "POST", ... */
const char *sl_http_req_path(const sl_http_req *r);   /* URL without the query */
const char *sl_http_req_query(const sl_http_req *r);  /* after '?', or "" */
/* Header value by case-insensitive name, or NULL. */
const char *sl_http_req_header(const sl_http_req *r, const char *name);
const char *sl_http_req_body(const sl_http_req *r, size_t *len); /* NUL-terminated */
/* Milliseconds (uv_hrtime based) when the request's last byte arrived. */
double sl_http_req_arrival_ms(const sl_http_req *r);
int sl_http_req_aborted(const sl_http_req *r);

/* cb(r, ud) runs at most once, on the loop, when the client disconnects or
 * the server is shut down before the request is completed. The request must
 * still be completed afterwards (completing it inside cb is allowed). */
void sl_http_req_on_abort(sl_http_req *r, void (*cb)(sl_http_req *r, void *ud), void *ud);

/* Completes r with a whole response; body is copied. extra_headers, if not
 * NULL, are "Name: value\r\n" lines. */
void sl_http_respond(sl_http_req *r, int status, const char *content_type, const char *body,
                     size_t len, const char *extra_headers);
/* Error response in OpenAI's shape {"error":{"message","type","param","code"}}. */
void sl_http_respond_error(sl_http_req *r, int status, const char *type, const char *message);

/* Streaming response (chunked transfer encoding). begin once, write any
 * number of times (data is copied), end completes r. */
void sl_http_stream_begin(sl_http_req *r, int status, const char *content_type,
                          const char *extra_headers);
void sl_http_stream_write(sl_http_req *r, const char *data, size_t len);
void sl_http_stream_end(sl_http_req *r);
/* Bytes accepted by stream_write but not yet sent (slow readers). */
size_t sl_http_req_backlog(const sl_http_req *r);

/* JSON text of an OpenAI-style error (caller frees). */
char *sl_http_error_json(const char *type, const char *message, int status);

#endif

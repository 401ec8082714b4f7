/* intake: what the router does with a request between its headers and its
 * job, kept off the loop thread when it is heavy (private to router/api).
 *
 *   headers ─▶ sl_intake_gate (API key; a keyless request is answered 401
 *              before any of its body is read, see sl_http_set_gate)
 *   body ─▶ sl_intake_start: JSON limits scan, json_loadb, sl_job_decode (or
 *           /detokenize's decode) inline when the body is small, else on the
 *           libuv pool ─▶ back on the loop: sl_job_start or the response
 *
 * JSON limits cap what a body may cost in memory (10 MB of `{}` is 3 million
 * objects): nesting depth, containers (objects + arrays) and values in all.
 * Over one is a 400 naming it. Checked by a byte scan before parsing.
 *
 * Threads: the sl_intake_* functions run on the loop; the scan, the parse and
 * the decoding on the pool touch only the request's bytes and the immutable
 * config and text side. */
#ifndef SL_INTAKE_H
#define SL_INTAKE_H

#include "http.h"

typedef struct sl_router sl_router;
struct sl_api_dialect;

#define SL_INTAKE_MAX_DEPTH 64           /* nesting of objects and arrays */
#define SL_INTAKE_MAX_CONTAINERS 262144  /* objects + arrays in one body */
#define SL_INTAKE_MAX_VALUES 4194304     /* every value (token ids count) */
#define SL_INTAKE_INLINE_BYTES 65536     /* larger bodies are parsed on the pool */

/* 1 when r carries the router's API key (or none is configured). */
int sl_intake_auth_ok(const sl_router *rt, const sl_http_req *r);
/* sl_http gate: nonzero (answer now, without the body) for a request that
 * needs a key and has none that matches. ud is the router. */
/* 1 for the routes that answer without the API key (probes, /version, /metrics
 * unless --metrics-require-key). */
int sl_intake_open_route(const sl_router *rt, const char *route);
int sl_intake_gate(sl_http_req *r, void *ud);
/* Parses r's body and runs route (kind -1: /detokenize; else the job kind)
 * in dialect d; completes r (an error, the detokenized text) or starts its
 * job. route is a static string. */
void sl_intake_start(sl_router *rt, sl_http_req *r, const char *route, int kind,
                     const struct sl_api_dialect *d);
/* 0 when the JSON text s[0..n) is within the limits above, else -1 with a
 * message in msg (cap bytes). Does not validate the JSON. */
int sl_intake_json_check(const char *s, size_t n, char *msg, size_t cap);

#endif

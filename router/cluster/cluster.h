/* sl_cluster: the router's view of its workers, over nng PAIR1 sockets (the
 * worker listens, the router dials, either side sends at any time; see
 * proto/sluice.proto).
 *
 * Workers come from static URLs (tcp://host:port, ipc:///path) or from a DNS
 * name re-resolved every dns_refresh_ms (a Kubernetes headless Service: one
 * worker per address). nng redials on its own, so a router restart needs no
 * worker restart and a restarted worker rejoins by itself.
 *
 * Authentication: with cfg->secret every pipe starts with the handshake of
 * proto/link_auth.h (the worker challenges, the router answers and checks
 * the worker's proof); a worker becomes reachable only after it.
 *
 * Liveness: the router pings every heartbeat_ms; the worker answers with a
 * pong and a LoadReport. A worker is alive while its pipe is up and it was
 * heard from within dead_after_ms. When its pipe drops, it goes silent, or it
 * comes back as a new process (another LoadReport.worker_id), its in-flight
 * generations finish at once with FINISH_ERROR, a message naming it and
 * lost = 1 in the callback (the caller may migrate them: the worker is no
 * longer alive when the callback runs, so it is not picked again), and it
 * gets no new traffic until it is heard from again.
 *
 * Completion discipline: a generation submitted with sl_cluster_submit gets
 * chunks through its callback until exactly one final chunk (finish !=
 * FINISH_NONE); or the caller ends it with sl_cluster_abort, after which the
 * callback never runs again. If submit fails, the callback never runs.
 *
 *   sl_cluster *cl; sl_cluster_new(&cl, loop, NULL, on_event, app, &e);
 *   sl_cluster_add(cl, "tcp://10.0.0.5:30000", &e);
 *   Sluice__GenerateRequest g = SLUICE__GENERATE_REQUEST__INIT; ... input_ids ...
 *   uint64_t rid; sl_cluster_submit(cl, worker, &g, on_chunk, req, &rid, &e);
 *   sl_cluster_abort(cl, rid);        // client went away: idempotent
 *   sl_cluster_close(cl);             // before uv_run returns; then sl_cluster_free
 *
 * Threads: nng delivers on its own threads; everything is handed to the loop
 * through a uv_async, and every function here runs on the loop thread.
 */
#ifndef SL_CLUSTER_H
#define SL_CLUSTER_H

#include <stdint.h>
#include <uv.h>

#include "sl_err.h"
#include "sluice.pb-c.h"

typedef struct sl_cluster sl_cluster;

/* Generates waiting for room in one worker's send buffer (beyond nng's 1024)
 * before submit refuses with SL_ERR_LIMIT (HTTP 503 with a message). */
#define SL_CLUSTER_MAX_QUEUED 65536

typedef struct sl_cluster_config {
    unsigned heartbeat_ms;
    unsigned dead_after_ms;
    unsigned dns_refresh_ms;
    unsigned reconnect_ms; /* nng redial interval */
    /* Link secret (proto/link_auth.h; NULL or len 0: none). With one, a
     * worker's pipe carries nothing but the handshake until the worker has
     * proved it knows the secret: no ping, no request, and what it sends
     * is ignored; after a wrong proof the pipe is ignored. Owned by the caller. */
    const struct sl_link_secret *secret;
} sl_cluster_config;

sl_cluster_config sl_cluster_config_default(void);

/* Snapshot of one worker (strings owned by the cluster, valid until the next
 * loop iteration). */
typedef struct sl_worker_info {
    const char *url;
    int alive;
    int listed;   /* still named by its DNS record (always 1 for static ones) */
    int inflight; /* generations this router has running there */
    int running, queued;
    int free_kv_pages, total_kv_pages;
    int checkpoint_tokens;
    int context_length;
    int vocab_size;
    float cache_hit_rate;
    const char *model; /* "" until the first load report */
    uint64_t worker_id;
    uint64_t failures; /* times it was declared dead */
    /* from its last load report: engine steps run, and how long the step
     * then running had taken (0: idle). A worker answers pings during a
     * step, so a large busy_ms with fresh reports is a long step, not a hang. */
    uint64_t steps;
    int64_t busy_ms;
    /* disaggregation (docs/disaggregation.md), from its reports */
    int pd_role;              /* Sluice__DisaggRole: 0 unified, 1 prefill, 2 decode */
    const char *transfer_url; /* decode workers: where prefill workers send KV ("" if none) */
    const char *layout;       /* cache layout fingerprint ("" before the first report) */
    int free_mamba_slots, total_mamba_slots, pd_waiting;
    uint64_t pd_transfers, pd_transfer_bytes, pd_failures;
    double pd_transfer_seconds, pd_queue_seconds, pd_hold_seconds;
} sl_worker_info;

/* Called on the loop when a worker becomes alive (alive = 1) or dead. */
typedef void (*sl_cluster_event)(void *ud, int worker, int alive);

sl_status sl_cluster_new(sl_cluster **out, uv_loop_t *loop, const sl_cluster_config *cfg,
                         sl_cluster_event on_event, void *ud, sl_err *e);
/* Adds a worker by URL and starts dialing it (returns at once). */
sl_status sl_cluster_add(sl_cluster *cl, const char *url, sl_err *e);
/* Adds every address of host (resolved now and every dns_refresh_ms) as
 * tcp://addr:port. */
sl_status sl_cluster_add_dns(sl_cluster *cl, const char *host, int port, sl_err *e);
int sl_cluster_size(const sl_cluster *cl);
void sl_cluster_info(const sl_cluster *cl, int worker, sl_worker_info *out);
int sl_cluster_alive(const sl_cluster *cl, int worker);

/* The outcome of sl_cluster_flush_cache over the workers alive when it
 * started: each flushed, refused (requests running or waiting there) or
 * failed (died, did not answer within SL_CLUSTER_FLUSH_MS, or the cluster
 * closed). error: the first refusal or failure, with its worker's URL. */
typedef struct sl_cluster_flush_result {
    int workers, flushed, refused, failed;
    int64_t freed_pages; /* summed over the workers that flushed */
    char error[320];
} sl_cluster_flush_result;
typedef void (*sl_cluster_flush_cb)(void *ud, const sl_cluster_flush_result *r);
#define SL_CLUSTER_FLUSH_MS 10000
/* Asks every alive worker to drop the cache entries no request holds (the
 * router's /flush_cache); cb runs once, on the loop, when all have answered
 * or failed. Fails without calling cb when no worker is alive. */
sl_status sl_cluster_flush_cache(sl_cluster *cl, sl_cluster_flush_cb cb, void *ud, sl_err *e);

/* lost: 1 when the worker died with the generation unfinished (the chunk is
 * the cluster's FINISH_ERROR, not the worker's); 0 for every chunk the worker
 * sent. The callback may submit and abort generations. */
typedef void (*sl_cluster_chunk_cb)(void *ud, const Sluice__TokenChunk *chunk, int lost);

/* Sends g (its rid is assigned here and returned in *rid) to worker. g and
 * its arrays stay the caller's. When nng's send buffer is full the message
 * waits in the worker's queue (sent in order as the buffer drains). Fails
 * with SL_ERR_CLOSED when the worker is not alive, SL_ERR_LIMIT when
 * SL_CLUSTER_MAX_QUEUED generates already wait for it. */
sl_status sl_cluster_submit(sl_cluster *cl, int worker, Sluice__GenerateRequest *g,
                            sl_cluster_chunk_cb cb, void *ud, uint64_t *rid, sl_err *e);
/* Ends a generation: no more callbacks; the worker is told to drop it (if
 * it is still connected): the abort is never dropped on a full send buffer,
 * it waits and goes out before anything else. Unknown or finished rids are
 * ignored. */
void sl_cluster_abort(sl_cluster *cl, uint64_t rid);

/* Disaggregation: KvReady messages from workers go to cb (on the loop);
 * sl_cluster_send_kv_ready relays one to the worker running generation rid
 * (k->rid is set to rid). Fails with SL_ERR_CLOSED when rid is unknown or
 * its worker's link is down. */
typedef void (*sl_cluster_kv_ready_cb)(void *ud, int worker, const Sluice__KvReady *k);
void sl_cluster_set_kv_ready(sl_cluster *cl, sl_cluster_kv_ready_cb cb, void *ud);
sl_status sl_cluster_send_kv_ready(sl_cluster *cl, uint64_t rid, Sluice__KvReady *k, sl_err *e);
/* The worker running generation rid, or -1. */
int sl_cluster_gen_worker(const sl_cluster *cl, uint64_t rid);

/* Closes every socket and loop handle; in-flight generations get no more
 * callbacks. The loop must run until the handles are closed, then free. */
void sl_cluster_close(sl_cluster *cl);
void sl_cluster_free(sl_cluster *cl);

#endif

/* worker/pd.h: the worker's side of prefill/decode disaggregation
 * (docs/disaggregation.md).
 *
 * A worker started with --disaggregation-mode prefill|decode owns one sl_pd.
 * The server loop (worker/server/wserver.c) calls it at five points: a
 * generate arrives (the request gets its role), an engine event is about to
 * go to the router (the pd module may take it), a KvReady arrives from the
 * router, every loop turn (poll), and every load report (metrics).
 *
 *   decode:  generate(role DECODE) -> engine admits it (pages + slot, its own
 *            pool limits) -> pd_ready event -> KvReady{skip, pages, slot} to
 *            the router -> ... KvTransfer arrives on the transfer link ->
 *            KV and state written into the pages/slot -> activate: the first
 *            token streams to the router like any other.
 *   prefill: generate(role PREFILL, room, peer) -> engine computes the prompt
 *            and the first token, then HOLDS the memory -> KvReady (relayed
 *            by the router) says where to start -> KvTransfer packed, memory
 *            released (the prefix stays in this worker's cache) -> sent
 *            without blocking (retried each poll) -> a FINISH_STOP chunk with
 *            usage to the router ("prefill done").
 *
 * Transport: sl_pd_transport is the seam. The implementation here is nng:
 * the decode worker listens (PULL) on its transfer URL, prefill workers dial
 * it (PUSH), and every transfer is one KvTransfer message, host staged
 * (pages copied out of the cache into the message, and into the cache on the
 * other side). Between two TP 1 workers on the same GPU the message carries
 * no bytes: the decode worker copies the pages device to device out of the
 * prefill worker's cache, which holds them until a deadline (pd_share.h). What travels is the whole model's cache (pd_shard.h): a group
 * gathers its ranks' shards on rank 0 before sending and cuts them out after
 * receiving, so the two sides' TP sizes may differ. An NCCL point-to-point
 * transport would implement the same calls with the communicator of
 * kernels/comm/comm.h.
 *
 * Failures: every request waits at most timeout_ms for the other side; then
 * (or on an error from the other side, a bad layout, an abort) its memory is
 * freed on this side and the router gets a FINISH_ERROR chunk. A slot is never
 * zeroed once a transfer committed: the decode side writes the state and
 * activates in one step, and an aborted decode request frees its slot
 * without caching it.
 *
 * Threads: every call on the server loop's thread.
 */
#ifndef SL_PD_H
#define SL_PD_H

#include <nng/nng.h>
#include <stdint.h>

#include "engine.h"
#include "model.h"
#include "pd_shard.h"
#include "sluice.pb-c.h"

typedef struct sl_pd sl_pd;

typedef struct sl_pd_config {
    Sluice__DisaggRole role;  /* PREFILL or DECODE */
    const char *transfer_url; /* decode: where to listen for transfers */
    int timeout_ms;           /* wait for the other side (0: 30000) */
    sl_pd_shard *shard;       /* this rank's cache jobs (used, not owned) */
    int share;                /* TP 1: device to device with a worker on the same GPU
                                 (pd_share.h) when the backend can */
    /* tensor parallel: runs a cache job on every rank of the group
     * (sl_group_side with side_ctx the group); NULL at TP 1 */
    sl_status (*side)(void *ctx, const uint8_t *body, size_t n, sl_err *e);
    void *side_ctx;
} sl_pd_config;

/* Parses "prefill" | "decode" | "null" (NONE). Returns -1 on anything else. */
int sl_pd_role_parse(const char *s, Sluice__DisaggRole *out);
/* The default transfer URL for a listen URL: ipc://P -> ipc://P.kv,
 * tcp://H:N -> tcp://H:(N+1). Returns 0, or -1 if out is too small. */
int sl_pd_default_url(const char *listen, char *out, size_t n);

/* Starts the transport (decode: listens). g and m are used, not owned. */
sl_status sl_pd_new(sl_pd **out, const sl_pd_config *c, sl_engine *g, sl_model *m, sl_err *e);
void sl_pd_free(sl_pd *pd);
/* The router link the pd module answers on (KvReady, chunks). */
void sl_pd_attach(sl_pd *pd, nng_socket router);

/* A generate is about to be submitted as r: sets r's role and limits.
 * Returns NULL, or an error text (the caller rejects the request). */
const char *sl_pd_on_generate(sl_pd *pd, const Sluice__GenerateRequest *g, sl_sched_req *r);
/* 1 when the pd module took ev (it must not go to the router). */
int sl_pd_on_event(sl_pd *pd, const sl_sched_event *ev);
void sl_pd_on_kv_ready(sl_pd *pd, const Sluice__KvReady *k);
/* Receives transfers, sends what is ready, applies timeouts. Returns 1 when
 * something waits for the network (the caller should poll again soon). */
int sl_pd_poll(sl_pd *pd);
void sl_pd_fill_load(sl_pd *pd, Sluice__LoadReport *lr);

#endif

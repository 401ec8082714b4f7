/* worker/wserver.h: the worker's side of the router link.
 *
 * One nng PAIR1 socket listens on a tcp:// or ipc:// URL; the router dials
 * it. Every message is a protobuf sluice.Envelope (proto/sluice.proto):
 *   router -> worker: generate, abort, ping
 *   worker -> router: chunk (token ids, optional logprobs, finish reason and
 *                     usage on the last one), pong + load, periodic load
 * Every incoming message is validated (size, token ids against the
 * vocabulary, prompt + max_new_tokens against the context length, sampling
 * ranges, duplicate request ids); a bad generate is answered with a
 * FINISH_ERROR chunk naming the problem, and every rejected message is
 * logged. The server never exits on bad input.
 *
 * Sampling defaults (proto3 cannot tell "unset" from 0): a request without
 * SamplingParams gets the model's generation_config.json values; inside
 * SamplingParams, top_p = 0, top_k = 0 and repetition_penalty = 0 mean
 * "the model's default" (top_k = -1 turns top-k off); temperature is always
 * taken as given (0 = greedy). max_new_tokens = 0 runs the prefill only
 * (it warms the prefix cache) and finishes with FINISH_LENGTH.
 *
 *   sl_wserver_config c = {.url = "tcp://0.0.0.0:30001", .model_name = "tiny"};
 *   volatile sig_atomic_t stop = 0;
 *   sl_wserver_run(engine, model, &c, &stop, &e);   // returns when stop is set
 *
 * Threads: runs the engine loop on the calling thread until *stop, and a
 * link thread that receives every message as it arrives, so the router is
 * heard during a long step: pings are answered at once (the LoadReport says
 * how long the current step has run: LoadReport.busy_ms), aborts and
 * requests are queued and applied at the next step boundary (an abort of a
 * request still queued drops it there). When the router's pipe goes away
 * every request is aborted at the next step boundary (a new router starts
 * afresh). ipc:// sockets are created 0600.
 */
#ifndef SL_WSERVER_H
#define SL_WSERVER_H

#include <signal.h>

#include "engine.h"
#include "grammar.h"
#include "model.h"
#include "pd.h"

/* Bytes per incoming message. Stop token ids per request: proto/wire.h's
 * SL_WIRE_MAX_STOP_IDS. */
#define SL_WSERVER_MAX_MSG (64u << 20)

typedef struct sl_wserver_config {
    const char *url;
    const char *model_name; /* reported in load reports */
    int load_interval_ms;   /* periodic load reports (0: 1000) */
    /* Tensor-parallel leader (worker/group/group.h): tick runs every loop
     * turn (the group's keep-alives); an error ends the loop like a failed
     * step. With close_on_failure a failed step or tick closes the link at
     * once without answering the requests in flight: the router sees the
     * worker vanish and migrates them to another group. */
    sl_status (*tick)(void *ctx, sl_err *e);
    void *tick_ctx;
    int close_on_failure;
    /* Link authentication (proto/link_auth.h): with a secret (len > 0) a
     * new pipe must answer the challenge within handshake_ms (0: 5000)
     * before anything it sends is read; anything else closes it. */
    const struct sl_link_secret *secret;
    int handshake_ms;
    /* --disaggregation-mode prefill|decode (worker/pd/pd.h; NULL: unified) */
    sl_pd *pd;
    /* The model's tokens as bytes, for constrained decoding (common/grammar;
     * NULL: a request with a grammar is refused). The caller keeps it. */
    sl_gram_vocab *vocab;
} sl_wserver_config;

/* Compiled grammars a worker keeps (least recently used goes first). */
#define SL_WSERVER_GRAMMARS 64

sl_status sl_wserver_run(sl_engine *g, sl_model *m, const sl_wserver_config *c,
                         volatile sig_atomic_t *stop, sl_err *e);

#endif

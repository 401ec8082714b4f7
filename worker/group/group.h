/* worker/group/group.h: the runtime of a tensor-parallel worker group
 * (docs/parallel.md, "How a group starts", "Who owns what", "Failure
 * handling").
 *
 * N processes, one per rank, share one sl_comm. Rank 0 (the leader) owns the
 * router link, the scheduler and the radix cache: its engine's plan hook
 * broadcasts every batch (plan.h) before the forward. Ranks 1..N-1
 * (followers) build an engine of the same sizes (the leader's sizes,
 * broadcast at start-up: pools are identical on every rank whatever each
 * rank's free memory) and run each received batch with sl_engine_follow.
 *
 *   sl_group *tg; sl_group_join(&tg, &cfg, &e);           // every rank
 *   ... load the model with sl_group_comm(tg) ...
 *   sl_group_agree(tg, st, e.msg, &e);                     // everyone loaded?
 *   leader:   sl_engine_new(&g, ...); sl_group_sizes(tg, &c, &g_sched_cfg, &e);
 *             sl_group_agree(...); sl_engine_warm(g, ...); sl_group_lead(tg, g);
 *             wserver loop with sl_group_tick as its tick; sl_group_stop(tg)
 *   follower: sl_group_sizes(tg, &c, NULL, &e); sl_engine_new(&g, ...);
 *             sl_group_check_sizes(tg, g, &e); sl_group_agree(...);
 *             sl_engine_warm(g, ...);
 *             sl_group_follow(tg, g, &stop, &e);           // until STOP or failure
 *   sl_group_free(tg);
 *
 * Liveness: nothing waits longer than the comm's timeout. An idle leader
 * sends a KEEP message every keep interval (a quarter of the timeout, at
 * most 1 s), and at most once per interval a message carries SYNC: every
 * rank then enters a barrier, so a rank that stopped answering fails the
 * group within the timeout, busy or idle. Any comm error aborts the comm:
 * peers fail fast.
 *
 * Order: the forward runs collectives on the same comm, which has no tags,
 * so every rank issues, per message, the same sequence: header, body, the
 * SYNC barrier, then the forward (followers: sl_engine_follow, the leader's
 * forward exactly). The graph warm-up (sl_engine_warm) also runs forwards:
 * every rank warms after the last agree (the engine defers it).
 *
 * Threads: the plan hook runs on the engine's compute thread, sl_group_tick
 * and sl_group_stop on the leader's main thread; a mutex orders them, held by
 * the hook from the plan's broadcast to the end of its forward. Everything
 * else: one thread.
 */
#ifndef SL_GROUP_H
#define SL_GROUP_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "comm.h"
#include "engine.h"

typedef struct sl_group sl_group;

typedef struct sl_group_config {
    int tp_size, tp_rank;
    const char *init_addr;   /* rank 0's HOST:PORT */
    int timeout_ms;          /* the comm's deadline (> 0) */
    const char *fingerprint; /* model + config + flags: equal on every rank */
    sl_backend *be;
} sl_group_config;

/* Joins the group (sl_comm_new): blocks until every rank arrived or the
 * timeout passed; the comm's errors name the culprit. */
sl_status sl_group_join(sl_group **out, const sl_group_config *c, sl_err *e);
void sl_group_free(sl_group *g);
sl_comm *sl_group_comm(sl_group *g);
int sl_group_rank(const sl_group *g);

/* Every rank reports mine (SL_OK or an error with msg); returns SL_OK when
 * all are OK, else the first failing rank's error ("rank R: msg") on every
 * rank. A collective: every rank calls it at the same point. */
sl_status sl_group_agree(sl_group *g, sl_status mine, const char *msg, sl_err *e);

/* Start-up sizes (fails only when the comm does). Leader: leader = its
 * engine's scheduler config, sent.
 * Follower: leader = NULL; c gets the leader's pool sizes and context
 * (and overlap off: a follower never schedules). */
sl_status sl_group_sizes(sl_group *g, sl_engine_config *c, const sl_sched_config *leader,
                         sl_err *e);
/* Follower: its engine's pools must equal the leader's. */
sl_status sl_group_check_sizes(sl_group *g, const sl_engine *eng, sl_err *e);

/* Leader: installs the plan hook on eng (which must outlive the group's use). */
void sl_group_lead(sl_group *g, sl_engine *eng);
/* Leader, main thread, every loop turn: a KEEP (with SYNC and a barrier)
 * when nothing was sent for the keep interval. An error means the group is
 * down. */
sl_status sl_group_tick(void *g, sl_err *e);
/* Leader: tells the followers to exit (best effort). */
void sl_group_stop(sl_group *g);

/* Side jobs: work outside the forward that every rank joins (a
 * prefill/decode transfer: each rank copies its shard of a request's cache
 * and the leader gathers or scatters them, worker/pd/pd_shard.h). fn runs
 * with the job's body on every rank and may use the comm; an error breaks
 * the group. Every rank installs the same handler (before following). */
typedef sl_status (*sl_group_side_fn)(void *ctx, const uint8_t *body, size_t n, sl_err *e);
void sl_group_set_side(sl_group *g, sl_group_side_fn fn, void *ctx);
/* Leader, main thread: broadcasts body (n: a multiple of 4, at least 4) as a
 * SIDE message and runs the handler here too, between two forwards (it takes
 * the plan mutex). ctx is an sl_group (the signature of sl_group_side_fn, so
 * a caller that may or may not be in a group takes one function pointer). */
sl_status sl_group_side(void *g, const uint8_t *body, size_t n, sl_err *e);

/* Follower: receives and runs plans until STOP (returns SL_OK), *stop (a
 * signal; returns SL_OK), or a failure: a malformed plan, a forward error, or
 * the leader gone or silent past the timeout (returns the error). */
sl_status sl_group_follow(sl_group *g, sl_engine *eng, volatile sig_atomic_t *stop, sl_err *e);

#endif

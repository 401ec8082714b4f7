/* worker/pd/pd_shard.h: a request's cache in and out of a worker for a
 * prefill/decode transfer, whatever the TP sizes of the two sides
 * (docs/disaggregation.md, "Different TP sizes").
 *
 * What travels is the WHOLE model's cache of the request, laid out as a TP-1
 * worker holds it: every attention layer's K pages then V pages (token rows
 * of Hkv·D values), then every linear layer's conv slot ([C][K-1] f32,
 * channels q | k | v) and SSM slot ([Hv][Dk][Dv] f32). A prefill group of N
 * ranks gathers its shards into that layout; a decode group of M ranks cuts
 * it into its own shards. So any N sends to any M, and the reshard (SGLang
 * #22060: the conv state is three blocks, each split on its own) lives here
 * once, driven by the sharding rule of worker/model (docs/parallel.md):
 *   KV     rank r holds heads [r·Hkv/N, +Hkv/N), or head r/(N/Hkv) when
 *          N > Hkv (replicated: ranks holding one head hold equal bytes)
 *   conv   q [r·Hk/N·Dk, +Hk/N·Dk), k the same past Hk·Dk, v [r·Hv/N·Dv, ..)
 *          past 2·Hk·Dk: three channel blocks
 *   SSM    value heads [r·Hv/N, +Hv/N)
 *
 * A job (export: cache -> whole bytes; import: whole bytes -> cache, into one
 * or two state slots) is a small body every rank of a group runs
 * (sl_group_side): each rank copies its shard, the followers send theirs to
 * rank 0 or receive theirs from it over the comm (sl_comm_send_bytes), and
 * rank 0 places them. At TP 1 the job runs alone and copies straight between
 * the cache and the whole bytes.
 *
 * Threads: the caller's (the worker's main thread on rank 0, the follow loop
 * on the others); the engine's forward must not run meanwhile (the group's
 * plan mutex, or a worker without overlap scheduling at TP 1).
 */
#ifndef SL_PD_SHARD_H
#define SL_PD_SHARD_H

#include <stddef.h>
#include <stdint.h>

#include "comm.h"
#include "engine.h"
#include "model.h"

typedef struct sl_pd_shard sl_pd_shard;

enum { SL_PD_EXPORT = 1, SL_PD_IMPORT = 2 };

/* g and m (this rank's engine and model) and comm (NULL at TP 1) are used,
 * not owned. */
sl_status sl_pd_shard_new(sl_pd_shard **out, sl_engine *g, sl_model *m, sl_comm *comm, sl_err *e);
void sl_pd_shard_free(sl_pd_shard *s);

/* Whole-model bytes: n_pages KV pages of every attention layer; one state. */
size_t sl_pd_shard_kv_bytes(const sl_pd_shard *s, int n_pages);
size_t sl_pd_shard_state_bytes(const sl_pd_shard *s);
/* What both sides must agree on for the whole bytes to mean the same:
 * architecture, layer counts, whole KV row and dtype, page size, whole
 * conv and SSM slot sizes. Not the TP size. */
const char *sl_pd_shard_layout(const sl_pd_shard *s);

/* The body of a job over pages[0..n) and state slots slot, slot2 (-1: none;
 * slot2 is an import's second copy). Returns its length in bytes (a multiple
 * of 4), or 0 if cap is too small. */
size_t sl_pd_shard_job(uint8_t *body, size_t cap, int op, const int32_t *pages, int n,
                       int32_t slot, int32_t slot2);
/* Rank 0: where the next job reads (import) or writes (export) the whole
 * bytes: kv (sl_pd_shard_kv_bytes) and state (sl_pd_shard_state_bytes, when
 * the job has a slot). */
void sl_pd_shard_bind(sl_pd_shard *s, uint8_t *kv, uint8_t *state);
/* Runs a job on this rank (the group side handler: ctx is the sl_pd_shard).
 * Followers check the body against their own pools first. */
sl_status sl_pd_shard_run(void *ctx, const uint8_t *body, size_t n, sl_err *e);

#endif

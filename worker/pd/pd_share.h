/* worker/pd/pd_share.h: a request's cache device to device between a
 * prefill worker and a decode worker on the same GPU (docs/disaggregation.md,
 * "Transports").
 *
 * The prefill worker exports its cache tensors once (a blob of handles,
 * sl_be_share_export) and sends the blob with each transfer instead of the
 * bytes, naming its pages and state slot and holding them until a deadline.
 * The decode worker opens the blob (once per prefill worker: the blob's epoch)
 * and copies those pages and that slot into its own with sl_be_copy, on the
 * GPU. Both sides must be TP 1 with the same cache layout (pd_shard.h checks
 * the layout string) and report the same share id: this host's boot id and
 * the GPU's UUID, so a handle is only ever opened where it means something
 * and the deadline (CLOCK_MONOTONIC) is read on the clock that wrote it.
 *
 * Threads: the server loop's; the engine's forward must not run meanwhile
 * (PD workers run without overlap scheduling).
 */
#ifndef SL_PD_SHARE_H
#define SL_PD_SHARE_H

#include <stddef.h>
#include <stdint.h>

#include "engine.h"
#include "model.h"

typedef struct sl_pd_share sl_pd_share;

/* NULL when this worker's backend cannot share device memory (CPU) or the
 * host has no boot id to tell hosts apart. g and m are used, not owned. */
sl_pd_share *sl_pd_share_new(sl_engine *g, sl_model *m);
void sl_pd_share_free(sl_pd_share *s);
/* "boot id/GPU UUID": equal on both sides -> the decode side can open the
 * prefill side's blob. */
const char *sl_pd_share_id(const sl_pd_share *s);

/* Prefill: about to lend a request's pages and slot: waits until this
 * worker's queued device work is done (the decode side reads on its own
 * stream, unordered with ours: the last writes of the request's forward, or
 * of the state copies after it, must have landed), then gives this worker's
 * blob (built on the first call; owned by s). */
sl_status sl_pd_share_lend(sl_pd_share *s, const uint8_t **blob, size_t *n, sl_err *e);

/* Decode: copies pages src[0..n) of the worker whose blob this is into this
 * worker's pages dst[0..n), and its state slot src_slot (-1: none) into
 * dst_slot and, when >= 0, dst_slot2; returns once the copies are done. */
sl_status sl_pd_share_pull(sl_pd_share *s, const uint8_t *blob, size_t blob_n, const int32_t *src,
                           const int32_t *dst, int n, int32_t src_slot, int32_t dst_slot,
                           int32_t dst_slot2, sl_err *e);

#endif

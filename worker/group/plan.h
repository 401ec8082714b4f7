/* worker/group/plan.h: the batch plan rank 0 of a tensor-parallel group
 * broadcasts to its followers before every forward (docs/parallel.md, "The
 * plan message").
 *
 * A message is a fixed 32-byte header, then (for a plan) a body of
 * header.body_len bytes; both travel with sl_comm_bcast_bytes, the header
 * first (its size is what every rank agrees on), then the body. All
 * integers are little-endian.
 *
 *   header  u32 magic 'SLTP'  u16 version (1)  u16 kind  u32 body_len
 *           u32 flags  u64 seq  u32 checksum (FNV-1a of the body)  u32 zero
 *   body    i32 n_tokens T, n_seqs S, page_size, max_pages P, n_copy C, n_rows R
 *           i32 ids[T] pos[T] kv_slot[T] q_start[S+1] kv_len[S]
 *               page_table[S*P] state_slot[S] state_fresh[S] track_slot[S]
 *               track_len[S] copy_dst[C] copy_src[C] rows[R]
 *
 * Kinds: PLAN (a batch: the follower runs it with sl_engine_follow), KEEP
 * (no body: the leader is idle but alive), STOP (no body: the leader shuts
 * down cleanly; followers exit 0), SIDE (a body of 4..SL_PLAN_MAX_BODY bytes
 * for the group's side handler, group.h: work outside the forward that every
 * rank joins, such as copying a request's cache shard for a prefill/decode
 * transfer). Flag SYNC (any kind): every rank enters
 * sl_comm_barrier right after the message, before a PLAN's forward (whose
 * collectives share the comm), which is how a stopped rank is noticed.
 *
 * Validation (sl_plan_decode): the same discipline as the router link. A
 * follower never trusts the leader's bytes: the header's magic, version,
 * kind, length and checksum, then every count against the follower's own
 * pools and every index against the array it will index (token ids against
 * the vocabulary, KV slots and page ids against the KV pool, state slots
 * against the state pool, q_start monotonic and ending at T, rows inside the
 * batch). A message that fails is an error naming the field; nothing is
 * read outside the buffer and nothing out of range reaches the model.
 *
 * Threads: pure functions; a decoded batch points into its sl_plan_buf.
 */
#ifndef SL_PLAN_H
#define SL_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "scheduler.h"
#include "sl_err.h"

#define SL_PLAN_MAGIC 0x50544C53u /* "SLTP" */
#define SL_PLAN_VERSION 1
#define SL_PLAN_HEADER_BYTES 32
#define SL_PLAN_MAX_BODY (256u << 20)
#define SL_PLAN_FLAG_SYNC 1u /* every rank enters sl_comm_barrier after this message */

typedef enum sl_plan_kind {
    SL_PLAN_KIND_PLAN = 1,
    SL_PLAN_KIND_KEEP = 2,
    SL_PLAN_KIND_STOP = 3,
    SL_PLAN_KIND_SIDE = 4,
} sl_plan_kind;

typedef struct sl_plan_header {
    uint32_t kind, body_len, flags, checksum;
    uint64_t seq;
} sl_plan_header;

/* What a follower checks a plan against: its own engine's sizes. */
typedef struct sl_plan_limits {
    int vocab;
    int page_size;
    int n_pages;     /* KV pool pages: slots are [0, n_pages * page_size) */
    int n_slots;     /* state pool slots (0: not hybrid) */
    int max_seqs;    /* sequences per batch (the engine's max running) */
    int max_rows;    /* sampled rows per batch */
    int context_len; /* positions are [0, context_len) */
} sl_plan_limits;

/* A growable byte buffer, and the decoded batch's arrays (they point into
 * it). Zero-initialise; sl_plan_buf_free releases. */
typedef struct sl_plan_buf {
    uint8_t *p;
    size_t n, cap;
} sl_plan_buf;
void sl_plan_buf_free(sl_plan_buf *b);

void sl_plan_header_pack(uint8_t out[SL_PLAN_HEADER_BYTES], const sl_plan_header *h);
/* Checks magic, version, kind and body_len (PLAN: 24..SL_PLAN_MAX_BODY;
 * SIDE: 4..SL_PLAN_MAX_BODY; others: 0). */
sl_status sl_plan_header_unpack(sl_plan_header *h, const uint8_t in[SL_PLAN_HEADER_BYTES],
                                sl_err *e);

/* The body of b (its forward part: no samplers) into out (replacing its
 * contents); sets h's kind, body_len and checksum. */
sl_status sl_plan_encode(const sl_sched_batch *b, sl_plan_buf *out, sl_plan_header *h, sl_err *e);
/* Validates body (h from sl_plan_header_unpack) against lim and fills *b
 * with pointers into body (b's samplers, outputs and private fields zero).
 * body must be 4-byte aligned (an sl_plan_buf is). */
sl_status sl_plan_decode(const sl_plan_header *h, const uint8_t *body, const sl_plan_limits *lim,
                         sl_sched_batch *b, sl_err *e);

uint32_t sl_plan_checksum(const uint8_t *p, size_t n);

#endif

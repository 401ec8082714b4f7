/* kernels/comm/comm.h: the communicator of a tensor-parallel worker group.
 *
 * A TP group is world_size processes (one per GPU, or N CPU processes in CI),
 * on one host or several. Each process creates one sl_comm with its rank; the
 * group meets at rank 0's --dist-init-addr HOST:PORT, checks that everyone
 * agrees on the world size and on a "fingerprint" (model path + flags hash:
 * two groups started with different models must not join), and then offers
 * the collectives tensor parallelism needs: all-reduce (sum), all-gather along
 * a dimension, broadcast, barrier, and point-to-point send/recv (for
 * prefill/decode disaggregation).
 *
 * Two implementations behind one interface (sl_comm_kind):
 *   CPU   buffers in host memory, for the CPU backend. Within one host the
 *         data moves through a POSIX shared-memory segment; across hosts (or
 *         with transport TCP forced) over a full mesh of TCP connections.
 *         Results are deterministic and bit-identical on every rank: every
 *         element of an all-reduce is summed by exactly one rank, in rank
 *         order 0..N-1 (bf16 in an f32 accumulator, rounded once), and that
 *         value is handed to all.
 *   NCCL  device buffers, for the CUDA backend: the collectives are enqueued on
 *         the backend's stream (sl_cuda_stream) and return at once, so they can
 *         be captured in a CUDA graph. NCCL picks its own reduction order (bf16
 *         may round per step); results are still identical on every rank.
 * Both keep the TCP mesh of the bootstrap for host-side control (barrier,
 * sl_comm_bcast_bytes, liveness).
 *
 * Usage (every rank runs the same code):
 *   sl_comm_config cfg = {.rank = r, .world_size = n, .init_addr = "10.0.0.1:29500",
 *                         .timeout_ms = 60000, .fingerprint = model_hash, .be = be};
 *   sl_comm *c;
 *   if (sl_comm_new(&c, &cfg, &e) != SL_OK) { log e.msg; exit }
 *   ... out_proj(x) ...
 *   sl_comm_all_reduce(c, &x, &e);                 // x = Σ over ranks of x
 *   sl_comm_all_gather(c, &logits, &shard, 1, &e); // vocab-parallel logits
 *   sl_comm_sync(c, &e);                           // NCCL: wait with a deadline
 *   sl_comm_free(c);
 *
 * Blocking and deadlines: no call waits forever. Creation waits at most
 * timeout_ms for the whole group; each later blocking call waits at most
 * timeout_ms for its peers. On the CPU kind every collective blocks until its
 * result is in place. On the NCCL kind tensor collectives only enqueue; a dead
 * peer shows up in sl_comm_sync (which is the call to wait on instead of a bare
 * stream sync), never as a hang there.
 *
 * Failure: every rank must issue the same collectives in the same order (and
 * matching send/recv pairs). Over TCP a mismatch is detected (each transfer
 * carries its op and size) and is an error; over shared memory and NCCL it is
 * not (wrong data or a timeout). Any error in a
 * collective breaks the communicator for good: the rank that sees it aborts
 * (its peers then fail fast instead of at their deadline) and every later call
 * returns SL_ERR_CLOSED. The group is then torn down and recreated (the
 * worker restarts).
 *
 * Threads: one thread uses a communicator at a time, except sl_comm_abort,
 * which any thread (a watchdog, a signal-driven shutdown path) may call while
 * a call is in flight. Ownership: sl_comm_new allocates, sl_comm_free releases
 * (sockets, shared memory, the NCCL communicator); tensors stay the caller's.
 */
#ifndef SL_COMM_H
#define SL_COMM_H

#include <stddef.h>

#include "backend.h"
#include "sl_err.h"

#define SL_COMM_MAX_WORLD 256
#define SL_COMM_MAX_FINGERPRINT 255

typedef struct sl_comm sl_comm; /* opaque */

typedef enum sl_comm_kind {
    SL_COMM_KIND_AUTO = 0, /* NCCL for a CUDA backend, CPU otherwise (sl_comm_kind_for) */
    SL_COMM_KIND_CPU,
    SL_COMM_KIND_NCCL,
} sl_comm_kind;

/* How CPU-kind data moves. AUTO: shared memory when every rank reports the
 * same host id (hostname + boot id), TCP otherwise. Any rank asking for TCP
 * (here or with SLUICE_COMM_TRANSPORT=tcp in its environment) makes the whole
 * group use TCP: that is how tests cover the cross-host path on one host. */
typedef enum sl_comm_transport {
    SL_COMM_TRANSPORT_AUTO = 0,
    SL_COMM_TRANSPORT_SHM,
    SL_COMM_TRANSPORT_TCP,
    SL_COMM_TRANSPORT_NCCL, /* reported by sl_comm_transport for the NCCL kind */
} sl_comm_transport;

typedef struct sl_comm_config {
    int rank;                /* 0..world_size-1, unique in the group */
    int world_size;          /* 1..SL_COMM_MAX_WORLD */
    const char *init_addr;   /* rank 0's HOST:PORT ([v6]:PORT); rank 0 listens there */
    int timeout_ms;          /* deadline of creation and of every blocking call (> 0) */
    const char *fingerprint; /* must be equal on all ranks; NULL = ""; <= 255 bytes */
    sl_comm_kind kind;
    sl_comm_transport transport; /* CPU kind: AUTO or TCP (SHM is what AUTO picks) */
    sl_backend *be;              /* NCCL: the CUDA backend whose stream runs the collectives */
    size_t shm_bytes;            /* CPU/shm: bytes per staging slot (0: 2 MiB); larger
                                    buffers go through in pieces */
} sl_comm_config;

/* The kind AUTO resolves to for be: NCCL for "cuda*" backends, CPU otherwise. */
sl_comm_kind sl_comm_kind_for(const sl_backend *be);
const char *sl_comm_kind_name(sl_comm_kind k);
const char *sl_comm_transport_name(sl_comm_transport t);

/* Joins the group. Blocks until every rank has arrived and the group is
 * connected, or timeout_ms has passed. Errors name the culprit on every rank
 * that can learn it: "rank R never arrived within T ms", "cannot reach
 * --dist-init-addr HOST:PORT: <reason>", "rank R: world size mismatch ...",
 * "group fingerprint mismatch: rank 0 has 'A', rank R has 'B'", "rank R
 * claimed by two processes". *out is NULL on error. */
sl_status sl_comm_new(sl_comm **out, const sl_comm_config *cfg, sl_err *e);
/* Releases everything; c may be NULL. Does not wait for peers (a peer still
 * in a call with this rank then fails fast: its connection closes). */
void sl_comm_free(sl_comm *c);

int sl_comm_rank(const sl_comm *c);
int sl_comm_world_size(const sl_comm *c);
sl_comm_kind sl_comm_kind_of(const sl_comm *c);
sl_comm_transport sl_comm_transport_of(const sl_comm *c);

/* ---- collectives: every rank calls them in the same order --------------- */
/* Tensors must be contiguous; host memory on the CPU kind, device memory on
 * NCCL. CPU: blocks until done. NCCL: enqueues on the backend's stream. */

/* t = Σ over ranks of t, in place. F32 and BF16 (bf16 accumulates in f32 on
 * the CPU kind); NCCL also F16 and I32. */
sl_status sl_comm_all_reduce(sl_comm *c, sl_tensor *t, sl_err *e);
/* Concatenation of every rank's in along dimension dim, rank-major: out has
 * in's shape except ne[dim] * world_size, same dtype. NCCL with dim > 0 goes
 * through a scratch buffer the communicator keeps: the first call with a given
 * size must not be inside a graph capture (it may grow the buffer). */
sl_status sl_comm_all_gather(sl_comm *c, sl_tensor *out, const sl_tensor *in, int dim, sl_err *e);
/* t on every rank = t on root. Any dtype. */
sl_status sl_comm_broadcast(sl_comm *c, sl_tensor *t, int root, sl_err *e);
/* Host-side: returns once every rank has entered it (NCCL: does not wait for
 * the stream; call sl_comm_sync first for that). */
sl_status sl_comm_barrier(sl_comm *c, sl_err *e);
/* Host bytes from root to everyone (control payloads: sizes, seeds, ids), on
 * every kind. Blocks. n must be equal on all ranks. */
sl_status sl_comm_bcast_bytes(sl_comm *c, void *buf, size_t n, int root, sl_err *e);

/* ---- point to point: only the two ranks involved call them --------------- */
/* A send must be matched by one recv of the same byte size on peer; pairs
 * between two ranks match in issue order. CPU: send blocks until the data is
 * handed to the kernel's socket buffer or the peer took it; recv until it has
 * arrived. NCCL: enqueued on the stream, where a send waits for its recv: two
 * ranks that both send first deadlock on the GPU (sl_comm_sync then times out)
 * unless large exchanges are ordered (even ranks send first, odd ranks
 * receive first). */
sl_status sl_comm_send(sl_comm *c, const sl_tensor *t, int peer, sl_err *e);
sl_status sl_comm_recv(sl_comm *c, sl_tensor *t, int peer, sl_err *e);

/* Host bytes to or from one peer, on every kind (the bootstrap's TCP mesh:
 * bulk state that leaves through the host anyway, such as a request's cache
 * gathered for a prefill/decode transfer). The same pairing rules as above;
 * send blocks until the peer has taken the bytes or the deadline passed. */
sl_status sl_comm_send_bytes(sl_comm *c, const void *buf, size_t n, int peer, sl_err *e);
sl_status sl_comm_recv_bytes(sl_comm *c, void *buf, size_t n, int peer, sl_err *e);

/* Waits until the collectives issued so far have completed, at most
 * timeout_ms; a peer that died or an NCCL error aborts the communicator and
 * returns an error instead of hanging. CPU kind: returns SL_OK at once (its
 * calls finish before returning). Not during a graph capture. */
sl_status sl_comm_sync(sl_comm *c, sl_err *e);

/* Makes this rank's in-flight and following calls fail, and its peers' calls
 * that involve it fail fast (its sockets shut down; shared memory flags the
 * group aborted; NCCL: ncclCommAbort). Any thread, any time, idempotent.
 * sl_comm_free is still needed. */
void sl_comm_abort(sl_comm *c);

#endif

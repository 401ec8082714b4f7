/* kernels/comm/comm_impl.h: what the communicator's implementations share.
 * Not for users of comm.h.
 *
 * A communicator is the TCP mesh built by the bootstrap (comm_net.c: one
 * connected socket per peer) plus a data path chosen from an ops table:
 * comm_tcp_ops (the mesh itself), comm_shm_ops (comm_shm.c, one host) or
 * comm_nccl_ops (comm_nccl.c). Host-side calls (barrier, bcast_bytes) always
 * use c->host, which is the shm or TCP table.
 *
 * Ops see raw contiguous buffers; comm.c has already checked shapes, dtypes
 * and memory placement. Every op returns SL_OK or an error that has already
 * broken the communicator (comm_fail).
 */
#ifndef SL_COMM_IMPL_H
#define SL_COMM_IMPL_H

#include <stdatomic.h>
#include <stdint.h>

#include "comm.h"

typedef struct comm_ops {
    /* buf[n] of dt summed over ranks, in place */
    sl_status (*all_reduce)(sl_comm *c, void *buf, size_t n, sl_dtype dt, sl_err *e);
    /* in is [outer, inner] bytes; out is [outer, world, inner] (rank-major
     * concatenation along the dimension where inner starts) */
    sl_status (*all_gather)(sl_comm *c, void *out, const void *in, size_t outer, size_t inner,
                            sl_err *e);
    sl_status (*broadcast)(sl_comm *c, void *buf, size_t bytes, int root, sl_err *e);
    sl_status (*barrier)(sl_comm *c, sl_err *e);
    sl_status (*send)(sl_comm *c, const void *buf, size_t bytes, int peer, sl_err *e);
    sl_status (*recv)(sl_comm *c, void *buf, size_t bytes, int peer, sl_err *e);
    sl_status (*sync)(sl_comm *c, sl_err *e); /* NULL: nothing to wait for */
    void (*abort)(sl_comm *c);                /* beyond the sockets; NULL: nothing */
    void (*fini)(sl_comm *c);                 /* beyond the sockets; NULL: nothing */
} comm_ops;

/* Op tags carried by every mesh transfer, so mismatched call orders are an
 * error and not silently mixed data. */
typedef enum comm_op {
    COMM_OP_AGREE = 1,
    COMM_OP_ALL_REDUCE,
    COMM_OP_ALL_GATHER,
    COMM_OP_BROADCAST,
    COMM_OP_BARRIER,
    COMM_OP_P2P,
} comm_op;

struct sl_comm {
    int rank, world, timeout_ms;
    sl_comm_kind kind;
    sl_comm_transport transport;
    const comm_ops *ops;       /* tensor collectives */
    const comm_ops *host;      /* barrier, bcast_bytes: shm or tcp */
    int fd[SL_COMM_MAX_WORLD]; /* mesh socket to each peer; -1 for self */
    uint64_t group;            /* random id chosen by rank 0 */
    atomic_int aborted;
    int broken;
    char broken_msg[256];
    char *scratch; /* tcp reduce / gather staging, grown on demand */
    size_t scratch_bytes;
    struct comm_shm *shm;   /* comm_shm.c */
    struct comm_nccl *nccl; /* comm_nccl.c */
};

extern const comm_ops comm_tcp_ops, comm_shm_ops;

/* Monotonic clock in ms; deadline of a call starting now. */
int64_t comm_now_ms(void);
static inline int64_t comm_deadline(const sl_comm *c)
{
    return comm_now_ms() + c->timeout_ms;
}
const char *comm_op_name(comm_op op);

/* Records the error in e, marks c broken (later calls: SL_ERR_CLOSED) and
 * aborts it so the peers fail fast. Returns code. */
sl_status comm_fail(sl_comm *c, sl_err *e, sl_status code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Shuts the sockets down (wakes pollers in other threads); idempotent. */
void comm_net_abort(sl_comm *c);
void comm_net_close(sl_comm *c);
/* Grows c->scratch to at least n bytes. */
sl_status comm_scratch(sl_comm *c, size_t n, sl_err *e);

/* Bootstrap (comm_net.c): rendezvous at init_addr, handshake, full mesh.
 * Fills c->fd, c->group and c->transport (SHM or TCP: what rank 0 decided). */
sl_status comm_net_bootstrap(sl_comm *c, const sl_comm_config *cfg, sl_err *e);
/* 0 when every peer connection is up; else the first rank whose connection
 * was closed (a dead or aborted process) as rank+1. Does not block. */
int comm_net_dead_peer(sl_comm *c);

/* One transfer of a mesh exchange: a 16-byte header (op, length) then len
 * payload bytes. */
typedef struct comm_xfer {
    int peer;
    char *buf;
    size_t len;
    size_t done; /* header + payload bytes moved so far */
    unsigned char hdr[16];
} comm_xfer;
/* Moves every tx and rx transfer concurrently (no deadlock whatever the
 * order), until done, the deadline, a peer closing, or an abort. */
sl_status comm_net_xchg(sl_comm *c, comm_op op, comm_xfer *tx, int ntx, comm_xfer *rx, int nrx,
                        int64_t deadline, sl_err *e);

/* Shared memory (comm_shm.c). Rank 0 creates the segment before answering the
 * handshake, the others open it; comm_shm_attach is collective and leaves
 * c->shm NULL (and SL_OK) when any rank could not map it: TCP then. */
sl_status comm_shm_attach(sl_comm *c, size_t slot_bytes, sl_err *e);
void comm_shm_detach(sl_comm *c);

/* NCCL (comm_nccl.c, or comm_nccl_absent.c without CUDA): creates the NCCL
 * communicator over the bootstrapped mesh and switches c->ops to it. */
sl_status comm_nccl_init(sl_comm *c, const sl_comm_config *cfg, sl_err *e);

/* out[i] = Σ_k srcs[k][i] for k = 0..world-1 in order; f32 accumulate, one
 * rounding for bf16. out may alias one of srcs. */
void comm_reduce(sl_dtype dt, void *out, const void *const *srcs, int nsrc, size_t n);
/* Places bytes [off, off+len) of rank k's all-gather input (src points at byte
 * off) into out ([outer, world, inner] bytes). */
void comm_gather_place(char *out, int world, int k, size_t inner, const char *src, size_t off,
                       size_t len);

#endif

/* The NCCL data path: device buffers, collectives enqueued on the CUDA
 * backend's stream (nothing here synchronises the host with the stream, so
 * every call can be captured into a CUDA graph).
 *
 * The bootstrap's TCP mesh stays: rank 0's ncclUniqueId travels over it, and
 * it carries barrier / bcast_bytes and tells sl_comm_sync that a peer died.
 * The communicator is created non-blocking so that initialisation and every
 * call can be polled against the deadline (ncclCommGetAsyncError) and the
 * communicator aborted (ncclCommAbort) instead of hanging on a dead peer.
 */
#include <cuda_runtime.h>
#include <nccl.h>
#include <stdlib.h>
#include <time.h>

#include "comm_impl.h"
#include "cuda/cuda_backend.h"
#include "sl_log.h"

static const comm_ops comm_nccl_ops;

struct comm_nccl {
    ncclComm_t comm;
    cudaStream_t stream;
    cudaEvent_t done; /* sl_comm_sync waits on it */
    char *scratch;    /* all-gather along dim > 0 */
    size_t scratch_bytes;
};

static void nap_us(long us)
{
    struct timespec ts = {0, us * 1000L};
    nanosleep(&ts, NULL);
}

/* Waits for the non-blocking communicator to leave ncclInProgress after a
 * call returned res; fails (and aborts) on an error or at the deadline. */
static sl_status nccl_settle(sl_comm *c, ncclResult_t res, const char *what, int64_t deadline,
                             sl_err *e)
{
    while (res == ncclInProgress) {
        if (atomic_load(&c->aborted))
            return comm_fail(c, e, SL_ERR_CLOSED, "%s: communicator aborted", what);
        if (comm_now_ms() >= deadline)
            return comm_fail(c, e, SL_ERR_LIMIT, "%s: NCCL did not finish within %d ms", what,
                             c->timeout_ms);
        nap_us(100);
        if (ncclCommGetAsyncError(c->nccl->comm, &res) != ncclSuccess) res = ncclInternalError;
    }
    if (res != ncclSuccess)
        return comm_fail(c, e, SL_ERR_DEVICE, "%s: %s (%s)", what, ncclGetErrorString(res),
                         ncclGetLastError(c->nccl->comm));
    return SL_OK;
}

sl_status comm_nccl_init(sl_comm *c, const sl_comm_config *cfg, sl_err *e)
{
    int64_t deadline = comm_deadline(c);
    struct comm_nccl *n = calloc(1, sizeof *n);
    if (!n) return sl_err_set(e, SL_ERR_NOMEM, "NCCL state");
    c->nccl = n;
    c->ops = &comm_nccl_ops;
    n->stream = (cudaStream_t)sl_cuda_stream(cfg->be);
    int dev = 0;
    cudaError_t ce = cudaStreamGetDevice(n->stream, &dev);
    if (ce == cudaSuccess) ce = cudaSetDevice(dev);
    if (ce == cudaSuccess) ce = cudaEventCreateWithFlags(&n->done, cudaEventDisableTiming);
    if (ce != cudaSuccess)
        return sl_err_set(e, SL_ERR_DEVICE, "NCCL setup on the backend's device: %s",
                          cudaGetErrorString(ce));

    /* NVLink SHARP (NVLS) reserves a large slice of device memory per
     * communicator and has hung on some drivers; the user may still turn it
     * on by setting the variable themselves. */
    setenv("NCCL_NVLS_ENABLE", "0", 0);

    ncclUniqueId id;
    if (c->rank == 0) {
        ncclResult_t r = ncclGetUniqueId(&id);
        if (r != ncclSuccess)
            return sl_err_set(e, SL_ERR_DEVICE, "ncclGetUniqueId: %s", ncclGetErrorString(r));
    }
    sl_status st = comm_tcp_ops.broadcast(c, &id, sizeof id, 0, e);
    if (st != SL_OK) return st;

    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclResult_t r = ncclCommInitRankConfig(&n->comm, c->world, id, c->rank, &config);
    if (r != ncclSuccess && r != ncclInProgress)
        return sl_err_set(e, SL_ERR_DEVICE, "ncclCommInitRankConfig (rank %d of %d): %s", c->rank,
                          c->world, ncclGetErrorString(r));
    st = nccl_settle(c, r, "NCCL communicator init", deadline, e);
    if (st != SL_OK) return st;
    c->transport = SL_COMM_TRANSPORT_NCCL;
    SL_LOGI("comm", "rank %d: NCCL %d.%d communicator on device %d", c->rank, NCCL_MAJOR,
            NCCL_MINOR, dev);
    return SL_OK;
}

static ncclDataType_t nccl_type(sl_dtype dt)
{
    switch (dt) {
    case SL_DTYPE_F32:
        return ncclFloat32;
    case SL_DTYPE_BF16:
        return ncclBfloat16;
    case SL_DTYPE_F16:
        return ncclFloat16;
    case SL_DTYPE_I32:
        return ncclInt32;
    default:
        SL_ASSERT(!"dtype checked by comm.c");
    }
    return ncclFloat32;
}

static sl_status nccl_all_reduce(sl_comm *c, void *buf, size_t n, sl_dtype dt, sl_err *e)
{
    ncclResult_t r =
        ncclAllReduce(buf, buf, n, nccl_type(dt), ncclSum, c->nccl->comm, c->nccl->stream);
    return nccl_settle(c, r, "all-reduce", comm_deadline(c), e);
}

static int capturing(cudaStream_t s)
{
    enum cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    cudaStreamIsCapturing(s, &cs);
    return cs != cudaStreamCaptureStatusNone;
}

static sl_status nccl_all_gather(sl_comm *c, void *out, const void *in, size_t outer, size_t inner,
                                 sl_err *e)
{
    struct comm_nccl *n = c->nccl;
    size_t inb = outer * inner;
    if (outer == 1) {
        ncclResult_t r = ncclAllGather(in, out, inb, ncclInt8, n->comm, n->stream);
        return nccl_settle(c, r, "all-gather", comm_deadline(c), e);
    }
    /* Along an inner dimension NCCL's rank-major result is [world, outer,
     * inner]; one strided copy per rank reorders it to [outer, world, inner]. */
    size_t need = inb * (size_t)c->world;
    if (need > n->scratch_bytes) {
        if (capturing(n->stream))
            return sl_err_set(e, SL_ERR_INVALID,
                              "all-gather along an inner dimension needs %zu scratch bytes: run it "
                              "once before capturing a graph",
                              need);
        /* Stream-ordered: the old buffer is freed after work already queued. */
        if (n->scratch) cudaFreeAsync(n->scratch, n->stream);
        n->scratch = NULL;
        n->scratch_bytes = 0;
        cudaError_t ce = cudaMallocAsync((void **)&n->scratch, need, n->stream);
        if (ce != cudaSuccess)
            return comm_fail(c, e, SL_ERR_NOMEM, "all-gather scratch of %zu bytes: %s", need,
                             cudaGetErrorString(ce));
        n->scratch_bytes = need;
    }
    ncclResult_t r = ncclAllGather(in, n->scratch, inb, ncclInt8, n->comm, n->stream);
    sl_status st = nccl_settle(c, r, "all-gather", comm_deadline(c), e);
    for (int k = 0; st == SL_OK && k < c->world; k++) {
        cudaError_t ce = cudaMemcpy2DAsync(
            (char *)out + (size_t)k * inner, inner * (size_t)c->world, n->scratch + (size_t)k * inb,
            inner, inner, outer, cudaMemcpyDeviceToDevice, n->stream);
        if (ce != cudaSuccess)
            st = comm_fail(c, e, SL_ERR_DEVICE, "all-gather reorder: %s", cudaGetErrorString(ce));
    }
    return st;
}

static sl_status nccl_broadcast(sl_comm *c, void *buf, size_t bytes, int root, sl_err *e)
{
    ncclResult_t r = ncclBroadcast(buf, buf, bytes, ncclInt8, root, c->nccl->comm, c->nccl->stream);
    return nccl_settle(c, r, "broadcast", comm_deadline(c), e);
}

static sl_status nccl_send(sl_comm *c, const void *buf, size_t bytes, int peer, sl_err *e)
{
    ncclResult_t r = ncclSend(buf, bytes, ncclInt8, peer, c->nccl->comm, c->nccl->stream);
    return nccl_settle(c, r, "send", comm_deadline(c), e);
}

static sl_status nccl_recv(sl_comm *c, void *buf, size_t bytes, int peer, sl_err *e)
{
    ncclResult_t r = ncclRecv(buf, bytes, ncclInt8, peer, c->nccl->comm, c->nccl->stream);
    return nccl_settle(c, r, "recv", comm_deadline(c), e);
}

static sl_status nccl_sync(sl_comm *c, sl_err *e)
{
    struct comm_nccl *n = c->nccl;
    if (capturing(n->stream))
        return sl_err_set(e, SL_ERR_INVALID, "sl_comm_sync inside a graph capture");
    int64_t deadline = comm_deadline(c);
    cudaError_t ce = cudaEventRecord(n->done, n->stream);
    if (ce == cudaSuccess) ce = cudaEventQuery(n->done);
    for (; ce == cudaErrorNotReady; ce = cudaEventQuery(n->done)) {
        ncclResult_t ar = ncclSuccess;
        ncclCommGetAsyncError(n->comm, &ar);
        if (ar != ncclSuccess && ar != ncclInProgress)
            return comm_fail(c, e, SL_ERR_DEVICE, "NCCL: %s (%s)", ncclGetErrorString(ar),
                             ncclGetLastError(n->comm));
        /* NCCL over NVLink does not notice a dead peer: its kernel just waits.
         * The mesh socket of a dead process closes; abort then. */
        int dead = comm_net_dead_peer(c);
        /* a peer that finished the same collective may exit before this rank's
         * kernel does: give the stream a second before calling it dead */
        for (int k = 0; dead && k < 1000 && (ce = cudaEventQuery(n->done)) == cudaErrorNotReady; k++)
            nap_us(1000);
        if (dead && ce == cudaErrorNotReady)
            return comm_fail(c, e, SL_ERR_CLOSED, "rank %d left the group", dead - 1);
        if (ce != cudaErrorNotReady) break;
        if (atomic_load(&c->aborted)) return comm_fail(c, e, SL_ERR_CLOSED, "communicator aborted");
        if (comm_now_ms() >= deadline)
            return comm_fail(c, e, SL_ERR_LIMIT,
                             "collectives did not complete within %d ms (a peer stalled?)",
                             c->timeout_ms);
        nap_us(50);
    }
    if (ce != cudaSuccess)
        return comm_fail(c, e, SL_ERR_DEVICE, "waiting for the stream: %s", cudaGetErrorString(ce));
    return SL_OK;
}

static void nccl_abort(sl_comm *c)
{
    /* Kills NCCL kernels still waiting for a peer, so the stream drains. */
    if (c->nccl->comm) ncclCommAbort(c->nccl->comm);
    c->nccl->comm = NULL;
}

static void nccl_fini(sl_comm *c)
{
    struct comm_nccl *n = c->nccl;
    if (!n) return;
    if (n->comm) {
        /* Destroy waits for outstanding work; abort never does. The group may
         * be half gone when a worker shuts down, so abort. */
        ncclCommAbort(n->comm);
    }
    if (n->scratch) cudaFreeAsync(n->scratch, n->stream);
    if (n->done) cudaEventDestroy(n->done);
    free(n);
    c->nccl = NULL;
}

static const comm_ops comm_nccl_ops = {
    .all_reduce = nccl_all_reduce,
    .all_gather = nccl_all_gather,
    .broadcast = nccl_broadcast,
    .barrier = NULL, /* host-side: c->host */
    .send = nccl_send,
    .recv = nccl_recv,
    .sync = nccl_sync,
    .abort = nccl_abort,
    .fini = nccl_fini,
};

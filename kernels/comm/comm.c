/* The communicator's public face: argument checks, the kind/transport choice,
 * and the pieces every data path shares (reduction order, gather placement). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm_impl.h"
#include "sl_log.h"

int64_t comm_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

const char *comm_op_name(comm_op op)
{
    switch (op) {
    case COMM_OP_AGREE:
        return "handshake";
    case COMM_OP_ALL_REDUCE:
        return "all-reduce";
    case COMM_OP_ALL_GATHER:
        return "all-gather";
    case COMM_OP_BROADCAST:
        return "broadcast";
    case COMM_OP_BARRIER:
        return "barrier";
    case COMM_OP_P2P:
        return "send/recv";
    }
    return "?";
}

sl_comm_kind sl_comm_kind_for(const sl_backend *be)
{
    return be && !strncmp(sl_be_name(be), "cuda", 4) ? SL_COMM_KIND_NCCL : SL_COMM_KIND_CPU;
}

const char *sl_comm_kind_name(sl_comm_kind k)
{
    switch (k) {
    case SL_COMM_KIND_AUTO:
        return "auto";
    case SL_COMM_KIND_CPU:
        return "cpu";
    case SL_COMM_KIND_NCCL:
        return "nccl";
    }
    return "?";
}

const char *sl_comm_transport_name(sl_comm_transport t)
{
    switch (t) {
    case SL_COMM_TRANSPORT_AUTO:
        return "auto";
    case SL_COMM_TRANSPORT_SHM:
        return "shm";
    case SL_COMM_TRANSPORT_TCP:
        return "tcp";
    case SL_COMM_TRANSPORT_NCCL:
        return "nccl";
    }
    return "?";
}

sl_status comm_fail(sl_comm *c, sl_err *e, sl_status code, const char *fmt, ...)
{
    char msg[sizeof c->broken_msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (!c->broken) {
        c->broken = 1;
        snprintf(c->broken_msg, sizeof c->broken_msg, "%s", msg);
        SL_LOGE("comm", "rank %d: %s", c->rank, msg);
    }
    sl_comm_abort(c);
    return sl_err_set(e, code, "rank %d: %s", c->rank, msg);
}

sl_status comm_scratch(sl_comm *c, size_t n, sl_err *e)
{
    if (n <= c->scratch_bytes) return SL_OK;
    char *p = realloc(c->scratch, n);
    if (!p) return sl_err_set(e, SL_ERR_NOMEM, "communicator scratch of %zu bytes", n);
    c->scratch = p;
    c->scratch_bytes = n;
    return SL_OK;
}

void comm_reduce(sl_dtype dt, void *out, const void *const *srcs, int nsrc, size_t n)
{
    /* One loop per element in rank order: the same sequence of f32 additions
     * wherever it runs, which is what makes the shm and TCP paths agree. */
    if (dt == SL_DTYPE_F32) {
        float *o = out;
        for (size_t i = 0; i < n; i++) {
            float acc = ((const float *)srcs[0])[i];
            for (int k = 1; k < nsrc; k++)
                acc += ((const float *)srcs[k])[i];
            o[i] = acc;
        }
    } else {
        SL_ASSERT(dt == SL_DTYPE_BF16);
        uint16_t *o = out;
        for (size_t i = 0; i < n; i++) {
            float acc = sl_bf16_to_f32(((const uint16_t *)srcs[0])[i]);
            for (int k = 1; k < nsrc; k++)
                acc += sl_bf16_to_f32(((const uint16_t *)srcs[k])[i]);
            o[i] = sl_f32_to_bf16(acc);
        }
    }
}

void comm_gather_place(char *out, int world, int k, size_t inner, const char *src, size_t off,
                       size_t len)
{
    while (len) {
        size_t row = off / inner, col = off % inner;
        size_t n = inner - col < len ? inner - col : len;
        memcpy(out + (row * (size_t)world + (size_t)k) * inner + col, src, n);
        src += n;
        off += n;
        len -= n;
    }
}

/* ---- lifecycle ----------------------------------------------------------- */

sl_status sl_comm_new(sl_comm **out, const sl_comm_config *cfg, sl_err *e)
{
    *out = NULL;
    if (cfg->world_size < 1 || cfg->world_size > SL_COMM_MAX_WORLD)
        return sl_err_set(e, SL_ERR_INVALID, "world size %d out of range 1..%d", cfg->world_size,
                          SL_COMM_MAX_WORLD);
    if (cfg->rank < 0 || cfg->rank >= cfg->world_size)
        return sl_err_set(e, SL_ERR_INVALID, "rank %d out of range 0..%d", cfg->rank,
                          cfg->world_size - 1);
    if (cfg->timeout_ms <= 0)
        return sl_err_set(e, SL_ERR_INVALID, "communicator timeout %d ms must be > 0",
                          cfg->timeout_ms);
    if (cfg->fingerprint && strlen(cfg->fingerprint) > SL_COMM_MAX_FINGERPRINT)
        return sl_err_set(e, SL_ERR_INVALID, "group fingerprint longer than %d bytes",
                          SL_COMM_MAX_FINGERPRINT);
    if (cfg->world_size > 1 && (!cfg->init_addr || !*cfg->init_addr))
        return sl_err_set(e, SL_ERR_INVALID, "world size %d needs --dist-init-addr HOST:PORT",
                          cfg->world_size);
    sl_comm_kind kind = cfg->kind == SL_COMM_KIND_AUTO ? sl_comm_kind_for(cfg->be) : cfg->kind;
    if (kind == SL_COMM_KIND_NCCL && (!cfg->be || sl_comm_kind_for(cfg->be) != SL_COMM_KIND_NCCL))
        return sl_err_set(e, SL_ERR_INVALID, "an NCCL communicator needs a CUDA backend");
    if (kind == SL_COMM_KIND_CPU && cfg->transport == SL_COMM_TRANSPORT_NCCL)
        return sl_err_set(e, SL_ERR_INVALID, "a CPU communicator cannot use the NCCL transport");

    sl_comm *c = calloc(1, sizeof *c);
    if (!c) return sl_err_set(e, SL_ERR_NOMEM, "communicator");
    c->rank = cfg->rank;
    c->world = cfg->world_size;
    c->timeout_ms = cfg->timeout_ms;
    c->kind = kind;
    for (int i = 0; i < SL_COMM_MAX_WORLD; i++)
        c->fd[i] = -1;
    atomic_init(&c->aborted, 0);

    sl_status st = comm_net_bootstrap(c, cfg, e);
    if (st == SL_OK && c->transport == SL_COMM_TRANSPORT_SHM)
        st = comm_shm_attach(c, cfg->shm_bytes ? cfg->shm_bytes : (size_t)2 << 20, e);
    if (st == SL_OK) {
        if (c->transport == SL_COMM_TRANSPORT_SHM && !c->shm) c->transport = SL_COMM_TRANSPORT_TCP;
        c->host = c->shm ? &comm_shm_ops : &comm_tcp_ops;
        c->ops = c->host;
        if (kind == SL_COMM_KIND_NCCL) st = comm_nccl_init(c, cfg, e);
    }
    if (st != SL_OK) {
        sl_comm_free(c);
        return st;
    }
    SL_LOGI("comm", "rank %d/%d joined group %016llx (%s, %s)", c->rank, c->world,
            (unsigned long long)c->group, sl_comm_kind_name(c->kind),
            sl_comm_transport_name(c->transport));
    *out = c;
    return SL_OK;
}

void sl_comm_free(sl_comm *c)
{
    if (!c) return;
    if (c->ops && c->ops->fini) c->ops->fini(c);
    comm_shm_detach(c);
    comm_net_close(c);
    free(c->scratch);
    free(c);
}

void sl_comm_abort(sl_comm *c)
{
    if (atomic_exchange(&c->aborted, 1)) return;
    if (c->ops && c->ops->abort) c->ops->abort(c);
    if (c->host && c->host != c->ops && c->host->abort) c->host->abort(c);
    comm_net_abort(c);
}

int sl_comm_rank(const sl_comm *c)
{
    return c->rank;
}
int sl_comm_world_size(const sl_comm *c)
{
    return c->world;
}
sl_comm_kind sl_comm_kind_of(const sl_comm *c)
{
    return c->kind;
}
sl_comm_transport sl_comm_transport_of(const sl_comm *c)
{
    return c->transport;
}

/* ---- argument checks ------------------------------------------------------ */

/* A call may start: the communicator is whole. */
static sl_status comm_ready(sl_comm *c, const char *what, sl_err *e)
{
    if (c->broken)
        return sl_err_set(e, SL_ERR_CLOSED, "rank %d: %s on a broken communicator (%s)", c->rank,
                          what, c->broken_msg);
    if (atomic_load(&c->aborted))
        return sl_err_set(e, SL_ERR_CLOSED, "rank %d: %s on an aborted communicator", c->rank,
                          what);
    return SL_OK;
}

static int tensor_contiguous(const sl_tensor *t)
{
    int64_t want = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->ne[d] != 1 && t->st[d] != want) return 0;
        want *= t->ne[d];
    }
    return 1;
}

static sl_status check_tensor(sl_comm *c, const sl_tensor *t, const char *what, sl_err *e)
{
    if (!tensor_contiguous(t))
        return sl_err_set(e, SL_ERR_INVALID, "%s needs a contiguous tensor", what);
    int want_dev = c->kind == SL_COMM_KIND_NCCL;
    if (t->on_device != want_dev)
        return sl_err_set(e, SL_ERR_INVALID, "%s on a %s communicator needs %s memory", what,
                          sl_comm_kind_name(c->kind), want_dev ? "device" : "host");
    return SL_OK;
}

static size_t tensor_bytes(const sl_tensor *t)
{
    return (size_t)sl_tensor_numel(t) * sl_dtype_size(t->dtype);
}

static sl_status check_peer(sl_comm *c, int peer, const char *what, sl_err *e)
{
    if (peer < 0 || peer >= c->world || peer == c->rank)
        return sl_err_set(e, SL_ERR_INVALID, "%s: peer %d is not another rank of 0..%d", what, peer,
                          c->world - 1);
    return SL_OK;
}

/* ---- calls --------------------------------------------------------------- */

sl_status sl_comm_all_reduce(sl_comm *c, sl_tensor *t, sl_err *e)
{
    sl_status st = comm_ready(c, "all-reduce", e);
    if (st == SL_OK) st = check_tensor(c, t, "all-reduce", e);
    if (st != SL_OK) return st;
    int ok =
        t->dtype == SL_DTYPE_F32 || t->dtype == SL_DTYPE_BF16 ||
        (c->kind == SL_COMM_KIND_NCCL && (t->dtype == SL_DTYPE_F16 || t->dtype == SL_DTYPE_I32));
    if (!ok)
        return sl_err_set(e, SL_ERR_UNSUPPORTED, "all-reduce of %s on a %s communicator",
                          sl_dtype_name(t->dtype), sl_comm_kind_name(c->kind));
    if (c->world == 1) return SL_OK;
    return c->ops->all_reduce(c, t->data, (size_t)sl_tensor_numel(t), t->dtype, e);
}

sl_status sl_comm_all_gather(sl_comm *c, sl_tensor *out, const sl_tensor *in, int dim, sl_err *e)
{
    sl_status st = comm_ready(c, "all-gather", e);
    if (st == SL_OK) st = check_tensor(c, in, "all-gather", e);
    if (st == SL_OK) st = check_tensor(c, out, "all-gather", e);
    if (st != SL_OK) return st;
    int shape_ok = dim >= 0 && dim < in->ndim && out->ndim == in->ndim && out->dtype == in->dtype;
    for (int d = 0; shape_ok && d < in->ndim; d++)
        shape_ok = out->ne[d] == (d == dim ? in->ne[d] * c->world : in->ne[d]);
    if (!shape_ok)
        return sl_err_set(e, SL_ERR_INVALID,
                          "all-gather along dim %d: out must be in's shape with that dimension "
                          "times %d, same dtype",
                          dim, c->world);
    size_t outer = 1, inner = sl_dtype_size(in->dtype);
    for (int d = 0; d < dim; d++)
        outer *= (size_t)in->ne[d];
    for (int d = dim; d < in->ndim; d++)
        inner *= (size_t)in->ne[d];
    if (outer * inner == 0) return SL_OK;
    return c->ops->all_gather(c, out->data, in->data, outer, inner, e);
}

sl_status sl_comm_broadcast(sl_comm *c, sl_tensor *t, int root, sl_err *e)
{
    sl_status st = comm_ready(c, "broadcast", e);
    if (st == SL_OK) st = check_tensor(c, t, "broadcast", e);
    if (st != SL_OK) return st;
    if (root < 0 || root >= c->world)
        return sl_err_set(e, SL_ERR_INVALID, "broadcast root %d out of range", root);
    if (c->world == 1) return SL_OK;
    return c->ops->broadcast(c, t->data, tensor_bytes(t), root, e);
}

sl_status sl_comm_barrier(sl_comm *c, sl_err *e)
{
    sl_status st = comm_ready(c, "barrier", e);
    if (st != SL_OK || c->world == 1) return st;
    return c->host->barrier(c, e);
}

sl_status sl_comm_bcast_bytes(sl_comm *c, void *buf, size_t n, int root, sl_err *e)
{
    sl_status st = comm_ready(c, "bcast_bytes", e);
    if (st != SL_OK) return st;
    if (root < 0 || root >= c->world)
        return sl_err_set(e, SL_ERR_INVALID, "bcast_bytes root %d out of range", root);
    if (c->world == 1 || n == 0) return SL_OK;
    return c->host->broadcast(c, buf, n, root, e);
}

sl_status sl_comm_send(sl_comm *c, const sl_tensor *t, int peer, sl_err *e)
{
    sl_status st = comm_ready(c, "send", e);
    if (st == SL_OK) st = check_tensor(c, t, "send", e);
    if (st == SL_OK) st = check_peer(c, peer, "send", e);
    if (st != SL_OK) return st;
    return c->ops->send(c, t->data, tensor_bytes(t), peer, e);
}

sl_status sl_comm_recv(sl_comm *c, sl_tensor *t, int peer, sl_err *e)
{
    sl_status st = comm_ready(c, "recv", e);
    if (st == SL_OK) st = check_tensor(c, t, "recv", e);
    if (st == SL_OK) st = check_peer(c, peer, "recv", e);
    if (st != SL_OK) return st;
    return c->ops->recv(c, t->data, tensor_bytes(t), peer, e);
}

sl_status sl_comm_send_bytes(sl_comm *c, const void *buf, size_t n, int peer, sl_err *e)
{
    sl_status st = comm_ready(c, "send_bytes", e);
    if (st == SL_OK) st = check_peer(c, peer, "send_bytes", e);
    if (st != SL_OK) return st;
    return c->host->send(c, buf, n, peer, e);
}

sl_status sl_comm_recv_bytes(sl_comm *c, void *buf, size_t n, int peer, sl_err *e)
{
    sl_status st = comm_ready(c, "recv_bytes", e);
    if (st == SL_OK) st = check_peer(c, peer, "recv_bytes", e);
    if (st != SL_OK) return st;
    return c->host->recv(c, buf, n, peer, e);
}

sl_status sl_comm_sync(sl_comm *c, sl_err *e)
{
    sl_status st = comm_ready(c, "sync", e);
    if (st != SL_OK || !c->ops->sync) return st;
    return c->ops->sync(c, e);
}

/* The shared-memory data path of the CPU communicator (every rank on one host).
 *
 * One POSIX segment per group, named from the group id:
 *   [header: barrier counter, generation (a futex word), abort flag]
 *   [slot 0][slot 1]...[slot N-1]   each rank's staging area
 *   [result]                        the reduced / broadcast piece
 * Buffers larger than a slot go through in pieces. Each piece is: write own
 * slot, barrier, compute or read, barrier (and for the all-reduce a third
 * phase reading the result, then a barrier), so no rank rewrites a slot or the
 * result while another still reads it.
 *
 * The barrier spins briefly, then sleeps on the generation word with a futex
 * in 1 ms steps; between steps it checks the deadline, the group's abort flag
 * and the TCP mesh (a dead process's sockets close), so a peer killed
 * mid-collective fails its survivors promptly instead of at the deadline.
 * Rank 0 unlinks the name as soon as every rank has mapped it: a crash leaves
 * nothing behind in /dev/shm.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "comm_impl.h"
#include "sl_log.h"

typedef struct shm_hdr {
    atomic_uint arrived;
    atomic_uint gen; /* futex word: bumps when a barrier completes */
    atomic_uint abort;
    uint32_t world;
    uint64_t group;
} shm_hdr;

#define SHM_HDR_BYTES 4096

struct comm_shm {
    char name[64];
    size_t slot, map_bytes;
    char *base;
    shm_hdr *hdr;
};

static char *shm_slot(const sl_comm *c, int k)
{
    return c->shm->base + SHM_HDR_BYTES + (size_t)k * c->shm->slot;
}
static char *shm_result(const sl_comm *c)
{
    return shm_slot(c, c->world);
}

static void futex_wait(atomic_uint *w, unsigned val, int ms)
{
    struct timespec ts = {0, (long)ms * 1000000L};
    syscall(SYS_futex, (unsigned *)w, FUTEX_WAIT, val, &ts, NULL, 0);
}

static void futex_wake_all(atomic_uint *w)
{
    syscall(SYS_futex, (unsigned *)w, FUTEX_WAKE, 0x7fffffff, NULL, NULL, 0);
}

/* The error of a collective whose peer dead - 1 hung up (comm_net_dead_peer). */
static sl_status shm_dead_peer(sl_comm *c, comm_op op, int dead, sl_err *e)
{
    return comm_fail(c, e, SL_ERR_CLOSED, "%s: rank %d left the group (died or aborted)", comm_op_name(op),
                     dead - 1);
}

static sl_status shm_wait(sl_comm *c, comm_op op, int64_t deadline, sl_err *e)
{
    shm_hdr *h = c->shm->hdr;
    unsigned g = atomic_load(&h->gen);
    if (atomic_fetch_add(&h->arrived, 1) == (unsigned)c->world - 1) {
        atomic_store(&h->arrived, 0);
        atomic_fetch_add(&h->gen, 1);
        futex_wake_all(&h->gen);
        return SL_OK;
    }
    for (int spins = 0; atomic_load(&h->gen) == g; spins++) {
        if (atomic_load(&h->abort) || atomic_load(&c->aborted)) {
            /* another rank aborted because a peer died: name the peer, as the
             * rank that saw it first does (which of the two sees it first is
             * a race) */
            int dead = atomic_load(&c->aborted) ? 0 : comm_net_dead_peer(c);
            if (dead) return shm_dead_peer(c, op, dead, e);
            return comm_fail(c, e, SL_ERR_CLOSED, "%s: the group was aborted", comm_op_name(op));
        }
        /* A short spin covers ranks arriving together; then sleep. */
        if (spins < 64) {
            sched_yield();
            continue;
        }
        futex_wait(&h->gen, g, 1);
        /* The last rank to arrive may finish and exit (closing its socket) before
         * this one looks: a hang-up after the collective completed is no dead
         * peer. The generation is read after the poll, so a peer that arrived
         * before it hung up is always seen arrived. */
        int dead = comm_net_dead_peer(c);
        if (dead && atomic_load(&h->gen) == g) return shm_dead_peer(c, op, dead, e);
        if (comm_now_ms() >= deadline)
            return comm_fail(c, e, SL_ERR_LIMIT,
                             "%s: timed out after %d ms with %u of %d ranks arrived",
                             comm_op_name(op), c->timeout_ms, atomic_load(&h->arrived), c->world);
    }
    return SL_OK;
}

sl_status comm_shm_attach(sl_comm *c, size_t slot_bytes, sl_err *e)
{
    struct comm_shm *s = calloc(1, sizeof *s);
    if (!s) return sl_err_set(e, SL_ERR_NOMEM, "shm state");
    s->slot = (slot_bytes + 63) & ~(size_t)63;
    s->map_bytes = SHM_HDR_BYTES + s->slot * (size_t)(c->world + 1);
    snprintf(s->name, sizeof s->name, "/sluice-comm-%016llx", (unsigned long long)c->group);
    char why[160] = "";
    unsigned char ok = 1, oks[SL_COMM_MAX_WORLD];

    if (c->rank == 0) {
        int fd = shm_open(s->name, O_CREAT | O_EXCL | O_RDWR, 0600);
        int err = fd < 0 ? errno : 0;
        /* Reserve the pages now: a full /dev/shm is then an error here, not a
         * SIGBUS in the middle of a collective. */
        if (!err && (ftruncate(fd, (off_t)s->map_bytes) ||
                     (err = posix_fallocate(fd, 0, (off_t)s->map_bytes))))
            err = err ? err : errno;
        if (!err) {
            s->base = mmap(NULL, s->map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            if (s->base == MAP_FAILED) err = errno, s->base = NULL;
        }
        if (fd >= 0) close(fd);
        if (err) {
            ok = 0;
            snprintf(why, sizeof why, "create %s (%zu bytes): %s", s->name, s->map_bytes,
                     strerror(err));
            shm_unlink(s->name);
        } else {
            s->hdr = (shm_hdr *)s->base;
            atomic_init(&s->hdr->arrived, 0);
            atomic_init(&s->hdr->gen, 0);
            atomic_init(&s->hdr->abort, 0);
            s->hdr->world = (uint32_t)c->world;
            s->hdr->group = c->group;
        }
    }
    sl_status st = comm_tcp_ops.broadcast(c, &ok, 1, 0, e);
    if (st == SL_OK && c->rank != 0 && ok) {
        int fd = shm_open(s->name, O_RDWR, 0);
        struct stat sb;
        int err = fd < 0                               ? errno
                  : fstat(fd, &sb)                     ? errno
                  : (size_t)sb.st_size != s->map_bytes ? EINVAL
                                                       : 0;
        if (!err) {
            s->base = mmap(NULL, s->map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            if (s->base == MAP_FAILED) err = errno, s->base = NULL;
        }
        if (fd >= 0) close(fd);
        s->hdr = (shm_hdr *)s->base;
        if (!err && (s->hdr->group != c->group || s->hdr->world != (uint32_t)c->world))
            err = EINVAL;
        if (err) {
            ok = 0;
            snprintf(why, sizeof why, "open %s: %s", s->name, strerror(err));
        }
    }
    if (st == SL_OK) st = comm_tcp_ops.all_gather(c, oks, &ok, 1, 1, e);
    if (c->rank == 0 && s->base) shm_unlink(s->name);
    int all = st == SL_OK;
    for (int k = 0; all && k < c->world; k++)
        all = oks[k];
    if (all) {
        c->shm = s;
        return SL_OK;
    }
    if (why[0]) SL_LOGW("comm", "rank %d: shared memory unusable (%s)", c->rank, why);
    if (st == SL_OK)
        SL_LOGW("comm", "rank %d: a rank could not map the segment; using TCP", c->rank);
    if (s->base) munmap(s->base, s->map_bytes);
    free(s);
    return st;
}

void comm_shm_detach(sl_comm *c)
{
    if (!c->shm) return;
    munmap(c->shm->base, c->shm->map_bytes);
    free(c->shm);
    c->shm = NULL;
}

static sl_status shm_all_reduce(sl_comm *c, void *buf, size_t n, sl_dtype dt, sl_err *e)
{
    int64_t deadline = comm_deadline(c);
    size_t es = sl_dtype_size(dt), W = (size_t)c->world, r = (size_t)c->rank;
    size_t cap = c->shm->slot / es;
    char *b = buf;
    for (size_t off = 0; off < n; off += cap) {
        size_t cnt = n - off < cap ? n - off : cap;
        memcpy(shm_slot(c, c->rank), b + off * es, cnt * es);
        sl_status st = shm_wait(c, COMM_OP_ALL_REDUCE, deadline, e);
        if (st != SL_OK) return st;
        /* This rank's share of the piece, summed in rank order. */
        size_t lo = cnt * r / W, hi = cnt * (r + 1) / W;
        const void *srcs[SL_COMM_MAX_WORLD];
        for (int k = 0; k < c->world; k++)
            srcs[k] = shm_slot(c, k) + lo * es;
        comm_reduce(dt, shm_result(c) + lo * es, srcs, c->world, hi - lo);
        if ((st = shm_wait(c, COMM_OP_ALL_REDUCE, deadline, e)) != SL_OK) return st;
        memcpy(b + off * es, shm_result(c), cnt * es);
        if ((st = shm_wait(c, COMM_OP_ALL_REDUCE, deadline, e)) != SL_OK) return st;
    }
    return SL_OK;
}

static sl_status shm_all_gather(sl_comm *c, void *out, const void *in, size_t outer, size_t inner,
                                sl_err *e)
{
    int64_t deadline = comm_deadline(c);
    size_t inb = outer * inner;
    for (size_t off = 0; off < inb; off += c->shm->slot) {
        size_t len = inb - off < c->shm->slot ? inb - off : c->shm->slot;
        memcpy(shm_slot(c, c->rank), (const char *)in + off, len);
        sl_status st = shm_wait(c, COMM_OP_ALL_GATHER, deadline, e);
        if (st != SL_OK) return st;
        for (int k = 0; k < c->world; k++)
            comm_gather_place(out, c->world, k, inner, shm_slot(c, k), off, len);
        if ((st = shm_wait(c, COMM_OP_ALL_GATHER, deadline, e)) != SL_OK) return st;
    }
    return SL_OK;
}

static sl_status shm_broadcast(sl_comm *c, void *buf, size_t bytes, int root, sl_err *e)
{
    int64_t deadline = comm_deadline(c);
    for (size_t off = 0; off < bytes; off += c->shm->slot) {
        size_t len = bytes - off < c->shm->slot ? bytes - off : c->shm->slot;
        if (c->rank == root) memcpy(shm_result(c), (char *)buf + off, len);
        sl_status st = shm_wait(c, COMM_OP_BROADCAST, deadline, e);
        if (st != SL_OK) return st;
        if (c->rank != root) memcpy((char *)buf + off, shm_result(c), len);
        if ((st = shm_wait(c, COMM_OP_BROADCAST, deadline, e)) != SL_OK) return st;
    }
    return SL_OK;
}

static sl_status shm_barrier(sl_comm *c, sl_err *e)
{
    return shm_wait(c, COMM_OP_BARRIER, comm_deadline(c), e);
}

static void shm_abort(sl_comm *c)
{
    if (!c->shm) return;
    atomic_store(&c->shm->hdr->abort, 1);
    futex_wake_all(&c->shm->hdr->gen);
}

/* Point to point involves two ranks, not the group's barrier: over the mesh. */
static sl_status shm_send(sl_comm *c, const void *buf, size_t bytes, int peer, sl_err *e)
{
    return comm_tcp_ops.send(c, buf, bytes, peer, e);
}

static sl_status shm_recv(sl_comm *c, void *buf, size_t bytes, int peer, sl_err *e)
{
    return comm_tcp_ops.recv(c, buf, bytes, peer, e);
}

const comm_ops comm_shm_ops = {
    .all_reduce = shm_all_reduce,
    .all_gather = shm_all_gather,
    .broadcast = shm_broadcast,
    .barrier = shm_barrier,
    .send = shm_send,
    .recv = shm_recv,
    .abort = shm_abort,
};

/* The TCP side of the communicator: the bootstrap at --dist-init-addr, the
 * full mesh it leaves behind, the deadline-bounded exchange every transfer
 * goes through, and the TCP data path built on it.
 *
 * Bootstrap: rank 0 listens at HOST:PORT; every other rank connects (retrying
 * until the deadline: rank 0 may start later), opens its own listener and
 * sends a hello (rank, world size, fingerprint, host id, listener address).
 * Rank 0 validates all hellos as they come and answers everyone once all
 * have arrived, with the group id, the transport and the table of listeners;
 * on the first problem it answers everyone connected so far with the error,
 * so each of them reports the same message. Rank j then connects to each
 * rank 0 < i < j (rank 0's link is the bootstrap connection itself).
 *
 * Messages are fixed-size structs in host byte order: ranks of one group run
 * the same build on the same kind of machine.
 */
#define _GNU_SOURCE /* accept4, POLLRDHUP */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "comm_impl.h"
#include "sl_log.h"

#define BOOT_MAGIC "SLCOMM1"

typedef struct boot_hello {
    char magic[8];
    int32_t rank, world, want_tcp, port;
    char host[64]; /* numeric address of its mesh listener */
    char host_id[128];
    char fingerprint[SL_COMM_MAX_FINGERPRINT + 1];
} boot_hello;

typedef struct boot_reply {
    char magic[8];
    int32_t code; /* SL_OK, or the group's error (then msg) */
    int32_t transport;
    uint64_t group;
    char msg[400];
} boot_reply;

typedef struct boot_peer {
    char host[64];
    int32_t port, pad;
} boot_peer;

typedef struct mesh_hello {
    char magic[8];
    int32_t rank, pad;
    uint64_t group;
} mesh_hello;

/* ---- sockets with deadlines --------------------------------------------- */

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int remaining_ms(int64_t deadline)
{
    int64_t r = deadline - comm_now_ms();
    return r < 0 ? 0 : r > 1 << 30 ? 1 << 30 : (int)r;
}

static void sock_setup(int fd)
{
    /* Non-blocking: every wait is a poll with a deadline. No Nagle: small
     * control messages (barrier headers) must not sit 40 ms in the kernel. */
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* Moves n bytes; 0, or ETIMEDOUT / EPIPE (peer closed) / an errno. */
static int sock_io(int fd, void *buf, size_t n, int sending, int64_t deadline)
{
    char *p = buf;
    while (n) {
        ssize_t k = sending ? send(fd, p, n, MSG_NOSIGNAL) : recv(fd, p, n, 0);
        if (k > 0) {
            p += k;
            n -= (size_t)k;
            continue;
        }
        if (k == 0) return EPIPE;
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) return errno == ECONNRESET ? EPIPE : errno;
        int rem = remaining_ms(deadline);
        if (rem == 0) return ETIMEDOUT;
        struct pollfd pfd = {fd, sending ? POLLOUT : POLLIN, 0};
        poll(&pfd, 1, rem);
    }
    return 0;
}

/* HOST:PORT or [V6]:PORT into host and port strings. */
static int split_addr(const char *addr, char *host, size_t hn, char *port, size_t pn)
{
    const char *colon = strrchr(addr, ':');
    if (!colon || !colon[1]) return -1;
    const char *h = addr;
    size_t len = (size_t)(colon - addr);
    if (len >= 2 && h[0] == '[' && h[len - 1] == ']') {
        h++;
        len -= 2;
    }
    if (len == 0 || len >= hn || strlen(colon + 1) >= pn) return -1;
    memcpy(host, h, len);
    host[len] = 0;
    snprintf(port, pn, "%s", colon + 1);
    return 0;
}

static void numeric_host(const struct sockaddr *sa, socklen_t len, char *host, size_t hn, int *port)
{
    char serv[16] = "0";
    if (getnameinfo(sa, len, host, (socklen_t)hn, serv, sizeof serv,
                    NI_NUMERICHOST | NI_NUMERICSERV))
        snprintf(host, hn, "?");
    *port = atoi(serv);
}

/* Connects to host:port before the deadline, retrying refused or unreachable
 * attempts (the listener may not be up yet). -1 with why filled on failure. */
static int connect_retry(const char *host, const char *port, int64_t deadline, char *why, size_t wn)
{
    snprintf(why, wn, "no attempt before the deadline");
    for (;;) {
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
        int rc = getaddrinfo(host, port, &hints, &ai);
        if (rc) snprintf(why, wn, "%s", gai_strerror(rc));
        for (struct addrinfo *a = ai; a; a = a->ai_next) {
            int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
            if (fd < 0) continue;
            sock_setup(fd);
            int err = 0;
            if (connect(fd, a->ai_addr, a->ai_addrlen) < 0) {
                err = errno;
                if (err == EINPROGRESS) {
                    struct pollfd pfd = {fd, POLLOUT, 0};
                    int rem = remaining_ms(deadline);
                    if (poll(&pfd, 1, rem) <= 0)
                        err = ETIMEDOUT;
                    else {
                        socklen_t sl = sizeof err;
                        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &sl);
                    }
                }
            }
            if (!err) {
                freeaddrinfo(ai);
                return fd;
            }
            snprintf(why, wn, "%s", strerror(err));
            close(fd);
        }
        if (ai) freeaddrinfo(ai);
        int rem = remaining_ms(deadline);
        if (rem == 0) return -1;
        sleep_ms(rem < 50 ? rem : 50);
    }
}

static int listen_on(const struct sockaddr *sa, socklen_t len, int backlog)
{
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, sa, len) < 0 || listen(fd, backlog) < 0) {
        int err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

/* Accepts one connection before the deadline (-1 on timeout). */
static int accept_until(int lfd, int64_t deadline)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd >= 0) {
            sock_setup(fd);
            return fd;
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED)
            return -1;
        int rem = remaining_ms(deadline);
        if (rem == 0) return -1;
        struct pollfd pfd = {lfd, POLLIN, 0};
        poll(&pfd, 1, rem);
    }
}

/* hostname + boot id: two processes share memory only if both agree. */
static void host_id(char *out, size_t n)
{
    char name[64] = "?", boot[64] = "";
    gethostname(name, sizeof name - 1);
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (f) {
        if (!fgets(boot, sizeof boot, f)) boot[0] = 0;
        fclose(f);
        boot[strcspn(boot, "\n")] = 0;
    }
    snprintf(out, n, "%s/%s", name, boot);
}

/* ---- bootstrap ------------------------------------------------------------ */

static int wants_tcp(const sl_comm *c, const sl_comm_config *cfg)
{
    const char *env = getenv("SLUICE_COMM_TRANSPORT");
    return cfg->transport == SL_COMM_TRANSPORT_TCP || (env && !strcmp(env, "tcp")) ||
           c->kind == SL_COMM_KIND_NCCL;
}

static sl_status boot_rank0(sl_comm *c, const sl_comm_config *cfg, int64_t deadline, sl_err *e)
{
    char host[256], port[32];
    if (split_addr(cfg->init_addr, host, sizeof host, port, sizeof port))
        return sl_err_set(e, SL_ERR_INVALID, "--dist-init-addr '%s' is not HOST:PORT",
                          cfg->init_addr);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai = NULL;
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc)
        return sl_err_set(e, SL_ERR_IO, "cannot listen on --dist-init-addr %s: %s", cfg->init_addr,
                          gai_strerror(rc));
    int lfd = listen_on(ai->ai_addr, ai->ai_addrlen, c->world);
    if (lfd < 0 && errno == EADDRNOTAVAIL) {
        /* The name resolves to an address this host does not own (a service
         * IP in front of the leader): listen on every interface instead. */
        struct sockaddr_storage any = {0};
        any.ss_family = (sa_family_t)ai->ai_family;
        if (ai->ai_family == AF_INET)
            ((struct sockaddr_in *)&any)->sin_port = ((struct sockaddr_in *)ai->ai_addr)->sin_port;
        else
            ((struct sockaddr_in6 *)&any)->sin6_port =
                ((struct sockaddr_in6 *)ai->ai_addr)->sin6_port;
        lfd = listen_on((struct sockaddr *)&any, ai->ai_addrlen, c->world);
    }
    int lerr = errno;
    freeaddrinfo(ai);
    if (lfd < 0)
        return sl_err_set(e, SL_ERR_IO, "cannot listen on --dist-init-addr %s: %s", cfg->init_addr,
                          strerror(lerr));

    const char *fp = cfg->fingerprint ? cfg->fingerprint : "";
    char my_id[128];
    host_id(my_id, sizeof my_id);
    boot_hello *hello = calloc((size_t)c->world, sizeof *hello);
    boot_peer *table = calloc((size_t)c->world, sizeof *table);
    if (!hello || !table) {
        free(hello);
        free(table);
        close(lfd);
        return sl_err_set(e, SL_ERR_NOMEM, "bootstrap tables");
    }
    int same_host = 1, want_tcp = wants_tcp(c, cfg), arrived = 1, extra = -1;
    boot_reply rep = {.magic = BOOT_MAGIC, .code = SL_OK};
    while (arrived < c->world) {
        int fd = accept_until(lfd, deadline);
        if (fd < 0) {
            int r = 1;
            while (c->fd[r] >= 0)
                r++;
            rep.code = SL_ERR_LIMIT;
            snprintf(rep.msg, sizeof rep.msg,
                     "rank %d never arrived within %d ms at --dist-init-addr %s (%d of %d ranks "
                     "joined)",
                     r, c->timeout_ms, cfg->init_addr, arrived, c->world);
            break;
        }
        boot_hello h;
        if (sock_io(fd, &h, sizeof h, 0, deadline) || memcmp(h.magic, BOOT_MAGIC, 8)) {
            SL_LOGW("comm", "rank 0: ignoring a connection that is not a sluice rank");
            close(fd);
            continue;
        }
        h.fingerprint[SL_COMM_MAX_FINGERPRINT] = 0;
        h.host_id[sizeof h.host_id - 1] = 0;
        h.host[sizeof h.host - 1] = 0;
        if (h.world != c->world) {
            rep.code = SL_ERR_INVALID;
            snprintf(rep.msg, sizeof rep.msg,
                     "rank %d: world size mismatch: rank 0 has %d, rank %d has %d", h.rank,
                     c->world, h.rank, h.world);
        } else if (strcmp(h.fingerprint, fp)) {
            rep.code = SL_ERR_INVALID;
            snprintf(rep.msg, sizeof rep.msg,
                     "group fingerprint mismatch: rank 0 has '%.150s', rank %d has '%.150s'", fp,
                     h.rank, h.fingerprint);
        } else if (h.rank < 1 || h.rank >= c->world) {
            rep.code = SL_ERR_INVALID;
            snprintf(rep.msg, sizeof rep.msg, "a process claims rank %d, outside 1..%d", h.rank,
                     c->world - 1);
        } else if (c->fd[h.rank] >= 0) {
            rep.code = SL_ERR_INVALID;
            snprintf(rep.msg, sizeof rep.msg, "rank %d claimed by two processes (%s and %s)",
                     h.rank, hello[h.rank].host, h.host);
        }
        if (rep.code != SL_OK) {
            extra = fd; /* the offender hears the error too */
            break;
        }
        c->fd[h.rank] = fd;
        hello[h.rank] = h;
        arrived++;
        same_host &= !strcmp(h.host_id, my_id);
        want_tcp |= h.want_tcp;
    }
    close(lfd);
    if (rep.code == SL_OK) {
        if (getrandom(&rep.group, sizeof rep.group, 0) != sizeof rep.group)
            rep.group = (uint64_t)comm_now_ms() * 0x9E3779B97F4A7C15ull ^ (uint64_t)getpid();
        rep.transport = same_host && !want_tcp ? SL_COMM_TRANSPORT_SHM : SL_COMM_TRANSPORT_TCP;
        for (int r = 1; r < c->world; r++) {
            memcpy(table[r].host, hello[r].host, sizeof table[r].host);
            table[r].port = hello[r].port;
        }
    }
    int io_err = 0;
    for (int r = 1; r < c->world; r++) {
        if (c->fd[r] < 0) continue;
        int err = sock_io(c->fd[r], &rep, sizeof rep, 1, deadline);
        if (!err && rep.code == SL_OK)
            err = sock_io(c->fd[r], table, sizeof *table * (size_t)c->world, 1, deadline);
        if (err && !io_err) io_err = r;
    }
    if (extra >= 0) {
        sock_io(extra, &rep, sizeof rep, 1, deadline);
        close(extra);
    }
    free(hello);
    free(table);
    if (rep.code != SL_OK) return sl_err_set(e, (sl_status)rep.code, "%s", rep.msg);
    if (io_err) return sl_err_set(e, SL_ERR_CLOSED, "rank %d left during the handshake", io_err);
    c->group = rep.group;
    c->transport = (sl_comm_transport)rep.transport;
    return SL_OK;
}

static sl_status boot_peer_rank(sl_comm *c, const sl_comm_config *cfg, int64_t deadline, sl_err *e)
{
    char host[256], port[32], why[128];
    if (split_addr(cfg->init_addr, host, sizeof host, port, sizeof port))
        return sl_err_set(e, SL_ERR_INVALID, "--dist-init-addr '%s' is not HOST:PORT",
                          cfg->init_addr);
    int fd0 = connect_retry(host, port, deadline, why, sizeof why);
    if (fd0 < 0)
        return sl_err_set(e, SL_ERR_IO, "cannot reach --dist-init-addr %s: %s (tried for %d ms)",
                          cfg->init_addr, why, c->timeout_ms);
    c->fd[0] = fd0;

    /* The mesh listener sits on the address this host uses to reach rank 0:
     * the one interface known to face the rest of the group. */
    struct sockaddr_storage me;
    socklen_t ml = sizeof me;
    getsockname(fd0, (struct sockaddr *)&me, &ml);
    if (me.ss_family == AF_INET)
        ((struct sockaddr_in *)&me)->sin_port = 0;
    else
        ((struct sockaddr_in6 *)&me)->sin6_port = 0;
    int lfd = listen_on((struct sockaddr *)&me, ml, c->world);
    if (lfd < 0) return sl_err_set(e, SL_ERR_IO, "mesh listener: %s", strerror(errno));
    boot_hello h = {
        .magic = BOOT_MAGIC, .rank = c->rank, .world = c->world, .want_tcp = wants_tcp(c, cfg)};
    ml = sizeof me;
    getsockname(lfd, (struct sockaddr *)&me, &ml);
    int lport;
    numeric_host((struct sockaddr *)&me, ml, h.host, sizeof h.host, &lport);
    h.port = lport;
    host_id(h.host_id, sizeof h.host_id);
    snprintf(h.fingerprint, sizeof h.fingerprint, "%s", cfg->fingerprint ? cfg->fingerprint : "");

    sl_status st = SL_OK;
    boot_reply rep;
    boot_peer *table = calloc((size_t)c->world, sizeof *table);
    int err = table ? sock_io(fd0, &h, sizeof h, 1, deadline) : ENOMEM;
    if (!err) err = sock_io(fd0, &rep, sizeof rep, 0, deadline);
    if (err == ETIMEDOUT)
        st = sl_err_set(e, SL_ERR_LIMIT,
                        "rank 0 at %s accepted rank %d but the group did not form within %d ms",
                        cfg->init_addr, c->rank, c->timeout_ms);
    else if (err)
        st = sl_err_set(e, SL_ERR_CLOSED, "handshake with rank 0 at %s: %s", cfg->init_addr,
                        err == EPIPE ? "connection closed" : strerror(err));
    else if (memcmp(rep.magic, BOOT_MAGIC, 8))
        st = sl_err_set(e, SL_ERR_PARSE, "%s does not answer like a sluice rank 0", cfg->init_addr);
    else if (rep.code != SL_OK) {
        rep.msg[sizeof rep.msg - 1] = 0;
        st = sl_err_set(e, (sl_status)rep.code, "%s", rep.msg);
    } else if ((err = sock_io(fd0, table, sizeof *table * (size_t)c->world, 0, deadline)))
        st = sl_err_set(e, SL_ERR_CLOSED, "handshake with rank 0: %s", strerror(err));
    c->group = rep.group;
    c->transport = (sl_comm_transport)rep.transport;

    /* Mesh: connect down to every 0 < i < rank, accept everyone above. */
    for (int i = 1; st == SL_OK && i < c->rank; i++) {
        char p[16];
        snprintf(p, sizeof p, "%d", table[i].port);
        table[i].host[sizeof table[i].host - 1] = 0;
        int fd = connect_retry(table[i].host, p, deadline, why, sizeof why);
        mesh_hello mh = {.magic = BOOT_MAGIC, .rank = c->rank, .group = c->group};
        if (fd < 0 || sock_io(fd, &mh, sizeof mh, 1, deadline)) {
            if (fd >= 0) close(fd);
            st = sl_err_set(e, SL_ERR_IO, "cannot reach rank %d at %s:%d: %s", i, table[i].host,
                            table[i].port, why);
            break;
        }
        c->fd[i] = fd;
    }
    for (int n = c->world - 1 - c->rank; st == SL_OK && n > 0; n--) {
        int fd = accept_until(lfd, deadline);
        mesh_hello mh;
        if (fd < 0 || sock_io(fd, &mh, sizeof mh, 0, deadline)) {
            if (fd >= 0) close(fd);
            int r = c->rank + 1;
            while (c->fd[r] >= 0)
                r++;
            st = sl_err_set(e, SL_ERR_LIMIT, "rank %d never connected to rank %d within %d ms", r,
                            c->rank, c->timeout_ms);
        } else if (memcmp(mh.magic, BOOT_MAGIC, 8) || mh.group != c->group || mh.rank <= c->rank ||
                   mh.rank >= c->world || c->fd[mh.rank] >= 0) {
            close(fd);
            n++; /* a stranger (an older group on a reused port): keep waiting */
        } else {
            c->fd[mh.rank] = fd;
        }
    }
    close(lfd);
    free(table);
    return st;
}

sl_status comm_net_bootstrap(sl_comm *c, const sl_comm_config *cfg, sl_err *e)
{
    c->transport = SL_COMM_TRANSPORT_TCP;
    if (c->world == 1) return SL_OK;
    int64_t deadline = comm_deadline(c);
    sl_status st =
        c->rank == 0 ? boot_rank0(c, cfg, deadline, e) : boot_peer_rank(c, cfg, deadline, e);
    if (st != SL_OK) return st;
    /* Everyone is connected to everyone: one round over the mesh so that no
     * rank reports success while another is still failing its links. */
    comm_xfer tx[SL_COMM_MAX_WORLD], rx[SL_COMM_MAX_WORLD];
    int n = 0;
    for (int k = 0; k < c->world; k++) {
        if (k == c->rank) continue;
        tx[n] = (comm_xfer){.peer = k};
        rx[n] = (comm_xfer){.peer = k};
        n++;
    }
    st = comm_net_xchg(c, COMM_OP_AGREE, tx, n, rx, n, deadline, e);
    if (st != SL_OK) sl_err_wrap(e, "forming the group");
    return st;
}

/* ---- the exchange -------------------------------------------------------- */

static int xfer_step(sl_comm *c, comm_xfer *x, int sending)
{
    int fd = c->fd[x->peer];
    char *p;
    size_t want;
    if (x->done < sizeof x->hdr) {
        p = (char *)x->hdr + x->done;
        want = sizeof x->hdr - x->done;
    } else {
        p = x->buf + (x->done - sizeof x->hdr);
        want = x->len - (x->done - sizeof x->hdr);
    }
    ssize_t k = sending ? send(fd, p, want, MSG_NOSIGNAL) : recv(fd, p, want, 0);
    if (k > 0) {
        x->done += (size_t)k;
        return 0;
    }
    if (k == 0) return EPIPE;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return 0;
    return errno == ECONNRESET ? EPIPE : errno;
}

sl_status comm_net_xchg(sl_comm *c, comm_op op, comm_xfer *tx, int ntx, comm_xfer *rx, int nrx,
                        int64_t deadline, sl_err *e)
{
    const char *what = comm_op_name(op);
    for (int i = 0; i < ntx; i++) {
        uint32_t h[2] = {(uint32_t)op, 0};
        uint64_t len = tx[i].len;
        memcpy(tx[i].hdr, h, 8);
        memcpy(tx[i].hdr + 8, &len, 8);
        tx[i].done = 0;
    }
    for (int i = 0; i < nrx; i++)
        rx[i].done = 0;
    struct pollfd pfd[2 * SL_COMM_MAX_WORLD];
    comm_xfer *who[2 * SL_COMM_MAX_WORLD];
    for (;;) {
        if (atomic_load(&c->aborted))
            return comm_fail(c, e, SL_ERR_CLOSED, "%s: communicator aborted", what);
        int np = 0;
        for (int i = 0; i < ntx; i++)
            if (tx[i].done < sizeof tx[i].hdr + tx[i].len) {
                pfd[np] = (struct pollfd){c->fd[tx[i].peer], POLLOUT, 0};
                who[np++] = &tx[i];
            }
        int first_tx_end = np;
        for (int i = 0; i < nrx; i++)
            if (rx[i].done < sizeof rx[i].hdr + rx[i].len) {
                pfd[np] = (struct pollfd){c->fd[rx[i].peer], POLLIN, 0};
                who[np++] = &rx[i];
            }
        if (np == 0) return SL_OK;
        int rem = remaining_ms(deadline);
        if (rem == 0)
            return comm_fail(c, e, SL_ERR_LIMIT, "%s: timed out after %d ms waiting for rank %d",
                             what, c->timeout_ms, who[0]->peer);
        /* Wake up now and then to notice an abort flagged without a socket
         * shutdown reaching this thread's poll. */
        if (poll(pfd, (nfds_t)np, rem < 100 ? rem : 100) <= 0) continue;
        for (int i = 0; i < np; i++) {
            if (!pfd[i].revents) continue;
            comm_xfer *x = who[i];
            int sending = i < first_tx_end;
            size_t before = x->done;
            int err = xfer_step(c, x, sending);
            if (err == EPIPE)
                return comm_fail(c, e, SL_ERR_CLOSED,
                                 "%s: rank %d left the group (died or aborted: connection closed)",
                                 what, x->peer);
            if (err)
                return comm_fail(c, e, SL_ERR_IO, "%s with rank %d: %s", what, x->peer,
                                 strerror(err));
            if (!sending && before < sizeof x->hdr && x->done >= sizeof x->hdr) {
                uint32_t h[2];
                uint64_t len;
                memcpy(h, x->hdr, 8);
                memcpy(&len, x->hdr + 8, 8);
                if (h[0] != (uint32_t)op || len != x->len)
                    return comm_fail(c, e, SL_ERR_INVALID,
                                     "%s: rank %d sent %s of %llu bytes where %s of %zu bytes "
                                     "was expected (ranks issued different calls)",
                                     what, x->peer, comm_op_name((comm_op)h[0]),
                                     (unsigned long long)len, what, x->len);
            }
        }
    }
}

int comm_net_dead_peer(sl_comm *c)
{
    struct pollfd pfd[SL_COMM_MAX_WORLD];
    int np = 0, rank_of[SL_COMM_MAX_WORLD];
    for (int k = 0; k < c->world; k++)
        if (c->fd[k] >= 0) {
            pfd[np] = (struct pollfd){c->fd[k], POLLRDHUP, 0};
            rank_of[np++] = k;
        }
    if (poll(pfd, (nfds_t)np, 0) <= 0) return 0;
    for (int i = 0; i < np; i++)
        if (pfd[i].revents & (POLLRDHUP | POLLHUP | POLLERR)) return rank_of[i] + 1;
    return 0;
}

void comm_net_abort(sl_comm *c)
{
    for (int k = 0; k < c->world; k++)
        if (c->fd[k] >= 0) shutdown(c->fd[k], SHUT_RDWR);
}

void comm_net_close(sl_comm *c)
{
    for (int k = 0; k < c->world; k++)
        if (c->fd[k] >= 0) {
            close(c->fd[k]);
            c->fd[k] = -1;
        }
}

/* ---- the TCP data path ----------------------------------------------------- */

/* Fills one transfer per peer (every rank but self). */
static int to_all(const sl_comm *c, comm_xfer *x, char *buf, size_t len)
{
    int n = 0;
    for (int k = 0; k < c->world; k++)
        if (k != c->rank) x[n++] = (comm_xfer){.peer = k, .buf = buf, .len = len};
    return n;
}

static sl_status tcp_all_reduce(sl_comm *c, void *buf, size_t n, sl_dtype dt, sl_err *e)
{
    /* Reduce-scatter then all-gather: rank r owns elements [lo(r), lo(r+1)),
     * sums them over ranks in rank order and hands the result to everyone, so
     * each element is computed once and is identical everywhere. */
    int64_t deadline = comm_deadline(c);
    size_t es = sl_dtype_size(dt), W = (size_t)c->world, r = (size_t)c->rank;
    char *b = buf;
#define LO(k) (n * (size_t)(k) / W)
    size_t mine = LO(r + 1) - LO(r);
    sl_status st = comm_scratch(c, W * mine * es, e);
    if (st != SL_OK)
        return comm_fail(c, e, st, "all-reduce: no memory for %zu bytes", W * mine * es);
    comm_xfer tx[SL_COMM_MAX_WORLD], rx[SL_COMM_MAX_WORLD];
    int nx = 0;
    for (int k = 0; k < c->world; k++) {
        if (k == c->rank) continue;
        tx[nx] = (comm_xfer){.peer = k, .buf = b + LO(k) * es, .len = (LO(k + 1) - LO(k)) * es};
        rx[nx] =
            (comm_xfer){.peer = k, .buf = c->scratch + (size_t)k * mine * es, .len = mine * es};
        nx++;
    }
    st = comm_net_xchg(c, COMM_OP_ALL_REDUCE, tx, nx, rx, nx, deadline, e);
    if (st != SL_OK) return st;
    const void *srcs[SL_COMM_MAX_WORLD];
    for (size_t k = 0; k < W; k++)
        srcs[k] = k == r ? b + LO(r) * es : c->scratch + k * mine * es;
    comm_reduce(dt, b + LO(r) * es, srcs, c->world, mine);
    nx = 0;
    for (int k = 0; k < c->world; k++) {
        if (k == c->rank) continue;
        tx[nx] = (comm_xfer){.peer = k, .buf = b + LO(r) * es, .len = mine * es};
        rx[nx] = (comm_xfer){.peer = k, .buf = b + LO(k) * es, .len = (LO(k + 1) - LO(k)) * es};
        nx++;
    }
#undef LO
    return comm_net_xchg(c, COMM_OP_ALL_REDUCE, tx, nx, rx, nx, deadline, e);
}

static sl_status tcp_all_gather(sl_comm *c, void *out, const void *in, size_t outer, size_t inner,
                                sl_err *e)
{
    size_t inb = outer * inner;
    /* One row per rank (gathering along dim 0): straight into place. */
    int direct = outer == 1;
    if (!direct) {
        sl_status st = comm_scratch(c, (size_t)c->world * inb, e);
        if (st != SL_OK) return comm_fail(c, e, st, "all-gather: no memory");
    }
    comm_xfer tx[SL_COMM_MAX_WORLD], rx[SL_COMM_MAX_WORLD];
    int nx = to_all(c, tx, (char *)in, inb);
    for (int i = 0; i < nx; i++) {
        size_t k = (size_t)tx[i].peer;
        rx[i] = (comm_xfer){
            .peer = tx[i].peer, .buf = (direct ? (char *)out : c->scratch) + k * inb, .len = inb};
    }
    sl_status st = comm_net_xchg(c, COMM_OP_ALL_GATHER, tx, nx, rx, nx, comm_deadline(c), e);
    if (st != SL_OK) return st;
    comm_gather_place(out, c->world, c->rank, inner, in, 0, inb);
    if (!direct)
        for (int i = 0; i < nx; i++)
            comm_gather_place(out, c->world, rx[i].peer, inner, rx[i].buf, 0, inb);
    return SL_OK;
}

static sl_status tcp_broadcast(sl_comm *c, void *buf, size_t bytes, int root, sl_err *e)
{
    comm_xfer x[SL_COMM_MAX_WORLD];
    int64_t deadline = comm_deadline(c);
    if (c->rank == root)
        return comm_net_xchg(c, COMM_OP_BROADCAST, x, to_all(c, x, buf, bytes), NULL, 0, deadline,
                             e);
    x[0] = (comm_xfer){.peer = root, .buf = buf, .len = bytes};
    return comm_net_xchg(c, COMM_OP_BROADCAST, NULL, 0, x, 1, deadline, e);
}

static sl_status tcp_barrier(sl_comm *c, sl_err *e)
{
    comm_xfer tx[SL_COMM_MAX_WORLD], rx[SL_COMM_MAX_WORLD];
    int n = to_all(c, tx, NULL, 0);
    to_all(c, rx, NULL, 0);
    return comm_net_xchg(c, COMM_OP_BARRIER, tx, n, rx, n, comm_deadline(c), e);
}

static sl_status tcp_send(sl_comm *c, const void *buf, size_t bytes, int peer, sl_err *e)
{
    comm_xfer x = {.peer = peer, .buf = (char *)buf, .len = bytes};
    return comm_net_xchg(c, COMM_OP_P2P, &x, 1, NULL, 0, comm_deadline(c), e);
}

static sl_status tcp_recv(sl_comm *c, void *buf, size_t bytes, int peer, sl_err *e)
{
    comm_xfer x = {.peer = peer, .buf = buf, .len = bytes};
    return comm_net_xchg(c, COMM_OP_P2P, NULL, 0, &x, 1, comm_deadline(c), e);
}

const comm_ops comm_tcp_ops = {
    .all_reduce = tcp_all_reduce,
    .all_gather = tcp_all_gather,
    .broadcast = tcp_broadcast,
    .barrier = tcp_barrier,
    .send = tcp_send,
    .recv = tcp_recv,
};

/* The CPU communicator with real processes (fork) on 127.0.0.1: every
 * collective at world sizes 1, 2, 4 over shared memory and over forced TCP,
 * exact values and bit-identical results across ranks and transports; then
 * the failures: a rank that never arrives, fingerprint and world-size
 * mismatches, an unreachable address, a peer killed mid-collective, a stalled
 * peer, calls issued out of order, and an abort. Every group runs under a
 * watchdog that kills it, so a hang fails the test instead of stalling CI. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "comm.h"
#include "sl_test.h"

#define MAXW 4
#define NRED 1000 /* all-reduce length: not a multiple of any world size */
#define NBF 777

/* Memory shared by the parent and its forked ranks. */
typedef struct shared {
    float red[2][MAXW][NRED]; /* [transport][rank] all-reduce f32 results */
    uint16_t bf[2][MAXW][NBF];
    int counter;
    int64_t elapsed_ms[MAXW];
    char err[MAXW][512];
    int status[MAXW];
} shared;
static shared *sh;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Reserves a loopback port for a group's --dist-init-addr: a socket bound to
 * port 0 with SO_REUSEADDR and kept open, but never listening, for as long as
 * the group runs. While it is bound the kernel hands the port to no one else
 * (no bind(0), no outgoing connection's local port), and rank 0, which also
 * sets SO_REUSEADDR, can still bind and listen there. Closing the probe
 * socket before the ranks bound (as this test once did) let a busy machine
 * give the port away in between. Returns the socket; *port the number. */
static int reserve_port(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    CHECK(fd >= 0);
    CHECK(setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0);
    CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0);
    CHECK(getsockname(fd, (struct sockaddr *)&a, &len) == 0);
    *port = ntohs(a.sin_port);
    return fd;
}

typedef struct group {
    int world, tcp, timeout_ms;
    char addr[64];
    int ranks_started; /* how many ranks to fork (< world: some never arrive) */
} group;

typedef void (*rank_fn)(const group *g, int rank);

static sl_comm_config make_cfg(const group *g, int rank)
{
    return (sl_comm_config){.rank = rank,
                            .world_size = g->world,
                            .init_addr = g->addr,
                            .timeout_ms = g->timeout_ms,
                            .fingerprint = "model=/m/qwen3 tp=4 hash=abc",
                            .kind = SL_COMM_KIND_CPU,
                            .transport = g->tcp ? SL_COMM_TRANSPORT_TCP : SL_COMM_TRANSPORT_AUTO,
                            .shm_bytes = 256}; /* tiny slots: every shm call runs in pieces */
}

/* sl_comm_new, failing the test (NULL) when it fails. */
static sl_comm *open_comm(const sl_comm_config *cfg, sl_err *e)
{
    sl_comm *c;
    if (sl_comm_new(&c, cfg, e) != SL_OK) {
        CHECK_MSG(0, "%s", e->msg);
        return NULL;
    }
    return c;
}

/* Forks the ranks, waits at most limit_ms for all of them (then kills them),
 * and returns how many exited non-zero; killed_ok: rank that may die by
 * SIGKILL (-1: none). */
static int run_group(group *g, rank_fn fn, int limit_ms, int killed_ok)
{
    int port, held = reserve_port(&port); /* closed once every rank is gone */
    snprintf(g->addr, sizeof g->addr, "127.0.0.1:%d", port);
    int n = g->ranks_started ? g->ranks_started : g->world;
    pid_t pid[MAXW];
    fflush(stdout);
    fflush(stderr);
    for (int r = 0; r < n; r++) {
        pid[r] = fork();
        if (pid[r] == 0) {
            fn(g, r);
            fflush(stdout);
            fflush(stderr);
            _exit(sl_test_failed ? 1 : 0);
        }
    }
    int bad = 0, left = n;
    int64_t deadline = now_ms() + limit_ms;
    while (left > 0) {
        int st;
        pid_t p = waitpid(-1, &st, WNOHANG);
        if (p > 0) {
            left--;
            int r = 0;
            while (pid[r] != p)
                r++;
            int ok = (WIFEXITED(st) && WEXITSTATUS(st) == 0) ||
                     (r == killed_ok && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
            if (!ok) {
                fprintf(stderr, "rank %d of %d failed (status %#x)\n", r, g->world, st);
                bad++;
            }
            continue;
        }
        if (now_ms() > deadline) {
            fprintf(stderr, "group of %d hung: killing it\n", g->world);
            for (int r = 0; r < n; r++)
                kill(pid[r], SIGKILL);
            while (wait(NULL) > 0) {
            }
            close(held);
            return bad + left;
        }
        usleep(2000);
    }
    close(held);
    return bad;
}

/* ---- the collectives --------------------------------------------------------- */

/* Rank r's all-reduce input: every fourth element is order-sensitive in f32
 * ((1e8 + 1) − 1e8 + 1 = 1 in rank order; other orders give 0 or 2). */
static float red_in(int r, int i)
{
    static const float tricky[4] = {1e8f, 1.0f, -1e8f, 1.0f};
    return i % 4 == 0 ? tricky[r] : (float)(r + 1) * 0.25f + (float)i;
}

/* bf16 input: 256 + 1 + 1 rounds to 256 when each step rounds in bf16 but
 * is exactly 258 with an f32 accumulator. */
static uint16_t bf_in(int r, int i)
{
    static const float tricky[4] = {256.0f, 1.0f, 1.0f, 0.0f};
    return sl_f32_to_bf16(i % 3 == 0 ? tricky[r] : (float)(r + 1) * 0.5f + (float)(i % 16));
}

static void collectives_rank(const group *g, int rank)
{
    sl_err e = {0};
    sl_comm *c;
    sl_comm_config cfg = make_cfg(g, rank);
    if (sl_comm_new(&c, &cfg, &e) != SL_OK) {
        CHECK_MSG(0, "rank %d: %s", rank, e.msg);
        return;
    }
    int W = g->world;
    CHECK(sl_comm_rank(c) == rank && sl_comm_world_size(c) == W);
    if (W > 1)
        CHECK_MSG(sl_comm_transport_of(c) ==
                      (g->tcp ? SL_COMM_TRANSPORT_TCP : SL_COMM_TRANSPORT_SHM),
                  "transport %s", sl_comm_transport_name(sl_comm_transport_of(c)));

    /* all-reduce f32: exact, rank order */
    float x[NRED];
    for (int i = 0; i < NRED; i++)
        x[i] = red_in(rank, i);
    sl_tensor t = sl_tensor_make(x, SL_DTYPE_F32, 2, (int64_t[]){10, NRED / 10});
    CHECK_MSG(sl_comm_all_reduce(c, &t, &e) == SL_OK, "%s", e.msg);
    int wrong = 0;
    for (int i = 0; i < NRED; i++) {
        float want = red_in(0, i);
        for (int r = 1; r < W; r++)
            want += red_in(r, i);
        wrong += x[i] != want;
    }
    CHECK_MSG(wrong == 0, "%d all-reduce f32 values differ", wrong);
    if (W == 4) CHECK(x[0] == 1.0f && x[1] == 0.25f + 0.5f + 0.75f + 1.0f + 4.0f);
    memcpy(sh->red[g->tcp][rank], x, sizeof x);

    /* all-reduce bf16: f32 accumulate, one rounding */
    uint16_t b[NBF];
    for (int i = 0; i < NBF; i++)
        b[i] = bf_in(rank, i);
    t = sl_tensor_make(b, SL_DTYPE_BF16, 1, (int64_t[]){NBF});
    CHECK_MSG(sl_comm_all_reduce(c, &t, &e) == SL_OK, "%s", e.msg);
    wrong = 0;
    for (int i = 0; i < NBF; i++) {
        float acc = 0;
        for (int r = 0; r < W; r++)
            acc += sl_bf16_to_f32(bf_in(r, i));
        wrong += b[i] != sl_f32_to_bf16(acc);
    }
    CHECK_MSG(wrong == 0, "%d all-reduce bf16 values differ", wrong);
    if (W >= 3) CHECK(sl_bf16_to_f32(b[0]) == 258.0f);
    memcpy(sh->bf[g->tcp][rank], b, sizeof b);

    /* all-gather along dim 0 and along dim 1 (rows cross the shm pieces) */
    enum { A = 5, B = 37 };
    float in[A * B], out[A * B * MAXW];
    for (int i = 0; i < A * B; i++)
        in[i] = (float)(1000 * rank + i);
    sl_tensor ti = sl_tensor_make(in, SL_DTYPE_F32, 2, (int64_t[]){A, B});
    for (int dim = 0; dim < 2; dim++) {
        memset(out, 0, sizeof out);
        sl_tensor to = sl_tensor_make(out, SL_DTYPE_F32, 2,
                                      dim == 0 ? (int64_t[]){A * W, B} : (int64_t[]){A, B * W});
        CHECK_MSG(sl_comm_all_gather(c, &to, &ti, dim, &e) == SL_OK, "%s", e.msg);
        wrong = 0;
        for (int k = 0; k < W; k++)
            for (int a = 0; a < A; a++)
                for (int j = 0; j < B; j++) {
                    float got = dim == 0 ? out[(k * A + a) * B + j] : out[a * B * W + k * B + j];
                    wrong += got != (float)(1000 * k + a * B + j);
                }
        CHECK_MSG(wrong == 0, "all-gather dim %d: %d values wrong", dim, wrong);
    }
    sl_tensor bad = sl_tensor_make(out, SL_DTYPE_F32, 2, (int64_t[]){A, B});
    if (W > 1) CHECK(sl_comm_all_gather(c, &bad, &ti, 0, &e) == SL_ERR_INVALID);

    /* broadcast from the last rank */
    float bc[300];
    for (int i = 0; i < 300; i++)
        bc[i] = rank == W - 1 ? (float)i * 0.5f : -1.0f;
    t = sl_tensor_make(bc, SL_DTYPE_F32, 1, (int64_t[]){300});
    CHECK_MSG(sl_comm_broadcast(c, &t, W - 1, &e) == SL_OK, "%s", e.msg);
    wrong = 0;
    for (int i = 0; i < 300; i++)
        wrong += bc[i] != (float)i * 0.5f;
    CHECK(wrong == 0);
    char msg[32] = "";
    if (rank == 0) snprintf(msg, sizeof msg, "seed=%d", 4242);
    CHECK_MSG(sl_comm_bcast_bytes(c, msg, sizeof msg, 0, &e) == SL_OK, "%s", e.msg);
    CHECK(!strcmp(msg, "seed=4242"));

    /* barrier: nobody leaves round k before everyone counted into it */
    for (int round = 1; round <= 3; round++) {
        if (rank == 0) usleep(20000); /* rank 0 arrives late */
        __atomic_add_fetch(&sh->counter, 1, __ATOMIC_SEQ_CST);
        CHECK_MSG(sl_comm_barrier(c, &e) == SL_OK, "%s", e.msg);
        CHECK(__atomic_load_n(&sh->counter, __ATOMIC_SEQ_CST) >= round * W);
        CHECK(sl_comm_barrier(c, &e) == SL_OK);
    }

    /* send/recv around a ring (even ranks send first, odd ranks receive) */
    if (W > 1) {
        int32_t sbuf[64], rbuf[64];
        int to = (rank + 1) % W, from = (rank + W - 1) % W;
        for (int i = 0; i < 64; i++)
            sbuf[i] = rank * 1000 + i;
        sl_tensor ts = sl_tensor_make(sbuf, SL_DTYPE_I32, 1, (int64_t[]){64});
        sl_tensor tr = sl_tensor_make(rbuf, SL_DTYPE_I32, 1, (int64_t[]){64});
        for (int step = 0; step < 2; step++) {
            int sending = (step == 0) == (rank % 2 == 0);
            sl_status st = sending ? sl_comm_send(c, &ts, to, &e) : sl_comm_recv(c, &tr, from, &e);
            CHECK_MSG(st == SL_OK, "%s", e.msg);
        }
        wrong = 0;
        for (int i = 0; i < 64; i++)
            wrong += rbuf[i] != from * 1000 + i;
        CHECK(wrong == 0);
        CHECK(sl_comm_send(c, &ts, rank, &e) == SL_ERR_INVALID);
        /* host bytes to rank 0 (a PD gather): every follower's, in rank order */
        if (rank) {
            CHECK_MSG(sl_comm_send_bytes(c, sbuf, sizeof sbuf, 0, &e) == SL_OK, "%s", e.msg);
        } else {
            for (int r = 1; r < W; r++) {
                CHECK_MSG(sl_comm_recv_bytes(c, rbuf, sizeof rbuf, r, &e) == SL_OK, "%s", e.msg);
                CHECK(rbuf[0] == r * 1000 && rbuf[63] == r * 1000 + 63);
            }
        }
        CHECK(sl_comm_recv_bytes(c, rbuf, 4, rank, &e) == SL_ERR_INVALID);
    }
    CHECK(sl_comm_sync(c, &e) == SL_OK);
    sl_comm_free(c);
}

static void test_collectives(void)
{
    for (int tcp = 0; tcp < 2; tcp++)
        for (int w = 1; w <= 4; w *= 2) {
            group g = {.world = w, .tcp = tcp, .timeout_ms = 10000};
            sh->counter = 0;
            CHECK_MSG(run_group(&g, collectives_rank, 30000, -1) == 0, "world %d %s", w,
                      tcp ? "tcp" : "shm");
            /* bit-identical on every rank */
            for (int r = 1; r < w; r++) {
                CHECK(!memcmp(sh->red[tcp][r], sh->red[tcp][0], sizeof sh->red[tcp][0]));
                CHECK(!memcmp(sh->bf[tcp][r], sh->bf[tcp][0], sizeof sh->bf[tcp][0]));
            }
        }
    /* and the same bits over shared memory as over TCP (world 4 ran last) */
    CHECK(!memcmp(sh->red[0][0], sh->red[1][0], sizeof sh->red[0][0]));
    CHECK(!memcmp(sh->bf[0][0], sh->bf[1][0], sizeof sh->bf[0][0]));
}

/* ---- failures ------------------------------------------------------------ */

/* Tries to join and records the outcome (status, message, time taken). */
static void join_rank(const group *g, int rank, sl_comm_config *cfg)
{
    sl_err e = {0};
    sl_comm *c = NULL;
    int64_t t0 = now_ms();
    sh->status[rank] = sl_comm_new(&c, cfg, &e);
    sh->elapsed_ms[rank] = now_ms() - t0;
    snprintf(sh->err[rank], sizeof sh->err[rank], "%s", e.msg);
    sl_comm_free(c);
}

static void never_arrives_rank(const group *g, int rank)
{
    sl_comm_config cfg = make_cfg(g, rank);
    /* rank 1 waits a little longer than rank 0 so that it hears rank 0's
     * verdict instead of reaching its own deadline first */
    if (rank == 1) cfg.timeout_ms += 1000;
    join_rank(g, rank, &cfg);
}

static void test_never_arrives(void)
{
    group g = {.world = 3, .timeout_ms = 600, .ranks_started = 2};
    CHECK(run_group(&g, never_arrives_rank, 10000, -1) == 0);
    for (int r = 0; r < 2; r++) {
        CHECK_MSG(sh->status[r] == SL_ERR_LIMIT, "rank %d: %d %s", r, sh->status[r], sh->err[r]);
        CHECK_MSG(strstr(sh->err[r], "rank 2 never arrived within 600 ms"), "rank %d: %s", r,
                  sh->err[r]);
    }
    CHECK_MSG(sh->elapsed_ms[0] >= 550 && sh->elapsed_ms[0] < 2000, "%lld ms",
              (long long)sh->elapsed_ms[0]);
}

static void mismatch_rank(const group *g, int rank)
{
    sl_comm_config cfg = make_cfg(g, rank);
    if (rank == 1 && g->tcp == 0) cfg.fingerprint = "model=/m/other tp=4";
    if (rank == 1 && g->tcp == 1) cfg.world_size = 3; /* tcp field reused as the case */
    join_rank(g, rank, &cfg);
}

static void test_mismatch(void)
{
    group g = {.world = 2, .timeout_ms = 3000, .tcp = 0};
    CHECK(run_group(&g, mismatch_rank, 10000, -1) == 0);
    for (int r = 0; r < 2; r++) {
        CHECK(sh->status[r] == SL_ERR_INVALID);
        CHECK_MSG(strstr(sh->err[r], "group fingerprint mismatch: rank 0 has 'model=/m/qwen3 tp=4 "
                                     "hash=abc', rank 1 has 'model=/m/other tp=4'"),
                  "rank %d: %s", r, sh->err[r]);
        CHECK(sh->elapsed_ms[r] < 2000);
    }
    g = (group){.world = 2, .timeout_ms = 3000, .tcp = 1};
    CHECK(run_group(&g, mismatch_rank, 10000, -1) == 0);
    for (int r = 0; r < 2; r++)
        CHECK_MSG(strstr(sh->err[r], "rank 1: world size mismatch: rank 0 has 2, rank 1 has 3"),
                  "rank %d: %s", r, sh->err[r]);
}

static void unreachable_rank(const group *g, int rank)
{
    sl_comm_config cfg = make_cfg(g, 1); /* only rank 1 runs: nobody listens */
    join_rank(g, 0, &cfg);
}

static void test_unreachable(void)
{
    group g = {.world = 2, .timeout_ms = 300, .ranks_started = 1};
    CHECK(run_group(&g, unreachable_rank, 10000, -1) == 0);
    char want[128];
    snprintf(want, sizeof want, "cannot reach --dist-init-addr %s: Connection refused", g.addr);
    CHECK_MSG(strstr(sh->err[0], want), "%s", sh->err[0]);
    CHECK(sh->status[0] == SL_ERR_IO);
    CHECK(sh->elapsed_ms[0] >= 250 && sh->elapsed_ms[0] < 2000);
}

/* Ranks 0 and 1 enter an all-reduce; rank 2 is killed (kill_mode 1) or
 * stalls past the timeout (kill_mode 2) instead. */
static int kill_mode;
static void dying_rank(const group *g, int rank)
{
    sl_err e = {0};
    sl_comm_config cfg = make_cfg(g, rank);
    sl_comm *c = open_comm(&cfg, &e);
    if (!c) return;
    CHECK(sl_comm_barrier(c, &e) == SL_OK);
    float x[4096];
    for (int i = 0; i < 4096; i++)
        x[i] = 1;
    sl_tensor t = sl_tensor_make(x, SL_DTYPE_F32, 1, (int64_t[]){4096});
    if (rank == 2) {
        usleep(100000); /* the others are inside the all-reduce by now */
        if (kill_mode == 1) kill(getpid(), SIGKILL);
        usleep((useconds_t)g->timeout_ms * 2000);
    }
    int64_t t0 = now_ms();
    sh->status[rank] = sl_comm_all_reduce(c, &t, &e);
    sh->elapsed_ms[rank] = now_ms() - t0;
    snprintf(sh->err[rank], sizeof sh->err[rank], "%s", e.msg);
    /* broken for good */
    if (sh->status[rank] != SL_OK) CHECK(sl_comm_barrier(c, &e) == SL_ERR_CLOSED);
    sl_comm_free(c);
}

static void test_peer_dies(void)
{
    for (int tcp = 0; tcp < 2; tcp++) {
        kill_mode = 1;
        group g = {.world = 3, .timeout_ms = 8000, .tcp = tcp};
        CHECK(run_group(&g, dying_rank, 20000, 2) == 0);
        for (int r = 0; r < 2; r++) {
            CHECK_MSG(sh->status[r] == SL_ERR_CLOSED, "%s rank %d: %s", tcp ? "tcp" : "shm", r,
                      sh->err[r]);
            CHECK_MSG(strstr(sh->err[r], "left the group"), "%s", sh->err[r]);
            /* noticed from the closed socket, long before the 8 s deadline */
            CHECK_MSG(sh->elapsed_ms[r] < 3000, "%lld ms", (long long)sh->elapsed_ms[r]);
        }
    }
    /* a stalled (not dead) peer: the deadline fires, the first rank to see it
     * aborts, the other fails fast; the late rank finds the group gone */
    kill_mode = 2;
    group g = {.world = 3, .timeout_ms = 500};
    CHECK(run_group(&g, dying_rank, 20000, -1) == 0);
    int timed_out = 0;
    for (int r = 0; r < 2; r++) {
        CHECK(sh->status[r] != SL_OK);
        timed_out += sh->status[r] == SL_ERR_LIMIT;
        CHECK(sh->elapsed_ms[r] < 1500);
    }
    CHECK(timed_out >= 1);
    CHECK(sh->status[2] != SL_OK);
}

/* Rank 0 all-reduces 10 floats, rank 1 20: the TCP path names the mismatch. */
static void out_of_order_rank(const group *g, int rank)
{
    sl_err e = {0};
    sl_comm_config cfg = make_cfg(g, rank);
    sl_comm *c = open_comm(&cfg, &e);
    if (!c) return;
    float x[20] = {0};
    sl_tensor t = sl_tensor_make(x, SL_DTYPE_F32, 1, (int64_t[]){rank ? 20 : 10});
    sh->status[rank] = sl_comm_all_reduce(c, &t, &e);
    snprintf(sh->err[rank], sizeof sh->err[rank], "%s", e.msg);
    sl_comm_free(c);
}

static void test_out_of_order(void)
{
    group g = {.world = 2, .timeout_ms = 3000, .tcp = 1};
    CHECK(run_group(&g, out_of_order_rank, 10000, -1) == 0);
    int named = 0;
    for (int r = 0; r < 2; r++) {
        CHECK(sh->status[r] != SL_OK);
        named += strstr(sh->err[r], "ranks issued different calls") != NULL;
    }
    CHECK(named >= 1);
}

/* Rank 1 aborts while rank 0 waits in a barrier. */
static void abort_rank(const group *g, int rank)
{
    sl_err e = {0};
    sl_comm_config cfg = make_cfg(g, rank);
    sl_comm *c = open_comm(&cfg, &e);
    if (!c) return;
    int64_t t0 = now_ms();
    if (rank == 1) {
        usleep(50000);
        sl_comm_abort(c);
        sl_comm_abort(c);
        CHECK(sl_comm_barrier(c, &e) == SL_ERR_CLOSED);
    } else {
        CHECK(sl_comm_barrier(c, &e) == SL_ERR_CLOSED);
        CHECK(now_ms() - t0 < 2000);
    }
    sl_comm_free(c);
}

static void test_abort(void)
{
    for (int tcp = 0; tcp < 2; tcp++) {
        group g = {.world = 2, .timeout_ms = 8000, .tcp = tcp};
        CHECK_MSG(run_group(&g, abort_rank, 20000, -1) == 0, "%s", tcp ? "tcp" : "shm");
    }
}

static void test_config(void)
{
    sl_err e = {0};
    sl_comm *c = (sl_comm *)1;
    sl_comm_config cfg = {.rank = 2, .world_size = 2, .timeout_ms = 10};
    CHECK(sl_comm_new(&c, &cfg, &e) == SL_ERR_INVALID && c == NULL);
    cfg = (sl_comm_config){.rank = 0, .world_size = 2, .timeout_ms = 10};
    CHECK(sl_comm_new(&c, &cfg, &e) == SL_ERR_INVALID && strstr(e.msg, "--dist-init-addr"));
    cfg = (sl_comm_config){.rank = 0, .world_size = 1, .timeout_ms = 10, .kind = SL_COMM_KIND_NCCL};
    CHECK(sl_comm_new(&c, &cfg, &e) == SL_ERR_INVALID);
    CHECK(sl_comm_kind_for(NULL) == SL_COMM_KIND_CPU);
    sl_backend *be = sl_backend_cpu_new();
    CHECK(sl_comm_kind_for(be) == SL_COMM_KIND_CPU);
    sl_backend_free(be);
}

/* ---- micro-benchmark (SLUICE_COMM_BENCH=1): all-reduce latency/bandwidth -- */

static size_t bench_n;
static void bench_rank(const group *g, int rank)
{
    sl_err e = {0};
    sl_comm_config cfg = make_cfg(g, rank);
    cfg.shm_bytes = 0; /* the default slot size */
    sl_comm *c = open_comm(&cfg, &e);
    if (!c) return;
    float *x = calloc(bench_n, sizeof *x);
    sl_tensor t = sl_tensor_make(x, SL_DTYPE_F32, 1, (int64_t[]){(int64_t)bench_n});
    int iters = bench_n > 100000 ? 10 : 200;
    CHECK(sl_comm_all_reduce(c, &t, &e) == SL_OK);
    CHECK(sl_comm_barrier(c, &e) == SL_OK);
    int64_t t0 = now_ms();
    for (int i = 0; i < iters; i++)
        CHECK(sl_comm_all_reduce(c, &t, &e) == SL_OK);
    double ms = (double)(now_ms() - t0) / iters;
    if (rank == 0)
        printf("bench: world %d %s all-reduce %zu f32: %.3f ms/call, %.2f GB/s of buffer\n",
               g->world, g->tcp ? "tcp" : "shm", bench_n, ms,
               ms > 0 ? (double)bench_n * 4 / (ms * 1e6) : 0.0);
    free(x);
    sl_comm_free(c);
}

static void bench(void)
{
    size_t sizes[2] = {4096, 4u << 20};
    for (int tcp = 0; tcp < 2; tcp++)
        for (int w = 2; w <= 4; w *= 2)
            for (int s = 0; s < 2; s++) {
                bench_n = sizes[s];
                group g = {.world = w, .tcp = tcp, .timeout_ms = 30000};
                CHECK(run_group(&g, bench_rank, 120000, -1) == 0);
            }
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) return 1;
    test_config();
    test_collectives();
    test_never_arrives();
    test_mismatch();
    test_unreachable();
    test_peer_dies();
    test_out_of_order();
    test_abort();
    if (getenv("SLUICE_COMM_BENCH")) bench();
    return sl_test_done("test_comm");
}

/* `sluice serve`: one command for one machine, SGLang-style. Starts
 * --dp-size worker groups as child processes (`sluice worker` on ipc://
 * sockets, worker flags passed through), then runs the router in this
 * process over them. A group of --tp-size N > 1 is one `sluice worker
 * --tp-size N` process (rank 0, the one the router dials) that starts its
 * N-1 other ranks itself; the group meets on a free 127.0.0.1 port; group g
 * uses cuda:g*N .. cuda:g*N+N-1. A group that exits leaves the others
 * serving (the router migrates its requests); serve stops (exit 1) when no
 * group is left. On SIGINT/SIGTERM the router drains and the workers are
 * stopped; they also die with this process if it is killed.
 *
 * The router link is private: the sockets live in a fresh mkdtemp
 * directory (0700; sockets 0600) and every pipe is authenticated with a
 * random secret (proto/link_auth.h) written to a 0600 file there, unless
 * --link-secret-file names one. The directory goes away on exit. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine_flags.h"
#include "router_cmd.h"
#include "router_opts.h"
#include "sl_log.h"

#define MAX_DP 64

/* Worker flags (worker/cli/engine_flags.h) passed through verbatim when given. */
static sl_engine_flags_pass passes;

/* A free TCP port on 127.0.0.1 (for a group's --dist-init-addr), or 0. */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t n = sizeof a;
    int port = 0;
    if (fd >= 0 && !bind(fd, (struct sockaddr *)&a, sizeof a) &&
        !getsockname(fd, (struct sockaddr *)&a, &n))
        port = ntohs(a.sin_port);
    if (fd >= 0) close(fd);
    return port;
}

static pid_t spawn(char **argv)
{
    pid_t p = fork();
    if (p == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM); /* never outlive serve */
        /* A process group of its own: Ctrl-C in a terminal signals the whole
         * foreground group, and the workers must outlive the router's drain
         * (serve stops them with SIGTERM once in-flight streams finished). */
        setpgid(0, 0);
        execv("/proc/self/exe", argv);
        fprintf(stderr, "serve: cannot start %s: exec failed\n", argv[0]);
        _exit(127);
    }
    return p;
}

/* Watches the worker children: one that exits is started again after a
 * back-off (1 s, 2 s, 4 s ... capped at 30 s; back to 1 s once a worker has
 * lived a minute) while the router keeps serving with the others. The
 * router marks it dead when its socket drops and alive again at its first
 * load report (docs/operations.md). A group that exits on its own before
 * the router ever had a load report from it never started (weights, flags,
 * device): serve stops. */
#define RESTART_MAX_MS 30000
typedef struct watch {
    pid_t *pids;
    int n;
    char **argv[MAX_DP]; /* each group's command line (owned) */
    unsigned backoff_ms[MAX_DP];
    int restarts[MAX_DP];
    uint64_t started_ms[MAX_DP];
    uv_timer_t restart[MAX_DP];
    uv_signal_t sigchld;
    sl_router_ctl *ctl;
    int stopping;
} watch;

static void on_restart(uv_timer_t *t)
{
    watch *w = t->data;
    int g = (int)(t - w->restart);
    if (w->stopping || w->pids[g] > 0) return;
    w->pids[g] = spawn(w->argv[g]);
    w->started_ms[g] = uv_now(t->loop);
    if (w->pids[g] < 0) {
        w->pids[g] = 0;
        uv_timer_start(t, on_restart, w->backoff_ms[g], 0);
    } else {
        fprintf(stderr, "serve: worker group %d restarted (pid %d)\n", g, (int)w->pids[g]);
    }
}

static void on_sigchld(uv_signal_t *h, int signum)
{
    watch *w = h->data;
    for (int g = 0; g < w->n; g++) {
        int st;
        if (w->pids[g] > 0 && waitpid(w->pids[g], &st, WNOHANG) == w->pids[g]) {
            w->pids[g] = 0;
            if (w->stopping) continue;
            uint64_t now = uv_now(h->loop);
            if (!w->restarts[g] && WIFEXITED(st) && !sl_router_ctl_worker_ready(w->ctl, g)) {
                /* never started (weights, flags, device): a restart would
                 * fail the same way */
                fprintf(stderr, "serve: worker group %d exited (status %d) while starting; "
                                "stopping\n", g, WEXITSTATUS(st));
                sl_router_ctl_stop(w->ctl, 1);
                continue;
            }
            w->restarts[g]++;
            if (now - w->started_ms[g] > 60000) w->backoff_ms[g] = 0;
            w->backoff_ms[g] = w->backoff_ms[g] ? w->backoff_ms[g] * 2 : 1000;
            if (w->backoff_ms[g] > RESTART_MAX_MS) w->backoff_ms[g] = RESTART_MAX_MS;
            fprintf(stderr, "serve: worker group %d exited (%s %d); restarting in %u ms\n", g,
                    WIFEXITED(st) ? "status" : "signal",
                    WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st), w->backoff_ms[g]);
            uv_timer_start(&w->restart[g], on_restart, w->backoff_ms[g], 0);
        }
    }
}

static void watch_started(uv_loop_t *loop, sl_router_ctl *ctl, void *ud)
{
    watch *w = ud;
    w->ctl = ctl;
    for (int g = 0; g < w->n; g++) {
        uv_timer_init(loop, &w->restart[g]);
        w->restart[g].data = w;
        w->started_ms[g] = uv_now(loop);
    }
    uv_signal_init(loop, &w->sigchld);
    w->sigchld.data = w;
    uv_signal_start(&w->sigchld, on_sigchld, SIGCHLD);
    on_sigchld(&w->sigchld, SIGCHLD); /* one may have died before the loop ran */
}

static void watch_stopping(void *ud)
{
    watch *w = ud;
    w->stopping = 1;
    for (int g = 0; g < w->n; g++) uv_close((uv_handle_t *)&w->restart[g], NULL);
    uv_close((uv_handle_t *)&w->sigchld, NULL);
}

/* A private directory for the sockets and, unless secret_path is NULL, a
 * random secret in it (hex, 0600); returns 0, or -1 after printing why. */
static int make_private_dir(char *dir, size_t cap, char *secret_path, size_t scap)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, cap, "%s/sluice-serve-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        fprintf(stderr, "serve: cannot create a private directory in %s\n", tmp ? tmp : "/tmp");
        return -1;
    }
    chmod(dir, 0700);
    if (!secret_path) return 0;
    snprintf(secret_path, scap, "%s/link-secret", dir);
    uint8_t raw[32];
    char hex[2 * sizeof raw + 2];
    if (sl_link_random(raw, sizeof raw)) {
        fprintf(stderr, "serve: no random bytes for the link secret\n");
        return -1;
    }
    for (size_t i = 0; i < sizeof raw; i++) snprintf(hex + 2 * i, 3, "%02x", raw[i]);
    hex[2 * sizeof raw] = '\n';
    int fd = open(secret_path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0600);
    ssize_t n = fd >= 0 ? write(fd, hex, 2 * sizeof raw + 1) : -1;
    if (fd >= 0) close(fd);
    if (n != (ssize_t)(2 * sizeof raw + 1)) {
        fprintf(stderr, "serve: cannot write %s\n", secret_path);
        unlink(secret_path);
        return -1;
    }
    return 0;
}

static char **argv_dup(char **argv)
{
    int n = 0;
    while (argv[n]) n++;
    char **d = calloc((size_t)n + 1, sizeof *d);
    for (int i = 0; d && i < n; i++) d[i] = strdup(argv[i]);
    return d;
}

/* Whether host:port can be bound now, so a port in use is reported before
 * the workers spend minutes loading the model (the router binds it for
 * real right after; port 0 always can). */
static int port_free(const char *host, int port, char *why, size_t whyn)
{
    if (!port) return 1;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai = NULL;
    if (getaddrinfo(host, ps, &hints, &ai) || !ai) return 1; /* the router will say */
    int fd = socket(ai->ai_family, SOCK_STREAM, 0), ok = 1;
    if (fd >= 0) {
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen)) {
            ok = 0;
            snprintf(why, whyn, "%s", strerror(errno));
        }
        close(fd);
    }
    freeaddrinfo(ai);
    return ok;
}

/* The serve option named name (its value slot), or NULL. */
static const char **serve_opt_str(sl_opt *opts, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(opts[i].name, name) && opts[i].kind == SL_OPT_STR) return opts[i].dst;
    return NULL;
}

int sl_cmd_serve(int argc, char **argv)
{
    sl_router_cli cli;
    sl_router_config cfg;
    int tp = 1, dp = 1;
    const char *device = "cpu", *dist_timeout = NULL;
    int pd_prefill = 0, pd_decode = 0, pd_prefill_tp = 0, pd_decode_tp = 0;
    const char *pd_pdev = NULL, *pd_ddev = NULL, *pd_timeout = NULL, *pd_backend = NULL;
    sl_opt opts[SL_ROUTER_MAX_OPTS];
    int n = sl_router_opts(opts, &cli, &cfg);
    opts[n++] = (sl_opt){"--tp-size", "--tp", SL_OPT_INT, &tp, "GPUs per worker group (1)"};
    opts[n++] = (sl_opt){"--dp-size", "--dp", SL_OPT_INT, &dp, "worker groups behind the router (1)"};
    opts[n++] = (sl_opt){"--device", NULL, SL_OPT_STR, &device,
                         "cpu | cuda (group i gets cuda:i*tp ..) | cuda:N"};
    opts[n++] = (sl_opt){"--dist-timeout", NULL, SL_OPT_STR, &dist_timeout,
                         "seconds a rank waits for its group before it fails (workers; 60)"};
    opts[n++] = (sl_opt){"--pd-prefill", NULL, SL_OPT_INT, &pd_prefill,
                         "prefill/decode disaggregation: prefill workers (with --pd-decode)"};
    opts[n++] = (sl_opt){"--pd-decode", NULL, SL_OPT_INT, &pd_decode, "decode workers (PD layout)"};
    opts[n++] = (sl_opt){"--pd-prefill-devices", NULL, SL_OPT_STR, &pd_pdev,
                         "PD layout: one prefill worker per device, e.g. cuda:0,cuda:1"};
    opts[n++] = (sl_opt){"--pd-decode-devices", NULL, SL_OPT_STR, &pd_ddev,
                         "PD layout: one decode worker per device, e.g. cuda:2,cuda:3"};
    opts[n++] = (sl_opt){"--pd-prefill-tp", NULL, SL_OPT_INT, &pd_prefill_tp,
                         "PD layout: TP size of each prefill worker (default --tp-size)"};
    opts[n++] = (sl_opt){"--pd-decode-tp", NULL, SL_OPT_INT, &pd_decode_tp,
                         "PD layout: TP size of each decode worker (default --tp-size)"};
    opts[n++] = (sl_opt){"--disaggregation-timeout", NULL, SL_OPT_STR, &pd_timeout,
                         "seconds a PD request waits for the other side (workers; 30)"};
    opts[n++] = (sl_opt){"--disaggregation-transfer-backend", NULL, SL_OPT_STR, &pd_backend,
                         "auto (device to device on a shared GPU, else nng) | nng (workers)"};
    n += sl_engine_flags_pass_opts(&passes, opts + n);
    cli.load_format = serve_opt_str(opts, n, "--load-format"); /* the workers' download */
    const char *summary = "router + local workers in one command (SGLang's launch_server flags)";
    int rc = sl_router_opts_parse(argc, argv, opts, n, "serve", summary, &cli, &cfg);
    if (rc >= 0) return rc;
    /* SGLang's --max-prefill-tokens is the prefill budget of one batch: the
     * worker's --chunked-prefill-size, unless that is given too */
    const char **chunk = serve_opt_str(opts, n, "--chunked-prefill-size");
    if (cli.max_prefill_tokens && chunk && !*chunk) *chunk = cli.max_prefill_tokens;
    char why[128] = "";
    if (!port_free(cfg.host, cfg.port, why, sizeof why)) {
        fprintf(stderr, "serve: cannot listen on %s port %d: %s\n", cfg.host, cfg.port, why);
        return 1;
    }
    if (dp < 1 || dp > MAX_DP || tp < 1 || tp > 64) {
        fprintf(stderr, "serve: --dp-size 1..%d and --tp-size 1..64\n", MAX_DP);
        return 2;
    }
    /* PD layout: prefill workers first, then decode workers, one per device */
    static char pd_devs[MAX_DP][32];
    int pd_role[MAX_DP] = {0}; /* 0 unified, 1 prefill, 2 decode */
    const char *lists[2] = {pd_pdev, pd_ddev};
    int counts[2] = {pd_prefill, pd_decode}, npd = 0;
    for (int r = 0; r < 2; r++) {
        if (lists[r]) {
            counts[r] = 0;
            for (const char *q = lists[r]; *q && npd < MAX_DP;) {
                size_t len = strcspn(q, ",");
                snprintf(pd_devs[npd], sizeof pd_devs[npd], "%.*s", (int)len, q);
                pd_role[npd++] = r + 1;
                counts[r]++;
                q += len + (q[len] == ',');
            }
        } else {
            for (int k = 0; k < counts[r] && npd < MAX_DP; k++) {
                snprintf(pd_devs[npd], sizeof pd_devs[npd], "%s", device);
                pd_role[npd++] = r + 1;
            }
        }
    }
    /* each group's TP size: the two PD roles may differ (the whole cache
     * travels, docs/disaggregation.md) */
    int gtp[MAX_DP];
    if (!pd_prefill_tp) pd_prefill_tp = tp;
    if (!pd_decode_tp) pd_decode_tp = tp;
    if (npd) {
        if (counts[1] < 1 || counts[0] < 0 || dp != 1) {
            fprintf(stderr, "serve: a PD layout needs at least one decode worker and no "
                            "--dp-size\n");
            return 2;
        }
        if (pd_prefill_tp < 1 || pd_prefill_tp > 64 || pd_decode_tp < 1 || pd_decode_tp > 64) {
            fprintf(stderr, "serve: --pd-prefill-tp and --pd-decode-tp 1..64\n");
            return 2;
        }
        dp = npd;
        cfg.pd = 1;
    } else if (pd_prefill_tp != tp || pd_decode_tp != tp) {
        fprintf(stderr, "serve: --pd-prefill-tp and --pd-decode-tp need a PD layout "
                        "(--pd-decode or --pd-decode-devices)\n");
        return 2;
    }
    /* a PD worker's ranks run on its device and the ones after it (cuda:N+l) */
    for (int g = 0; g < dp; g++)
        gtp[g] = !npd ? tp : pd_role[g] == 1 ? pd_prefill_tp : pd_decode_tp;
    static char urls[MAX_DP][4200], dir[4096], secret_path[4200];
    pid_t pids[MAX_DP] = {0};
    static watch w;
    w.pids = pids;
    if (make_private_dir(dir, sizeof dir, cli.link_secret_file ? NULL : secret_path,
                         sizeof secret_path)) {
        if (dir[0] && !strstr(dir, "XXXXXX")) rmdir(dir);
        return 1;
    }
    const char *link_secret = cli.link_secret_file ? cli.link_secret_file : secret_path;
    if (!cli.link_secret_file) {
        sl_err e = {0};
        if (sl_link_secret_load(&cli.link_secret, secret_path, &e)) {
            fprintf(stderr, "serve: %s\n", e.msg);
            unlink(secret_path);
            rmdir(dir);
            return 1;
        }
        cfg.cluster.secret = &cli.link_secret;
    }
    char ctx[32], dev[32], tps[MAX_DP][16], addr[MAX_DP][48];
    snprintf(ctx, sizeof ctx, "%d", cfg.context_length);
    for (int g = 0; g < dp; g++) {
        snprintf(urls[g], sizeof urls[g], "ipc://%s/worker-%d.ipc", dir, g);
        if (npd)
            snprintf(dev, sizeof dev, "%s", pd_devs[g]);
        else if (!strcmp(device, "cuda"))
            snprintf(dev, sizeof dev, "cuda:%d", g * tp);
        else
            snprintf(dev, sizeof dev, "%s", device);
        char *wargv[80];
        int k = 0;
        wargv[k++] = "sluice";
        wargv[k++] = "worker";
        wargv[k++] = "--model-path";
        wargv[k++] = (char *)cli.model_dir;
        wargv[k++] = "--listen";
        wargv[k++] = urls[g];
        wargv[k++] = "--device";
        wargv[k++] = dev;
        wargv[k++] = "--served-model-name";
        wargv[k++] = (char *)cfg.served_model_name;
        wargv[k++] = "--link-secret-file";
        wargv[k++] = (char *)link_secret;
        if (cfg.context_length > 0) {
            wargv[k++] = "--context-length";
            wargv[k++] = ctx;
        }
        if (gtp[g] > 1) {
            int port = free_port();
            if (!port) {
                fprintf(stderr, "serve: no free port for the group's --dist-init-addr\n");
                dp = g;
                break;
            }
            snprintf(addr[g], sizeof addr[g], "127.0.0.1:%d", port);
            snprintf(tps[g], sizeof tps[g], "%d", gtp[g]);
            wargv[k++] = "--tp-size";
            wargv[k++] = tps[g];
            wargv[k++] = "--dist-init-addr";
            wargv[k++] = addr[g];
        }
        if (dist_timeout) {
            wargv[k++] = "--dist-timeout";
            wargv[k++] = (char *)dist_timeout;
        }
        if (npd) {
            wargv[k++] = "--disaggregation-mode";
            wargv[k++] = pd_role[g] == 1 ? "prefill" : "decode";
            if (pd_timeout) {
                wargv[k++] = "--disaggregation-timeout";
                wargv[k++] = (char *)pd_timeout;
            }
            if (pd_backend) {
                wargv[k++] = "--disaggregation-transfer-backend";
                wargv[k++] = (char *)pd_backend;
            }
        }
        k += sl_engine_flags_pass_argv(&passes, wargv + k);
        wargv[k] = NULL;
        w.argv[g] = argv_dup(wargv);
        pids[g] = spawn(wargv);
        if (pids[g] < 0) {
            fprintf(stderr, "serve: fork failed\n");
            dp = g;
            break;
        }
        cli.workers.v[cli.workers.n++] = urls[g];
    }
    w.n = dp;
    sl_router_hooks hooks = {watch_started, watch_stopping, &w};
    rc = dp ? sl_router_run(&cli, &cfg, &hooks) : 1;
    for (int g = 0; g < dp; g++)
        if (pids[g] > 0) kill(pids[g], SIGTERM);
    for (int g = 0; g < dp; g++)
        if (pids[g] > 0) waitpid(pids[g], NULL, 0);
    for (int g = 0; g < dp; g++) {
        char kv[4300];
        unlink(urls[g] + strlen("ipc://"));
        snprintf(kv, sizeof kv, "%s.kv", urls[g] + strlen("ipc://"));
        if (pd_role[g] == 2) unlink(kv);
        for (char **a = w.argv[g]; a && *a; a++) free(*a);
        free(w.argv[g]);
    }
    if (secret_path[0]) unlink(secret_path);
    rmdir(dir);
    return rc;
}

/* `sluice serve`: one command for one machine, SGLang-style. Starts
 * --dp-size worker groups as child processes (`sluice worker` on ipc://
 * sockets, worker flags passed through), then runs the router in this
 * process over them. A group of --tp-size N > 1 is one `sluice worker
 * --tp-size N` process (rank 0, the one the router dials) that starts its
 * N-1 other ranks itself; the group meets on a free 127.0.0.1 port; group g
 * uses cuda:g*N .. cuda:g*N+N-1. A group that exits leaves the others
 * serving (the router migrates its requests); serve stops (exit 1) when no
 * group is left. On SIGINT/SIGTERM the router drains and the workers are
 * stopped; they also die with this process if it is killed. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine_flags.h"
#include "router_cmd.h"
#include "router_opts.h"
#include "sl_log.h"

#define MAX_DP 64

/* Worker flags (worker/cli/engine_flags.h) passed through verbatim when given. */
static sl_engine_flags_pass passes;

/* Watches the worker children: when the last one exits serve stops (exit 1)
 * rather than leaving a router without workers. */
typedef struct watch {
    pid_t *pids;
    int n;
    uv_signal_t sigchld;
    sl_router_ctl *ctl;
} watch;

static void on_sigchld(uv_signal_t *h, int signum)
{
    watch *w = h->data;
    for (int g = 0; g < w->n; g++) {
        int st;
        if (w->pids[g] > 0 && waitpid(w->pids[g], &st, WNOHANG) == w->pids[g]) {
            w->pids[g] = 0;
            int left = 0;
            for (int k = 0; k < w->n; k++) left += w->pids[k] > 0;
            fprintf(stderr, "serve: worker group %d exited (%s %d); %s\n", g,
                    WIFEXITED(st) ? "status" : "signal",
                    WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st),
                    left ? "the other groups go on" : "stopping");
            if (!left) sl_router_ctl_stop(w->ctl, 1);
        }
    }
}

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

static void watch_started(uv_loop_t *loop, sl_router_ctl *ctl, void *ud)
{
    watch *w = ud;
    w->ctl = ctl;
    uv_signal_init(loop, &w->sigchld);
    w->sigchld.data = w;
    uv_signal_start(&w->sigchld, on_sigchld, SIGCHLD);
    on_sigchld(&w->sigchld, SIGCHLD); /* one may have died before the loop ran */
}

static void watch_stopping(void *ud)
{
    watch *w = ud;
    uv_close((uv_handle_t *)&w->sigchld, NULL);
}

static pid_t spawn(char **argv)
{
    pid_t p = fork();
    if (p == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM); /* never outlive serve */
        execv("/proc/self/exe", argv);
        fprintf(stderr, "serve: cannot start %s: exec failed\n", argv[0]);
        _exit(127);
    }
    return p;
}

int sl_cmd_serve(int argc, char **argv)
{
    sl_router_cli cli;
    sl_router_config cfg;
    int tp = 1, dp = 1;
    const char *device = "cpu", *dist_timeout = NULL;
    int pd_prefill = 0, pd_decode = 0;
    const char *pd_pdev = NULL, *pd_ddev = NULL, *pd_timeout = NULL;
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
    opts[n++] = (sl_opt){"--disaggregation-timeout", NULL, SL_OPT_STR, &pd_timeout,
                         "seconds a PD request waits for the other side (workers; 30)"};
    n += sl_engine_flags_pass_opts(&passes, opts + n);
    const char *summary = "router + local workers in one command (SGLang's launch_server flags)";
    int rc = sl_router_opts_parse(argc, argv, opts, n, "serve", summary, &cli, &cfg);
    if (rc >= 0) return rc;
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
    if (npd) {
        if (counts[1] < 1 || counts[0] < 0 || tp != 1 || dp != 1) {
            fprintf(stderr, "serve: a PD layout needs at least one decode worker, --tp-size 1 and "
                            "no --dp-size\n");
            return 2;
        }
        dp = npd;
        cfg.pd = 1;
    }
    static char urls[MAX_DP][128];
    pid_t pids[MAX_DP] = {0};
    char ctx[32], dev[32], tps[16], addr[MAX_DP][48];
    snprintf(tps, sizeof tps, "%d", tp);
    snprintf(ctx, sizeof ctx, "%d", cfg.context_length);
    for (int g = 0; g < dp; g++) {
        snprintf(urls[g], sizeof urls[g], "ipc:///tmp/sluice-serve-%d-%d.ipc", (int)getpid(), g);
        if (npd)
            snprintf(dev, sizeof dev, "%s", pd_devs[g]);
        else if (!strcmp(device, "cuda"))
            snprintf(dev, sizeof dev, "cuda:%d", g * tp);
        else
            snprintf(dev, sizeof dev, "%s", device);
        char *wargv[64];
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
        if (cfg.context_length > 0) {
            wargv[k++] = "--context-length";
            wargv[k++] = ctx;
        }
        if (tp > 1) {
            int port = free_port();
            if (!port) {
                fprintf(stderr, "serve: no free port for the group's --dist-init-addr\n");
                dp = g;
                break;
            }
            snprintf(addr[g], sizeof addr[g], "127.0.0.1:%d", port);
            wargv[k++] = "--tp-size";
            wargv[k++] = tps;
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
        }
        k += sl_engine_flags_pass_argv(&passes, wargv + k);
        wargv[k] = NULL;
        pids[g] = spawn(wargv);
        if (pids[g] < 0) {
            fprintf(stderr, "serve: fork failed\n");
            dp = g;
            break;
        }
        cli.workers.v[cli.workers.n++] = urls[g];
    }
    watch w = {.pids = pids, .n = dp};
    sl_router_hooks hooks = {watch_started, watch_stopping, &w};
    rc = dp ? sl_router_run(&cli, &cfg, &hooks) : 1;
    for (int g = 0; g < dp; g++)
        if (pids[g] > 0) kill(pids[g], SIGTERM);
    for (int g = 0; g < dp; g++)
        if (pids[g] > 0) waitpid(pids[g], NULL, 0);
    for (int g = 0; g < dp; g++) {
        char kv[160];
        unlink(urls[g] + strlen("ipc://"));
        snprintf(kv, sizeof kv, "%s.kv", urls[g] + strlen("ipc://"));
        if (pd_role[g] == 2) unlink(kv);
    }
    return rc;
}

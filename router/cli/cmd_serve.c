/* `sluice serve`: one command for one machine, SGLang-style. Starts
 * --dp-size worker groups as child processes (`sluice worker` on ipc://
 * sockets, worker flags passed through), then runs the router in this
 * process over them. On SIGINT/SIGTERM the router drains and the workers are
 * stopped; they also die with this process if it is killed. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netdb.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine_flags.h"
#include "router_cmd.h"
#include "router_opts.h"
#include "sl_log.h"

#define MAX_DP 64

/* Worker flags (worker/cli/engine_flags.h) passed through verbatim when given. */
static sl_engine_flags_pass passes;

/* Watches the worker children: one that exits stops serve (exit 1) rather
 * than leaving a router without workers. */
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
            fprintf(stderr, "serve: worker group %d exited (%s %d); stopping\n", g,
                    WIFEXITED(st) ? "status" : "signal",
                    WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
            sl_router_ctl_stop(w->ctl, 1);
        }
    }
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
    const char *device = "cpu";
    sl_opt opts[SL_ROUTER_MAX_OPTS];
    int n = sl_router_opts(opts, &cli, &cfg);
    opts[n++] = (sl_opt){"--tp-size", "--tp", SL_OPT_INT, &tp, "GPUs per worker group (1)"};
    opts[n++] = (sl_opt){"--dp-size", "--dp", SL_OPT_INT, &dp, "worker groups behind the router (1)"};
    opts[n++] = (sl_opt){"--device", NULL, SL_OPT_STR, &device,
                         "cpu | cuda (group i gets cuda:i*tp) | cuda:N"};
    n += sl_engine_flags_pass_opts(&passes, opts + n);
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
    if (tp > 1) {
        /* The flag is accepted for SGLang command lines; the worker has no
         * tensor parallelism to hand it to yet. */
        fprintf(stderr, "serve: --tp-size %d: sluice worker runs one GPU per process so far "
                        "(use --tp-size 1, or --dp-size for more GPUs)\n", tp);
        return 2;
    }
    static char urls[MAX_DP][128];
    pid_t pids[MAX_DP] = {0};
    char ctx[32], dev[32];
    snprintf(ctx, sizeof ctx, "%d", cfg.context_length);
    for (int g = 0; g < dp; g++) {
        snprintf(urls[g], sizeof urls[g], "ipc:///tmp/sluice-serve-%d-%d.ipc", (int)getpid(), g);
        if (!strcmp(device, "cuda"))
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
    for (int g = 0; g < dp; g++) unlink(urls[g] + strlen("ipc://"));
    return rc;
}

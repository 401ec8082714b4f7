/* `sluice worker`: load a model and serve it to a router over nng.
 * Flag names follow SGLang's server arguments where one exists.
 *
 * Tensor parallelism (docs/parallel.md): with --tp-size N > 1 the process is
 * one rank of a group meeting at --dist-init-addr. --tp-rank R runs exactly
 * rank R; without it the process runs the first of its node's N/M ranks
 * (--nnodes M, --node-rank i: ranks i*N/M ..) and starts the others as child
 * processes (the same command line plus --tp-rank and, on CUDA, the next
 * device). Rank 0 listens for the router; the others follow it. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"
#include "engine_flags.h"
#include "group.h"
#include "link_auth.h"
#include "model.h"
#include "sl_deadline.h"
#include "sl_hub.h"
#include "sl_log.h"
#include "sl_opts.h"
#include "worker_cmd.h"
#include "wserver.h"

/* A stop signal ends serving (every request in flight gets its end, the
 * router migrates them); the teardown after it is bounded: a worker that
 * ignores SIGTERM holds a Kubernetes rollout until SIGKILL, and a hang there
 * (nng 1.5's socket close has one, nanomsg/nng#1543) must not keep a dead
 * worker around. A second signal exits at once, as the router does. */
#define SHUTDOWN_GRACE_S 8
static volatile sig_atomic_t stop_flag;
static void on_signal(int sig)
{
    (void)sig;
    if (stop_flag) _exit(1);
    stop_flag = 1;
    sl_deadline_arm(SHUTDOWN_GRACE_S,
                    "sluice worker: the shutdown did not finish within " SL_DEADLINE_STR(SHUTDOWN_GRACE_S)
                    " s; exiting now\n",
                    1);
}

/* The scheduler's rules (page/interval alignment for hybrid models, chunk
 * size) are checked right after config.json is read, before any weight is
 * loaded. */
static sl_status check_flags(const sl_model_config *mc, const sl_engine_config *c,
                             const char *strategy, sl_err *e)
{
    if (c->page_size <= 0) return sl_err_set(e, SL_ERR_INVALID, "--page-size must be positive");
    if (c->mem_fraction <= 0 || c->mem_fraction > 1)
        return sl_err_set(e, SL_ERR_INVALID, "--mem-fraction-static must be in (0, 1]");
    if (c->max_running < 0 || c->context_len < 0 || c->max_total_tokens < 0 ||
        c->max_mamba_slots < 0 || c->graph_max_bs < 0)
        return sl_err_set(e, SL_ERR_INVALID, "sizes must not be negative");
    if (strcmp(strategy, "extra_buffer") && strcmp(strategy, "no_buffer"))
        return sl_err_set(e, SL_ERR_INVALID,
                          "--mamba-scheduler-strategy must be extra_buffer or no_buffer, not '%s'",
                          strategy);
    sl_sched_config sc = {.page_size = c->page_size,
                          .hybrid = mc->n_linear_layers > 0,
                          .track_interval = c->track_interval,
                          .strategy = c->strategy,
                          .overlap = c->overlap,
                          .chunked_prefill_size = c->chunked_prefill_size,
                          .max_running = 1,
                          .context_len = 2,
                          .n_pages = 2,
                          .n_slots = 2,
                          .vocab = 1};
    return sl_sched_config_check(&sc, e);
}

/* "HOST:PORT" or "[V6]:PORT" with a port in 1..65535. */
static int addr_ok(const char *a)
{
    const char *colon = a[0] == '[' ? strstr(a, "]:") : strrchr(a, ':');
    if (!colon || colon == a || (a[0] == '[' && colon == a + 1)) return 0;
    const char *port = colon + (a[0] == '[' ? 2 : 1);
    char *end;
    long p = strtol(port, &end, 10);
    return *port && !*end && p >= 1 && p <= 65535;
}

static uint32_t fnv(const void *p, size_t n, uint32_t h)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++) h = (h ^ c[i]) * 16777619u;
    return h;
}

/* What every rank must agree on: the model (directory name and config.json
 * contents), the backend kind and the flags that shape the engine. */
static void fingerprint(char *out, size_t cap, const char *model, const char *device,
                        const sl_engine_flags *f, const sl_engine_config *c)
{
    uint32_t h = 2166136261u;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", model);
    FILE *fp = fopen(path, "rb");
    if (fp) {
        char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, fp)) > 0) h = fnv(buf, n, h);
        fclose(fp);
    }
    const char *base = strrchr(model, '/');
    while (base && !base[1] && base > model) { /* trailing slash */
        const char *q = base - 1;
        while (q > model && *q != '/') q--;
        base = q;
    }
    base = base ? base + (*base == '/') : model;
    char name[64];
    snprintf(name, sizeof name, "%.*s", (int)strcspn(base, "/"), base);
    snprintf(out, cap,
             "model=%s config=%08x device=%.4s load=%s seed=%lld page=%d ctx=%d chunk=%d "
             "running=%d tokens=%d mamba=%d strategy=%s interval=%d radix=%d quant=%s",
             name, h, device, f->load_format, f->seed, c->page_size, c->context_len,
             c->chunked_prefill_size, c->max_running, c->max_total_tokens, c->max_mamba_slots,
             f->strategy, c->track_interval, !c->disable_radix,
             f->quantization ? f->quantization : "none");
}

/* Starts local ranks base+1 .. base+n-1 as children of this process. */
static int spawn_ranks(int argc, char **argv, int base, int n, const char *device, pid_t *pids)
{
    int dev0 = -1;
    if (!strncmp(device, "cuda", 4)) dev0 = device[4] == ':' ? atoi(device + 5) : 0;
    for (int l = 1; l < n; l++) {
        char rank[16], dev[32];
        snprintf(rank, sizeof rank, "%d", base + l);
        if (dev0 >= 0)
            snprintf(dev, sizeof dev, "cuda:%d", dev0 + l);
        else
            snprintf(dev, sizeof dev, "%s", device);
        char **cargv = calloc((size_t)argc + 8, sizeof *cargv);
        if (!cargv) return -1;
        int k = 0;
        cargv[k++] = "sluice";
        for (int i = 0; i < argc; i++) cargv[k++] = argv[i];
        cargv[k++] = "--tp-rank";
        cargv[k++] = rank;
        cargv[k++] = "--device";
        cargv[k++] = dev;
        cargv[k] = NULL;
        pid_t p = fork();
        if (p == 0) {
            prctl(PR_SET_PDEATHSIG, SIGTERM); /* never outlive the first local rank */
            execv("/proc/self/exe", cargv);
            fprintf(stderr, "sluice worker: cannot start rank %d: %s\n", base + l, strerror(errno));
            _exit(127);
        }
        free(cargv);
        if (p < 0) return -1;
        pids[l] = p;
    }
    return 0;
}

/* Waits for the local children (at most a few seconds each, then kills). */
static int reap(pid_t *pids, int n)
{
    int bad = 0;
    for (int l = 1; l < n; l++) {
        if (pids[l] <= 0) continue;
        int st = 0;
        for (int t = 0; t < 100 && waitpid(pids[l], &st, WNOHANG) == 0; t++) {
            if (t == 99) {
                kill(pids[l], SIGKILL);
                waitpid(pids[l], &st, 0);
            }
            nanosleep(&(struct timespec){0, 50 * 1000000}, NULL);
        }
        bad |= !WIFEXITED(st) || WEXITSTATUS(st);
    }
    return bad;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

int sl_cmd_worker(int argc, char **argv)
{
    const char *model = NULL, *revision = NULL, *listen = NULL, *device = "cpu", *served_name = NULL;
    const char *dist_addr = NULL, *secret_file = NULL;
    const char *pd_mode = "null", *pd_url = NULL, *pd_backend = "auto";
    double pd_timeout = 30;
    int tp = 1, tp_rank = -1, nnodes = 1, node_rank = 0;
    double dist_timeout = 60;
    sl_engine_flags f;
    sl_engine_flags_default(&f);
    sl_engine_config *cp = &f.c;
    sl_opt opts[18 + SL_ENGINE_NFLAGS]; /* 17 own options and the terminator */
    int n = 0;
    opts[n++] = (sl_opt){"--model", "--model-path", SL_OPT_STR, &model,
                         "model directory (Hugging Face layout), or Hugging Face model id ORG/NAME"};
    opts[n++] = (sl_opt){"--revision", NULL, SL_OPT_STR, &revision,
                         "ORG/NAME: branch, tag or commit (main)"};
    opts[n++] = (sl_opt){"--listen", NULL, SL_OPT_STR, &listen,
                         "nng URL to listen on: tcp://HOST:PORT or ipc:///PATH (rank 0)"};
    opts[n++] = (sl_opt){"--device", NULL, SL_OPT_STR, &device,
                         "cpu (default) or cuda[:N] (local rank l of a group: cuda:N+l)"};
    opts[n++] = (sl_opt){"--served-model-name", NULL, SL_OPT_STR, &served_name, "model name in load reports"};
    opts[n++] = (sl_opt){"--context-length", NULL, SL_OPT_INT, &cp->context_len,
                         "longest prompt + output (default: the model's max_position_embeddings)"};
    opts[n++] = (sl_opt){"--tp-size", "--tp", SL_OPT_INT, &tp, "ranks of the tensor-parallel group (1)"};
    opts[n++] = (sl_opt){"--tp-rank", NULL, SL_OPT_INT, &tp_rank,
                         "run exactly this rank (default: all of this node's ranks)"};
    opts[n++] = (sl_opt){"--dist-init-addr", NULL, SL_OPT_STR, &dist_addr,
                         "HOST:PORT of rank 0, where the group meets (--tp-size > 1)"};
    opts[n++] = (sl_opt){"--nnodes", NULL, SL_OPT_INT, &nnodes, "nodes the group spans (1)"};
    opts[n++] = (sl_opt){"--node-rank", NULL, SL_OPT_INT, &node_rank,
                         "this node's index: it runs ranks node_rank*tp/nnodes .. (0)"};
    opts[n++] = (sl_opt){"--dist-timeout", NULL, SL_OPT_FLOAT, &dist_timeout,
                         "seconds a rank waits for the others before the group fails (60)"};
    opts[n++] = (sl_opt){"--link-secret-file", NULL, SL_OPT_STR, &secret_file,
                         "shared secret the router must prove (default: $SLUICE_LINK_SECRET; none: "
                         "unauthenticated)"};
    opts[n++] = (sl_opt){"--disaggregation-mode", NULL, SL_OPT_STR, &pd_mode,
                         "prefill | decode | null (unified, the default): docs/disaggregation.md"};
    opts[n++] = (sl_opt){"--disaggregation-transfer-url", NULL, SL_OPT_STR, &pd_url,
                         "decode: where prefill workers send KV (--listen + 1 port, or .kv)"};
    opts[n++] = (sl_opt){"--disaggregation-timeout", NULL, SL_OPT_FLOAT, &pd_timeout,
                         "seconds a request waits for the other side (30)"};
    opts[n++] = (sl_opt){"--disaggregation-transfer-backend", NULL, SL_OPT_STR, &pd_backend,
                         "auto (device to device when both sides share a GPU, else nng) | nng"};
    n += sl_engine_flags_opts(&f, opts + n);
    opts[n] = (sl_opt){0};
    const char *summary = "Serves a model to a router over nng (proto/sluice.proto messages).";
    int cli = sl_opts_cli(argc, argv, "worker", summary, opts);
    if (cli >= 0) return cli;
    sl_err e = {0};
    if (tp < 1 || tp > SL_COMM_MAX_WORLD)
        return sl_opts_usage_error("worker", "--tp-size must be in 1..256");
    if (nnodes < 1 || tp % nnodes || node_rank < 0 || node_rank >= nnodes)
        return sl_opts_usage_error("worker", "--nnodes must divide --tp-size and "
                                             "0 <= --node-rank < --nnodes");
    if (tp_rank >= tp || (tp_rank >= 0 && tp == 1))
        return sl_opts_usage_error("worker", "--tp-rank must be in 0..--tp-size-1");
    if (tp > 1 && (!dist_addr || !addr_ok(dist_addr))) {
        sl_err_set(&e, SL_ERR_INVALID, "--dist-init-addr must be HOST:PORT (rank 0's address), not '%s'",
                   dist_addr ? dist_addr : "");
        return sl_opts_usage_error("worker", e.msg);
    }
    if (!(dist_timeout > 0 && dist_timeout <= 86400))
        return sl_opts_usage_error("worker", "--dist-timeout must be in (0, 86400] seconds");
    int local = tp / nnodes, rank = tp_rank >= 0 ? tp_rank : node_rank * local;
    if (!model || (rank == 0 && !listen)) {
        sl_err_set(&e, SL_ERR_INVALID, "--model and --listen are required%s",
                   tp > 1 ? " (--listen on the node of rank 0)" : "");
        return sl_opts_usage_error("worker", e.msg);
    }
    int dummy = !strcmp(f.load_format, "dummy");
    if (!dummy && strcmp(f.load_format, "auto") && strcmp(f.load_format, "safetensors")) {
        sl_err_set(&e, SL_ERR_INVALID, "--load-format must be auto, safetensors or dummy");
        return sl_opts_usage_error("worker", e.msg);
    }
    if (f.quantization && strcmp(f.quantization, "fp8")) {
        sl_err_set(&e, SL_ERR_INVALID, "--quantization must be fp8");
        return sl_opts_usage_error("worker", e.msg);
    }
    static sl_link_secret secret; /* large: not on the stack */
    if (rank == 0 && sl_link_secret_load(&secret, secret_file, &e))
        return sl_opts_usage_error("worker", e.msg);
    Sluice__DisaggRole role;
    if (sl_pd_role_parse(pd_mode, &role))
        return sl_opts_usage_error("worker",
                                   "--disaggregation-mode must be prefill, decode or null");
    if (strcmp(pd_backend, "auto") && strcmp(pd_backend, "nng"))
        return sl_opts_usage_error("worker", "--disaggregation-transfer-backend must be auto or nng");
    if (!(pd_timeout > 0 && pd_timeout <= 3600))
        return sl_opts_usage_error("worker",
                                   "--disaggregation-timeout must be in (0, 3600] seconds");
    char pd_url_buf[300];
    if (role == SLUICE__DISAGG_ROLE__DISAGG_DECODE && !pd_url) {
        if (sl_pd_default_url(listen, pd_url_buf, sizeof pd_url_buf))
            return sl_opts_usage_error("worker", "--listen URL too long");
        pd_url = pd_url_buf;
    }
    sl_engine_flags_finish(&f);
    sl_engine_config c = f.c;
    if (role == SLUICE__DISAGG_ROLE__DISAGG_PREFILL && c.overlap) {
        /* the held request's memory must not be touched by a batch built ahead */
        SL_LOGI("worker", "prefill worker: overlap scheduling off");
        c.overlap = 0;
    }
    if (role == SLUICE__DISAGG_ROLE__DISAGG_DECODE && strcmp(device, "cpu") && c.overlap) {
        /* host-staged uploads use the backend between steps only */
        SL_LOGI("worker",
                "decode worker on a device: overlap scheduling off (host-staged transfer)");
        c.overlap = 0;
    }
    /* ORG/NAME: the snapshot in the Hugging Face cache, downloaded when missing
     * (ranks this process starts find it there) */
    static char model_dir[SL_HUB_PATH_MAX];
    if (sl_hub_resolve(model, revision, dummy ? SL_HUB_TEXT : SL_HUB_WEIGHTS, model_dir,
                       sizeof model_dir, &e)) {
        fprintf(stderr, "sluice worker: %s\n", e.msg);
        return 1;
    }
    model = model_dir;
    sl_model_config mc;
    if (sl_model_config_load(&mc, model, &e)) {
        fprintf(stderr, "sluice worker: %s\n", e.msg);
        return 1;
    }
    if (mc.n_linear_layers && c.strategy == SL_MAMBA_NO_BUFFER && c.overlap) {
        SL_LOGI("worker", "no_buffer caches the working state at finish: overlap scheduling off");
        c.overlap = 0;
    }
    if (check_flags(&mc, &c, f.strategy, &e)) return sl_opts_usage_error("worker", e.msg);

    pid_t kids[SL_COMM_MAX_WORLD] = {0};
    int n_kids = tp > 1 && tp_rank < 0 ? local : 0;
    if (n_kids > 1 && spawn_ranks(argc, argv, rank, local, device, kids)) {
        fprintf(stderr, "sluice worker: cannot start the local ranks\n");
        return 1;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGPIPE, SIG_IGN);
    sl_backend *be = sl_backend_new(device, &e);
    if (!be) {
        fprintf(stderr, "sluice worker: %s\n", e.msg);
        reap(kids, n_kids);
        return 1;
    }
    sl_model *m = NULL;
    sl_engine *g = NULL;
    sl_group *tg = NULL;
    sl_pd_shard *shard = NULL;
    int rc = 0;
    sl_status st;
    if (tp > 1) {
        char fp[SL_COMM_MAX_FINGERPRINT + 1];
        fingerprint(fp, sizeof fp, model, device, &f, &c);
        sl_group_config gc = {.tp_size = tp,
                              .tp_rank = rank,
                              .init_addr = dist_addr,
                              .timeout_ms = (int)(dist_timeout * 1000),
                              .fingerprint = fp,
                              .be = be};
        if (sl_group_join(&tg, &gc, &e)) {
            fprintf(stderr, "sluice worker: rank %d: %s\n", rank, e.msg);
            rc = 1;
            goto done;
        }
    }
    /* every rank loads its shard; the forward runs the collectives on the group's comm */
    /* the graph warm-up runs forwards (collectives): every rank warms after the
     * last agree, at the same point, not inside sl_engine_new (the leader builds
     * its engine before the followers) */
    c.defer_warmup = tg != NULL;
    sl_model_load_opts lo = {.dummy = dummy, .seed = (uint64_t)f.seed,
                             .quantize_fp8 = f.quantization != NULL, .no_shared_fusion = f.no_shared_fusion,
                             .comm = tg ? sl_group_comm(tg) : NULL};
    SL_LOGI("worker", "loading %s on %s (%s weights)", model, device, dummy ? "dummy" : "checkpoint");
    double t0 = now_s();
    /* Test hook only (tests/py/test_e2e_frontdoor.py): stretches the load
     * so readiness can be observed. Not for production use. */
    const char *delay = getenv("SLUICE_TEST_LOAD_DELAY_MS");
    if (delay && atoi(delay) > 0) usleep((useconds_t)atoi(delay) * 1000);
    st = sl_model_load(&m, model, be, &lo, &e);
    if (!st) SL_LOGI("worker", "model loaded in %.1f s", now_s() - t0);
    if (!st && rank == 0) st = sl_engine_new(&g, m, &c, &e);
    if (tg) {
        /* every rank learns whether all loaded (the first failure's text) */
        if (!st) st = sl_group_agree(tg, SL_OK, NULL, &e);
        else sl_group_agree(tg, st, e.msg, &(sl_err){0});
        if (!st) st = sl_group_sizes(tg, &c, g ? sl_engine_sched_config(g) : NULL, &e);
        sl_status mine = st;
        if (!st && rank) st = sl_engine_new(&g, m, &c, &e);
        if (!st && rank) st = sl_group_check_sizes(tg, g, &e);
        if (!mine) {
            sl_err ae = {0};
            sl_status all = sl_group_agree(tg, st, st ? e.msg : NULL, &ae);
            if (all && !st) e = ae;
            st = all ? all : st;
        }
        if (!st) st = sl_engine_warm(g, &e);
    }
    if (st) {
        fprintf(stderr, "sluice worker: %s%s\n", tg ? "tensor-parallel group failed to start: " : "",
                e.msg);
        rc = 1;
        goto done;
    }
    /* PD: every rank copies its cache shard in and out of transfers (rank 0
     * gathers and scatters them): the group's side jobs */
    if (role && sl_pd_shard_new(&shard, g, m, tg ? sl_group_comm(tg) : NULL, &e)) {
        fprintf(stderr, "sluice worker: %s\n", e.msg);
        rc = 1;
        goto done;
    }
    if (tg && shard) sl_group_set_side(tg, sl_pd_shard_run, shard);
    if (rank > 0) {
        if (sl_group_follow(tg, g, &stop_flag, &e)) {
            fprintf(stderr, "sluice worker: %s\n", e.msg);
            rc = 1;
        }
        goto done;
    }
    const char *name = served_name                                     ? served_name
                       : strrchr(model, '/') && strrchr(model, '/')[1] ? strrchr(model, '/') + 1
                                                                       : model;
    sl_wserver_config wc = {.url = listen, .model_name = name, .secret = &secret};
    if (tg) {
        sl_group_lead(tg, g);
        wc.tick = sl_group_tick;
        wc.tick_ctx = tg;
        wc.close_on_failure = 1;
    }
    sl_pd *pd = NULL;
    if (role) {
        sl_pd_config pc = {.role = role,
                           .transfer_url = pd_url,
                           .timeout_ms = (int)(pd_timeout * 1000),
                           .shard = shard,
                           .share = !tg && !strcmp(pd_backend, "auto"),
                           .side = tg ? sl_group_side : NULL,
                           .side_ctx = tg};
        if (sl_pd_new(&pd, &pc, g, m, &e)) {
            fprintf(stderr, "sluice worker: %s\n", e.msg);
            rc = 1;
            goto done;
        }
        wc.pd = pd;
    }
    /* constrained decoding reads the tokens' bytes from the model's tokenizer.json */
    sl_err ve = {0};
    if (sl_gram_vocab_load(model, sl_model_cfg(m)->vocab_size, NULL, 0, &wc.vocab, &ve))
        SL_LOGW("worker", "constrained decoding is off: %s", ve.msg);
    if (sl_wserver_run(g, m, &wc, &stop_flag, &e)) {
        fprintf(stderr, "sluice worker: %s\n", e.msg);
        rc = 1;
    } else {
        sl_group_stop(tg);
    }
    sl_pd_free(pd);
    sl_gram_vocab_free(wc.vocab);
done:
    sl_pd_shard_free(shard);
    sl_engine_free(g);
    sl_model_free(m);
    sl_group_free(tg);
    sl_backend_free(be);
    if (reap(kids, n_kids) && !rc && !stop_flag) rc = 1;
    return rc;
}

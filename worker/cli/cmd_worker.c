/* `sluice worker`: load a model and serve it to a router over nng.
 * Flag names follow SGLang's server arguments where one exists. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"
#include "engine_flags.h"
#include "model.h"
#include "sl_log.h"
#include "sl_opts.h"
#include "worker_cmd.h"
#include "wserver.h"

static volatile sig_atomic_t stop_flag;
static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
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

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

int sl_cmd_worker(int argc, char **argv)
{
    const char *model = NULL, *listen = NULL, *device = "cpu", *served_name = NULL;
    sl_engine_flags f;
    sl_engine_flags_default(&f);
    sl_engine_config *cp = &f.c;
    sl_opt opts[8 + SL_ENGINE_NFLAGS];
    int n = 0;
    opts[n++] = (sl_opt){"--model", "--model-path", SL_OPT_STR, &model, "model directory (Hugging Face layout)"};
    opts[n++] = (sl_opt){"--listen", NULL, SL_OPT_STR, &listen,
                         "nng URL to listen on: tcp://HOST:PORT or ipc:///PATH"};
    opts[n++] = (sl_opt){"--device", NULL, SL_OPT_STR, &device, "cpu (default) or cuda[:N]"};
    opts[n++] = (sl_opt){"--served-model-name", NULL, SL_OPT_STR, &served_name, "model name in load reports"};
    opts[n++] = (sl_opt){"--context-length", NULL, SL_OPT_INT, &cp->context_len,
                         "longest prompt + output (default: the model's max_position_embeddings)"};
    n += sl_engine_flags_opts(&f, opts + n);
    opts[n] = (sl_opt){0};
    const char *summary = "Serves a model to a router over nng (proto/sluice.proto messages).";
    int cli = sl_opts_cli(argc, argv, "worker", summary, opts);
    if (cli >= 0) return cli;
    sl_err e = {0};
    if (!model || !listen) {
        sl_err_set(&e, SL_ERR_INVALID, "--model and --listen are required");
        return sl_opts_usage_error("worker", e.msg);
    }
    int dummy = !strcmp(f.load_format, "dummy");
    if (!dummy && strcmp(f.load_format, "auto") && strcmp(f.load_format, "safetensors")) {
        sl_err_set(&e, SL_ERR_INVALID, "--load-format must be auto, safetensors or dummy");
        return sl_opts_usage_error("worker", e.msg);
    }
    sl_engine_flags_finish(&f);
    sl_engine_config c = f.c;
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

    sl_backend *be = sl_backend_new(device, &e);
    if (!be) {
        fprintf(stderr, "sluice worker: %s\n", e.msg);
        return 1;
    }
    sl_model *m = NULL;
    sl_engine *g = NULL;
    int rc = 0;
    sl_model_load_opts lo = {.dummy = dummy, .seed = (uint64_t)f.seed};
    SL_LOGI("worker", "loading %s on %s (%s weights)", model, device, dummy ? "dummy" : "checkpoint");
    double t0 = now_s();
    /* Test hook only (tests/py/test_e2e_readiness.py): stretches the load
     * so readiness can be observed. Not for production use. */
    const char *delay = getenv("SLUICE_TEST_LOAD_DELAY_MS");
    if (delay && atoi(delay) > 0) usleep((useconds_t)atoi(delay) * 1000);
    if (sl_model_load(&m, model, be, &lo, &e) || sl_engine_new(&g, m, &c, &e)) {
        fprintf(stderr, "sluice worker: %s\n", e.msg);
        rc = 1;
        goto done;
    }
    SL_LOGI("worker", "model loaded in %.1f s; serving on %s", now_s() - t0, listen);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGPIPE, SIG_IGN);
    const char *name = served_name                                     ? served_name
                       : strrchr(model, '/') && strrchr(model, '/')[1] ? strrchr(model, '/') + 1
                                                                       : model;
    sl_wserver_config wc = {.url = listen, .model_name = name};
    if (sl_wserver_run(g, m, &wc, &stop_flag, &e)) {
        fprintf(stderr, "sluice worker: %s\n", e.msg);
        rc = 1;
    }
done:
    sl_engine_free(g);
    sl_model_free(m);
    sl_backend_free(be);
    return rc;
}

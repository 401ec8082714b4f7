/* `sluice router`: the HTTP front end over workers started elsewhere.
 * SIGINT/SIGTERM drain in-flight responses and exit; a second one exits at
 * once. Workers keep running: a restarted router redials them.
 *
 * The teardown after a drain is bounded: nng 1.5's socket close can deadlock
 * (nanomsg/nng#1543; the worker bounds its own the same way), and a router
 * stuck there, every response delivered, would hold a terminal or a rollout
 * until SIGKILL (its signals wait for a loop that no longer runs). Once the HTTP side has
 * drained, a deadline (sl_deadline.h) exits the process with the drain's
 * status if the teardown has not finished within TEARDOWN_GRACE_S. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nng/nng.h>

#include "router.h"
#include "router_cmd.h"
#include "router_opts.h"
#include "sl_deadline.h"
#include "sl_log.h"

#define TEARDOWN_GRACE_S 5

struct sl_router_ctl {
    sl_router *rt;
    uv_signal_t sigint, sigterm;
    int stopping;
    int rc;
    const sl_router_hooks *hooks;
};
typedef struct sl_router_ctl app;

static void on_closed(uv_handle_t *h) {}

static void on_drained(void *ud)
{
    app *a = ud;
    sl_deadline_arm(TEARDOWN_GRACE_S,
                    "sluice router: closing the worker sockets did not finish within " SL_DEADLINE_STR(TEARDOWN_GRACE_S)
                    " s after the drain; exiting now\n",
                    a->rc);
    /* tests stand in for a close that hangs (tests/py/test_e2e_serve.py) */
    const char *stall = getenv("SLUICE_TEST_TEARDOWN_STALL_MS");
    if (stall) uv_sleep((unsigned)atoi(stall));
}

static void on_router_done(void *ud)
{
    app *a = ud;
    uv_close((uv_handle_t *)&a->sigint, on_closed);
    uv_close((uv_handle_t *)&a->sigterm, on_closed);
}

int sl_router_ctl_worker_ready(const sl_router_ctl *a, int worker)
{
    return sl_router_worker_ready(a->rt, worker);
}

void sl_router_ctl_stop(sl_router_ctl *a, int rc)
{
    if (a->stopping) return;
    a->stopping = 1;
    a->rc = rc;
    if (a->hooks && a->hooks->stopping) a->hooks->stopping(a->hooks->ud);
    sl_router_shutdown(a->rt, on_drained, on_router_done, a);
}

static void on_signal(uv_signal_t *s, int signum)
{
    app *a = s->data;
    if (a->stopping) {
        SL_LOGW("router", "second signal: exiting without draining");
        _exit(1);
    }
    SL_LOGI("router", "signal %d: draining in-flight requests", signum);
    sl_router_ctl_stop(a, 0);
}

int sl_router_run(const sl_router_cli *cli, const sl_router_config *cfg_in,
                  const sl_router_hooks *hooks)
{
    sl_err e = {0};
    sl_router_config cfg = *cfg_in;
    void *text = NULL;
    sl_text_options to = {.dir = cli->tokenizer_path ? cli->tokenizer_path : cli->model_dir,
                          .chat_template = cli->chat_template,
                          .tool_call_parser = cli->tool_call_parser,
                          .reasoning_parser = cli->reasoning_parser};
    if (sl_text_qwen_open(&to, &text, &e)) {
        fprintf(stderr, "router: %s\n", e.msg);
        return 1;
    }
    cfg.text = &sl_text_qwen_ops;
    cfg.text_impl = text;
    signal(SIGPIPE, SIG_IGN);
    uv_loop_t loop;
    uv_loop_init(&loop);
    app a = {.hooks = hooks};
    int rc = 0;
    if (sl_router_new(&a.rt, &loop, &cfg, &e)) {
        fprintf(stderr, "router: %s\n", e.msg);
        rc = 1;
        goto out;
    }
    for (int i = 0; i < cli->workers.n && !rc; i++)
        if (sl_router_add_worker(a.rt, cli->workers.v[i], &e)) rc = 1;
    for (int i = 0; i < cli->worker_dns.n && !rc; i++) {
        char host[256];
        const char *colon = strrchr(cli->worker_dns.v[i], ':');
        int port = colon ? atoi(colon + 1) : 0;
        if (!colon || port <= 0 || port > 65535 || colon - cli->worker_dns.v[i] >= (long)sizeof host) {
            sl_err_set(&e, SL_ERR_INVALID, "--worker-dns %s: expected HOST:PORT",
                       cli->worker_dns.v[i]);
            rc = 1;
            break;
        }
        snprintf(host, sizeof host, "%.*s", (int)(colon - cli->worker_dns.v[i]),
                 cli->worker_dns.v[i]);
        if (sl_router_add_worker_dns(a.rt, host, port, &e)) rc = 1;
    }
    if (rc) {
        fprintf(stderr, "router: %s\n", e.msg);
        sl_router_shutdown(a.rt, NULL, NULL, NULL);
        uv_run(&loop, UV_RUN_DEFAULT);
        sl_router_free(a.rt);
        goto out;
    }
    uv_signal_init(&loop, &a.sigint);
    uv_signal_init(&loop, &a.sigterm);
    a.sigint.data = a.sigterm.data = &a;
    uv_signal_start(&a.sigint, on_signal, SIGINT);
    uv_signal_start(&a.sigterm, on_signal, SIGTERM);
    SL_LOGI("router", "model %s, policy %s, %d worker(s)", cfg.served_model_name,
            sl_route_policy_name(cfg.route.policy), cli->workers.n + cli->worker_dns.n);
    /* an IPv6 address is bracketed in a URL: http://[::]:30000 */
    int v6 = strchr(cfg.host, ':') != NULL;
    fprintf(stderr, "sluice router: listening on http://%s%s%s:%d\n", v6 ? "[" : "", cfg.host,
            v6 ? "]" : "", sl_router_port(a.rt));
    if (hooks && hooks->started) hooks->started(&loop, &a, hooks->ud);
    uv_run(&loop, UV_RUN_DEFAULT);
    sl_router_free(a.rt);
    rc = a.rc;
out:
    uv_loop_close(&loop);
    sl_text_qwen_close(text);
    /* every socket is closed: let nng free what it still queued for a peer
     * that stopped reading (a SIGSTOPped worker's pings) */
    nng_fini();
    sl_deadline_disarm();
    return rc;
}

int sl_cmd_router(int argc, char **argv)
{
    sl_router_cli cli;
    sl_router_config cfg;
    sl_opt opts[SL_ROUTER_MAX_OPTS];
    int n = sl_router_opts(opts, &cli, &cfg);
    opts[n++] = (sl_opt){"--worker", NULL, SL_OPT_STRS, &cli.workers,
                         "worker URL, tcp://host:port or ipc:///path (repeatable)"};
    opts[n++] = (sl_opt){"--worker-dns", NULL, SL_OPT_STRS, &cli.worker_dns,
                         "HOST:PORT whose addresses are all workers, re-resolved (repeatable)"};
    opts[n++] = (sl_opt){"--prefill", NULL, SL_OPT_STRS, &cli.prefill,
                         "prefill worker URL with --pd-disaggregation (repeatable)"};
    opts[n++] = (sl_opt){"--decode", NULL, SL_OPT_STRS, &cli.decode,
                         "decode worker URL with --pd-disaggregation (repeatable)"};
    const char *summary = "OpenAI/Anthropic-compatible HTTP front end routing to sluice workers";
    int rc = sl_router_opts_parse(argc, argv, opts, n, "router", summary, &cli, &cfg);
    if (rc >= 0) return rc;
    if ((cli.prefill.n || cli.decode.n) && !cfg.pd) {
        fprintf(stderr, "router: --prefill and --decode need --pd-disaggregation\n");
        return 2;
    }
    if (cfg.pd && !cli.decode.n && !cli.workers.n && !cli.worker_dns.n) {
        fprintf(stderr, "router: --pd-disaggregation needs at least one --decode worker\n");
        return 2;
    }
    for (int i = 0; i < cli.prefill.n + cli.decode.n; i++) {
        if (cli.workers.n == 64) {
            fprintf(stderr, "router: at most 64 workers\n");
            return 2;
        }
        cli.workers.v[cli.workers.n++] =
            i < cli.prefill.n ? cli.prefill.v[i] : cli.decode.v[i - cli.prefill.n];
    }
    if (!cli.workers.n && !cli.worker_dns.n) {
        fprintf(stderr, "router: give at least one --worker or --worker-dns\n");
        return 2;
    }
    return sl_router_run(&cli, &cfg, NULL);
}

/* Command-line options shared by `sluice router` and `sluice serve` (SGLang
 * flag names where SGLang has one), and the router's run loop.
 *
 *   sl_router_cli cli; sl_router_config cfg; sl_opt opts[SL_ROUTER_MAX_OPTS];
 *   int n = sl_router_opts(opts, &cli, &cfg);    // fills defaults, returns count
 *   ... append command-specific options at opts[n], end with {0} ...
 *   sl_opts_parse(argc, argv, opts, &e);
 *   sl_router_opts_finish(&cli, &cfg, &e);       // checks and converts
 *   return sl_router_run(&cli, &cfg, NULL);      // blocks until SIGINT/SIGTERM
 */
#ifndef SL_ROUTER_OPTS_H
#define SL_ROUTER_OPTS_H

#include "router.h"
#include "sl_opts.h"

#define SL_ROUTER_MAX_OPTS 64

typedef struct sl_router_cli {
    const char *model_dir; /* tokenizer.json + chat template */
    const char *chat_template, *tool_call_parser, *reasoning_parser;
    const char *policy;
    double cache_threshold, balance_rel_threshold;
    int balance_abs_threshold;
    long long max_tree_tokens, max_body_bytes;
    int heartbeat_ms, dead_after_ms, dns_refresh_ms, keepalive_ms, drain_timeout_ms;
    int migration_limit;
    sl_strs workers, worker_dns;
} sl_router_cli;

int sl_router_opts(sl_opt *opts, sl_router_cli *cli, sl_router_config *cfg);
sl_status sl_router_opts_finish(sl_router_cli *cli, sl_router_config *cfg, sl_err *e);
/* Lets a caller watch the router's loop (`serve` watches its workers).
 * started(loop, ud) runs once the router listens; it may call stop(ctl, rc)
 * later (on the loop) to drain and exit with rc. Handles it opens must be
 * closed in stopping(ud), which runs when the router starts shutting down. */
typedef struct sl_router_ctl sl_router_ctl;
typedef struct sl_router_hooks {
    void (*started)(uv_loop_t *loop, sl_router_ctl *ctl, void *ud);
    void (*stopping)(void *ud);
    void *ud;
} sl_router_hooks;
void sl_router_ctl_stop(sl_router_ctl *ctl, int rc);

/* Loads the model's text side, starts the router on its workers, runs until
 * a signal (or hooks) drains it; returns the exit status. hooks may be NULL. */
int sl_router_run(const sl_router_cli *cli, const sl_router_config *cfg,
                  const sl_router_hooks *hooks);

#endif

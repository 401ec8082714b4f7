/* Command-line options shared by `sluice router` and `sluice serve` (SGLang
 * flag names where SGLang has one), and the router's run loop.
 *
 *   sl_router_cli cli; sl_router_config cfg; sl_opt opts[SL_ROUTER_MAX_OPTS];
 *   int n = sl_router_opts(opts, &cli, &cfg);    // fills defaults, returns count
 *   ... append command-specific options at opts[n++] ...
 *   int rc = sl_router_opts_parse(argc, argv, opts, n, "router", summary, &cli, &cfg);
 *   if (rc >= 0) return rc;                      // --help, or a bad command line
 *   return sl_router_run(&cli, &cfg, NULL);      // blocks until SIGINT/SIGTERM
 */
#ifndef SL_ROUTER_OPTS_H
#define SL_ROUTER_OPTS_H

#include "link_auth.h"
#include "router.h"
#include "sl_opts.h"

#define SL_ROUTER_MAX_OPTS 96

typedef struct sl_router_cli {
    const char *model_dir; /* tokenizer.json + chat template (ORG/NAME: its snapshot, after the parse) */
    const char *revision;  /* of a Hugging Face model id (NULL: main) */
    /* Set by serve before the parse: its --load-format value slot. A model id's
     * download includes the weights unless that is "dummy"; NULL (router): only
     * the tokenizer, template and config files. */
    const char *const *load_format;
    const char *chat_template, *tool_call_parser, *reasoning_parser;
    const char *policy;
    double cache_threshold, balance_rel_threshold;
    int balance_abs_threshold;
    long long max_tree_tokens, max_body_bytes;
    int heartbeat_ms, dead_after_ms, dns_refresh_ms, keepalive_ms, drain_timeout_ms;
    int migration_limit;
    /* reliability limits (docs/operations.md) */
    long long max_buffered_bytes;
    int max_connections, body_timeout_ms;
    int stats_interval_ms;
    sl_strs workers, worker_dns;
    /* SGLang launch_server flags that sluice maps, accepts or refuses
     * (docs/cli.md has the table); checked in sl_router_opts_parse */
    const char *log_level, *tokenizer_path, *dtype, *kv_cache_dtype, *mamba_ssm_dtype;
    const char *schedule_policy, *attention_backend, *grammar_backend, *max_prefill_tokens;
    int enable_metrics, trust_remote_code, skip_server_warmup, allow_auto_truncate;
    const char *link_secret_file;
    sl_link_secret link_secret; /* loaded by the parse; cfg->cluster.secret points here */
    sl_strs prefill, decode; /* --prefill / --decode URLs (PD mode) */
} sl_router_cli;

int sl_router_opts(sl_opt *opts, sl_router_cli *cli, sl_router_config *cfg);
/* Ends opts (n filled, room for two more) with --help, parses argv into
 * them, then checks and converts the shared options into cfg. Returns -1
 * when command cmd goes on, else its exit status: 0 after printing the
 * usage for --help, 2 after printing what is wrong (and the usage when the
 * command line itself is). */
int sl_router_opts_parse(int argc, char **argv, sl_opt *opts, int n, const char *cmd,
                         const char *summary, sl_router_cli *cli, sl_router_config *cfg);
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
/* sl_router_worker_ready of the router ctl runs. */
int sl_router_ctl_worker_ready(const sl_router_ctl *ctl, int worker);

/* Loads the model's text side, starts the router on its workers, runs until
 * a signal (or hooks) drains it; returns the exit status. hooks may be NULL. */
int sl_router_run(const sl_router_cli *cli, const sl_router_config *cfg,
                  const sl_router_hooks *hooks);

#endif

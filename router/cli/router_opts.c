/* Options shared by `sluice router` and `sluice serve`: see router_opts.h. */
#include "router_opts.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "sl_file.h"

int sl_router_opts(sl_opt *o, sl_router_cli *cli, sl_router_config *cfg)
{
    *cfg = sl_router_config_default();
    *cli = (sl_router_cli){.policy = "cache_aware",
                           .cache_threshold = cfg->route.cache_threshold,
                           .balance_rel_threshold = cfg->route.balance_rel_threshold,
                           .balance_abs_threshold = cfg->route.balance_abs_threshold,
                           .max_tree_tokens = (long long)cfg->route.max_tree_tokens,
                           .max_body_bytes = (long long)cfg->http.max_body_bytes,
                           .heartbeat_ms = (int)cfg->cluster.heartbeat_ms,
                           .dead_after_ms = (int)cfg->cluster.dead_after_ms,
                           .dns_refresh_ms = (int)cfg->cluster.dns_refresh_ms,
                           .keepalive_ms = (int)cfg->keepalive_ms,
                           .drain_timeout_ms = (int)cfg->http.drain_timeout_ms,
                           .migration_limit = cfg->migration_limit};
    cfg->served_model_name = NULL;
    int n = 0;
#define OPT(...) o[n++] = (sl_opt){__VA_ARGS__}
    OPT("--model-path", "--model", SL_OPT_STR, &cli->model_dir,
        "model directory (tokenizer.json and chat template are read from it)");
    OPT("--host", NULL, SL_OPT_STR, &cfg->host, "address to listen on (127.0.0.1)");
    OPT("--port", NULL, SL_OPT_INT, &cfg->port, "HTTP port (30000)");
    OPT("--served-model-name", NULL, SL_OPT_STR, &cfg->served_model_name,
        "model name in the API (default: --model-path)");
    OPT("--api-key", NULL, SL_OPT_STR, &cfg->api_key,
        "require Authorization: Bearer KEY (or x-api-key) on every route but /health");
    OPT("--context-length", NULL, SL_OPT_INT, &cfg->context_length,
        "prompt + output limit (default: what the workers report)");
    OPT("--chat-template", NULL, SL_OPT_STR, &cli->chat_template,
        "template family override: qwen3 | qwen3_coder");
    OPT("--tool-call-parser", NULL, SL_OPT_STR, &cli->tool_call_parser,
        "qwen3_coder | hermes | qwen25 (default: tool calls stay text)");
    OPT("--reasoning-parser", NULL, SL_OPT_STR, &cli->reasoning_parser,
        "qwen3: <think> goes to reasoning_content (default: stays in content)");
    OPT("--policy", "--routing-policy", SL_OPT_STR, &cli->policy,
        "cache_aware | round_robin | random | power_of_two");
    OPT("--cache-threshold", NULL, SL_OPT_FLOAT, &cli->cache_threshold,
        "cache_aware: matched fraction of the prompt needed for affinity (0.3)");
    OPT("--balance-abs-threshold", NULL, SL_OPT_INT, &cli->balance_abs_threshold,
        "cache_aware: load gap (requests) that counts as imbalance (64)");
    OPT("--balance-rel-threshold", NULL, SL_OPT_FLOAT, &cli->balance_rel_threshold,
        "cache_aware: load ratio that counts as imbalance (1.5)");
    OPT("--max-tree-tokens", NULL, SL_OPT_I64, &cli->max_tree_tokens,
        "cache_aware: prefix-tree bound per worker, tokens (4194304)");
    OPT("--heartbeat-ms", NULL, SL_OPT_INT, &cli->heartbeat_ms, "worker ping interval (1000)");
    OPT("--dead-after-ms", NULL, SL_OPT_INT, &cli->dead_after_ms,
        "silence after which a worker is dead (5000)");
    OPT("--dns-refresh-ms", NULL, SL_OPT_INT, &cli->dns_refresh_ms,
        "--worker-dns re-resolution interval (5000)");
    OPT("--keepalive-ms", NULL, SL_OPT_INT, &cli->keepalive_ms,
        "SSE comment line after this long without output (10000)");
    OPT("--max-body-bytes", NULL, SL_OPT_I64, &cli->max_body_bytes,
        "largest request body; larger gets 413 (33554432)");
    OPT("--drain-timeout-ms", NULL, SL_OPT_INT, &cli->drain_timeout_ms,
        "on SIGTERM, how long in-flight responses may finish (30000)");
    OPT("--pd-disaggregation", NULL, SL_OPT_FLAG, &cfg->pd,
        "prefill/decode disaggregation: choices run on decode workers, prompts on prefill "
        "workers (docs/disaggregation.md)");
    OPT("--migration-limit", NULL, SL_OPT_INT, &cli->migration_limit,
        "times one choice may move to another worker when its worker dies (3; 0: fail)");
#undef OPT
    return n;
}

/* Fields a request leaves out take the model's generation_config.json
 * values, as in SGLang (a tokenizer-only directory keeps neutral ones). */
static void load_gen_defaults(const char *dir, sl_router_config *cfg)
{
    char path[4096];
    json_t *g = json_load_file(sl_path_join(path, sizeof path, dir, "generation_config.json"), 0,
                               NULL);
    if (!g) return;
    json_t *v;
    if (json_is_number(v = json_object_get(g, "temperature")))
        cfg->default_temperature = (float)json_number_value(v);
    if (json_is_number(v = json_object_get(g, "top_p")))
        cfg->default_top_p = (float)json_number_value(v);
    if (json_is_number(v = json_object_get(g, "min_p")))
        cfg->default_min_p = (float)json_number_value(v);
    if (json_is_integer(v = json_object_get(g, "top_k")) && json_integer_value(v) > 0)
        cfg->default_top_k = (int)json_integer_value(v);
    if (json_is_false(json_object_get(g, "do_sample"))) cfg->default_temperature = 0;
    json_decref(g);
}

/* Checks the parsed options and converts them into cfg. */
static sl_status opts_finish(sl_router_cli *cli, sl_router_config *cfg, sl_err *e)
{
    if (!cli->model_dir)
        return sl_err_set(e, SL_ERR_INVALID, "--model-path is required (tokenizer and template)");
    if (!cfg->served_model_name) cfg->served_model_name = cli->model_dir;
    load_gen_defaults(cli->model_dir, cfg);
    if (cfg->port < 0 || cfg->port > 65535)
        return sl_err_set(e, SL_ERR_INVALID, "--port %d: expected 0..65535", cfg->port);
    if (sl_route_policy_parse(cli->policy, &cfg->route.policy, e)) return SL_ERR_INVALID;
    if (cli->cache_threshold < 0 || cli->cache_threshold > 1)
        return sl_err_set(e, SL_ERR_INVALID, "--cache-threshold: expected 0..1");
    if (cli->balance_rel_threshold < 1)
        return sl_err_set(e, SL_ERR_INVALID, "--balance-rel-threshold: expected >= 1");
    if (cli->max_tree_tokens < 1024 || cli->max_body_bytes < 1024)
        return sl_err_set(e, SL_ERR_INVALID, "--max-tree-tokens and --max-body-bytes: >= 1024");
    if (cli->heartbeat_ms < 10 || cli->dead_after_ms < cli->heartbeat_ms ||
        cli->dns_refresh_ms < 100 || cli->keepalive_ms < 10 || cli->drain_timeout_ms < 0)
        return sl_err_set(e, SL_ERR_INVALID,
                          "timers: --heartbeat-ms >= 10, --dead-after-ms >= --heartbeat-ms, "
                          "--dns-refresh-ms >= 100, --keepalive-ms >= 10");
    if (cli->migration_limit < 0)
        return sl_err_set(e, SL_ERR_INVALID, "--migration-limit %d: expected >= 0",
                          cli->migration_limit);
    cfg->migration_limit = cli->migration_limit;
    cfg->route.cache_threshold = cli->cache_threshold;
    cfg->route.balance_abs_threshold = cli->balance_abs_threshold;
    cfg->route.balance_rel_threshold = cli->balance_rel_threshold;
    cfg->route.max_tree_tokens = (size_t)cli->max_tree_tokens;
    cfg->http.max_body_bytes = (size_t)cli->max_body_bytes;
    cfg->http.drain_timeout_ms = (unsigned)cli->drain_timeout_ms;
    cfg->cluster.heartbeat_ms = (unsigned)cli->heartbeat_ms;
    cfg->cluster.dead_after_ms = (unsigned)cli->dead_after_ms;
    cfg->cluster.dns_refresh_ms = (unsigned)cli->dns_refresh_ms;
    cfg->keepalive_ms = (unsigned)cli->keepalive_ms;
    return SL_OK;
}

int sl_router_opts_parse(int argc, char **argv, sl_opt *opts, int n, const char *cmd,
                         const char *summary, sl_router_cli *cli, sl_router_config *cfg)
{
    int help = 0;
    opts[n++] = (sl_opt){"--help", "-h", SL_OPT_FLAG, &help, "show this help"};
    opts[n] = (sl_opt){0};
    sl_err e = {0};
    if (sl_opts_parse(argc, argv, opts, &e) || help) {
        if (!help) fprintf(stderr, "%s: %s\n", cmd, e.msg);
        sl_opts_usage(help ? stdout : stderr, cmd, summary, opts);
        return help ? 0 : 2;
    }
    if (opts_finish(cli, cfg, &e)) {
        fprintf(stderr, "%s: %s\n", cmd, e.msg);
        return 2;
    }
    return -1;
}

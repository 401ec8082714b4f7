/* Options shared by `sluice router` and `sluice serve`: see router_opts.h. */
#include "router_opts.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "chat_template.h"
#include "sl_file.h"
#include "sl_hub.h"
#include "sl_log.h"

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
                           .migration_limit = cfg->migration_limit,
                           .max_buffered_bytes = (long long)cfg->http.max_buffered_bytes,
                           .max_connections = cfg->http.max_connections,
                           .body_timeout_ms = (int)cfg->http.body_timeout_ms,
                           .stats_interval_ms = (int)cfg->stats_interval_ms};
    cfg->served_model_name = NULL;
    int n = 0;
#define OPT(...) o[n++] = (sl_opt){__VA_ARGS__}
    OPT("--model-path", "--model", SL_OPT_STR, &cli->model_dir,
        "model directory, or Hugging Face model id ORG/NAME (downloaded into the HF cache "
        "when not there)");
    OPT("--revision", NULL, SL_OPT_STR, &cli->revision,
        "ORG/NAME: the branch, tag or commit (main)");
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
    OPT("--max-connections", NULL, SL_OPT_INT, &cli->max_connections,
        "open HTTP connections; one more gets 503 and is closed (4096)");
    OPT("--max-buffered-bytes", NULL, SL_OPT_I64, &cli->max_buffered_bytes,
        "request bodies held in memory, all connections together; over it 503 (1073741824)");
    OPT("--body-timeout-ms", NULL, SL_OPT_INT, &cli->body_timeout_ms,
        "deadline for a whole request body after its headers; over it 408 (60000)");
    OPT("--log-level", NULL, SL_OPT_STR, &cli->log_level,
        "debug | info (default) | warning | error (overrides $SLUICE_LOG)");
    OPT("--stats-interval-ms", NULL, SL_OPT_INT, &cli->stats_interval_ms,
        "periodic load line (info) while there is traffic; 0: none (10000)");
    OPT("--allow-origin", "--allowed-origins", SL_OPT_STR, &cfg->allow_origin,
        "CORS: answer preflights and send Access-Control-Allow-Origin: VALUE ('*' for any)");
    OPT("--metrics-require-key", NULL, SL_OPT_FLAG, &cfg->metrics_require_key,
        "/metrics needs --api-key too (default: open, like /health)");
    OPT("--tokenizer-path", NULL, SL_OPT_STR, &cli->tokenizer_path,
        "directory (or ORG/NAME) with tokenizer.json and the chat template (default: "
        "--model-path)");
    OPT("--split-special-tokens", NULL, SL_OPT_FLAG, &cfg->split_special_tokens,
        "special tokens typed in requests (messages, tools, prompts) are plain text, not "
        "control tokens (a request's split_special_tokens overrides it)");
    /* SGLang flags with nothing (or little) to do here: see docs/cli.md */
    OPT("--enable-metrics", NULL, SL_OPT_FLAG, &cli->enable_metrics,
        "accepted: /metrics is always on");
    OPT("--trust-remote-code", NULL, SL_OPT_FLAG, &cli->trust_remote_code,
        "accepted: sluice runs no model code from the hub");
    OPT("--skip-server-warmup", NULL, SL_OPT_FLAG, &cli->skip_server_warmup,
        "accepted: sluice sends no warmup request");
    OPT("--allow-auto-truncate", NULL, SL_OPT_FLAG, &cli->allow_auto_truncate,
        "accepted with a warning: over-long prompts get 400");
    OPT("--dtype", NULL, SL_OPT_STR, &cli->dtype, "auto | bfloat16 (weights and compute)");
    OPT("--kv-cache-dtype", NULL, SL_OPT_STR, &cli->kv_cache_dtype, "auto | bfloat16");
    OPT("--mamba-ssm-dtype", NULL, SL_OPT_STR, &cli->mamba_ssm_dtype,
        "accepted with a warning (the engine picks the state dtype)");
    OPT("--schedule-policy", NULL, SL_OPT_STR, &cli->schedule_policy,
        "fcfs (the worker's order); lpm, random, dfs-weight, lof accepted with a warning");
    OPT("--attention-backend", NULL, SL_OPT_STR, &cli->attention_backend,
        "accepted with a warning (one attention implementation per device)");
    OPT("--grammar-backend", NULL, SL_OPT_STR, &cli->grammar_backend,
        "none turns constrained decoding off; xgrammar, outlines, llguidance: sluice's own engine");
    OPT("--max-prefill-tokens", NULL, SL_OPT_STR, &cli->max_prefill_tokens,
        "serve: prefill tokens per batch (--chunked-prefill-size when that is not given)");
    OPT("--link-secret-file", NULL, SL_OPT_STR, &cli->link_secret_file,
        "shared secret workers must prove (default: $SLUICE_LINK_SECRET; none: unauthenticated)");
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

static int is_dir(const char *p)
{
    struct stat st;
    return p && !stat(p, &st) && S_ISDIR(st.st_mode);
}

/* --model-path and --tokenizer-path ORG/NAME: the Hugging Face cache,
 * downloading what this process needs when it is not there (common/sl_hub.h):
 * serve's workers the weights too (unless --load-format dummy), the router
 * only the tokenizer, template and config files. */
static sl_status resolve_hub_paths(sl_router_cli *cli, sl_err *e)
{
    static char model[SL_HUB_PATH_MAX], tok[SL_HUB_PATH_MAX]; /* one parse per process */
    const char *lf = cli->load_format ? *cli->load_format : NULL;
    sl_hub_files files = cli->load_format && !(lf && !strcmp(lf, "dummy")) ? SL_HUB_WEIGHTS
                                                                            : SL_HUB_TEXT;
    if (sl_hub_resolve(cli->model_dir, cli->revision, files, model, sizeof model, e))
        return e->code;
    cli->model_dir = model;
    if (!cli->tokenizer_path) return SL_OK;
    if (sl_hub_resolve(cli->tokenizer_path, cli->revision, SL_HUB_TEXT, tok, sizeof tok, e))
        return e->code;
    cli->tokenizer_path = tok;
    return SL_OK;
}

/* A value among names ("a|b|c"); */
static int one_of(const char *v, const char *names)
{
    size_t n = strlen(v);
    for (const char *p = names; *p;) {
        const char *bar = strchr(p, '|');
        size_t k = bar ? (size_t)(bar - p) : strlen(p);
        if (k == n && !strncmp(p, v, n)) return 1;
        if (!bar) break;
        p = bar + 1;
    }
    return 0;
}

/* SGLang flags: mapped, accepted (a warning when the value is ignored) or
 * refused with what sluice can do instead. */
static sl_status sglang_flags(sl_router_cli *cli, sl_router_config *cfg, sl_err *e)
{
    if (cli->log_level) {
        const char *l = cli->log_level;
        sl_log_level lvl;
        const char *env;
        if (!strcmp(l, "debug")) lvl = SL_LOG_DEBUG, env = "debug";
        else if (!strcmp(l, "info")) lvl = SL_LOG_INFO, env = "info";
        else if (!strcmp(l, "warning") || !strcmp(l, "warn")) lvl = SL_LOG_WARN, env = "warn";
        else if (!strcmp(l, "error") || !strcmp(l, "critical")) lvl = SL_LOG_ERROR, env = "error";
        else
            return sl_err_set(e, SL_ERR_INVALID,
                              "--log-level %s: expected debug, info, warning or error", l);
        sl_log_set_level(lvl);
        setenv("SLUICE_LOG", env, 1); /* serve's workers inherit it */
    }
    if (cli->dtype && !one_of(cli->dtype, "auto|bfloat16|bf16"))
        return sl_err_set(e, SL_ERR_INVALID,
                          "--dtype %s: sluice runs models in bfloat16 (use auto or bfloat16)",
                          cli->dtype);
    if (cli->kv_cache_dtype && !one_of(cli->kv_cache_dtype, "auto|bfloat16|bf16"))
        return sl_err_set(e, SL_ERR_INVALID,
                          "--kv-cache-dtype %s: the KV cache is bfloat16 (use auto or bfloat16)",
                          cli->kv_cache_dtype);
    if (cli->schedule_policy) {
        if (!one_of(cli->schedule_policy, "fcfs|lpm|random|dfs-weight|lof|priority"))
            return sl_err_set(e, SL_ERR_INVALID,
                              "--schedule-policy %s: expected fcfs, lpm, random, dfs-weight, lof "
                              "or priority", cli->schedule_policy);
        if (strcmp(cli->schedule_policy, "fcfs"))
            SL_LOGW("router", "--schedule-policy %s: ignored; workers run requests first come, "
                    "first served", cli->schedule_policy);
    }
    if (cli->grammar_backend) {
        if (!one_of(cli->grammar_backend, "xgrammar|outlines|llguidance|none"))
            return sl_err_set(e, SL_ERR_INVALID,
                              "--grammar-backend %s: expected xgrammar, outlines, llguidance or none",
                              cli->grammar_backend);
        /* one grammar engine (common/grammar) serves every name but none */
        cfg->no_constraints = !strcmp(cli->grammar_backend, "none");
    }
    if (cli->attention_backend)
        SL_LOGW("router", "--attention-backend %s: ignored; sluice has one attention "
                "implementation per device", cli->attention_backend);
    if (cli->mamba_ssm_dtype)
        SL_LOGW("router", "--mamba-ssm-dtype %s: ignored; the engine chooses the state dtype",
                cli->mamba_ssm_dtype);
    if (cli->allow_auto_truncate)
        SL_LOGW("router", "--allow-auto-truncate: ignored; prompts over the context length "
                "get 400");
    if (cli->max_prefill_tokens) {
        char *end;
        long v = strtol(cli->max_prefill_tokens, &end, 10);
        if (*end || v < 1)
            return sl_err_set(e, SL_ERR_INVALID, "--max-prefill-tokens %s: expected a number >= 1",
                              cli->max_prefill_tokens);
    }
    return SL_OK;
}

/* --reasoning-parser / --tool-call-parser / --chat-template, checked before
 * anything starts (serve spawns its workers after this). */
static sl_status text_flags(sl_router_cli *cli, sl_err *e)
{
    if (cli->reasoning_parser && !one_of(cli->reasoning_parser, "qwen3|qwen3-thinking"))
        return sl_err_set(e, SL_ERR_INVALID,
                          "--reasoning-parser %s: unknown here; sluice serves Qwen3-family "
                          "models, whose parser is qwen3 (or qwen3-thinking)",
                          cli->reasoning_parser);
    if (cli->tool_call_parser &&
        !one_of(cli->tool_call_parser, "qwen3_coder|hermes|qwen25|qwen"))
        return sl_err_set(e, SL_ERR_INVALID,
                          "--tool-call-parser %s: unknown; known: qwen3_coder (Qwen3-Coder), "
                          "hermes, qwen25 or qwen (Qwen3 and Qwen2.5: <tool_call> JSON)",
                          cli->tool_call_parser);
    sl_chat_template_family fam;
    if (cli->chat_template && sl_chat_template_load(NULL, cli->chat_template, &fam, e))
        return SL_ERR_INVALID;
    return SL_OK;
}

/* The flags as a JSON object for GET /get_server_info (SGLang's keys:
 * no leading dashes, '-' -> '_'); the API key is never shown. */
static char *server_args_json(const sl_opt *opts)
{
    json_t *o = json_object();
    for (const sl_opt *p = opts; p->name; p++) {
        char key[64];
        snprintf(key, sizeof key, "%s", p->name + 2);
        for (char *c = key; *c; c++)
            if (*c == '-') *c = '_';
        if (!strcmp(key, "help") || !strcmp(key, "api_key")) continue;
        json_t *v = NULL;
        switch (p->kind) {
        case SL_OPT_STR: {
            const char *sv = *(const char **)p->dst;
            v = sv ? json_string(sv) : json_null();
            break;
        }
        case SL_OPT_INT: v = json_integer(*(int *)p->dst); break;
        case SL_OPT_I64: v = json_integer(*(long long *)p->dst); break;
        case SL_OPT_FLOAT: v = json_real(*(double *)p->dst); break;
        case SL_OPT_FLAG: v = json_boolean(*(int *)p->dst); break;
        case SL_OPT_STRS: {
            const sl_strs *ss = p->dst;
            v = json_array();
            for (int i = 0; i < ss->n; i++) json_array_append_new(v, json_string(ss->v[i]));
            break;
        }
        }
        json_object_set_new(o, key, v);
    }
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

/* Checks the parsed options and converts them into cfg. */
static sl_status opts_finish(sl_router_cli *cli, sl_router_config *cfg, sl_err *e)
{
    if (!cli->model_dir)
        return sl_err_set(e, SL_ERR_INVALID, "--model-path is required (tokenizer and template)");
    if (sglang_flags(cli, cfg, e) || text_flags(cli, e)) return SL_ERR_INVALID;
    if (!cfg->served_model_name) cfg->served_model_name = cli->model_dir;
    if (resolve_hub_paths(cli, e)) return SL_ERR_INVALID;
    if (cli->tokenizer_path && !is_dir(cli->tokenizer_path))
        return sl_err_set(e, SL_ERR_INVALID, "--tokenizer-path %s: no such directory",
                          cli->tokenizer_path);
    cfg->model_path = cli->model_dir;
    cfg->tokenizer_path = cli->tokenizer_path ? cli->tokenizer_path : cli->model_dir;
    cfg->http.allow_origin = cfg->allow_origin;
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
    if (sl_link_secret_load(&cli->link_secret, cli->link_secret_file, e)) return SL_ERR_INVALID;
    cfg->cluster.secret = cli->link_secret.len ? &cli->link_secret : NULL;
    cfg->migration_limit = cli->migration_limit;
    if (cli->max_connections < 1 || cli->max_buffered_bytes < cli->max_body_bytes ||
        cli->body_timeout_ms < 100)
        return sl_err_set(e, SL_ERR_INVALID,
                          "--max-connections >= 1, --max-buffered-bytes >= --max-body-bytes, "
                          "--body-timeout-ms >= 100");
    cfg->http.max_connections = cli->max_connections;
    cfg->http.max_buffered_bytes = (size_t)cli->max_buffered_bytes;
    cfg->http.body_timeout_ms = (unsigned)cli->body_timeout_ms;
    if (cli->stats_interval_ms < 0)
        return sl_err_set(e, SL_ERR_INVALID, "--stats-interval-ms: expected >= 0");
    cfg->stats_interval_ms = (unsigned)cli->stats_interval_ms;
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
    /* One per process (router or serve parses once), kept reachable here so
     * the sanitizers' leak check at exit does not count it. */
    static char *args_json;
    free(args_json);
    cfg->server_args_json = args_json = server_args_json(opts);
    return -1;
}

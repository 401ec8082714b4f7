/* `sluice bench`: sglang.bench_serving's random-dataset benchmark against an
 * OpenAI-compatible completions endpoint (flags, defaults and output as
 * sglang's, see docs/cli.md). */
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bench.h"
#include "router_cmd.h"
#include "sl_hub.h"
#include "sl_opts.h"

typedef struct bench_args {
    const char *backend, *base_url, *host, *dataset, *model, *tokenizer, *output_file, *api_key;
    int port, num_prompts, input_len, output_len, max_concurrency, warmup;
    int disable_stream, disable_ignore_eos, disable_tqdm, output_details, flush_cache;
    const char *extra_body;
    double range_ratio, request_rate;
    long long seed;
} bench_args;

static const char summary[] =
    "Benchmarks an OpenAI-compatible server the way `python -m sglang.bench_serving --backend\n"
    "sglang-oai --dataset-name random` does, and prints the same result block. Prompts are random\n"
    "token ids from the tokenizer's non-special vocabulary, sent to POST /v1/completions as\n"
    "\"prompt\": [ids] with max_tokens = the drawn output length, ignore_eos, temperature 0 and\n"
    "streaming. Chat backends (sglang-oai-chat) are not supported: a chat request needs text, and\n"
    "sluice bench does not detokenize; use the completions endpoint of the same server.";

static int is_dir(const char *p)
{
    struct stat st;
    return p && stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* http://host[:port][/prefix] into t; host and prefix are written to the
 * two n-byte buffers t then points at. */
static int parse_base_url(const char *url, char *host, char *prefix, size_t n, sl_bench_target *t)
{
    if (strncmp(url, "http://", 7)) return -1;
    snprintf(host, n, "%s", url + 7);
    size_t len = strlen(host);
    while (len && host[len - 1] == '/') host[--len] = 0;
    char *slash = strchr(host, '/');
    prefix[0] = 0;
    if (slash) {
        snprintf(prefix, n, "%s", slash);
        *slash = 0;
    }
    t->prefix = prefix;
    char *colon;
    if (*host == '[') { /* [v6]:port */
        char *close = strchr(host, ']');
        if (!close) return -1;
        *close = 0;
        host++;
        colon = close[1] == ':' ? close + 1 : NULL;
    } else {
        colon = strrchr(host, ':');
    }
    t->port = 80;
    if (colon) {
        *colon = 0;
        char *end;
        long p = strtol(colon + 1, &end, 10);
        if (*end || p < 1 || p > 65535) return -1;
        t->port = (int)p;
    }
    t->host = host;
    return *host ? 0 : -1;
}

static const char *check_args(const bench_args *a)
{
    static const char *chat[] = {"sglang-oai-chat", "vllm-chat", "lmdeploy-chat"};
    for (size_t i = 0; i < sizeof chat / sizeof chat[0]; i++)
        if (!strcmp(a->backend, chat[i]))
            return "--backend: chat endpoints need text prompts and sluice bench sends token ids; "
                   "use sglang-oai (POST /v1/completions) on the same server";
    if (strcmp(a->backend, "sglang-oai") && strcmp(a->backend, "vllm") &&
        strcmp(a->backend, "lmdeploy"))
        return "--backend must be sglang-oai (or vllm, lmdeploy: the same completions client)";
    if (strcmp(a->dataset, "random")) return "--dataset-name must be random";
    if (a->num_prompts < 1) return "--num-prompts must be at least 1";
    if (a->input_len < 1) return "--random-input-len must be at least 1";
    if (a->output_len < 1) return "--random-output-len must be at least 1";
    if (!(a->range_ratio >= 0 && a->range_ratio <= 1))
        return "--random-range-ratio must be in [0, 1]";
    if (!(a->request_rate > 0)) return "--request-rate must be positive (inf: all at once)";
    if (a->max_concurrency == 0 || a->max_concurrency < -1)
        return "--max-concurrency must be at least 1";
    if (a->warmup < 0) return "--warmup-requests must be at least 0";
    if (a->seed < 0 || a->seed > 0xffffffffLL) return "--seed must be in [0, 2^32)";
    if (a->port < 1 || a->port > 65535) return "--port must be in [1, 65535]";
    return NULL;
}

/* sglang raises the open-file limit: one socket per concurrent request. */
static void raise_fd_limit(void)
{
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r)) return;
    rlim_t want = r.rlim_max < 65535 ? r.rlim_max : 65535;
    if (r.rlim_cur < want) {
        r.rlim_cur = want;
        setrlimit(RLIMIT_NOFILE, &r);
    }
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Each distinct error once, with how many requests it hit. */
static void print_failures(const sl_bench_outcome *o, int n)
{
    const char **msg = malloc((size_t)n * sizeof *msg);
    int failed = 0;
    for (int i = 0; i < n; i++)
        if (!o[i].ok && msg) msg[failed++] = o[i].error ? o[i].error : "unknown error";
    if (failed) {
        fprintf(stderr, "sluice bench: %d of %d requests failed:\n", failed, n);
        qsort(msg, (size_t)failed, sizeof *msg, cmp_str);
        int shown = 0;
        for (int i = 0, k; i < failed && shown < 8; i = k, shown++) {
            for (k = i; k < failed && !strcmp(msg[k], msg[i]); k++) continue;
            fprintf(stderr, "  %d x %s\n", k - i, msg[i]);
        }
    }
    free(msg);
}

static void free_outcomes(sl_bench_outcome *o, int n)
{
    for (int i = 0; o && i < n; i++) sl_bench_outcome_free(&o[i]);
    free(o);
}

/* sglang's warmup: copies of the first prompt, all at once, at most 32
 * output tokens; the benchmark goes on if any of them succeeds. */
static int warmup(const sl_bench_target *t, const sl_bench_dataset *d, const sl_bench_load *load,
                  int count)
{
    printf("Starting warmup with %d sequences...\n", count);
    fflush(stdout);
    sl_bench_prompt *p = malloc((size_t)count * sizeof *p);
    sl_bench_outcome *o = calloc((size_t)count, sizeof *o);
    if (!p || !o) {
        free(p);
        free(o);
        fprintf(stderr, "sluice bench: out of memory\n");
        return 1;
    }
    for (int i = 0; i < count; i++) p[i] = d->p[0];
    sl_bench_dataset wd = {.p = p, .n = count};
    sl_bench_load wl = *load;
    wl.request_rate = INFINITY;
    wl.max_concurrency = 0;
    double dur;
    sl_err e = {0};
    sl_status s = sl_bench_run(t, &wd, &wl, 32, o, &dur, &e);
    int ok = 0;
    for (int i = 0; i < count; i++) ok |= o[i].ok;
    int rc = 0;
    if (s) {
        fprintf(stderr, "sluice bench: %s\n", e.msg);
        rc = 1;
    } else if (!ok) {
        fprintf(stderr, "sluice bench: warmup failed - please make sure the benchmark arguments "
                        "are right. Error: %s\n", o[0].error ? o[0].error : "unknown");
        rc = 1;
    } else {
        printf("Warmup completed with %d sequences. Starting main benchmark run...\n", count);
        fflush(stdout);
    }
    free(p);
    free_outcomes(o, count);
    return rc;
}

int sl_cmd_bench(int argc, char **argv)
{
    bench_args a = {.backend = "sglang-oai", .host = "127.0.0.1", .port = 30000,
                    .dataset = "random", .num_prompts = 1000, .input_len = 1024,
                    .output_len = 1024, .max_concurrency = -1, .warmup = 1,
                    .request_rate = INFINITY, .seed = 1};
    const sl_opt opts[] = {
        {"--backend", NULL, SL_OPT_STR, &a.backend, "sglang-oai (default; vllm, lmdeploy: same)"},
        {"--base-url", NULL, SL_OPT_STR, &a.base_url, "http://host:port[/prefix] (over --host/--port)"},
        {"--host", NULL, SL_OPT_STR, &a.host, "server host (default 127.0.0.1)"},
        {"--port", NULL, SL_OPT_INT, &a.port, "server port (default 30000)"},
        {"--dataset-name", NULL, SL_OPT_STR, &a.dataset, "random (the only dataset)"},
        {"--model", NULL, SL_OPT_STR, &a.model, "model name sent (default: first of GET /v1/models)"},
        {"--tokenizer", NULL, SL_OPT_STR, &a.tokenizer,
         "dir with tokenizer.json, or Hugging Face model id ORG/NAME (default: --model)"},
        {"--num-prompts", NULL, SL_OPT_INT, &a.num_prompts, "requests to send (default 1000)"},
        {"--random-input-len", "--random-input", SL_OPT_INT, &a.input_len, "prompt tokens (1024)"},
        {"--random-output-len", "--random-output", SL_OPT_INT, &a.output_len, "output tokens (1024)"},
        {"--random-range-ratio", NULL, SL_OPT_FLOAT, &a.range_ratio,
         "lengths uniform in [len*ratio, len] (default 0)"},
        {"--request-rate", NULL, SL_OPT_FLOAT, &a.request_rate, "Poisson arrivals/s (default inf)"},
        {"--max-concurrency", NULL, SL_OPT_INT, &a.max_concurrency, "requests in flight (default: no cap)"},
        {"--seed", NULL, SL_OPT_I64, &a.seed, "seed of lengths, ids and arrivals (default 1)"},
        {"--warmup-requests", NULL, SL_OPT_INT, &a.warmup, "warmup requests (default 1)"},
        {"--flush-cache", NULL, SL_OPT_FLAG, &a.flush_cache,
         "POST /flush_cache after the warmup, so no prompt starts cached"},
        {"--output-file", NULL, SL_OPT_STR, &a.output_file, "append one JSON line of results"},
        {"--output-details", NULL, SL_OPT_FLAG, &a.output_details, "add per-request arrays to it"},
        {"--api-key", NULL, SL_OPT_STR, &a.api_key, "bearer token (default $OPENAI_API_KEY)"},
        {"--disable-stream", NULL, SL_OPT_FLAG, &a.disable_stream, "non-streamed requests"},
        {"--disable-ignore-eos", NULL, SL_OPT_FLAG, &a.disable_ignore_eos, "let eos end outputs"},
        {"--disable-tqdm", NULL, SL_OPT_FLAG, &a.disable_tqdm, "accepted for sglang compatibility"},
        {"--extra-request-body", NULL, SL_OPT_STR, &a.extra_body,
         "JSON object whose fields join every request (e.g. '{\"regex\": \"[a-z ]+\"}')"},
        {0}};
    int cli = sl_opts_cli(argc, argv, "bench", summary, opts);
    if (cli >= 0) return cli;
    sl_err e = {0};
    const char *bad = check_args(&a);
    if (!bad && a.output_details && !a.output_file) bad = "--output-details needs --output-file";
    /* --extra-request-body as sglang's bench_serving: its fields are appended to each body
     * (kept in a static buffer: it lives as long as the command) */
    static char extra[16384];
    if (!bad && a.extra_body) {
        json_t *x = json_loads(a.extra_body, 0, NULL);
        char *txt = json_is_object(x) ? json_dumps(x, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
        if (!txt)
            bad = "--extra-request-body: expected a JSON object";
        else if (strlen(txt) >= sizeof extra)
            bad = "--extra-request-body: longer than 16 KiB";
        else if (json_object_size(x))
            snprintf(extra, sizeof extra, "%.*s", (int)strlen(txt) - 2, txt + 1); /* no braces */
        json_decref(x);
        free(txt);
    }
    if (bad) return sl_opts_usage_error("bench", bad);

    sl_bench_target t = {.host = a.host, .port = a.port, .prefix = "", .model = a.model,
                         .api_key = a.api_key ? a.api_key : getenv("OPENAI_API_KEY")};
    if (t.api_key && !*t.api_key) t.api_key = NULL;
    char url_host[1024], url_prefix[1024];
    if (a.base_url && parse_base_url(a.base_url, url_host, url_prefix, sizeof url_host, &t))
        return sl_opts_usage_error("bench", "--base-url must look like http://host:port[/prefix]");
    signal(SIGPIPE, SIG_IGN); /* a server hanging up is an error to report, not a signal */
    raise_fd_limit();

    char *served = NULL;
    if (!t.model) {
        if (sl_bench_first_model(&t, &served, &e)) {
            fprintf(stderr, "sluice bench: %s (check --host/--port or --base-url, or give "
                            "--model)\n", e.msg);
            return 1;
        }
        t.model = served;
    }
    /* as in SGLang's bench_serving, a model id names the tokenizer too */
    const char *tok = a.tokenizer                                              ? a.tokenizer
                      : is_dir(a.model) || sl_hub_is_model_id(a.model)         ? a.model
                      : is_dir(served) || sl_hub_is_model_id(served)           ? served
                                                                               : NULL;
    if (!tok) {
        free(served);
        return sl_opts_usage_error("bench", "no tokenizer: give --tokenizer DIR (holding tokenizer.json) or "
                           "--model DIR (or a Hugging Face model id ORG/NAME)");
    }
    char tok_dir[SL_HUB_PATH_MAX];
    if (sl_hub_resolve(tok, NULL, SL_HUB_TEXT, tok_dir, sizeof tok_dir, &e)) {
        fprintf(stderr, "sluice bench: %s\n", e.msg);
        free(served);
        return 1;
    }
    tok = tok_dir;

    int rc = 1;
    sl_bench_vocab v = {0};
    sl_bench_dataset d = {0};
    sl_bench_outcome *o = NULL;
    sl_bench_mt mt;
    sl_bench_mt_seed(&mt, (uint32_t)a.seed);
    sl_bench_random_spec spec = {a.num_prompts, a.input_len, a.output_len, a.range_ratio};
    if (sl_bench_vocab_load(&v, tok, &e) ||
        sl_bench_dataset_random(&d, &v, &spec, &mt, (uint64_t)a.seed, &e)) {
        fprintf(stderr, "sluice bench: %s\n", e.msg);
        goto out;
    }
    printf("#Input tokens: %lld\n#Output tokens: %lld\n", d.total_in, d.total_out);
    sl_bench_load load = {.request_rate = a.request_rate,
                          .max_concurrency = a.max_concurrency > 0 ? a.max_concurrency : 0,
                          .stream = !a.disable_stream, .ignore_eos = !a.disable_ignore_eos,
                          .extra_body = extra[0] ? extra : NULL, .mt = &mt};
    if (a.warmup > 0 && warmup(&t, &d, &load, a.warmup)) goto out;
    /* as sglang's --flush-cache: the warmup's prompt (the first one) would
     * otherwise start the run as a prefix-cache hit */
    if (a.flush_cache && sl_bench_flush_cache(&t, &e)) {
        fprintf(stderr, "sluice bench: --flush-cache: %s\n", e.msg);
        goto out;
    }
    usleep(1000000); /* sglang lets the server settle for a second before the run */

    o = calloc((size_t)d.n, sizeof *o);
    double duration = 0;
    sl_bench_metrics m;
    if (!o) {
        fprintf(stderr, "sluice bench: out of memory\n");
        goto out;
    }
    if (sl_bench_run(&t, &d, &load, 0, o, &duration, &e) ||
        sl_bench_metrics_compute(o, d.n, duration, &m, &e)) {
        fprintf(stderr, "sluice bench: %s\n", e.msg);
        goto out;
    }
    sl_bench_report r = {.backend = a.backend, .model = t.model, .request_rate = a.request_rate,
                         .max_concurrency = load.max_concurrency, .num_prompts = a.num_prompts,
                         .random_input_len = a.input_len, .random_output_len = a.output_len,
                         .random_range_ratio = a.range_ratio, .seed = a.seed};
    sl_bench_print(stdout, &r, &m);
    print_failures(o, d.n);
    if (a.output_file &&
        sl_bench_write_jsonl(a.output_file, &r, &m, a.output_details ? o : NULL, d.n, &e)) {
        fprintf(stderr, "sluice bench: %s\n", e.msg);
        goto out;
    }
    rc = m.completed > 0 ? 0 : 1;
out:
    free_outcomes(o, d.n);
    sl_bench_dataset_free(&d);
    sl_bench_vocab_free(&v);
    free(served);
    return rc;
}

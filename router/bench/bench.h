/* bench: `sluice bench`, a serving benchmark client that reproduces
 * `python -m sglang.bench_serving --backend sglang-oai --dataset-name random`
 * for any OpenAI-compatible endpoint, so sluice (and anything else) can be
 * measured the same way wherever it runs.
 *
 * Pieces, each usable on its own (the unit tests drive them directly):
 *   - sl_bench_mt: numpy's legacy RandomState (MT19937) for the draws sglang
 *     makes with np.random: request lengths and Poisson gaps come out
 *     identical to sglang's for the same --seed.
 *   - sl_bench_vocab / sl_bench_dataset: the random dataset, token ids drawn
 *     from a tokenizer.json's non-special vocabulary.
 *   - sl_bench_sse: an incremental Server-Sent Events parser.
 *   - sl_bench_metrics: sglang's metric definitions over per-request outcomes.
 *   - sl_bench_run: the load generator, one libuv loop of keep-alive HTTP/1.1
 *     connections (llhttp), one request in flight per connection.
 *
 *   sl_bench_mt mt; sl_bench_mt_seed(&mt, seed);
 *   sl_bench_vocab v; sl_bench_vocab_load(&v, "models/qwen3", &e);
 *   sl_bench_dataset d; sl_bench_dataset_random(&d, &v, &spec, &mt, seed, &e);
 *   sl_bench_outcome *o = calloc(d.n, sizeof *o);
 *   sl_bench_load load = {.request_rate = INFINITY, .stream = 1, .ignore_eos = 1, .mt = &mt};
 *   sl_bench_run(&target, &d, &load, 0, o, &duration, &e);
 *   sl_bench_metrics m; sl_bench_metrics_compute(o, d.n, duration, &m, &e);
 *   sl_bench_print(stdout, &report, &m);
 *   for (int i = 0; i < d.n; i++) sl_bench_outcome_free(&o[i]);
 *
 * Threading: everything here is single-threaded; sl_bench_run blocks until
 * every request has finished.
 */
#ifndef SL_BENCH_H
#define SL_BENCH_H

#include <stdint.h>
#include <stdio.h>

#include "sl_err.h"

/* ---- numpy-compatible random numbers ------------------------------------------ */

typedef struct sl_bench_mt {
    uint32_t s[624];
    int i;
} sl_bench_mt;

/* Same state as np.random.seed(seed) (seed < 2^32). */
void sl_bench_mt_seed(sl_bench_mt *mt, uint32_t seed);
uint32_t sl_bench_mt_next(sl_bench_mt *mt);
/* Same value as np.random.randint(lo, hi + 1): uniform in [lo, hi]. */
int64_t sl_bench_mt_randint(sl_bench_mt *mt, int64_t lo, int64_t hi);
/* Same value as np.random.exponential(scale). */
double sl_bench_mt_exponential(sl_bench_mt *mt, double scale);

/* ---- dataset ------------------------------------------------------------------ */

/* The ids a random prompt may use: the tokenizer's vocabulary minus its
 * special tokens (and, when a config.json sits beside it, minus ids at or
 * above the model's vocab_size). */
typedef struct sl_bench_vocab {
    int32_t *ids; /* owned, ascending */
    int n;
} sl_bench_vocab;

/* path: a directory holding tokenizer.json (and maybe config.json), or the
 * tokenizer.json file itself. A directory with only a config.json gives every
 * id below its vocab_size. */
sl_status sl_bench_vocab_load(sl_bench_vocab *v, const char *path, sl_err *e);
void sl_bench_vocab_free(sl_bench_vocab *v);

typedef struct sl_bench_prompt {
    const int32_t *ids; /* into the dataset's pool */
    int n_in, n_out;
} sl_bench_prompt;

typedef struct sl_bench_dataset {
    sl_bench_prompt *p;
    int n;
    int32_t *pool; /* owned: every prompt's ids back to back */
    long long total_in, total_out;
} sl_bench_dataset;

typedef struct sl_bench_random_spec {
    int num_prompts, input_len, output_len;
    double range_ratio;
} sl_bench_random_spec;

/* sglang's random dataset: lengths uniform in [max(int(len*ratio), 1), len]
 * drawn from mt (input lengths first, then output lengths, as sglang does);
 * ids uniform over v, from a counter-based stream keyed by seed so that they
 * do not disturb mt (whose next draws are the Poisson gaps). */
sl_status sl_bench_dataset_random(sl_bench_dataset *d, const sl_bench_vocab *v,
                                  const sl_bench_random_spec *spec, sl_bench_mt *mt,
                                  uint64_t seed, sl_err *e);
void sl_bench_dataset_free(sl_bench_dataset *d);

/* ---- Server-Sent Events ------------------------------------------------------- */

/* Called once per event with its data (the "data:" lines joined by '\n',
 * NUL-terminated, valid only during the call). Returns 0 to go on, nonzero to
 * make sl_bench_sse_feed return that value. */
typedef int (*sl_bench_sse_cb)(void *arg, const char *data, size_t len);

/* Caller-allocated; zero-initialise, or sl_bench_sse_reset before each stream. */
typedef struct sl_bench_sse {
    char *line; /* partial line carried between feeds (owned) */
    size_t line_len, line_cap;
    char *data; /* data of the event being assembled (owned) */
    size_t data_len, data_cap;
    int has_data, last_cr;
} sl_bench_sse;

/* Feeds bytes (any split). Lines end in \n, \r\n or \r; a blank line ends an
 * event; ':' lines are comments; fields other than data are ignored. Returns
 * 0, -1 on allocation failure, or the callback's nonzero value. */
int sl_bench_sse_feed(sl_bench_sse *s, const char *p, size_t n, sl_bench_sse_cb cb, void *arg);
/* End of stream: dispatches an event left without its blank line. */
int sl_bench_sse_finish(sl_bench_sse *s, sl_bench_sse_cb cb, void *arg);
void sl_bench_sse_reset(sl_bench_sse *s);
void sl_bench_sse_free(sl_bench_sse *s);

/* ---- per-request outcomes and metrics ----------------------------------------- */

/* What one request measured (sglang's RequestFuncOutput). Times in seconds;
 * start_s on any clock shared by all outcomes of a run. */
typedef struct sl_bench_outcome {
    int ok;
    double start_s, ttft_s, latency_s;
    double *itl; /* owned; inter-token latencies */
    int n_itl, cap_itl;
    int n_in, n_out; /* prompt tokens; output tokens (usage, else counted) */
    char *error;     /* owned; NULL when ok */
} sl_bench_outcome;

void sl_bench_outcome_free(sl_bench_outcome *o);

/* Mean, median, population std and percentiles as numpy computes them
 * (linear interpolation); all 0 over an empty set (sglang's `x or 0`). */
typedef struct sl_bench_dist {
    double mean, median, std, p90, p95, p99, max;
} sl_bench_dist;

/* Sorts v in place, then fills d. */
void sl_bench_dist_compute(double *v, long n, sl_bench_dist *d);
/* numpy.percentile(sorted, p) with the default linear method; 0 if n == 0. */
double sl_bench_percentile(const double *sorted, long n, double p);

typedef struct sl_bench_metrics {
    int completed, failed;
    long long total_input, total_output;
    double duration_s;
    double request_throughput, input_throughput, output_throughput, total_throughput;
    double concurrency; /* sum of E2E latencies / duration */
    double max_output_tokens_per_s; /* busiest 1-second bucket of token arrivals */
    int max_concurrent_requests;    /* busiest 1-second bucket of requests in flight */
    sl_bench_dist e2e_ms, ttft_ms, tpot_ms, itl_ms;
} sl_bench_metrics;

/* sglang's calculate_metrics over n outcomes of a run that took duration_s. */
sl_status sl_bench_metrics_compute(const sl_bench_outcome *o, int n, double duration_s,
                                   sl_bench_metrics *m, sl_err *e);

/* What the printed block and the JSON line say about the run's settings. */
typedef struct sl_bench_report {
    const char *backend, *model;
    double request_rate;     /* INFINITY: all at once */
    int max_concurrency;     /* 0: not set */
    int num_prompts, random_input_len, random_output_len;
    double random_range_ratio;
    long long seed;
} sl_bench_report;

/* Prints sglang's "Serving Benchmark Result" block, same labels, order and
 * widths. */
void sl_bench_print(FILE *f, const sl_bench_report *r, const sl_bench_metrics *m);
/* Appends one JSON object on one line (sglang's result dict plus model,
 * seed, num_prompts and failed) to path. With details (n outcomes, NULL for
 * none) it also carries sglang's --output-details arrays: input_lens,
 * output_lens, ttfts, itls (seconds) and errors, one entry per request. */
sl_status sl_bench_write_jsonl(const char *path, const sl_bench_report *r,
                               const sl_bench_metrics *m, const sl_bench_outcome *details, int n,
                               sl_err *e);

/* ---- the load generator ------------------------------------------------------- */

typedef struct sl_bench_target {
    const char *host; /* name or address */
    int port;
    const char *prefix;  /* path before /v1/..., "" for none */
    const char *api_key; /* NULL: no Authorization header */
    const char *model;   /* name sent in requests */
} sl_bench_target;

typedef struct sl_bench_load {
    double request_rate; /* requests/s, Poisson arrivals; INFINITY: all at once */
    int max_concurrency; /* 0: unbounded */
    int stream, ignore_eos;
    const char *extra_body; /* JSON members added to every request body ("k":v,...), or NULL */
    sl_bench_mt *mt; /* draws the Poisson gaps (unused when the rate is infinite) */
} sl_bench_load;

/* GET /v1/models: the first model id (malloc'd) into *id. SL_ERR_IO when the
 * server cannot be reached (the message says why: refused, unresolved). */
sl_status sl_bench_first_model(const sl_bench_target *t, char **id, sl_err *e);
/* POST /flush_cache (SGLang's): the server drops its prefix cache. SL_ERR_IO
 * unless it answers 200 (the message carries the server's reason). */
sl_status sl_bench_flush_cache(const sl_bench_target *t, sl_err *e);

/* Sends every prompt of d to POST /v1/completions under load's arrival
 * process and concurrency cap, and fills out[i] (zeroed by the caller) for
 * prompt i; *duration_s spans the first arrival to the last completion (or
 * to the end of the gap drawn after the last arrival, which sglang waits out
 * too). Requests go out on keep-alive connections, at most one in flight on
 * each and at most max_concurrency of them; stream asks for SSE with usage. A
 * failed request is an outcome with ok = 0 and an error, not an error of the
 * call; the call fails only when the client itself cannot work (name
 * resolution, memory). max_out caps every request's max_tokens (warmup). */
sl_status sl_bench_run(const sl_bench_target *t, const sl_bench_dataset *d,
                       const sl_bench_load *load, int max_out, sl_bench_outcome *out,
                       double *duration_s, sl_err *e);

#endif

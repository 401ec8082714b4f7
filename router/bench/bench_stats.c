/* Metrics of `sluice bench` as sglang.bench_serving defines them, its printed
 * block and its JSON line. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

void sl_bench_outcome_free(sl_bench_outcome *o)
{
    free(o->itl);
    free(o->error);
    memset(o, 0, sizeof *o);
}

/* ---- distributions --------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double sl_bench_percentile(const double *sorted, long n, double p)
{
    if (n <= 0) return 0;
    double rank = p / 100.0 * (double)(n - 1);
    long lo = (long)floor(rank);
    if (lo >= n - 1) return sorted[n - 1];
    double t = rank - (double)lo;
    return sorted[lo] + (sorted[lo + 1] - sorted[lo]) * t;
}

void sl_bench_dist_compute(double *v, long n, sl_bench_dist *d)
{
    memset(d, 0, sizeof *d);
    if (n <= 0) return;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    double sum = 0;
    for (long i = 0; i < n; i++) sum += v[i];
    d->mean = sum / (double)n;
    double ss = 0;
    for (long i = 0; i < n; i++) ss += (v[i] - d->mean) * (v[i] - d->mean);
    d->std = sqrt(ss / (double)n);
    d->median = sl_bench_percentile(v, n, 50);
    d->p90 = sl_bench_percentile(v, n, 90);
    d->p95 = sl_bench_percentile(v, n, 95);
    d->p99 = sl_bench_percentile(v, n, 99);
    d->max = v[n - 1];
}

static void dist_scale(sl_bench_dist *d, double k)
{
    d->mean *= k;
    d->median *= k;
    d->std *= k;
    d->p90 *= k;
    d->p95 *= k;
    d->p99 *= k;
    d->max *= k;
}

/* ---- metrics ------------------------------------------------------------------- */

/* sglang's peak metrics: token arrival times (start + ttft, then each ITL)
 * and requests in flight, counted in 1-second buckets from the first start. */
static sl_status peaks(const sl_bench_outcome *o, int n, sl_bench_metrics *m, sl_err *e)
{
    double t0 = INFINITY, t1 = -INFINITY;
    for (int i = 0; i < n; i++) {
        if (!o[i].ok) continue;
        if (o[i].start_s < t0) t0 = o[i].start_s;
        if (o[i].start_s + o[i].latency_s > t1) t1 = o[i].start_s + o[i].latency_s;
    }
    if (t0 > t1) return SL_OK;
    long nb = (long)ceil(t1 - t0) + 1;
    double *tok = calloc((size_t)nb, sizeof *tok);
    int *conc = calloc((size_t)nb, sizeof *conc);
    if (!tok || !conc) {
        free(tok);
        free(conc);
        return sl_err_set(e, SL_ERR_NOMEM, "%ld one-second buckets", nb);
    }
    for (int i = 0; i < n; i++) {
        if (!o[i].ok) continue;
        double t = o[i].start_s + o[i].ttft_s;
        for (int k = 0; k <= o[i].n_itl; k++) {
            if (k) t += o[i].itl[k - 1];
            long b = (long)(t - t0);
            if (b >= 0 && b < nb) tok[b] += 1;
        }
        long b0 = (long)(o[i].start_s - t0), b1 = (long)(o[i].start_s + o[i].latency_s - t0);
        for (long b = b0; b <= b1 && b < nb; b++) conc[b]++;
    }
    for (long b = 0; b < nb; b++) {
        if (tok[b] > m->max_output_tokens_per_s) m->max_output_tokens_per_s = tok[b];
        if (conc[b] > m->max_concurrent_requests) m->max_concurrent_requests = conc[b];
    }
    free(tok);
    free(conc);
    return SL_OK;
}

sl_status sl_bench_metrics_compute(const sl_bench_outcome *o, int n, double duration_s,
                                   sl_bench_metrics *m, sl_err *e)
{
    memset(m, 0, sizeof *m);
    m->duration_s = duration_s;
    long n_itl = 0;
    for (int i = 0; i < n; i++)
        if (o[i].ok) n_itl += o[i].n_itl;
    double *e2e = malloc(((size_t)n + 1) * sizeof *e2e);
    double *ttft = malloc(((size_t)n + 1) * sizeof *ttft);
    double *tpot = malloc(((size_t)n + 1) * sizeof *tpot);
    double *itl = malloc(((size_t)n_itl + 1) * sizeof *itl);
    sl_status s = SL_OK;
    if (!e2e || !ttft || !tpot || !itl) {
        s = sl_err_set(e, SL_ERR_NOMEM, "metrics of %d requests", n);
        goto out;
    }
    long n_tpot = 0, k_itl = 0;
    double e2e_sum = 0;
    for (int i = 0; i < n; i++) {
        if (!o[i].ok) {
            m->failed++;
            continue;
        }
        m->total_input += o[i].n_in;
        m->total_output += o[i].n_out;
        if (o[i].n_out > 1) tpot[n_tpot++] = (o[i].latency_s - o[i].ttft_s) / (o[i].n_out - 1);
        for (int k = 0; k < o[i].n_itl; k++) itl[k_itl++] = o[i].itl[k];
        ttft[m->completed] = o[i].ttft_s;
        e2e[m->completed] = o[i].latency_s;
        e2e_sum += o[i].latency_s;
        m->completed++;
    }
    if (duration_s > 0) {
        m->request_throughput = m->completed / duration_s;
        m->input_throughput = (double)m->total_input / duration_s;
        m->output_throughput = (double)m->total_output / duration_s;
        m->total_throughput = (double)(m->total_input + m->total_output) / duration_s;
        m->concurrency = e2e_sum / duration_s;
    }
    sl_bench_dist_compute(e2e, m->completed, &m->e2e_ms);
    sl_bench_dist_compute(ttft, m->completed, &m->ttft_ms);
    sl_bench_dist_compute(tpot, n_tpot, &m->tpot_ms);
    sl_bench_dist_compute(itl, k_itl, &m->itl_ms);
    dist_scale(&m->e2e_ms, 1000);
    dist_scale(&m->ttft_ms, 1000);
    dist_scale(&m->tpot_ms, 1000);
    dist_scale(&m->itl_ms, 1000);
    s = peaks(o, n, m, e);
out:
    free(e2e);
    free(ttft);
    free(tpot);
    free(itl);
    return s;
}

/* ---- the printed block ----------------------------------------------------------- */

/* Python's repr of a float (what sglang prints for --request-rate): the
 * fewest significant digits that read back exactly, positional notation for
 * exponents in [-4, 16) with ".0" on integral values, else scientific. */
static void py_float(char *out, size_t n, double x)
{
    if (isinf(x) || isnan(x)) {
        snprintf(out, n, isnan(x) ? "nan" : x > 0 ? "inf" : "-inf");
        return;
    }
    int digits = 1;
    for (; digits < 17; digits++) {
        snprintf(out, n, "%.*e", digits - 1, x);
        if (strtod(out, NULL) == x) break;
    }
    snprintf(out, n, "%.*e", digits - 1, x);
    int exp10 = atoi(strchr(out, 'e') + 1);
    if (exp10 < -4 || exp10 >= 16) return;
    int decimals = digits - 1 - exp10;
    snprintf(out, n, "%.*f", decimals > 0 ? decimals : 0, x);
    if (!strchr(out, '.')) strncat(out, ".0", n - strlen(out) - 1);
}

/* Python's "{s:{c}^{n}}": centred, the odd fill character on the right. */
static void centred(FILE *f, const char *s, char c, int width)
{
    int len = (int)strlen(s), pad = width > len ? width - len : 0;
    for (int i = 0; i < pad / 2; i++) fputc(c, f);
    fputs(s, f);
    for (int i = 0; i < pad - pad / 2; i++) fputc(c, f);
    fputc('\n', f);
}

/* "{:<40} {:<10}" */
static void row(FILE *f, const char *label, const char *value)
{
    fprintf(f, "%-40s %-10s\n", label, value);
}

static void row_f(FILE *f, const char *label, double v)
{
    char s[64];
    snprintf(s, sizeof s, "%.2f", v);
    row(f, label, s);
}

static void row_i(FILE *f, const char *label, long long v)
{
    char s[32];
    snprintf(s, sizeof s, "%lld", v);
    row(f, label, s);
}

static void dist_rows(FILE *f, const char *title, const char *name, const sl_bench_dist *d,
                      int with_max)
{
    char label[64];
    centred(f, title, '-', 50);
    const struct {
        const char *stat;
        double v;
    } rows[] = {{"Mean", d->mean}, {"Median", d->median}, {"P90", d->p90},
                {"P95", d->p95},   {"P99", d->p99},       {"Max", d->max}};
    for (int i = 0; i < 5 + with_max; i++) {
        snprintf(label, sizeof label, "%s %s (ms):", rows[i].stat, name);
        row_f(f, label, rows[i].v);
    }
}

void sl_bench_print(FILE *f, const sl_bench_report *r, const sl_bench_metrics *m)
{
    char s[64];
    fputc('\n', f);
    centred(f, " Serving Benchmark Result ", '=', 50);
    row(f, "Backend:", r->backend);
    py_float(s, sizeof s, r->request_rate);
    row(f, "Traffic request rate:", s);
    if (r->max_concurrency > 0) row_i(f, "Max request concurrency:", r->max_concurrency);
    else row(f, "Max request concurrency:", "not set");
    row_i(f, "Successful requests:", m->completed);
    row_f(f, "Benchmark duration (s):", m->duration_s);
    row_i(f, "Total input tokens:", m->total_input);
    row_i(f, "Total generated tokens:", m->total_output);
    row_f(f, "Request throughput (req/s):", m->request_throughput);
    row_f(f, "Input token throughput (tok/s):", m->input_throughput);
    row_f(f, "Output token throughput (tok/s):", m->output_throughput);
    row_f(f, "Peak output token throughput (tok/s):", m->max_output_tokens_per_s);
    row_i(f, "Peak concurrent requests:", m->max_concurrent_requests);
    row_f(f, "Total token throughput (tok/s):", m->total_throughput);
    row_f(f, "Concurrency:", m->concurrency);
    dist_rows(f, "End-to-End Latency", "E2E Latency", &m->e2e_ms, 0);
    dist_rows(f, "Time to First Token", "TTFT", &m->ttft_ms, 0);
    dist_rows(f, "Time per Output Token (excl. 1st token)", "TPOT", &m->tpot_ms, 0);
    dist_rows(f, "Inter-Token Latency", "ITL", &m->itl_ms, 1);
    for (int i = 0; i < 50; i++) fputc('=', f);
    fputc('\n', f);
    fflush(f);
}

/* ---- the JSON line --------------------------------------------------------------- */

static int put(json_t *o, const char *key, json_t *v) { return json_object_set_new(o, key, v); }

static int put_dist(json_t *o, const char *name, const sl_bench_dist *d, int with_max)
{
    const struct {
        const char *stat;
        double v;
    } f[] = {{"mean", d->mean}, {"median", d->median}, {"std", d->std}, {"p90", d->p90},
             {"p95", d->p95},   {"p99", d->p99},       {"max", d->max}};
    char key[64];
    int rc = 0;
    for (int i = 0; i < 6 + with_max; i++) {
        snprintf(key, sizeof key, "%s_%s_ms", f[i].stat, name);
        rc |= put(o, key, json_real(f[i].v));
    }
    return rc;
}

/* sglang's result_details: per-request arrays (a failed request has output
 * length 0 and its error; a successful one an empty error). */
static int put_details(json_t *o, const sl_bench_outcome *d, int n)
{
    json_t *in = json_array(), *out = json_array(), *ttft = json_array(), *itls = json_array(),
           *err = json_array();
    int rc = put(o, "input_lens", in) | put(o, "output_lens", out) | put(o, "ttfts", ttft) |
             put(o, "itls", itls) | put(o, "errors", err);
    for (int i = 0; i < n && !rc; i++) {
        json_t *gaps = json_array();
        for (int k = 0; k < d[i].n_itl; k++) rc |= json_array_append_new(gaps, json_real(d[i].itl[k]));
        rc |= json_array_append_new(in, json_integer(d[i].n_in));
        rc |= json_array_append_new(out, json_integer(d[i].ok ? d[i].n_out : 0));
        rc |= json_array_append_new(ttft, json_real(d[i].ttft_s));
        rc |= json_array_append_new(itls, gaps);
        rc |= json_array_append_new(err, json_string(d[i].error ? d[i].error : ""));
    }
    return rc;
}

sl_status sl_bench_write_jsonl(const char *path, const sl_bench_report *r,
                               const sl_bench_metrics *m, const sl_bench_outcome *details, int n,
                               sl_err *e)
{
    json_t *o = json_object();
    if (!o) return sl_err_set(e, SL_ERR_NOMEM, "building the result JSON");
    /* sglang's result dict, in its order; JSON has no infinity, so an
     * unlimited rate is the string "inf" (Python's float() reads it back) */
    int rc = put(o, "backend", json_string(r->backend));
    rc |= put(o, "dataset_name", json_string("random"));
    rc |= put(o, "request_rate",
              isinf(r->request_rate) ? json_string("inf") : json_real(r->request_rate));
    rc |= put(o, "max_concurrency",
              r->max_concurrency > 0 ? json_integer(r->max_concurrency) : json_null());
    rc |= put(o, "sharegpt_output_len", json_null());
    rc |= put(o, "random_input_len", json_integer(r->random_input_len));
    rc |= put(o, "random_output_len", json_integer(r->random_output_len));
    rc |= put(o, "random_range_ratio", json_real(r->random_range_ratio));
    rc |= put(o, "duration", json_real(m->duration_s));
    rc |= put(o, "completed", json_integer(m->completed));
    rc |= put(o, "total_input_tokens", json_integer(m->total_input));
    rc |= put(o, "total_output_tokens", json_integer(m->total_output));
    rc |= put(o, "request_throughput", json_real(m->request_throughput));
    rc |= put(o, "input_throughput", json_real(m->input_throughput));
    rc |= put(o, "output_throughput", json_real(m->output_throughput));
    rc |= put(o, "total_throughput", json_real(m->total_throughput));
    rc |= put_dist(o, "e2e_latency", &m->e2e_ms, 0);
    rc |= put_dist(o, "ttft", &m->ttft_ms, 0);
    rc |= put_dist(o, "tpot", &m->tpot_ms, 0);
    rc |= put_dist(o, "itl", &m->itl_ms, 1);
    rc |= put(o, "concurrency", json_real(m->concurrency));
    rc |= put(o, "accept_length", json_null());
    rc |= put(o, "max_output_tokens_per_s", json_real(m->max_output_tokens_per_s));
    rc |= put(o, "max_concurrent_requests", json_integer(m->max_concurrent_requests));
    /* sluice's additions */
    rc |= put(o, "model", json_string(r->model ? r->model : ""));
    rc |= put(o, "num_prompts", json_integer(r->num_prompts));
    rc |= put(o, "seed", json_integer(r->seed));
    rc |= put(o, "failed", json_integer(m->failed));
    if (details && !rc) rc = put_details(o, details, n);
    char *line = rc ? NULL : json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (!line) return sl_err_set(e, SL_ERR_NOMEM, "building the result JSON");
    FILE *f = fopen(path, "a");
    sl_status s = SL_OK;
    if (!f) s = sl_err_set(e, SL_ERR_IO, "%s: %s", path, strerror(errno));
    else {
        if (fprintf(f, "%s\n", line) < 0) s = sl_err_set(e, SL_ERR_IO, "%s: write failed", path);
        if (fclose(f) && !s) s = sl_err_set(e, SL_ERR_IO, "%s: %s", path, strerror(errno));
    }
    free(line);
    return s;
}

/* sluice bench pieces without a server: the SSE parser, numpy-compatible
 * random draws, percentile math, metrics, the printed block, the vocabulary. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "sl_file.h"
#include "sl_test.h"

/* ---- SSE --------------------------------------------------------------------------- */

typedef struct events {
    char got[16][128];
    int n, stop_at;
} events;

static int collect(void *arg, const char *data, size_t len)
{
    events *ev = arg;
    CHECK(strlen(data) == len); /* NUL-terminated, no embedded NUL here */
    if (ev->n < 16) snprintf(ev->got[ev->n], sizeof ev->got[0], "%s", data);
    ev->n++;
    return ev->stop_at && ev->n == ev->stop_at ? 7 : 0;
}

/* Feeds s in pieces of `step` bytes (0: all at once) and checks the events. */
static void sse_case(const char *s, int step, const char *const *want, int n_want)
{
    sl_bench_sse p = {0};
    events ev = {0};
    size_t len = strlen(s);
    if (!step) step = (int)len;
    for (size_t i = 0; i < len; i += (size_t)step) {
        size_t k = len - i < (size_t)step ? len - i : (size_t)step;
        CHECK(sl_bench_sse_feed(&p, s + i, k, collect, &ev) == 0);
    }
    CHECK(sl_bench_sse_finish(&p, collect, &ev) == 0);
    CHECK_MSG(ev.n == n_want, "%d events, want %d, for %s (step %d)", ev.n, n_want, s, step);
    for (int i = 0; i < n_want && i < ev.n; i++)
        CHECK_MSG(!strcmp(ev.got[i], want[i]), "event %d: '%s', want '%s' (step %d)", i, ev.got[i],
                  want[i], step);
    sl_bench_sse_free(&p);
}

static void test_sse(void)
{
    const char *stream = "data: {\"a\":1}\n\n: keep-alive comment\n\ndata:{\"b\":2}\r\n\r\n"
                         "event: x\nid: 3\ndata: line1\ndata: line2\n\n"
                         "data: cr\r\rdata: [DONE]\n\n";
    const char *want[] = {"{\"a\":1}", "{\"b\":2}", "line1\nline2", "cr", "[DONE]"};
    for (int step = 0; step <= 7; step++) sse_case(stream, step, want, 5);

    /* an event without its blank line is dispatched by finish; an empty data field counts */
    const char *tail[] = {"x", "", "last"};
    sse_case("data: x\n\ndata:\n\ndata: last", 0, tail, 3);
    sse_case("data: x\n\ndata:\n\ndata: last", 1, tail, 3);
    /* blank lines alone and fields without data dispatch nothing */
    sse_case("\n\n\r\nretry: 5\n\nid: 1\n\n", 1, NULL, 0);
    /* "\r\n" split across feeds is one terminator, not an empty line in between */
    const char *two[] = {"a\nb"};
    sse_case("data: a\r\ndata: b\r\n\r\n", 8, two, 1);

    /* the callback's nonzero value stops the feed and comes back */
    sl_bench_sse p = {0};
    events ev = {.stop_at = 1};
    const char *s = "data: 1\n\ndata: 2\n\n";
    CHECK(sl_bench_sse_feed(&p, s, strlen(s), collect, &ev) == 7);
    CHECK(ev.n == 1);
    sl_bench_sse_reset(&p);
    ev = (events){0};
    CHECK(sl_bench_sse_feed(&p, "data: z\n\n", 9, collect, &ev) == 0 && ev.n == 1);
    CHECK(!strcmp(ev.got[0], "z"));
    sl_bench_sse_free(&p);
}

/* ---- numpy-compatible draws (reference values from numpy 2.4 legacy RandomState) ------ */

static void test_mt(void)
{
    sl_bench_mt mt;
    sl_bench_mt_seed(&mt, 1);
    CHECK(sl_bench_mt_next(&mt) == 1791095845u); /* reference MT19937, init_genrand(1) */

    /* np.random.seed(1); randint(1, 1025, 5); randint(512, 1025, 5); exponential(1/4) x 3 */
    sl_bench_mt_seed(&mt, 1);
    const int64_t a[] = {38, 236, 909, 73, 768}, b[] = {656, 641, 1020, 902, 793};
    for (int i = 0; i < 5; i++) CHECK(sl_bench_mt_randint(&mt, 1, 1024) == a[i]);
    for (int i = 0; i < 5; i++) CHECK(sl_bench_mt_randint(&mt, 512, 1024) == b[i]);
    const double ex[] = {0.19348994371518932, 0.13583484265456128, 0.28896992742735556};
    for (int i = 0; i < 3; i++) {
        double x = sl_bench_mt_exponential(&mt, 0.25);
        CHECK_MSG(fabs(x - ex[i]) < 1e-15, "exponential %d: %.17g want %.17g", i, x, ex[i]);
    }
    /* an empty range draws nothing (ratio 1.0 leaves the stream where it was) */
    sl_bench_mt_seed(&mt, 42);
    for (int i = 0; i < 3; i++) CHECK(sl_bench_mt_randint(&mt, 100, 100) == 100);
    const int64_t c[] = {7271, 7604, 861, 5391};
    for (int i = 0; i < 4; i++) CHECK(sl_bench_mt_randint(&mt, 1, 8000) == c[i]);
    /* a range wider than 32 bits takes 64-bit draws */
    sl_bench_mt_seed(&mt, 3);
    const int64_t d[] = {71530, 77049, 48056, 104704};
    for (int i = 0; i < 4; i++) CHECK(sl_bench_mt_randint(&mt, 0, 151642) == d[i]);
    CHECK(sl_bench_mt_randint(&mt, 1, (1LL << 33) - 1) == 8130145278LL);
    CHECK(sl_bench_mt_randint(&mt, 1, (1LL << 33) - 1) == 8144516811LL);
    sl_bench_mt_seed(&mt, 4294967295u);
    CHECK(sl_bench_mt_randint(&mt, 1, 1000000) == 944548);
}

/* ---- percentiles (reference values from numpy) --------------------------------------- */

static void test_percentiles(void)
{
    double v[] = {0.5, 3.0, 1.25, 10.0, 7.5, 2.0, 4.75};
    sl_bench_dist d;
    sl_bench_dist_compute(v, 7, &d);
    CHECK(v[0] == 0.5 && v[6] == 10.0); /* sorted in place */
    CHECK(fabs(d.mean - 4.142857142857143) < 1e-12);
    CHECK(fabs(d.std - 3.2399766942976362) < 1e-12); /* population std, numpy's default */
    CHECK(d.median == 3.0);
    CHECK(fabs(d.p90 - 8.5) < 1e-12);
    CHECK(fabs(d.p95 - 9.249999999999998) < 1e-12);
    CHECK(fabs(d.p99 - 9.849999999999998) < 1e-12);
    CHECK(d.max == 10.0);
    double one = 4.0;
    sl_bench_dist_compute(&one, 1, &d);
    CHECK(d.mean == 4 && d.median == 4 && d.p99 == 4 && d.std == 0 && d.max == 4);
    sl_bench_dist_compute(NULL, 0, &d); /* sglang's `x or 0`: zeros */
    CHECK(d.mean == 0 && d.p99 == 0 && d.max == 0);
    double two[] = {1, 3};
    CHECK(sl_bench_percentile(two, 2, 0) == 1 && sl_bench_percentile(two, 2, 100) == 3);
    CHECK(sl_bench_percentile(two, 2, 25) == 1.5);
}

/* ---- metrics ------------------------------------------------------------------------ */

static sl_bench_outcome ok_outcome(double start, double ttft, int n_out, double itl, int n_in)
{
    sl_bench_outcome o = {.ok = 1, .start_s = start, .ttft_s = ttft, .n_out = n_out, .n_in = n_in};
    o.itl = malloc((size_t)(n_out > 1 ? n_out - 1 : 1) * sizeof *o.itl);
    for (int i = 0; i < n_out - 1; i++) o.itl[o.n_itl++] = itl;
    o.latency_s = ttft + itl * (n_out - 1);
    return o;
}

static void test_metrics(void)
{
    /* binary fractions keep the bucket arithmetic exact */
    sl_bench_outcome o[4];
    o[0] = ok_outcome(0.0, 0.125, 11, 1.0 / 128, 50); /* tokens 0.125 .. 0.203125 */
    o[1] = ok_outcome(0.125, 0.125, 21, 0.0625, 70);  /* tokens 0.25 .. 1.5 */
    o[2] = (sl_bench_outcome){.ok = 0, .n_in = 999, .error = strdup("HTTP 500: x")};
    o[3] = ok_outcome(1.5, 0.0625, 1, 0, 30); /* one token: no TPOT, no ITL */
    sl_bench_metrics m;
    sl_err e = {0};
    CHECK(sl_bench_metrics_compute(o, 4, 2.0, &m, &e) == SL_OK);
    CHECK(m.completed == 3 && m.failed == 1);
    CHECK(m.total_input == 150 && m.total_output == 33);
    CHECK(fabs(m.request_throughput - 1.5) < 1e-12);
    CHECK(fabs(m.input_throughput - 75) < 1e-12 && fabs(m.output_throughput - 16.5) < 1e-12);
    CHECK(fabs(m.total_throughput - 91.5) < 1e-12);
    CHECK(fabs(m.concurrency - (0.203125 + 1.375 + 0.0625) / 2.0) < 1e-12);
    CHECK(fabs(m.ttft_ms.mean - 312.5 / 3) < 1e-9 && fabs(m.ttft_ms.median - 125) < 1e-9);
    CHECK(fabs(m.tpot_ms.mean - (7.8125 + 62.5) / 2) < 1e-9);
    CHECK(fabs(m.itl_ms.mean - (10 * 7.8125 + 20 * 62.5) / 30.0) < 1e-9);
    CHECK(fabs(m.itl_ms.max - 62.5) < 1e-9 && fabs(m.itl_ms.median - 62.5) < 1e-9);
    CHECK(fabs(m.e2e_ms.max - 1375) < 1e-9);
    /* second 0: 11 tokens of o0 + 12 of o1; second 1: 9 of o1 + 1 of o3.
     * Requests touching second 0: o0, o1; second 1: o1, o3 */
    CHECK_MSG(m.max_output_tokens_per_s == 23, "peak %g", m.max_output_tokens_per_s);
    CHECK(m.max_concurrent_requests == 2);
    for (int i = 0; i < 4; i++) sl_bench_outcome_free(&o[i]);

    /* all failed: zeros, no division by zero */
    sl_bench_outcome f = {.ok = 0};
    CHECK(sl_bench_metrics_compute(&f, 1, 1.0, &m, &e) == SL_OK);
    CHECK(m.completed == 0 && m.failed == 1 && m.ttft_ms.mean == 0 && m.max_output_tokens_per_s == 0);
}

/* ---- the printed block and the JSON line ------------------------------------------- */

static void test_print(void)
{
    sl_bench_outcome o = ok_outcome(0, 0.05, 3, 0.01, 10);
    sl_bench_metrics m;
    sl_err e = {0};
    CHECK(sl_bench_metrics_compute(&o, 1, 0.5, &m, &e) == SL_OK);
    sl_bench_report r = {.backend = "sglang-oai", .model = "m", .request_rate = 2.5,
                         .max_concurrency = 0, .num_prompts = 1, .random_input_len = 10,
                         .random_output_len = 3, .seed = 1};
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    sl_bench_print(f, &r, &m);
    fclose(f);
    const char *want[] = {
        "",
        "============ Serving Benchmark Result ============",
        "Backend:                                 sglang-oai",
        "Traffic request rate:                    2.5       ",
        "Max request concurrency:                 not set   ",
        "Successful requests:                     1         ",
        "Benchmark duration (s):                  0.50      ",
        "Total input tokens:                      10        ",
        "Total generated tokens:                  3         ",
        "Request throughput (req/s):              2.00      ",
        "Input token throughput (tok/s):          20.00     ",
        "Output token throughput (tok/s):         6.00      ",
        "Peak output token throughput (tok/s):    3.00      ",
        "Peak concurrent requests:                1         ",
        "Total token throughput (tok/s):          26.00     ",
        "Concurrency:                             0.14      ",
        "----------------End-to-End Latency----------------",
        "Mean E2E Latency (ms):                   70.00     ",
    };
    char *line = text;
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        char *nl = strchr(line, '\n');
        CHECK(nl != NULL);
        if (!nl) break;
        *nl = 0;
        CHECK_MSG(!strcmp(line, want[i]), "line %zu: '%s'\n  want '%s'", i, line, want[i]);
        line = nl + 1;
    }
    CHECK(strstr(line, "---------------Time to First Token----------------\n"));
    CHECK(strstr(line, "-----Time per Output Token (excl. 1st token)------\n"));
    CHECK(strstr(line, "---------------Inter-Token Latency----------------\n"));
    CHECK(strstr(line, "P90 ITL (ms):                            10.00     \n"));
    CHECK(strstr(line, "Max ITL (ms):"));
    CHECK(strstr(line, "==================================================\n"));
    free(text);

    /* Python float repr for the rate: 40.0, 0.1, 1e-05, inf */
    const struct {
        double rate;
        const char *shown;
    } rates[] = {{40, "40.0"}, {0.1, "0.1"}, {1e-5, "1e-05"}, {INFINITY, "inf"}, {1.5e16, "1.5e+16"}};
    for (size_t i = 0; i < sizeof rates / sizeof rates[0]; i++) {
        r.request_rate = rates[i].rate;
        f = open_memstream(&text, &len);
        sl_bench_print(f, &r, &m);
        fclose(f);
        char want_line[128];
        snprintf(want_line, sizeof want_line, "Traffic request rate:                    %-10s\n",
                 rates[i].shown);
        CHECK_MSG(strstr(text, want_line) != NULL, "rate %g not shown as %s", rates[i].rate,
                  rates[i].shown);
        free(text);
    }

    char path[] = "/tmp/sl_bench_test_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    close(fd);
    r.request_rate = INFINITY;
    CHECK(sl_bench_write_jsonl(path, &r, &m, NULL, 0, &e) == SL_OK);
    CHECK(sl_bench_write_jsonl(path, &r, &m, &o, 1, &e) == SL_OK); /* appends, with details */
    char *json = NULL;
    size_t jn = 0;
    CHECK(sl_file_read(path, &json, &jn, &e) == SL_OK);
    int lines = 0;
    for (size_t i = 0; i < jn; i++) lines += json[i] == '\n';
    CHECK(lines == 2);
    CHECK(strstr(json, "\"request_rate\":\"inf\"") && strstr(json, "\"max_concurrency\":null"));
    CHECK(strstr(json, "\"completed\":1") && strstr(json, "\"max_itl_ms\":"));
    char *second = strchr(json, '\n') + 1;
    CHECK(!strstr(json, "\"itls\"") || strstr(json, "\"itls\"") > second); /* details: 2nd only */
    CHECK(strstr(second, "\"input_lens\":[10]") && strstr(second, "\"output_lens\":[3]"));
    CHECK(strstr(second, "\"itls\":[[0.01,0.01]]") && strstr(second, "\"errors\":[\"\"]"));
    free(json);
    unlink(path);
    CHECK(sl_bench_write_jsonl("/nonexistent-dir/x.jsonl", &r, &m, NULL, 0, &e) == SL_ERR_IO);
    sl_bench_outcome_free(&o);
}

/* ---- vocabulary and dataset ------------------------------------------------------------ */

static void test_dataset(void)
{
    sl_err e = {0};
    sl_bench_vocab v;
    char tok[4096];
    const char *src = getenv("SLUICE_SRC");
    snprintf(tok, sizeof tok, "%s/tests/data/qwen3-tokenizer", src ? src : ".");
    sl_status st = sl_bench_vocab_load(&v, tok, &e);
    CHECK_MSG(st == SL_OK, "%s: %s", tok, e.msg);
    if (st != SL_OK) return; /* the rest reads v */
    CHECK(v.n == 151643); /* the BPE vocabulary; every added token of Qwen3 sits above it */
    CHECK(v.ids[0] == 0 && v.ids[v.n - 1] == 151642);
    sl_bench_vocab_free(&v);

    /* a model directory: tokenizer.json minus special ids, capped by config.json */
    char dir[] = "/tmp/sl_bench_vocab_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char p[4200];
    const char *tj = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"c\": 2, "
                     "\"d\": 3, \"e\": 4, \"f\": 5}}, \"added_tokens\": [{\"id\": 1, \"special\": "
                     "true}, {\"id\": 2, \"special\": false}, {\"id\": 9, \"special\": true}]}";
    CHECK(sl_file_write(sl_path_join(p, sizeof p, dir, "tokenizer.json"), tj, strlen(tj), &e) == 0);
    CHECK(sl_bench_vocab_load(&v, dir, &e) == SL_OK);
    CHECK(v.n == 5 && v.ids[0] == 0 && v.ids[1] == 2 && v.ids[4] == 5);
    sl_bench_vocab_free(&v);
    const char *cfg = "{\"vocab_size\": 4}";
    CHECK(sl_file_write(sl_path_join(p, sizeof p, dir, "config.json"), cfg, strlen(cfg), &e) == 0);
    CHECK(sl_bench_vocab_load(&v, dir, &e) == SL_OK);
    CHECK(v.n == 3 && v.ids[2] == 3);

    /* the dataset: sglang's lengths for the seed, ids from the vocabulary */
    sl_bench_mt mt;
    sl_bench_mt_seed(&mt, 1);
    sl_bench_dataset d;
    sl_bench_random_spec spec = {.num_prompts = 5, .input_len = 1024, .output_len = 1024,
                                 .range_ratio = 0.5};
    CHECK(sl_bench_dataset_random(&d, &v, &spec, &mt, 1, &e) == SL_OK);
    const int in[] = {549, 747, 584, 656, 641}; /* np.random.seed(1); randint(512, 1025, 5) */
    CHECK(d.n == 5);
    long long total = 0;
    for (int i = 0; i < 5; i++) {
        CHECK_MSG(d.p[i].n_in == in[i], "prompt %d: %d tokens, want %d", i, d.p[i].n_in, in[i]);
        CHECK(d.p[i].n_out >= 512 && d.p[i].n_out <= 1024);
        total += d.p[i].n_in;
        for (int j = 0; j < d.p[i].n_in; j++)
            CHECK(d.p[i].ids[j] == 0 || d.p[i].ids[j] == 2 || d.p[i].ids[j] == 3);
    }
    CHECK(total == d.total_in);
    sl_bench_dataset_free(&d);
    spec.range_ratio = 1.5;
    CHECK(sl_bench_dataset_random(&d, &v, &spec, &mt, 1, &e) == SL_ERR_INVALID);
    sl_bench_vocab_free(&v);

    /* no tokenizer.json: every id below config.json's vocab_size */
    unlink(sl_path_join(p, sizeof p, dir, "tokenizer.json"));
    CHECK(sl_bench_vocab_load(&v, dir, &e) == SL_OK && v.n == 4 && v.ids[3] == 3);
    sl_bench_vocab_free(&v);
    unlink(sl_path_join(p, sizeof p, dir, "config.json"));
    CHECK(sl_bench_vocab_load(&v, dir, &e) == SL_ERR_NOTFOUND);
    CHECK(strstr(e.msg, "tokenizer.json") != NULL);
    rmdir(dir);
}

int main(void)
{
    test_sse();
    test_mt();
    test_percentiles();
    test_metrics();
    test_print();
    test_dataset();
    return sl_test_done("test_bench");
}

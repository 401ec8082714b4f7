/* Prefix-cache correctness on tiny models of all three architectures: a
 * request served from the cache (full hit, partial hit, branch point, after
 * eviction) gives the logits and greedy tokens of a cold run; the branching
 * scenario of docs/mamba_cache.md §7 reports cached tokens 0, 0, floor(257/C)·C. */
#include <math.h>

#include "engine_harness.h"

static sl_engine *make_engine(sl_model *m, int P, int overlap, int total_tokens, int chunk,
                              int interval)
{
    sl_engine_config c;
    sl_engine_config_default(&c);
    c.page_size = P;
    c.overlap = overlap;
    c.max_total_tokens = total_tokens;
    c.max_mamba_slots = 24;
    c.max_running = 4;
    c.context_len = 1024;
    c.chunked_prefill_size = chunk;
    c.track_interval = interval;
    sl_engine *eng = NULL;
    sl_err e = {0};
    CHECK_MSG(sl_engine_new(&eng, m, &c, &e) == SL_OK, "%s", e.msg);
    return eng;
}

/* Runs one request to completion and compares it with its cold reference. */
static int serve_and_compare(sl_engine *eng, collector *col, sl_model *m, uint64_t rid,
                             const int32_t *p, int n, int max_new, const char *what)
{
    sl_err e = {0};
    sl_sched_req r = harness_req(rid, p, n, max_new);
    CHECK_MSG(sl_engine_submit(eng, &r, &e) == SL_OK, "%s", e.msg);
    harness_run(eng, col, 1);
    cold_ref ref;
    harness_cold(m, p, n, max_new, &ref);
    got *g = &col->g[rid];
    int V = sl_model_cfg(m)->vocab_size;
    double err = g->first_logits ? sl_test_rel_l2(g->first_logits, ref.first_logits, V) : 1.0;
    CHECK_MSG(err < 1e-4, "%s: logits differ from a cold run (rel %g)", what, err);
    CHECK_MSG(same_tokens(g, &ref), "%s: greedy tokens differ (%d vs %d)", what, g->n_out,
              ref.n_out);
    CHECK(g->first_pos == n - 1);
    free(ref.first_logits);
    return g->cached;
}

static void test_hits(const char *arch, sl_model *m, int P, int overlap, int interval)
{
    int hybrid = sl_model_cfg(m)->n_linear_layers > 0;
    sl_engine *eng = make_engine(m, P, overlap, 1024, 96, interval);
    if (!eng) return;
    enum { N = 16 };
    got gs[N];
    memset(gs, 0, sizeof gs);
    collector col = {.g = gs, .n = N};
    sl_engine_set_logits_hook(eng, harness_hook, &col);
    int32_t a[300], b[300], f[300];
    for (int i = 0; i < 300; i++) {
        a[i] = 1 + (int)(sl_rng_uniform(7, (uint64_t)i) * 250);
        b[i] = i < 150 ? a[i] : 1 + (int)(sl_rng_uniform(8, (uint64_t)i) * 250);
        f[i] = 1 + (int)(sl_rng_uniform(9, (uint64_t)i) * 250);
    }
    char what[96];
    snprintf(what, sizeof what, "%s P=%d overlap=%d cold", arch, P, overlap);
    CHECK(serve_and_compare(eng, &col, m, 0, a, 200, 6, what) == 0);
    /* full hit: the same prompt again */
    snprintf(what, sizeof what, "%s P=%d overlap=%d full hit", arch, P, overlap);
    int c1 = serve_and_compare(eng, &col, m, 1, a, 200, 6, what);
    /* hybrid: checkpoints at 64-multiples of each extend plus decode points */
    CHECK_MSG(hybrid ? c1 == 192 : c1 == 199 / P * P, "%s: cached %d", what, c1);
    /* longer prompt continuing a: hits what a cached (incl. its decode tokens) */
    snprintf(what, sizeof what, "%s P=%d overlap=%d extension", arch, P, overlap);
    int c2 = serve_and_compare(eng, &col, m, 2, a, 260, 6, what);
    CHECK_MSG(c2 >= 192, "%s: cached %d", what, c2);
    /* partial hit: b shares 150 tokens with a */
    snprintf(what, sizeof what, "%s P=%d overlap=%d partial", arch, P, overlap);
    int c3 = serve_and_compare(eng, &col, m, 3, b, 220, 6, what);
    CHECK_MSG(hybrid ? c3 == 128 : c3 == 150 / P * P, "%s: cached %d", what, c3);
    /* after eviction: fill the cache with unrelated prompts, then a again */
    for (int k = 0; k < 4; k++) {
        int32_t g2[300];
        for (int i = 0; i < 300; i++)
            g2[i] = f[(i + 37 * k) % 300];
        sl_sched_req r = harness_req(4 + (uint64_t)k, g2, 280, 4);
        sl_err e = {0};
        CHECK(sl_engine_submit(eng, &r, &e) == SL_OK);
        harness_run(eng, &col, 1);
    }
    sl_sched_stats st;
    sl_engine_stats(eng, &st);
    CHECK_MSG(st.evicted_pages > 0, "%s: nothing was evicted", arch);
    snprintf(what, sizeof what, "%s P=%d overlap=%d after eviction", arch, P, overlap);
    serve_and_compare(eng, &col, m, 8, a, 200, 6, what);
    /* accounting: nothing held, everything free once the cache is flushed */
    sl_err e = {0};
    CHECK_MSG(sl_engine_check(eng, &e) == SL_OK, "%s", e.msg);
    sl_engine_flush_cache(eng);
    sl_engine_stats(eng, &st);
    CHECK(st.free_pages == st.total_pages && st.free_slots == st.total_slots);
    for (int i = 0; i < N; i++)
        free(gs[i].first_logits);
    sl_engine_free(eng);
}

/* Three prompts share 257 tokens, then diverge; each is 257 + C + 10 long so
 * that the first request's own checkpoint lies past the branch point. With
 * chunk 192 the branch point falls inside the second prefill chunk. */
static void test_branching(sl_model *m, int P, int overlap, int chunk)
{
    sl_engine *eng = make_engine(m, P, overlap, 2048, chunk, P > 8 ? P : 8);
    if (!eng) return;
    enum { N = 3 };
    got gs[N];
    memset(gs, 0, sizeof gs);
    collector col = {.g = gs, .n = N};
    sl_engine_set_logits_hook(eng, harness_hook, &col);
    int C = P > 64 ? P : 64, L = 257 + C + 10, cached[N];
    int32_t p[N][400];
    for (int k = 0; k < N; k++)
        for (int i = 0; i < L; i++)
            p[k][i] = i < 257 ? 17 + i % 5
                              : 1 + (int)(sl_rng_uniform(100 + (uint64_t)k, (uint64_t)i) * 250);
    for (int k = 0; k < N; k++) {
        char what[64];
        snprintf(what, sizeof what, "branch P=%d overlap=%d request %d", P, overlap, k);
        cached[k] = serve_and_compare(eng, &col, m, (uint64_t)k, p[k], L, 4, what);
    }
    /* a chunked first request also snapshots its chunk ends inside the shared part */
    int second = chunk < 257 ? 257 / chunk * chunk : 0;
    CHECK_MSG(cached[0] == 0 && cached[1] == second && cached[2] == 257 / C * C,
              "P=%d: cached %d %d %d, expected 0 %d %d", P, cached[0], cached[1], cached[2], second,
              257 / C * C);
    sl_err e = {0};
    CHECK_MSG(sl_engine_check(eng, &e) == SL_OK, "%s", e.msg);
    for (int i = 0; i < N; i++)
        free(gs[i].first_logits);
    sl_engine_free(eng);
}

/* docs/mamba_cache.md §8 scenarios around a decode checkpoint (interval 8, prompt
 * 60: the state at 64 is taken when the 4th output token is fed). A request
 * finishing with 3, 4 or 5 outputs, then a continuation of its text: the
 * continuation's logits equal a cold run, and it hits 64 exactly when that
 * state was taken (under overlap a finished request's discarded step feeds
 * its last token, so 4 outputs already reach the checkpoint). */
static void test_decode_boundary(sl_model *m, int overlap)
{
    for (int max_new = 3; max_new <= 5; max_new++) {
        sl_engine *eng = make_engine(m, 1, overlap, 1024, 8192, 8);
        if (!eng) return;
        got gs[2];
        memset(gs, 0, sizeof gs);
        collector col = {.g = gs, .n = 2};
        sl_engine_set_logits_hook(eng, harness_hook, &col);
        int32_t a[100];
        for (int i = 0; i < 60; i++)
            a[i] = 1 + (i * 11) % 200;
        sl_sched_req r = harness_req(0, a, 60, max_new);
        r.ignore_eos = 1;
        sl_err e = {0};
        CHECK(sl_engine_submit(eng, &r, &e) == SL_OK);
        harness_run(eng, &col, 1);
        CHECK(gs[0].n_out == max_new);
        memcpy(a + 60, gs[0].out, sizeof(int32_t) * (size_t)max_new);
        int n = 60 + max_new;
        for (int i = n; i < n + 20; i++)
            a[i] = 3 + i % 50;
        char what[64];
        snprintf(what, sizeof what, "boundary overlap=%d max_new=%d", overlap, max_new);
        int cached = serve_and_compare(eng, &col, m, 1, a, n + 20, 3, what);
        int expect = max_new + overlap >= 5 ? 64 : 0;
        CHECK_MSG(cached == expect, "%s: cached %d, expected %d", what, cached, expect);
        free(gs[0].first_logits);
        free(gs[1].first_logits);
        sl_engine_free(eng);
    }
}

int main(void)
{
    const char *arches[] = {"qwen3", "qwen3_moe", "qwen3_next"};
    for (int a = 0; a < 3; a++) {
        sl_backend *be = NULL;
        sl_model *m = harness_model(arches[a], &be);
        CHECK(m != NULL);
        if (!m) continue;
        test_hits(arches[a], m, 1, 0, 8);
        test_hits(arches[a], m, 4, 1, 8);
        if (a == 2) {
            test_hits(arches[a], m, 2, 1, 2); /* interval = page = 2: a snapshot every other step */
            test_hits(arches[a], m, 16, 1, 16);
            test_branching(m, 1, 0, 8192);
            test_branching(m, 1, 1, 192);
            test_branching(m, 16, 1, 8192);
            test_branching(m, 128, 1, 8192);
            test_decode_boundary(m, 0);
            test_decode_boundary(m, 1);
        }
        sl_model_free(m);
        sl_backend_free(be);
    }
    return sl_test_done("test_engine_cache");
}

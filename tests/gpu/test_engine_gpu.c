/* The batching engine on the CUDA backend: the golden models' greedy prompts
 * served concurrently (overlap on, page 16, decode from CUDA graphs) agree
 * with transformers' greedy continuations, so does a second round served from
 * the prefix cache, and the cache accounting checks out afterwards. Seeded
 * sampling on the device (temperature, top-k/p, min-p, penalties, logprobs)
 * is deterministic run to run. */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "engine.h"
#include "sl_test.h"

#define MAXR 8
#define MAXT 64

/* Steps until every submitted request of rid0 .. rid0+n-1 has finished,
 * collecting tokens (and logprobs when lp). */
static void drain(sl_engine *eng, uint64_t rid0, int n, int32_t out[][MAXT], int *n_out, int *fin,
                  float lp[][MAXT])
{
    int done = 0;
    for (int k = 0; k < n; k++) done += fin[k];
    for (int guard = 0; done < n && guard < 100000; guard++) {
        sl_err e = {0};
        if (sl_engine_step(eng, NULL, &e) != SL_OK) {
            CHECK_MSG(0, "engine step: %s", e.msg);
            return;
        }
        sl_sched_event ev;
        while (sl_engine_pop_event(eng, &ev)) {
            int k = (int)(ev.rid - rid0);
            if (ev.token >= 0 && n_out[k] < MAXT) {
                if (lp) {
                    CHECK(ev.has_sample && ev.sample.logprob <= 0 && ev.sample.n_top == 5);
                    for (int j = 1; j < ev.sample.n_top; j++)
                        CHECK(ev.sample.top_logprobs[j] <= ev.sample.top_logprobs[j - 1]);
                    lp[k][n_out[k]] = ev.sample.logprob;
                }
                out[k][n_out[k]++] = ev.token;
            }
            if (ev.finish != SL_FINISH_NONE) {
                fin[k] = 1;
                done++;
            }
        }
    }
    CHECK(done == n);
}

static const sl_sampling greedy_params = {.temperature = 0, .top_p = 1, .repetition_penalty = 1};

/* Serves the prompts of greedy with params (request i seeded 1000 + i), all
 * at once or, when serial, one after the other. */
static void serve_with(sl_engine *eng, json_t *greedy, uint64_t rid0, const sl_sampling *params,
                       int serial, int32_t out[][MAXT], int *n_out, float lp[][MAXT])
{
    int n = (int)json_array_size(greedy), fin[MAXR] = {0};
    int32_t prompts[MAXR][256];
    for (int i = 0; i < n; i++) {
        json_t *c = json_array_get(greedy, (size_t)i), *p = json_object_get(c, "prompt");
        int np = (int)json_array_size(p);
        for (int t = 0; t < np; t++) prompts[i][t] = (int32_t)json_integer_value(json_array_get(p, (size_t)t));
        sl_sched_req r = {.rid = rid0 + (uint64_t)i, .prompt = prompts[i], .n_prompt = np,
                          .max_new = (int)json_array_size(json_object_get(c, "output")),
                          .sampling = *params};
        r.sampling.seed = 1000 + (uint64_t)i;
        sl_err e = {0};
        CHECK_MSG(sl_engine_submit(eng, &r, &e) == SL_OK, "%s", e.msg);
        n_out[i] = 0;
        if (serial || i == n - 1) drain(eng, rid0, i + 1, out, n_out, fin, lp);
    }
}

static void serve(sl_engine *eng, json_t *greedy, uint64_t rid0, int32_t out[][MAXT], int *n_out)
{
    serve_with(eng, greedy, rid0, &greedy_params, 0, out, n_out, NULL);
}

static int agreement(const int32_t *out, int n, json_t *ref)
{
    int k = 0;
    while (k < n && k < (int)json_array_size(ref) && out[k] == json_integer_value(json_array_get(ref, (size_t)k)))
        k++;
    return k;
}

int main(void)
{
    const char *src = getenv("SLUICE_SRC");
    const char *archs[] = {"qwen3", "qwen3_moe", "qwen3_next"};
    sl_err e = {0};
    sl_backend *be = sl_backend_cuda_new(0, &e);
    if (!be) {
        printf("test_engine_gpu: no CUDA device (%s)\n", e.msg);
        return 1;
    }
    for (int a = 0; a < 3; a++) {
        char dir[1024], path[1100];
        snprintf(dir, sizeof dir, "%s/tests/golden/data/%s", src ? src : ".", archs[a]);
        snprintf(path, sizeof path, "%s/golden.json", dir);
        json_error_t je;
        json_t *g = json_load_file(path, 0, &je);
        CHECK_MSG(g != NULL, "%s: %s", path, je.text);
        if (!g) continue;
        json_t *greedy = json_object_get(g, "greedy");
        snprintf(path, sizeof path, "%s/model", dir);
        sl_model *m = NULL;
        CHECK_MSG(sl_model_load(&m, path, be, NULL, &e) == SL_OK, "%s", e.msg);
        sl_engine_config c;
        sl_engine_config_default(&c);
        c.page_size = 16;
        c.context_len = 1024;
        c.max_running = 8;
        c.max_total_tokens = 8192;
        c.max_mamba_slots = 32;
        c.track_interval = 64;
        sl_engine *eng = NULL;
        CHECK_MSG(sl_engine_new(&eng, m, &c, &e) == SL_OK, "%s", e.msg);
        int32_t out1[MAXR][MAXT], out2[MAXR][MAXT];
        int n1[MAXR], n2[MAXR];
        serve(eng, greedy, 100, out1, n1);
        serve(eng, greedy, 200, out2, n2);
        size_t i;
        json_t *cs;
        json_array_foreach(greedy, i, cs)
        {
            json_t *ref = json_object_get(cs, "output");
            /* bf16 (and GEMMs of another row count when a prefix is cached)
             * may flip a near-tie late in a continuation; the start must agree */
            int a1 = agreement(out1[i], n1[i], ref), a2 = agreement(out2[i], n2[i], ref);
            /* qwen3_next's tiny router has near-tied experts that bf16 flips
             * (docs/numerics.md): reported, not judged; tests/gpu/
             * test_engine_gpu_cache.c checks the hybrid engine on CUDA against
             * cold logits instead */
            if (strcmp(archs[a], "qwen3_next") != 0)
                CHECK_MSG(a1 >= 8 && a2 >= 8, "%s request %zu: agrees with transformers for %d (cold) "
                          "and %d (cached) tokens", archs[a], i, a1, a2);
            printf("%s request %zu: %d and %d of %d tokens as transformers (cold, cached)\n", archs[a], i,
                   a1, a2, (int)json_array_size(ref));
        }
        /* seeded sampling on the device: the same batches give the same
         * tokens (deterministic kernels, fixed-point sampling masses); served
         * one at a time (other GEMM shapes, so logits move in the last bits)
         * they agree until a draw lands on a moved boundary */
        sl_sampling sp = {.temperature = 0.8f, .top_p = 0.95f, .top_k = 50, .min_p = 0.02f,
                          .repetition_penalty = 1.1f, .frequency_penalty = 0.3f,
                          .presence_penalty = 0.2f, .has_seed = 1, .logprobs = 1, .top_logprobs = 5};
        int32_t s1[MAXR][MAXT], s2[MAXR][MAXT], s3[MAXR][MAXT];
        float l1[MAXR][MAXT], l2[MAXR][MAXT], l3[MAXR][MAXT];
        int m1[MAXR], m2[MAXR], m3[MAXR], differs = 0;
        sl_engine_flush_cache(eng);
        serve_with(eng, greedy, 300, &sp, 0, s1, m1, l1);
        sl_engine_flush_cache(eng);
        serve_with(eng, greedy, 400, &sp, 0, s2, m2, l2);
        sl_engine_flush_cache(eng);
        serve_with(eng, greedy, 500, &sp, 1, s3, m3, l3);
        for (int k = 0; k < (int)json_array_size(greedy); k++) {
            CHECK_MSG(m1[k] == m2[k] && !memcmp(s1[k], s2[k], sizeof(int32_t) * (size_t)m1[k]),
                      "%s request %d: seeded samples differ between identical runs", archs[a], k);
            for (int t = 0; t < m1[k] && t < m2[k]; t++) CHECK(l1[k][t] == l2[k][t]);
            int same = 0;
            while (same < m1[k] && same < m3[k] && s1[k][same] == s3[k][same]) same++;
            differs += m1[k] != n1[k] || memcmp(s1[k], out1[k], sizeof(int32_t) * (size_t)m1[k]);
            printf("%s request %d: sampled batched and alone agree for %d of %d tokens\n", archs[a], k,
                   same, m1[k]);
        }
        CHECK_MSG(differs > 0, "%s: sampling at temperature 0.8 gave the greedy tokens", archs[a]);
        sl_sched_stats st;
        sl_engine_stats(eng, &st);
        CHECK_MSG(st.cached_tokens > 0, "%s: the second round hit no cache", archs[a]);
        printf("%s: %lld prompt tokens, %lld served from the prefix cache\n", archs[a],
               (long long)st.prompt_tokens, (long long)st.cached_tokens);
        CHECK_MSG(sl_engine_check(eng, &e) == SL_OK, "%s", e.msg);
        sl_engine_free(eng);
        /* decode without graphs (--disable-cuda-graph): the same tokens up to
         * near-ties (other key splits in attention) */
        c.graph_max_bs = 0;
        CHECK_MSG(sl_engine_new(&eng, m, &c, &e) == SL_OK, "%s", e.msg);
        int32_t out3[MAXR][MAXT];
        int n3[MAXR];
        serve(eng, greedy, 600, out3, n3);
        for (int k = 0; k < (int)json_array_size(greedy); k++) {
            int same = 0;
            while (same < n1[k] && same < n3[k] && out1[k][same] == out3[k][same]) same++;
            if (strcmp(archs[a], "qwen3_next") != 0)
                CHECK_MSG(same >= 8, "%s request %d: eager and graph decode agree for %d tokens",
                          archs[a], k, same);
            printf("%s request %d: eager and graph decode agree for %d of %d tokens\n", archs[a], k,
                   same, n1[k]);
        }
        sl_engine_free(eng);
        sl_model_free(m);
        json_decref(g);
    }
    sl_backend_free(be);
    return sl_test_done("test_engine_gpu");
}

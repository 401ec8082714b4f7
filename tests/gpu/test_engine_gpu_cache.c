/* tests/gpu/test_engine_gpu_cache.c: the serving engine on the CUDA backend.
 *
 * 1. Hybrid (qwen3_next shape, head dims 128, page 16): the branching
 *    scenario of MAMBA_CACHE.md §7 (cached tokens 0, 0, 256), which needs the
 *    CUDA GDN/conv kernels' snapshots at 64-aligned points inside a prefill;
 *    every request's first logits match a cold run on an engine without a
 *    cache (bf16: relative L2 < 3e-2).
 * 2. Dense Qwen3-8B shape with dummy weights: a full prefix hit matches the
 *    cold logits, then decode throughput of 64 concurrent requests (prompt
 *    512, 128 new tokens) with overlap scheduling on and off.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine.h"
#include "sl_rng.h"
#include "sl_test.h"

typedef struct logits_rec {
    float *first[8];
    int vocab;
} logits_rec;

static void keep_first(void *ctx, uint64_t rid, int pos, const float *l, int vocab)
{
    logits_rec *r = ctx;
    if (rid < 8 && !r->first[rid]) {
        r->first[rid] = malloc(sizeof(float) * (size_t)vocab);
        memcpy(r->first[rid], l, sizeof(float) * (size_t)vocab);
        r->vocab = vocab;
    }
}

static sl_model *model_from(const char *json, sl_backend *be)
{
    sl_model_config c;
    sl_err e = {0};
    sl_model *m = NULL;
    if (sl_model_config_parse(&c, json, NULL, &e) || sl_model_from_config(&m, &c, be, &(sl_model_load_opts){.seed = 11}, &e))
        fprintf(stderr, "model: %s\n", e.msg);
    return m;
}

static sl_engine *engine(sl_model *m, int P, int overlap, int radix, int max_running)
{
    sl_engine_config c;
    sl_engine_config_default(&c);
    c.page_size = P;
    c.overlap = overlap;
    c.disable_radix = !radix;
    c.context_len = 4096;
    c.max_running = max_running;
    c.track_interval = 64;
    sl_engine *g = NULL;
    sl_err e = {0};
    if (sl_engine_new(&g, m, &c, &e)) fprintf(stderr, "engine: %s\n", e.msg);
    return g;
}

/* Runs until idle; returns cached tokens of the last finished request. */
static int run(sl_engine *g, int *finished)
{
    sl_err e = {0};
    int cached = -1;
    while (!sl_engine_idle(g)) {
        if (sl_engine_step(g, NULL, &e)) {
            fprintf(stderr, "step: %s\n", e.msg);
            CHECK(0);
            return -1;
        }
        sl_sched_event ev;
        while (sl_engine_pop_event(g, &ev))
            if (ev.finish) {
                cached = ev.cached_tokens;
                if (finished) (*finished)++;
            }
    }
    return cached;
}

static sl_sched_req req(uint64_t rid, const int32_t *p, int n, int max_new)
{
    sl_sched_req r = {.rid = rid, .prompt = p, .n_prompt = n, .max_new = max_new, .ignore_eos = 1};
    r.sampling.top_p = 1;
    r.sampling.repetition_penalty = 1;
    return r;
}

/* First logits of rid 0 served alone on a cache-less engine. */
static float *cold_logits(sl_model *m, const int32_t *p, int n)
{
    sl_engine *g = engine(m, 16, 0, 0, 4);
    logits_rec rec = {{0}, 0};
    sl_engine_set_logits_hook(g, keep_first, &rec);
    sl_sched_req r = req(0, p, n, 1);
    sl_err e = {0};
    CHECK(sl_engine_submit(g, &r, &e) == SL_OK);
    run(g, NULL);
    sl_engine_free(g);
    return rec.first[0];
}

static void test_hybrid_branching(sl_backend *be)
{
    const char *js =
        "{\"architectures\": [\"Qwen3NextForCausalLM\"], \"model_type\": \"qwen3_next\", "
        "\"vocab_size\": 1024, \"hidden_size\": 256, \"num_attention_heads\": 2, "
        "\"num_key_value_heads\": 1, \"head_dim\": 128, \"partial_rotary_factor\": 0.25, "
        "\"num_hidden_layers\": 4, \"layer_types\": [\"linear_attention\", \"full_attention\", "
        "\"linear_attention\", \"full_attention\"], \"linear_num_key_heads\": 2, "
        "\"linear_num_value_heads\": 4, \"linear_key_head_dim\": 128, \"linear_value_head_dim\": "
        "128, \"linear_conv_kernel_dim\": 4, \"intermediate_size\": 256, \"num_experts\": 8, "
        "\"num_experts_per_tok\": 2, \"moe_intermediate_size\": 64, "
        "\"shared_expert_intermediate_size\": 64, \"norm_topk_prob\": true, \"rms_norm_eps\": "
        "1e-6, \"rope_theta\": 10000.0, \"max_position_embeddings\": 4096, \"bos_token_id\": 0, "
        "\"eos_token_id\": 1023, \"tie_word_embeddings\": false}";
    sl_model *m = model_from(js, be);
    CHECK(m != NULL);
    if (!m) return;
    const sl_model_config *mc = sl_model_cfg(m);
    printf("hybrid model: linear heads %d/%d, dims %d/%d\n", mc->lin_k_heads, mc->lin_v_heads,
           mc->lin_k_dim, mc->lin_v_dim);
    enum { L = 257 + 64 + 10 };
    int32_t p[3][L];
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < L; i++)
            p[k][i] = i < 257 ? 17 + i % 5 : 2 + (int)(sl_rng_uniform(50 + (uint64_t)k, (uint64_t)i) * 1000);
    sl_engine *g = engine(m, 16, 1, 1, 8);
    logits_rec rec = {{0}, 0};
    sl_engine_set_logits_hook(g, keep_first, &rec);
    int cached[3];
    sl_err e = {0};
    for (int k = 0; k < 3; k++) {
        sl_sched_req r = req((uint64_t)k, p[k], L, 4);
        CHECK(sl_engine_submit(g, &r, &e) == SL_OK);
        cached[k] = run(g, NULL);
    }
    sl_engine_free(g);
    printf("hybrid branching on CUDA: cached %d %d %d (expected 0 0 256)\n", cached[0], cached[1],
           cached[2]);
    CHECK(cached[0] == 0 && cached[1] == 0 && cached[2] == 256);
    for (int k = 0; k < 3; k++) {
        float *cold = cold_logits(m, p[k], L);
        double err = cold && rec.first[k] ? sl_test_rel_l2(rec.first[k], cold, rec.vocab) : 1;
        printf("  request %d: first logits vs cold run, rel L2 %.2e\n", k, err);
        CHECK(err < 3e-2);
        free(cold);
        free(rec.first[k]);
    }
    sl_model_free(m);
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void test_dense(sl_backend *be)
{
    const char *js =
        "{\"architectures\": [\"Qwen3ForCausalLM\"], \"model_type\": \"qwen3\", \"vocab_size\": "
        "151936, \"hidden_size\": 4096, \"num_attention_heads\": 32, \"num_key_value_heads\": 8, "
        "\"head_dim\": 128, \"num_hidden_layers\": 36, \"intermediate_size\": 12288, "
        "\"rms_norm_eps\": 1e-6, \"rope_theta\": 1000000.0, \"max_position_embeddings\": 40960, "
        "\"bos_token_id\": 151643, \"eos_token_id\": 151645, \"tie_word_embeddings\": false}";
    sl_model *m = model_from(js, be);
    CHECK(m != NULL);
    if (!m) return;
    static int32_t p[64][512];
    for (int r = 0; r < 64; r++)
        for (int i = 0; i < 512; i++) p[r][i] = (int)(sl_rng_uniform(900 + (uint64_t)r, (uint64_t)i) * 150000);
    /* a full prefix hit against the cold logits */
    sl_engine *g = engine(m, 16, 1, 1, 64);
    logits_rec rec = {{0}, 0};
    sl_engine_set_logits_hook(g, keep_first, &rec);
    sl_err e = {0};
    int cached = 0;
    for (int k = 0; k < 2; k++) {
        sl_sched_req r = req((uint64_t)k, p[0], 512, 2);
        CHECK(sl_engine_submit(g, &r, &e) == SL_OK);
        cached = run(g, NULL);
    }
    sl_engine_free(g);
    float *cold = cold_logits(m, p[0], 512);
    double err = cold && rec.first[1] ? sl_test_rel_l2(rec.first[1], cold, rec.vocab) : 1;
    printf("qwen3-8B shape: full hit cached %d tokens, logits vs cold rel L2 %.2e\n", cached, err);
    CHECK(cached == 496 && err < 3e-2);
    free(cold);
    free(rec.first[0]);
    free(rec.first[1]);
    /* throughput: 64 concurrent requests, 512 in, 128 out, greedy */
    for (int ov = 1; ov >= 0; ov--) {
        g = engine(m, 16, ov, 1, 64);
        int fin = 0;
        /* warm-up (not timed): one short request */
        sl_sched_req w = req(1000, p[63], 64, 4);
        CHECK(sl_engine_submit(g, &w, &e) == SL_OK);
        run(g, NULL);
        double t0 = now_s();
        for (int r = 0; r < 64; r++) {
            sl_sched_req q = req((uint64_t)r, p[r], 512, 128);
            CHECK(sl_engine_submit(g, &q, &e) == SL_OK);
        }
        run(g, &fin);
        double dt = now_s() - t0;
        printf("qwen3-8B shape, 64 x (512 in, 128 out), overlap %s: %.2f s, %.0f output tok/s, "
               "%.0f total tok/s\n",
               ov ? "on" : "off", dt, 64 * 128 / dt, 64 * (512 + 128) / dt);
        CHECK(fin == 64);
        sl_engine_free(g);
    }
    sl_model_free(m);
}

int main(void)
{
    sl_err e = {0};
    const char *dev = getenv("SLUICE_DEVICE"); /* cpu: a dry run of the test logic */
    sl_backend *be = sl_backend_new(dev ? dev : "cuda", &e);
    if (!be) {
        fprintf(stderr, "no CUDA device: %s\n", e.msg);
        return 1;
    }
    test_hybrid_branching(be);
    if (!dev) test_dense(be);
    sl_backend_free(be);
    return sl_test_done("test_engine_gpu_cache");
}

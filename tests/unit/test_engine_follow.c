/* The tensor-parallel plan path: a follower engine that executes every batch
 * the leader broadcasts from its plan hook ends with a cache bit-identical
 * to the leader's (KV pages and mamba states), with overlap on. */
#include "engine_harness.h"

typedef struct tp_ctx {
    sl_engine *follower;
    int batches;
} tp_ctx;

static sl_status broadcast(void *ctx, const sl_sched_batch *b, sl_err *e)
{
    tp_ctx *t = ctx;
    t->batches++;
    return sl_engine_follow(t->follower, (sl_sched_batch *)b, e);
}

static int same_tensor(const sl_tensor *a, const sl_tensor *b)
{
    size_t n = (size_t)sl_tensor_numel(a) * sl_dtype_size(a->dtype);
    return sl_tensor_numel(a) == sl_tensor_numel(b) && !memcmp(a->data, b->data, n);
}

/* A failing forward (here: the plan broadcast) stops the engine with the
 * error; freeing it afterwards is clean (no leak or crash under ASan). */
static sl_status fail_third(void *ctx, const sl_sched_batch *b, sl_err *e)
{
    int *n = ctx;
    return ++*n == 3 ? sl_err_set(e, SL_ERR_DEVICE, "injected device failure") : SL_OK;
}

/* The engine both tests use: 4-token pages, 512 tokens, 16 mamba slots, 4 running. */
static void small_config(sl_engine_config *c)
{
    sl_engine_config_default(c);
    c->page_size = 4;
    c->max_total_tokens = 512;
    c->max_mamba_slots = 16;
    c->max_running = 4;
    c->context_len = 256;
}

static void test_failure(sl_model *m, int overlap)
{
    sl_engine_config c;
    small_config(&c);
    c.overlap = overlap;
    sl_engine *g = NULL;
    sl_err e = {0};
    CHECK(sl_engine_new(&g, m, &c, &e) == SL_OK);
    int calls = 0;
    sl_engine_set_plan_hook(g, fail_third, &calls);
    int32_t p[40];
    for (int i = 0; i < 40; i++)
        p[i] = 1 + i;
    for (uint64_t r = 0; r < 3; r++) {
        sl_sched_req q = harness_req(r, p, 20 + (int)r, 30);
        CHECK(sl_engine_submit(g, &q, &e) == SL_OK);
    }
    sl_status st = SL_OK;
    for (int i = 0; i < 20 && !st; i++)
        st = sl_engine_step(g, NULL, &e);
    CHECK(st == SL_ERR_DEVICE && strstr(e.msg, "injected"));
    sl_engine_free(g);
}

int main(void)
{
    sl_backend *be1 = NULL, *be2 = NULL;
    sl_model *m1 = harness_micro_model("qwen3_next", &be1);
    sl_model *m2 = harness_micro_model("qwen3_next", &be2);
    CHECK(m1 && m2);
    if (!m1 || !m2) return sl_test_done("test_engine_follow");
    sl_engine_config c;
    small_config(&c);
    c.chunked_prefill_size = 64;
    c.track_interval = 8;
    sl_engine *lead = NULL, *follow = NULL;
    sl_err e = {0};
    CHECK(sl_engine_new(&lead, m1, &c, &e) == SL_OK);
    c.overlap = 0; /* the follower never schedules: no compute thread */
    CHECK(sl_engine_new(&follow, m2, &c, &e) == SL_OK);
    tp_ctx t = {.follower = follow};
    sl_engine_set_plan_hook(lead, broadcast, &t);
    got gs[8];
    memset(gs, 0, sizeof gs);
    collector col = {.g = gs, .n = 8};
    int32_t p[8][150];
    for (int r = 0; r < 8; r++) {
        for (int i = 0; i < 150; i++)
            p[r][i] =
                i < 70 ? 5 + i % 9 : 1 + (int)(sl_rng_uniform(31 + (uint64_t)r, (uint64_t)i) * 120);
        sl_sched_req q = harness_req((uint64_t)r, p[r], 80 + 9 * r, 10);
        CHECK(sl_engine_submit(lead, &q, &e) == SL_OK);
    }
    harness_run(lead, &col, 1);
    const sl_model_cache *a = sl_engine_cache(lead), *b = sl_engine_cache(follow);
    int same = 1;
    for (int j = 0; j < a->n_attn; j++)
        same &= same_tensor(&a->k[j], &b->k[j]) && same_tensor(&a->v[j], &b->v[j]);
    for (int j = 0; j < a->n_linear; j++)
        same &= same_tensor(&a->conv[j], &b->conv[j]) && same_tensor(&a->ssm[j], &b->ssm[j]);
    CHECK_MSG(same, "follower cache differs from the leader's after %d batches", t.batches);
    CHECK(t.batches > 10);
    for (int r = 0; r < 8; r++)
        CHECK(gs[r].finish == SL_FINISH_STOP || gs[r].finish == SL_FINISH_LENGTH);
    sl_engine_free(lead);
    sl_engine_free(follow);
    test_failure(m1, 0);
    test_failure(m1, 1);
    sl_model_free(m1);
    sl_model_free(m2);
    sl_backend_free(be1);
    sl_backend_free(be2);
    return sl_test_done("test_engine_follow");
}

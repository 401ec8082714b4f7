/* Shared helpers for the engine tests: tiny models made by `sluice make-tiny`,
 * cold single-sequence references (sl_solo), and an event collector. */
#ifndef ENGINE_HARNESS_H
#define ENGINE_HARNESS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"
#include "sl_rng.h"
#include "sl_test.h"
#include "solo.h"

/* Writes a tiny model of arch into a fresh temp dir (dir: 256 bytes). */
static inline int harness_make_model(const char *arch, char *dir)
{
    snprintf(dir, 256, "/tmp/sluice_engine_%s_XXXXXX", arch);
    if (!mkdtemp(dir)) return -1;
    const char *bin = getenv("SLUICE_BIN");
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s make-tiny --arch %s --out %s --vocab-size 256 >/dev/null",
             bin ? bin : "sluice", arch, dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "failed: %s\n", cmd);
        return -1;
    }
    return 0;
}

static inline void harness_remove(const char *dir)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

/* An even smaller model than make-tiny's (dummy weights, no files), so the
 * stress tests stay fast on the CPU backend. */
static inline sl_model *harness_micro_model(const char *arch, sl_backend **be)
{
    char js[2048];
    const char *common = "\"vocab_size\": 128, \"hidden_size\": 32, \"num_attention_heads\": 2, "
                         "\"num_key_value_heads\": 1, \"head_dim\": 16, \"rms_norm_eps\": 1e-6, "
                         "\"max_position_embeddings\": 4096, \"rope_theta\": 10000.0, "
                         "\"bos_token_id\": 0, \"eos_token_id\": 127, \"intermediate_size\": 48, "
                         "\"tie_word_embeddings\": false";
    if (!strcmp(arch, "qwen3"))
        snprintf(js, sizeof js,
                 "{%s, \"architectures\": [\"Qwen3ForCausalLM\"], "
                 "\"model_type\": \"qwen3\", \"num_hidden_layers\": 2}",
                 common);
    else if (!strcmp(arch, "qwen3_moe"))
        snprintf(js, sizeof js,
                 "{%s, \"architectures\": [\"Qwen3MoeForCausalLM\"], "
                 "\"model_type\": \"qwen3_moe\", \"num_hidden_layers\": 2, \"num_experts\": 4, "
                 "\"num_experts_per_tok\": 2, \"moe_intermediate_size\": 16, "
                 "\"norm_topk_prob\": true}",
                 common);
    else
        snprintf(js, sizeof js,
                 "{%s, \"architectures\": [\"Qwen3NextForCausalLM\"], "
                 "\"model_type\": \"qwen3_next\", \"num_hidden_layers\": 3, "
                 "\"partial_rotary_factor\": 0.25, \"layer_types\": [\"linear_attention\", "
                 "\"full_attention\", \"linear_attention\"], \"linear_num_key_heads\": 1, "
                 "\"linear_num_value_heads\": 2, \"linear_key_head_dim\": 16, "
                 "\"linear_value_head_dim\": 16, \"linear_conv_kernel_dim\": 4, "
                 "\"num_experts\": 4, \"num_experts_per_tok\": 2, \"moe_intermediate_size\": 16, "
                 "\"shared_expert_intermediate_size\": 16, \"norm_topk_prob\": true}",
                 common);
    sl_model_config c;
    sl_err e = {0};
    if (sl_model_config_parse(&c, js, NULL, &e)) {
        fprintf(stderr, "micro %s: %s\n", arch, e.msg);
        return NULL;
    }
    *be = sl_backend_cpu_new();
    sl_model *m = NULL;
    if (sl_model_from_config(&m, &c, *be, &(sl_model_load_opts){.seed = 7}, &e)) fprintf(stderr, "micro %s: %s\n", arch, e.msg);
    return m;
}

/* A tiny model of arch (written by make-tiny) loaded on a new CPU backend. */
static inline sl_model *harness_model(const char *arch, sl_backend **be)
{
    char dir[256];
    if (harness_make_model(arch, dir)) return NULL;
    sl_err e = {0};
    *be = sl_backend_cpu_new();
    sl_model *m = NULL;
    if (sl_model_load(&m, dir, *be, NULL, &e)) fprintf(stderr, "load %s: %s\n", dir, e.msg);
    harness_remove(dir);
    return m;
}

/* Cold reference: greedy continuation of prompt and the logits after it. */
typedef struct cold_ref {
    int32_t out[64];
    int n_out;
    float *first_logits; /* [vocab] */
} cold_ref;

static inline void harness_cold(sl_model *m, const int32_t *prompt, int n, int max_new,
                                cold_ref *ref)
{
    const sl_model_config *c = sl_model_cfg(m);
    int V = c->vocab_size;
    sl_solo s;
    sl_err e = {0};
    CHECK(sl_solo_init(&s, m, n + max_new + 1, 16, &e) == SL_OK);
    float *l = malloc(sizeof(float) * (size_t)V);
    ref->first_logits = malloc(sizeof(float) * (size_t)V);
    ref->n_out = 0;
    CHECK(sl_solo_feed(&s, prompt, n, 0, l, &e) == SL_OK);
    memcpy(ref->first_logits, l, sizeof(float) * (size_t)V);
    for (int i = 0; i < max_new; i++) {
        int32_t t = sl_argmax(l, V);
        ref->out[ref->n_out++] = t;
        int eos = 0;
        for (int k = 0; k < c->n_eos; k++)
            eos |= t == c->eos_token_ids[k];
        if (eos || i + 1 == max_new) break;
        CHECK(sl_solo_feed(&s, &t, 1, 0, l, &e) == SL_OK);
    }
    free(l);
    sl_solo_free(&s);
}

/* Per-request results gathered from engine events. */
typedef struct got {
    int32_t out[64];
    int n_out;
    sl_finish finish;
    int cached;
    float *first_logits; /* set by the logits hook */
    int first_pos;
} got;

typedef struct collector {
    got *g;
    int n;
    int vocab;
} collector;

/* Logits hook: keeps the logits of each request's first sampled token. */
static inline void harness_hook(void *ctx, uint64_t rid, int pos, const float *logits, int vocab)
{
    collector *c = ctx;
    if (rid >= (uint64_t)c->n) return;
    got *g = &c->g[rid];
    if (!g->first_logits) {
        g->first_logits = malloc(sizeof(float) * (size_t)vocab);
        memcpy(g->first_logits, logits, sizeof(float) * (size_t)vocab);
        g->first_pos = pos;
    }
}

static inline void harness_drain(sl_engine *eng, collector *c)
{
    sl_sched_event ev;
    while (sl_engine_pop_event(eng, &ev)) {
        if (ev.rid >= (uint64_t)c->n) continue;
        got *g = &c->g[ev.rid];
        if (ev.token >= 0 && g->n_out < 64) g->out[g->n_out++] = ev.token;
        if (ev.finish) {
            CHECK(g->finish == SL_FINISH_NONE); /* exactly one finish */
            g->finish = ev.finish;
            g->cached = ev.cached_tokens;
        }
    }
}

/* Steps until idle, checking the accounting after every step. */
static inline int harness_run(sl_engine *eng, collector *c, int check_each)
{
    sl_err e = {0};
    int steps = 0;
    while (!sl_engine_idle(eng)) {
        if (sl_engine_step(eng, NULL, &e) != SL_OK) {
            CHECK_MSG(0, "step: %s", e.msg);
            return -1;
        }
        harness_drain(eng, c);
        if (check_each && sl_engine_check(eng, &e) != SL_OK) {
            CHECK_MSG(0, "step %d: %s", steps, e.msg);
            return -1;
        }
        if (++steps > 200000) {
            CHECK_MSG(0, "engine does not finish");
            return -1;
        }
    }
    harness_drain(eng, c);
    return steps;
}

static inline sl_sched_req harness_req(uint64_t rid, const int32_t *prompt, int n, int max_new)
{
    sl_sched_req r = {.rid = rid, .prompt = prompt, .n_prompt = n, .max_new = max_new};
    r.sampling.temperature = 0;
    r.sampling.top_p = 1;
    r.sampling.repetition_penalty = 1;
    return r;
}

static inline int same_tokens(const got *g, const cold_ref *r)
{
    if (g->n_out != r->n_out) return 0;
    return !memcmp(g->out, r->out, sizeof(int32_t) * (size_t)r->n_out);
}

#endif

/* Model forward on batches: several sequences in one forward equal separate
 * runs; continuing from a cached prefix equals a cold run; state snapshots
 * (track_slot/track_len) equal the state of a shorter run. Config parsing.
 * The fused shared expert equals the unfused one. */
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "sl_test.h"
#include "solo.h"

static const char *tiny_next =
    "{\"architectures\":[\"Qwen3NextForCausalLM\"],\"model_type\":\"qwen3_next\",\"vocab_size\":97,"
    "\"hidden_size\":32,\"num_hidden_layers\":3,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
    "\"head_dim\":16,\"rope_parameters\":{\"rope_theta\":10000.0,\"partial_rotary_factor\":0.5},"
    "\"intermediate_size\":48,\"full_attention_interval\":2,\"linear_num_key_heads\":2,"
    "\"linear_num_value_heads\":4,\"linear_key_head_dim\":8,\"linear_value_head_dim\":8,"
    "\"linear_conv_kernel_dim\":4,\"num_experts\":4,\"num_experts_per_tok\":2,"
    "\"moe_intermediate_size\":16,\"shared_expert_intermediate_size\":16,\"eos_token_id\":[96,95]}";

static const char *tiny_moe =
    "{\"architectures\":[\"Qwen3MoeForCausalLM\"],\"vocab_size\":97,\"hidden_size\":32,"
    "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":1,\"head_dim\":8,"
    "\"rope_theta\":1000000,\"intermediate_size\":48,\"num_local_experts\":4,"
    "\"num_experts_per_tok\":2,\"moe_intermediate_size\":16,\"decoder_sparse_step\":2}";

static void test_config(void)
{
    sl_model_config c;
    sl_err e = {0};
    CHECK(sl_model_config_parse(&c, tiny_next, "{\"temperature\":0.7,\"top_k\":20}", &e) == SL_OK);
    CHECK(c.arch == SL_ARCH_QWEN3_NEXT && c.rot_dim == 8 && c.rope_theta == 10000.0);
    CHECK(c.layer_linear[0] == 1 && c.layer_linear[1] == 0 && c.layer_linear[2] == 1);
    CHECK(c.n_attn_layers == 1 && c.n_linear_layers == 2 && c.norm_topk_prob == 1);
    CHECK(c.n_eos == 2 && c.eos_token_ids[1] == 95);
    CHECK(c.gen.top_k == 20 && c.gen.temperature > 0.69f && c.gen.temperature < 0.71f);
    CHECK(sl_model_config_conv_dim(&c) == 2 * 2 * 8 + 4 * 8);
    CHECK(sl_model_config_parse(&c, tiny_moe, NULL, &e) == SL_OK);
    CHECK(c.n_experts == 4 && c.layer_moe[0] == 0 && c.layer_moe[1] == 1 && c.norm_topk_prob == 0);
    CHECK(c.rot_dim == 8 && c.n_kv_heads == 1);
    CHECK(sl_model_config_parse(&c, "{\"architectures\":[\"X\"]}", NULL, &e) == SL_ERR_UNSUPPORTED);
    CHECK(strstr(e.msg, "'X'") != NULL);
    CHECK(sl_model_config_parse(&c, "{not json", NULL, &e) == SL_ERR_PARSE);
    CHECK(sl_model_config_parse(&c,
                                "{\"architectures\":[\"Qwen3ForCausalLM\"],\"vocab_size\":10,"
                                "\"hidden_size\":8,\"num_hidden_layers\":1,\"num_attention_heads\":3,"
                                "\"num_key_value_heads\":2,\"intermediate_size\":8}",
                                NULL, &e) == SL_ERR_INVALID);
}

/* Two sequences at different depths in one forward: sequence A continues a
 * 9-token prefix with 5 tokens, B is fresh with 12 tokens; both must equal
 * solo runs, and a snapshot of A after 3 new tokens equals a solo state. */
static void test_batch(const char *cfg_json)
{
    sl_model_config c;
    sl_err e = {0};
    CHECK(sl_model_config_parse(&c, cfg_json, NULL, &e) == SL_OK);
    sl_backend *be = sl_backend_cpu_new();
    sl_model *m = NULL;
    CHECK(sl_model_from_config(&m, &c, be, &(sl_model_load_opts){.seed = 3}, &e) == SL_OK);
    const int V = c.vocab_size, P = 4, NA0 = 9, NA1 = 5, NB = 12;
    int32_t a[14], b[12];
    for (int i = 0; i < 14; i++) a[i] = (i * 7 + 3) % V;
    for (int i = 0; i < 12; i++) b[i] = (i * 11 + 5) % V;

    /* references: solo runs */
    sl_solo s;
    CHECK(sl_solo_init(&s, m, 64, P, &e) == SL_OK);
    float *ra = malloc(sizeof(float) * 14 * V), *rb = malloc(sizeof(float) * 12 * V);
    CHECK(sl_solo_feed(&s, a, 14, 1, ra, &e) == SL_OK);
    sl_solo_reset(&s);
    CHECK(sl_solo_feed(&s, b, 12, 1, rb, &e) == SL_OK);

    /* the batch: A's prefix first (alone), then A's continuation + B together */
    sl_model_cache cache;
    CHECK(sl_model_cache_alloc(m, &cache, 16, P, 4, &e) == SL_OK);
    int32_t pt[2 * 4] = {5, 2, 9, 7, 1, 11, 3, 0}; /* A: pages 5 2 9 7; B: 1 11 3 0 */
    int32_t ids[17], pos[17], slot[17], rows[17];
    for (int i = 0; i < NA0; i++) {
        ids[i] = a[i];
        pos[i] = i;
        slot[i] = pt[i / P] * P + i % P;
        rows[i] = i;
    }
    int32_t qs1[2] = {0, NA0}, kv1 = NA0, st1 = 2, fr1 = 1, tr1 = -1, tl1 = 0;
    sl_batch_meta m1 = {.n_tokens = NA0, .n_seqs = 1, .max_pages = 4, .ids = ids, .pos = pos,
                        .q_start = qs1, .kv_len = &kv1, .page_table = pt, .kv_slot = slot,
                        .state_slot = &st1, .state_fresh = &fr1, .track_slot = &tr1,
                        .track_len = &tl1};
    sl_tensor lg;
    size_t held = sl_be_held_bytes(be); /* weights and caches: what sizes a shared card */
    CHECK(held > 0);
    CHECK(sl_be_alloc(be, &lg, SL_DTYPE_F32, 2, (int64_t[]){17, V}, &e) == SL_OK);
    CHECK(sl_be_held_bytes(be) == held + sizeof(float) * 17 * (size_t)V);
    CHECK(sl_model_forward(m, &cache, &m1, rows, NA0, &lg, &e) == SL_OK);
    float *out = malloc(sizeof(float) * 17 * V);
    sl_tensor v1 = sl_tensor_rowview(&lg, 0, NA0);
    CHECK(sl_be_download(be, &v1, out, &e) == SL_OK);
    CHECK(sl_test_rel_l2(out, ra, (long)NA0 * V) < 1e-5);

    int T = NA1 + NB;
    for (int i = 0; i < NA1; i++) {
        ids[i] = a[NA0 + i];
        pos[i] = NA0 + i;
        slot[i] = pt[(NA0 + i) / P] * P + (NA0 + i) % P;
    }
    for (int i = 0; i < NB; i++) {
        ids[NA1 + i] = b[i];
        pos[NA1 + i] = i;
        slot[NA1 + i] = pt[4 + i / P] * P + i % P;
    }
    for (int i = 0; i < T; i++) rows[i] = i;
    int32_t qs2[3] = {0, NA1, T}, kv2[2] = {NA0 + NA1, NB}, st2[2] = {2, 0}, fr2[2] = {0, 1},
            tr2[2] = {3, -1}, tl2[2] = {3, 0};
    sl_batch_meta m2 = {.n_tokens = T, .n_seqs = 2, .max_pages = 4, .ids = ids, .pos = pos,
                        .q_start = qs2, .kv_len = kv2, .page_table = pt, .kv_slot = slot,
                        .state_slot = st2, .state_fresh = fr2, .track_slot = tr2,
                        .track_len = tl2};
    CHECK(sl_model_forward(m, &cache, &m2, rows, T, &lg, &e) == SL_OK);
    sl_tensor v2 = sl_tensor_rowview(&lg, 0, T);
    CHECK(sl_be_download(be, &v2, out, &e) == SL_OK);
    double ea = sl_test_rel_l2(out, ra + (long)NA0 * V, (long)NA1 * V);
    double eb = sl_test_rel_l2(out + (long)NA1 * V, rb, (long)NB * V);
    CHECK_MSG(ea < 1e-5 && eb < 1e-5, "continuation err %g, fresh err %g", ea, eb);

    if (c.n_linear_layers > 0) {
        /* slot 3 holds A's state after NA0 + 3 tokens: resume from it with the
         * remaining 2 tokens and compare with the reference logits */
        int32_t dst = 1, src = 3;
        sl_model_cache_copy_slots(m, &cache, &dst, &src, 1);
        for (int i = 0; i < 2; i++) {
            ids[i] = a[NA0 + 3 + i];
            pos[i] = NA0 + 3 + i;
            slot[i] = pt[(NA0 + 3 + i) / P] * P + (NA0 + 3 + i) % P;
            rows[i] = i;
        }
        int32_t qs3[2] = {0, 2}, kv3 = NA0 + 5, st3 = 1, fr3 = 0, tr3 = -1, tl3 = 0;
        sl_batch_meta m3 = {.n_tokens = 2, .n_seqs = 1, .max_pages = 4, .ids = ids, .pos = pos,
                            .q_start = qs3, .kv_len = &kv3, .page_table = pt, .kv_slot = slot,
                            .state_slot = &st3, .state_fresh = &fr3, .track_slot = &tr3,
                            .track_len = &tl3};
        CHECK(sl_model_forward(m, &cache, &m3, rows, 2, &lg, &e) == SL_OK);
        sl_tensor v3 = sl_tensor_rowview(&lg, 0, 2);
        CHECK(sl_be_download(be, &v3, out, &e) == SL_OK);
        double es = sl_test_rel_l2(out, ra + (long)(NA0 + 3) * V, 2L * V);
        CHECK_MSG(es < 1e-5, "resume from snapshot err %g", es);
        /* a zeroed slot (src -1) must not reproduce it */
        src = -1;
        sl_model_cache_copy_slots(m, &cache, &dst, &src, 1);
        CHECK(sl_model_forward(m, &cache, &m3, rows, 2, &lg, &e) == SL_OK);
        CHECK(sl_be_download(be, &v3, out, &e) == SL_OK);
        CHECK(sl_test_rel_l2(out, ra + (long)(NA0 + 3) * V, 2L * V) > 1e-3);
    }
    /* malformed batches are refused, not run */
    int32_t bad_id = V;
    sl_batch_meta mb = m1;
    mb.ids = &bad_id;
    mb.n_tokens = 1;
    int32_t qs_b[2] = {0, 1};
    mb.q_start = qs_b;
    CHECK(sl_model_forward(m, &cache, &mb, rows, 1, &lg, &e) == SL_ERR_INVALID);

    free(out);
    free(ra);
    free(rb);
    sl_be_release(be, &lg);
    sl_model_cache_free(m, &cache);
    sl_solo_free(&s);
    sl_model_free(m);
    CHECK_MSG(sl_be_held_bytes(be) == 0, "%zu bytes still counted", sl_be_held_bytes(be));
    sl_backend_free(be);
}

/* Counts the traced ops named "shared_gate" (the unfused shared expert's gate). */
static void count_shared_gate(void *ctx, int layer, const char *op, const sl_tensor *t)
{
    (void)layer;
    (void)t;
    if (!strcmp(op, "shared_gate")) ++*(int *)ctx;
}

/* A qwen3_next shared expert as wide as the routed ones is fused into them by
 * default (router row E, expert E, routed with weight σ(gate)): the logits
 * equal the unfused model's (--disable-shared-experts-fusion) to fp32
 * rounding, with the shared expert's own ops gone; prefill and decode. */
static void test_shared_fusion(void)
{
    sl_model_config c;
    sl_err e = {0};
    CHECK(sl_model_config_parse(&c, tiny_next, NULL, &e) == SL_OK);
    sl_backend *be = sl_backend_cpu_new();
    int V = c.vocab_size, N = 11;
    int32_t ids[12] = {5, 17, 33, 2, 90, 41, 8, 64, 12, 77, 3, 50};
    float *out[2], *dec[2];
    int gates[2] = {0, 0};
    for (int f = 0; f < 2; f++) {
        sl_model *m = NULL;
        sl_solo s;
        CHECK(sl_model_from_config(&m, &c, be, &(sl_model_load_opts){.seed = 7, .no_shared_fusion = f}, &e) ==
              SL_OK);
        CHECK(sl_solo_init(&s, m, 64, 4, &e) == SL_OK);
        out[f] = malloc(sizeof(float) * (size_t)N * V);
        dec[f] = malloc(sizeof(float) * (size_t)V);
        sl_model_set_trace(m, count_shared_gate, &gates[f]);
        CHECK(sl_solo_feed(&s, ids, N, 1, out[f], &e) == SL_OK);
        CHECK(sl_solo_feed(&s, ids + N, 1, 0, dec[f], &e) == SL_OK);
        sl_model_set_trace(m, NULL, NULL);
        sl_solo_free(&s);
        sl_model_free(m);
    }
    CHECK_MSG(gates[0] == 0 && gates[1] > 0, "shared_gate traced %d times fused, %d unfused", gates[0], gates[1]);
    double dp = sl_test_rel_l2(out[0], out[1], (long)N * V), dd = sl_test_rel_l2(dec[0], dec[1], V);
    CHECK_MSG(dp < 1e-5 && dd < 1e-5, "fused vs unfused: prefill %g, decode %g", dp, dd);
    CHECK(sl_argmax(dec[0], V) == sl_argmax(dec[1], V));
    for (int f = 0; f < 2; f++) {
        free(out[f]);
        free(dec[f]);
    }
    CHECK_MSG(sl_be_held_bytes(be) == 0, "%zu bytes still counted", sl_be_held_bytes(be));
    sl_backend_free(be);
}

int main(void)
{
    test_config();
    test_batch(tiny_next);
    test_batch(tiny_moe);
    test_shared_fusion();
    return sl_test_done("test_model");
}

/* config.json / generation_config.json parsing for the Qwen3 family. */
#include <jansson.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "model.h"
#include "sl_file.h"

static int get_int(json_t *o, const char *k, int def)
{
    json_t *v = json_object_get(o, k);
    return json_is_integer(v) ? (int)json_integer_value(v) : def;
}

static double get_num(json_t *o, const char *k, double def)
{
    json_t *v = json_object_get(o, k);
    return json_is_number(v) ? json_number_value(v) : def;
}

static int get_bool(json_t *o, const char *k, int def)
{
    json_t *v = json_object_get(o, k);
    return json_is_boolean(v) ? json_is_true(v) : def;
}

/* rope_theta / partial_rotary_factor: top level (released checkpoints) or
 * inside rope_parameters (transformers 5 writers). */
static double rope_value(json_t *root, const char *k, double def)
{
    json_t *rp = json_object_get(root, "rope_parameters");
    if (json_is_object(rp) && json_is_number(json_object_get(rp, k)))
        return json_number_value(json_object_get(rp, k));
    return get_num(root, k, def);
}

static void read_eos(sl_model_config *c, json_t *v)
{
    if (json_is_integer(v)) {
        c->eos_token_ids[0] = (int)json_integer_value(v);
        c->n_eos = 1;
    } else if (json_is_array(v)) {
        size_t i;
        json_t *x;
        c->n_eos = 0;
        json_array_foreach(v, i, x) if (json_is_integer(x) && c->n_eos < SL_MAX_EOS)
            c->eos_token_ids[c->n_eos++] = (int)json_integer_value(x);
    }
}

int sl_model_config_conv_dim(const sl_model_config *c)
{
    return 2 * c->lin_k_heads * c->lin_k_dim + c->lin_v_heads * c->lin_v_dim;
}

static sl_status bad(sl_err *e, const char *what) { return sl_err_set(e, SL_ERR_INVALID, "config.json: %s", what); }

static sl_status validate(const sl_model_config *c, sl_err *e)
{
    if (c->vocab_size <= 0 || c->hidden_size <= 0 || c->n_layers <= 0)
        return bad(e, "vocab_size, hidden_size and num_hidden_layers must be positive");
    if (c->n_layers > SL_MAX_LAYERS) return bad(e, "num_hidden_layers exceeds 256");
    if (c->n_heads <= 0 || c->n_kv_heads <= 0 || c->n_heads % c->n_kv_heads)
        return bad(e, "num_attention_heads must be a positive multiple of num_key_value_heads");
    if (c->head_dim <= 0 || c->rot_dim <= 0 || c->rot_dim > c->head_dim || c->rot_dim % 2)
        return bad(e, "head_dim / partial_rotary_factor give an invalid rotary dimension");
    if (c->n_experts > 0 && (c->n_experts_per_tok <= 0 || c->n_experts_per_tok > c->n_experts ||
                             c->moe_intermediate_size <= 0))
        return bad(e, "num_experts_per_tok and moe_intermediate_size must be valid for num_experts");
    if (c->n_linear_layers > 0 &&
        (c->lin_k_heads <= 0 || c->lin_v_heads <= 0 || c->lin_v_heads % c->lin_k_heads ||
         c->lin_k_dim <= 0 || c->lin_v_dim <= 0 || c->conv_kernel < 1))
        return bad(e, "linear_num_value_heads must be a multiple of linear_num_key_heads, dims positive");
    for (int i = 0; i < c->n_layers; i++)
        if (!c->layer_moe[i] && c->intermediate_size <= 0)
            return bad(e, "a dense MLP layer needs intermediate_size");
    return SL_OK;
}

/* quantization_config: only FP8 block-wise (the official -FP8 releases). */
static sl_status parse_quant(sl_model_config *c, json_t *q, sl_err *e)
{
    if (!q || json_is_null(q)) return SL_OK;
    if (!json_is_object(q)) return bad(e, "quantization_config must be an object");
    const char *method = json_string_value(json_object_get(q, "quant_method"));
    if (!method || strcmp(method, "fp8"))
        return sl_err_set(e, SL_ERR_UNSUPPORTED,
                          "config.json: quantization_config.quant_method '%s' is not supported (fp8)",
                          method ? method : "(missing)");
    json_t *fmt = json_object_get(q, "fmt");
    if (fmt && (!json_is_string(fmt) || strcmp(json_string_value(fmt), "e4m3")))
        return sl_err_set(e, SL_ERR_UNSUPPORTED,
                          "config.json: quantization_config.fmt '%s' is not supported (e4m3)",
                          json_is_string(fmt) ? json_string_value(fmt) : "(not a string)");
    json_t *bs = json_object_get(q, "weight_block_size");
    if (!json_is_array(bs) || json_array_size(bs) != 2 ||
        json_integer_value(json_array_get(bs, 0)) != SL_FP8_BLOCK ||
        json_integer_value(json_array_get(bs, 1)) != SL_FP8_BLOCK)
        return sl_err_set(e, SL_ERR_UNSUPPORTED,
                          "config.json: quantization_config.weight_block_size must be [128, 128] "
                          "(per-tensor and other block sizes are not supported)");
    const char *act = json_string_value(json_object_get(q, "activation_scheme"));
    if (act && strcmp(act, "dynamic"))
        return sl_err_set(e, SL_ERR_UNSUPPORTED,
                          "config.json: quantization_config.activation_scheme '%s' is not supported: "
                          "sluice quantizes activations dynamically per token and 128-group and reads "
                          "no input_scale tensors (dynamic)", act);
    c->quant_fp8 = 1;
    return SL_OK;
}

sl_status sl_model_config_parse(sl_model_config *c, const char *config_json,
                                const char *generation_json, sl_err *e)
{
    memset(c, 0, sizeof *c);
    json_error_t je;
    json_t *root = json_loads(config_json, 0, &je);
    if (!root || !json_is_object(root)) {
        json_decref(root);
        return sl_err_set(e, SL_ERR_PARSE, "config.json: %s (line %d)", je.text, je.line);
    }
    sl_status st = SL_OK;
    json_t *archs = json_object_get(root, "architectures");
    const char *arch = json_string_value(json_array_get(archs, 0));
    const char *mt = json_string_value(json_object_get(root, "model_type"));
    if (!arch) arch = "";
    snprintf(c->arch_name, sizeof c->arch_name, "%s", arch);
    snprintf(c->model_type, sizeof c->model_type, "%s", mt ? mt : "");
    if (!strcmp(arch, "Qwen3ForCausalLM") || (!*arch && mt && !strcmp(mt, "qwen3"))) {
        c->arch = SL_ARCH_QWEN3;
    } else if (!strcmp(arch, "Qwen3MoeForCausalLM") || (!*arch && mt && !strcmp(mt, "qwen3_moe"))) {
        c->arch = SL_ARCH_QWEN3_MOE;
    } else if (!strcmp(arch, "Qwen3NextForCausalLM") || (!*arch && mt && !strcmp(mt, "qwen3_next"))) {
        c->arch = SL_ARCH_QWEN3_NEXT;
    } else {
        st = sl_err_set(e, SL_ERR_UNSUPPORTED,
                        "config.json: unsupported architecture '%s' (model_type '%s'); supported: "
                        "Qwen3ForCausalLM, Qwen3MoeForCausalLM, Qwen3NextForCausalLM",
                        arch, mt ? mt : "");
        goto done;
    }
    int next = c->arch == SL_ARCH_QWEN3_NEXT;
    c->vocab_size = get_int(root, "vocab_size", 0);
    c->hidden_size = get_int(root, "hidden_size", 0);
    c->n_layers = get_int(root, "num_hidden_layers", 0);
    c->n_heads = get_int(root, "num_attention_heads", 0);
    c->n_kv_heads = get_int(root, "num_key_value_heads", c->n_heads);
    c->head_dim = get_int(root, "head_dim", c->n_heads > 0 ? c->hidden_size / c->n_heads : 0);
    double prf = rope_value(root, "partial_rotary_factor", next ? 0.25 : 1.0);
    if (!(prf > 0.0 && prf <= 1.0)) { /* also catches NaN */
        st = bad(e, "partial_rotary_factor must be in (0, 1]");
        goto done;
    }
    c->rot_dim = (int)(c->head_dim * prf);
    c->rope_theta = rope_value(root, "rope_theta", 10000.0);
    c->rms_eps = (float)get_num(root, "rms_norm_eps", 1e-6);
    c->intermediate_size = get_int(root, "intermediate_size", 0);
    c->tie_embeddings = get_bool(root, "tie_word_embeddings", 0);
    c->max_position_embeddings = get_int(root, "max_position_embeddings", 32768);
    if (c->arch != SL_ARCH_QWEN3) {
        /* transformers 5 writes num_local_experts; released checkpoints num_experts */
        c->n_experts = get_int(root, "num_experts", get_int(root, "num_local_experts", 0));
        c->n_experts_per_tok = get_int(root, "num_experts_per_tok", 0);
        c->moe_intermediate_size = get_int(root, "moe_intermediate_size", 0);
        c->norm_topk_prob = get_bool(root, "norm_topk_prob", next ? 1 : 0);
        if (next) c->shared_expert_intermediate_size = get_int(root, "shared_expert_intermediate_size", 0);
    }
    int step = get_int(root, "decoder_sparse_step", 1);
    if (step < 1) step = 1;
    json_t *mlp_only = json_object_get(root, "mlp_only_layers");
    for (int i = 0; i < c->n_layers && i < SL_MAX_LAYERS; i++) {
        int dense = 0;
        size_t j;
        json_t *x;
        json_array_foreach(mlp_only, j, x) if (json_integer_value(x) == i) dense = 1;
        c->layer_moe[i] = !dense && c->n_experts > 0 && (i + 1) % step == 0;
    }
    if (next) {
        c->lin_k_heads = get_int(root, "linear_num_key_heads", 0);
        c->lin_v_heads = get_int(root, "linear_num_value_heads", 0);
        c->lin_k_dim = get_int(root, "linear_key_head_dim", 0);
        c->lin_v_dim = get_int(root, "linear_value_head_dim", 0);
        c->conv_kernel = get_int(root, "linear_conv_kernel_dim", 4);
        json_t *lt = json_object_get(root, "layer_types");
        int interval = get_int(root, "full_attention_interval", 4);
        if (json_is_array(lt)) {
            if ((int)json_array_size(lt) != c->n_layers) {
                st = bad(e, "layer_types must list num_hidden_layers entries");
                goto done;
            }
            for (int i = 0; i < c->n_layers; i++) {
                const char *t = json_string_value(json_array_get(lt, (size_t)i));
                if (t && !strcmp(t, "linear_attention")) c->layer_linear[i] = 1;
                else if (t && !strcmp(t, "full_attention")) c->layer_linear[i] = 0;
                else {
                    st = bad(e, "layer_types entries must be linear_attention or full_attention");
                    goto done;
                }
            }
        } else {
            if (interval < 1) interval = 1;
            for (int i = 0; i < c->n_layers && i < SL_MAX_LAYERS; i++)
                c->layer_linear[i] = (i + 1) % interval != 0;
        }
    }
    for (int i = 0; i < c->n_layers && i < SL_MAX_LAYERS; i++) {
        if (c->layer_linear[i]) c->n_linear_layers++;
        else c->n_attn_layers++;
    }
    if ((st = parse_quant(c, json_object_get(root, "quantization_config"), e))) goto done;
    c->bos_token_id = get_int(root, "bos_token_id", -1);
    read_eos(c, json_object_get(root, "eos_token_id"));
    c->gen = (sl_gen_defaults){.temperature = 1.0f, .top_p = 1.0f, .min_p = 0.0f,
                               .repetition_penalty = 1.0f, .top_k = -1};
    if (generation_json) {
        json_t *g = json_loads(generation_json, 0, &je);
        if (!json_is_object(g)) {
            json_decref(g);
            st = sl_err_set(e, SL_ERR_PARSE, "generation_config.json: %s (line %d)", je.text, je.line);
            goto done;
        }
        c->gen.temperature = (float)get_num(g, "temperature", c->gen.temperature);
        c->gen.top_p = (float)get_num(g, "top_p", c->gen.top_p);
        c->gen.top_k = get_int(g, "top_k", c->gen.top_k);
        c->gen.min_p = (float)get_num(g, "min_p", c->gen.min_p);
        c->gen.repetition_penalty = (float)get_num(g, "repetition_penalty", c->gen.repetition_penalty);
        if (!get_bool(g, "do_sample", 1)) c->gen.temperature = 0.0f;
        if (json_object_get(g, "eos_token_id")) read_eos(c, json_object_get(g, "eos_token_id"));
        json_decref(g);
    }
    st = validate(c, e);
done:
    json_decref(root);
    return st;
}

sl_status sl_model_config_load(sl_model_config *c, const char *dir, sl_err *e)
{
    char path[4096];
    char *cfg = NULL, *gen = NULL;
    sl_status st = sl_file_read(sl_path_join(path, sizeof path, dir, "config.json"), &cfg, NULL, e);
    if (st) return st;
    sl_path_join(path, sizeof path, dir, "generation_config.json");
    if (sl_file_exists(path) && (st = sl_file_read(path, &gen, NULL, e))) {
        free(cfg);
        return st;
    }
    st = sl_model_config_parse(c, cfg, gen, e);
    free(cfg);
    free(gen);
    return st;
}

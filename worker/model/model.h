/* worker/model.h: Qwen3-family model definitions (qwen3, qwen3_moe,
 * qwen3_next), loading, and the forward pass over a batch.
 *
 * A model is config + weights on one backend. Weights are read from a Hugging
 * Face directory (config.json, model.safetensors or a sharded index), upcast
 * or cast to the backend's weight dtype and repacked at load so kernels see
 * fused layouts:
 *   attention  wqkv [q | (gate) | k | v] rows (qwen3_next q/gate de-interleaved)
 *   GDN        in_proj_qkvz rows reordered to [q all | k all | v all | z all],
 *              in_proj_ba to [b all | a all]: the conv input is a prefix of
 *              the projection's output, no split kernel needed
 *   MLP / MoE  gate_up [2I, H] (gate rows first), experts stacked [E, 2I, H]
 * `--load-format dummy` fills every tensor with sl_rng values instead: the
 * value of checkpoint tensor N's element i is a function of (seed, N, i), so
 * dummy packed tensors, TP shards and make-tiny checkpoints agree.
 * Tensor parallel (opts->comm): each rank reads only its slice of each
 * checkpoint tensor (docs/parallel.md, Sharding).
 *
 * The forward pass reads and writes an sl_model_cache (paged KV for
 * attention layers, conv + SSM state slots for linear-attention layers)
 * described per call by an sl_batch_meta (see kernels/backend.h).
 *
 *   sl_model *m; sl_err e = {0};
 *   sl_model_load(&m, "/models/tiny", be, NULL, &e);
 *   sl_model_cache c; sl_model_cache_alloc(m, &c, n_pages, page_size, n_slots, &e);
 *   sl_model_forward(m, &c, &meta, rows, n_rows, &logits, &e);
 *
 * Threads: one thread drives a model and its caches at a time.
 */
#ifndef SL_MODEL_H
#define SL_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "sl_err.h"

#define SL_MAX_LAYERS 256
#define SL_MAX_EOS 8

typedef enum sl_arch {
    SL_ARCH_QWEN3 = 0,
    SL_ARCH_QWEN3_MOE,
    SL_ARCH_QWEN3_NEXT,
} sl_arch;

typedef struct sl_gen_defaults { /* generation_config.json (or neutral values) */
    float temperature, top_p, min_p, repetition_penalty;
    int top_k;
} sl_gen_defaults;

typedef struct sl_model_config {
    sl_arch arch;
    char arch_name[64]; /* "Qwen3NextForCausalLM" */
    char model_type[32]; /* "qwen3_next" */
    int vocab_size, hidden_size, n_layers;
    int n_heads, n_kv_heads, head_dim, rot_dim;
    double rope_theta;
    float rms_eps;
    int intermediate_size;
    int tie_embeddings;
    int max_position_embeddings;
    /* MoE */
    int n_experts, n_experts_per_tok, moe_intermediate_size, norm_topk_prob;
    int shared_expert_intermediate_size; /* qwen3_next only; 0 = none */
    /* Gated DeltaNet (qwen3_next) */
    int lin_k_heads, lin_v_heads, lin_k_dim, lin_v_dim, conv_kernel;
    uint8_t layer_linear[SL_MAX_LAYERS]; /* 1: linear attention, 0: full attention */
    uint8_t layer_moe[SL_MAX_LAYERS];    /* 1: sparse MoE block, 0: dense MLP */
    int n_attn_layers, n_linear_layers;
    /* quantization_config: 1 = FP8 block-wise checkpoint (quant_method fp8,
     * fmt e4m3, weight_block_size [128, 128], dynamic activations). Which
     * projections are fp8 is told by their weight_scale_inv tensors. */
    int quant_fp8;
    /* tokens */
    int bos_token_id;
    int eos_token_ids[SL_MAX_EOS];
    int n_eos;
    sl_gen_defaults gen;
} sl_model_config;

/* Parses config.json text (and optional generation_config.json text, may be
 * NULL). Unknown architectures and inconsistent values are errors. */
sl_status sl_model_config_parse(sl_model_config *c, const char *config_json,
                                const char *generation_json, sl_err *e);
/* Reads dir/config.json and dir/generation_config.json (if present). */
sl_status sl_model_config_load(sl_model_config *c, const char *dir, sl_err *e);
/* Conv channels of a linear layer: 2·Hk·Dk + Hv·Dv. */
int sl_model_config_conv_dim(const sl_model_config *c);

typedef struct sl_comm sl_comm; /* kernels/comm/comm.h */

typedef struct sl_model_load_opts {
    int dummy;        /* 1: seeded random weights, no weight files read */
    uint64_t seed;    /* dummy weights seed */
    int quantize_fp8; /* 1: (--quantization fp8) quantize the projections that FP8
                         checkpoints quantize (sl_model_fp8_target) block-wise at
                         load, exactly as make-tiny --quantization fp8 writes them
                         (under TP: blocks of the global tensor, then sliced) */
    int no_shared_fusion; /* 1: (--disable-shared-experts-fusion) keep a shared
                             expert apart from the routed ones (its own
                             matmuls, gate and add) instead of storing it as
                             one more expert that every token routes to */
    sl_comm *comm;    /* tensor parallelism: NULL = TP 1; otherwise this rank
                         (sl_comm_rank of sl_comm_world_size) loads only its
                         shard and sl_model_forward runs the collectives on comm.
                         Borrowed: must outlive the model. */
} sl_model_load_opts;

/* 1 if the checkpoint tensor name is a projection weight that FP8 block-wise
 * checkpoints quantize: q/k/v/o_proj, gate/up/down_proj (MLP, experts, shared
 * expert), linear_attn in_proj_qkvz and out_proj. Router gates, the shared
 * expert gate, in_proj_ba, conv1d, norms, embeddings and the LM head stay in
 * their float dtype. */
int sl_model_fp8_target(const char *name);

typedef struct sl_model sl_model;

/* Loads config and weights from dir onto be (opts may be NULL). The model
 * keeps be but does not own it. Errors name the missing or misshapen tensor
 * and the expected shape. */
sl_status sl_model_load(sl_model **out, const char *dir, sl_backend *be,
                        const sl_model_load_opts *opts, sl_err *e);
/* A model from a config alone with dummy weights (opts->dummy implied; opts
 * may be NULL: seed 0, TP 1). */
sl_status sl_model_from_config(sl_model **out, const sl_model_config *c, sl_backend *be,
                               const sl_model_load_opts *opts, sl_err *e);
/* Whether config c can be split over tp ranks; the error names the
 * dimension ("--tp-size 3 does not divide num_key_value_heads 2"). Heads,
 * linear key heads and intermediate sizes must divide; KV heads are
 * replicated when tp > kv heads (then tp must be a multiple of them); a
 * vocabulary that does not divide is replicated instead of split. */
sl_status sl_model_tp_check(const sl_model_config *c, int tp, sl_err *e);
/* Whether an FP8 model of config c (an FP8 checkpoint, or --quantization
 * fp8) can be split over tp ranks: the row-parallel projections (o_proj,
 * out_proj, down_proj of the MLP, experts and shared expert) are split along
 * their input dim, which must then fall on the 128-column FP8 blocks; the
 * error names it ("--tp-size 4: down_proj input dim 768/4 = 192 is not a
 * multiple of the 128-wide FP8 block"). Row splits need no alignment. */
sl_status sl_model_fp8_tp_check(const sl_model_config *c, int tp, sl_err *e);
void sl_model_free(sl_model *m);

/* Lists the tensors a Hugging Face checkpoint of config c holds (name and
 * shape as on disk), with the dummy-initialisation range used for each
 * (offset ± scale). make-tiny writes checkpoints from this list. */
typedef void (*sl_tensor_cb)(void *ctx, const char *name, int ndim, const int64_t *shape,
                             float scale, float offset);
sl_status sl_model_checkpoint_tensors(const sl_model_config *c, sl_tensor_cb cb, void *ctx,
                                      sl_err *e);
const sl_model_config *sl_model_cfg(const sl_model *m);
sl_backend *sl_model_backend(const sl_model *m);

/* Per-model cache memory. Attention layer j: k[j], v[j] are
 * [n_pages*page_size, Hkv*D]; linear layer j: conv[j] is [n_slots, C, K-1]
 * fp32, ssm[j] is [n_slots, Hv, Dk, Dv] fp32. Slot and page ids index these. */
typedef struct sl_model_cache {
    int page_size, n_pages, n_slots;
    int n_attn, n_linear;
    sl_tensor *k, *v;
    sl_tensor *conv, *ssm;
} sl_model_cache;

sl_status sl_model_cache_alloc(sl_model *m, sl_model_cache *c, int n_pages, int page_size,
                               int n_slots, sl_err *e);
void sl_model_cache_free(sl_model *m, sl_model_cache *c);
/* Bytes one KV page / one state slot costs across all layers (for sizing).
 * Tensor parallel: this rank's share (its KV heads, its conv channels and
 * value heads); page and slot ids are global, identical on every rank. */
size_t sl_model_page_bytes(const sl_model *m, int page_size);
size_t sl_model_slot_bytes(const sl_model *m);
/* Copies (or zeroes, src = -1) state slots in every linear layer. */
void sl_model_cache_copy_slots(sl_model *m, sl_model_cache *c, const int32_t *dst,
                               const int32_t *src, int n);

/* Debugging: fn is called after each op of a forward with the layer index
 * (-1 outside the layers), a short op name ("qkv", "gdn", "experts", ...)
 * and the op's output, a view into the model's scratch (valid only during
 * the call; sl_be_download waits for it). NULL turns tracing off; unset, it
 * costs nothing. Not while a CUDA graph is captured (downloads wait). */
typedef void (*sl_model_trace_fn)(void *ctx, int layer, const char *op, const sl_tensor *t);
void sl_model_set_trace(sl_model *m, sl_model_trace_fn fn, void *ctx);

/* Runs one forward over the batch in meta (sl_be_prepare is called inside)
 * and writes f32 logits of tokens rows[0..n_rows) into logits, a tensor of
 * at least [n_rows, vocab] (F32, rows contiguous) on the model's backend.
 * Tensor parallel: every rank calls it with the same batch; the forward runs
 * the all-reduces and the logits all-gather itself, so logits hold the FULL
 * vocabulary on every rank. A failed collective is returned as an error
 * (the communicator is then broken for good). */
sl_status sl_model_forward(sl_model *m, sl_model_cache *c, sl_batch_meta *meta,
                           const int32_t *rows, int n_rows, sl_tensor *logits, sl_err *e);

/* Decode graphs (backends with sl_be_has_graphs): once enabled, a batch of
 * n <= max_bs single-token sequences whose logits rows are 0..n-1 (plain
 * decode) runs as one replay of a graph captured for the smallest bucket of
 * batch sizes >= n (every size to 16, then steps of 8, 16 and 32 up to
 * max_bs), padded with one-token sequences on the cache's spare page and
 * state slot (sl_model_cache_alloc keeps one of each past its counts). A
 * bucket is captured at its first use (an eager forward first, which also
 * tunes the matmul plans) and again whenever what it baked in moved: the
 * scratch, the cache, the logits tensor or meta->feed_ids. Sequences must
 * stay within max_ctx cache positions (longer ones run eagerly). Logits
 * tensors must hold at least max_bs rows. max_bs <= 0 turns graphs off.
 * SL_ERR_UNSUPPORTED on backends without graphs. */
sl_status sl_model_enable_graphs(sl_model *m, int max_bs, int max_ctx, sl_err *e);
/* The largest bucket (0 when graphs are off). */
int sl_model_graph_max_bs(const sl_model *m);
/* Captures every bucket now (all-padding batches), so serving never pays a
 * capture; feed_ids as the forwards will pass it. Waits. */
sl_status sl_model_warm_graphs(sl_model *m, sl_model_cache *c, sl_tensor *logits,
                               const int32_t *feed_ids, sl_err *e);

#endif

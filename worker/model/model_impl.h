/* worker/model/model_impl.h: the model's private state, shared by model.c
 * (loading) and model_forward.c (caches, forward, decode graphs). Not for
 * other modules. */
#ifndef SL_MODEL_IMPL_H
#define SL_MODEL_IMPL_H

#include "comm.h"
#include "model.h"

typedef struct layer {
    int linear, moe, cache_idx; /* cache_idx: index among attention or linear layers */
    /* the shared expert is expert E of ex_gate_up / ex_down and its gate row
     * E of router (sl_be_moe_route's shared column); sh_* stay empty */
    int shared_fused;
    sl_tensor in_norm, post_norm;
    /* attention: wqkv rows [q | gate (qwen3_next) | k | v] */
    sl_tensor wqkv, wo, q_norm, k_norm;
    /* Gated DeltaNet: w_qkvz rows [q | k | v | z], w_ba rows [b | a] */
    sl_tensor w_qkvz, w_ba, conv_w, A_log, dt_bias, gnorm, w_out;
    /* feed-forward */
    sl_tensor w_gate_up, w_down;
    sl_tensor router, ex_gate_up, ex_down;
    sl_tensor sh_gate_up, sh_down, sh_gate;
    /* FP8 scales of the projections above that load as F8E4M3: F32
     * [rows, ceil(cols/128)] (3-D [E, rows, ...] for experts), one scale row
     * per weight row, so fusing and row permutations need no 128-row block
     * alignment (see sl_be_matmul_fp8). data NULL: that projection is not fp8.
     * Keep these last: sl_model_free releases in_norm .. ex_down_s. */
    sl_tensor wqkv_s, wo_s, w_qkvz_s, w_ba_s, w_out_s, w_gate_up_s, w_down_s, sh_gate_up_s, sh_down_s;
    sl_tensor ex_gate_up_s, ex_down_s;
} layer;

/* y = x · wᵀ with w plain or FP8 (ws its scales, data NULL when plain); xq:
 * x's FP8 codes from the op that just wrote x (sl_fp8_act), or NULL */
static inline void model_proj(sl_backend *be, sl_tensor *y, const sl_tensor *x, const sl_tensor *w,
                              const sl_tensor *ws, const sl_fp8_act *xq)
{
    if (ws->data) sl_be_matmul_fp8(be, y, x, w, ws, xq);
    else sl_be_matmul(be, y, x, w);
}

/* Activations for up to cap tokens; views of the first T rows are used. */
typedef struct scratch {
    int cap, cap_rows;
    sl_tensor x, xn, d, big, mid, mid2, attn, conv, ba, rlogits, ids, wts, shared, sgate;
    sl_tensor gx, gd, gn;
    sl_tensor lg; /* vocab-parallel: this rank's logits columns [cap_rows, nv] */
    /* FP8 models: the codes of the activation the next FP8 projection reads,
     * made by the op that writes it (the norms, silu_mul, the attention
     * gate) for batches of up to sl_be_fp8_act_rows tokens; codes.data NULL
     * where the model or the backend has none */
    sl_fp8_act xq;
} scratch;

#define MAX_GRAPHS 40

/* One captured decode graph and what it baked in: replayed only while all of
 * it still holds. */
typedef struct graph_slot {
    sl_be_graph *g;
    uint64_t scratch_gen;
    const sl_model_cache *cache;
    const void *k0, *logits, *feed_ids;
} graph_slot;

/* Decode graphs: buckets of batch sizes, and the padded batch they run. */
typedef struct graphs {
    int max_bs, max_ctx, n_buckets;
    int bucket[MAX_GRAPHS];
    graph_slot slot[MAX_GRAPHS];
    int cap, pt_cap; /* host arrays below: [cap] and [pt_cap] */
    int32_t *ids, *pos, *q_start, *kv_len, *kv_slot, *state_slot, *state_fresh;
    int32_t *track_slot, *track_len, *feed, *rows, *pt;
} graphs;

/* This rank's part of a tensor-parallel group (docs/parallel.md, Sharding).
 * size 1 (comm NULL): the whole model. */
typedef struct tp_shard {
    sl_comm *comm;
    int rank, size;
    int kv_head0;       /* first KV head this rank holds (replicated when size > kv heads) */
    int vocab_parallel; /* embed / lm_head hold vocabulary rows [v0, v0 + nv) */
    int64_t v0, nv;     /* nv = vocab_size when replicated */
} tp_shard;

struct sl_model {
    sl_model_config cfg; /* the checkpoint's (global) config: what sl_model_cfg returns */
    sl_model_config lc;  /* this rank's dims: heads, KV heads, intermediate sizes, linear
                            heads divided by the TP size; the forward and caches use it */
    tp_shard tp;
    sl_backend *be;
    sl_tensor embed, final_norm, lm_head;
    int lm_head_owned;
    layer *layers;
    scratch s;
    uint64_t scratch_gen; /* bumped whenever scratch moves */
    graphs gr;
    sl_model_trace_fn trace; /* NULL: no tracing */
    void *trace_ctx;
};

/* Reports op's output t of layer li (-1: outside the layers) to the trace. */
static inline void trace(const sl_model *m, int li, const char *op, const sl_tensor *t)
{
    if (m->trace) m->trace(m->trace_ctx, li, op, t);
}

#define SHP(...) ((const int64_t[]){__VA_ARGS__})

static inline void release_all(sl_backend *be, sl_tensor *t, size_t n)
{
    for (size_t i = 0; i < n; i++) sl_be_release(be, &t[i]);
}

/* model.c: releases the forward scratch tensors */
void model_scratch_free(sl_model *m);
/* model_forward.c: frees the decode graphs */
void model_graphs_free(sl_model *m);

#endif

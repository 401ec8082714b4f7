/* Qwen3-family models: weight packing at load and the forward pass.
 * The math follows docs/qwen3_next.md (transformers 5.17). */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"
#include "sl_file.h"
#include "sl_log.h"

typedef struct layer {
    int linear, moe, cache_idx; /* cache_idx: index among attention or linear layers */
    sl_tensor in_norm, post_norm;
    /* attention: wqkv rows [q | gate (qwen3_next) | k | v] */
    sl_tensor wqkv, wo, q_norm, k_norm;
    /* Gated DeltaNet: w_qkvz rows [q | k | v | z], w_ba rows [b | a] */
    sl_tensor w_qkvz, w_ba, conv_w, A_log, dt_bias, gnorm, w_out;
    /* feed-forward */
    sl_tensor w_gate_up, w_down;
    sl_tensor router, ex_gate_up, ex_down;
    sl_tensor sh_gate_up, sh_down, sh_gate;
} layer;

/* Activations for up to cap tokens; views of the first T rows are used. */
typedef struct scratch {
    int cap, cap_rows;
    sl_tensor x, xn, d, big, mid, mid2, attn, conv, ba, rlogits, ids, wts, shared, sgate;
    sl_tensor gx, gd, gn;
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

struct sl_model {
    sl_model_config cfg;
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

const sl_model_config *sl_model_cfg(const sl_model *m) { return &m->cfg; }

void sl_model_set_trace(sl_model *m, sl_model_trace_fn fn, void *ctx)
{
    m->trace = fn;
    m->trace_ctx = ctx;
}

/* Reports op's output t of layer li (-1: outside the layers) to the trace. */
static void trace(const sl_model *m, int li, const char *op, const sl_tensor *t)
{
    if (m->trace) m->trace(m->trace_ctx, li, op, t);
}
sl_backend *sl_model_backend(const sl_model *m) { return m->be; }

/* ---- loading ---------------------------------------------------------------
 * A packed tensor is built on the host in f32 from one or more checkpoint
 * tensors ("pieces"), then uploaded once. A piece may be a row permutation:
 * its rows form `groups` blocks of segments seg[0..nseg) and the packed layout
 * wants segment j of every group together (q_proj [q_h | g_h] per head →
 * [all q | all g]; in_proj_qkvz per key group → [q | k | v | z]). */

typedef struct loader {
    sl_model *m;
    sl_st *st;
    sl_dtype wd; /* weight dtype of the backend */
    int dummy;
    /* collect mode: only report checkpoint tensors (make-tiny) */
    sl_tensor_cb collect;
    void *collect_ctx;
    float scale, offset;
    uint64_t seed;
    sl_err *e;
    sl_status status;
    float *stage;
    int64_t rows, cols;
    sl_tensor *cur;
} loader;

static uint64_t name_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static void fmt_shape(char *buf, size_t n, int ndim, const int64_t *shape)
{
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int d = 0; d < ndim && k < n; d++)
        k += (size_t)snprintf(buf + k, n - k, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

/* Starts packed tensor dst of shape [ne0, ne1(, ne2)], dtype dt. id names it
 * for dummy seeding; dummy values are offset + scale·U(−1, 1). */
static void pack_begin(loader *L, sl_tensor *dst, sl_dtype dt, int ndim, const int64_t *ne,
                       const char *id, float scale, float offset)
{
    if (L->status) return;
    L->scale = scale;
    L->offset = offset;
    if (L->collect) return;
    L->status = sl_be_alloc(L->m->be, dst, dt, ndim, ne, L->e);
    if (L->status) return;
    L->cur = dst;
    if (L->dummy) {
        sl_be_fill_random(L->m->be, dst, L->seed ^ name_hash(id), scale, offset);
        return;
    }
    L->rows = sl_tensor_rows(dst);
    L->cols = sl_tensor_cols(dst);
    L->stage = malloc(sizeof(float) * (size_t)(L->rows * L->cols));
    if (!L->stage) L->status = sl_err_set(L->e, SL_ERR_NOMEM, "staging %s: out of memory", id);
}

static void pack_piece(loader *L, const char *name, int ndim, const int64_t *shape, int64_t row0,
                       int groups, int nseg, const int64_t *seg)
{
    if (L->status || L->dummy) return;
    if (L->collect) {
        L->collect(L->collect_ctx, name, ndim, shape, L->scale, L->offset);
        return;
    }
    const sl_st_tensor *t = sl_st_find(L->st, name);
    char want[96], got[96];
    fmt_shape(want, sizeof want, ndim, shape);
    if (!t) {
        L->status = sl_err_set(L->e, SL_ERR_NOTFOUND, "missing tensor %s (expected shape %s)", name, want);
        return;
    }
    int same = t->ndim == ndim;
    for (int d = 0; same && d < ndim; d++) same = t->shape[d] == shape[d];
    if (!same) {
        fmt_shape(got, sizeof got, t->ndim, t->shape);
        L->status = sl_err_set(L->e, SL_ERR_INVALID, "tensor %s has shape %s, expected %s", name, got, want);
        return;
    }
    /* a 1-D tensor is one row; otherwise dim 0 is rows, the rest columns */
    int64_t rows = ndim == 1 ? 1 : shape[0], cols = ndim == 1 ? shape[0] : 1;
    for (int d = 1; d < ndim; d++) cols *= shape[d];
    SL_ASSERT(cols == L->cols && row0 + rows <= L->rows);
    if (ndim == 1) seg = &rows;
    int64_t per_group = 0;
    for (int j = 0; j < nseg; j++) per_group += seg[j];
    SL_ASSERT(per_group * groups == rows);
    /* source row (g, j, i) → packed row row0 + j·groups·… */
    int64_t seg_base = 0;
    for (int j = 0; j < nseg; j++) {
        int64_t src_off = 0;
        for (int q = 0; q < j; q++) src_off += seg[q];
        for (int g = 0; g < groups; g++)
            for (int64_t i = 0; i < seg[j]; i++) {
                int64_t src = g * per_group + src_off + i;
                int64_t dst = row0 + seg_base + g * seg[j] + i;
                float *o = L->stage + dst * cols;
                for (int64_t c = 0; c < cols; c++) o[c] = sl_load_f32(t->data, t->dtype, src * cols + c);
            }
        seg_base += seg[j] * groups;
    }
}

/* identity piece */
static void pack_rows(loader *L, const char *name, int ndim, const int64_t *shape, int64_t row0)
{
    pack_piece(L, name, ndim, shape, row0, 1, 1, shape);
}

static void pack_end(loader *L)
{
    if (L->collect) return;
    if (!L->status && !L->dummy)
        L->status = sl_be_upload(L->m->be, L->cur, L->stage, SL_DTYPE_F32, L->e);
    free(L->stage);
    L->stage = NULL;
}

/* A whole packed tensor from one checkpoint tensor of the same shape. */
static void load_one(loader *L, sl_tensor *dst, sl_dtype dt, const char *name, int ndim,
                     const int64_t *ne, float scale, float offset)
{
    pack_begin(L, dst, dt, ndim, ne, name, scale, offset);
    pack_rows(L, name, ndim, ne, 0);
    pack_end(L);
}

#define SHP(...) ((const int64_t[]){__VA_ARGS__})

static float mat_scale(int64_t fan_in) { return sqrtf(3.0f / (float)fan_in); }

static void load_mlp(loader *L, sl_tensor *gu, sl_tensor *down, const char *pfx, int64_t H,
                     int64_t I)
{
    char n[256];
    sl_dtype wd = L->wd;
    snprintf(n, sizeof n, "%s.gate_up", pfx);
    pack_begin(L, gu, wd, 2, SHP(2 * I, H), n, mat_scale(H), 0);
    snprintf(n, sizeof n, "%s.gate_proj.weight", pfx);
    pack_rows(L, n, 2, SHP(I, H), 0);
    snprintf(n, sizeof n, "%s.up_proj.weight", pfx);
    pack_rows(L, n, 2, SHP(I, H), I);
    pack_end(L);
    snprintf(n, sizeof n, "%s.down_proj.weight", pfx);
    load_one(L, down, wd, n, 2, SHP(H, I), mat_scale(I), 0);
}

static void load_layer(loader *L, int i)
{
    const sl_model_config *c = &L->m->cfg;
    layer *ly = &L->m->layers[i];
    sl_dtype wd = L->wd;
    int next = c->arch == SL_ARCH_QWEN3_NEXT;
    float norm_off = next ? 0.0f : 1.0f; /* qwen3_next norms are zero-centred (1+w) */
    int64_t H = c->hidden_size;
    char p[128], n[256];
    snprintf(p, sizeof p, "model.layers.%d", i);

    snprintf(n, sizeof n, "%s.input_layernorm.weight", p);
    load_one(L, &ly->in_norm, SL_DTYPE_F32, n, 1, SHP(H), 0.1f, norm_off);
    snprintf(n, sizeof n, "%s.post_attention_layernorm.weight", p);
    load_one(L, &ly->post_norm, SL_DTYPE_F32, n, 1, SHP(H), 0.1f, norm_off);

    if (ly->linear) {
        int64_t Hk = c->lin_k_heads, Hv = c->lin_v_heads, Dk = c->lin_k_dim, Dv = c->lin_v_dim;
        int64_t r = Hv / Hk, C = sl_model_config_conv_dim(c), K = c->conv_kernel;
        snprintf(n, sizeof n, "%s.linear_attn.in_proj_qkvz.weight", p);
        pack_begin(L, &ly->w_qkvz, wd, 2, SHP(C + Hv * Dv, H), n, mat_scale(H), 0);
        pack_piece(L, n, 2, SHP(2 * Hk * Dk + 2 * Hv * Dv, H), 0, (int)Hk, 4,
                   SHP(Dk, Dk, r * Dv, r * Dv));
        pack_end(L);
        snprintf(n, sizeof n, "%s.linear_attn.in_proj_ba.weight", p);
        pack_begin(L, &ly->w_ba, wd, 2, SHP(2 * Hv, H), n, mat_scale(H), 0);
        pack_piece(L, n, 2, SHP(2 * Hv, H), 0, (int)Hk, 2, SHP(r, r));
        pack_end(L);
        snprintf(n, sizeof n, "%s.linear_attn.conv1d.weight", p);
        pack_begin(L, &ly->conv_w, wd, 2, SHP(C, K), n, mat_scale(K), 0);
        pack_rows(L, n, 3, SHP(C, 1, K), 0);
        pack_end(L);
        snprintf(n, sizeof n, "%s.linear_attn.A_log", p);
        load_one(L, &ly->A_log, SL_DTYPE_F32, n, 1, SHP(Hv), 1.0f, 0.0f);
        snprintf(n, sizeof n, "%s.linear_attn.dt_bias", p);
        load_one(L, &ly->dt_bias, SL_DTYPE_F32, n, 1, SHP(Hv), 1.0f, 0.0f);
        snprintf(n, sizeof n, "%s.linear_attn.norm.weight", p);
        load_one(L, &ly->gnorm, SL_DTYPE_F32, n, 1, SHP(Dv), 0.1f, 1.0f);
        snprintf(n, sizeof n, "%s.linear_attn.out_proj.weight", p);
        load_one(L, &ly->w_out, wd, n, 2, SHP(H, Hv * Dv), mat_scale(Hv * Dv), 0);
    } else {
        int64_t Hq = c->n_heads, Hkv = c->n_kv_heads, D = c->head_dim;
        int64_t qrows = next ? 2 * Hq * D : Hq * D;
        snprintf(n, sizeof n, "%s.self_attn.qkv", p);
        pack_begin(L, &ly->wqkv, wd, 2, SHP(qrows + 2 * Hkv * D, H), n, mat_scale(H), 0);
        snprintf(n, sizeof n, "%s.self_attn.q_proj.weight", p);
        if (next) pack_piece(L, n, 2, SHP(qrows, H), 0, (int)Hq, 2, SHP(D, D));
        else pack_rows(L, n, 2, SHP(qrows, H), 0);
        snprintf(n, sizeof n, "%s.self_attn.k_proj.weight", p);
        pack_rows(L, n, 2, SHP(Hkv * D, H), qrows);
        snprintf(n, sizeof n, "%s.self_attn.v_proj.weight", p);
        pack_rows(L, n, 2, SHP(Hkv * D, H), qrows + Hkv * D);
        pack_end(L);
        snprintf(n, sizeof n, "%s.self_attn.o_proj.weight", p);
        load_one(L, &ly->wo, wd, n, 2, SHP(H, Hq * D), mat_scale(Hq * D), 0);
        snprintf(n, sizeof n, "%s.self_attn.q_norm.weight", p);
        load_one(L, &ly->q_norm, SL_DTYPE_F32, n, 1, SHP(D), 0.1f, norm_off);
        snprintf(n, sizeof n, "%s.self_attn.k_norm.weight", p);
        load_one(L, &ly->k_norm, SL_DTYPE_F32, n, 1, SHP(D), 0.1f, norm_off);
    }

    if (ly->moe) {
        int64_t E = c->n_experts, I = c->moe_intermediate_size;
        snprintf(n, sizeof n, "%s.mlp.gate.weight", p);
        load_one(L, &ly->router, wd, n, 2, SHP(E, H), mat_scale(H), 0);
        snprintf(n, sizeof n, "%s.mlp.experts.gate_up", p);
        pack_begin(L, &ly->ex_gate_up, wd, 3, SHP(E, 2 * I, H), n, mat_scale(H), 0);
        for (int64_t x = 0; x < E; x++) {
            snprintf(n, sizeof n, "%s.mlp.experts.%lld.gate_proj.weight", p, (long long)x);
            pack_rows(L, n, 2, SHP(I, H), x * 2 * I);
            snprintf(n, sizeof n, "%s.mlp.experts.%lld.up_proj.weight", p, (long long)x);
            pack_rows(L, n, 2, SHP(I, H), x * 2 * I + I);
        }
        pack_end(L);
        snprintf(n, sizeof n, "%s.mlp.experts.down", p);
        pack_begin(L, &ly->ex_down, wd, 3, SHP(E, H, I), n, mat_scale(I), 0);
        for (int64_t x = 0; x < E; x++) {
            snprintf(n, sizeof n, "%s.mlp.experts.%lld.down_proj.weight", p, (long long)x);
            pack_rows(L, n, 2, SHP(H, I), x * H);
        }
        pack_end(L);
        if (c->shared_expert_intermediate_size > 0) {
            snprintf(n, sizeof n, "%s.mlp.shared_expert", p);
            load_mlp(L, &ly->sh_gate_up, &ly->sh_down, n, H, c->shared_expert_intermediate_size);
            snprintf(n, sizeof n, "%s.mlp.shared_expert_gate.weight", p);
            load_one(L, &ly->sh_gate, wd, n, 2, SHP(1, H), mat_scale(H), 0);
        }
    } else {
        snprintf(n, sizeof n, "%s.mlp", p);
        load_mlp(L, &ly->w_gate_up, &ly->w_down, n, H, c->intermediate_size);
    }
}

/* Walks every weight of the model: loads, fills with dummy values, or (with
 * L->collect) only reports checkpoint tensors. */
static sl_status walk_weights(loader *L)
{
    sl_model *m = L->m;
    const sl_model_config *c = &m->cfg;
    m->layers = calloc((size_t)c->n_layers, sizeof(layer));
    if (!m->layers) return sl_err_set(L->e, SL_ERR_NOMEM, "out of memory");
    int na = 0, nl = 0;
    for (int i = 0; i < c->n_layers; i++) {
        layer *ly = &m->layers[i];
        ly->linear = c->layer_linear[i];
        ly->moe = c->layer_moe[i];
        ly->cache_idx = ly->linear ? nl++ : na++;
    }
    int64_t V = c->vocab_size, H = c->hidden_size;
    sl_dtype wd = L->wd;
    load_one(L, &m->embed, wd, "model.embed_tokens.weight", 2, SHP(V, H), 1.0f, 0);
    for (int i = 0; i < c->n_layers && !L->status; i++) load_layer(L, i);
    load_one(L, &m->final_norm, SL_DTYPE_F32, "model.norm.weight", 1, SHP(H), 0.1f,
             c->arch == SL_ARCH_QWEN3_NEXT ? 0.0f : 1.0f);
    if (c->tie_embeddings) {
        m->lm_head = m->embed;
    } else {
        load_one(L, &m->lm_head, wd, "lm_head.weight", 2, SHP(V, H), mat_scale(H), 0);
        m->lm_head_owned = !L->collect;
    }
    return L->status;
}

sl_status sl_model_checkpoint_tensors(const sl_model_config *c, sl_tensor_cb cb, void *ctx,
                                      sl_err *e)
{
    sl_model m = {.cfg = *c};
    loader L = {.m = &m, .wd = SL_DTYPE_F32, .collect = cb, .collect_ctx = ctx, .e = e};
    sl_status s = walk_weights(&L);
    free(m.layers);
    return s;
}

static sl_status model_new(sl_model **out, const sl_model_config *c, sl_backend *be, sl_st *st,
                           int dummy, uint64_t seed, sl_err *e)
{
    sl_model *m = calloc(1, sizeof *m);
    if (!m) return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    m->cfg = *c;
    m->be = be;
    loader L = {.m = m, .st = st, .wd = sl_be_weight_dtype(be), .dummy = dummy, .seed = seed, .e = e};
    sl_status s = walk_weights(&L);
    if (s) {
        sl_model_free(m);
        return s;
    }
    *out = m;
    return SL_OK;
}

sl_status sl_model_load(sl_model **out, const char *dir, sl_backend *be,
                        const sl_model_load_opts *opts, sl_err *e)
{
    sl_model_config c;
    sl_status s = sl_model_config_load(&c, dir, e);
    if (s) return s;
    int dummy = opts && opts->dummy;
    sl_st *st = NULL;
    if (!dummy && (s = sl_st_open(&st, dir, e))) return s;
    s = model_new(out, &c, be, st, dummy, opts ? opts->seed : 0, e);
    if (s && !dummy) sl_err_wrap(e, "loading %s", dir);
    sl_st_close(st); /* weights were copied into backend memory */
    return s;
}

sl_status sl_model_from_config(sl_model **out, const sl_model_config *c, sl_backend *be,
                               uint64_t seed, sl_err *e)
{
    return model_new(out, c, be, NULL, 1, seed, e);
}

static void release_all(sl_backend *be, sl_tensor *t, size_t n)
{
    for (size_t i = 0; i < n; i++) sl_be_release(be, &t[i]);
}

static void graphs_free(sl_model *m);

static void scratch_free(sl_model *m)
{
    scratch *s = &m->s;
    sl_tensor *all[] = {&s->x,    &s->xn,      &s->d,   &s->big, &s->mid,    &s->mid2,
                        &s->attn, &s->conv,    &s->ba,  &s->rlogits, &s->ids, &s->wts,
                        &s->shared, &s->sgate, &s->gx,  &s->gd,  &s->gn};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) sl_be_release(m->be, all[i]);
    s->cap = s->cap_rows = 0;
}

void sl_model_free(sl_model *m)
{
    if (!m) return;
    if (m->layers) {
        for (int i = 0; i < m->cfg.n_layers; i++)
            release_all(m->be, &m->layers[i].in_norm,
                        (size_t)(&m->layers[i].sh_gate - &m->layers[i].in_norm) + 1);
        free(m->layers);
    }
    sl_be_release(m->be, &m->embed);
    sl_be_release(m->be, &m->final_norm);
    if (m->lm_head_owned) sl_be_release(m->be, &m->lm_head);
    graphs_free(m);
    scratch_free(m);
    free(m);
}

/* ---- caches ---------------------------------------------------------------- */

size_t sl_model_page_bytes(const sl_model *m, int page_size)
{
    const sl_model_config *c = &m->cfg;
    return (size_t)c->n_attn_layers * 2 * (size_t)page_size * (size_t)(c->n_kv_heads * c->head_dim) *
           sl_dtype_size(sl_be_act_dtype(m->be));
}

size_t sl_model_slot_bytes(const sl_model *m)
{
    const sl_model_config *c = &m->cfg;
    size_t conv = (size_t)sl_model_config_conv_dim(c) * (size_t)(c->conv_kernel - 1) * 4;
    size_t ssm = (size_t)c->lin_v_heads * (size_t)c->lin_k_dim * (size_t)c->lin_v_dim * 4;
    return (size_t)c->n_linear_layers * (conv + ssm);
}

sl_status sl_model_cache_alloc(sl_model *m, sl_model_cache *c, int n_pages, int page_size,
                               int n_slots, sl_err *e)
{
    const sl_model_config *g = &m->cfg;
    memset(c, 0, sizeof *c);
    c->page_size = page_size;
    c->n_pages = n_pages;
    c->n_slots = n_slots;
    c->n_attn = g->n_attn_layers;
    c->n_linear = g->n_linear_layers;
    c->k = calloc((size_t)c->n_attn + 1, sizeof(sl_tensor));
    c->v = calloc((size_t)c->n_attn + 1, sizeof(sl_tensor));
    c->conv = calloc((size_t)c->n_linear + 1, sizeof(sl_tensor));
    c->ssm = calloc((size_t)c->n_linear + 1, sizeof(sl_tensor));
    if (!c->k || !c->v || !c->conv || !c->ssm) {
        sl_model_cache_free(m, c);
        return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    }
    sl_dtype ad = sl_be_act_dtype(m->be);
    sl_status s = SL_OK;
    int64_t kvd = (int64_t)g->n_kv_heads * g->head_dim;
    for (int j = 0; j < c->n_attn && !s; j++) {
        /* one page past n_pages: where padding sequences of graph batches write */
        s = sl_be_alloc(m->be, &c->k[j], ad, 2, SHP((int64_t)(n_pages + 1) * page_size, kvd), e);
        if (!s) s = sl_be_alloc(m->be, &c->v[j], ad, 2, SHP((int64_t)(n_pages + 1) * page_size, kvd), e);
    }
    int64_t C = sl_model_config_conv_dim(g);
    for (int j = 0; j < c->n_linear && !s; j++) {
        /* conv history in fp32 like the SSM state: snapshots are exact */
        s = sl_be_alloc(m->be, &c->conv[j], SL_DTYPE_F32, 3, SHP(n_slots + 1, C, g->conv_kernel - 1), e);
        if (!s)
            s = sl_be_alloc(m->be, &c->ssm[j], SL_DTYPE_F32, 4,
                            SHP(n_slots + 1, g->lin_v_heads, g->lin_k_dim, g->lin_v_dim), e);
    }
    if (s) sl_model_cache_free(m, c);
    return s;
}

void sl_model_cache_free(sl_model *m, sl_model_cache *c)
{
    if (c->k) release_all(m->be, c->k, (size_t)c->n_attn);
    if (c->v) release_all(m->be, c->v, (size_t)c->n_attn);
    if (c->conv) release_all(m->be, c->conv, (size_t)c->n_linear);
    if (c->ssm) release_all(m->be, c->ssm, (size_t)c->n_linear);
    free(c->k);
    free(c->v);
    free(c->conv);
    free(c->ssm);
    memset(c, 0, sizeof *c);
}

void sl_model_cache_copy_slots(sl_model *m, sl_model_cache *c, const int32_t *dst,
                               const int32_t *src, int n)
{
    for (int j = 0; j < c->n_linear; j++) {
        sl_be_copy_slots(m->be, &c->conv[j], dst, src, n);
        sl_be_copy_slots(m->be, &c->ssm[j], dst, src, n);
    }
}

/* ---- forward ---------------------------------------------------------------- */

/* Widest per-token activation each scratch buffer must hold. */
static sl_status scratch_ensure(sl_model *m, int T, int rows, sl_err *e)
{
    scratch *s = &m->s;
    if (T <= s->cap && rows <= s->cap_rows) return SL_OK;
    scratch_free(m);
    m->scratch_gen++;
    int cap = 16, cap_rows = 4;
    while (cap < T) cap *= 2;
    while (cap_rows < rows) cap_rows *= 2;
    const sl_model_config *c = &m->cfg;
    int64_t H = c->hidden_size, D = c->head_dim;
    int64_t qkv = (c->arch == SL_ARCH_QWEN3_NEXT ? 2 : 1) * c->n_heads * D + 2 * c->n_kv_heads * D;
    int64_t C = sl_model_config_conv_dim(c), VD = (int64_t)c->lin_v_heads * c->lin_v_dim;
    int64_t big = qkv, mid = c->n_heads * D;
    for (int i = 0; i < c->n_layers; i++) {
        if (c->layer_linear[i] && C + VD > big) big = C + VD;
        if (!c->layer_moe[i] && 2 * c->intermediate_size > big) big = 2 * c->intermediate_size;
    }
    if (c->shared_expert_intermediate_size * 2 > big) big = c->shared_expert_intermediate_size * 2;
    if (VD > mid) mid = VD;
    if (c->intermediate_size > mid) mid = c->intermediate_size;
    if (c->shared_expert_intermediate_size > mid) mid = c->shared_expert_intermediate_size;
    int64_t E = c->n_experts > 0 ? c->n_experts : 1, k = c->n_experts_per_tok > 0 ? c->n_experts_per_tok : 1;
    sl_dtype ad = sl_be_act_dtype(m->be);
    sl_backend *be = m->be;
    sl_status st = SL_OK;
#define A(t, dt, cols) if (!st) st = sl_be_alloc(be, &s->t, dt, 2, SHP(cap, cols), e)
#define R(t, dt, cols) if (!st) st = sl_be_alloc(be, &s->t, dt, 2, SHP(cap_rows, cols), e)
    A(x, ad, H);
    A(xn, ad, H);
    A(d, ad, H);
    A(big, ad, big);
    A(mid, ad, mid);
    A(mid2, ad, mid);
    A(attn, ad, c->n_heads * D > VD ? c->n_heads * D : VD);
    A(conv, ad, C > 0 ? C : 1);
    A(ba, ad, 2 * (c->lin_v_heads > 0 ? c->lin_v_heads : 1));
    A(rlogits, SL_DTYPE_F32, E);
    A(ids, SL_DTYPE_I32, k);
    A(wts, SL_DTYPE_F32, k);
    A(shared, ad, H);
    A(sgate, ad, 1);
    R(gx, ad, H);
    R(gd, ad, H);
    R(gn, ad, H);
#undef A
#undef R
    if (st) {
        scratch_free(m);
        return st;
    }
    s->cap = cap;
    s->cap_rows = cap_rows;
    return SL_OK;
}

static sl_tensor rows_of(const sl_tensor *t, int n) { return sl_tensor_rowview(t, 0, n); }
static sl_tensor cols_of(const sl_tensor *t, int64_t c0, int64_t n) { return sl_tensor_colview(t, c0, n); }

static void attention_layer(sl_model *m, layer *ly, sl_model_cache *c, const sl_batch_meta *mt,
                            const sl_tensor *xn, sl_tensor *d)
{
    const sl_model_config *g = &m->cfg;
    sl_backend *be = m->be;
    int T = mt->n_tokens, next = g->arch == SL_ARCH_QWEN3_NEXT, li = (int)(ly - m->layers);
    int64_t Hq = g->n_heads, Hkv = g->n_kv_heads, D = g->head_dim, qd = Hq * D, kvd = Hkv * D;
    sl_tensor qkv = rows_of(&m->s.big, T);
    qkv = cols_of(&qkv, 0, sl_tensor_rows(&ly->wqkv));
    sl_be_matmul(be, &qkv, xn, &ly->wqkv);
    trace(m, li, "qkv", &qkv);
    int64_t off = next ? 2 * qd : qd;
    sl_tensor q = cols_of(&qkv, 0, qd), k = cols_of(&qkv, off, kvd), v = cols_of(&qkv, off + kvd, kvd);
    if (!m->trace && sl_be_supports_op(be, SL_OP_ATTN_PREP)) {
        sl_be_attn_prep(be, &q, &k, &v, &ly->q_norm, &ly->k_norm, g->rms_eps, next, (int)D,
                        g->rot_dim, (float)g->rope_theta, &c->k[ly->cache_idx], &c->v[ly->cache_idx], mt);
    } else { /* the same steps one by one, each traced */
        sl_be_rmsnorm(be, &q, &q, &ly->q_norm, g->rms_eps, next);
        sl_be_rmsnorm(be, &k, &k, &ly->k_norm, g->rms_eps, next);
        trace(m, li, "q_norm", &q);
        trace(m, li, "k_norm", &k);
        sl_be_rope(be, &q, (int)Hq, (int)D, g->rot_dim, (float)g->rope_theta, mt);
        sl_be_rope(be, &k, (int)Hkv, (int)D, g->rot_dim, (float)g->rope_theta, mt);
        trace(m, li, "q_rope", &q);
        trace(m, li, "k_rope", &k);
        sl_be_kv_store(be, &c->k[ly->cache_idx], &c->v[ly->cache_idx], &k, &v, mt);
    }
    sl_tensor o = rows_of(&m->s.attn, T);
    o = cols_of(&o, 0, qd);
    sl_be_attention(be, &o, &q, &c->k[ly->cache_idx], &c->v[ly->cache_idx], (int)Hq, (int)Hkv,
                    (int)D, 1.0f / sqrtf((float)D), mt);
    trace(m, li, "attention", &o);
    if (next) {
        sl_tensor gate = cols_of(&qkv, qd, qd);
        sl_be_sigmoid_mul(be, &o, &gate);
        trace(m, li, "attn_gate", &o);
    }
    sl_be_matmul(be, d, &o, &ly->wo);
    trace(m, li, "o_proj", d);
}

static void linear_layer(sl_model *m, layer *ly, sl_model_cache *c, const sl_batch_meta *mt,
                         const sl_tensor *xn, sl_tensor *d)
{
    const sl_model_config *g = &m->cfg;
    sl_backend *be = m->be;
    int T = mt->n_tokens, li = (int)(ly - m->layers);
    int64_t C = sl_model_config_conv_dim(g), VD = (int64_t)g->lin_v_heads * g->lin_v_dim;
    int64_t Hv = g->lin_v_heads;
    sl_tensor proj = rows_of(&m->s.big, T);
    proj = cols_of(&proj, 0, C + VD);
    sl_be_matmul(be, &proj, xn, &ly->w_qkvz);
    sl_tensor ba = rows_of(&m->s.ba, T);
    sl_be_matmul(be, &ba, xn, &ly->w_ba);
    trace(m, li, "qkvz", &proj);
    trace(m, li, "ba", &ba);
    sl_tensor mixed = cols_of(&proj, 0, C), z = cols_of(&proj, C, VD);
    sl_tensor conv = rows_of(&m->s.conv, T);
    sl_be_conv1d(be, &conv, &mixed, &ly->conv_w, &c->conv[ly->cache_idx], mt);
    trace(m, li, "conv1d", &conv);
    sl_tensor b = cols_of(&ba, 0, Hv), a = cols_of(&ba, Hv, Hv);
    sl_tensor core = rows_of(&m->s.attn, T);
    core = cols_of(&core, 0, VD);
    sl_be_gdn(be, &core, &conv, &a, &b, &ly->A_log, &ly->dt_bias, &c->ssm[ly->cache_idx],
              g->lin_k_heads, g->lin_v_heads, g->lin_k_dim, g->lin_v_dim, mt);
    trace(m, li, "gdn", &core);
    sl_tensor normed = rows_of(&m->s.mid, T);
    normed = cols_of(&normed, 0, VD);
    sl_be_rmsnorm_gated(be, &normed, &core, &z, &ly->gnorm, g->rms_eps);
    trace(m, li, "rmsnorm_gated", &normed);
    sl_be_matmul(be, d, &normed, &ly->w_out);
    trace(m, li, "out_proj", d);
}

/* down(silu(gate x) ⊙ up x) into out */
static void swiglu(sl_model *m, int li, const sl_tensor *gate_up, const sl_tensor *down,
                   const sl_tensor *xn, sl_tensor *out, int T)
{
    int64_t I = down->ne[1];
    sl_tensor gu = rows_of(&m->s.big, T);
    gu = cols_of(&gu, 0, 2 * I);
    sl_be_matmul(m->be, &gu, xn, gate_up);
    trace(m, li, "gate_up", &gu);
    sl_tensor act = rows_of(&m->s.mid, T);
    act = cols_of(&act, 0, I);
    sl_be_silu_mul(m->be, &act, &gu);
    trace(m, li, "silu_mul", &act);
    sl_be_matmul(m->be, out, &act, down);
    trace(m, li, "down", out);
}

static void ffn_layer(sl_model *m, layer *ly, int T, const sl_tensor *xn, sl_tensor *d)
{
    const sl_model_config *g = &m->cfg;
    sl_backend *be = m->be;
    int li = (int)(ly - m->layers);
    if (!ly->moe) {
        swiglu(m, li, &ly->w_gate_up, &ly->w_down, xn, d, T);
        return;
    }
    sl_tensor logits = rows_of(&m->s.rlogits, T), ids = rows_of(&m->s.ids, T), w = rows_of(&m->s.wts, T);
    sl_be_matmul(be, &logits, xn, &ly->router);
    trace(m, li, "router", &logits);
    sl_be_moe_route(be, &ids, &w, &logits, g->n_experts_per_tok, g->norm_topk_prob);
    trace(m, li, "route_ids", &ids);
    trace(m, li, "route_w", &w);
    sl_be_moe_experts(be, d, xn, &ids, &w, &ly->ex_gate_up, &ly->ex_down);
    trace(m, li, "experts", d);
    if (g->shared_expert_intermediate_size > 0) {
        sl_tensor sh = rows_of(&m->s.shared, T), sg = rows_of(&m->s.sgate, T);
        swiglu(m, li, &ly->sh_gate_up, &ly->sh_down, xn, &sh, T);
        sl_be_matmul(be, &sg, xn, &ly->sh_gate);
        trace(m, li, "shared_gate", &sg);
        sl_be_sigmoid_mul(be, &sh, &sg);
        trace(m, li, "shared_gated", &sh);
        sl_be_add(be, d, d, &sh);
        trace(m, li, "moe_out", d);
    }
}

static sl_status check_meta(const sl_model *m, const sl_model_cache *c, const sl_batch_meta *mt,
                            sl_err *e)
{
    if (mt->n_tokens <= 0 || mt->n_seqs <= 0 || mt->q_start[0] != 0 ||
        mt->q_start[mt->n_seqs] != mt->n_tokens)
        return sl_err_set(e, SL_ERR_INVALID, "batch: token ranges do not cover the batch");
    for (int t = 0; t < mt->n_tokens; t++)
        if (mt->ids[t] < 0 || mt->ids[t] >= m->cfg.vocab_size)
            return sl_err_set(e, SL_ERR_INVALID, "batch: token id %d outside the vocabulary (%d)",
                              mt->ids[t], m->cfg.vocab_size);
    if (c->n_attn > 0)
        for (int t = 0; t < mt->n_tokens; t++)
            if (mt->kv_slot[t] < 0 || mt->kv_slot[t] >= c->n_pages * c->page_size)
                return sl_err_set(e, SL_ERR_INVALID, "batch: kv slot %d out of range", mt->kv_slot[t]);
    for (int s = 0; s < mt->n_seqs; s++) {
        int qn = mt->q_start[s + 1] - mt->q_start[s];
        if (qn <= 0 || mt->kv_len[s] < qn || (c->n_attn > 0 && mt->kv_len[s] > mt->max_pages * c->page_size))
            return sl_err_set(e, SL_ERR_INVALID, "batch: sequence %d has bad lengths", s);
        if (c->n_linear > 0) {
            if (mt->state_slot[s] < 0 || mt->state_slot[s] >= c->n_slots ||
                mt->track_slot[s] >= c->n_slots)
                return sl_err_set(e, SL_ERR_INVALID, "batch: sequence %d has a bad state slot", s);
        }
    }
    return SL_OK;
}

/* The ops of one forward over a prepared batch; logits rows 0..n_rows-1. */
static void forward_ops(sl_model *m, sl_model_cache *c, const sl_batch_meta *mt, int n_rows,
                        sl_tensor *logits)
{
    const sl_model_config *g = &m->cfg;
    sl_backend *be = m->be;
    int T = mt->n_tokens;
    int one_plus = g->arch == SL_ARCH_QWEN3_NEXT;
    sl_tensor x = rows_of(&m->s.x, T), xn = rows_of(&m->s.xn, T), d = rows_of(&m->s.d, T);
    sl_be_embed(be, &x, &m->embed, mt);
    trace(m, -1, "embed", &x);
    for (int i = 0; i < g->n_layers; i++) {
        layer *ly = &m->layers[i];
        if (i == 0) sl_be_rmsnorm(be, &xn, &x, &ly->in_norm, g->rms_eps, one_plus);
        else sl_be_add_rmsnorm(be, &xn, &x, &d, &ly->in_norm, g->rms_eps, one_plus);
        trace(m, i, "in_resid", &x);
        trace(m, i, "in_norm", &xn);
        if (ly->linear) linear_layer(m, ly, c, mt, &xn, &d);
        else attention_layer(m, ly, c, mt, &xn, &d);
        sl_be_add_rmsnorm(be, &xn, &x, &d, &ly->post_norm, g->rms_eps, one_plus);
        trace(m, i, "post_resid", &x);
        trace(m, i, "post_norm", &xn);
        ffn_layer(m, ly, T, &xn, &d);
    }
    /* only the requested rows go through the final norm and the LM head */
    sl_tensor gx = rows_of(&m->s.gx, n_rows), gd = rows_of(&m->s.gd, n_rows), gn = rows_of(&m->s.gn, n_rows);
    sl_be_gather_rows(be, &gx, &x, mt);
    sl_be_gather_rows(be, &gd, &d, mt);
    sl_be_add_rmsnorm(be, &gn, &gx, &gd, &m->final_norm, g->rms_eps, one_plus);
    sl_tensor out = rows_of(logits, n_rows);
    trace(m, -1, "final_norm", &gn);
    sl_be_matmul(be, &out, &gn, &m->lm_head);
    trace(m, -1, "lm_head", &out);
}

/* ---- decode graphs ------------------------------------------------------------ */

static void graphs_free(sl_model *m)
{
    graphs *gr = &m->gr;
    for (int i = 0; i < gr->n_buckets; i++) sl_be_graph_free(m->be, gr->slot[i].g);
    int32_t *arrs[] = {gr->ids, gr->pos, gr->q_start, gr->kv_len, gr->kv_slot, gr->state_slot,
                       gr->state_fresh, gr->track_slot, gr->track_len, gr->feed, gr->rows, gr->pt};
    for (size_t i = 0; i < sizeof arrs / sizeof arrs[0]; i++) free(arrs[i]);
    memset(gr, 0, sizeof *gr);
}

sl_status sl_model_enable_graphs(sl_model *m, int max_bs, int max_ctx, sl_err *e)
{
    graphs_free(m);
    if (max_bs <= 0) return SL_OK;
    if (!sl_be_has_graphs(m->be))
        return sl_err_set(e, SL_ERR_UNSUPPORTED, "the %s backend cannot capture graphs", sl_be_name(m->be));
    graphs *gr = &m->gr;
    /* every size to 16 (padding a MoE batch costs whole experts), then
     * steps of 8 to 64, 16 to 128, 32 beyond */
    for (int b = 1; gr->n_buckets < MAX_GRAPHS;) {
        int last = b >= max_bs;
        gr->bucket[gr->n_buckets++] = last ? max_bs : b;
        if (last) break;
        b += b < 16 ? 1 : b < 64 ? 8 : b < 128 ? 16 : 32;
    }
    gr->max_bs = gr->bucket[gr->n_buckets - 1];
    gr->max_ctx = max_ctx;
    gr->cap = gr->max_bs + 1;
    int32_t **arrs[] = {&gr->ids, &gr->pos, &gr->q_start, &gr->kv_len, &gr->kv_slot, &gr->state_slot,
                        &gr->state_fresh, &gr->track_slot, &gr->track_len, &gr->feed, &gr->rows};
    for (size_t i = 0; i < sizeof arrs / sizeof arrs[0]; i++)
        if (!(*arrs[i] = malloc(sizeof(int32_t) * (size_t)gr->cap))) {
            graphs_free(m);
            return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
        }
    return SL_OK;
}

int sl_model_graph_max_bs(const sl_model *m)
{
    return m->gr.max_bs;
}

/* The bucket a decode batch of n sequences runs in, or -1 (no graph). */
static int graph_bucket(const sl_model *m, const sl_batch_meta *mt, const int32_t *rows, int n_rows)
{
    const graphs *gr = &m->gr;
    int n = mt->n_seqs;
    if (!gr->n_buckets || m->trace || mt->n_tokens != n || n > gr->max_bs || n_rows != n ||
        (int64_t)mt->max_pages * mt->page_size > gr->max_ctx + mt->page_size - 1)
        return -1;
    for (int i = 0; i < n; i++)
        if (rows[i] != i || mt->kv_len[i] > gr->max_ctx) return -1;
    int k = 0;
    while (gr->bucket[k] < n) k++;
    return k;
}

/* Runs the n decode sequences of mt (n may be 0: a warm-up) in bucket k's
 * graph, padded with sequences of one token on the cache's spare page and
 * slot; captures the graph first when there is none or it went stale. */
static sl_status graph_forward(sl_model *m, sl_model_cache *c, const sl_batch_meta *mt, int k,
                               sl_tensor *logits, sl_err *e)
{
    graphs *gr = &m->gr;
    int B = gr->bucket[k], n = mt->n_seqs, P = mt->max_pages > 0 ? mt->max_pages : 1;
    if (B * P > gr->pt_cap) {
        free(gr->pt);
        gr->pt_cap = 0;
        if (!(gr->pt = malloc(sizeof(int32_t) * (size_t)B * (size_t)P)))
            return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
        gr->pt_cap = B * P;
    }
    int hybrid = c->n_linear > 0;
    for (int i = 0; i < B; i++) {
        int real = i < n;
        gr->ids[i] = real ? mt->ids[i] : 0;
        gr->pos[i] = real ? mt->pos[i] : 0;
        gr->q_start[i] = i;
        gr->kv_len[i] = real ? mt->kv_len[i] : 1;
        gr->kv_slot[i] = real ? mt->kv_slot[i] : c->n_pages * c->page_size;
        gr->state_slot[i] = real && hybrid ? mt->state_slot[i] : hybrid ? c->n_slots : -1;
        gr->state_fresh[i] = real && hybrid ? mt->state_fresh[i] : 1;
        gr->track_slot[i] = real && hybrid ? mt->track_slot[i] : -1;
        gr->track_len[i] = real && hybrid ? mt->track_len[i] : 0;
        gr->feed[i] = real && mt->feed ? mt->feed[i] : -1;
        gr->rows[i] = i;
        if (real) memcpy(gr->pt + (size_t)i * P, mt->page_table + (size_t)i * mt->max_pages, sizeof(int32_t) * (size_t)P);
        else
            for (int j = 0; j < P; j++) gr->pt[(size_t)i * P + j] = c->n_pages;
    }
    gr->q_start[B] = B;
    sl_batch_meta pm = {
        .n_tokens = B, .n_seqs = B, .page_size = c->page_size, .max_pages = P,
        .ids = gr->ids, .pos = gr->pos, .q_start = gr->q_start, .kv_len = gr->kv_len,
        .page_table = gr->pt, .kv_slot = gr->kv_slot, .state_slot = gr->state_slot,
        .state_fresh = gr->state_fresh, .track_slot = gr->track_slot, .track_len = gr->track_len,
        .n_logits = B, .logit_rows = gr->rows, .feed = gr->feed, .feed_ids = mt->feed_ids,
    };
    sl_status s = scratch_ensure(m, B, B, e);
    if (!s) s = sl_be_prepare_fixed(m->be, &pm, gr->max_bs, gr->max_ctx, e);
    if (s) return s;
    graph_slot *g = &gr->slot[k];
    const void *k0 = c->n_attn ? c->k[0].data : c->conv[0].data;
    if (g->g && g->scratch_gen == m->scratch_gen && g->cache == c && g->k0 == k0 &&
        g->logits == logits->data && g->feed_ids == mt->feed_ids)
        return sl_be_graph_launch(m->be, g->g, e);
    /* (re)capture: one eager run computes this step and tunes the matmul
     * plans the capture then records */
    sl_be_graph_free(m->be, g->g);
    memset(g, 0, sizeof *g);
    forward_ops(m, c, &pm, B, logits);
    if ((s = sl_be_capture_begin(m->be, e))) return s;
    forward_ops(m, c, &pm, B, logits);
    if ((s = sl_be_capture_end(m->be, &g->g, e))) return s;
    *g = (graph_slot){.g = g->g, .scratch_gen = m->scratch_gen, .cache = c, .k0 = k0,
                      .logits = logits->data, .feed_ids = mt->feed_ids};
    return SL_OK;
}

sl_status sl_model_warm_graphs(sl_model *m, sl_model_cache *c, sl_tensor *logits,
                               const int32_t *feed_ids, sl_err *e)
{
    sl_batch_meta none = {.max_pages = 1, .feed_ids = feed_ids};
    for (int k = 0; k < m->gr.n_buckets; k++) {
        sl_status s = graph_forward(m, c, &none, k, logits, e);
        if (s) return s;
    }
    return sl_be_sync(m->be, e);
}

sl_status sl_model_forward(sl_model *m, sl_model_cache *c, sl_batch_meta *mt, const int32_t *rows,
                           int n_rows, sl_tensor *logits, sl_err *e)
{
    int T = mt->n_tokens;
    mt->page_size = c->page_size;
    mt->n_logits = n_rows;
    mt->logit_rows = rows;
    sl_status s = check_meta(m, c, mt, e);
    for (int i = 0; i < n_rows && !s; i++)
        if (rows[i] < 0 || rows[i] >= T) s = sl_err_set(e, SL_ERR_INVALID, "logit row %d out of range", rows[i]);
    if (s) return s;
    int k = graph_bucket(m, mt, rows, n_rows);
    if (k >= 0) return graph_forward(m, c, mt, k, logits, e);
    if (!s) s = scratch_ensure(m, T, n_rows, e);
    if (!s) s = sl_be_prepare(m->be, mt, e);
    if (s) return s;
    forward_ops(m, c, mt, n_rows, logits);
    return SL_OK;
}

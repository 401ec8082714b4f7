/* Qwen3-family models: weight packing at load (the forward
 * pass is in model_forward.c).
 * The math follows docs/qwen3_next.md (transformers 5.17). */
#include "model.h"
#include "model_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"
#include "sl_file.h"
#include "sl_log.h"

const sl_model_config *sl_model_cfg(const sl_model *m) { return &m->cfg; }

void sl_model_set_trace(sl_model *m, sl_model_trace_fn fn, void *ctx)
{
    m->trace = fn;
    m->trace_ctx = ctx;
}

/* Reports op's output t of layer li (-1: outside the layers) to the trace. */
sl_backend *sl_model_backend(const sl_model *m) { return m->be; }

/* ---- loading ---------------------------------------------------------------
 * A packed tensor is built on the host in f32 from one or more checkpoint
 * tensors ("pieces"), then uploaded once. A piece may be a row permutation:
 * its rows form `groups` blocks of segments seg[0..nseg) and the packed layout
 * wants segment j of every group together (q_proj [q_h | g_h] per head →
 * [all q | all g]; in_proj_qkvz per key group → [q | k | v | z]). */

typedef struct loader {
    sl_model *m;
    sl_safetensors *st;
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
    const sl_safetensors_tensor *t = sl_safetensors_find(L->st, name);
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
    for (int i = 0; i < c->n_layers && !L->status; i++) {
        load_layer(L, i);
        /* progress at info, about every tenth of the model */
        if (!L->collect && ((i + 1) % (c->n_layers / 10 + 1) == 0 || i + 1 == c->n_layers))
            SL_LOGI("model", "%s weights: layer %d/%d", L->dummy ? "dummy" : "loading", i + 1,
                    c->n_layers);
    }
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

static sl_status model_new(sl_model **out, const sl_model_config *c, sl_backend *be, sl_safetensors *st,
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
    sl_safetensors *st = NULL;
    if (!dummy && (s = sl_safetensors_open(&st, dir, e))) return s;
    s = model_new(out, &c, be, st, dummy, opts ? opts->seed : 0, e);
    if (s && !dummy) sl_err_wrap(e, "loading %s", dir);
    sl_safetensors_close(st); /* weights were copied into backend memory */
    return s;
}

sl_status sl_model_from_config(sl_model **out, const sl_model_config *c, sl_backend *be,
                               uint64_t seed, sl_err *e)
{
    return model_new(out, c, be, NULL, 1, seed, e);
}

void model_scratch_free(sl_model *m)
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
    model_graphs_free(m);
    model_scratch_free(m);
    free(m);
}

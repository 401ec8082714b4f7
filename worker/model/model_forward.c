/* Qwen3-family models: the KV/state cache, the forward pass and decode graphs.
 * The math follows docs/qwen3_next.md (transformers 5.17). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "model_impl.h"
#include "sl_log.h"

/* ---- caches ---------------------------------------------------------------- */

size_t sl_model_page_bytes(const sl_model *m, int page_size)
{
    const sl_model_config *c = &m->lc;
    return (size_t)c->n_attn_layers * 2 * (size_t)page_size * (size_t)(c->n_kv_heads * c->head_dim) *
           sl_dtype_size(sl_be_act_dtype(m->be));
}

size_t sl_model_slot_bytes(const sl_model *m)
{
    const sl_model_config *c = &m->lc;
    size_t conv = (size_t)sl_model_config_conv_dim(c) * (size_t)(c->conv_kernel - 1) * 4;
    size_t ssm = (size_t)c->lin_v_heads * (size_t)c->lin_k_dim * (size_t)c->lin_v_dim * 4;
    return (size_t)c->n_linear_layers * (conv + ssm);
}

sl_status sl_model_cache_alloc(sl_model *m, sl_model_cache *c, int n_pages, int page_size,
                               int n_slots, sl_err *e)
{
    const sl_model_config *g = &m->lc;
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

/* Whether any projection is FP8 (its scales loaded) */
static int model_has_fp8(const sl_model *m)
{
    for (int i = 0; i < m->lc.n_layers; i++) {
        const layer *ly = &m->layers[i];
        const sl_tensor *sc[] = {&ly->wqkv_s,      &ly->wo_s,     &ly->w_qkvz_s,     &ly->w_out_s,
                                 &ly->w_gate_up_s, &ly->w_down_s, &ly->sh_gate_up_s, &ly->sh_down_s};
        for (size_t j = 0; j < sizeof sc / sizeof sc[0]; j++)
            if (sc[j]->data) return 1;
    }
    return 0;
}

/* The codes an op makes for the FP8 projection right after it (scratch.xq),
 * or NULL: none allocated, or tracing (a forced replay overwrites op outputs
 * after their codes were made). */
static sl_fp8_act *act_codes(sl_model *m) { return m->s.xq.codes.data && !m->trace ? &m->s.xq : NULL; }

/* Widest per-token activation each scratch buffer must hold. */
static sl_status scratch_ensure(sl_model *m, int T, int rows, sl_err *e)
{
    scratch *s = &m->s;
    if (T <= s->cap && rows <= s->cap_rows) return SL_OK;
    model_scratch_free(m);
    m->scratch_gen++;
    int cap = 16, cap_rows = 4;
    while (cap < T) cap *= 2;
    while (cap_rows < rows) cap_rows *= 2;
    const sl_model_config *c = &m->lc;
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
    /* + 1: a fused shared expert's router column and pair (layer.shared_fused) */
    int64_t E = (c->n_experts > 0 ? c->n_experts : 1) + 1, k = (c->n_experts_per_tok > 0 ? c->n_experts_per_tok : 1) + 1;
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
    if (m->tp.vocab_parallel) R(lg, SL_DTYPE_F32, m->tp.nv);
    int64_t qrows = sl_be_fp8_act_rows(be) < cap ? sl_be_fp8_act_rows(be) : cap;
    if (qrows > 0 && model_has_fp8(m)) { /* the widest activation an FP8 projection reads */
        int64_t qk = (H > mid ? H : mid) + SL_FP8_BLOCK - 1;
        qk -= qk % SL_FP8_BLOCK;
        if (!st) st = sl_be_alloc(be, &s->xq.codes, SL_DTYPE_F8E4M3, 1, SHP(qrows * qk), e);
        if (!st) st = sl_be_alloc(be, &s->xq.scales, SL_DTYPE_F32, 1, SHP(qrows * (qk / SL_FP8_BLOCK)), e);
    }
#undef A
#undef R
    if (st) {
        model_scratch_free(m);
        return st;
    }
    s->cap = cap;
    s->cap_rows = cap_rows;
    return SL_OK;
}

static sl_tensor rows_of(const sl_tensor *t, int n) { return sl_tensor_rowview(t, 0, n); }
static sl_tensor cols_of(const sl_tensor *t, int64_t c0, int64_t n) { return sl_tensor_colview(t, c0, n); }

static void attention_layer(sl_model *m, layer *ly, sl_model_cache *c, const sl_batch_meta *mt,
                            const sl_tensor *xn, const sl_fp8_act *xnq, sl_tensor *d)
{
    const sl_model_config *g = &m->lc;
    sl_backend *be = m->be;
    int T = mt->n_tokens, next = g->arch == SL_ARCH_QWEN3_NEXT, li = (int)(ly - m->layers);
    int64_t Hq = g->n_heads, Hkv = g->n_kv_heads, D = g->head_dim, qd = Hq * D, kvd = Hkv * D;
    sl_tensor qkv = rows_of(&m->s.big, T);
    qkv = cols_of(&qkv, 0, sl_tensor_rows(&ly->wqkv));
    model_proj(be, &qkv, xn, &ly->wqkv, &ly->wqkv_s, xnq);
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
    /* o's codes from the op that writes o last: the attention, or Qwen3-Next's gate */
    sl_fp8_act *oq = act_codes(m);
    sl_be_attention(be, &o, &q, &c->k[ly->cache_idx], &c->v[ly->cache_idx], (int)Hq, (int)Hkv,
                    (int)D, 1.0f / sqrtf((float)D), mt, next ? NULL : oq);
    trace(m, li, "attention", &o);
    if (next) {
        sl_tensor gate = cols_of(&qkv, qd, qd);
        sl_be_sigmoid_mul(be, &o, &gate, oq);
        trace(m, li, "attn_gate", &o);
    }
    model_proj(be, d, &o, &ly->wo, &ly->wo_s, oq);
    trace(m, li, "o_proj", d);
}

static void linear_layer(sl_model *m, layer *ly, sl_model_cache *c, const sl_batch_meta *mt,
                         const sl_tensor *xn, const sl_fp8_act *xnq, sl_tensor *d)
{
    const sl_model_config *g = &m->lc;
    sl_backend *be = m->be;
    int T = mt->n_tokens, li = (int)(ly - m->layers);
    int64_t C = sl_model_config_conv_dim(g), VD = (int64_t)g->lin_v_heads * g->lin_v_dim;
    int64_t Hv = g->lin_v_heads;
    sl_tensor proj = rows_of(&m->s.big, T);
    proj = cols_of(&proj, 0, C + VD);
    model_proj(be, &proj, xn, &ly->w_qkvz, &ly->w_qkvz_s, xnq);
    sl_tensor ba = rows_of(&m->s.ba, T);
    model_proj(be, &ba, xn, &ly->w_ba, &ly->w_ba_s, xnq);
    trace(m, li, "qkvz", &proj);
    trace(m, li, "ba", &ba);
    sl_tensor mixed = cols_of(&proj, 0, C), z = cols_of(&proj, C, VD);
    sl_tensor conv = rows_of(&m->s.conv, T);
    sl_tensor b = cols_of(&ba, 0, Hv), a = cols_of(&ba, Hv, Hv);
    sl_tensor core = rows_of(&m->s.attn, T);
    core = cols_of(&core, 0, VD);
    sl_tensor normed = rows_of(&m->s.mid, T);
    normed = cols_of(&normed, 0, VD);
    sl_fp8_act *nq = act_codes(m); /* xn's codes are spent: qkvz and ba have read them */
    sl_gdn_layer gl = {&ly->conv_w,     &ly->A_log,       &ly->dt_bias,     &ly->gnorm, g->lin_k_heads,
                       g->lin_v_heads, g->lin_k_dim, g->lin_v_dim, g->rms_eps};
    /* a decode step's three ops in one where the backend fuses them (not while
     * tracing: a forced replay overwrites each op's output before the next) */
    if (m->trace || !sl_be_gdn_decode(be, &normed, &core, &conv, &mixed, &z, &a, &b, &gl, &c->conv[ly->cache_idx],
                                      &c->ssm[ly->cache_idx], mt, nq)) {
        sl_be_conv1d(be, &conv, &mixed, &ly->conv_w, &c->conv[ly->cache_idx], mt);
        trace(m, li, "conv1d", &conv);
        sl_be_gdn(be, &core, &conv, &a, &b, &ly->A_log, &ly->dt_bias, &c->ssm[ly->cache_idx], gl.n_k_heads,
                  gl.n_v_heads, gl.k_dim, gl.v_dim, mt);
        trace(m, li, "gdn", &core);
        sl_be_rmsnorm_gated(be, &normed, &core, &z, &ly->gnorm, g->rms_eps, nq);
        trace(m, li, "rmsnorm_gated", &normed);
    }
    model_proj(be, d, &normed, &ly->w_out, &ly->w_out_s, nq);
    trace(m, li, "out_proj", d);
}

/* down(silu(gate x) ⊙ up x) into out */
static void swiglu(sl_model *m, int li, const sl_tensor *gate_up, const sl_tensor *gate_up_s,
                   const sl_tensor *down, const sl_tensor *down_s, const sl_tensor *xn,
                   const sl_fp8_act *xnq, sl_tensor *out, int T)
{
    int64_t I = down->ne[1];
    sl_tensor gu = rows_of(&m->s.big, T);
    gu = cols_of(&gu, 0, 2 * I);
    model_proj(m->be, &gu, xn, gate_up, gate_up_s, xnq);
    trace(m, li, "gate_up", &gu);
    sl_tensor act = rows_of(&m->s.mid, T);
    act = cols_of(&act, 0, I);
    sl_fp8_act *aq = act_codes(m); /* xn's codes are spent: gate_up has read them */
    sl_be_silu_mul(m->be, &act, &gu, aq);
    trace(m, li, "silu_mul", &act);
    model_proj(m->be, out, &act, down, down_s, aq);
    trace(m, li, "down", out);
}

/* x += d; xn = post_norm(x), with xn's FP8 codes into q (sl_fp8_act, NULL: none) */
static void post_norm(sl_model *m, layer *ly, sl_tensor *x, sl_tensor *xn, const sl_tensor *d, int one_plus,
                      sl_fp8_act *q)
{
    int li = (int)(ly - m->layers);
    sl_be_add_rmsnorm(m->be, xn, x, d, &ly->post_norm, m->lc.rms_eps, one_plus, q);
    trace(m, li, "post_resid", x);
    trace(m, li, "post_norm", xn);
}

/* The layer's second half: x += d, xn = post_norm(x), then the MLP or the MoE
 * into d. */
static void ffn_layer(sl_model *m, layer *ly, int T, sl_tensor *x, sl_tensor *xn, sl_tensor *d, int one_plus)
{
    const sl_model_config *g = &m->lc;
    sl_backend *be = m->be;
    int li = (int)(ly - m->layers);
    if (!ly->moe) {
        sl_fp8_act *xnq = act_codes(m); /* gate_up reads these codes */
        post_norm(m, ly, x, xn, d, one_plus, xnq);
        swiglu(m, li, &ly->w_gate_up, &ly->w_gate_up_s, &ly->w_down, &ly->w_down_s, xn, xnq, d, T);
        return;
    }
    /* a fused shared expert: one more router column and one more (token, expert) pair */
    int fused = ly->shared_fused, k = g->n_experts_per_tok;
    sl_tensor logits = rows_of(&m->s.rlogits, T), ids = rows_of(&m->s.ids, T), w = rows_of(&m->s.wts, T);
    logits = cols_of(&logits, 0, g->n_experts + fused);
    ids = cols_of(&ids, 0, k + fused);
    w = cols_of(&w, 0, k + fused);
    /* the norm and the router in one op, except while tracing, which records
     * each; no codes of xn either way (an unfused shared expert's gate_up
     * quantizes xn itself) */
    if (m->trace) {
        post_norm(m, ly, x, xn, d, one_plus, NULL);
        sl_be_moe_router(be, &ids, &w, &logits, xn, &ly->router, k, g->norm_topk_prob, fused);
    } else {
        sl_be_add_rmsnorm_router(be, xn, x, d, &ly->post_norm, g->rms_eps, one_plus, &ids, &w, &logits, &ly->router,
                                 k, g->norm_topk_prob, fused);
    }
    trace(m, li, "router", &logits);
    trace(m, li, "route_ids", &ids);
    trace(m, li, "route_w", &w);
    if (ly->ex_gate_up_s.data)
        sl_be_moe_experts_fp8(be, d, xn, &ids, &w, &ly->ex_gate_up, &ly->ex_gate_up_s, &ly->ex_down,
                              &ly->ex_down_s);
    else
        sl_be_moe_experts(be, d, xn, &ids, &w, &ly->ex_gate_up, &ly->ex_down);
    trace(m, li, "experts", d);
    if (g->shared_expert_intermediate_size > 0 && !fused) {
        sl_tensor sh = rows_of(&m->s.shared, T), sg = rows_of(&m->s.sgate, T);
        swiglu(m, li, &ly->sh_gate_up, &ly->sh_gate_up_s, &ly->sh_down, &ly->sh_down_s, xn, NULL, &sh, T);
        sl_be_matmul(be, &sg, xn, &ly->sh_gate);
        trace(m, li, "shared_gate", &sg);
        sl_be_sigmoid_mul(be, &sh, &sg, NULL);
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

/* Tensor parallel: t = Σ over ranks of t (a no-op at TP 1). The first failure
 * is kept in *s; later collectives on the broken communicator fail at once. */
static void tp_all_reduce(sl_model *m, sl_tensor *t, sl_status *s, sl_err *e)
{
    if (m->tp.size == 1 || *s) return;
    *s = sl_comm_all_reduce(m->tp.comm, t, e);
}

/* The ops of one forward over a prepared batch; logits rows 0..n_rows-1.
 * Under TP every rank runs the same ops on its shard: the embedding
 * (vocab-parallel) and the two row-parallel outputs of each layer are
 * all-reduced before the residual add + RMSNorm that follows them (fusing
 * the three is a CUDA optimisation, docs/parallel.md), and the LM head's
 * logits columns are all-gathered. */
static sl_status forward_ops(sl_model *m, sl_model_cache *c, const sl_batch_meta *mt, int n_rows,
                             sl_tensor *logits, sl_err *e)
{
    const sl_model_config *g = &m->lc;
    sl_backend *be = m->be;
    sl_status s = SL_OK;
    int T = mt->n_tokens;
    int one_plus = g->arch == SL_ARCH_QWEN3_NEXT;
    sl_tensor x = rows_of(&m->s.x, T), xn = rows_of(&m->s.xn, T), d = rows_of(&m->s.d, T);
    if (m->tp.vocab_parallel) {
        sl_be_embed_shard(be, &x, &m->embed, m->tp.v0, mt);
        tp_all_reduce(m, &x, &s, e);
    } else {
        sl_be_embed(be, &x, &m->embed, mt);
    }
    trace(m, -1, "embed", &x);
    for (int i = 0; i < g->n_layers; i++) {
        layer *ly = &m->layers[i];
        /* xn's codes for the layer's first projection (none after the plain norm) */
        sl_fp8_act *xnq = i == 0 ? NULL : act_codes(m);
        if (i == 0) sl_be_rmsnorm(be, &xn, &x, &ly->in_norm, g->rms_eps, one_plus);
        else sl_be_add_rmsnorm(be, &xn, &x, &d, &ly->in_norm, g->rms_eps, one_plus, xnq);
        trace(m, i, "in_resid", &x);
        trace(m, i, "in_norm", &xn);
        if (ly->linear) linear_layer(m, ly, c, mt, &xn, xnq, &d);
        else attention_layer(m, ly, c, mt, &xn, xnq, &d);
        tp_all_reduce(m, &d, &s, e); /* o_proj / out_proj are row-parallel */
        ffn_layer(m, ly, T, &x, &xn, &d, one_plus);
        tp_all_reduce(m, &d, &s, e); /* down projections (+ shared expert) are row-parallel */
    }
    /* only the requested rows go through the final norm and the LM head */
    sl_tensor gx = rows_of(&m->s.gx, n_rows), gd = rows_of(&m->s.gd, n_rows), gn = rows_of(&m->s.gn, n_rows);
    sl_be_gather_rows(be, &gx, &x, mt);
    sl_be_gather_rows(be, &gd, &d, mt);
    sl_be_add_rmsnorm(be, &gn, &gx, &gd, &m->final_norm, g->rms_eps, one_plus, NULL);
    sl_tensor out = rows_of(logits, n_rows);
    trace(m, -1, "final_norm", &gn);
    if (m->tp.vocab_parallel) {
        /* this rank's vocabulary columns, then every rank's, rank-major */
        sl_tensor part = rows_of(&m->s.lg, n_rows);
        sl_be_matmul(be, &part, &gn, &m->lm_head);
        if (!s) s = sl_comm_all_gather(m->tp.comm, &out, &part, 1, e);
    } else {
        sl_be_matmul(be, &out, &gn, &m->lm_head);
    }
    trace(m, -1, "lm_head", &out);
    return s;
}

/* ---- decode graphs ------------------------------------------------------------ */

void model_graphs_free(sl_model *m)
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
    model_graphs_free(m);
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
            model_graphs_free(m);
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
    if ((s = forward_ops(m, c, &pm, B, logits, e))) return s;
    if ((s = sl_be_capture_begin(m->be, e))) return s;
    sl_status fs = forward_ops(m, c, &pm, B, logits, e);
    if ((s = sl_be_capture_end(m->be, &g->g, e))) return s;
    if (fs) return fs;
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
    return forward_ops(m, c, mt, n_rows, logits, e);
}

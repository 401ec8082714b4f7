/* The CPU reference backend: plain loops, fp32 activations and weights, fp32
 * accumulate. Written to be read and trusted, not to be fast: every CUDA op
 * is checked against these functions. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../backend_impl.h"
#include "cpu_ops.h"
#include "sl_rng.h"

typedef struct cpu_backend {
    struct sl_backend base;
} cpu_backend;

/* Element access on the 2-D view of a tensor. */
static inline float ld(const sl_tensor *t, int64_t r, int64_t c)
{
    int64_t i = r * sl_tensor_ld(t) + c;
    if (t->dtype == SL_DTYPE_F32) return ((const float *)t->data)[i];
    return sl_load_f32(t->data, t->dtype, i);
}

static inline void st(sl_tensor *t, int64_t r, int64_t c, float v)
{
    int64_t i = r * sl_tensor_ld(t) + c;
    switch (t->dtype) {
    case SL_DTYPE_F32: ((float *)t->data)[i] = v; break;
    case SL_DTYPE_BF16: ((uint16_t *)t->data)[i] = sl_f32_to_bf16(v); break;
    case SL_DTYPE_F16: ((uint16_t *)t->data)[i] = sl_f32_to_f16(v); break;
    case SL_DTYPE_F8E4M3: ((uint8_t *)t->data)[i] = sl_f32_to_e4m3(v); break;
    default: SL_ASSERT(0 && "store to non-float tensor");
    }
}

static inline float silu(float x) { return x / (1.0f + expf(-x)); }
static inline float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

/* ---- memory ---------------------------------------------------------------- */

static void cpu_free(sl_backend *be) { free(be); }

static sl_status cpu_alloc(sl_backend *be, sl_tensor *t, size_t bytes, sl_err *e)
{
    (void)be;
    t->data = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (!t->data) return sl_err_set(e, SL_ERR_NOMEM, "cannot allocate %zu bytes", bytes);
    t->on_device = 0;
    return SL_OK;
}

static void cpu_release(sl_backend *be, sl_tensor *t)
{
    (void)be;
    free(t->data);
}

static sl_status cpu_upload(sl_backend *be, sl_tensor *t, const void *src, sl_dtype src_dt,
                            sl_err *e)
{
    (void)be;
    int64_t n = sl_tensor_numel(t);
    if (src_dt == t->dtype) {
        memcpy(t->data, src, (size_t)n * sl_dtype_size(t->dtype));
        return SL_OK;
    }
    if (t->dtype == SL_DTYPE_I32 || src_dt == SL_DTYPE_I32)
        return sl_err_set(e, SL_ERR_UNSUPPORTED, "cannot convert %s to %s", sl_dtype_name(src_dt),
                          sl_dtype_name(t->dtype));
    sl_tensor flat = sl_tensor_make(t->data, t->dtype, 1, &n);
    for (int64_t i = 0; i < n; i++) st(&flat, 0, i, sl_load_f32(src, src_dt, i));
    return SL_OK;
}

static sl_status cpu_download(sl_backend *be, const sl_tensor *t, float *dst, sl_err *e)
{
    (void)be;
    (void)e;
    int64_t R = sl_tensor_rows(t), C = sl_tensor_cols(t);
    for (int64_t r = 0; r < R; r++)
        for (int64_t c = 0; c < C; c++) dst[r * C + c] = ld(t, r, c);
    return SL_OK;
}

static sl_status cpu_sync(sl_backend *be, sl_err *e)
{
    (void)be;
    (void)e;
    return SL_OK;
}

/* ---- dense ops -------------------------------------------------------------- */

static void cpu_embed(sl_backend *be, sl_tensor *out, const sl_tensor *table, int64_t v0,
                      const sl_batch_meta *m)
{
    (void)be;
    int64_t H = sl_tensor_cols(table), V = sl_tensor_rows(table);
    for (int t = 0; t < m->n_tokens; t++) {
        int64_t id = (m->feed && m->feed[t] >= 0 ? m->feed_ids[m->feed[t]] : m->ids[t]) - v0;
        int in = id >= 0 && id < V; /* vocab-parallel: rows outside this shard are zero */
        for (int64_t c = 0; c < H; c++) st(out, t, c, in ? ld(table, id, c) : 0.0f);
    }
}

static void cpu_matmul(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *w)
{
    (void)be;
    int64_t M = sl_tensor_rows(x), K = sl_tensor_cols(x), N = sl_tensor_rows(w);
    float *xr = malloc(sizeof(float) * (size_t)K);
    for (int64_t i = 0; i < M; i++) {
        for (int64_t k = 0; k < K; k++) xr[k] = ld(x, i, k);
        for (int64_t j = 0; j < N; j++) {
            float acc = 0.0f;
            if (w->dtype == SL_DTYPE_F32) {
                /* eight independent partial sums: the compiler may vectorise
                 * them without reassociating a single chain */
                const float *wr = (const float *)w->data + j * sl_tensor_ld(w);
                float part[8] = {0};
                int64_t k = 0;
                for (; k + 8 <= K; k += 8)
                    for (int l = 0; l < 8; l++) part[l] += xr[k + l] * wr[k + l];
                for (; k < K; k++) acc += xr[k] * wr[k];
                for (int l = 0; l < 8; l++) acc += part[l];
            } else {
                for (int64_t k = 0; k < K; k++) acc += xr[k] * ld(w, j, k);
            }
            st(out, i, j, acc);
        }
    }
    free(xr);
}

/* normalises columns [c0, c0+D) of row r, D = numel(w) */
static void rmsnorm_group(sl_tensor *out, const sl_tensor *x, int64_t r, int64_t c0,
                          const sl_tensor *w, float eps, int one_plus)
{
    int64_t D = sl_tensor_numel(w);
    float ss = 0.0f;
    for (int64_t c = 0; c < D; c++) {
        float v = ld(x, r, c0 + c);
        ss += v * v;
    }
    float inv = 1.0f / sqrtf(ss / (float)D + eps);
    for (int64_t c = 0; c < D; c++) {
        float wv = ((const float *)w->data)[c];
        st(out, r, c0 + c, ld(x, r, c0 + c) * inv * (one_plus ? 1.0f + wv : wv));
    }
}

static void cpu_rmsnorm(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *w,
                        float eps, int one_plus)
{
    (void)be;
    SL_ASSERT(w->dtype == SL_DTYPE_F32);
    int64_t D = sl_tensor_numel(w);
    for (int64_t r = 0; r < sl_tensor_rows(x); r++)
        for (int64_t c0 = 0; c0 < sl_tensor_cols(x); c0 += D)
            rmsnorm_group(out, x, r, c0, w, eps, one_plus);
}

static void cpu_add(sl_backend *be, sl_tensor *out, const sl_tensor *a, const sl_tensor *b)
{
    (void)be;
    for (int64_t r = 0; r < sl_tensor_rows(a); r++)
        for (int64_t c = 0; c < sl_tensor_cols(a); c++) st(out, r, c, ld(a, r, c) + ld(b, r, c));
}

static void cpu_add_rmsnorm(sl_backend *be, sl_tensor *out, sl_tensor *resid, const sl_tensor *x,
                            const sl_tensor *w, float eps, int one_plus, sl_fp8_act *q)
{
    cpu_add(be, resid, resid, x);
    cpu_rmsnorm(be, out, resid, w, eps, one_plus);
    sl_cpu_fp8_act_make(be, q, out);
}

static void cpu_rope(sl_backend *be, sl_tensor *x, int n_heads, int head_dim, int rot_dim,
                     float theta, const sl_batch_meta *m)
{
    (void)be;
    int half = rot_dim / 2;
    for (int t = 0; t < m->n_tokens; t++) {
        float p = (float)m->pos[t];
        for (int i = 0; i < half; i++) {
            /* as transformers: inv_freq, angle and cos/sin all in fp32 */
            float inv = 1.0f / powf(theta, (float)(2 * i) / (float)rot_dim);
            float ang = p * inv, c = cosf(ang), s = sinf(ang);
            for (int h = 0; h < n_heads; h++) {
                int64_t c0 = (int64_t)h * head_dim + i, c1 = c0 + half;
                float x0 = ld(x, t, c0), x1 = ld(x, t, c1);
                st(x, t, c0, x0 * c - x1 * s);
                st(x, t, c1, x1 * c + x0 * s);
            }
        }
    }
}

static void cpu_silu_mul(sl_backend *be, sl_tensor *out, const sl_tensor *gu, sl_fp8_act *q)
{
    int64_t I = sl_tensor_cols(out);
    for (int64_t r = 0; r < sl_tensor_rows(gu); r++)
        for (int64_t c = 0; c < I; c++) st(out, r, c, silu(ld(gu, r, c)) * ld(gu, r, I + c));
    sl_cpu_fp8_act_make(be, q, out);
}

static void cpu_sigmoid_mul(sl_backend *be, sl_tensor *x, const sl_tensor *g, sl_fp8_act *q)
{
    for (int64_t r = 0; r < sl_tensor_rows(x); r++)
        for (int64_t c = 0; c < sl_tensor_cols(x); c++)
            st(x, r, c, ld(x, r, c) * sigmoid(ld(g, r, sl_tensor_cols(g) == 1 ? 0 : c)));
    sl_cpu_fp8_act_make(be, q, x);
}

/* ---- attention ---------------------------------------------------------------- */

static void cpu_kv_store(sl_backend *be, sl_tensor *kc, sl_tensor *vc, const sl_tensor *k,
                         const sl_tensor *v, const sl_batch_meta *m)
{
    (void)be;
    for (int t = 0; t < m->n_tokens; t++) {
        int64_t row = m->kv_slot[t];
        for (int64_t c = 0; c < sl_tensor_cols(k); c++) st(kc, row, c, ld(k, t, c));
        for (int64_t c = 0; c < sl_tensor_cols(v); c++) st(vc, row, c, ld(v, t, c));
    }
}

static void cpu_attn_prep(sl_backend *be, sl_tensor *q, sl_tensor *k, const sl_tensor *v,
                          const sl_tensor *qn, const sl_tensor *kn, float eps, int one_plus,
                          int head_dim, int rot_dim, float theta, sl_tensor *kc, sl_tensor *vc,
                          const sl_batch_meta *m)
{
    cpu_rmsnorm(be, q, q, qn, eps, one_plus);
    cpu_rmsnorm(be, k, k, kn, eps, one_plus);
    cpu_rope(be, q, (int)(sl_tensor_cols(q) / head_dim), head_dim, rot_dim, theta, m);
    cpu_rope(be, k, (int)(sl_tensor_cols(k) / head_dim), head_dim, rot_dim, theta, m);
    cpu_kv_store(be, kc, vc, k, v, m);
}

static void cpu_attention(sl_backend *be, sl_tensor *out, const sl_tensor *q,
                          const sl_tensor *kc, const sl_tensor *vc, int Hq, int Hkv, int D,
                          float scale, const sl_batch_meta *m, sl_fp8_act *oq)
{
    int group = Hq / Hkv, P = m->page_size;
    int maxkv = 0;
    for (int s = 0; s < m->n_seqs; s++)
        if (m->kv_len[s] > maxkv) maxkv = m->kv_len[s];
    float *score = malloc(sizeof(float) * (size_t)(maxkv > 0 ? maxkv : 1));
    float *acc = malloc(sizeof(float) * (size_t)D);
    for (int s = 0; s < m->n_seqs; s++) {
        int q0 = m->q_start[s], qn = m->q_start[s + 1] - q0;
        int prefix = m->kv_len[s] - qn;
        const int32_t *pages = m->page_table + (int64_t)s * m->max_pages;
        for (int i = 0; i < qn; i++) {
            int t = q0 + i, nkv = prefix + i + 1; /* causal: positions 0..prefix+i */
            for (int h = 0; h < Hq; h++) {
                int kh = h / group;
                float mx = -INFINITY;
                for (int j = 0; j < nkv; j++) {
                    int64_t row = (int64_t)pages[j / P] * P + j % P;
                    float d = 0.0f;
                    for (int c = 0; c < D; c++)
                        d += ld(q, t, (int64_t)h * D + c) * ld(kc, row, (int64_t)kh * D + c);
                    score[j] = d * scale;
                    if (score[j] > mx) mx = score[j];
                }
                float sum = 0.0f;
                for (int j = 0; j < nkv; j++) {
                    score[j] = expf(score[j] - mx);
                    sum += score[j];
                }
                for (int c = 0; c < D; c++) acc[c] = 0.0f;
                for (int j = 0; j < nkv; j++) {
                    int64_t row = (int64_t)pages[j / P] * P + j % P;
                    float p = score[j] / sum;
                    for (int c = 0; c < D; c++) acc[c] += p * ld(vc, row, (int64_t)kh * D + c);
                }
                for (int c = 0; c < D; c++) st(out, t, (int64_t)h * D + c, acc[c]);
            }
        }
    }
    free(score);
    free(acc);
    sl_cpu_fp8_act_make(be, oq, out);
}

/* ---- Gated DeltaNet ------------------------------------------------------------- */

/* state pool [S, C, K-1]: conv history per slot, oldest input first */
static void cpu_conv1d(sl_backend *be, sl_tensor *y, const sl_tensor *x, const sl_tensor *w,
                       sl_tensor *state, const sl_batch_meta *m)
{
    (void)be;
    SL_ASSERT(state->dtype == SL_DTYPE_F32);
    int64_t C = w->ne[0], K = sl_tensor_cols(w), H = K - 1;
    float *hist = malloc(sizeof(float) * (size_t)(C * (H > 0 ? H : 1)));
    float *sp = state->data;
    for (int s = 0; s < m->n_seqs; s++) {
        int q0 = m->q_start[s], qn = m->q_start[s + 1] - q0, slot = m->state_slot[s];
        float *mine = sp + (int64_t)slot * C * H;
        if (m->state_fresh[s]) memset(hist, 0, sizeof(float) * (size_t)(C * H));
        else memcpy(hist, mine, sizeof(float) * (size_t)(C * H));
        for (int i = 0; i < qn; i++) {
            int t = q0 + i;
            for (int64_t c = 0; c < C; c++) {
                float xt = ld(x, t, c), acc = 0.0f;
                float *hc = hist + c * H;
                for (int64_t j = 0; j < H; j++) acc += ld(w, c, j) * hc[j];
                acc += ld(w, c, H) * xt;
                for (int64_t j = 0; j + 1 < H; j++) hc[j] = hc[j + 1];
                if (H > 0) hc[H - 1] = xt;
                st(y, t, c, silu(acc));
            }
            if (m->track_slot[s] >= 0 && i + 1 == m->track_len[s])
                memcpy(sp + (int64_t)m->track_slot[s] * C * H, hist, sizeof(float) * (size_t)(C * H));
        }
        memcpy(mine, hist, sizeof(float) * (size_t)(C * H));
    }
    free(hist);
}

static float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

static void l2norm(float *v, int n)
{
    float ss = 0.0f;
    for (int i = 0; i < n; i++) ss += v[i] * v[i];
    float inv = 1.0f / sqrtf(ss + 1e-6f);
    for (int i = 0; i < n; i++) v[i] *= inv;
}

static void cpu_gdn(sl_backend *be, sl_tensor *out, const sl_tensor *qkv, const sl_tensor *a,
                    const sl_tensor *b, const sl_tensor *A_log, const sl_tensor *dt_bias,
                    sl_tensor *ssm, int Hk, int Hv, int Dk, int Dv, const sl_batch_meta *m)
{
    (void)be;
    int r = Hv / Hk;
    int64_t sz = (int64_t)Dk * Dv, slot_sz = (int64_t)Hv * sz;
    float *S = malloc(sizeof(float) * (size_t)sz);
    float *q = malloc(sizeof(float) * (size_t)Dk), *k = malloc(sizeof(float) * (size_t)Dk);
    float *u = malloc(sizeof(float) * (size_t)Dv);
    float *pool = ssm->data;
    float qscale = 1.0f / sqrtf((float)Dk);
    for (int s = 0; s < m->n_seqs; s++) {
        int q0 = m->q_start[s], qn = m->q_start[s + 1] - q0;
        for (int h = 0; h < Hv; h++) {
            int kh = h / r;
            float *mine = pool + (int64_t)m->state_slot[s] * slot_sz + h * sz;
            if (m->state_fresh[s]) memset(S, 0, sizeof(float) * (size_t)sz);
            else memcpy(S, mine, sizeof(float) * (size_t)sz);
            float A = -expf(ld(A_log, 0, h)), bias = ld(dt_bias, 0, h);
            for (int i = 0; i < qn; i++) {
                int t = q0 + i;
                for (int c = 0; c < Dk; c++) {
                    q[c] = ld(qkv, t, (int64_t)kh * Dk + c);
                    k[c] = ld(qkv, t, (int64_t)Hk * Dk + kh * Dk + c);
                }
                l2norm(q, Dk);
                l2norm(k, Dk);
                for (int c = 0; c < Dk; c++) q[c] *= qscale;
                float decay = expf(A * softplus(ld(a, t, h) + bias));
                float beta = sigmoid(ld(b, t, h));
                /* S ← e^g S;  u = β (v − Sᵀk);  S ← S + k uᵀ;  o = Sᵀq */
                for (int64_t j = 0; j < sz; j++) S[j] *= decay;
                for (int c = 0; c < Dv; c++) {
                    float kv = 0.0f;
                    for (int d = 0; d < Dk; d++) kv += S[(int64_t)d * Dv + c] * k[d];
                    u[c] = beta * (ld(qkv, t, (int64_t)2 * Hk * Dk + (int64_t)h * Dv + c) - kv);
                }
                for (int d = 0; d < Dk; d++)
                    for (int c = 0; c < Dv; c++) S[(int64_t)d * Dv + c] += k[d] * u[c];
                for (int c = 0; c < Dv; c++) {
                    float o = 0.0f;
                    for (int d = 0; d < Dk; d++) o += S[(int64_t)d * Dv + c] * q[d];
                    st(out, t, (int64_t)h * Dv + c, o);
                }
                if (m->track_slot[s] >= 0 && i + 1 == m->track_len[s])
                    memcpy(pool + (int64_t)m->track_slot[s] * slot_sz + h * sz, S,
                           sizeof(float) * (size_t)sz);
            }
            memcpy(mine, S, sizeof(float) * (size_t)sz);
        }
    }
    free(S);
    free(q);
    free(k);
    free(u);
}

static void cpu_rmsnorm_gated(sl_backend *be, sl_tensor *out, const sl_tensor *x,
                              const sl_tensor *z, const sl_tensor *w, float eps, sl_fp8_act *q)
{
    int64_t D = sl_tensor_numel(w);
    for (int64_t r = 0; r < sl_tensor_rows(x); r++)
        for (int64_t c0 = 0; c0 < sl_tensor_cols(x); c0 += D) {
            float ss = 0.0f;
            for (int64_t c = 0; c < D; c++) ss += ld(x, r, c0 + c) * ld(x, r, c0 + c);
            float inv = 1.0f / sqrtf(ss / (float)D + eps);
            for (int64_t c = 0; c < D; c++)
                st(out, r, c0 + c,
                   ld(x, r, c0 + c) * inv * ld(w, 0, c) * silu(ld(z, r, c0 + c)));
        }
    sl_cpu_fp8_act_make(be, q, out);
}

/* sl_be_gdn_decode as the three ops it stands for, so that the CPU suites run the
 * model's fused call (its operands) as well as the three calls it makes when tracing */
static int cpu_gdn_decode(sl_backend *be, sl_tensor *normed, sl_tensor *core, sl_tensor *conv,
                          const sl_tensor *mixed, const sl_tensor *z, const sl_tensor *a, const sl_tensor *b,
                          const sl_gdn_layer *l, sl_tensor *conv_state, sl_tensor *ssm, const sl_batch_meta *m,
                          sl_fp8_act *q)
{
    cpu_conv1d(be, conv, mixed, l->conv_w, conv_state, m);
    cpu_gdn(be, core, conv, a, b, l->A_log, l->dt_bias, ssm, l->n_k_heads, l->n_v_heads, l->k_dim, l->v_dim, m);
    cpu_rmsnorm_gated(be, normed, core, z, l->gnorm, l->eps, q);
    return 1;
}

/* ---- MoE ------------------------------------------------------------------------ */

static void cpu_moe_route(sl_backend *be, sl_tensor *ids, sl_tensor *weights,
                          const sl_tensor *logits, int k, int norm, int shared)
{
    (void)be;
    int64_t T = sl_tensor_rows(logits), E = sl_tensor_cols(logits) - shared;
    float *p = malloc(sizeof(float) * (size_t)E);
    for (int64_t t = 0; t < T; t++) {
        float mx = -INFINITY, sum = 0.0f;
        for (int64_t e = 0; e < E; e++) {
            p[e] = ld(logits, t, e);
            if (p[e] > mx) mx = p[e];
        }
        for (int64_t e = 0; e < E; e++) {
            p[e] = expf(p[e] - mx);
            sum += p[e];
        }
        for (int64_t e = 0; e < E; e++) p[e] /= sum;
        float tot = 0.0f;
        int32_t *idr = (int32_t *)ids->data + t * sl_tensor_ld(ids);
        float *wr = (float *)weights->data + t * sl_tensor_ld(weights);
        for (int j = 0; j < k; j++) { /* selection: largest first, lowest index on ties */
            int64_t best = -1;
            for (int64_t e = 0; e < E; e++)
                if (p[e] >= 0.0f && (best < 0 || p[e] > p[best])) best = e;
            idr[j] = (int32_t)best;
            wr[j] = p[best];
            tot += p[best];
            p[best] = -1.0f;
        }
        if (norm)
            for (int j = 0; j < k; j++) wr[j] /= tot;
        if (shared) { /* the shared expert, gated by σ of its own logit */
            idr[k] = (int32_t)E;
            wr[k] = 1.0f / (1.0f + expf(-ld(logits, t, E)));
        }
    }
    free(p);
}

static void cpu_moe_experts(sl_backend *be, sl_tensor *out, const sl_tensor *x,
                            const sl_tensor *ids, const sl_tensor *weights,
                            const sl_tensor *gate_up, const sl_tensor *down)
{
    (void)be;
    int64_t T = sl_tensor_rows(x), H = sl_tensor_cols(x), I = down->ne[2];
    int k = (int)sl_tensor_cols(ids);
    float *h = malloc(sizeof(float) * (size_t)(2 * I)), *acc = malloc(sizeof(float) * (size_t)H);
    for (int64_t t = 0; t < T; t++) {
        for (int64_t c = 0; c < H; c++) acc[c] = 0.0f;
        const int32_t *idr = (const int32_t *)ids->data + t * sl_tensor_ld(ids);
        const float *wr = (const float *)weights->data + t * sl_tensor_ld(weights);
        for (int j = 0; j < k; j++) {
            int64_t e = idr[j];
            sl_tensor gu = sl_tensor_make((char *)gate_up->data + e * gate_up->st[0] *
                                          (int64_t)sl_dtype_size(gate_up->dtype),
                                          gate_up->dtype, 2, (int64_t[]){2 * I, H});
            sl_tensor dn = sl_tensor_make((char *)down->data + e * down->st[0] *
                                          (int64_t)sl_dtype_size(down->dtype),
                                          down->dtype, 2, (int64_t[]){H, I});
            for (int64_t o = 0; o < 2 * I; o++) {
                float d = 0.0f;
                for (int64_t c = 0; c < H; c++) d += ld(&gu, o, c) * ld(x, t, c);
                h[o] = d;
            }
            for (int64_t o = 0; o < I; o++) h[o] = silu(h[o]) * h[I + o];
            for (int64_t c = 0; c < H; c++) {
                float d = 0.0f;
                for (int64_t o = 0; o < I; o++) d += ld(&dn, c, o) * h[o];
                acc[c] += wr[j] * d;
            }
        }
        for (int64_t c = 0; c < H; c++) st(out, t, c, acc[c]);
    }
    free(h);
    free(acc);
}

/* ---- data movement ---------------------------------------------------------------- */

static void cpu_gather_rows(sl_backend *be, sl_tensor *out, const sl_tensor *x,
                            const sl_batch_meta *m)
{
    (void)be;
    for (int i = 0; i < m->n_logits; i++)
        for (int64_t c = 0; c < sl_tensor_cols(x); c++) st(out, i, c, ld(x, m->logit_rows[i], c));
}

static void cpu_copy_slots(sl_backend *be, sl_tensor *pool, const int32_t *dst,
                           const int32_t *src, int n)
{
    (void)be;
    size_t row = (size_t)(sl_tensor_numel(pool) / pool->ne[0]) * sl_dtype_size(pool->dtype);
    char *p = pool->data;
    for (int i = 0; i < n; i++) {
        if (src[i] < 0) memset(p + (size_t)dst[i] * row, 0, row);
        else if (src[i] != dst[i]) memcpy(p + (size_t)dst[i] * row, p + (size_t)src[i] * row, row);
    }
}

static void cpu_fill_random(sl_backend *be, sl_tensor *t, uint64_t seed, float scale,
                            float offset, const sl_fill_index *ix)
{
    (void)be;
    if (ix) {
        for (int64_t r = 0; r < sl_tensor_rows(t); r++) {
            int64_t base = (ix->rows ? ix->rows[r] : ix->row0 + r) * ix->g_cols + ix->col0;
            for (int64_t c = 0; c < sl_tensor_cols(t); c++)
                st(t, r, c, offset + scale * (2.0f * sl_rng_uniform(seed, (uint64_t)(base + c)) - 1.0f));
        }
        return;
    }
    int64_t n = sl_tensor_numel(t);
    sl_tensor flat = sl_tensor_make(t->data, t->dtype, 1, &n);
    for (int64_t i = 0; i < n; i++)
        st(&flat, 0, i, offset + scale * (2.0f * sl_rng_uniform(seed, (uint64_t)i) - 1.0f));
}

static void cpu_argmax(sl_backend *be, sl_tensor *ids, const sl_tensor *x)
{
    (void)be;
    for (int64_t r = 0; r < sl_tensor_rows(x); r++) {
        int64_t best = 0;
        for (int64_t c = 1; c < sl_tensor_cols(x); c++)
            if (ld(x, r, c) > ld(x, r, best)) best = c;
        ((int32_t *)ids->data)[r] = (int32_t)best;
    }
}

static const sl_backend_i cpu_iface = {
    .name = "cpu",
    .act_dtype = SL_DTYPE_F32,
    .weight_dtype = SL_DTYPE_F32,
    /* as CUDA's (its decode GEMVs), so that the CPU tests run the model's
     * producer / matmul pairs: its matmul reads the codes it is given */
    .fp8_act_rows = 8,
    .free = cpu_free,
    .alloc = cpu_alloc,
    .release = cpu_release,
    .upload = cpu_upload,
    .download = cpu_download,
    .sync = cpu_sync,
    .prepare = NULL,
    .embed = cpu_embed,
    .matmul = cpu_matmul,
    .rmsnorm = cpu_rmsnorm,
    .add = cpu_add,
    .add_rmsnorm = cpu_add_rmsnorm,
    .rope = cpu_rope,
    .silu_mul = cpu_silu_mul,
    .sigmoid_mul = cpu_sigmoid_mul,
    .kv_store = cpu_kv_store,
    .attention = cpu_attention,
    .conv1d = cpu_conv1d,
    .gdn = cpu_gdn,
    .gdn_decode = cpu_gdn_decode,
    .rmsnorm_gated = cpu_rmsnorm_gated,
    .moe_route = cpu_moe_route,
    .moe_experts = cpu_moe_experts,
    .gather_rows = cpu_gather_rows,
    .copy_slots = cpu_copy_slots,
    .fill_random = cpu_fill_random,
    .argmax = cpu_argmax,
    .attn_prep = cpu_attn_prep,
    .sample = sl_cpu_sample,
    .matmul_fp8 = sl_cpu_matmul_fp8,
    .moe_experts_fp8 = sl_cpu_moe_experts_fp8,
};

sl_backend *sl_backend_cpu_new(void)
{
    cpu_backend *b = calloc(1, sizeof *b);
    if (b) b->base.i = &cpu_iface;
    return &b->base;
}

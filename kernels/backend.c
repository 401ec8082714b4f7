#include "backend_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

size_t sl_dtype_size(sl_dtype t)
{
    switch (t) {
    case SL_DTYPE_F32: return 4;
    case SL_DTYPE_BF16: return 2;
    case SL_DTYPE_F16: return 2;
    case SL_DTYPE_I32: return 4;
    case SL_DTYPE_F8E4M3: return 1;
    default: return 0;
    }
}

const char *sl_dtype_name(sl_dtype t)
{
    static const char *n[] = {"f32", "bf16", "f16", "i32", "f8e4m3"};
    return (unsigned)t < SL_DTYPE_COUNT ? n[t] : "?";
}

const char *sl_op_name(sl_op op)
{
    static const char *n[SL_OP_COUNT] = {
        "embed",    "matmul", "rmsnorm",  "add",     "add_rmsnorm", "rope",        "silu_mul",
        "sigmoid_mul", "kv_store", "attention", "conv1d",     "gdn",         "rmsnorm_gated",
        "moe_route", "moe_experts", "gather_rows", "copy_slots", "fill_random", "argmax",
        "attn_prep", "sample", "matmul_fp8", "moe_experts_fp8", "moe_router"};
    return (unsigned)op < SL_OP_COUNT ? n[op] : "?";
}

sl_tensor sl_tensor_make(void *data, sl_dtype dt, int ndim, const int64_t *ne)
{
    sl_tensor t = {0};
    SL_ASSERT(ndim >= 1 && ndim <= SL_MAX_DIMS);
    t.data = data;
    t.dtype = dt;
    t.ndim = ndim;
    int64_t s = 1;
    for (int d = ndim - 1; d >= 0; d--) {
        t.ne[d] = ne[d];
        t.st[d] = s;
        s *= ne[d];
    }
    return t;
}

int64_t sl_tensor_numel(const sl_tensor *t)
{
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= t->ne[d];
    return n;
}

int64_t sl_tensor_rows(const sl_tensor *t)
{
    int64_t n = 1;
    for (int d = 0; d < t->ndim - 1; d++) n *= t->ne[d];
    return n;
}

int64_t sl_tensor_cols(const sl_tensor *t) { return t->ne[t->ndim - 1]; }

int64_t sl_tensor_ld(const sl_tensor *t)
{
    return t->ndim >= 2 ? t->st[t->ndim - 2] : t->ne[0];
}

static char *elem_ptr(const sl_tensor *t, int64_t row, int64_t col)
{
    return (char *)t->data + (row * sl_tensor_ld(t) + col) * (int64_t)sl_dtype_size(t->dtype);
}

sl_tensor sl_tensor_colview(const sl_tensor *t, int64_t c0, int64_t n)
{
    SL_ASSERT(c0 >= 0 && c0 + n <= sl_tensor_cols(t));
    sl_tensor v = *t;
    v.data = elem_ptr(t, 0, c0);
    v.ndim = 2;
    v.ne[0] = sl_tensor_rows(t);
    v.ne[1] = n;
    v.st[0] = sl_tensor_ld(t);
    v.st[1] = 1;
    return v;
}

sl_tensor sl_tensor_rowview(const sl_tensor *t, int64_t r0, int64_t n)
{
    SL_ASSERT(r0 >= 0 && r0 + n <= sl_tensor_rows(t));
    sl_tensor v = *t;
    v.data = elem_ptr(t, r0, 0);
    v.ndim = 2;
    v.ne[0] = n;
    v.ne[1] = sl_tensor_cols(t);
    v.st[0] = sl_tensor_ld(t);
    v.st[1] = 1;
    return v;
}

sl_tensor sl_tensor_reshape(const sl_tensor *t, int ndim, const int64_t *ne)
{
    sl_tensor v = sl_tensor_make(t->data, t->dtype, ndim, ne);
    SL_ASSERT(sl_tensor_numel(&v) == sl_tensor_numel(t));
    SL_ASSERT(sl_tensor_ld(t) == sl_tensor_cols(t) || t->ndim == 1);
    v.on_device = t->on_device;
    return v;
}

/* ---- conversions ---------------------------------------------------------- */

float sl_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t sl_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float sl_f16_to_f32(uint16_t h)
{
    uint32_t s = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff, u;
    if (e == 0) {
        if (m == 0) {
            u = s;
        } else { /* subnormal: renormalise */
            e = 127 - 15 + 1;
            while (!(m & 0x400)) {
                m <<= 1;
                e--;
            }
            u = s | (e << 23) | ((m & 0x3ff) << 13);
        }
    } else if (e == 31) {
        u = s | 0x7f800000u | (m << 13);
    } else {
        u = s | ((e + 127 - 15) << 23) | (m << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t sl_f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t s = (u >> 16) & 0x8000;
    int32_t e = (int32_t)((u >> 23) & 0xff) - 127 + 15;
    uint32_t m = u & 0x7fffff;
    if (((u >> 23) & 0xff) == 0xff) return (uint16_t)(s | 0x7c00 | (m ? 0x200 : 0));
    if (e >= 31) return (uint16_t)(s | 0x7c00);
    if (e <= 0) {
        if (e < -10) return (uint16_t)s;
        m |= 0x800000;
        uint32_t shift = (uint32_t)(14 - e);
        uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(s | r);
    }
    uint32_t r = ((uint32_t)e << 10) | (m >> 13), rem = m & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) r++;
    return (uint16_t)(s | r);
}

uint8_t sl_f32_to_e4m3(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint8_t sign = (uint8_t)((u >> 24) & 0x80);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7f;  /* NaN */
    if (a >= 0x43e00000u) return sign | 0x7e; /* >= 448 or inf: saturate to 448 */
    int e = (int)(a >> 23) - 127;             /* unbiased exponent */
    uint32_t m = a & 0x7fffffu;
    if (e >= -6) { /* e4m3 normal: keep 3 of 23 mantissa bits */
        uint32_t r = ((uint32_t)(e + 7) << 3) | (m >> 20), rem = m & 0xfffffu;
        if (rem > 0x80000u || (rem == 0x80000u && (r & 1))) r++; /* may carry into the exponent */
        return sign | (uint8_t)r;
    }
    if (e < -10) return sign; /* below half the smallest subnormal 2^-9 */
    /* subnormal: units of 2^-9; the full significand shifted right by 14 - e */
    uint32_t M = m | 0x800000u, sh = (uint32_t)(14 - e);
    uint32_t r = M >> sh, rem = M & ((1u << sh) - 1), half = 1u << (sh - 1);
    if (rem > half || (rem == half && (r & 1))) r++; /* 8 = the smallest normal: still right */
    return sign | (uint8_t)r;
}

float sl_e4m3_to_f32(uint8_t v)
{
    int e = (v >> 3) & 15, m = v & 7;
    float x;
    if (e == 15 && m == 7) x = NAN;
    else if (e == 0) x = ldexpf((float)m, -9);
    else x = ldexpf((float)(8 + m), e - 10);
    return (v & 0x80) ? -x : x;
}

void sl_fp8_quantize_blocks(const float *w, int64_t rows, int64_t cols, uint8_t *q, float *scale_inv)
{
    const int64_t B = SL_FP8_BLOCK, nrb = (rows + B - 1) / B, ncb = (cols + B - 1) / B;
    for (int64_t rb = 0; rb < nrb; rb++)
        for (int64_t cb = 0; cb < ncb; cb++) {
            int64_t r1 = (rb + 1) * B < rows ? (rb + 1) * B : rows;
            int64_t c1 = (cb + 1) * B < cols ? (cb + 1) * B : cols;
            float amax = 0.0f;
            for (int64_t r = rb * B; r < r1; r++)
                for (int64_t c = cb * B; c < c1; c++) amax = fmaxf(amax, fabsf(w[r * cols + c]));
            float s = amax / SL_FP8_MAX;
            scale_inv[rb * ncb + cb] = s;
            for (int64_t r = rb * B; r < r1; r++)
                for (int64_t c = cb * B; c < c1; c++)
                    q[r * cols + c] = s > 0.0f ? sl_f32_to_e4m3(w[r * cols + c] / s) : 0; /* zero block */
        }
}

float sl_load_f32(const void *p, sl_dtype dt, int64_t i)
{
    switch (dt) {
    case SL_DTYPE_F32: return ((const float *)p)[i];
    case SL_DTYPE_BF16: return sl_bf16_to_f32(((const uint16_t *)p)[i]);
    case SL_DTYPE_F16: return sl_f16_to_f32(((const uint16_t *)p)[i]);
    case SL_DTYPE_I32: return (float)((const int32_t *)p)[i];
    case SL_DTYPE_F8E4M3: return sl_e4m3_to_f32(((const uint8_t *)p)[i]);
    default: SL_ASSERT(0 && "bad dtype");
    }
    return NAN;
}

/* ---- dispatch -------------------------------------------------------------- */

void sl_backend_free(sl_backend *be)
{
    if (be) be->i->free(be);
}

const char *sl_be_name(const sl_backend *be) { return be->i->name; }
sl_dtype sl_be_act_dtype(const sl_backend *be) { return be->i->act_dtype; }
sl_dtype sl_be_weight_dtype(const sl_backend *be) { return be->i->weight_dtype; }
int sl_be_fp8_act_rows(const sl_backend *be) { return be->i->fp8_act_rows; }

/* A producer op's q starts as "not made"; the backend sets it where it makes them. */
static sl_fp8_act *fp8_act_reset(sl_fp8_act *q)
{
    if (q) q->rows = q->cols = 0;
    return q;
}

int sl_be_supports_op(const sl_backend *be, sl_op op)
{
    const sl_backend_i *i = be->i;
    const void *slot[SL_OP_COUNT] = {
        (const void *)i->embed,       (const void *)i->matmul,        (const void *)i->rmsnorm,
        (const void *)i->add,         (const void *)i->add_rmsnorm, (const void *)i->rope,          (const void *)i->silu_mul,
        (const void *)i->sigmoid_mul, (const void *)i->kv_store,      (const void *)i->attention,
        (const void *)i->conv1d,      (const void *)i->gdn,           (const void *)i->rmsnorm_gated,
        (const void *)i->moe_route,   (const void *)i->moe_experts,   (const void *)i->gather_rows,
        (const void *)i->copy_slots,  (const void *)i->fill_random,   (const void *)i->argmax,
        (const void *)i->attn_prep,   (const void *)i->sample,        (const void *)i->matmul_fp8,
        (const void *)i->moe_experts_fp8,
        (const void *)i->moe_route}; /* moe_router: its own pass or matmul + moe_route */
    return (unsigned)op < SL_OP_COUNT && slot[op] != NULL;
}

sl_status sl_be_alloc(sl_backend *be, sl_tensor *t, sl_dtype dt, int ndim, const int64_t *ne,
                      sl_err *e)
{
    *t = sl_tensor_make(NULL, dt, ndim, ne);
    size_t bytes = (size_t)sl_tensor_numel(t) * sl_dtype_size(dt);
    sl_status st = be->i->alloc(be, t, bytes ? bytes : 1, e);
    if (!st) be->held += bytes;
    return st;
}

void sl_be_release(sl_backend *be, sl_tensor *t)
{
    if (t->data) {
        be->i->release(be, t);
        size_t bytes = (size_t)sl_tensor_numel(t) * sl_dtype_size(t->dtype);
        be->held -= bytes < be->held ? bytes : be->held;
    }
    t->data = NULL;
}

size_t sl_be_held_bytes(const sl_backend *be) { return be->held; }

sl_status sl_be_copy(sl_backend *be, sl_tensor *dst, const sl_tensor *src, sl_err *e)
{
    size_t bytes = (size_t)sl_tensor_numel(src) * sl_dtype_size(src->dtype);
    if (src->dtype != dst->dtype || sl_tensor_numel(src) != sl_tensor_numel(dst))
        return sl_err_set(e, SL_ERR_INVALID, "copy: %lld to %lld elements or dtypes differ",
                          (long long)sl_tensor_numel(src), (long long)sl_tensor_numel(dst));
    if (!be->i->copy) {
        memcpy(dst->data, src->data, bytes);
        return SL_OK;
    }
    return be->i->copy(be, dst, src, bytes, e);
}

int sl_be_device_id(sl_backend *be, char *out, size_t n)
{
    return be->i->device_id ? be->i->device_id(be, out, n) : -1;
}

sl_status sl_be_share_export(sl_backend *be, const sl_tensor *t, sl_be_share *h, sl_err *e)
{
    if (!be->i->share_export)
        return sl_err_set(e, SL_ERR_UNSUPPORTED, "the %s backend cannot share tensors", be->i->name);
    return be->i->share_export(be, t, h, e);
}

sl_status sl_be_share_open(sl_backend *be, const sl_be_share *h, sl_tensor *t, sl_err *e)
{
    if (!be->i->share_open)
        return sl_err_set(e, SL_ERR_UNSUPPORTED, "the %s backend cannot share tensors", be->i->name);
    return be->i->share_open(be, h, t, e);
}

void sl_be_share_close(sl_backend *be, sl_tensor *t)
{
    if (t->data && be->i->share_close) be->i->share_close(be, t);
    t->data = NULL;
}

sl_status sl_be_upload(sl_backend *be, sl_tensor *t, const void *src, sl_dtype src_dt, sl_err *e)
{
    return be->i->upload(be, t, src, src_dt, e);
}

sl_status sl_be_download(sl_backend *be, const sl_tensor *t, float *dst, sl_err *e)
{
    return be->i->download(be, t, dst, e);
}

sl_status sl_be_sync(sl_backend *be, sl_err *e) { return be->i->sync(be, e); }

sl_status sl_be_mem_info(sl_backend *be, size_t *free_bytes, size_t *total_bytes, sl_err *e)
{
    if (!be->i->mem_info)
        return sl_err_set(e, SL_ERR_UNSUPPORTED, "the %s backend has no device memory", be->i->name);
    return be->i->mem_info(be, free_bytes, total_bytes, e);
}

sl_status sl_be_prepare(sl_backend *be, sl_batch_meta *m, sl_err *e)
{
    return be->i->prepare ? be->i->prepare(be, m, e) : SL_OK;
}

/* ---- pipelining ------------------------------------------------------------ */

/* Host-memory backends: ops are done when they return, so an event is a
 * timestamp and a copy out is a memcpy. */
struct sl_be_event {
    double t_ms;
};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

void *sl_be_host_alloc(sl_backend *be, size_t bytes)
{
    return be->i->host_alloc ? be->i->host_alloc(be, bytes) : malloc(bytes ? bytes : 1);
}

void sl_be_host_free(sl_backend *be, void *p)
{
    if (!p) return;
    if (be->i->host_free) be->i->host_free(be, p);
    else free(p);
}

sl_status sl_be_copy_out(sl_backend *be, const sl_tensor *t, void *dst, sl_err *e)
{
    if (be->i->copy_out) return be->i->copy_out(be, t, dst, e);
    memcpy(dst, t->data, (size_t)sl_tensor_numel(t) * sl_dtype_size(t->dtype));
    return SL_OK;
}

sl_status sl_be_event_new(sl_backend *be, sl_be_event **ev, sl_err *e)
{
    if (be->i->event_new) return be->i->event_new(be, ev, e);
    if (!(*ev = calloc(1, sizeof **ev))) return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    return SL_OK;
}

void sl_be_event_free(sl_backend *be, sl_be_event *ev)
{
    if (!ev) return;
    if (be->i->event_free) be->i->event_free(be, ev);
    else free(ev);
}

sl_status sl_be_event_record(sl_backend *be, sl_be_event *ev, sl_err *e)
{
    if (be->i->event_record) return be->i->event_record(be, ev, e);
    ev->t_ms = now_ms();
    return SL_OK;
}

sl_status sl_be_event_wait(sl_backend *be, sl_be_event *ev, sl_err *e)
{
    return be->i->event_wait ? be->i->event_wait(be, ev, e) : SL_OK;
}

float sl_be_event_ms(sl_backend *be, sl_be_event *from, sl_be_event *to)
{
    if (be->i->event_ms) return be->i->event_ms(be, from, to);
    return (float)(to->t_ms - from->t_ms);
}

int sl_be_has_graphs(const sl_backend *be)
{
    return be->i->capture_begin != NULL;
}

sl_status sl_be_prepare_fixed(sl_backend *be, sl_batch_meta *m, int max_tokens, int max_ctx,
                              sl_err *e)
{
    SL_ASSERT(m->n_tokens <= max_tokens && m->n_seqs <= max_tokens);
    if (be->i->prepare_fixed) return be->i->prepare_fixed(be, m, max_tokens, max_ctx, e);
    return sl_be_prepare(be, m, e);
}

sl_status sl_be_capture_begin(sl_backend *be, sl_err *e)
{
    if (!be->i->capture_begin)
        return sl_err_set(e, SL_ERR_UNSUPPORTED, "the %s backend has no graphs", be->i->name);
    return be->i->capture_begin(be, e);
}

sl_status sl_be_capture_end(sl_backend *be, sl_be_graph **g, sl_err *e)
{
    *g = NULL;
    return be->i->capture_end(be, g, e);
}

sl_status sl_be_graph_launch(sl_backend *be, sl_be_graph *g, sl_err *e)
{
    return be->i->graph_launch(be, g, e);
}

void sl_be_graph_free(sl_backend *be, sl_be_graph *g)
{
    if (g) be->i->graph_free(be, g);
}

#define NEED(slot) SL_ASSERT(be->i->slot && "op not supported by this backend")

void sl_be_embed(sl_backend *be, sl_tensor *out, const sl_tensor *table, const sl_batch_meta *m)
{
    NEED(embed);
    SL_ASSERT(sl_tensor_rows(out) == m->n_tokens && sl_tensor_cols(out) == sl_tensor_cols(table));
    be->i->embed(be, out, table, 0, m);
}

void sl_be_embed_shard(sl_backend *be, sl_tensor *out, const sl_tensor *table, int64_t v0,
                       const sl_batch_meta *m)
{
    NEED(embed);
    SL_ASSERT(sl_tensor_rows(out) == m->n_tokens && sl_tensor_cols(out) == sl_tensor_cols(table));
    be->i->embed(be, out, table, v0, m);
}

void sl_be_matmul(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *w)
{
    NEED(matmul);
    SL_ASSERT(sl_tensor_cols(x) == sl_tensor_cols(w));
    SL_ASSERT(sl_tensor_rows(out) == sl_tensor_rows(x) && sl_tensor_cols(out) == sl_tensor_rows(w));
    be->i->matmul(be, out, x, w);
}

void sl_be_matmul_fp8(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *w,
                      const sl_tensor *w_scale, const sl_fp8_act *xq)
{
    NEED(matmul_fp8);
    int64_t N = sl_tensor_rows(w), K = sl_tensor_cols(w), B = SL_FP8_BLOCK;
    SL_ASSERT(w->dtype == SL_DTYPE_F8E4M3 && w_scale->dtype == SL_DTYPE_F32);
    SL_ASSERT(sl_tensor_cols(x) == K && sl_tensor_cols(w_scale) == (K + B - 1) / B);
    SL_ASSERT(sl_tensor_rows(w_scale) == N || sl_tensor_rows(w_scale) == (N + B - 1) / B);
    SL_ASSERT(sl_tensor_rows(out) == sl_tensor_rows(x) && sl_tensor_cols(out) == N);
    if (xq && (xq->rows != sl_tensor_rows(x) || xq->cols != K)) xq = NULL; /* not x's */
    be->i->matmul_fp8(be, out, x, w, w_scale, xq);
}

void sl_be_rmsnorm(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *w,
                   float eps, int one_plus)
{
    NEED(rmsnorm);
    SL_ASSERT(sl_tensor_cols(x) % sl_tensor_numel(w) == 0 && sl_tensor_rows(out) == sl_tensor_rows(x));
    be->i->rmsnorm(be, out, x, w, eps, one_plus);
}

void sl_be_add(sl_backend *be, sl_tensor *out, const sl_tensor *a, const sl_tensor *b)
{
    NEED(add);
    SL_ASSERT(sl_tensor_rows(a) == sl_tensor_rows(b) && sl_tensor_cols(a) == sl_tensor_cols(b));
    SL_ASSERT(sl_tensor_rows(out) == sl_tensor_rows(a) && sl_tensor_cols(out) == sl_tensor_cols(a));
    be->i->add(be, out, a, b);
}

void sl_be_add_rmsnorm(sl_backend *be, sl_tensor *out, sl_tensor *resid, const sl_tensor *x,
                       const sl_tensor *w, float eps, int one_plus, sl_fp8_act *q)
{
    NEED(add_rmsnorm);
    SL_ASSERT(sl_tensor_rows(resid) == sl_tensor_rows(x) && sl_tensor_cols(resid) == sl_tensor_cols(x));
    be->i->add_rmsnorm(be, out, resid, x, w, eps, one_plus, fp8_act_reset(q));
}

void sl_be_rope(sl_backend *be, sl_tensor *x, int n_heads, int head_dim, int rot_dim, float theta,
                const sl_batch_meta *m)
{
    NEED(rope);
    SL_ASSERT(sl_tensor_cols(x) == (int64_t)n_heads * head_dim && rot_dim <= head_dim &&
              rot_dim % 2 == 0 && sl_tensor_rows(x) == m->n_tokens);
    be->i->rope(be, x, n_heads, head_dim, rot_dim, theta, m);
}

void sl_be_silu_mul(sl_backend *be, sl_tensor *out, const sl_tensor *gu, sl_fp8_act *q)
{
    NEED(silu_mul);
    SL_ASSERT(sl_tensor_cols(gu) == 2 * sl_tensor_cols(out));
    be->i->silu_mul(be, out, gu, fp8_act_reset(q));
}

void sl_be_sigmoid_mul(sl_backend *be, sl_tensor *x, const sl_tensor *g, sl_fp8_act *q)
{
    NEED(sigmoid_mul);
    SL_ASSERT((sl_tensor_cols(g) == sl_tensor_cols(x) || sl_tensor_cols(g) == 1) &&
              sl_tensor_rows(x) == sl_tensor_rows(g));
    be->i->sigmoid_mul(be, x, g, fp8_act_reset(q));
}

void sl_be_kv_store(sl_backend *be, sl_tensor *kcache, sl_tensor *vcache, const sl_tensor *k,
                    const sl_tensor *v, const sl_batch_meta *m)
{
    NEED(kv_store);
    SL_ASSERT(sl_tensor_cols(kcache) == sl_tensor_cols(k) && sl_tensor_cols(vcache) == sl_tensor_cols(v));
    be->i->kv_store(be, kcache, vcache, k, v, m);
}

void sl_be_attn_prep(sl_backend *be, sl_tensor *q, sl_tensor *k, const sl_tensor *v,
                     const sl_tensor *q_norm, const sl_tensor *k_norm, float eps, int one_plus,
                     int head_dim, int rot_dim, float theta, sl_tensor *kcache, sl_tensor *vcache,
                     const sl_batch_meta *m)
{
    NEED(attn_prep);
    SL_ASSERT(sl_tensor_numel(q_norm) == head_dim && sl_tensor_numel(k_norm) == head_dim);
    SL_ASSERT(sl_tensor_cols(q) % head_dim == 0 && sl_tensor_cols(k) % head_dim == 0);
    SL_ASSERT(rot_dim <= head_dim && rot_dim % 2 == 0 && sl_tensor_rows(q) == m->n_tokens);
    SL_ASSERT(sl_tensor_cols(kcache) == sl_tensor_cols(k) && sl_tensor_cols(vcache) == sl_tensor_cols(v));
    be->i->attn_prep(be, q, k, v, q_norm, k_norm, eps, one_plus, head_dim, rot_dim, theta, kcache,
                     vcache, m);
}

void sl_be_attention(sl_backend *be, sl_tensor *out, const sl_tensor *q, const sl_tensor *kcache,
                     const sl_tensor *vcache, int n_q_heads, int n_kv_heads, int head_dim,
                     float scale, const sl_batch_meta *m, sl_fp8_act *oq)
{
    NEED(attention);
    SL_ASSERT(n_q_heads % n_kv_heads == 0);
    SL_ASSERT(sl_tensor_cols(q) == (int64_t)n_q_heads * head_dim);
    SL_ASSERT(sl_tensor_cols(kcache) == (int64_t)n_kv_heads * head_dim);
    be->i->attention(be, out, q, kcache, vcache, n_q_heads, n_kv_heads, head_dim, scale, m, fp8_act_reset(oq));
}

void sl_be_conv1d(sl_backend *be, sl_tensor *y, const sl_tensor *x, const sl_tensor *w,
                  sl_tensor *state, const sl_batch_meta *m)
{
    NEED(conv1d);
    SL_ASSERT(sl_tensor_cols(x) == w->ne[0] && state->ndim == 3 && state->ne[1] == w->ne[0]);
    be->i->conv1d(be, y, x, w, state, m);
}

void sl_be_gdn(sl_backend *be, sl_tensor *out, const sl_tensor *qkv, const sl_tensor *a,
               const sl_tensor *b, const sl_tensor *A_log, const sl_tensor *dt_bias,
               sl_tensor *ssm, int n_k_heads, int n_v_heads, int k_dim, int v_dim,
               const sl_batch_meta *m)
{
    NEED(gdn);
    SL_ASSERT(sl_tensor_cols(qkv) == (int64_t)2 * n_k_heads * k_dim + (int64_t)n_v_heads * v_dim);
    SL_ASSERT(n_v_heads % n_k_heads == 0 && ssm->dtype == SL_DTYPE_F32);
    be->i->gdn(be, out, qkv, a, b, A_log, dt_bias, ssm, n_k_heads, n_v_heads, k_dim, v_dim, m);
}

void sl_be_rmsnorm_gated(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *z,
                         const sl_tensor *w, float eps, sl_fp8_act *q)
{
    NEED(rmsnorm_gated);
    SL_ASSERT(sl_tensor_cols(x) % sl_tensor_numel(w) == 0);
    be->i->rmsnorm_gated(be, out, x, z, w, eps, fp8_act_reset(q));
}

void sl_be_moe_route(sl_backend *be, sl_tensor *ids, sl_tensor *weights, const sl_tensor *logits,
                     int k, int norm, int shared)
{
    NEED(moe_route);
    SL_ASSERT(ids->dtype == SL_DTYPE_I32 && weights->dtype == SL_DTYPE_F32 && (shared == 0 || shared == 1));
    SL_ASSERT(k <= sl_tensor_cols(logits) - shared && sl_tensor_cols(ids) == k + shared &&
              sl_tensor_cols(weights) == k + shared);
    be->i->moe_route(be, ids, weights, logits, k, norm, shared);
}

void sl_be_moe_router(sl_backend *be, sl_tensor *ids, sl_tensor *weights, sl_tensor *logits,
                      const sl_tensor *x, const sl_tensor *router, int k, int norm, int shared)
{
    SL_ASSERT(sl_tensor_cols(router) == sl_tensor_cols(x) && sl_tensor_rows(logits) == sl_tensor_rows(x) &&
              sl_tensor_cols(logits) == sl_tensor_rows(router));
    if (be->i->moe_router && be->i->moe_router(be, ids, weights, logits, x, router, k, norm, shared)) return;
    sl_be_matmul(be, logits, x, router);
    sl_be_moe_route(be, ids, weights, logits, k, norm, shared);
}

void sl_be_add_rmsnorm_router(sl_backend *be, sl_tensor *x, sl_tensor *resid, const sl_tensor *d,
                              const sl_tensor *w, float eps, int one_plus, sl_tensor *ids, sl_tensor *weights,
                              sl_tensor *logits, const sl_tensor *router, int k, int norm, int shared)
{
    if (be->i->add_rmsnorm_router &&
        be->i->add_rmsnorm_router(be, x, resid, d, w, eps, one_plus, ids, weights, logits, router, k, norm, shared))
        return;
    sl_be_add_rmsnorm(be, x, resid, d, w, eps, one_plus, NULL);
    sl_be_moe_router(be, ids, weights, logits, x, router, k, norm, shared);
}

int sl_be_gdn_decode(sl_backend *be, sl_tensor *normed, sl_tensor *core, sl_tensor *conv, const sl_tensor *mixed,
                     const sl_tensor *z, const sl_tensor *a, const sl_tensor *b, const sl_gdn_layer *l,
                     sl_tensor *conv_state, sl_tensor *ssm, const sl_batch_meta *m, sl_fp8_act *q)
{
    SL_ASSERT(sl_tensor_cols(mixed) == l->conv_w->ne[0] && sl_tensor_cols(conv) == sl_tensor_cols(mixed));
    SL_ASSERT(sl_tensor_cols(core) == (int64_t)l->n_v_heads * l->v_dim && sl_tensor_numel(l->gnorm) == l->v_dim);
    return be->i->gdn_decode &&
           be->i->gdn_decode(be, normed, core, conv, mixed, z, a, b, l, conv_state, ssm, m, fp8_act_reset(q));
}

void sl_be_moe_experts(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *ids,
                       const sl_tensor *weights, const sl_tensor *gate_up, const sl_tensor *down)
{
    NEED(moe_experts);
    SL_ASSERT(gate_up->ndim == 3 && down->ndim == 3 && gate_up->ne[2] == sl_tensor_cols(x));
    SL_ASSERT(down->ne[2] * 2 == gate_up->ne[1]);
    be->i->moe_experts(be, out, x, ids, weights, gate_up, down);
}

void sl_be_moe_experts_fp8(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *ids,
                           const sl_tensor *weights, const sl_tensor *gate_up,
                           const sl_tensor *gate_up_scale, const sl_tensor *down,
                           const sl_tensor *down_scale)
{
    NEED(moe_experts_fp8);
    int64_t B = SL_FP8_BLOCK, H = sl_tensor_cols(x);
    SL_ASSERT(gate_up->ndim == 3 && down->ndim == 3 && gate_up->ne[2] == H);
    SL_ASSERT(down->ne[2] * 2 == gate_up->ne[1] && down->ne[1] == H);
    SL_ASSERT(gate_up->dtype == SL_DTYPE_F8E4M3 && down->dtype == SL_DTYPE_F8E4M3);
    SL_ASSERT(gate_up_scale->ndim == 3 && gate_up_scale->ne[0] == gate_up->ne[0] &&
              gate_up_scale->ne[1] == gate_up->ne[1] && gate_up_scale->ne[2] == (H + B - 1) / B);
    SL_ASSERT(down_scale->ndim == 3 && down_scale->ne[0] == down->ne[0] && down_scale->ne[1] == H &&
              down_scale->ne[2] == (down->ne[2] + B - 1) / B);
    be->i->moe_experts_fp8(be, out, x, ids, weights, gate_up, gate_up_scale, down, down_scale);
}

void sl_be_gather_rows(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_batch_meta *m)
{
    NEED(gather_rows);
    SL_ASSERT(sl_tensor_rows(out) >= m->n_logits && sl_tensor_cols(out) == sl_tensor_cols(x));
    be->i->gather_rows(be, out, x, m);
}

void sl_be_copy_slots(sl_backend *be, sl_tensor *pool, const int32_t *dst, const int32_t *src,
                      int n)
{
    NEED(copy_slots);
    be->i->copy_slots(be, pool, dst, src, n);
}

void sl_be_fill_random(sl_backend *be, sl_tensor *t, uint64_t seed, float scale, float offset)
{
    NEED(fill_random);
    be->i->fill_random(be, t, seed, scale, offset, NULL);
}

void sl_be_fill_random_at(sl_backend *be, sl_tensor *t, uint64_t seed, float scale, float offset,
                          const sl_fill_index *ix)
{
    NEED(fill_random);
    be->i->fill_random(be, t, seed, scale, offset, ix);
}

void sl_be_argmax(sl_backend *be, sl_tensor *ids, const sl_tensor *x)
{
    NEED(argmax);
    SL_ASSERT(ids->dtype == SL_DTYPE_I32 && sl_tensor_numel(ids) == sl_tensor_rows(x));
    be->i->argmax(be, ids, x);
}

void sl_be_sample(sl_backend *be, sl_tensor *ids, sl_tensor *lp, const sl_tensor *logits,
                  const sl_sample_args *a)
{
    NEED(sample);
    int64_t R = sl_tensor_rows(logits);
    SL_ASSERT(logits->dtype == SL_DTYPE_F32 && a->n_rows == R);
    SL_ASSERT(ids->dtype == SL_DTYPE_I32 && sl_tensor_numel(ids) == R);
    SL_ASSERT(!lp || (lp->dtype == SL_DTYPE_F32 && sl_tensor_rows(lp) == R &&
                      sl_tensor_cols(lp) == 2 + 2 * SL_SAMPLE_MAX_TOP));
    int64_t n_pending = a->pending_ids ? sl_tensor_numel(a->pending_ids) : 0;
    SL_ASSERT(!a->pending_ids || a->pending_ids->dtype == SL_DTYPE_I32);
    for (int r = 0; r < a->n_rows; r++) {
        const sl_sample_row *w = &a->rows[r];
        SL_ASSERT(w->n_top >= 0 && w->n_top <= SL_SAMPLE_MAX_TOP && (lp || !w->logprobs));
        SL_ASSERT(w->pen_n >= 0 && w->pen_start >= 0 && w->pen_start + w->pen_n <= a->n_pen);
        SL_ASSERT(w->pending < n_pending && w->u >= 0.0f && w->u < 1.0f);
        SL_ASSERT(!a->mask || w->mask_row < a->n_mask_rows);
    }
    SL_ASSERT(!a->mask || (int64_t)a->mask_words * 32 >= sl_tensor_cols(logits));
    be->i->sample(be, ids, lp, logits, a);
}

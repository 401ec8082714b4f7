/* A request's cache in and out of a worker for a PD transfer, any TP size on
 * either side: see pd_shard.h. */
#include "pd_shard.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_buf.h"

/* Where one rank's shard sits in the whole cache (pd_shard.h): in elements
 * of a K/V row, conv channels (each of W values) and SSM slot values. */
typedef struct shard_map {
    int64_t kv_col0, kv_cols;
    int64_t ch0[3], ch_loc0[3], ch_n[3], ch_local;
    int64_t ssm0, ssm_n;
} shard_map;

struct sl_pd_shard {
    sl_engine *g;
    sl_model *m;
    sl_comm *comm;
    int rank, size;
    int64_t kv_full, conv_full, conv_w, ssm_full; /* whole KV row, conv channels, SSM slot */
    size_t kv_es, conv_es, ssm_es;                /* element sizes */
    char layout[256];
    uint8_t *kv, *state; /* rank 0: the bound whole bytes */
    sl_buf tmp;          /* one rank's shard (bytes at tmp.data) */
};

static void map_for(const sl_pd_shard *s, int r, shard_map *o)
{
    const sl_model_config *c = sl_model_cfg(s->m);
    int N = s->size;
    memset(o, 0, sizeof *o);
    if (c->n_attn_layers) {
        int64_t D = c->head_dim, H = c->n_kv_heads;
        o->kv_cols = N > H ? D : H / N * D;
        o->kv_col0 = N > H ? (int64_t)(r / (N / H)) * D : r * o->kv_cols;
    }
    if (c->n_linear_layers) {
        int64_t qk = (int64_t)c->lin_k_heads / N * c->lin_k_dim;
        int64_t v = (int64_t)c->lin_v_heads / N * c->lin_v_dim;
        int64_t all_qk = (int64_t)c->lin_k_heads * c->lin_k_dim;
        int64_t ch0[3] = {r * qk, all_qk + r * qk, 2 * all_qk + r * v};
        int64_t loc0[3] = {0, qk, 2 * qk}, n[3] = {qk, qk, v};
        memcpy(o->ch0, ch0, sizeof ch0);
        memcpy(o->ch_loc0, loc0, sizeof loc0);
        memcpy(o->ch_n, n, sizeof n);
        o->ch_local = 2 * qk + v;
        o->ssm_n = (int64_t)c->lin_v_heads / N * c->lin_k_dim * c->lin_v_dim;
        o->ssm0 = r * o->ssm_n;
    }
}

static const sl_model_cache *cache(const sl_pd_shard *s)
{
    return sl_engine_cache(s->g);
}

/* Bytes of n_pages pages of every attention layer with rows of cols values,
 * and of one state with ch conv channels and ssm SSM values. */
static size_t kv_span(const sl_pd_shard *s, int n_pages, int64_t cols)
{
    const sl_model_cache *c = cache(s);
    return (size_t)c->n_attn * 2 * (size_t)n_pages * (size_t)c->page_size * (size_t)cols *
           s->kv_es;
}

static size_t state_span(const sl_pd_shard *s, int64_t ch, int64_t ssm)
{
    return (size_t)cache(s)->n_linear *
           ((size_t)ch * (size_t)s->conv_w * s->conv_es + (size_t)ssm * s->ssm_es);
}

size_t sl_pd_shard_kv_bytes(const sl_pd_shard *s, int n_pages)
{
    return kv_span(s, n_pages, s->kv_full);
}

size_t sl_pd_shard_state_bytes(const sl_pd_shard *s)
{
    return state_span(s, s->conv_full, s->ssm_full);
}

const char *sl_pd_shard_layout(const sl_pd_shard *s)
{
    return s->layout;
}

sl_status sl_pd_shard_new(sl_pd_shard **out, sl_engine *g, sl_model *m, sl_comm *comm, sl_err *e)
{
    sl_pd_shard *s = calloc(1, sizeof *s);
    if (!s) return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    s->g = g;
    s->m = m;
    s->comm = comm;
    s->rank = comm ? sl_comm_rank(comm) : 0;
    s->size = comm ? sl_comm_world_size(comm) : 1;
    const sl_model_config *mc = sl_model_cfg(m);
    const sl_model_cache *c = cache(s);
    s->kv_full = (int64_t)mc->n_kv_heads * mc->head_dim;
    s->kv_es = c->n_attn ? sl_dtype_size(c->k[0].dtype) : 1;
    if (c->n_linear) {
        s->conv_full = sl_model_config_conv_dim(mc);
        s->conv_w = sl_tensor_cols(&c->conv[0]);
        s->conv_es = sl_dtype_size(c->conv[0].dtype);
        s->ssm_full = (int64_t)mc->lin_v_heads * mc->lin_k_dim * mc->lin_v_dim;
        s->ssm_es = sl_dtype_size(c->ssm[0].dtype);
    }
    /* this rank's cache must be what the sharding rule says (a model and a
     * rule that drifted apart would corrupt transfers silently) */
    shard_map me;
    map_for(s, s->rank, &me);
    int ok = !c->n_attn || sl_tensor_cols(&c->k[0]) == me.kv_cols;
    if (c->n_linear)
        ok = ok && sl_tensor_rows(&c->conv[0]) == (int64_t)c->conv[0].ne[0] * me.ch_local &&
             sl_tensor_numel(&c->ssm[0]) == (int64_t)c->ssm[0].ne[0] * me.ssm_n;
    if (!ok) {
        sl_err_set(e, SL_ERR_INVALID,
                   "rank %d of %d: the cache shard does not follow the sharding rule", s->rank,
                   s->size);
        free(s);
        return SL_ERR_INVALID;
    }
    snprintf(s->layout, sizeof s->layout, "%s attn=%d lin=%d kv=%lldx%s page=%d conv=%lld ssm=%lld",
             mc->arch_name, c->n_attn, c->n_linear, (long long)(c->n_attn ? s->kv_full : 0),
             c->n_attn ? sl_dtype_name(c->k[0].dtype) : "-", c->page_size,
             (long long)(s->conv_full * s->conv_w), (long long)s->ssm_full);
    *out = s;
    return SL_OK;
}

void sl_pd_shard_free(sl_pd_shard *s)
{
    if (!s) return;
    sl_buf_free(&s->tmp);
    free(s);
}

void sl_pd_shard_bind(sl_pd_shard *s, uint8_t *kv, uint8_t *state)
{
    s->kv = kv;
    s->state = state;
}

size_t sl_pd_shard_job(uint8_t *body, size_t cap, int op, const int32_t *pages, int n,
                       int32_t slot, int32_t slot2)
{
    size_t len = 16 + 4 * (size_t)n;
    if (n < 0 || len > cap) return 0;
    int32_t h[4] = {op, n, slot, slot2};
    memcpy(body, h, sizeof h);
    if (n) memcpy(body + 16, pages, 4 * (size_t)n);
    return len;
}

/* ---- this rank's cache <-> host bytes ------------------------------------------- */

/* Rows [r0, r0+n) of t to or from host. Device downloads are only started:
 * copy_local syncs once. */
static sl_status copy_rows(sl_pd_shard *s, sl_tensor *t, int64_t r0, int64_t n, uint8_t *host,
                           int to_host, sl_err *e)
{
    sl_tensor v = sl_tensor_rowview(t, r0, n);
    size_t bytes = (size_t)n * (size_t)sl_tensor_cols(t) * sl_dtype_size(t->dtype);
    if (!t->on_device) {
        if (to_host)
            memcpy(host, v.data, bytes);
        else
            memcpy(v.data, host, bytes);
        return SL_OK;
    }
    sl_backend *be = sl_model_backend(s->m);
    if (!to_host) return sl_be_upload(be, &v, host, v.dtype, e);
    return sl_be_copy_out(be, &v, host, e);
}

/* Pages pages[0..n) of t, page after page, one copy per run of consecutive
 * page ids. */
static sl_status copy_pages(sl_pd_shard *s, sl_tensor *t, const int32_t *pages, int n,
                            uint8_t *host, int to_host, sl_err *e)
{
    int64_t P = cache(s)->page_size;
    size_t pb = (size_t)P * (size_t)sl_tensor_cols(t) * sl_dtype_size(t->dtype);
    sl_status st = SL_OK;
    for (int i = 0, len; i < n && !st; i += len, host += pb * (size_t)len) {
        for (len = 1; i + len < n && pages[i + len] == pages[i] + len; len++) {
        }
        st = copy_rows(s, t, (int64_t)pages[i] * P, (int64_t)len * P, host, to_host, e);
    }
    return st;
}

/* This rank's pages[0..n) (layer by layer, k then v) and, when slot >= 0,
 * the state of slot (conv then ssm, layer by layer), to or from host: kv and
 * state in this rank's shard layout. */
static sl_status copy_local(sl_pd_shard *s, const int32_t *pages, int n, int32_t slot,
                            uint8_t *kv, uint8_t *state, int to_host, sl_err *e)
{
    sl_model_cache *c = sl_engine_cache_rw(s->g);
    sl_status st = SL_OK;
    int device = 0;
    /* n = 0 (the whole prompt was cached on the decode side): pages and kv
     * may be NULL, and NULL + 0 is undefined */
    for (int j = 0; n > 0 && j < c->n_attn && !st; j++) {
        sl_tensor *ts[2] = {&c->k[j], &c->v[j]};
        for (int k = 0; k < 2 && !st; k++) {
            device |= ts[k]->on_device;
            st = copy_pages(s, ts[k], pages, n, kv, to_host, e);
            kv += (size_t)n * (size_t)c->page_size * (size_t)sl_tensor_cols(ts[k]) *
                  sl_dtype_size(ts[k]->dtype);
        }
    }
    for (int j = 0; slot >= 0 && j < c->n_linear && !st; j++) {
        sl_tensor *ts[2] = {&c->conv[j], &c->ssm[j]};
        for (int k = 0; k < 2 && !st; k++) {
            device |= ts[k]->on_device;
            int64_t rows = sl_tensor_rows(ts[k]) / ts[k]->ne[0];
            st = copy_rows(s, ts[k], (int64_t)slot * rows, rows, state, to_host, e);
            state += (size_t)rows * (size_t)sl_tensor_cols(ts[k]) * sl_dtype_size(ts[k]->dtype);
        }
    }
    if (!st && device && to_host) st = sl_be_sync(sl_model_backend(s->m), e);
    return st;
}

/* ---- shard bytes <-> whole bytes (rank 0) --------------------------------------- */

static void move(uint8_t *whole, uint8_t *shard, size_t n, int to_whole)
{
    if (to_whole)
        memcpy(whole, shard, n);
    else
        memcpy(shard, whole, n);
}

/* Places rank m's shard bytes (n_pages pages, a state when has_state) into
 * the bound whole bytes, or cuts them out (to_whole = 0). */
static void place(const sl_pd_shard *s, const shard_map *m, int n_pages, int has_state,
                  uint8_t *shard, int to_whole)
{
    const sl_model_cache *c = cache(s);
    size_t rows = (size_t)n_pages * (size_t)c->page_size;
    size_t loc = (size_t)m->kv_cols * s->kv_es, full = (size_t)s->kv_full * s->kv_es;
    uint8_t *w = s->kv;
    for (int j = 0; rows && j < 2 * c->n_attn; j++, w += rows * full)
        for (size_t t = 0; t < rows; t++, shard += loc)
            move(w + t * full + (size_t)m->kv_col0 * s->kv_es, shard, loc, to_whole);
    if (!has_state) return;
    size_t ch = (size_t)s->conv_w * s->conv_es;
    w = s->state;
    for (int j = 0; j < c->n_linear; j++) {
        for (int b = 0; b < 3; b++)
            move(w + (size_t)m->ch0[b] * ch, shard + (size_t)m->ch_loc0[b] * ch,
                 (size_t)m->ch_n[b] * ch, to_whole);
        w += (size_t)s->conv_full * ch;
        shard += (size_t)m->ch_local * ch;
        move(w + (size_t)m->ssm0 * s->ssm_es, shard, (size_t)m->ssm_n * s->ssm_es, to_whole);
        w += (size_t)s->ssm_full * s->ssm_es;
        shard += (size_t)m->ssm_n * s->ssm_es;
    }
}

/* ---- jobs ----------------------------------------------------------------------- */

typedef struct job {
    int op, n;
    int32_t slot, slot2;
    const int32_t *pages; /* n ids, copied out of the body */
} job;

static sl_status job_parse(const sl_pd_shard *s, const uint8_t *body, size_t len, job *j,
                           int32_t **pages, sl_err *e)
{
    const sl_model_cache *c = cache(s);
    int32_t h[4];
    if (len < sizeof h) return sl_err_set(e, SL_ERR_INVALID, "pd job: %zu bytes", len);
    memcpy(h, body, sizeof h);
    *j = (job){.op = h[0], .n = h[1], .slot = h[2], .slot2 = h[3]};
    if (j->op != SL_PD_EXPORT && j->op != SL_PD_IMPORT)
        return sl_err_set(e, SL_ERR_INVALID, "pd job: op %d", j->op);
    if (j->n < 0 || j->n > c->n_pages || len != 16 + 4 * (size_t)j->n)
        return sl_err_set(e, SL_ERR_INVALID, "pd job: %d pages in %zu bytes", j->n, len);
    int n_slots = c->n_linear ? c->n_slots : 0;
    if (j->slot < -1 || j->slot >= n_slots || j->slot2 < -1 || j->slot2 >= n_slots ||
        (j->op == SL_PD_EXPORT && j->slot2 >= 0) || (j->slot2 >= 0 && j->slot < 0))
        return sl_err_set(e, SL_ERR_INVALID, "pd job: state slots %d, %d (pool of %d)", j->slot,
                          j->slot2, n_slots);
    *pages = NULL;
    if (j->n) {
        if (!(*pages = malloc(4 * (size_t)j->n))) return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
        memcpy(*pages, body + 16, 4 * (size_t)j->n);
        for (int i = 0; i < j->n; i++)
            if ((*pages)[i] < 0 || (*pages)[i] >= c->n_pages) {
                free(*pages);
                return sl_err_set(e, SL_ERR_INVALID, "pd job: page %d outside the pool of %d",
                                  (*pages)[i], c->n_pages);
            }
    }
    j->pages = *pages;
    return SL_OK;
}

/* Writes an import's state (at state) into the job's second slot too. */
static sl_status import_copy(sl_pd_shard *s, const job *j, uint8_t *state, sl_err *e)
{
    if (j->slot2 < 0) return SL_OK;
    return copy_local(s, NULL, 0, j->slot2, NULL, state, 0, e);
}

/* TP 1: the shard is the whole. */
static sl_status run_alone(sl_pd_shard *s, const job *j, sl_err *e)
{
    int to_host = j->op == SL_PD_EXPORT;
    sl_status st = copy_local(s, j->pages, j->n, j->slot, s->kv, s->state, to_host, e);
    if (!st && !to_host) st = import_copy(s, j, s->state, e);
    return st;
}

static sl_status run_group(sl_pd_shard *s, const job *j, sl_err *e)
{
    int has_state = j->slot >= 0 && cache(s)->n_linear > 0;
    shard_map m;
    map_for(s, s->rank, &m);
    size_t kb = kv_span(s, j->n, m.kv_cols), sb = has_state ? state_span(s, m.ch_local, m.ssm_n) : 0;
    /* every rank's shard is the same size: one buffer serves all */
    if (sl_buf_reserve(&s->tmp, kb + sb))
        return sl_err_set(e, SL_ERR_NOMEM, "out of memory staging a cache shard (%zu bytes)", kb + sb);
    uint8_t *tmp = (uint8_t *)s->tmp.data; /* never NULL once reserved */
    sl_status st = SL_OK;
    if (j->op == SL_PD_EXPORT) {
        st = copy_local(s, j->pages, j->n, j->slot, tmp, tmp + kb, 1, e);
        if (st) return st;
        if (s->rank) return sl_comm_send_bytes(s->comm, tmp, kb + sb, 0, e);
        place(s, &m, j->n, has_state, tmp, 1);
        for (int r = 1; r < s->size && !st; r++) {
            shard_map mr;
            map_for(s, r, &mr);
            if (!(st = sl_comm_recv_bytes(s->comm, tmp, kb + sb, r, e)))
                place(s, &mr, j->n, has_state, tmp, 1);
        }
        return st;
    }
    if (s->rank) {
        st = sl_comm_recv_bytes(s->comm, tmp, kb + sb, 0, e);
    } else {
        for (int r = 1; r < s->size && !st; r++) {
            shard_map mr;
            map_for(s, r, &mr);
            place(s, &mr, j->n, has_state, tmp, 0);
            st = sl_comm_send_bytes(s->comm, tmp, kb + sb, r, e);
        }
        if (!st) place(s, &m, j->n, has_state, tmp, 0);
    }
    if (!st) st = copy_local(s, j->pages, j->n, j->slot, tmp, tmp + kb, 0, e);
    if (!st) st = import_copy(s, j, tmp + kb, e);
    return st;
}

sl_status sl_pd_shard_run(void *ctx, const uint8_t *body, size_t n, sl_err *e)
{
    sl_pd_shard *s = ctx;
    job j;
    int32_t *pages = NULL;
    sl_status st = job_parse(s, body, n, &j, &pages, e);
    if (st) return st;
    st = s->size == 1 ? run_alone(s, &j, e) : run_group(s, &j, e);
    free(pages);
    return st;
}

/* Qwen3-family models: weight packing at load (the forward
 * pass is in model_forward.c).
 * The math follows docs/qwen3_next.md (transformers 5.17). */
#include "model.h"
#include "model_impl.h"
#include "quantize.h"
#include "comm.h"

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
 * tensors ("pieces"), then uploaded once. Each piece says which part of its
 * checkpoint tensor it takes (a slice: the checkpoint row of each packed row,
 * and a column range) and where it lands (the first packed row). Slices
 * express both the repacking (q_proj [q_h | g_h] per head → [all q | all g];
 * in_proj_qkvz per key group → [q | k | v | z]) and the tensor-parallel shard
 * (this rank's heads, key groups, intermediate rows or input columns). Only
 * the slice is read from the memory-mapped file. Dummy weights fill the same
 * slice with the values the whole checkpoint tensor would have, so every TP
 * size sees the same global weights. */

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
    int64_t *map; /* row list of the slice being built (slice_groups, slice_ranges) */
    int64_t map_cap;
    /* FP8: quantize target projections at load (--quantization fp8); and,
     * while an FP8 projection is packed (fp8 = 1), its scale tensor, the
     * scale stage [rows, ceil(cols/128)] and the projection's dummy scale */
    int quantize_fp8;
    int fuse_shared; /* a shared expert as wide as the routed ones joins them (layer.shared_fused) */
    int fp8;
    sl_tensor *cur_s;
    float *sstage;
    float fp8_scale;
    /* a 2-D FP8 projection: per packed 128-row block, the (piece, checkpoint
     * 128-row block) its rows come from (-1: none yet), while every block has
     * one (blk_one); pieces counts the projection's pieces (fp8_blocks_end) */
    int64_t *blk_src;
    int blk_one, pieces;
    int n_fp8_2d, n_fp8_blk; /* 2-D FP8 projections loaded, of them with block scales */
} loader;

/* Which part of a checkpoint tensor (viewed as [rows, cols]: dim 0 is rows,
 * the rest columns; a 1-D tensor is one row) a piece takes. */
typedef struct slice {
    int64_t n;           /* rows taken; 0: all */
    const int64_t *rows; /* checkpoint row of packed row i; NULL: first + i */
    int64_t first;
    int64_t col0, ncols; /* columns taken; ncols 0: all */
} slice;

static const slice SLICE_ALL = {0};

static slice slice_rows(int64_t first, int64_t n) { return (slice){.n = n, .first = first}; }
static slice slice_cols(int64_t c0, int64_t n) { return (slice){.col0 = c0, .ncols = n}; }

static int64_t *map_reserve(loader *L, int64_t n)
{
    if (n > L->map_cap) {
        int64_t *p = realloc(L->map, sizeof(int64_t) * (size_t)n);
        if (!p) return NULL;
        L->map = p;
        L->map_cap = n;
    }
    return L->map;
}

/* Rows form `groups` blocks of segments seg[0..nseg); the piece takes groups
 * [g0, g1) with segment j of every taken group together. */
static slice slice_groups(loader *L, int groups, int g0, int g1, int nseg, const int64_t *seg)
{
    int64_t per_group = 0, n = 0;
    for (int j = 0; j < nseg; j++) per_group += seg[j];
    int64_t *map = map_reserve(L, per_group * (g1 - g0));
    SL_ASSERT(map && g0 >= 0 && g1 <= groups);
    for (int j = 0, off = 0; j < nseg; off += (int)seg[j], j++)
        for (int g = g0; g < g1; g++)
            for (int64_t i = 0; i < seg[j]; i++) map[n++] = g * per_group + off + i;
    return (slice){.n = n, .rows = map};
}

/* Row ranges [start[k], start[k] + len[k]) one after another. */
static slice slice_ranges(loader *L, int k, const int64_t *start, const int64_t *len)
{
    int64_t n = 0;
    for (int i = 0; i < k; i++) n += len[i];
    int64_t *map = map_reserve(L, n);
    SL_ASSERT(map);
    n = 0;
    for (int i = 0; i < k; i++)
        for (int64_t r = 0; r < len[i]; r++) map[n++] = start[i] + r;
    return (slice){.n = n, .rows = map};
}

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

static float mat_scale(int64_t fan_in) { return sqrtf(3.0f / (float)fan_in); }

/* Starts packed tensor dst of shape [ne0, ne1(, ne2)], dtype dt (this rank's
 * shape). id names it in errors; dummy values are offset + scale·U(−1, 1). */
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
    L->rows = sl_tensor_rows(dst);
    L->cols = sl_tensor_cols(dst);
    if (L->dummy) return;
    L->stage = malloc(sizeof(float) * (size_t)(L->rows * L->cols));
    if (!L->stage) L->status = sl_err_set(L->e, SL_ERR_NOMEM, "staging %s: out of memory", id);
}

/* ---- FP8 projections ---------------------------------------------------------
 * A projection is FP8 when its checkpoint weight has a weight_scale_inv
 * ([ceil(rows/128), ceil(cols/128)], real weight = w · scale_inv of its
 * 128×128 block), or when --quantization fp8 quantizes it here exactly as
 * make-tiny --quantization fp8 writes it (sl_fp8_quantize_blocks on the whole
 * checkpoint tensor as stored, before any repacking or TP slicing, so every
 * TP size sees the same codes and scales). The packed weight keeps the e4m3
 * codes; the scales are expanded to one row per weight row, so a piece's
 * slice takes the codes exactly like plain weights (its row map and column
 * range) and packed row i's scales are the block row (checkpoint row of i) /
 * 128, columns the 128-groups the column range covers. Rows therefore need
 * no 128 alignment (fused layouts, head/group permutations, column-parallel
 * shards); a column range (row-parallel shard) must start and end on a
 * 128-column block boundary (or the tensor end). Costs 4 bytes per 128
 * weights (3% over the fp8 weight), unless every packed 128-row block of a
 * 2-D projection comes from one checkpoint block: then it keeps the blocks
 * (fp8_blocks_end). A scaled F8_E4M3 tensor that is not
 * loaded as an FP8 projection (LM head, router, embeddings) is dequantized
 * into the plain dtype (pack_piece). */

int sl_model_fp8_target(const char *name)
{
    static const char *sfx[] = {".q_proj.weight",  ".k_proj.weight",    ".v_proj.weight",
                                ".o_proj.weight",  ".gate_proj.weight", ".up_proj.weight",
                                ".down_proj.weight", ".in_proj_qkvz.weight", ".out_proj.weight"};
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof sfx / sizeof sfx[0]; i++) {
        size_t k = strlen(sfx[i]);
        if (n >= k && !strcmp(name + n - k, sfx[i])) return 1;
    }
    return 0;
}

/* Whether the projection whose first checkpoint piece is `first` loads as FP8. */
static int proj_is_fp8(const loader *L, const char *first)
{
    if (L->collect) return 0;
    if (L->dummy) return (L->m->cfg.quant_fp8 || L->quantize_fp8) && sl_model_fp8_target(first);
    char sn[320];
    snprintf(sn, sizeof sn, "%s_scale_inv", first);
    if (sl_safetensors_find(L->st, sn)) return 1;
    const sl_safetensors_tensor *t = sl_safetensors_find(L->st, first);
    return L->quantize_fp8 && sl_model_fp8_target(first) && t && t->dtype != SL_DTYPE_F8E4M3;
}

/* The error for an FP8 input dim of `global` columns that TP size tp cuts
 * into `local`-wide shards off the 128-column blocks; what names it. */
static sl_status fp8_split_error(sl_err *e, int tp, const char *what, int64_t global, int64_t local)
{
    return sl_err_set(e, SL_ERR_INVALID,
                      "--tp-size %d: %s input dim %lld/%d = %lld is not a multiple of the %d-wide FP8 block",
                      tp, what, (long long)global, tp, (long long)local, SL_FP8_BLOCK);
}

/* Short name of a checkpoint tensor for errors: "down_proj" of
 * "model.layers.0.mlp.down_proj.weight". */
static void short_name(char *buf, size_t n, const char *name)
{
    size_t len = strlen(name);
    if (len >= 7 && !strcmp(name + len - 7, ".weight")) len -= 7;
    size_t b = len;
    while (b > 0 && name[b - 1] != '.') b--;
    snprintf(buf, n, "%.*s", (int)(len - b), name + b);
}

/* A column range of an FP8 tensor with `cols` columns must cover whole
 * 128-column blocks (the last may end at the tensor end). */
static int fp8_cols_ok(loader *L, const char *name, int64_t cols, slice s)
{
    const int64_t B = SL_FP8_BLOCK;
    if (!s.ncols || (s.col0 % B == 0 && (s.ncols % B == 0 || s.col0 + s.ncols == cols))) return 1;
    char sn[128];
    short_name(sn, sizeof sn, name);
    L->status = fp8_split_error(L->e, L->m->tp.size, sn, cols, s.ncols);
    sl_err_wrap(L->e, "%s", name);
    return 0;
}

sl_status sl_model_fp8_tp_check(const sl_model_config *c, int tp, sl_err *e)
{
    if (tp <= 1) return SL_OK;
    const int64_t B = SL_FP8_BLOCK;
    int dense = 0, moe = 0;
    for (int i = 0; i < c->n_layers; i++) {
        dense |= !c->layer_moe[i];
        moe |= c->layer_moe[i];
    }
    /* the row-parallel projections: their input dims are split */
    struct { int on; const char *what; int64_t dim; } rp[] = {
        {c->n_attn_layers > 0, "o_proj", (int64_t)c->n_heads * c->head_dim},
        {c->n_linear_layers > 0, "out_proj", (int64_t)c->lin_v_heads * c->lin_v_dim},
        {dense, "down_proj", c->intermediate_size},
        {moe, "experts down_proj", c->moe_intermediate_size},
        {moe && c->shared_expert_intermediate_size > 0, "shared_expert down_proj",
         c->shared_expert_intermediate_size},
    };
    for (size_t i = 0; i < sizeof rp / sizeof rp[0]; i++)
        if (rp[i].on && (rp[i].dim / tp) % B)
            return fp8_split_error(e, tp, rp[i].what, rp[i].dim, rp[i].dim / tp);
    return SL_OK;
}

/* The block scales of checkpoint FP8 tensor t ([rows, cols] as stored) from
 * its weight_scale_inv, checked, into *blk [ceil(rows/128), ceil(cols/128)]
 * (malloc'd). 0: loaded; 1: t has none (L->status untouched); -1: L->status set. */
static int fp8_block_scales(loader *L, const char *name, const sl_safetensors_tensor *t, int64_t rows, int64_t cols,
                            float **blk)
{
    const int64_t B = SL_FP8_BLOCK, nrb = (rows + B - 1) / B, G = (cols + B - 1) / B;
    char sn[320], want[96], got[96];
    snprintf(sn, sizeof sn, "%s_scale_inv", name);
    const sl_safetensors_tensor *sc = sl_safetensors_find(L->st, sn);
    if (!sc) return 1;
    if (!(*blk = malloc(sizeof(float) * (size_t)(nrb * G)))) {
        L->status = sl_err_set(L->e, SL_ERR_NOMEM, "staging %s: out of memory", sn);
        return -1;
    }
    fmt_shape(want, sizeof want, 2, SHP(nrb, G));
    fmt_shape(got, sizeof got, sc->ndim, sc->shape);
    if (t->dtype != SL_DTYPE_F8E4M3)
        L->status = sl_err_set(L->e, SL_ERR_INVALID, "tensor %s is %s but has a weight_scale_inv (expected F8_E4M3)",
                               name, sl_dtype_name(t->dtype));
    else if (sc->ndim != 2 || sc->shape[0] != nrb || sc->shape[1] != G)
        L->status = sl_err_set(L->e, SL_ERR_INVALID, "tensor %s has shape %s, expected %s (the 128x128 blocks of %s)",
                               sn, got, want, name);
    else if (sc->dtype == SL_DTYPE_I32 || sc->dtype == SL_DTYPE_F8E4M3)
        L->status = sl_err_set(L->e, SL_ERR_INVALID, "tensor %s is %s, expected F32", sn, sl_dtype_name(sc->dtype));
    for (int64_t i = 0; i < nrb * G && !L->status; i++) {
        float v = (*blk)[i] = sl_load_f32(sc->data, sc->dtype, i);
        /* a NaN or infinite scale would poison every product of its block silently */
        if (!isfinite(v))
            L->status = sl_err_set(L->e, SL_ERR_INVALID, "tensor %s has a non-finite scale (%g) at block [%lld, %lld]",
                                   sn, v, (long long)(i / G), (long long)(i % G));
    }
    return L->status ? -1 : 0;
}

/* One piece of an FP8 projection: checkpoint tensor t ([rows, cols] as
 * stored), slice s of it → the codes into the stage (exact f32 values) and
 * the per-row scales into the scale stage, packed rows row0... */
static void fp8_piece(loader *L, const char *name, const sl_safetensors_tensor *t, int64_t rows,
                      int64_t cols, int64_t row0, slice s)
{
    const int64_t B = SL_FP8_BLOCK, nrb = (rows + B - 1) / B, G = (cols + B - 1) / B;
    const int64_t n = s.n ? s.n : rows, nc = s.ncols ? s.ncols : cols, g0 = s.col0 / B, Gl = (nc + B - 1) / B;
    float *blk = NULL;
    const void *src = t->data;
    sl_safetensors_tensor q[2] = {{0}}; /* --quantization fp8: the codes and scales made here */
    int got = fp8_block_scales(L, name, t, rows, cols, &blk);
    if (got == 1 && L->quantize_fp8 && t->dtype != SL_DTYPE_F8E4M3) {
        /* blocks of the whole checkpoint tensor (as make-tiny writes them),
         * whatever part of it this piece takes */
        if (!(L->status = sl_quantize_fp8_tensor(t, q, L->e))) {
            src = q[0].data;
            blk = (float *)q[1].data;
        }
    } else if (got == 1) {
        char want[96];
        fmt_shape(want, sizeof want, 2, SHP(nrb, G));
        L->status = sl_err_set(L->e, SL_ERR_NOTFOUND,
                               "missing tensor %s_scale_inv (expected shape %s): %s belongs to an FP8 projection", name,
                               want, name);
    }
    if (!L->status) {
        SL_ASSERT(Gl == (L->cols + B - 1) / B);
        for (int64_t i = 0; i < n; i++) {
            int64_t r = s.rows ? s.rows[i] : s.first + i;
            SL_ASSERT(r >= 0 && r < rows);
            float *o = L->stage + (row0 + i) * nc, *so = L->sstage + (row0 + i) * Gl;
            for (int64_t c = 0; c < nc; c++) o[c] = sl_load_f32(src, SL_DTYPE_F8E4M3, r * cols + s.col0 + c);
            for (int64_t g = 0; g < Gl; g++) so[g] = blk[(r / B) * G + g0 + g];
        }
    }
    if (q[1].data) blk = NULL; /* (freed with q) */
    sl_quantize_free(&q[0]);
    sl_quantize_free(&q[1]);
    free(blk);
}

/* Notes where packed rows row0.. of a 2-D FP8 projection come from (slice s of
 * the piece begun now): a packed 128-row block whose rows come from more than
 * one (piece, checkpoint 128-row block) ends blk_one. */
static void fp8_blocks_track(loader *L, int64_t row0, int64_t n, slice s)
{
    const int64_t B = SL_FP8_BLOCK;
    for (int64_t i = 0; i < n && L->blk_one; i++) {
        int64_t src = ((int64_t)L->pieces << 40) | ((s.rows ? s.rows[i] : s.first + i) / B);
        int64_t *b = &L->blk_src[(row0 + i) / B];
        if (*b < 0) *b = src;
        else L->blk_one = *b == src;
    }
    L->pieces++;
}

/* The end of a 2-D FP8 projection whose packed 128-row blocks each come from one
 * checkpoint block (blk_one): its scales, one row per weight row so far, become
 * the checkpoint's [ceil(rows/128), G] blocks again (srow_shift 7 for every FP8
 * op; cuBLASLt takes them as they are, BLK128x128, where that pays: NOTES.md
 * v111), 1/128 of the memory. The per-row values are the staged ones (dummy:
 * downloaded: block-constant by construction). */
static void fp8_blocks_end(loader *L)
{
    const int64_t B = SL_FP8_BLOCK, rows = sl_tensor_rows(L->cur_s), G = sl_tensor_cols(L->cur_s);
    const int64_t nb = (rows + B - 1) / B;
    float *per_row = L->sstage, *blk = malloc(sizeof(float) * (size_t)(nb * G));
    if (!per_row && blk && !(per_row = malloc(sizeof(float) * (size_t)(rows * G)))) {
        free(blk);
        blk = NULL;
    }
    if (!blk) {
        L->status = sl_err_set(L->e, SL_ERR_NOMEM, "compacting FP8 scales: out of memory");
    } else if (per_row == L->sstage || !(L->status = sl_be_download(L->m->be, L->cur_s, per_row, L->e))) {
        for (int64_t b = 0; b < nb; b++) memcpy(blk + b * G, per_row + b * B * G, sizeof(float) * (size_t)G);
        sl_be_release(L->m->be, L->cur_s);
        L->status = sl_be_alloc(L->m->be, L->cur_s, SL_DTYPE_F32, 2, SHP(nb, G), L->e);
        if (!L->status) L->status = sl_be_upload(L->m->be, L->cur_s, blk, SL_DTYPE_F32, L->e);
    }
    if (per_row != L->sstage) free(per_row);
    free(blk);
}

/* Checkpoint tensor name (shape as on disk) → packed rows row0.. of the
 * tensor begun last, taking slice s of it. */
static void pack_piece(loader *L, const char *name, int ndim, const int64_t *shape, int64_t row0,
                       slice s)
{
    if (L->status) return;
    if (L->collect) {
        L->collect(L->collect_ctx, name, ndim, shape, L->scale, L->offset);
        return;
    }
    int64_t rows = ndim == 1 ? 1 : shape[0], cols = ndim == 1 ? shape[0] : 1;
    for (int d = 1; d < ndim; d++) cols *= shape[d];
    int64_t n = s.n ? s.n : rows, nc = s.ncols ? s.ncols : cols;
    SL_ASSERT(nc == L->cols && row0 + n <= L->rows && s.col0 + nc <= cols);
    if (L->fp8 && !fp8_cols_ok(L, name, cols, s)) return;
    if (L->fp8 && L->blk_src) fp8_blocks_track(L, row0, n, s);
    if (L->dummy) {
        sl_tensor dst = sl_tensor_rowview(L->cur, row0, n);
        sl_fill_index ix = {.rows = s.rows, .row0 = s.first, .g_cols = cols, .col0 = s.col0};
        sl_be_fill_random_at(L->m->be, &dst, L->seed ^ name_hash(name), L->scale, L->offset, &ix);
        if (L->fp8) { /* scales around fp8_scale/448, one per checkpoint 128-row block and column block */
            const int64_t B = SL_FP8_BLOCK;
            int64_t *brow = malloc(sizeof(int64_t) * (size_t)n);
            if (!brow) {
                L->status = sl_err_set(L->e, SL_ERR_NOMEM, "staging %s scales: out of memory", name);
                return;
            }
            for (int64_t i = 0; i < n; i++) brow[i] = (s.rows ? s.rows[i] : s.first + i) / B;
            sl_tensor ds = sl_tensor_rowview(L->cur_s, row0, n);
            sl_fill_index sx = {.rows = brow, .g_cols = (cols + B - 1) / B, .col0 = s.col0 / B};
            sl_be_fill_random_at(L->m->be, &ds, L->seed ^ name_hash(name) ^ 0x5ca1e5ull,
                                 0.5f * L->fp8_scale / SL_FP8_MAX, L->fp8_scale / SL_FP8_MAX, &sx);
            free(brow);
        }
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
    if (L->fp8) {
        fp8_piece(L, name, t, rows, cols, row0, s);
        return;
    }
    /* An FP8 tensor held in the plain dtype (an LM head, a router, a piece of a
     * projection whose first piece is bf16) is its real weight, code · block scale. */
    const int64_t B = SL_FP8_BLOCK, G = (cols + B - 1) / B;
    float *blk = NULL;
    if (t->dtype == SL_DTYPE_F8E4M3 && fp8_block_scales(L, name, t, rows, cols, &blk) == 1)
        L->status = sl_err_set(L->e, SL_ERR_NOTFOUND, "tensor %s is F8_E4M3 but %s_scale_inv is missing", name, name);
    for (int64_t i = 0; i < n && !L->status; i++) {
        int64_t src = s.rows ? s.rows[i] : s.first + i;
        SL_ASSERT(src >= 0 && src < rows);
        float *o = L->stage + (row0 + i) * nc;
        for (int64_t c = 0; c < nc; c++) {
            o[c] = sl_load_f32(t->data, t->dtype, src * cols + s.col0 + c);
            if (blk) o[c] *= blk[(src / B) * G + (s.col0 + c) / B];
        }
    }
    free(blk);
}

static void pack_end(loader *L)
{
    if (L->collect) return;
    if (!L->status && !L->dummy)
        L->status = sl_be_upload(L->m->be, L->cur, L->stage, SL_DTYPE_F32, L->e);
    L->n_fp8_2d += L->fp8 && L->blk_src;
    L->n_fp8_blk += L->fp8 && L->blk_src && L->blk_one;
    if (!L->status && L->fp8 && L->blk_src && L->blk_one) fp8_blocks_end(L);
    else if (!L->status && !L->dummy && L->fp8)
        L->status = sl_be_upload(L->m->be, L->cur_s, L->sstage, SL_DTYPE_F32, L->e);
    free(L->stage);
    free(L->sstage);
    free(L->blk_src);
    L->stage = L->sstage = NULL;
    L->blk_src = NULL;
    L->fp8 = 0;
}

/* Starts a projection packed from checkpoint tensors, the first named first
 * (ne: this rank's packed shape): plain (the backend's weight dtype; dst_s
 * left empty) or FP8 (dst F8E4M3, dst_s F32 [.., rows, ceil(cols/128)]).
 * Dummy FP8 weights (filled per piece by global checkpoint index, codes and
 * scales alike, so TP ranks hold slices of the same global values): codes
 * over the whole e4m3 range and scales around scale/448, so dequantized
 * values have the plain dummy's range. */
static void proj_begin(loader *L, sl_tensor *dst, sl_tensor *dst_s, int ndim, const int64_t *ne,
                       const char *id, const char *first, float scale)
{
    L->fp8 = 0;
    if (L->status) return;
    if (!proj_is_fp8(L, first)) {
        pack_begin(L, dst, L->wd, ndim, ne, id, scale, 0);
        return;
    }
    sl_op need = ndim == 3 ? SL_OP_MOE_EXPERTS_FP8 : SL_OP_MATMUL_FP8;
    if (!sl_be_supports_op(L->m->be, need)) {
        L->status = sl_err_set(L->e, SL_ERR_UNSUPPORTED, "%s is FP8 but the %s backend has no %s op", id,
                               sl_be_name(L->m->be), sl_op_name(need));
        return;
    }
    pack_begin(L, dst, SL_DTYPE_F8E4M3, ndim, ne, id, SL_FP8_MAX, 0);
    if (L->status) return;
    int64_t sne[SL_MAX_DIMS];
    for (int d = 0; d < ndim; d++) sne[d] = ne[d];
    sne[ndim - 1] = (ne[ndim - 1] + SL_FP8_BLOCK - 1) / SL_FP8_BLOCK;
    L->status = sl_be_alloc(L->m->be, dst_s, SL_DTYPE_F32, ndim, sne, L->e);
    if (L->status) return;
    L->fp8 = 1;
    L->cur_s = dst_s;
    L->fp8_scale = scale;
    L->pieces = 0;
    L->blk_one = ndim == 2;
    if (ndim == 2) { /* (the experts' 3-D scales keep one row per weight row) */
        int64_t nb = (ne[0] + SL_FP8_BLOCK - 1) / SL_FP8_BLOCK;
        if (!(L->blk_src = malloc(sizeof(int64_t) * (size_t)nb))) {
            L->status = sl_err_set(L->e, SL_ERR_NOMEM, "staging %s scales: out of memory", id);
            return;
        }
        for (int64_t b = 0; b < nb; b++) L->blk_src[b] = -1;
    }
    if (L->dummy) return;
    L->sstage = malloc(sizeof(float) * (size_t)(sl_tensor_rows(dst_s) * sne[ndim - 1]));
    if (!L->sstage) L->status = sl_err_set(L->e, SL_ERR_NOMEM, "staging %s scales: out of memory", id);
}

/* A packed tensor from slice s of one checkpoint tensor (shape: on disk; ne:
 * the packed, per-rank shape). */
static void load_slice(loader *L, sl_tensor *dst, sl_dtype dt, const char *name, int ndim,
                       const int64_t *shape, const int64_t *ne, slice s, float scale, float offset)
{
    pack_begin(L, dst, dt, ndim, ne, name, scale, offset);
    pack_piece(L, name, ndim, shape, 0, s);
    pack_end(L);
}

/* A projection from slice s of one checkpoint tensor `name` (shape: on
 * disk; ne: the packed, per-rank shape): plain, or FP8 weight + scales (dst_s). */
static void load_proj(loader *L, sl_tensor *dst, sl_tensor *dst_s, const char *name, const int64_t *shape,
                      const int64_t *ne, slice s)
{
    proj_begin(L, dst, dst_s, 2, ne, name, name, mat_scale(shape[1]));
    pack_piece(L, name, 2, shape, 0, s);
    pack_end(L);
}

/* A whole (replicated) packed tensor from one checkpoint tensor of the same shape. */
static void load_one(loader *L, sl_tensor *dst, sl_dtype dt, const char *name, int ndim,
                     const int64_t *ne, float scale, float offset)
{
    load_slice(L, dst, dt, name, ndim, ne, ne, SLICE_ALL, scale, offset);
}

/* SwiGLU MLP with global intermediate size I: gate/up column-parallel (this
 * rank's I/TP rows of each), down row-parallel (its I/TP input columns). */
static void load_mlp(loader *L, sl_tensor *gu, sl_tensor *gu_s, sl_tensor *down, sl_tensor *down_s,
                     const char *pfx, int64_t H, int64_t I)
{
    const tp_shard *tp = &L->m->tp;
    int64_t Il = I / tp->size, i0 = tp->rank * Il;
    char n[256], first[256];
    snprintf(n, sizeof n, "%s.gate_up", pfx);
    snprintf(first, sizeof first, "%s.gate_proj.weight", pfx);
    proj_begin(L, gu, gu_s, 2, SHP(2 * Il, H), n, first, mat_scale(H));
    pack_piece(L, first, 2, SHP(I, H), 0, slice_rows(i0, Il));
    snprintf(n, sizeof n, "%s.up_proj.weight", pfx);
    pack_piece(L, n, 2, SHP(I, H), Il, slice_rows(i0, Il));
    pack_end(L);
    snprintf(n, sizeof n, "%s.down_proj.weight", pfx);
    load_proj(L, down, down_s, n, SHP(H, I), SHP(H, Il), slice_cols(i0, Il));
}

/* Checkpoint name of projection proj of expert x of layer prefix p: a routed
 * expert below E, the shared expert at E (stored after them when fused). */
static void expert_name(char *buf, size_t n, const char *p, int64_t x, int64_t E, const char *proj)
{
    if (x < E) snprintf(buf, n, "%s.mlp.experts.%lld.%s.weight", p, (long long)x, proj);
    else snprintf(buf, n, "%s.mlp.shared_expert.%s.weight", p, proj);
}

static void load_layer(loader *L, int i)
{
    const sl_model_config *c = &L->m->cfg, *lc = &L->m->lc;
    const tp_shard *tp = &L->m->tp;
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
        /* global dims, then this rank's key groups [g0, g0 + hk) and their
         * value heads [g0·r, (g0 + hk)·r) */
        int64_t Hk = c->lin_k_heads, Hv = c->lin_v_heads, Dk = c->lin_k_dim, Dv = c->lin_v_dim;
        int64_t r = Hv / Hk, C = sl_model_config_conv_dim(c), K = c->conv_kernel;
        int64_t hk = lc->lin_k_heads, hv = lc->lin_v_heads, Cl = sl_model_config_conv_dim(lc);
        int g0 = (int)(tp->rank * hk), g1 = (int)(g0 + hk);
        snprintf(n, sizeof n, "%s.linear_attn.in_proj_qkvz.weight", p);
        proj_begin(L, &ly->w_qkvz, &ly->w_qkvz_s, 2, SHP(Cl + hv * Dv, H), n, n, mat_scale(H));
        pack_piece(L, n, 2, SHP(2 * Hk * Dk + 2 * Hv * Dv, H), 0,
                   slice_groups(L, (int)Hk, g0, g1, 4, SHP(Dk, Dk, r * Dv, r * Dv)));
        pack_end(L);
        snprintf(n, sizeof n, "%s.linear_attn.in_proj_ba.weight", p);
        proj_begin(L, &ly->w_ba, &ly->w_ba_s, 2, SHP(2 * hv, H), n, n, mat_scale(H));
        pack_piece(L, n, 2, SHP(2 * Hv, H), 0, slice_groups(L, (int)Hk, g0, g1, 2, SHP(r, r)));
        pack_end(L);
        /* conv channels [q | k | v]: each block sliced on its own */
        snprintf(n, sizeof n, "%s.linear_attn.conv1d.weight", p);
        pack_begin(L, &ly->conv_w, wd, 2, SHP(Cl, K), n, mat_scale(K), 0);
        pack_piece(L, n, 3, SHP(C, 1, K), 0,
                   slice_ranges(L, 3, SHP(g0 * Dk, Hk * Dk + g0 * Dk, 2 * Hk * Dk + g0 * r * Dv),
                                SHP(hk * Dk, hk * Dk, hv * Dv)));
        pack_end(L);
        snprintf(n, sizeof n, "%s.linear_attn.A_log", p);
        load_slice(L, &ly->A_log, SL_DTYPE_F32, n, 1, SHP(Hv), SHP(hv), slice_cols(g0 * r, hv), 1.0f, 0.0f);
        snprintf(n, sizeof n, "%s.linear_attn.dt_bias", p);
        load_slice(L, &ly->dt_bias, SL_DTYPE_F32, n, 1, SHP(Hv), SHP(hv), slice_cols(g0 * r, hv), 1.0f, 0.0f);
        snprintf(n, sizeof n, "%s.linear_attn.norm.weight", p);
        load_one(L, &ly->gnorm, SL_DTYPE_F32, n, 1, SHP(Dv), 0.1f, 1.0f);
        snprintf(n, sizeof n, "%s.linear_attn.out_proj.weight", p);
        load_proj(L, &ly->w_out, &ly->w_out_s, n, SHP(H, Hv * Dv), SHP(H, hv * Dv),
                  slice_cols(g0 * r * Dv, hv * Dv));
    } else {
        /* this rank's query heads [h0, h0 + hq) (each with its gate), KV
         * heads [kv0, kv0 + hkv) (replicated when TP > kv heads) */
        int64_t Hq = c->n_heads, Hkv = c->n_kv_heads, D = c->head_dim;
        int64_t hq = lc->n_heads, hkv = lc->n_kv_heads, h0 = tp->rank * hq, kv0 = tp->kv_head0;
        int64_t qrows = next ? 2 * Hq * D : Hq * D, ql = next ? 2 * hq * D : hq * D;
        char first[256];
        snprintf(n, sizeof n, "%s.self_attn.qkv", p);
        snprintf(first, sizeof first, "%s.self_attn.q_proj.weight", p);
        proj_begin(L, &ly->wqkv, &ly->wqkv_s, 2, SHP(ql + 2 * hkv * D, H), n, first, mat_scale(H));
        snprintf(n, sizeof n, "%s.self_attn.q_proj.weight", p);
        pack_piece(L, n, 2, SHP(qrows, H), 0,
                   next ? slice_groups(L, (int)Hq, (int)h0, (int)(h0 + hq), 2, SHP(D, D))
                        : slice_rows(h0 * D, hq * D));
        snprintf(n, sizeof n, "%s.self_attn.k_proj.weight", p);
        pack_piece(L, n, 2, SHP(Hkv * D, H), ql, slice_rows(kv0 * D, hkv * D));
        snprintf(n, sizeof n, "%s.self_attn.v_proj.weight", p);
        pack_piece(L, n, 2, SHP(Hkv * D, H), ql + hkv * D, slice_rows(kv0 * D, hkv * D));
        pack_end(L);
        snprintf(n, sizeof n, "%s.self_attn.o_proj.weight", p);
        load_proj(L, &ly->wo, &ly->wo_s, n, SHP(H, Hq * D), SHP(H, hq * D), slice_cols(h0 * D, hq * D));
        snprintf(n, sizeof n, "%s.self_attn.q_norm.weight", p);
        load_one(L, &ly->q_norm, SL_DTYPE_F32, n, 1, SHP(D), 0.1f, norm_off);
        snprintf(n, sizeof n, "%s.self_attn.k_norm.weight", p);
        load_one(L, &ly->k_norm, SL_DTYPE_F32, n, 1, SHP(D), 0.1f, norm_off);
    }

    if (ly->moe) {
        /* router replicated; every expert's intermediate dim split. A shared
         * expert as wide as the routed ones, of the same kind (FP8 or not),
         * is stored after them as expert E and its gate as router row E
         * (layer.shared_fused): one routing and one expert pass for both. */
        int64_t E = c->n_experts, I = c->moe_intermediate_size, Il = lc->moe_intermediate_size;
        int64_t i0 = tp->rank * Il;
        char first[256], sfirst[256];
        expert_name(first, sizeof first, p, 0, E, "gate_proj");
        expert_name(sfirst, sizeof sfirst, p, E, E, "gate_proj");
        ly->shared_fused = L->fuse_shared && c->shared_expert_intermediate_size == I &&
                           proj_is_fp8(L, first) == proj_is_fp8(L, sfirst);
        int64_t Es = E + ly->shared_fused;
        snprintf(n, sizeof n, "%s.mlp.gate.weight", p);
        pack_begin(L, &ly->router, wd, 2, SHP(Es, H), n, mat_scale(H), 0);
        pack_piece(L, n, 2, SHP(E, H), 0, SLICE_ALL);
        if (ly->shared_fused) {
            snprintf(n, sizeof n, "%s.mlp.shared_expert_gate.weight", p);
            pack_piece(L, n, 2, SHP(1, H), E, SLICE_ALL);
        }
        pack_end(L);
        snprintf(n, sizeof n, "%s.mlp.experts.gate_up", p);
        proj_begin(L, &ly->ex_gate_up, &ly->ex_gate_up_s, 3, SHP(Es, 2 * Il, H), n, first, mat_scale(H));
        for (int64_t x = 0; x < Es; x++) {
            expert_name(n, sizeof n, p, x, E, "gate_proj");
            pack_piece(L, n, 2, SHP(I, H), x * 2 * Il, slice_rows(i0, Il));
            expert_name(n, sizeof n, p, x, E, "up_proj");
            pack_piece(L, n, 2, SHP(I, H), x * 2 * Il + Il, slice_rows(i0, Il));
        }
        pack_end(L);
        snprintf(n, sizeof n, "%s.mlp.experts.down", p);
        expert_name(first, sizeof first, p, 0, E, "down_proj");
        proj_begin(L, &ly->ex_down, &ly->ex_down_s, 3, SHP(Es, H, Il), n, first, mat_scale(I));
        for (int64_t x = 0; x < Es; x++) {
            expert_name(n, sizeof n, p, x, E, "down_proj");
            pack_piece(L, n, 2, SHP(H, I), x * H, slice_cols(i0, Il));
        }
        pack_end(L);
        if (c->shared_expert_intermediate_size > 0 && !ly->shared_fused) {
            snprintf(n, sizeof n, "%s.mlp.shared_expert", p);
            load_mlp(L, &ly->sh_gate_up, &ly->sh_gate_up_s, &ly->sh_down, &ly->sh_down_s, n, H,
                     c->shared_expert_intermediate_size);
            snprintf(n, sizeof n, "%s.mlp.shared_expert_gate.weight", p);
            load_one(L, &ly->sh_gate, wd, n, 2, SHP(1, H), mat_scale(H), 0);
        }
    } else {
        snprintf(n, sizeof n, "%s.mlp", p);
        load_mlp(L, &ly->w_gate_up, &ly->w_gate_up_s, &ly->w_down, &ly->w_down_s, n, H, c->intermediate_size);
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
    /* vocab-parallel embedding / LM head: rows [v0, v0 + nv) (all when replicated) */
    int64_t V = c->vocab_size, H = c->hidden_size, v0 = m->tp.v0, nv = m->tp.nv;
    sl_dtype wd = L->wd;
    load_slice(L, &m->embed, wd, "model.embed_tokens.weight", 2, SHP(V, H), SHP(nv, H),
               slice_rows(v0, nv), 1.0f, 0);
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
        load_slice(L, &m->lm_head, wd, "lm_head.weight", 2, SHP(V, H), SHP(nv, H), slice_rows(v0, nv),
                   mat_scale(H), 0);
        m->lm_head_owned = !L->collect;
    }
    free(L->map);
    L->map = NULL;
    return L->status;
}

sl_status sl_model_tp_check(const sl_model_config *c, int tp, sl_err *e)
{
    if (tp < 1) return sl_err_set(e, SL_ERR_INVALID, "--tp-size must be at least 1 (got %d)", tp);
    int dense = 0, moe = 0;
    for (int i = 0; i < c->n_layers; i++) {
        dense |= !c->layer_moe[i];
        moe |= c->layer_moe[i];
    }
#define NEED_DIV(cond, what, val)                                                                  \
    if (cond)                                                                                      \
        return sl_err_set(e, SL_ERR_INVALID, "--tp-size %d does not divide " what " %d", tp, (int)(val))
    NEED_DIV(c->n_attn_layers && c->n_heads % tp, "num_attention_heads", c->n_heads);
    NEED_DIV(c->n_attn_layers && tp <= c->n_kv_heads && c->n_kv_heads % tp, "num_key_value_heads",
             c->n_kv_heads);
    if (c->n_attn_layers && tp > c->n_kv_heads && tp % c->n_kv_heads)
        return sl_err_set(e, SL_ERR_INVALID,
                          "--tp-size %d is neither a divisor nor a multiple of num_key_value_heads %d "
                          "(KV heads are split, or replicated when the TP size is larger)",
                          tp, c->n_kv_heads);
    NEED_DIV(c->n_linear_layers && c->lin_k_heads % tp, "linear_num_key_heads", c->lin_k_heads);
    NEED_DIV(dense && c->intermediate_size % tp, "intermediate_size", c->intermediate_size);
    NEED_DIV(moe && c->moe_intermediate_size % tp, "moe_intermediate_size", c->moe_intermediate_size);
    NEED_DIV(moe && c->shared_expert_intermediate_size % tp, "shared_expert_intermediate_size",
             c->shared_expert_intermediate_size);
#undef NEED_DIV
    return SL_OK;
}

/* m->tp and m->lc for rank of size (checked by sl_model_tp_check). */
static void tp_setup(sl_model *m, sl_comm *comm)
{
    tp_shard *tp = &m->tp;
    const sl_model_config *c = &m->cfg;
    tp->comm = comm;
    tp->rank = comm ? sl_comm_rank(comm) : 0;
    tp->size = comm ? sl_comm_world_size(comm) : 1;
    int P = tp->size, r = tp->rank;
    sl_model_config *lc = &m->lc;
    *lc = *c;
    lc->n_heads = c->n_heads / P;
    if (c->n_kv_heads > 0 && P > c->n_kv_heads) { /* replicated: rank r uses head r / (P / Hkv) */
        lc->n_kv_heads = 1;
        tp->kv_head0 = r / (P / c->n_kv_heads);
    } else {
        lc->n_kv_heads = c->n_kv_heads / P;
        tp->kv_head0 = r * lc->n_kv_heads;
    }
    lc->intermediate_size = c->intermediate_size / P;
    lc->moe_intermediate_size = c->moe_intermediate_size / P;
    lc->shared_expert_intermediate_size = c->shared_expert_intermediate_size / P;
    lc->lin_k_heads = c->lin_k_heads / P;
    lc->lin_v_heads = c->lin_v_heads / P;
    tp->vocab_parallel = P > 1 && c->vocab_size % P == 0;
    tp->nv = tp->vocab_parallel ? c->vocab_size / P : c->vocab_size;
    tp->v0 = tp->vocab_parallel ? r * tp->nv : 0;
}

sl_status sl_model_checkpoint_tensors(const sl_model_config *c, sl_tensor_cb cb, void *ctx,
                                      sl_err *e)
{
    sl_model m = {.cfg = *c};
    tp_setup(&m, NULL);
    loader L = {.m = &m, .wd = SL_DTYPE_F32, .collect = cb, .collect_ctx = ctx, .e = e};
    sl_status s = walk_weights(&L);
    free(m.layers);
    return s;
}

static sl_status model_new(sl_model **out, const sl_model_config *c, sl_backend *be, sl_safetensors *st,
                           int dummy, const sl_model_load_opts *opts, sl_err *e)
{
    static const sl_model_load_opts none = {0};
    if (!opts) opts = &none;
    sl_comm *comm = opts->comm;
    int quantize_fp8 = opts->quantize_fp8;
    int tp = comm ? sl_comm_world_size(comm) : 1;
    sl_status s = sl_model_tp_check(c, tp, e);
    if (!s && (c->quant_fp8 || quantize_fp8)) s = sl_model_fp8_tp_check(c, tp, e);
    if (s) return s;
    sl_model *m = calloc(1, sizeof *m);
    if (!m) return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    m->cfg = *c;
    m->be = be;
    tp_setup(m, comm);
    loader L = {.m = m, .st = st, .wd = sl_be_weight_dtype(be), .dummy = dummy, .seed = opts->seed,
                .quantize_fp8 = quantize_fp8, .fuse_shared = !opts->no_shared_fusion, .e = e};
    s = walk_weights(&L);
    if (s) {
        sl_model_free(m);
        return s;
    }
    int fused = 0;
    for (int i = 0; i < c->n_layers; i++) fused += m->layers[i].shared_fused;
    if (fused)
        SL_LOGI("model", "shared expert fused into the routed experts in %d layers "
                         "(--disable-shared-experts-fusion keeps it apart)", fused);
    if (L.n_fp8_2d)
        SL_LOGI("model", "FP8: %d of %d dense projections keep the checkpoint's 128x128 block scales "
                         "(the others one scale row per weight row: their fused rows cut 128-row blocks)",
                L.n_fp8_blk, L.n_fp8_2d);
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
    sl_comm *comm = opts ? opts->comm : NULL;
    if ((s = sl_model_tp_check(&c, comm ? sl_comm_world_size(comm) : 1, e))) return s;
    sl_safetensors *st = NULL;
    if (!dummy && (s = sl_safetensors_open(&st, dir, e))) return s;
    s = model_new(out, &c, be, st, dummy, opts, e);
    if (s && !dummy) sl_err_wrap(e, "loading %s", dir);
    sl_safetensors_close(st); /* weights were copied into backend memory */
    return s;
}

sl_status sl_model_from_config(sl_model **out, const sl_model_config *c, sl_backend *be,
                               const sl_model_load_opts *opts, sl_err *e)
{
    return model_new(out, c, be, NULL, 1, opts, e);
}

void model_scratch_free(sl_model *m)
{
    scratch *s = &m->s;
    sl_tensor *all[] = {&s->x,    &s->xn,      &s->d,   &s->big, &s->mid,    &s->mid2,
                        &s->attn, &s->conv,    &s->ba,  &s->rlogits, &s->ids, &s->wts,
                        &s->shared, &s->sgate, &s->gx,  &s->gd,  &s->gn, &s->lg,
                        &s->xq.codes, &s->xq.scales};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) sl_be_release(m->be, all[i]);
    s->cap = s->cap_rows = 0;
}

void sl_model_free(sl_model *m)
{
    if (!m) return;
    if (m->layers) {
        for (int i = 0; i < m->cfg.n_layers; i++)
            release_all(m->be, &m->layers[i].in_norm,
                        (size_t)(&m->layers[i].ex_down_s - &m->layers[i].in_norm) + 1);
        free(m->layers);
    }
    sl_be_release(m->be, &m->embed);
    sl_be_release(m->be, &m->final_norm);
    if (m->lm_head_owned) sl_be_release(m->be, &m->lm_head);
    model_graphs_free(m);
    model_scratch_free(m);
    free(m);
}

// kernels/cuda/cuda_backend.cu: the CUDA backend's entry point: device setup,
// memory, transfers with dtype conversion, the per-forward batch mirror
// (prepare) and the vtable. The ops live one family per file beside this one.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention.cuh"
#include "cuda_backend.h"
#include "cuda_common.cuh"
#include "elementwise.cuh"
#include "gdn.cuh"
#include "matmul.cuh"
#include "moe.cuh"
#include "norm.cuh"

void cu_fail(const char *what, const char *msg, const char *file, int line)
{
    fprintf(stderr, "CUDA failure: %s: %s\n", what, msg);
    sl_assert_fail("CUDA call failed", file, line);
}

void *cu_tmp_alloc(cu_backend *b, size_t bytes)
{
    void *p = NULL;
    CU_CHECK(cudaMallocAsync(&p, bytes ? bytes : 1, b->stream));
    return p;
}

void cu_tmp_free(cu_backend *b, void *p)
{
    if (p) CU_CHECK(cudaFreeAsync(p, b->stream));
}

// ---- memory -------------------------------------------------------------------

static void cu_free_backend(sl_backend *be)
{
    cu_backend *b = cu_be(be);
    cudaSetDevice(b->device);
    cudaStreamSynchronize(b->stream);
    cu_matmul_free(b);
    for (int i = 0; i < 2; i++) {
        cudaFreeHost(b->mb[i].host);
        cudaFree(b->mb[i].dev);
        if (b->mb[i].copied) cudaEventDestroy(b->mb[i].copied);
    }
    if (b->lt_ws) cudaFree(b->lt_ws);
    if (b->lt) cublasLtDestroy(b->lt);
    if (b->stream) cudaStreamDestroy(b->stream);
    free(b);
}

static sl_status cu_alloc(sl_backend *be, sl_tensor *t, size_t bytes, sl_err *e)
{
    void *p = NULL;
    cudaError_t err = cudaMalloc(&p, bytes);
    if (err != cudaSuccess) {
        cudaGetLastError(); // an allocation failure is not sticky: clear it
        return sl_err_set(e, SL_ERR_NOMEM, "cudaMalloc of %zu bytes on device %d: %s", bytes,
                          cu_be(be)->device, cudaGetErrorString(err));
    }
    t->data = p;
    t->on_device = 1;
    return SL_OK;
}

static void cu_release(sl_backend *be, sl_tensor *t)
{
    // The stream may still read t: let it finish first (release is rare).
    CU_CHECK(cudaStreamSynchronize(cu_be(be)->stream));
    CU_CHECK(cudaFree(t->data));
}

__global__ void k_convert(void *dst, int ddt, const void *src, int sdt, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        cu_stf(dst, ddt, i, cu_ldf(src, sdt, i));
}

static unsigned cu_grid_for(int64_t n) { return (unsigned)(n < 4096 * 256 ? cu_blocks(n, 256) : 4096); }

// Uploads in chunks through a scratch buffer so a multi-GB weight needs
// little extra device memory.
static sl_status cu_upload(sl_backend *be, sl_tensor *t, const void *src, sl_dtype src_dt,
                           sl_err *e)
{
    cu_backend *b = cu_be(be);
    int64_t n = sl_tensor_numel(t);
    size_t ssz = sl_dtype_size(src_dt);
    if (src_dt == t->dtype) {
        CU_TRY(e, cudaMemcpyAsync(t->data, src, (size_t)n * ssz, cudaMemcpyHostToDevice, b->stream));
        CU_TRY(e, cudaStreamSynchronize(b->stream));
        return SL_OK;
    }
    if (t->dtype == SL_DTYPE_I32 || src_dt == SL_DTYPE_I32)
        return sl_err_set(e, SL_ERR_UNSUPPORTED, "cannot convert %s to %s", sl_dtype_name(src_dt),
                          sl_dtype_name(t->dtype));
    const int64_t chunk = (int64_t)1 << 24;
    void *tmp = NULL;
    CU_TRY(e, cudaMalloc(&tmp, (size_t)(n < chunk ? n : chunk) * ssz));
    size_t dsz = sl_dtype_size(t->dtype);
    sl_status st = SL_OK;
    for (int64_t i0 = 0; i0 < n && st == SL_OK; i0 += chunk) {
        int64_t c = n - i0 < chunk ? n - i0 : chunk;
        cudaError_t err = cudaMemcpyAsync(tmp, (const char *)src + i0 * ssz, (size_t)c * ssz,
                                          cudaMemcpyHostToDevice, b->stream);
        if (err == cudaSuccess) {
            k_convert<<<cu_grid_for(c), 256, 0, b->stream>>>((char *)t->data + i0 * dsz, t->dtype,
                                                            tmp, src_dt, c);
            err = cudaGetLastError();
        }
        if (err == cudaSuccess) err = cudaStreamSynchronize(b->stream);
        if (err != cudaSuccess)
            st = sl_err_set(e, SL_ERR_DEVICE, "upload of %lld elements: %s", (long long)n,
                            cudaGetErrorString(err));
    }
    cudaFree(tmp);
    return st;
}

__global__ void k_to_dense_f32(float *dst, cu_mat m)
{
    int64_t n = m.rows * m.cols;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = cu_mat_ld(m, i / m.cols, i % m.cols);
}

static sl_status cu_download(sl_backend *be, const sl_tensor *t, float *dst, sl_err *e)
{
    cu_backend *b = cu_be(be);
    cu_mat m = cu_mat_of(t);
    int64_t n = m.rows * m.cols;
    if (n == 0) return SL_OK;
    cudaError_t err;
    if (t->dtype == SL_DTYPE_F32) {
        /* logits: rows copied straight out, no conversion pass */
        err = cudaMemcpy2DAsync(dst, sizeof(float) * (size_t)m.cols, t->data, sizeof(float) * (size_t)m.ld,
                                sizeof(float) * (size_t)m.cols, (size_t)m.rows, cudaMemcpyDeviceToHost,
                                b->stream);
    } else {
        float *tmp = (float *)cu_tmp_alloc(b, sizeof(float) * (size_t)n);
        k_to_dense_f32<<<cu_grid_for(n), 256, 0, b->stream>>>(tmp, m);
        err = cudaGetLastError();
        if (err == cudaSuccess)
            err = cudaMemcpyAsync(dst, tmp, sizeof(float) * (size_t)n, cudaMemcpyDeviceToHost, b->stream);
        cu_tmp_free(b, tmp);
    }
    if (err == cudaSuccess) err = cudaStreamSynchronize(b->stream);
    if (err != cudaSuccess)
        return sl_err_set(e, SL_ERR_DEVICE, "download of %lld elements: %s", (long long)n,
                          cudaGetErrorString(err));
    return SL_OK;
}

static sl_status cu_mem_info(sl_backend *be, size_t *free_bytes, size_t *total_bytes, sl_err *e)
{
    CU_TRY(e, cudaSetDevice(cu_be(be)->device));
    CU_TRY(e, cudaMemGetInfo(free_bytes, total_bytes));
    return SL_OK;
}

static sl_status cu_sync(sl_backend *be, sl_err *e)
{
    CU_TRY(e, cudaStreamSynchronize(cu_be(be)->stream));
    return SL_OK;
}

// ---- prepare ------------------------------------------------------------------

// Query tiles of 2^level tokens that never straddle two sequences.
static int cu_count_tiles(const sl_batch_meta *m, int level)
{
    int n = 0, q = 1 << level;
    for (int s = 0; s < m->n_seqs; s++) n += (m->q_start[s + 1] - m->q_start[s] + q - 1) / q;
    return n;
}

// Appends n int32s (or -1s when src is NULL: an array the batch leaves unset)
// to the host staging buffer; returns where they will be on the device.
static const int32_t *put_i32(cu_meta_buf *mb, size_t *o, const int32_t *src, size_t n)
{
    if (src) memcpy(mb->host + *o, src, n * sizeof(int32_t));
    else memset(mb->host + *o, 0xff, n * sizeof(int32_t));
    *o += n;
    return mb->dev + *o - n;
}

static sl_status cu_prepare(sl_backend *be, sl_batch_meta *m, sl_err *e)
{
    cu_backend *b = cu_be(be);
    int T = m->n_tokens, S = m->n_seqs;
    int ntiles[CU_TILE_LEVELS];
    size_t need = 0;
    // int32 layout: ids pos kv_slot seq_of [T] | q_start [S+1] | kv_len state_slot
    // state_fresh track_slot track_len [S] | page_table [S*max_pages] | logit_rows | tiles (int2)
    need += 4 * (size_t)T + (size_t)S + 1 + 5 * (size_t)S + (size_t)S * (size_t)m->max_pages +
            (size_t)m->n_logits;
    need = (need + 1) & ~(size_t)1; // int2 alignment
    for (int l = 0; l < CU_TILE_LEVELS; l++) {
        ntiles[l] = cu_count_tiles(m, l);
        need += 2 * (size_t)ntiles[l];
    }
    int which = b->mb_next;
    b->mb_next ^= 1;
    cu_meta_buf *mb = &b->mb[which];
    // the host buffer may still be the source of this slot's previous copy
    CU_TRY(e, cudaEventSynchronize(mb->copied));
    if (need > mb->cap) {
        size_t cap = need * 2 + 1024;
        CU_TRY(e, cudaStreamSynchronize(b->stream)); // the old device buffer may be in use
        cudaFreeHost(mb->host);
        cudaFree(mb->dev);
        mb->host = NULL;
        mb->dev = NULL;
        mb->cap = 0;
        CU_TRY(e, cudaMallocHost(&mb->host, cap * sizeof(int32_t)));
        CU_TRY(e, cudaMalloc(&mb->dev, cap * sizeof(int32_t)));
        mb->cap = cap;
    }
    int32_t *h = mb->host, *d = mb->dev;
    cu_meta *cm = &mb->meta;
    memset(cm, 0, sizeof *cm);
    cm->n_tokens = T;
    cm->n_seqs = S;
    cm->page_size = m->page_size;
    cm->max_pages = m->max_pages;
    size_t o = 0;
    cm->ids = put_i32(mb, &o, m->ids, T);
    cm->pos = put_i32(mb, &o, m->pos, T);
    cm->kv_slot = put_i32(mb, &o, m->kv_slot, T);
    int32_t *seq_of = h + o;
    cm->seq_of = put_i32(mb, &o, NULL, T);
    for (int s = 0; s < S; s++)
        for (int t = m->q_start[s]; t < m->q_start[s + 1]; t++) seq_of[t] = s;
    cm->q_start = put_i32(mb, &o, m->q_start, S + 1);
    cm->kv_len = put_i32(mb, &o, m->kv_len, S);
    cm->state_slot = put_i32(mb, &o, m->state_slot, S);
    cm->state_fresh = put_i32(mb, &o, m->state_fresh, S);
    cm->track_slot = put_i32(mb, &o, m->track_slot, S);
    cm->track_len = put_i32(mb, &o, m->track_len, S);
    cm->page_table = put_i32(mb, &o, m->page_table, (size_t)S * m->max_pages);
    cm->n_logits = m->n_logits;
    cm->logit_rows = put_i32(mb, &o, m->logit_rows, (size_t)m->n_logits);
    o = (o + 1) & ~(size_t)1;
    for (int l = 0; l < CU_TILE_LEVELS; l++) {
        int q = 1 << l, k = 0;
        int2 *th = (int2 *)(h + o);
        for (int s = 0; s < S; s++)
            for (int i = 0; i < m->q_start[s + 1] - m->q_start[s]; i += q) th[k++] = make_int2(s, i);
        cm->tiles[l] = (const int2 *)(d + o);
        cm->n_tiles[l] = ntiles[l];
        o += 2 * (size_t)ntiles[l];
    }
    for (int s = 0; s < S; s++) {
        int qn = m->q_start[s + 1] - m->q_start[s];
        if (qn > cm->max_q_len) cm->max_q_len = qn;
        if (m->kv_len && m->kv_len[s] > cm->max_kv_len) cm->max_kv_len = m->kv_len[s];
    }
    CU_TRY(e, cudaMemcpyAsync(d, h, o * sizeof(int32_t), cudaMemcpyHostToDevice, b->stream));
    CU_TRY(e, cudaEventRecord(mb->copied, b->stream));
    m->dev = cm;
    return SL_OK;
}

// ---- backend ------------------------------------------------------------------------

static const sl_backend_i cu_iface = {
    .name = "cuda",
    .act_dtype = SL_DTYPE_BF16,
    .weight_dtype = SL_DTYPE_BF16,
    .free = cu_free_backend,
    .alloc = cu_alloc,
    .release = cu_release,
    .upload = cu_upload,
    .download = cu_download,
    .sync = cu_sync,
    .prepare = cu_prepare,
    .mem_info = cu_mem_info,
    .embed = cu_embed,
    .matmul = cu_matmul,
    .rmsnorm = cu_rmsnorm,
    .add = cu_add,
    .add_rmsnorm = cu_add_rmsnorm,
    .rope = cu_rope,
    .silu_mul = cu_silu_mul,
    .sigmoid_mul = cu_sigmoid_mul,
    .kv_store = cu_kv_store,
    .attention = cu_attention,
    .conv1d = cu_conv1d,
    .gdn = cu_gdn,
    .rmsnorm_gated = cu_rmsnorm_gated,
    .moe_route = cu_moe_route,
    .moe_experts = cu_moe_experts,
    .gather_rows = cu_gather_rows,
    .copy_slots = cu_copy_slots,
    .fill_random = cu_fill_random,
    .argmax = cu_argmax,
};

static sl_status cu_init(cu_backend *b, int device, sl_err *e)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || device < 0 || device >= n) {
        cudaGetLastError();
        return sl_err_set(e, SL_ERR_DEVICE, "no CUDA device %d (%d found)", device, n);
    }
    CU_TRY(e, cudaSetDevice(device));
    cudaDeviceProp prop;
    CU_TRY(e, cudaGetDeviceProperties(&prop, device));
    if (prop.major < 9)
        return sl_err_set(e, SL_ERR_UNSUPPORTED, "device %d (%s) is sm_%d%d; sluice needs sm_90",
                          device, prop.name, prop.major, prop.minor);
    b->device = device;
    b->n_sm = prop.multiProcessorCount;
    CU_TRY(e, cudaStreamCreateWithFlags(&b->stream, cudaStreamNonBlocking));
    // Keep freed scratch in the pool instead of returning it at every sync.
    cudaMemPool_t pool;
    CU_TRY(e, cudaDeviceGetDefaultMemPool(&pool, device));
    uint64_t keep = UINT64_MAX;
    CU_TRY(e, cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
    if (cublasLtCreate(&b->lt) != CUBLAS_STATUS_SUCCESS)
        return sl_err_set(e, SL_ERR_DEVICE, "cublasLtCreate failed");
    b->lt_ws_bytes = (size_t)64 << 20;
    CU_TRY(e, cudaMalloc(&b->lt_ws, b->lt_ws_bytes));
    for (int i = 0; i < 2; i++)
        CU_TRY(e, cudaEventCreateWithFlags(&b->mb[i].copied, cudaEventDisableTiming));
    return SL_OK;
}

extern "C" sl_backend *sl_backend_cuda_new(int device, sl_err *e)
{
    cu_backend *b = (cu_backend *)calloc(1, sizeof *b);
    if (!b) {
        sl_err_set(e, SL_ERR_NOMEM, "cannot allocate the CUDA backend");
        return NULL;
    }
    b->base.i = &cu_iface;
    if (cu_init(b, device, e) != SL_OK) {
        cu_free_backend(&b->base);
        return NULL;
    }
    return &b->base;
}

extern "C" void *sl_cuda_stream(sl_backend *be)
{
    SL_ASSERT(be->i == &cu_iface);
    return cu_be(be)->stream;
}

extern "C" void sl_cuda_matmul_force(sl_backend *be, sl_cuda_mm which)
{
    SL_ASSERT(be->i == &cu_iface);
    cu_be(be)->mm_force = which;
}

extern "C" const char *sl_cuda_matmul_last(sl_backend *be)
{
    SL_ASSERT(be->i == &cu_iface);
    return cu_be(be)->mm_last;
}

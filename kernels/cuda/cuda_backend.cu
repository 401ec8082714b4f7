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
#include "fp8.cuh"
#include "gdn.cuh"
#include "matmul.cuh"
#include "moe.cuh"
#include "norm.cuh"
#include "sample.cuh"

void cu_fail(const char *what, const char *msg, const char *file, int line)
{
    fprintf(stderr, "CUDA failure: %s: %s\n", what, msg);
    sl_assert_fail("CUDA call failed", file, line);
}

void *cu_tmp_alloc(cu_backend *b, size_t bytes)
{
    void *p = NULL;
    CU_CHECK(cudaMallocAsync(&p, bytes ? bytes : 1, b->stream));
    if (b->poison) CU_CHECK(cudaMemsetAsync(p, 0xff, bytes, b->stream));
    return p;
}

PFN_cuTensorMapEncodeTiled_v12000 cu_tensor_map_encoder(void)
{
    static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
        void *fn = nullptr;
        cudaDriverEntryPointQueryResult q;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q) !=
                cudaSuccess ||
            q != cudaDriverEntryPointSuccess)
            fn = nullptr;
        return (PFN_cuTensorMapEncodeTiled_v12000)fn;
    }();
    return encode;
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
    cu_prof_free(b); // reports first: the table is what a profiled run is for
    cu_matmul_free(b);
    cu_sample_free(b);
    cu_fp8_st_free(b);
    for (int i = 0; i < 2; i++) {
        cudaFreeHost(b->mb[i].host);
        cudaFree(b->mb[i].dev);
        if (b->mb[i].copied) cudaEventDestroy(b->mb[i].copied);
    }
    cudaFree(b->fixed);
    for (int i = 0; i < 2; i++) {
        cudaFreeHost(b->up_host[i]);
        cudaFree(b->up_dev[i]);
        if (b->up_free[i]) cudaEventDestroy(b->up_free[i]);
    }
    if (b->lt_ws) cudaFree(b->lt_ws);
    if (b->router_done) cudaFree(b->router_done);
    if (b->moe1_sync) cudaFree(b->moe1_sync);
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
    if (cu_be(be)->poison) CU_CHECK(cudaMemset(p, 0xff, bytes));
    t->data = p;
    t->on_device = 1;
    return SL_OK;
}

static void cu_release(sl_backend *be, sl_tensor *t)
{
    // The stream may still read t: let it finish first (release is rare).
    CU_CHECK(cudaStreamSynchronize(cu_be(be)->stream));
    // copies of FP8 weight scales it holds
    cu_fp8_st_forget(cu_be(be), t->data, (size_t)sl_tensor_numel(t) * sl_dtype_size(t->dtype));
    CU_CHECK(cudaFree(t->data));
}

__global__ void k_convert(void *dst, int ddt, const void *src, int sdt, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        cu_stf(dst, ddt, i, cu_ldf(src, sdt, i));
}

static unsigned cu_grid_for(int64_t n) { return (unsigned)(n < 4096 * 256 ? cu_blocks(n, 256) : 4096); }

#define CU_UP_CHUNK ((size_t)32 << 20) // bytes per staging chunk

static sl_status cu_upload_init(cu_backend *b, sl_err *e)
{
    if (b->up_host[0]) return SL_OK;
    for (int i = 0; i < 2; i++) {
        CU_TRY(e, cudaMallocHost(&b->up_host[i], CU_UP_CHUNK));
        CU_TRY(e, cudaMalloc(&b->up_dev[i], CU_UP_CHUNK));
        CU_TRY(e, cudaEventCreateWithFlags(&b->up_free[i], cudaEventDisableTiming));
    }
    return SL_OK;
}

// Weights come from mmap'ed files (pageable): each chunk is copied into a
// pinned staging buffer by the host while the device pulls the previous one,
// then lands in t directly or through a conversion kernel. Waits at the end.
static sl_status cu_upload(sl_backend *be, sl_tensor *t, const void *src, sl_dtype src_dt,
                           sl_err *e)
{
    cu_backend *b = cu_be(be);
    int64_t n = sl_tensor_numel(t);
    size_t ssz = sl_dtype_size(src_dt), dsz = sl_dtype_size(t->dtype);
    int same = src_dt == t->dtype;
    if (!same && (t->dtype == SL_DTYPE_I32 || src_dt == SL_DTYPE_I32))
        return sl_err_set(e, SL_ERR_UNSUPPORTED, "cannot convert %s to %s", sl_dtype_name(src_dt),
                          sl_dtype_name(t->dtype));
    sl_status st = cu_upload_init(b, e);
    if (st) return st;
    cu_fp8_st_forget(b, t->data, (size_t)n * dsz); // new values: no copy of the old scales stays
    const int64_t chunk = (int64_t)(CU_UP_CHUNK / ssz);
    for (int64_t i0 = 0, k = 0; i0 < n; i0 += chunk, k ^= 1) {
        int64_t c = n - i0 < chunk ? n - i0 : chunk;
        CU_TRY(e, cudaEventSynchronize(b->up_free[k])); // its last DMA is done
        memcpy(b->up_host[k], (const char *)src + i0 * ssz, (size_t)c * ssz);
        void *dst = (char *)t->data + i0 * dsz;
        CU_TRY(e, cudaMemcpyAsync(same ? dst : b->up_dev[k], b->up_host[k], (size_t)c * ssz,
                                  cudaMemcpyHostToDevice, b->stream));
        if (!same) {
            k_convert<<<cu_grid_for(c), 256, 0, b->stream>>>(dst, t->dtype, b->up_dev[k], src_dt, c);
            CU_TRY(e, cudaGetLastError());
        }
        CU_TRY(e, cudaEventRecord(b->up_free[k], b->stream));
    }
    CU_TRY(e, cudaStreamSynchronize(b->stream));
    return SL_OK;
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

static sl_status cu_copy(sl_backend *be, sl_tensor *dst, const sl_tensor *src, size_t bytes, sl_err *e)
{
    CU_TRY(e, cudaMemcpyAsync(dst->data, src->data, bytes, cudaMemcpyDefault, cu_be(be)->stream));
    return SL_OK;
}

// ---- sharing with another process on the same GPU (cudaIpc) -------------------

static_assert(sizeof(cudaIpcMemHandle_t) == SL_BE_SHARE_BYTES, "an IPC handle is 64 bytes");

static int cu_device_id(sl_backend *be, char *out, size_t n)
{
    cudaDeviceProp prop;
    if (n < 48 || cudaGetDeviceProperties(&prop, cu_be(be)->device) != cudaSuccess) return -1;
    const unsigned char *u = (const unsigned char *)prop.uuid.bytes;
    int w = snprintf(out, n, "GPU-");
    for (int i = 0; i < 16; i++) w += snprintf(out + w, n - (size_t)w, "%02x", u[i]);
    return 0;
}

static sl_status cu_share_export(sl_backend *be, const sl_tensor *t, sl_be_share *h, sl_err *e)
{
    CU_TRY(e, cudaSetDevice(cu_be(be)->device));
    cudaIpcMemHandle_t m;
    CU_TRY(e, cudaIpcGetMemHandle(&m, t->data));
    memcpy(h->b, &m, sizeof m);
    return SL_OK;
}

static sl_status cu_share_open(sl_backend *be, const sl_be_share *h, sl_tensor *t, sl_err *e)
{
    CU_TRY(e, cudaSetDevice(cu_be(be)->device));
    cudaIpcMemHandle_t m;
    memcpy(&m, h->b, sizeof m);
    void *p = NULL;
    cudaError_t err = cudaIpcOpenMemHandle(&p, m, cudaIpcMemLazyEnablePeerAccess);
    if (err != cudaSuccess) {
        cudaGetLastError(); // not sticky: the caller falls back or fails one request
        return sl_err_set(e, SL_ERR_DEVICE, "opening another process's tensor: %s",
                          cudaGetErrorString(err));
    }
    t->data = p;
    t->on_device = 1;
    return SL_OK;
}

static void cu_share_close(sl_backend *be, sl_tensor *t)
{
    // copies from it may still be queued
    CU_CHECK(cudaStreamSynchronize(cu_be(be)->stream));
    cudaIpcCloseMemHandle(t->data);
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

// A run of int32s of the mirror: where it sits in the host staging and on
// the device.
typedef struct cu_seg {
    size_t h, n;
    int32_t *d;
} cu_seg;

// Appends n int32s (or -1s when src is NULL: an array the batch leaves unset)
// to the host staging buffer at *o, to go to dev; returns dev.
static const int32_t *put_i32(int32_t *h, size_t *o, cu_seg *seg, int32_t *dev, const int32_t *src,
                              size_t n)
{
    if (src) memcpy(h + *o, src, n * sizeof(int32_t));
    else memset(h + *o, 0xff, n * sizeof(int32_t));
    *seg = (cu_seg){*o, n, dev};
    *o += n;
    return dev;
}

// The mirror of a batch. Host staging (pinned, alternating) holds every array
// packed, page table last; the device copy is either the staging buffer's
// twin (normal: one copy) or the fixed region (graphs: every array at an
// offset that depends only on the bounds, the page table with a stride of
// max_ctx pages: two copies).
static sl_status cu_prepare_into(cu_backend *b, sl_batch_meta *m, int fixed_tokens, int fixed_ctx,
                                 sl_err *e)
{
    int T = m->n_tokens, S = m->n_seqs, fixed = fixed_tokens > 0;
    int ntiles[CU_TILE_LEVELS];
    // int32 layout: ids pos kv_slot seq_of feed [T] | q_start [S+1] | kv_len state_slot
    // state_fresh track_slot track_len [S] | logit_rows | tiles (int2) | page_table [S*max_pages]
    size_t need = 5 * (size_t)T + (size_t)S + 1 + 5 * (size_t)S + (size_t)m->n_logits;
    need = (need + 1) & ~(size_t)1; // int2 alignment
    for (int l = 0; l < CU_TILE_LEVELS; l++) {
        ntiles[l] = cu_count_tiles(m, l);
        need += 2 * (size_t)ntiles[l];
    }
    need += (size_t)S * (size_t)m->max_pages;
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
    int32_t *h = mb->host;
    // device offsets: packed (normal) or by the bounds (fixed)
    size_t cT = fixed ? (size_t)fixed_tokens : (size_t)T, cS = fixed ? (size_t)fixed_tokens : (size_t)S;
    size_t cL = fixed ? (size_t)fixed_tokens : (size_t)m->n_logits;
    int32_t *d = fixed ? b->fixed : mb->dev;
    int pstride = fixed ? (fixed_ctx + m->page_size - 1) / m->page_size : m->max_pages;
    SL_ASSERT(m->max_pages <= pstride);
    cu_meta *cm = &mb->meta;
    memset(cm, 0, sizeof *cm);
    cm->n_tokens = T;
    cm->n_seqs = S;
    cm->page_size = m->page_size;
    cm->max_pages = pstride;
    // every array before the page table: one run each (the fixed layout
    // copies them run by run)
    cu_seg seg[12 + CU_TILE_LEVELS];
    int nseg = 0;
    size_t o = 0, od = 0;
#define PUT(field, src, n, cap)                                                                    \
    do {                                                                                           \
        cm->field = put_i32(h, &o, &seg[nseg++], d + od, src, n);                                  \
        od += cap;                                                                                 \
    } while (0)
    PUT(ids, m->ids, T, cT);
    PUT(pos, m->pos, T, cT);
    PUT(kv_slot, m->kv_slot, T, cT);
    int32_t *seq_of = h + o;
    PUT(seq_of, NULL, T, cT);
    for (int s = 0; s < S; s++)
        for (int t = m->q_start[s]; t < m->q_start[s + 1]; t++) seq_of[t] = s;
    PUT(feed, m->feed, T, cT);
    PUT(q_start, m->q_start, S + 1, cS + 1);
    PUT(kv_len, m->kv_len, S, cS);
    PUT(state_slot, m->state_slot, S, cS);
    PUT(state_fresh, m->state_fresh, S, cS);
    PUT(track_slot, m->track_slot, S, cS);
    PUT(track_len, m->track_len, S, cS);
    cm->n_logits = m->n_logits;
    PUT(logit_rows, m->logit_rows, m->n_logits, cL);
#undef PUT
    o = (o + 1) & ~(size_t)1;
    od = (od + 1) & ~(size_t)1;
    for (int l = 0; l < CU_TILE_LEVELS; l++) {
        int q = 1 << l, k = 0;
        int2 *th = (int2 *)(h + o);
        for (int s = 0; s < S; s++)
            for (int i = 0; i < m->q_start[s + 1] - m->q_start[s]; i += q) th[k++] = make_int2(s, i);
        cm->tiles[l] = (const int2 *)(d + od);
        cm->n_tiles[l] = ntiles[l];
        seg[nseg++] = (cu_seg){o, 2 * (size_t)ntiles[l], d + od};
        o += 2 * (size_t)ntiles[l];
        od += 2 * (fixed ? cT : (size_t)ntiles[l]);
    }
    cu_seg pt;
    cm->page_table = put_i32(h, &o, &pt, d + od, m->page_table, (size_t)S * m->max_pages);
    for (int s = 0; s < S; s++) {
        int qn = m->q_start[s + 1] - m->q_start[s];
        if (qn > cm->max_q_len) cm->max_q_len = qn;
        if (m->kv_len && m->kv_len[s] > cm->max_kv_len) cm->max_kv_len = m->kv_len[s];
    }
    if (!fixed) {
        CU_TRY(e, cudaMemcpyAsync(d, h, o * sizeof(int32_t), cudaMemcpyHostToDevice, b->stream));
    } else {
        // the staging is packed: each run goes to its own fixed offset, the
        // page table rows to the fixed stride
        cm->max_kv_len = fixed_ctx;
        for (int i = 0; i < nseg; i++)
            if (seg[i].n)
                CU_TRY(e, cudaMemcpyAsync(seg[i].d, h + seg[i].h, seg[i].n * sizeof(int32_t),
                                          cudaMemcpyHostToDevice, b->stream));
        if (S && m->max_pages)
            CU_TRY(e, cudaMemcpy2DAsync(pt.d, (size_t)pstride * sizeof(int32_t), h + pt.h,
                                        (size_t)m->max_pages * sizeof(int32_t),
                                        (size_t)m->max_pages * sizeof(int32_t), (size_t)S,
                                        cudaMemcpyHostToDevice, b->stream));
    }
    CU_TRY(e, cudaEventRecord(mb->copied, b->stream));
    m->dev = cm;
    return SL_OK;
}

static sl_status cu_prepare(sl_backend *be, sl_batch_meta *m, sl_err *e)
{
    return cu_prepare_into(cu_be(be), m, 0, 0, e);
}

static sl_status cu_prepare_fixed(sl_backend *be, sl_batch_meta *m, int max_tokens, int max_ctx,
                                  sl_err *e)
{
    cu_backend *b = cu_be(be);
    if (!b->fixed || max_tokens != b->fixed_tokens || max_ctx != b->fixed_ctx) {
        // new bounds: the region moves (graphs captured before are stale)
        size_t pages = (size_t)(max_ctx + m->page_size - 1) / (size_t)m->page_size;
        size_t n = 12 * (size_t)max_tokens + 2 + 2 * CU_TILE_LEVELS * (size_t)max_tokens +
                   (size_t)max_tokens * pages;
        CU_TRY(e, cudaStreamSynchronize(b->stream));
        cudaFree(b->fixed);
        b->fixed = NULL;
        CU_TRY(e, cudaMalloc(&b->fixed, n * sizeof(int32_t)));
        b->fixed_tokens = max_tokens;
        b->fixed_ctx = max_ctx;
    }
    return cu_prepare_into(b, m, max_tokens, max_ctx, e);
}

// ---- pipelining and graphs ------------------------------------------------------

struct sl_be_event {
    cudaEvent_t ev;
};

static void *cu_host_alloc(sl_backend *be, size_t bytes)
{
    (void)be;
    void *p = NULL;
    if (cudaMallocHost(&p, bytes ? bytes : 1) != cudaSuccess) {
        cudaGetLastError();
        return NULL;
    }
    return p;
}

static void cu_host_free(sl_backend *be, void *p)
{
    (void)be;
    cudaFreeHost(p);
}

static sl_status cu_copy_out(sl_backend *be, const sl_tensor *t, void *dst, sl_err *e)
{
    size_t n = (size_t)sl_tensor_numel(t) * sl_dtype_size(t->dtype);
    if (n) CU_TRY(e, cudaMemcpyAsync(dst, t->data, n, cudaMemcpyDeviceToHost, cu_be(be)->stream));
    return SL_OK;
}

static sl_status cu_event_new(sl_backend *be, sl_be_event **ev, sl_err *e)
{
    (void)be;
    *ev = (sl_be_event *)calloc(1, sizeof **ev);
    if (!*ev) return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    // blocking sync: the runner sleeps instead of spinning a core while it waits
    cudaError_t err = cudaEventCreateWithFlags(&(*ev)->ev, cudaEventBlockingSync);
    if (err != cudaSuccess) {
        free(*ev);
        *ev = NULL;
        return sl_err_set(e, SL_ERR_DEVICE, "cudaEventCreate: %s", cudaGetErrorString(err));
    }
    return SL_OK;
}

static void cu_event_free(sl_backend *be, sl_be_event *ev)
{
    (void)be;
    cudaEventDestroy(ev->ev);
    free(ev);
}

static sl_status cu_event_record(sl_backend *be, sl_be_event *ev, sl_err *e)
{
    CU_TRY(e, cudaEventRecord(ev->ev, cu_be(be)->stream));
    return SL_OK;
}

static sl_status cu_event_wait(sl_backend *be, sl_be_event *ev, sl_err *e)
{
    (void)be;
    CU_TRY(e, cudaEventSynchronize(ev->ev));
    return SL_OK;
}

static float cu_event_ms(sl_backend *be, sl_be_event *from, sl_be_event *to)
{
    (void)be;
    float ms = -1.0f;
    if (cudaEventElapsedTime(&ms, from->ev, to->ev) != cudaSuccess) {
        cudaGetLastError();
        return -1.0f;
    }
    return ms;
}

struct sl_be_graph {
    cudaGraphExec_t exec;
};

static sl_status cu_capture_begin(sl_backend *be, sl_err *e)
{
    CU_TRY(e, cudaStreamBeginCapture(cu_be(be)->stream, cudaStreamCaptureModeThreadLocal));
    return SL_OK;
}

static sl_status cu_capture_end(sl_backend *be, sl_be_graph **out, sl_err *e)
{
    cudaGraph_t graph = NULL;
    CU_TRY(e, cudaStreamEndCapture(cu_be(be)->stream, &graph));
    sl_be_graph *g = (sl_be_graph *)calloc(1, sizeof *g);
    cudaError_t err = g ? cudaGraphInstantiate(&g->exec, graph, 0) : cudaErrorMemoryAllocation;
    cudaGraphDestroy(graph);
    if (err != cudaSuccess) {
        free(g);
        cudaGetLastError();
        return sl_err_set(e, SL_ERR_DEVICE, "cudaGraphInstantiate: %s", cudaGetErrorString(err));
    }
    *out = g;
    return SL_OK;
}

static sl_status cu_graph_launch(sl_backend *be, sl_be_graph *g, sl_err *e)
{
    CU_TRY(e, cudaGraphLaunch(g->exec, cu_be(be)->stream));
    return SL_OK;
}

static void cu_graph_free(sl_backend *be, sl_be_graph *g)
{
    cudaStreamSynchronize(cu_be(be)->stream); // a replay may still run
    cudaGraphExecDestroy(g->exec);
    free(g);
}

// An on/off setting from the environment at backend creation: unset gives
// dflt; a default-on switch is off only for "0", a default-off one on only for "1".
static int env_switch(const char *name, int dflt)
{
    const char *v = getenv(name);
    if (!v) return dflt;
    return dflt ? strcmp(v, "0") != 0 : strcmp(v, "1") == 0;
}

// A default-on switch with more forms: unset 1, "0" .. "top" that number, else 1.
static int env_form(const char *name, int top)
{
    const char *v = getenv(name);
    return v && v[0] >= '0' && v[0] <= '0' + top && !v[1] ? v[0] - '0' : 1;
}


// ---- backend ------------------------------------------------------------------------

static const sl_backend_i cu_iface = {
    .name = "cuda",
    .act_dtype = SL_DTYPE_BF16,
    .weight_dtype = SL_DTYPE_BF16,
    .fp8_act_rows = 64, // decode batches: 8 (the GEMV's) by default, 64 with SL_CUDA_FP8_ACT=2 (cu_fp8_dst_for)
    .free = cu_free_backend,
    .alloc = cu_alloc,
    .release = cu_release,
    .upload = cu_upload,
    .download = cu_download,
    .sync = cu_sync,
    .prepare = cu_prepare,
    .mem_info = cu_mem_info,
    .copy = cu_copy,
    .device_id = cu_device_id,
    .share_export = cu_share_export,
    .share_open = cu_share_open,
    .share_close = cu_share_close,
    .host_alloc = cu_host_alloc,
    .host_free = cu_host_free,
    .copy_out = cu_copy_out,
    .event_new = cu_event_new,
    .event_free = cu_event_free,
    .event_record = cu_event_record,
    .event_wait = cu_event_wait,
    .event_ms = cu_event_ms,
    .prepare_fixed = cu_prepare_fixed,
    .capture_begin = cu_capture_begin,
    .capture_end = cu_capture_end,
    .graph_launch = cu_graph_launch,
    .graph_free = cu_graph_free,
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
    .attn_prep = cu_attn_prep,
    .sample = cu_sample,
    .matmul_fp8 = cu_matmul_fp8,
    .moe_experts_fp8 = cu_moe_experts_fp8,
    .moe_router = cu_moe_router,
    .add_rmsnorm_router = cu_add_rmsnorm_router,
    .gdn_decode = cu_gdn_decode,
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
    b->pdl = env_switch("SL_CUDA_PDL", 1);
    // grouped FP8 MoE GEMMs from prefill sizes on, FlashAttention-2 prefill:
    // both validated and faster on an H200 (NOTES.md v11, v12); =0 goes back.
    // Prefill attention and the grouped FP8 MoE GEMMs on wgmma (v34, v35):
    // SL_CUDA_ATTN_WG=0 goes back to FA2, SL_CUDA_MOE_FP8_WG=0 to mma.sync.
    b->moe_fp8_path = env_switch("SL_CUDA_MOE_FP8_GROUPED", 1) ? SL_CUDA_MOE_FP8_AUTO : SL_CUDA_MOE_FP8_GEMV;
    // SL_CUDA_ATTN_WG=2: its overlapped form (v37). SL_CUDA_MOE_FP8_WG=1 (the default): the
    // persistent warp-specialized form at 128-row tiles (v74), the plain one elsewhere; =2 the
    // plain form everywhere (was the overlapped one, v36-v69: slower, removed), =3 the
    // warp-specialized form (v47), =4 that persistent (v52)
    static const int moe_wg[] = {CU_MOE_WG_TC, CU_MOE_WG_AUTO, CU_MOE_WG_WG, CU_MOE_WG_WS, CU_MOE_WG_WSP};
    b->moe_fp8_wg = moe_wg[env_form("SL_CUDA_MOE_FP8_WG", 4)];
    // one weight block a block: walking several (v38) measured no faster
    const char *npb = getenv("SL_CUDA_MOE_FP8_NPB");
    b->moe_fp8_npb = npb ? atoi(npb) : 1;
    // 1 (the default): 128-row tiles (v40, 1.2-1.3x v34 on an H200), warp-specialized
    // where they go by TMA (v74); 3: v34's 64-row tiles; 4: the warp-specialized
    // tiles everywhere, 5: never
    static const int attn_wg[] = {SL_CUDA_ATTN_FA2, SL_CUDA_ATTN_AUTO, SL_CUDA_ATTN_WGO, SL_CUDA_ATTN_WG,
                                  SL_CUDA_ATTN_WS,  SL_CUDA_ATTN_WG2};
    b->attn_pf = env_switch("SL_CUDA_ATTN_FA2", 1) ? attn_wg[env_form("SL_CUDA_ATTN_WG", 5)] : SL_CUDA_ATTN_WMMA;
    b->attn_tma = env_switch("SL_CUDA_ATTN_TMA", 1);
    b->moe_fp8_tma = env_switch("SL_CUDA_MOE_FP8_TMA", 1);
    // timing picks the fastest matmul kernel per shape, which can differ from
    // process to process (and so can the rounding); =0 takes cuBLASLt's
    // heuristic's first choice everywhere: the same numbers in every process
    b->mm_tune = env_switch("SL_CUDA_MM_TUNE", 1);
    b->gdn_split = env_switch("SL_CUDA_GDN_SPLIT", 1);
    b->moe_router = env_switch("SL_CUDA_MOE_ROUTER", 1);
    b->fp8_gemv_cp = env_form("SL_CUDA_FP8_GEMV_CP", 2);
    // v42: the ops before an FP8 GEMV write its codes (bit-identical to the GEMV's own
    // quantization on an H200, Coder-Next-FP8 TPOT 4.16 -> 4.07 ms, NOTES v53); =0 turns it off
    b->fp8_act = env_form("SL_CUDA_FP8_ACT", 2);
    b->moe_fp8_one = env_switch("SL_CUDA_MOE_FP8_ONE", 0); // v43: slower end to end (v53)
    b->gdn_fuse = env_switch("SL_CUDA_GDN_FUSE", 0);        // v44: slower end to end (v53)
    b->router_norm = env_switch("SL_CUDA_ROUTER_NORM", 0);  // v45: failed to launch (v53), fixed in v54, unmeasured
    b->poison = env_switch("SL_CUDA_POISON", 0);
    CU_TRY(e, cudaStreamCreateWithFlags(&b->stream, cudaStreamNonBlocking));
    if (env_switch("SL_CUDA_PROFILE", 0)) cu_prof_init(b);
    // Keep freed scratch in the pool instead of returning it at every sync.
    cudaMemPool_t pool;
    CU_TRY(e, cudaDeviceGetDefaultMemPool(&pool, device));
    uint64_t keep = UINT64_MAX;
    CU_TRY(e, cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
    if (cublasLtCreate(&b->lt) != CUBLAS_STATUS_SUCCESS)
        return sl_err_set(e, SL_ERR_DEVICE, "cublasLtCreate failed");
    b->lt_ws_bytes = (size_t)64 << 20;
    CU_TRY(e, cudaMalloc(&b->lt_ws, b->lt_ws_bytes));
    // k_moe_router's counter (made here: never inside a graph capture)
    CU_TRY(e, cudaMalloc((void **)&b->router_done, sizeof(unsigned)));
    CU_TRY(e, cudaMemset(b->router_done, 0, sizeof(unsigned)));
    CU_TRY(e, cudaMalloc((void **)&b->moe1_sync, cu_moe1_sync_bytes()));
    CU_TRY(e, cudaMemset(b->moe1_sync, 0, cu_moe1_sync_bytes()));
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

extern "C" int sl_cuda_attn_prefill(sl_backend *be, int kernel)
{
    SL_ASSERT(be->i == &cu_iface);
    SL_ASSERT(kernel >= SL_CUDA_ATTN_WMMA && kernel <= SL_CUDA_ATTN_AUTO);
    int was = cu_be(be)->attn_pf;
    cu_be(be)->attn_pf = kernel;
    return was;
}

extern "C" int sl_cuda_gdn_split(sl_backend *be, int on)
{
    SL_ASSERT(be->i == &cu_iface);
    int was = cu_be(be)->gdn_split;
    cu_be(be)->gdn_split = on != 0;
    return was;
}

extern "C" void sl_cuda_matmul_force(sl_backend *be, sl_cuda_mm which)
{
    SL_ASSERT(be->i == &cu_iface);
    cu_be(be)->mm_force = which;
}

extern "C" void sl_cuda_moe_fp8_path(sl_backend *be, sl_cuda_moe_fp8 which)
{
    SL_ASSERT(be->i == &cu_iface);
    cu_be(be)->moe_fp8_path = which;
}

extern "C" const char *sl_cuda_matmul_last(sl_backend *be)
{
    SL_ASSERT(be->i == &cu_iface);
    return cu_be(be)->mm_last;
}

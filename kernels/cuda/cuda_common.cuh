// kernels/cuda/cuda_common.cuh: what every CUDA op family shares.
//
// The backend struct (one device, one stream, one cuBLASLt handle), the check
// macros, the device-side view of a batch (cu_meta, filled by prepare), a
// 2-D tensor view that kernels take by value (cu_mat) and dtype-generic
// element loads and stores: ops accept any float dtype per operand, checked
// per call, so logits may be F32 while activations are BF16.
//
// Errors: a CUDA failure inside an op is a broken invariant (the interface
// gives ops no status): CU_CHECK aborts with file:line and the CUDA message.
// Calls that return sl_status use CU_TRY, which turns the failure into an
// SL_ERR_DEVICE naming the call.
#ifndef SL_CUDA_COMMON_CUH
#define SL_CUDA_COMMON_CUH

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h> // CUtensorMap and its encoder's type (the encoder comes from the runtime: no libcuda link)
#include <stdint.h>

extern "C" {
#include "../backend_impl.h"
}

void cu_fail(const char *what, const char *msg, const char *file, int line);

#define CU_CHECK(call)                                                                             \
    do {                                                                                           \
        cudaError_t cu_err_ = (call);                                                              \
        if (cu_err_ != cudaSuccess)                                                                \
            cu_fail(#call, cudaGetErrorString(cu_err_), __FILE__, __LINE__);                       \
    } while (0)

// After every kernel launch: launch-configuration errors surface here.
#define CU_CHECK_LAUNCH() CU_CHECK(cudaGetLastError())

#define CUBLAS_CHECK(call)                                                                         \
    do {                                                                                           \
        cublasStatus_t cb_st_ = (call);                                                            \
        if (cb_st_ != CUBLAS_STATUS_SUCCESS)                                                       \
            cu_fail(#call, cublasGetStatusString(cb_st_), __FILE__, __LINE__);                     \
    } while (0)

#define CU_TRY(e, call)                                                                            \
    do {                                                                                           \
        cudaError_t cu_err_ = (call);                                                              \
        if (cu_err_ != cudaSuccess)                                                                \
            return sl_err_set(e, SL_ERR_DEVICE, "%s (%s:%d): %s", #call, __FILE__, __LINE__,       \
                              cudaGetErrorString(cu_err_));                                        \
    } while (0)

// Device mirror of sl_batch_meta. Arrays point into one device buffer that
// prepare fills with a single async copy. tiles[l] lists the attention query
// tiles of 2^l consecutive tokens of one sequence: .x = sequence, .y = first
// token index within the sequence (see attention.cu).
#define CU_TILE_LEVELS 7
typedef struct cu_meta {
    int n_tokens, n_seqs, page_size, max_pages;
    int max_q_len, max_kv_len;
    const int32_t *ids, *pos, *q_start, *kv_len, *page_table, *kv_slot;
    const int32_t *state_slot, *state_fresh, *track_slot, *track_len;
    const int32_t *seq_of; // [n_tokens] sequence of each token
    const int32_t *feed;   // [n_tokens] see sl_batch_meta
    int n_logits;
    const int32_t *logit_rows;
    const int2 *tiles[CU_TILE_LEVELS];
    int n_tiles[CU_TILE_LEVELS];
} cu_meta;

typedef struct cu_meta_buf {
    int32_t *host; // pinned
    int32_t *dev;
    size_t cap; // int32 elements
    cudaEvent_t copied;
    cu_meta meta;
} cu_meta_buf;

// The grouped FP8 MoE GEMM's kernel: the mma.sync tiles (k_fp8_moe_gemm_tc), on
// wgmma k_fp8_moe_wg (NOTES.md v35), k_fp8_moe_ws (v47) or that persistent (v52),
// or by the expert tile's rows (AUTO: WSP at 128 rows, WG below; v74)
typedef enum { CU_MOE_WG_TC, CU_MOE_WG_WG, CU_MOE_WG_WS, CU_MOE_WG_WSP, CU_MOE_WG_AUTO } cu_moe_wg;

typedef struct cu_backend {
    struct sl_backend base;
    int device;
    int n_sm;
    cudaStream_t stream;
    cublasLtHandle_t lt;
    void *lt_ws;
    size_t lt_ws_bytes;
    struct cu_matmul_cache *mm_cache; // matmul.cu
    int mm_force;                     // sl_cuda_mm (cuda_backend.h)
    int mm_tune;                      // time the matmul candidates (0: SL_CUDA_MM_TUNE=0, the heuristic's first)
    const char *mm_last;              // kernel of the last matmul: "cublaslt" or "gemv"
    int gemv_smem_set;                // gemv.cu: shared-memory limit raised
    // fp8.cu: a bit per kernel whose smem limit is raised: 1-16 the mma.sync
    // tiles, 32 and 64 the cp.async GEMVs, 1 << 8 .. 1 << 13 the wgmma grouped GEMMs,
    // 1 << 16 k_fp8_moe_one
    int fp8_smem_set;
    unsigned *router_done;            // moe.cu k_moe_router: blocks done (0 between launches)
    unsigned *moe1_sync;              // fp8.cu k_fp8_moe_one's counters (0 between launches)
    struct cu_fp8_st_cache *fp8_st;   // fp8.cu: the weights' group-major scales for cuBLASLt
    size_t moe1_smem;                 // the shared memory k_fp8_moe_one's occupancy was taken for
    int moe1_per_sm;                  // and its blocks an SM there
    int moe_router;                   // k_moe_router on (env SL_CUDA_MOE_ROUTER=0: matmul + route)
    int moe_fp8_path;                 // sl_cuda_moe_fp8 (cuda_backend.h)
    struct cu_sample_stage *sample;   // sample.cu
    struct cu_prof *prof;             // prof.cu: kernel timing (SL_CUDA_PROFILE=1), else NULL
    // prepare: two alternating host (pinned) / device buffers, so a forward
    // can be prepared while the previous one's copy may still be in flight.
    cu_meta_buf mb[2];
    int mb_next;
    // prepare_fixed: the one device region graph batches are mirrored into
    // (their host side still alternates through mb)
    int32_t *fixed;
    int fixed_tokens, fixed_ctx;
    // upload: two pinned staging chunks (host memcpy of one overlaps the DMA
    // of the other) and their device twins for conversions; made at first use
    void *up_host[2], *up_dev[2];
    cudaEvent_t up_free[2];
    // cu_launch: programmatic dependent launch on (env SL_CUDA_PDL=0: off,
    // for A/B timing); fence: the next cu_launch is a plain one (see there)
    int pdl, pdl_fence;
    // cu_attention: the prefill kernel, an sl_cuda_attn_kernel (env
    // default WG2; SL_CUDA_ATTN_WG=0: FA2, =2: WGO, =3: WG, SL_CUDA_ATTN_FA2=0: wmma;
    // sl_cuda_attn_prefill)
    int attn_pf;
    // k_attn_wg2 copies whole K/V tiles by TMA where it can (NOTES.md v70); env
    // SL_CUDA_ATTN_TMA=0: by cp.async as before (A/B timing)
    int attn_tma;
    // cu_moe_experts_fp8, AUTO: which kernel runs the grouped GEMMs (a
    // cu_moe_wg; env SL_CUDA_MOE_FP8_WG); npb: weight blocks a block of
    // k_fp8_moe_wg walks (env SL_CUDA_MOE_FP8_NPB; default 1, 0: chosen per launch)
    int moe_fp8_wg, moe_fp8_npb;
    // k_fp8_moe_wg copies its weight tiles by TMA (NOTES.md v72); env
    // SL_CUDA_MOE_FP8_TMA=0: by cp.async (A/B timing)
    int moe_fp8_tma;
    // cu_gdn: the split chunked form (prep over all chunks, then the scan;
    // the default, NOTES.md v15: bit-identical to the single kernel and
    // 1.4x faster at 1000 tokens); env SL_CUDA_GDN_SPLIT=0 or sl_cuda_gdn_split
    // goes back
    int gdn_split;
    // fp8.cu: the MoE's per-pair decode GEMVs stage their weights in shared
    // memory with cp.async (k_fp8_gemv_cp, 1: the default, 10 % faster at one
    // token); 2: dense GEMVs too (1.1-7x slower than k_fp8_gemv_tc on an H200,
    // NOTES.md v32: kept to measure); env SL_CUDA_FP8_GEMV_CP=0 / 2
    int fp8_gemv_cp;
    // the norms, silu_mul and sigmoid_mul write their output's FP8 codes for
    // the projection after them (sl_fp8_act): one quantization launch fewer
    // per projection; 1 (default; env SL_CUDA_FP8_ACT=0 turns it off): for the
    // decode GEMV's up to 8 rows (NOTES.md v42), 2: for cuBLASLt's up to 64 too
    // (v110, unmeasured)
    int fp8_act;
    // a one-token FP8 MoE in one kernel (k_fp8_moe_one, NOTES.md v43) in
    // AUTO; env SL_CUDA_MOE_FP8_ONE=1 (off until measured)
    int moe_fp8_one;
    // conv1d + gdn + rmsnorm_gated in one kernel for decode batches
    // (cu_gdn_decode, NOTES.md v44); env SL_CUDA_GDN_FUSE=1 (off until measured)
    int gdn_fuse;
    // the post-attention residual add + RMSNorm inside the fused router
    // (cu_add_rmsnorm_router, NOTES.md v45); env SL_CUDA_ROUTER_NORM=1 (off until measured)
    int router_norm;
    // env SL_CUDA_POISON=1: every new tensor and scratch buffer starts as NaN
    // (all bits set), so a kernel reading memory nothing wrote shows
    int poison;
} cu_backend;

static inline cu_backend *cu_be(sl_backend *be) { return (cu_backend *)be; }

// Stream-ordered scratch memory (graph-capturable): valid until cu_tmp_free,
// which is also stream-ordered, so the kernels that use it may still run.
// The driver's cuTensorMapEncodeTiled (TMA's tensor maps: attention.cu, fp8.cu), or NULL
PFN_cuTensorMapEncodeTiled_v12000 cu_tensor_map_encoder(void);
void *cu_tmp_alloc(cu_backend *b, size_t bytes);
void cu_tmp_free(cu_backend *b, void *p);

static inline const cu_meta *cu_meta_of(const sl_batch_meta *m)
{
    SL_ASSERT(m->dev && "sl_be_prepare() was not called for this batch");
    return (const cu_meta *)m->dev;
}

// ---- programmatic dependent launch (PDL) -------------------------------------
//
// Every kernel of a decode step is launched by cu_launch with programmatic
// stream serialization: its blocks may start while the kernel before it on
// the stream still runs (once that one's blocks have all called
// cu_pdl_trigger, or exited), so launch and ramp-up overlap the previous
// kernel's drain, and work that reads only what no kernel writes (weights)
// overlaps its tail. The contract for a kernel launched so:
//   - cu_pdl_wait() in every block before its first read of anything an
//     earlier kernel wrote and before its first global write (an earlier
//     kernel may still read what it overwrites); it returns once the previous
//     kernel has completed with its writes visible. As each kernel waits so,
//     completion is transitive: a kernel past its wait sees all earlier ones.
//   - cu_pdl_trigger() anywhere (after the wait is the simple choice): the
//     next kernel's blocks may then become resident and run up to their wait.
// Both are no-ops in a kernel launched plainly (<<<>>>, SL_CUDA_PDL=0).
// Kernels that read before their wait read only weights: they must not be
// the direct successor of a kernel that wrote those weights, which is why
// the backend ops that write tensors outside a forward (fill_random) set
// pdl_fence.
__device__ __forceinline__ void cu_pdl_wait(void)
{
    asm volatile("griddepcontrol.wait;" ::: "memory");
}

__device__ __forceinline__ void cu_pdl_trigger(void)
{
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}

// Launches k<<<grid, block, smem, b->stream>>>(args...) as above; cluster_y
// > 1 groups blocks (1, cluster_y, 1) into thread-block clusters. Aborts on a
// launch error (CU_CHECK).
// Kernel timing without a profiler (the GPU machines have no Nsight): with
// SL_CUDA_PROFILE=1 every cu_launch and cuBLASLt call is bracketed by events
// and its time summed per kernel; the table goes to the log when the backend
// is freed. The events serialize what PDL would overlap, and work under graph
// capture is not timed (serve with --disable-cuda-graph), so the sum exceeds
// a real step: it says where the time goes, not how long a step takes.
void cu_prof_init(cu_backend *b);
void cu_prof_begin(cu_backend *b);
void cu_prof_end(cu_backend *b, const void *fn, const char *name);
void cu_prof_free(cu_backend *b);

template <class... P, class... A>
static inline void cu_launch_cl(cu_backend *b, unsigned cluster_y, void (*k)(P...), dim3 grid,
                                dim3 block, size_t smem, A... args)
{
    cudaLaunchAttribute at[2];
    unsigned n = 0;
    if (b->pdl && !b->pdl_fence) {
        at[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        at[n].val.programmaticStreamSerializationAllowed = 1;
        n++;
    }
    b->pdl_fence = 0;
    if (cluster_y > 1) {
        at[n].id = cudaLaunchAttributeClusterDimension;
        at[n].val.clusterDim.x = 1;
        at[n].val.clusterDim.y = cluster_y;
        at[n].val.clusterDim.z = 1;
        n++;
    }
    cudaLaunchConfig_t lc = {};
    lc.gridDim = grid;
    lc.blockDim = block;
    lc.dynamicSmemBytes = smem;
    lc.stream = b->stream;
    lc.attrs = at;
    lc.numAttrs = n;
    if (b->prof) cu_prof_begin(b);
    CU_CHECK(cudaLaunchKernelEx(&lc, k, args...));
    if (b->prof) cu_prof_end(b, (const void *)k, NULL);
}

template <class... P, class... A>
static inline void cu_launch(cu_backend *b, void (*k)(P...), dim3 grid, dim3 block, size_t smem,
                             A... args)
{
    cu_launch_cl(b, 1, k, grid, block, smem, args...);
}

// 2-D view [rows, cols] with row stride ld (elements), passed by value.
typedef struct cu_mat {
    void *p;
    int dt; // sl_dtype
    int64_t rows, cols, ld;
} cu_mat;

static inline cu_mat cu_mat_of(const sl_tensor *t)
{
    cu_mat m;
    m.p = t->data;
    m.dt = t->dtype;
    m.rows = sl_tensor_rows(t);
    m.cols = sl_tensor_cols(t);
    m.ld = sl_tensor_ld(t);
    return m;
}

// Rows r0 .. r0+n-1 of m.
static inline cu_mat cu_mat_rows(cu_mat m, int64_t r0, int64_t n)
{
    m.p = (char *)m.p + r0 * m.ld * (int64_t)sl_dtype_size((sl_dtype)m.dt);
    m.rows = n;
    return m;
}

// float8 e4m3fn, as the host sl_f32_to_e4m3 / sl_e4m3_to_f32 (backend.h):
// round to nearest even, saturating at ±448 (SATFINITE: inf -> ±448), NaN
// stays NaN; the decode is exact.
__device__ __forceinline__ uint8_t cu_f32_to_e4m3(float v)
{
    return (uint8_t)__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
}

__device__ __forceinline__ float cu_e4m3_to_f32(uint8_t v)
{
    __half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)v, __NV_E4M3);
    return __half2float(__half(h));
}

__device__ __forceinline__ float cu_ldf(const void *p, int dt, int64_t i)
{
    switch (dt) {
    case SL_DTYPE_BF16: return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    case SL_DTYPE_F32: return ((const float *)p)[i];
    case SL_DTYPE_F16: return __half2float(((const __half *)p)[i]);
    case SL_DTYPE_F8E4M3: return cu_e4m3_to_f32(((const uint8_t *)p)[i]);
    default: return (float)((const int32_t *)p)[i];
    }
}

__device__ __forceinline__ void cu_stf(void *p, int dt, int64_t i, float v)
{
    switch (dt) {
    case SL_DTYPE_BF16: ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(v); break;
    case SL_DTYPE_F32: ((float *)p)[i] = v; break;
    case SL_DTYPE_F16: ((__half *)p)[i] = __float2half_rn(v); break;
    case SL_DTYPE_F8E4M3: ((uint8_t *)p)[i] = cu_f32_to_e4m3(v); break;
    default: break;
    }
}

// v as the tensor of dtype dt will hold it (the value a later read returns).
__device__ __forceinline__ float cu_round(int dt, float v)
{
    switch (dt) {
    case SL_DTYPE_BF16: return __bfloat162float(__float2bfloat16_rn(v));
    case SL_DTYPE_F16: return __half2float(__float2half_rn(v));
    default: return v;
    }
}

__device__ __forceinline__ float cu_mat_ld(const cu_mat &m, int64_t r, int64_t c)
{
    return cu_ldf(m.p, m.dt, r * m.ld + c);
}

__device__ __forceinline__ void cu_mat_st(const cu_mat &m, int64_t r, int64_t c, float v)
{
    cu_stf(m.p, m.dt, r * m.ld + c, v);
}

// A load in flight (cu_ldv_start issues it, cu_ldv_end converts it): the
// 8 elements' (or with VEC false one element's) bits, as stored where dt is
// BF16, F16 or F32, else already floats (dt F32). Several starts before their
// ends overlap their round trips. Converting in an arm per dtype, as cu_ld8
// did, made each load wait before the next one was issued (NOTES v58).
struct cu_pend {
    uint4 a, b;
    int dt;
};

// VEC: 8 consecutive elements from (r, c); the caller guarantees 16-byte
// alignment of BF16/F16 rows and 32-byte of F32 rows (see cu_mat_vec_ok).
// The BF16 / F16 / F32 loads take no branch (F32's second half predicated).
template <bool VEC> __device__ __forceinline__ cu_pend cu_ldv_start(const cu_mat &m, int64_t r, int64_t c)
{
    cu_pend p = {make_uint4(0, 0, 0, 0), make_uint4(0, 0, 0, 0), SL_DTYPE_F32};
    int64_t i = r * m.ld + c;
    if (!VEC) {
        p.a.x = __float_as_uint(cu_mat_ld(m, r, c));
    } else if (m.dt != SL_DTYPE_BF16 && m.dt != SL_DTYPE_F16 && m.dt != SL_DTYPE_F32) {
        uint32_t w[8];
#pragma unroll
        for (int k = 0; k < 8; k++) w[k] = __float_as_uint(cu_ldf(m.p, m.dt, i + k));
        p.a = make_uint4(w[0], w[1], w[2], w[3]);
        p.b = make_uint4(w[4], w[5], w[6], w[7]);
    } else {
        bool f32 = m.dt == SL_DTYPE_F32;
        const uint4 *q = f32 ? (const uint4 *)((const float *)m.p + i) : (const uint4 *)((const uint16_t *)m.p + i);
        p.a = q[0];
        p.b = f32 ? q[1] : make_uint4(0, 0, 0, 0);
        p.dt = m.dt;
    }
    return p;
}

template <bool VEC> __device__ __forceinline__ void cu_ldv_end(const cu_pend &p, float *f)
{
    const uint32_t w[8] = {p.a.x, p.a.y, p.a.z, p.a.w, p.b.x, p.b.y, p.b.z, p.b.w};
#pragma unroll
    for (int k = 0; k < (VEC ? 8 : 1); k++) {
        uint32_t h = k & 1 ? w[k >> 1] >> 16 : w[k >> 1] & 0xffffu; // 16-bit element k
        f[k] = p.dt == SL_DTYPE_BF16  ? __uint_as_float(h << 16)
               : p.dt == SL_DTYPE_F16 ? __half2float(__ushort_as_half((unsigned short)h))
                                      : __uint_as_float(w[k]);
    }
}

__device__ __forceinline__ void cu_ld8(const cu_mat &m, int64_t r, int64_t c, float *f)
{
    cu_ldv_end<true>(cu_ldv_start<true>(m, r, c), f);
}

__device__ __forceinline__ void cu_st8(const cu_mat &m, int64_t r, int64_t c, const float *f)
{
    int64_t i = r * m.ld + c;
    if (m.dt == SL_DTYPE_BF16) {
        uint4 u;
        __nv_bfloat162 *h = (__nv_bfloat162 *)&u;
#pragma unroll
        for (int k = 0; k < 4; k++) h[k] = __floats2bfloat162_rn(f[2 * k], f[2 * k + 1]);
        *(uint4 *)((__nv_bfloat16 *)m.p + i) = u;
    } else if (m.dt == SL_DTYPE_F32) {
        float4 *d = (float4 *)((float *)m.p + i);
        d[0] = make_float4(f[0], f[1], f[2], f[3]);
        d[1] = make_float4(f[4], f[5], f[6], f[7]);
    } else {
#pragma unroll
        for (int k = 0; k < 8; k++) cu_stf(m.p, m.dt, i + k, f[k]);
    }
}

// V = VEC ? 8 : 1 consecutive elements at (r, c): cu_ld8 / cu_st8, or one
// element, so a row-wise kernel has one body for both paths.
template <bool VEC>
__device__ __forceinline__ void cu_ldv(const cu_mat &m, int64_t r, int64_t c, float *f)
{
    cu_ldv_end<VEC>(cu_ldv_start<VEC>(m, r, c), f);
}

template <bool VEC>
__device__ __forceinline__ void cu_stv(const cu_mat &m, int64_t r, int64_t c, const float *f)
{
    if (VEC) cu_st8(m, r, c, f);
    else cu_mat_st(m, r, c, f[0]);
}

// Typed loads: cu_typed(dt, f) calls f with a tag of dt's storage type (bf16,
// f32, or cu_dyn_t for the rest), and cu_mat_ld_as(m, r, c, tag) loads as that
// type. A loop over many elements written inside f is straight-line code
// whose loads the compiler issues back to back; with cu_mat_ld's switch at
// each element every load waited for the one before (most of the GDN prep's
// time, NOTES v57).
struct cu_dyn_t {};
__device__ __forceinline__ float cu_mat_ld_as(const cu_mat &m, int64_t r, int64_t c, __nv_bfloat16)
{
    return __bfloat162float(((const __nv_bfloat16 *)m.p)[r * m.ld + c]);
}
__device__ __forceinline__ float cu_mat_ld_as(const cu_mat &m, int64_t r, int64_t c, float)
{
    return ((const float *)m.p)[r * m.ld + c];
}
__device__ __forceinline__ float cu_mat_ld_as(const cu_mat &m, int64_t r, int64_t c, cu_dyn_t)
{
    return cu_mat_ld(m, r, c);
}
template <class F> __device__ __forceinline__ void cu_typed(int dt, F f)
{
    if (dt == SL_DTYPE_BF16) f(__nv_bfloat16());
    else if (dt == SL_DTYPE_F32) f(0.0f);
    else f(cu_dyn_t());
}

// Elements c and c + 1 of row r as one store of that type (c and m.ld even: 4-
// or 8-byte aligned); element by element for the other dtypes.
__device__ __forceinline__ void cu_mat_st2_as(const cu_mat &m, int64_t r, int64_t c, float lo, float hi, __nv_bfloat16)
{
    *(__nv_bfloat162 *)((__nv_bfloat16 *)m.p + r * m.ld + c) = __floats2bfloat162_rn(lo, hi);
}
__device__ __forceinline__ void cu_mat_st2_as(const cu_mat &m, int64_t r, int64_t c, float lo, float hi, float)
{
    *(float2 *)((float *)m.p + r * m.ld + c) = make_float2(lo, hi);
}
__device__ __forceinline__ void cu_mat_st2_as(const cu_mat &m, int64_t r, int64_t c, float lo, float hi, cu_dyn_t)
{
    cu_mat_st(m, r, c, lo);
    cu_mat_st(m, r, c + 1, hi);
}
// Whether m's rows take cu_mat_st2_as's paired stores at even columns (a
// pair's bytes divide the row stride and the base: bf16 / f16 4, f32 8).
__device__ __forceinline__ bool cu_mat_pair_ok(const cu_mat &m)
{
    return m.ld % 2 == 0 && (uintptr_t)m.p % (m.dt == SL_DTYPE_F32 ? 8 : 4) == 0;
}

// Elements c .. c + 3 of row r as one store of that type (c and m.ld multiples
// of 4: 8- or 16-byte aligned); element by element for the other dtypes.
__device__ __forceinline__ void cu_mat_st4_as(const cu_mat &m, int64_t r, int64_t c, float4 v, __nv_bfloat16)
{
    __nv_bfloat162 h[2] = {__floats2bfloat162_rn(v.x, v.y), __floats2bfloat162_rn(v.z, v.w)};
    *(uint2 *)((__nv_bfloat16 *)m.p + r * m.ld + c) = *(const uint2 *)h;
}
__device__ __forceinline__ void cu_mat_st4_as(const cu_mat &m, int64_t r, int64_t c, float4 v, float)
{
    *(float4 *)((float *)m.p + r * m.ld + c) = v;
}
__device__ __forceinline__ void cu_mat_st4_as(const cu_mat &m, int64_t r, int64_t c, float4 v, cu_dyn_t)
{
    cu_mat_st(m, r, c, v.x);
    cu_mat_st(m, r, c + 1, v.y);
    cu_mat_st(m, r, c + 2, v.z);
    cu_mat_st(m, r, c + 3, v.w);
}

// Columns [0, cols) of row sr of src into row dr of dst, the block's threads
// striding by blockDim.x, 4 typed loads of a thread in flight before their
// stores (a store may alias the source, so the compiler keeps the order).
__device__ __forceinline__ void cu_copy_row(const cu_mat &dst, int64_t dr, const cu_mat &src, int64_t sr,
                                            int64_t cols)
{
    constexpr int B = 4;
    cu_typed(src.dt, [&](auto ty) {
        for (int64_t c0 = threadIdx.x; c0 < cols; c0 += B * blockDim.x) {
            float v[B];
#pragma unroll
            for (int j = 0; j < B; j++) {
                int64_t c = c0 + j * blockDim.x;
                v[j] = c < cols ? cu_mat_ld_as(src, sr, c, ty) : 0.0f;
            }
#pragma unroll
            for (int j = 0; j < B; j++)
                if (c0 + j * blockDim.x < cols) cu_mat_st(dst, dr, c0 + j * blockDim.x, v[j]);
        }
    });
}

// Σ_{j<k} w[j] · y(j) in j order (the CPU's), the loads B terms at a time
// (y(j) loads term j's value; past k the index is clamped and the term
// dropped): over a runtime k a rolled loop issued a term's loads only after
// the term before was added, a round trip a term (NOTES v62). k >= 1.
template <int B = 8, class Y> __device__ __forceinline__ float cu_wsum(const float *w, int k, Y y)
{
    float acc = 0.0f;
    for (int j0 = 0; j0 < k; j0 += B) {
        float wv[B], yv[B];
#pragma unroll
        for (int i = 0; i < B; i++) {
            int j = min(j0 + i, k - 1);
            wv[i] = w[j];
            yv[i] = y(j);
        }
#pragma unroll
        for (int i = 0; i < B; i++)
            if (j0 + i < k) acc += wv[i] * yv[i];
    }
    return acc;
}

// The column loop of a row-wise kernel launched on cu_row_grid (with cols / 8
// when VEC): this thread's columns c of [0, cols) in steps of V = VEC ? 8 : 1,
// strided over the row's blocks; body(c) handles columns c .. c + V - 1.
// cu_row_cols_all: the same columns, every thread of a block taking the same
// number of steps (for warp collectives in body): body(c, in), in = c < cols.
template <bool VEC, typename F> __device__ __forceinline__ void cu_row_cols_all(int64_t cols, F body)
{
    constexpr int V = VEC ? 8 : 1;
    const int64_t step = (int64_t)gridDim.x * blockDim.x * V;
    for (int64_t c0 = blockIdx.x * (int64_t)blockDim.x * V; c0 < cols; c0 += step) {
        int64_t c = c0 + (int64_t)threadIdx.x * V;
        body(c, c < cols);
    }
}

template <bool VEC, typename F> __device__ __forceinline__ void cu_row_cols(int64_t cols, F body)
{
    cu_row_cols_all<VEC>(cols, [&](int64_t c, bool in) {
        if (in) body(c);
    });
}

// Over the warp's lanes (float, or int for counts).
template <class T> __device__ __forceinline__ T cu_warp_sum(T v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float cu_warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread
// gets the total. red must hold 32 floats.
__device__ __forceinline__ float cu_block_sum(float v, float *red)
{
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = cu_warp_sum(v);
    __syncthreads(); // red may still be read from a previous call
    if (lane == 0) red[w] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : 0.0f;
    return cu_warp_sum(v);
}

// Whether cu_ld8 / cu_st8 may be used on m at every column multiple of 8.
static inline int cu_mat_vec_ok(const cu_mat &m)
{
    int64_t esz = (int64_t)sl_dtype_size((sl_dtype)m.dt);
    return !m.p || (m.cols % 8 == 0 && m.ld % 8 == 0 && (uintptr_t)m.p % (uintptr_t)(8 * esz) == 0);
}

// Rotary inv_freq computed on the host (glibc powf, as the CPU op), so the
// fp32 angle pos·inv_freq is bit-identical; only sin/cos may differ by an ulp.
typedef struct cu_rope_freqs {
    float v[128];
} cu_rope_freqs;

static inline cu_rope_freqs cu_rope_freqs_make(float theta, int rot_dim)
{
    cu_rope_freqs f;
    SL_ASSERT(rot_dim / 2 <= 128);
    for (int i = 0; i < rot_dim / 2; i++) f.v[i] = 1.0f / powf(theta, (float)(2 * i) / (float)rot_dim);
    return f;
}

static inline unsigned cu_blocks(int64_t n, int threads)
{
    return (unsigned)((n + threads - 1) / threads);
}

// Grid for row-wise kernels: blockIdx.y = row, blockIdx.x strides the columns
// with 256-thread blocks.
static inline dim3 cu_row_grid(int64_t rows, int64_t cols)
{
    unsigned x = cu_blocks(cols, 256);
    return dim3(x > 64 ? 64 : x, (unsigned)rows);
}

#endif

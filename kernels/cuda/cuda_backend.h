/* kernels/cuda/cuda_backend.h: what the CUDA backend offers beyond
 * kernels/backend.h, for code that must meet the device directly (CUDA graph
 * capture, NCCL, timing with CUDA events). Include only where CUDA is built.
 *
 *   cudaStream_t s = (cudaStream_t)sl_cuda_stream(be);
 *   cudaEventRecord(start, s); sl_be_matmul(be, ...); cudaEventRecord(stop, s);
 *
 * Decode-step kernels launch programmatically dependent (PDL: each may start
 * while the previous one drains; see cuda_common.cuh). SL_CUDA_PDL=0 in the
 * environment when the backend is created launches them plainly (A/B timing).
 * SL_CUDA_ATTN_WG=0 there runs prefill attention on the FlashAttention-2
 * kernel instead of the wgmma ones, SL_CUDA_ATTN_FA2=0 on the wmma kernel (see
 * sl_cuda_attn_prefill).
 */
#ifndef SL_CUDA_BACKEND_H
#define SL_CUDA_BACKEND_H

#include "../backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The one stream every op of a CUDA backend runs on (a cudaStream_t). be
 * must come from sl_backend_cuda_new; the stream lives as long as be. */
void *sl_cuda_stream(sl_backend *be);

/* Which kernel sl_be_matmul runs where more than one can. AUTO (the default)
 * times cuBLASLt's candidates and, for decode shapes, the hand-written GEMV
 * once per shape and keeps the fastest; CUBLASLT and GEMV force one, for tests
 * and benchmarks (GEMV only where it applies: bf16 weights, M <= 16,
 * K % 8 == 0, 16-byte aligned x and w rows; elsewhere cuBLASLt runs).
 * sl_be_matmul_fp8 the same way: AUTO runs cuBLASLt's block-scaled FP8 GEMM
 * from M > 8 (the own GEMV below), CUBLASLT at every M, GEMV the own kernels
 * at every M; cuBLASLt only with K % 128 == 0 and 16-byte aligned weight
 * rows, and only where it has an algorithm (else the own kernels run). Not
 * thread-safe against ops running on be. */
typedef enum sl_cuda_mm {
    SL_CUDA_MM_AUTO,
    SL_CUDA_MM_CUBLASLT,
    SL_CUDA_MM_GEMV,
} sl_cuda_mm;
void sl_cuda_matmul_force(sl_backend *be, sl_cuda_mm which);

/* Which kernel sl_be_attention runs for prefill batches (a sequence with 16
 * or more new tokens): the wmma kernel, the FlashAttention-2 one (mma.sync,
 * S/P/O in registers; kernels/dev/NOTES.md v12) or the same on Hopper's
 * warpgroup mma (v34), plain or with the next tile's S overlapping this
 * tile's P·V (WGO, v37), or on 128-row tiles over two warpgroups (WG2, v40;
 * WG where a KV head has a single query head), or those tiles with a
 * producer warpgroup and the consumers taking turns (WS, v46), or AUTO: WS
 * where its tiles go by TMA (the page size a multiple of 16; v74 on an
 * H100, 4096 tokens: 0.329 / 0.303 ms at head_dim 128 / 256 against WG2's
 * 0.421 / 0.386), WG2 elsewhere.
 * A backend starts with AUTO, or FA2 with SL_CUDA_ATTN_WG=0 in the
 * environment at creation, WGO with SL_CUDA_ATTN_WG=2, WG with
 * SL_CUDA_ATTN_WG=3, WS with SL_CUDA_ATTN_WG=4, WG2 with SL_CUDA_ATTN_WG=5,
 * or WMMA with SL_CUDA_ATTN_FA2=0. Returns the previous setting. Not
 * thread-safe against ops running on be. */
typedef enum {
    SL_CUDA_ATTN_WMMA,
    SL_CUDA_ATTN_FA2,
    SL_CUDA_ATTN_WG,
    SL_CUDA_ATTN_WGO,
    SL_CUDA_ATTN_WG2,
    SL_CUDA_ATTN_WS,
    SL_CUDA_ATTN_AUTO
} sl_cuda_attn_kernel;
int sl_cuda_attn_prefill(sl_backend *be, int kernel);

/* Which form sl_be_gdn runs for sequences of 16 or more new tokens: 0 the
 * single chunked kernel (each block walks its sequence's chunks and does all
 * of each chunk's work), 1 the split form (the chunk-local work for every
 * chunk in parallel, then a scan over the chunks doing only what depends on
 * the state; kernels/dev/NOTES.md v15; the same results to the bit). A
 * backend starts with 1, or 0 with SL_CUDA_GDN_SPLIT=0 in the environment at
 * creation. Returns the previous setting. Not thread-safe against ops running
 * on be. */
int sl_cuda_gdn_split(sl_backend *be, int on);

/* The kernel the last sl_be_matmul on be ran: "cublaslt" or "gemv" (a static
 * string; NULL before the first matmul); sl_be_matmul_fp8 and
 * sl_be_moe_experts_fp8 set it too ("fp8_cublaslt", "fp8_gemm_tc",
 * "fp8_moe_grouped", ...). */
const char *sl_cuda_matmul_last(sl_backend *be);

/* Which kernels sl_be_moe_experts_fp8 runs. GEMV: per (token, expert) pair
 * GEMVs at every size (SL_CUDA_MOE_FP8_GROUPED=0 in the environment when
 * the backend is created). AUTO (the default): one token, per-pair GEMVs;
 * from 2 tokens up to the pairs they take (704: Coder-Next's 64 tokens),
 * GV: moe.cu's few-token kernels (x quantized, gate_up with silu·up fused,
 * silu·up quantized, down with the combine fused: four launches, each
 * active expert's weights streamed once per 8 of its tokens); beyond,
 * EXPERT_GEMV (pairs sorted by expert, each active expert's weights
 * streamed once for up to 16 of its tokens by the GEMV kernel); from 8
 * pairs an expert (prefill), grouped GEMMs (pairs sorted by expert, one
 * tensor-core FP8 GEMM per expert tile: on wgmma, the persistent
 * warp-specialized form at 128-row tiles and the plain kernel at 32 and 64
 * rows (v74); with SL_CUDA_MOE_FP8_WG=0 in the environment at creation on
 * the mma.sync tiles, with =2 on the plain wgmma kernel, with =3 on its
 * warp-specialized form, with =4 on that persistent, at every tile size). GROUPED (wgmma), GROUPED_WS (wgmma, warp-specialized),
 * GROUPED_WSP (the same, persistent), GROUPED_TC (mma.sync), EXPERT_GEMV and GV
 * force theirs where they can run (tests). The grouped path needs K % 16 ==
 * 0 and 16-byte aligned expert weights (H and I multiples of 16); elsewhere
 * the GEMVs run. Not thread-safe against ops running on be. */
typedef enum sl_cuda_moe_fp8 {
    SL_CUDA_MOE_FP8_GEMV,
    SL_CUDA_MOE_FP8_AUTO,
    SL_CUDA_MOE_FP8_GROUPED,
    SL_CUDA_MOE_FP8_EXPERT_GEMV, /* one GEMV pass per active expert over its tokens (routing plan) */
    SL_CUDA_MOE_FP8_GV,          /* the two few-token kernels of moe.cu */
    SL_CUDA_MOE_FP8_GROUPED_TC,  /* the grouped GEMMs on mma.sync tiles (kernels/dev/NOTES.md v11) */
    SL_CUDA_MOE_FP8_ONE,         /* one token: every pair in one kernel (k_fp8_moe_one, v43), else per pair */
    SL_CUDA_MOE_FP8_GROUPED_WS,  /* on wgmma, warp-specialized (a producer warpgroup, v47) */
    SL_CUDA_MOE_FP8_GROUPED_WSP, /* the same persistent: a block an SM walking the tiles (v52) */
} sl_cuda_moe_fp8;
void sl_cuda_moe_fp8_path(sl_backend *be, sl_cuda_moe_fp8 which);

#ifdef __cplusplus
}
#endif

#endif

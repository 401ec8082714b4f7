// kernels/cuda/gemv.cu: decode-shaped out = x · wᵀ (M ≤ 16 rows of x) on the
// tensor cores, built to stream the bf16 weight once at full bandwidth.
//
// Fragments without shuffles: one mma.sync m16n8k16 multiplies 16 weight rows
// (A) by 8 rows of x (B). A dot product does not care in which order k is
// summed, so any permutation of k applied to both operands alike gives the
// same result: each lane loads 8 consecutive k of its two weight rows (g and
// g+8) with one 16-byte load each and reads its B fragment from the same 8 k
// of x row g; the first half of those k feed one mma, the second half the
// next. For M ≤ 8 the B columns past M are zeros: tensor-core time is cheap
// next to the weight stream.
//
// Work split: a warp owns 16 weight rows; a block of GV_WARPS warps stages its
// k range of x in shared memory once, with cp.async (x is read from L2 once
// per 64 weight rows, not once per weight load; K is split further so that one
// chunk covers a block where shared memory allows). Each lane has one or two
// batches of GV_U k-steps (2·GV_U 16-byte loads each) in flight: it multiplies
// one register buffer while the other loads. Narrow outputs split K over a
// thread-block cluster of up to 8 blocks (grid.y); the partial sums meet in
// distributed shared memory and are added in split order, so results are
// deterministic. Measurements and what did not work: kernels/dev/NOTES.md v6.
#include <cooperative_groups.h>

#include "gemv.cuh"

namespace cg = cooperative_groups;

#define GV_U 4                  // k-steps of 32 per batch of loads
#define GV_BATCH (32 * GV_U)    // k per batch; chunk and split lengths are multiples
#define GV_MAX_SPLIT 8          // portable cluster size
#define GV_WARPS 4              // per block: 64 weight rows
#define GV_X_SMEM 65536         // bytes of x per staged chunk (3 blocks/SM fit)

typedef struct gv_args {
    const __nv_bfloat16 *w, *x;
    int64_t ldw, ldx, ldo;
    void *out;
    int out_dt;
    int M, N, K;
    int kb; // k per split (multiple of GV_BATCH)
    int kc; // k per staged chunk (multiple of GV_BATCH, ≤ kb)
} gv_args;

// Weights are read exactly once: keep them out of L1, fetch 256 B lines into L2.
// volatile: the callers' bounds checks must not be hoisted over the load.
__device__ __forceinline__ uint4 gv_ld_stream(const __nv_bfloat16 *p)
{
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
    return v;
}

// 16 bytes of x into shared memory without a register round trip, so a
// thread's copies are all in flight at once (staging 16 rows is one L2
// latency, not one per copy); zeros where !in (past the chunk: 0 · 0, never
// 0 · garbage).
__device__ __forceinline__ void gv_stage16(__nv_bfloat16 *dst, const __nv_bfloat16 *src, bool in)
{
    unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(d), "l"(src), "r"(in ? 16 : 0)
                 : "memory");
}

__device__ __forceinline__ void gv_mma(float *c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                       uint32_t b0, uint32_t b1)
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// One batch of weights: v[s][0] from row wa, v[s][1] from row wb, 8 k each at
// this lane's kt + 32 s; zeros past ke or past N (va, vb), so tails need no
// special case.
__device__ __forceinline__ void gv_load(uint4 (&v)[GV_U][2], const __nv_bfloat16 *wa,
                                        const __nv_bfloat16 *wb, bool va, bool vb, int kt, int ke)
{
#pragma unroll
    for (int s = 0; s < GV_U; s++) {
        bool in = kt + 32 * s < ke;
        v[s][0] = va && in ? gv_ld_stream(wa + kt + 32 * s) : make_uint4(0, 0, 0, 0);
        v[s][1] = vb && in ? gv_ld_stream(wb + kt + 32 * s) : make_uint4(0, 0, 0, 0);
    }
}

// acc += one batch: weights w (gv_load's layout) times x rows g and g + 8
// (xk: this lane's 8-k slot of x row 0 in shared memory, rows xld apart).
template <int NT>
__device__ __forceinline__ void gv_batch(float (&acc)[NT][4], const uint4 (&w)[GV_U][2],
                                         const __nv_bfloat16 *xk, int xld, int g, int M)
{
#pragma unroll
    for (int s = 0; s < GV_U; s++)
#pragma unroll
        for (int n = 0; n < NT; n++) {
            const int m = 8 * n + g;
            uint4 xb = m < M ? *(const uint4 *)(xk + m * xld + 32 * s) : make_uint4(0, 0, 0, 0);
            gv_mma(acc[n], w[s][0].x, w[s][1].x, w[s][0].y, w[s][1].y, xb.x, xb.y);
            gv_mma(acc[n], w[s][0].z, w[s][1].z, w[s][0].w, w[s][1].w, xb.z, xb.w);
        }
}

template <int NT> // n-tiles of 8 x rows: 1 for M ≤ 8, 2 for M ≤ 16
__global__ void __launch_bounds__(32 * GV_WARPS, 3) k_gemv(gv_args a)
{
    extern __shared__ uint4 gv_smem[];
    __nv_bfloat16 *xs = (__nv_bfloat16 *)gv_smem; // [M][kc + 32]
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int rows = 16 * (blockDim.x >> 5); // weight rows per block
    const int g = lane >> 2, t = lane & 3;
    const int row0 = blockIdx.x * rows + warp * 16;
    const int ks = blockIdx.y * a.kb, ke = min(a.K, ks + a.kb);
    // Row stride ≡ 64 bytes mod 128: the 8 lanes of one shared-memory phase
    // read 64 bytes of row g and 64 of row g+1, on disjoint banks.
    const int xld = a.kc + 32;
    const bool va = row0 + g < a.N, vb = row0 + g + 8 < a.N;
    const __nv_bfloat16 *wa = a.w + (int64_t)(va ? row0 + g : 0) * a.ldw;
    const __nv_bfloat16 *wb = a.w + (int64_t)(vb ? row0 + g + 8 : 0) * a.ldw;

    // Two register buffers alternate (no copies, which would wait for the
    // loads): a batch is multiplied while the other buffer's batch loads, then
    // its buffer is refilled two batches ahead. Two batches are in flight while
    // x is staged.
    uint4 w0[GV_U][2], w1[GV_U][2];
    float acc[NT][4];
#pragma unroll
    for (int n = 0; n < NT; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    gv_load(w0, wa, wb, va, vb, ks + t * 8, ke);
    gv_load(w1, wa, wb, va, vb, ks + GV_BATCH + t * 8, ke);
    // Launched dependent (cu_launch): the two weight batches above load while
    // the previous kernel (the producer of x) drains; x and out wait for it.
    cu_pdl_wait();
    cu_pdl_trigger();
    for (int c0 = ks; c0 < ke; c0 += a.kc) {
        const int c1 = min(ke, c0 + a.kc);
        const int w8 = (c1 - c0 + GV_BATCH - 1) / GV_BATCH * (GV_BATCH / 8); // 16-byte slots per row
        __syncthreads(); // every warp is done with the previous chunk
        for (int i = threadIdx.x; i < a.M * w8; i += blockDim.x) {
            int m = i / w8, j = (i - m * w8) * 8;
            bool in = c0 + j < c1; // else no byte is read: point at x itself, in bounds
            gv_stage16(xs + m * xld + j, in ? a.x + m * a.ldx + c0 + j : a.x, in);
        }
        asm volatile("cp.async.wait_all;" ::: "memory");
        __syncthreads();
        for (int k = c0; k < c1; k += GV_BATCH) {
            const __nv_bfloat16 *xk = xs + (k - c0) + t * 8;
            if (((k - ks) / GV_BATCH & 1) == 0) {
                gv_batch<NT>(acc, w0, xk, xld, g, a.M);
                gv_load(w0, wa, wb, va, vb, k + 2 * GV_BATCH + t * 8, ke);
            } else {
                gv_batch<NT>(acc, w1, xk, xld, g, a.M);
                gv_load(w1, wa, wb, va, vb, k + 2 * GV_BATCH + t * 8, ke);
            }
        }
    }

    // C fragment: acc[n][i] is weight row g + 8 (i >> 1), x row 8 n + 2 t + (i & 1).
    if (gridDim.y == 1) {
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                int m = 8 * n + 2 * t + (i & 1), r = row0 + g + 8 * (i >> 1);
                if (m < a.M && r < a.N) cu_stf(a.out, a.out_dt, m * a.ldo + r, acc[n][i]);
            }
        return;
    }
    float *part = (float *)gv_smem; // [M][rows], reusing the x buffer
    __syncthreads();
#pragma unroll
    for (int n = 0; n < NT; n++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int m = 8 * n + 2 * t + (i & 1);
            if (m < a.M) part[m * rows + warp * 16 + g + 8 * (i >> 1)] = acc[n][i];
        }
    cg::cluster_group cl = cg::this_cluster();
    cl.sync();
    const int S = gridDim.y, rank = (int)cl.block_rank();
    for (int e = rank * blockDim.x + threadIdx.x; e < a.M * rows; e += S * blockDim.x) {
        float sum = 0.0f;
        for (int s = 0; s < S; s++) sum += cl.map_shared_rank(part, s)[e];
        int m = e / rows, r = blockIdx.x * rows + e % rows;
        if (r < a.N) cu_stf(a.out, a.out_dt, m * a.ldo + r, sum);
    }
    cl.sync(); // part stays alive until every block of the cluster has read it
}

static int cdiv(int64_t a, int64_t b) { return (int)((a + b - 1) / b); }

int cu_gemv_ok(const cu_mat *X, const cu_mat *W, const cu_mat *O)
{
    return X->dt == SL_DTYPE_BF16 && W->dt == SL_DTYPE_BF16 &&
           (O->dt == SL_DTYPE_BF16 || O->dt == SL_DTYPE_F32) && X->rows <= 16 &&
           X->cols > 0 && X->cols % 8 == 0 && X->ld % 8 == 0 && W->ld % 8 == 0 && (uintptr_t)X->p % 16 == 0 &&
           (uintptr_t)W->p % 16 == 0 && W->rows < (1 << 30) && X->cols < (1 << 30);
}

void cu_gemv(cu_backend *b, cu_mat O, cu_mat X, cu_mat W)
{
    gv_args a;
    a.w = (const __nv_bfloat16 *)W.p;
    a.x = (const __nv_bfloat16 *)X.p;
    a.ldw = W.ld;
    a.ldx = X.ld;
    a.ldo = O.ld;
    a.out = O.p;
    a.out_dt = O.dt;
    a.M = (int)X.rows;
    a.N = (int)W.rows;
    a.K = (int)X.cols;
    // Enough blocks for two per SM: narrow N splits K (at most a cluster).
    // x chunks: the split is raised so that one chunk covers a block's k range
    // where it can (a second chunk waits for its staging).
    int target = 2 * b->n_sm, rb = cdiv(a.N, 16 * GV_WARPS);
    int kc_max = (GV_X_SMEM / (2 * a.M) - 32) / GV_BATCH * GV_BATCH;
    int S = cdiv(target, rb), S_chunk = cdiv(a.K, kc_max);
    if (S < S_chunk) S = S_chunk;
    if (S > GV_MAX_SPLIT) S = GV_MAX_SPLIT;
    a.kb = cdiv(cdiv(a.K, S), GV_BATCH) * GV_BATCH;
    S = cdiv(a.K, a.kb);
    a.kc = a.kb < kc_max ? a.kb : kc_max;
    size_t smem = (size_t)a.M * (a.kc + 32) * 2, red = (size_t)a.M * 16 * GV_WARPS * 4;
    if (S > 1 && red > smem) smem = red;
    if (!b->gemv_smem_set) { // per kernel and device: once per backend
        CU_CHECK(cudaFuncSetAttribute(k_gemv<1>, cudaFuncAttributeMaxDynamicSharedMemorySize, GV_X_SMEM));
        CU_CHECK(cudaFuncSetAttribute(k_gemv<2>, cudaFuncAttributeMaxDynamicSharedMemorySize, GV_X_SMEM));
        b->gemv_smem_set = 1;
    }

    // a cluster only where K is split
    cu_launch_cl(b, (unsigned)S, a.M <= 8 ? k_gemv<1> : k_gemv<2>, dim3((unsigned)rb, (unsigned)S),
                 32 * GV_WARPS, smem, a);
}

// kernels/cuda/moe.cuh: mixture-of-experts routing and expert FFNs.
#ifndef SL_CUDA_MOE_CUH
#define SL_CUDA_MOE_CUH

#include "cuda_common.cuh"

// Softmax over E <= 1024 logits per token, top-k (ties: lowest index); shared:
// the last logit column gates a shared expert (sl_be_moe_route).
void cu_moe_route(sl_backend *be, sl_tensor *ids, sl_tensor *weights, const sl_tensor *logits,
                  int k, int norm, int shared);
// sl_be_moe_router in one kernel for up to 8 bf16 tokens (returns 0 elsewhere)
int cu_moe_router(sl_backend *be, sl_tensor *ids, sl_tensor *weights, sl_tensor *logits, const sl_tensor *x,
                  const sl_tensor *router, int k, int norm, int shared);
// sl_be_add_rmsnorm_router in one kernel where cu_moe_router applies and the
// rows take the 8-wide norm (SL_CUDA_ROUTER_NORM=1; returns 0 elsewhere)
int cu_add_rmsnorm_router(sl_backend *be, sl_tensor *x, sl_tensor *resid, const sl_tensor *d, const sl_tensor *w,
                          float eps, int one_plus, sl_tensor *ids, sl_tensor *weights, sl_tensor *logits,
                          const sl_tensor *router, int k, int norm, int shared);
// gate_up and down must be BF16; H and I multiples of 8.
void cu_moe_experts(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *ids,
                    const sl_tensor *weights, const sl_tensor *gate_up, const sl_tensor *down);
// sl_be_moe_experts_fp8 through the few-token kernels (moe.cu; x and
// silu·up quantized before each, as the CPU op does) when the pairs fit them
// (up to MOE_GV_MAX_PAIRS); returns 0 (nothing run) otherwise.
int cu_moe_experts_fp8_gv(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *ids,
                          const sl_tensor *weights, const sl_tensor *gate_up, const sl_tensor *gate_up_scale,
                          const sl_tensor *down, const sl_tensor *down_scale);

// ---- grouped expert GEMMs: the routing plan (bf16 here, FP8 in fp8.cu) ----------
//
// The P = T·k (token, expert) pairs sorted by expert: rows offset[e] ..
// offset[e+1] of the permuted order are expert e's pairs, cut into tiles of
// bm rows. Within an expert the rows follow atomic order, so which pair lands
// on which row varies from run to run; every consumer computes a row from
// that row alone and combines in pair order, so results do not vary.
typedef struct cu_moe_plan {
    int32_t *count;   // [E]
    int32_t *offset;  // [E+1]
    int32_t *rank;    // [P] rank of pair (t,j) within its expert
    int32_t *pos;     // [P] row of pair (t,j) in the permuted order
    int32_t *perm;    // [P] pair of each row (NULL unless asked for)
    int32_t *n_tiles; // [1]
    int2 *tiles;      // [max_tiles] (expert, first row within the expert)
    int max_tiles;    // ceil(P / bm) + E: the grid bound (blocks past n_tiles exit)
} cu_moe_plan;

// Plans the pairs of ids (I32 [T, k], row stride ld) over E experts in
// stream-ordered scratch (no host sync; free with cu_moe_plan_free). index:
// also fills pos and perm (otherwise the bf16 gather writes pos).
void cu_moe_plan_make(cu_backend *b, cu_moe_plan *p, const int32_t *ids, int64_t ld, int64_t T, int k,
                      int E, int bm, int index);
void cu_moe_plan_free(cu_backend *b, cu_moe_plan *p);
// out[t, c] = Σ_j w[t, j] · y[pos(t, j), c], j in order (y f32 [P, out.cols]).
// Launched plainly (not PDL).
void cu_moe_combine_run(cu_backend *b, cu_mat out, const float *y, const float *w, int64_t w_ld, int k,
                        const cu_moe_plan *p);

#endif

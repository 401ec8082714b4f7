// kernels/cuda/elementwise.cuh: row-wise and element-wise ops and data movement.
#ifndef SL_CUDA_ELEMENTWISE_CUH
#define SL_CUDA_ELEMENTWISE_CUH

#include "cuda_common.cuh"

void cu_embed(sl_backend *be, sl_tensor *out, const sl_tensor *table, int64_t v0, const sl_batch_meta *m);
void cu_rope(sl_backend *be, sl_tensor *x, int n_heads, int head_dim, int rot_dim, float theta,
             const sl_batch_meta *m);
void cu_silu_mul(sl_backend *be, sl_tensor *out, const sl_tensor *gu, sl_fp8_act *q);
void cu_sigmoid_mul(sl_backend *be, sl_tensor *x, const sl_tensor *g, sl_fp8_act *q);
void cu_gather_rows(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_batch_meta *m);
// dst slots must be distinct from every src slot (checked): copies run in parallel.
void cu_copy_slots(sl_backend *be, sl_tensor *pool, const int32_t *dst, const int32_t *src, int n);
// ids[r] = argmax of row r (lowest index on ties)
void cu_argmax(sl_backend *be, sl_tensor *ids, const sl_tensor *x);
void cu_fill_random(sl_backend *be, sl_tensor *t, uint64_t seed, float scale, float offset,
                    const sl_fill_index *ix);

#endif

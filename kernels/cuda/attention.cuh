// kernels/cuda/attention.cuh: paged KV cache store and causal paged attention.
#ifndef SL_CUDA_ATTENTION_CUH
#define SL_CUDA_ATTENTION_CUH

#include "cuda_common.cuh"

void cu_kv_store(sl_backend *be, sl_tensor *kcache, sl_tensor *vcache, const sl_tensor *k,
                 const sl_tensor *v, const sl_batch_meta *m);
void cu_attn_prep(sl_backend *be, sl_tensor *q, sl_tensor *k, const sl_tensor *v,
                  const sl_tensor *q_norm, const sl_tensor *k_norm, float eps, int one_plus,
                  int head_dim, int rot_dim, float theta, sl_tensor *kcache, sl_tensor *vcache,
                  const sl_batch_meta *m);
// The cache must be BF16; head_dim 64, 128 or 256; any page size.
void cu_attention(sl_backend *be, sl_tensor *out, const sl_tensor *q, const sl_tensor *kcache,
                  const sl_tensor *vcache, int n_q_heads, int n_kv_heads, int head_dim, float scale,
                  const sl_batch_meta *m, sl_fp8_act *oq);

#endif

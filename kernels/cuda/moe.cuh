// kernels/cuda/moe.cuh: mixture-of-experts routing and expert FFNs.
#ifndef SL_CUDA_MOE_CUH
#define SL_CUDA_MOE_CUH

#include "cuda_common.cuh"

// Softmax over E <= 1024 logits per token, top-k (ties: lowest index).
void cu_moe_route(sl_backend *be, sl_tensor *ids, sl_tensor *weights, const sl_tensor *logits,
                  int k, int norm);
// gate_up and down must be BF16; H and I multiples of 8.
void cu_moe_experts(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *ids,
                    const sl_tensor *weights, const sl_tensor *gate_up, const sl_tensor *down);

#endif

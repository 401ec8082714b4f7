// kernels/cuda/sample.cuh: the sampling op (sl_be_sample) on the device.
#ifndef SL_CUDA_SAMPLE_CUH
#define SL_CUDA_SAMPLE_CUH

#include "cuda_common.cuh"

void cu_sample(sl_backend *be, sl_tensor *ids, sl_tensor *lp, const sl_tensor *logits,
               const sl_sample_args *a);
// Releases the op's staging buffers (backend teardown; the stream is idle).
void cu_sample_free(cu_backend *b);

#endif

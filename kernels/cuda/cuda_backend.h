/* kernels/cuda/cuda_backend.h: what the CUDA backend offers beyond
 * kernels/backend.h, for code that must meet the device directly (CUDA graph
 * capture, NCCL, timing with CUDA events). Include only where CUDA is built.
 *
 *   cudaStream_t s = (cudaStream_t)sl_cuda_stream(be);
 *   cudaEventRecord(start, s); sl_be_matmul(be, ...); cudaEventRecord(stop, s);
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

#ifdef __cplusplus
}
#endif

#endif

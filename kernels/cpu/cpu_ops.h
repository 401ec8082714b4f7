/* kernels/cpu/cpu_ops.h: CPU ops that live outside cpu_backend.c (for its
 * vtable only). Same contracts as the sl_be_* calls in kernels/backend.h. */
#ifndef SL_CPU_OPS_H
#define SL_CPU_OPS_H

#include "../backend_impl.h"

/* sl_be_sample on host memory (kernels/cpu/sample.c). */
void sl_cpu_sample(sl_backend *be, sl_tensor *ids, sl_tensor *lp, const sl_tensor *logits,
                   const sl_sample_args *a);

#endif

/* kernels/cpu/cpu_ops.h: CPU ops that live outside cpu_backend.c (for its
 * vtable only). Same contracts as the sl_be_* calls in kernels/backend.h. */
#ifndef SL_CPU_OPS_H
#define SL_CPU_OPS_H

#include "../backend_impl.h"

/* sl_be_sample on host memory (kernels/cpu/sample.c). */
void sl_cpu_sample(sl_backend *be, sl_tensor *ids, sl_tensor *lp, const sl_tensor *logits,
                   const sl_sample_args *a);

/* kernels/cpu/fp8.c: sl_be_matmul_fp8, sl_be_moe_experts_fp8, and the
 * per-group activation quantization they share (x[K] -> e4m3 values as
 * floats in xq[K], scales sx[ceil(K/128)]). */
void sl_cpu_fp8_quant_row(const float *x, int64_t K, float *xq, float *sx);
void sl_cpu_matmul_fp8(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *w,
                       const sl_tensor *w_scale, const sl_fp8_act *xa);
/* y's FP8 codes into q (sl_fp8_act) where they fit, from y's stored values */
void sl_cpu_fp8_act_make(sl_backend *be, sl_fp8_act *q, const sl_tensor *y);
void sl_cpu_moe_experts_fp8(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *ids,
                            const sl_tensor *weights, const sl_tensor *gate_up,
                            const sl_tensor *gate_up_scale, const sl_tensor *down,
                            const sl_tensor *down_scale);

#endif

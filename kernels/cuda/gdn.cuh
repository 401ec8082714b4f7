// kernels/cuda/gdn.cuh: Gated DeltaNet ops: causal conv1d and the gated delta
// rule recurrence, both continuing from and writing back the state pools, with
// track snapshots.
#ifndef SL_CUDA_GDN_CUH
#define SL_CUDA_GDN_CUH

#include "cuda_common.cuh"

// Conv kernel width K <= 8; state pool F32.
void cu_conv1d(sl_backend *be, sl_tensor *y, const sl_tensor *x, const sl_tensor *w,
               sl_tensor *state, const sl_batch_meta *m);
// k_dim 64 or 128; v_dim a multiple of 16, k_dim/2 <= v_dim <= 256.
void cu_gdn(sl_backend *be, sl_tensor *out, const sl_tensor *qkv, const sl_tensor *a,
            const sl_tensor *b, const sl_tensor *A_log, const sl_tensor *dt_bias, sl_tensor *ssm,
            int n_k_heads, int n_v_heads, int k_dim, int v_dim, const sl_batch_meta *m);

// sl_be_gdn_decode (kernels/backend.h): conv1d, the recurrence and
// rmsnorm_gated in one kernel for decode batches (SL_CUDA_GDN_FUSE=1, NOTES.md
// v44); 0 where it does not apply.
int cu_gdn_decode(sl_backend *be, sl_tensor *normed, sl_tensor *core, sl_tensor *conv, const sl_tensor *mixed,
                  const sl_tensor *z, const sl_tensor *a, const sl_tensor *b, const sl_gdn_layer *l,
                  sl_tensor *conv_state, sl_tensor *ssm, const sl_batch_meta *m, sl_fp8_act *q);

#endif

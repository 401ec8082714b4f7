/* kernels/backend_impl.h: for backend implementers only.
 * A backend fills this table; slots may be NULL when supports_op says no. */
#ifndef SL_BACKEND_IMPL_H
#define SL_BACKEND_IMPL_H

#include "backend.h"

typedef struct sl_backend_i {
    const char *name;
    sl_dtype act_dtype;
    sl_dtype weight_dtype;
    int fp8_act_rows; /* sl_be_fp8_act_rows */
    void (*free)(sl_backend *be);
    sl_status (*alloc)(sl_backend *be, sl_tensor *t, size_t bytes, sl_err *e);
    void (*release)(sl_backend *be, sl_tensor *t);
    sl_status (*upload)(sl_backend *be, sl_tensor *t, const void *src, sl_dtype src_dt, sl_err *e);
    sl_status (*download)(sl_backend *be, const sl_tensor *t, float *dst, sl_err *e);
    sl_status (*sync)(sl_backend *be, sl_err *e);
    sl_status (*prepare)(sl_backend *be, sl_batch_meta *m, sl_err *e);
    sl_status (*mem_info)(sl_backend *be, size_t *free_bytes, size_t *total_bytes, sl_err *e);
    /* NULL: a plain memcpy (host memory) */
    sl_status (*copy)(sl_backend *be, sl_tensor *dst, const sl_tensor *src, size_t bytes, sl_err *e);
    /* sharing with another process (backend.h); NULL where unsupported */
    int (*device_id)(sl_backend *be, char *out, size_t n);
    sl_status (*share_export)(sl_backend *be, const sl_tensor *t, sl_be_share *h, sl_err *e);
    sl_status (*share_open)(sl_backend *be, const sl_be_share *h, sl_tensor *t, sl_err *e);
    void (*share_close)(sl_backend *be, sl_tensor *t);
    /* pipelining; NULL on a backend whose memory is host memory and whose
     * ops finish before they return (backend.c then supplies plain versions) */
    void *(*host_alloc)(sl_backend *be, size_t bytes);
    void (*host_free)(sl_backend *be, void *p);
    sl_status (*copy_out)(sl_backend *be, const sl_tensor *t, void *dst, sl_err *e);
    sl_status (*event_new)(sl_backend *be, sl_be_event **ev, sl_err *e);
    void (*event_free)(sl_backend *be, sl_be_event *ev);
    sl_status (*event_record)(sl_backend *be, sl_be_event *ev, sl_err *e);
    sl_status (*event_wait)(sl_backend *be, sl_be_event *ev, sl_err *e);
    float (*event_ms)(sl_backend *be, sl_be_event *from, sl_be_event *to);
    /* graphs; NULL where the backend cannot capture */
    sl_status (*prepare_fixed)(sl_backend *be, sl_batch_meta *m, int max_tokens, int max_ctx,
                               sl_err *e);
    sl_status (*capture_begin)(sl_backend *be, sl_err *e);
    sl_status (*capture_end)(sl_backend *be, sl_be_graph **g, sl_err *e);
    sl_status (*graph_launch)(sl_backend *be, sl_be_graph *g, sl_err *e);
    void (*graph_free)(sl_backend *be, sl_be_graph *g);

    void (*embed)(sl_backend *, sl_tensor *, const sl_tensor *, int64_t v0, const sl_batch_meta *);
    void (*matmul)(sl_backend *, sl_tensor *, const sl_tensor *, const sl_tensor *);
    void (*rmsnorm)(sl_backend *, sl_tensor *, const sl_tensor *, const sl_tensor *, float, int);
    void (*add)(sl_backend *, sl_tensor *, const sl_tensor *, const sl_tensor *);
    void (*add_rmsnorm)(sl_backend *, sl_tensor *, sl_tensor *, const sl_tensor *,
                        const sl_tensor *, float, int, sl_fp8_act *);
    void (*rope)(sl_backend *, sl_tensor *, int, int, int, float, const sl_batch_meta *);
    void (*silu_mul)(sl_backend *, sl_tensor *, const sl_tensor *, sl_fp8_act *);
    void (*sigmoid_mul)(sl_backend *, sl_tensor *, const sl_tensor *, sl_fp8_act *);
    void (*kv_store)(sl_backend *, sl_tensor *, sl_tensor *, const sl_tensor *, const sl_tensor *,
                     const sl_batch_meta *);
    void (*attention)(sl_backend *, sl_tensor *, const sl_tensor *, const sl_tensor *,
                      const sl_tensor *, int, int, int, float, const sl_batch_meta *, sl_fp8_act *);
    void (*conv1d)(sl_backend *, sl_tensor *, const sl_tensor *, const sl_tensor *, sl_tensor *,
                   const sl_batch_meta *);
    void (*gdn)(sl_backend *, sl_tensor *, const sl_tensor *, const sl_tensor *, const sl_tensor *,
                const sl_tensor *, const sl_tensor *, sl_tensor *, int, int, int, int,
                const sl_batch_meta *);
    void (*rmsnorm_gated)(sl_backend *, sl_tensor *, const sl_tensor *, const sl_tensor *,
                          const sl_tensor *, float, sl_fp8_act *);
    void (*moe_route)(sl_backend *, sl_tensor *, sl_tensor *, const sl_tensor *, int, int, int);
    void (*moe_experts)(sl_backend *, sl_tensor *, const sl_tensor *, const sl_tensor *,
                        const sl_tensor *, const sl_tensor *, const sl_tensor *);
    void (*gather_rows)(sl_backend *, sl_tensor *, const sl_tensor *, const sl_batch_meta *);
    void (*copy_slots)(sl_backend *, sl_tensor *, const int32_t *, const int32_t *, int);
    void (*fill_random)(sl_backend *, sl_tensor *, uint64_t, float, float, const sl_fill_index *);
    void (*argmax)(sl_backend *, sl_tensor *, const sl_tensor *);
    void (*attn_prep)(sl_backend *, sl_tensor *, sl_tensor *, const sl_tensor *, const sl_tensor *,
                      const sl_tensor *, float, int, int, int, float, sl_tensor *, sl_tensor *,
                      const sl_batch_meta *);
    void (*sample)(sl_backend *, sl_tensor *, sl_tensor *, const sl_tensor *, const sl_sample_args *);
    void (*matmul_fp8)(sl_backend *, sl_tensor *, const sl_tensor *, const sl_tensor *,
                       const sl_tensor *, const sl_fp8_act *);
    void (*moe_experts_fp8)(sl_backend *, sl_tensor *, const sl_tensor *, const sl_tensor *,
                            const sl_tensor *, const sl_tensor *, const sl_tensor *,
                            const sl_tensor *, const sl_tensor *);
    /* optional: sl_be_moe_router in one pass; returns 0 where it does not
     * apply (then matmul and moe_route run) */
    int (*moe_router)(sl_backend *, sl_tensor *, sl_tensor *, sl_tensor *, const sl_tensor *,
                      const sl_tensor *, int, int, int);
    /* optional: sl_be_add_rmsnorm_router in one pass; returns 0 where it does
     * not apply (then add_rmsnorm and moe_router run) */
    int (*add_rmsnorm_router)(sl_backend *, sl_tensor *, sl_tensor *, const sl_tensor *, const sl_tensor *, float,
                              int, sl_tensor *, sl_tensor *, sl_tensor *, const sl_tensor *, int, int, int);
    /* optional: sl_be_gdn_decode; returns 0 where it does not apply */
    int (*gdn_decode)(sl_backend *, sl_tensor *, sl_tensor *, sl_tensor *, const sl_tensor *, const sl_tensor *,
                      const sl_tensor *, const sl_tensor *, const sl_gdn_layer *, sl_tensor *, sl_tensor *,
                      const sl_batch_meta *, sl_fp8_act *);
} sl_backend_i;

/* Every backend struct begins with this header. */
struct sl_backend {
    const sl_backend_i *i;
    size_t held; /* bytes in live sl_be_alloc tensors (sl_be_held_bytes) */
};

/* Whether a producer op's q (sl_fp8_act, NULL: none) has room for the codes
 * and scales of an [M, K] activation within fp8_act_rows. */
static inline int sl_fp8_act_fits(const sl_backend *be, const sl_fp8_act *q, int64_t M, int64_t K)
{
    int64_t G = (K + SL_FP8_BLOCK - 1) / SL_FP8_BLOCK;
    return q && M > 0 && M <= be->i->fp8_act_rows && q->codes.dtype == SL_DTYPE_F8E4M3 &&
           q->scales.dtype == SL_DTYPE_F32 && sl_tensor_numel(&q->codes) >= M * G * SL_FP8_BLOCK &&
           sl_tensor_numel(&q->scales) >= M * G;
}

#endif

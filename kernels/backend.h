/* kernels/backend.h: the compute backend interface.
 *
 * One interface, two implementations: the CPU reference (kernels/cpu, plain C,
 * fp32 everywhere: the oracle, and what CI runs) and the CUDA backend
 * (kernels/cuda, Hopper, bf16 storage with fp32 accumulate). Model code in
 * worker/ is written once against these calls.
 *
 * Tensors are plain descriptors (pointer, dtype, shape, strides); memory is
 * owned by whoever allocated it with sl_be_alloc and is released with
 * sl_be_release. Every op views its operands as 2-D [rows, cols]: the
 * innermost dimension is contiguous, all outer dimensions merge into rows with
 * one row stride. Column views (sl_tensor_cols) let an op read one part of a
 * fused projection's output without a copy.
 *
 * Usage:
 *   sl_backend *be = sl_backend_cpu_new();
 *   sl_tensor x, w, y;
 *   sl_be_alloc(be, &x, sl_be_act_dtype(be), 2, (int64_t[]){T, K}, &e);
 *   ...
 *   sl_be_matmul(be, &y, &x, &w);       // y = x · wᵀ
 *   sl_be_download(be, &y, host_f32, &e);
 *   sl_backend_free(be);
 *
 * Threads: a backend handle is used by one thread at a time. Ops are
 * asynchronous on the CUDA backend (ordered on the backend's stream); upload,
 * download and sync are the only calls that wait.
 *
 * Errors: ops on valid, supported operands cannot fail; shape mismatches are
 * bugs and trip SL_ASSERT. Allocation and transfers return sl_status.
 */
#ifndef SL_BACKEND_H
#define SL_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "sl_err.h"

typedef enum sl_dtype {
    SL_DTYPE_F32 = 0,
    SL_DTYPE_BF16,
    SL_DTYPE_F16,
    SL_DTYPE_I32,
    SL_DTYPE_F8E4M3, /* OCP float8 e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa; no
                        infinities, 0x7f/0xff NaN, largest finite ±448. Weight storage of
                        FP8 block-quantized projections (see sl_be_matmul_fp8). */
    SL_DTYPE_COUNT
} sl_dtype;

size_t sl_dtype_size(sl_dtype t);
const char *sl_dtype_name(sl_dtype t);

/* bf16 / f16 <-> f32 conversions (host code). */
float sl_bf16_to_f32(uint16_t h);
uint16_t sl_f32_to_bf16(float f); /* round to nearest even */
float sl_f16_to_f32(uint16_t h);
uint16_t sl_f32_to_f16(float f);
/* float8 e4m3fn <-> f32 (host code; the device twins are in cuda_common.cuh).
 * f32 -> e4m3 rounds to nearest even and saturates: every finite |x| >= 448
 * and ±inf give ±448 (there is no e4m3 infinity); NaN gives 0x7f (sign kept).
 * |x| below half the smallest subnormal (2^-10) gives ±0. e4m3 -> f32 is exact
 * (every e4m3 value is an f32); 0x7f/0xff read as NaN. */
uint8_t sl_f32_to_e4m3(float f);
float sl_e4m3_to_f32(uint8_t v);
#define SL_FP8_MAX 448.0f
#define SL_FP8_BLOCK 128 /* the only weight_block_size sluice serves: [128, 128] */
/* Block-wise quantization of a weight w[rows, cols] (f32) as the -FP8
 * checkpoints store it: for each 128×128 block (edge blocks partial)
 * scale_inv[rb, cb] = max|block| / 448 and q = e4m3(w / scale_inv); an all-zero
 * block gets scale_inv 0 and zero codes. q [rows, cols], scale_inv
 * [ceil(rows/128), ceil(cols/128)]. */
void sl_fp8_quantize_blocks(const float *w, int64_t rows, int64_t cols, uint8_t *q, float *scale_inv);
/* Reads element i (of a dense buffer of dtype dt) as f32. */
float sl_load_f32(const void *p, sl_dtype dt, int64_t i);


#define SL_MAX_DIMS 4

typedef struct sl_tensor {
    void *data;
    sl_dtype dtype;
    int ndim;
    int64_t ne[SL_MAX_DIMS]; /* shape, outermost first (torch order) */
    int64_t st[SL_MAX_DIMS]; /* strides in elements; st[ndim-1] == 1 */
    int on_device;           /* 1 if data is device memory (CUDA backend) */
} sl_tensor;

/* Contiguous descriptor over existing memory. */
sl_tensor sl_tensor_make(void *data, sl_dtype dt, int ndim, const int64_t *ne);
int64_t sl_tensor_numel(const sl_tensor *t);
int64_t sl_tensor_rows(const sl_tensor *t);   /* product of all but the last dim */
int64_t sl_tensor_cols(const sl_tensor *t);   /* last dim */
int64_t sl_tensor_ld(const sl_tensor *t);     /* row stride of the 2-D view */
/* 2-D view of columns [c0, c0+n) of t (rows unchanged). */
sl_tensor sl_tensor_colview(const sl_tensor *t, int64_t c0, int64_t n);
/* View of rows [r0, r0+n) of the 2-D view of t. */
sl_tensor sl_tensor_rowview(const sl_tensor *t, int64_t r0, int64_t n);
/* Same memory, new contiguous shape (t must be contiguous). */
sl_tensor sl_tensor_reshape(const sl_tensor *t, int ndim, const int64_t *ne);

/* Ops, for supports_op and the op-by-op harness (tests/gpu/ops/harness.c). */
typedef enum sl_op {
    SL_OP_EMBED = 0,
    SL_OP_MATMUL,
    SL_OP_RMSNORM,
    SL_OP_ADD,
    SL_OP_ADD_RMSNORM,
    SL_OP_ROPE,
    SL_OP_SILU_MUL,
    SL_OP_SIGMOID_MUL,
    SL_OP_KV_STORE,
    SL_OP_ATTENTION,
    SL_OP_CONV1D,
    SL_OP_GDN,
    SL_OP_RMSNORM_GATED,
    SL_OP_MOE_ROUTE,
    SL_OP_MOE_EXPERTS,
    SL_OP_GATHER_ROWS,
    SL_OP_COPY_SLOTS,
    SL_OP_FILL_RANDOM,
    SL_OP_ARGMAX,
    SL_OP_ATTN_PREP,
    SL_OP_SAMPLE,
    SL_OP_MATMUL_FP8,
    SL_OP_MOE_EXPERTS_FP8,
    SL_OP_MOE_ROUTER,
    SL_OP_COUNT
} sl_op;

const char *sl_op_name(sl_op op);

/* Per-forward batch description. The host arrays are always set (by the
 * worker's runner); sl_be_prepare() lets a device backend mirror them once
 * per forward. A batch holds n_seqs sequences, each contributing a contiguous
 * run of tokens [q_start[s], q_start[s+1]) that continue its cached prefix.
 *
 *   kv_len[s]     = cached prefix + new tokens of s (attention sees 0..kv_len)
 *   page_table    = [n_seqs, max_pages] KV page ids of each sequence
 *   kv_slot[t]    = page * page_size + offset where token t's K/V go
 *   state_slot[s] = mamba working slot (conv + SSM state) of s, or -1
 *   state_fresh[s]= 1: s starts from a zero recurrent state (no prefix)
 *   track_slot[s] = slot that receives a state snapshot, or -1
 *   track_len[s]  = the snapshot is the state after this many of s's new
 *                   tokens (1..q_len); the conv part is the K-1 inputs
 *                   before that point
 *   logit_rows    = token rows (0..n_tokens) whose logits the forward returns
 */
typedef struct sl_batch_meta {
    int n_tokens;
    int n_seqs;
    int page_size;
    int max_pages;
    const int32_t *ids;         /* [n_tokens] */
    const int32_t *pos;         /* [n_tokens] absolute positions */
    const int32_t *q_start;     /* [n_seqs + 1] */
    const int32_t *kv_len;      /* [n_seqs] */
    const int32_t *page_table;  /* [n_seqs * max_pages] */
    const int32_t *kv_slot;     /* [n_tokens] */
    const int32_t *state_slot;  /* [n_seqs] */
    const int32_t *state_fresh; /* [n_seqs] */
    const int32_t *track_slot;  /* [n_seqs] */
    const int32_t *track_len;   /* [n_seqs] */
    int n_logits;
    const int32_t *logit_rows;  /* [n_logits] token rows whose logits are wanted */
    /* Optional (NULL: every id is in ids): token t's id is feed_ids[feed[t]]
     * when feed[t] >= 0, a token an earlier forward sampled that is still only
     * on the backend (overlap: the next step runs before the host saw it). */
    const int32_t *feed;        /* [n_tokens] */
    const int32_t *feed_ids;    /* backend memory (I32) */
    void *dev;                  /* backend-private device mirror */
} sl_batch_meta;

typedef struct sl_backend sl_backend; /* opaque */

sl_backend *sl_backend_cpu_new(void);
/* NULL (with e set) when CUDA is not built in or no device is usable. */
sl_backend *sl_backend_cuda_new(int device, sl_err *e);
/* "cpu" or "cuda[:N]" */
sl_backend *sl_backend_new(const char *name, sl_err *e);
void sl_backend_free(sl_backend *be);

const char *sl_be_name(const sl_backend *be);
int sl_be_supports_op(const sl_backend *be, sl_op op);
/* dtype of activations (CPU: F32, CUDA: BF16) and of weights it stores */
sl_dtype sl_be_act_dtype(const sl_backend *be);
sl_dtype sl_be_weight_dtype(const sl_backend *be);

/* Memory. alloc gives a contiguous tensor (contents undefined). */
sl_status sl_be_alloc(sl_backend *be, sl_tensor *t, sl_dtype dt, int ndim, const int64_t *ne,
                      sl_err *e);
void sl_be_release(sl_backend *be, sl_tensor *t);
/* Copies n elements of host memory of type src_dt into t (converting). t must
 * be contiguous and hold numel(t) elements. Waits. */
sl_status sl_be_upload(sl_backend *be, sl_tensor *t, const void *src, sl_dtype src_dt, sl_err *e);
/* Copies t (any layout of the 2-D view) to host as dense f32. Waits. */
sl_status sl_be_download(sl_backend *be, const sl_tensor *t, float *dst, sl_err *e);
sl_status sl_be_sync(sl_backend *be, sl_err *e);
/* Free and total bytes of the memory tensors live in. SL_ERR_UNSUPPORTED
 * where the backend has no memory of its own (CPU: callers use host
 * heuristics). */
sl_status sl_be_mem_info(sl_backend *be, size_t *free_bytes, size_t *total_bytes, sl_err *e);
/* Bytes this backend holds in tensors from sl_be_alloc not yet released
 * (weights, caches; not its scratch): what this process uses of a device
 * other processes may share. */
size_t sl_be_held_bytes(const sl_backend *be);
/* Copies src into dst (same dtype and element count, both contiguous: this
 * backend's tensors, views of them, or tensors opened with
 * sl_be_share_open), queued on the backend like an op. */
sl_status sl_be_copy(sl_backend *be, sl_tensor *dst, const sl_tensor *src, sl_err *e);

/* ---- tensors shared with another process on the same device -------------
 *
 * A prefill worker and a decode worker on one GPU move a request's cache
 * without the host: one exports its cache tensors, the other opens them and
 * copies with sl_be_copy. Only where both report the same sl_be_device_id
 * (CUDA: the GPU's UUID; cudaIpc handles); elsewhere SL_ERR_UNSUPPORTED. */
#define SL_BE_SHARE_BYTES 64
typedef struct sl_be_share {
    uint8_t b[SL_BE_SHARE_BYTES];
} sl_be_share;
/* The device's identity into out (n >= 48), or -1 where tensors cannot be shared. */
int sl_be_device_id(sl_backend *be, char *out, size_t n);
/* A handle to t, a whole tensor from sl_be_alloc (not a view). */
sl_status sl_be_share_export(sl_backend *be, const sl_tensor *t, sl_be_share *h, sl_err *e);
/* Maps another process's exported tensor: t's dtype and shape are the
 * caller's (the exporter's); its data is set. Undo with sl_be_share_close. */
sl_status sl_be_share_open(sl_backend *be, const sl_be_share *h, sl_tensor *t, sl_err *e);
void sl_be_share_close(sl_backend *be, sl_tensor *t);

/* Mirrors a batch's host arrays for device ops (no-op on CPU). */
sl_status sl_be_prepare(sl_backend *be, sl_batch_meta *m, sl_err *e);

/* ---- pipelining: results out without waiting, events, graphs --------------
 *
 * The engine launches step N+1 before it reads step N's sampled ids: results
 * go out with sl_be_copy_out into host memory from sl_be_host_alloc (pinned on
 * CUDA) and are read after sl_be_event_wait on an event recorded behind them.
 * On the CPU backend every op has finished when it returns: copies are
 * memcpys and events only carry a timestamp.
 *
 * Decode graphs (backends with sl_be_has_graphs): the ops issued between
 * sl_be_capture_begin and sl_be_capture_end are recorded instead of run, and
 * sl_be_graph_launch replays them in one call. A replay reads the batch
 * mirror at the addresses it was captured with, so graph batches are mirrored
 * with sl_be_prepare_fixed: one device region laid out for up to max_tokens
 * tokens and sequences of up to max_ctx cache positions, the same for every
 * batch within those bounds (keep the bounds constant: new bounds move the
 * region and stale every graph), and attention sizes its key splits for
 * max_ctx instead of the batch's longest context. Two batches of equal shape
 * (n_tokens, n_seqs, n_logits, query lengths) then launch identically. */
void *sl_be_host_alloc(sl_backend *be, size_t bytes); /* NULL when out of memory */
void sl_be_host_free(sl_backend *be, void *p);
/* Starts copying the elements of t (contiguous, any dtype, raw bytes) to dst. */
sl_status sl_be_copy_out(sl_backend *be, const sl_tensor *t, void *dst, sl_err *e);

typedef struct sl_be_event sl_be_event;
sl_status sl_be_event_new(sl_backend *be, sl_be_event **ev, sl_err *e);
void sl_be_event_free(sl_backend *be, sl_be_event *ev);
/* Marks the point the backend's queue has reached. */
sl_status sl_be_event_record(sl_backend *be, sl_be_event *ev, sl_err *e);
/* Waits until everything queued before the last record has run. */
sl_status sl_be_event_wait(sl_backend *be, sl_be_event *ev, sl_err *e);
/* Milliseconds between two completed events (device clock on CUDA). */
float sl_be_event_ms(sl_backend *be, sl_be_event *from, sl_be_event *to);

int sl_be_has_graphs(const sl_backend *be);
sl_status sl_be_prepare_fixed(sl_backend *be, sl_batch_meta *m, int max_tokens, int max_ctx,
                              sl_err *e);
typedef struct sl_be_graph sl_be_graph;
sl_status sl_be_capture_begin(sl_backend *be, sl_err *e);
/* Ends the capture; *g is the replayable graph (NULL on error). */
sl_status sl_be_capture_end(sl_backend *be, sl_be_graph **g, sl_err *e);
sl_status sl_be_graph_launch(sl_backend *be, sl_be_graph *g, sl_err *e);
void sl_be_graph_free(sl_backend *be, sl_be_graph *g);

/* ---- ops ----------------------------------------------------------------- */

/* out[T,H] = table[ids[t], :] */
void sl_be_embed(sl_backend *be, sl_tensor *out, const sl_tensor *table, const sl_batch_meta *m);
/* Vocab-parallel embedding: table holds vocabulary rows [v0, v0 + rows);
 * out[t, :] = table[ids[t] - v0, :] for ids in that range, zeros elsewhere
 * (the sum over TP ranks is the full lookup). v0 = 0 with the whole table is
 * sl_be_embed. */
void sl_be_embed_shard(sl_backend *be, sl_tensor *out, const sl_tensor *table, int64_t v0,
                       const sl_batch_meta *m);
/* out[M,N] = x[M,K] · w[N,K]ᵀ (w in any float dtype) */
void sl_be_matmul(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *w);
/* The FP8 codes of an activation x [M, K] as sl_be_matmul_fp8 quantizes it
 * (per row and 128-group: s = max|x_g|/448, codes e4m3(x/s)), made by the op
 * that writes x, so that the projection reading x next need not quantize it
 * in a launch of its own. codes (F8E4M3) and scales (F32) are the caller's flat
 * buffers: row m's codes at m·G·128 (G = ceil(K/128); past K zero), its
 * scales at m·G. A producer op given one sets rows = M and cols = K where it
 * made them and rows = 0 where not (the CPU backend never does; CUDA only for
 * M <= sl_be_fp8_act_rows); sl_be_matmul_fp8 uses them only when they are
 * x's (rows and cols equal x's) and else quantizes x itself, so passing one
 * never changes a result. The caller keeps them x's: nothing may write x
 * between the producer and the matmul. */
typedef struct sl_fp8_act {
    sl_tensor codes, scales;
    int64_t rows, cols;
} sl_fp8_act;
/* The most rows whose FP8 codes this backend's ops make (0: none): a
 * caller's sl_fp8_act needs room for this many rows of its widest K. */
int sl_be_fp8_act_rows(const sl_backend *be);
/* FP8 block-quantized matmul (DeepGEMM / w8a8_block_fp8_matmul arithmetic):
 * out[M,N] = x[M,K] · dequant(w)ᵀ with w F8E4M3 [N,K] (2-D view) and w_scale
 * F32 [SR, ceil(K/128)], SR = N (one scale row per output row: what the model
 * loader keeps, so fused and permuted projections need no block alignment)
 * or SR = ceil(N/128) (the checkpoint's [128,128] blocks: row n uses n/128).
 * Each row of x is quantized per 128-wide group g of K: s_x = max|x_g|/448,
 * x_q = e4m3(x/s_x) (an all-zero group: s_x = 0, x_q = 0); then, in fp32,
 *   out[m,n] = Σ_g (Σ_{k∈g} x_q[m,k]·w[n,k]) · (s_x[m,g]·w_scale[n,g]).
 * Edge groups (K, N not multiples of 128) are partial. xq (NULL: none): x's
 * codes made by the op that wrote x (sl_fp8_act). */
void sl_be_matmul_fp8(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *w,
                      const sl_tensor *w_scale, const sl_fp8_act *xq);
/* RMSNorm over groups of D = numel(w) columns (D = cols: the whole row; D =
 * head_dim: per head, for q/k norm): y = x/sqrt(mean(x²)+eps) · (w or 1+w).
 * out may alias x. */
void sl_be_rmsnorm(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *w,
                   float eps, int one_plus);
/* out = a + b (out may alias a) */
void sl_be_add(sl_backend *be, sl_tensor *out, const sl_tensor *a, const sl_tensor *b);
/* resid += x; out = rmsnorm(resid) (w over whole rows). q (NULL: none): out's
 * FP8 codes, where the backend makes them (sl_fp8_act). */
void sl_be_add_rmsnorm(sl_backend *be, sl_tensor *out, sl_tensor *resid, const sl_tensor *x,
                       const sl_tensor *w, float eps, int one_plus, sl_fp8_act *q);
/* In place, x viewed as [T, n_heads, head_dim] (2-D view [T*n_heads, head_dim]
 * is NOT assumed: x is [T, n_heads*head_dim] with row stride). Rotates the
 * first rot_dim dims of each head, half-split pairs (i, i+rot_dim/2), angle
 * pos[t]·theta^(−2i/rot_dim) computed in fp32. */
void sl_be_rope(sl_backend *be, sl_tensor *x, int n_heads, int head_dim, int rot_dim, float theta,
                const sl_batch_meta *m);
/* out[M,I] = silu(gu[:, :I]) ⊙ gu[:, I:]; q: out's FP8 codes (sl_fp8_act) */
void sl_be_silu_mul(sl_backend *be, sl_tensor *out, const sl_tensor *gu, sl_fp8_act *q);
/* x[M,N] ⊙= σ(g), g [M,N] or [M,1] (one gate per row, broadcast); q: x's FP8
 * codes after (sl_fp8_act) */
void sl_be_sigmoid_mul(sl_backend *be, sl_tensor *x, const sl_tensor *g, sl_fp8_act *q);
/* The attention prologue in one pass (what rmsnorm of q and k per head,
 * rope of both and kv_store do in turn): q [T, Hq*D] and k [T, Hkv*D] are
 * normalised per head with q_norm / k_norm ([D]) and rotated in place, then
 * k and v [T, Hkv*D] go to the cache rows kv_slot[t]. */
void sl_be_attn_prep(sl_backend *be, sl_tensor *q, sl_tensor *k, const sl_tensor *v,
                     const sl_tensor *q_norm, const sl_tensor *k_norm, float eps, int one_plus,
                     int head_dim, int rot_dim, float theta, sl_tensor *kcache, sl_tensor *vcache,
                     const sl_batch_meta *m);
/* Scatter k,v [T, Hkv*D] into cache [n_pages*page_size, Hkv*D] rows kv_slot[t]. */
void sl_be_kv_store(sl_backend *be, sl_tensor *kcache, sl_tensor *vcache, const sl_tensor *k,
                    const sl_tensor *v, const sl_batch_meta *m);
/* Causal attention over the paged cache: out[T, Hq*D] for q[T, Hq*D].
 * Token t of sequence s at position p attends cache positions 0..p of s
 * (through the page table); query head h reads KV head h / (Hq/Hkv). oq:
 * out's FP8 codes, where the backend makes them (sl_fp8_act). */
void sl_be_attention(sl_backend *be, sl_tensor *out, const sl_tensor *q, const sl_tensor *kcache,
                     const sl_tensor *vcache, int n_q_heads, int n_kv_heads, int head_dim,
                     float scale, const sl_batch_meta *m, sl_fp8_act *oq);
/* Causal depthwise conv (kernel K) + SiLU, per sequence, continuing from the
 * conv state pool state[S, C, K-1] at state_slot (zeros if state_fresh), and
 * leaving the last K-1 inputs there. Writes track snapshots. x,y [T, C]. */
void sl_be_conv1d(sl_backend *be, sl_tensor *y, const sl_tensor *x, const sl_tensor *w,
                  sl_tensor *state, const sl_batch_meta *m);
/* Gated delta rule. qkv[T, 2*Hk*Dk + Hv*Dv] is the conv output (q | k | v,
 * head-major); a, b [T, Hv]; A_log, dt_bias [Hv]. Computes l2norm(q)·Dk^-½,
 * l2norm(k), g = −exp(A_log)·softplus(a+dt_bias), β = σ(b), runs the
 * recurrence from ssm[S, Hv, Dk, Dv] (fp32) at state_slot and writes the
 * final state back, plus snapshots. out [T, Hv*Dv]. */
void sl_be_gdn(sl_backend *be, sl_tensor *out, const sl_tensor *qkv, const sl_tensor *a,
               const sl_tensor *b, const sl_tensor *A_log, const sl_tensor *dt_bias,
               sl_tensor *ssm, int n_k_heads, int n_v_heads, int k_dim, int v_dim,
               const sl_batch_meta *m);
/* A Gated DeltaNet layer's weights and shape, for sl_be_gdn_decode */
typedef struct sl_gdn_layer {
    const sl_tensor *conv_w, *A_log, *dt_bias, *gnorm;
    int n_k_heads, n_v_heads, k_dim, v_dim;
    float eps;
} sl_gdn_layer;
/* A decode step's conv1d, gdn and rmsnorm_gated in one op, where the backend
 * fuses them (every sequence one new token): sl_be_conv1d(conv, mixed,
 * conv_w, conv_state), sl_be_gdn(core, conv, a, b, A_log, dt_bias, ssm),
 * sl_be_rmsnorm_gated(normed, core, z, gnorm, eps, q), every output written
 * as those ops write it. Returns 1 where it ran, 0 where the caller must run
 * the three (a backend without it, a batch with longer sequences). */
int sl_be_gdn_decode(sl_backend *be, sl_tensor *normed, sl_tensor *core, sl_tensor *conv, const sl_tensor *mixed,
                     const sl_tensor *z, const sl_tensor *a, const sl_tensor *b, const sl_gdn_layer *l,
                     sl_tensor *conv_state, sl_tensor *ssm, const sl_batch_meta *m, sl_fp8_act *q);
/* Per group of D = numel(w) columns (one value head): y = x/sqrt(mean(x²)+eps)
 * · w · silu(z); x, z, out [R, n·D]; q: out's FP8 codes (sl_fp8_act). */
void sl_be_rmsnorm_gated(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *z,
                         const sl_tensor *w, float eps, sl_fp8_act *q);
/* softmax over logits[T,E] (fp32), top-k largest first; ids i32[T,k],
 * weights f32[T,k], renormalised to sum 1 if norm. shared (0 or 1): logits
 * has one more column, a shared expert's gate logit, left out of the softmax
 * and the top-k; ids and weights get one more column too: ids[t,k] = E (the
 * shared expert stored after the routed ones), weights[t,k] = σ(that logit),
 * so sl_be_moe_experts computes routed and shared experts in one pass. */
void sl_be_moe_route(sl_backend *be, sl_tensor *ids, sl_tensor *weights, const sl_tensor *logits,
                     int k, int norm, int shared);
/* The router of an MoE layer: logits = x · routerᵀ (sl_be_matmul; router
 * [E + shared, H]), then sl_be_moe_route on them. A backend may do both in
 * one pass where it has such a kernel (CUDA: decode batches); the logits are
 * written either way. */
void sl_be_moe_router(sl_backend *be, sl_tensor *ids, sl_tensor *weights, sl_tensor *logits,
                      const sl_tensor *x, const sl_tensor *router, int k, int norm, int shared);
/* resid += d; x = rmsnorm(resid) (sl_be_add_rmsnorm with w, eps, one_plus), then
 * sl_be_moe_router on x (router, k, norm, shared into ids, weights, logits): the
 * MoE layer's first two ops, in one pass where the backend fuses them. */
void sl_be_add_rmsnorm_router(sl_backend *be, sl_tensor *x, sl_tensor *resid, const sl_tensor *d,
                              const sl_tensor *w, float eps, int one_plus, sl_tensor *ids, sl_tensor *weights,
                              sl_tensor *logits, const sl_tensor *router, int k, int norm, int shared);
/* out[T,H] = Σ_j weights[t,j] · down_e(silu(gate_e x) ⊙ up_e x), e = ids[t,j];
 * gate_up [E, 2I, H] (gate rows first), down [E, H, I]. */
void sl_be_moe_experts(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *ids,
                       const sl_tensor *weights, const sl_tensor *gate_up, const sl_tensor *down);
/* sl_be_moe_experts with FP8 experts: gate_up F8E4M3 [E, 2I, H] with
 * gate_up_scale F32 [E, 2I, ceil(H/128)], down F8E4M3 [E, H, I] with
 * down_scale F32 [E, H, ceil(I/128)] (per output row, as sl_be_matmul_fp8 with
 * SR = N). x and the activation silu(g)⊙u are quantized per token and
 * 128-group as in sl_be_matmul_fp8. */
void sl_be_moe_experts_fp8(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_tensor *ids,
                           const sl_tensor *weights, const sl_tensor *gate_up,
                           const sl_tensor *gate_up_scale, const sl_tensor *down,
                           const sl_tensor *down_scale);
/* out[i, :] = x[logit_rows[i], :] for i < n_logits (the rows that need
 * logits; part of the batch so a captured decode graph replays them) */
void sl_be_gather_rows(sl_backend *be, sl_tensor *out, const sl_tensor *x, const sl_batch_meta *m);
/* pool viewed as [S, row]: pool[dst[i]] = pool[src[i]]; src -1 zeroes dst.
 * dst and src are host arrays. */
void sl_be_copy_slots(sl_backend *be, sl_tensor *pool, const int32_t *dst, const int32_t *src,
                      int n);
/* t[i] = offset + scale·(2u−1), u = sl_rng_uniform(seed, i) (same on every
 * backend, so dummy weights match across CPU, CUDA and TP ranks). */
void sl_be_fill_random(sl_backend *be, sl_tensor *t, uint64_t seed, float scale, float offset);
/* Which random index each element of a sliced fill takes: element (i, j) of
 * t's 2-D view gets index row(i)·g_cols + col0 + j of a (virtual) global
 * tensor with g_cols columns, row(i) = rows ? rows[i] : row0 + i (rows: host
 * array of sl_tensor_rows(t) entries). This is how a TP rank fills its slice
 * of the same global dummy weights, and how a repacked tensor takes the
 * values of the checkpoint tensor it was cut from. */
typedef struct sl_fill_index {
    const int64_t *rows;
    int64_t row0, g_cols, col0;
} sl_fill_index;
/* t[i, j] = offset + scale·(2u−1), u = sl_rng_uniform(seed, index(i, j)).
 * ix NULL: sl_be_fill_random (flat index). The CUDA fill stays on the device
 * (only the row list is uploaded). */
void sl_be_fill_random_at(sl_backend *be, sl_tensor *t, uint64_t seed, float scale, float offset,
                          const sl_fill_index *ix);
/* ids[r] = index of the largest of x[r, :] (lowest index on ties); ids is
 * I32 [R] (any shape with R elements), x [R, V]. Greedy decoding downloads
 * R ids instead of R rows of logits. */
void sl_be_argmax(sl_backend *be, sl_tensor *ids, const sl_tensor *x);

#define SL_SAMPLE_MAX_TOP 20
/* Per-row parameters of sl_be_sample (host memory). */
typedef struct sl_sample_row {
    float temperature;        /* <= 0: greedy (argmax of the penalised logits, lowest id on ties) */
    int top_k;                /* <= 0 or >= vocab: off; 1: greedy */
    float top_p;              /* >= 1: off */
    float min_p;              /* <= 0: off; above 1 acts as 1 (the top token always stays) */
    float repetition_penalty; /* 1: off */
    float frequency_penalty, presence_penalty;
    float u;                  /* this row's uniform draw in [0, 1) */
    int logprobs;             /* 1: fill this row of lp */
    int n_top;                /* top logprobs wanted, 0..SL_SAMPLE_MAX_TOP (with logprobs) */
    int pen_start, pen_n;     /* this row's entries in the sl_sample_args pen_* arrays */
    int32_t pending;          /* index into pending_ids of a token sampled earlier but not yet in
                                 the counts (one more output occurrence of it), or -1 */
    int32_t mask_row;         /* row of sl_sample_args.mask with this row's allowed tokens, or -1
                                 (read only when mask is set) */
} sl_sample_row;
typedef struct sl_sample_args {
    int n_rows;
    const sl_sample_row *rows;                    /* host [n_rows] */
    int n_pen;
    const int32_t *pen_tok, *pen_out, *pen_prompt; /* host [n_pen]: token, its count in the output,
                                                     1 if it is in the prompt (repetition penalty) */
    const sl_tensor *pending_ids;                 /* I32 on the backend; NULL when no row is pending */
    /* Constrained decoding: host bitsets of the allowed tokens, n_mask_rows
     * rows of mask_words words (bit t % 32 of word t / 32 set: token t
     * allowed; mask_words * 32 >= V). NULL: no row is masked. A masked row
     * allows at least one token. */
    const uint32_t *mask;
    int n_mask_rows, mask_words;
} sl_sample_args;
/* ids (I32, R elements, may be a view into a larger buffer) = the token sampled from each row of
 * logits (F32 [R, V], left unchanged). lp (NULL, or F32 [R, 2 + 2*SL_SAMPLE_MAX_TOP]): for rows with
 * logprobs, [0] = logprob of the sampled token under log_softmax of the RAW logits (before penalties and
 * temperature, as today), [1] = n_top, [2 .. 2+n_top) = top ids (as floats, largest first, lowest id on
 * ties), [2+SL_SAMPLE_MAX_TOP .. +n_top) their logprobs. Asynchronous like every op.
 *
 * Per row: the mask (a token it excludes is -inf from here on, so it is never drawn; the logprobs
 * stay those of the raw row) -> penalties on a copy of the row (per entry (token, out, prompt), the pending token merged in
 * as one more output occurrence: repetition if out > 0 or prompt: l = l > 0 ? l/rep : l*rep; then if
 * out > 0: l -= freq*out + pres) -> greedy when temperature <= 0 or top_k == 1 -> softmax(l / T) ->
 * top-k -> top-p (shortest prefix in rank order (prob desc, id asc) holding top_p of the remaining
 * mass) -> min-p (drops the tail below min_p * max prob, keeping one) -> the first token in rank order
 * whose cumulative mass exceeds u * total. Without top-k and top-p the draw walks the tokens in id
 * order instead (same distribution, no ranking needed). The host arrays are read before the call
 * returns. */
void sl_be_sample(sl_backend *be, sl_tensor *ids, sl_tensor *lp, const sl_tensor *logits,
                  const sl_sample_args *a);

#endif

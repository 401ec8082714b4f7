// kernels/cuda/gdn.cu: the recurrent forms, exact to the CPU's order of
// operations and sequential over each sequence's tokens (decode and prefill
// alike; the chunked prefill form is future work, see kernels/dev/NOTES.md).
//   conv1d: one thread per (sequence, channel); the K-1 history in registers.
//   gdn:    one block per (sequence, value head); two adjacent lanes own
//           column c of the Dk x Dv fp32 state in registers (half the rows
//           each, partial dots summed by one shuffle); q and k
//           (l2-normalised) go through shared memory each token.
#include "gdn.cuh"

#define CONV_MAXK 8

__global__ void k_conv1d(cu_mat y, cu_mat x, cu_mat w, float *state, int K, const int32_t *q_start,
                         const int32_t *state_slot, const int32_t *state_fresh,
                         const int32_t *track_slot, const int32_t *track_len)
{
    int s = blockIdx.y;
    int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x, C = x.cols;
    cu_pdl_wait();
    cu_pdl_trigger();
    if (c >= C) return;
    const int H = K - 1;
    float hist[CONV_MAXK], wc[CONV_MAXK];
    float *mine = state + ((int64_t)state_slot[s] * C + c) * H;
#pragma unroll
    for (int j = 0; j < CONV_MAXK; j++) {
        hist[j] = j < H && !state_fresh[s] ? mine[j] : 0.0f;
        wc[j] = j < K ? cu_mat_ld(w, c, j) : 0.0f;
    }
    int q0 = q_start[s], qn = q_start[s + 1] - q0;
    for (int i = 0; i < qn; i++) {
        float xt = cu_mat_ld(x, q0 + i, c), acc = 0.0f;
#pragma unroll
        for (int j = 0; j < CONV_MAXK - 1; j++)
            if (j < H) acc += wc[j] * hist[j];
#pragma unroll
        for (int j = 0; j < CONV_MAXK; j++)
            if (j == H) acc += wc[j] * xt;
#pragma unroll
        for (int j = 0; j + 1 < CONV_MAXK; j++)
            if (j + 1 < H) hist[j] = hist[j + 1];
#pragma unroll
        for (int j = 0; j < CONV_MAXK; j++)
            if (j == H - 1) hist[j] = xt;
        cu_mat_st(y, q0 + i, c, acc / (1.0f + expf(-acc)));
        if (track_slot[s] >= 0 && i + 1 == track_len[s]) {
            float *snap = state + ((int64_t)track_slot[s] * C + c) * H;
#pragma unroll
            for (int j = 0; j < CONV_MAXK; j++)
                if (j < H) snap[j] = hist[j];
        }
    }
#pragma unroll
    for (int j = 0; j < CONV_MAXK; j++)
        if (j < H) mine[j] = hist[j];
}

void cu_conv1d(sl_backend *be, sl_tensor *y, const sl_tensor *x, const sl_tensor *w,
               sl_tensor *state, const sl_batch_meta *m)
{
    cu_backend *b = cu_be(be);
    const cu_meta *cm = cu_meta_of(m);
    int K = (int)sl_tensor_cols(w);
    SL_ASSERT(state->dtype == SL_DTYPE_F32 && K >= 1 && K <= CONV_MAXK);
    if (cm->n_seqs == 0) return;
    int64_t C = sl_tensor_cols(x);
    dim3 grid(cu_blocks(C, 128), (unsigned)cm->n_seqs);
    cu_launch(b, k_conv1d, grid, 128, 0, cu_mat_of(y), cu_mat_of(x), cu_mat_of(w),
              (float *)state->data, K, cm->q_start, cm->state_slot, cm->state_fresh,
              cm->track_slot, cm->track_len);
}

typedef struct cu_gdn_args {
    cu_mat out, qkv, a, b;
    const void *A_log, *dt_bias;
    int A_dt, bias_dt;
    float *ssm;
    int Hk, Hv, Dv;
    const int32_t *q_start, *state_slot, *state_fresh, *track_slot, *track_len;
} cu_gdn_args;

__device__ __forceinline__ float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

template <int DK>
__global__ void __launch_bounds__(512) k_gdn(cu_gdn_args g)
{
    constexpr int DH = DK / 2; // state rows per thread
    __shared__ float qs[DK], ks[DK], red[32];
    int s = blockIdx.x / g.Hv, h = blockIdx.x % g.Hv, kh = h / (g.Hv / g.Hk);
    int tid = threadIdx.x, c = tid >> 1, d0 = (tid & 1) * DH, Dv = g.Dv;
    cu_pdl_wait();
    cu_pdl_trigger();
    int64_t sz = (int64_t)DK * Dv, slot_sz = (int64_t)g.Hv * sz;
    float *mine = g.ssm + (int64_t)g.state_slot[s] * slot_sz + h * sz;
    float S[DH];
    bool fresh = g.state_fresh[s];
#pragma unroll
    for (int d = 0; d < DH; d++) S[d] = fresh ? 0.0f : mine[(int64_t)(d0 + d) * Dv + c];
    float A = -expf(cu_ldf(g.A_log, g.A_dt, h)), bias = cu_ldf(g.dt_bias, g.bias_dt, h);
    float qscale = 1.0f / sqrtf((float)DK);
    int q0 = g.q_start[s], qn = g.q_start[s + 1] - q0;
    for (int i = 0; i < qn; i++) {
        int t = q0 + i;
        // l2norm(q), l2norm(k) over DK (DK <= 2·Dv threads, checked on the host)
        bool own = tid < DK;
        float qv = own ? cu_mat_ld(g.qkv, t, (int64_t)kh * DK + tid) : 0.0f;
        float kv = own ? cu_mat_ld(g.qkv, t, (int64_t)g.Hk * DK + (int64_t)kh * DK + tid) : 0.0f;
        float qss = cu_block_sum(qv * qv, red);
        float kss = cu_block_sum(kv * kv, red);
        if (own) {
            qs[tid] = qv * (1.0f / sqrtf(qss + 1e-6f)) * qscale;
            ks[tid] = kv * (1.0f / sqrtf(kss + 1e-6f));
        }
        __syncthreads();
        float decay = expf(A * softplus(cu_mat_ld(g.a, t, h) + bias));
        float beta = 1.0f / (1.0f + expf(-cu_mat_ld(g.b, t, h)));
        // S <- e^g S;  u = beta (v - S^T k);  S <- S + k u^T;  o = S^T q
        float sk = 0.0f;
#pragma unroll
        for (int d = 0; d < DH; d++) {
            S[d] *= decay;
            sk += S[d] * ks[d0 + d];
        }
        sk += __shfl_xor_sync(0xffffffffu, sk, 1);
        float u = beta * (cu_mat_ld(g.qkv, t, (int64_t)2 * g.Hk * DK + (int64_t)h * Dv + c) - sk);
        float o = 0.0f;
#pragma unroll
        for (int d = 0; d < DH; d++) {
            S[d] += ks[d0 + d] * u;
            o += S[d] * qs[d0 + d];
        }
        o += __shfl_xor_sync(0xffffffffu, o, 1);
        if (d0 == 0) cu_mat_st(g.out, t, (int64_t)h * Dv + c, o);
        if (g.track_slot[s] >= 0 && i + 1 == g.track_len[s]) {
            float *snap = g.ssm + (int64_t)g.track_slot[s] * slot_sz + h * sz;
#pragma unroll
            for (int d = 0; d < DH; d++) snap[(int64_t)(d0 + d) * Dv + c] = S[d];
        }
        __syncthreads(); // qs/ks are rewritten next token
    }
#pragma unroll
    for (int d = 0; d < DH; d++) mine[(int64_t)(d0 + d) * Dv + c] = S[d];
}

void cu_gdn(sl_backend *be, sl_tensor *out, const sl_tensor *qkv, const sl_tensor *a,
            const sl_tensor *b, const sl_tensor *A_log, const sl_tensor *dt_bias, sl_tensor *ssm,
            int Hk, int Hv, int Dk, int Dv, const sl_batch_meta *m)
{
    cu_backend *bk = cu_be(be);
    const cu_meta *cm = cu_meta_of(m);
    SL_ASSERT((Dk == 64 || Dk == 128) && Dv % 16 == 0 && 2 * Dv >= Dk && Dv <= 256);
    if (cm->n_seqs == 0) return;
    cu_gdn_args g = {cu_mat_of(out), cu_mat_of(qkv), cu_mat_of(a), cu_mat_of(b), A_log->data,
                     dt_bias->data, A_log->dtype, dt_bias->dtype, (float *)ssm->data, Hk, Hv, Dv,
                     cm->q_start, cm->state_slot, cm->state_fresh, cm->track_slot, cm->track_len};
    unsigned grid = (unsigned)(cm->n_seqs * Hv);
    cu_launch(bk, Dk == 64 ? k_gdn<64> : k_gdn<128>, grid, 2 * Dv, 0, g);
}

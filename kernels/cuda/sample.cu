// kernels/cuda/sample.cu: sl_be_sample on the device; it draws the same
// token as the CPU op (kernels/cpu/sample.c) on the same inputs, up to
// summation order.
//
// Four kernels. The first three split each row into B slices of the
// vocabulary, one 1024-thread block per (slice, row), B chosen so that a few
// rows still fill the GPU (a row is 600 KB at V = 151936; one SM walking it
// many times made a single row cost 50-600 us): pass 1 copies and penalises
// the slice and takes its maxima (argmax for greedy rows) and its head of
// n_top raw logits; pass 2 its sums of exponentials under the row's maxima;
// pass 3 its probabilities, their zero count and masses, and its head of k
// (top-k rows). Each block folds the slices' partials in slice order, so
// every kernel sees the same row maximum and sum. Pass 4, one block per row,
// cuts and draws. A slice's head holds every member of the row's head in
// that slice (rank order is the same total order everywhere), so top-k of at
// most 1024 and the top logprobs are chosen among the slices' heads laid end
// to end (still in id order) instead of the row; the id-order draw without
// top-k and top-p finds the slice where the cumulative kept mass crosses and
// walks that slice alone. Top-p without top-k and top-k above 1024 still
// walk the whole row in the draw block.
//
// Nothing is sorted. Every cut (top-k, top-p, min-p) and the draw keep a
// prefix of the rank order (prob desc, id asc), so the surviving set is
// (K, m): every token whose key exceeds K plus the first m, in id order, of
// those whose key equals K, where a key is the order-preserving uint32 of the
// float. A cut is a radix select over keys (digits of 11, 11 and 10 bits,
// shared-memory histograms) by count (top-k) or by probability mass (top-p,
// the draw); ties at the final key are resolved by arithmetic (they all weigh
// the same) and their ids found by a walk in id order. Masses are
// 2^-50 fixed point in 64-bit integer sums, so a row samples the same token
// on every run, and the slices' masses add up exactly. Once top-k has left
// at most 1024 tokens (Qwen3's default is 20) they are gathered into shared
// memory and ranked, and top-p, min-p and the draw are block scans there.
//
// Host arrays (rows, penalty entries) reach the device through a pinned
// staging buffer owned by the op, double-buffered with an event like
// prepare's (so the op is not for CUDA graph capture: a replay would read
// the staged rows of capture time); the probabilities, the slices' partials
// and heads live in stream-ordered scratch.
//
// Files: this one stages the host arrays and launches; sample_pass.cu holds
// passes 1 to 3, sample_draw.cu pass 4, sample_select.cuh the radix select and
// sample_impl.cuh what they all share.
#include <string.h>

#include "sample_impl.cuh"

typedef struct cu_sample_stage {
    struct {
        char *host, *dev; // pinned / device, cap bytes each
        size_t cap;
        cudaEvent_t copied;
    } buf[2];
    int next;
} cu_sample_stage;

// Copies the host arrays into this call's half of the staging buffer and on
// to the device; returns the device copy (rows first, then pen_tok, pen_out,
// pen_prompt, then the mask rows).
static char *stage(cu_backend *b, const sl_sample_args *a)
{
    if (!b->sample) {
        b->sample = (cu_sample_stage *)calloc(1, sizeof *b->sample);
        SL_ASSERT(b->sample && "out of memory for the sampling stage");
        for (int i = 0; i < 2; i++)
            CU_CHECK(cudaEventCreateWithFlags(&b->sample->buf[i].copied, cudaEventDisableTiming));
    }
    cu_sample_stage *st = b->sample;
    size_t rows = sizeof(sl_sample_row) * (size_t)a->n_rows,
           pen = sizeof(int32_t) * (size_t)a->n_pen;
    size_t mask = a->mask ? sizeof(uint32_t) * (size_t)a->n_mask_rows * (size_t)a->mask_words : 0;
    size_t need = rows + 3 * pen + mask;
    auto *buf = &st->buf[st->next];
    st->next ^= 1;
    // the host half may still be the source of its previous copy
    CU_CHECK(cudaEventSynchronize(buf->copied));
    if (need > buf->cap) {
        size_t cap = need * 2 + 4096;
        CU_CHECK(cudaStreamSynchronize(b->stream)); // the old device buffer may be in use
        cudaFreeHost(buf->host);
        cudaFree(buf->dev);
        CU_CHECK(cudaMallocHost(&buf->host, cap));
        CU_CHECK(cudaMalloc(&buf->dev, cap));
        buf->cap = cap;
    }
    memcpy(buf->host, a->rows, rows);
    if (pen) {
        memcpy(buf->host + rows, a->pen_tok, pen);
        memcpy(buf->host + rows + pen, a->pen_out, pen);
        memcpy(buf->host + rows + 2 * pen, a->pen_prompt, pen);
    }
    if (mask) memcpy(buf->host + rows + 3 * pen, a->mask, mask);
    CU_CHECK(cudaMemcpyAsync(buf->dev, buf->host, need, cudaMemcpyHostToDevice, b->stream));
    CU_CHECK(cudaEventRecord(buf->copied, b->stream));
    return buf->dev;
}

void cu_sample(sl_backend *be, sl_tensor *ids, sl_tensor *lp, const sl_tensor *logits,
               const sl_sample_args *a)
{
    cu_backend *b = cu_be(be);
    int R = a->n_rows;
    int64_t V = sl_tensor_cols(logits);
    if (R == 0) return;
    SL_ASSERT(V > 0 && V < INT32_MAX / 2);
    char *dev = stage(b, a);
    size_t rows = sizeof(sl_sample_row) * (size_t)R, pen = sizeof(int32_t) * (size_t)a->n_pen;
    sb_args g;
    g.logits = (const float *)logits->data;
    g.ld = sl_tensor_ld(logits);
    g.V = (int)V;
    g.ids = (int32_t *)ids->data;
    g.lp = lp ? (float *)lp->data : NULL;
    g.lp_ld = lp ? sl_tensor_ld(lp) : 0;
    g.rows = (const sl_sample_row *)dev;
    g.pen_tok = (const int32_t *)(dev + rows);
    g.pen_out = (const int32_t *)(dev + rows + pen);
    g.pen_prompt = (const int32_t *)(dev + rows + 2 * pen);
    g.pending = a->pending_ids ? (const int32_t *)a->pending_ids->data : NULL;
    g.mask = a->mask ? (const uint32_t *)(dev + rows + 3 * pen) : NULL;
    g.mask_words = a->mask_words;
    // slices of whole chunks, enough to fill the GPU twice over
    int NC = (int)((V + SB_NT - 1) / SB_NT), B = (2 * b->n_sm + R - 1) / R;
    B = B < SB_MAXB ? B : SB_MAXB;
    B = B < NC ? B : NC;
    int per = (NC + B - 1) / B; // chunks per slice
    B = (NC + per - 1) / per;
    SL_ASSERT(R < 65536);
    g.B = B;
    g.S = per * SB_NT;
    g.NC = NC;
    size_t nrb = (size_t)R * (size_t)B, off[9], at = 0;
    const size_t bytes[9] = {
        sizeof(float) * (size_t)R * (size_t)V,          sizeof(sb_part) * nrb,
        sizeof(float) * nrb * SB_NT,                    sizeof(float) * nrb * SB_NT,
        sizeof(int32_t) * nrb * SB_NT,                  sizeof(int32_t) * nrb * SB_NT,
        2 * sizeof(float) * nrb * SL_SAMPLE_MAX_TOP,   2 * sizeof(int32_t) * nrb * SL_SAMPLE_MAX_TOP,
        2 * sizeof(double) * (size_t)R * (size_t)NC};
    for (int i = 0; i < 9; i++) {
        off[i] = at;
        at += (bytes[i] + 255) & ~(size_t)255;
    }
    char *tmp = (char *)cu_tmp_alloc(b, at);
    g.scratch = (float *)(tmp + off[0]);
    g.part = (sb_part *)(tmp + off[1]);
    g.cand_v = (float *)(tmp + off[2]);
    g.join_v = (float *)(tmp + off[3]);
    g.cand_id = (int32_t *)(tmp + off[4]);
    g.join_id = (int32_t *)(tmp + off[5]);
    g.head_v = (float *)(tmp + off[6]);
    g.hjoin_v = g.head_v + nrb * SL_SAMPLE_MAX_TOP;
    g.head_id = (int32_t *)(tmp + off[7]);
    g.hjoin_id = g.head_id + nrb * SL_SAMPLE_MAX_TOP;
    g.csum = (double *)(tmp + off[8]);
    dim3 grid((unsigned)B, (unsigned)R);
    k_sample_max<<<grid, SB_NT, 0, b->stream>>>(g);
    CU_CHECK_LAUNCH();
    k_sample_sum<<<grid, SB_NT, 0, b->stream>>>(g);
    CU_CHECK_LAUNCH();
    k_sample_prob<<<grid, SB_NT, 0, b->stream>>>(g);
    CU_CHECK_LAUNCH();
    k_sample_draw<<<(unsigned)R, SB_NT, 0, b->stream>>>(g);
    CU_CHECK_LAUNCH();
    cu_tmp_free(b, tmp);
}

void cu_sample_free(cu_backend *b)
{
    cu_sample_stage *st = b->sample;
    if (!st) return;
    for (int i = 0; i < 2; i++) {
        cudaFreeHost(st->buf[i].host);
        cudaFree(st->buf[i].dev);
        cudaEventDestroy(st->buf[i].copied);
    }
    free(st);
    b->sample = NULL;
}

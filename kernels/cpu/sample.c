/* kernels/cpu/sample.c: the sampling op on the host, the oracle the CUDA
 * kernel is checked against (contract: sl_be_sample in kernels/backend.h).
 *
 * Probabilities are fp32, sums fp64. The ranked path selects only the head it
 * needs (quickselect, then a sort of that head), so a top-k of 50 over 152k
 * tokens does not sort the vocabulary. */
#define _GNU_SOURCE /* qsort_r */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_ops.h"

static void penalize(float *l, int32_t out, int32_t prompt, const sl_sample_row *w)
{
    if (out > 0 || prompt) *l = *l > 0 ? *l / w->repetition_penalty : *l * w->repetition_penalty;
    if (out > 0) *l -= w->frequency_penalty * (float)out + w->presence_penalty;
}

/* The row's penalty entries, with the pending token as one more output
 * occurrence (its own entry when it has none yet). */
static void apply_penalties(float *x, int64_t V, const sl_sample_row *w, const sl_sample_args *a,
                            int32_t pend)
{
    int found = 0;
    for (int e = w->pen_start; e < w->pen_start + w->pen_n; e++) {
        int32_t tok = a->pen_tok[e];
        found |= tok == pend;
        if (tok >= 0 && tok < V) penalize(&x[tok], a->pen_out[e] + (tok == pend), a->pen_prompt[e], w);
    }
    if (pend >= 0 && !found && pend < V) penalize(&x[pend], 1, 0, w);
}

static int64_t argmax(const float *x, int64_t n)
{
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static int by_prob_desc(const void *a, const void *b, void *ctx)
{
    const float *prob = ctx;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    float px = prob[x], py = prob[y];
    if (px != py) return px > py ? -1 : 1;
    return x < y ? -1 : x > y;
}

static double sum_all(const float *p, int64_t n)
{
    double t = 0;
    for (int64_t i = 0; i < n; i++)
        t += p[i];
    return t;
}

static int before(const float *p, int32_t a, int32_t b)
{
    return p[a] > p[b] || (p[a] == p[b] && a < b);
}

/* Reorders idx[0..n) so that idx[0..m) hold the m most probable tokens
 * (ties: lower id), then sorts those m: O(n + m log m) instead of sorting
 * the whole vocabulary for every sampled row. */
static void select_top(int32_t *idx, int64_t n, int64_t m, const float *p)
{
    int64_t lo = 0, hi = n - 1, k = m - 1;
    while (lo < hi) {
        int32_t pivot = idx[lo + (hi - lo) / 2];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (before(p, idx[i], pivot))
                i++;
            while (before(p, pivot, idx[j]))
                j--;
            if (i <= j) {
                int32_t t = idx[i];
                idx[i++] = idx[j];
                idx[j--] = t;
            }
        }
        if (k <= j)
            hi = j;
        else if (k >= i)
            lo = i;
        else
            break;
    }
    qsort_r(idx, (size_t)m, sizeof *idx, by_prob_desc, (void *)p);
}

/* Draws from the filtered distribution of the penalised logits x (scratch:
 * it ends up holding probabilities). */
static int32_t draw(float *x, int64_t V, const sl_sample_row *w, int32_t *idx)
{
    float inv_t = 1.0f / w->temperature;
    float mx = x[argmax(x, V)];
    double sum = 0;
    for (int64_t i = 0; i < V; i++) {
        x[i] = expf((x[i] - mx) * inv_t);
        sum += x[i];
    }
    for (int64_t i = 0; i < V; i++)
        x[i] = (float)(x[i] / sum);
    float u = w->u;
    int64_t k = w->top_k > 0 && w->top_k < V ? w->top_k : V;
    int sorted = k < V || w->top_p < 1.0f;
    if (!sorted) {
        /* plain temperature (+ min-p): inverse CDF in id order */
        float floor_p = w->min_p > 0 ? fminf(w->min_p, 1.0f) * x[argmax(x, V)] : 0.0f;
        double tot = 0, acc = 0;
        for (int64_t i = 0; i < V; i++)
            if (x[i] >= floor_p) tot += x[i];
        int32_t last = 0;
        for (int64_t i = 0; i < V; i++) {
            if (x[i] < floor_p || x[i] == 0.0f) continue; /* zero: masked out, or underflow */
            acc += x[i];
            last = (int32_t)i;
            if (acc > u * tot) return (int32_t)i;
        }
        return last;
    }
    for (int64_t i = 0; i < V; i++)
        idx[i] = (int32_t)i;
    int64_t n = k;
    if (k < V) {
        select_top(idx, V, k, x);
    } else {
        /* top-p alone: grow the sorted head until it holds the nucleus */
        double all = sum_all(x, V);
        for (n = 256 < V ? 256 : V;; n = n * 4 < V ? n * 4 : V) {
            select_top(idx, V, n, x);
            double acc = 0;
            for (int64_t i = 0; i < n; i++)
                acc += x[idx[i]];
            if (n == V || acc >= w->top_p * all) break;
        }
    }
    if (w->top_p < 1.0f) {
        double tot = k < V ? 0 : sum_all(x, V), acc = 0;
        if (k < V)
            for (int64_t i = 0; i < n; i++)
                tot += x[idx[i]];
        for (int64_t i = 0; i < n; i++) {
            acc += x[idx[i]];
            if (acc >= w->top_p * tot) {
                n = i + 1;
                break;
            }
        }
    }
    if (w->min_p > 0) {
        float floor_p = fminf(w->min_p, 1.0f) * x[idx[0]];
        while (n > 1 && x[idx[n - 1]] < floor_p)
            n--;
    }
    double tot = 0, acc = 0;
    for (int64_t i = 0; i < n; i++)
        tot += x[idx[i]];
    for (int64_t i = 0; i < n; i++) {
        acc += x[idx[i]];
        if (acc > u * tot) return idx[i];
    }
    return idx[n - 1];
}

/* lp row: the sampled token's logprob and the n_top largest raw logits
 * (largest first, lower id on ties), all under log_softmax of the raw row. */
static void fill_logprobs(const float *raw, int64_t V, int32_t tok, int n_top, float *lp)
{
    float mx = raw[argmax(raw, V)];
    double sum = 0;
    for (int64_t i = 0; i < V; i++)
        sum += exp((double)(raw[i] - mx));
    float lse = mx + (float)log(sum);
    int32_t top[SL_SAMPLE_MAX_TOP];
    int n = 0, want = n_top < V ? n_top : (int)V;
    for (int64_t i = 0; i < V && want > 0; i++) { /* one pass, insertion into the head */
        if (n == want && raw[i] <= raw[top[n - 1]]) continue;
        int j = n < want ? n++ : n - 1;
        while (j > 0 && raw[top[j - 1]] < raw[i]) {
            top[j] = top[j - 1];
            j--;
        }
        top[j] = (int32_t)i;
    }
    lp[0] = raw[tok] - lse;
    lp[1] = (float)n;
    for (int j = 0; j < n; j++) {
        lp[2 + j] = (float)top[j];
        lp[2 + SL_SAMPLE_MAX_TOP + j] = raw[top[j]] - lse;
    }
}

void sl_cpu_sample(sl_backend *be, sl_tensor *ids, sl_tensor *lp, const sl_tensor *logits,
                   const sl_sample_args *a)
{
    (void)be;
    int64_t V = sl_tensor_cols(logits);
    float *x = malloc(sizeof(float) * (size_t)V);
    int32_t *idx = malloc(sizeof(int32_t) * (size_t)V);
    SL_ASSERT(x && idx && "out of memory for the sampling scratch");
    for (int r = 0; r < a->n_rows; r++) {
        const sl_sample_row *w = &a->rows[r];
        const float *raw = (const float *)logits->data + r * sl_tensor_ld(logits);
        int32_t pend = w->pending >= 0 ? ((const int32_t *)a->pending_ids->data)[w->pending] : -1;
        memcpy(x, raw, sizeof(float) * (size_t)V);
        if (a->mask && w->mask_row >= 0) {
            const uint32_t *bits = a->mask + (size_t)w->mask_row * (size_t)a->mask_words;
            for (int64_t i = 0; i < V; i++)
                if (!(bits[i >> 5] >> (i & 31) & 1)) x[i] = -INFINITY;
        }
        apply_penalties(x, V, w, a, pend);
        int32_t tok = w->temperature <= 0.0f || w->top_k == 1 ? (int32_t)argmax(x, V)
                                                               : draw(x, V, w, idx);
        ((int32_t *)ids->data)[r] = tok;
        if (w->logprobs)
            fill_logprobs(raw, V, tok, w->n_top, (float *)lp->data + r * sl_tensor_ld(lp));
    }
    free(x);
    free(idx);
}

#define _GNU_SOURCE /* qsort_r */
#include "sampler.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sl_rng.h"

/* Token counts for the penalties: open addressing, token -> (output count,
 * seen in prompt). Only built when a penalty is active. */
typedef struct tok_count {
    int32_t token; /* -1: empty */
    int32_t out;
    int32_t in_prompt;
} tok_count;

struct sl_sampler_state {
    sl_sampling p;
    uint64_t seed;
    int64_t n_out;
    int32_t last;
    int penalize;
    tok_count *tab;
    int cap, used;
    int32_t *idx; /* scratch for candidate sorting */
    int scratch;
};

static tok_count *tab_slot(sl_sampler_state *s, int32_t tok)
{
    uint32_t h = (uint32_t)tok * 2654435761u;
    for (int i = 0;; i++) {
        tok_count *c = &s->tab[(h + (uint32_t)i) & (uint32_t)(s->cap - 1)];
        if (c->token == tok || c->token < 0) return c;
    }
}

static int tab_add(sl_sampler_state *s, int32_t tok, int out, int in_prompt)
{
    if (tok < 0) return 0;
    if (2 * (s->used + 1) > s->cap) {
        int ncap = s->cap ? 2 * s->cap : 64;
        tok_count *old = s->tab, *nt = malloc(sizeof *nt * (size_t)ncap);
        if (!nt) return -1;
        for (int i = 0; i < ncap; i++)
            nt[i].token = -1;
        int ocap = s->cap;
        s->tab = nt;
        s->cap = ncap;
        for (int i = 0; i < ocap; i++)
            if (old[i].token >= 0) *tab_slot(s, old[i].token) = old[i];
        free(old);
    }
    tok_count *c = tab_slot(s, tok);
    if (c->token < 0) {
        c->token = tok;
        c->out = c->in_prompt = 0;
        s->used++;
    }
    c->out += out;
    c->in_prompt |= in_prompt;
    return 0;
}

sl_sampler_state *sl_sampler_state_new(const sl_sampling *params, const int32_t *prompt,
                                       int n_prompt, uint64_t rid)
{
    sl_sampler_state *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->p = *params;
    if (s->p.top_logprobs > SL_SAMPLER_MAX_TOP) s->p.top_logprobs = SL_SAMPLER_MAX_TOP;
    s->seed = params->has_seed ? params->seed : sl_rng_mix(rid ^ 0x5ca1ab1eull);
    s->last = -1;
    s->penalize = params->repetition_penalty != 1.0f || params->frequency_penalty != 0.0f ||
                  params->presence_penalty != 0.0f;
    if (s->penalize && params->repetition_penalty != 1.0f)
        for (int i = 0; i < n_prompt; i++)
            if (tab_add(s, prompt[i], 0, 1)) {
                sl_sampler_state_free(s);
                return NULL;
            }
    return s;
}

void sl_sampler_state_free(sl_sampler_state *s)
{
    if (!s) return;
    free(s->tab);
    free(s->idx);
    free(s);
}

static void record(sl_sampler_state *s, int32_t tok)
{
    s->last = tok;
    s->n_out++;
    if (s->penalize) tab_add(s, tok, 1, 0); /* out of memory only weakens a penalty */
}

void sl_sampler_state_add_output(sl_sampler_state *s, const int32_t *ids, int n)
{
    for (int i = 0; i < n; i++)
        record(s, ids[i]);
}

int32_t sl_sampler_last_token(const sl_sampler_state *s)
{
    return s->last;
}
const sl_sampling *sl_sampler_params(const sl_sampler_state *s)
{
    return &s->p;
}

static void apply_penalties(sl_sampler_state *s, float *logits, int vocab)
{
    const sl_sampling *p = &s->p;
    for (int i = 0; i < s->cap; i++) {
        tok_count *c = &s->tab[i];
        if (c->token < 0 || c->token >= vocab) continue;
        float *l = &logits[c->token];
        if (p->repetition_penalty != 1.0f && (c->out || c->in_prompt))
            *l = *l > 0 ? *l / p->repetition_penalty : *l * p->repetition_penalty;
        if (c->out) *l -= p->frequency_penalty * (float)c->out + p->presence_penalty;
    }
}

static int argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static void fill_logprobs(const float *raw, int vocab, int32_t tok, const sl_sampling *p,
                          sl_sample *out)
{
    float mx = raw[argmax(raw, vocab)];
    double sum = 0;
    for (int i = 0; i < vocab; i++)
        sum += exp((double)(raw[i] - mx));
    float lse = mx + (float)log(sum);
    out->logprob = raw[tok] - lse;
    /* top alternatives, largest first (ties: lower id), one pass */
    int n = 0, want = p->top_logprobs < vocab ? p->top_logprobs : vocab;
    for (int i = 0; i < vocab && want > 0; i++) {
        if (n == want && raw[i] <= raw[out->top_ids[n - 1]]) continue;
        int j = n < want ? n++ : n - 1;
        while (j > 0 && raw[out->top_ids[j - 1]] < raw[i]) {
            out->top_ids[j] = out->top_ids[j - 1];
            j--;
        }
        out->top_ids[j] = i;
    }
    out->n_top = n;
    for (int j = 0; j < n; j++)
        out->top_logprobs[j] = raw[out->top_ids[j]] - lse;
}

static int by_prob_desc(const void *a, const void *b, void *ctx)
{
    const float *prob = ctx;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    float px = prob[x], py = prob[y];
    if (px != py) return px > py ? -1 : 1;
    return x < y ? -1 : x > y;
}

static double sum_all(const float *p, int n)
{
    double t = 0;
    for (int i = 0; i < n; i++)
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
static void select_top(int32_t *idx, int n, int m, const float *p)
{
    int lo = 0, hi = n - 1, k = m - 1;
    while (lo < hi) {
        int32_t pivot = idx[lo + (hi - lo) / 2];
        int i = lo, j = hi;
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

/* Draws from the filtered distribution. logits is scratch: it ends up
 * holding probabilities. */
static int32_t draw(sl_sampler_state *s, float *logits, int vocab)
{
    const sl_sampling *p = &s->p;
    float inv_t = 1.0f / p->temperature;
    float mx = logits[argmax(logits, vocab)];
    double sum = 0;
    for (int i = 0; i < vocab; i++) {
        logits[i] = expf((logits[i] - mx) * inv_t);
        sum += logits[i];
    }
    for (int i = 0; i < vocab; i++)
        logits[i] = (float)(logits[i] / sum);
    float u = sl_rng_uniform(s->seed, (uint64_t)s->n_out);
    int k = p->top_k > 0 && p->top_k < vocab ? p->top_k : vocab;
    int sorted = k < vocab || p->top_p < 1.0f;
    if (!sorted) {
        /* plain temperature (+ min-p): inverse CDF in id order */
        float floor_p = p->min_p > 0 ? p->min_p * logits[argmax(logits, vocab)] : 0.0f;
        double tot = 0, acc = 0;
        for (int i = 0; i < vocab; i++)
            if (logits[i] >= floor_p) tot += logits[i];
        int last = 0;
        for (int i = 0; i < vocab; i++) {
            if (logits[i] < floor_p) continue;
            acc += logits[i];
            last = i;
            if (acc > u * tot) return i;
        }
        return last;
    }
    if (s->scratch < vocab) {
        free(s->idx);
        s->idx = malloc(sizeof(int32_t) * (size_t)vocab);
        if (!s->idx) { /* out of memory: greedy is the safe answer */
            s->scratch = 0;
            return argmax(logits, vocab);
        }
        s->scratch = vocab;
    }
    int32_t *idx = s->idx;
    for (int i = 0; i < vocab; i++)
        idx[i] = i;
    int n = k;
    if (k < vocab) {
        select_top(idx, vocab, k, logits);
    } else {
        /* top-p alone: grow the sorted head until it holds the nucleus */
        double all = sum_all(logits, vocab);
        for (n = k < 256 ? k : 256;; n = n * 4 < vocab ? n * 4 : vocab) {
            select_top(idx, vocab, n, logits);
            double acc = 0;
            for (int i = 0; i < n; i++)
                acc += logits[idx[i]];
            if (n == vocab || acc >= p->top_p * all) break;
        }
    }
    if (p->top_p < 1.0f) {
        double tot = k < vocab ? 0 : sum_all(logits, vocab), acc = 0;
        if (k < vocab)
            for (int i = 0; i < n; i++)
                tot += logits[idx[i]];
        for (int i = 0; i < n; i++) {
            acc += logits[idx[i]];
            if (acc >= p->top_p * tot) {
                n = i + 1;
                break;
            }
        }
    }
    if (p->min_p > 0) {
        float floor_p = p->min_p * logits[idx[0]];
        while (n > 1 && logits[idx[n - 1]] < floor_p)
            n--;
    }
    double tot = 0, acc = 0;
    for (int i = 0; i < n; i++)
        tot += logits[idx[i]];
    for (int i = 0; i < n; i++) {
        acc += logits[idx[i]];
        if (acc > u * tot) return idx[i];
    }
    return idx[n - 1];
}

int sl_sampler_is_argmax(const sl_sampler_state *s)
{
    const sl_sampling *p = &s->p;
    return !s->penalize && !p->logprobs && p->top_logprobs <= 0 &&
           (p->temperature <= 0.0f || p->top_k == 1);
}

void sl_sampler_take(sl_sampler_state *s, int32_t token, sl_sample *out)
{
    memset(out, 0, sizeof *out);
    out->token = token;
    record(s, token);
}

void sl_sampler_sample(sl_sampler_state *s, float *logits, int vocab, sl_sample *out)
{
    const sl_sampling *p = &s->p;
    float *raw = NULL;
    memset(out, 0, sizeof *out);
    if (p->logprobs || p->top_logprobs > 0) {
        raw = malloc(sizeof(float) * (size_t)vocab);
        if (raw) memcpy(raw, logits, sizeof(float) * (size_t)vocab);
    }
    if (s->penalize) apply_penalties(s, logits, vocab);
    int32_t tok =
        p->temperature <= 0.0f || p->top_k == 1 ? argmax(logits, vocab) : draw(s, logits, vocab);
    out->token = tok;
    if (raw) fill_logprobs(raw, vocab, tok, p, out);
    free(raw);
    record(s, tok);
}

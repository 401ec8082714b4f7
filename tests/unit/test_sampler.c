/* Sampler front end + the CPU sampling op: greedy, filters (top-k, top-p,
 * min-p), penalties, seeded reproducibility, empirical distribution,
 * logprobs, and rows built with a pending (not yet committed) token. */
#define _GNU_SOURCE /* qsort_r */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "grammar.h"
#include "sampler.h"
#include "sampler_op.h"
#include "sl_rng.h"
#include "sl_test.h"

#define V 8
static const float base[V] = {1.0f, 3.0f, 2.5f, 0.0f, -1.0f, 2.9f, 0.5f, -3.0f};
static sl_backend *cpu;

/* One row through the op: sl_sampler_row -> CPU sl_be_sample -> (commit).
 * pending: the token sampled before but not yet committed, or -1. logits
 * must come back unchanged. Returns the token; fills *o when committing. */
static int32_t sample_row(sl_sampler_state *s, const float *logits, int nv, int32_t pending,
                          int commit, sl_sample *o)
{
    sl_sample_pen pen = {0};
    sl_sample_row row;
    sl_err e = {0};
    CHECK(sl_sampler_row(s, &row, &pen, pending >= 0 ? 0 : -1, &e) == SL_OK);
    int32_t tok = -1, pend = pending;
    float lp[2 + 2 * SL_SAMPLE_MAX_TOP];
    float *copy = malloc(sizeof(float) * (size_t)nv);
    memcpy(copy, logits, sizeof(float) * (size_t)nv);
    sl_tensor ids = sl_tensor_make(&tok, SL_DTYPE_I32, 1, (int64_t[]){1});
    sl_tensor lpt = sl_tensor_make(lp, SL_DTYPE_F32, 2, (int64_t[]){1, 2 + 2 * SL_SAMPLE_MAX_TOP});
    sl_tensor lt = sl_tensor_make(copy, SL_DTYPE_F32, 2, (int64_t[]){1, nv});
    sl_tensor pt = sl_tensor_make(&pend, SL_DTYPE_I32, 1, (int64_t[]){1});
    sl_sample_args a = {1, &row, pen.n, pen.tok, pen.out, pen.prompt, pending >= 0 ? &pt : NULL, NULL, 0, 0};
    sl_be_sample(cpu, &ids, &lpt, &lt, &a);
    CHECK(memcmp(copy, logits, sizeof(float) * (size_t)nv) == 0);
    CHECK(tok >= 0 && tok < nv);
    if (commit) sl_sampler_commit(s, tok, row.logprobs ? lp : NULL, o);
    free(copy);
    sl_sample_pen_free(&pen);
    return tok;
}

static int32_t sample_once(sl_sampler_state *s)
{
    sl_sample o;
    return sample_row(s, base, V, -1, 1, &o);
}

static void test_greedy_and_logprobs(void)
{
    sl_sampling p = {
        .temperature = 0, .top_p = 1, .repetition_penalty = 1, .logprobs = 1, .top_logprobs = 3};
    sl_sampler_state *s = sl_sampler_state_new(&p, NULL, 0, 1);
    sl_sample o;
    CHECK(sample_row(s, base, V, -1, 1, &o) == 1);
    CHECK(o.token == 1);
    double z = 0;
    for (int i = 0; i < V; i++)
        z += exp(base[i]);
    CHECK(fabs(o.logprob - (3.0 - log(z))) < 1e-5);
    CHECK(o.n_top == 3 && o.top_ids[0] == 1 && o.top_ids[1] == 5 && o.top_ids[2] == 2);
    CHECK(fabs(o.top_logprobs[1] - (2.9 - log(z))) < 1e-5);
    CHECK(sl_sampler_last_token(s) == 1);
    sl_sampler_state_free(s);
}

static void test_penalties(void)
{
    /* repetition 2 on token 1 (in the prompt): 3/2 = 1.5 < 2.9 -> 5 wins */
    int32_t prompt[2] = {1, 7};
    sl_sampling p = {.temperature = 0, .top_p = 1, .repetition_penalty = 2.0f};
    sl_sampler_state *s = sl_sampler_state_new(&p, prompt, 2, 1);
    CHECK(sample_once(s) == 5);
    /* token 5 is now an output: 2.9/2 = 1.45; next best 2.5 (token 2) */
    CHECK(sample_once(s) == 2);
    sl_sampler_state_free(s);
    /* frequency: each output of a token lowers it by 0.3 per occurrence */
    sl_sampling f = {
        .temperature = 0, .top_p = 1, .repetition_penalty = 1, .frequency_penalty = 0.3f};
    s = sl_sampler_state_new(&f, NULL, 0, 1);
    CHECK(sample_once(s) == 1); /* 3.0 */
    CHECK(sample_once(s) == 5); /* 1 now 2.7 < 2.9 */
    CHECK(sample_once(s) == 1); /* 2.7 > 2.6 (5) and > 2.5 */
    sl_sampler_state_free(s);
    /* presence: a flat 1.0 off anything already generated */
    sl_sampling pr = {
        .temperature = 0, .top_p = 1, .repetition_penalty = 1, .presence_penalty = 1.0f};
    s = sl_sampler_state_new(&pr, NULL, 0, 1);
    CHECK(sample_once(s) == 1 && sample_once(s) == 5 && sample_once(s) == 2);
    CHECK(sample_once(s) == 1); /* everything seen: 2.0, 1.9, 1.5, 1.0 (token 0) */
    sl_sampler_state_free(s);
}

static void test_filters_and_distribution(void)
{
    enum { N = 20000 };
    int hist[V];
    /* temperature 1: frequencies follow softmax */
    sl_sampling p = {
        .temperature = 1.0f, .top_p = 1, .repetition_penalty = 1, .has_seed = 1, .seed = 99};
    sl_sampler_state *s = sl_sampler_state_new(&p, NULL, 0, 1);
    memset(hist, 0, sizeof hist);
    for (int i = 0; i < N; i++)
        hist[sample_once(s)]++;
    double z = 0;
    for (int i = 0; i < V; i++)
        z += exp(base[i]);
    for (int i = 0; i < V; i++)
        CHECK_MSG(fabs(hist[i] / (double)N - exp(base[i]) / z) < 0.015, "token %d: %d", i, hist[i]);
    sl_sampler_state_free(s);
    /* top-k 2: only tokens 1 and 5 */
    p.top_k = 2;
    s = sl_sampler_state_new(&p, NULL, 0, 1);
    memset(hist, 0, sizeof hist);
    for (int i = 0; i < 2000; i++)
        hist[sample_once(s)]++;
    CHECK(hist[1] + hist[5] == 2000 && hist[1] > hist[5] && hist[5] > 500);
    sl_sampler_state_free(s);
    /* top-p 0.6: p(1)=.36 p(5)=.33 p(2)=.22 -> {1, 5} reach .69 */
    p.top_k = 0;
    p.top_p = 0.6f;
    s = sl_sampler_state_new(&p, NULL, 0, 1);
    memset(hist, 0, sizeof hist);
    for (int i = 0; i < 2000; i++)
        hist[sample_once(s)]++;
    CHECK(hist[1] + hist[5] == 2000 && hist[5] > 500);
    sl_sampler_state_free(s);
    /* min-p 0.5: keeps p >= 0.5·p(1): tokens 1, 5, 2 (e^-0.5 = .61) */
    p.top_p = 1;
    p.min_p = 0.5f;
    s = sl_sampler_state_new(&p, NULL, 0, 1);
    memset(hist, 0, sizeof hist);
    for (int i = 0; i < 3000; i++)
        hist[sample_once(s)]++;
    CHECK(hist[1] + hist[5] + hist[2] == 3000 && hist[2] > 300);
    sl_sampler_state_free(s);
}

static void test_seed_reproducible(void)
{
    sl_sampling p = {.temperature = 0.8f,
                     .top_p = 0.95f,
                     .top_k = 5,
                     .repetition_penalty = 1,
                     .has_seed = 1,
                     .seed = 1234};
    sl_sampler_state *a = sl_sampler_state_new(&p, NULL, 0, 1);
    sl_sampler_state *b = sl_sampler_state_new(&p, NULL, 0, 2); /* rid differs: seed rules */
    int same = 1, distinct = 0;
    int32_t first = -1;
    for (int i = 0; i < 64; i++) {
        int32_t x = sample_once(a), y = sample_once(b);
        same &= x == y;
        if (first < 0) first = x;
        distinct |= x != first;
    }
    CHECK(same && distinct);
    sl_sampler_state_free(a);
    sl_sampler_state_free(b);
    /* resuming: a fresh state that is told the earlier outputs continues alike */
    a = sl_sampler_state_new(&p, NULL, 0, 1);
    int32_t seq[10];
    for (int i = 0; i < 10; i++)
        seq[i] = sample_once(a);
    b = sl_sampler_state_new(&p, NULL, 0, 1);
    sl_sampler_state_add_output(b, seq, 6);
    for (int i = 6; i < 10; i++)
        CHECK(sample_once(b) == seq[i]);
    sl_sampler_state_free(a);
    sl_sampler_state_free(b);
}

/* Reference: full sort of the vocabulary, then the same filters and draw. */
static int cmp_desc(const void *a, const void *b, void *ctx)
{
    const float *p = ctx;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (p[x] != p[y]) return p[x] > p[y] ? -1 : 1;
    return x < y ? -1 : 1;
}

static int32_t reference_draw(const float *logits, int nv, const sl_sampling *p, float u)
{
    float *pr = malloc(sizeof(float) * (size_t)nv);
    int32_t *idx = malloc(sizeof(int32_t) * (size_t)nv);
    float mx = logits[0];
    for (int i = 1; i < nv; i++)
        mx = logits[i] > mx ? logits[i] : mx;
    double sum = 0;
    for (int i = 0; i < nv; i++) {
        pr[i] = expf((logits[i] - mx) * (1.0f / p->temperature));
        sum += pr[i];
    }
    for (int i = 0; i < nv; i++)
        pr[i] = (float)(pr[i] / sum);
    for (int i = 0; i < nv; i++)
        idx[i] = i;
    qsort_r(idx, (size_t)nv, sizeof *idx, cmp_desc, pr);
    int n = p->top_k > 0 && p->top_k < nv ? p->top_k : nv;
    double tot = 0, acc = 0;
    for (int i = 0; i < n; i++)
        tot += pr[idx[i]];
    if (p->top_p < 1.0f)
        for (int i = 0; i < n; i++) {
            acc += pr[idx[i]];
            if (acc >= p->top_p * tot) {
                n = i + 1;
                break;
            }
        }
    if (p->min_p > 0)
        while (n > 1 && pr[idx[n - 1]] < p->min_p * pr[idx[0]])
            n--;
    tot = acc = 0;
    for (int i = 0; i < n; i++)
        tot += pr[idx[i]];
    int32_t tok = idx[n - 1];
    for (int i = 0; i < n; i++) {
        acc += pr[idx[i]];
        if (acc > u * tot) {
            tok = idx[i];
            break;
        }
    }
    free(pr);
    free(idx);
    return tok;
}

/* The partial selection gives exactly the draws of a full sort. */
static void test_selection_matches_full_sort(void)
{
    enum { VB = 5000 };
    static float logits[VB];
    const sl_sampling cases[] = {
        {.temperature = 1.0f, .top_p = 0.9f, .repetition_penalty = 1, .has_seed = 1, .seed = 3},
        {.temperature = 0.7f,
         .top_p = 0.8f,
         .top_k = 20,
         .repetition_penalty = 1,
         .has_seed = 1,
         .seed = 4},
        {.temperature = 1.3f,
         .top_p = 0.99f,
         .min_p = 0.05f,
         .repetition_penalty = 1,
         .has_seed = 1,
         .seed = 5},
        {.temperature = 1.0f,
         .top_p = 1.0f,
         .top_k = 300,
         .repetition_penalty = 1,
         .has_seed = 1,
         .seed = 6},
    };
    int mismatches = 0;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        sl_sampler_state *s = sl_sampler_state_new(&cases[c], NULL, 0, 1);
        for (int step = 0; step < 40; step++) {
            for (int i = 0; i < VB; i++) /* peaked, with ties */
                logits[i] =
                    (float)((int)(sl_rng_uniform(c * 100 + (uint64_t)step, (uint64_t)i) * 40)) *
                    0.25f;
            float u = sl_rng_uniform(cases[c].seed, (uint64_t)step);
            int32_t want = reference_draw(logits, VB, &cases[c], u);
            sl_sample o;
            mismatches += sample_row(s, logits, VB, -1, 1, &o) != want;
        }
        sl_sampler_state_free(s);
    }
    CHECK_MSG(mismatches == 0, "%d draws differ from the full-sort reference", mismatches);
}

/* A pending token counts as one more output (merged into its entry, or an
 * entry of its own) and moves the draw to the next output index: a row built
 * with it pending samples what a row built after committing it samples. */
static void test_pending(void)
{
    sl_sampling f = {
        .temperature = 0, .top_p = 1, .repetition_penalty = 1, .frequency_penalty = 0.3f};
    sl_sampler_state *s = sl_sampler_state_new(&f, NULL, 0, 1);
    sl_sample o;
    /* no entry yet: pending 1 becomes (1, out 1): 2.7 < 2.9 */
    CHECK(sample_row(s, base, V, 1, 0, &o) == 5);
    CHECK(sample_once(s) == 1);
    /* entry (1, out 1) + pending 1 -> out 2: 2.4; 5 (2.9) wins */
    CHECK(sample_row(s, base, V, 1, 0, &o) == 5);
    /* pending 5 on top of (1, out 1): 1 at 2.7 beats 5 at 2.6 */
    CHECK(sample_row(s, base, V, 5, 0, &o) == 1);
    sl_sampler_state_free(s);
    /* repetition + presence: pending 1 penalised only as an output */
    sl_sampling r = {.temperature = 0,
                     .top_p = 1,
                     .repetition_penalty = 2.0f,
                     .presence_penalty = 0.5f};
    int32_t prompt[1] = {5};
    s = sl_sampler_state_new(&r, prompt, 1, 1);
    /* 1: 3/2 - 0.5 = 1.0; 5 (prompt): 1.45; 2: 2.5 */
    CHECK(sample_row(s, base, V, 1, 0, &o) == 2);
    sl_sampler_state_free(s);
    /* seeded draws with penalties: a pipelined state (each row built while
     * the previous token is pending) samples the sequential sequence */
    sl_sampling p = {.temperature = 0.9f,
                     .top_p = 0.9f,
                     .top_k = 6,
                     .repetition_penalty = 1.3f,
                     .frequency_penalty = 0.2f,
                     .presence_penalty = 0.1f,
                     .has_seed = 1,
                     .seed = 77};
    sl_sampler_state *a = sl_sampler_state_new(&p, prompt, 1, 1);
    sl_sampler_state *b = sl_sampler_state_new(&p, prompt, 1, 1);
    int32_t prev = sample_row(a, base, V, -1, 0, &o); /* committed one step late */
    int same = prev == sample_once(b), distinct = 0;
    for (int i = 0; i < 200; i++) {
        int32_t next = sample_row(a, base, V, prev, 0, &o); /* a runs one token ahead */
        sl_sampler_commit(a, prev, NULL, &o);
        same &= next == sample_once(b);
        distinct |= next != prev;
        prev = next;
    }
    CHECK(distinct);
    CHECK(same);
    sl_sampler_state_free(a);
    sl_sampler_state_free(b);
}

/* Ids name states across threads: a removed state's id, and {0}, look up
 * as NULL even after its entry is reused. */
static void test_table_ids(void)
{
    sl_err e = {0};
    sl_sampler_table *t;
    CHECK(sl_sampler_table_new(&t, &e) == SL_OK);
    sl_sampling p = {.top_p = 1, .repetition_penalty = 1};
    sl_sampler_id ids[3000];
    for (int i = 0; i < 3000; i++) /* spans several segments */
        CHECK(sl_sampler_table_add(t, sl_sampler_state_new(&p, NULL, 0, (uint64_t)i), &ids[i], &e) ==
              SL_OK);
    CHECK(sl_sampler_table_get(t, (sl_sampler_id){0}) == NULL);
    sl_sampler_state *s5 = sl_sampler_table_get(t, ids[5]);
    CHECK(s5 && s5 != sl_sampler_table_get(t, ids[2999]));
    sl_sampler_table_remove(t, ids[5]);
    CHECK(sl_sampler_table_get(t, ids[5]) == NULL);
    sl_sampler_id again;
    CHECK(sl_sampler_table_add(t, sl_sampler_state_new(&p, NULL, 0, 7), &again, &e) == SL_OK);
    CHECK(again.v != ids[5].v && sl_sampler_table_get(t, again));
    CHECK(sl_sampler_table_get(t, ids[5]) == NULL);
    sl_sampler_table_remove(t, ids[5]); /* stale: ignored */
    CHECK(sl_sampler_table_get(t, again));
    sl_sampler_table_free(t); /* frees the states left */
}

/* One greedy draw with s's grammar mask (when it constrains this token), committed. */
static sl_sample draw_masked(sl_sampler_state *s, const float *logits)
{
    uint32_t bits[1] = {0};
    sl_sample_pen pen = {0};
    sl_sample_row row;
    sl_err e = {0};
    CHECK(sl_sampler_row(s, &row, &pen, -1, &e) == SL_OK);
    int masked = sl_sampler_fill_mask(s, bits, 1, V);
    if (masked) row.mask_row = 0;
    int32_t tok = -1;
    sl_tensor ids = sl_tensor_make(&tok, SL_DTYPE_I32, 1, (int64_t[]){1});
    sl_tensor lt = sl_tensor_make((float *)logits, SL_DTYPE_F32, 2, (int64_t[]){1, V});
    sl_sample_args a = {1, &row, pen.n, pen.tok, pen.out, pen.prompt, NULL, masked ? bits : NULL, 1, 1};
    sl_be_sample(cpu, &ids, NULL, &lt, &a);
    CHECK(!masked || (bits[0] >> tok & 1));
    sl_sample o;
    sl_sampler_commit(s, tok, NULL, &o);
    sl_sample_pen_free(&pen);
    return o;
}

static void test_grammar(void)
{
    /* ids: a b ab { } 1 2 <eos> */
    static const char *const tok[V] = {"a", "b", "ab", "{", "}", "1", "2", NULL};
    size_t len[V];
    for (int i = 0; i < V; i++) len[i] = tok[i] ? strlen(tok[i]) : 0;
    sl_gram_vocab *v;
    sl_err e = {0};
    CHECK_MSG(sl_gram_vocab_new(tok, len, V, NULL, 0, &v, &e) == SL_OK, "%s", e.msg);
    const char *braces = "root ::= \"{\" [12]{1,2} \"}\"";
    sl_gram *g;
    CHECK_MSG(sl_gram_compile(braces, strlen(braces), &g, &e) == SL_OK, "%s", e.msg);
    sl_sampling p = {.temperature = 0, .top_p = 1, .repetition_penalty = 1};
    int32_t eos = 7, start = 1;

    /* the grammar starts after "b" (the first, unconstrained draw: argmax 1),
     * then forces { 1 1 } (greedy among the allowed) and ends the request */
    sl_sampler_state *s = sl_sampler_state_new(&p, NULL, 0, 1);
    sl_gram_matcher *m;
    CHECK(sl_gram_matcher_new(g, v, &m, &e) == SL_OK);
    CHECK(sl_sampler_set_grammar(s, m, &eos, 1, &start, 1, &e) == SL_OK);
    CHECK(sl_sampler_constrained(s) && !sl_sampler_is_argmax(s));
    static const int32_t want[5] = {1, 3, 5, 5, 4};
    for (int i = 0; i < 5; i++) {
        sl_sample o = draw_masked(s, base);
        CHECK_MSG(o.token == want[i], "step %d: token %d, want %d", i, (int)o.token, (int)want[i]);
        CHECK(o.complete == (i == 4));
    }
    sl_sampler_state_free(s);

    /* an end id is allowed once the grammar can end, and ends it */
    const char *digits = "root ::= [12]+";
    sl_gram *g2;
    CHECK(sl_gram_compile(digits, strlen(digits), &g2, &e) == SL_OK);
    float l[V];
    memcpy(l, base, sizeof l);
    l[7] = 5.0f; /* eos is the argmax whenever it is allowed */
    s = sl_sampler_state_new(&p, NULL, 0, 2);
    CHECK(sl_gram_matcher_new(g2, v, &m, &e) == SL_OK);
    CHECK(sl_sampler_set_grammar(s, m, &eos, 1, NULL, 0, &e) == SL_OK);
    sl_sample o = draw_masked(s, l);
    CHECK(o.token == 5 && !o.complete);
    o = draw_masked(s, l);
    CHECK(o.token == 7 && o.complete);
    sl_sampler_state_free(s);

    /* a migrated output replays through the grammar: { 1 then 1 or } */
    s = sl_sampler_state_new(&p, NULL, 0, 3);
    CHECK(sl_gram_matcher_new(g, v, &m, &e) == SL_OK);
    CHECK(sl_sampler_set_grammar(s, m, &eos, 1, NULL, 0, &e) == SL_OK);
    sl_sampler_state_add_output(s, (const int32_t[]){3, 6, 6}, 3);
    o = draw_masked(s, base);
    CHECK(o.token == 4 && o.complete);
    sl_sampler_state_free(s);
    sl_gram_free(g);
    sl_gram_free(g2);
    sl_gram_vocab_free(v);
}

/* min-p above 1 on a masked row (the id-order draw): the top allowed token, never id 0
 * (the walk's fallback when min-p kept nothing, which the mask excludes) */
static void test_mask_min_p(void)
{
    sl_sample_row row = {.temperature = 1.0f, .top_p = 1.0f, .min_p = 1.5f, .repetition_penalty = 1.0f,
                         .pending = -1, .mask_row = 0, .u = 0.5f};
    uint32_t bits[1] = {1u << 2 | 1u << 5};
    int32_t tok = -1;
    sl_tensor ids = sl_tensor_make(&tok, SL_DTYPE_I32, 1, (int64_t[]){1});
    sl_tensor lt = sl_tensor_make((float *)base, SL_DTYPE_F32, 2, (int64_t[]){1, V});
    sl_sample_args a = {1, &row, 0, NULL, NULL, NULL, NULL, bits, 1, 1};
    sl_be_sample(cpu, &ids, NULL, &lt, &a);
    CHECK_MSG(tok == 5, "token %d, want 5 (the top allowed one)", (int)tok);
}

int main(void)
{
    cpu = sl_backend_cpu_new();
    CHECK(cpu && sl_be_supports_op(cpu, SL_OP_SAMPLE));
    test_selection_matches_full_sort();
    test_greedy_and_logprobs();
    test_penalties();
    test_filters_and_distribution();
    test_seed_reproducible();
    test_pending();
    test_table_ids();
    test_grammar();
    test_mask_min_p();
    sl_backend_free(cpu);
    return sl_test_done("test_sampler");
}

/* tests/gpu/ops/ops_sample.c: sampling (every parameter mix on several kinds of logits). */
#include <math.h>
#include <string.h>

#include "harness.h"

enum { SMIX = 16, SPEN = 30 };

/* Parameter mix m of a sample row; penalised mixes get pen entries. */
static int sample_mix(sl_sample_row *w, int m)
{
    *w = (sl_sample_row){.temperature = 1.0f, .top_p = 1.0f, .repetition_penalty = 1.0f, .pending = -1};
    int pen = 0;
    switch (m) {
    case 0: w->temperature = 0.0f; break;                       /* greedy */
    case 1: w->temperature = 0.8f; w->logprobs = 1; w->n_top = 20; break; /* temperature only */
    case 2: w->top_k = 50; break;
    case 3: w->temperature = 0.7f; w->top_p = 0.9f; break;
    case 4: w->temperature = 1.1f; w->top_k = 40; w->top_p = 0.8f; break;
    case 5: w->min_p = 0.05f; break;                            /* id-order path + min-p */
    case 6: w->temperature = 0.9f; w->top_k = 200; w->top_p = 0.95f; w->min_p = 0.1f; break;
    case 7: w->temperature = 0.9f; w->top_p = 0.95f; w->logprobs = 1; w->n_top = 5; pen = 1; break;
    case 8: w->temperature = 0.0f; w->logprobs = 1; w->n_top = 20; pen = 1; break;
    case 9: w->temperature = 1.3f; w->top_k = 1000; w->logprobs = 1; w->n_top = 0; break;
    /* edges: most probabilities 0, top_p 0, min_p above 1 (keeps one / id-order fallback) */
    case 10: w->temperature = 0.02f; w->top_k = 300; w->top_p = 0.5f; break;
    case 11: w->temperature = 0.05f; w->min_p = 0.2f; break;
    case 12: w->top_p = 0.0f; break;
    case 13: w->min_p = 1.5f; w->top_k = 10; break;
    case 14: w->min_p = 1.5f; break;
    default: w->temperature = 2.0f; w->top_p = 0.999f; w->min_p = 0.001f; w->logprobs = 1; w->n_top = 20; break;
    }
    if (pen) {
        w->repetition_penalty = 1.3f;
        w->frequency_penalty = 0.4f;
        w->presence_penalty = 0.3f;
    }
    return pen;
}

/* The CPU op on row r alone with row parameters w (boundary checks). */
static int32_t sample_cpu_row(tb *t, const tb_pair *lg, int r, const sl_sample_row *w,
                              const sl_sample_args *a)
{
    int32_t id = -1;
    float lp[2 + 2 * SL_SAMPLE_MAX_TOP];
    sl_tensor lv = sl_tensor_rowview(&lg->c, r, 1);
    sl_tensor iv = sl_tensor_make(&id, SL_DTYPE_I32, 1, (int64_t[]){1});
    sl_tensor pv = sl_tensor_make(lp, SL_DTYPE_F32, 2, (int64_t[]){1, 2 + 2 * SL_SAMPLE_MAX_TOP});
    sl_sample_args one = *a;
    one.n_rows = 1;
    one.rows = w;
    sl_be_sample(t->cpu, &iv, &pv, &lv, &one);
    return id;
}

/* 1 when the CPU op lands on want once u (or top_p) moves by 1e-5 relative:
 * float summation order alone may then pick the neighbour. */
static int sample_at_boundary(tb *t, const tb_pair *lg, int r, const sl_sample_args *a, int32_t want)
{
    for (int k = 0; k < 4; k++) {
        sl_sample_row w = a->rows[r];
        float f = k & 1 ? 1.00001f : 0.99999f;
        if (k < 2) w.u = fminf(w.u * f, 0.99999994f);
        else if (w.top_p < 1.0f) w.top_p *= f;
        else continue;
        if (sample_cpu_row(t, lg, r, &w, a) == want) return 1;
    }
    return 0;
}

/* Case {V, R, kind}: every parameter mix on rows of logits of that kind, CUDA against the CPU op. */
static void run_sample(tb *t, int V, int R, int kind, double tol, char *desc, size_t ndesc)
{
    static const char *kinds[] = {"bf16 ties", "f32", "quarter steps"};
    tb_pair lg, ids, lp, pend;
    tb_pair_alloc(t, &lg, SL_DTYPE_F32, 2, (int64_t[]){R, V});
    float *v = malloc(sizeof(float) * (size_t)R * V);
    uint64_t s0 = sl_rng_mix(t->seed++);
    for (int64_t i = 0; i < (int64_t)R * V; i++) {
        float u = sl_rng_uniform(s0, (uint64_t)i);
        v[i] = kind == 0 ? tb_bf16_round(12.0f * u - 6.0f)
             : kind == 1 ? 16.0f * u - 8.0f
                         : (float)(int)(u * u * u * 60.0f) * 0.25f; /* few high, many low */
    }
    tb_pair_set(t, &lg, v);
    tb_pair_out(t, &ids, SL_DTYPE_I32, 1, (int64_t[]){R});
    tb_pair_out(t, &lp, SL_DTYPE_F32, 2, (int64_t[]){R, 2 + 2 * SL_SAMPLE_MAX_TOP});
    tb_pair_alloc(t, &pend, SL_DTYPE_I32, 1, (int64_t[]){R});
    sl_sample_row *rows = malloc(sizeof *rows * (size_t)R);
    int words = (V + 31) / 32;
    uint32_t *mask = malloc(sizeof(uint32_t) * (size_t)R * (size_t)words);
    int32_t *ptok = malloc(sizeof(int32_t) * (size_t)R * SPEN), *pout = malloc(sizeof(int32_t) * (size_t)R * SPEN),
            *pprm = malloc(sizeof(int32_t) * (size_t)R * SPEN), *pid = malloc(sizeof(int32_t) * (size_t)R),
            *pid_poison = malloc(sizeof(int32_t) * (size_t)R);
    sl_err e = {0};
    int rounds = (SMIX + R - 1) / R, n_bad = 0, n_boundary = 0, n_rows = 0;
    double lp_err = 0;
    for (int round = 0; round < rounds; round++) {
        int n_pen = 0;
        for (int r = 0; r < R; r++) {
            sl_sample_row *w = &rows[r];
            int m = (round * R + r) % SMIX;
            int pen = sample_mix(w, m);
            w->u = sl_rng_uniform(s0 ^ 0xabcdef, (uint64_t)(round * R + r));
            const float *row = v + (size_t)r * V;
            int best = 0;
            for (int i = 1; i < V; i++) best = row[i] > row[best] ? i : best;
            pid[r] = r % 2 ? best : (best + V / 2) % V; /* merged into an entry / an entry of its own */
            if (!pen) continue;
            w->pen_start = n_pen;
            w->pen_n = SPEN;
            w->pending = r;
            for (int j = 0; j < SPEN; j++) { /* distinct tokens, the row's top one first */
                ptok[n_pen] = (int32_t)((best + (int64_t)j * 7919) % V);
                pout[n_pen] = j % 4;
                pprm[n_pen] = j % 3 == 0;
                n_pen++;
            }
        }
        if (sl_be_upload(t->cpu, &pend.c, pid, SL_DTYPE_I32, &e) ||
            sl_be_upload(t->gpu, &pend.g, pid, SL_DTYPE_I32, &e))
            tb_die("upload", &e);
        for (int r = 0; r < R; r++) pid_poison[r] = INT32_MIN; /* every round must write every id */
        if (sl_be_upload(t->gpu, &ids.g, pid_poison, SL_DTYPE_I32, &e)) tb_die("poison", &e);
        /* every third row constrained: a sparse mask (about 2 % of the ids, always the
         * row's fifth-best region too), as a grammar gives */
        for (int r = 0; r < R; r++) {
            rows[r].mask_row = r % 3 == 1 ? r : -1;
            uint32_t *bits = mask + (size_t)r * words;
            memset(bits, 0, sizeof(uint32_t) * (size_t)words);
            for (int i = 0; i < V; i++)
                if (sl_rng_uniform(s0 ^ 0x5eed, (uint64_t)(round * R + r) * V + i) < 0.02f ||
                    i == (r * 7919 + round) % V)
                    bits[i >> 5] |= 1u << (i & 31);
        }
        sl_sample_args a = {R, rows, n_pen, ptok, pout, pprm, &pend.c, mask, R, words};
        sl_be_sample(t->cpu, &ids.c, &lp.c, &lg.c, &a);
        a.pending_ids = &pend.g;
        sl_be_sample(t->gpu, &ids.g, &lp.g, &lg.g, &a);
        a.pending_ids = &pend.c;
        float *ic = tb_download(t->cpu, &ids.c), *ig = tb_download(t->gpu, &ids.g);
        float *lc = tb_download(t->cpu, &lp.c), *lgv = tb_download(t->gpu, &lp.g);
        for (int r = 0; r < R; r++, n_rows++) {
            const uint32_t *bits = mask + (size_t)r * words;
            int32_t tc = (int32_t)ic[r], tg = (int32_t)ig[r];
            if (rows[r].mask_row >= 0 && (tc < 0 || tc >= V || tg < 0 || tg >= V ||
                                          !(bits[tc >> 5] >> (tc & 31) & 1) ||
                                          !(bits[tg >> 5] >> (tg & 31) & 1))) {
                n_bad++;
                printf("    row %d mix %d: a masked-out token (cpu %d cuda %d)\n", r,
                       (round * R + r) % SMIX, (int)tc, (int)tg);
                continue;
            }
            if (ic[r] != ig[r]) {
                if (ig[r] >= 0 && ig[r] < V && sample_at_boundary(t, &lg, r, &a, (int32_t)ig[r])) {
                    n_boundary++;
                } else {
                    n_bad++;
                    printf("    row %d mix %d: cpu %d cuda %d\n", r, (round * R + r) % SMIX,
                           (int)ic[r], (int)ig[r]);
                }
                continue;
            }
            if (!rows[r].logprobs) continue;
            const float *a1 = lc + r * (2 + 2 * SL_SAMPLE_MAX_TOP), *b1 = lgv + r * (2 + 2 * SL_SAMPLE_MAX_TOP);
            int n = (int)a1[1], ok = b1[1] == a1[1] && fabsf(a1[0] - b1[0]) <= tol;
            lp_err = fmax(lp_err, fabs((double)a1[0] - b1[0]));
            for (int j = 0; j < n && ok; j++) {
                ok = a1[2 + j] == b1[2 + j] &&
                     fabsf(a1[2 + SL_SAMPLE_MAX_TOP + j] - b1[2 + SL_SAMPLE_MAX_TOP + j]) <= tol;
                lp_err = fmax(lp_err, fabs((double)a1[2 + SL_SAMPLE_MAX_TOP + j] - b1[2 + SL_SAMPLE_MAX_TOP + j]));
            }
            if (!ok) {
                n_bad++;
                printf("    row %d mix %d: logprobs differ (n %g/%g, lp %g/%g)\n", r,
                       (round * R + r) % SMIX, a1[1], b1[1], a1[0], b1[0]);
            }
        }
        free(ic);
        free(ig);
        free(lc);
        free(lgv);
    }
    snprintf(desc, ndesc, "V=%d R=%d %s", V, R, kinds[kind]);
    /* boundary rows must stay rare: more means a real disagreement */
    int ok = n_bad == 0 && n_boundary <= 1 + n_rows / 20;
    printf("  %-4s %-12s %-44s rows %d, at a boundary %d, max|d| logprob %.2e (tol %.0e)\n",
           ok ? "ok" : "FAIL", sl_op_name(SL_OP_SAMPLE), desc, n_rows, n_boundary, lp_err, tol);
    if (ok) t->n_pass++;
    else t->n_fail++;
    CHECK_MSG(ok, "sample %s", desc);
    free(v);
    free(rows);
    free(mask);
    free(ptok);
    free(pout);
    free(pprm);
    free(pid);
    free(pid_poison);
    tb_pair_free(t, &lg);
    tb_pair_free(t, &ids);
    tb_pair_free(t, &lp);
    tb_pair_free(t, &pend);
}

static const tb_case cases[] = {
    /* sample: V, R, logits (0: bf16-rounded uniform, ties; 1: f32 uniform; 2: quarter steps,
     * peaked, many ties). Ids exact but for rows at a draw/top-p boundary; logprobs 1e-4 abs. */
    {SL_OP_SAMPLE, F32, {1000, 1, 0}, 1e-4},
    {SL_OP_SAMPLE, F32, {1000, 7, 1}, 1e-4},
    {SL_OP_SAMPLE, F32, {1000, 64, 2}, 1e-4},
    {SL_OP_SAMPLE, F32, {32000, 1, 1}, 1e-4},
    {SL_OP_SAMPLE, F32, {32000, 7, 2}, 1e-4},
    {SL_OP_SAMPLE, F32, {32000, 64, 0}, 1e-4},
    {SL_OP_SAMPLE, F32, {151936, 1, 2}, 1e-4},
    {SL_OP_SAMPLE, F32, {151936, 7, 0}, 1e-4},
    {SL_OP_SAMPLE, F32, {151936, 64, 1}, 1e-4},
};

static void sample_run(tb *t, const tb_case *c)
{
    char desc[96];
    run_sample(t, c->p[0], c->p[1], c->p[2], c->tol, desc, sizeof desc);
}

/* sample at V = 151936 (Qwen3): R rows, one parameter mix for all of them; median of 30 calls
 * timed with events, logits rotated through more than the L2. */
#define SAMPLE_SETS 8
static void perf_sample(tb *t, int R)
{
    enum { V = 151936, REPS = 30 };
    const int reps = REPS;
    static const struct { const char *n; float temp, top_p, min_p; int top_k, logprobs; } mix[] = {
        {"temperature 0.8", 0.8f, 1.0f, 0.0f, 0, 0},
        {"top-k 50 top-p 0.9", 0.8f, 0.9f, 0.0f, 50, 0},
        {"top-p 0.95", 1.0f, 0.95f, 0.0f, 0, 0},
        {"min-p 0.05 + logprobs 20", 1.0f, 1.0f, 0.05f, 0, 1},
        {"greedy + penalties 64/row", 0.0f, 1.0f, 0.0f, 0, 0},
    };
    enum { NPEN = 64 };
    sl_tensor lg[SAMPLE_SETS], ids, lp;
    sl_sample_row *rows = malloc(sizeof *rows * (size_t)R);
    int32_t *ptok = malloc(sizeof(int32_t) * (size_t)R * NPEN), *pcnt = malloc(sizeof(int32_t) * (size_t)R * NPEN);
    int64_t ne[2];
    int ns = (int)(TB_L2_ROTATE / ((int64_t)R * V * 4) + 1);
    if (ns > SAMPLE_SETS) ns = SAMPLE_SETS;
    for (int i = 0; i < ns; i++) lg[i] = tb_gpu_rand(t, F32, 2, (tb_ne2(ne, R, V), ne), 8.0f);
    ids = tb_gpu_rand(t, SL_DTYPE_I32, 1, (ne[0] = R, ne), 0.0f);
    lp = tb_gpu_rand(t, F32, 2, (tb_ne2(ne, R, 2 + 2 * SL_SAMPLE_MAX_TOP), ne), 0.0f);
    for (int i = 0; i < R * NPEN; i++) {
        ptok[i] = (int32_t)((i * 7919) % V);
        pcnt[i] = 1 + i % 3;
    }
    cudaStream_t s = (cudaStream_t)sl_cuda_stream(t->gpu);
    cudaEvent_t ev[2 * REPS];
    float ms[REPS];
    for (int i = 0; i < 2 * reps; i++) TB_CK(cudaEventCreate(&ev[i]));
    for (size_t m = 0; m < sizeof mix / sizeof mix[0]; m++) {
        int pen = mix[m].temp <= 0.0f;
        for (int r = 0; r < R; r++)
            rows[r] = (sl_sample_row){.temperature = mix[m].temp,
                                      .top_k = mix[m].top_k,
                                      .top_p = mix[m].top_p,
                                      .min_p = mix[m].min_p,
                                      .repetition_penalty = pen ? 1.2f : 1.0f,
                                      .frequency_penalty = pen ? 0.5f : 0.0f,
                                      .u = sl_rng_uniform(t->seed, (uint64_t)r),
                                      .logprobs = mix[m].logprobs,
                                      .n_top = mix[m].logprobs ? 20 : 0,
                                      .pen_start = r * NPEN,
                                      .pen_n = pen ? NPEN : 0,
                                      .pending = -1};
        sl_sample_args a = {R, rows, R * NPEN, ptok, pcnt, pcnt, NULL, NULL, 0, 0};
        for (int i = 0; i < 3; i++) sl_be_sample(t->gpu, &ids, &lp, &lg[i % ns], &a);
        for (int i = 0; i < reps; i++) {
            TB_CK(cudaEventRecord(ev[2 * i], s));
            sl_be_sample(t->gpu, &ids, &lp, &lg[i % ns], &a);
            TB_CK(cudaEventRecord(ev[2 * i + 1], s));
        }
        TB_CK(cudaStreamSynchronize(s));
        for (int i = 0; i < reps; i++) TB_CK(cudaEventElapsedTime(&ms[i], ev[2 * i], ev[2 * i + 1]));
        qsort(ms, (size_t)reps, sizeof(float), tb_cmp_float);
        printf("PERF sample       R=%-3d V=%d %-28s %9.1f us per call\n", R, V, mix[m].n, ms[reps / 2] * 1e3);
    }
    for (int i = 0; i < 2 * reps; i++) cudaEventDestroy(ev[i]);
    for (int i = 0; i < ns; i++) sl_be_release(t->gpu, &lg[i]);
    sl_be_release(t->gpu, &ids);
    sl_be_release(t->gpu, &lp);
    free(rows);
    free(ptok);
    free(pcnt);
}


static void sample_perf(tb *t, const char *filter)
{
    if (tb_perf_on(filter, SL_OP_SAMPLE)) {
        perf_sample(t, 1);
        perf_sample(t, 64);
    }
}

const tb_family tb_family_sample = {cases, sizeof cases / sizeof cases[0], sample_run, sample_perf};

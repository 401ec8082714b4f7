/* Stress: 300 requests of random lengths sharing prefixes, submitted while
 * the engine runs, with random aborts, on a memory budget small enough to
 * force cache eviction and retraction. Every request that is not aborted
 * must produce exactly its cold greedy output; the accounting is checked
 * after every step; at the end every page and slot is free again. Then the
 * same workload with seeded sampling must give identical outputs with
 * overlap scheduling on and off. */
#include "engine_harness.h"

enum { NREQ = 300, STEMS = 6, STEM = 150 };

typedef struct workload {
    int32_t prompt[NREQ][STEM + 32];
    int n[NREQ], max_new[NREQ];
    cold_ref ref[NREQ];
} workload;

static void make_workload(workload *w, sl_model *m, uint64_t seed)
{
    int32_t stem[STEMS][STEM];
    for (int k = 0; k < STEMS; k++)
        for (int i = 0; i < STEM; i++)
            stem[k][i] = 1 + (int)(sl_rng_uniform(seed + 1000 + (uint64_t)k, (uint64_t)i) * 120);
    for (int r = 0; r < NREQ; r++) {
        uint64_t rs = seed * 7919 + (uint64_t)r;
        int k = (int)(sl_rng_uniform(rs, 0) * STEMS);
        int shared = (int)(sl_rng_uniform(rs, 1) * STEM);
        int tail = 1 + (int)(sl_rng_uniform(rs, 2) * 24);
        memcpy(w->prompt[r], stem[k], sizeof(int32_t) * (size_t)shared);
        for (int i = 0; i < tail; i++)
            w->prompt[r][shared + i] = 1 + (int)(sl_rng_uniform(rs, 10 + (uint64_t)i) * 120);
        w->n[r] = shared + tail;
        w->max_new[r] = 1 + (int)(sl_rng_uniform(rs, 3) * 24);
        if (m) harness_cold(m, w->prompt[r], w->n[r], w->max_new[r], &w->ref[r]);
    }
}

static sl_engine *engine_for(sl_model *m, int P, int overlap, sl_mamba_strategy strat)
{
    sl_engine_config c;
    sl_engine_config_default(&c);
    c.page_size = P;
    c.overlap = overlap;
    c.strategy = strat;
    c.max_total_tokens = 600; /* ~4 long requests: forces eviction and retraction */
    c.max_mamba_slots = 40;
    c.max_running = 12;
    c.context_len = 400;
    c.chunked_prefill_size = 64;
    c.track_interval = P > 8 ? P : 8;
    sl_engine *eng = NULL;
    sl_err e = {0};
    CHECK_MSG(sl_engine_new(&eng, m, &c, &e) == SL_OK, "%s", e.msg);
    return eng;
}

static void stress(const char *arch, sl_model *m, workload *w, int P, int overlap,
                   sl_mamba_strategy strat)
{
    sl_engine *eng = engine_for(m, P, overlap, strat);
    if (!eng) return;
    static got gs[NREQ];
    memset(gs, 0, sizeof gs);
    collector col = {.g = gs, .n = NREQ};
    int aborted[NREQ] = {0}, submitted = 0, steps = 0;
    sl_err e = {0};
    uint64_t seed = 4242 + (uint64_t)P;
    while (submitted < NREQ || !sl_engine_idle(eng)) {
        int burst = 1 + (int)(sl_rng_uniform(seed, (uint64_t)steps * 4) * 4);
        for (int k = 0; k < burst && submitted < NREQ; k++, submitted++) {
            sl_sched_req r = harness_req((uint64_t)submitted, w->prompt[submitted], w->n[submitted],
                                         w->max_new[submitted]);
            CHECK_MSG(sl_engine_submit(eng, &r, &e) == SL_OK, "%s", e.msg);
        }
        if (submitted && sl_rng_uniform(seed, (uint64_t)steps * 4 + 1) < 0.1f) {
            /* mostly recent requests, which are likely queued or running */
            int back = (int)(sl_rng_uniform(seed, (uint64_t)steps * 4 + 2) * 24);
            int victim = submitted - 1 - (back < submitted ? back : submitted - 1);
            if (sl_engine_abort(eng, (uint64_t)victim)) aborted[victim] = 1;
        }
        if (sl_engine_step(eng, NULL, &e) != SL_OK) {
            CHECK_MSG(0, "step: %s", e.msg);
            break;
        }
        harness_drain(eng, &col);
        if (sl_engine_check(eng, &e) != SL_OK) {
            CHECK_MSG(0, "%s P=%d step %d: %s", arch, P, steps, e.msg);
            break;
        }
        if (++steps > 100000) {
            CHECK_MSG(0, "%s: engine does not finish", arch);
            break;
        }
    }
    int n_aborted = 0, bad = 0;
    for (int r = 0; r < NREQ; r++) {
        if (aborted[r]) {
            n_aborted++;
            CHECK(gs[r].finish == SL_FINISH_ABORT);
            continue;
        }
        int ok = (gs[r].finish == SL_FINISH_STOP || gs[r].finish == SL_FINISH_LENGTH) &&
                 same_tokens(&gs[r], &w->ref[r]);
        if (!ok && bad++ < 5)
            CHECK_MSG(0, "%s P=%d overlap=%d: request %d (%d tokens) gave %d tokens, finish %d",
                      arch, P, overlap, r, w->n[r], gs[r].n_out, gs[r].finish);
    }
    CHECK_MSG(!bad, "%s P=%d overlap=%d: %d requests differ from their cold run", arch, P, overlap,
              bad);
    sl_sched_stats st;
    sl_engine_stats(eng, &st);
    printf("%s P=%d overlap=%d %s: %d steps, %d aborted, %lld retractions, %lld pages evicted, "
           "hit rate %.2f\n",
           arch, P, overlap, strat == SL_MAMBA_NO_BUFFER ? "no_buffer" : "extra_buffer", steps,
           n_aborted, (long long)st.retractions, (long long)st.evicted_pages,
           st.prompt_tokens ? (double)st.cached_tokens / (double)st.prompt_tokens : 0.0);
    CHECK(n_aborted > 5 && st.retractions > 0 && st.evicted_pages > 0 && st.cached_tokens > 0);
    CHECK(st.running == 0 && st.queued == 0);
    sl_engine_flush_cache(eng);
    sl_engine_stats(eng, &st);
    CHECK_MSG(st.free_pages == st.total_pages && st.free_slots == st.total_slots,
              "%s: %d/%d pages, %d/%d slots free", arch, st.free_pages, st.total_pages,
              st.free_slots, st.total_slots);
    sl_engine_free(eng);
}

/* Seeded sampling for every other request: overlap on and off agree. */
static void overlap_equivalence(const char *arch, sl_model *m, workload *w)
{
    enum { N = 60 };
    static got gs[2][N];
    memset(gs, 0, sizeof gs);
    for (int ov = 0; ov < 2; ov++) {
        sl_engine *eng = engine_for(m, 4, ov, SL_MAMBA_EXTRA_BUFFER);
        if (!eng) return;
        collector col = {.g = gs[ov], .n = N};
        sl_err e = {0};
        for (int r = 0; r < N; r++) {
            sl_sched_req q = harness_req((uint64_t)r, w->prompt[r], w->n[r], w->max_new[r] + 4);
            if (r % 2) {
                q.sampling.temperature = 0.9f;
                q.sampling.top_p = 0.9f;
                q.sampling.top_k = 40;
                q.sampling.has_seed = 1;
                q.sampling.seed = 1000 + (uint64_t)r;
                q.sampling.frequency_penalty = 0.2f;
            }
            CHECK(sl_engine_submit(eng, &q, &e) == SL_OK);
        }
        harness_run(eng, &col, 1);
        sl_engine_free(eng);
    }
    int diff = 0;
    for (int r = 0; r < N; r++)
        diff += gs[0][r].n_out != gs[1][r].n_out ||
                memcmp(gs[0][r].out, gs[1][r].out, sizeof(int32_t) * (size_t)gs[0][r].n_out) ||
                gs[0][r].finish != gs[1][r].finish || !gs[0][r].finish;
    CHECK_MSG(diff == 0, "%s: %d of %d requests differ between overlap on and off", arch, diff, N);
}

int main(void)
{
    const char *arches[] = {"qwen3", "qwen3_moe", "qwen3_next"};
    static workload w;
    for (int a = 0; a < 3; a++) {
        sl_backend *be = NULL;
        sl_model *m = harness_micro_model(arches[a], &be);
        CHECK(m != NULL);
        if (!m) continue;
        make_workload(&w, m, 1 + (uint64_t)a);
        stress(arches[a], m, &w, 4, 1, SL_MAMBA_EXTRA_BUFFER);
        stress(arches[a], m, &w, 1, 0, SL_MAMBA_EXTRA_BUFFER);
        if (a == 2) {
            stress(arches[a], m, &w, 1, 0, SL_MAMBA_NO_BUFFER);
        }
        overlap_equivalence(arches[a], m, &w);
        for (int r = 0; r < NREQ; r++)
            free(w.ref[r].first_logits);
        sl_model_free(m);
        sl_backend_free(be);
    }
    return sl_test_done("test_engine_stress");
}

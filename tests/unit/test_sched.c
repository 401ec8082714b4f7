/* Scheduler without a model: a fake runner answers every sampled row with a
 * token derived from (rid, position). Covers chunk sizes, mixed batches,
 * --max-running-requests, priority, retraction and resumption, abort freeing
 * memory at once, overlap's feed_last, and times the scheduler per step. */
#include <string.h>
#include <time.h>

#include "scheduler.h"
#include "sl_test.h"

static int32_t fake_token(uint64_t rid, int pos)
{
    return 1 + (int32_t)((rid * 7 + (uint64_t)pos * 13) % 97);
}

/* Answers every sampled sequence of b. */
static void fake_run(sl_sched_batch *b)
{
    for (int r = 0; r < b->n_rows; r++) {
        int s = b->row_seq[r];
        memset(&b->out[s], 0, sizeof b->out[s]);
        b->out[s].token = fake_token(b->rid[s], b->pos[b->rows[r]]);
    }
}

static sl_sched *make_mixed(int P, int pages, int max_running, int chunk, int mixed, int overlap)
{
    sl_sched_config c = {.page_size = P,
                         .n_pages = pages,
                         .max_running = max_running,
                         .context_len = 4096,
                         .chunked_prefill_size = chunk,
                         .mixed_prefill_tokens = mixed,
                         .overlap = overlap,
                         .vocab = 128,
                         .eos = {0},
                         .n_eos = 1,
                         .track_interval = 64};
    sl_sched *s = NULL;
    sl_err e = {0};
    CHECK_MSG(sl_sched_new(&s, &c, &e) == SL_OK, "%s", e.msg);
    return s;
}

static sl_sched *make(int P, int pages, int max_running, int chunk, int overlap)
{
    return make_mixed(P, pages, max_running, chunk, 0, overlap);
}

static void submit(sl_sched *s, uint64_t rid, int n, int max_new, int prio)
{
    static int32_t p[4096];
    for (int i = 0; i < n; i++)
        p[i] = 1 + (int32_t)((rid * 31 + (uint64_t)i) % 120);
    sl_sched_req r = {.rid = rid, .prompt = p, .n_prompt = n, .max_new = max_new, .priority = prio};
    r.sampling.top_p = 1;
    r.sampling.repetition_penalty = 1;
    sl_err e = {0};
    CHECK_MSG(sl_sched_submit(s, &r, &e) == SL_OK, "%s", e.msg);
}

static sl_sched_batch *step(sl_sched *s)
{
    sl_sched_batch *b = sl_sched_next_batch(s);
    if (b) {
        fake_run(b);
        sl_sched_complete(s, b);
    }
    return b;
}

static void check_ok(sl_sched *s)
{
    sl_err e = {0};
    CHECK_MSG(sl_sched_check(s, &e) == SL_OK, "%s", e.msg);
}

static void test_chunks_and_mixing(void)
{
    sl_sched *s = make(16, 256, 8, 64, 0);
    submit(s, 1, 200, 3, 0);
    int sizes[8], n = 0;
    sl_sched_batch *b;
    for (int i = 0; i < 4 && (b = sl_sched_next_batch(s)); i++) {
        sizes[n++] = b->meta.n_tokens;
        CHECK(b->n_rows == (i == 3)); /* only the last chunk samples */
        fake_run(b);
        sl_sched_complete(s, b);
    }
    CHECK(n == 4 && sizes[0] == 64 && sizes[1] == 64 && sizes[2] == 64 && sizes[3] == 8);
    /* a new prompt joins the decoding request in one mixed batch */
    submit(s, 2, 100, 2, 0);
    b = sl_sched_next_batch(s);
    CHECK(b && b->meta.n_seqs == 2 && b->rid[0] == 1 && b->q_start[1] == 1 &&
          b->meta.n_tokens == 65 && b->n_rows == 1);
    fake_run(b);
    sl_sched_complete(s, b);
    while (step(s))
        check_ok(s);
    sl_sched_event ev;
    int toks[3] = {0}, fin[3] = {0};
    while (sl_sched_pop_event(s, &ev)) {
        if (ev.token >= 0) {
            CHECK(ev.token == fake_token(ev.rid, (ev.rid == 1 ? 199 : 99) + toks[ev.rid]));
            toks[ev.rid]++;
        }
        if (ev.finish) fin[ev.rid] = ev.finish;
    }
    CHECK(toks[1] == 3 && toks[2] == 2 && fin[1] == SL_FINISH_LENGTH && fin[2] == SL_FINISH_LENGTH);
    CHECK(sl_sched_idle(s));
    sl_sched_free(s);
}

/* Eight short prompts start decoding, then a 1000-token prompt (rid 100)
 * arrives; its steps run until it is prefilled. Every step carries the eight
 * decodes, at most max_tokens tokens and a chunk of at most max_chunk; each
 * chunk but the last is exactly full. Returns the steps taken. */
static int prefill_among_decodes(sl_sched *s, int full, int max_tokens, int max_chunk)
{
    for (uint64_t rid = 1; rid <= 8; rid++) submit(s, rid, 16, 100, 0);
    sl_sched_batch *b = step(s); /* the eight prompts: nothing decodes yet, so one batch */
    CHECK(b && b->meta.n_tokens == 128);
    submit(s, 100, 1000, 1, 0);
    int prefilled = 0, steps = 0;
    while (prefilled < 1000 && (b = sl_sched_next_batch(s))) {
        int decodes = 0, chunk = 0;
        for (int i = 0; i < b->meta.n_seqs; i++) {
            int q = (i + 1 < b->meta.n_seqs ? b->q_start[i + 1] : b->meta.n_tokens) - b->q_start[i];
            if (b->rid[i] == 100)
                chunk = q;
            else
                decodes += q;
        }
        CHECK_MSG(decodes == 8 && b->meta.n_tokens <= max_tokens && chunk <= max_chunk,
                  "step %d: %d decodes, %d tokens, chunk %d", steps, decodes, b->meta.n_tokens, chunk);
        CHECK_MSG(chunk == full || prefilled + chunk == 1000, "step %d: chunk %d", steps, chunk);
        prefilled += chunk;
        steps++;
        fake_run(b);
        sl_sched_complete(s, b);
    }
    CHECK_MSG(prefilled == 1000, "%d tokens in %d steps", prefilled, steps);
    return steps;
}

/* --chunked-prefill-size is one budget per step for decodes and prefill
 * chunks together: a long prompt arriving among decoding requests takes what
 * the decodes leave (checkpoint aligned), never stretching their step. */
static void test_shared_budget(void)
{
    sl_sched *s = make(16, 1024, 16, 256, 0);
    /* 248 left: 192 (three checkpoint units), then the last 232 whole */
    int steps = prefill_among_decodes(s, 192, 256, 1000);
    CHECK_MSG(steps == 5, "%d steps", steps);
    while (step(s))
        check_ok(s);
    sl_sched_free(s);
}

/* --mixed-prefill-tokens: while requests decode, a step carries at most that
 * many prefill tokens (the decodes' inter-token latency stays near one decode
 * step), whatever --chunked-prefill-size allows; a prompt with nothing
 * decoding beside it still takes the whole budget. */
static void test_mixed_budget(void)
{
    sl_sched *s = make_mixed(16, 1024, 16, 4096, 128, 0);
    submit(s, 50, 1000, 1, 0); /* alone: one chunk */
    sl_sched_batch *b = step(s);
    CHECK_MSG(b && b->meta.n_tokens == 1000, "alone: %d tokens", b ? b->meta.n_tokens : -1);
    while (step(s))
        ;
    int steps = prefill_among_decodes(s, 128, 4096, 128);
    CHECK_MSG(steps == 8, "%d steps", steps);
    while (step(s))
        check_ok(s);
    CHECK(sl_sched_idle(s));
    sl_sched_free(s);
}

static void test_limits_and_priority(void)
{
    sl_sched *s = make(4, 256, 2, 0, 0);
    submit(s, 1, 10, 5, 0);
    submit(s, 2, 10, 5, 0);
    submit(s, 3, 10, 5, 9); /* jumps the queue */
    sl_sched_batch *b = sl_sched_next_batch(s);
    CHECK(b && b->meta.n_seqs == 2 && b->rid[0] == 3 && b->rid[1] == 1);
    fake_run(b);
    sl_sched_complete(s, b);
    sl_sched_stats st;
    sl_sched_get_stats(s, &st);
    CHECK(st.running == 2 && st.queued == 1);
    while (step(s))
        check_ok(s);
    sl_sched_free(s);
}

/* 6 requests that each grow to 10 + 60 tokens in a 160-token pool: some are
 * retracted, resumed later, and still produce every token in order. */
static void test_retraction(void)
{
    sl_sched *s = make(4, 40, 6, 0, 0);
    for (uint64_t r = 0; r < 6; r++)
        submit(s, r, 10, 60, 0);
    int steps = 0;
    while (step(s) && steps++ < 10000)
        check_ok(s);
    sl_sched_stats st;
    sl_sched_get_stats(s, &st);
    CHECK(st.retractions > 0);
    sl_sched_event ev;
    int toks[6] = {0}, fin[6] = {0};
    while (sl_sched_pop_event(s, &ev)) {
        if (ev.token >= 0) {
            CHECK(ev.token == fake_token(ev.rid, 9 + toks[ev.rid]));
            toks[ev.rid]++;
        }
        if (ev.finish) fin[ev.rid] = ev.finish;
    }
    for (int r = 0; r < 6; r++)
        CHECK(toks[r] == 60 && fin[r] == SL_FINISH_LENGTH);
    sl_sched_flush_cache(s);
    sl_sched_get_stats(s, &st);
    CHECK(st.free_pages == st.total_pages);
    sl_sched_free(s);
}

static void test_abort_and_overlap(void)
{
    sl_sched *s = make(4, 64, 4, 0, 1);
    submit(s, 1, 30, 100, 0);
    submit(s, 2, 30, 100, 0);
    /* overlap: build N+1 before completing N */
    sl_sched_batch *b0 = sl_sched_next_batch(s);
    fake_run(b0);
    sl_sched_batch *b1 = sl_sched_next_batch(s);
    CHECK(b1 && b1->meta.n_seqs == 2 && b1->feed_last[0] && b1->feed_last[1] &&
          b1->meta.n_tokens == 2);
    sl_sched_complete(s, b0);
    sl_sched_stats st;
    sl_sched_get_stats(s, &st);
    int before = st.free_pages + st.evictable_pages;
    CHECK(sl_sched_abort(s, 1) == 1); /* its memory comes back at once, batch b1 still out */
    sl_sched_get_stats(s, &st);
    CHECK(st.free_pages + st.evictable_pages >= before + 8 && st.running == 1);
    fake_run(b1);
    sl_sched_complete(s, b1);
    CHECK(sl_sched_abort(s, 1) == 0);
    CHECK(sl_sched_abort(s, 2) == 1);
    check_ok(s);
    sl_sched_event ev;
    int abort_events = 0;
    while (sl_sched_pop_event(s, &ev))
        abort_events += ev.finish == SL_FINISH_ABORT;
    CHECK(abort_events == 2 && sl_sched_idle(s));
    sl_sched_free(s);
}

/* Scheduler cost per step with 256 requests decoding (fake runner, overlap). */
static void bench(void)
{
    sl_sched *s = make(16, 65536, 256, 8192, 1);
    for (uint64_t r = 0; r < 512; r++)
        submit(s, r, 200 + (int)(r % 300), 64, 0);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int steps = 0;
    sl_sched_batch *prev = NULL, *b;
    while ((b = sl_sched_next_batch(s)) || prev) {
        if (b) fake_run(b);
        if (prev) sl_sched_complete(s, prev);
        prev = b;
        steps++;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double us = ((double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec)) / 1e3;
    printf("scheduler: %d steps for 512 requests (256 running), %.1f us per step\n", steps,
           us / steps);
    CHECK(sl_sched_idle(s));
    sl_sched_free(s);
}

int main(void)
{
    test_chunks_and_mixing();
    test_shared_budget();
    test_mixed_budget();
    test_limits_and_priority();
    test_retraction();
    test_abort_and_overlap();
    bench();
    return sl_test_done("test_sched");
}

/* Disaggregation in the scheduler (sl_pd_role): a prefill-role request is
 * held with its memory after its first token and released into the tree; a
 * decode-role request is admitted within the pools' limits, announces
 * itself, waits, and decodes from the transferred token once activated; the
 * transferred prefix is cached as if computed; aborts and failures free
 * everything. sl_sched_check runs after every step. */
#include <string.h>

#include "scheduler.h"
#include "sl_test.h"

static sl_sched *make(int P, int pages, int slots, int overlap)
{
    sl_sched_config c = {.page_size = P,
                         .n_pages = pages,
                         .n_slots = slots,
                         .hybrid = slots > 0,
                         .max_running = 8,
                         .context_len = 4096,
                         .chunked_prefill_size = 64,
                         .overlap = overlap,
                         .strategy = SL_MAMBA_EXTRA_BUFFER,
                         .vocab = 128,
                         .eos = {0},
                         .n_eos = 1,
                         .track_interval = 64};
    sl_sched *s = NULL;
    sl_err e = {0};
    CHECK_MSG(sl_sched_new(&s, &c, &e) == SL_OK, "%s", e.msg);
    return s;
}

static int32_t prompt[512];

static void submit(sl_sched *s, uint64_t rid, int n, int max_new, sl_pd_role pd)
{
    for (int i = 0; i < n; i++)
        prompt[i] = 1 + (i * 7) % 120;
    sl_sched_req r = {.rid = rid, .pd = pd, .prompt = prompt, .n_prompt = n, .max_new = max_new};
    r.sampling.top_p = 1;
    r.sampling.repetition_penalty = 1;
    sl_err e = {0};
    CHECK_MSG(sl_sched_submit(s, &r, &e) == SL_OK, "%s", e.msg);
}

static void check_ok(sl_sched *s)
{
    sl_err e = {0};
    CHECK_MSG(sl_sched_check(s, &e) == SL_OK, "%s", e.msg);
}

/* Runs one batch answering token 9 for every sampled row; returns it. */
static sl_sched_batch *step(sl_sched *s)
{
    sl_sched_batch *b = sl_sched_next_batch(s);
    if (!b) return NULL;
    for (int r = 0; r < b->n_rows; r++) {
        int q = b->row_seq[r];
        memset(&b->out[q], 0, sizeof b->out[q]);
        b->out[q] = (sl_sample){.token = 9}; /* a whole sample, as the runner writes it */
    }
    sl_sched_complete(s, b);
    check_ok(s);
    return b;
}

static void test_prefill_hold(void)
{
    sl_sched *s = make(4, 64, 0, 0);
    submit(s, 1, 10, 1, SL_PD_PREFILL);
    CHECK(step(s) != NULL);
    sl_sched_event ev;
    CHECK(sl_sched_pop_event(s, &ev) && ev.token == 9 && !ev.finish);
    CHECK(sl_sched_pop_event(s, &ev) && ev.finish == SL_FINISH_LENGTH);
    sl_sched_pd_mem m;
    CHECK(sl_sched_pd_view(s, 1, &m) == 0);
    CHECK(m.n_tokens == 10 && m.n_pages == 3 && m.state == -1);
    sl_sched_stats st;
    sl_sched_get_stats(s, &st);
    CHECK(st.pd_waiting == 1 && st.free_pages == 61 && sl_sched_idle(s));
    CHECK(sl_sched_pd_release(s, 1) == 0);
    CHECK(sl_sched_pd_view(s, 1, &m) == -1);
    sl_sched_get_stats(s, &st);
    CHECK(st.pd_waiting == 0 && st.tree_pages == 2); /* 8 tokens in whole pages */
    check_ok(s);
    sl_sched_free(s);
}

static void test_decode_await_activate(void)
{
    sl_sched *s = make(4, 64, 0, 1);
    submit(s, 2, 10, 4, SL_PD_DECODE);
    CHECK(sl_sched_next_batch(s) == NULL); /* nothing to compute */
    check_ok(s);
    sl_sched_event ev;
    CHECK(sl_sched_pop_event(s, &ev) && ev.pd_ready && ev.prompt_tokens == 10 &&
          ev.cached_tokens == 0);
    sl_sched_pd_mem m;
    CHECK(sl_sched_pd_view(s, 2, &m) == 0 && m.n_tokens == 10 && m.n_pages == 3 &&
          m.skip_tokens == 0);
    sl_err e = {0};
    sl_sample smp = {.token = 7, .logprob = -0.5f};
    CHECK(sl_sched_pd_activate(s, 2, 7, &smp, &e) == SL_OK);
    CHECK(sl_sched_pd_activate(s, 2, 7, &smp, &e) != SL_OK); /* only once */
    CHECK(sl_sched_pop_event(s, &ev) && ev.token == 7 && ev.sample.logprob == -0.5f);
    sl_sched_batch *b = sl_sched_next_batch(s);
    CHECK(b && b->meta.n_seqs == 1 && b->meta.n_tokens == 1 && b->pos[0] == 10 && b->ids[0] == 7);
    for (int r = 0; b && r < b->n_rows; r++)
        b->out[b->row_seq[r]] = (sl_sample){.token = 9};
    if (b) sl_sched_complete(s, b);
    int tokens = 1, fin = 0;
    for (int i = 0; i < 10 && !sl_sched_idle(s); i++)
        step(s);
    while (sl_sched_pop_event(s, &ev)) {
        tokens += ev.token >= 0;
        if (ev.finish) fin = ev.finish;
    }
    CHECK(tokens == 4 && fin == SL_FINISH_LENGTH);
    check_ok(s);
    /* the next turn finds the transferred prefix (and what decoded) cached */
    submit(s, 3, 16, 2, SL_PD_DECODE);
    sl_sched_next_batch(s);
    CHECK(sl_sched_pop_event(s, &ev) && ev.pd_ready && ev.cached_tokens >= 8);
    CHECK(sl_sched_abort(s, 3) == 1);
    check_ok(s);
    sl_sched_free(s);
}

static void test_decode_pool_limit(void)
{
    sl_sched *s = make(4, 10, 0, 0); /* 40 tokens */
    submit(s, 4, 24, 4, SL_PD_DECODE);
    submit(s, 5, 24, 4, SL_PD_DECODE);
    sl_sched_next_batch(s);
    check_ok(s);
    sl_sched_event ev;
    CHECK(sl_sched_pop_event(s, &ev) && ev.pd_ready && ev.rid == 4);
    CHECK(!sl_sched_pop_event(s, &ev)); /* no room for 5: it waits in the queue */
    sl_sched_stats st;
    sl_sched_get_stats(s, &st);
    CHECK(st.queued == 1 && st.pd_waiting == 1);
    CHECK(sl_sched_fail(s, 4) == 1);
    CHECK(sl_sched_pop_event(s, &ev) && ev.rid == 4 && ev.finish == SL_FINISH_ERROR);
    sl_sched_next_batch(s);
    CHECK(sl_sched_pop_event(s, &ev) && ev.pd_ready && ev.rid == 5);
    CHECK(sl_sched_abort(s, 5) == 1);
    sl_sched_get_stats(s, &st);
    CHECK(st.free_pages == 10 && st.pd_waiting == 0 && st.tree_pages == 0); /* nothing cached */
    check_ok(s);
    sl_sched_free(s);
}

static void test_hybrid_slots(void)
{
    sl_sched *s = make(1, 256, 8, 0);
    submit(s, 6, 64, 3, SL_PD_DECODE);
    sl_sched_next_batch(s);
    sl_sched_pd_mem m;
    CHECK(sl_sched_pd_view(s, 6, &m) == 0 && m.state >= 0 && m.state_copy >= 0 &&
          m.state != m.state_copy);
    sl_sched_stats st;
    sl_sched_get_stats(s, &st);
    CHECK(st.free_slots == 8 - 3); /* W, T and the tree's copy */
    check_ok(s);
    CHECK(sl_sched_abort(s, 6) == 1); /* the copy is freed, never cached */
    sl_sched_get_stats(s, &st);
    CHECK(st.free_slots == 8 && st.tree_states == 0);
    /* activated: the copy becomes the tree's state at depth 64 */
    submit(s, 7, 64, 1, SL_PD_DECODE);
    sl_sched_next_batch(s);
    sl_err e = {0};
    CHECK(sl_sched_pd_activate(s, 7, 9, NULL, &e) == SL_OK); /* max_new 1: ends at once */
    sl_sched_get_stats(s, &st);
    CHECK(st.tree_states == 1 && st.running == 0);
    check_ok(s);
    /* prefill role: the held request keeps W */
    submit(s, 8, 64, 1, SL_PD_PREFILL);
    step(s);
    CHECK(sl_sched_pd_view(s, 8, &m) == 0 && m.state >= 0 && m.n_tokens == 64);
    CHECK(sl_sched_abort(s, 8) == 1);
    check_ok(s);
    sl_sched_free(s);
}

int main(void)
{
    test_prefill_hold();
    test_decode_await_activate();
    test_decode_pool_limit();
    test_hybrid_slots();
    return sl_test_done("test_sched_pd");
}

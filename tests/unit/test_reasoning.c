/* reasoning parser: every case is fed whole, in two pieces at every split
 * point, and byte by byte; the joined deltas must be the same each time. */
#include <string.h>

#include "reasoning.h"
#include "sl_buf.h"
#include "sl_test.h"

typedef struct rcase {
    sl_reasoning_mode mode;
    const char *in, *reasoning, *content;
} rcase;

#define DETECT SL_REASONING_MODE_DETECT
#define OPEN SL_REASONING_MODE_OPEN
#define OFF SL_REASONING_MODE_OFF

static const rcase cases[] = {
    {DETECT, "<think>\nLet me think.\n</think>\n\nThe answer is 4.", "Let me think.",
     "The answer is 4."},
    {DETECT, "  \n<think>a\n\nb</think>c  \n", "a\n\nb", "c  \n"},
    {DETECT, "No thinking here.", "", "No thinking here."},
    {DETECT, "<thinking is a word", "", "<thinking is a word"},
    {DETECT, "<think>\n\n</think>\n\nHi", "", "Hi"},
    {DETECT, "<think>cut off while thinking </thi", "cut off while thinking </thi", ""},
    {DETECT, "<thi", "", "<thi"},
    {DETECT, "", "", ""},
    {DETECT, "  ", "", "  "},
    {DETECT, "Answer </think> later", "", "Answer </think> later"},
    {DETECT, "<think>\n\xe6\x80\x9d\xe8\x80\x83 \xf0\x9f\x98\x80\n</think>\n\n\xe7\xad\x94",
     "\xe6\x80\x9d\xe8\x80\x83 \xf0\x9f\x98\x80", "\xe7\xad\x94"},
    {OPEN, "step 1\nstep 2\n</think>\n\nDone.", "step 1\nstep 2", "Done."},
    {OPEN, "\nno close at all\n", "no close at all", ""},
    {OPEN, "</think>only content", "", "only content"},
    {OPEN, "a </ b <</think> c <think> d</think>", "a </ b <", "c <think> d</think>"},
    {OFF, "<think>x</think>y", "", "<think>x</think>y"},
};

/* Joins a response's deltas by kind; checks no two neighbours share a kind. */
static void join(const sl_deltas *d, sl_buf *reasoning, sl_buf *content)
{
    for (int i = 0; i < d->n; i++) {
        CHECK(d->v[i].kind == SL_DELTA_REASONING || d->v[i].kind == SL_DELTA_CONTENT);
        CHECK(d->v[i].len > 0);
        sl_buf_append(d->v[i].kind == SL_DELTA_REASONING ? reasoning : content, d->v[i].text,
                      d->v[i].len);
    }
}

/* Feeds c->in cut at the given points (sorted, ending at strlen). */
static int run(const rcase *c, const size_t *cuts, int ncuts)
{
    sl_reasoning *r = sl_reasoning_new(c->mode);
    sl_deltas all = {0}, d = {0};
    sl_err e = {0};
    size_t at = 0;
    for (int i = 0; i < ncuts; i++) {
        CHECK(sl_reasoning_feed(r, c->in + at, cuts[i] - at, &d, &e) == SL_OK);
        sl_deltas_extend(&all, &d); /* what a router sends per chunk */
        sl_deltas_clear(&d);
        at = cuts[i];
    }
    CHECK(sl_reasoning_finish(r, &all, &e) == SL_OK);
    sl_buf rs = {0}, cs = {0};
    sl_buf_puts(&rs, "");
    sl_buf_puts(&cs, "");
    join(&all, &rs, &cs);
    int ok = !strcmp(rs.data, c->reasoning) && !strcmp(cs.data, c->content);
    if (!ok)
        fprintf(stderr,
                "input [%s] cut %d ways: reasoning [%s] want [%s], content [%s] want [%s]\n", c->in,
                ncuts, rs.data, c->reasoning, cs.data, c->content);
    sl_buf_free(&rs);
    sl_buf_free(&cs);
    sl_deltas_free(&all);
    sl_deltas_free(&d);
    sl_reasoning_free(r);
    return ok;
}

static void test_cases(void)
{
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const rcase *c = &cases[k];
        size_t n = strlen(c->in), cuts[512];
        cuts[0] = n;
        CHECK_MSG(run(c, cuts, 1), "case %zu whole", k);
        for (size_t i = 0; i <= n; i++) {
            size_t two[2] = {i, n};
            CHECK_MSG(run(c, two, 2), "case %zu split at %zu", k, i);
        }
        for (size_t i = 0; i < n; i++) cuts[i] = i + 1;
        CHECK_MSG(run(c, cuts, (int)n), "case %zu byte by byte", k);
    }
}

/* A tag cut at a chunk end is held back, not shown as text. */
static void test_partial_tag_held(void)
{
    sl_reasoning *r = sl_reasoning_new(OPEN);
    sl_deltas d = {0};
    sl_err e = {0};
    sl_reasoning_feed(r, "abc \n</thi", 10, &d, &e);
    CHECK(d.n == 1 && d.v[0].kind == SL_DELTA_REASONING && !strcmp(d.v[0].text, "abc"));
    sl_deltas_clear(&d);
    sl_reasoning_feed(r, "nk>\n\nDone", 9, &d, &e);
    CHECK(d.n == 1 && d.v[0].kind == SL_DELTA_CONTENT && !strcmp(d.v[0].text, "Done"));
    sl_deltas_free(&d);
    sl_reasoning_free(r);

    r = sl_reasoning_new(DETECT);
    sl_reasoning_feed(r, "\n<thin", 6, &d, &e);
    CHECK(d.n == 0);
    sl_reasoning_feed(r, "k>x", 3, &d, &e);
    CHECK(d.n == 1 && d.v[0].kind == SL_DELTA_REASONING && !strcmp(d.v[0].text, "x"));
    sl_deltas_free(&d);
    sl_reasoning_free(r);
}

static void test_mode_for_prompt(void)
{
    static const struct {
        const char *prompt;
        sl_reasoning_mode want;
    } t[] = {
        {"<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", DETECT},
        {"<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n", OFF},
        {"<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n", OPEN},
        {"<|im_start|>assistant\n<think>\nold\n</"
         "think>\n\nA<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n"
         "<|im_start|>assistant\n",
         DETECT},
        {"<|im_start|>user\nwhat does <think> do?<|im_end|>\n<|im_start|>assistant\n", DETECT},
        {"", DETECT},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        CHECK_MSG(sl_reasoning_mode_for_prompt(t[i].prompt, strlen(t[i].prompt)) == t[i].want,
                  "prompt %zu", i);
}

int main(void)
{
    test_cases();
    test_partial_tag_held();
    test_mode_for_prompt();
    return sl_test_done("test_reasoning");
}

/* sl_route: radix matching, LRU bound, and the policies' choices. */
#include <string.h>

#include "route.h"
#include "sl_test.h"

static void test_tree(void)
{
    sl_route *r;
    sl_err e = {0};
    sl_route_config cfg = sl_route_config_default();
    cfg.max_tree_tokens = 1000;
    CHECK(sl_route_new(&r, &cfg, &e) == SL_OK);
    int32_t a[] = {1, 2, 3, 4, 5}, b[] = {1, 2, 9}, c[] = {7, 8};
    sl_route_record(r, 0, a, 5);
    CHECK(sl_route_tree_tokens(r, 0) == 5);
    CHECK(sl_route_match(r, 0, a, 5) == 5);
    CHECK(sl_route_match(r, 0, b, 3) == 2);
    sl_route_record(r, 0, b, 3); /* splits [1 2 3 4 5] after 2 */
    CHECK(sl_route_tree_tokens(r, 0) == 6);
    CHECK(sl_route_match(r, 0, b, 3) == 3);
    CHECK(sl_route_match(r, 0, a, 5) == 5);
    int32_t a3[] = {1, 2, 3};
    CHECK(sl_route_match(r, 0, a3, 3) == 3);
    CHECK(sl_route_match(r, 0, c, 2) == 0);
    CHECK(sl_route_match(r, 1, a, 5) == 0); /* other worker: nothing */
    sl_route_record(r, 0, a, 5);            /* already there: no growth */
    CHECK(sl_route_tree_tokens(r, 0) == 6);
    sl_route_forget(r, 0);
    CHECK(sl_route_tree_tokens(r, 0) == 0);
    CHECK(sl_route_match(r, 0, a, 5) == 0);

    /* LRU bound: 30 prompts of 100 distinct tokens into a 1000-token tree;
     * the most recently touched survive, the oldest are gone. */
    int32_t p[30][100];
    for (int i = 0; i < 30; i++)
        for (int j = 0; j < 100; j++) p[i][j] = i * 1000 + j;
    for (int i = 0; i < 30; i++) {
        sl_route_record(r, 2, p[i], 100);
        if (i >= 1) sl_route_match(r, 2, p[0], 100); /* keep prompt 0 hot */
        CHECK(sl_route_tree_tokens(r, 2) <= 1000);
    }
    CHECK(sl_route_match(r, 2, p[29], 100) == 100);
    CHECK(sl_route_match(r, 2, p[0], 100) == 100);
    CHECK(sl_route_match(r, 2, p[1], 100) == 0);
    sl_route_free(r);
}

static void test_cache_aware(void)
{
    sl_route *r;
    sl_err e = {0};
    sl_route_config cfg = sl_route_config_default();
    cfg.balance_abs_threshold = 4;
    cfg.balance_rel_threshold = 2.0;
    cfg.cache_threshold = 0.5;
    CHECK(sl_route_new(&r, &cfg, &e) == SL_OK);
    int32_t sys[64];
    for (int i = 0; i < 64; i++) sys[i] = 100 + i;
    sl_route_record(r, 1, sys, 64);
    int32_t q[80];
    memcpy(q, sys, sizeof sys);
    for (int i = 64; i < 80; i++) q[i] = i;
    sl_route_cand c[3] = {{.worker = 0, .load = 0}, {.worker = 1, .load = 2}, {.worker = 2, .load = 1}};
    int m = -1;
    CHECK(sl_route_pick(r, c, 3, q, 80, &m) == 1); /* 64/80 >= 0.5: affinity beats load */
    CHECK(m == 64);
    /* hybrid: only whole 48-token checkpoints count */
    c[1].checkpoint_tokens = 48;
    CHECK(sl_route_pick(r, c, 3, q, 80, &m) == 1);
    CHECK(m == 48);
    /* 48/80 >= 0.5 fails with a 60% threshold: least loaded instead */
    cfg.cache_threshold = 0.7;
    sl_route *r2;
    CHECK(sl_route_new(&r2, &cfg, &e) == SL_OK);
    sl_route_record(r2, 1, sys, 64);
    CHECK(sl_route_pick(r2, c, 3, q, 80, &m) == 0);
    CHECK(m == 0);
    sl_route_free(r2);
    c[1].checkpoint_tokens = 0;
    /* imbalance overrides affinity: 9 vs 0 > 4 and 9 > 0*2 */
    c[1].load = 9;
    CHECK(sl_route_pick(r, c, 3, q, 80, &m) == 0);
    /* below the absolute threshold: affinity again */
    c[1].load = 4;
    CHECK(sl_route_pick(r, c, 3, q, 80, NULL) == 1);
    /* no match anywhere: least loaded, ties broken by smaller tree */
    int32_t other[4] = {5, 6, 7, 8};
    c[0].load = 1;
    c[1].load = 1;
    c[2].load = 1;
    CHECK(sl_route_pick(r, c, 3, other, 4, NULL) == 0);
    CHECK(sl_route_pick(r, c, 0, other, 4, NULL) == -1);
    sl_route_free(r);
}

static void test_other_policies(void)
{
    sl_err e = {0};
    sl_route_policy p;
    CHECK(sl_route_policy_parse("power_of_two", &p, &e) == SL_OK && p == SL_ROUTE_POLICY_POWER_OF_TWO);
    CHECK(sl_route_policy_parse("fastest", &p, &e) == SL_ERR_INVALID);
    CHECK(strstr(e.msg, "fastest") != NULL);
    sl_route_config cfg = sl_route_config_default();
    sl_route_cand c[3] = {{.worker = 0, .load = 5}, {.worker = 1, .load = 0}, {.worker = 2, .load = 5}};
    int32_t ids[2] = {1, 2};
    sl_route *r;
    cfg.policy = SL_ROUTE_POLICY_ROUND_ROBIN;
    sl_route_new(&r, &cfg, &e);
    int seq[6];
    for (int i = 0; i < 6; i++) seq[i] = sl_route_pick(r, c, 3, ids, 2, NULL);
    CHECK(seq[0] == 0 && seq[1] == 1 && seq[2] == 2 && seq[3] == 0 && seq[5] == 2);
    sl_route_free(r);
    cfg.policy = SL_ROUTE_POLICY_RANDOM;
    sl_route_new(&r, &cfg, &e);
    int hits[3] = {0};
    for (int i = 0; i < 3000; i++) hits[sl_route_pick(r, c, 3, ids, 2, NULL)]++;
    for (int i = 0; i < 3; i++) CHECK_MSG(hits[i] > 800 && hits[i] < 1200, "random %d: %d", i, hits[i]);
    sl_route_free(r);
    /* power of two: worker 1 (idle) wins every draw that includes it: 5/9 */
    cfg.policy = SL_ROUTE_POLICY_POWER_OF_TWO;
    sl_route_new(&r, &cfg, &e);
    int idle = 0;
    for (int i = 0; i < 3000; i++) idle += sl_route_pick(r, c, 3, ids, 2, NULL) == 1;
    CHECK_MSG(idle > 1500 && idle < 1830, "power_of_two idle picks %d", idle);
    sl_route_free(r);
}

int main(void)
{
    test_tree();
    test_cache_aware();
    test_other_policies();
    return sl_test_done("test_route");
}

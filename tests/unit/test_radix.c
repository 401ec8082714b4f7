/* Radix prefix cache: matching, splitting, dedupe, locks, LRU eviction,
 * hybrid tombstones and branch points, and a randomized run checked after
 * every operation by sl_radix_check. */
#include <stdlib.h>
#include <string.h>

#include "radix.h"
#include "sl_rng.h"
#include "sl_test.h"

typedef struct fixture {
    sl_pool *pages, *slots;
    sl_radix *r;
} fixture;

static void setup(fixture *f, int P, int n_pages, int hybrid, int n_slots)
{
    sl_err e = {0};
    CHECK(sl_pool_new(&f->pages, "kv page", n_pages, &e) == SL_OK);
    f->slots = NULL;
    if (hybrid) CHECK(sl_pool_new(&f->slots, "state slot", n_slots, &e) == SL_OK);
    sl_radix_config c = {.page_size = P,
                         .hybrid = hybrid,
                         .chunk = 64 > P ? 64 : P,
                         .pages = f->pages,
                         .slots = f->slots};
    CHECK(sl_radix_new(&f->r, &c, &e) == SL_OK);
}

static void teardown(fixture *f)
{
    sl_err e = {0};
    CHECK_MSG(sl_radix_check(f->r, 0, 0, &e) == SL_OK, "%s", e.msg);
    sl_radix_destroy(f->r);
    CHECK(sl_pool_free_count(f->pages) == sl_pool_total(f->pages));
    if (f->slots) CHECK(sl_pool_free_count(f->slots) == sl_pool_total(f->slots));
    sl_pool_free(f->pages);
    sl_pool_free(f->slots);
}

static void check_ok(fixture *f, int held_pages, int held_slots)
{
    sl_err e = {0};
    CHECK_MSG(sl_radix_check(f->r, held_pages, held_slots, &e) == SL_OK, "%s", e.msg);
}

/* Inserts ids[0..n) with freshly allocated pages (and a fresh slot if hybrid). */
static int insert_new(fixture *f, const int32_t *ids, int n, int P, sl_radix_node **end)
{
    int32_t pages[1024];
    CHECK(n / P <= 1024);
    CHECK(sl_pool_alloc(f->pages, n / P, pages) == 0);
    int32_t slot = -1;
    if (f->slots) CHECK(sl_pool_alloc(f->slots, 1, &slot) == 0);
    return sl_radix_insert(f->r, ids, n, pages, slot, end);
}

static void test_pure(void)
{
    fixture f;
    const int P = 4;
    setup(&f, P, 64, 0, 0);
    int32_t a[32], b[32], pages[32];
    for (int i = 0; i < 32; i++)
        a[i] = b[i] = 100 + i;
    b[12] = 7; /* diverges in the 4th page */
    sl_radix_match m;
    sl_radix_match_prefix(f.r, a, 32, pages, &m);
    CHECK(m.len == 0 && m.state == -1);

    CHECK(insert_new(&f, a, 16, P, NULL) == 0);
    check_ok(&f, 0, 0);
    /* full hit is capped at n-1 tokens, page aligned: 17 tokens -> 16 */
    sl_radix_match_prefix(f.r, a, 17, pages, &m);
    CHECK(m.len == 16 && sl_radix_node_depth(m.node) == 16);
    /* 16 tokens -> at most 15 usable -> 12 */
    sl_radix_match_prefix(f.r, a, 16, pages, &m);
    CHECK(m.len == 12 && sl_radix_node_depth(m.node) == 12); /* split at 12 */
    sl_radix_stats st;
    sl_radix_get_stats(f.r, &st);
    CHECK(st.nodes == 2 && st.pages == 4);
    /* partial hit: b shares 12 tokens */
    sl_radix_match_prefix(f.r, b, 32, pages, &m);
    CHECK(m.len == 12);
    int32_t first3[3];
    memcpy(first3, pages, sizeof first3);
    /* insert b with its own pages for all 24 tokens: the first 3 pages are
     * duplicates and go back to the pool, the array gets the tree's ids */
    int32_t bp[6];
    CHECK(sl_pool_alloc(f.pages, 6, bp) == 0);
    int free_before = sl_pool_free_count(f.pages);
    sl_radix_node *end;
    CHECK(sl_radix_insert(f.r, b, 24, bp, -1, &end) == 12);
    CHECK(sl_pool_free_count(f.pages) == free_before + 3);
    CHECK(!memcmp(bp, first3, sizeof first3));
    CHECK(sl_radix_node_depth(end) == 24);
    check_ok(&f, 0, 0);

    /* locks protect: lock b's leaf, evict everything evictable */
    sl_radix_lock(f.r, end);
    sl_radix_get_stats(f.r, &st);
    CHECK(st.evictable_pages == 1); /* a's last page only */
    CHECK(sl_radix_evict(f.r, 100) == 1);
    sl_radix_match_prefix(f.r, b, 25, pages, &m);
    CHECK(m.len == 24);
    sl_radix_unlock(f.r, end);
    check_ok(&f, 0, 0);

    /* LRU: touch a's prefix after b, then evict one page: b's leaf goes first */
    sl_radix_match_prefix(f.r, b, 25, pages, &m);
    int32_t c[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    insert_new(&f, c, 8, P, NULL);
    sl_radix_match_prefix(f.r, c, 9, pages, &m);
    CHECK(m.len == 8);
    CHECK(sl_radix_evict(f.r, 1) == 3); /* b's leaf: 12 tokens, 3 pages */
    sl_radix_match_prefix(f.r, b, 25, pages, &m);
    CHECK(m.len == 12);
    sl_radix_match_prefix(f.r, c, 9, pages, &m);
    CHECK(m.len == 8);
    check_ok(&f, 0, 0);
    teardown(&f);
}

/* docs/mamba_cache.md §4: root─[P+A]●, R2 with P+B matches KV 257 deep but no state:
 * best = root, branch = 256; after R2 inserts at 256 a third request hits 256. */
static void test_hybrid_branch(void)
{
    fixture f;
    const int P = 1;
    setup(&f, P, 1024, 1, 16);
    static int32_t a[300], b[300], c[300];
    int32_t pages[300];
    for (int i = 0; i < 300; i++)
        a[i] = b[i] = c[i] = 5;
    a[257] = 1, b[257] = 2, c[257] = 3;
    sl_radix_match m;
    CHECK(insert_new(&f, a, 270, P, NULL) == 0);
    sl_radix_match_prefix(f.r, b, 270, pages, &m);
    CHECK(m.len == 0 && m.kv_len == 257 && m.branch_len == 256 && m.state == -1);
    /* R2 caches its state at the branch point */
    CHECK(insert_new(&f, b, 256, P, NULL) == 256);
    check_ok(&f, 0, 0);
    sl_radix_match_prefix(f.r, c, 270, pages, &m);
    CHECK(m.len == 256 && m.state >= 0 && m.branch_len == 0);
    /* ... and R2's own full insert adds a leaf below it */
    insert_new(&f, b, 270, P, NULL);
    check_ok(&f, 0, 0);
    sl_radix_stats st;
    sl_radix_get_stats(f.r, &st);
    CHECK(st.nodes == 4 && st.states == 3);

    /* state eviction in LRU order: matching a then b stamps a's leaf oldest,
     * then the node at 256 (an ancestor is stamped before its children) */
    sl_radix_match_prefix(f.r, a, 271, pages, &m);
    CHECK(m.len == 270);
    sl_radix_match_prefix(f.r, b, 271, pages, &m);
    CHECK(m.len == 270);
    CHECK(sl_radix_evict_states(f.r, 2) == 2); /* a's leaf (whole), then 256's state */
    sl_radix_match_prefix(f.r, c, 270, pages, &m);
    CHECK(m.len == 0 && m.kv_len == 257 && m.branch_len == 256);
    sl_radix_match_prefix(f.r, a, 271, pages, &m);
    CHECK(m.len == 0 && m.kv_len == 257);
    sl_radix_get_stats(f.r, &st);
    CHECK(st.states == 1 && st.pages == 270 && st.nodes == 3);
    check_ok(&f, 0, 0);
    /* evicting b's leaf removes the tombstones above it in cascade */
    CHECK(sl_radix_evict(f.r, 1) == 270);
    sl_radix_get_stats(f.r, &st);
    CHECK(st.nodes == 0 && st.pages == 0 && st.states == 0);
    teardown(&f);
}

/* A locked node whose state is evicted becomes a tombstone; once its children
 * are gone and the lock is released it is deleted (no tombstone leaves). */
static void test_hybrid_locked_tombstone(void)
{
    fixture f;
    const int P = 2;
    setup(&f, P, 64, 1, 8);
    int32_t a[16], pages[16];
    for (int i = 0; i < 16; i++)
        a[i] = i;
    sl_radix_node *n8, *n16;
    insert_new(&f, a, 8, P, &n8);
    insert_new(&f, a, 16, P, &n16);
    sl_radix_lock(f.r, n8);
    sl_radix_match m;
    sl_radix_match_prefix(f.r, a, 17, pages, &m);
    CHECK(m.node == n16);
    /* state lock protects against state eviction */
    sl_radix_lock_state(f.r, n16);
    CHECK(sl_radix_evict_states(f.r, 8) == 1); /* only n8's (internal) */
    CHECK(sl_radix_node_state(n8) == -1);
    sl_radix_unlock_state(f.r, n16);
    check_ok(&f, 0, 0);
    CHECK(sl_radix_evict(f.r, 100) == 4); /* n16's leaf; n8 is locked: stays */
    check_ok(&f, 0, 0);                   /* a locked tombstone leaf is allowed */
    sl_radix_unlock(f.r, n8);             /* ... and deleted with its last lock */
    sl_radix_stats st;
    sl_radix_get_stats(f.r, &st);
    CHECK(st.nodes == 0 && st.pages == 0);
    /* insert on an existing state: the second slot goes back to the pool */
    insert_new(&f, a, 8, P, NULL);
    int free_slots = sl_pool_free_count(f.slots);
    insert_new(&f, a, 8, P, NULL);
    CHECK(sl_pool_free_count(f.slots) == free_slots);
    teardown(&f);
}

/* Random inserts, matches with locks held by fake requests, and evictions;
 * the invariants are checked after every step. */
static void test_random(int hybrid, int P)
{
    fixture f;
    setup(&f, P, 400, hybrid, 64);
    enum { NREQ = 6 };
    struct {
        sl_radix_node *node;
    } held[NREQ] = {{0}};
    uint64_t seed = 42 + (uint64_t)hybrid * 7 + (uint64_t)P;
    int32_t ids[96], pages[96];
    for (int step = 0; step < 3000; step++) {
        float u = sl_rng_uniform(seed, (uint64_t)step * 3);
        int len = P * (1 + (int)(sl_rng_uniform(seed, (uint64_t)step * 3 + 1) * (90 / P)));
        int base = (int)(sl_rng_uniform(seed, (uint64_t)step * 3 + 2) * 4);
        for (int i = 0; i < len; i++) /* few distinct prefixes, so paths share */
            ids[i] = (i < 20 ? base : base * 7 + (i * 13 + step % 3) % 5);
        if (u < 0.4f) {
            int need = len / P;
            if (sl_pool_free_count(f.pages) < need) sl_radix_evict(f.r, need);
            if (sl_pool_free_count(f.pages) < need) continue;
            int32_t slot = -1;
            if (hybrid) {
                if (sl_pool_free_count(f.slots) < 1) sl_radix_evict_states(f.r, 1);
                if (sl_pool_alloc(f.slots, 1, &slot)) continue;
            }
            CHECK(sl_pool_alloc(f.pages, need, pages) == 0);
            sl_radix_node *end;
            int cached = sl_radix_insert(f.r, ids, len, pages, slot, &end);
            CHECK(cached % P == 0 && cached <= len);
            sl_radix_match m;
            int32_t mp[96];
            sl_radix_match_prefix(f.r, ids, len + 1, mp, &m);
            CHECK(m.len == len); /* what was just inserted is found whole */
            CHECK(!memcmp(mp, pages, sizeof(int32_t) * (size_t)(len / P)));
        } else if (u < 0.7f) {
            int k = step % NREQ;
            if (held[k].node) {
                sl_radix_unlock(f.r, held[k].node);
                held[k].node = NULL;
            }
            sl_radix_match m;
            sl_radix_match_prefix(f.r, ids, len, pages, &m);
            CHECK(m.len < len && m.len % P == 0);
            if (hybrid) CHECK(m.len == 0 || m.state >= 0);
            if (m.len) {
                sl_radix_lock(f.r, m.node);
                held[k].node = m.node;
            }
        } else if (u < 0.85f) {
            sl_radix_evict(f.r, 1 + step % 7);
        } else if (hybrid) {
            sl_radix_evict_states(f.r, 1 + step % 3);
        }
        sl_err e = {0};
        if (sl_radix_check(f.r, 0, 0, &e) != SL_OK) {
            CHECK_MSG(0, "step %d: %s", step, e.msg);
            break;
        }
    }
    for (int k = 0; k < NREQ; k++)
        if (held[k].node) sl_radix_unlock(f.r, held[k].node);
    sl_radix_evict(f.r, 1 << 30);
    sl_radix_stats st;
    sl_radix_get_stats(f.r, &st);
    CHECK(st.nodes == 0 && st.pages == 0 && st.states == 0);
    teardown(&f);
}

int main(void)
{
    test_pure();
    test_hybrid_branch();
    test_hybrid_locked_tombstone();
    test_random(0, 1);
    test_random(0, 4);
    test_random(1, 1);
    test_random(1, 2);
    return sl_test_done("test_radix");
}

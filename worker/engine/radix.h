/* worker/radix.h: the prefix cache, a radix tree keyed by token ids.
 *
 * Every edge holds a whole number of pages: key[0..len) and the KV page ids
 * that hold those tokens' K/V (len / page_size of them). For hybrid models a
 * node may also own one mamba state slot: the recurrent state after the
 * tokens root..end of that node, valid ONLY at that end (a point value, it
 * cannot be cut). See docs/mamba_cache.md for the rules this follows.
 *
 *   root ─[a b c d | e f g h]─●            ● node with a state   ○ tombstone
 *
 *   split at 4 (a lookup or insert diverging after "a b c d"):
 *
 *   root ─[a b c d]─○─[e f g h]─●          the upper half keeps no state: the
 *                    └[x y z w]─●          state is only valid at depth 8
 *
 * Contract (the cache's promises and the caller's duties):
 *  - match never changes what is cached. It may split an edge so that the
 *    returned prefix ends on a node, and it refreshes the LRU stamps of the
 *    path. Lookups cover at most n-1 tokens (a request needs one token to
 *    compute its first logits), page aligned.
 *  - Pure-attention trees return any matched prefix. Hybrid trees return the
 *    prefix up to the deepest node that has a state (`best`), plus
 *    branch_len = floor(kv_matched / chunk) * chunk when the KV match went
 *    further: the point where the caller should snapshot its own state so
 *    that siblings can hit it.
 *  - Matched pages and states are usable only while the node is locked
 *    (sl_radix_lock: the node and every ancestor; sl_radix_lock_state: the
 *    node's state only). Unlocked content may be evicted at any time by
 *    evict calls.
 *  - insert takes ownership of every page and the state it is given. Pages
 *    the tree already holds for the same tokens are returned to the page pool
 *    (the caller's array is rewritten with the tree's ids); a state given for
 *    a node that already has one goes back to the slot pool. It returns the
 *    length that was already cached.
 *  - evict(n) frees at least n pages (or everything unlocked), evicting whole
 *    unlocked leaves in LRU order; evict_states(n) frees states of unlocked
 *    nodes in LRU order (internal nodes become tombstones, leaves are evicted
 *    whole). Either may free more than asked. In hybrid trees a leaf is never
 *    a tombstone: tombstone leaves are deleted in cascade (a locked one when
 *    its last lock goes).
 *  - sl_radix_check verifies the structure, lock counts and page/slot
 *    accounting against the pools; run it in tests and when idle.
 *
 *   sl_radix *r; sl_radix_new(&r, &(sl_radix_config){.page_size = 16, ...}, &e);
 *   sl_radix_match m; sl_radix_match_prefix(r, ids, n, pages, &m);
 *   sl_radix_lock(r, m.node);   ... use pages[0 .. m.len/page) ...
 *   sl_radix_node *end; sl_radix_insert(r, ids, L, pages, slot, &end);
 *   sl_radix_lock(r, end); sl_radix_unlock(r, m.node);
 *
 * Threads: one thread (the scheduler) uses a tree and its pools.
 */
#ifndef SL_RADIX_H
#define SL_RADIX_H

#include <stdint.h>

#include "pool.h"
#include "sl_err.h"

typedef struct sl_radix sl_radix;
typedef struct sl_radix_node sl_radix_node;

typedef struct sl_radix_config {
    int page_size;
    int hybrid;     /* 1: nodes carry mamba states and matches stop at the deepest one */
    int chunk;      /* branching-point unit C = max(64, page_size) (hybrid only) */
    sl_pool *pages; /* KV page pool the tree frees into (not owned) */
    sl_pool *slots; /* state slot pool (hybrid only; not owned) */
} sl_radix_config;

typedef struct sl_radix_match {
    int len;             /* usable cached prefix in tokens (page aligned, < n) */
    sl_radix_node *node; /* node ending at len (the root when len = 0) */
    int32_t state;       /* hybrid: state slot valid at len, -1 at the root */
    int kv_len;          /* tokens whose KV matched (>= len) */
    int branch_len;      /* hybrid: where to snapshot for siblings (0: nowhere) */
} sl_radix_match;

sl_status sl_radix_new(sl_radix **out, const sl_radix_config *cfg, sl_err *e);
/* Frees every node, returning their pages and states to the pools. Every
 * lock must have been released. */
void sl_radix_destroy(sl_radix *r);

/* Longest cached prefix of ids[0..n-1); writes its m->len / page_size page ids
 * to pages (room for n / page_size ids). */
void sl_radix_match_prefix(sl_radix *r, const int32_t *ids, int n, int32_t *pages,
                           sl_radix_match *m);
/* Caches ids[0..n) (n a multiple of page_size, > 0) with pages[0..n/page)
 * and, for hybrid trees, the state after those tokens (required there: a
 * hybrid leaf always has a state; pure-attention trees take -1). Returns the
 * already-cached length; *end (may be NULL) gets the node at depth n. */
int sl_radix_insert(sl_radix *r, const int32_t *ids, int n, int32_t *pages, int32_t state,
                    sl_radix_node **end);

void sl_radix_lock(sl_radix *r, sl_radix_node *node);
void sl_radix_unlock(sl_radix *r, sl_radix_node *node);
void sl_radix_lock_state(sl_radix *r, sl_radix_node *node);
void sl_radix_unlock_state(sl_radix *r, sl_radix_node *node);
int sl_radix_node_depth(const sl_radix_node *node);
int32_t sl_radix_node_state(const sl_radix_node *node);

/* Both return what they freed. */
int sl_radix_evict(sl_radix *r, int n_pages);
int sl_radix_evict_states(sl_radix *r, int n_states);

typedef struct sl_radix_stats {
    int nodes, pages, states;
    int evictable_pages;  /* pages in nodes nobody locks */
    int evictable_states; /* states whose node has no state lock */
} sl_radix_stats;
void sl_radix_get_stats(const sl_radix *r, sl_radix_stats *s);

/* Verifies: key/page shapes, unique page and slot ids all marked used in
 * their pools, lock counts equal direct locks plus the children's, the
 * evictable counters, no unlocked tombstone leaves (hybrid), and
 * pool free + tree + held_* == pool total (held_*: ids the caller's requests
 * own outside the tree). Returns SL_OK or the first violation in e. */
sl_status sl_radix_check(const sl_radix *r, int held_pages, int held_slots, sl_err *e);

#endif

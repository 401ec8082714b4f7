#include "radix.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* LRU order is kept as a stamp per node (a counter bumped on every touch);
 * eviction builds a min-heap of the candidates of one kind (unlocked leaves
 * for KV, unlocked stateful nodes for states), which is the two-list LRU of
 * docs/mamba_cache.md without maintaining the lists on every lookup. */
struct sl_radix_node {
    sl_radix_node *parent, *child, *next, *prev; /* children: doubly linked */
    int32_t *key, *pages;
    int len;        /* tokens on the edge (multiple of page_size) */
    int depth;      /* tokens from the root to this node's end */
    int32_t state;  /* hybrid: slot valid at depth, or -1 (tombstone) */
    int ref;        /* direct locks */
    int lock;       /* ref + the children's lock: > 0 protects KV */
    int state_lock; /* protects the state */
    uint64_t stamp;
};

struct sl_radix {
    sl_radix_config cfg;
    sl_radix_node root;
    uint64_t clock;
    int n_nodes, n_pages, n_states, evictable_pages, evictable_states;
};

static int node_pages(const sl_radix *r, const sl_radix_node *n)
{
    return n->len / r->cfg.page_size;
}

sl_status sl_radix_new(sl_radix **out, const sl_radix_config *cfg, sl_err *e)
{
    *out = NULL;
    if (cfg->page_size <= 0 || !cfg->pages || (cfg->hybrid && (!cfg->slots || cfg->chunk <= 0)))
        return sl_err_set(e, SL_ERR_INVALID, "radix cache: bad configuration");
    sl_radix *r = calloc(1, sizeof *r);
    if (!r) return sl_err_set(e, SL_ERR_NOMEM, "radix cache: out of memory");
    r->cfg = *cfg;
    r->root.state = -1;
    *out = r;
    return SL_OK;
}

static void touch(sl_radix *r, sl_radix_node *n)
{
    n->stamp = ++r->clock;
}

static void unlink_child(sl_radix_node *n)
{
    sl_radix_node *p = n->parent;
    if (n->prev)
        n->prev->next = n->next;
    else
        p->child = n->next;
    if (n->next) n->next->prev = n->prev;
    n->next = n->prev = NULL;
}

static void link_child(sl_radix_node *p, sl_radix_node *n)
{
    n->parent = p;
    n->prev = NULL;
    n->next = p->child;
    if (p->child) p->child->prev = n;
    p->child = n;
}

/* Frees the node's state slot (if any) back to the pool. */
static void drop_state(sl_radix *r, sl_radix_node *n)
{
    if (n->state < 0) return;
    sl_pool_release(r->cfg.slots, &n->state, 1);
    n->state = -1;
    r->n_states--;
    if (n->state_lock == 0) r->evictable_states--;
}

/* Removes a childless node with its pages and state. */
static void delete_node(sl_radix *r, sl_radix_node *n)
{
    SL_ASSERT(!n->child && n != &r->root);
    drop_state(r, n);
    sl_pool_release(r->cfg.pages, n->pages, node_pages(r, n));
    r->n_pages -= node_pages(r, n);
    if (n->lock == 0) r->evictable_pages -= node_pages(r, n);
    unlink_child(n);
    free(n->key);
    free(n->pages);
    free(n);
    r->n_nodes--;
}

/* Deletes n and then (hybrid) its ancestors while they are unlocked tombstone
 * leaves. Adds the pages freed to *freed; returns the first surviving
 * ancestor. */
static sl_radix_node *delete_cascade(sl_radix *r, sl_radix_node *n, int *freed)
{
    for (;;) {
        sl_radix_node *p = n->parent;
        *freed += node_pages(r, n);
        delete_node(r, n);
        if (!r->cfg.hybrid || p == &r->root || p->child || p->lock || p->state >= 0) return p;
        n = p;
    }
}

static void free_subtree(sl_radix *r, sl_radix_node *n)
{
    while (n->child)
        free_subtree(r, n->child);
    if (n != &r->root) delete_node(r, n);
}

void sl_radix_destroy(sl_radix *r)
{
    if (!r) return;
    free_subtree(r, &r->root);
    free(r);
}

static sl_radix_node *find_child(const sl_radix *r, const sl_radix_node *n, const int32_t *ids)
{
    size_t pb = sizeof(int32_t) * (size_t)r->cfg.page_size;
    for (sl_radix_node *c = n->child; c; c = c->next)
        if (!memcmp(c->key, ids, pb)) return c;
    return NULL;
}

/* Whole pages of c's key that equal ids[0..avail). */
static int match_pages(const sl_radix *r, const sl_radix_node *c, const int32_t *ids, int avail)
{
    int P = r->cfg.page_size, k = 0, lim = (c->len < avail ? c->len : avail) / P;
    while (k < lim && !memcmp(c->key + k * P, ids + k * P, sizeof(int32_t) * (size_t)P))
        k++;
    return k;
}

/* Splits c after `at` tokens; the new upper node takes c's place in the tree
 * and is returned. c keeps its state (valid at its unchanged end). */
static sl_radix_node *split(sl_radix *r, sl_radix_node *c, int at)
{
    int P = r->cfg.page_size, ap = at / P, rest = c->len - at;
    sl_radix_node *u = calloc(1, sizeof *u);
    int32_t *ukey = malloc(sizeof(int32_t) * (size_t)at), *upages = malloc(sizeof(int32_t) * ap);
    int32_t *ckey = malloc(sizeof(int32_t) * (size_t)rest);
    int32_t *cpages = malloc(sizeof(int32_t) * (size_t)(rest / P));
    SL_ASSERT(u && ukey && upages && ckey && cpages); /* tiny allocations: out of memory is fatal */
    memcpy(ukey, c->key, sizeof(int32_t) * (size_t)at);
    memcpy(upages, c->pages, sizeof(int32_t) * (size_t)ap);
    memcpy(ckey, c->key + at, sizeof(int32_t) * (size_t)rest);
    memcpy(cpages, c->pages + ap, sizeof(int32_t) * (size_t)(rest / P));
    free(c->key);
    free(c->pages);
    u->key = ukey;
    u->pages = upages;
    u->len = at;
    u->depth = c->depth - rest;
    u->state = -1;
    u->lock = c->lock; /* every lock below passes through u */
    u->stamp = c->stamp;
    c->key = ckey;
    c->pages = cpages;
    c->len = rest;
    sl_radix_node *p = c->parent;
    unlink_child(c);
    link_child(p, u);
    link_child(u, c);
    r->n_nodes++;
    return u;
}

void sl_radix_match_prefix(sl_radix *r, const int32_t *ids, int n, int32_t *pages,
                           sl_radix_match *m)
{
    int P = r->cfg.page_size, limit = n > 0 ? (n - 1) / P * P : 0, pos = 0, np = 0;
    sl_radix_node *node = &r->root, *best = &r->root;
    int best_np = 0;
    memset(m, 0, sizeof *m);
    while (pos < limit) {
        sl_radix_node *c = find_child(r, node, ids + pos);
        if (!c) break;
        int k = match_pages(r, c, ids + pos, limit - pos);
        if (k * P < c->len) {
            if (!r->cfg.hybrid)
                c = split(r, c, k * P); /* the prefix must end on a node */
            else {
                memcpy(pages + np, c->pages, sizeof(int32_t) * (size_t)k);
                np += k;
                pos += k * P;
                touch(r, c);
                break;
            }
        }
        memcpy(pages + np, c->pages, sizeof(int32_t) * (size_t)node_pages(r, c));
        np += node_pages(r, c);
        pos += c->len;
        node = c;
        touch(r, c);
        if (!r->cfg.hybrid || c->state >= 0) {
            best = c;
            best_np = np;
        }
    }
    m->node = best;
    m->len = best_np * P;
    m->state = best->state;
    m->kv_len = pos;
    if (r->cfg.hybrid && pos > m->len) {
        int b = pos / r->cfg.chunk * r->cfg.chunk;
        m->branch_len = b > m->len ? b : 0;
    }
}

/* The tree keeps its page for a position; the caller's copy (if another id)
 * goes back to the pool. */
static void dedupe(sl_radix *r, const sl_radix_node *c, int32_t *pages)
{
    for (int i = 0; i < node_pages(r, c); i++) {
        if (pages[i] != c->pages[i]) {
            sl_pool_release(r->cfg.pages, &pages[i], 1);
            pages[i] = c->pages[i];
        }
    }
}

int sl_radix_insert(sl_radix *r, const int32_t *ids, int n, int32_t *pages, int32_t state,
                    sl_radix_node **end)
{
    int P = r->cfg.page_size, pos = 0;
    SL_ASSERT(n > 0 && n % P == 0);
    SL_ASSERT(r->cfg.hybrid ? state >= 0 : state < 0);
    sl_radix_node *node = &r->root;
    while (pos < n) {
        sl_radix_node *c = find_child(r, node, ids + pos);
        if (!c) break;
        int k = match_pages(r, c, ids + pos, n - pos);
        if (k * P < c->len) c = split(r, c, k * P);
        dedupe(r, c, pages + pos / P);
        pos += c->len;
        node = c;
        touch(r, c);
    }
    int cached = pos;
    if (pos < n) {
        sl_radix_node *leaf = calloc(1, sizeof *leaf);
        int len = n - pos;
        SL_ASSERT(leaf);
        leaf->key = malloc(sizeof(int32_t) * (size_t)len);
        leaf->pages = malloc(sizeof(int32_t) * (size_t)(len / P));
        SL_ASSERT(leaf->key && leaf->pages);
        memcpy(leaf->key, ids + pos, sizeof(int32_t) * (size_t)len);
        memcpy(leaf->pages, pages + pos / P, sizeof(int32_t) * (size_t)(len / P));
        leaf->len = len;
        leaf->depth = n;
        leaf->state = -1;
        link_child(node, leaf);
        touch(r, leaf);
        r->n_nodes++;
        r->n_pages += len / P;
        r->evictable_pages += len / P;
        node = leaf;
    }
    if (state >= 0) {
        if (node->state < 0) {
            node->state = state;
            r->n_states++;
            if (node->state_lock == 0) r->evictable_states++;
        } else {
            sl_pool_release(r->cfg.slots, &state, 1);
        }
    }
    if (end) *end = node;
    return cached;
}

void sl_radix_lock(sl_radix *r, sl_radix_node *node)
{
    node->ref++;
    for (sl_radix_node *n = node; n != &r->root; n = n->parent)
        if (n->lock++ == 0) r->evictable_pages -= node_pages(r, n);
}

void sl_radix_unlock(sl_radix *r, sl_radix_node *node)
{
    SL_ASSERT(node->ref > 0);
    node->ref--;
    for (sl_radix_node *n = node; n != &r->root; n = n->parent) {
        SL_ASSERT(n->lock > 0);
        if (--n->lock == 0) r->evictable_pages += node_pages(r, n);
    }
    /* a node that lost its state while locked may now be a tombstone leaf */
    int freed = 0;
    if (r->cfg.hybrid && node != &r->root && node->lock == 0 && !node->child && node->state < 0)
        delete_cascade(r, node, &freed);
}

void sl_radix_lock_state(sl_radix *r, sl_radix_node *node)
{
    if (node->state < 0) return;
    if (node->state_lock++ == 0) r->evictable_states--;
}

void sl_radix_unlock_state(sl_radix *r, sl_radix_node *node)
{
    if (node->state < 0) return;
    SL_ASSERT(node->state_lock > 0);
    if (--node->state_lock == 0) r->evictable_states++;
}

int sl_radix_node_depth(const sl_radix_node *node)
{
    return node->depth;
}
int32_t sl_radix_node_state(const sl_radix_node *node)
{
    return node->state;
}

/* ---- eviction ------------------------------------------------------------------ */

typedef struct heap {
    sl_radix_node **v;
    int n, cap;
} heap;

static void heap_push(heap *h, sl_radix_node *x)
{
    if (h->n == h->cap) {
        h->cap = h->cap ? 2 * h->cap : 64;
        h->v = realloc(h->v, sizeof *h->v * (size_t)h->cap);
        SL_ASSERT(h->v);
    }
    int i = h->n++;
    while (i > 0 && h->v[(i - 1) / 2]->stamp > x->stamp) {
        h->v[i] = h->v[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h->v[i] = x;
}

static sl_radix_node *heap_pop(heap *h)
{
    if (!h->n) return NULL;
    sl_radix_node *top = h->v[0], *x = h->v[--h->n];
    int i = 0;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && h->v[c + 1]->stamp < h->v[c]->stamp) c++;
        if (h->v[c]->stamp >= x->stamp) break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n) h->v[i] = x;
    return top;
}

typedef int (*candidate_fn)(const sl_radix_node *n);

static int kv_candidate(const sl_radix_node *n)
{
    return !n->child && n->lock == 0;
}

/* A state can go if its node is not state-locked; a leaf goes whole, so it
 * must not be locked at all. */
static int state_candidate(const sl_radix_node *n)
{
    return n->state >= 0 && n->state_lock == 0 && (n->child || n->lock == 0);
}

static void collect(sl_radix_node *n, candidate_fn ok, heap *h, int skip)
{
    for (sl_radix_node *c = n->child; c; c = c->next)
        collect(c, ok, h, 0);
    if (!skip && ok(n)) heap_push(h, n);
}

int sl_radix_evict(sl_radix *r, int n_pages)
{
    if (n_pages <= 0 || r->evictable_pages == 0) return 0;
    heap h = {0};
    int freed = 0;
    collect(&r->root, kv_candidate, &h, 1);
    sl_radix_node *n;
    while (freed < n_pages && (n = heap_pop(&h))) {
        sl_radix_node *p = delete_cascade(r, n, &freed);
        if (p != &r->root && kv_candidate(p)) heap_push(&h, p);
    }
    free(h.v);
    return freed;
}

int sl_radix_evict_states(sl_radix *r, int n_states)
{
    if (n_states <= 0 || r->evictable_states == 0) return 0;
    heap h = {0};
    int freed = 0;
    collect(&r->root, state_candidate, &h, 1);
    sl_radix_node *n;
    while (freed < n_states && (n = heap_pop(&h))) {
        /* an internal node may have become a locked leaf since it was collected */
        if (!state_candidate(n)) continue;
        freed++;
        int pages = 0;
        if (n->child)
            drop_state(r, n); /* internal: becomes a tombstone */
        else
            delete_cascade(r, n, &pages);
    }
    free(h.v);
    return freed;
}

void sl_radix_get_stats(const sl_radix *r, sl_radix_stats *s)
{
    s->nodes = r->n_nodes;
    s->pages = r->n_pages;
    s->states = r->n_states;
    s->evictable_pages = r->evictable_pages;
    s->evictable_states = r->evictable_states;
}

/* ---- check --------------------------------------------------------------------- */

typedef struct check_ctx {
    const sl_radix *r;
    uint8_t *page_seen, *slot_seen;
    int nodes, pages, states, ev_pages, ev_states;
    sl_err *e;
} check_ctx;

static sl_status check_node(check_ctx *x, const sl_radix_node *n)
{
    const sl_radix *r = x->r;
    int P = r->cfg.page_size, sum = 0;
    for (const sl_radix_node *c = n->child; c; c = c->next) {
        if (c->parent != n) return sl_err_set(x->e, SL_ERR_INVALID, "radix: bad parent link");
        for (const sl_radix_node *d = c->next; d; d = d->next)
            if (!memcmp(c->key, d->key, sizeof(int32_t) * (size_t)P))
                return sl_err_set(x->e, SL_ERR_INVALID, "radix: siblings share a first page");
        sl_status s = check_node(x, c);
        if (s) return s;
        sum += c->lock;
    }
    if (n == &r->root) return SL_OK;
    x->nodes++;
    if (n->len <= 0 || n->len % P || n->depth != n->parent->depth + n->len)
        return sl_err_set(x->e, SL_ERR_INVALID, "radix: node at depth %d has bad length %d",
                          n->depth, n->len);
    if (n->lock != n->ref + sum || n->ref < 0)
        return sl_err_set(x->e, SL_ERR_INVALID,
                          "radix: node at depth %d has lock %d, expected %d direct + %d below",
                          n->depth, n->lock, n->ref, sum);
    for (int i = 0; i < n->len / P; i++) {
        int32_t pg = n->pages[i];
        if (!sl_pool_is_used(r->cfg.pages, pg) || x->page_seen[pg]++)
            return sl_err_set(x->e, SL_ERR_INVALID, "radix: page %d is free or held twice", pg);
    }
    x->pages += n->len / P;
    if (!n->lock) x->ev_pages += n->len / P;
    if (n->state >= 0) {
        if (!r->cfg.hybrid || !sl_pool_is_used(r->cfg.slots, n->state) || x->slot_seen[n->state]++)
            return sl_err_set(x->e, SL_ERR_INVALID, "radix: state slot %d is free or held twice",
                              n->state);
        x->states++;
        if (!n->state_lock) x->ev_states++;
    } else if (n->state_lock) {
        return sl_err_set(x->e, SL_ERR_INVALID, "radix: state lock on a tombstone");
    } else if (r->cfg.hybrid && !n->child && !n->lock) {
        return sl_err_set(x->e, SL_ERR_INVALID, "radix: unlocked tombstone leaf at depth %d",
                          n->depth);
    }
    return SL_OK;
}

sl_status sl_radix_check(const sl_radix *r, int held_pages, int held_slots, sl_err *e)
{
    check_ctx x = {.r = r, .e = e};
    x.page_seen = calloc((size_t)sl_pool_total(r->cfg.pages) + 1, 1);
    x.slot_seen = calloc(r->cfg.slots ? (size_t)sl_pool_total(r->cfg.slots) + 1 : 1, 1);
    if (!x.page_seen || !x.slot_seen) {
        free(x.page_seen);
        free(x.slot_seen);
        return sl_err_set(e, SL_ERR_NOMEM, "radix check: out of memory");
    }
    sl_status s = check_node(&x, &r->root);
    free(x.page_seen);
    free(x.slot_seen);
    if (s) return s;
    if (x.nodes != r->n_nodes || x.pages != r->n_pages || x.states != r->n_states ||
        x.ev_pages != r->evictable_pages || x.ev_states != r->evictable_states)
        return sl_err_set(e, SL_ERR_INVALID,
                          "radix: counters (nodes %d pages %d states %d evictable %d/%d) differ "
                          "from the tree (%d %d %d %d/%d)",
                          r->n_nodes, r->n_pages, r->n_states, r->evictable_pages,
                          r->evictable_states, x.nodes, x.pages, x.states, x.ev_pages, x.ev_states);
    int pf = sl_pool_free_count(r->cfg.pages), pt = sl_pool_total(r->cfg.pages);
    if (pf + x.pages + held_pages != pt)
        return sl_err_set(e, SL_ERR_INVALID,
                          "page accounting: %d free + %d in tree + %d held != %d total", pf,
                          x.pages, held_pages, pt);
    if (r->cfg.slots) {
        int sf = sl_pool_free_count(r->cfg.slots), stt = sl_pool_total(r->cfg.slots);
        if (sf + x.states + held_slots != stt)
            return sl_err_set(e, SL_ERR_INVALID,
                              "slot accounting: %d free + %d in tree + %d held != %d total", sf,
                              x.states, held_slots, stt);
    }
    return SL_OK;
}

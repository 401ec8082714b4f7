/* sl_route: see route.h. The per-worker tree is a plain radix tree over
 * token ids; children are kept sorted by their first token.
 *
 *   insert "1 2 3 4" then "1 2 9":      root
 *                                        └─ [1 2]
 *                                            ├─ [3 4]
 *                                            └─ [9]
 */
#include "route.h"

#include <stdlib.h>
#include <string.h>

#include "sl_rng.h"

typedef struct node node;
struct node {
    int32_t *key; /* edge label from the parent */
    int len;
    node *parent;
    node **kids; /* sorted by kids[i]->key[0] */
    int nkids, capkids;
    uint64_t touched; /* LRU clock */
};

typedef struct tree {
    node root;
    size_t tokens;
} tree;

struct sl_route {
    sl_route_config cfg;
    tree **trees; /* by worker id */
    int ntrees;
    uint64_t clock;
    uint64_t rr;
    uint64_t draws;
};

sl_route_config sl_route_config_default(void)
{
    return (sl_route_config){.policy = SL_ROUTE_POLICY_CACHE_AWARE,
                             .cache_threshold = 0.3,
                             .balance_abs_threshold = 64,
                             .balance_rel_threshold = 1.5,
                             .max_tree_tokens = 4u << 20,
                             .seed = 0x5eed};
}

static const char *const policy_names[] = {"cache_aware", "round_robin", "random", "power_of_two"};

sl_status sl_route_policy_parse(const char *name, sl_route_policy *out, sl_err *e)
{
    for (int i = 0; i < 4; i++)
        if (!strcmp(name, policy_names[i])) {
            *out = (sl_route_policy)i;
            return SL_OK;
        }
    return sl_err_set(e, SL_ERR_INVALID,
                      "--policy %s: expected cache_aware, round_robin, random or power_of_two",
                      name);
}

const char *sl_route_policy_name(sl_route_policy p) { return policy_names[p]; }

sl_status sl_route_new(sl_route **out, const sl_route_config *cfg, sl_err *e)
{
    sl_route *r = calloc(1, sizeof *r);
    if (!r) return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    r->cfg = cfg ? *cfg : sl_route_config_default();
    *out = r;
    return SL_OK;
}

static void node_free_kids(node *n)
{
    for (int i = 0; i < n->nkids; i++) {
        node_free_kids(n->kids[i]);
        free(n->kids[i]->key);
        free(n->kids[i]);
    }
    free(n->kids);
    n->kids = NULL;
    n->nkids = n->capkids = 0;
}

void sl_route_free(sl_route *r)
{
    if (!r) return;
    for (int i = 0; i < r->ntrees; i++)
        if (r->trees[i]) {
            node_free_kids(&r->trees[i]->root);
            free(r->trees[i]);
        }
    free(r->trees);
    free(r);
}

static tree *tree_get(sl_route *r, int worker, int create)
{
    if (worker < 0) return NULL;
    if (worker >= r->ntrees) {
        if (!create) return NULL;
        tree **t = realloc(r->trees, (size_t)(worker + 1) * sizeof *t);
        if (!t) return NULL;
        memset(t + r->ntrees, 0, (size_t)(worker + 1 - r->ntrees) * sizeof *t);
        r->trees = t;
        r->ntrees = worker + 1;
    }
    if (!r->trees[worker] && create) r->trees[worker] = calloc(1, sizeof(tree));
    return r->trees[worker];
}

/* Index of the child starting with tok, or -(insertion point) - 1. */
static int kid_find(const node *n, int32_t tok)
{
    int lo = 0, hi = n->nkids - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        int32_t k = n->kids[mid]->key[0];
        if (k == tok) return mid;
        if (k < tok)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -lo - 1;
}

static int kid_insert(node *n, int at, node *k)
{
    if (n->nkids == n->capkids) {
        int cap = n->capkids ? n->capkids * 2 : 4;
        node **kk = realloc(n->kids, (size_t)cap * sizeof *kk);
        if (!kk) return -1;
        n->kids = kk;
        n->capkids = cap;
    }
    memmove(n->kids + at + 1, n->kids + at, (size_t)(n->nkids - at) * sizeof *n->kids);
    n->kids[at] = k;
    n->nkids++;
    k->parent = n;
    return 0;
}

static int common_len(const int32_t *a, int na, const int32_t *b, int nb)
{
    int i = 0;
    while (i < na && i < nb && a[i] == b[i]) i++;
    return i;
}

static int tree_match(sl_route *r, tree *t, const int32_t *ids, int n)
{
    if (!t) return 0;
    uint64_t now = ++r->clock;
    node *cur = &t->root;
    int pos = 0;
    while (pos < n) {
        int k = kid_find(cur, ids[pos]);
        if (k < 0) break;
        node *kid = cur->kids[k];
        int c = common_len(kid->key, kid->len, ids + pos, n - pos);
        kid->touched = now;
        pos += c;
        if (c < kid->len) break;
        cur = kid;
    }
    return pos;
}

static node *node_new(const int32_t *ids, int n, uint64_t now)
{
    node *k = calloc(1, sizeof *k);
    if (!k) return NULL;
    k->key = malloc((size_t)n * sizeof *k->key);
    if (!k->key) {
        free(k);
        return NULL;
    }
    memcpy(k->key, ids, (size_t)n * sizeof *ids);
    k->len = n;
    k->touched = now;
    return k;
}

/* Splits kid after c tokens: kid keeps the tail under a new head node. */
static node *node_split(node *parent, int idx, int c)
{
    node *kid = parent->kids[idx];
    node *head = node_new(kid->key, c, kid->touched);
    if (!head) return NULL;
    int32_t *tail = malloc((size_t)(kid->len - c) * sizeof *tail);
    if (!tail) {
        free(head->key);
        free(head);
        return NULL;
    }
    memcpy(tail, kid->key + c, (size_t)(kid->len - c) * sizeof *tail);
    free(kid->key);
    kid->key = tail;
    kid->len -= c;
    parent->kids[idx] = head;
    head->parent = parent;
    if (kid_insert(head, 0, kid)) { /* undo: cannot happen often, but keep the tree valid */
        parent->kids[idx] = kid;
        kid->parent = parent;
        free(head->key);
        free(head);
        return NULL;
    }
    return head;
}

static void tree_insert(sl_route *r, tree *t, const int32_t *ids, int n)
{
    uint64_t now = ++r->clock;
    node *cur = &t->root;
    int pos = 0;
    while (pos < n) {
        int k = kid_find(cur, ids[pos]);
        if (k < 0) {
            node *nk = node_new(ids + pos, n - pos, now);
            if (!nk || kid_insert(cur, -k - 1, nk)) {
                if (nk) {
                    free(nk->key);
                    free(nk);
                }
                return;
            }
            t->tokens += (size_t)(n - pos);
            return;
        }
        node *kid = cur->kids[k];
        int c = common_len(kid->key, kid->len, ids + pos, n - pos);
        kid->touched = now;
        if (c < kid->len) {
            kid = node_split(cur, k, c);
            if (!kid) return;
        }
        pos += c;
        cur = kid;
    }
}

/* LRU eviction down to 90% of the bound, so it runs rarely. */
static void collect_leaves(node *n, node ***v, size_t *nv, size_t *cap)
{
    for (int i = 0; i < n->nkids; i++) {
        node *k = n->kids[i];
        if (!k->nkids) {
            if (*nv == *cap) {
                size_t nc = *cap ? *cap * 2 : 256;
                node **nvv = realloc(*v, nc * sizeof *nvv);
                if (!nvv) return;
                *v = nvv;
                *cap = nc;
            }
            (*v)[(*nv)++] = k;
        } else {
            collect_leaves(k, v, nv, cap);
        }
    }
}

static int by_touched(const void *a, const void *b)
{
    uint64_t x = (*(node *const *)a)->touched, y = (*(node *const *)b)->touched;
    return x < y ? -1 : x > y;
}

static void node_remove_leaf(tree *t, node *leaf)
{
    node *p = leaf->parent;
    int i = kid_find(p, leaf->key[0]);
    memmove(p->kids + i, p->kids + i + 1, (size_t)(p->nkids - i - 1) * sizeof *p->kids);
    p->nkids--;
    t->tokens -= (size_t)leaf->len;
    free(leaf->key);
    free(leaf);
}

static void tree_evict(sl_route *r, tree *t)
{
    size_t target = r->cfg.max_tree_tokens - r->cfg.max_tree_tokens / 10;
    while (t->tokens > target) {
        node **v = NULL;
        size_t nv = 0, cap = 0;
        collect_leaves(&t->root, &v, &nv, &cap);
        if (!nv) {
            free(v);
            return;
        }
        qsort(v, nv, sizeof *v, by_touched);
        /* Parents left without children are collected by the next round. */
        for (size_t i = 0; i < nv && t->tokens > target; i++) node_remove_leaf(t, v[i]);
        free(v);
    }
}

void sl_route_record(sl_route *r, int worker, const int32_t *ids, int n)
{
    if (n <= 0 || r->cfg.policy != SL_ROUTE_POLICY_CACHE_AWARE) return;
    tree *t = tree_get(r, worker, 1);
    if (!t) return;
    tree_insert(r, t, ids, n);
    if (t->tokens > r->cfg.max_tree_tokens) tree_evict(r, t);
}

void sl_route_forget(sl_route *r, int worker)
{
    tree *t = tree_get(r, worker, 0);
    if (!t) return;
    node_free_kids(&t->root);
    t->tokens = 0;
}

int sl_route_match(sl_route *r, int worker, const int32_t *ids, int n)
{
    return tree_match(r, tree_get(r, worker, 0), ids, n);
}

size_t sl_route_tree_tokens(const sl_route *r, int worker)
{
    if (worker < 0 || worker >= r->ntrees || !r->trees[worker]) return 0;
    return r->trees[worker]->tokens;
}

static int least_loaded(const sl_route *r, const sl_route_cand *c, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++) {
        if (c[i].load < c[best].load ||
            (c[i].load == c[best].load &&
             sl_route_tree_tokens(r, c[i].worker) < sl_route_tree_tokens(r, c[best].worker)))
            best = i;
    }
    return best;
}

static uint64_t draw(sl_route *r) { return sl_rng_mix(r->cfg.seed ^ sl_rng_mix(++r->draws)); }

int sl_route_pick(sl_route *r, const sl_route_cand *c, int n, const int32_t *ids, int n_ids,
                  int *matched)
{
    if (matched) *matched = 0;
    if (n <= 0) return -1;
    int pick = 0;
    switch (r->cfg.policy) {
    case SL_ROUTE_POLICY_ROUND_ROBIN: pick = (int)(r->rr++ % (uint64_t)n); break;
    case SL_ROUTE_POLICY_RANDOM: pick = (int)(draw(r) % (uint64_t)n); break;
    case SL_ROUTE_POLICY_POWER_OF_TWO: {
        int a = (int)(draw(r) % (uint64_t)n), b = (int)(draw(r) % (uint64_t)n);
        pick = c[b].load < c[a].load ? b : a;
        break;
    }
    case SL_ROUTE_POLICY_CACHE_AWARE: {
        int lo = c[0].load, hi = c[0].load;
        for (int i = 1; i < n; i++) {
            if (c[i].load < lo) lo = c[i].load;
            if (c[i].load > hi) hi = c[i].load;
        }
        int imbalanced = hi - lo > r->cfg.balance_abs_threshold &&
                         (double)hi > (double)lo * r->cfg.balance_rel_threshold;
        if (imbalanced || n_ids <= 0) {
            pick = least_loaded(r, c, n);
            break;
        }
        int best = -1, best_len = 0;
        for (int i = 0; i < n; i++) {
            int m = tree_match(r, tree_get(r, c[i].worker, 0), ids, n_ids);
            if (c[i].checkpoint_tokens > 0) m -= m % c[i].checkpoint_tokens;
            if (m > best_len || (m == best_len && best >= 0 && m > 0 &&
                                 c[i].load < c[best].load)) {
                best = i;
                best_len = m;
            }
        }
        if (best >= 0 && best_len > 0 && (double)best_len >= r->cfg.cache_threshold * n_ids)
            pick = best;
        else
            pick = least_loaded(r, c, n);
        break;
    }
    }
    if (matched && r->cfg.policy == SL_ROUTE_POLICY_CACHE_AWARE) {
        int m = tree_match(r, tree_get(r, c[pick].worker, 0), ids, n_ids);
        if (c[pick].checkpoint_tokens > 0) m -= m % c[pick].checkpoint_tokens;
        *matched = m;
    }
    return pick;
}

/* sl_route: which worker gets a request.
 *
 * Policies: cache_aware (default), round_robin, random, power_of_two.
 *
 * cache_aware keeps, per worker, an approximate radix tree of the token
 * prefixes the router has sent there (prompts at dispatch, prompt + output at
 * completion). It is approximate because the worker evicts on its own; the
 * tree is bounded by max_tree_tokens per worker and evicts its least recently
 * used leaves. The choice follows sgl-model-gateway's cache-aware policy:
 *
 *   imbalanced = max_load - min_load > balance_abs_threshold
 *                && max_load > min_load * balance_rel_threshold
 *   imbalanced            -> least loaded worker
 *   best match / prompt >= cache_threshold -> worker with the longest match
 *   otherwise             -> least loaded worker (ties: smallest tree)
 *
 * For hybrid models a cached prefix is only usable up to the last mamba
 * state checkpoint, so a worker's match is rounded down to a multiple of its
 * checkpoint_tokens before comparing.
 *
 *   sl_route *rt; sl_route_config cfg = sl_route_config_default();
 *   sl_route_new(&rt, &cfg, &e);
 *   sl_route_cand c[2] = {{.worker = 0, .load = 3}, {.worker = 1, .load = 0}};
 *   int i = sl_route_pick(rt, c, 2, ids, n, &matched);   // index into c
 *   sl_route_record(rt, c[i].worker, ids, n);
 *
 * Threads: single-threaded (the router's loop).
 */
#ifndef SL_ROUTE_H
#define SL_ROUTE_H

#include <stddef.h>
#include <stdint.h>

#include "sl_err.h"

typedef enum sl_route_policy {
    SL_ROUTE_POLICY_CACHE_AWARE = 0,
    SL_ROUTE_POLICY_ROUND_ROBIN,
    SL_ROUTE_POLICY_RANDOM,
    SL_ROUTE_POLICY_POWER_OF_TWO,
} sl_route_policy;

typedef struct sl_route_config {
    sl_route_policy policy;
    double cache_threshold;       /* fraction of the prompt that must match */
    int balance_abs_threshold;    /* requests */
    double balance_rel_threshold; /* ratio */
    size_t max_tree_tokens;       /* per worker */
    uint64_t seed;                /* random and power_of_two */
} sl_route_config;

sl_route_config sl_route_config_default(void);
/* "cache_aware" | "round_robin" | "random" | "power_of_two". */
sl_status sl_route_policy_parse(const char *name, sl_route_policy *out, sl_err *e);
const char *sl_route_policy_name(sl_route_policy p);

typedef struct sl_route sl_route;

/* A worker that may take the request. */
typedef struct sl_route_cand {
    int worker;            /* stable worker id (index in the cluster) */
    int load;              /* requests running + queued there */
    int checkpoint_tokens; /* hybrid models: usable prefix unit; 0 = any length */
} sl_route_cand;

sl_status sl_route_new(sl_route **out, const sl_route_config *cfg, sl_err *e);
void sl_route_free(sl_route *r);

/* Picks one of c[0..n) for a prompt; returns its index, or -1 when n == 0.
 * *matched (may be NULL) receives the chosen worker's usable prefix length.
 * Matching touches the LRU clock of the matched path but does not insert. */
int sl_route_pick(sl_route *r, const sl_route_cand *c, int n, const int32_t *ids, int n_ids,
                  int *matched);
/* Records that worker now likely caches ids[0..n). */
void sl_route_record(sl_route *r, int worker, const int32_t *ids, int n);
/* Drops what is known about a worker (it restarted or died). */
void sl_route_forget(sl_route *r, int worker);
/* Longest recorded prefix of ids for worker (raw tokens, no rounding). */
int sl_route_match(sl_route *r, int worker, const int32_t *ids, int n);
/* Tokens stored for worker (memory bound checks). */
size_t sl_route_tree_tokens(const sl_route *r, int worker);

#endif

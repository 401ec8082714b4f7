#include "pool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct sl_pool {
    char what[32];
    int n, n_free;
    int32_t *stack; /* free ids, top at n_free-1 */
    uint8_t *used;
};

sl_status sl_pool_new(sl_pool **out, const char *what, int n, sl_err *e)
{
    *out = NULL;
    if (n < 0) return sl_err_set(e, SL_ERR_INVALID, "%s pool: negative size %d", what, n);
    sl_pool *p = calloc(1, sizeof *p);
    if (!p) return sl_err_set(e, SL_ERR_NOMEM, "%s pool: out of memory", what);
    snprintf(p->what, sizeof p->what, "%s", what);
    p->stack = malloc(sizeof(int32_t) * (size_t)(n ? n : 1));
    p->used = calloc((size_t)(n ? n : 1), 1);
    if (!p->stack || !p->used) {
        sl_pool_free(p);
        return sl_err_set(e, SL_ERR_NOMEM, "%s pool: out of memory for %d ids", what, n);
    }
    p->n = p->n_free = n;
    /* lowest ids on top, so allocation order is easy to read in tests */
    for (int i = 0; i < n; i++)
        p->stack[i] = n - 1 - i;
    *out = p;
    return SL_OK;
}

void sl_pool_free(sl_pool *p)
{
    if (!p) return;
    free(p->stack);
    free(p->used);
    free(p);
}

int sl_pool_alloc(sl_pool *p, int n, int32_t *out)
{
    if (n > p->n_free) return -1;
    for (int i = 0; i < n; i++) {
        int32_t id = p->stack[--p->n_free];
        SL_ASSERT(!p->used[id]);
        p->used[id] = 1;
        out[i] = id;
    }
    return 0;
}

void sl_pool_release(sl_pool *p, const int32_t *ids, int n)
{
    for (int i = 0; i < n; i++) {
        int32_t id = ids[i];
        SL_ASSERT(id >= 0 && id < p->n && p->used[id]);
        p->used[id] = 0;
        p->stack[p->n_free++] = id;
    }
}

int sl_pool_free_count(const sl_pool *p)
{
    return p->n_free;
}
int sl_pool_total(const sl_pool *p)
{
    return p->n;
}
int sl_pool_is_used(const sl_pool *p, int32_t id)
{
    return id >= 0 && id < p->n && p->used[id];
}

sl_status sl_pool_plan_sizes(const sl_pool_sizing *s, sl_pool_plan *out, sl_err *e)
{
    memset(out, 0, sizeof *out);
    if (s->page_size <= 0) return sl_err_set(e, SL_ERR_INVALID, "page size must be positive");
    int ctx_pages = (s->context_len + s->page_size - 1) / s->page_size;
    size_t state_budget = 0, kv_budget = s->budget_bytes;
    if (s->slot_bytes) {
        if (s->max_state_slots > 0) {
            state_budget = (size_t)s->max_state_slots * s->slot_bytes;
        } else {
            double r = s->state_ratio > 0 ? s->state_ratio : 0.9;
            state_budget = (size_t)((double)s->budget_bytes * r / (1.0 + r));
        }
        kv_budget = s->budget_bytes > state_budget ? s->budget_bytes - state_budget : 0;
        out->n_slots =
            s->max_state_slots > 0 ? s->max_state_slots : (int)(state_budget / s->slot_bytes);
    }
    if (s->max_total_tokens > 0) {
        out->n_pages = (s->max_total_tokens + s->page_size - 1) / s->page_size;
    } else {
        size_t n = s->page_bytes ? kv_budget / s->page_bytes : 0;
        out->n_pages = n > 0x7fffffff ? 0x7fffffff : (int)n;
    }
    if (out->n_pages < ctx_pages)
        return sl_err_set(
            e, SL_ERR_LIMIT,
            "KV pool of %d pages (page size %d) cannot hold one request of "
            "--context-length %d: raise the memory budget or lower the context length",
            out->n_pages, s->page_size, s->context_len);
    int mr = s->max_running;
    if (mr <= 0) {
        mr = out->n_pages; /* at least a page each */
        if (mr > 1024) mr = 1024;
    }
    if (s->slot_bytes) {
        int per = s->slots_per_request > 0 ? s->slots_per_request : 1;
        int fit = (out->n_slots - 1) / per;
        if (fit < 1)
            return sl_err_set(e, SL_ERR_LIMIT,
                              "mamba state pool of %d slots is too small: a running request "
                              "needs %d (raise the memory budget or --max-mamba-cache-size)",
                              out->n_slots, per + 1);
        if (mr > fit) mr = fit;
    }
    out->max_running = mr;
    return SL_OK;
}

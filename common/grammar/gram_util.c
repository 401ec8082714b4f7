/* The grammar files' small containers: the hash -> id map and the LRU (gram_impl.h). */
#define XXH_INLINE_ALL

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "gram_impl.h"

uint64_t gram_hash(const void *p, size_t n)
{
    return XXH3_64bits(p, n);
}

/* ---- gram_map ---- */

int gram_map_init(gram_map *m, uint32_t cap)
{
    uint32_t c = 16;
    while (c < cap)
        c *= 2;
    m->key = malloc((size_t)c * sizeof *m->key);
    m->val = malloc((size_t)c * sizeof *m->val);
    if (!m->key || !m->val) {
        free(m->key), free(m->val);
        *m = (gram_map){0};
        return -1;
    }
    memset(m->val, 0xFF, (size_t)c * sizeof *m->val);
    m->mask = c - 1;
    m->n = 0;
    return 0;
}

int gram_map_put(gram_map *m, uint64_t h, uint32_t val)
{
    if ((m->n + 1) * 2 > m->mask + 1) {
        gram_map old = *m;
        if (gram_map_init(m, (old.mask + 1) * 2)) {
            *m = old;
            return -1;
        }
        for (uint32_t i = 0; i <= old.mask; i++)
            if (old.val[i] != GRAM_NONE) gram_map_put(m, old.key[i], old.val[i]);
        gram_map_free(&old);
    }
    uint32_t i = gram_map_first(m, h);
    while (m->val[i] != GRAM_NONE)
        i = gram_map_after(m, i);
    m->key[i] = h;
    m->val[i] = val;
    m->n++;
    return 0;
}

void gram_map_clear(gram_map *m)
{
    memset(m->val, 0xFF, ((size_t)m->mask + 1) * sizeof *m->val);
    m->n = 0;
}

void gram_map_free(gram_map *m)
{
    free(m->key);
    free(m->val);
    *m = (gram_map){0};
}

/* ---- gram_lru ---- */

void gram_lru_init(gram_lru *l, size_t limit, void (*drop)(void *value))
{
    *l = (gram_lru){.limit = limit, .drop = drop};
}

static gram_lru_entry **chain(gram_lru *l, uint64_t hash)
{
    return &l->bucket[(uint32_t)(hash ^ hash >> 32) & (l->n_bucket - 1)];
}

static void unlink_recent(gram_lru *l, gram_lru_entry *x)
{
    if (x->prev) x->prev->next = x->next;
    else l->head = x->next;
    if (x->next) x->next->prev = x->prev;
    else l->tail = x->prev;
}

static void push_recent(gram_lru *l, gram_lru_entry *x)
{
    x->prev = NULL;
    x->next = l->head;
    if (l->head) l->head->prev = x;
    l->head = x;
    if (!l->tail) l->tail = x;
}

gram_lru_entry *gram_lru_get(gram_lru *l, uint64_t hash, const void *key, size_t key_len)
{
    if (!l->n) return NULL;
    for (gram_lru_entry *x = *chain(l, hash); x; x = x->hnext)
        if (x->hash == hash && x->key_len == key_len && !memcmp(x->key, key, key_len)) {
            unlink_recent(l, x);
            push_recent(l, x);
            return x;
        }
    return NULL;
}

static void evict(gram_lru *l, gram_lru_entry *x)
{
    gram_lru_entry **pp = chain(l, x->hash);
    while (*pp != x)
        pp = &(*pp)->hnext;
    *pp = x->hnext;
    unlink_recent(l, x);
    l->n--;
    l->cost -= x->cost;
    l->drop(x->value);
    free(x);
}

static void trim(gram_lru *l)
{
    while (l->cost > l->limit && l->tail)
        evict(l, l->tail);
}

int gram_lru_put(gram_lru *l, uint64_t hash, const void *key, size_t key_len, void *value,
                 size_t cost)
{
    if (l->n + 1 > l->n_bucket) { /* grow the chains: at most one entry per bucket on average */
        uint32_t nb = l->n_bucket ? l->n_bucket * 2 : 64;
        gram_lru_entry **b = calloc(nb, sizeof *b);
        if (!b) return -1;
        gram_lru_entry **old = l->bucket;
        uint32_t on = l->n_bucket;
        l->bucket = b;
        l->n_bucket = nb;
        for (uint32_t i = 0; i < on; i++)
            for (gram_lru_entry *x = old[i], *nx; x; x = nx) {
                nx = x->hnext;
                gram_lru_entry **c = chain(l, x->hash);
                x->hnext = *c;
                *c = x;
            }
        free(old);
    }
    gram_lru_entry *x = malloc(sizeof *x + key_len);
    if (!x) return -1;
    x->hash = hash;
    x->key_len = key_len;
    x->cost = cost;
    x->value = value;
    memcpy(x->key, key, key_len);
    gram_lru_entry **c = chain(l, hash);
    x->hnext = *c;
    *c = x;
    push_recent(l, x);
    l->n++;
    l->cost += x->cost;
    trim(l);
    return 0;
}

void gram_lru_set_limit(gram_lru *l, size_t limit)
{
    l->limit = limit;
    trim(l);
}

void gram_lru_free(gram_lru *l)
{
    while (l->tail)
        evict(l, l->tail);
    free(l->bucket);
    *l = (gram_lru){0};
}

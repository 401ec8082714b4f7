/* The compiled-grammar cache: grammar text -> sl_gram, least recently used evicted, one mutex.
 * Each entry holds a reference on its grammar; get and put hand the caller one more. */
#include <stdlib.h>

#include "gram_impl.h"

struct sl_gram_cache {
    pthread_mutex_t mu;
    gram_lru lru; /* cost 1 per entry: the limit is the capacity */
};

static void drop_gram(void *value)
{
    sl_gram_free(value);
}

sl_status sl_gram_cache_new(int capacity, sl_gram_cache **out, sl_err *e)
{
    *out = NULL;
    if (capacity < 1) return sl_err_set(e, SL_ERR_INVALID, "grammar cache: capacity %d < 1", capacity);
    sl_gram_cache *c = calloc(1, sizeof *c);
    if (!c) return sl_err_set(e, SL_ERR_NOMEM, "grammar cache: out of memory");
    pthread_mutex_init(&c->mu, NULL);
    gram_lru_init(&c->lru, (size_t)capacity, drop_gram);
    *out = c;
    return SL_OK;
}

void sl_gram_cache_free(sl_gram_cache *c)
{
    if (!c) return;
    gram_lru_free(&c->lru);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

sl_gram *sl_gram_cache_get(sl_gram_cache *c, const char *text, size_t len)
{
    uint64_t h = gram_hash(text, len);
    pthread_mutex_lock(&c->mu);
    gram_lru_entry *x = gram_lru_get(&c->lru, h, text, len);
    sl_gram *g = x ? sl_gram_ref(x->value) : NULL;
    pthread_mutex_unlock(&c->mu);
    return g;
}

sl_gram *sl_gram_cache_put(sl_gram_cache *c, const char *text, size_t len, sl_gram *g)
{
    uint64_t h = gram_hash(text, len);
    pthread_mutex_lock(&c->mu);
    gram_lru_entry *x = gram_lru_get(&c->lru, h, text, len);
    sl_gram *mine = g;
    if (x) /* another thread compiled it first: everyone shares that one */
        g = sl_gram_ref(x->value);
    else if (!gram_lru_put(&c->lru, h, text, len, g, 1))
        sl_gram_ref(g); /* the entry's reference; the caller keeps its own */
    pthread_mutex_unlock(&c->mu);
    if (g != mine) sl_gram_free(mine);
    return g;
}

sl_status sl_gram_cache_compile(sl_gram_cache *c, const char *text, size_t len, sl_gram **out,
                                sl_err *e)
{
    if ((*out = sl_gram_cache_get(c, text, len))) return SL_OK;
    sl_gram *g;
    sl_status st = sl_gram_compile(text, len, &g, e);
    if (st) return st;
    *out = sl_gram_cache_put(c, text, len, g);
    return SL_OK;
}

#include "solo.h"

#include <stdlib.h>
#include <string.h>

sl_status sl_solo_init(sl_solo *s, sl_model *m, int max_len, int page_size, sl_err *e)
{
    memset(s, 0, sizeof *s);
    if (max_len <= 0 || page_size <= 0)
        return sl_err_set(e, SL_ERR_INVALID, "max_len and page_size must be positive");
    s->m = m;
    s->max_len = max_len;
    s->max_pages = (max_len + page_size - 1) / page_size;
    s->pages = malloc(sizeof(int32_t) * (size_t)s->max_pages);
    if (!s->pages) return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    /* pages in reverse order so page-table indexing is really exercised */
    for (int i = 0; i < s->max_pages; i++) s->pages[i] = s->max_pages - 1 - i;
    sl_status st = sl_model_cache_alloc(m, &s->cache, s->max_pages, page_size, 2, e);
    if (st) {
        free(s->pages);
        s->pages = NULL;
    }
    return st;
}

void sl_solo_reset(sl_solo *s) { s->len = 0; }

void sl_solo_free(sl_solo *s)
{
    if (!s->m) return;
    sl_model_cache_free(s->m, &s->cache);
    sl_be_release(sl_model_backend(s->m), &s->logits);
    free(s->pages);
    memset(s, 0, sizeof *s);
}

int sl_argmax(const float *v, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

sl_status sl_solo_feed(sl_solo *s, const int32_t *ids, int n, int all_logits, float *out, sl_err *e)
{
    if (n <= 0) return sl_err_set(e, SL_ERR_INVALID, "nothing to feed");
    if (s->len + n > s->max_len)
        return sl_err_set(e, SL_ERR_LIMIT, "sequence of %d tokens exceeds the limit of %d", s->len + n,
                          s->max_len);
    sl_backend *be = sl_model_backend(s->m);
    int V = sl_model_cfg(s->m)->vocab_size, rows = all_logits ? n : 1;
    if (rows > s->logits_cap) {
        sl_be_release(be, &s->logits);
        sl_status st = sl_be_alloc(be, &s->logits, SL_DTYPE_F32, 2, (int64_t[]){rows, V}, e);
        if (st) return st;
        s->logits_cap = rows;
    }
    int P = s->cache.page_size;
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)n * 3);
    if (!pos) return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    int32_t *slot = pos + n, *row = pos + 2 * n;
    for (int i = 0; i < n; i++) {
        int p = s->len + i;
        pos[i] = p;
        slot[i] = s->pages[p / P] * P + p % P;
        row[i] = all_logits ? i : n - 1;
    }
    int32_t q_start[2] = {0, n}, kv_len = s->len + n, state = 0, fresh = s->len == 0, track = -1,
            track_len = 0;
    sl_batch_meta mt = {.n_tokens = n, .n_seqs = 1, .max_pages = s->max_pages, .ids = ids,
                        .pos = pos, .q_start = q_start, .kv_len = &kv_len, .page_table = s->pages,
                        .kv_slot = slot, .state_slot = &state, .state_fresh = &fresh,
                        .track_slot = &track, .track_len = &track_len};
    sl_status st = sl_model_forward(s->m, &s->cache, &mt, all_logits ? row : row + n - 1, rows,
                                    &s->logits, e);
    if (!st) {
        sl_tensor lv = sl_tensor_rowview(&s->logits, 0, rows);
        st = sl_be_download(be, &lv, out, e);
    }
    if (!st) s->len += n;
    free(pos);
    return st;
}

/* Device-to-device cache transfers on one GPU: see pd_share.h. */
#include "pd_share.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sl_log.h"

/* The blob: this header, then one handle per cache tensor in cache order
 * (k and v of every attention layer, then conv and ssm of every linear one). */
typedef struct blob_hdr {
    char magic[8];
    uint64_t epoch;          /* this process's cache: a restarted worker differs */
    int32_t n_attn, n_linear;
    int32_t page_size;
    int32_t kv_rows, slots;  /* outer sizes of the k/v and the conv/ssm tensors */
    int32_t pad;
} blob_hdr;

static const char MAGIC[8] = "SLSHARE1";

#define MAX_OPEN 8 /* prefill workers whose caches stay mapped */

typedef struct opened {
    uint64_t epoch;
    sl_tensor *t; /* 2·n_attn + 2·n_linear, cache order */
    int n;
} opened;

struct sl_pd_share {
    sl_engine *g;
    sl_model *m;
    char id[64 + 96]; /* boot id / device id: room for both buffers of sl_pd_share_new */
    uint8_t *blob;
    size_t blob_n;
    opened peer[MAX_OPEN];
    int next; /* the slot the next new peer takes (round robin) */
};

static int n_tensors(const sl_model_cache *c) { return 2 * c->n_attn + 2 * c->n_linear; }

/* Tensor i of c in cache order. */
static sl_tensor *cache_tensor(const sl_model_cache *c, int i)
{
    if (i < 2 * c->n_attn) return i % 2 ? &c->v[i / 2] : &c->k[i / 2];
    i -= 2 * c->n_attn;
    return i % 2 ? &c->ssm[i / 2] : &c->conv[i / 2];
}

sl_pd_share *sl_pd_share_new(sl_engine *g, sl_model *m)
{
    char dev[96], boot[64] = "";
    if (sl_be_device_id(sl_model_backend(m), dev, sizeof dev)) return NULL;
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (f) {
        if (!fgets(boot, sizeof boot, f)) boot[0] = 0;
        fclose(f);
    }
    boot[strcspn(boot, "\n")] = 0;
    if (!boot[0]) return NULL;
    sl_pd_share *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->g = g;
    s->m = m;
    snprintf(s->id, sizeof s->id, "%s/%s", boot, dev);
    return s;
}

static void close_peer(sl_pd_share *s, opened *p)
{
    for (int i = 0; i < p->n; i++)
        sl_be_share_close(sl_model_backend(s->m), &p->t[i]);
    free(p->t);
    memset(p, 0, sizeof *p);
}

void sl_pd_share_free(sl_pd_share *s)
{
    if (!s) return;
    for (int i = 0; i < MAX_OPEN; i++)
        close_peer(s, &s->peer[i]);
    free(s->blob);
    free(s);
}

const char *sl_pd_share_id(const sl_pd_share *s) { return s->id; }

sl_status sl_pd_share_lend(sl_pd_share *s, const uint8_t **blob, size_t *n, sl_err *e)
{
    sl_status st = sl_be_sync(sl_model_backend(s->m), e);
    if (st) return st;
    if (!s->blob) {
        const sl_model_cache *c = sl_engine_cache(s->g);
        int nt = n_tensors(c);
        size_t len = sizeof(blob_hdr) + (size_t)nt * sizeof(sl_be_share);
        uint8_t *b = calloc(1, len);
        if (!b) return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        blob_hdr h = {.epoch = ((uint64_t)getpid() << 32) ^ (uint64_t)ts.tv_sec * 1000000000u ^
                               (uint64_t)ts.tv_nsec,
                      .n_attn = c->n_attn,
                      .n_linear = c->n_linear,
                      .page_size = c->page_size,
                      .kv_rows = c->n_attn ? (int32_t)c->k[0].ne[0] : 0,
                      .slots = c->n_linear ? (int32_t)c->conv[0].ne[0] : 0};
        memcpy(h.magic, MAGIC, sizeof MAGIC);
        memcpy(b, &h, sizeof h);
        for (int i = 0; i < nt; i++) {
            sl_be_share sh;
            st = sl_be_share_export(sl_model_backend(s->m), cache_tensor(c, i), &sh, e);
            if (st) {
                free(b);
                return st;
            }
            memcpy(b + sizeof h + (size_t)i * sizeof sh, &sh, sizeof sh);
        }
        s->blob = b;
        s->blob_n = len;
    }
    *blob = s->blob;
    *n = s->blob_n;
    return SL_OK;
}

/* The prefill worker named by blob, mapped (opened on first use). */
static sl_status peer_of(sl_pd_share *s, const uint8_t *blob, size_t blob_n, opened **out,
                         blob_hdr *h, sl_err *e)
{
    const sl_model_cache *c = sl_engine_cache(s->g);
    int nt = n_tensors(c);
    if (blob_n < sizeof *h) return sl_err_set(e, SL_ERR_INVALID, "shared cache: short blob");
    memcpy(h, blob, sizeof *h);
    if (memcmp(h->magic, MAGIC, sizeof MAGIC) || h->n_attn != c->n_attn ||
        h->n_linear != c->n_linear || h->page_size != c->page_size ||
        blob_n != sizeof *h + (size_t)nt * sizeof(sl_be_share) || (c->n_attn && h->kv_rows <= 0) ||
        (c->n_linear && h->slots <= 0))
        return sl_err_set(e, SL_ERR_INVALID, "shared cache: the blob does not match this worker's cache");
    for (int i = 0; i < MAX_OPEN; i++)
        if (s->peer[i].t && s->peer[i].epoch == h->epoch) {
            *out = &s->peer[i];
            return SL_OK;
        }
    opened *p = &s->peer[s->next];
    s->next = (s->next + 1) % MAX_OPEN;
    close_peer(s, p);
    if (!(p->t = calloc((size_t)nt, sizeof *p->t))) return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    for (int i = 0; i < nt; i++) {
        const sl_tensor *own = cache_tensor(c, i);
        int64_t ne[SL_MAX_DIMS];
        memcpy(ne, own->ne, sizeof ne);
        ne[0] = i < 2 * c->n_attn ? h->kv_rows : h->slots;
        sl_tensor t = sl_tensor_make(NULL, own->dtype, own->ndim, ne);
        sl_be_share sh;
        memcpy(&sh, blob + sizeof *h + (size_t)i * sizeof sh, sizeof sh);
        sl_status st = sl_be_share_open(sl_model_backend(s->m), &sh, &t, e);
        if (st) {
            close_peer(s, p);
            return st;
        }
        p->t[p->n++] = t;
    }
    p->epoch = h->epoch;
    SL_LOGI("pd", "transfers from a prefill worker on this GPU go device to device (%d tensors mapped)", nt);
    *out = p;
    return SL_OK;
}

/* Rows [r0, r0+n) of src into rows [d0, d0+n) of dst. */
static sl_status copy_rows(sl_backend *be, sl_tensor *dst, int64_t d0, const sl_tensor *src,
                           int64_t r0, int64_t n, sl_err *e)
{
    sl_tensor dv = sl_tensor_rowview(dst, d0, n), sv = sl_tensor_rowview(src, r0, n);
    return sl_be_copy(be, &dv, &sv, e);
}

sl_status sl_pd_share_pull(sl_pd_share *s, const uint8_t *blob, size_t blob_n, const int32_t *src,
                           const int32_t *dst, int n, int32_t src_slot, int32_t dst_slot,
                           int32_t dst_slot2, sl_err *e)
{
    sl_model_cache *c = sl_engine_cache_rw(s->g);
    sl_backend *be = sl_model_backend(s->m);
    opened *p = NULL;
    blob_hdr h;
    sl_status st = peer_of(s, blob, blob_n, &p, &h, e);
    if (st) return st;
    int64_t P = c->page_size, src_pages = h.kv_rows / P;
    for (int i = 0; i < n; i++)
        if (src[i] < 0 || src[i] >= src_pages || dst[i] < 0 || dst[i] >= c->n_pages)
            return sl_err_set(e, SL_ERR_INVALID, "shared cache: page %d -> %d out of range", src[i], dst[i]);
    if (src_slot >= h.slots || (src_slot >= 0 && (dst_slot < 0 || dst_slot >= c->n_slots)) ||
        dst_slot2 >= c->n_slots)
        return sl_err_set(e, SL_ERR_INVALID, "shared cache: state slot %d -> %d out of range", src_slot,
                          dst_slot);
    /* page runs consecutive on both sides go in one copy per tensor */
    for (int i = 0, len; i < n && !st; i += len) {
        for (len = 1; i + len < n && src[i + len] == src[i] + len && dst[i + len] == dst[i] + len; len++) {
        }
        for (int j = 0; j < 2 * c->n_attn && !st; j++)
            st = copy_rows(be, cache_tensor(c, j), dst[i] * P, &p->t[j], src[i] * P, len * P, e);
    }
    for (int j = 2 * c->n_attn; src_slot >= 0 && j < n_tensors(c) && !st; j++) {
        sl_tensor *own = cache_tensor(c, j);
        int64_t rows = sl_tensor_rows(own) / own->ne[0];
        st = copy_rows(be, own, dst_slot * rows, &p->t[j], src_slot * rows, rows, e);
    }
    if (!st && src_slot >= 0 && dst_slot2 >= 0) /* the tree's copy, from ours */
        sl_model_cache_copy_slots(s->m, c, &dst_slot2, &dst_slot, 1);
    if (!st) st = sl_be_sync(be, e);
    return st;
}

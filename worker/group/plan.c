#include "plan.h"

#include <stdlib.h>
#include <string.h>

/* The wire is little-endian; so are the hosts sluice runs on (x86-64,
 * aarch64), so arrays are copied as they are. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the plan encoding assumes a little-endian host"
#endif

#define BODY_FIXED 24 /* six i32 counts */

void sl_plan_buf_free(sl_plan_buf *b)
{
    free(b->p);
    *b = (sl_plan_buf){0};
}

static int buf_reserve(sl_plan_buf *b, size_t n)
{
    if (n <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < n) cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

uint32_t sl_plan_checksum(const uint8_t *p, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 16777619u;
    return h;
}

static void put32(uint8_t *p, uint32_t v)
{
    memcpy(p, &v, 4);
}

static uint32_t get32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

void sl_plan_header_pack(uint8_t out[SL_PLAN_HEADER_BYTES], const sl_plan_header *h)
{
    memset(out, 0, SL_PLAN_HEADER_BYTES);
    put32(out, SL_PLAN_MAGIC);
    uint16_t ver = SL_PLAN_VERSION, kind = (uint16_t)h->kind;
    memcpy(out + 4, &ver, 2);
    memcpy(out + 6, &kind, 2);
    put32(out + 8, h->body_len);
    put32(out + 12, h->flags);
    memcpy(out + 16, &h->seq, 8);
    put32(out + 24, h->checksum);
}

sl_status sl_plan_header_unpack(sl_plan_header *h, const uint8_t in[SL_PLAN_HEADER_BYTES],
                                sl_err *e)
{
    uint16_t ver, kind;
    memcpy(&ver, in + 4, 2);
    memcpy(&kind, in + 6, 2);
    if (get32(in) != SL_PLAN_MAGIC)
        return sl_err_set(e, SL_ERR_INVALID, "plan: bad magic 0x%08x", get32(in));
    if (ver != SL_PLAN_VERSION)
        return sl_err_set(e, SL_ERR_INVALID, "plan: version %u, this rank speaks %d", ver,
                          SL_PLAN_VERSION);
    *h = (sl_plan_header){.kind = kind, .body_len = get32(in + 8), .flags = get32(in + 12),
                          .checksum = get32(in + 24)};
    memcpy(&h->seq, in + 16, 8);
    if (get32(in + 28)) return sl_err_set(e, SL_ERR_INVALID, "plan: reserved header bytes set");
    if (h->flags & ~SL_PLAN_FLAG_SYNC)
        return sl_err_set(e, SL_ERR_INVALID, "plan: unknown flags 0x%x", h->flags);
    switch (kind) {
    case SL_PLAN_KIND_PLAN:
        if (h->body_len < BODY_FIXED || h->body_len > SL_PLAN_MAX_BODY || h->body_len % 4)
            return sl_err_set(e, SL_ERR_INVALID, "plan: body of %u bytes", h->body_len);
        return SL_OK;
    case SL_PLAN_KIND_SIDE:
        if (h->body_len < 4 || h->body_len > SL_PLAN_MAX_BODY || h->body_len % 4)
            return sl_err_set(e, SL_ERR_INVALID, "plan: side body of %u bytes", h->body_len);
        return SL_OK;
    case SL_PLAN_KIND_KEEP:
    case SL_PLAN_KIND_STOP:
        if (h->body_len)
            return sl_err_set(e, SL_ERR_INVALID, "plan: kind %u carries %u bytes", kind,
                              h->body_len);
        return SL_OK;
    default:
        return sl_err_set(e, SL_ERR_INVALID, "plan: unknown kind %u", kind);
    }
}

/* Words of the body after the counts. */
static uint64_t body_words(int64_t T, int64_t S, int64_t P, int64_t C, int64_t R)
{
    return (uint64_t)(3 * T + (S + 1) + S + S * P + 4 * S + 2 * C + R);
}

sl_status sl_plan_encode(const sl_sched_batch *b, sl_plan_buf *out, sl_plan_header *h, sl_err *e)
{
    int T = b->meta.n_tokens, S = b->meta.n_seqs, P = b->meta.max_pages, C = b->n_copy,
        R = b->n_rows;
    size_t n = BODY_FIXED + 4 * (size_t)body_words(T, S, P, C, R);
    if (n > SL_PLAN_MAX_BODY)
        return sl_err_set(e, SL_ERR_LIMIT, "plan: a batch of %zu bytes is too large", n);
    if (buf_reserve(out, n)) return sl_err_set(e, SL_ERR_NOMEM, "plan: out of memory");
    uint8_t *p = out->p;
    int32_t counts[6] = {T, S, b->meta.page_size, P, C, R};
    memcpy(p, counts, sizeof counts);
    p += sizeof counts;
#define PUT(arr, k)                                                   \
    do {                                                              \
        if ((k) > 0) memcpy(p, (arr), sizeof(int32_t) * (size_t)(k)); \
        p += sizeof(int32_t) * (size_t)(k);                           \
    } while (0)
    PUT(b->ids, T);
    PUT(b->pos, T);
    PUT(b->kv_slot, T);
    PUT(b->q_start, S + 1);
    PUT(b->kv_len, S);
    PUT(b->page_table, S * P);
    PUT(b->state_slot, S);
    PUT(b->state_fresh, S);
    PUT(b->track_slot, S);
    PUT(b->track_len, S);
    PUT(b->copy_dst, C);
    PUT(b->copy_src, C);
    PUT(b->rows, R);
#undef PUT
    out->n = n;
    h->kind = SL_PLAN_KIND_PLAN;
    h->body_len = (uint32_t)n;
    h->checksum = sl_plan_checksum(out->p, n);
    return SL_OK;
}

/* Every a[i] in [lo, hi); else an error naming the field. */
static sl_status check_range(const char *what, const int32_t *a, int64_t n, int64_t lo, int64_t hi,
                             sl_err *e)
{
    for (int64_t i = 0; i < n; i++)
        if (a[i] < lo || a[i] >= hi)
            return sl_err_set(e, SL_ERR_INVALID, "plan: %s[%lld] = %d outside [%lld, %lld)", what,
                              (long long)i, a[i], (long long)lo, (long long)hi);
    return SL_OK;
}

sl_status sl_plan_decode(const sl_plan_header *h, const uint8_t *body, const sl_plan_limits *lim,
                         sl_sched_batch *b, sl_err *e)
{
    memset(b, 0, sizeof *b);
    if (h->kind != SL_PLAN_KIND_PLAN || h->body_len < BODY_FIXED)
        return sl_err_set(e, SL_ERR_INVALID, "plan: not a plan message");
    if (sl_plan_checksum(body, h->body_len) != h->checksum)
        return sl_err_set(e, SL_ERR_INVALID, "plan: checksum mismatch (%u bytes)", h->body_len);
    int32_t c[6];
    memcpy(c, body, sizeof c);
    int T = c[0], S = c[1], ps = c[2], P = c[3], C = c[4], R = c[5];
    int64_t kv_slots = (int64_t)lim->n_pages * lim->page_size;
    int max_pages = (lim->context_len + lim->page_size - 1) / lim->page_size + 1;
    if (T < 1 || T > kv_slots)
        return sl_err_set(e, SL_ERR_INVALID, "plan: n_tokens %d outside [1, %lld]", T,
                          (long long)kv_slots);
    if (S < 1 || S > lim->max_seqs || S > T)
        return sl_err_set(e, SL_ERR_INVALID, "plan: n_seqs %d outside [1, %d]", S,
                          lim->max_seqs < T ? lim->max_seqs : T);
    if (ps != lim->page_size)
        return sl_err_set(e, SL_ERR_INVALID, "plan: page size %d, this rank has %d", ps,
                          lim->page_size);
    if (P < 1 || P > max_pages)
        return sl_err_set(e, SL_ERR_INVALID, "plan: max_pages %d outside [1, %d]", P, max_pages);
    if (C < 0 || C > 4 * lim->max_seqs)
        return sl_err_set(e, SL_ERR_INVALID, "plan: n_copy %d outside [0, %d]", C,
                          4 * lim->max_seqs);
    if (C > 0 && lim->n_slots == 0)
        return sl_err_set(e, SL_ERR_INVALID, "plan: state copies for a model without states");
    if (R < 0 || R > lim->max_rows || R > S)
        return sl_err_set(e, SL_ERR_INVALID, "plan: n_rows %d outside [0, %d]", R,
                          lim->max_rows < S ? lim->max_rows : S);
    uint64_t need = BODY_FIXED + 4 * body_words(T, S, P, C, R);
    if (need != h->body_len)
        return sl_err_set(e, SL_ERR_INVALID, "plan: body of %u bytes, its counts need %llu",
                          h->body_len, (unsigned long long)need);
    int32_t *w = (int32_t *)(uintptr_t)(body + BODY_FIXED);
#define TAKE(field, k) \
    do {               \
        b->field = w;  \
        w += (k);      \
    } while (0)
    TAKE(ids, T);
    TAKE(pos, T);
    TAKE(kv_slot, T);
    TAKE(q_start, S + 1);
    TAKE(kv_len, S);
    TAKE(page_table, (int64_t)S * P);
    TAKE(state_slot, S);
    TAKE(state_fresh, S);
    TAKE(track_slot, S);
    TAKE(track_len, S);
    TAKE(copy_dst, C);
    TAKE(copy_src, C);
    TAKE(rows, R);
#undef TAKE
    int hybrid = lim->n_slots > 0;
    sl_status st = check_range("ids", b->ids, T, 0, lim->vocab, e);
    if (!st) st = check_range("pos", b->pos, T, 0, lim->context_len, e);
    if (!st) st = check_range("kv_slot", b->kv_slot, T, 0, kv_slots, e);
    if (!st) st = check_range("kv_len", b->kv_len, S, 1, (int64_t)lim->context_len + 1, e);
    if (!st) st = check_range("page_table", b->page_table, (int64_t)S * P, 0, lim->n_pages, e);
    if (!st)
        st = hybrid ? check_range("state_slot", b->state_slot, S, 0, lim->n_slots, e)
                    : check_range("state_slot", b->state_slot, S, -1, 0, e);
    if (!st) st = check_range("state_fresh", b->state_fresh, S, 0, 2, e);
    if (!st) st = check_range("track_slot", b->track_slot, S, -1, hybrid ? lim->n_slots : 0, e);
    if (!st) st = check_range("track_len", b->track_len, S, 0, (int64_t)lim->context_len + 1, e);
    if (!st) st = check_range("copy_dst", b->copy_dst, C, 0, lim->n_slots, e);
    if (!st) st = check_range("copy_src", b->copy_src, C, -1, lim->n_slots, e);
    if (!st) st = check_range("rows", b->rows, R, 0, T, e);
    if (st) return st;
    if (b->q_start[0] != 0 || b->q_start[S] != T)
        return sl_err_set(e, SL_ERR_INVALID, "plan: q_start runs %d..%d, not 0..%d", b->q_start[0],
                          b->q_start[S], T);
    for (int i = 0; i < S; i++) {
        int q = b->q_start[i + 1] - b->q_start[i];
        if (q < 1 || q > b->kv_len[i])
            return sl_err_set(e, SL_ERR_INVALID,
                              "plan: sequence %d has %d new tokens and kv_len %d", i, q,
                              b->kv_len[i]);
        if ((b->kv_len[i] + ps - 1) / ps > P)
            return sl_err_set(e, SL_ERR_INVALID, "plan: sequence %d needs more than %d pages", i,
                              P);
    }
    b->meta = (sl_sched_shape){.n_tokens = T, .n_seqs = S, .page_size = ps, .max_pages = P};
    b->n_copy = C;
    b->n_rows = R;
    return SL_OK;
}

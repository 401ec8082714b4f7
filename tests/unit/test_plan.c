/* The tensor-parallel plan message (worker/group/plan.h): a batch survives
 * encode/decode; every malformed message (bad header, wrong lengths, indices
 * outside the follower's pools, random corruption) is rejected with an error
 * naming the problem, never read out of bounds (run under ASan in CI). */
#include <string.h>

#include "plan.h"
#include "sl_rng.h"
#include "sl_test.h"

/* Two sequences: a 5-token prefill (hybrid, fresh state, one copy) and a
 * one-token decode; page size 4. */
static int32_t ids[6] = {1, 2, 3, 4, 5, 9}, pos[6] = {0, 1, 2, 3, 4, 7},
               kv_slot[6] = {0, 1, 2, 3, 4, 15}, q_start[3] = {0, 5, 6}, kv_len[2] = {5, 8},
               page_table[4] = {0, 1, 2, 3}, state_slot[2] = {1, 2}, state_fresh[2] = {1, 0},
               track_slot[2] = {3, -1}, track_len[2] = {4, 0}, copy_dst[1] = {1},
               copy_src[1] = {-1}, rows[2] = {4, 5};

static sl_sched_batch sample_batch(void)
{
    return (sl_sched_batch){
        .meta = {.n_tokens = 6, .n_seqs = 2, .page_size = 4, .max_pages = 2},
        .ids = ids, .pos = pos, .q_start = q_start, .kv_len = kv_len,
        .page_table = page_table, .kv_slot = kv_slot, .state_slot = state_slot,
        .state_fresh = state_fresh, .track_slot = track_slot, .track_len = track_len,
        .n_copy = 1, .copy_dst = copy_dst, .copy_src = copy_src, .rows = rows, .n_rows = 2};
}

static const sl_plan_limits LIM = {.vocab = 16, .page_size = 4, .n_pages = 8, .n_slots = 4,
                                   .max_seqs = 4, .max_rows = 4, .context_len = 64};

static int same(const int32_t *a, const int32_t *b, int n)
{
    return !memcmp(a, b, sizeof(int32_t) * (size_t)n);
}

/* Encodes b, applies edit to word w of the body (-1: none), re-checksums,
 * decodes: returns the status and the error text. */
static sl_status roundtrip(const sl_sched_batch *b, int w, int32_t v, sl_err *e)
{
    sl_plan_buf buf = {0};
    sl_plan_header h = {0};
    CHECK(sl_plan_encode(b, &buf, &h, e) == SL_OK);
    if (w >= 0) {
        memcpy(buf.p + 4 * w, &v, 4);
        h.checksum = sl_plan_checksum(buf.p, h.body_len);
    }
    sl_sched_batch d;
    sl_status st = sl_plan_decode(&h, buf.p, &LIM, &d, e);
    sl_plan_buf_free(&buf);
    return st;
}

int main(void)
{
    sl_sched_batch b = sample_batch();
    sl_plan_buf buf = {0};
    sl_plan_header h = {0}, h2;
    sl_err e = {0};
    CHECK(sl_plan_encode(&b, &buf, &h, &e) == SL_OK);
    h.seq = 7;
    uint8_t hdr[SL_PLAN_HEADER_BYTES];
    sl_plan_header_pack(hdr, &h);
    CHECK(sl_plan_header_unpack(&h2, hdr, &e) == SL_OK);
    CHECK(h2.kind == SL_PLAN_KIND_PLAN && h2.seq == 7 && h2.body_len == h.body_len &&
          h2.checksum == h.checksum);
    sl_sched_batch d;
    CHECK(sl_plan_decode(&h2, buf.p, &LIM, &d, &e) == SL_OK);
    CHECK(d.meta.n_tokens == 6 && d.meta.n_seqs == 2 && d.meta.max_pages == 2 && d.n_copy == 1 &&
          d.n_rows == 2 && !d.sampler && !d.out);
    CHECK(same(d.ids, ids, 6) && same(d.pos, pos, 6) && same(d.kv_slot, kv_slot, 6) &&
          same(d.q_start, q_start, 3) && same(d.kv_len, kv_len, 2) &&
          same(d.page_table, page_table, 4) && same(d.state_slot, state_slot, 2) &&
          same(d.state_fresh, state_fresh, 2) && same(d.track_slot, track_slot, 2) &&
          same(d.track_len, track_len, 2) && same(d.copy_dst, copy_dst, 1) &&
          same(d.copy_src, copy_src, 1) && same(d.rows, rows, 2));

    /* header problems */
    uint8_t bad[SL_PLAN_HEADER_BYTES];
    memcpy(bad, hdr, sizeof bad);
    bad[0] ^= 1;
    CHECK(sl_plan_header_unpack(&h2, bad, &e) && strstr(e.msg, "magic"));
    memcpy(bad, hdr, sizeof bad);
    bad[4] = 2;
    CHECK(sl_plan_header_unpack(&h2, bad, &e) && strstr(e.msg, "version"));
    memcpy(bad, hdr, sizeof bad);
    bad[6] = 9;
    CHECK(sl_plan_header_unpack(&h2, bad, &e) && strstr(e.msg, "kind"));
    memcpy(bad, hdr, sizeof bad);
    bad[11] = 0x7f; /* body_len way past the limit */
    CHECK(sl_plan_header_unpack(&h2, bad, &e) && strstr(e.msg, "body"));
    sl_plan_header keep = {.kind = SL_PLAN_KIND_KEEP, .body_len = 8};
    sl_plan_header_pack(bad, &keep);
    CHECK(sl_plan_header_unpack(&h2, bad, &e) && strstr(e.msg, "carries"));
    sl_plan_header side = {.kind = SL_PLAN_KIND_SIDE, .body_len = 16};
    sl_plan_header_pack(bad, &side);
    CHECK(sl_plan_header_unpack(&h2, bad, &e) == SL_OK && h2.kind == SL_PLAN_KIND_SIDE);
    side.body_len = 0; /* a side job always has a body, of whole words */
    sl_plan_header_pack(bad, &side);
    CHECK(sl_plan_header_unpack(&h2, bad, &e) && strstr(e.msg, "side body"));
    side.body_len = 18;
    sl_plan_header_pack(bad, &side);
    CHECK(sl_plan_header_unpack(&h2, bad, &e) && strstr(e.msg, "side body"));

    /* body problems: checksum, length, each field out of range */
    h2 = h;
    h2.checksum ^= 1;
    CHECK(sl_plan_decode(&h2, buf.p, &LIM, &d, &e) && strstr(e.msg, "checksum"));
    h2 = h;
    h2.body_len -= 4;
    h2.checksum = sl_plan_checksum(buf.p, h2.body_len);
    CHECK(sl_plan_decode(&h2, buf.p, &LIM, &d, &e) && strstr(e.msg, "counts need"));
    struct {
        int word;
        int32_t v;
        const char *what;
    } cases[] = {
        {0, 0, "n_tokens"},         {0, 1 << 30, "n_tokens"},   {1, 9, "n_seqs"},
        {2, 16, "page size"},       {3, 1000, "max_pages"},     {4, -1, "n_copy"},
        {5, 3, "n_rows"},           {6, 16, "ids[0]"},          {6 + 6 + 1, 64, "pos[1]"},
        {6 + 12 + 5, 32, "kv_slot[5]"}, {6 + 18 + 1, 6, "sequence 0"}, {6 + 18 + 2, 5, "q_start"},
        {6 + 21, 0, "kv_len[0]"},   {6 + 23 + 3, 8, "page_table[3]"}, {6 + 27, 4, "state_slot[0]"},
        {6 + 29, 2, "state_fresh[0]"}, {6 + 31, 4, "track_slot[0]"}, {6 + 33, -1, "track_len[0]"},
        {6 + 35, 4, "copy_dst[0]"}, {6 + 36, -2, "copy_src[0]"}, {6 + 37 + 1, 6, "rows[1]"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sl_status st = roundtrip(&b, cases[i].word, cases[i].v, &e);
        CHECK_MSG(st && strstr(e.msg, cases[i].what), "case %zu (%s): %s", i, cases[i].what,
                  st ? e.msg : "accepted");
    }
    /* a model without states may not receive state slots */
    sl_plan_limits nostate = LIM;
    nostate.n_slots = 0;
    CHECK(sl_plan_decode(&h, buf.p, &nostate, &d, &e) != SL_OK);

    /* random corruption with a valid checksum: decode either rejects it or
     * yields only in-range indices (ASan watches the reads) */
    int accepted = 0;
    for (uint64_t k = 0; k < 20000; k++) {
        sl_plan_buf c = {0};
        sl_plan_header hc = {0};
        sl_plan_encode(&b, &c, &hc, &e);
        int flips = 1 + (int)(sl_rng_uniform(1, k) * 3);
        for (int f = 0; f < flips; f++) {
            size_t at = (size_t)(sl_rng_uniform(2, k * 4 + (uint64_t)f) * hc.body_len);
            c.p[at] ^= (uint8_t)(1u << (int)(sl_rng_uniform(3, k * 4 + (uint64_t)f) * 8));
        }
        hc.checksum = sl_plan_checksum(c.p, hc.body_len);
        if (sl_plan_decode(&hc, c.p, &LIM, &d, &e) == SL_OK) {
            accepted++;
            for (int t = 0; t < d.meta.n_tokens; t++)
                CHECK(d.kv_slot[t] >= 0 && d.kv_slot[t] < 32 && d.ids[t] >= 0 && d.ids[t] < 16);
        }
        sl_plan_buf_free(&c);
    }
    printf("random corruption: %d of 20000 still valid plans\n", accepted);
    sl_plan_buf_free(&buf);
    return sl_test_done("test_plan");
}

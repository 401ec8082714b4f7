/* The worker's side of prefill/decode disaggregation: see pd.h and
 * docs/disaggregation.md. */
#include "pd.h"

#include <nng/protocol/pipeline0/pull.h>
#include <nng/protocol/pipeline0/push.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pd_share.h"
#include "sl_buf.h"
#include "sl_log.h"
#include "wire.h"

/* ---- transport: the seam ------------------------------------------------------- */

/* How transfers move. The nng implementation below sends one packed
 * KvTransfer per request; a device transport (NCCL send/recv through the
 * communicator) would send the pages straight from the cache instead and
 * keep only the small header on this path. */
typedef struct sl_pd_transport {
    const char *name;
    /* prefill: sends m (a packed Envelope) to the decode worker at url without
     * blocking: 0 (m is consumed), NNG_EAGAIN (not now: try again later; m
     * stays the caller's) or another nng error (m stays the caller's) */
    int (*send)(void *impl, const char *url, nng_msg *m);
    /* decode: the next received message, or NULL (never blocks) */
    Sluice__Envelope *(*recv)(void *impl);
    void (*free)(void *impl);
} sl_pd_transport;

#define MAX_PEERS 64

typedef struct nng_tp {
    nng_socket pull; /* decode */
    int have_pull;
    struct {
        char url[256];
        nng_socket push;
    } peer[MAX_PEERS];
    int n_peer;
} nng_tp;

static int nng_tp_send(void *impl, const char *url, nng_msg *m)
{
    nng_tp *t = impl;
    int k = 0;
    while (k < t->n_peer && strcmp(t->peer[k].url, url))
        k++;
    if (k == t->n_peer) {
        if (t->n_peer == MAX_PEERS || strlen(url) >= sizeof t->peer[0].url) return NNG_ENOMEM;
        int rv = nng_push0_open(&t->peer[k].push);
        if (rv) return rv;
        nng_setopt_ms(t->peer[k].push, NNG_OPT_RECONNMINT, 50);
        nng_setopt_ms(t->peer[k].push, NNG_OPT_RECONNMAXT, 500);
        rv = nng_dial(t->peer[k].push, url, NULL, NNG_FLAG_NONBLOCK);
        if (rv) {
            nng_close(t->peer[k].push);
            return rv;
        }
        snprintf(t->peer[k].url, sizeof t->peer[k].url, "%s", url);
        t->n_peer++;
    }
    return nng_sendmsg(t->peer[k].push, m, NNG_FLAG_NONBLOCK);
}

static Sluice__Envelope *nng_tp_recv(void *impl)
{
    nng_tp *t = impl;
    nng_msg *m;
    if (!t->have_pull || nng_recvmsg(t->pull, &m, NNG_FLAG_NONBLOCK)) return NULL;
    Sluice__Envelope *env = sl_wire_unpack(m);
    if (!env) SL_LOGW("pd", "dropped a malformed transfer message");
    return env;
}

static void nng_tp_free(void *impl)
{
    nng_tp *t = impl;
    if (!t) return;
    if (t->have_pull) nng_close(t->pull);
    for (int k = 0; k < t->n_peer; k++)
        nng_close(t->peer[k].push);
    free(t);
}

static const sl_pd_transport nng_transport = {"nng", nng_tp_send, nng_tp_recv, nng_tp_free};

/* ---- state ---------------------------------------------------------------------- */

typedef struct room {
    uint64_t rid;  /* this side's request id */
    uint64_t room; /* the decode side's rid */
    char peer[256];
    int64_t t0_us, hold_us; /* arrival; computed (prefill) or admitted (decode) */
    int computed;           /* prefill: held, first token known */
    int ready;              /* prefill: KvReady came */
    int skip;
    int cached; /* prefill: prefix-cache hit */
    sl_sample first;
    int have_first;
    /* prefill: the packed transfer waiting for the link (memory already released) */
    nng_msg *pending;
    size_t pending_bytes;
    int n_tokens;
    int64_t send_t0_us;
    int share;            /* prefill: the decode side copies device to device */
    int64_t lent_until;   /* prefill: memory held for the decode side's copy until then */
} room;

/* Device-to-device transfers (pd_share.h): how long the prefill side holds a
 * request's pages and slot for the decode side's copy, and how much of that
 * the decode side must have left before it starts copying. The copy itself
 * takes milliseconds. */
#define SHARE_HOLD_US 3000000
#define SHARE_MARGIN_US 500000

struct sl_pd {
    sl_pd_config c;
    sl_engine *g;
    sl_model *m;
    nng_socket router;
    const sl_pd_transport *tp;
    void *tp_impl;
    char url[256];
    const char *layout; /* the shard's */
    sl_pd_share *share; /* NULL: host staged only */
    room *rooms;
    int n_rooms, cap_rooms;
    sl_buf buf; /* staging for one request's pages (bytes at buf.data) */
    /* metrics */
    uint64_t transfers, bytes, failures;
    double seconds, queue_seconds, hold_seconds;
};

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int sl_pd_role_parse(const char *s, Sluice__DisaggRole *out)
{
    if (!s || !strcmp(s, "null") || !strcmp(s, "none"))
        *out = SLUICE__DISAGG_ROLE__DISAGG_NONE;
    else if (!strcmp(s, "prefill"))
        *out = SLUICE__DISAGG_ROLE__DISAGG_PREFILL;
    else if (!strcmp(s, "decode"))
        *out = SLUICE__DISAGG_ROLE__DISAGG_DECODE;
    else
        return -1;
    return 0;
}

int sl_pd_default_url(const char *listen, char *out, size_t n)
{
    const char *colon = strrchr(listen, ':');
    if (!strncmp(listen, "tcp://", 6) && colon && colon > listen + 5) {
        int port = atoi(colon + 1);
        int w = snprintf(out, n, "%.*s:%d", (int)(colon - listen), listen, port + 1);
        return w > 0 && (size_t)w < n ? 0 : -1;
    }
    int w = snprintf(out, n, "%s.kv", listen);
    return w > 0 && (size_t)w < n ? 0 : -1;
}

sl_status sl_pd_new(sl_pd **out, const sl_pd_config *c, sl_engine *g, sl_model *m, sl_err *e)
{
    if (!c->shard) return sl_err_set(e, SL_ERR_INVALID, "pd: no cache shard");
    sl_pd *pd = calloc(1, sizeof *pd);
    nng_tp *t = calloc(1, sizeof *t);
    if (!pd || !t) {
        free(pd);
        free(t);
        return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    }
    pd->c = *c;
    if (pd->c.timeout_ms <= 0) pd->c.timeout_ms = 30000;
    pd->g = g;
    pd->m = m;
    pd->tp = &nng_transport;
    pd->tp_impl = t;
    pd->layout = sl_pd_shard_layout(c->shard);
    if (c->share) pd->share = sl_pd_share_new(g, m);
    if (c->role == SLUICE__DISAGG_ROLE__DISAGG_DECODE) {
        int rv = nng_pull0_open(&t->pull);
        if (!rv) {
            t->have_pull = 1;
            nng_setopt_size(t->pull, NNG_OPT_RECVMAXSZ, 0); /* a request's KV: no limit */
            rv = nng_listen(t->pull, c->transfer_url, NULL, 0);
        }
        if (rv) {
            sl_pd_free(pd);
            return sl_err_set(e, SL_ERR_IO, "transfer endpoint %s: %s", c->transfer_url,
                              nng_strerror(rv));
        }
        snprintf(pd->url, sizeof pd->url, "%s", c->transfer_url);
        SL_LOGI("pd", "decode worker: transfers on %s (%s)", pd->url, pd->layout);
    } else {
        SL_LOGI("pd", "prefill worker (%s)", pd->layout);
    }
    *out = pd;
    return SL_OK;
}

void sl_pd_free(sl_pd *pd)
{
    if (!pd) return;
    if (pd->tp) pd->tp->free(pd->tp_impl);
    sl_pd_share_free(pd->share);
    for (int i = 0; i < pd->n_rooms; i++)
        if (pd->rooms[i].pending) nng_msg_free(pd->rooms[i].pending);
    free(pd->rooms);
    sl_buf_free(&pd->buf);
    free(pd);
}

void sl_pd_attach(sl_pd *pd, nng_socket router)
{
    pd->router = router;
}

static room *find_room(sl_pd *pd, uint64_t rid)
{
    for (int i = 0; i < pd->n_rooms; i++)
        if (pd->rooms[i].rid == rid) return &pd->rooms[i];
    return NULL;
}

static void drop_room(sl_pd *pd, room *r)
{
    if (r->pending) nng_msg_free(r->pending);
    *r = pd->rooms[--pd->n_rooms];
}

static room *add_room(sl_pd *pd, uint64_t rid)
{
    if (pd->n_rooms == pd->cap_rooms) {
        int cap = pd->cap_rooms ? pd->cap_rooms * 2 : 64;
        room *p = realloc(pd->rooms, sizeof *p * (size_t)cap);
        if (!p) return NULL;
        pd->rooms = p;
        pd->cap_rooms = cap;
    }
    room *r = &pd->rooms[pd->n_rooms++];
    memset(r, 0, sizeof *r);
    r->rid = rid;
    r->t0_us = now_us();
    return r;
}

static void send_router_chunk(sl_pd *pd, uint64_t rid, Sluice__FinishReason fin, const char *err,
                              int prompt, int cached)
{
    Sluice__TokenChunk ch = SLUICE__TOKEN_CHUNK__INIT;
    Sluice__Usage u = SLUICE__USAGE__INIT;
    ch.rid = rid;
    ch.finish = fin;
    ch.error = (char *)err;
    u.prompt_tokens = prompt;
    u.cached_tokens = cached;
    ch.usage = &u;
    int rv = sl_wire_send_chunk(pd->router, &ch, 0);
    if (rv)
        SL_LOGW("pd", "request %llu: telling the router: %s", (unsigned long long)rid,
                nng_strerror(rv));
}

/* ---- cache copies (host staged, any TP size: pd_shard.h) ------------------------- */

/* Runs a cache job: alone at TP 1, as a side job every rank joins in a group. */
static sl_status run_job(sl_pd *pd, int op, const int32_t *pages, int n, int32_t slot,
                         int32_t slot2, uint8_t *kv, uint8_t *state, sl_err *e)
{
    size_t cap = 16 + 4 * (size_t)n;
    uint8_t *body = malloc(cap);
    if (!body) return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    size_t len = sl_pd_shard_job(body, cap, op, pages, n, slot, slot2);
    sl_pd_shard_bind(pd->c.shard, kv, state);
    sl_status st = pd->c.side ? pd->c.side(pd->c.side_ctx, body, len, e)
                              : sl_pd_shard_run(pd->c.shard, body, len, e);
    sl_pd_shard_bind(pd->c.shard, NULL, NULL);
    free(body);
    return st;
}

/* ---- generate ------------------------------------------------------------------- */

const char *sl_pd_on_generate(sl_pd *pd, const Sluice__GenerateRequest *g, sl_sched_req *r)
{
    const Sluice__Disagg *d = g->pd;
    if (!d || d->role == SLUICE__DISAGG_ROLE__DISAGG_NONE) return NULL; /* unified request */
    if (d->role != pd->c.role)
        return pd->c.role == SLUICE__DISAGG_ROLE__DISAGG_PREFILL
                   ? "this is a prefill worker; it takes prefill-role requests only"
                   : "this is a decode worker; it takes decode-role requests only";
    if (d->layout && *d->layout && strcmp(d->layout, pd->layout)) {
        static char msg[700];
        snprintf(msg, sizeof msg,
                 "the prefill and decode workers lay out their caches differently (different "
                 "model, page size or dtype: not supported): '%s' vs '%s'",
                 pd->layout, d->layout);
        return msg;
    }
    if (find_room(pd, g->rid)) return "duplicate request id";
    if (d->role == SLUICE__DISAGG_ROLE__DISAGG_PREFILL) {
        if (!d->peer || !*d->peer || strlen(d->peer) >= sizeof((room *)0)->peer)
            return "a prefill-role request needs the decode worker's transfer URL (pd.peer)";
        room *rm = add_room(pd, g->rid);
        if (!rm) return "out of memory";
        rm->room = d->room;
        snprintf(rm->peer, sizeof rm->peer, "%s", d->peer);
        r->pd = SL_PD_PREFILL;
        r->max_new = r->n_output + 1; /* the first token only; decode applies the limits */
        r->min_new = 0;
        r->n_stop = 0;
        r->ignore_eos = 1;
    } else {
        if (r->max_new <= r->n_output)
            return "a decode-role request must generate at least one token";
        room *rm = add_room(pd, g->rid);
        if (!rm) return "out of memory";
        rm->room = g->rid;
        r->pd = SL_PD_DECODE;
    }
    return NULL;
}

/* ---- prefill side ---------------------------------------------------------------- */

static void prefill_fail(sl_pd *pd, room *rm, const char *why)
{
    pd->failures++;
    SL_LOGW("pd", "request %llu (room %llu): %s", (unsigned long long)rm->rid,
            (unsigned long long)rm->room, why);
    sl_engine_pd_release(pd->g, rm->rid);    /* held memory back (the prefix stays cached) */
    if (!sl_engine_fail_req(pd->g, rm->rid)) /* still computing: its error event says it */
        send_router_chunk(pd, rm->rid, SLUICE__FINISH_REASON__FINISH_ERROR, why, 0, 0);
    drop_room(pd, rm);
}

static int try_send(sl_pd *pd, room *rm);

/* Both the computed state and the decode side's KvReady are there: copy the
 * request out of the cache into one message, release the cache, send. */
static void prefill_send(sl_pd *pd, room *rm)
{
    sl_sched_pd_mem mem;
    if (sl_engine_pd_view(pd->g, rm->rid, &mem)) {
        prefill_fail(pd, rm, "the computed request vanished before its transfer");
        return;
    }
    int P = sl_engine_cache(pd->g)->page_size;
    if (rm->skip < 0 || rm->skip % P || rm->skip > mem.n_tokens) {
        prefill_fail(pd, rm, "the decode side asked for a bad start token");
        return;
    }
    int64_t t0 = now_us();
    int p0 = rm->skip / P, np = (mem.n_tokens + P - 1) / P - p0;
    size_t kvb = sl_pd_shard_kv_bytes(pd->c.shard, np);
    size_t stb = mem.state >= 0 ? sl_pd_shard_state_bytes(pd->c.shard) : 0;
    sl_err e = {0};
    Sluice__KvTransfer kt = SLUICE__KV_TRANSFER__INIT;
    const uint8_t *blob;
    size_t blob_n;
    if (rm->share && sl_pd_share_lend(pd->share, &blob, &blob_n, &e)) {
        SL_LOGW("pd", "request %llu: no device-to-device transfer (%s): host staged",
                (unsigned long long)rm->rid, e.msg);
        rm->share = 0;
    }
    if (rm->share) { /* the decode side copies out of this worker's cache */
        kt.share.data = (uint8_t *)blob;
        kt.share.len = blob_n;
        kt.n_src_pages = (size_t)np;
        kt.src_pages = np ? (int32_t *)mem.pages + p0 : NULL;
        kt.src_slot = mem.state;
        kt.deadline_us = t0 + SHARE_HOLD_US;
    } else {
        if (sl_buf_reserve(&pd->buf, kvb + stb)) {
            prefill_fail(pd, rm, "out of memory staging the transfer");
            return;
        }
        uint8_t *staged = (uint8_t *)pd->buf.data; /* never NULL once reserved */
        if (run_job(pd, SL_PD_EXPORT, np ? mem.pages + p0 : NULL, np, mem.state, -1, staged,
                    staged + kvb, &e)) {
            prefill_fail(pd, rm, e.msg);
            return;
        }
        kt.kv.data = staged;
        kt.kv.len = kvb;
        kt.state.data = staged + kvb;
        kt.state.len = stb;
    }
    Sluice__TopLogprob top = SLUICE__TOP_LOGPROB__INIT;
    kt.room = rm->room;
    kt.start_token = rm->skip;
    kt.n_tokens = mem.n_tokens;
    kt.token = rm->first.token;
    kt.logprob = rm->first.logprob;
    kt.layout = (char *)pd->layout;
    kt.cached_tokens = rm->cached;
    if (rm->first.n_top > 0) {
        top.n_ids = top.n_logprobs = (size_t)rm->first.n_top;
        top.ids = rm->first.top_ids;
        top.logprobs = rm->first.top_logprobs;
        kt.top = &top;
    }
    Sluice__Envelope env = SLUICE__ENVELOPE__INIT;
    env.msg_case = SLUICE__ENVELOPE__MSG_KV_TRANSFER;
    env.kv_transfer = &kt;
    nng_msg *m = NULL;
    int rv = sl_wire_pack(&env, &m);
    if (rv) {
        prefill_fail(pd, rm, "out of memory packing the transfer");
        return;
    }
    /* the bytes are in the message: the cache's pages and slot can go (the
     * prefix stays in this worker's radix cache); lent ones go at the deadline */
    if (rm->share)
        rm->lent_until = kt.deadline_us;
    else
        sl_engine_pd_release(pd->g, rm->rid);
    rm->pending = m;
    rm->pending_bytes = kvb + stb;
    rm->n_tokens = mem.n_tokens;
    rm->send_t0_us = t0;
    try_send(pd, rm);
}

/* Sends rm's pending transfer if the link takes it. Returns 1 when rm is
 * gone (sent or failed), 0 when it stays (waiting for the link, or sent with
 * its memory lent until its deadline). */
static int try_send(sl_pd *pd, room *rm)
{
    int rv = pd->tp->send(pd->tp_impl, rm->peer, rm->pending);
    if (rv == NNG_EAGAIN) return 0;
    if (rv) {
        char why[400];
        snprintf(why, sizeof why, "sending the KV to %s: %s", rm->peer, nng_strerror(rv));
        prefill_fail(pd, rm, why);
        return 1;
    }
    rm->pending = NULL; /* consumed */
    int64_t now = now_us();
    pd->transfers++;
    pd->bytes += rm->pending_bytes;
    pd->seconds += (double)(now - rm->send_t0_us) / 1e6;
    pd->hold_seconds += (double)(now - rm->hold_us) / 1e6;
    SL_LOGD("pd", "request %llu: sent %d tokens from %d (%zu bytes) to room %llu",
            (unsigned long long)rm->rid, rm->n_tokens - rm->skip, rm->skip, rm->pending_bytes,
            (unsigned long long)rm->room);
    send_router_chunk(pd, rm->rid, SLUICE__FINISH_REASON__FINISH_STOP, NULL, rm->n_tokens,
                      rm->cached);
    if (rm->lent_until) return 0; /* released by sl_pd_poll at the deadline */
    drop_room(pd, rm);
    return 1;
}

void sl_pd_on_kv_ready(sl_pd *pd, const Sluice__KvReady *k)
{
    room *rm = find_room(pd, k->rid);
    if (!rm || pd->c.role != SLUICE__DISAGG_ROLE__DISAGG_PREFILL) {
        SL_LOGD("pd", "KvReady for unknown request %llu", (unsigned long long)k->rid);
        return;
    }
    if (k->error && *k->error) {
        prefill_fail(pd, rm, k->error);
        return;
    }
    if (k->layout && *k->layout && strcmp(k->layout, pd->layout)) {
        prefill_fail(pd, rm, "the decode side's cache layout differs from this worker's");
        return;
    }
    rm->ready = 1;
    rm->skip = k->skip_tokens;
    rm->share = pd->share && k->share_id && !strcmp(k->share_id, sl_pd_share_id(pd->share));
    if (rm->computed) prefill_send(pd, rm);
}

/* ---- decode side ---------------------------------------------------------------- */

static void decode_fail(sl_pd *pd, uint64_t rid, const char *why)
{
    pd->failures++;
    SL_LOGW("pd", "request %llu: %s", (unsigned long long)rid, why);
    sl_engine_fail_req(pd->g, rid); /* frees pages and slots, error event to the router */
    room *rm = find_room(pd, rid);
    if (rm) drop_room(pd, rm);
}

static void on_transfer(sl_pd *pd, const Sluice__KvTransfer *kt)
{
    int64_t t0 = now_us();
    room *rm = find_room(pd, kt->room);
    sl_sched_pd_mem mem;
    if (!rm || sl_engine_pd_view(pd->g, kt->room, &mem)) {
        SL_LOGD("pd", "transfer for room %llu that no longer waits: dropped",
                (unsigned long long)kt->room);
        return;
    }
    if (kt->error && *kt->error) return decode_fail(pd, kt->room, kt->error);
    int P = sl_engine_cache(pd->g)->page_size;
    int p0 = mem.skip_tokens / P, np = (mem.n_tokens + P - 1) / P - p0;
    size_t kvb = sl_pd_shard_kv_bytes(pd->c.shard, np);
    size_t stb = mem.state >= 0 ? sl_pd_shard_state_bytes(pd->c.shard) : 0;
    int shared = kt->share.len > 0; /* device to device: no bytes in the message */
    if ((kt->layout && strcmp(kt->layout, pd->layout)) || kt->start_token != mem.skip_tokens ||
        kt->n_tokens != mem.n_tokens || kt->kv.len != (shared ? 0 : kvb) ||
        kt->state.len != (shared ? 0 : stb) ||
        (shared && (kt->n_src_pages != (size_t)np || (kt->src_slot >= 0) != (mem.state >= 0)))) {
        char why[600];
        snprintf(why, sizeof why,
                 "transfer does not fit: tokens %d..%d (want %d..%d), %zu+%zu bytes (want "
                 "%zu+%zu), %zu shared pages, layout '%s' (mine '%s')",
                 kt->start_token, kt->n_tokens, mem.skip_tokens, mem.n_tokens, kt->kv.len,
                 kt->state.len, kvb, stb, kt->n_src_pages, kt->layout ? kt->layout : "", pd->layout);
        return decode_fail(pd, kt->room, why);
    }
    sl_err e = {0};
    /* the state goes to W and, for the tree, its copy (written and activated
     * in one go: nothing zeroes a slot after its transfer committed) */
    int32_t slot2 = mem.state >= 0 ? mem.state_copy : -1;
    if (shared) {
        /* the prefill side holds its pages until the deadline: copy well
         * before it, and only use what was copied before it */
        if (!pd->share)
            return decode_fail(pd, kt->room, "the prefill worker sent its cache device to device, "
                                             "which this worker cannot open");
        if (now_us() > kt->deadline_us - SHARE_MARGIN_US)
            return decode_fail(pd, kt->room, "the device-to-device transfer arrived too late to copy");
        if (sl_pd_share_pull(pd->share, kt->share.data, kt->share.len, kt->src_pages,
                             np ? mem.pages + p0 : NULL, np, kt->src_slot, mem.state, slot2, &e))
            return decode_fail(pd, kt->room, e.msg);
        if (now_us() >= kt->deadline_us)
            return decode_fail(pd, kt->room, "the device-to-device copy ended after the prefill "
                                             "worker's hold");
    } else if (run_job(pd, SL_PD_IMPORT, np ? mem.pages + p0 : NULL, np, mem.state, slot2,
                       kt->kv.data, kt->state.data, &e)) {
        return decode_fail(pd, kt->room, e.msg);
    }
    sl_sample s = {.token = kt->token, .logprob = kt->logprob};
    if (kt->top)
        for (size_t i = 0; i < kt->top->n_ids && i < kt->top->n_logprobs && i < SL_SAMPLER_MAX_TOP;
             i++) {
            s.top_ids[i] = kt->top->ids[i];
            s.top_logprobs[i] = kt->top->logprobs[i];
            s.n_top = (int)i + 1;
        }
    pd->hold_seconds += (double)(now_us() - rm->hold_us) / 1e6;
    drop_room(pd, rm); /* an ordinary request from here on */
    if (sl_engine_pd_activate(pd->g, kt->room, kt->token, &s, &e)) {
        pd->failures++;
        SL_LOGW("pd", "room %llu: %s", (unsigned long long)kt->room, e.msg);
        return;
    }
    pd->transfers++;
    pd->bytes += kvb + stb;
    pd->seconds += (double)(now_us() - t0) / 1e6;
}

static void send_ready(sl_pd *pd, const sl_sched_event *ev)
{
    sl_sched_pd_mem mem;
    if (sl_engine_pd_view(pd->g, ev->rid, &mem)) return;
    Sluice__KvReady k = SLUICE__KV_READY__INIT;
    k.rid = ev->rid;
    k.room = ev->rid;
    k.skip_tokens = ev->cached_tokens;
    k.n_pages = (size_t)mem.n_pages;
    k.pages = (int32_t *)mem.pages;
    k.slot = mem.state;
    k.layout = (char *)pd->layout;
    if (pd->share) k.share_id = (char *)sl_pd_share_id(pd->share);
    Sluice__Envelope env = SLUICE__ENVELOPE__INIT;
    env.msg_case = SLUICE__ENVELOPE__MSG_KV_READY;
    env.kv_ready = &k;
    int rv = sl_wire_send(pd->router, &env, 0);
    if (rv) decode_fail(pd, ev->rid, "cannot tell the router the request is ready");
}

/* ---- events, poll, load --------------------------------------------------------- */

int sl_pd_on_event(sl_pd *pd, const sl_sched_event *ev)
{
    room *rm = find_room(pd, ev->rid);
    if (!rm) return 0;
    if (pd->c.role == SLUICE__DISAGG_ROLE__DISAGG_DECODE) {
        if (ev->pd_ready) {
            rm->hold_us = now_us();
            pd->queue_seconds += (double)(rm->hold_us - rm->t0_us) / 1e6;
            send_ready(pd, ev);
            return 1;
        }
        if (ev->finish) drop_room(pd, rm); /* failed or aborted while waiting */
        return 0;
    }
    if (ev->token >= 0) { /* the first token: it travels with the KV */
        rm->first = ev->sample;
        rm->first.token = ev->token;
        rm->have_first = 1;
        return 1;
    }
    if (ev->finish == SL_FINISH_STOP || ev->finish == SL_FINISH_LENGTH) {
        if (!rm->have_first) { /* cannot happen: prefill requests sample one token */
            prefill_fail(pd, rm, "prefill finished without a token");
            return 1;
        }
        rm->computed = 1;
        rm->cached = ev->cached_tokens;
        rm->hold_us = now_us();
        pd->queue_seconds += (double)(rm->hold_us - rm->t0_us) / 1e6;
        if (rm->ready) prefill_send(pd, rm);
        return 1;
    }
    drop_room(pd, rm); /* aborted or failed: the router hears it */
    return 0;
}

int sl_pd_poll(sl_pd *pd)
{
    Sluice__Envelope *env;
    while ((env = pd->tp->recv(pd->tp_impl))) {
        if (env->msg_case == SLUICE__ENVELOPE__MSG_KV_TRANSFER)
            on_transfer(pd, env->kv_transfer);
        else
            SL_LOGW("pd", "dropped a transfer-link message of kind %d", (int)env->msg_case);
        sluice__envelope__free_unpacked(env, NULL);
    }
    for (int i = 0; i < pd->n_rooms;) /* transfers waiting for their link */
        if (!pd->rooms[i].pending || !try_send(pd, &pd->rooms[i])) i++;
    int64_t now = now_us();
    for (int i = 0; i < pd->n_rooms;) {
        room *rm = &pd->rooms[i];
        if (rm->lent_until && now >= rm->lent_until) { /* the decode side had its chance */
            if (rm->pending) {
                prefill_fail(pd, rm, "the transfer link did not take the transfer before its deadline");
            } else {
                sl_engine_pd_release(pd->g, rm->rid);
                drop_room(pd, rm);
            }
            continue;
        }
        if (rm->lent_until || now - rm->t0_us <= (int64_t)pd->c.timeout_ms * 1000) {
            i++;
            continue;
        }
        char why[200];
        snprintf(why, sizeof why, "no %s from the other side within %d ms",
                 pd->c.role == SLUICE__DISAGG_ROLE__DISAGG_DECODE ? "transfer" : "KvReady",
                 pd->c.timeout_ms);
        if (pd->c.role == SLUICE__DISAGG_ROLE__DISAGG_DECODE)
            decode_fail(pd, rm->rid, why);
        else
            prefill_fail(pd, rm, why);
        /* rooms[i] now holds another room: look at it too */
    }
    return pd->n_rooms > 0;
}

void sl_pd_fill_load(sl_pd *pd, Sluice__LoadReport *lr)
{
    lr->disaggregation_mode = pd->c.role;
    lr->transfer_url = pd->url;
    lr->pd_transfers = pd->transfers;
    lr->pd_transfer_bytes = pd->bytes;
    lr->pd_transfer_seconds = pd->seconds;
    lr->pd_failures = pd->failures;
    lr->pd_queue_seconds = pd->queue_seconds;
    lr->pd_hold_seconds = pd->hold_seconds;
    lr->layout = (char *)pd->layout;
    sl_sched_stats st;
    sl_engine_stats(pd->g, &st);
    lr->pd_waiting = st.pd_waiting;
}

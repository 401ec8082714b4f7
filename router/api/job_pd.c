/* Prefill/decode disaggregation in the router (docs/disaggregation.md).
 *
 * A choice in PD mode is a pair: the decode submission (the choice's rid,
 * s->rid, whose chunks are the client's stream) and a prefill companion
 * (room = the decode rid). The router relays the decode side's KvReady to
 * the companion; the KV itself goes worker to worker.
 *
 *   client   router            decode D               prefill P
 *     │ ───▶ │ generate(DECODE) ─▶│ admit: pages+slot     │
 *     │      │ generate(PREFILL, room, peer=D) ────────────▶│ prefill, 1st token
 *     │      │◀── KvReady(skip) ──│                       │ (held)
 *     │      │ KvReady ───────────────────────────────────▶│
 *     │      │                    │◀════ KvTransfer ══════│ release
 *     │      │◀─ chunk STOP (prefill done) ────────────────│
 *     │ ◀─── │◀── tokens ─────────│ decode ...            │
 *
 * Failures: the companion failing before the decode side produced a token
 * aborts the decode submission; a lost prefill worker falls back to running
 * the choice unified on the decode worker, any other prefill error fails the
 * choice with its message. The decode side ending (finish, error, abort)
 * aborts a companion still running. The decode worker dying is a plain
 * migration (job_run.c), which pairs again. */
#include <stdlib.h>
#include <string.h>

#include "job.h"
#include "router_impl.h"
#include "sl_log.h"

struct sl_pd_pair {
    sl_pd_pair *next, *prev;
    sl_router *rt;
    sl_seq *s;
    uint64_t drid, prid;
    int dworker, pworker;
    int prefill_live, decode_live;
    int started; /* the decode side produced a token: the transfer happened */
};

static void pair_unlink(sl_pd_pair *p)
{
    sl_router *rt = p->rt;
    if (p->prev)
        p->prev->next = p->next;
    else
        rt->pd_pairs = p->next;
    if (p->next) p->next->prev = p->prev;
    free(p);
}

static void pair_maybe_free(sl_pd_pair *p)
{
    if (!p->prefill_live && !p->decode_live) pair_unlink(p);
}

static sl_pd_pair *pair_by_drid(sl_router *rt, uint64_t drid)
{
    for (sl_pd_pair *p = rt->pd_pairs; p; p = p->next)
        if (p->decode_live && p->drid == drid) return p;
    return NULL;
}

int sl_job_pd_decode_ok(sl_router *rt, int worker)
{
    if (!rt->cfg.pd) return 1;
    sl_worker_info w;
    sl_cluster_info(rt->cluster, worker, &w);
    return w.pd_role == SLUICE__DISAGG_ROLE__DISAGG_DECODE;
}

/* The decode side of p is gone for good: detach it from its choice. */
static void decode_gone(sl_pd_pair *p)
{
    if (p->s && p->s->pd == p) p->s->pd = NULL;
    p->s = NULL;
    p->decode_live = 0;
    if (p->prefill_live) {
        sl_cluster_abort(p->rt->cluster, p->prid);
        p->prefill_live = 0;
    }
    pair_maybe_free(p);
}

static void on_prefill_chunk(void *ud, const Sluice__TokenChunk *ch, int lost)
{
    sl_pd_pair *p = ud;
    sl_router *rt = p->rt;
    if (ch->finish == SLUICE__FINISH_REASON__FINISH_NONE) return;
    p->prefill_live = 0;
    if (ch->finish == SLUICE__FINISH_REASON__FINISH_STOP ||
        ch->finish == SLUICE__FINISH_REASON__FINISH_LENGTH) {
        rt->pd_done++;
        pair_maybe_free(p);
        return;
    }
    if (!p->decode_live || p->started) { /* nothing waits for it any more */
        pair_maybe_free(p);
        return;
    }
    /* the decode side waits for a transfer that will not come */
    sl_seq *s = p->s;
    sl_job *j = s->job;
    const char *why = ch->error && *ch->error ? ch->error : "aborted";
    sl_cluster_abort(rt->cluster, p->drid);
    decode_gone(p);
    if (s->running) {
        s->running = 0;
        j->nrunning--;
    }
    sl_err e = {0};
    if (lost && sl_job_seq_submit(s, s->worker, 0, &e) == SL_OK) {
        rt->pd_fallbacks++;
        SL_LOGW("router",
                "%s: prefill worker lost (%s); choice %d runs unified on its decode worker", j->id,
                why, s->index);
        return;
    }
    rt->pd_failed++;
    char msg[700];
    snprintf(msg, sizeof msg, "prefill failed: %s%s%s", why, e.code ? "; fallback: " : "",
             e.code ? e.msg : "");
    j->failed = 1;
    sl_job_fail(j, SL_API_STATUS_WORKER_LOST, msg);
}

static void on_kv_ready(void *ud, int worker, const Sluice__KvReady *k)
{
    sl_router *rt = ud;
    sl_pd_pair *p = pair_by_drid(rt, k->rid);
    if (!p || !p->prefill_live || p->dworker != worker) return;
    Sluice__KvReady fwd = *k;
    fwd.room = p->drid;
    sl_err e = {0};
    if (sl_cluster_send_kv_ready(rt->cluster, p->prid, &fwd, &e) == SL_OK) return;
    /* the companion is unreachable: its loss is reported by the cluster */
    SL_LOGW("router", "relaying KvReady for room %llu: %s", (unsigned long long)p->drid, e.msg);
}

void sl_job_pd_init(sl_router *rt)
{
    if (rt->cfg.pd) sl_cluster_set_kv_ready(rt->cluster, on_kv_ready, rt);
}

sl_status sl_job_pd_submit(sl_seq *s, int dworker, Sluice__GenerateRequest *g,
                           sl_cluster_chunk_cb on_chunk, sl_err *e)
{
    sl_router *rt = s->job->rt;
    sl_worker_info dw;
    sl_cluster_info(rt->cluster, dworker, &dw);
    /* prefill candidates: alive prefill workers, by prefix affinity */
    sl_route_cand cand[256];
    int ncand = 0;
    for (int w = 0; w < sl_cluster_size(rt->cluster) && ncand < 256; w++) {
        if (!sl_cluster_alive(rt->cluster, w)) continue;
        sl_worker_info wi;
        sl_cluster_info(rt->cluster, w, &wi);
        if (wi.pd_role != SLUICE__DISAGG_ROLE__DISAGG_PREFILL) continue;
        int reported = wi.running + wi.queued;
        cand[ncand++] = (sl_route_cand){.worker = w,
                                        .load = wi.inflight > reported ? wi.inflight : reported,
                                        .checkpoint_tokens = wi.checkpoint_tokens};
    }
    if (!ncand || dw.pd_role != SLUICE__DISAGG_ROLE__DISAGG_DECODE || !*dw.transfer_url) {
        /* no prefill worker alive: the decode worker computes the prompt itself */
        rt->pd_fallbacks++;
        return sl_cluster_submit(rt->cluster, dworker, g, on_chunk, s, &s->rid, e);
    }
    /* the prompt the prefill side computes: input + what was generated so far */
    int n = (int)(g->n_input_ids + g->n_output_ids);
    int32_t *all = malloc(sizeof(int32_t) * (size_t)(n ? n : 1));
    sl_pd_pair *p = calloc(1, sizeof *p);
    if (!all || !p) {
        free(all);
        free(p);
        return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    }
    memcpy(all, g->input_ids, sizeof(int32_t) * g->n_input_ids);
    if (g->n_output_ids)
        memcpy(all + g->n_input_ids, g->output_ids, sizeof(int32_t) * g->n_output_ids);
    int pick = sl_route_pick(rt->route, cand, ncand, all, n, NULL);
    int pworker = cand[pick].worker;
    sl_route_record(rt->route, pworker, all, n);
    free(all);

    Sluice__Disagg dd = SLUICE__DISAGG__INIT, pp = SLUICE__DISAGG__INIT;
    dd.role = SLUICE__DISAGG_ROLE__DISAGG_DECODE;
    g->pd = &dd;
    sl_status st = sl_cluster_submit(rt->cluster, dworker, g, on_chunk, s, &s->rid, e);
    if (st) {
        g->pd = NULL;
        free(p);
        return st;
    }
    pp.role = SLUICE__DISAGG_ROLE__DISAGG_PREFILL;
    pp.room = s->rid;
    pp.peer = (char *)dw.transfer_url;
    pp.layout = (char *)dw.layout;
    g->pd = &pp;
    p->rt = rt;
    p->s = s;
    p->drid = s->rid;
    p->dworker = dworker;
    p->pworker = pworker;
    p->decode_live = 1;
    sl_err pe = {0};
    st = sl_cluster_submit(rt->cluster, pworker, g, on_prefill_chunk, p, &p->prid, &pe);
    g->pd = NULL;
    if (st) { /* run it unified on the decode worker instead */
        SL_LOGW("router", "prefill worker: %s; running unified", pe.msg);
        sl_cluster_abort(rt->cluster, s->rid);
        free(p);
        rt->pd_fallbacks++;
        return sl_cluster_submit(rt->cluster, dworker, g, on_chunk, s, &s->rid, e);
    }
    p->prefill_live = 1;
    p->next = rt->pd_pairs;
    if (rt->pd_pairs) rt->pd_pairs->prev = p;
    rt->pd_pairs = p;
    s->pd = p;
    rt->pd_started++;
    return SL_OK;
}

void sl_job_pd_seq_chunk(sl_seq *s, const Sluice__TokenChunk *ch)
{
    sl_pd_pair *p = s->pd;
    if (!p) return;
    if (ch->n_ids) p->started = 1;
    if (ch->finish != SLUICE__FINISH_REASON__FINISH_NONE) decode_gone(p);
}

void sl_job_pd_seq_stop(sl_seq *s)
{
    if (s->pd) decode_gone(s->pd);
}

void sl_job_pd_free_all(sl_router *rt)
{
    while (rt->pd_pairs) {
        sl_pd_pair *p = rt->pd_pairs;
        if (p->s && p->s->pd == p) p->s->pd = NULL;
        pair_unlink(p);
    }
}

void sl_job_pd_metrics(sl_router *rt, sl_buf *o)
{
    if (!rt->cfg.pd) return;
    sl_buf_printf(o,
                  "# HELP sluice_pd_pairs_total Choices started with a prefill companion.\n"
                  "# TYPE sluice_pd_pairs_total counter\nsluice_pd_pairs_total %llu\n"
                  "# HELP sluice_pd_prefill_done_total Prefill companions that transferred.\n"
                  "# TYPE sluice_pd_prefill_done_total counter\nsluice_pd_prefill_done_total %llu\n"
                  "# HELP sluice_pd_fallbacks_total Choices run unified on a decode worker.\n"
                  "# TYPE sluice_pd_fallbacks_total counter\nsluice_pd_fallbacks_total %llu\n"
                  "# HELP sluice_pd_failed_total Choices failed by their prefill side.\n"
                  "# TYPE sluice_pd_failed_total counter\nsluice_pd_failed_total %llu\n",
                  (unsigned long long)rt->pd_started, (unsigned long long)rt->pd_done,
                  (unsigned long long)rt->pd_fallbacks, (unsigned long long)rt->pd_failed);
    static const char *const g[][2] = {
        {"sluice_worker_pd_role", "0 unified, 1 prefill, 2 decode (its report)."},
        {"sluice_worker_pd_transfers", "KV transfers the worker sent or received."},
        {"sluice_worker_pd_transfer_bytes", "Bytes of those transfers."},
        {"sluice_worker_pd_transfer_seconds", "Time spent copying and sending them."},
        {"sluice_worker_pd_waiting", "Requests holding memory while waiting for the other side."},
        {"sluice_worker_pd_failures", "Transfers that failed (timeouts, errors)."},
        {"sluice_worker_total_kv_pages", "KV cache pages (its report)."},
        {"sluice_worker_free_mamba_slots", "Free or evictable state slots (its report)."},
        {"sluice_worker_total_mamba_slots", "State slots (its report)."},
        {"sluice_worker_pd_queue_seconds",
         "Summed waits: prefill arrival to computed, decode arrival to admitted."},
        {"sluice_worker_pd_hold_seconds",
         "Summed holds: prefill computed to sent, decode admitted to activated."}};
    int n = sl_cluster_size(rt->cluster);
    for (int k = 0; k < 11; k++) {
        sl_buf_printf(o, "# HELP %s %s\n# TYPE %s gauge\n", g[k][0], g[k][1], g[k][0]);
        for (int i = 0; i < n; i++) {
            sl_worker_info w;
            sl_cluster_info(rt->cluster, i, &w);
            double v = k == 0   ? w.pd_role
                       : k == 1 ? (double)w.pd_transfers
                       : k == 2 ? (double)w.pd_transfer_bytes
                       : k == 3 ? w.pd_transfer_seconds
                       : k == 4 ? w.pd_waiting
                       : k == 5 ? (double)w.pd_failures
                       : k == 6 ? w.total_kv_pages
                       : k == 7 ? w.free_mamba_slots
                       : k == 8 ? w.total_mamba_slots
                       : k == 9 ? w.pd_queue_seconds
                                : w.pd_hold_seconds;
            sl_buf_printf(o, "%s{worker=\"%s\"} %g\n", g[k][0], w.url, v);
        }
    }
}

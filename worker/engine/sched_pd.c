/* Disaggregation in the scheduler: views of held/awaiting requests, the
 * prefill side's release and the decode side's activation (see sl_pd_role in
 * scheduler.h and docs/disaggregation.md). */
#include "scheduler_impl.h"

int sl_sched_pd_view(const sl_sched *s, uint64_t rid, sl_sched_pd_mem *m)
{
    const sl_sched_req_impl *r = sched_find(s, rid);
    if (!r || (r->st != REQ_HELD && r->st != REQ_AWAIT)) return -1;
    *m = (sl_sched_pd_mem){.pages = r->pages,
                           .n_pages = r->n_pages,
                           .n_tokens = r->st == REQ_HELD ? r->kv_len : r->n_tok,
                           .skip_tokens = r->st == REQ_AWAIT ? r->tree_len : 0,
                           .state = r->W,
                           .state_copy = r->st == REQ_AWAIT ? r->pend_slot : -1};
    return 0;
}

int sl_sched_pd_release(sl_sched *s, uint64_t rid)
{
    sl_sched_req_impl *r = sched_find(s, rid);
    if (!r || r->st != REQ_HELD) return -1;
    list_remove(&s->held, r);
    /* KV and W were computed here and stayed untouched: cache them */
    sched_release_memory(s, r, 1);
    sched_map_del(s, r->rid);
    r->st = REQ_DONE;
    sched_free_req(s, r);
    return 0;
}

sl_status sl_sched_pd_activate(sl_sched *s, uint64_t rid, int32_t token, const sl_sample *sample,
                               sl_err *e)
{
    sl_sched_req_impl *r = sched_find(s, rid);
    if (!r || r->st != REQ_AWAIT)
        return sl_err_set(e, SL_ERR_INVALID, "request %llu is not waiting for a transfer",
                          (unsigned long long)rid);
    if (token < 0 || token >= s->cfg.vocab) {
        sched_finish(s, r, SL_FINISH_ERROR);
        return sl_err_set(e, SL_ERR_INVALID, "transferred token %d is outside the vocabulary",
                          (int)token);
    }
    list_remove(&s->await, r);
    list_append(&s->running, r);
    r->st = REQ_RUNNING;
    r->pd = SL_PD_NONE;   /* an ordinary request from now on (a retraction re-prefills here) */
    r->kv_len = r->n_tok; /* every known token's KV is in place; W is the state after them */
    /* no batch names r yet: the leader may update its sampler state */
    sl_sampler_state *ss = sl_sampler_table_get(s->samplers, r->sampler);
    if (ss) sl_sampler_state_add_output(ss, &token, 1);
    /* the transferred prefix (pend_len) enters the tree at the next batch */
    sched_take_token(s, r, token, sample);
    return SL_OK;
}

int sl_sched_fail(sl_sched *s, uint64_t rid)
{
    sl_sched_req_impl *r = sched_find(s, rid);
    if (!r) return 0;
    sched_finish(s, r, SL_FINISH_ERROR);
    return 1;
}

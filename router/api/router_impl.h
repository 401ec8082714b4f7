/* router_impl.h: the router's state, shared by router.c (endpoints,
 * lifetime) and the job files (job.c, job_run.c) that run its requests.
 * Private to router/api. */
#ifndef SL_ROUTER_IMPL_H
#define SL_ROUTER_IMPL_H

#include "job.h"
#include "metrics.h"
#include "router.h"

struct sl_router {
    uv_loop_t *loop;
    sl_router_config cfg;
    sl_http *http;
    sl_cluster *cluster;
    sl_route *route;
    sl_metrics metrics;
    uv_timer_t tick;
    sl_job *jobs; /* in flight */
    int njobs;
    uint64_t id_seq;
    int shutting_down;
    /* disaggregation (job_pd.c) */
    struct sl_pd_pair *pd_pairs;
    uint64_t pd_started, pd_done, pd_fallbacks, pd_failed;
    void (*done)(void *);
    void *done_ud;
};

static inline double sl_router_now_ms(void) { return (double)uv_hrtime() / 1e6; }

#endif

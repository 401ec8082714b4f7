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
    int ever_ready;         /* a worker has been alive once (/health: loading vs down) */
    double t_stats_ms;      /* last periodic load line */
    uint64_t stats_out_tokens, stats_in_tokens; /* counters at that line */
    uint64_t out_tokens_live; /* output tokens as they arrive (throughput) */
    double gen_throughput;  /* output tokens/s over the last stats interval */
    sl_job *jobs; /* in flight */
    int njobs;
    uint64_t id_seq;
    int shutting_down;
    /* disaggregation (job_pd.c) */
    struct sl_pd_pair *pd_pairs;
    uint64_t pd_started, pd_done, pd_fallbacks, pd_failed;
    void (*drained)(void *); /* sl_router_shutdown: the HTTP side drained */
    void (*done)(void *);
    void *done_ud;
};

/* One access-log line at info: method, route, status, tokens, latency (no
 * content). */
void sl_router_access_log(const sl_router *rt, const char *method, const char *route, int status,
                          int prompt_tokens, int completion_tokens, double t_arrival_ms);

static inline double sl_router_now_ms(void) { return (double)uv_hrtime() / 1e6; }

#endif

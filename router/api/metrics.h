/* sl_metrics: the router's counters and latency histograms, rendered as
 * Prometheus text (version 0.0.4) for GET /metrics.
 *
 *   sl_metrics m; sl_metrics_init(&m);
 *   sl_metrics_request(&m, "/v1/chat/completions", 200);
 *   sl_metrics_observe(&m, SL_METRIC_TTFT, 0.031);
 *   sl_buf out = {0}; sl_metrics_render(&m, &out);
 *
 * Threads: loop thread only. */
#ifndef SL_METRICS_H
#define SL_METRICS_H

#include <stdint.h>

#include "sl_buf.h"

typedef enum sl_metric_hist {
    SL_METRIC_TTFT = 0, /* request arrival -> first output token, seconds */
    SL_METRIC_ITL,      /* between two output tokens of one choice */
    SL_METRIC_E2E,      /* request arrival -> last byte */
    SL_METRIC_NHIST,
} sl_metric_hist;

#define SL_METRICS_BUCKETS 16
#define SL_METRICS_MAX_SERIES 64

typedef struct sl_metrics_hist_data {
    uint64_t bucket[SL_METRICS_BUCKETS + 1]; /* last: +Inf */
    uint64_t count;
    double sum;
} sl_metrics_hist_data;

typedef struct sl_metrics {
    struct {
        const char *route; /* static string */
        int status;
        uint64_t n;
    } req[SL_METRICS_MAX_SERIES];
    int nreq;
    sl_metrics_hist_data hist[SL_METRIC_NHIST];
    uint64_t prompt_tokens, generation_tokens, cached_tokens;
    uint64_t aborted;  /* client went away */
    uint64_t migrated; /* choices moved to another worker after theirs died */
    uint64_t lost;     /* choices failed because their worker died and none could take over */
} sl_metrics;

void sl_metrics_init(sl_metrics *m);
/* route must be a string with static lifetime. */
void sl_metrics_request(sl_metrics *m, const char *route, int status);
void sl_metrics_observe(sl_metrics *m, sl_metric_hist h, double seconds);
/* Appends the text exposition of m (worker gauges are added by the router). */
void sl_metrics_render(const sl_metrics *m, sl_buf *out);

#endif

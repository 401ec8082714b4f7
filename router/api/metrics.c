/* sl_metrics: see metrics.h. */
#include "metrics.h"

#include <string.h>

static const double bounds[SL_METRICS_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                  0.1,   0.25,   0.5,   1,    2.5,   5,
                                                  10,    30,     60,    120};
static const char *const hist_name[SL_METRIC_NHIST] = {
    "sluice_time_to_first_token_seconds", "sluice_inter_token_latency_seconds",
    "sluice_e2e_request_latency_seconds"};
static const char *const sglang_hist_name[SL_METRIC_NHIST] = {
    "sglang:time_to_first_token_seconds", "sglang:inter_token_latency_seconds",
    "sglang:e2e_request_latency_seconds"};
static const char *const hist_help[SL_METRIC_NHIST] = {
    "Request arrival to first output token.", "Time between two output tokens of one choice.",
    "Request arrival to the end of its response."};

void sl_metrics_init(sl_metrics *m) { memset(m, 0, sizeof *m); }

void sl_metrics_request(sl_metrics *m, const char *route, int status)
{
    for (int i = 0; i < m->nreq; i++)
        if (m->req[i].status == status && !strcmp(m->req[i].route, route)) {
            m->req[i].n++;
            return;
        }
    if (m->nreq == SL_METRICS_MAX_SERIES) return; /* bounded label set */
    m->req[m->nreq].route = route;
    m->req[m->nreq].status = status;
    m->req[m->nreq++].n = 1;
}

void sl_metrics_observe(sl_metrics *m, sl_metric_hist h, double s)
{
    sl_metrics_hist_data *d = &m->hist[h];
    int b = 0;
    while (b < SL_METRICS_BUCKETS && s > bounds[b]) b++;
    d->bucket[b]++;
    d->count++;
    d->sum += s;
}

void sl_metrics_render(const sl_metrics *m, sl_buf *o)
{
    sl_buf_puts(o, "# HELP sluice_requests_total HTTP requests by route and status.\n"
                   "# TYPE sluice_requests_total counter\n");
    for (int i = 0; i < m->nreq; i++)
        sl_buf_printf(o, "sluice_requests_total{route=\"%s\",status=\"%d\"} %llu\n",
                      m->req[i].route, m->req[i].status, (unsigned long long)m->req[i].n);
    for (int h = 0; h < 2 * SL_METRIC_NHIST; h++) {
        /* each histogram twice: sluice's name, then SGLang's (dashboards) */
        const sl_metrics_hist_data *d = &m->hist[h % SL_METRIC_NHIST];
        const char *name = h < SL_METRIC_NHIST ? hist_name[h] : sglang_hist_name[h - SL_METRIC_NHIST];
        sl_buf_printf(o, "# HELP %s %s\n# TYPE %s histogram\n", name,
                      hist_help[h % SL_METRIC_NHIST], name);
        uint64_t cum = 0;
        for (int b = 0; b < SL_METRICS_BUCKETS; b++) {
            cum += d->bucket[b];
            sl_buf_printf(o, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[b],
                          (unsigned long long)cum);
        }
        cum += d->bucket[SL_METRICS_BUCKETS];
        sl_buf_printf(o, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name,
                      (unsigned long long)cum, name, d->sum, name, (unsigned long long)d->count);
    }
    static const char *const sg[][2] = {
        {"sglang:prompt_tokens_total", "Prompt tokens sent to workers."},
        {"sglang:generation_tokens_total", "Output tokens received."},
        {"sglang:cached_tokens_total", "Prompt tokens served from a prefix cache."}};
    const uint64_t sv[] = {m->prompt_tokens, m->generation_tokens, m->cached_tokens};
    for (int i = 0; i < 3; i++)
        sl_buf_printf(o, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", sg[i][0], sg[i][1],
                      sg[i][0], sg[i][0], (unsigned long long)sv[i]);
    sl_buf_printf(o,
                  "# HELP sluice_prompt_tokens_total Prompt tokens sent to workers.\n"
                  "# TYPE sluice_prompt_tokens_total counter\nsluice_prompt_tokens_total %llu\n"
                  "# HELP sluice_generation_tokens_total Output tokens received.\n"
                  "# TYPE sluice_generation_tokens_total counter\n"
                  "sluice_generation_tokens_total %llu\n"
                  "# HELP sluice_cached_tokens_total Prompt tokens served from a worker's prefix "
                  "cache.\n# TYPE sluice_cached_tokens_total counter\n"
                  "sluice_cached_tokens_total %llu\n"
                  "# HELP sluice_aborted_requests_total Requests whose client went away.\n"
                  "# TYPE sluice_aborted_requests_total counter\n"
                  "sluice_aborted_requests_total %llu\n"
                  "# HELP sluice_migrations_total Choices moved to another worker after their "
                  "worker died.\n# TYPE sluice_migrations_total counter\n"
                  "sluice_migrations_total %llu\n"
                  "# HELP sluice_lost_total Choices failed because their worker died and no "
                  "other could take over.\n# TYPE sluice_lost_total counter\n"
                  "sluice_lost_total %llu\n",
                  (unsigned long long)m->prompt_tokens, (unsigned long long)m->generation_tokens,
                  (unsigned long long)m->cached_tokens, (unsigned long long)m->aborted,
                  (unsigned long long)m->migrated, (unsigned long long)m->lost);
}

/* libFuzzer: OpenAI and Anthropic request bodies through the router's
 * decoding and validation (sl_job_decode). The first byte picks the route,
 * the rest is the body. An accepted request must be within every limit the
 * router promises its workers (docs/operations.md); a refused one gets a
 * 4xx with a message. */
#include <jansson.h>
#include <stdint.h>
#include <string.h>

#include "job.h"

static const struct {
    const char *route;
    sl_api_kind kind;
    const sl_api_dialect *dialect;
} routes[] = {{"/v1/chat/completions", SL_API_CHAT, &sl_openai_chat},
              {"/v1/completions", SL_API_COMPLETIONS, &sl_openai_completions},
              {"/v1/responses", SL_API_CHAT, &sl_openai_responses},
              {"/v1/messages", SL_API_MESSAGES, &sl_anthropic_messages},
              {"/v1/messages/count_tokens", SL_API_MESSAGES, &sl_anthropic_messages},
              {"/tokenize", SL_API_COMPLETIONS, &sl_openai_completions}};

static void check(int ok)
{
    if (!ok) __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!size) return 0;
    int k = data[0] % (int)(sizeof routes / sizeof routes[0]);
    json_t *body = json_loadb((const char *)data + 1, size - 1, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(body)) {
        json_decref(body);
        return 0;
    }
    sl_router_config cfg = sl_router_config_default();
    cfg.served_model_name = "tiny";
    sl_api_err err = {0};
    sl_job *j = sl_job_decode(&cfg, routes[k].route, routes[k].kind, routes[k].dialect, body, &err);
    if (!j) {
        check(err.status >= 400 && err.status < 500 && err.type && err.msg[0]);
        return 0;
    }
    const sl_job_params *p = &j->p;
    check(p->n >= 1 && p->n <= cfg.max_n);
    /* count_tokens generates nothing: it alone may leave max_tokens out (0) */
    int counting = !strcmp(routes[k].route, "/v1/messages/count_tokens");
    check(p->max_tokens == -1 || p->max_tokens >= 1 || (counting && p->max_tokens == 0));
    check(p->n_stops >= 0 && p->n_stops <= SL_JOB_MAX_STOPS);
    for (int i = 0; i < p->n_stops; i++)
        check(p->stops[i] && p->stops[i][0] && strlen(p->stops[i]) <= SL_JOB_MAX_STOP_BYTES);
    check(p->n_stop_ids >= 0 && p->n_stop_ids <= SL_JOB_MAX_STOP_IDS);
    check(p->logprobs >= 0 && p->logprobs <= 21);
    const Sluice__SamplingParams *s = &p->sampling;
    check(s->temperature >= 0 && s->temperature <= 2 && s->top_p > 0 && s->top_p <= 1);
    check(s->min_p >= 0 && s->min_p <= 1 && s->repetition_penalty > 0);
    check(s->top_logprobs >= 0 && s->top_logprobs <= 20);
    check(j->nprompts >= 0 && j->nprompts <= 64);
    for (int i = 0; i < j->nprompts; i++) {
        if (j->is_ids[i]) {
            for (size_t t = 0; t < j->ids[i].n; t++) check(j->ids[i].v[t] >= 0);
        }
    }
    sl_job_free(j);
    return 0;
}

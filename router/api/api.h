/* api: what an API dialect is (api_openai.c, api_responses.c,
 * api_anthropic.c) and the errors every request path ends with. Internal to the router; see router.h
 * for the public face and job.h for the request objects the dialects fill
 * and encode.
 *
 * Layering inside router/api: api_error.c and api_fields.c use nothing above
 * them; job.c and job_run.c run requests and call a dialect only through its
 * table; the dialects use job.h; router.c (the endpoints) picks the dialect
 * of each route. */
#ifndef SL_API_H
#define SL_API_H

#include <jansson.h>

#include "http.h"

typedef struct sl_job sl_job;
typedef struct sl_seq sl_seq;
typedef struct sl_api_dialect sl_api_dialect;
typedef struct sl_job_params sl_job_params;

typedef enum sl_api_kind {
    SL_API_CHAT,
    SL_API_COMPLETIONS,
    SL_API_MESSAGES,
} sl_api_kind;

/* Every error a request can end with. sl_api_status_info() maps each to its
 * HTTP code and to the error type each dialect names it by: the one table
 * every error path goes through. */
typedef enum sl_api_status {
    SL_API_STATUS_INVALID,      /* 400: the request is malformed or out of range */
    SL_API_STATUS_UNAUTHORIZED, /* 401: missing or wrong API key */
    SL_API_STATUS_NOT_FOUND,    /* 404: no such route or model */
    SL_API_STATUS_METHOD,       /* 405: the route takes another method */
    SL_API_STATUS_CLIENT_GONE,  /* 499: the client closed or stopped reading */
    SL_API_STATUS_SERVER,       /* 500: out of memory */
    SL_API_STATUS_WORKER_LOST,  /* 502: a worker failed the generation */
    SL_API_STATUS_UNAVAILABLE,  /* 503: no worker, or shutting down */
    SL_API_STATUS_COUNT
} sl_api_status;

typedef struct sl_api_status_info {
    int http;
    const char *openai_type, *anthropic_type;
} sl_api_status_info;

const sl_api_status_info *sl_api_status_get(sl_api_status st);

/* A request error on its way to the client. status and type are st's HTTP
 * code and OpenAI error type. */
typedef struct sl_api_err {
    sl_api_status st;
    int status;
    const char *type;
    char msg[512];
} sl_api_err;

/* Fills err; returns -1 so a decoder can `return sl_api_fail(...)`. */
int sl_api_fail(sl_api_err *err, sl_api_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Completes r with st's HTTP code and an error body in dialect d's shape:
 * only before any header of r went out. */
void sl_api_respond_error(sl_http_req *r, const sl_api_dialect *d, sl_api_status st,
                          const char *msg);

/* One API dialect (OpenAI chat, OpenAI completions, Anthropic messages):
 * how its bodies are decoded and its responses and errors shaped. The job
 * lifecycle (job.c, job_run.c) calls only through this table. Streaming
 * hooks write SSE through sl_job_sse(); the final hook builds the whole body. */
struct sl_api_dialect {
    const char *id_prefix; /* response ids: "chatcmpl-", "cmpl-", "msg_" */
    int (*decode)(sl_job *j, sl_api_err *err); /* fills j->p and the prompts */
    void (*content)(sl_seq *s, const char *text, size_t len);
    void (*reasoning)(sl_seq *s, const char *text, size_t len);
    void (*tool_start)(sl_seq *s, int index, const char *id, const char *name);
    void (*tool_args)(sl_seq *s, int index, const char *text, size_t len);
    /* Optional: state of one choice kept by the dialect in s->dialect_state,
     * set up before the choice runs (-1: out of memory) and released with it. */
    int (*seq_init)(sl_seq *s);
    void (*seq_fini)(sl_seq *s);
    void (*seq_done)(sl_seq *s);  /* streaming: the choice's finish chunk */
    void (*stream_end)(sl_job *j); /* streaming: usage, terminator */
    json_t *(*final)(sl_job *j);   /* non-streaming body (new reference) */
    /* streaming error after headers went out */
    void (*stream_error)(sl_job *j, const char *msg);
    /* the error body before headers went out (new reference) */
    json_t *(*error_body)(sl_api_status st, const char *msg);
};

/* Shared field readers (api_fields.c): set err and return -1 on a bad value. */
int sl_api_get_bool(const json_t *o, const char *k, int *out, sl_api_err *err);
int sl_api_get_int(const json_t *o, const char *k, long lo, long hi, int *out, sl_api_err *err);
int sl_api_get_num(const json_t *o, const char *k, double lo, double hi, float *out,
                   sl_api_err *err);
int sl_api_get_stops(const json_t *o, const char *k, sl_job_params *p, sl_api_err *err);
/* 400 naming field k when array a holds more than max entries. */
int sl_api_check_count(const json_t *a, const char *k, size_t max, sl_api_err *err);

extern const sl_api_dialect sl_openai_chat, sl_openai_completions, sl_anthropic_messages,
    sl_openai_responses;

#endif

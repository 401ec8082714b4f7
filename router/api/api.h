/* api: the router's request objects, shared by router.c (life cycle),
 * api_openai.c and api_anthropic.c (decoding bodies, encoding responses).
 * Internal to the router; see router.h for the public face.
 *
 * A job is one HTTP generation request; it owns one seq per choice (n per
 * prompt). Completion discipline: a job ends exactly once, in
 * sl_job_finish(), which completes its HTTP request and frees it. */
#ifndef SL_API_H
#define SL_API_H

#include <jansson.h>
#include <stdint.h>

#include "http.h"
#include "metrics.h"
#include "router.h"
#include "sl_buf.h"
#include "sluice.pb-c.h"
#include "text.h"
#include "wire.h"

typedef struct sl_router sl_router;
typedef struct sl_job sl_job;
typedef struct sl_seq sl_seq;
typedef struct sl_api_dialect sl_api_dialect;

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

#define SL_JOB_MAX_STOPS 16
/* Held-back text is rescanned for every stop string on each chunk: longer
 * strings would make a request's cost quadratic in them. */
#define SL_JOB_MAX_STOP_BYTES 1024
/* A worker takes SL_WIRE_MAX_STOP_IDS stop ids, the model's eos ids
 * included: the client's share is what the eos ids leave. */
#define SL_JOB_MAX_EOS_IDS 16
#define SL_JOB_MAX_STOP_IDS (SL_WIRE_MAX_STOP_IDS - SL_JOB_MAX_EOS_IDS)
/* Counts a client controls beyond the body size: each message and tool is
 * rendered and scanned, so their number is bounded on its own. */
#define SL_JOB_MAX_MESSAGES 4096
#define SL_JOB_MAX_TOOLS 512

/* One tool call of a choice, accumulated for non-streaming responses. */
typedef struct sl_seq_tool {
    char *id, *name;
    sl_buf args;
} sl_seq_tool;

struct sl_seq {
    sl_job *job;
    int index;  /* choice index in the response */
    int prompt; /* index into job->ids */
    uint64_t rid;
    int worker;
    int running; /* submitted and not finished */
    void *detok, *parser;
    sl_buf text; /* detokenized output not yet released past the stop matcher */
    /* what was released (non-streaming responses and usage) */
    sl_buf content, reasoning;
    sl_seq_tool *tools;
    int ntools;
    const char *finish;  /* "stop", "length", "tool_calls", NULL while running */
    int stop_index;      /* stop string that ended it, or -1 */
    int completion_tokens, cached_tokens;
    json_t *logprobs;     /* array of per-token entries (OpenAI chat shape) */
    json_t *logprobs_new; /* entries not yet streamed */
    sl_tok_ids out_ids;  /* recorded in the route tree at the end; sent again on migration */
    int max_new;          /* output budget of the whole choice (tokens) */
    int migrations;       /* times moved to another worker after its worker died */
    double t_last_ms;
    /* streaming state kept by the encoders */
    int sent_role;
    int block_open; /* Anthropic: index of the open content block, -1 none */
    int block_kind; /* 0 text, 1 thinking, 2 tool_use */
    int nblocks;
};

typedef struct sl_job_params {
    int stream, include_usage;
    int n;
    int max_tokens; /* -1: up to the context length */
    Sluice__SamplingParams sampling;
    int32_t stop_ids[SL_JOB_MAX_STOP_IDS];
    int n_stop_ids;
    char *stops[SL_JOB_MAX_STOPS];
    int n_stops;
    int logprobs;     /* chat: bool; completions: number of alternatives + 1 */
    int separate_reasoning;
} sl_job_params;

struct sl_job {
    sl_router *rt;
    sl_http_req *http;
    sl_job *prev, *next; /* router's list (SSE keep-alive, shutdown) */
    sl_api_kind kind;
    const char *route; /* metrics label */
    json_t *body;      /* the request (owned) */
    sl_job_params p;
    /* prompts: text (to render/tokenize) or ids given directly */
    char **texts;
    int *is_ids; /* per prompt: ids came in the body */
    sl_tok_ids *ids;
    int nprompts;
    sl_buf chat_prompt; /* rendered chat prompt (parsers need it) */
    sl_seq *seqs;
    int nseqs, nrunning;
    char id[64];
    long created;
    const char *model;
    int headers_sent;
    int encoding; /* tokenization runs on the pool */
    int aborted;  /* client went away */
    int failed;   /* an error was already sent */
    double t_arrival_ms, t_first_ms, t_last_write_ms;
    uv_work_t work;
    sl_err work_err;
    const sl_api_dialect *dialect;
};

/* One API dialect (OpenAI chat, OpenAI completions, Anthropic messages):
 * how its bodies are decoded and its responses and errors shaped. The job
 * lifecycle (router.c) calls only through this table. Streaming hooks write
 * SSE through sl_job_sse(); the final hook builds the whole body. */
struct sl_api_dialect {
    const char *id_prefix; /* response ids: "chatcmpl-", "cmpl-", "msg_" */
    int (*decode)(sl_job *j, sl_api_err *err); /* fills j->p and the prompts */
    void (*content)(sl_seq *s, const char *text, size_t len);
    void (*reasoning)(sl_seq *s, const char *text, size_t len);
    void (*tool_start)(sl_seq *s, int index, const char *id, const char *name);
    void (*tool_args)(sl_seq *s, int index, const char *text, size_t len);
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

extern const sl_api_dialect sl_openai_chat, sl_openai_completions, sl_anthropic_messages;
/* The dialect of a generation route's kind. */
const sl_api_dialect *sl_api_dialect_of(sl_api_kind kind);

/* ---- helpers from router.c ---- */
/* Decodes and checks body (a parsed JSON object, owned by the job from here
 * on) for route the way the router does before tokenizing, with cfg's
 * defaults and limits, into a job that belongs to no router: for tests and
 * fuzzing. NULL with err set (4xx, or 500 out of memory) when it is refused. */
sl_job *sl_api_decode(const sl_router_config *cfg, const char *route, sl_api_kind kind,
                      json_t *body, sl_api_err *err);
void sl_api_job_free(sl_job *j);
/* Allocates n empty prompts (texts, is_ids, ids) for a decoder to fill. */
int sl_job_prompts(sl_job *j, int n, sl_api_err *err);
void sl_job_sse(sl_job *j, const char *event, json_t *data); /* steals data */
void sl_job_sse_raw(sl_job *j, const char *text);
/* Usage totals over all choices. */
void sl_job_usage(const sl_job *j, int *prompt, int *completion, int *cached);
/* Token text for logprobs (decoded single id). Caller frees. */
char *sl_job_token_text(sl_job *j, int32_t id);

#endif

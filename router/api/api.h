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

typedef enum sl_api_kind {
    SL_API_CHAT,
    SL_API_COMPLETIONS,
    SL_API_MESSAGES,
} sl_api_kind;

/* A request error on its way to the client (status + OpenAI error type). */
typedef struct sl_api_err {
    int status;
    const char *type; /* "invalid_request_error", "authentication_error", ... */
    char msg[512];
} sl_api_err;

int sl_api_fail(sl_api_err *err, int status, const char *type, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

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
    const struct sl_api_enc *enc;
};

/* How one API shapes its responses. Streaming hooks write SSE through
 * sl_job_sse(); the final hook builds the whole body. */
typedef struct sl_api_enc {
    void (*content)(sl_seq *s, const char *text, size_t len);
    void (*reasoning)(sl_seq *s, const char *text, size_t len);
    void (*tool_start)(sl_seq *s, int index, const char *id, const char *name);
    void (*tool_args)(sl_seq *s, int index, const char *text, size_t len);
    void (*seq_done)(sl_seq *s);  /* streaming: the choice's finish chunk */
    void (*stream_end)(sl_job *j); /* streaming: usage, terminator */
    json_t *(*final)(sl_job *j);   /* non-streaming body (new reference) */
    /* streaming error after headers went out */
    void (*stream_error)(sl_job *j, const char *msg);
} sl_api_enc;

/* ---- decoding (api_openai.c, api_anthropic.c): fill j->p and prompts ---- */
int sl_openai_decode_chat(sl_job *j, sl_api_err *err);
int sl_openai_decode_completions(sl_job *j, sl_api_err *err);
int sl_anthropic_decode_messages(sl_job *j, sl_api_err *err);
/* Shared field readers: set err and return -1 on a bad value. */
int sl_api_get_bool(const json_t *o, const char *k, int *out, sl_api_err *err);
int sl_api_get_int(const json_t *o, const char *k, long lo, long hi, int *out, sl_api_err *err);
int sl_api_get_num(const json_t *o, const char *k, double lo, double hi, float *out,
                   sl_api_err *err);
int sl_api_get_stops(const json_t *o, const char *k, sl_job_params *p, sl_api_err *err);
/* 400 naming field k when array a holds more than max entries. */
int sl_api_check_count(const json_t *a, const char *k, size_t max, sl_api_err *err);

extern const sl_api_enc sl_openai_chat_enc, sl_openai_completions_enc, sl_anthropic_enc;

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

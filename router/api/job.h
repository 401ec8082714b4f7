/* job: one HTTP generation request on its way through the router, and the
 * helpers the dialects use to fill and answer it. Internal to router/api.
 *
 *   decode (sl_job_decode, the route's dialect) ─▶ start (sl_job_start):
 *   render + tokenize (inline when short, libuv pool when long) ─▶ route
 *   ─▶ one GenerateRequest per choice ─▶ token chunks ─▶ complete
 *        └──────────────┴──────────────┴────────────┴─▶ sl_job_fail / client abort
 *
 * A job owns one seq per choice (n per prompt). Completion discipline: a
 * started job ends exactly once, in sl_job_complete() or sl_job_fail(),
 * which complete its HTTP request and free it. job.c holds the life cycle
 * and the dialects' helpers, job_run.c what runs between start and the end.
 *
 * Threads: all functions on the router's loop thread. */
#ifndef SL_JOB_H
#define SL_JOB_H

#include <stdint.h>
#include <uv.h>

#include "api.h"
#include "cluster.h"
#include "router.h"
#include "sl_buf.h"
#include "sluice.pb-c.h"
#include "text.h"
#include "wire.h"

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
    struct sl_pd_pair *pd; /* disaggregation: its prefill companion (job_pd.c), or NULL */
    double t_last_ms;
    /* streaming state kept by the encoders */
    int sent_role;
    void *dialect_state; /* the dialect's own (sl_api_dialect.seq_init) */
};

/* What constrains a request's output (job_constrain.c). */
typedef enum sl_cons_kind {
    SL_CONS_KIND_NONE,
    SL_CONS_KIND_JSON_OBJECT, /* any JSON object */
    SL_CONS_KIND_JSON_SCHEMA, /* schema */
    SL_CONS_KIND_REGEX,       /* text */
    SL_CONS_KIND_EBNF,        /* text: a GBNF grammar as given */
    SL_CONS_KIND_TOOLS,       /* tool calls in the tool parser's format: tool, or any */
} sl_cons_kind;

typedef struct sl_job_cons {
    sl_cons_kind kind;
    const char *field; /* the request field that asked for it (static), for errors */
    json_t *schema;    /* owned */
    char *text;        /* owned */
    char *tool;        /* owned; NULL: any of the tools */
} sl_job_cons;

struct sl_job_params {
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
    int split_special_tokens; /* the client's text is encoded with no control tokens */
    sl_job_cons cons;
    int parallel_tool_calls; /* 0: at most one tool call per choice */
};

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
    sl_buf grammar;     /* GBNF of p.cons (empty: unconstrained) */
    int32_t answer_start; /* the grammar starts after this id (end of thinking), or -1 */
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

/* A new job for route (its kind, its dialect d), with cfg's defaults and
 * limits, body owned by it from here on, decoded and checked the way the
 * router does before tokenizing. The job belongs to no router until
 * sl_job_start (tests and fuzzers decode only). NULL with err set (4xx, or
 * 500 out of memory) when it is refused; body is then released. */
sl_job *sl_job_decode(const sl_router_config *cfg, const char *route, sl_api_kind kind,
                      const sl_api_dialect *d, json_t *body, sl_api_err *err);
/* Frees j and what it owns, unlinking it from its router's list when it has
 * one; does not complete its HTTP request. NULL is ignored. */
void sl_job_free(sl_job *j);

/* Hands decoded j to rt to answer r: j joins rt's list, is tokenized and
 * dispatched; it ends in sl_job_complete or sl_job_fail (job_run.c). */
void sl_job_start(sl_job *j, sl_router *rt, sl_http_req *r);
/* Ends j with an error: a JSON error before any header went out, an
 * in-stream error event after; frees j. */
void sl_job_fail(sl_job *j, sl_api_status st, const char *msg);
/* Submits choice s to worker (job_run.c); with allow_pd and --pd-disaggregation
 * through a prefill companion (job_pd.c). */
sl_status sl_job_seq_submit(sl_seq *s, int worker, int allow_pd, sl_err *e);

/* ---- constrained decoding (job_constrain.c, docs/structured-outputs.md) ---- */
/* Records that field asks for kind (value: the schema for JSON_SCHEMA, a
 * string for REGEX/EBNF, the function name or NULL for TOOLS). A 400 when
 * another field already constrains the request, or value has the wrong
 * type. */
int sl_job_constrain(sl_job *j, sl_cons_kind kind, const char *field, const json_t *value,
                     sl_api_err *err);
/* tool_choice naming one function: constrains j to calls of it when name
 * (a JSON string) is among tools (chat tools: {"function": {"name"}}), else
 * a 400. */
int sl_job_constrain_tool(sl_job *j, const json_t *tools, const json_t *name, sl_api_err *err);
/* Turns p.cons into j->grammar and checks it compiles: a 400 naming what
 * cannot be enforced. Runs at the end of sl_job_decode. */
int sl_job_constraint_build(sl_job *j, const sl_router_config *cfg, sl_api_err *err);
/* Frees p.cons. */
void sl_job_cons_free(sl_job_cons *c);

/* ---- prefill/decode disaggregation (job_pd.c, docs/disaggregation.md) ---- */
typedef struct sl_pd_pair sl_pd_pair;
/* Registers the KvReady relay on the router's cluster. */
void sl_job_pd_init(sl_router *rt);
/* 1 when worker may take choices: a decode worker in PD mode, any otherwise. */
int sl_job_pd_decode_ok(sl_router *rt, int worker);
/* Sends g for s to decode worker dworker and to a prefill worker chosen by
 * prefix affinity (g->pd is set and reset here); on_chunk gets the decode
 * side's chunks like a unified submission. Without a usable prefill worker
 * the decode worker runs it unified. s->rid, s->pd are set. */
sl_status sl_job_pd_submit(sl_seq *s, int dworker, Sluice__GenerateRequest *g,
                           sl_cluster_chunk_cb on_chunk, sl_err *e);
/* The decode side of s sent ch (call before handling it). */
void sl_job_pd_seq_chunk(sl_seq *s, const Sluice__TokenChunk *ch);
/* The router stopped the decode side of s (abort): the companion goes too. */
void sl_job_pd_seq_stop(sl_seq *s);
/* Frees every pair (router shutdown: the cluster is closed, no callbacks come). */
void sl_job_pd_free_all(sl_router *rt);
/* Appends the PD gauges and counters to a /metrics body. */
void sl_job_pd_metrics(sl_router *rt, sl_buf *o);
/* Ends j with its dialect's final body or stream end; frees j. */
void sl_job_complete(sl_job *j);
/* Asks the workers to stop every choice of j still running. */
void sl_job_abort_running(sl_job *j);
/* The context length requests get: the configured one, else the smallest
 * an alive worker reports (0: none known). */
int sl_job_context_length(const sl_router *rt);

/* ---- for the dialects ---- */
/* Allocates n empty prompts (texts, is_ids, ids) for a decoder to fill. */
int sl_job_prompts(sl_job *j, int n, sl_api_err *err);
void sl_job_sse(sl_job *j, const char *event, json_t *data); /* steals data */
void sl_job_sse_raw(sl_job *j, const char *text);
/* Usage totals: each prompt and its cached share counted once (OpenAI
 * counts n choices of one prompt as one prompt), completions summed. */
void sl_job_usage(const sl_job *j, int *prompt, int *completion, int *cached);

#endif

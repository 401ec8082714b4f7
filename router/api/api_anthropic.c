/* Anthropic Messages API (POST /v1/messages), as Claude Code uses it through
 * ANTHROPIC_BASE_URL. The body is translated into a chat-completions body
 * (system + messages + tools), so the same template, tokenizer and parsers
 * serve it; the output is encoded as Anthropic content blocks:
 *
 *   reasoning -> "thinking" block, content -> "text" block,
 *   each tool call -> "tool_use" block (input streamed as input_json_delta).
 *
 * Streaming events: message_start, content_block_start/delta/stop,
 * ping (right after message_start, as Anthropic sends it), message_delta
 * (stop_reason, usage), message_stop. */
#include <stdlib.h>
#include <string.h>

#include "job.h"
#include "sl_log.h"

/* What a text-only model is shown in place of an image a tool returned
 * (Claude Code's screenshot and Read tools return images). */
#define AN_IMAGE_PLACEHOLDER "[image omitted: this model reads text only]"

/* Text of a string or of an array of {"type": "text", "text"} blocks; with
 * images_ok (a tool_result's content), image and document blocks become
 * AN_IMAGE_PLACEHOLDER instead of failing the request. */
static int blocks_text(json_t *c, const char *where, int images_ok, sl_buf *out, sl_api_err *err)
{
    if (json_is_string(c)) return sl_buf_puts(out, json_string_value(c)) ? -1 : 0;
    if (!json_is_array(c))
        return sl_api_fail(err, SL_API_STATUS_INVALID, "%s: expected a string or an array of content blocks", where);
    size_t i;
    json_t *b;
    json_array_foreach(c, i, b)
    {
        const char *ty = json_string_value(json_object_get(b, "type"));
        if (images_ok && ty && (!strcmp(ty, "image") || !strcmp(ty, "document"))) {
            if (out->len) sl_buf_puts(out, "\n");
            sl_buf_puts(out, AN_IMAGE_PLACEHOLDER);
            continue;
        }
        if (!ty || strcmp(ty, "text") || !json_is_string(json_object_get(b, "text")))
            return sl_api_fail(err, SL_API_STATUS_INVALID, "%s[%zu]: expected a text block", where, i);
        if (out->len) sl_buf_puts(out, "\n");
        sl_buf_puts(out, json_string_value(json_object_get(b, "text")));
    }
    return 0;
}

/* One Anthropic message -> one or more chat messages appended to out. */
static int convert_message(json_t *m, size_t idx, json_t *out, sl_api_err *err)
{
    const char *role = json_string_value(json_object_get(m, "role"));
    if (!role || (strcmp(role, "user") && strcmp(role, "assistant")))
        return sl_api_fail(err, SL_API_STATUS_INVALID, "messages[%zu].role: expected \"user\" or \"assistant\"", idx);
    json_t *c = json_object_get(m, "content");
    if (json_is_string(c)) {
        json_array_append_new(out, json_pack("{s:s,s:O}", "role", role, "content", c));
        return 0;
    }
    if (!json_is_array(c))
        return sl_api_fail(err, SL_API_STATUS_INVALID, "messages[%zu].content: expected a string or an array of blocks", idx);
    sl_buf text = {0}, thinking = {0};
    json_t *calls = json_array();
    size_t i;
    json_t *b;
    int rc = 0;
    json_array_foreach(c, i, b)
    {
        const char *ty = json_string_value(json_object_get(b, "type"));
        if (!ty) {
            rc = sl_api_fail(err, SL_API_STATUS_INVALID, "messages[%zu].content[%zu].type: expected a string", idx, i);
            break;
        }
        if (!strcmp(ty, "text")) {
            const char *t = json_string_value(json_object_get(b, "text"));
            if (!t) {
                rc = sl_api_fail(err, SL_API_STATUS_INVALID, "messages[%zu].content[%zu].text: expected a string", idx, i);
                break;
            }
            if (text.len) sl_buf_puts(&text, "\n");
            sl_buf_puts(&text, t);
        } else if (!strcmp(ty, "thinking")) {
            const char *t = json_string_value(json_object_get(b, "thinking"));
            if (t) sl_buf_puts(&thinking, t);
        } else if (!strcmp(ty, "redacted_thinking")) {
            continue;
        } else if (!strcmp(ty, "tool_use")) {
            const char *id = json_string_value(json_object_get(b, "id"));
            const char *name = json_string_value(json_object_get(b, "name"));
            json_t *input = json_object_get(b, "input");
            if (!id || !name) {
                rc = sl_api_fail(err, SL_API_STATUS_INVALID, "messages[%zu].content[%zu]: tool_use needs id and name", idx, i);
                break;
            }
            char *args = input ? json_dumps(input, JSON_COMPACT) : NULL; /* NULL: "{}" */
            json_array_append_new(calls, json_pack("{s:s,s:s,s:{s:s,s:s}}", "id", id, "type",
                                                   "function", "function", "name", name,
                                                   "arguments", args ? args : "{}"));
            free(args);
        } else if (!strcmp(ty, "tool_result")) {
            /* Tool results become tool messages, in order. */
            const char *id = json_string_value(json_object_get(b, "tool_use_id"));
            json_t *rc_content = json_object_get(b, "content");
            sl_buf r = {0};
            char where[96];
            snprintf(where, sizeof where, "messages[%zu].content[%zu].content", idx, i);
            if (!id || (rc_content && blocks_text(rc_content, where, 1, &r, err))) {
                sl_buf_free(&r);
                rc = id ? -1
                        : sl_api_fail(err, SL_API_STATUS_INVALID, "messages[%zu].content[%zu].tool_use_id: expected a string",
                                      idx, i);
                break;
            }
            json_array_append_new(out, json_pack("{s:s,s:s,s:s}", "role", "tool", "tool_call_id",
                                                 id, "content", r.data ? r.data : ""));
            sl_buf_free(&r);
        } else {
            rc = sl_api_fail(err, SL_API_STATUS_INVALID, "messages[%zu].content[%zu]: %s blocks are not supported", idx, i, ty);
            break;
        }
    }
    if (!rc && (text.len || json_array_size(calls) || thinking.len)) {
        json_t *msg = json_pack("{s:s,s:s}", "role", role, "content", text.data ? text.data : "");
        if (json_array_size(calls)) json_object_set(msg, "tool_calls", calls);
        if (thinking.len) json_object_set_new(msg, "reasoning_content", json_string(thinking.data));
        json_array_append_new(out, msg);
    }
    json_decref(calls);
    sl_buf_free(&text);
    sl_buf_free(&thinking);
    return rc;
}


/* output_format {"type": "json_schema", "schema"} (Anthropic's structured
 * outputs): the text answer validates against schema. */
static int decode_output_format(sl_job *j, const json_t *of, sl_api_err *err)
{
    if (!of || json_is_null(of)) return 0;
    const char *ty = json_string_value(json_object_get(of, "type"));
    if (!ty || strcmp(ty, "json_schema"))
        return sl_api_fail(err, SL_API_STATUS_INVALID, "output_format: expected {\"type\": \"json_schema\", "
                           "\"schema\": {...}}");
    return sl_job_constrain(j, SL_CONS_KIND_JSON_SCHEMA, "output_format.schema",
                            json_object_get(of, "schema"), err);
}

/* tool_choice {"type": "auto" | "any" | "tool" (name) | "none"} and
 * disable_parallel_tool_use; any and tool are enforced by the tool-call
 * grammar (job_constrain.c). tools: the chat tools the request became. */
static int decode_tool_choice(sl_job *j, const json_t *tc, const json_t *tools, sl_api_err *err)
{
    if (!tc || json_is_null(tc)) return 0;
    const char *ty = json_string_value(json_object_get(tc, "type"));
    if (!json_is_object(tc) || !ty)
        return sl_api_fail(err, SL_API_STATUS_INVALID, "tool_choice: expected {\"type\": \"auto\" | \"any\" | "
                           "\"tool\" | \"none\"}");
    int no_parallel = 0;
    if (sl_api_get_bool(tc, "disable_parallel_tool_use", &no_parallel, err)) return -1;
    j->p.parallel_tool_calls = !no_parallel;
    if (!strcmp(ty, "auto") || !strcmp(ty, "none")) return 0;
    size_t ntools = json_is_array(tools) ? json_array_size(tools) : 0;
    if (strcmp(ty, "any") && strcmp(ty, "tool"))
        return sl_api_fail(err, SL_API_STATUS_INVALID, "tool_choice.type: expected \"auto\", \"any\", \"tool\" or "
                           "\"none\"");
    if (!ntools) return sl_api_fail(err, SL_API_STATUS_INVALID, "tool_choice: \"%s\" needs tools", ty);
    if (!strcmp(ty, "any")) return sl_job_constrain(j, SL_CONS_KIND_TOOLS, "tool_choice", NULL, err);
    json_t *name = json_object_get(tc, "name");
    if (!json_is_string(name))
        return sl_api_fail(err, SL_API_STATUS_INVALID, "tool_choice.name: expected a string");
    return sl_job_constrain_tool(j, tools, name, err);
}

static int an_decode(sl_job *j, sl_api_err *err)
{
    json_t *b = j->body;
    sl_job_params *p = &j->p;
    json_t *model = json_object_get(b, "model");
    if (!json_is_string(model))
        return sl_api_fail(err, SL_API_STATUS_INVALID, "model: expected a string");
    /* Claude Code asks for its own model names: any name maps to the served model. */
    json_t *msgs = json_object_get(b, "messages");
    if (!json_is_array(msgs) || !json_array_size(msgs))
        return sl_api_fail(err, SL_API_STATUS_INVALID, "messages: expected a non-empty array");
    if (sl_api_check_count(msgs, "messages", SL_JOB_MAX_MESSAGES, err) ||
        sl_api_check_count(json_object_get(b, "tools"), "tools", SL_JOB_MAX_TOOLS, err))
        return -1;
    p->max_tokens = 0;
    Sluice__SamplingParams *s = &p->sampling;
    if (sl_api_get_int(b, "max_tokens", 1, 1 << 30, &p->max_tokens, err) ||
        sl_api_get_bool(b, "stream", &p->stream, err) ||
        sl_api_get_num(b, "temperature", 0, 1, &s->temperature, err) ||
        sl_api_get_num(b, "top_p", 1e-6, 1, &s->top_p, err) ||
        sl_api_get_int(b, "top_k", -1, 1 << 20, &s->top_k, err) ||
        sl_api_get_stops(b, "stop_sequences", p, err))
        return -1;
    if (!p->max_tokens && strcmp(j->route, "/v1/messages/count_tokens"))
        return sl_api_fail(err, SL_API_STATUS_INVALID, "max_tokens: required");
    json_t *chat = json_object();
    json_t *out = json_array();
    json_object_set_new(chat, "messages", out);
    json_t *sys = json_object_get(b, "system");
    if (sys && !json_is_null(sys)) {
        sl_buf t = {0};
        if (blocks_text(sys, "system", 0, &t, err)) {
            sl_buf_free(&t);
            json_decref(chat);
            return -1;
        }
        json_array_append_new(out, json_pack("{s:s,s:s}", "role", "system", "content",
                                             t.data ? t.data : ""));
        sl_buf_free(&t);
    }
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m) if (convert_message(m, i, out, err))
    {
        json_decref(chat);
        return -1;
    }
    json_t *tools = json_object_get(b, "tools");
    json_t *tc = json_object_get(b, "tool_choice");
    const char *tc_type = json_string_value(json_object_get(tc, "type"));
    if (json_is_array(tools) && json_array_size(tools) && !(tc_type && !strcmp(tc_type, "none"))) {
        json_t *ct = json_array();
        json_array_foreach(tools, i, m)
        {
            const char *name = json_string_value(json_object_get(m, "name"));
            /* Server tools (web_search_20250305, ...) run on Anthropic's side:
             * this model cannot call them, so they are left out of the prompt
             * (Claude Code sends them and would fail on a 400). */
            const char *type = json_string_value(json_object_get(m, "type"));
            if (type && strcmp(type, "custom") && strcmp(type, "function")) {
                SL_LOGW("anthropic", "tools[%zu] (%s, type %s): server tools are not supported; "
                        "left out of the prompt", i, name ? name : "?", type);
                continue;
            }
            if (!name) {
                json_decref(ct);
                json_decref(chat);
                return sl_api_fail(err, SL_API_STATUS_INVALID, "tools[%zu].name: expected a string", i);
            }
            json_t *fn = json_pack("{s:s}", "name", name);
            json_t *d = json_object_get(m, "description");
            if (json_is_string(d)) json_object_set(fn, "description", d);
            json_t *schema = json_object_get(m, "input_schema");
            json_object_set_new(fn, "parameters",
                                json_is_object(schema) ? json_incref(schema) : json_object());
            json_array_append_new(ct, json_pack("{s:s,s:o}", "type", "function", "function", fn));
        }
        if (json_array_size(ct))
            json_object_set_new(chat, "tools", ct);
        else
            json_decref(ct);
    }
    if (decode_tool_choice(j, tc, json_object_get(chat, "tools"), err) ||
        decode_output_format(j, json_object_get(b, "output_format"), err)) {
        json_decref(chat);
        return -1;
    }
    json_t *thinking = json_object_get(b, "thinking");
    const char *tt = json_string_value(json_object_get(thinking, "type"));
    if (tt)
        json_object_set_new(chat, "chat_template_kwargs",
                            json_pack("{s:b}", "enable_thinking", !strcmp(tt, "enabled")));
    json_decref(j->body);
    j->body = chat;
    return sl_job_prompts(j, 1, err);
}

/* ------------------------------------------------------------ encoder */

static const char *stop_reason(const sl_seq *s)
{
    if (!strcmp(s->finish, "length")) return "max_tokens";
    if (!strcmp(s->finish, "tool_calls")) return "tool_use";
    if (s->stop_index >= 0) return "stop_sequence";
    return "end_turn";
}

static json_t *usage(const sl_job *j, int with_input)
{
    int p, c, k;
    sl_job_usage(j, &p, &c, &k);
    if (!with_input) return json_pack("{s:i}", "output_tokens", c);
    return json_pack("{s:i,s:i,s:i,s:i}", "input_tokens", p - k, "output_tokens", c,
                     "cache_read_input_tokens", k, "cache_creation_input_tokens", 0);
}

static void ensure_started(sl_seq *s)
{
    sl_job *j = s->job;
    if (s->sent_role) return;
    s->sent_role = 1;
    int p = (int)j->ids[0].n;
    json_t *msg = json_pack("{s:s,s:s,s:s,s:s,s:[],s:n,s:n,s:{s:i,s:i}}", "id", j->id, "type",
                            "message", "role", "assistant", "model", j->model, "content",
                            "stop_reason", "stop_sequence", "usage", "input_tokens", p,
                            "output_tokens", 0);
    sl_job_sse(j, "message_start", json_pack("{s:s,s:o}", "type", "message_start", "message", msg));
    sl_job_sse(j, "ping", json_pack("{s:s}", "type", "ping"));
}

/* Anthropic tool-use ids read toolu_...: the parsers' call_<hex> is renamed. */
static void tool_id(char *out, size_t size, const char *id)
{
    if (!strncmp(id, "call_", 5))
        snprintf(out, size, "toolu_%s", id + 5);
    else
        snprintf(out, size, "%s", id);
}

/* The content blocks one streamed choice has sent (sl_seq.dialect_state). */
typedef struct an_blocks {
    int open; /* index of the open content block, -1 none */
    int kind; /* of the open block: 0 text, 1 thinking, 2 tool_use */
    int n;    /* blocks started */
} an_blocks;

static int an_seq_init(sl_seq *s)
{
    an_blocks *b = malloc(sizeof *b);
    if (!b) return -1;
    *b = (an_blocks){.open = -1};
    s->dialect_state = b;
    return 0;
}

static void an_seq_fini(sl_seq *s)
{
    free(s->dialect_state);
    s->dialect_state = NULL;
}

static void close_block(sl_seq *s)
{
    an_blocks *b = s->dialect_state;
    if (b->open < 0) return;
    sl_job_sse(s->job, "content_block_stop",
               json_pack("{s:s,s:i}", "type", "content_block_stop", "index", b->open));
    b->open = -1;
}

/* Opens a block of kind (0 text, 1 thinking, 2 tool_use) unless one is open. */
static void open_block(sl_seq *s, int kind, json_t *block)
{
    an_blocks *b = s->dialect_state;
    ensure_started(s);
    if (b->open >= 0 && b->kind == kind && kind != 2) {
        json_decref(block);
        return;
    }
    close_block(s);
    b->open = b->n++;
    b->kind = kind;
    sl_job_sse(s->job, "content_block_start",
               json_pack("{s:s,s:i,s:o}", "type", "content_block_start", "index", b->open,
                         "content_block", block));
}

static void delta(sl_seq *s, json_t *d)
{
    const an_blocks *b = s->dialect_state;
    sl_job_sse(s->job, "content_block_delta",
               json_pack("{s:s,s:i,s:o}", "type", "content_block_delta", "index", b->open,
                         "delta", d));
}

static void an_content(sl_seq *s, const char *t, size_t n)
{
    open_block(s, 0, json_pack("{s:s,s:s}", "type", "text", "text", ""));
    delta(s, json_pack("{s:s,s:s%}", "type", "text_delta", "text", t, n));
}

static void an_reasoning(sl_seq *s, const char *t, size_t n)
{
    open_block(s, 1, json_pack("{s:s,s:s,s:s}", "type", "thinking", "thinking", "", "signature", ""));
    delta(s, json_pack("{s:s,s:s%}", "type", "thinking_delta", "thinking", t, n));
}

static void an_tool_start(sl_seq *s, int index, const char *id, const char *name)
{
    char tid[96];
    tool_id(tid, sizeof tid, id);
    open_block(s, 2, json_pack("{s:s,s:s,s:s,s:{}}", "type", "tool_use", "id", tid, "name", name,
                               "input"));
}

static void an_tool_args(sl_seq *s, int index, const char *t, size_t n)
{
    const an_blocks *b = s->dialect_state;
    if (b->open < 0 || b->kind != 2) return;
    delta(s, json_pack("{s:s,s:s%}", "type", "input_json_delta", "partial_json", t, n));
}

static void an_seq_done(sl_seq *s)
{
    sl_job *j = s->job;
    ensure_started(s);
    close_block(s);
    json_t *d = json_pack("{s:s}", "stop_reason", stop_reason(s));
    json_object_set_new(d, "stop_sequence", s->stop_index >= 0
                                                ? json_string(j->p.stops[s->stop_index])
                                                : json_null());
    sl_job_sse(j, "message_delta",
               json_pack("{s:s,s:o,s:o}", "type", "message_delta", "delta", d, "usage",
                         usage(j, 0)));
    sl_job_sse(j, "message_stop", json_pack("{s:s}", "type", "message_stop"));
}

static void an_stream_end(sl_job *j) {}

static json_t *an_error_body(sl_api_status st, const char *msg)
{
    return json_pack("{s:s,s:{s:s,s:s}}", "type", "error", "error", "type",
                     sl_api_status_get(st)->anthropic_type, "message", msg);
}

/* Headers went out, so the status is lost: the event names a server error. */
static void an_stream_error(sl_job *j, const char *msg)
{
    sl_job_sse(j, "error", an_error_body(SL_API_STATUS_WORKER_LOST, msg));
}

static json_t *an_final(sl_job *j)
{
    sl_seq *s = &j->seqs[0];
    json_t *content = json_array();
    if (s->reasoning.len)
        json_array_append_new(content, json_pack("{s:s,s:s%,s:s}", "type", "thinking", "thinking",
                                                 s->reasoning.data, s->reasoning.len,
                                                 "signature", ""));
    if (s->content.len || !s->ntools)
        json_array_append_new(content, json_pack("{s:s,s:s%}", "type", "text", "text",
                                                 s->content.data ? s->content.data : "",
                                                 s->content.len));
    for (int k = 0; k < s->ntools; k++) {
        json_t *input = s->tools[k].args.len
                            ? json_loadb(s->tools[k].args.data, s->tools[k].args.len, 0, NULL)
                            : NULL;
        if (!json_is_object(input)) {
            json_decref(input);
            input = json_object();
        }
        char tid[96];
        tool_id(tid, sizeof tid, s->tools[k].id);
        json_array_append_new(content, json_pack("{s:s,s:s,s:s,s:o}", "type", "tool_use", "id",
                                                 tid, "name", s->tools[k].name,
                                                 "input", input));
    }
    json_t *o = json_pack("{s:s,s:s,s:s,s:s,s:o,s:s,s:o}", "id", j->id, "type", "message", "role",
                          "assistant", "model", j->model, "content", content, "stop_reason",
                          stop_reason(s), "usage", usage(j, 1));
    json_object_set_new(o, "stop_sequence", s->stop_index >= 0
                                                ? json_string(j->p.stops[s->stop_index])
                                                : json_null());
    return o;
}

const sl_api_dialect sl_anthropic_messages = {.id_prefix = "msg_",
                                              .decode = an_decode,
                                              .content = an_content,
                                              .reasoning = an_reasoning,
                                              .tool_start = an_tool_start,
                                              .tool_args = an_tool_args,
                                              .seq_init = an_seq_init,
                                              .seq_fini = an_seq_fini,
                                              .seq_done = an_seq_done,
                                              .stream_end = an_stream_end,
                                              .final = an_final,
                                              .stream_error = an_stream_error,
                                              .error_body = an_error_body};

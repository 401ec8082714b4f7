/* OpenAI Responses API (POST /v1/responses), as Codex and the newer OpenAI
 * SDK paths use it. Like api_anthropic.c, the request is translated into a
 * chat body, so the same template, tokenizer and parsers serve it:
 *
 *   instructions            -> a system message first
 *   input: "text"           -> one user message
 *   {role, content}         -> a chat message (developer -> system)
 *   function_call           -> a tool call of the assistant message it follows
 *   function_call_output    -> a tool message
 *   reasoning               -> reasoning_content of the next assistant message
 *   tools (flat)            -> chat tools {"type": "function", "function": {...}}
 *
 * The translated messages and tools replace those keys of the request body;
 * the other fields stay there and are echoed in the response object. The
 * output is encoded as Responses items, in the order the parsers produce:
 *
 *   reasoning -> "reasoning" item (reasoning_text), content -> "message" item
 *   (output_text), each tool call -> "function_call" item.
 *
 * Streaming events: response.created, response.in_progress, per item
 * output_item.added / content_part.added / *.delta / *.done /
 * content_part.done / output_item.done, then response.completed (or
 * response.incomplete when max_output_tokens cut it); every event carries a
 * sequence_number. Nothing is stored: previous_response_id is refused. */
#include <stdlib.h>
#include <string.h>

#include "job.h"

/* ---------------------------------------------------------------- decode */

static int is_set(const json_t *v) { return v && !json_is_null(v); }

/* Text of a content value: a string, or an array of text parts (input_text,
 * output_text, text, refusal) joined by "\n". where names it in errors. */
static int parts_text(const json_t *c, const char *where, sl_buf *out, sl_api_err *err)
{
    if (json_is_string(c)) return sl_buf_append(out, json_string_value(c), json_string_length(c));
    if (!json_is_array(c))
        return sl_api_fail(err, SL_API_STATUS_INVALID, "%s: expected a string or an array of content parts", where);
    size_t i;
    json_t *p;
    json_array_foreach(c, i, p)
    {
        const char *ty = json_string_value(json_object_get(p, "type"));
        const char *key = ty && !strcmp(ty, "refusal") ? "refusal" : "text";
        json_t *t = json_object_get(p, key);
        if (!ty)
            return sl_api_fail(err, SL_API_STATUS_INVALID, "%s[%zu].type: expected a string", where, i);
        if (strcmp(ty, "input_text") && strcmp(ty, "output_text") && strcmp(ty, "text") &&
            strcmp(ty, "refusal"))
            return sl_api_fail(err, SL_API_STATUS_INVALID, "%s[%zu]: %s parts are not supported (text only)", where, i, ty);
        if (!json_is_string(t))
            return sl_api_fail(err, SL_API_STATUS_INVALID, "%s[%zu].%s: expected a string", where, i, key);
        if (i && sl_buf_puts(out, "\n")) return -1;
        if (sl_buf_append(out, json_string_value(t), json_string_length(t))) return -1;
    }
    return 0;
}

/* The input items being turned into chat messages. */
typedef struct rs_conv {
    json_t *msgs;      /* chat messages (owned) */
    json_t *asst;      /* the assistant message later function_calls join, or NULL */
    sl_buf reasoning;  /* reasoning items' text, for the next assistant message */
} rs_conv;

/* Gives the pending reasoning to assistant message m when it has none. */
static void take_reasoning(rs_conv *cv, json_t *m)
{
    if (!cv->reasoning.len || json_object_get(m, "reasoning_content")) return;
    json_object_set_new(m, "reasoning_content", json_stringn(cv->reasoning.data, cv->reasoning.len));
    sl_buf_clear(&cv->reasoning);
}

static int push_text_message(rs_conv *cv, const char *role, const sl_buf *text)
{
    json_t *m = json_pack("{s:s,s:s%}", "role", role, "content", text->data ? text->data : "",
                          text->len);
    if (!m) return -1;
    if (!strcmp(role, "assistant")) {
        take_reasoning(cv, m);
        cv->asst = m;
    } else {
        cv->asst = NULL;
        sl_buf_clear(&cv->reasoning); /* reasoning belongs to the turn it precedes */
    }
    return json_array_append_new(cv->msgs, m);
}

static int convert_item(rs_conv *cv, const json_t *it, size_t i, sl_api_err *err)
{
    char where[96];
    if (!json_is_object(it))
        return sl_api_fail(err, SL_API_STATUS_INVALID, "input[%zu]: expected an object", i);
    json_t *tyv = json_object_get(it, "type");
    if (is_set(tyv) && !json_is_string(tyv))
        return sl_api_fail(err, SL_API_STATUS_INVALID, "input[%zu].type: expected a string", i);
    const char *ty = is_set(tyv) ? json_string_value(tyv) : "message";
    if (!strcmp(ty, "message")) {
        const char *role = json_string_value(json_object_get(it, "role"));
        if (!role || (strcmp(role, "user") && strcmp(role, "system") &&
                      strcmp(role, "developer") && strcmp(role, "assistant")))
            return sl_api_fail(err, SL_API_STATUS_INVALID, "input[%zu].role: expected \"user\", \"system\", \"developer\" or \"assistant\"", i);
        snprintf(where, sizeof where, "input[%zu].content", i);
        sl_buf text = {0};
        int rc = parts_text(json_object_get(it, "content"), where, &text, err);
        /* The Qwen templates know no developer role: its text is a system turn. */
        if (!rc && push_text_message(cv, strcmp(role, "developer") ? role : "system", &text))
            rc = sl_api_fail(err, SL_API_STATUS_SERVER, "out of memory");
        sl_buf_free(&text);
        return rc;
    }
    if (!strcmp(ty, "function_call")) {
        const char *call_id = json_string_value(json_object_get(it, "call_id"));
        const char *name = json_string_value(json_object_get(it, "name"));
        json_t *args = json_object_get(it, "arguments");
        if (!call_id)
            return sl_api_fail(err, SL_API_STATUS_INVALID, "input[%zu].call_id: expected a string", i);
        if (!name)
            return sl_api_fail(err, SL_API_STATUS_INVALID, "input[%zu].name: expected a string", i);
        if (!json_is_string(args))
            return sl_api_fail(err, SL_API_STATUS_INVALID, "input[%zu].arguments: expected a string of JSON", i);
        json_t *parsed = json_loadb(json_string_value(args), json_string_length(args),
                                    JSON_DECODE_ANY, NULL);
        if (!parsed)
            return sl_api_fail(err, SL_API_STATUS_INVALID, "input[%zu].arguments: not valid JSON", i);
        json_decref(parsed);
        if (!cv->asst) {
            sl_buf empty = {0};
            if (push_text_message(cv, "assistant", &empty))
                return sl_api_fail(err, SL_API_STATUS_SERVER, "out of memory");
        }
        take_reasoning(cv, cv->asst);
        json_t *calls = json_object_get(cv->asst, "tool_calls");
        if (!calls) {
            calls = json_array();
            json_object_set_new(cv->asst, "tool_calls", calls);
        }
        if (json_array_append_new(calls, json_pack("{s:s,s:s,s:{s:s,s:O}}", "id", call_id, "type",
                                                   "function", "function", "name", name,
                                                   "arguments", args)))
            return sl_api_fail(err, SL_API_STATUS_SERVER, "out of memory");
        return 0;
    }
    if (!strcmp(ty, "function_call_output")) {
        const char *call_id = json_string_value(json_object_get(it, "call_id"));
        if (!call_id)
            return sl_api_fail(err, SL_API_STATUS_INVALID, "input[%zu].call_id: expected a string", i);
        snprintf(where, sizeof where, "input[%zu].output", i);
        sl_buf out = {0};
        if (parts_text(json_object_get(it, "output"), where, &out, err)) {
            sl_buf_free(&out);
            return -1;
        }
        json_t *m = json_pack("{s:s,s:s,s:s%}", "role", "tool", "tool_call_id", call_id, "content",
                              out.data ? out.data : "", out.len);
        sl_buf_free(&out);
        cv->asst = NULL;
        if (!m || json_array_append_new(cv->msgs, m))
            return sl_api_fail(err, SL_API_STATUS_SERVER, "out of memory");
        return 0;
    }
    if (!strcmp(ty, "reasoning")) {
        /* The text a reasoning item carries (its content, else its summary);
         * encrypted_content means nothing here and is dropped. */
        json_t *parts = json_object_get(it, "content");
        if (!json_is_array(parts) || !json_array_size(parts)) parts = json_object_get(it, "summary");
        size_t k;
        json_t *p;
        json_array_foreach(parts, k, p)
        {
            const char *t = json_string_value(json_object_get(p, "text"));
            if (!t) continue;
            if (cv->reasoning.len) sl_buf_puts(&cv->reasoning, "\n");
            sl_buf_puts(&cv->reasoning, t);
        }
        return 0;
    }
    if (!strcmp(ty, "item_reference"))
        return sl_api_fail(err, SL_API_STATUS_INVALID, "input[%zu]: item_reference is not supported: this server keeps no items; send the items themselves", i);
    return sl_api_fail(err, SL_API_STATUS_INVALID, "input[%zu].type: %s items are not supported", i, ty);
}

/* instructions + input -> chat messages in j->body. */
static int decode_input(sl_job *j, sl_api_err *err)
{
    json_t *b = j->body;
    json_t *input = json_object_get(b, "input");
    json_t *ins = json_object_get(b, "instructions");
    if (!json_is_string(input) && !(json_is_array(input) && json_array_size(input)))
        return sl_api_fail(err, SL_API_STATUS_INVALID, "input: expected a string or a non-empty array of items");
    if (is_set(ins) && !json_is_string(ins))
        return sl_api_fail(err, SL_API_STATUS_INVALID, "instructions: expected a string");
    if (sl_api_check_count(input, "input", SL_JOB_MAX_MESSAGES, err)) return -1;
    rs_conv cv = {.msgs = json_array()};
    int rc = 0;
    if (is_set(ins))
        json_array_append_new(cv.msgs, json_pack("{s:s,s:O}", "role", "system", "content", ins));
    if (json_is_string(input)) {
        json_array_append_new(cv.msgs, json_pack("{s:s,s:O}", "role", "user", "content", input));
    } else {
        size_t i;
        json_t *it;
        json_array_foreach(input, i, it) if ((rc = convert_item(&cv, it, i, err))) break;
    }
    if (!rc && !json_array_size(cv.msgs))
        rc = sl_api_fail(err, SL_API_STATUS_INVALID, "input: no message, function_call or function_call_output item");
    if (!rc) json_object_set(b, "messages", cv.msgs);
    json_decref(cv.msgs);
    sl_buf_free(&cv.reasoning);
    return rc;
}

/* Flat function tools -> chat tools; tool_choice auto, none, required or a
 * named function (the last two enforced by the tool-call grammar). */
static int decode_tools(sl_job *j, sl_api_err *err)
{
    json_t *b = j->body;
    json_t *tools = json_object_get(b, "tools");
    if (is_set(tools)) {
        if (!json_is_array(tools))
            return sl_api_fail(err, SL_API_STATUS_INVALID, "tools: expected an array");
        if (sl_api_check_count(tools, "tools", SL_JOB_MAX_TOOLS, err)) return -1;
        json_t *ct = json_array();
        size_t i;
        json_t *t;
        json_array_foreach(tools, i, t)
        {
            const char *ty = json_string_value(json_object_get(t, "type"));
            const char *name = json_string_value(json_object_get(t, "name"));
            json_t *params = json_object_get(t, "parameters");
            json_t *d = json_object_get(t, "description");
            int rc = 0;
            if (!ty)
                rc = sl_api_fail(err, SL_API_STATUS_INVALID, "tools[%zu].type: expected a string", i);
            else if (strcmp(ty, "function"))
                rc = sl_api_fail(err, SL_API_STATUS_INVALID, "tools[%zu].type: %s tools are not supported (function only)", i, ty);
            else if (!name)
                rc = sl_api_fail(err, SL_API_STATUS_INVALID, "tools[%zu].name: expected a string", i);
            else if (is_set(params) && !json_is_object(params))
                rc = sl_api_fail(err, SL_API_STATUS_INVALID, "tools[%zu].parameters: expected an object", i);
            else if (is_set(d) && !json_is_string(d))
                rc = sl_api_fail(err, SL_API_STATUS_INVALID, "tools[%zu].description: expected a string", i);
            if (rc) {
                json_decref(ct);
                return -1;
            }
            json_t *fn = json_pack("{s:s}", "name", name);
            if (is_set(d)) json_object_set(fn, "description", d);
            json_object_set_new(fn, "parameters", is_set(params) ? json_incref(params) : json_object());
            json_array_append_new(ct, json_pack("{s:s,s:o}", "type", "function", "function", fn));
        }
        json_object_set_new(b, "tools", ct);
    }
    json_t *tc = json_object_get(b, "tool_choice");
    if (!is_set(tc)) return 0;
    const char *v = json_string_value(tc);
    if (v && !strcmp(v, "auto")) return 0;
    if (v && !strcmp(v, "none")) {
        /* No tool calls wanted: the tools stay out of the prompt too. */
        json_object_del(b, "tools");
        return 0;
    }
    json_t *ct = json_object_get(b, "tools");
    size_t ntools = json_is_array(ct) ? json_array_size(ct) : 0;
    if (v && !strcmp(v, "required")) {
        if (!ntools) return sl_api_fail(err, SL_API_STATUS_INVALID, "tool_choice: \"required\" needs tools");
        return sl_job_constrain(j, SL_CONS_KIND_TOOLS, "tool_choice", NULL, err);
    }
    const char *ty = json_string_value(json_object_get(tc, "type"));
    json_t *name = json_object_get(tc, "name");
    if (v || !ty || strcmp(ty, "function") || !json_is_string(name))
        return sl_api_fail(err, SL_API_STATUS_INVALID, "tool_choice: expected \"auto\", \"none\", \"required\" or "
                           "{\"type\": \"function\", \"name\": ...}");
    return sl_job_constrain_tool(j, ct, name, err);
}

static int rs_decode(sl_job *j, sl_api_err *err)
{
    json_t *b = j->body;
    sl_job_params *p = &j->p;
    json_t *model = json_object_get(b, "model");
    if (is_set(model)) {
        if (!json_is_string(model))
            return sl_api_fail(err, SL_API_STATUS_INVALID, "model: expected a string");
        if (strcmp(json_string_value(model), j->model))
            return sl_api_fail(err, SL_API_STATUS_NOT_FOUND, "The model `%s` does not exist (this server serves `%s`).",
                               json_string_value(model), j->model);
    }
    /* State kept between requests is what this server does not have. */
    if (is_set(json_object_get(b, "previous_response_id")))
        return sl_api_fail(err, SL_API_STATUS_INVALID, "previous_response_id is not supported: this server keeps no responses; send the full input");
    if (is_set(json_object_get(b, "conversation")))
        return sl_api_fail(err, SL_API_STATUS_INVALID, "conversation is not supported: this server keeps no conversations; send the full input");
    if (is_set(json_object_get(b, "prompt")))
        return sl_api_fail(err, SL_API_STATUS_INVALID, "prompt: stored prompt templates are not supported; send instructions and input");
    int background = 0, store = 0, top_logprobs = 0;
    Sluice__SamplingParams *s = &p->sampling;
    if (sl_api_get_bool(b, "stream", &p->stream, err) ||
        sl_api_get_bool(b, "store", &store, err) ||
        sl_api_get_bool(b, "background", &background, err) ||
        sl_api_get_bool(b, "parallel_tool_calls", &p->parallel_tool_calls, err) ||
        sl_api_get_int(b, "max_output_tokens", 1, 1 << 30, &p->max_tokens, err) ||
        sl_api_get_num(b, "temperature", 0, 2, &s->temperature, err) ||
        sl_api_get_num(b, "top_p", 1e-6, 1, &s->top_p, err) ||
        sl_api_get_int(b, "top_logprobs", 0, 20, &top_logprobs, err) ||
        sl_api_get_bool(b, "separate_reasoning", &p->separate_reasoning, err))
        return -1;
    if (background) return sl_api_fail(err, SL_API_STATUS_INVALID, "background: true is not supported");
    if (top_logprobs) return sl_api_fail(err, SL_API_STATUS_INVALID, "top_logprobs: not supported yet");
    static const char *const objects[] = {"metadata", "reasoning", "text", "chat_template_kwargs"};
    for (int i = 0; i < 4; i++) {
        json_t *v = json_object_get(b, objects[i]);
        if (is_set(v) && !json_is_object(v))
            return sl_api_fail(err, SL_API_STATUS_INVALID, "%s: expected an object", objects[i]);
    }
    json_t *user = json_object_get(b, "user");
    if (is_set(user) && !json_is_string(user))
        return sl_api_fail(err, SL_API_STATUS_INVALID, "user: expected a string");
    json_t *fmt = json_object_get(json_object_get(b, "text"), "format");
    if (is_set(fmt)) {
        const char *t = json_string_value(json_object_get(fmt, "type"));
        int rc = 0;
        if (t && !strcmp(t, "json_schema"))
            rc = sl_job_constrain(j, SL_CONS_KIND_JSON_SCHEMA, "text.format.schema",
                                  json_object_get(fmt, "schema"), err);
        else if (t && !strcmp(t, "json_object"))
            rc = sl_job_constrain(j, SL_CONS_KIND_JSON_OBJECT, "text.format", NULL, err);
        else if (!t || strcmp(t, "text"))
            rc = sl_api_fail(err, SL_API_STATUS_INVALID, "text.format.type: expected \"text\", \"json_object\" or "
                             "\"json_schema\"");
        if (rc) return -1;
    }
    if (decode_input(j, err) || decode_tools(j, err)) return -1;
    return sl_job_prompts(j, 1, err);
}

/* ------------------------------------------------------------- encoders */

/* Item ids share the response's random part: "msg_<hex>_<output index>". */
static void item_id(char *out, size_t n, const sl_job *j, const char *prefix, int index)
{
    snprintf(out, n, "%s%s_%d", prefix, j->id + strlen("resp_"), index);
}

static json_t *message_item(const char *id, const char *text, size_t n, const char *status)
{
    json_t *content = json_array();
    if (text)
        json_array_append_new(content, json_pack("{s:s,s:s%,s:[],s:[]}", "type", "output_text",
                                                 "text", text, n, "annotations", "logprobs"));
    return json_pack("{s:s,s:s,s:s,s:s,s:o}", "type", "message", "id", id, "role", "assistant",
                     "status", status, "content", content);
}

static json_t *reasoning_item(const char *id, const char *text, size_t n)
{
    json_t *content = json_array();
    if (text)
        json_array_append_new(content, json_pack("{s:s,s:s%}", "type", "reasoning_text", "text",
                                                 text, n));
    return json_pack("{s:s,s:s,s:[],s:o}", "type", "reasoning", "id", id, "summary", "content",
                     content);
}

static json_t *call_item(const char *id, const sl_seq_tool *t, const char *status)
{
    return json_pack("{s:s,s:s,s:s,s:s,s:s%,s:s}", "type", "function_call", "id", id, "call_id",
                     t->id, "name", t->name, "arguments", t->args.data ? t->args.data : "",
                     t->args.len, "status", status);
}

static json_t *usage_json(const sl_job *j)
{
    int p, c, k;
    sl_job_usage(j, &p, &c, &k);
    /* Reasoning tokens are not told apart from the others (0). */
    return json_pack("{s:i,s:{s:i,s:i},s:i,s:{s:i},s:i}", "input_tokens", p,
                     "input_tokens_details", "cached_tokens", k, "cache_write_tokens", 0,
                     "output_tokens", c, "output_tokens_details",
                     "reasoning_tokens", 0, "total_tokens", p + c);
}

/* The request's value of k, or dflt (stolen) when it has none. */
static json_t *echo(const sl_job *j, const char *k, json_t *dflt)
{
    json_t *v = json_object_get(j->body, k);
    if (!is_set(v)) return dflt;
    json_decref(dflt);
    return json_incref(v);
}

/* Chat tools back in the Responses' flat shape. */
static json_t *tools_flat(const sl_job *j)
{
    json_t *out = json_array();
    size_t i;
    json_t *t;
    json_array_foreach(json_object_get(j->body, "tools"), i, t)
    {
        json_t *fn = json_deep_copy(json_object_get(t, "function"));
        json_object_set_new(fn, "type", json_string("function"));
        json_object_set_new(fn, "strict", json_false());
        json_array_append_new(out, fn);
    }
    return out;
}

static const char *final_status(const sl_job *j)
{
    const sl_seq *s = j->nseqs ? &j->seqs[0] : NULL;
    return s && s->finish && !strcmp(s->finish, "length") ? "incomplete" : "completed";
}

/* The response object: status "in_progress", "completed", "incomplete" or
 * "failed"; output stolen; usage only once it is done. */
static json_t *response_obj(const sl_job *j, const char *status, json_t *output)
{
    int done = strcmp(status, "in_progress") != 0;
    json_t *o = json_pack("{s:s,s:s,s:i,s:s,s:s,s:o}", "id", j->id, "object", "response",
                          "created_at", (int)j->created, "status", status, "model", j->model,
                          "output", output);
    json_object_set_new(o, "usage", done ? usage_json(j) : json_null());
    json_object_set_new(o, "incomplete_details",
                        !strcmp(status, "incomplete")
                            ? json_pack("{s:s}", "reason", "max_output_tokens")
                            : json_null());
    json_object_set_new(o, "error", json_null());
    json_object_set_new(o, "instructions", echo(j, "instructions", json_null()));
    json_object_set_new(o, "metadata", echo(j, "metadata", json_object()));
    json_object_set_new(o, "parallel_tool_calls", echo(j, "parallel_tool_calls", json_true()));
    json_object_set_new(o, "temperature", json_real(j->p.sampling.temperature));
    json_object_set_new(o, "top_p", json_real(j->p.sampling.top_p));
    json_object_set_new(o, "tool_choice", echo(j, "tool_choice", json_string("auto")));
    json_object_set_new(o, "tools", tools_flat(j));
    json_object_set_new(o, "max_output_tokens", echo(j, "max_output_tokens", json_null()));
    json_object_set_new(o, "previous_response_id", json_null());
    json_object_set_new(o, "reasoning", echo(j, "reasoning", json_pack("{s:n,s:n}", "effort", "summary")));
    json_object_set_new(o, "store", json_false()); /* nothing is kept */
    json_object_set_new(o, "background", json_false());
    json_object_set_new(o, "text", json_pack("{s:{s:s}}", "format", "type", "text"));
    json_object_set_new(o, "truncation", json_string("disabled"));
    json_object_set_new(o, "user", echo(j, "user", json_null()));
    return o;
}

static json_t *rs_final(sl_job *j)
{
    sl_seq *s = &j->seqs[0];
    const char *status = final_status(j);
    json_t *out = json_array();
    char id[96];
    if (s->reasoning.len) {
        item_id(id, sizeof id, j, "rs_", (int)json_array_size(out));
        json_array_append_new(out, reasoning_item(id, s->reasoning.data, s->reasoning.len));
    }
    if (s->content.len || !s->ntools) {
        item_id(id, sizeof id, j, "msg_", (int)json_array_size(out));
        json_array_append_new(out, message_item(id, s->content.data ? s->content.data : "",
                                                s->content.len,
                                                strcmp(status, "incomplete") ? "completed" : "incomplete"));
    }
    for (int k = 0; k < s->ntools; k++) {
        item_id(id, sizeof id, j, "fc_", (int)json_array_size(out));
        json_array_append_new(out, call_item(id, &s->tools[k], "completed"));
    }
    return response_obj(j, status, out);
}

/* ---- streaming: the items one choice has sent (sl_seq.dialect_state) ---- */

typedef enum rs_item_kind { RS_ITEM_MESSAGE, RS_ITEM_REASONING, RS_ITEM_CALL } rs_item_kind;

typedef struct rs_stream {
    int seq;      /* next sequence_number */
    int started;  /* response.created went out */
    int open;     /* output index of the open item, -1 none */
    rs_item_kind kind;
    int tool;     /* open call: index into sl_seq.tools */
    char id[96];  /* of the open item */
    sl_buf text;  /* the open item's text so far */
    json_t *output; /* items done */
} rs_stream;

static int rs_seq_init(sl_seq *s)
{
    rs_stream *st = calloc(1, sizeof *st);
    if (!st || !(st->output = json_array())) {
        free(st);
        return -1;
    }
    st->open = -1;
    s->dialect_state = st;
    return 0;
}

static void rs_seq_fini(sl_seq *s)
{
    rs_stream *st = s->dialect_state;
    if (!st) return;
    sl_buf_free(&st->text);
    json_decref(st->output);
    free(st);
    s->dialect_state = NULL;
}

/* Sends event type with data (stolen), numbered. */
static void emit(sl_seq *s, const char *type, json_t *data)
{
    rs_stream *st = s->dialect_state;
    json_object_set_new(data, "type", json_string(type));
    json_object_set_new(data, "sequence_number", json_integer(st->seq++));
    sl_job_sse(s->job, type, data);
}

static void ensure_started(sl_seq *s)
{
    rs_stream *st = s->dialect_state;
    if (st->started) return;
    st->started = 1;
    emit(s, "response.created", json_pack("{s:o}", "response", response_obj(s->job, "in_progress", json_array())));
    emit(s, "response.in_progress", json_pack("{s:o}", "response", response_obj(s->job, "in_progress", json_array())));
}

/* The part of a message or reasoning item: {type, text} (+ annotations). */
static json_t *part(rs_item_kind kind, const char *text, size_t n)
{
    if (kind == RS_ITEM_REASONING)
        return json_pack("{s:s,s:s%}", "type", "reasoning_text", "text", text, n);
    return json_pack("{s:s,s:s%,s:[]}", "type", "output_text", "text", text, n, "annotations");
}

static void close_item(sl_seq *s, const char *status)
{
    rs_stream *st = s->dialect_state;
    if (st->open < 0) return;
    const char *t = st->text.data ? st->text.data : "";
    size_t n = st->text.len;
    json_t *item;
    if (st->kind == RS_ITEM_CALL) {
        const sl_seq_tool *tool = &s->tools[st->tool];
        emit(s, "response.function_call_arguments.done",
             json_pack("{s:s,s:i,s:s%}", "item_id", st->id, "output_index", st->open, "arguments",
                       tool->args.data ? tool->args.data : "", tool->args.len));
        item = call_item(st->id, tool, status);
    } else {
        if (st->kind == RS_ITEM_MESSAGE)
            emit(s, "response.output_text.done",
                 json_pack("{s:s,s:i,s:i,s:s%,s:[]}", "item_id", st->id, "output_index", st->open,
                           "content_index", 0, "text", t, n, "logprobs"));
        else
            emit(s, "response.reasoning_text.done",
                 json_pack("{s:s,s:i,s:i,s:s%}", "item_id", st->id, "output_index", st->open,
                           "content_index", 0, "text", t, n));
        emit(s, "response.content_part.done",
             json_pack("{s:s,s:i,s:i,s:o}", "item_id", st->id, "output_index", st->open,
                       "content_index", 0, "part", part(st->kind, t, n)));
        item = st->kind == RS_ITEM_MESSAGE ? message_item(st->id, t, n, status)
                                           : reasoning_item(st->id, t, n);
    }
    emit(s, "response.output_item.done",
         json_pack("{s:i,s:O}", "output_index", st->open, "item", item));
    json_array_append_new(st->output, item);
    st->open = -1;
    sl_buf_clear(&st->text);
}

/* Opens an item of kind unless one of it is open (calls always open anew). */
static void open_item(sl_seq *s, rs_item_kind kind, int tool)
{
    rs_stream *st = s->dialect_state;
    ensure_started(s);
    if (st->open >= 0 && st->kind == kind && kind != RS_ITEM_CALL) return;
    close_item(s, "completed");
    st->open = (int)json_array_size(st->output);
    st->kind = kind;
    st->tool = tool;
    static const char *const prefix[] = {"msg_", "rs_", "fc_"};
    item_id(st->id, sizeof st->id, s->job, prefix[kind], st->open);
    json_t *item = kind == RS_ITEM_MESSAGE   ? message_item(st->id, NULL, 0, "in_progress")
                 : kind == RS_ITEM_REASONING ? reasoning_item(st->id, NULL, 0)
                                             : call_item(st->id, &s->tools[tool], "in_progress");
    emit(s, "response.output_item.added",
         json_pack("{s:i,s:o}", "output_index", st->open, "item", item));
    if (kind != RS_ITEM_CALL)
        emit(s, "response.content_part.added",
             json_pack("{s:s,s:i,s:i,s:o}", "item_id", st->id, "output_index", st->open,
                       "content_index", 0, "part", part(kind, "", 0)));
}

static void rs_content(sl_seq *s, const char *t, size_t n)
{
    rs_stream *st = s->dialect_state;
    open_item(s, RS_ITEM_MESSAGE, -1);
    sl_buf_append(&st->text, t, n);
    emit(s, "response.output_text.delta",
         json_pack("{s:s,s:i,s:i,s:s%,s:[]}", "item_id", st->id, "output_index", st->open,
                   "content_index", 0, "delta", t, n, "logprobs"));
}

static void rs_reasoning(sl_seq *s, const char *t, size_t n)
{
    rs_stream *st = s->dialect_state;
    open_item(s, RS_ITEM_REASONING, -1);
    sl_buf_append(&st->text, t, n);
    emit(s, "response.reasoning_text.delta",
         json_pack("{s:s,s:i,s:i,s:s%}", "item_id", st->id, "output_index", st->open,
                   "content_index", 0, "delta", t, n));
}

/* sink_tool_start added the call to s->tools before this runs. */
static void rs_tool_start(sl_seq *s, int index, const char *id, const char *name)
{
    if (index < 0 || index >= s->ntools) return;
    open_item(s, RS_ITEM_CALL, index);
}

static void rs_tool_args(sl_seq *s, int index, const char *t, size_t n)
{
    rs_stream *st = s->dialect_state;
    if (st->open < 0 || st->kind != RS_ITEM_CALL || st->tool != index) return;
    emit(s, "response.function_call_arguments.delta",
         json_pack("{s:s,s:i,s:s%}", "item_id", st->id, "output_index", st->open, "delta", t, n));
}

static void rs_seq_done(sl_seq *s)
{
    rs_stream *st = s->dialect_state;
    const char *status = strcmp(final_status(s->job), "incomplete") ? "completed" : "incomplete";
    ensure_started(s);
    /* A reply with nothing in it is still one (empty) message, as unstreamed. */
    if (st->open < 0 && !json_array_size(st->output)) open_item(s, RS_ITEM_MESSAGE, -1);
    close_item(s, status);
}

static void rs_stream_end(sl_job *j)
{
    sl_seq *s = &j->seqs[0];
    rs_stream *st = s->dialect_state;
    const char *status = final_status(j);
    emit(s, !strcmp(status, "incomplete") ? "response.incomplete" : "response.completed",
         json_pack("{s:o}", "response", response_obj(j, status, json_incref(st->output))));
}

/* OpenAI's error shape; param is the field a "field: problem" or "field is
 * not supported" message names. */
static json_t *rs_error_body(sl_api_status st, const char *msg)
{
    const sl_api_status_info *in = sl_api_status_get(st);
    size_t n = strspn(msg, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.[]");
    int named = msg[n] == ':' || !strncmp(msg + n, " is not supported", 17);
    json_t *param = n && named ? json_stringn(msg, n) : json_null();
    return json_pack("{s:{s:s,s:s,s:o,s:i}}", "error", "message", msg, "type", in->openai_type,
                     "param", param, "code", in->http);
}

/* Headers went out, so the status is lost: an error event, then
 * response.failed. */
static void rs_stream_error(sl_job *j, const char *msg)
{
    sl_seq *s = &j->seqs[0];
    rs_stream *st = s->dialect_state;
    ensure_started(s);
    emit(s, "error", json_pack("{s:s,s:s,s:n}", "code", "server_error", "message", msg, "param"));
    json_t *r = response_obj(j, "failed", json_incref(st->output));
    json_object_set_new(r, "error", json_pack("{s:s,s:s}", "code", "server_error", "message", msg));
    emit(s, "response.failed", json_pack("{s:o}", "response", r));
}

const sl_api_dialect sl_openai_responses = {.id_prefix = "resp_",
                                            .decode = rs_decode,
                                            .content = rs_content,
                                            .reasoning = rs_reasoning,
                                            .tool_start = rs_tool_start,
                                            .tool_args = rs_tool_args,
                                            .seq_init = rs_seq_init,
                                            .seq_fini = rs_seq_fini,
                                            .seq_done = rs_seq_done,
                                            .stream_end = rs_stream_end,
                                            .final = rs_final,
                                            .stream_error = rs_stream_error,
                                            .error_body = rs_error_body};

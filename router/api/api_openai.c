/* OpenAI API: POST /v1/chat/completions and POST /v1/completions bodies in,
 * chat.completion / text_completion (and their .chunk SSE forms) out.
 *
 * Field policy (docs/api.md): known fields are type- and range-checked and a
 * bad one is a 400 naming it; fields sluice cannot honour (logit_bias,
 * best_of > 1, echo, suffix, functions) are
 * rejected with a 400 saying so; anything else unknown is ignored, as
 * SGLang and vLLM do. */
#include <stdlib.h>
#include <string.h>

#include "job.h"

/* response_format and SGLang's regex / ebnf / json_schema (a schema as JSON
 * text): what constrains the output (job_constrain.c). */
static int decode_constraint(sl_job *j, sl_api_err *err)
{
    const json_t *b = j->body;
    json_t *rf = json_object_get(b, "response_format");
    if (rf && !json_is_null(rf)) {
        const char *t = json_string_value(json_object_get(rf, "type"));
        if (!json_is_object(rf) || !t)
            return sl_api_fail(err, SL_API_STATUS_INVALID, "response_format: expected {\"type\": \"text\" | "
                               "\"json_object\" | \"json_schema\", ...}");
        if (!strcmp(t, "json_object")) {
            if (sl_job_constrain(j, SL_CONS_KIND_JSON_OBJECT, "response_format", NULL, err)) return -1;
        } else if (!strcmp(t, "json_schema")) {
            json_t *js = json_object_get(rf, "json_schema");
            if (!json_is_object(js))
                return sl_api_fail(err, SL_API_STATUS_INVALID, "response_format.json_schema: expected an object "
                                   "with name and schema");
            if (sl_job_constrain(j, SL_CONS_KIND_JSON_SCHEMA, "response_format.json_schema.schema",
                                 json_object_get(js, "schema"), err))
                return -1;
        } else if (strcmp(t, "text")) {
            return sl_api_fail(err, SL_API_STATUS_INVALID, "response_format.type: expected \"text\", "
                               "\"json_object\" or \"json_schema\", not \"%s\"", t);
        }
    }
    json_t *v = json_object_get(b, "regex");
    if (v && !json_is_null(v) && sl_job_constrain(j, SL_CONS_KIND_REGEX, "regex", v, err)) return -1;
    v = json_object_get(b, "ebnf");
    if (v && !json_is_null(v) && sl_job_constrain(j, SL_CONS_KIND_EBNF, "ebnf", v, err)) return -1;
    v = json_object_get(b, "json_schema");
    if (v && !json_is_null(v)) {
        if (!json_is_string(v))
            return sl_api_fail(err, SL_API_STATUS_INVALID, "json_schema: expected a JSON Schema as a string");
        json_error_t je;
        json_t *schema = json_loads(json_string_value(v), 0, &je);
        if (!schema)
            return sl_api_fail(err, SL_API_STATUS_INVALID, "json_schema: not valid JSON: %s", je.text);
        int rc = sl_job_constrain(j, SL_CONS_KIND_JSON_SCHEMA, "json_schema", schema, err);
        json_decref(schema);
        if (rc) return -1;
    }
    return 0;
}

/* Fields chat and completions share. */
static int decode_common(sl_job *j, sl_api_err *err)
{
    const json_t *b = j->body;
    sl_job_params *p = &j->p;
    json_t *model = json_object_get(b, "model");
    if (model && !json_is_null(model)) {
        if (!json_is_string(model))
            return sl_api_fail(err, SL_API_STATUS_INVALID, "model: expected a string");
        if (strcmp(json_string_value(model), j->model))
            return sl_api_fail(err, SL_API_STATUS_NOT_FOUND, "The model `%s` does not exist (this server serves `%s`).",
                               json_string_value(model), j->model);
    }
    static const char *const rejected[][2] = {
        {"logit_bias", "logit_bias is not supported"},
        {"suffix", "suffix is not supported"},
        {"functions", "functions is deprecated and not supported: use tools"},
        {"function_call", "function_call is deprecated and not supported: use tool_choice"}};
    for (int i = 0; i < 4; i++) {
        json_t *v = json_object_get(b, rejected[i][0]);
        if (v && !json_is_null(v) && !(json_is_object(v) && !json_object_size(v)) &&
            !(json_is_string(v) && !json_string_length(v)))
            return sl_api_fail(err, SL_API_STATUS_INVALID, "%s", rejected[i][1]);
    }
    if (decode_constraint(j, err)) return -1;
    int best_of = 1, echo = 0;
    if (sl_api_get_int(b, "best_of", 1, 1, &best_of, err) || sl_api_get_bool(b, "echo", &echo, err))
        return -1;
    if (echo) return sl_api_fail(err, SL_API_STATUS_INVALID, "echo is not supported");
    Sluice__SamplingParams *s = &p->sampling;
    int seed_given = 0, seed = 0, max_tokens = -1;
    json_t *sv = json_object_get(b, "seed");
    seed_given = sv && !json_is_null(sv);
    if (sl_api_get_bool(b, "stream", &p->stream, err) ||
        sl_api_get_int(b, "n", 1, 128, &p->n, err) ||
        sl_api_get_int(b, "max_tokens", 1, 1 << 30, &max_tokens, err) ||
        sl_api_get_int(b, "max_completion_tokens", 1, 1 << 30, &max_tokens, err) ||
        sl_api_get_num(b, "temperature", 0, 2, &s->temperature, err) ||
        sl_api_get_num(b, "top_p", 1e-6, 1, &s->top_p, err) ||
        sl_api_get_int(b, "top_k", -1, 1 << 20, &s->top_k, err) ||
        sl_api_get_num(b, "min_p", 0, 1, &s->min_p, err) ||
        sl_api_get_num(b, "presence_penalty", -2, 2, &s->presence_penalty, err) ||
        sl_api_get_num(b, "frequency_penalty", -2, 2, &s->frequency_penalty, err) ||
        sl_api_get_num(b, "repetition_penalty", 1e-6, 2, &s->repetition_penalty, err) ||
        sl_api_get_int(b, "seed", INT32_MIN, INT32_MAX, &seed, err) ||
        sl_api_get_bool(b, "ignore_eos", &s->ignore_eos, err) ||
        sl_api_get_bool(b, "separate_reasoning", &p->separate_reasoning, err) ||
        sl_api_get_stops(b, "stop", p, err))
        return -1;
    p->max_tokens = max_tokens;
    if (seed_given) {
        s->has_seed = 1;
        s->seed = (uint64_t)(uint32_t)seed;
    }
    json_t *so = json_object_get(b, "stream_options");
    if (so && !json_is_null(so)) {
        if (!json_is_object(so))
            return sl_api_fail(err, SL_API_STATUS_INVALID, "stream_options: expected an object");
        if (sl_api_get_bool(so, "include_usage", &p->include_usage, err)) return -1;
    }
    json_t *sti = json_object_get(b, "stop_token_ids");
    if (sti && !json_is_null(sti)) {
        if (!json_is_array(sti) || json_array_size(sti) > SL_JOB_MAX_STOP_IDS)
            return sl_api_fail(err, SL_API_STATUS_INVALID, "stop_token_ids: expected an array of at most %d token ids",
                               SL_JOB_MAX_STOP_IDS);
        size_t i;
        json_t *v;
        json_array_foreach(sti, i, v)
        {
            if (!json_is_integer(v) || json_integer_value(v) < 0 ||
                json_integer_value(v) > INT32_MAX)
                return sl_api_fail(err, SL_API_STATUS_INVALID, "stop_token_ids[%zu]: expected a token id", i);
            p->stop_ids[p->n_stop_ids++] = (int32_t)json_integer_value(v);
        }
    }
    return 0;
}

/* tools / tool_choice: shapes are checked here, the template reads them. */
static int decode_tools(sl_job *j, sl_api_err *err)
{
    const json_t *b = j->body;
    json_t *tools = json_object_get(b, "tools");
    size_t ntools = 0;
    if (tools && !json_is_null(tools)) {
        if (!json_is_array(tools))
            return sl_api_fail(err, SL_API_STATUS_INVALID, "tools: expected an array");
        if (sl_api_check_count(tools, "tools", SL_JOB_MAX_TOOLS, err)) return -1;
        size_t i;
        json_t *t;
        json_array_foreach(tools, i, t)
        {
            json_t *ty = json_object_get(t, "type"), *fn = json_object_get(t, "function");
            if (!json_is_object(t) || !json_is_string(ty) || strcmp(json_string_value(ty), "function"))
                return sl_api_fail(err, SL_API_STATUS_INVALID, "tools[%zu].type: expected \"function\"", i);
            if (!json_is_object(fn) || !json_is_string(json_object_get(fn, "name")))
                return sl_api_fail(err, SL_API_STATUS_INVALID, "tools[%zu].function.name: expected a string", i);
            json_t *params = json_object_get(fn, "parameters");
            if (params && !json_is_null(params) && !json_is_object(params))
                return sl_api_fail(err, SL_API_STATUS_INVALID, "tools[%zu].function.parameters: expected an object", i);
        }
        ntools = json_array_size(tools);
    }
    if (sl_api_get_bool(b, "parallel_tool_calls", &j->p.parallel_tool_calls, err)) return -1;
    json_t *tc = json_object_get(b, "tool_choice");
    if (!tc || json_is_null(tc)) return 0;
    if (json_is_string(tc)) {
        const char *v = json_string_value(tc);
        if (!strcmp(v, "none")) {
            /* No tool calls wanted: the tools stay out of the prompt too. */
            json_object_del(j->body, "tools");
            return 0;
        }
        if (strcmp(v, "auto") && strcmp(v, "required"))
            return sl_api_fail(err, SL_API_STATUS_INVALID, "tool_choice: expected \"none\", \"auto\", \"required\" or "
                               "{\"type\": \"function\", \"function\": {\"name\": ...}}");
        if (!strcmp(v, "required") && !ntools)
            return sl_api_fail(err, SL_API_STATUS_INVALID, "tool_choice: \"required\" needs tools");
        /* required: the output is tool calls, enforced by their grammar */
        return strcmp(v, "required") ? 0 : sl_job_constrain(j, SL_CONS_KIND_TOOLS, "tool_choice", NULL, err);
    }
    json_t *fn = json_object_get(tc, "function");
    const char *name = json_string_value(json_object_get(fn, "name"));
    if (!json_is_object(tc) || !name)
        return sl_api_fail(err, SL_API_STATUS_INVALID, "tool_choice: expected a string or {\"type\": \"function\", "
                           "\"function\": {\"name\": ...}}");
    return sl_job_constrain_tool(j, tools, json_object_get(fn, "name"), err);
}

static int decode_chat(sl_job *j, sl_api_err *err)
{
    json_t *msgs = json_object_get(j->body, "messages");
    if (!json_is_array(msgs) || !json_array_size(msgs))
        return sl_api_fail(err, SL_API_STATUS_INVALID, "messages: expected a non-empty array");
    if (sl_api_check_count(msgs, "messages", SL_JOB_MAX_MESSAGES, err)) return -1;
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m)
    {
        json_t *role = json_object_get(m, "role");
        if (!json_is_object(m) || !json_is_string(role))
            return sl_api_fail(err, SL_API_STATUS_INVALID, "messages[%zu].role: expected a string", i);
        const char *r = json_string_value(role);
        if (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant") &&
            strcmp(r, "tool") && strcmp(r, "developer"))
            return sl_api_fail(err, SL_API_STATUS_INVALID, "messages[%zu].role: unknown role `%s`", i, r);
        json_t *c = json_object_get(m, "content");
        if (c && !json_is_null(c) && !json_is_string(c) && !json_is_array(c))
            return sl_api_fail(err, SL_API_STATUS_INVALID, "messages[%zu].content: expected a string or an array of parts", i);
    }
    json_t *kw = json_object_get(j->body, "chat_template_kwargs");
    if (kw && !json_is_null(kw) && !json_is_object(kw))
        return sl_api_fail(err, SL_API_STATUS_INVALID, "chat_template_kwargs: expected an object");
    int top = 0;
    if (decode_common(j, err) || decode_tools(j, err) ||
        sl_api_get_bool(j->body, "logprobs", &j->p.logprobs, err) ||
        sl_api_get_int(j->body, "top_logprobs", 0, 20, &top, err))
        return -1;
    if (top && !j->p.logprobs)
        return sl_api_fail(err, SL_API_STATUS_INVALID, "top_logprobs: needs logprobs: true");
    j->p.sampling.logprobs = j->p.logprobs;
    j->p.sampling.top_logprobs = top;
    return sl_job_prompts(j, 1, err);
}

static int decode_completions(sl_job *j, sl_api_err *err)
{
    json_t *pr = json_object_get(j->body, "prompt");
    int lp = -1;
    if (decode_common(j, err) || sl_api_get_int(j->body, "logprobs", 0, 20, &lp, err)) return -1;
    if (lp >= 0) {
        j->p.logprobs = 1;
        j->p.sampling.logprobs = 1;
        j->p.sampling.top_logprobs = lp;
    }
    /* prompt: "text" | ["text", ...] | [id, ...] | [[id, ...], ...] */
    const char *bad = "prompt: expected a string, an array of strings, an array of token ids "
                      "or an array of arrays of token ids";
    if (json_is_string(pr)) {
        if (sl_job_prompts(j, 1, err)) return -1;
        j->texts[0] = strdup(json_string_value(pr));
        return 0;
    }
    if (!json_is_array(pr) || !json_array_size(pr))
        return sl_api_fail(err, SL_API_STATUS_INVALID, "%s", bad);
    json_t *first = json_array_get(pr, 0);
    int flat_ids = json_is_integer(first);
    int n = flat_ids ? 1 : (int)json_array_size(pr);
    if (n > 64) return sl_api_fail(err, SL_API_STATUS_INVALID, "prompt: at most 64 prompts");
    if (sl_job_prompts(j, n, err)) return -1;
    for (int i = 0; i < n; i++) {
        json_t *one = flat_ids ? pr : json_array_get(pr, (size_t)i);
        if (json_is_string(one)) {
            j->texts[i] = strdup(json_string_value(one));
            continue;
        }
        if (!json_is_array(one) || !json_array_size(one))
            return sl_api_fail(err, SL_API_STATUS_INVALID, "%s", bad);
        j->is_ids[i] = 1;
        size_t k;
        json_t *v;
        json_array_foreach(one, k, v)
        {
            if (!json_is_integer(v) || json_integer_value(v) < 0 ||
                json_integer_value(v) > INT32_MAX)
                return sl_api_fail(err, SL_API_STATUS_INVALID, "prompt: element %zu is not a token id", k);
            if (sl_tok_ids_push(&j->ids[i], (int32_t)json_integer_value(v)))
                return sl_api_fail(err, SL_API_STATUS_SERVER, "out of memory");
        }
    }
    return 0;
}

/* ------------------------------------------------------------ encoders */

static json_t *usage_json(const sl_job *j)
{
    int p, c, k;
    sl_job_usage(j, &p, &c, &k);
    return json_pack("{s:i,s:i,s:i,s:{s:i}}", "prompt_tokens", p, "completion_tokens", c,
                     "total_tokens", p + c, "prompt_tokens_details", "cached_tokens", k);
}

static json_t *chunk_base(const sl_job *j, const char *object, json_t *choice)
{
    return json_pack("{s:s,s:s,s:i,s:s,s:[o]}", "id", j->id, "object", object, "created",
                     (int)j->created, "model", j->model, "choices", choice);
}

/* Logprob entries gathered since the last chunk (chat shape), or null. */
static json_t *take_new_logprobs(sl_seq *s)
{
    if (!s->job->p.logprobs) return json_null();
    /* a copy: the array is cleared for the next chunk right after */
    json_t *o = json_pack("{s:o}", "content", json_copy(s->logprobs_new));
    json_array_clear(s->logprobs_new);
    return o;
}

static void chat_delta(sl_seq *s, json_t *delta, const char *finish)
{
    if (!s->sent_role) {
        json_object_set_new(delta, "role", json_string("assistant"));
        s->sent_role = 1;
    }
    json_t *ch = json_pack("{s:i,s:o,s:o,s:s?}", "index", s->index, "delta", delta, "logprobs",
                           take_new_logprobs(s), "finish_reason", finish);
    if (!finish) json_object_set_new(ch, "finish_reason", json_null());
    if (finish && s->stop_index >= 0)
        json_object_set_new(ch, "matched_stop", json_string(s->job->p.stops[s->stop_index]));
    sl_job_sse(s->job, NULL, chunk_base(s->job, "chat.completion.chunk", ch));
}

static void chat_content(sl_seq *s, const char *t, size_t n)
{
    chat_delta(s, json_pack("{s:s%}", "content", t, n), NULL);
}

static void chat_reasoning(sl_seq *s, const char *t, size_t n)
{
    chat_delta(s, json_pack("{s:s%}", "reasoning_content", t, n), NULL);
}

static void chat_tool_start(sl_seq *s, int index, const char *id, const char *name)
{
    chat_delta(s,
               json_pack("{s:[{s:i,s:s,s:s,s:{s:s,s:s}}]}", "tool_calls", "index", index, "id",
                         id, "type", "function", "function", "name", name, "arguments", ""),
               NULL);
}

static void chat_tool_args(sl_seq *s, int index, const char *t, size_t n)
{
    chat_delta(s, json_pack("{s:[{s:i,s:{s:s%}}]}", "tool_calls", "index", index, "function",
                            "arguments", t, n),
               NULL);
}

static void chat_seq_done(sl_seq *s) { chat_delta(s, json_object(), s->finish); }

static void stream_end(sl_job *j, const char *object)
{
    if (j->p.include_usage) {
        json_t *o = json_pack("{s:s,s:s,s:i,s:s,s:[],s:o}", "id", j->id, "object", object,
                              "created", (int)j->created, "model", j->model, "choices", "usage",
                              usage_json(j));
        sl_job_sse(j, NULL, o);
    }
    sl_job_sse_raw(j, "data: [DONE]\n\n");
}

static void chat_stream_end(sl_job *j) { stream_end(j, "chat.completion.chunk"); }
static void completions_stream_end(sl_job *j) { stream_end(j, "text_completion"); }

static json_t *openai_error_body(sl_api_status st, const char *msg)
{
    const sl_api_status_info *in = sl_api_status_get(st);
    return json_pack("{s:{s:s,s:s,s:n,s:i}}", "error", "message", msg, "type", in->openai_type,
                     "param", "code", in->http);
}

/* Headers went out, so the status is lost: the event names a server error. */
static void openai_stream_error(sl_job *j, const char *msg)
{
    sl_job_sse(j, NULL, openai_error_body(SL_API_STATUS_WORKER_LOST, msg));
    sl_job_sse_raw(j, "data: [DONE]\n\n");
}

static json_t *chat_final(sl_job *j)
{
    json_t *choices = json_array();
    for (int i = 0; i < j->nseqs; i++) {
        sl_seq *s = &j->seqs[i];
        json_t *msg = json_pack("{s:s}", "role", "assistant");
        if (s->content.len || !s->ntools)
            json_object_set_new(msg, "content",
                                json_stringn(s->content.data ? s->content.data : "", s->content.len));
        else
            json_object_set_new(msg, "content", json_null());
        if (s->reasoning.len)
            json_object_set_new(msg, "reasoning_content",
                                json_stringn(s->reasoning.data, s->reasoning.len));
        if (s->ntools) {
            json_t *calls = json_array();
            for (int k = 0; k < s->ntools; k++)
                json_array_append_new(
                    calls, json_pack("{s:s,s:s,s:{s:s,s:s%}}", "id", s->tools[k].id, "type",
                                     "function", "function", "name", s->tools[k].name,
                                     "arguments", s->tools[k].args.data ? s->tools[k].args.data : "",
                                     s->tools[k].args.len));
            json_object_set_new(msg, "tool_calls", calls);
        }
        json_t *lp = j->p.logprobs ? json_pack("{s:O}", "content", s->logprobs) : json_null();
        json_t *c = json_pack("{s:i,s:o,s:o,s:s}", "index", s->index, "message", msg, "logprobs",
                              lp, "finish_reason", s->finish);
        if (s->stop_index >= 0)
            json_object_set_new(c, "matched_stop", json_string(j->p.stops[s->stop_index]));
        json_array_append_new(choices, c);
    }
    return json_pack("{s:s,s:s,s:i,s:s,s:o,s:o}", "id", j->id, "object", "chat.completion",
                     "created", (int)j->created, "model", j->model, "choices", choices, "usage",
                     usage_json(j));
}

/* Completions logprobs: {tokens, token_logprobs, top_logprobs, text_offset}
 * from chat-shaped entries. */
static json_t *completion_logprobs(const sl_job *j, json_t *entries, size_t *offset)
{
    if (!j->p.logprobs) return json_null();
    json_t *toks = json_array(), *lps = json_array(), *tops = json_array(), *offs = json_array();
    size_t i;
    json_t *e;
    json_array_foreach(entries, i, e)
    {
        const char *tok = json_string_value(json_object_get(e, "token"));
        json_array_append(toks, json_object_get(e, "token"));
        json_array_append(lps, json_object_get(e, "logprob"));
        json_t *top = json_object();
        size_t k;
        json_t *t;
        json_array_foreach(json_object_get(e, "top_logprobs"), k, t)
            json_object_set(top, json_string_value(json_object_get(t, "token")),
                            json_object_get(t, "logprob"));
        json_array_append_new(tops, top);
        json_array_append_new(offs, json_integer((json_int_t)*offset));
        *offset += tok ? strlen(tok) : 0;
    }
    return json_pack("{s:o,s:o,s:o,s:o}", "tokens", toks, "token_logprobs", lps, "top_logprobs",
                     tops, "text_offset", offs);
}

static void completion_chunk(sl_seq *s, const char *t, size_t n, const char *finish)
{
    size_t off = s->content.len;
    json_t *lp = completion_logprobs(s->job, s->logprobs_new, &off);
    json_array_clear(s->logprobs_new);
    sl_buf_append(&s->content, t, n); /* running text offset for logprobs */
    json_t *ch = json_pack("{s:i,s:s%,s:o}", "index", s->index, "text", t, n, "logprobs", lp);
    json_object_set_new(ch, "finish_reason", finish ? json_string(finish) : json_null());
    if (finish && s->stop_index >= 0)
        json_object_set_new(ch, "matched_stop", json_string(s->job->p.stops[s->stop_index]));
    sl_job_sse(s->job, NULL, chunk_base(s->job, "text_completion", ch));
}

static void completions_content(sl_seq *s, const char *t, size_t n)
{
    completion_chunk(s, t, n, NULL);
}

static void completions_seq_done(sl_seq *s) { completion_chunk(s, "", 0, s->finish); }

static json_t *completions_final(sl_job *j)
{
    json_t *choices = json_array();
    for (int i = 0; i < j->nseqs; i++) {
        sl_seq *s = &j->seqs[i];
        size_t off = 0;
        json_t *c = json_pack("{s:i,s:s%,s:o,s:s}", "index", s->index, "text",
                              s->content.data ? s->content.data : "", s->content.len, "logprobs",
                              completion_logprobs(j, s->logprobs, &off), "finish_reason",
                              s->finish);
        if (s->stop_index >= 0)
            json_object_set_new(c, "matched_stop", json_string(j->p.stops[s->stop_index]));
        json_array_append_new(choices, c);
    }
    return json_pack("{s:s,s:s,s:i,s:s,s:o,s:o}", "id", j->id, "object", "text_completion",
                     "created", (int)j->created, "model", j->model, "choices", choices, "usage",
                     usage_json(j));
}

static void no_text(sl_seq *s, const char *t, size_t n) {}
static void no_tool_start(sl_seq *s, int i, const char *id, const char *name) {}
static void no_tool_args(sl_seq *s, int i, const char *t, size_t n) {}

const sl_api_dialect sl_openai_chat = {.id_prefix = "chatcmpl-",
                                       .decode = decode_chat,
                                       .content = chat_content,
                                       .reasoning = chat_reasoning,
                                       .tool_start = chat_tool_start,
                                       .tool_args = chat_tool_args,
                                       .seq_done = chat_seq_done,
                                       .stream_end = chat_stream_end,
                                       .final = chat_final,
                                       .stream_error = openai_stream_error,
                                       .error_body = openai_error_body};

/* Completions have no chat parsers: only content arrives. */
const sl_api_dialect sl_openai_completions = {.id_prefix = "cmpl-",
                                              .decode = decode_completions,
                                              .content = completions_content,
                                              .reasoning = no_text,
                                              .tool_start = no_tool_start,
                                              .tool_args = no_tool_args,
                                              .seq_done = completions_seq_done,
                                              .stream_end = completions_stream_end,
                                              .final = completions_final,
                                              .stream_error = openai_stream_error,
                                              .error_body = openai_error_body};

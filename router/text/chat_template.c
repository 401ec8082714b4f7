#define _GNU_SOURCE /* memmem */
#include "chat_template.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "pyjson.h"
#include "sl_file.h"

/* ---- families and recognition ---- */

static const char *const family_names[] = {"qwen3", "qwen3_coder"};

/* Fragments each family's template must all contain. They are the parts the
 * C renderer depends on (prompt wording, tool-call syntax, thinking switch),
 * so a template that lacks one would render differently. */
static const char *const qwen3_marks[] = {
    "<|im_start|>", "<tool_call>", "<function-name>", "<args-json-object>", "<tool_response>",
    "reasoning_content", "last_query_index", "enable_thinking is false", NULL};
static const char *const qwen3_coder_marks[] = {
    "<|im_start|>", "<tools>", "<function=", "<parameter=", "<tool_response>",
    "You have access to the following functions", "render_item_list", NULL};

const char *sl_chat_template_family_name(sl_chat_template_family f) { return family_names[f]; }

sl_status sl_chat_template_family_parse(const char *name, sl_chat_template_family *out, sl_err *e)
{
    for (int i = 0; i < 2; i++)
        if (!strcmp(name, family_names[i])) {
            *out = (sl_chat_template_family)i;
            return SL_OK;
        }
    return sl_err_set(e, SL_ERR_INVALID, "unknown chat template '%s' (known: qwen3, qwen3_coder)",
                      name);
}

static int has_all(const char *text, const char *const *marks)
{
    for (; *marks; marks++)
        if (!strstr(text, *marks)) return 0;
    return 1;
}

sl_status sl_chat_template_detect(const char *text, sl_chat_template_family *out, sl_err *e)
{
    int coder = has_all(text, qwen3_coder_marks), qwen3 = has_all(text, qwen3_marks);
    if (coder != qwen3) {
        *out = coder ? SL_CHAT_TEMPLATE_FAMILY_QWEN3_CODER : SL_CHAT_TEMPLATE_FAMILY_QWEN3;
        return SL_OK;
    }
    return sl_err_set(e, SL_ERR_UNSUPPORTED,
                      "chat template not recognised as qwen3 or qwen3_coder "
                      "(pass --chat-template qwen3|qwen3_coder to choose one)");
}

/* HF keeps the template in chat_template.jinja (newer) or in
 * tokenizer_config.json "chat_template", a string or [{name, template}]. */
static sl_status read_template(const char *dir, char **text, char *path, size_t pathn, sl_err *e)
{
    sl_path_join(path, pathn, dir, "chat_template.jinja");
    if (sl_file_exists(path)) return sl_file_read(path, text, NULL, e);
    sl_path_join(path, pathn, dir, "tokenizer_config.json");
    json_error_t je;
    json_t *cfg = json_load_file(path, 0, &je);
    if (!cfg)
        return sl_err_set(e, SL_ERR_PARSE, "no chat template in %s: %s: %s", dir, path, je.text);
    json_t *t = json_object_get(cfg, "chat_template");
    if (json_is_array(t)) {
        size_t i;
        json_t *item, *pick = NULL;
        json_array_foreach(t, i, item) {
            const char *name = json_string_value(json_object_get(item, "name"));
            if (!pick || (name && !strcmp(name, "default")))
                pick = json_object_get(item, "template");
        }
        t = pick;
    }
    sl_status s = SL_OK;
    if (!json_is_string(t))
        s = sl_err_set(e, SL_ERR_NOTFOUND, "%s has no chat_template (pass --chat-template)", path);
    else if (!(*text = strdup(json_string_value(t))))
        s = sl_err_set(e, SL_ERR_NOMEM, "reading %s: out of memory", path);
    json_decref(cfg);
    return s;
}

sl_status sl_chat_template_load(const char *model_dir, const char *override_name,
                                sl_chat_template_family *out, sl_err *e)
{
    if (override_name && (strchr(override_name, '/') || strstr(override_name, ".jinja"))) {
        /* a template file (SGLang's --chat-template PATH): usable when it is
         * one of the families rendered here, recognised as a directory's is */
        char *text = NULL;
        if (!sl_file_exists(override_name))
            return sl_err_set(e, SL_ERR_NOTFOUND, "--chat-template %s: no such file",
                              override_name);
        sl_status s = sl_file_read(override_name, &text, NULL, e);
        if (s == SL_OK && (s = sl_chat_template_detect(text, out, e)))
            sl_err_wrap(e, "--chat-template %s: sluice renders only the qwen3 and qwen3_coder "
                           "templates natively, and this file is neither", override_name);
        free(text);
        return s;
    }
    if (override_name) return sl_chat_template_family_parse(override_name, out, e);
    if (!model_dir)
        return sl_err_set(e, SL_ERR_INVALID, "need a model directory or a template name");
    char path[4096], *text = NULL;
    sl_status s = read_template(model_dir, &text, path, sizeof path, e);
    if (s == SL_OK && (s = sl_chat_template_detect(text, out, e))) sl_err_wrap(e, "%s: ", path);
    free(text);
    return s;
}

/* ---- Python string semantics on byte slices ---- */

typedef struct slice {
    const char *p;
    size_t n;
} slice;

static slice str_of(const json_t *s)
{
    return (slice){json_string_value(s), json_string_length(s)};
}

static slice lstrip_nl(slice s)
{
    while (s.n && *s.p == '\n') s.p++, s.n--;
    return s;
}

static slice rstrip_nl(slice s)
{
    while (s.n && s.p[s.n - 1] == '\n') s.n--;
    return s;
}

/* str.strip() with no argument: Unicode whitespace at both ends. */
static slice py_strip(slice s)
{
    utf8proc_int32_t cp;
    utf8proc_ssize_t k;
    while (s.n &&
           (k = utf8proc_iterate((const utf8proc_uint8_t *)s.p, (utf8proc_ssize_t)s.n, &cp)) > 0 &&
           sl_pyjson_isspace(cp))
        s.p += k, s.n -= (size_t)k;
    while (s.n) {
        size_t start = s.n - 1; /* back to the first byte of the last code point */
        while (start && ((unsigned char)s.p[start] & 0xc0) == 0x80) start--;
        k = utf8proc_iterate((const utf8proc_uint8_t *)s.p + start, (utf8proc_ssize_t)(s.n - start),
                             &cp);
        if (k <= 0 || !sl_pyjson_isspace(cp)) break;
        s.n = start;
    }
    return s;
}

static const char *find_first(slice s, const char *needle)
{
    return memmem(s.p, s.n, needle, strlen(needle));
}

static const char *find_last(slice s, const char *needle)
{
    const char *last = NULL, *hit;
    size_t nn = strlen(needle);
    for (slice rest = s; (hit = memmem(rest.p, rest.n, needle, nn));) {
        last = hit;
        rest.n -= (size_t)(hit + 1 - rest.p);
        rest.p = hit + 1;
    }
    return last;
}

static int starts_with(slice s, const char *x)
{
    return s.n >= strlen(x) && !memcmp(s.p, x, strlen(x));
}

static int ends_with(slice s, const char *x)
{
    return s.n >= strlen(x) && !memcmp(s.p + s.n - strlen(x), x, strlen(x));
}

/* ---- Jinja value semantics on jansson values (NULL is Undefined) ---- */

/* `a.b`: a missing key, or a lookup on a non-object, is Undefined. */
static json_t *attr(const json_t *v, const char *key)
{
    return json_is_object(v) ? json_object_get(v, key) : NULL;
}

static int truthy(const json_t *v)
{
    if (!v) return 0;
    switch (json_typeof(v)) {
    case JSON_OBJECT: return json_object_size(v) > 0;
    case JSON_ARRAY: return json_array_size(v) > 0;
    case JSON_STRING: return json_string_length(v) > 0;
    case JSON_INTEGER: return json_integer_value(v) != 0;
    case JSON_REAL: return json_real_value(v) != 0.0;
    case JSON_TRUE: return 1;
    default: return 0;
    }
}

static int role_is(const json_t *m, const char *role)
{
    const char *r = json_string_value(attr(m, "role"));
    return r && !strcmp(r, role);
}

/* The output, where the request's own text landed in it (NULL: not wanted) and a sticky
 * allocation failure, checked once at the end. */
typedef struct out {
    sl_buf *b;
    sl_tok_spans *lit;
    int oom;
} out;

/* Template text: only put() writes it. */
static void put(out *o, const char *s) { o->oom |= sl_buf_puts(o->b, s); }

/* The request's text (contents, names, arguments, tools: whatever the client sent) goes through
 * the put_* below, which record its range as literal: special tokens spelled there are not
 * control tokens (sl_tok_encode_literal). */
static void lit_since(out *o, size_t from)
{
    if (o->lit) o->oom |= sl_tok_spans_push(o->lit, from, o->b->len);
}

static void put_slice(out *o, slice s)
{
    size_t from = o->b->len;
    o->oom |= sl_buf_append(o->b, s.p, s.n);
    lit_since(o, from);
}

static void put_cstr(out *o, const char *s)
{
    put_slice(o, (slice){s, strlen(s)});
}

/* `{{ v }}` and `~ v`: str(v); Undefined prints nothing. */
static void put_str(out *o, const json_t *v)
{
    size_t from = o->b->len;
    o->oom |= v ? sl_pyjson_str(o->b, v) : 0;
    lit_since(o, from);
}

static void put_json(out *o, const json_t *v)
{
    size_t from = o->b->len;
    o->oom |= sl_pyjson_dumps(o->b, v);
    lit_since(o, from);
}

/* `v | trim` */
static void put_trim(out *o, const json_t *v)
{
    sl_buf tmp = {0};
    o->oom |= v ? sl_pyjson_str(&tmp, v) : 0;
    put_slice(o, py_strip((slice){tmp.data ? tmp.data : "", tmp.len}));
    sl_buf_free(&tmp);
}

/* ---- the request, normalised ---- */

typedef struct request {
    json_t *messages;    /* owned, normalised copy */
    const json_t *tools; /* borrowed; NULL when absent, null or empty */
    int add_generation_prompt;
    int thinking_off; /* chat_template_kwargs.enable_thinking is exactly false */
} request;

/* content: string as is, null/missing -> "", text parts joined by "\n". */
static sl_status normalise_content(json_t *m, size_t i, sl_err *e)
{
    json_t *c = json_object_get(m, "content");
    if (json_is_string(c)) return SL_OK;
    if (c && !json_is_null(c) && !json_is_array(c))
        return sl_err_set(e, SL_ERR_INVALID,
                          "messages[%zu].content must be a string, null or an array of parts", i);
    sl_buf text = {0};
    int oom = sl_buf_puts(&text, "");
    size_t j;
    json_t *part;
    json_array_foreach(c, j, part) {
        json_t *t = attr(part, "text");
        if (!json_is_string(attr(part, "type")) ||
            strcmp(json_string_value(attr(part, "type")), "text") || !json_is_string(t)) {
            sl_buf_free(&text);
            return sl_err_set(
                e, SL_ERR_UNSUPPORTED,
                "messages[%zu].content[%zu]: only {\"type\": \"text\", \"text\": ...} "
                "parts are supported",
                i, j);
        }
        if (j) oom |= sl_buf_puts(&text, "\n");
        oom |= sl_buf_append(&text, json_string_value(t), json_string_length(t));
    }
    json_t *s = oom ? NULL : json_stringn(text.data, text.len);
    sl_buf_free(&text);
    if (!s || json_object_set_new(m, "content", s))
        return sl_err_set(e, SL_ERR_NOMEM, "messages[%zu].content: out of memory", i);
    return SL_OK;
}

/* qwen3_coder iterates over function.arguments, so an OpenAI-style JSON
 * string is decoded into its object first. */
static sl_status decode_arguments(json_t *fn, size_t i, size_t j, sl_err *e)
{
    json_t *args = attr(fn, "arguments");
    if (json_is_string(args)) {
        json_error_t je;
        json_t *obj = json_loadb(json_string_value(args), json_string_length(args), 0, &je);
        if (!obj)
            return sl_err_set(e, SL_ERR_INVALID,
                              "messages[%zu].tool_calls[%zu].function.arguments is not JSON: %s", i,
                              j, je.text);
        json_object_set_new(fn, "arguments", obj);
        args = obj;
    }
    if (args && !json_is_object(args))
        return sl_err_set(e, SL_ERR_INVALID,
                          "messages[%zu].tool_calls[%zu].function.arguments must be a JSON object",
                          i, j);
    return SL_OK;
}

static sl_status normalise_message(sl_chat_template_family f, json_t *m, size_t i, sl_err *e)
{
    if (!json_is_object(m))
        return sl_err_set(e, SL_ERR_INVALID, "messages[%zu] must be an object", i);
    if (!json_is_string(json_object_get(m, "role")))
        return sl_err_set(e, SL_ERR_INVALID, "messages[%zu].role must be a string", i);
    sl_status s = normalise_content(m, i, e);
    if (s) return s;
    json_t *rc = json_object_get(m, "reasoning_content");
    if (rc && !json_is_null(rc) && !json_is_string(rc))
        return sl_err_set(e, SL_ERR_INVALID, "messages[%zu].reasoning_content must be a string", i);
    json_t *calls = json_object_get(m, "tool_calls");
    if (!calls || json_is_null(calls)) return SL_OK;
    if (!json_is_array(calls))
        return sl_err_set(e, SL_ERR_INVALID, "messages[%zu].tool_calls must be an array", i);
    size_t j;
    json_t *tc;
    json_array_foreach(calls, j, tc) {
        if (!json_is_object(tc))
            return sl_err_set(e, SL_ERR_INVALID, "messages[%zu].tool_calls[%zu] must be an object",
                              i, j);
        json_t *fn = json_object_get(tc, "function");
        if (f == SL_CHAT_TEMPLATE_FAMILY_QWEN3_CODER &&
            (s = decode_arguments(fn ? fn : tc, i, j, e)))
            return s;
    }
    return SL_OK;
}

static sl_status request_init(request *r, sl_chat_template_family f, const json_t *body, sl_err *e)
{
    *r = (request){.add_generation_prompt = 1};
    if (!json_is_object(body))
        return sl_err_set(e, SL_ERR_INVALID, "request must be a JSON object");
    json_t *msgs = json_object_get(body, "messages");
    if (!json_is_array(msgs) || !json_array_size(msgs))
        return sl_err_set(e, SL_ERR_INVALID, "messages must be a non-empty array");
    json_t *tools = json_object_get(body, "tools");
    if (tools && !json_is_null(tools)) {
        if (!json_is_array(tools)) return sl_err_set(e, SL_ERR_INVALID, "tools must be an array");
        for (size_t i = 0; i < json_array_size(tools); i++)
            if (!json_is_object(json_array_get(tools, i)))
                return sl_err_set(e, SL_ERR_INVALID, "tools[%zu] must be an object", i);
        if (json_array_size(tools)) r->tools = tools;
    }
    json_t *agp = json_object_get(body, "add_generation_prompt");
    if (agp && !json_is_boolean(agp))
        return sl_err_set(e, SL_ERR_INVALID, "add_generation_prompt must be true or false");
    if (agp) r->add_generation_prompt = json_is_true(agp);
    json_t *kw = json_object_get(body, "chat_template_kwargs");
    if (kw && !json_is_null(kw) && !json_is_object(kw))
        return sl_err_set(e, SL_ERR_INVALID, "chat_template_kwargs must be an object");
    r->thinking_off = json_is_false(attr(kw, "enable_thinking"));

    if (!(r->messages = json_deep_copy(msgs)))
        return sl_err_set(e, SL_ERR_NOMEM, "copying messages: out of memory");
    for (size_t i = 0; i < json_array_size(msgs); i++) {
        sl_status s = normalise_message(f, json_array_get(r->messages, i), i, e);
        if (s) {
            json_decref(r->messages);
            return s;
        }
    }
    return SL_OK;
}

static slice content_of(const json_t *m) { return str_of(json_object_get(m, "content")); }
static slice role_of(const json_t *m) { return str_of(json_object_get(m, "role")); }

/* ---- qwen3 ---- */

static void qwen3_system(const request *r, out *o)
{
    json_t *m0 = json_array_get(r->messages, 0);
    if (!r->tools) {
        if (role_is(m0, "system")) {
            put(o, "<|im_start|>system\n");
            put_slice(o, content_of(m0));
            put(o, "<|im_end|>\n");
        }
        return;
    }
    put(o, "<|im_start|>system\n");
    if (role_is(m0, "system")) {
        put_slice(o, content_of(m0));
        put(o, "\n\n");
    }
    put(o, "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
           "You are provided with function signatures within <tools></tools> XML tags:\n<tools>");
    for (size_t i = 0; i < json_array_size(r->tools); i++) {
        put(o, "\n");
        put_json(o, json_array_get(r->tools, i));
    }
    put(o, "\n</tools>\n\nFor each function call, return a json object with function name and "
           "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": "
           "<function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n");
}

/* The last user turn that is not a wrapped tool response: thinking is shown
 * only for assistant turns after it. */
static size_t qwen3_last_query(const json_t *msgs)
{
    for (size_t k = json_array_size(msgs); k-- > 0;) {
        json_t *m = json_array_get(msgs, k);
        slice c = content_of(m);
        if (role_is(m, "user") &&
            !(starts_with(c, "<tool_response>") && ends_with(c, "</tool_response>")))
            return k;
    }
    return json_array_size(msgs) - 1;
}

static sl_status qwen3_assistant(const json_t *m, size_t i, int last, size_t last_query, out *o,
                                 sl_err *e)
{
    slice content = content_of(m), reasoning = {"", 0};
    json_t *rc = json_object_get(m, "reasoning_content");
    if (json_is_string(rc)) {
        reasoning = str_of(rc);
    } else if (find_first(content, "</think>")) {
        slice whole = content;
        const char *end = find_last(whole, "</think>") + strlen("</think>");
        content = lstrip_nl((slice){end, (size_t)(whole.p + whole.n - end)});
        reasoning = rstrip_nl((slice){whole.p, (size_t)(find_first(whole, "</think>") - whole.p)});
        const char *open = find_last(reasoning, "<think>");
        if (open) {
            open += strlen("<think>");
            reasoning = (slice){open, (size_t)(reasoning.p + reasoning.n - open)};
        }
        reasoning = lstrip_nl(reasoning);
    }
    put(o, "<|im_start|>");
    put_slice(o, role_of(m));
    if (i > last_query && (last || reasoning.n)) {
        put(o, "\n<think>\n");
        put_slice(o, rstrip_nl(lstrip_nl(reasoning)));
        put(o, "\n</think>\n\n");
        put_slice(o, lstrip_nl(content));
    } else {
        put(o, "\n");
        put_slice(o, content);
    }
    json_t *calls = json_object_get(m, "tool_calls");
    for (size_t j = 0; truthy(calls) && j < json_array_size(calls); j++) {
        json_t *tc = json_array_get(calls, j);
        if (j > 0 || content.n) put(o, "\n");
        if (truthy(attr(tc, "function"))) tc = attr(tc, "function");
        put(o, "<tool_call>\n{\"name\": \"");
        put_str(o, attr(tc, "name"));
        put(o, "\", \"arguments\": ");
        json_t *args = attr(tc, "arguments");
        if (!args)
            return sl_err_set(e, SL_ERR_INVALID,
                              "messages[%zu].tool_calls[%zu].function.arguments is missing", i, j);
        if (json_is_string(args)) put_slice(o, str_of(args));
        else put_json(o, args);
        put(o, "}\n</tool_call>");
    }
    put(o, "<|im_end|>\n");
    return SL_OK;
}

static sl_status render_qwen3(const request *r, out *o, sl_err *e)
{
    const json_t *msgs = r->messages;
    size_t n = json_array_size(msgs), last_query = qwen3_last_query(msgs);
    qwen3_system(r, o);
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(msgs, i);
        int last = i + 1 == n;
        if (role_is(m, "user") || (role_is(m, "system") && i > 0)) {
            put(o, "<|im_start|>");
            put_slice(o, role_of(m));
            put(o, "\n");
            put_slice(o, content_of(m));
            put(o, "<|im_end|>\n");
        } else if (role_is(m, "assistant")) {
            sl_status s = qwen3_assistant(m, i, last, last_query, o, e);
            if (s) return s;
        } else if (role_is(m, "tool")) {
            if (i == 0 || !role_is(json_array_get(msgs, i - 1), "tool")) put(o, "<|im_start|>user");
            put(o, "\n<tool_response>\n");
            put_slice(o, content_of(m));
            put(o, "\n</tool_response>");
            if (last || !role_is(json_array_get(msgs, i + 1), "tool")) put(o, "<|im_end|>\n");
        }
    }
    if (r->add_generation_prompt) {
        put(o, "<|im_start|>assistant\n");
        if (r->thinking_off) put(o, "<think>\n\n</think>\n\n");
    }
    return SL_OK;
}

/* ---- qwen3_coder ---- */

/* The template's render_item_list macro: a non-empty sequence (list, string
 * or mapping keys, as Jinja iterates them) as "\n<required>[`a`, 1]</required>". */
static void coder_item_list(const json_t *v, out *o)
{
    int is_seq = (json_is_array(v) && json_array_size(v)) ||
                 (json_is_object(v) && json_object_size(v)) ||
                 (json_is_string(v) && json_string_length(v));
    if (!is_seq) return;
    put(o, "\n<required>[");
    if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++) {
            json_t *item = json_array_get(v, i);
            if (i) put(o, ", ");
            if (json_is_string(item)) put(o, "`");
            put_str(o, item);
            if (json_is_string(item)) put(o, "`");
        }
    } else if (json_is_object(v)) {
        const char *k;
        json_t *x;
        int first = 1;
        json_object_foreach((json_t *)v, k, x) {
            put(o, first ? "`" : ", `");
            put_cstr(o, k);
            put(o, "`");
            first = 0;
        }
    } else { /* a string iterates over its characters */
        slice s = str_of(v);
        for (size_t i = 0; i < s.n;) {
            utf8proc_int32_t cp;
            utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s.p + i,
                                                  (utf8proc_ssize_t)(s.n - i), &cp);
            if (k <= 0) k = 1;
            put(o, i ? ", `" : "`");
            put_slice(o, (slice){s.p + i, (size_t)k});
            put(o, "`");
            i += (size_t)k;
        }
    }
    put(o, "]</required>");
}

/* Schema keys other than type/description/enum/required become tags; '-',
 * ' ' become '_' and '$' is dropped from their names. */
static void coder_schema_extras(const json_t *fields, out *o)
{
    static const char *const handled[] = {"type", "description", "enum", "required", NULL};
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)fields, k, v) {
        int skip = !*k || json_is_null(v);
        for (const char *const *h = handled; *h && !skip; h++) skip = !strcmp(k, *h);
        if (skip) continue;
        sl_buf tag = {0};
        for (const char *c = k; *c; c++)
            if (*c != '$') o->oom |= sl_buf_append(&tag, *c == '-' || *c == ' ' ? "_" : c, 1);
        put(o, "\n<");
        put_cstr(o, tag.data ? tag.data : "");
        put(o, ">");
        if (json_is_object(v)) put_json(o, v);
        else put_str(o, v);
        put(o, "</");
        put_cstr(o, tag.data ? tag.data : "");
        put(o, ">");
        sl_buf_free(&tag);
    }
}

static sl_status coder_tool(const json_t *tool, size_t i, out *o, sl_err *e)
{
    if (attr(tool, "function")) tool = attr(tool, "function");
    put(o, "\n<function>\n<name>");
    put_str(o, attr(tool, "name"));
    put(o, "</name>\n<description>");
    put_trim(o, attr(tool, "description"));
    put(o, "</description>\n<parameters>");
    json_t *params = attr(tool, "parameters"), *props = attr(params, "properties");
    if (props && !json_is_object(props))
        return sl_err_set(e, SL_ERR_INVALID, "tools[%zu]: parameters.properties must be an object",
                          i);
    const char *name;
    json_t *fields;
    json_object_foreach(props, name, fields) {
        put(o, "\n<parameter>\n<name>");
        put_cstr(o, name);
        put(o, "</name>");
        if (attr(fields, "type")) {
            put(o, "\n<type>");
            put_str(o, attr(fields, "type"));
            put(o, "</type>");
        }
        if (attr(fields, "description")) {
            put(o, "\n<description>");
            put_trim(o, attr(fields, "description"));
            put(o, "</description>");
        }
        if (json_is_object(fields)) coder_schema_extras(fields, o);
        coder_item_list(attr(fields, "required"), o);
        put(o, "\n</parameter>");
    }
    coder_item_list(attr(params, "required"), o);
    put(o, "\n</parameters>");
    json_t *ret = attr(tool, "return");
    if (ret) {
        put(o, "\n<return>");
        if (json_is_object(ret)) put_json(o, ret);
        else put_str(o, ret);
        put(o, "</return>");
    }
    put(o, "\n</function>");
    return SL_OK;
}

static sl_status coder_tool_calls(const json_t *m, size_t i, out *o, sl_err *e)
{
    put(o, "<|im_start|>");
    put_slice(o, role_of(m));
    slice c = py_strip(content_of(m));
    if (c.n) {
        put(o, "\n");
        put_slice(o, c);
        put(o, "\n");
    }
    json_t *calls = json_object_get(m, "tool_calls");
    for (size_t j = 0; j < json_array_size(calls); j++) {
        json_t *tc = json_array_get(calls, j);
        if (attr(tc, "function")) tc = attr(tc, "function");
        if (!json_is_string(attr(tc, "name")))
            return sl_err_set(e, SL_ERR_INVALID,
                              "messages[%zu].tool_calls[%zu].function.name must be a string", i, j);
        put(o, "\n<tool_call>\n<function=");
        put_slice(o, str_of(attr(tc, "name")));
        put(o, ">\n");
        const char *k;
        json_t *v;
        json_object_foreach(attr(tc, "arguments"), k, v) {
            put(o, "<parameter=");
            put_cstr(o, k);
            put(o, ">\n");
            put_str(o, v);
            put(o, "\n</parameter>\n");
        }
        put(o, "</function>\n</tool_call>");
    }
    put(o, "<|im_end|>\n");
    return SL_OK;
}

static sl_status render_qwen3_coder(const request *r, out *o, sl_err *e)
{
    const json_t *msgs = r->messages;
    size_t n = json_array_size(msgs);
    json_t *m0 = json_array_get(msgs, 0);
    int has_system = role_is(m0, "system");
    if (has_system) {
        put(o, "<|im_start|>system\n");
        put_slice(o, content_of(m0));
    } else if (r->tools) {
        put(o, "<|im_start|>system\nYou are Qwen, a helpful AI assistant that can interact with a "
               "computer to solve tasks.");
    }
    if (r->tools) {
        put(o, "\n\nYou have access to the following functions:\n\n<tools>");
        for (size_t i = 0; i < json_array_size(r->tools); i++) {
            sl_status s = coder_tool(json_array_get(r->tools, i), i, o, e);
            if (s) return s;
        }
        put(o,
            "\n</tools>\n\nIf you choose to call a function ONLY reply in the following format "
            "with NO suffix:\n\n<tool_call>\n<function=example_function_name>\n"
            "<parameter=example_parameter_1>\nvalue_1\n</parameter>\n"
            "<parameter=example_parameter_2>\nThis is the value for the second parameter\n"
            "that can span\nmultiple lines\n</parameter>\n</function>\n</tool_call>\n\n"
            "<IMPORTANT>\nReminder:\n- Function calls MUST follow the specified format: an inner "
            "<function=...></function> block must be nested within <tool_call></tool_call> XML "
            "tags\n- Required parameters MUST be specified\n- You may provide optional reasoning "
            "for your function call in natural language BEFORE the function call, but NOT after\n"
            "- If there is no function call available, answer the question like normal with your "
            "current knowledge and do not tell the user about function calls\n</IMPORTANT>");
    }
    if (has_system || r->tools) put(o, "<|im_end|>\n");

    size_t first =
        has_system ? 1 : 0; /* the template loops over messages[1:] after a system turn */
    for (size_t i = first; i < n; i++) {
        json_t *m = json_array_get(msgs, i);
        json_t *calls = json_object_get(m, "tool_calls");
        if (role_is(m, "assistant") && json_array_size(calls) > 0) {
            sl_status s = coder_tool_calls(m, i, o, e);
            if (s) return s;
        } else if (role_is(m, "tool")) {
            if (i > first && !role_is(json_array_get(msgs, i - 1), "tool"))
                put(o, "<|im_start|>user\n");
            put(o, "<tool_response>\n");
            put_slice(o, content_of(m));
            put(o, "\n</tool_response>\n");
            if (i + 1 == n || !role_is(json_array_get(msgs, i + 1), "tool")) put(o, "<|im_end|>\n");
        } else { /* user, system, assistant and unknown roles all render alike */
            put(o, "<|im_start|>");
            put_slice(o, role_of(m));
            put(o, "\n");
            put_slice(o, content_of(m));
            put(o, "<|im_end|>\n");
        }
    }
    if (r->add_generation_prompt) put(o, "<|im_start|>assistant\n");
    return SL_OK;
}

sl_status sl_chat_template_render(sl_chat_template_family f, const json_t *body, sl_buf *dst,
                                  sl_tok_spans *literal, sl_err *e)
{
    request r;
    sl_status s = request_init(&r, f, body, e);
    if (s) return s;
    out o = {dst, literal, sl_buf_reserve(dst, 4096)};
    s = f == SL_CHAT_TEMPLATE_FAMILY_QWEN3 ? render_qwen3(&r, &o, e)
                                           : render_qwen3_coder(&r, &o, e);
    json_decref(r.messages);
    if (s == SL_OK && o.oom) s = sl_err_set(e, SL_ERR_NOMEM, "rendering the prompt: out of memory");
    return s;
}

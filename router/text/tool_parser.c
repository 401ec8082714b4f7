#include "tool_parser.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "pyjson.h"
#include "sl_buf.h"
#include "sl_rng.h"
#include "text_scan.h"

#define CALL_OPEN "<tool_call>"
#define CALL_CLOSE "</tool_call>"
#define FUNC_OPEN "<function="
#define FUNC_CLOSE "</function>"
#define PARAM_OPEN "<parameter="
#define PARAM_CLOSE "</parameter>"
#define NAME_MAX_LEN 256 /* a longer "<function=..." is not a tag */
#define TAG_MAX_LEN 12   /* longest closing tag: a search resumes this far back */

typedef enum state {
    STATE_TEXT,      /* content, watching for <tool_call> */
    STATE_CALL,      /* after <tool_call>: hermes JSON body, or coder <function=NAME> */
    STATE_PARAMS,    /* coder: between parameters */
    STATE_VALUE,     /* coder: inside <parameter=NAME> */
    STATE_CALL_END,  /* coder: after </function>, expecting </tool_call> */
} state;

/* What a state handler did with the held text. */
typedef enum step {
    STEP_MORE, /* made progress: run again */
    STEP_WAIT, /* needs more input */
    STEP_OOM,
} step;

struct sl_tool_parser {
    sl_tool_parser_kind kind;
    json_t *tools; /* reference held; NULL accepts any name */
    uint64_t seed;
    state state;
    sl_buf held;    /* fed text not yet resolved */
    size_t scanned; /* held bytes already searched for a closing tag (minus overlap) */
    sl_buf raw;     /* the open call's text so far, replayed as content if it fails */
    int ncalls;     /* calls started so far = index of the next */
    int nparams;    /* parameters sent for the open coder call */
    int after_call; /* whitespace that follows a call is dropped */
    int bare;       /* coder call opened by "<function=" without <tool_call> */
    char *func;     /* open coder call's function name */
    char *param;    /* open coder parameter's name */
};

sl_status sl_tool_parser_kind_parse(const char *name, sl_tool_parser_kind *out, sl_err *e)
{
    if (!strcmp(name, "qwen3_coder")) *out = SL_TOOL_PARSER_KIND_QWEN3_CODER;
    else if (!strcmp(name, "hermes") || !strcmp(name, "qwen25") || !strcmp(name, "qwen"))
        *out = SL_TOOL_PARSER_KIND_HERMES;
    else
        return sl_err_set(e, SL_ERR_INVALID,
                          "unknown tool-call parser '%s' (known: qwen3_coder, hermes, qwen25, qwen)",
                          name);
    return SL_OK;
}

sl_tool_parser *sl_tool_parser_new(sl_tool_parser_kind kind, const json_t *tools, uint64_t seed)
{
    sl_tool_parser *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->kind = kind;
    p->tools = json_is_array(tools) && json_array_size(tools) ? json_incref((json_t *)tools) : NULL;
    p->seed = seed;
    return p;
}

void sl_tool_parser_free(sl_tool_parser *p)
{
    if (!p) return;
    json_decref(p->tools);
    sl_buf_free(&p->held);
    sl_buf_free(&p->raw);
    free(p->func);
    free(p->param);
    free(p);
}

/* ---- tools and schemas ---- */

/* The function object of the request tool called name, or NULL. */
static const json_t *find_function(const sl_tool_parser *p, const char *name)
{
    size_t i;
    json_t *t;
    json_array_foreach(p->tools, i, t) {
        json_t *fn = json_object_get(t, "function") ? json_object_get(t, "function") : t;
        const char *n = json_string_value(json_object_get(fn, "name"));
        if (n && !strcmp(n, name)) return fn;
    }
    return NULL;
}

static int name_allowed(const sl_tool_parser *p, const char *name)
{
    return *name && (!p->tools || find_function(p, name));
}

/* JSON schema type of a parameter; for a type list, its first non-"null". */
static const char *param_type(const sl_tool_parser *p, const char *func, const char *param)
{
    const json_t *fn = p->tools ? find_function(p, func) : NULL;
    json_t *t = json_object_get(json_object_get(json_object_get(json_object_get(fn, "parameters"),
                                                                "properties"), param), "type");
    if (json_is_array(t)) {
        size_t i;
        json_t *x;
        json_array_foreach(t, i, x) {
            if (json_is_string(x) && strcmp(json_string_value(x), "null"))
                return json_string_value(x);
        }
        return NULL;
    }
    return json_string_value(t);
}

static int type_is(const char *type, const char *const *names, int prefix)
{
    for (; *names; names++)
        if (prefix ? !strncasecmp(type, *names, strlen(*names)) : !strcasecmp(type, *names))
            return 1;
    return 0;
}

/* A parameter's text -> JSON value by its schema type; text that does not
 * fit the type stays a string, so nothing the model wrote is lost. */
static json_t *convert_value(const char *type, const char *s, size_t n)
{
    static const char *const strings[] = {"string", "str", "text", "varchar", "char", "enum", NULL};
    static const char *const ints[] = {"int", "uint", "long", "short", "unsigned", NULL};
    static const char *const nums[] = {"num", "float", "double", "decimal", NULL};
    static const char *const bools[] = {"boolean", "bool", "binary", NULL};
    if (n == 4 && !strncasecmp(s, "null", 4)) return json_null();
    if (type && type_is(type, strings, 0)) return sl_pyjson_string(s, n);
    if (type && type_is(type, bools, 0)) {
        if (n == 4 && !strncasecmp(s, "true", 4)) return json_true();
        if (n == 5 && !strncasecmp(s, "false", 5)) return json_false();
        return sl_pyjson_string(s, n);
    }
    json_t *v = json_loadb(s, n, JSON_DECODE_ANY, NULL);
    int fits = !type ||
               !(type_is(type, ints, 1) || type_is(type, nums, 1)) || /* object, array, unknown */
               (type_is(type, ints, 1) ? json_is_integer(v) : json_is_number(v));
    if (v && fits) return v;
    json_decref(v);
    return sl_pyjson_string(s, n);
}

/* ---- emitting ---- */

static int start_call(sl_tool_parser *p, sl_deltas *out, const char *name)
{
    uint64_t a = sl_rng_mix(p->seed ^ sl_rng_mix((uint64_t)p->ncalls)), b = sl_rng_mix(a);
    char id[40];
    snprintf(id, sizeof id, "call_%016llx%08llx", (unsigned long long)a,
             (unsigned long long)(b >> 32));
    return sl_deltas_tool_start(out, p->ncalls, id, name);
}

static void end_call(sl_tool_parser *p)
{
    p->ncalls++;
    p->after_call = 1;
    p->state = STATE_TEXT;
    sl_buf_clear(&p->raw);
}

/* A call that turned out malformed: its text so far becomes content, and the
 * held text is read again as plain text. */
static step fail_call(sl_tool_parser *p, sl_deltas *out)
{
    if (sl_deltas_text(out, SL_DELTA_CONTENT, 0, p->raw.data, p->raw.len)) return STEP_OOM;
    sl_buf_clear(&p->raw);
    p->after_call = 0;
    p->state = STATE_TEXT;
    return STEP_MORE;
}

/* Searches held text for tag from where the last search of this state
 * stopped: a long value streamed in small chunks is scanned once, not once
 * per chunk. */
static const char *find_new(sl_tool_parser *p, const char *tag)
{
    return sl_scan_find(p->held.data + p->scanned, p->held.len - p->scanned, tag);
}

/* Nothing closed yet: the next search may start where a tag could still begin. */
static step wait_scanned(sl_tool_parser *p)
{
    p->scanned = p->held.len > TAG_MAX_LEN ? p->held.len - TAG_MAX_LEN : 0;
    return STEP_WAIT;
}

/* ---- states ---- */

static step on_text(sl_tool_parser *p, sl_deltas *out, int at_end)
{
    sl_buf *h = &p->held;
    if (p->after_call) {
        sl_scan_consume(h, sl_scan_lead_space(h->data, h->len));
        if (!h->len) return STEP_WAIT;
        p->after_call = 0;
    }
    /* Qwen3-Coder sometimes drops the <tool_call> wrapper: a bare
     * "<function=" opens a call too (taken with it, so a failed one moves on) */
    const char *s = h->data;
    const char *open = sl_scan_find(s, h->len, CALL_OPEN), *bare = NULL;
    size_t hold = at_end ? 0 : sl_scan_partial(s, h->len, CALL_OPEN);
    if (p->kind == SL_TOOL_PARSER_KIND_QWEN3_CODER) {
        bare = sl_scan_find(s, open ? (size_t)(open - s) : h->len, FUNC_OPEN);
        size_t fhold = at_end ? 0 : sl_scan_partial(s, h->len, FUNC_OPEN);
        hold = fhold > hold ? fhold : hold;
    }
    if (bare) open = bare;
    size_t end = open ? (size_t)(open - s) : h->len - hold;
    size_t text = end;
    /* whitespace before a call is dropped, so trailing whitespace waits */
    if (open || !at_end)
        while (text && sl_scan_space(s[text - 1])) text--;
    if (sl_deltas_text(out, SL_DELTA_CONTENT, 0, s, text)) return STEP_OOM;
    if (!open) {
        sl_scan_consume(h, text);
        return STEP_WAIT;
    }
    size_t taken = end + strlen(bare ? FUNC_OPEN : CALL_OPEN);
    if (sl_buf_append(&p->raw, s + text, taken - text)) return STEP_OOM;
    sl_scan_consume(h, taken);
    p->bare = bare != NULL;
    p->state = STATE_CALL;
    return STEP_MORE;
}

/* hermes: the JSON object between <tool_call> and </tool_call>. */
static step on_hermes_call(sl_tool_parser *p, sl_deltas *out, int at_end)
{
    sl_buf *h = &p->held;
    const char *close = find_new(p, CALL_CLOSE);
    if (!close && !at_end) return wait_scanned(p);
    size_t body = close ? (size_t)(close - h->data) : h->len;
    json_t *call = json_loadb(h->data, body, 0, NULL);
    json_t *name = json_object_get(call, "name"), *args = json_object_get(call, "arguments");
    if (!args) args = json_object_get(call, "parameters");
    int ok = json_is_string(name) && name_allowed(p, json_string_value(name)) &&
             (!args || json_is_object(args) || json_is_string(args));
    step r = STEP_MORE;
    if (!ok) {
        r = fail_call(p, out);
    } else {
        sl_buf text = {0};
        int oom = !args ? sl_buf_puts(&text, "{}")
                  : json_is_string(args) ? sl_buf_puts(&text, json_string_value(args))
                                         : sl_pyjson_dumps(&text, args);
        oom = oom || start_call(p, out, json_string_value(name)) ||
              sl_deltas_text(out, SL_DELTA_TOOL_ARGS, p->ncalls, text.data, text.len);
        sl_buf_free(&text);
        if (oom) r = STEP_OOM;
        else {
            sl_scan_consume(h, close ? body + strlen(CALL_CLOSE) : body);
            end_call(p);
        }
    }
    json_decref(call);
    return r;
}

/* Reads "TAG NAME>" at the start of held text: 1 with *name set (malloc'd)
 * and *taken the bytes used, 0 when more input may complete it, -1 when
 * held text cannot be such a tag. */
static int read_named_tag(const sl_buf *h, size_t from, const char *tag, int at_end, char **name,
                          size_t *taken)
{
    const char *s = h->data + from;
    size_t n = h->len - from, tl = strlen(tag);
    if (n < tl) return !at_end && sl_scan_is_prefix(s, n, tag) ? 0 : -1;
    if (memcmp(s, tag, tl)) return -1;
    const char *gt = sl_scan_find(s + tl, n - tl, ">");
    size_t limit = gt ? (size_t)(gt - s) : n;
    if (sl_scan_find(s + tl, limit - tl, "\n") || sl_scan_find(s + tl, limit - tl, "<") ||
        limit - tl > NAME_MAX_LEN)
        return -1;
    if (!gt) return at_end ? -1 : 0;
    const char *a = s + tl, *b = gt;
    while (a < b && sl_scan_space(*a)) a++;
    while (b > a && sl_scan_space(b[-1])) b--;
    if (!(*name = strndup(a, (size_t)(b - a)))) return -1;
    *taken = from + (size_t)(gt + 1 - s);
    return 1;
}

/* qwen3_coder: "<function=NAME>" after <tool_call> (whitespace allowed), or
 * the "NAME>" of a bare "<function=". */
static step on_coder_call(sl_tool_parser *p, sl_deltas *out, int at_end)
{
    sl_buf *h = &p->held;
    size_t ws = p->bare ? 0 : sl_scan_lead_space(h->data, h->len), taken;
    if (ws == h->len && !at_end) return STEP_WAIT;
    char *name = NULL;
    int got = read_named_tag(h, ws, p->bare ? "" : FUNC_OPEN, at_end, &name, &taken);
    if (got == 0) return STEP_WAIT;
    if (got < 0 || !name_allowed(p, name)) {
        free(name);
        return fail_call(p, out);
    }
    if (start_call(p, out, name)) {
        free(name);
        return STEP_OOM;
    }
    free(p->func);
    p->func = name;
    p->nparams = 0;
    sl_buf_clear(&p->raw);
    sl_scan_consume(h, taken);
    p->state = STATE_PARAMS;
    return STEP_MORE;
}

static int close_coder_call(sl_tool_parser *p, sl_deltas *out)
{
    const char *tail = p->nparams ? "}" : "{}";
    if (sl_deltas_text(out, SL_DELTA_TOOL_ARGS, p->ncalls, tail, strlen(tail))) return -1;
    end_call(p);
    return 0;
}

static step on_params(sl_tool_parser *p, sl_deltas *out, int at_end)
{
    sl_buf *h = &p->held;
    sl_scan_consume(h, sl_scan_lead_space(h->data, h->len));
    size_t taken;
    char *name = NULL;
    int got = read_named_tag(h, 0, PARAM_OPEN, at_end, &name, &taken);
    if (got > 0) {
        free(p->param);
        p->param = name;
        sl_scan_consume(h, taken);
        p->state = STATE_VALUE;
        return STEP_MORE;
    }
    if (h->len >= strlen(FUNC_CLOSE) && !memcmp(h->data, FUNC_CLOSE, strlen(FUNC_CLOSE))) {
        sl_scan_consume(h, strlen(FUNC_CLOSE));
        p->state = STATE_CALL_END;
        return STEP_MORE;
    }
    if (h->len >= strlen(CALL_CLOSE) && !memcmp(h->data, CALL_CLOSE, strlen(CALL_CLOSE))) {
        sl_scan_consume(h, strlen(CALL_CLOSE));
        return close_coder_call(p, out) ? STEP_OOM : STEP_MORE;
    }
    if (!h->len) {
        if (at_end && close_coder_call(p, out)) return STEP_OOM;
        return STEP_WAIT;
    }
    if (!at_end && (got == 0 || sl_scan_is_prefix(h->data, h->len, FUNC_CLOSE) ||
                    sl_scan_is_prefix(h->data, h->len, CALL_CLOSE)))
        return STEP_WAIT;
    /* stray text between parameters is not part of any value: skip to the next tag */
    const char *lt = sl_scan_find(h->data + 1, h->len - 1, "<");
    sl_scan_consume(h, lt ? (size_t)(lt - h->data) : h->len);
    return STEP_MORE;
}

/* A value ends at </parameter>, or where the model forgot it: at the next
 * <parameter=, </function> or </tool_call>. */
static step on_value(sl_tool_parser *p, sl_deltas *out, int at_end)
{
    static const char *const ends[] = {PARAM_CLOSE, PARAM_OPEN, FUNC_CLOSE, CALL_CLOSE, NULL};
    sl_buf *h = &p->held;
    const char *end = NULL, *hit;
    const char *const *which = NULL;
    for (const char *const *t = ends; *t; t++)
        if ((hit = find_new(p, *t)) && (!end || hit < end)) end = hit, which = t;
    if (!end && !at_end) return wait_scanned(p);
    size_t n = end ? (size_t)(end - h->data) : h->len;
    const char *v = h->data;
    size_t vn = n;
    if (vn && v[0] == '\n') v++, vn--;
    if (vn && v[vn - 1] == '\n') vn--;
    json_t *value = convert_value(param_type(p, p->func, p->param), v, vn);
    sl_buf frag = {0};
    json_t *key = sl_pyjson_string(p->param, strlen(p->param));
    int oom = !value || !key || sl_buf_puts(&frag, p->nparams ? ", " : "{") ||
              sl_pyjson_dumps(&frag, key) || sl_buf_puts(&frag, ": ") ||
              sl_pyjson_dumps(&frag, value) ||
              sl_deltas_text(out, SL_DELTA_TOOL_ARGS, p->ncalls, frag.data, frag.len);
    json_decref(value);
    json_decref(key);
    sl_buf_free(&frag);
    if (oom) return STEP_OOM;
    p->nparams++;
    sl_scan_consume(h, n + (which == &ends[0] ? strlen(PARAM_CLOSE) : 0));
    p->state = STATE_PARAMS;
    return STEP_MORE;
}

static step on_call_end(sl_tool_parser *p, sl_deltas *out, int at_end)
{
    sl_buf *h = &p->held;
    size_t ws = sl_scan_lead_space(h->data, h->len);
    if (sl_scan_is_prefix(h->data + ws, h->len - ws, CALL_CLOSE) &&
        h->len - ws < strlen(CALL_CLOSE) && !at_end)
        return STEP_WAIT;
    if (h->len - ws >= strlen(CALL_CLOSE) && !memcmp(h->data + ws, CALL_CLOSE, strlen(CALL_CLOSE)))
        sl_scan_consume(h, ws + strlen(CALL_CLOSE));
    return close_coder_call(p, out) ? STEP_OOM : STEP_MORE;
}

static sl_status run(sl_tool_parser *p, sl_deltas *out, int at_end, sl_err *e)
{
    if (sl_buf_reserve(&p->held, 0))
        return sl_err_set(e, SL_ERR_NOMEM, "tool-call parser: out of memory");
    for (;;) {
        step r = STEP_WAIT;
        switch (p->state) {
        case STATE_TEXT: r = on_text(p, out, at_end); break;
        case STATE_CALL:
            r = p->kind == SL_TOOL_PARSER_KIND_HERMES ? on_hermes_call(p, out, at_end)
                                                      : on_coder_call(p, out, at_end);
            break;
        case STATE_PARAMS: r = on_params(p, out, at_end); break;
        case STATE_VALUE: r = on_value(p, out, at_end); break;
        case STATE_CALL_END: r = on_call_end(p, out, at_end); break;
        }
        if (r == STEP_OOM) return sl_err_set(e, SL_ERR_NOMEM, "tool-call parser: out of memory");
        if (r == STEP_MORE) p->scanned = 0; /* held text or state changed */
        if (r == STEP_WAIT) return SL_OK;
    }
}

sl_status sl_tool_parser_feed(sl_tool_parser *p, const char *text, size_t len, sl_deltas *out,
                              sl_err *e)
{
    if (sl_buf_append(&p->held, text, len))
        return sl_err_set(e, SL_ERR_NOMEM, "tool-call parser: out of memory");
    return run(p, out, 0, e);
}

sl_status sl_tool_parser_finish(sl_tool_parser *p, sl_deltas *out, sl_err *e)
{
    return run(p, out, 1, e);
}

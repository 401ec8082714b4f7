/* constraint_tools.c: tool-call grammars (sl_constraint_tool_calls) in the exact text format
 * router/text/tool_parser.c reads back.
 *
 * Two things make a call grammar more than its format. First, the parser finds the end of a
 * call, a parameter or a value by searching for tags, so free text inside a call must never
 * spell one: strings and values are written through an automaton that avoids the tags
 * (sl_cg_free_text), and every other character class leaves out '<'. Second, the parser
 * converts what it read: hermes arguments and qwen3_coder JSON values go through jansson (no
 * \u0000, 64-bit integers, no real overflow: the schema converter's jansson mode), and a
 * qwen3_coder value is converted by the `type` its parameter declares (tool_parser.c
 * convert_value), so each parameter is written in the form that converts back to a value
 * of its schema. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "constraint.h"
#include "constraint_impl.h"
#include "pyjson.h"

#define TOOL_NAME_MAX 256 /* the parser's bound on a <function=...> or <parameter=...> name */

static const char *const hermes_tags[] = {"</tool_call>", NULL};
static const char *const coder_tags[] = {"</parameter>", "<parameter=", "</function>",
                                         "</tool_call>", NULL};

typedef struct tools {
    sl_cg *g;
    sl_tool_parser_kind kind;
    sl_cset no_nul;     /* every character but U+0000 (jansson refuses it in strings) */
    sl_cset name_chars; /* what a qwen3_coder parameter name may hold */
    sl_cspell json;     /* JSON strings in arguments and values */
    sl_cspell raw;      /* qwen3_coder raw text values */
    sl_cspell names;    /* qwen3_coder parameter names */
    sl_err *e;
} tools;

/* 1 when name can stand in a call: the parser trims blanks, ends a name at '>' and refuses
 * '<' and line breaks in it, and a JSON name must not spell the end tag. */
static int name_ok(const char *name)
{
    size_t n = strlen(name);
    if (!n || n > TOOL_NAME_MAX || name[0] == ' ' || name[n - 1] == ' ') return 0;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        if (*p < 0x20 || *p == 0x7F || *p == '<' || *p == '>') return 0;
    return 1;
}

static const json_t *function_of(const json_t *tool)
{
    const json_t *fn = json_object_get(tool, "function");
    return fn ? fn : tool;
}

/* ---- hermes: <tool_call>\n{"name": "NAME", "arguments": {...}}\n</tool_call> ---- */

static sl_status hermes_args(tools *t, const json_t *params, const char *where, sl_buf *out,
                             sl_err *e)
{
    if (!params) {
        sl_cg_put(t->g, out, "\"{}\"");
        return sl_cg_status(t->g, e);
    }
    sl_csch *s = sl_csch_new(t->g, params, &t->json, 1, where);
    if (!s) return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    sl_status st = sl_csch_object(s, params, out, e);
    sl_csch_free(s);
    return st;
}

/* ---- qwen3_coder: <parameter=P>\nVALUE\n</parameter>\n per parameter ---- */

/* The first non-null name in a schema's `type`, as convert_value reads it (no $ref followed),
 * or NULL; *several: more than one non-null type. */
static const char *declared_type(const json_t *p, int *several)
{
    const json_t *t = json_object_get(p, "type");
    *several = 0;
    if (json_is_string(t)) return json_string_value(t);
    const char *first = NULL;
    size_t i;
    json_t *x;
    json_array_foreach(t, i, x)
    {
        const char *n = json_string_value(x);
        if (!n || !strcmp(n, "null")) continue;
        if (first)
            *several = 1;
        else
            first = n;
    }
    return first;
}

/* Raw text: any, without the avoided tags, and not the word null (in any case) unless null is
 * a value the parameter allows (the parser reads it as null whatever the type). */
static void free_value(tools *t, int null_ok, sl_buf *out)
{
    static const char *const null_word[] = {"null"};
    sl_cg_put(t->g, out, sl_cg_free_text(t->g, &t->raw, null_word, null_ok ? 0 : 1, 1));
}

/* A string parameter's raw text: enum/const strings, a format, or free text (length and
 * pattern are not enforced here: constraint.h). */
static sl_status string_value(tools *t, sl_csch *s, const json_t *p, sl_buf *out, sl_err *e)
{
    int null_ok = (sl_csch_types(p) & SL_CT_NULL) != 0;
    const json_t *en = json_object_get(p, "enum"), *c = json_object_get(p, "const");
    if (en || c) {
        int n = 0;
        sl_buf alts = {0};
        for (size_t i = 0; i < (c ? 1 : json_array_size(en)); i++) {
            const json_t *v = c ? c : json_array_get(en, i);
            const char *txt = json_string_value(v);
            size_t len = json_string_length(v);
            if (json_is_null(v) && null_ok)
                txt = "null", len = 4;
            else if (!txt || strlen(txt) != len || !strcasecmp(txt, "null") ||
                     sl_cspell_tag_in(&t->raw, txt, len))
                continue; /* a value this format cannot carry back */
            if (n++) sl_cg_put(t->g, &alts, " | ");
            sl_cg_text(t->g, &alts, &t->raw, txt, len);
        }
        if (n) sl_cg_printf(t->g, out, n > 1 ? "( %s )" : "%s", alts.data);
        sl_buf_free(&alts);
        if (!n) return sl_err_set(e, SL_ERR_INVALID, "no `enum` value can be written as raw text");
        return sl_cg_status(t->g, e);
    }
    const char *fmt = json_string_value(json_object_get(p, "format"));
    const char *rule = fmt && !json_object_get(p, "pattern") ? sl_csch_format(s, fmt) : NULL;
    if (rule)
        sl_cg_printf(t->g, out, null_ok ? "( %s | \"null\" )" : "%s", rule);
    else
        free_value(t, null_ok, out);
    return sl_cg_status(t->g, e);
}

/* A parameter value in the form convert_value turns back into a value of p: raw text for a
 * declared string, JSON for another single declared type or none (the parser then parses
 * JSON), free text when p declares several types (convert_value would use only the first). */
static sl_status coder_value(tools *t, sl_csch *s, const json_t *p, sl_buf *out, sl_err *e)
{
    int several, plain = json_is_true(p) || json_is_object(p);
    const char *type = declared_type(p, &several), *k;
    json_t *x;
    json_object_foreach((json_t *)p, k, x)
    {
        plain &= sl_csch_annotation(k); /* only annotations: any value, so any text */
    }
    if (several || plain) {
        free_value(t, 1, out);
        return sl_cg_status(t->g, e);
    }
    if (type && !strcmp(type, "string")) {
        sl_buf b = {0};
        sl_status st = string_value(t, s, p, &b, e);
        if (st == SL_OK)
            sl_cg_put(t->g, out, b.data ? b.data : "");
        else
            free_value(t, (sl_csch_types(p) & SL_CT_NULL) != 0, out);
        sl_buf_free(&b);
        return sl_cg_status(t->g, e);
    }
    return sl_csch_value(s, p, out, e);
}

static sl_status coder_params(tools *t, const json_t *params, const char *where, sl_buf *out,
                              sl_err *e)
{
    if (!params) return SL_OK; /* no parameters: the call takes none */
    sl_csch *s = sl_csch_new(t->g, params, &t->json, 1, where);
    if (!s) return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    sl_cprop *p = NULL;
    size_t n = 0;
    const json_t *extra = NULL, *obj = sl_csch_object_schema(s, params, e);
    sl_status st = obj ? sl_csch_props(s, obj, &p, &n, &extra, e) : SL_ERR_INVALID;
    char **items = calloc(n + 1, sizeof *items);
    int *req = calloc(n + 1, sizeof *req);
    const char **names = calloc(n + 1, sizeof *names);
    if (st == SL_OK && (!items || !req || !names))
        st = sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    sl_buf kv = {0}, tag = {0};
    for (size_t i = 0; i < n && st == SL_OK; i++) {
        if (!name_ok(p[i].name)) {
            st = sl_err_set(e, SL_ERR_INVALID, "parameter name `%s` cannot be written as a tag",
                            p[i].name);
            break;
        }
        sl_buf_clear(&kv);
        sl_buf_clear(&tag);
        sl_cg_printf(t->g, &tag, "<parameter=%s>\n", p[i].name);
        sl_cg_text(t->g, &kv, &t->raw, tag.data, tag.len);
        sl_cg_put(t->g, &kv, " ");
        size_t mark = sl_cg_mark(t->g), len = kv.len;
        if ((st = coder_value(t, s, p[i].schema, &kv, e)) && st != SL_ERR_NOMEM &&
            sl_cg_status(t->g, NULL) == SL_OK) {
            /* a schema the converter refuses: this parameter takes free text (constraint.h) */
            sl_csch_rollback(s, mark);
            kv.data[kv.len = len] = 0;
            free_value(t, 1, &kv);
            st = SL_OK;
        }
        if (st) break;
        sl_cg_put(t->g, &kv, " \"\\n</parameter>\\n\"");
        if (!(items[i] = strdup(kv.data))) st = sl_err_set(e, SL_ERR_NOMEM, "out of memory");
        req[i] = p[i].required;
        names[i] = p[i].name;
    }
    sl_buf ex = {0};
    if (st == SL_OK && extra) {
        /* another parameter: a name that is none of the listed ones (nor empty) */
        names[n] = "";
        sl_cg_printf(t->g, &ex, "\"<parameter=\" %s \">\\n\" ",
                     sl_cg_free_text(t->g, &t->names, names, n + 1, 0));
        if (json_is_true(extra))
            free_value(t, 1, &ex);
        else
            st = sl_csch_value(s, extra, &ex, e); /* unknown names: JSON when it parses */
        sl_cg_put(t->g, &ex, " \"\\n</parameter>\\n\"");
    }
    if (st == SL_OK)
        sl_cg_seq(t->g, "params", (const char *const *)items, req, n, extra ? ex.data : NULL, "",
                  out);
    for (size_t i = 0; items && i < n; i++)
        free(items[i]);
    free(items);
    free(req);
    free(names);
    free(p);
    sl_buf_free(&kv);
    sl_buf_free(&tag);
    sl_buf_free(&ex);
    sl_csch_free(s);
    return st ? st : sl_cg_status(t->g, e);
}

/* Any parameters with free values: a tool whose schema the converter cannot take. */
static void coder_any_params(tools *t, sl_buf *out)
{
    static const char *const empty[] = {""};
    sl_cg_printf(t->g, out, "( \"<parameter=\" %s \">\\n\" ",
                 sl_cg_free_text(t->g, &t->names, empty, 1, 0));
    free_value(t, 1, out);
    sl_cg_put(t->g, out, " \"\\n</parameter>\\n\" )*");
}

/* ---- calls ---- */

/* One call to fn; a schema the converter refuses falls back to free arguments. */
static sl_status one_call(tools *t, const json_t *fn, size_t index, sl_buf *out)
{
    const char *name = json_string_value(json_object_get(fn, "name"));
    const json_t *params = json_object_get(fn, "parameters");
    char where[64];
    snprintf(where, sizeof where, "tools[%zu].function.parameters#", index);
    sl_buf args = {0};
    sl_err ignored = {0};
    size_t mark = sl_cg_mark(t->g);
    sl_status st = t->kind == SL_TOOL_PARSER_KIND_HERMES
                       ? hermes_args(t, params, where, &args, &ignored)
                       : coder_params(t, params, where, &args, &ignored);
    if (st && sl_cg_status(t->g, NULL) == SL_OK && st != SL_ERR_NOMEM) {
        /* unsupported schema: this tool's arguments are not constrained (constraint.h) */
        sl_cg_rollback(t->g, mark);
        sl_buf_clear(&args);
        if (t->kind == SL_TOOL_PARSER_KIND_HERMES) {
            sl_csch *s = sl_csch_new(t->g, NULL, &t->json, 1, where);
            if (s)
                sl_cg_put(t->g, &args, sl_csch_any_object(s));
            else
                sl_cg_oom(t->g);
            sl_csch_free(s);
        } else {
            coder_any_params(t, &args);
        }
        st = SL_OK;
    }
    if (st == SL_OK) {
        sl_buf body = {0};
        if (t->kind == SL_TOOL_PARSER_KIND_HERMES) {
            /* as the chat template writes it: {"name": "NAME", "arguments": ...} */
            json_t *js = json_string(name);
            sl_buf head = {0};
            if (!js || sl_buf_puts(&head, "<tool_call>\n{\"name\": ") ||
                sl_pyjson_dumps(&head, js) || sl_buf_puts(&head, ", \"arguments\": "))
                sl_cg_oom(t->g);
            else
                sl_cg_text(t->g, &body, &t->raw, head.data, head.len);
            sl_cg_put(t->g, &body, " ");
            sl_cg_put(t->g, &body, args.data ? args.data : "\"{}\"");
            sl_cg_put(t->g, &body, " \"}\\n</tool_call>\"");
            sl_buf_free(&head);
            json_decref(js);
        } else {
            sl_cg_put(t->g, &body, "\"<tool_call>\\n<function=\" ");
            sl_cg_text(t->g, &body, &t->raw, name, strlen(name));
            sl_cg_put(t->g, &body, " \">\\n\" ");
            if (args.len) {
                sl_cg_put(t->g, &body, args.data);
                sl_cg_put(t->g, &body, " ");
            }
            sl_cg_put(t->g, &body, "\"</function>\\n</tool_call>\"");
        }
        char hint[48];
        snprintf(hint, sizeof hint, "call-%s", name);
        sl_cg_put(t->g, out, sl_cg_rule(t->g, hint, body.data ? body.data : ""));
        sl_buf_free(&body);
    }
    sl_buf_free(&args);
    return st ? st : sl_cg_status(t->g, t->e);
}

sl_status sl_constraint_tool_calls(sl_tool_parser_kind kind, const json_t *tools_json,
                                   const char *only, int parallel, sl_buf *out, sl_err *e)
{
    size_t n = json_array_size(tools_json), picked = 0;
    if (!n) return sl_err_set(e, SL_ERR_INVALID, "tool calls need a non-empty `tools` array");
    for (size_t i = 0; i < n; i++) {
        const char *name =
            json_string_value(json_object_get(function_of(json_array_get(tools_json, i)), "name"));
        if (!name || !name_ok(name) ||
            (kind == SL_TOOL_PARSER_KIND_QWEN3_CODER && strchr(name, '\n')))
            return sl_err_set(e, SL_ERR_INVALID,
                              "tools[%zu].function.name must be a non-empty name without '<', '>', "
                              "control characters or surrounding blanks",
                              i);
        picked += !only || !strcmp(name, only);
    }
    if (only && !picked)
        return sl_err_set(e, SL_ERR_INVALID,
                          "tool_choice names function `%s`, which is not in `tools`", only);
    tools t = {.kind = kind, .e = e};
    if (!(t.g = sl_cg_new())) return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    sl_cset_add(&t.no_nul, 1, SL_CP_MAX);
    sl_cset_add(&t.name_chars, 0x21, SL_CP_MAX);
    sl_cset_remove(&t.name_chars, '<', '<');
    sl_cset_remove(&t.name_chars, '>', '>');
    sl_cset_remove(&t.name_chars, 0x7F, 0x7F);
    const char *const *tags = kind == SL_TOOL_PARSER_KIND_HERMES ? hermes_tags : coder_tags;
    t.json = (sl_cspell){1, &t.no_nul, tags};
    t.raw = (sl_cspell){0, &t.no_nul, tags};
    t.names = (sl_cspell){0, &t.name_chars, NULL};
    sl_status st =
        t.no_nul.oom || t.name_chars.oom ? sl_err_set(e, SL_ERR_NOMEM, "out of memory") : SL_OK;
    sl_buf calls = {0};
    int k = 0;
    for (size_t i = 0; i < n && st == SL_OK; i++) {
        const json_t *fn = function_of(json_array_get(tools_json, i));
        if (only && strcmp(json_string_value(json_object_get(fn, "name")), only)) continue;
        if (k++) sl_cg_put(t.g, &calls, " | ");
        st = one_call(&t, fn, i, &calls);
    }
    if (st == SL_OK) {
        const char *call = k > 1 ? sl_cg_rule(t.g, "call", calls.data) : calls.data;
        sl_buf root = {0};
        /* parallel calls: one per line, as the chat templates separate them */
        if (parallel)
            sl_cg_printf(t.g, &root, "%s ( \"\\n\" %s )*", call, call);
        else
            sl_cg_put(t.g, &root, call);
        st = sl_cg_write(t.g, root.data ? root.data : "", out, e);
        sl_buf_free(&root);
    }
    sl_buf_free(&calls);
    sl_cset_free(&t.no_nul);
    sl_cset_free(&t.name_chars);
    sl_cg_free(t.g);
    return st;
}

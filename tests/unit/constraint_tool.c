/* constraint_tool: a test-only front end to router/text/constraint.h and the grammar engine,
 * for tests/py/test_constraint_schema.py (Python's jsonschema is the oracle there) and for
 * looking at grammars by hand.
 *
 *   constraint_tool schema FILE              GBNF of the JSON Schema in FILE
 *   constraint_tool regex PATTERN            GBNF of the regex
 *   constraint_tool tools KIND FILE [ONLY] [PARALLEL]   GBNF of tool calls (KIND: hermes,
 *                                            qwen3_coder; FILE: the tools array; ONLY: a name
 *                                            or "-"; PARALLEL: 0 or 1, default 1)
 *   constraint_tool check GBNF_FILE          reads JSON strings, one per line, from stdin and
 *                                            prints 1 when the grammar accepts the whole text,
 *                                            else 0
 *   constraint_tool parse KIND FILE          reads JSON strings likewise and prints, one line
 *                                            each, the assistant message sl_tool_parser makes
 *                                            of them with the tools in FILE
 * A failing conversion prints "error: <status>: <message>" and exits 2. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "constraint.h"
#include "grammar.h"
#include "sl_file.h"
#include "tool_parser.h"

static json_t *load(const char *path)
{
    json_error_t je;
    json_t *v = json_load_file(path, JSON_DECODE_ANY, &je);
    if (!v) fprintf(stderr, "%s:%d: %s\n", path, je.line, je.text);
    return v;
}

static int finish(sl_status st, sl_buf *g, const sl_err *e)
{
    if (st) {
        printf("error: %s: %s\n", sl_status_str(st), e->msg);
        sl_buf_free(g);
        return 2;
    }
    fputs(g->data ? g->data : "", stdout);
    sl_buf_free(g);
    return 0;
}

static int check(const char *path)
{
    char *text = NULL;
    size_t len = 0;
    sl_err e = {0};
    sl_gram *g = NULL;
    if (sl_file_read(path, &text, &len, &e) || sl_gram_compile(text, len, &g, &e)) {
        printf("error: %s\n", e.msg);
        free(text);
        return 2;
    }
    free(text);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, stdin)) > 0) {
        json_t *s = json_loadb(line, (size_t)n, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        sl_gram_matcher *m = NULL;
        int ok = json_is_string(s) && sl_gram_matcher_new(g, NULL, &m, &e) == SL_OK &&
                 sl_gram_matcher_accept_bytes(m, json_string_value(s), json_string_length(s), &e) ==
                     SL_OK &&
                 sl_gram_matcher_can_end(m);
        printf("%d\n", ok);
        fflush(stdout);
        sl_gram_matcher_free(m);
        json_decref(s);
    }
    free(line);
    sl_gram_free(g);
    return 0;
}

static int parse(const char *kind_name, const char *path)
{
    sl_tool_parser_kind kind;
    sl_err e = {0};
    json_t *tools = load(path);
    if (!tools || sl_tool_parser_kind_parse(kind_name, &kind, &e)) {
        fprintf(stderr, "%s\n", e.msg);
        json_decref(tools);
        return 1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, stdin)) > 0) {
        json_t *s = json_loadb(line, (size_t)n, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        sl_tool_parser *p = sl_tool_parser_new(kind, tools, 1);
        sl_deltas d = {0};
        json_t *msg = NULL;
        if (p && json_is_string(s) &&
            sl_tool_parser_feed(p, json_string_value(s), json_string_length(s), &d, &e) == SL_OK &&
            sl_tool_parser_finish(p, &d, &e) == SL_OK)
            msg = sl_deltas_message(&d);
        char *out = msg ? json_dumps(msg, JSON_COMPACT) : NULL;
        printf("%s\n", out ? out : "null");
        fflush(stdout);
        free(out);
        json_decref(msg);
        sl_deltas_free(&d);
        sl_tool_parser_free(p);
        json_decref(s);
    }
    free(line);
    json_decref(tools);
    return 0;
}

int main(int argc, char **argv)
{
    sl_buf g = {0};
    sl_err e = {0};
    if (argc >= 3 && !strcmp(argv[1], "schema")) {
        json_t *s = load(argv[2]);
        if (!s) return 1;
        int rc = finish(sl_constraint_json_schema(s, &g, &e), &g, &e);
        json_decref(s);
        return rc;
    }
    if (argc >= 3 && !strcmp(argv[1], "regex"))
        return finish(sl_constraint_regex(argv[2], strlen(argv[2]), &g, &e), &g, &e);
    if (argc >= 4 && !strcmp(argv[1], "tools")) {
        sl_tool_parser_kind kind;
        json_t *t = load(argv[3]);
        if (!t || sl_tool_parser_kind_parse(argv[2], &kind, &e)) {
            fprintf(stderr, "%s\n", e.msg);
            json_decref(t);
            return 1;
        }
        const char *only = argc >= 5 && strcmp(argv[4], "-") ? argv[4] : NULL;
        int parallel = argc >= 6 ? atoi(argv[5]) : 1;
        int rc = finish(sl_constraint_tool_calls(kind, t, only, parallel, &g, &e), &g, &e);
        json_decref(t);
        return rc;
    }
    if (argc >= 3 && !strcmp(argv[1], "check")) return check(argv[2]);
    if (argc >= 4 && !strcmp(argv[1], "parse")) return parse(argv[2], argv[3]);
    fprintf(stderr, "usage: constraint_tool schema FILE | regex PATTERN | tools KIND FILE [ONLY] "
                    "[PARALLEL] | check GBNF_FILE | parse KIND FILE\n");
    return 1;
}

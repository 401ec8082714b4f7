/* constraint converters (router/text/constraint.h), run through the grammar engine
 * (common/grammar): schemas, regexes and tool calls accept what they should and refuse the
 * rest; unsupported input fails with a message naming it; tool-call texts the grammar accepts
 * parse back (sl_tool_parser) into the intended calls; and whatever a converter returns,
 * even for mangled input, compiles. tests/py/test_constraint_schema.py adds jsonschema as an
 * oracle on sampled texts. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "constraint.h"
#include "grammar.h"
#include "output_parser.h"
#include "sl_rng.h"
#include "sl_test.h"
#include "tool_parser.h"

static sl_gram *compile(const sl_buf *b, const char *what)
{
    sl_gram *g = NULL;
    sl_err e = {0};
    CHECK_MSG(b->data && sl_gram_compile(b->data, b->len, &g, &e) == SL_OK, "%s: %s\n%s", what,
              e.msg, b->data ? b->data : "");
    return g;
}

static int accepts(sl_gram *g, const char *text)
{
    sl_gram_matcher *m;
    sl_err e = {0};
    if (!g || sl_gram_matcher_new(g, NULL, &m, &e)) return -1;
    int ok = sl_gram_matcher_accept_bytes(m, text, strlen(text), &e) == SL_OK &&
             sl_gram_matcher_can_end(m);
    sl_gram_matcher_free(m);
    return ok;
}

static json_t *parse_json(const char *text)
{
    json_error_t je;
    json_t *v = json_loads(text, JSON_DECODE_ANY, &je);
    CHECK_MSG(v, "bad test JSON %s: %s", text, je.text);
    return v;
}

/* ---- JSON Schema ---- */

typedef struct scase {
    const char *schema;
    const char *yes[10];
    const char *no[10];
} scase;

static const scase schemas[] = {
    {"{\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"integer\"}, \"b\": {\"type\": "
     "\"string\"}}, \"required\": [\"b\"], \"additionalProperties\": false}",
     {"{\"b\": \"x\"}", "{\"a\": -12, \"b\": \"\"}",
      "{ \"a\" : 0 ,\n  \"b\": \"\\n\\\"\\u0001\" }\n", "{\"b\": \"\xc3\xa9\xf0\x9f\x98\x80\"}"},
     {"{}", "{\"a\": 1}", "{\"b\": \"x\", \"a\": 1}", "{\"b\": \"x\", \"c\": 1}",
      "{\"a\": 1.5, \"b\": \"x\"}", "{\"b\": \"\\u00e9\"}", "{\"b\": \"\\u001F\"}",
      "{\"b\": \"\x01\"}", " {\"b\": \"x\"}", "{\"b\":      \"x\"}"}},
    /* extra keys after the listed ones, never a listed name again */
    {"{\"properties\": {\"id\": {\"type\": \"integer\"}}, \"type\": \"object\"}",
     {"{\"id\": 1, \"x\": [true, null]}", "{\"idx\": 1}", "{\"i\": {}}", "{}"},
     {"{\"id\": 1, \"id\": 2}", "{\"x\": 1, \"id\": 2}", "{\"id\": \"1\"}"}},
    {"{\"type\": \"array\", \"prefixItems\": [{\"const\": \"t\"}, {\"type\": \"boolean\"}], "
     "\"items\": "
     "{\"type\": \"null\"}, \"minItems\": 1, \"maxItems\": 3}",
     {"[\"t\"]", "[\"t\", true]", "[\"t\", false, null]"},
     {"[]", "[\"u\"]", "[\"t\", null]", "[\"t\", true, null, null]"}},
    {"{\"type\": \"integer\", \"exclusiveMinimum\": -3, \"maximum\": 120}",
     {"-2", "0", "7", "99", "120"},
     {"-3", "121", "007", "-0", "1.0", "1e2", "1000"}},
    {"{\"type\": \"integer\"}", {"0", "-0", "123456789012345678901234567890"}, {"01", "+1", "1.5"}},
    {"{\"type\": \"number\", \"minimum\": 0, \"maximum\": 1}",
     {"0", "1", "0.25", "1.000", "0.0"},
     {"-0.5", "1.01", "2", "1e-1", "-0", ".5"}},
    {"{\"type\": \"string\", \"format\": \"date\"}",
     {"\"2024-02-29\"", "\"2000-02-29\"", "\"1999-12-31\""},
     {"\"2023-02-29\"", "\"1900-02-29\"", "\"2024-04-31\"", "\"0000-01-01\"", "\"2024-1-01\""}},
    {"{\"type\": \"string\", \"format\": \"date-time\"}",
     {"\"2024-02-29T23:59:59Z\"", "\"2024-02-29T00:00:00.123+05:30\""},
     {"\"2024-02-29 23:59:59Z\"", "\"2024-02-29T24:00:00Z\"", "\"2024-02-29T23:59:59\""}},
    {"{\"type\": \"string\", \"format\": \"ipv4\"}",
     {"\"0.0.0.0\"", "\"255.255.255.255\""},
     {"\"256.0.0.0\"", "\"01.2.3.4\"", "\"1.2.3\""}},
    {"{\"type\": \"string\", \"format\": \"uuid\"}",
     {"\"123e4567-e89b-12d3-A456-426614174000\""},
     {"\"123e4567e89b12d3a456426614174000\"", "\"123e4567-e89b-12d3-a456-42661417400g\""}},
    {"{\"type\": \"string\", \"pattern\": \"^[a-z]+-\\\\d{2}$\"}",
     {"\"ab-12\""},
     {"\"ab-1\"", "\"Ab-12\"", "\"x ab-12\""}},
    {"{\"type\": \"string\", \"pattern\": \"b\\\"c\"}",
     {"\"b\\\"c\"", "\"ab\\\"cd\""},
     {"\"bc\"", "\"b\\\\\\\"c\""}},
    {"{\"type\": \"string\", \"minLength\": 2, \"maxLength\": 3}",
     {"\"ab\"", "\"\\n\\t\"", "\"\xc3\xa9\xc3\xa9\xc3\xa9\""},
     {"\"a\"", "\"abcd\"", "\"\\\\\""}},
    {"{\"enum\": [\"a\", 1, null, [1, {\"k\": true}]]}",
     {"\"a\"", "1", "null", "[1, {\"k\": true}]", "[ 1 ,{ \"k\" :true } ]"},
     {"\"b\"", "1.0", "[1]", "true"}},
    {"{\"anyOf\": [{\"type\": \"string\", \"maxLength\": 1}, {\"type\": \"null\"}]}",
     {"\"a\"", "null"},
     {"\"ab\"", "0"}},
    {"{\"oneOf\": [{\"type\": \"object\", \"properties\": {\"k\": {\"const\": 1}}, \"required\": "
     "[\"k\"]},"
     " {\"type\": \"object\", \"properties\": {\"k\": {\"const\": 2}}, \"required\": [\"k\"]}]}",
     {"{\"k\": 1}", "{\"k\": 2, \"x\": 0}"},
     {"{\"k\": 3}", "{}"}},
    /* recursion through $ref, and to the root */
    {"{\"$defs\": {\"list\": {\"type\": [\"object\", \"null\"], \"properties\": {\"v\": {\"type\": "
     "\"integer\"}, \"next\": {\"$ref\": \"#/$defs/list\"}}, \"required\": [\"v\", \"next\"], "
     "\"additionalProperties\": false}}, \"$ref\": \"#/$defs/list\"}",
     {"null", "{\"v\": 1, \"next\": {\"v\": 2, \"next\": null}}"},
     {"{\"v\": 1}", "{\"v\": 1, \"next\": {\"v\": 2}}"}},
    {"{\"type\": [\"array\", \"string\"], \"items\": {\"$ref\": \"#\"}}",
     {"\"x\"", "[[\"a\", []], \"b\"]"},
     {"[1]", "[[null]]"}},
    /* no type: every type its keywords leave */
    {"{\"maxLength\": 1, \"required\": [\"q\"]}",
     {"\"a\"", "5", "[\"long\"]", "{\"q\": 1}", "true"},
     {"\"ab\"", "{}"}},
    {"true", {"1", "{\"a\": [null]}", "\"s\""}, {"", "{", "'s'"}},
};

typedef struct ecase {
    const char *schema;
    sl_status code;
    const char *msg; /* a part of the message */
} ecase;

static const ecase schema_errors[] = {
    {"{\"type\": \"object\", \"properties\": {\"x\": {\"not\": {}}}}", SL_ERR_INVALID,
     "unsupported keyword `not` at #/properties/x"},
    {"{\"items\": {\"uniqueItems\": true}}", SL_ERR_INVALID,
     "unsupported keyword `uniqueItems` at #/items"},
    {"{\"properties\": {\"a~b/c\": {\"nullable\": true}}}", SL_ERR_INVALID,
     "at #/properties/a~0b~1c"},
    {"{\"type\": \"string\", \"pattern\": \"a(?=b)\"}", SL_ERR_INVALID,
     "`pattern` at #: regex: unsupported lookahead at offset 1"},
    {"{\"$defs\": {\"a\": {\"anyOf\": [{\"$ref\": \"#/$defs/a\"}, {\"type\": \"null\"}]}}, "
     "\"$ref\": "
     "\"#/$defs/a\"}",
     SL_ERR_INVALID, "refers back to itself before any input"},
    {"{\"$ref\": \"https://example.com/s.json\"}", SL_ERR_INVALID, "unsupported `$ref`"},
    {"{\"$ref\": \"#/$defs/missing\"}", SL_ERR_INVALID, "does not resolve"},
    {"{\"$ref\": \"#/$defs/a\", \"type\": \"object\", \"$defs\": {\"a\": {}}}", SL_ERR_INVALID,
     "`$ref` next to `type`"},
    {"{\"oneOf\": [{\"type\": \"string\"}, {\"type\": \"string\", \"maxLength\": 3}]}",
     SL_ERR_INVALID, "`oneOf` whose branches 0 and 1 may overlap"},
    {"{\"oneOf\": [{\"type\": \"integer\"}, {\"type\": \"number\"}]}", SL_ERR_INVALID,
     "may overlap"},
    {"{\"allOf\": [{\"type\": \"string\"}, {\"maxLength\": 3}]}", SL_ERR_INVALID,
     "`allOf` with more than one schema"},
    {"{\"type\": \"object\", \"anyOf\": [{}]}", SL_ERR_INVALID, "`anyOf` next to `type`"},
    {"{\"enum\": [1, 2], \"minimum\": 2}", SL_ERR_INVALID, "`enum`/`const` next to `minimum`"},
    {"{\"type\": \"string\", \"enum\": [1, 2]}", SL_ERR_INVALID, "no value of `enum` has a type"},
    {"{\"type\": \"number\", \"exclusiveMinimum\": 0}", SL_ERR_INVALID,
     "cannot be enforced exactly"},
    {"{\"type\": \"number\", \"maximum\": 0.5}", SL_ERR_INVALID, "must be an integer"},
    {"{\"type\": \"integer\", \"minimum\": 5, \"exclusiveMaximum\": 5}", SL_ERR_INVALID,
     "no integer satisfies"},
    {"{\"type\": \"integer\", \"minimum\": 1e300}", SL_ERR_INVALID, "beyond"},
    {"{\"type\": \"string\", \"format\": \"hostname\"}", SL_ERR_INVALID,
     "unsupported format `hostname`"},
    {"{\"type\": \"string\", \"format\": \"date\", \"maxLength\": 10}", SL_ERR_INVALID,
     "`format` together with"},
    {"{\"type\": \"string\", \"pattern\": \"a\", \"minLength\": 1}", SL_ERR_INVALID,
     "`pattern` together with"},
    {"{\"type\": \"string\", \"minLength\": 3, \"maxLength\": 2}", SL_ERR_INVALID,
     "`minLength` is above `maxLength`"},
    {"{\"type\": \"string\", \"maxLength\": -1}", SL_ERR_INVALID, "must be a non-negative integer"},
    {"{\"type\": \"string\", \"maxLength\": 100000}", SL_ERR_LIMIT, "above 10000"},
    {"{\"type\": \"array\", \"items\": [{}]}", SL_ERR_INVALID, "`items` as an array"},
    {"{\"type\": \"array\", \"items\": false, \"minItems\": 1}", SL_ERR_INVALID,
     "`minItems` is above"},
    {"{\"type\": \"object\", \"required\": [\"a\"], \"additionalProperties\": false}",
     SL_ERR_INVALID, "required property `a` is not in `properties`"},
    {"{\"type\": \"object\", \"required\": \"a\"}", SL_ERR_INVALID, "`required` must be an array"},
    {"{\"type\": \"bogus\"}", SL_ERR_INVALID, "`type` must be one of"},
    {"{\"type\": []}", SL_ERR_INVALID, "`type` must be one of"},
    {"false", SL_ERR_INVALID, "schema `false` allows no value at #"},
    {"{\"properties\": {\"a\": false}}", SL_ERR_INVALID,
     "schema `false` allows no value at #/properties/a"},
    {"5", SL_ERR_INVALID, "a schema must be an object or a boolean"},
};

static void test_schemas(void)
{
    for (size_t i = 0; i < sizeof schemas / sizeof schemas[0]; i++) {
        const scase *c = &schemas[i];
        json_t *s = parse_json(c->schema);
        sl_buf b = {0};
        sl_err e = {0};
        sl_status st = sl_constraint_json_schema(s, &b, &e);
        CHECK_MSG(st == SL_OK, "%s: %s", c->schema, e.msg);
        sl_gram *g = st == SL_OK ? compile(&b, c->schema) : NULL;
        for (int k = 0; g && k < 10 && c->yes[k]; k++)
            CHECK_MSG(accepts(g, c->yes[k]) == 1, "%s should accept %s\n%s", c->schema, c->yes[k],
                      b.data);
        for (int k = 0; g && k < 10 && c->no[k]; k++)
            CHECK_MSG(accepts(g, c->no[k]) == 0, "%s should refuse %s\n%s", c->schema, c->no[k],
                      b.data);
        sl_gram_free(g);
        sl_buf_free(&b);
        json_decref(s);
    }
    for (size_t i = 0; i < sizeof schema_errors / sizeof schema_errors[0]; i++) {
        const ecase *c = &schema_errors[i];
        json_t *s = parse_json(c->schema);
        sl_buf b = {0};
        sl_err e = {0};
        sl_status st = sl_constraint_json_schema(s, &b, &e);
        CHECK_MSG(st == c->code && strstr(e.msg, c->msg), "%s: got %s \"%s\", want %s \"%s\"",
                  c->schema, sl_status_str(st), e.msg, sl_status_str(c->code), c->msg);
        sl_buf_free(&b);
        json_decref(s);
    }
}

/* Nesting beyond the depth limit is refused, not a stack overflow. */
static void test_schema_limits(void)
{
    sl_buf text = {0}, b = {0};
    for (int i = 0; i < 200; i++)
        sl_buf_puts(&text, "{\"items\": ");
    sl_buf_puts(&text, "{}");
    for (int i = 0; i < 200; i++)
        sl_buf_puts(&text, "}");
    json_t *s = parse_json(text.data);
    sl_err e = {0};
    CHECK(sl_constraint_json_schema(s, &b, &e) == SL_ERR_LIMIT && strstr(e.msg, "deeper than 64"));
    json_decref(s);
    /* many properties and a long enum stay linear and compile */
    sl_buf_clear(&text);
    sl_buf_clear(&b);
    sl_buf_puts(&text, "{\"type\": \"object\", \"properties\": {");
    for (int i = 0; i < 300; i++)
        sl_buf_printf(&text, "%s\"p%d\": {\"enum\": [%d, \"v%d\"]}", i ? ", " : "", i, i, i);
    sl_buf_puts(&text, "}, \"required\": [\"p299\"]}");
    s = parse_json(text.data);
    CHECK_MSG(sl_constraint_json_schema(s, &b, &e) == SL_OK, "%s", e.msg);
    sl_gram *g = compile(&b, "300 properties");
    CHECK(accepts(g, "{\"p7\": \"v7\", \"p299\": 299}") == 1);
    CHECK(accepts(g, "{\"p7\": \"v8\", \"p299\": 299}") == 0);
    CHECK(b.len < 200000);
    sl_gram_free(g);
    json_decref(s);
    sl_buf_free(&text);
    sl_buf_free(&b);
}

static void test_json_object(void)
{
    sl_buf b = {0};
    CHECK(sl_constraint_json_object(&b) == SL_OK);
    sl_gram *g = compile(&b, "json_object");
    CHECK(accepts(g, "{}") == 1);
    CHECK(accepts(g, "{\"a\": [1, {\"b\": null}], \"a\": \"dup keys are JSON\"}") == 1);
    CHECK(accepts(g, "[1]") == 0);
    CHECK(accepts(g, "\"x\"") == 0);
    CHECK(accepts(g, "{\"a\": 1,}") == 0);
    CHECK(accepts(g, "{\"a\":                          1}") == 0); /* whitespace is bounded */
    sl_gram_free(g);
    sl_buf_free(&b);
}

/* ---- regex ---- */

typedef struct rcase {
    const char *re;
    const char *yes[6];
    const char *no[6];
} rcase;

static const rcase regexes[] = {
    {"abc", {"abc"}, {"ab", "abcd", "xabc"}},
    {"^a+b?$", {"a", "aaab"}, {"", "b", "abb"}},
    {"(?:ab|cd){2,3}", {"abab", "abcdab"}, {"ab", "abababab"}},
    {"(?P<y>\\d{4})-(?<m>\\d\\d)", {"2024-01"}, {"2024-1", "202a-01"}},
    {"[^a-c\\d]x", {"dx", "-x", "\xc3\xa9x", "\nx"}, {"ax", "5x"}},
    {"\\w+\\s\\W", {"a_1 !"}, {"a b", "\xc3\xa9 !"}},
    {"a.c",
     {"abc", "a\xe4\xb8\xad"
             "c"},
     {"a\nc", "ac"}},
    {"x*?y+?z??", {"y", "xxyyz"}, {"z", "x"}},
    {"a{2}b{1,}c{0,2}", {"aab", "aabbbcc"}, {"ab", "aabccc"}},
    {"[\\]\\-^]+", {"]-^"}, {"a"}},
    {"\\x41\\u00e9\\t\\.", {"A\xc3\xa9\t."}, {"A\xc3\xa9\tx"}},
    {"a|", {"a", ""}, {"b"}},
    {"", {""}, {"a"}},
    {"a++b", {"aab"}, {"b"}},
    {"\\{x}", {"{x}"}, {"x"}},
    {"a{b", {"a{b"}, {"ab"}},
};

static const struct {
    const char *re, *msg;
    sl_status code;
} regex_errors[] = {
    {"a(?=b)", "unsupported lookahead at offset 1", SL_ERR_INVALID},
    {"(?<!a)b", "unsupported lookbehind", SL_ERR_INVALID},
    {"(a)\\1", "unsupported backreference at offset 3", SL_ERR_INVALID},
    {"(?P<n>a)(?P=n)", "unsupported backreference (?P=name)", SL_ERR_INVALID},
    {"\\bword", "unsupported word boundary", SL_ERR_INVALID},
    {"(?i)abc", "unsupported inline flags", SL_ERR_INVALID},
    {"(?>a)", "unsupported atomic group", SL_ERR_INVALID},
    {"\\p{L}", "unsupported Unicode property class", SL_ERR_INVALID},
    {"a{,3}", "{,n}", SL_ERR_INVALID},
    {"[]a]", "a ']' first in a class", SL_ERR_INVALID},
    {"[[:alpha:]]", "POSIX class", SL_ERR_INVALID},
    {"a**", "a repeated quantifier", SL_ERR_INVALID},
    {"*a", "nothing to repeat", SL_ERR_INVALID},
    {"(|{2})", "nothing to repeat", SL_ERR_INVALID},
    {"(ab", "an unclosed '('", SL_ERR_INVALID},
    {"ab)", "an unmatched ')'", SL_ERR_INVALID},
    {"[a-", "unterminated character class", SL_ERR_INVALID},
    {"[z-a]", "a backwards range", SL_ERR_INVALID},
    {"a$b", "'$' inside the pattern", SL_ERR_INVALID},
    {"a^", "'^' inside the pattern", SL_ERR_INVALID},
    {"\\q", "unsupported escape \\q", SL_ERR_INVALID},
    {"\\", "a trailing backslash", SL_ERR_INVALID},
    {"a{2,1}", "n < m", SL_ERR_INVALID},
    {"a{10001}", "above 10000", SL_ERR_LIMIT},
    {"\xff", "invalid UTF-8", SL_ERR_INVALID},
};

static void test_regex(void)
{
    for (size_t i = 0; i < sizeof regexes / sizeof regexes[0]; i++) {
        const rcase *c = &regexes[i];
        sl_buf b = {0};
        sl_err e = {0};
        sl_status st = sl_constraint_regex(c->re, strlen(c->re), &b, &e);
        CHECK_MSG(st == SL_OK, "%s: %s", c->re, e.msg);
        sl_gram *g = st == SL_OK ? compile(&b, c->re) : NULL;
        for (int k = 0; g && k < 6 && c->yes[k]; k++)
            CHECK_MSG(accepts(g, c->yes[k]) == 1, "/%s/ should match \"%s\"\n%s", c->re, c->yes[k],
                      b.data);
        for (int k = 0; g && k < 6 && c->no[k]; k++)
            CHECK_MSG(accepts(g, c->no[k]) == 0, "/%s/ should not match \"%s\"\n%s", c->re,
                      c->no[k], b.data);
        sl_gram_free(g);
        sl_buf_free(&b);
    }
    for (size_t i = 0; i < sizeof regex_errors / sizeof regex_errors[0]; i++) {
        sl_buf b = {0};
        sl_err e = {0};
        sl_status st = sl_constraint_regex(regex_errors[i].re, strlen(regex_errors[i].re), &b, &e);
        CHECK_MSG(st == regex_errors[i].code && strstr(e.msg, regex_errors[i].msg),
                  "/%s/: got %s \"%s\"", regex_errors[i].re, sl_status_str(st), e.msg);
        sl_buf_free(&b);
    }
}

/* ---- tool calls ---- */

static const char *const tools_json =
    "[{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"parameters\": "
    "{\"type\": "
    "\"object\", \"properties\": {\"city\": {\"type\": \"string\"}, \"days\": {\"type\": "
    "\"integer\", "
    "\"minimum\": 1}, \"unit\": {\"enum\": [\"c\", \"f\"], \"type\": \"string\"}, \"note\": "
    "{\"type\": "
    "[\"string\", \"null\"]}}, \"required\": [\"city\"], \"additionalProperties\": false}}},"
    " {\"type\": \"function\", \"function\": {\"name\": \"list_files\"}},"
    " {\"type\": \"function\", \"function\": {\"name\": \"odd\", \"parameters\": {\"type\": "
    "\"object\", "
    "\"properties\": {\"x\": {\"type\": \"string\", \"not\": {}}}, \"patternProperties\": {}}}}]";

typedef struct tcase {
    sl_tool_parser_kind kind;
    const char *only;
    int parallel;
    const char *text;
    int ok;
    const char *calls[2][2]; /* {name, arguments} expected from the tool parser when ok */
} tcase;

#define HERMES SL_TOOL_PARSER_KIND_HERMES
#define CODER SL_TOOL_PARSER_KIND_QWEN3_CODER
#define H_CALL(args)                                                                               \
    "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": " args "}\n</tool_call>"
#define H_LIST "<tool_call>\n{\"name\": \"list_files\", \"arguments\": {}}\n</tool_call>"
#define C_OPEN "<tool_call>\n<function=get_weather>\n<parameter=city>\n"
#define C_CLOSE "\n</parameter>\n</function>\n</tool_call>"
#define C_LIST "<tool_call>\n<function=list_files>\n</function>\n</tool_call>"

static const tcase tool_cases[] = {
    {HERMES,
     NULL,
     1,
     H_CALL("{\"city\": \"Paris\", \"days\": 3}"),
     1,
     {{"get_weather", "{\"city\": \"Paris\", \"days\": 3}"}}},
    {HERMES,
     NULL,
     1,
     H_CALL("{\"city\": \"a</tool_cal\\\\l>\"}") "\n" H_LIST,
     1,
     {{"get_weather", "{\"city\": \"a</tool_cal\\\\l>\"}"}, {"list_files", "{}"}}},
    {HERMES, NULL, 0, H_CALL("{\"city\": \"x\"}") "\n" H_LIST, 0, {{0}}},
    {HERMES, "list_files", 1, H_LIST "\n" H_LIST, 1, {{"list_files", "{}"}, {"list_files", "{}"}}},
    {HERMES, "list_files", 1, H_CALL("{\"city\": \"x\"}"), 0, {{0}}},
    {HERMES, NULL, 1, H_CALL("{\"city\": \"a</tool_call>\"}"), 0, {{0}}}, /* would end the call */
    {HERMES, NULL, 1, H_CALL("{\"days\": 3}"), 0, {{0}}},
    {HERMES, NULL, 1, H_CALL("{\"city\": \"x\", \"days\": 0}"), 0, {{0}}},
    {HERMES, NULL, 1, H_CALL("{\"city\": \"x\", \"days\": 9223372036854775808}"), 0, {{0}}},
    {HERMES, NULL, 1, H_CALL("{\"city\": \"\\u0000\"}"), 0, {{0}}}, /* jansson refuses it */
    {HERMES,
     NULL,
     1,
     "<tool_call>\n{\"name\": \"get_wether\", \"arguments\": {}}\n</tool_call>",
     0,
     {{0}}},
    {HERMES, NULL, 1, "Sure. " H_LIST, 0, {{0}}},
    {HERMES, NULL, 1, H_LIST " Done.", 0, {{0}}},
    {HERMES, NULL, 1, H_LIST "\n", 0, {{0}}},
    /* an unsupported schema falls back to any object */
    {HERMES,
     "odd",
     0,
     "<tool_call>\n{\"name\": \"odd\", \"arguments\": {\"y\": [1]}}\n</tool_call>",
     1,
     {{"odd", "{\"y\": [1]}"}}},
    {CODER,
     NULL,
     1,
     C_OPEN "San Francisco" C_CLOSE,
     1,
     {{"get_weather", "{\"city\": \"San Francisco\"}"}}},
    {CODER,
     NULL,
     1,
     C_OPEN
     "a < b\n<tag>\n"
     "\n</parameter>\n<parameter=days>\n7\n</parameter>\n<parameter=unit>\nf\n"
     "</parameter>\n<parameter=note>\nnull\n</parameter>\n</function>\n</tool_call>\n" C_LIST,
     1,
     {{"get_weather",
       "{\"city\": \"a < b\\n<tag>\\n\", \"days\": 7, \"unit\": \"f\", \"note\": null}"},
      {"list_files", "{}"}}},
    {CODER, NULL, 1, C_OPEN "null" C_CLOSE, 0, {{0}}},           /* would read as null */
    {CODER, NULL, 1, C_OPEN "x</parameter>y" C_CLOSE, 0, {{0}}}, /* would end the value */
    {CODER, NULL, 1, C_OPEN "x<parameter=y" C_CLOSE, 0, {{0}}},
    {CODER, NULL, 1, C_OPEN "x\n</parameter>\n<parameter=unit>\nk" C_CLOSE, 0, {{0}}},
    {CODER, NULL, 1, C_OPEN "x\n</parameter>\n<parameter=extra>\n1" C_CLOSE, 0, {{0}}},
    {CODER, NULL, 1, "<tool_call>\n<function=get_weather>\n<parameter=days>\n1" C_CLOSE, 0, {{0}}},
    {CODER, "list_files", 0, C_LIST, 1, {{"list_files", "{}"}}},
    {CODER, "list_files", 0, C_LIST "\n" C_LIST, 0, {{0}}},
    {CODER,
     "odd",
     0,
     "<tool_call>\n<function=odd>\n<parameter=x>\nfree\n</parameter>\n<parameter=z>\n[1]\n"
     "</parameter>\n</function>\n</tool_call>",
     1,
     {{"odd", "{\"x\": \"free\", \"z\": [1]}"}}},
};

/* The calls sl_tool_parser makes of text must be the expected ones, with no content. */
static void check_parse(const tcase *c, const json_t *tools)
{
    sl_tool_parser *p = sl_tool_parser_new(c->kind, tools, 7);
    sl_deltas d = {0};
    sl_err e = {0};
    CHECK(p && sl_tool_parser_feed(p, c->text, strlen(c->text), &d, &e) == SL_OK &&
          sl_tool_parser_finish(p, &d, &e) == SL_OK);
    json_t *msg = sl_deltas_message(&d), *calls = json_object_get(msg, "tool_calls");
    CHECK_MSG(json_is_null(json_object_get(msg, "content")), "%s: content left", c->text);
    size_t n = 0;
    while (n < 2 && c->calls[n][0])
        n++;
    CHECK_MSG(json_array_size(calls) == n, "%s: %zu calls", c->text, json_array_size(calls));
    for (size_t i = 0; i < n && i < json_array_size(calls); i++) {
        json_t *fn = json_object_get(json_array_get(calls, i), "function");
        const char *name = json_string_value(json_object_get(fn, "name"));
        const char *args = json_string_value(json_object_get(fn, "arguments"));
        CHECK_MSG(name && !strcmp(name, c->calls[i][0]), "%s: call %zu is %s", c->text, i, name);
        CHECK_MSG(args && !strcmp(args, c->calls[i][1]), "%s: arguments %s", c->text, args);
    }
    json_decref(msg);
    sl_deltas_free(&d);
    sl_tool_parser_free(p);
}

static void test_tool_calls(void)
{
    json_t *tools = parse_json(tools_json);
    for (size_t i = 0; i < sizeof tool_cases / sizeof tool_cases[0]; i++) {
        const tcase *c = &tool_cases[i];
        sl_buf b = {0};
        sl_err e = {0};
        sl_status st = sl_constraint_tool_calls(c->kind, tools, c->only, c->parallel, &b, &e);
        CHECK_MSG(st == SL_OK, "case %zu: %s", i, e.msg);
        sl_gram *g = st == SL_OK ? compile(&b, "tool calls") : NULL;
        CHECK_MSG(g && accepts(g, c->text) == c->ok, "case %zu: %s should be %s\n%s", i, c->text,
                  c->ok ? "accepted" : "refused", b.data);
        if (c->ok) check_parse(c, tools);
        sl_gram_free(g);
        sl_buf_free(&b);
    }
    /* refusals */
    sl_buf b = {0};
    sl_err e = {0};
    CHECK(sl_constraint_tool_calls(HERMES, tools, "nope", 1, &b, &e) == SL_ERR_INVALID &&
          strstr(e.msg, "tool_choice names function `nope`"));
    json_t *empty = json_array();
    CHECK(sl_constraint_tool_calls(HERMES, empty, NULL, 1, &b, &e) == SL_ERR_INVALID &&
          strstr(e.msg, "non-empty `tools`"));
    json_t *bad = parse_json("[{\"function\": {\"name\": \"a<b\"}}]");
    CHECK(sl_constraint_tool_calls(CODER, bad, NULL, 1, &b, &e) == SL_ERR_INVALID &&
          strstr(e.msg, "tools[0].function.name"));
    json_decref(bad);
    json_decref(empty);
    json_decref(tools);
    sl_buf_free(&b);
}

/* ---- whatever converts, compiles ---- */

/* A random schema: supported and unsupported keywords with fitting and unfitting values. */
static json_t *random_schema(uint64_t *rng, int depth)
{
    static const char *const keys[] = {"type",
                                       "properties",
                                       "required",
                                       "items",
                                       "prefixItems",
                                       "anyOf",
                                       "oneOf",
                                       "allOf",
                                       "enum",
                                       "const",
                                       "minLength",
                                       "maxLength",
                                       "pattern",
                                       "format",
                                       "minimum",
                                       "maximum",
                                       "exclusiveMinimum",
                                       "minItems",
                                       "maxItems",
                                       "additionalProperties",
                                       "$ref",
                                       "not",
                                       "description"};
    static const char *const types[] = {"object", "array",   "string", "integer",
                                        "number", "boolean", "null"};
    static const char *const values[] = {
        "0",          "3",        "-1",    "2.5",      "true",
        "false",      "null",     "\"x\"", "\"^a+$\"", "\"date\"",
        "[\"a\"]",    "[]",       "{}",    "\"#\"",    "\"#/properties/a\"",
        "[1, \"a\"]", "\"(?=x)\""};
#define PICK(n) ((size_t)(sl_rng_mix((*rng)++) % (n)))
    if (depth > 3 || PICK(6) == 0) return PICK(2) ? json_true() : json_object();
    json_t *s = json_object();
    for (size_t k = PICK(4) + 1; k > 0; k--) {
        const char *key = keys[PICK(sizeof keys / sizeof keys[0])];
        json_t *v;
        if (!strcmp(key, "type"))
            v = json_string(types[PICK(7)]);
        else if (!strcmp(key, "properties")) {
            v = json_object();
            json_object_set_new(v, "a", random_schema(rng, depth + 1));
            if (PICK(2)) json_object_set_new(v, "b", random_schema(rng, depth + 1));
        } else if (!strcmp(key, "items") || !strcmp(key, "additionalProperties") ||
                   !strcmp(key, "not")) {
            v = random_schema(rng, depth + 1);
        } else if (!strcmp(key, "prefixItems") || !strcmp(key, "anyOf") || !strcmp(key, "oneOf") ||
                   !strcmp(key, "allOf")) {
            v = json_array();
            for (size_t j = PICK(3) + 1; j > 0; j--)
                json_array_append_new(v, random_schema(rng, depth + 1));
        } else {
            v = json_loads(values[PICK(sizeof values / sizeof values[0])], JSON_DECODE_ANY, NULL);
        }
        json_object_set_new(s, key, v);
    }
    return s;
#undef PICK
}

/* Mangled inputs (seeded): a conversion may fail, never crash, and its grammar compiles. */
static void test_mangled_inputs(void)
{
    static const char alphabet[] = "ab()[]{}|*+?^$.\\-,:0123456789dwsDWSxu\"<>=!Pq";
    uint64_t rng = 42;
    int converted = 0;
    for (int i = 0; i < 3000; i++) {
        char re[16];
        int n = (int)(sl_rng_mix(rng++) % sizeof re);
        for (int k = 0; k < n; k++)
            re[k] = alphabet[sl_rng_mix(rng++) % (sizeof alphabet - 1)];
        sl_buf b = {0};
        sl_err e = {0};
        if (sl_constraint_regex(re, (size_t)n, &b, &e) == SL_OK) {
            sl_gram *g = compile(&b, "mangled regex");
            converted += g != NULL;
            sl_gram_free(g);
        }
        sl_buf_free(&b);
    }
    CHECK(converted > 300);
    converted = 0;
    for (int i = 0; i < 1500; i++) {
        json_t *s = random_schema(&rng, 0);
        sl_buf b = {0};
        sl_err e = {0};
        sl_status st = sl_constraint_json_schema(s, &b, &e);
        CHECK_MSG(st == SL_OK || ((st == SL_ERR_INVALID || st == SL_ERR_LIMIT) && e.msg[0]), "%s",
                  e.msg);
        if (st == SL_OK) {
            char *text = json_dumps(s, JSON_COMPACT);
            sl_gram *g = compile(&b, text);
            converted += g != NULL;
            sl_gram_free(g);
            free(text);
        }
        sl_buf_free(&b);
        json_decref(s);
    }
    CHECK(converted > 150);
}

int main(void)
{
    test_schemas();
    test_schema_limits();
    test_json_object();
    test_regex();
    test_tool_calls();
    test_mangled_inputs();
    return sl_test_done("test_constraint");
}

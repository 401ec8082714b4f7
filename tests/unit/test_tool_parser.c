/* tool-call parsers: every case is fed whole, in two pieces at every split
 * point, and byte by byte; the deltas must be shaped like OpenAI's streaming
 * tool_calls and fold into the same message each time. */
#include <string.h>

#include "output_parser.h"
#include "sl_rng.h"
#include "sl_test.h"
#include "tool_parser.h"

#define CODER SL_TOOL_PARSER_KIND_QWEN3_CODER
#define HERMES SL_TOOL_PARSER_KIND_HERMES

static const char *const tools_json =
    "[{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"parameters\": "
    "{\"type\": \"object\","
    " \"properties\": {\"city\": {\"type\": \"string\"}, \"days\": {\"type\": \"integer\"},"
    " \"metric\": {\"type\": \"boolean\"}, \"ratio\": {\"type\": \"number\"}, \"opts\": {\"type\": "
    "\"object\"},"
    " \"tags\": {\"type\": \"array\"}, \"misc\": {}, \"limit\": {\"type\": [\"null\", "
    "\"integer\"]}}}}},"
    " {\"type\": \"function\", \"function\": {\"name\": \"list_files\"}},"
    " {\"name\": \"write_file\", \"parameters\": {\"properties\": {\"path\": {\"type\": "
    "\"string\"},"
    " \"content\": {\"type\": \"string\"}}}}]";

typedef struct tcase {
    sl_tool_parser_kind kind;
    int no_tools; /* parse without the request's tools */
    const char *in;
    const char *content;     /* NULL: the message has no content */
    const char *calls[3][2]; /* {name, arguments}, until name is NULL */
} tcase;

static const tcase cases[] = {
    /* qwen3_coder: every schema type */
    {CODER,
     0,
     "I'll check.\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nSan Francisco, "
     "CA\n</parameter>\n"
     "<parameter=days>\n3\n</parameter>\n<parameter=metric>\nTrue\n</"
     "parameter>\n<parameter=ratio>\n0.50\n"
     "</parameter>\n<parameter=opts>\n{\"a\": [1, {\"b\": "
     "null}]}\n</parameter>\n<parameter=tags>\n[\"x\",\"y\"]\n"
     "</parameter>\n<parameter=misc>\nnot "
     "json\n</parameter>\n<parameter=limit>\n7\n</parameter>\n</function>\n"
     "</tool_call>",
     "I'll check.",
     {{"get_weather",
       "{\"city\": \"San Francisco, CA\", \"days\": 3, \"metric\": true, \"ratio\": 0.5, \"opts\": "
       "{\"a\": [1, {\"b\": null}]}, \"tags\": [\"x\", \"y\"], \"misc\": \"not json\", \"limit\": "
       "7}"}}},
    /* values that do not fit their type stay strings; null is null */
    {CODER,
     0,
     "<tool_call>\n<function=get_weather>\n<parameter=days>\nthree\n</"
     "parameter>\n<parameter=metric>\nmaybe\n"
     "</parameter>\n<parameter=city>\nnull\n</parameter>\n<parameter=ratio>\n1e400\n</parameter>\n"
     "<parameter=unknown>\n[1, 2]\n</parameter>\n</function>\n</tool_call>",
     NULL,
     {{"get_weather",
       "{\"days\": \"three\", \"metric\": \"maybe\", \"city\": null, \"ratio\": \"1e400\", "
       "\"unknown\": [1, 2]}"}}},
    /* two calls, one without parameters; whitespace around calls dropped */
    {CODER,
     0,
     "<tool_call>\n<function=list_files>\n</function>\n</"
     "tool_call>\n\n<tool_call>\n<function=write_file>\n"
     "<parameter=path>\n/tmp/a.py\n</parameter>\n<parameter=content>\n\ndef f(a, b):\n    return a "
     "< b\n\n"
     "</parameter>\n</function>\n</tool_call>\n",
     NULL,
     {{"list_files", "{}"},
      {"write_file",
       "{\"path\": \"/tmp/a.py\", \"content\": \"\\ndef f(a, b):\\n    return a < b\\n\"}"}}},
    /* text after a call is kept; unicode passes through */
    {CODER,
     0,
     "<tool_call>\n<function=write_file>\n<parameter=content>\n\xe4\xbd\xa0\xe5\xa5\xbd "
     "\xf0\x9f\x98\x80 \"q\"\n"
     "</parameter>\n</function>\n</tool_call>\nDone.",
     "Done.",
     {{"write_file", "{\"content\": \"\xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x98\x80 \\\"q\\\"\"}"}}},
    /* forgotten closing tags, as models sometimes write them */
    {CODER,
     0,
     "<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n<parameter=days>\n2\n</"
     "function>\n"
     "</tool_call><tool_call>\n<function=list_files>\n</tool_call>",
     NULL,
     {{"get_weather", "{\"city\": \"Oslo\", \"days\": 2}"}, {"list_files", "{}"}}},
    /* output cut off inside a value: the call is closed with what it has */
    {CODER,
     0,
     "Checking.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nPar",
     "Checking.",
     {{"get_weather", "{\"city\": \"Par\"}"}}},
    /* malformed: unknown function, no function tag, unclosed tags -> content */
    {CODER,
     0,
     "Hi <tool_call>\n<function=rm_rf>\n<parameter=x>\n1\n</parameter>\n</function>\n</tool_call>",
     "Hi <tool_call>\n<function=rm_rf>\n<parameter=x>\n1\n</parameter>\n</function>\n</tool_call>",
     {{0}}},
    {CODER,
     0,
     "a < b <tool_call> oops </tool_call> <tool_c",
     "a < b <tool_call> oops </tool_call> <tool_c",
     {{0}}},
    {CODER, 0, "Let me look.\n<tool_call>", "Let me look.\n<tool_call>", {{0}}},
    {CODER, 0, "x<tool_call>\n<function=get_weath", "x<tool_call>\n<function=get_weath", {{0}}},
    {CODER,
     0,
     "<tool_call><tool_call>\n<function=list_files>\n</function></tool_call>",
     "<tool_call>",
     {{"list_files", "{}"}}},
    /* without the request's tools any name goes and values are JSON or text */
    {CODER,
     1,
     "<tool_call>\n<function=anything>\n<parameter=n>\n42\n</parameter>\n<parameter=s>\nhello\n"
     "</parameter>\n</function>\n</tool_call>",
     NULL,
     {{"anything", "{\"n\": 42, \"s\": \"hello\"}"}}},
    /* the <tool_call> wrapper left out */
    {CODER,
     0,
     "On it.\n<function=get_weather>\n<parameter=city>\nBern\n</parameter>\n</function>\nok",
     "On it.ok",
     {{"get_weather", "{\"city\": \"Bern\"}"}}},
    {CODER,
     0,
     "Use <function=rm>x</function> or <function=",
     "Use <function=rm>x</function> or <function=",
     {{0}}},
    {CODER, 0, "Plain answer, no tools needed.\n", "Plain answer, no tools needed.\n", {{0}}},
    {CODER, 0, "", NULL, {{0}}},

    /* hermes / qwen25 */
    {HERMES,
     0,
     "Sure.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"n\": "
     "1.50, "
     "\"deep\": {\"l\": [true, null, \"\xc3\xa9\"]}}}\n</tool_call>\n<tool_call>\n{\"name\": "
     "\"list_files\", "
     "\"arguments\": {}}\n</tool_call>",
     "Sure.",
     {{"get_weather",
       "{\"city\": \"Paris\", \"n\": 1.5, \"deep\": {\"l\": [true, null, \"\xc3\xa9\"]}}"},
      {"list_files", "{}"}}},
    {HERMES,
     0,
     "<tool_call>\n{\"name\": \"list_files\", \"arguments\": \"{\\\"a\\\":1}\"}\n</tool_call>",
     NULL,
     {{"list_files", "{\"a\":1}"}}},
    {HERMES,
     0,
     "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}",
     NULL,
     {{"get_weather", "{\"city\": \"Rome\"}"}}},
    {HERMES,
     0,
     "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \n</tool_call>",
     "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \n</tool_call>",
     {{0}}},
    {HERMES,
     0,
     "<tool_call>\n{\"name\": \"nope\", \"arguments\": {}}\n</tool_call>",
     "<tool_call>\n{\"name\": \"nope\", \"arguments\": {}}\n</tool_call>",
     {{0}}},
    {HERMES,
     0,
     "<tool_call>\n{\"name\": \"list_files\"",
     "<tool_call>\n{\"name\": \"list_files\"",
     {{0}}},
};

/* OpenAI's streaming shape: call k starts once (index, id, name) before any
 * of its argument fragments, and calls start in order. */
static void check_shape(const sl_deltas *d)
{
    int started = 0;
    for (int i = 0; i < d->n; i++) {
        const sl_delta *x = &d->v[i];
        if (x->kind == SL_DELTA_TOOL_START) {
            CHECK(x->index == started);
            CHECK(!strncmp(x->id, "call_", 5) && strlen(x->id) == 29);
            started++;
        } else if (x->kind == SL_DELTA_TOOL_ARGS) {
            CHECK(x->index == started - 1);
        } else {
            CHECK(x->kind == SL_DELTA_CONTENT || x->kind == SL_DELTA_REASONING);
        }
    }
}

static int matches(const tcase *c, const json_t *msg)
{
    json_t *content = json_object_get(msg, "content"), *calls = json_object_get(msg, "tool_calls");
    int ok = c->content ? json_is_string(content) && !strcmp(json_string_value(content), c->content)
                        : json_is_null(content);
    size_t n = 0;
    while (n < 3 && c->calls[n][0]) n++;
    ok = ok && json_array_size(calls) == n && (n > 0) == (calls != NULL);
    for (size_t i = 0; ok && i < n; i++) {
        json_t *fn = json_object_get(json_array_get(calls, i), "function");
        ok = !strcmp(json_string_value(json_object_get(fn, "name")), c->calls[i][0]) &&
             !strcmp(json_string_value(json_object_get(fn, "arguments")), c->calls[i][1]);
    }
    if (!ok) {
        char *s = json_dumps(msg, 0);
        fprintf(stderr, "input [%s]\n  got %s\n", c->in, s);
        free(s);
    }
    return ok;
}

/* Feeds c->in cut at the given points (sorted, ending at strlen) like a
 * router: one fresh delta list per chunk, forwarded as it comes. */
static int run(const tcase *c, const json_t *tools, const size_t *cuts, int ncuts)
{
    sl_tool_parser *p = sl_tool_parser_new(c->kind, c->no_tools ? NULL : tools, 7);
    sl_deltas all = {0}, d = {0};
    sl_err e = {0};
    size_t at = 0;
    for (int i = 0; i < ncuts; i++) {
        CHECK(sl_tool_parser_feed(p, c->in + at, cuts[i] - at, &d, &e) == SL_OK);
        sl_deltas_extend(&all, &d);
        sl_deltas_clear(&d);
        at = cuts[i];
    }
    CHECK(sl_tool_parser_finish(p, &all, &e) == SL_OK);
    check_shape(&all);
    json_t *msg = sl_deltas_message(&all);
    int ok = matches(c, msg);
    json_decref(msg);
    sl_deltas_free(&all);
    sl_deltas_free(&d);
    sl_tool_parser_free(p);
    return ok;
}

static void test_cases(const json_t *tools)
{
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const tcase *c = &cases[k];
        size_t n = strlen(c->in), cuts[1024];
        cuts[0] = n;
        if (!run(c, tools, cuts, 1)) {
            CHECK_MSG(0, "case %zu whole", k);
            continue; /* one report per broken case */
        }
        for (size_t i = 0; i <= n; i++) {
            size_t two[2] = {i, n};
            CHECK_MSG(run(c, tools, two, 2), "case %zu split at %zu", k, i);
        }
        for (size_t i = 0; i < n; i++) cuts[i] = i + 1;
        CHECK_MSG(run(c, tools, cuts, (int)n), "case %zu byte by byte", k);
    }
}

/* "<tool_" at a chunk end is held back; the call streams per parameter. */
static void test_streaming_deltas(const json_t *tools)
{
    sl_tool_parser *p = sl_tool_parser_new(CODER, tools, 1);
    sl_deltas d = {0};
    sl_err e = {0};
    sl_tool_parser_feed(p, "Sure. <tool_", 12, &d, &e);
    CHECK(d.n == 1 && d.v[0].kind == SL_DELTA_CONTENT && !strcmp(d.v[0].text, "Sure."));
    sl_deltas_clear(&d);
    const char *head = "call>\n<function=get_weather>\n<parameter=city>\nLima\n</parameter>\n";
    sl_tool_parser_feed(p, head, strlen(head), &d, &e);
    CHECK(d.n == 2 && d.v[0].kind == SL_DELTA_TOOL_START && !strcmp(d.v[0].name, "get_weather"));
    CHECK(d.v[1].kind == SL_DELTA_TOOL_ARGS && !strcmp(d.v[1].text, "{\"city\": \"Lima\""));
    json_t *j0 = sl_delta_json(&d.v[0]), *j1 = sl_delta_json(&d.v[1]);
    char *s0 = json_dumps(j0, JSON_COMPACT), *s1 = json_dumps(j1, JSON_COMPACT);
    char want0[256];
    snprintf(
        want0, sizeof want0,
        "{\"tool_calls\":[{\"index\":0,\"id\":\"%s\",\"type\":\"function\",\"function\":{\"name\":"
        "\"get_weather\",\"arguments\":\"\"}}]}",
        d.v[0].id);
    CHECK_MSG(!strcmp(s0, want0), "%s", s0);
    CHECK_MSG(!strcmp(s1, "{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{"
                          "\\\"city\\\": \\\"Lima\\\"\"}}]}"),
              "%s", s1);
    free(s0);
    free(s1);
    json_decref(j0);
    json_decref(j1);
    sl_deltas_clear(&d);
    sl_tool_parser_feed(p, "</function>\n</tool_call>", 24, &d, &e);
    CHECK(d.n == 1 && d.v[0].kind == SL_DELTA_TOOL_ARGS && !strcmp(d.v[0].text, "}"));
    sl_deltas_free(&d);
    sl_tool_parser_free(p);

    /* ids differ between calls and follow the seed */
    p = sl_tool_parser_new(CODER, tools, 1);
    const char *two = "<tool_call>\n<function=list_files>\n</function>\n</tool_call><tool_call>\n"
                      "<function=list_files>\n</function>\n</tool_call>";
    sl_tool_parser_feed(p, two, strlen(two), &d, &e);
    CHECK(d.n == 4 && strcmp(d.v[0].id, d.v[2].id) != 0);
    sl_deltas_free(&d);
    sl_tool_parser_free(p);
}

/* Reasoning first, then tool calls on the content only. */
static void test_chain(const json_t *tools)
{
    sl_output_parser_config c = {
        .reasoning = SL_REASONING_MODE_DETECT,
        .tool_calls = 1,
        .tool_kind = sl_output_parser_tool_kind_for(SL_CHAT_TEMPLATE_FAMILY_QWEN3_CODER),
        .tools = tools,
        .seed = 3};
    const char *text =
        "<think>\nI could write <tool_call> here\n</think>\n\n<tool_call>\n<function=list_files>\n"
        "</function>\n</tool_call>";
    json_t *whole = NULL;
    sl_err e = {0};
    CHECK(sl_output_parser_parse_message(&c, text, strlen(text), &whole, &e) == SL_OK);
    CHECK(json_is_null(json_object_get(whole, "content")));
    CHECK(!strcmp(json_string_value(json_object_get(whole, "reasoning_content")),
                  "I could write <tool_call> here"));
    CHECK(json_array_size(json_object_get(whole, "tool_calls")) == 1);
    for (size_t i = 0; i <= strlen(text); i++) {
        sl_output_parser *p = sl_output_parser_new(&c);
        sl_deltas d = {0};
        sl_output_parser_feed(p, text, i, &d, &e);
        sl_output_parser_feed(p, text + i, strlen(text) - i, &d, &e);
        sl_output_parser_finish(p, &d, &e);
        json_t *m = sl_deltas_message(&d);
        CHECK_MSG(json_equal(m, whole), "chain split at %zu", i);
        json_decref(m);
        sl_deltas_free(&d);
        sl_output_parser_free(p);
    }
    json_decref(whole);
    CHECK(sl_output_parser_tool_kind_for(SL_CHAT_TEMPLATE_FAMILY_QWEN3) == HERMES);

    /* thinking off and no tools: the text is the content, untouched */
    sl_output_parser_config plain = {.reasoning = SL_REASONING_MODE_OFF};
    CHECK(sl_output_parser_parse_message(&plain, "<think>x</think><tool_call>", 27, &whole, &e) ==
          SL_OK);
    CHECK(!strcmp(json_string_value(json_object_get(whole, "content")),
                  "<think>x</think><tool_call>"));
    CHECK(!json_object_get(whole, "tool_calls") && !json_object_get(whole, "reasoning_content"));
    json_decref(whole);

    /* bytes that are not UTF-8 become U+FFFD; a character cut between two
     * feeds is whole again in the message */
    CHECK(sl_output_parser_parse_message(&plain, "a\xe1\xff\xc3", 4, &whole, &e) == SL_OK);
    CHECK(!strcmp(json_string_value(json_object_get(whole, "content")),
                  "a\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"));
    json_decref(whole);
    sl_output_parser *p = sl_output_parser_new(&plain);
    sl_deltas d = {0};
    sl_output_parser_feed(p, "\xc3", 1, &d, &e);
    sl_output_parser_feed(p, "\xa9", 1, &d, &e);
    sl_output_parser_finish(p, &d, &e);
    whole = sl_deltas_message(&d);
    CHECK(!strcmp(json_string_value(json_object_get(whole, "content")), "\xc3\xa9"));
    json_decref(whole);
    sl_deltas_free(&d);
    sl_output_parser_free(p);
}

/* Message of text fed in pieces of `step` bytes (0: whole) through the chain. */
static json_t *chain_message(const sl_output_parser_config *c, const char *text, size_t n,
                             size_t step)
{
    sl_output_parser *p = sl_output_parser_new(c);
    sl_deltas d = {0};
    sl_err e = {0};
    for (size_t at = 0; at < n; at += step ? step : n) {
        size_t k = step && n - at > step ? step : n - at;
        CHECK(sl_output_parser_feed(p, text + at, k, &d, &e) == SL_OK);
    }
    CHECK(sl_output_parser_finish(p, &d, &e) == SL_OK);
    check_shape(&d);
    json_t *m = sl_deltas_message(&d);
    sl_deltas_free(&d);
    sl_output_parser_free(p);
    return m;
}

/* Random mixtures of tags, fragments of tags and text: the parsers must
 * never crash, and every way of cutting the text must give one message. */
static void test_random_outputs(const json_t *tools)
{
    static const char *const pieces[] = {"<tool_call>",
                                         "</tool_call>",
                                         "<function=get_weather>",
                                         "<function=list_files>",
                                         "<function=bad>",
                                         "<parameter=city>",
                                         "<parameter=days>",
                                         "</parameter>",
                                         "</function>",
                                         "\n",
                                         " ",
                                         "x",
                                         "42",
                                         "<",
                                         ">",
                                         "<tool_",
                                         "null",
                                         "{\"a\": 1}",
                                         "<think>",
                                         "</think>",
                                         "{\"name\": \"list_files\", \"arguments\": {}}",
                                         "\xc3\xa9",
                                         "</",
                                         "<function=",
                                         "\"",
                                         "{"};
    /* well-formed outputs of each format, mutated below */
    static const char *const coder_call[] = {"<think>",  "x",
                                             "</think>", "x",
                                             " ",        "<tool_call>",
                                             "\n",       "<function=get_weather>",
                                             "\n",       "<parameter=city>",
                                             "\n",       "x",
                                             "\n",       "</parameter>",
                                             "\n",       "<parameter=days>",
                                             "\n",       "42",
                                             "\n",       "</parameter>",
                                             "\n",       "</function>",
                                             "\n",       "</tool_call>",
                                             " ",        "x",
                                             NULL};
    static const char *const hermes_call[] = {
        "<think>",  "x",
        "</think>", "x",
        "\n",       "<tool_call>",
        "\n",       "{\"name\": \"list_files\", \"arguments\": {}}",
        "\n",       "</tool_call>",
        "x",        NULL};
    const uint64_t npieces = sizeof pieces / sizeof pieces[0];
    char text[2048];
    int failures = 0;
    for (uint64_t t = 0; t < 600 && failures < 5; t++) {
        size_t n = 0;
        const char *const *base = t % 2 ? hermes_call : coder_call;
        for (int i = 0; i < 40; i++) {
            uint64_t r = sl_rng_mix(t * 131 + (uint64_t)i);
            const char *piece;
            if (t % 4 < 2) { /* random pieces */
                if (i >= (int)(sl_rng_mix(t) % 30)) break;
                piece = pieces[r % npieces];
            } else { /* a well-formed call, mutated: replace, drop or insert a piece */
                if (!(piece = base[i])) break;
                if (r % 100 < 6) piece = pieces[(r >> 8) % npieces];
                else if (r % 100 < 10) continue;
                else if (r % 100 < 14) {
                    const char *extra = pieces[(r >> 8) % npieces];
                    memcpy(text + n, extra, strlen(extra));
                    n += strlen(extra);
                }
            }
            memcpy(text + n, piece, strlen(piece));
            n += strlen(piece);
        }
        text[n] = 0;
        sl_output_parser_config c = {.reasoning = (sl_reasoning_mode)(t % 3), .tool_calls = 1,
                            .tool_kind = t % 2 ? HERMES : CODER, .tools = tools, .seed = t};
        json_t *whole = chain_message(&c, text, n, 0);
        CHECK(whole != NULL);
        for (size_t step = 1; step <= 7; step += 3) {
            json_t *m = chain_message(&c, text, n, step);
            if (!json_equal(m, whole)) {
                char *a = json_dumps(whole, 0), *b = json_dumps(m, 0);
                CHECK_MSG(0, "input [%s] pieces of %zu:\n  whole %s\n  piece %s", text, step, a, b);
                failures++;
                free(a);
                free(b);
            }
            json_decref(m);
        }
        json_decref(whole);
    }
}

static void test_kind_names(void)
{
    sl_tool_parser_kind k;
    sl_err e = {0};
    CHECK(sl_tool_parser_kind_parse("qwen25", &k, &e) == SL_OK && k == HERMES);
    CHECK(sl_tool_parser_kind_parse("qwen3_coder", &k, &e) == SL_OK && k == CODER);
    CHECK(sl_tool_parser_kind_parse("llama3", &k, &e) == SL_ERR_INVALID && strstr(e.msg, "llama3"));
}

int main(void)
{
    json_t *tools = json_loads(tools_json, 0, NULL);
    CHECK(tools != NULL);
    test_cases(tools);
    test_streaming_deltas(tools);
    test_chain(tools);
    test_random_outputs(tools);
    test_kind_names();
    json_decref(tools);
    return sl_test_done("test_tool_parser");
}

/* The grammar engine (common/grammar/grammar.h): GBNF parse errors, acceptance of strings,
 * UTF-8 split across tokens, and token masks against a brute-force oracle on a synthetic
 * vocabulary (exhaustive) and on the real Qwen3 tokenizer (seeded random walks). */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grammar.h"
#include "sl_file.h"
#include "sl_rng.h"
#include "sl_test.h"

static const char *src_dir(void)
{
    const char *s = getenv("SLUICE_SRC");
    return s ? s : ".";
}

static sl_gram *compile(const char *text)
{
    sl_gram *g = NULL;
    sl_err e = {0};
    CHECK_MSG(sl_gram_compile(text, strlen(text), &g, &e) == SL_OK, "%s: %s", text, e.msg);
    return g;
}

static sl_gram *compile_file(const char *name)
{
    char path[4096], *text = NULL;
    size_t len = 0;
    sl_err e = {0};
    snprintf(path, sizeof path, "%s/tests/data/grammar/%s", src_dir(), name);
    CHECK_MSG(sl_file_read(path, &text, &len, &e) == SL_OK, "%s", e.msg);
    sl_gram *g = NULL;
    if (text) CHECK_MSG(sl_gram_compile(text, len, &g, &e) == SL_OK, "%s: %s", name, e.msg);
    free(text);
    return g;
}

/* 1 when text[0..n) is a complete sentence of g; 0 when refused or incomplete. */
static int accepts_n(sl_gram *g, const char *text, size_t n)
{
    sl_gram_matcher *m;
    sl_err e = {0};
    if (sl_gram_matcher_new(g, NULL, &m, &e)) return -1;
    int ok = sl_gram_matcher_accept_bytes(m, text, n, &e) == SL_OK && sl_gram_matcher_can_end(m);
    sl_gram_matcher_free(m);
    return ok;
}

static int accepts(sl_gram *g, const char *text)
{
    return accepts_n(g, text, strlen(text));
}

/* ---- parse errors ---- */

static void expect_error(const char *text, sl_status code, const char *msg)
{
    sl_gram *g = NULL;
    sl_err e = {0};
    sl_status st = sl_gram_compile(text, strlen(text), &g, &e);
    CHECK_MSG(st == code && strstr(e.msg, msg), "%s: got %d '%s', want %d '%s'", text, st, e.msg,
              code, msg);
    CHECK(g == NULL);
}

static void test_parse_errors(void)
{
    expect_error("", SL_ERR_PARSE, "no rule named 'root'");
    expect_error("main ::= \"x\"", SL_ERR_PARSE, "no rule named 'root'");
    expect_error("root ::= value\n", SL_ERR_PARSE, "1:10: undefined rule 'value'");
    expect_error("root ::= \"a\"\n  x ::= \"b\" y\n", SL_ERR_PARSE, "2:13: undefined rule 'y'");
    expect_error("root = \"x\"", SL_ERR_PARSE, "1:6: expected '::=' after the rule name 'root', found '='");
    expect_error("root ::= \"abc", SL_ERR_PARSE, "1:10: unterminated string literal");
    expect_error("root ::= [a-z", SL_ERR_PARSE, "1:10: unterminated character class");
    expect_error("root ::= ( \"a\" | \"b\"\n", SL_ERR_PARSE,
                 "expected ')' to close the '(' at 1:10, found the end of the grammar");
    expect_error("root ::= \"a\" )", SL_ERR_PARSE, "1:14: unmatched ')'");
    expect_error("root ::= \"a\" @", SL_ERR_PARSE,
                 "1:14: expected a string, a character class, '.', a rule name or '(', found '@'");
    expect_error("root ::= \"\\q\"", SL_ERR_PARSE, "1:11: unknown escape");
    expect_error("root ::= \"\\x4\"", SL_ERR_PARSE, "escape \\x needs 2 hex digits");
    expect_error("root ::= \"\\uD800\"", SL_ERR_PARSE, "is not a Unicode scalar value");
    expect_error("root ::= [z-a]", SL_ERR_PARSE, "1:11: character range is backwards");
    expect_error("root ::= []", SL_ERR_PARSE, "1:10: character class matches no character");
    expect_error("root ::= [^\\x00-\\U0010FFFF]", SL_ERR_PARSE, "matches no character");
    expect_error("root ::= \"a\"{3,2}", SL_ERR_PARSE, "the maximum is below the minimum");
    expect_error("root ::= \"a\"{2", SL_ERR_PARSE, "expected ',' or '}' to close the repetition");
    expect_error("root ::= \"a\"{x}", SL_ERR_PARSE, "expected a repetition count, found 'x'");
    expect_error("root ::= \"a\"{99999}", SL_ERR_LIMIT, "repetition count above the limit of 10000");
    expect_error("root ::= \"a\"\nroot ::= \"b\"", SL_ERR_PARSE, "2:1: rule 'root' is defined twice");
    expect_error("root ::= root \"x\" | \"y\"", SL_ERR_PARSE, "rule 'root' is left-recursive");
    expect_error("root ::= a\na ::= b \"x\"\nb ::= \"\" a | \"y\"", SL_ERR_PARSE,
                 "rules 'a' and 'b' are left-recursive");
    expect_error("root ::= (\"a\"? root) \"b\"", SL_ERR_PARSE, "rule 'root' is left-recursive");
    /* invalid UTF-8 in the text */
    expect_error("root ::= \"\xC3\"", SL_ERR_PARSE, "invalid UTF-8");
    /* pathological sizes fail with a limit, not a crash or a hang */
    {
        size_t depth = 100000;
        char *deep = malloc(depth * 2 + 32);
        size_t n = (size_t)sprintf(deep, "root ::= ");
        for (size_t k = 0; k < depth; k++)
            deep[n++] = '(';
        deep[n++] = '"', deep[n++] = 'x', deep[n++] = '"';
        for (size_t k = 0; k < depth; k++)
            deep[n++] = ')';
        deep[n] = 0;
        expect_error(deep, SL_ERR_LIMIT, "groups nested deeper than 200");
        free(deep);
    }
    {
        char big[4096] = "root ::=";
        for (int k = 0; k < 210; k++) /* 2.1M elements, past SL_GRAM_MAX_ELEMENTS */
            strcat(big, " \"a\"{10000}");
        expect_error(big, SL_ERR_LIMIT, "grammar too large");
    }
    /* left recursion through nullable rules that only repeat is fine: (x?)* */
    sl_gram *g = compile("root ::= (\"x\"?)* \"y\"");
    CHECK(g && accepts(g, "y") == 1 && accepts(g, "xxxy") == 1 && accepts(g, "xx") == 0);
    sl_gram_free(g);
}

/* ---- acceptance ---- */

static void test_accept_json(void)
{
    sl_gram *g = compile_file("json.gbnf");
    if (!g) return;
    static const char *good[] = {
        "{}", "[]", "0", "-0.5e+10", "\"\"", "true", " null ", "{\"a\": 1}",
        "{\"a\":[1,2,{\"b\":null}],\"c\":\"x\\\"y\\u00e9\"}", "[ 1 , 2 ]\n",
        "\"caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80\"", "{\n  \"k\": [\n    true\n  ]\n}",
    };
    static const char *bad[] = {
        "{", "[1,]", "01", "-", "1.", "\"\\x\"", "{\"a\" 1}", "{a: 1}", "tru", "nul",
        "\"\x01\"", "[1 2]", "\"\xC3\x28\"", "\"\xED\xA0\x80\"", "\"\xC0\xAF\"", "{}}",
    };
    for (size_t k = 0; k < sizeof good / sizeof *good; k++)
        CHECK_MSG(accepts(g, good[k]) == 1, "json should accept %s", good[k]);
    for (size_t k = 0; k < sizeof bad / sizeof *bad; k++)
        CHECK_MSG(accepts(g, bad[k]) == 0, "json should refuse %s", bad[k]);
    sl_gram_free(g);
}

static void test_accept_features(void)
{
    sl_gram *g = compile("root ::= \"a\"{2,4} \"b\"{3} \"c\"{1,} \"d\"{0,2}");
    CHECK(accepts(g, "aabbbc") == 1 && accepts(g, "aaaabbbccccdd") == 1);
    CHECK(accepts(g, "abbbc") == 0 && accepts(g, "aaaaabbbc") == 0 && accepts(g, "aabbc") == 0 &&
          accepts(g, "aabbb") == 0 && accepts(g, "aabbbcddd") == 0);
    sl_gram_free(g);

    /* negated classes, escapes inside classes, '.', comments and continuation lines */
    g = compile("# a comment\nroot ::= q body q  # trailing\n"
                "  | \"<\" [^>\\]\\-]+ \">\"\n"
                "q ::= \"'\"\nbody ::= (\n  [^'\\\\] | \"\\\\\" .\n)*\n");
    CHECK(accepts(g, "'it\\'s'") == 1 && accepts(g, "''") == 1 && accepts(g, "'a'b'") == 0);
    CHECK(accepts(g, "<abc>") == 1 && accepts(g, "<a]b>") == 0 && accepts(g, "<a-b>") == 0 &&
          accepts(g, "<>") == 0);
    CHECK(accepts(g, "'\xE2\x82\xAC\\\xF0\x9F\x98\x80'") == 1);
    sl_gram_free(g);

    /* classes with multi-byte members and ranges that cross UTF-8 length boundaries */
    g = compile("root ::= [a\\u00e9-\\u00ff\\u07ff-\\u0801\\U0001F600] [^\\x00-\\uFFFF]?");
    CHECK(accepts(g, "a") == 1 && accepts(g, "\xC3\xA9") == 1 && accepts(g, "\xC3\xBF") == 1);
    CHECK(accepts(g, "\xC3\xA8") == 0 && accepts(g, "b") == 0);
    CHECK(accepts(g, "\xDF\xBF") == 1 && accepts(g, "\xE0\xA0\x80") == 1 && accepts(g, "\xE0\xA0\x81") == 1 &&
          accepts(g, "\xE0\xA0\x82") == 0);
    CHECK(accepts(g, "\xF0\x9F\x98\x80") == 1 && accepts(g, "\xF0\x9F\x98\x81") == 0);
    CHECK(accepts(g, "a\xF0\x90\x80\x80") == 1 && accepts(g, "a\xEF\xBF\xBF") == 0);
    sl_gram_free(g);

    /* literal escapes: \xHH is the code point U+00HH (UTF-8 C3 A9 for \xE9), as in llama.cpp */
    g = compile("root ::= \"\\t\\n\\r\\\"\\\\\\xE9\\u20AC\\U0001F600\"");
    CHECK(accepts(g, "\t\n\r\"\\\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80") == 1);
    sl_gram_free(g);

    /* empty alternatives and an empty root */
    g = compile("root ::= \"x\" | ");
    CHECK(accepts(g, "") == 1 && accepts(g, "x") == 1 && accepts(g, "xx") == 0);
    sl_gram_free(g);
}

/* A code point split across accept calls: partial sequences are states of their own. */
static void test_utf8_split(void)
{
    sl_gram *g = compile("root ::= [\\u00e0-\\u00ff\\u4e00-\\u9fff]+ \"!\"");
    sl_gram_matcher *m;
    sl_err e = {0};
    CHECK(sl_gram_matcher_new(g, NULL, &m, &e) == SL_OK);
    const char *s = "\xE4\xB8\xAD\xC3\xA9!"; /* U+4E2D, U+00E9 */
    for (int k = 0; k < 6; k++) {
        CHECK_MSG(sl_gram_matcher_accept_bytes(m, s + k, 1, &e) == SL_OK, "byte %d: %s", k, e.msg);
        CHECK(sl_gram_matcher_can_end(m) == (k == 5));
    }
    CHECK(sl_gram_matcher_must_end(m) == 1);
    CHECK(sl_gram_matcher_accept_bytes(m, "!", 1, &e) == SL_ERR_INVALID);
    /* a lead byte of a code point outside the class is refused at once, before its tail */
    sl_gram_matcher_reset(m);
    CHECK(sl_gram_matcher_accept_bytes(m, "\xE3", 1, &e) == SL_ERR_INVALID &&
          strstr(e.msg, "byte 0 (0xE3)"));
    CHECK(sl_gram_matcher_accept_bytes(m, "\xE4\xB8", 2, &e) == SL_OK);
    CHECK(sl_gram_matcher_accept_bytes(m, "\x80\xE4", 2, &e) == SL_OK); /* ends one, starts the next */
    CHECK(sl_gram_matcher_accept_bytes(m, "!", 1, &e) == SL_ERR_INVALID);
    CHECK(sl_gram_matcher_accept_bytes(m, "\x80\x80!", 3, &e) == SL_ERR_INVALID); /* U+4000 */
    CHECK(sl_gram_matcher_accept_bytes(m, "\xB8\xAD!", 3, &e) == SL_OK && sl_gram_matcher_can_end(m));
    /* rollback restores earlier states: back to "\xE4\xB8" */
    CHECK(sl_gram_matcher_rollback(m, 2, &e) == SL_OK && !sl_gram_matcher_can_end(m));
    CHECK(sl_gram_matcher_accept_bytes(m, "\x80!", 2, &e) == SL_OK && sl_gram_matcher_can_end(m));
    CHECK(sl_gram_matcher_rollback(m, 2, &e) == SL_OK);
    CHECK(sl_gram_matcher_rollback(m, 1, &e) == SL_ERR_LIMIT);
    CHECK(sl_gram_matcher_accept_bytes(m, "\xC3\xA9!", 3, &e) == SL_OK && sl_gram_matcher_can_end(m));
    sl_gram_matcher_free(m);
    sl_gram_free(g);
}

int main(void)
{
    test_parse_errors();
    test_accept_json();
    test_accept_features();
    test_utf8_split();
    return sl_test_done("test_grammar");
}

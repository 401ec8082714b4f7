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
#include "tokenizer.h"

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
    /* exponential ambiguity: 2^k stacks after k '(' — a limit error, not a blow-up */
    {
        sl_gram *amb = compile("root ::= e\ne ::= \"(\" e \")\" | \"(\" e e \")\" | \"x\"");
        sl_gram_matcher *m = NULL;
        sl_err e = {0};
        CHECK(amb && sl_gram_matcher_new(amb, NULL, &m, &e) == SL_OK);
        CHECK(sl_gram_matcher_accept_bytes(m, "((((((((((", 10, &e) == SL_OK);
        CHECK(sl_gram_matcher_accept_bytes(m, "((((((((((", 10, &e) == SL_ERR_LIMIT &&
              strstr(e.msg, "more than 65536 parse stacks"));
        CHECK(sl_gram_matcher_accept_bytes(m, "x)", 2, &e) == SL_OK); /* state unchanged */
        sl_gram_matcher_free(m);
        sl_gram_free(amb);
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

    /* surrogates have no UTF-8: a range across them skips them, negation leaves them out */
    g = compile("root ::= [\\u0100-\\uFFFF] | \"n\" [^a] | \"c\" [\\uD7FF-\\uE000]");
    CHECK(accepts(g, "\xED\x9F\xBF") == 1 && accepts(g, "\xEE\x80\x80") == 1 &&
          accepts(g, "\xED\xA0\x80") == 0 && accepts(g, "\xEF\xBF\xBF") == 1);
    CHECK(accepts(g, "nb") == 1 && accepts(g, "na") == 0 && accepts(g, "n\xED\xBF\xBF") == 0 &&
          accepts(g, "n\xF4\x8F\xBF\xBF") == 1 && accepts(g, "n\xF4\x90\x80\x80") == 0);
    CHECK(accepts(g, "c\xED\x9F\xBF") == 1 && accepts(g, "c\xEE\x80\x80") == 1 &&
          accepts(g, "c\xED\xA0\x80") == 0);
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

/* ---- masks against the oracle ---- */

static int bit(const uint32_t *bits, int32_t id)
{
    return (int)(bits[id >> 5] >> (id & 31) & 1);
}

/* Checks m's mask against oracle o, a second matcher in the same state with a memo of its own:
 * token id is allowed iff o accepts it (then o rolls it back). eos ids are allowed exactly when
 * the grammar can end. Returns the number of allowed tokens, -1 on a mismatch (reported once). */
static int check_mask(sl_gram_matcher *m, sl_gram_matcher *o, const sl_gram_vocab *v,
                      uint32_t *bits, const char *what, int step)
{
    sl_err e = {0};
    CHECK_MSG(sl_gram_matcher_fill_mask(m, bits, &e) == SL_OK, "%s", e.msg);
    int32_t n = sl_gram_vocab_size(v), allowed = 0;
    for (int32_t id = 0; id < n; id++) {
        int ok = sl_gram_matcher_accept_token(o, id, NULL) == SL_OK;
        if (ok && sl_gram_matcher_rollback(o, 1, &e)) CHECK(0);
        if (sl_gram_vocab_is_eos(v, id)) CHECK(ok == sl_gram_matcher_can_end(m));
        if (ok != bit(bits, id)) {
            size_t len;
            const uint8_t *b = sl_gram_vocab_token(v, id, &len);
            CHECK_MSG(0, "%s step %d: token %d ('%.*s') mask %d, oracle %d", what, step, id,
                      (int)len, b ? (const char *)b : "", bit(bits, id), ok);
            return -1;
        }
        allowed += ok;
    }
    for (int32_t id = n; id < (int32_t)(sl_gram_vocab_mask_words(v) * 32); id++)
        CHECK(!bit(bits, id)); /* the padding bits of the last word stay clear */
    return allowed;
}

/* A seeded walk of steps random allowed tokens from the state prefix leads to, checking every
 * mask. The walk ends early when the grammar must end. Returns how many masks were checked. */
static int mask_walk(sl_gram *g, sl_gram_vocab *v, const char *prefix, uint64_t seed, int steps,
                     size_t memo_bytes, const char *what)
{
    sl_gram_matcher *m = NULL, *o = NULL;
    sl_err e = {0};
    CHECK(sl_gram_matcher_new(g, v, &m, &e) == SL_OK && sl_gram_matcher_new(g, v, &o, &e) == SL_OK);
    if (!m || !o) return 0;
    if (memo_bytes) sl_gram_matcher_set_memo_bytes(m, memo_bytes);
    CHECK_MSG(sl_gram_matcher_accept_bytes(m, prefix, strlen(prefix), &e) == SL_OK &&
                  sl_gram_matcher_accept_bytes(o, prefix, strlen(prefix), &e) == SL_OK,
              "%s: prefix '%s': %s", what, prefix, e.msg);
    uint32_t *bits = calloc(sl_gram_vocab_mask_words(v), sizeof *bits);
    int checked = 0;
    for (int step = 0; step < steps; step++) {
        int allowed = check_mask(m, o, v, bits, what, step);
        checked++;
        if (allowed <= 0) break;
        /* the k-th allowed token, eos only when nothing else is allowed (long walks) */
        int n_eos = 0;
        for (int32_t i = 0; i < sl_gram_vocab_size(v); i++)
            n_eos += bit(bits, i) && sl_gram_vocab_is_eos(v, i);
        int eos_only = n_eos == allowed;
        int k = (int)(sl_rng_uniform(seed, (uint64_t)step) * (float)(eos_only ? allowed : allowed - n_eos));
        int32_t id = 0;
        for (int32_t i = 0; i < sl_gram_vocab_size(v); i++)
            if (bit(bits, i) && (eos_only || !sl_gram_vocab_is_eos(v, i)) && k-- == 0) {
                id = i;
                break;
            }
        CHECK(sl_gram_matcher_accept_token(m, id, &e) == SL_OK);
        CHECK(sl_gram_matcher_accept_token(o, id, &e) == SL_OK);
        if (sl_gram_vocab_is_eos(v, id)) {
            CHECK(sl_gram_matcher_must_end(m) && sl_gram_matcher_fill_mask(m, bits, &e) == SL_OK);
            for (size_t w = 0; w < sl_gram_vocab_mask_words(v); w++)
                CHECK(bits[w] == 0); /* after eos nothing is allowed */
            CHECK(sl_gram_matcher_accept_token(m, id, &e) == SL_ERR_INVALID);
            break;
        }
    }
    free(bits);
    sl_gram_matcher_free(m);
    sl_gram_matcher_free(o);
    return checked;
}

/* Every byte alone, every pair over bytes that matter to the test grammars, tokens that split
 * multi-byte characters, a few words, and three families big enough for the mask walk to try
 * skipping their subtrees whole ("q" + each printable ASCII byte, C3 + each continuation byte,
 * "w" + the prefixes of U+2080..U+20BF); id 3 is special (a hole), ids 1 and 2 are eos. */
static sl_gram_vocab *synthetic_vocab(void)
{
    static const char pair_bytes[] = "{}[]\":,0a1- \\\n\xC3\xA9\xE2\x82\xAC\xF0\x9F";
    static const char *words[] = {"true", "false", "null", "\": ", "\"}", "},{", "\xE2\x82",
                                  "\xAC\"", "\xA9\xC3", "2024-01-0", "INFO ", "ERROR x: ",
                                  "\x9F\x98\x80", ".0e+1", "\\u00e9", "\n2025"};
    size_t np = sizeof pair_bytes - 1, nw = sizeof words / sizeof *words;
    int32_t n = (int32_t)(256 + np * np + nw + 95 + 64 + 2 * 64);
    char(*tok)[16] = calloc((size_t)n, sizeof *tok);
    const char **ptr = calloc((size_t)n, sizeof *ptr);
    size_t *len = calloc((size_t)n, sizeof *len);
    int32_t id = 0;
    for (int b = 0; b < 256; b++, id++)
        tok[id][0] = (char)b, len[id] = 1;
    for (size_t a = 0; a < np; a++)
        for (size_t b = 0; b < np; b++, id++)
            tok[id][0] = pair_bytes[a], tok[id][1] = pair_bytes[b], len[id] = 2;
    for (size_t w = 0; w < nw; w++, id++)
        len[id] = strlen(words[w]), memcpy(tok[id], words[w], len[id]);
    for (int c = 0x20; c < 0x7F; c++, id++)
        tok[id][0] = 'q', tok[id][1] = (char)c, len[id] = 2;
    for (int c = 0x80; c < 0xC0; c++, id++)
        tok[id][0] = (char)0xC3, tok[id][1] = (char)c, len[id] = 2;
    for (int c = 0x80; c < 0xC0; c++, id += 2) {
        memcpy(tok[id], "w\xE2\x82", 3), tok[id][3] = (char)c, len[id] = 4;
        memcpy(tok[id + 1], tok[id], 4), tok[id + 1][4] = (char)(c & 1 ? '"' : 'q'), len[id + 1] = 5;
    }
    for (int32_t i = 0; i < n; i++)
        ptr[i] = i == 3 ? NULL : tok[i];
    int32_t eos[] = {1, 2};
    sl_gram_vocab *v = NULL;
    sl_err e = {0};
    CHECK_MSG(sl_gram_vocab_new(ptr, len, n, eos, 2, &v, &e) == SL_OK, "%s", e.msg);
    free(tok), free(ptr), free(len);
    return v;
}

static void test_mask_synthetic(void)
{
    sl_gram_vocab *v = synthetic_vocab();
    sl_gram *json = compile_file("json.gbnf"), *log = compile_file("log.gbnf");
    sl_gram *utf = compile("root ::= ([\u00e0-\u00ff] | \"\u20ac\" | [\U0001F600-\U0001F64F])* \"}\"");
    /* states that loop on plain text: all of it but '"' (UTF-8 too), or ASCII letters only */
    sl_gram *text = compile("root ::= [^\\\"]* \"\\\"\" [a-z q]* \".\"");
    if (!v || !json || !log || !utf || !text) return;
    int checked = 0;
    for (uint64_t seed = 0; seed < 6; seed++) {
        checked += mask_walk(json, v, "", seed, 40, 0, "json");
        checked += mask_walk(json, v, "{\"a\": [1, {\"b\": \"x", seed, 20, 0, "json string");
        checked += mask_walk(log, v, "", seed, 40, 0, "log");
        checked += mask_walk(utf, v, "\xC3", seed, 20, 0, "utf8");
        checked += mask_walk(text, v, "", seed, 30, 0, "text");
        checked += mask_walk(text, v, "x\"", seed, 30, 0, "letters");
    }
    /* a memo bound so small that it is rebuilt again and again, mid-walk included (no mask
     * cache, so that every mask walks the trie) */
    sl_gram *nocache = compile_file("json.gbnf");
    sl_gram_set_mask_cache(nocache, 0);
    checked += mask_walk(nocache, v, "[", 7, 60, 4096, "json small memo");
    sl_gram_free(nocache);
    CHECK(checked > 700);
    /* the special token and the eos ids outside can_end are never allowed */
    sl_gram_matcher *m;
    sl_err e = {0};
    uint32_t bits[32];
    CHECK(sl_gram_matcher_new(json, v, &m, &e) == SL_OK);
    CHECK(sl_gram_matcher_fill_mask(m, bits, &e) == SL_OK);
    CHECK(!bit(bits, 3) && !bit(bits, 1) && !bit(bits, 2) && bit(bits, '{') && bit(bits, ' '));
    CHECK(sl_gram_matcher_accept_token(m, 3, &e) == SL_ERR_INVALID && strstr(e.msg, "special"));
    CHECK(sl_gram_matcher_accept_token(m, 1, &e) == SL_ERR_INVALID && strstr(e.msg, "cannot end"));
    CHECK(sl_gram_matcher_accept_token(m, 9999, &e) == SL_ERR_INVALID && strstr(e.msg, "outside"));
    CHECK(sl_gram_matcher_accept_token(m, '1', &e) == SL_OK && sl_gram_matcher_can_end(m) &&
          !sl_gram_matcher_must_end(m));
    CHECK(sl_gram_matcher_fill_mask(m, bits, &e) == SL_OK && bit(bits, 1) && bit(bits, 2) && !bit(bits, 3));
    CHECK(sl_gram_matcher_accept_token(m, 'x', &e) == SL_ERR_INVALID && strstr(e.msg, "\"x\""));
    CHECK(sl_gram_matcher_accept_token(m, 2, &e) == SL_OK && sl_gram_matcher_must_end(m));
    sl_gram_matcher_free(m);
    /* must_end: a grammar that stops after a fixed text */
    sl_gram *fixed = compile("root ::= \"ab\"");
    CHECK(sl_gram_matcher_new(fixed, v, &m, &e) == SL_OK);
    CHECK(!sl_gram_matcher_must_end(m) && sl_gram_matcher_accept_bytes(m, "ab", 2, &e) == SL_OK);
    CHECK(sl_gram_matcher_must_end(m) && sl_gram_matcher_can_end(m));
    CHECK(sl_gram_matcher_fill_mask(m, bits, &e) == SL_OK);
    for (int32_t id = 0; id < sl_gram_vocab_size(v); id++)
        CHECK(bit(bits, id) == (id == 1 || id == 2));
    sl_gram_matcher_free(m);
    sl_gram_free(fixed);
    sl_gram_free(json), sl_gram_free(log), sl_gram_free(utf), sl_gram_free(text);
    sl_gram_vocab_free(v);
}

/* The real Qwen3 vocabulary: loader facts, then seeded walks over the JSON grammar from states
 * inside strings, numbers and between keys. */
static void test_mask_qwen(void)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/data/qwen3-tokenizer", src_dir());
    int32_t eos[] = {151645, 151643}; /* <|im_end|>, <|endoftext|> */
    sl_gram_vocab *v = NULL;
    sl_err e = {0};
    CHECK(sl_gram_vocab_load(path, 151000, eos, 2, &v, &e) == SL_ERR_INVALID &&
          strstr(e.msg, "below the tokenizer's 151669 ids"));
    CHECK_MSG(sl_gram_vocab_load(path, 151936, eos, 2, &v, &e) == SL_OK, "%s", e.msg);
    if (!v) return;
    size_t len;
    const uint8_t *b;
    CHECK(sl_gram_vocab_size(v) == 151936 && sl_gram_vocab_mask_words(v) == 4748);
    CHECK((b = sl_gram_vocab_token(v, 220, &len)) && len == 1 && b[0] == ' '); /* "Ġ" */
    CHECK((b = sl_gram_vocab_token(v, 198, &len)) && len == 1 && b[0] == '\n'); /* "Ċ" */
    CHECK((b = sl_gram_vocab_token(v, 151657, &len)) && len == 11 && !memcmp(b, "<tool_call>", 11));
    CHECK(!sl_gram_vocab_token(v, 151644, &len) && len == 0); /* <|im_start|>: special */
    CHECK(!sl_gram_vocab_token(v, 151700, &len));             /* past the tokenizer: a hole */
    /* every id decodes to the bytes the router's tokenizer gives it (the shared alphabet) */
    sl_tok *t = NULL;
    CHECK_MSG(sl_tok_load(&t, path, &e) == SL_OK, "%s", e.msg);
    int32_t same = 0;
    for (int32_t id = 0; t && id < sl_tok_vocab_size(t); id++) {
        size_t tl, gl;
        const uint8_t *tb = sl_tok_token_bytes(t, id, &tl), *gb = sl_gram_vocab_token(v, id, &gl);
        if (sl_tok_is_special(t, id) ? !gb : gb && tl == gl && !memcmp(tb, gb, tl)) same++;
    }
    CHECK(same == 151669);
    sl_tok_free(t);
    sl_gram *g = compile_file("json.gbnf");
    if (!g) {
        sl_gram_vocab_free(v);
        return;
    }
    static const char *prefix[] = {
        "",                                   /* the start: whitespace, any value */
        "{\"name\": \"caf",                     /* inside a string */
        "{\"name\": \"x\\",                    /* after a backslash */
        "{\"a\": -12",                         /* inside a number */
        "{\"a\": 1, ",                          /* between keys */
        "[\"x\", {\"k\": [tr",                   /* inside a literal */
        "{\"s\": \"\xE2\x82",                    /* inside a string, mid-character */
    };
    int checked = 0;
    for (size_t k = 0; k < sizeof prefix / sizeof *prefix; k++)
        checked += mask_walk(g, v, prefix[k], 100 + k, 40, 0, prefix[k]);
    /* the same without the mask cache: every mask is a trie walk */
    sl_gram *nocache = compile_file("json.gbnf");
    sl_gram_set_mask_cache(nocache, 0);
    checked += mask_walk(nocache, v, "{\"k\": [\"", 9, 40, 0, "no cache");
    sl_gram_free(nocache);
    CHECK(checked >= 300);
    /* inside a string: a non-special added token is text; special ones never come */
    sl_gram_matcher *m;
    uint32_t *bits = calloc(sl_gram_vocab_mask_words(v), sizeof *bits);
    CHECK(sl_gram_matcher_new(g, v, &m, &e) == SL_OK);
    CHECK(sl_gram_matcher_accept_bytes(m, "\"", 1, &e) == SL_OK);
    CHECK(sl_gram_matcher_fill_mask(m, bits, &e) == SL_OK);
    CHECK(bit(bits, 151657) && bit(bits, 151667) && !bit(bits, 151644) && !bit(bits, 151645) &&
          !bit(bits, 151643) && !bit(bits, 151700) && !bit(bits, 198));
    CHECK(sl_gram_matcher_accept_token(m, 151657, &e) == SL_OK);
    sl_gram_matcher_free(m);
    free(bits);
    sl_gram_free(g);
    sl_gram_vocab_free(v);
}

/* ---- the compiled-grammar cache ---- */

typedef struct cache_job {
    sl_gram_cache *c;
    sl_gram_vocab *v;
    int worker, ok;
} cache_job;

/* Compiles (through the cache) and uses one of three grammars per round, as worker threads do:
 * every thread must see the same sl_gram for the same text, and masks shared through it. */
static void *cache_thread(void *arg)
{
    cache_job *j = arg;
    static const struct {
        const char *text;
        char first; /* a byte the start allows */
    } gr[] = {{"root ::= [a-c]+ \"!\"", 'b'}, {"root ::= \"{\" [0-9]* \"}\"", '{'},
              {"root ::= (\"ab\" | \"a\")* \"b\"", 'a'}};
    j->ok = 1;
    for (int round = 0; round < 200; round++) {
        const char *t = gr[(round + j->worker) % 3].text;
        sl_gram *g = NULL;
        sl_gram_matcher *m = NULL;
        sl_err e = {0};
        uint32_t bits[32];
        if (sl_gram_cache_compile(j->c, t, strlen(t), &g, &e) ||
            sl_gram_matcher_new(g, j->v, &m, &e) || sl_gram_matcher_fill_mask(m, bits, &e) ||
            !bit(bits, gr[(round + j->worker) % 3].first) || bit(bits, '}'))
            j->ok = 0;
        sl_gram_matcher_free(m);
        sl_gram_free(g);
    }
    return NULL;
}

static void test_gram_cache(void)
{
    sl_gram_cache *c = NULL;
    sl_err e = {0};
    CHECK(sl_gram_cache_new(0, &c, &e) == SL_ERR_INVALID);
    CHECK(sl_gram_cache_new(2, &c, &e) == SL_OK);
    const char *a = "root ::= \"a\"", *b = "root ::= \"b\"", *d = "root ::= \"d\"";
    sl_gram *ga, *ga2, *gb, *gd, *x;
    CHECK(sl_gram_cache_get(c, a, strlen(a)) == NULL);
    CHECK(sl_gram_cache_compile(c, a, strlen(a), &ga, &e) == SL_OK);
    CHECK(sl_gram_cache_compile(c, a, strlen(a), &ga2, &e) == SL_OK && ga2 == ga);
    CHECK(sl_gram_cache_compile(c, "root ::= (", 10, &x, &e) == SL_ERR_PARSE && !x);
    CHECK(sl_gram_cache_get(c, "root ::= (", 10) == NULL); /* failures are not cached */
    /* put of a grammar equal to a cached one hands back the cached one */
    sl_gram *dup = compile(a);
    CHECK(sl_gram_cache_put(c, a, strlen(a), dup) == ga);
    sl_gram_free(ga); /* the reference put returned */
    CHECK(sl_gram_cache_compile(c, b, strlen(b), &gb, &e) == SL_OK);
    CHECK(sl_gram_cache_get(c, a, strlen(a)) == ga); /* a is now the most recent */
    sl_gram_free(ga);
    CHECK(sl_gram_cache_compile(c, d, strlen(d), &gd, &e) == SL_OK); /* evicts b */
    CHECK((x = sl_gram_cache_get(c, b, strlen(b))) == NULL);
    CHECK((x = sl_gram_cache_get(c, a, strlen(a))) == ga);
    sl_gram_free(x);
    /* grammars handed out outlive the cache */
    sl_gram_cache_free(c);
    CHECK(accepts(ga, "a") == 1 && accepts(gb, "b") == 1 && accepts(gd, "d") == 1);
    sl_gram_free(ga), sl_gram_free(ga2), sl_gram_free(gb), sl_gram_free(gd);

    /* threads */
    sl_gram_vocab *v = synthetic_vocab();
    CHECK(sl_gram_cache_new(2, &c, &e) == SL_OK);
    cache_job job[4];
    pthread_t th[4];
    for (int k = 0; k < 4; k++) {
        job[k] = (cache_job){c, v, k, 0};
        pthread_create(&th[k], NULL, cache_thread, &job[k]);
    }
    for (int k = 0; k < 4; k++) {
        pthread_join(th[k], NULL);
        CHECK(job[k].ok);
    }
    sl_gram_cache_free(c);
    sl_gram_vocab_free(v);
}

int main(void)
{
    test_parse_errors();
    test_accept_json();
    test_accept_features();
    test_utf8_split();
    test_mask_synthetic();
    test_gram_cache();
    test_mask_qwen();
    return sl_test_done("test_grammar");
}

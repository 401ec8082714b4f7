/* `sluice tokenize`: text <-> token ids from the command line, a JSON-lines mode for tests that
 * send many strings per process, and a throughput benchmark. Flags: docs/cli.md. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "detok.h"
#include "router_cmd.h"
#include "sl_hub.h"
#include "sl_opts.h"
#include "tokenizer.h"

static const char summary[] =
    "Encodes UTF-8 text from stdin to token ids (space-separated, one line), or with --decode\n"
    "token ids from stdin to text. --jsonl handles one JSON request per line:\n"
    "  {\"text\": S} or {\"hex\": H} -> {\"ids\": [...]}\n"
    "  {\"text\": S, \"literal\": [[START, END], ...]} -> {\"ids\": [...]} (byte ranges whose\n"
    "    special tokens are plain text; --split-special-tokens: all of S when absent)\n"
    "  {\"text\": S, \"split\": true} -> {\"ends\": [...]} (pre-tokenizer pieces, byte offsets)\n"
    "  {\"ids\": [...], \"skip_special\": B, \"stream\": B} -> {\"text\": S, \"chunks\": [...]}\n"
    "  a failed request -> {\"error\": S}\n"
    "--bench N encodes the input (each JSONL text) N times and prints timings as JSON.";

static int read_all(FILE *f, sl_buf *b)
{
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        if (sl_buf_append(b, chunk, n)) return -1;
    if (!b->data && sl_buf_append(b, "", 0)) return -1; /* empty input: "" */
    return ferror(f) ? -1 : 0;
}

static int print_ids(const sl_tok_ids *ids)
{
    for (size_t i = 0; i < ids->n; i++)
        printf(i ? " %d" : "%d", ids->v[i]);
    putchar('\n');
    return 0;
}

/* Whitespace-separated decimal ids in s[0..n) -> ids; names the first bad item. */
static sl_status parse_ids(const char *s, size_t n, sl_tok_ids *ids, sl_err *e)
{
    if (memchr(s, 0, n)) return sl_err_set(e, SL_ERR_INVALID, "the ids contain a NUL byte");
    for (size_t item = 1;; item++) {
        while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
            s++;
        if (!*s) return SL_OK;
        char *end;
        errno = 0;
        long long v = strtoll(s, &end, 10);
        if (end == s || errno || (*end && !strchr(" \t\r\n", *end)) || v < 0 || v > INT32_MAX) {
            int w = (int)strcspn(s, " \t\r\n");
            return sl_err_set(e, SL_ERR_INVALID, "item %zu ('%.*s') is not a token id", item,
                              w > 40 ? 40 : w, s);
        }
        if (sl_tok_ids_push(ids, (int32_t)v)) return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
        s = end;
    }
}

/* "0a1b..." -> bytes in out; -1 on a malformed string. */
static int hex_decode(const char *h, size_t n, sl_buf *out)
{
    if (n % 2) return -1;
    for (size_t i = 0; i < n; i += 2) {
        unsigned v;
        char two[3] = {h[i], h[i + 1], 0};
        if (!strchr("0123456789abcdefABCDEF", two[0]) ||
            !strchr("0123456789abcdefABCDEF", two[1]) || sscanf(two, "%x", &v) != 1)
            return -1;
        uint8_t byte = (uint8_t)v;
        if (sl_buf_append(out, &byte, 1)) return -1;
    }
    return 0;
}

static json_t *error_answer(const char *msg)
{
    return json_pack("{s:s}", "error", msg);
}

/* {"ids": encode(s)} (special tokens plain text in lit), or with split
 * {"ends": sl_tok_split(s)}. */
static json_t *encode_answer(const sl_tok *t, const char *s, size_t n, const sl_tok_spans *lit,
                             int split)
{
    sl_tok_ids ids = {0};
    sl_err e = {0};
    if ((split ? sl_tok_split(t, s, n, &ids, &e) : sl_tok_encode_literal(t, s, n, lit, &ids, &e)) !=
        SL_OK)
        return error_answer(e.msg);
    json_t *arr = json_array();
    for (size_t i = 0; i < ids.n; i++)
        json_array_append_new(arr, json_integer(ids.v[i]));
    sl_tok_ids_free(&ids);
    return json_pack("{s:o}", split ? "ends" : "ids", arr);
}

static json_t *decode_answer(const sl_tok *t, const json_t *req)
{
    const json_t *jids = json_object_get(req, "ids");
    unsigned flags = json_is_true(json_object_get(req, "skip_special")) ? SL_DETOK_SKIP_SPECIAL : 0;
    int stream = json_is_true(json_object_get(req, "stream"));
    sl_detok d;
    sl_buf text = {0};
    sl_err e = {0};
    json_t *chunks = json_array(), *ans = NULL;
    sl_detok_init(&d, t, flags);
    size_t i;
    const json_t *v;
    json_array_foreach(jids, i, v)
    {
        size_t at = text.len;
        json_int_t id = json_integer_value(v);
        if (!json_is_integer(v) || id < INT32_MIN || id > INT32_MAX) {
            sl_err_set(&e, SL_ERR_INVALID, "ids[%zu] is not a token id", i);
            break;
        }
        if (sl_detok_push(&d, (int32_t)id, &text, &e) != SL_OK) {
            sl_err_wrap(&e, "ids[%zu]", i);
            break;
        }
        json_array_append_new(chunks, json_stringn(text.data ? text.data + at : "", text.len - at));
    }
    if (!e.code) {
        size_t at = text.len;
        sl_detok_finish(&d, &text, &e);
        json_array_append_new(chunks, json_stringn(text.data ? text.data + at : "", text.len - at));
    }
    if (e.code)
        ans = error_answer(e.msg);
    else {
        ans = json_pack("{s:s%}", "text", text.data ? text.data : "", text.len);
        if (stream) json_object_set(ans, "chunks", chunks);
    }
    json_decref(chunks);
    sl_buf_free(&text);
    return ans;
}

/* The text of a JSONL request ("text" or "hex") into *s and *n (hex bytes land in raw). */
static const char *request_text(const json_t *req, sl_buf *raw, const char **s, size_t *n)
{
    const json_t *text = json_object_get(req, "text"), *hex = json_object_get(req, "hex");
    if (json_is_string(text)) {
        *s = json_string_value(text);
        *n = json_string_length(text);
        return NULL;
    }
    if (!json_is_string(hex)) return "a request needs \"text\", \"hex\" or \"ids\"";
    if (hex_decode(json_string_value(hex), json_string_length(hex), raw) || sl_buf_reserve(raw, 0))
        return "\"hex\" is not a string of hex digit pairs";
    *s = raw->data;
    *n = raw->len;
    return NULL;
}

/* All of s[0..n) as one literal range (none for an empty text). */
static sl_tok_spans whole_text(sl_tok_span *all, size_t n)
{
    *all = (sl_tok_span){0, n};
    return (sl_tok_spans){all, n ? 1 : 0, 1};
}

/* A request's "literal": [[start, end], ...] into lit (the ranges are checked by the encoder). */
static const char *request_literal(const json_t *req, sl_tok_spans *lit)
{
    const json_t *v = json_object_get(req, "literal"), *r;
    size_t i;
    json_array_foreach(v, i, r)
    {
        json_int_t a = json_integer_value(json_array_get(r, 0));
        json_int_t b = json_integer_value(json_array_get(r, 1));
        if (json_array_size(r) != 2 || a < 0 || b < 0)
            return "\"literal\" takes [start, end] pairs";
        if (sl_tok_spans_push(lit, (size_t)a, (size_t)b)) return "out of memory";
    }
    return json_is_array(v) ? NULL : "\"literal\" takes [start, end] pairs";
}

static json_t *jsonl_answer(const sl_tok *t, int split_special, const char *line, size_t len)
{
    json_error_t je;
    json_t *req = json_loadb(line, len, JSON_ALLOW_NUL, &je), *ans;
    if (!json_is_object(req)) {
        char msg[300];
        snprintf(msg, sizeof msg, "bad JSON request: %s", req ? "not an object" : je.text);
        json_decref(req);
        return error_answer(msg);
    }
    if (json_is_array(json_object_get(req, "ids")))
        ans = decode_answer(t, req);
    else {
        sl_buf raw = {0};
        sl_tok_spans given = {0}, all;
        sl_tok_span whole;
        const sl_tok_spans *lit = NULL;
        const char *s = NULL;
        size_t n = 0;
        const char *bad = request_text(req, &raw, &s, &n);
        int split = json_is_true(json_object_get(req, "split"));
        if (!bad && json_object_get(req, "literal")) {
            bad = request_literal(req, &given);
            lit = &given;
        } else if (split_special) {
            all = whole_text(&whole, n);
            lit = &all;
        }
        ans = bad ? error_answer(bad) : encode_answer(t, s, n, lit, split);
        sl_tok_spans_free(&given);
        sl_buf_free(&raw);
    }
    json_decref(req);
    return ans;
}

static int run_jsonl(const sl_tok *t, int split_special)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int failed = 0;
    while ((len = getline(&line, &cap, stdin)) >= 0) {
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            len--;
        if (!len) continue;
        json_t *ans = jsonl_answer(t, split_special, line, (size_t)len);
        failed |= ans == NULL || json_object_get(ans, "error") != NULL;
        char *out = ans ? json_dumps(ans, JSON_COMPACT) : NULL;
        puts(out ? out : "{\"error\":\"out of memory\"}");
        free(out);
        json_decref(ans);
    }
    free(line);
    return failed;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Encodes every document `passes` times on this thread; prints sizes and timings. */
static int run_bench(const sl_tok *t, const char **doc, const size_t *len, size_t n_docs,
                     int passes, int split_special)
{
    sl_tok_ids ids = {0};
    sl_err e = {0};
    size_t bytes = 0, tokens = 0;
    double best = 1e30, total = 0;
    for (int p = -1; p < passes; p++) { /* pass -1 warms caches and counts */
        double t0 = now_s();
        for (size_t i = 0; i < n_docs; i++) {
            ids.n = 0;
            sl_tok_span whole;
            sl_tok_spans all = whole_text(&whole, len[i]);
            if (sl_tok_encode_literal(t, doc[i], len[i], split_special ? &all : NULL, &ids, &e) !=
                SL_OK) {
                fprintf(stderr, "sluice tokenize: document %zu: %s\n", i + 1, e.msg);
                sl_tok_ids_free(&ids);
                return 1;
            }
            if (p < 0) bytes += len[i], tokens += ids.n;
        }
        double dt = now_s() - t0;
        if (p < 0) continue;
        total += dt;
        if (dt < best) best = dt;
    }
    sl_tok_ids_free(&ids);
    printf("{\"docs\": %zu, \"bytes\": %zu, \"tokens\": %zu, \"passes\": %d, \"best_s\": %.6f, "
           "\"mean_s\": %.6f, \"mb_per_s\": %.3f, \"tokens_per_s\": %.0f}\n",
           n_docs, bytes, tokens, passes, best, total / passes, (double)bytes / best / 1e6,
           (double)tokens / best);
    return 0;
}

/* --bench input: the whole of stdin as one document, or one per JSONL "text". */
static int bench_input(const sl_tok *t, const sl_buf *in, int jsonl, int passes, int split_special)
{
    if (!jsonl) {
        const char *doc = in->data;
        return run_bench(t, &doc, &in->len, 1, passes, split_special);
    }
    json_t *all = json_array();
    for (const char *p = in->data, *end = in->data + in->len; p < end;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        json_t *req = n ? json_loadb(p, n, JSON_ALLOW_NUL, NULL) : NULL;
        if (json_is_string(json_object_get(req, "text")))
            json_array_append(all, json_object_get(req, "text"));
        else if (n) {
            fprintf(stderr, "sluice tokenize: --bench reads {\"text\": ...} lines only\n");
            json_decref(req);
            json_decref(all);
            return 1;
        }
        json_decref(req);
        p += n + 1;
    }
    size_t n_docs = json_array_size(all);
    const char **doc = calloc(n_docs + 1, sizeof *doc);
    size_t *len = calloc(n_docs + 1, sizeof *len);
    for (size_t i = 0; doc && len && i < n_docs; i++) {
        doc[i] = json_string_value(json_array_get(all, i));
        len[i] = json_string_length(json_array_get(all, i));
    }
    int rc = doc && len ? run_bench(t, doc, len, n_docs, passes, split_special) : 1;
    free(doc);
    free(len);
    json_decref(all);
    return rc;
}

int sl_cmd_tokenize(int argc, char **argv)
{
    const char *path = NULL;
    int decode = 0, skip_special = 0, jsonl = 0, bench = 0, split_special = 0, help = 0;
    const sl_opt opts[] = {
        {"--tokenizer", "--model", SL_OPT_STR, &path,
         "tokenizer.json, a directory holding it, or Hugging Face model id ORG/NAME"},
        {"--decode", NULL, SL_OPT_FLAG, &decode, "read token ids, write text"},
        {"--skip-special", NULL, SL_OPT_FLAG, &skip_special, "decoding drops special tokens"},
        {"--jsonl", NULL, SL_OPT_FLAG, &jsonl, "one JSON request per line in, one answer out"},
        {"--bench", NULL, SL_OPT_INT, &bench, "time N encoding passes over the input"},
        {"--split-special-tokens", NULL, SL_OPT_FLAG, &split_special,
         "encoding takes special tokens in the text as plain text (as a client's text)"},
        {"--help", "-h", SL_OPT_FLAG, &help, "show this help"},
        {0}};
    sl_err e = {0};
    if (sl_opts_parse(argc, argv, opts, &e) != SL_OK || (!help && !path) || bench < 0) {
        fprintf(stderr, "sluice tokenize: %s\n",
                e.code      ? e.msg
                : bench < 0 ? "--bench needs a count >= 1"
                            : "--tokenizer is required");
        sl_opts_usage(stderr, "tokenize", summary, opts);
        return 2;
    }
    if (help) {
        sl_opts_usage(stdout, "tokenize", summary, opts);
        return 0;
    }
    char dir[SL_HUB_PATH_MAX];
    if (sl_hub_resolve(path, NULL, SL_HUB_TEXT, dir, sizeof dir, &e)) {
        fprintf(stderr, "sluice tokenize: %s\n", e.msg);
        return 1;
    }
    sl_tok *t;
    if (sl_tok_load(&t, dir, &e) != SL_OK) {
        fprintf(stderr, "sluice tokenize: %s\n", e.msg);
        return 1;
    }
    int rc = 0;
    if (jsonl && !bench)
        rc = run_jsonl(t, split_special);
    else {
        sl_buf in = {0};
        sl_tok_ids ids = {0};
        sl_buf text = {0};
        if (read_all(stdin, &in)) {
            fprintf(stderr, "sluice tokenize: cannot read stdin\n");
            rc = 1;
        } else if (bench) {
            rc = bench_input(t, &in, jsonl, bench, split_special);
        } else if (decode) {
            unsigned flags = skip_special ? SL_DETOK_SKIP_SPECIAL : 0;
            if (parse_ids(in.data, in.len, &ids, &e) != SL_OK ||
                sl_detok_decode(t, ids.v, ids.n, flags, &text, &e) != SL_OK) {
                fprintf(stderr, "sluice tokenize: %s\n", e.msg);
                rc = 1;
            } else
                fwrite(text.data ? text.data : "", 1, text.len, stdout);
        } else {
            sl_tok_span whole;
            sl_tok_spans all = whole_text(&whole, in.len);
            if (sl_tok_encode_literal(t, in.data, in.len, split_special ? &all : NULL, &ids, &e) !=
                SL_OK) {
                fprintf(stderr, "sluice tokenize: %s\n", e.msg);
                rc = 1;
            } else
                rc = print_ids(&ids);
        }
        sl_buf_free(&in);
        sl_buf_free(&text);
        sl_tok_ids_free(&ids);
    }
    sl_tok_free(t);
    if (fflush(stdout) != 0) rc = 1;
    return rc;
}

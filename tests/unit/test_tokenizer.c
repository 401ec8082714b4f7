/* Tokenizer and detokenizer edge cases (parity with Hugging Face on large inputs is
 * tests/py/test_tokenizer_parity.py): known ids of the real Qwen3 tokenizer, lookups, error
 * paths, BPE merge order on a hand-made vocabulary, the streaming detokenizer against one-shot
 * decoding on random id sequences, and concurrent encoding from several threads. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "detok.h"
#include "sl_file.h"
#include "sl_rng.h"
#include "sl_test.h"
#include "tokenizer.h"
#include "utf8.h"

static int ids_eq(const sl_tok_ids *ids, const int32_t *want, size_t n)
{
    return ids->n == n && !memcmp(ids->v, want, n * sizeof *want);
}

static int encode_is(const sl_tok *t, const char *text, const int32_t *want, size_t n)
{
    sl_tok_ids ids = {0};
    sl_err e = {0};
    int ok = sl_tok_encode(t, text, strlen(text), &ids, &e) == SL_OK && ids_eq(&ids, want, n);
    if (!ok) {
        fprintf(stderr, "encode '%s' gave %zu ids:", text, ids.n);
        for (size_t i = 0; i < ids.n; i++)
            fprintf(stderr, " %d", ids.v[i]);
        fprintf(stderr, " (%s)\n", e.msg);
    }
    sl_tok_ids_free(&ids);
    return ok;
}

#define ENCODE_IS(t, text, ...)                                                                    \
    do {                                                                                           \
        const int32_t want_[] = {__VA_ARGS__};                                                     \
        CHECK(encode_is(t, text, want_, sizeof want_ / sizeof want_[0]));                          \
    } while (0)

/* Ids below come from Hugging Face tokenizers 0.23 on the same tokenizer.json. */
static void test_qwen_known(const sl_tok *t)
{
    ENCODE_IS(t, "h\xc3\xa9llo \xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x8e\x89<|im_end|> x", 71, 18503,
              385, 220, 108386, 11162, 236, 231, 151645, 856);
    ENCODE_IS(t,
              "a   \r\n\r\n  b\xc2\xa0\xc2\x85"
              "c",
              64, 262, 871, 220, 293, 4102, 126, 227, 66);
    /* NFC: e + combining acute is encoded as the precomposed letter */
    ENCODE_IS(t, "caf\xc3\xa9", 924, 58858);
    ENCODE_IS(t, "cafe\xcc\x81", 924, 58858);
    ENCODE_IS(t, "<think>\n\n</think>\n\n", 151667, 271, 151668, 271);

    sl_tok_ids ids = {0};
    sl_err e = {0};
    CHECK(sl_tok_encode(t, "", 0, &ids, &e) == SL_OK && ids.n == 0);
    /* appends; a NUL byte is an ordinary character */
    CHECK(sl_tok_encode(t, "a\0b", 3, &ids, &e) == SL_OK && ids.n == 3);
    CHECK(sl_tok_encode(t, "a", 1, &ids, &e) == SL_OK && ids.n == 4 && ids.v[3] == 64);
    /* invalid UTF-8: a named error, and the ids already there are kept */
    const char *bad[] = {"\xff", "ab\xc3", "\xed\xa0\x80", "\xc0\xaf", "ok\xf4\x90\x80\x80"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        e = (sl_err){0};
        CHECK(sl_tok_encode(t, bad[i], strlen(bad[i]), &ids, &e) == SL_ERR_INVALID);
        CHECK(strstr(e.msg, "not valid UTF-8") != NULL && ids.n == 4);
    }
    CHECK(strstr(e.msg, "offset 2") != NULL);
    sl_tok_ids_free(&ids);
}

static void test_lookups(const sl_tok *t)
{
    size_t n = 0;
    CHECK(sl_tok_vocab_size(t) == 151669);
    CHECK(sl_tok_token_id(t, "<|im_end|>") == 151645);
    CHECK(sl_tok_token_id(t, "<|endoftext|>") == 151643);
    CHECK(sl_tok_token_id(t, "<think>") == 151667 && sl_tok_token_id(t, "</think>") == 151668);
    CHECK(sl_tok_token_id(t, "\xc4\xa0the") == 279); /* "Ġthe" */
    CHECK(sl_tok_token_id(t, "no such token") == -1);
    CHECK(!strcmp(sl_tok_token_str(t, 151644), "<|im_start|>"));
    CHECK(sl_tok_token_str(t, 151669) == NULL && sl_tok_token_str(t, -1) == NULL);
    const uint8_t *b = sl_tok_token_bytes(t, 279, &n);
    CHECK(b && n == 4 && !memcmp(b, " the", 4));
    b = sl_tok_token_bytes(t, 151645, &n);
    CHECK(b && n == 10 && !memcmp(b, "<|im_end|>", 10));
    CHECK(sl_tok_is_special(t, 151645) && sl_tok_is_special(t, 151643));
    CHECK(!sl_tok_is_special(t, 151667) && !sl_tok_is_special(t, 279));
    CHECK(!sl_tok_is_special(t, 1 << 30));
}

/* Id of the single-byte token for byte b. */
static int32_t byte_token(const sl_tok *t, uint8_t b)
{
    for (int32_t id = 0; id < sl_tok_vocab_size(t); id++) { /* Qwen: found among ids 0..255 */
        size_t n;
        const uint8_t *p = sl_tok_token_bytes(t, id, &n);
        if (p && n == 1 && p[0] == b) return id;
    }
    return -1;
}

/* Streams ids through a detokenizer; checks every piece is valid UTF-8 and that the pieces add
 * up to the one-shot decode. Returns the streamed text (caller frees). */
static char *stream_checked(const sl_tok *t, const int32_t *ids, size_t n, unsigned flags)
{
    sl_detok d;
    sl_buf text = {0}, whole = {0};
    sl_err e = {0};
    sl_buf_append(&text, "", 0); /* allocates: text.data + offset below is never NULL + 0 */
    sl_detok_init(&d, t, flags);
    for (size_t i = 0; i <= n; i++) {
        size_t at = text.len;
        sl_status st =
            i < n ? sl_detok_push(&d, ids[i], &text, &e) : sl_detok_finish(&d, &text, &e);
        CHECK(st == SL_OK);
        CHECK(sl_utf8_valid_prefix((const uint8_t *)text.data + at, text.len - at) ==
              text.len - at);
    }
    CHECK(sl_detok_decode(t, ids, n, flags, &whole, &e) == SL_OK);
    CHECK(text.len == whole.len && (!text.len || !memcmp(text.data, whole.data, text.len)));
    sl_buf_free(&whole);
    return sl_buf_take(&text);
}

static void test_detok_pieces(const sl_tok *t)
{
    /* 🎉 = F0 9F 8E 89 spelled byte by byte: nothing until the last byte */
    const uint8_t party[] = {0xF0, 0x9F, 0x8E, 0x89};
    int32_t ids[8];
    for (int i = 0; i < 4; i++)
        ids[i] = byte_token(t, party[i]);
    sl_detok d;
    sl_buf out = {0};
    sl_err e = {0};
    sl_detok_init(&d, t, 0);
    for (int i = 0; i < 3; i++)
        CHECK(sl_detok_push(&d, ids[i], &out, &e) == SL_OK && out.len == 0);
    CHECK(sl_detok_push(&d, ids[3], &out, &e) == SL_OK && out.len == 4 &&
          !memcmp(out.data, party, 4));
    CHECK(sl_detok_finish(&d, &out, &e) == SL_OK && out.len == 4);

    /* an unknown id is refused and changes nothing */
    sl_buf_clear(&out);
    CHECK(sl_detok_push(&d, ids[0], &out, &e) == SL_OK && out.len == 0);
    CHECK(sl_detok_push(&d, 151669, &out, &e) == SL_ERR_INVALID && strstr(e.msg, "151669"));
    CHECK(sl_detok_push(&d, -5, &out, &e) == SL_ERR_INVALID && out.len == 0);
    CHECK(sl_detok_push(&d, ids[1], &out, &e) == SL_OK && out.len == 0);
    /* a dangling start of a character becomes one U+FFFD at the end */
    CHECK(sl_detok_finish(&d, &out, &e) == SL_OK && !strcmp(out.data, "\xEF\xBF\xBD"));

    /* ill-formed: F0 9F then 'A' -> U+FFFD A; E0 80 -> two U+FFFD (maximal subparts) */
    int32_t bad1[] = {byte_token(t, 0xF0), byte_token(t, 0x9F), byte_token(t, 'A')};
    char *s = stream_checked(t, bad1, 3, 0);
    CHECK(!strcmp(s, "\xEF\xBF\xBD"
                     "A"));
    free(s);
    int32_t bad2[] = {byte_token(t, 0xE0), byte_token(t, 0x80), byte_token(t, 'z')};
    s = stream_checked(t, bad2, 3, 0);
    CHECK(!strcmp(s, "\xEF\xBF\xBD\xEF\xBF\xBD"
                     "z"));
    free(s);

    /* special tokens: kept, or dropped with SL_DETOK_SKIP_SPECIAL; <think> is not special */
    int32_t chat[] = {151644, 872, 198, 151667, 151645};
    s = stream_checked(t, chat, 5, 0);
    CHECK(!strcmp(s, "<|im_start|>user\n<think><|im_end|>"));
    free(s);
    s = stream_checked(t, chat, 5, SL_DETOK_SKIP_SPECIAL);
    CHECK(!strcmp(s, "user\n<think>"));
    free(s);
    /* a special token between the bytes of a character ends it (HF joins all bytes) */
    int32_t split[] = {ids[0], ids[1], 151645, ids[2], ids[3]};
    s = stream_checked(t, split, 5, 0);
    CHECK(!strcmp(s, "\xEF\xBF\xBD<|im_end|>\xEF\xBF\xBD\xEF\xBF\xBD"));
    free(s);
    s = stream_checked(t, split, 5, SL_DETOK_SKIP_SPECIAL);
    CHECK(!strcmp(s, "\xF0\x9F\x8E\x89"));
    free(s);
    sl_buf_free(&out);
}

static uint32_t rnd(uint64_t *state)
{
    return (uint32_t)sl_rng_mix((*state)++);
}

/* Encode -> stream: random texts of multi-byte characters come back exactly, and random id
 * sequences (mostly single bytes) stream without ever splitting a character. */
static void test_detok_random(const sl_tok *t)
{
    static const char *alphabet[] = {"a",
                                     " ",
                                     "\n",
                                     "\xc3\xa9",
                                     "\xe4\xbd\xa0",
                                     "\xe5\xa5\xbd",
                                     "\xf0\x9f\x8e\x89",
                                     "\xf0\x9f\x91\xa8\xe2\x80\x8d",
                                     "<|im_end|>",
                                     "\xd0\xbc",
                                     "1",
                                     "\xe2\x80\x94"};
    uint64_t rng = 42;
    for (int iter = 0; iter < 300; iter++) {
        sl_buf text = {0};
        int n = 1 + (int)(rnd(&rng) % 60);
        for (int i = 0; i < n; i++)
            sl_buf_puts(&text, alphabet[rnd(&rng) % (sizeof alphabet / sizeof *alphabet)]);
        sl_tok_ids ids = {0};
        sl_err e = {0};
        CHECK(sl_tok_encode(t, text.data, text.len, &ids, &e) == SL_OK);
        char *back = stream_checked(t, ids.v, ids.n, 0);
        CHECK_MSG(!strcmp(back, text.data), "'%s' came back as '%s'", text.data, back);
        free(back);
        /* random ids, 3 in 4 of them single bytes */
        int32_t some[64];
        for (int i = 0; i < 64; i++) {
            uint32_t r = rnd(&rng);
            some[i] = r % 4 ? (int32_t)(r >> 8) % 256 : (int32_t)((r >> 8) % 151669u);
        }
        free(stream_checked(t, some, 64, iter % 2 ? SL_DETOK_SKIP_SPECIAL : 0));
        sl_tok_ids_free(&ids);
        sl_buf_free(&text);
    }
}

typedef struct job {
    const sl_tok *t;
    const char *text;
    size_t len;
    sl_tok_ids ids;
    sl_status st;
} job;

static void *encode_job(void *arg)
{
    job *j = arg;
    for (int rep = 0; rep < 3 && j->st == SL_OK; rep++) {
        j->ids.n = 0;
        j->st = sl_tok_encode(j->t, j->text, j->len, &j->ids, NULL);
    }
    return NULL;
}

/* Four threads encode the test corpus at once; each gets the single-threaded result. */
static void test_threads(const sl_tok *t, const char *src)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/data/tokenizer_corpus.jsonl", src);
    char *text;
    size_t len;
    sl_err e = {0};
    CHECK(sl_file_read(path, &text, &len, &e) == SL_OK);
    if (!text) return;
    sl_tok_ids want = {0};
    CHECK(sl_tok_encode(t, text, len, &want, &e) == SL_OK && want.n > 5000);
    job jobs[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (job){.t = t, .text = text, .len = len};
        CHECK(pthread_create(&th[i], NULL, encode_job, &jobs[i]) == 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        CHECK(jobs[i].st == SL_OK && ids_eq(&jobs[i].ids, want.v, want.n));
        sl_tok_ids_free(&jobs[i].ids);
    }
    sl_tok_ids_free(&want);
    free(text);
}

/* A hand-made byte-level vocabulary: the 256 byte tokens, then the given extra tokens. */
static sl_status load_tiny(sl_tok **t, const char *dir, const char *extra_vocab, const char *merges,
                           const char *model_extra, const char *normalizer, sl_err *e)
{
    sl_buf j = {0};
    sl_buf_puts(&j, "{\"version\":\"1.0\",\"added_tokens\":[{\"id\":300,\"content\":\"<eos>\","
                    "\"special\":true}],\"normalizer\":");
    sl_buf_puts(&j, normalizer);
    sl_buf_puts(&j, ",\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,"
                    "\"use_regex\":true},\"decoder\":{\"type\":\"ByteLevel\"},"
                    "\"model\":{\"type\":\"BPE\"");
    sl_buf_puts(&j, model_extra);
    sl_buf_puts(&j, ",\"vocab\":{");
    int extra = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        int cp = printable ? b : 0x100 + extra++;
        char u[8];
        if (cp < 0x80)
            snprintf(u, sizeof u, "%c", cp);
        else
            snprintf(u, sizeof u, "%c%c", 0xC0 | (cp >> 6), 0x80 | (cp & 0x3F));
        if (cp == '"' || cp == '\\')
            sl_buf_printf(&j, "\"\\%s\":%d,", u, b);
        else
            sl_buf_printf(&j, "\"%s\":%d,", u, b);
    }
    sl_buf_printf(&j, "%s},\"merges\":[%s]}}", extra_vocab, merges);
    char path[4200];
    sl_path_join(path, sizeof path, dir, "tokenizer.json");
    sl_status st = sl_file_write(path, j.data, j.len, e);
    sl_buf_free(&j);
    return st == SL_OK ? sl_tok_load(t, dir, e) : st;
}

static void test_tiny_vocab(void)
{
    char dir[] = "/tmp/sluice_tok_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    sl_tok *t = NULL;
    sl_err e = {0};
    /* "abc" is a vocabulary entry, but (b,c) outranks (a,b): BPE gives a|bc, not abc */
    const char *vocab = "\"ab\":256,\"bc\":257,\"abc\":258,\"aa\":259";
    const char *merges = "\"b c\",\"a b\",\"ab c\",\"a a\"";
    CHECK(load_tiny(&t, dir, vocab, merges, "", "null", &e) == SL_OK);
    if (t) {
        ENCODE_IS(t, "abc", 'a', 257);
        ENCODE_IS(t, "ab", 256);
        ENCODE_IS(t, "aaa", 259, 'a'); /* equal ranks: leftmost first */
        ENCODE_IS(t, "aaaa", 259, 259);
        ENCODE_IS(t, "x<eos>abc", 'x', 300, 'a', 257);
        CHECK(sl_tok_vocab_size(t) == 301 && sl_tok_is_special(t, 300));
        CHECK(sl_tok_token_str(t, 280) == NULL); /* a gap in the ids */
        size_t n;
        CHECK(sl_tok_token_bytes(t, 299, &n) == NULL);
        sl_buf out = {0};
        int32_t gap[] = {'a', 280};
        CHECK(sl_detok_decode(t, gap, 2, 0, &out, &e) == SL_ERR_INVALID);
        CHECK(strstr(e.msg, "ids[1]") != NULL);
        sl_buf_free(&out);
        sl_tok_free(t);
    }
    /* ignore_merges: a piece that is a vocabulary entry is taken whole */
    CHECK(load_tiny(&t, dir, vocab, merges, ",\"ignore_merges\":true", "null", &e) == SL_OK);
    if (t) {
        ENCODE_IS(t, "abc", 258);
        sl_tok_free(t);
    }
    /* a pipeline this module does not implement is refused by name */
    CHECK(load_tiny(&t, dir, vocab, merges, "", "{\"type\":\"Lowercase\"}", &e) ==
          SL_ERR_UNSUPPORTED);
    CHECK(strstr(e.msg, "unsupported normalizer") != NULL && t == NULL);
    CHECK(load_tiny(&t, dir, vocab, "\"a q\"", "", "null", &e) == SL_ERR_PARSE);
    CHECK(strstr(e.msg, "merges[0]") != NULL);
    CHECK(load_tiny(&t, dir, vocab, merges, ",\"dropout\":0.1", "null", &e) == SL_ERR_UNSUPPORTED);
    char path[4200];
    sl_path_join(path, sizeof path, dir, "tokenizer.json");
    unlink(path);
    CHECK(sl_tok_load(&t, dir, &e) == SL_ERR_IO && strstr(e.msg, "tokenizer.json"));
    rmdir(dir);
    CHECK(sl_tok_load(&t, "/nonexistent/tok", &e) == SL_ERR_IO && strstr(e.msg, "does not exist"));
}

int main(void)
{
    const char *src = getenv("SLUICE_SRC");
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/data/qwen3-tokenizer", src ? src : ".");
    sl_tok *t = NULL;
    sl_err e = {0};
    CHECK_MSG(sl_tok_load(&t, path, &e) == SL_OK, "%s: %s", path, e.msg);
    if (t) {
        test_qwen_known(t);
        test_lookups(t);
        test_detok_pieces(t);
        test_detok_random(t);
        test_threads(t, src ? src : ".");
        sl_tok_free(t);
    }
    test_tiny_vocab();
    return sl_test_done("test_tokenizer");
}

/* `sluice grammar`: compile a GBNF grammar, check a text against it, or time its token masks
 * over a tokenizer's vocabulary (docs/cli.md, docs/grammar.md). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "grammar.h"
#include "sl_file.h"
#include "sl_hub.h"
#include "sl_opts.h"
#include "sl_rng.h"
#include "worker_cmd.h"

static const char summary[] =
    "Compiles a GBNF grammar (a compile error exits 2 with the parser's message). --check TEXT or\n"
    "--check-file F: prints whether the text is a complete sentence of the grammar (exit 0) or\n"
    "not (exit 1, with the offset where it stops matching). --bench: walks --steps random allowed\n"
    "tokens of --tokenizer's vocabulary (seeded) and prints the time of each token mask.";

typedef struct grammar_args {
    const char *grammar, *tokenizer, *check, *check_file;
    int bench, steps, vocab_size, cache_mb;
    long long seed;
    sl_strs eos;
} grammar_args;

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

/* This thread's CPU time: on a shared machine a mask's wall time includes waits for a core. */
static double thread_cpu_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static int dbl_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Percentile q of sorted v[0..n). */
static double pct(const double *v, size_t n, double q)
{
    return n ? v[(size_t)(q * (double)(n - 1) + 0.5)] : 0;
}

static double mean(const double *v, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += v[i];
    return n ? s / (double)n : 0;
}

static int check_text(sl_gram *g, const char *text, size_t len)
{
    sl_gram_matcher *m;
    sl_err e = {0};
    if (sl_gram_matcher_new(g, NULL, &m, &e)) {
        fprintf(stderr, "sluice grammar: %s\n", e.msg);
        return 1;
    }
    int rc = 0;
    if (sl_gram_matcher_accept_bytes(m, text, len, &e))
        printf("rejected: %s\n", e.msg), rc = 1;
    else if (!sl_gram_matcher_can_end(m))
        printf("rejected: the text is incomplete (a prefix of a sentence of the grammar)\n"), rc = 1;
    else
        printf("accepted\n");
    sl_gram_matcher_free(m);
    return rc;
}

/* The index of the k-th set bit of bits[0..words). */
static int32_t nth_bit(const uint32_t *bits, size_t words, uint32_t k)
{
    for (size_t w = 0; w < words; w++) {
        uint32_t c = (uint32_t)__builtin_popcount(bits[w]);
        if (k >= c) {
            k -= c;
            continue;
        }
        uint32_t x = bits[w];
        while (k--)
            x &= x - 1;
        return (int32_t)(w * 32 + (size_t)__builtin_ctz(x));
    }
    return -1;
}

/* Random walks of allowed tokens, restarted whenever the grammar must end or only eos is left.
 * Times every fill_mask and splits them by cache hit and miss. */
static int bench(sl_gram *g, const grammar_args *a)
{
    int32_t eos[64];
    for (int k = 0; k < a->eos.n; k++) {
        char *end;
        errno = 0;
        long x = strtol(a->eos.v[k], &end, 10);
        if (errno || *end || x < 0 || x > INT32_MAX)
            return sl_opts_usage_error("grammar", "--eos expects a token id");
        eos[k] = (int32_t)x;
    }
    sl_err e = {0};
    sl_gram_vocab *v;
    double t0 = now_us();
    if (sl_gram_vocab_load(a->tokenizer, a->vocab_size, eos, a->eos.n, &v, &e)) {
        fprintf(stderr, "sluice grammar: %s\n", e.msg);
        return 1;
    }
    double t_load = now_us() - t0;
    sl_gram_set_mask_cache(g, (size_t)a->cache_mb << 20);
    size_t words = sl_gram_vocab_mask_words(v), n = (size_t)a->steps, n_hit = 0, n_miss = 0;
    uint32_t *bits = malloc(words * sizeof *bits);
    double *all = malloc(n * sizeof *all), *hit = malloc(n * sizeof *hit),
           *miss = malloc(n * sizeof *miss), *cpu = malloc(n * sizeof *cpu), t_accept = 0;
    sl_gram_matcher *m = NULL;
    int rc = 0, sequences = 1;
    uint64_t nodes = 0;
    if (!bits || !all || !hit || !miss || !cpu || sl_gram_matcher_new(g, v, &m, &e)) {
        fprintf(stderr, "sluice grammar: %s\n", m ? "out of memory" : e.msg);
        rc = 1;
    }
    for (size_t step = 0; step < n && !rc; step++) {
        sl_gram_stats before, after;
        sl_gram_matcher_stats(m, &before);
        double c0 = thread_cpu_us();
        t0 = now_us();
        if (sl_gram_matcher_fill_mask(m, bits, &e)) {
            fprintf(stderr, "sluice grammar: %s\n", e.msg);
            rc = 1;
            break;
        }
        double dt = now_us() - t0;
        cpu[step] = thread_cpu_us() - c0;
        sl_gram_matcher_stats(m, &after);
        all[step] = dt;
        if (after.mask_hits > before.mask_hits)
            hit[n_hit++] = dt;
        else
            miss[n_miss++] = dt, nodes += after.trie_nodes - before.trie_nodes;
        /* an allowed token other than eos, uniformly; restart when there is none */
        uint32_t allowed = 0, n_eos = 0;
        for (size_t w = 0; w < words; w++)
            allowed += (uint32_t)__builtin_popcount(bits[w]);
        for (int k = 0; k < a->eos.n; k++)
            if (bits[eos[k] >> 5] >> (eos[k] & 31) & 1) bits[eos[k] >> 5] &= ~(1u << (eos[k] & 31)), n_eos++;
        if (allowed == n_eos || sl_gram_matcher_must_end(m)) {
            sl_gram_matcher_reset(m);
            sequences++;
            continue;
        }
        uint32_t k = (uint32_t)(sl_rng_uniform((uint64_t)a->seed, step) * (float)(allowed - n_eos));
        int32_t id = nth_bit(bits, words, k < allowed - n_eos ? k : allowed - n_eos - 1);
        t0 = now_us();
        if (sl_gram_matcher_accept_token(m, id, &e)) {
            fprintf(stderr, "sluice grammar: a token the mask allowed was refused: %s\n", e.msg);
            rc = 1;
        }
        t_accept += now_us() - t0;
    }
    if (!rc) {
        qsort(all, n, sizeof *all, dbl_cmp);
        qsort(cpu, n, sizeof *cpu, dbl_cmp);
        qsort(hit, n_hit, sizeof *hit, dbl_cmp);
        qsort(miss, n_miss, sizeof *miss, dbl_cmp);
        sl_gram_stats st;
        sl_gram_matcher_stats(m, &st);
        printf("vocabulary: %d ids (%s, loaded in %.0f ms)\n", sl_gram_vocab_size(v), a->tokenizer,
               t_load / 1e3);
        printf("steps: %zu in %d sequences, seed %lld, mask cache %d MiB\n", n, sequences, a->seed,
               a->cache_mb);
        printf("mask: mean %.1f us, p50 %.1f us, p99 %.1f us, max %.1f us\n", mean(all, n),
               pct(all, n, 0.5), pct(all, n, 0.99), pct(all, n, 1));
        printf("mask CPU time: mean %.1f us, p50 %.1f us, p99 %.1f us (wall minus waits for a core)\n",
               mean(cpu, n), pct(cpu, n, 0.5), pct(cpu, n, 0.99));
        printf("cache hits: %.1f%% (%zu); hit mean %.1f us, p50 %.1f us, p99 %.1f us\n",
               n ? 100.0 * (double)n_hit / (double)n : 0, n_hit, mean(hit, n_hit),
               pct(hit, n_hit, 0.5), pct(hit, n_hit, 0.99));
        printf("misses: %zu; mean %.1f us, p50 %.1f us, p99 %.1f us, %.0f trie nodes per miss\n",
               n_miss, mean(miss, n_miss), pct(miss, n_miss, 0.5), pct(miss, n_miss, 0.99),
               n_miss ? (double)nodes / (double)n_miss : 0);
        printf("accept_token: mean %.2f us; matcher memo: %u states, %u rebuilds\n",
               n ? t_accept / (double)n : 0, st.dfa_states, st.dfa_resets);
    }
    sl_gram_matcher_free(m);
    sl_gram_vocab_free(v);
    free(bits), free(all), free(hit), free(miss), free(cpu);
    return rc;
}

int sl_cmd_grammar(int argc, char **argv)
{
    grammar_args a = {.steps = 1000, .cache_mb = (int)(SL_GRAM_MASK_CACHE_DEFAULT >> 20)};
    sl_opt opts[] = {
        {"--grammar", NULL, SL_OPT_STR, &a.grammar, "GBNF file (start rule: root)"},
        {"--check", NULL, SL_OPT_STR, &a.check, "text to check against the grammar"},
        {"--check-file", NULL, SL_OPT_STR, &a.check_file, "file whose bytes to check"},
        {"--tokenizer", NULL, SL_OPT_STR, &a.tokenizer,
         "tokenizer.json, its directory or a Hugging Face model id ORG/NAME (byte-level "
         "BPE) for --bench"},
        {"--vocab-size", NULL, SL_OPT_INT, &a.vocab_size,
         "model vocabulary size, >= the tokenizer's (default: the tokenizer's)"},
        {"--eos", NULL, SL_OPT_STRS, &a.eos, "eos token id (repeatable); allowed when the grammar can end"},
        {"--bench", NULL, SL_OPT_FLAG, &a.bench, "time token masks along random walks"},
        {"--steps", NULL, SL_OPT_INT, &a.steps, "masks to time (default 1000)"},
        {"--seed", NULL, SL_OPT_I64, &a.seed, "seed of the walk (default 0)"},
        {"--mask-cache-mb", NULL, SL_OPT_INT, &a.cache_mb,
         "the grammar's mask cache in MiB (default 64; 0: every mask walks the trie)"},
        {0}};
    int rc = sl_opts_cli(argc, argv, "grammar", summary, opts);
    if (rc >= 0) return rc;
    if (!a.grammar) return sl_opts_usage_error("grammar", "--grammar is required");
    if (!!a.check + !!a.check_file + a.bench != 1)
        return sl_opts_usage_error("grammar", "give one of --check, --check-file and --bench");
    if (a.bench && !a.tokenizer) return sl_opts_usage_error("grammar", "--bench needs --tokenizer");
    if (a.steps < 1 || a.cache_mb < 0 || a.vocab_size < 0)
        return sl_opts_usage_error("grammar", "--steps must be >= 1, --mask-cache-mb and --vocab-size >= 0");
    char *text = NULL;
    size_t len = 0;
    sl_err e = {0};
    char tok_dir[SL_HUB_PATH_MAX]; /* --tokenizer ORG/NAME: its text files from the Hub */
    if (a.tokenizer && sl_hub_resolve(a.tokenizer, NULL, SL_HUB_TEXT, tok_dir, sizeof tok_dir, &e)) {
        fprintf(stderr, "sluice grammar: %s\n", e.msg);
        return 1;
    }
    if (a.tokenizer) a.tokenizer = tok_dir;
    if (sl_file_read(a.grammar, &text, &len, &e)) {
        fprintf(stderr, "sluice grammar: %s\n", e.msg);
        return 1;
    }
    sl_gram *g;
    double t0 = now_us();
    sl_status st = sl_gram_compile(text, len, &g, &e);
    free(text);
    if (st) {
        fprintf(stderr, "sluice grammar: %s: %s\n", a.grammar, e.msg);
        return 2;
    }
    double t_compile = now_us() - t0;
    if (a.check)
        rc = check_text(g, a.check, strlen(a.check));
    else if (a.check_file) {
        if (sl_file_read(a.check_file, &text, &len, &e)) {
            fprintf(stderr, "sluice grammar: %s\n", e.msg);
            rc = 1;
        } else {
            rc = check_text(g, text, len);
            free(text);
        }
    } else {
        printf("grammar: %s (compiled in %.0f us)\n", a.grammar, t_compile);
        rc = bench(g, &a);
    }
    sl_gram_free(g);
    return rc;
}

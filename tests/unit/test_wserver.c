/* `sluice worker` end to end over nng: ping/pong + load report, greedy
 * generation equal to a cold run, cached tokens on a repeat, logprobs,
 * a migrated request (output_ids) continuing the undisturbed run,
 * validation errors answered with error chunks, malformed bytes survived,
 * abort, clean exit on SIGTERM. */
#include <nng/nng.h>
#include <nng/protocol/pair1/pair.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>

#include "engine_harness.h"
#include "sluice.pb-c.h"

static nng_socket sock;

static void send_env(Sluice__Envelope *env)
{
    size_t n = sluice__envelope__get_packed_size(env);
    uint8_t *buf = malloc(n + 1);
    sluice__envelope__pack(env, buf);
    CHECK(nng_send(sock, buf, n, 0) == 0);
    free(buf);
}

/* Next envelope (NULL after 20 s). */
static Sluice__Envelope *recv_env(void)
{
    void *buf;
    size_t n;
    if (nng_recv(sock, &buf, &n, NNG_FLAG_ALLOC)) return NULL;
    Sluice__Envelope *env = sluice__envelope__unpack(NULL, n, buf);
    nng_free(buf, n);
    return env;
}

/* Collects one request's chunks until its finish; load reports are skipped. */
typedef struct result {
    int32_t ids[512];
    int n;
    int n_logprobs, n_top;
    float first_logprob;
    int32_t first_top[4];
    Sluice__FinishReason finish;
    int prompt, completion, cached;
    char error[256];
} result;

static int collect(uint64_t rid, result *r)
{
    memset(r, 0, sizeof *r);
    for (;;) {
        Sluice__Envelope *env = recv_env();
        if (!env) return -1;
        if (env->msg_case == SLUICE__ENVELOPE__MSG_CHUNK && env->chunk->rid == rid) {
            Sluice__TokenChunk *c = env->chunk;
            for (size_t i = 0; i < c->n_ids && r->n < 512; i++)
                r->ids[r->n++] = c->ids[i];
            if (c->n_logprobs && !r->n_logprobs) r->first_logprob = c->logprobs[0];
            r->n_logprobs += (int)c->n_logprobs;
            if (c->n_top && !r->n_top)
                for (size_t i = 0; i < c->top[0]->n_ids && i < 4; i++)
                    r->first_top[i] = c->top[0]->ids[i];
            r->n_top += (int)c->n_top;
            if (c->finish) {
                r->finish = c->finish;
                if (c->usage) {
                    r->prompt = c->usage->prompt_tokens;
                    r->completion = c->usage->completion_tokens;
                    r->cached = c->usage->cached_tokens;
                }
                snprintf(r->error, sizeof r->error, "%s", c->error ? c->error : "");
                sluice__envelope__free_unpacked(env, NULL);
                return 0;
            }
        }
        sluice__envelope__free_unpacked(env, NULL);
    }
}

/* One GenerateRequest to the worker: prompt ids[0..n), out[0..n_out) already generated. */
static void send_generate(uint64_t rid, const int32_t *ids, int n, const int32_t *out, int n_out,
                          int max_new, Sluice__SamplingParams *sp)
{
    Sluice__GenerateRequest g = SLUICE__GENERATE_REQUEST__INIT;
    g.rid = rid;
    g.n_input_ids = (size_t)n;
    g.input_ids = (int32_t *)ids;
    g.n_output_ids = (size_t)n_out;
    g.output_ids = (int32_t *)out;
    g.sampling = sp;
    g.max_new_tokens = max_new;
    Sluice__Envelope env = SLUICE__ENVELOPE__INIT;
    env.msg_case = SLUICE__ENVELOPE__MSG_GENERATE;
    env.generate = &g;
    send_env(&env);
}

/* out/n_out: tokens already generated (a migration). temperature > 0 draws
 * with a fixed seed. */
static void generate_after(uint64_t rid, const int32_t *ids, int n, const int32_t *out, int n_out,
                           int max_new, float frequency_penalty, float temperature)
{
    Sluice__SamplingParams sp = SLUICE__SAMPLING_PARAMS__INIT;
    sp.temperature = temperature;
    sp.has_seed = 1;
    sp.seed = 1234;
    sp.top_p = 1;
    sp.repetition_penalty = 1;
    sp.frequency_penalty = frequency_penalty;
    send_generate(rid, ids, n, out, n_out, max_new, &sp);
}

static void generate(uint64_t rid, const int32_t *ids, int n, int max_new, int logprobs, int top,
                     int ignore_eos)
{
    Sluice__SamplingParams sp = SLUICE__SAMPLING_PARAMS__INIT;
    sp.temperature = 0;
    sp.top_p = 1;
    sp.repetition_penalty = 1;
    sp.logprobs = logprobs;
    sp.top_logprobs = top;
    sp.ignore_eos = ignore_eos;
    send_generate(rid, ids, n, NULL, 0, max_new, &sp);
}

/* Sends FlushCache seq and waits for its answer, dropping what else comes:
 * the pages freed, -1 when refused (why in err), -2 when none came. */
static int flush_cache(uint64_t seq, char *err, size_t cap)
{
    Sluice__FlushCache f = SLUICE__FLUSH_CACHE__INIT;
    f.seq = seq;
    Sluice__Envelope env = SLUICE__ENVELOPE__INIT;
    env.msg_case = SLUICE__ENVELOPE__MSG_FLUSH_CACHE;
    env.flush_cache = &f;
    send_env(&env);
    for (;;) {
        Sluice__Envelope *r = recv_env();
        if (!r) return -2; /* timed out: every caller's check fails */
        if (r->msg_case == SLUICE__ENVELOPE__MSG_FLUSH_DONE && r->flush_done->seq == seq) {
            int freed = r->flush_done->ok ? r->flush_done->freed_pages : -1;
            snprintf(err, cap, "%s", r->flush_done->error ? r->flush_done->error : "");
            sluice__envelope__free_unpacked(r, NULL);
            return freed;
        }
        sluice__envelope__free_unpacked(r, NULL);
    }
}

/* Exit status and stderr of `sluice worker ARGS` (it must fail fast). */
static int worker_rejects(const char *args, const char *expect)
{
    const char *bin = getenv("SLUICE_BIN");
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "timeout 30 %s worker %s 2>&1", bin ? bin : "sluice", args);
    FILE *f = popen(cmd, "r");
    char out[2048] = {0};
    size_t n = f ? fread(out, 1, sizeof out - 1, f) : 0;
    out[n] = 0;
    int st = f ? pclose(f) : -1;
    int ok = WIFEXITED(st) && WEXITSTATUS(st) == 2 && strstr(out, expect);
    if (!ok) fprintf(stderr, "worker %s -> %d: %s\n", args, st, out);
    return ok;
}

static void test_flag_checks(void)
{
    char dir[256], args[512];
    if (harness_make_model("qwen3_next", dir)) {
        CHECK(0);
        return;
    }
    snprintf(args, sizeof args, "--model %s --listen ipc:///tmp/x --page-size 48", dir);
    CHECK(worker_rejects(args, "max(64, page) must be a multiple of min(64, page)"));
    snprintf(args, sizeof args,
             "--model %s --listen ipc:///tmp/x --page-size 16 --mamba-track-interval 40", dir);
    CHECK(worker_rejects(args, "must be a positive multiple of --page-size 16"));
    snprintf(args, sizeof args, "--model %s --listen ipc:///tmp/x --mamba-scheduler-strategy lazy",
             dir);
    CHECK(worker_rejects(args, "extra_buffer or no_buffer"));
    snprintf(args, sizeof args,
             "--model %s --listen ipc:///tmp/x --page-size 16 --chunked-prefill-size 8", dir);
    CHECK(worker_rejects(args, "a chunk must hold at least one page"));
    CHECK(worker_rejects("--listen ipc:///tmp/x", "--model and --listen are required"));
    CHECK(worker_rejects("--model /x --listen ipc:///tmp/x --bogus 1", "bogus"));
    harness_remove(dir);
}

/* With no router connected the worker must not block on its periodic load
 * reports: SIGTERM after a few report periods still ends it promptly. */
static void test_no_peer(const char *dir)
{
    char url[300];
    snprintf(url, sizeof url, "ipc://%s/lonely.sock", dir);
    const char *bin = getenv("SLUICE_BIN");
    pid_t pid = fork();
    if (pid == 0) {
        execl(bin ? bin : "sluice", "sluice", "worker", "--model", dir, "--listen", url,
              "--max-total-tokens", "1024", "--context-length", "256", (char *)NULL);
        _exit(127);
    }
    nanosleep(&(struct timespec){2, 500000000}, NULL);
    kill(pid, SIGTERM);
    int status = -1, done = 0;
    for (int i = 0; i < 100 && !done; i++) {
        done = waitpid(pid, &status, WNOHANG) == pid;
        if (!done) nanosleep(&(struct timespec){0, 50000000}, NULL);
    }
    CHECK_MSG(done && WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "a worker without a router did not stop on SIGTERM");
    if (!done) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
    }
}

int main(void)
{
    test_flag_checks();
    char dir[256], url[300];
    if (harness_make_model("qwen3", dir)) {
        CHECK(0);
        return sl_test_done("test_wserver");
    }
    snprintf(url, sizeof url, "ipc://%s/worker.sock", dir);
    const char *bin = getenv("SLUICE_BIN");
    pid_t pid = fork();
    if (pid == 0) {
        execl(bin ? bin : "sluice", "sluice", "worker", "--model", dir, "--listen", url,
              "--page-size", "4", "--max-total-tokens", "2048", "--context-length", "512",
              "--max-running-requests", "8", (char *)NULL);
        _exit(127);
    }
    CHECK(nng_pair1_open(&sock) == 0);
    nng_setopt_ms(sock, NNG_OPT_RECVTIMEO, 20000);
    int rv = -1;
    for (int i = 0; i < 200 && rv; i++) {
        rv = nng_dial(sock, url, NULL, 0);
        if (rv) nanosleep(&(struct timespec){0, 50000000}, NULL);
    }
    CHECK_MSG(rv == 0, "dial %s: %s", url, nng_strerror(rv));

    /* ping -> pong + load */
    Sluice__Ping ping = SLUICE__PING__INIT;
    ping.seq = 77;
    Sluice__Envelope env = SLUICE__ENVELOPE__INIT;
    env.msg_case = SLUICE__ENVELOPE__MSG_PING;
    env.ping = &ping;
    send_env(&env);
    int got_pong = 0, got_load = 0;
    for (int i = 0; i < 4 && !(got_pong && got_load); i++) {
        Sluice__Envelope *r = recv_env();
        if (!r) break;
        if (r->msg_case == SLUICE__ENVELOPE__MSG_PONG) got_pong = r->pong->seq == 77;
        if (r->msg_case == SLUICE__ENVELOPE__MSG_LOAD) {
            got_load = 1;
            CHECK(r->load->vocab_size == 256 && r->load->page_size == 4 &&
                  r->load->context_length == 512 && r->load->total_kv_pages == 512 &&
                  r->load->free_kv_pages == 512 && r->load->worker_id != 0);
        }
        sluice__envelope__free_unpacked(r, NULL);
    }
    CHECK(got_pong && got_load);

    /* greedy generation equals the cold run; a repeat hits the cache */
    sl_backend *be = sl_backend_cpu_new();
    sl_model *m = NULL;
    sl_err e = {0};
    CHECK(sl_model_load(&m, dir, be, NULL, &e) == SL_OK);
    int32_t prompt[40];
    for (int i = 0; i < 40; i++)
        prompt[i] = 3 + (i * 37) % 200;
    cold_ref ref;
    harness_cold(m, prompt, 40, 12, &ref);
    result r;
    generate(1, prompt, 40, 12, 0, 0, 0);
    CHECK(collect(1, &r) == 0);
    CHECK(r.n == ref.n_out && !memcmp(r.ids, ref.out, sizeof(int32_t) * (size_t)ref.n_out));
    CHECK(r.finish == (ref.n_out == 12 ? SLUICE__FINISH_REASON__FINISH_LENGTH
                                       : SLUICE__FINISH_REASON__FINISH_STOP));
    CHECK(r.prompt == 40 && r.completion == r.n && r.cached == 0 && r.n_logprobs == 0);
    generate(2, prompt, 40, 12, 1, 3, 0);
    CHECK(collect(2, &r) == 0);
    CHECK(r.n == ref.n_out && !memcmp(r.ids, ref.out, sizeof(int32_t) * (size_t)ref.n_out));
    CHECK_MSG(r.cached == 36, "cached %d", r.cached);
    CHECK(r.n_logprobs == r.n && r.n_top == r.n && r.first_top[0] == ref.out[0]);
    CHECK(r.first_logprob < 0 && r.first_logprob > -20);
    free(ref.first_logits);

    /* migration: a request resent with its first outputs as output_ids
     * continues exactly where the undisturbed run went on (greedy, and
     * seeded sampling: draws are indexed by output position); max_new_tokens
     * counts after them, and the frequency penalty counts them */
    result full, rest;
    for (int seeded = 0; seeded < 2; seeded++) {
        float temp = seeded ? 1.0f : 0.0f;
        generate_after(3, prompt, 40, NULL, 0, 12, 1.5f, temp);
        CHECK(collect(3, &full) == 0);
        int half = full.n / 2;
        generate_after(4, prompt, 40, full.ids, half, 12 - half, 1.5f, temp);
        CHECK(collect(4, &rest) == 0);
        CHECK_MSG(rest.n == full.n - half &&
                      !memcmp(rest.ids, full.ids + half, sizeof(int32_t) * (size_t)rest.n),
                  "%s continuation of %d tokens after %d differs", seeded ? "seeded" : "greedy",
                  rest.n, half);
        CHECK(rest.finish == full.finish && rest.prompt == 40);
    }
    /* validation: each bad request gets an error chunk naming the problem */
    int32_t bad[3] = {1, 256, 2};
    generate(10, bad, 3, 4, 0, 0, 0);
    CHECK(collect(10, &r) == 0 && r.finish == SLUICE__FINISH_REASON__FINISH_ERROR &&
          strstr(r.error, "vocabulary"));
    generate(11, prompt, 40, 500, 0, 0, 0);
    CHECK(collect(11, &r) == 0 && r.finish == SLUICE__FINISH_REASON__FINISH_ERROR &&
          strstr(r.error, "context length"));
    generate(12, prompt, 0, 4, 0, 0, 0);
    CHECK(collect(12, &r) == 0 && r.finish == SLUICE__FINISH_REASON__FINISH_ERROR);
    /* malformed bytes are dropped; the worker still answers */
    CHECK(nng_send(sock, "\xff\xff\xff\x01garbage", 11, 0) == 0);

    /* abort a long generation */
    generate(20, prompt, 40, 400, 0, 0, 1);
    Sluice__AbortRequest ab = SLUICE__ABORT_REQUEST__INIT;
    ab.rid = 20;
    env.msg_case = SLUICE__ENVELOPE__MSG_ABORT;
    env.abort = &ab;
    send_env(&env);
    CHECK(collect(20, &r) == 0 && r.finish == SLUICE__FINISH_REASON__FINISH_ABORT && r.n < 400);

    /* flush_cache: refused while a request runs (nothing flushed), then, once
     * idle, it empties the cache: the prompt cached above is cold again */
    char why[256];
    generate(25, prompt, 40, 400, 0, 0, 1);
    CHECK(flush_cache(5, why, sizeof why) == -1 && strstr(why, "requests are running"));
    ab.rid = 25;
    send_env(&env);
    CHECK(collect(25, &r) == 0 && r.finish == SLUICE__FINISH_REASON__FINISH_ABORT);
    int freed = flush_cache(6, why, sizeof why);
    CHECK_MSG(freed >= 9, "freed %d pages (%s)", freed, why);
    generate(26, prompt, 40, 2, 0, 0, 1);
    CHECK(collect(26, &r) == 0 && r.cached == 0 && r.n == 2);
    CHECK(flush_cache(7, why, sizeof why) >= 10); /* the 40 + 2 tokens just cached */

    /* a duplicate request id while the first runs */
    generate(30, prompt, 40, 300, 0, 0, 1);
    generate(30, prompt, 40, 4, 0, 0, 0);
    CHECK(collect(30, &r) == 0 && r.finish == SLUICE__FINISH_REASON__FINISH_ERROR &&
          strstr(r.error, "already"));
    CHECK(collect(30, &r) == 0 && r.finish == SLUICE__FINISH_REASON__FINISH_LENGTH);

    /* SIGTERM while requests run: each still gets its end (an error chunk
     * naming the shutdown), and the worker exits with status 0 */
    for (uint64_t k = 0; k < 20; k++)
        generate(40 + k, prompt, 40, 470, 0, 0, 1);
    /* the first token out (load reports, which the worker sends on its own
     * clock, may come before it) */
    Sluice__Envelope *first;
    while ((first = recv_env()) && first->msg_case != SLUICE__ENVELOPE__MSG_CHUNK)
        sluice__envelope__free_unpacked(first, NULL);
    CHECK(first != NULL);
    if (first) sluice__envelope__free_unpacked(first, NULL);
    kill(pid, SIGTERM);
    int ended = 0, stopped = 0;
    while (ended < 20) {
        Sluice__Envelope *x = recv_env();
        if (!x) break;
        if (x->msg_case == SLUICE__ENVELOPE__MSG_CHUNK && x->chunk->finish) {
            ended++;
            stopped += x->chunk->finish == SLUICE__FINISH_REASON__FINISH_ERROR &&
                       strstr(x->chunk->error, "shutting down");
        }
        sluice__envelope__free_unpacked(x, NULL);
    }
    CHECK_MSG(ended == 20 && stopped > 0, "%d ended, %d by the shutdown", ended, stopped);
    test_no_peer(dir);
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    nng_close(sock);
    sl_model_free(m);
    sl_backend_free(be);
    harness_remove(dir);
    return sl_test_done("test_wserver");
}

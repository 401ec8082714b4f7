/* `sluice mock-worker`: a stand-in worker that speaks proto/sluice.proto but
 * runs no model. Its output echoes the prompt's token ids cyclically (or
 * plays --reply-ids, then stops), one token per chunk, continuing after
 * GenerateRequest.output_ids like a real worker, so the router's tests
 * and its overhead benchmark see exactly predictable text, timing and usage. */
#include <nng/nng.h>
#include <nng/protocol/pair1/pair.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "router_cmd.h"
#include "sl_opts.h"
#include "sluice.pb-c.h"
#include "wire.h"

#define MAX_ACTIVE 4096
#define HISTORY 64

typedef struct active {
    uint64_t rid;
    int32_t *in;
    int n_in;
    int produced, max_new;
    int32_t *stop;
    int n_stop;
    int logprobs, top;
    int cached;
    double due_ms;
} active;

typedef struct mock {
    nng_socket sock;
    active act[MAX_ACTIVE];
    int nact;
    int32_t *hist[HISTORY];
    int hist_n[HISTORY];
    int hist_next;
    uint64_t worker_id;
    const char *model;
    int context_length, checkpoint, vocab, eos;
    double delay_ms, first_delay_ms;
    int32_t reply[4096];
    int nreply;
} mock;

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* /flush_cache: forgets the prompts it counts cache hits against, refused
 * while requests run (as a real worker). freed_pages: prompts forgotten. */
static void flush_cache(mock *m, uint64_t seq)
{
    Sluice__FlushCacheDone d = SLUICE__FLUSH_CACHE_DONE__INIT;
    char why[96];
    d.seq = seq;
    if (m->nact) {
        snprintf(why, sizeof why, "cache not flushed: %d requests running", m->nact);
        d.error = why;
    } else {
        d.ok = 1;
        for (int h = 0; h < HISTORY; h++) {
            d.freed_pages += m->hist[h] != NULL;
            free(m->hist[h]);
            m->hist[h] = NULL;
        }
    }
    sl_wire_send_flush_done(m->sock, &d, 0);
}

static void send_load(mock *m, uint64_t pong_seq)
{
    sl_wire_send_ping(m->sock, SLUICE__ENVELOPE__MSG_PONG, pong_seq, 0);
    Sluice__LoadReport l = SLUICE__LOAD_REPORT__INIT;
    l.running = m->nact;
    l.total_kv_pages = l.free_kv_pages = 1024;
    l.page_size = 16;
    l.checkpoint_tokens = m->checkpoint;
    l.context_length = m->context_length;
    l.model = (char *)m->model;
    l.worker_id = m->worker_id;
    l.vocab_size = m->vocab;
    sl_wire_send_load(m->sock, &l, 0);
}

static void finish(mock *m, int i, Sluice__FinishReason why)
{
    active *a = &m->act[i];
    Sluice__Usage u = SLUICE__USAGE__INIT;
    u.prompt_tokens = a->n_in;
    u.completion_tokens = a->produced;
    u.cached_tokens = a->cached;
    Sluice__TokenChunk ch = SLUICE__TOKEN_CHUNK__INIT;
    ch.rid = a->rid;
    ch.finish = why;
    ch.usage = &u;
    sl_wire_send_chunk(m->sock, &ch, 0);
    free(m->hist[m->hist_next]);
    m->hist[m->hist_next] = a->in;
    m->hist_n[m->hist_next] = a->n_in;
    m->hist_next = (m->hist_next + 1) % HISTORY;
    free(a->stop);
    m->act[i] = m->act[--m->nact];
}

/* One token for a request; the last one carries the finish reason. */
static void step(mock *m, int i)
{
    active *a = &m->act[i];
    int32_t tok = m->nreply ? m->reply[a->produced % m->nreply]
                : a->n_in   ? a->in[a->produced % a->n_in]
                            : 0;
    a->produced++;
    Sluice__FinishReason why = SLUICE__FINISH_REASON__FINISH_NONE;
    if (m->nreply && a->produced == m->nreply) why = SLUICE__FINISH_REASON__FINISH_STOP;
    for (int k = 0; k < a->n_stop; k++)
        if (a->stop[k] == tok) why = SLUICE__FINISH_REASON__FINISH_STOP;
    if (!why && a->produced >= a->max_new) why = SLUICE__FINISH_REASON__FINISH_LENGTH;
    if (!why && a->n_in + a->produced >= m->context_length) why = SLUICE__FINISH_REASON__FINISH_LENGTH;
    Sluice__TokenChunk ch = SLUICE__TOKEN_CHUNK__INIT;
    ch.rid = a->rid;
    ch.n_ids = 1;
    ch.ids = &tok;
    float lp = -0.5f;
    float lps[2] = {-0.5f, -1.5f};
    int32_t tids[2] = {tok, tok + 1};
    Sluice__TopLogprob top = SLUICE__TOP_LOGPROB__INIT;
    Sluice__TopLogprob *topp = &top;
    if (a->logprobs) {
        ch.n_logprobs = 1;
        ch.logprobs = &lp;
    }
    if (a->top > 0) {
        top.n_ids = top.n_logprobs = a->top < 2 ? (size_t)a->top : 2;
        top.ids = tids;
        top.logprobs = lps;
        ch.n_top = 1;
        ch.top = &topp;
    }
    sl_wire_send_chunk(m->sock, &ch, 0);
    a->due_ms = now_ms() + m->delay_ms;
    if (why) finish(m, i, why);
}

static int common_prefix(const int32_t *a, int na, const int32_t *b, int nb)
{
    int i = 0;
    while (i < na && i < nb && a[i] == b[i]) i++;
    return i;
}

static void start(mock *m, const Sluice__GenerateRequest *g)
{
    if (m->nact == MAX_ACTIVE) return;
    active *a = &m->act[m->nact++];
    memset(a, 0, sizeof *a);
    a->rid = g->rid;
    a->n_in = (int)g->n_input_ids;
    a->in = malloc((a->n_in + 1) * sizeof *a->in);
    if (a->n_in) memcpy(a->in, g->input_ids, a->n_in * sizeof *a->in);
    a->n_stop = (int)g->n_stop_token_ids;
    a->stop = malloc((a->n_stop + 2) * sizeof *a->stop);
    if (a->n_stop) memcpy(a->stop, g->stop_token_ids, a->n_stop * sizeof *a->stop);
    if (m->eos >= 0 && !(g->sampling && g->sampling->ignore_eos)) a->stop[a->n_stop++] = m->eos;
    /* A migrated request continues its cycle where the output left off. */
    a->produced = (int)g->n_output_ids;
    a->max_new = a->produced + (g->max_new_tokens > 0 ? g->max_new_tokens : 16);
    a->logprobs = g->sampling && g->sampling->logprobs;
    a->top = g->sampling ? g->sampling->top_logprobs : 0;
    for (int h = 0; h < HISTORY; h++)
        if (m->hist[h]) {
            int c = common_prefix(m->hist[h], m->hist_n[h], a->in, a->n_in);
            if (c > a->cached) a->cached = c;
        }
    if (m->checkpoint > 0) a->cached -= a->cached % m->checkpoint;
    a->due_ms = now_ms() + m->first_delay_ms;
}

int sl_cmd_mock_worker(int argc, char **argv)
{
    const char *listen = NULL, *model = "mock", *reply = NULL;
    int context_length = 4096, checkpoint = 0, vocab = 151936, eos = -1, help = 0;
    double delay = 0, first_delay = 0;
    sl_opt opts[] = {
        {"--listen", NULL, SL_OPT_STR, &listen, "nng URL to listen on (tcp://, ipc://)"},
        {"--served-model-name", "--model", SL_OPT_STR, &model, "model name in load reports"},
        {"--context-length", NULL, SL_OPT_INT, &context_length, "reported context length"},
        {"--checkpoint-tokens", NULL, SL_OPT_INT, &checkpoint, "reported mamba checkpoint unit"},
        {"--vocab-size", NULL, SL_OPT_INT, &vocab, "reported vocabulary size"},
        {"--eos", NULL, SL_OPT_INT, &eos, "token id that ends generation (-1: none)"},
        {"--delay-ms", NULL, SL_OPT_FLOAT, &delay, "time between two output tokens"},
        {"--reply-ids", NULL, SL_OPT_STR, &reply, "comma-separated ids to answer with, then stop"},
        {"--first-token-delay-ms", NULL, SL_OPT_FLOAT, &first_delay, "simulated prefill time"},
        {"--help", "-h", SL_OPT_FLAG, &help, "show this help"},
        {0}};
    sl_err e = {0};
    if (sl_opts_parse(argc, argv, opts, &e) || help || !listen) {
        if (!help) fprintf(stderr, "mock-worker: %s\n", e.msg[0] ? e.msg : "--listen is required");
        sl_opts_usage(help ? stdout : stderr, "mock-worker",
                      "a worker without a model: echoes prompt tokens (router tests, benchmarks)",
                      opts);
        return help ? 0 : 2;
    }
    mock *m = calloc(1, sizeof *m);
    m->model = model;
    m->context_length = context_length;
    m->checkpoint = checkpoint;
    m->vocab = vocab;
    m->eos = eos;
    m->delay_ms = delay;
    m->first_delay_ms = first_delay;
    for (const char *p = reply; p && *p && m->nreply < 4096;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p) {
            fprintf(stderr, "mock-worker: --reply-ids: expected comma-separated integers\n");
            free(m);
            return 2;
        }
        m->reply[m->nreply++] = (int32_t)v;
        p = *end == ',' ? end + 1 : end;
    }
    m->worker_id = ((uint64_t)now_ms() << 16) ^ (uint64_t)getpid();
    int rv = nng_pair1_open(&m->sock);
    if (!rv) rv = nng_listen(m->sock, listen, NULL, 0);
    if (rv) {
        fprintf(stderr, "mock-worker: listen on %s: %s\n", listen, nng_strerror(rv));
        free(m);
        return 1;
    }
    nng_socket_set_int(m->sock, NNG_OPT_SENDBUF, 1024);
    for (;;) {
        double now = now_ms(), next = now + 1000;
        for (int i = 0; i < m->nact; i++)
            if (m->act[i].due_ms < next) next = m->act[i].due_ms;
        nng_socket_set_ms(m->sock, NNG_OPT_RECVTIMEO, next > now ? (nng_duration)(next - now) + 1 : 0);
        nng_msg *msg;
        /* Take in everything that waits before stepping again, also when steps
         * are already due: a mock busy with thousands of due requests would
         * otherwise never read their aborts. */
        rv = nng_recvmsg(m->sock, &msg, m->nact && next <= now ? NNG_FLAG_NONBLOCK : 0);
        for (; rv == 0; rv = nng_recvmsg(m->sock, &msg, NNG_FLAG_NONBLOCK)) {
            Sluice__Envelope *env = sl_wire_unpack(msg);
            if (!env) continue;
            if (env->msg_case == SLUICE__ENVELOPE__MSG_PING)
                send_load(m, env->ping->seq);
            else if (env->msg_case == SLUICE__ENVELOPE__MSG_GENERATE)
                start(m, env->generate);
            else if (env->msg_case == SLUICE__ENVELOPE__MSG_FLUSH_CACHE)
                flush_cache(m, env->flush_cache->seq);
            else if (env->msg_case == SLUICE__ENVELOPE__MSG_ABORT)
                for (int i = 0; i < m->nact; i++)
                    if (m->act[i].rid == env->abort->rid) {
                        finish(m, i, SLUICE__FINISH_REASON__FINISH_ABORT);
                        break;
                    }
            sluice__envelope__free_unpacked(env, NULL);
        }
        if (rv != NNG_ETIMEDOUT && rv != NNG_EAGAIN) {
            fprintf(stderr, "mock-worker: receive: %s\n", nng_strerror(rv));
            return 1;
        }
        now = now_ms();
        for (int i = m->nact - 1; i >= 0; i--)
            if (m->act[i].due_ms <= now) step(m, i);
    }
}

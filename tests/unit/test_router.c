/* sl_router end to end without a model: the router runs in this process with
 * a byte-level fake text side (one token per byte), two `sluice mock-worker`
 * processes echo prompts back, and a client thread speaks raw HTTP. Covers
 * the OpenAI shapes, stop strings, streaming, n > 1, batches, errors, auth,
 * prefix-affinity routing, client aborts and a worker dying mid-request. */
#include <arpa/inet.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "http_client.h"
#include "router.h"
#include "sl_test.h"

/* ---- fake text side: token id = byte value ---- */

static sl_status fk_encode(void *impl, const char *t, size_t n, const sl_tok_spans *literal,
                           sl_tok_ids *ids, sl_err *e)
{
    for (size_t i = 0; i < n; i++) sl_tok_ids_push(ids, (unsigned char)t[i]);
    return SL_OK;
}

static sl_status fk_render(void *impl, const json_t *req, sl_buf *out, sl_tok_spans *literal,
                           sl_err *e)
{
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(req, "messages"), i, m)
    {
        const char *c = json_string_value(json_object_get(m, "content"));
        if (!c) return sl_err_set(e, SL_ERR_INVALID, "messages[%zu].content: expected a string", i);
        sl_buf_printf(out, "%s", c);
    }
    return SL_OK;
}

static sl_status fk_decode(void *impl, const int32_t *ids, size_t n, sl_buf *out, sl_err *e)
{
    for (size_t i = 0; i < n; i++) {
        char c = (char)ids[i];
        sl_buf_append(out, &c, 1);
    }
    if (!out->data) sl_buf_puts(out, "");
    return SL_OK;
}

static void *fk_detok_new(void *impl) { return impl ? impl : (void *)1; }
static void fk_detok_push(void *d, const int32_t *ids, size_t n, sl_buf *out)
{
    fk_decode(NULL, ids, n, out, NULL);
}
static void fk_detok_finish(void *d, sl_buf *out) {}
static void fk_detok_free(void *d) {}

static const sl_text_ops fake_text = {.encode = fk_encode,
                                      .render_chat = fk_render,
                                      .decode = fk_decode,
                                      .detok_new = fk_detok_new,
                                      .detok_push = fk_detok_push,
                                      .detok_finish = fk_detok_finish,
                                      .detok_free = fk_detok_free};

/* ---- processes ---- */

static pid_t workers[2];
static char urls[2][128];

static pid_t spawn_worker(const char *url, const char *delay)
{
    const char *bin = getenv("SLUICE_BIN");
    pid_t p = fork();
    if (!p) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlives a crashed test */
        execl(bin, bin, "mock-worker", "--listen", url, "--context-length", "64", "--delay-ms",
              delay, (char *)NULL);
        _exit(127);
    }
    return p;
}

/* ---- client ---- */

static int port;
static uv_async_t stop_async;
static sl_router *rt;

/* One request on its own connection; returns the status, *body the body
 * (malloc'd; chunked encoding left as is: SSE tests look for substrings). */
static int req(const char *method, const char *path, const char *body, const char *hdrs,
               char **resp)
{
    int fd = http_client_dial(port);
    char head[1024];
    snprintf(head, sizeof head,
             "%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n%sContent-Length: %zu\r\n\r\n",
             method, path, hdrs ? hdrs : "", body ? strlen(body) : 0);
    (void)!write(fd, head, strlen(head));
    if (body) (void)!write(fd, body, strlen(body));
    sl_buf b = {0};
    char buf[8192];
    for (;;) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (poll(&pf, 1, 5000) <= 0) break;
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0) break;
        sl_buf_append(&b, buf, (size_t)n);
    }
    close(fd);
    int status = 0;
    if (b.data) sscanf(b.data, "HTTP/1.1 %d", &status);
    char *sep = b.data ? strstr(b.data, "\r\n\r\n") : NULL;
    *resp = strdup(sep ? sep + 4 : "");
    sl_buf_free(&b);
    return status;
}

static const char *jstr(json_t *o, const char *path)
{
    /* path like "choices.0.text" */
    char tmp[256];
    snprintf(tmp, sizeof tmp, "%s", path);
    json_t *cur = o;
    for (char *tok = strtok(tmp, "."); tok && cur; tok = strtok(NULL, "."))
        cur = json_is_array(cur) ? json_array_get(cur, (size_t)atoi(tok)) : json_object_get(cur, tok);
    return json_string_value(cur);
}

static int streq(const char *a, const char *b) { return a && b && !strcmp(a, b); }

static long jint(json_t *o, const char *path)
{
    char tmp[256];
    snprintf(tmp, sizeof tmp, "%s", path);
    json_t *cur = o;
    for (char *tok = strtok(tmp, "."); tok && cur; tok = strtok(NULL, "."))
        cur = json_is_array(cur) ? json_array_get(cur, (size_t)atoi(tok)) : json_object_get(cur, tok);
    return cur ? (long)json_integer_value(cur) : -1;
}

static void wait_workers(int want)
{
    for (int i = 0; i < 100; i++) {
        char *r;
        req("GET", "/health", NULL, NULL, &r);
        json_t *o = json_loads(r, 0, NULL);
        free(r);
        long alive = jint(o, "workers_alive");
        json_decref(o);
        if (alive == want) return;
        usleep(50000);
    }
    CHECK_MSG(0, "workers never became alive");
}

static void test_basics(void)
{
    char *r;
    CHECK(req("GET", "/v1/models", NULL, NULL, &r) == 401);
    CHECK(strstr(r, "authentication_error") != NULL);
    free(r);
    CHECK(req("GET", "/v1/models", NULL, "Authorization: Bearer wrong\r\n", &r) == 401);
    free(r);
    CHECK(req("GET", "/v1/models", NULL, "Authorization: Bearer sekrit\r\n", &r) == 200);
    CHECK(strstr(r, "\"id\":\"tiny\"") && strstr(r, "\"max_model_len\":64"));
    free(r);
    CHECK(req("GET", "/nope", NULL, "Authorization: Bearer sekrit\r\n", &r) == 404);
    free(r);
    CHECK(req("GET", "/v1/completions", NULL, "Authorization: Bearer sekrit\r\n", &r) == 405);
    free(r);
}

#define AUTH "Authorization: Bearer sekrit\r\n"

static json_t *call(const char *path, const char *body, int *status)
{
    char *r;
    *status = req("POST", path, body, AUTH, &r);
    json_t *o = json_loads(r, 0, NULL);
    if (!o) fprintf(stderr, "not JSON (%d): %s\n", *status, r);
    free(r);
    return o;
}

/* POSTs body to path: the answer must be `status` with `msg` in error.message. */
static void check_error(const char *path, const char *body, int status, const char *msg)
{
    int st;
    json_t *o = call(path, body, &st);
    const char *m = jstr(o, "error.message");
    CHECK_MSG(st == status && m && strstr(m, msg), "%s %s: %d %s", path, body, st, m ? m : "-");
    json_decref(o);
}

static void test_completions(void)
{
    int st;
    json_t *o = call("/v1/completions",
                     "{\"model\":\"tiny\",\"prompt\":\"abcdef\",\"max_tokens\":4}", &st);
    CHECK(st == 200);
    CHECK(jstr(o, "choices.0.text") && streq(jstr(o, "choices.0.text"), "abcd"));
    CHECK(streq(jstr(o, "choices.0.finish_reason"), "length"));
    CHECK(streq(jstr(o, "object"), "text_completion"));
    CHECK(!strncmp(jstr(o, "id"), "cmpl-", 5));
    CHECK(jint(o, "usage.prompt_tokens") == 6);
    CHECK(jint(o, "usage.completion_tokens") == 4);
    CHECK(jint(o, "usage.total_tokens") == 10);
    json_decref(o);

    /* stop string spanning tokens: cut before it, partial matches held */
    o = call("/v1/completions",
             "{\"prompt\":\"hello world\",\"max_tokens\":20,\"stop\":[\"o w\",\"zz\"]}", &st);
    CHECK(st == 200);
    CHECK_MSG(streq(jstr(o, "choices.0.text"), "hell"), "%s", jstr(o, "choices.0.text"));
    CHECK(streq(jstr(o, "choices.0.finish_reason"), "stop"));
    CHECK(streq(jstr(o, "choices.0.matched_stop"), "o w"));
    CHECK(jint(o, "usage.completion_tokens") >= 7);
    json_decref(o);

    /* stop token id ends it at the worker */
    o = call("/v1/completions", "{\"prompt\":\"abcdef\",\"max_tokens\":20,\"stop_token_ids\":[100]}",
             &st);
    CHECK(streq(jstr(o, "choices.0.text"), "abcd"));
    CHECK(streq(jstr(o, "choices.0.finish_reason"), "stop"));
    json_decref(o);

    /* batch of token-id prompts, n = 2 each: 4 choices in order */
    o = call("/v1/completions", "{\"prompt\":[[104,105],[106]],\"max_tokens\":3,\"n\":2}", &st);
    CHECK(st == 200);
    CHECK(json_array_size(json_object_get(o, "choices")) == 4);
    CHECK(streq(jstr(o, "choices.1.text"), "hih"));
    CHECK(streq(jstr(o, "choices.2.text"), "jjj"));
    CHECK(jint(o, "choices.3.index") == 3);
    json_decref(o);

    /* logprobs (completions shape) */
    o = call("/v1/completions", "{\"prompt\":\"ab\",\"max_tokens\":2,\"logprobs\":1}", &st);
    json_t *lp = json_object_get(json_array_get(json_object_get(o, "choices"), 0), "logprobs");
    CHECK(json_array_size(json_object_get(lp, "tokens")) == 2);
    CHECK(json_real_value(json_array_get(json_object_get(lp, "token_logprobs"), 0)) == -0.5);
    json_decref(o);
}

static void test_chat(void)
{
    int st;
    json_t *o = call("/v1/chat/completions",
                     "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"xyz\"}],"
                     "\"max_tokens\":5,\"logprobs\":true,\"top_logprobs\":2}",
                     &st);
    CHECK(st == 200);
    CHECK(streq(jstr(o, "object"), "chat.completion"));
    CHECK(streq(jstr(o, "choices.0.message.role"), "assistant"));
    CHECK(streq(jstr(o, "choices.0.message.content"), "xyzxy"));
    CHECK(jint(o, "usage.prompt_tokens_details.cached_tokens") >= 0);
    CHECK(streq(jstr(o, "choices.0.logprobs.content.0.token"), "x"));
    CHECK(streq(jstr(o, "choices.0.logprobs.content.0.top_logprobs.1.token"), "y"));
    json_decref(o);

    /* streaming with usage */
    char *r;
    st = req("POST", "/v1/chat/completions",
             "{\"messages\":[{\"role\":\"user\",\"content\":\"pq\"}],\"max_tokens\":3,"
             "\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
             AUTH, &r);
    CHECK(st == 200);
    CHECK(strstr(r, "\"delta\":{\"content\":\"p\",\"role\":\"assistant\"}") ||
          strstr(r, "\"delta\":{\"role\":\"assistant\",\"content\":\"p\"}"));
    CHECK(strstr(r, "\"finish_reason\":\"length\"") != NULL);
    CHECK(strstr(r, "\"choices\":[],\"usage\":{") != NULL);
    CHECK(strstr(r, "data: [DONE]\n\n") != NULL);
    CHECK(strstr(r, "chat.completion.chunk") != NULL);
    free(r);

    /* streaming stop string: nothing after it, the stop itself not sent */
    st = req("POST", "/v1/completions",
             "{\"prompt\":\"abcabc\",\"max_tokens\":12,\"stream\":true,\"stop\":\"ca\"}", AUTH, &r);
    CHECK(strstr(r, "\"text\":\"a\"") && strstr(r, "\"text\":\"b\""));
    CHECK(!strstr(r, "\"text\":\"c\""));
    CHECK(strstr(r, "\"finish_reason\":\"stop\"") != NULL);
    free(r);
}

static void test_errors(void)
{
    int st;
    json_t *o = call("/v1/chat/completions", "{\"messages\": [", &st);
    CHECK(st == 400);
    CHECK(strstr(jstr(o, "error.message") ? jstr(o, "error.message") : "", "malformed JSON") != NULL);
    CHECK(streq(jstr(o, "error.type"), "invalid_request_error"));
    json_decref(o);
    check_error("/v1/chat/completions",
                "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"max_tokens\":\"x\"}",
                400, "max_tokens");
    check_error("/v1/chat/completions",
                "{\"model\":\"gpt-9\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]}",
                404, "gpt-9");
    o = call("/v1/chat/completions", "{\"messages\":[]}", &st);
    CHECK(st == 400);
    json_decref(o);
    check_error("/v1/chat/completions",
                "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"temperature\":7}",
                400, "temperature");
    /* too long for the 64-token context */
    char big[200];
    snprintf(big, sizeof big, "{\"prompt\":\"%070d\",\"max_tokens\":1}", 0);
    check_error("/v1/completions", big, 400, "maximum context length is 64");
    o = call("/v1/completions", "{\"prompt\":[1,\"a\"]}", &st);
    CHECK(st == 400);
    json_decref(o);
    check_error("/v1/completions", "{\"prompt\":\"a\",\"logit_bias\":{\"1\":3}}", 400,
                "logit_bias");
    /* a stop string over SL_JOB_MAX_STOP_BYTES */
    char longstop[1200];
    snprintf(longstop, sizeof longstop, "{\"prompt\":\"a\",\"stop\":[\"x\",\"%01030d\"]}", 0);
    check_error("/v1/completions", longstop, 400, "stop[1]: at most 1024 bytes");
    /* more stop ids than a worker takes beside the eos ids */
    sl_buf ids = {0};
    sl_buf_puts(&ids, "{\"prompt\":\"a\",\"stop_token_ids\":[1");
    for (int i = 0; i < 48; i++) sl_buf_puts(&ids, ",1"); /* 49 ids */
    sl_buf_puts(&ids, "]}");
    check_error("/v1/completions", ids.data, 400, "at most 48 token ids");
    sl_buf_free(&ids);
    /* tokenize / detokenize */
    o = call("/tokenize", "{\"prompt\":\"hi\"}", &st);
    CHECK(st == 200 && jint(o, "count") == 2 && jint(o, "tokens.1") == 'i');
    json_decref(o);
    o = call("/detokenize", "{\"tokens\":[104,105]}", &st);
    CHECK(st == 200 && streq(jstr(o, "text"), "hi"));
    json_decref(o);
}

static void test_affinity(void)
{
    /* A shared 40-token prefix: the second request goes where the first went
     * (the mock reports the prefix it saw before as cached). */
    int st;
    const char *a = "{\"prompt\":\"You are a helpful assistant. Be brief!! Q1\",\"max_tokens\":1}";
    const char *b = "{\"prompt\":\"You are a helpful assistant. Be brief!! Q2\",\"max_tokens\":1}";
    json_t *o = call("/v1/completions", a, &st);
    json_decref(o);
    o = call("/v1/completions", b, &st);
    CHECK_MSG(jint(o, "usage.prompt_tokens_details.cached_tokens") == 41, "cached %ld",
              jint(o, "usage.prompt_tokens_details.cached_tokens"));
    json_decref(o);
}

static void test_abort_and_death(void)
{
    /* Workers take 20 ms a token: a streaming request is cut by the client;
     * the router must abort it at the worker at once. */
    int fd = http_client_dial(port);
    const char *body = "{\"prompt\":[[1,2,3]],\"max_tokens\":50,\"stream\":true}";
    char head[512];
    snprintf(head, sizeof head,
             "POST /v1/completions HTTP/1.1\r\nHost: x\r\n" AUTH "Content-Length: %zu\r\n\r\n%s",
             strlen(body), body);
    (void)!write(fd, head, strlen(head));
    usleep(300000);
    close(fd);
    usleep(200000);
    char *r;
    req("GET", "/metrics", NULL, AUTH, &r);
    CHECK(strstr(r, "sluice_aborted_requests_total 1\n") != NULL);
    CHECK_MSG(strstr(r, "sluice_worker_inflight{worker=\"") != NULL, "%s", r);
    CHECK(!strstr(r, "} 1\nsluice_worker_inflight") && strstr(r, "sluice_worker_running{"));
    /* both inflight gauges are back to 0 */
    const char *g = strstr(r, "# TYPE sluice_worker_inflight gauge\n");
    CHECK(g && strstr(g, " 0\nsluice_worker_inflight{") && strstr(g, "} 0\n# HELP sluice_worker_running"));
    free(r);

    /* a request in flight on a worker when it dies: fails fast (no migration) */
    fd = http_client_dial(port);
    (void)!write(fd, head, strlen(head));
    usleep(300000);
    req("GET", "/metrics", NULL, AUTH, &r);
    int victim = -1;
    for (int i = 0; i < 2; i++) {
        char pat[400];
        snprintf(pat, sizeof pat, "sluice_worker_inflight{worker=\"%s\"} 1\n", urls[i]);
        if (strstr(r, pat)) victim = i;
    }
    free(r);
    CHECK(victim >= 0);
    if (victim < 0) victim = 1;
    kill(workers[victim], SIGKILL);
    waitpid(workers[victim], NULL, 0);
    workers[victim] = 0;
    sl_buf b = {0};
    char buf[4096];
    uint64_t t0 = uv_hrtime();
    for (;;) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (poll(&pf, 1, 3000) <= 0) break;
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0) break;
        sl_buf_append(&b, buf, (size_t)n);
        if (strstr(b.data, "[DONE]")) break;
    }
    double secs = (double)(uv_hrtime() - t0) / 1e9;
    CHECK_MSG(b.data && strstr(b.data, "\"error\"") && strstr(b.data, urls[victim]), "%s",
              b.data ? b.data : "(nothing)");
    CHECK_MSG(secs < 1.0, "failure took %.2f s", secs);
    sl_buf_free(&b);
    close(fd);
    /* what the route tree knew about the dead worker is forgotten */
    req("GET", "/metrics", NULL, AUTH, &r);
    char pat[400];
    snprintf(pat, sizeof pat, "sluice_worker_route_tree_tokens{worker=\"%s\"} 0\n", urls[victim]);
    CHECK_MSG(strstr(r, pat) != NULL, "%s", r);
    snprintf(pat, sizeof pat, "sluice_worker_up{worker=\"%s\"} 0\n", urls[victim]);
    CHECK(strstr(r, pat) != NULL);
    free(r);
    /* the next requests succeed on the surviving worker */
    for (int i = 0; i < 3; i++) {
        int st;
        json_t *o = call("/v1/completions", "{\"prompt\":[[7,8,9]],\"max_tokens\":2}", &st);
        CHECK(st == 200);
        json_decref(o);
    }
}

static void client(void *arg)
{
    wait_workers(2);
    test_basics();
    test_completions();
    test_chat();
    test_errors();
    test_affinity();
    test_abort_and_death();
    uv_async_send(&stop_async);
}

static void on_stop(uv_async_t *a)
{
    sl_router_shutdown(rt, NULL, NULL, NULL);
    uv_close((uv_handle_t *)a, NULL);
}

int main(void)
{
    if (!getenv("SLUICE_BIN")) {
        fprintf(stderr, "SLUICE_BIN is not set\n");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    for (int i = 0; i < 2; i++) {
        snprintf(urls[i], sizeof urls[i], "ipc:///tmp/sl-test-router-%d-%d", (int)getpid(), i);
        workers[i] = spawn_worker(urls[i], "20");
    }
    uv_loop_t loop;
    uv_loop_init(&loop);
    sl_router_config cfg = sl_router_config_default();
    cfg.port = 0;
    cfg.served_model_name = "tiny";
    cfg.api_key = "sekrit";
    cfg.text = &fake_text;
    cfg.route.cache_threshold = 0.5;
    cfg.inline_encode_bytes = 16; /* longer prompts take the thread-pool path */
    cfg.cluster.heartbeat_ms = 200;
    cfg.cluster.dead_after_ms = 1000;
    cfg.migration_limit = 0; /* a dying worker fails its requests (test_e2e_faults.py: moves) */
    sl_err e = {0};
    CHECK(sl_router_new(&rt, &loop, &cfg, &e) == SL_OK);
    port = sl_router_port(rt);
    for (int i = 0; i < 2; i++) CHECK(sl_router_add_worker(rt, urls[i], &e) == SL_OK);
    CHECK(sl_router_add_worker(rt, "http://x", &e) == SL_ERR_INVALID);
    uv_async_init(&loop, &stop_async, on_stop);
    uv_thread_t th;
    uv_thread_create(&th, client, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_thread_join(&th);
    sl_router_free(rt);
    CHECK(uv_loop_close(&loop) == 0);
    for (int i = 0; i < 2; i++)
        if (workers[i]) {
            kill(workers[i], SIGTERM);
            waitpid(workers[i], NULL, 0);
        }
    return sl_test_done("test_router");
}

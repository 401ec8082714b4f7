/* `sluice logits`, `sluice generate`, `sluice make-tiny`, `sluice quantize`: the
 * model on its own, one sequence at a time (golden checks, demos, tiny test
 * models, FP8 checkpoints). */
#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "comm.h"
#include "model.h"
#include "quantize.h"
#include "safetensors.h"
#include "sl_bytelevel.h"
#include "sl_file.h"
#include "sl_hub.h"
#include "sl_opts.h"
#include "sl_rng.h"
#include "solo.h"
#include "worker_cmd.h"

typedef struct model_args {
    const char *model, *revision, *device, *load_format, *quantization, *dist_init_addr;
    int page_size, tp_size;
    long long seed;
    /* set by tp_start: this process's rank, its communicator, the children
     * rank 0 forked (ranks 1..tp_size-1) */
    int rank;
    sl_comm *comm;
    pid_t kids[SL_COMM_MAX_WORLD];
    int n_kids;
    int port_held, port_fd; /* rank 0's reservation of the port it picked (tp_start) */
    char addr[64];
    char device_buf[32];
    char model_dir[SL_HUB_PATH_MAX]; /* --model ORG/NAME: its snapshot in the Hugging Face cache */
} model_args;

static int fail(const char *cmd, const sl_err *e)
{
    fprintf(stderr, "sluice %s: %s\n", cmd, e->msg);
    return 1;
}

/* --tp-size N: checks that the model splits N ways (exit 2 naming the
 * dimension), picks a free 127.0.0.1 port unless --dist-init-addr is given,
 * and forks ranks 1..N-1; every process then runs the rest of the command on
 * its shard (CPU: a CPU communicator; CUDA: rank r on device base + r) and
 * only rank 0 prints. Returns -1 to continue, or an exit code. */
static int tp_start(model_args *a, const char *cmd)
{
    a->rank = 0;
    if (a->tp_size == 1) return -1;
    sl_err e = {0};
    if (a->tp_size < 1 || a->tp_size > SL_COMM_MAX_WORLD) {
        sl_err_set(&e, SL_ERR_INVALID, "--tp-size must be in [1, %d]", SL_COMM_MAX_WORLD);
        return sl_opts_usage_error(cmd, e.msg);
    }
    sl_model_config c;
    if (sl_model_config_load(&c, a->model, &e)) return fail(cmd, &e);
    if (sl_model_tp_check(&c, a->tp_size, &e)) return sl_opts_usage_error(cmd, e.msg);
    if ((c.quant_fp8 || a->quantization) && sl_model_fp8_tp_check(&c, a->tp_size, &e))
        return sl_opts_usage_error(cmd, e.msg);
    if (!a->dist_init_addr) {
        /* A free port, reserved: bound with SO_REUSEADDR and held (never listening)
         * until tp_finish, so that the kernel gives it to no one else before rank 0
         * listens there (rank 0's listener sets SO_REUSEADDR too). Letting it go
         * right away raced with other processes on a loaded machine. */
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof sa;
        if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
            bind(fd, (struct sockaddr *)&sa, sizeof sa) || getsockname(fd, (struct sockaddr *)&sa, &len)) {
            fprintf(stderr, "sluice %s: cannot find a free port: %s\n", cmd, strerror(errno));
            if (fd >= 0) close(fd);
            return 1;
        }
        a->port_held = 1;
        a->port_fd = fd;
        snprintf(a->addr, sizeof a->addr, "127.0.0.1:%d", ntohs(sa.sin_port));
        a->dist_init_addr = a->addr;
    }
    fflush(stdout);
    fflush(stderr);
    for (int r = 1; r < a->tp_size; r++) {
        pid_t pid = fork();
        if (pid < 0) {
            fprintf(stderr, "sluice %s: fork: %s\n", cmd, strerror(errno));
            return 1; /* the children forked so far time out joining the group */
        }
        if (pid == 0) {
            a->rank = r;
            a->n_kids = 0;
            if (a->port_held) close(a->port_fd); /* rank 0's to hold */
            a->port_held = 0;
            break;
        }
        a->kids[a->n_kids++] = pid;
    }
    if (!strncmp(a->device, "cuda", 4)) { /* rank r on device base + r */
        int base = a->device[4] == ':' ? atoi(a->device + 5) : 0;
        snprintf(a->device_buf, sizeof a->device_buf, "cuda:%d", base + a->rank);
        a->device = a->device_buf;
    }
    return -1;
}

/* The start of logits and generate: --model ORG/NAME becomes its snapshot in
 * the Hugging Face cache, downloaded when missing (the weights too unless
 * --load-format dummy), then tp_start. Returns -1 to continue, or an exit code. */
static int model_start(model_args *a, const char *cmd)
{
    if (!a->model) return sl_opts_usage_error(cmd, "--model is required");
    sl_err e = {0};
    int dummy = a->load_format && !strcmp(a->load_format, "dummy");
    if (sl_hub_resolve(a->model, a->revision, dummy ? SL_HUB_TEXT : SL_HUB_WEIGHTS, a->model_dir,
                       sizeof a->model_dir, &e))
        return fail(cmd, &e);
    a->model = a->model_dir;
    return tp_start(a, cmd);
}

/* Ends a TP run: frees the communicator, and on rank 0 waits for the other
 * ranks; the exit code is rc, or 1 when another rank failed. */
static int tp_finish(model_args *a, int rc)
{
    sl_comm_free(a->comm);
    a->comm = NULL;
    if (a->port_held) close(a->port_fd);
    a->port_held = 0;
    for (int i = 0; i < a->n_kids; i++) {
        int st = 0;
        while (waitpid(a->kids[i], &st, 0) < 0 && errno == EINTR) {}
        if (!rc && (!WIFEXITED(st) || WEXITSTATUS(st))) rc = 1;
    }
    return rc;
}

static sl_status open_model(model_args *a, sl_backend **be, sl_model **m, sl_err *e)
{
    int dummy = 0;
    if (a->load_format && !strcmp(a->load_format, "dummy")) dummy = 1;
    else if (a->load_format && strcmp(a->load_format, "auto") && strcmp(a->load_format, "safetensors"))
        return sl_err_set(e, SL_ERR_INVALID, "--load-format must be auto, safetensors or dummy");
    if (a->quantization && strcmp(a->quantization, "fp8"))
        return sl_err_set(e, SL_ERR_INVALID, "--quantization must be fp8");
    *be = sl_backend_new(a->device, e);
    if (!*be) return e->code ? e->code : SL_ERR_DEVICE;
    sl_status s = SL_OK;
    if (a->tp_size > 1) {
        char fp[SL_COMM_MAX_FINGERPRINT + 1];
        snprintf(fp, sizeof fp, "%.200s|%s|%lld|%s", a->model, dummy ? "dummy" : "auto", a->seed,
                 a->quantization ? a->quantization : "none");
        sl_comm_config cc = {.rank = a->rank, .world_size = a->tp_size, .init_addr = a->dist_init_addr,
                             .timeout_ms = 60000, .fingerprint = fp, .be = *be};
        s = sl_comm_new(&a->comm, &cc, e);
    }
    sl_model_load_opts o = {.dummy = dummy, .seed = (uint64_t)a->seed, .quantize_fp8 = a->quantization != NULL,
                            .comm = a->comm};
    if (!s) s = sl_model_load(m, a->model, *be, &o, e);
    if (s) {
        if (a->comm) sl_comm_abort(a->comm); /* the other ranks fail fast */
        sl_backend_free(*be);
        *be = NULL;
    }
    return s;
}

#define MODEL_OPTS(a)                                                                              \
    {"--model", "--model-path", SL_OPT_STR, &(a).model,                                           \
     "model directory (Hugging Face layout), or Hugging Face model id ORG/NAME"},                  \
        {"--revision", NULL, SL_OPT_STR, &(a).revision, "ORG/NAME: branch, tag or commit (main)"}, \
        {"--device", NULL, SL_OPT_STR, &(a).device, "cpu (default) or cuda[:N]"},                 \
        {"--load-format", NULL, SL_OPT_STR, &(a).load_format, "auto (default) or dummy"},         \
        {"--seed", NULL, SL_OPT_I64, &(a).seed, "seed of dummy weights (default 0)"},             \
        {"--quantization", NULL, SL_OPT_STR, &(a).quantization,                                   \
         "fp8: quantize projections to FP8 blocks at load"},                                      \
        {"--page-size", NULL, SL_OPT_INT, &(a).page_size, "KV page size (default 16)"},           \
        {"--tp-size", NULL, SL_OPT_INT, &(a).tp_size,                                             \
         "tensor-parallel ranks, forked locally (default 1; CUDA: rank r on device N+r)"},         \
        {"--dist-init-addr", NULL, SL_OPT_STR, &(a).dist_init_addr,                               \
         "HOST:PORT where the ranks meet (default: a free 127.0.0.1 port)"}

/* ---- logits ------------------------------------------------------------------- */

int sl_cmd_logits(int argc, char **argv)
{
    model_args a = {.device = "cpu", .page_size = 16, .tp_size = 1};
    const char *ids_file = NULL, *out = NULL;
    int chunk = 0;
    sl_opt opts[] = {MODEL_OPTS(a),
                     {"--ids-file", NULL, SL_OPT_STR, &ids_file, "JSON list of prompts (lists of ids)"},
                     {"--out", NULL, SL_OPT_STR, &out, "output: f32 [total_tokens, vocab]"},
                     {"--chunk", NULL, SL_OPT_INT, &chunk, "feed prompts in pieces of N tokens (0: whole)"},
                     {0}};
    const char *summary = "Writes float32 logits for every position of every prompt.";
    int cli = sl_opts_cli(argc, argv, "logits", summary, opts);
    if (cli >= 0) return cli;
    sl_err e = {0};
    if (!ids_file || !out) {
        sl_err_set(&e, SL_ERR_INVALID, "--ids-file and --out are required");
        return sl_opts_usage_error("logits", e.msg);
    }
    if (chunk < 0 || a.page_size <= 0) {
        sl_err_set(&e, SL_ERR_INVALID, "--chunk must be >= 0 and --page-size > 0");
        return sl_opts_usage_error("logits", e.msg);
    }
    json_error_t je;
    json_t *prompts = json_load_file(ids_file, 0, &je);
    if (!json_is_array(prompts) || json_array_size(prompts) == 0) {
        fprintf(stderr, "sluice logits: %s: expected a non-empty JSON list of prompts (%s)\n", ids_file,
                prompts ? "not a list" : je.text);
        json_decref(prompts);
        return 2;
    }
    int tp = model_start(&a, "logits");
    if (tp >= 0) {
        json_decref(prompts);
        return tp;
    }
    sl_backend *be = NULL;
    sl_model *m = NULL;
    if (open_model(&a, &be, &m, &e)) {
        json_decref(prompts);
        return tp_finish(&a, fail("logits", &e));
    }
    int V = sl_model_cfg(m)->vocab_size, rc = 0, max_len = 0;
    size_t i;
    json_t *p;
    json_array_foreach(prompts, i, p)
    {
        if (!json_is_array(p) || json_array_size(p) == 0) {
            fprintf(stderr, "sluice logits: prompt %zu is not a non-empty list of ids\n", i);
            rc = 2;
            goto done;
        }
        if ((int)json_array_size(p) > max_len) max_len = (int)json_array_size(p);
    }
    FILE *f = fopen(a.rank ? "/dev/null" : out, "wb"); /* TP: rank 0 writes */
    if (!f) {
        fprintf(stderr, "sluice logits: cannot create %s: %s\n", out, strerror(errno));
        rc = 1;
        goto done;
    }
    sl_solo s;
    if (sl_solo_init(&s, m, max_len, a.page_size, &e)) {
        fclose(f);
        rc = fail("logits", &e);
        goto done;
    }
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)max_len);
    float *lg = malloc(sizeof(float) * (size_t)max_len * (size_t)V);
    json_array_foreach(prompts, i, p)
    {
        int n = (int)json_array_size(p);
        for (int t = 0; t < n; t++) {
            json_t *v = json_array_get(p, (size_t)t);
            if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= V) {
                fprintf(stderr, "sluice logits: prompt %zu, position %d: not a token id in [0, %d)\n",
                        i, t, V);
                rc = 2;
                break;
            }
            ids[t] = (int32_t)json_integer_value(v);
        }
        if (rc) break;
        sl_solo_reset(&s);
        int step = chunk > 0 ? chunk : n;
        for (int t0 = 0; t0 < n && !rc; t0 += step) {
            int k = n - t0 < step ? n - t0 : step;
            if (sl_solo_feed(&s, ids + t0, k, 1, lg + (size_t)t0 * V, &e)) rc = fail("logits", &e);
        }
        if (!rc && fwrite(lg, sizeof(float), (size_t)n * V, f) != (size_t)n * V) {
            fprintf(stderr, "sluice logits: cannot write %s\n", out);
            rc = 1;
        }
        if (rc) break;
    }
    free(ids);
    free(lg);
    sl_solo_free(&s);
    if (fclose(f) != 0 && !rc) rc = 1;
done:
    json_decref(prompts);
    if (rc && a.comm) sl_comm_abort(a.comm);
    sl_model_free(m);
    sl_backend_free(be);
    return tp_finish(&a, rc);
}

/* ---- generate ------------------------------------------------------------------ */

static int parse_ids(const char *s, int32_t **out, int *n, int vocab, sl_err *e)
{
    int cap = 16;
    *n = 0;
    *out = malloc(sizeof(int32_t) * (size_t)cap);
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v >= vocab) {
            free(*out);
            *out = NULL;
            return sl_err_set(e, SL_ERR_INVALID, "--ids: '%s' is not a list of token ids in [0, %d)", s, vocab);
        }
        if (*n == cap) *out = realloc(*out, sizeof(int32_t) * (size_t)(cap *= 2));
        (*out)[(*n)++] = (int32_t)v;
        p = end;
        if (*p == ',') p++;
        else if (*p) {
            free(*out);
            *out = NULL;
            return sl_err_set(e, SL_ERR_INVALID, "--ids: expected comma-separated integers, got '%s'", s);
        }
    }
    if (*n == 0) {
        free(*out);
        *out = NULL;
        return sl_err_set(e, SL_ERR_INVALID, "--ids is empty");
    }
    return SL_OK;
}

int sl_cmd_generate(int argc, char **argv)
{
    model_args a = {.device = "cpu", .page_size = 16, .tp_size = 1};
    const char *ids_s = NULL;
    int max_new = 16, ignore_eos = 0;
    sl_opt opts[] = {MODEL_OPTS(a),
                     {"--ids", NULL, SL_OPT_STR, &ids_s, "prompt token ids, comma-separated"},
                     {"--max-new-tokens", NULL, SL_OPT_INT, &max_new, "tokens to generate (default 16)"},
                     {"--ignore-eos", NULL, SL_OPT_FLAG, &ignore_eos, "do not stop at an eos token"},
                     {0}};
    const char *summary = "Prints the greedy continuation of --ids as space-separated token ids.";
    int cli = sl_opts_cli(argc, argv, "generate", summary, opts);
    if (cli >= 0) return cli;
    sl_err e = {0};
    if (!ids_s || max_new < 0 || a.page_size <= 0) {
        sl_err_set(&e, SL_ERR_INVALID, "--ids is required; --max-new-tokens >= 0; --page-size > 0");
        return sl_opts_usage_error("generate", e.msg);
    }
    int tp = model_start(&a, "generate");
    if (tp >= 0) return tp;
    sl_backend *be = NULL;
    sl_model *m = NULL;
    if (open_model(&a, &be, &m, &e)) return tp_finish(&a, fail("generate", &e));
    const sl_model_config *c = sl_model_cfg(m);
    int32_t *ids = NULL;
    int n = 0, rc = 0;
    if (parse_ids(ids_s, &ids, &n, c->vocab_size, &e)) {
        rc = sl_opts_usage_error("generate", e.msg);
        goto done;
    }
    sl_solo s;
    if (sl_solo_init(&s, m, n + max_new + 1, a.page_size, &e)) {
        rc = fail("generate", &e);
        goto done;
    }
    float *lg = malloc(sizeof(float) * (size_t)c->vocab_size);
    int32_t tok;
    sl_status st = n ? sl_solo_feed(&s, ids, n, 0, lg, &e) : SL_OK;
    for (int i = 0; i < max_new && !st; i++) {
        tok = sl_argmax(lg, c->vocab_size); /* the same on every TP rank: logits are gathered */
        if (!a.rank) printf("%s%d", i ? " " : "", tok);
        int eos = 0;
        for (int j = 0; j < c->n_eos; j++) eos |= tok == c->eos_token_ids[j];
        if (eos && !ignore_eos) break;
        if (i + 1 < max_new) st = sl_solo_feed(&s, &tok, 1, 0, lg, &e);
    }
    if (!a.rank) printf("\n");
    if (st) rc = fail("generate", &e);
    free(lg);
    sl_solo_free(&s);
done:
    free(ids);
    if (rc && a.comm) sl_comm_abort(a.comm);
    sl_model_free(m);
    sl_backend_free(be);
    return tp_finish(&a, rc);
}

/* ---- make-tiny ----------------------------------------------------------------- */

/* Tiny configs: small enough for CI, shaped to exercise every code path
 * (GQA, partial rotary, 2:1 head groups in both mixers, dense + MoE layers). */
static json_t *tiny_config(const char *arch, int vocab)
{
    json_t *c = json_pack("{s:i, s:i, s:i, s:i, s:f, s:i, s:s, s:i, s:b, s:s}", "vocab_size", vocab,
                          "hidden_size", 64, "num_attention_heads", 4, "num_key_value_heads", 2,
                          "rms_norm_eps", 1e-6, "max_position_embeddings", 4096, "hidden_act", "silu",
                          "bos_token_id", 0, "attention_bias", 0, "torch_dtype", "bfloat16");
    json_object_set_new(c, "rope_theta", json_real(10000.0));
    if (!strcmp(arch, "qwen3")) {
        json_object_set_new(c, "architectures", json_pack("[s]", "Qwen3ForCausalLM"));
        json_object_set_new(c, "model_type", json_string("qwen3"));
        json_object_set_new(c, "num_hidden_layers", json_integer(2));
        json_object_set_new(c, "head_dim", json_integer(64));
        json_object_set_new(c, "intermediate_size", json_integer(128));
        json_object_set_new(c, "tie_word_embeddings", json_true());
    } else if (!strcmp(arch, "qwen3_moe")) {
        json_object_set_new(c, "architectures", json_pack("[s]", "Qwen3MoeForCausalLM"));
        json_object_set_new(c, "model_type", json_string("qwen3_moe"));
        json_object_set_new(c, "num_hidden_layers", json_integer(3));
        json_object_set_new(c, "head_dim", json_integer(64));
        json_object_set_new(c, "intermediate_size", json_integer(96));
        json_object_set_new(c, "num_experts", json_integer(8));
        json_object_set_new(c, "num_experts_per_tok", json_integer(2));
        json_object_set_new(c, "moe_intermediate_size", json_integer(32));
        json_object_set_new(c, "mlp_only_layers", json_pack("[i]", 1));
        json_object_set_new(c, "tie_word_embeddings", json_false());
    } else if (!strcmp(arch, "qwen3_next")) {
        json_object_set_new(c, "architectures", json_pack("[s]", "Qwen3NextForCausalLM"));
        json_object_set_new(c, "model_type", json_string("qwen3_next"));
        json_object_set_new(c, "num_hidden_layers", json_integer(4));
        json_object_set_new(c, "head_dim", json_integer(64));
        json_object_set_new(c, "partial_rotary_factor", json_real(0.25));
        json_object_set_new(c, "intermediate_size", json_integer(96));
        json_object_set_new(c, "layer_types", json_pack("[s,s,s,s]", "linear_attention", "full_attention",
                                                       "linear_attention", "full_attention"));
        json_object_set_new(c, "linear_num_key_heads", json_integer(2));
        json_object_set_new(c, "linear_num_value_heads", json_integer(4));
        json_object_set_new(c, "linear_key_head_dim", json_integer(64));
        json_object_set_new(c, "linear_value_head_dim", json_integer(64));
        json_object_set_new(c, "linear_conv_kernel_dim", json_integer(4));
        json_object_set_new(c, "num_experts", json_integer(8));
        json_object_set_new(c, "num_experts_per_tok", json_integer(2));
        json_object_set_new(c, "moe_intermediate_size", json_integer(32));
        json_object_set_new(c, "shared_expert_intermediate_size", json_integer(32));
        json_object_set_new(c, "norm_topk_prob", json_true());
        json_object_set_new(c, "mlp_only_layers", json_pack("[i]", 2));
        json_object_set_new(c, "tie_word_embeddings", json_false());
    } else {
        json_decref(c);
        return NULL;
    }
    return c;
}

typedef struct tiny_writer {
    sl_safetensors_tensor *ts;
    int n, cap;
    uint64_t seed;
    int fp8; /* quantize sl_model_fp8_target projections block-wise */
    int failed;
} tiny_writer;

static sl_safetensors_tensor *tiny_slot(tiny_writer *w)
{
    if (w->n == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 64;
        w->ts = realloc(w->ts, sizeof *w->ts * (size_t)w->cap);
    }
    sl_safetensors_tensor *t = &w->ts[w->n];
    memset(t, 0, sizeof *t);
    return t;
}

/* t -> its F8_E4M3 codes in place plus its weight_scale_inv as the next
 * tensor: the bf16 values are what the bf16 twin of this model holds, so
 * loading that twin with --quantization fp8 gives this model exactly. */
static void tiny_quantize(tiny_writer *w, int idx)
{
    sl_safetensors_tensor q[2];
    sl_err e = {0};
    if (sl_quantize_fp8_tensor(&w->ts[idx], q, &e)) {
        w->failed = 1;
        return;
    }
    free((void *)w->ts[idx].name);
    free((void *)w->ts[idx].data);
    w->ts[idx] = q[0];
    *tiny_slot(w) = q[1];
    w->n++;
}

static void tiny_tensor(void *ctx, const char *name, int ndim, const int64_t *shape, float scale,
                        float offset)
{
    tiny_writer *w = ctx;
    if (w->failed) return;
    sl_safetensors_tensor *t = tiny_slot(w);
    t->name = strdup(name);
    t->dtype = SL_DTYPE_BF16;
    t->ndim = ndim;
    int64_t numel = 1;
    for (int d = 0; d < ndim; d++) numel *= (t->shape[d] = shape[d]);
    uint16_t *data = malloc(sizeof(uint16_t) * (size_t)numel);
    if (!data || !t->name) {
        w->failed = 1;
        return;
    }
    uint64_t h = 1469598103934665603ull;
    for (const char *s = name; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    for (int64_t i = 0; i < numel; i++)
        data[i] = sl_f32_to_bf16(offset + scale * (2.0f * sl_rng_uniform(w->seed ^ h, (uint64_t)i) - 1.0f));
    t->data = data;
    t->nbytes = sizeof(uint16_t) * (size_t)numel;
    w->n++;
    if (w->fp8 && ndim == 2 && sl_model_fp8_target(name)) tiny_quantize(w, w->n - 1);
}

/* cfg with the FP8 quantization_config of w's tensors (the kept linear
 * layers listed as sluice quantize lists them), re-dumped into *txt. */
static sl_status tiny_fp8_config(json_t *cfg, const tiny_writer *w, char **txt, sl_err *e)
{
    const char **kept = malloc(sizeof *kept * (size_t)(w->n ? w->n : 1));
    int nk = 0;
    for (int i = 0; kept && i < w->n; i++)
        if (sl_quantize_kept_linear(w->ts[i].name, w->ts[i].ndim)) kept[nk++] = w->ts[i].name;
    json_t *q = kept ? sl_quantize_fp8_config(kept, nk) : NULL;
    free(kept);
    if (!q) return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    json_object_set_new(cfg, "quantization_config", q);
    free(*txt);
    *txt = json_dumps(cfg, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    return *txt ? SL_OK : sl_err_set(e, SL_ERR_NOMEM, "out of memory");
}

/* make-tiny's own tokenizer: byte-level BPE with one token per byte (GPT-2's
 * byte-to-character alphabet), no merges, and the Qwen chat special tokens,
 * so a tiny model is servable without any outside files. */
static const char *tiny_specials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>",
                                      "<think>", "</think>", "<tool_call>", "</tool_call>",
                                      "<tool_response>", "</tool_response>"};
#define TINY_SPECIALS ((int)(sizeof tiny_specials / sizeof tiny_specials[0]))
#define TINY_TOKENIZER_VOCAB (256 + TINY_SPECIALS)

/* GPT-2's printable stand-in for byte b (sl_bytelevel.h), as UTF-8 into out (3 bytes max). */
static void byte_char(int b, char *out)
{
    uint32_t cp = sl_bytelevel_cp((uint8_t)b); /* below U+0144: one or two UTF-8 bytes */
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = 0;
    } else {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        out[2] = 0;
    }
}

static sl_status write_tiny_tokenizer(const char *dir, sl_err *e)
{
    json_t *vocab = json_object();
    for (int b = 0; b < 256; b++) {
        char ch[4];
        byte_char(b, ch);
        json_object_set_new(vocab, ch, json_integer(b));
    }
    json_t *added = json_array();
    for (int i = 0; i < TINY_SPECIALS; i++)
        json_array_append_new(added, json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", 256 + i,
                                               "content", tiny_specials[i], "single_word", 0, "lstrip", 0,
                                               "rstrip", 0, "normalized", 0, "special", i < 3));
    json_t *byte_level = json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel", "add_prefix_space", 0,
                                   "trim_offsets", 0, "use_regex", 0);
    json_t *pre = json_deep_copy(byte_level);
    json_object_set_new(pre, "use_regex", json_true()); /* GPT-2's split regex */
    json_t *tok = json_pack("{s:s, s:n, s:n, s:o, s:{s:s}, s:o, s:O, s:O, s:{s:s, s:n, s:n, s:s, s:s, "
                            "s:b, s:b, s:b, s:o, s:[]}}",
                            "version", "1.0", "truncation", "padding", "added_tokens", added, "normalizer",
                            "type", "NFC", "pre_tokenizer", pre, "post_processor", byte_level, "decoder",
                            byte_level, "model", "type", "BPE", "dropout", "unk_token",
                            "continuing_subword_prefix", "", "end_of_word_suffix", "", "fuse_unk", 0,
                            "byte_fallback", 0, "ignore_merges", 0, "vocab", vocab, "merges");
    json_decref(byte_level);
    json_t *cfg = json_pack("{s:b, s:n, s:s, s:s, s:i, s:s, s:b}", "add_bos_token", 0, "bos_token",
                            "eos_token", "<|im_end|>", "pad_token", "<|endoftext|>", "model_max_length",
                            4096, "tokenizer_class", "Qwen2Tokenizer", "split_special_tokens", 0);
    char path[4096];
    char *t = json_dumps(tok, JSON_INDENT(1) | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII);
    char *c = json_dumps(cfg, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    sl_status s = sl_file_write(sl_path_join(path, sizeof path, dir, "tokenizer.json"), t, strlen(t), e);
    if (!s) s = sl_file_write(sl_path_join(path, sizeof path, dir, "tokenizer_config.json"), c, strlen(c), e);
    free(t);
    free(c);
    json_decref(tok);
    json_decref(cfg);
    return s;
}

/* Vocabulary size of a tokenizer.json: 1 + the largest id in vocab and added_tokens. */
static int tokenizer_vocab(const char *dir, sl_err *e)
{
    char path[4096];
    json_error_t je;
    json_t *t = json_load_file(sl_path_join(path, sizeof path, dir, "tokenizer.json"), 0, &je);
    if (!t) {
        sl_err_set(e, SL_ERR_IO, "%s: %s", path, je.text);
        return -1;
    }
    int mx = -1;
    const char *k;
    json_t *v;
    size_t i;
    json_object_foreach(json_object_get(json_object_get(t, "model"), "vocab"), k, v)
        if (json_integer_value(v) > mx) mx = (int)json_integer_value(v);
    json_array_foreach(json_object_get(t, "added_tokens"), i, v)
    {
        int id = (int)json_integer_value(json_object_get(v, "id"));
        if (id > mx) mx = id;
    }
    json_decref(t);
    if (mx < 0) sl_err_set(e, SL_ERR_PARSE, "%s: no vocabulary", path);
    return mx + 1;
}

static sl_status copy_file(const char *from_dir, const char *to_dir, const char *name, int required,
                           sl_err *e)
{
    char src[4096], dst[4096];
    sl_path_join(src, sizeof src, from_dir, name);
    if (!required && !sl_file_exists(src)) return SL_OK;
    char *buf;
    size_t len;
    sl_status s = sl_file_read(src, &buf, &len, e);
    if (s) return s;
    s = sl_file_write(sl_path_join(dst, sizeof dst, to_dir, name), buf, len, e);
    free(buf);
    return s;
}

int sl_cmd_make_tiny(int argc, char **argv)
{
    const char *arch = "qwen3_next", *out = NULL, *tok = NULL, *quant = NULL;
    long long seed = 1;
    int hidden = 64;
    int inter = 0; /* 0: the arch's tiny default */
    int vocab = 0; /* default: the built-in tokenizer's size */
    sl_opt opts[] = {{"--arch", NULL, SL_OPT_STR, &arch, "qwen3, qwen3_moe or qwen3_next (default)"},
                     {"--out", NULL, SL_OPT_STR, &out, "output directory"},
                     {"--tokenizer", NULL, SL_OPT_STR, &tok,
                      "copy tokenizer files from this directory (or Hugging Face model id "
                      "ORG/NAME) and size the vocabulary to it"},
                     {"--vocab-size", NULL, SL_OPT_INT, &vocab,
                      "vocabulary without --tokenizer (default 265: the built-in byte-level "
                      "tokenizer; below that no tokenizer is written)"},
                     {"--seed", NULL, SL_OPT_I64, &seed, "weights seed (default 1)"},
                     {"--hidden-size", NULL, SL_OPT_INT, &hidden,
                      "hidden size (default 64; 192 gives FP8 models partial 128-blocks)"},
                     {"--intermediate-size", NULL, SL_OPT_INT, &inter,
                      "dense MLP intermediate size (default: 128 qwen3, 96 qwen3_moe/qwen3_next)"},
                     {"--quantization", NULL, SL_OPT_STR, &quant,
                      "fp8: write an FP8 block-wise checkpoint (the bf16 model of the same seed, "
                      "quantized as --quantization fp8 does at load)"},
                     {0}};
    const char *summary = "Writes a small random model (config, bf16 safetensors, tokenizer files).";
    int cli = sl_opts_cli(argc, argv, "make-tiny", summary, opts);
    if (cli >= 0) return cli;
    sl_err e = {0};
    if (!out) {
        sl_err_set(&e, SL_ERR_INVALID, "--out is required");
        return sl_opts_usage_error("make-tiny", e.msg);
    }
    char tok_dir[SL_HUB_PATH_MAX];
    if (tok && sl_hub_resolve(tok, NULL, SL_HUB_TEXT, tok_dir, sizeof tok_dir, &e))
        return fail("make-tiny", &e);
    if (tok) tok = tok_dir;
    if (tok && (vocab = tokenizer_vocab(tok, &e)) < 0) return fail("make-tiny", &e);
    if (!vocab) vocab = TINY_TOKENIZER_VOCAB;
    if (vocab < 16) {
        sl_err_set(&e, SL_ERR_INVALID, "--vocab-size must be at least 16");
        return sl_opts_usage_error("make-tiny", e.msg);
    }
    if ((quant && strcmp(quant, "fp8")) || hidden < 8 || hidden % 8 || inter < 0 || inter % 8) {
        sl_err_set(&e, SL_ERR_INVALID,
                   "--quantization must be fp8; --hidden-size and --intermediate-size multiples of 8");
        return sl_opts_usage_error("make-tiny", e.msg);
    }
    json_t *cfg = tiny_config(arch, vocab);
    if (!cfg) {
        sl_err_set(&e, SL_ERR_INVALID, "unknown --arch '%s' (qwen3, qwen3_moe, qwen3_next)", arch);
        return sl_opts_usage_error("make-tiny", e.msg);
    }
    json_object_set_new(cfg, "hidden_size", json_integer(hidden));
    if (inter) json_object_set_new(cfg, "intermediate_size", json_integer(inter));
    /* eos: <|im_end|> and <|endoftext|> of the tokenizer (the real one copied in, or
     * make-tiny's own when the vocabulary has room for it), else the last id */
    int own_tok = !tok && vocab >= TINY_TOKENIZER_VOCAB;
    json_t *eos = tok       ? json_pack("[i,i]", 151645, 151643)
                  : own_tok ? json_pack("[i,i]", 258, 256)
                            : json_pack("[i]", vocab - 1);
    json_object_set(cfg, "eos_token_id", eos);
    int rc = 0;
    char path[4096];
    char *txt = json_dumps(cfg, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    sl_model_config mc;
    tiny_writer w = {.seed = (uint64_t)seed, .fp8 = quant != NULL};
    if (sl_mkdirs(out, &e) || sl_model_config_parse(&mc, txt, NULL, &e) ||
        sl_model_checkpoint_tensors(&mc, tiny_tensor, &w, &e) || (quant && tiny_fp8_config(cfg, &w, &txt, &e)) ||
        sl_file_write(sl_path_join(path, sizeof path, out, "config.json"), txt, strlen(txt), &e)) {
        rc = fail("make-tiny", &e);
        goto done;
    }
    if (w.failed || sl_safetensors_write(sl_path_join(path, sizeof path, out, "model.safetensors"), w.ts, w.n, &e)) {
        if (w.failed) sl_err_set(&e, SL_ERR_NOMEM, "out of memory");
        rc = fail("make-tiny", &e);
        goto done;
    }
    json_t *gen = json_pack("{s:i, s:O}", "bos_token_id", 0, "eos_token_id", eos);
    char *gtxt = json_dumps(gen, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(gen);
    if (sl_file_write(sl_path_join(path, sizeof path, out, "generation_config.json"), gtxt, strlen(gtxt), &e))
        rc = fail("make-tiny", &e);
    free(gtxt);
    if (!rc && tok &&
        (copy_file(tok, out, "tokenizer.json", 1, &e) || copy_file(tok, out, "tokenizer_config.json", 0, &e) ||
         copy_file(tok, out, "chat_template.jinja", 0, &e)))
        rc = fail("make-tiny", &e);
    if (!rc && own_tok && write_tiny_tokenizer(out, &e)) rc = fail("make-tiny", &e);
    if (!rc) printf("wrote %s model to %s (vocab %d, %d tensors)\n", arch, out, vocab, w.n);
done:
    for (int i = 0; i < w.n; i++) {
        free((void *)w.ts[i].name);
        free((void *)w.ts[i].data);
    }
    free(w.ts);
    free(txt);
    json_decref(eos);
    json_decref(cfg);
    return rc;
}

int sl_cmd_quantize(int argc, char **argv)
{
    const char *in = NULL, *out = NULL, *revision = NULL;
    int fp8_block = 0;
    sl_opt opts[] = {{"--fp8-block", NULL, SL_OPT_FLAG, &fp8_block,
                      "128x128 block-wise e4m3 weights with F32 weight_scale_inv, dynamic per-token "
                      "activations (the -FP8 releases' format; the only scheme, the default)"},
                     {"--revision", NULL, SL_OPT_STR, &revision, "IN's Hub revision (branch, tag or commit)"},
                     {"IN", NULL, SL_OPT_STR, &in, "bf16 checkpoint directory (or Hugging Face model id ORG/NAME)"},
                     {"OUT", NULL, SL_OPT_STR, &out, "new directory for the FP8 checkpoint"},
                     {0}};
    const char *summary = "Writes an FP8 block-wise checkpoint of a bf16 one: the projections --quantization fp8\n"
                          "quantizes at load, with the same codes and scales, in the same shard files.";
    int cli = sl_opts_cli(argc, argv, "quantize", summary, opts);
    if (cli >= 0) return cli;
    if (!in || !out) return sl_opts_usage_error("quantize", "IN and OUT are required");
    sl_err e = {0};
    char dir[SL_HUB_PATH_MAX];
    sl_quantize_report r;
    if (sl_hub_resolve(in, revision, SL_HUB_WEIGHTS, dir, sizeof dir, &e) ||
        sl_quantize_fp8_checkpoint(dir, out, &r, &e))
        return fail("quantize", &e);
    printf("wrote %s: %d projections in FP8 blocks, %d tensors, %.3f GB -> %.3f GB\n", out, r.quantized, r.tensors,
           r.in_bytes / 1e9, r.out_bytes / 1e9);
    return 0;
}

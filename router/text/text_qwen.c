/* text_qwen: sl_text_ops over the Qwen3 tokenizer (tokenizer.h, detok.h),
 * chat templates (chat_template.h) and output parsers (output_parser.h). */
#include <stdlib.h>
#include <string.h>

#include "chat_template.h"
#include "constraint.h"
#include "detok.h"
#include "output_parser.h"
#include "reasoning.h"
#include "sl_log.h"
#include "text.h"
#include "tokenizer.h"

typedef struct qwen_text {
    sl_tok *tok;
    sl_chat_template_family fam;
    int tool_parser; /* a --tool-call-parser was given */
    sl_tool_parser_kind tool_kind;
    int reasoning; /* a --reasoning-parser was given */
    int32_t eos[2];
    int neos;
    int32_t think_end; /* "</think>", or -1 */
    uint64_t seq; /* tool call id seeds */
} qwen_text;

static sl_status q_encode(void *impl, const char *text, size_t len, const sl_tok_spans *literal,
                          sl_tok_ids *ids, sl_err *e)
{
    /* appends to ids */
    return sl_tok_encode_literal(((qwen_text *)impl)->tok, text, len, literal, ids, e);
}

static sl_status q_render(void *impl, const json_t *req, sl_buf *prompt, sl_tok_spans *literal,
                          sl_err *e)
{
    return sl_chat_template_render(((qwen_text *)impl)->fam, req, prompt, literal, e);
}

static sl_status q_decode(void *impl, const int32_t *ids, size_t n, sl_buf *out, sl_err *e)
{
    sl_status s = sl_detok_decode(((qwen_text *)impl)->tok, ids, n, SL_DETOK_SKIP_SPECIAL, out, e);
    if (s == SL_OK && !out->data) sl_buf_puts(out, "");
    return s;
}

static void *q_detok_new(void *impl)
{
    sl_detok *d = malloc(sizeof *d);
    if (d) sl_detok_init(d, ((qwen_text *)impl)->tok, SL_DETOK_SKIP_SPECIAL);
    return d;
}

static void q_detok_push(void *d, const int32_t *ids, size_t n, sl_buf *out)
{
    for (size_t i = 0; i < n; i++) {
        sl_err e = {0};
        /* An id outside the tokenizer (padding rows of the embedding) has no text. */
        if (sl_detok_push(d, ids[i], out, &e) != SL_OK) SL_LOGD("text", "%s", e.msg);
    }
}

static void q_detok_finish(void *d, sl_buf *out) { sl_detok_finish(d, out, NULL); }
static void q_detok_free(void *d) { free(d); }

static void *q_parser_new(void *impl, const json_t *req, const char *prompt, size_t plen,
                          sl_err *e)
{
    qwen_text *q = impl;
    json_t *tools = json_object_get(req, "tools");
    /* separate_reasoning: false asks for the raw text, think tags included. */
    int split = q->reasoning && !json_is_false(json_object_get(req, "separate_reasoning"));
    sl_output_parser_config c = {
        .reasoning = split ? sl_reasoning_mode_for_prompt(prompt ? prompt : "", plen)
                           : SL_REASONING_MODE_OFF,
        .tool_calls = q->tool_parser && json_is_array(tools) && json_array_size(tools),
        .tool_kind = q->tool_kind,
        .tools = tools,
        .seed = ++q->seq ^ (uint64_t)(uintptr_t)req};
    if (c.reasoning == SL_REASONING_MODE_OFF && !c.tool_calls) return NULL; /* all content */
    sl_output_parser *p = sl_output_parser_new(&c);
    if (!p) sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    return p;
}

static void to_sink(const sl_deltas *d, const sl_text_sink *s)
{
    for (int i = 0; i < d->n; i++) {
        const sl_delta *x = &d->v[i];
        switch (x->kind) {
        case SL_DELTA_CONTENT: s->content(s->ud, x->text, x->len); break;
        case SL_DELTA_REASONING: s->reasoning(s->ud, x->text, x->len); break;
        case SL_DELTA_TOOL_START: s->tool_start(s->ud, x->index, x->id, x->name); break;
        case SL_DELTA_TOOL_ARGS: s->tool_args(s->ud, x->index, x->text, x->len); break;
        }
    }
}

static sl_status q_parser_feed(void *p, const char *text, size_t len, const sl_text_sink *s,
                               sl_err *e)
{
    sl_deltas d = {0};
    sl_status st = sl_output_parser_feed(p, text, len, &d, e);
    if (st == SL_OK) to_sink(&d, s);
    sl_deltas_free(&d);
    return st;
}

static sl_status q_parser_finish(void *p, const sl_text_sink *s, sl_err *e)
{
    sl_deltas d = {0};
    sl_status st = sl_output_parser_finish(p, &d, e);
    if (st == SL_OK) to_sink(&d, s);
    sl_deltas_free(&d);
    return st;
}

static void q_parser_free(void *p) { sl_output_parser_free(p); }

static int q_eos(void *impl, int32_t *out, int cap)
{
    qwen_text *q = impl;
    int n = q->neos < cap ? q->neos : cap;
    memcpy(out, q->eos, (size_t)n * sizeof *out);
    return n;
}

static sl_status q_tool_grammar(void *impl, const json_t *tools, const char *only, int parallel,
                                sl_buf *gbnf, sl_err *e)
{
    qwen_text *q = impl;
    if (!q->tool_parser)
        return sl_err_set(e, SL_ERR_INVALID,
                          "enforcing tool calls needs a tool-call format: start the server with "
                          "--tool-call-parser");
    return sl_constraint_tool_calls(q->tool_kind, tools, only, parallel, gbnf, e);
}

/* With a reasoning parser the answer follows the thinking: constraining the
 * thinking itself would leave the model no room to think (SGLang does the
 * same). A prompt that closed an empty think block answers at once. */
static int32_t q_answer_start(void *impl, const json_t *req, const char *prompt, size_t plen)
{
    qwen_text *q = impl;
    (void)req;
    if (!q->reasoning || q->think_end < 0) return -1;
    return sl_reasoning_mode_for_prompt(prompt ? prompt : "", plen) == SL_REASONING_MODE_OFF
               ? -1
               : q->think_end;
}

const sl_text_ops sl_text_qwen_ops = {.encode = q_encode,
                                      .render_chat = q_render,
                                      .decode = q_decode,
                                      .detok_new = q_detok_new,
                                      .detok_push = q_detok_push,
                                      .detok_finish = q_detok_finish,
                                      .detok_free = q_detok_free,
                                      .parser_new = q_parser_new,
                                      .parser_feed = q_parser_feed,
                                      .parser_finish = q_parser_finish,
                                      .parser_free = q_parser_free,
                                      .eos_ids = q_eos,
                                      .tool_grammar = q_tool_grammar,
                                      .answer_start = q_answer_start};

sl_status sl_text_qwen_open(const sl_text_options *o, void **impl, sl_err *e)
{
    *impl = NULL;
    qwen_text *q = calloc(1, sizeof *q);
    if (!q) return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    if (o->reasoning_parser) {
        if (strcmp(o->reasoning_parser, "qwen3") && strcmp(o->reasoning_parser, "qwen3-thinking")) {
            free(q);
            return sl_err_set(e, SL_ERR_INVALID, "--reasoning-parser %s: expected qwen3 or qwen3-thinking",
                              o->reasoning_parser);
        }
        q->reasoning = 1;
    }
    if (o->tool_call_parser) {
        if (sl_tool_parser_kind_parse(o->tool_call_parser, &q->tool_kind, e)) {
            free(q);
            return sl_err_wrap(e, "--tool-call-parser: ");
        }
        q->tool_parser = 1;
    }
    if (sl_tok_load(&q->tok, o->dir, e)) {
        free(q);
        return e ? e->code : SL_ERR_IO;
    }
    if (sl_chat_template_load(o->dir, o->chat_template, &q->fam, e)) {
        sl_tok_free(q->tok);
        free(q);
        return e ? e->code : SL_ERR_IO;
    }
    static const char *const eos[] = {"<|im_end|>", "<|endoftext|>"};
    for (int i = 0; i < 2; i++) {
        int32_t id = sl_tok_token_id(q->tok, eos[i]);
        if (id >= 0) q->eos[q->neos++] = id;
    }
    q->think_end = sl_tok_token_id(q->tok, "</think>");
    *impl = q;
    return SL_OK;
}

void sl_text_qwen_close(void *impl)
{
    qwen_text *q = impl;
    if (!q) return;
    sl_tok_free(q->tok);
    free(q);
}

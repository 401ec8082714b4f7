/* sl_text: what the router needs from a model's text side, as one table of
 * functions: tokenizer (tokenizer.h), streaming detokenizer (detok.h), chat
 * template (chat_template.h) and output parsers (reasoning.h,
 * tool_parser.h). text_qwen.c fills it from those modules; tests fill it with
 * small fakes so the HTTP, routing and streaming logic is tested on its own.
 *
 * Threads: encode and render_chat may run on any thread at once (the router
 * calls them from the libuv pool for long prompts); everything else runs on
 * the loop thread, one object per response.
 */
#ifndef SL_TEXT_H
#define SL_TEXT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "sl_buf.h"
#include "sl_err.h"
#include "tokenizer.h" /* sl_tok_ids, sl_tok_spans */

/* Where a chat output parser sends what it recognised (all text is UTF-8,
 * not NUL-terminated). */
typedef struct sl_text_sink {
    void *ud;
    void (*content)(void *ud, const char *text, size_t len);
    void (*reasoning)(void *ud, const char *text, size_t len);
    void (*tool_start)(void *ud, int index, const char *id, const char *name);
    void (*tool_args)(void *ud, int index, const char *text, size_t len);
} sl_text_sink;

typedef struct sl_text_ops {
    /* Appends the ids of text to ids. literal (NULL: none) lists the ranges
     * of text a client typed, where special tokens are plain text
     * (split_special_tokens; tokenizer.h, sl_tok_encode_literal).
     * SL_ERR_INVALID for bad UTF-8 or bad ranges. */
    sl_status (*encode)(void *impl, const char *text, size_t len, const sl_tok_spans *literal,
                        sl_tok_ids *ids, sl_err *e);
    /* Appends the prompt of a chat request body (messages, tools,
     * chat_template_kwargs, ...) and, when literal is not NULL, the ranges
     * of it that hold the request's text. SL_ERR_INVALID names the bad
     * field. */
    sl_status (*render_chat)(void *impl, const json_t *req, sl_buf *prompt, sl_tok_spans *literal,
                             sl_err *e);
    /* Whole decode (tokens of /detokenize, logprob token strings). */
    sl_status (*decode)(void *impl, const int32_t *ids, size_t n, sl_buf *out, sl_err *e);
    /* Streaming detokenizer: push appends the text that is complete. */
    void *(*detok_new)(void *impl);
    void (*detok_push)(void *d, const int32_t *ids, size_t n, sl_buf *out);
    void (*detok_finish)(void *d, sl_buf *out);
    void (*detok_free)(void *d);
    /* Chat output parser for one choice (NULL: the output is all content).
     * req is the chat request body, prompt the rendered prompt. */
    void *(*parser_new)(void *impl, const json_t *req, const char *prompt, size_t plen,
                        sl_err *e);
    sl_status (*parser_feed)(void *p, const char *text, size_t len, const sl_text_sink *s,
                             sl_err *e);
    sl_status (*parser_finish)(void *p, const sl_text_sink *s, sl_err *e);
    void (*parser_free)(void *p);
    /* Token ids that end generation besides the worker's eos (may be NULL). */
    int (*eos_ids)(void *impl, int32_t *out, int cap);
    /* Constrained decoding (each may be NULL: not offered). tool_grammar
     * appends the GBNF of tool calls in the active tool parser's format:
     * calls to only (NULL: to any of tools, a chat tools array), exactly
     * one when parallel is 0; SL_ERR_INVALID says what it cannot enforce
     * (no tool parser). answer_start: the id after which a constrained
     * answer starts for this rendered prompt (the end of a reasoning
     * model's thinking), or -1: at the first output token. */
    sl_status (*tool_grammar)(void *impl, const json_t *tools, const char *only, int parallel,
                              sl_buf *gbnf, sl_err *e);
    int32_t (*answer_start)(void *impl, const json_t *req, const char *prompt, size_t plen);
} sl_text_ops;

/* ---- text_qwen.c: the real text side of a model directory ---- */

typedef struct sl_text_options {
    const char *dir;              /* tokenizer.json + chat template */
    const char *chat_template;    /* family override ("qwen3", "qwen3_coder") or NULL */
    const char *tool_call_parser; /* "qwen3_coder", "hermes", "qwen25" or NULL: none */
    const char *reasoning_parser; /* "qwen3" or NULL: reasoning stays in the content */
} sl_text_options;

extern const sl_text_ops sl_text_qwen_ops;
/* Loads the tokenizer and recognises the template (blocking; start-up). */
sl_status sl_text_qwen_open(const sl_text_options *o, void **impl, sl_err *e);
void sl_text_qwen_close(void *impl);

#endif

/* chat_template: chat-completions messages -> prompt text, in C.
 *
 * sluice does not embed a Jinja interpreter. It recognises which template
 * family a model ships (by fingerprints of the template text) and renders
 * that family in C, byte for byte equal to Hugging Face's
 * apply_chat_template (jinja2, trim_blocks, lstrip_blocks, HF's tojson).
 * tests/py/test_chat_template.py holds the Jinja reference and compares.
 *
 * Families:
 *   qwen3        Qwen3 (tokenizer_config.json of Qwen3-8B etc.): Hermes-style
 *                JSON tool calls, <think> handling, enable_thinking.
 *   qwen3_coder  Qwen3-Coder: tools as <function>/<parameter> XML in the system
 *                turn, tool calls as <function=NAME><parameter=P>.
 *
 * Input is a chat-completions request body (borrowed json_t):
 *   messages              array of {role, content, tool_calls?,
 *                         reasoning_content?, ...}, at least one
 *   tools                 optional array, passed to the template as given
 *   add_generation_prompt optional bool, default true
 *   chat_template_kwargs  optional object (qwen3 reads enable_thinking)
 *
 * Before rendering, messages are normalised the way OpenAI servers (vLLM,
 * SGLang) do it, because the templates cannot take the raw OpenAI shapes:
 *   - content null or missing -> "", an array of text parts -> their texts
 *     joined with "\n";
 *   - qwen3_coder only: function.arguments given as a JSON string is decoded
 *     (the template iterates over the arguments object);
 *   - qwen3_coder only: a tool without "parameters" renders as if it had
 *     an empty object (the Jinja template would raise).
 *
 *   sl_chat_template_family fam;
 *   if (sl_chat_template_load(model_dir, NULL, &fam, &e)) ...   // at start-up
 *   sl_buf prompt = {0};
 *   sl_tok_spans typed = {0};   // or NULL below
 *   if (sl_chat_template_render(fam, request_json, &prompt, &typed, &e)) ...  // per request
 *   sl_tok_encode_literal(tok, prompt.data, prompt.len, &typed, &ids, &e);
 *
 * Literal ranges: everything of the prompt that comes from the request
 * (message contents, reasoning, roles, tool names, arguments and results,
 * tool definitions) is recorded as a range, the template's own text is not.
 * Encoding with them (sl_tok_encode_literal) keeps a client's "<|im_end|>"
 * from becoming the control token (SGLang/vLLM's split_special_tokens).
 *
 * Everything here is pure and reentrant: any thread may render.
 */
#ifndef SL_CHAT_TEMPLATE_H
#define SL_CHAT_TEMPLATE_H

#include <jansson.h>

#include "sl_buf.h"
#include "sl_err.h"
#include "tokenizer.h" /* sl_tok_spans */

typedef enum sl_chat_template_family {
    SL_CHAT_TEMPLATE_FAMILY_QWEN3,
    SL_CHAT_TEMPLATE_FAMILY_QWEN3_CODER,
} sl_chat_template_family;

/* "qwen3" / "qwen3_coder". */
const char *sl_chat_template_family_name(sl_chat_template_family f);
/* Name -> family; SL_ERR_INVALID naming the accepted names otherwise. */
sl_status sl_chat_template_family_parse(const char *name, sl_chat_template_family *out, sl_err *e);

/* Which family a Jinja template's text is (several distinctive fragments must
 * all be present, so small edits elsewhere do not matter);
 * SL_ERR_UNSUPPORTED when none matches. */
sl_status sl_chat_template_detect(const char *template_text, sl_chat_template_family *out,
                                  sl_err *e);

/* Start-up choice: override_name when non-NULL (model_dir may then be NULL):
 * a family name, or the path of a .jinja file recognised as below;
 * otherwise the template of model_dir (chat_template.jinja, else
 * tokenizer_config.json "chat_template") recognised by sl_chat_template_detect.
 * Errors name the file and what is missing or unrecognised. Blocks on file I/O. */
sl_status sl_chat_template_load(const char *model_dir, const char *override_name,
                                sl_chat_template_family *out, sl_err *e);

/* Appends the prompt for request to out and, when literal is not NULL, the
 * ranges of out that hold the request's text to literal (offsets into out,
 * in order). SL_ERR_INVALID (naming the field, e.g. "messages[2].content")
 * for wrong shapes; out and literal may then hold a prefix. request is only
 * read. */
sl_status sl_chat_template_render(sl_chat_template_family f, const json_t *request, sl_buf *out,
                                  sl_tok_spans *literal, sl_err *e);

#endif

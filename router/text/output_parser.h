/* output_parser: the reasoning parser and a tool-call parser chained, as the
 * router runs them on one response's detokenized text.
 *
 * Reasoning is split off first (reasoning.h); only content goes on to the
 * tool-call parser (tool_parser.h), so a <tool_call> written while thinking
 * stays reasoning. Output is one ordered delta list (delta.h).
 *
 *   sl_output_parser_config c = {.reasoning = sl_reasoning_mode_for_prompt(prompt, n),
 *                       .tool_calls = tools != NULL,
 *                       .tool_kind = sl_output_parser_tool_kind_for(family),
 *                       .tools = tools, .seed = request_seed};
 *   sl_output_parser *p = sl_output_parser_new(&c);            // per request
 *   sl_output_parser_feed(p, chunk, len, &d, &e);     // per detokenized chunk
 *   sl_output_parser_finish(p, &d, &e);               // at the end
 *   sl_output_parser_free(p);
 *
 *   json_t *msg;                             // or all at once:
 *   sl_output_parser_parse_message(&c, text, len, &msg, &e);
 *
 * One parser per response; not thread-safe; never blocks.
 */
#ifndef SL_OUTPUT_PARSER_H
#define SL_OUTPUT_PARSER_H

#include <jansson.h>
#include <stdint.h>

#include "chat_template.h"
#include "delta.h"
#include "reasoning.h"
#include "tool_parser.h"

typedef struct sl_output_parser_config {
    sl_reasoning_mode reasoning; /* SL_REASONING_MODE_OFF: no reasoning split */
    int tool_calls;           /* 0: no tool-call parsing (request without tools) */
    sl_tool_parser_kind tool_kind;
    const json_t *tools; /* the request's tools (borrowed for the call to sl_output_parser_new) */
    uint64_t seed;       /* tool call ids */
} sl_output_parser_config;

typedef struct sl_output_parser sl_output_parser;

/* The tool-call format a template family teaches its model. */
sl_tool_parser_kind sl_output_parser_tool_kind_for(sl_chat_template_family f);

/* NULL when memory runs out. */
sl_output_parser *sl_output_parser_new(const sl_output_parser_config *c);
/* Appends the deltas text resolves. SL_ERR_NOMEM only. */
sl_status sl_output_parser_feed(sl_output_parser *p, const char *text, size_t len, sl_deltas *out,
                                sl_err *e);
sl_status sl_output_parser_finish(sl_output_parser *p, sl_deltas *out, sl_err *e);
void sl_output_parser_free(sl_output_parser *p);

/* Non-streaming: the whole output -> the final assistant message (see
 * sl_deltas_message), a new reference in *message. */
sl_status sl_output_parser_parse_message(const sl_output_parser_config *c, const char *text,
                                         size_t len, json_t **message, sl_err *e);

#endif

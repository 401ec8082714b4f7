/* output_parser: the reasoning parser and a tool-call parser chained, as the
 * router runs them on one response's detokenized text.
 *
 * Reasoning is split off first (reasoning.h); only content goes on to the
 * tool-call parser (tool_parser.h), so a <tool_call> written while thinking
 * stays reasoning. Output is one ordered delta list (delta.h).
 *
 *   sl_outp_config c = {.reasoning = sl_reason_mode_for_prompt(prompt, n),
 *                       .tool_calls = tools != NULL,
 *                       .tool_kind = sl_outp_tool_kind_for(family),
 *                       .tools = tools, .seed = request_seed};
 *   sl_outp *p = sl_outp_new(&c);            // per request
 *   sl_outp_feed(p, chunk, len, &d, &e);     // per detokenized chunk
 *   sl_outp_finish(p, &d, &e);               // at the end
 *   sl_outp_free(p);
 *
 *   json_t *msg;                             // or all at once:
 *   sl_outp_parse_message(&c, text, len, &msg, &e);
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

typedef struct sl_outp_config {
    sl_reason_mode reasoning; /* SL_REASON_MODE_OFF: no reasoning split */
    int tool_calls;           /* 0: no tool-call parsing (request without tools) */
    sl_toolp_kind tool_kind;
    const json_t *tools; /* the request's tools (borrowed for the call to sl_outp_new) */
    uint64_t seed;       /* tool call ids */
} sl_outp_config;

typedef struct sl_outp sl_outp;

/* The tool-call format a template family teaches its model. */
sl_toolp_kind sl_outp_tool_kind_for(sl_tmpl_family f);

/* NULL when memory runs out. */
sl_outp *sl_outp_new(const sl_outp_config *c);
/* Appends the deltas text resolves. SL_ERR_NOMEM only. */
sl_status sl_outp_feed(sl_outp *p, const char *text, size_t len, sl_deltas *out, sl_err *e);
sl_status sl_outp_finish(sl_outp *p, sl_deltas *out, sl_err *e);
void sl_outp_free(sl_outp *p);

/* Non-streaming: the whole output -> the final assistant message (see
 * sl_deltas_message), a new reference in *message. */
sl_status sl_outp_parse_message(const sl_outp_config *c, const char *text, size_t len,
                                json_t **message, sl_err *e);

#endif

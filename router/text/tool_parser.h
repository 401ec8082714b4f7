/* tool_parser: model text -> OpenAI tool_calls, incrementally.
 *
 * Two formats, matching the chat template families:
 *
 *   SL_TOOL_PARSER_KIND_QWEN3_CODER  (template qwen3_coder)
 *       <tool_call>\n<function=NAME>\n<parameter=P>\nvalue\n</parameter>\n
 *       </function>\n</tool_call>
 *     A bare "<function=NAME>...</function>" without <tool_call> is a call too.
 *     Values are converted by the tool's JSON schema type of P: string;
 *     integer; number; boolean; object/array (JSON); "null" is null for any
 *     type; an unknown type or parameter is JSON when it parses, else a
 *     string. One newline after the opening tag and before the closing tag is
 *     part of the format, not of the value.
 *   SL_TOOL_PARSER_KIND_HERMES       (template qwen3; alias "qwen25")
 *       <tool_call>\n{"name": NAME, "arguments": {...}}\n</tool_call>
 *
 * Output is a list of deltas (delta.h): CONTENT for text outside calls, and
 * per call a TOOL_START (index, id "call_<24 hex>", name) followed by
 * TOOL_ARGS fragments whose concatenation is the arguments JSON text
 * (json.dumps style: {"city": "Paris", "days": 3}). qwen3_coder streams one
 * fragment per finished parameter; hermes sends the arguments when the call
 * closes.
 *
 * Robustness rules (a model's output is untrusted input):
 *   - a tag split across feeds ("<tool_" + "call>") is held back, never
 *     emitted as content until resolved;
 *   - a call that cannot be parsed (unknown function when tools are given,
 *     bad JSON, no <function=...>) is replayed verbatim as content;
 *   - once a qwen3_coder call's name was sent it stays a call: at the end of
 *     output an unclosed parameter takes the rest of the text and the call
 *     is closed (the model ran out of tokens mid-call);
 *   - whitespace between content and a call, between calls and after the
 *     last call is dropped; all other text is kept as content.
 * Feeding the same text in any split gives the same deltas once joined.
 *
 *   sl_tool_parser *p = sl_tool_parser_new(SL_TOOL_PARSER_KIND_QWEN3_CODER, request_tools, seed);
 *   sl_tool_parser_feed(p, chunk, len, &deltas, &e);   // per detokenized chunk
 *   sl_tool_parser_finish(p, &deltas, &e);             // at end of generation
 *   sl_tool_parser_free(p);
 *
 * One parser per response; not thread-safe; never blocks.
 */
#ifndef SL_TOOL_PARSER_H
#define SL_TOOL_PARSER_H

#include <jansson.h>
#include <stdint.h>

#include "delta.h"
#include "sl_err.h"

typedef enum sl_tool_parser_kind {
    SL_TOOL_PARSER_KIND_QWEN3_CODER,
    SL_TOOL_PARSER_KIND_HERMES,
} sl_tool_parser_kind;

typedef struct sl_tool_parser sl_tool_parser;

/* "qwen3_coder", "hermes" or "qwen25" -> kind; SL_ERR_INVALID otherwise. */
sl_status sl_tool_parser_kind_parse(const char *name, sl_tool_parser_kind *out, sl_err *e);

/* tools: the request's "tools" array (borrowed reference taken; may be NULL:
 * then any function name is accepted and no types are known). seed makes
 * the call ids (the router passes a random or request-derived value).
 * NULL when memory runs out. */
sl_tool_parser *sl_tool_parser_new(sl_tool_parser_kind kind, const json_t *tools, uint64_t seed);
/* Appends the deltas this text resolves. SL_ERR_NOMEM only. */
sl_status sl_tool_parser_feed(sl_tool_parser *p, const char *text, size_t len, sl_deltas *out,
                              sl_err *e);
/* End of output: resolves everything held back. */
sl_status sl_tool_parser_finish(sl_tool_parser *p, sl_deltas *out, sl_err *e);
void sl_tool_parser_free(sl_tool_parser *p);

#endif

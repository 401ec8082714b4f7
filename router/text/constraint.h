/* constraint: request constraints -> GBNF grammar text, for constrained decoding.
 *
 * A request can say what shape the model's output must have: a JSON Schema
 * (response_format json_schema), any JSON object (response_format json_object), a regular
 * expression (SGLang's `regex`), or tool calls (tool_choice "required" or a named function).
 * These functions turn each into a complete GBNF grammar (llama.cpp's dialect, start rule
 * `root`) for the grammar engine (common/grammar/grammar.h), which masks the tokens that
 * would leave it. They run on the router; they never see the model.
 *
 *   sl_buf g = {0};
 *   sl_err e = {0};
 *   if (sl_constraint_json_schema(schema, &g, &e) != SL_OK)
 *       return reply_400("response_format.json_schema: %s", e.msg);
 *   ... sl_gram_compile(g.data, g.len, ...) ...
 *   sl_buf_free(&g);
 *
 * Exactness. A schema grammar accepts exactly the JSON texts, spelled in sluice's output
 * style, that validate against the schema (the oracle is Python's `jsonschema` with format
 * checking, tests/py/test_constraint_schema.py); what cannot be enforced exactly is refused,
 * never approximated. The output style:
 *   - whitespace: none, one space, or a newline and up to 20 spaces/tabs between tokens (so a
 *     model cannot loop on whitespace); none before the value, the same after it;
 *   - strings as json.dumps(ensure_ascii=False) writes them: characters as themselves except
 *     ", \ and U+0000..U+001F, which are \" \\ \b \f \n \r \t or \u00xx (lower-case hex); no
 *     other \u escapes, so every character has one spelling and lengths count exactly;
 *   - integers without fraction or exponent; `enum`/`const` values as json.dumps writes them
 *     (numbers as given, object keys in the given order).
 *
 * JSON Schema support (draft 2020-12 meaning; anything else is SL_ERR_INVALID naming the
 * keyword and its JSON pointer: "unsupported keyword `not` at #/properties/x"):
 *   type (a name or a list), enum, const (any JSON; with `type` only), anyOf, allOf of one
 *   schema, oneOf when its branches cannot overlap (different types, different constants, or
 *   objects that require a property with disjoint values), $ref to #, #/$defs/..,
 *   #/definitions/.. or any pointer into the schema (recursion allowed; a cycle that reads no
 *   input is refused), properties (in schema order), required, additionalProperties (false:
 *   no other keys; true, absent or a schema: other keys, each validated by it, after the
 *   listed ones, and never a listed name again, so a duplicate key cannot override a listed
 *   value), items, prefixItems, minItems, maxItems, minLength, maxLength, pattern, format
 *   (date-time, date, time, uuid, email, ipv4), minimum/maximum/exclusiveMinimum/
 *   exclusiveMaximum on integers (within ±2^53); on numbers only integral minimum/maximum
 *   (then no exponent: a decimal rounds when parsed, so exclusive bounds cannot be exact).
 *   Annotations are ignored: title, description, default, examples, deprecated, readOnly,
 *   writeOnly, $schema, $id, $comment, $defs/definitions themselves, strict. A schema without
 *   `type` allows every type its keywords allow (keywords of other types do not constrain).
 *   Refused combinations: `$ref`, `anyOf`/`oneOf`/`allOf` or `enum`/`const` next to other
 *   constraining keywords; `pattern` or `format` with length bounds; exclusive or fractional
 *   number bounds; contradictions (nothing valid). Limits: nesting 64 deep, counts up to
 *   SL_CONSTRAINT_MAX_REPEAT (10000), grammar text up to 2 MiB (SL_ERR_LIMIT).
 *   `pattern` is a search, as in JSON Schema: the string must contain a match unless the
 *   pattern is anchored with ^ and $. \d \w \s and `.` there keep to the characters on which
 *   ECMA-262 (JSON Schema's dialect) and Python's re (what Python validators run) agree: \d is
 *   [0-9], \w ASCII, \s the spaces both count; \D no Unicode digit, \S nothing either counts
 *   as a space, \W only ASCII; `.` excludes \n \r U+2028 U+2029.
 *   format: date (YYYY-MM-DD, real calendar days, leap years), time (HH:MM:SS[.frac] and Z or
 *   ±HH:MM), date-time (date "T" time), uuid (8-4-4-4-12 hex digits), email (dot-atom local
 *   part @ a dotted host name: a subset of what the format allows), ipv4 (dotted decimal
 *   without leading zeros).
 *
 * Regex (sl_constraint_regex): the whole output must match. Literals, escapes (\n \t \r \f \v
 * \0 \xHH \uHHHH \UHHHHHHHH, escaped punctuation), \d \w \s \D \W \S (ASCII), classes with
 * ranges, negation and escapes, `.` (anything but \n), groups ( ), (?: ), (?P<n> ), (?<n> ),
 * alternation, * + ? {m} {m,} {m,n} and their lazy forms, possessive forms read as greedy (the
 * same language unless what follows could match what the quantifier gives up), ^ at the start
 * and $ at the end of a top-level branch. Refused with the construct and offset:
 * backreferences, lookaround, \b \B \A \Z, \p{..}, inline flags, atomic and conditional
 * groups, {,n}, a ']' first in a class, POSIX classes.
 *
 * Thread-safety: none of these functions keeps state; any thread may call them. They never
 * block. Inputs are untrusted: every failure is a status with a message, never a crash.
 * Output is appended to out (NUL-terminated); on failure out may hold a partial grammar.
 */
#ifndef SL_CONSTRAINT_H
#define SL_CONSTRAINT_H

#include <jansson.h>
#include <stddef.h>

#include "sl_buf.h"
#include "sl_err.h"
#include "tool_parser.h"

/* The grammar of JSON texts valid against schema (the bare schema: the API layer unwraps
 * OpenAI's {"name", "schema", "strict"}). SL_ERR_INVALID: unsupported or contradictory
 * schema (the message names the keyword and its JSON pointer); SL_ERR_LIMIT: too large;
 * SL_ERR_NOMEM. */
sl_status sl_constraint_json_schema(const json_t *schema, sl_buf *out, sl_err *e);

/* The grammar of any JSON object (response_format json_object). SL_ERR_NOMEM only. */
sl_status sl_constraint_json_object(sl_buf *out);

/* The grammar of texts that re[0..n) matches entirely. SL_ERR_INVALID names the unsupported
 * construct and its byte offset; SL_ERR_LIMIT for counts above 10000 or deep nesting. */
sl_status sl_constraint_regex(const char *re, size_t n, sl_buf *out, sl_err *e);

/* The grammar of tool calls in the format of the active tool-call parser (kind), for
 * tool_choice "required" (only == NULL: calls to any of tools) or a named function (only:
 * calls to that function). parallel != 0: one or more calls, separated by "\n" as the chat
 * templates write them; parallel == 0: exactly one call. The output ends after the last call.
 *   hermes:      <tool_call>\n{"name": "NAME", "arguments": ARGS}\n</tool_call>
 *                ARGS by the tool's `parameters` schema, as an object (see above);
 *   qwen3_coder: <tool_call>\n<function=NAME>\n<parameter=P>\nVALUE\n</parameter>\n...
 *                </function>\n</tool_call>, parameters in schema order, required ones
 *                present; VALUE in the form sl_tool_parser converts back by the declared
 *                `type`: a string is raw text (`enum`, `const` and `format` enforced; length
 *                and pattern are not), one other type or none is JSON by the schema, several
 *                types are free text.
 * Inside calls nothing can spell a tag the parser looks for (</tool_call>, and for
 * qwen3_coder </parameter>, <parameter=, </function>), a non-nullable string parameter is
 * never the word null (the parser would read null), and numbers stay within what jansson
 * reads (64-bit integers, exponents below 100). A tool without `parameters` takes no
 * arguments ({}). What the schema converter refuses falls back instead of failing: a hermes
 * tool's arguments to any JSON object, a qwen3_coder parameter to free text (a tool whose
 * `parameters` is not a plain object schema: any parameters with free values).
 * tools: the OpenAI chat tools array ({"type": "function", "function": {"name", "parameters"}},
 * or the function objects themselves). SL_ERR_INVALID: no tools, a tool without a usable
 * name, or `only` not among them; SL_ERR_LIMIT, SL_ERR_NOMEM. */
sl_status sl_constraint_tool_calls(sl_tool_parser_kind kind, const json_t *tools, const char *only,
                                   int parallel, sl_buf *out, sl_err *e);

#endif

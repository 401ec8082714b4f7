/* delta: what the output parsers hand the router, one typed piece at a time.
 *
 * The reasoning parser (reasoning.h) and the tool-call parsers
 * (tool_parser.h) turn detokenized text into a list of deltas shaped like an
 * OpenAI chat-completion chunk's `delta`:
 *
 *   SL_DELTA_CONTENT     text           -> {"content": text}
 *   SL_DELTA_REASONING   text           -> {"reasoning_content": text}
 *   SL_DELTA_TOOL_START  index, id, name -> {"tool_calls": [{"index", "id",
 *                                           "type": "function", "function":
 *                                           {"name", "arguments": ""}}]}
 *   SL_DELTA_TOOL_ARGS   index, text    -> {"tool_calls": [{"index",
 *                                           "function": {"arguments": text}}]}
 *
 * A streaming response sends each delta as it comes; a non-streaming one
 * folds all of them into one message with sl_deltas_message(), so both
 * always agree.
 *
 *   sl_deltas d = {0};
 *   sl_tool_parser_feed(p, text, n, &d);                  // appends
 *   for (int i = 0; i < d.n; i++) send(sl_delta_json(&d.v[i]));
 *   sl_deltas_clear(&d);                            // reuse for the next chunk
 *   ...
 *   sl_deltas_free(&d);
 *
 * A list belongs to one thread at a time. Appends return 0, or -1 when
 * memory runs out (the list is then unchanged).
 */
#ifndef SL_DELTA_H
#define SL_DELTA_H

#include <jansson.h>
#include <stddef.h>

typedef enum sl_delta_kind {
    SL_DELTA_CONTENT,
    SL_DELTA_REASONING,
    SL_DELTA_TOOL_START,
    SL_DELTA_TOOL_ARGS,
} sl_delta_kind;

typedef struct sl_delta {
    sl_delta_kind kind;
    int index;  /* TOOL_*: the call's position in the message, from 0 */
    char *text; /* CONTENT, REASONING, TOOL_ARGS: owned, NUL-terminated */
    size_t len; /* of text */
    char *id;   /* TOOL_START: owned, "call_<24 hex>" */
    char *name; /* TOOL_START: owned function name */
} sl_delta;

typedef struct sl_deltas {
    sl_delta *v;
    int n, cap;
} sl_deltas;

/* Appends text of a text kind; joins it to the last delta when that has the
 * same kind and index, so a list never holds two adjacent pieces of one field.
 * Empty text appends nothing. */
int sl_deltas_text(sl_deltas *d, sl_delta_kind kind, int index, const char *text, size_t len);
/* Appends the first delta of tool call `index` (copies id and name). */
int sl_deltas_tool_start(sl_deltas *d, int index, const char *id, const char *name);
/* Appends every delta of src (src is unchanged). */
int sl_deltas_extend(sl_deltas *d, const sl_deltas *src);
/* Frees the deltas, keeps the array for reuse. */
void sl_deltas_clear(sl_deltas *d);
void sl_deltas_free(sl_deltas *d);

/* The OpenAI chunk `delta` object for one delta (new reference; NULL when
 * memory runs out). */
json_t *sl_delta_json(const sl_delta *d);

/* Folds a whole response's deltas into the final assistant message:
 * {"role": "assistant", "content": text or null, "reasoning_content"
 * (only when non-empty), "tool_calls": [{id, type, function: {name,
 * arguments}}] (only when there are calls)}. New reference or NULL (memory). */
json_t *sl_deltas_message(const sl_deltas *d);

#endif

/* reasoning: splits a thinking model's output into reasoning and content.
 *
 * Qwen3 thinks inside <think>...</think> before it answers. Where the think
 * block opens depends on the chat template:
 *
 *   SL_REASONING_MODE_DETECT  the model writes "<think>" itself (Qwen3 with
 *                          thinking on): reasoning only if the output starts
 *                          with it (after whitespace), otherwise all content;
 *   SL_REASONING_MODE_OPEN    the prompt already ended inside "<think>" (templates
 *                          that open it), so the output starts in reasoning and
 *                          only "</think>" appears;
 *   SL_REASONING_MODE_OFF     thinking disabled (the prompt closed an empty think
 *                          block): everything is content.
 * sl_reasoning_mode_for_prompt() picks the mode from the rendered prompt.
 *
 * Whitespace right after <think>, right before </think> and right after
 * </think> is dropped. An unclosed think block is all reasoning (the model ran
 * out of tokens while thinking). Text is UTF-8 and tags are ASCII, so a split
 * inside a character is harmless; a tag split across feeds ("</thi" + "nk>")
 * is held back until it is resolved, never emitted half as text.
 *
 *   sl_reasoning *r = sl_reasoning_new(sl_reasoning_mode_for_prompt(prompt, n));
 *   while (chunk) sl_reasoning_feed(r, chunk, len, &deltas);  // CONTENT, REASONING
 *   sl_reasoning_finish(r, &deltas);
 *   sl_reasoning_free(r);
 *
 * One parser per response; not thread-safe; no blocking.
 */
#ifndef SL_REASONING_H
#define SL_REASONING_H

#include <stddef.h>

#include "delta.h"
#include "sl_err.h"

typedef enum sl_reasoning_mode {
    SL_REASONING_MODE_OFF,
    SL_REASONING_MODE_DETECT,
    SL_REASONING_MODE_OPEN,
} sl_reasoning_mode;

typedef struct sl_reasoning sl_reasoning;

/* OFF when the prompt ends with a closed empty think block
 * ("<think>\n\n</think>\n\n"), OPEN when its last "<think>" after the last
 * "<|im_start|>" is not closed, DETECT otherwise. */
sl_reasoning_mode sl_reasoning_mode_for_prompt(const char *prompt, size_t len);

/* NULL when memory runs out. */
sl_reasoning *sl_reasoning_new(sl_reasoning_mode mode);
/* Appends the deltas that text resolves (maybe none). SL_ERR_NOMEM only. */
sl_status sl_reasoning_feed(sl_reasoning *r, const char *text, size_t len, sl_deltas *out,
                            sl_err *e);
/* End of output: flushes what was held back. Feeding after finish is a bug. */
sl_status sl_reasoning_finish(sl_reasoning *r, sl_deltas *out, sl_err *e);
void sl_reasoning_free(sl_reasoning *r);

#endif

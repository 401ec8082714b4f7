#include "output_parser.h"

#include <stdlib.h>

struct sl_output_parser {
    sl_reasoning *reason; /* NULL: all text is content */
    sl_tool_parser *tools;   /* NULL: content passes through */
    sl_deltas scratch; /* the reasoning parser's output before routing */
};

sl_tool_parser_kind sl_output_parser_tool_kind_for(sl_chat_template_family f)
{
    return f == SL_CHAT_TEMPLATE_FAMILY_QWEN3_CODER ? SL_TOOL_PARSER_KIND_QWEN3_CODER
                                                    : SL_TOOL_PARSER_KIND_HERMES;
}

sl_output_parser *sl_output_parser_new(const sl_output_parser_config *c)
{
    sl_output_parser *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    int ok = 1;
    if (c->reasoning != SL_REASONING_MODE_OFF)
        ok = (p->reason = sl_reasoning_new(c->reasoning)) != NULL;
    if (ok && c->tool_calls)
        ok = (p->tools = sl_tool_parser_new(c->tool_kind, c->tools, c->seed)) != NULL;
    if (!ok) {
        sl_output_parser_free(p);
        return NULL;
    }
    return p;
}

void sl_output_parser_free(sl_output_parser *p)
{
    if (!p) return;
    sl_reasoning_free(p->reason);
    sl_tool_parser_free(p->tools);
    sl_deltas_free(&p->scratch);
    free(p);
}

/* Content goes through the tool-call parser, everything else straight out. */
static sl_status route(sl_output_parser *p, const sl_deltas *in, sl_deltas *out, sl_err *e)
{
    for (int i = 0; i < in->n; i++) {
        const sl_delta *d = &in->v[i];
        if (d->kind == SL_DELTA_CONTENT && p->tools) {
            sl_status s = sl_tool_parser_feed(p->tools, d->text, d->len, out, e);
            if (s) return s;
        } else if (sl_deltas_text(out, d->kind, d->index, d->text, d->len)) {
            return sl_err_set(e, SL_ERR_NOMEM, "output parser: out of memory");
        }
    }
    return SL_OK;
}

static sl_status step(sl_output_parser *p, const char *text, size_t len, int at_end, sl_deltas *out,
                      sl_err *e)
{
    sl_deltas_clear(&p->scratch);
    sl_status s = SL_OK;
    if (p->reason) {
        s = at_end ? sl_reasoning_finish(p->reason, &p->scratch, e)
                   : sl_reasoning_feed(p->reason, text, len, &p->scratch, e);
    } else if (!at_end && sl_deltas_text(&p->scratch, SL_DELTA_CONTENT, 0, text, len)) {
        s = sl_err_set(e, SL_ERR_NOMEM, "output parser: out of memory");
    }
    if (!s) s = route(p, &p->scratch, out, e);
    if (!s && at_end && p->tools) s = sl_tool_parser_finish(p->tools, out, e);
    return s;
}

sl_status sl_output_parser_feed(sl_output_parser *p, const char *text, size_t len, sl_deltas *out,
                                sl_err *e)
{
    return step(p, text, len, 0, out, e);
}

sl_status sl_output_parser_finish(sl_output_parser *p, sl_deltas *out, sl_err *e)
{
    return step(p, NULL, 0, 1, out, e);
}

sl_status sl_output_parser_parse_message(const sl_output_parser_config *c, const char *text,
                                         size_t len, json_t **message, sl_err *e)
{
    sl_output_parser *p = sl_output_parser_new(c);
    sl_deltas d = {0};
    sl_status s = p ? sl_output_parser_feed(p, text, len, &d, e)
                    : sl_err_set(e, SL_ERR_NOMEM, "output parser: out of memory");
    if (!s) s = sl_output_parser_finish(p, &d, e);
    if (!s && !(*message = sl_deltas_message(&d)))
        s = sl_err_set(e, SL_ERR_NOMEM, "output parser: out of memory");
    sl_deltas_free(&d);
    sl_output_parser_free(p);
    return s;
}

/* Constrained decoding on the router's side: the fields that ask for it
 * (response_format, SGLang's regex / ebnf / json_schema, text.format,
 * tool_choice required or named) become one GBNF grammar per request
 * (router/text/constraint.h), checked here by compiling it
 * (common/grammar/grammar.h) so a grammar the worker would refuse is the
 * client's 400, and sent with every choice (job_run.c). The worker masks
 * each draw with it (worker/engine/sampler.h). */
#include <stdlib.h>
#include <string.h>

#include "constraint.h"
#include "grammar.h"
#include "job.h"

void sl_job_cons_free(sl_job_cons *c)
{
    json_decref(c->schema);
    free(c->text);
    free(c->tool);
    *c = (sl_job_cons){0};
}

int sl_job_constrain(sl_job *j, sl_cons_kind kind, const char *field, const json_t *value,
                     sl_api_err *err)
{
    sl_job_cons *c = &j->p.cons;
    if (c->kind)
        return sl_api_fail(err, SL_API_STATUS_INVALID,
                           "%s and %s both constrain the output: a request takes one of them",
                           c->field, field);
    switch (kind) {
    case SL_CONS_KIND_JSON_SCHEMA:
        if (!json_is_object(value))
            return sl_api_fail(err, SL_API_STATUS_INVALID, "%s: expected a JSON Schema object", field);
        c->schema = json_deep_copy(value);
        break;
    case SL_CONS_KIND_REGEX:
    case SL_CONS_KIND_EBNF:
        if (!json_is_string(value) || !json_string_length(value))
            return sl_api_fail(err, SL_API_STATUS_INVALID, "%s: expected a non-empty string", field);
        c->text = strdup(json_string_value(value));
        break;
    case SL_CONS_KIND_TOOLS:
        if (value && !(c->tool = strdup(json_string_value(value))))
            return sl_api_fail(err, SL_API_STATUS_SERVER, "out of memory");
        break;
    default: break;
    }
    if ((kind == SL_CONS_KIND_JSON_SCHEMA && !c->schema) ||
        ((kind == SL_CONS_KIND_REGEX || kind == SL_CONS_KIND_EBNF) && !c->text))
        return sl_api_fail(err, SL_API_STATUS_SERVER, "out of memory");
    c->kind = kind;
    c->field = field;
    return 0;
}

int sl_job_constrain_tool(sl_job *j, const json_t *tools, const json_t *name, sl_api_err *err)
{
    size_t i;
    const json_t *t;
    json_array_foreach(tools, i, t)
    {
        const char *n = json_string_value(json_object_get(json_object_get(t, "function"), "name"));
        if (n && !strcmp(n, json_string_value(name)))
            return sl_job_constrain(j, SL_CONS_KIND_TOOLS, "tool_choice", name, err);
    }
    return sl_api_fail(err, SL_API_STATUS_INVALID, "tool_choice: function `%s` is not among the tools",
                       json_string_value(name));
}

int sl_job_constraint_build(sl_job *j, const sl_router_config *cfg, sl_api_err *err)
{
    const sl_job_cons *c = &j->p.cons;
    sl_err e = {0};
    sl_status st = SL_OK;
    if (c->kind && cfg->no_constraints)
        return sl_api_fail(err, SL_API_STATUS_INVALID,
                           "%s: constrained decoding is off on this server (--grammar-backend none)",
                           c->field);
    switch (c->kind) {
    case SL_CONS_KIND_NONE: return 0;
    case SL_CONS_KIND_JSON_OBJECT:
        if ((st = sl_constraint_json_object(&j->grammar))) sl_err_set(&e, st, "out of memory");
        break;
    case SL_CONS_KIND_JSON_SCHEMA: st = sl_constraint_json_schema(c->schema, &j->grammar, &e); break;
    case SL_CONS_KIND_REGEX: st = sl_constraint_regex(c->text, strlen(c->text), &j->grammar, &e); break;
    case SL_CONS_KIND_EBNF:
        if (sl_buf_puts(&j->grammar, c->text)) st = sl_err_set(&e, SL_ERR_NOMEM, "out of memory");
        break;
    case SL_CONS_KIND_TOOLS:
        st = cfg->text->tool_grammar
                 ? cfg->text->tool_grammar(cfg->text_impl, json_object_get(j->body, "tools"), c->tool,
                                           j->p.parallel_tool_calls, &j->grammar, &e)
                 : sl_err_set(&e, SL_ERR_INVALID, "this server's text layer cannot enforce tool calls");
        break;
    }
    if (st)
        return sl_api_fail(err, st == SL_ERR_NOMEM ? SL_API_STATUS_SERVER : SL_API_STATUS_INVALID,
                           "%s: %s", c->field, e.msg);
    sl_gram *g = NULL;
    if (sl_gram_compile(j->grammar.data, j->grammar.len, &g, &e))
        return sl_api_fail(err, e.code == SL_ERR_NOMEM ? SL_API_STATUS_SERVER : SL_API_STATUS_INVALID,
                           "%s: %s", c->field, e.msg);
    sl_gram_free(g);
    return 0;
}

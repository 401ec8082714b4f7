#include "delta.h"

#include <stdlib.h>
#include <string.h>

#include "pyjson.h"
#include "sl_buf.h"

static sl_delta *grow(sl_deltas *d)
{
    if (d->n == d->cap) {
        int cap = d->cap ? d->cap * 2 : 8;
        sl_delta *v = realloc(d->v, (size_t)cap * sizeof *v);
        if (!v) return NULL;
        d->v = v;
        d->cap = cap;
    }
    sl_delta *x = &d->v[d->n];
    memset(x, 0, sizeof *x);
    return x;
}

int sl_deltas_text(sl_deltas *d, sl_delta_kind kind, int index, const char *text, size_t len)
{
    if (!len) return 0;
    sl_delta *last = d->n ? &d->v[d->n - 1] : NULL;
    if (last && last->kind == kind && last->index == index && last->text) {
        char *t = realloc(last->text, last->len + len + 1);
        if (!t) return -1;
        memcpy(t + last->len, text, len);
        last->len += len;
        t[last->len] = 0;
        last->text = t;
        return 0;
    }
    sl_delta *x = grow(d);
    char *t = x ? malloc(len + 1) : NULL;
    if (!t) return -1;
    memcpy(t, text, len);
    t[len] = 0;
    *x = (sl_delta){.kind = kind, .index = index, .text = t, .len = len};
    d->n++;
    return 0;
}

int sl_deltas_tool_start(sl_deltas *d, int index, const char *id, const char *name)
{
    sl_delta *x = grow(d);
    if (!x) return -1;
    char *i = strdup(id), *nm = strdup(name);
    if (!i || !nm) {
        free(i);
        free(nm);
        return -1;
    }
    *x = (sl_delta){.kind = SL_DELTA_TOOL_START, .index = index, .id = i, .name = nm};
    d->n++;
    return 0;
}

int sl_deltas_extend(sl_deltas *d, const sl_deltas *src)
{
    for (int i = 0; i < src->n; i++) {
        const sl_delta *s = &src->v[i];
        int rc = s->kind == SL_DELTA_TOOL_START ? sl_deltas_tool_start(d, s->index, s->id, s->name)
                                                : sl_deltas_text(d, s->kind, s->index, s->text, s->len);
        if (rc) return rc;
    }
    return 0;
}

void sl_deltas_clear(sl_deltas *d)
{
    for (int i = 0; i < d->n; i++) {
        free(d->v[i].text);
        free(d->v[i].id);
        free(d->v[i].name);
    }
    d->n = 0;
}

void sl_deltas_free(sl_deltas *d)
{
    sl_deltas_clear(d);
    free(d->v);
    *d = (sl_deltas){0};
}

json_t *sl_delta_json(const sl_delta *d)
{
    switch (d->kind) {
    case SL_DELTA_CONTENT: return json_pack("{s:o}", "content", sl_pyjson_string(d->text, d->len));
    case SL_DELTA_REASONING:
        return json_pack("{s:o}", "reasoning_content", sl_pyjson_string(d->text, d->len));
    case SL_DELTA_TOOL_START:
        return json_pack("{s:[{s:i,s:s,s:s,s:{s:o,s:s}}]}", "tool_calls", "index", d->index, "id", d->id,
                         "type", "function", "function", "name", sl_pyjson_string(d->name, strlen(d->name)),
                         "arguments", "");
    case SL_DELTA_TOOL_ARGS:
        return json_pack("{s:[{s:i,s:{s:o}}]}", "tool_calls", "index", d->index, "function", "arguments",
                         sl_pyjson_string(d->text, d->len));
    }
    return NULL;
}

json_t *sl_deltas_message(const sl_deltas *d)
{
    /* text is joined as bytes first: a character split between two deltas
     * is whole again before it is checked as UTF-8 */
    sl_buf content = {0}, reasoning = {0};
    int ncalls = 0, oom = 0;
    for (int i = 0; i < d->n; i++) ncalls += d->v[i].kind == SL_DELTA_TOOL_START;
    sl_buf *args = calloc((size_t)ncalls + 1, sizeof *args);
    const char **names = calloc((size_t)ncalls + 1, sizeof *names), **ids = calloc((size_t)ncalls + 1, sizeof *ids);
    oom = !args || !names || !ids;
    for (int i = 0, call = -1; i < d->n && !oom; i++) {
        const sl_delta *x = &d->v[i];
        if (x->kind == SL_DELTA_CONTENT) oom = sl_buf_append(&content, x->text, x->len);
        else if (x->kind == SL_DELTA_REASONING) oom = sl_buf_append(&reasoning, x->text, x->len);
        else if (x->kind == SL_DELTA_TOOL_START) call++, names[call] = x->name, ids[call] = x->id;
        else if (x->index >= 0 && x->index <= call) oom = sl_buf_append(&args[x->index], x->text, x->len);
    }
    json_t *msg = oom ? NULL : json_pack("{s:s,s:o}", "role", "assistant", "content",
                                         content.len ? sl_pyjson_string(content.data, content.len) : json_null());
    if (msg && reasoning.len &&
        json_object_set_new(msg, "reasoning_content", sl_pyjson_string(reasoning.data, reasoning.len)))
        oom = 1;
    json_t *calls = msg && ncalls ? json_array() : NULL;
    for (int i = 0; calls && i < ncalls && !oom; i++)
        oom = json_array_append_new(calls, json_pack("{s:s,s:s,s:{s:o,s:o}}", "id", ids[i], "type", "function",
                                                     "function", "name", sl_pyjson_string(names[i], strlen(names[i])),
                                                     "arguments", sl_pyjson_string(args[i].data ? args[i].data : "",
                                                                                   args[i].len)));
    if (calls && json_object_set_new(msg, "tool_calls", calls)) oom = 1;
    if (msg && ncalls && !calls) oom = 1;
    for (int i = 0; args && i < ncalls; i++) sl_buf_free(&args[i]);
    free(args);
    free(names);
    free(ids);
    sl_buf_free(&content);
    sl_buf_free(&reasoning);
    if (oom) {
        json_decref(msg);
        return NULL;
    }
    return msg;
}

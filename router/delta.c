#include "delta.h"

#include <stdlib.h>
#include <string.h>

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
    case SL_DELTA_CONTENT: return json_pack("{s:s%}", "content", d->text, d->len);
    case SL_DELTA_REASONING: return json_pack("{s:s%}", "reasoning_content", d->text, d->len);
    case SL_DELTA_TOOL_START:
        return json_pack("{s:[{s:i,s:s,s:s,s:{s:s,s:s}}]}", "tool_calls", "index", d->index, "id", d->id,
                         "type", "function", "function", "name", d->name, "arguments", "");
    case SL_DELTA_TOOL_ARGS:
        return json_pack("{s:[{s:i,s:{s:s%}}]}", "tool_calls", "index", d->index, "function",
                         "arguments", d->text, d->len);
    }
    return NULL;
}

json_t *sl_deltas_message(const sl_deltas *d)
{
    sl_buf content = {0}, reasoning = {0};
    json_t *calls = json_array();
    int oom = !calls;
    for (int i = 0; i < d->n && !oom; i++) {
        const sl_delta *x = &d->v[i];
        if (x->kind == SL_DELTA_CONTENT) oom = sl_buf_append(&content, x->text, x->len);
        else if (x->kind == SL_DELTA_REASONING) oom = sl_buf_append(&reasoning, x->text, x->len);
        else if (x->kind == SL_DELTA_TOOL_START)
            oom = json_array_append_new(calls, json_pack("{s:s,s:s,s:{s:s,s:s}}", "id", x->id, "type",
                                                         "function", "function", "name", x->name,
                                                         "arguments", ""));
        else { /* arguments belong to the call with that index, started earlier */
            json_t *fn = json_object_get(json_array_get(calls, (size_t)x->index), "function");
            const char *have = json_string_value(json_object_get(fn, "arguments"));
            sl_buf args = {0};
            oom = !have || sl_buf_puts(&args, have) || sl_buf_append(&args, x->text, x->len) ||
                  json_object_set_new(fn, "arguments", json_stringn(args.data, args.len));
            sl_buf_free(&args);
        }
    }
    json_t *msg = oom ? NULL : json_pack("{s:s,s:o}", "role", "assistant", "content",
                                         content.len ? json_stringn(content.data, content.len) : json_null());
    if (msg && reasoning.len &&
        json_object_set_new(msg, "reasoning_content", json_stringn(reasoning.data, reasoning.len)))
        oom = 1;
    if (msg && json_array_size(calls) && json_object_set(msg, "tool_calls", calls)) oom = 1;
    json_decref(calls);
    sl_buf_free(&content);
    sl_buf_free(&reasoning);
    if (oom) {
        json_decref(msg);
        return NULL;
    }
    return msg;
}

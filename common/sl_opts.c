#include "sl_opts.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static int positional(const sl_opt *o) { return strncmp(o->name, "--", 2) != 0; }

static const sl_opt *find(const sl_opt *opts, const char *name, size_t n)
{
    for (const sl_opt *o = opts; o->name; o++) {
        if (positional(o)) continue;
        if (strlen(o->name) == n && !strncmp(o->name, name, n)) return o;
        if (o->alias && strlen(o->alias) == n && !strncmp(o->alias, name, n)) return o;
    }
    return NULL;
}

static sl_status set_value(const sl_opt *o, const char *v, sl_err *e)
{
    char *end = NULL;
    errno = 0;
    switch (o->kind) {
    case SL_OPT_STR: *(const char **)o->dst = v; return SL_OK;
    case SL_OPT_STRS: {
        sl_strs *s = o->dst;
        if (s->n >= (int)(sizeof s->v / sizeof s->v[0]))
            return sl_err_set(e, SL_ERR_LIMIT, "%s given too many times", o->name);
        s->v[s->n++] = v;
        return SL_OK;
    }
    case SL_OPT_INT: {
        long x = strtol(v, &end, 10);
        if (errno || !*v || *end || x < -2147483647L || x > 2147483647L)
            return sl_err_set(e, SL_ERR_INVALID, "%s expects an integer, got '%s'", o->name, v);
        *(int *)o->dst = (int)x;
        return SL_OK;
    }
    case SL_OPT_I64: {
        long long x = strtoll(v, &end, 10);
        if (errno || !*v || *end)
            return sl_err_set(e, SL_ERR_INVALID, "%s expects an integer, got '%s'", o->name, v);
        *(long long *)o->dst = x;
        return SL_OK;
    }
    case SL_OPT_FLOAT: {
        double x = strtod(v, &end);
        if (errno || !*v || *end)
            return sl_err_set(e, SL_ERR_INVALID, "%s expects a number, got '%s'", o->name, v);
        *(double *)o->dst = x;
        return SL_OK;
    }
    case SL_OPT_FLAG: break;
    }
    return sl_err_set(e, SL_ERR_INVALID, "%s takes no value", o->name);
}

sl_status sl_opts_parse(int argc, char **argv, const sl_opt *opts, sl_err *e)
{
    const sl_opt *pos = opts; /* the next positional entry to fill */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0) {
            while (pos->name && !positional(pos)) pos++;
            if (!pos->name) return sl_err_set(e, SL_ERR_INVALID, "unexpected argument '%s'", a);
            sl_status s = set_value(pos++, a, e);
            if (s) return s;
            continue;
        }
        const char *eq = strchr(a, '=');
        size_t n = eq ? (size_t)(eq - a) : strlen(a);
        const sl_opt *o = find(opts, a, n);
        if (!o) return sl_err_set(e, SL_ERR_INVALID, "unknown option '%.*s'", (int)n, a);
        if (o->kind == SL_OPT_FLAG) {
            if (eq) return sl_err_set(e, SL_ERR_INVALID, "%s takes no value", o->name);
            *(int *)o->dst = 1;
            continue;
        }
        const char *v = eq ? eq + 1 : NULL;
        if (!v) {
            if (i + 1 >= argc) return sl_err_set(e, SL_ERR_INVALID, "%s needs a value", o->name);
            v = argv[++i];
        }
        sl_status s = set_value(o, v, e);
        if (s) return s;
    }
    return SL_OK;
}

void sl_opts_usage(FILE *f, const char *cmd, const char *summary, const sl_opt *opts)
{
    fprintf(f, "usage: sluice %s [options]", cmd);
    for (const sl_opt *o = opts; o->name; o++)
        if (positional(o)) fprintf(f, " %s", o->name);
    fprintf(f, "\n%s\n\noptions:\n", summary);
    for (const sl_opt *o = opts; o->name; o++) {
        char names[96];
        snprintf(names, sizeof names, "%s%s%s%s", o->name, o->alias ? ", " : "",
                 o->alias ? o->alias : "", o->kind == SL_OPT_FLAG || positional(o) ? "" : " V");
        fprintf(f, "  %-36s %s\n", names, o->help ? o->help : "");
    }
}

int sl_opts_usage_error(const char *cmd, const char *msg)
{
    fprintf(stderr, "sluice %s: %s (see sluice %s --help)\n", cmd, msg, cmd);
    return 2;
}

int sl_opts_cli(int argc, char **argv, const char *cmd, const char *summary, const sl_opt *opts)
{
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            sl_opts_usage(stdout, cmd, summary, opts);
            return 0;
        }
    sl_err e = {0};
    if (sl_opts_parse(argc, argv, opts, &e)) return sl_opts_usage_error(cmd, e.msg);
    return -1;
}

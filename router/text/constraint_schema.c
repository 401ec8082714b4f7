/* constraint_schema.c: JSON Schema -> GBNF (sl_constraint_json_schema, sl_constraint_json_object
 * and the sl_csch_* helpers the tool-call grammars use). constraint.h lists what is supported
 * and the output style; this file keeps to one rule: every keyword either constrains the
 * grammar exactly or is refused with its JSON pointer.
 *
 * A schema becomes one expression per value, followed by `space`. Without `type` a schema
 * allows every type, each constrained by the keywords of that type, so the expression is an
 * alternation over the types its keywords leave. $ref targets become rules (recursion works
 * through them); a $ref cycle that reads no input in between (a rule that would refer to
 * itself first) is refused: the `guard` counts the objects and arrays entered, and a target
 * still being converted at the same count is such a cycle. */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "constraint.h"
#include "constraint_impl.h"
#include "pyjson.h"

#define SCH_MAX_DEPTH 64    /* nested schemas; deeper is SL_ERR_LIMIT */
#define ONEOF_MAX_DEPTH 8   /* how far the oneOf overlap check looks into properties */
#define ONEOF_BUDGET 100000 /* schema pairs one oneOf may compare (then: "may overlap") */

typedef struct ref_entry {
    const json_t *target;
    size_t rule;
    int guard; /* the guard when its conversion began */
    int done;
} ref_entry;

struct sl_csch {
    sl_cg *g;
    const json_t *root;
    sl_cspell sp;
    int jansson;
    int depth, guard;
    long budget; /* disjoint() calls left for the oneOf being checked */
    ref_entry *refs;
    size_t n_refs, cap_refs;
    sl_buf ptr; /* the JSON pointer of the schema being converted, for messages */
    sl_err *e;
};

static const char *const annotations[] = {
    "title",      "description", "default",   "examples", "$schema", "$id",         "$comment",
    "deprecated", "readOnly",    "writeOnly", "strict",   "$defs",   "definitions", NULL};

/* Keywords the converter handles; anything else is refused by name. */
static const char *const known[] = {"type",
                                    "enum",
                                    "const",
                                    "anyOf",
                                    "oneOf",
                                    "allOf",
                                    "$ref",
                                    "properties",
                                    "required",
                                    "additionalProperties",
                                    "items",
                                    "prefixItems",
                                    "minItems",
                                    "maxItems",
                                    "minLength",
                                    "maxLength",
                                    "pattern",
                                    "format",
                                    "minimum",
                                    "maximum",
                                    "exclusiveMinimum",
                                    "exclusiveMaximum",
                                    NULL};

static int in_list(const char *const *l, const char *k)
{
    for (; *l; l++)
        if (!strcmp(*l, k)) return 1;
    return 0;
}

int sl_csch_annotation(const char *key)
{
    return in_list(annotations, key);
}

/* ---- pointers and errors ---- */

static const char *where(const sl_csch *s)
{
    return s->ptr.data ? s->ptr.data : "#";
}

/* Appends /seg (escaped as a JSON pointer) to the current pointer; returns the old length. */
static size_t ptr_push(sl_csch *s, const char *seg)
{
    size_t old = s->ptr.len;
    sl_cg_put(s->g, &s->ptr, "/");
    for (; *seg; seg++) {
        if (*seg == '~')
            sl_cg_put(s->g, &s->ptr, "~0");
        else if (*seg == '/')
            sl_cg_put(s->g, &s->ptr, "~1");
        else
            sl_cg_putn(s->g, &s->ptr, seg, 1);
    }
    return old;
}

static void ptr_pop(sl_csch *s, size_t old)
{
    if (!s->ptr.data) return;
    s->ptr.len = old;
    s->ptr.data[old] = 0;
}

/* SL_ERR_INVALID with the message and " at <pointer>". */
__attribute__((format(printf, 2, 3))) static sl_status bad(sl_csch *s, const char *fmt, ...)
{
    char msg[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return sl_err_set(s->e, SL_ERR_INVALID, "%s at %s", msg, where(s));
}

static sl_status cg_status(sl_csch *s)
{
    return sl_cg_status(s->g, s->e);
}

/* ---- construction ---- */

sl_csch *sl_csch_new(sl_cg *g, const json_t *root, const sl_cspell *sp, int jansson, const char *at)
{
    sl_csch *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    *s = (sl_csch){.g = g, .root = root, .sp = *sp, .jansson = jansson};
    if (sl_buf_puts(&s->ptr, at)) {
        free(s);
        return NULL;
    }
    return s;
}

void sl_csch_free(sl_csch *s)
{
    if (!s) return;
    free(s->refs);
    sl_buf_free(&s->ptr);
    free(s);
}

/* ---- shared rules ---- */

static const char *space(sl_csch *s)
{
    return sl_cg_space(s->g);
}

/* One string character as spelled (length-bounded strings). */
static const char *char_rule(sl_csch *s)
{
    sl_cset all = {0};
    sl_cset_add(&all, 0, SL_CP_MAX);
    sl_buf b = {0};
    const char *r = "";
    if (sl_cg_chars(s->g, &b, &s->sp, &all) == 0) r = sl_cg_rule(s->g, "char", b.data);
    if (all.oom) sl_cg_oom(s->g);
    sl_cset_free(&all);
    sl_buf_free(&b);
    return r;
}

/* Any string, then space. */
static const char *string_rule(sl_csch *s)
{
    sl_buf b = {0};
    sl_cg_printf(s->g, &b, "\"\\\"\" %s \"\\\"\" ", sl_cg_free_text(s->g, &s->sp, NULL, 0, 0));
    sl_cg_put(s->g, &b, space(s));
    const char *r = sl_cg_rule(s->g, "string", b.data ? b.data : "");
    sl_buf_free(&b);
    return r;
}

/* ---- integer numerals ---- */

static int n_digits(uint64_t v)
{
    int n = 1;
    while (v >= 10)
        v /= 10, n++;
    return n;
}

static uint64_t pow10u(int k)
{
    uint64_t p = 1;
    while (k-- > 0)
        p *= 10;
    return p;
}

/* "[a-b]" or "\"a\"" for one digit position. */
static void digit_class(sl_cg *g, sl_buf *b, char lo, char hi)
{
    if (lo == hi)
        sl_cg_printf(g, b, "\"%c\"", lo);
    else
        sl_cg_printf(g, b, "[%c-%c]", lo, hi);
}

/* m digits, any. */
static void any_digits(sl_cg *g, sl_buf *b, size_t m)
{
    if (m == 1)
        sl_cg_put(g, b, "[0-9]");
    else if (m > 1)
        sl_cg_printf(g, b, "[0-9]{%zu}", m);
}

/* The m-digit strings (leading zeros allowed) >= s (ge) or <= s (!ge). */
static void digits_bound(sl_cg *g, sl_buf *b, const char *s, size_t m, int ge)
{
    char edge = ge ? '0' : '9'; /* s all edge: every string qualifies */
    size_t k = 0;
    while (k < m && s[k] == edge)
        k++;
    if (k == m) return any_digits(g, b, m);
    if (m == 1) return ge ? digit_class(g, b, s[0], '9') : digit_class(g, b, '0', s[0]);
    int other = ge ? s[0] < '9' : s[0] > '0';
    if (other) sl_cg_put(g, b, "( ");
    sl_cg_printf(g, b, "\"%c\" ", s[0]);
    digits_bound(g, b, s + 1, m - 1, ge);
    if (other) {
        sl_cg_put(g, b, " | ");
        if (ge)
            digit_class(g, b, (char)(s[0] + 1), '9');
        else
            digit_class(g, b, '0', (char)(s[0] - 1));
        sl_cg_put(g, b, " ");
        any_digits(g, b, m - 1);
        sl_cg_put(g, b, " )");
    }
}

/* The numerals x..y of equal length n (x <= y). */
static void digits_between(sl_cg *g, sl_buf *b, const char *x, const char *y, size_t n)
{
    size_t k = 0;
    while (k < n && x[k] == y[k])
        k++;
    if (k) sl_cg_printf(g, b, "\"%.*s\"%s", (int)k, x, k < n ? " " : "");
    if (k == n) return;
    size_t m = n - k - 1, z = 0, nine = 0;
    while (z < m && x[k + 1 + z] == '0')
        z++;
    while (nine < m && y[k + 1 + nine] == '9')
        nine++;
    int x_low = z == m, y_high = nine == m; /* the edge digits join the middle run */
    char lo = (char)(x[k] + !x_low), hi = (char)(y[k] - !y_high);
    int alts = !x_low + !y_high + (lo <= hi);
    if (alts > 1) sl_cg_put(g, b, "( ");
    const char *sep = "";
    if (!x_low) {
        sl_cg_printf(g, b, "\"%c\" ", x[k]);
        digits_bound(g, b, x + k + 1, m, 1);
        sep = " | ";
    }
    if (lo <= hi) {
        sl_cg_put(g, b, sep);
        digit_class(g, b, lo, hi);
        if (m) sl_cg_put(g, b, " ");
        any_digits(g, b, m);
        sep = " | ";
    }
    if (!y_high) {
        sl_cg_put(g, b, sep);
        sl_cg_printf(g, b, "\"%c\" ", y[k]);
        digits_bound(g, b, y + k + 1, m, 0);
    }
    if (alts > 1) sl_cg_put(g, b, " )");
}

/* The numerals (no sign, no leading zero) of the integers lo..hi (hi_inf: unbounded). */
static void uint_range(sl_cg *g, sl_buf *b, uint64_t lo, uint64_t hi, int hi_inf)
{
    int la = n_digits(lo), lb = hi_inf ? la : n_digits(hi);
    int alts = lb - la + 1 + hi_inf;
    if (alts > 1) sl_cg_put(g, b, "( ");
    for (int len = la; len <= lb; len++) {
        uint64_t a = len == la ? lo : pow10u(len - 1);
        uint64_t z = !hi_inf && len == lb ? hi : pow10u(len) - 1;
        char xa[24], xz[24];
        snprintf(xa, sizeof xa, "%llu", (unsigned long long)a);
        snprintf(xz, sizeof xz, "%llu", (unsigned long long)z);
        if (len > la) sl_cg_put(g, b, " | ");
        digits_between(g, b, xa, xz, (size_t)len);
    }
    if (hi_inf) sl_cg_printf(g, b, " | [1-9] [0-9]{%d,}", la);
    if (alts > 1) sl_cg_put(g, b, " )");
}

/* The integer part of any number: every numeral, or for jansson those of 64-bit integers
 * (a fraction or exponent below 100 then keeps a real below the double range). */
static const char *int_digits(sl_csch *s)
{
    if (!s->jansson) return "( \"0\" | [1-9] [0-9]* )";
    sl_buf b = {0};
    uint_range(s->g, &b, 0, INT64_MAX, 0);
    const char *r = sl_cg_rule(s->g, "int64-digits", b.data ? b.data : "");
    sl_buf_free(&b);
    return r;
}

/* The fraction and exponent of an unbounded number (exponent below 100 for jansson). */
static const char *frac_exp(const sl_csch *s)
{
    return s->jansson ? "( \".\" [0-9]+ )? ( [eE] [-+]? [0-9]{1,2} )?"
                      : "( \".\" [0-9]+ )? ( [eE] [-+]? [0-9]+ )?";
}

static const char *integer_rule(sl_csch *s)
{
    sl_buf b = {0};
    sl_cg_printf(s->g, &b, "\"-\"? %s ", int_digits(s));
    sl_cg_put(s->g, &b, space(s));
    const char *r = sl_cg_rule(s->g, "integer", b.data ? b.data : "");
    sl_buf_free(&b);
    return r;
}

static const char *number_rule(sl_csch *s)
{
    sl_buf b = {0};
    sl_cg_printf(s->g, &b, "\"-\"? %s %s ", int_digits(s), frac_exp(s));
    sl_cg_put(s->g, &b, space(s));
    const char *r = sl_cg_rule(s->g, "number", b.data ? b.data : "");
    sl_buf_free(&b);
    return r;
}

/* ---- any JSON value ---- */

/* value, object and array: any JSON (recursive, so remembered rather than found by body). */
static void any_rules(sl_csch *s)
{
    if (sl_cg_memo(s->g, "any-value")) return;
    size_t v = sl_cg_reserve(s->g, "value");
    const char *vn = sl_cg_name(s->g, v), *sp = space(s), *str = string_rule(s);
    sl_buf b = {0};
    sl_cg_printf(s->g, &b, "\"{\" %s ( %s \":\" %s %s ( \",\" %s %s \":\" %s %s )* )? \"}\" %s", sp,
                 str, sp, vn, sp, str, sp, vn, sp);
    const char *obj = sl_cg_rule(s->g, "object", b.data ? b.data : "");
    sl_buf_clear(&b);
    sl_cg_printf(s->g, &b, "\"[\" %s ( %s ( \",\" %s %s )* )? \"]\" %s", sp, vn, sp, vn, sp);
    const char *arr = sl_cg_rule(s->g, "array", b.data ? b.data : "");
    sl_buf_clear(&b);
    sl_cg_printf(s->g, &b, "%s | %s | %s | %s | ( \"true\" | \"false\" | \"null\" ) %s", obj, arr,
                 str, number_rule(s), sp);
    sl_cg_define(s->g, v, b.data ? b.data : "");
    sl_buf_free(&b);
    sl_cg_memo_put(s->g, "any-value", vn);
    sl_cg_memo_put(s->g, "any-object", obj);
}

static const char *any_value(sl_csch *s)
{
    any_rules(s);
    const char *r = sl_cg_memo(s->g, "any-value");
    return r ? r : "";
}

const char *sl_csch_any_object(sl_csch *s)
{
    any_rules(s);
    const char *r = sl_cg_memo(s->g, "any-object");
    return r ? r : "";
}

/* ---- literals: enum and const ---- */

/* SL_OK when every character of the string str[0..n) is in the spelling's universe (tool
 * calls: jansson refuses U+0000). */
static sl_status in_universe(sl_csch *s, const char *str, size_t n)
{
    for (size_t i = 0; s->sp.universe && i < n;) {
        uint32_t c;
        size_t k = sl_utf8_decode(str + i, n - i, &c);
        if (!k || !sl_cset_has(s->sp.universe, c))
            return bad(s, "a constant string with a character tool-call arguments cannot contain");
        i += k;
    }
    return SL_OK;
}

/* A JSON text as one GBNF literal, unless it spells an avoided tag (tool calls). */
static sl_status put_json_text(sl_csch *s, sl_buf *out, const char *t, size_t n)
{
    const char *tag = sl_cspell_tag_in(&s->sp, t, n);
    if (tag) return bad(s, "a constant containing `%s`, which ends the tool call", tag);
    static const sl_cspell raw = {0};
    sl_cg_text(s->g, out, &raw, t, n);
    return SL_OK;
}

static sl_status put_key(sl_csch *s, sl_buf *out, const char *name);

/* v as json.dumps writes it, with `space` between tokens; then space. */
static sl_status literal(sl_csch *s, const json_t *v, sl_buf *out)
{
    const char *sp = space(s);
    sl_status st = SL_OK;
    if (json_is_object(v) || json_is_array(v)) {
        int obj = json_is_object(v);
        sl_cg_printf(s->g, out, "\"%c\" %s", obj ? '{' : '[', sp);
        const char *k;
        json_t *x;
        size_t i = 0;
        void *it = obj ? json_object_iter((json_t *)v) : NULL;
        for (;; i++) {
            if (obj ? !it : i >= json_array_size(v)) break;
            if (i) sl_cg_printf(s->g, out, " \",\" %s", sp);
            sl_cg_put(s->g, out, " ");
            if (obj) {
                k = json_object_iter_key(it);
                x = json_object_iter_value(it);
                st = put_key(s, out, k);
                it = json_object_iter_next((json_t *)v, it);
            } else {
                x = json_array_get(v, i);
            }
            if (st == SL_OK) st = literal(s, x, out);
            if (st) return st;
        }
        sl_cg_printf(s->g, out, " \"%c\" %s", obj ? '}' : ']', sp);
        return cg_status(s);
    }
    if (json_is_string(v) && (st = in_universe(s, json_string_value(v), json_string_length(v))))
        return st;
    sl_buf t = {0};
    if (sl_pyjson_dumps(&t, v))
        sl_cg_oom(s->g);
    else
        st = put_json_text(s, out, t.data, t.len);
    sl_buf_free(&t);
    sl_cg_put(s->g, out, " ");
    sl_cg_put(s->g, out, sp);
    return st ? st : cg_status(s);
}

/* ---- types ---- */

static const struct {
    const char *name;
    unsigned bit;
} type_names[] = {{"null", SL_CT_NULL},    {"boolean", SL_CT_BOOLEAN}, {"object", SL_CT_OBJECT},
                  {"array", SL_CT_ARRAY},  {"string", SL_CT_STRING},   {"integer", SL_CT_INTEGER},
                  {"number", SL_CT_NUMBER}};

static unsigned type_bit(const json_t *name)
{
    for (size_t i = 0; json_is_string(name) && i < sizeof type_names / sizeof type_names[0]; i++)
        if (!strcmp(json_string_value(name), type_names[i].name)) return type_names[i].bit;
    return 0;
}

unsigned sl_csch_types(const json_t *schema)
{
    const json_t *t = json_object_get(schema, "type");
    if (!t) return SL_CT_ALL;
    if (!json_is_array(t)) return type_bit(t);
    unsigned bits = 0;
    size_t i;
    json_t *x;
    json_array_foreach(t, i, x)
    {
        unsigned b = type_bit(x);
        if (!b) return 0;
        bits |= b;
    }
    return bits;
}

/* An integral JSON number (jsonschema's integer: 1.0 is one). */
static int integral(const json_t *v)
{
    if (json_is_integer(v)) return 1;
    double d = json_real_value(v);
    return json_is_real(v) && d == floor(d) && fabs(d) < 1e300;
}

/* 1 when v is a JSON value of a type in bits. */
static int type_of(const json_t *v, unsigned bits)
{
    switch (json_typeof(v)) {
    case JSON_NULL:
        return (bits & SL_CT_NULL) != 0;
    case JSON_TRUE:
    case JSON_FALSE:
        return (bits & SL_CT_BOOLEAN) != 0;
    case JSON_OBJECT:
        return (bits & SL_CT_OBJECT) != 0;
    case JSON_ARRAY:
        return (bits & SL_CT_ARRAY) != 0;
    case JSON_STRING:
        return (bits & SL_CT_STRING) != 0;
    case JSON_INTEGER:
    case JSON_REAL:
        return (bits & SL_CT_NUMBER) || ((bits & SL_CT_INTEGER) && integral(v));
    }
    return 0;
}

/* ---- formats ---- */

/* The text of each format (no quotes); date-time is date "T" time. */
static const struct {
    const char *name, *body;
} formats[] = {
    {"date", "( [0-9]{3} [1-9] | [0-9]{2} [1-9] \"0\" | [0-9] [1-9] \"00\" | [1-9] \"000\" ) \"-\" "
             "( ( \"0\" [13578] | \"1\" [02] ) \"-\" ( \"0\" [1-9] | [12] [0-9] | \"3\" [01] ) | "
             "( \"0\" [469] | \"11\" ) \"-\" ( \"0\" [1-9] | [12] [0-9] | \"30\" ) | "
             "\"02-\" ( \"0\" [1-9] | \"1\" [0-9] | \"2\" [0-8] ) ) | "
             /* February 29th: years divisible by 4 but not 100, or by 400 (never year 0) */
             "( [0-9]{2} ( \"0\" [48] | [2468] [048] | [13579] [26] ) | "
             "( \"0\" [48] | [2468] [048] | [13579] [26] ) \"00\" ) \"-02-29\""},
    {"time", "( [01] [0-9] | \"2\" [0-3] ) \":\" [0-5] [0-9] \":\" [0-5] [0-9] ( \".\" [0-9]+ )? "
             "( \"Z\" | [+\\-] ( [01] [0-9] | \"2\" [0-3] ) \":\" [0-5] [0-9] )"},
    {"uuid", "[0-9a-fA-F]{8} \"-\" [0-9a-fA-F]{4} \"-\" [0-9a-fA-F]{4} \"-\" [0-9a-fA-F]{4} \"-\" "
             "[0-9a-fA-F]{12}"},
    {"email",
     "[A-Za-z0-9!#$%&'*+/=?\\^_`{|}~\\-]+ ( \".\" [A-Za-z0-9!#$%&'*+/=?\\^_`{|}~\\-]+ )* \"@\" "
     "[A-Za-z0-9] ( [A-Za-z0-9\\-]{0,61} [A-Za-z0-9] )? "
     "( \".\" [A-Za-z0-9] ( [A-Za-z0-9\\-]{0,61} [A-Za-z0-9] )? )+"},
    {"ipv4",
     "( \"25\" [0-5] | \"2\" [0-4] [0-9] | \"1\" [0-9] [0-9] | [1-9] [0-9] | [0-9] ) "
     "( \".\" ( \"25\" [0-5] | \"2\" [0-4] [0-9] | \"1\" [0-9] [0-9] | [1-9] [0-9] | [0-9] ) ){3}"},
};

const char *sl_csch_format(sl_csch *s, const char *format)
{
    if (!strcmp(format, "date-time")) {
        char body[96];
        const char *d = sl_csch_format(s, "date");
        snprintf(body, sizeof body, "%s \"T\" %s", d, sl_csch_format(s, "time"));
        return sl_cg_rule(s->g, "date-time", body);
    }
    for (size_t i = 0; i < sizeof formats / sizeof formats[0]; i++)
        if (!strcmp(format, formats[i].name))
            return sl_cg_rule(s->g, formats[i].name, formats[i].body);
    return NULL;
}

/* ---- keyword values ---- */

/* A non-negative integer keyword into *v (absent: unchanged); SL_ERR_INVALID otherwise. */
static sl_status count_kw(sl_csch *s, const json_t *sch, const char *k, long *v)
{
    const json_t *x = json_object_get(sch, k);
    if (!x) return SL_OK;
    if (!integral(x) || json_number_value(x) < 0)
        return bad(s, "`%s` must be a non-negative integer", k);
    double d = json_number_value(x);
    if (d > SL_CONSTRAINT_MAX_REPEAT)
        return sl_err_set(s->e, SL_ERR_LIMIT, "`%s` above %d is not supported at %s", k,
                          SL_CONSTRAINT_MAX_REPEAT, where(s));
    *v = (long)d;
    return SL_OK;
}

/* A bound on a magnitude: I.F > value (excl) or >= value; for an upper bound < or <=. */
typedef struct bound {
    int has, excl;
    int64_t v;
} bound;

#define BOUND_MAX (INT64_C(1) << 53) /* integers doubles hold exactly */

/* minimum & co. as integer bounds on the value: integers round inward (x >= 1.5 is x >= 2);
 * numbers take integral bounds only, inclusive only (see constraint.h). */
static sl_status read_bounds(sl_csch *s, const json_t *sch, int integer, bound *lo, bound *hi)
{
    static const char *const keys[] = {"minimum", "exclusiveMinimum", "maximum",
                                       "exclusiveMaximum"};
    for (int i = 0; i < 4; i++) {
        const json_t *x = json_object_get(sch, keys[i]);
        if (!x) continue;
        if (!json_is_number(x)) return bad(s, "`%s` must be a number", keys[i]);
        double d = json_number_value(x);
        int upper = i >= 2, excl = i & 1;
        if (fabs(d) > (double)BOUND_MAX)
            return bad(s, "`%s` beyond ±2^53 is not supported", keys[i]);
        if (!integer && (excl || d != floor(d)))
            return bad(s,
                       excl ? "`%s` on a number cannot be enforced exactly (decimal rounding); "
                              "use `minimum`/`maximum` with integral values or type `integer`"
                            : "`%s` on a number must be an integer to be enforced exactly",
                       keys[i]);
        int64_t v = upper ? (int64_t)floor(d) : (int64_t)ceil(d);
        if (excl && d == floor(d)) v += upper ? -1 : 1; /* integers: x > 3 is x >= 4 */
        bound *b = upper ? hi : lo;
        if (!b->has || (upper ? v < b->v : v > b->v)) *b = (bound){1, 0, v};
    }
    if (lo->has && hi->has && lo->v > hi->v)
        return bad(s, "no %s satisfies the minimum and maximum", integer ? "integer" : "number");
    return SL_OK;
}

/* What the fraction may be for an integer part at a bound (see magnitude()). */
typedef enum frac { FRAC_ANY, FRAC_ZERO, FRAC_NONZERO, FRAC_NONE } frac;

static frac frac_meet(frac a, frac b)
{
    if (a == FRAC_ANY) return b;
    if (b == FRAC_ANY) return a;
    return a == b ? a : FRAC_NONE;
}

static void put_frac(sl_cg *g, sl_buf *b, frac f, int integer)
{
    if (integer) return;
    if (f == FRAC_ANY) sl_cg_put(g, b, " ( \".\" [0-9]+ )?");
    if (f == FRAC_ZERO) sl_cg_put(g, b, " ( \".\" \"0\"+ )?");
    if (f == FRAC_NONZERO) sl_cg_put(g, b, " \".\" [0-9]* [1-9] [0-9]*");
}

/* Integer parts a..z (open: a and above) with what their fraction may be. */
typedef struct run {
    int64_t a, z;
    int open;
    frac f;
} run;

/* Numerals I(.F) with lo_v (<)(=) I.F (<)(=) hi_v: I above the lower integer p with any F, I = p
 * with the fraction p allows, and the same at the upper q. No upper bound: hi->has = 0.
 * Appends alternatives (with " | " before each but the first, *n counting them). */
static void magnitude(sl_csch *s, sl_buf *b, const char *sign, bound lo, bound hi, int integer,
                      int *n)
{
    int64_t p = -1, q = INT64_MAX;
    frac fp = FRAC_ANY, fq = FRAC_ANY;
    if (lo.has && (lo.v > 0 || (lo.v == 0 && lo.excl))) {
        p = lo.v;
        fp = lo.excl ? FRAC_NONZERO : FRAC_ANY;
    }
    if (hi.has) {
        if (hi.v < 0 || (hi.v == 0 && hi.excl)) return;
        q = hi.v;
        fq = hi.excl ? FRAC_NONE : FRAC_ZERO;
    }
    int q_open = !hi.has; /* I unbounded above */
    /* an integer has no fraction: ANY and ZERO mean "allowed" */
    if (integer) {
        fp = fp == FRAC_NONZERO ? FRAC_NONE : FRAC_ANY;
        fq = fq == FRAC_NONE ? FRAC_NONE : FRAC_ANY;
    }
    run part[3];
    int k = 0;
    if (!q_open && p == q)
        part[k++] = (run){p, p, 0, frac_meet(fp, fq)};
    else if (q_open || p < q) {
        if (p >= 0) part[k++] = (run){p, p, 0, fp};
        int64_t a = p + 1, z = q_open ? 0 : q - 1;
        if (q_open || a <= z) part[k++] = (run){a, z, q_open, FRAC_ANY};
        if (!q_open) part[k++] = (run){q, q, 0, fq};
    }
    for (int i = 0; i < k; i++) {
        if (part[i].f == FRAC_NONE) continue;
        if ((*n)++) sl_cg_put(s->g, b, " | ");
        sl_cg_put(s->g, b, sign);
        uint_range(s->g, b, (uint64_t)part[i].a, (uint64_t)part[i].z, part[i].open);
        put_frac(s->g, b, part[i].f, integer);
    }
}

/* An integer, or a number with bounds: the non-negative values, then the negative ones (whose
 * magnitude bounds are the value bounds mirrored, and never -0). */
static sl_status bounded_number(sl_csch *s, const json_t *sch, int integer, sl_buf *out)
{
    bound lo = {0}, hi = {0};
    sl_status st = read_bounds(s, sch, integer, &lo, &hi);
    if (st) return st;
    if (s->jansson) { /* jansson reads 64-bit integers */
        if (!lo.has || lo.v < -INT64_MAX) lo = (bound){1, 0, -INT64_MAX};
        if (!hi.has) hi = (bound){1, 0, INT64_MAX};
    }
    sl_buf b = {0};
    int n = 0;
    if (!hi.has || hi.v >= 0) magnitude(s, &b, "", lo, hi, integer, &n);
    if (!lo.has || lo.v < 0) {
        bound mlo = {1, 1, 0}, mhi = {0}; /* magnitude > 0 */
        if (hi.has && hi.v < 0) mlo = (bound){1, 0, -hi.v};
        if (lo.has) mhi = (bound){1, 0, -lo.v};
        magnitude(s, &b, "\"-\" ", mlo, mhi, integer, &n);
    }
    if (n > 1) sl_cg_put(s->g, out, "( ");
    sl_cg_put(s->g, out, b.data ? b.data : "");
    if (n > 1) sl_cg_put(s->g, out, " )");
    sl_cg_put(s->g, out, " ");
    sl_cg_put(s->g, out, space(s));
    sl_buf_free(&b);
    if (!n) return bad(s, "no %s satisfies the bounds", integer ? "integer" : "number");
    return cg_status(s);
}

static int has_bounds(const json_t *sch)
{
    return json_object_get(sch, "minimum") || json_object_get(sch, "maximum") ||
           json_object_get(sch, "exclusiveMinimum") || json_object_get(sch, "exclusiveMaximum");
}

/* ---- the branches of one type ---- */

static sl_status value(sl_csch *s, const json_t *sch, sl_buf *out);

/* value() of sch under pointer segment(s), the result as a rule when it is long (so that a
 * sequence that names it twice stays linear). */
static sl_status sub_value(sl_csch *s, const json_t *sch, const char *seg, const char *seg2,
                           sl_buf *out)
{
    size_t old = ptr_push(s, seg);
    if (seg2) ptr_push(s, seg2);
    sl_buf b = {0};
    sl_status st = value(s, sch, &b);
    if (st == SL_OK) {
        const char *hint = seg2 && !(seg2[0] >= '0' && seg2[0] <= '9') ? seg2 : seg;
        if (b.len > 64)
            sl_cg_put(s->g, out, sl_cg_rule(s->g, hint, b.data));
        else
            sl_cg_put(s->g, out, b.data ? b.data : "");
    }
    sl_buf_free(&b);
    ptr_pop(s, old);
    return st ? st : cg_status(s);
}

static sl_status string_branch(sl_csch *s, const json_t *sch, sl_buf *out)
{
    long min = 0, max = -1;
    sl_status st;
    if ((st = count_kw(s, sch, "minLength", &min)) || (st = count_kw(s, sch, "maxLength", &max)))
        return st;
    int lengths = json_object_get(sch, "minLength") || json_object_get(sch, "maxLength");
    const json_t *fmt = json_object_get(sch, "format"), *pat = json_object_get(sch, "pattern");
    if (max >= 0 && min > max) return bad(s, "`minLength` is above `maxLength`");
    if (fmt && (pat || lengths))
        return bad(s, "`format` together with `%s` is not supported",
                   pat ? "pattern" : "minLength`/`maxLength");
    if (pat && lengths)
        return bad(s, "`pattern` together with `minLength`/`maxLength` is not supported");
    const char *q = "\"\\\"\"";
    if (fmt) {
        if (!json_is_string(fmt)) return bad(s, "`%s` must be a string", "format");
        const char *rule = sl_csch_format(s, json_string_value(fmt));
        if (!rule) return bad(s, "unsupported format `%s`", json_string_value(fmt));
        sl_cg_printf(s->g, out, "%s %s %s ", q, rule, q);
    } else if (pat) {
        if (!json_is_string(pat)) return bad(s, "`%s` must be a string", "pattern");
        sl_buf body = {0};
        sl_err pe = {0};
        st = sl_cre_expr(s->g, json_string_value(pat), json_string_length(pat), &s->sp, 1, &body,
                         &pe);
        if (st == SL_OK) {
            sl_cg_printf(s->g, out, "%s ", q);
            if (body.len) {
                sl_cg_put(s->g, out, body.data);
                sl_cg_put(s->g, out, " ");
            }
            sl_cg_printf(s->g, out, "%s ", q);
        }
        sl_buf_free(&body);
        if (st) return sl_err_set(s->e, st, "`pattern` at %s: %s", where(s), pe.msg);
    } else if (lengths) {
        const char *c = char_rule(s);
        if (max < 0)
            sl_cg_printf(s->g, out, "%s %s{%ld,} %s ", q, c, min, q);
        else if (max == 0)
            sl_cg_put(s->g, out, "\"\\\"\\\"\" ");
        else if (min == max)
            sl_cg_printf(s->g, out, "%s %s{%ld} %s ", q, c, min, q);
        else
            sl_cg_printf(s->g, out, "%s %s{%ld,%ld} %s ", q, c, min, max, q);
    } else {
        sl_cg_put(s->g, out, string_rule(s));
        return cg_status(s);
    }
    sl_cg_put(s->g, out, space(s));
    return cg_status(s);
}

sl_status sl_csch_props(sl_csch *s, const json_t *sch, sl_cprop **props, size_t *n,
                        const json_t **extra, sl_err *e)
{
    s->e = e;
    *props = NULL;
    *n = 0;
    const json_t *pr = json_object_get(sch, "properties"), *req = json_object_get(sch, "required");
    const json_t *add = json_object_get(sch, "additionalProperties");
    if (pr && !json_is_object(pr)) return bad(s, "`%s` must be an object", "properties");
    if (req && !json_is_array(req)) return bad(s, "`%s` must be an array of strings", "required");
    if (add && !json_is_object(add) && !json_is_boolean(add))
        return bad(s, "`%s` must be a schema", "additionalProperties");
    *extra = !add || json_is_true(add) ? json_true() : json_is_false(add) ? NULL : add;
    size_t i, cap = json_object_size(pr) + json_array_size(req);
    json_t *x;
    json_array_foreach(req, i, x)
    {
        if (!json_is_string(x)) return bad(s, "`required` must be an array of strings");
    }
    sl_cprop *p = calloc(cap ? cap : 1, sizeof *p);
    if (!p) return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    const char *k;
    json_object_foreach((json_t *)pr, k, x)
    {
        int r = 0;
        json_t *y;
        json_array_foreach(req, i, y) r |= !strcmp(json_string_value(y), k);
        p[(*n)++] = (sl_cprop){k, x, r};
    }
    /* required but not listed: a property with any value additionalProperties allows */
    json_array_foreach(req, i, x)
    {
        const char *name = json_string_value(x);
        int listed = json_object_get(pr, name) != NULL;
        for (size_t j = 0; j < *n && !listed; j++)
            listed = !strcmp(p[j].name, name);
        if (listed) continue;
        if (!*extra) {
            free(p);
            return bad(s,
                       "required property `%s` is not in `properties` and `additionalProperties` "
                       "is false: no object is valid",
                       name);
        }
        p[(*n)++] = (sl_cprop){name, *extra, 1};
    }
    *props = p;
    return SL_OK;
}

/* A property name as a JSON string literal, then space ":" space. */
static sl_status put_key(sl_csch *s, sl_buf *out, const char *name)
{
    json_t *k = json_string(name);
    sl_buf t = {0};
    sl_status st = in_universe(s, name, strlen(name));
    if (st) return json_decref(k), st;
    if (!k || sl_pyjson_dumps(&t, k))
        sl_cg_oom(s->g);
    else
        st = put_json_text(s, out, t.data, t.len);
    json_decref(k);
    sl_buf_free(&t);
    const char *sp = space(s);
    sl_cg_printf(s->g, out, " %s \":\" %s ", sp, sp);
    return st ? st : cg_status(s);
}

static sl_status object_branch(sl_csch *s, const json_t *sch, sl_buf *out)
{
    sl_cprop *p;
    size_t n;
    const json_t *extra;
    sl_status st = sl_csch_props(s, sch, &p, &n, &extra, s->e);
    if (st) return st;
    char **items = calloc(n + 1, sizeof *items);
    int *req = calloc(n + 1, sizeof *req);
    const char **names = calloc(n + 1, sizeof *names);
    sl_buf kv = {0}, ex = {0};
    if (!items || !req || !names) st = sl_err_set(s->e, SL_ERR_NOMEM, "out of memory");
    s->guard++;
    for (size_t i = 0; i < n && st == SL_OK; i++) {
        sl_buf_clear(&kv);
        if ((st = put_key(s, &kv, p[i].name))) break;
        int listed = json_object_get(json_object_get(sch, "properties"), p[i].name) != NULL;
        if (listed)
            st = sub_value(s, p[i].schema, "properties", p[i].name, &kv);
        else
            st = sub_value(s, p[i].schema, "additionalProperties", NULL, &kv);
        if (st == SL_OK && !(items[i] = strdup(kv.data)))
            st = sl_err_set(s->e, SL_ERR_NOMEM, "out of memory");
        req[i] = p[i].required;
        names[i] = p[i].name;
    }
    if (st == SL_OK && extra) {
        /* another key: any string but a listed name (a duplicate would override its value) */
        const char *sp = space(s);
        sl_cg_printf(s->g, &ex, "\"\\\"\" %s \"\\\"\" %s \":\" %s ",
                     sl_cg_free_text(s->g, &s->sp, names, n, 0), sp, sp);
        st = sub_value(s, extra, "additionalProperties", NULL, &ex);
    }
    s->guard--;
    if (st == SL_OK) {
        const char *sp = space(s);
        sl_buf seq = {0}, sep = {0};
        sl_cg_printf(s->g, &sep, "\",\" %s", sp);
        sl_cg_seq(s->g, "object", (const char *const *)items, req, n, extra ? ex.data : NULL,
                  sep.data ? sep.data : "", &seq);
        sl_buf body = {0};
        sl_cg_printf(s->g, &body, "\"{\" %s ", sp);
        if (seq.len) {
            sl_cg_put(s->g, &body, seq.data);
            sl_cg_put(s->g, &body, " ");
        }
        sl_cg_printf(s->g, &body, "\"}\" %s", sp);
        sl_cg_put(s->g, out, body.data ? body.data : "");
        sl_buf_free(&seq);
        sl_buf_free(&sep);
        sl_buf_free(&body);
        st = cg_status(s);
    }
    for (size_t i = 0; items && i < n; i++)
        free(items[i]);
    free(items);
    free(req);
    free(names);
    free(p);
    sl_buf_free(&kv);
    sl_buf_free(&ex);
    return st;
}

/* ( sep item ){a,b} (b < 0: unbounded); nothing when b is 0. */
static void repeat_sep(sl_csch *s, sl_buf *out, const char *sep, const char *item, long a, long b)
{
    if (b == 0) return;
    sl_cg_printf(s->g, out, "( %s", sep);
    sl_cg_put(s->g, out, item);
    sl_cg_put(s->g, out, " )");
    if (b < 0 && !a)
        sl_cg_put(s->g, out, "*");
    else if (b < 0 && a == 1)
        sl_cg_put(s->g, out, "+");
    else if (b < 0)
        sl_cg_printf(s->g, out, "{%ld,}", a);
    else if (a == 0 && b == 1)
        sl_cg_put(s->g, out, "?");
    else if (a == b)
        sl_cg_printf(s->g, out, "{%ld}", a);
    else
        sl_cg_printf(s->g, out, "{%ld,%ld}", a, b);
}

/* Arrays: prefixItems p_0..p_k-1 at their positions, `items` S after them, length m..M.
 * E(i), the elements from position i on, is  [","] p_i  followed by E(i+1) (optional once
 * i+1 >= m, absent once i+1 >= M), and after the prefix  ("," S){a,b}. */
static sl_status array_branch(sl_csch *s, const json_t *sch, sl_buf *out)
{
    long m = 0, big = -1;
    sl_status st;
    if ((st = count_kw(s, sch, "minItems", &m)) || (st = count_kw(s, sch, "maxItems", &big)))
        return st;
    const json_t *items = json_object_get(sch, "items"), *pre = json_object_get(sch, "prefixItems");
    if (json_is_array(items))
        return bad(s, "`%s` as an array is not supported: use `prefixItems`", "items");
    if (items && !json_is_object(items) && !json_is_boolean(items))
        return bad(s, "`%s` must be a schema", "items");
    if (pre && !json_is_array(pre))
        return bad(s, "`%s` must be an array of schemas", "prefixItems");
    long k = (long)json_array_size(pre), M = big;
    int open = !json_is_false(items); /* elements after the prefix allowed */
    if (!open && (M < 0 || M > k)) M = k;
    if (M >= 0 && m > M) return bad(s, "`minItems` is above what `maxItems` and `items` allow");
    if (k > SL_CONSTRAINT_MAX_REPEAT)
        return sl_err_set(s->e, SL_ERR_LIMIT, "`prefixItems` longer than %d at %s",
                          SL_CONSTRAINT_MAX_REPEAT, where(s));
    const char *sp = space(s);
    sl_buf sep = {0}, tail = {0}, el = {0}, body = {0};
    sl_cg_printf(s->g, &sep, "\",\" %s ", sp);
    s->guard++;
    sl_buf item = {0};
    if (open && (M < 0 || M > k)) {
        st = items && !json_is_true(items) ? sub_value(s, items, "items", NULL, &item)
                                           : (sl_cg_put(s->g, &item, any_value(s)), cg_status(s));
        long a = m > k ? m - k : 0, b = M < 0 ? -1 : M - k;
        if (st == SL_OK && k == 0) { /* S ( "," S ){a-1,b-1}, optional when a = 0 */
            if (!a) sl_cg_put(s->g, &tail, "( ");
            sl_cg_put(s->g, &tail, item.data);
            sl_cg_put(s->g, &tail, " ");
            repeat_sep(s, &tail, sep.data, item.data, a ? a - 1 : 0, b < 0 ? -1 : b - 1);
            if (!a) sl_cg_put(s->g, &tail, " )?");
        } else if (st == SL_OK) {
            repeat_sep(s, &tail, sep.data, item.data, a, b);
        }
    }
    /* the prefix, from its last position down: el holds E(i+1) */
    for (long i = (M >= 0 && M < k ? M : k) - 1; i >= 0 && st == SL_OK; i--) {
        sl_buf e = {0};
        if (i) sl_cg_put(s->g, &e, sep.data);
        char idx[24];
        snprintf(idx, sizeof idx, "%ld", i);
        st = sub_value(s, json_array_get(pre, (size_t)i), "prefixItems", idx, &e);
        const char *rest = i + 1 < k ? el.data : tail.data;
        if (st == SL_OK && rest && *rest) {
            int opt = i + 1 >= m && i + 1 < k; /* the tail carries its own minimum */
            sl_cg_put(s->g, &e, opt ? " ( " : " ");
            sl_cg_put(s->g, &e, i + 1 < k ? sl_cg_rule(s->g, "items", rest) : rest);
            if (opt) sl_cg_put(s->g, &e, " )?");
        }
        sl_buf_free(&el);
        el = e;
    }
    s->guard--;
    if (st == SL_OK) {
        const char *elems = k ? el.data : tail.data;
        sl_cg_printf(s->g, &body, "\"[\" %s ", sp);
        if (elems && *elems) {
            int opt = k && m == 0;
            sl_cg_put(s->g, &body, opt ? "( " : "");
            sl_cg_put(s->g, &body, elems);
            sl_cg_put(s->g, &body, opt ? " )? " : " ");
        }
        sl_cg_printf(s->g, &body, "\"]\" %s", sp);
        sl_cg_put(s->g, out, body.data ? body.data : "");
        st = cg_status(s);
    }
    sl_buf_free(&item);
    sl_buf_free(&sep);
    sl_buf_free(&tail);
    sl_buf_free(&el);
    sl_buf_free(&body);
    return st;
}

/* ---- $ref ---- */

/* The value a "#/a/b" pointer names in the document (RFC 6901, percent-decoded as a URI
 * fragment), or NULL. */
static const json_t *resolve(const sl_csch *s, const char *ref)
{
    if (ref[0] != '#') return NULL;
    const json_t *at = s->root;
    const char *p = ref + 1;
    if (!*p) return at;
    if (*p != '/') return NULL;
    char seg[256];
    while (*p == '/' && at) {
        size_t n = 0;
        for (p++; *p && *p != '/'; p++) {
            char c = *p;
            if (c == '~' && (p[1] == '0' || p[1] == '1'))
                c = *++p == '0' ? '~' : '/';
            else if (c == '%' && p[1] && p[2]) {
                char hex[3] = {p[1], p[2], 0}, *end;
                long v = strtol(hex, &end, 16);
                if (*end || v <= 0) return NULL;
                c = (char)v;
                p += 2;
            }
            if (n + 1 >= sizeof seg) return NULL;
            seg[n++] = c;
        }
        seg[n] = 0;
        if (json_is_object(at)) {
            at = json_object_get(at, seg);
        } else if (json_is_array(at)) {
            char *end;
            unsigned long i = strtoul(seg, &end, 10);
            at = *seg && !*end ? json_array_get(at, i) : NULL;
        } else {
            at = NULL;
        }
    }
    return at;
}

static sl_status ref_value(sl_csch *s, const json_t *sch, sl_buf *out)
{
    const char *ref = json_string_value(json_object_get(sch, "$ref"));
    if (!ref) return bad(s, "`%s` must be a string", "$ref");
    const json_t *target = resolve(s, ref);
    if (!target) {
        if (ref[0] != '#')
            return bad(s, "unsupported `$ref` %s: only pointers into this schema (#...)", ref);
        return bad(s, "`$ref` %s does not resolve", ref);
    }
    for (size_t i = 0; i < s->n_refs; i++) {
        if (s->refs[i].target != target) continue;
        if (!s->refs[i].done && s->refs[i].guard == s->guard)
            return bad(s, "`$ref` %s refers back to itself before any input (left recursion)", ref);
        sl_cg_put(s->g, out, sl_cg_name(s->g, s->refs[i].rule));
        return cg_status(s);
    }
    if (s->n_refs == s->cap_refs) {
        size_t cap = s->cap_refs ? 2 * s->cap_refs : 8;
        void *p = realloc(s->refs, cap * sizeof *s->refs);
        if (!p) return sl_err_set(s->e, SL_ERR_NOMEM, "out of memory");
        s->refs = p;
        s->cap_refs = cap;
    }
    const char *last = strrchr(ref, '/');
    size_t idx = s->n_refs++, rule = sl_cg_reserve(s->g, last ? last + 1 : "root-ref");
    s->refs[idx] = (ref_entry){target, rule, s->guard, 0};
    /* messages inside the target name its own pointer */
    sl_buf saved = s->ptr;
    s->ptr = (sl_buf){0};
    const char *hash = strchr(saved.data ? saved.data : "#", '#');
    sl_cg_putn(s->g, &s->ptr, saved.data, saved.data ? (size_t)(hash - saved.data) : 0);
    sl_cg_put(s->g, &s->ptr, ref);
    sl_buf body = {0};
    sl_status st = cg_status(s);
    if (st == SL_OK) st = value(s, target, &body);
    sl_buf_free(&s->ptr);
    s->ptr = saved;
    if (st == SL_OK) {
        sl_cg_define(s->g, rule, body.data ? body.data : "");
        s->refs[idx].done = 1;
        sl_cg_put(s->g, out, sl_cg_name(s->g, rule));
        st = cg_status(s);
    }
    sl_buf_free(&body);
    return st;
}

/* sch with $ref (and allOf of one schema) followed; NULL with e set when they do not resolve
 * or form a cycle. */
static const json_t *deref(sl_csch *s, const json_t *sch, sl_err *e)
{
    for (int hops = 0; hops < SCH_MAX_DEPTH; hops++) {
        const json_t *all = json_object_get(sch, "allOf");
        if (json_is_string(json_object_get(sch, "$ref"))) {
            const char *ref = json_string_value(json_object_get(sch, "$ref"));
            if (!(sch = resolve(s, ref))) {
                sl_err_set(e, SL_ERR_INVALID, "`$ref` %s does not resolve", ref);
                return NULL;
            }
        } else if (json_is_array(all) && json_array_size(all) == 1) {
            sch = json_array_get(all, 0);
        } else {
            return sch;
        }
    }
    sl_err_set(e, SL_ERR_INVALID, "a `$ref` cycle");
    return NULL;
}

/* ---- anyOf, oneOf, allOf ---- */

/* 1 when a and b are the same JSON value to a validator (numbers by value). */
static int same_value(const json_t *a, const json_t *b)
{
    if (json_is_number(a) && json_is_number(b)) return json_number_value(a) == json_number_value(b);
    return json_equal((json_t *)a, (json_t *)b);
}

/* The types a schema's values can have (enum/const: their values' types). */
static unsigned value_types(const json_t *sch)
{
    if (!json_is_object(sch)) return json_is_false(sch) ? 0 : SL_CT_ALL;
    const json_t *en = json_object_get(sch, "enum"), *c = json_object_get(sch, "const");
    if (!en && !c) {
        if (json_object_get(sch, "anyOf") || json_object_get(sch, "oneOf") ||
            json_object_get(sch, "allOf") || json_object_get(sch, "$ref"))
            return json_object_get(sch, "type") ? sl_csch_types(sch) : SL_CT_ALL;
        return sl_csch_types(sch);
    }
    unsigned t = 0;
    size_t i;
    json_t *v;
    json_array_foreach(en, i, v)
    {
        for (unsigned b = 1; b <= SL_CT_NUMBER; b <<= 1)
            if (type_of(v, b)) t |= b;
    }
    for (unsigned b = 1; c && b <= SL_CT_NUMBER; b <<= 1)
        if (type_of(c, b)) t |= b;
    return t;
}

/* The constants of sch (enum values, or the const as a one-element list), or 0. */
static size_t constants(const json_t *sch, const json_t **one, const json_t **list)
{
    *list = json_object_get(sch, "enum");
    *one = json_object_get(sch, "const");
    return *one ? 1 : json_is_array(*list) ? json_array_size(*list) : 0;
}

static const json_t *constant(const json_t *one, const json_t *list, size_t i)
{
    return one ? one : json_array_get(list, i);
}

/* 1 when no value can satisfy both a and b (a proof is found; 0 means "maybe"): different
 * types, different constants, or objects that require a property whose schemas are disjoint. */
static int disjoint(sl_csch *s, const json_t *a, const json_t *b, int depth)
{
    if (depth > ONEOF_MAX_DEPTH || --s->budget < 0) return 0;
    if (!(a = deref(s, a, NULL)) || !(b = deref(s, b, NULL))) return 0;
    unsigned ta = value_types(a), tb = value_types(b);
    if (ta & SL_CT_NUMBER) ta |= SL_CT_INTEGER; /* integers are numbers */
    if (tb & SL_CT_NUMBER) tb |= SL_CT_INTEGER;
    if (!(ta & tb)) return 1;
    const json_t *oa, *la, *ob, *lb;
    size_t na = constants(a, &oa, &la), nb = constants(b, &ob, &lb);
    if (na && nb) {
        for (size_t i = 0; i < na; i++)
            for (size_t j = 0; j < nb; j++)
                if (same_value(constant(oa, la, i), constant(ob, lb, j))) return 0;
        return 1;
    }
    if (na || nb) { /* constants none of which has a type the other allows */
        const json_t *o = na ? oa : ob, *l = na ? la : lb;
        unsigned other = na ? sl_csch_types(b) : sl_csch_types(a);
        for (size_t i = 0; i < (na ? na : nb); i++)
            if (type_of(constant(o, l, i), other)) return 0;
        return 1;
    }
    if ((ta & tb) != SL_CT_OBJECT || value_types(a) != SL_CT_OBJECT ||
        value_types(b) != SL_CT_OBJECT)
        return 0;
    const json_t *ra = json_object_get(a, "required"), *rb = json_object_get(b, "required");
    size_t i, j;
    json_t *x, *y;
    json_array_foreach(ra, i, x) json_array_foreach(rb, j, y)
    {
        if (!json_is_string(x) || !json_equal(x, y)) continue;
        const char *k = json_string_value(x);
        const json_t *pa = json_object_get(json_object_get(a, "properties"), k);
        const json_t *pb = json_object_get(json_object_get(b, "properties"), k);
        if (!pa) pa = json_object_get(a, "additionalProperties");
        if (!pb) pb = json_object_get(b, "additionalProperties");
        if (pa && pb && disjoint(s, pa, pb, depth + 1)) return 1;
    }
    return 0;
}

/* Ends a rule body of n alternatives built in alts (freed here): out gets
 * them, grouped when there are several. st: the status so far. */
static sl_status put_alts(sl_csch *s, sl_status st, sl_buf *alts, size_t n, sl_buf *out)
{
    if (st == SL_OK) {
        if (n > 1) sl_cg_put(s->g, out, "( ");
        sl_cg_put(s->g, out, alts->data ? alts->data : "");
        if (n > 1) sl_cg_put(s->g, out, " )");
        st = cg_status(s);
    }
    sl_buf_free(alts);
    return st;
}

static sl_status combinator(sl_csch *s, const json_t *sch, const char *kw, sl_buf *out)
{
    const json_t *list = json_object_get(sch, kw);
    if (!json_is_array(list) || !json_array_size(list))
        return bad(s, "`%s` must be a non-empty array of schemas", kw);
    size_t n = json_array_size(list);
    if (!strcmp(kw, "allOf") && n > 1)
        return bad(s, "`%s` with more than one schema is not supported", kw);
    s->budget = ONEOF_BUDGET;
    if (!strcmp(kw, "oneOf"))
        for (size_t i = 0; i < n; i++)
            for (size_t j = i + 1; j < n; j++)
                if (!disjoint(s, json_array_get(list, i), json_array_get(list, j), 0))
                    return bad(s,
                               "`oneOf` whose branches %zu and %zu may overlap is not supported "
                               "(the grammar cannot require that only one matches; use `anyOf`)",
                               i, j);
    sl_buf alts = {0};
    sl_status st = SL_OK;
    for (size_t i = 0; i < n && st == SL_OK; i++) {
        char idx[24];
        snprintf(idx, sizeof idx, "%zu", i);
        if (i) sl_cg_put(s->g, &alts, " | ");
        st = sub_value(s, json_array_get(list, i), kw, idx, &alts);
    }
    return put_alts(s, st, &alts, n, out);
}

/* ---- one schema ---- */

/* The first keyword of sch the converter does not know (neither handled nor an annotation),
 * or NULL. */
static const char *unknown_keyword(const json_t *sch)
{
    const char *k;
    json_t *x;
    json_object_foreach((json_t *)sch, k, x)
    {
        if (!sl_csch_annotation(k) && !in_list(known, k)) return k;
    }
    return NULL;
}

/* The first keyword of sch that constrains values, other than those in allow; NULL if none. */
static const char *other_keyword(const json_t *sch, const char *const *allow)
{
    const char *k;
    json_t *x;
    json_object_foreach((json_t *)sch, k, x)
    {
        if (!sl_csch_annotation(k) && !in_list(allow, k)) return k;
    }
    return NULL;
}

static sl_status enum_value(sl_csch *s, const json_t *sch, unsigned types, sl_buf *out)
{
    const json_t *one, *list;
    if (json_object_get(sch, "enum") && json_object_get(sch, "const"))
        return bad(s, "`enum` together with `%s` is not supported", "const");
    if (json_object_get(sch, "enum") && !json_is_array(json_object_get(sch, "enum")))
        return bad(s, "`%s` must be an array", "enum");
    size_t n = constants(sch, &one, &list), k = 0;
    sl_buf alts = {0};
    sl_status st = SL_OK;
    for (size_t i = 0; i < n && st == SL_OK; i++) {
        const json_t *v = constant(one, list, i);
        if (!type_of(v, types)) continue;
        if (k++) sl_cg_put(s->g, &alts, " | ");
        st = literal(s, v, &alts);
    }
    if (st == SL_OK && !k)
        st = bad(s, "no value of `%s` has a type the schema allows", one ? "const" : "enum");
    if (st == SL_OK) {
        if (k > 1) sl_cg_put(s->g, out, "( ");
        sl_cg_put(s->g, out, alts.data);
        if (k > 1) sl_cg_put(s->g, out, " )");
        st = cg_status(s);
    }
    sl_buf_free(&alts);
    return st;
}

/* The alternation over the types sch allows, each constrained by its keywords. */
static sl_status typed_value(sl_csch *s, const json_t *sch, unsigned types, sl_buf *out)
{
    if (types & SL_CT_NUMBER) types &= ~(unsigned)SL_CT_INTEGER;
    sl_buf alts = {0};
    int n = 0;
    sl_status st = SL_OK;
    static const unsigned order[] = {SL_CT_OBJECT,  SL_CT_ARRAY,   SL_CT_STRING, SL_CT_NUMBER,
                                     SL_CT_INTEGER, SL_CT_BOOLEAN, SL_CT_NULL};
    for (size_t i = 0; i < sizeof order / sizeof order[0] && st == SL_OK; i++) {
        unsigned t = order[i];
        if (!(types & t)) continue;
        if (n++) sl_cg_put(s->g, &alts, " | ");
        if (t == SL_CT_OBJECT)
            st = object_branch(s, sch, &alts);
        else if (t == SL_CT_ARRAY)
            st = array_branch(s, sch, &alts);
        else if (t == SL_CT_STRING)
            st = string_branch(s, sch, &alts);
        else if ((t == SL_CT_NUMBER || t == SL_CT_INTEGER) && has_bounds(sch))
            st = bounded_number(s, sch, t == SL_CT_INTEGER, &alts);
        else if (t == SL_CT_NUMBER)
            sl_cg_put(s->g, &alts, number_rule(s));
        else if (t == SL_CT_INTEGER)
            sl_cg_put(s->g, &alts, integer_rule(s));
        else if (t == SL_CT_BOOLEAN)
            sl_cg_printf(s->g, &alts, "( \"true\" | \"false\" ) %s", space(s));
        else
            sl_cg_printf(s->g, &alts, "\"null\" %s", space(s));
    }
    return put_alts(s, st, &alts, n, out);
}

static sl_status value(sl_csch *s, const json_t *sch, sl_buf *out)
{
    if (json_is_true(sch)) {
        sl_cg_put(s->g, out, any_value(s));
        return cg_status(s);
    }
    if (json_is_false(sch)) return bad(s, "schema `false` allows no value");
    if (!json_is_object(sch)) return bad(s, "a schema must be an object or a boolean");
    if (s->depth >= SCH_MAX_DEPTH)
        return sl_err_set(s->e, SL_ERR_LIMIT, "schema nested deeper than %d at %s", SCH_MAX_DEPTH,
                          where(s));
    const char *unknown = unknown_keyword(sch);
    if (unknown) return bad(s, "unsupported keyword `%s`", unknown);
    unsigned types = sl_csch_types(sch);
    if (!types)
        return bad(s, "`type` must be one of null, boolean, object, array, string, integer, "
                      "number, or a non-empty list of them");
    s->depth++;
    sl_status st;
    static const char *const combis[] = {"anyOf", "oneOf", "allOf", NULL};
    const char *combi = NULL, *other;
    for (const char *const *c = combis; *c; c++)
        if (json_object_get(sch, *c)) combi = *c;
    if (json_object_get(sch, "$ref")) {
        static const char *const only[] = {"$ref", NULL};
        st = (other = other_keyword(sch, only))
                 ? bad(s, "`$ref` next to `%s` is not supported", other)
                 : ref_value(s, sch, out);
    } else if (combi) {
        const char *const only[] = {combi, NULL};
        st = (other = other_keyword(sch, only))
                 ? bad(s, "`%s` next to `%s` is not supported", combi, other)
                 : combinator(s, sch, combi, out);
    } else if (json_object_get(sch, "enum") || json_object_get(sch, "const")) {
        static const char *const only[] = {"enum", "const", "type", NULL};
        st = (other = other_keyword(sch, only))
                 ? bad(s, "`enum`/`const` next to `%s` is not supported", other)
                 : enum_value(s, sch, types, out);
    } else {
        st = typed_value(s, sch, types, out);
    }
    s->depth--;
    return st;
}

/* ---- entry points ---- */

sl_status sl_csch_value(sl_csch *s, const json_t *schema, sl_buf *out, sl_err *e)
{
    s->e = e;
    return value(s, schema, out);
}

void sl_csch_rollback(sl_csch *s, size_t mark)
{
    sl_cg_rollback(s->g, mark);
    size_t k = 0;
    for (size_t i = 0; i < s->n_refs; i++)
        if (s->refs[i].rule < mark) s->refs[k++] = s->refs[i];
    s->n_refs = k;
}

const json_t *sl_csch_object_schema(sl_csch *s, const json_t *schema, sl_err *e)
{
    s->e = e;
    const json_t *t = deref(s, schema, e);
    if (!t) return NULL;
    if (!json_is_object(t)) return bad(s, "the arguments schema must be an object schema"), NULL;
    const char *unknown = unknown_keyword(t);
    if (unknown) return bad(s, "unsupported keyword `%s`", unknown), NULL;
    static const char *const plain[] = {"type", "properties", "required", "additionalProperties",
                                        NULL};
    const char *other = other_keyword(t, plain);
    if (other) return bad(s, "`%s` in an arguments schema is not supported", other), NULL;
    if (!(sl_csch_types(t) & SL_CT_OBJECT))
        return bad(s, "the arguments schema must allow objects"), NULL;
    return t;
}

sl_status sl_csch_object(sl_csch *s, const json_t *schema, sl_buf *out, sl_err *e)
{
    const json_t *t = sl_csch_object_schema(s, schema, e);
    return t ? object_branch(s, t, out) : SL_ERR_INVALID;
}

sl_status sl_constraint_json_schema(const json_t *schema, sl_buf *out, sl_err *e)
{
    sl_cg *g = sl_cg_new();
    static const sl_cspell json = {.json = 1};
    sl_csch *s = g ? sl_csch_new(g, schema, &json, 0, "#") : NULL;
    sl_status st = s ? SL_OK : sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    sl_buf root = {0};
    if (st == SL_OK) st = sl_csch_value(s, schema, &root, e);
    if (st == SL_OK) st = sl_cg_write(g, root.data ? root.data : "", out, e);
    sl_buf_free(&root);
    sl_csch_free(s);
    sl_cg_free(g);
    return st;
}

sl_status sl_constraint_json_object(sl_buf *out)
{
    sl_cg *g = sl_cg_new();
    static const sl_cspell json = {.json = 1};
    sl_csch *s = g ? sl_csch_new(g, NULL, &json, 0, "#") : NULL;
    sl_status st = s ? SL_OK : SL_ERR_NOMEM;
    if (st == SL_OK) st = sl_cg_write(g, sl_csch_any_object(s), out, NULL);
    sl_csch_free(s);
    sl_cg_free(g);
    return st;
}

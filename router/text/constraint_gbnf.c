/* constraint_gbnf.c: the GBNF builder the constraint converters share: rules, code point
 * sets, and how characters are written in raw text or inside JSON strings
 * (constraint_impl.h). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "constraint_impl.h"

/* ---- code point sets ---- */

static int cset_grow(sl_cset *s, size_t n)
{
    if (n <= s->cap) return 0;
    size_t cap = s->cap ? s->cap * 2 : 8;
    while (cap < n)
        cap *= 2;
    void *p = realloc(s->r, cap * sizeof *s->r);
    if (!p) return s->oom = 1, -1;
    s->r = p;
    s->cap = cap;
    return 0;
}

void sl_cset_add(sl_cset *s, uint32_t lo, uint32_t hi)
{
    if (lo > hi || cset_grow(s, s->n + 1)) return;
    /* ranges before lo that cannot touch it stay; the run that touches [lo, hi] merges */
    size_t i = 0;
    while (i < s->n && s->r[i][1] + 1 < lo)
        i++;
    size_t j = i;
    while (j < s->n && s->r[j][0] <= hi + 1) {
        if (s->r[j][0] < lo) lo = s->r[j][0];
        if (s->r[j][1] > hi) hi = s->r[j][1];
        j++;
    }
    if (j == i)
        memmove(&s->r[i + 1], &s->r[i], (s->n - i) * sizeof *s->r), s->n++;
    else if (j > i + 1)
        memmove(&s->r[i + 1], &s->r[j], (s->n - j) * sizeof *s->r), s->n -= j - i - 1;
    s->r[i][0] = lo;
    s->r[i][1] = hi;
}

void sl_cset_add_set(sl_cset *s, const sl_cset *t)
{
    for (size_t i = 0; i < t->n; i++)
        sl_cset_add(s, t->r[i][0], t->r[i][1]);
    s->oom |= t->oom;
}

void sl_cset_remove(sl_cset *s, uint32_t lo, uint32_t hi)
{
    if (lo > hi) return;
    for (size_t i = 0; i < s->n; i++) {
        uint32_t a = s->r[i][0], b = s->r[i][1];
        if (b < lo || a > hi) continue;
        if (a < lo && b > hi) { /* split in two */
            if (cset_grow(s, s->n + 1)) return;
            memmove(&s->r[i + 1], &s->r[i], (s->n - i) * sizeof *s->r);
            s->n++;
            s->r[i][1] = lo - 1;
            s->r[i + 1][0] = hi + 1;
            return;
        }
        if (a < lo)
            s->r[i][1] = lo - 1;
        else if (b > hi)
            s->r[i][0] = hi + 1;
        else { /* covered: drop */
            memmove(&s->r[i], &s->r[i + 1], (s->n - i - 1) * sizeof *s->r);
            s->n--;
            i--;
        }
    }
}

static void cset_remove_set(sl_cset *s, const sl_cset *t)
{
    for (size_t i = 0; i < t->n; i++)
        sl_cset_remove(s, t->r[i][0], t->r[i][1]);
}

void sl_cset_invert(sl_cset *s)
{
    sl_cset t = {0};
    uint32_t next = 0;
    for (size_t i = 0; i < s->n; i++) {
        if (s->r[i][0] > next) sl_cset_add(&t, next, s->r[i][0] - 1);
        next = s->r[i][1] + 1;
    }
    if (next <= SL_CP_MAX) sl_cset_add(&t, next, SL_CP_MAX);
    t.oom |= s->oom;
    sl_cset_free(s);
    *s = t;
}

/* s = s ∩ t */
static void cset_keep_set(sl_cset *s, const sl_cset *t)
{
    sl_cset gaps = {0};
    sl_cset_copy(&gaps, t);
    sl_cset_invert(&gaps);
    cset_remove_set(s, &gaps);
    s->oom |= gaps.oom;
    sl_cset_free(&gaps);
}

void sl_cset_copy(sl_cset *dst, const sl_cset *src)
{
    dst->n = 0;
    dst->oom = 0;
    sl_cset_add_set(dst, src);
}

int sl_cset_has(const sl_cset *s, uint32_t c)
{
    for (size_t i = 0; i < s->n; i++)
        if (c >= s->r[i][0] && c <= s->r[i][1]) return 1;
    return 0;
}

void sl_cset_free(sl_cset *s)
{
    free(s->r);
    *s = (sl_cset){0};
}

size_t sl_utf8_encode(uint32_t c, char *u)
{
    if (c < 0x80) return u[0] = (char)c, 1;
    if (c < 0x800) return u[0] = (char)(0xC0 | c >> 6), u[1] = (char)(0x80 | (c & 63)), 2;
    if (c < 0x10000) {
        u[0] = (char)(0xE0 | c >> 12);
        u[1] = (char)(0x80 | (c >> 6 & 63));
        u[2] = (char)(0x80 | (c & 63));
        return 3;
    }
    u[0] = (char)(0xF0 | c >> 18);
    u[1] = (char)(0x80 | (c >> 12 & 63));
    u[2] = (char)(0x80 | (c >> 6 & 63));
    u[3] = (char)(0x80 | (c & 63));
    return 4;
}

size_t sl_utf8_decode(const char *str, size_t n, uint32_t *cp)
{
    const unsigned char *s = (const unsigned char *)str;
    if (!n) return 0;
    if (s[0] < 0x80) return *cp = s[0], 1;
    size_t len = s[0] >= 0xF0 ? 4 : s[0] >= 0xE0 ? 3 : s[0] >= 0xC0 ? 2 : 0;
    if (!len || len > n || s[0] > 0xF4) return 0;
    uint32_t c = s[0] & (0x3F >> (len - 1));
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        c = c << 6 | (s[i] & 0x3F);
    }
    static const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
    if (c < min[len] || c > SL_CP_MAX || (c >= 0xD800 && c <= 0xDFFF)) return 0;
    *cp = c;
    return len;
}

/* ---- the builder ---- */

typedef struct cg_rule {
    char *name;
    char *body; /* NULL: reserved, not defined yet */
    uint64_t hash;
} cg_rule;

/* A free-text automaton made for one spelling (sl_cg_free_text): its rules are reused. */
typedef struct cg_auto {
    sl_cspell sp;
    size_t first_rule;  /* its rules start here (a rollback past it forgets it) */
    const char **state; /* the rule name of each state */
} cg_auto;

typedef struct cg_memo {
    const char *key; /* a string constant of the caller */
    size_t rule;
} cg_memo;

struct sl_cg {
    cg_rule *rule;
    size_t n, cap;
    uint32_t *by_body, *by_name; /* open addressing: rule index + 1, 0 empty */
    size_t tab_cap;              /* power of two, > 2 * n */
    size_t bytes;                /* grammar text so far */
    cg_auto *autos;
    size_t n_autos;
    cg_memo memo[8];
    size_t n_memo;
    sl_status st;
    char msg[96];
};

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static void fail(sl_cg *g, sl_status st, const char *msg)
{
    if (g->st) return;
    g->st = st;
    snprintf(g->msg, sizeof g->msg, "%s", msg);
}

void sl_cg_oom(sl_cg *g)
{
    fail(g, SL_ERR_NOMEM, "out of memory");
}

static void too_big(sl_cg *g)
{
    char m[96];
    snprintf(m, sizeof m, "the grammar would exceed %u bytes", SL_CONSTRAINT_MAX_BYTES);
    fail(g, SL_ERR_LIMIT, m);
}

sl_cg *sl_cg_new(void)
{
    return calloc(1, sizeof(sl_cg));
}

static void free_autos_from(sl_cg *g, size_t mark)
{
    size_t k = 0;
    for (size_t i = 0; i < g->n_autos; i++) {
        if (g->autos[i].first_rule >= mark)
            free(g->autos[i].state);
        else
            g->autos[k++] = g->autos[i];
    }
    g->n_autos = k;
}

void sl_cg_free(sl_cg *g)
{
    if (!g) return;
    for (size_t i = 0; i < g->n; i++) {
        free(g->rule[i].name);
        free(g->rule[i].body);
    }
    free_autos_from(g, 0);
    free(g->autos);
    free(g->rule);
    free(g->by_body);
    free(g->by_name);
    free(g);
}

sl_status sl_cg_status(const sl_cg *g, sl_err *e)
{
    return g->st ? sl_err_set(e, g->st, "%s", g->msg) : SL_OK;
}

static void tab_put(uint32_t *tab, size_t cap, uint64_t h, size_t idx)
{
    size_t i = (size_t)h & (cap - 1);
    while (tab[i])
        i = (i + 1) & (cap - 1);
    tab[i] = (uint32_t)idx + 1;
}

/* Rebuilds both tables for cap slots (after growth or a rollback). */
static int tab_rebuild(sl_cg *g, size_t cap)
{
    uint32_t *b = calloc(cap, sizeof *b), *n = calloc(cap, sizeof *n);
    if (!b || !n) {
        free(b);
        free(n);
        return -1;
    }
    for (size_t i = 0; i < g->n; i++) {
        if (g->rule[i].body) tab_put(b, cap, g->rule[i].hash, i);
        tab_put(n, cap, hash_str(g->rule[i].name), i);
    }
    free(g->by_body);
    free(g->by_name);
    g->by_body = b;
    g->by_name = n;
    g->tab_cap = cap;
    return 0;
}

static int name_taken(const sl_cg *g, const char *name)
{
    if (!strcmp(name, "root")) return 1;
    if (!g->tab_cap) return 0;
    for (size_t i = (size_t)hash_str(name) & (g->tab_cap - 1); g->by_name[i];
         i = (i + 1) & (g->tab_cap - 1))
        if (!strcmp(g->rule[g->by_name[i] - 1].name, name)) return 1;
    return 0;
}

/* A new rule (body may be NULL: reserved) named after hint; its index, or SIZE_MAX. */
static size_t rule_new(sl_cg *g, const char *hint, const char *body)
{
    if (g->st) return SIZE_MAX;
    char base[40], name[56];
    size_t k = 0;
    for (const char *h = hint; *h && k < 32; h++) {
        char c = *h;
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (ok)
            base[k++] = c;
        else if (k && base[k - 1] != '-')
            base[k++] = '-';
    }
    while (k && base[k - 1] == '-')
        k--;
    if (!k) base[k++] = 'r';
    base[k] = 0;
    snprintf(name, sizeof name, "%s", base);
    /* a taken name gets a number; counting from the rule count keeps many rules of one hint
     * (the nodes of a trie) from trying every smaller number first */
    for (size_t i = g->n + 1; name_taken(g, name); i++)
        snprintf(name, sizeof name, "%s-%zu", base, i);

    size_t len = strlen(name) + (body ? strlen(body) : 0) + 6;
    if (g->bytes + len > SL_CONSTRAINT_MAX_BYTES) {
        too_big(g);
        return SIZE_MAX;
    }
    if (g->n + 1 > g->cap) {
        size_t cap = g->cap ? g->cap * 2 : 64;
        void *p = realloc(g->rule, cap * sizeof *g->rule);
        if (!p) return sl_cg_oom(g), SIZE_MAX;
        g->rule = p;
        g->cap = cap;
    }
    if (2 * (g->n + 1) >= g->tab_cap && tab_rebuild(g, g->tab_cap ? g->tab_cap * 2 : 128))
        return sl_cg_oom(g), SIZE_MAX;
    cg_rule *r = &g->rule[g->n];
    r->name = strdup(name);
    r->body = body ? strdup(body) : NULL;
    if (!r->name || (body && !r->body)) {
        free(r->name);
        free(r->body);
        return sl_cg_oom(g), SIZE_MAX;
    }
    r->hash = body ? hash_str(body) : 0;
    if (body) tab_put(g->by_body, g->tab_cap, r->hash, g->n);
    tab_put(g->by_name, g->tab_cap, hash_str(name), g->n);
    g->bytes += len;
    return g->n++;
}

const char *sl_cg_rule(sl_cg *g, const char *hint, const char *body)
{
    if (g->st) return "";
    uint64_t h = hash_str(body);
    if (g->tab_cap)
        for (size_t i = (size_t)h & (g->tab_cap - 1); g->by_body[i];
             i = (i + 1) & (g->tab_cap - 1)) {
            const cg_rule *r = &g->rule[g->by_body[i] - 1];
            if (r->hash == h && !strcmp(r->body, body)) return r->name;
        }
    size_t i = rule_new(g, hint, body);
    return i == SIZE_MAX ? "" : g->rule[i].name;
}

size_t sl_cg_reserve(sl_cg *g, const char *hint)
{
    return rule_new(g, hint, NULL);
}

const char *sl_cg_name(const sl_cg *g, size_t rule)
{
    return rule < g->n ? g->rule[rule].name : "";
}

void sl_cg_define(sl_cg *g, size_t rule, const char *body)
{
    if (g->st || rule >= g->n) return;
    cg_rule *r = &g->rule[rule];
    if (g->bytes + strlen(body) > SL_CONSTRAINT_MAX_BYTES) return too_big(g);
    SL_ASSERT(!r->body);
    if (!(r->body = strdup(body))) return sl_cg_oom(g);
    r->hash = hash_str(body);
    g->bytes += strlen(body);
    tab_put(g->by_body, g->tab_cap, r->hash, rule);
}

const char *sl_cg_memo(const sl_cg *g, const char *key)
{
    for (size_t i = 0; i < g->n_memo; i++)
        if (!strcmp(g->memo[i].key, key)) return g->rule[g->memo[i].rule].name;
    return NULL;
}

void sl_cg_memo_put(sl_cg *g, const char *key, const char *name)
{
    if (g->st) return;
    SL_ASSERT(g->n_memo < sizeof g->memo / sizeof g->memo[0]); /* a handful of fixed keys */
    for (size_t i = (size_t)hash_str(name) & (g->tab_cap - 1); g->by_name[i];
         i = (i + 1) & (g->tab_cap - 1))
        if (!strcmp(g->rule[g->by_name[i] - 1].name, name)) {
            g->memo[g->n_memo++] = (cg_memo){key, g->by_name[i] - 1};
            return;
        }
}

size_t sl_cg_mark(const sl_cg *g)
{
    return g->n;
}

void sl_cg_rollback(sl_cg *g, size_t mark)
{
    if (mark >= g->n) return;
    for (size_t i = mark; i < g->n; i++) {
        g->bytes -= strlen(g->rule[i].name) + (g->rule[i].body ? strlen(g->rule[i].body) : 0) + 6;
        free(g->rule[i].name);
        free(g->rule[i].body);
    }
    g->n = mark;
    free_autos_from(g, mark);
    size_t k = 0;
    for (size_t i = 0; i < g->n_memo; i++)
        if (g->memo[i].rule < mark) g->memo[k++] = g->memo[i];
    g->n_memo = k;
    if (tab_rebuild(g, g->tab_cap)) sl_cg_oom(g);
}

sl_status sl_cg_write(sl_cg *g, const char *root_body, sl_buf *out, sl_err *e)
{
    if (g->st) return sl_cg_status(g, e);
    int bad = sl_buf_printf(out, "root ::= %s\n", root_body);
    for (size_t i = 0; i < g->n && !bad; i++) {
        SL_ASSERT(g->rule[i].body); /* a reserved rule is defined before the grammar is written */
        bad = sl_buf_printf(out, "%s ::= %s\n", g->rule[i].name, g->rule[i].body);
    }
    return bad ? sl_err_set(e, SL_ERR_NOMEM, "out of memory") : SL_OK;
}

void sl_cg_putn(sl_cg *g, sl_buf *b, const char *s, size_t n)
{
    if (g->st) return;
    if (b->len + n > SL_CONSTRAINT_MAX_BYTES) return too_big(g);
    if (sl_buf_append(b, s, n)) sl_cg_oom(g);
}

void sl_cg_put(sl_cg *g, sl_buf *b, const char *s)
{
    sl_cg_putn(g, b, s, strlen(s));
}

void sl_cg_printf(sl_cg *g, sl_buf *b, const char *fmt, ...)
{
    if (g->st) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || b->len + (size_t)n > SL_CONSTRAINT_MAX_BYTES) return too_big(g);
    if (sl_buf_reserve(b, (size_t)n)) return sl_cg_oom(g);
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* JSON whitespace between tokens, bounded so that a model cannot loop on it: nothing, one
 * space, or a line break and an indent of up to 20 (pretty-printed JSON 10 levels deep). */
const char *sl_cg_space(sl_cg *g)
{
    return sl_cg_rule(g, "space", "( \" \" | \"\\n\" [ \\t]{0,20} )?");
}

/* ---- sequences of optional items (object properties, tool parameters) ----
 *
 * With items 0..n-1 and r the first required one, the text is one of
 *   item_i R(i+1)   for i = 0..r (items before i absent; all optional since i <= r)
 *   extra R(n)      when no item is required and extras are allowed
 *   (nothing)       when no item is required
 * where R(i), the rest after some item, is  [sep item_i] R(i+1)  (bracketed when optional)
 * and R(n) is (sep extra)*. Each R(i) that two places use is a rule; the others are inlined. */

void sl_cg_seq(sl_cg *g, const char *hint, const char *const *items, const int *required, size_t n,
               const char *extra, const char *sep, sl_buf *out)
{
    size_t r = 0;
    while (r < n && !required[r])
        r++;
    char rest_hint[48];
    snprintf(rest_hint, sizeof rest_hint, "%s-rest", hint);
    const char **rest = calloc(n + 2, sizeof *rest); /* rest[i]: R(i) as a rule name or text */
    char **own = calloc(n + 2, sizeof *own);         /* inlined R(i) texts to free */
    if (!rest || !own) {
        free(rest);
        free(own);
        return sl_cg_oom(g);
    }
    for (size_t i = 0; i <= n + 1; i++)
        rest[i] = "";
    sl_buf b = {0};
    for (size_t i = n; !g->st; i--) { /* R(n) down to R(1); R(0) only when n = 0 */
        sl_buf_clear(&b);
        if (i < n && !required[i]) sl_cg_put(g, &b, "( ");
        if (i == n && extra) sl_cg_put(g, &b, "( ");
        if ((i < n || extra) && *sep) {
            sl_cg_put(g, &b, sep);
            sl_cg_put(g, &b, " ");
        }
        if (i < n) {
            sl_cg_put(g, &b, items[i]);
            if (!required[i]) sl_cg_put(g, &b, " )?");
            if (*rest[i + 1]) {
                sl_cg_put(g, &b, " ");
                sl_cg_put(g, &b, rest[i + 1]);
            }
        } else if (extra) {
            sl_cg_put(g, &b, extra);
            sl_cg_put(g, &b, " )*");
        }
        if (i <= r + 1 && b.len) { /* used by an alternative below and by R(i-1) */
            rest[i] = sl_cg_rule(g, rest_hint, b.data);
        } else {
            own[i] = b.data ? strdup(b.data) : NULL;
            if (b.data && !own[i]) sl_cg_oom(g);
            rest[i] = own[i] ? own[i] : "";
        }
        if (i <= 1) break;
    }
    sl_buf alts = {0};
    int n_alts = 0;
    for (size_t i = 0; i <= r && i < n && !g->st; i++, n_alts++) {
        if (n_alts) sl_cg_put(g, &alts, " | ");
        sl_cg_put(g, &alts, items[i]);
        if (*rest[i + 1]) {
            sl_cg_put(g, &alts, " ");
            sl_cg_put(g, &alts, rest[i + 1]);
        }
    }
    if (r == n && extra && !g->st) {
        if (n_alts++) sl_cg_put(g, &alts, " | ");
        sl_cg_put(g, &alts, extra);
        if (*rest[n]) {
            sl_cg_put(g, &alts, " ");
            sl_cg_put(g, &alts, rest[n]);
        }
    }
    int optional = r == n;
    if (n_alts > 1 || (optional && n_alts)) sl_cg_put(g, out, "( ");
    if (n_alts) sl_cg_put(g, out, alts.data);
    if (n_alts > 1 || (optional && n_alts)) sl_cg_put(g, out, optional ? " )?" : " )");
    for (size_t i = 0; i <= n; i++)
        free(own[i]);
    free(own);
    free(rest);
    sl_buf_free(&b);
    sl_buf_free(&alts);
}

/* ---- writing characters ---- */

/* A code point inside a GBNF literal or class (in_class: also ] [ - ^ escaped). */
static void put_cp(sl_cg *g, sl_buf *b, uint32_t c, int in_class)
{
    char tmp[16];
    if (c == '"' || c == '\\' || (in_class && (c == ']' || c == '[' || c == '-' || c == '^'))) {
        tmp[0] = '\\';
        tmp[1] = (char)c;
        return sl_cg_putn(g, b, tmp, 2);
    }
    if (c == '\n') return sl_cg_put(g, b, "\\n");
    if (c == '\t') return sl_cg_put(g, b, "\\t");
    if (c == '\r') return sl_cg_put(g, b, "\\r");
    if (c < 0x20 || c == 0x7F)
        snprintf(tmp, sizeof tmp, "\\x%02X", c);
    else if (c < 0x80)
        snprintf(tmp, sizeof tmp, "%c", (char)c);
    else if (c <= 0xFFFF)
        snprintf(tmp, sizeof tmp, "\\u%04X", c);
    else
        snprintf(tmp, sizeof tmp, "\\U%08X", c);
    sl_cg_put(g, b, tmp);
}

/* s with the surrogates added: they have no UTF-8 form, so whether a class names them does not
 * matter, and with them a set and its complement both come out in fewer ranges. */
static void fill_surrogates(sl_cset *s)
{
    sl_cset_add(s, 0xD800, 0xDFFF);
}

/* Writes one range of a class, without the surrogates (the grammar rejects their escapes). */
static void put_range(sl_cg *g, sl_buf *b, uint32_t lo, uint32_t hi)
{
    if (lo >= 0xD800 && lo <= 0xDFFF) lo = 0xE000;
    if (hi >= 0xD800 && hi <= 0xDFFF) hi = 0xD7FF;
    if (lo > hi) return;
    put_cp(g, b, lo, 1);
    if (hi == lo) return;
    if (hi > lo + 1) sl_cg_put(g, b, "-");
    put_cp(g, b, hi, 1);
}

static int count_ranges(const sl_cset *s)
{
    int n = 0;
    for (size_t i = 0; i < s->n; i++)
        n += !(s->r[i][0] >= 0xD800 && s->r[i][1] <= 0xDFFF);
    return n;
}

/* One character of s (non-empty) as a GBNF item: a literal, [class] or [^class], whichever is
 * shorter. */
static void put_class(sl_cg *g, sl_buf *b, const sl_cset *s)
{
    sl_cset pos = {0}, neg = {0};
    sl_cset_copy(&pos, s);
    fill_surrogates(&pos);
    sl_cset_copy(&neg, &pos);
    sl_cset_invert(&neg);
    if (pos.oom || neg.oom) sl_cg_oom(g);
    if (s->n == 1 && s->r[0][0] == s->r[0][1]) {
        sl_cg_put(g, b, "\"");
        put_cp(g, b, s->r[0][0], 0);
        sl_cg_put(g, b, "\"");
    } else if (neg.n && count_ranges(&neg) < count_ranges(&pos)) {
        sl_cg_put(g, b, "[^");
        for (size_t i = 0; i < neg.n; i++)
            put_range(g, b, neg.r[i][0], neg.r[i][1]);
        sl_cg_put(g, b, "]");
    } else {
        sl_cg_put(g, b, "[");
        for (size_t i = 0; i < pos.n; i++)
            put_range(g, b, pos.r[i][0], pos.r[i][1]);
        sl_cg_put(g, b, "]");
    }
    sl_cset_free(&pos);
    sl_cset_free(&neg);
}

/* The short JSON escape letter of c (\" \\ \b \f \n \r \t), or 0. */
static char json_short_escape(uint32_t c)
{
    switch (c) {
    case '"':
        return '"';
    case '\\':
        return '\\';
    case '\b':
        return 'b';
    case '\f':
        return 'f';
    case '\n':
        return 'n';
    case '\r':
        return 'r';
    case '\t':
        return 't';
    default:
        return 0;
    }
}

/* The effective set of sp for set: within the universe, without the avoided tags' first
 * characters (only free text, which tracks the tags, may write those), and without the
 * surrogates (no UTF-8 text holds them). */
static void effective(const sl_cspell *sp, const sl_cset *set, sl_cset *out)
{
    sl_cset_copy(out, set);
    sl_cset_remove(out, 0xD800, 0xDFFF);
    if (sp->universe) cset_keep_set(out, sp->universe);
    for (const char *const *t = sp->avoid; t && *t; t++)
        sl_cset_remove(out, (unsigned char)**t, (unsigned char)**t);
}

/* One character of s (non-empty, already effective) written as sp says. */
static void put_chars(sl_cg *g, sl_buf *b, const sl_cspell *sp, const sl_cset *s)
{
    if (!sp->json) return put_class(g, b, s);
    /* in a JSON string: raw except ", \ and the control characters, which have one spelling
     * each (json.dumps(ensure_ascii=False)): a short escape, else \u00xx in lowercase hex */
    sl_cset raw = {0};
    sl_cset_copy(&raw, s);
    sl_cset_remove(&raw, 0, 0x1F);
    sl_cset_remove(&raw, '"', '"');
    sl_cset_remove(&raw, '\\', '\\');
    if (raw.oom) sl_cg_oom(g);
    char shorts[8];
    int n_short = 0, alts = raw.n > 0;
    uint32_t hex[2] = {0}; /* bit k: \u00(hi)(k) for hi = 0, 1 */
    for (uint32_t c = 0; c <= '\\'; c++) {
        if ((c > 0x1F && c != '"' && c != '\\') || !sl_cset_has(s, c)) continue;
        char e = json_short_escape(c);
        if (e)
            shorts[n_short++] = e;
        else
            hex[c >> 4] |= 1u << (c & 15);
    }
    alts += (n_short > 0) + (hex[0] != 0) + (hex[1] != 0);
    if (alts > 1) sl_cg_put(g, b, "( ");
    const char *sep = "";
    if (raw.n) {
        put_class(g, b, &raw);
        sep = " | ";
    }
    if (n_short) {
        sl_cg_put(g, b, sep);
        sl_cg_put(g, b, "\"\\\\\" ");
        sl_cset esc = {0};
        for (int i = 0; i < n_short; i++)
            sl_cset_add(&esc, (unsigned char)shorts[i], (unsigned char)shorts[i]);
        put_class(g, b, &esc);
        sl_cset_free(&esc);
        sep = " | ";
    }
    for (int hi = 0; hi < 2; hi++) {
        if (!hex[hi]) continue;
        sl_cset lo = {0};
        for (int k = 0; k < 16; k++)
            if (hex[hi] >> k & 1) {
                int d = k < 10 ? '0' + k : 'a' + k - 10;
                sl_cset_add(&lo, (uint32_t)d, (uint32_t)d);
            }
        sl_cg_printf(g, b, "%s\"\\\\u00%d\" ", sep, hi);
        put_class(g, b, &lo);
        sl_cset_free(&lo);
        sep = " | ";
    }
    if (alts > 1) sl_cg_put(g, b, " )");
    sl_cset_free(&raw);
}

int sl_cg_chars(sl_cg *g, sl_buf *b, const sl_cspell *sp, const sl_cset *set)
{
    sl_cset s = {0};
    effective(sp, set, &s);
    if (s.oom) sl_cg_oom(g);
    int empty = s.n == 0;
    if (!empty) put_chars(g, b, sp, &s);
    sl_cset_free(&s);
    return empty ? -1 : 0;
}

void sl_cg_text(sl_cg *g, sl_buf *b, const sl_cspell *sp, const char *s, size_t n)
{
    sl_cg_put(g, b, "\"");
    for (size_t i = 0; i < n;) {
        uint32_t c;
        size_t k = sl_utf8_decode(s + i, n - i, &c);
        SL_ASSERT(k); /* callers pass UTF-8 */
        if (sp->json && (c < 0x20 || c == '"' || c == '\\')) {
            /* the JSON escape, each of its characters written into the GBNF literal */
            char esc[8], e = json_short_escape(c);
            if (e)
                snprintf(esc, sizeof esc, "\\%c", e);
            else
                snprintf(esc, sizeof esc, "\\u%04x", c);
            for (const char *p = esc; *p; p++)
                put_cp(g, b, (unsigned char)*p, 0);
        } else if (c >= 0xA0) {
            sl_cg_putn(g, b, s + i, k); /* as itself: the grammar stays readable */
        } else {
            put_cp(g, b, c, 0);
        }
        i += k;
    }
    sl_cg_put(g, b, "\"");
}

int sl_cspell_allows(const sl_cspell *sp, uint32_t c)
{
    if (sp->universe && !sl_cset_has(sp->universe, c)) return 0;
    for (const char *const *t = sp->avoid; t && *t; t++)
        if ((unsigned char)**t == c) return 0;
    return 1;
}

const char *sl_cspell_tag_in(const sl_cspell *sp, const char *s, size_t n)
{
    for (const char *const *t = sp->avoid; t && *t; t++) {
        size_t k = strlen(*t);
        for (size_t i = 0; i + k <= n; i++)
            if (!memcmp(s + i, *t, k)) return *t;
    }
    return NULL;
}

/* ---- free text: no avoided tag, none of some words ----
 *
 * The avoided tags make an automaton whose states are the tag beginnings the text ends with
 * (Aho-Corasick): state "" after ordinary text, "</par" after "x </par". Reading a character
 * moves to the longest tag beginning the text then ends with; a character that would complete
 * a tag has no move. Each state is one rule: a character and the rule of the state it leads
 * to, or the end. Excluded words are a trie walked in step with the automaton: a character no
 * word continues with goes on in the automaton; the text may end anywhere but on a whole word. */

#define AUTO_MAX_STATES 64
#define AUTO_MAX_TAG 24

typedef struct tagauto {
    const char *const *avoid;
    char state[AUTO_MAX_STATES][AUTO_MAX_TAG]; /* each state's tag beginning; state 0 is "" */
    int n;
} tagauto;

static int auto_find(const tagauto *a, const char *s)
{
    for (int i = 0; i < a->n; i++)
        if (!strcmp(a->state[i], s)) return i;
    return -1;
}

static void auto_build(tagauto *a, const char *const *avoid)
{
    a->avoid = avoid;
    a->n = 1;
    a->state[0][0] = 0;
    for (const char *const *t = avoid; t && *t; t++) {
        size_t len = strlen(*t);
        SL_ASSERT(len < AUTO_MAX_TAG); /* the tags are the parsers' own constants */
        for (size_t k = 1; k < len; k++) {
            char p[AUTO_MAX_TAG];
            memcpy(p, *t, k);
            p[k] = 0;
            if (auto_find(a, p) >= 0) continue;
            SL_ASSERT(a->n < AUTO_MAX_STATES);
            memcpy(a->state[a->n++], p, k + 1);
        }
    }
}

/* The state after reading c in state s, or -1 when the text would then end with a tag. */
static int auto_step(const tagauto *a, int s, uint32_t c)
{
    if (c >= 0x80 || !c) return 0; /* tags are ASCII */
    char q[AUTO_MAX_TAG + 1];
    size_t len = strlen(a->state[s]);
    memcpy(q, a->state[s], len);
    q[len] = (char)c;
    q[len + 1] = 0;
    for (size_t i = 0; i <= len; i++)
        for (const char *const *t = a->avoid; t && *t; t++)
            if (!strcmp(q + i, *t)) return -1;
    for (size_t i = 0; i <= len; i++) { /* the longest suffix that begins a tag */
        int k = auto_find(a, q + i);
        if (k >= 0) return k;
    }
    return 0;
}

/* Appends " | chars rule" alternatives for leaving state s on a character of u: a character
 * that occurs in no tag always leads to state 0; the few tag characters are stepped one by
 * one. */
static void put_moves(sl_cg *g, sl_buf *b, const sl_cspell *sp, const tagauto *a, int s,
                      const sl_cset *u, const char *const *rules, const char **sep)
{
    sl_cset tagc = {0};
    for (const char *const *t = a->avoid; t && *t; t++)
        for (const char *c = *t; *c; c++)
            sl_cset_add(&tagc, (unsigned char)*c, (unsigned char)*c);
    for (int t = 0; t < a->n; t++) {
        sl_cset to = {0};
        if (t == 0) {
            sl_cset_copy(&to, u);
            cset_remove_set(&to, &tagc);
        }
        for (size_t i = 0; i < tagc.n; i++)
            for (uint32_t c = tagc.r[i][0]; c <= tagc.r[i][1]; c++)
                if (sl_cset_has(u, c) && auto_step(a, s, c) == t) sl_cset_add(&to, c, c);
        if (to.oom) sl_cg_oom(g);
        if (to.n) {
            sl_cg_put(g, b, *sep);
            put_chars(g, b, sp, &to);
            sl_cg_put(g, b, " ");
            sl_cg_put(g, b, rules[t]);
            *sep = " | ";
        }
        sl_cset_free(&to);
    }
    if (tagc.oom) sl_cg_oom(g);
    sl_cset_free(&tagc);
}

/* The state rules of sp's automaton over u, made once per spelling. */
static const cg_auto *auto_rules(sl_cg *g, const sl_cspell *sp, const tagauto *a, const sl_cset *u)
{
    for (size_t i = 0; i < g->n_autos; i++) {
        const cg_auto *x = &g->autos[i];
        if (x->sp.json == sp->json && x->sp.universe == sp->universe && x->sp.avoid == sp->avoid)
            return x;
    }
    void *p = realloc(g->autos, (g->n_autos + 1) * sizeof *g->autos);
    if (p) g->autos = p;
    const char **names = calloc((size_t)a->n, sizeof *names);
    if (!p || !names) {
        free(names);
        sl_cg_oom(g);
        return NULL;
    }
    size_t mark = sl_cg_mark(g);
    sl_buf body = {0};
    if (a->n == 1) { /* no tags: any characters */
        put_chars(g, &body, sp, u);
        sl_cg_put(g, &body, "*");
        names[0] = sl_cg_rule(g, sp->json ? "json-chars" : "text", body.data ? body.data : "");
    } else {
        size_t rules[AUTO_MAX_STATES];
        for (int s = 0; s < a->n; s++)
            rules[s] = sl_cg_reserve(g, sp->json ? "json-text" : "text");
        for (int s = 0; s < a->n; s++)
            names[s] = sl_cg_name(g, rules[s]);
        for (int s = 0; s < a->n && !g->st; s++) {
            const char *sep = "";
            sl_buf_clear(&body);
            put_moves(g, &body, sp, a, s, u, names, &sep);
            sl_cg_put(g, &body, " | ");
            sl_cg_define(g, rules[s], body.data ? body.data : "");
        }
    }
    sl_buf_free(&body);
    if (g->st) {
        free(names);
        return NULL;
    }
    cg_auto *x = &g->autos[g->n_autos++];
    *x = (cg_auto){*sp, mark, names};
    return x;
}

typedef struct trie {
    uint32_t c;         /* the character that leads here (lower case when folding) */
    int word;           /* a whole word ends here */
    int state;          /* automaton state after the path */
    size_t first, next; /* first child, next sibling (0: none; node 0 is the root) */
    size_t rule;
} trie;

typedef struct trie_vec {
    trie *v;
    size_t n, cap;
} trie_vec;

/* Adds word w (UTF-8); -1 when out of memory. A word that contains a tag is left out: free
 * text never spells it anyway. */
static int trie_add(trie_vec *t, const tagauto *a, const char *w, size_t wn, int fold)
{
    size_t at = 0;
    for (size_t i = 0; i < wn;) {
        uint32_t c;
        size_t k = sl_utf8_decode(w + i, wn - i, &c);
        SL_ASSERT(k);
        i += k;
        if (fold && c >= 'A' && c <= 'Z') c += 'a' - 'A';
        int st = auto_step(a, t->v[at].state, c);
        if (st < 0) return 0;
        size_t next = t->v[at].first;
        while (next && t->v[next].c != c)
            next = t->v[next].next;
        if (!next) {
            if (t->n == t->cap) {
                size_t cap = t->cap * 2;
                void *p = realloc(t->v, cap * sizeof *t->v);
                if (!p) return -1;
                t->v = p;
                t->cap = cap;
            }
            next = t->n++;
            t->v[next] = (trie){.c = c, .state = st, .next = t->v[at].first};
            t->v[at].first = next;
        }
        at = next;
    }
    t->v[at].word = 1;
    return 0;
}

/* Node's rule: a child's character and the child's rule, another character and the
 * automaton, or the end when no word ends here. */
static void trie_rule(sl_cg *g, const sl_cspell *sp, const tagauto *a, const trie_vec *t,
                      size_t node, const char *const *names, const sl_cset *u, int fold)
{
    const trie *nd = &t->v[node];
    sl_buf body = {0};
    const char *sep = "";
    sl_cset rest = {0};
    sl_cset_copy(&rest, u);
    for (size_t k = nd->first; k; k = t->v[k].next) {
        uint32_t c = t->v[k].c;
        sl_cset one = {0};
        sl_cset_add(&one, c, c);
        if (fold && c >= 'a' && c <= 'z') sl_cset_add(&one, c - 32, c - 32);
        cset_keep_set(&one, u);
        cset_remove_set(&rest, &one);
        if (one.oom) sl_cg_oom(g);
        if (one.n) {
            sl_cg_put(g, &body, sep);
            put_chars(g, &body, sp, &one);
            sl_cg_put(g, &body, " ");
            sl_cg_put(g, &body, sl_cg_name(g, t->v[k].rule));
            sep = " | ";
        }
        sl_cset_free(&one);
    }
    put_moves(g, &body, sp, a, nd->state, &rest, names, &sep);
    if (!nd->word) sl_cg_put(g, &body, " | ");
    if (rest.oom) sl_cg_oom(g);
    sl_cg_define(g, nd->rule, body.data ? body.data : "");
    sl_cset_free(&rest);
    sl_buf_free(&body);
}

const char *sl_cg_free_text(sl_cg *g, const sl_cspell *sp, const char *const *words, size_t nw,
                            int fold)
{
    if (g->st) return "";
    tagauto a;
    auto_build(&a, sp->avoid);
    sl_cset u = {0};
    if (sp->universe)
        sl_cset_copy(&u, sp->universe);
    else
        sl_cset_add(&u, 0, SL_CP_MAX);
    sl_cset_remove(&u, 0xD800, 0xDFFF);
    if (u.oom) sl_cg_oom(g);
    const cg_auto *x = auto_rules(g, sp, &a, &u);
    const char *res = "";
    trie_vec t = {malloc(16 * sizeof(trie)), 1, 16};
    if (!t.v)
        sl_cg_oom(g);
    else
        t.v[0] = (trie){0};
    for (size_t i = 0; x && t.v && !g->st && i < nw; i++)
        if (trie_add(&t, &a, words[i], strlen(words[i]), fold)) sl_cg_oom(g);
    if (x && !nw)
        res = x->state[0];
    else if (x && !g->st) {
        for (size_t i = 0; i < t.n; i++)
            t.v[i].rule = sl_cg_reserve(g, "text-except");
        for (size_t i = 0; i < t.n && !g->st; i++)
            trie_rule(g, sp, &a, &t, i, x->state, &u, fold);
        res = sl_cg_name(g, t.v[0].rule);
    }
    free(t.v);
    sl_cset_free(&u);
    return g->st ? "" : res;
}

/* GBNF text -> sl_gram (gram_impl.h): a recursive-descent parser into rules of symbol
 * sequences, quantifiers rewritten into helper rules, character classes into rules of UTF-8
 * byte sequences, then one flat element array, its byte classes, and the left-recursion check.
 * The dialect is documented in docs/grammar.md. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gram_impl.h"

/* A symbol of a parsed alternative: a byte set index, or a rule index with SYM_REF set. */
#define SYM_REF 0x80000000u

typedef struct symv {
    uint32_t *v;
    uint32_t n, cap;
} symv;

typedef struct prule {
    symv *alt;
    uint32_t n_alt, cap_alt;
    const char *name; /* into the text; NULL for the rules the parser makes */
    uint32_t name_len;
    uint32_t owner;   /* the named rule whose text made this one (itself when named) */
    int defined;
    size_t ref_at;    /* offset of the first reference (undefined-rule messages) */
    size_t def_at;
} prule;

typedef struct range {
    uint32_t lo, hi;
} range;

typedef struct parser {
    const char *s;
    size_t n, i;
    prule *rule;
    uint32_t n_rule, cap_rule;
    gram_map names; /* named rule lookup */
    uint64_t (*set)[4];
    uint32_t n_set, cap_set;
    gram_map sets;
    /* classes with non-ASCII members already made into rules: key = their ranges */
    gram_map classes;
    range **class_ranges;
    uint32_t *class_n, *class_rule, n_class, cap_class;
    size_t n_sym; /* symbols so far, against SL_GRAM_MAX_ELEMENTS */
    int depth;
    uint32_t cur; /* the named rule being parsed */
    sl_err *e;
} parser;

/* ---- errors ---- */

/* Line and column (characters, from 1) of text offset at. */
static void linecol(const parser *p, size_t at, unsigned *line, unsigned *col)
{
    *line = 1, *col = 1;
    for (size_t k = 0; k < at && k < p->n; k++) {
        if (p->s[k] == '\n')
            ++*line, *col = 1;
        else if (((uint8_t)p->s[k] & 0xC0) != 0x80)
            ++*col;
    }
}

/* "line:column: message" for text offset at. */
static sl_status perr(parser *p, size_t at, sl_status code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static sl_status perr(parser *p, size_t at, sl_status code, const char *fmt, ...)
{
    unsigned line, col;
    linecol(p, at, &line, &col);
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return sl_err_set(p->e, code, "%u:%u: %s", line, col, msg);
}

static sl_status nomem(parser *p)
{
    return sl_err_set(p->e, SL_ERR_NOMEM, "grammar: out of memory");
}

/* What stands at offset at, for "found ..." in messages. */
static const char *found(parser *p, size_t at, char buf[16])
{
    if (at >= p->n) return "the end of the grammar";
    uint8_t c = (uint8_t)p->s[at];
    if (c == '\n') return "a line break";
    if (c < 0x20 || c >= 0x7F)
        snprintf(buf, 16, "byte 0x%02X", c);
    else
        snprintf(buf, 16, "'%c'", c);
    return buf;
}

/* ---- growing arrays ---- */

static int grow(void **v, uint32_t *cap, uint32_t need, size_t size)
{
    if (need <= *cap) return 0;
    uint32_t c = *cap ? *cap : 8;
    while (c < need)
        c *= 2;
    void *nv = realloc(*v, (size_t)c * size);
    if (!nv) return -1;
    *v = nv;
    *cap = c;
    return 0;
}

static sl_status sym_push(parser *p, symv *a, uint32_t sym)
{
    if (++p->n_sym > SL_GRAM_MAX_ELEMENTS)
        return sl_err_set(p->e, SL_ERR_LIMIT,
                          "grammar too large: more than %u elements once repetitions are expanded",
                          SL_GRAM_MAX_ELEMENTS);
    if (grow((void **)&a->v, &a->cap, a->n + 1, sizeof *a->v)) return nomem(p);
    a->v[a->n++] = sym;
    return SL_OK;
}

/* A new rule made by the parser for the rule being parsed; its index, or GRAM_NONE. */
static uint32_t rule_new(parser *p)
{
    if (grow((void **)&p->rule, &p->cap_rule, p->n_rule + 1, sizeof *p->rule)) return GRAM_NONE;
    p->rule[p->n_rule] = (prule){.owner = p->cur, .defined = 1};
    return p->n_rule++;
}

/* Appends alternative a (taken over) to rule r. */
static sl_status alt_add(parser *p, uint32_t r, symv a)
{
    prule *R = &p->rule[r];
    if (grow((void **)&R->alt, &R->cap_alt, R->n_alt + 1, sizeof *R->alt)) {
        free(a.v);
        return nomem(p);
    }
    R->alt[R->n_alt++] = a;
    return SL_OK;
}

/* A rule with one alternative: syms[0..n). */
static sl_status rule_of(parser *p, const uint32_t *syms, uint32_t n, uint32_t *out)
{
    symv a = {0};
    sl_status st;
    if ((*out = rule_new(p)) == GRAM_NONE) return nomem(p);
    for (uint32_t k = 0; k < n; k++)
        if ((st = sym_push(p, &a, syms[k]))) {
            free(a.v);
            return st;
        }
    return alt_add(p, *out, a);
}

/* ---- byte sets ---- */

static uint32_t set_find(parser *p, const uint64_t s[4], uint64_t h)
{
    for (uint32_t i = gram_map_first(&p->sets, h); p->sets.val[i] != GRAM_NONE;
         i = gram_map_after(&p->sets, i))
        if (p->sets.key[i] == h && !memcmp(p->set[p->sets.val[i]], s, 32)) return p->sets.val[i];
    return GRAM_NONE;
}

/* The index of byte set s, shared by every element with the same set. */
static sl_status set_id(parser *p, const uint64_t s[4], uint32_t *out)
{
    uint64_t h = gram_hash(s, 32);
    if ((*out = set_find(p, s, h)) != GRAM_NONE) return SL_OK;
    if (grow((void **)&p->set, &p->cap_set, p->n_set + 1, sizeof *p->set) ||
        gram_map_put(&p->sets, h, p->n_set))
        return nomem(p);
    memcpy(p->set[p->n_set], s, 32);
    *out = p->n_set++;
    return SL_OK;
}

static sl_status byte_sym(parser *p, unsigned lo, unsigned hi, uint32_t *out)
{
    uint64_t s[4] = {0};
    for (unsigned b = lo; b <= hi; b++)
        s[b >> 6] |= 1ull << (b & 63);
    return set_id(p, s, out);
}

/* ---- character classes -> UTF-8 byte sequences ---- */

typedef struct useq {
    int n;
    uint8_t lo[4], hi[4];
} useq;

typedef struct useqs {
    useq *v;
    uint32_t n, cap;
} useqs;

/* Splits code points [lo, hi] (no surrogates) into runs whose UTF-8 encodings are, byte by
 * byte, ranges: [lo_b0..hi_b0][lo_b1..hi_b1]... (the construction of Russ Cox's "UTF-8 ranges").
 * Recursion depth is bounded by the few boundaries it splits at. */
static int utf8_split(uint32_t lo, uint32_t hi, useqs *out)
{
    static const uint32_t len_max[] = {0x7F, 0x7FF, 0xFFFF};
    for (int k = 0; k < 3; k++)
        if (lo <= len_max[k] && hi > len_max[k])
            return utf8_split(lo, len_max[k], out) || utf8_split(len_max[k] + 1, hi, out);
    uint8_t a[4], b[4];
    int n = gram_utf8_put(lo, a);
    for (int i = 1; i < n; i++) {
        uint32_t m = (1u << (6 * i)) - 1;
        if ((lo & ~m) != (hi & ~m)) {
            if (lo & m) return utf8_split(lo, lo | m, out) || utf8_split((lo | m) + 1, hi, out);
            if ((hi & m) != m)
                return utf8_split(lo, (hi & ~m) - 1, out) || utf8_split(hi & ~m, hi, out);
        }
    }
    gram_utf8_put(hi, b);
    if (grow((void **)&out->v, &out->cap, out->n + 1, sizeof *out->v)) return -1;
    useq *q = &out->v[out->n++];
    q->n = n;
    memcpy(q->lo, a, 4);
    memcpy(q->hi, b, 4);
    return 0;
}

static int range_cmp(const void *a, const void *b)
{
    const range *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* Sorts and merges r[0..*n), complements it when negate, and takes the surrogates out (they
 * have no UTF-8 encoding). r has room for *n + 2 ranges. */
static void ranges_normalize(range *r, uint32_t *n, int negate)
{
    qsort(r, *n, sizeof *r, range_cmp);
    uint32_t k = 0;
    for (uint32_t i = 0; i < *n; i++) {
        if (k && r[i].lo <= r[k - 1].hi + 1) {
            if (r[i].hi > r[k - 1].hi) r[k - 1].hi = r[i].hi;
        } else
            r[k++] = r[i];
    }
    if (negate) { /* the gaps between the merged ranges, in place from the front */
        uint32_t next = 0, m = 0;
        for (uint32_t i = 0; i < k; i++) {
            uint32_t lo = r[i].lo, hi = r[i].hi;
            if (lo > next) r[m++] = (range){next, lo - 1};
            next = hi + 1;
        }
        if (next <= 0x10FFFF) r[m++] = (range){next, 0x10FFFF};
        k = m;
    }
    /* cut [D800, DFFF] out: ranges inside it go, ranges across an end are clipped, and the one
     * range that may contain it whole splits in two (shifting the rest right by one) */
    uint32_t m = 0, across = GRAM_NONE;
    for (uint32_t i = 0; i < k; i++) {
        range x = r[i];
        if (x.lo >= 0xD800 && x.hi <= 0xDFFF) continue;
        if (x.lo < 0xD800 && x.hi > 0xDFFF)
            across = m;
        else if (x.lo < 0xD800 && x.hi >= 0xD800)
            x.hi = 0xD7FF;
        else if (x.lo <= 0xDFFF && x.hi > 0xDFFF)
            x.lo = 0xE000;
        r[m++] = x;
    }
    if (across != GRAM_NONE) {
        memmove(&r[across + 2], &r[across + 1], (m - across - 1) * sizeof *r);
        r[across + 1] = (range){0xE000, r[across].hi};
        r[across].hi = 0xD7FF;
        m++;
    }
    *n = m;
}

static uint32_t class_find(parser *p, const range *r, uint32_t n, uint64_t h)
{
    for (uint32_t i = gram_map_first(&p->classes, h); p->classes.val[i] != GRAM_NONE;
         i = gram_map_after(&p->classes, i)) {
        uint32_t c = p->classes.val[i];
        if (p->classes.key[i] == h && p->class_n[c] == n &&
            !memcmp(p->class_ranges[c], r, n * sizeof *r))
            return p->class_rule[c];
    }
    return GRAM_NONE;
}

/* The symbol of a class with code point ranges r[0..n) (normalized, non-empty): one byte set
 * when it is all ASCII, else a rule with one alternative per UTF-8 byte sequence (the
 * one-byte members joined into one set), shared by equal classes. */
static sl_status class_sym(parser *p, const range *r, uint32_t n, uint32_t *out)
{
    if (r[n - 1].hi < 0x80) {
        uint64_t s[4] = {0};
        for (uint32_t i = 0; i < n; i++)
            for (uint32_t b = r[i].lo; b <= r[i].hi; b++)
                s[b >> 6] |= 1ull << (b & 63);
        return set_id(p, s, out);
    }
    uint64_t h = gram_hash(r, n * sizeof *r);
    uint32_t rule = class_find(p, r, n, h);
    if (rule != GRAM_NONE) {
        *out = rule | SYM_REF;
        return SL_OK;
    }
    useqs q = {0};
    sl_status st = SL_OK;
    for (uint32_t i = 0; i < n && st == SL_OK; i++)
        if (utf8_split(r[i].lo, r[i].hi, &q)) st = nomem(p);
    if (st == SL_OK && (rule = rule_new(p)) == GRAM_NONE) st = nomem(p);
    uint64_t ascii[4] = {0};
    int has_ascii = 0;
    for (uint32_t i = 0; i < q.n && st == SL_OK; i++) {
        if (q.v[i].n == 1) {
            for (unsigned b = q.v[i].lo[0]; b <= q.v[i].hi[0]; b++)
                ascii[b >> 6] |= 1ull << (b & 63);
            has_ascii = 1;
            continue;
        }
        symv a = {0};
        for (int k = 0; k < q.v[i].n && st == SL_OK; k++) {
            uint32_t s;
            if ((st = byte_sym(p, q.v[i].lo[k], q.v[i].hi[k], &s)) == SL_OK) st = sym_push(p, &a, s);
        }
        if (st == SL_OK)
            st = alt_add(p, rule, a);
        else
            free(a.v);
    }
    if (st == SL_OK && has_ascii) {
        uint32_t s;
        symv a = {0};
        if ((st = set_id(p, ascii, &s)) == SL_OK && (st = sym_push(p, &a, s)) == SL_OK)
            st = alt_add(p, rule, a);
        else
            free(a.v);
    }
    free(q.v);
    if (st) return st;
    range *copy = malloc(n * sizeof *r);
    if (!copy || grow((void **)&p->class_ranges, &p->cap_class, p->n_class + 1, sizeof(range *))) {
        free(copy);
        return nomem(p);
    }
    uint32_t cap = p->cap_class;
    if (!(p->class_n = realloc(p->class_n, cap * sizeof *p->class_n)) ||
        !(p->class_rule = realloc(p->class_rule, cap * sizeof *p->class_rule)) ||
        gram_map_put(&p->classes, h, p->n_class)) {
        free(copy);
        return nomem(p);
    }
    memcpy(copy, r, n * sizeof *r);
    p->class_ranges[p->n_class] = copy;
    p->class_n[p->n_class] = n;
    p->class_rule[p->n_class++] = rule;
    *out = rule | SYM_REF;
    return SL_OK;
}

/* ---- lexing ---- */

static int at_end(const parser *p)
{
    return p->i >= p->n;
}

static int peek(const parser *p)
{
    return p->i < p->n ? (uint8_t)p->s[p->i] : -1;
}

static int is_name_char(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '-';
}

/* Spaces, tabs, line breaks and # comments. Line breaks are plain space: a rule ends where
 * the next one ("name ::=") begins (at_rule_start), so rules may span lines anywhere. */
static void skip_ws(parser *p)
{
    while (!at_end(p)) {
        int c = peek(p);
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n')
            p->i++;
        else if (c == '#')
            while (!at_end(p) && p->s[p->i] != '\n')
                p->i++;
        else
            break;
    }
}

static size_t name_len(const parser *p, size_t at)
{
    size_t k = at;
    while (k < p->n && is_name_char((uint8_t)p->s[k]))
        k++;
    return k - at;
}

/* 1 when a rule definition "name ::=" starts at the current offset. */
static int at_rule_start(parser *p)
{
    size_t save = p->i, len = name_len(p, p->i);
    if (!len) return 0;
    p->i += len;
    skip_ws(p);
    int yes = p->n - p->i >= 3 && !memcmp(p->s + p->i, "::=", 3);
    p->i = save;
    return yes;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* One UTF-8 character of the text at p->i, consumed. */
static sl_status text_char(parser *p, uint32_t *cp)
{
    const uint8_t *s = (const uint8_t *)p->s + p->i;
    size_t left = p->n - p->i;
    uint32_t c = s[0];
    int n = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3
                         : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    if (!n || (size_t)n > left) return perr(p, p->i, SL_ERR_PARSE, "invalid UTF-8 in the grammar");
    if (n > 1) {
        c &= 0x3Fu >> (n - 1);
        for (int k = 1; k < n; k++) {
            if ((s[k] & 0xC0) != 0x80)
                return perr(p, p->i, SL_ERR_PARSE, "invalid UTF-8 in the grammar");
            c = c << 6 | (s[k] & 0x3Fu);
        }
        static const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
        if (c < min[n] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
            return perr(p, p->i, SL_ERR_PARSE, "invalid UTF-8 in the grammar");
    }
    p->i += (size_t)n;
    *cp = c;
    return SL_OK;
}

/* A character of a literal or class: an escape or a UTF-8 character. */
static sl_status char_or_escape(parser *p, uint32_t *cp)
{
    if (peek(p) != '\\') return text_char(p, cp);
    size_t at = p->i++;
    if (at_end(p)) return perr(p, at, SL_ERR_PARSE, "expected an escape after '\\'");
    int c = peek(p), digits = 0;
    p->i++;
    switch (c) {
    case 'n': *cp = '\n'; return SL_OK;
    case 'r': *cp = '\r'; return SL_OK;
    case 't': *cp = '\t'; return SL_OK;
    case '\\': case '"': case '\'': case '[': case ']': case '-': case '^': case '/':
        *cp = (uint32_t)c;
        return SL_OK;
    case 'x': digits = 2; break;
    case 'u': digits = 4; break;
    case 'U': digits = 8; break;
    default: {
        char buf[16];
        p->i = at + 1;
        return perr(p, at, SL_ERR_PARSE,
                    "unknown escape: expected one of \\n \\r \\t \\\\ \\\" \\' \\[ \\] \\- \\^ \\/ "
                    "\\xHH \\uHHHH \\UHHHHHHHH after '\\', found %s",
                    found(p, at + 1, buf));
    }
    }
    uint32_t v = 0;
    for (int k = 0; k < digits; k++) {
        int h = hexval(peek(p));
        if (h < 0)
            return perr(p, at, SL_ERR_PARSE, "escape \\%c needs %d hex digits", c, digits);
        v = v << 4 | (uint32_t)h;
        p->i++;
    }
    if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
        return perr(p, at, SL_ERR_PARSE, "escape \\%c%0*X is not a Unicode scalar value", c,
                    digits, v);
    *cp = v;
    return SL_OK;
}

/* ---- the grammar ---- */

static sl_status parse_alts(parser *p, uint32_t rule);

static uint32_t name_find(parser *p, const char *name, size_t len, uint64_t h)
{
    for (uint32_t i = gram_map_first(&p->names, h); p->names.val[i] != GRAM_NONE;
         i = gram_map_after(&p->names, i)) {
        const prule *r = &p->rule[p->names.val[i]];
        if (p->names.key[i] == h && r->name_len == len && !memcmp(r->name, name, len))
            return p->names.val[i];
    }
    return GRAM_NONE;
}

/* The rule named text[at..at+len), made (undefined yet) on first mention. */
static sl_status rule_named(parser *p, size_t at, size_t len, uint32_t *out)
{
    const char *name = p->s + at;
    uint64_t h = gram_hash(name, len);
    if ((*out = name_find(p, name, len, h)) != GRAM_NONE) return SL_OK;
    if ((*out = rule_new(p)) == GRAM_NONE || gram_map_put(&p->names, h, *out)) return nomem(p);
    prule *r = &p->rule[*out];
    r->name = name;
    r->name_len = (uint32_t)len;
    r->owner = *out;
    r->defined = 0;
    r->ref_at = at;
    return SL_OK;
}

static sl_status parse_literal(parser *p, symv *out)
{
    size_t open = p->i++;
    sl_status st;
    for (;;) {
        if (at_end(p)) return perr(p, open, SL_ERR_PARSE, "unterminated string literal");
        if (peek(p) == '"') break;
        uint32_t cp, s;
        uint8_t u[4];
        if ((st = char_or_escape(p, &cp))) return st;
        for (int k = 0, n = gram_utf8_put(cp, u); k < n; k++)
            if ((st = byte_sym(p, u[k], u[k], &s)) || (st = sym_push(p, out, s))) return st;
    }
    p->i++;
    return SL_OK;
}

static sl_status parse_class(parser *p, symv *out)
{
    size_t open = p->i++;
    int negate = 0;
    if (peek(p) == '^') negate = 1, p->i++;
    range *r = NULL;
    uint32_t n = 0, cap = 0;
    sl_status st = SL_OK;
    while (st == SL_OK) {
        if (at_end(p)) {
            st = perr(p, open, SL_ERR_PARSE, "unterminated character class");
            break;
        }
        if (peek(p) == ']') break;
        uint32_t lo, hi;
        size_t at = p->i;
        if ((st = char_or_escape(p, &lo))) break;
        hi = lo;
        if (peek(p) == '-' && p->i + 1 < p->n && p->s[p->i + 1] != ']') {
            p->i++;
            if ((st = char_or_escape(p, &hi))) break;
            if (hi < lo) {
                st = perr(p, at, SL_ERR_PARSE, "character range is backwards (U+%04X > U+%04X)",
                          lo, hi);
                break;
            }
        }
        if (grow((void **)&r, &cap, n + 3, sizeof *r)) /* +2: room for ranges_normalize */
            st = nomem(p);
        else
            r[n++] = (range){lo, hi};
    }
    if (st == SL_OK) {
        p->i++; /* ']' */
        if (n) ranges_normalize(r, &n, negate);
        if (!n)
            st = perr(p, open, SL_ERR_PARSE, "character class matches no character");
        else {
            uint32_t sym;
            if ((st = class_sym(p, r, n, &sym)) == SL_OK) st = sym_push(p, out, sym);
        }
    }
    free(r);
    return st;
}

static sl_status parse_count(parser *p, uint32_t *v)
{
    size_t at = p->i;
    uint64_t x = 0;
    if (peek(p) < '0' || peek(p) > '9') {
        char buf[16];
        return perr(p, at, SL_ERR_PARSE, "expected a repetition count, found %s", found(p, at, buf));
    }
    while (peek(p) >= '0' && peek(p) <= '9') {
        if ((x = x * 10 + (uint64_t)(peek(p) - '0')) > SL_GRAM_MAX_REPEAT)
            return perr(p, at, SL_ERR_LIMIT, "repetition count above the limit of %d",
                        SL_GRAM_MAX_REPEAT);
        p->i++;
    }
    *v = (uint32_t)x;
    return SL_OK;
}

/* x{min,max} (max GRAM_NONE: unbounded) in place of the single symbol x at the end of out:
 * min copies, then x* as R ::= x R | (empty), or up to max - min more as the nested chain
 * O_k ::= x O_(k-1) | (empty). The recursive references are last in their alternative, so the
 * matcher replaces the frame instead of pushing one: repetition does not grow the stacks. */
static sl_status repeat(parser *p, symv *out, uint32_t min, uint32_t max)
{
    uint32_t x = out->v[--out->n];
    p->n_sym--;
    sl_status st;
    for (uint32_t k = 0; k < min; k++)
        if ((st = sym_push(p, out, x))) return st;
    if (max == min) return SL_OK;
    uint32_t tail = GRAM_NONE; /* the rule for what may follow the min copies */
    uint32_t n_opt = max == GRAM_NONE ? 1 : max - min;
    for (uint32_t k = 0; k < n_opt; k++) {
        uint32_t r = rule_new(p);
        if (r == GRAM_NONE) return nomem(p);
        symv a = {0}, empty = {0};
        uint32_t next = max == GRAM_NONE ? r : tail;
        if ((st = sym_push(p, &a, x)) || (next != GRAM_NONE && (st = sym_push(p, &a, next | SYM_REF))) ||
            (st = alt_add(p, r, a)) || (st = alt_add(p, r, empty))) {
            free(a.v);
            return st;
        }
        tail = r;
    }
    return sym_push(p, out, tail | SYM_REF);
}

/* Quantifiers after the item out[start..]: the item becomes one symbol first (a rule when it
 * is a literal of several bytes or empty). */
static sl_status parse_quant(parser *p, symv *out, uint32_t start)
{
    int c = peek(p);
    size_t at = p->i++;
    sl_status st;
    if (out->n - start != 1) {
        uint32_t r;
        if ((st = rule_of(p, out->v + start, out->n - start, &r))) return st;
        p->n_sym -= out->n - start;
        out->n = start;
        if ((st = sym_push(p, out, r | SYM_REF))) return st;
    }
    if (c == '*') return repeat(p, out, 0, GRAM_NONE);
    if (c == '+') return repeat(p, out, 1, GRAM_NONE);
    if (c == '?') return repeat(p, out, 0, 1);
    uint32_t min, max;
    skip_ws(p);
    if ((st = parse_count(p, &min))) return st;
    skip_ws(p);
    max = min;
    if (peek(p) == ',') {
        p->i++;
        skip_ws(p);
        max = GRAM_NONE;
        if (peek(p) != '}') {
            if ((st = parse_count(p, &max))) return st;
            skip_ws(p);
            if (max < min)
                return perr(p, at, SL_ERR_PARSE, "repetition {%u,%u}: the maximum is below the minimum",
                            min, max);
        }
    }
    if (peek(p) != '}') {
        char buf[16];
        return perr(p, p->i, SL_ERR_PARSE, "expected %s'}' to close the repetition, found %s",
                    max == min ? "',' or " : "", found(p, p->i, buf));
    }
    p->i++;
    return repeat(p, out, min, max);
}

/* One item: literal, class, '.', rule name or group. */
static sl_status parse_item(parser *p, symv *out)
{
    int c = peek(p);
    sl_status st;
    if (c == '"') return parse_literal(p, out);
    if (c == '[') return parse_class(p, out);
    if (c == '.') {
        p->i++;
        range any[3] = {{0, 0x10FFFF}};
        uint32_t n = 1, sym;
        ranges_normalize(any, &n, 0);
        if ((st = class_sym(p, any, n, &sym))) return st;
        return sym_push(p, out, sym);
    }
    if (c == '(') {
        size_t open = p->i++;
        if (++p->depth > SL_GRAM_MAX_NEST)
            return perr(p, open, SL_ERR_LIMIT, "groups nested deeper than %d", SL_GRAM_MAX_NEST);
        uint32_t r = rule_new(p);
        if (r == GRAM_NONE) return nomem(p);
        if ((st = parse_alts(p, r))) return st;
        if (peek(p) != ')') {
            char buf[16];
            unsigned line, col;
            linecol(p, open, &line, &col);
            return perr(p, p->i, SL_ERR_PARSE, "expected ')' to close the '(' at %u:%u, found %s",
                        line, col, found(p, p->i, buf));
        }
        p->i++;
        p->depth--;
        return sym_push(p, out, r | SYM_REF);
    }
    size_t len = name_len(p, p->i);
    if (len) {
        uint32_t r;
        if ((st = rule_named(p, p->i, len, &r))) return st;
        p->i += len;
        return sym_push(p, out, r | SYM_REF);
    }
    char buf[16];
    return perr(p, p->i, SL_ERR_PARSE,
                "expected a string, a character class, '.', a rule name or '(', found %s",
                found(p, p->i, buf));
}

/* Items up to '|', ')', the next rule or the end. */
static sl_status parse_seq(parser *p, symv *out)
{
    sl_status st;
    for (;;) {
        skip_ws(p);
        int c = peek(p);
        if (c < 0 || c == '|' || c == ')' || (is_name_char(c) && at_rule_start(p))) return SL_OK;
        uint32_t start = out->n;
        if ((st = parse_item(p, out))) return st;
        for (;;) {
            skip_ws(p);
            c = peek(p);
            if (c != '*' && c != '+' && c != '?' && c != '{') break;
            if ((st = parse_quant(p, out, start))) return st;
        }
    }
}

static sl_status parse_alts(parser *p, uint32_t rule)
{
    for (;;) {
        symv a = {0};
        sl_status st = parse_seq(p, &a);
        if (st == SL_OK) st = alt_add(p, rule, a);
        else free(a.v);
        if (st) return st;
        if (peek(p) != '|') return SL_OK;
        p->i++;
    }
}

static sl_status parse_grammar(parser *p)
{
    sl_status st;
    for (;;) {
        skip_ws(p);
        if (at_end(p)) return SL_OK;
        size_t at = p->i, len = name_len(p, at);
        char buf[16];
        if (!len) {
            if (peek(p) == ')') return perr(p, at, SL_ERR_PARSE, "unmatched ')'");
            return perr(p, at, SL_ERR_PARSE, "expected a rule name, found %s", found(p, at, buf));
        }
        p->i += len;
        skip_ws(p);
        if (p->n - p->i < 3 || memcmp(p->s + p->i, "::=", 3))
            return perr(p, p->i, SL_ERR_PARSE, "expected '::=' after the rule name '%.*s', found %s",
                        (int)(len > 64 ? 64 : len), p->s + at, found(p, p->i, buf));
        p->i += 3;
        uint32_t r;
        if ((st = rule_named(p, at, len, &r))) return st;
        if (p->rule[r].defined)
            return perr(p, at, SL_ERR_PARSE, "rule '%.*s' is defined twice", (int)(len > 64 ? 64 : len),
                        p->s + at);
        p->rule[r].defined = 1;
        p->rule[r].def_at = at;
        p->cur = r;
        if ((st = parse_alts(p, r))) return st;
        if (peek(p) == ')') return perr(p, p->i, SL_ERR_PARSE, "unmatched ')'");
    }
}

/* ---- checks and the flat form ---- */

static const prule *owner_of(const parser *p, uint32_t r)
{
    return &p->rule[p->rule[r].owner];
}

/* Every mentioned rule is defined, and root is. */
static sl_status check_defined(parser *p)
{
    for (uint32_t r = 0; r < p->n_rule; r++)
        if (!p->rule[r].defined)
            return perr(p, p->rule[r].ref_at, SL_ERR_PARSE, "undefined rule '%.*s'",
                        (int)(p->rule[r].name_len > 64 ? 64 : p->rule[r].name_len), p->rule[r].name);
    uint32_t root = name_find(p, "root", 4, gram_hash("root", 4));
    if (root == GRAM_NONE)
        return sl_err_set(p->e, SL_ERR_PARSE, "grammar has no rule named 'root' (the start rule)");
    p->cur = root;
    return SL_OK;
}

/* Left recursion: a rule that can reach itself before matching a byte, with something left to
 * match after the inner reference, would push a frame per expansion forever. Edges A -> B for
 * every reference to B that may come first in an alternative of A (only nullable rules before
 * it); an edge is a push when the reference is not last in its alternative. A push edge inside
 * a strongly connected component is left recursion; cycles of last-position references are
 * harmless (the matcher replaces frames there, and its expansion stops at states it has seen:
 * (x?)* is fine). */
typedef struct edge {
    uint32_t to, push;
} edge;

static sl_status check_left_recursion(parser *p)
{
    uint32_t nr = p->n_rule, n_alt = 0;
    sl_status st = SL_OK;
    for (uint32_t r = 0; r < nr; r++)
        n_alt += p->rule[r].n_alt;
    uint8_t *nullable = calloc(nr, 1);
    uint32_t *alt_rule = malloc((size_t)n_alt * sizeof *alt_rule), *left = malloc((size_t)n_alt * 4);
    uint32_t *occ_off = calloc((size_t)nr + 1, 4), *occ = NULL, *queue = malloc((size_t)nr * 4);
    uint32_t *edge_off = calloc((size_t)nr + 1, 4), *comp = malloc((size_t)nr * 4);
    uint32_t *idx = malloc((size_t)nr * 4), *low = malloc((size_t)nr * 4);
    uint32_t *stk = malloc((size_t)nr * 4), *call = malloc((size_t)nr * 4), *iter = malloc((size_t)nr * 4);
    uint8_t *on = calloc(nr, 1);
    edge *ed = NULL;
    if (!nullable || !alt_rule || !left || !occ_off || !queue || !edge_off || !comp || !idx ||
        !low || !stk || !call || !iter || !on) {
        st = nomem(p);
        goto out;
    }
    /* nullable rules: an alternative is empty once all its symbols are nullable references */
    uint32_t a = 0, n_occ = 0, qn = 0;
    for (uint32_t r = 0; r < nr; r++)
        for (uint32_t k = 0; k < p->rule[r].n_alt; k++, a++) {
            const symv *al = &p->rule[r].alt[k];
            alt_rule[a] = r;
            left[a] = al->n;
            for (uint32_t i = 0; i < al->n; i++)
                if (al->v[i] & SYM_REF) occ_off[(al->v[i] & ~SYM_REF) + 1]++, n_occ++;
            if (!al->n && !nullable[r]) nullable[r] = 1, queue[qn++] = r;
        }
    for (uint32_t r = 0; r < nr; r++)
        occ_off[r + 1] += occ_off[r];
    if (!(occ = malloc((size_t)n_occ * 4 + 4))) {
        st = nomem(p);
        goto out;
    }
    a = 0;
    for (uint32_t r = 0; r < nr; r++) /* occ: the alternatives mentioning each rule */
        for (uint32_t k = 0; k < p->rule[r].n_alt; k++, a++) {
            const symv *al = &p->rule[r].alt[k];
            for (uint32_t i = 0; i < al->n; i++)
                if (al->v[i] & SYM_REF) occ[occ_off[al->v[i] & ~SYM_REF]++] = a;
        }
    for (uint32_t r = nr; r > 0; r--) /* undo the fill's shift */
        occ_off[r] = occ_off[r - 1];
    occ_off[0] = 0;
    for (uint32_t qi = 0; qi < qn; qi++)
        for (uint32_t o = occ_off[queue[qi]]; o < occ_off[queue[qi] + 1]; o++)
            if (--left[occ[o]] == 0 && !nullable[alt_rule[occ[o]]])
                nullable[alt_rule[occ[o]]] = 1, queue[qn++] = alt_rule[occ[o]];
    /* the edges, grouped by source */
    uint32_t n_edge = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t r = 0; r < nr; r++)
            for (uint32_t k = 0; k < p->rule[r].n_alt; k++) {
                const symv *al = &p->rule[r].alt[k];
                for (uint32_t i = 0; i < al->n && (al->v[i] & SYM_REF); i++) {
                    uint32_t b = al->v[i] & ~SYM_REF;
                    if (pass)
                        ed[edge_off[r]++] = (edge){b, i + 1 < al->n};
                    else
                        edge_off[r + 1]++, n_edge++;
                    if (!nullable[b]) break;
                }
            }
        if (!pass) {
            for (uint32_t r = 0; r < nr; r++)
                edge_off[r + 1] += edge_off[r];
            if (!(ed = malloc((size_t)n_edge * sizeof *ed + sizeof *ed))) {
                st = nomem(p);
                goto out;
            }
        }
    }
    for (uint32_t r = nr; r > 0; r--)
        edge_off[r] = edge_off[r - 1];
    edge_off[0] = 0;
    /* Tarjan's strongly connected components, with an explicit call stack */
    uint32_t counter = 0, sp = 0, n_comp = 0;
    for (uint32_t r = 0; r < nr; r++)
        idx[r] = GRAM_NONE;
    for (uint32_t root = 0; root < nr; root++) {
        if (idx[root] != GRAM_NONE) continue;
        uint32_t depth = 0;
        call[depth++] = root;
        idx[root] = low[root] = counter++;
        iter[root] = edge_off[root];
        stk[sp++] = root;
        on[root] = 1;
        while (depth) {
            uint32_t v = call[depth - 1];
            if (iter[v] < edge_off[v + 1]) {
                uint32_t w = ed[iter[v]++].to;
                if (idx[w] == GRAM_NONE) {
                    idx[w] = low[w] = counter++;
                    iter[w] = edge_off[w];
                    stk[sp++] = w;
                    on[w] = 1;
                    call[depth++] = w;
                } else if (on[w] && idx[w] < low[v])
                    low[v] = idx[w];
                continue;
            }
            if (low[v] == idx[v]) {
                uint32_t w;
                do {
                    w = stk[--sp];
                    on[w] = 0;
                    comp[w] = n_comp;
                } while (w != v);
                n_comp++;
            }
            if (--depth && low[v] < low[call[depth - 1]]) low[call[depth - 1]] = low[v];
        }
    }
    for (uint32_t r = 0; r < nr && st == SL_OK; r++)
        for (uint32_t k = edge_off[r]; k < edge_off[r + 1]; k++) {
            if (!ed[k].push || comp[ed[k].to] != comp[r]) continue;
            const prule *x = owner_of(p, r), *y = owner_of(p, ed[k].to);
            if (x == y)
                st = sl_err_set(p->e, SL_ERR_PARSE,
                                "rule '%.*s' is left-recursive: it can reach itself again before "
                                "matching any character (write the repetition with * or +)",
                                (int)(x->name_len > 64 ? 64 : x->name_len), x->name);
            else
                st = sl_err_set(p->e, SL_ERR_PARSE,
                                "rules '%.*s' and '%.*s' are left-recursive: each can reach the "
                                "other before matching any character (write the repetition with * or +)",
                                (int)(x->name_len > 64 ? 64 : x->name_len), x->name,
                                (int)(y->name_len > 64 ? 64 : y->name_len), y->name);
            break;
        }
out:
    free(nullable), free(alt_rule), free(left), free(occ_off), free(occ), free(queue);
    free(edge_off), free(comp), free(idx), free(low), free(stk), free(call), free(iter), free(on);
    free(ed);
    return st;
}

/* The byte classes: bytes that every set contains or lacks together (refined set by set). */
static void byte_classes(sl_gram *g)
{
    uint8_t next[256];
    uint16_t map[512];
    uint32_t n = 1;
    memset(g->cls, 0, sizeof g->cls);
    for (uint32_t s = 0; s < g->n_sets && n < 256; s++) {
        uint32_t m = 0;
        memset(map, 0xFF, sizeof map);
        for (unsigned b = 0; b < 256; b++) {
            unsigned k = g->cls[b] * 2u + (unsigned)gram_set_has(g, s, b);
            if (map[k] == 0xFFFF) map[k] = (uint16_t)m++;
            next[b] = (uint8_t)map[k];
        }
        memcpy(g->cls, next, sizeof next);
        n = m;
    }
    for (int b = 255; b >= 0; b--)
        g->cls_byte[g->cls[b]] = (uint8_t)b;
    g->n_cls = n;
}

static sl_status build(parser *p, sl_gram *g)
{
    uint32_t n_alt = 0, n_el = 0;
    for (uint32_t r = 0; r < p->n_rule; r++) {
        n_alt += p->rule[r].n_alt;
        for (uint32_t k = 0; k < p->rule[r].n_alt; k++)
            n_el += p->rule[r].alt[k].n + 1;
    }
    g->n_rules = p->n_rule;
    g->root = p->cur;
    g->n_el = n_el;
    g->el = malloc((size_t)n_el * sizeof *g->el);
    g->alt_off = malloc(((size_t)p->n_rule + 1) * sizeof *g->alt_off);
    g->alt_pos = malloc((size_t)n_alt * sizeof *g->alt_pos + 4);
    g->set = malloc((size_t)p->n_set * sizeof *g->set + 32);
    if (!g->el || !g->alt_off || !g->alt_pos || !g->set) return nomem(p);
    if (p->n_set) memcpy(g->set, p->set, (size_t)p->n_set * sizeof *g->set); /* none: NULL */
    g->n_sets = p->n_set;
    uint32_t a = 0, at = 0;
    for (uint32_t r = 0; r < p->n_rule; r++) {
        g->alt_off[r] = a;
        for (uint32_t k = 0; k < p->rule[r].n_alt; k++) {
            const symv *al = &p->rule[r].alt[k];
            g->alt_pos[a++] = at;
            for (uint32_t i = 0; i < al->n; i++)
                g->el[at++] = al->v[i] & SYM_REF ? (gel){GEL_REF, al->v[i] & ~SYM_REF}
                                                  : (gel){GEL_BYTES, al->v[i]};
            g->el[at++] = (gel){GEL_END, 0};
        }
    }
    g->alt_off[p->n_rule] = a;
    byte_classes(g);
    return SL_OK;
}

static void parser_free(parser *p)
{
    for (uint32_t r = 0; r < p->n_rule; r++) {
        for (uint32_t k = 0; k < p->rule[r].n_alt; k++)
            free(p->rule[r].alt[k].v);
        free(p->rule[r].alt);
    }
    for (uint32_t c = 0; c < p->n_class; c++)
        free(p->class_ranges[c]);
    free(p->rule), free(p->set), free(p->class_ranges), free(p->class_n), free(p->class_rule);
    gram_map_free(&p->names), gram_map_free(&p->sets), gram_map_free(&p->classes);
}

static void mask_drop(void *value)
{
    free(value);
}

sl_status sl_gram_compile(const char *text, size_t len, sl_gram **out, sl_err *e)
{
    *out = NULL;
    if (!text && len) return sl_err_set(e, SL_ERR_INVALID, "grammar: NULL text");
    if (len > SL_GRAM_MAX_TEXT)
        return sl_err_set(e, SL_ERR_LIMIT, "grammar: %zu bytes, above the limit of %u", len,
                          SL_GRAM_MAX_TEXT);
    parser p = {.s = text, .n = len, .e = e};
    sl_gram *g = calloc(1, sizeof *g);
    sl_status st = SL_OK;
    if (!g || gram_map_init(&p.names, 64) || gram_map_init(&p.sets, 64) ||
        gram_map_init(&p.classes, 16))
        st = nomem(&p);
    if (st == SL_OK) st = parse_grammar(&p);
    if (st == SL_OK) st = check_defined(&p);
    if (st == SL_OK) st = check_left_recursion(&p);
    if (st == SL_OK) st = build(&p, g);
    parser_free(&p);
    if (st) {
        if (g) {
            free(g->el), free(g->alt_off), free(g->alt_pos), free(g->set);
            free(g);
        }
        return st;
    }
    atomic_init(&g->refs, 1);
    pthread_mutex_init(&g->mu, NULL);
    gram_lru_init(&g->masks, SL_GRAM_MASK_CACHE_DEFAULT, mask_drop);
    *out = g;
    return SL_OK;
}

sl_gram *sl_gram_ref(sl_gram *g)
{
    atomic_fetch_add(&g->refs, 1);
    return g;
}

void sl_gram_free(sl_gram *g)
{
    if (!g || atomic_fetch_sub(&g->refs, 1) != 1) return;
    gram_lru_free(&g->masks);
    pthread_mutex_destroy(&g->mu);
    free(g->el), free(g->alt_off), free(g->alt_pos), free(g->set);
    free(g);
}

void sl_gram_set_mask_cache(sl_gram *g, size_t bytes)
{
    pthread_mutex_lock(&g->mu);
    gram_lru_set_limit(&g->masks, bytes);
    pthread_mutex_unlock(&g->mu);
}

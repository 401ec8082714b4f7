/* constraint_regex.c: a regular expression as a GBNF expression (sl_constraint_regex, and
 * the `pattern` of JSON Schema strings through sl_cre_expr).
 *
 * A recursive-descent parser writes GBNF as it reads: literals, classes, groups, alternation
 * and counted repetition map one to one onto GBNF; anything whose language a context-free
 * grammar cannot state (backreferences, lookaround) or whose meaning is unclear is refused
 * with the construct's name and offset.
 *
 * Classes are code point sets. In `pattern` (search = 1) \d \w \s mean different things to
 * ECMA-262, which JSON Schema names, and to Python's re, which Python validators use (Unicode
 * digits, letters and spaces), so every class carries two sets: lo, the characters both
 * engines match, and hi, those either may match. A class is written as its lo set, and negation
 * swaps and complements them (the complement of "possibly" is "surely not"), so the grammar
 * accepts only text both agree on. Outside `pattern` the shorthands are ASCII and lo = hi. */
#include <stdlib.h>
#include <string.h>

#include "constraint.h"
#include "constraint_impl.h"

#define RX_MAX_NEST 64 /* group nesting: the grammar engine allows 200 with its own groups */

typedef struct rx {
    sl_cg *g;
    const sl_cspell *sp;
    const char *s;
    size_t n, i;
    int search; /* JSON Schema pattern: unanchored, ECMA ∩ Python classes */
    int depth;
    sl_err *e;
} rx;

typedef struct cls {
    sl_cset lo, hi;
} cls;

static void cls_free(cls *c)
{
    sl_cset_free(&c->lo);
    sl_cset_free(&c->hi);
}

static void cls_negate(cls *c)
{
    sl_cset t = c->lo;
    c->lo = c->hi;
    c->hi = t;
    sl_cset_invert(&c->lo);
    sl_cset_invert(&c->hi);
}

static sl_status rx_err(rx *r, size_t at, const char *what, const char *why)
{
    return sl_err_set(r->e, SL_ERR_INVALID, "regex: %s at offset %zu%s%s", what, at,
                      why ? ": " : "", why ? why : "");
}

static int peek(const rx *r)
{
    return r->i < r->n ? (unsigned char)r->s[r->i] : -1;
}

static int is_digit(int c)
{
    return c >= '0' && c <= '9';
}

/* Python's re matches \d to every Unicode decimal digit (category Nd): these ranges (Unicode
 * 15.0, from utf8proc 2.8; a superset of the Unicode 14 in Python 3.11) are what \d may match
 * in a pattern, so \D keeps clear of them. */
static const uint32_t unicode_digits[][2] = {
    {0x30, 0x39},       {0x660, 0x669},     {0x6F0, 0x6F9},     {0x7C0, 0x7C9},
    {0x966, 0x96F},     {0x9E6, 0x9EF},     {0xA66, 0xA6F},     {0xAE6, 0xAEF},
    {0xB66, 0xB6F},     {0xBE6, 0xBEF},     {0xC66, 0xC6F},     {0xCE6, 0xCEF},
    {0xD66, 0xD6F},     {0xDE6, 0xDEF},     {0xE50, 0xE59},     {0xED0, 0xED9},
    {0xF20, 0xF29},     {0x1040, 0x1049},   {0x1090, 0x1099},   {0x17E0, 0x17E9},
    {0x1810, 0x1819},   {0x1946, 0x194F},   {0x19D0, 0x19D9},   {0x1A80, 0x1A89},
    {0x1A90, 0x1A99},   {0x1B50, 0x1B59},   {0x1BB0, 0x1BB9},   {0x1C40, 0x1C49},
    {0x1C50, 0x1C59},   {0xA620, 0xA629},   {0xA8D0, 0xA8D9},   {0xA900, 0xA909},
    {0xA9D0, 0xA9D9},   {0xA9F0, 0xA9F9},   {0xAA50, 0xAA59},   {0xABF0, 0xABF9},
    {0xFF10, 0xFF19},   {0x104A0, 0x104A9}, {0x10D30, 0x10D39}, {0x11066, 0x1106F},
    {0x110F0, 0x110F9}, {0x11136, 0x1113F}, {0x111D0, 0x111D9}, {0x112F0, 0x112F9},
    {0x11450, 0x11459}, {0x114D0, 0x114D9}, {0x11650, 0x11659}, {0x116C0, 0x116C9},
    {0x11730, 0x11739}, {0x118E0, 0x118E9}, {0x11950, 0x11959}, {0x11C50, 0x11C59},
    {0x11D50, 0x11D59}, {0x11DA0, 0x11DA9}, {0x11F50, 0x11F59}, {0x16A60, 0x16A69},
    {0x16AC0, 0x16AC9}, {0x16B50, 0x16B59}, {0x1D7CE, 0x1D7FF}, {0x1E140, 0x1E149},
    {0x1E2F0, 0x1E2F9}, {0x1E4F0, 0x1E4F9}, {0x1E950, 0x1E959}, {0x1FBF0, 0x1FBF9},
};

/* The white space both engines match (ECMA-262's WhiteSpace and LineTerminator and Python's
 * str.isspace() share these), and what only one of them does: Python also \x1c-\x1f and
 * U+0085, ECMA-262 also U+FEFF. */
static const uint32_t spaces_both[][2] = {{0x09, 0x0D},     {0x20, 0x20},     {0xA0, 0xA0},
                                          {0x1680, 0x1680}, {0x2000, 0x200A}, {0x2028, 0x2029},
                                          {0x202F, 0x202F}, {0x205F, 0x205F}, {0x3000, 0x3000}};
static const uint32_t spaces_either[][2] = {{0x1C, 0x1F}, {0x85, 0x85}, {0xFEFF, 0xFEFF}};

#define ADD_ALL(set, table)                                                                        \
    for (size_t i_ = 0; i_ < sizeof table / sizeof table[0]; i_++)                                 \
    sl_cset_add(set, table[i_][0], table[i_][1])

/* \d \w \s (upper case: negated) into c. Outside patterns they are ASCII (re.ASCII). In a
 * pattern lo is what both engines match and hi what either may: \d is [0-9] in ECMA-262 and
 * every Unicode digit in Python; \s as above; \w is ASCII in ECMA-262 and every Unicode
 * letter and digit in Python, taken here as every non-ASCII character (so \W keeps to ASCII:
 * the table of letters would be larger than the grammars it serves). */
static void shorthand(const rx *r, int letter, cls *c)
{
    int lower = letter | 0x20;
    if (lower == 'd') sl_cset_add(&c->lo, '0', '9');
    if (lower == 'w') {
        sl_cset_add(&c->lo, '0', '9');
        sl_cset_add(&c->lo, 'A', 'Z');
        sl_cset_add(&c->lo, 'a', 'z');
        sl_cset_add(&c->lo, '_', '_');
    }
    if (lower == 's') {
        sl_cset_add(&c->lo, '\t', '\r');
        sl_cset_add(&c->lo, ' ', ' ');
        if (r->search) ADD_ALL(&c->lo, spaces_both);
    }
    sl_cset_copy(&c->hi, &c->lo);
    if (r->search && lower == 'd') ADD_ALL(&c->hi, unicode_digits);
    if (r->search && lower == 's') ADD_ALL(&c->hi, spaces_either);
    if (r->search && lower == 'w') sl_cset_add(&c->hi, 0x80, SL_CP_MAX);
    if (letter != lower) cls_negate(c);
}

/* n hex digits at r->i into *cp; -1 when they are not there. */
static int hex_digits(rx *r, int n, uint32_t *cp)
{
    uint32_t v = 0;
    for (int k = 0; k < n; k++) {
        int c = peek(r);
        int d = is_digit(c)                              ? c - '0'
                : (c | 0x20) >= 'a' && (c | 0x20) <= 'f' ? (c | 0x20) - 'a' + 10
                                                         : -1;
        if (d < 0) return -1;
        v = v << 4 | (uint32_t)d;
        r->i++;
    }
    *cp = v;
    return 0;
}

/* After a backslash: a single character (*cp set, returns 1), a shorthand class (c filled,
 * returns 2), or an error (returns 0 with e set). in_class: \b is a backspace there. */
static int escape(rx *r, int in_class, uint32_t *cp, cls *c, sl_status *st)
{
    size_t at = r->i - 1;
    int ch = peek(r);
    if (ch < 0) return *st = rx_err(r, at, "a trailing backslash", NULL), 0;
    r->i++;
    switch (ch) {
    case 'd':
    case 'D':
    case 'w':
    case 'W':
    case 's':
    case 'S':
        shorthand(r, ch, c);
        return 2;
    case 'n':
        *cp = '\n';
        return 1;
    case 'r':
        *cp = '\r';
        return 1;
    case 't':
        *cp = '\t';
        return 1;
    case 'f':
        *cp = '\f';
        return 1;
    case 'v':
        *cp = '\v';
        return 1;
    case '0':
        if (is_digit(peek(r))) break; /* octal: below */
        *cp = 0;
        return 1;
    case 'x':
    case 'u':
    case 'U':
        if (hex_digits(r,
                       ch == 'x'   ? 2
                       : ch == 'u' ? 4
                                   : 8,
                       cp) ||
            *cp > SL_CP_MAX || (*cp >= 0xD800 && *cp <= 0xDFFF))
            return *st = rx_err(r, at, "a bad \\x/\\u/\\U escape",
                                "expected 2, 4 or 8 hex digits naming a Unicode scalar value"),
                   0;
        return 1;
    case 'b':
        if (in_class) {
            *cp = '\b';
            return 1;
        }
        return *st = rx_err(r, at, "unsupported word boundary \\b", NULL), 0;
    default:
        break;
    }
    if (ch >= '1' && ch <= '9')
        return *st = rx_err(r, at, "unsupported backreference",
                            "a grammar cannot repeat earlier text"),
               0;
    if (ch == '0') return *st = rx_err(r, at, "unsupported octal escape", "use \\xHH"), 0;
    if (ch == 'B' || ch == 'A' || ch == 'Z' || ch == 'z' || ch == 'G')
        return *st = rx_err(r, at, "unsupported anchor escape", "use ^ and $ at the ends"), 0;
    if (ch == 'k') return *st = rx_err(r, at, "unsupported named backreference \\k", NULL), 0;
    if (ch == 'p' || ch == 'P')
        return *st = rx_err(r, at, "unsupported Unicode property class \\p", NULL), 0;
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch >= 0x80) {
        char what[40];
        snprintf(what, sizeof what, "unsupported escape \\%c", ch < 0x80 ? ch : '?');
        return *st = rx_err(r, at, what, NULL), 0;
    }
    *cp = (uint32_t)ch; /* escaped punctuation stands for itself */
    return 1;
}

/* One literal character at r->i (UTF-8); 0 with e set when it is not UTF-8. */
static int literal_char(rx *r, uint32_t *cp, sl_status *st)
{
    size_t k = sl_utf8_decode(r->s + r->i, r->n - r->i, cp);
    if (!k) return *st = rx_err(r, r->i, "invalid UTF-8", NULL), 0;
    r->i += k;
    return 1;
}

/* A [class] (r->i after '['). */
static sl_status parse_class(rx *r, cls *out)
{
    size_t open = r->i - 1;
    int negate = peek(r) == '^';
    if (negate) r->i++;
    if (peek(r) == ']')
        return rx_err(r, r->i, "a ']' first in a class",
                      "ECMA-262 reads [] as empty and Python as a literal ']': write \\]");
    sl_status st = SL_OK;
    while (peek(r) != ']') {
        size_t at = r->i;
        if (peek(r) < 0) return rx_err(r, open, "an unterminated character class", NULL);
        if (peek(r) == '[' && r->i + 1 < r->n && strchr(":=.", r->s[r->i + 1]))
            return rx_err(r, at, "an unsupported POSIX class", NULL);
        uint32_t lo, hi;
        cls sh = {0};
        int kind;
        if (peek(r) == '\\') {
            r->i++;
            kind = escape(r, 1, &lo, &sh, &st);
        } else {
            kind = literal_char(r, &lo, &st);
        }
        if (!kind) return cls_free(&sh), st;
        if (kind == 2) {
            sl_cset_add_set(&out->lo, &sh.lo);
            sl_cset_add_set(&out->hi, &sh.hi);
            cls_free(&sh);
            if (peek(r) == '-' && r->i + 1 < r->n && r->s[r->i + 1] != ']')
                return rx_err(r, r->i, "a range from a class shorthand", NULL);
            continue;
        }
        hi = lo;
        if (peek(r) == '-' && r->i + 1 < r->n && r->s[r->i + 1] != ']') {
            r->i++;
            if (peek(r) == '\\') {
                r->i++;
                kind = escape(r, 1, &hi, &sh, &st);
            } else {
                kind = literal_char(r, &hi, &st);
            }
            if (!kind) return cls_free(&sh), st;
            if (kind == 2)
                return cls_free(&sh), rx_err(r, at, "a range to a class shorthand", NULL);
            if (hi < lo) return rx_err(r, at, "a backwards range", NULL);
        }
        sl_cset_add(&out->lo, lo, hi);
        sl_cset_add(&out->hi, lo, hi);
    }
    r->i++;
    if (negate) cls_negate(out);
    return SL_OK;
}

/* Top-level items of GBNF text t: 1 for one item without a quantifier after it ("a", [..],
 * name, ( .. )), more for a sequence, an alternation or a quantified item. */
static int single_item(const char *t)
{
    int items = 0;
    for (const char *p = t; *p;) {
        if (*p == ' ') {
            p++;
            continue;
        }
        if (*p == '|' || *p == '*' || *p == '+' || *p == '?' || *p == '{') return 0;
        items++;
        if (*p == '"' || *p == '[') {
            char close = *p == '"' ? '"' : ']';
            for (p++; *p && *p != close; p++)
                if (*p == '\\' && p[1]) p++;
            if (*p) p++;
        } else if (*p == '(') {
            int depth = 0;
            for (; *p; p++) {
                if (*p == '"' || *p == '[') {
                    char close = *p == '"' ? '"' : ']';
                    for (p++; *p && *p != close; p++)
                        if (*p == '\\' && p[1]) p++;
                } else if (*p == '(')
                    depth++;
                else if (*p == ')' && --depth == 0)
                    break;
            }
            if (*p) p++;
        } else {
            while (*p && *p != ' ')
                p++;
        }
    }
    return items == 1;
}

/* A literal with nothing after it: pieces like this join ("ab" rather than "a" "b"). */
static int bare_literal(const char *t)
{
    size_t n = strlen(t);
    return n >= 2 && t[0] == '"' && t[n - 1] == '"' && single_item(t);
}

/* Appends piece to seq with a space, or into seq's last literal when both are bare literals
 * (*lit: seq ends with one). */
static void seq_add(sl_cg *g, sl_buf *seq, const char *piece, int *lit)
{
    if (!*piece) return;
    int bare = bare_literal(piece);
    if (*lit && bare) {
        seq->data[--seq->len] = 0; /* drop seq's closing quote and piece's opening one */
        sl_cg_put(g, seq, piece + 1);
        return;
    }
    if (seq->len) sl_cg_put(g, seq, " ");
    sl_cg_put(g, seq, piece);
    *lit = bare;
}

static sl_status parse_alt(rx *r, sl_buf *out, int top);

/* A counted quantifier {m}, {m,}, {m,n} or {,n} at r->i: 1 with *a, *b (-1: unbounded; *a
 * -1 for {,n}; counts clamped above the limit) and *end after the '}'; 0 when the '{' there is
 * a literal. */
static int brace_quant(const rx *r, long *a, long *b, size_t *end)
{
    size_t j = r->i + 1;
    int da = 0, db = 0;
    *a = 0;
    for (; j < r->n && is_digit(r->s[j]); j++, da++) /* clamped: only "too big" matters */
        *a = *a > SL_CONSTRAINT_MAX_REPEAT ? *a : *a * 10 + (r->s[j] - '0');
    *b = *a;
    if (j < r->n && r->s[j] == ',') {
        j++;
        *b = 0;
        for (; j < r->n && is_digit(r->s[j]); j++, db++)
            *b = *b > SL_CONSTRAINT_MAX_REPEAT ? *b : *b * 10 + (r->s[j] - '0');
        if (!db) *b = -1;
    } else {
        db = da;
    }
    if (j >= r->n || r->s[j] != '}' || (!da && !db)) return 0;
    if (!da) *a = -1;
    *end = j + 1;
    return 1;
}

static int at_quantifier(const rx *r)
{
    long a, b;
    size_t end;
    int c = peek(r);
    return c == '*' || c == '+' || c == '?' || (c == '{' && brace_quant(r, &a, &b, &end));
}

/* The quantifier after an atom, if any, into *min, *max (-1: unbounded); none leaves them. */
static sl_status parse_quant(rx *r, long *min, long *max)
{
    int c = peek(r);
    size_t at = r->i, end;
    long a, b;
    if (c == '*' || c == '+' || c == '?') {
        r->i++;
        *min = c == '+';
        *max = c == '?' ? 1 : -1;
    } else if (c == '{' && brace_quant(r, &a, &b, &end)) {
        if (a < 0) return rx_err(r, at, "a {,n} quantifier", "engines disagree on it: write {0,n}");
        if (a > SL_CONSTRAINT_MAX_REPEAT || b > SL_CONSTRAINT_MAX_REPEAT)
            return sl_err_set(r->e, SL_ERR_LIMIT,
                              "regex: a repetition count above %d at offset %zu",
                              SL_CONSTRAINT_MAX_REPEAT, at);
        if (b >= 0 && b < a) return rx_err(r, at, "a {m,n} quantifier with n < m", NULL);
        r->i = end;
        *min = a;
        *max = b;
    } else {
        return SL_OK;
    }
    if (peek(r) == '?')
        r->i++; /* lazy: the same language */
    else if (peek(r) == '+') {
        if (r->search)
            return rx_err(r, r->i, "a possessive quantifier", "ECMA-262 patterns have none");
        r->i++; /* read as greedy: see constraint.h */
    }
    if (at_quantifier(r)) return rx_err(r, r->i, "a repeated quantifier", NULL);
    return SL_OK;
}

/* Appends atom quantified to piece. */
static void quantify(sl_cg *g, sl_buf *piece, const char *atom, long min, long max)
{
    if (!*atom || max == 0) return;
    if (min == 1 && max == 1) return sl_cg_put(g, piece, atom);
    int wrap = !single_item(atom);
    if (wrap) sl_cg_put(g, piece, "( ");
    sl_cg_put(g, piece, atom);
    if (wrap) sl_cg_put(g, piece, " )");
    if (min == 0 && max == 1)
        sl_cg_put(g, piece, "?");
    else if (min == 0 && max < 0)
        sl_cg_put(g, piece, "*");
    else if (min == 1 && max < 0)
        sl_cg_put(g, piece, "+");
    else if (max < 0)
        sl_cg_printf(g, piece, "{%ld,}", min);
    else if (min == max)
        sl_cg_printf(g, piece, "{%ld}", min);
    else
        sl_cg_printf(g, piece, "{%ld,%ld}", min, max);
}

/* One character c as text, or an error when the spelling cannot write it. */
static sl_status put_char(rx *r, sl_buf *atom, uint32_t c, size_t at)
{
    if (!sl_cspell_allows(r->sp, c))
        return rx_err(r, at, "a character this output cannot contain", NULL);
    char u[4];
    sl_cg_text(r->g, atom, r->sp, u, sl_utf8_encode(c, u));
    return SL_OK;
}

/* A class as its lo set, or an error when nothing is left of it. */
static sl_status put_cls(rx *r, sl_buf *atom, const cls *c, size_t at)
{
    if (c->lo.oom || c->hi.oom) return sl_err_set(r->e, SL_ERR_NOMEM, "out of memory");
    if (sl_cg_chars(r->g, atom, r->sp, &c->lo))
        return rx_err(r, at, "a character class that matches nothing here", NULL);
    return SL_OK;
}

/* After '(': skips "?:" and a group name "?P<name>" / "?<name>"; every other "(?" form is
 * refused by name. */
static sl_status group_kind(rx *r, size_t at)
{
    if (peek(r) != '?') return SL_OK;
    const char *p = r->s + r->i;
    size_t left = r->n - r->i;
    char c1 = left > 1 ? p[1] : 0, c2 = left > 2 ? p[2] : 0;
    if (c1 == ':') {
        r->i += 2;
        return SL_OK;
    }
    if ((c1 == 'P' && c2 == '<') || (c1 == '<' && c2 != '=' && c2 != '!')) {
        size_t j = r->i + (c1 == 'P' ? 3 : 2), k = j;
        while (k < r->n && (is_digit(r->s[k]) || r->s[k] == '_' ||
                            ((r->s[k] | 0x20) >= 'a' && (r->s[k] | 0x20) <= 'z')))
            k++;
        if (k == j || k >= r->n || r->s[k] != '>') return rx_err(r, at, "a bad group name", NULL);
        r->i = k + 1;
        return SL_OK;
    }
    if (c1 == '=' || c1 == '!') return rx_err(r, at, "unsupported lookahead", NULL);
    if (c1 == '<') return rx_err(r, at, "unsupported lookbehind", NULL);
    if (c1 == 'P' && c2 == '=') return rx_err(r, at, "unsupported backreference (?P=name)", NULL);
    if (c1 == '>') return rx_err(r, at, "unsupported atomic group", NULL);
    if (c1 == '#') return rx_err(r, at, "unsupported comment group", NULL);
    if (c1 == '(') return rx_err(r, at, "unsupported conditional group", NULL);
    return rx_err(r, at, "unsupported inline flags (?...)", NULL);
}

/* One atom and its quantifier appended to seq (*lit: see seq_add); *anchor_end set when a '$'
 * ends a top-level branch. */
static sl_status parse_piece(rx *r, sl_buf *seq, int *lit, int top, int *anchor_end)
{
    size_t at = r->i;
    int c = peek(r);
    sl_buf atom = {0};
    sl_status st = SL_OK;
    cls k = {0};
    uint32_t cp;
    if (c == '$') {
        r->i++;
        if (top && (peek(r) < 0 || peek(r) == '|')) {
            *anchor_end = 1;
            return SL_OK;
        }
        return rx_err(r, at, "'$' inside the pattern",
                      "only the end of a top-level branch may have it");
    }
    if (c == '^')
        return rx_err(r, at, "'^' inside the pattern",
                      "only the start of a top-level branch may have it");
    if (at_quantifier(r)) return rx_err(r, at, "a quantifier with nothing to repeat", NULL);
    r->i++;
    if (c == '(') {
        if (++r->depth > RX_MAX_NEST)
            return sl_err_set(r->e, SL_ERR_LIMIT,
                              "regex: groups nested deeper than %d at offset %zu", RX_MAX_NEST, at);
        if ((st = group_kind(r, at))) return st;
        sl_buf inner = {0};
        st = parse_alt(r, &inner, 0);
        if (st == SL_OK && peek(r) != ')') st = rx_err(r, at, "an unclosed '('", NULL);
        if (st == SL_OK) {
            r->i++;
            r->depth--;
            if (inner.len && !single_item(inner.data)) {
                sl_cg_put(r->g, &atom, "( ");
                sl_cg_put(r->g, &atom, inner.data);
                sl_cg_put(r->g, &atom, " )");
            } else if (inner.len) {
                sl_cg_put(r->g, &atom, inner.data);
            }
        }
        sl_buf_free(&inner);
    } else if (c == ')') {
        st = rx_err(r, at, "an unmatched ')'", NULL);
    } else if (c == '[') {
        if ((st = parse_class(r, &k)) == SL_OK) st = put_cls(r, &atom, &k, at);
    } else if (c == '.') {
        sl_cset_add(&k.lo, 0, SL_CP_MAX);
        sl_cset_remove(&k.lo, '\n', '\n');
        if (r->search) { /* ECMA-262's '.' also stops at \r, U+2028 and U+2029 */
            sl_cset_remove(&k.lo, '\r', '\r');
            sl_cset_remove(&k.lo, 0x2028, 0x2029);
        }
        st = put_cls(r, &atom, &k, at);
    } else if (c == '\\') {
        int kind = escape(r, 0, &cp, &k, &st);
        if (kind == 1)
            st = put_char(r, &atom, cp, at);
        else if (kind == 2)
            st = put_cls(r, &atom, &k, at);
    } else {
        r->i--;
        if (literal_char(r, &cp, &st)) st = put_char(r, &atom, cp, at);
    }
    cls_free(&k);
    long min = 1, max = 1;
    if (st == SL_OK) st = parse_quant(r, &min, &max);
    if (st == SL_OK) {
        sl_buf piece = {0};
        quantify(r->g, &piece, atom.data ? atom.data : "", min, max);
        seq_add(r->g, seq, piece.data ? piece.data : "", lit);
        sl_buf_free(&piece);
    }
    sl_buf_free(&atom);
    return st;
}

/* The "any text" a search may skip before and after a match (JSON Schema's unanchored
 * pattern): every character the spelling allows, newlines included. */
static const char *any_text(rx *r)
{
    sl_cset all = {0};
    sl_cset_add(&all, 0, SL_CP_MAX);
    sl_buf b = {0};
    const char *name = "";
    if (sl_cg_chars(r->g, &b, r->sp, &all) == 0) {
        sl_cg_put(r->g, &b, "*");
        name = sl_cg_rule(r->g, r->sp->json ? "pattern-any-json" : "pattern-any", b.data);
    }
    if (all.oom) sl_cg_oom(r->g);
    sl_cset_free(&all);
    sl_buf_free(&b);
    return name;
}

/* Branches separated by '|' up to ')' or the end. top: the pattern's own branches, where ^ and
 * $ may stand at the ends. */
static sl_status parse_alt(rx *r, sl_buf *out, int top)
{
    sl_buf alts = {0};
    int n_alts = 0, any_empty = 0;
    sl_status st = SL_OK;
    for (;;) {
        sl_buf seq = {0};
        int anchor_start = 0, anchor_end = 0, lit = 0;
        if (top && peek(r) == '^') {
            r->i++;
            anchor_start = 1;
        }
        while (st == SL_OK && peek(r) >= 0 && peek(r) != '|' && peek(r) != ')' && !anchor_end)
            st = parse_piece(r, &seq, &lit, top, &anchor_end);
        if (st == SL_OK && top && r->search) {
            /* unanchored: a match anywhere in the string */
            sl_buf b = {0};
            int no = 0;
            if (!anchor_start) seq_add(r->g, &b, any_text(r), &no);
            seq_add(r->g, &b, seq.data ? seq.data : "", &no);
            if (!anchor_end && (anchor_start || seq.len)) seq_add(r->g, &b, any_text(r), &no);
            sl_buf_free(&seq);
            seq = b;
        }
        if (st == SL_OK) {
            if (!seq.len)
                any_empty = 1;
            else {
                if (n_alts++) sl_cg_put(r->g, &alts, " | ");
                sl_cg_put(r->g, &alts, seq.data);
            }
        }
        sl_buf_free(&seq);
        if (st || peek(r) != '|') break;
        r->i++;
    }
    if (st == SL_OK && n_alts) {
        int wrap = any_empty || n_alts > 1;
        if (any_empty && n_alts == 1 && single_item(alts.data)) wrap = 0;
        if (wrap) sl_cg_put(r->g, out, "( ");
        sl_cg_put(r->g, out, alts.data);
        if (wrap) sl_cg_put(r->g, out, " )");
        if (any_empty) sl_cg_put(r->g, out, "?");
    }
    sl_buf_free(&alts);
    return st;
}

sl_status sl_cre_expr(sl_cg *g, const char *re, size_t n, const sl_cspell *sp, int search,
                      sl_buf *out, sl_err *e)
{
    rx r = {g, sp, re, n, 0, search, 0, e};
    sl_status st = parse_alt(&r, out, 1);
    if (st == SL_OK && r.i < r.n) st = rx_err(&r, r.i, "an unmatched ')'", NULL);
    if (st == SL_OK) st = sl_cg_status(g, e);
    return st;
}

sl_status sl_constraint_regex(const char *re, size_t n, sl_buf *out, sl_err *e)
{
    sl_cg *g = sl_cg_new();
    if (!g) return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    static const sl_cspell raw = {0};
    sl_buf root = {0};
    sl_status st = sl_cre_expr(g, re, n, &raw, 0, &root, e);
    if (st == SL_OK) st = sl_cg_write(g, root.data ? root.data : "", out, e);
    sl_buf_free(&root);
    sl_cg_free(g);
    return st;
}

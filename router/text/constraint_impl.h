/* constraint_impl.h: what the constraint converters share (not a public header: only
 * router/text/constraint*.c include it).
 *
 *   sl_cg      a GBNF grammar under construction: named rules, deduplicated by body, with a
 *              mark/rollback for attempts that fail (a tool whose schema falls back);
 *   sl_cset    a set of Unicode code points as sorted ranges (regex classes, the characters
 *              free text may use);
 *   sl_cspell  how characters are written where the grammar puts them: raw text, or inside a
 *              JSON string (escaped as json.dumps(ensure_ascii=False) does), plus the tags a
 *              tool-call parser looks for, which free text must never spell out.
 *
 * Memory failures are sticky: the first one sets cg->st (SL_ERR_NOMEM, or SL_ERR_LIMIT when
 * the grammar outgrows SL_CONSTRAINT_MAX_BYTES) and later calls do nothing; converters check
 * sl_cg_status() before they trust a result. Semantic errors (a bad schema) are returned
 * directly by the converters with a message.
 */
#ifndef SL_CONSTRAINT_IMPL_H
#define SL_CONSTRAINT_IMPL_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "sl_buf.h"
#include "sl_err.h"

#define SL_CP_MAX 0x10FFFFu

/* ---- code point sets ---- */

typedef struct sl_cset {
    uint32_t (*r)[2]; /* [lo, hi] ranges, sorted, disjoint, not adjacent */
    size_t n, cap;
    int oom; /* an add failed: the set is incomplete */
} sl_cset;

void sl_cset_add(sl_cset *s, uint32_t lo, uint32_t hi);
void sl_cset_add_set(sl_cset *s, const sl_cset *t);
void sl_cset_remove(sl_cset *s, uint32_t lo, uint32_t hi);
void sl_cset_invert(sl_cset *s); /* complement in [0, SL_CP_MAX] */
void sl_cset_copy(sl_cset *dst, const sl_cset *src);
int sl_cset_has(const sl_cset *s, uint32_t c);
void sl_cset_free(sl_cset *s);

/* ---- grammar under construction ---- */

/* The grammar text a converter may produce; beyond it SL_ERR_LIMIT. */
#define SL_CONSTRAINT_MAX_BYTES (2u << 20)
/* The largest count in {m,n} (lengths, item counts): the grammar engine's own bound. */
#define SL_CONSTRAINT_MAX_REPEAT 10000

typedef struct sl_cg sl_cg;

sl_cg *sl_cg_new(void);
void sl_cg_free(sl_cg *g);
/* SL_OK, or the first memory/size failure (with its message in e). */
sl_status sl_cg_status(const sl_cg *g, sl_err *e);
/* Records a memory failure of the caller's own buffers (sticky, like the builder's). */
void sl_cg_oom(sl_cg *g);

/* Appends to a body buffer; a failure is recorded in g. */
void sl_cg_put(sl_cg *g, sl_buf *b, const char *s);
void sl_cg_putn(sl_cg *g, sl_buf *b, const char *s, size_t n);
void sl_cg_printf(sl_cg *g, sl_buf *b, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* A rule with this body: an existing rule with the same body, or a new one named after hint
 * (letters, digits and '-' kept; a number added when taken). The name stays valid until
 * sl_cg_free or a rollback past it; "" when memory ran out. */
const char *sl_cg_rule(sl_cg *g, const char *hint, const char *body);
/* A rule named now, defined later (recursion through $ref): returns its index. */
size_t sl_cg_reserve(sl_cg *g, const char *hint);
const char *sl_cg_name(const sl_cg *g, size_t rule);
void sl_cg_define(sl_cg *g, size_t rule, const char *body);
/* A rule remembered under key (a string constant): recursive shared rules, such as any
 * JSON value, that body deduplication cannot find. Its name, or NULL; a rollback forgets the
 * rules it drops. One grammar has one JSON spelling, so a key names one rule. */
const char *sl_cg_memo(const sl_cg *g, const char *key);
void sl_cg_memo_put(sl_cg *g, const char *key, const char *name);
/* Marks the rules so far; rollback drops every rule made after the mark. */
size_t sl_cg_mark(const sl_cg *g);
void sl_cg_rollback(sl_cg *g, size_t mark);
/* Writes "root ::= root_body" and every rule, one per line, to out. */
sl_status sl_cg_write(sl_cg *g, const char *root_body, sl_buf *out, sl_err *e);

/* The `space` rule (bounded optional JSON whitespace), made on first use. */
const char *sl_cg_space(sl_cg *g);

/* ---- spelling ---- */

typedef struct sl_cspell {
    int json;                 /* inside a JSON string: ", \ and U+0000..U+001F escaped */
    const sl_cset *universe;  /* characters text may use; NULL: every code point */
    const char *const *avoid; /* NULL-terminated tags free text must not contain (each starts
                                 with '<'), or NULL */
} sl_cspell;

/* Appends an expression matching one character of set (within the universe, without the
 * first characters of the avoided tags) as sp writes it. -1 (nothing appended) when no
 * character is left. */
int sl_cg_chars(sl_cg *g, sl_buf *b, const sl_cspell *sp, const sl_cset *set);
/* Appends a literal: text s[0..n) (UTF-8) as sp writes it. Text that is not UTF-8 is the
 * caller's to reject first. */
void sl_cg_text(sl_cg *g, sl_buf *b, const sl_cspell *sp, const char *s, size_t n);
/* 1 when sp may write c outside free text (in the universe, not an avoided tag's first
 * character). */
int sl_cspell_allows(const sl_cspell *sp, uint32_t c);
/* The avoided tag s[0..n) contains (its text), or NULL. */
const char *sl_cspell_tag_in(const sl_cspell *sp, const char *s, size_t n);
/* A rule for any text of the universe that contains no avoided tag and is none of words[0..nw)
 * (compared ASCII-case-insensitively when fold). Words are UTF-8. */
const char *sl_cg_free_text(sl_cg *g, const sl_cspell *sp, const char *const *words, size_t nw,
                            int fold);

/* Writes c as UTF-8 into out (room for 4); returns the length. */
size_t sl_utf8_encode(uint32_t c, char *out);
/* Decodes one UTF-8 character of s[0..n): its length, or 0 when s does not start with a valid
 * (shortest-form, non-surrogate) one. */
size_t sl_utf8_decode(const char *s, size_t n, uint32_t *cp);

/* The items[0..n) in this order, each present when required[i] or when the text chooses, then
 * any number of extra items when extra != NULL; each item after the first is preceded by sep
 * (GBNF, may be ""). Appends the expression (it may match nothing at all when no item is
 * required). Linear in n: the rest of the sequence after item i is one rule. */
void sl_cg_seq(sl_cg *g, const char *hint, const char *const *items, const int *required, size_t n,
               const char *extra, const char *sep, sl_buf *out);

/* ---- converters, for each other ---- */

/* The regex re[0..n) as a GBNF expression appended to out, its characters written as sp says.
 * search = 0: the text must match the whole regex (^ and $ at the ends change nothing), and
 * \d \w \s are ASCII (Python's re.ASCII). search = 1: JSON Schema `pattern`: the text must
 * contain a match unless the branch is anchored with ^ and $; the classes keep to characters on
 * which ECMA-262 and Python agree (see constraint.h). */
sl_status sl_cre_expr(sl_cg *g, const char *re, size_t n, const sl_cspell *sp, int search,
                      sl_buf *out, sl_err *e);

/* A JSON Schema conversion: one schema document (the root $ref pointers resolve in), one
 * spelling of string contents (sp->json = 1; tool calls add a universe and avoided tags), and
 * numbers within what jansson reads when jansson (tool calls: sl_tool_parser parses them). */
typedef struct sl_csch sl_csch;

/* JSON types as bits (sl_csch_types). */
enum {
    SL_CT_NULL = 1,
    SL_CT_BOOLEAN = 2,
    SL_CT_OBJECT = 4,
    SL_CT_ARRAY = 8,
    SL_CT_STRING = 16,
    SL_CT_INTEGER = 32,
    SL_CT_NUMBER = 64, /* implies integers */
    SL_CT_ALL = 127,
};

/* where: the JSON pointer prefix of messages ("#", or "tools[2].function.parameters#"). */
sl_csch *sl_csch_new(sl_cg *g, const json_t *root, const sl_cspell *sp, int jansson,
                     const char *where);
void sl_csch_free(sl_csch *s);
/* Drops the rules made after mark (sl_cg_mark) and what s remembers of them. */
void sl_csch_rollback(sl_csch *s, size_t mark);
/* The expression of schema's values (each followed by `space`), appended to out. */
sl_status sl_csch_value(sl_csch *s, const json_t *schema, sl_buf *out, sl_err *e);
/* The same restricted to JSON objects (tool arguments). */
sl_status sl_csch_object(sl_csch *s, const json_t *schema, sl_buf *out, sl_err *e);
/* schema ($ref followed) when it is a plain object schema (type, properties, required,
 * additionalProperties and annotations only, objects allowed); NULL with e set otherwise. */
const json_t *sl_csch_object_schema(sl_csch *s, const json_t *schema, sl_err *e);
/* The rule of any JSON object (followed by space). */
const char *sl_csch_any_object(sl_csch *s);
/* The SL_CT_ bits the `type` keyword allows (SL_CT_ALL without it; 0 when malformed). */
unsigned sl_csch_types(const json_t *schema);
/* 1 when key is an annotation (ignored by the converter: title, description, ...). */
int sl_csch_annotation(const char *key);
/* The rule of a supported `format` (its text, no quotes), or NULL. */
const char *sl_csch_format(sl_csch *s, const char *format);

/* An object schema's properties in schema order, then the required names it does not list;
 * *extra: the schema other keys must satisfy (a JSON true for any), or NULL when
 * additionalProperties is false. *props is malloc'd; the names and schemas are borrowed. */
typedef struct sl_cprop {
    const char *name;
    const json_t *schema;
    int required;
} sl_cprop;
sl_status sl_csch_props(sl_csch *s, const json_t *schema, sl_cprop **props, size_t *n,
                        const json_t **extra, sl_err *e);

#endif

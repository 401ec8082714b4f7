#include "pyjson.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

int sl_pyjson_isspace(int cp)
{
    if ((cp >= 0x09 && cp <= 0x0d) || (cp >= 0x1c && cp <= 0x20)) return 1;
    switch (cp) {
    case 0x85: case 0xa0: case 0x1680: case 0x2028: case 0x2029: case 0x202f: case 0x205f:
    case 0x3000:
        return 1;
    }
    return cp >= 0x2000 && cp <= 0x200a;
}

int sl_pyjson_isprintable(int cp)
{
    if (cp == ' ') return 1;
    switch (utf8proc_category(cp)) {
    case UTF8PROC_CATEGORY_CC: case UTF8PROC_CATEGORY_CF: case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO: case UTF8PROC_CATEGORY_CN: case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP: case UTF8PROC_CATEGORY_ZS:
        return 0;
    default:
        return 1;
    }
}

int sl_pyjson_float(sl_buf *b, double x)
{
    /* Shortest round-trip digits: the correctly rounded p-digit value is the
     * nearest of its length, so the first p that reads back is Python's. */
    char sci[40];
    for (int p = 0; p < 17; p++) {
        snprintf(sci, sizeof sci, "%.*e", p, x);
        if (strtod(sci, NULL) == x) break;
    }
    /* sci is "-d.ddde+XX": split into sign, digits and exponent */
    const char *s = sci;
    int neg = *s == '-';
    if (neg) s++;
    char digits[24];
    int nd = 0;
    for (; *s && *s != 'e'; s++)
        if (*s != '.') digits[nd++] = *s;
    int exp10 = atoi(s + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = 0;

    int rc = neg ? sl_buf_puts(b, "-") : 0;
    if (exp10 < -4 || exp10 >= 16) {
        rc |= sl_buf_append(b, digits, 1);
        if (nd > 1) rc |= sl_buf_printf(b, ".%s", digits + 1);
        return rc | sl_buf_printf(b, "e%c%02d", exp10 < 0 ? '-' : '+', abs(exp10));
    }
    if (exp10 < 0) {
        rc |= sl_buf_puts(b, "0.");
        for (int i = -1; i > exp10; i--) rc |= sl_buf_puts(b, "0");
        return rc | sl_buf_puts(b, digits);
    }
    /* integer part: digits[0..exp10], padded with zeros */
    for (int i = 0; i <= exp10; i++) rc |= sl_buf_append(b, i < nd ? &digits[i] : "0", 1);
    rc |= sl_buf_puts(b, ".");
    return rc | (nd > exp10 + 1 ? sl_buf_puts(b, digits + exp10 + 1) : sl_buf_puts(b, "0"));
}

/* json.dumps string: only '"', '\\' and C0 controls are escaped. */
static int dump_string(sl_buf *b, const char *s, size_t n)
{
    int rc = sl_buf_puts(b, "\"");
    size_t run = 0; /* start of the pending unescaped run */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        rc |= sl_buf_append(b, s + run, i - run);
        run = i + 1;
        switch (c) {
        case '"': rc |= sl_buf_puts(b, "\\\""); break;
        case '\\': rc |= sl_buf_puts(b, "\\\\"); break;
        case '\n': rc |= sl_buf_puts(b, "\\n"); break;
        case '\r': rc |= sl_buf_puts(b, "\\r"); break;
        case '\t': rc |= sl_buf_puts(b, "\\t"); break;
        case '\b': rc |= sl_buf_puts(b, "\\b"); break;
        case '\f': rc |= sl_buf_puts(b, "\\f"); break;
        default: rc |= sl_buf_printf(b, "\\u%04x", c);
        }
    }
    rc |= sl_buf_append(b, s + run, n - run);
    return rc | sl_buf_puts(b, "\"");
}

/* repr(str): quote choice and escapes as CPython's unicode_repr. */
static int repr_string(sl_buf *b, const char *s, size_t n)
{
    char quote = memchr(s, '\'', n) && !memchr(s, '"', n) ? '"' : '\'';
    int rc = sl_buf_append(b, &quote, 1);
    for (size_t i = 0; i < n;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &cp);
        if (k <= 0) { /* not UTF-8: jansson never hands us this; keep the byte */
            rc |= sl_buf_printf(b, "\\x%02x", (unsigned char)s[i]);
            i++;
            continue;
        }
        if (cp == quote || cp == '\\') rc |= sl_buf_printf(b, "\\%c", (char)cp);
        else if (cp == '\t') rc |= sl_buf_puts(b, "\\t");
        else if (cp == '\n') rc |= sl_buf_puts(b, "\\n");
        else if (cp == '\r') rc |= sl_buf_puts(b, "\\r");
        else if (cp < 0x20 || cp == 0x7f) rc |= sl_buf_printf(b, "\\x%02x", cp);
        else if (cp < 0x7f || sl_pyjson_isprintable(cp)) rc |= sl_buf_append(b, s + i, (size_t)k);
        else if (cp <= 0xff) rc |= sl_buf_printf(b, "\\x%02x", cp);
        else if (cp <= 0xffff) rc |= sl_buf_printf(b, "\\u%04x", cp);
        else rc |= sl_buf_printf(b, "\\U%08x", cp);
        i += (size_t)k;
    }
    return rc | sl_buf_append(b, &quote, 1);
}

json_t *sl_pyjson_string(const char *s, size_t n)
{
    utf8proc_int32_t cp;
    size_t i = 0;
    while (i < n) {
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &cp);
        if (k <= 0) break;
        i += (size_t)k;
    }
    if (i == n) return json_stringn(s, n);
    sl_buf b = {0};
    int rc = sl_buf_append(&b, s, i);
    while (i < n) {
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &cp);
        if (k <= 0) {
            rc |= sl_buf_puts(&b, "\xef\xbf\xbd");
            i++;
        } else {
            rc |= sl_buf_append(&b, s + i, (size_t)k);
            i += (size_t)k;
        }
    }
    json_t *v = rc ? NULL : json_stringn(b.data, b.len);
    sl_buf_free(&b);
    return v;
}

/* One walker for both spellings: they differ only in strings and literals. */
static int emit(sl_buf *b, const json_t *v, int repr)
{
    int rc = 0;
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *k;
        json_t *x;
        int first = 1;
        rc |= sl_buf_puts(b, "{");
        json_object_foreach((json_t *)v, k, x) {
            if (!first) rc |= sl_buf_puts(b, ", ");
            first = 0;
            rc |= repr ? repr_string(b, k, strlen(k)) : dump_string(b, k, strlen(k));
            rc |= sl_buf_puts(b, ": ") | emit(b, x, repr);
        }
        return rc | sl_buf_puts(b, "}");
    }
    case JSON_ARRAY: {
        rc |= sl_buf_puts(b, "[");
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (i) rc |= sl_buf_puts(b, ", ");
            rc |= emit(b, json_array_get(v, i), repr);
        }
        return rc | sl_buf_puts(b, "]");
    }
    case JSON_STRING:
        return repr ? repr_string(b, json_string_value(v), json_string_length(v))
                    : dump_string(b, json_string_value(v), json_string_length(v));
    case JSON_INTEGER: return sl_buf_printf(b, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    case JSON_REAL: return sl_pyjson_float(b, json_real_value(v));
    case JSON_TRUE: return sl_buf_puts(b, repr ? "True" : "true");
    case JSON_FALSE: return sl_buf_puts(b, repr ? "False" : "false");
    case JSON_NULL: return sl_buf_puts(b, repr ? "None" : "null");
    }
    return -1;
}

int sl_pyjson_dumps(sl_buf *b, const json_t *v) { return emit(b, v, 0); }

int sl_pyjson_str(sl_buf *b, const json_t *v)
{
    if (json_is_string(v)) return sl_buf_append(b, json_string_value(v), json_string_length(v));
    return emit(b, v, 1);
}

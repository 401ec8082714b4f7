/* pyjson: JSON values printed the way Python prints them.
 *
 * Chat templates are Jinja programs run by Python, so the prompt a model was
 * trained on spells JSON values the way Python spells them: `tojson` is
 * json.dumps(x, ensure_ascii=False) (separators ", " and ": ", keys in the
 * order given, floats as repr), and `{{ x }}` / `x | string` is str(x)
 * ("{'a': [1, True, None]}"). These functions reproduce both byte for byte
 * for values that came from a JSON document (jansson keeps key order), so
 * the C chat template equals the Jinja reference.
 *
 *   sl_buf b = {0};
 *   sl_pyjson_dumps(&b, v);   // {"a": [1, 2.5, "é\n"]}
 *   sl_pyjson_str(&b, v);     // {'a': [1, 2.5, 'é\n']}
 *
 * All functions append to b and return 0, or -1 when memory runs out (b then
 * holds a prefix). They read v only; any thread may call them on its own b.
 */
#ifndef SL_PYJSON_H
#define SL_PYJSON_H

#include <jansson.h>

#include "sl_buf.h"

/* json.dumps(v, ensure_ascii=False): non-ASCII raw, control characters as
 * \u00XX, floats as Python's repr. */
int sl_pyjson_dumps(sl_buf *b, const json_t *v);

/* str(v): a string as itself, everything else as repr(v) (dict and list
 * repr with quoted strings, True/False/None, floats as repr). */
int sl_pyjson_str(sl_buf *b, const json_t *v);

/* repr(float(x)): the shortest digits that read back as x, "1e+16" style
 * exponents outside [1e-4, 1e16), "inf"/"nan" never occur in JSON input. */
int sl_pyjson_float(sl_buf *b, double x);

/* A JSON string of text that may not be valid UTF-8 (model output): each
 * byte that does not start a valid sequence becomes U+FFFD, as Python's
 * decode(errors="replace") does. New reference, NULL when memory runs out. */
json_t *sl_pyjson_string(const char *s, size_t n);

/* str.isspace() and str.isprintable() for one code point (as Python 3's
 * str.strip() and repr() use them). */
int sl_pyjson_isspace(int cp);
int sl_pyjson_isprintable(int cp);

#endif

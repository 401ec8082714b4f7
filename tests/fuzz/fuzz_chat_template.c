/* libFuzzer: request bodies through both chat templates, and arbitrary text
 * through template recognition. Bad input must be an error, never a crash;
 * an accepted request renders the same twice (once recording its literal
 * ranges, which must be ordered, non-empty and inside the prompt). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "chat_template.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = 0;
    sl_chat_template_family f;
    sl_chat_template_detect(text, &f, NULL);
    json_t *body = json_loadb(text, size, 0, NULL);
    for (int fam = 0; body && fam < 2; fam++) {
        sl_buf a = {0}, b = {0};
        sl_tok_spans lit = {0};
        sl_err e = {0};
        if (sl_chat_template_render((sl_chat_template_family)fam, body, &a, NULL, &e) == SL_OK) {
            if (sl_chat_template_render((sl_chat_template_family)fam, body, &b, &lit, &e) !=
                    SL_OK ||
                a.len != b.len || (a.len && memcmp(a.data, b.data, a.len)))
                __builtin_trap();
            for (size_t i = 0; i < lit.n; i++)
                if (lit.v[i].start >= lit.v[i].end || lit.v[i].end > a.len ||
                    (i && lit.v[i].start <= lit.v[i - 1].end))
                    __builtin_trap();
        } else if (!e.msg[0]) {
            __builtin_trap(); /* every refusal names its reason */
        }
        sl_tok_spans_free(&lit);
        sl_buf_free(&a);
        sl_buf_free(&b);
    }
    json_decref(body);
    free(text);
    return 0;
}

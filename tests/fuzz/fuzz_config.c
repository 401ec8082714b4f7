/* libFuzzer: config.json (+ generation_config.json after a NUL byte). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size + 1);
    memcpy(buf, data, size);
    buf[size] = 0;
    size_t n = strlen(buf);
    const char *gen = n < size ? buf + n + 1 : NULL;
    sl_model_config c;
    sl_err e = {0};
    if (sl_model_config_parse(&c, buf, gen, &e) == SL_OK) {
        /* an accepted config is internally consistent */
        if (c.n_layers <= 0 || c.n_layers > SL_MAX_LAYERS || c.n_attn_layers + c.n_linear_layers != c.n_layers ||
            c.n_heads % c.n_kv_heads || c.rot_dim > c.head_dim)
            __builtin_trap();
    }
    free(buf);
    return 0;
}

/* libFuzzer: safetensors file images (header JSON, offsets, dtypes). */
#include <stddef.h>
#include <stdint.h>

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sl_safetensors *st = sl_safetensors_new_empty();
    sl_err e = {0};
    if (sl_safetensors_parse(st, data, size, "fuzz", &e) == SL_OK) {
        /* every accepted tensor must lie inside the input */
        const sl_safetensors_tensor *t = sl_safetensors_find(st, "a");
        if (t && ((const uint8_t *)t->data < data || (const uint8_t *)t->data + t->nbytes > data + size))
            __builtin_trap();
    }
    sl_safetensors_close(st);
    return 0;
}

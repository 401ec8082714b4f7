/* libFuzzer: router <-> worker Envelope decoding (protobuf-c). */
#include <stdint.h>
#include <stdlib.h>

#include "sluice.pb-c.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Sluice__Envelope *m = sluice__envelope__unpack(NULL, size, data);
    if (m) {
        /* re-encoding what was decoded must produce the size it announced
         * (unknown fields are kept, so no round-trip equality is promised) */
        size_t n = sluice__envelope__get_packed_size(m);
        uint8_t *out = malloc(n + 1);
        if (sluice__envelope__pack(m, out) != n) __builtin_trap();
        free(out);
        sluice__envelope__free_unpacked(m, NULL);
    }
    return 0;
}

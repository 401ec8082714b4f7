#include "wire.h"

int sl_wire_pack(const Sluice__Envelope *env, nng_msg **out)
{
    size_t n = sluice__envelope__get_packed_size(env);
    int rv = nng_msg_alloc(out, n);
    if (rv == 0) sluice__envelope__pack(env, nng_msg_body(*out));
    return rv;
}

Sluice__Envelope *sl_wire_unpack(nng_msg *m)
{
    Sluice__Envelope *env =
        sluice__envelope__unpack(NULL, nng_msg_len(m), (const uint8_t *)nng_msg_body(m));
    nng_msg_free(m);
    return env;
}

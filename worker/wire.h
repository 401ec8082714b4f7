/* worker/wire.h: the router <-> worker wire format. Every nng message between
 * the two carries exactly one protobuf Sluice__Envelope (proto/sluice.proto);
 * the router, the worker and the mock worker pack and unpack through these
 * two calls so the format lives in one place.
 *
 *   nng_msg *m;
 *   if (sl_wire_pack(&env, &m) == 0 && nng_sendmsg(sock, m, 0) != 0) nng_msg_free(m);
 *   Sluice__Envelope *in = sl_wire_unpack(received);   // consumes received
 *   ... sluice__envelope__free_unpacked(in, NULL);
 */
#ifndef SL_WIRE_H
#define SL_WIRE_H

#include <nng/nng.h>

#include "sluice.pb-c.h"

/* Packs env into a new message (*out, owned by the caller until sent).
 * Returns 0 or an nng error code. */
int sl_wire_pack(const Sluice__Envelope *env, nng_msg **out);
/* Decodes and frees m; NULL when the bytes are not an Envelope. */
Sluice__Envelope *sl_wire_unpack(nng_msg *m);

#endif

/* proto/wire.h: the router <-> worker wire format. Every nng message between
 * the two carries exactly one protobuf Sluice__Envelope (proto/sluice.proto);
 * the router, the worker and the mock worker pack, unpack and build their
 * messages through these calls so the format lives in one place.
 *
 *   nng_msg *m;
 *   if (sl_wire_pack(&env, &m) == 0 && nng_sendmsg(sock, m, 0) != 0) nng_msg_free(m);
 *   Sluice__Envelope *in = sl_wire_unpack(received);   // consumes received
 *   ... sluice__envelope__free_unpacked(in, NULL);
 *
 *   sl_wire_send_ping(sock, SLUICE__ENVELOPE__MSG_PING, ++seq, NNG_FLAG_NONBLOCK);
 *
 * Threads: every call is safe on any thread (nng sockets are).
 */
#ifndef SL_WIRE_H
#define SL_WIRE_H

#include <nng/nng.h>

#include "sluice.pb-c.h"

/* Stop token ids one GenerateRequest may carry (the model's eos ids
 * included); a worker refuses more. */
#define SL_WIRE_MAX_STOP_IDS 64

/* Packs env into a new message (*out, owned by the caller until sent).
 * Returns 0 or an nng error code. */
int sl_wire_pack(const Sluice__Envelope *env, nng_msg **out);
/* Decodes and frees m; NULL when the bytes are not an Envelope. */
Sluice__Envelope *sl_wire_unpack(nng_msg *m);

/* Packs env and sends it on s with nng send flags (0 blocks,
 * NNG_FLAG_NONBLOCK does not); a message that was not sent is freed.
 * Returns 0 or an nng error code. */
int sl_wire_send(nng_socket s, const Sluice__Envelope *env, int flags);
/* One envelope of each kind, sent like sl_wire_send. kind is
 * SLUICE__ENVELOPE__MSG_PING or SLUICE__ENVELOPE__MSG_PONG. */
int sl_wire_send_ping(nng_socket s, Sluice__Envelope__MsgCase kind, uint64_t seq, int flags);
int sl_wire_send_abort(nng_socket s, uint64_t rid, int flags);
int sl_wire_send_generate(nng_socket s, Sluice__GenerateRequest *g, int flags);
int sl_wire_send_chunk(nng_socket s, Sluice__TokenChunk *ch, int flags);
int sl_wire_send_load(nng_socket s, Sluice__LoadReport *l, int flags);
int sl_wire_send_flush_cache(nng_socket s, uint64_t seq, int flags);
int sl_wire_send_flush_done(nng_socket s, Sluice__FlushCacheDone *d, int flags);

#endif

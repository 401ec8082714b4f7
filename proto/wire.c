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

int sl_wire_send(nng_socket s, const Sluice__Envelope *env, int flags)
{
    nng_msg *m;
    int rv = sl_wire_pack(env, &m);
    if (rv) return rv;
    rv = nng_sendmsg(s, m, flags);
    if (rv) nng_msg_free(m); /* a failed send leaves m with us */
    return rv;
}

int sl_wire_send_ping(nng_socket s, Sluice__Envelope__MsgCase kind, uint64_t seq, int flags)
{
    Sluice__Ping p = SLUICE__PING__INIT;
    p.seq = seq;
    Sluice__Envelope env = SLUICE__ENVELOPE__INIT;
    env.msg_case = kind;
    if (kind == SLUICE__ENVELOPE__MSG_PONG)
        env.pong = &p;
    else
        env.ping = &p;
    return sl_wire_send(s, &env, flags);
}

int sl_wire_send_abort(nng_socket s, uint64_t rid, int flags)
{
    Sluice__AbortRequest a = SLUICE__ABORT_REQUEST__INIT;
    a.rid = rid;
    Sluice__Envelope env = SLUICE__ENVELOPE__INIT;
    env.msg_case = SLUICE__ENVELOPE__MSG_ABORT;
    env.abort = &a;
    return sl_wire_send(s, &env, flags);
}

int sl_wire_send_generate(nng_socket s, Sluice__GenerateRequest *g, int flags)
{
    Sluice__Envelope env = SLUICE__ENVELOPE__INIT;
    env.msg_case = SLUICE__ENVELOPE__MSG_GENERATE;
    env.generate = g;
    return sl_wire_send(s, &env, flags);
}

int sl_wire_send_chunk(nng_socket s, Sluice__TokenChunk *ch, int flags)
{
    Sluice__Envelope env = SLUICE__ENVELOPE__INIT;
    env.msg_case = SLUICE__ENVELOPE__MSG_CHUNK;
    env.chunk = ch;
    return sl_wire_send(s, &env, flags);
}

int sl_wire_send_load(nng_socket s, Sluice__LoadReport *l, int flags)
{
    Sluice__Envelope env = SLUICE__ENVELOPE__INIT;
    env.msg_case = SLUICE__ENVELOPE__MSG_LOAD;
    env.load = l;
    return sl_wire_send(s, &env, flags);
}

int sl_wire_send_flush_cache(nng_socket s, uint64_t seq, int flags)
{
    Sluice__FlushCache f = SLUICE__FLUSH_CACHE__INIT;
    f.seq = seq;
    Sluice__Envelope env = SLUICE__ENVELOPE__INIT;
    env.msg_case = SLUICE__ENVELOPE__MSG_FLUSH_CACHE;
    env.flush_cache = &f;
    return sl_wire_send(s, &env, flags);
}

int sl_wire_send_flush_done(nng_socket s, Sluice__FlushCacheDone *d, int flags)
{
    Sluice__Envelope env = SLUICE__ENVELOPE__INIT;
    env.msg_case = SLUICE__ENVELOPE__MSG_FLUSH_DONE;
    env.flush_done = d;
    return sl_wire_send(s, &env, flags);
}

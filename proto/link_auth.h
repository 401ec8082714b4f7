/* proto/link_auth.h: the shared secret that authenticates the router <->
 * worker link (docs/operations.md, "Threat model").
 *
 * Both ends hold the same secret K (from --link-secret-file PATH or the
 * SLUICE_LINK_SECRET environment variable). On every new pipe the worker
 * sends a fresh 32-byte nonce Nw; the router answers with its own nonce Nr
 * and HMAC-SHA256(K, "sluice-link-v1 router" || Nw || Nr); the worker
 * checks it and answers HMAC-SHA256(K, "sluice-link-v1 worker" || Nw || Nr).
 * Each side proves it knows K without sending it, a recorded exchange is
 * useless on another pipe (the other side's nonce differs), and nothing
 * else (request, ping, load report) travels before both checks pass.
 * The link is not encrypted: run it on loopback, a private network, or
 * IPC sockets in a private directory.
 *
 *   sl_link_secret k;
 *   if (sl_link_secret_load(&k, flag_path, &e)) fail;   // k.len == 0: none configured
 *   uint8_t nw[SL_LINK_NONCE]; sl_link_random(nw, sizeof nw);
 *   uint8_t mac[SL_LINK_MAC]; sl_link_mac(&k, SL_LINK_ROLE_ROUTER, nw, nr, mac);
 *   if (!sl_link_mac_ok(&k, SL_LINK_ROLE_ROUTER, nw, nr, got, got_len)) refuse;
 *
 * Threads: every call is safe on any thread (no shared state).
 */
#ifndef SL_LINK_AUTH_H
#define SL_LINK_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "sl_err.h"

#define SL_LINK_NONCE 32
#define SL_LINK_MAC 32
#define SL_LINK_SECRET_MAX 1024
#define SL_LINK_SECRET_MIN 16
#define SL_LINK_ENV "SLUICE_LINK_SECRET"

typedef struct sl_link_secret {
    size_t len; /* 0: no secret configured (the link is not authenticated) */
    uint8_t key[SL_LINK_SECRET_MAX];
} sl_link_secret;

typedef enum sl_link_role { SL_LINK_ROLE_ROUTER, SL_LINK_ROLE_WORKER } sl_link_role;

/* Reads the secret from path (when non-NULL: the whole file, one trailing
 * newline dropped), else from $SLUICE_LINK_SECRET, else leaves len = 0.
 * Fewer than SL_LINK_SECRET_MIN bytes is an error. */
sl_status sl_link_secret_load(sl_link_secret *k, const char *path, sl_err *e);
/* n bytes from the kernel's random source (getrandom); 0 or -1. */
int sl_link_random(uint8_t *out, size_t n);
/* mac = HMAC-SHA256(K, label(role) || nw || nr), each nonce SL_LINK_NONCE bytes. */
void sl_link_mac(const sl_link_secret *k, sl_link_role role, const uint8_t *nw,
                 const uint8_t *nr, uint8_t mac[SL_LINK_MAC]);
/* 1 when got (got_len bytes) is role's mac for nw, nr; constant time. */
int sl_link_mac_ok(const sl_link_secret *k, sl_link_role role, const uint8_t *nw,
                   const uint8_t *nr, const uint8_t *got, size_t got_len);

#endif

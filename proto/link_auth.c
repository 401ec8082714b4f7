#include "link_auth.h"

#include <errno.h>
#include <mbedtls/md.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

sl_status sl_link_secret_load(sl_link_secret *k, const char *path, sl_err *e)
{
    k->len = 0;
    const char *env = getenv(SL_LINK_ENV);
    size_t n = 0;
    if (path) {
        FILE *f = fopen(path, "rb");
        if (!f)
            return sl_err_set(e, SL_ERR_IO, "link secret %s: %s", path, strerror(errno));
        n = fread(k->key, 1, sizeof k->key, f);
        int more = fgetc(f) != EOF;
        fclose(f);
        if (more)
            return sl_err_set(e, SL_ERR_LIMIT, "link secret %s: longer than %d bytes", path,
                              SL_LINK_SECRET_MAX);
    } else if (env && *env) {
        n = strlen(env);
        if (n > sizeof k->key)
            return sl_err_set(e, SL_ERR_LIMIT, "%s: longer than %d bytes", SL_LINK_ENV,
                              SL_LINK_SECRET_MAX);
        memcpy(k->key, env, n);
    } else {
        return SL_OK;
    }
    if (n && k->key[n - 1] == '\n') n--;
    if (n && k->key[n - 1] == '\r') n--;
    if (n < SL_LINK_SECRET_MIN) {
        memset(k->key, 0, sizeof k->key);
        return sl_err_set(e, SL_ERR_INVALID, "link secret %s: shorter than %d bytes",
                          path ? path : SL_LINK_ENV, SL_LINK_SECRET_MIN);
    }
    k->len = n;
    return SL_OK;
}

int sl_link_random(uint8_t *out, size_t n)
{
    while (n) {
        ssize_t r = getrandom(out, n, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        out += r;
        n -= (size_t)r;
    }
    return 0;
}

void sl_link_mac(const sl_link_secret *k, sl_link_role role, const uint8_t *nw,
                 const uint8_t *nr, uint8_t mac[SL_LINK_MAC])
{
    const char *label = role == SL_LINK_ROLE_ROUTER ? "sluice-link-v1 router"
                                                    : "sluice-link-v1 worker";
    uint8_t msg[32 + 2 * SL_LINK_NONCE];
    size_t ll = strlen(label);
    memcpy(msg, label, ll);
    memcpy(msg + ll, nw, SL_LINK_NONCE);
    memcpy(msg + ll + SL_LINK_NONCE, nr, SL_LINK_NONCE);
    const mbedtls_md_info_t *md = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
    if (!md || mbedtls_md_hmac(md, k->key, k->len, msg, ll + 2 * SL_LINK_NONCE, mac))
        sl_link_random(mac, SL_LINK_MAC); /* cannot happen; never a predictable mac */
}

int sl_link_mac_ok(const sl_link_secret *k, sl_link_role role, const uint8_t *nw,
                   const uint8_t *nr, const uint8_t *got, size_t got_len)
{
    if (!k->len || got_len != SL_LINK_MAC) return 0;
    uint8_t want[SL_LINK_MAC];
    sl_link_mac(k, role, nw, nr, want);
    unsigned diff = 0;
    for (size_t i = 0; i < SL_LINK_MAC; i++) diff |= (unsigned)(want[i] ^ got[i]);
    return diff == 0;
}

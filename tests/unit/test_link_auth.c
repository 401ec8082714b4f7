/* proto/link_auth: the MACs of the link handshake against an independent
 * HMAC-SHA256 (Python's hmac, values below), loading the secret from a file
 * and the environment, and the checks that refuse. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "link_auth.h"
#include "sl_test.h"

static void hex(const uint8_t *b, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) sprintf(out + 2 * i, "%02x", b[i]);
}

int main(void)
{
    sl_link_secret k = {0};
    sl_err e = {0};
    unsetenv(SL_LINK_ENV);
    CHECK(sl_link_secret_load(&k, NULL, &e) == SL_OK && k.len == 0);

    char path[] = "/tmp/sluice-link-test-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    const char *secret = "0123456789abcdef0123456789abcdef\n";
    CHECK(write(fd, secret, strlen(secret)) == (ssize_t)strlen(secret));
    close(fd);
    CHECK(sl_link_secret_load(&k, path, &e) == SL_OK && k.len == 32); /* newline dropped */

    uint8_t nw[SL_LINK_NONCE], nr[SL_LINK_NONCE], mac[SL_LINK_MAC];
    for (int i = 0; i < SL_LINK_NONCE; i++) nw[i] = (uint8_t)i, nr[i] = (uint8_t)(100 + i);
    char h[2 * SL_LINK_MAC + 1];
    sl_link_mac(&k, SL_LINK_ROLE_ROUTER, nw, nr, mac);
    hex(mac, sizeof mac, h);
    CHECK_MSG(!strcmp(h, "9dcd9292b4c1c3c1dd17aea016fdfe75f3107dd66500f75719b4480af51effcc"), "%s", h);
    CHECK(sl_link_mac_ok(&k, SL_LINK_ROLE_ROUTER, nw, nr, mac, sizeof mac));
    CHECK(!sl_link_mac_ok(&k, SL_LINK_ROLE_WORKER, nw, nr, mac, sizeof mac)); /* roles differ */
    CHECK(!sl_link_mac_ok(&k, SL_LINK_ROLE_ROUTER, nr, nw, mac, sizeof mac)); /* order counts */
    CHECK(!sl_link_mac_ok(&k, SL_LINK_ROLE_ROUTER, nw, nr, mac, sizeof mac - 1));
    sl_link_mac(&k, SL_LINK_ROLE_WORKER, nw, nr, mac);
    hex(mac, sizeof mac, h);
    CHECK_MSG(!strcmp(h, "f287c4af226dd6f4a3d73b18e16a7df3c9bcc7c57761d4e5d5613a1607899a3e"), "%s", h);
    mac[31] ^= 1;
    CHECK(!sl_link_mac_ok(&k, SL_LINK_ROLE_WORKER, nw, nr, mac, sizeof mac));

    /* the environment, when no file is named; a short secret is refused */
    setenv(SL_LINK_ENV, "0123456789abcdef0123456789abcdef", 1);
    sl_link_secret k2 = {0};
    CHECK(sl_link_secret_load(&k2, NULL, &e) == SL_OK && k2.len == 32 &&
          !memcmp(k2.key, k.key, 32));
    setenv(SL_LINK_ENV, "short", 1);
    CHECK(sl_link_secret_load(&k2, NULL, &e) == SL_ERR_INVALID && k2.len == 0);
    CHECK(sl_link_secret_load(&k2, "/nonexistent/secret", &e) == SL_ERR_IO);
    unsetenv(SL_LINK_ENV);
    sl_link_secret none = {0};
    CHECK(!sl_link_mac_ok(&none, SL_LINK_ROLE_ROUTER, nw, nr, mac, sizeof mac));

    /* nonces differ */
    uint8_t a[32], b[32];
    CHECK(sl_link_random(a, sizeof a) == 0 && sl_link_random(b, sizeof b) == 0 &&
          memcmp(a, b, sizeof a));
    unlink(path);
    return sl_test_done("test_link_auth");
}

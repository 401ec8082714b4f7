/* A blocking loopback HTTP client for the tests that run an HTTP server in-process
 * (test_http, test_router): the test's client thread dials the server's port and speaks
 * raw HTTP/1.1 bytes. Header-only; every function blocks at most its timeout. */
#ifndef HTTP_CLIENT_H
#define HTTP_CLIENT_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <sys/socket.h>
#include <unistd.h>

/* A connected TCP socket to 127.0.0.1:port, or -1. The caller closes it. */
static inline int http_client_dial(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) {
        close(fd);
        return -1;
    }
    return fd;
}

#endif

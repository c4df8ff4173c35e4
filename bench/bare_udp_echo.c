/* bare_udp_echo: the ceiling for UDP echo, one thread, no event loop.
 *
 *   bare_udp_echo [--host IP] [--port N]     (port 0: the kernel picks one)
 *
 * A blocking recvmmsg(MSG_WAITFORONE) takes from 1 to 32 datagrams per
 * system call into 32 fixed 64 KiB buffers, and one sendmmsg sends each back
 * to its sender unchanged: two system calls per batch, no allocation, no
 * copy. Prints "listening on HOST:PORT" once bound; runs until killed. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BATCH 32
#define DGRAM_MAX 65536

static char bufs[BATCH][DGRAM_MAX];

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    int port = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--host"))
            host = argv[i + 1];
        else if (!strcmp(argv[i], "--port"))
            port = atoi(argv[i + 1]);
        else
            break;
    }
    if (argc % 2 == 0 || port < 0 || port > 65535) {
        fprintf(stderr, "usage: bare_udp_echo [--host IPv4] [--port N]\n");
        return 2;
    }
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        fprintf(stderr, "bare_udp_echo: %s is no IPv4 address\n", host);
        return 2;
    }
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int big = 4 << 20; /* room for bursts; the kernel caps it at rmem_max */
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    socklen_t alen = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &alen) < 0) {
        perror("bare_udp_echo: bind");
        return 1;
    }
    printf("listening on %s:%d\n", host, ntohs(a.sin_port));
    fflush(stdout);

    static struct mmsghdr msgs[BATCH];
    static struct iovec iov[BATCH];
    static struct sockaddr_in peers[BATCH];
    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            iov[i].iov_base = bufs[i];
            iov[i].iov_len = DGRAM_MAX;
            msgs[i].msg_hdr = (struct msghdr){.msg_name = &peers[i],
                                              .msg_namelen = sizeof peers[i],
                                              .msg_iov = &iov[i],
                                              .msg_iovlen = 1};
        }
        int n = recvmmsg(fd, msgs, BATCH, MSG_WAITFORONE, NULL);
        if (n < 0) {
            if (errno == EINTR || errno == ECONNREFUSED)
                continue;
            perror("bare_udp_echo: recvmmsg");
            return 1;
        }
        for (int i = 0; i < n; i++)
            iov[i].iov_len = msgs[i].msg_len;
        /* The send buffer is large; a datagram it cannot take is dropped,
         * as a real server under overload would. */
        for (int sent = 0; sent < n;) {
            int r = sendmmsg(fd, msgs + sent, (unsigned)(n - sent), MSG_DONTWAIT);
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                sent++; /* skip the one that failed (EAGAIN, ECONNREFUSED...) */
                continue;
            }
            sent += r;
        }
    }
}

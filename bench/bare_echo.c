/* bare_echo: the ceiling. A minimal libev echo server in C, one thread: recv
 * into a buffer, send it back; what the socket will not take yet waits in a
 * per-connection buffer and reading pauses until it drains. Same listen
 * backlog (1024) and TCP_NODELAY as echokit. recv/send rather than
 * read/write: on a socket read(2) and write(2) take the VFS path first, which
 * costs about 3% more CPU per ping-pong message.
 *
 *   bare_echo [HOST:]PORT     prints "listening on HOST:PORT" (PORT 0 = free)
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

struct conn {
    ev_io io;
    char *pend;
    size_t plen, poff;
};

static char buf[65536];

static void conn_close(struct ev_loop *loop, struct conn *c)
{
    ev_io_stop(loop, &c->io);
    close(c->io.fd);
    free(c->pend);
    free(c);
}

static void conn_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct conn *c = (struct conn *)w;
    int fd = w->fd;
    if (c->pend) {  /* waiting for EV_WRITE */
        ssize_t n = send(fd, c->pend + c->poff, c->plen - c->poff, 0);
        if (n < 0) {
            if (errno == EAGAIN) return;
            conn_close(loop, c);
            return;
        }
        c->poff += (size_t)n;
        if (c->poff < c->plen) return;
        free(c->pend);
        c->pend = NULL;
        ev_io_stop(loop, w);
        ev_io_set(w, fd, EV_READ);
        ev_io_start(loop, w);
        return;
    }
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        conn_close(loop, c);
        return;
    }
    if (n < 0) return;
    ssize_t m = send(fd, buf, (size_t)n, 0);
    if (m < 0) {
        if (errno != EAGAIN) { conn_close(loop, c); return; }
        m = 0;
    }
    if (m < n) {
        c->plen = (size_t)(n - m);
        c->poff = 0;
        c->pend = malloc(c->plen);
        memcpy(c->pend, buf + m, c->plen);
        ev_io_stop(loop, w);
        ev_io_set(w, fd, EV_WRITE);
        ev_io_start(loop, w);
    }
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    for (;;) {
        int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;  /* EAGAIN, or EMFILE and friends: try next time */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        ev_io_init(&c->io, conn_cb, fd, EV_READ);
        ev_io_start(loop, &c->io);
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: bare_echo [HOST:]PORT\n");
        return 2;
    }
    const char *host = "127.0.0.1", *port = argv[1];
    char hb[64];
    const char *colon = strrchr(argv[1], ':');
    if (colon) {
        snprintf(hb, sizeof hb, "%.*s", (int)(colon - argv[1]), argv[1]);
        host = hb;
        port = colon + 1;
    }
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) { rl.rlim_cur = rl.rlim_max; setrlimit(RLIMIT_NOFILE, &rl); }
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(port))};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        fprintf(stderr, "bare_echo: bad address %s\n", host);
        return 2;
    }
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(lfd, 1024) < 0) {
        perror("bare_echo: listen");
        return 1;
    }
    socklen_t l = sizeof a;
    getsockname(lfd, (struct sockaddr *)&a, &l);
    printf("listening on %s:%d\n", host, ntohs(a.sin_port));
    fflush(stdout);
    struct ev_loop *loop = EV_DEFAULT;
    ev_io lw;
    ev_io_init(&lw, accept_cb, lfd, EV_READ);
    ev_io_start(loop, &lw);
    ev_run(loop, 0);
    return 0;
}

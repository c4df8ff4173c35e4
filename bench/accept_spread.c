/* accept_spread: how the kernel spreads new connections over N libev
 * workers, for bench/workers. Each worker answers a connection with its pid
 * and a newline, then closes it: the client counts who served what.
 *
 *   accept_spread MODE PORT [WORKERS]     (prints "listening on 127.0.0.1:PORT")
 *
 * MODE:
 *   reuseport  each worker its own socket with SO_REUSEPORT (what echokit
 *              --workers does): the kernel picks the socket by a hash of the
 *              connection's addresses and ports
 *   exclusive  one shared socket; each worker registers it in an epoll set of
 *              its own with EPOLLEXCLUSIVE and watches that set's fd with an
 *              ev_io (libev's epoll backend changes registrations with
 *              EPOLL_CTL_MOD, which EPOLLEXCLUSIVE does not allow, so the flag
 *              cannot be given through an ev_io on the socket itself)
 *   shared     one shared socket, a plain ev_io in each worker (echokit
 *              before: every idle worker is woken for each connection)
 *
 * SIGTERM stops the workers and the parent. */
#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_WORKERS 64

static int lfd; /* this worker's listening socket */
static char reply[32];
static size_t reply_len;

static int listen_on(int port, int reuseport)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (reuseport)
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 1024) < 0) {
        perror("accept_spread: bind/listen");
        exit(1);
    }
    return fd;
}

/* Accepts until EAGAIN, as echokit's accept loop does. */
static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return;
        }
        if (write(fd, reply, reply_len) < 0) {
            /* the client went away: nothing to count */
        }
        close(fd);
    }
}

static void stop_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    ev_break(loop, EVBREAK_ALL);
}

static void worker(const char *mode)
{
    struct ev_loop *loop = ev_default_loop(EVFLAG_AUTO);
    ev_loop_fork(loop);
    reply_len = (size_t)snprintf(reply, sizeof reply, "%d\n", (int)getpid());
    ev_io io;
    ev_signal sig;
    int watched = lfd;
    if (!strcmp(mode, "exclusive")) {
        watched = epoll_create1(EPOLL_CLOEXEC);
        struct epoll_event ev = {.events = EPOLLIN | EPOLLEXCLUSIVE};
        if (epoll_ctl(watched, EPOLL_CTL_ADD, lfd, &ev) < 0) {
            perror("accept_spread: EPOLLEXCLUSIVE");
            exit(1);
        }
    }
    ev_io_init(&io, accept_cb, watched, EV_READ);
    ev_io_start(loop, &io);
    ev_signal_init(&sig, stop_cb, SIGTERM);
    ev_signal_start(loop, &sig);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    ev_run(loop, 0);
    exit(0);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: accept_spread reuseport|exclusive|shared PORT [WORKERS]\n");
        return 2;
    }
    const char *mode = argv[1];
    int port = atoi(argv[2]), n = argc > 3 ? atoi(argv[3]) : 2;
    int reuseport = !strcmp(mode, "reuseport");
    if ((!reuseport && strcmp(mode, "exclusive") && strcmp(mode, "shared")) || n < 1 ||
        n > MAX_WORKERS) {
        fprintf(stderr, "accept_spread: bad mode or worker count\n");
        return 2;
    }
    sigset_t term, old;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    sigprocmask(SIG_BLOCK, &term, &old);
    int fds[MAX_WORKERS];
    fds[0] = listen_on(port, reuseport);
    if (!port) {
        struct sockaddr_in a;
        socklen_t len = sizeof a;
        getsockname(fds[0], (struct sockaddr *)&a, &len);
        port = ntohs(a.sin_port);
    }
    for (int i = 1; i < n; i++)
        fds[i] = reuseport ? listen_on(port, 1) : fds[0];
    pid_t pids[MAX_WORKERS], parent = getpid();
    for (int i = 0; i < n; i++) {
        pids[i] = fork();
        if (pids[i] == 0) {
            prctl(PR_SET_PDEATHSIG, SIGTERM);
            if (getppid() != parent)
                exit(0);
            lfd = fds[i];
            worker(mode);
        }
    }
    printf("listening on 127.0.0.1:%d\n", port);
    fflush(stdout);
    int sig;
    sigwait(&term, &sig);
    for (int i = 0; i < n; i++)
        kill(pids[i], SIGTERM);
    while (wait(NULL) > 0)
        ;
    return 0;
}

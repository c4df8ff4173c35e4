/* bench/splice_relay.c: build with  cc -O2 -o splice_relay bench/splice_relay.c -lpthread
 * and run  ./splice_relay copy; ./splice_relay splice  (CPUs 0 and 1 are used). */
/* Relay microbenchmark: a source writes N bytes over loopback TCP to a relay,
 * which forwards them to a sink; the relay uses read/write (copy) or splice.
 * Reports relay CPU time per GB and wall throughput. Blocking sockets, one
 * direction: the simplest case where splice could win. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static size_t TOTAL = (size_t)4 << 30;
static int listen_on(int *port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
    bind(fd, (void *)&a, sizeof a); listen(fd, 4);
    socklen_t l = sizeof a; getsockname(fd, (void *)&a, &l); *port = ntohs(a.sin_port);
    return fd;
}
static int connect_to(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(0x7f000001)};
    connect(fd, (void *)&a, sizeof a); return fd;
}
static void *sink(void *arg) {
    int fd = accept(*(int *)arg, 0, 0); static char b[1 << 16]; size_t got = 0; ssize_t n;
    cpu_set_t s; CPU_ZERO(&s); CPU_SET(1, &s); pthread_setaffinity_np(pthread_self(), sizeof s, &s);
    while ((n = read(fd, b, sizeof b)) > 0) got += n;
    if (got != TOTAL) fprintf(stderr, "sink got %zu\n", got);
    return NULL;
}
static void *source(void *arg) {
    int fd = connect_to(*(int *)arg); static char b[1 << 16]; size_t sent = 0;
    cpu_set_t s; CPU_ZERO(&s); CPU_SET(1, &s); pthread_setaffinity_np(pthread_self(), sizeof s, &s);
    memset(b, 'x', sizeof b);
    while (sent < TOTAL) { ssize_t n = write(fd, b, sizeof b); if (n <= 0) break; sent += n; }
    close(fd); return NULL;
}
static double cpu(void) { struct rusage r; getrusage(RUSAGE_THREAD, &r);
    return r.ru_utime.tv_sec + r.ru_stime.tv_sec + (r.ru_utime.tv_usec + r.ru_stime.tv_usec) * 1e-6; }
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
int main(int argc, char **argv) {
    int use_splice = argc > 1 && !strcmp(argv[1], "splice");
    cpu_set_t s; CPU_ZERO(&s); CPU_SET(0, &s); pthread_setaffinity_np(pthread_self(), sizeof s, &s);
    int sport, rport; int sl = listen_on(&sport), rl = listen_on(&rport);
    pthread_t ts, tc; pthread_create(&ts, 0, sink, &sl);
    int out = connect_to(sport);
    pthread_create(&tc, 0, source, &rport);
    int in = accept(rl, 0, 0);
    int p[2]; pipe2(p, 0); fcntl(p[1], F_SETPIPE_SZ, 1 << 16);
    static char b[1 << 16]; size_t moved = 0;
    double c0 = cpu(), t0 = now();
    for (;;) {
        ssize_t n;
        if (use_splice) {
            n = splice(in, 0, p[1], 0, 1 << 16, SPLICE_F_MOVE);
            if (n <= 0) break;
            ssize_t left = n;
            while (left > 0) { ssize_t w = splice(p[0], 0, out, 0, left, SPLICE_F_MOVE); if (w <= 0) return 1; left -= w; }
        } else {
            n = read(in, b, sizeof b);
            if (n <= 0) break;
            ssize_t off = 0;
            while (off < n) { ssize_t w = write(out, b + off, n - off); if (w <= 0) return 1; off += w; }
        }
        moved += n;
    }
    double c1 = cpu(), t1 = now();
    shutdown(out, SHUT_WR); pthread_join(ts, 0); pthread_join(tc, 0);
    printf("%-6s moved %zu MiB: relay CPU %.3f s/GiB, wall %.0f MiB/s\n", use_splice ? "splice" : "copy",
           moved >> 20, (c1 - c0) / (moved / (double)(1 << 30)), (moved >> 20) / (t1 - t0));
    return 0;
}

/* Address parsing and formatting, and a real listen/connect/accept round. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "check.h"
#include "net.h"

static void expect_ok(const char *spec, const char *formatted)
{
    struct net_addr a;
    char err[ECHOKIT_ERR_LEN] = "";
    int rc = net_parse_addr(spec, 0, &a, err);
    CHECK_MSG(rc == 0, "%s: %s", spec, err);
    if (rc)
        return;
    char buf[200];
    net_addr_format((struct sockaddr *)&a.ss, a.len, buf, sizeof buf);
    CHECK_MSG(strcmp(buf, formatted) == 0, "%s formatted as %s, want %s", spec, buf, formatted);
}

static void expect_err(const char *spec, const char *needle)
{
    struct net_addr a;
    char err[ECHOKIT_ERR_LEN] = "";
    CHECK_MSG(net_parse_addr(spec, 0, &a, err) == -1, "%s parsed", spec);
    CHECK_MSG(strstr(err, needle) != NULL, "%s: error '%s' lacks '%s'", spec, err, needle);
}

static void test_parse(void)
{
    expect_ok("127.0.0.1:7000", "127.0.0.1:7000");
    expect_ok("0.0.0.0:0", "0.0.0.0:0");
    expect_ok("*:80", "0.0.0.0:80");
    expect_ok(":80", "0.0.0.0:80");
    expect_ok("8080", "127.0.0.1:8080");
    expect_ok("[::1]:7000", "[::1]:7000");
    expect_ok("[::]:1", "[::]:1");
    expect_ok("[fe80::1:2]:65535", "[fe80::1:2]:65535");
    expect_ok("unix:/tmp/x.sock", "unix:/tmp/x.sock");

    expect_err("127.0.0.1:", "bad port");
    expect_err("127.0.0.1:65536", "bad port");
    expect_err("127.0.0.1:-1", "bad port");
    expect_err("127.0.0.1:80x", "bad port");
    expect_err("::1:7000", "brackets");
    expect_err("[::1]7000", "[IPV6]:PORT");
    expect_err("[::1", "[IPV6]:PORT");
    expect_err("unix:", "empty");
    expect_err("localhost:80", "not a numeric address");
    char longpath[200] = "unix:/";
    memset(longpath + 6, 'a', 150);
    expect_err(longpath, "longer than");

    /* With resolve set, names go through getaddrinfo. */
    struct net_addr a;
    char err[ECHOKIT_ERR_LEN];
    CHECK(net_parse_addr("localhost:99", 1, &a, err) == 0);
    int port;
    char host[64];
    net_addr_split((struct sockaddr *)&a.ss, a.len, host, sizeof host, &port);
    CHECK(port == 99);
    CHECK(strcmp(host, "127.0.0.1") == 0 || strcmp(host, "::1") == 0);
}

static void test_round_trip(const char *spec)
{
    struct net_addr a, bound, peer;
    char err[ECHOKIT_ERR_LEN] = "";
    CHECK(net_parse_addr(spec, 0, &a, err) == 0);
    int lfd = net_listen(&a, 16, err);
    CHECK_MSG(lfd >= 0, "%s: %s", spec, err);
    if (lfd < 0)
        return;
    if (a.ss.ss_family != AF_UNIX) {
        CHECK(net_local_addr(lfd, &bound) == 0);
        int port;
        char host[64];
        net_addr_split((struct sockaddr *)&bound.ss, bound.len, host, sizeof host, &port);
        CHECK(port > 0); /* port 0 was given a real one */
    } else {
        bound = a;
    }
    CHECK(net_accept(lfd, &peer) == -1 && errno == EAGAIN); /* non-blocking */
    int inprog;
    int cfd = net_connect(&bound, &inprog, err);
    CHECK_MSG(cfd >= 0, "connect %s: %s", spec, err);
    struct pollfd p = {.fd = lfd, .events = POLLIN};
    CHECK(poll(&p, 1, 5000) == 1);
    int afd = net_accept(lfd, &peer);
    CHECK(afd >= 0);
    struct pollfd pw = {.fd = cfd, .events = POLLOUT};
    CHECK(poll(&pw, 1, 5000) == 1);
    CHECK(net_socket_error(cfd) == 0);
    CHECK(write(cfd, "ping", 4) == 4);
    char buf[8];
    struct pollfd pr = {.fd = afd, .events = POLLIN};
    CHECK(poll(&pr, 1, 5000) == 1);
    CHECK(read(afd, buf, sizeof buf) == 4 && memcmp(buf, "ping", 4) == 0);
    /* A reset: the other side reads ECONNRESET (TCP only). */
    if (a.ss.ss_family != AF_UNIX) {
        net_set_reset(afd);
        close(afd);
        CHECK(poll(&p, 0, 0) >= 0);
        struct pollfd pc = {.fd = cfd, .events = POLLIN};
        CHECK(poll(&pc, 1, 5000) == 1);
        errno = 0;
        CHECK(read(cfd, buf, sizeof buf) == -1 && errno == ECONNRESET);
    } else {
        close(afd);
        unlink(((struct sockaddr_un *)&a.ss)->sun_path);
    }
    close(cfd);
    close(lfd);
}

static void test_refused(void)
{
    /* Bind a port, close it, connect: refused (reported now or via SO_ERROR). */
    struct net_addr a, bound;
    char err[ECHOKIT_ERR_LEN];
    net_parse_addr("127.0.0.1:0", 0, &a, err);
    int lfd = net_listen(&a, 1, err);
    net_local_addr(lfd, &bound);
    close(lfd);
    int inprog;
    int fd = net_connect(&bound, &inprog, err);
    if (fd < 0) {
        CHECK(strstr(err, "refused") != NULL);
        return;
    }
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    CHECK(poll(&p, 1, 5000) == 1);
    CHECK(net_socket_error(fd) == ECONNREFUSED);
    close(fd);
}

/* A connect to path through net_connect and an accept on lfd: 1 when both
 * work (the listener on lfd serves that path). */
static int serves(int lfd, const struct net_addr *a)
{
    char err[ECHOKIT_ERR_LEN];
    int inprog, ok = 0;
    int cfd = net_connect(a, &inprog, err);
    if (cfd < 0)
        return 0;
    struct pollfd p = {.fd = lfd, .events = POLLIN};
    if (poll(&p, 1, 5000) == 1) {
        struct net_addr peer;
        int afd = net_accept(lfd, &peer);
        ok = afd >= 0;
        if (afd >= 0)
            close(afd);
    }
    close(cfd);
    return ok;
}

/* A unix path is never taken from a live listener: only a stale socket file
 * (connect refused) is replaced; a live one, a full one, one of another type
 * and a file that is not a socket are refused, and left as they were. */
static void test_unix_claim(void)
{
    char spec[96], err[ECHOKIT_ERR_LEN] = "";
    snprintf(spec, sizeof spec, "unix:/tmp/echokit-test-claim-%d.sock", (int)getpid());
    const char *path = spec + 5;
    unlink(path);
    struct net_addr a;
    CHECK(net_parse_addr(spec, 0, &a, err) == 0);

    int first = net_listen(&a, 16, err);
    CHECK_MSG(first >= 0, "%s: %s", spec, err);
    err[0] = '\0';
    CHECK(net_listen(&a, 16, err) == -1);
    CHECK_MSG(strstr(err, "address in use: something is listening on") != NULL &&
                  strstr(err, path) != NULL, "live socket: error '%s'", err);
    CHECK_MSG(serves(first, &a), "the first listener lost %s", path);

    /* Its backlog full: still live, still refused (and no blocking). */
    int cl[64], n = 0;
    for (; n < 64; n++) {
        int inprog;
        cl[n] = net_connect(&a, &inprog, err);
        if (cl[n] < 0)
            break;
    }
    CHECK_MSG(n < 64, "the backlog never filled");
    err[0] = '\0';
    CHECK(net_listen(&a, 16, err) == -1);
    CHECK_MSG(strstr(err, "something is listening") != NULL, "full backlog: error '%s'", err);
    for (int i = 0; i < n; i++)
        close(cl[i]);

    /* Closed, the file stays behind: stale, replaced. */
    close(first);
    struct stat st;
    CHECK(lstat(path, &st) == 0 && S_ISSOCK(st.st_mode));
    int second = net_listen(&a, 16, err);
    CHECK_MSG(second >= 0, "stale socket file not replaced: %s", err);
    if (second >= 0) {
        CHECK(serves(second, &a));
        close(second);
    }
    unlink(path);

    /* A datagram socket bound there. */
    int dg = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    CHECK(dg >= 0 && bind(dg, (struct sockaddr *)&a.ss, a.len) == 0);
    err[0] = '\0';
    CHECK(net_listen(&a, 16, err) == -1);
    CHECK_MSG(strstr(err, "address in use") != NULL, "datagram socket: error '%s'", err);
    CHECK(lstat(path, &st) == 0 && S_ISSOCK(st.st_mode));
    close(dg);
    unlink(path);

    /* A regular file: refused and kept. */
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f) {
        fputs("keep me", f);
        fclose(f);
    }
    err[0] = '\0';
    CHECK(net_listen(&a, 16, err) == -1);
    CHECK_MSG(strstr(err, "is not a socket") != NULL, "regular file: error '%s'", err);
    CHECK(lstat(path, &st) == 0 && S_ISREG(st.st_mode) && st.st_size == 7);
    unlink(path);
}

int main(void)
{
    test_parse();
    test_round_trip("127.0.0.1:0");
    test_round_trip("[::1]:0");
    char path[64];
    snprintf(path, sizeof path, "unix:/tmp/echokit-test-net-%d.sock", (int)getpid());
    test_round_trip(path);
    test_refused();
    test_unix_claim();
    return check_done("test_net");
}

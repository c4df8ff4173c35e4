/* Address parsing and formatting, and a real listen/connect/accept round. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
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

int main(void)
{
    test_parse();
    test_round_trip("127.0.0.1:0");
    test_round_trip("[::1]:0");
    char path[64];
    snprintf(path, sizeof path, "unix:/tmp/echokit-test-net-%d.sock", (int)getpid());
    test_round_trip(path);
    test_refused();
    return check_done("test_net");
}

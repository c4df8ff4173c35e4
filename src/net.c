#include "net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static int parse_port(const char *s, int *port)
{
    char *end;
    if (!*s)
        return -1;
    long v = strtol(s, &end, 10);
    if (*end || v < 0 || v > 65535 || *s < '0' || *s > '9')
        return -1;
    *port = (int)v;
    return 0;
}

int net_parse_addr(const char *spec, int resolve, struct net_addr *out, char *err)
{
    return net_parse_addr2(spec, resolve, out, NULL, 0, NULL, err);
}

int net_parse_addr2(const char *spec, int resolve, struct net_addr *out, char *hostout,
                    size_t hostcap, int *portout, char *err)
{
    memset(out, 0, sizeof *out);
    if (strncmp(spec, "unix:", 5) == 0) {
        const char *path = spec + 5;
        struct sockaddr_un *un = (struct sockaddr_un *)&out->ss;
        size_t n = strlen(path);
        if (n == 0) {
            snprintf(err, ECHOKIT_ERR_LEN, "%s: empty unix socket path", spec);
            return -1;
        }
        if (n >= sizeof un->sun_path) {
            snprintf(err, ECHOKIT_ERR_LEN, "%s: unix socket path longer than %zu bytes", spec,
                     sizeof un->sun_path - 1);
            return -1;
        }
        un->sun_family = AF_UNIX;
        memcpy(un->sun_path, path, n + 1);
        out->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
        return 0;
    }

    char host[256];
    const char *portstr;
    if (spec[0] == '[') {
        const char *close = strchr(spec, ']');
        if (!close || close[1] != ':') {
            snprintf(err, ECHOKIT_ERR_LEN, "%s: expected [IPV6]:PORT", spec);
            return -1;
        }
        size_t n = (size_t)(close - spec - 1);
        if (n >= sizeof host) {
            snprintf(err, ECHOKIT_ERR_LEN, "%s: host name too long", spec);
            return -1;
        }
        memcpy(host, spec + 1, n);
        host[n] = '\0';
        portstr = close + 2;
    } else {
        const char *colon = strrchr(spec, ':');
        if (!colon) {
            strcpy(host, "127.0.0.1");
            portstr = spec;
        } else {
            if (memchr(spec, ':', (size_t)(colon - spec))) {
                snprintf(err, ECHOKIT_ERR_LEN, "%s: IPv6 addresses need brackets: [V6]:PORT", spec);
                return -1;
            }
            size_t n = (size_t)(colon - spec);
            if (n >= sizeof host) {
                snprintf(err, ECHOKIT_ERR_LEN, "%s: host name too long", spec);
                return -1;
            }
            memcpy(host, spec, n);
            host[n] = '\0';
            portstr = colon + 1;
        }
    }
    int port;
    if (parse_port(portstr, &port) < 0) {
        snprintf(err, ECHOKIT_ERR_LEN, "%s: bad port '%s' (expected HOST:PORT, [V6]:PORT or unix:/path)",
                 spec, portstr);
        return -1;
    }
    if (!host[0] || strcmp(host, "*") == 0)
        strcpy(host, "0.0.0.0");

    struct sockaddr_in *in4 = (struct sockaddr_in *)&out->ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&out->ss;
    if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)port);
        out->len = sizeof *in4;
        return 0;
    }
    if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        out->len = sizeof *in6;
        return 0;
    }
    if (hostout) {
        /* Not numeric: hand the name back for resolving elsewhere. */
        snprintf(hostout, hostcap, "%s", host);
        *portout = port;
        return 1;
    }
    if (!resolve) {
        snprintf(err, ECHOKIT_ERR_LEN, "%.100s: '%.100s' is not a numeric address", spec, host);
        return -1;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
    int rc = getaddrinfo(host, NULL, &hints, &res);
    if (rc != 0) {
        snprintf(err, ECHOKIT_ERR_LEN, "%.100s: cannot resolve '%.100s': %s", spec, host, gai_strerror(rc));
        return -1;
    }
    memcpy(&out->ss, res->ai_addr, res->ai_addrlen);
    out->len = res->ai_addrlen;
    freeaddrinfo(res);
    if (out->ss.ss_family == AF_INET)
        in4->sin_port = htons((uint16_t)port);
    else
        in6->sin6_port = htons((uint16_t)port);
    return 0;
}

void net_addr_split(const struct sockaddr *sa, socklen_t len, char *host, size_t cap, int *port)
{
    *port = 0;
    host[0] = '\0';
    switch (sa->sa_family) {
    case AF_INET: {
        const struct sockaddr_in *in4 = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in4->sin_addr, host, (socklen_t)cap);
        *port = ntohs(in4->sin_port);
        break;
    }
    case AF_INET6: {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, (socklen_t)cap);
        *port = ntohs(in6->sin6_port);
        break;
    }
    case AF_UNIX: {
        const struct sockaddr_un *un = (const struct sockaddr_un *)sa;
        size_t off = offsetof(struct sockaddr_un, sun_path);
        size_t n = len > off ? strnlen(un->sun_path, (size_t)len - off) : 0;
        if (n >= cap)
            n = cap - 1;
        memcpy(host, un->sun_path, n);
        host[n] = '\0';
        break;
    }
    default:
        snprintf(host, cap, "?");
    }
}

char *net_addr_format(const struct sockaddr *sa, socklen_t len, char *buf, size_t cap)
{
    char host[INET6_ADDRSTRLEN + 110];
    int port;
    net_addr_split(sa, len, host, sizeof host, &port);
    if (sa->sa_family == AF_UNIX)
        snprintf(buf, cap, "unix:%s", host[0] ? host : "(unnamed)");
    else if (sa->sa_family == AF_INET6)
        snprintf(buf, cap, "[%s]:%d", host, port);
    else
        snprintf(buf, cap, "%s:%d", host, port);
    return buf;
}

/* err for net_unix_claim: its messages name the path twice, so that each
 * half reads on its own; a path near the 107-byte limit may cut the end. */
__attribute__((format(printf, 2, 3))) static void claim_err(char *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, ECHOKIT_ERR_LEN, fmt, ap);
    va_end(ap);
}

int net_unix_claim(const struct net_addr *addr, char *err)
{
    const struct sockaddr_un *un = (const struct sockaddr_un *)&addr->ss;
    const char *path = un->sun_path;
    struct stat st;
    if (lstat(path, &st) < 0) {
        if (errno == ENOENT)
            return 0;
        claim_err(err, "unix:%s: %s", path, strerror(errno));
        return -1;
    }
    if (!S_ISSOCK(st.st_mode)) {
        claim_err(err, "unix:%s: address in use: %s exists and is not a socket",
                 path, path);
        return -1;
    }
    /* Non-blocking, so that a listener whose backlog is full (EAGAIN) cannot
     * hold us up: that one is live too. */
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        claim_err(err, "unix:%s: socket: %s", path, strerror(errno));
        return -1;
    }
    int rc = connect(fd, (const struct sockaddr *)&addr->ss, addr->len);
    int e = rc < 0 ? errno : 0;
    close(fd);
    switch (e) {
    case ECONNREFUSED: /* a socket file nobody listens on: stale */
        if (unlink(path) < 0 && errno != ENOENT) {
            claim_err(err, "unix:%s: cannot remove the stale socket: %s", path,
                     strerror(errno));
            return -1;
        }
        return 0;
    case ENOENT: /* removed since the lstat */
        return 0;
    case 0:
    case EAGAIN:
    case EINPROGRESS:
        claim_err(err, "unix:%s: address in use: something is listening on %s",
                 path, path);
        return -1;
    case EPROTOTYPE: /* a datagram or seqpacket socket is bound there */
        claim_err(err, "unix:%s: address in use: a socket of another type is "
                 "bound to %s", path, path);
        return -1;
    default:
        claim_err(err, "unix:%s: address in use: cannot tell whether something "
                 "listens on %s (connect: %s)", path, path, strerror(e));
        return -1;
    }
}

int net_listen(const struct net_addr *addr, int backlog, char *err)
{
    return net_listen_opt(addr, backlog, 0, err);
}

int net_bind(const struct net_addr *addr, int type, int reuseport, const char *scheme, char *err)
{
    char name[160];
    net_addr_format((const struct sockaddr *)&addr->ss, addr->len, name, sizeof name);
    int family = addr->ss.ss_family;
    int fd = socket(family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, ECHOKIT_ERR_LEN, "%s%s: socket: %s", scheme, name, strerror(errno));
        return -1;
    }
    int one = 1;
    if (family != AF_UNIX) {
        /* TCP only: on UDP it would let a second socket take the port */
        if (type == SOCK_STREAM)
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) {
            snprintf(err, ECHOKIT_ERR_LEN, "%s%s: SO_REUSEPORT: %s", scheme, name,
                     strerror(errno));
            close(fd);
            return -1;
        }
        if (family == AF_INET6)
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    }
    if (bind(fd, (const struct sockaddr *)&addr->ss, addr->len) < 0) {
        snprintf(err, ECHOKIT_ERR_LEN, "%s%s: bind: %s", scheme, name, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

int net_listen_opt(const struct net_addr *addr, int backlog, int reuseport, char *err)
{
    /* Before the socket exists: a refusal leaves nothing to close. */
    if (addr->ss.ss_family == AF_UNIX && net_unix_claim(addr, err) < 0)
        return -1;
    int fd = net_bind(addr, SOCK_STREAM, reuseport, "", err);
    if (fd >= 0 && listen(fd, backlog) < 0) {
        char name[160];
        net_addr_format((const struct sockaddr *)&addr->ss, addr->len, name, sizeof name);
        snprintf(err, ECHOKIT_ERR_LEN, "%s: listen: %s", name, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

int net_accept(int lfd, struct net_addr *peer)
{
    peer->len = sizeof peer->ss;
    int fd = accept4(lfd, (struct sockaddr *)&peer->ss, &peer->len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0 && peer->ss.ss_family != AF_UNIX) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    return fd;
}

int net_connect(const struct net_addr *addr, int *in_progress, char *err)
{
    *in_progress = 0;
    int fd = socket(addr->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        int e = errno;
        snprintf(err, ECHOKIT_ERR_LEN, "socket: %s", strerror(e));
        errno = e;
        return -1;
    }
    if (addr->ss.ss_family != AF_UNIX) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    if (connect(fd, (const struct sockaddr *)&addr->ss, addr->len) < 0) {
        int e = errno;
        if (e == EINPROGRESS) {
            *in_progress = 1;
            return fd;
        }
        snprintf(err, ECHOKIT_ERR_LEN, "connect: %s", strerror(e));
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

int net_socket_error(int fd)
{
    int e = 0;
    socklen_t l = sizeof e;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &l) < 0)
        return errno;
    return e;
}

void net_set_reset(int fd)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
}

int net_local_addr(int fd, struct net_addr *out)
{
    out->len = sizeof out->ss;
    return getsockname(fd, (struct sockaddr *)&out->ss, &out->len);
}

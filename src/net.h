#ifndef ECHOKIT_NET_H
#define ECHOKIT_NET_H
/* Socket helpers. No libev, no Lua: each returns -1 with a message in err
 * (ECHOKIT_ERR_LEN bytes) on failure. */
#include <stddef.h>
#include <sys/socket.h>

#include "util.h"

struct net_addr {
    struct sockaddr_storage ss;
    socklen_t len;
};

/* Parses "HOST:PORT", "[V6]:PORT", "unix:/path" or a bare "PORT" (loopback).
 * HOST must be numeric unless resolve is set, in which case getaddrinfo() is
 * used (blocking: start-up only). */
int net_parse_addr(const char *spec, int resolve, struct net_addr *out, char *err);

/* As net_parse_addr without resolving: a numeric address returns 0 with out
 * filled; a host name returns 1 with the name in host and the port in *port. */
int net_parse_addr2(const char *spec, int resolve, struct net_addr *out, char *host,
                    size_t hostcap, int *port, char *err);

/* "127.0.0.1:7000", "[::1]:7000", "unix:/path". Returns buf. */
char *net_addr_format(const struct sockaddr *sa, socklen_t len, char *buf, size_t cap);

/* Host and port (or unix path and 0) of an address, for Lua. */
void net_addr_split(const struct sockaddr *sa, socklen_t len, char *host, size_t cap, int *port);

/* Makes a unix socket path free to bind without taking it from anyone: a
 * path that does not exist is free; a socket file that refuses a connect()
 * (ECONNREFUSED: nothing listens, it was left behind) is removed. Anything
 * else is refused with -1 and "address in use: ..." in err: a socket that
 * accepts the connect (something is listening there; unlinking it would
 * take over that service's clients), one of another type, and a path that
 * is not a socket. The probe and the bind are not atomic; a service started
 * in between makes the bind fail with EADDRINUSE. */
int net_unix_claim(const struct net_addr *addr, char *err);

/* Non-blocking, close-on-exec listening socket (SO_REUSEADDR; a unix path is
 * claimed first with net_unix_claim). Returns the fd. */
int net_listen(const struct net_addr *addr, int backlog, char *err);

/* As net_listen; with reuseport a TCP socket gets SO_REUSEPORT before bind,
 * so that other sockets with it (of the same user) can bind the same address
 * and the kernel spreads new connections over them. Ignored for unix paths. */
int net_listen_opt(const struct net_addr *addr, int backlog, int reuseport, char *err);

/* A non-blocking, close-on-exec socket of type (SOCK_STREAM, SOCK_DGRAM)
 * bound to addr: SO_REUSEADDR for TCP, SO_REUSEPORT if asked, IPv6 sockets
 * IPv6-only. Errors name the address after scheme ("udp://" or ""). Returns
 * the fd, or -1 with err filled. */
int net_bind(const struct net_addr *addr, int type, int reuseport, const char *scheme, char *err);

/* accept4() non-blocking + close-on-exec, TCP_NODELAY on TCP sockets.
 * Returns the fd, or -1 with errno set (EAGAIN when nothing is pending). */
int net_accept(int lfd, struct net_addr *peer);

/* Starts a non-blocking connect. Returns the fd; *in_progress is set when the
 * result will be known once the socket turns writable. */
int net_connect(const struct net_addr *addr, int *in_progress, char *err);

/* The pending error of a socket (SO_ERROR), 0 when none. */
int net_socket_error(int fd);

/* Arms SO_LINGER {1, 0} so that close() sends a RST. */
void net_set_reset(int fd);

int net_local_addr(int fd, struct net_addr *out);

#endif

#ifndef ECHOKIT_SERVER_H
#define ECHOKIT_SERVER_H
/* Listeners and the accept loop. Hands each accepted socket to on_accept. */
#include <ev.h>
#include <stddef.h>
#include <stdint.h>

#include "conn.h"
#include "net.h"
#include "udp.h"

#define SERVER_MAX_LISTENERS 16

struct server;

struct listener {
    ev_io io;
    int fd;
    struct net_addr addr; /* as bound (port 0 resolved) */
    struct server *srv;
    void *data;           /* the caller's (e.g. the listener's TLS setup) */
    /* server_copy_listeners: one socket per worker (copies[0] == fd) until
     * server_keep_copy picks one; NULL for a listener that is shared. */
    int *copies;
    int ncopies;
    /* udp://: a datagram socket (fd until server_start hands it to sock) */
    int udp;
    struct udp_sock sock;
};

/* Open connections from one client address (IPv4, or one IPv6 address;
 * an IPv4-mapped IPv6 peer counts as its IPv4 address). */
struct server_ip {
    unsigned char addr[16];
    uint32_t n; /* 0 = free slot */
};

struct server {
    struct conn_ctx *ctx;
    struct listener ls[SERVER_MAX_LISTENERS];
    int nls;
    int running;      /* listeners wanted (not stopped for shutdown) */
    int accepting;    /* watchers active */
    int reuseport;    /* TCP listeners opened from now on get SO_REUSEPORT */
    size_t max_conns; /* 0 = no limit */
    ev_timer backoff; /* fd exhaustion: retry accepting later */
    /* --max-conns-per-ip: 0 = no limit. Counted per process (per worker),
     * for TCP peers of this server's listeners only. */
    size_t max_conns_per_ip;
    struct server_ip *ips; /* open addressing, ips_cap a power of 2 */
    size_t ips_cap, ips_used;
    uint64_t *counted;     /* ids of the connections counted in ips (0 = free) */
    size_t counted_cap, counted_used;
    uint64_t seed;         /* hash seed for both */
    uint64_t refused;      /* closed over the limit since the last log line */
    ev_timer refused_log;  /* at most one such line a second */
    /* Out of descriptors (EMFILE and kin): logged when it starts, every few
     * seconds while it lasts, and when it ends. */
    int starved;
    int starved_errno;
    ev_tstamp starved_since, starved_reported;
    uint64_t deferred, accepted; /* failed and good accepts since the last line */
    /* Called with each accepted socket; it owns fd from then on, and wraps
     * it in a connection (conn_new) before it creates any other: the per-ip
     * count knows its connection by the next id. */
    void (*on_accept)(struct server *srv, struct listener *l, int fd,
                      const struct net_addr *peer);
    /* A UDP listener's datagram from a new peer: returns the flow made for
     * it with udp_flow_new (see struct udp_sock), or NULL. */
    struct conn *(*on_flow)(struct server *srv, struct listener *l, const struct net_addr *peer);
    /* If set when server_start runs: UDP listeners hand every datagram here
     * and make no flows (raw mode). */
    void (*on_datagram)(struct server *srv, struct listener *l, const char *buf, size_t len,
                        const struct net_addr *peer);
    void *data;
};

void server_init(struct server *srv, struct conn_ctx *ctx);

/* Binds and listens on spec ("udp://HOST:PORT" for datagrams); returns 0,
 * or -1 with err filled. */
int server_listen(struct server *srv, const char *spec, char *err);

/* Takes a socket already listening (bound by another process, e.g. the
 * --workers master) as a listener of srv, which owns fd from then on.
 * Returns 0, or -1 with the reason in err (fd left open). */
int server_adopt(struct server *srv, int fd, char *err);

/* --workers: gives each TCP listener n sockets bound to its address (as
 * bound: port 0 resolved), all with SO_REUSEPORT (srv->reuseport must have
 * been set before server_listen), so that the kernel spreads new connections
 * over the workers and no worker is woken for another's. Unix listeners stay
 * one socket, shared. Returns 0, or -1 with err filled (what was opened stays
 * for server_stop to close). */
int server_copy_listeners(struct server *srv, int n, char *err);

/* In worker i (0-based): keeps copy i of each copied listener and closes the
 * others (the parent keeps its own copies open, so connections queued on a
 * dead worker's socket wait there for its replacement). */
void server_keep_copy(struct server *srv, int i);

/* "127.0.0.1:7000" for listener i, as bound (no scheme: see l->udp). */
char *server_listener_name(const struct server *srv, int i, char *buf, size_t cap);

void server_start(struct server *srv);

/* Accepts what is already queued on the listeners (bounded), for shutdown. */
void server_drain_backlog(struct server *srv);

/* Stops accepting and closes the listeners (unix socket files stay: see
 * server_unlink_unix). Frees the per-ip counts: connections still open are
 * no longer counted. */
void server_stop(struct server *srv);

/* Removes unix socket files. Only the process that created them calls it:
 * workers share the listeners and must not unlink them under each other. */
void server_unlink_unix(struct server *srv);

/* A connection of the loop went away (any connection, whoever accepted or
 * opened it; c is still valid): its address is counted down if this server
 * counted it, and accepting may resume if a limit held it back. */
void server_conn_closed(struct server *srv, const struct conn *c);

#endif

#ifndef ECHOKIT_CONN_H
#define ECHOKIT_CONN_H
/* A connection: fd, embedded libev watchers, output queue with water marks,
 * half-close, idle timeout, deferred teardown. No Lua.
 *
 * Lifetime: conn_new() returns a connection holding one reference for being
 * open. Teardown (conn_abort, or a graceful close once flushed) stops the
 * watchers and closes the fd at once, but ops->on_close runs from the loop's
 * reaper, never from inside another callback of the same connection, and the
 * struct is freed when the last reference (conn_ref) is dropped. */
#include <ev.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>

#include "net.h"
#include "outq.h"

struct conn;
struct udp_ctx;
struct udp_sock;

struct conn_ops {
    /* Bytes arrived; buf is the loop's shared buffer, valid during the call. */
    void (*on_data)(struct conn *c, const char *buf, size_t len);
    /* The peer half-closed. The connection stays open (reading stops). */
    void (*on_eof)(struct conn *c);
    /* The output queue fell to the low-water mark after a write above high water. */
    void (*on_drain)(struct conn *c);
    /* An outbound connection is established (or failed: then on_close follows). */
    void (*on_connect)(struct conn *c);
    /* Exactly once. reason is NULL for a clean close. */
    void (*on_close)(struct conn *c, const char *reason);
    /* The struct is about to be freed. */
    void (*on_free)(struct conn *c);
    /* A piped chunk passes (only with CONN_TAP set), before it is relayed. */
    void (*on_tap)(struct conn *c, const char *buf, size_t len);
    /* (on_tap with buf NULL: a piped source's EOF, if CONN_TAP_EOF is set.) */
    /* A TLS handshake completed (conn_start_tls); for an outbound
     * connection on_connect follows. */
    void (*on_tls)(struct conn *c);
};

/* A read at least this large marks a connection as carrying a stream. */
#define CONN_BULK_READ (64 * 1024)

struct conn_stats {
    uint64_t open, total, bytes_in, bytes_out, errors;
    uint64_t flows; /* of open: UDP flows (CONN_DGRAM), inbound and outbound */
};

/* Shared by every connection of a loop. */
struct conn_ctx {
    struct ev_loop *loop;
    char *rbuf;
    size_t rbuf_len;
    size_t high_water, low_water; /* conn_write returns 0 above high water */
    size_t max_buffer;            /* hard per-connection cap */
    double idle_timeout;          /* default for new connections; 0 = none */
    double connect_timeout;       /* outbound connects; 0 = none */
    double handshake_timeout;     /* TLS handshakes; 0 = none */
    int splice;                   /* untapped pipes move bytes with splice(2) */
    struct conn_stats stats;
    uint64_t next_id;
    struct conn *all;             /* every connection not yet reaped */
    struct conn *reap;            /* torn down, on_close pending */
    struct conn *source;          /* whose input is being handled now */
    size_t turn_quota;            /* conn_write_fair: bytes per connection and loop turn */
    struct conn *fair;            /* quota used up: on_drain on the next turn */
    ev_prepare reaper;            /* every loop turn: reap, then the fair drains */
    ev_idle wake;                 /* keeps the loop from blocking while drains wait */
    /* After each reaped connection's on_close; c is still valid (its last
     * reference is dropped after this returns). */
    void (*on_reaped)(struct conn_ctx *ctx, struct conn *c);
    /* Datagrams (udp.h): made on first use, freed by conn_ctx_release. */
    struct udp_ctx *udp;
    double udp_idle_timeout;      /* a new flow's idle timeout; 0 = none */
    size_t max_flows;             /* flows of UDP listeners; 0 = no limit */
};

/* The default of turn_quota: a callback that keeps writing while
 * conn_write_fair returns 1 yields to the loop after this much. */
#define CONN_TURN_QUOTA (1024 * 1024)

enum {
    CONN_PAUSED = 1u << 0,     /* the handler paused reading */
    CONN_BP = 1u << 1,         /* a write this input caused is above high water */
    CONN_HOLD = 1u << 2,       /* the upper layer holds enough unread input */
    CONN_EOF = 1u << 3,        /* peer half-closed */
    CONN_SHUT_WANT = 1u << 4,  /* shutdown once flushed */
    CONN_SHUT_DONE = 1u << 5,
    CONN_CLOSING = 1u << 6,    /* close once flushed */
    CONN_DEAD = 1u << 7,       /* torn down; on_close pending or done */
    CONN_WANT_DRAIN = 1u << 8, /* a write returned 0: call on_drain */
    CONN_CONNECTING = 1u << 9,
    CONN_READING = 1u << 10,   /* read watcher active */
    CONN_TAP = 1u << 11,       /* call ops->on_tap for piped chunks */
    CONN_BULK = 1u << 12,      /* a read of CONN_BULK_READ+: splice when piped */
    CONN_TAP_EOF = 1u << 13,   /* call ops->on_tap(c, NULL, 0) at a piped EOF */
    CONN_FAIR = 1u << 14,      /* in ctx->fair */
    CONN_PIPE_RST = 1u << 15,  /* a reset of this piped connection resets the other end */
    CONN_REAPED = 1u << 16,    /* on_close has run */
    CONN_HANDSHAKE = 1u << 17, /* TLS handshake under way: input and output wait */
    CONN_TLS_WANT_W = 1u << 18, /* the SSL waits for the socket to turn writable */
    CONN_TLS_WANT_R = 1u << 19, /* a TLS write waits for the socket to turn readable */
    CONN_TLS_DONE = 1u << 20,  /* a handshake completed */
    CONN_TLS_SENT = 1u << 21,  /* close_notify sent */
    CONN_TLS_CONNECT = 1u << 22, /* outbound: on_connect once the handshake is done */
    CONN_DGRAM = 1u << 23,     /* a UDP flow (udp.h): one write is one datagram */
};

struct ssl_st; /* OpenSSL's SSL */

struct conn {
    struct conn_ctx *ctx;
    const struct conn_ops *ops;
    int fd;
    unsigned flags;
    int refs;
    uint64_t id;
    ev_io rio, wio;
    ev_timer idle;
    double timeout;
    struct outq out;
    uint64_t bytes_in, bytes_out;
    ev_tstamp created, last_active;
    char *reason;                  /* teardown reason, owned */
    struct conn *prev, *next;      /* ctx->all, or ctx->reap once dead */
    struct conn *bp_target;        /* the connection whose drain we await */
    struct conn *waiters;          /* connections waiting for our drain */
    struct conn *pipe_to;          /* our input is relayed there in C */
    struct conn *pipe_from;        /* whose input is relayed to us */
    int kp[2];                     /* splice: kernel pipe of bytes bound for us */
    size_t kp_len;                 /* bytes in it; they go out before out */
    struct net_addr *addrs;        /* outbound: addresses left to try */
    int naddrs;
    int connect_err;               /* a connect failed at once: report it soon */
    struct conn *wprev, *wnext;    /* in bp_target->waiters */
    struct conn *fair_next;        /* in ctx->fair */
    unsigned turn;                 /* the loop turn turn_bytes counts */
    size_t turn_bytes;             /* written by conn_write_fair this turn */
    union {
        struct sockaddr sa;
        struct sockaddr_in in4;
        struct sockaddr_in6 in6;
    } peer;
    socklen_t peer_len;
    struct ssl_st *ssl;            /* TLS: owned; NULL for plain TCP */
    struct outq raw;               /* plaintext queued before conn_start_tls */
    struct udp_sock *usock;        /* a UDP listener's flow: the socket it shares */
    unsigned held;                 /* outbound flow, name not resolved yet: datagrams
                                    * held in out, each after its length (udp.c) */
};

void conn_ctx_init(struct conn_ctx *ctx, struct ev_loop *loop, char *rbuf, size_t rbuf_len);

/* Wraps an open, non-blocking socket; size >= sizeof(struct conn) lets the
 * upper layer embed the connection in its own struct. Returns NULL when out of
 * memory (fd left open). Reading starts at once unless connecting is set
 * (outbound: on_connect fires when the socket turns writable). */
struct conn *conn_new(struct conn_ctx *ctx, int fd, size_t size, const struct conn_ops *ops,
                      const struct net_addr *peer, int connecting);

/* An outbound connection, not connected yet (fd -1): writes queue until it is.
 * Start it with conn_connect(), or tear it down with conn_abort(). */
struct conn *conn_new_outbound(struct conn_ctx *ctx, size_t size, const struct conn_ops *ops);

/* A flow of UDP socket sock (udp_flow_new calls it): CONN_DGRAM, fd shared
 * with the socket and never closed by the flow, idle timeout
 * ctx->udp_idle_timeout. NULL when out of memory. */
struct conn *conn_new_dgram(struct conn_ctx *ctx, int fd, size_t size, const struct conn_ops *ops,
                            const struct net_addr *peer, struct udp_sock *sock);

/* An outbound UDP flow, not connected yet: conn_connect makes its
 * connected socket (at once: on_connect follows from the loop). Datagrams
 * written before it has a socket (a host name being resolved) are held,
 * a bounded number (udp.h), and sent once it has one. */
struct conn *conn_new_outbound_dgram(struct conn_ctx *ctx, size_t size, const struct conn_ops *ops);

/* A datagram arrived for flow c (udp.c): counted, then tapped, relayed to
 * the pipe's destination in C, or handed to ops->on_data. May free c. */
void conn_dgram_input(struct conn *c, const char *buf, size_t len);

/* A flow's socket reported err (ECONNREFUSED: the peer's port is closed):
 * torn down with the reason ("refused", ...). */
void conn_dgram_failed(struct conn *c, int err);

/* Connects to the first of n addresses, falling back to the next ones when a
 * connect is refused or unreachable. Failure tears the connection down with
 * a reason ("refused", "timeout", "unreachable", "error: ..."). */
void conn_connect(struct conn *c, const struct net_addr *addrs, int n);

/* Relays src's input to dst in C: back-pressure through the source mechanism,
 * src's EOF becomes dst's shutdown, and either end's teardown closes the other
 * after flushing; with reset, a reset of either end (the peer's RST) resets
 * the other at once instead, so a truncated stream stays distinguishable.
 * Returns -1 if dst already has another source, -2 if either end is already
 * torn down, -3 if one end is a UDP flow and the other is not. Between two
 * flows the relay is datagram by datagram. */
int conn_pipe(struct conn *src, struct conn *dst, int reset);
void conn_unpipe(struct conn *src);

/* Makes c a TLS connection driven by ssl (made for the server or the client
 * side), which c then owns. An outbound connection not yet connected
 * handshakes once connected, and on_connect waits for the handshake; an
 * established one upgrades in place (STARTTLS): what was queued before goes
 * out in the clear, then the handshake, then everything written since,
 * encrypted. Input and output wait during the handshake, which
 * ctx->handshake_timeout bounds; on_tls follows it, a failure tears c down
 * with the reason ("error: tls handshake: ..."). Returns -1 if c is
 * already TLS, -2 if it is torn down (ssl is not taken then). */
int conn_start_tls(struct conn *c, struct ssl_st *ssl);

void conn_ref(struct conn *c);
void conn_unref(struct conn *c); /* may free */

/* Queues len bytes, writing at once when nothing is queued. On a UDP flow:
 * one datagram (len 0 = an empty one), never queued here (udp.h), and 1
 * unless the flow is closed. Returns 1, or 0
 * when the queue is now above high water (bytes still queued), -1 if the
 * connection is closed or closing, -2 if the bytes would exceed max_buffer
 * (the connection is then torn down with an error). */
int conn_write(struct conn *c, const void *data, size_t len);

/* conn_write under the fairness rule: once ctx->turn_quota bytes have been
 * written to c in this loop turn it returns 0 ("wait") even if the socket
 * took them all, and ops->on_drain follows on the next turn; a writer that
 * stops at 0 and continues in on_drain thus gives the loop back at least
 * once per quota. Same results as conn_write otherwise. */
static inline int conn_write_fair(struct conn *c, const void *data, size_t len);

/* conn_write_fair's slow path, once the count reaches the quota: 1, or 0
 * with the drain scheduled. */
int conn_fair_turn(struct conn *c, size_t len);

/* Runs a torn-down connection's on_close now instead of at the end of the
 * loop turn, and drops the reference it held for being open (which may free
 * it). Only for a caller that holds no pointer into c afterwards and is not
 * inside another callback of c: ops->on_data, from the loop, for a
 * connection its handler's error tore down, so that what the handler held
 * for it is released before the next connection's callback runs. */
void conn_reap_now(struct conn *c);

void conn_close(struct conn *c);    /* after the queue is flushed */
void conn_shutdown(struct conn *c); /* half-close once flushed */
/* Tears down now: reason NULL = clean; rst sends a TCP RST. Idempotent. */
void conn_abort(struct conn *c, const char *reason, int rst);

void conn_set_paused(struct conn *c, int paused);
void conn_set_hold(struct conn *c, int hold);
void conn_set_timeout(struct conn *c, double seconds); /* 0 = none */

/* Bytes accepted for output and not yet written. */
static inline size_t conn_queued(const struct conn *c)
{
    return c->out.len + c->kp_len + c->raw.len;
}

static inline int conn_write_fair(struct conn *c, const void *data, size_t len)
{
    int rc = conn_write(c, data, len);
    c->turn_bytes += len;
    if (rc != 1 || c->turn_bytes < c->ctx->turn_quota)
        return rc;
    return conn_fair_turn(c, len);
}

static inline int conn_is_open(const struct conn *c)
{
    return !(c->flags & (CONN_DEAD | CONN_CLOSING));
}

/* "[conn 7 127.0.0.1:51514]" */
const char *conn_label(const struct conn *c, char *buf, size_t cap);

/* After the loop has stopped, every connection reaped: drops what the
 * context still holds (connections waiting for a fair drain). */
void conn_ctx_release(struct conn_ctx *ctx);

/* Aborts every live connection with reason (shutdown). */
void conn_abort_all(struct conn_ctx *ctx, const char *reason);

#endif

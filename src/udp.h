#ifndef ECHOKIT_UDP_H
#define ECHOKIT_UDP_H
/* Datagrams: a UDP socket read in batches (recvmmsg) into one per-loop
 * buffer, its flows (one struct conn per peer address, CONN_DGRAM) and the
 * batched output (sendmmsg). No Lua.
 *
 * A flow is a connection in datagram mode: conn_write sends one datagram,
 * the idle timer expires it ("timeout"), a pipe between two flows relays
 * datagram by datagram in C. A listener's flows share its socket (which
 * their teardown never closes); an outbound flow (udp_connect) owns a
 * connected socket of its own.
 *
 * Output: datagrams written during a loop turn are queued (copied into one
 * per-loop arena) and sent with sendmmsg, one call per socket (the queue
 * grouped by socket, each socket's datagrams in their order), when the queue
 * fills and before the loop polls again. A datagram the
 * kernel refuses (EAGAIN, ENOBUFS: the socket buffer is full) is dropped and
 * counted with the rest of that socket's run, never fatal; one refused for
 * itself (EMSGSIZE, EPERM...) is dropped alone. */
#include <ev.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "conn.h"
#include "net.h"

/* Datagrams moved per recvmmsg/sendmmsg call. */
#define UDP_BATCH 32
/* The largest datagram taken in: a bigger one (IPv6 jumbogram) arrives
 * truncated, and is dropped and counted. */
#define UDP_MAX_DGRAM 65536
/* The largest payload a datagram carries: 65,535 bytes less the IP header
 * (20, IPv4) and the UDP header (8); IPv6's header is not counted in its
 * length, only the UDP one. */
#define UDP_MAX_PAYLOAD4 65507
#define UDP_MAX_PAYLOAD6 65527

static inline size_t udp_max_payload(int family)
{
    return family == AF_INET ? UDP_MAX_PAYLOAD4 : UDP_MAX_PAYLOAD6;
}

struct udp_stats {
    uint64_t dgrams_in, dgrams_out;
    uint64_t drop_send;   /* the kernel refused them (socket buffer full, too
                           * large for the path, not permitted...), or over
                           * the bound held while a name was resolved */
    uint64_t drop_trunc;  /* larger than UDP_MAX_DGRAM */
    uint64_t drop_flows;  /* from new peers over --max-flows */
    uint64_t drop_rcvbuf; /* by the kernel: a listener's receive buffer was full */
    uint64_t drop_unread; /* for a paused flow, or a serve not in receive() */
    uint64_t drop_loop;   /* that would start a reflection loop (udp.c reflected) */
};

/* The kinds of drops, each logged at most once a second. */
enum {
    UDP_DROP_SEND,
    UDP_DROP_TRUNC,
    UDP_DROP_FLOWS,
    UDP_DROP_RCVBUF,
    UDP_DROP_REFUSED, /* a send the kernel refused for that datagram alone */
    UDP_DROP_HELD,    /* written while the peer's name was resolved, over the bound */
    UDP_DROP_LOOP,    /* from the socket's own address or a reflector's port */
    UDP_DROP_KINDS
};

struct udp_sock;

/* One per loop (conn_ctx->udp), made by udp_ctx_get. */
struct udp_ctx {
    struct conn_ctx *ctx;  /* its max_flows and udp_idle_timeout apply */
    size_t nflows;         /* flows of listeners (outbound ones not counted) */
    struct udp_stats stats;
    char *rbuf;            /* UDP_BATCH slots of UDP_MAX_DGRAM */
    /* recvmmsg's headers, set up once: slot i reads into rbuf's slot i, its
     * sender's address into from[i]; the fields a call changed are reset
     * before the next (rused of them) */
    struct mmsghdr rm[UDP_BATCH];
    struct iovec riov[UDP_BATCH];
    struct net_addr from[UDP_BATCH];
    union udp_ctl {
        char buf[CMSG_SPACE(sizeof(uint32_t))];
        struct cmsghdr align;
    } rctl[UDP_BATCH];
    int rused;
    /* the output queue */
    struct udp_out {
        int fd;
        struct conn *c;    /* the flow it is for (referenced), or NULL */
        const void *to;    /* the peer: the flow's own address (it is
                            * referenced), or raw[i]; NULL: a connected socket */
        socklen_t tolen;
        size_t off, len;
    } out[UDP_BATCH];
    struct net_addr raw[UDP_BATCH]; /* udp_sendto's peers */
    int nout;
    struct udp_sock *socks; /* the started sockets: closed by udp_ctx_free */
    char *arena;           /* the queued datagrams' bytes */
    size_t arena_used;
    ev_prepare flush;      /* sends the queue before the loop polls */
    struct udp_drops {
        ev_timer log;      /* runs for a second after a line */
        uint64_t n;        /* dropped since that line */
        struct udp_ctx *u;
        int kind;
    } drops[UDP_DROP_KINDS];
};

/* The loop's datagram context, made on first use. NULL when out of memory. */
struct udp_ctx *udp_ctx_get(struct conn_ctx *ctx);
/* Closes every socket still started (udp_sock_close: their flows end), sends
 * what is queued and frees the context. A socket closed here may still be
 * closed again later (a listener's __gc at lua_close): that finds nothing. */
void udp_ctx_free(struct conn_ctx *ctx);

/* A UDP socket that takes datagrams from any peer (a listener). */
struct udp_sock {
    ev_io io;
    int fd;
    int family;           /* AF_INET or AF_INET6 */
    struct net_addr self; /* as bound (a wildcard address: any) */
    uint32_t rxq_ovfl;    /* the kernel's drop count last seen (SO_RXQ_OVFL) */
    struct udp_ctx *u;    /* NULL until started, and once closed */
    struct udp_sock *next, **pprev; /* in u->socks while started */
    /* flows by peer address: open addressing, cap a power of 2, at most
     * half full */
    struct conn **flows;
    size_t cap, used;
    uint64_t seed;
    /* Raw mode, when set: every datagram goes here and no flow is made. */
    void (*on_datagram)(struct udp_sock *s, const char *buf, size_t len,
                        const struct net_addr *peer);
    /* A datagram from a new peer: returns the flow made for it with
     * udp_flow_new (on_connect already run), or NULL (the datagram is
     * dropped). */
    struct conn *(*on_flow)(struct udp_sock *s, const struct net_addr *peer);
    void *data;
};

/* Binds a non-blocking UDP socket to addr (SO_REUSEPORT with reuseport).
 * Returns the fd, or -1 with err filled. */
int udp_bind(const struct net_addr *addr, int reuseport, char *err);

/* Starts reading fd (bound by udp_bind), which s then owns. Returns 0, or -1
 * when out of memory (err filled). */
int udp_sock_start(struct udp_sock *s, struct conn_ctx *ctx, int fd, char *err);

/* Sends what is queued, aborts every flow of s ("shutdown") and closes its
 * socket. Idempotent (s->u is NULL after it); s may be started again. */
void udp_sock_close(struct udp_sock *s);

/* A flow of s for peer (size >= sizeof(struct conn) as conn_new), entered
 * in s's table. NULL when out of memory. */
struct conn *udp_flow_new(struct udp_sock *s, size_t size, const struct conn_ops *ops,
                          const struct net_addr *peer);

/* A connected UDP socket to addr (outbound flows). Returns the fd, or -1
 * with errno set. */
int udp_connect_fd(const struct net_addr *addr);

/* Queues one datagram from s to peer (raw mode). Returns 1, or -1 if s is
 * closed. */
int udp_sendto(struct udp_sock *s, const void *data, size_t len, const struct net_addr *peer);

/* Datagrams an outbound flow holds while its host name is resolved: past
 * either bound they are dropped and counted. */
#define UDP_HELD_MAX 64
#define UDP_HELD_BYTES (256 * 1024)

/* The conn layer's side (conn.c): */
/* An outbound flow has its socket now: the datagrams held for it are
 * queued, in order. */
void udp_conn_send_held(struct conn *c);
/* conn_write on a flow: queues one datagram (len 0 is an empty one).
 * Returns 1, or -1 if the flow is closed; a datagram that cannot be sent
 * (out of memory, no socket yet) is dropped and counted. */
int udp_conn_write(struct conn *c, const void *data, size_t len);
/* The flow's socket is readable (outbound flows: their own socket). */
void udp_conn_readable(struct conn *c);
/* Teardown of a flow: out of its socket's table, the queue flushed, an
 * owned socket closed. */
void udp_conn_detach(struct conn *c);
/* Sends the queue now. */
void udp_flush(struct udp_ctx *u);

#endif

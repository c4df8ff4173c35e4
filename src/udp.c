#include "udp.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

/* The output arena: a full batch of small datagrams, or a few large ones;
 * a datagram that does not fit sends what is queued first. */
#define UDP_ARENA (256 * 1024)
/* Datagrams dropped (socket buffer full, oversized): one line this often. */
#define UDP_LOG_SECONDS 1.0
/* recvmmsg calls per readiness event: a flooded socket yields to the loop. */
#define UDP_ROUNDS 8

static void flush_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    /* stopped first: what a flow torn down by the flush (its on_close)
     * writes starts it again */
    ev_prepare_stop(loop, w);
    udp_flush(container_of(w, struct udp_ctx, flush));
}

/* What each kind of drop is, for the log lines. */
static const char *const drop_what[UDP_DROP_KINDS] = {
    [UDP_DROP_SEND] = "socket buffer full on sending",
    [UDP_DROP_TRUNC] = "over 65535 bytes",
    [UDP_DROP_FLOWS] = "new peers over --max-flows",
    [UDP_DROP_RCVBUF] = "by the kernel: receive buffer full",
    [UDP_DROP_REFUSED] = "the kernel refused to send them (too large for the path, not "
                         "permitted, or a bad destination)",
    [UDP_DROP_LOOP] = "a reflection loop: from the listener's own address, port 0, or the "
                      "port of a service that answers every datagram (7, 13, 17, 19, 37)",
    [UDP_DROP_HELD] = "written while the peer's name was resolved, over 64 datagrams or "
                      "256 KiB held",
};

/* A send error that ends a connected flow: the peer or the way to it is
 * gone (an ICMP error the socket reported, ...). Any other one (EMSGSIZE,
 * EINVAL, EACCES, EPERM: that datagram's own trouble) only drops it. */
static int send_error_ends_flow(int err)
{
    switch (err) {
    case ECONNREFUSED:
    case ECONNRESET:
    case EHOSTUNREACH:
    case ENETUNREACH:
    case EHOSTDOWN:
    case ENETDOWN:
    case ENOTCONN:
    case EPIPE:
        return 1;
    default:
        return 0;
    }
}

/* A second after a line about drops: one more line if more came. */
static void drop_log_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct udp_drops *d = container_of(w, struct udp_drops, log);
    if (!d->n)
        return;
    log_msg(LOG_WARN, "udp: dropped %llu more datagram(s) in the last %gs: %s (%zu flows open)",
            (unsigned long long)d->n, UDP_LOG_SECONDS, drop_what[d->kind], d->u->nflows);
    d->n = 0;
    ev_timer_set(w, UDP_LOG_SECONDS, 0);
    ev_timer_start(loop, w);
}

/* n datagrams of a kind dropped (already counted in the stats): a line now
 * if none was written in the last second (naming peer if given), else they
 * wait for the next one. */
static void note_drop(struct udp_ctx *u, int kind, uint64_t n, const struct net_addr *peer)
{
    struct udp_drops *d = &u->drops[kind];
    if (ev_is_active(&d->log)) {
        d->n += n;
        return;
    }
    char name[160] = "";
    if (peer) {
        name[0] = ' ';
        net_addr_format((const struct sockaddr *)&peer->ss, peer->len, name + 1, sizeof name - 1);
    }
    log_msg(LOG_WARN, "udp: dropped %llu datagram(s)%s%s: %s (%zu flows open)",
            (unsigned long long)n, peer ? " from" : "", name, drop_what[kind], u->nflows);
    ev_timer_set(&d->log, UDP_LOG_SECONDS, 0);
    ev_timer_start(u->ctx->loop, &d->log);
}

struct udp_ctx *udp_ctx_get(struct conn_ctx *ctx)
{
    if (ctx->udp)
        return ctx->udp;
    struct udp_ctx *u = calloc(1, sizeof *u);
    if (!u)
        return NULL;
    u->rbuf = malloc((size_t)UDP_BATCH * UDP_MAX_DGRAM);
    u->arena = malloc(UDP_ARENA);
    if (!u->rbuf || !u->arena) {
        free(u->rbuf);
        free(u->arena);
        free(u);
        return NULL;
    }
    u->ctx = ctx;
    for (int i = 0; i < UDP_BATCH; i++) {
        u->riov[i].iov_base = u->rbuf + (size_t)i * UDP_MAX_DGRAM;
        u->riov[i].iov_len = UDP_MAX_DGRAM;
        u->rm[i].msg_hdr = (struct msghdr){.msg_iov = &u->riov[i], .msg_iovlen = 1,
                                           .msg_name = &u->from[i].ss,
                                           .msg_namelen = sizeof u->from[i].ss,
                                           .msg_control = u->rctl[i].buf,
                                           .msg_controllen = sizeof u->rctl[i].buf};
    }
    ev_prepare_init(&u->flush, flush_cb);
    /* after the reaper (priority 0): datagrams on_close writes go too */
    ev_set_priority(&u->flush, EV_MINPRI);
    for (int k = 0; k < UDP_DROP_KINDS; k++) {
        ev_init(&u->drops[k].log, drop_log_cb);
        u->drops[k].u = u;
        u->drops[k].kind = k;
    }
    ctx->udp = u;
    return u;
}

void udp_ctx_free(struct conn_ctx *ctx)
{
    struct udp_ctx *u = ctx->udp;
    if (!u)
        return;
    /* a socket still open (a listener userdata that lua_close collects
     * later) must not reach u through s->u once u is freed */
    while (u->socks)
        udp_sock_close(u->socks);
    udp_flush(u);
    ev_prepare_stop(ctx->loop, &u->flush);
    for (int k = 0; k < UDP_DROP_KINDS; k++)
        ev_timer_stop(ctx->loop, &u->drops[k].log);
    free(u->rbuf);
    free(u->arena);
    free(u);
    ctx->udp = NULL;
}

int udp_bind(const struct net_addr *addr, int reuseport, char *err)
{
    char name[160];
    net_addr_format((const struct sockaddr *)&addr->ss, addr->len, name, sizeof name);
    int family = addr->ss.ss_family;
    if (family != AF_INET && family != AF_INET6) {
        snprintf(err, ECHOKIT_ERR_LEN, "udp://%s: UDP needs an IP address", name);
        return -1;
    }
    return net_bind(addr, SOCK_DGRAM, reuseport, "udp://", err);
}

int udp_connect_fd(const struct net_addr *addr)
{
    int family = addr->ss.ss_family;
    if (family != AF_INET && family != AF_INET6) {
        errno = EAFNOSUPPORT;
        return -1;
    }
    int fd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (const struct sockaddr *)&addr->ss, addr->len) < 0) {
        int err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    return fd;
}

/* ---- the flow table ------------------------------------------------------ */

/* The finalizer of splitmix64: a bijection of 64 bits, every input bit
 * reaching every output bit. */
static inline uint64_t mix64(uint64_t k)
{
    k = (k ^ (k >> 30)) * 0xbf58476d1ce4e5b9ULL;
    k = (k ^ (k >> 27)) * 0x94d049bb133111ebULL;
    return k ^ (k >> 31);
}

/* The peer's port and address mixed with a random seed: a client cannot pick
 * source ports (or addresses) that collide on purpose without the seed. IPv4
 * (the common case) is one 48-bit key, so distinct peers never share a
 * hash; IPv6 goes in 64 bits at a time, each mixed into the state. */
static inline size_t peer_hash(const struct udp_sock *s, const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const void *)sa;
        return (size_t)mix64(((uint64_t)in->sin_addr.s_addr << 16 | in->sin_port) ^ s->seed);
    }
    const struct sockaddr_in6 *in6 = (const void *)sa;
    uint64_t w[2];
    memcpy(w, &in6->sin6_addr, sizeof w);
    uint64_t h = mix64(s->seed ^ w[0]);
    h = mix64(h ^ w[1]);
    return (size_t)mix64(h ^ in6->sin6_port);
}

static inline int peer_eq(const struct sockaddr *a, const struct sockaddr *b)
{
    if (a->sa_family != b->sa_family)
        return 0;
    if (a->sa_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
    return x->sin6_port == y->sin6_port &&
           !memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) &&
           x->sin6_scope_id == y->sin6_scope_id;
}

/* The slot of peer, or the free slot where it would go. */
static struct conn **flow_slot(const struct udp_sock *s, const struct sockaddr *peer)
{
    size_t mask = s->cap - 1;
    for (size_t i = peer_hash(s, peer) & mask;; i = (i + 1) & mask) {
        struct conn *c = s->flows[i];
        if (!c || peer_eq(&c->peer.sa, peer))
            return &s->flows[i];
    }
}

static struct conn *flow_find(const struct udp_sock *s, const struct sockaddr *peer)
{
    return s->cap ? *flow_slot(s, peer) : NULL;
}

static int flows_reserve(struct udp_sock *s)
{
    if ((s->used + 1) * 2 <= s->cap)
        return 0;
    size_t cap = s->cap ? s->cap * 2 : 64;
    struct conn **old = s->flows, **t = calloc(cap, sizeof *t);
    if (!t)
        return -1;
    size_t oldcap = s->cap;
    s->flows = t;
    s->cap = cap;
    for (size_t i = 0; i < oldcap; i++)
        if (old[i])
            *flow_slot(s, &old[i]->peer.sa) = old[i];
    free(old);
    return 0;
}

/* Linear probing without tombstones: the entries after the hole that would
 * no longer be found move back into it. */
static void flow_remove(struct udp_sock *s, struct conn **e)
{
    size_t mask = s->cap - 1, hole = (size_t)(e - s->flows);
    for (size_t i = (hole + 1) & mask; s->flows[i]; i = (i + 1) & mask) {
        size_t home = peer_hash(s, &s->flows[i]->peer.sa) & mask;
        if (((i - home) & mask) >= ((i - hole) & mask)) {
            s->flows[hole] = s->flows[i];
            hole = i;
        }
    }
    s->flows[hole] = NULL;
    s->used--;
}

struct conn *udp_flow_new(struct udp_sock *s, size_t size, const struct conn_ops *ops,
                          const struct net_addr *peer)
{
    if (flows_reserve(s) < 0)
        return NULL;
    struct conn *c = conn_new_dgram(s->u->ctx, s->fd, size, ops, peer, s);
    if (!c)
        return NULL;
    *flow_slot(s, &c->peer.sa) = c;
    s->used++;
    s->u->nflows++;
    return c;
}

void udp_conn_detach(struct conn *c)
{
    struct udp_sock *s = c->usock;
    if (s) {
        struct conn **e = s->cap ? flow_slot(s, &c->peer.sa) : NULL;
        if (e && *e == c) {
            flow_remove(s, e);
            s->u->nflows--;
        }
        c->usock = NULL;
    } else if (c->fd >= 0) {
        /* what this flow wrote goes out before its socket closes */
        if (c->ctx->udp)
            udp_flush(c->ctx->udp);
        close(c->fd);
    }
    c->fd = -1;
}

/* ---- input --------------------------------------------------------------- */

/* One recvmmsg into the loop's batch buffer (u->rm: datagram i in rbuf's
 * slot i, its sender in u->from[i] with .len set): how many arrived, or -1
 * with errno (EAGAIN: none). With ovfl, *ovfl is updated to the newest count
 * of the kernel's drops the datagrams carried (SO_RXQ_OVFL). */
static int recv_batch(struct udp_ctx *u, int fd, uint32_t *ovfl)
{
    /* only the headers the last call filled changed */
    for (int i = 0; i < u->rused; i++) {
        u->rm[i].msg_hdr.msg_namelen = sizeof u->from[i].ss;
        u->rm[i].msg_hdr.msg_controllen = sizeof u->rctl[i].buf;
    }
    int n = recvmmsg(fd, u->rm, UDP_BATCH, MSG_DONTWAIT, NULL);
    u->rused = n > 0 ? n : 0;
    for (int i = 0; i < n; i++)
        u->from[i].len = u->rm[i].msg_hdr.msg_namelen;
    /* SO_RXQ_OVFL: each datagram carries the socket's count of datagrams
     * the kernel dropped before it (when not 0); the last one's is newest */
    for (int i = n - 1; ovfl && i >= 0; i--) {
        struct cmsghdr *cm = CMSG_FIRSTHDR(&u->rm[i].msg_hdr);
        if (cm && cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SO_RXQ_OVFL) {
            memcpy(ovfl, CMSG_DATA(cm), sizeof *ovfl);
            break;
        }
    }
    return n;
}

/* Source ports a datagram is never answered to: 0 (nothing can be sent
 * there) and the inetd services that answer every datagram (echo 7,
 * daytime 13, qotd 17, chargen 19, time 37), as inetd's check_loop: two
 * such servers, or one and us, would answer each other forever. */
#define REFLECTOR_PORTS ((1ull << 0) | (1ull << 7) | (1ull << 13) | (1ull << 17) | \
                         (1ull << 19) | (1ull << 37))

/* Whether sa, a wildcard-bound socket's peer on its own port, is this host:
 * a loopback address (other addresses of the host are not known here
 * without the datagram's destination: a listener bound to one address is
 * checked exactly). */
static int self_addr(const struct udp_sock *s, const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        uint32_t own = ((const struct sockaddr_in *)&s->self.ss)->sin_addr.s_addr;
        uint32_t a = ((const struct sockaddr_in *)sa)->sin_addr.s_addr;
        return own == htonl(INADDR_ANY) ? (ntohl(a) >> 24) == 127 : a == own;
    }
    const struct in6_addr *own = &((const struct sockaddr_in6 *)&s->self.ss)->sin6_addr;
    const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
    return IN6_IS_ADDR_UNSPECIFIED(own) ? IN6_IS_ADDR_LOOPBACK(a) : !memcmp(a, own, sizeof *a);
}

/* A datagram answering which would start a reflection loop (RFC 862's
 * classic): from the socket's own address (a spoofed source: we would
 * answer ourselves forever), or from a reflector port. The port is looked
 * at first: for nearly every datagram that is all. */
static inline int reflected(const struct udp_sock *s, const struct sockaddr *sa)
{
    /* sin_port and sin6_port are at the same place */
    uint16_t port = ((const struct sockaddr_in *)sa)->sin_port;
    if (port == ((const struct sockaddr_in *)&s->self.ss)->sin_port)
        return self_addr(s, sa);
    uint16_t p = ntohs(port);
    return p < 64 && (REFLECTOR_PORTS >> p & 1);
}

/* A datagram that did not fit: dropped, counted, reported. */
static int truncated(struct udp_ctx *u, const struct mmsghdr *m)
{
    if (!(m->msg_hdr.msg_flags & MSG_TRUNC))
        return 0;
    u->stats.drop_trunc++;
    note_drop(u, UDP_DROP_TRUNC, 1, NULL);
    return 1;
}

static void sock_readable(struct ev_loop *loop, ev_io *w, int revents)
{
    struct udp_sock *s = container_of(w, struct udp_sock, io);
    struct udp_ctx *u = s->u;
    struct mmsghdr *m = u->rm;
    for (int round = 0; round < UDP_ROUNDS && s->fd >= 0; round++) {
        uint32_t ovfl = s->rxq_ovfl;
        int n = recv_batch(u, s->fd, &ovfl);
        if (ovfl != s->rxq_ovfl) {
            uint32_t lost = ovfl - s->rxq_ovfl; /* the kernel's count wraps */
            s->rxq_ovfl = ovfl;
            u->stats.drop_rcvbuf += lost;
            note_drop(u, UDP_DROP_RCVBUF, lost, NULL);
        }
        if (n < 0) {
            /* EAGAIN: drained. An unconnected socket reports no ICMP error
             * (no IP_RECVERR), but a stray one must not stop the reading. */
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
                errno != ECONNREFUSED)
                log_msg(LOG_WARN, "udp: recvmmsg: %s", strerror(errno));
            return;
        }
        for (int i = 0; i < n && s->fd >= 0; i++) {
            if (truncated(u, &m[i]))
                continue;
            const char *buf = u->rbuf + (size_t)i * UDP_MAX_DGRAM;
            size_t len = m[i].msg_len;
            const struct net_addr *peer = &u->from[i];
            u->stats.dgrams_in++;
            if (reflected(s, (const struct sockaddr *)&peer->ss)) {
                u->stats.drop_loop++;
                note_drop(u, UDP_DROP_LOOP, 1, peer);
                continue;
            }
            if (s->on_datagram) {
                s->on_datagram(s, buf, len, peer);
                continue;
            }
            struct conn *c = flow_find(s, (const struct sockaddr *)&peer->ss);
            if (!c) {
                if (u->ctx->max_flows && u->nflows >= u->ctx->max_flows) {
                    u->stats.drop_flows++;
                    note_drop(u, UDP_DROP_FLOWS, 1, peer);
                    continue;
                }
                c = s->on_flow(s, peer);
                if (!c || (c->flags & CONN_DEAD))
                    continue;
            }
            if (c->flags & CONN_PAUSED) {
                u->stats.drop_unread++; /* a paused flow of a listener: dropped */
                continue;
            }
            conn_dgram_input(c, buf, len); /* may free c */
        }
        if (n < UDP_BATCH)
            return;
    }
}

int udp_sock_start(struct udp_sock *s, struct conn_ctx *ctx, int fd, char *err)
{
    struct udp_ctx *u = udp_ctx_get(ctx);
    if (!u) {
        snprintf(err, ECHOKIT_ERR_LEN, "udp: out of memory");
        return -1;
    }
    s->u = u;
    s->fd = fd;
    s->next = u->socks;
    if (s->next)
        s->next->pprev = &s->next;
    s->pprev = &u->socks;
    u->socks = s;
    if (net_local_addr(fd, &s->self) < 0) {
        memset(&s->self, 0, sizeof s->self);
        s->self.ss.ss_family = AF_INET;
    }
    s->family = s->self.ss.ss_family;
    if (!s->seed) {
        if (getrandom(&s->seed, sizeof s->seed, GRND_NONBLOCK) != sizeof s->seed)
            s->seed = (uint64_t)getpid() * 0x9e3779b97f4a7c15ULL ^ (uint64_t)(ev_time() * 1e6);
    }
    /* the kernel counts what it drops for want of room: told with each datagram */
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_RXQ_OVFL, &one, sizeof one);
    s->rxq_ovfl = 0;
    ev_io_init(&s->io, sock_readable, fd, EV_READ);
    ev_io_start(ctx->loop, &s->io);
    return 0;
}

void udp_sock_close(struct udp_sock *s)
{
    struct udp_ctx *u = s->u;
    if (!u)
        return; /* never started, closed already, or its context is gone */
    ev_io_stop(u->ctx->loop, &s->io);
    udp_flush(u);
    /* Aborting a flow removes it (moving others back): look at a slot again
     * until it is empty. */
    for (size_t i = 0; i < s->cap;) {
        if (s->flows[i])
            conn_abort(s->flows[i], "shutdown", 0);
        else
            i++;
    }
    free(s->flows);
    s->flows = NULL;
    s->cap = s->used = 0;
    close(s->fd);
    s->fd = -1;
    *s->pprev = s->next;
    if (s->next)
        s->next->pprev = s->pprev;
    s->next = NULL;
    s->pprev = NULL;
    s->u = NULL;
}

void udp_conn_readable(struct conn *c)
{
    struct udp_ctx *u = udp_ctx_get(c->ctx);
    if (!u)
        return;
    struct mmsghdr *m = u->rm;
    conn_ref(c); /* on_data may reap it */
    for (int round = 0; round < UDP_ROUNDS && !(c->flags & CONN_DEAD); round++) {
        int n = recv_batch(u, c->fd, NULL);
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                conn_dgram_failed(c, errno); /* ECONNREFUSED: "refused" */
            break;
        }
        for (int i = 0; i < n && !(c->flags & CONN_DEAD); i++) {
            if (truncated(u, &m[i]))
                continue;
            u->stats.dgrams_in++;
            conn_dgram_input(c, u->rbuf + (size_t)i * UDP_MAX_DGRAM, m[i].msg_len);
        }
        if (n < UDP_BATCH)
            break;
    }
    conn_unref(c);
}

/* ---- output -------------------------------------------------------------- */

/* Sends the queue if a datagram of len bytes would not fit. The flush may
 * tear flows down (an ICMP error): callers look at their flow and its fd
 * after it. */
static void make_room(struct udp_ctx *u, size_t len)
{
    if (u->nout == UDP_BATCH || u->arena_used + len > UDP_ARENA)
        udp_flush(u);
}

/* Queues a datagram (room made) to the address at to (tolen bytes; NULL: a
 * connected socket), which stays valid until it is sent. */
static void enqueue(struct udp_ctx *u, int fd, struct conn *c, const void *to, socklen_t tolen,
                    const void *data, size_t len)
{
    /* the prepare runs whenever the queue holds something */
    if (!u->nout)
        ev_prepare_start(u->ctx->loop, &u->flush);
    struct udp_out *o = &u->out[u->nout++];
    o->fd = fd;
    o->c = c;
    if (c)
        conn_ref(c);
    o->to = to;
    o->tolen = tolen;
    o->off = u->arena_used;
    o->len = len;
    if (len)
        memcpy(u->arena + u->arena_used, data, len);
    u->arena_used += len;
}

void udp_flush(struct udp_ctx *u)
{
    int n = u->nout;
    if (!n)
        return;
    /* The queue in the order of its sockets (a stable insertion sort: each
     * socket's datagrams keep theirs), so every socket takes one sendmmsg:
     * a proxy's requests interleave its outbound flows' sockets. A queue of
     * one socket (a listener's echoes) is already in order. */
    int ord[UDP_BATCH];
    for (int i = 0; i < n; i++) {
        int fd = u->out[i].fd, j = i;
        for (; j > 0 && u->out[ord[j - 1]].fd > fd; j--)
            ord[j] = ord[j - 1];
        ord[j] = i;
    }
    struct mmsghdr m[UDP_BATCH];
    struct iovec iov[UDP_BATCH];
    int err[UDP_BATCH], fds[UDP_BATCH];
    struct conn *cs[UDP_BATCH];
    for (int i = 0; i < n; i++) {
        const struct udp_out *o = &u->out[ord[i]];
        iov[i].iov_base = u->arena + o->off;
        iov[i].iov_len = o->len;
        m[i].msg_hdr = (struct msghdr){.msg_iov = &iov[i], .msg_iovlen = 1,
                                       .msg_name = (void *)o->to, .msg_namelen = o->tolen};
        fds[i] = o->fd;
        cs[i] = o->c;
        err[i] = 0;
    }
    /* runs of the same socket, one sendmmsg each (until it refuses one) */
    for (int i = 0; i < n;) {
        int j = i + 1;
        while (j < n && fds[j] == fds[i])
            j++;
        for (int k = i; k < j;) {
            int r = sendmmsg(fds[i], m + k, (unsigned)(j - k), MSG_DONTWAIT | MSG_NOSIGNAL);
            if (r > 0) {
                u->stats.dgrams_out += (uint64_t)r;
                k += r;
                continue;
            }
            if (r < 0 && errno == EINTR)
                continue;
            err[k] = r < 0 ? errno : EIO;
            if (err[k] == EAGAIN || err[k] == EWOULDBLOCK || err[k] == ENOBUFS) {
                /* The socket's buffer is full: the rest of its run would
                 * be refused too, one system call each. */
                u->stats.drop_send += (uint64_t)(j - k);
                note_drop(u, UDP_DROP_SEND, (uint64_t)(j - k), NULL);
                for (int x = k + 1; x < j; x++)
                    err[x] = err[k];
                k = j;
                continue;
            }
            u->stats.drop_send++;
            if (!send_error_ends_flow(err[k]))
                note_drop(u, UDP_DROP_REFUSED, 1, NULL);
            k++;
        }
        i = j;
    }
    /* A connected socket's ICMP error (ECONNREFUSED...) ends its flow; the
     * queue is emptied first, so the teardown's own flush finds nothing. */
    u->nout = 0;
    u->arena_used = 0;
    for (int i = 0; i < n; i++) {
        struct conn *c = cs[i];
        if (!c)
            continue;
        if (err[i] && send_error_ends_flow(err[i]) && !c->usock && !(c->flags & CONN_DEAD))
            conn_dgram_failed(c, err[i]);
        conn_unref(c);
    }
}

/* A datagram for an outbound flow that has no socket yet (its peer's name
 * is being resolved): kept in the flow's output queue after its length,
 * within UDP_HELD_MAX / UDP_HELD_BYTES, else dropped and counted. Returns 1. */
static int hold(struct udp_ctx *u, struct conn *c, const void *data, size_t len)
{
    uint32_t n = (uint32_t)len;
    if (c->held >= UDP_HELD_MAX || c->out.len + sizeof n + len > UDP_HELD_BYTES ||
        outq_append(&c->out, &n, sizeof n) < 0) {
        u->stats.drop_send++;
        note_drop(u, UDP_DROP_HELD, 1, NULL);
        return 1;
    }
    if (len && outq_append(&c->out, data, len) < 0) {
        /* out of memory with a length queued and not its datagram: what is
         * held can no longer be read back, and goes too */
        u->stats.drop_send += c->held + 1;
        note_drop(u, UDP_DROP_HELD, c->held + 1, NULL);
        outq_clear(&c->out);
        c->held = 0;
        return 1;
    }
    c->held++;
    return 1;
}

void udp_conn_send_held(struct conn *c)
{
    if (!c->held)
        return;
    size_t n = c->out.len, off = 0;
    char *buf = malloc(n);
    if (buf) {
        for (const struct outq_block *b = c->out.head; b; b = b->next) {
            memcpy(buf + off, b->data + b->start, b->end - b->start);
            off += b->end - b->start;
        }
    }
    unsigned held = c->held;
    outq_clear(&c->out);
    c->held = 0;
    struct udp_ctx *u = c->ctx->udp;
    if (!buf) {
        if (u) {
            u->stats.drop_send += held;
            note_drop(u, UDP_DROP_HELD, held, NULL);
        }
        return;
    }
    /* a flow closed while resolving still sends what it wrote before */
    unsigned closing = c->flags & CONN_CLOSING;
    c->flags &= ~(unsigned)CONN_CLOSING;
    for (size_t at = 0; at + sizeof(uint32_t) <= n && !(c->flags & CONN_DEAD);) {
        uint32_t len;
        memcpy(&len, buf + at, sizeof len);
        at += sizeof len;
        udp_conn_write(c, buf + at, len);
        at += len;
    }
    c->flags |= closing;
    free(buf);
}

int udp_conn_write(struct conn *c, const void *data, size_t len)
{
    if (c->flags & (CONN_DEAD | CONN_CLOSING))
        return -1;
    struct udp_ctx *u = udp_ctx_get(c->ctx);
    if (u && len < UDP_MAX_DGRAM) {
        make_room(u, len);
        if (c->flags & CONN_DEAD)
            return -1;
    }
    int fd = c->usock ? c->usock->fd : c->fd;
    if (u && fd < 0 && !c->usock && len < UDP_MAX_DGRAM)
        return hold(u, c, data, len); /* resolving the peer's name */
    if (!u || fd < 0 || len >= UDP_MAX_DGRAM) {
        /* no socket yet (resolving), out of memory, or too big to send */
        if (u)
            u->stats.drop_send++;
        return 1;
    }
    c->bytes_out += len;
    c->ctx->stats.bytes_out += len;
    c->last_active = ev_now(c->ctx->loop);
    /* a listener's flow: to its peer, whose address lives as long as the
     * reference the queue holds */
    if (c->usock)
        enqueue(u, fd, c, &c->peer, c->peer_len, data, len);
    else
        enqueue(u, fd, c, NULL, 0, data, len);
    return 1;
}

int udp_sendto(struct udp_sock *s, const void *data, size_t len, const struct net_addr *peer)
{
    if (!s->u || s->fd < 0)
        return -1;
    if (len >= UDP_MAX_DGRAM) {
        s->u->stats.drop_send++;
        return 1;
    }
    make_room(s->u, len);
    if (s->fd < 0)
        return -1;
    struct udp_ctx *u = s->u;
    struct net_addr *to = &u->raw[u->nout];
    memcpy(&to->ss, &peer->ss, peer->len);
    to->len = peer->len;
    enqueue(u, s->fd, NULL, &to->ss, to->len, data, len);
    return 1;
}

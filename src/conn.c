#include "conn.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn_tls.h"
#include "udp.h"
#include "util.h"

static void reaper_cb(struct ev_loop *loop, ev_prepare *w, int revents);
static void wake_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
    (void)loop, (void)w, (void)revents; /* only there to keep the poll from blocking */
}

#define ACTIVE(c) ((c)->last_active = ev_now((c)->ctx->loop))

void conn_ctx_init(struct conn_ctx *ctx, struct ev_loop *loop, char *rbuf, size_t rbuf_len)
{
    memset(ctx, 0, sizeof *ctx);
    ctx->loop = loop;
    ctx->rbuf = rbuf;
    ctx->rbuf_len = rbuf_len;
    ctx->high_water = 256 * 1024;
    ctx->low_water = 64 * 1024;
    ctx->max_buffer = 64u * 1024 * 1024;
    ctx->next_id = 1;
    ctx->turn_quota = CONN_TURN_QUOTA;
    ev_prepare_init(&ctx->reaper, reaper_cb);
    ev_idle_init(&ctx->wake, wake_cb);
}

static void list_unlink(struct conn **head, struct conn *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        *head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

static void list_push(struct conn **head, struct conn *c)
{
    c->prev = NULL;
    c->next = *head;
    if (*head)
        (*head)->prev = c;
    *head = c;
}

/* Records the SSL already read into its buffer: no readiness of the socket
 * will tell of them, so a reading TLS connection is woken for them. */
static inline void tls_wake_pending(struct conn *c)
{
    if (c->ssl && (c->flags & CONN_READING) && conn_tls_pending(c))
        ev_feed_event(c->ctx->loop, &c->rio, EV_READ);
}

/* Reading runs exactly when nothing holds it back; the watcher is touched only
 * when that changes, so there is no epoll_ctl churn per message. */
static void update_read(struct conn *c)
{
    int want;
    if (c->flags & (CONN_DEAD | CONN_CONNECTING))
        want = 0;
    else if (c->flags & CONN_DGRAM)
        /* a listener's flow never reads: its socket does (udp.c) */
        want = !c->usock && c->fd >= 0 && !(c->flags & (CONN_PAUSED | CONN_CLOSING));
    else if (c->flags & (CONN_HANDSHAKE | CONN_TLS_WANT_R))
        /* the SSL needs the peer's records, whatever the handler wants;
         * after the clear text of a STARTTLS is out */
        want = !c->raw.len && !c->kp_len;
    else
        want = !(c->flags & (CONN_PAUSED | CONN_BP | CONN_HOLD | CONN_EOF | CONN_CLOSING));
    if (want && !(c->flags & CONN_READING)) {
        ev_io_start(c->ctx->loop, &c->rio);
        c->flags |= CONN_READING;
        tls_wake_pending(c);
    } else if (!want && (c->flags & CONN_READING)) {
        ev_io_stop(c->ctx->loop, &c->rio);
        c->flags &= ~CONN_READING;
    }
}

/* Back-pressure: src stops reading until target drains to low water. */
static void bp_release(struct conn *src)
{
    struct conn *t = src->bp_target;
    if (!t)
        return;
    if (src->wprev)
        src->wprev->wnext = src->wnext;
    else
        t->waiters = src->wnext;
    if (src->wnext)
        src->wnext->wprev = src->wprev;
    src->wprev = src->wnext = NULL;
    src->bp_target = NULL;
    src->flags &= ~CONN_BP;
    update_read(src);
}

static void bp_wait(struct conn *src, struct conn *target)
{
    if (src->bp_target == target)
        return;
    bp_release(src);
    src->bp_target = target;
    src->wprev = NULL;
    src->wnext = target->waiters;
    if (target->waiters)
        target->waiters->wprev = src;
    target->waiters = src;
    src->flags |= CONN_BP;
    update_read(src);
}

static void bp_wake_waiters(struct conn *c)
{
    while (c->waiters)
        bp_release(c->waiters);
}

static const char *errno_reason(int err)
{
    switch (err) {
    case ECONNRESET:
    case EPIPE:
        return "reset";
    case ECONNREFUSED:
        return "refused";
    case ETIMEDOUT:
        return "timeout";
    case EHOSTUNREACH:
    case ENETUNREACH:
        return "unreachable";
    default:
        return NULL;
    }
}

static void abort_errno(struct conn *c, int err)
{
    const char *r = errno_reason(err);
    if (err == EPROTO && c->ssl) {
        char buf[300];
        snprintf(buf, sizeof buf, "error: %s", conn_tls_reason());
        conn_abort(c, buf, 0);
    } else if (r) {
        conn_abort(c, r, 0);
    } else {
        char buf[128];
        snprintf(buf, sizeof buf, "error: %s", strerror(err));
        conn_abort(c, buf, 0);
    }
}

static void do_shutdown(struct conn *c)
{
    /* TLS: close_notify, then the FIN, as a plain connection's half-close. */
    if (c->ssl && !(c->flags & CONN_TLS_SENT) && conn_tls_close_notify(c) == 0) {
        ev_io_start(c->ctx->loop, &c->wio); /* called again once writable */
        return;
    }
    shutdown(c->fd, SHUT_WR);
    c->flags = (c->flags & ~CONN_SHUT_WANT) | CONN_SHUT_DONE;
    if (c->flags & CONN_EOF)
        conn_abort(c, NULL, 0);
}

/* The queue just emptied: finish a pending close or half-close. */
static void after_flush(struct conn *c)
{
    if (c->flags & CONN_CLOSING)
        conn_abort(c, NULL, 0);
    else if (c->flags & CONN_SHUT_WANT)
        do_shutdown(c);
}

/* Output fell to low water: release the sources waiting on us, and tell the
 * handler if one of its writes had returned false. */
static void maybe_drained(struct conn *c)
{
    if (c->kp_len || c->out.len > c->ctx->low_water)
        return;
    bp_wake_waiters(c);
    if (c->flags & CONN_WANT_DRAIN) {
        c->flags &= ~CONN_WANT_DRAIN;
        if (c->ops->on_drain && !(c->flags & CONN_DEAD))
            c->ops->on_drain(c);
    }
}

static void count_out(struct conn *c, size_t n)
{
    c->bytes_out += n;
    c->ctx->stats.bytes_out += n;
    ACTIVE(c);
}

/* Writes what the kernel pipe holds. Returns 0, or -1 after tearing c down. */
static int kp_flush(struct conn *c)
{
    while (c->kp_len) {
        ssize_t w = splice(c->kp[0], NULL, c->fd, NULL, c->kp_len,
                           SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (w > 0) {
            c->kp_len -= (size_t)w;
            count_out(c, (size_t)w);
            continue;
        }
        if (w < 0 && (errno == EAGAIN || errno == EINTR))
            return 0;
        abort_errno(c, w < 0 ? errno : EPIPE);
        return -1;
    }
    return 0;
}

static void connect_failed(struct conn *c, int err);

static void idle_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct conn *c = container_of(w, struct conn, idle);
    if (c->connect_err) {
        /* A connect that failed at once is reported from the loop, so the
         * handler that called echokit.connect can still pipe to it first. */
        int err = c->connect_err;
        c->connect_err = 0;
        connect_failed(c, err);
        return;
    }
    /* ev.pod "be smart about timeouts": activity only moves a timestamp; the
     * timer is re-armed here for what is left. */
    ev_tstamp limit = (c->flags & CONN_CONNECTING)  ? c->ctx->connect_timeout
                      : (c->flags & CONN_HANDSHAKE) ? c->ctx->handshake_timeout
                                                    : c->timeout;
    ev_tstamp left = c->last_active + limit - ev_now(loop);
    if (left <= 0 || limit <= 0) {
        conn_abort(c, (c->flags & CONN_HANDSHAKE) ? "timeout: tls handshake" : "timeout", 0);
        return;
    }
    w->repeat = left;
    ev_timer_again(loop, w);
}


static void start_connect(struct conn *c);

/* A connect attempt failed: try the next address if the failure was about
 * this address, else give up with the reason. */
static void connect_failed(struct conn *c, int err)
{
    if (c->naddrs > 1 && (err == ECONNREFUSED || err == ENETUNREACH || err == EHOSTUNREACH ||
                          err == EADDRNOTAVAIL || err == EAFNOSUPPORT)) {
        ev_io_stop(c->ctx->loop, &c->wio);
        if ((c->flags & CONN_DGRAM) && c->fd >= 0 && c->ctx->udp) {
            /* As udp_conn_detach: datagrams queued for this socket go
             * before it closes; a later flush would send them on a closed
             * descriptor, or one reused by then. (The error that brought us
             * here is read already: the flush does not see it again.) */
            udp_flush(c->ctx->udp);
            if (c->flags & CONN_DEAD)
                return; /* the flush ended a flow piped to it, and so c */
        }
        close(c->fd);
        c->fd = -1;
        memmove(c->addrs, c->addrs + 1, (size_t)(c->naddrs - 1) * sizeof *c->addrs);
        c->naddrs--;
        start_connect(c);
        return;
    }
    abort_errno(c, err == ENOENT ? ECONNREFUSED : err);
}

static void tls_begin(struct conn *c);
static void tls_step(struct conn *c);
static void on_readable(struct ev_loop *loop, ev_io *w, int revents);

/* Writes what queue q holds, through the SSL with tls, else as it is.
 * Returns -1 after tearing c down. */
static int write_queue(struct conn *c, struct outq *q, int tls)
{
    ssize_t n = tls ? conn_tls_write_queue(c, q) : outq_write(q, c->fd);
    if (n < 0) {
        abort_errno(c, errno);
        return -1;
    }
    if (n > 0)
        count_out(c, (size_t)n);
    return 0;
}

/* Writes the output queue (plain or TLS). Returns -1 after tearing c down. */
static int flush_out(struct conn *c)
{
    if (write_queue(c, &c->out, c->ssl != NULL) < 0)
        return -1;
    if (c->flags & CONN_TLS_WANT_R) {
        /* Waits for the peer's records, not for room: the read watcher
         * calls again (update_read keeps it on). */
        ev_io_stop(c->ctx->loop, &c->wio);
        update_read(c);
    }
    return 0;
}

static void on_writable(struct ev_loop *loop, ev_io *w, int revents)
{
    struct conn *c = container_of(w, struct conn, wio);
    if (c->flags & CONN_CONNECTING) {
        int err = net_socket_error(c->fd);
        if (err) {
            connect_failed(c, err);
            return;
        }
        c->flags &= ~CONN_CONNECTING;
        free(c->addrs);
        c->addrs = NULL;
        c->naddrs = 0;
        ACTIVE(c);
        if (c->ssl) {
            /* on_connect waits for the handshake */
            c->flags |= CONN_TLS_CONNECT;
            tls_begin(c);
            return;
        }
        update_read(c);
        /* From now on the timer measures idleness, if asked for. */
        conn_set_timeout(c, c->timeout);
        if (c->ops->on_connect)
            c->ops->on_connect(c);
        if (c->flags & CONN_DEAD)
            return;
        if (!conn_queued(c)) {
            ev_io_stop(loop, w);
            after_flush(c);
            return;
        }
    }
    /* Spliced bytes were accepted before anything now in the queue, and
     * the clear text queued before a STARTTLS before the handshake. */
    if (kp_flush(c) < 0)
        return;
    if (c->raw.len && !c->kp_len && write_queue(c, &c->raw, 0) < 0)
        return;
    if (c->flags & CONN_HANDSHAKE) {
        if (!c->raw.len && !c->kp_len) {
            update_read(c);
            tls_step(c);
        }
        return;
    }
    if (c->flags & CONN_TLS_WANT_W) {
        /* An SSL_read that had to write first: read again now. */
        c->flags &= ~(unsigned)CONN_TLS_WANT_W;
        if (c->flags & CONN_READING)
            ev_feed_event(loop, &c->rio, EV_READ);
    }
    if (!c->kp_len && !c->raw.len && c->out.len && flush_out(c) < 0)
        return;
    if (!conn_queued(c)) {
        ev_io_stop(loop, w);
        after_flush(c);
        if (c->flags & CONN_DEAD)
            return;
    }
    maybe_drained(c);
}

static void on_eof(struct conn *c)
{
    c->flags |= CONN_EOF;
    update_read(c);
    if (c->pipe_to) {
        if (c->flags & CONN_TAP_EOF)
            c->ops->on_tap(c, NULL, 0);
        if (c->pipe_to && !(c->flags & CONN_DEAD))
            conn_shutdown(c->pipe_to);
    } else if (c->ops->on_eof)
        c->ops->on_eof(c);
    if ((c->flags & CONN_SHUT_DONE) && !(c->flags & CONN_DEAD))
        conn_abort(c, NULL, 0);
}

/* The pipe fast path: socket -> kernel pipe -> socket, no copy through user
 * space. Returns 1 if it handled the event, 0 to fall back to read(). */
static int splice_relay(struct conn *c, struct conn *dst)
{
    struct conn_ctx *ctx = c->ctx;
    if (dst->kp[0] < 0) {
        if (pipe2(dst->kp, O_NONBLOCK | O_CLOEXEC) < 0) {
            dst->kp[0] = dst->kp[1] = -1;
            return 0; /* out of descriptors: the copy path still works */
        }
    }
    ssize_t n = splice(c->fd, NULL, dst->kp[1], NULL, ctx->rbuf_len,
                       SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n > 0) {
        c->bytes_in += (uint64_t)n;
        ctx->stats.bytes_in += (uint64_t)n;
        ACTIVE(c);
        dst->kp_len += (size_t)n;
        if (kp_flush(dst) < 0)
            return 1;
        if (dst->kp_len) {
            /* dst is full: hold c until the pipe empties (bp_wait's release
             * comes from maybe_drained, which waits for kp_len == 0). */
            ev_io_start(ctx->loop, &dst->wio);
            bp_wait(c, dst);
        }
        return 1;
    }
    if (n == 0) {
        on_eof(c);
        return 1;
    }
    if (errno == EAGAIN || errno == EINTR)
        return 1;
    if (errno == EINVAL || errno == ENOSYS) {
        ctx->splice = 0; /* not supported here: copy from now on */
        return 0;
    }
    abort_errno(c, errno);
    return 1;
}

/* Input that arrived for c (counted already): the tap, then the pipe's
 * destination, else the handler. May free c (on_data may reap it). */
static void deliver(struct conn *c, const char *buf, size_t n)
{
    struct conn_ctx *ctx = c->ctx;
    struct conn *prev = ctx->source;
    ctx->source = c;
    if (c->pipe_to && (c->flags & CONN_TAP))
        c->ops->on_tap(c, buf, n);
    if (c->flags & CONN_DEAD) {
        /* the tap closed it */
    } else if (c->pipe_to) {
        if (conn_write(c->pipe_to, buf, n) == -1) {
            /* The destination takes no more (closed or shut down by the
             * handler): nothing can be relayed, so the source ends too. */
            conn_unpipe(c);
            conn_close(c);
        }
    } else {
        /* Not piped (any more: a tap may have unpiped): the handler reads. */
        c->ops->on_data(c, buf, n);
    }
    ctx->source = prev;
}

void conn_dgram_input(struct conn *c, const char *buf, size_t len)
{
    c->bytes_in += len;
    c->ctx->stats.bytes_in += len;
    ACTIVE(c);
    deliver(c, buf, len);
}

void conn_dgram_failed(struct conn *c, int err)
{
    if (c->flags & CONN_DEAD)
        return;
    abort_errno(c, err);
    /* A failed send is seen by udp.c's flush, which may run after the
     * reaper in the same prepare phase: the loop must not block before the
     * reaper runs this flow's on_close (reaper_cb stops the idle again). */
    ev_idle_start(c->ctx->loop, &c->ctx->wake);
}

static void on_readable(struct ev_loop *loop, ev_io *w, int revents)
{
    struct conn *c = container_of(w, struct conn, rio);
    if (c->flags & CONN_DGRAM) {
        udp_conn_readable(c);
        return;
    }
    struct conn_ctx *ctx = c->ctx;
    struct conn *dst = c->pipe_to;
    if (c->flags & CONN_HANDSHAKE) {
        if (!c->raw.len && !c->kp_len)
            tls_step(c);
        return;
    }
    if (c->flags & CONN_TLS_WANT_R) {
        /* A TLS write waited for this: write first, then read if wanted. */
        c->flags &= ~(unsigned)CONN_TLS_WANT_R;
        if (c->out.len && flush_out(c) < 0)
            return;
        if (conn_queued(c))
            ev_io_start(loop, &c->wio);
        update_read(c);
        if (!(c->flags & CONN_READING))
            return;
    }
    if (dst && !c->ssl && !dst->ssl && (c->flags & CONN_BULK) && ctx->splice &&
        !(c->flags & CONN_TAP) &&
        !dst->out.len && !dst->kp_len &&
        dst->fd >= 0 &&
        !(dst->flags & (CONN_CONNECTING | CONN_DEAD | CONN_CLOSING | CONN_SHUT_WANT |
                        CONN_SHUT_DONE)) &&
        splice_relay(c, dst))
        return;
    /* recv, not read: every fd here is a socket, and read(2) takes the
     * VFS path (vfs_read, ~2% of the proxy's CPU in a ping-pong profile)
     * before it reaches the same socket code. */
    ssize_t n = c->ssl ? conn_tls_recv(c, ctx->rbuf, ctx->rbuf_len)
                       : recv(c->fd, ctx->rbuf, ctx->rbuf_len, 0);
    if (c->flags & CONN_TLS_WANT_W)
        ev_io_start(loop, &c->wio); /* the SSL must write before it reads on */
    if (n > 0) {
        /* A read of a kernel pipe's worth or more means a stream, not
         * messages: from now on a pipe moves it with splice. Message
         * traffic keeps the copy path, which costs no kernel pipe (two
         * descriptors) per connection. */
        if ((size_t)n >= CONN_BULK_READ)
            c->flags |= CONN_BULK;
        c->bytes_in += (uint64_t)n;
        ctx->stats.bytes_in += (uint64_t)n;
        ACTIVE(c);
        /* TLS: c is looked at after on_data, which may reap and free it
         * (conn_reap_now): hold it. Plain connections need not. */
        int tls = c->ssl != NULL;
        if (tls)
            conn_ref(c);
        deliver(c, ctx->rbuf, (size_t)n);
        if (tls) {
            /* More records in the SSL's buffer than rbuf held. */
            if (!(c->flags & CONN_DEAD))
                tls_wake_pending(c);
            conn_unref(c);
        }
        return;
    }
    if (n == 0) {
        on_eof(c);
        return;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        return;
    abort_errno(c, errno);
}

/* conn_new with the datagram mode (dgram: CONN_DGRAM, sock: a listener's
 * socket the flow shares) set before reading starts. */
static struct conn *make(struct conn_ctx *ctx, int fd, size_t size, const struct conn_ops *ops,
                         const struct net_addr *peer, int connecting, int dgram,
                         struct udp_sock *sock)
{
    struct conn *c = calloc(1, size);
    if (!c)
        return NULL;
    if (dgram)
        c->flags |= CONN_DGRAM;
    c->usock = sock;
    c->ctx = ctx;
    c->ops = ops;
    c->fd = fd;
    c->refs = 1;
    c->kp[0] = c->kp[1] = -1;
    c->id = ctx->next_id++;
    ev_io_init(&c->rio, on_readable, fd, EV_READ);
    ev_io_init(&c->wio, on_writable, fd, EV_WRITE);
    ev_init(&c->idle, idle_cb);
    if (peer && peer->len <= sizeof c->peer) {
        memcpy(&c->peer, &peer->ss, peer->len);
        c->peer_len = peer->len;
    } else if (peer) {
        c->peer.sa.sa_family = peer->ss.ss_family; /* unix: path not kept */
        c->peer_len = sizeof(sa_family_t);
    }
    list_push(&ctx->all, c);
    ctx->stats.open++;
    ctx->stats.total++;
    ctx->stats.flows += (uint64_t)(dgram != 0);
    c->created = c->last_active = ev_now(ctx->loop);
    if (connecting) {
        c->flags |= CONN_CONNECTING;
        if (fd >= 0)
            ev_io_start(ctx->loop, &c->wio);
    } else {
        update_read(c);
    }
    double idle = dgram ? ctx->udp_idle_timeout : ctx->idle_timeout;
    if (idle > 0)
        conn_set_timeout(c, idle);
    return c;
}

struct conn *conn_new(struct conn_ctx *ctx, int fd, size_t size, const struct conn_ops *ops,
                      const struct net_addr *peer, int connecting)
{
    return make(ctx, fd, size, ops, peer, connecting, 0, NULL);
}

struct conn *conn_new_dgram(struct conn_ctx *ctx, int fd, size_t size, const struct conn_ops *ops,
                            const struct net_addr *peer, struct udp_sock *sock)
{
    return make(ctx, fd, size, ops, peer, 0, 1, sock);
}

struct conn *conn_new_outbound_dgram(struct conn_ctx *ctx, size_t size, const struct conn_ops *ops)
{
    /* connect(2) on a UDP socket only sets the peer: no connect timeout */
    return make(ctx, -1, size, ops, NULL, 1, 1, NULL);
}

struct conn *conn_new_outbound(struct conn_ctx *ctx, size_t size, const struct conn_ops *ops)
{
    struct conn *c = conn_new(ctx, -1, size, ops, NULL, 1);
    if (c && ctx->connect_timeout > 0) {
        c->idle.repeat = ctx->connect_timeout;
        ev_timer_again(ctx->loop, &c->idle);
    }
    return c;
}

static void start_connect(struct conn *c)
{
    char err[ECHOKIT_ERR_LEN];
    int in_progress;
    int fd = (c->flags & CONN_DGRAM) ? udp_connect_fd(&c->addrs[0])
                                     : net_connect(&c->addrs[0], &in_progress, err);
    ACTIVE(c);
    if (fd < 0) {
        c->connect_err = errno;
        ev_timer_stop(c->ctx->loop, &c->idle);
        ev_timer_set(&c->idle, 0., 0.);
        ev_timer_start(c->ctx->loop, &c->idle);
        return;
    }
    if (c->ctx->connect_timeout > 0 && !(c->flags & CONN_DGRAM)) {
        c->idle.repeat = c->ctx->connect_timeout;
        ev_timer_again(c->ctx->loop, &c->idle);
    }
    c->fd = fd;
    c->peer_len = 0;
    if (c->addrs[0].len <= sizeof c->peer) {
        memcpy(&c->peer, &c->addrs[0].ss, c->addrs[0].len);
        c->peer_len = c->addrs[0].len;
    }
    ev_io_set(&c->rio, fd, EV_READ);
    ev_io_set(&c->wio, fd, EV_WRITE);
    /* Connected or not, the writable event finishes the job in one place. */
    ev_io_start(c->ctx->loop, &c->wio);
    if (c->flags & CONN_DGRAM)
        udp_conn_send_held(c); /* written while its name was resolved */
}

void conn_connect(struct conn *c, const struct net_addr *addrs, int n)
{
    if (c->flags & CONN_DEAD)
        return;
    c->addrs = malloc((size_t)n * sizeof *addrs);
    if (!c->addrs || n < 1) {
        conn_abort(c, n < 1 ? "error: no address" : "error: out of memory", 0);
        return;
    }
    memcpy(c->addrs, addrs, (size_t)n * sizeof *addrs);
    c->naddrs = n;
    start_connect(c);
}

/* ---- TLS ------------------------------------------------------------------ */

/* The handshake starts: its timer runs, reading serves the SSL, and the
 * write watcher drives it (after the clear text queued before it). */
static void tls_begin(struct conn *c)
{
    struct conn_ctx *ctx = c->ctx;
    c->flags |= CONN_HANDSHAKE;
    if (conn_tls_attach(c) < 0) {
        conn_abort(c, "error: tls: out of memory", 0);
        return;
    }
    ev_timer_stop(ctx->loop, &c->idle);
    if (ctx->handshake_timeout > 0) {
        c->idle.repeat = ctx->handshake_timeout;
        ev_timer_again(ctx->loop, &c->idle);
    }
    update_read(c);
    ev_io_start(ctx->loop, &c->wio);
}

/* Drives the handshake one step; once done, what waited goes on. */
static void tls_step(struct conn *c)
{
    struct ev_loop *loop = c->ctx->loop;
    int rc = conn_tls_handshake(c);
    if (rc < 0) {
        abort_errno(c, errno);
        return;
    }
    if (rc == 0) {
        if (c->flags & CONN_TLS_WANT_W)
            ev_io_start(loop, &c->wio);
        else
            ev_io_stop(loop, &c->wio);
        return;
    }
    c->flags = (c->flags & ~(unsigned)(CONN_HANDSHAKE | CONN_TLS_WANT_W | CONN_TLS_WANT_R)) |
               CONN_TLS_DONE;
    ACTIVE(c);
    conn_set_timeout(c, c->timeout);
    update_read(c);
    if (c->ops->on_tls)
        c->ops->on_tls(c);
    if ((c->flags & CONN_TLS_CONNECT) && !(c->flags & CONN_DEAD)) {
        c->flags &= ~(unsigned)CONN_TLS_CONNECT;
        if (c->ops->on_connect)
            c->ops->on_connect(c);
    }
    if (c->flags & CONN_DEAD)
        return;
    /* With read-ahead the handshake's last read may have taken the peer's
     * first records too (TLS 1.3: the client's Finished and its data in one
     * segment); the socket will not tell of them again. update_read feeds
     * only a watcher it starts, and this one ran all through the handshake. */
    tls_wake_pending(c);
    if (conn_queued(c)) {
        ev_io_start(loop, &c->wio);
    } else {
        ev_io_stop(loop, &c->wio);
        after_flush(c);
    }
}

int conn_start_tls(struct conn *c, struct ssl_st *ssl)
{
    if (c->flags & CONN_DEAD)
        return -2;
    if (c->ssl)
        return -1;
    c->ssl = ssl;
    if (c->flags & CONN_CONNECTING)
        return 0; /* on_writable begins it once connected */
    /* What was queued so far was written before the upgrade: in the clear. */
    c->raw = c->out;
    memset(&c->out, 0, sizeof c->out);
    tls_begin(c);
    return 0;
}

int conn_pipe(struct conn *src, struct conn *dst, int reset)
{
    if ((src->flags | dst->flags) & CONN_DEAD)
        return -2;
    if ((src->flags ^ dst->flags) & CONN_DGRAM)
        return -3;
    if (dst->pipe_from && dst->pipe_from != src)
        return -1;
    conn_unpipe(src);
    src->pipe_to = dst;
    dst->pipe_from = src;
    if (reset)
        src->flags |= CONN_PIPE_RST;
    else
        src->flags &= ~(unsigned)CONN_PIPE_RST;
    return 0;
}

void conn_unpipe(struct conn *src)
{
    if (!src->pipe_to)
        return;
    src->pipe_to->pipe_from = NULL;
    src->pipe_to = NULL;
    src->flags &= ~(unsigned)(CONN_TAP | CONN_TAP_EOF | CONN_PIPE_RST);
}

void conn_ref(struct conn *c)
{
    c->refs++;
}

void conn_unref(struct conn *c)
{
    if (--c->refs > 0)
        return;
    if (c->ops->on_free)
        c->ops->on_free(c);
    free(c->reason);
    free(c);
}

int conn_write(struct conn *c, const void *data, size_t len)
{
    struct conn_ctx *ctx = c->ctx;
    if (c->flags & CONN_DGRAM)
        return udp_conn_write(c, data, len);
    if (c->flags & (CONN_DEAD | CONN_CLOSING | CONN_SHUT_WANT | CONN_SHUT_DONE))
        return -1;
    if (len == 0)
        return conn_queued(c) > ctx->high_water ? 0 : 1;
    const char *p = data;
    if (!conn_queued(c) && !(c->flags & (CONN_CONNECTING | CONN_HANDSHAKE | CONN_TLS_WANT_R))) {
        ssize_t n = c->ssl ? conn_tls_send(c, p, len)
                           : send(c->fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                abort_errno(c, errno);
                return -1;
            }
            n = 0;
        }
        if (n > 0) {
            c->bytes_out += (uint64_t)n;
            ctx->stats.bytes_out += (uint64_t)n;
            ACTIVE(c);
        }
        if ((size_t)n == len)
            return 1;
        p += n;
        len -= (size_t)n;
    }
    /* The cap is on what waits: bytes the socket took at once never count. */
    if (conn_queued(c) + len > ctx->max_buffer) {
        char msg[128];
        snprintf(msg, sizeof msg, "error: output buffer limit of %zu bytes exceeded",
                 ctx->max_buffer);
        conn_abort(c, msg, 1);
        return -2;
    }
    int was_empty = !conn_queued(c);
    if (outq_append(&c->out, p, len) < 0) {
        conn_abort(c, "error: out of memory", 1);
        return -1;
    }
    if (was_empty && !(c->flags & (CONN_CONNECTING | CONN_HANDSHAKE | CONN_TLS_WANT_R)))
        ev_io_start(ctx->loop, &c->wio);
    if (conn_queued(c) > ctx->high_water) {
        c->flags |= CONN_WANT_DRAIN;
        if (ctx->source && !(ctx->source->flags & CONN_DEAD))
            bp_wait(ctx->source, c);
        return 0;
    }
    return 1;
}

int conn_fair_turn(struct conn *c, size_t len)
{
    struct conn_ctx *ctx = c->ctx;
    if (!ctx->turn_quota)
        return 1;
    /* The count runs across turns until it reaches the quota; only then is
     * it checked against the turn (ev_iteration is a call), and restarted
     * from this write if older turns made it. A turn thus passes at most
     * twice the quota. */
    unsigned turn = ev_iteration(ctx->loop);
    if (c->turn != turn) {
        c->turn = turn;
        c->turn_bytes = len;
        if (len < ctx->turn_quota)
            return 1;
    }
    c->flags |= CONN_WANT_DRAIN;
    if (!(c->flags & CONN_FAIR)) {
        c->flags |= CONN_FAIR;
        conn_ref(c); /* held while listed */
        c->fair_next = ctx->fair;
        ctx->fair = c;
        ev_prepare_start(ctx->loop, &ctx->reaper);
        ev_idle_start(ctx->loop, &ctx->wake);
    }
    return 0;
}

void conn_close(struct conn *c)
{
    if (c->flags & (CONN_DEAD | CONN_CLOSING))
        return;
    c->flags |= CONN_CLOSING;
    update_read(c);
    /* Nothing to deliver: no need to finish a pending connect either. */
    if (!conn_queued(c))
        conn_abort(c, NULL, 0);
}

void conn_shutdown(struct conn *c)
{
    if (c->flags & CONN_DGRAM)
        return; /* datagrams have no half-close */
    if (c->flags & (CONN_DEAD | CONN_CLOSING | CONN_SHUT_WANT | CONN_SHUT_DONE))
        return;
    c->flags |= CONN_SHUT_WANT;
    if (!conn_queued(c) && !(c->flags & (CONN_CONNECTING | CONN_HANDSHAKE)))
        do_shutdown(c);
}

/* The connections whose turn quota ran out in the last turn: those whose
 * queue is low again hear on_drain now (those still above water hear it from
 * the write watcher, as any other). Ones listed meanwhile wait a turn. */
static void fair_drains(struct conn_ctx *ctx)
{
    struct conn *list = ctx->fair;
    ctx->fair = NULL;
    while (list) {
        struct conn *c = list;
        list = c->fair_next;
        c->fair_next = NULL;
        c->flags &= ~(unsigned)CONN_FAIR;
        if (!(c->flags & CONN_DEAD) && (c->flags & CONN_WANT_DRAIN) && !c->kp_len &&
            c->out.len <= ctx->low_water) {
            c->flags &= ~(unsigned)CONN_WANT_DRAIN;
            c->turn_bytes = 0; /* a fresh quota: this is its turn */
            if (c->ops->on_drain)
                c->ops->on_drain(c);
        }
        conn_unref(c);
    }
}

static void reap_one(struct conn_ctx *ctx, struct conn *c)
{
    c->flags |= CONN_REAPED;
    list_unlink(&ctx->reap, c);
    ctx->stats.open--;
    if (c->flags & CONN_DGRAM)
        ctx->stats.flows--;
    if (c->ops->on_close)
        c->ops->on_close(c, c->reason);
    if (ctx->on_reaped)
        ctx->on_reaped(ctx, c);
    conn_unref(c);
}

static void reap(struct conn_ctx *ctx)
{
    while (ctx->reap)
        reap_one(ctx, ctx->reap);
}

void conn_reap_now(struct conn *c)
{
    if (c->flags & CONN_DEAD && !(c->flags & CONN_REAPED))
        reap_one(c->ctx, c);
}

/* Runs before the loop polls, on every turn while there is work: closed
 * connections are reaped within one turn of their close (under load too,
 * which an idle watcher would not see), then the fair drains run. */
static void reaper_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    struct conn_ctx *ctx = container_of(w, struct conn_ctx, reaper);
    reap(ctx);
    fair_drains(ctx);
    reap(ctx); /* what the drains closed */
    /* Datagrams the on_close callbacks and drains wrote: udp.c's flush
     * prepare, started during this phase, would wait for the next event
     * (libev runs the prepare watchers that were active when the phase
     * began). A flow the flush tears down is reaped at once, a few rounds
     * at most; the rest are left to the next turn (conn_dgram_failed keeps
     * the loop from blocking for them). */
    for (int i = 0; i < 4 && ctx->udp && ctx->udp->nout; i++) {
        udp_flush(ctx->udp);
        reap(ctx);
    }
    if (!ctx->fair && !ctx->reap) {
        ev_idle_stop(loop, &ctx->wake);
        ev_prepare_stop(loop, w);
    }
}

void conn_abort(struct conn *c, const char *reason, int rst)
{
    if (c->flags & CONN_DEAD)
        return;
    struct conn_ctx *ctx = c->ctx;
    c->flags |= CONN_DEAD;
    update_read(c);
    ev_io_stop(ctx->loop, &c->wio);
    ev_timer_stop(ctx->loop, &c->idle);
    conn_tls_end(c, !rst && !reason);
    if (c->flags & CONN_DGRAM) {
        udp_conn_detach(c); /* a listener's socket stays open */
    } else if (c->fd >= 0) {
        if (rst)
            net_set_reset(c->fd);
        close(c->fd);
        c->fd = -1;
    }
    outq_clear(&c->out);
    outq_clear(&c->raw);
    if (c->kp[0] >= 0) {
        close(c->kp[0]);
        close(c->kp[1]);
        c->kp[0] = c->kp[1] = -1;
        c->kp_len = 0;
    }
    free(c->addrs);
    c->addrs = NULL;
    c->naddrs = 0;
    bp_wake_waiters(c);
    bp_release(c);
    /* A pipe ties both ends: the other side is closed once it has flushed
     * what it already holds, so nothing received is lost. */
    struct conn *to = c->pipe_to, *from = c->pipe_from;
    /* With reset propagation a reset of ours resets them too. */
    int rst_to = to && (c->flags & CONN_PIPE_RST) && reason && !strcmp(reason, "reset");
    int rst_from = from && (from->flags & CONN_PIPE_RST) && reason && !strcmp(reason, "reset");
    if (to)
        conn_unpipe(c);
    if (from)
        conn_unpipe(from);
    if (rst_to)
        conn_abort(to, "reset", 1);
    else if (to)
        conn_close(to);
    if (rst_from)
        conn_abort(from, "reset", 1);
    else if (from)
        conn_close(from);
    if (reason) {
        c->reason = strdup(reason);
        if (strncmp(reason, "error", 5) == 0)
            ctx->stats.errors++;
    }
    list_unlink(&ctx->all, c);
    list_push(&ctx->reap, c);
    ev_prepare_start(ctx->loop, &ctx->reaper);
}

void conn_set_paused(struct conn *c, int paused)
{
    if (paused)
        c->flags |= CONN_PAUSED;
    else
        c->flags &= ~CONN_PAUSED;
    update_read(c);
}

void conn_set_hold(struct conn *c, int hold)
{
    if (hold)
        c->flags |= CONN_HOLD;
    else
        c->flags &= ~CONN_HOLD;
    update_read(c);
}

void conn_set_timeout(struct conn *c, double seconds)
{
    c->timeout = seconds;
    if (c->flags & (CONN_DEAD | CONN_CONNECTING | CONN_HANDSHAKE))
        return; /* the connect or handshake timeout runs; this applies after */
    if (seconds <= 0) {
        ev_timer_stop(c->ctx->loop, &c->idle);
        return;
    }
    ACTIVE(c);
    c->idle.repeat = seconds;
    ev_timer_again(c->ctx->loop, &c->idle);
}

const char *conn_label(const struct conn *c, char *buf, size_t cap)
{
    char addr[160];
    if (c->peer_len && c->peer.sa.sa_family != AF_UNIX)
        net_addr_format(&c->peer.sa, c->peer_len, addr, sizeof addr);
    else
        snprintf(addr, sizeof addr, "unix");
    snprintf(buf, cap, "[conn %llu %s]", (unsigned long long)c->id, addr);
    return buf;
}

void conn_ctx_release(struct conn_ctx *ctx)
{
    while (ctx->fair) {
        struct conn *c = ctx->fair;
        ctx->fair = c->fair_next;
        c->fair_next = NULL;
        c->flags &= ~(unsigned)CONN_FAIR;
        conn_unref(c);
    }
    ev_idle_stop(ctx->loop, &ctx->wake);
    ev_prepare_stop(ctx->loop, &ctx->reaper);
    udp_ctx_free(ctx);
}

void conn_abort_all(struct conn_ctx *ctx, const char *reason)
{
    while (ctx->all)
        conn_abort(ctx->all, reason, 0);
}

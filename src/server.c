#include "server.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

/* Out of descriptors: how long accepting pauses before the next try, and how
 * often a line says it still lasts. */
#define BACKOFF_SECONDS 0.1
#define STARVED_REPORT_SECONDS 5.0

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents);
static void backoff_cb(struct ev_loop *loop, ev_timer *w, int revents);

void server_init(struct server *srv, struct conn_ctx *ctx)
{
    memset(srv, 0, sizeof *srv);
    srv->ctx = ctx;
    ev_init(&srv->backoff, backoff_cb);
}

int server_listen(struct server *srv, const char *spec, char *err)
{
    if (srv->nls == SERVER_MAX_LISTENERS) {
        snprintf(err, ECHOKIT_ERR_LEN, "%s: at most %d listeners", spec, SERVER_MAX_LISTENERS);
        return -1;
    }
    struct listener *l = &srv->ls[srv->nls];
    if (net_parse_addr(spec, 1, &l->addr, err) < 0)
        return -1;
    int fd = net_listen(&l->addr, 1024, err);
    if (fd < 0)
        return -1;
    if (l->addr.ss.ss_family != AF_UNIX)
        net_local_addr(fd, &l->addr);
    l->fd = fd;
    l->srv = srv;
    ev_io_init(&l->io, accept_cb, fd, EV_READ);
    srv->nls++;
    return 0;
}

char *server_listener_name(const struct server *srv, int i, char *buf, size_t cap)
{
    const struct listener *l = &srv->ls[i];
    return net_addr_format((const struct sockaddr *)&l->addr.ss, l->addr.len, buf, cap);
}

static void set_accepting(struct server *srv, int on)
{
    if (on == srv->accepting)
        return;
    for (int i = 0; i < srv->nls; i++) {
        if (srv->ls[i].fd < 0)
            continue;
        if (on)
            ev_io_start(srv->ctx->loop, &srv->ls[i].io);
        else
            ev_io_stop(srv->ctx->loop, &srv->ls[i].io);
    }
    srv->accepting = on;
}

static int below_limit(const struct server *srv)
{
    return !srv->max_conns || srv->ctx->stats.open < srv->max_conns;
}

void server_start(struct server *srv)
{
    srv->running = 1;
    set_accepting(srv, below_limit(srv));
}

void server_drain_backlog(struct server *srv)
{
    /* Connections the kernel completed but we had not accepted yet were made
     * by clients that already think they are connected: take them in so they
     * get the grace period instead of a reset from close(). */
    for (int i = 0; i < srv->nls; i++) {
        struct listener *l = &srv->ls[i];
        for (int n = 0; l->fd >= 0 && n < 4096 && below_limit(srv); n++) {
            struct net_addr peer;
            int fd = net_accept(l->fd, &peer);
            if (fd < 0)
                break;
            srv->on_accept(srv, fd, &peer);
        }
    }
}

void server_stop(struct server *srv)
{
    set_accepting(srv, 0);
    srv->running = 0;
    ev_timer_stop(srv->ctx->loop, &srv->backoff);
    for (int i = 0; i < srv->nls; i++) {
        struct listener *l = &srv->ls[i];
        if (l->fd < 0)
            continue;
        close(l->fd);
        l->fd = -1;
    }
}

void server_unlink_unix(struct server *srv)
{
    for (int i = 0; i < srv->nls; i++) {
        struct listener *l = &srv->ls[i];
        if (l->addr.ss.ss_family == AF_UNIX)
            unlink(((struct sockaddr_un *)&l->addr.ss)->sun_path);
    }
}

void server_conn_closed(struct server *srv)
{
    if (srv->running && !srv->accepting && !ev_is_active(&srv->backoff) && below_limit(srv))
        set_accepting(srv, 1);
}

/* An accept failed for want of descriptors or memory (err): pause, and say
 * so when the shortage starts and then every few seconds, not at every
 * retry. accept(2) fails this way whenever every descriptor is taken, even
 * with nobody waiting; the shortage ends only when an accept finds nothing
 * pending (see caught_up), so that clients coming and going at the limit do
 * not log a start and an end each. */
static void starve(struct server *srv, int err)
{
    ev_tstamp now = ev_now(srv->ctx->loop);
    srv->starved_errno = err;
    if (!srv->starved) {
        srv->starved = 1;
        srv->starved_since = srv->starved_reported = now;
        srv->deferred = srv->accepted = 0;
        log_msg(LOG_WARN, "accept: %s; pausing accepts, retrying every %gs (%llu connections open)",
                strerror(err), BACKOFF_SECONDS, (unsigned long long)srv->ctx->stats.open);
    } else if (++srv->deferred && now - srv->starved_reported >= STARVED_REPORT_SECONDS) {
        log_msg(LOG_WARN,
                "accept: still %s after %.0fs: %llu retries failed, %llu accepted since the "
                "last line (%llu connections open)",
                strerror(err), now - srv->starved_since, (unsigned long long)srv->deferred,
                (unsigned long long)srv->accepted, (unsigned long long)srv->ctx->stats.open);
        srv->starved_reported = now;
        srv->deferred = srv->accepted = 0;
    }
    set_accepting(srv, 0);
    ev_timer_set(&srv->backoff, BACKOFF_SECONDS, 0);
    ev_timer_start(srv->ctx->loop, &srv->backoff);
}

/* Nothing left pending, with a descriptor to spare: the shortage is over. */
static void caught_up(struct server *srv)
{
    srv->starved = 0;
    log_msg(LOG_WARN, "accept: accepting again after %.1fs short of descriptors (%s) "
                      "(%llu connections open)",
            ev_now(srv->ctx->loop) - srv->starved_since, strerror(srv->starved_errno),
            (unsigned long long)srv->ctx->stats.open);
}

/* Accepts from l until nothing is pending or accepting stops (a limit, or
 * out of descriptors). */
static void accept_from(struct listener *l)
{
    struct server *srv = l->srv;
    while (srv->accepting) {
        if (!below_limit(srv)) {
            set_accepting(srv, 0); /* resumed by server_conn_closed */
            return;
        }
        struct net_addr peer;
        int fd = net_accept(l->fd, &peer);
        if (fd >= 0) {
            srv->accepted += srv->starved;
            srv->on_accept(srv, fd, &peer);
            continue;
        }
        switch (errno) {
        case EAGAIN:
#if EAGAIN != EWOULDBLOCK
        case EWOULDBLOCK:
#endif
            if (srv->starved)
                caught_up(srv);
            return;
        case EINTR:
        case ECONNABORTED:
        case EPROTO:
            continue;
        case EMFILE:
        case ENFILE:
        case ENOBUFS:
        case ENOMEM:
            /* Stop accepting for a moment rather than spin on a listener
             * that stays readable. */
            starve(srv, errno);
            return;
        default:
            log_msg(LOG_ERROR, "accept: %s", strerror(errno));
            return;
        }
    }
}

/* The pause is over: try at once rather than wait for the next readiness
 * event, so that the end of a shortage is seen (and logged) when it ends. */
static void backoff_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct server *srv = container_of(w, struct server, backoff);
    if (!srv->running)
        return;
    set_accepting(srv, below_limit(srv));
    for (int i = 0; i < srv->nls && srv->accepting; i++)
        if (srv->ls[i].fd >= 0)
            accept_from(&srv->ls[i]);
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    /* Until EAGAIN; libev calls again while more are pending anyway. */
    accept_from(container_of(w, struct listener, io));
}

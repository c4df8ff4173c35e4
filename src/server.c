#include "server.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

#define BACKOFF_SECONDS 0.1

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

static void backoff_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct server *srv = container_of(w, struct server, backoff);
    if (srv->running)
        set_accepting(srv, below_limit(srv));
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct listener *l = container_of(w, struct listener, io);
    struct server *srv = l->srv;
    /* Until EAGAIN; libev calls again while more are pending anyway. */
    while (srv->accepting) {
        if (!below_limit(srv)) {
            set_accepting(srv, 0); /* resumed by server_conn_closed */
            return;
        }
        struct net_addr peer;
        int fd = net_accept(l->fd, &peer);
        if (fd >= 0) {
            srv->on_accept(srv, fd, &peer);
            continue;
        }
        switch (errno) {
        case EAGAIN:
#if EAGAIN != EWOULDBLOCK
        case EWOULDBLOCK:
#endif
            return;
        case EINTR:
        case ECONNABORTED:
        case EPROTO:
            continue;
        case EMFILE:
        case ENFILE:
        case ENOBUFS:
        case ENOMEM:
            /* Out of descriptors or memory: stop accepting for a moment rather
             * than spin on a listener that stays readable. */
            log_msg(LOG_WARN, "accept: %s; pausing accepts for %.1fs (%llu connections open)",
                    strerror(errno), BACKOFF_SECONDS, (unsigned long long)srv->ctx->stats.open);
            set_accepting(srv, 0);
            ev_timer_set(&srv->backoff, BACKOFF_SECONDS, 0);
            ev_timer_start(loop, &srv->backoff);
            return;
        default:
            log_msg(LOG_ERROR, "accept: %s", strerror(errno));
            return;
        }
    }
}

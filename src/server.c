#include "server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

/* Out of descriptors: how long accepting pauses before the next try, and how
 * often a line says it still lasts. */
#define BACKOFF_SECONDS 0.1
#define STARVED_REPORT_SECONDS 5.0
/* Connections closed over --max-conns-per-ip: at most one line this often. */
#define REFUSED_LOG_SECONDS 1.0

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents);
static void backoff_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void refused_log_cb(struct ev_loop *loop, ev_timer *w, int revents);

void server_init(struct server *srv, struct conn_ctx *ctx)
{
    memset(srv, 0, sizeof *srv);
    srv->ctx = ctx;
    ev_init(&srv->backoff, backoff_cb);
    ev_init(&srv->refused_log, refused_log_cb);
}

/* ---- connections per client address ------------------------------------- */

/* Two open-addressing tables with linear probing, each at most half full:
 * ips (address -> open connections) and counted (the ids of the connections
 * counted there, so that closing an outbound connection or one accepted by
 * another server counts nothing down). Keys are hashed with a random seed:
 * a client cannot pick addresses that collide on purpose. */

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static size_t ip_hash(const struct server *srv, const unsigned char addr[16])
{
    uint64_t hi, lo;
    memcpy(&hi, addr, 8);
    memcpy(&lo, addr + 8, 8);
    return (size_t)mix64(mix64(hi ^ srv->seed) ^ lo);
}

static size_t id_hash(const struct server *srv, uint64_t id)
{
    return (size_t)mix64(id ^ srv->seed);
}

/* The 16-byte key of a TCP peer (IPv4 as ::ffff:a.b.c.d); 0 for others. */
static int ip_key(const struct sockaddr *sa, unsigned char key[16])
{
    if (sa->sa_family == AF_INET) {
        static const unsigned char v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        memcpy(key, v4mapped, 12);
        memcpy(key + 12, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, 4);
        return 1;
    }
    if (sa->sa_family == AF_INET6) {
        memcpy(key, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, 16);
        return 1;
    }
    return 0;
}

/* The slot holding addr, or the free slot where it would go. */
static struct server_ip *ip_slot(const struct server *srv, const unsigned char addr[16])
{
    size_t mask = srv->ips_cap - 1;
    for (size_t i = ip_hash(srv, addr) & mask;; i = (i + 1) & mask) {
        struct server_ip *e = &srv->ips[i];
        if (!e->n || !memcmp(e->addr, addr, 16))
            return e;
    }
}

static uint64_t *id_slot(const struct server *srv, uint64_t id)
{
    size_t mask = srv->counted_cap - 1;
    for (size_t i = id_hash(srv, id) & mask;; i = (i + 1) & mask)
        if (!srv->counted[i] || srv->counted[i] == id)
            return &srv->counted[i];
}

/* Makes room for one more entry in each table. Returns -1 when out of
 * memory (what is counted stays counted). */
static int tables_reserve(struct server *srv)
{
    if (!srv->seed) {
        if (getrandom(&srv->seed, sizeof srv->seed, GRND_NONBLOCK) != sizeof srv->seed)
            srv->seed = (uint64_t)getpid() * 0x9e3779b97f4a7c15ULL ^ (uint64_t)(ev_time() * 1e6);
        srv->seed |= 1;
    }
    if ((srv->ips_used + 1) * 2 > srv->ips_cap) {
        size_t cap = srv->ips_cap ? srv->ips_cap * 2 : 64;
        struct server_ip *old = srv->ips, *t = calloc(cap, sizeof *t);
        if (!t)
            return -1;
        size_t oldcap = srv->ips_cap;
        srv->ips = t;
        srv->ips_cap = cap;
        for (size_t i = 0; i < oldcap; i++)
            if (old[i].n)
                *ip_slot(srv, old[i].addr) = old[i];
        free(old);
    }
    if ((srv->counted_used + 1) * 2 > srv->counted_cap) {
        size_t cap = srv->counted_cap ? srv->counted_cap * 2 : 64;
        uint64_t *old = srv->counted, *t = calloc(cap, sizeof *t);
        if (!t)
            return -1;
        size_t oldcap = srv->counted_cap;
        srv->counted = t;
        srv->counted_cap = cap;
        for (size_t i = 0; i < oldcap; i++)
            if (old[i])
                *id_slot(srv, old[i]) = old[i];
        free(old);
    }
    return 0;
}

/* Removal from a linear-probing table without tombstones: the entries after
 * the hole that would no longer be found are moved back into it. */
static void ip_remove(struct server *srv, struct server_ip *e)
{
    size_t mask = srv->ips_cap - 1, hole = (size_t)(e - srv->ips);
    for (size_t i = (hole + 1) & mask; srv->ips[i].n; i = (i + 1) & mask) {
        size_t home = ip_hash(srv, srv->ips[i].addr) & mask;
        /* movable unless its home lies cyclically in (hole, i] */
        if (((i - home) & mask) >= ((i - hole) & mask)) {
            srv->ips[hole] = srv->ips[i];
            hole = i;
        }
    }
    srv->ips[hole].n = 0;
    srv->ips_used--;
}

static void id_remove(struct server *srv, uint64_t *e)
{
    size_t mask = srv->counted_cap - 1, hole = (size_t)(e - srv->counted);
    for (size_t i = (hole + 1) & mask; srv->counted[i]; i = (i + 1) & mask) {
        size_t home = id_hash(srv, srv->counted[i]) & mask;
        if (((i - home) & mask) >= ((i - hole) & mask)) {
            srv->counted[hole] = srv->counted[i];
            hole = i;
        }
    }
    srv->counted[hole] = 0;
    srv->counted_used--;
}

static void tables_free(struct server *srv)
{
    free(srv->ips);
    free(srv->counted);
    srv->ips = NULL;
    srv->counted = NULL;
    srv->ips_cap = srv->ips_used = srv->counted_cap = srv->counted_used = 0;
}

static void log_refused(struct server *srv)
{
    log_msg(LOG_WARN,
            "closed %llu connection(s) from addresses with %zu open already "
            "(--max-conns-per-ip) in the last %gs",
            (unsigned long long)srv->refused, srv->max_conns_per_ip, REFUSED_LOG_SECONDS);
    srv->refused = 0;
}

/* Runs a second after a line about refused connections: one more line if
 * more were refused meanwhile, else quiet until the next one. */
static void refused_log_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct server *srv = container_of(w, struct server, refused_log);
    if (srv->refused) {
        log_refused(srv);
        ev_timer_set(w, REFUSED_LOG_SECONDS, 0);
        ev_timer_start(loop, w);
    }
}

/* A connection over the per-address limit: closed at once (the client sees
 * its connection closed rather than waiting in the backlog), and logged at
 * most once a second. */
static void refuse(struct server *srv, int fd, const struct net_addr *peer)
{
    close(fd);
    if (ev_is_active(&srv->refused_log)) {
        srv->refused++;
        return;
    }
    char name[INET6_ADDRSTRLEN] = "?";
    const struct sockaddr *sa = (const struct sockaddr *)&peer->ss;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, name,
                  sizeof name);
    else
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, name,
                  sizeof name);
    log_msg(LOG_WARN, "closed a connection from %s: %zu open from that address already "
                      "(--max-conns-per-ip)",
            name, srv->max_conns_per_ip);
    ev_timer_set(&srv->refused_log, REFUSED_LOG_SECONDS, 0);
    ev_timer_start(srv->ctx->loop, &srv->refused_log);
}

/* Counts connection id against the address key, or counts it down. */
static void count(struct server *srv, const unsigned char key[16], uint64_t id)
{
    struct server_ip *e = ip_slot(srv, key);
    if (!e->n) {
        memcpy(e->addr, key, 16);
        srv->ips_used++;
    }
    e->n++;
    *id_slot(srv, id) = id;
    srv->counted_used++;
}

static void uncount(struct server *srv, const unsigned char key[16], uint64_t id)
{
    if (!srv->counted_used)
        return; /* nothing counted, or the tables are gone (server_stop) */
    uint64_t *slot = id_slot(srv, id);
    if (!*slot)
        return; /* not one of ours */
    id_remove(srv, slot);
    struct server_ip *e = ip_slot(srv, key);
    if (e->n && --e->n == 0)
        ip_remove(srv, e);
}

/* Hands an accepted socket on, or closes it when its address is at the
 * per-address limit. The connection on_accept makes of it takes the next id:
 * it is counted under that id before on_accept runs, so that one torn down
 * and reaped before on_accept returns is counted down too, and uncounted
 * after if no connection was made (the id then goes to another). */
static void take(struct server *srv, struct listener *l, int fd, const struct net_addr *peer)
{
    unsigned char key[16];
    if (!srv->max_conns_per_ip || !ip_key((const struct sockaddr *)&peer->ss, key)) {
        srv->on_accept(srv, l, fd, peer);
        return;
    }
    if (tables_reserve(srv) < 0) {
        log_msg(LOG_ERROR, "accept: out of memory, dropping a connection");
        close(fd);
        return;
    }
    if (ip_slot(srv, key)->n >= srv->max_conns_per_ip) {
        refuse(srv, fd, peer);
        return;
    }
    uint64_t id = srv->ctx->next_id;
    count(srv, key, id);
    srv->on_accept(srv, l, fd, peer);
    if (srv->ctx->next_id == id)
        uncount(srv, key, id);
}

/* Counts down the address of c if take() counted it. */
static void conn_gone(struct server *srv, const struct conn *c)
{
    unsigned char key[16];
    if (srv->counted_used && ip_key(&c->peer.sa, key))
        uncount(srv, key, c->id);
}

/* A listener's socket at l->addr, with SO_REUSEPORT if reuseport. */
static int open_socket(struct listener *l, int reuseport, char *err)
{
    return l->udp ? udp_bind(&l->addr, reuseport, err)
                  : net_listen_opt(&l->addr, 1024, reuseport, err);
}

int server_listen(struct server *srv, const char *spec, char *err)
{
    if (srv->nls == SERVER_MAX_LISTENERS) {
        snprintf(err, ECHOKIT_ERR_LEN, "%s: at most %d listeners", spec, SERVER_MAX_LISTENERS);
        return -1;
    }
    struct listener *l = &srv->ls[srv->nls];
    memset(l, 0, sizeof *l);
    l->sock.fd = -1;
    if (!strncmp(spec, "udp://", 6)) {
        l->udp = 1;
        spec += 6;
    }
    if (net_parse_addr(spec, 1, &l->addr, err) < 0)
        return -1;
    int fd = open_socket(l, srv->reuseport, err);
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

int server_adopt(struct server *srv, int fd, char *err)
{
    if (srv->nls == SERVER_MAX_LISTENERS) {
        snprintf(err, ECHOKIT_ERR_LEN, "at most %d listeners", SERVER_MAX_LISTENERS);
        return -1;
    }
    struct listener *l = &srv->ls[srv->nls];
    memset(l, 0, sizeof *l);
    if (net_local_addr(fd, &l->addr) < 0) {
        snprintf(err, ECHOKIT_ERR_LEN, "getsockname: %s", strerror(errno));
        return -1;
    }
    l->fd = fd;
    l->srv = srv;
    l->sock.fd = -1;
    ev_io_init(&l->io, accept_cb, fd, EV_READ);
    srv->nls++;
    return 0;
}

int server_copy_listeners(struct server *srv, int n, char *err)
{
    for (int i = 0; i < srv->nls; i++) {
        struct listener *l = &srv->ls[i];
        if (l->addr.ss.ss_family == AF_UNIX || l->copies || n < 2)
            continue;
        l->copies = malloc((size_t)n * sizeof *l->copies);
        if (!l->copies) {
            snprintf(err, ECHOKIT_ERR_LEN, "out of memory");
            return -1;
        }
        l->copies[0] = l->fd;
        for (l->ncopies = 1; l->ncopies < n; l->ncopies++) {
            int fd = open_socket(l, 1, err);
            if (fd < 0)
                return -1;
            l->copies[l->ncopies] = fd;
        }
    }
    return 0;
}

void server_keep_copy(struct server *srv, int i)
{
    for (int k = 0; k < srv->nls; k++) {
        struct listener *l = &srv->ls[k];
        if (!l->copies)
            continue;
        for (int j = 0; j < l->ncopies; j++)
            if (j != i)
                close(l->copies[j]);
        l->fd = l->copies[i];
        free(l->copies);
        l->copies = NULL;
        l->ncopies = 0;
        ev_io_set(&l->io, l->fd, EV_READ);
    }
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
        if (srv->ls[i].fd < 0 || srv->ls[i].udp)
            continue; /* UDP listeners read from server_start on */
        if (on)
            ev_io_start(srv->ctx->loop, &srv->ls[i].io);
        else
            ev_io_stop(srv->ctx->loop, &srv->ls[i].io);
    }
    srv->accepting = on;
}

/* --max-conns counts connections, not UDP flows (--max-flows bounds those):
 * a datagram flood must not stop TCP clients from being accepted. */
static int below_limit(const struct server *srv)
{
    const struct conn_stats *st = &srv->ctx->stats;
    return !srv->max_conns || st->open - st->flows < srv->max_conns;
}

static struct conn *flow_cb(struct udp_sock *s, const struct net_addr *peer)
{
    struct listener *l = container_of(s, struct listener, sock);
    return l->srv->on_flow ? l->srv->on_flow(l->srv, l, peer) : NULL;
}

static void datagram_cb(struct udp_sock *s, const char *buf, size_t len,
                        const struct net_addr *peer)
{
    struct listener *l = container_of(s, struct listener, sock);
    l->srv->on_datagram(l->srv, l, buf, len, peer);
}

void server_start(struct server *srv)
{
    for (int i = 0; i < srv->nls; i++) {
        struct listener *l = &srv->ls[i];
        if (!l->udp || l->fd < 0)
            continue;
        char err[ECHOKIT_ERR_LEN];
        l->sock.on_flow = flow_cb;
        l->sock.on_datagram = srv->on_datagram ? datagram_cb : NULL;
        if (udp_sock_start(&l->sock, srv->ctx, l->fd, err) < 0) {
            log_msg(LOG_ERROR, "%s", err);
            continue;
        }
        l->fd = -1; /* the socket's now */
    }
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
        for (int n = 0; l->fd >= 0 && !l->udp && n < 4096 && below_limit(srv); n++) {
            struct net_addr peer;
            int fd = net_accept(l->fd, &peer);
            if (fd < 0)
                break;
            take(srv, l, fd, &peer);
        }
    }
}

void server_stop(struct server *srv)
{
    set_accepting(srv, 0);
    srv->running = 0;
    ev_timer_stop(srv->ctx->loop, &srv->backoff);
    if (srv->refused)
        log_refused(srv);
    ev_timer_stop(srv->ctx->loop, &srv->refused_log);
    tables_free(srv);
    for (int i = 0; i < srv->nls; i++) {
        struct listener *l = &srv->ls[i];
        if (l->udp)
            udp_sock_close(&l->sock); /* its flows end ("shutdown") */
        if (l->copies) { /* copies[0] is fd */
            for (int j = 0; j < l->ncopies; j++)
                close(l->copies[j]);
            free(l->copies);
            l->copies = NULL;
            l->ncopies = 0;
        } else if (l->fd >= 0) {
            close(l->fd);
        }
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

void server_conn_closed(struct server *srv, const struct conn *c)
{
    conn_gone(srv, c);
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
            take(srv, l, fd, &peer);
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

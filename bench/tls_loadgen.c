/* tls_loadgen: echokit's TLS load generator (OpenSSL 3, epoll, one thread).
 *
 *   tls_loadgen --mode bulk|handshake|pingpong|idle [options]
 *
 * A real TLS 1.3 client: non-blocking sockets, SSL_do_handshake/SSL_read/
 * SSL_write driven by epoll, every byte it gets back checked against what it
 * sent. It prints one line of key=value pairs, like bench/loadgen.
 *
 *   bulk       C connections stream both ways through TLS (64 KiB SSL_write
 *              calls, at most --inflight bytes unechoed per connection).
 *              MB/s echoed (1 MB = 1e6 B), server CPU us per MB.
 *   handshake  C concurrent slots: TCP connect, a full TLS 1.3 handshake (a
 *              fresh SSL object, no session offered: never a resumption), one
 *              S-byte round trip, close_notify, close; again. Handshakes/s,
 *              server CPU us per handshake. Source addresses rotate over
 *              127.0.0.2.. (--sources) so ephemeral ports last.
 *   pingpong   C connections, each sends an S-byte message and waits for its
 *              echo. req/s, p50/p99 latency, server CPU us per request.
 *   idle       open N connections (--count; at most 32 handshakes at a time),
 *              one round trip each, hold them --hold seconds; the server's RSS
 *              and PSS (/proc/PID/smaps_rollup over its process tree) per
 *              connection above a baseline read before the first connect.
 *
 * Paired windows (bulk, handshake, pingpong; --pair-port P --pair-pid PID), as
 * in bench/loadgen: two servers A (--port/--pid) and B, each with its own
 * connections, are loaded in turn in windows of --window seconds ordered
 * A B B A A B B A ..., --pairs per server after one warm-up window each. A
 * window starts the work on one server's connections; when its time is up no
 * new work starts and the window ends once everything in flight is back (a
 * handshake slot finishes its connection). A window's server CPU is the sum,
 * over the server's process tree (HAProxy's or nginx's processes and
 * threads), of the scheduler's per-task clock (/proc/PID/task/TID/schedstat,
 * ns) read at its start and end. Each window is paired with the adjacent one
 * of the other server; the line gives every pair's ratio A/B, their median
 * and quartiles. Without --pair-port: one server, a warm-up window, then one
 * window of --duration seconds.
 *
 * The client offers TLS 1.3 only, one cipher suite (--ciphers, default
 * TLS_AES_128_GCM_SHA256) and OpenSSL's default groups (X25519 first), and by
 * default does not verify the chain (--ca FILE does); the server's
 * CertificateVerify signature is checked either way, as TLS 1.3 requires.
 * Session tickets the server sends are counted (tickets=) and never used.
 *
 * Bounded: every wait has a deadline (a window's drain 5 s, idle set-up 120 s,
 * connects 5 s), and --pairs/--duration/--count have upper limits.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "lgopts.h"
#include "measure.h"
#include "windows.h"

#define PERIOD 65521u            /* pattern period: a prime, so offsets mix */
#define RBUF (64u * 1024u)
#define IDLE_SLOTS 32

enum mode { BULK, HANDSHAKE, PINGPONG, IDLE };
static const char *const mode_names[] = {"bulk", "handshake", "pingpong", "idle"};

static struct lg_opts opt = {BULK, "127.0.0.1", 7000, 4, 0, 3.0, 0.5, 1.0, 0, 0, 16, 10000,
                             256u << 10, "-", 0, 0, "b", 10, 0.5, mode_names, 4};
static struct {
    const char *ca, *ciphers, *sni;
} tls_opt = {NULL, "TLS_AES_128_GCM_SHA256", NULL};

static unsigned char *pat;
static unsigned char rbuf[RBUF];
static int epfd;
static SSL_CTX *ctx;

static void die(const char *what)
{
    char ssl[256] = "";
    unsigned long e = ERR_get_error();
    if (e) ERR_error_string_n(e, ssl, sizeof ssl);
    const char *why = e ? ssl : strerror(errno);
    lg_die("tls_loadgen", &opt, what, why);
}

/* ---- connections ---------------------------------------------------------- */

enum state { FREE, CONNECTING, HANDSHAKING, READY, HELD };

struct conn {
    int fd, idx;
    enum state st;
    SSL *ssl;
    uint32_t events;
    uint64_t base;          /* pattern offset of this connection's stream */
    uint64_t sent, rcvd;    /* bulk: the stream; else this message */
    size_t wlen;            /* an SSL_write to repeat with the same length */
    uint64_t seq;
    uint64_t t0;
    uint64_t last_progress;
    unsigned char *msg;
    int dead;
    int active;             /* has work in flight (counted in `busy`) */
    int want_out;           /* OpenSSL asked to wait for writability */
    int pending;            /* a message is out, its echo not all back */
};

static struct sockaddr_in dst;
static struct conn *cs;
static uint64_t n_done, n_bytes, n_errors, n_mismatch, n_conn_fail, n_tickets;
static struct latency lat;
static int in_window, draining, busy;
static uint64_t connect_seq;
static char neg_cipher[64] = "-", neg_group[32] = "-";
static unsigned long last_ssl_err;

static void set_events(struct conn *c, uint32_t ev)
{
    if (c->events == ev || c->fd < 0) return;
    struct epoll_event e = {.events = ev, .data.ptr = c};
    epoll_ctl(epfd, c->events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, &e);
    c->events = ev;
}

static void set_active(struct conn *c, int on)
{
    if (c->active == on) return;
    c->active = on;
    busy += on ? 1 : -1;
}

static void record_latency(uint64_t ns)
{
    if (in_window) latency_add(&lat, ns);
}

/* Closes the connection; with `clean`, after a close_notify (one try: a
 * non-blocking socket that will not take it simply closes). */
static void drop(struct conn *c, int clean)
{
    if (c->ssl) {
        if (clean) SSL_shutdown(c->ssl);
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->events = 0;
    c->st = FREE;
    c->want_out = 0;
}

static void fail(struct conn *c)
{
    unsigned long e = ERR_peek_last_error();
    if (e) last_ssl_err = e;
    ERR_clear_error();
    n_errors++;
    set_active(c, 0);
    drop(c, 0);
    c->dead = 1;
}

static int new_ticket(SSL *s, SSL_SESSION *sess)
{
    (void)s;
    (void)sess;
    n_tickets++;
    return 0;  /* not kept: no resumption */
}

/* A TCP connect started towards dst, then an SSL object on it. 0 or -1. */
static int start_conn(struct conn *c)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (opt.sources > 0) {
        struct sockaddr_in s = {.sin_family = AF_INET};
        s.sin_addr.s_addr = htonl(0x7f000002u + (uint32_t)(connect_seq % (uint64_t)opt.sources));
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&s, sizeof s) < 0) { close(fd); return -1; }
    }
    connect_seq++;
    int r = connect(fd, (struct sockaddr *)&dst, sizeof dst);
    if (r < 0 && errno != EINPROGRESS) { close(fd); return -1; }
    c->ssl = SSL_new(ctx);
    if (!c->ssl) { close(fd); return -1; }
    SSL_set_fd(c->ssl, fd);
    SSL_set_connect_state(c->ssl);
    if (tls_opt.sni) SSL_set_tlsext_host_name(c->ssl, tls_opt.sni);
    c->fd = fd;
    c->events = 0;
    c->st = r == 0 ? HANDSHAKING : CONNECTING;
    c->want_out = 0;
    c->dead = 0;
    set_events(c, EPOLLOUT);
    return 0;
}

/* What an SSL call's failure means: 0 = wait (events armed), -1 = error. */
static int ssl_wait(struct conn *c, int ret, int *closed)
{
    int e = SSL_get_error(c->ssl, ret);
    if (e == SSL_ERROR_WANT_READ) return 0;
    if (e == SSL_ERROR_WANT_WRITE) { c->want_out = 1; return 0; }
    if (closed) *closed = e == SSL_ERROR_ZERO_RETURN;
    return -1;
}

static void make_msg(struct conn *c)
{
    size_t off = (size_t)((c->base + c->seq * opt.size) % PERIOD);
    memcpy(c->msg, pat + off, opt.size);
    c->msg[opt.size - 1] = '\n';
    c->sent = c->rcvd = 0;
    c->pending = 1;
}

/* Writes what is left of the current message. 0 or -1. */
static int send_msg(struct conn *c)
{
    while (c->sent < opt.size) {
        int n = SSL_write(c->ssl, c->msg + c->sent, (int)(opt.size - c->sent));
        if (n <= 0) return ssl_wait(c, n, NULL);
        c->sent += (size_t)n;
    }
    return 0;
}

/* Reads the echo of the current message: 1 complete, 0 more to come, -1 error. */
static int recv_msg(struct conn *c)
{
    while (c->rcvd < opt.size) {
        int n = SSL_read(c->ssl, rbuf, RBUF);
        if (n <= 0) return ssl_wait(c, n, NULL);
        if ((size_t)n > opt.size - c->rcvd || memcmp(rbuf, c->msg + c->rcvd, (size_t)n)) {
            n_mismatch++;
            return -1;
        }
        c->rcvd += (size_t)n;
        n_bytes += (uint64_t)n;
    }
    return 1;
}

/* Bulk: reads all that is there, then writes while the in-flight cap allows. */
static int pump_bulk(struct conn *c, uint64_t now)
{
    for (;;) {
        int n = SSL_read(c->ssl, rbuf, RBUF);
        if (n <= 0) {
            if (ssl_wait(c, n, NULL) < 0) return -1;
            break;
        }
        if ((uint64_t)n > c->sent - c->rcvd ||
            memcmp(rbuf, pat + (c->base + c->rcvd) % PERIOD, (size_t)n)) {
            n_mismatch++;
            return -1;
        }
        c->rcvd += (uint64_t)n;
        n_bytes += (uint64_t)n;
        c->last_progress = now;
    }
    while (c->wlen || (c->active && !draining && c->sent - c->rcvd < opt.inflight)) {
        if (!c->wlen) {
            size_t room = opt.inflight - (size_t)(c->sent - c->rcvd);
            c->wlen = room < opt.size ? room : opt.size;
        }
        /* after WANT_WRITE, the same bytes and length again */
        int n = SSL_write(c->ssl, pat + (c->base + c->sent) % PERIOD, (int)c->wlen);
        if (n <= 0) return ssl_wait(c, n, NULL);
        c->sent += (uint64_t)n;
        c->wlen = 0;
    }
    if ((draining || !c->active) && c->sent == c->rcvd && !c->wlen) set_active(c, 0);
    return 0;
}

static void slot_start(struct conn *c, uint64_t now);

/* The current message is back: the mode decides what follows. */
static void msg_done(struct conn *c, uint64_t now)
{
    record_latency(now - c->t0);
    c->pending = 0;
    c->seq++;
    c->last_progress = now;
    if (opt.mode == PINGPONG) {
        n_done++;
        if (draining) { set_active(c, 0); return; }
        make_msg(c);
        c->t0 = now;
        if (send_msg(c) < 0) fail(c);
        return;
    }
    if (opt.mode == IDLE) {
        n_done++;
        c->st = HELD;
        set_active(c, 0);
        set_events(c, 0);
        return;
    }
    /* handshake: done, close, next */
    n_done++;
    set_active(c, 0);
    drop(c, 1);
    slot_start(c, now);
}

/* Everything a connection does on an event (or when its work starts). */
static void drive(struct conn *c, uint32_t ev, uint64_t now)
{
    c->want_out = 0;
    if (c->st == CONNECTING) {
        /* an event left over from the slot's previous socket says nothing */
        struct pollfd pf = {.fd = c->fd, .events = POLLOUT};
        if (poll(&pf, 1, 0) == 0) { set_events(c, EPOLLOUT); return; }
        int err = 0;
        socklen_t l = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err) { n_conn_fail++; goto bad; }
        c->st = HANDSHAKING;
    }
    if (c->st == HANDSHAKING) {
        int r = SSL_do_handshake(c->ssl);
        if (r != 1) {
            if (ssl_wait(c, r, NULL) < 0) goto bad;
            goto arm;
        }
        c->st = READY;
        if (neg_cipher[0] == '-') {
            snprintf(neg_cipher, sizeof neg_cipher, "%s", SSL_get_cipher_name(c->ssl));
            int g = SSL_get_negotiated_group(c->ssl);
            const char *gn = g ? OBJ_nid2sn(g & ~TLSEXT_nid_unknown) : NULL;
            snprintf(neg_group, sizeof neg_group, "%s", gn ? gn : "-");
        }
        if (opt.mode != BULK && opt.mode != PINGPONG) {  /* one round trip now */
            make_msg(c);
            if (send_msg(c) < 0) goto bad;
        } else if (opt.mode == PINGPONG && c->active) {
            make_msg(c);
            c->t0 = now;
            if (send_msg(c) < 0) goto bad;
        }
        ev |= EPOLLIN;
    }
    if (c->st != READY) return;
    if (opt.mode == BULK) {
        if (pump_bulk(c, now) < 0) goto bad;
    } else if (!c->pending) {
        /* nothing asked: read what is there (post-handshake records are
         * fine), application data is surplus */
        int n = SSL_read(c->ssl, rbuf, RBUF);
        if (n > 0) { n_mismatch++; goto bad; }
        if (ssl_wait(c, n, NULL) < 0) goto bad;
    } else {
        if ((ev & EPOLLOUT) && c->sent < opt.size && send_msg(c) < 0) goto bad;
        if (c->sent == opt.size || (ev & (EPOLLIN | EPOLLERR | EPOLLHUP))) {
            int r = recv_msg(c);
            if (r < 0) goto bad;
            if (r == 1) {
                msg_done(c, now);
                if (c->st != READY) return;  /* closed, held, or a new slot */
            }
        }
    }
arm:
    if (c->fd >= 0) set_events(c, EPOLLIN | (c->want_out ? EPOLLOUT : 0));
    return;
bad:
    fail(c);
    if (opt.mode == HANDSHAKE && !draining) slot_start(c, now);
}

/* Handshake mode: a fresh connection in this slot (nothing while draining). */
static void slot_start(struct conn *c, uint64_t now)
{
    if (draining) return;
    for (int tries = 0; tries < 100; tries++) {
        if (start_conn(c) < 0) { n_conn_fail++; continue; }
        set_active(c, 1);
        c->t0 = now;
        c->last_progress = now;
        if (c->st == HANDSHAKING) drive(c, EPOLLOUT, now);
        return;
    }
    die("connect keeps failing");
}

static void poll_once(int ms)
{
    struct epoll_event evs[512];
    int n = epoll_wait(epfd, evs, 512, ms > 50 ? 50 : ms < 0 ? 0 : ms);
    if (n < 0 && errno != EINTR) die("epoll_wait");
    uint64_t now = measure_now_ns();
    for (int i = 0; i < n; i++) {
        struct conn *c = evs[i].data.ptr;
        if (c->dead || c->fd < 0) continue;
        drive(c, evs[i].events, now);
    }
}

/* Waits (up to 10 s) until the server completes a TLS handshake: a probe
 * that finishes the handshake and says close_notify, so that no server logs
 * it as a failed one. */
static void wait_ready(void)
{
    uint64_t end = measure_now_ns() + 10000000000ull;
    for (;;) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), ok = 0;
        struct timeval tv = {2, 0};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        if (connect(fd, (struct sockaddr *)&dst, sizeof dst) == 0) {
            SSL *s = SSL_new(ctx);
            SSL_set_fd(s, fd);
            if (tls_opt.sni) SSL_set_tlsext_host_name(s, tls_opt.sni);
            if (SSL_connect(s) == 1) {
                ok = 1;
                SSL_shutdown(s);
            }
            SSL_free(s);
        }
        close(fd);
        ERR_clear_error();
        if (ok) break;
        if (measure_now_ns() > end) die("server not completing a TLS handshake");
        usleep(20000);
    }
    n_tickets = 0;
}

/* opt.conns connections to dst, handshakes done (bulk, pingpong); handshake
 * mode only allocates the slots. */
static struct conn *open_conns(void)
{
    struct conn *v = calloc((size_t)opt.conns, sizeof *v);
    uint64_t now = measure_now_ns();
    for (int i = 0; i < opt.conns; i++) {
        v[i].idx = i;
        v[i].fd = -1;
        v[i].base = (uint64_t)i * 977u;
        v[i].msg = malloc(opt.size);
        v[i].last_progress = now;
    }
    if (opt.mode == HANDSHAKE) return v;
    cs = v;
    for (int i = 0; i < opt.conns; i++)
        if (start_conn(&v[i]) < 0) die("connect");
    uint64_t end = now + 5000000000ull;
    for (;;) {
        int ready = 0;
        for (int i = 0; i < opt.conns; i++) {
            if (v[i].dead) die("TLS handshake");
            ready += v[i].st == READY;
        }
        if (ready == opt.conns) break;
        if (measure_now_ns() > end) { errno = ETIMEDOUT; die("TLS handshakes"); }
        poll_once(50);
    }
    return v;
}

static void free_conns(struct conn *v, int n)
{
    for (int i = 0; i < n; i++) {
        drop(&v[i], 1);
        free(v[i].msg);
    }
    free(v);
}

static void start_work(struct conn *v, uint64_t now)
{
    for (int i = 0; i < opt.conns; i++) {
        struct conn *c = &v[i];
        if (opt.mode == HANDSHAKE) { slot_start(c, now); continue; }
        if (c->dead || c->fd < 0) continue;
        set_active(c, 1);
        if (opt.mode == PINGPONG) {
            make_msg(c);
            c->t0 = now;
            if (send_msg(c) < 0) { fail(c); continue; }
            set_events(c, EPOLLIN | (c->want_out ? EPOLLOUT : 0));
        } else {
            drive(c, EPOLLOUT, now);
        }
    }
}

/* ---- windows -------------------------------------------------------------- */

struct target {
    const char *label;
    struct sockaddr_in dst;
    pid_t pid;
    int *pids, npids;
    struct conn *cs;
};

static const char *state_names[] = {"free", "connecting", "handshaking", "ready", "held"};

/* On stderr: the connections a window could not drain, and where they stand
 * (bytes waiting unread in the socket, in OpenSSL). */
static void report_stalled(const struct target *t)
{
    for (int i = 0; i < opt.conns; i++) {
        const struct conn *c = &t->cs[i];
        if (!c->active) continue;
        int unread = -1;
        if (c->fd >= 0) ioctl(c->fd, FIONREAD, &unread);
        fprintf(stderr,
                "tls_loadgen: %s: connection %d stalled: %s, sent %llu, echoed %llu, "
                "%d bytes unread in the socket, %d in OpenSSL, waiting to %s\n",
                t->label, i, state_names[c->st], (unsigned long long)c->sent,
                (unsigned long long)c->rcvd, unread, c->ssl ? SSL_pending(c->ssl) : 0,
                c->want_out ? "write" : "read");
    }
}

/* A window's operations on the current target (cs). */
static void window_start(uint64_t now)
{
    in_window = 1;
    start_work(cs, now);
}

static void window_drain(uint64_t now)
{
    draining = 1;
    if (opt.mode == BULK)  /* nothing more to send: idle once all is back */
        for (int i = 0; i < opt.conns; i++)
            if (!cs[i].dead && cs[i].st == READY) drive(&cs[i], 0, now);
}

static int window_busy(void) { return busy; }

static const struct window_ops window_ops = {window_start, window_drain, window_busy, poll_once};

/* One window on t: start its work, run `len` s, then start nothing new and
 * wait (up to 5 s) until all in flight is back. */
static void window(void *target, double len, struct window_result *r)
{
    struct target *t = target;
    dst = t->dst;
    cs = t->cs;
    uint64_t d0 = n_done, b0 = n_bytes, k0 = n_tickets;
    windows_timed(&window_ops, t->pids, t->npids, len, r);
    if (!r->drained) report_stalled(t);
    r->done = n_done - d0;
    r->bytes = n_bytes - b0;
    r->tickets = n_tickets - k0;
    draining = 0;
    in_window = 0;
}

static const char *const names[3][2] = {{"mbps", "cpu_us_per_mb"},
                                  {"hps", "cpu_us_per_hs"},
                                  {"rps", "cpu_us_per_req"}};

static int count_dead(struct conn *v)
{
    int d = 0;
    for (int i = 0; i < opt.conns && opt.mode != HANDSHAKE; i++) d += v[i].dead;
    return d;
}

static void setup_target(struct target *t, const char *label, int port, pid_t pid)
{
    t->label = label;
    t->dst = dst;
    t->dst.sin_port = htons((uint16_t)port);
    t->pid = pid;
    dst = t->dst;
    wait_ready();
    t->npids = pid ? measure_tree(pid, &t->pids, NULL) : 0;
    t->cs = open_conns();
}

static void print_tail(double other, int undrained, int dead)
{
    char err[160] = "";
    if (last_ssl_err) {
        char s[120];
        ERR_error_string_n(last_ssl_err, s, sizeof s);
        snprintf(err, sizeof err, " last_ssl_error=\"%s\"", s);
    }
    printf(" cipher=%s group=%s other_util=%.2f stalled=%d dead=%d errors=%llu"
           " conn_fail=%llu mismatches=%llu%s\n",
           neg_cipher, neg_group, other < 0 ? 0 : other, undrained, dead,
           (unsigned long long)n_errors, (unsigned long long)n_conn_fail,
           (unsigned long long)n_mismatch, err);
}

static int run_paired(void)
{
    struct target tg[2];
    setup_target(&tg[0], opt.label, opt.port, opt.pid);
    setup_target(&tg[1], opt.pair_label, opt.pair_port, opt.pair_pid);
    struct paired p = {.target = {&tg[0], &tg[1]}, .label = {tg[0].label, tg[1].label},
                       .window = window, .n = opt.pairs, .warmup = opt.warmup,
                       .len = opt.window};
    windows_paired_run(&p, opt.bpid, measure_tree_sched_us);
    windows_print_paired(&p, opt.conns, opt.size, names[opt.mode], opt.mode == BULK);
    if (opt.mode != BULK)
        for (int k = 0; k < 2; k++) {
            uint64_t tickets = 0, units = 0;
            for (int i = 0; i < p.n; i++) {
                tickets += p.res[k][i].tickets;
                units += p.res[k][i].done;
            }
            printf(" %s_tickets_per_conn=%.2f", k ? "b" : "a",
                   opt.mode == HANDSHAKE && units ? (double)tickets / (double)units : 0);
        }
    double other = windows_print_util(&p);
    int dead = count_dead(tg[0].cs) + count_dead(tg[1].cs);
    print_tail(other, p.undrained, dead);
    for (int k = 0; k < 2; k++) {
        free_conns(tg[k].cs, opt.conns);
        free(tg[k].pids);
    }
    windows_paired_free(&p);
    return (n_mismatch || dead || p.undrained || n_errors) ? 1 : 0;
}

static int run_single(void)
{
    struct target t;
    struct window_result r;
    struct measure_usage u;
    setup_target(&t, opt.label, opt.port, opt.pid);
    window(&t, opt.warmup, &r);
    lat.n = 0;
    measure_usage_start(&u, opt.bpid, measure_tree_sched_us);
    window(&t, opt.duration, &r);
    measure_usage_stop(&u);
    latency_sort(&lat);
    int mi = opt.mode;
    printf(" conns=%d size=%zu secs=%.3f units=%llu bytes=%llu %s=%.1f %s=%.3f p50_us=%.1f"
           " p99_us=%.1f server_util=%.2f loadgen_util=%.2f backend_util=%.2f",
           opt.conns, opt.size, r.secs, (unsigned long long)r.done,
           (unsigned long long)r.bytes, names[mi][0], windows_metric(&r, 0, opt.mode == BULK),
           names[mi][1], windows_metric(&r, 1, opt.mode == BULK), latency_pct_us(&lat, 0.5),
           latency_pct_us(&lat, 0.99), r.cpu_us / r.secs / 1e6, u.self_us / r.secs / 1e6,
           u.backend_us / r.secs / 1e6);
    if (opt.mode == HANDSHAKE)
        printf(" tickets_per_conn=%.2f", r.done ? (double)r.tickets / (double)r.done : 0);
    int dead = count_dead(t.cs);
    print_tail(measure_other_util(&u, &r.cpu_us, 1, r.secs), !r.drained, dead);
    free_conns(t.cs, opt.conns);
    free(t.pids);
    return (n_mismatch || dead || !r.drained || n_errors || !(r.done || r.bytes)) ? 1 : 0;
}

/* Idle: N connections, each a handshake and one round trip, at most
 * IDLE_SLOTS in progress; then hold and read the server's memory. */
static int run_idle(void)
{
    wait_ready();
    long long rss0, pss0, rss1, pss1;
    measure_tree_mem(opt.pid, &rss0, &pss0);
    double c0 = measure_tree_sched_us(opt.pid);
    uint64_t t0 = measure_now_ns(), deadline = t0 + 120000000000ull;
    opt.conns = opt.count;
    cs = calloc((size_t)opt.count, sizeof *cs);
    for (int i = 0; i < opt.count; i++) {
        cs[i].fd = -1;
        cs[i].idx = i;
        cs[i].base = (uint64_t)i * 977u;
        cs[i].msg = malloc(opt.size);
    }
    int next = 0, fails = 0;
    uint64_t last_ok = 0;
    /* Bounded: stop when 3 in a row fail (the server refuses more) or at 120 s. */
    while (measure_now_ns() < deadline && fails < 3) {
        while (next < opt.count && busy < IDLE_SLOTS) {
            struct conn *c = &cs[next++];
            if (start_conn(c) < 0) { n_conn_fail++; fails++; c->dead = 1; continue; }
            set_active(c, 1);
            c->t0 = measure_now_ns();
            if (c->st == HANDSHAKING) drive(c, EPOLLOUT, c->t0);
        }
        if (busy == 0 && next >= opt.count) break;
        uint64_t e0 = n_errors + n_conn_fail;
        poll_once(50);
        if (n_done > last_ok) { last_ok = n_done; fails = 0; }
        fails += (int)(n_errors + n_conn_fail - e0);
    }
    double setup = (double)(measure_now_ns() - t0) / 1e9;
    double cpu_setup = measure_tree_sched_us(opt.pid) - c0;
    usleep((useconds_t)(opt.hold * 1e6));
    measure_tree_mem(opt.pid, &rss1, &pss1);
    int closed = 0;
    for (int i = 0; i < opt.count; i++) {
        if (cs[i].st != HELD) continue;
        char b;
        if (recv(cs[i].fd, &b, 1, MSG_DONTWAIT) == 0) closed++;
    }
    long long ok = (long long)n_done;
    printf(" conns=%d ok=%lld setup_s=%.3f rss_before=%lld pss_before=%lld rss_after=%lld"
           " pss_after=%lld rss_per_conn=%.1f pss_per_conn=%.1f cpu_us_per_conn=%.2f"
           " closed_by_server=%d",
           opt.count, ok, setup, rss0, pss0, rss1, pss1,
           ok ? (double)(rss1 - rss0) / (double)ok : 0,
           ok ? (double)(pss1 - pss0) / (double)ok : 0, ok ? cpu_setup / (double)ok : 0,
           closed);
    print_tail(0, 0, 0);
    free_conns(cs, opt.count);
    return (ok == opt.count && !n_mismatch && !closed) ? 0 : 1;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: tls_loadgen --mode bulk|handshake|pingpong|idle [--host IP] [--port N]\n"
            "  [--pid SERVER_PID] [--label NAME] [--conns C] [--size S] [--inflight BYTES]\n"
            "  [--duration SEC] [--warmup SEC] [--sources N] [--count N] [--hold SEC]\n"
            "  [--ca FILE] [--sni NAME] [--ciphers TLS13-SUITES] [--backend-pid PID]\n"
            "  [--pair-port N --pair-pid PID [--pair-label NAME] [--pairs N] [--window SEC]]\n"
            "      paired windows against a second server (see the top of tls_loadgen.c)\n");
    exit(2);
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {LG_LONGOPTS, {"ca", 1, 0, 'a'}, {"ciphers", 1, 0, 'C'},
                                       {"sni", 1, 0, 'I'}, {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        int r = lg_opt(&opt, ch, optarg);
        if (r > 0) continue;
        if (r < 0) usage();
        switch (ch) {
        case 'a': tls_opt.ca = optarg; break;
        case 'C': tls_opt.ciphers = optarg; break;
        case 'I': tls_opt.sni = optarg; break;
        default: usage();
        }
    }
    if (!opt.size) opt.size = opt.mode == BULK ? 65536 : 64;
    if (opt.conns < 1 || opt.conns > 10000 || opt.size < 1 || opt.size > (1u << 20) ||
        opt.duration <= 0 || opt.duration > 600 || opt.warmup <= 0 || opt.warmup > 60 ||
        opt.count < 1 || opt.count > 100000 || opt.sources < 0 || opt.sources > 250 ||
        opt.pairs < 1 || opt.pairs > 1000 || opt.window <= 0 || opt.window > 60 ||
        opt.hold < 0 || opt.hold > 60 || opt.inflight < 1 ||
        (opt.pair_port && (opt.mode == IDLE || !opt.pid || !opt.pair_pid)))
        usage();
    if (opt.mode == BULK || opt.mode == PINGPONG) opt.sources = 0;

    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) die("SSL_CTX_new");
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    if (!SSL_CTX_set_ciphersuites(ctx, tls_opt.ciphers)) die("--ciphers");
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* tickets are counted, never stored or offered */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, new_ticket);
    if (tls_opt.ca) {
        if (!SSL_CTX_load_verify_locations(ctx, tls_opt.ca, NULL)) die("--ca");
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    }

    size_t plen = PERIOD + (opt.size > RBUF ? opt.size : RBUF) + opt.inflight;
    pat = malloc(plen);
    for (size_t i = 0; i < plen; i++) {
        uint32_t k = (uint32_t)(i % PERIOD);
        /* printable, no '\n' but one every 256 bytes (for line servers) */
        pat[i] = k % 256u == 255u ? '\n' : (unsigned char)(' ' + (k * 7u + k / 89u) % 90u);
    }
    if (lg_start(&opt, &dst) < 0) usage();
    epfd = epoll_create1(EPOLL_CLOEXEC);

    printf("label=%s mode=%s", opt.label, mode_names[opt.mode]);
    int rc = opt.mode == IDLE ? run_idle() : opt.pair_port ? run_paired() : run_single();
    free(lat.v);
    free(pat);
    SSL_CTX_free(ctx);
    return rc;
}

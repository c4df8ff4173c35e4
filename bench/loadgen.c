/* loadgen: echokit's load generator (epoll, one thread, no dependencies).
 *
 *   loadgen --mode pingpong|bulk|connrate|idle [options]
 *
 * Every mode checks every byte it gets back against what it sent, and samples
 * the server's CPU time (utime+stime of --pid and all its descendants, plus the
 * reaped children's cutime+cstime) over the measurement window only: warm-up
 * first, then exactly --duration seconds. It prints one line of key=value pairs.
 *
 *   pingpong  C connections; each sends an S-byte message (last byte '\n', no
 *             other '\n') and waits for all of it back. requests/s, p50/p99/max
 *             latency, server CPU us per request.
 *   bulk      C connections stream both ways (at most --inflight bytes unechoed
 *             per connection). MB/s echoed (1 MB = 1e6 bytes), CPU us per MB.
 *   connrate  C concurrent slots: connect, one S-byte round trip, close, again.
 *             conns/s, CPU us per connection. Source addresses rotate over
 *             127.0.0.2.. (--sources) so ephemeral ports last.
 *   idle      open N connections (--count) from --sources addresses, one round
 *             trip each, hold them; report the server's RSS and PSS (from
 *             /proc/PID/smaps_rollup, summed over its process tree) per
 *             connection above a baseline read before the first connect.
 *
 * Paired windows (--pair-port P --pair-pid PID): two servers, A (--port/--pid)
 * and B, each with its own C connections, are loaded in turn in short
 * windows (--window SEC) ordered A B B A A B B A ..., --pairs N times per
 * server after one warm-up window each. Only one server has work at a time:
 * a window starts the work on A's connections, and when its time is up stops
 * starting new work and waits until everything in flight is back; the
 * window's CPU (from /proc/PID/task/TID/schedstat, in ns), counts and wall
 * time run from start to drained. Each window is paired with the adjacent
 * window of the other server, and the line reports the median of those
 * per-pair ratios (A/B) with quartiles, so drift in the host's speed that is
 * slower than a window cancels out.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "lgopts.h"
#include "measure.h"
#include "windows.h"

#define PERIOD 65521u            /* pattern period: a prime, so offsets mix */
#define RBUF (256u * 1024u)

enum mode { PINGPONG, BULK, CONNRATE, IDLE };
static const char *const mode_names[] = {"pingpong", "bulk", "connrate", "idle"};

static struct lg_opts opt = {PINGPONG, "127.0.0.1", 7000, 50, 0, 3.0, 0.5, 1.0, 0, 0, 0, 10000,
                             1u << 20, "-", 0, 0, "b", 10, 0.5, mode_names, 4};

static unsigned char *pat_pp;    /* no '\n' anywhere */
static unsigned char *pat_bulk;  /* a '\n' every 256 bytes, for line servers */
static unsigned char rbuf[RBUF];
static int epfd;

static void die(const char *what)
{
    lg_die("loadgen", &opt, what, strerror(errno));
}

/* ---- sockets -------------------------------------------------------------- */

static struct sockaddr_in dst;

static void src_addr(int i, struct sockaddr_in *a)
{
    memset(a, 0, sizeof *a);
    a->sin_family = AF_INET;
    a->sin_addr.s_addr = htonl(0x7f000002u + (uint32_t)(i % opt.sources));
}

/* A non-blocking socket with connect() started; *done is set when it finished
 * at once. -1 on a hard error. */
static int start_connect(int i, int *done)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (opt.sources > 0) {
        struct sockaddr_in s;
        src_addr(i, &s);
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&s, sizeof s) < 0) { close(fd); return -1; }
    }
    *done = 0;
    if (connect(fd, (struct sockaddr *)&dst, sizeof dst) == 0) *done = 1;
    else if (errno != EINPROGRESS) { close(fd); return -1; }
    return fd;
}

static int blocking_connect(int i)
{
    int done;
    int fd = start_connect(i, &done);
    if (fd < 0) return -1;
    if (!done) {
        struct epoll_event ev = {.events = EPOLLOUT};
        int e = epoll_create1(EPOLL_CLOEXEC);
        epoll_ctl(e, EPOLL_CTL_ADD, fd, &ev);
        int r = epoll_wait(e, &ev, 1, 5000);
        close(e);
        int err = 0;
        socklen_t l = sizeof err;
        if (r != 1 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l) < 0 || err) {
            close(fd);
            errno = r == 1 ? err : ETIMEDOUT;
            return -1;
        }
    }
    return fd;
}

/* Waits (up to 10 s) until the server accepts a connection. */
static void wait_ready(void)
{
    uint64_t end = measure_now_ns() + 10000000000ull;
    for (;;) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (connect(fd, (struct sockaddr *)&dst, sizeof dst) == 0) { close(fd); break; }
        close(fd);
        if (measure_now_ns() > end) die("server not accepting");
        usleep(20000);
    }
    usleep(200000);  /* let a forking server's probe child finish */
}

/* ---- connections ---------------------------------------------------------- */

struct conn {
    int fd, idx;
    uint32_t events;
    uint64_t base;          /* pattern offset of this connection's stream */
    uint64_t sent, rcvd;    /* bytes so far (bulk: stream; else this message) */
    uint64_t seq;           /* messages completed */
    uint64_t t0;            /* send time of the current message / connect */
    uint64_t last_progress;
    unsigned char *msg;
    int connecting;
    int dead;
    int active;             /* has work in flight (counted in `busy`) */
};

static struct conn *cs;
static uint64_t n_done, n_bytes, n_errors, n_mismatch, n_conn_fail;
static struct latency lat;  /* latencies in window */
static int in_window;
static int draining;      /* paired windows: finish what is in flight, start nothing */
static int busy;          /* connections with work in flight */

static void set_events(struct conn *c, uint32_t ev)
{
    if (c->events == ev) return;
    struct epoll_event e = {.events = ev, .data.ptr = c};
    epoll_ctl(epfd, c->events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, &e);
    c->events = ev;
}

static void record_latency(uint64_t ns)
{
    if (in_window) latency_add(&lat, ns);
}

static void make_msg(struct conn *c)
{
    size_t off = (size_t)((c->base + c->seq * opt.size) % PERIOD);
    memcpy(c->msg, pat_pp + off, opt.size);
    c->msg[opt.size - 1] = '\n';
    c->sent = c->rcvd = 0;
}

static void set_active(struct conn *c, int on)
{
    if (c->active == on) return;
    c->active = on;
    busy += on ? 1 : -1;
}

static void kill_conn(struct conn *c)
{
    set_active(c, 0);
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->events = 0;
    c->dead = 1;
}

/* Writes what is left of the current message; arms EPOLLOUT if it must wait. */
static int send_msg(struct conn *c)
{
    while (c->sent < opt.size) {
        ssize_t n = write(c->fd, c->msg + c->sent, opt.size - c->sent);
        if (n < 0) {
            if (errno == EAGAIN) { set_events(c, EPOLLIN | EPOLLOUT); return 0; }
            return -1;
        }
        c->sent += (size_t)n;
    }
    set_events(c, EPOLLIN);
    return 0;
}

/* Reads the echo of the current message. 1 = complete, 0 = more to come,
 * -1 = error (closed, reset, wrong bytes, surplus bytes). */
static int recv_msg(struct conn *c)
{
    for (;;) {
        ssize_t n = read(c->fd, rbuf, RBUF);
        if (n == 0) { errno = ECONNRESET; return -1; }
        if (n < 0) return errno == EAGAIN ? 0 : -1;
        if ((size_t)n > opt.size - c->rcvd) { n_mismatch++; errno = EPROTO; return -1; }
        if (memcmp(rbuf, c->msg + c->rcvd, (size_t)n) != 0) { n_mismatch++; errno = EPROTO; return -1; }
        c->rcvd += (size_t)n;
        n_bytes += (uint64_t)n;
        if (c->rcvd == opt.size) return 1;
    }
}

/* ---- modes ---------------------------------------------------------------- */

static void on_pingpong(struct conn *c, uint32_t ev, uint64_t now)
{
    if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        int r = recv_msg(c);
        if (r < 0) { n_errors++; kill_conn(c); return; }
        if (r == 1) {
            record_latency(now - c->t0);
            n_done++;
            c->seq++;
            c->last_progress = now;
            if (draining) { set_active(c, 0); return; }
            make_msg(c);
            c->t0 = now;
            if (send_msg(c) < 0) { n_errors++; kill_conn(c); }
            return;
        }
    }
    if ((ev & EPOLLOUT) && c->sent < opt.size && send_msg(c) < 0) { n_errors++; kill_conn(c); }
}

static void bulk_arm(struct conn *c)
{
    if (draining || !c->active) {  /* send nothing more; idle once all is back */
        set_events(c, EPOLLIN);
        if (c->sent == c->rcvd) set_active(c, 0);
        return;
    }
    set_events(c, c->sent - c->rcvd < opt.inflight ? EPOLLIN | EPOLLOUT : EPOLLIN);
}

static void on_bulk(struct conn *c, uint32_t ev, uint64_t now)
{
    if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        ssize_t n = read(c->fd, rbuf, RBUF);
        if (n == 0 || (n < 0 && errno != EAGAIN)) { n_errors++; kill_conn(c); return; }
        if (n > 0) {
            if ((uint64_t)n > c->sent - c->rcvd ||
                memcmp(rbuf, pat_bulk + (c->base + c->rcvd) % PERIOD, (size_t)n) != 0) {
                n_mismatch++;
                kill_conn(c);
                return;
            }
            c->rcvd += (uint64_t)n;
            n_bytes += (uint64_t)n;
            c->last_progress = now;
        }
    }
    if ((ev & EPOLLOUT) && c->active && !draining) {
        size_t room = opt.inflight - (size_t)(c->sent - c->rcvd);
        if (room > opt.size) room = opt.size;
        if (room > 0) {
            ssize_t n = write(c->fd, pat_bulk + (c->base + c->sent) % PERIOD, room);
            if (n < 0 && errno != EAGAIN) { n_errors++; kill_conn(c); return; }
            if (n > 0) c->sent += (uint64_t)n;
        }
    }
    bulk_arm(c);
}

static uint64_t connect_seq;

static void connrate_start(struct conn *c, uint64_t now)
{
    if (draining) return;  /* the slot stays empty until the next window */
    for (int tries = 0; tries < 100; tries++) {
        int done;
        c->fd = start_connect((int)(connect_seq++), &done);
        if (c->fd < 0) { n_conn_fail++; continue; }
        c->events = 0;
        c->dead = 0;
        set_active(c, 1);
        c->seq++;
        make_msg(c);
        c->t0 = now;
        c->connecting = !done;
        if (done) {
            if (send_msg(c) < 0) { n_errors++; close(c->fd); continue; }
        } else {
            set_events(c, EPOLLOUT);
        }
        return;
    }
    die("connect keeps failing");
}

static void on_connrate(struct conn *c, uint32_t ev, uint64_t now)
{
    if (c->connecting) {
        int err = 0;
        socklen_t l = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err) { n_conn_fail++; kill_conn(c); connrate_start(c, now); return; }
        c->connecting = 0;
        if (send_msg(c) < 0) { n_errors++; kill_conn(c); connrate_start(c, now); }
        return;
    }
    if (ev & EPOLLOUT && c->sent < opt.size) {
        if (send_msg(c) < 0) { n_errors++; kill_conn(c); connrate_start(c, now); }
        return;
    }
    int r = recv_msg(c);
    if (r == 0) return;
    if (r < 0) n_errors++;
    else { n_done++; record_latency(now - c->t0); c->last_progress = now; }
    kill_conn(c);
    connrate_start(c, now);
}

/* Starts the work of opt.conns connections (connrate: fills the slots). */
static void start_work(struct conn *v, uint64_t now)
{
    for (int i = 0; i < opt.conns; i++) {
        struct conn *c = &v[i];
        if (opt.mode == CONNRATE) { connrate_start(c, now); continue; }
        if (c->dead || c->fd < 0) continue;
        set_active(c, 1);
        if (opt.mode == PINGPONG) {
            make_msg(c);
            c->t0 = now;
            if (send_msg(c) < 0) { n_errors++; kill_conn(c); }
        } else {
            bulk_arm(c);
        }
    }
}

#define server_cpu_us() measure_tree_ticks_us(opt.pid)
static struct measure_usage win_usage;  /* loadgen's, the host's, the backend's CPU in it */

/* Waits up to ms (at most 50) for events and hands each to `on`. */
static void poll_once(void (*on)(struct conn *, uint32_t, uint64_t), int ms)
{
    struct epoll_event evs[512];
    int n = epoll_wait(epfd, evs, 512, ms > 50 ? 50 : ms);
    if (n < 0 && errno != EINTR) die("epoll_wait");
    uint64_t now = measure_now_ns();
    for (int i = 0; i < n; i++) {
        struct conn *c = evs[i].data.ptr;
        if (c->dead || c->fd < 0) continue;
        on(c, evs[i].events, now);
    }
}

/* Runs the loop for warm-up + duration; fills the window's figures. */
static void run_window(void (*on)(struct conn *, uint32_t, uint64_t), double *cpu_us,
                       uint64_t *done, uint64_t *bytes, double *secs)
{
    uint64_t start = measure_now_ns();
    uint64_t w0 = start + (uint64_t)(opt.warmup * 1e9);
    uint64_t w1 = w0 + (uint64_t)(opt.duration * 1e9);
    uint64_t d0 = 0, b0 = 0, t0 = 0;
    double c0 = 0;
    if (opt.warmup <= 0) {
        in_window = 1;
        c0 = server_cpu_us();
        measure_usage_start(&win_usage, opt.bpid, measure_tree_ticks_us);
        t0 = measure_now_ns();
    }
    for (;;) {
        uint64_t now = measure_now_ns();
        if (!in_window && now >= w0) {
            c0 = server_cpu_us();
            measure_usage_start(&win_usage, opt.bpid, measure_tree_ticks_us);
            t0 = measure_now_ns();
            w1 = t0 + (uint64_t)(opt.duration * 1e9);
            d0 = n_done;
            b0 = n_bytes;
            in_window = 1;
        }
        if (now >= w1) break;
        poll_once(on, (int)(((in_window ? w1 : w0) - now) / 1000000u) + 1);
    }
    *cpu_us = server_cpu_us() - c0;
    measure_usage_stop(&win_usage);
    uint64_t t1 = measure_now_ns();
    *done = n_done - d0;
    *bytes = n_bytes - b0;
    *secs = (double)(t1 - t0) / 1e9;
    in_window = 0;
}

static int count_stalled(uint64_t now)
{
    int s = 0;
    for (int i = 0; i < opt.conns; i++)
        if (!cs[i].dead && now - cs[i].last_progress > 1000000000ull) s++;
    return s;
}

static int count_dead(void)
{
    int d = 0;
    for (int i = 0; i < opt.conns; i++) d += cs[i].dead;
    return d;
}

/* opt.conns connections to `dst`; with `start`, their work begins at once. */
static struct conn *open_conns(int start)
{
    struct conn *v = calloc((size_t)opt.conns, sizeof *v);
    uint64_t now = measure_now_ns();
    for (int i = 0; i < opt.conns; i++) {
        struct conn *c = &v[i];
        c->idx = i;
        c->base = (uint64_t)i * 977u;
        c->msg = malloc(opt.size);
        c->last_progress = now;
        c->fd = -1;
        if (opt.mode == CONNRATE) continue;
        c->fd = blocking_connect(i);
        if (c->fd < 0) die("connect");
        set_events(c, EPOLLIN);
    }
    if (start) start_work(v, now);
    return v;
}

static void free_conns(struct conn *v)
{
    for (int i = 0; i < opt.conns; i++) {
        if (v[i].fd >= 0) close(v[i].fd);
        free(v[i].msg);
    }
    free(v);
}

/* ---- paired windows ------------------------------------------------------- */

struct target {
    const char *label;
    struct sockaddr_in dst;
    pid_t pid;
    int *pids, npids;       /* the server's process tree, read once */
    struct conn *cs;
    void (*on)(struct conn *, uint32_t, uint64_t);
};

/* The paired windows' operations on the current target (cs). */
static void (*paired_on)(struct conn *, uint32_t, uint64_t);

static void paired_start(uint64_t now)
{
    in_window = 1;
    start_work(cs, now);
}

static void paired_drain(uint64_t now)
{
    draining = 1;
    for (int i = 0; i < opt.conns; i++)
        if (opt.mode == BULK && !cs[i].dead) bulk_arm(&cs[i]);
}

static int paired_busy(void) { return busy; }
static void paired_poll(int ms) { poll_once(paired_on, ms); }

static const struct window_ops paired_ops = {paired_start, paired_drain, paired_busy, paired_poll};

/* One window on target t: start its work, run for `len` seconds, stop
 * starting new work and wait (up to 5 s) until what is in flight is back. */
static void paired_window(void *target, double len, struct window_result *r)
{
    struct target *t = target;
    dst = t->dst;
    cs = t->cs;
    paired_on = t->on;
    uint64_t d0 = n_done, b0 = n_bytes;
    windows_timed(&paired_ops, t->pids, t->npids, len, r);
    r->done = n_done - d0;
    r->bytes = n_bytes - b0;
    r->tickets = 0;
    draining = 0;
    in_window = 0;
}

static int run_paired(void (*on)(struct conn *, uint32_t, uint64_t))
{
    struct target tg[2] = {
        {opt.label, dst, opt.pid, NULL, 0, NULL, on},
        {opt.pair_label, dst, opt.pair_pid, NULL, 0, NULL, on},
    };
    tg[1].dst.sin_port = htons((uint16_t)opt.pair_port);
    for (int k = 0; k < 2; k++) {
        dst = tg[k].dst;
        wait_ready();
        tg[k].npids = measure_tree(tg[k].pid, &tg[k].pids, NULL);
        tg[k].cs = open_conns(0);
    }
    struct paired p = {.target = {&tg[0], &tg[1]}, .label = {tg[0].label, tg[1].label},
                       .window = paired_window, .n = opt.pairs, .warmup = opt.warmup,
                       .len = opt.window};
    windows_paired_run(&p, opt.bpid, measure_tree_ticks_us);
    static const char *const names[3][2] = {{"rps", "cpu_us_per_req"},
                                            {"mbps", "cpu_us_per_mb"},
                                            {"cps", "cpu_us_per_conn"}};
    int mi = opt.mode == PINGPONG ? 0 : opt.mode == BULK ? 1 : 2;
    windows_print_paired(&p, opt.conns, opt.size, names[mi], opt.mode == BULK);
    printf(" other_util=%.2f", windows_print_util(&p));
    int dead = 0;
    for (int k = 0; k < 2 && opt.mode != CONNRATE; k++) {
        cs = tg[k].cs;
        dead += count_dead();
    }
    printf(" stalled=%d dead=%d errors=%llu mismatches=%llu\n", p.undrained, dead,
           (unsigned long long)n_errors, (unsigned long long)n_mismatch);
    for (int k = 0; k < 2; k++) {
        free_conns(tg[k].cs);
        free(tg[k].pids);
    }
    windows_paired_free(&p);
    return (n_mismatch || dead || p.undrained) ? 1 : 0;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen --mode pingpong|bulk|connrate|idle [--host IP] [--port N]\n"
            "  [--conns C] [--size S] [--duration SEC] [--warmup SEC] [--pid SERVER_PID]\n"
            "  [--sources N] [--count N] [--hold SEC] [--inflight BYTES] [--label NAME]\n"
            "  [--backend-pid PID]  (a proxy's upstream: its CPU is reported apart)\n"
            "  [--pair-port N --pair-pid PID [--pair-label NAME] [--pairs N] [--window SEC]]\n"
            "      paired windows against a second server (see the top of loadgen.c)\n");
    exit(2);
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {LG_LONGOPTS, {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1)
        if (lg_opt(&opt, ch, optarg) <= 0) usage();
    if (!opt.size) opt.size = opt.mode == BULK ? 65536 : opt.mode == IDLE ? 16 : 64;
    if (opt.conns < 1 || opt.size < 1 || opt.size > (64u << 20) || opt.duration > 600 ||
        opt.warmup > 60 || opt.count < 1 || opt.count > 1000000 || opt.sources < 0 ||
        opt.sources > 250 || opt.pairs < 1 || opt.pairs > 10000 || opt.window <= 0 ||
        opt.window > 60 || (opt.pair_port && (opt.mode == IDLE || !opt.pid || !opt.pair_pid)))
        usage();

    size_t plen = PERIOD + (opt.size > RBUF ? opt.size : RBUF);
    pat_pp = malloc(plen);
    pat_bulk = malloc(plen);
    for (size_t i = 0; i < plen; i++) {
        uint32_t k = (uint32_t)(i % PERIOD);
        pat_pp[i] = (unsigned char)(' ' + (k * 7u + k / 89u) % 90u);  /* printable */
        pat_bulk[i] = (k % 256u == 255u) ? '\n' : pat_pp[i];
    }
    if (lg_start(&opt, &dst) < 0) usage();
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (!opt.pair_port) wait_ready();

    printf("label=%s mode=%s", opt.label, mode_names[opt.mode]);
    double cpu = 0, secs = 0;
    uint64_t done = 0, bytes = 0;

    if (opt.mode == IDLE) {
        long long rss0, pss0, rss1, pss1;
        measure_tree_mem(opt.pid, &rss0, &pss0);
        double c0 = server_cpu_us();
        uint64_t t0 = measure_now_ns();
        int *fds = malloc(sizeof(int) * (size_t)opt.count);
        char msg[64], back[64];
        int ok = 0, fails = 0, opened = 0;
        struct timeval tv = {2, 0};
        uint64_t deadline = t0 + 60000000000ull;
        for (int i = 0; i < opt.count; i++) fds[i] = -1;
        /* Bounded: stop after 3 connections in a row fail (e.g. the server is
         * out of descriptors and no longer accepts) or after 60 s. */
        for (int i = 0; i < opt.count && fails < 3 && measure_now_ns() < deadline; i++) {
            int before = ok;
            opened = i + 1;
            fds[i] = blocking_connect(i);
            if (fds[i] < 0) { n_conn_fail++; fails++; continue; }
            int fl = fcntl(fds[i], F_GETFL);
            fcntl(fds[i], F_SETFL, fl & ~O_NONBLOCK);
            setsockopt(fds[i], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
            int len = snprintf(msg, sizeof msg, "idle %08d\n", i);
            if (write(fds[i], msg, (size_t)len) != len) { n_errors++; fails++; continue; }
            int got = 0;
            while (got < len) {
                ssize_t r = read(fds[i], back + got, (size_t)(len - got));
                if (r <= 0) break;
                got += (int)r;
            }
            if (got != len) { n_errors++; fails++; continue; }
            if (memcmp(msg, back, (size_t)len)) { n_mismatch++; continue; }
            ok++;
            if (ok > before) fails = 0;
        }
        (void)opened;
        double setup = (double)(measure_now_ns() - t0) / 1e9;
        double cpu_setup = server_cpu_us() - c0;
        usleep((useconds_t)(opt.hold * 1e6));
        measure_tree_mem(opt.pid, &rss1, &pss1);
        /* still open? a poll of each, non-blocking */
        int closed = 0;
        for (int i = 0; i < opt.count; i++) {
            if (fds[i] < 0) continue;
            char b;
            if (recv(fds[i], &b, 1, MSG_DONTWAIT) == 0) closed++;
        }
        printf(" conns=%d ok=%d setup_s=%.3f rss_before=%lld pss_before=%lld rss_after=%lld"
               " pss_after=%lld rss_per_conn=%.1f pss_per_conn=%.1f cpu_us_per_conn=%.2f"
               " closed_by_server=%d conn_fail=%llu errors=%llu mismatches=%llu\n",
               opt.count, ok, setup, rss0, pss0, rss1, pss1,
               ok ? (double)(rss1 - rss0) / ok : 0, ok ? (double)(pss1 - pss0) / ok : 0,
               ok ? cpu_setup / ok : 0, closed, (unsigned long long)n_conn_fail,
               (unsigned long long)n_errors, (unsigned long long)n_mismatch);
        for (int i = 0; i < opt.count; i++)
            if (fds[i] >= 0) close(fds[i]);
        free(fds);
        free(pat_pp);
        free(pat_bulk);
        return (ok == opt.count && !n_mismatch) ? 0 : 1;
    }

    void (*on)(struct conn *, uint32_t, uint64_t) =
        opt.mode == PINGPONG ? on_pingpong : opt.mode == BULK ? on_bulk : on_connrate;
    if (opt.pair_port) {
        int rc = run_paired(on);
        free(lat.v);
        free(pat_pp);
        free(pat_bulk);
        return rc;
    }
    cs = open_conns(1);
    run_window(on, &cpu, &done, &bytes, &secs);
    uint64_t now = measure_now_ns();
    int stalled = opt.mode == CONNRATE ? 0 : count_stalled(now);
    int dead = opt.mode == CONNRATE ? 0 : count_dead();
    latency_sort(&lat);

    if (opt.mode == PINGPONG)
        printf(" conns=%d size=%zu secs=%.3f requests=%llu rps=%.1f p50_us=%.1f p99_us=%.1f"
               " max_us=%.1f cpu_us=%.0f cpu_us_per_req=%.3f",
               opt.conns, opt.size, secs, (unsigned long long)done, (double)done / secs,
               latency_pct_us(&lat, 0.5), latency_pct_us(&lat, 0.99), latency_max_us(&lat), cpu,
               done ? cpu / (double)done : 0);
    else if (opt.mode == BULK)
        printf(" conns=%d size=%zu secs=%.3f bytes=%llu mbps=%.1f cpu_us=%.0f cpu_us_per_mb=%.2f",
               opt.conns, opt.size, secs, (unsigned long long)bytes, (double)bytes / secs / 1e6,
               cpu, bytes ? cpu / ((double)bytes / 1e6) : 0);
    else
        printf(" conns=%d size=%zu secs=%.3f connections=%llu cps=%.1f p50_us=%.1f p99_us=%.1f"
               " max_us=%.1f cpu_us=%.0f cpu_us_per_conn=%.2f conn_fail=%llu",
               opt.conns, opt.size, secs, (unsigned long long)done, (double)done / secs,
               latency_pct_us(&lat, 0.5), latency_pct_us(&lat, 0.99), latency_max_us(&lat), cpu,
               done ? cpu / (double)done : 0, (unsigned long long)n_conn_fail);
    /* other_util: busy CPU of everything else on the host (a proxy's backend
     * included), in CPUs; high values mean the run was disturbed */
    printf(" server_util=%.2f loadgen_util=%.2f backend_util=%.2f other_util=%.2f",
           cpu / secs / 1e6, win_usage.self_us / secs / 1e6, win_usage.backend_us / secs / 1e6,
           measure_other_util(&win_usage, &cpu, 1, secs));
    printf(" stalled=%d dead=%d errors=%llu mismatches=%llu\n", stalled, dead,
           (unsigned long long)n_errors, (unsigned long long)n_mismatch);
    free_conns(cs);
    free(lat.v);
    free(pat_pp);
    free(pat_bulk);
    return (n_mismatch || dead || stalled) ? 1 : 0;
}

/* udp_loadgen: the UDP echo load generator (epoll, one thread, no
 * dependencies).
 *
 *   udp_loadgen [--mode echo] [--conns 16] [--size 64] [--inflight 8] [options]
 *
 * C senders (--conns), each a UDP socket connected to the server, send
 * S-byte datagrams (--size) and keep at most W of them outstanding
 * (--inflight): a datagram counts as echoed when its exact bytes come back
 * to the socket that sent it, and as lost when it has not come back after
 * --timeout-ms (default 500), which frees its place, so loss never stalls a
 * sender. A datagram that comes back after its timeout counts as late; one
 * whose bytes differ from what was sent as a mismatch. Sends and receives go
 * through sendmmsg/recvmmsg, up to 32 per call.
 *
 * Bounded by time (--warmup, then --duration seconds) and by count (at most
 * --count datagrams sent per window, default 50,000,000).
 *
 * The server's CPU over the window comes from the scheduler's clock of its
 * process tree (/proc/PID/task/TID/schedstat, ns), read at the start; with
 * --clock ticks from utime+stime+cutime+cstime of the tree (/proc/PID/stat,
 * 10 ms ticks) instead, which counts reaped children: socat's fork per
 * datagram needs it. --pair-clock is the same for the second server.
 *
 * Paired windows (--pair-port P --pair-pid PID): as bench/loadgen's (see the
 * top of loadgen.c): two servers, each with its own C senders, loaded in turn
 * in windows A B B A ... of --window seconds, --pairs times each after one
 * warm-up window each; at a window's end nothing new is sent and the window
 * closes when every outstanding datagram is back or timed out. The line
 * carries the median of the per-pair ratios A/B of datagrams/s and of server
 * CPU us per datagram, with quartiles (windows.c), and each server's loss.
 *
 * It prints one line of key=value pairs; exit status 1 on a mismatch, a
 * window that did not drain, or a server that echoed nothing. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lgopts.h"
#include "measure.h"
#include "windows.h"

#define BATCH 32
#define HDR 8 /* sender index (2), target (2), sequence number (4) */

static const char *const mode_names[] = {"echo"};

static struct lg_opts opt = {
    .mode = 0, .host = "127.0.0.1", .port = 7, .conns = 16, .size = 64, .duration = 3,
    .warmup = 0.5, .count = 50000000, .inflight = 8, .label = "server", .pair_label = "pair",
    .pairs = 10, .window = 0.5, .modes = mode_names, .nmodes = 1,
};
static double timeout_ms = 500;
static int use_ticks[2];

struct sender {
    int fd;
    uint32_t next_seq;
    int out;            /* datagrams outstanding */
    uint32_t *seq;      /* [inflight]: the datagram in each place (seq % inflight) */
    uint64_t *sent_ns;  /* and when it was sent */
    uint8_t *used;
};

struct target {
    int idx;
    const char *label;
    struct sockaddr_in dst;
    pid_t pid;
    int *pids, npids;
    struct sender *s;
    uint64_t done, lost, late, sent; /* measured windows only */
};

static struct target tg[2];
static struct target *cur;      /* the target whose window runs */
static int epfd, in_window, draining;
static uint64_t w_done, w_lost, w_late, w_sent; /* this window */
static uint64_t n_mismatch, n_errors, n_refused;
static struct latency lat;
static unsigned char *rbuf[BATCH], *sbuf[BATCH];

static void die(const char *what, const char *why) { lg_die("udp_loadgen", &opt, what, why); }

/* Datagram SEQ of sender I of target K: a header, then a pattern of all three. */
static void fill(unsigned char *p, int k, int i, uint32_t seq)
{
    p[0] = (unsigned char)(i >> 8);
    p[1] = (unsigned char)i;
    p[2] = 0;
    p[3] = (unsigned char)k;
    memcpy(p + 4, &seq, 4);
    for (size_t j = HDR; j < opt.size; j++)
        p[j] = (unsigned char)(seq * 31u + (uint32_t)j * 7u + (uint32_t)i);
}

static void open_senders(struct target *t)
{
    t->s = calloc((size_t)opt.conns, sizeof *t->s);
    for (int i = 0; i < opt.conns; i++) {
        struct sender *s = &t->s[i];
        s->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (s->fd < 0 || connect(s->fd, (struct sockaddr *)&t->dst, sizeof t->dst) < 0)
            die("socket", strerror(errno));
        s->seq = calloc(opt.inflight, sizeof *s->seq);
        s->sent_ns = calloc(opt.inflight, sizeof *s->sent_ns);
        s->used = calloc(opt.inflight, 1);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)(t->idx << 16 | i)};
        epoll_ctl(epfd, EPOLL_CTL_ADD, s->fd, &ev);
    }
}

static void close_senders(struct target *t)
{
    for (int i = 0; t->s && i < opt.conns; i++) {
        close(t->s[i].fd);
        free(t->s[i].seq);
        free(t->s[i].sent_ns);
        free(t->s[i].used);
    }
    free(t->s);
    free(t->pids);
}

/* Send as many new datagrams as sender I of T has free places for. */
static void top_up(struct target *t, int i, uint64_t now)
{
    struct sender *s = &t->s[i];
    struct mmsghdr m[BATCH];
    struct iovec iov[BATCH];
    int n = 0;
    while (in_window && !draining && n < BATCH && w_sent + (uint64_t)n < (uint64_t)opt.count) {
        uint32_t seq = s->next_seq + (uint32_t)n;
        if (s->used[seq % opt.inflight])
            break;
        fill(sbuf[n], t->idx, i, seq);
        iov[n] = (struct iovec){sbuf[n], opt.size};
        m[n].msg_hdr = (struct msghdr){.msg_iov = &iov[n], .msg_iovlen = 1};
        s->used[seq % opt.inflight] = 1; /* provisional: undone below if not sent */
        n++;
    }
    if (!n)
        return;
    int r = sendmmsg(s->fd, m, (unsigned)n, 0);
    if (r < 0) {
        if (errno == ECONNREFUSED)
            n_refused++;
        else if (errno != EAGAIN)
            n_errors++;
        r = 0;
    }
    for (int j = 0; j < n; j++) {
        uint32_t seq = s->next_seq + (uint32_t)j;
        if (j < r) {
            s->seq[seq % opt.inflight] = seq;
            s->sent_ns[seq % opt.inflight] = now;
        } else {
            s->used[seq % opt.inflight] = 0;
        }
    }
    s->next_seq += (uint32_t)r;
    s->out += r;
    w_sent += (uint64_t)r;
}

/* Take what sender I of T has received (up to a batch), then top it up. */
static void on_readable(struct target *t, int i)
{
    struct sender *s = &t->s[i];
    struct mmsghdr m[BATCH];
    struct iovec iov[BATCH];
    for (int j = 0; j < BATCH; j++) {
        iov[j] = (struct iovec){rbuf[j], 65536};
        m[j].msg_hdr = (struct msghdr){.msg_iov = &iov[j], .msg_iovlen = 1};
    }
    int n = recvmmsg(s->fd, m, BATCH, MSG_DONTWAIT, NULL);
    if (n < 0) {
        if (errno == ECONNREFUSED)
            n_refused++;
        else if (errno != EAGAIN && errno != EINTR)
            n_errors++;
        return;
    }
    uint64_t now = measure_now_ns();
    for (int j = 0; j < n; j++) {
        const unsigned char *p = rbuf[j];
        uint32_t seq;
        if (m[j].msg_len == HDR && p[0] == 0xff && p[1] == 0xff)
            continue; /* a late echo of wait_ready's probe */
        if (m[j].msg_len != opt.size) {
            n_mismatch++;
            continue;
        }
        memcpy(&seq, p + 4, 4);
        fill(sbuf[0], t->idx, i, seq);
        if (memcmp(p, sbuf[0], opt.size) != 0) {
            n_mismatch++;
            continue;
        }
        uint32_t k = seq % (uint32_t)opt.inflight;
        if (s->used[k] && s->seq[k] == seq) {
            s->used[k] = 0;
            s->out--;
            w_done++;
            latency_add(&lat, now - s->sent_ns[k]);
        } else {
            w_late++;
        }
    }
    top_up(t, i, now);
}

/* Outstanding datagrams of T older than the timeout are lost: free their places. */
static void expire(struct target *t, uint64_t now)
{
    uint64_t limit = (uint64_t)(timeout_ms * 1e6);
    for (int i = 0; i < opt.conns; i++) {
        struct sender *s = &t->s[i];
        if (!s->out)
            continue;
        for (size_t k = 0; k < opt.inflight; k++)
            if (s->used[k] && now - s->sent_ns[k] > limit) {
                s->used[k] = 0;
                s->out--;
                w_lost++;
            }
        top_up(t, i, now);
    }
}

static void poll_events(int ms)
{
    struct epoll_event ev[64];
    if (ms > 10)
        ms = 10; /* timeouts are checked at least every 10 ms */
    int n = epoll_wait(epfd, ev, 64, ms);
    for (int j = 0; j < n; j++) {
        uint32_t u = ev[j].data.u32;
        on_readable(&tg[u >> 16], (int)(u & 0xffff));
    }
    expire(cur, measure_now_ns());
}

static int busy(void)
{
    int b = 0;
    for (int i = 0; i < opt.conns; i++)
        b += cur->s[i].out;
    return b;
}

static void w_start(uint64_t now)
{
    in_window = 1;
    for (int i = 0; i < opt.conns; i++)
        top_up(cur, i, now);
}

static void w_drain(uint64_t now)
{
    (void)now;
    draining = 1;
}

static const struct window_ops ops = {w_start, w_drain, busy, poll_events};

/* One window on target T; its CPU by the clock chosen for it. */
static void window(void *target, double len, struct window_result *r)
{
    static int calls;
    struct target *t = target;
    cur = t;
    w_done = w_lost = w_late = w_sent = 0;
    int k = t->idx;
    double tick0 = use_ticks[k] ? measure_tree_ticks_us(t->pid) : 0;
    windows_timed(&ops, t->pids, t->npids, len, r);
    if (use_ticks[k])
        r->cpu_us = measure_tree_ticks_us(t->pid) - tick0;
    r->done = w_done;
    r->bytes = w_done * opt.size;
    r->tickets = 0;
    in_window = draining = 0;
    /* the first window of each target is a warm-up (windows_paired_run's,
     * or run_single's) */
    if (++calls > (opt.pair_port ? 2 : 1)) {
        t->done += w_done;
        t->lost += w_lost;
        t->late += w_late;
        t->sent += w_sent;
    } else {
        lat.n = 0;
    }
}

/* Until one datagram comes back from T (10 s at most): the server is up. */
static void wait_ready(struct target *t)
{
    struct sender *s = &t->s[0];
    unsigned char probe[HDR] = {0xff, 0xff, 0, 0, 0, 0, 0, 0}, back[65536];
    uint64_t end = measure_now_ns() + 10000000000ull;
    while (measure_now_ns() < end) {
        if (send(s->fd, probe, sizeof probe, 0) < 0 && errno != ECONNREFUSED)
            die("send", strerror(errno));
        for (int tries = 0; tries < 20; tries++) {
            usleep(5000);
            ssize_t r = recv(s->fd, back, sizeof back, MSG_DONTWAIT);
            if (r == (ssize_t)sizeof probe && !memcmp(back, probe, sizeof probe))
                return;
        }
    }
    die(t->label, "no echo of a probe datagram in 10 s");
}

static void init_target(int k, const char *label, const struct sockaddr_in *dst, int port,
                        pid_t pid)
{
    struct target *t = &tg[k];
    t->idx = k;
    t->label = label;
    t->dst = *dst;
    t->dst.sin_port = htons((uint16_t)port);
    t->pid = pid;
    open_senders(t);
    wait_ready(t);
    t->npids = pid ? measure_tree(pid, &t->pids, NULL) : 0;
}

static double loss(const struct target *t)
{
    return t->done + t->lost ? (double)t->lost / (double)(t->done + t->lost) : 0;
}

static void print_tail(void)
{
    printf(" timeout_ms=%.0f errors=%llu refused=%llu mismatches=%llu\n", timeout_ms,
           (unsigned long long)n_errors, (unsigned long long)n_refused,
           (unsigned long long)n_mismatch);
}

static int run_single(void)
{
    struct window_result r;
    struct measure_usage u;
    window(&tg[0], opt.warmup, &r); /* warm-up */
    measure_usage_start(&u, opt.bpid, measure_tree_sched_us);
    window(&tg[0], opt.duration, &r);
    measure_usage_stop(&u);
    latency_sort(&lat);
    const struct target *t = &tg[0];
    printf(" senders=%d size=%zu inflight=%zu secs=%.3f datagrams=%llu dps=%.1f"
           " p50_us=%.1f p99_us=%.1f cpu_us=%.0f cpu_us_per_dgram=%.3f sent=%llu lost=%llu"
           " loss=%.5f late=%llu",
           opt.conns, opt.size, opt.inflight, r.secs, (unsigned long long)t->done,
           (double)t->done / r.secs, latency_pct_us(&lat, 0.5), latency_pct_us(&lat, 0.99),
           r.cpu_us, t->done ? r.cpu_us / (double)t->done : 0, (unsigned long long)t->sent,
           (unsigned long long)t->lost, loss(t), (unsigned long long)t->late);
    printf(" server_util=%.2f loadgen_util=%.2f backend_util=%.2f other_util=%.2f",
           r.cpu_us / r.secs / 1e6, u.self_us / r.secs / 1e6, u.backend_us / r.secs / 1e6,
           measure_other_util(&u, &r.cpu_us, 1, r.secs));
    print_tail();
    return (n_mismatch || !r.drained || !t->done) ? 1 : 0;
}

static int run_paired(void)
{
    struct paired p = {.target = {&tg[0], &tg[1]}, .label = {tg[0].label, tg[1].label},
                       .window = window, .n = opt.pairs, .warmup = opt.warmup,
                       .len = opt.window};
    windows_paired_run(&p, opt.bpid, measure_tree_sched_us);
    static const char *const names[2] = {"dps", "cpu_us_per_dgram"};
    windows_print_paired(&p, opt.conns, opt.size, names, 0);
    printf(" other_util=%.2f", windows_print_util(&p));
    printf(" inflight=%zu", opt.inflight);
    for (int k = 0; k < 2; k++)
        printf(" %s_sent=%llu %s_lost=%llu %s_loss=%.5f %s_late=%llu", k ? "b" : "a",
               (unsigned long long)tg[k].sent, k ? "b" : "a", (unsigned long long)tg[k].lost,
               k ? "b" : "a", loss(&tg[k]), k ? "b" : "a", (unsigned long long)tg[k].late);
    printf(" stalled=%d", p.undrained);
    print_tail();
    int rc = (n_mismatch || p.undrained || !tg[0].done || !tg[1].done) ? 1 : 0;
    windows_paired_free(&p);
    return rc;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: udp_loadgen [--mode echo] [--host IP] [--port N] [--conns SENDERS]\n"
            "  [--size BYTES] [--inflight DATAGRAMS_PER_SENDER] [--timeout-ms MS]\n"
            "  [--duration SEC] [--warmup SEC] [--count MAX_PER_WINDOW] [--pid SERVER_PID]\n"
            "  [--clock sched|ticks] [--label NAME] [--backend-pid PID]\n"
            "  [--pair-port N --pair-pid PID [--pair-label NAME] [--pair-clock sched|ticks]\n"
            "   [--pairs N] [--window SEC]]  paired windows (see the top of udp_loadgen.c)\n");
    exit(2);
}

static int clock_arg(const char *a)
{
    if (!strcmp(a, "ticks"))
        return 1;
    if (strcmp(a, "sched"))
        usage();
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {LG_LONGOPTS,
                                       {"timeout-ms", 1, 0, 1000},
                                       {"clock", 1, 0, 1001},
                                       {"pair-clock", 1, 0, 1002},
                                       {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        if (ch == 1000)
            timeout_ms = atof(optarg);
        else if (ch == 1001)
            use_ticks[0] = clock_arg(optarg);
        else if (ch == 1002)
            use_ticks[1] = clock_arg(optarg);
        else if (lg_opt(&opt, ch, optarg) <= 0)
            usage();
    }
    if (opt.conns < 1 || opt.conns > 1024 || opt.size < HDR || opt.size > 65507 ||
        opt.inflight < 1 || opt.inflight > 4096 || opt.duration <= 0 || opt.duration > 600 ||
        opt.warmup < 0 || opt.warmup > 60 || opt.count < 1 || opt.pairs < 1 ||
        opt.pairs > 10000 || opt.window <= 0 || opt.window > 60 || timeout_ms < 1 ||
        timeout_ms > 10000 || (opt.pair_port && (!opt.pid || !opt.pair_pid)))
        usage();
    struct sockaddr_in dst;
    if (lg_start(&opt, &dst) < 0)
        usage();
    for (int j = 0; j < BATCH; j++) {
        rbuf[j] = malloc(65536);
        sbuf[j] = malloc(opt.size);
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    init_target(0, opt.label, &dst, opt.port, opt.pid);
    if (opt.pair_port)
        init_target(1, opt.pair_label, &dst, opt.pair_port, opt.pair_pid);
    printf("label=%s mode=%s", opt.label, mode_names[opt.mode]);
    int rc = opt.pair_port ? run_paired() : run_single();
    close_senders(&tg[0]);
    if (opt.pair_port)
        close_senders(&tg[1]);
    for (int j = 0; j < BATCH; j++) {
        free(rbuf[j]);
        free(sbuf[j]);
    }
    free(lat.v);
    close(epfd);
    return rc;
}

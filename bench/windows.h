/* windows: the load generators' measurement windows and what they print of
 * them: latency percentiles, the paired A B B A schedule against two servers
 * and its summary (per-pair ratios, their median and quartiles). Knows
 * nothing of sockets or TLS: a window is a callback.
 *
 * The key=value names printed here are read by bench/report.py and bench/tls;
 * keep them as they are. */
#ifndef ECHOKIT_BENCH_WINDOWS_H
#define ECHOKIT_BENCH_WINDOWS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "measure.h"

/* What one window yields: the server's CPU, the window's wall time from start
 * until everything in flight was back, units of work done (requests,
 * connections, handshakes), bytes echoed, session tickets received (TLS),
 * and whether it drained before its deadline. */
struct window_result {
    double cpu_us, secs;
    uint64_t done, bytes, tickets;
    int drained;
};

/* The figure a window yields for metric m: 0 the rate (units/s, or MB/s
 * with per_mb), 1 server CPU us per unit (or per MB). */
double windows_metric(const struct window_result *r, int m, int per_mb);

/* p-quantile of v[0..n) by linear interpolation; sorts v. 0 when n <= 0. */
double windows_quantile(double *v, int n, double p);

/* Latencies in units of 100 ns, capped at UINT32_MAX. */
struct latency {
    uint32_t *v;
    size_t n, cap;
};

void latency_add(struct latency *l, uint64_t ns);
void latency_sort(struct latency *l);
/* After latency_sort: the p-th percentile and the maximum in us (0 if none). */
double latency_pct_us(const struct latency *l, double p);
double latency_max_us(const struct latency *l);

/* What a window needs from its load generator, for the current target. */
struct window_ops {
    void (*start)(uint64_t now);  /* start the work on the target's connections */
    void (*drain)(uint64_t now);  /* from now on start nothing new */
    int (*busy)(void);            /* how many connections have work in flight */
    void (*poll)(int ms);         /* wait up to ms for events and handle them */
};

/* One window: start, handle events for len seconds, then drain once and
 * handle events until nothing is in flight or 5 s more have passed. Fills
 * r->cpu_us (the pids' scheduler clock over that time), r->secs and
 * r->drained; the caller counts done, bytes and tickets. */
void windows_timed(const struct window_ops *ops, const int *pids, int npids, double len,
                   struct window_result *r);

/* Paired windows: targets 0 (A) and 1 (B) get one warm-up window each, then
 * n windows each in the order A B B A A B B A ...; res[k][i] is the i-th
 * measured window of target k. `usage` covers the measured windows only. */
struct paired {
    void *target[2];
    const char *label[2];
    void (*window)(void *target, double len, struct window_result *r);
    int n;
    double warmup, len;
    struct window_result *res[2];
    struct measure_usage usage;
    int undrained;          /* windows that did not drain in time */
};

/* Runs the schedule (fills res, usage, undrained); backend and tree_us as
 * for measure_usage_start. */
void windows_paired_run(struct paired *p, pid_t backend, double (*tree_us)(pid_t));

/* Prints " paired=1 a= b= conns= size= pairs= window_s=" and, for both
 * metrics (names[0] the rate, names[1] CPU per unit), each server's median,
 * the per-pair ratios A/B in time order, their median and quartiles. */
void windows_print_paired(const struct paired *p, int conns, size_t size,
                          const char *const names[2], int per_mb);

/* Prints " a_server_util= b_server_util= loadgen_util= backend_util=";
 * returns other_util (see measure_other_util) for the caller to print. */
double windows_print_util(const struct paired *p);

void windows_paired_free(struct paired *p);

#endif

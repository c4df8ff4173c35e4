/* measure: what the load generators read about the processes they load and
 * about the host, all from /proc. No sockets, no load generation.
 *
 * A "tree" is a root pid and all its descendants (a forking server's
 * children, HAProxy's or nginx's workers), found afresh on each call. */
#ifndef ECHOKIT_BENCH_MEASURE_H
#define ECHOKIT_BENCH_MEASURE_H

#include <stdint.h>
#include <sys/types.h>

/* CLOCK_MONOTONIC in ns. */
uint64_t measure_now_ns(void);

/* The pids of root's tree in a malloc'd *out (when out is not NULL; the
 * caller frees it), and when ticks is not NULL the tree's utime + stime +
 * cutime + cstime in clock ticks. Returns how many. */
int measure_tree(pid_t root, int **out, unsigned long long *ticks);

/* The tree's CPU time in us from /proc/PID/stat: tick resolution, but it
 * includes children the tree has reaped (socat's per-connection ones).
 * 0 when root is 0. */
double measure_tree_ticks_us(pid_t root);

/* CPU time in ns of the given processes (all their threads) from the
 * scheduler's per-task clock (/proc/PID/task/TID/schedstat). */
uint64_t measure_pids_sched_ns(const int *pids, int n);

/* The same over root's tree, in us. 0 when root is 0. */
double measure_tree_sched_us(pid_t root);

/* This process's own CPU time (utime + stime), in us. */
double measure_self_us(void);

/* CPU time every CPU of the host spent busy (not idle or iowait), in us. */
double measure_host_busy_us(void);

/* RSS and PSS in bytes summed over root's tree (/proc/PID/smaps_rollup);
 * both 0 when root is 0. */
void measure_tree_mem(pid_t root, long long *rss, long long *pss);

/* What the load generator itself, the whole host and a backend (a proxy's
 * upstream, pid 0 for none) used between measure_usage_start and
 * measure_usage_stop. tree_us reads the backend's CPU (one of the two tree
 * clocks above). */
struct measure_usage {
    pid_t backend;
    double (*tree_us)(pid_t);
    uint64_t t0;
    double self_us, host_us, backend_us;  /* at start; after stop, the deltas */
    double wall_s;                        /* after stop */
};

void measure_usage_start(struct measure_usage *u, pid_t backend, double (*tree_us)(pid_t));
void measure_usage_stop(struct measure_usage *u);

/* The busy CPU (in CPUs) of everything else on the host over `secs`: the
 * host's less the n servers' (server_us[]), the load generator's and the
 * backend's; never below 0. High values mean the run was disturbed. */
double measure_other_util(const struct measure_usage *u, const double *server_us, int n,
                          double secs);

#endif

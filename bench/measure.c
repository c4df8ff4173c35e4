/* measure: the load generators' view of /proc (see measure.h). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "measure.h"

#include <ctype.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

uint64_t measure_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* A whole small file into buf (NUL-terminated); its length, or -1. */
static int read_file(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, cap - 1);
    close(fd);
    if (n < 0) return -1;
    buf[n] = 0;
    return (int)n;
}

struct pinfo { int pid, ppid; unsigned long long ticks; };

int measure_tree(pid_t root, int **out, unsigned long long *ticks)
{
    struct pinfo *v = NULL;
    size_t n = 0, cap = 0;
    DIR *d = opendir("/proc");
    struct dirent *e;
    char path[300], buf[1024];
    while (d && (e = readdir(d))) {
        if (!isdigit((unsigned char)e->d_name[0])) continue;
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        if (read_file(path, buf, sizeof buf) < 0) continue;
        char *p = strrchr(buf, ')');
        if (!p) continue;
        char st;
        int ppid;
        unsigned long long f[14] = {0};
        /* after ')': state ppid pgrp session tty tpgid flags minflt cminflt
         * majflt cmajflt utime stime cutime cstime */
        if (sscanf(p + 2, "%c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %llu %llu",
                   &st, &ppid, &f[0], &f[1], &f[2], &f[3]) != 6)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 1024;
            v = realloc(v, cap * sizeof *v);
        }
        v[n].pid = atoi(e->d_name);
        v[n].ppid = ppid;
        v[n].ticks = f[0] + f[1] + f[2] + f[3];
        n++;
    }
    if (d) closedir(d);
    int *in = calloc(n + 1, sizeof *in);
    char *mark = calloc(n + 1, 1);
    int m = 0;
    unsigned long long sum = 0;
    for (size_t i = 0; i < n; i++)
        if (v[i].pid == root) { mark[i] = 1; in[m++] = v[i].pid; sum += v[i].ticks; }
    for (int changed = 1; changed;) {  /* fixed point: small trees, cheap */
        changed = 0;
        for (size_t i = 0; i < n; i++) {
            if (mark[i]) continue;
            for (int k = 0; k < m; k++)
                if (v[i].ppid == in[k]) {
                    mark[i] = 1; in[m++] = v[i].pid; sum += v[i].ticks; changed = 1;
                    break;
                }
        }
    }
    free(v);
    free(mark);
    if (ticks) *ticks = sum;
    if (out) *out = in; else free(in);
    return m;
}

double measure_tree_ticks_us(pid_t root)
{
    if (!root) return 0;
    unsigned long long t;
    measure_tree(root, NULL, &t);
    return (double)t * 1e6 / (double)sysconf(_SC_CLK_TCK);
}

uint64_t measure_pids_sched_ns(const int *pids, int n)
{
    uint64_t sum = 0;
    char path[96], buf[128];
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "/proc/%d/task", pids[i]);
        DIR *d = opendir(path);
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (!isdigit((unsigned char)e->d_name[0])) continue;
            snprintf(path, sizeof path, "/proc/%d/task/%.16s/schedstat", pids[i], e->d_name);
            unsigned long long ns;
            if (read_file(path, buf, sizeof buf) > 0 && sscanf(buf, "%llu", &ns) == 1) sum += ns;
        }
        if (d) closedir(d);
    }
    return sum;
}

double measure_tree_sched_us(pid_t root)
{
    if (!root) return 0;
    int *p, n = measure_tree(root, &p, NULL);
    double us = (double)measure_pids_sched_ns(p, n) / 1e3;
    free(p);
    return us;
}

double measure_self_us(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

double measure_host_busy_us(void)
{
    char buf[512];
    unsigned long long v[8] = {0};
    if (read_file("/proc/stat", buf, sizeof buf) < 0) return 0;
    if (sscanf(buf, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
               &v[4], &v[5], &v[6], &v[7]) != 8)
        return 0;
    unsigned long long busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    return (double)busy * 1e6 / (double)sysconf(_SC_CLK_TCK);
}

void measure_tree_mem(pid_t root, long long *rss, long long *pss)
{
    *rss = *pss = 0;
    if (!root) return;
    int *pids;
    int m = measure_tree(root, &pids, NULL);
    static char buf[8192];
    char path[64];
    for (int i = 0; i < m; i++) {
        snprintf(path, sizeof path, "/proc/%d/smaps_rollup", pids[i]);
        if (read_file(path, buf, sizeof buf) < 0) continue;
        char *p;
        long long kb;
        if ((p = strstr(buf, "\nRss:")) && sscanf(p + 5, "%lld", &kb) == 1) *rss += kb * 1024;
        if ((p = strstr(buf, "\nPss:")) && sscanf(p + 5, "%lld", &kb) == 1) *pss += kb * 1024;
    }
    free(pids);
}

void measure_usage_start(struct measure_usage *u, pid_t backend, double (*tree_us)(pid_t))
{
    u->backend = backend;
    u->tree_us = tree_us;
    u->self_us = measure_self_us();
    u->host_us = measure_host_busy_us();
    u->backend_us = tree_us(backend);
    u->t0 = measure_now_ns();
    u->wall_s = 0;
}

void measure_usage_stop(struct measure_usage *u)
{
    u->wall_s = (double)(measure_now_ns() - u->t0) / 1e9;
    u->self_us = measure_self_us() - u->self_us;
    u->host_us = measure_host_busy_us() - u->host_us;
    u->backend_us = u->tree_us(u->backend) - u->backend_us;
}

double measure_other_util(const struct measure_usage *u, const double *server_us, int n,
                          double secs)
{
    double other = u->host_us;
    for (int i = 0; i < n; i++) other -= server_us[i];
    other = (other - u->self_us - u->backend_us) / secs / 1e6;
    return other < 0 ? 0 : other;
}

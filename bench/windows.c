/* windows: measurement windows, latencies and the paired schedule (see
 * windows.h). */
#include "windows.h"

#include <stdio.h>
#include <stdlib.h>

double windows_metric(const struct window_result *r, int m, int per_mb)
{
    double units = per_mb ? (double)r->bytes / 1e6 : (double)r->done;
    if (m == 0) return r->secs > 0 ? units / r->secs : 0;
    return units > 0 ? r->cpu_us / units : 0;
}

static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double windows_quantile(double *v, int n, double p)
{
    if (n <= 0) return 0;
    qsort(v, (size_t)n, sizeof *v, cmp_dbl);
    double x = p * (n - 1);
    int i = (int)x;
    return i + 1 < n ? v[i] + (x - i) * (v[i + 1] - v[i]) : v[n - 1];
}

void latency_add(struct latency *l, uint64_t ns)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 1 << 16;
        l->v = realloc(l->v, l->cap * sizeof *l->v);
    }
    uint64_t u = ns / 100;
    l->v[l->n++] = u > UINT32_MAX ? UINT32_MAX : (uint32_t)u;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

void latency_sort(struct latency *l)
{
    if (l->n) qsort(l->v, l->n, sizeof *l->v, cmp_u32);
}

double latency_pct_us(const struct latency *l, double p)
{
    if (!l->n) return 0;
    return l->v[(size_t)(p * (double)(l->n - 1) + 0.5)] / 10.0;
}

double latency_max_us(const struct latency *l)
{
    return l->n ? l->v[l->n - 1] / 10.0 : 0;
}

void windows_timed(const struct window_ops *ops, const int *pids, int npids, double len,
                   struct window_result *r)
{
    uint64_t c0 = measure_pids_sched_ns(pids, npids);
    uint64_t t0 = measure_now_ns(), end = t0 + (uint64_t)(len * 1e9), limit = end + 5000000000ull;
    int draining = 0;
    ops->start(t0);
    for (;;) {
        uint64_t now = measure_now_ns();
        if (!draining && now >= end) {
            draining = 1;
            ops->drain(now);
        }
        if (draining && (ops->busy() == 0 || now >= limit)) break;
        ops->poll(draining ? 50 : (int)((end - now) / 1000000u) + 1);
    }
    uint64_t t1 = measure_now_ns();
    r->cpu_us = (double)(measure_pids_sched_ns(pids, npids) - c0) / 1e3;
    r->drained = ops->busy() == 0;
    r->secs = (double)(t1 - t0) / 1e9;
}

void windows_paired_run(struct paired *p, pid_t backend, double (*tree_us)(pid_t))
{
    struct window_result r;
    for (int k = 0; k < 2; k++) p->window(p->target[k], p->warmup, &r);  /* warm-up */
    for (int k = 0; k < 2; k++) p->res[k] = calloc((size_t)p->n, sizeof(struct window_result));
    p->undrained = 0;
    measure_usage_start(&p->usage, backend, tree_us);
    for (int j = 0; j < 2 * p->n; j++) {
        int k = (j % 4 == 0 || j % 4 == 3) ? 0 : 1;  /* A B B A */
        struct window_result *w = &p->res[k][j / 2];
        p->window(p->target[k], p->len, w);
        p->undrained += !w->drained;
    }
    measure_usage_stop(&p->usage);
}

void windows_print_paired(const struct paired *p, int conns, size_t size,
                          const char *const names[2], int per_mb)
{
    int n = p->n;
    printf(" paired=1 a=%s b=%s conns=%d size=%zu pairs=%d window_s=%.2f", p->label[0],
           p->label[1], conns, size, n, p->len);
    double *v = malloc(sizeof(double) * (size_t)n);
    for (int m = 0; m < 2; m++) {
        const char *name = names[m];
        for (int k = 0; k < 2; k++) {
            for (int i = 0; i < n; i++) v[i] = windows_metric(&p->res[k][i], m, per_mb);
            printf(" %s_%s=%.3f", k ? "b" : "a", name, windows_quantile(v, n, 0.5));
        }
        printf(" ratios_%s=", name);
        for (int i = 0; i < n; i++) {  /* in time order, before windows_quantile() sorts them */
            double b = windows_metric(&p->res[1][i], m, per_mb);
            v[i] = b > 0 ? windows_metric(&p->res[0][i], m, per_mb) / b : 0;
            printf("%s%.4f", i ? "," : "", v[i]);
        }
        printf(" ratio_%s=%.4f ratio_%s_q1=%.4f ratio_%s_q3=%.4f", name,
               windows_quantile(v, n, 0.5), name, windows_quantile(v, n, 0.25), name,
               windows_quantile(v, n, 0.75));
    }
    free(v);
}

double windows_print_util(const struct paired *p)
{
    double cpu[2] = {0, 0}, secs[2] = {0, 0};
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < p->n; i++) {
            cpu[k] += p->res[k][i].cpu_us;
            secs[k] += p->res[k][i].secs;
        }
    const struct measure_usage *u = &p->usage;
    printf(" a_server_util=%.2f b_server_util=%.2f loadgen_util=%.2f backend_util=%.2f",
           cpu[0] / secs[0] / 1e6, cpu[1] / secs[1] / 1e6, u->self_us / u->wall_s / 1e6,
           u->backend_us / u->wall_s / 1e6);
    return measure_other_util(u, cpu, 2, u->wall_s);
}

void windows_paired_free(struct paired *p)
{
    for (int k = 0; k < 2; k++) {
        free(p->res[k]);
        p->res[k] = NULL;
    }
}

/* --workers: the master that forks the workers, keeps them alive, reloads
 * and stops them. It waits for signals with sigtimedwait (SIGINT, SIGTERM,
 * SIGHUP and SIGCHLD stay blocked in the master): no handler runs, so nothing here needs to be
 * async-signal-safe, and the back-off and kill deadlines are the wait's
 * timeout. */
#include "workers.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

struct slot {
    pid_t pid;      /* 0: none running */
    double started; /* when it was forked */
    double due;     /* pid 0: when to start the next one */
    int fails;      /* deaths at start-up in a row */
};

struct master {
    const struct workers *w;
    struct slot *slots;
    /* A reload's old workers, by index (pid 0: gone): one generation at a
     * time, since a SIGHUP while they run is only remembered (pending). */
    pid_t *old;
    long nold;          /* old workers still running */
    double old_kill_at; /* when those left are killed */
    int reload_pending;
    pid_t self;
    int stopping;
    double kill_at; /* stopping: workers left then are killed */
    int status;
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int stop_signal(int sig)
{
    return sig == SIGINT || sig == SIGTERM;
}

static void master_signals(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGHUP);
    sigaddset(set, SIGCHLD);
}

void workers_prepare(sigset_t *oldmask)
{
    sigset_t set;
    master_signals(&set);
    sigprocmask(SIG_BLOCK, &set, oldmask);
}

/* "killed by signal 9 (SIGKILL)", "exited with status 2". */
static void describe(int st, char *buf, size_t cap)
{
    if (WIFEXITED(st)) {
        snprintf(buf, cap, "exited with status %d", WEXITSTATUS(st));
    } else if (WIFSIGNALED(st)) {
        const char *name = sigabbrev_np(WTERMSIG(st));
        snprintf(buf, cap, "killed by signal %d (SIG%s)%s", WTERMSIG(st), name ? name : "?",
                 WCOREDUMP(st) ? ", core dumped" : "");
    } else {
        snprintf(buf, cap, "ended (wait status %#x)", (unsigned)st);
    }
}

static void begin_stop(struct master *m, int sig)
{
    if (!m->stopping) {
        m->stopping = 1;
        m->kill_at = now() + m->w->grace + WORKERS_KILL_MARGIN;
        if (m->w->stopping)
            m->w->stopping(m->w->data);
    }
    for (long i = 0; i < m->w->n; i++) {
        if (m->slots[i].pid > 0)
            kill(m->slots[i].pid, sig);
        if (m->old[i] > 0)
            kill(m->old[i], sig);
    }
}

/* Forks worker i. Returns 0 in the master (a failed fork is retried after
 * the back-off), WORKERS_CHILD or WORKERS_ORPHAN in the worker. */
static int spawn(struct master *m, long i, int replacing)
{
    struct slot *s = &m->slots[i];
    pid_t p = fork();
    if (p < 0) {
        s->fails++;
        s->due = now() + WORKERS_BACKOFF_MAX;
        log_msg(LOG_ERROR, "fork: %s: worker %ld not started, trying again in %gs",
                strerror(errno), i, WORKERS_BACKOFF_MAX);
        return 0;
    }
    if (p == 0) {
        /* SIGTERM, not SIGKILL: the master's death gives the worker's
         * connections their grace period. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != m->self)
            return WORKERS_ORPHAN;
        return WORKERS_CHILD;
    }
    s->pid = p;
    s->started = now();
    log_msg(replacing ? LOG_INFO : LOG_DEBUG, "worker %ld started (pid %d)", i, (int)p);
    return 0;
}

static int all_failing(const struct master *m)
{
    for (long i = 0; i < m->w->n; i++)
        if (m->slots[i].fails < WORKERS_GIVE_UP)
            return 0;
    return 1;
}

/* A worker ended with wait status st. */
static void ended(struct master *m, long i, int st)
{
    struct slot *s = &m->slots[i];
    pid_t pid = s->pid;
    double lived = now() - s->started;
    char why[80];
    describe(st, why, sizeof why);
    s->pid = 0;
    int clean = WIFEXITED(st) && WEXITSTATUS(st) == 0;
    if (m->stopping) {
        if (!clean) {
            log_msg(LOG_ERROR, "worker %ld (pid %d) %s while stopping", i, (int)pid, why);
            m->status = 1;
        }
        return;
    }
    if (clean) {
        log_msg(LOG_INFO, "worker %ld (pid %d) stopped on its own (echokit.stop()): "
                          "stopping the others", i, (int)pid);
        begin_stop(m, SIGTERM);
        return;
    }
    double delay = 0;
    if (lived < WORKERS_STARTUP_SECONDS) {
        s->fails++;
        delay = fmin(WORKERS_BACKOFF_FIRST * ldexp(1, s->fails - 1), WORKERS_BACKOFF_MAX);
    } else {
        s->fails = 0;
    }
    if (all_failing(m)) {
        log_msg(LOG_ERROR, "worker %ld (pid %d) %s at start-up", i, (int)pid, why);
        log_msg(LOG_ERROR, "every worker died at start-up %d times in a row: giving up "
                           "(the lines above say why)", WORKERS_GIVE_UP);
        m->status = 1;
        begin_stop(m, SIGTERM);
        return;
    }
    s->due = now() + delay;
    if (m->w->replacing)
        m->w->replacing(m->w->data, i);
    if (delay > 0)
        log_msg(LOG_ERROR, "worker %ld (pid %d) %s at start-up (%d in a row): "
                           "starting another in %gs", i, (int)pid, why, s->fails, delay);
    else
        log_msg(LOG_ERROR, "worker %ld (pid %d) %s: starting another", i, (int)pid, why);
}

/* An old worker (of a reload) ended: that was expected, it is not replaced. */
static void old_ended(struct master *m, long i, int st)
{
    pid_t pid = m->old[i];
    m->old[i] = 0;
    m->nold--;
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
        log_msg(LOG_INFO, "reload: old worker %ld (pid %d) finished", i, (int)pid);
    } else {
        char why[80];
        describe(st, why, sizeof why);
        log_msg(LOG_ERROR, "reload: old worker %ld (pid %d) %s", i, (int)pid, why);
    }
}

static void reap(struct master *m)
{
    int st;
    pid_t p;
    while ((p = waitpid(-1, &st, WNOHANG)) > 0)
        for (long i = 0; i < m->w->n; i++) {
            if (m->slots[i].pid == p)
                ended(m, i, st);
            else if (m->old[i] == p)
                old_ended(m, i, st);
        }
}

/* SIGHUP. Returns 0 in the master, WORKERS_CHILD (with *index) in a new
 * worker. The new workers are forked before the old ones are told to stop:
 * both hold the same sockets (the master's copies), so a connection queued
 * meanwhile is taken by one or the other. */
static int reload(struct master *m, long *index)
{
    if (m->stopping)
        return 0;
    if (m->nold) {
        if (!m->reload_pending)
            log_msg(LOG_INFO, "reload: the previous one's old workers are still finishing; "
                              "reloading again once they have");
        m->reload_pending = 1;
        return 0;
    }
    m->reload_pending = 0;
    if (m->w->check && m->w->check(m->w->data) < 0)
        return 0;
    for (long i = 0; i < m->w->n; i++) {
        struct slot *s = &m->slots[i];
        m->old[i] = s->pid;
        m->nold += s->pid > 0;
        *s = (struct slot){0};
        int r = spawn(m, i, 1);
        if (r < 0) {
            *index = i;
            return r;
        }
    }
    m->old_kill_at = now() + m->w->grace + WORKERS_KILL_MARGIN;
    for (long i = 0; i < m->w->n; i++)
        if (m->old[i] > 0)
            kill(m->old[i], SIGTERM);
    return 0;
}

/* Returns the exit status in the master; WORKERS_CHILD (with *index) or
 * WORKERS_ORPHAN in a worker. */
static int supervise(struct master *m, long *index)
{
    sigset_t set;
    master_signals(&set);
    for (int first = 1;; first = 0) {
        reap(m);
        if (m->reload_pending && !m->nold) {
            int r = reload(m, index);
            if (r < 0)
                return r;
        }
        double t = now(), wait = INFINITY;
        for (long i = 0; i < m->w->n && !m->stopping; i++) {
            struct slot *s = &m->slots[i];
            if (s->pid)
                continue;
            if (s->due <= t) {
                int r = spawn(m, i, !first);
                if (r < 0) {
                    *index = i;
                    return r;
                }
            }
            if (!s->pid)
                wait = fmin(wait, s->due - t);
        }
        if (m->nold) {
            if (t >= m->old_kill_at) {
                for (long i = 0; i < m->w->n; i++) {
                    if (m->old[i] <= 0)
                        continue;
                    log_msg(LOG_ERROR, "reload: old worker %ld (pid %d) still running %gs "
                                       "after the grace period: killing it",
                            i, (int)m->old[i], WORKERS_KILL_MARGIN);
                    kill(m->old[i], SIGKILL);
                }
                m->old_kill_at = INFINITY;
            }
            wait = fmin(wait, m->old_kill_at - t);
        }
        long running = m->nold;
        for (long i = 0; i < m->w->n; i++)
            running += m->slots[i].pid > 0;
        if (m->stopping && !running)
            return m->status;
        if (m->stopping) {
            if (t >= m->kill_at) {
                for (long i = 0; i < m->w->n; i++) {
                    if (m->slots[i].pid <= 0)
                        continue;
                    log_msg(LOG_ERROR, "worker %ld (pid %d) still running %gs after the "
                                       "grace period: killing it",
                            i, (int)m->slots[i].pid, WORKERS_KILL_MARGIN);
                    kill(m->slots[i].pid, SIGKILL);
                }
                m->status = 1;
                m->kill_at = INFINITY;
            }
            wait = fmin(wait, m->kill_at - t);
        }
        struct timespec ts, *tp = NULL;
        if (isfinite(wait)) {
            wait = fmax(wait, 0.001);
            ts.tv_sec = (time_t)wait;
            ts.tv_nsec = (long)((wait - (double)ts.tv_sec) * 1e9);
            tp = &ts;
        }
        int sig = sigtimedwait(&set, NULL, tp);
        if (stop_signal(sig))
            begin_stop(m, sig);
        if (sig == SIGHUP) {
            int r = reload(m, index);
            if (r < 0)
                return r;
        }
    }
}

int workers_run(const struct workers *w, long *index)
{
    struct master m = {.w = w, .self = getpid()};
    m.slots = calloc((size_t)w->n, sizeof *m.slots);
    m.old = calloc((size_t)w->n, sizeof *m.old);
    if (!m.slots || !m.old) {
        free(m.slots);
        free(m.old);
        log_msg(LOG_ERROR, "out of memory");
        return 1;
    }
    int r = supervise(&m, index);
    free(m.slots);
    free(m.old);
    return r;
}

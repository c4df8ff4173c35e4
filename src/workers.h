#ifndef ECHOKIT_WORKERS_H
#define ECHOKIT_WORKERS_H
/* --workers N (or --master): the master. It forks N workers, replaces one
 * that dies abnormally, reloads them on SIGHUP and stops them all on
 * SIGINT/SIGTERM. It knows nothing of
 * Lua, sockets or the event loop: the caller does a worker's work when
 * workers_run returns in a child. */
#include <signal.h>

/* A worker that ends within this long of its fork "died at start-up": it is
 * replaced after a back-off (WORKERS_BACKOFF_FIRST, doubling up to
 * WORKERS_BACKOFF_MAX) instead of at once, and when every worker has died at
 * start-up WORKERS_GIVE_UP times in a row the master gives up. */
#define WORKERS_STARTUP_SECONDS 1.0
#define WORKERS_BACKOFF_FIRST 0.1
#define WORKERS_BACKOFF_MAX 1.0
#define WORKERS_GIVE_UP 5
/* How long past --grace a stopping worker may take before it is killed. */
#define WORKERS_KILL_MARGIN 2.0

/* workers_run's answer in a worker. */
#define WORKERS_CHILD (-1)
/* ... and in a worker whose parent died before it asked for
 * PR_SET_PDEATHSIG: it must not serve, and exits (cleanly, so that a memory
 * checker sees its memory freed). */
#define WORKERS_ORPHAN (-2)

struct workers {
    long n;       /* workers, 1 or more */
    double grace; /* --grace: a stopping worker is killed after grace + margin */
    /* Called in the master when the shutdown begins (e.g. to close its
     * copies of the listeners); may be NULL. */
    void (*stopping)(void *data);
    /* SIGHUP: called in the master to check the handler before a reload;
     * returns 0 if it loads (the reload goes on), -1 if not (the running
     * workers stay). It logs either outcome, and keeps no state. */
    int (*check)(void *data);
    /* Called in the master when worker i died and is to be replaced; may be
     * NULL. */
    void (*replacing)(void *data, long i);
    void *data;
};

/* Call before the listeners open, while nothing else handles signals:
 * blocks SIGINT, SIGTERM, SIGHUP and SIGCHLD (the previous mask goes to *oldmask).
 * A signal that arrives before the workers exist stays pending, and is
 * acted on once they do. */
void workers_prepare(sigset_t *oldmask);

/* Forks the workers and supervises them.
 *
 * In a worker it returns WORKERS_CHILD with its index (0 .. n-1; a
 * replacement gets the index of the one it replaces) in *index, with
 * PR_SET_PDEATHSIG set (the master's death sends it SIGTERM); SIGINT,
 * SIGTERM, SIGHUP and SIGCHLD are still blocked: the caller installs its
 * handlers (and ignores SIGHUP: it is the master's), then restores the mask
 * workers_prepare saved. WORKERS_ORPHAN: see above.
 *
 * In the master it returns the exit status once every worker has ended:
 *  - a worker that dies abnormally (a signal, an exit status other than 0)
 *    is logged with its index, pid and cause, and replaced: at once, or
 *    after the start-up back-off; 1 if they all keep dying at start-up;
 *  - SIGINT/SIGTERM are forwarded to every worker (a second one too: it cuts
 *    their grace short), none is replaced any more, and one still running
 *    WORKERS_KILL_MARGIN after the grace period is killed; 0 if every worker
 *    then exited 0, else 1;
 *  - a worker that exits 0 on its own (echokit.stop()) stops them all, as a
 *    SIGTERM would;
 *  - SIGHUP: if w->check passes, a new worker i is forked for every index
 *    (it takes over the same sockets, as a replacement does) and the old
 *    ones get SIGTERM: they close their listeners, finish their connections
 *    within the grace period and exit; their exit is logged, not replaced,
 *    and one still running WORKERS_KILL_MARGIN after the grace period is
 *    killed. While old workers are still finishing, further SIGHUPs are
 *    coalesced into one reload that starts once they are gone. */
int workers_run(const struct workers *w, long *index);

#endif

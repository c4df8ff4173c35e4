#ifndef ECHOKIT_WORKERS_H
#define ECHOKIT_WORKERS_H
/* --workers N: N forked processes sharing the listeners, and the parent that
 * forwards SIGINT/SIGTERM to them and waits for them all. */
#include <ev.h>
#include <signal.h>

/* Call before the listeners open, while nothing else handles signals: blocks
 * SIGINT/SIGTERM (the previous mask goes to *oldmask) and installs handlers
 * that record them for forwarding. A signal that arrives before the workers
 * exist stays pending and is forwarded once they do. */
void workers_prepare(sigset_t *oldmask);

/* Forks n workers. In a worker it returns -1, with PR_SET_PDEATHSIG set (a
 * dead parent sends it SIGTERM) and ev_loop_fork done on loop; SIGINT/SIGTERM
 * are still blocked there: the caller starts its ev_signal watchers, then
 * restores oldmask itself (libev does not unblock them). In the parent it
 * restores oldmask, forwards SIGINT/SIGTERM to every worker, and returns once
 * all have ended: 0 if each exited 0 and all n could be forked, else 1
 * (each failure is logged). A worker whose parent died before it could ask
 * for PR_SET_PDEATHSIG gets -2: it must not serve, and exits (cleanly, so a
 * memory checker sees its memory freed). */
int workers_run(long n, struct ev_loop *loop, const sigset_t *oldmask);

#endif

/* --workers: fork the workers, then supervise them from the parent. */
#include "workers.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"

static volatile sig_atomic_t forward_sig;

static void record_signal(int sig)
{
    forward_sig = sig;
}

void workers_prepare(sigset_t *oldmask)
{
    sigset_t stopsigs;
    sigemptyset(&stopsigs);
    sigaddset(&stopsigs, SIGINT);
    sigaddset(&stopsigs, SIGTERM);
    sigprocmask(SIG_BLOCK, &stopsigs, oldmask);
    struct sigaction sa = {.sa_handler = record_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

/* The parent of N workers (pids[i] 0 for one that was never forked):
 * forwards SIGINT/SIGTERM and waits for them all. */
static int supervise(pid_t *pids, long n)
{
    int status = 0;
    long left = 0;
    for (long i = 0; i < n; i++)
        left += pids[i] > 0;
    while (left) {
        if (forward_sig) {
            for (long i = 0; i < n; i++)
                if (pids[i] > 0)
                    kill(pids[i], forward_sig);
            forward_sig = 0;
        }
        int st;
        pid_t p = waitpid(-1, &st, 0);
        if (p < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        for (long i = 0; i < n; i++) {
            if (pids[i] != p)
                continue;
            pids[i] = 0;
            left--;
            if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
                log_msg(LOG_ERROR, "worker %d ended (%s %d)", (int)p,
                        WIFEXITED(st) ? "exit status" : "signal",
                        WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
                status = 1;
            }
        }
    }
    return status;
}

int workers_run(long n, struct ev_loop *loop, const sigset_t *oldmask)
{
    pid_t *pids = calloc((size_t)n, sizeof *pids);
    pid_t parent = getpid();
    int failed = !pids;
    for (long i = 0; i < n && pids; i++) {
        pid_t p = fork();
        if (p < 0) {
            /* The ones forked serve on; the exit status tells. */
            log_msg(LOG_ERROR, "fork: %s (%ld of %ld workers started)", strerror(errno), i, n);
            failed = 1;
            break;
        }
        if (p == 0) {
            free(pids);
            prctl(PR_SET_PDEATHSIG, SIGTERM);
            if (getppid() != parent)
                return -2;
            ev_loop_fork(loop);
            return -1;
        }
        pids[i] = p;
    }
    sigprocmask(SIG_SETMASK, oldmask, NULL); /* pending ones are forwarded now */
    int status = pids ? supervise(pids, n) : 1;
    free(pids);
    return failed ? 1 : status;
}

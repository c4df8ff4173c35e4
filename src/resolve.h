#ifndef ECHOKIT_RESOLVE_H
#define ECHOKIT_RESOLVE_H
/* Host names resolved off the loop: getaddrinfo() in helper threads, so
 * /etc/hosts, nsswitch and gai.conf apply exactly as for every other program,
 * and the loop never blocks on DNS. Up to RESOLVE_THREADS lookups run at
 * once, so one slow name does not hold up the lookups queued after it.
 * Results come back on the loop thread through an ev_async. No Lua. */
#include <ev.h>
#include <netdb.h>
#include <pthread.h>

#include "net.h"

#define RESOLVE_MAX_ADDRS 4
#define RESOLVE_THREADS 4

struct resolve_req {
    struct resolve_req *next;
    char host[256];
    int port;
    /* Results, valid in done(): err 0 and naddrs >= 1, or a gai error. */
    int err;
    int naddrs;
    struct net_addr addrs[RESOLVE_MAX_ADDRS];
    void (*done)(struct resolve_req *req); /* on the loop thread; frees req */
    void *data;
};

struct resolver {
    struct ev_loop *loop;
    ev_async async;
    pthread_t threads[RESOLVE_THREADS];
    int nthreads; /* started */
    int idle;     /* of those, waiting for work */
    int busy;     /* lookups under way */
    int stopping;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct resolve_req *todo, *todo_tail, *done;
    /* getaddrinfo, or a stand-in (the unit test's slow names) */
    int (*gai)(const char *host, const char *port, const struct addrinfo *hints,
               struct addrinfo **res);
};

void resolve_init(struct resolver *r, struct ev_loop *loop);

/* Queues req (host and port filled in), starting a helper thread if none
 * is idle and fewer than RESOLVE_THREADS run. Returns 0, or -1 if no helper
 * thread runs and none can start (req untouched). */
int resolve_start(struct resolver *r, struct resolve_req *req);

/* Waits for the helper threads to finish their current lookups and stop;
 * each request not yet answered gets done() with err EAI_CANCELED. */
void resolve_shutdown(struct resolver *r);

#endif

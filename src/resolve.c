#include "resolve.h"

#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "util.h"

static void lookup(struct resolver *r, struct resolve_req *req)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_ADDRCONFIG};
    struct addrinfo *res = NULL;
    char port[8];
    snprintf(port, sizeof port, "%d", req->port);
    req->naddrs = 0;
    req->err = r->gai(req->host, port, &hints, &res);
    for (struct addrinfo *ai = res; ai && req->naddrs < RESOLVE_MAX_ADDRS; ai = ai->ai_next) {
        if (ai->ai_addrlen > sizeof req->addrs[0].ss)
            continue;
        memcpy(&req->addrs[req->naddrs].ss, ai->ai_addr, ai->ai_addrlen);
        req->addrs[req->naddrs].len = ai->ai_addrlen;
        req->naddrs++;
    }
    if (res)
        freeaddrinfo(res);
    if (!req->err && !req->naddrs)
        req->err = EAI_NONAME;
}

static void *worker(void *arg)
{
    struct resolver *r = arg;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        r->idle++;
        while (!r->todo && !r->stopping)
            pthread_cond_wait(&r->cv, &r->mu);
        r->idle--;
        if (r->stopping)
            break;
        struct resolve_req *req = r->todo;
        r->todo = req->next;
        if (!r->todo)
            r->todo_tail = NULL;
        r->busy++;
        pthread_mutex_unlock(&r->mu);
        lookup(r, req);
        pthread_mutex_lock(&r->mu);
        r->busy--;
        req->next = r->done;
        r->done = req;
        ev_async_send(r->loop, &r->async);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

static void async_cb(struct ev_loop *loop, ev_async *w, int revents)
{
    struct resolver *r = container_of(w, struct resolver, async);
    pthread_mutex_lock(&r->mu);
    struct resolve_req *list = r->done;
    r->done = NULL;
    int idle = !r->todo && !r->busy;
    pthread_mutex_unlock(&r->mu);
    /* The async watcher keeps the loop alive only while lookups are out. */
    if (idle)
        ev_async_stop(loop, w);
    while (list) {
        struct resolve_req *req = list;
        list = req->next;
        req->done(req);
    }
}

void resolve_init(struct resolver *r, struct ev_loop *loop)
{
    memset(r, 0, sizeof *r);
    r->loop = loop;
    r->gai = getaddrinfo;
    ev_async_init(&r->async, async_cb);
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
}

/* Starts one more helper thread; with r->mu held. Returns 0 or -1. */
static int add_thread(struct resolver *r)
{
    /* Helper threads take no signals (SIGPROF drives the CPU budget of the
     * loop thread; SIGINT/SIGTERM belong to the loop). */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(&r->threads[r->nthreads], NULL, worker, r);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0)
        return -1;
    r->nthreads++;
    return 0;
}

int resolve_start(struct resolver *r, struct resolve_req *req)
{
    /* Before a thread can answer: a send to a stopped async watcher is lost. */
    ev_async_start(r->loop, &r->async);
    pthread_mutex_lock(&r->mu);
    /* Every running thread busy (or queued for): one more, up to the cap. A
     * thread that cannot start is no failure while another runs. */
    int waiting = 0;
    for (struct resolve_req *q = r->todo; q; q = q->next)
        waiting++;
    if (r->idle <= waiting && r->nthreads < RESOLVE_THREADS && add_thread(r) < 0 &&
        r->nthreads == 0) {
        int quiet = !r->todo && !r->busy;
        pthread_mutex_unlock(&r->mu);
        if (quiet)
            ev_async_stop(r->loop, &r->async);
        return -1;
    }
    req->next = NULL;
    if (r->todo_tail)
        r->todo_tail->next = req;
    else
        r->todo = req;
    r->todo_tail = req;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return 0;
}

static void free_list(struct resolve_req *req)
{
    while (req) {
        struct resolve_req *next = req->next;
        req->err = EAI_CANCELED;
        req->done(req);
        req = next;
    }
}

void resolve_shutdown(struct resolver *r)
{
    pthread_mutex_lock(&r->mu);
    r->stopping = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    for (int i = 0; i < r->nthreads; i++)
        pthread_join(r->threads[i], NULL);
    r->nthreads = 0;
    ev_async_stop(r->loop, &r->async);
    /* done() with EAI_CANCELED lets each owner release what it holds. */
    free_list(r->todo);
    free_list(r->done);
    r->todo = r->todo_tail = r->done = NULL;
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
}

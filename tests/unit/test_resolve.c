/* resolve.c: lookups run beside each other, so a slow name does not hold up
 * the ones queued after it. getaddrinfo is replaced by a stand-in: "slow"
 * blocks until the test releases it, any other name answers 127.0.0.1 at
 * once. No network. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "resolve.h"

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int released;

static int fake_gai(const char *host, const char *port, const struct addrinfo *hints,
                    struct addrinfo **res)
{
    (void)hints;
    if (strcmp(host, "slow") == 0) {
        pthread_mutex_lock(&mu);
        while (!released)
            pthread_cond_wait(&cv, &mu);
        pthread_mutex_unlock(&mu);
    }
    struct addrinfo *ai = calloc(1, sizeof *ai + sizeof(struct sockaddr_in));
    struct sockaddr_in *sin = (struct sockaddr_in *)(ai + 1);
    sin->sin_family = AF_INET;
    sin->sin_port = htons((uint16_t)atoi(port));
    sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ai->ai_family = AF_INET;
    ai->ai_socktype = SOCK_STREAM;
    ai->ai_addr = (struct sockaddr *)sin;
    ai->ai_addrlen = sizeof *sin;
    *res = ai;
    return 0;
}

/* The order requests were answered in, by host name's first letter. */
static char order[16];
static int answered;

static void done(struct resolve_req *req)
{
    CHECK(req->err == 0 || req->err == EAI_CANCELED);
    if (answered < (int)sizeof order - 1)
        order[answered++] = req->host[0];
    free(req);
}

static struct resolve_req *req_for(const char *host)
{
    struct resolve_req *req = calloc(1, sizeof *req);
    snprintf(req->host, sizeof req->host, "%s", host);
    req->port = 7000;
    req->done = done;
    return req;
}

static void tick(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop, (void)w, (void)revents;
}

static void run_until(struct ev_loop *loop, int n)
{
    /* Bounded: each turn waits for the async watcher (or 10 ms). */
    for (int i = 0; i < 1000 && answered < n; i++)
        ev_run(loop, EVRUN_ONCE);
}

int main(void)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct resolver r;
    resolve_init(&r, loop);
    r.gai = fake_gai;
    ev_timer keepalive; /* bounds each ev_run(ONCE): 10 s in all */
    ev_timer_init(&keepalive, tick, 0.01, 0.01);
    ev_timer_start(loop, &keepalive);

    CHECK(resolve_start(&r, req_for("slow")) == 0);
    CHECK(resolve_start(&r, req_for("fast1")) == 0);
    CHECK(resolve_start(&r, req_for("fast2")) == 0);
    run_until(loop, 2);
    CHECK_MSG(answered == 2 && order[0] == 'f' && order[1] == 'f',
              "the names after a slow one were answered: %d (%s)", answered, order);
    CHECK(r.nthreads <= RESOLVE_THREADS);

    pthread_mutex_lock(&mu);
    released = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    run_until(loop, 3);
    CHECK_MSG(answered == 3 && order[2] == 's', "the slow one came last: %s", order);

    /* More lookups than threads: all answered, threads capped. */
    for (int i = 0; i < 3 * RESOLVE_THREADS; i++)
        CHECK(resolve_start(&r, req_for("many")) == 0);
    run_until(loop, 3 + 3 * RESOLVE_THREADS);
    CHECK(answered == 3 + 3 * RESOLVE_THREADS);
    CHECK(r.nthreads <= RESOLVE_THREADS);

    ev_timer_stop(loop, &keepalive);
    resolve_shutdown(&r);
    ev_loop_destroy(loop);
    return check_done("resolve");
}

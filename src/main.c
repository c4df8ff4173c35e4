/* echokit: start and stop. The app struct ties the loop, the connections,
 * the listeners and the Lua state together; signals begin the shutdown and
 * the grace period ends it. Options are in options.c, the --workers master
 * in workers.c.
 *
 * With --workers N the process that starts is the master: it loads the
 * handler once to check it (the errors of a bad handler come before any
 * "listening on" line, as without workers), closes that Lua state again,
 * opens the listeners (a socket per worker for TCP, SO_REUSEPORT; unix ones
 * shared) and forks. Each worker then loads the handler into a state of its
 * own and runs the loop; the master runs no callback, holds no Lua state and
 * only waits for signals and for its workers' deaths.
 *
 * SIGHUP to the master reloads: it checks the handler again as at start-up
 * (a Lua state of its own, closed again), and if it loads, forks new workers
 * that take the old ones' sockets over while the old ones finish their
 * connections (workers.c). --workers 1 is one process with no master unless
 * --master is given; that process cannot reload, and says so on SIGHUP.
 *
 * --admin with the master: the master binds the API's socket and maps the
 * shared configuration (adminsync.h) before forking; worker 0 answers the
 * API and publishes each change, the others apply it (admin_begin). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __GLIBC__ /* defined by the headers above */
#include <malloc.h>
#endif
#include <sys/resource.h>
#include <unistd.h>

#include "adminsync.h"
#include "conn.h"
#include "log.h"
#include "metrics.h"
#include "options.h"
#include "script.h"
#include "server.h"
#include "tls.h"
#include "replaycli.h"
#include "tlscert.h"
#include "util.h"
#include "workers.h"

/* The loop's one read buffer. A stream read 256 KiB at a time costs a
 * quarter of the syscalls and handler calls of 64 KiB reads: 18% less CPU
 * per MB in a bulk echo (A/B, medians of 6). Idle connections hold none. */
#define READ_BUFFER (256 * 1024)

struct app {
    struct ev_loop *loop;
    struct conn_ctx ctx;
    struct server srv;
    struct script *S;
    struct tls_server *tls; /* the --tls-* certificates */
    const struct options *o;
    double grace;
    int stopping;
    ev_signal sigint, sigterm, sighup;
    ev_timer grace_timer;
    ev_timer trim_timer;
    struct metrics_page *mpage; /* --metrics: the shared counters */
    int mfd;                    /* its listening socket until served; -1 */
    struct metrics_server *msrv;
    ev_timer heap_timer;        /* the Lua heap gauge */
    /* --admin with --workers: the shared configuration, the API's socket
     * (bound by the master; -1 once worker 0 took it or another closed it),
     * and the other workers' poll of the configuration's counter. */
    struct adminsync *sync;
    int afd;
    ev_timer sync_timer;
    uint64_t sync_seq; /* the configuration applied here */
};

/* ---- timers that do not keep the loop running ---------------------------- */

/* A repeating timer that runs while the loop runs for other reasons (the
 * malloc trim, the heap gauge, the configuration poll), and stops with it. */
static void background_timer_start(struct ev_loop *loop, ev_timer *w,
                                   void (*cb)(struct ev_loop *, ev_timer *, int), double every)
{
    ev_timer_init(w, cb, every, every);
    ev_timer_start(loop, w);
    ev_unref(loop);
}

static void background_timer_stop(struct ev_loop *loop, ev_timer *w)
{
    if (ev_is_active(w)) {
        ev_ref(loop); /* as ev_unref when it started: before the stop */
        ev_timer_stop(loop, w);
    }
}

/* ---- shutdown ----------------------------------------------------------- */

static void maybe_done(struct app *a)
{
    if (a->stopping && a->ctx.stats.open == 0)
        ev_break(a->loop, EVBREAK_ALL);
}

static void on_reaped(struct conn_ctx *ctx, struct conn *c)
{
    struct app *a = container_of(ctx, struct app, ctx);
    server_conn_closed(&a->srv, c);
    maybe_done(a);
}

static void grace_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct app *a = container_of(w, struct app, grace_timer);
    log_msg(LOG_INFO, "grace period over: closing %llu connection(s)",
            (unsigned long long)a->ctx.stats.open);
    conn_abort_all(&a->ctx, "shutdown");
}

static void begin_shutdown(struct app *a)
{
    if (a->stopping) {
        /* A second signal: do not wait for the grace period. */
        conn_abort_all(&a->ctx, "shutdown");
        return;
    }
    a->stopping = 1;
    server_drain_backlog(&a->srv);
    server_stop(&a->srv);
    if (a->o->master) /* the next worker 0 answers scrapes */
        metrics_server_stop_accepting(a->msrv);
    background_timer_stop(a->loop, &a->sync_timer); /* no proxy opens any more */
    llisten_close_all(a->S);
    ev_signal_stop(a->loop, &a->sigint); /* re-armed below for the second signal */
    ev_signal_start(a->loop, &a->sigint);
    if (a->ctx.stats.open) {
        /* the live ones: the UDP listeners' flows ended with them, and wait
         * only for their on_close */
        unsigned long long live = 0;
        for (const struct conn *c = a->ctx.all; c; c = c->next)
            live++;
        log_msg(LOG_INFO, "shutting down: %llu connection(s) open, %gs grace", live, a->grace);
        ev_timer_set(&a->grace_timer, a->grace, 0);
        ev_timer_start(a->loop, &a->grace_timer);
    }
    maybe_done(a);
}

static void signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    begin_shutdown(w->data);
}

/* SIGHUP without a master: a single process has nobody to start its
 * successor and hold the listeners meanwhile. */
static void sighup_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    log_msg(LOG_WARN, "reload: SIGHUP ignored: reloading needs the master "
                      "(start with --master, or --workers 2 or more)");
}

static void script_stop(struct script *S)
{
    begin_shutdown(S->data);
}

static void on_accept(struct server *srv, struct listener *l, int fd, const struct net_addr *peer)
{
    struct app *a = srv->data;
    lconn_accept(a->S, fd, peer, NULL, l->data, (int)(l - srv->ls));
}

static struct conn *on_flow(struct server *srv, struct listener *l, const struct net_addr *peer)
{
    struct app *a = srv->data;
    return lconn_flow(a->S, &l->sock, peer, NULL, (int)(l - srv->ls));
}

static void on_datagram(struct server *srv, struct listener *l, const char *buf, size_t len,
                        const struct net_addr *peer)
{
    struct app *a = srv->data;
    ludp_datagram(a->S, &l->sock, buf, len, peer);
}

/* Every chunk a handler sees is a fresh Lua string of up to 256 KiB; the
 * collector frees them in batches. With glibc's default (dynamic) trim
 * threshold each batch shrank the heap with brk and the next one grew it
 * again, paying page faults and zeroing for memory just given back: a third
 * of a brk call per chunk in a bulk echo. Keep a few MiB of free heap instead. */
static void tune_malloc(void)
{
#ifdef __GLIBC__
    mallopt(M_TRIM_THRESHOLD, 8 << 20);
    mallopt(M_TOP_PAD, 1 << 20);
    /* Setting either of the above freezes glibc's mmap threshold at 128 KiB,
     * which would give every 256 KiB chunk string its own mmap, munmap and
     * page faults. */
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
#endif
}

/* glibc gives back free memory at the top of the heap only (above the trim
 * threshold); what the collector frees below a live block stays counted in
 * the RSS until a malloc_trim. A handler that keeps values of many sizes (the
 * redis mock under a mixed load) then saw its RSS ratchet up in steps, 46 MiB
 * for 8 MiB of live Lua data, 11 MiB after a trim. Trimming every 10 s keeps
 * the RSS near what is in use; it does not keep the loop alive. */
#define TRIM_INTERVAL 10.0

static void trim_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
#ifdef __GLIBC__
    malloc_trim(0);
#endif
}

/* The Lua heap gauge: a store a second, nothing per allocation. */
#define HEAP_INTERVAL 1.0

static void heap_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct app *a = container_of(w, struct app, heap_timer);
    if (a->S)
        metrics_gauge(&metrics_me->lua_heap, (int64_t)a->S->mem_used);
}

/* --metrics in the process that serves it (the single process, or worker
 * 0): the responder on the loop. Other workers close their copy of the
 * socket. */
static void metrics_begin(struct app *a, int serve)
{
    if (!a->mpage)
        return;
    heap_cb(a->loop, &a->heap_timer, 0);
    background_timer_start(a->loop, &a->heap_timer, heap_cb, HEAP_INTERVAL);
    if (serve) {
        a->msrv = metrics_server_start(a->loop, a->mfd, a->mpage);
        if (!a->msrv)
            log_msg(LOG_ERROR, "--metrics: out of memory, not serving");
    }
    if (!a->msrv && a->mfd >= 0)
        close(a->mfd);
    a->mfd = -1;
}

static void metrics_end(struct app *a)
{
    if (!a->mpage)
        return;
    background_timer_stop(a->loop, &a->heap_timer);
    metrics_server_free(a->msrv);
    a->msrv = NULL;
    if (a->mfd >= 0)
        close(a->mfd);
    a->mfd = -1;
    /* A worker that finished (after a reload, say) leaves no gauge behind;
     * its counters stay in the sums. */
    metrics_gauge(&metrics_me->open, 0);
    metrics_gauge(&metrics_me->lua_heap, 0);
    metrics_page_free(a->mpage);
    a->mpage = NULL;
}

/* The master: worker i died and is replaced. Its counters stay in its slot
 * for the replacement to add to; its gauges go. */
static void master_replacing(void *data, long i)
{
    struct app *a = data;
    if (!a->mpage)
        return;
    metrics_worker_gone(a->mpage, (int)i);
    metrics_add(&a->mpage->restarts, 1);
}

/* ---- --admin with --workers ---------------------------------------------- */

/* Applies the published configuration if it changed since the last one
 * applied here. */
static void sync_apply(struct app *a)
{
    if (adminsync_seq(a->sync) == a->sync_seq)
        return;
    size_t len;
    uint64_t seq;
    char *text = adminsync_read(a->sync, &len, &seq);
    if (!text)
        return; /* nothing yet, or being written: the next poll */
    a->sync_seq = seq;
    char err[1024];
    if (llisten_admin_apply(a->S, text, len, err, sizeof err) < 0)
        log_msg(LOG_ERROR, "control API: applying the configuration: %s", err);
    free(text);
}

static void sync_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    sync_apply(container_of(w, struct app, sync_timer));
}

/* In worker index, once its handler is loaded: every worker applies the
 * configuration published so far (a replacement, worker 0's too, starts
 * where its predecessor was); worker 0 then serves the API on the master's
 * socket and publishes each change, the others poll for changes. Returns 0,
 * or 1 if the API cannot be served. */
static int admin_begin(struct app *a, long index)
{
    if (!a->sync)
        return 0;
    sync_apply(a);
    if (index == 0) {
        char name[200], err[1024];
        int fd = a->afd;
        a->afd = -1;
        if (llisten_admin(a->S, a->o->admin, fd, a->sync, name, sizeof name, err,
                          sizeof err) < 0) {
            log_msg(LOG_ERROR, "worker 0: --admin: %s", err);
            close(fd);
            return 1;
        }
        return 0;
    }
    close(a->afd);
    a->afd = -1;
    background_timer_start(a->loop, &a->sync_timer, sync_cb, ADMINSYNC_POLL);
    return 0;
}

static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* Leaving before the loop ran: free the Lua state and the read buffer, so
 * that memcheck (make test-valgrind) sees no leak in an error exit. */
static int early_exit(struct app *a, char *rbuf, int status)
{
    metrics_end(a);
    if (a->afd >= 0)
        close(a->afd);
    a->afd = -1;
    adminsync_free(a->sync);
    a->sync = NULL;
    script_free(a->S);
    a->S = NULL;
    tls_server_free(a->tls);
    tls_cleanup();
    free(rbuf);
    return status;
}

/* --make-ca DIR */
static int make_ca(const char *dir)
{
    const char *cert, *key;
    char err[ECHOKIT_ERR_LEN];
    if (tlscert_make_ca(dir, &cert, &key, err) < 0) {
        fprintf(stderr, "echokit: --make-ca: %s\n", err);
        return 1;
    }
    printf("wrote %s (the CA certificate) and %s (its key, keep it private)\n"
           "\n"
           "Use them with the debugging proxy:\n"
           "  echokit -H debug -- upstream=tls://HOST:PORT tls=mitm ca_cert=%s ca_key=%s\n"
           "\n"
           "and make the client trust the CA, one of:\n"
           "  curl --cacert %s ...\n"
           "  openssl s_client -CAfile %s ...\n"
           "  SSL_CERT_FILE=%s (OpenSSL-based clients), NODE_EXTRA_CA_CERTS=%s (Node.js)\n"
           "  system-wide on Debian: cp %s /usr/local/share/ca-certificates/echokit-ca.crt &&\n"
           "    update-ca-certificates (remove it when done)\n",
           cert, key, cert, key, cert, cert, cert, cert, cert);
    return 0;
}

/* The --tls-* options as one configuration, if any are given or a tls://
 * listener needs one. Returns -1 after printing the error. */
static int tls_setup(struct app *a, const struct options *o)
{
    int needed = o->ntls_cert || o->tls_self_signed;
    for (int i = 0; i < o->nlisten; i++) {
        const char *spec = o->listen[i];
        needed |= tls_scheme(&spec);
    }
    if (!needed) {
        if (o->tls_alpn || o->tls_client_ca)
            fprintf(stderr, "echokit: warning: --tls-alpn/--tls-client-ca without a tls:// "
                            "listener or --tls-cert have no effect\n");
        return 0;
    }
    struct tls_server_opts t = {0};
    for (int i = 0; i < o->ntls_cert; i++) {
        t.cert[i] = o->tls_cert[i];
        t.key[i] = o->tls_key[i];
    }
    t.ncerts = o->ntls_cert;
    t.self_signed = o->tls_self_signed;
    t.alpn = o->tls_alpn;
    t.client_ca = o->tls_client_ca;
    char err[ECHOKIT_ERR_LEN];
    a->tls = tls_server_new(&t, err);
    if (!a->tls) {
        fprintf(stderr, "echokit: %s\n", err);
        return -1;
    }
    return 0;
}

/* A Lua state with the handler loaded, in a->S. Returns 0, or the exit
 * status (1: no state; 2: the handler does not load) with the message in
 * err. */
static int load_handler(struct app *a, const struct options *o, char *err, size_t cap)
{
    a->S = script_new(&a->ctx, o->budget, o->lua_memory);
    if (!a->S) {
        snprintf(err, cap, "cannot create the Lua state");
        return 1;
    }
    a->S->data = a;
    a->S->on_stop = script_stop;
    a->S->tls = a->tls;
    /* echokit.listen: each worker its own socket (and a reload's new
     * worker its own beside the old one's) */
    a->S->reuseport = o->master;
    return script_load(a->S, o->handler, o->hargv, o->hargc, err, cap) < 0 ? 2 : 0;
}

/* The master's shutdown begins: its copies of the listeners close, so that
 * once the workers have closed theirs the kernel refuses new clients. */
static void master_stopping(void *data)
{
    struct app *a = data;
    server_stop(&a->srv);
    if (a->afd >= 0)
        close(a->afd);
    a->afd = -1;
}

/* SIGHUP in the master: the handler (and its modules) loaded afresh in a
 * Lua state that is closed again, as --check does. Returns 0 if it loads. */
static int master_check(void *data)
{
    struct app *a = data;
    char err[1024];
    int status = load_handler(a, a->o, err, sizeof err);
    script_free(a->S);
    a->S = NULL;
    if (status) {
        log_msg(LOG_ERROR, "reload: %s; keeping the running workers", err);
        return -1;
    }
    log_msg(LOG_INFO, "reload: handler %s loaded; starting %ld new worker%s", a->o->handler,
            a->o->workers, a->o->workers == 1 ? "" : "s");
    if (a->mpage) /* before the new workers fork: they take the other bank */
        metrics_add(&a->mpage->reloads, 1);
    return 0;
}

/* --workers N: runs the master, which returns in each worker. Returns -1 in
 * a worker that is to serve, with its listeners chosen and its handler
 * loaded; otherwise the exit status. */
static int run_workers(struct app *a, const struct options *o, const sigset_t *oldmask)
{
    struct workers w = {
        .n = o->workers, .grace = o->grace, .stopping = master_stopping,
        .check = master_check, .replacing = master_replacing, .data = a,
    };
    long index = 0;
    int r = workers_run(&w, &index);
    if (r >= 0 || r == WORKERS_ORPHAN) {
        server_stop(&a->srv);
        if (r >= 0) /* the master; an orphaned worker leaves the files */
            server_unlink_unix(&a->srv);
        return r >= 0 ? r : 0;
    }
    server_keep_copy(&a->srv, (int)index);
    if (a->mpage)
        metrics_use_slot(a->mpage, (int)index);
    ev_loop_fork(a->loop);
    char err[1024];
    int status = load_handler(a, o, err, sizeof err);
    if (status) {
        log_msg(LOG_ERROR, "worker %ld: %s", index, err);
        server_stop(&a->srv);
        return status;
    }
    if (admin_begin(a, index)) {
        server_stop(&a->srv);
        return 1;
    }
    /* The loop takes SIGINT/SIGTERM over. libev installs its handlers but
     * leaves the signal mask alone: they are unblocked here, after the
     * handlers are in place (one that came meanwhile is taken now). SIGHUP
     * is the master's: a worker ignores one sent to the process group. */
    ev_signal_start(a->loop, &a->sigint);
    ev_signal_start(a->loop, &a->sigterm);
    signal(SIGHUP, SIG_IGN);
    sigprocmask(SIG_SETMASK, oldmask, NULL);
    metrics_begin(a, index == 0); /* worker 0 serves --metrics, in C */
    return -1;
}

int main(int argc, char **argv)
{
    /* `echokit replay ...` is a client tool with its own arguments. */
    if (argc > 1 && !strcmp(argv[1], "replay"))
        return replaycli_main(argc - 2, argv + 2);
    struct options o;
    options_parse(argc, argv, &o);
    log_setup(o.level, o.json);
    if (o.make_ca)
        return make_ca(o.make_ca);
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();
    tune_malloc();

    static struct app a;
    a.loop = ev_default_loop(EVFLAG_AUTO);
    if (!a.loop) {
        fprintf(stderr, "echokit: cannot start the event loop (bad $LIBEV_FLAGS?)\n");
        return 1;
    }
    a.o = &o;
    a.grace = o.grace;
    a.mfd = -1;
    a.afd = -1;
    ev_init(&a.sync_timer, sync_cb);
    char *rbuf = malloc(READ_BUFFER);
    if (!rbuf) {
        fprintf(stderr, "echokit: out of memory\n");
        return 1;
    }
    conn_ctx_init(&a.ctx, a.loop, rbuf, READ_BUFFER);
    a.ctx.high_water = o.high_water;
    a.ctx.low_water = o.high_water / 4;
    a.ctx.max_buffer = o.max_buffer;
    a.ctx.idle_timeout = o.idle_timeout;
    a.ctx.connect_timeout = o.connect_timeout;
    a.ctx.handshake_timeout = o.handshake_timeout;
    a.ctx.splice = !o.no_splice;
    a.ctx.udp_idle_timeout = o.udp_idle_timeout;
    a.ctx.max_flows = o.max_flows;
    a.ctx.on_reaped = on_reaped;

    if (tls_setup(&a, &o) < 0)
        return early_exit(&a, rbuf, 2);
    char err[1024];
    int status = load_handler(&a, &o, err, sizeof err);
    if (status) {
        fprintf(stderr, "echokit: %s\n", err);
        return early_exit(&a, rbuf, status);
    }
    if (o.check) {
        printf("%s: ok\n", o.handler);
        return early_exit(&a, rbuf, 0);
    }
    if (o.master) {
        /* Checked; each worker loads its own. */
        script_free(a.S);
        a.S = NULL;
    }

    server_init(&a.srv, &a.ctx);
    a.srv.data = &a;
    a.srv.on_accept = on_accept;
    a.srv.on_flow = on_flow;
    a.srv.max_conns = o.max_conns;
    a.srv.max_conns_per_ip = o.max_conns_per_ip;
    a.srv.reuseport = o.master;
    /* A malformed address is a usage error (2); one that cannot be bound is
     * not (1). */
    for (int i = 0; i < o.nlisten; i++) {
        struct net_addr probe;
        char perr[ECHOKIT_ERR_LEN];
        const char *spec = o.listen[i];
        if (!tls_scheme(&spec) && !strncmp(spec, "udp://", 6))
            spec += 6;
        if (net_parse_addr(spec, 1, &probe, perr) < 0) {
            fprintf(stderr, "echokit: --listen %s (see echokit --help)\n", perr);
            return early_exit(&a, rbuf, 2);
        }
    }
    if (o.metrics) {
        struct net_addr probe;
        char perr[ECHOKIT_ERR_LEN];
        if (net_parse_addr(o.metrics, 1, &probe, perr) < 0) {
            fprintf(stderr, "echokit: --metrics %s (see echokit --help)\n", perr);
            return early_exit(&a, rbuf, 2);
        }
    }
    if (o.admin) {
        struct net_addr probe;
        char perr[ECHOKIT_ERR_LEN];
        if (net_parse_addr(o.admin, 1, &probe, perr) < 0) {
            fprintf(stderr, "echokit: --admin %s (see echokit --help)\n", perr);
            return early_exit(&a, rbuf, 2);
        }
    }

    /* SIGINT/SIGTERM are handled from before the first "listening on" line:
     * a supervisor may signal as soon as it has read it. With workers the
     * master keeps them blocked and waits for them (workers.c); the workers'
     * loops take them over. */
    sigset_t oldmask;
    sigemptyset(&oldmask);
    ev_signal_init(&a.sigint, signal_cb, SIGINT);
    ev_signal_init(&a.sigterm, signal_cb, SIGTERM);
    ev_signal_init(&a.sighup, sighup_cb, SIGHUP);
    a.sigint.data = a.sigterm.data = &a;
    ev_init(&a.grace_timer, grace_cb);
    if (o.master) {
        workers_prepare(&oldmask);
    } else {
        ev_signal_start(a.loop, &a.sigint);
        ev_signal_start(a.loop, &a.sigterm);
        ev_signal_start(a.loop, &a.sighup);
    }

    if (o.admin && !o.master) {
        char name[200], aerr[1024];
        if (llisten_admin(a.S, o.admin, -1, NULL, name, sizeof name, aerr, sizeof aerr) < 0) {
            fprintf(stderr, "echokit: --admin: %s\n", aerr);
            return early_exit(&a, rbuf, 1);
        }
        printf("admin listening on %s\n", name);
    } else if (o.admin) {
        /* Bound here and kept by the master, as --metrics: a restarted
         * worker 0 serves the same socket. The configuration is shared
         * through a region mapped before the fork (adminsync.h). */
        char name[200], aerr[1024];
        a.sync = adminsync_new();
        if (!a.sync) {
            fprintf(stderr, "echokit: --admin: cannot map the shared configuration\n");
            return early_exit(&a, rbuf, 1);
        }
        a.afd = metrics_listen(o.admin, name, sizeof name, aerr, sizeof aerr);
        if (a.afd < 0) {
            fprintf(stderr, "echokit: --admin: cannot listen on %s\n", aerr);
            return early_exit(&a, rbuf, 1);
        }
        printf("admin listening on %s\n", name);
    }
    if (o.metrics) {
        /* Mapped and bound before the fork: every worker shares the page,
         * and the socket outlives a restart of the worker serving it. */
        /* two banks of worker slots: a reload's new workers count in the
         * other bank while the old ones finish (metrics_use_slot) */
        a.mpage = metrics_page_new(2 * (o.workers > 1 ? (int)o.workers : 1));
        if (!a.mpage) {
            fprintf(stderr, "echokit: --metrics: cannot map the counters\n");
            return early_exit(&a, rbuf, 1);
        }
        snprintf(a.mpage->version, sizeof a.mpage->version, "%s", ECHOKIT_VERSION);
        snprintf(a.mpage->lua, sizeof a.mpage->lua, "%s", script_lua_release());
        snprintf(a.mpage->openssl, sizeof a.mpage->openssl, "%s", tls_library_version());
        metrics_use_slot(a.mpage, 0);
        char name[200], merr[1024];
        a.mfd = metrics_listen(o.metrics, name, sizeof name, merr, sizeof merr);
        if (a.mfd < 0) {
            fprintf(stderr, "echokit: --metrics: cannot listen on %s\n", merr);
            return early_exit(&a, rbuf, 1);
        }
        printf("metrics listening on %s\n", name);
    }
    for (int i = 0; i < o.nlisten; i++) {
        char lerr[ECHOKIT_ERR_LEN];
        const char *spec = o.listen[i];
        int tls = tls_scheme(&spec);
        if (server_listen(&a.srv, spec, lerr) < 0) {
            fprintf(stderr, "echokit: cannot listen on %s\n", lerr);
            server_stop(&a.srv);
            return early_exit(&a, rbuf, 1);
        }
        a.srv.ls[i].data = tls ? a.tls : NULL;
        if (a.mpage) {
            /* a UDP listener's label says so: it may share a port with a TCP one */
            char *label = a.mpage->listener[i];
            size_t cap = sizeof a.mpage->listener[i];
            snprintf(label, cap, "%s", a.srv.ls[i].udp ? "udp://" : "");
            server_listener_name(&a.srv, i, label + strlen(label), cap - strlen(label));
            a.mpage->nlisteners = i + 1;
        }
    }
    if (server_copy_listeners(&a.srv, (int)o.workers, err) < 0) {
        fprintf(stderr, "echokit: cannot listen: %s\n", err);
        server_stop(&a.srv);
        return early_exit(&a, rbuf, 1);
    }
    for (int i = 0; i < o.nlisten; i++) {
        char name[200];
        printf("listening on %s%s\n",
               a.srv.ls[i].data ? "tls://" : a.srv.ls[i].udp ? "udp://" : "",
               server_listener_name(&a.srv, i, name, sizeof name));
    }
    fflush(stdout);

    if (o.master) {
        status = run_workers(&a, &o, &oldmask);
        if (status >= 0)
            return early_exit(&a, rbuf, status);
    }

    if (o.workers <= 1)
        metrics_begin(&a, 1);
    /* a handler with on_datagram takes UDP listeners' datagrams raw */
    if (lconn_wants_datagrams(a.S))
        a.srv.on_datagram = on_datagram;
    server_start(&a.srv);
    background_timer_start(a.loop, &a.trim_timer, trim_cb, TRIM_INTERVAL);
    ev_run(a.loop, 0);

    int worker = o.master;
    server_stop(&a.srv);
    if (!worker)
        server_unlink_unix(&a.srv);
    ev_timer_stop(a.loop, &a.grace_timer);
    background_timer_stop(a.loop, &a.trim_timer);
    /* Shutdown is done: a late signal must not turn exit 0 into a kill.
     * ev_signal_stop restores the default action (death), so the signals are
     * blocked across it, then ignored, which discards any that came. */
    sigset_t stopsigs;
    sigemptyset(&stopsigs);
    sigaddset(&stopsigs, SIGINT);
    sigaddset(&stopsigs, SIGTERM);
    sigaddset(&stopsigs, SIGHUP);
    sigprocmask(SIG_BLOCK, &stopsigs, NULL);
    ev_signal_stop(a.loop, &a.sigint);
    ev_signal_stop(a.loop, &a.sigterm);
    ev_signal_stop(a.loop, &a.sighup);
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    conn_ctx_release(&a.ctx);
    metrics_end(&a);
    adminsync_free(a.sync);
    script_free(a.S);
    tls_server_free(a.tls);
    tls_cleanup();
    ev_loop_destroy(a.loop);
    free(rbuf);
    log_msg(LOG_DEBUG, "stopped");
    return 0;
}

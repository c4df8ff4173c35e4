/* echokit: argv, signals, start and stop. */
#include <errno.h>
#include <getopt.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conn.h"
#include "log.h"
#include "script.h"
#include "server.h"
#include "util.h"

/* The loop's one read buffer. A stream read 256 KiB at a time costs a
 * quarter of the syscalls and handler calls of 64 KiB reads: 18% less CPU
 * per MB in a bulk echo (A/B, medians of 6). Idle connections hold none. */
#define READ_BUFFER (256 * 1024)

struct options {
    const char *listen[SERVER_MAX_LISTENERS];
    int nlisten;
    const char *handler;
    const char *admin; /* control API address, NULL = none */
    long workers;
    int check;
    int no_splice;
    enum log_level level;
    int json;
    double idle_timeout, connect_timeout, grace, budget;
    size_t high_water, max_buffer, lua_memory, max_conns;
    char **hargv;
    int hargc;
};

struct app {
    struct ev_loop *loop;
    struct conn_ctx ctx;
    struct server srv;
    struct script *S;
    double grace;
    int stopping;
    ev_signal sigint, sigterm;
    ev_timer grace_timer;
};

/* The built-in names, wrapped into help-text lines indented to the option
 * descriptions' column. */
static void builtin_lines(char *out, size_t cap)
{
    char names[1024];
    script_builtin_names(names, sizeof names);
    size_t pos = 0, col = 0;
    out[0] = '\0';
    for (char *w = strtok(names, " "); w && pos < cap; w = strtok(NULL, " ")) {
        size_t n = strlen(w);
        if (col && col + 1 + n > 79) {
            pos += (size_t)snprintf(out + pos, cap - pos, "\n");
            col = 0;
        }
        if (pos < cap)
            pos += (size_t)snprintf(out + pos, cap - pos, col ? " %s" : "%26s%s", col ? w : "",
                                    col ? "" : w);
        col = col ? col + 1 + n : 26 + n;
    }
    if (pos < cap)
        snprintf(out + pos, cap - pos, "\n");
}

static void usage(FILE *f)
{
    char names[1200];
    builtin_lines(names, sizeof names);
    fprintf(f,
"Usage: echokit [options] [-H NAME|FILE] [-- key=value ...]\n"
"\n"
"A scriptable TCP echo server and proxy: a libev loop owns the sockets and calls\n"
"a Lua 5.4 handler per connection.\n"
"\n"
"Options:\n"
"  -l, --listen ADDR       where to listen; repeatable. HOST:PORT, [V6]:PORT,\n"
"                          unix:/path, or PORT (on 127.0.0.1). Port 0 picks a free\n"
"                          port. Default 127.0.0.1:7000\n"
"  -H, --handler NAME|FILE a handler file (./mine.lua) or a built-in name, one of\n"
"%s"
"                          Default echo\n"
"  -w, --workers N|auto    worker processes sharing the listeners; auto = one per\n"
"                          core. Default 1\n"
"      --check             load the handler, report errors, exit (0 = ok)\n"
"      --admin ADDR        serve the control API (toxiproxy's HTTP API: proxies\n"
"                          and toxics created and changed at run time) on ADDR;\n"
"                          a bare PORT means 127.0.0.1:PORT. Needs --workers 1.\n"
"                          Without --listen, only the control API listens\n"
"  -v, --verbose           log debug lines too (connection open/close)\n"
"  -q, --quiet             log warnings and errors only\n"
"      --log-format FMT    text or json (one object a line). Default text\n"
"\n"
"Limits (SECONDS may be fractional; BYTES take k, m, g suffixes):\n"
"      --idle-timeout SECONDS  close connections idle this long with reason\n"
"                              \"timeout\". Default none (0)\n"
"      --connect-timeout SECONDS  give up an outbound connect (echokit.connect)\n"
"                          after this long, reason \"timeout\". 0 = none. Default 10\n"
"      --grace SECONDS     on SIGINT/SIGTERM, time open connections get to finish\n"
"                          before they are closed. Default 5\n"
"      --high-water BYTES  conn:write returns false once this much output is\n"
"                          queued; on_drain fires at a quarter of it. Default 256k\n"
"      --max-buffer BYTES  hard cap on one connection's queued output (and unread\n"
"                          serve input); past it the connection is closed with an\n"
"                          error. Default 64m\n"
"      --max-conns N       stop accepting while N connections are open. Default\n"
"                          0 (only the open-files limit, which echokit raises to\n"
"                          its hard limit)\n"
"      --cpu-budget SECONDS  CPU time one callback may take before it is stopped\n"
"                          with an error (its connection closes). 0 = none.\n"
"                          Default 1\n"
"      --no-splice         relay conn:pipe traffic by copying through user space\n"
"                          instead of splice(2) (for comparison and debugging)\n"
"      --lua-memory BYTES  cap on the Lua heap; allocations past it fail with\n"
"                          \"not enough memory\" in the callback. 0 = none.\n"
"                          Default 1g\n"
"\n"
"  -h, --help              this text\n"
"      --version           print the version\n"
"\n"
"Arguments after -- reach the handler as a table: key=value gives t.key = \"value\"\n"
"(strings), a bare word is appended as t[1], t[2], ...\n"
"\n"
"Environment: ECHOKIT_LUA_POOL=0 turns off the reuse of freed small Lua blocks, so\n"
"a memory checker (valgrind) sees every free.\n"
"\n"
"Exit status: 0 after a clean shutdown, 1 if a listener cannot be opened, 2 for a\n"
"usage or handler-load error.\n",
            names);
}

static void die_usage(const char *fmt, const char *arg)
{
    fprintf(stderr, "echokit: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, " (see echokit --help)\n");
    exit(2);
}

enum {
    OPT_CHECK = 256, OPT_LOGFMT, OPT_IDLE, OPT_GRACE, OPT_HIGH, OPT_MAXBUF, OPT_MAXCONNS,
    OPT_BUDGET, OPT_LUAMEM, OPT_VERSION, OPT_CONNTO, OPT_NOSPLICE, OPT_ADMIN,
};

static double parse_seconds(const char *opt, const char *v)
{
    double d;
    if (util_parse_seconds(v, &d) < 0) {
        fprintf(stderr, "echokit: %s: '%s' is not a number of seconds\n", opt, v);
        exit(2);
    }
    return d;
}

static size_t parse_size(const char *opt, const char *v)
{
    size_t s;
    if (util_parse_size(v, &s) < 0) {
        fprintf(stderr, "echokit: %s: '%s' is not a byte count (e.g. 65536, 64k, 16m)\n", opt, v);
        exit(2);
    }
    return s;
}

static void parse_options(int argc, char **argv, struct options *o)
{
    static const struct option longs[] = {
        {"listen", required_argument, NULL, 'l'},
        {"handler", required_argument, NULL, 'H'},
        {"workers", required_argument, NULL, 'w'},
        {"check", no_argument, NULL, OPT_CHECK},
        {"admin", required_argument, NULL, OPT_ADMIN},
        {"verbose", no_argument, NULL, 'v'},
        {"quiet", no_argument, NULL, 'q'},
        {"log-format", required_argument, NULL, OPT_LOGFMT},
        {"idle-timeout", required_argument, NULL, OPT_IDLE},
        {"grace", required_argument, NULL, OPT_GRACE},
        {"connect-timeout", required_argument, NULL, OPT_CONNTO},
        {"no-splice", no_argument, NULL, OPT_NOSPLICE},
        {"high-water", required_argument, NULL, OPT_HIGH},
        {"max-buffer", required_argument, NULL, OPT_MAXBUF},
        {"max-conns", required_argument, NULL, OPT_MAXCONNS},
        {"cpu-budget", required_argument, NULL, OPT_BUDGET},
        {"lua-memory", required_argument, NULL, OPT_LUAMEM},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, OPT_VERSION},
        {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof *o);
    o->handler = "echo";
    o->workers = 1;
    o->level = LOG_INFO;
    o->grace = 5;
    o->connect_timeout = 10;
    o->budget = 1;
    o->high_water = 256 * 1024;
    o->max_buffer = 64u * 1024 * 1024;
    o->lua_memory = 1024u * 1024 * 1024;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":l:H:w:vqh", longs, NULL)) != -1) {
        switch (c) {
        case 'l':
            if (o->nlisten == SERVER_MAX_LISTENERS)
                die_usage("at most 16 --listen addresses%s", "");
            o->listen[o->nlisten++] = optarg;
            break;
        case 'H':
            o->handler = optarg;
            break;
        case 'w':
            if (!strcmp(optarg, "auto")) {
                o->workers = sysconf(_SC_NPROCESSORS_ONLN);
            } else {
                char *end;
                o->workers = strtol(optarg, &end, 10);
                if (*end || o->workers < 1 || o->workers > 256)
                    die_usage("--workers: '%s' is not 1..256 or auto", optarg);
            }
            break;
        case OPT_CHECK: o->check = 1; break;
        case OPT_ADMIN: o->admin = optarg; break;
        case OPT_NOSPLICE: o->no_splice = 1; break;
        case 'v': o->level = LOG_DEBUG; break;
        case 'q': o->level = LOG_WARN; break;
        case OPT_LOGFMT:
            if (!strcmp(optarg, "json"))
                o->json = 1;
            else if (strcmp(optarg, "text"))
                die_usage("--log-format: '%s' is not text or json", optarg);
            break;
        case OPT_IDLE: o->idle_timeout = parse_seconds("--idle-timeout", optarg); break;
        case OPT_GRACE: o->grace = parse_seconds("--grace", optarg); break;
        case OPT_CONNTO: o->connect_timeout = parse_seconds("--connect-timeout", optarg); break;
        case OPT_BUDGET: o->budget = parse_seconds("--cpu-budget", optarg); break;
        case OPT_HIGH:
            o->high_water = parse_size("--high-water", optarg);
            if (o->high_water < 4)
                die_usage("--high-water: '%s' is too small", optarg);
            break;
        case OPT_MAXBUF: o->max_buffer = parse_size("--max-buffer", optarg); break;
        case OPT_LUAMEM: o->lua_memory = parse_size("--lua-memory", optarg); break;
        case OPT_MAXCONNS: {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || v < 0 || !*optarg)
                die_usage("--max-conns: '%s' is not a count", optarg);
            o->max_conns = (size_t)v;
            break;
        }
        case 'h':
            usage(stdout);
            exit(0);
        case OPT_VERSION:
            printf("echokit %s (%s, libev %d.%d)\n", ECHOKIT_VERSION, LUA_RELEASE,
                   ev_version_major(), ev_version_minor());
            exit(0);
        case ':':
            die_usage("option '%s' needs a value", argv[optind - 1]);
            break;
        default:
            die_usage("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc && strcmp(argv[optind - 1], "--") != 0)
        die_usage("unexpected argument '%s' (handler arguments go after --)", argv[optind]);
    o->hargv = argv + optind;
    o->hargc = argc - optind;
    if (o->max_buffer < o->high_water)
        die_usage("--max-buffer must be at least --high-water%s", "");
    /* Each worker would hold its own proxies: the API could not answer for
     * them all. */
    if (o->admin && o->workers > 1)
        die_usage("--admin needs --workers 1 (the control API lives in one process)%s", "");
    /* With --admin alone echokit is a fault-injection server like
     * toxiproxy-server: only the control API listens. */
    if (!o->nlisten && !o->admin)
        o->listen[o->nlisten++] = "127.0.0.1:7000";
}

/* ---- shutdown ----------------------------------------------------------- */

static void maybe_done(struct app *a)
{
    if (a->stopping && a->ctx.stats.open == 0)
        ev_break(a->loop, EVBREAK_ALL);
}

static void on_reaped(struct conn_ctx *ctx)
{
    struct app *a = container_of(ctx, struct app, ctx);
    server_conn_closed(&a->srv);
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
    llisten_close_all(a->S);
    ev_signal_stop(a->loop, &a->sigint); /* re-armed below for the second signal */
    ev_signal_start(a->loop, &a->sigint);
    if (a->ctx.stats.open) {
        log_msg(LOG_INFO, "shutting down: %llu connection(s) open, %gs grace",
                (unsigned long long)a->ctx.stats.open, a->grace);
        ev_timer_set(&a->grace_timer, a->grace, 0);
        ev_timer_start(a->loop, &a->grace_timer);
    }
    maybe_done(a);
}

static void signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    begin_shutdown(w->data);
}

static void script_stop(struct script *S)
{
    begin_shutdown(S->data);
}

static void on_accept(struct server *srv, int fd, const struct net_addr *peer)
{
    struct app *a = srv->data;
    lconn_accept(a->S, fd, peer, NULL);
}

/* ---- workers -------------------------------------------------------------- */

static volatile sig_atomic_t forward_sig;

static void record_signal(int sig)
{
    forward_sig = sig;
}

/* The parent of N workers: forwards SIGINT/SIGTERM and waits for them all. */
static int supervise(pid_t *pids, long n)
{
    int status = 0;
    long left = n;
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
    script_free(a->S);
    free(rbuf);
    return status;
}

int main(int argc, char **argv)
{
    struct options o;
    parse_options(argc, argv, &o);
    log_setup(o.level, o.json);
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();
    tune_malloc();

    static struct app a;
    a.loop = ev_default_loop(EVFLAG_AUTO);
    if (!a.loop) {
        fprintf(stderr, "echokit: cannot start the event loop (bad $LIBEV_FLAGS?)\n");
        return 1;
    }
    a.grace = o.grace;
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
    a.ctx.splice = !o.no_splice;
    a.ctx.on_reaped = on_reaped;

    a.S = script_new(&a.ctx, o.budget, o.lua_memory);
    if (!a.S) {
        fprintf(stderr, "echokit: cannot create the Lua state\n");
        return 1;
    }
    a.S->data = &a;
    a.S->on_stop = script_stop;
    char err[1024];
    if (script_load(a.S, o.handler, o.hargv, o.hargc, err, sizeof err) < 0) {
        fprintf(stderr, "echokit: %s\n", err);
        return early_exit(&a, rbuf, 2);
    }
    if (o.check) {
        printf("%s: ok\n", o.handler);
        script_free(a.S);
        free(rbuf);
        return 0;
    }

    server_init(&a.srv, &a.ctx);
    a.srv.data = &a;
    a.srv.on_accept = on_accept;
    a.srv.max_conns = o.max_conns;
    /* A malformed address is a usage error (2); one that cannot be bound is
     * not (1). */
    for (int i = 0; i < o.nlisten; i++) {
        struct net_addr probe;
        char perr[ECHOKIT_ERR_LEN];
        if (net_parse_addr(o.listen[i], 1, &probe, perr) < 0) {
            fprintf(stderr, "echokit: --listen %s (see echokit --help)\n", perr);
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
     * a supervisor may signal as soon as it has read it. Workers inherit them
     * blocked and their loop takes them over. */
    sigset_t stopsigs, oldmask;
    sigemptyset(&stopsigs);
    sigaddset(&stopsigs, SIGINT);
    sigaddset(&stopsigs, SIGTERM);
    ev_signal_init(&a.sigint, signal_cb, SIGINT);
    ev_signal_init(&a.sigterm, signal_cb, SIGTERM);
    a.sigint.data = a.sigterm.data = &a;
    ev_init(&a.grace_timer, grace_cb);
    if (o.workers > 1) {
        sigprocmask(SIG_BLOCK, &stopsigs, &oldmask);
        struct sigaction sa = {.sa_handler = record_signal};
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
    } else {
        ev_signal_start(a.loop, &a.sigint);
        ev_signal_start(a.loop, &a.sigterm);
    }

    if (o.admin) {
        char name[200], aerr[1024];
        if (llisten_admin(a.S, o.admin, name, sizeof name, aerr, sizeof aerr) < 0) {
            fprintf(stderr, "echokit: --admin: %s\n", aerr);
            return early_exit(&a, rbuf, 1);
        }
        printf("admin listening on %s\n", name);
    }
    for (int i = 0; i < o.nlisten; i++) {
        char lerr[ECHOKIT_ERR_LEN];
        if (server_listen(&a.srv, o.listen[i], lerr) < 0) {
            fprintf(stderr, "echokit: cannot listen on %s\n", lerr);
            server_stop(&a.srv);
            return early_exit(&a, rbuf, 1);
        }
        char name[200];
        printf("listening on %s\n", server_listener_name(&a.srv, i, name, sizeof name));
    }
    fflush(stdout);

    if (o.workers > 1) {
        pid_t *pids = calloc((size_t)o.workers, sizeof *pids);
        pid_t parent = getpid();
        for (long i = 0; i < o.workers && pids; i++) {
            pid_t p = fork();
            if (p < 0) {
                log_msg(LOG_ERROR, "fork: %s", strerror(errno));
                break;
            }
            if (p == 0) {
                free(pids);
                pids = NULL;
                prctl(PR_SET_PDEATHSIG, SIGTERM);
                if (getppid() != parent)
                    _exit(0);
                ev_loop_fork(a.loop);
                ev_signal_start(a.loop, &a.sigint);
                ev_signal_start(a.loop, &a.sigterm);
                /* The parent blocked them around the fork: a worker that kept
                 * them blocked would never hear SIGTERM. */
                sigprocmask(SIG_SETMASK, &oldmask, NULL);
                goto run;
            }
            pids[i] = p;
        }
        sigprocmask(SIG_SETMASK, &oldmask, NULL); /* pending ones are forwarded now */
        int status = pids ? supervise(pids, o.workers) : 1;
        free(pids);
        server_stop(&a.srv);
        server_unlink_unix(&a.srv);
        script_free(a.S);
        free(rbuf);
        return status;
    }

run:
    server_start(&a.srv);
    ev_run(a.loop, 0);

    int worker = o.workers > 1;
    server_stop(&a.srv);
    if (!worker)
        server_unlink_unix(&a.srv);
    ev_timer_stop(a.loop, &a.grace_timer);
    ev_signal_stop(a.loop, &a.sigint);
    ev_signal_stop(a.loop, &a.sigterm);
    /* Shutdown is done: a late signal must not turn exit 0 into a kill. */
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    script_free(a.S);
    ev_loop_destroy(a.loop);
    free(rbuf);
    log_msg(LOG_DEBUG, "stopped");
    return 0;
}

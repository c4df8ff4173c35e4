/* echokit's command line: the options struct, the --help text, parsing. */
#include "options.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ev.h>
#include <lua.h> /* LUA_RELEASE for --version */

#include "script.h"
#include "util.h"

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
"       echokit replay --client FILE --to HOST:PORT [...]   (see echokit replay --help)\n"
"\n"
"A scriptable TCP and UDP echo server and proxy: a libev loop owns the sockets\n"
"and calls a Lua 5.4 handler per connection (or UDP flow).\n"
"\n"
"Options:\n"
"  -l, --listen ADDR       where to listen; repeatable. HOST:PORT, [V6]:PORT,\n"
"                          unix:/path, or PORT (on 127.0.0.1). Port 0 picks a free\n"
"                          port. tls://ADDR serves TLS (see TLS below);\n"
"                          udp://HOST:PORT (or udp://[V6]:PORT) takes UDP\n"
"                          datagrams: one flow per peer address (see UDP below).\n"
"                          Default 127.0.0.1:7000, or udp://127.0.0.1:7000 when\n"
"                          the handler's arguments say upstream=udp://...\n"
"  -H, --handler NAME|FILE a handler file (./mine.lua) or a built-in name, one of\n"
"%s"
"                          Default echo\n"
"  -w, --workers N|auto    worker processes, 1..256; auto = one per online CPU.\n"
"                          With 2 or more, a master starts them, replaces one\n"
"                          that dies and stops them all on SIGINT/SIGTERM; each\n"
"                          has its own Lua state, limits (--max-conns, CPU\n"
"                          budget, --lua-memory: per worker) and TCP sockets\n"
"                          (SO_REUSEPORT). Default 1 (no master)\n"
"      --master            run the master even with --workers 1, so that SIGHUP\n"
"                          can reload (implied by --workers 2 or more)\n"
"      --check             load the handler, report errors, exit (0 = ok)\n"
"      --admin ADDR        serve the control API (toxiproxy's HTTP API: proxies\n"
"                          and toxics created and changed at run time) on ADDR;\n"
"                          a bare PORT means 127.0.0.1:PORT. With workers,\n"
"                          worker 0 answers it and the others apply each change\n"
"                          within ~0.1 s (their own SO_REUSEPORT listener per\n"
"                          proxy; toxics reach their open connections too).\n"
"                          Without --listen, only the control API listens\n"
"      --metrics ADDR      serve GET /metrics (Prometheus text format) on ADDR,\n"
"                          from C: the counters of every worker, summed; a\n"
"                          scrape runs no Lua. A bare PORT means 127.0.0.1:PORT\n"
"  -v, --verbose           log debug lines too (connection open/close)\n"
"  -q, --quiet             log warnings and errors only\n"
"      --log-format FMT    text or json (one object a line). Default text\n"
"\n"
"Limits (SECONDS may be fractional; BYTES take k, m, g suffixes):\n"
"      --idle-timeout SECONDS  close connections idle this long with reason\n"
"                              \"timeout\". Default none (0)\n"
"      --connect-timeout SECONDS  give up an outbound connect (echokit.connect)\n"
"                          after this long, reason \"timeout\". 0 = none. Default 10\n"
"      --grace SECONDS     on SIGINT/SIGTERM (and for a reload's old workers), time\n"
"                          open connections get to finish before they are\n"
"                          closed. Default 5\n"
"      --high-water BYTES  conn:write returns false once this much output is\n"
"                          queued; on_drain fires at a quarter of it. Default 256k\n"
"      --max-buffer BYTES  hard cap on one connection's queued output (and unread\n"
"                          serve input); past it the connection is closed with an\n"
"                          error. Default 64m\n"
"      --max-conns N       stop accepting while N connections are open (per\n"
"                          worker with --workers; UDP flows are not counted:\n"
"                          see --max-flows). Default 0 (only the open-files\n"
"                          limit, which echokit raises to its hard limit)\n"
"      --max-conns-per-ip N  close a new connection at once when its client\n"
"                          address has N open already: per IPv4 address, per\n"
"                          IPv6 address (not per prefix); unix peers are not\n"
"                          counted. Counted per process: with --workers, per\n"
"                          worker. Default 0 (none)\n"
"      --cpu-budget SECONDS  CPU time one callback may take before it is stopped\n"
"                          with an error (its connection closes). 0 = none.\n"
"                          Default 1\n"
"      --no-splice         relay conn:pipe traffic by copying through user space\n"
"                          instead of splice(2) (for comparison and debugging)\n"
"      --lua-memory BYTES  cap on the Lua heap; allocations past it fail with\n"
"                          \"not enough memory\" in the callback. 0 = none.\n"
"                          Default 1g\n"
"\n"
"UDP (udp:// listeners, echokit.connect(\"udp://HOST:PORT\")):\n"
"      --udp-idle-timeout SECONDS  close a flow with no datagram either way for\n"
"                          this long, reason \"timeout\". 0 = none: then flows\n"
"                          end only when closed, and a sweep of source ports\n"
"                          fills --max-flows for good. Default 60\n"
"      --max-flows N       at most N flows of UDP listeners open (per worker);\n"
"                          datagrams from new peers past it are dropped, counted\n"
"                          and logged at most once a second. 0 = no limit.\n"
"                          Default 10000\n"
"\n"
"TLS (tls:// listeners, and conn:starttls without certificates of its own):\n"
"      --tls-cert FILE     PEM certificate (then its chain); repeatable: the one\n"
"                          whose names match the client's SNI is served, the first\n"
"                          by default. Each needs its --tls-key, in the same order\n"
"      --tls-key FILE      PEM private key of the --tls-cert before it\n"
"      --tls-self-signed   no certificate: make one in memory for localhost,\n"
"                          127.0.0.1 and ::1 (its SHA-256 fingerprint is logged)\n"
"      --tls-alpn LIST     ALPN protocols offered, comma-separated (h2,http/1.1)\n"
"      --tls-client-ca FILE  request client certificates and verify them with the\n"
"                          CA certificates in FILE\n"
"      --handshake-timeout SECONDS  close a TLS handshake not done in this long.\n"
"                          0 = none. Default 10\n"
"      --make-ca DIR       write a new CA (echokit-ca.pem, echokit-ca-key.pem) into\n"
"                          DIR for the debugging proxy's tls=mitm, and exit\n"
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
"Reload (needs the master: --workers 2 or more, or --master): SIGHUP to the\n"
"master loads the handler file and its modules again in a throwaway Lua state;\n"
"if that fails, the error (file:line) is logged and the running workers stay.\n"
"Otherwise new workers start with it and take the listening sockets over (no\n"
"connection refused or lost), and the old ones stop accepting, finish their\n"
"connections within --grace and exit. Nothing in Lua memory carries over (the\n"
"redis mock's data, a chat room). SIGHUPs during a reload make one more reload\n"
"once it is done. Without a master, SIGHUP is logged and ignored.\n"
"\n"
"Exit status: 0 after a clean shutdown, 1 if a listener cannot be opened (or,\n"
"with --workers, if every worker keeps dying at start-up), 2 for a usage or\n"
"handler-load error.\n",
            names);
}

/* Whether the handler's arguments name a UDP upstream (upstream=udp://...):
 * a proxy of datagrams then listens for datagrams by default. */
static int udp_upstream(const struct options *o)
{
    for (int i = 0; i < o->hargc; i++)
        if (strncmp(o->hargv[i], "upstream=udp://", 15) == 0)
            return 1;
    return 0;
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
    OPT_BUDGET, OPT_LUAMEM, OPT_VERSION, OPT_CONNTO, OPT_NOSPLICE, OPT_ADMIN, OPT_METRICS, OPT_PERIP,
    OPT_TLSCERT, OPT_TLSKEY, OPT_TLSSELF, OPT_TLSALPN, OPT_TLSCLIENTCA, OPT_HSTO, OPT_MAKECA,
    OPT_MASTER, OPT_UDPIDLE, OPT_MAXFLOWS,
};

/* A count >= 0 for --name, or a usage error. */
static size_t parse_count(const char *opt, const char *v)
{
    char *end;
    long n = strtol(v, &end, 10);
    if (*end || n < 0 || !*v) {
        fprintf(stderr, "echokit: %s: '%s' is not a count (see echokit --help)\n", opt, v);
        exit(2);
    }
    return (size_t)n;
}

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

void options_parse(int argc, char **argv, struct options *o)
{
    static const struct option longs[] = {
        {"listen", required_argument, NULL, 'l'},
        {"handler", required_argument, NULL, 'H'},
        {"workers", required_argument, NULL, 'w'},
        {"check", no_argument, NULL, OPT_CHECK},
        {"master", no_argument, NULL, OPT_MASTER},
        {"admin", required_argument, NULL, OPT_ADMIN},
        {"metrics", required_argument, NULL, OPT_METRICS},
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
        {"max-conns-per-ip", required_argument, NULL, OPT_PERIP},
        {"udp-idle-timeout", required_argument, NULL, OPT_UDPIDLE},
        {"max-flows", required_argument, NULL, OPT_MAXFLOWS},
        {"cpu-budget", required_argument, NULL, OPT_BUDGET},
        {"lua-memory", required_argument, NULL, OPT_LUAMEM},
        {"tls-cert", required_argument, NULL, OPT_TLSCERT},
        {"tls-key", required_argument, NULL, OPT_TLSKEY},
        {"tls-self-signed", no_argument, NULL, OPT_TLSSELF},
        {"tls-alpn", required_argument, NULL, OPT_TLSALPN},
        {"tls-client-ca", required_argument, NULL, OPT_TLSCLIENTCA},
        {"handshake-timeout", required_argument, NULL, OPT_HSTO},
        {"make-ca", required_argument, NULL, OPT_MAKECA},
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
    o->handshake_timeout = 10;
    o->budget = 1;
    o->high_water = 256 * 1024;
    o->max_buffer = 64u * 1024 * 1024;
    o->lua_memory = 1024u * 1024 * 1024;
    o->udp_idle_timeout = 60;
    o->max_flows = 10000;
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
                if (o->workers < 1)
                    o->workers = 1;
                if (o->workers > 256)
                    o->workers = 256;
            } else {
                char *end;
                o->workers = strtol(optarg, &end, 10);
                if (*end || o->workers < 1 || o->workers > 256)
                    die_usage("--workers: '%s' is not 1..256 or auto", optarg);
            }
            break;
        case OPT_CHECK: o->check = 1; break;
        case OPT_MASTER: o->master = 1; break;
        case OPT_ADMIN: o->admin = optarg; break;
        case OPT_METRICS: o->metrics = optarg; break;
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
        case OPT_MAXCONNS: o->max_conns = parse_count("--max-conns", optarg); break;
        case OPT_PERIP: o->max_conns_per_ip = parse_count("--max-conns-per-ip", optarg); break;
        case OPT_UDPIDLE: o->udp_idle_timeout = parse_seconds("--udp-idle-timeout", optarg); break;
        case OPT_MAXFLOWS: o->max_flows = parse_count("--max-flows", optarg); break;
        case OPT_TLSCERT:
            if (o->ntls_cert == TLS_MAX_CERTS)
                die_usage("at most 16 --tls-cert files%s", "");
            o->tls_cert[o->ntls_cert++] = optarg;
            break;
        case OPT_TLSKEY:
            if (o->ntls_key == TLS_MAX_CERTS)
                die_usage("at most 16 --tls-key files%s", "");
            o->tls_key[o->ntls_key++] = optarg;
            break;
        case OPT_TLSSELF: o->tls_self_signed = 1; break;
        case OPT_TLSALPN: o->tls_alpn = optarg; break;
        case OPT_TLSCLIENTCA: o->tls_client_ca = optarg; break;
        case OPT_HSTO: o->handshake_timeout = parse_seconds("--handshake-timeout", optarg); break;
        case OPT_MAKECA: o->make_ca = optarg; break;
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
    if (o->ntls_cert != o->ntls_key)
        die_usage("give one --tls-key per --tls-cert, in the same order%s", "");
    if (o->ntls_cert && o->tls_self_signed)
        die_usage("--tls-self-signed replaces --tls-cert: give one or the other%s", "");
    if (o->max_buffer < o->high_water)
        die_usage("--max-buffer must be at least --high-water%s", "");
    if (o->workers > 1)
        o->master = 1;
    /* With --admin alone echokit is a fault-injection server like
     * toxiproxy-server: only the control API listens. */
    if (!o->nlisten && !o->admin)
        o->listen[o->nlisten++] = udp_upstream(o) ? "udp://127.0.0.1:7000" : "127.0.0.1:7000";
}

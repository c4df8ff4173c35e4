/* lgopts: the command line both load generators share (bench/loadgen and
 * bench/tls_loadgen): the options, their parsing, the start-up every run
 * needs, and the one error line. Each generator keeps its own defaults,
 * limits and usage text. */
#ifndef ECHOKIT_BENCH_LGOPTS_H
#define ECHOKIT_BENCH_LGOPTS_H

#include <getopt.h>
#include <netinet/in.h>
#include <stddef.h>
#include <sys/types.h>

struct lg_opts {
    int mode;               /* an index into modes */
    const char *host;
    int port;
    int conns;
    size_t size;
    double duration, warmup, hold;
    pid_t pid, bpid;        /* the server; --backend-pid, a proxy's upstream */
    int sources;
    int count;
    size_t inflight;
    const char *label;
    int pair_port;          /* paired windows: the second server */
    pid_t pair_pid;
    const char *pair_label;
    int pairs;
    double window;
    const char *const *modes;  /* --mode's names, as printed in mode= */
    int nmodes;
};

/* The getopt_long entries of the shared options, to open a generator's table. */
#define LG_LONGOPTS                                                                  \
    {"mode", 1, 0, 'm'},     {"host", 1, 0, 'h'},    {"port", 1, 0, 'p'},            \
    {"conns", 1, 0, 'c'},    {"size", 1, 0, 's'},    {"duration", 1, 0, 'd'},        \
    {"warmup", 1, 0, 'w'},   {"pid", 1, 0, 'P'},     {"sources", 1, 0, 'S'},         \
    {"count", 1, 0, 'n'},    {"hold", 1, 0, 'H'},    {"inflight", 1, 0, 'i'},        \
    {"label", 1, 0, 'L'},    {"backend-pid", 1, 0, 'B'}, {"pair-port", 1, 0, 'q'},   \
    {"pair-pid", 1, 0, 'Q'}, {"pair-label", 1, 0, 'l'}, {"pairs", 1, 0, 'N'},        \
    {"window", 1, 0, 'W'}

/* Takes getopt_long's answer ch with its argument: 1 if it was a shared
 * option, 0 if it is the generator's own (or unknown), -1 if --mode names
 * no mode. */
int lg_opt(struct lg_opts *o, int ch, const char *arg);

/* What every run does before it connects: SIGPIPE ignored, the descriptor
 * limit raised to its hard limit, *dst set from --host and --port. -1 (and
 * nothing in *dst) when --host is no IPv4 address. */
int lg_start(const struct lg_opts *o, struct sockaddr_in *dst);

/* The run cannot go on: "PROG: WHAT: WHY" on stderr, and a result line
 * "label= mode= error=" on stdout for the scripts; exits 1. */
_Noreturn void lg_die(const char *prog, const struct lg_opts *o, const char *what,
                      const char *why);

#endif

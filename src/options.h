#ifndef ECHOKIT_OPTIONS_H
#define ECHOKIT_OPTIONS_H
/* The command line: what each option sets, its default, the --help text. */
#include <stddef.h>

#include "log.h"
#include "server.h"
#include "tls.h"

struct options {
    const char *listen[SERVER_MAX_LISTENERS];
    int nlisten;
    const char *handler;
    const char *admin; /* control API address, NULL = none */
    const char *metrics; /* --metrics address, NULL = none */
    long workers;
    int master; /* a master process: --master, or --workers 2 or more */
    int check;
    int no_splice;
    enum log_level level;
    int json;
    double idle_timeout, connect_timeout, grace, budget;
    size_t high_water, max_buffer, lua_memory, max_conns, max_conns_per_ip;
    /* TLS listeners (tls://) and conn:starttls's default certificates */
    const char *tls_cert[TLS_MAX_CERTS], *tls_key[TLS_MAX_CERTS];
    int ntls_cert, ntls_key;
    int tls_self_signed;
    const char *tls_alpn, *tls_client_ca;
    double handshake_timeout;
    double udp_idle_timeout; /* --udp-idle-timeout */
    size_t max_flows;        /* --max-flows */
    const char *make_ca; /* --make-ca DIR: write a CA and exit */
    char **hargv; /* handler arguments (after --) */
    int hargc;
};

/* Fills o from argv with the defaults for what is not given. Prints the help
 * or the version and exits 0 for --help and --version; a usage error exits 2
 * with a one-line message on stderr. */
void options_parse(int argc, char **argv, struct options *o);

#endif

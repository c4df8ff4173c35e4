/* lgopts: the load generators' shared command line (see lgopts.h). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "lgopts.h"

#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

int lg_opt(struct lg_opts *o, int ch, const char *arg)
{
    switch (ch) {
    case 'm':
        for (int i = 0; i < o->nmodes; i++)
            if (!strcmp(arg, o->modes[i])) { o->mode = i; return 1; }
        return -1;
    case 'h': o->host = arg; break;
    case 'p': o->port = atoi(arg); break;
    case 'c': o->conns = atoi(arg); break;
    case 's': o->size = strtoul(arg, NULL, 10); break;
    case 'd': o->duration = atof(arg); break;
    case 'w': o->warmup = atof(arg); break;
    case 'P': o->pid = atoi(arg); break;
    case 'S': o->sources = atoi(arg); break;
    case 'n': o->count = atoi(arg); break;
    case 'H': o->hold = atof(arg); break;
    case 'i': o->inflight = strtoul(arg, NULL, 10); break;
    case 'L': o->label = arg; break;
    case 'B': o->bpid = atoi(arg); break;
    case 'q': o->pair_port = atoi(arg); break;
    case 'Q': o->pair_pid = atoi(arg); break;
    case 'l': o->pair_label = arg; break;
    case 'N': o->pairs = atoi(arg); break;
    case 'W': o->window = atof(arg); break;
    default: return 0;
    }
    return 1;
}

int lg_start(const struct lg_opts *o, struct sockaddr_in *dst)
{
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)o->port);
    if (inet_pton(AF_INET, o->host, &a.sin_addr) != 1) return -1;
    *dst = a;
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) { rl.rlim_cur = rl.rlim_max; setrlimit(RLIMIT_NOFILE, &rl); }
    return 0;
}

void lg_die(const char *prog, const struct lg_opts *o, const char *what, const char *why)
{
    fprintf(stderr, "%s: %s: %s\n", prog, what, why);
    printf("label=%s mode=%s error=\"%s: %s\"\n", o->label, o->modes[o->mode], what, why);
    fflush(stdout);
    exit(1);
}

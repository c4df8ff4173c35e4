#ifndef ECHOKIT_METRICS_H
#define ECHOKIT_METRICS_H
/* --metrics: counters in a shared-memory page and the C responder that
 * serves them as Prometheus text (GET /metrics). No Lua.
 *
 * The page is mapped (MAP_SHARED) before any fork and holds one slot per
 * worker. A worker writes only its own slot (metrics_me), with plain relaxed
 * stores: one writer per slot, so no locked instruction is needed; a scrape
 * reads every slot and sums them. A replacement worker takes over the slot of
 * the one it replaces and keeps adding to it, so counters stay monotonic
 * across restarts; the master zeroes the dead worker's gauges
 * (metrics_worker_gone). Counting happens per connection event (accept,
 * close, connect), not per chunk: a connection's bytes are added to its
 * listener's counters when it closes. */
#include <ev.h>
#include <stddef.h>
#include <stdint.h>

#include "server.h"

enum metrics_reason {
    METRICS_CLEAN, METRICS_RESET, METRICS_TIMEOUT, METRICS_ERROR, METRICS_BUDGET,
    METRICS_MEMORY, METRICS_SHUTDOWN, METRICS_REASONS
};

#define METRICS_MAX_PROXIES 32
#define METRICS_NAME_LEN 64

/* A control-API proxy's counters, updated from Lua (echokit.metrics_proxy). */
struct metrics_proxy {
    char name[METRICS_NAME_LEN]; /* "" = free */
    uint64_t conns, bytes_up, bytes_down;
    int64_t toxics; /* gauge */
};

struct metrics_slot {
    uint64_t accepted;
    uint64_t closed[METRICS_REASONS];
    uint64_t callback_errors, budget_trips, memory_trips;
    uint64_t connects, connect_failures;
    int64_t open, lua_heap; /* gauges */
    uint64_t bytes_in[SERVER_MAX_LISTENERS], bytes_out[SERVER_MAX_LISTENERS];
    struct metrics_proxy proxy[METRICS_MAX_PROXIES];
} __attribute__((aligned(64)));

struct metrics_page {
    double start_time;          /* Unix time, seconds */
    uint64_t restarts, reloads; /* written by the master only */
    int nslots, nlisteners;
    char listener[SERVER_MAX_LISTENERS][128];
    char version[32], lua[32], openssl[64];
    struct metrics_slot slot[];
};

/* This process's slot: a worker's in the page, or a private one when
 * --metrics is not given (the hooks then count into nothing anyone reads). */
extern struct metrics_slot *metrics_me;

static inline void metrics_add(uint64_t *p, uint64_t n)
{
    __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + n, __ATOMIC_RELAXED);
}

static inline void metrics_gauge(int64_t *p, int64_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
}

static inline void metrics_gauge_add(int64_t *p, int64_t d)
{
    __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + d, __ATOMIC_RELAXED);
}

/* A fresh shared page for nslots/2 workers, in two banks (see
 * metrics_use_slot); NULL (errno set) if mmap fails. */
struct metrics_page *metrics_page_new(int nslots);
void metrics_page_free(struct metrics_page *p);

/* In a worker (or the single process): count into worker i's slot from now
 * on, in the bank of the current generation (reloads even or odd): a
 * reload's new workers and the old ones still finishing never share one. */
void metrics_use_slot(struct metrics_page *p, int i);

/* In the master, once worker i is dead: its gauges drop to zero (its
 * connections are gone); its counters stay for its replacement to add to. */
void metrics_worker_gone(struct metrics_page *p, int i);

/* Whether --metrics is on in this process (metrics_me is in the page). */
int metrics_enabled(void);

/* The slot of this process's proxy counters named name (truncated to
 * METRICS_NAME_LEN-1 bytes): the one already holding that name (a replaced
 * worker's counters go on from where they were), else a free one. Each
 * claim is counted per process; returns the index, or -1 when --metrics is
 * off or all METRICS_MAX_PROXIES are taken (logged once). */
int metrics_proxy_claim(const char *name);

/* Drops one claim of slot k; the last one frees the slot (name and counters
 * cleared) for another name. For a deleted proxy only: a process that
 * merely exits leaves its names, so that counters stay monotonic. */
void metrics_proxy_release(int k);

/* The label a teardown reason counts under (NULL = clean). */
enum metrics_reason metrics_reason_of(const char *reason);

/* The exposition text (format 0.0.4) of the page, malloc'd; NULL when out
 * of memory. */
char *metrics_render(const struct metrics_page *p, size_t *len);

/* The HTTP responder: one GET /metrics per connection, 404 for any other
 * path, requests of at most METRICS_MAX_REQUEST bytes, METRICS_CLIENT_TIMEOUT to
 * send one, the connection closed after the answer. */
#define METRICS_MAX_REQUEST 4096
#define METRICS_CLIENT_TIMEOUT 5.0
#define METRICS_MAX_CLIENTS 16

struct metrics_server;

/* Opens the listening socket (before any fork, so a taken port fails at
 * start-up and the socket outlives a worker's restart). Returns -1 with err
 * filled; the bound address goes to name. */
int metrics_listen(const char *spec, char *name, size_t cap, char *err, size_t errcap);

/* Serves the page on the listening socket fd from loop; NULL when out of
 * memory. The listening fd is the server's from then on. */
struct metrics_server *metrics_server_start(struct ev_loop *loop, int fd,
                                            const struct metrics_page *p);

/* A worker that stops (a reload, a shutdown) takes no more scrapes: the
 * socket stays open for the next worker 0 to serve, and a scrape is not
 * accepted by one about to close it unanswered. NULL is fine. */
void metrics_server_stop_accepting(struct metrics_server *s);

/* Closes the socket and every client; NULL is fine. */
void metrics_server_free(struct metrics_server *s);

#endif

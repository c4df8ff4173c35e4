/* --metrics: the shared counter page and its Prometheus responder. See
 * metrics.h for the model; the responder is deliberately tiny (one request,
 * one answer, close) so that a scrape costs the serving process only the
 * formatting of a few kilobytes. */
#include "metrics.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "net.h"
#include "util.h"

static struct metrics_slot private_slot;
struct metrics_slot *metrics_me = &private_slot;

static size_t page_size(int nslots)
{
    return sizeof(struct metrics_page) + (size_t)nslots * sizeof(struct metrics_slot);
}

struct metrics_page *metrics_page_new(int nslots)
{
    struct metrics_page *p = mmap(NULL, page_size(nslots), PROT_READ | PROT_WRITE,
                                  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    p->nslots = nslots;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    p->start_time = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
    return p;
}

void metrics_page_free(struct metrics_page *p)
{
    if (p) {
        if (metrics_me >= p->slot && metrics_me < p->slot + p->nslots)
            metrics_me = &private_slot;
        munmap(p, page_size(p->nslots));
    }
}

/* Worker i's slot in the bank of the current generation: a reload's new
 * workers write the other bank while the old ones finish in theirs, so no
 * slot ever has two writers. */
static struct metrics_slot *slot_of(struct metrics_page *p, int i)
{
    int bank = (int)(__atomic_load_n(&p->reloads, __ATOMIC_RELAXED) & 1);
    return &p->slot[bank * (p->nslots / 2) + i];
}

void metrics_use_slot(struct metrics_page *p, int i)
{
    metrics_me = slot_of(p, i);
}

void metrics_worker_gone(struct metrics_page *p, int i)
{
    struct metrics_slot *s = slot_of(p, i);
    metrics_gauge(&s->open, 0);
    metrics_gauge(&s->lua_heap, 0);
    for (int k = 0; k < METRICS_MAX_PROXIES; k++)
        metrics_gauge(&s->proxy[k].toxics, 0);
}

int metrics_enabled(void)
{
    return metrics_me != &private_slot;
}

/* Claims per slot by this process's Lua proxies (the shared slot has one
 * writer, this process, so a plain array is enough). */
static unsigned proxy_claims[METRICS_MAX_PROXIES];

int metrics_proxy_claim(const char *name)
{
    static int warned;
    if (!metrics_enabled())
        return -1;
    struct metrics_proxy *x = metrics_me->proxy;
    char n[METRICS_NAME_LEN];
    size_t len = strlen(name);
    if (len >= sizeof n) {
        /* cut at a character boundary: a label value must stay UTF-8 */
        len = sizeof n - 1;
        size_t i = len - 1;
        while (i > 0 && ((unsigned char)name[i] & 0xC0) == 0x80)
            i--;
        unsigned char lead = (unsigned char)name[i];
        size_t clen = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
        if (i + clen > len)
            len = i;
    }
    memcpy(n, name, len);
    memset(n + len, 0, sizeof n - len);
    int free_k = -1;
    for (int k = 0; k < METRICS_MAX_PROXIES; k++) {
        if (!x[k].name[0]) {
            if (free_k < 0)
                free_k = k;
        } else if (!strncmp(x[k].name, n, sizeof n)) {
            proxy_claims[k]++;
            return k;
        }
    }
    if (free_k < 0) {
        if (!warned++)
            log_msg(LOG_WARN, "--metrics: more than %d proxies; proxy '%s' and later ones "
                    "are not counted", METRICS_MAX_PROXIES, n);
        return -1;
    }
    /* The counters of a free slot are zero (see release); the name goes in
     * last, so a scrape never sums a half-claimed slot's old values. */
    memcpy(x[free_k].name + 1, n + 1, sizeof n - 1);
    __atomic_store_n(&x[free_k].name[0], n[0], __ATOMIC_RELEASE);
    proxy_claims[free_k] = 1;
    return free_k;
}

void metrics_proxy_release(int k)
{
    if (k < 0 || k >= METRICS_MAX_PROXIES || !proxy_claims[k] || --proxy_claims[k])
        return;
    struct metrics_proxy *x = &metrics_me->proxy[k];
    __atomic_store_n(&x->name[0], 0, __ATOMIC_RELEASE);
    __atomic_store_n(&x->conns, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&x->bytes_up, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&x->bytes_down, 0, __ATOMIC_RELAXED);
    metrics_gauge(&x->toxics, 0);
}

enum metrics_reason metrics_reason_of(const char *r)
{
    if (!r)
        return METRICS_CLEAN;
    if (!strcmp(r, "reset"))
        return METRICS_RESET;
    if (!strcmp(r, "timeout"))
        return METRICS_TIMEOUT;
    if (!strcmp(r, "shutdown"))
        return METRICS_SHUTDOWN;
    if (strstr(r, "CPU budget"))
        return METRICS_BUDGET;
    if (strstr(r, "not enough memory"))
        return METRICS_MEMORY;
    return METRICS_ERROR;
}

/* ---- rendering ------------------------------------------------------------ */

struct buf {
    char *p;
    size_t len, cap;
    int oom;
};

static void bprintf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void bprintf(struct buf *b, const char *fmt, ...)
{
    if (b->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = 1;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap * 2 + (size_t)n;
        char *q = realloc(b->p, cap);
        if (!q) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
}

/* A label value with \, " and newline escaped, as the format requires. */
static const char *esc(const char *s, char *out, size_t cap)
{
    size_t o = 0;
    for (; *s && o + 3 < cap; s++) {
        if (*s == '\\' || *s == '"') {
            out[o++] = '\\';
            out[o++] = *s;
        } else if (*s == '\n') {
            out[o++] = '\\';
            out[o++] = 'n';
        } else {
            out[o++] = *s;
        }
    }
    out[o] = 0;
    return out;
}

static uint64_t ld(const uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static int64_t ldg(const int64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static void head(struct buf *b, const char *name, const char *type, const char *help)
{
    bprintf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* The sum of a counter over every slot; off is the field's offset. */
static uint64_t sum(const struct metrics_page *p, size_t off)
{
    uint64_t t = 0;
    for (int i = 0; i < p->nslots; i++)
        t += ld((const uint64_t *)((const char *)&p->slot[i] + off));
    return t;
}

static int64_t sumg(const struct metrics_page *p, size_t off)
{
    int64_t t = 0;
    for (int i = 0; i < p->nslots; i++)
        t += ldg((const int64_t *)((const char *)&p->slot[i] + off));
    return t;
}

#define SUM(p, f) sum(p, offsetof(struct metrics_slot, f))
#define SUMG(p, f) sumg(p, offsetof(struct metrics_slot, f))

static void counter(struct buf *b, const char *name, const char *help, uint64_t v)
{
    head(b, name, "counter", help);
    bprintf(b, "%s %llu\n", name, (unsigned long long)v);
}

static void gauge(struct buf *b, const char *name, const char *help, int64_t v)
{
    head(b, name, "gauge", help);
    bprintf(b, "%s %lld\n", name, (long long)v);
}

static const char *const reason_names[METRICS_REASONS] = {
    "clean", "reset", "timeout", "error", "budget", "memory", "shutdown",
};

/* The proxies of every slot, summed by name. */
static void proxies(struct buf *b, const struct metrics_page *p)
{
    struct metrics_proxy all[METRICS_MAX_PROXIES];
    int n = 0;
    for (int i = 0; i < p->nslots; i++) {
        for (int k = 0; k < METRICS_MAX_PROXIES; k++) {
            const struct metrics_proxy *x = &p->slot[i].proxy[k];
            char name[METRICS_NAME_LEN];
            memcpy(name, x->name, sizeof name);
            name[sizeof name - 1] = 0;
            if (!name[0])
                continue;
            int j = 0;
            while (j < n && strcmp(all[j].name, name))
                j++;
            if (j == n) {
                if (n == METRICS_MAX_PROXIES)
                    continue;
                memset(&all[n], 0, sizeof all[n]);
                memcpy(all[n].name, name, sizeof name);
                n++;
            }
            all[j].conns += ld(&x->conns);
            all[j].bytes_up += ld(&x->bytes_up);
            all[j].bytes_down += ld(&x->bytes_down);
            /* every worker runs the same set: the largest, not the sum */
            int64_t tx = ldg(&x->toxics);
            if (tx > all[j].toxics)
                all[j].toxics = tx;
        }
    }
    char e[2 * METRICS_NAME_LEN + 4];
    head(b, "echokit_proxy_connections_total", "counter",
         "Client connections accepted by a control-API proxy.");
    for (int j = 0; j < n; j++)
        bprintf(b, "echokit_proxy_connections_total{proxy=\"%s\"} %llu\n",
                esc(all[j].name, e, sizeof e), (unsigned long long)all[j].conns);
    head(b, "echokit_proxy_upstream_bytes_total", "counter",
         "Bytes a control-API proxy relayed from its clients to the upstream.");
    for (int j = 0; j < n; j++)
        bprintf(b, "echokit_proxy_upstream_bytes_total{proxy=\"%s\"} %llu\n",
                esc(all[j].name, e, sizeof e), (unsigned long long)all[j].bytes_up);
    head(b, "echokit_proxy_downstream_bytes_total", "counter",
         "Bytes a control-API proxy relayed from the upstream to its clients.");
    for (int j = 0; j < n; j++)
        bprintf(b, "echokit_proxy_downstream_bytes_total{proxy=\"%s\"} %llu\n",
                esc(all[j].name, e, sizeof e), (unsigned long long)all[j].bytes_down);
    head(b, "echokit_proxy_toxics", "gauge", "Toxics active on a control-API proxy.");
    for (int j = 0; j < n; j++)
        bprintf(b, "echokit_proxy_toxics{proxy=\"%s\"} %lld\n", esc(all[j].name, e, sizeof e),
                (long long)all[j].toxics);
}

/* A counter per listener: the array at offset off of every slot, summed. */
static void per_listener(struct buf *b, const struct metrics_page *p, const char *name,
                         const char *help, size_t off)
{
    char el[260];
    head(b, name, "counter", help);
    for (int i = 0; i < p->nlisteners; i++)
        bprintf(b, "%s{listener=\"%s\"} %llu\n", name, esc(p->listener[i], el, sizeof el),
                (unsigned long long)sum(p, off + (size_t)i * sizeof(uint64_t)));
}

char *metrics_render(const struct metrics_page *p, size_t *len)
{
    struct buf b = {.cap = 8192};
    b.p = malloc(b.cap);
    if (!b.p)
        return NULL;
    char e1[64], e2[64], e3[128];
    head(&b, "echokit_build_info", "gauge", "Always 1; the labels name the build.");
    bprintf(&b, "echokit_build_info{version=\"%s\",lua=\"%s\",openssl=\"%s\"} 1\n",
            esc(p->version, e1, sizeof e1), esc(p->lua, e2, sizeof e2),
            esc(p->openssl, e3, sizeof e3));
    head(&b, "echokit_start_time_seconds", "gauge", "When echokit started, Unix time.");
    bprintf(&b, "echokit_start_time_seconds %.3f\n", p->start_time);
    counter(&b, "echokit_connections_accepted_total", "Client connections accepted.",
            SUM(p, accepted));
    gauge(&b, "echokit_connections_open", "Client connections open now.", SUMG(p, open));
    head(&b, "echokit_connections_closed_total", "counter",
         "Client connections closed, by reason.");
    for (int r = 0; r < METRICS_REASONS; r++)
        bprintf(&b, "echokit_connections_closed_total{reason=\"%s\"} %llu\n", reason_names[r],
                (unsigned long long)sum(p, offsetof(struct metrics_slot, closed) +
                                               (size_t)r * sizeof(uint64_t)));
    per_listener(&b, p, "echokit_received_bytes_total",
                 "Bytes received from clients of a listener (added as each connection closes).",
                 offsetof(struct metrics_slot, bytes_in));
    per_listener(&b, p, "echokit_sent_bytes_total",
                 "Bytes sent to clients of a listener (added as each connection closes).",
                 offsetof(struct metrics_slot, bytes_out));
    counter(&b, "echokit_callback_errors_total", "Lua callbacks that raised an error.",
            SUM(p, callback_errors));
    counter(&b, "echokit_cpu_budget_exceeded_total",
            "Lua callbacks stopped by the CPU budget (--cpu-budget).", SUM(p, budget_trips));
    counter(&b, "echokit_lua_memory_cap_exceeded_total",
            "Lua callbacks that failed on the memory cap (--lua-memory).",
            SUM(p, memory_trips));
    gauge(&b, "echokit_lua_heap_bytes", "Lua heap in use, all workers (updated every second).",
          SUMG(p, lua_heap));
    counter(&b, "echokit_outbound_connects_total", "Outbound connections begun (echokit.connect).",
            SUM(p, connects));
    counter(&b, "echokit_outbound_connect_failures_total",
            "Outbound connections that failed before they were established.",
            SUM(p, connect_failures));
    proxies(&b, p);
    counter(&b, "echokit_worker_restarts_total", "Workers replaced after dying.",
            __atomic_load_n(&p->restarts, __ATOMIC_RELAXED));
    counter(&b, "echokit_reloads_total", "Configuration reloads.",
            __atomic_load_n(&p->reloads, __ATOMIC_RELAXED));
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    *len = b.len;
    return b.p;
}

/* ---- the responder ------------------------------------------------------ */

struct client {
    struct metrics_server *s;
    int fd;
    ev_io io;
    ev_timer timer;
    char req[METRICS_MAX_REQUEST];
    size_t rlen;
    char *out;
    size_t olen, off;
    struct client *prev, *next;
};

struct metrics_server {
    struct ev_loop *loop;
    const struct metrics_page *page;
    int fd;
    ev_io io;
    struct client *clients;
    int nclients;
};

int metrics_listen(const char *spec, char *name, size_t cap, char *err, size_t errcap)
{
    struct net_addr a;
    char e[ECHOKIT_ERR_LEN];
    if (net_parse_addr(spec, 1, &a, e) < 0) {
        snprintf(err, errcap, "%s", e);
        return -1;
    }
    int fd = net_listen(&a, 64, e);
    if (fd < 0) {
        snprintf(err, errcap, "%s", e);
        return -1;
    }
    struct net_addr bound;
    if (net_local_addr(fd, &bound) == 0)
        net_addr_format((struct sockaddr *)&bound.ss, bound.len, name, cap);
    else
        snprintf(name, cap, "%s", spec);
    return fd;
}

static void client_free(struct client *c)
{
    struct metrics_server *s = c->s;
    ev_io_stop(s->loop, &c->io);
    ev_timer_stop(s->loop, &c->timer);
    close(c->fd);
    free(c->out);
    if (c->prev)
        c->prev->next = c->next;
    else
        s->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->nclients--;
    free(c);
}

static void client_write(struct client *c)
{
    while (c->off < c->olen) {
        ssize_t n = write(c->fd, c->out + c->off, c->olen - c->off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            ev_io_stop(c->s->loop, &c->io);
            ev_io_set(&c->io, c->fd, EV_WRITE);
            ev_io_start(c->s->loop, &c->io);
            return;
        }
        if (n <= 0)
            break;
        c->off += (size_t)n;
    }
    client_free(c);
}

static void respond(struct client *c, int status, const char *type, const char *body,
                    size_t blen)
{
    const char *what = status == 200 ? "OK" : status == 404 ? "Not Found" : "Bad Request";
    char hdr[256];
    int h = snprintf(hdr, sizeof hdr,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n",
                     status, what, type, blen);
    c->out = malloc((size_t)h + blen);
    if (!c->out) {
        client_free(c);
        return;
    }
    memcpy(c->out, hdr, (size_t)h);
    memcpy(c->out + h, body, blen);
    c->olen = (size_t)h + blen;
    client_write(c);
}

/* A whole request head is in c->req: answer it. */
static void handle(struct client *c)
{
    const char *r = c->req;
    size_t plen = strcspn(r + 4, " ?\r\n");
    if (strncmp(r, "GET ", 4) || plen != 8 || strncmp(r + 4, "/metrics", 8)) {
        static const char nf[] = "not found: only GET /metrics is served\n";
        respond(c, strncmp(r, "GET ", 4) && strncmp(r, "HEAD ", 5) ? 400 : 404,
                "text/plain; charset=utf-8", nf, sizeof nf - 1);
        return;
    }
    size_t len;
    char *text = metrics_render(c->s->page, &len);
    if (!text) {
        client_free(c);
        return;
    }
    respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
    free(text);
}

static void client_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct client *c = container_of(w, struct client, io);
    if (c->out) {
        client_write(c);
        return;
    }
    ssize_t n = read(c->fd, c->req + c->rlen, sizeof c->req - 1 - c->rlen);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        client_free(c);
        return;
    }
    c->rlen += (size_t)n;
    c->req[c->rlen] = 0;
    if (strstr(c->req, "\r\n\r\n") || strstr(c->req, "\n\n")) {
        handle(c);
    } else if (c->rlen == sizeof c->req - 1) {
        static const char tl[] = "request too large\n";
        respond(c, 400, "text/plain; charset=utf-8", tl, sizeof tl - 1);
    }
}

static void timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    client_free(container_of(w, struct client, timer));
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct metrics_server *s = container_of(w, struct metrics_server, io);
    for (int k = 0; k < 8; k++) {
        struct net_addr peer;
        int fd = net_accept(s->fd, &peer);
        if (fd < 0)
            return;
        struct client *c = s->nclients < METRICS_MAX_CLIENTS ? calloc(1, sizeof *c) : NULL;
        if (!c) {
            close(fd);
            continue;
        }
        c->s = s;
        c->fd = fd;
        c->next = s->clients;
        if (c->next)
            c->next->prev = c;
        s->clients = c;
        s->nclients++;
        ev_io_init(&c->io, client_cb, fd, EV_READ);
        ev_io_start(loop, &c->io);
        ev_timer_init(&c->timer, timeout_cb, METRICS_CLIENT_TIMEOUT, 0);
        ev_timer_start(loop, &c->timer);
    }
}

struct metrics_server *metrics_server_start(struct ev_loop *loop, int fd,
                                            const struct metrics_page *p)
{
    struct metrics_server *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->loop = loop;
    s->page = p;
    s->fd = fd;
    ev_io_init(&s->io, accept_cb, fd, EV_READ);
    ev_io_start(loop, &s->io);
    ev_unref(loop); /* the responder alone does not keep the loop running */
    return s;
}

void metrics_server_stop_accepting(struct metrics_server *s)
{
    if (s && ev_is_active(&s->io)) {
        ev_ref(s->loop); /* as ev_unref when it started: before the stop */
        ev_io_stop(s->loop, &s->io);
    }
}

void metrics_server_free(struct metrics_server *s)
{
    if (!s)
        return;
    while (s->clients)
        client_free(s->clients);
    metrics_server_stop_accepting(s);
    close(s->fd);
    free(s);
}

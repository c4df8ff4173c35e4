/* The connection as Lua sees it: a table handle with the methods of API.md,
 * the callbacks dispatched to the handler, and the serve coroutine.
 *
 * The handle is a plain table: every field, integer keys included, is the
 * handler's own, and methods come from the metatable's __index table without
 * a C call. Nothing in it points at C memory: C maps the table's address back
 * to its connection (handles, below) while the connection is open, so a
 * forged table, a copy or a handle kept after close finds nothing and answers
 * "closed". The connection owns one registry reference to the handle while
 * open. Every call into Lua goes through script_invoke, so pushing a chunk of
 * input, a reason or a new coroutine runs protected. */
#include <errno.h>
#include <lauxlib.h>
#include <netdb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"
#include "ptrmap.h"
#include "script.h"
#include "tls.h"
#include "udp.h"

#define CONN_MT "echokit.conn"

enum wait { WAIT_NONE, WAIT_LINE, WAIT_N, WAIT_ALL, WAIT_ANY, WAIT_SEND, WAIT_SLEEP };

struct lconn {
    struct conn c; /* first: the conn layer allocates the whole struct */
    struct script *S;
    const struct handler *h;
    int ud_ref;   /* the handle */
    int co_ref;   /* the serve coroutine */
    lua_State *co;
    enum wait wait;
    size_t want;
    char *in;     /* unread input (serve style only) */
    size_t in_off, in_len, in_cap;
    ev_timer sleep;
    int tap_ref;          /* pipe tap function */
    int tap_eof_ref;      /* pipe opts.on_eof function */
    struct handler own;   /* callbacks this connection holds references to:
                             echokit.connect's, or an echokit.listen listener's */
    int outbound;
    int listener;         /* accepted on --listen listener this (for the metrics), or -1 */
    int awaiting_tls;     /* accepted on a TLS listener: Lua hears of it after the handshake */
    const void *handle;   /* the handle table's address: its key in handles */
};

/* Handle address -> open connection. An entry lives from the handle's
 * creation to op_close, while the registry holds the table, so an address
 * in here is never one the collector has reused. */
static struct ptrmap handles;

/* The connection whose callback is running. A callback's calls on its own
 * connection (conn:write(data) in on_data) are recognised by the handle's
 * address without the lookup in handles. The lconn outlives the callback
 * (teardown waits for the reaper). */
static struct lconn *calling;

static inline struct lconn *lconn_of(struct conn *c)
{
    return (struct lconn *)c;
}

/* The connection a callback may close: NULL once torn down. */
static struct conn *live(struct lconn *lc)
{
    return lc->c.flags & CONN_DEAD ? NULL : &lc->c;
}

/* The live connection behind argument idx, or NULL if it is closed (a
 * connection handle that is no longer, or never was, in handles). Raises if
 * idx is not a connection handle at all (misuse). */
static struct lconn *check_conn(lua_State *L, int idx)
{
    const void *p = lua_topointer(L, idx);
    struct lconn *cur = calling;
    if (cur && p == cur->handle)
        return (cur->c.flags & CONN_DEAD) ? NULL : cur;
    if (lua_type(L, idx) == LUA_TTABLE) {
        struct lconn *lc = ptrmap_get(&handles, p);
        if (lc)
            return (lc->c.flags & CONN_DEAD) ? NULL : lc; /* torn down: closed */
        if (lua_getmetatable(L, idx)) {
            luaL_getmetatable(L, CONN_MT);
            int same = lua_rawequal(L, -1, -2);
            lua_pop(L, 2);
            if (same)
                return NULL; /* a closed handle, or a copy of one */
        }
    }
    luaL_typeerror(L, idx, "connection");
    return NULL;
}

struct conn *lconn_check(lua_State *L, int idx)
{
    struct lconn *lc = check_conn(L, idx);
    return lc ? &lc->c : NULL;
}

int lconn_is_outbound(const struct conn *c)
{
    return ((const struct lconn *)(const void *)c)->outbound;
}

static int closed(lua_State *L)
{
    lua_pushnil(L);
    lua_pushliteral(L, "closed");
    return 2;
}

/* ---- calls into Lua -------------------------------------------------------- */

/* Calls function reference fn for lc (see script_call_ref for args); on an
 * error lc is torn down. */
static void dispatch(struct lconn *lc, int fn, const char *what, enum script_args args,
                     const char *str, size_t len)
{
    struct lconn *prev = calling;
    calling = lc;
    script_call_ref(lc->S, fn, lc->ud_ref, args, str, len, what, live(lc));
    calling = prev;
}

/* ---- serve: input buffer ------------------------------------------------ */

static size_t unread(const struct lconn *lc)
{
    return lc->in_len - lc->in_off;
}

/* Appends to the unread input; -1 (connection torn down) past max_buffer. */
static int in_append(struct lconn *lc, const char *p, size_t n)
{
    size_t have = unread(lc);
    if (have + n > lc->c.ctx->max_buffer) {
        char msg[128];
        snprintf(msg, sizeof msg, "error: input buffer limit of %zu bytes exceeded",
                 lc->c.ctx->max_buffer);
        char label[200];
        log_msg(LOG_WARN, "%s %s", conn_label(&lc->c, label, sizeof label), msg);
        conn_abort(&lc->c, msg, 1);
        return -1;
    }
    if (lc->in_off && lc->in_len + n > lc->in_cap) {
        memmove(lc->in, lc->in + lc->in_off, have);
        lc->in_off = 0;
        lc->in_len = have;
    }
    if (lc->in_len + n > lc->in_cap) {
        size_t cap = lc->in_cap ? lc->in_cap : 4096;
        while (cap < lc->in_len + n)
            cap *= 2;
        char *nb = realloc(lc->in, cap);
        if (!nb) {
            conn_abort(&lc->c, "error: out of memory", 1);
            return -1;
        }
        lc->in = nb;
        lc->in_cap = cap;
    }
    memcpy(lc->in + lc->in_len, p, n);
    lc->in_len += n;
    return 0;
}

static void in_consume(struct lconn *lc, size_t n)
{
    lc->in_off += n;
    if (lc->in_off == lc->in_len) {
        /* Nothing unread: give the memory back, idle connections hold none. */
        free(lc->in);
        lc->in = NULL;
        lc->in_off = lc->in_len = lc->in_cap = 0;
    }
}

/* Stop reading while enough unread input waits for a coroutine that is not
 * receiving; a receiving coroutine always gets more (max_buffer bounds it). */
static void update_hold(struct lconn *lc)
{
    if (lc->c.flags & CONN_DEAD)
        return;
    int receiving = lc->wait >= WAIT_LINE && lc->wait <= WAIT_ANY;
    int hold = !receiving && unread(lc) >= lc->c.ctx->high_water;
    if (hold != !!(lc->c.flags & CONN_HOLD))
        conn_set_hold(&lc->c, hold);
}

static const char *end_reason(const struct lconn *lc)
{
    const char *r = lc->c.reason;
    return r && !strcmp(r, "timeout") ? "timeout" : "closed";
}

/* Tries to answer the pending receive from p[0..len). Pushes the results on
 * co and returns how many (0: wait for more); *used is what was taken.
 * [-0, +(0|1|3), m] */
static int satisfy(struct lconn *lc, lua_State *co, const char *p, size_t len, size_t *used)
{
    int ended = (lc->c.flags & (CONN_EOF | CONN_DEAD)) != 0;
    *used = 0;
    switch (lc->wait) {
    case WAIT_LINE: {
        const char *nl = memchr(p, '\n', len);
        if (nl) {
            size_t l = (size_t)(nl - p);
            *used = l + 1;
            if (l && p[l - 1] == '\r')
                l--;
            lua_pushlstring(co, p, l);
            return 1;
        }
        break;
    }
    case WAIT_N:
        if (len >= lc->want) {
            lua_pushlstring(co, p, lc->want);
            *used = lc->want;
            return 1;
        }
        break;
    case WAIT_ALL:
        if (ended) {
            lua_pushlstring(co, p, len);
            *used = len;
            return 1;
        }
        return 0;
    case WAIT_ANY:
        /* a flow's datagram may be empty, and is one whole */
        if (len || ((lc->c.flags & CONN_DGRAM) && !ended)) {
            *used = len < lc->want ? len : lc->want;
            lua_pushlstring(co, p, *used);
            return 1;
        }
        break;
    default:
        return 0;
    }
    if (!ended)
        return 0;
    lua_pushnil(co);
    lua_pushstring(co, end_reason(lc));
    lua_pushlstring(co, p, len);
    *used = len;
    return 3;
}

static void release_co(struct lconn *lc)
{
    if (!lc->co)
        return;
    *(struct lconn **)lua_getextraspace(lc->co) = NULL;
    lc->co = NULL;
    script_unref(lc->S->L, &lc->co_ref);
}

/* What a resume of the serve coroutine hands it. */
enum resume_kind {
    R_START,    /* a new coroutine: serve(conn) */
    R_INPUT,    /* the loop's buffer p/len for a waiting receive; the rest is kept */
    R_BUFFERED, /* the unread input p/len (lc->in) for a waiting receive */
    R_TRUE,     /* send or sleep is over: true */
    R_END,      /* the connection ended: nil, reason */
};

struct resumption {
    struct lconn *lc;
    enum resume_kind kind;
    const char *p;
    size_t len;
    int rc; /* lua_resume's status, or -1: nothing to resume with */
};

/* Pushes what the coroutine gets (creating it for R_START) and resumes it.
 * Runs protected on the main thread: a memory error while pushing on the
 * suspended coroutine is rethrown to this call. [-0, +0, e] */
static int resume_body(lua_State *L)
{
    struct resumption *r = lua_touserdata(L, 1);
    struct lconn *lc = r->lc;
    int n = 0;
    if (r->kind == R_START) {
        lua_State *co = lua_newthread(L);
        lc->co_ref = script_ref(L);
        lc->co = co;
        *(struct lconn **)lua_getextraspace(co) = lc;
        lua_rawgeti(co, LUA_REGISTRYINDEX, lc->h->cb[CB_SERVE]);
        lua_rawgeti(co, LUA_REGISTRYINDEX, lc->ud_ref);
        n = 1;
    } else {
        if (!lua_checkstack(lc->co, 3))
            return luaL_error(L, "not enough memory");
        switch (r->kind) {
        case R_INPUT:
        case R_BUFFERED: {
            size_t used;
            n = satisfy(lc, lc->co, r->p, r->len, &used);
            if (r->kind == R_BUFFERED) {
                if (n)
                    in_consume(lc, used);
            } else if (r->len > used && !(lc->c.flags & CONN_DGRAM) &&
                       in_append(lc, r->p + used, r->len - used) < 0) {
                lua_pop(lc->co, n); /* torn down: nobody to hand them to */
                n = 0;
            }
            break;
        }
        case R_TRUE:
            lua_pushboolean(lc->co, 1);
            n = 1;
            break;
        default:
            lua_pushnil(lc->co);
            lua_pushstring(lc->co, end_reason(lc));
            n = 2;
            break;
        }
        if (!n) {
            r->rc = -1;
            return 0;
        }
    }
    lc->wait = WAIT_NONE;
    r->rc = script_resume(lc->S, lc->co, n, "serve", live(lc));
    return 0;
}

/* Resumes (or starts) the serve coroutine; see enum resume_kind. */
static void resume(struct lconn *lc, enum resume_kind kind, const char *p, size_t len)
{
    struct conn_ctx *ctx = lc->c.ctx;
    struct conn *prev = ctx->source;
    struct lconn *prev_calling = calling;
    struct resumption r = {lc, kind, p, len, -1};
    /* Writes made by the coroutine are this connection's doing (back-pressure). */
    ctx->source = live(lc);
    calling = lc;
    int failed = script_invoke(lc->S, resume_body, &r, "serve", live(lc)) < 0;
    calling = prev_calling;
    ctx->source = prev;
    if (failed) {
        r.rc = LUA_ERRMEM; /* torn down by script_invoke */
    } else if (r.rc == -1) {
        update_hold(lc);
        return;
    } else if (r.rc == LUA_YIELD && lc->wait == WAIT_NONE) {
        script_fail(lc->S, "serve", live(lc),
                    "serve yielded outside receive/send/sleep (coroutines of its own must "
                    "not yield across echokit calls)");
        r.rc = LUA_ERRRUN;
    }
    if (r.rc != LUA_YIELD) {
        release_co(lc);
        if (r.rc == LUA_OK)
            conn_close(&lc->c); /* returning from serve closes */
    }
    update_hold(lc);
}

/* New input or an end for a waiting receive. p/len is data not yet buffered. */
static void serve_input(struct lconn *lc, const char *p, size_t len)
{
    if (!p)
        p = "";
    int receiving = lc->wait >= WAIT_LINE && lc->wait <= WAIT_ANY;
    if (unread(lc)) {
        if (len && in_append(lc, p, len) < 0)
            return;
        if (receiving)
            resume(lc, R_BUFFERED, lc->in + lc->in_off, unread(lc));
        else
            update_hold(lc);
        return;
    }
    /* Nothing buffered: answer straight from the loop's buffer, keep the rest. */
    if (receiving) {
        resume(lc, R_INPUT, p, len);
        return;
    }
    if (len && in_append(lc, p, len) < 0)
        return;
    update_hold(lc);
}

static void sleep_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct lconn *lc = container_of(w, struct lconn, sleep);
    if (lc->wait == WAIT_SLEEP && lc->co)
        resume(lc, R_TRUE, NULL, 0);
}

/* ---- conn_ops ------------------------------------------------------------ */

/* Input: on_data, or the serve coroutine's receive. A callback that failed
 * (reaching the memory cap, say) has its connection reaped at once, so what
 * the handler kept for it is garbage before the next connection's callback
 * allocates: one client filling the Lua heap must not fail the others. */
static void op_data(struct conn *c, const char *buf, size_t len)
{
    struct lconn *lc = lconn_of(c);
    if (lc->co && (c->flags & CONN_DGRAM) && lc->wait != WAIT_ANY) {
        /* a flow's serve gets datagrams only while in receive() */
        if (c->ctx->udp)
            c->ctx->udp->stats.drop_unread++;
    } else if (lc->co) {
        serve_input(lc, buf, len);
    } else if (lc->h->cb[CB_DATA] != LUA_NOREF) {
        dispatch(lc, lc->h->cb[CB_DATA], "on_data", ARGS_SELF_STR, buf, len);
    } /* else no reader: input is discarded */
    if ((c->flags & CONN_DEAD) && !lc->S->depth && c->reason &&
        !strncmp(c->reason, "error", 5))
        conn_reap_now(c);
}

static void op_eof(struct conn *c)
{
    struct lconn *lc = lconn_of(c);
    if (lc->co) {
        serve_input(lc, NULL, 0); /* a waiting receive learns of the end */
        return;
    }
    if (lc->h->cb[CB_EOF] != LUA_NOREF)
        dispatch(lc, lc->h->cb[CB_EOF], "on_eof", ARGS_SELF, NULL, 0);
    else
        conn_close(c);
}

static void op_drain(struct conn *c)
{
    struct lconn *lc = lconn_of(c);
    if (lc->co && lc->wait == WAIT_SEND)
        resume(lc, R_TRUE, NULL, 0);
    if (lc->h->cb[CB_DRAIN] != LUA_NOREF && !(c->flags & CONN_DEAD))
        dispatch(lc, lc->h->cb[CB_DRAIN], "on_drain", ARGS_SELF, NULL, 0);
}

/* A client of a TLS listener that never completed its handshake: one
 * line saying why (a plaintext client, an unknown CA, a stall), at most
 * TLS_FAIL_LINES a second, then a count. */
#define TLS_FAIL_LINES 10
static void handshake_failed(struct conn *c, const char *reason)
{
    static ev_tstamp second;
    static unsigned lines, dropped;
    ev_tstamp now = ev_now(c->ctx->loop);
    if (now - second >= 1.0) {
        if (dropped)
            log_msg(LOG_WARN, "tls: %u more failed handshake(s) not shown", dropped);
        second = now;
        lines = dropped = 0;
    }
    if (++lines > TLS_FAIL_LINES) {
        dropped++;
        return;
    }
    char label[200];
    const char *r = reason ? reason : "closed by the peer";
    if (!strncmp(r, "error: ", 7))
        r += 7;
    if (!strncmp(r, "tls handshake: ", 15))
        r += 15;
    log_msg(LOG_WARN, "%s tls handshake failed: %s", conn_label(c, label, sizeof label), r);
}

/* The metrics of a connection's end: per connection, not per chunk, so its
 * bytes count once it closes. */
static void count_close(struct lconn *lc, const char *reason)
{
    struct conn *c = &lc->c;
    struct metrics_slot *m = metrics_me;
    if (lc->outbound) {
        if ((c->flags & CONN_CONNECTING) || (c->ssl && !(c->flags & CONN_TLS_DONE)))
            metrics_add(&m->connect_failures, 1);
        return;
    }
    metrics_add(&m->closed[metrics_reason_of(reason)], 1);
    metrics_gauge_add(&m->open, -1);
    if (lc->listener >= 0) {
        metrics_add(&m->bytes_in[lc->listener], c->bytes_in);
        metrics_add(&m->bytes_out[lc->listener], c->bytes_out);
    }
}

static void op_close(struct conn *c, const char *reason)
{
    struct lconn *lc = lconn_of(c);
    struct script *S = lc->S;
    if (log_enabled(LOG_DEBUG)) {
        char label[200];
        log_msg(LOG_DEBUG, "%s closed (%s) after %.3fs, %llu bytes in, %llu out",
                conn_label(c, label, sizeof label), reason ? reason : "clean",
                ev_now(c->ctx->loop) - c->created, (unsigned long long)c->bytes_in,
                (unsigned long long)c->bytes_out);
    }
    ev_timer_stop(c->ctx->loop, &lc->sleep);
    /* A waiting coroutine hears of the end first, as LuaSocket would tell it. */
    if (lc->co) {
        switch (lc->wait) {
        case WAIT_LINE:
        case WAIT_N:
        case WAIT_ALL:
        case WAIT_ANY:
            serve_input(lc, NULL, 0);
            break;
        case WAIT_SEND:
        case WAIT_SLEEP:
            resume(lc, R_END, NULL, 0);
            break;
        default:
            break;
        }
    }
    if (lc->awaiting_tls)
        handshake_failed(c, reason);
    count_close(lc, reason);
    /* A connection whose handle could not be made never reached Lua, nor
     * one whose TLS handshake failed. */
    if (lc->h->cb[CB_CLOSE] != LUA_NOREF && lc->ud_ref != LUA_NOREF && !lc->awaiting_tls)
        dispatch(lc, lc->h->cb[CB_CLOSE], "on_close", ARGS_SELF_STR, reason,
                 reason ? strlen(reason) : 0);
    if (lc->handle) {
        ptrmap_del(&handles, lc->handle);
        lc->handle = NULL;
    }
    lua_State *L = S->L;
    script_unref(L, &lc->ud_ref);
    script_unref(L, &lc->tap_ref);
    script_unref(L, &lc->tap_eof_ref);
    for (int i = 0; i < CB_COUNT; i++)
        script_unref(L, &lc->own.cb[i]);
    release_co(lc);
    free(lc->in);
    lc->in = NULL;
    lc->in_off = lc->in_len = lc->in_cap = 0;
}

/* Established (accepted, or an outbound connect completed): on_connect, then
 * the serve coroutine if the handler has one. */
static void start(struct lconn *lc)
{
    struct conn *c = &lc->c;
    if (log_enabled(LOG_DEBUG)) {
        char label[200];
        log_msg(LOG_DEBUG, "%s %s", conn_label(c, label, sizeof label),
                lc->outbound ? "connected" : "open");
    }
    if (lc->h->cb[CB_CONNECT] != LUA_NOREF)
        dispatch(lc, lc->h->cb[CB_CONNECT], "on_connect", ARGS_SELF, NULL, 0);
    if (lc->h->cb[CB_SERVE] != LUA_NOREF && !(c->flags & CONN_DEAD))
        resume(lc, R_START, NULL, 0);
}

static void op_connect(struct conn *c)
{
    start(lconn_of(c));
}

/* A handshake completed: on_tls, then (accepted on a TLS listener) what an
 * accepted connection starts with. */
static void op_tls(struct conn *c)
{
    struct lconn *lc = lconn_of(c);
    int accepted = lc->awaiting_tls;
    lc->awaiting_tls = 0;
    if (lc->h->cb[CB_TLS] != LUA_NOREF)
        dispatch(lc, lc->h->cb[CB_TLS], "on_tls", ARGS_SELF, NULL, 0);
    if (accepted && !(c->flags & CONN_DEAD))
        start(lc);
}

/* A piped chunk (buf) for opts.tap(data, conn), or the source's EOF (buf
 * NULL) for opts.on_eof(conn). */
static void op_tap(struct conn *c, const char *buf, size_t len)
{
    struct lconn *lc = lconn_of(c);
    if (!buf)
        dispatch(lc, lc->tap_eof_ref, "pipe on_eof", ARGS_SELF, NULL, 0);
    else
        dispatch(lc, lc->tap_ref, "tap", ARGS_STR_SELF, buf, len);
}

static const struct conn_ops lconn_ops = {
    .on_data = op_data,
    .on_eof = op_eof,
    .on_drain = op_drain,
    .on_connect = op_connect,
    .on_close = op_close,
    .on_tap = op_tap,
    .on_tls = op_tls,
};

/* The C side of a new connection: no Lua yet (nothing here can fail). */
static void lconn_prepare(struct lconn *lc, struct script *S, const struct handler *h)
{
    lc->S = S;
    lc->h = h;
    lc->ud_ref = lc->co_ref = lc->tap_ref = lc->tap_eof_ref = LUA_NOREF;
    for (int i = 0; i < CB_COUNT; i++)
        lc->own.cb[i] = LUA_NOREF;
    ev_init(&lc->sleep, sleep_cb);
}

/* The handle: a table with the id, referenced from the registry and entered
 * in handles. On L, the running thread. [-0, +0, e] */
static void make_handle(lua_State *L, struct lconn *lc)
{
    lua_createtable(L, 0, 1);
    luaL_setmetatable(L, CONN_MT);
    lua_pushinteger(L, (lua_Integer)lc->c.id);
    lua_setfield(L, -2, "id");
    const void *p = lua_topointer(L, -1);
    lc->ud_ref = script_ref(L);
    if (ptrmap_put(&handles, p, lc) < 0) {
        script_unref(L, &lc->ud_ref);
        luaL_error(L, "not enough memory");
    }
    lc->handle = p;
}

struct accepting {
    struct lconn *lc;
    const struct handler *h; /* callbacks to take references to, or NULL */
};

/* [-0, +0, e] */
static int accept_body(lua_State *L)
{
    struct accepting *a = lua_touserdata(L, 1);
    make_handle(L, a->lc);
    for (int i = 0; a->h && i < CB_COUNT; i++) {
        if (a->h->cb[i] == LUA_NOREF)
            continue;
        lua_rawgeti(L, LUA_REGISTRYINDEX, a->h->cb[i]);
        a->lc->own.cb[i] = script_ref(L);
    }
    return 0;
}

/* A connection or flow a listener took: its handle, and references to the
 * listener's own callbacks (h) if it has them, counted as accepted. Returns
 * script_invoke's result: < 0 if that failed (c is torn down then). */
static int adopt(struct script *S, struct lconn *lc, const struct handler *h, int listener)
{
    lconn_prepare(lc, S, h ? &lc->own : &S->handler);
    lc->listener = listener;
    metrics_add(&metrics_me->accepted, 1);
    metrics_gauge_add(&metrics_me->open, 1);
    struct accepting a = {lc, h};
    return script_invoke(S, accept_body, &a, "accept", &lc->c);
}

void lconn_accept(struct script *S, int fd, const struct net_addr *peer, const struct handler *h,
                  struct tls_server *tls, int listener)
{
    struct conn *c = conn_new(S->ctx, fd, sizeof(struct lconn), &lconn_ops, peer, 0);
    if (!c) {
        log_msg(LOG_ERROR, "accept: out of memory, dropping a connection");
        close(fd);
        return;
    }
    struct lconn *lc = lconn_of(c);
    if (adopt(S, lc, h, listener) < 0)
        return; /* torn down with the error */
    if (tls) {
        SSL *ssl = tls_server_ssl(tls);
        if (!ssl) {
            conn_abort(c, "error: tls: out of memory", 0);
            return;
        }
        lc->awaiting_tls = 1;
        conn_start_tls(c, ssl); /* a fresh connection: it takes ssl */
        return;
    }
    start(lc);
}

struct conn *lconn_flow(struct script *S, struct udp_sock *sock, const struct net_addr *peer,
                        const struct handler *h, int listener)
{
    struct conn *c = udp_flow_new(sock, sizeof(struct lconn), &lconn_ops, peer);
    if (!c)
        return NULL;
    struct lconn *lc = lconn_of(c);
    if (adopt(S, lc, h, listener) < 0)
        return c; /* torn down with the error */
    start(lc);
    return c; /* torn down if on_connect failed or closed it: the caller looks */
}

int lconn_wants_datagrams(const struct script *S)
{
    return S && S->handler.cb[CB_DATAGRAM] != LUA_NOREF;
}

static void resolved(struct resolve_req *req)
{
    struct lconn *lc = req->data;
    struct conn *c = &lc->c;
    if (req->err) {
        char reason[400];
        snprintf(reason, sizeof reason, "resolve: %s: %s", req->host, gai_strerror(req->err));
        conn_abort(c, reason, 0);
    } else {
        conn_connect(c, req->addrs, req->naddrs);
    }
    conn_unref(c);
    free(req);
}

/* The Lua side of echokit.connect's connection: connect_body(lc, handler),
 * run protected so a memory error can tear down the half-made connection
 * first. [-0, +0, e] */
static int connect_body(lua_State *L)
{
    struct lconn *lc = lua_touserdata(L, 1);
    make_handle(L, lc);
    script_take_handler(L, 2, &lc->own);
    return 0;
}

/* echokit.connect(addr, handler): returns the connection at once; on_connect
 * fires when established, on_close(conn, reason) on failure. */
int lconn_connect(lua_State *L)
{
    struct script *S = script_of(L);
    const char *spec = luaL_checkstring(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    if (!lua_isnoneornil(L, 3))
        luaL_checktype(L, 3, LUA_TTABLE);
    int udp = !strncmp(spec, "udp://", 6);
    if (udp)
        spec += 6;
    int tls = !udp && tls_scheme(&spec);
    struct net_addr addr;
    char host[256], err[ECHOKIT_ERR_LEN];
    int port;
    int rc = net_parse_addr2(spec, 0, &addr, host, sizeof host, &port, err);
    if (rc < 0)
        return luaL_error(L, "echokit.connect: %s", err);
    script_check_handler(L, 2, "echokit.connect"); /* raises on misuse */
    struct tls_client *tc = NULL;
    if (tls) {
        if (rc == 0)
            net_addr_split((struct sockaddr *)&addr.ss, addr.len, host, sizeof host, &port);
        if (lua_istable(L, 3))
            lua_getfield(L, 3, "tls");
        else
            lua_pushnil(L);
        tc = ltls_client(L, lua_gettop(L), host, port); /* raises on bad options */
        lua_pop(L, 1);
    }
    if (udp && rc == 0 && addr.ss.ss_family == AF_UNIX)
        return luaL_error(L, "echokit.connect: udp://%s: UDP needs an IP address", spec);
    struct conn *c = udp ? conn_new_outbound_dgram(S->ctx, sizeof(struct lconn), &lconn_ops)
                         : conn_new_outbound(S->ctx, sizeof(struct lconn), &lconn_ops);
    if (!c)
        return luaL_error(L, "echokit.connect: not enough memory");
    struct lconn *lc = lconn_of(c);
    lconn_prepare(lc, S, &lc->own);
    lc->outbound = 1;
    metrics_add(&metrics_me->connects, 1);
    if (tc) {
        SSL *ssl = tls_client_ssl(tc);
        if (!ssl) {
            conn_abort(c, "error: not enough memory", 0);
            return luaL_error(L, "echokit.connect: not enough memory");
        }
        conn_start_tls(c, ssl); /* not connected yet: it handshakes once connected */
    }
    lua_pushcfunction(L, connect_body);
    lua_pushlightuserdata(L, lc);
    lua_pushvalue(L, 2);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
        conn_abort(c, "error: not enough memory", 0);
        return lua_error(L);
    }
    if (rc == 1) {
        struct resolve_req *req = calloc(1, sizeof *req);
        if (!req) {
            conn_abort(c, "error: not enough memory", 0);
        } else {
            snprintf(req->host, sizeof req->host, "%s", host);
            req->port = port;
            req->done = resolved;
            req->data = lc;
            conn_ref(c);
            if (resolve_start(&S->resolver, req) < 0) {
                conn_unref(c);
                free(req);
                conn_abort(c, "error: cannot start the resolver thread", 0);
            }
        }
    } else {
        conn_connect(c, &addr, 1);
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, lc->ud_ref);
    return 1;
}

/* ---- methods -------------------------------------------------------------- */

/* Raises for a method a UDP flow does not have. */
static void not_for_flows(lua_State *L, struct lconn *lc, const char *method, const char *why)
{
    if (lc && (lc->c.flags & CONN_DGRAM))
        luaL_error(L, "%s: not supported on a UDP flow (%s)", method, why);
}

/* A flow's write is one datagram: it must fit in one of the peer's family
 * (an outbound flow whose name is not resolved yet: IPv6's, the larger). */
static void check_datagram(lua_State *L, struct lconn *lc, size_t len)
{
    if (!lc || !(lc->c.flags & CONN_DGRAM))
        return;
    int family = lc->c.peer_len ? lc->c.peer.sa.sa_family : AF_INET6;
    size_t max = udp_max_payload(family);
    if (len > max)
        luaL_argerror(L, 2, lua_pushfstring(L, "a UDP datagram over %s holds at most %d bytes",
                                            family == AF_INET ? "IPv4" : "IPv6", (int)max));
}

static int m_write(lua_State *L)
{
    struct lconn *lc = check_conn(L, 1);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    check_datagram(L, lc, len);
    if (!lc)
        return closed(L);
    int rc = conn_write_fair(&lc->c, data, len);
    if (rc >= 0) {
        lua_pushboolean(L, rc);
        return 1;
    }
    lua_pushnil(L);
    lua_pushstring(L, rc == -2 ? "output buffer limit exceeded" : "closed");
    return 2;
}

/* The serve coroutine of lc, if L is it. */
static int in_serve(struct lconn *lc, lua_State *L)
{
    return lc->co == L;
}

static int m_send(lua_State *L)
{
    struct lconn *lc = check_conn(L, 1);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    check_datagram(L, lc, len);
    if (!lc)
        return closed(L);
    int rc = conn_write_fair(&lc->c, data, len);
    if (rc < 0) {
        lua_pushnil(L);
        lua_pushstring(L, rc == -2 ? "output buffer limit exceeded" : "closed");
        return 2;
    }
    if (rc == 0 && in_serve(lc, L)) {
        lc->wait = WAIT_SEND;
        return lua_yield(L, 0); /* resumed by on_drain or the close */
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int start_receive(lua_State *L, struct lconn *lc, enum wait w, size_t want)
{
    if (!in_serve(lc, L))
        return luaL_error(L, "receive: call it from this connection's serve coroutine");
    lc->wait = w;
    lc->want = want;
    if (lc->c.flags & CONN_DGRAM)
        return lua_yield(L, 0); /* datagrams are never buffered: the next one */
    size_t used;
    int n = satisfy(lc, L, lc->in ? lc->in + lc->in_off : "", unread(lc), &used);
    if (n) {
        lc->wait = WAIT_NONE;
        in_consume(lc, used);
        update_hold(lc);
        return n;
    }
    update_hold(lc);
    return lua_yield(L, 0); /* resumed by serve_input or the close */
}

static int m_receive(lua_State *L)
{
    struct lconn *lc = check_conn(L, 1);
    enum wait w = WAIT_LINE;
    size_t want = 0;
    if (lc && (lc->c.flags & CONN_DGRAM)) {
        /* a flow's receive() is its next datagram, whole */
        if (!lua_isnoneornil(L, 2))
            not_for_flows(L, lc, "receive",
                          "a flow receives whole datagrams: call receive() without a pattern");
        return start_receive(L, lc, WAIT_ANY, SIZE_MAX);
    }
    if (lua_type(L, 2) == LUA_TNUMBER) {
        lua_Integer n = luaL_checkinteger(L, 2);
        luaL_argcheck(L, n >= 0, 2, "byte count must be >= 0");
        w = WAIT_N;
        want = (size_t)n;
    } else if (!lua_isnoneornil(L, 2)) {
        const char *pat = luaL_checkstring(L, 2);
        if (pat[0] == '*')
            pat++;
        if (!strcmp(pat, "l"))
            w = WAIT_LINE;
        else if (!strcmp(pat, "a"))
            w = WAIT_ALL;
        else
            return luaL_argerror(L, 2, "expected \"*l\", \"*a\" or a byte count");
    }
    if (!lc) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        lua_pushliteral(L, "");
        return 3;
    }
    return start_receive(L, lc, w, want);
}

static int m_receiveany(lua_State *L)
{
    struct lconn *lc = check_conn(L, 1);
    lua_Integer max = luaL_optinteger(L, 2, 65536);
    luaL_argcheck(L, max > 0, 2, "max must be > 0");
    if (!lc) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        lua_pushliteral(L, "");
        return 3;
    }
    return start_receive(L, lc, WAIT_ANY, (size_t)max);
}

int lconn_sleep(lua_State *L)
{
    double s = luaL_checknumber(L, 1);
    luaL_argcheck(L, s >= 0, 1, "seconds must be >= 0");
    struct lconn *lc = *(struct lconn **)lua_getextraspace(L);
    if (!lc || lc->co != L)
        return luaL_error(L, "echokit.sleep: only inside serve (use echokit.timer in callbacks)");
    if (lc->c.flags & CONN_DEAD)
        return closed(L);
    lc->wait = WAIT_SLEEP;
    ev_timer_set(&lc->sleep, s, 0);
    ev_timer_start(lc->c.ctx->loop, &lc->sleep);
    return lua_yield(L, 0);
}

static int m_close(lua_State *L)
{
    struct lconn *lc = check_conn(L, 1);
    if (lc)
        conn_close(&lc->c);
    return 0;
}

static int m_reset(lua_State *L)
{
    struct lconn *lc = check_conn(L, 1);
    if (lc)
        conn_abort(&lc->c, "reset", 1);
    return 0;
}

static int m_shutdown(lua_State *L)
{
    struct lconn *lc = check_conn(L, 1);
    not_for_flows(L, lc, "shutdown", "datagrams have no half-close: use close");
    if (!lc)
        return closed(L);
    conn_shutdown(&lc->c);
    lua_pushboolean(L, 1);
    return 1;
}

static int m_pause(lua_State *L)
{
    struct lconn *lc = check_conn(L, 1);
    if (lc)
        conn_set_paused(&lc->c, 1);
    return 0;
}

static int m_resume(lua_State *L)
{
    struct lconn *lc = check_conn(L, 1);
    if (lc)
        conn_set_paused(&lc->c, 0);
    return 0;
}

static int push_addr(lua_State *L, const struct sockaddr *sa, socklen_t len)
{
    char host[128];
    int port;
    net_addr_split(sa, len, host, sizeof host, &port);
    lua_pushstring(L, host);
    if (sa->sa_family == AF_UNIX)
        return 1;
    lua_pushinteger(L, port);
    return 2;
}

static int m_sockname(lua_State *L)
{
    struct lconn *lc = check_conn(L, 1);
    if (!lc)
        return closed(L);
    struct net_addr a;
    if (net_local_addr(lc->c.fd, &a) < 0) {
        lua_pushnil(L);
        lua_pushstring(L, strerror(errno));
        return 2;
    }
    return push_addr(L, (struct sockaddr *)&a.ss, a.len);
}

static int m_peer(lua_State *L)
{
    struct lconn *lc = check_conn(L, 1);
    if (!lc)
        return closed(L);
    if (lc->c.peer.sa.sa_family == AF_UNIX)
        return m_sockname(L); /* unix peers are unnamed: the path they reached */
    return push_addr(L, &lc->c.peer.sa, lc->c.peer_len);
}

static int m_buffered(lua_State *L)
{
    struct lconn *lc = check_conn(L, 1);
    lua_pushinteger(L, lc ? (lua_Integer)conn_queued(&lc->c) : 0);
    return 1;
}

static int m_set_timeout(lua_State *L)
{
    struct lconn *lc = check_conn(L, 1);
    double s = luaL_optnumber(L, 2, 0);
    luaL_argcheck(L, s >= 0, 2, "seconds must be >= 0 (nil for none)");
    if (!lc)
        return closed(L);
    conn_set_timeout(&lc->c, s);
    lua_pushboolean(L, 1);
    return 1;
}

/* A function at opts[key], or nil. Raises on another type. [-0, +1, e] */
static int opt_function(lua_State *L, const char *key)
{
    if (!lua_istable(L, 3)) {
        lua_pushnil(L);
        return 0;
    }
    int t = lua_getfield(L, 3, key);
    if (t != LUA_TFUNCTION && t != LUA_TNIL)
        return luaL_error(L, "pipe: opts.%s must be a function (got %s)", key, lua_typename(L, t));
    return t == LUA_TFUNCTION;
}

static void drop_taps(lua_State *L, struct lconn *lc)
{
    script_unref(L, &lc->tap_ref);
    script_unref(L, &lc->tap_eof_ref);
    lc->c.flags &= ~(unsigned)(CONN_TAP | CONN_TAP_EOF);
}

/* conn:pipe(other [, opts]): opts.tap(data, conn), opts.on_eof(conn),
 * opts.reset (a reset of either end resets the other). */
static int m_pipe(lua_State *L)
{
    struct lconn *lc = check_conn(L, 1);
    struct lconn *to = check_conn(L, 2);
    if (!lua_isnoneornil(L, 3))
        luaL_checktype(L, 3, LUA_TTABLE);
    if (!lc || !to)
        return closed(L);
    lua_settop(L, 3);
    int reset = 0;
    if (lua_istable(L, 3)) {
        lua_getfield(L, 3, "reset");
        reset = lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    int tap = opt_function(L, "tap");
    int eof = opt_function(L, "on_eof");
    /* stack: conn, other, opts, tap|nil, on_eof|nil. The references are
     * taken first: they may raise, and the pipe is not made then. */
    int eof_ref = eof ? script_ref(L) : (lua_pop(L, 1), LUA_NOREF);
    int tap_ref = tap ? script_ref(L) : (lua_pop(L, 1), LUA_NOREF);
    int rc = conn_pipe(&lc->c, &to->c, reset);
    if (rc < 0) {
        script_unref(L, &eof_ref);
        script_unref(L, &tap_ref);
        if (rc == -2)
            return closed(L);
        if (rc == -3)
            return luaL_error(L, "pipe: not supported between a UDP flow and a stream "
                                 "connection (pipe flow to flow, or write each datagram)");
        return luaL_error(L, "pipe: the destination already has another connection piped into it");
    }
    drop_taps(L, lc);
    lc->tap_eof_ref = eof_ref;
    lc->tap_ref = tap_ref;
    if (eof)
        lc->c.flags |= CONN_TAP_EOF;
    if (tap)
        lc->c.flags |= CONN_TAP;
    lua_pushboolean(L, 1);
    return 1;
}

static int m_unpipe(lua_State *L)
{
    struct lconn *lc = check_conn(L, 1);
    if (lc) {
        conn_unpipe(&lc->c);
        drop_taps(L, lc);
    }
    return 0;
}

static int m_tostring(lua_State *L)
{
    struct lconn *lc = check_conn(L, 1);
    lua_getfield(L, 1, "id");
    if (!lc) {
        lua_pushfstring(L, "conn %s (closed)", luaL_tolstring(L, -1, NULL));
        return 1;
    }
    char label[200];
    conn_label(&lc->c, label, sizeof label);
    lua_pushstring(L, label);
    return 1;
}

void lconn_open(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"write", m_write},       {"send", m_send},         {"receive", m_receive},
        {"receiveany", m_receiveany}, {"close", m_close},   {"reset", m_reset},
        {"shutdown", m_shutdown}, {"pause", m_pause},       {"resume", m_resume},
        {"peer", m_peer},         {"sockname", m_sockname}, {"buffered", m_buffered},
        {"set_timeout", m_set_timeout}, {"pipe", m_pipe}, {"unpipe", m_unpipe}, {NULL, NULL},
    };
    static const luaL_Reg meta[] = {{"__tostring", m_tostring}, {NULL, NULL}};
    script_class(L, CONN_MT, methods, meta);
}

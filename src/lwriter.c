/* echokit.writer(target [, opts]): output that never blocks the loop.
 *
 * A writer owns its own non-blocking handle on stderr or on a file, and an
 * output queue (outq.c) of at most opts.max bytes drained by an ev_io watcher
 * on the main loop. When the reader falls behind (a pipe nobody reads, a
 * stopped terminal) whole writes are dropped and counted instead of waited
 * for: a debugging dump must never freeze the connections it shows.
 *
 * Own handle: fd 2 is shared with echokit's log lines (log.c writes them
 * blocking, whole) and with whatever started echokit, so O_NONBLOCK is never
 * set on it. A pipe, FIFO or terminal on fd 2 is opened again through
 * /proc/self/fd/2, which gives a file description of its own; a socket is
 * written with MSG_DONTWAIT; a regular file never waits for a reader and is
 * written through a dup. */
#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "log.h"
#include "outq.h"
#include "script.h"
#include "util.h"

#define WRITER_MT "echokit.writer"
#define WRITER_MAX (1 << 20)

struct lwriter {
    struct outq q;
    ev_io io;        /* started (and unreferenced) while q holds bytes */
    struct script *S;
    int fd;          /* -1 once closed */
    int sock;        /* fd is a socket: sendmsg with MSG_DONTWAIT */
    int err;         /* errno of a failed write: everything is dropped since */
    size_t max;
    lua_Integer dropped; /* bytes */
    char name[200];
};

/* Opens the writer's own non-blocking handle on target ("stderr" or a path,
 * created or truncated). Returns the fd, or -1 with a message in err. */
static int open_target(const char *target, int *sock, char err[ECHOKIT_ERR_LEN])
{
    *sock = 0;
    if (strcmp(target, "stderr") != 0) {
        int fd = open(target, O_WRONLY | O_CREAT | O_TRUNC | O_NONBLOCK | O_CLOEXEC, 0666);
        if (fd < 0)
            snprintf(err, ECHOKIT_ERR_LEN, "cannot open '%s': %s", target, strerror(errno));
        return fd;
    }
    struct stat st;
    if (fstat(STDERR_FILENO, &st) < 0) {
        snprintf(err, ECHOKIT_ERR_LEN, "stderr: %s", strerror(errno));
        return -1;
    }
    if (!S_ISREG(st.st_mode) && !S_ISSOCK(st.st_mode)) {
        int fd = open("/proc/self/fd/2", O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
        if (fd >= 0)
            return fd;
        if (!S_ISFIFO(st.st_mode) || errno != ENXIO) {
            snprintf(err, ECHOKIT_ERR_LEN, "stderr: cannot open it without blocking: %s",
                     strerror(errno));
            return -1;
        }
        /* A pipe whose reader is gone: writes through the dup fail at once. */
    }
    *sock = S_ISSOCK(st.st_mode);
    int fd = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 3);
    if (fd < 0)
        snprintf(err, ECHOKIT_ERR_LEN, "stderr: %s", strerror(errno));
    return fd;
}

/* One non-blocking write of the queue. Returns bytes written (0 when the
 * reader is full), or -1 with errno. */
static ssize_t drain_once(struct lwriter *w)
{
    return w->sock ? outq_send(&w->q, w->fd) : outq_write(&w->q, w->fd);
}

static void watch(struct lwriter *w, int on)
{
    struct ev_loop *loop = w->S->ctx->loop;
    if (on && !ev_is_active(&w->io)) {
        ev_io_start(loop, &w->io);
        ev_unref(loop); /* pending output never keeps echokit running */
    } else if (!on && ev_is_active(&w->io)) {
        ev_ref(loop);
        ev_io_stop(loop, &w->io);
    }
}

/* A write failed (the reader is gone): logged once; what is queued and all
 * later output count as dropped. */
static void fail(struct lwriter *w, int err)
{
    w->err = err;
    w->dropped += (lua_Integer)w->q.len;
    outq_clear(&w->q);
    watch(w, 0);
    log_msg(LOG_WARN, "writer %s: %s; its output is dropped from now on", w->name,
            strerror(err));
}

static void io_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop;
    (void)revents;
    struct lwriter *w = container_of(io, struct lwriter, io);
    while (w->q.len) {
        ssize_t r = drain_once(w);
        if (r < 0) {
            fail(w, errno);
            return;
        }
        if (r == 0)
            return; /* full again: wait for the next EV_WRITE */
    }
    watch(w, 0);
}

/* Stops the watcher and closes the handle after one last non-blocking try;
 * what is still queued counts as dropped. */
static void shut(struct lwriter *w)
{
    if (w->fd < 0)
        return;
    while (w->q.len && !w->err && drain_once(w) > 0)
        ;
    w->dropped += (lua_Integer)w->q.len;
    outq_clear(&w->q);
    watch(w, 0);
    close(w->fd);
    w->fd = -1;
}


/* echokit.writer(target [, {max = BYTES}]) -> writer | nil, err */
int lwriter_new(lua_State *L)
{
    const char *target = luaL_checkstring(L, 1);
    size_t max = WRITER_MAX;
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lua_getfield(L, 2, "max");
        if (!lua_isnil(L, -1)) {
            lua_Integer m = 0;
            size_t parsed;
            if (lua_isinteger(L, -1))
                m = lua_tointeger(L, -1);
            else if (lua_type(L, -1) == LUA_TSTRING &&
                     util_parse_size(lua_tostring(L, -1), &parsed) == 0 &&
                     parsed <= (size_t)LUA_MAXINTEGER)
                m = (lua_Integer)parsed;
            luaL_argcheck(L, m > 0, 2, "max must be a byte count above 0");
            max = (size_t)m;
        }
        lua_pop(L, 1);
    }
    struct lwriter *w = lua_newuserdatauv(L, sizeof *w, 0);
    memset(w, 0, sizeof *w);
    w->fd = -1;
    w->S = script_of(L);
    w->max = max;
    snprintf(w->name, sizeof w->name, "%s", target);
    luaL_setmetatable(L, WRITER_MT);
    char err[ECHOKIT_ERR_LEN];
    w->fd = open_target(target, &w->sock, err);
    if (w->fd < 0) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    ev_io_init(&w->io, io_cb, w->fd, EV_WRITE);
    return 1;
}

/* writer:write(s) -> true | false, "dropped" | nil, "closed"   [-0, +1|2, m]
 * Takes s whole when the queue has room for it (or is empty), writing what the
 * reader takes at once and queueing the rest; otherwise drops s whole and
 * counts its bytes. */
static int w_write(lua_State *L)
{
    struct lwriter *w = luaL_checkudata(L, 1, WRITER_MT);
    size_t len;
    const char *s = luaL_checklstring(L, 2, &len);
    if (w->fd < 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        return 2;
    }
    if (w->err || (w->q.len && w->q.len + len > w->max)) {
        w->dropped += (lua_Integer)len;
        lua_pushboolean(L, 0);
        lua_pushliteral(L, "dropped");
        return 2;
    }
    size_t done = 0;
    if (w->q.len == 0 && len) {
        ssize_t r = w->sock ? send(w->fd, s, len, MSG_DONTWAIT | MSG_NOSIGNAL)
                            : write(w->fd, s, len);
        if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            fail(w, errno);
            w->dropped += (lua_Integer)len;
            lua_pushboolean(L, 0);
            lua_pushliteral(L, "dropped");
            return 2;
        }
        done = r > 0 ? (size_t)r : 0;
    }
    if (done < len) {
        if (outq_append(&w->q, s + done, len - done) < 0)
            return luaL_error(L, "not enough memory");
        watch(w, 1);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* writer:dropped() -> bytes dropped so far */
static int w_dropped(lua_State *L)
{
    struct lwriter *w = luaL_checkudata(L, 1, WRITER_MT);
    lua_pushinteger(L, w->dropped);
    return 1;
}

/* writer:buffered() -> bytes queued, not yet taken by the reader */
static int w_buffered(lua_State *L)
{
    struct lwriter *w = luaL_checkudata(L, 1, WRITER_MT);
    lua_pushinteger(L, (lua_Integer)w->q.len);
    return 1;
}

/* writer:close(): one last try, then what is queued is dropped. */
static int w_close(lua_State *L)
{
    shut(luaL_checkudata(L, 1, WRITER_MT));
    return 0;
}

static int w_tostring(lua_State *L)
{
    struct lwriter *w = luaL_checkudata(L, 1, WRITER_MT);
    lua_pushfstring(L, "writer: %s%s", w->name, w->fd < 0 ? " (closed)" : "");
    return 1;
}

/* Registers the writer metatable (script.c's table of bindings). [-0, +0, m] */
void lwriter_open(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"write", w_write}, {"dropped", w_dropped}, {"buffered", w_buffered},
        {"close", w_close}, {NULL, NULL},
    };
    static const luaL_Reg meta[] = {
        {"__gc", w_close}, {"__close", w_close}, {"__tostring", w_tostring}, {NULL, NULL},
    };
    script_class(L, WRITER_MT, methods, meta);
}

/* echokit.pcap(path): a capture file any handler can write TCP conversations
 * and UDP datagrams into (see pcap.h for the format). A file is a userdata
 * owning a struct pcap_file and a repeating timer that flushes it twice a
 * second, so killing echokit loses at most the last half second of traffic;
 * a stream (TCP or UDP) is a userdata whose first user value is its file,
 * which keeps the file alive. */
#include <lauxlib.h>
#include <string.h>

#include "log.h"
#include "pcap.h"
#include "script.h"

#define PCAP_MT "echokit.pcap"
#define STREAM_MT "echokit.pcap.stream"
#define UDP_MT "echokit.pcap.udp"
#define FLUSH_EVERY 0.5

struct lpcap {
    struct pcap_file f;
    ev_timer flush;
    struct script *S;
    int open;
    int reported; /* a write error was logged */
    uint32_t streams;
    char path[200];
};

struct lstream {
    struct pcap_stream s;
};

struct ludp {
    struct pcap_udp u;
    int closed;
};

static void report_error(struct lpcap *p)
{
    if (p->f.err && !p->reported) {
        p->reported = 1;
        log_msg(LOG_ERROR, "pcap: writing '%s' failed: %s; capture stopped", p->path,
                strerror(p->f.err));
    }
}

static void flush_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct lpcap *p = container_of(w, struct lpcap, flush);
    if (p->f.len && pcap_file_flush(&p->f) < 0)
        report_error(p);
}

static void lpcap_shut(struct lpcap *p)
{
    if (!p->open)
        return;
    p->open = 0;
    /* The timer was unreferenced so it never keeps the loop alive. */
    ev_ref(p->S->ctx->loop);
    ev_timer_stop(p->S->ctx->loop, &p->flush);
    if (pcap_file_close(&p->f) < 0)
        report_error(p);
}

/* echokit.pcap(path) -> file | nil, err   [-1, +1|2, m] */
int lpcap_open(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    struct script *S = script_of(L);
    struct lpcap *p = lua_newuserdatauv(L, sizeof *p, 0);
    memset(p, 0, sizeof *p);
    p->S = S;
    snprintf(p->path, sizeof p->path, "%s", path);
    char err[ECHOKIT_ERR_LEN];
    if (pcap_file_open(&p->f, path, err) < 0) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    p->open = 1;
    luaL_setmetatable(L, PCAP_MT);
    ev_timer_init(&p->flush, flush_cb, FLUSH_EVERY, FLUSH_EVERY);
    ev_timer_start(S->ctx->loop, &p->flush);
    ev_unref(S->ctx->loop);
    return 1;
}

static struct lpcap *check_open(lua_State *L, int idx)
{
    struct lpcap *p = luaL_checkudata(L, idx, PCAP_MT);
    return p->open ? p : NULL;
}

/* Push nil, "closed" or nil, the write error. [-0, +2, -] */
static int fail(lua_State *L, struct lpcap *p)
{
    lua_pushnil(L);
    if (p && p->f.err) {
        report_error(p);
        lua_pushstring(L, strerror(p->f.err));
    } else {
        lua_pushliteral(L, "closed");
    }
    return 2;
}

/* An endpoint from (host, port) at idx, idx+1. A host that is no IP
 * address (a unix socket's path, or nil) becomes SYNTH with a port that
 * tells the streams apart. */
static void get_endpoint(lua_State *L, int idx, struct pcap_endpoint *ep, const char *synth,
                         uint16_t synth_port)
{
    const char *host = luaL_optstring(L, idx, NULL);
    lua_Integer port = luaL_optinteger(L, idx + 1, 0);
    luaL_argcheck(L, port >= 0 && port <= 65535, idx + 1, "port out of range");
    if (host && pcap_endpoint_parse(ep, host, (uint16_t)port) == 0 && port > 0)
        return;
    pcap_endpoint_parse(ep, synth, synth_port);
}

/* file:stream(client_host, client_port, server_host, server_port [, proto])
 * -> stream | nil, err   [-0, +1|2, m]
 * proto "tcp" (the default) records a handshake now; "udp" records nothing
 * until the first datagram. */
static int p_stream(lua_State *L)
{
    static const char *const protos[] = {"tcp", "udp", NULL};
    struct lpcap *p = check_open(L, 1);
    int udp = luaL_checkoption(L, 6, "tcp", protos) == 1;
    if (!p)
        return fail(L, NULL);
    p->streams++;
    struct pcap_endpoint c, s;
    get_endpoint(L, 2, &c, "127.0.0.1", (uint16_t)(1024 + p->streams % 60000));
    get_endpoint(L, 4, &s, "127.0.0.2", 1);
    if (udp) {
        struct ludp *lu = lua_newuserdatauv(L, sizeof *lu, 1);
        memset(lu, 0, sizeof *lu);
        luaL_setmetatable(L, UDP_MT);
        lua_pushvalue(L, 1);
        lua_setiuservalue(L, -2, 1);
        pcap_udp_open(&lu->u, &c, &s);
        return 1;
    }
    struct lstream *ls = lua_newuserdatauv(L, sizeof *ls, 1);
    memset(ls, 0, sizeof *ls);
    luaL_setmetatable(L, STREAM_MT);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, 1);
    if (pcap_stream_open(&p->f, &ls->s, &c, &s, p->streams) < 0)
        return fail(L, p);
    return 1;
}

static int p_flush(lua_State *L)
{
    struct lpcap *p = check_open(L, 1);
    if (!p || pcap_file_flush(&p->f) < 0)
        return fail(L, p);
    lua_pushboolean(L, 1);
    return 1;
}

static int p_close(lua_State *L)
{
    struct lpcap *p = luaL_checkudata(L, 1, PCAP_MT);
    int had_err = p->f.err;
    lpcap_shut(p);
    if (p->f.err && !had_err)
        return fail(L, p);
    lua_pushboolean(L, !p->f.err);
    return 1;
}

static int p_gc(lua_State *L)
{
    lpcap_shut(luaL_checkudata(L, 1, PCAP_MT));
    return 0;
}

static int p_tostring(lua_State *L)
{
    struct lpcap *p = luaL_checkudata(L, 1, PCAP_MT);
    lua_pushfstring(L, "pcap: %s%s", p->path, p->open ? "" : " (closed)");
    return 1;
}

/* The stream at 1 and its file, or NULL when the file is closed. */
static struct lstream *check_stream(lua_State *L, struct lpcap **pp)
{
    struct lstream *ls = luaL_checkudata(L, 1, STREAM_MT);
    lua_getiuservalue(L, 1, 1);
    *pp = check_open(L, -1);
    lua_pop(L, 1);
    return ls;
}

static int side_arg(lua_State *L, int idx)
{
    static const char *const sides[] = {"client", "server", NULL};
    return luaL_checkoption(L, idx, NULL, sides);
}

static int done(lua_State *L, struct lpcap *p, int r)
{
    if (r < 0)
        return fail(L, p);
    lua_pushboolean(L, 1);
    return 1;
}

static int data_from(lua_State *L, int from)
{
    struct lpcap *p;
    struct lstream *ls = check_stream(L, &p);
    size_t len;
    const char *d = luaL_checklstring(L, 2, &len);
    if (!p)
        return fail(L, NULL);
    return done(L, p, pcap_stream_data(&p->f, &ls->s, from, d, len));
}

/* stream:client(data) / stream:server(data): bytes sent by that side. */
static int s_client(lua_State *L)
{
    return data_from(L, PCAP_CLIENT);
}

static int s_server(lua_State *L)
{
    return data_from(L, PCAP_SERVER);
}

/* stream:fin(side) / stream:reset(side): OP for side "client" or "server". */
static int side_op(lua_State *L, int (*op)(struct pcap_file *, struct pcap_stream *, int))
{
    struct lpcap *p;
    struct lstream *ls = check_stream(L, &p);
    int side = side_arg(L, 2);
    if (!p)
        return fail(L, NULL);
    return done(L, p, op(&p->f, &ls->s, side));
}

/* stream:fin(side): that side closed its sending direction. */
static int s_fin(lua_State *L)
{
    return side_op(L, pcap_stream_fin);
}

/* stream:reset(side): that side aborted with a RST. */
static int s_reset(lua_State *L)
{
    return side_op(L, pcap_stream_rst);
}

/* stream:close(): FIN from each side that has not sent one. */
static int s_close(lua_State *L)
{
    struct lpcap *p;
    struct lstream *ls = check_stream(L, &p);
    if (!p)
        return fail(L, NULL);
    int r = pcap_stream_fin(&p->f, &ls->s, PCAP_CLIENT);
    if (r == 0)
        r = pcap_stream_fin(&p->f, &ls->s, PCAP_SERVER);
    return done(L, p, r);
}

/* stream:bytes() -> client bytes, server bytes recorded */
static int s_bytes(lua_State *L)
{
    struct lstream *ls = luaL_checkudata(L, 1, STREAM_MT);
    lua_pushinteger(L, (lua_Integer)ls->s.bytes[PCAP_CLIENT]);
    lua_pushinteger(L, (lua_Integer)ls->s.bytes[PCAP_SERVER]);
    return 2;
}

/* The UDP stream at 1 and its file, or NULL when the file or the stream is
 * closed. */
static struct ludp *check_udp(lua_State *L, struct lpcap **pp)
{
    struct ludp *lu = luaL_checkudata(L, 1, UDP_MT);
    lua_getiuservalue(L, 1, 1);
    *pp = lu->closed ? NULL : check_open(L, -1);
    lua_pop(L, 1);
    return lu;
}

/* One datagram from side FROM, the data at idx. [-0, +1|2, m] */
static int udp_datagram(lua_State *L, int from, int idx)
{
    struct lpcap *p;
    struct ludp *lu = check_udp(L, &p);
    size_t len;
    const char *d = luaL_checklstring(L, idx, &len);
    if (!p)
        return fail(L, NULL);
    int r = pcap_udp_datagram(&p->f, &lu->u, from, d, len);
    if (r == PCAP_TOO_BIG) {
        lua_pushnil(L);
        lua_pushfstring(L, "datagram of %I bytes is over the %I an %s packet can carry",
                        (lua_Integer)len, (lua_Integer)pcap_udp_max(lu->u.ep[from].family),
                        lu->u.ep[from].family == AF_INET6 ? "IPv6" : "IPv4");
        return 2;
    }
    return done(L, p, r);
}

/* udp:write(side, data): one datagram sent by "client" or "server". */
static int u_write(lua_State *L)
{
    return udp_datagram(L, side_arg(L, 2), 3);
}

/* udp:client(data) / udp:server(data): as a TCP stream's, one datagram. */
static int u_client(lua_State *L)
{
    return udp_datagram(L, PCAP_CLIENT, 2);
}

static int u_server(lua_State *L)
{
    return udp_datagram(L, PCAP_SERVER, 2);
}

/* udp:fin / udp:reset: misuse; UDP has neither. */
static int u_no_end(lua_State *L)
{
    luaL_checkudata(L, 1, UDP_MT);
    return luaL_error(L, "pcap: a UDP stream has no FIN or RST (close() ends it)");
}

/* udp:close(): nothing more is recorded (no record of its own). */
static int u_close(lua_State *L)
{
    struct ludp *lu = luaL_checkudata(L, 1, UDP_MT);
    lu->closed = 1;
    lua_pushboolean(L, 1);
    return 1;
}

/* udp:bytes() -> client bytes, server bytes recorded */
static int u_bytes(lua_State *L)
{
    struct ludp *lu = luaL_checkudata(L, 1, UDP_MT);
    lua_pushinteger(L, (lua_Integer)lu->u.bytes[PCAP_CLIENT]);
    lua_pushinteger(L, (lua_Integer)lu->u.bytes[PCAP_SERVER]);
    return 2;
}

/* udp:datagrams() -> client datagrams, server datagrams recorded */
static int u_datagrams(lua_State *L)
{
    struct ludp *lu = luaL_checkudata(L, 1, UDP_MT);
    lua_pushinteger(L, (lua_Integer)lu->u.datagrams[PCAP_CLIENT]);
    lua_pushinteger(L, (lua_Integer)lu->u.datagrams[PCAP_SERVER]);
    return 2;
}

void lpcap_open_lib(lua_State *L)
{
    static const luaL_Reg pmethods[] = {
        {"stream", p_stream}, {"flush", p_flush}, {"close", p_close}, {NULL, NULL},
    };
    static const luaL_Reg smethods[] = {
        {"client", s_client}, {"server", s_server}, {"fin", s_fin},     {"reset", s_reset},
        {"close", s_close},   {"bytes", s_bytes},   {NULL, NULL},
    };
    static const luaL_Reg pmeta[] = {
        {"__gc", p_gc}, {"__close", p_gc}, {"__tostring", p_tostring}, {NULL, NULL},
    };
    script_class(L, PCAP_MT, pmethods, pmeta);
    static const luaL_Reg umethods[] = {
        {"write", u_write},     {"client", u_client}, {"server", u_server},
        {"fin", u_no_end},      {"reset", u_no_end},  {"close", u_close},
        {"bytes", u_bytes},     {"datagrams", u_datagrams}, {NULL, NULL},
    };
    script_class(L, STREAM_MT, smethods, NULL);
    script_class(L, UDP_MT, umethods, NULL);
}

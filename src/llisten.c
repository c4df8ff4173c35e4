/* echokit.listen(addr, handler): listeners opened at run time, each with its
 * own callback table (a runtime-created proxy, the control API). A udp://
 * listener makes flows (connections in datagram mode) running that table;
 * closing it ends its flows, which share its socket.
 *
 * A listener is a full userdata holding a struct server (accept loop, EMFILE
 * back-off) with one listening socket. While open it holds a registry
 * reference to itself, so the collector cannot take it while libev may still
 * call it, and one reference per callback; :close() (or shutdown) releases
 * them. Accepted connections take references of their own to the callbacks,
 * so they outlive the listener that accepted them. */
#include <lauxlib.h>
#include <stdio.h>
#include <string.h>

#include "adminsync.h"
#include "log.h"
#include "script.h"
#include "tls.h"

#define LISTEN_MT "echokit.listener"

struct llisten {
    struct server srv;
    struct script *S;
    struct handler h;
    int self_ref;
    int open;
    int adopted;    /* the socket is another process's too: never unlink it */
    char name[200]; /* as bound: "127.0.0.1:8474", "unix:/path", "udp://..." */
    ev_prepare release; /* UDP: drops self_ref once the socket's batch is over */
    struct llisten *next, **pprev; /* S->listeners while open */
};

/* server on_accept: the connection runs this listener's callbacks.
 * on_connect may close this listener and drop the last Lua reference to it;
 * a collection then would free srv, which accept_cb still reads when we
 * return. The userdata stays on the stack across the call so it cannot be
 * collected before accept_cb sees srv->accepting cleared. Only called while
 * open (self_ref valid). [-0, +0, m] */
static void ll_accept(struct server *srv, struct listener *l, int fd, const struct net_addr *peer)
{
    struct llisten *ll = container_of(srv, struct llisten, srv);
    lua_State *L = ll->S->L;
    int top = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, ll->self_ref);
    /* stack: ..., listener */
    lconn_accept(ll->S, fd, peer, &ll->h, l->data, -1);
    lua_settop(L, top);
}

/* server on_flow: a UDP listener's new peer gets a flow running this
 * listener's callbacks; the userdata stays on the stack as in ll_accept. */
static struct conn *ll_flow(struct server *srv, struct listener *l, const struct net_addr *peer)
{
    struct llisten *ll = container_of(srv, struct llisten, srv);
    lua_State *L = ll->S->L;
    int top = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, ll->self_ref);
    struct conn *c = lconn_flow(ll->S, &l->sock, peer, &ll->h, -1);
    lua_settop(L, top);
    return c;
}

static void release_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    struct llisten *ll = container_of(w, struct llisten, release);
    ev_prepare_stop(loop, w);
    script_unref(ll->S->L, &ll->self_ref); /* the userdata may go now */
}

/* Releases the references a listener took (its callbacks, itself); after
 * it the userdata may be collected. */
static void ll_unref(lua_State *L, struct llisten *ll)
{
    for (int i = 0; i < CB_COUNT; i++)
        script_unref(L, &ll->h.cb[i]);
    script_unref(L, &ll->self_ref);
}

/* Stops accepting, closes the socket and releases the references. Safe to
 * call twice. Not for lua_close (see ll_gc). */
static void ll_close(lua_State *L, struct llisten *ll)
{
    if (!ll->open)
        return;
    ll->open = 0;
    server_stop(&ll->srv); /* a UDP listener's flows end ("shutdown") */
    if (!ll->adopted)
        server_unlink_unix(&ll->srv);
    if (ll->pprev) {
        *ll->pprev = ll->next;
        if (ll->next)
            ll->next->pprev = ll->pprev;
        ll->next = NULL;
        ll->pprev = NULL;
    }
    if (!ll->srv.ls[0].udp) {
        ll_unref(L, ll);
        return;
    }
    /* Closed from a flow's callback, the socket's reading loop still runs
     * (udp.c looks at the closed socket after the callback): the userdata
     * holding it is kept until the loop turns. */
    for (int i = 0; i < CB_COUNT; i++)
        script_unref(L, &ll->h.cb[i]);
    ev_prepare_start(ll->S->ctx->loop, &ll->release);
}

static int ll_new(lua_State *L, const char *spec, int fd, struct tls_server *tls);

/* echokit.listen(addr, handler) -> listener | nil, err.
 * The address must be numeric (or "localhost", taken as 127.0.0.1): this runs
 * on the event loop, where a name lookup would block every connection. A
 * malformed or non-numeric address or a bad handler raises (misuse); an
 * address that cannot be bound (taken, no permission) returns nil and the
 * reason, and so does a call once shutdown has begun ("shutting down").
 * [-2, +1|2, e] */
int llisten_listen(lua_State *L)
{
    const char *spec = luaL_checkstring(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    if (!lua_isnoneornil(L, 3))
        luaL_checktype(L, 3, LUA_TTABLE);
    lua_settop(L, 3);
    const char *scheme = "";
    if (!strncmp(spec, "udp://", 6)) {
        scheme = "udp://";
        spec += 6;
        if (lua_getfield(L, 2, "on_datagram") != LUA_TNIL)
            return luaL_error(L, "echokit.listen: on_datagram is for --listen udp:// "
                                 "listeners; here datagrams come as flows (on_data)");
        lua_pop(L, 1);
    }
    struct tls_server *tls = NULL;
    if (!*scheme && tls_scheme(&spec)) {
        /* opts.tls: conn:starttls's server options; else the --tls-* ones */
        lua_getfield(L, 3, "tls");
        tls = ltls_server(L, lua_gettop(L), "echokit.listen");
        lua_pop(L, 1);
    }
    struct net_addr probe;
    char err[ECHOKIT_ERR_LEN], host[256], mapped[300];
    int port;
    int rc = net_parse_addr2(spec, 0, &probe, host, sizeof host, &port, err);
    if (rc < 0)
        return luaL_error(L, "echokit.listen: %s", err);
    if (rc == 1) {
        if (strcmp(host, "localhost") != 0)
            return luaL_error(L, "echokit.listen: %s: '%s' is not a numeric address (names are "
                              "not looked up here: give an IP address, or localhost)", spec, host);
        snprintf(mapped, sizeof mapped, "%s127.0.0.1:%d", scheme, port);
        spec = mapped;
    } else if (*scheme) {
        snprintf(mapped, sizeof mapped, "%s%s", scheme, spec);
        spec = mapped;
    }
    script_check_handler(L, 2, "echokit.listen"); /* raises on misuse */
    return ll_new(L, spec, -1, tls);
}

/* The listener userdata for the handler at index 2, listening on spec, or
 * on fd (already listening) when fd >= 0. Returns its Lua results. */
static int ll_new(lua_State *L, const char *spec, int fd, struct tls_server *tls)
{
    struct script *S = script_of(L);
    char err[ECHOKIT_ERR_LEN];
    if (S->listen_closed) {
        /* shutdown closed the listeners: one opened now (an on_close) would
         * outlive the loop */
        lua_pushnil(L);
        lua_pushliteral(L, "shutting down");
        return 2;
    }
    struct llisten *ll = lua_newuserdatauv(L, sizeof *ll, 0);
    memset(ll, 0, sizeof *ll);
    ll->S = S;
    ll->self_ref = LUA_NOREF;
    for (int i = 0; i < CB_COUNT; i++)
        ll->h.cb[i] = LUA_NOREF;
    luaL_setmetatable(L, LISTEN_MT);
    /* stack: addr, handler, ..., listener */
    server_init(&ll->srv, S->ctx);
    ll->srv.on_accept = ll_accept;
    ll->srv.on_flow = ll_flow;
    ev_prepare_init(&ll->release, release_cb);
    ll->srv.reuseport = S->reuseport; /* with --workers, each worker its own socket */
    /* The references first: they may raise (memory), and nothing would close
     * a socket bound before that (__gc only closes an open listener). */
    script_take_handler(L, 2, &ll->h);
    lua_pushvalue(L, -1);
    ll->self_ref = script_ref(L);
    if ((fd >= 0 ? server_adopt(&ll->srv, fd, err) : server_listen(&ll->srv, spec, err)) < 0) {
        ll_unref(L, ll);
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    ll->adopted = fd >= 0;
    ll->srv.ls[0].data = tls;
    snprintf(ll->name, sizeof ll->name, "%s", ll->srv.ls[0].udp ? "udp://" : "");
    server_listener_name(&ll->srv, 0, ll->name + strlen(ll->name),
                         sizeof ll->name - strlen(ll->name));
    ll->open = 1;
    ll->next = S->listeners;
    if (ll->next)
        ll->next->pprev = &ll->next;
    ll->pprev = &S->listeners;
    S->listeners = ll;
    server_start(&ll->srv);
    log_msg(LOG_DEBUG, "listening on %s (echokit.listen)", ll->name);
    return 1;
}

/* [-0, +0, v] */
static struct llisten *check_ll(lua_State *L)
{
    return luaL_checkudata(L, 1, LISTEN_MT);
}

/* listener:close(): stop accepting (connections already accepted carry on).
 * [-0, +0, -] */
static int m_close(lua_State *L)
{
    ll_close(L, check_ll(L));
    return 0;
}

/* listener:address() -> "HOST:PORT" as bound (port 0 resolved), or nil,
 * "closed". [-0, +1|2, -] */
static int m_address(lua_State *L)
{
    struct llisten *ll = check_ll(L);
    if (!ll->open) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        return 2;
    }
    lua_pushstring(L, ll->name);
    return 1;
}

/* [-0, +1, m] */
static int m_tostring(lua_State *L)
{
    struct llisten *ll = check_ll(L);
    lua_pushfstring(L, "listener %s%s", ll->name, ll->open ? "" : " (closed)");
    return 1;
}

/* [-0, +0, -] Only reached for an open listener by lua_close (an open one is referenced):
 * close the socket, leave the registry alone. */
static int m_gc(lua_State *L)
{
    struct llisten *ll = check_ll(L);
    if (ll->open) {
        ll->open = 0;
        server_stop(&ll->srv);
    }
    ev_prepare_stop(ll->S->ctx->loop, &ll->release);
    return 0;
}

/* Registers the listener metatable. [-0, +0, m] */
void llisten_open(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"close", m_close}, {"address", m_address}, {NULL, NULL},
    };
    static const luaL_Reg meta[] = {{"__tostring", m_tostring}, {"__gc", m_gc}, {NULL, NULL}};
    script_class(L, LISTEN_MT, methods, meta);
}

void llisten_close_all(struct script *S)
{
    S->listen_closed = 1;
    while (S->listeners)
        ll_close(S->L, S->listeners);
}

/* The control API's listener on a socket the master bound (upvalue 1: the
 * fd, taken once). (addr, handler) -> listener | nil, err. [-2, +1|2, e] */
static int l_adopt(lua_State *L)
{
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    int fd = (int)lua_tointeger(L, lua_upvalueindex(1));
    if (fd < 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "the control API's socket is taken already");
        return 2;
    }
    script_check_handler(L, 2, "echokit.listen");
    int n = ll_new(L, NULL, fd, NULL);
    if (n == 1) {
        lua_pushinteger(L, -1);
        lua_replace(L, lua_upvalueindex(1));
    }
    return n;
}

/* toxiproxy.publish(json) with --workers (upvalue 1: the shared region)
 * -> true | nil, err. [-1, +1|2, -] */
static int l_publish(lua_State *L)
{
    struct adminsync *sync = lua_touserdata(L, lua_upvalueindex(1));
    size_t len;
    const char *text = luaL_checklstring(L, 1, &len);
    if (adminsync_publish(sync, text, len) < 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "the configuration (%d bytes as JSON) is larger than the %d bytes "
                        "shared with the other workers: applied in this worker only",
                        (int)len, (int)ADMINSYNC_CAP);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* Pushes require("echokit.toxiproxy") in protected mode; msgh at index
 * top + 1. Returns 0, or -1 with the error on the stack. [-0, +1, -] */
static int require_toxiproxy(lua_State *L, int top)
{
    lua_getglobal(L, "require");
    lua_pushliteral(L, "echokit.toxiproxy");
    return lua_pcall(L, 1, 1, top + 1) == LUA_OK ? 0 : -1;
}

/* The message on top of the stack to err; the stack back to top. -1. */
static int failed(lua_State *L, int top, char *err, size_t errcap)
{
    const char *m = lua_tostring(L, -1);
    snprintf(err, errcap, "%s", m ? m : "unknown error");
    lua_settop(L, top);
    return -1;
}

/* Calls the module function on the stack above top + 2 (msgh at top + 1)
 * with nargs arguments, for two results: (value, nil) on success, (nil or
 * false, message) on failure. Returns 0 with both results on the stack, or
 * -1 with the stack as found and the reason (or dflt) in err. */
static int call_module(lua_State *L, int top, int nargs, char *err, size_t errcap,
                       const char *dflt)
{
    if (lua_pcall(L, nargs, 2, top + 1) != LUA_OK)
        return failed(L, top, err, errcap);
    if (!lua_toboolean(L, -2)) {
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_pushstring(L, dflt);
        }
        return failed(L, top, err, errcap);
    }
    return 0;
}

/* Runs require("echokit.toxiproxy").serve(addr) in protected mode; the stack
 * is left as found. With fd >= 0 the API takes that listening socket; with
 * sync, it publishes every change there. [-0, +0, -] */
int llisten_admin(struct script *S, const char *addr, int fd, struct adminsync *sync,
                  char *name, size_t namecap, char *err, size_t errcap)
{
    lua_State *L = S->L;
    int top = lua_gettop(L);
    lua_pushcfunction(L, script_msgh_bare);
    /* stack: msgh */
    if (require_toxiproxy(L, top) < 0)
        return failed(L, top, err, errcap);
    if (sync) {
        lua_pushlightuserdata(L, sync);
        lua_pushcclosure(L, l_publish, 1);
        lua_setfield(L, -2, "publish");
    }
    lua_getfield(L, -1, "serve");
    lua_pushstring(L, addr);
    if (fd >= 0) {
        lua_pushinteger(L, fd);
        lua_pushcclosure(L, l_adopt, 1);
    } else {
        lua_pushnil(L);
    }
    /* stack: msgh, module, serve, addr, listen */
    if (call_module(L, top, 2, err, errcap, "cannot listen") < 0)
        return -1;
    snprintf(name, namecap, "%s", lua_tostring(L, -2));
    lua_settop(L, top);
    return 0;
}

/* Runs require("echokit.toxiproxy").apply(text) in protected mode; the
 * stack is left as found. Returns 0, or -1 with the reason in err. */
int llisten_admin_apply(struct script *S, const char *text, size_t len, char *err,
                        size_t errcap)
{
    lua_State *L = S->L;
    int top = lua_gettop(L);
    lua_pushcfunction(L, script_msgh_bare);
    if (require_toxiproxy(L, top) < 0)
        return failed(L, top, err, errcap);
    lua_getfield(L, -1, "apply");
    lua_pushlstring(L, text, len);
    /* stack: msgh, module, apply, text */
    if (call_module(L, top, 1, err, errcap, "not applied") < 0)
        return -1;
    lua_settop(L, top);
    return 0;
}

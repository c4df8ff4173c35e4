/* echokit.listen(addr, handler): listeners opened at run time, each with its
 * own callback table (a runtime-created proxy, the control API).
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
    char name[200]; /* as bound: "127.0.0.1:8474", "unix:/path" */
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
    server_stop(&ll->srv);
    server_unlink_unix(&ll->srv);
    if (ll->pprev) {
        *ll->pprev = ll->next;
        if (ll->next)
            ll->next->pprev = ll->pprev;
        ll->next = NULL;
        ll->pprev = NULL;
    }
    ll_unref(L, ll);
}

/* echokit.listen(addr, handler) -> listener | nil, err.
 * The address must be numeric (or "localhost", taken as 127.0.0.1): this runs
 * on the event loop, where a name lookup would block every connection. A
 * malformed or non-numeric address or a bad handler raises (misuse); an
 * address that cannot be bound (taken, no permission) returns nil and the
 * reason. [-2, +1|2, e] */
int llisten_listen(lua_State *L)
{
    struct script *S = script_of(L);
    const char *spec = luaL_checkstring(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    if (!lua_isnoneornil(L, 3))
        luaL_checktype(L, 3, LUA_TTABLE);
    lua_settop(L, 3);
    struct tls_server *tls = NULL;
    if (tls_scheme(&spec)) {
        /* opts.tls: conn:starttls's server options; else the --tls-* ones */
        lua_getfield(L, 3, "tls");
        tls = ltls_server(L, lua_gettop(L), "echokit.listen");
        lua_pop(L, 1);
    }
    struct net_addr probe;
    char err[ECHOKIT_ERR_LEN], host[256], mapped[64];
    int port;
    int rc = net_parse_addr2(spec, 0, &probe, host, sizeof host, &port, err);
    if (rc < 0)
        return luaL_error(L, "echokit.listen: %s", err);
    if (rc == 1) {
        if (strcmp(host, "localhost") != 0)
            return luaL_error(L, "echokit.listen: %s: '%s' is not a numeric address (names are "
                              "not looked up here: give an IP address, or localhost)", spec, host);
        snprintf(mapped, sizeof mapped, "127.0.0.1:%d", port);
        spec = mapped;
    }
    script_check_handler(L, 2, "echokit.listen"); /* raises on misuse */

    struct llisten *ll = lua_newuserdatauv(L, sizeof *ll, 0);
    memset(ll, 0, sizeof *ll);
    ll->S = S;
    ll->self_ref = LUA_NOREF;
    for (int i = 0; i < CB_COUNT; i++)
        ll->h.cb[i] = LUA_NOREF;
    luaL_setmetatable(L, LISTEN_MT);
    /* stack: addr, handler, listener */
    server_init(&ll->srv, S->ctx);
    ll->srv.on_accept = ll_accept;
    ll->srv.reuseport = S->reuseport; /* with --workers, each worker its own socket */
    /* The references first: they may raise (memory), and nothing would close
     * a socket bound before that (__gc only closes an open listener). */
    script_take_handler(L, 2, &ll->h);
    lua_pushvalue(L, -1);
    ll->self_ref = script_ref(L);
    if (server_listen(&ll->srv, spec, err) < 0) {
        ll_unref(L, ll);
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    ll->srv.ls[0].data = tls;
    server_listener_name(&ll->srv, 0, ll->name, sizeof ll->name);
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
    while (S->listeners)
        ll_close(S->L, S->listeners);
}

/* Runs require("echokit.toxiproxy").serve(addr) in protected mode; the stack
 * is left as found. [-0, +0, -] */
int llisten_admin(struct script *S, const char *addr, char *name, size_t namecap, char *err,
                  size_t errcap)
{
    lua_State *L = S->L;
    int top = lua_gettop(L);
    lua_pushcfunction(L, script_msgh_bare);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "echokit.toxiproxy");
    /* stack: msgh, require, "echokit.toxiproxy" */
    if (lua_pcall(L, 1, 1, top + 1) != LUA_OK)
        goto fail;
    lua_getfield(L, -1, "serve");
    lua_pushstring(L, addr);
    /* stack: msgh, module, serve, addr */
    if (lua_pcall(L, 1, 2, top + 1) != LUA_OK)
        goto fail;
    if (lua_isnil(L, -2)) {
        snprintf(err, errcap, "%s", luaL_optstring(L, -1, "cannot listen"));
        lua_settop(L, top);
        return -1;
    }
    snprintf(name, namecap, "%s", lua_tostring(L, -2));
    lua_settop(L, top);
    return 0;
fail:
    snprintf(err, errcap, "%s", lua_tostring(L, -1));
    lua_settop(L, top);
    return -1;
}

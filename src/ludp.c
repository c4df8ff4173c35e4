/* Raw UDP for Lua: a handler with on_datagram(sock, data, peer) gets every
 * datagram of the UDP listeners, with no flows, and answers with
 * sock:sendto(data, peer). The flows themselves are connections (lconn.c).
 *
 * The socket handle is a full userdata holding the listener's udp_sock,
 * which lives as long as the process (it is embedded in the server's
 * listener table); a closed socket answers nil, "closed". One handle per
 * socket, cached in the registry. */
#include <lauxlib.h>
#include <string.h>

#include "script.h"
#include "udp.h"

#define UDP_MT "echokit.udp"
#define UDP_CACHE "echokit.udp.socks" /* lightuserdata(sock) -> handle */

struct ludp {
    struct udp_sock *s;
};

/* The handle of s, made on first use. [-0, +1, m] */
static void push_sock(lua_State *L, struct udp_sock *s)
{
    luaL_getsubtable(L, LUA_REGISTRYINDEX, UDP_CACHE);
    if (lua_rawgetp(L, -1, s) == LUA_TUSERDATA) {
        lua_remove(L, -2);
        return;
    }
    lua_pop(L, 1);
    struct ludp *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->s = s;
    luaL_setmetatable(L, UDP_MT);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, -3, s);
    lua_remove(L, -2);
}

struct dgram {
    struct udp_sock *s;
    const char *buf;
    size_t len;
    const struct net_addr *peer;
};

/* on_datagram(sock, data, "HOST:PORT"). [-0, +0, e] */
static int datagram_body(lua_State *L)
{
    struct dgram *d = lua_touserdata(L, 1);
    struct script *S = script_of(L);
    char name[160];
    net_addr_format((const struct sockaddr *)&d->peer->ss, d->peer->len, name, sizeof name);
    lua_rawgeti(L, LUA_REGISTRYINDEX, S->handler.cb[CB_DATAGRAM]);
    push_sock(L, d->s);
    lua_pushlstring(L, d->buf, d->len);
    lua_pushstring(L, name);
    lua_call(L, 3, 0);
    return 0;
}

void ludp_datagram(struct script *S, struct udp_sock *sock, const char *buf, size_t len,
                   const struct net_addr *peer)
{
    struct dgram d = {sock, buf, len, peer};
    script_invoke(S, datagram_body, &d, "on_datagram", NULL); /* an error is logged */
}

static struct udp_sock *check_sock(lua_State *L)
{
    return ((struct ludp *)luaL_checkudata(L, 1, UDP_MT))->s;
}

/* sock:sendto(data, peer): true, or nil, "closed". A peer that is not an
 * address of the socket's family raises. */
static int u_sendto(lua_State *L)
{
    struct udp_sock *s = check_sock(L);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    const char *spec = luaL_checkstring(L, 3);
    struct net_addr to;
    char err[ECHOKIT_ERR_LEN];
    if (net_parse_addr(spec, 0, &to, err) < 0)
        return luaL_error(L, "sendto: bad peer address: %s", err);
    if (s->fd < 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        return 2;
    }
    if (to.ss.ss_family != s->family)
        return luaL_error(L, "sendto: peer %s is not an address of this socket's family", spec);
    if (len > udp_max_payload(s->family))
        return luaL_argerror(L, 2, lua_pushfstring(L, "a UDP datagram over %s holds at most %d bytes",
                                                   s->family == AF_INET ? "IPv4" : "IPv6",
                                                   (int)udp_max_payload(s->family)));
    udp_sendto(s, data, len, &to);
    lua_pushboolean(L, 1);
    return 1;
}

static int u_sockname(lua_State *L)
{
    struct udp_sock *s = check_sock(L);
    struct net_addr a;
    if (s->fd < 0 || net_local_addr(s->fd, &a) < 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        return 2;
    }
    char host[128];
    int port;
    net_addr_split((const struct sockaddr *)&a.ss, a.len, host, sizeof host, &port);
    lua_pushstring(L, host);
    lua_pushinteger(L, port);
    return 2;
}

static int u_tostring(lua_State *L)
{
    struct udp_sock *s = check_sock(L);
    struct net_addr a;
    char name[160] = "closed";
    if (s->fd >= 0 && net_local_addr(s->fd, &a) == 0)
        net_addr_format((const struct sockaddr *)&a.ss, a.len, name, sizeof name);
    lua_pushfstring(L, "udp socket %s", name);
    return 1;
}

void ludp_open(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"sendto", u_sendto}, {"sockname", u_sockname}, {NULL, NULL},
    };
    static const luaL_Reg meta[] = {{"__tostring", u_tostring}, {NULL, NULL}};
    script_class(L, UDP_MT, methods, meta);
}

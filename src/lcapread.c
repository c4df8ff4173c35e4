/* echokit.capture(path): the TCP conversations of a capture file as Lua
 * tables (capread.h reads and reassembles them). While the tables are built
 * the C result is held by a userdata, so an error on the way (the
 * --lua-memory cap) leaves it to the garbage collector instead of leaking. */
#include <lauxlib.h>
#include <string.h>

#include "capread.h"
#include "script.h"

#define HOLD_MT "echokit.capture.result"

static int hold_gc(lua_State *L)
{
    capread_free(luaL_checkudata(L, 1, HOLD_MT));
    return 0;
}

/* [-0, +1, m] */
static void push_endpoint(lua_State *L, const struct capread_endpoint *ep)
{
    char host[64];
    lua_createtable(L, 0, 2);
    lua_pushstring(L, capread_addr_str(ep, host, sizeof host));
    lua_setfield(L, -2, "host");
    lua_pushinteger(L, ep->port);
    lua_setfield(L, -2, "port");
}

/* echokit.capture(path) -> conversations | nil, err. [-1, +1|2, m] */
int lcapread_capture(lua_State *L)
{
    size_t plen;
    const char *path = luaL_checklstring(L, 1, &plen);
    if (strlen(path) != plen) { /* the file opened would be another one */
        luaL_pushfail(L);
        lua_pushliteral(L, "the path contains a NUL byte");
        return 2;
    }
    struct capread_result *r = lua_newuserdatauv(L, sizeof *r, 0);
    memset(r, 0, sizeof *r);
    luaL_setmetatable(L, HOLD_MT);
    char err[ECHOKIT_ERR_LEN];
    if (capread_file(path, r, err) < 0) {
        luaL_pushfail(L);
        lua_pushstring(L, err);
        return 2;
    }
    /* stack: path, holder */
    lua_createtable(L, (int)(r->nconvs < 1u << 20 ? r->nconvs : 0), 3);
    for (size_t i = 0; i < r->nconvs; i++) {
        const struct capread_conv *c = &r->convs[i];
        lua_createtable(L, 0, 4);
        push_endpoint(L, &c->ep[CAPREAD_CLIENT]);
        lua_setfield(L, -2, "client");
        push_endpoint(L, &c->ep[CAPREAD_SERVER]);
        lua_setfield(L, -2, "server");
        lua_pushboolean(L, c->truncated);
        lua_setfield(L, -2, "truncated");
        lua_createtable(L, (int)(c->nmsgs < 1u << 20 ? c->nmsgs : 0), 0);
        for (size_t k = 0; k < c->nmsgs; k++) {
            const struct capread_msg *m = &c->msgs[k];
            lua_createtable(L, 0, 3);
            lua_pushstring(L, m->from == CAPREAD_CLIENT ? "client" : "server");
            lua_setfield(L, -2, "from");
            lua_pushlstring(L, (const char *)m->data, m->len);
            lua_setfield(L, -2, "data");
            lua_pushnumber(L, m->t);
            lua_setfield(L, -2, "t");
            lua_rawseti(L, -2, (lua_Integer)k + 1);
        }
        lua_setfield(L, -2, "messages");
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_pushinteger(L, (lua_Integer)r->packets);
    lua_setfield(L, -2, "packets");
    lua_pushinteger(L, (lua_Integer)r->skipped);
    lua_setfield(L, -2, "skipped");
    if (r->warning[0]) {
        lua_pushstring(L, r->warning);
        lua_setfield(L, -2, "warning");
    }
    capread_free(r); /* now, not at the next collection */
    return 1;
}

void lcapread_open(lua_State *L)
{
    static const luaL_Reg none[] = {{NULL, NULL}};
    static const luaL_Reg meta[] = {{"__gc", hold_gc}, {NULL, NULL}};
    script_class(L, HOLD_MT, none, meta);
}

/* require "echokit": the module table. */
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "hexdump.h"
#include "log.h"
#include "script.h"
#include "udp.h"
#include "util.h"

static int e_now(lua_State *L)
{
    lua_pushnumber(L, ev_now(script_of(L)->ctx->loop));
    return 1;
}

/* echokit.time(): the wall clock, seconds since the epoch as a float. */
static int e_time(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
    return 1;
}

/* echokit.size(v [, default]) [-0, +1, e]: a byte count written as the command
 * line takes them ("64k", "16m", "1g", "4096"; the same parser as --max-buffer),
 * `default` when v is nil; raises "not a size: v" otherwise, so a handler
 * argument that is wrong stops start-up with that message. */
static int e_size(lua_State *L)
{
    if (lua_isnoneornil(L, 1)) {
        lua_settop(L, 2);
        return 1;
    }
    const char *s = luaL_tolstring(L, 1, NULL);
    size_t v;
    if (util_parse_size(s, &v) < 0 || v > (size_t)LUA_MAXINTEGER)
        return luaL_error(L, "not a size: %s", s);
    lua_pushinteger(L, (lua_Integer)v);
    return 1;
}

/* echokit.isatty("stdin"|"stdout"|"stderr"): whether it is a terminal. */
static int e_isatty(lua_State *L)
{
    static const char *const names[] = {"stdin", "stdout", "stderr", NULL};
    int fd = luaL_checkoption(L, 1, NULL, names);
    lua_pushboolean(L, isatty(fd));
    return 1;
}

/* echokit.log(level, fmt, ...): formatted with string.format (upvalue 1). */
static int e_log(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    int level = log_level_parse(name);
    if (level < 0)
        return luaL_argerror(L, 1, "level must be \"debug\", \"info\", \"warn\" or \"error\"");
    if (!log_enabled((enum log_level)level))
        return 0;
    int n = lua_gettop(L);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_rotate(L, 2, 1);
    /* stack: level, format, fmt, args... */
    lua_call(L, n - 1, 1);
    log_msg((enum log_level)level, "%s", lua_tostring(L, -1));
    return 0;
}

static int e_hexdump(lua_State *L)
{
    size_t len;
    const char *data = luaL_checklstring(L, 1, &len);
    lua_Integer off = luaL_optinteger(L, 2, 0);
    luaL_argcheck(L, off >= 0, 2, "offset must be >= 0");
    luaL_Buffer b;
    char *out = luaL_buffinitsize(L, &b, hexdump_bound(len));
    size_t n = hexdump_format((const unsigned char *)data, len, (size_t)off, out);
    luaL_pushresultsize(&b, n);
    return 1;
}

static int e_stop(lua_State *L)
{
    struct script *S = script_of(L);
    if (S->on_stop)
        S->on_stop(S);
    return 0;
}

static void set_int(lua_State *L, const char *k, lua_Integer v)
{
    lua_pushinteger(L, v);
    lua_setfield(L, -2, k);
}

static int e_stats(lua_State *L)
{
    struct script *S = script_of(L);
    const struct conn_stats *st = &S->ctx->stats;
    lua_createtable(L, 0, 13);
    set_int(L, "connections_open", (lua_Integer)(st->open - st->flows)); /* flows: udp_flows */
    set_int(L, "connections_total", (lua_Integer)st->total);
    set_int(L, "bytes_in", (lua_Integer)st->bytes_in);
    set_int(L, "bytes_out", (lua_Integer)st->bytes_out);
    set_int(L, "errors", (lua_Integer)st->errors);
    set_int(L, "refs", (lua_Integer)S->refs);
    set_int(L, "lua_memory", (lua_Integer)S->mem_used);
    /* UDP: zeros until a datagram socket is in use */
    const struct udp_ctx *u = S->ctx->udp;
    struct udp_stats none = {0};
    const struct udp_stats *us = u ? &u->stats : &none;
    set_int(L, "udp_flows", u ? (lua_Integer)u->nflows : 0);
    set_int(L, "datagrams_in", (lua_Integer)us->dgrams_in);
    set_int(L, "datagrams_out", (lua_Integer)us->dgrams_out);
    set_int(L, "datagrams_dropped",
            (lua_Integer)(us->drop_send + us->drop_trunc + us->drop_flows + us->drop_rcvbuf +
                          us->drop_unread + us->drop_loop));
    set_int(L, "datagrams_dropped_flows", (lua_Integer)us->drop_flows);
    set_int(L, "datagrams_dropped_rcvbuf", (lua_Integer)us->drop_rcvbuf);
    return 1;
}

int lechokit_open(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"now", e_now},     {"hexdump", e_hexdump},   {"stop", e_stop},
        {"stats", e_stats}, {"timer", ltimer_timer},  {"every", ltimer_every},
        {"sleep", lconn_sleep}, {"connect", lconn_connect}, {"listen", llisten_listen},
        {"pcap", lpcap_open}, {"time", e_time},   {"isatty", e_isatty},
        {"size", e_size},   {"writer", lwriter_new}, {"tls_hello", ltls_hello},
        {"tls_check", ltls_check}, {"tls_keylog", ltls_keylog}, {"metrics_proxy", lmetrics_proxy},
        {"capture", lcapread_capture},
        {NULL, NULL},
    };
    struct script *S = script_of(L);
    luaL_newlib(L, funcs);
    lua_getglobal(L, "string");
    lua_getfield(L, -1, "format");
    lua_remove(L, -2);
    lua_pushcclosure(L, e_log, 1);
    lua_setfield(L, -2, "log");
    if (S->args_ref != LUA_NOREF)
        lua_rawgeti(L, LUA_REGISTRYINDEX, S->args_ref);
    else
        lua_newtable(L);
    lua_setfield(L, -2, "args");
    lua_pushliteral(L, ECHOKIT_VERSION);
    lua_setfield(L, -2, "version");
    return 1;
}

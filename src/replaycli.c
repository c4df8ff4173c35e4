/* `echokit replay ARGS...`: a client-side tool, not a server. Runs the
 * built-in lua/echokit/replay_client.lua on an event loop of its own, with
 * no listener: its main(args) drives outbound connections (echokit.connect)
 * and sets the module's `status` field before the loop runs out of work (or
 * it calls echokit.stop()). The process exits with that status. */
#include "replaycli.h"

#include <lauxlib.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "log.h"
#include "script.h"

#define MODULE "echokit.replay_client"
#define RBUF (256 * 1024)

struct run {
    int argc;
    char **argv;
};

static void stop(struct script *S)
{
    ev_break(S->ctx->loop, EVBREAK_ALL);
}

/* require(MODULE).main({argv...}). [-0, +0, e] */
static int start_body(lua_State *L)
{
    const struct run *r = lua_touserdata(L, 1);
    lua_getglobal(L, "require");
    lua_pushliteral(L, MODULE);
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "main");
    lua_createtable(L, r->argc, 0);
    for (int i = 0; i < r->argc; i++) {
        lua_pushstring(L, r->argv[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_call(L, 1, 0);
    return 0;
}

/* The module's status field, or 2 when it set none. [-0, +0, -] */
static int verdict(lua_State *L)
{
    int status = 2;
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    if (lua_getfield(L, -1, MODULE) == LUA_TTABLE &&
        lua_getfield(L, -1, "status") == LUA_TNUMBER)
        status = (int)lua_tointeger(L, -1);
    else
        fprintf(stderr, "echokit replay: ended without a verdict\n");
    lua_settop(L, 0);
    return status;
}

int replaycli_main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    log_setup(LOG_WARN, 0);
    struct ev_loop *loop = ev_default_loop(EVFLAG_AUTO);
    char *rbuf = malloc(RBUF);
    if (!loop || !rbuf) {
        fprintf(stderr, "echokit replay: cannot start the event loop\n");
        free(rbuf);
        return 1;
    }
    struct conn_ctx ctx;
    conn_ctx_init(&ctx, loop, rbuf, RBUF);
    ctx.connect_timeout = 10;
    struct script *S = script_new(&ctx, 0, 0);
    if (!S) {
        fprintf(stderr, "echokit replay: cannot create the Lua state\n");
        free(rbuf);
        return 1;
    }
    S->on_stop = stop;
    struct run r = {argc, argv};
    int status = 2;
    if (script_invoke(S, start_body, &r, "replay", NULL) == 0) {
        ev_run(loop, 0);
        status = verdict(S->L);
    }
    fflush(stdout);
    conn_ctx_release(&ctx);
    script_free(S);
    ev_loop_destroy(loop);
    free(rbuf);
    return status;
}

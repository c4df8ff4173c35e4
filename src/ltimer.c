/* echokit.timer / echokit.every: a userdata with an embedded ev_timer. An
 * active timer holds a registry reference to itself and one to its function,
 * so the collector cannot take it while libev may still call it; both are
 * released when it fires for the last time or is cancelled. */
#include <lauxlib.h>

#include "log.h"
#include "script.h"

#define TIMER_MT "echokit.timer"

struct ltimer {
    ev_timer w;
    struct script *S;
    int fn_ref, self_ref;
    int repeat;
};

/* On L, the running thread. [-0, +0, -] */
static void ltimer_release(lua_State *L, struct ltimer *t)
{
    ev_timer_stop(t->S->ctx->loop, &t->w);
    script_unref(L, &t->fn_ref);
    script_unref(L, &t->self_ref);
}

/* fn(timer); a one-shot timer releases its references first (it has fired
 * for the last time). [-0, +0, e] */
static int fire_body(lua_State *L)
{
    struct ltimer *t = lua_touserdata(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->fn_ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->self_ref);
    /* stack: ud, fn, timer. The timer object stays alive on the stack even
     * if released below. */
    if (!t->repeat)
        ltimer_release(L, t);
    lua_call(L, 1, 0);
    return 0;
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct ltimer *t = container_of(w, struct ltimer, w);
    struct script *S = t->S;
    int repeat = t->repeat;
    if (script_invoke(S, fire_body, t, repeat ? "every" : "timer", NULL) < 0 && repeat &&
        t->self_ref != LUA_NOREF) {
        log_msg(LOG_WARN, "echokit.every: timer cancelled after the error above");
        ltimer_release(S->L, t);
    }
}

static int new_timer(lua_State *L, int repeat)
{
    double s = luaL_checknumber(L, 1);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    if (repeat)
        luaL_argcheck(L, s > 0, 1, "interval must be > 0 seconds");
    else
        luaL_argcheck(L, s >= 0, 1, "seconds must be >= 0");
    struct script *S = script_of(L);
    struct ltimer *t = lua_newuserdatauv(L, sizeof *t, 0);
    t->S = S;
    t->repeat = repeat;
    t->fn_ref = t->self_ref = LUA_NOREF;
    ev_timer_init(&t->w, timer_cb, s, repeat ? s : 0);
    luaL_setmetatable(L, TIMER_MT);
    lua_pushvalue(L, 2);
    t->fn_ref = script_ref(L);
    lua_pushvalue(L, -1);
    t->self_ref = script_ref(L);
    ev_timer_start(S->ctx->loop, &t->w);
    return 1;
}

int ltimer_timer(lua_State *L)
{
    return new_timer(L, 0);
}

int ltimer_every(lua_State *L)
{
    return new_timer(L, 1);
}

static int t_cancel(lua_State *L)
{
    struct ltimer *t = luaL_checkudata(L, 1, TIMER_MT);
    int was = ev_is_active(&t->w);
    ltimer_release(L, t);
    lua_pushboolean(L, was);
    return 1;
}

static int t_gc(lua_State *L)
{
    struct ltimer *t = luaL_checkudata(L, 1, TIMER_MT);
    /* Only an inactive timer can be collected, but lua_close collects all. */
    ev_timer_stop(t->S->ctx->loop, &t->w);
    return 0;
}

void ltimer_open(lua_State *L)
{
    static const luaL_Reg methods[] = {{"cancel", t_cancel}, {NULL, NULL}};
    static const luaL_Reg meta[] = {{"__gc", t_gc}, {NULL, NULL}};
    script_class(L, TIMER_MT, methods, meta);
}

/* The pure-Lua protocol parsers (the modules in lua/echokit/) under a fuzzer: a Lua 5.4
 * state that loads the modules from the source tree and, per input, calls
 * one function of fuzz/lua/driver.lua (the target, FUZZ_LUA_TARGET at build
 * time). The driver feeds the input in pieces cut where the input says and
 * raises when an invariant breaks; a Lua error escaping it is a finding.
 *
 * An instruction-count hook stops an input that runs longer than its budget
 * (fuzz.budget(n) from the driver, scaled to the input's size): an endless or
 * quadratic loop in a parser is a finding too. Under libFuzzer
 * (FUZZ_LUA_COVERAGE) a line hook also feeds the Lua lines run, as edges,
 * into libFuzzer's extra counters: the Lua VM itself is not instrumented, so
 * this is what steers the fuzzer through the parsers. */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <string.h>

#include "fuzz.h"

#ifndef FUZZ_LUA_TARGET
#error "FUZZ_LUA_TARGET names the driver function"
#endif

int lcodec_open(lua_State *L);
int fuzz_glob_ref(const unsigned char *p, size_t plen, const unsigned char *s, size_t slen);

#define HOOK_EVERY 1000

static lua_State *L;
static int target_ref = LUA_NOREF;
static long long budget, spent;

#ifdef FUZZ_LUA_COVERAGE
__attribute__((used, section("__libfuzzer_extra_counters"))) static uint8_t lua_edges[1 << 16];
static uintptr_t prev_loc;
#endif

static void hook(lua_State *l, lua_Debug *ar)
{
#ifdef FUZZ_LUA_COVERAGE
    if (ar->event == LUA_HOOKLINE) {
        lua_getinfo(l, "S", ar);
        uintptr_t loc = ((uintptr_t)ar->source * 2654435761u) ^ ((uintptr_t)ar->currentline * 40503u);
        uintptr_t i = (loc ^ prev_loc) & (sizeof lua_edges - 1);
        if (lua_edges[i] < 255)
            lua_edges[i]++;
        prev_loc = loc >> 1;
        return;
    }
#endif
    if (ar->event != LUA_HOOKCOUNT)
        return;
    spent += HOOK_EVERY;
    if (budget > 0 && spent > budget) {
        luaL_traceback(l, l, NULL, 0);
        fprintf(stderr, "fuzz_lua: more than %lld Lua instructions for one input (a loop?)\n%s\n",
                budget, lua_tostring(l, -1));
        abort();
    }
}

/* fuzz.budget(n): the instruction budget of this input. [-1, +0, -] */
static int l_budget(lua_State *l)
{
    budget = (long long)luaL_checkinteger(l, 1);
    spent = 0;
    return 0;
}

/* fuzz.redis_match(pattern, subject) -> boolean: the reference for glob. [-2, +1, -] */
static int l_redis_match(lua_State *l)
{
    size_t plen, slen;
    const char *p = luaL_checklstring(l, 1, &plen);
    const char *s = luaL_checklstring(l, 2, &slen);
    lua_pushboolean(l, fuzz_glob_ref((const unsigned char *)p, plen, (const unsigned char *)s, slen));
    return 1;
}

static int msgh(lua_State *l)
{
    luaL_traceback(l, l, lua_tostring(l, 1), 1);
    return 1;
}

static const char *src_dir(void)
{
    const char *d = getenv("ECHOKIT_SRC");
    return d && *d ? d : ECHOKIT_SOURCE_DIR;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    if (L)
        return 0;
    L = luaL_newstate();
    FUZZ_CHECK(L, "luaL_newstate");
    luaL_openlibs(L);
    /* package.path: the library under test, then the driver */
    lua_getglobal(L, "package");
    lua_pushfstring(L, "%s/lua/?.lua;%s/fuzz/lua/?.lua", src_dir(), src_dir());
    lua_setfield(L, -2, "path");
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, lcodec_open);
    lua_setfield(L, -2, "echokit.codec");
    lua_pop(L, 2);
    static const luaL_Reg funcs[] = {{"budget", l_budget}, {"redis_match", l_redis_match}, {NULL, NULL}};
    luaL_newlib(L, funcs);
    lua_setglobal(L, "fuzz");

    lua_pushcfunction(L, msgh);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "driver");
    if (lua_pcall(L, 1, 1, -3) != LUA_OK) {
        fprintf(stderr, "fuzz_lua: loading the driver: %s\n", lua_tostring(L, -1));
        exit(2);
    }
    lua_getfield(L, -1, FUZZ_LUA_TARGET);
    FUZZ_CHECK(lua_isfunction(L, -1), "driver.%s is not a function", FUZZ_LUA_TARGET);
    target_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pop(L, 2);
#ifdef FUZZ_LUA_COVERAGE
    lua_sethook(L, hook, LUA_MASKCOUNT | LUA_MASKLINE, HOOK_EVERY);
#else
    lua_sethook(L, hook, LUA_MASKCOUNT, HOOK_EVERY);
#endif
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static unsigned long runs;
    if (!L)
        LLVMFuzzerInitialize(NULL, NULL);
    budget = 0;
    spent = 0;
#ifdef FUZZ_LUA_COVERAGE
    prev_loc = 0;
#endif
    lua_pushcfunction(L, msgh);
    lua_rawgeti(L, LUA_REGISTRYINDEX, target_ref);
    lua_pushlstring(L, (const char *)data, size);
    /* stack: msgh, driver function, input */
    if (lua_pcall(L, 1, 0, -3) != LUA_OK) {
        fprintf(stderr, "fuzz_lua %s: %s\n", FUZZ_LUA_TARGET, lua_tostring(L, -1));
        abort();
    }
    lua_pop(L, 1);
    budget = 0;
    if (++runs % 256 == 0)
        lua_gc(L, LUA_GCCOLLECT);
    return 0;
}

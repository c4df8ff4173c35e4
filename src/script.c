#include "script.h"

#include <errno.h>
#include <lauxlib.h>
#include <pthread.h>
#include <signal.h>
#include <sys/time.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "embed.h"
#include "log.h"
#include "metrics.h"

/* The CPU budget is watched from outside the Lua VM: a profiling timer
 * (SIGPROF, counting CPU time only, so an idle server gets none) looks at
 * which callback is running; when the same one has run for the whole budget,
 * the handler sets a count hook on the running thread (lua_sethook is safe in
 * a signal handler: lua.c stops scripts on SIGINT the same way). A hook set
 * all the time would make the VM trace every instruction, about a tenth of
 * echo.lua's cost per message. */
static struct script *budget_owner; /* the one script the signal handler sees */

const char *const script_cb_names[CB_COUNT] = {"on_connect", "on_data",  "on_eof", "on_drain",
                                               "on_close",   "serve",    "on_tls",
                                               "on_datagram"};

struct script *script_of(lua_State *L)
{
    void *ud;
    lua_getallocf(L, &ud);
    return ud;
}

/* Size classes for small blocks: class k holds blocks of 16k + 24 bytes, the
 * usable sizes of glibc's chunks, so a pooled block takes the same memory as
 * malloc(n) would. Lua tells the allocator a block's size when it frees or
 * resizes it, so a class needs no header. */
#define POOL_MAX_SIZE (16 * (SCRIPT_POOL_CLASSES - 1) + 24)

static int pool_class(size_t n)
{
    return n <= 24 ? 0 : (int)((n - 9) / 16);
}

/* A block of at least n bytes: from its class's free list if it is small. */
static void *pool_get(struct script *S, size_t n)
{
    if (n > POOL_MAX_SIZE)
        return malloc(n);
    int k = pool_class(n);
    void *p = S->pool.head[k];
    if (p) {
        S->pool.head[k] = *(void **)p;
        S->pool.n[k]--;
        return p;
    }
    return malloc(16 * (size_t)k + 24);
}

/* Gives back a block pool_get(n) returned: small ones to their free list
 * while it has room. */
static void pool_put(struct script *S, void *p, size_t n)
{
    int k = pool_class(n);
    if (n > POOL_MAX_SIZE || S->pool.n[k] >= S->pool.max) {
        free(p);
        return;
    }
    *(void **)p = S->pool.head[k];
    S->pool.head[k] = p;
    S->pool.n[k]++;
}

static void pool_drain(struct script *S)
{
    for (int k = 0; k < SCRIPT_POOL_CLASSES; k++) {
        while (S->pool.head[k]) {
            void *p = S->pool.head[k];
            S->pool.head[k] = *(void **)p;
            free(p);
        }
        S->pool.n[k] = 0;
    }
}

static void *l_alloc_any(struct script *S, void *ptr, size_t old, size_t nsize);

/* Lua's allocator. Counts Lua's memory so --lua-memory can refuse
 * allocations past the cap; Lua turns the refusal into a "not enough memory"
 * error in the caller. Every message a handler reads becomes a Lua string
 * that the collector frees soon after, so small blocks go through a free list
 * per size class instead of malloc and free (a sixth of echo.lua's
 * instructions per message went to malloc, realloc and free). */
static void *l_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    struct script *S = ud;
    size_t old = ptr ? osize : 0; /* without ptr, osize is the object's type */
    if (nsize == 0) {
        if (ptr)
            pool_put(S, ptr, old);
        S->mem_used -= old;
        return NULL;
    }
    /* The common case (every string a message becomes): a new small block
     * its class's free list has, within the cap. */
    if (!ptr && nsize <= POOL_MAX_SIZE &&
        (!S->mem_limit || S->mem_used + nsize <= S->mem_limit)) {
        int k = pool_class(nsize);
        void *p = S->pool.head[k];
        if (p) {
            S->pool.head[k] = *(void **)p;
            S->pool.n[k]--;
            S->mem_used += nsize;
            return p;
        }
    }
    return l_alloc_any(S, ptr, old, nsize);
}

/* l_alloc's other cases: a resize, a block from malloc, the cap. */
static __attribute__((noinline)) void *l_alloc_any(struct script *S, void *ptr, size_t old,
                                                   size_t nsize)
{
    if (S->mem_limit && nsize > old && S->mem_used + (nsize - old) > S->mem_limit &&
        !S->uncapped)
        return NULL;
    void *p;
    if (ptr && old <= POOL_MAX_SIZE && nsize <= POOL_MAX_SIZE &&
        pool_class(old) == pool_class(nsize)) {
        p = ptr; /* the block already has room */
    } else if (ptr && old > POOL_MAX_SIZE && nsize > POOL_MAX_SIZE) {
        p = realloc(ptr, nsize);
    } else {
        p = pool_get(S, nsize);
        if (!p && S->uncapped && S->reserve) {
            free(S->reserve); /* see script_call_ref */
            S->reserve = NULL;
            p = pool_get(S, nsize);
        }
        if (!p && nsize < old)
            return ptr; /* Lua counts on a shrink never failing: keep the block */
        if (p && ptr) {
            memcpy(p, ptr, old < nsize ? old : nsize);
            pool_put(S, ptr, old);
        }
    }
    if (p)
        S->mem_used = S->mem_used - old + nsize;
    return p;
}

/* Raises the budget error on every instruction while the overrun lasts, so
 * a pcall inside the handler cannot keep the callback running for long: the
 * first instruction outside that pcall raises again. A hook left on a thread
 * after its call ended removes itself. */
static void budget_hook(lua_State *L, lua_Debug *ar)
{
    struct script *S = script_of(L);
    if (!S->overrun) {
        lua_sethook(L, NULL, 0, 0);
        return;
    }
    char msg[LUA_IDSIZE + 80];
    lua_getinfo(L, "Sl", ar);
    if (ar->currentline > 0)
        snprintf(msg, sizeof msg, "%s:%d: CPU budget of %gs per callback exceeded",
                 ar->short_src, ar->currentline, S->budget);
    else
        snprintf(msg, sizeof msg, "CPU budget of %gs per callback exceeded", S->budget);
    lua_pushstring(L, msg);
    lua_error(L);
}

static void budget_signal(int sig)
{
    struct script *S = budget_owner;
    (void)sig;
    if (!S || !S->depth) {
        if (S)
            S->watch_ticks = 0;
        return;
    }
    if (S->watch_seq != S->call_seq) {
        S->watch_seq = S->call_seq;
        S->watch_ticks = 0;
        return;
    }
    if (++S->watch_ticks * S->tick >= S->budget) {
        /* Again on every tick while it lasts: the running thread may have
         * changed since (a coroutine that failed returned to its resumer). */
        S->overrun = 1;
        lua_sethook(S->running, budget_hook, LUA_MASKCOUNT, 1);
    }
}

/* Starts the profiling timer of this process for budget_owner. */
static void budget_arm(void)
{
    struct script *S = budget_owner;
    if (!S)
        return;
    struct itimerval it;
    it.it_interval.tv_sec = (time_t)S->tick;
    it.it_interval.tv_usec = (suseconds_t)((S->tick - (double)(time_t)S->tick) * 1e6);
    it.it_value = it.it_interval;
    setitimer(ITIMER_PROF, &it, NULL);
}

static void budget_setup(struct script *S)
{
    static int atfork_done;
    if (S->budget <= 0)
        return;
    /* Four looks per budget: an overrun is caught between 1 and 1.25 budgets. */
    S->tick = S->budget / 4;
    if (S->tick > 0.25)
        S->tick = 0.25;
    if (S->tick < 0.002)
        S->tick = 0.002;
    budget_owner = S;
    struct sigaction sa = {.sa_handler = budget_signal, .sa_flags = SA_RESTART};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGPROF, &sa, NULL);
    /* Interval timers are not inherited across fork(2): every child (a
     * worker) arms its own, so the budget holds in every process. */
    if (!atfork_done && pthread_atfork(NULL, NULL, budget_arm) == 0)
        atfork_done = 1;
    budget_arm();
}

static void budget_teardown(struct script *S)
{
    if (budget_owner != S)
        return;
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_PROF, &off, NULL);
    signal(SIGPROF, SIG_IGN);
    budget_owner = NULL;
}

/* A callback starts on thread L. Calls nest (a callback may cause another,
 * e.g. echokit.stop() accepting the backlog); the outermost one is timed. */
static lua_State *budget_begin(struct script *S, lua_State *L)
{
    lua_State *prev = S->running;
    S->running = L;
    if (S->depth++ == 0)
        S->call_seq++;
    return prev;
}

static void budget_end(struct script *S, lua_State *prev)
{
    S->running = prev;
    if (--S->depth == 0 && S->overrun) {
        S->overrun = 0; /* hooks still set remove themselves when next hit */
        S->call_seq++;
        metrics_add(&metrics_me->budget_trips, 1);
    }
}

lua_State *script_enter(struct script *S, lua_State *co)
{
    lua_State *prev = S->running;
    S->running = co;
    if (S->overrun) /* already over budget: the coroutine stops at once too */
        lua_sethook(co, budget_hook, LUA_MASKCOUNT, 1);
    return prev;
}

void script_leave(struct script *S, lua_State *prev)
{
    S->running = prev;
    if (S->overrun)
        lua_sethook(prev, budget_hook, LUA_MASKCOUNT, 1);
}

/* Message handler: the error as a string with a traceback. [-1, +1, m] */
static int msgh(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (!msg) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            msg = lua_tostring(L, -1);
        else
            msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

int script_msgh_bare(lua_State *L)
{
    if (!lua_isstring(L, 1))
        lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    return 1;
}

/* Lua calls this for an error outside any protected call, then aborts. Every
 * entry point runs protected, so this is a bug of ours: say what it was. */
static int panic(lua_State *L)
{
    const char *msg = lua_tostring(L, -1);
    log_msg(LOG_ERROR, "fatal: Lua error outside a protected call: %s",
            msg ? msg : "(not a string)");
    return 0;
}

int script_ref(lua_State *L)
{
    int ref = luaL_ref(L, LUA_REGISTRYINDEX);
    if (ref != LUA_REFNIL)
        script_of(L)->refs++;
    return ref;
}

void script_unref(lua_State *L, int *ref)
{
    if (*ref == LUA_NOREF || *ref == LUA_REFNIL) {
        *ref = LUA_NOREF;
        return;
    }
    luaL_unref(L, LUA_REGISTRYINDEX, *ref);
    script_of(L)->refs--;
    *ref = LUA_NOREF;
}

/* Callback errors logged (each with its traceback) per second; past that
 * they are counted, in one line when the second is over: an error per
 * datagram (or per reconnecting client) cannot flood the log, and the first
 * ones are still there in full. */
#define SCRIPT_ERRORS_PER_SECOND 10

static void errlog_flush(struct script *S)
{
    if (S->errlog.held)
        log_msg(LOG_WARN, "%llu more callback error(s) not logged (at most %d a second)",
                S->errlog.held, SCRIPT_ERRORS_PER_SECOND);
    S->errlog.shown = 0;
    S->errlog.held = 0;
}

static void errlog_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    ev_ref(loop); /* the expired timer was unref'd when started */
    errlog_flush(container_of(w, struct script, errlog.timer));
}

/* Whether this callback error gets its line: the first SCRIPT_ERRORS_PER_
 * SECOND of a second do. */
static int errlog_allow(struct script *S)
{
    struct ev_loop *loop = S->ctx ? S->ctx->loop : NULL;
    if (!loop || S->errlog.off)
        return 1;
    if (S->errlog.shown >= SCRIPT_ERRORS_PER_SECOND) {
        S->errlog.held++;
        return 0;
    }
    if (!S->errlog.shown++) {
        ev_timer_init(&S->errlog.timer, errlog_cb, 1.0, 0.);
        ev_timer_start(loop, &S->errlog.timer);
        ev_unref(loop); /* a pending count keeps no loop running */
    }
    return 1;
}

void script_fail(struct script *S, const char *what, struct conn *c, const char *msg)
{
    char label[200] = "";
    if (c)
        conn_label(c, label, sizeof label);
    if (errlog_allow(S))
        log_msg(LOG_ERROR, "%s%s%s: %s", label, c ? " " : "", what, msg);
    metrics_add(&metrics_me->callback_errors, 1);
    if (strstr(msg, "not enough memory"))
        metrics_add(&metrics_me->memory_trips, 1);
    if (!c)
        return;
    /* The reason carries the message's first line, not the traceback. */
    char reason[300];
    size_t n = strcspn(msg, "\n");
    snprintf(reason, sizeof reason, "error: %.*s", (int)(n > 280 ? 280 : n), msg);
    conn_abort(c, reason, 0);
}

/* After a protected call: 0, or -1 once the error on the stack is logged
 * and c torn down. [-(0|1), +0, -] */
static int call_result(struct script *S, int rc, const char *what, struct conn *c)
{
    if (rc == LUA_OK)
        return 0;
    const char *msg = lua_tostring(S->L, -1);
    script_fail(S, what, c, msg ? msg : "(error object is not a string)");
    lua_pop(S->L, 1);
    return -1;
}

int script_invoke(struct script *S, lua_CFunction body, void *ud, const char *what,
                  struct conn *c)
{
    lua_State *L = S->L;
    lua_State *prev = budget_begin(S, L);
    /* stack: msgh(1), ..., body, ud: pushing these allocates nothing */
    lua_pushcfunction(L, body);
    lua_pushlightuserdata(L, ud);
    int rc = lua_pcall(L, 1, 0, 1);
    budget_end(S, prev);
    return call_result(S, rc, what, c);
}

/* Big enough for the largest chunk the loop reads; untouched, so it costs
 * address space, not memory. */
#define RESERVE_SIZE (1024 * 1024)

struct ref_call {
    int fn, self;
    enum script_args args;
    const char *str;
    size_t len;
};

/* Pushes fn and its arguments. [-0, +3|2, m] */
static inline void push_ref_call(lua_State *L, const struct ref_call *a)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, a->fn);
    if (a->args == ARGS_STR_SELF)
        lua_pushlstring(L, a->str, a->len);
    lua_rawgeti(L, LUA_REGISTRYINDEX, a->self);
    if (a->args == ARGS_SELF_STR) {
        if (a->str)
            lua_pushlstring(L, a->str, a->len);
        else
            lua_pushnil(L);
    }
}

/* script_call_ref's call as a script_invoke body. [-0, +0, e] */
static int ref_body(lua_State *L)
{
    const struct ref_call *a = lua_touserdata(L, 1);
    push_ref_call(L, a);
    lua_call(L, a->args == ARGS_SELF ? 1 : 2, 0);
    return 0;
}

int script_call_ref(struct script *S, int fn, int self, enum script_args args, const char *str,
                    size_t len, const char *what, struct conn *c)
{
    lua_State *L = S->L;
    struct ref_call a = {fn, self, args, str, len};
    int allocates = args != ARGS_SELF && str;
    if (allocates && !S->reserve)
        S->reserve = malloc(RESERVE_SIZE);
    if (allocates && !S->reserve)
        return script_invoke(S, ref_body, &a, what, c); /* no reserve: protected */
    lua_State *prev = budget_begin(S, L);
    /* stack: msgh(1), ..., fn, args */
    S->uncapped = 1;
    push_ref_call(L, &a);
    S->uncapped = 0;
    int rc;
    /* Over the cap counts garbage too: collect before refusing, as Lua
     * itself does before an allocation fails. */
    if (allocates && S->mem_limit && S->mem_used > S->mem_limit)
        lua_gc(L, LUA_GCCOLLECT);
    if (allocates && S->mem_limit && S->mem_used > S->mem_limit) {
        lua_pop(L, 3);
        lua_pushliteral(L, "not enough memory");
        rc = LUA_ERRMEM;
    } else {
        rc = lua_pcall(L, args == ARGS_SELF ? 1 : 2, 0, 1);
    }
    budget_end(S, prev);
    return call_result(S, rc, what, c);
}

int script_resume(struct script *S, lua_State *co, int nargs, const char *what, struct conn *c)
{
    int nres;
    lua_State *L = S->L;
    lua_State *prev = script_enter(S, co);
    int rc = lua_resume(co, L, nargs, &nres);
    script_leave(S, prev);
    if (rc == LUA_OK || rc == LUA_YIELD) {
        lua_pop(co, nres);
        return rc;
    }
    /* The message and the coroutine's traceback, built on the caller's
     * (protected) stack: a memory error here fails the caller's call. */
    const char *msg = lua_tostring(co, -1);
    if (msg)
        lua_pushstring(L, msg);
    else
        lua_pushfstring(L, "(error object is a %s value)", luaL_typename(co, -1));
    luaL_traceback(L, co, lua_tostring(L, -1), 0);
    script_fail(S, what, c, lua_tostring(L, -1));
    lua_pop(L, 2);
    return rc;
}

/* coroutine.resume, keeping track of the running thread for the budget.
 * Upvalue 1: the library's resume. */
static int co_resume(lua_State *L)
{
    lua_State *co = lua_tothread(L, 1);
    luaL_argexpected(L, co != NULL, 1, "coroutine");
    struct script *S = script_of(L);
    lua_State *prev = script_enter(S, co);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    script_leave(S, prev);
    return lua_gettop(L);
}

/* coroutine.wrap on top of the wrapped resume, so wrapped coroutines are
 * tracked too. Errors pass through unchanged, as with the library's wrap. */
static const char wrap_lua[] =
    "local create, resume = coroutine.create, coroutine.resume\n"
    "local function pass(ok, ...)\n"
    "  if ok then return ... end\n"
    "  error((...), 0)\n"
    "end\n"
    "coroutine.wrap = function(f)\n"
    "  local co = create(f)\n"
    "  return function(...) return pass(resume(co, ...)) end\n"
    "end\n";

static void wrap_coroutines(lua_State *L)
{
    lua_getglobal(L, "coroutine");
    lua_getfield(L, -1, "resume");
    lua_pushcclosure(L, co_resume, 1);
    lua_setfield(L, -2, "resume");
    lua_pop(L, 1);
    if (luaL_loadbuffer(L, wrap_lua, sizeof wrap_lua - 1, "=[echokit]") == LUA_OK)
        lua_call(L, 0, 0);
    else
        lua_pop(L, 1);
}

void script_check_handler(lua_State *L, int idx, const char *who)
{
    idx = lua_absindex(L, idx);
    for (int i = 0; i < CB_COUNT; i++) {
        int t = lua_getfield(L, idx, script_cb_names[i]);
        if (t != LUA_TNIL && t != LUA_TFUNCTION)
            luaL_error(L, "%s: handler.%s must be a function (got %s)", who,
                       script_cb_names[i], lua_typename(L, t));
        lua_pop(L, 1);
    }
    lua_getfield(L, idx, "serve");
    lua_getfield(L, idx, "on_data");
    if (!lua_isnil(L, -1) && !lua_isnil(L, -2))
        luaL_error(L, "%s: 'serve' and 'on_data' exclude each other", who);
    lua_pop(L, 2);
}

void script_take_handler(lua_State *L, int idx, struct handler *h)
{
    idx = lua_absindex(L, idx);
    for (int i = 0; i < CB_COUNT; i++) {
        lua_getfield(L, idx, script_cb_names[i]);
        if (lua_isnil(L, -1))
            lua_pop(L, 1);
        else
            h->cb[i] = script_ref(L);
    }
}

/* package.searchers entry for modules compiled into the binary:
 * require "echokit.x" finds lua/echokit/x.lua. [-1, +2|1, e] */
static int embedded_searcher(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    char path[256];
    int n = snprintf(path, sizeof path, "lua/%s.lua", name);
    if (n < 0 || (size_t)n >= sizeof path)
        return 0;
    for (char *p = path + 4; *p && p < path + n - 4; p++)
        if (*p == '.')
            *p = '/';
    for (const struct embed_file *f = embed_files; f->name; f++) {
        if (strcmp(f->name, path) != 0)
            continue;
        char chunk[260];
        snprintf(chunk, sizeof chunk, "@%s", path);
        if (luaL_loadbufferx(L, f->data, f->len, chunk, "t") != LUA_OK)
            return luaL_error(L, "error loading embedded module '%s': %s", name, lua_tostring(L, -1));
        lua_pushstring(L, path);
        return 2;
    }
    lua_pushfstring(L, "no embedded module '%s'", path);
    return 1;
}

static void install_searcher(lua_State *L)
{
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "searchers");
    /* stack: msgh, package, searchers */
    lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
    for (lua_Integer i = n; i >= 2; i--) {
        lua_rawgeti(L, -1, i);
        lua_rawseti(L, -2, i + 1);
    }
    lua_pushcfunction(L, embedded_searcher);
    lua_rawseti(L, -2, 2);
    lua_pop(L, 2);
}

/* Every binding, in one table: metatables registered at start-up, and the
 * modules require finds in package.preload. */
static void (*const classes[])(lua_State *L) = {
    lconn_open, ludp_open, ltls_open, ltimer_open, lpcap_open_lib, llisten_open, lwriter_open,
    lmetrics_open, lcapread_open,
};

static const luaL_Reg modules[] = {
    {"echokit", lechokit_open},
    {"echokit.codec", lcodec_open},
    {NULL, NULL},
};

/* The state's set-up, run protected. [-0, +0, m] */
static int setup_body(lua_State *L)
{
    luaL_openlibs(L);
    wrap_coroutines(L);
    install_searcher(L);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    luaL_setfuncs(L, modules, 0);
    lua_pop(L, 1);
    for (size_t i = 0; i < sizeof classes / sizeof classes[0]; i++)
        classes[i](L);
    return 0;
}

struct script *script_new(struct conn_ctx *ctx, double budget, size_t mem_limit)
{
    struct script *S = calloc(1, sizeof *S);
    if (!S)
        return NULL;
    S->ctx = ctx;
    S->budget = budget;
    /* Memory checkers (ASan, valgrind) must see every block Lua frees: a
     * block in a free list would hide a use after free. */
    S->pool.max = SCRIPT_POOL_MAX;
#if defined(__SANITIZE_ADDRESS__)
    S->pool.max = 0;
#endif
    const char *pool_env = getenv("ECHOKIT_LUA_POOL");
    if (pool_env && strcmp(pool_env, "0") == 0)
        S->pool.max = 0;
    S->args_ref = LUA_NOREF;
    for (int i = 0; i < CB_COUNT; i++)
        S->handler.cb[i] = LUA_NOREF;
    lua_State *L = lua_newstate(l_alloc, S);
    if (!L) {
        free(S);
        return NULL;
    }
    S->L = L;
    lua_atpanic(L, panic);
    /* Threads copy the main thread's extra space: NULL means "no serve conn". */
    *(void **)lua_getextraspace(L) = NULL;
    /* The limit applies to handlers, not to the runtime's own set-up. */
    lua_pushcfunction(L, setup_body);
    if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
        log_msg(LOG_ERROR, "cannot set up Lua: %s", lua_tostring(L, -1));
        lua_close(L);
        free(S);
        return NULL;
    }
    lua_pushcfunction(L, msgh); /* stays at index 1: every call's handler */
    S->mem_limit = mem_limit;
    /* Callbacks make short-lived strings (every chunk of input): the
     * generational collector handles those for less than the incremental.
     * Its default major multiplier (100%) made a single 64 KiB chunk on a
     * small heap look like the heap had doubled, so bulk traffic ran a major
     * collection (a walk over every object) per chunk: 7% of a bulk echo's
     * CPU. At 300% chunks die in minor collections; a major one comes once
     * the heap has grown to 4x its size after the last. */
    lua_gc(L, LUA_GCGEN, 0, 300);
    resolve_init(&S->resolver, ctx->loop);
    budget_setup(S);
    return S;
}

void script_free(struct script *S)
{
    if (!S)
        return;
    resolve_shutdown(&S->resolver);
    budget_teardown(S);
    if (ev_is_active(&S->errlog.timer)) {
        ev_ref(S->ctx->loop);
        ev_timer_stop(S->ctx->loop, &S->errlog.timer);
    }
    errlog_flush(S);
    S->errlog.off = 1;
    lua_close(S->L);
    pool_drain(S);
    free(S->reserve);
    free(S);
}

/* Built-in names that differ from their file's stem. */
static const struct {
    const char *name, *file;
} aliases[] = {
    {"debug", "debug_proxy"},
    {"chaos", "chaos_proxy"},
    {"http", "http_echo"},
    {"redis", "redis_mock"},
    {"websocket", "websocket_echo"},
    {NULL, NULL},
};

static const struct embed_file *find_builtin(const char *name)
{
    char path[128];
    const char *stem = name;
    for (int i = 0; aliases[i].name; i++)
        if (strcmp(aliases[i].name, name) == 0)
            stem = aliases[i].file;
    snprintf(path, sizeof path, "handlers/%s.lua", stem);
    for (const struct embed_file *f = embed_files; f->name; f++)
        if (strcmp(f->name, path) == 0)
            return f;
    return NULL;
}

void script_class(lua_State *L, const char *name, const luaL_Reg *methods, const luaL_Reg *meta)
{
    luaL_newmetatable(L, name);
    if (meta)
        luaL_setfuncs(L, meta, 0);
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}

void script_builtin_names(char *buf, size_t cap)
{
    size_t pos = 0;
    buf[0] = '\0';
    for (const struct embed_file *f = embed_files; f->name && pos < cap; f++) {
        if (strncmp(f->name, "handlers/", 9) != 0)
            continue;
        const char *stem = f->name + 9;
        int n = (int)(strlen(stem) - 4);
        for (int i = 0; aliases[i].name; i++)
            if ((int)strlen(aliases[i].file) == n && strncmp(aliases[i].file, stem, (size_t)n) == 0) {
                stem = aliases[i].name;
                n = (int)strlen(stem);
            }
        pos += (size_t)snprintf(buf + pos, cap - pos, "%s%.*s", pos ? ", " : "", n, stem);
    }
}

static char *read_file(const char *path, size_t *len, char *err, size_t errcap)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errcap, "cannot open handler '%s': %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 8192, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap)
            break;
        char *nb = realloc(buf, cap * 2);
        if (!nb) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb;
        cap *= 2;
    }
    int failed = ferror(f);
    fclose(f);
    if (!buf || failed) {
        snprintf(err, errcap, "cannot read handler '%s': %s", path,
                 buf ? strerror(errno) : "out of memory");
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

/* Puts the handler file's folder first on package.path, so a handler can
 * require modules that sit beside it. */
static void add_handler_dir(lua_State *L, const char *path)
{
    const char *slash = strrchr(path, '/');
    char prefix[1024];
    if (slash)
        snprintf(prefix, sizeof prefix, "%.*s/?.lua;", (int)(slash - path), path);
    else
        snprintf(prefix, sizeof prefix, "./?.lua;");
    lua_getglobal(L, "package");
    lua_pushstring(L, prefix);
    lua_getfield(L, -2, "path");
    lua_concat(L, 2);
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);
}

/* [-0, +1, m] the argument table: "k=v" -> t.k = "v", bare words -> t[i]. */
static void push_args(lua_State *L, char **argv, int argc)
{
    lua_createtable(L, 0, argc);
    lua_Integer seq = 1;
    for (int i = 0; i < argc; i++) {
        const char *eq = strchr(argv[i], '=');
        if (eq && eq != argv[i]) {
            lua_pushlstring(L, argv[i], (size_t)(eq - argv[i]));
            lua_pushstring(L, eq + 1);
            lua_rawset(L, -3);
        } else {
            lua_pushstring(L, argv[i]);
            lua_rawseti(L, -2, seq++);
        }
    }
}

/* One line of a load error: the message up to its first newline. */
static void first_line(char *err, size_t errcap, const char *msg)
{
    size_t n = strcspn(msg, "\n");
    snprintf(err, errcap, "%.*s", (int)n, msg);
}

struct load {
    struct script *S;
    const char *data, *chunk;
    const char *file; /* a handler file: its folder goes on package.path */
    size_t len;
    char **argv;
    int argc;
};

/* The load, run protected: compiles the chunk, calls it with the argument
 * table, checks what it returned and takes the callbacks. [-0, +0, e] */
static int load_body(lua_State *L)
{
    struct load *ld = lua_touserdata(L, 1);
    struct script *S = ld->S;
    const char *where = ld->chunk + 1;
    if (ld->file)
        add_handler_dir(L, ld->file);
    if (luaL_loadbufferx(L, ld->data, ld->len, ld->chunk, "t") != LUA_OK)
        return lua_error(L);
    push_args(L, ld->argv, ld->argc);
    lua_pushvalue(L, -1);
    S->args_ref = script_ref(L);
    /* stack: ud, chunk, args */
    lua_call(L, 1, 1);
    if (!lua_istable(L, -1))
        return luaL_error(L, "%s: handler must return a table of callbacks (got %s)", where,
                          luaL_typename(L, -1));
    script_check_handler(L, -1, where);
    script_take_handler(L, -1, &S->handler);
    /* Catch typos such as on_dta, which would otherwise do nothing silently. */
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            continue;
        const char *k = lua_tostring(L, -1);
        int known = 0;
        for (int i = 0; i < CB_COUNT; i++)
            known |= !strcmp(k, script_cb_names[i]);
        if (!known && !strncmp(k, "on_", 3))
            log_msg(LOG_WARN, "%s: unknown callback '%s' is never called (known: on_connect, "
                              "on_data, on_eof, on_drain, on_close, serve, on_tls, on_datagram)", where, k);
    }
    return 0;
}

int script_load(struct script *S, const char *spec, char **argv, int argc, char *err,
                size_t errcap)
{
    lua_State *L = S->L;
    int top = lua_gettop(L);
    char *owned = NULL;
    char chunk[512];
    struct load ld = {.S = S, .chunk = chunk, .argv = argv, .argc = argc};
    int is_file = strchr(spec, '/') || (strlen(spec) > 4 && !strcmp(spec + strlen(spec) - 4, ".lua"));
    const struct embed_file *bf = is_file ? NULL : find_builtin(spec);
    if (bf) {
        ld.data = bf->data;
        ld.len = bf->len;
        snprintf(chunk, sizeof chunk, "@%s", bf->name);
    } else if (is_file) {
        owned = read_file(spec, &ld.len, err, errcap);
        if (!owned)
            return -1;
        ld.data = owned;
        snprintf(chunk, sizeof chunk, "@%s", spec);
        ld.file = spec;
    } else {
        char names[256];
        script_builtin_names(names, sizeof names);
        snprintf(err, errcap, "no built-in handler '%s' (built-in: %s; or give a file path)",
                 spec, names);
        return -1;
    }
    S->handler_name = spec;

    lua_pushcfunction(L, script_msgh_bare);
    lua_pushcfunction(L, load_body);
    lua_pushlightuserdata(L, &ld);
    int rc = lua_pcall(L, 1, 0, top + 1);
    free(owned);
    if (rc != LUA_OK) {
        first_line(err, errcap, lua_tostring(L, -1));
        for (int i = 0; i < CB_COUNT; i++)
            script_unref(L, &S->handler.cb[i]);
    }
    lua_settop(L, top);
    return rc == LUA_OK ? 0 : -1;
}

const char *script_lua_release(void)
{
    return LUA_RELEASE + 4; /* past "Lua " */
}

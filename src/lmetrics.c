/* echokit.metrics_proxy(name): a control-API proxy's counters for --metrics.
 *
 * The handle is a full userdata holding a slot index (metrics.c maps it to
 * this process's struct metrics_proxy), never an address: a copy of the
 * handle or a call after free reaches nothing. The slot is claimed at the
 * first call once the page is there: a single process loads its handler
 * (whose chaos proxy takes a handle) before it maps the page. Without
 * --metrics, or when every proxy slot is taken, every method returns at
 * once. Counting is per connection event (accept, close) and per toxic-set
 * change, never per chunk. */
#include <lauxlib.h>
#include <stdio.h>

#include "metrics.h"
#include "script.h"

#define LMETRICS_MT "echokit.metrics_proxy"

#define PENDING (-2)

struct lmetrics {
    int k;          /* slot index; -1: counts into nothing; PENDING: not claimed yet */
    int64_t toxics; /* the gauge's value, for a claim that comes later */
    char name[METRICS_NAME_LEN + 4]; /* metrics_proxy_claim cuts it */
};

/* The handle's counters, claimed now if the page is there; NULL when none. */
static struct metrics_proxy *slot_of(struct lmetrics *h)
{
    if (h->k == PENDING) {
        if (!metrics_enabled())
            return NULL;
        h->k = metrics_proxy_claim(h->name);
        if (h->k >= 0)
            metrics_gauge(&metrics_me->proxy[h->k].toxics, h->toxics);
    }
    return h->k < 0 ? NULL : &metrics_me->proxy[h->k];
}

static struct metrics_proxy *slot(lua_State *L)
{
    return slot_of(luaL_checkudata(L, 1, LMETRICS_MT));
}

static uint64_t count_arg(lua_State *L, int i)
{
    lua_Integer n = luaL_optinteger(L, i, 0);
    luaL_argcheck(L, n >= 0, i, "must be >= 0");
    return (uint64_t)n;
}

/* echokit.metrics_proxy(name) [-0, +1, e]: the handle of name's counters
 * (name cut to METRICS_NAME_LEN-1 bytes; several handles may share a name). */
int lmetrics_proxy(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    luaL_argcheck(L, name[0] != '\0', 1, "proxy name must not be empty");
    struct lmetrics *h = lua_newuserdatauv(L, sizeof *h, 0);
    h->k = PENDING;
    h->toxics = 0;
    snprintf(h->name, sizeof h->name, "%s", name);
    luaL_setmetatable(L, LMETRICS_MT);
    slot_of(h);
    return 1;
}

/* h:connection(): one client connection accepted. */
static int m_connection(lua_State *L)
{
    struct metrics_proxy *x = slot(L);
    if (x)
        metrics_add(&x->conns, 1);
    return 0;
}

/* h:bytes(up, down): bytes a connection carried each way (at its close). */
static int m_bytes(lua_State *L)
{
    struct metrics_proxy *x = slot(L);
    uint64_t up = count_arg(L, 2), down = count_arg(L, 3);
    if (x) {
        metrics_add(&x->bytes_up, up);
        metrics_add(&x->bytes_down, down);
    }
    return 0;
}

/* h:toxics(n): the number of toxics the proxy has now. */
static int m_toxics(lua_State *L)
{
    struct lmetrics *h = luaL_checkudata(L, 1, LMETRICS_MT);
    h->toxics = (int64_t)luaL_checkinteger(L, 2);
    struct metrics_proxy *x = slot_of(h);
    if (x)
        metrics_gauge(&x->toxics, h->toxics);
    return 0;
}

/* h:free(): the proxy is gone; the handle counts into nothing from now on
 * and, once no handle holds the name, its slot is free for another name.
 * Garbage collection does not free: a worker that exits keeps its counts. */
static int m_free(lua_State *L)
{
    struct lmetrics *h = luaL_checkudata(L, 1, LMETRICS_MT);
    if (h->k >= 0)
        metrics_proxy_release(h->k);
    h->k = -1;
    return 0;
}

static int m_tostring(lua_State *L)
{
    struct lmetrics *h = luaL_checkudata(L, 1, LMETRICS_MT);
    lua_pushfstring(L, "metrics_proxy (%s)",
                    h->k >= 0 ? "counted" : h->k == PENDING ? "pending" : "not counted");
    return 1;
}

void lmetrics_open(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"connection", m_connection}, {"bytes", m_bytes}, {"toxics", m_toxics},
        {"free", m_free}, {NULL, NULL},
    };
    static const luaL_Reg meta[] = {{"__tostring", m_tostring}, {NULL, NULL}};
    script_class(L, LMETRICS_MT, methods, meta);
}

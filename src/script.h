#ifndef ECHOKIT_SCRIPT_H
#define ECHOKIT_SCRIPT_H
/* The lua_State: loading handlers, the one protected-call path, budgets, and
 * the registry references the runtime holds. Only script.c and l*.c include
 * Lua headers. */
#include <lua.h>
#include <signal.h>
#include <stddef.h>

#include "conn.h"
#include "resolve.h"
#include "server.h"

struct tls_server;
struct tls_client;

enum script_cb {
    CB_CONNECT, CB_DATA, CB_EOF, CB_DRAIN, CB_CLOSE, CB_SERVE, CB_TLS,
    CB_DATAGRAM, /* a UDP listener's datagrams, raw (ludp.c) */
    CB_COUNT
};

/* The callbacks' names, indexed by enum script_cb: the one list. */
extern const char *const script_cb_names[CB_COUNT];

/* A handler's callbacks, as registry references (LUA_NOREF = absent). */
struct handler {
    int cb[CB_COUNT];
};

struct llisten;

/* Small Lua blocks (up to 248 bytes) are kept in SCRIPT_POOL_CLASSES size
 * classes of malloc's own chunk sizes, at most SCRIPT_POOL_MAX free ones each
 * (none in an ASan build or with ECHOKIT_LUA_POOL=0, for valgrind). */
#define SCRIPT_POOL_CLASSES 15
#define SCRIPT_POOL_MAX 256

struct script {
    lua_State *L;
    struct conn_ctx *ctx;
    struct handler handler;     /* the one accepted connections use */
    const char *handler_name;   /* as given on the command line */
    int args_ref;               /* handler-argument table */
    long refs;                  /* registry references held (for leak checks) */
    double budget;              /* CPU seconds per callback, 0 = none */
    double tick;                /* seconds of CPU between two budget checks */
    lua_State *running;         /* the thread running Lua code now */
    volatile sig_atomic_t depth;    /* nesting of callbacks under way */
    volatile sig_atomic_t call_seq; /* which (outermost) callback this is */
    volatile sig_atomic_t overrun;  /* this callback is over budget */
    sig_atomic_t watch_seq, watch_ticks; /* the signal handler's own */
    size_t mem_limit, mem_used; /* bytes, 0 = no limit */
    int uncapped;               /* pushing a chunk: the cap waits (script_call_ref) */
    void *reserve;              /* given back to malloc if it fails then */
    struct {                    /* freed small blocks kept for reuse (l_alloc) */
        void *head[SCRIPT_POOL_CLASSES];
        unsigned n[SCRIPT_POOL_CLASSES];
        unsigned max; /* SCRIPT_POOL_MAX; 0 under a memory checker */
    } pool;
    struct resolver resolver;   /* echokit.connect to host names */
    void (*on_stop)(struct script *S); /* echokit.stop() */
    struct llisten *listeners;  /* open echokit.listen listeners */
    int listen_closed;          /* shutdown began: echokit.listen opens no more */
    struct {                    /* callback errors logged in the current second */
        ev_timer timer;         /* runs for that second (not keeping the loop up) */
        unsigned shown;
        unsigned long long held; /* not logged: counted in one line after it */
        int off;                /* lua_close: no timer any more, every line logged */
    } errlog;
    struct tls_server *tls;     /* the --tls-* certificates: conn:starttls's default */
    int reuseport;              /* echokit.listen sets SO_REUSEPORT (--workers) */
    void *data;
};

/* Creates the state with the echokit module and the embedded library.
 * Returns NULL when out of memory. */
struct script *script_new(struct conn_ctx *ctx, double budget, size_t mem_limit);
void script_free(struct script *S);

/* The script a Lua state belongs to. */
struct script *script_of(lua_State *L);

/* Loads a handler by built-in name or file path, calls it with the argument
 * list ("k=v" or bare words) and keeps its callbacks. Returns 0, or -1 with a
 * one-line message (file, line, cause) in err. */
int script_load(struct script *S, const char *spec, char **argv, int argc, char *err,
                size_t errcap);

struct luaL_Reg;

/* Registers metatable NAME with METHODS as its __index table and META (or
 * NULL) as its metamethods: the one shape of every userdata class here.
 * [-0, +0, m] */
void script_class(lua_State *L, const char *name, const struct luaL_Reg *methods,
                  const struct luaL_Reg *meta);

/* The built-in handlers' names, comma-separated, into buf. */
void script_builtin_names(char *buf, size_t cap);

/* Registry references with one owner: counted so tests can see leaks.
 * script_ref pops the value from L, the thread that holds it (a coroutine's
 * values live on its own stack): [-1, +0, m]. script_unref takes
 * LUA_NOREF/LUA_REFNIL happily and sets *ref to LUA_NOREF: [-0, +0, -]. */
int script_ref(lua_State *L);
void script_unref(lua_State *L, int *ref);

/* The one way into Lua from C. Runs body(L) in protected mode on the main
 * thread with ud as a light userdata at index 1, under the CPU budget: body
 * pushes what the callback needs (every allocation, pushing a chunk of input
 * included, is then protected) and calls it. On an error, reaching the
 * --lua-memory cap among them, logs label, what, the message and a traceback
 * and tears down c (if not NULL) with "error: <message>". Returns 0 or -1.
 * [-0, +0, -] */
int script_invoke(struct script *S, lua_CFunction body, void *ud, const char *what,
                  struct conn *c);

/* How script_call_ref passes its arguments: fn(self), fn(self, str) (a nil
 * str passes nil) or fn(str, self). */
enum script_args { ARGS_SELF, ARGS_SELF_STR, ARGS_STR_SELF };

/* script_invoke for a callback given as registry references (fn, and self:
 * the connection's handle) with at most one string: the path of every
 * connection callback, with no C frame between the protected call and the
 * callback. The string, a chunk of input say, is the one allocation made
 * outside the protected call, and it cannot fail: the cap does not apply to
 * it (a heap still over the cap once garbage is collected then fails the
 * callback before it runs, "not enough memory"), and a malloc that fails
 * falls back on a reserve block (without one, the string is pushed inside
 * the protected call). Same results and error policy as script_invoke.
 * [-0, +0, -] */
int script_call_ref(struct script *S, int fn, int self, enum script_args args, const char *str,
                    size_t len, const char *what, struct conn *c);

/* Inside a body: resumes co (nargs values pushed on it) under the budget;
 * its results are popped. On an error logs and tears down c as script_invoke
 * would and returns the error status. [-0, +0, m] */
int script_resume(struct script *S, lua_State *co, int nargs, const char *what, struct conn *c);

/* Message handler that returns the bare message (no traceback): load errors
 * are one line. [-1, +1, m] */
int script_msgh_bare(lua_State *L);

/* Raises unless the value at idx is a callback table: each callback a
 * function or nil, not both serve and on_data. who names the caller in the
 * message. [-0, +0, e] */
void script_check_handler(lua_State *L, int idx, const char *who);

/* References to each callback of the (checked) table at idx, into h
 * (taken on L, the thread running). [-0, +0, m] */
void script_take_handler(lua_State *L, int idx, struct handler *h);

/* Around a resume of a handler's own coroutine (the coroutine library is
 * wrapped): keeps track of the running thread for the budget. */
lua_State *script_enter(struct script *S, lua_State *co);
void script_leave(struct script *S, lua_State *prev);

/* Logs a failure of a callback and tears down c with "error: ...". */
void script_fail(struct script *S, const char *what, struct conn *c, const char *msg);

/* The bindings' openers, called from script_new's one table of them:
 * metatables (lconn.c, ltimer.c, lpcap.c, llisten.c) and the modules
 * require finds (lechokit.c, lcodec.c). */
void lconn_open(lua_State *L);
int lechokit_open(lua_State *L);
void ltimer_open(lua_State *L);
int ltimer_timer(lua_State *L); /* echokit.timer */
int ltimer_every(lua_State *L); /* echokit.every */
int lcodec_open(lua_State *L);  /* require "echokit.codec" */
int lconn_sleep(lua_State *L);  /* echokit.sleep */
int lconn_connect(lua_State *L); /* echokit.connect */
void lpcap_open_lib(lua_State *L);
int lpcap_open(lua_State *L);    /* echokit.pcap */
void lwriter_open(lua_State *L);
int lwriter_new(lua_State *L);   /* echokit.writer (lwriter.c) */
void lmetrics_open(lua_State *L);
int lmetrics_proxy(lua_State *L); /* echokit.metrics_proxy (lmetrics.c) */
void lcapread_open(lua_State *L);
int lcapread_capture(lua_State *L); /* echokit.capture (lcapread.c) */

/* Accepted socket -> connection running handler h, or the script's own
 * handler if h is NULL; with h the connection takes references of its own to
 * h's callbacks, so it outlives h (lconn.c). Owns fd. */
void lconn_accept(struct script *S, int fd, const struct net_addr *peer,
                  const struct handler *h, struct tls_server *tls, int listener);
/* With tls (a TLS listener's), the handshake comes first: on_connect (and
 * serve) wait for it, and a client that fails it never reaches Lua (one
 * log line says why). */

/* A UDP listener's datagram from a new peer (server.h's on_flow): the flow
 * for it, running h (taking references of its own, as lconn_accept) or the
 * script's handler if h is NULL, on_connect done; NULL (datagram dropped)
 * when out of memory (lconn.c). */
struct conn *lconn_flow(struct script *S, struct udp_sock *sock, const struct net_addr *peer,
                        const struct handler *h, int listener);

/* The handler has on_datagram: UDP listeners hand it every datagram raw. */
int lconn_wants_datagrams(const struct script *S);

/* Raw UDP (ludp.c): the "echokit.udp" socket handle, sock:sendto. */
void ludp_open(lua_State *L);
/* Calls the handler's on_datagram(sock, data, peer). */
void ludp_datagram(struct script *S, struct udp_sock *sock, const char *buf, size_t len,
                   const struct net_addr *peer);

/* The connection behind handle idx, NULL if it is closed; raises if idx is
 * not a connection handle (lconn.c). */
struct conn *lconn_check(lua_State *L, int idx);
int lconn_is_outbound(const struct conn *c);

/* TLS for Lua (ltls.c): conn:tls(), conn:starttls(opts), echokit.tls_hello,
 * and the client options of echokit.connect. */
void ltls_open(lua_State *L);
int ltls_hello(lua_State *L); /* echokit.tls_hello */
int ltls_check(lua_State *L); /* echokit.tls_check */
int ltls_keylog(lua_State *L); /* echokit.tls_keylog */
/* The upstream configuration for host:port from the opts.tls table at idx
 * (or nil): raises on bad options, naming them. */
struct tls_client *ltls_client(lua_State *L, int idx, const char *host, int port);
/* The server configuration from conn:starttls-style options at idx (or
 * nil: the --tls-* one): raises on bad options, or when there is none. */
struct tls_server *ltls_server(lua_State *L, int idx, const char *who);

/* echokit.listen (llisten.c). */
void llisten_open(lua_State *L);
int llisten_listen(lua_State *L);

/* Closes every open echokit.listen listener (shutdown: stop accepting);
 * from then on echokit.listen returns nil, "shutting down". */
void llisten_close_all(struct script *S);

/* Starts the control API (require "echokit.toxiproxy".serve(addr)), on the
 * listening socket fd if fd >= 0 (bound by the master), publishing every
 * change to sync if not NULL (--workers). Returns 0 with the bound address
 * in name, or -1 with a one-line message in err. */
struct adminsync;
int llisten_admin(struct script *S, const char *addr, int fd, struct adminsync *sync,
                  char *name, size_t namecap, char *err, size_t errcap);

/* Applies a published configuration (require "echokit.toxiproxy".apply):
 * 0, or -1 with the reason in err. */
int llisten_admin_apply(struct script *S, const char *text, size_t len, char *err,
                        size_t errcap);

/* "5.4.4", for the build information. */
const char *script_lua_release(void);

#endif

/*
 * proc.c -- a tiny Lua 5.4 module for the functional tests: spawn the server,
 * read its stdout with a timeout, signal it, reap it with a timeout, sample its
 * memory. lua-posix has no 5.4 build on Debian 12, hence this file.
 *
 *   local proc = require "proc"
 *   local p = proc.spawn({ "/path/echokit", "--listen", "127.0.0.1:0" },
 *                        { stderr = "/tmp/file", cwd = "/work/main", env = { K = "v" } })
 *   p:pid()                    -> integer
 *   p:readline(timeout)        -> line | nil, "timeout" | nil, "eof"
 *   p:readall(timeout)         -> everything until EOF (or what came in time), "eof"|"timeout"
 *   p:kill(sig)                -> true | nil, err     (sig: number or "TERM", "INT", "KILL", ...)
 *   p:wait(timeout)            -> "exited", code | "signaled", signo | nil, "timeout"
 *   p:vmrss()                  -> KiB (integer) | nil, err
 *   proc.now()                 -> CLOCK_MONOTONIC seconds (float)
 *   proc.recv(fd, n)           -> bytes ("" = EOF) | nil, errno, strerror   (raw recv(2),
 *                                 to tell an RST (ECONNRESET) from a FIN)
 *   proc.errno.ECONNRESET, ...
 *
 * The child gets stdin from /dev/null, stdout on a pipe, stderr into the named
 * file (or the pipe when opts.stderr is absent: 2>&1), default signal
 * dispositions and an empty signal mask (luasocket ignores SIGPIPE in the test
 * process; the server must cope with SIGPIPE on its own), and its own process
 * group so a wrapper such as valgrind can be signalled as a whole.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <lua.h>
#include <lauxlib.h>

#define PROC_MT "echokit_test.proc"
#define PROC_BUF 65536

typedef struct {
    pid_t pid;
    int out_fd;          /* read end of the child's stdout, -1 once closed */
    int reaped;          /* 1 once waitpid() collected the child */
    int status;          /* raw wait status once reaped */
    size_t len;          /* bytes buffered in buf */
    char buf[PROC_BUF];
} proc_t;

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static const struct { const char *name; int sig; } signames[] = {
    {"TERM", SIGTERM}, {"INT", SIGINT}, {"KILL", SIGKILL}, {"HUP", SIGHUP},
    {"QUIT", SIGQUIT}, {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"STOP", SIGSTOP},
    {"CONT", SIGCONT}, {"PIPE", SIGPIPE}, {"ABRT", SIGABRT}, {"SEGV", SIGSEGV},
    {NULL, 0}
};

static int check_sig(lua_State *L, int idx)
{
    if (lua_type(L, idx) == LUA_TNUMBER)
        return (int)luaL_checkinteger(L, idx);
    const char *s = luaL_optstring(L, idx, "TERM");
    if (strncmp(s, "SIG", 3) == 0)
        s += 3;
    for (int i = 0; signames[i].name; i++)
        if (strcmp(signames[i].name, s) == 0)
            return signames[i].sig;
    return luaL_argerror(L, idx, "unknown signal name");
}

static const char *signame(int sig)
{
    for (int i = 0; signames[i].name; i++)
        if (signames[i].sig == sig)
            return signames[i].name;
    return NULL;
}

/* proc.spawn(argv [, opts]) -> proc userdata | nil, err   [-0, +1|2, e] */
static int l_spawn(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer argc = luaL_len(L, 1);
    luaL_argcheck(L, argc >= 1, 1, "empty argv");

    const char *errpath = NULL, *cwd = NULL;
    char **envs = NULL;   /* "NAME=value" strings to add in the child */
    if (lua_istable(L, 2)) {
        lua_getfield(L, 2, "env");
        if (lua_istable(L, -1)) {
            int et = lua_gettop(L);
            size_t n = 0;
            lua_pushnil(L);
            while (lua_next(L, et)) {
                n++;
                lua_pop(L, 1);
            }
            lua_createtable(L, (int)n, 0);   /* anchors the "K=V" strings */
            int keep = lua_gettop(L);
            envs = lua_newuserdatauv(L, sizeof(char *) * (n + 1), 0);
            size_t i = 0;
            lua_pushnil(L);
            while (lua_next(L, et)) {   /* stack: ..., key, value */
                if (lua_type(L, -2) != LUA_TSTRING)
                    return luaL_error(L, "env: names must be strings");
                const char *k = lua_tostring(L, -2);
                const char *v = luaL_checkstring(L, -1);
                envs[i] = (char *)lua_pushfstring(L, "%s=%s", k, v);
                lua_rawseti(L, keep, (lua_Integer)++i);
                lua_pop(L, 1);                    /* value; key stays for lua_next */
            }
            envs[i] = NULL;
            /* env table, keep table and envs array stay on the stack until we return */
        } else {
            lua_pop(L, 1);
        }
        lua_getfield(L, 2, "stderr");
        errpath = lua_tostring(L, -1);   /* stays referenced by opts table */
        lua_pop(L, 1);
        lua_getfield(L, 2, "cwd");
        cwd = lua_tostring(L, -1);
        lua_pop(L, 1);
    }

    char **argv = lua_newuserdatauv(L, sizeof(char *) * (size_t)(argc + 1), 0);
    for (lua_Integer i = 1; i <= argc; i++) {
        lua_geti(L, 1, i);
        argv[i - 1] = (char *)luaL_checkstring(L, -1);  /* argv table keeps it alive */
        lua_pop(L, 1);
    }
    argv[argc] = NULL;

    proc_t *p = lua_newuserdatauv(L, sizeof(proc_t), 0);
    p->pid = -1;
    p->out_fd = -1;
    p->reaped = 0;
    p->status = 0;
    p->len = 0;
    luaL_setmetatable(L, PROC_MT);

    int out[2];
    if (pipe2(out, O_CLOEXEC) < 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "pipe: %s", strerror(errno));
        return 2;
    }
    int errfd = -1;
    if (errpath) {
        errfd = open(errpath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (errfd < 0) {
            int e = errno;
            close(out[0]);
            close(out[1]);
            lua_pushnil(L);
            lua_pushfstring(L, "%s: %s", errpath, strerror(e));
            return 2;
        }
    }
    /* exec failure is reported through this close-on-exec pipe */
    int ep[2];
    if (pipe2(ep, O_CLOEXEC) < 0) {
        int e = errno;
        close(out[0]);
        close(out[1]);
        if (errfd >= 0)
            close(errfd);
        lua_pushnil(L);
        lua_pushfstring(L, "pipe: %s", strerror(e));
        return 2;
    }

    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(out[0]);
        close(out[1]);
        close(ep[0]);
        close(ep[1]);
        if (errfd >= 0)
            close(errfd);
        lua_pushnil(L);
        lua_pushfstring(L, "fork: %s", strerror(e));
        return 2;
    }
    if (pid == 0) {
        /* child: only async-signal-safe calls from here */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        for (int s = 1; s < NSIG; s++)
            if (s != SIGKILL && s != SIGSTOP)
                signal(s, SIG_DFL);
        setpgid(0, 0);
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0) {
            dup2(devnull, 0);
            close(devnull);
        }
        dup2(out[1], 1);
        dup2(errfd >= 0 ? errfd : out[1], 2);
        int e;
        for (char **ev = envs; ev && *ev; ev++)
            putenv(*ev);
        if (cwd && chdir(cwd) < 0) {
            e = errno;
        } else {
            execvp(argv[0], argv);
            e = errno;
        }
        ssize_t r = write(ep[1], &e, sizeof e);
        (void)r;
        _exit(127);
    }
    close(out[1]);
    close(ep[1]);
    if (errfd >= 0)
        close(errfd);

    int e = 0;
    ssize_t r;
    do {
        r = read(ep[0], &e, sizeof e);
    } while (r < 0 && errno == EINTR);
    close(ep[0]);
    if (r == (ssize_t)sizeof e) {
        int st;
        waitpid(pid, &st, 0);
        close(out[0]);
        lua_pushnil(L);
        lua_pushfstring(L, "cannot run %s: %s", argv[0], strerror(e));
        return 2;
    }
    p->pid = pid;
    p->out_fd = out[0];
    return 1;   /* the proc userdata sits on top */
}

static proc_t *checkproc(lua_State *L)
{
    return luaL_checkudata(L, 1, PROC_MT);
}

static int l_pid(lua_State *L)
{
    lua_pushinteger(L, checkproc(L)->pid);
    return 1;
}

/* Wait up to `deadline` for stdout to be readable and append to the buffer.
 * Returns 1 when bytes came, 0 on timeout, -1 on EOF/error (fd closed). */
static int fill(proc_t *p, double deadline)
{
    if (p->out_fd < 0)
        return -1;
    if (p->len == PROC_BUF)
        return 1;   /* caller will find no newline; treat a full buffer as a line */
    for (;;) {
        double left = deadline - mono_now();
        int ms = left <= 0 ? 0 : (int)(left * 1000.0) + 1;
        struct pollfd pfd = { .fd = p->out_fd, .events = POLLIN };
        int n = poll(&pfd, 1, ms);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            return 0;
        ssize_t r = read(p->out_fd, p->buf + p->len, PROC_BUF - p->len);
        if (r < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (r <= 0) {
            close(p->out_fd);
            p->out_fd = -1;
            return -1;
        }
        p->len += (size_t)r;
        return 1;
    }
}

/* p:readline(timeout) -> line | nil, "timeout" | nil, "eof"   [-0, +1|2, e] */
static int l_readline(lua_State *L)
{
    proc_t *p = checkproc(L);
    double timeout = luaL_optnumber(L, 2, 5.0);
    double deadline = mono_now() + timeout;
    for (;;) {
        char *nl = memchr(p->buf, '\n', p->len);
        if (nl || p->len == PROC_BUF) {
            size_t linelen = nl ? (size_t)(nl - p->buf) : p->len;
            size_t used = nl ? linelen + 1 : linelen;
            lua_pushlstring(L, p->buf, linelen);
            memmove(p->buf, p->buf + used, p->len - used);
            p->len -= used;
            return 1;
        }
        int r = fill(p, deadline);
        if (r == 0) {
            lua_pushnil(L);
            lua_pushliteral(L, "timeout");
            return 2;
        }
        if (r < 0) {
            if (p->len > 0) {   /* last line without a newline */
                lua_pushlstring(L, p->buf, p->len);
                p->len = 0;
                return 1;
            }
            lua_pushnil(L);
            lua_pushliteral(L, "eof");
            return 2;
        }
    }
}

/* p:readall(timeout) -> text, "eof" | "timeout"   [-0, +2, e] */
static int l_readall(lua_State *L)
{
    proc_t *p = checkproc(L);
    double timeout = luaL_optnumber(L, 2, 5.0);
    double deadline = mono_now() + timeout;
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    const char *why = "eof";
    for (;;) {
        if (p->len) {
            luaL_addlstring(&b, p->buf, p->len);
            p->len = 0;
        }
        int r = fill(p, deadline);
        if (r == 0) {
            why = "timeout";
            break;
        }
        if (r < 0)
            break;
    }
    luaL_pushresult(&b);
    lua_pushstring(L, why);
    return 2;
}

/* p:kill([sig]) -> true | nil, err   [-0, +1|2, e] */
static int l_kill(lua_State *L)
{
    proc_t *p = checkproc(L);
    int sig = check_sig(L, 2);
    if (p->pid <= 0 || p->reaped) {
        lua_pushnil(L);
        lua_pushliteral(L, "not running");
        return 2;
    }
    if (kill(p->pid, sig) < 0) {
        lua_pushnil(L);
        lua_pushstring(L, strerror(errno));
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int push_status(lua_State *L, int st)
{
    if (WIFEXITED(st)) {
        lua_pushliteral(L, "exited");
        lua_pushinteger(L, WEXITSTATUS(st));
        return 2;
    }
    lua_pushliteral(L, "signaled");
    lua_pushinteger(L, WTERMSIG(st));
    const char *n = signame(WTERMSIG(st));
    if (n) {
        lua_pushstring(L, n);
        return 3;
    }
    return 2;
}

/* p:wait([timeout]) -> "exited", code | "signaled", signo [, name] | nil, "timeout"
 * [-0, +2|3, e].  Polls waitpid(WNOHANG) with short naps: a child gives no fd
 * to poll on without pidfd, and this is bounded by the timeout. */
static int l_wait(lua_State *L)
{
    proc_t *p = checkproc(L);
    double timeout = luaL_optnumber(L, 2, 5.0);
    double deadline = mono_now() + timeout;
    if (p->pid <= 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "not started");
        return 2;
    }
    for (;;) {
        if (p->reaped)
            return push_status(L, p->status);
        int st;
        pid_t r = waitpid(p->pid, &st, WNOHANG);
        if (r == p->pid) {
            p->reaped = 1;
            p->status = st;
            continue;
        }
        if (r < 0 && errno != EINTR) {
            lua_pushnil(L);
            lua_pushstring(L, strerror(errno));
            return 2;
        }
        if (mono_now() >= deadline) {
            lua_pushnil(L);
            lua_pushliteral(L, "timeout");
            return 2;
        }
        struct timespec nap = { 0, 5 * 1000 * 1000 };
        nanosleep(&nap, NULL);
    }
}

/* p:vmrss() -> KiB | nil, err   [-0, +1|2, e] */
static int l_vmrss(lua_State *L)
{
    proc_t *p = checkproc(L);
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)p->pid);
    FILE *f = fopen(path, "r");
    if (!f) {
        lua_pushnil(L);
        lua_pushfstring(L, "%s: %s", path, strerror(errno));
        return 2;
    }
    long kib = -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kib = strtol(line + 6, NULL, 10);
            break;
        }
    }
    fclose(f);
    if (kib < 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "no VmRSS (zombie?)");
        return 2;
    }
    lua_pushinteger(L, kib);
    return 1;
}

static int l_gc(lua_State *L)
{
    proc_t *p = checkproc(L);
    if (p->out_fd >= 0) {
        close(p->out_fd);
        p->out_fd = -1;
    }
    /* Never leave a server behind: a test that lost its handle kills it. */
    if (p->pid > 0 && !p->reaped) {
        int st;
        if (waitpid(p->pid, &st, WNOHANG) == 0) {
            kill(p->pid, SIGKILL);
            waitpid(p->pid, &st, 0);
        }
        p->reaped = 1;
    }
    return 0;
}

static int l_now(lua_State *L)
{
    lua_pushnumber(L, mono_now());
    return 1;
}

/* proc.recv(fd, n) -> bytes ("" on EOF) | nil, errno, strerror   [-0, +1|3, e] */
static int l_recv(lua_State *L)
{
    int fd = (int)luaL_checkinteger(L, 1);
    lua_Integer n = luaL_optinteger(L, 2, 65536);
    luaL_argcheck(L, n > 0 && n <= 1 << 24, 2, "bad size");
    luaL_Buffer b;
    char *dst = luaL_buffinitsize(L, &b, (size_t)n);
    ssize_t r;
    do {
        r = recv(fd, dst, (size_t)n, MSG_DONTWAIT);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
        int e = errno;
        lua_pushnil(L);
        lua_pushinteger(L, e);
        lua_pushstring(L, strerror(e));
        return 3;
    }
    luaL_pushresultsize(&b, (size_t)r);
    return 1;
}

static const luaL_Reg proc_methods[] = {
    {"pid", l_pid},
    {"readline", l_readline},
    {"readall", l_readall},
    {"kill", l_kill},
    {"wait", l_wait},
    {"vmrss", l_vmrss},
    {NULL, NULL}
};

static const luaL_Reg proc_funcs[] = {
    {"spawn", l_spawn},
    {"now", l_now},
    {"recv", l_recv},
    {NULL, NULL}
};

int luaopen_proc(lua_State *L);

int luaopen_proc(lua_State *L)
{
    if (luaL_newmetatable(L, PROC_MT)) {
        luaL_newlib(L, proc_methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    luaL_newlib(L, proc_funcs);
    lua_newtable(L);
    static const struct { const char *n; int v; } errs[] = {
        {"ECONNRESET", ECONNRESET}, {"EPIPE", EPIPE}, {"EAGAIN", EAGAIN},
        {"ECONNREFUSED", ECONNREFUSED}, {"ENOTCONN", ENOTCONN}, {NULL, 0}
    };
    for (int i = 0; errs[i].n; i++) {
        lua_pushinteger(L, errs[i].v);
        lua_setfield(L, -2, errs[i].n);
    }
    lua_setfield(L, -2, "errno");
    return 1;
}

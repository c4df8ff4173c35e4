#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static enum log_level log_min = LOG_INFO;
static int log_json;
static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_setup(enum log_level min, int json)
{
    log_min = min;
    log_json = json;
}

int log_enabled(enum log_level level)
{
    return level >= log_min;
}

int log_level_parse(const char *name)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(name, level_names[i]) == 0)
            return i;
    return -1;
}

const char *log_level_name(enum log_level level)
{
    return level < LOG_NONE ? level_names[level] : "none";
}

/* Appends s to out as the inside of a JSON string; returns the new length. */
static size_t json_escape(char *out, size_t pos, size_t cap, const char *s)
{
    for (; *s && pos + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[pos++] = '\\';
            out[pos++] = (char)c;
        } else if (c == '\n') {
            out[pos++] = '\\';
            out[pos++] = 'n';
        } else if (c < 0x20 || c == 0x7f) {
            pos += (size_t)snprintf(out + pos, cap - pos, "\\u%04x", c);
        } else {
            out[pos++] = (char)c;
        }
    }
    return pos;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    if (level < log_min)
        return;
    char msg[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);

    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[40];
    size_t n = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof ts - n, ".%03dZ", (int)(tv.tv_usec / 1000));

    char line[sizeof msg * 2 + 128];
    size_t len;
    if (log_json) {
        len = (size_t)snprintf(line, sizeof line,
                               "{\"time\":\"%s\",\"level\":\"%s\",\"pid\":%d,\"msg\":\"",
                               ts, level_names[level], (int)getpid());
        len = json_escape(line, len, sizeof line - 3, msg);
        memcpy(line + len, "\"}\n", 3);
        len += 3;
    } else {
        /* Continuation lines (tracebacks) are indented, so every line is either
         * a record or visibly part of the one above. */
        len = (size_t)snprintf(line, sizeof line, "%s %s ", ts, level_names[level]);
        for (const char *p = msg; *p && len < sizeof line - 3; p++) {
            line[len++] = *p;
            if (*p == '\n' && p[1] != '\t' && p[1] != ' ')
                line[len++] = '\t';
        }
        line[len++] = '\n';
    }
    /* One write per record so that workers' lines do not interleave. */
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}

#ifndef ECHOKIT_LOG_H
#define ECHOKIT_LOG_H

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR, LOG_NONE };

void log_setup(enum log_level min, int json);
int log_enabled(enum log_level level);
/* Returns -1 for an unknown name. */
int log_level_parse(const char *name);
const char *log_level_name(enum log_level level);

/* One record on stderr: text "TIME LEVEL message" or one JSON object a line.
 * The message may span lines (tracebacks); JSON escapes them. */
void log_msg(enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif

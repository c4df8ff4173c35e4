#ifndef ECHOKIT_UTIL_H
#define ECHOKIT_UTIL_H
#include <stddef.h>

#define ECHOKIT_ERR_LEN 256

/* Recover the struct that embeds a member (ev.pod's composite watchers). */
#define container_of(ptr, type, member) \
    ((type *)(void *)((char *)(ptr) - offsetof(type, member)))

/* "65536", "64k", "16m", "1g" -> bytes. Returns 0 on success, -1 on bad input. */
int util_parse_size(const char *s, size_t *out);

/* "5", "0.25" -> seconds (>= 0). Returns 0 on success, -1 on bad input. */
int util_parse_seconds(const char *s, double *out);

#endif

#ifndef ECHOKIT_EMBED_H
#define ECHOKIT_EMBED_H
#include <stddef.h>

/* One Lua file compiled into the binary, named by its path in the source tree
 * ("handlers/echo.lua", "lua/echokit/x.lua"). The table ends with name NULL. */
struct embed_file {
    const char *name;
    const char *data;
    size_t len;
};

extern const struct embed_file embed_files[];

#endif

#ifndef ECHOKIT_LWRITER_H
#define ECHOKIT_LWRITER_H
#include <lua.h>

/* echokit.writer(target [, opts]) -> writer | nil, err   [-0, +1|2, m] */
int lwriter_new(lua_State *L);

#endif

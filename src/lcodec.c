/* require "echokit.codec": SHA-1, base64 and the WebSocket mask for Lua. */
#include <lauxlib.h>
#include <string.h>

#include "codec.h"
#include "script.h"

/* codec.sha1(s) -> the 20-byte raw digest. [-1, +1, e] */
static int c_sha1(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    unsigned char d[CODEC_SHA1_LEN];
    codec_sha1(s, len, d);
    lua_pushlstring(L, (const char *)d, sizeof d);
    return 1;
}

/* codec.base64(s) -> base64 text with padding. [-1, +1, e] */
static int c_base64(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    luaL_Buffer b;
    char *out = luaL_buffinitsize(L, &b, codec_base64_len(len));
    luaL_pushresultsize(&b, codec_base64_encode((const unsigned char *)s, len, out));
    return 1;
}

/* codec.unbase64(s) -> bytes, or nil, "invalid base64" (bad input is a value,
 * not misuse: it comes from peers). [-1, +1|2, e] */
static int c_unbase64(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    luaL_Buffer b;
    unsigned char *out = (unsigned char *)luaL_buffinitsize(L, &b, len / 4 * 3 + 1);
    long n = codec_base64_decode(s, len, out);
    if (n < 0) {
        luaL_pushresultsize(&b, 0);
        lua_pop(L, 1);
        lua_pushnil(L);
        lua_pushliteral(L, "invalid base64");
        return 2;
    }
    luaL_pushresultsize(&b, (size_t)n);
    return 1;
}

/* codec.mask(key, data [, phase]) -> data XORed with the 4-byte key, the key
 * starting at byte `phase` (default 0). Its own inverse. [-3, +1, e] */
static int c_mask(lua_State *L)
{
    size_t klen, len;
    const char *key = luaL_checklstring(L, 1, &klen);
    const char *data = luaL_checklstring(L, 2, &len);
    lua_Integer phase = luaL_optinteger(L, 3, 0);
    luaL_argcheck(L, klen == 4, 1, "mask key must be 4 bytes");
    luaL_argcheck(L, phase >= 0, 3, "phase must be >= 0");
    luaL_Buffer b;
    unsigned char *out = (unsigned char *)luaL_buffinitsize(L, &b, len);
    memcpy(out, data, len);
    codec_mask(out, len, (const unsigned char *)key, (size_t)phase);
    luaL_pushresultsize(&b, len);
    return 1;
}

/* [-0, +1, m] */
int lcodec_open(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"sha1", c_sha1}, {"base64", c_base64}, {"unbase64", c_unbase64},
        {"mask", c_mask}, {NULL, NULL},
    };
    luaL_newlib(L, funcs);
    return 1;
}

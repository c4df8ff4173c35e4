#ifndef ECHOKIT_PTRMAP_H
#define ECHOKIT_PTRMAP_H
/* A hash map from addresses to pointers: open addressing, linear probing,
 * deletion by backward shift (no tombstones). No Lua.
 *
 * The Lua bindings map a handle's address (lua_topointer) back to the C
 * object it stands for, so no Lua-visible value ever holds a C pointer. */
#include <stddef.h>

struct ptrmap {
    const void **keys;
    void **vals;
    size_t cap; /* a power of two, or 0 */
    size_t n;
};

/* The value stored for key, or NULL. */
void *ptrmap_get(const struct ptrmap *m, const void *key);

/* Stores key -> val (val not NULL), replacing an old value. Returns 0, or -1
 * when out of memory (the map unchanged). */
int ptrmap_put(struct ptrmap *m, const void *key, void *val);

/* Removes key if present. */
void ptrmap_del(struct ptrmap *m, const void *key);

void ptrmap_free(struct ptrmap *m);

#endif

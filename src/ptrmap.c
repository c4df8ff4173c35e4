#include "ptrmap.h"

#include <stdint.h>
#include <stdlib.h>

/* Fibonacci hashing of the address; the low bits of an allocation's address
 * are alignment, the multiply spreads the rest over the top bits. */
static size_t slot_of(const struct ptrmap *m, const void *key)
{
    uint64_t h = (uint64_t)(uintptr_t)key * UINT64_C(0x9E3779B97F4A7C15);
    return (size_t)(h >> 32) & (m->cap - 1);
}

void *ptrmap_get(const struct ptrmap *m, const void *key)
{
    if (!m->cap || !key)
        return NULL;
    for (size_t i = slot_of(m, key);; i = (i + 1) & (m->cap - 1)) {
        if (m->keys[i] == key)
            return m->vals[i];
        if (!m->keys[i])
            return NULL;
    }
}

static void insert(struct ptrmap *m, const void *key, void *val)
{
    size_t i = slot_of(m, key);
    while (m->keys[i] && m->keys[i] != key)
        i = (i + 1) & (m->cap - 1);
    if (!m->keys[i])
        m->n++;
    m->keys[i] = key;
    m->vals[i] = val;
}

static int grow(struct ptrmap *m)
{
    size_t cap = m->cap ? m->cap * 2 : 64;
    const void **keys = calloc(cap, sizeof *keys);
    void **vals = calloc(cap, sizeof *vals);
    if (!keys || !vals) {
        free(keys);
        free(vals);
        return -1;
    }
    struct ptrmap old = *m;
    m->keys = keys;
    m->vals = vals;
    m->cap = cap;
    m->n = 0;
    for (size_t i = 0; i < old.cap; i++)
        if (old.keys[i])
            insert(m, old.keys[i], old.vals[i]);
    free(old.keys);
    free(old.vals);
    return 0;
}

int ptrmap_put(struct ptrmap *m, const void *key, void *val)
{
    /* At most half full: probes stay short. */
    if ((m->n + 1) * 2 > m->cap && grow(m) < 0)
        return -1;
    insert(m, key, val);
    return 0;
}

void ptrmap_del(struct ptrmap *m, const void *key)
{
    if (!m->cap || !key)
        return;
    size_t mask = m->cap - 1, i = slot_of(m, key);
    while (m->keys[i] != key) {
        if (!m->keys[i])
            return;
        i = (i + 1) & mask;
    }
    /* Backward shift: move later entries of the run into the hole when
     * their home slot is not between the hole and where they sit. */
    size_t hole = i;
    for (size_t j = (i + 1) & mask; m->keys[j]; j = (j + 1) & mask) {
        size_t home = slot_of(m, m->keys[j]);
        if (((j - home) & mask) >= ((j - hole) & mask)) {
            m->keys[hole] = m->keys[j];
            m->vals[hole] = m->vals[j];
            hole = j;
        }
    }
    m->keys[hole] = NULL;
    m->vals[hole] = NULL;
    m->n--;
}

void ptrmap_free(struct ptrmap *m)
{
    free(m->keys);
    free(m->vals);
    m->keys = NULL;
    m->vals = NULL;
    m->cap = m->n = 0;
}

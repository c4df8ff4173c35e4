/* --admin with --workers: the control API's configuration, shared.
 *
 * One region mapped MAP_SHARED before the fork holds the last snapshot the
 * API worker published (a JSON text, see echokit.toxiproxy's snapshot) and
 * a sequence counter used as a seqlock: a writer makes it odd, copies, and
 * makes it even again; a reader copies and tries again if the counter moved
 * meanwhile. The other workers poll the counter on a timer, which costs a
 * load when nothing changed. No Lua and no libev here. */
#ifndef ECHOKIT_ADMINSYNC_H
#define ECHOKIT_ADMINSYNC_H
#include <stddef.h>
#include <stdint.h>

/* The largest snapshot: a few hundred bytes per proxy and toxic, so some
 * thousands of each. */
#define ADMINSYNC_CAP (1u << 20)

/* How often a worker that does not serve the API looks for a change. */
#define ADMINSYNC_POLL 0.05

struct adminsync {
    uint64_t seq;  /* odd while written; 0: nothing published yet */
    uint32_t len;
    char buf[ADMINSYNC_CAP];
};

/* Maps the region (zeroed); NULL if it cannot be. */
struct adminsync *adminsync_new(void);
void adminsync_free(struct adminsync *a);

/* The counter now (even, or odd while a write is under way). */
uint64_t adminsync_seq(const struct adminsync *a);

/* Publishes text[0..len). Returns 0, or -1 if it does not fit (the region
 * is left as it was). */
int adminsync_publish(struct adminsync *a, const char *text, size_t len);

/* A consistent copy of the snapshot, malloc'd and NUL-terminated, with its
 * length and the counter it was read at. Returns NULL when nothing was
 * published yet, when out of memory, or when a writer kept it busy (try
 * again later). */
char *adminsync_read(const struct adminsync *a, size_t *len, uint64_t *seq);

#endif

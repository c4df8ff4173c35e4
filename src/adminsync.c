/* The shared snapshot of the control API's configuration; see adminsync.h. */
#include "adminsync.h"

#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

struct adminsync *adminsync_new(void)
{
    struct adminsync *a = mmap(NULL, sizeof *a, PROT_READ | PROT_WRITE,
                               MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    return a == MAP_FAILED ? NULL : a;
}

void adminsync_free(struct adminsync *a)
{
    if (a)
        munmap(a, sizeof *a);
}

uint64_t adminsync_seq(const struct adminsync *a)
{
    return __atomic_load_n(&a->seq, __ATOMIC_ACQUIRE);
}

/* Tries before a reader gives up for now, and before a writer takes over
 * from one that died with the counter odd (a worker killed mid-copy). */
#define SPINS 100000

int adminsync_publish(struct adminsync *a, const char *text, size_t len)
{
    if (len > ADMINSYNC_CAP)
        return -1;
    /* One writer at a time: the counter goes odd by compare-and-swap (an
     * old API worker still finishing a request during a reload may write
     * too). */
    uint64_t s = __atomic_load_n(&a->seq, __ATOMIC_RELAXED);
    for (long spins = 0;; spins++) {
        uint64_t next = (s & 1) ? (spins >= SPINS ? s + 2 : s) : s + 1;
        if (next != s && __atomic_compare_exchange_n(&a->seq, &s, next, 0, __ATOMIC_ACQUIRE,
                                                     __ATOMIC_RELAXED)) {
            s = next;
            break;
        }
        if (next == s) {
            sched_yield();
            s = __atomic_load_n(&a->seq, __ATOMIC_RELAXED);
        }
    }
    __atomic_thread_fence(__ATOMIC_RELEASE);
    memcpy(a->buf, text, len);
    __atomic_store_n(&a->len, (uint32_t)len, __ATOMIC_RELAXED);
    __atomic_store_n(&a->seq, s + 1, __ATOMIC_RELEASE);
    return 0;
}

char *adminsync_read(const struct adminsync *a, size_t *len, uint64_t *seq)
{
    for (long spins = 0; spins < SPINS; spins++) {
        uint64_t s1 = __atomic_load_n(&a->seq, __ATOMIC_ACQUIRE);
        if (s1 == 0)
            return NULL;
        if (s1 & 1) {
            sched_yield();
            continue;
        }
        size_t n = __atomic_load_n(&a->len, __ATOMIC_RELAXED);
        if (n > ADMINSYNC_CAP)
            continue;
        char *out = malloc(n + 1);
        if (!out)
            return NULL;
        memcpy(out, a->buf, n);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&a->seq, __ATOMIC_RELAXED) == s1) {
            out[n] = 0;
            *len = n;
            *seq = s1;
            return out;
        }
        free(out);
    }
    return NULL;
}

#ifndef ECHOKIT_OUTQ_H
#define ECHOKIT_OUTQ_H
/* A connection's output queue: a list of blocks written with writev().
 * Holds no memory while empty, so an idle connection costs nothing here. */
#include <stddef.h>
#include <sys/types.h>

#define OUTQ_BLOCK 16384

struct outq_block {
    struct outq_block *next;
    size_t start, end, cap;
    char data[];
};

struct outq {
    struct outq_block *head, *tail;
    size_t len;
};

/* Copies len bytes to the end of the queue. Returns 0, or -1 when out of memory
 * (the queue is unchanged). */
int outq_append(struct outq *q, const void *data, size_t len);

/* Writes as much as the socket takes in one writev(). Returns the bytes written
 * (0 if the socket is full), or -1 with errno on a socket error. */
ssize_t outq_write(struct outq *q, int fd);

/* The same on a socket, with MSG_DONTWAIT (it never blocks, whatever the
 * socket's own flags, which others may share) and MSG_NOSIGNAL. */
ssize_t outq_send(struct outq *q, int fd);

/* Drops n bytes (n <= q->len) from the front. */
void outq_consume(struct outq *q, size_t n);

/* Frees everything. */
void outq_clear(struct outq *q);

#endif

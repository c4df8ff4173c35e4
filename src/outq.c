#include "outq.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define OUTQ_IOV 64

int outq_append(struct outq *q, const void *data, size_t len)
{
    const char *p = data;
    struct outq_block *t = q->tail;
    size_t room = t ? t->cap - t->end : 0;
    size_t first = len < room ? len : room;
    size_t rest = len - first;
    struct outq_block *b = NULL;
    if (rest) {
        /* Allocate before copying anything so failure leaves the queue as it was. */
        size_t cap = rest > OUTQ_BLOCK ? rest : OUTQ_BLOCK;
        b = malloc(sizeof *b + cap);
        if (!b)
            return -1;
        b->next = NULL;
        b->start = 0;
        b->end = rest;
        b->cap = cap;
        memcpy(b->data, p + first, rest);
    }
    if (first) {
        memcpy(t->data + t->end, p, first);
        t->end += first;
    }
    if (b) {
        if (t)
            t->next = b;
        else
            q->head = b;
        q->tail = b;
    }
    q->len += len;
    return 0;
}

void outq_consume(struct outq *q, size_t n)
{
    q->len -= n;
    while (n) {
        struct outq_block *b = q->head;
        size_t avail = b->end - b->start;
        if (n < avail) {
            b->start += n;
            return;
        }
        n -= avail;
        q->head = b->next;
        free(b);
    }
    /* An exactly consumed head block is freed above only when n reached it. */
    while (q->head && q->head->start == q->head->end) {
        struct outq_block *b = q->head;
        q->head = b->next;
        free(b);
    }
    if (!q->head)
        q->tail = NULL;
}

/* One system call over the queued blocks: writev, or for a socket that must
 * not block whatever its own flags say, sendmsg with MSG_DONTWAIT. */
static ssize_t write_blocks(struct outq *q, int fd, int dontwait)
{
    struct iovec iov[OUTQ_IOV];
    int n = 0;
    for (struct outq_block *b = q->head; b && n < OUTQ_IOV; b = b->next) {
        if (b->end == b->start)
            continue;
        iov[n].iov_base = b->data + b->start;
        iov[n].iov_len = b->end - b->start;
        n++;
    }
    if (n == 0)
        return 0;
    ssize_t w;
    if (dontwait) {
        struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        w = sendmsg(fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
    } else {
        w = writev(fd, iov, n);
    }
    if (w < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? 0 : -1;
    outq_consume(q, (size_t)w);
    return w;
}

ssize_t outq_write(struct outq *q, int fd)
{
    return write_blocks(q, fd, 0);
}

ssize_t outq_send(struct outq *q, int fd)
{
    return write_blocks(q, fd, 1);
}

void outq_clear(struct outq *q)
{
    struct outq_block *b = q->head;
    while (b) {
        struct outq_block *next = b->next;
        free(b);
        b = next;
    }
    q->head = q->tail = NULL;
    q->len = 0;
}

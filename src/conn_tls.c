/* A connection's TLS records: SSL_read/SSL_write/SSL_do_handshake on the
 * connection's socket, their "want read / want write" turned into the
 * conn's flags for conn.c to arm its watchers with. */
#include "conn_tls.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "tls.h"

static char reason[256];

const char *conn_tls_reason(void)
{
    return reason;
}

/* The peer ended the stream where it may not: nothing in OpenSSL's error
 * queue to tell (it would read "unknown error"). Returns -1, errno EPROTO. */
static ssize_t closed_by_peer(const char *what)
{
    ERR_clear_error();
    snprintf(reason, sizeof reason, "%s: closed by the peer", what);
    errno = EPROTO;
    return -1;
}

/* Maps a failed SSL call to errno and the flags; returns -1. */
static ssize_t failed(struct conn *c, int rc, const char *what, int writing)
{
    int e = SSL_get_error(c->ssl, rc);
    switch (e) {
    case SSL_ERROR_WANT_READ:
        if (writing)
            c->flags |= CONN_TLS_WANT_R; /* a write waits for a read */
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_WANT_WRITE:
        c->flags |= CONN_TLS_WANT_W;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        /* Where no end may come (a handshake): the TCP EOF looks like this
         * under SSL_OP_IGNORE_UNEXPECTED_EOF. */
        return closed_by_peer(what);
    case SSL_ERROR_SYSCALL:
        if (errno && errno != EAGAIN) {
            ERR_clear_error();
            return -1; /* the socket's error: reset and such */
        }
        if (!ERR_peek_error())
            return closed_by_peer(what); /* the TCP EOF */
        /* no errno: OpenSSL's queue says why */
        __attribute__((fallthrough));
    default: {
        char why[200];
        tls_failure(c->ssl, why, sizeof why);
        snprintf(reason, sizeof reason, "%s: %s", what, why);
        errno = EPROTO;
        return -1;
    }
    }
}

int conn_tls_attach(struct conn *c)
{
    if (SSL_set_fd(c->ssl, c->fd) == 1)
        return 0;
    ERR_clear_error();
    return -1;
}

ssize_t conn_tls_recv(struct conn *c, char *buf, size_t len)
{
    size_t got = 0;
    c->flags &= ~(unsigned)CONN_TLS_WANT_W;
    while (got < len) {
        int n = SSL_read(c->ssl, buf + got, len - got > INT32_MAX ? INT32_MAX : (int)(len - got));
        if (n > 0) {
            got += (size_t)n;
            /* Only what is already buffered: another SSL_read would cost a
             * recv that most likely finds the socket empty. */
            if (!SSL_has_pending(c->ssl))
                break;
            continue;
        }
        if (SSL_get_error(c->ssl, n) == SSL_ERROR_ZERO_RETURN) {
            if (got)
                break; /* the end comes with the next call */
            return 0;
        }
        if (got) {
            ERR_clear_error();
            break; /* deliver what came; the error shows again next time */
        }
        return failed(c, n, "tls", 0);
    }
    return (ssize_t)got;
}

ssize_t conn_tls_send(struct conn *c, const char *p, size_t len)
{
    size_t put = 0;
    while (put < len) {
        size_t want = len - put;
        int n = SSL_write(c->ssl, p + put, want > INT32_MAX ? INT32_MAX : (int)want);
        if (n > 0) {
            put += (size_t)n;
            continue;
        }
        if (put && SSL_get_error(c->ssl, n) == SSL_ERROR_WANT_WRITE) {
            c->flags |= CONN_TLS_WANT_W;
            break;
        }
        if (put) {
            failed(c, n, "tls write", 1); /* note the flags; report what went */
            break;
        }
        return failed(c, n, "tls write", 1);
    }
    return (ssize_t)put;
}

/* A record's worth: after a write that must be retried, OpenSSL wants at
 * least the bytes of the record it had started. */
#define TLS_RECORD 16384

ssize_t conn_tls_write_queue(struct conn *c, struct outq *q)
{
    size_t put = 0;
    char scratch[TLS_RECORD];
    while (q->len) {
        struct outq_block *b = q->head;
        const char *p = b->data + b->start;
        size_t avail = b->end - b->start;
        size_t need = q->len < TLS_RECORD ? q->len : TLS_RECORD;
        if (avail < need) {
            /* The head block is short: gather a record's worth (the retry
             * rule above, and fewer tiny records). */
            size_t n = 0;
            for (struct outq_block *x = b; x && n < need; x = x->next) {
                size_t k = x->end - x->start;
                if (k > need - n)
                    k = need - n;
                memcpy(scratch + n, x->data + x->start, k);
                n += k;
            }
            p = scratch;
            avail = need;
        }
        int w = SSL_write(c->ssl, p, avail > INT32_MAX ? INT32_MAX : (int)avail);
        if (w > 0) {
            outq_consume(q, (size_t)w);
            put += (size_t)w;
            continue;
        }
        ssize_t r = failed(c, w, "tls write", 1);
        if (r < 0 && errno == EAGAIN)
            break;
        if (put) {
            errno = 0;
            break;
        }
        return -1;
    }
    return (ssize_t)put;
}

int conn_tls_handshake(struct conn *c)
{
    c->flags &= ~(unsigned)(CONN_TLS_WANT_W | CONN_TLS_WANT_R);
    ERR_clear_error();
    int rc = SSL_do_handshake(c->ssl);
    if (rc == 1)
        return 1;
    if (failed(c, rc, "tls handshake", 0) < 0 && errno == EAGAIN) {
        c->flags &= ~(unsigned)CONN_TLS_WANT_R;
        return 0;
    }
    if (errno != EPROTO) {
        snprintf(reason, sizeof reason, "tls handshake: %s",
                 errno ? strerror(errno) : "connection closed by the peer");
        errno = EPROTO;
    }
    return -1;
}

int conn_tls_close_notify(struct conn *c)
{
    ERR_clear_error();
    int rc = SSL_shutdown(c->ssl);
    if (rc >= 0) {
        c->flags |= CONN_TLS_SENT;
        return 1;
    }
    if (SSL_get_error(c->ssl, rc) == SSL_ERROR_WANT_WRITE)
        return 0;
    ERR_clear_error();
    c->flags |= CONN_TLS_SENT;
    return -1;
}

int conn_tls_pending(const struct conn *c)
{
    /* The peer's end counts: a close_notify read with the data before it
     * is reported by the next conn_tls_recv, and the socket, already
     * drained, may never be readable again to call it. */
    return c->ssl &&
           (SSL_has_pending(c->ssl) || (SSL_get_shutdown(c->ssl) & SSL_RECEIVED_SHUTDOWN));
}

void conn_tls_end(struct conn *c, int clean)
{
    if (!c->ssl)
        return;
    if (clean && c->fd >= 0 && (c->flags & CONN_TLS_DONE) &&
        !(c->flags & (CONN_TLS_SENT | CONN_HANDSHAKE)))
        conn_tls_close_notify(c);
    /* A peer that closes without close_notify after ours (most do) is
     * recorded by SSL_OP_IGNORE_UNEXPECTED_EOF as SSL_set_shutdown(RECEIVED),
     * which drops the SENT bit; SSL_free would then take the connection for
     * one cut short and make its session unresumable, and the next
     * connection to that upstream would not resume. */
    if (c->flags & CONN_TLS_SENT)
        SSL_set_shutdown(c->ssl, SSL_get_shutdown(c->ssl) | SSL_SENT_SHUTDOWN);
    SSL_free(c->ssl);
    c->ssl = NULL;
    ERR_clear_error();
}

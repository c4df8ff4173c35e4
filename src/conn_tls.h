#ifndef ECHOKIT_CONN_TLS_H
#define ECHOKIT_CONN_TLS_H
/* The TLS transport of a connection: OpenSSL's records over the socket, for
 * conn.c only. Each call keeps the conn's TLS flags up to date (what the
 * SSL waits for) and never blocks. A return of -1 sets errno: EAGAIN to
 * wait for the socket, EPROTO for a TLS failure (why: conn_tls_reason()),
 * anything else for the socket's own error. */
#include <sys/types.h>

#include "conn.h"

/* Gives the SSL the socket. -1 when out of memory. */
int conn_tls_attach(struct conn *c);

/* Reads plaintext into buf, as many records as fit and are already
 * buffered. >0 bytes, 0 at the end of the stream (close_notify, or the TCP
 * EOF without one), -1. */
ssize_t conn_tls_recv(struct conn *c, char *buf, size_t len);

/* Writes plaintext: >0 bytes taken (maybe fewer than len), -1. */
ssize_t conn_tls_send(struct conn *c, const char *p, size_t len);

/* Writes what q (c's output queue) holds: the bytes taken (0 if none), -1. */
ssize_t conn_tls_write_queue(struct conn *c, struct outq *q);

/* One step of the handshake: 1 done, 0 in progress (CONN_TLS_WANT_W says
 * whether it waits to write), -1 failed (EPROTO). */
int conn_tls_handshake(struct conn *c);

/* Sends close_notify: 1 sent, 0 not yet (wait for writable), -1 error. */
int conn_tls_close_notify(struct conn *c);

/* Buffered plaintext or records SSL_read would return without the socket,
 * or the end of the stream it has read and not yet reported. */
int conn_tls_pending(const struct conn *c);

/* Why the last call failed with EPROTO ("handshake: wrong version number",
 * "certificate verify failed: ..."). Valid until the next call. */
const char *conn_tls_reason(void);

/* At teardown: close_notify if clean is set and one is due (best effort),
 * then frees the SSL. */
void conn_tls_end(struct conn *c, int clean);

#endif

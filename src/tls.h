#ifndef ECHOKIT_TLS_H
#define ECHOKIT_TLS_H
/* TLS configurations (OpenSSL 3): what a TLS listener serves (certificates
 * chosen by SNI, ALPN, client certificates) and how an outbound connection
 * checks its peer (CA store, name, ALPN, client certificate, session reuse).
 * No libev, no Lua, no sockets: the conn layer drives the SSL objects made
 * here (conn_tls.c). Functions that can fail return NULL or -1 with a
 * message in err (ECHOKIT_ERR_LEN bytes). */
#include <openssl/ssl.h>
#include <stddef.h>

#include "util.h"

/* "tls://HOST:PORT": advances *spec past the scheme and returns 1; "tcp://"
 * is skipped and returns 0, as does an address without a scheme. */
int tls_scheme(const char **spec);

/* ---- serving ------------------------------------------------------------ */

#define TLS_MAX_CERTS 16

struct tls_server_opts {
    const char *cert[TLS_MAX_CERTS]; /* PEM: the certificate, then its chain */
    const char *key[TLS_MAX_CERTS];  /* PEM private key of cert[i] */
    int ncerts;
    int self_signed;       /* no cert: make one for localhost, 127.0.0.1, ::1 */
    const char *alpn;      /* "h2,http/1.1": offered in this order, or NULL */
    const char *client_ca; /* request client certificates and verify them */
    const char *mitm_ca_cert, *mitm_ca_key; /* sign a leaf per SNI with this CA */
    const char *mitm_default; /* the leaf's name when the client sends no SNI */
};

struct tls_server;

/* Loads and checks every file (a key that does not match its certificate is
 * an error naming both files). With self_signed, the certificate made is
 * logged with its SHA-256 fingerprint. */
struct tls_server *tls_server_new(const struct tls_server_opts *o, char *err);
void tls_server_free(struct tls_server *ts);

/* The same, made once per distinct options and kept for the process's life
 * (conn:starttls's configurations, made by handlers at run time). */
struct tls_server *tls_server_get(const struct tls_server_opts *o, char *err);

/* A new server-side SSL for one connection, or NULL (out of memory). */
SSL *tls_server_ssl(struct tls_server *ts);

/* ---- connecting --------------------------------------------------------- */

struct tls_client_opts {
    const char *ca;       /* PEM CA file, else the system store */
    const char *sni;      /* name sent and verified, else the host */
    const char *alpn;     /* "h2,http/1.1" */
    const char *cert, *key; /* client certificate */
    int insecure;         /* skip verification (logged once per upstream) */
};

struct tls_client;

/* The configuration for connecting to host with o: made once per distinct
 * (options, host, port) and kept for the process's life, so that
 * connections to one upstream share a context and resume its sessions. */
struct tls_client *tls_client_get(const struct tls_client_opts *o, const char *host, int port,
                                  char *err);

/* A new client-side SSL for one connection to that upstream: SNI set (unless
 * the name is an IP address), peer verification armed, the last session
 * offered for resumption. NULL when out of memory. */
SSL *tls_client_ssl(struct tls_client *tc);

/* ---- what a connection negotiated ---------------------------------------- */

/* Why a handshake failed, for a log line and a close reason: the verify
 * error when the peer's certificate was refused, else OpenSSL's reason.
 * Clears the thread's OpenSSL error queue. */
void tls_failure(SSL *ssl, char *buf, size_t cap);

/* The key log (NSS format, what SSLKEYLOGFILE writes): from now on every
 * session's secrets are appended to path. Returns -1 when it cannot be
 * opened. */
int tls_keylog_open(const char *path, char *err);

/* Frees every upstream configuration and the key log (at exit). */
void tls_cleanup(void);

/* The OpenSSL library's version, "3.0.11". */
const char *tls_library_version(void);

#endif

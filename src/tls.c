/* TLS configurations: the server side (certificates by SNI, ALPN, client
 * certificates, the debugging proxy's leaf per name) and the client side
 * (verification, SNI, ALPN, client certificates, session reuse). */
#include "tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "log.h"
#include "tlscert.h"

int tls_scheme(const char **spec)
{
    if (!strncmp(*spec, "tls://", 6)) {
        *spec += 6;
        return 1;
    }
    if (!strncmp(*spec, "tcp://", 6))
        *spec += 6;
    return 0;
}

/* The first error in OpenSSL's queue, as text ("" when none); clears it. */
static void ssl_error(char *buf, size_t cap)
{
    unsigned long e = ERR_peek_last_error();
    if (!e) {
        snprintf(buf, cap, "unknown error");
    } else {
        const char *r = ERR_reason_error_string(e);
        if (r)
            snprintf(buf, cap, "%s", r);
        else
            ERR_error_string_n(e, buf, cap);
    }
    ERR_clear_error();
}

/* ---- the key log ---------------------------------------------------------- */

static FILE *keylog;

static void keylog_cb(const SSL *ssl, const char *line)
{
    if (!keylog)
        return;
    fputs(line, keylog);
    fputc('\n', keylog);
    fflush(keylog); /* a regular file: Wireshark may read it while we run */
}

int tls_keylog_open(const char *path, char *err)
{
    FILE *f = fopen(path, "a");
    if (!f) {
        snprintf(err, ECHOKIT_ERR_LEN, "keylog %s: %s", path, strerror(errno));
        return -1;
    }
    if (keylog)
        fclose(keylog);
    keylog = f;
    return 0;
}

/* What every context gets: TLS 1.2 at least, no renegotiation (a peer
 * cannot make a write wait for a read), buffers released while idle, a TCP
 * EOF without close_notify read as the end of the stream. */
static SSL_CTX *ctx_new(const SSL_METHOD *m, char *err)
{
    SSL_CTX *ctx = SSL_CTX_new(m);
    if (!ctx) {
        ssl_error(err, ECHOKIT_ERR_LEN);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF |
                                 SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_keylog_callback(ctx, keylog_cb);
    return ctx;
}

/* "h2,http/1.1" -> ALPN wire format (length-prefixed names). */
static int alpn_wire(const char *list, unsigned char *out, size_t cap, size_t *len, char *err)
{
    size_t n = 0;
    const char *p = list;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l == 0 || l > 255 || n + 1 + l > cap) {
            snprintf(err, ECHOKIT_ERR_LEN, "alpn %s: names of 1 to 255 bytes, comma-separated",
                     list);
            return -1;
        }
        out[n++] = (unsigned char)l;
        memcpy(out + n, p, l);
        n += l;
        p += l + (e ? 1 : 0);
    }
    if (!n) {
        snprintf(err, ECHOKIT_ERR_LEN, "alpn: empty list");
        return -1;
    }
    *len = n;
    return 0;
}

/* ---- serving ---------------------------------------------------------------- */

struct tls_cert {
    X509 *x;
    EVP_PKEY *key;
    STACK_OF(X509) *chain;
};

struct tls_server {
    SSL_CTX *ctx;
    struct tls_cert certs[TLS_MAX_CERTS];
    int ncerts;
    unsigned char alpn[256];
    size_t alpn_len;
    struct tlsca *mitm;
    char *mitm_default;
};

static void cert_clear(struct tls_cert *c)
{
    X509_free(c->x);
    EVP_PKEY_free(c->key);
    sk_X509_pop_free(c->chain, X509_free);
    memset(c, 0, sizeof *c);
}

/* Reads a PEM certificate file (the certificate, then its chain) and its
 * key file into c. */
static int cert_load(struct tls_cert *c, const char *certf, const char *keyf, char *err)
{
    memset(c, 0, sizeof *c);
    BIO *b = BIO_new_file(certf, "r");
    if (!b) {
        snprintf(err, ECHOKIT_ERR_LEN, "--tls-cert %s: %s", certf, strerror(errno));
        ERR_clear_error();
        return -1;
    }
    c->x = PEM_read_bio_X509_AUX(b, NULL, NULL, NULL);
    if (!c->x) {
        BIO_free(b);
        ERR_clear_error();
        snprintf(err, ECHOKIT_ERR_LEN, "--tls-cert %s: no PEM certificate in it", certf);
        return -1;
    }
    c->chain = sk_X509_new_null();
    X509 *x;
    while (c->chain && (x = PEM_read_bio_X509(b, NULL, NULL, NULL)))
        sk_X509_push(c->chain, x);
    ERR_clear_error(); /* the end of the file */
    BIO_free(b);
    b = BIO_new_file(keyf, "r");
    if (!b) {
        snprintf(err, ECHOKIT_ERR_LEN, "--tls-key %s: %s", keyf, strerror(errno));
        ERR_clear_error();
        cert_clear(c);
        return -1;
    }
    c->key = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
    BIO_free(b);
    if (!c->key) {
        ERR_clear_error();
        snprintf(err, ECHOKIT_ERR_LEN,
                 "--tls-key %s: no PEM private key in it (or it is encrypted)", keyf);
        cert_clear(c);
        return -1;
    }
    if (!X509_check_private_key(c->x, c->key)) {
        ERR_clear_error();
        snprintf(err, ECHOKIT_ERR_LEN, "--tls-key %s does not match the certificate in %s",
                 keyf, certf);
        cert_clear(c);
        return -1;
    }
    return 0;
}

/* A certificate outside its validity is served all the same (a test may
 * want exactly that), but said at start-up: clients will refuse it. */
static void warn_validity(const char *file, X509 *x)
{
    const ASN1_TIME *na = X509_get0_notAfter(x), *nb = X509_get0_notBefore(x);
    const char *what = X509_cmp_current_time(na) < 0   ? "expired"
                       : X509_cmp_current_time(nb) > 0 ? "not valid yet"
                                                       : NULL;
    if (!what)
        return;
    char when[64] = "?";
    BIO *b = BIO_new(BIO_s_mem());
    if (b && ASN1_TIME_print(b, what[0] == 'e' ? na : nb)) {
        int n = BIO_read(b, when, sizeof when - 1);
        when[n > 0 ? n : 0] = '\0';
    }
    BIO_free(b);
    log_msg(LOG_WARN, "tls: the certificate in %s is %s (%s %s): verifying clients will "
                      "refuse it", file, what, what[0] == 'e' ? "not after" : "not before", when);
}

static int use_cert(SSL *ssl, const struct tls_cert *c)
{
    return SSL_use_cert_and_key(ssl, c->x, c->key, c->chain, 1) == 1;
}

/* Picks the certificate for the client's SNI: the first whose names match
 * (X509_check_host, wildcards included), or a leaf signed for it by the
 * debugging proxy's CA; the default (the first) otherwise. */
static int servername_cb(SSL *ssl, int *alert, void *arg)
{
    struct tls_server *ts = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (ts->mitm) {
        const char *want = name && *name ? name : ts->mitm_default;
        X509 *x = NULL;
        EVP_PKEY *k = NULL;
        char err[ECHOKIT_ERR_LEN];
        if (!want || tlsca_leaf(ts->mitm, want, &x, &k, err) < 0) {
            log_msg(LOG_WARN, "tls: no certificate for %s: %s", want ? want : "(no name)",
                    want ? err : "the client sent no SNI");
            *alert = SSL_AD_UNRECOGNIZED_NAME;
            return SSL_TLSEXT_ERR_ALERT_FATAL;
        }
        STACK_OF(X509) *chain = sk_X509_new_null();
        X509 *ca = tlsca_cert(ts->mitm);
        if (chain && X509_up_ref(ca))
            sk_X509_push(chain, ca);
        int ok = SSL_use_cert_and_key(ssl, x, k, chain, 1) == 1;
        sk_X509_pop_free(chain, X509_free);
        X509_free(x);
        EVP_PKEY_free(k);
        if (!ok) {
            *alert = SSL_AD_INTERNAL_ERROR;
            return SSL_TLSEXT_ERR_ALERT_FATAL;
        }
        return SSL_TLSEXT_ERR_OK;
    }
    if (!name || ts->ncerts < 2)
        return SSL_TLSEXT_ERR_OK; /* the default is already in place */
    for (int i = 0; i < ts->ncerts; i++) {
        if (X509_check_host(ts->certs[i].x, name, 0, 0, NULL) == 1) {
            if (i && !use_cert(ssl, &ts->certs[i])) {
                *alert = SSL_AD_INTERNAL_ERROR;
                return SSL_TLSEXT_ERR_ALERT_FATAL;
            }
            return SSL_TLSEXT_ERR_OK;
        }
    }
    return SSL_TLSEXT_ERR_OK;
}

/* The server's ALPN choice: its own first preference the client offers;
 * none in common continues without ALPN. */
static int alpn_select_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                          const unsigned char *in, unsigned int inlen, void *arg)
{
    struct tls_server *ts = arg;
    unsigned char *o;
    if (SSL_select_next_proto(&o, outlen, ts->alpn, (unsigned)ts->alpn_len, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = o;
    return SSL_TLSEXT_ERR_OK;
}

static int server_certs(struct tls_server *ts, const struct tls_server_opts *o, char *err)
{
    for (int i = 0; i < o->ncerts; i++) {
        if (!o->key[i]) {
            snprintf(err, ECHOKIT_ERR_LEN, "--tls-cert %s: give its key with --tls-key",
                     o->cert[i]);
            return -1;
        }
        if (cert_load(&ts->certs[i], o->cert[i], o->key[i], err) < 0)
            return -1;
        warn_validity(o->cert[i], ts->certs[i].x);
        ts->ncerts++;
    }
    if (ts->ncerts || !o->self_signed)
        return 0;
    static const char *const names[] = {"localhost", "127.0.0.1", "::1"};
    struct tls_cert *c = &ts->certs[0];
    c->key = tlscert_new_key(err);
    if (!c->key)
        return -1;
    c->x = tlscert_self_signed(c->key, names, 3, 365, err);
    if (!c->x)
        return -1;
    ts->ncerts = 1;
    char fp[TLSCERT_FP_LEN];
    tlscert_fingerprint(c->x, fp);
    log_msg(LOG_INFO, "tls: self-signed certificate for localhost, 127.0.0.1, ::1; "
                      "SHA-256 fingerprint %s", fp);
    return 0;
}

struct tls_server *tls_server_new(const struct tls_server_opts *o, char *err)
{
    struct tls_server *ts = calloc(1, sizeof *ts);
    if (!ts) {
        snprintf(err, ECHOKIT_ERR_LEN, "out of memory");
        return NULL;
    }
    if (!o->ncerts && !o->self_signed && !o->mitm_ca_cert) {
        snprintf(err, ECHOKIT_ERR_LEN,
                 "a TLS listener needs --tls-cert FILE --tls-key FILE, or --tls-self-signed");
        goto fail;
    }
    if (server_certs(ts, o, err) < 0)
        goto fail;
    if (o->mitm_ca_cert) {
        ts->mitm = tlsca_load(o->mitm_ca_cert, o->mitm_ca_key, err);
        if (!ts->mitm)
            goto fail;
        if (o->mitm_default && !(ts->mitm_default = strdup(o->mitm_default))) {
            snprintf(err, ECHOKIT_ERR_LEN, "out of memory");
            goto fail;
        }
    }
    ts->ctx = ctx_new(TLS_server_method(), err);
    if (!ts->ctx)
        goto fail;
    /* Sessions resume through tickets; the id context is what OpenSSL
     * requires once client certificates are verified. */
    SSL_CTX_set_session_id_context(ts->ctx, (const unsigned char *)"echokit", 7);
    if (ts->ncerts &&
        SSL_CTX_use_cert_and_key(ts->ctx, ts->certs[0].x, ts->certs[0].key, ts->certs[0].chain,
                                 1) != 1) {
        char e[200];
        ssl_error(e, sizeof e);
        snprintf(err, ECHOKIT_ERR_LEN, "certificate %s: %s",
                 o->ncerts ? o->cert[0] : "(self-signed)", e);
        goto fail;
    }
    SSL_CTX_set_tlsext_servername_callback(ts->ctx, servername_cb);
    SSL_CTX_set_tlsext_servername_arg(ts->ctx, ts);
    if (o->alpn) {
        if (alpn_wire(o->alpn, ts->alpn, sizeof ts->alpn, &ts->alpn_len, err) < 0)
            goto fail;
        SSL_CTX_set_alpn_select_cb(ts->ctx, alpn_select_cb, ts);
    }
    if (o->client_ca) {
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(o->client_ca);
        if (!names || SSL_CTX_load_verify_locations(ts->ctx, o->client_ca, NULL) != 1) {
            sk_X509_NAME_pop_free(names, X509_NAME_free);
            ERR_clear_error();
            snprintf(err, ECHOKIT_ERR_LEN, "--tls-client-ca %s: no readable PEM certificate",
                     o->client_ca);
            goto fail;
        }
        SSL_CTX_set_client_CA_list(ts->ctx, names);
        SSL_CTX_set_verify(ts->ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    }
    return ts;
fail:
    tls_server_free(ts);
    return NULL;
}

void tls_server_free(struct tls_server *ts)
{
    if (!ts)
        return;
    SSL_CTX_free(ts->ctx);
    for (int i = 0; i < ts->ncerts; i++)
        cert_clear(&ts->certs[i]);
    tlsca_free(ts->mitm);
    free(ts->mitm_default);
    free(ts);
}

struct cached_server {
    struct cached_server *next;
    char *key;
    struct tls_server *ts;
};
static struct cached_server *servers;

struct tls_server *tls_server_get(const struct tls_server_opts *o, char *err)
{
    char *key = NULL;
#define S(x) ((x) ? (x) : "")
    if (asprintf(&key, "%s|%s|%d|%s|%s|%s|%s|%s", S(o->cert[0]), S(o->key[0]), o->self_signed,
                 S(o->alpn), S(o->client_ca), S(o->mitm_ca_cert), S(o->mitm_ca_key),
                 S(o->mitm_default)) < 0) {
        snprintf(err, ECHOKIT_ERR_LEN, "out of memory");
        return NULL;
    }
#undef S
    for (struct cached_server *cs = servers; cs; cs = cs->next) {
        if (!strcmp(cs->key, key)) {
            free(key);
            return cs->ts;
        }
    }
    struct cached_server *cs = calloc(1, sizeof *cs);
    if (!cs || !(cs->ts = tls_server_new(o, err))) {
        if (!cs)
            snprintf(err, ECHOKIT_ERR_LEN, "out of memory");
        free(cs);
        free(key);
        return NULL;
    }
    cs->key = key;
    cs->next = servers;
    servers = cs;
    return cs->ts;
}

SSL *tls_server_ssl(struct tls_server *ts)
{
    SSL *ssl = SSL_new(ts->ctx);
    if (ssl)
        SSL_set_accept_state(ssl);
    else
        ERR_clear_error();
    return ssl;
}

/* ---- connecting ------------------------------------------------------------- */

struct tls_client {
    struct tls_client *next;
    char *key;          /* the options, host and port it was made for */
    SSL_CTX *ctx;
    char *name;         /* verified (and sent as SNI unless an IP) */
    int name_is_ip;
    int insecure;
    SSL_SESSION *session; /* the newest, offered by the next connection */
};

/* Most recently used first. Bounded: a handler that connects to ever new
 * upstreams (the control API's proxies, names from the traffic) must not
 * grow it without end. */
#define TLS_CLIENTS_MAX 256
static struct tls_client *clients;
static int nclients;
static int client_idx = -1; /* SSL_CTX ex_data slot: the tls_client */

/* Connections made with it keep its SSL_CTX (reference counted); its
 * session callback finds nothing once it is unlinked here. */
static void client_free(struct tls_client *tc)
{
    SSL_CTX_set_ex_data(tc->ctx, client_idx, NULL);
    SSL_SESSION_free(tc->session);
    SSL_CTX_free(tc->ctx);
    free(tc->key);
    free(tc->name);
    free(tc);
}

/* A session ticket arrived: keep it for the next connection. */
static int new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
    struct tls_client *tc = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), client_idx);
    if (!tc)
        return 0;
    SSL_SESSION_free(tc->session);
    tc->session = sess;
    return 1; /* we took the reference */
}

static int is_ip(const char *s)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

static char *client_key(const struct tls_client_opts *o, const char *host, int port)
{
    char *k = NULL;
#define S(x) ((x) ? (x) : "")
    if (asprintf(&k, "%s|%d|%s|%s|%s|%s|%s|%d", host, port, S(o->ca), S(o->sni), S(o->alpn),
                 S(o->cert), S(o->key), o->insecure) < 0)
        return NULL;
#undef S
    return k;
}

static struct tls_client *client_new(const struct tls_client_opts *o, const char *host,
                                     char *err)
{
    struct tls_client *tc = calloc(1, sizeof *tc);
    if (!tc || !(tc->name = strdup(o->sni ? o->sni : host))) {
        free(tc);
        snprintf(err, ECHOKIT_ERR_LEN, "out of memory");
        return NULL;
    }
    tc->name_is_ip = is_ip(tc->name);
    tc->insecure = o->insecure;
    tc->ctx = ctx_new(TLS_client_method(), err);
    if (!tc->ctx)
        goto fail;
    if (client_idx < 0)
        client_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    SSL_CTX_set_ex_data(tc->ctx, client_idx, tc);
    SSL_CTX_set_session_cache_mode(tc->ctx,
                                   SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(tc->ctx, new_session_cb);
    if (!o->insecure) {
        int ok = o->ca ? SSL_CTX_load_verify_locations(tc->ctx, o->ca, NULL)
                       : SSL_CTX_set_default_verify_paths(tc->ctx);
        if (ok != 1) {
            ERR_clear_error();
            snprintf(err, ECHOKIT_ERR_LEN, "ca=%s: no readable PEM certificate",
                     o->ca ? o->ca : "(system store)");
            goto fail;
        }
        SSL_CTX_set_verify(tc->ctx, SSL_VERIFY_PEER, NULL);
    }
    if (o->alpn) {
        unsigned char wire[256];
        size_t len;
        if (alpn_wire(o->alpn, wire, sizeof wire, &len, err) < 0)
            goto fail;
        SSL_CTX_set_alpn_protos(tc->ctx, wire, (unsigned)len);
    }
    if (o->cert || o->key) {
        struct tls_cert c;
        if (!o->cert || !o->key) {
            snprintf(err, ECHOKIT_ERR_LEN, "a client certificate needs both cert= and key=");
            goto fail;
        }
        if (cert_load(&c, o->cert, o->key, err) < 0)
            goto fail;
        int ok = SSL_CTX_use_cert_and_key(tc->ctx, c.x, c.key, c.chain, 1) == 1;
        cert_clear(&c);
        if (!ok) {
            ssl_error(err, ECHOKIT_ERR_LEN);
            goto fail;
        }
    }
    return tc;
fail:
    SSL_CTX_free(tc->ctx);
    free(tc->name);
    free(tc);
    return NULL;
}

struct tls_client *tls_client_get(const struct tls_client_opts *o, const char *host, int port,
                                  char *err)
{
    char *key = client_key(o, host, port);
    if (!key) {
        snprintf(err, ECHOKIT_ERR_LEN, "out of memory");
        return NULL;
    }
    for (struct tls_client **p = &clients; *p; p = &(*p)->next) {
        struct tls_client *tc = *p;
        if (!strcmp(tc->key, key)) {
            free(key);
            *p = tc->next; /* to the front */
            tc->next = clients;
            clients = tc;
            return tc;
        }
    }
    if (nclients >= TLS_CLIENTS_MAX) {
        struct tls_client **p = &clients;
        while ((*p)->next)
            p = &(*p)->next;
        client_free(*p);
        *p = NULL;
        nclients--;
    }
    struct tls_client *tc = client_new(o, host, err);
    if (!tc) {
        free(key);
        return NULL;
    }
    tc->key = key;
    tc->next = clients;
    clients = tc;
    nclients++;
    if (o->insecure)
        log_msg(LOG_WARN, "tls: %s:%d: certificate verification is off (insecure=1)", host,
                port);
    return tc;
}

SSL *tls_client_ssl(struct tls_client *tc)
{
    SSL *ssl = SSL_new(tc->ctx);
    if (!ssl) {
        ERR_clear_error();
        return NULL;
    }
    SSL_set_connect_state(ssl);
    int ok = 1;
    if (!tc->name_is_ip)
        ok = SSL_set_tlsext_host_name(ssl, tc->name) == 1;
    if (ok && !tc->insecure) {
        if (tc->name_is_ip)
            ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), tc->name) == 1;
        else
            ok = SSL_set1_host(ssl, tc->name) == 1;
    }
    if (ok && tc->session)
        ok = SSL_set_session(ssl, tc->session) == 1;
    if (!ok) {
        ERR_clear_error();
        SSL_free(ssl);
        return NULL;
    }
    return ssl;
}

/* ---- failures -------------------------------------------------------------- */

void tls_failure(SSL *ssl, char *buf, size_t cap)
{
    long v = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
    if (v != X509_V_OK) {
        snprintf(buf, cap, "certificate verify failed: %s", X509_verify_cert_error_string(v));
        ERR_clear_error();
        return;
    }
    ssl_error(buf, cap);
}

void tls_cleanup(void)
{
    while (servers) {
        struct cached_server *cs = servers;
        servers = cs->next;
        tls_server_free(cs->ts);
        free(cs->key);
        free(cs);
    }
    while (clients) {
        struct tls_client *tc = clients;
        clients = tc->next;
        client_free(tc);
    }
    nclients = 0;
    if (keylog) {
        fclose(keylog);
        keylog = NULL;
    }
}

const char *tls_library_version(void)
{
    return OpenSSL_version(OPENSSL_VERSION_STRING);
}

/* TLS as Lua sees it: conn:tls() (what was negotiated), conn:starttls(opts)
 * (upgrade in place), the options of echokit.connect("tls://...") and
 * echokit.tls_hello(data) (a ClientHello read without decrypting). */
#include <arpa/inet.h>
#include <lauxlib.h>
#include <string.h>

#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "script.h"
#include "tls.h"
#include "tlscert.h"
#include "tlshello.h"

/* A string field of the options table at idx, or NULL; raises on another
 * type. The string stays valid while the table holds it. */
static const char *opt_str(lua_State *L, int idx, const char *key, const char *who)
{
    if (!lua_istable(L, idx))
        return NULL;
    int t = lua_getfield(L, idx, key);
    const char *v = NULL;
    if (t == LUA_TSTRING || t == LUA_TNUMBER)
        v = lua_tostring(L, -1);
    else if (t != LUA_TNIL)
        luaL_error(L, "%s: tls option %s must be a string (got %s)", who, key,
                   lua_typename(L, t));
    lua_pop(L, 1);
    return v;
}

/* true, "1", "true", "yes" */
static int opt_bool(lua_State *L, int idx, const char *key)
{
    if (!lua_istable(L, idx))
        return 0;
    int t = lua_getfield(L, idx, key);
    int v = 0;
    if (t == LUA_TBOOLEAN) {
        v = lua_toboolean(L, -1);
    } else if (t == LUA_TSTRING || t == LUA_TNUMBER) {
        const char *s = lua_tostring(L, -1);
        v = !strcmp(s, "1") || !strcmp(s, "true") || !strcmp(s, "yes");
    }
    lua_pop(L, 1);
    return v;
}

static const char *const client_keys[] = {"ca", "sni", "alpn", "cert", "key", "insecure", NULL};
/* conn:starttls's as a client: the same, and whether to be the server */
static const char *const starttls_client_keys[] = {"server", "ca",  "sni",      "alpn",
                                                   "cert",   "key", "insecure", NULL};
static const char *const server_keys[] = {"server", "cert", "key", "self_signed", "alpn",
                                          "client_ca", "ca_cert", "ca_key", "name", NULL};

/* Unknown keys are mistakes (a typo would silently skip verification). */
static void check_keys(lua_State *L, int idx, const char *const *known, const char *who)
{
    if (!lua_istable(L, idx))
        return;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        int ok = 0;
        if (lua_type(L, -1) == LUA_TSTRING)
            for (int i = 0; known[i] && !ok; i++)
                ok = !strcmp(lua_tostring(L, -1), known[i]);
        if (!ok)
            luaL_error(L, "%s: unknown tls option %s", who, luaL_tolstring(L, -1, NULL));
    }
}

/* The client configuration from the options at idx (or nil), whose keys
 * must be among known; who names the caller in errors. */
static struct tls_client *client_config(lua_State *L, int idx, const char *host, int port,
                                        const char *const *known, const char *who)
{
    if (!lua_isnil(L, idx))
        luaL_checktype(L, idx, LUA_TTABLE);
    check_keys(L, idx, known, who);
    struct tls_client_opts o = {
        .ca = opt_str(L, idx, "ca", who),
        .sni = opt_str(L, idx, "sni", who),
        .alpn = opt_str(L, idx, "alpn", who),
        .cert = opt_str(L, idx, "cert", who),
        .key = opt_str(L, idx, "key", who),
        .insecure = opt_bool(L, idx, "insecure"),
    };
    char err[ECHOKIT_ERR_LEN];
    struct tls_client *tc = tls_client_get(&o, host, port, err);
    if (!tc)
        luaL_error(L, "tls upstream %s:%d: %s", host, port, err);
    return tc;
}

struct tls_client *ltls_client(lua_State *L, int idx, const char *host, int port)
{
    return client_config(L, idx, host, port, client_keys, "echokit.connect");
}


/* echokit.tls_check(addr, tlsopts), or echokit.tls_check(serveropts): the
 * configuration echokit.connect (or conn:starttls) would use, made now, so
 * that a handler reports a bad CA file or option when it loads rather than
 * at its first client. true, or raises. */
int ltls_check(lua_State *L)
{
    if (lua_istable(L, 1)) {
        /* server options, as conn:starttls takes them */
        ltls_server(L, 1, "tls");
        lua_pushboolean(L, 1);
        return 1;
    }
    const char *spec = luaL_checkstring(L, 1);
    if (!tls_scheme(&spec)) {
        lua_pushboolean(L, 0);
        return 1;
    }
    struct net_addr addr;
    char host[256], err[ECHOKIT_ERR_LEN];
    int port;
    int rc = net_parse_addr2(spec, 0, &addr, host, sizeof host, &port, err);
    if (rc < 0)
        return luaL_error(L, "%s", err);
    if (rc == 0)
        net_addr_split((struct sockaddr *)&addr.ss, addr.len, host, sizeof host, &port);
    lua_settop(L, 2);
    ltls_client(L, 2, host, port);
    lua_pushboolean(L, 1);
    return 1;
}

/* ---- conn:starttls ---------------------------------------------------------- */

struct tls_server *ltls_server(lua_State *L, int idx, const char *who)
{
    if (!lua_isnil(L, idx))
        luaL_checktype(L, idx, LUA_TTABLE);
    struct script *S = script_of(L);
    check_keys(L, idx, server_keys, who);
    struct tls_server_opts o = {0};
    o.cert[0] = opt_str(L, idx, "cert", who);
    o.key[0] = opt_str(L, idx, "key", who);
    o.ncerts = o.cert[0] ? 1 : 0;
    o.self_signed = opt_bool(L, idx, "self_signed");
    o.alpn = opt_str(L, idx, "alpn", who);
    o.client_ca = opt_str(L, idx, "client_ca", who);
    o.mitm_ca_cert = opt_str(L, idx, "ca_cert", who);
    o.mitm_ca_key = opt_str(L, idx, "ca_key", who);
    o.mitm_default = opt_str(L, idx, "name", who);
    if (!o.ncerts && !o.self_signed && !o.mitm_ca_cert && !o.alpn && !o.client_ca) {
        if (!S->tls)
            luaL_error(L, "%s: no certificate: give opts.cert and opts.key (or "
                          "opts.self_signed), or start echokit with --tls-cert/--tls-key or "
                          "--tls-self-signed", who);
        return S->tls;
    }
    if (o.mitm_ca_cert && !o.mitm_ca_key)
        luaL_error(L, "%s: opts.ca_cert needs opts.ca_key", who);
    char err[ECHOKIT_ERR_LEN];
    struct tls_server *ts = tls_server_get(&o, err);
    if (!ts)
        luaL_error(L, "%s: %s", who, err);
    return ts;
}

/* conn:starttls([opts]) -> true | nil, "closed". As the server for an
 * accepted connection, the client for an outbound one, unless opts.server
 * says otherwise. What was written before goes out in the clear; what is
 * written after waits for the handshake and is encrypted; input waits for it
 * too. on_tls follows the handshake; a failure closes the connection. */
static int m_starttls(lua_State *L)
{
    struct conn *c = lconn_check(L, 1);
    if (!lua_isnoneornil(L, 2))
        luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    if (!c) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        return 2;
    }
    if (c->flags & CONN_DGRAM)
        return luaL_error(L, "starttls: not supported on a UDP flow (no DTLS)");
    if (c->ssl)
        return luaL_error(L, "starttls: the connection is already TLS");
    int server = !lconn_is_outbound(c);
    if (lua_istable(L, 2)) {
        lua_getfield(L, 2, "server");
        if (!lua_isnil(L, -1))
            server = lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    SSL *ssl;
    if (server) {
        ssl = tls_server_ssl(ltls_server(L, 2, "starttls"));
    } else {
        char host[128];
        int port;
        net_addr_split(&c->peer.sa, c->peer_len, host, sizeof host, &port);
        ssl = tls_client_ssl(
            client_config(L, 2, host, port, starttls_client_keys, "starttls"));
    }
    if (!ssl)
        return luaL_error(L, "starttls: not enough memory");
    conn_start_tls(c, ssl);
    lua_pushboolean(L, 1);
    return 1;
}

/* ---- conn:tls ------------------------------------------------------------- */

static void set_str(lua_State *L, const char *k, const char *v)
{
    if (v) {
        lua_pushstring(L, v);
        lua_setfield(L, -2, k);
    }
}

static void set_name(lua_State *L, const char *k, const X509_NAME *n)
{
    char *s = X509_NAME_oneline(n, NULL, 0);
    set_str(L, k, s);
    OPENSSL_free(s);
}

/* "2027-11-30T12:00:00Z" */
static void set_time(lua_State *L, const char *k, const ASN1_TIME *t)
{
    struct tm tm;
    char buf[32];
    if (t && ASN1_TIME_to_tm(t, &tm) == 1 && strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm))
        set_str(L, k, buf);
}

static void push_sans(lua_State *L, X509 *x)
{
    lua_newtable(L);
    GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    int n = 0;
    for (int i = 0; gens && i < sk_GENERAL_NAME_num(gens); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
        if (g->type == GEN_DNS) {
            lua_pushlstring(L, (const char *)ASN1_STRING_get0_data(g->d.dNSName),
                            (size_t)ASN1_STRING_length(g->d.dNSName));
        } else if (g->type == GEN_IPADD) {
            const unsigned char *p = ASN1_STRING_get0_data(g->d.iPAddress);
            int len = ASN1_STRING_length(g->d.iPAddress);
            char buf[64];
            if (len == 4)
                snprintf(buf, sizeof buf, "%u.%u.%u.%u", p[0], p[1], p[2], p[3]);
            else if (len != 16 || !inet_ntop(AF_INET6, p, buf, sizeof buf))
                snprintf(buf, sizeof buf, "?");
            lua_pushstring(L, buf);
        } else {
            continue;
        }
        lua_rawseti(L, -2, ++n);
    }
    GENERAL_NAMES_free(gens);
}

static void push_cert(lua_State *L, X509 *x)
{
    lua_createtable(L, 0, 7);
    set_name(L, "subject", X509_get_subject_name(x));
    set_name(L, "issuer", X509_get_issuer_name(x));
    set_time(L, "not_before", X509_get0_notBefore(x));
    set_time(L, "not_after", X509_get0_notAfter(x));
    char fp[TLSCERT_FP_LEN];
    tlscert_fingerprint(x, fp);
    set_str(L, "fingerprint", fp);
    push_sans(L, x);
    lua_setfield(L, -2, "san");
    BIO *b = BIO_new(BIO_s_mem());
    if (b && PEM_write_bio_X509(b, x)) {
        char *p;
        long n = BIO_get_mem_data(b, &p);
        lua_pushlstring(L, p, (size_t)n);
        lua_setfield(L, -2, "pem");
    }
    BIO_free(b);
}

/* conn:tls() -> nil (plain, or the handshake is not done) | table */
static int m_tls(lua_State *L)
{
    struct conn *c = lconn_check(L, 1);
    if (!c || !c->ssl || !(c->flags & CONN_TLS_DONE) || (c->flags & CONN_HANDSHAKE)) {
        lua_pushnil(L);
        return 1;
    }
    SSL *ssl = c->ssl;
    lua_createtable(L, 0, 8);
    set_str(L, "version", SSL_get_version(ssl));
    set_str(L, "cipher", SSL_get_cipher_name(ssl));
    set_str(L, "sni", SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name));
    const unsigned char *alpn;
    unsigned alen;
    SSL_get0_alpn_selected(ssl, &alpn, &alen);
    if (alen) {
        lua_pushlstring(L, (const char *)alpn, alen);
        lua_setfield(L, -2, "alpn");
    }
    lua_pushboolean(L, SSL_session_reused(ssl));
    lua_setfield(L, -2, "resumed");
    lua_pushboolean(L, SSL_is_server(ssl));
    lua_setfield(L, -2, "server");
    X509 *peer = SSL_get1_peer_certificate(ssl);
    if (peer) {
        long v = SSL_get_verify_result(ssl);
        set_str(L, "verify", v == X509_V_OK ? "ok" : X509_verify_cert_error_string(v));
        push_cert(L, peer);
        lua_setfield(L, -2, "peer_cert");
        X509_free(peer);
    }
    return 1;
}

/* ---- echokit.tls_hello ---------------------------------------------------- */

/* echokit.tls_hello(data) -> table | false (not TLS) | nil (more bytes needed) */
int ltls_hello(lua_State *L)
{
    size_t len;
    const char *p = luaL_checklstring(L, 1, &len);
    struct tlshello h;
    int rc = tlshello_parse((const uint8_t *)p, len, &h);
    if (rc == TLSHELLO_MORE) {
        lua_pushnil(L);
        return 1;
    }
    if (rc != TLSHELLO_OK) {
        lua_pushboolean(L, 0);
        return 1;
    }
    char vb[8];
    lua_createtable(L, 0, 5);
    if (h.sni[0])
        set_str(L, "sni", h.sni);
    if (h.alpn[0])
        set_str(L, "alpn", h.alpn);
    set_str(L, "version", tlshello_version_name(h.max_version, vb));
    lua_pushboolean(L, h.truncated);
    lua_setfield(L, -2, "truncated");
    lua_pushinteger(L, (lua_Integer)h.hello_len);
    lua_setfield(L, -2, "length");
    return 1;
}

void ltls_open(lua_State *L)
{
    static const luaL_Reg methods[] = {{"tls", m_tls}, {"starttls", m_starttls}, {NULL, NULL}};
    luaL_getmetatable(L, "echokit.conn");
    lua_getfield(L, -1, "__index");
    luaL_setfuncs(L, methods, 0);
    lua_pop(L, 2);
}

/* echokit.tls_keylog(path): from now on every TLS session's secrets are
 * appended to path in the NSS key log format (SSLKEYLOGFILE's), for
 * Wireshark. true, or nil and why. */
int ltls_keylog(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    char err[ECHOKIT_ERR_LEN];
    if (tls_keylog_open(path, err) < 0) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}


/* Certificates made at run time with OpenSSL 3: keys, the self-signed
 * certificate, the CA files of --make-ca, and the per-name leaf cache of a
 * loaded CA. See tlscert.h for the contract. Only non-deprecated OpenSSL 3.0
 * APIs. Every failing OpenSSL call has its error queue drained here, so a
 * later SSL_get_error on the same thread does not see our leftovers. */
#include "tlscert.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#define NAME_MAX_LEN 253   /* a DNS name's longest text form */
#define CN_MAX_LEN 64      /* ub_common_name: OpenSSL refuses a longer CN */
#define SECS_PER_DAY 86400L

/* A path in a message: its last 100 bytes, so that an overlong path still
 * shows the file name and leaves room for the cause. */
#define PATH_FMT "%s%.100s"
#define PATH_ARG(p) (strlen(p) > 100 ? "..." : ""), (strlen(p) > 100 ? (p) + strlen(p) - 100 : (p))

/* err = formatted message, then ": " and OpenSSL's newest error reason if
 * there is one; the error queue is cleared either way. */
__attribute__((format(printf, 2, 3))) static void ossl_err(char *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(err, ECHOKIT_ERR_LEN, fmt, ap);
    va_end(ap);
    unsigned long e = ERR_peek_last_error();
    const char *reason = e ? ERR_reason_error_string(e) : NULL;
    if (reason && n >= 0 && n < ECHOKIT_ERR_LEN)
        snprintf(err + n, ECHOKIT_ERR_LEN - (size_t)n, ": %s", reason);
    ERR_clear_error();
}

/* A client-supplied name, quoted for a message: printable ASCII as is, other
 * bytes as \xHH, at most about 60 bytes of it. out must hold 256 bytes. */
static const char *quote_name(const char *s, char out[256])
{
    size_t o = 0;
    for (size_t i = 0; s[i] && o < 240; i++) {
        unsigned char c = (unsigned char)s[i];
        if (i >= 60) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        if (c >= 0x20 && c < 0x7f && c != '\\') {
            out[o++] = (char)c;
        } else {
            snprintf(out + o, 5, "\\x%02x", c);
            o += 4;
        }
    }
    out[o] = '\0';
    return out;
}

/* A name checked and in canonical form: what goes into the certificate and
 * what the cache is keyed on. */
struct name {
    int ip_len;                     /* 4 or 16 for an IP literal, else 0 */
    unsigned char ip[16];
    char text[NAME_MAX_LEN + 1];    /* lower-cased DNS name, or inet_ntop form */
};

/* Checks name: an IPv4 or IPv6 literal, or a DNS name of at most 253 bytes
 * made of [A-Za-z0-9-_.] labels of 1..63 bytes, with "*" allowed only as the
 * whole leftmost label. Fills out (lower-casing DNS names, so "Example.TEST"
 * and "example.test" share a cache slot and an IP has one spelling).
 * Returns 0, or -1 with err. */
static int name_parse(const char *name, struct name *out, char *err)
{
    char q[256];
    size_t len = strlen(name);
    memset(out, 0, sizeof *out);
    if (len == 0) {
        snprintf(err, ECHOKIT_ERR_LEN, "empty server name");
        return -1;
    }
    if (len > NAME_MAX_LEN) {
        snprintf(err, ECHOKIT_ERR_LEN, "server name '%s' longer than %d bytes",
                 quote_name(name, q), NAME_MAX_LEN);
        return -1;
    }
    if (inet_pton(AF_INET, name, out->ip) == 1) {
        out->ip_len = 4;
        inet_ntop(AF_INET, out->ip, out->text, sizeof out->text);
        return 0;
    }
    if (inet_pton(AF_INET6, name, out->ip) == 1) {
        out->ip_len = 16;
        inet_ntop(AF_INET6, out->ip, out->text, sizeof out->text);
        return 0;
    }
    size_t label = 0;
    for (size_t i = 0; i <= len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c == '.' || c == '\0') {
            if (label == 0) {
                snprintf(err, ECHOKIT_ERR_LEN, "server name '%s' has an empty label",
                         quote_name(name, q));
                return -1;
            }
            if (label > 63) {
                snprintf(err, ECHOKIT_ERR_LEN, "server name '%s' has a label longer than 63 bytes",
                         quote_name(name, q));
                return -1;
            }
            label = 0;
        } else if (isalnum(c) || c == '-' || c == '_') {
            label++;
        } else if (c == '*' && i == 0 && (name[1] == '.' || name[1] == '\0')) {
            label++;
        } else {
            snprintf(err, ECHOKIT_ERR_LEN,
                     "server name '%s' is neither an IP address nor a DNS name "
                     "(letters, digits, '-', '_', '.', a leading '*.')",
                     quote_name(name, q));
            return -1;
        }
        out->text[i] = (char)tolower(c);
    }
    return 0;
}

EVP_PKEY *tlscert_new_key(char *err)
{
    EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    if (!key)
        ossl_err(err, "cannot make an EC P-256 key");
    return key;
}

/* A random positive serial of up to 127 bits, never zero (RFC 5280 4.1.2.2:
 * at most 20 octets, positive; unpredictable). */
static int set_random_serial(X509 *x)
{
    unsigned char b[16];
    if (RAND_bytes(b, sizeof b) != 1)
        return -1;
    b[0] &= 0x7f;
    b[0] |= 0x40; /* a fixed length, and never zero */
    BIGNUM *bn = BN_bin2bn(b, sizeof b, NULL);
    if (!bn)
        return -1;
    ASN1_INTEGER *ai = BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
    BN_free(bn);
    return ai ? 0 : -1;
}

/* Adds the extension nid = value (OpenSSL's config syntax, a fixed string of
 * ours, never client text) with ctx's issuer and subject. */
static int add_ext(X509 *x, X509V3_CTX *ctx, int nid, const char *value)
{
    X509_EXTENSION *ext = X509V3_EXT_nconf_nid(NULL, ctx, nid, value);
    if (!ext)
        return -1;
    int ok = X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    return ok ? 0 : -1;
}

/* Adds subjectAltName listing names (IP or DNS entries), built directly rather
 * than through the config syntax, so no name is ever parsed as config. */
static int add_san(X509 *x, const struct name *names, int n, int critical)
{
    GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
    if (!gens)
        return -1;
    for (int i = 0; i < n; i++) {
        GENERAL_NAME *g = GENERAL_NAME_new();
        ASN1_STRING *s = names[i].ip_len ? ASN1_OCTET_STRING_new() : ASN1_IA5STRING_new();
        int ok = g && s;
        if (ok && names[i].ip_len)
            ok = ASN1_OCTET_STRING_set(s, names[i].ip, names[i].ip_len);
        else if (ok)
            ok = ASN1_STRING_set(s, names[i].text, -1);
        if (!ok) {
            GENERAL_NAME_free(g);
            ASN1_STRING_free(s);
            GENERAL_NAMES_free(gens);
            return -1;
        }
        GENERAL_NAME_set0_value(g, names[i].ip_len ? GEN_IPADD : GEN_DNS, s);
        if (!sk_GENERAL_NAME_push(gens, g)) {
            GENERAL_NAME_free(g);
            GENERAL_NAMES_free(gens);
            return -1;
        }
    }
    int ok = X509_add1_ext_i2d(x, NID_subject_alt_name, gens, critical, X509V3_ADD_DEFAULT);
    GENERAL_NAMES_free(gens);
    return ok == 1 ? 0 : -1;
}

/* The digest to sign with key: SHA-256, or none for keys that carry their
 * own (Ed25519, Ed448), where X509_sign wants NULL. */
static const EVP_MD *sign_md(EVP_PKEY *key)
{
    int nid = NID_undef;
    if (EVP_PKEY_get_default_digest_nid(key, &nid) == 2 && nid == NID_undef)
        return NULL;
    return EVP_sha256();
}

/* A v3 certificate for pubkey with a random serial, subject CN cn (none if
 * NULL or longer than a CN may be), issuer name issuer (NULL: the subject,
 * self-issued), valid from an hour ago until now + secs. Extensions and the
 * signature are the caller's. */
static X509 *cert_start(EVP_PKEY *pubkey, const char *cn, const X509_NAME *issuer, long secs)
{
    X509 *x = X509_new();
    if (!x)
        return NULL;
    X509_NAME *subj = X509_get_subject_name(x);
    if (!X509_set_version(x, X509_VERSION_3) || set_random_serial(x) < 0 ||
        !X509_set_pubkey(x, pubkey) || !X509_gmtime_adj(X509_getm_notBefore(x), -3600) ||
        !X509_gmtime_adj(X509_getm_notAfter(x), secs))
        goto fail;
    if (cn && strlen(cn) <= CN_MAX_LEN &&
        !X509_NAME_add_entry_by_txt(subj, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1,
                                    -1, 0))
        goto fail;
    if (!X509_set_issuer_name(x, issuer ? issuer : subj))
        goto fail;
    return x;
fail:
    X509_free(x);
    return NULL;
}

/* The extensions of a TLS server certificate: CA:FALSE, digitalSignature,
 * serverAuth, SKI, AKI (when issuer is not x itself), and the SAN, critical
 * when the subject is empty (RFC 5280 4.2.1.6). */
static int add_server_exts(X509 *x, X509 *issuer, const struct name *names, int n)
{
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    int empty_subject = X509_NAME_entry_count(X509_get_subject_name(x)) == 0;
    if (add_ext(x, &ctx, NID_basic_constraints, "critical,CA:FALSE") < 0 ||
        add_ext(x, &ctx, NID_key_usage, "critical,digitalSignature") < 0 ||
        add_ext(x, &ctx, NID_ext_key_usage, "serverAuth") < 0 ||
        add_ext(x, &ctx, NID_subject_key_identifier, "hash") < 0 ||
        add_san(x, names, n, empty_subject) < 0)
        return -1;
    /* AKI after SKI: for a CA without an SKI, 3.0 hashes the issuer's key. */
    if (issuer != x && add_ext(x, &ctx, NID_authority_key_identifier, "keyid,issuer") < 0)
        return -1;
    return 0;
}

X509 *tlscert_self_signed(EVP_PKEY *key, const char *const *names, int n, int days, char *err)
{
    if (n < 1 || days < 1) {
        snprintf(err, ECHOKIT_ERR_LEN, "self-signed certificate: need a name and days >= 1");
        return NULL;
    }
    struct name *parsed = calloc((size_t)n, sizeof *parsed);
    if (!parsed) {
        snprintf(err, ECHOKIT_ERR_LEN, "out of memory");
        return NULL;
    }
    X509 *x = NULL;
    for (int i = 0; i < n; i++)
        if (name_parse(names[i], &parsed[i], err) < 0)
            goto done;
    x = cert_start(key, parsed[0].text, NULL, (long)days * SECS_PER_DAY);
    if (!x || add_server_exts(x, x, parsed, n) < 0 || !X509_sign(x, key, sign_md(key))) {
        ossl_err(err, "cannot make a self-signed certificate for %s", parsed[0].text);
        X509_free(x);
        x = NULL;
    }
done:
    free(parsed);
    return x;
}

void tlscert_fingerprint(X509 *x, char out[TLSCERT_FP_LEN])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    out[0] = '\0';
    if (!X509_digest(x, EVP_sha256(), md, &len) || len != 32) {
        ERR_clear_error();
        return;
    }
    static const char hex[] = "0123456789ABCDEF";
    for (unsigned int i = 0; i < len; i++) {
        out[3 * i] = hex[md[i] >> 4];
        out[3 * i + 1] = hex[md[i] & 15];
        out[3 * i + 2] = i + 1 < len ? ':' : '\0';
    }
}

/* mkdir -p with mode 0700 for every directory it creates. Returns 0, or -1
 * with err. */
static int make_dirs(const char *dir, char *err)
{
    char path[PATH_MAX];
    if (dir[0] == '\0') {
        snprintf(err, ECHOKIT_ERR_LEN, "empty directory name");
        return -1;
    }
    if (snprintf(path, sizeof path, "%s", dir) >= (int)sizeof path) {
        snprintf(err, ECHOKIT_ERR_LEN, PATH_FMT ": path too long", PATH_ARG(dir));
        return -1;
    }
    for (char *p = path + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char c = *p;
        *p = '\0';
        if (mkdir(path, 0700) < 0 && errno != EEXIST) {
            snprintf(err, ECHOKIT_ERR_LEN, PATH_FMT ": cannot create directory: %s",
                     PATH_ARG(path), strerror(errno));
            return -1;
        }
        *p = c;
        if (c == '\0')
            break;
    }
    struct stat st;
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, ECHOKIT_ERR_LEN, PATH_FMT ": not a directory", PATH_ARG(dir));
        return -1;
    }
    return 0;
}

/* Creates path (which must not exist) with mode and writes a PEM object into
 * it: the key when key is set, else cert. Returns 0, or -1 with err naming
 * the file (a file it created is removed again). */
static int write_pem_new(const char *path, mode_t mode, EVP_PKEY *key, X509 *cert, char *err)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0) {
        if (errno == EEXIST)
            snprintf(err, ECHOKIT_ERR_LEN, PATH_FMT ": already exists; not overwriting it",
                     PATH_ARG(path));
        else
            snprintf(err, ECHOKIT_ERR_LEN, PATH_FMT ": cannot create: %s",
                     PATH_ARG(path), strerror(errno));
        return -1;
    }
    FILE *fp = fdopen(fd, "w");
    if (!fp) {
        snprintf(err, ECHOKIT_ERR_LEN, PATH_FMT ": %s", PATH_ARG(path), strerror(errno));
        close(fd);
        unlink(path);
        return -1;
    }
    int ok = key ? PEM_write_PrivateKey(fp, key, NULL, NULL, 0, NULL, NULL)
                 : PEM_write_X509(fp, cert);
    int saved = 0;
    if (!ok)
        ossl_err(err, PATH_FMT ": cannot write", PATH_ARG(path));
    else if (fflush(fp) != 0 || fsync(fileno(fp)) != 0)
        saved = errno;
    if (fclose(fp) != 0 && !saved)
        saved = errno;
    if (ok && saved)
        snprintf(err, ECHOKIT_ERR_LEN, PATH_FMT ": cannot write: %s",
                 PATH_ARG(path), strerror(saved));
    if (!ok || saved) {
        unlink(path);
        return -1;
    }
    return 0;
}

/* The CA's subject CN: "echokit CA <host> <YYYY-MM-DD>", within 64 bytes, so
 * two CAs made on different machines or days tell apart in a trust store. */
static void ca_common_name(char cn[CN_MAX_LEN + 1])
{
    char host[64] = "localhost";
    if (gethostname(host, sizeof host) < 0)
        strcpy(host, "localhost");
    host[sizeof host - 1] = '\0';
    char day[16] = "";
    time_t now = time(NULL);
    struct tm tm;
    if (gmtime_r(&now, &tm))
        strftime(day, sizeof day, "%Y-%m-%d", &tm);
    snprintf(cn, CN_MAX_LEN + 1, "echokit CA %.41s %.10s", host, day);
}

int tlscert_make_ca(const char *dir, const char **cert_path, const char **key_path, char *err)
{
    static char certp[PATH_MAX], keyp[PATH_MAX];
    if (snprintf(certp, sizeof certp, "%s/echokit-ca.pem", dir) >= (int)sizeof certp ||
        snprintf(keyp, sizeof keyp, "%s/echokit-ca-key.pem", dir) >= (int)sizeof keyp) {
        snprintf(err, ECHOKIT_ERR_LEN, PATH_FMT ": path too long", PATH_ARG(dir));
        return -1;
    }
    if (make_dirs(dir, err) < 0)
        return -1;
    /* Check both before writing either, so a refusal leaves nothing behind. */
    struct stat st;
    const char *paths[2] = {certp, keyp};
    for (int i = 0; i < 2; i++) {
        if (lstat(paths[i], &st) == 0) {
            snprintf(err, ECHOKIT_ERR_LEN, PATH_FMT ": already exists; not overwriting it",
                     PATH_ARG(paths[i]));
            return -1;
        }
        if (errno != ENOENT) {
            snprintf(err, ECHOKIT_ERR_LEN, PATH_FMT ": %s", PATH_ARG(paths[i]), strerror(errno));
            return -1;
        }
    }

    char cn[CN_MAX_LEN + 1];
    ca_common_name(cn);
    int rc = -1;
    EVP_PKEY *key = tlscert_new_key(err);
    if (!key)
        return -1;
    X509 *x = cert_start(key, cn, NULL, 3652L * SECS_PER_DAY);
    X509V3_CTX ctx;
    if (x)
        X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
    if (!x || !X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "O", MBSTRING_UTF8,
                                          (const unsigned char *)"echokit", -1, 0, 0) ||
        !X509_set_issuer_name(x, X509_get_subject_name(x)) ||
        add_ext(x, &ctx, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") < 0 ||
        add_ext(x, &ctx, NID_key_usage, "critical,keyCertSign,cRLSign") < 0 ||
        add_ext(x, &ctx, NID_subject_key_identifier, "hash") < 0 ||
        !X509_sign(x, key, EVP_sha256())) {
        ossl_err(err, "cannot make the CA certificate");
        goto done;
    }
    /* The key first: if it cannot be written, no certificate without a key. */
    if (write_pem_new(keyp, 0600, key, NULL, err) < 0)
        goto done;
    if (write_pem_new(certp, 0644, NULL, x, err) < 0) {
        unlink(keyp);
        goto done;
    }
    *cert_path = certp;
    *key_path = keyp;
    rc = 0;
done:
    X509_free(x);
    EVP_PKEY_free(key);
    return rc;
}

/* ---- the CA and its leaf cache ------------------------------------------- */

#define TLSCA_BUCKETS 2048 /* a power of two, about twice TLSCA_CACHE */

struct leaf {
    struct leaf *hnext;       /* hash chain */
    struct leaf *prev, *next; /* LRU list: ca->head is the most recently used */
    X509 *cert;
    char name[];              /* struct name's text */
};

/* Not thread-safe: each worker process loads its own. */
struct tlsca {
    X509 *cert;
    EVP_PKEY *key;
    EVP_PKEY *leaf_key; /* shared by every leaf */
    uint64_t seed;      /* hash seed, so clients cannot aim names at one chain */
    struct leaf *buckets[TLSCA_BUCKETS];
    struct leaf *head, *tail;
    size_t n;
};

static size_t name_hash(const struct tlsca *ca, const char *s)
{
    uint64_t h = 0xcbf29ce484222325ULL ^ ca->seed; /* FNV-1a, seeded */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
    h ^= h >> 29;
    return (size_t)(h & (TLSCA_BUCKETS - 1));
}

/* Reads one PEM object from path: a certificate when want_key is 0, else a
 * private key. Returns it, or NULL with err naming the file and the cause. */
static void *read_pem(const char *path, int want_key, char *err)
{
    FILE *fp = fopen(path, "re");
    if (!fp) {
        snprintf(err, ECHOKIT_ERR_LEN, PATH_FMT ": cannot read: %s",
                 PATH_ARG(path), strerror(errno));
        return NULL;
    }
    /* A NULL callback would prompt on the terminal for an encrypted key; an
     * empty password makes that fail instead (callback "" -> len 0). */
    void *obj = want_key ? (void *)PEM_read_PrivateKey(fp, NULL, NULL, (void *)"")
                         : (void *)PEM_read_X509(fp, NULL, NULL, NULL);
    int rerr = ferror(fp) ? errno : 0;
    fclose(fp);
    if (!obj) {
        if (rerr) {
            ERR_clear_error();
            snprintf(err, ECHOKIT_ERR_LEN, PATH_FMT ": cannot read: %s", PATH_ARG(path),
                     strerror(rerr));
        } else {
            ossl_err(err, PATH_FMT ": not a PEM %s", PATH_ARG(path),
                     want_key ? "private key (or an encrypted one)" : "certificate");
        }
    }
    return obj;
}

struct tlsca *tlsca_load(const char *cert_file, const char *key_file, char *err)
{
    struct tlsca *ca = calloc(1, sizeof *ca);
    if (!ca) {
        snprintf(err, ECHOKIT_ERR_LEN, "out of memory");
        return NULL;
    }
    if (!(ca->cert = read_pem(cert_file, 0, err)) || !(ca->key = read_pem(key_file, 1, err)))
        goto fail;
    if (X509_check_private_key(ca->cert, ca->key) != 1) {
        ERR_clear_error();
        snprintf(err, ECHOKIT_ERR_LEN, PATH_FMT ": key does not match the certificate in " PATH_FMT,
                 PATH_ARG(key_file), PATH_ARG(cert_file));
        goto fail;
    }
    if (X509_check_ca(ca->cert) == 0) {
        snprintf(err, ECHOKIT_ERR_LEN,
                 PATH_FMT ": not a CA certificate (needs basicConstraints CA:TRUE and, if keyUsage "
                 "is present, keyCertSign)", PATH_ARG(cert_file));
        goto fail;
    }
    if (X509_cmp_current_time(X509_get0_notAfter(ca->cert)) <= 0) {
        snprintf(err, ECHOKIT_ERR_LEN, PATH_FMT ": the CA certificate has expired",
                 PATH_ARG(cert_file));
        goto fail;
    }
    if (!(ca->leaf_key = tlscert_new_key(err)))
        goto fail;
    if (RAND_bytes((unsigned char *)&ca->seed, sizeof ca->seed) != 1)
        ERR_clear_error(); /* an unseeded hash still works */
    return ca;
fail:
    tlsca_free(ca);
    return NULL;
}

/* A new leaf certificate for n, signed by ca; NULL with err. */
static X509 *leaf_make(struct tlsca *ca, const struct name *n, char *err)
{
    X509 *x = cert_start(ca->leaf_key, n->text, X509_get_subject_name(ca->cert),
                         365L * SECS_PER_DAY);
    if (!x)
        goto fail;
    /* Never outlive the CA, never start before it. */
    if (ASN1_TIME_compare(X509_get0_notAfter(x), X509_get0_notAfter(ca->cert)) > 0 &&
        !X509_set1_notAfter(x, X509_get0_notAfter(ca->cert)))
        goto fail;
    if (ASN1_TIME_compare(X509_get0_notBefore(x), X509_get0_notBefore(ca->cert)) < 0 &&
        !X509_set1_notBefore(x, X509_get0_notBefore(ca->cert)))
        goto fail;
    if (add_server_exts(x, ca->cert, n, 1) < 0 || !X509_sign(x, ca->key, sign_md(ca->key)))
        goto fail;
    return x;
fail:
    ossl_err(err, "cannot make a certificate for %s", n->text);
    X509_free(x);
    return NULL;
}

static void lru_unlink(struct tlsca *ca, struct leaf *l)
{
    if (l->prev)
        l->prev->next = l->next;
    else
        ca->head = l->next;
    if (l->next)
        l->next->prev = l->prev;
    else
        ca->tail = l->prev;
    l->prev = l->next = NULL;
}

static void lru_push_front(struct tlsca *ca, struct leaf *l)
{
    l->prev = NULL;
    l->next = ca->head;
    if (ca->head)
        ca->head->prev = l;
    ca->head = l;
    if (!ca->tail)
        ca->tail = l;
}

/* Drops the least recently used leaf (the caller's references stay valid). */
static void lru_evict(struct tlsca *ca)
{
    struct leaf *l = ca->tail;
    if (!l)
        return;
    lru_unlink(ca, l);
    struct leaf **pp = &ca->buckets[name_hash(ca, l->name)];
    while (*pp != l)
        pp = &(*pp)->hnext;
    *pp = l->hnext;
    X509_free(l->cert);
    free(l);
    ca->n--;
}

int tlsca_leaf(struct tlsca *ca, const char *name, X509 **cert, EVP_PKEY **key, char *err)
{
    struct name n;
    if (name_parse(name, &n, err) < 0)
        return -1;
    size_t b = name_hash(ca, n.text);
    struct leaf *l = ca->buckets[b];
    while (l && strcmp(l->name, n.text) != 0)
        l = l->hnext;
    if (l) {
        lru_unlink(ca, l);
    } else {
        size_t len = strlen(n.text);
        l = calloc(1, sizeof *l + len + 1);
        if (!l) {
            snprintf(err, ECHOKIT_ERR_LEN, "out of memory");
            return -1;
        }
        memcpy(l->name, n.text, len + 1);
        if (!(l->cert = leaf_make(ca, &n, err))) {
            free(l);
            return -1;
        }
        /* One new name evicts at most one old one: a client sending many
         * names churns the cache no faster than it can make handshakes. */
        if (ca->n >= TLSCA_CACHE)
            lru_evict(ca);
        l->hnext = ca->buckets[b];
        ca->buckets[b] = l;
        ca->n++;
    }
    lru_push_front(ca, l);
    X509_up_ref(l->cert);
    EVP_PKEY_up_ref(ca->leaf_key);
    *cert = l->cert;
    *key = ca->leaf_key;
    return 0;
}

X509 *tlsca_cert(struct tlsca *ca)
{
    return ca->cert;
}

void tlsca_free(struct tlsca *ca)
{
    if (!ca)
        return;
    while (ca->tail)
        lru_evict(ca);
    X509_free(ca->cert);
    EVP_PKEY_free(ca->key);
    EVP_PKEY_free(ca->leaf_key);
    free(ca);
}

/* tlscert.c: the self-signed certificate verifies against itself and names
 * what it was asked to; the fingerprint is the SHA-256 of the DER (and what
 * `openssl x509 -fingerprint -sha256` prints, when the tool is installed);
 * --make-ca's files (modes, no overwriting) load as a CA whose leaves verify
 * for a DNS name and an IP; the leaf cache and its LRU; every load error
 * names the file. Everything in a mkdtemp directory; no network. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "check.h"
#include "tlscert.h"

static char tmpdir[] = "/tmp/echokit-tlscert-XXXXXX";

static char *path_in(const char *name)
{
    static char bufs[8][512];
    static int i;
    char *p = bufs[i++ % 8];
    snprintf(p, sizeof bufs[0], "%s/%s", tmpdir, name);
    return p;
}

/* X509_verify_cert of x against the trust anchor ca (NULL: x itself), for
 * a TLS server named host or at IP ip (neither: for no purpose in
 * particular). Returns the X509_V_ code. */
static int verify(X509 *x, X509 *ca, const char *host, const char *ip)
{
    X509_STORE *store = X509_STORE_new();
    X509_STORE_add_cert(store, ca ? ca : x);
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    X509_STORE_CTX_init(ctx, store, x, NULL);
    if (host || ip)
        X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_SSL_SERVER);
    X509_VERIFY_PARAM *param = X509_STORE_CTX_get0_param(ctx);
    if (host)
        X509_VERIFY_PARAM_set1_host(param, host, 0);
    if (ip)
        X509_VERIFY_PARAM_set1_ip_asc(param, ip);
    int ok = X509_verify_cert(ctx);
    int code = ok == 1 ? X509_V_OK : X509_STORE_CTX_get_error(ctx);
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    ERR_clear_error();
    return code;
}

static int seconds_from_now(const ASN1_TIME *t)
{
    int days = 0, secs = 0;
    ASN1_TIME_diff(&days, &secs, NULL, t);
    return days * 86400 + secs;
}

static void write_file(const char *path, const char *text)
{
    FILE *fp = fopen(path, "w");
    fputs(text, fp);
    fclose(fp);
}

static void write_key(const char *path, EVP_PKEY *key, const char *pass)
{
    FILE *fp = fopen(path, "w");
    if (pass)
        PEM_write_PrivateKey(fp, key, EVP_aes_128_cbc(), (const unsigned char *)pass,
                             (int)strlen(pass), NULL, NULL);
    else
        PEM_write_PrivateKey(fp, key, NULL, NULL, 0, NULL, NULL);
    fclose(fp);
}

static void write_cert(const char *path, X509 *x)
{
    FILE *fp = fopen(path, "w");
    PEM_write_X509(fp, x);
    fclose(fp);
}

static void test_self_signed(void)
{
    char err[ECHOKIT_ERR_LEN] = "";
    EVP_PKEY *key = tlscert_new_key(err);
    CHECK_MSG(key != NULL, "%s", err);
    CHECK(EVP_PKEY_is_a(key, "EC"));
    const char *names[] = {"localhost", "127.0.0.1", "::1"};
    X509 *x = tlscert_self_signed(key, names, 3, 30, err);
    CHECK_MSG(x != NULL, "%s", err);
    if (!x)
        return;

    int code = verify(x, NULL, "localhost", NULL);
    CHECK_MSG(code == X509_V_OK, "self-signed: %s", X509_verify_cert_error_string(code));
    code = verify(x, NULL, NULL, "::1");
    CHECK_MSG(code == X509_V_OK, "self-signed ::1: %s", X509_verify_cert_error_string(code));
    CHECK(verify(x, NULL, "other.test", NULL) == X509_V_ERR_HOSTNAME_MISMATCH);
    CHECK(X509_check_host(x, "localhost", 0, 0, NULL) == 1);
    CHECK(X509_check_host(x, "LocalHost", 0, 0, NULL) == 1);
    CHECK(X509_check_host(x, "other.test", 0, 0, NULL) == 0);
    CHECK(X509_check_ip_asc(x, "127.0.0.1", 0) == 1);
    CHECK(X509_check_ip_asc(x, "::1", 0) == 1);
    CHECK(X509_check_ip_asc(x, "0:0::1", 0) == 1);
    CHECK(X509_check_ip_asc(x, "127.0.0.2", 0) == 0);

    GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    CHECK(gens && sk_GENERAL_NAME_num(gens) == 3);
    if (gens && sk_GENERAL_NAME_num(gens) == 3) {
        CHECK(sk_GENERAL_NAME_value(gens, 0)->type == GEN_DNS);
        CHECK(sk_GENERAL_NAME_value(gens, 1)->type == GEN_IPADD);
        CHECK(ASN1_STRING_length(sk_GENERAL_NAME_value(gens, 1)->d.iPAddress) == 4);
        CHECK(sk_GENERAL_NAME_value(gens, 2)->type == GEN_IPADD);
        CHECK(ASN1_STRING_length(sk_GENERAL_NAME_value(gens, 2)->d.iPAddress) == 16);
    }
    GENERAL_NAMES_free(gens);

    char cn[128] = "";
    X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, sizeof cn);
    CHECK_MSG(strcmp(cn, "localhost") == 0, "CN %s", cn);
    CHECK(X509_check_ca(x) == 0);
    CHECK(X509_get_key_usage(x) == KU_DIGITAL_SIGNATURE);
    CHECK(X509_get_extended_key_usage(x) & XKU_SSL_SERVER);
    CHECK(X509_get0_subject_key_id(x) != NULL);
    CHECK(X509_get_signature_nid(x) == NID_ecdsa_with_SHA256);
    int nb = seconds_from_now(X509_get0_notBefore(x));
    int na = seconds_from_now(X509_get0_notAfter(x));
    CHECK_MSG(nb <= -3590 && nb >= -3610, "notBefore %d s from now", nb);
    CHECK_MSG(na >= 30 * 86400 - 10 && na <= 30 * 86400, "notAfter %d s from now", na);

    /* random serials of 16 bytes: two certificates differ */
    X509 *y = tlscert_self_signed(key, names, 1, 1, err);
    CHECK(y != NULL);
    const ASN1_INTEGER *s1 = X509_get0_serialNumber(x), *s2 = y ? X509_get0_serialNumber(y) : NULL;
    CHECK(ASN1_STRING_length(s1) == 16);
    CHECK(s2 && ASN1_INTEGER_cmp(s1, s2) != 0);
    X509_free(y);

    /* the fingerprint: SHA-256 of the DER, computed here without X509_digest */
    char fp[TLSCERT_FP_LEN];
    tlscert_fingerprint(x, fp);
    CHECK_MSG(strlen(fp) == 95, "fingerprint %s", fp);
    unsigned char *der = NULL;
    int derlen = i2d_X509(x, &der);
    unsigned char md[32];
    EVP_Digest(der, (size_t)derlen, md, NULL, EVP_sha256(), NULL);
    OPENSSL_free(der);
    char want[TLSCERT_FP_LEN] = "";
    for (int i = 0; i < 32; i++)
        sprintf(want + 3 * i, i < 31 ? "%02X:" : "%02X", md[i]);
    CHECK_MSG(strcmp(fp, want) == 0, "fingerprint %s, want %s", fp, want);

    /* and what the openssl tool prints, if it is installed */
    if (access("/usr/bin/openssl", X_OK) == 0) {
        write_cert(path_in("self.pem"), x);
        char cmd[600];
        snprintf(cmd, sizeof cmd, "/usr/bin/openssl x509 -noout -fingerprint -sha256 -in %s",
                 path_in("self.pem"));
        FILE *p = popen(cmd, "r");
        char line[256] = "";
        if (p) {
            if (!fgets(line, sizeof line, p))
                line[0] = '\0';
            pclose(p);
        }
        line[strcspn(line, "\n")] = '\0';
        const char *eq = strchr(line, '=');
        CHECK_MSG(eq && strcmp(eq + 1, fp) == 0, "openssl says '%s', we say %s", line, fp);
        unlink(path_in("self.pem"));
    }

    /* bad names are refused with a message */
    const char *bad[] = {"ok.test", "bad name"};
    err[0] = '\0';
    CHECK(tlscert_self_signed(key, bad, 2, 1, err) == NULL);
    CHECK_MSG(strstr(err, "bad name") != NULL, "err: %s", err);
    CHECK(tlscert_self_signed(key, names, 1, 0, err) == NULL);
    CHECK(tlscert_self_signed(key, names, 0, 1, err) == NULL);
    CHECK(ERR_peek_error() == 0);

    X509_free(x);
    EVP_PKEY_free(key);
}

static void test_make_ca(const char **certp, const char **keyp)
{
    char err[ECHOKIT_ERR_LEN] = "";
    const char *dir = path_in("ca/sub");
    umask(022);
    int rc = tlscert_make_ca(dir, certp, keyp, err);
    CHECK_MSG(rc == 0, "make_ca: %s", err);
    if (rc != 0) {
        *certp = *keyp = NULL;
        return;
    }
    CHECK(strcmp(*certp, path_in("ca/sub/echokit-ca.pem")) == 0);
    CHECK(strcmp(*keyp, path_in("ca/sub/echokit-ca-key.pem")) == 0);
    struct stat st;
    CHECK(stat(dir, &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 0777) == 0700);
    CHECK(stat(path_in("ca"), &st) == 0 && (st.st_mode & 0777) == 0700);
    CHECK_MSG(stat(*keyp, &st) == 0 && (st.st_mode & 0777) == 0600, "key mode %o",
              (unsigned)(st.st_mode & 0777));
    off_t keysize = st.st_size;
    CHECK(stat(*certp, &st) == 0 && (st.st_mode & 0777) == 0644);

    /* a second run refuses, names the file, and leaves the files alone */
    const char *c2, *k2;
    err[0] = '\0';
    CHECK(tlscert_make_ca(dir, &c2, &k2, err) == -1);
    CHECK_MSG(strstr(err, "echokit-ca.pem") && strstr(err, "already exists"), "err: %s", err);
    CHECK(stat(*keyp, &st) == 0 && st.st_size == keysize);
    /* only the key there: still refused, naming the key */
    char kcopy[512], ccopy[512];
    snprintf(kcopy, sizeof kcopy, "%s", *keyp);
    snprintf(ccopy, sizeof ccopy, "%s", *certp);
    rename(ccopy, path_in("moved.pem"));
    CHECK(tlscert_make_ca(dir, &c2, &k2, err) == -1);
    CHECK_MSG(strstr(err, "echokit-ca-key.pem") && strstr(err, "already exists"), "err: %s", err);
    CHECK(access(ccopy, F_OK) == -1);
    rename(path_in("moved.pem"), ccopy);
    *certp = path_in("ca/sub/echokit-ca.pem");
    *keyp = path_in("ca/sub/echokit-ca-key.pem");

    /* a directory that cannot be made */
    write_file(path_in("afile"), "x\n");
    CHECK(tlscert_make_ca(path_in("afile/ca"), &c2, &k2, err) == -1);
    CHECK_MSG(strstr(err, "afile") != NULL, "err: %s", err);
    unlink(path_in("afile"));
}

static void test_leaves(const char *certp, const char *keyp)
{
    char err[ECHOKIT_ERR_LEN] = "";
    struct tlsca *ca = tlsca_load(certp, keyp, err);
    CHECK_MSG(ca != NULL, "load: %s", err);
    if (!ca)
        return;
    X509 *cacert = tlsca_cert(ca);
    char cn[128] = "";
    X509_NAME_get_text_by_NID(X509_get_subject_name(cacert), NID_commonName, cn, sizeof cn);
    CHECK_MSG(strncmp(cn, "echokit CA ", 11) == 0, "CA CN %s", cn);
    CHECK(X509_check_ca(cacert) == 1);
    CHECK(X509_get_key_usage(cacert) == (KU_KEY_CERT_SIGN | KU_CRL_SIGN));
    int ca_days = seconds_from_now(X509_get0_notAfter(cacert)) / 86400;
    CHECK_MSG(ca_days >= 3649 && ca_days <= 3653, "CA valid for %d days", ca_days);
    CHECK(verify(cacert, NULL, NULL, NULL) == X509_V_OK);

    X509 *a = NULL, *b = NULL, *c = NULL;
    EVP_PKEY *ka = NULL, *kb = NULL, *kc = NULL;
    CHECK_MSG(tlsca_leaf(ca, "example.test", &a, &ka, err) == 0, "%s", err);
    CHECK_MSG(tlsca_leaf(ca, "127.0.0.1", &b, &kb, err) == 0, "%s", err);
    if (!a || !b)
        goto out;
    int code = verify(a, cacert, "example.test", NULL);
    CHECK_MSG(code == X509_V_OK, "leaf: %s", X509_verify_cert_error_string(code));
    CHECK(verify(a, cacert, "other.test", NULL) == X509_V_ERR_HOSTNAME_MISMATCH);
    CHECK(verify(a, NULL, "example.test", NULL) != X509_V_OK); /* not without the CA */
    code = verify(b, cacert, NULL, "127.0.0.1");
    CHECK_MSG(code == X509_V_OK, "IP leaf: %s", X509_verify_cert_error_string(code));
    CHECK(X509_check_host(a, "example.test", 0, 0, NULL) == 1);
    CHECK(X509_check_ip_asc(b, "127.0.0.1", 0) == 1);

    /* one shared key, the caller's own references, AKI = the CA's SKI */
    CHECK(ka == kb && X509_check_private_key(a, ka) == 1);
    CHECK(ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(a),
                                X509_get0_subject_key_id(cacert)) == 0);
    CHECK(X509_get_extended_key_usage(a) & XKU_SSL_SERVER);
    CHECK(X509_check_ca(a) == 0);
    CHECK(X509_NAME_cmp(X509_get_issuer_name(a), X509_get_subject_name(cacert)) == 0);
    int na = seconds_from_now(X509_get0_notAfter(a));
    CHECK_MSG(na > 364 * 86400 && na <= 365 * 86400, "leaf notAfter %d s from now", na);
    CHECK(seconds_from_now(X509_get0_notBefore(a)) <= -3590);

    /* the cache: the same object for the same name, in any case */
    CHECK(tlsca_leaf(ca, "EXAMPLE.test", &c, &kc, err) == 0);
    CHECK(c == a);
    X509_free(c);
    EVP_PKEY_free(kc);
    CHECK(tlsca_leaf(ca, "::1", &c, &kc, err) == 0);
    CHECK(c != a && X509_check_ip_asc(c, "::1", 0) == 1);
    X509_free(c);
    EVP_PKEY_free(kc);

    /* a 253-byte name: too long for a CN, so an empty subject and a critical SAN */
    char longname[254];
    memset(longname, 'a', 253);
    longname[63] = longname[127] = longname[191] = '.';
    longname[253] = '\0';
    CHECK_MSG(tlsca_leaf(ca, longname, &c, &kc, err) == 0, "%s", err);
    if (c) {
        code = verify(c, cacert, longname, NULL);
        CHECK_MSG(code == X509_V_OK, "long leaf: %s", X509_verify_cert_error_string(code));
        CHECK(X509_NAME_entry_count(X509_get_subject_name(c)) == 0);
        X509_free(c);
        EVP_PKEY_free(kc);
    }
    CHECK(tlsca_leaf(ca, "*.example.test", &c, &kc, err) == 0);
    if (c) {
        CHECK(X509_check_host(c, "www.example.test", 0, 0, NULL) == 1);
        X509_free(c);
        EVP_PKEY_free(kc);
    }

    /* hostile names: refused, quoted safely, the cache untouched */
    longname[253] = 'a';
    char toolong[260];
    memcpy(toolong, longname, 254);
    toolong[254] = '\0';
    const char *bad[] = {"", toolong, "a b", "exa\x01mple.test", "foo..test", ".foo",
                         "foo.", "a*b.test", "x.*.test", "<script>", "a/b", "1.2.3.4:443",
                         "[::1]", "fe80::1%eth0", "\xc3\xa9.test"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        c = NULL;
        CHECK_MSG(tlsca_leaf(ca, bad[i], &c, &kc, err) == -1, "accepted bad name #%zu", i);
        CHECK_MSG(err[0] != '\0' && c == NULL, "bad name #%zu: no error", i);
        for (const char *p = err; *p; p++)
            CHECK_MSG((unsigned char)*p >= 0x20 && (unsigned char)*p < 0x7f, "raw byte in %s", err);
    }
    CHECK(ERR_peek_error() == 0);

out:
    X509_free(a);
    X509_free(b);
    EVP_PKEY_free(ka);
    EVP_PKEY_free(kb);
    tlsca_free(ca);
}

/* TLSCA_CACHE + 1 names: the least recently used one is dropped, a name
 * used again in between is kept. */
static void test_lru(const char *certp, const char *keyp)
{
    char err[ECHOKIT_ERR_LEN] = "";
    struct tlsca *ca = tlsca_load(certp, keyp, err);
    CHECK_MSG(ca != NULL, "load: %s", err);
    if (!ca)
        return;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    X509 *first = NULL, *second = NULL, *x;
    EVP_PKEY *k;
    char name[32];
    int fails = 0;
    for (int i = 0; i < TLSCA_CACHE; i++) {
        snprintf(name, sizeof name, "h%d.test", i);
        if (tlsca_leaf(ca, name, &x, &k, err) < 0) {
            fails++;
            continue;
        }
        EVP_PKEY_free(k);
        if (i == 0)
            first = x; /* kept: no other certificate can take its address */
        else if (i == 1)
            second = x;
        else
            X509_free(x);
    }
    CHECK_MSG(fails == 0, "%d leaves failed: %s", fails, err);
    /* touch h0: it becomes the most recent, h1 the least */
    CHECK(tlsca_leaf(ca, "h0.test", &x, &k, err) == 0 && x == first);
    X509_free(x);
    EVP_PKEY_free(k);
    CHECK(tlsca_leaf(ca, "new.test", &x, &k, err) == 0);
    X509_free(x);
    EVP_PKEY_free(k);
    CHECK(tlsca_leaf(ca, "h0.test", &x, &k, err) == 0 && x == first);
    X509_free(x);
    EVP_PKEY_free(k);
    CHECK(tlsca_leaf(ca, "h2.test", &x, &k, err) == 0); /* still cached */
    X509_free(x);
    EVP_PKEY_free(k);
    CHECK(tlsca_leaf(ca, "h1.test", &x, &k, err) == 0 && x != second); /* made anew */
    if (x)
        CHECK(ASN1_INTEGER_cmp(X509_get0_serialNumber(x), X509_get0_serialNumber(second)) != 0);
    X509_free(x);
    EVP_PKEY_free(k);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("lru: %d leaves in %.2f s\n", TLSCA_CACHE + 2,
           (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
    X509_free(first);
    X509_free(second);
    /* the caller's references outlive the CA */
    tlsca_free(ca);
}

static void check_load_error(const char *cert, const char *key, const char *name, const char *what)
{
    char err[ECHOKIT_ERR_LEN] = "";
    struct tlsca *ca = tlsca_load(cert, key, err);
    CHECK_MSG(ca == NULL, "loaded %s / %s", cert, key);
    tlsca_free(ca);
    CHECK_MSG(strstr(err, path_in(name)) && strstr(err, what), "err '%s', want '%s' and '%s'", err,
              path_in(name), what);
    CHECK_MSG(ERR_peek_error() == 0, "%s: error queue left: %s", err,
              ERR_reason_error_string(ERR_peek_error()));
}

static void test_load_errors(const char *certp, const char *keyp)
{
    char err[ECHOKIT_ERR_LEN];
    EVP_PKEY *other = tlscert_new_key(err);
    write_key(path_in("other-key.pem"), other, NULL);
    write_key(path_in("locked-key.pem"), other, "secret");
    const char *names[] = {"leaf.test"};
    X509 *leaf = tlscert_self_signed(other, names, 1, 1, err);
    write_cert(path_in("leaf.pem"), leaf);
    write_file(path_in("garbage.pem"), "hello\n");

    check_load_error(path_in("missing.pem"), keyp, "missing.pem", strerror(ENOENT));
    check_load_error(certp, path_in("missing.pem"), "missing.pem", strerror(ENOENT));
    check_load_error(path_in("garbage.pem"), keyp, "garbage.pem", "not a PEM certificate");
    check_load_error(certp, path_in("garbage.pem"), "garbage.pem", "not a PEM private key");
    check_load_error(keyp, keyp, "ca/sub/echokit-ca-key.pem", "not a PEM certificate");
    check_load_error(certp, certp, "ca/sub/echokit-ca.pem", "not a PEM private key");
    check_load_error(certp, path_in("locked-key.pem"), "locked-key.pem", "not a PEM private key");
    check_load_error(certp, path_in("other-key.pem"), "other-key.pem", "does not match");
    check_load_error(path_in("leaf.pem"), path_in("other-key.pem"), "leaf.pem", "not a CA");
    check_load_error(path_in("ca"), keyp, "ca", "cannot read");

    X509_free(leaf);
    EVP_PKEY_free(other);
    const char *files[] = {"other-key.pem", "locked-key.pem", "leaf.pem", "garbage.pem"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
        unlink(path_in(files[i]));
}

int main(void)
{
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_self_signed();
    const char *certp = NULL, *keyp = NULL;
    test_make_ca(&certp, &keyp);
    if (certp) {
        /* out of path_in's ring of buffers */
        static char cbuf[512], kbuf[512];
        snprintf(cbuf, sizeof cbuf, "%s", certp);
        snprintf(kbuf, sizeof kbuf, "%s", keyp);
        certp = cbuf;
        keyp = kbuf;
        test_leaves(certp, keyp);
        test_lru(certp, keyp);
        test_load_errors(certp, keyp);
        unlink(certp);
        unlink(keyp);
    }
    rmdir(path_in("ca/sub"));
    rmdir(path_in("ca"));
    CHECK_MSG(rmdir(tmpdir) == 0, "%s left behind: %s", tmpdir, strerror(errno));
    return check_done("tlscert");
}

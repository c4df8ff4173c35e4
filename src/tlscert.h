#ifndef ECHOKIT_TLSCERT_H
#define ECHOKIT_TLSCERT_H
/* Certificates made at run time, with OpenSSL: the in-memory self-signed
 * certificate of --tls-self-signed, the CA of --make-ca, and the leaf
 * certificates the decrypting debug proxy signs with that CA per server
 * name. No libev, no Lua, no sockets. Functions that can fail return NULL
 * or -1 with a message in err (ECHOKIT_ERR_LEN bytes). */
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "util.h"

/* A fresh EC P-256 key, or NULL. */
EVP_PKEY *tlscert_new_key(char *err);

/* A self-signed certificate for key, valid from an hour ago until days days
 * from now, whose subject CN is names[0] and whose subjectAltName lists
 * every name: an IPv4 or IPv6 literal as an IP entry, anything else as a DNS
 * entry. Names are checked as for tlsca_leaf; a name longer than a CN may be
 * (64 bytes) leaves the subject empty and the SAN critical (RFC 5280).
 * CA:FALSE, digitalSignature, serverAuth, a random 128-bit serial, SHA-256. */
X509 *tlscert_self_signed(EVP_PKEY *key, const char *const *names, int n, int days, char *err);

/* SHA-256 fingerprint of the DER certificate as "AB:CD:...:EF" (95 chars). */
#define TLSCERT_FP_LEN 96
void tlscert_fingerprint(X509 *x, char out[TLSCERT_FP_LEN]);

/* Writes a new CA (EC P-256, 10 years, CA:TRUE, keyCertSign) into dir as
 * echokit-ca.pem (certificate, 0644) and echokit-ca-key.pem (key, 0600).
 * dir and its missing parents are created (0700); if either file exists,
 * nothing is written (-1, the message names the file). On success
 * *cert_path and *key_path point at static buffers with the paths, valid
 * until the next call. */
int tlscert_make_ca(const char *dir, const char **cert_path, const char **key_path, char *err);

/* A CA loaded from PEM files, signing leaf certificates on demand. Not
 * thread-safe: each worker process loads its own. */
struct tlsca;

/* Loads the CA's certificate and key (an encrypted key is refused, never
 * prompted for); checks that the key matches the certificate, that the
 * certificate may sign (CA:TRUE, keyCertSign) and has not expired. Messages
 * name the file and the cause. */
struct tlsca *tlsca_load(const char *cert_file, const char *key_file, char *err);

/* The leaf certificate for name (DNS name or IP literal; CN and SAN), signed
 * by the CA, valid from an hour ago for 1 year or up to the CA's own
 * not-after if sooner, all leaves sharing one EC P-256 key. name is
 * client-supplied (SNI) and checked: at most 253 bytes, an IPv4 or IPv6
 * literal, or labels of 1..63 bytes of [A-Za-z0-9-_] with "*" only as the
 * whole first label; else -1 with a message quoting it safely. DNS names are
 * lower-cased and IPs written canonically, so spellings share a cache slot.
 * Cached per name (at most TLSCA_CACHE names, the least recently used
 * dropped first; a new name evicts at most one). The caller gets its own
 * references (X509_free / EVP_PKEY_free), valid after eviction or
 * tlsca_free. */
#define TLSCA_CACHE 1024
int tlsca_leaf(struct tlsca *ca, const char *name, X509 **cert, EVP_PKEY **key, char *err);

/* The CA certificate (borrowed), e.g. to send as the leaf's chain. */
X509 *tlsca_cert(struct tlsca *ca);

void tlsca_free(struct tlsca *ca);

#endif

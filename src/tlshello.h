#ifndef ECHOKIT_TLSHELLO_H
#define ECHOKIT_TLSHELLO_H
/* Reads a TLS ClientHello from the first bytes a client sent, without
 * OpenSSL: what a passthrough proxy logs (SNI, ALPN, versions) and what
 * tells TLS from plaintext. Pure function of its input; fuzzed. */
#include <stddef.h>
#include <stdint.h>

#define TLSHELLO_SNI_MAX 256  /* host_name bytes kept (longer: truncated flag) */
#define TLSHELLO_ALPN_MAX 256 /* "h2,http/1.1": ALPN names joined with ',' */

struct tlshello {
    uint16_t record_version;   /* the record layer's version, e.g. 0x0301 */
    uint16_t legacy_version;   /* ClientHello.legacy_version, e.g. 0x0303 */
    uint16_t max_version;      /* highest of supported_versions, else legacy_version */
    char sni[TLSHELLO_SNI_MAX + 1];   /* "" when absent */
    char alpn[TLSHELLO_ALPN_MAX + 1]; /* "" when absent */
    int truncated;             /* sni or alpn did not fit */
    size_t hello_len;          /* bytes of records the ClientHello took */
};

enum {
    TLSHELLO_NOT_TLS = -1, /* not a TLS handshake record carrying a ClientHello */
    TLSHELLO_MORE = 0,     /* a plausible start: more bytes needed */
    TLSHELLO_OK = 1,       /* parsed: out is filled */
};

/* Parses the ClientHello at the start of p[0..len): one handshake message,
 * possibly split across several TLS records (at most 64 KiB in all), that
 * ends on a record boundary (RFC 8446 5.1). MORE only while every byte so
 * far is a valid start, so a longer input never turns NOT_TLS or OK into
 * something else; a first byte other than 0x16 is NOT_TLS at once. Bytes
 * after hello_len are not looked at.
 * In sni and alpn, bytes outside printable ASCII, '\\' and (in alpn) ','
 * are escaped as \xHH so they can be logged as they are; a name is cut at
 * a whole character or escape. out's strings are terminated whatever the
 * result; its other fields mean something only with OK. */
int tlshello_parse(const uint8_t *p, size_t len, struct tlshello *out);

/* OpenSSL's names, so logs agree with SSL_get_version: "SSLv3", "TLSv1",
 * "TLSv1.1", "TLSv1.2", "TLSv1.3" for 0x0300..0x0304; "0xHHHH" (in buf)
 * for others, GREASE included. */
const char *tlshello_version_name(uint16_t v, char buf[8]);

#endif

/* The ClientHello reader; see tlshello.h. Written from RFC 8446 (sections
 * 4.1.2 and 5.1: records, the ClientHello, supported_versions), RFC 6066
 * section 3 (server_name), RFC 7301 (ALPN) and RFC 8701 (GREASE).
 *
 * The handshake message is read through a cursor that steps over record
 * headers, so a ClientHello split across records is parsed where it lies,
 * with no copy and no allocation. Every length is checked against the one
 * that encloses it when it is read; running out of input is MORE, anything
 * impossible is NOT_TLS. Because the checks happen as the bytes arrive,
 * MORE means "every byte so far is a valid start", and a longer input never
 * turns NOT_TLS or OK into something else. */
#include "tlshello.h"

#include <stdio.h>
#include <string.h>

#define TLSHELLO_CAP 65536      /* records the ClientHello may take, in all */
#define RECORD_HEADER 5
#define RECORD_MAX 16384        /* 2^14: a plaintext record's fragment */
#define CT_HANDSHAKE 22
#define HT_CLIENT_HELLO 1
/* legacy_version(2) random(32) session_id(1+0) cipher_suites(2+2)
 * compression_methods(1+1): the shortest ClientHello body. */
#define HELLO_MIN 41

#define EXT_SERVER_NAME 0
#define EXT_ALPN 16
#define EXT_SUPPORTED_VERSIONS 43

enum { R_OK, R_MORE, R_BAD };

/* The handshake stream inside the records at the start of the input. */
struct rd {
    const uint8_t *p;
    size_t len;
    size_t pos;      /* next input byte */
    size_t rec_left; /* bytes of the current record not read yet */
    size_t msg_left; /* bytes of the handshake message not read yet */
    size_t off;      /* ClientHello body bytes read */
    uint16_t rec_version;
};

/* Checks the header of the record starting at r->pos, as far as the input
 * goes, and steps over it. */
static int next_record(struct rd *r)
{
    size_t have = r->len - r->pos;
    const uint8_t *h = r->p + r->pos;
    if (have >= 1 && h[0] != CT_HANDSHAKE)
        return R_BAD;
    if (have >= 2 && h[1] != 0x03)
        return R_BAD;
    if (have >= 3 && h[2] > 0x04)
        return R_BAD;
    if (have < RECORD_HEADER)
        return R_MORE;
    size_t n = (size_t)h[3] << 8 | h[4];
    /* Zero-length handshake fragments are forbidden (RFC 8446 5.1); the
     * ClientHello ends on a record boundary (it precedes a key change), so
     * a record may not reach past it; and the cap bounds the whole. */
    if (n == 0 || n > RECORD_MAX || n > r->msg_left ||
        r->pos + RECORD_HEADER + n > TLSHELLO_CAP)
        return R_BAD;
    if (r->pos == 0)
        r->rec_version = (uint16_t)(h[1] << 8 | h[2]);
    r->pos += RECORD_HEADER;
    r->rec_left = n;
    return R_OK;
}

/* Reads n handshake bytes into out (or skips them when out is NULL). */
static int take(struct rd *r, size_t n, uint8_t *out)
{
    if (n > r->msg_left)
        return R_BAD; /* past the message: a length check missed (never) */
    while (n > 0) {
        if (r->rec_left == 0) {
            int rc = next_record(r);
            if (rc != R_OK)
                return rc;
        }
        size_t k = n;
        if (k > r->rec_left)
            k = r->rec_left;
        if (k > r->len - r->pos)
            k = r->len - r->pos;
        if (k == 0)
            return R_MORE;
        if (out) {
            memcpy(out, r->p + r->pos, k);
            out += k;
        }
        r->pos += k;
        r->rec_left -= k;
        r->msg_left -= k;
        r->off += k;
        n -= k;
    }
    return R_OK;
}

static int u8(struct rd *r, unsigned *v)
{
    uint8_t b;
    int rc = take(r, 1, &b);
    *v = b;
    return rc;
}

static int u16(struct rd *r, unsigned *v)
{
    uint8_t b[2] = {0, 0};
    int rc = take(r, 2, b);
    *v = (unsigned)b[0] << 8 | b[1];
    return rc;
}

#define TRY(x)                   \
    do {                         \
        int rc_ = (x);           \
        if (rc_ != R_OK)         \
            return rc_;          \
    } while (0)

/* Whether k more bytes lie before end (a body offset). */
static int within(const struct rd *r, size_t end, size_t k)
{
    return end >= r->off && end - r->off >= k ? R_OK : R_BAD;
}

/* A vector's length, read and checked to lie within [min, end - off]. */
static int vec_len(struct rd *r, int width, size_t min, size_t end, size_t *n)
{
    unsigned v;
    TRY(within(r, end, (size_t)width));
    TRY(width == 1 ? u8(r, &v) : u16(r, &v));
    if (v < min || v > end - r->off)
        return R_BAD;
    *n = v;
    return R_OK;
}

/* Appends the n bytes at the cursor to dst (of cap bytes plus the NUL) at
 * *used, escaping what is not printable ASCII, the backslash and, when sep
 * is set, the separator as \xHH. What does not fit is dropped at a whole
 * character or escape and sets *truncated. */
static int append_name(struct rd *r, size_t n, char *dst, size_t cap, size_t *used,
                       int sep, int *truncated)
{
    static const char hexd[] = "0123456789abcdef";
    while (n > 0) {
        uint8_t buf[64];
        size_t k = n < sizeof buf ? n : sizeof buf;
        TRY(take(r, k, buf));
        n -= k;
        for (size_t i = 0; i < k; i++) {
            uint8_t c = buf[i];
            int esc = c < 0x20 || c > 0x7e || c == '\\' || (sep && c == sep);
            size_t w = esc ? 4 : 1;
            if (*truncated || *used + w > cap) {
                *truncated = 1;
                continue;
            }
            if (esc) {
                dst[*used] = '\\';
                dst[*used + 1] = 'x';
                dst[*used + 2] = hexd[c >> 4];
                dst[*used + 3] = hexd[c & 15];
            } else {
                dst[*used] = (char)c;
            }
            *used += w;
            dst[*used] = '\0';
        }
    }
    return R_OK;
}

/* server_name (RFC 6066 3): the first host_name is kept; other name types
 * are stepped over. */
static int ext_server_name(struct rd *r, size_t end, struct tlshello *out)
{
    size_t list;
    TRY(vec_len(r, 2, 1, end, &list));
    if (r->off + list != end)
        return R_BAD;
    size_t used = 0;
    int have = 0, cut = 0;
    while (r->off < end) {
        unsigned type;
        size_t n;
        TRY(within(r, end, 1));
        TRY(u8(r, &type));
        TRY(vec_len(r, 2, 1, end, &n));
        if (type == 0 && !have) {
            have = 1;
            TRY(append_name(r, n, out->sni, TLSHELLO_SNI_MAX, &used, 0, &cut));
        } else {
            TRY(take(r, n, NULL));
        }
    }
    if (cut)
        out->truncated = 1;
    return R_OK;
}

/* application_layer_protocol_negotiation (RFC 7301 3.1): every name, joined
 * with ','. */
static int ext_alpn(struct rd *r, size_t end, struct tlshello *out)
{
    size_t list;
    TRY(vec_len(r, 2, 2, end, &list));
    if (r->off + list != end)
        return R_BAD;
    size_t used = 0;
    int cut = 0;
    while (r->off < end) {
        size_t n;
        TRY(vec_len(r, 1, 1, end, &n));
        if (used > 0) {
            if (!cut && used + 1 <= TLSHELLO_ALPN_MAX) {
                out->alpn[used++] = ',';
                out->alpn[used] = '\0';
            } else {
                cut = 1;
            }
        }
        TRY(append_name(r, n, out->alpn, TLSHELLO_ALPN_MAX, &used, ',', &cut));
    }
    if (cut)
        out->truncated = 1;
    return R_OK;
}

/* GREASE (RFC 8701): 0x0a0a, 0x1a1a, ... 0xfafa. */
static int is_grease(unsigned v)
{
    return (v & 0x0f0f) == 0x0a0a && (v >> 8) == (v & 0xff);
}

/* supported_versions (RFC 8446 4.2.1): the highest that is not GREASE. */
static int ext_supported_versions(struct rd *r, size_t end, uint16_t *max)
{
    size_t list;
    TRY(vec_len(r, 1, 2, end, &list));
    if (r->off + list != end || list % 2)
        return R_BAD;
    while (r->off < end) {
        unsigned v;
        TRY(u16(r, &v));
        if (!is_grease(v) && v > *max)
            *max = (uint16_t)v;
    }
    return R_OK;
}

static int parse(struct rd *r, struct tlshello *out)
{
    /* The handshake header: msg_left is unknown until it is read, so until
     * then it is the largest message the cap allows. */
    uint8_t hh[4];
    r->msg_left = TLSHELLO_CAP;
    TRY(take(r, 1, hh));
    if (hh[0] != HT_CLIENT_HELLO)
        return R_BAD;
    TRY(take(r, 3, hh + 1));
    size_t body = (size_t)hh[1] << 16 | (size_t)hh[2] << 8 | hh[3];
    /* At least one header for every full record it needs. */
    size_t need = body + 4 + RECORD_HEADER * ((body + 4 + RECORD_MAX - 1) / RECORD_MAX);
    if (body < HELLO_MIN || need > TLSHELLO_CAP)
        return R_BAD;
    r->msg_left = body;
    r->off = 0;
    if (r->rec_left > r->msg_left)
        return R_BAD; /* the record goes on past the ClientHello */

    unsigned v;
    size_t n;
    TRY(u16(r, &v));
    if (v >> 8 != 0x03)
        return R_BAD;
    out->legacy_version = (uint16_t)v;
    TRY(take(r, 32, NULL)); /* random */
    TRY(vec_len(r, 1, 0, body, &n));
    if (n > 32)
        return R_BAD;
    TRY(take(r, n, NULL)); /* legacy_session_id */
    TRY(vec_len(r, 2, 2, body, &n));
    if (n % 2)
        return R_BAD;
    TRY(take(r, n, NULL)); /* cipher_suites */
    TRY(vec_len(r, 1, 1, body, &n));
    TRY(take(r, n, NULL)); /* legacy_compression_methods */

    uint16_t max = 0;
    if (r->off < body) {
        TRY(vec_len(r, 2, 0, body, &n));
        if (r->off + n != body)
            return R_BAD;
        int seen_sni = 0, seen_alpn = 0, seen_sv = 0;
        while (r->off < body) {
            unsigned type;
            size_t elen;
            TRY(within(r, body, 4));
            TRY(u16(r, &type));
            TRY(vec_len(r, 2, 0, body, &elen));
            size_t end = r->off + elen;
            /* Each extension at most once (RFC 8446 4.2). */
            int *seen = type == EXT_SERVER_NAME ? &seen_sni
                      : type == EXT_ALPN ? &seen_alpn
                      : type == EXT_SUPPORTED_VERSIONS ? &seen_sv : NULL;
            if (seen && (*seen)++)
                return R_BAD;
            if (type == EXT_SERVER_NAME)
                TRY(ext_server_name(r, end, out));
            else if (type == EXT_ALPN)
                TRY(ext_alpn(r, end, out));
            else if (type == EXT_SUPPORTED_VERSIONS)
                TRY(ext_supported_versions(r, end, &max));
            else
                TRY(take(r, elen, NULL));
        }
    }
    out->max_version = max ? max : out->legacy_version;
    out->hello_len = r->pos;
    return R_OK;
}

int tlshello_parse(const uint8_t *p, size_t len, struct tlshello *out)
{
    memset(out, 0, sizeof *out);
    /* A plaintext client is told apart by its first byte. */
    if (len == 0)
        return TLSHELLO_MORE;
    if (p[0] != CT_HANDSHAKE)
        return TLSHELLO_NOT_TLS;
    struct rd r = {.p = p, .len = len};
    int rc = parse(&r, out);
    out->record_version = r.rec_version;
    if (rc == R_OK)
        return TLSHELLO_OK;
    out->hello_len = 0;
    return rc == R_MORE ? TLSHELLO_MORE : TLSHELLO_NOT_TLS;
}

const char *tlshello_version_name(uint16_t v, char buf[8])
{
    /* The names OpenSSL's SSL_get_version gives, so logs agree. */
    switch (v) {
    case 0x0300: return "SSLv3";
    case 0x0301: return "TLSv1";
    case 0x0302: return "TLSv1.1";
    case 0x0303: return "TLSv1.2";
    case 0x0304: return "TLSv1.3";
    }
    snprintf(buf, 8, "0x%04x", (unsigned)v);
    return buf;
}

/* SHA-1, base64 and the WebSocket mask; see codec.h. Written from RFC 3174,
 * RFC 4648 and RFC 6455; tests/unit/test_codec.c checks them against the
 * RFCs' own vectors. */
#include "codec.h"

#include <string.h>

struct sha1 {
    uint32_t h[5];
    uint64_t bytes;     /* total input length */
    unsigned char block[64];
    size_t used;        /* bytes in block */
};

static uint32_t rol(uint32_t x, int n)
{
    return (x << n) | (x >> (32 - n));
}

/* One 512-bit block (RFC 3174 section 6.1, method 1). */
static void sha1_block(struct sha1 *s, const unsigned char *p)
{
    uint32_t w[80];
    for (int t = 0; t < 16; t++)
        w[t] = (uint32_t)p[4 * t] << 24 | (uint32_t)p[4 * t + 1] << 16 |
               (uint32_t)p[4 * t + 2] << 8 | (uint32_t)p[4 * t + 3];
    for (int t = 16; t < 80; t++)
        w[t] = rol(w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16], 1);
    uint32_t a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3], e = s->h[4];
    for (int t = 0; t < 80; t++) {
        uint32_t f, k;
        if (t < 20) {
            f = (b & c) | (~b & d);
            k = 0x5A827999u;
        } else if (t < 40) {
            f = b ^ c ^ d;
            k = 0x6ED9EBA1u;
        } else if (t < 60) {
            f = (b & c) | (b & d) | (c & d);
            k = 0x8F1BBCDCu;
        } else {
            f = b ^ c ^ d;
            k = 0xCA62C1D6u;
        }
        uint32_t tmp = rol(a, 5) + f + e + w[t] + k;
        e = d;
        d = c;
        c = rol(b, 30);
        b = a;
        a = tmp;
    }
    s->h[0] += a;
    s->h[1] += b;
    s->h[2] += c;
    s->h[3] += d;
    s->h[4] += e;
}

static void sha1_update(struct sha1 *s, const unsigned char *p, size_t len)
{
    s->bytes += len;
    while (len > 0) {
        size_t n = 64 - s->used;
        if (n > len)
            n = len;
        memcpy(s->block + s->used, p, n);
        s->used += n;
        p += n;
        len -= n;
        if (s->used == 64) {
            sha1_block(s, s->block);
            s->used = 0;
        }
    }
}

void codec_sha1(const void *data, size_t len, unsigned char out[CODEC_SHA1_LEN])
{
    struct sha1 s = {{0x67452301u, 0xEFCDAB89u, 0x98BADCFEu, 0x10325476u, 0xC3D2E1F0u}, 0, {0}, 0};
    sha1_update(&s, data, len);
    /* Padding: 0x80, zeros to 56 mod 64, then the bit length big-endian. */
    uint64_t bits = s.bytes * 8;
    unsigned char pad[72] = {0x80};
    size_t padlen = (s.used < 56 ? 56 : 120) - s.used;
    for (int i = 0; i < 8; i++)
        pad[padlen + i] = (unsigned char)(bits >> (56 - 8 * i));
    sha1_update(&s, pad, padlen + 8);
    for (int i = 0; i < 5; i++) {
        out[4 * i] = (unsigned char)(s.h[i] >> 24);
        out[4 * i + 1] = (unsigned char)(s.h[i] >> 16);
        out[4 * i + 2] = (unsigned char)(s.h[i] >> 8);
        out[4 * i + 3] = (unsigned char)s.h[i];
    }
}

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t codec_base64_len(size_t len)
{
    return (len + 2) / 3 * 4;
}

size_t codec_base64_encode(const unsigned char *in, size_t len, char *out)
{
    size_t o = 0, i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = B64[v >> 18];
        out[o++] = B64[(v >> 12) & 63];
        out[o++] = B64[(v >> 6) & 63];
        out[o++] = B64[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = B64[v >> 18];
        out[o++] = B64[(v >> 12) & 63];
        out[o++] = '=';
        out[o++] = '=';
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = B64[v >> 18];
        out[o++] = B64[(v >> 12) & 63];
        out[o++] = B64[(v >> 6) & 63];
        out[o++] = '=';
    }
    return o;
}

static int b64_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

long codec_base64_decode(const char *in, size_t len, unsigned char *out)
{
    if (len % 4 != 0)
        return -1;
    long o = 0;
    for (size_t i = 0; i < len; i += 4) {
        int last = i + 4 == len;
        int pad = 0;
        if (last && in[i + 3] == '=')
            pad = in[i + 2] == '=' ? 2 : 1;
        int v[4];
        for (int k = 0; k < 4 - pad; k++)
            if ((v[k] = b64_value(in[i + k])) < 0)
                return -1;
        if (pad == 2) {
            if (v[1] & 15)          /* non-zero bits after the last byte */
                return -1;
            out[o++] = (unsigned char)(v[0] << 2 | v[1] >> 4);
        } else if (pad == 1) {
            if (v[2] & 3)
                return -1;
            out[o++] = (unsigned char)(v[0] << 2 | v[1] >> 4);
            out[o++] = (unsigned char)((v[1] & 15) << 4 | v[2] >> 2);
        } else {
            out[o++] = (unsigned char)(v[0] << 2 | v[1] >> 4);
            out[o++] = (unsigned char)((v[1] & 15) << 4 | v[2] >> 2);
            out[o++] = (unsigned char)((v[2] & 3) << 6 | v[3]);
        }
    }
    return o;
}

void codec_mask(unsigned char *data, size_t len, const unsigned char key[4], size_t phase)
{
    for (size_t i = 0; i < len; i++)
        data[i] ^= key[(i + phase) & 3];
}

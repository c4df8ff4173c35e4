/* SHA-1 (OpenSSL's), base64 and the WebSocket mask; see codec.h. Written
 * from RFC 4648 and RFC 6455; tests/unit/test_codec.c checks them against
 * the RFCs' own vectors (RFC 3174's for SHA-1). */
#include "codec.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

/* OpenSSL is linked for TLS anyway: its SHA-1 rather than one of our own. */
void codec_sha1(const void *data, size_t len, unsigned char out[CODEC_SHA1_LEN])
{
    unsigned int n = CODEC_SHA1_LEN;
    if (EVP_Digest(data, len, out, &n, EVP_sha1(), NULL) != 1)
        abort(); /* no SHA-1 in the default provider: a broken installation */
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

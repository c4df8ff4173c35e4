/* codec.c against the published vectors: SHA-1 from RFC 3174 section 7.3 (and
 * FIPS 180-1's million 'a'), base64 from RFC 4648 section 10, the WebSocket
 * accept key from RFC 6455 section 1.3, plus base64 round trips of every
 * length and the decoder's rejections. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "codec.h"

static void hex(const unsigned char *d, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02X", d[i]);
}

static void check_sha1(const char *data, size_t len, long repeat, const char *want)
{
    size_t total = len * (size_t)repeat;
    char *buf = malloc(total + 1);
    for (long i = 0; i < repeat; i++)
        memcpy(buf + (size_t)i * len, data, len);
    unsigned char d[CODEC_SHA1_LEN];
    codec_sha1(buf, total, d);
    char got[2 * CODEC_SHA1_LEN + 1];
    hex(d, sizeof d, got);
    CHECK_MSG(strcmp(got, want) == 0, "sha1(%.20s x%ld) = %s, want %s", data, repeat, got, want);
    free(buf);
}

static void check_b64(const char *in, const char *want)
{
    char out[64];
    size_t n = codec_base64_encode((const unsigned char *)in, strlen(in), out);
    out[n] = '\0';
    CHECK_MSG(strcmp(out, want) == 0, "base64(%s) = %s, want %s", in, out, want);
    CHECK(n == codec_base64_len(strlen(in)));
    unsigned char back[64];
    long m = codec_base64_decode(want, strlen(want), back);
    CHECK_MSG(m == (long)strlen(in) && memcmp(back, in, (size_t)m) == 0, "unbase64(%s)", want);
}

static void check_bad_b64(const char *in)
{
    unsigned char out[64];
    CHECK_MSG(codec_base64_decode(in, strlen(in), out) == -1, "unbase64(%s) accepted", in);
}

int main(void)
{
    /* RFC 3174 section 7.3 TEST1..TEST4 */
    check_sha1("abc", 3, 1, "A9993E364706816ABA3E25717850C26C9CD0D89D");
    check_sha1("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 56, 1,
               "84983E441C3BD26EBAAE4AA1F95129E5E54670F1");
    check_sha1("a", 1, 1000000, "34AA973CD4C4DAA4F61EEB2BDBAD27316534016F");
    check_sha1("0123456701234567012345670123456701234567012345670123456701234567", 64, 10,
               "DEA356A2CDDD90C7A7ECEDC5EBB563934F460452");
    check_sha1("", 0, 1, "DA39A3EE5E6B4B0D3255BFEF95601890AFD80709");
    /* lengths around the padding boundary (55, 56, 63, 64 bytes), checked
     * against values from coreutils' sha1sum */
    check_sha1("a", 1, 55, "C1C8BBDC22796E28C0E15163D20899B65621D65A");
    check_sha1("a", 1, 56, "C2DB330F6083854C99D4B5BFB6E8F29F201BE699");
    check_sha1("a", 1, 63, "03F09F5B158A7A8CDAD920BDDC29B81C18A551F5");
    check_sha1("a", 1, 64, "0098BA824B5C16427BD7A1122A5A442A25EC644D");

    /* RFC 4648 section 10 */
    check_b64("", "");
    check_b64("f", "Zg==");
    check_b64("fo", "Zm8=");
    check_b64("foo", "Zm9v");
    check_b64("foob", "Zm9vYg==");
    check_b64("fooba", "Zm9vYmE=");
    check_b64("foobar", "Zm9vYmFy");

    /* RFC 6455 section 1.3: the accept key of the sample handshake */
    const char *key = "dGhlIHNhbXBsZSBub25jZQ==258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    unsigned char d[CODEC_SHA1_LEN];
    codec_sha1(key, strlen(key), d);
    char acc[32];
    acc[codec_base64_encode(d, sizeof d, acc)] = '\0';
    CHECK_MSG(strcmp(acc, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") == 0, "accept key %s", acc);

    /* every byte value and length round-trips */
    unsigned char all[300], back[300];
    char enc[404];
    for (int i = 0; i < 300; i++)
        all[i] = (unsigned char)(i * 7 + 3);
    for (size_t n = 0; n <= 300; n++) {
        size_t e = codec_base64_encode(all, n, enc);
        long m = codec_base64_decode(enc, e, back);
        CHECK_MSG(m == (long)n && memcmp(all, back, n) == 0, "round trip of %zu bytes", n);
    }

    check_bad_b64("Zg=");          /* length not a multiple of 4 */
    check_bad_b64("Zg=a");         /* padding in the middle */
    check_bad_b64("Z===");
    check_bad_b64("Zm9v Zg==");
    check_bad_b64("Zh==");         /* non-zero bits after the last byte */
    check_bad_b64("Zm9=");
    check_bad_b64("Zg==Zg==");     /* padding before the end */
    check_bad_b64("Zm9-");         /* URL alphabet is not this one */

    /* the mask is its own inverse and honours the phase */
    unsigned char m1[10] = "abcdefghij", k[4] = {1, 2, 3, 4};
    codec_mask(m1, 10, k, 0);
    CHECK(m1[0] == ('a' ^ 1) && m1[5] == ('f' ^ 2));
    codec_mask(m1, 3, k, 0);
    codec_mask(m1 + 3, 7, k, 3);
    CHECK(memcmp(m1, "abcdefghij", 10) == 0);

    return check_done("codec");
}

/* src/codec.c: base64 both ways (strict decoding of peer input, encoding
 * round trips), the WebSocket mask (its own inverse, and masking in pieces
 * at any phase equals masking at once), and SHA-1 over any input.
 *
 * Input: byte 0 picks the mask key phase and a cut point, the rest is data. */
#include <string.h>

#include "codec.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0 || size > 65536)
        return 0;
    uint8_t sel = data[0];
    data++;
    size--;

    /* Decoding any text: strict, so what decodes encodes back to the same text. */
    unsigned char *dec = malloc(size / 4 * 3 + 1);
    char *enc = malloc(codec_base64_len(size) + 1);
    FUZZ_CHECK(dec && enc, "malloc");
    long n = codec_base64_decode((const char *)data, size, dec);
    FUZZ_CHECK(n >= -1 && n <= (long)(size / 4 * 3), "decoded length %ld of %zu", n, size);
    if (n >= 0) {
        FUZZ_CHECK(size % 4 == 0, "decoded a length %zu not a multiple of 4", size);
        size_t m = codec_base64_encode(dec, (size_t)n, enc);
        FUZZ_CHECK(m == size && memcmp(enc, data, size) == 0,
                   "decode then encode is not the identity (%zu bytes)", size);
    }

    /* Encoding any bytes decodes back to them. */
    size_t m = codec_base64_encode(data, size, enc);
    FUZZ_CHECK(m == codec_base64_len(size), "encoded %zu, expected %zu", m, codec_base64_len(size));
    for (size_t i = 0; i < m; i++)
        FUZZ_CHECK(strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=",
                          enc[i]) && enc[i],
                   "bad character at %zu", i);
    unsigned char *back = malloc(m / 4 * 3 + 1);
    FUZZ_CHECK(back, "malloc");
    long k = codec_base64_decode(enc, m, back);
    FUZZ_CHECK(k == (long)size && memcmp(back, data, size) == 0, "round trip of %zu bytes", size);
    free(back);
    free(enc);
    free(dec);

    /* The mask: in two pieces at the right phases, equal to one call, and
     * applying it again restores the data. */
    unsigned char key[4] = {0x37, 0xfa, 0x21, 0x3d};
    size_t phase = sel & 7;
    size_t cut = size ? (sel * 131u) % (size + 1) : 0;
    unsigned char *a = malloc(size + 1), *b = malloc(size + 1);
    FUZZ_CHECK(a && b, "malloc");
    memcpy(a, data, size);
    memcpy(b, data, size);
    codec_mask(a, size, key, phase);
    codec_mask(b, cut, key, phase);
    codec_mask(b + cut, size - cut, key, phase + cut);
    FUZZ_CHECK(memcmp(a, b, size) == 0, "masking in two pieces differs (cut %zu)", cut);
    for (size_t i = 0; i < size; i++)
        FUZZ_CHECK(a[i] == (data[i] ^ key[(i + phase) % 4]), "mask byte %zu", i);
    codec_mask(a, size, key, phase);
    FUZZ_CHECK(memcmp(a, data, size) == 0, "mask is not its own inverse");
    free(a);
    free(b);

    /* SHA-1: deterministic, and (under ASan) no access out of bounds at any
     * length around the 55/56/64-byte padding boundaries. */
    unsigned char d1[CODEC_SHA1_LEN], d2[CODEC_SHA1_LEN];
    codec_sha1(data, size, d1);
    codec_sha1(data, size, d2);
    FUZZ_CHECK(memcmp(d1, d2, sizeof d1) == 0, "sha1 not deterministic");
    return 0;
}

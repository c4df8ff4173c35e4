/* src/tlshello.c on any bytes: never a crash, strings always terminated and
 * printable, and the answers agree with one another:
 *   - an OK hello lies within the input, and bytes after it change nothing;
 *   - NOT_TLS and OK are final: no prefix of an input says NOT_TLS or OK
 *     unless the whole says the same, and no prefix of an OK hello is
 *     anything but MORE;
 *   - the same handshake message in records of other sizes (1 byte, the
 *     largest, one the input picks) gives the same hello, or NOT_TLS when
 *     those records would pass the 64 KiB cap. */
#include <string.h>

#include "fuzz.h"
#include "tlshello.h"

#define CAP 65536

static void check_strings(const struct tlshello *h)
{
    const char *s[2] = {h->sni, h->alpn};
    size_t cap[2] = {sizeof h->sni, sizeof h->alpn};
    for (int i = 0; i < 2; i++) {
        const char *z = memchr(s[i], '\0', cap[i]);
        FUZZ_CHECK(z, "string %d not terminated", i);
        for (const char *c = s[i]; c < z; c++)
            FUZZ_CHECK(*c >= 0x20 && *c <= 0x7e, "string %d: byte 0x%02x", i, (unsigned char)*c);
    }
    FUZZ_CHECK(h->truncated == 0 || h->truncated == 1, "truncated %d", h->truncated);
}

static int same(const struct tlshello *a, const struct tlshello *b, int records_too)
{
    return a->legacy_version == b->legacy_version && a->max_version == b->max_version &&
           strcmp(a->sni, b->sni) == 0 && strcmp(a->alpn, b->alpn) == 0 &&
           a->truncated == b->truncated &&
           (!records_too || (a->record_version == b->record_version && a->hello_len == b->hello_len));
}

/* A prefix of k bytes against the whole's answer rc/h. */
static void check_prefix(const uint8_t *data, size_t k, int rc, const struct tlshello *h)
{
    struct tlshello hk;
    int rk = tlshello_parse(data, k, &hk);
    check_strings(&hk);
    if (rk == TLSHELLO_NOT_TLS)
        FUZZ_CHECK(rc == TLSHELLO_NOT_TLS, "%zu bytes NOT_TLS, the whole %d", k, rc);
    if (rk == TLSHELLO_OK)
        FUZZ_CHECK(rc == TLSHELLO_OK && same(&hk, h, 1), "%zu bytes OK, the whole %d or another", k, rc);
    if (rc == TLSHELLO_MORE)
        FUZZ_CHECK(rk == TLSHELLO_MORE, "%zu bytes %d, the whole MORE", k, rk);
    if (rc == TLSHELLO_OK)
        FUZZ_CHECK(rk == (k < h->hello_len ? TLSHELLO_MORE : TLSHELLO_OK),
                   "%zu bytes of an OK hello of %zu: %d", k, h->hello_len, rk);
}

static uint8_t msg[CAP], rec[6 * CAP + 5];

/* The OK hello's message re-split into records of frag bytes. */
static void check_resplit(const uint8_t *data, const struct tlshello *h, size_t frag)
{
    size_t n = 0;
    for (size_t at = 0; at < h->hello_len;) {
        size_t k = (size_t)data[at + 3] << 8 | data[at + 4];
        memcpy(msg + n, data + at + 5, k);
        n += k;
        at += 5 + k;
    }
    size_t m = 0;
    for (size_t at = 0; at < n; at += frag) {
        size_t k = n - at < frag ? n - at : frag;
        rec[m] = 22;
        rec[m + 1] = (uint8_t)(h->record_version >> 8);
        rec[m + 2] = (uint8_t)h->record_version;
        rec[m + 3] = (uint8_t)(k >> 8);
        rec[m + 4] = (uint8_t)k;
        memcpy(rec + m + 5, msg + at, k);
        m += 5 + k;
    }
    struct tlshello h2;
    int rc = tlshello_parse(rec, m, &h2);
    check_strings(&h2);
    if (m > CAP) {
        FUZZ_CHECK(rc == TLSHELLO_NOT_TLS, "%zu bytes in records of %zu: %d", m, frag, rc);
        return;
    }
    FUZZ_CHECK(rc == TLSHELLO_OK && h2.hello_len == m && same(&h2, h, 0),
               "records of %zu: rc %d, hello_len %zu of %zu", frag, rc, h2.hello_len, m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > CAP + 64)
        return 0;
    struct tlshello h, h2;
    int rc = tlshello_parse(data, size, &h);
    FUZZ_CHECK(rc == TLSHELLO_NOT_TLS || rc == TLSHELLO_MORE || rc == TLSHELLO_OK, "rc %d", rc);
    check_strings(&h);
    FUZZ_CHECK(tlshello_parse(data, size, &h2) == rc && same(&h, &h2, 1), "not deterministic");
    if (size == 0)
        FUZZ_CHECK(rc == TLSHELLO_MORE, "empty input: %d", rc);
    else if (data[0] != 22)
        FUZZ_CHECK(rc == TLSHELLO_NOT_TLS, "first byte 0x%02x: %d", data[0], rc);
    if (rc == TLSHELLO_OK) {
        FUZZ_CHECK(h.hello_len <= size && h.hello_len >= 5 + 4 + 41 && h.hello_len <= CAP,
                   "hello_len %zu of %zu", h.hello_len, size);
        FUZZ_CHECK(h.record_version >= 0x0300 && h.record_version <= 0x0304,
                   "record_version %04x", h.record_version);
        FUZZ_CHECK(h.legacy_version >> 8 == 3, "legacy_version %04x", h.legacy_version);
        FUZZ_CHECK(strlen(h.sni) <= TLSHELLO_SNI_MAX && strlen(h.alpn) <= TLSHELLO_ALPN_MAX,
                   "lengths");
    } else {
        FUZZ_CHECK(h.hello_len == 0, "hello_len %zu without OK", h.hello_len);
    }

    /* Prefixes: the one a byte shorter, around the hello's end, and a few
     * spread over the input. */
    if (size > 0)
        check_prefix(data, size - 1, rc, &h);
    if (rc == TLSHELLO_OK) {
        check_prefix(data, h.hello_len - 1, rc, &h);
        check_prefix(data, h.hello_len, rc, &h);
    }
    for (size_t i = 1; i < 8; i++)
        check_prefix(data, size * i / 8, rc, &h);

    if (rc == TLSHELLO_OK) {
        check_resplit(data, &h, 16384);
        check_resplit(data, &h, 1);
        check_resplit(data, &h, 1 + data[h.hello_len - 1] % 300u);
    }
    return 0;
}

/* tlshello.c on ClientHellos that openssl s_client (OpenSSL 3.0) sent to a
 * listener that recorded them, byte for byte, and on hellos built here for
 * what s_client does not send: GREASE, long and odd names, other record
 * splits, broken lengths. The parser must answer MORE for every proper
 * prefix of a hello and OK for the whole, never crash on garbage, and tell
 * plaintext apart from its first byte. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "tlshello.h"

/* Captured with fuzz/seeds.py's listener:
 *   openssl s_client -connect 127.0.0.1:PORT -tls1_3 -servername example.com -alpn h2,http/1.1
 *   openssl s_client -connect 127.0.0.1:PORT -tls1_2 -servername www.example.org -alpn http/1.1
 *   openssl s_client -connect 127.0.0.1:PORT -noservername */
static const char HELLO_TLS13[] =
    "1603010102010000fe030326ca4c05c687ce117c51f854eca28a5c15dcd9c42391f91d4aa4686ca65daf6d20"
    "5defbabc0e3b5fbeace3b8694aaa67000a7c51d3989afc91c726ae9a7f5b2cd3000813021303130100ff0100"
    "00ad00000010000e00000b6578616d706c652e636f6d000b000403000102000a00160014001d0017001e0019"
    "001801000101010201030104002300000010000e000c02683208687474702f312e310016000000170000000d"
    "001e001c040305030603080708080809080a080b080408050806040105010601002b0003020304002d000201"
    "01003300260024001d0020925ee295d5bd232be1a775c6b943042b06da24150ada8bb9803389d34b97e021"
    ;
static const char HELLO_TLS12[] =
    "16030100de010000da0303c96f1bf67fcf3a85e2030c489cb838895206d35b0d78e429626ad895cba31d0c00"
    "0038c02cc030009fcca9cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac0140039c009c0130033"
    "009d009c003d003c0035002f00ff0100007900000014001200000f7777772e6578616d706c652e6f7267000b"
    "000403000102000a000c000a001d0017001e00190018002300000010000b000908687474702f312e31001600"
    "0000170000000d002a0028040305030603080708080809080a080b0804080508060401050106010303030103"
    "02040205020602"
    ;
static const char HELLO_NOSNI[] =
    "1603010124010001200303050af8c7329fbd1ea0d620e519d4e2aebe27c4e925058eb69e21939f0bcc6ff320"
    "52765d1826d910ea3d02612fab9cfee82269373ddc3367a706fcfd787318ea89003e130213031301c02cc030"
    "009fcca9cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac0140039c009c0130033009d009c003d"
    "003c0035002f00ff01000099000b000403000102000a00160014001d0017001e001900180100010101020103"
    "0104002300000016000000170000000d002a0028040305030603080708080809080a080b0804080508060401"
    "05010601030303010302040205020602002b0009080304030303020301002d00020101003300260024001d00"
    "20b12238ca4e5712e4be333d303571a2892d4322f26ccba589505d7a277003274b"
    ;

static size_t unhex(const char *h, uint8_t *out)
{
    size_t n = strlen(h) / 2;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(h + 2 * i, "%2x", &v);
        out[i] = (uint8_t)v;
    }
    return n;
}

/* Whether the strings are NUL-terminated inside their arrays and hold only
 * printable ASCII (what the escaping promises). */
static int strings_ok(const struct tlshello *h)
{
    const char *s[2] = {h->sni, h->alpn};
    size_t cap[2] = {sizeof h->sni, sizeof h->alpn};
    for (int i = 0; i < 2; i++) {
        const char *z = memchr(s[i], '\0', cap[i]);
        if (!z)
            return 0;
        for (const char *c = s[i]; c < z; c++)
            if (*c < 0x20 || *c > 0x7e)
                return 0;
    }
    return 1;
}

/* Every proper prefix is MORE, the whole is OK, and bytes after it change
 * nothing. Returns the whole's result in *want. */
static void check_prefixes(const char *name, const uint8_t *p, size_t len, struct tlshello *want)
{
    CHECK_MSG(tlshello_parse(p, len, want) == TLSHELLO_OK, "%s: whole hello", name);
    CHECK_MSG(want->hello_len == len, "%s: hello_len %zu of %zu", name, want->hello_len, len);
    size_t bad = 0;
    for (size_t k = 0; k < len; k++) {
        struct tlshello h;
        int rc = tlshello_parse(p, k, &h);
        if (rc != TLSHELLO_MORE || !strings_ok(&h) || h.hello_len != 0) {
            if (!bad++)
                fprintf(stderr, "%s: prefix of %zu bytes gave %d\n", name, k, rc);
        }
    }
    CHECK_MSG(bad == 0, "%s: %zu prefixes not MORE", name, bad);
    uint8_t *more = malloc(len + 100);
    memcpy(more, p, len);
    memset(more + len, 0x17, 100);
    for (size_t extra = 1; extra <= 100; extra += 33) {
        struct tlshello h;
        CHECK_MSG(tlshello_parse(more, len + extra, &h) == TLSHELLO_OK &&
                      memcmp(&h, want, sizeof h) == 0,
                  "%s: %zu bytes after the hello changed the result", name, extra);
    }
    free(more);
}

/* ---- building hellos ---- */

struct buf {
    uint8_t d[6 * 65536 + 64]; /* a 64 KiB message in 1-byte records */
    size_t n;
};

static void put(struct buf *b, const void *p, size_t n)
{
    memcpy(b->d + b->n, p, n);
    b->n += n;
}

static void put8(struct buf *b, unsigned v)
{
    b->d[b->n++] = (uint8_t)v;
}

static void put16(struct buf *b, unsigned v)
{
    put8(b, v >> 8);
    put8(b, v);
}

static void put24(struct buf *b, size_t v)
{
    put8(b, (unsigned)(v >> 16));
    put16(b, (unsigned)v);
}

static void ext_sni(struct buf *e, const char *name, size_t n)
{
    put16(e, 0);
    put16(e, (unsigned)n + 5);
    put16(e, (unsigned)n + 3);
    put8(e, 0);
    put16(e, (unsigned)n);
    put(e, name, n);
}

/* names: NULL-terminated */
static void ext_alpn(struct buf *e, const char *const *names)
{
    size_t len = 0;
    for (const char *const *s = names; *s; s++)
        len += 1 + strlen(*s);
    put16(e, 16);
    put16(e, (unsigned)len + 2);
    put16(e, (unsigned)len);
    for (const char *const *s = names; *s; s++) {
        put8(e, (unsigned)strlen(*s));
        put(e, *s, strlen(*s));
    }
}

static void ext_versions(struct buf *e, const unsigned *v, size_t n)
{
    put16(e, 43);
    put16(e, (unsigned)(2 * n + 1));
    put8(e, (unsigned)(2 * n));
    for (size_t i = 0; i < n; i++)
        put16(e, v[i]);
}

static void ext_raw(struct buf *e, unsigned type, size_t n, uint8_t fill)
{
    put16(e, type);
    put16(e, (unsigned)n);
    memset(e->d + e->n, fill, n);
    e->n += n;
}

/* The handshake message: a ClientHello with the extensions in e (none at
 * all when e is NULL). */
static void hello_msg(struct buf *m, const struct buf *e)
{
    struct buf *body = calloc(1, sizeof *body);
    put16(body, 0x0303);
    for (int i = 0; i < 32; i++)
        put8(body, (unsigned)i);
    put8(body, 0);     /* session id */
    put16(body, 4);
    put16(body, 0x1301);
    put16(body, 0xc02f);
    put8(body, 1);
    put8(body, 0);
    if (e) {
        put16(body, (unsigned)e->n);
        put(body, e->d, e->n);
    }
    m->n = 0;
    put8(m, 1);
    put24(m, body->n);
    put(m, body->d, body->n);
    free(body);
}

/* The message in records of at most frag bytes. */
static void records(struct buf *out, const uint8_t *msg, size_t n, size_t frag)
{
    out->n = 0;
    for (size_t at = 0; at < n; at += frag) {
        size_t k = n - at < frag ? n - at : frag;
        put8(out, 22);
        put16(out, 0x0301);
        put16(out, (unsigned)k);
        put(out, msg + at, k);
    }
}

/* The handshake message inside records (for re-splitting a capture). */
static size_t strip_records(const uint8_t *p, size_t len, uint8_t *msg)
{
    size_t n = 0;
    for (size_t at = 0; at + 5 <= len;) {
        size_t k = (size_t)p[at + 3] << 8 | p[at + 4];
        memcpy(msg + n, p + at + 5, k);
        n += k;
        at += 5 + k;
    }
    return n;
}

static struct buf ext, msg, rec;

static int parse_built(size_t frag, struct tlshello *h)
{
    records(&rec, msg.d, msg.n, frag);
    return tlshello_parse(rec.d, rec.n, h);
}

/* ---- the checks ---- */

static void test_captures(void)
{
    static uint8_t p[4096];
    struct tlshello h;

    size_t n = unhex(HELLO_TLS13, p);
    check_prefixes("tls13", p, n, &h);
    CHECK(h.record_version == 0x0301 && h.legacy_version == 0x0303 && h.max_version == 0x0304);
    CHECK_MSG(strcmp(h.sni, "example.com") == 0, "sni %s", h.sni);
    CHECK_MSG(strcmp(h.alpn, "h2,http/1.1") == 0, "alpn %s", h.alpn);
    CHECK(!h.truncated);

    n = unhex(HELLO_TLS12, p);
    check_prefixes("tls12", p, n, &h);
    CHECK(h.record_version == 0x0301 && h.legacy_version == 0x0303 && h.max_version == 0x0303);
    CHECK_MSG(strcmp(h.sni, "www.example.org") == 0, "sni %s", h.sni);
    CHECK_MSG(strcmp(h.alpn, "http/1.1") == 0, "alpn %s", h.alpn);

    n = unhex(HELLO_NOSNI, p);
    check_prefixes("nosni", p, n, &h);
    CHECK(h.max_version == 0x0304 && h.sni[0] == '\0' && h.alpn[0] == '\0' && !h.truncated);
}

/* The same message in other records: one byte each, 7, two records, and
 * the largest; every prefix of the two-record form is MORE. */
static void test_resplit(void)
{
    static uint8_t p[4096];
    size_t n = unhex(HELLO_TLS13, p);
    struct tlshello want, h;
    CHECK(tlshello_parse(p, n, &want) == TLSHELLO_OK);
    msg.n = strip_records(p, n, msg.d);
    CHECK(msg.n + 5 == n);
    size_t frags[] = {1, 2, 7, 100, msg.n / 2 + 1, 16384};
    for (size_t i = 0; i < sizeof frags / sizeof *frags; i++) {
        int rc = parse_built(frags[i], &h);
        CHECK_MSG(rc == TLSHELLO_OK && h.hello_len == rec.n, "records of %zu: rc %d", frags[i], rc);
        CHECK_MSG(strcmp(h.sni, want.sni) == 0 && strcmp(h.alpn, want.alpn) == 0 &&
                      h.max_version == want.max_version,
                  "records of %zu: another result", frags[i]);
    }
    records(&rec, msg.d, msg.n, msg.n / 2 + 1);
    check_prefixes("tls13 in two records", rec.d, rec.n, &h);
    records(&rec, msg.d, msg.n, 3);
    check_prefixes("tls13 in 3-byte records", rec.d, rec.n, &h);
}

static void test_not_tls(void)
{
    struct tlshello h;
    const char *get = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    for (size_t k = 1; k <= strlen(get); k++)
        CHECK(tlshello_parse((const uint8_t *)get, k, &h) == TLSHELLO_NOT_TLS);
    CHECK(tlshello_parse((const uint8_t *)"", 0, &h) == TLSHELLO_MORE);
    CHECK(tlshello_parse((const uint8_t *)"\x16", 1, &h) == TLSHELLO_MORE);
    CHECK(tlshello_parse((const uint8_t *)"\x16\x03", 2, &h) == TLSHELLO_MORE);
    CHECK(tlshello_parse((const uint8_t *)"\x16\x02", 2, &h) == TLSHELLO_NOT_TLS);
    CHECK(tlshello_parse((const uint8_t *)"\x16\x03\x05", 3, &h) == TLSHELLO_NOT_TLS);
    CHECK(tlshello_parse((const uint8_t *)"\x16\x03\x01\x00\x00", 5, &h) == TLSHELLO_NOT_TLS);
    CHECK(tlshello_parse((const uint8_t *)"\x16\x03\x01\x40\x01", 5, &h) == TLSHELLO_NOT_TLS);
    CHECK(tlshello_parse((const uint8_t *)"\x16\x03\x01\x40\x00", 5, &h) == TLSHELLO_MORE);
    /* a ServerHello, an SSLv2-style hello, an alert */
    CHECK(tlshello_parse((const uint8_t *)"\x16\x03\x03\x00\x30\x02", 6, &h) == TLSHELLO_NOT_TLS);
    CHECK(tlshello_parse((const uint8_t *)"\x80\x2e\x01\x03\x01", 5, &h) == TLSHELLO_NOT_TLS);
    CHECK(tlshello_parse((const uint8_t *)"\x15\x03\x01\x00\x02", 5, &h) == TLSHELLO_NOT_TLS);
    /* a body too short for a ClientHello, and one past the 64 KiB cap:
     * 65512 + 4 bytes take four full records, 65536 bytes in all */
    CHECK(tlshello_parse((const uint8_t *)"\x16\x03\x01\x00\x2c\x01\x00\x00\x28", 9, &h) ==
          TLSHELLO_NOT_TLS);
    CHECK(tlshello_parse((const uint8_t *)"\x16\x03\x01\x40\x00\x01\x01\x00\x00", 9, &h) ==
          TLSHELLO_NOT_TLS);
    CHECK(tlshello_parse((const uint8_t *)"\x16\x03\x01\x40\x00\x01\x00\xff\xe8", 9, &h) ==
          TLSHELLO_MORE);
    CHECK(tlshello_parse((const uint8_t *)"\x16\x03\x01\x40\x00\x01\x00\xff\xe9", 9, &h) ==
          TLSHELLO_NOT_TLS);

    static uint8_t p[4096];
    size_t n = unhex(HELLO_TLS12, p);
    /* the record goes on past the hello (even with a complete hello in it) */
    uint8_t *q = malloc(n + 1);
    memcpy(q, p, n);
    q[n] = 0;
    q[4]++;
    CHECK(tlshello_parse(q, n + 1, &h) == TLSHELLO_NOT_TLS);
    CHECK(tlshello_parse(q, 6, &h) == TLSHELLO_MORE);
    CHECK(tlshello_parse(q, 9, &h) == TLSHELLO_NOT_TLS);
    free(q);
    /* a second record of another content type */
    msg.n = strip_records(p, n, msg.d);
    records(&rec, msg.d, msg.n, 50);
    rec.d[55] = 23;
    CHECK(tlshello_parse(rec.d, rec.n, &h) == TLSHELLO_NOT_TLS);
    CHECK(tlshello_parse(rec.d, 55, &h) == TLSHELLO_MORE);
    CHECK(tlshello_parse(rec.d, 56, &h) == TLSHELLO_NOT_TLS);
}

/* Any single byte of a real hello replaced by values that break lengths:
 * never a crash (ASan watches), NOT_TLS or MORE or a sane OK, and the
 * prefixes never contradict the whole. */
static void test_mutations(void)
{
    static uint8_t p[4096], q[4096];
    size_t n = unhex(HELLO_TLS13, p);
    const uint8_t vals[] = {0x00, 0x01, 0x7f, 0x80, 0xff};
    size_t oks = 0, bad = 0;
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < sizeof vals + 2; j++) {
            memcpy(q, p, n);
            q[i] = j < sizeof vals ? vals[j] : (uint8_t)(p[i] + (j == sizeof vals ? 1 : -1));
            struct tlshello h;
            int rc = tlshello_parse(q, n, &h);
            if (!strings_ok(&h) || (rc == TLSHELLO_OK && (h.hello_len > n || h.hello_len < 50)))
                bad++;
            oks += rc == TLSHELLO_OK;
            for (size_t k = 0; k < n; k += 17) {
                struct tlshello hk;
                int rk = tlshello_parse(q, k, &hk);
                /* NOT_TLS and OK are final */
                if ((rk == TLSHELLO_NOT_TLS && rc != TLSHELLO_NOT_TLS) ||
                    (rk == TLSHELLO_OK && (rc != TLSHELLO_OK || memcmp(&hk, &h, sizeof h))))
                    bad++;
            }
        }
    }
    CHECK_MSG(bad == 0, "%zu mutations broke an invariant", bad);
    /* (random bytes and many extension contents are not checked, so some
     * mutants still parse) */
    CHECK(oks > 0);
}

static void test_grease(void)
{
    struct tlshello h;
    const char *alpn[] = {"\x0a\x0a", "h2", NULL};
    unsigned v[] = {0x7a7a, 0x0304, 0x0303, 0xfafa};
    ext.n = 0;
    ext_raw(&ext, 0x2a2a, 0, 0);
    ext_versions(&ext, v, 4);
    ext_alpn(&ext, alpn);
    ext_raw(&ext, 0xdada, 1, 0);
    hello_msg(&msg, &ext);
    CHECK(parse_built(16384, &h) == TLSHELLO_OK);
    CHECK_MSG(h.max_version == 0x0304, "max_version %04x", h.max_version);
    CHECK_MSG(strcmp(h.alpn, "\\x0a\\x0a,h2") == 0, "alpn %s", h.alpn);
    /* only GREASE: the legacy version stands */
    unsigned g[] = {0x1a1a, 0x4a4a};
    ext.n = 0;
    ext_versions(&ext, g, 2);
    hello_msg(&msg, &ext);
    CHECK(parse_built(16384, &h) == TLSHELLO_OK && h.max_version == 0x0303);
    /* 0x0a1a is not GREASE */
    unsigned ng[] = {0x0a1a, 0x0303};
    ext.n = 0;
    ext_versions(&ext, ng, 2);
    hello_msg(&msg, &ext);
    CHECK(parse_built(16384, &h) == TLSHELLO_OK && h.max_version == 0x0a1a);
}

static void test_names(void)
{
    struct tlshello h;
    static char name[1000];

    memset(name, 'a', 300);
    ext.n = 0;
    ext_sni(&ext, name, 300);
    hello_msg(&msg, &ext);
    CHECK(parse_built(16384, &h) == TLSHELLO_OK);
    CHECK_MSG(strlen(h.sni) == TLSHELLO_SNI_MAX && h.truncated, "len %zu", strlen(h.sni));

    ext.n = 0;
    ext_sni(&ext, name, TLSHELLO_SNI_MAX);
    hello_msg(&msg, &ext);
    CHECK(parse_built(16384, &h) == TLSHELLO_OK && strlen(h.sni) == TLSHELLO_SNI_MAX &&
          !h.truncated);

    /* an escape that does not fit is dropped whole */
    memcpy(name + TLSHELLO_SNI_MAX - 2, "\x01", 1);
    ext.n = 0;
    ext_sni(&ext, name, TLSHELLO_SNI_MAX - 1);
    hello_msg(&msg, &ext);
    CHECK(parse_built(5, &h) == TLSHELLO_OK);
    CHECK_MSG(strlen(h.sni) == TLSHELLO_SNI_MAX - 2 && h.truncated, "len %zu", strlen(h.sni));

    ext.n = 0;
    ext_sni(&ext, "a\x01\\b\xff.", 6);
    hello_msg(&msg, &ext);
    CHECK(parse_built(16384, &h) == TLSHELLO_OK);
    CHECK_MSG(strcmp(h.sni, "a\\x01\\x5cb\\xff.") == 0, "sni %s", h.sni);
    CHECK(!h.truncated);

    /* ALPN: a ',' in a name is escaped; many names are cut */
    const char *alpn[] = {"a,b", "spdy/3", NULL};
    ext.n = 0;
    ext_alpn(&ext, alpn);
    hello_msg(&msg, &ext);
    CHECK(parse_built(16384, &h) == TLSHELLO_OK);
    CHECK_MSG(strcmp(h.alpn, "a\\x2cb,spdy/3") == 0, "alpn %s", h.alpn);
    const char *many[101];
    for (int i = 0; i < 100; i++)
        many[i] = "http/1.1";
    many[100] = NULL;
    ext.n = 0;
    ext_alpn(&ext, many);
    hello_msg(&msg, &ext);
    CHECK(parse_built(16384, &h) == TLSHELLO_OK && h.truncated);
    CHECK_MSG(strlen(h.alpn) <= TLSHELLO_ALPN_MAX && strncmp(h.alpn, "http/1.1,http/1.1,", 18) == 0,
              "alpn %s", h.alpn);

    /* no extensions at all, an empty block, another name type first */
    hello_msg(&msg, NULL);
    CHECK(parse_built(16384, &h) == TLSHELLO_OK && h.sni[0] == '\0' && h.max_version == 0x0303);
    ext.n = 0;
    hello_msg(&msg, &ext);
    CHECK(parse_built(16384, &h) == TLSHELLO_OK && h.sni[0] == '\0');
    ext.n = 0;
    put16(&ext, 0);
    put16(&ext, 10);
    put16(&ext, 8);
    put8(&ext, 7);
    put16(&ext, 1);
    put8(&ext, 'x');
    put8(&ext, 0);
    put16(&ext, 1);
    put8(&ext, 'y');
    hello_msg(&msg, &ext);
    CHECK(parse_built(16384, &h) == TLSHELLO_OK && strcmp(h.sni, "y") == 0);
}

static void test_malformed_extensions(void)
{
    struct tlshello h;
    /* twice the same extension */
    ext.n = 0;
    ext_sni(&ext, "a", 1);
    ext_sni(&ext, "b", 1);
    hello_msg(&msg, &ext);
    CHECK(parse_built(16384, &h) == TLSHELLO_NOT_TLS);
    /* an empty server_name, an empty host_name, an empty ALPN name */
    ext.n = 0;
    ext_raw(&ext, 0, 0, 0);
    hello_msg(&msg, &ext);
    CHECK(parse_built(16384, &h) == TLSHELLO_NOT_TLS);
    ext.n = 0;
    ext_sni(&ext, "", 0);
    hello_msg(&msg, &ext);
    CHECK(parse_built(16384, &h) == TLSHELLO_NOT_TLS);
    const char *alpn[] = {"h2", "", NULL};
    ext.n = 0;
    ext_alpn(&ext, alpn);
    hello_msg(&msg, &ext);
    CHECK(parse_built(16384, &h) == TLSHELLO_NOT_TLS);
    /* an odd supported_versions list */
    ext.n = 0;
    put16(&ext, 43);
    put16(&ext, 4);
    put8(&ext, 3);
    put16(&ext, 0x0304);
    put8(&ext, 3);
    hello_msg(&msg, &ext);
    CHECK(parse_built(16384, &h) == TLSHELLO_NOT_TLS);
    /* an extension longer than the block, a block longer than the body */
    ext.n = 0;
    ext_raw(&ext, 21, 10, 0);
    ext.d[3] = 11;
    hello_msg(&msg, &ext);
    CHECK(parse_built(16384, &h) == TLSHELLO_NOT_TLS);
    ext.n = 0;
    ext_raw(&ext, 21, 10, 0);
    hello_msg(&msg, &ext);
    msg.n--; /* one byte short of the block */
    msg.d[3]--;
    CHECK(parse_built(16384, &h) == TLSHELLO_NOT_TLS);
    /* one stray byte where the extensions would start */
    hello_msg(&msg, NULL);
    msg.d[msg.n++] = 0;
    msg.d[3]++;
    CHECK(parse_built(16384, &h) == TLSHELLO_NOT_TLS);
}

/* A hello of 40 KB (padding) over three full records is fine; the same
 * message in 1-byte records would take more than 64 KiB. */
static void test_big(void)
{
    struct tlshello h;
    ext.n = 0;
    ext_sni(&ext, "big.example", 11);
    ext_raw(&ext, 21, 40000, 0);
    hello_msg(&msg, &ext);
    CHECK(parse_built(16384, &h) == TLSHELLO_OK && h.hello_len == rec.n &&
          strcmp(h.sni, "big.example") == 0);
    CHECK(parse_built(1, &h) == TLSHELLO_NOT_TLS);
    CHECK(tlshello_parse(rec.d, 65536 - 6, &h) == TLSHELLO_MORE);
    CHECK(tlshello_parse(rec.d, 65536 + 6, &h) == TLSHELLO_NOT_TLS);
    /* as large as the cap allows in the largest records */
    size_t body = 65536 - 4 * 5 - 4;
    ext.n = 0;
    ext_raw(&ext, 21, body - 49, 0);
    hello_msg(&msg, &ext);
    CHECK(msg.n == body + 4);
    CHECK(parse_built(16384, &h) == TLSHELLO_OK && rec.n == 65536);
    ext.n = 0;
    ext_raw(&ext, 21, body - 49 + 1, 0);
    hello_msg(&msg, &ext);
    CHECK(parse_built(16384, &h) == TLSHELLO_NOT_TLS);
}

static void test_version_names(void)
{
    char buf[8];
    CHECK(strcmp(tlshello_version_name(0x0300, buf), "SSLv3") == 0);
    CHECK(strcmp(tlshello_version_name(0x0301, buf), "TLSv1") == 0);
    CHECK(strcmp(tlshello_version_name(0x0302, buf), "TLSv1.1") == 0);
    CHECK(strcmp(tlshello_version_name(0x0303, buf), "TLSv1.2") == 0);
    CHECK(strcmp(tlshello_version_name(0x0304, buf), "TLSv1.3") == 0);
    CHECK(strcmp(tlshello_version_name(0x7f1c, buf), "0x7f1c") == 0);
    CHECK(strcmp(tlshello_version_name(0xfafa, buf), "0xfafa") == 0);
}

int main(void)
{
    test_captures();
    test_resplit();
    test_not_tls();
    test_mutations();
    test_grease();
    test_names();
    test_malformed_extensions();
    test_big();
    test_version_names();
    return check_done("test_tlshello");
}

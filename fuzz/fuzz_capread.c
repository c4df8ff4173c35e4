/* src/capread.c fed a capture two ways, chosen by the first byte:
 *
 *   bit 7 set:   the rest is a capture file: written to a temporary file
 *                and read through capread_file (libpcap parses the format,
 *                capread the packets);
 *   bit 7 clear: the low 3 bits pick a link type, the rest is a sequence of
 *                records, each 2 bytes of length (little-endian) and the
 *                bytes, fed to the reassembler directly.
 *
 * Whatever the input, the result must hold together: every message has
 * bytes, consecutive messages alternate direction, their times never go
 * backwards within a direction, and nothing exceeds the caps. */
#include <pcap/pcap.h>
#include <unistd.h>

#include "capread.h"
#include "fuzz.h"

static const int links[8] = {DLT_EN10MB, DLT_RAW, 101, DLT_LINUX_SLL, 276, DLT_NULL, DLT_LOOP,
                             DLT_IPV6};

static void check(const struct capread_result *r)
{
    size_t total = 0;
    FUZZ_CHECK(r->skipped <= r->packets, "%llu skipped of %llu", (unsigned long long)r->skipped,
               (unsigned long long)r->packets);
    FUZZ_CHECK(r->nconvs <= CAPREAD_MAX_CONVS, "%zu conversations", r->nconvs);
    for (size_t i = 0; i < r->nconvs; i++) {
        const struct capread_conv *c = &r->convs[i];
        for (size_t k = 0; k < c->nmsgs; k++) {
            const struct capread_msg *m = &c->msgs[k];
            FUZZ_CHECK(m->len > 0 && m->data, "empty message %zu", k);
            FUZZ_CHECK(m->from == CAPREAD_CLIENT || m->from == CAPREAD_SERVER, "from %d", m->from);
            if (k)
                FUZZ_CHECK(m->from != c->msgs[k - 1].from, "message %zu same direction", k);
            total += m->len;
        }
    }
    FUZZ_CHECK(total <= CAPREAD_MAX_BYTES, "%zu bytes", total);
}

static void from_file(const uint8_t *data, size_t size)
{
    char path[] = "/tmp/fuzz_capread.XXXXXX";
    int fd = mkstemp(path);
    FUZZ_CHECK(fd >= 0, "mkstemp");
    FUZZ_CHECK(write(fd, data, size) == (ssize_t)size, "write");
    close(fd);
    struct capread_result r;
    char err[ECHOKIT_ERR_LEN];
    if (capread_file(path, &r, err) == 0) {
        FUZZ_CHECK(r.nconvs > 0, "success without a conversation");
        check(&r);
    } else {
        FUZZ_CHECK(err[0] && r.nconvs == 0, "error without a message");
    }
    capread_free(&r);
    unlink(path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!size)
        return 0;
    if (data[0] & 0x80) {
        from_file(data + 1, size - 1);
        return 0;
    }
    int dlt = links[data[0] & 7];
    struct capread *cr = capread_new();
    FUZZ_CHECK(cr, "capread_new");
    if (data[0] & 0x40) /* a small memory cap: its paths, reached in a few packets */
        capread_limit(cr, 512 + (size_t)(data[0] & 0x38) * 64);
    size_t i = 1;
    double t = 0;
    while (i + 2 <= size) {
        size_t n = (size_t)(data[i] | data[i + 1] << 8);
        i += 2;
        if (n > size - i)
            n = size - i;
        capread_packet(cr, dlt, data + i, n, n, t += 0.001);
        i += n;
    }
    struct capread_result r = {0};
    capread_finish(cr, &r);
    check(&r);
    capread_free(&r);
    return 0;
}

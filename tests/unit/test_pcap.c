/* pcap_udp_datagram() read back by a reader written here from RFC 768/791/8200:
 * every record's lengths agree (pcap, IP, UDP), the IPv4 header checksum and
 * the UDP checksum verify by a summation independent of pcap.c's, payloads
 * and ports come back as sent; the largest datagrams of each family (65,507
 * and 65,527 bytes) fit one packet and one byte more is refused without
 * harming the file; a datagram whose checksum computes to 0 is written with
 * 0xffff (RFC 768), and a mix of families is written as IPv6. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "inetsum.h"
#include "pcap.h"

struct rec {
    int v6;
    uint8_t src[16], dst[16];
    uint16_t sport, dport, csum;
    const uint8_t *payload;
    size_t len;
};

static uint8_t *file;
static size_t file_len, file_off;

static void load(const char *path)
{
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL);
    free(file);
    file = malloc(1 << 20);
    file_len = fread(file, 1, 1 << 20, f);
    fclose(f);
    CHECK(file_len >= 24);
    uint32_t magic, snaplen, linktype;
    memcpy(&magic, file, 4);
    memcpy(&snaplen, file + 16, 4);
    memcpy(&linktype, file + 20, 4);
    CHECK(magic == 0xa1b2c3d4);
    CHECK(linktype == 101);
    CHECK(snaplen >= 40 + 8 + 65527);
    file_off = 24;
}

/* The next record, checked; 0 at the end of the file. */
static int next(struct rec *r)
{
    if (file_off == file_len)
        return 0;
    CHECK_MSG(file_len - file_off >= 16, "record header at %zu", file_off);
    uint32_t h[4];
    memcpy(h, file + file_off, 16);
    CHECK(h[2] == h[3]);
    CHECK_MSG(h[2] <= file_len - file_off - 16, "record at %zu runs past the end", file_off);
    const uint8_t *ip = file + file_off + 16, *udp;
    size_t pktlen = h[2], udplen;
    memset(r, 0, sizeof *r);
    if (ip[0] >> 4 == 4) {
        CHECK(ip[0] == 0x45);
        CHECK_MSG(get16(ip + 2) == pktlen, "IPv4 total length %u, record %zu", get16(ip + 2),
                  pktlen);
        CHECK_MSG(sums_right(sum_bytes(0, ip, 20)), "IPv4 header checksum");
        CHECK(get16(ip + 6) == 0x4000); /* DF, not a fragment */
        CHECK(ip[9] == IPPROTO_UDP);
        memcpy(r->src, ip + 12, 4);
        memcpy(r->dst, ip + 16, 4);
        udp = ip + 20;
        udplen = pktlen - 20;
    } else {
        CHECK(ip[0] >> 4 == 6);
        r->v6 = 1;
        CHECK(get16(ip + 4) == pktlen - 40);
        CHECK(ip[6] == IPPROTO_UDP);
        memcpy(r->src, ip + 8, 16);
        memcpy(r->dst, ip + 24, 16);
        udp = ip + 40;
        udplen = pktlen - 40;
    }
    CHECK(udplen >= 8);
    CHECK_MSG(get16(udp + 4) == udplen, "UDP length %u, %zu in the packet", get16(udp + 4),
              udplen);
    r->sport = get16(udp);
    r->dport = get16(udp + 2);
    r->csum = get16(udp + 6);
    CHECK_MSG(r->csum != 0, "UDP checksum left out");
    uint64_t ph = pseudo_sum(r->v6, r->src, r->dst, IPPROTO_UDP, udplen);
    CHECK_MSG(sums_right(sum_bytes(ph, udp, udplen)), "UDP checksum of the record at %zu", file_off);
    r->payload = udp + 8;
    r->len = udplen - 8;
    file_off += 16 + pktlen;
    return 1;
}

static void endpoint(struct pcap_endpoint *ep, const char *host, uint16_t port)
{
    CHECK(pcap_endpoint_parse(ep, host, port) == 0);
}

int main(void)
{
    char path[] = "/tmp/echokit-test-pcap-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    close(fd);
    char err[ECHOKIT_ERR_LEN];
    struct pcap_file f;
    CHECK(pcap_file_open(&f, path, err) == 0);

    static uint8_t big[PCAP_UDP_MAX6 + 1];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (uint8_t)(i * 31 + i / 257);

    struct pcap_endpoint c4, s4, c6, s6;
    endpoint(&c4, "192.0.2.7", 53000);
    endpoint(&s4, "198.51.100.1", 53);
    endpoint(&c6, "2001:db8::7", 40001);
    endpoint(&s6, "::1", 5353);
    struct pcap_udp u4, u6, mix;
    pcap_udp_open(&u4, &c4, &s4);
    pcap_udp_open(&u6, &c6, &s6);
    pcap_udp_open(&mix, &c4, &s6);

    /* 1..6: small, odd-length, empty, both directions, both families */
    CHECK(pcap_udp_datagram(&f, &u4, PCAP_CLIENT, "query", 5) == 0);
    CHECK(pcap_udp_datagram(&f, &u4, PCAP_SERVER, "answer!", 7) == 0);
    CHECK(pcap_udp_datagram(&f, &u4, PCAP_CLIENT, "", 0) == 0);
    CHECK(pcap_udp_datagram(&f, &u6, PCAP_CLIENT, "v6 query", 8) == 0);
    CHECK(pcap_udp_datagram(&f, &u6, PCAP_SERVER, "x", 1) == 0);
    CHECK(pcap_udp_datagram(&f, &mix, PCAP_CLIENT, "mixed", 5) == 0);
    /* 7, 8: the largest of each family; one more byte is refused, and the
     * file goes on */
    CHECK(pcap_udp_datagram(&f, &u4, PCAP_CLIENT, big, PCAP_UDP_MAX4) == 0);
    CHECK(pcap_udp_datagram(&f, &u4, PCAP_CLIENT, big, PCAP_UDP_MAX4 + 1) == PCAP_TOO_BIG);
    CHECK(pcap_udp_datagram(&f, &u6, PCAP_SERVER, big, PCAP_UDP_MAX6) == 0);
    CHECK(pcap_udp_datagram(&f, &u6, PCAP_SERVER, big, PCAP_UDP_MAX6 + 1) == PCAP_TOO_BIG);
    CHECK(pcap_udp_max(AF_INET) == 65507 && pcap_udp_max(AF_INET6) == 65527);
    CHECK(f.err == 0);

    /* 9: a payload whose checksum computes to 0. The last two bytes are
     * chosen so the whole sum folds to 0xffff; the writer must send 0xffff. */
    uint8_t zero[10] = {'c', 'h', 'e', 'c', 'k', 's', 'u', 'm', 0, 0};
    uint8_t hdr[8] = {53000 >> 8, 53000 & 0xff, 0, 53, 0, 18, 0, 0};
    uint64_t ph = sum_bytes(pseudo_sum(0, c4.addr, s4.addr, IPPROTO_UDP, 18), hdr, 8);
    uint16_t s = fold(sum_bytes(ph, zero, 10));
    uint16_t w = (uint16_t)~s;
    zero[8] = (uint8_t)(w >> 8);
    zero[9] = (uint8_t)w;
    CHECK(sums_right(sum_bytes(ph, zero, 10)));
    CHECK(pcap_udp_datagram(&f, &u4, PCAP_CLIENT, zero, sizeof zero) == 0);

    CHECK(u4.datagrams[PCAP_CLIENT] == 4 && u4.datagrams[PCAP_SERVER] == 1);
    CHECK(u4.bytes[PCAP_CLIENT] == 5 + PCAP_UDP_MAX4 + sizeof zero);
    CHECK(u6.bytes[PCAP_SERVER] == 1 + PCAP_UDP_MAX6);
    uint64_t records = f.records;
    CHECK(records == 9);
    CHECK(pcap_file_close(&f) == 0);

    load(path);
    struct rec r;
    const struct {
        int v6;
        uint16_t sport, dport;
        const void *data;
        size_t len;
    } want[] = {
        {0, 53000, 53, "query", 5},       {0, 53, 53000, "answer!", 7},
        {0, 53000, 53, "", 0},            {1, 40001, 5353, "v6 query", 8},
        {1, 5353, 40001, "x", 1},         {1, 53000, 5353, "mixed", 5},
        {0, 53000, 53, big, PCAP_UDP_MAX4}, {1, 5353, 40001, big, PCAP_UDP_MAX6},
        {0, 53000, 53, zero, sizeof zero},
    };
    size_t n = 0;
    while (next(&r)) {
        if (n < sizeof want / sizeof want[0]) {
            CHECK_MSG(r.v6 == want[n].v6 && r.sport == want[n].sport &&
                          r.dport == want[n].dport,
                      "record %zu: v6 %d ports %u -> %u", n, r.v6, r.sport, r.dport);
            CHECK_MSG(r.len == want[n].len && memcmp(r.payload, want[n].data, r.len) == 0,
                      "record %zu: payload of %zu bytes", n, r.len);
        }
        if (n == 5) { /* the IPv4 client as ::ffff:192.0.2.7 */
            static const uint8_t mapped[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff,
                                               192, 0, 2, 7};
            CHECK(memcmp(r.src, mapped, 16) == 0);
        }
        if (n == 8)
            CHECK_MSG(r.csum == 0xffff, "checksum that computes to 0 written as 0x%04x", r.csum);
        n++;
    }
    CHECK_MSG(n == records, "%zu records read, %llu written", n, (unsigned long long)records);

    /* A closed file takes nothing and says so. */
    CHECK(pcap_udp_datagram(&f, &u4, PCAP_CLIENT, "late", 4) == -1);
    unlink(path);
    free(file);
    return check_done("test_pcap");
}

/* src/pcap.c fed random conversations. The input is a sequence of
 * operations on up to four streams of one file:
 *
 *   op byte: low 3 bits the operation, bits 3-4 the stream, bit 5 the side
 *     0 open   then 1 byte of families/address seed and 4 bytes of ISN seed
 *     1 data   then 2 bytes of length (little-endian, up to 8 KiB, or 65,535
 *              when bit 6 is set, from a fixed pattern at an offset bit 7
 *              picks) and the payload, taken from the input unless bit 6
 *     2 fin    3 rst    4 flush
 *     5 datagram on UDP stream 0-3 (bits 3-4; opened on first use) then
 *              1 byte of families/address seed and 2 bytes of length (up to
 *              1 KiB from the input, or from the fixed pattern up to 65,535
 *              when bit 6 is set, so that some are over the family's limit)
 *     others: nothing
 *
 * The file is then read back by a small reader written here from the pcap and
 * TCP/UDP/IP formats: every record's lengths agree with each other and with
 * the IP header, checksums verify, segments stay within the MSS, sequence and
 * acknowledgement numbers follow on, nothing follows a RST, and each side's
 * payload, reassembled in order, is exactly the bytes the harness sent; each
 * UDP side's datagrams come back one a packet, in order, with their sizes,
 * and those over the family's limit were refused and left no record. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <unistd.h>

#include "fuzz.h"
#include "inetsum.h"
#include "pcap.h"

#define NSTREAMS 4

struct expect {
    int open, rst, fin[2];
    struct pcap_endpoint ep[2]; /* as written: mapped to IPv6 when mixed */
    uint8_t *sent[2];           /* bytes accepted by pcap_stream_data */
    size_t nsent[2], cap[2];
    /* reader state */
    int seen_syn[2];
    uint32_t next[2];
    uint8_t *got[2];
    size_t ngot[2], gotcap[2];
    int got_rst, got_fin[2];
};

/* A UDP stream: what was sent and what was read back, as the datagrams'
 * concatenated bytes and their lengths. */
struct uexpect {
    int open;
    struct pcap_udp u;
    uint8_t *sent[2], *got[2];
    size_t nsent[2], cap[2], ngot[2], gotcap[2];
    size_t *lens[2], nlens[2], lenscap[2], nread[2];
};

static char path[64];
static uint8_t big[70000 + 256]; /* also > 65,535 + 255 for datagrams */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(path, sizeof path, "%s/echokit-fuzz-pcap-XXXXXX", dir);
    int fd = mkstemp(path);
    FUZZ_CHECK(fd >= 0, "mkstemp %s", path);
    close(fd);
    for (size_t k = 0; k < sizeof big; k++)
        big[k] = (uint8_t)(k * 7 + k / 251);
    return 0;
}

static void append(uint8_t **buf, size_t *len, size_t *cap, const uint8_t *p, size_t n)
{
    if (n == 0)
        return;
    if (*len + n > *cap) {
        *cap = (*len + n) * 2;
        *buf = realloc(*buf, *cap);
        FUZZ_CHECK(*buf, "realloc");
    }
    memcpy(*buf + *len, p, n);
    *len += n;
}

static void make_endpoint(struct pcap_endpoint *ep, uint8_t seed, int v6, uint16_t port)
{
    char text[INET6_ADDRSTRLEN];
    uint8_t addr[16];
    for (int i = 0; i < 16; i++)
        addr[i] = (uint8_t)(seed * (i + 7) + i);
    inet_ntop(v6 ? AF_INET6 : AF_INET, addr, text, sizeof text);
    FUZZ_CHECK(pcap_endpoint_parse(ep, text, port) == 0, "pcap_endpoint_parse(%s)", text);
    FUZZ_CHECK(ep->family == (v6 ? AF_INET6 : AF_INET), "family of %s", text);
}

/* Reads the file back; see the top of the file for what is checked. */
static void append_len(struct uexpect *e, int side, size_t n)
{
    if (e->nlens[side] == e->lenscap[side]) {
        e->lenscap[side] = e->lenscap[side] ? e->lenscap[side] * 2 : 16;
        e->lens[side] = realloc(e->lens[side], e->lenscap[side] * sizeof(size_t));
        FUZZ_CHECK(e->lens[side], "realloc");
    }
    e->lens[side][e->nlens[side]++] = n;
}

/* One UDP packet of the file: checked and matched to its stream and side. */
static void check_udp(struct uexpect *ux, int v6, const uint8_t *src, const uint8_t *dst,
                      const uint8_t *udp, size_t udplen)
{
    FUZZ_CHECK(udplen >= 8, "UDP datagram of %zu", udplen);
    FUZZ_CHECK(get16(udp + 4) == udplen, "UDP length %u, %zu in the packet", get16(udp + 4),
               udplen);
    FUZZ_CHECK(get16(udp + 6) != 0, "UDP checksum left out");
    FUZZ_CHECK(sums_right(sum_bytes(pseudo_sum(v6, src, dst, IPPROTO_UDP, udplen), udp, udplen)),
               "UDP checksum");
    uint16_t sport = get16(udp), dport = get16(udp + 2);
    int si = -1, side = -1;
    for (int i = 0; i < NSTREAMS; i++)
        for (int d = 0; d < 2; d++)
            if (ux[i].open && ux[i].u.ep[d].port == sport && ux[i].u.ep[!d].port == dport)
                si = i, side = d;
    FUZZ_CHECK(si >= 0, "datagram %u -> %u of no UDP stream", sport, dport);
    struct uexpect *e = &ux[si];
    FUZZ_CHECK(v6 == (e->u.ep[side].family == AF_INET6), "family of UDP stream %d", si);
    FUZZ_CHECK(memcmp(src, e->u.ep[side].addr, v6 ? 16 : 4) == 0 &&
                   memcmp(dst, e->u.ep[!side].addr, v6 ? 16 : 4) == 0,
               "addresses of UDP stream %d", si);
    size_t k = e->nread[side]++;
    FUZZ_CHECK(k < e->nlens[side] && e->lens[side][k] == udplen - 8,
               "UDP stream %d side %d: datagram %zu of %zu bytes", si, side, k, udplen - 8);
    append(&e->got[side], &e->ngot[side], &e->gotcap[side], udp + 8, udplen - 8);
}

static void check_file(struct expect *ex, struct uexpect *ux, uint64_t records)
{
    FILE *f = fopen(path, "rb");
    FUZZ_CHECK(f, "reopen %s", path);
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    uint8_t chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        append(&buf, &len, &cap, chunk, n);
    fclose(f);

    FUZZ_CHECK(len >= 24, "file of %zu bytes", len);
    uint32_t magic, snaplen, linktype;
    uint16_t major, minor;
    memcpy(&magic, buf, 4);
    memcpy(&major, buf + 4, 2);
    memcpy(&minor, buf + 6, 2);
    memcpy(&snaplen, buf + 16, 4);
    memcpy(&linktype, buf + 20, 4);
    FUZZ_CHECK(magic == 0xa1b2c3d4 && major == 2 && minor == 4, "file header");
    FUZZ_CHECK(linktype == PCAP_LINKTYPE_RAW, "linktype %u", linktype);

    uint64_t nrec = 0;
    size_t off = 24;
    while (off < len) {
        FUZZ_CHECK(len - off >= 16, "truncated record header at %zu", off);
        uint32_t rec[4];
        memcpy(rec, buf + off, 16);
        FUZZ_CHECK(rec[1] < 1000000, "microseconds %u", rec[1]);
        FUZZ_CHECK(rec[2] == rec[3], "incl_len %u != orig_len %u", rec[2], rec[3]);
        FUZZ_CHECK(rec[2] <= snaplen, "record of %u > snaplen", rec[2]);
        FUZZ_CHECK(rec[2] <= len - off - 16, "record at %zu runs past the end", off);
        const uint8_t *ip = buf + off + 16;
        size_t pktlen = rec[2], iplen;
        uint8_t src[16], dst[16];
        int v6, proto;
        FUZZ_CHECK(pktlen >= 28, "packet of %zu", pktlen);
        if (ip[0] >> 4 == 4) {
            v6 = 0;
            FUZZ_CHECK(ip[0] == 0x45, "IHL");
            iplen = 20;
            FUZZ_CHECK(get16(ip + 2) == pktlen, "IPv4 total length %u, record %zu", get16(ip + 2),
                       pktlen);
            FUZZ_CHECK(sums_right(sum_bytes(0, ip, 20)), "IPv4 header checksum");
            proto = ip[9];
            memcpy(src, ip + 12, 4);
            memcpy(dst, ip + 16, 4);
        } else {
            FUZZ_CHECK(ip[0] >> 4 == 6, "IP version %d", ip[0] >> 4);
            v6 = 1;
            iplen = 40;
            FUZZ_CHECK(pktlen >= 48, "IPv6 packet of %zu", pktlen);
            FUZZ_CHECK(get16(ip + 4) == pktlen - 40, "IPv6 payload length");
            proto = ip[6];
            memcpy(src, ip + 8, 16);
            memcpy(dst, ip + 24, 16);
        }
        if (proto == IPPROTO_UDP) {
            check_udp(ux, v6, src, dst, ip + iplen, pktlen - iplen);
            off += 16 + pktlen;
            nrec++;
            continue;
        }
        FUZZ_CHECK(proto == IPPROTO_TCP, "protocol %d", proto);
        const uint8_t *tcp = ip + iplen;
        size_t tcplen = pktlen - iplen;
        FUZZ_CHECK(tcplen >= 20, "TCP segment of %zu", tcplen);
        size_t doff = (size_t)(tcp[12] >> 4) * 4;
        FUZZ_CHECK(doff >= 20 && doff <= tcplen, "data offset %zu of %zu", doff, tcplen);
        FUZZ_CHECK(sums_right(sum_bytes(pseudo_sum(v6, src, dst, IPPROTO_TCP, tcplen), tcp, tcplen)),
                   "TCP checksum of record %llu", (unsigned long long)nrec);

        /* Which stream and side: ports are unique per stream. */
        uint16_t sport = get16(tcp), dport = get16(tcp + 2);
        int si = -1, side = -1;
        for (int i = 0; i < NSTREAMS; i++)
            for (int d = 0; d < 2; d++)
                if (ex[i].open && ex[i].ep[d].port == sport && ex[i].ep[!d].port == dport)
                    si = i, side = d;
        FUZZ_CHECK(si >= 0, "segment %u -> %u of no stream", sport, dport);
        struct expect *e = &ex[si];
        FUZZ_CHECK(v6 == (e->ep[side].family == AF_INET6), "family of stream %d", si);
        FUZZ_CHECK(memcmp(src, e->ep[side].addr, v6 ? 16 : 4) == 0 &&
                       memcmp(dst, e->ep[!side].addr, v6 ? 16 : 4) == 0,
                   "addresses of stream %d", si);
        FUZZ_CHECK(!e->got_rst, "segment after the RST in stream %d", si);

        uint8_t flags = tcp[13];
        uint32_t seq = get32(tcp + 4), ack = get32(tcp + 8);
        size_t paylen = tcplen - doff;
        if (flags & 0x02) { /* SYN */
            FUZZ_CHECK(!e->seen_syn[side] && paylen == 0, "second SYN or SYN with data");
            e->seen_syn[side] = 1;
            e->next[side] = seq + 1;
            if (side == PCAP_SERVER)
                FUZZ_CHECK((flags & 0x10) && ack == e->next[PCAP_CLIENT], "SYN-ACK's ack");
            off += 16 + pktlen;
            nrec++;
            continue;
        }
        FUZZ_CHECK(e->seen_syn[0] && e->seen_syn[1], "segment before the handshake");
        FUZZ_CHECK(flags & 0x10, "segment without ACK");
        FUZZ_CHECK(seq == e->next[side], "stream %d side %d: seq %u, expected %u", si, side, seq,
                   e->next[side]);
        FUZZ_CHECK(ack == e->next[!side], "stream %d side %d: ack %u, expected %u", si, side, ack,
                   e->next[!side]);
        size_t mss = v6 ? 1440 : 1460;
        FUZZ_CHECK(paylen <= mss, "segment of %zu > MSS %zu", paylen, mss);
        if (paylen) {
            FUZZ_CHECK(!e->got_fin[side], "data after FIN");
            append(&e->got[side], &e->ngot[side], &e->gotcap[side], tcp + doff, paylen);
            e->next[side] += (uint32_t)paylen;
        }
        if (flags & 0x01) { /* FIN */
            FUZZ_CHECK(!e->got_fin[side], "second FIN");
            e->got_fin[side] = 1;
            e->next[side]++;
        }
        if (flags & 0x04)
            e->got_rst = 1;
        off += 16 + pktlen;
        nrec++;
    }
    FUZZ_CHECK(nrec == records, "%llu records read, %llu written", (unsigned long long)nrec,
               (unsigned long long)records);
    for (int i = 0; i < NSTREAMS; i++) {
        struct expect *e = &ex[i];
        if (!e->open)
            continue;
        FUZZ_CHECK(e->got_rst == e->rst, "stream %d RST", i);
        for (int d = 0; d < 2; d++) {
            FUZZ_CHECK(e->got_fin[d] == e->fin[d], "stream %d side %d FIN", i, d);
            FUZZ_CHECK(e->ngot[d] == e->nsent[d] &&
                           (e->nsent[d] == 0 || memcmp(e->got[d], e->sent[d], e->nsent[d]) == 0),
                       "stream %d side %d: %zu bytes read back, %zu sent", i, d, e->ngot[d],
                       e->nsent[d]);
        }
    }
    for (int i = 0; i < NSTREAMS; i++) {
        struct uexpect *e = &ux[i];
        for (int d = 0; d < 2; d++) {
            FUZZ_CHECK(e->nread[d] == e->nlens[d], "UDP stream %d side %d: %zu datagrams read, %zu sent",
                       i, d, e->nread[d], e->nlens[d]);
            FUZZ_CHECK(e->ngot[d] == e->nsent[d] &&
                           (e->nsent[d] == 0 || memcmp(e->got[d], e->sent[d], e->nsent[d]) == 0),
                       "UDP stream %d side %d: bytes read back", i, d);
        }
    }
    free(buf);
}

/* The bytes of a data or datagram operation, n of them: with bit 6 of op
 * from the fixed pattern (at an offset bit 7 picks), otherwise up to
 * max_input - 1 taken from the input at *i, which moves past them. */
static const uint8_t *payload(uint8_t op, const uint8_t *data, size_t size, size_t *i, size_t *n,
                              size_t max_input)
{
    if (op & 0x40)
        return big + (op & 0x80 ? 255 : 0);
    *n %= max_input;
    if (*n > size - *i)
        *n = size - *i;
    const uint8_t *p = data + *i;
    *i += *n;
    return p;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 16384)
        return 0;
    struct pcap_file f;
    char err[ECHOKIT_ERR_LEN];
    FUZZ_CHECK(pcap_file_open(&f, path, err) == 0, "%s", err);
    struct pcap_stream st[NSTREAMS];
    struct expect ex[NSTREAMS];
    struct uexpect ux[NSTREAMS];
    memset(ex, 0, sizeof ex);
    memset(ux, 0, sizeof ux);

    size_t i = 0, total = 0;
    while (i < size) {
        uint8_t op = data[i++];
        int si = (op >> 3) & 3, side = (op >> 5) & 1;
        struct expect *e = &ex[si];
        switch (op & 7) {
        case 0: {
            if (e->open || size - i < 5)
                break;
            uint8_t fam = data[i];
            uint32_t seed;
            memcpy(&seed, data + i + 1, 4);
            i += 5;
            struct pcap_endpoint c, s;
            make_endpoint(&c, (uint8_t)(fam | 1), fam & 1, (uint16_t)(40000 + si));
            make_endpoint(&s, (uint8_t)(fam & 0xfe), (fam >> 1) & 1, (uint16_t)(7000 + si));
            FUZZ_CHECK(pcap_stream_open(&f, &st[si], &c, &s, seed) == 0, "open");
            e->open = 1;
            e->ep[0] = c;
            e->ep[1] = s;
            if (c.family != s.family) {
                pcap_endpoint_map_v6(&e->ep[0]);
                pcap_endpoint_map_v6(&e->ep[1]);
            }
            break;
        }
        case 1: {
            if (size - i < 2)
                break;
            size_t n = (size_t)(data[i] | data[i + 1] << 8);
            i += 2;
            const uint8_t *p = payload(op, data, size, &i, &n, 8192);
            /* bounded, but past the 256 KiB buffer so that it fills up */
            if (!e->open || (total += n) > 400000)
                break;
            FUZZ_CHECK(pcap_stream_data(&f, &st[si], side, p, n) == 0, "data");
            if (!e->rst && !e->fin[side])
                append(&e->sent[side], &e->nsent[side], &e->cap[side], p, n);
            break;
        }
        case 2:
            if (!e->open)
                break;
            FUZZ_CHECK(pcap_stream_fin(&f, &st[si], side) == 0, "fin");
            if (!e->rst)
                e->fin[side] = 1;
            break;
        case 3:
            if (!e->open)
                break;
            FUZZ_CHECK(pcap_stream_rst(&f, &st[si], side) == 0, "rst");
            e->rst = 1;
            break;
        case 4:
            FUZZ_CHECK(pcap_file_flush(&f) == 0, "flush");
            break;
        case 5: {
            if (size - i < 3)
                break;
            struct uexpect *u = &ux[si];
            uint8_t fam = data[i];
            size_t n = (size_t)(data[i + 1] | data[i + 2] << 8);
            i += 3;
            if (!u->open) {
                struct pcap_endpoint c, s;
                make_endpoint(&c, (uint8_t)(fam | 1), fam & 1, (uint16_t)(50000 + si));
                make_endpoint(&s, (uint8_t)(fam & 0xfe), (fam >> 1) & 1, (uint16_t)(9000 + si));
                pcap_udp_open(&u->u, &c, &s);
                u->open = 1;
            }
            const uint8_t *p = payload(op, data, size, &i, &n, 1024);
            if ((total += n) > 400000)
                break;
            int r = pcap_udp_datagram(&f, &u->u, side, p, n);
            if (n > pcap_udp_max(u->u.ep[side].family)) {
                FUZZ_CHECK(r == PCAP_TOO_BIG, "datagram of %zu: %d", n, r);
                break;
            }
            FUZZ_CHECK(r == 0, "datagram of %zu", n);
            append(&u->sent[side], &u->nsent[side], &u->cap[side], p, n);
            append_len(u, side, n);
            break;
        }
        default:
            break;
        }
    }
    for (int k = 0; k < NSTREAMS; k++)
        if (ex[k].open)
            for (int d = 0; d < 2; d++)
                FUZZ_CHECK(st[k].bytes[d] == ex[k].nsent[d], "byte count of stream %d side %d", k,
                           d);
    uint64_t records = f.records;
    FUZZ_CHECK(pcap_file_close(&f) == 0, "close");
    check_file(ex, ux, records);
    for (int k = 0; k < NSTREAMS; k++)
        for (int d = 0; d < 2; d++) {
            FUZZ_CHECK(!ux[k].open || ux[k].u.bytes[d] == ux[k].nsent[d],
                       "byte count of UDP stream %d side %d", k, d);
            free(ex[k].sent[d]);
            free(ex[k].got[d]);
            free(ux[k].sent[d]);
            free(ux[k].got[d]);
            free(ux[k].lens[d]);
        }
    return 0;
}

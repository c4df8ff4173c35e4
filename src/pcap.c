/* Classic pcap writer for synthetic TCP conversations and UDP datagrams;
 * see pcap.h. The
 * format is libpcap's 2.4 file layout (a 24-byte file header, then a 16-byte
 * header per record) in host byte order, which readers detect from the magic.
 * Packet headers are in network order as on the wire. */
#include "pcap.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PCAP_BUF (256 * 1024)
/* tcpdump's default: an IPv6 packet carrying the largest UDP datagram is
 * 65,575 bytes, over the 65,535 an IPv4 packet can be. */
#define SNAPLEN 262144
#define WSCALE 7 /* window 65535 << 7: ~8 MiB, more than one chunk in flight */

enum { F_FIN = 0x01, F_SYN = 0x02, F_RST = 0x04, F_PSH = 0x08, F_ACK = 0x10 };

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* One's-complement sum of LEN bytes (RFC 1071), folded later. */
static uint32_t csum_add(uint32_t sum, const uint8_t *p, size_t len)
{
    for (; len > 1; p += 2, len -= 2)
        sum += (uint32_t)(p[0] << 8 | p[1]);
    if (len)
        sum += (uint32_t)(p[0] << 8);
    return sum;
}

static uint16_t csum_fold(uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

static int write_all(int fd, const char *p, size_t len)
{
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int pcap_file_flush(struct pcap_file *f)
{
    if (f->err)
        return -1;
    if (f->len && f->fd >= 0 && write_all(f->fd, f->buf, f->len) < 0) {
        f->err = errno ? errno : EIO;
        f->len = 0;
        return -1;
    }
    f->len = 0;
    return 0;
}

int pcap_file_open(struct pcap_file *f, const char *path, char err[ECHOKIT_ERR_LEN])
{
    memset(f, 0, sizeof *f);
    f->fd = -1;
    f->buf = malloc(PCAP_BUF);
    if (!f->buf) {
        snprintf(err, ECHOKIT_ERR_LEN, "pcap: out of memory");
        return -1;
    }
    f->cap = PCAP_BUF;
    f->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (f->fd < 0) {
        snprintf(err, ECHOKIT_ERR_LEN, "pcap: cannot create '%s': %s", path, strerror(errno));
        free(f->buf);
        f->buf = NULL;
        return -1;
    }
    uint32_t magic = 0xa1b2c3d4, zone = 0, sigfigs = 0, snaplen = SNAPLEN,
             linktype = PCAP_LINKTYPE_RAW;
    uint16_t major = 2, minor = 4;
    char *p = f->buf;
    memcpy(p, &magic, 4);
    memcpy(p + 4, &major, 2);
    memcpy(p + 6, &minor, 2);
    memcpy(p + 8, &zone, 4);
    memcpy(p + 12, &sigfigs, 4);
    memcpy(p + 16, &snaplen, 4);
    memcpy(p + 20, &linktype, 4);
    f->len = 24;
    if (pcap_file_flush(f) < 0) {
        snprintf(err, ECHOKIT_ERR_LEN, "pcap: cannot write '%s': %s", path, strerror(f->err));
        pcap_file_close(f);
        return -1;
    }
    return 0;
}

int pcap_file_close(struct pcap_file *f)
{
    int r = 0;
    if (f->fd >= 0) {
        r = pcap_file_flush(f);
        close(f->fd);
        f->fd = -1;
    }
    free(f->buf);
    f->buf = NULL;
    f->len = f->cap = 0;
    return r;
}

int pcap_endpoint_parse(struct pcap_endpoint *ep, const char *host, uint16_t port)
{
    memset(ep, 0, sizeof *ep);
    ep->port = port;
    if (inet_pton(AF_INET, host, ep->addr) == 1) {
        ep->family = AF_INET;
        return 0;
    }
    if (inet_pton(AF_INET6, host, ep->addr) == 1) {
        ep->family = AF_INET6;
        return 0;
    }
    return -1;
}

void pcap_endpoint_map_v6(struct pcap_endpoint *ep)
{
    if (ep->family != AF_INET)
        return;
    uint8_t v4[4];
    memcpy(v4, ep->addr, 4);
    memset(ep->addr, 0, 16);
    ep->addr[10] = ep->addr[11] = 0xff;
    memcpy(ep->addr + 12, v4, 4);
    ep->family = AF_INET6;
}

/* Room for a record of PKTLEN bytes at the end of the buffer, its 16-byte
 * record header filled with the time of the call; NULL when the file has
 * failed or is closed. */
static uint8_t *record_start(struct pcap_file *f, size_t pktlen)
{
    if (f->err || f->fd < 0)
        return NULL;
    if (f->cap - f->len < 16 + pktlen && pcap_file_flush(f) < 0)
        return NULL;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint32_t rec[4] = {(uint32_t)ts.tv_sec, (uint32_t)(ts.tv_nsec / 1000), (uint32_t)pktlen,
                       (uint32_t)pktlen};
    uint8_t *p = (uint8_t *)f->buf + f->len;
    memcpy(p, rec, sizeof rec);
    return p + sizeof rec;
}

static void record_end(struct pcap_file *f, size_t pktlen)
{
    f->len += 16 + pktlen;
    f->records++;
}

/* The IP header from SRC to DST in front of an L4LEN-byte PROTO payload;
 * returns its length (20 or 40). IPv4 gets an identification, DF, TTL 64
 * and its header checksum. */
static size_t ip_header(struct pcap_file *f, uint8_t *ip, const struct pcap_endpoint *src,
                        const struct pcap_endpoint *dst, uint8_t proto, size_t l4len)
{
    if (src->family == AF_INET6) {
        memset(ip, 0, 40);
        ip[0] = 0x60;
        put16(ip + 4, (uint16_t)l4len);
        ip[6] = proto;
        ip[7] = 64;
        memcpy(ip + 8, src->addr, 16);
        memcpy(ip + 24, dst->addr, 16);
        return 40;
    }
    memset(ip, 0, 20);
    ip[0] = 0x45;
    put16(ip + 2, (uint16_t)(20 + l4len));
    put16(ip + 4, f->ip_id++);
    put16(ip + 6, 0x4000); /* don't fragment */
    ip[8] = 64;
    ip[9] = proto;
    memcpy(ip + 12, src->addr, 4);
    memcpy(ip + 16, dst->addr, 4);
    put16(ip + 10, csum_fold(csum_add(0, ip, 20)));
    return 20;
}

/* The TCP or UDP checksum of the L4LEN bytes at L4 (their checksum field
 * still zero) with the pseudo-header of SRC, DST and PROTO (RFC 793, 768,
 * 8200 section 8.1). */
static uint16_t l4_checksum(const struct pcap_endpoint *src, const struct pcap_endpoint *dst,
                            uint8_t proto, const uint8_t *l4, size_t l4len)
{
    uint8_t pseudo[40];
    size_t plen;
    if (src->family == AF_INET6) {
        memcpy(pseudo, src->addr, 16);
        memcpy(pseudo + 16, dst->addr, 16);
        put32(pseudo + 32, (uint32_t)l4len);
        pseudo[36] = pseudo[37] = pseudo[38] = 0;
        pseudo[39] = proto;
        plen = 40;
    } else {
        memcpy(pseudo, src->addr, 4);
        memcpy(pseudo + 4, dst->addr, 4);
        pseudo[8] = 0;
        pseudo[9] = proto;
        put16(pseudo + 10, (uint16_t)l4len);
        plen = 12;
    }
    return csum_fold(csum_add(csum_add(0, pseudo, plen), l4, l4len));
}

/* Append one TCP segment from side FROM of S. Returns 0 or -1. */
static int segment(struct pcap_file *f, const struct pcap_stream *s, int from, uint8_t flags,
                   uint32_t seq, uint32_t ack, const uint8_t *data, size_t len)
{
    const struct pcap_endpoint *src = &s->ep[from], *dst = &s->ep[!from];
    size_t iplen = src->family == AF_INET6 ? 40 : 20;
    size_t optlen = (flags & F_SYN) ? 8 : 0;
    size_t tcplen = 20 + optlen + len;
    size_t pktlen = iplen + tcplen;
    uint8_t *ip = record_start(f, pktlen);
    if (!ip)
        return -1;
    uint8_t *tcp = ip + ip_header(f, ip, src, dst, IPPROTO_TCP, tcplen);
    memset(tcp, 0, 20 + optlen);
    put16(tcp, src->port);
    put16(tcp + 2, dst->port);
    put32(tcp + 4, seq);
    put32(tcp + 8, (flags & F_ACK) ? ack : 0);
    tcp[12] = (uint8_t)(((20 + optlen) / 4) << 4);
    tcp[13] = flags;
    put16(tcp + 14, 65535);
    if (optlen) {
        uint8_t *o = tcp + 20;
        o[0] = 2; /* MSS */
        o[1] = 4;
        put16(o + 2, src->family == AF_INET6 ? 1440 : 1460);
        o[4] = 1; /* NOP */
        o[5] = 3; /* window scale */
        o[6] = 3;
        o[7] = WSCALE;
    }
    if (len)
        memcpy(tcp + 20 + optlen, data, len);
    put16(tcp + 16, l4_checksum(src, dst, IPPROTO_TCP, tcp, tcplen));
    record_end(f, pktlen);
    return 0;
}

int pcap_stream_open(struct pcap_file *f, struct pcap_stream *s, const struct pcap_endpoint *client,
                     const struct pcap_endpoint *server, uint32_t isn_seed)
{
    memset(s, 0, sizeof *s);
    s->ep[PCAP_CLIENT] = *client;
    s->ep[PCAP_SERVER] = *server;
    if (client->family != server->family) {
        pcap_endpoint_map_v6(&s->ep[PCAP_CLIENT]);
        pcap_endpoint_map_v6(&s->ep[PCAP_SERVER]);
    }
    /* Distinct, spread-out initial sequence numbers (Knuth's multiplier). */
    uint32_t isn_c = isn_seed * 2654435761u, isn_s = ~isn_c ^ 0x5bd1e995u;
    if (segment(f, s, PCAP_CLIENT, F_SYN, isn_c, 0, NULL, 0) < 0 ||
        segment(f, s, PCAP_SERVER, F_SYN | F_ACK, isn_s, isn_c + 1, NULL, 0) < 0 ||
        segment(f, s, PCAP_CLIENT, F_ACK, isn_c + 1, isn_s + 1, NULL, 0) < 0)
        return -1;
    s->next_seq[PCAP_CLIENT] = isn_c + 1;
    s->next_seq[PCAP_SERVER] = isn_s + 1;
    return 0;
}

int pcap_stream_data(struct pcap_file *f, struct pcap_stream *s, int from, const void *data,
                     size_t len)
{
    if (s->rst || s->fin[from] || !len)
        return f->err ? -1 : 0;
    size_t mss = s->ep[from].family == AF_INET6 ? 1440 : 1460;
    const uint8_t *p = data;
    while (len) {
        size_t n = len < mss ? len : mss;
        uint8_t flags = F_ACK | (n == len ? F_PSH : 0);
        if (segment(f, s, from, flags, s->next_seq[from], s->next_seq[!from], p, n) < 0)
            return -1;
        s->next_seq[from] += (uint32_t)n;
        s->bytes[from] += n;
        p += n;
        len -= n;
    }
    return segment(f, s, !from, F_ACK, s->next_seq[!from], s->next_seq[from], NULL, 0);
}

int pcap_stream_fin(struct pcap_file *f, struct pcap_stream *s, int from)
{
    if (s->rst || s->fin[from])
        return f->err ? -1 : 0;
    if (segment(f, s, from, F_FIN | F_ACK, s->next_seq[from], s->next_seq[!from], NULL, 0) < 0)
        return -1;
    s->fin[from] = 1;
    s->next_seq[from]++;
    return segment(f, s, !from, F_ACK, s->next_seq[!from], s->next_seq[from], NULL, 0);
}

int pcap_stream_rst(struct pcap_file *f, struct pcap_stream *s, int from)
{
    if (s->rst)
        return f->err ? -1 : 0;
    s->rst = 1;
    return segment(f, s, from, F_RST | F_ACK, s->next_seq[from], s->next_seq[!from], NULL, 0);
}

size_t pcap_udp_max(int family)
{
    return family == AF_INET6 ? PCAP_UDP_MAX6 : PCAP_UDP_MAX4;
}

void pcap_udp_open(struct pcap_udp *u, const struct pcap_endpoint *client,
                   const struct pcap_endpoint *server)
{
    memset(u, 0, sizeof *u);
    u->ep[PCAP_CLIENT] = *client;
    u->ep[PCAP_SERVER] = *server;
    if (client->family != server->family) {
        pcap_endpoint_map_v6(&u->ep[PCAP_CLIENT]);
        pcap_endpoint_map_v6(&u->ep[PCAP_SERVER]);
    }
}

int pcap_udp_datagram(struct pcap_file *f, struct pcap_udp *u, int from, const void *data,
                      size_t len)
{
    const struct pcap_endpoint *src = &u->ep[from], *dst = &u->ep[!from];
    if (len > pcap_udp_max(src->family))
        return PCAP_TOO_BIG;
    size_t udplen = 8 + len;
    size_t pktlen = (src->family == AF_INET6 ? 40 : 20) + udplen;
    uint8_t *ip = record_start(f, pktlen);
    if (!ip)
        return -1;
    uint8_t *udp = ip + ip_header(f, ip, src, dst, IPPROTO_UDP, udplen);
    put16(udp, src->port);
    put16(udp + 2, dst->port);
    put16(udp + 4, (uint16_t)udplen);
    put16(udp + 6, 0);
    if (len)
        memcpy(udp + 8, data, len);
    /* A computed 0 is sent as 0xffff: 0 means "no checksum" (RFC 768). */
    uint16_t sum = l4_checksum(src, dst, IPPROTO_UDP, udp, udplen);
    put16(udp + 6, sum ? sum : 0xffff);
    record_end(f, pktlen);
    u->datagrams[from]++;
    u->bytes[from] += len;
    return 0;
}

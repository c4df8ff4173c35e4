/* A classic libpcap file writer that turns a relayed byte stream into a
 * TCP conversation Wireshark can follow: synthetic IPv4/IPv6 and TCP headers
 * (with correct checksums, sequence and acknowledgement numbers) around the
 * real payload, cut into segments no larger than a normal MSS. Datagrams are
 * written as one IPv4/IPv6 + UDP packet each (correct checksums, no
 * fragments: the largest UDP datagram fits one IP packet's length fields).
 *
 * No libev and no Lua here: the caller flushes (pcap_file_flush) on its own
 * schedule and timestamps records with the real time of the call. */
#ifndef ECHOKIT_PCAP_H
#define ECHOKIT_PCAP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "util.h"

/* LINKTYPE_RAW: each record starts with an IPv4 or IPv6 header. */
#define PCAP_LINKTYPE_RAW 101

struct pcap_file {
    int fd;
    char *buf;
    size_t len, cap;
    uint16_t ip_id;
    uint64_t records;
    int err; /* errno of the first failed write; the file takes nothing more */
};

/* One side of a conversation: an IPv4 or IPv6 address and a port. */
struct pcap_endpoint {
    int family; /* AF_INET or AF_INET6 */
    uint8_t addr[16];
    uint16_t port;
};

enum { PCAP_CLIENT = 0, PCAP_SERVER = 1 };

struct pcap_stream {
    struct pcap_endpoint ep[2]; /* [PCAP_CLIENT], [PCAP_SERVER], same family */
    uint32_t next_seq[2];       /* sequence number of each side's next byte */
    int fin[2], rst;
    uint64_t bytes[2];
};

/* Create (truncate) PATH and write the file header. Returns 0, or -1 with
 * a message in err. */
int pcap_file_open(struct pcap_file *f, const char *path, char err[ECHOKIT_ERR_LEN]);

/* Write what is buffered. Returns 0, or -1 (f->err set). */
int pcap_file_flush(struct pcap_file *f);

/* Flush and close; safe to call twice. Returns pcap_file_flush's result. */
int pcap_file_close(struct pcap_file *f);

/* Fill ep from a textual IPv4/IPv6 address; 0, or -1 if HOST is neither. */
int pcap_endpoint_parse(struct pcap_endpoint *ep, const char *host, uint16_t port);

/* Rewrites an IPv4 endpoint as its IPv4-mapped IPv6 address (a stream with
 * one IPv6 end is written as IPv6); others are left alone. */
void pcap_endpoint_map_v6(struct pcap_endpoint *ep);

/* Start a conversation between client and server: records the three-way
 * handshake. Endpoints of different families are written as IPv6 (IPv4 as
 * ::ffff:a.b.c.d). isn_seed varies the initial sequence numbers. */
int pcap_stream_open(struct pcap_file *f, struct pcap_stream *s, const struct pcap_endpoint *client,
                     const struct pcap_endpoint *server, uint32_t isn_seed);

/* Record LEN bytes sent by side FROM (PCAP_CLIENT or PCAP_SERVER) as
 * MSS-sized segments, followed by the receiver's acknowledgement. Nothing is
 * written after that side's FIN or the stream's RST. */
int pcap_stream_data(struct pcap_file *f, struct pcap_stream *s, int from, const void *data,
                     size_t len);

/* Side FROM closes its sending direction: FIN, and the peer's ACK. */
int pcap_stream_fin(struct pcap_file *f, struct pcap_stream *s, int from);

/* Side FROM aborts the conversation with a RST. */
int pcap_stream_rst(struct pcap_file *f, struct pcap_stream *s, int from);

/* The largest UDP payload: 65,535 less the IPv4 and UDP headers; over IPv6
 * the payload length field leaves out the 40-byte header (no jumbograms). */
#define PCAP_UDP_MAX4 65507
#define PCAP_UDP_MAX6 65527
/* pcap_udp_datagram's answer for a datagram over that size. */
#define PCAP_TOO_BIG (-2)

/* The datagrams between two endpoints. No records of their own: UDP has no
 * handshake and no end. */
struct pcap_udp {
    struct pcap_endpoint ep[2]; /* [PCAP_CLIENT], [PCAP_SERVER], same family */
    uint64_t datagrams[2];
    uint64_t bytes[2];
};

/* PCAP_UDP_MAX4 or PCAP_UDP_MAX6 for an endpoint of FAMILY. */
size_t pcap_udp_max(int family);

/* Set up U between client and server (a mix of families is written as IPv6,
 * as for streams). Writes nothing. */
void pcap_udp_open(struct pcap_udp *u, const struct pcap_endpoint *client,
                   const struct pcap_endpoint *server);

/* Record one datagram of LEN bytes (0 allowed) sent by side FROM as one
 * IP + UDP packet. Returns 0; -1 when the file failed (f->err) or is closed;
 * PCAP_TOO_BIG, writing nothing and leaving the file usable, when LEN is over
 * pcap_udp_max of the family written. */
int pcap_udp_datagram(struct pcap_file *f, struct pcap_udp *u, int from, const void *data,
                      size_t len);

#endif

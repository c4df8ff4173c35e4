/* Reading TCP conversations back out of a capture file (classic pcap or
 * pcapng, read by libpcap): each conversation reassembled by sequence number
 * into the ordered list of its messages, a message being a maximal run of
 * bytes in one direction.
 *
 * Link types: Ethernet (one 802.1Q/802.1ad tag), raw IP (what src/pcap.c
 * writes), Linux cooked (SLL, SLL2) and loopback (DLT_NULL, DLT_LOOP); IPv4
 * and IPv6. Anything else in the file (ARP, UDP, IP fragments, packets cut
 * before the TCP header) is skipped and counted.
 *
 * Reassembly rules:
 *   - a SYN gives the initial sequence number; without one a direction starts
 *     at the first sequence number seen in it;
 *   - bytes already delivered are never replaced (a retransmission or an
 *     overlap loses to the first copy); of two buffered copies the one that
 *     starts lower wins, and of equal starts the one captured first;
 *   - out-of-order segments wait, at most CAPREAD_OOO_BYTES bytes and
 *     CAPREAD_OOO_SEGS segments per direction; past that, or at the end of
 *     the file, the hole is skipped and the conversation marked truncated
 *     (so is one with a segment cut short by the snapshot length);
 *   - all conversations together hold at most CAPREAD_MAX_BYTES bytes of
 *     memory (messages as allocated, bookkeeping included, and waiting
 *     segments) and CAPREAD_MAX_CONVS conversations: past that, bytes are
 *     dropped (a waiting hole skipped) and the conversation marked truncated;
 *   - the client is the sender of the SYN (or the receiver of the SYN-ACK);
 *     without either, the side with the higher port (the ephemeral one), and
 *     on equal ports the first sender;
 *   - a new SYN on the same addresses and ports with another sequence number
 *     starts a new conversation (port reuse).
 * Messages are ordered as their bytes became deliverable, packet by packet
 * in file order; a message's t is the capture time of its first segment.
 *
 * No Lua and no libev here. */
#ifndef ECHOKIT_CAPREAD_H
#define ECHOKIT_CAPREAD_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

#define CAPREAD_OOO_BYTES (4u << 20)
#define CAPREAD_OOO_SEGS 131072
#define CAPREAD_MAX_BYTES ((size_t)512 << 20)
#define CAPREAD_MAX_CONVS 65536

enum { CAPREAD_CLIENT = 0, CAPREAD_SERVER = 1 };

struct capread_endpoint {
    int family; /* AF_INET or AF_INET6 */
    uint8_t addr[16];
    uint16_t port;
};

struct capread_msg {
    int from; /* CAPREAD_CLIENT or CAPREAD_SERVER */
    double t; /* capture time of its first segment, seconds since the epoch */
    uint8_t *data;
    size_t len, cap;
};

struct capread_conv {
    struct capread_endpoint ep[2]; /* [CAPREAD_CLIENT], [CAPREAD_SERVER] */
    int truncated;                 /* bytes are missing (see the rules above) */
    struct capread_msg *msgs;
    size_t nmsgs;
};

struct capread_result {
    struct capread_conv *convs; /* in the order of their first packet */
    size_t nconvs;
    uint64_t packets; /* records read */
    uint64_t skipped; /* records that were not TCP over IP, or unreadable */
    char warning[ECHOKIT_ERR_LEN]; /* "" or why the file ended early */
};

/* Reads PATH. Returns 0 with at least one conversation in r (r->warning set
 * when the file is cut short: what could be read is kept), or -1 with a
 * one-line message in err: the file cannot be opened, is no capture, has an
 * unsupported link type, or holds no TCP conversation. r is left empty on
 * error; release it with capread_free either way. */
int capread_file(const char *path, struct capread_result *r, char err[ECHOKIT_ERR_LEN]);

void capread_free(struct capread_result *r);

/* The reassembler alone, fed packets by the caller (capread_file and the
 * fuzz harness). */
struct capread;

/* NULL when out of memory. */
struct capread *capread_new(void);

/* The cap on the memory held by messages and waiting segments (default
 * CAPREAD_MAX_BYTES; the tests lower it). */
void capread_limit(struct capread *cr, size_t max_bytes);

/* Whether libpcap link type DLT is one capread_packet understands. */
int capread_linktype_ok(int dlt);

/* One record of link type DLT: caplen bytes captured of a packet that was
 * wirelen long on the wire, at time t. Never fails: what cannot be used is
 * counted as skipped. */
void capread_packet(struct capread *cr, int dlt, const uint8_t *pkt, size_t caplen,
                    size_t wirelen, double t);

/* Ends the input: holes are skipped, and the conversations move into r
 * (which must be zeroed). Frees cr. */
void capread_finish(struct capread *cr, struct capread_result *r);

/* "a.b.c.d" or "x:y::z" into buf; returns buf. */
const char *capread_addr_str(const struct capread_endpoint *ep, char *buf, size_t cap);

#endif

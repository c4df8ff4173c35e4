/* Capture files to TCP conversations; see capread.h for the rules. libpcap
 * reads the file formats; this file parses the link, IP and TCP headers of
 * each record and reassembles the byte streams. */
#include "capread.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pcap/pcap.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef DLT_LINUX_SLL2
#define DLT_LINUX_SLL2 276
#endif
#ifndef DLT_IPV4
#define DLT_IPV4 228
#endif
#ifndef DLT_IPV6
#define DLT_IPV6 229
#endif
#define LINKTYPE_RAW 101 /* what a file says; libpcap maps it to DLT_RAW */

#define NBUCKETS 4096
#define IPV6_EXT_MAX 8 /* extension headers followed before giving up */

enum { T_FIN = 0x01, T_SYN = 0x02, T_RST = 0x04, T_ACK = 0x10 };

/* A segment waiting for the bytes before it. */
struct seg {
    uint64_t order; /* capture order: of equal starts the first wins */
    uint32_t seq;
    size_t len;
    double t;
    uint8_t data[];
};

/* One direction of a conversation, named by the endpoint that sends it. */
struct dir {
    int started, syn;
    uint32_t isn;  /* the SYN's sequence number, when syn */
    uint32_t next; /* sequence number of the next byte to deliver */
    /* Waiting segments: a binary heap, lowest start (from base) first, so
     * that any arrival order costs O(log n) a segment. */
    struct seg **ooo;
    size_t ooo_segs, ooo_cap, ooo_bytes;
    uint32_t base; /* next when the heap was last empty */
};

struct conv {
    struct conv *hnext;
    struct capread_endpoint ep[2]; /* ep[0] sent the first packet seen */
    struct dir d[2];
    int client; /* index into ep, -1 until a SYN says */
    int truncated;
    struct capread_msg *msgs; /* from = index into ep until capread_finish */
    size_t nmsgs, cap;
};

struct capread {
    struct conv *buckets[NBUCKETS];
    struct conv **all; /* every conversation, in order of creation */
    size_t nall, capall;
    size_t bytes; /* allocated for messages and waiting segments */
    size_t limit; /* cap on bytes */
    uint64_t packets, skipped;
    uint64_t order; /* segments buffered so far */
};

struct capread *capread_new(void)
{
    struct capread *cr = calloc(1, sizeof(struct capread));
    if (cr)
        cr->limit = CAPREAD_MAX_BYTES;
    return cr;
}

void capread_limit(struct capread *cr, size_t max_bytes)
{
    cr->limit = max_bytes;
}

/* Whether n more bytes may be allocated; if so they are counted. */
static int take(struct capread *cr, size_t n)
{
    if (cr->bytes > cr->limit || n > cr->limit - cr->bytes)
        return 0;
    cr->bytes += n;
    return 1;
}

int capread_linktype_ok(int dlt)
{
    switch (dlt) {
    case DLT_EN10MB: case DLT_RAW: case LINKTYPE_RAW: case DLT_IPV4: case DLT_IPV6:
    case DLT_LINUX_SLL: case DLT_LINUX_SLL2: case DLT_NULL: case DLT_LOOP:
        return 1;
    default:
        return 0;
    }
}

static uint16_t get16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int ep_eq(const struct capread_endpoint *a, const struct capread_endpoint *b)
{
    return a->family == b->family && a->port == b->port && !memcmp(a->addr, b->addr, 16);
}

static unsigned ep_hash(const struct capread_endpoint *e)
{
    unsigned h = 2166136261u;
    for (int i = 0; i < 16; i++)
        h = (h ^ e->addr[i]) * 16777619u;
    return (h ^ e->port) * 16777619u;
}

/* Symmetric, so both directions land in one bucket. */
static unsigned bucket(const struct capread_endpoint *a, const struct capread_endpoint *b)
{
    return (ep_hash(a) ^ ep_hash(b)) % NBUCKETS;
}

/* The conversation between src and dst, and in *dir the index of src. */
static struct conv *lookup(struct capread *cr, const struct capread_endpoint *src,
                           const struct capread_endpoint *dst, int *dir)
{
    for (struct conv *c = cr->buckets[bucket(src, dst)]; c; c = c->hnext) {
        if (ep_eq(&c->ep[0], src) && ep_eq(&c->ep[1], dst)) {
            *dir = 0;
            return c;
        }
        if (ep_eq(&c->ep[1], src) && ep_eq(&c->ep[0], dst)) {
            *dir = 1;
            return c;
        }
    }
    return NULL;
}

static void unhash(struct capread *cr, struct conv *c)
{
    struct conv **pp = &cr->buckets[bucket(&c->ep[0], &c->ep[1])];
    while (*pp && *pp != c)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = c->hnext;
    c->hnext = NULL;
}

static struct conv *create(struct capread *cr, const struct capread_endpoint *src,
                           const struct capread_endpoint *dst)
{
    if (cr->nall == CAPREAD_MAX_CONVS)
        return NULL;
    if (cr->nall == cr->capall) {
        size_t n = cr->capall ? cr->capall * 2 : 16;
        struct conv **a = realloc(cr->all, n * sizeof *a);
        if (!a)
            return NULL;
        cr->all = a;
        cr->capall = n;
    }
    struct conv *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->ep[0] = *src;
    c->ep[1] = *dst;
    c->client = -1;
    unsigned b = bucket(src, dst);
    c->hnext = cr->buckets[b];
    cr->buckets[b] = c;
    cr->all[cr->nall++] = c;
    return c;
}

/* Adds bytes sent by ep[dir] to the conversation's messages. */
static void append(struct capread *cr, struct conv *c, int dir, const uint8_t *p, size_t len,
                   double t)
{
    if (!len)
        return;
    struct capread_msg *m = c->nmsgs ? &c->msgs[c->nmsgs - 1] : NULL;
    if (!m || m->from != dir) {
        if (c->nmsgs == c->cap) {
            size_t n = c->cap ? c->cap * 2 : 8;
            if (!take(cr, (n - c->cap) * sizeof *c->msgs)) {
                c->truncated = 1;
                return;
            }
            struct capread_msg *a = realloc(c->msgs, n * sizeof *a);
            if (!a) {
                cr->bytes -= (n - c->cap) * sizeof *c->msgs;
                c->truncated = 1;
                return;
            }
            c->msgs = a;
            c->cap = n;
        }
        m = &c->msgs[c->nmsgs++];
        memset(m, 0, sizeof *m);
        m->from = dir;
        m->t = t;
    }
    if (m->len + len > m->cap) {
        /* doubling; exactly what is needed when the double is over the cap */
        size_t need = m->len + len, n = m->cap ? m->cap : 64;
        while (n < need)
            n *= 2;
        if (!take(cr, n - m->cap)) {
            n = need;
            if (!take(cr, n - m->cap)) {
                c->truncated = 1;
                return;
            }
        }
        uint8_t *d = realloc(m->data, n);
        if (!d) {
            cr->bytes -= n - m->cap;
            c->truncated = 1;
            return;
        }
        m->data = d;
        m->cap = n;
    }
    memcpy(m->data + m->len, p, len);
    m->len += len;
}

/* Delivers what of [seq, seq+len) is new, when it starts at or before next.
 * Returns 0 if the segment starts after next (nothing done). */
static int deliver(struct capread *cr, struct conv *c, int dir, uint32_t seq, const uint8_t *p,
                   size_t len, double t)
{
    struct dir *d = &c->d[dir];
    int64_t off = (int32_t)(seq - d->next);
    if (off > 0)
        return 0;
    if (off + (int64_t)len <= 0)
        return 1; /* all of it delivered before: the first copy won */
    size_t skip = (size_t)-off;
    append(cr, c, dir, p + skip, len - skip, t);
    d->next += (uint32_t)(len - skip);
    return 1;
}

static int seg_before(const struct dir *d, const struct seg *a, const struct seg *b)
{
    uint32_t ka = a->seq - d->base, kb = b->seq - d->base;
    return ka != kb ? ka < kb : a->order < b->order;
}

static void heap_push(struct dir *d, struct seg *s)
{
    size_t i = d->ooo_segs++;
    while (i > 0 && seg_before(d, s, d->ooo[(i - 1) / 2])) {
        d->ooo[i] = d->ooo[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    d->ooo[i] = s;
}

static struct seg *heap_pop(struct dir *d)
{
    struct seg *top = d->ooo[0], *last = d->ooo[--d->ooo_segs];
    size_t n = d->ooo_segs, i = 0;
    for (;;) {
        size_t k = 2 * i + 1;
        if (k >= n)
            break;
        if (k + 1 < n && seg_before(d, d->ooo[k + 1], d->ooo[k]))
            k++;
        if (!seg_before(d, d->ooo[k], last))
            break;
        d->ooo[i] = d->ooo[k];
        i = k;
    }
    if (n)
        d->ooo[i] = last;
    return top;
}

/* Delivers the waiting segments that now follow on; with skip_holes, all
 * of them, jumping the gaps (the conversation is then truncated). */
static void drain(struct capread *cr, struct conv *c, int dir, int skip_holes)
{
    struct dir *d = &c->d[dir];
    while (d->ooo_segs) {
        struct seg *s = d->ooo[0];
        if ((int32_t)(s->seq - d->next) > 0) {
            if (!skip_holes)
                return;
            c->truncated = 1;
            d->next = s->seq;
        }
        heap_pop(d);
        d->ooo_bytes -= s->len;
        cr->bytes -= sizeof *s + s->len; /* freed below: room for its bytes as a message */
        deliver(cr, c, dir, s->seq, s->data, s->len, s->t);
        free(s);
    }
}

/* Keeps a segment that starts after next, in order; equal starts keep their
 * capture order (the first copy wins). */
/* Room in d's heap for one more segment (counted against the cap). */
static int heap_room(struct capread *cr, struct dir *d)
{
    if (d->ooo_segs < d->ooo_cap)
        return 1;
    size_t n = d->ooo_cap ? d->ooo_cap * 2 : 16, grow = (n - d->ooo_cap) * sizeof *d->ooo;
    if (!take(cr, grow))
        return 0;
    struct seg **a = realloc(d->ooo, n * sizeof *a);
    if (!a) {
        cr->bytes -= grow;
        return 0;
    }
    d->ooo = a;
    d->ooo_cap = n;
    return 1;
}

/* Keeps a segment that starts after next; equal starts keep their capture
 * order (the first copy wins). */
static void buffer(struct capread *cr, struct conv *c, int dir, uint32_t seq, const uint8_t *p,
                   size_t len, double t)
{
    struct dir *d = &c->d[dir];
    struct seg *s = NULL;
    if (len <= CAPREAD_OOO_BYTES - d->ooo_bytes && d->ooo_segs < CAPREAD_OOO_SEGS &&
        heap_room(cr, d) && take(cr, sizeof *s + len)) {
        s = malloc(sizeof *s + len);
        if (!s)
            cr->bytes -= sizeof *s + len;
    }
    if (!s) {
        /* Over a cap: give up waiting for the hole. */
        drain(cr, c, dir, 1);
        if ((int32_t)(seq - d->next) > 0) {
            c->truncated = 1;
            d->next = seq;
        }
        deliver(cr, c, dir, seq, p, len, t);
        return;
    }
    s->order = cr->order++;
    s->seq = seq;
    s->len = len;
    s->t = t;
    memcpy(s->data, p, len);
    if (!d->ooo_segs)
        d->base = d->next;
    heap_push(d, s);
    d->ooo_bytes += len;
}

static void segment(struct capread *cr, const struct capread_endpoint *src,
                    const struct capread_endpoint *dst, uint8_t flags, uint32_t seq,
                    const uint8_t *p, size_t len, int cut, double t)
{
    int dir = 0;
    struct conv *c = lookup(cr, src, dst, &dir);
    if (c && (flags & (T_SYN | T_ACK)) == T_SYN) {
        /* A client's SYN: the same conversation's (a retransmission) only
         * if it carries the ISN already seen. */
        const struct dir *d = &c->d[dir];
        if (d->syn ? d->isn != seq : (d->started || c->d[!dir].started)) {
            unhash(cr, c);
            c = NULL;
        }
    }
    if (!c) {
        c = create(cr, src, dst);
        dir = 0;
        if (!c) {
            cr->skipped++;
            return;
        }
    }
    struct dir *d = &c->d[dir];
    if (flags & T_SYN) {
        if (!(flags & T_ACK))
            c->client = dir;
        else if (c->client < 0)
            c->client = !dir;
        if (!d->started) {
            d->started = d->syn = 1;
            d->isn = seq;
            d->next = seq + 1;
        }
        seq++; /* data on a SYN starts after it */
    } else if (!d->started) {
        d->started = 1;
        d->next = seq;
    }
    if (cut)
        c->truncated = 1;
    if (!len || (flags & T_RST))
        return;
    if (deliver(cr, c, dir, seq, p, len, t))
        drain(cr, c, dir, 0);
    else
        buffer(cr, c, dir, seq, p, len, t);
}

/* TCP header at p: cap bytes captured of wire bytes. */
static void tcp(struct capread *cr, struct capread_endpoint *src, struct capread_endpoint *dst,
                const uint8_t *p, size_t cap, size_t wire, double t)
{
    if (cap < 20 || wire < 20) {
        cr->skipped++;
        return;
    }
    size_t doff = (size_t)(p[12] >> 4) * 4;
    if (doff < 20 || doff > cap || doff > wire) {
        cr->skipped++;
        return;
    }
    src->port = get16(p);
    dst->port = get16(p + 2);
    size_t len = wire - doff, got = cap - doff;
    segment(cr, src, dst, p[13], get32(p + 4), p + doff, got < len ? got : len, got < len, t);
}

static void ipv4(struct capread *cr, const uint8_t *p, size_t cap, double t)
{
    if (cap < 20) {
        cr->skipped++;
        return;
    }
    size_t ihl = (size_t)(p[0] & 15) * 4, total = get16(p + 2);
    if (total == 0) /* a segmentation offload's: the length is the record's */
        total = cap;
    if (ihl < 20 || ihl > cap || total < ihl || (get16(p + 6) & 0x3fff) || p[9] != IPPROTO_TCP) {
        cr->skipped++; /* not TCP, or a fragment */
        return;
    }
    struct capread_endpoint src = {.family = AF_INET}, dst = {.family = AF_INET};
    memcpy(src.addr, p + 12, 4);
    memcpy(dst.addr, p + 16, 4);
    size_t end = cap < total ? cap : total; /* Ethernet pads short frames */
    tcp(cr, &src, &dst, p + ihl, end - ihl, total - ihl, t);
}

static void ipv6(struct capread *cr, const uint8_t *p, size_t cap, double t)
{
    if (cap < 40) {
        cr->skipped++;
        return;
    }
    size_t total = 40 + (size_t)get16(p + 4);
    if (total == 40) /* jumbogram or offload: the record's length */
        total = cap;
    uint8_t nh = p[6];
    size_t off = 40;
    for (int i = 0; i < IPV6_EXT_MAX && (nh == 0 || nh == 43 || nh == 60); i++) {
        if (off + 8 > cap)
            break;
        nh = p[off];
        off += ((size_t)p[off + 1] + 1) * 8;
    }
    if (nh != IPPROTO_TCP || off > cap || off > total) {
        cr->skipped++; /* not TCP, a fragment (44), or cut short */
        return;
    }
    struct capread_endpoint src = {.family = AF_INET6}, dst = {.family = AF_INET6};
    memcpy(src.addr, p + 8, 16);
    memcpy(dst.addr, p + 24, 16);
    size_t end = cap < total ? cap : total;
    tcp(cr, &src, &dst, p + off, end - off, total - off, t);
}

void capread_packet(struct capread *cr, int dlt, const uint8_t *pkt, size_t caplen,
                    size_t wirelen, double t)
{
    (void)wirelen; /* the IP header's lengths say what was cut */
    cr->packets++;
    size_t off;
    int type = -1; /* ethertype, -1: none, read the IP version */
    switch (dlt) {
    case DLT_EN10MB:
        if (caplen < 14)
            goto skip;
        type = get16(pkt + 12);
        off = 14;
        if (type == 0x8100 || type == 0x88a8) { /* one VLAN tag */
            if (caplen < 18)
                goto skip;
            type = get16(pkt + 16);
            off = 18;
        }
        break;
    case DLT_LINUX_SLL:
        if (caplen < 16)
            goto skip;
        type = get16(pkt + 14);
        off = 16;
        break;
    case DLT_LINUX_SLL2:
        if (caplen < 20)
            goto skip;
        type = get16(pkt);
        off = 20;
        break;
    case DLT_NULL:
    case DLT_LOOP:
        off = 4; /* the address family, in either byte order: the IP version says */
        break;
    case DLT_RAW:
    case LINKTYPE_RAW:
    case DLT_IPV4:
    case DLT_IPV6:
        off = 0;
        break;
    default:
        goto skip;
    }
    if (type != -1 && type != 0x0800 && type != 0x86dd) /* not IPv4 or IPv6 */
        goto skip;
    if (caplen <= off)
        goto skip;
    const uint8_t *ip = pkt + off;
    int version = ip[0] >> 4;
    if ((type == 0x0800 && version != 4) || (type == 0x86dd && version != 6))
        goto skip;
    if (version == 4)
        ipv4(cr, ip, caplen - off, t);
    else if (version == 6)
        ipv6(cr, ip, caplen - off, t);
    else
        goto skip;
    return;
skip:
    cr->skipped++;
}

static void conv_free(struct conv *c)
{
    for (size_t i = 0; i < c->nmsgs; i++)
        free(c->msgs[i].data);
    free(c->msgs);
    for (int i = 0; i < 2; i++) {
        for (size_t k = 0; k < c->d[i].ooo_segs; k++)
            free(c->d[i].ooo[k]);
        free(c->d[i].ooo);
    }
    free(c);
}

void capread_finish(struct capread *cr, struct capread_result *r)
{
    r->packets = cr->packets;
    r->skipped = cr->skipped;
    r->convs = cr->nall ? calloc(cr->nall, sizeof *r->convs) : NULL;
    for (size_t i = 0; i < cr->nall; i++) {
        struct conv *c = cr->all[i];
        if (!r->convs) {
            conv_free(c);
            continue;
        }
        drain(cr, c, 0, 1);
        drain(cr, c, 1, 1);
        int client = c->client;
        if (client < 0) /* no SYN seen: the ephemeral (higher) port */
            client = c->ep[1].port > c->ep[0].port ? 1 : 0;
        struct capread_conv *o = &r->convs[r->nconvs++];
        o->ep[CAPREAD_CLIENT] = c->ep[client];
        o->ep[CAPREAD_SERVER] = c->ep[!client];
        o->truncated = c->truncated;
        for (size_t k = 0; k < c->nmsgs; k++)
            c->msgs[k].from = c->msgs[k].from == client ? CAPREAD_CLIENT : CAPREAD_SERVER;
        o->msgs = c->msgs;
        o->nmsgs = c->nmsgs;
        c->msgs = NULL;
        c->nmsgs = 0;
        conv_free(c);
    }
    free(cr->all);
    free(cr);
}

void capread_free(struct capread_result *r)
{
    for (size_t i = 0; i < r->nconvs; i++) {
        for (size_t k = 0; k < r->convs[i].nmsgs; k++)
            free(r->convs[i].msgs[k].data);
        free(r->convs[i].msgs);
    }
    free(r->convs);
    r->convs = NULL;
    r->nconvs = 0;
}

const char *capread_addr_str(const struct capread_endpoint *ep, char *buf, size_t cap)
{
    if (!inet_ntop(ep->family, ep->addr, buf, (socklen_t)cap))
        snprintf(buf, cap, "?");
    return buf;
}

int capread_file(const char *path, struct capread_result *r, char err[ECHOKIT_ERR_LEN])
{
    char eb[PCAP_ERRBUF_SIZE] = "";
    memset(r, 0, sizeof *r);
    pcap_t *p = pcap_open_offline_with_tstamp_precision(path, PCAP_TSTAMP_PRECISION_MICRO, eb);
    if (!p) {
        /* libpcap names the file itself in some of its messages */
        const char *why = eb;
        size_t plen = strlen(path);
        if (!strncmp(why, path, plen) && !strncmp(why + plen, ": ", 2))
            why += plen + 2;
        snprintf(err, ECHOKIT_ERR_LEN, "%.100s: not a readable capture file: %.100s", path, why);
        return -1;
    }
    int dlt = pcap_datalink(p);
    if (!capread_linktype_ok(dlt)) {
        const char *name = pcap_datalink_val_to_name(dlt);
        snprintf(err, ECHOKIT_ERR_LEN,
                 "%s: link type %s (%d) is not supported (Ethernet, raw IP, Linux cooked, "
                 "loopback are)", path, name ? name : "unknown", dlt);
        pcap_close(p);
        return -1;
    }
    struct capread *cr = capread_new();
    if (!cr) {
        pcap_close(p);
        snprintf(err, ECHOKIT_ERR_LEN, "%s: out of memory", path);
        return -1;
    }
    struct pcap_pkthdr *h;
    const u_char *data;
    int rc;
    while ((rc = pcap_next_ex(p, &h, &data)) == 1)
        capread_packet(cr, dlt, data, h->caplen, h->len,
                       (double)h->ts.tv_sec + (double)h->ts.tv_usec / 1e6);
    if (rc == PCAP_ERROR)
        snprintf(r->warning, sizeof r->warning, "%s: %s (kept the %llu packets before it)",
                 path, pcap_geterr(p), (unsigned long long)cr->packets);
    pcap_close(p);
    capread_finish(cr, r);
    if (!r->nconvs) {
        if (r->warning[0])
            snprintf(err, ECHOKIT_ERR_LEN, "%.200s; no TCP conversation in them", r->warning);
        else
            snprintf(err, ECHOKIT_ERR_LEN, "%s: no TCP conversation in it (%llu packets)", path,
                     (unsigned long long)r->packets);
        capread_free(r);
        return -1;
    }
    return 0;
}

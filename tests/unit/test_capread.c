/* src/capread.c: capture files written here through libpcap's own writer
 * (pcap_open_dead + pcap_dump), in each supported link type, read back and
 * reassembled; and the reassembler fed packets directly for the rules on
 * retransmissions, overlaps, reordering, caps and direction. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pcap/pcap.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "capread.h"
#include "check.h"

#ifndef DLT_LINUX_SLL2
#define DLT_LINUX_SLL2 276
#endif

enum { FIN = 0x01, SYN = 0x02, RST = 0x04, PSH = 0x08, ACK = 0x10 };

struct pkt {
    uint8_t b[2048];
    size_t len;
};

/* A TCP segment from a:ap to b:bp (last address byte given; 127.0.0.x or
 * ::x), framed for link type dlt. */
static void build(struct pkt *p, int dlt, int v6, int a, int ap, int b, int bp, uint32_t seq,
                  int flags, const char *data)
{
    size_t dlen = strlen(data), off = 0, iplen = (v6 ? 40 : 20) + 20 + dlen;
    uint16_t et = v6 ? 0x86dd : 0x0800;
    memset(p->b, 0, sizeof p->b);
    switch (dlt) {
    case DLT_EN10MB: /* with one VLAN tag */
        p->b[12] = 0x81;
        p->b[13] = 0x00;
        p->b[14] = 0x00;
        p->b[15] = 0x07;
        p->b[16] = (uint8_t)(et >> 8);
        p->b[17] = (uint8_t)et;
        off = 18;
        break;
    case DLT_LINUX_SLL:
        p->b[14] = (uint8_t)(et >> 8);
        p->b[15] = (uint8_t)et;
        off = 16;
        break;
    case DLT_LINUX_SLL2:
        p->b[0] = (uint8_t)(et >> 8);
        p->b[1] = (uint8_t)et;
        off = 20;
        break;
    case DLT_NULL: { /* host order */
        uint32_t fam = v6 ? 10 : 2;
        memcpy(p->b, &fam, 4);
        off = 4;
        break;
    }
    case DLT_LOOP:
        p->b[3] = v6 ? 30 : 2;
        off = 4;
        break;
    default:
        break;
    }
    uint8_t *ip = p->b + off, *tcp;
    if (v6) {
        ip[0] = 0x60;
        ip[4] = (uint8_t)((20 + dlen) >> 8);
        ip[5] = (uint8_t)(20 + dlen);
        ip[6] = IPPROTO_TCP;
        ip[7] = 64;
        ip[23] = (uint8_t)a;
        ip[39] = (uint8_t)b;
        tcp = ip + 40;
    } else {
        ip[0] = 0x45;
        ip[2] = (uint8_t)(iplen >> 8);
        ip[3] = (uint8_t)iplen;
        ip[8] = 64;
        ip[9] = IPPROTO_TCP;
        ip[12] = 127;
        ip[15] = (uint8_t)a;
        ip[16] = 127;
        ip[19] = (uint8_t)b;
        tcp = ip + 20;
    }
    tcp[0] = (uint8_t)(ap >> 8);
    tcp[1] = (uint8_t)ap;
    tcp[2] = (uint8_t)(bp >> 8);
    tcp[3] = (uint8_t)bp;
    tcp[4] = (uint8_t)(seq >> 24);
    tcp[5] = (uint8_t)(seq >> 16);
    tcp[6] = (uint8_t)(seq >> 8);
    tcp[7] = (uint8_t)seq;
    tcp[12] = 5 << 4;
    tcp[13] = (uint8_t)flags;
    memcpy(tcp + 20, data, dlen);
    p->len = off + iplen;
}

static double clock_t0;

static void feed(struct capread *cr, int dlt, int v6, int a, int ap, int b, int bp, uint32_t seq,
                 int flags, const char *data)
{
    struct pkt p;
    build(&p, dlt, v6, a, ap, b, bp, seq, flags, data);
    capread_packet(cr, dlt, p.b, p.len, p.len, clock_t0 += 0.001);
}

static int msg_is(const struct capread_conv *c, size_t i, int from, const char *data)
{
    if (i >= c->nmsgs)
        return 0;
    const struct capread_msg *m = &c->msgs[i];
    return m->from == from && m->len == strlen(data) && !memcmp(m->data, data, m->len);
}

/* The conversation every link type carries: a handshake, a request split
 * in two with its second half first and a copy of the first, the answer. */
static void conversation(struct capread *cr, int dlt, int v6)
{
    feed(cr, dlt, v6, 1, 40000, 2, 6379, 1000, SYN, "");
    feed(cr, dlt, v6, 2, 6379, 1, 40000, 5000, SYN | ACK, "");
    feed(cr, dlt, v6, 1, 40000, 2, 6379, 1001, ACK, "");
    feed(cr, dlt, v6, 1, 40000, 2, 6379, 1005, ACK | PSH, "world\n"); /* early */
    feed(cr, dlt, v6, 1, 40000, 2, 6379, 1001, ACK, "helo");
    feed(cr, dlt, v6, 1, 40000, 2, 6379, 1001, ACK, "hello"); /* overlaps: first copy wins */
    feed(cr, dlt, v6, 2, 6379, 1, 40000, 5001, ACK | PSH, "hi\n");
    feed(cr, dlt, v6, 2, 6379, 1, 40000, 5001, ACK | PSH, "hi\n"); /* retransmitted */
    feed(cr, dlt, v6, 1, 40000, 2, 6379, 1011, ACK | FIN, "bye");
}

static void check_conversation(const struct capread_result *r, int v6, const char *what)
{
    CHECK_MSG(r->nconvs == 1, "%s: %zu conversations", what, r->nconvs);
    if (r->nconvs != 1)
        return;
    const struct capread_conv *c = &r->convs[0];
    CHECK_MSG(c->ep[CAPREAD_CLIENT].port == 40000 && c->ep[CAPREAD_SERVER].port == 6379, "%s",
              what);
    CHECK_MSG(c->ep[CAPREAD_CLIENT].family == (v6 ? AF_INET6 : AF_INET), "%s", what);
    CHECK_MSG(!c->truncated, "%s", what);
    CHECK_MSG(c->nmsgs == 3, "%s: %zu messages", what, c->nmsgs);
    CHECK_MSG(msg_is(c, 0, CAPREAD_CLIENT, "heloworld\n"), "%s", what);
    CHECK_MSG(msg_is(c, 1, CAPREAD_SERVER, "hi\n"), "%s", what);
    CHECK_MSG(msg_is(c, 2, CAPREAD_CLIENT, "bye"), "%s", what);
    if (c->nmsgs == 3)
        CHECK_MSG(c->msgs[0].t < c->msgs[1].t && c->msgs[1].t < c->msgs[2].t, "%s", what);
}

static void test_link_types(void)
{
    static const struct {
        int dlt;
        const char *name;
    } links[] = {
        {DLT_RAW, "raw"},        {DLT_EN10MB, "ethernet+vlan"}, {DLT_LINUX_SLL, "sll"},
        {DLT_LINUX_SLL2, "sll2"}, {DLT_NULL, "null"},            {DLT_LOOP, "loop"},
    };
    for (size_t i = 0; i < sizeof links / sizeof links[0]; i++) {
        for (int v6 = 0; v6 < 2; v6++) {
            struct capread *cr = capread_new();
            conversation(cr, links[i].dlt, v6);
            struct capread_result r = {0};
            capread_finish(cr, &r);
            char what[64];
            snprintf(what, sizeof what, "%s %s", links[i].name, v6 ? "IPv6" : "IPv4");
            check_conversation(&r, v6, what);
            capread_free(&r);
        }
    }
}

/* Writes a file of link type dlt through libpcap and reads it back. */
static char tmpdir[] = "/tmp/capread.XXXXXX";

static void write_file(const char *path, int dlt, int v6, int with_udp)
{
    pcap_t *dead = pcap_open_dead(dlt, 65535);
    pcap_dumper_t *d = pcap_dump_open(dead, path);
    CHECK(d != NULL);
    if (!d) {
        pcap_close(dead);
        return;
    }
    struct capread *cr = capread_new(); /* unused: build() only */
    struct pkt p;
    int n = 0;
    struct {
        int a, ap, b, bp;
        uint32_t seq;
        int flags;
        const char *data;
    } seq[] = {
        {1, 40000, 2, 6379, 1000, SYN, ""},           {2, 6379, 1, 40000, 5000, SYN | ACK, ""},
        {1, 40000, 2, 6379, 1005, ACK, "world\n"},    {1, 40000, 2, 6379, 1001, ACK, "helo"},
        {1, 40000, 2, 6379, 1001, ACK, "hello"},      {2, 6379, 1, 40000, 5001, ACK, "hi\n"},
        {2, 6379, 1, 40000, 5001, ACK, "hi\n"},       {1, 40000, 2, 6379, 1011, ACK | FIN, "bye"},
    };
    for (size_t i = 0; i < sizeof seq / sizeof seq[0]; i++) {
        build(&p, dlt, v6, seq[i].a, seq[i].ap, seq[i].b, seq[i].bp, seq[i].seq, seq[i].flags,
              seq[i].data);
        struct pcap_pkthdr h = {.caplen = (bpf_u_int32)p.len, .len = (bpf_u_int32)p.len};
        h.ts.tv_sec = 1700000000;
        h.ts.tv_usec = ++n * 1000;
        pcap_dump((u_char *)d, &h, p.b);
        if (with_udp) {
            build(&p, dlt, v6, 1, 53, 2, 53, 0, 0, "");
            uint8_t *ip = p.b + (p.len - 40 - (v6 ? 20 : 0));
            ip[v6 ? 6 : 9] = IPPROTO_UDP;
            pcap_dump((u_char *)d, &h, p.b);
        }
    }
    capread_finish(cr, &(struct capread_result){0});
    pcap_dump_close(d);
    pcap_close(dead);
}

static void test_files(void)
{
    char path[128], err[ECHOKIT_ERR_LEN];
    struct capread_result r;
    snprintf(path, sizeof path, "%s/a.pcap", tmpdir);

    write_file(path, DLT_RAW, 0, 1);
    CHECK(capread_file(path, &r, err) == 0);
    check_conversation(&r, 0, "raw file");
    CHECK(r.skipped == 8 && r.packets == 16);
    CHECK(r.warning[0] == '\0');
    capread_free(&r);

    write_file(path, DLT_EN10MB, 1, 0);
    CHECK(capread_file(path, &r, err) == 0);
    check_conversation(&r, 1, "ethernet file");
    capread_free(&r);

    /* Cut in the middle of a record: what came before is kept, with a warning. */
    write_file(path, DLT_LINUX_SLL, 0, 0);
    FILE *f = fopen(path, "rb");
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fclose(f);
    CHECK(truncate(path, size - 5) == 0);
    CHECK(capread_file(path, &r, err) == 0);
    CHECK_MSG(strstr(r.warning, "truncated") != NULL, "warning: %s", r.warning);
    CHECK(r.nconvs == 1 && r.convs[0].nmsgs == 2 && msg_is(&r.convs[0], 1, CAPREAD_SERVER, "hi\n"));
    capread_free(&r);

    /* Only UDP: no conversation. */
    pcap_t *dead = pcap_open_dead(DLT_RAW, 65535);
    pcap_dumper_t *d = pcap_dump_open(dead, path);
    struct pkt p;
    build(&p, DLT_RAW, 0, 1, 53, 2, 53, 0, 0, "xx");
    p.b[9] = IPPROTO_UDP;
    struct pcap_pkthdr h = {.caplen = (bpf_u_int32)p.len, .len = (bpf_u_int32)p.len};
    pcap_dump((u_char *)d, &h, p.b);
    pcap_dump_close(d);
    pcap_close(dead);
    CHECK(capread_file(path, &r, err) == -1);
    CHECK_MSG(strstr(err, "no TCP conversation") != NULL, "%s", err);

    /* A link type it does not read. */
    dead = pcap_open_dead(DLT_IEEE802_11, 65535);
    d = pcap_dump_open(dead, path);
    pcap_dump(( u_char *)d, &h, p.b);
    pcap_dump_close(d);
    pcap_close(dead);
    CHECK(capread_file(path, &r, err) == -1);
    CHECK_MSG(strstr(err, "not supported") != NULL, "%s", err);

    /* Not a capture at all, and no file. */
    f = fopen(path, "wb");
    fputs("GET / HTTP/1.1\r\n\r\n and more text than a header", f);
    fclose(f);
    CHECK(capread_file(path, &r, err) == -1);
    CHECK_MSG(strstr(err, "not a readable capture") != NULL, "%s", err);
    unlink(path);
    CHECK(capread_file(path, &r, err) == -1);
    CHECK_MSG(strstr(err, path) != NULL, "%s", err);
}

/* Mid-stream capture (no SYN): the higher port is the client; a new SYN on
 * the same ports starts another conversation. */
static void test_direction_and_reuse(void)
{
    struct capread *cr = capread_new();
    feed(cr, DLT_RAW, 0, 2, 80, 1, 50000, 7, ACK, "answer");
    feed(cr, DLT_RAW, 0, 1, 50000, 2, 80, 9, ACK, "next");
    feed(cr, DLT_RAW, 0, 1, 50000, 2, 80, 100, SYN, "");
    feed(cr, DLT_RAW, 0, 1, 50000, 2, 80, 101, ACK, "again");
    struct capread_result r = {0};
    capread_finish(cr, &r);
    CHECK(r.nconvs == 2);
    if (r.nconvs == 2) {
        CHECK(r.convs[0].ep[CAPREAD_CLIENT].port == 50000);
        CHECK(msg_is(&r.convs[0], 0, CAPREAD_SERVER, "answer"));
        CHECK(msg_is(&r.convs[0], 1, CAPREAD_CLIENT, "next"));
        CHECK(msg_is(&r.convs[1], 0, CAPREAD_CLIENT, "again"));
    }
    capread_free(&r);
}

/* A hole never filled: the bytes after it are kept, the conversation is
 * truncated. Past the cap on waiting segments, the same, without waiting
 * for the end. Sequence numbers wrap. */
static void test_holes_and_caps(void)
{
    struct capread *cr = capread_new();
    feed(cr, DLT_RAW, 0, 1, 40000, 2, 80, 0xfffffffe, SYN, "");
    feed(cr, DLT_RAW, 0, 1, 40000, 2, 80, 0xffffffff, ACK, "ab");
    feed(cr, DLT_RAW, 0, 1, 40000, 2, 80, 5, ACK, "after-hole");
    struct capread_result r = {0};
    capread_finish(cr, &r);
    CHECK(r.nconvs == 1 && r.convs[0].truncated && msg_is(&r.convs[0], 0, CAPREAD_CLIENT, "abafter-hole"));
    capread_free(&r);

    cr = capread_new();
    feed(cr, DLT_RAW, 0, 1, 40000, 2, 80, 0, SYN, "");
    for (uint32_t i = 0; i < CAPREAD_OOO_SEGS + 10; i++)
        feed(cr, DLT_RAW, 0, 1, 40000, 2, 80, 100 + i * 2, ACK, "x"); /* every one a hole */
    capread_finish(cr, &r);
    CHECK(r.nconvs == 1 && r.convs[0].truncated && r.convs[0].nmsgs == 1 &&
          r.convs[0].msgs[0].len == CAPREAD_OOO_SEGS + 10);
    capread_free(&r);

    /* Junk: short and mangled records are skipped, never read past. */
    cr = capread_new();
    struct pkt p;
    build(&p, DLT_RAW, 1, 1, 1, 2, 2, 0, ACK, "data");
    for (size_t n = 0; n < 60; n++) /* cut before the end of the TCP header */
        capread_packet(cr, DLT_RAW, p.b, n, p.len, 0);
    p.b[40 + 12] = 0xf0; /* data offset past the end */
    capread_packet(cr, DLT_RAW, p.b, p.len, p.len, 0);
    capread_packet(cr, 9999, p.b, p.len, p.len, 0);
    capread_finish(cr, &r);
    CHECK(r.nconvs == 0 && r.skipped == 62);

    /* Cut in the payload (a snapshot length): kept, truncated. */
    cr = capread_new();
    build(&p, DLT_RAW, 0, 1, 1000, 2, 2, 0, ACK, "data");
    capread_packet(cr, DLT_RAW, p.b, p.len - 2, p.len, 0);
    capread_finish(cr, &r);
    CHECK(r.nconvs == 1 && r.convs[0].truncated && msg_is(&r.convs[0], 0, CAPREAD_CLIENT, "da"));
    capread_free(&r);
    capread_free(&r);
}

/* Many small segments in any order: 100000 one-byte segments in reverse
 * order, then shuffled with duplicates and overlaps, come out whole and in
 * order (the waiting segments are a heap: no walk of a list per segment,
 * and room for that many). */
static void test_many_segments(void)
{
    enum { N = 100000 };
    static char want[N + 1];
    for (int i = 0; i < N; i++)
        want[i] = (char)('a' + i % 26);
    struct capread *cr = capread_new();
    feed(cr, DLT_RAW, 0, 1, 40000, 2, 80, 0xffff0000u, SYN, ""); /* wraps on the way */
    char one[2] = {0};
    for (int i = N - 1; i >= 0; i--) {
        one[0] = want[i];
        feed(cr, DLT_RAW, 0, 1, 40000, 2, 80, 0xffff0001u + (uint32_t)i, ACK, one);
    }
    struct capread_result r = {0};
    capread_finish(cr, &r);
    CHECK(r.nconvs == 1 && !r.convs[0].truncated && r.convs[0].nmsgs == 1 &&
          r.convs[0].msgs[0].len == N && !memcmp(r.convs[0].msgs[0].data, want, N));
    capread_free(&r);

    /* shuffled 4-byte segments at every 3 bytes (each overlaps the next),
     * every one sent twice */
    enum { M = 20000 };
    static uint32_t idx[2 * M];
    for (uint32_t i = 0; i < 2 * M; i++)
        idx[i] = i % M;
    uint32_t x = 12345;
    for (uint32_t i = 2 * M - 1; i > 0; i--) {
        x = x * 1103515245u + 12345u;
        uint32_t j = (x >> 8) % (i + 1), tmp = idx[i];
        idx[i] = idx[j];
        idx[j] = tmp;
    }
    cr = capread_new();
    feed(cr, DLT_RAW, 0, 1, 40000, 2, 80, 0, SYN, "");
    char four[5] = {0};
    for (uint32_t i = 0; i < 2 * M; i++) {
        uint32_t k = idx[i] * 3;
        memcpy(four, want + k, 4);
        feed(cr, DLT_RAW, 0, 1, 40000, 2, 80, 1 + k, ACK, four);
    }
    capread_finish(cr, &r);
    CHECK(r.nconvs == 1 && !r.convs[0].truncated && r.convs[0].nmsgs == 1 &&
          r.convs[0].msgs[0].len == 3 * (M - 1) + 4 &&
          !memcmp(r.convs[0].msgs[0].data, want, 3 * (M - 1) + 4));
    capread_free(&r);
}

/* The memory cap counts what is allocated, not only payload bytes: many
 * one-byte messages (each with its bookkeeping) and many waiting segments
 * hit it long before their payload does, in one conversation or spread
 * over many. */
static void test_memory_cap(void)
{
    struct capread *cr = capread_new();
    capread_limit(cr, 64 * 1024);
    feed(cr, DLT_RAW, 0, 1, 40000, 2, 80, 0, SYN, "");
    feed(cr, DLT_RAW, 0, 2, 80, 1, 40000, 0, SYN | ACK, "");
    for (uint32_t i = 0; i < 4000; i++) { /* 8000 payload bytes */
        feed(cr, DLT_RAW, 0, 1, 40000, 2, 80, 1 + i, ACK, "q");
        feed(cr, DLT_RAW, 0, 2, 80, 1, 40000, 1 + i, ACK, "a");
    }
    struct capread_result r = {0};
    capread_finish(cr, &r);
    CHECK(r.nconvs == 1 && r.convs[0].truncated && r.convs[0].nmsgs < 8000);
    capread_free(&r);

    /* 200 conversations, each with 1000 bytes waiting behind a hole (well
     * within the per-direction caps): the cap bounds them all together. */
    cr = capread_new();
    capread_limit(cr, 64 * 1024);
    char kb[1001];
    memset(kb, 'w', 1000);
    kb[1000] = 0;
    for (int c = 0; c < 200; c++) {
        feed(cr, DLT_RAW, 0, 1, 1000 + c, 2, 80, 0, SYN, "");
        feed(cr, DLT_RAW, 0, 1, 1000 + c, 2, 80, 10, ACK, kb);
    }
    capread_finish(cr, &r);
    size_t total = 0;
    for (size_t i = 0; i < r.nconvs; i++)
        for (size_t k = 0; k < r.convs[i].nmsgs; k++)
            total += r.convs[i].msgs[k].cap;
    CHECK(r.nconvs == 200 && total <= 64 * 1024);
    capread_free(&r);
}

int main(void)
{
    CHECK(mkdtemp(tmpdir) != NULL);
    test_link_types();
    test_files();
    test_direction_and_reuse();
    test_holes_and_caps();
    test_memory_cap();
    test_many_segments();
    rmdir(tmpdir);
    return check_done("capread");
}

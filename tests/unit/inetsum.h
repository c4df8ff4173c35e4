/* The Internet checksum as a receiver checks it (RFC 1071), written apart from
 * src/pcap.c's so that the pcap tests and the pcap fuzz harness read the files
 * pcap.c writes with a summation of their own: bytes at even offsets weigh 256,
 * bytes at odd offsets 1 (each piece starts at an even offset); a header with a
 * right checksum sums to 0xffff once folded. Header-only: each reader includes
 * it. */
#ifndef ECHOKIT_TESTS_INETSUM_H
#define ECHOKIT_TESTS_INETSUM_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline uint16_t get16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static inline uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline uint64_t sum_bytes(uint64_t acc, const uint8_t *p, size_t len)
{
    uint64_t even = 0, odd = 0;
    for (size_t i = 0; i < len; i++) {
        if (i & 1)
            odd += p[i];
        else
            even += p[i];
    }
    return acc + (even << 8) + odd;
}

static inline uint16_t fold(uint64_t acc)
{
    while (acc >> 16)
        acc = (acc & 0xffff) + (acc >> 16);
    return (uint16_t)acc;
}

static inline int sums_right(uint64_t acc)
{
    return fold(acc) == 0xffff;
}

/* The pseudo-header's sum for protocol `proto` carrying `len` bytes (RFC 768
 * and RFC 793 for IPv4, RFC 8200 8.1 for IPv6); src and dst hold 4 or 16
 * bytes. */
static inline uint64_t pseudo_sum(int v6, const uint8_t *src, const uint8_t *dst, uint8_t proto,
                                  size_t len)
{
    uint8_t ph[40] = {0};
    if (v6) {
        memcpy(ph, src, 16);
        memcpy(ph + 16, dst, 16);
        ph[32] = (uint8_t)(len >> 24);
        ph[33] = (uint8_t)(len >> 16);
        ph[34] = (uint8_t)(len >> 8);
        ph[35] = (uint8_t)len;
        ph[39] = proto;
        return sum_bytes(0, ph, 40);
    }
    memcpy(ph, src, 4);
    memcpy(ph + 4, dst, 4);
    ph[9] = proto;
    ph[10] = (uint8_t)(len >> 8);
    ph[11] = (uint8_t)len;
    return sum_bytes(0, ph, 12);
}

#endif

#ifndef ECHOKIT_CODEC_H
#define ECHOKIT_CODEC_H
/* Byte codecs the protocol modules need and that would be slow or error-prone
 * in Lua: SHA-1 (RFC 3174, OpenSSL's), base64 (RFC 4648 section 4), and the WebSocket
 * XOR mask (RFC 6455 section 5.3). No Lua, no libev. */
#include <stddef.h>
#include <stdint.h>

#define CODEC_SHA1_LEN 20

/* Writes the 20-byte SHA-1 digest of data[0..len) to out. */
void codec_sha1(const void *data, size_t len, unsigned char out[CODEC_SHA1_LEN]);

/* Bytes codec_base64_encode() writes for len input bytes (no NUL). */
size_t codec_base64_len(size_t len);

/* Encodes with the standard alphabet and '=' padding; out must hold
 * codec_base64_len(len) bytes. Returns the length written. */
size_t codec_base64_encode(const unsigned char *in, size_t len, char *out);

/* Decodes strict base64: standard alphabet, length a multiple of 4, padding
 * only at the end, no whitespace, zero bits after the last symbol. out must hold
 * len / 4 * 3 bytes. Returns the decoded length, or -1 for invalid input. */
long codec_base64_decode(const char *in, size_t len, unsigned char *out);

/* XORs data[0..len) in place with the 4-byte key, starting at key phase
 * `phase` (the count of bytes masked before, mod 4). */
void codec_mask(unsigned char *data, size_t len, const unsigned char key[4], size_t phase);

#endif

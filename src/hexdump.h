#ifndef ECHOKIT_HEXDUMP_H
#define ECHOKIT_HEXDUMP_H
#include <stddef.h>

/* Bytes hexdump_format() may write for len input bytes, including the NUL. */
size_t hexdump_bound(size_t len);

/* Formats data exactly as `hexdump -C` does (repeated lines folded into "*",
 * closing offset line), with addresses starting at offset. out must hold
 * hexdump_bound(len) bytes. Returns the length written (0 for empty input). */
size_t hexdump_format(const unsigned char *data, size_t len, size_t offset, char *out);

#endif

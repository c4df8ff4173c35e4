#include "hexdump.h"

#include <string.h>

#define LINE_LEN 79 /* "00000000  " + 16 * "xx " + " " + "|" + 16 + "|" + "\n" */

size_t hexdump_bound(size_t len)
{
    return (len / 16 + 3) * (LINE_LEN + 8);
}

static const char hexdigits[] = "0123456789abcdef";

static char *put_offset(char *p, size_t off)
{
    /* hexdump prints at least 8 digits and more when the offset needs them. */
    char tmp[2 * sizeof(size_t)];
    int n = 0;
    do {
        tmp[n++] = hexdigits[off & 15];
        off >>= 4;
    } while (off);
    for (int i = n; i < 8; i++)
        *p++ = '0';
    while (n)
        *p++ = tmp[--n];
    return p;
}

size_t hexdump_format(const unsigned char *data, size_t len, size_t offset, char *out)
{
    char *p = out;
    int squeezing = 0;
    if (len == 0) {
        *out = '\0';
        return 0;
    }
    for (size_t i = 0; i < len; i += 16) {
        size_t n = len - i < 16 ? len - i : 16;
        if (n == 16 && i >= 16 && memcmp(data + i, data + i - 16, 16) == 0) {
            if (!squeezing) {
                *p++ = '*';
                *p++ = '\n';
                squeezing = 1;
            }
            continue;
        }
        squeezing = 0;
        p = put_offset(p, offset + i);
        *p++ = ' ';
        *p++ = ' ';
        for (size_t j = 0; j < 16; j++) {
            if (j < n) {
                *p++ = hexdigits[data[i + j] >> 4];
                *p++ = hexdigits[data[i + j] & 15];
            } else {
                *p++ = ' ';
                *p++ = ' ';
            }
            *p++ = ' ';
            if (j == 7)
                *p++ = ' ';
        }
        *p++ = ' ';
        *p++ = '|';
        for (size_t j = 0; j < n; j++) {
            unsigned char c = data[i + j];
            *p++ = (c >= 0x20 && c < 0x7f) ? (char)c : '.';
        }
        *p++ = '|';
        *p++ = '\n';
    }
    p = put_offset(p, offset + len);
    *p++ = '\n';
    *p = '\0';
    return (size_t)(p - out);
}

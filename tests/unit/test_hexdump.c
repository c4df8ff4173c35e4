/* hexdump_format() against the real `hexdump -C` on the same bytes: random
 * data of many lengths, runs of repeated lines (the "*" folding), and start
 * offsets (compared with `hexdump -C -s N`). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "hexdump.h"

static char *run_hexdump(const unsigned char *data, size_t len, size_t skip, size_t *outlen)
{
    char path[] = "/tmp/echokit-hexdump-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0 || write(fd, data, len) != (ssize_t)len) {
        perror("temp file");
        exit(1);
    }
    close(fd);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "hexdump -C -s %zu %s", skip, path);
    FILE *p = popen(cmd, "r");
    size_t cap = hexdump_bound(len) + 4096, n = 0;
    char *out = malloc(cap);
    size_t r;
    while ((r = fread(out + n, 1, cap - n, p)) > 0)
        n += r;
    CHECK(pclose(p) == 0);
    unlink(path);
    *outlen = n;
    return out;
}

static void compare(const unsigned char *data, size_t len, size_t skip, const char *what)
{
    size_t want_len;
    char *want = run_hexdump(data, len, skip, &want_len);
    char *got = malloc(hexdump_bound(len - skip));
    size_t got_len = hexdump_format(data + skip, len - skip, skip, got);
    CHECK(got_len < hexdump_bound(len - skip));
    int same = got_len == want_len && memcmp(got, want, got_len) == 0;
    CHECK_MSG(same, "%s: len %zu skip %zu differs from hexdump -C:\n--- want\n%.*s--- got\n%.*s",
              what, len, skip, (int)(want_len > 2000 ? 2000 : want_len), want,
              (int)(got_len > 2000 ? 2000 : got_len), got);
    free(want);
    free(got);
}

int main(void)
{
    srand(4242);
    enum { MAX = 5000 };
    unsigned char *buf = malloc(MAX);
    size_t lens[] = {0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 48, 100, 255, 256, 1000, MAX};
    for (size_t i = 0; i < sizeof lens / sizeof *lens; i++) {
        for (size_t j = 0; j < MAX; j++)
            buf[j] = (unsigned char)rand();
        compare(buf, lens[i], 0, "random");
    }
    /* Repeated 16-byte lines, in runs of different lengths and alignments. */
    for (int round = 0; round < 40; round++) {
        size_t len = (size_t)(rand() % 600);
        for (size_t j = 0; j < len; j++)
            buf[j] = (unsigned char)((rand() % 4) ? 'A' : rand());
        compare(buf, len, 0, "repeats");
        memset(buf, 0, len);
        compare(buf, len, 0, "zeros");
        if (len > 20)
            compare(buf, len, (size_t)(rand() % (int)len), "zeros offset");
    }
    for (int round = 0; round < 20; round++) {
        size_t len = (size_t)(rand() % MAX) + 1;
        for (size_t j = 0; j < len; j++)
            buf[j] = (unsigned char)rand();
        compare(buf, len, (size_t)rand() % len, "offset");
    }
    /* Printable edges: 0x1f, 0x20, 0x7e, 0x7f, 0x80, 0xff. */
    unsigned char edges[] = {0x1f, 0x20, 0x7e, 0x7f, 0x80, 0xff, '|', '\n', 0};
    compare(edges, sizeof edges, 0, "edges");
    free(buf);
    return check_done("test_hexdump");
}

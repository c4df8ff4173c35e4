/* The output queue against a reference model: random appends, partial writes
 * through a socket pair with a small buffer, and reads that must return the
 * same bytes in the same order. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"
#include "outq.h"

static unsigned rng = 12345;
static unsigned next_rand(void)
{
    rng = rng * 1103515245u + 12345u;
    return rng >> 8;
}

static void test_append_consume(void)
{
    struct outq q = {0};
    CHECK(q.head == NULL && q.len == 0);
    CHECK(outq_append(&q, "hello", 5) == 0);
    CHECK(q.len == 5 && q.head == q.tail);
    CHECK(outq_append(&q, " world", 6) == 0);
    CHECK(q.len == 11 && q.head == q.tail); /* small appends share a block */
    outq_consume(&q, 3);
    CHECK(q.len == 8);
    CHECK(memcmp(q.head->data + q.head->start, "lo world", 8) == 0);
    outq_consume(&q, 8);
    CHECK(q.len == 0 && q.head == NULL && q.tail == NULL); /* empty holds nothing */

    /* A large append gets one block of its own size. */
    static char big[3 * OUTQ_BLOCK + 7];
    memset(big, 'x', sizeof big);
    CHECK(outq_append(&q, "a", 1) == 0);
    CHECK(outq_append(&q, big, sizeof big) == 0);
    CHECK(q.len == sizeof big + 1);
    CHECK(q.head != q.tail);
    outq_clear(&q);
    CHECK(q.len == 0 && q.head == NULL && q.tail == NULL);
}

static void test_against_model(void)
{
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    int small = 4096;
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    fcntl(sv[0], F_SETFL, O_NONBLOCK);
    fcntl(sv[1], F_SETFL, O_NONBLOCK);

    enum { TOTAL = 4 << 20 };
    unsigned char *sent = malloc(TOTAL), *got = malloc(TOTAL);
    size_t nsent = 0, ngot = 0;
    struct outq q = {0};
    int writes = 0, partial = 0;
    while (ngot < TOTAL) {
        unsigned op = next_rand() % 3;
        if (op == 0 && nsent < TOTAL) {
            size_t n = next_rand() % 70000 + 1;
            if (n > TOTAL - nsent)
                n = TOTAL - nsent;
            for (size_t i = 0; i < n; i++)
                sent[nsent + i] = (unsigned char)next_rand();
            CHECK(outq_append(&q, sent + nsent, n) == 0);
            nsent += n;
        } else if (op == 1) {
            size_t before = q.len;
            ssize_t w = outq_write(&q, sv[0]);
            CHECK(w >= 0);
            CHECK(q.len == before - (size_t)w);
            writes++;
            if (w > 0 && (size_t)w < before)
                partial++;
        } else {
            ssize_t r = read(sv[1], got + ngot, TOTAL - ngot);
            if (r > 0)
                ngot += (size_t)r;
            else
                CHECK(r < 0 && errno == EAGAIN);
        }
        /* Invariant: what was read plus what is in flight or queued is what was sent. */
        CHECK(ngot + q.len <= nsent);
    }
    CHECK(q.len == 0 && q.head == NULL);
    CHECK(memcmp(sent, got, TOTAL) == 0);
    CHECK(partial > 0); /* the small socket buffer forced partial writes */
    printf("outq model: %d writes, %d partial\n", writes, partial);
    free(sent);
    free(got);
    close(sv[0]);
    close(sv[1]);
}

static void test_write_error(void)
{
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    close(sv[1]);
    struct outq q = {0};
    outq_append(&q, "data", 4);
    signal(SIGPIPE, SIG_IGN);
    ssize_t w = outq_write(&q, sv[0]);
    CHECK(w == -1 && errno == EPIPE);
    CHECK(q.len == 4); /* nothing consumed on error */
    outq_clear(&q);
    close(sv[0]);
}

int main(void)
{
    test_append_consume();
    test_against_model();
    test_write_error();
    return check_done("test_outq");
}

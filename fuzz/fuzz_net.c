/* net_parse_addr / net_parse_addr2 on any string: never a crash, and what
 * parses is a well-formed address that formats and parses back to itself. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/un.h>

#include "fuzz.h"
#include "net.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char spec[1025];
    if (!fuzz_cstring(data, size, spec, sizeof spec))
        return 0;

    struct net_addr a;
    char err[ECHOKIT_ERR_LEN];
    char host[300];
    int port = -1;
    err[0] = '\0';
    int rc = net_parse_addr2(spec, 0, &a, host, sizeof host, &port, err);
    FUZZ_CHECK(rc == -1 || rc == 0 || rc == 1, "rc %d", rc);
    if (rc == -1)
        FUZZ_CHECK(err[0] && memchr(err, '\0', sizeof err), "no error message");
    if (rc == 1) {
        FUZZ_CHECK(port >= 0 && port <= 65535, "port %d", port);
        /* The name handed back is the spec's host part, all of it: the text
         * in brackets, or before the last colon. */
        const char *from = spec, *to;
        if (spec[0] == '[') {
            from = spec + 1;
            to = strchr(spec, ']');
        } else {
            to = strrchr(spec, ':');
        }
        FUZZ_CHECK(to && strlen(host) == (size_t)(to - from) && memcmp(host, from, strlen(host)) == 0,
                   "'%s' gave the name '%s'", spec, host);
    }

    struct net_addr b;
    char err2[ECHOKIT_ERR_LEN];
    int rc2 = net_parse_addr(spec, 0, &b, err2);
    /* Without a host buffer a name is an error, a numeric address the same. */
    FUZZ_CHECK(rc2 == (rc == 0 ? 0 : -1), "net_parse_addr %d, net_parse_addr2 %d", rc2, rc);
    if (rc != 0)
        return 0;
    FUZZ_CHECK(a.len == b.len && memcmp(&a.ss, &b.ss, a.len) == 0, "the two parses differ");

    int fam = a.ss.ss_family;
    FUZZ_CHECK(fam == AF_INET || fam == AF_INET6 || fam == AF_UNIX, "family %d", fam);
    if (fam == AF_INET)
        FUZZ_CHECK(a.len == sizeof(struct sockaddr_in), "len %u", (unsigned)a.len);
    if (fam == AF_INET6)
        FUZZ_CHECK(a.len == sizeof(struct sockaddr_in6), "len %u", (unsigned)a.len);
    if (fam == AF_UNIX) {
        const struct sockaddr_un *un = (const struct sockaddr_un *)&a.ss;
        FUZZ_CHECK(a.len <= sizeof *un, "len %u", (unsigned)a.len);
        FUZZ_CHECK(un->sun_path[a.len - offsetof(struct sockaddr_un, sun_path) - 1] == '\0',
                   "unix path not terminated");
    }

    /* Formatting and parsing again gives the same address. */
    char text[200];
    net_addr_format((struct sockaddr *)&a.ss, a.len, text, sizeof text);
    struct net_addr c;
    int rc3 = net_parse_addr(text, 0, &c, err2);
    FUZZ_CHECK(rc3 == 0, "'%s' formatted as '%s', which does not parse: %s", spec, text, err2);
    FUZZ_CHECK(c.len == a.len && memcmp(&c.ss, &a.ss, a.len) == 0,
               "'%s' formatted as '%s', which parses to another address", spec, text);

    char h[200];
    int p;
    net_addr_split((struct sockaddr *)&a.ss, a.len, h, sizeof h, &p);
    FUZZ_CHECK(p >= 0 && p <= 65535, "port %d", p);
    return 0;
}

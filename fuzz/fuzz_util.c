/* util_parse_size and util_parse_seconds (command-line values) on any
 * string, util_parse_size checked against a reference parser written from
 * its contract: digits, an optional k/m/g (any case) and then an optional b,
 * refused if the bytes do not fit a size_t. */
#include <math.h>
#include <string.h>

#include "fuzz.h"
#include "util.h"

static int ref_size(const char *s, size_t *out)
{
    if (!(*s >= '0' && *s <= '9'))
        return -1;
    size_t v = 0;
    int overflow = 0;
    for (; *s >= '0' && *s <= '9'; s++) {
        size_t d = (size_t)(*s - '0');
        if (v > (SIZE_MAX - d) / 10)
            overflow = 1;
        else
            v = v * 10 + d;
    }
    unsigned shift = 0;
    switch (*s) {
    case 'k': case 'K': shift = 10; s++; break;
    case 'm': case 'M': shift = 20; s++; break;
    case 'g': case 'G': shift = 30; s++; break;
    default: break;
    }
    if (shift && (*s == 'b' || *s == 'B'))
        s++;
    if (*s || overflow || v > (SIZE_MAX >> shift))
        return -1;
    *out = v << shift;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char s[257];
    if (!fuzz_cstring(data, size, s, sizeof s))
        return 0;

    size_t got = 0, want = 0;
    int rc = util_parse_size(s, &got), rrc = ref_size(s, &want);
    FUZZ_CHECK(rc == rrc, "util_parse_size(\"%s\") = %d, reference %d", s, rc, rrc);
    if (rc == 0)
        FUZZ_CHECK(got == want, "util_parse_size(\"%s\") = %zu, reference %zu", s, got, want);

    double secs = -1;
    if (util_parse_seconds(s, &secs) == 0)
        FUZZ_CHECK(isfinite(secs) && secs >= 0, "util_parse_seconds(\"%s\") = %g",
                   s, secs);
    return 0;
}

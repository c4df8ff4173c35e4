/* The reference for echokit.glob: Redis's stringmatchlen (src/util.c, BSD
 * licence), case-sensitive, reduced to what glob.lua promises, with two
 * deliberate differences: bytes compare as unsigned (Redis compares `char`,
 * signed on x86, so its ranges over bytes >= 0x80 differ), and reads stop at
 * the pattern's length (Redis relies on the NUL after an sds). An empty
 * subject is matched by a pattern of stars only (Redis says no unless the
 * pattern is empty too; its KEYS command special-cases "*"; glob.lua's "*"
 * is "any run of bytes", the empty run included). */
#include <stddef.h>

int fuzz_glob_ref(const unsigned char *p, size_t plen, const unsigned char *s, size_t slen);

static int match(const unsigned char *pattern, size_t patternLen, const unsigned char *string,
                 size_t stringLen, int *skipLonger)
{
    while (patternLen && stringLen) {
        switch (pattern[0]) {
        case '*':
            while (patternLen > 1 && pattern[1] == '*') {
                pattern++;
                patternLen--;
            }
            if (patternLen == 1)
                return 1;
            while (stringLen) {
                if (match(pattern + 1, patternLen - 1, string, stringLen, skipLonger))
                    return 1;
                if (*skipLonger)
                    return 0;
                string++;
                stringLen--;
            }
            *skipLonger = 1;
            return 0;
        case '?':
            string++;
            stringLen--;
            break;
        case '[': {
            int not, hit;
            pattern++;
            patternLen--;
            not = patternLen && pattern[0] == '^';
            if (not) {
                pattern++;
                patternLen--;
            }
            hit = 0;
            while (1) {
                if (patternLen >= 2 && pattern[0] == '\\') {
                    pattern++;
                    patternLen--;
                    if (pattern[0] == string[0])
                        hit = 1;
                } else if (patternLen && pattern[0] == ']') {
                    break;
                } else if (patternLen == 0) {
                    pattern--;
                    patternLen++;
                    break;
                } else if (patternLen >= 3 && pattern[1] == '-') {
                    int start = pattern[0], end = pattern[2], c = string[0];
                    if (start > end) {
                        int t = start;
                        start = end;
                        end = t;
                    }
                    pattern += 2;
                    patternLen -= 2;
                    if (c >= start && c <= end)
                        hit = 1;
                } else if (pattern[0] == string[0]) {
                    hit = 1;
                }
                pattern++;
                patternLen--;
            }
            if (not)
                hit = !hit;
            if (!hit)
                return 0;
            string++;
            stringLen--;
            break;
        }
        case '\\':
            if (patternLen >= 2) {
                pattern++;
                patternLen--;
            }
            /* fall through */
        default:
            if (pattern[0] != string[0])
                return 0;
            string++;
            stringLen--;
            break;
        }
        pattern++;
        patternLen--;
        if (stringLen == 0) {
            while (patternLen && *pattern == '*') {
                pattern++;
                patternLen--;
            }
            break;
        }
    }
    return patternLen == 0 && stringLen == 0;
}

int fuzz_glob_ref(const unsigned char *p, size_t plen, const unsigned char *s, size_t slen)
{
    if (slen == 0) {
        for (size_t i = 0; i < plen; i++)
            if (p[i] != '*')
                return 0;
        return 1;
    }
    int skip = 0;
    return match(p, plen, s, slen, &skip);
}

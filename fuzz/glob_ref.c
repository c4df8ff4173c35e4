/* The reference for echokit.glob, written from glob.lua's contract (Redis's
 * pattern rules) in a different shape from the module, so that the two can
 * be compared: the pattern is first cut into tokens (a byte, ?, *, or a set
 * of bytes), then matched by dynamic programming over the subject's
 * positions, with no backtracking at all.
 *
 * The rules: * any run of bytes (the empty one too), ? one byte, \x the byte
 * x (a \ at the very end is itself), [set] one byte of the set: ^ first
 * negates it, \x is x, a-b a range (reversed ends are swapped), anything
 * else is itself, ] ends it, and an unterminated [ takes the rest of the
 * pattern. Bytes compare as unsigned. */
#include <stdlib.h>
#include <string.h>

int fuzz_glob_ref(const unsigned char *p, size_t plen, const unsigned char *s, size_t slen);

enum kind { BYTE, ANY, STAR, SET };

struct token {
    enum kind kind;
    unsigned char byte;
    unsigned char set[32]; /* bitmap of accepted bytes (SET) */
};

static void set_add(struct token *t, unsigned c)
{
    t->set[c >> 3] |= (unsigned char)(1u << (c & 7));
}

static int set_has(const struct token *t, unsigned c)
{
    return (t->set[c >> 3] >> (c & 7)) & 1;
}

/* The set starting just after a '[' at p[i]; returns the index past it. */
static size_t parse_set(const unsigned char *p, size_t plen, size_t i, struct token *t)
{
    int negate = i < plen && p[i] == '^';
    if (negate)
        i++;
    while (i < plen && p[i] != ']') {
        if (p[i] == '\\' && i + 1 < plen) {
            set_add(t, p[i + 1]);
            i += 2;
        } else if (i + 2 < plen && p[i + 1] == '-') {
            unsigned a = p[i], b = p[i + 2];
            if (a > b) {
                unsigned x = a;
                a = b;
                b = x;
            }
            for (unsigned c = a; c <= b; c++)
                set_add(t, c);
            i += 3;
        } else {
            set_add(t, p[i]);
            i++;
        }
    }
    if (i < plen)
        i++; /* the ']' */
    if (negate)
        for (int k = 0; k < 32; k++)
            t->set[k] = (unsigned char)~t->set[k];
    return i;
}

static size_t tokenize(const unsigned char *p, size_t plen, struct token *out)
{
    size_t n = 0;
    for (size_t i = 0; i < plen;) {
        struct token *t = &out[n++];
        memset(t, 0, sizeof *t);
        switch (p[i]) {
        case '*':
            t->kind = STAR;
            i++;
            break;
        case '?':
            t->kind = ANY;
            i++;
            break;
        case '[':
            t->kind = SET;
            i = parse_set(p, plen, i + 1, t);
            break;
        case '\\':
            t->kind = BYTE;
            t->byte = i + 1 < plen ? p[i + 1] : p[i];
            i += i + 1 < plen ? 2 : 1;
            break;
        default:
            t->kind = BYTE;
            t->byte = p[i++];
            break;
        }
    }
    return n;
}

int fuzz_glob_ref(const unsigned char *p, size_t plen, const unsigned char *s, size_t slen)
{
    struct token *tok = malloc((plen ? plen : 1) * sizeof *tok);
    unsigned char *can = calloc(slen + 1, 1), *next = calloc(slen + 1, 1);
    if (!tok || !can || !next)
        abort();
    size_t n = tokenize(p, plen, tok);
    /* can[j]: the tokens so far match the subject's first j bytes */
    can[0] = 1;
    for (size_t k = 0; k < n; k++) {
        const struct token *t = &tok[k];
        memset(next, 0, slen + 1);
        if (t->kind == STAR) {
            int any = 0;
            for (size_t j = 0; j <= slen; j++) {
                any |= can[j];
                next[j] = (unsigned char)any;
            }
        } else {
            for (size_t j = 0; j < slen; j++) {
                if (!can[j])
                    continue;
                int ok = t->kind == ANY || (t->kind == BYTE && s[j] == t->byte) ||
                         (t->kind == SET && set_has(t, s[j]));
                if (ok)
                    next[j + 1] = 1;
            }
        }
        unsigned char *x = can;
        can = next;
        next = x;
    }
    int result = can[slen];
    free(tok);
    free(can);
    free(next);
    return result;
}

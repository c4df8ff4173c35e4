#ifndef ECHOKIT_FUZZ_H
#define ECHOKIT_FUZZ_H
/* Shared by the harnesses: the libFuzzer entry points and a check that
 * aborts (a finding, under libFuzzer and under fuzz/driver.c alike). */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define FUZZ_CHECK(cond, ...)                                                   \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                       \
            fputc('\n', stderr);                                                \
            abort();                                                            \
        }                                                                       \
    } while (0)

/* The input as a C string in buf (cap bytes, NUL included), or NULL when
 * it does not fit: harnesses of string parsers skip those inputs. */
static inline const char *fuzz_cstring(const uint8_t *data, size_t size, char *buf, size_t cap)
{
    if (size >= cap)
        return NULL;
    memcpy(buf, data, size);
    buf[size] = '\0';
    return buf;
}

#endif

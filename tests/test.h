/* test.h — a tiny test harness: CHECK records a failure with file:line and goes on; TEST_MAIN_END
 * prints "N passed, N failed" and returns non-zero on any failure. One check = one counted case. */
#ifndef SD3_TEST_H
#define SD3_TEST_H

#include <stdio.h>
#include <string.h>

static int t_passed = 0, t_failed = 0;

#define CHECK(cond, ...)                                                                               \
    do {                                                                                               \
        if (cond) t_passed++;                                                                          \
        else {                                                                                         \
            t_failed++;                                                                                \
            printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                                     \
            printf(__VA_ARGS__);                                                                       \
            printf("\n");                                                                              \
        }                                                                                              \
    } while (0)

#define TEST_MAIN_END(name)                                                                            \
    do {                                                                                               \
        printf("%s: %d passed, %d failed\n", name, t_passed, t_failed);                                \
        return t_failed ? 1 : 0;                                                                       \
    } while (0)

#endif

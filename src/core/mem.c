/* mem.c — aligned allocation, peak RSS, the monotonic clock. */
#include <stdint.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include "core/core.h"

/* 64-byte aligned so any SIMD width can load rows at their start. */
void *sd3_malloc(size_t n) {
    if (n == 0) n = 1;
    if (n > SIZE_MAX - 64) return NULL;
    size_t rounded = (n + 63) & ~(size_t)63;
    return aligned_alloc(64, rounded);
}

void *sd3_calloc(size_t count, size_t size) {
    if (size && count > SIZE_MAX / size) return NULL;
    void *p = sd3_malloc(count * size);
    size_t total = count * size;
    if (p) memset(p, 0, total ? total : 1);
    return p;
}

void sd3_free(void *p) { free(p); }

size_t sd3_peak_rss(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (size_t)ru.ru_maxrss * 1024;  /* Linux reports KiB */
}

double sd3_time(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

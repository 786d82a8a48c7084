/* fuzz_split.h — cut a fuzz input into parts at FZ_SEP, for targets whose API reads several files of
 * one folder: part k becomes file k; a part that is missing (fewer separators) leaves its file absent. */
#ifndef SD3_FUZZ_SPLIT_H
#define SD3_FUZZ_SPLIT_H

#include <string.h>

#define FZ_SEP "\n#@sd3c-next-file@#\n"

/* Fill ptr/len with up to max parts; returns the number of parts found (>= 1). */
static inline int fz_split(const uint8_t *data, size_t size, const uint8_t **ptr, size_t *len, int max) {
    size_t sl = strlen(FZ_SEP);
    int n = 0;
    const uint8_t *p = data, *end = data + size;
    while (n < max) {
        const uint8_t *q = size >= sl ? memmem(p, (size_t)(end - p), FZ_SEP, sl) : NULL;
        ptr[n] = p;
        if (!q || n == max - 1) { len[n++] = (size_t)(end - p); break; }
        len[n++] = (size_t)(q - p);
        p = q + sl;
    }
    return n;
}

#endif

/*
 * jpeg_guard.h — a pre-check for a known memory-safety bug in stb_image v2.27 (Debian's libstb, which
 * src/io/image.c links): stbi__build_huffman writes one size byte per Huffman code into size[257] for up
 * to 16 x 255 = 4080 codes of a DHT segment without checking the total, so a JPEG whose DHT counts sum to
 * more than 256 writes past the array (into the rest of the decoder's heap struct; UBSan: "index 257 out
 * of bounds for type 'stbi_uc[257]'", found by fuzz_image). Fixed upstream in stb_image 2.28.
 *
 * jpeg_dht_ok walks every marker segment of a JPEG (entropy-coded data included, since progressive files
 * define tables between scans) and returns 0 when a DHT table declares more than 256 codes. Anything that
 * is not a JPEG, or a truncated one, returns 1 (stb rejects those itself). Meant to move into
 * src/io/image.c, in front of stbi_info / stbi_load; the fuzz target uses it to skip the known bug.
 */
#ifndef SD3_JPEG_GUARD_H
#define SD3_JPEG_GUARD_H

#include <stddef.h>
#include <stdint.h>

static inline int jpeg_dht_ok(const uint8_t *d, size_t n) {
    if (n < 4 || d[0] != 0xFF || d[1] != 0xD8) return 1;
    size_t i = 2;
    while (i + 4 <= n) {
        if (d[i] != 0xFF) { i++; continue; }           /* entropy-coded data or fill */
        uint8_t m = d[i + 1];
        if (m == 0xFF) { i++; continue; }               /* fill byte before a marker */
        if (m == 0x00 || m == 0x01 || (m >= 0xD0 && m <= 0xD8)) { i += 2; continue; }  /* stuffing, TEM, RSTn, SOI */
        if (m == 0xD9) return 1;                        /* EOI */
        size_t L = ((size_t)d[i + 2] << 8) | d[i + 3];
        if (m == 0xC4) {                                /* DHT: tables of 1 + 16 counts + values */
            size_t p = i + 4, end = i + 2 + L;
            if (end > n) end = n;
            while (p + 17 <= end) {
                size_t codes = 0;
                for (int k = 0; k < 16; k++) codes += d[p + 1 + k];
                if (codes > 256) return 0;
                p += 17 + codes;
            }
        }
        if (L < 2) return 1;
        i += 2 + L;
    }
    return 1;
}

#endif

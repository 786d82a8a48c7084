/* half.c — fp16, bf16 and fp8 conversions with IEEE round-to-nearest-even, scalar and per row. */
#include <math.h>
#include <string.h>
#include "core/core.h"

static inline uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

float fp16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0) {
        if (man == 0) return u2f(sign);
        /* subnormal: value = man * 2^-24 */
        float v = (float)man * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    if (exp == 31) return u2f(sign | 0x7f800000u | (man << 13));
    return u2f(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t f32_to_fp16(float f) {
    uint32_t u = f2u(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) return sign | 0x7c00 | (a > 0x7f800000u ? 0x200 : 0); /* inf / nan */
    if (a >= 0x477ff000u) return sign | 0x7c00;  /* rounds to >= 65520: overflow to inf */
    if (a < 0x38800000u) {                       /* below 2^-14: subnormal or zero */
        float v = u2f(a) * 16777216.0f;          /* scale so 2^-24 becomes 1 */
        /* round to nearest even integer */
        float r = nearbyintf(v);
        return sign | (uint16_t)r;
    }
    uint32_t e = ((a >> 23) - 112) << 10, m = (a >> 13) & 0x3ff;
    uint32_t h = e | m;
    uint32_t rest = a & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;
    return sign | (uint16_t)h;
}

float bf16_to_f32(uint16_t h) { return u2f((uint32_t)h << 16); }

uint16_t f32_to_bf16(float f) {
    uint32_t u = f2u(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet nan */
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

/* fp8 e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa; no inf, 0x7f/0xff are nan. */
float fp8e4m3_to_f32(uint8_t v) {
    int sign = v & 0x80, exp = (v >> 3) & 0xf, man = v & 7;
    float r;
    if (exp == 0xf && man == 7) return NAN;
    if (exp == 0) r = ldexpf((float)man, -9);
    else r = ldexpf(1.0f + (float)man / 8.0f, exp - 7);
    return sign ? -r : r;
}

/* fp8 e5m2: 1 sign, 5 exponent (bias 15), 2 mantissa, IEEE-like inf/nan. */
float fp8e5m2_to_f32(uint8_t v) { return fp16_to_f32((uint16_t)v << 8); }

void fp16_to_f32_row(const uint16_t *src, float *dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = fp16_to_f32(src[i]);
}
void bf16_to_f32_row(const uint16_t *src, float *dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = bf16_to_f32(src[i]);
}
void f32_to_bf16_row(const float *src, uint16_t *dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = f32_to_bf16(src[i]);
}
void f32_to_fp16_row(const float *src, uint16_t *dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = f32_to_fp16(src[i]);
}

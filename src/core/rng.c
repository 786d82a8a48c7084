/*
 * rng.c — torch's CPU generator (mt19937 + ATen's distribution kernels), bit for bit. See rng.h.
 *
 * Floating-point discipline: this file is compiled with -ffp-contract=off, so every a*b+c below rounds
 * twice unless it is written as fmaf()/fma(). The fmaf() calls in the Cephes emulation are exactly the
 * contractions GCC makes when it compiles ATen's avx_mathfun.h with -mfma (see the golden README).
 */
/* Bit-exactness needs every a*b+c below to round twice unless written as fma: the Makefile passes
 * -ffp-contract=off, and these pragmas keep it so under the compilers' default modes (not clang
 * -ffp-contract=fast, which ignores pragmas). */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
#include <math.h>
#include <string.h>
#include "core/rng.h"

/* ------------------------------------------------------------------------------------------------ */
/* mt19937 engine                                                                                   */
/* ------------------------------------------------------------------------------------------------ */

#define MT_M 397
#define MT_MATRIX_A 0x9908b0dfu
#define MT_UPPER 0x80000000u
#define MT_LOWER 0x7fffffffu

/* Standard init_genrand: only the low 32 bits of the seed are used (torch's mt19937(uint64_t)). */
static void mt_init(torch_gen *g, uint32_t s) {
    g->mt[0] = s;
    for (int i = 1; i < TGEN_MT_N; i++)
        g->mt[i] = 1812433253u * (g->mt[i - 1] ^ (g->mt[i - 1] >> 30)) + (uint32_t)i;
    g->mti = TGEN_MT_N;
}

/* Regenerate the 624 words of state (the standard twist). */
static void mt_twist(torch_gen *g) {
    uint32_t *mt = g->mt;
    int k;
    for (k = 0; k < TGEN_MT_N - MT_M; k++) {
        uint32_t y = (mt[k] & MT_UPPER) | (mt[k + 1] & MT_LOWER);
        mt[k] = mt[k + MT_M] ^ (y >> 1) ^ ((y & 1u) ? MT_MATRIX_A : 0u);
    }
    for (; k < TGEN_MT_N - 1; k++) {
        uint32_t y = (mt[k] & MT_UPPER) | (mt[k + 1] & MT_LOWER);
        mt[k] = mt[k + (MT_M - TGEN_MT_N)] ^ (y >> 1) ^ ((y & 1u) ? MT_MATRIX_A : 0u);
    }
    uint32_t y = (mt[TGEN_MT_N - 1] & MT_UPPER) | (mt[0] & MT_LOWER);
    mt[TGEN_MT_N - 1] = mt[MT_M - 1] ^ (y >> 1) ^ ((y & 1u) ? MT_MATRIX_A : 0u);
    g->mti = 0;
}

void tgen_init(torch_gen *g, uint64_t seed, tgen_kernel k) {
    memset(g, 0, sizeof *g);
    g->kernel = k;
    tgen_seed(g, seed);
}

void tgen_seed(torch_gen *g, uint64_t seed) {
    g->seed = seed;
    g->has_next_double = 0;
    g->next_double = 0.0;
    mt_init(g, (uint32_t)(seed & 0xffffffffu));
}

void tgen_set_kernel(torch_gen *g, tgen_kernel k) { g->kernel = k; }

uint32_t tgen_u32(torch_gen *g) {
    if (g->mti >= TGEN_MT_N) mt_twist(g);
    uint32_t y = g->mt[g->mti++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

uint64_t tgen_u64(torch_gen *g) {
    uint64_t hi = tgen_u32(g);
    uint64_t lo = tgen_u32(g);
    return (hi << 32) | lo;
}

float tgen_uniform_f32(torch_gen *g) { return (float)(tgen_u32(g) & 0xffffffu) * (1.0f / 16777216.0f); }

double tgen_uniform_f64(torch_gen *g) {
    return (double)(tgen_u64(g) & ((UINT64_C(1) << 53) - 1)) * (1.0 / 9007199254740992.0);
}

/* ------------------------------------------------------------------------------------------------ */
/* ATen avx_mathfun.h (Cephes) log and sincos, one lane, with GCC's FMA contractions                 */
/* ------------------------------------------------------------------------------------------------ */

static uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* log256_ps for one lane: NaN for x <= 0 (and NaN), denormals clamped to the smallest normal. */
float tgen_cephes_logf(float x) {
    if (!(x > 0.0f)) return NAN;
    if (x < 1.17549435e-38f) x = 1.17549435e-38f;   /* _ps256_min_norm_pos */
    uint32_t bits = f2u(x);
    int32_t imm0 = (int32_t)(bits >> 23) - 0x7f;
    x = u2f((bits & ~0x7f800000u) | f2u(0.5f));     /* mantissa in [0.5, 1) */
    float e = (float)imm0;
    e = e + 1.0f;
    int below = x < 0.707106781186547524f;          /* cephes_SQRTHF */
    float tmp = below ? x : 0.0f;
    x = x - 1.0f;
    e = e - (below ? 1.0f : 0.0f);
    x = x + tmp;
    float z = x * x;
    float y = fmaf(7.0376836292E-2f, x, -1.1514610310E-1f);
    y = fmaf(y, x, 1.1676998740E-1f);
    y = fmaf(y, x, -1.2420140846E-1f);
    y = fmaf(y, x, +1.4249322787E-1f);
    y = fmaf(y, x, -1.6668057665E-1f);
    y = fmaf(y, x, +2.0000714765E-1f);
    y = fmaf(y, x, -2.4999993993E-1f);
    y = fmaf(y, x, +3.3333331174E-1f);
    y = y * x;
    y = fmaf(y, z, e * -2.12194440e-4f);            /* y*z + e*q1: the product e*q1 rounded first */
    y = fmaf(-z, 0.5f, y);                          /* y - z*0.5 */
    x = x + y;
    x = fmaf(e, 0.693359375f, x);                   /* x + e*q2 */
    return x;
}

/* sincos256_ps for one lane (accurate for moderate |x|, like the original; Box-Muller needs [0, 2 pi)). */
void tgen_cephes_sincosf(float xin, float *s, float *c) {
    uint32_t xb = f2u(xin);
    uint32_t sign_sin = xb & 0x80000000u;
    float x = u2f(xb & 0x7fffffffu);
    float y = x * 1.27323954473516f;                /* 4 / pi */
    /* _mm256_cvttps_epi32: truncation; out of range or NaN gives 0x80000000 (integer math unsigned) */
    uint32_t j = y < 2147483648.0f ? (uint32_t)(int32_t)y : 0x80000000u;
    j = (j + 1u) & ~1u;
    y = (float)(int32_t)j;
    uint32_t swap_sign_sin = (j & 4u) << 29;
    int poly_sin = (j & 2u) == 0;                    /* sine polynomial gives sin (else cos) */
    x = fmaf(y, -0.78515625f, x);                    /* extended-precision range reduction */
    x = fmaf(y, -2.4187564849853515625e-4f, x);
    x = fmaf(y, -3.77489497744594108e-8f, x);
    uint32_t sign_cos = (~(j - 2u) & 4u) << 29;
    sign_sin ^= swap_sign_sin;
    float z = x * x;
    float yc = fmaf(2.443315711809948E-005f, z, -1.388731625493765E-003f);
    yc = fmaf(yc, z, 4.166664568298827E-002f);
    yc = yc * z;
    yc = fmaf(yc, z, -(z * 0.5f));
    yc = yc + 1.0f;
    float ys = fmaf(-1.9515295891E-4f, z, 8.3321608736E-3f);
    ys = fmaf(ys, z, -1.6666654611E-1f);
    ys = ys * z;
    ys = fmaf(ys, x, x);
    /* the blend in the original adds the masked-out +0.0 (turns a -0.0 into +0.0) */
    float vs = (poly_sin ? ys : yc) + 0.0f;
    float vc = (poly_sin ? yc : ys) + 0.0f;
    *s = u2f(f2u(vs) ^ sign_sin);
    *c = u2f(f2u(vc) ^ sign_cos);
}

/* ------------------------------------------------------------------------------------------------ */
/* Normal distribution                                                                              */
/* ------------------------------------------------------------------------------------------------ */

/* Box-Muller of 16 uniforms in place, pairs (j, j+8): ATen normal_fill_16_AVX2 (the mean/std fma is
 * the kernel's own _mm256_fmadd_ps). */
static void fill16_avx2(float *d, float mean, float std) {
    const float two_pi = (float)(2.0 * 3.14159265358979323846);
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - d[j];
        float u2 = d[j + 8];
        float radius = sqrtf(-2.0f * tgen_cephes_logf(u1));
        float theta = two_pi * u2;
        float sn, cs;
        tgen_cephes_sincosf(theta, &sn, &cs);
        d[j] = fmaf(radius * cs, std, mean);
        d[j + 8] = fmaf(radius * sn, std, mean);
    }
}

/* The same with libm: ATen normal_fill_16<float> (theta = 2.0f * pi<double> * u2 in double, rounded). */
static void fill16_portable(float *d, float mean, float std) {
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - d[j];
        float u2 = d[j + 8];
        float radius = sqrtf(-2.0f * logf(u1));
        float theta = (float)(2.0 * 3.14159265358979323846 * (double)u2);
        d[j] = radius * cosf(theta) * std + mean;
        d[j + 8] = radius * sinf(theta) * std + mean;
    }
}

/* ATen normal_fill(_AVX2) for float32, n >= 16: all uniforms, blocks of 16, tail block redrawn. */
static void normal_fill_f32(torch_gen *g, float *d, int64_t n, float mean, float std) {
    void (*fill16)(float *, float, float) = g->kernel == TGEN_KERNEL_PORTABLE ? fill16_portable : fill16_avx2;
    for (int64_t i = 0; i < n; i++) d[i] = tgen_uniform_f32(g);
    for (int64_t i = 0; i + 16 <= n; i += 16) fill16(d + i, mean, std);
    if (n % 16 != 0) {
        float *t = d + n - 16;
        for (int i = 0; i < 16; i++) t[i] = tgen_uniform_f32(g);
        fill16(t, mean, std);
    }
}

double tgen_normal_f64(torch_gen *g, double mean, double std) {
    /* The scaling: fused in the AVX2 dispatch of ATen (compiled with -mfma), separate roundings in the
     * portable one. Identical for mean 0, std 1. */
    int fused = g->kernel != TGEN_KERNEL_PORTABLE;
    double v;
    if (g->has_next_double) {
        g->has_next_double = 0;
        v = g->next_double;
    } else {
        double u1 = tgen_uniform_f64(g);
        double u2 = tgen_uniform_f64(g);
        double r = sqrt(-2.0 * log1p(-u2));
        double theta = 2.0 * 3.14159265358979323846 * u1;
        g->next_double = r * sin(theta);
        g->has_next_double = 1;
        v = r * cos(theta);
    }
    return fused ? fma(v, std, mean) : v * std + mean;
}

void tgen_normal(torch_gen *g, float *out, int64_t n, float mean, float std) {
    if (n <= 0) return;
    if (n >= 16) {
        normal_fill_f32(g, out, n, mean, std);
        return;
    }
    for (int64_t i = 0; i < n; i++) out[i] = (float)tgen_normal_f64(g, (double)mean, (double)std);
}

void tgen_randn(torch_gen *g, float *out, int64_t n) { tgen_normal(g, out, n, 0.0f, 1.0f); }

void tgen_rand(torch_gen *g, float *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = tgen_uniform_f32(g);
}

/* ATen normal_fill_16<double>: libm in double (theta = 2.0f * pi<double> * u2). */
static void fill16_f64(double *d) {
    for (int j = 0; j < 8; j++) {
        double u1 = 1.0 - d[j];
        double u2 = d[j + 8];
        double radius = sqrt(-2.0 * log(u1));
        double theta = 2.0 * 3.14159265358979323846 * u2;
        d[j] = radius * cos(theta);
        d[j + 8] = radius * sin(theta);
    }
}

void tgen_randn_f64(torch_gen *g, double *out, int64_t n) {
    if (n <= 0) return;
    if (n < 16) {
        for (int64_t i = 0; i < n; i++) out[i] = tgen_normal_f64(g, 0.0, 1.0);
        return;
    }
    for (int64_t i = 0; i < n; i++) out[i] = tgen_uniform_f64(g);
    for (int64_t i = 0; i + 16 <= n; i += 16) fill16_f64(out + i);
    if (n % 16 != 0) {
        double *t = out + n - 16;
        for (int i = 0; i < 16; i++) t[i] = tgen_uniform_f64(g);
        fill16_f64(t);
    }
}

/*
 * test_rng.c — the torch CPU generator (src/core/rng.h) without golden data: published mt19937 and
 * torch values, word accounting of each draw path, ranges and moments, the kernels' math.
 */
#include <math.h>
#include <stdlib.h>
#include "core/rng.h"
#include "test.h"

/* mt19937 reference outputs: the first word for the default seed 5489 and the 10000th (the value C++11
 * requires of std::mt19937), and only the low 32 bits of a seed count. */
static void test_mt19937(void) {
    torch_gen g;
    tgen_init(&g, 5489, TGEN_KERNEL_AVX2);
    uint32_t w = tgen_u32(&g);
    CHECK(w == 3499211612u, "first word for seed 5489: %u", w);
    for (int i = 1; i < 10000; i++) w = tgen_u32(&g);
    CHECK(w == 4123659995u, "10000th word for seed 5489: %u", w);

    torch_gen a, b;
    tgen_init(&a, 7, TGEN_KERNEL_AVX2);
    tgen_init(&b, (UINT64_C(1) << 32) + 7, TGEN_KERNEL_AVX2);
    int same = 1;
    for (int i = 0; i < 1000; i++) same &= tgen_u32(&a) == tgen_u32(&b);
    CHECK(same, "seed 2^32 + 7 must draw like seed 7");

    /* a 64-bit draw is (first word << 32) | second word */
    tgen_init(&a, 123, TGEN_KERNEL_AVX2);
    tgen_init(&b, 123, TGEN_KERNEL_AVX2);
    uint64_t hi = tgen_u32(&a), lo = tgen_u32(&a);
    CHECK(tgen_u64(&b) == ((hi << 32) | lo), "u64 composition");
}

/* Uniforms: 24 / 53 bits of the words, in [0, 1), mean 1/2. */
static void test_uniform(void) {
    torch_gen a, b;
    tgen_init(&a, 99, TGEN_KERNEL_AVX2);
    tgen_init(&b, 99, TGEN_KERNEL_AVX2);
    uint32_t w = tgen_u32(&a);
    CHECK(tgen_uniform_f32(&b) == (float)(w & 0xffffffu) / 16777216.0f, "uniform float uses the low 24 bits");
    uint64_t d = tgen_u64(&a);
    CHECK(tgen_uniform_f64(&b) == (double)(d & ((UINT64_C(1) << 53) - 1)) / 9007199254740992.0,
          "uniform double uses the low 53 bits of a 64-bit draw");

    const int n = 1000000;
    double sf = 0, sd = 0;
    int out_f = 0, out_d = 0;
    for (int i = 0; i < n; i++) {
        float f = tgen_uniform_f32(&a);
        double x = tgen_uniform_f64(&a);
        out_f += !(f >= 0.0f && f < 1.0f);
        out_d += !(x >= 0.0 && x < 1.0);
        sf += f;
        sd += x;
    }
    CHECK(out_f == 0 && out_d == 0, "uniforms outside [0,1): %d float, %d double", out_f, out_d);
    CHECK(fabs(sf / n - 0.5) < 0.002 && fabs(sd / n - 0.5) < 0.002, "uniform means %g %g", sf / n, sd / n);
}

/* Values torch prints in its own docs and countless tutorials: torch.manual_seed(0) followed by
 * torch.randn(3) (the n < 16 double path) or torch.rand(3). Compared to the 4 printed decimals. */
static void test_published_values(void) {
    torch_gen g;
    float v[3];
    tgen_init(&g, 0, TGEN_KERNEL_AVX2);
    tgen_randn(&g, v, 3);
    CHECK(fabsf(v[0] - 1.5410f) < 6e-5f && fabsf(v[1] + 0.2934f) < 6e-5f && fabsf(v[2] + 2.1788f) < 6e-5f,
          "manual_seed(0); randn(3) = %.4f %.4f %.4f, want 1.5410 -0.2934 -2.1788", v[0], v[1], v[2]);
    tgen_seed(&g, 0);
    tgen_rand(&g, v, 3);
    CHECK(fabsf(v[0] - 0.4963f) < 6e-5f && fabsf(v[1] - 0.7682f) < 6e-5f && fabsf(v[2] - 0.0885f) < 6e-5f,
          "manual_seed(0); rand(3) = %.4f %.4f %.4f, want 0.4963 0.7682 0.0885", v[0], v[1], v[2]);
}

/* How many words each path consumes, and the cached second normal. */
static void test_word_accounting(void) {
    torch_gen a, b;
    float v[64];
    uint32_t ref[64];
    tgen_init(&b, 5, TGEN_KERNEL_AVX2);
    for (int i = 0; i < 64; i++) ref[i] = tgen_u32(&b);

    /* n >= 16, multiple of 16: one word per element */
    tgen_init(&a, 5, TGEN_KERNEL_AVX2);
    tgen_randn(&a, v, 32);
    CHECK(tgen_u32(&a) == ref[32], "randn(32) uses 32 words");
    /* n = 17: 17 words + 16 for the redrawn tail block */
    tgen_init(&a, 5, TGEN_KERNEL_AVX2);
    tgen_randn(&a, v, 17);
    CHECK(tgen_u32(&a) == ref[33], "randn(17) uses 33 words");
    /* n < 16: 4 words per pair of normals; randn(7) draws 4 pairs, the 8th value stays cached */
    tgen_init(&a, 5, TGEN_KERNEL_AVX2);
    tgen_randn(&a, v, 7);
    torch_gen c = a;
    CHECK(a.has_next_double, "an odd count leaves a cached normal");
    CHECK(tgen_u32(&c) == ref[16], "randn(7) uses 16 words");
    float one;
    uint32_t before = a.mti;
    tgen_randn(&a, &one, 1);
    CHECK(a.mti == (int)before && !a.has_next_double, "randn(1) after randn(7) takes the cached value");

    /* the cache survives between calls: randn(7) + randn(1) == the first 8 of randn(8)... */
    float w8[8];
    tgen_init(&b, 5, TGEN_KERNEL_AVX2);
    tgen_randn(&b, w8, 8);
    int same = 1;
    for (int i = 0; i < 7; i++) same &= w8[i] == v[i];
    CHECK(same && w8[7] == one, "randn(7)+randn(1) must equal randn(8)");
    /* ...and manual_seed clears it */
    tgen_init(&a, 5, TGEN_KERNEL_AVX2);
    tgen_randn(&a, v, 1);
    tgen_seed(&a, 5);
    CHECK(!a.has_next_double, "seeding clears the cached normal");
    tgen_randn(&a, &one, 1);
    CHECK(one == v[0], "after reseeding the first value repeats");

    /* rand: one word per element */
    tgen_init(&a, 5, TGEN_KERNEL_AVX2);
    tgen_rand(&a, v, 10);
    CHECK(tgen_u32(&a) == ref[10], "rand(10) uses 10 words");
}

/* randn moments over 1e6 samples, both kernels; the kernels agree within a few ulp. */
static void test_moments(void) {
    const int64_t n = 1000000;
    float *x = malloc((size_t)n * sizeof(float)), *y = malloc((size_t)n * sizeof(float));
    if (!x || !y) { CHECK(0, "out of memory"); free(x); free(y); return; }
    torch_gen a, b;
    tgen_init(&a, 2024, TGEN_KERNEL_AVX2);
    tgen_init(&b, 2024, TGEN_KERNEL_PORTABLE);
    tgen_randn(&a, x, n);
    tgen_randn(&b, y, n);
    double s1 = 0, s2 = 0, s4 = 0, maxd = 0;
    int64_t differ = 0, bad = 0;
    for (int64_t i = 0; i < n; i++) {
        double v = x[i];
        s1 += v;
        s2 += v * v;
        s4 += v * v * v * v;
        double d = fabs((double)x[i] - y[i]);
        if (d > maxd) maxd = d;
        differ += x[i] != y[i];
        bad += !isfinite(x[i]);
    }
    double mean = s1 / n, var = s2 / n - mean * mean, kurt = s4 / n;
    CHECK(bad == 0, "%lld non-finite samples", (long long)bad);
    CHECK(fabs(mean) < 0.005, "mean %g", mean);
    CHECK(fabs(var - 1.0) < 0.005, "variance %g", var);
    CHECK(fabs(kurt - 3.0) < 0.03, "fourth moment %g (normal: 3)", kurt);
    CHECK(maxd < 2e-5, "AVX2 and portable kernels differ by %g", maxd);
    CHECK(differ > 0 && differ < n, "the kernels should differ in some but not all elements (%lld)", (long long)differ);
    /* the two kernels consume the same words */
    CHECK(tgen_u32(&a) == tgen_u32(&b), "both kernels leave the generator in the same state");
    free(x);
    free(y);
}

/* tgen_normal: the block kernel applies mean/std with one fma to the randn value; the scalar path
 * returns fma(v, std, mean) of the same double. */
static void test_normal_scaling(void) {
    torch_gen a, b;
    float x[40], y[40];
    tgen_init(&a, 11, TGEN_KERNEL_AVX2);
    tgen_init(&b, 11, TGEN_KERNEL_AVX2);
    tgen_randn(&a, x, 40);
    tgen_normal(&b, y, 40, 2.0f, 3.0f);
    int ok = 1;
    for (int i = 0; i < 40; i++) ok &= y[i] == fmaf(x[i], 3.0f, 2.0f);
    CHECK(ok, "normal(2, 3, 40) == fma(randn(40), 3, 2)");

    tgen_init(&a, 11, TGEN_KERNEL_AVX2);
    tgen_init(&b, 11, TGEN_KERNEL_AVX2);
    ok = 1;
    for (int i = 0; i < 5; i++) {
        double v = tgen_normal_f64(&a, 0.0, 1.0), w = tgen_normal_f64(&b, -1.5, 0.25);
        ok &= w == fma(v, 0.25, -1.5);
    }
    CHECK(ok, "normal_f64(mean, std) == fma(normal_f64(0, 1), std, mean)");

    double dd[20];
    tgen_init(&a, 3, TGEN_KERNEL_AVX2);
    tgen_randn_f64(&a, dd, 20);
    ok = 1;
    for (int i = 0; i < 20; i++) ok &= isfinite(dd[i]) && fabs(dd[i]) < 8;
    CHECK(ok, "randn_f64(20) finite");
}

/* The Cephes log/sincos emulation stays within a few ulp of libm over the inputs Box-Muller feeds it. */
static void test_cephes(void) {
    CHECK(tgen_cephes_logf(1.0f) == 0.0f, "log(1) = %g", (double)tgen_cephes_logf(1.0f));
    CHECK(isnan(tgen_cephes_logf(0.0f)) && isnan(tgen_cephes_logf(-1.0f)), "log of x <= 0 is NaN");
    double worst_log = 0, worst_sc = 0;
    for (uint32_t k = 1; k <= (1u << 24); k += 97) {
        float u = 1.0f - (float)(k - 1) / 16777216.0f;   /* the u1 values: (0, 1] */
        double l = log((double)u), e = fabs(tgen_cephes_logf(u) - l);
        double rel = e / fmax(fabs(l), 1e-30);
        if (fabs(l) > 1e-3 && rel > worst_log) worst_log = rel;
        float th = (float)(2.0 * 3.14159265358979323846) * ((float)(k - 1) / 16777216.0f);
        float s, c;
        tgen_cephes_sincosf(th, &s, &c);
        double es = fmax(fabs(s - sin((double)th)), fabs(c - cos((double)th)));
        if (es > worst_sc) worst_sc = es;
    }
    CHECK(worst_log < 4e-7, "log relative error %g", worst_log);
    CHECK(worst_sc < 3e-7, "sincos absolute error %g", worst_sc);
}

int main(void) {
    test_mt19937();
    test_uniform();
    test_published_values();
    test_word_accounting();
    test_moments();
    test_normal_scaling();
    test_cephes();
    TEST_MAIN_END("test_rng");
}

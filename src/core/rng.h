/*
 * rng.h — torch's CPU random generator, reproduced bit for bit.
 *
 * What diffusers' seeded latents, the img2img posterior sample and the training script's timestep
 * sampling are made of: `torch.manual_seed(s)` / `torch.Generator().manual_seed(s)` followed by
 * torch.randn / torch.rand / torch.normal on the CPU (torch 1.13 .. 2.x, x86 AVX2 dispatch by default).
 *
 * Usage:
 *
 *     torch_gen g;
 *     tgen_init(&g, 42, TGEN_KERNEL_AVX2);     // torch.manual_seed(42)
 *     tgen_randn(&g, latents, 1 * 16 * 128 * 128);   // torch.randn(1, 16, 128, 128)
 *     float u[8];
 *     tgen_rand(&g, u, 8);                     // then torch.rand(8) from the same generator
 *
 * The algorithm (see ../shared/golden/README.md, section "RNG"):
 *  - engine: MT19937 seeded with init_genrand(seed mod 2^32); a 64-bit draw is (word1 << 32) | word2;
 *  - uniform float = (word & 0xFFFFFF) * 2^-24; uniform double = (64-bit draw & (2^53-1)) * 2^-53;
 *  - a float32 tensor of n >= 16 elements (randn, normal_): all n uniforms first, then Box-Muller in
 *    blocks of 16 (pairs j, j+8), the last 16 positions redrawn and recomputed when n % 16 != 0; the
 *    math is either ATen's AVX2 Cephes polynomials (TGEN_KERNEL_AVX2, what an x86 torch picks) or
 *    libm logf/cosf/sinf (TGEN_KERNEL_PORTABLE, ATEN_CPU_CAPABILITY=default and non-x86 builds);
 *  - fewer than 16 elements (and double tensors of fewer than 16): per-element double Box-Muller whose
 *    second value is cached in the generator (it survives between calls; seeding clears it).
 *
 * The results do not depend on the host CPU: the AVX2 polynomials are emulated in scalar C with
 * explicit fmaf() calls (this file must be compiled with -ffp-contract=off, as the Makefile does).
 *
 * Thread safety: a torch_gen is plain data; one thread at a time per generator.
 */
#ifndef SD3_RNG_H
#define SD3_RNG_H

#include <stdint.h>

#define TGEN_MT_N 624

/* Which float32 normal kernel to emulate for tensors of >= 16 elements. */
typedef enum tgen_kernel {
    TGEN_KERNEL_AVX2 = 0,   /* ATen normal_fill_16_AVX2: Cephes log256_ps / sincos256_ps (x86 default) */
    TGEN_KERNEL_PORTABLE    /* ATen normal_fill_16: libm logf, cosf, sinf; theta rounded from a double */
} tgen_kernel;

/* The generator state: torch's CPUGeneratorImpl (mt19937 + the cached second normal value). */
typedef struct torch_gen {
    uint32_t mt[TGEN_MT_N];  /* mt19937 state */
    int mti;                 /* next word index; TGEN_MT_N means "regenerate before the next draw" */
    uint64_t seed;           /* the seed as given (only its low 32 bits reach the engine) */
    int has_next_double;     /* a cached r*sin(theta) from the double Box-Muller is pending */
    double next_double;
    tgen_kernel kernel;      /* kept across tgen_seed */
} torch_gen;

/* A fresh generator: torch.Generator() with the given kernel, then manual_seed(seed). */
void tgen_init(torch_gen *g, uint64_t seed, tgen_kernel k);
/* torch.manual_seed(seed) on an existing generator: reseed the engine and clear the cached normal;
 * the kernel choice is kept (a zero-initialised struct, `torch_gen g = {0};`, has the AVX2 kernel and
 * must be seeded before its first draw). */
void tgen_seed(torch_gen *g, uint64_t seed);
/* Choose the float32 normal kernel emulated for tensors of >= 16 elements (default AVX2). */
void tgen_set_kernel(torch_gen *g, tgen_kernel k);

/* One raw 32-bit mt19937 word (torch's random()). */
uint32_t tgen_u32(torch_gen *g);
/* Two words as (first << 32) | second (torch's random64()). */
uint64_t tgen_u64(torch_gen *g);
/* Uniform float in [0, 1) from one word: 24 random bits. */
float tgen_uniform_f32(torch_gen *g);
/* Uniform double in [0, 1) from one 64-bit draw: 53 random bits. */
double tgen_uniform_f64(torch_gen *g);

/* One sample of at::normal_distribution<double>(mean, std) — the scalar path with the cached second
 * value: r = sqrt(-2 log1p(-u2)), theta = 2 pi u1, returns r cos(theta) * std + mean and caches
 * r sin(theta) for the next call. The scaling is one fma with TGEN_KERNEL_AVX2 (GCC contracts it in
 * ATen's -mfma build) and a multiply and an add with TGEN_KERNEL_PORTABLE; for mean 0 and std 1 (randn,
 * the script's logit_normal) both give the same bits, other mean/std are not covered by golden data. */
double tgen_normal_f64(torch_gen *g, double mean, double std);

/* torch.randn(n) of a contiguous float32 tensor: out[0..n) ~ N(0, 1). */
void tgen_randn(torch_gen *g, float *out, int64_t n);
/* torch.normal(mean, std, size=(n,)) / tensor.normal_(mean, std) of a float32 tensor. */
void tgen_normal(torch_gen *g, float *out, int64_t n, float mean, float std);
/* torch.rand(n) of a float32 tensor: one 24-bit uniform per element, in order. */
void tgen_rand(torch_gen *g, float *out, int64_t n);
/* torch.randn(n, dtype=torch.float64). */
void tgen_randn_f64(torch_gen *g, double *out, int64_t n);

/* The two float32 Box-Muller math kernels on their own (exposed for tests): log and sin/cos as
 * ATen's avx_mathfun.h computes them for one lane. */
float tgen_cephes_logf(float x);
void tgen_cephes_sincosf(float x, float *s, float *c);

#endif /* SD3_RNG_H */

/* peak.c — FMA-chain and bf16-dot-chain microbenchmarks for the machine's peak (see peak.h). The chain
 * functions carry their own target attributes, so this file builds with baseline flags and is only
 * called after peak_supported() says the CPU has the instructions. */
#include "bench/peak.h"
#include "core/core.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define PEAK_X86 1
#endif

#ifdef PEAK_X86
/* 16 independent zmm FMA chains: 16 x 32 flops per iteration. */
__attribute__((target("avx512f"))) static float fma_chain_avx512(long iters) {
    __m512 a[16], x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-7f);
    for (int i = 0; i < 16; i++) a[i] = _mm512_set1_ps((float)i);
    for (long t = 0; t < iters; t++)
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++) a[i] = _mm512_fmadd_ps(a[i], x, y);
    __m512 s = a[0];
    for (int i = 1; i < 16; i++) s = _mm512_add_ps(s, a[i]);
    return _mm512_reduce_add_ps(s);
}

/* 12 independent ymm FMA chains: 12 x 16 flops per iteration. */
__attribute__((target("avx2,fma"))) static float fma_chain_avx2(long iters) {
    __m256 a[12], x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f);
    for (int i = 0; i < 12; i++) a[i] = _mm256_set1_ps((float)i);
    for (long t = 0; t < iters; t++)
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) a[i] = _mm256_fmadd_ps(a[i], x, y);
    __m256 s = a[0];
    for (int i = 1; i < 12; i++) s = _mm256_add_ps(s, a[i]);
    float t8[8], r = 0;
    _mm256_storeu_ps(t8, s);
    for (int i = 0; i < 8; i++) r += t8[i];
    return r;
}

/* 16 independent vdpbf16ps chains: 16 x 64 flops per iteration (32 products + 32 adds per lane pair). */
__attribute__((target("avx512f,avx512bf16"))) static float bf16_chain(long iters) {
    __m512 a[16];
    __m512bh x = (__m512bh)_mm512_set1_epi16(0x3f80), y = (__m512bh)_mm512_set1_epi16(0x3380);
    for (int i = 0; i < 16; i++) a[i] = _mm512_set1_ps((float)i);
    for (long t = 0; t < iters; t++)
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++) a[i] = _mm512_dpbf16_ps(a[i], x, y);
    __m512 s = a[0];
    for (int i = 1; i < 16; i++) s = _mm512_add_ps(s, a[i]);
    return _mm512_reduce_add_ps(s);
}
#endif

typedef struct { long iters; int kind; volatile float sink[64]; } peak_job;

/* One pool task of the peak measurement: one chain on this thread. */
static void peak_task(void *arg, int t, int thread) {
    (void)thread;
    peak_job *j = arg;
    float r = 0;
#ifdef PEAK_X86
    if (j->kind == 0) r = fma_chain_avx512(j->iters);
    else if (j->kind == 1) r = fma_chain_avx2(j->iters);
    else r = bf16_chain(j->iters);
#endif
    j->sink[t % 64] = r;
}


int peak_supported(int kind) {
#ifdef PEAK_X86
    const cpu_features *f = cpu_get();
    return (kind == PEAK_FMA_AVX512 && f->avx512f) || (kind == PEAK_FMA_AVX2 && f->avx2 && f->fma) ||
           (kind == PEAK_BF16_DOT && f->avx512_bf16);
#else
    (void)kind;
    return 0;
#endif
}

double peak_flops_per_iter(int kind) { return kind == PEAK_FMA_AVX512 ? 16 * 32 : kind == PEAK_FMA_AVX2 ? 12 * 16 : 16 * 64; }

void peak_run(int kind, long iters) {
    peak_job j;
    j.iters = iters;
    j.kind = kind;
    pool_run(pool_threads(), peak_task, &j);
}

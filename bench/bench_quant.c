/* bench_quant.c — quantised-linear throughput (kernels_q.h) at the SD3-Medium MMDiT and T5-XXL shapes, against
 * this machine's measured int8 VNNI peak (a vpdpbusd chain on every pool thread: 64 MACs = 128 ops per
 * instruction) and the F32 k_linear at the same shapes. The times include the per-call work the quantised
 * path does (activation quantisation, weight repacking). Best of a few repetitions; the last line is JSON.
 * Usage: bench_quant [--quick]. Timings are only meaningful on an otherwise idle machine. */
#include <math.h>
#include <string.h>
#include "kernels/kernels.h"
#include "kernels/kernels_q.h"
#include "quant/quant.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define PEAK_ITERS 20000000L
typedef struct { volatile int sink[64]; } vnni_job;

/* 16 independent vpdpbusd chains: throughput-bound. */
__attribute__((target("avx512f,avx512vnni"))) static void vnni_task(void *arg, int t, int thread) {
    (void)t;
    vnni_job *j = arg;
    __m512i a[16], x = _mm512_set1_epi8(1), y = _mm512_set1_epi8(2);
    for (int i = 0; i < 16; i++) a[i] = _mm512_set1_epi32(i);
    for (long it = 0; it < PEAK_ITERS / 16; it++)
        for (int i = 0; i < 16; i++) a[i] = _mm512_dpbusd_epi32(a[i], x, y);
    __m512i s = a[0];
    for (int i = 1; i < 16; i++) s = _mm512_add_epi32(s, a[i]);
    j->sink[thread % 64] = _mm512_reduce_add_epi32(s);
}

/* Measured int8 peak in GOP/s over all pool threads (0 without AVX512-VNNI). */
static double vnni_peak(void) {
    if (!cpu_get()->avx512_vnni) return 0;
    vnni_job j;
    int nt = pool_threads();
    double t0 = sd3_time();
    pool_run(nt, vnni_task, &j);
    double dt = sd3_time() - t0;
    return (double)nt * PEAK_ITERS * 128.0 / dt / 1e9;
}
#else
static double vnni_peak(void) { return 0; }
#endif

/* Best time of reps runs of y = x W^T. */
static double time_linear(float *y, const float *x, const tensor *W, int M, int N, int K, int reps) {
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = sd3_time();
        k_linear(y, x, W, NULL, M, N, K);
        double dt = sd3_time() - t0;
        if (dt < best) best = dt;
    }
    return best;
}

int main(int argc, char **argv) {
    int quick = argc > 1 && !strcmp(argv[1], "--quick");
    pool_set_threads(0);
    double peak = vnni_peak();
    printf("threads %d, int8 VNNI peak (measured) %.0f GOP/s\n", pool_threads(), peak);
    static const struct { const char *what; int M, N, K; } S[] = {
        {"mmdit q/k/v/o  2x1024 img", 2048, 1536, 1536},
        {"mmdit fc1      2x1024 img", 2048, 6144, 1536},
        {"mmdit fc2      2x1024 img", 2048, 1536, 6144},
        {"mmdit ctx qkv  2x154 txt", 308, 1536, 1536},
        {"mmdit adaLN    M=2", 2, 9216, 1536},
        {"t5xxl wi       2x128 tok", 256, 10240, 4096},
        {"t5xxl wo       2x128 tok", 256, 4096, 10240},
    };
    int ns = quick ? 2 : (int)(sizeof S / sizeof S[0]);
    double sum8 = 0, sumf = 0;
    for (int s = 0; s < ns; s++) {
        int M = S[s].M, N = S[s].N, K = S[s].K;
        tensor W;
        int64_t sh[2] = {N, K};
        tensor_alloc(&W, DT_F32, 2, sh, NULL);
        float *x = sd3_malloc(sizeof(float) * (size_t)M * K), *y = sd3_malloc(sizeof(float) * (size_t)M * N);
        uint32_t r = 12345;
        for (int64_t i = 0; i < (int64_t)N * K; i++) r = r * 1664525u + 1013904223u, ((float *)W.data)[i] = (float)(r >> 8) / 16777216.0f - 0.5f;
        for (int64_t i = 0; i < (int64_t)M * K; i++) r = r * 1664525u + 1013904223u, x[i] = (float)(r >> 8) / 16777216.0f - 0.5f;
        tensor q8, q4;
        quant_tensor(&q8, &W, 8, NULL);
        quant_tensor(&q4, &W, 4, NULL);
        int reps = M <= 4 ? 20 : 3;
        double ops = 2.0 * M * N * K;
        double tf = time_linear(y, x, &W, M, N, K, reps), t8 = time_linear(y, x, &q8, M, N, K, reps),
               t4 = time_linear(y, x, &q4, M, N, K, reps);
        printf("%-28s M %5d N %5d K %5d | f32 %7.1f GFLOP/s | int8 %7.1f GOP/s (%4.0f%% of peak, %.2fx f32) | int4 %7.1f GOP/s"
               " | %.2f / %.2f / %.2f ms\n",
               S[s].what, M, N, K, ops / tf / 1e9, ops / t8 / 1e9, peak > 0 ? 100 * ops / t8 / 1e9 / peak : 0, tf / t8,
               ops / t4 / 1e9, tf * 1e3, t8 * 1e3, t4 * 1e3);
        if (M > 4) sum8 += t8, sumf += tf;
        tensor_free(&q8), tensor_free(&q4), tensor_free(&W);
        sd3_free(x), sd3_free(y);
    }
    printf("{\"vnni_peak_gops\": %.0f, \"int8_speedup_vs_f32_large_m\": %.2f, \"variant\": \"%s\"}\n", peak, sumf / sum8,
           "avx512_vnni when available");
    return 0;
}

/* bench_quant.c — quantised-linear throughput (kernels_q.h) at the SD3-Medium MMDiT and T5-XXL shapes, against
 * this machine's measured int8 VNNI peak (a vpdpbusd chain on every pool thread: 64 MACs = 128 ops per
 * instruction) and the F32 k_linear at the same shapes. The times include the per-call work the quantised
 * path does (activation quantisation, weight repacking). Best of a few repetitions; the last line is JSON.
 *
 * With --mmdit / --t5: full-size random weights (src/bench/synth.h, BF16, generated into the cache once):
 * the quality of int8 / int4 against the F32 computation on the same weights (relative L2 and max error of
 * one transformer forward, of T5's hidden states) and the time of one transformer forward (a CFG step,
 * batch 2) at --size (default 512) with int8 / int4 weights (--with-f32: the float one too).
 * Usage: bench_quant [--quick] | --mmdit [--size N] [--with-f32] | --t5 [--tokens T] [--layers L].
 * Timings are only meaningful on an otherwise idle machine. */
#include <math.h>
#include <string.h>
#include "kernels/kernels.h"
#include "kernels/kernels_q.h"
#include "quant/quant.h"
#include "quant/quant_models.h"
#include "bench/synth.h"
#include "io/json_util.h"
#include "text/t5.h"

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
    /* in-place asm: the intrinsic makes GCC copy each accumulator around every instruction */
    for (long it = 0; it < PEAK_ITERS / 16; it++) {
#define P1(i) __asm__ volatile("vpdpbusd %2, %1, %0" : "+v"(a[i]) : "v"(x), "v"(y));
        P1(0) P1(1) P1(2) P1(3) P1(4) P1(5) P1(6) P1(7) P1(8) P1(9) P1(10) P1(11) P1(12) P1(13) P1(14) P1(15)
#undef P1
    }
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

/* Deterministic N(0, 1)-ish fill. */
static void fill(float *p, size_t n, uint32_t seed) {
    uint32_t r = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        float s = 0;
        for (int k = 0; k < 4; k++) r = r * 1664525u + 1013904223u, s += (float)(r >> 8) / 16777216.0f - 0.5f;
        p[i] = s * 1.7320508f;
    }
}

static void rel_err(const float *a, const float *ref, size_t n, double *rel, double *mx_rel) {
    double num = 0, den = 0, mx = 0, rmax = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        num += d * d, den += (double)ref[i] * ref[i];
        if (fabs(d) > mx) mx = fabs(d);
        if (fabs(ref[i]) > rmax) rmax = fabs(ref[i]);
    }
    *rel = sqrt(num / (den > 0 ? den : 1));
    *mx_rel = mx / (rmax > 0 ? rmax : 1);
}

/* Full-size SD3-Medium transformer: quality at 256^2 (batch 1), time of a CFG forward at size^2 (batch 2). */
static int bench_mmdit(int size, int with_f32) {
    sd3_err err = {0};
    char dir[4096];
    if (syn_component_dir(SYN_SD3_MEDIUM, SYN_MMDIT, DT_BF16, NULL, dir, sizeof dir, NULL, &err)) { fprintf(stderr, "%s\n", err.msg); return 1; }
    const int qh = 32, qS = 154, J = 4096, P = 2048;
    size_t nq = (size_t)16 * qh * qh;
    float *x = sd3_malloc(sizeof(float) * 2 * 16 * (size / 8) * (size / 8)), *ctx = sd3_malloc(sizeof(float) * 2 * 333 * J),
          *pooled = sd3_malloc(sizeof(float) * 2 * P), t[2] = {500.0f, 500.0f};
    float *ref = sd3_malloc(sizeof(float) * nq), *got = sd3_malloc(sizeof(float) * 2 * 16 * (size / 8) * (size / 8));
    fill(x, (size_t)2 * 16 * (size / 8) * (size / 8), 1), fill(ctx, (size_t)2 * 333 * J, 2), fill(pooled, 2 * P, 3);
    double tq[4] = {0}, rel[4] = {0}, mxr[4] = {0}, tf[4] = {0};
    for (int v = 0; v < 4; v++) {   /* 0: F32 compute on the BF16 weights, 1: int8, 2: int4, 3: the bf16 dot-product mode */
        int bits = v == 1 ? 8 : v == 2 ? 4 : 0;
        mmdit_model m;
        memset(&m, 0, sizeof m);
        if (mmdit_load_dir(&m, dir, &err)) { fprintf(stderr, "%s\n", err.msg); return 1; }
        double t0 = sd3_time();
        if (bits && quant_mmdit(&m, bits, &m.w, NULL, &err)) { fprintf(stderr, "%s\n", err.msg); return 1; }
        tq[v] = sd3_time() - t0;
        if (bits) weights_release_pages(&m.w);
        int old = k_set_precision(v == 3);
        if (mmdit_forward(&m, x, 1, qh, qh, ctx, qS, pooled, t, NULL, 0, v ? got : ref, &err)) { fprintf(stderr, "%s\n", err.msg); return 1; }
        k_set_precision(old);
        if (v) rel_err(got, ref, nq, &rel[v], &mxr[v]);
        if (v == 1 || v == 2 || (v == 0 && with_f32)) {
            t0 = sd3_time();
            if (mmdit_forward(&m, x, 2, size / 8, size / 8, ctx, 333, pooled, t, NULL, 0, got, &err)) { fprintf(stderr, "%s\n", err.msg); return 1; }
            tf[v] = sd3_time() - t0;
        }
        printf("mmdit sd3-medium %-5s: quantise %.1f s | one forward 256^2 batch 1: rel L2 vs f32 %.4f, max |diff| / max |ref| %.4f | "
               "CFG step (batch 2) at %d^2, 333 text tokens: %.2f s | peak RSS %.2f GB\n",
               v == 0 ? "f32" : v == 1 ? "int8" : v == 2 ? "int4" : "bf16dot", tq[v], rel[v], mxr[v], size, tf[v], sd3_peak_rss() / 1e9);
        fflush(stdout);
        mmdit_free(&m);
    }
    printf("{\"mmdit_int8_rel_l2\": %.5f, \"mmdit_int4_rel_l2\": %.5f, \"mmdit_bf16dot_rel_l2\": %.5f, \"cfg_step_s_f32\": %.2f, "
           "\"cfg_step_s_int8\": %.2f, \"cfg_step_s_int4\": %.2f, \"size\": %d}\n", rel[1], rel[2], rel[3], tf[0], tf[1], tf[2], size);
    return 0;
}

/* Full-size T5-XXL: hidden state after `layers` blocks (0 = all, the last_hidden_state) for B=1 x tokens. */
static int bench_t5(int tokens, int layers) {
    sd3_err err = {0};
    char dir[4096], p[4200];
    if (syn_component_dir(SYN_SD3_MEDIUM, SYN_T5, DT_BF16, NULL, dir, sizeof dir, NULL, &err)) { fprintf(stderr, "%s\n", err.msg); return 1; }
    snprintf(p, sizeof p, "%s/config.json", dir);
    cJSON *cfg = json_load_file(p, &err);
    if (!cfg) { fprintf(stderr, "%s\n", err.msg); return 1; }
    int64_t *ids = malloc(sizeof(int64_t) * tokens);
    for (int i = 0; i < tokens; i++) ids[i] = (i * 7919 + 13) % 32000 + 3;
    ids[tokens - 1] = 1;
    float *ref = sd3_malloc(sizeof(float) * 4096 * (size_t)tokens), *got = sd3_malloc(sizeof(float) * 4096 * (size_t)tokens);
    double rel[4] = {0}, mxr[4] = {0};
    for (int v = 0; v < 4; v++) {   /* 0: f32, 1: int8, 2: int4, 3: f32 weights with the bf16 dot-product mode */
        int bits = v == 1 ? 8 : v == 2 ? 4 : 0;
        weights w;
        t5_model m;
        if (weights_open_dir(&w, dir, "model", &err) || t5_load(&m, &w, cfg, "t5xxl", &err)) { fprintf(stderr, "%s\n", err.msg); return 1; }
        double t0 = sd3_time();
        if (bits && quant_t5(&m, bits, &w, NULL, &err)) { fprintf(stderr, "%s\n", err.msg); return 1; }
        double tq = sd3_time() - t0;
        if (bits) weights_release_pages(&w);
        t0 = sd3_time();
        int old = k_set_precision(v == 3);
        if (t5_forward_hidden(&m, ids, 1, tokens, layers ? layers : -1, v ? got : ref, &err)) { fprintf(stderr, "%s\n", err.msg); return 1; }
        k_set_precision(old);
        double tf = sd3_time() - t0;
        if (v) rel_err(got, ref, (size_t)4096 * tokens, &rel[v], &mxr[v]);
        printf("t5xxl %-5s: quantise %.1f s | forward (%d tokens, %s): %.2f s | rel L2 vs f32 %.4f, max |diff| / max |ref| %.4f | peak RSS %.2f GB\n",
               v == 0 ? "f32" : v == 1 ? "int8" : v == 2 ? "int4" : "bf16dot", tq, tokens,
               layers ? "hidden state after the given blocks" : "last_hidden_state",
               tf, rel[v], mxr[v], sd3_peak_rss() / 1e9);
        fflush(stdout);
        t5_free(&m);
        weights_close(&w);
    }
    printf("{\"t5_int8_rel_l2\": %.5f, \"t5_int4_rel_l2\": %.5f, \"t5_bf16dot_rel_l2\": %.5f, \"tokens\": %d, \"layers\": %d}\n",
           rel[1], rel[2], rel[3], tokens, layers);
    cJSON_Delete(cfg);
    return 0;
}

int main(int argc, char **argv) {
    int quick = argc > 1 && !strcmp(argv[1], "--quick");
    int size = 512, with_f32 = 0, tokens = 77, layers = 0, mode = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--mmdit")) mode = 'm';
        else if (!strcmp(argv[i], "--t5")) mode = 't';
        else if (!strcmp(argv[i], "--with-f32")) with_f32 = 1;
        else if (!strcmp(argv[i], "--size") && i + 1 < argc) size = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--tokens") && i + 1 < argc) tokens = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--layers") && i + 1 < argc) layers = atoi(argv[++i]);
    }
    pool_set_threads(0);
    if (mode == 'm') return bench_mmdit(size, with_f32);
    if (mode == 't') return bench_t5(tokens, layers);
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

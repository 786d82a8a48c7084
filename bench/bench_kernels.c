/* bench_kernels.c — kernel throughput against this machine's measured peak.
 *
 * First the peak, in the same run: an FMA-chain microbenchmark (16 independent zmm/ymm accumulator
 * chains per thread, on every pool thread) for fp32, and a vdpbf16ps chain for bf16 where the CPU has it.
 * Then GEMM GFLOP/s for the SD3-Medium MMDiT shapes (hidden 1536; M = 2·1024 image tokens or 2·333 text
 * tokens; q/k/v/o 1536→1536, fc1 1536→6144, fc2 6144→1536; adaLN 1536→9216 at M = 2) with F32, F16 and
 * BF16 weights (default F32-exact mode) and BF16 weights in the opt-in bf16 mode; attention at B=2, H=24,
 * T=1357 (1024 + 333 joint tokens), D=64; one VAE-sized 3x3 conv. Each is printed with its ratio to the
 * measured peak; the last line is one JSON object with the main numbers. Best of a few repetitions.
 * Usage: bench_kernels [--quick]. Timings are only meaningful on an otherwise idle machine. */
#include <math.h>
#include <string.h>
#include "bench/peak.h"
#include "kernels/kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define HAVE_X86 1
#endif

static int g_quick = 0;

/* ================================================================================================ */
/* Peak                                                                                             */
/* ================================================================================================ */

#define PEAK_ITERS 20000000L

/* GFLOP/s of `kind` (0 avx512 fma, 1 avx2 fma, 2 bf16 dot) on all pool threads, best of 3. */
static double measure_peak(int kind) {
    int nt = pool_threads();
    long iters = PEAK_ITERS / (g_quick ? 10 : 1) / (kind == 1 ? 1 : 2);
    double flops_per_iter = peak_flops_per_iter(kind);
    double best = 0;
    peak_run(kind, iters); /* warm up (clocks, workers) */
    for (int r = 0; r < 3; r++) {
        double t0 = sd3_time();
        peak_run(kind, iters);
        double dt = sd3_time() - t0, g = flops_per_iter * (double)iters * nt / dt * 1e-9;
        if (g > best) best = g;
    }
    return best;
}

static int g_peak_kind32 = -1, g_peak_kind16 = -1;   /* which chain measures each peak (-1: none) */
static double g_pk_min = 1e30, g_pk_max = 0;          /* range of the fp32 peaks seen during the run */

/* A quick fp32 (or bf16) peak taken right before a measurement, so that each ratio compares against the
 * machine as it was at that moment (other processes may come and go); also tracks the spread. */
static double peak_now(int bf16) {
    int kind = bf16 ? g_peak_kind16 : g_peak_kind32;
    if (kind < 0) kind = g_peak_kind32;
    if (kind < 0) return 1;
    int nt = pool_threads();
    long iters = PEAK_ITERS / (g_quick ? 40 : 16);
    double flops_per_iter = peak_flops_per_iter(kind), best = 0;
    for (int r = 0; r < 2; r++) {
        double t0 = sd3_time();
        peak_run(kind, iters);
        double g = flops_per_iter * (double)iters * nt / (sd3_time() - t0) * 1e-9;
        if (g > best) best = g;
    }
    if (kind == g_peak_kind32) {
        if (best < g_pk_min) g_pk_min = best;
        if (best > g_pk_max) g_pk_max = best;
    }
    return best;
}

/* ================================================================================================ */
/* Kernels                                                                                          */
/* ================================================================================================ */

static float *rnd(size_t n) {
    float *p = sd3_malloc(sizeof(float) * n);
    SD3_ASSERT(p);
    uint32_t s = 12345;
    for (size_t i = 0; i < n; i++) { s = s * 1664525u + 1013904223u; p[i] = (float)(s >> 8) / 16777216.0f - 0.5f; }
    return p;
}

/* A random [n0, n1] weight tensor of dtype dt. */
static tensor rnd_tensor(dtype dt, int64_t n0, int64_t n1) {
    tensor t;
    int64_t shape[2] = {n0, n1};
    sd3_err e;
    SD3_ASSERT(tensor_alloc(&t, dt, 2, shape, &e) == SD3_OK);
    float *v = rnd((size_t)(n0 * n1));
    if (dt == DT_F32) memcpy(t.data, v, sizeof(float) * (size_t)(n0 * n1));
    else if (dt == DT_F16) f32_to_fp16_row(v, t.data, (size_t)(n0 * n1));
    else f32_to_bf16_row(v, t.data, (size_t)(n0 * n1));
    sd3_free(v);
    return t;
}

/* Best-of-reps seconds of one k_linear call. */
static double time_linear(int M, int N, int K, dtype dt, int reps) {
    tensor W = rnd_tensor(dt, N, K);
    float *x = rnd((size_t)M * K), *y = sd3_malloc(sizeof(float) * (size_t)M * N);
    float bv[1];
    (void)bv;
    k_linear(y, x, &W, NULL, M, N, K); /* warm */
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = sd3_time();
        k_linear(y, x, &W, NULL, M, N, K);
        double dt_ = sd3_time() - t0;
        if (dt_ < best) best = dt_;
    }
    sd3_free(x); sd3_free(y); tensor_free(&W);
    return best;
}

/* Best-of-reps seconds of one k_attention on a fused qkv buffer. */
static double time_attention(int B, int H, int T, int D, int reps) {
    int64_t HD = (int64_t)H * D;
    float *qkv = rnd((size_t)(B * T * 3 * HD)), *o = sd3_malloc(sizeof(float) * (size_t)(B * T * HD));
    attn_params p = {.B = B, .H = H, .Tq = T, .Tk = T, .D = D, .q_ld = 3 * HD, .k_ld = 3 * HD, .v_ld = 3 * HD, .o_ld = HD,
                     .q_bstride = T * 3 * HD, .k_bstride = T * 3 * HD, .v_bstride = T * 3 * HD, .o_bstride = T * HD,
                     .scale = 1.0f / sqrtf((float)D)};
    k_attention(o, qkv, qkv + HD, qkv + 2 * HD, &p);
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = sd3_time();
        k_attention(o, qkv, qkv + HD, qkv + 2 * HD, &p);
        double dt = sd3_time() - t0;
        if (dt < best) best = dt;
    }
    sd3_free(qkv); sd3_free(o);
    return best;
}

/* Best-of-reps seconds of one 3x3 C->C conv on an HW x HW image (flops out). */
static double time_conv(int C, int HW, dtype wdt, int reps, double *flops) {
    conv2d_params p = {.N = 1, .Cin = C, .H = HW, .W = HW, .Cout = C, .kh = 3, .kw = 3, .stride = 1, .pad_t = 1, .pad_b = 1,
                       .pad_l = 1, .pad_r = 1};
    tensor w = rnd_tensor(wdt, C, (int64_t)C * 9);
    float *x = rnd((size_t)C * HW * HW), *y = sd3_malloc(sizeof(float) * (size_t)C * HW * HW);
    k_conv2d(y, x, &w, NULL, &p);
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = sd3_time();
        k_conv2d(y, x, &w, NULL, &p);
        double dt = sd3_time() - t0;
        if (dt < best) best = dt;
    }
    *flops = 2.0 * C * C * 9.0 * HW * HW;
    sd3_free(x); sd3_free(y); tensor_free(&w);
    return best;
}

/* Peak, then every measurement, then the JSON line. */
int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) g_quick = 1;
        else { fprintf(stderr, "usage: bench_kernels [--quick]\n"); return 2; }
    }
    double t_start = sd3_time();
    const cpu_features *f = cpu_get();
    int nt = pool_threads();
    double peak32 = 0, peak16 = 0;
#ifdef HAVE_X86
    if (f->avx512f) peak32 = measure_peak(g_peak_kind32 = 0);
    else if (f->avx2 && f->fma) peak32 = measure_peak(g_peak_kind32 = 1);
    if (f->avx512_bf16) peak16 = measure_peak(g_peak_kind16 = 2);
    g_pk_min = g_pk_max = peak32;
#endif
    printf("threads %d | linear variants: F32 %s, F16 %s, BF16 %s | attention %s\n", nt, k_linear_variant(DT_F32),
           k_linear_variant(DT_F16), k_linear_variant(DT_BF16), k_attention_variant());
    printf("peak fp32 FMA chain: %.1f GFLOP/s | peak bf16 dot chain: %.1f GFLOP/s\n", peak32, peak16);
    if (peak32 <= 0) peak32 = 1;

    int reps = g_quick ? 1 : 3;
    struct { const char *name; int N, K; } shapes[] = {{"qkvo", 1536, 1536}, {"fc1", 6144, 1536}, {"fc2", 1536, 6144}};
    int Ms[2] = {2048, 666};
    dtype dts[3] = {DT_F32, DT_F16, DT_BF16};
    double json_gemm[4][2][3];   /* [dtype (3 = bf16 mode)][M][shape] GFLOP/s */
    double json_adaln[4], json_ratio[4][2][3];
    memset(json_gemm, 0, sizeof json_gemm);
    for (int d = 0; d < 4; d++) {
        dtype dt = dts[d < 3 ? d : 2];
        if (d == 3) {
            if (!f->avx512_bf16) break;
            k_set_precision(1);
        }
        for (int mi = 0; mi < 2; mi++)
            for (int s = 0; s < 3; s++) {
                int M = Ms[mi], N = shapes[s].N, K = shapes[s].K;
                double ref_peak = peak_now(d == 3);
                double t = time_linear(M, N, K, dt, reps), g = 2.0 * M * N * K / t * 1e-9;
                json_gemm[d][mi][s] = g;
                json_ratio[d][mi][s] = g / ref_peak;
                printf("linear %-4s M=%4d N=%4d K=%4d W=%-4s%s %8.2f ms %7.1f GFLOP/s  %.2f of peak\n", shapes[s].name, M, N, K,
                       dtype_name(dt), d == 3 ? " bf16-mode" : "", t * 1e3, g, g / ref_peak);
            }
        double t = time_linear(2, 9216, 1536, dt, reps * 3), gb = (double)9216 * 1536 * dtype_size(dt) / t * 1e-9;
        json_adaln[d] = 2.0 * 2 * 9216 * 1536 / t * 1e-9;
        printf("linear adaLN M=2 N=9216 K=1536 W=%-4s%s %8.2f ms %7.1f GFLOP/s  (weights streamed at %.1f GB/s)\n", dtype_name(dt),
               d == 3 ? " bf16-mode" : "", t * 1e3, json_adaln[d], gb);
        if (d == 3) k_set_precision(0);
    }

    int B = 2, H = 24, T = 1357, D = 64;
    double pa = peak_now(0);
    double ta = time_attention(B, H, T, D, g_quick ? 1 : 2), ga = 4.0 * B * H * (double)T * T * D / ta * 1e-9;
    printf("attention B=%d H=%d T=%d D=%d: %8.2f ms %7.1f GFLOP/s  %.2f of peak\n", B, H, T, D, ta * 1e3, ga, ga / pa);
    /* the same in the bf16 mode (vdpbf16ps products where the CPU has them), against the bf16 peak */
    k_set_precision(1);
    double pa16 = peak_now(1);
    double ta16 = time_attention(B, H, T, D, g_quick ? 1 : 2), ga16 = 4.0 * B * H * (double)T * T * D / ta16 * 1e-9;
    printf("attention B=%d H=%d T=%d D=%d bf16-mode (%s): %8.2f ms %7.1f GFLOP/s  %.2f of peak\n", B, H, T, D, k_attention_variant(),
           ta16 * 1e3, ga16, ga16 / pa16);
    k_set_precision(0);

    double cflops;
    double pc = peak_now(0);
    double tc = time_conv(256, 64, DT_F32, g_quick ? 1 : 2, &cflops), gc = cflops / tc * 1e-9;
    printf("conv2d 3x3 256->256 64x64 W=F32: %8.2f ms %7.1f GFLOP/s  %.2f of peak\n", tc * 1e3, gc, gc / pc);
    double pc16 = peak_now(0);
    double tc16 = time_conv(256, 64, DT_F16, g_quick ? 1 : 2, &cflops), gc16 = cflops / tc16 * 1e-9;
    printf("conv2d 3x3 256->256 64x64 W=F16: %8.2f ms %7.1f GFLOP/s  %.2f of peak\n", tc16 * 1e3, gc16, gc16 / pc16);

    /* row ops at MMDiT sizes (memory-bound: reported as GB/s of input + output) */
    {
        int R = 2 * 1357, C = 1536;
        size_t n = (size_t)R * C, nf = (size_t)2048 * 6144;
        float *x = rnd(nf), *y = sd3_malloc(sizeof(float) * nf), *sh = rnd((size_t)C), *sc = rnd((size_t)C);
        tensor w = rnd_tensor(DT_F32, 1, C), b = rnd_tensor(DT_F32, 1, C);
        double best[5] = {1e30, 1e30, 1e30, 1e30, 1e30};
        for (int r = 0; r < 3; r++) {
            double t0 = sd3_time();
            k_layernorm(y, x, NULL, NULL, R, C, 1e-6f);
            double t1 = sd3_time();
            k_rmsnorm(y, x, &w, R, C, 1e-6f);
            double t2 = sd3_time();
            k_modulate(y, x, sh, sc, R, C);
            double t3 = sd3_time();
            k_gelu_tanh(y, x, nf);
            double t4 = sd3_time();
            k_softmax(x, 2 * 24 * 8, 1357);
            double t5 = sd3_time();
            double d[5] = {t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4};
            for (int i = 0; i < 5; i++) if (d[i] < best[i]) best[i] = d[i];
        }
        printf("layernorm %dx%d: %.2f ms (%.1f GB/s) | rmsnorm: %.2f ms | modulate: %.2f ms (%.1f GB/s) | gelu_tanh %zu: %.2f ms "
               "(%.0f Melem/s) | softmax 384x1357: %.2f ms\n", R, C, best[0] * 1e3, 8.0 * n / best[0] * 1e-9, best[1] * 1e3,
               best[2] * 1e3, 8.0 * n / best[2] * 1e-9, nf, best[3] * 1e3, nf / best[3] * 1e-6, best[4] * 1e3);
        sd3_free(x); sd3_free(y); sd3_free(sh); sd3_free(sc); tensor_free(&w); tensor_free(&b);
    }

    /* the spread of the peaks taken before each measurement: if it is wide, other processes shared the
     * cores during the run and every number (each ratio uses the peak of its moment) is approximate */
    (void)peak_now(0);
    int stable = g_pk_max < 1.15 * g_pk_min;
    printf("fp32 peak over the run: %.1f .. %.1f GFLOP/s -> %s\n", g_pk_min, g_pk_max,
           stable ? "machine steady, ratios meaningful" : "UNSTEADY: other processes used the cores, ratios approximate");
    printf("bench_kernels took %.1f s\n", sd3_time() - t_start);
    printf("{\"bench\":\"kernels\",\"threads\":%d,\"peak_fp32_gflops\":%.1f,\"peak_bf16_gflops\":%.1f,"
           "\"gemm_f32_m2048\":{\"qkvo\":%.1f,\"fc1\":%.1f,\"fc2\":%.1f},\"gemm_f32_m666\":{\"qkvo\":%.1f,\"fc1\":%.1f,\"fc2\":%.1f},"
           "\"gemm_f16w_m2048_fc1\":%.1f,\"gemm_bf16w_m2048_fc1\":%.1f,\"gemm_bf16mode_m2048_fc1\":%.1f,"
           "\"adaln_m2_gflops\":{\"f32\":%.1f,\"f16\":%.1f,\"bf16\":%.1f},"
           "\"attention_gflops\":%.1f,\"attention_ms\":%.2f,\"attention_bf16mode_gflops\":%.1f,\"attention_bf16mode_of_peak\":%.3f,\"conv3x3_gflops\":%.1f,"
           "\"gemm_f32_fc1_of_peak\":%.3f,\"attention_of_peak\":%.3f,\"peak_fp32_min_gflops\":%.1f,\"steady\":%s}\n",
           nt, peak32, peak16, json_gemm[0][0][0], json_gemm[0][0][1], json_gemm[0][0][2], json_gemm[0][1][0],
           json_gemm[0][1][1], json_gemm[0][1][2], json_gemm[1][0][1], json_gemm[2][0][1], json_gemm[3][0][1], json_adaln[0],
           json_adaln[1], json_adaln[2], ga, ta * 1e3, ga16, ga16 / pa16, gc, json_ratio[0][0][1], ga / pa, g_pk_min, stable ? "true" : "false");
    return 0;
}

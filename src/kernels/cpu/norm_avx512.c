/* norm_avx512.c — AVX-512 LayerNorm, RMSNorm and GroupNorm rows. The statistics are accumulated in
 * double (8 lanes, two-pass mean then centred variance), as the refs do, so they agree with the refs to
 * double rounding; the normalisation itself uses the refs' F32 operations in the same order (no FMA),
 * hence results within an ulp or two of the refs. The affine parameters come in already widened to F32. */
#include <math.h>
#include "kernels/cpu/kcpu.h"

#if defined(__AVX512F__)
#include <immintrin.h>

/* Sum of x[0..n) in double. */
static double sum_pd(const float *x, int64_t n) {
    __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        a0 = _mm512_add_pd(a0, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
        a1 = _mm512_add_pd(a1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
    }
    double s = _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
    for (; i < n; i++) s += x[i];
    return s;
}

/* Σ (x - c)^2 over x[0..n) in double. */
static double sumsq_pd(const float *x, int64_t n, double c) {
    __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd(), cv = _mm512_set1_pd(c);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        __m512d d0 = _mm512_sub_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(v)), cv);
        __m512d d1 = _mm512_sub_pd(_mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))), cv);
        a0 = _mm512_fmadd_pd(d0, d0, a0);
        a1 = _mm512_fmadd_pd(d1, d1, a1);
    }
    double s = _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
    for (; i < n; i++) s += ((double)x[i] - c) * ((double)x[i] - c);
    return s;
}

/* y = ((x - mean) * rstd) [* w] [+ b] over n floats; w, b per element or NULL; ws/bs scalar alternatives
 * used when w/b are NULL and has_ws/has_bs say so (GroupNorm's per-channel affine). */
static void norm_apply(float *y, const float *x, int64_t n, float mean, float rstd, const float *w, const float *b, int has_s,
                       float ws, float bs) {
    __m512 mv = _mm512_set1_ps(mean), rv = _mm512_set1_ps(rstd), wv = _mm512_set1_ps(ws), bv = _mm512_set1_ps(bs);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m512 v = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), mv), rv);
        if (w) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, w + i));
        if (b) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, b + i));
        if (has_s) v = _mm512_add_ps(_mm512_mul_ps(v, wv), bv);
        _mm512_mask_storeu_ps(y + i, m, v);
    }
}

/* LayerNorm of rows (biased variance), as k_layernorm_ref. */
void kc_layernorm_avx512(float *y, const float *x, const float *w, const float *b, int rows, int C, float eps) {
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (int64_t)r * C;
        double mean = sum_pd(xr, C) / C, var = sumsq_pd(xr, C, mean) / C;
        float rstd = (float)(1.0 / sqrt(var + eps));
        norm_apply(y + (int64_t)r * C, xr, C, (float)mean, rstd, w, b, 0, 1.0f, 0.0f);
    }
}

/* RMSNorm of rows, as k_rmsnorm_ref: y = (x * rs) * w. */
void kc_rmsnorm_avx512(float *y, const float *x, const float *w, int rows, int C, float eps) {
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (int64_t)r * C;
        float rs = (float)(1.0 / sqrt(sumsq_pd(xr, C, 0.0) / C + eps));
        norm_apply(y + (int64_t)r * C, xr, C, 0.0f, rs, w, NULL, 0, 1.0f, 0.0f);
    }
}

/* One GroupNorm group: cg channels of HW values, contiguous; w/b (cg values, F32) or NULL. */
void kc_groupnorm_group_avx512(float *y, const float *x, const float *w, const float *b, int cg, int HW, float eps) {
    int64_t cnt = (int64_t)cg * HW;
    double mean = sum_pd(x, cnt) / (double)cnt, var = sumsq_pd(x, cnt, mean) / (double)cnt;
    float rstd = (float)(1.0 / sqrt(var + eps));
    for (int c = 0; c < cg; c++)
        norm_apply(y + (int64_t)c * HW, x + (int64_t)c * HW, HW, (float)mean, rstd, NULL, NULL, 1, w ? w[c] : 1.0f, b ? b[c] : 0.0f);
}

#endif

/* gemm_avx2.c — AVX2+FMA GEMM microkernel (6 x 16, 12 ymm accumulators), F16C row widening and the
 * small-M linear, for x86-64 CPUs without AVX-512 (attention and activations: attn_avx2.c). */
#include <string.h>
#include "kernels/cpu/kcpu.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

#define A2_MR 6
#define A2_NR 16

/* See kc_ukr_fn. */
static void ukr_avx2(int kc, const float *Ap, const float *Bp, float *C, int64_t ldc, int mr, int nr, int accum,
                     const float *bias_n, const float *bias_m) {
    __m256 c0[A2_MR], c1[A2_MR];
#pragma GCC unroll 6
    for (int i = 0; i < A2_MR; i++) c0[i] = c1[i] = _mm256_setzero_ps();
    for (int k = 0; k < kc; k++) {
        __m256 b0 = _mm256_load_ps(Bp), b1 = _mm256_load_ps(Bp + 8);
#pragma GCC unroll 6
        for (int i = 0; i < A2_MR; i++) {
            __m256 a = _mm256_broadcast_ss(Ap + i);
            c0[i] = _mm256_fmadd_ps(a, b0, c0[i]);
            c1[i] = _mm256_fmadd_ps(a, b1, c1[i]);
        }
        Ap += A2_MR;
        Bp += A2_NR;
    }
    float tmp[A2_NR];
    for (int i = 0; i < mr; i++) {
        float *c = C + i * ldc;
        _mm256_storeu_ps(tmp, c0[i]);
        _mm256_storeu_ps(tmp + 8, c1[i]);
        if (accum)
            for (int j = 0; j < nr; j++) c[j] += tmp[j];
        else
            for (int j = 0; j < nr; j++) c[j] = tmp[j] + (bias_n ? bias_n[j] : 0.0f) + (bias_m ? bias_m[i] : 0.0f);
    }
}

/* Widen n elements of t from off to F32 (vcvtph2ps for F16, a shift for BF16). */
static void cvt_row_avx2(const tensor *t, int64_t off, int n, float *dst) {
    int i = 0;
    if (t->dt == DT_F32) {
        memcpy(dst, (const float *)t->data + off, sizeof(float) * (size_t)n);
        return;
    }
    const uint16_t *s = (const uint16_t *)t->data + off;
    if (t->dt == DT_F16) {
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + i))));
        for (; i < n; i++) dst[i] = fp16_to_f32(s[i]);
    } else if (t->dt == DT_BF16) {
        for (; i + 8 <= n; i += 8) {
            __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(s + i)));
            _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
        }
        for (; i < n; i++) dst[i] = bf16_to_f32(s[i]);
    } else if (kc_f8_lut(t->dt)) {
        const float *lut = kc_f8_lut(t->dt);
        const uint8_t *s8 = (const uint8_t *)t->data + off;
        for (; i < n; i++) dst[i] = lut[s8[i]];
    } else {
        tensor_to_f32(t, off, n, dst);
    }
}

/* Small-M linear: dot products over K with W widened 256 values at a time. */
static void gemv_avx2(float *y, const float *x, const tensor *W, const float *bias, int M, int N, int K, int n0, int n1) {
    float tmp[256];
    for (int n = n0; n < n1; n++) {
        __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
        float tail[4] = {0, 0, 0, 0};
        for (int k0 = 0; k0 < K; k0 += 256) {
            int kc = K - k0 < 256 ? K - k0 : 256, k = 0;
            cvt_row_avx2(W, (int64_t)n * K + k0, kc, tmp);
            for (; k + 8 <= kc; k += 8) {
                __m256 w = _mm256_loadu_ps(tmp + k);
                for (int m = 0; m < M; m++) acc[m] = _mm256_fmadd_ps(_mm256_loadu_ps(x + (int64_t)m * K + k0 + k), w, acc[m]);
            }
            for (; k < kc; k++)
                for (int m = 0; m < M; m++) tail[m] += x[(int64_t)m * K + k0 + k] * tmp[k];
        }
        for (int m = 0; m < M; m++) {
            float t8[8], s = 0.0f;
            _mm256_storeu_ps(t8, acc[m]);
            for (int i = 0; i < 8; i++) s += t8[i];
            y[(int64_t)m * N + n] = s + tail[m] + (bias ? bias[n] : 0.0f);
        }
    }
}

/* From attn_avx2.c. */
void kc_attn_tile_avx2(float *o, const float *q, const float *k, const float *v, const attn_params *p, int b, int h, int i0,
                       int i1, float *scratch);
void kc_act_avx2(int kind, float *y, const float *x, size_t n);

static const kc_isa g_avx2 = {
    .name = "avx2", .MR = A2_MR, .NR = A2_NR, .ukr = ukr_avx2, .ukr_bf16 = NULL, .cvt_row = cvt_row_avx2,
    .gemv = gemv_avx2, .attn_tile = kc_attn_tile_avx2, .act = kc_act_avx2,
};
/* The AVX2+FMA table (dispatch checks the CPU first). */
const kc_isa *kc_isa_avx2(void) { return &g_avx2; }

#else
/* Not compiled with AVX2: no table. */
const kc_isa *kc_isa_avx2(void) { return NULL; }
#endif

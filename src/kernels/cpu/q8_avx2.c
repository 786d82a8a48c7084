/* q8_avx2.c — the quantised linear (DT_Q8 / DT_Q4 weights) for CPUs with AVX2 but no AVX-512 VNNI: pmaddubsw
 * dot products with the sign trick (|w| as unsigned bytes times sign(w) x a as signed bytes, so the 16-bit
 * pair sums stay below 2 x 127 x 127 and never saturate), then pmaddwd with ones to 32-bit lanes. One output
 * is a dot product of two contiguous rows, 32 codes per step, reduced once per scale block; the integer sums
 * are exact and the float steps those of kernels_q.h, so results equal k_linear_q_ref bit for bit.
 * Compiled with -mavx2 -mfma (Makefile: "_avx2" files); reached only after cpu_get() confirmed AVX2+FMA. */
#include <math.h>
#include <string.h>
#include "kernels/kernels_q.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#define TM 4   /* activation rows per pass over a weight row */

typedef struct {
    const tensor *W;
    const float *x;
    float *y;
    const float *bias;
    int M, N, K, qb, nb, chunk;
    int8_t *A;             /* activation codes [M][K] */
    float *sa;
} q2job;

static void quant_task(void *arg, int t, int thread) {
    (void)thread;
    q2job *j = arg;
    for (int r = t * 16; r < t * 16 + 16 && r < j->M; r++)
        j->sa[r] = k_quant_act_row_ref(j->A + (int64_t)r * j->K, j->x + (int64_t)r * j->K, j->K);
}

/* Horizontal sum of 8 int32 lanes. */
static inline int32_t hsum8(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

/* 32 weight codes starting at k (a multiple of 32) of row n as signed bytes. */
static inline __m256i load_w32(const tensor *W, int64_t n, int K, int k) {
    if (W->dt == DT_Q8) return _mm256_loadu_si256((const __m256i *)((const int8_t *)W->data + n * K + k));
    __m128i b = _mm_loadu_si128((const __m128i *)((const uint8_t *)W->data + n * (K / 2) + k / 2));
    __m128i m = _mm_set1_epi8(15), e = _mm_set1_epi8(8);
    __m128i lo = _mm_sub_epi8(_mm_and_si128(b, m), e), hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(b, 4), m), e);
    return _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
}

static void gemm_task(void *arg, int t, int thread) {
    (void)thread;
    const q2job *j = arg;
    const int K = j->K, qb = j->qb, nsb = K / j->W->qblock;
    const __m256i ones = _mm256_set1_epi16(1);
    int n0 = t * j->chunk, n1 = n0 + j->chunk < j->N ? n0 + j->chunk : j->N;
    for (int m0 = 0; m0 < j->M; m0 += TM) {
        int mr = j->M - m0 < TM ? j->M - m0 : TM;
        for (int n = n0; n < n1; n++) {
            float acc[TM] = {0};
            for (int b = 0; b < j->nb; b++) {
                int k0 = b * qb, k1 = k0 + qb, k = k0;
                __m256i d[TM];
                for (int r = 0; r < TM; r++) d[r] = _mm256_setzero_si256();
                for (; k + 32 <= k1; k += 32) {
                    __m256i w = load_w32(j->W, n, K, k), aw = _mm256_sign_epi8(w, w);
                    for (int r = 0; r < mr; r++) {
                        __m256i a = _mm256_loadu_si256((const __m256i *)(j->A + (int64_t)(m0 + r) * K + k));
                        __m256i p = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(a, w));
                        d[r] = _mm256_add_epi32(d[r], _mm256_madd_epi16(p, ones));
                    }
                }
                for (int r = 0; r < mr; r++) {
                    int32_t s = hsum8(d[r]);
                    const int8_t *a = j->A + (int64_t)(m0 + r) * K;
                    for (int kk = k; kk < k1; kk++) s += (int32_t)a[kk] * ((const int8_t *)j->W->data)[(int64_t)n * K + kk];
                    acc[r] = fmaf((float)s, j->W->qscale[(int64_t)n * nsb + b], acc[r]);
                }
            }
            for (int r = 0; r < mr; r++)
                j->y[(int64_t)(m0 + r) * j->N + n] = fmaf(acc[r], j->sa[m0 + r], j->bias ? j->bias[n] : 0.0f);
        }
    }
}

int kq_linear_avx2(float *y, const float *x, const tensor *W, const float *bias, int M, int N, int K) {
    const cpu_features *f = cpu_get();
    if (!f->avx2 || !f->fma) return 0;
    if (M <= 0 || N <= 0 || K <= 0 || K > 65536 || W->qblock <= 0 || K % W->qblock) return 0;
    /* blocks shorter than K must be whole 32-code steps (Q4 always is); per-row Q8 takes any K (scalar tail) */
    if (W->qblock != K && W->qblock % 32) return 0;
    if (W->dt == DT_Q4 && (W->qblock != 32 || K % 32)) return 0;
    q2job j;
    memset(&j, 0, sizeof j);
    j.W = W, j.x = x, j.y = y, j.bias = bias, j.M = M, j.N = N, j.K = K;
    j.qb = W->qblock, j.nb = K / W->qblock;
    j.A = sd3_malloc((size_t)M * (size_t)K);
    j.sa = sd3_malloc(sizeof(float) * (size_t)M);
    if (!j.A || !j.sa) { sd3_free(j.A); sd3_free(j.sa); return 0; }
    pool_run((M + 15) / 16, quant_task, &j);
    int nt = pool_threads() * 4;
    j.chunk = (N + nt - 1) / nt;
    if (j.chunk < 4) j.chunk = 4;
    pool_run((N + j.chunk - 1) / j.chunk, gemm_task, &j);
    sd3_free(j.A);
    sd3_free(j.sa);
    return 1;
}

#else
int kq_linear_avx2(float *y, const float *x, const tensor *W, const float *bias, int M, int N, int K) {
    (void)y, (void)x, (void)W, (void)bias, (void)M, (void)N, (void)K;
    return 0;
}
#endif

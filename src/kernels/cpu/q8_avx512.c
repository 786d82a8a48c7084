/* q8_avx512.c — the quantised linear (DT_Q8 / DT_Q4 weights) with AVX-512 VNNI integer dot products
 * (vpdpbusd: u8 x s8, four products per 32-bit lane). Compiled with the AVX-512 flags (Makefile: "_avx512"
 * files); kq_linear_avx512 checks the CPU first and declines when it lacks AVX512F/BW/VNNI.
 *
 * vpdpbusd multiplies unsigned by signed bytes, so the activation codes q_a in [-127, 127] are stored as
 * u = q_a + 128 and the weight codes stay signed: sum(u q_w) = sum(q_a q_w) + 128 sum(q_w), and the second
 * term is removed per block by starting the accumulator at -128 sum(q_w) (computed when W is packed). The
 * sums are exact, the float steps are those of kernels_q.h: results equal k_linear_q_ref bit for bit.
 *
 * Two paths:
 *  - M > SMALL_M: W is repacked per call into 32-column panels [K/4][32][4] (Q4 codes widened to s8 on the
 *    way) with, per block, the 32 corrections and the 32 scales; a 12x32 (per-row scales) or 6x32 (block
 *    scales) microkernel broadcasts 4 activation bytes per row and runs 2 vpdpbusd per row and k-quad.
 *  - M <= SMALL_M with per-row scales (the adaLN and embedding linears run with M = batch): no packing, each
 *    output is a dot product of two contiguous rows, 64 bytes per vpdpbusd, reduced once per output.
 */
#include <math.h>
#include <string.h>
#include "kernels/kernels_q.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>

#define SMALL_M 4
#define PANEL 32
#define MB 96      /* rows per task (a multiple of both microkernel heights) */
#define PG 4       /* panels per task */

typedef struct qjob {
    const tensor *W;
    const float *x;
    float *y;
    const float *bias;     /* widened bias [N] or NULL */
    int M, N, K, Kp;       /* Kp: K rounded up to a multiple of 4 (codes past K are zero) */
    int qb, nb;            /* block length in the padded K (Kp for per-row scales) and blocks per row */
    int blocked;           /* nb > 1: per-block float accumulation */
    uint8_t *A;            /* activation codes + 128, [M][Kp] */
    float *sa;             /* activation scales [M] */
    int8_t *P;             /* packed panels */
    size_t panel_bytes;
    int npanel, ntm, ntp;  /* panels, row chunks, panel groups */
} qjob;

/* ---- activations: per-row quantisation (the exact rule of k_quant_act_row_ref), rows split over the pool */
static void quant_rows_task(void *arg, int t, int thread) {
    (void)thread;
    qjob *j = arg;
    int K = j->K;
    int r0 = t * 16, r1 = r0 + 16 < j->M ? r0 + 16 : j->M;
    for (int r = r0; r < r1; r++) {
        const float *x = j->x + (int64_t)r * K;
        uint8_t *u = j->A + (int64_t)r * j->Kp;
        __m512 mx = _mm512_setzero_ps(), nanchk = _mm512_setzero_ps(), zero = _mm512_setzero_ps();
        int k = 0;
        for (; k + 16 <= K; k += 16) {
            __m512 v = _mm512_loadu_ps(x + k);
            mx = _mm512_max_ps(mx, _mm512_abs_ps(v));
            nanchk = _mm512_add_ps(nanchk, _mm512_mul_ps(v, zero));   /* NaN once any x is Inf or NaN */
        }
        if (k < K) {
            __mmask16 m = (__mmask16)((1u << (K - k)) - 1);
            __m512 v = _mm512_maskz_loadu_ps(m, x + k);
            mx = _mm512_max_ps(mx, _mm512_abs_ps(v));
            nanchk = _mm512_add_ps(nanchk, _mm512_mul_ps(v, zero));
        }
        float amax = _mm512_reduce_max_ps(mx), chk = _mm512_reduce_add_ps(nanchk);
        if (chk != 0.0f || amax == 0.0f) {
            memset(u, 128, (size_t)j->Kp);
            j->sa[r] = chk != 0.0f ? NAN : 0.0f;
            continue;
        }
        float inv = 127.0f / amax;
        __m512 vinv = _mm512_set1_ps(inv);
        __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127), off = _mm512_set1_epi32(128);
        for (k = 0; k < K; k += 16) {
            __mmask16 m = K - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (K - k)) - 1);
            __m512 v = _mm512_maskz_loadu_ps(m, x + k);
            __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(v, vinv));   /* round half to even (MXCSR default) */
            q = _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(q, lo), hi), off);
            _mm512_mask_cvtepi32_storeu_epi8(u + k, m, q);
        }
        for (k = K; k < j->Kp; k++) u[k] = 128;
        j->sa[r] = amax / 127.0f;
    }
}

/* ---- packing: panel p = columns [32p, 32p + 32): codes [Kp/4][32][4], then int32 corr[nb][32]
 * (-128 x block sum of codes), then f32 scale[nb][32]; columns past N are zero. */
static void pack_task(void *arg, int p, int thread) {
    (void)thread;
    qjob *j = arg;
    int8_t *dst = j->P + (size_t)p * j->panel_bytes;
    int32_t *corr = (int32_t *)(dst + (size_t)j->Kp * PANEL);
    float *scl = (float *)(corr + (size_t)j->nb * PANEL);
    memset(dst, 0, j->panel_bytes);
    int K = j->K, nsb = j->W->qblock > 0 ? K / j->W->qblock : 1;
    for (int c = 0; c < PANEL; c++) {
        int64_t n = (int64_t)p * PANEL + c;
        if (n >= j->N) break;
        if (j->W->dt == DT_Q8) {
            const int8_t *row = (const int8_t *)j->W->data + n * K;
            for (int k = 0; k < K; k++) {
                dst[((k >> 2) * PANEL + c) * 4 + (k & 3)] = row[k];
                corr[(k / j->qb) * PANEL + c] -= 128 * row[k];
            }
        } else {
            const uint8_t *row = (const uint8_t *)j->W->data + n * (K / 2);
            for (int k0 = 0; k0 < K; k0 += 32) {
                const uint8_t *blk = row + k0 / 2;
                int s = 0;
                for (int i = 0; i < 16; i++) {
                    int lo = (blk[i] & 15) - 8, hi = (blk[i] >> 4) - 8, klo = k0 + i, khi = k0 + 16 + i;
                    dst[((klo >> 2) * PANEL + c) * 4 + (klo & 3)] = (int8_t)lo;
                    dst[((khi >> 2) * PANEL + c) * 4 + (khi & 3)] = (int8_t)hi;
                    s += lo + hi;
                }
                corr[(k0 / 32) * PANEL + c] = -128 * s;
            }
        }
        for (int b = 0; b < j->nb; b++) scl[b * PANEL + c] = j->W->qscale[n * nsb + b];
    }
}

/* Store an mr x nr tile: y = fma(acc, s_a, bias) (the last step of kernels_q.h). */
static inline __attribute__((always_inline)) void store_tile(const int MR, __m512 *f0, __m512 *f1, int mr, int nr,
                                                             const float *sa, const float *bias, float *y, int64_t ldy) {
    __mmask16 k0 = nr >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << nr) - 1);
    __mmask16 k1 = nr >= 32 ? (__mmask16)0xffff : nr > 16 ? (__mmask16)((1u << (nr - 16)) - 1) : 0;
    __m512 b0 = bias ? _mm512_maskz_loadu_ps(k0, bias) : _mm512_setzero_ps();
    __m512 b1 = bias ? _mm512_maskz_loadu_ps(k1, bias + 16) : _mm512_setzero_ps();
    for (int r = 0; r < MR; r++) {
        if (r >= mr) break;
        __m512 s = _mm512_set1_ps(sa[r]);
        _mm512_mask_storeu_ps(y + r * ldy, k0, _mm512_fmadd_ps(f0[r], s, b0));
        _mm512_mask_storeu_ps(y + r * ldy + 16, k1, _mm512_fmadd_ps(f1[r], s, b1));
    }
}

/* Broadcast 4 activation bytes (a 32-bit lane's worth) of row pointer a at quad q. */
static inline __m512i bcast4(const uint8_t *a, int q) {
    int32_t v;
    memcpy(&v, a + 4 * (int64_t)q, 4);
    return _mm512_set1_epi32(v);
}

/* Microkernel: rows [0, mr) of A (stride lda) times one packed panel, MR x 32 outputs. */
static inline __attribute__((always_inline)) void ukr(const int MR, const int blocked, int mr, int nr, const qjob *j,
                                                      const uint8_t *A, const int8_t *P, const float *sa,
                                                      const float *bias, float *y) {
    const int64_t lda = j->Kp;
    const int qq = j->qb / 4;
    const int32_t *corr = (const int32_t *)(P + (size_t)j->Kp * PANEL);
    const float *scl = (const float *)(corr + (size_t)j->nb * PANEL);
    const uint8_t *ar[12];
    for (int r = 0; r < MR; r++) ar[r] = A + (r < mr ? r : 0) * lda;
    __m512 f0[12], f1[12];
    __m512i i0[12], i1[12];
    for (int r = 0; r < MR; r++) f0[r] = f1[r] = _mm512_setzero_ps();
    for (int b = 0; b < j->nb; b++) {
        __m512i c0 = _mm512_load_si512(corr + b * PANEL), c1 = _mm512_load_si512(corr + b * PANEL + 16);
#pragma GCC unroll 12
        for (int r = 0; r < MR; r++) i0[r] = c0, i1[r] = c1;
        const int8_t *pb = P + (size_t)b * qq * 128;
        const int q0 = b * qq;
        for (int q = 0; q < qq; q++) {
            __m512i w0 = _mm512_load_si512(pb + q * 128), w1 = _mm512_load_si512(pb + q * 128 + 64);
#pragma GCC unroll 12
            for (int r = 0; r < MR; r++) {
                __m512i a = bcast4(ar[r], q0 + q);
                i0[r] = _mm512_dpbusd_epi32(i0[r], a, w0);
                i1[r] = _mm512_dpbusd_epi32(i1[r], a, w1);
            }
        }
        __m512 s0 = _mm512_load_ps(scl + b * PANEL), s1 = _mm512_load_ps(scl + b * PANEL + 16);
#pragma GCC unroll 12
        for (int r = 0; r < MR; r++) {
            if (blocked) {
                f0[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i0[r]), s0, f0[r]);
                f1[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i1[r]), s1, f1[r]);
            } else {
                f0[r] = _mm512_mul_ps(_mm512_cvtepi32_ps(i0[r]), s0);   /* == fma(d, s, 0) */
                f1[r] = _mm512_mul_ps(_mm512_cvtepi32_ps(i1[r]), s1);
            }
        }
    }
    store_tile(MR, f0, f1, mr, nr, sa, bias, y, j->N);
}

static void ukr_row(int mr, int nr, const qjob *j, const uint8_t *A, const int8_t *P, const float *sa, const float *bias,
                    float *y) {
    ukr(12, 0, mr, nr, j, A, P, sa, bias, y);
}
static void ukr_blk(int mr, int nr, const qjob *j, const uint8_t *A, const int8_t *P, const float *sa, const float *bias,
                    float *y) {
    ukr(6, 1, mr, nr, j, A, P, sa, bias, y);
}

/* One task: rows [MB tm, MB tm + MB) x panels [PG tp, PG tp + PG). */
static void gemm_task(void *arg, int t, int thread) {
    (void)thread;
    const qjob *j = arg;
    int tm = t % j->ntm, tp = t / j->ntm;
    int m0 = tm * MB, m1 = m0 + MB < j->M ? m0 + MB : j->M;
    int mrx = j->blocked ? 6 : 12;
    for (int p = tp * PG; p < (tp + 1) * PG && p < j->npanel; p++) {
        int n0 = p * PANEL, nr = j->N - n0 < PANEL ? j->N - n0 : PANEL;
        const int8_t *P = j->P + (size_t)p * j->panel_bytes;
        const float *bias = j->bias ? j->bias + n0 : NULL;
        for (int m = m0; m < m1; m += mrx) {
            int mr = m1 - m < mrx ? m1 - m : mrx;
            const uint8_t *A = j->A + (int64_t)m * j->Kp;
            float *y = j->y + (int64_t)m * j->N + n0;
            if (j->blocked) ukr_blk(mr, nr, j, A, P, j->sa + m, bias, y);
            else ukr_row(mr, nr, j, A, P, j->sa + m, bias, y);
        }
    }
}

/* ---- small M, per-row scales: y[m, n] for n in a chunk, straight from the row-major codes */
typedef struct { const qjob *j; int chunk; } small_job;

static void small_task(void *arg, int t, int thread) {
    (void)thread;
    const small_job *s = arg;
    const qjob *j = s->j;
    int n0 = t * s->chunk, n1 = n0 + s->chunk < j->N ? n0 + s->chunk : j->N, K = j->K;
    const __m512i ones = _mm512_set1_epi8(1);
    for (int n = n0; n < n1; n++) {
        const int8_t *w = (const int8_t *)j->W->data + (int64_t)n * K;
        __m512i acc[SMALL_M], ws = _mm512_setzero_si512();
        for (int m = 0; m < SMALL_M; m++) acc[m] = _mm512_setzero_si512();
        for (int k = 0; k < K; k += 64) {
            __mmask64 mk = K - k >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (K - k)) - 1);
            __m512i wv = _mm512_maskz_loadu_epi8(mk, w + k);
            ws = _mm512_dpbusd_epi32(ws, ones, wv);
            for (int m = 0; m < j->M; m++)
                acc[m] = _mm512_dpbusd_epi32(acc[m], _mm512_maskz_loadu_epi8(mk, j->A + (int64_t)m * j->Kp + k), wv);
        }
        int32_t corr = -128 * _mm512_reduce_add_epi32(ws);
        float sw = j->W->qscale[n];
        for (int m = 0; m < j->M; m++) {
            int32_t d = _mm512_reduce_add_epi32(acc[m]) + corr;
            float f = (float)d * sw;
            j->y[(int64_t)m * j->N + n] = fmaf(f, j->sa[m], j->bias ? j->bias[n] : 0.0f);
        }
    }
}

int kq_linear_avx512(float *y, const float *x, const tensor *W, const float *bias, int M, int N, int K) {
    const cpu_features *f = cpu_get();
    if (!f->avx512f || !f->avx512bw || !f->avx512_vnni) return 0;
    if (M <= 0 || N <= 0 || K <= 0 || K > 65536) return 0;
    int qblock = W->qblock;
    int per_row = W->dt == DT_Q8 && qblock == K;
    if (!per_row && (qblock % 4 != 0 || K % qblock != 0)) return 0;
    if (W->dt == DT_Q4 && (qblock != 32 || K % 32 != 0)) return 0;
    qjob j;
    memset(&j, 0, sizeof j);
    j.W = W, j.x = x, j.y = y, j.bias = bias, j.M = M, j.N = N, j.K = K;
    j.Kp = (K + 3) / 4 * 4;
    j.qb = per_row ? j.Kp : qblock;
    j.nb = per_row ? 1 : K / qblock;
    j.blocked = j.nb > 1;
    j.A = sd3_malloc((size_t)M * (size_t)j.Kp + 64);
    j.sa = sd3_malloc(sizeof(float) * (size_t)M);
    if (!j.A || !j.sa) { sd3_free(j.A); sd3_free(j.sa); return 0; }
    pool_run((M + 15) / 16, quant_rows_task, &j);
    if (per_row && M <= SMALL_M) {
        small_job s = {&j, 0};
        int nt = pool_threads() * 4;
        s.chunk = (N + nt - 1) / nt;
        if (s.chunk < 8) s.chunk = 8;
        pool_run((N + s.chunk - 1) / s.chunk, small_task, &s);
    } else {
        j.npanel = (N + PANEL - 1) / PANEL;
        j.panel_bytes = (size_t)j.Kp * PANEL + (size_t)j.nb * PANEL * 8;
        j.P = sd3_malloc(j.panel_bytes * (size_t)j.npanel);
        if (!j.P) { sd3_free(j.A); sd3_free(j.sa); return 0; }
        pool_run(j.npanel, pack_task, &j);
        j.ntm = (M + MB - 1) / MB;
        j.ntp = (j.npanel + PG - 1) / PG;
        pool_run(j.ntm * j.ntp, gemm_task, &j);
        sd3_free(j.P);
    }
    sd3_free(j.A);
    sd3_free(j.sa);
    return 1;
}

#else
int kq_linear_avx512(float *y, const float *x, const tensor *W, const float *bias, int M, int N, int K) {
    (void)y, (void)x, (void)W, (void)bias, (void)M, (void)N, (void)K;
    return 0;
}
#endif

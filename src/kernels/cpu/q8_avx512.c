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
 *  - M <= SMALL_M (the adaLN and embedding linears run with M = batch) with per-row scales or blocks of 32:
 *    no packing, each output is a dot product of two contiguous rows, 64 bytes per vpdpbusd, reduced once
 *    per output (per-row) or once per block (two blocks per vpdpbusd).
 */
#include <math.h>
#include <string.h>
#include "kernels/kernels_q.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>

#define SMALL_M 4
#define PANEL 32
#define MB_MAX 96  /* rows per task at most (a multiple of both microkernel heights) */
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
    int mb;                /* rows per task: a multiple of 12 with mb x Kp <= 256 KiB (stays in L2 with a panel) */
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
 * (-128 x block sum of codes), then f32 scale[nb][32]; columns past N are zero. Sixteen rows at a time:
 * 64 codes of each (one zmm, Q4 nibbles widened to s8 in element order), a 16 x 16 transpose of 32-bit
 * quads, and one vpdpbusd with ones per quad for the column sums. */

/* Transpose 16 x 16 int32: r[i] lane e -> r[e] lane i. */
static inline void tr16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    /* r[4i + j], 128-bit lane L: element 4L + j of rows 4i..4i+3 */
    __m512i o[16];
    for (int j = 0; j < 4; j++) {
        __m512i u0 = _mm512_shuffle_i32x4(r[j], r[4 + j], 0x44), u1 = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0x44);
        __m512i u2 = _mm512_shuffle_i32x4(r[j], r[4 + j], 0xEE), u3 = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0xEE);
        o[j] = _mm512_shuffle_i32x4(u0, u1, 0x88);
        o[4 + j] = _mm512_shuffle_i32x4(u0, u1, 0xDD);
        o[8 + j] = _mm512_shuffle_i32x4(u2, u3, 0x88);
        o[12 + j] = _mm512_shuffle_i32x4(u2, u3, 0xDD);
    }
    for (int i = 0; i < 16; i++) r[i] = o[i];
}

/* Codes [k0, k0 + 64) of row n as 64 signed bytes (zero past K). */
static inline __m512i load_codes64(const tensor *W, int64_t n, int K, int k0) {
    int left = K - k0;
    if (W->dt == DT_Q8) {
        __mmask64 m = left >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << left) - 1);
        return _mm512_maskz_loadu_epi8(m, (const int8_t *)W->data + n * K + k0);
    }
    int nbytes = left >= 64 ? 32 : left / 2;   /* K % 32 == 0: 32 or 16 bytes */
    __m256i x = _mm256_maskz_loadu_epi8(nbytes == 32 ? 0xffffffffu : 0xffffu, (const uint8_t *)W->data + n * (K / 2) + k0 / 2);
    __m256i m15 = _mm256_set1_epi8(15);
    __m256i lo = _mm256_and_si256(x, m15), hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), m15);
    __m512i z = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);        /* [lo.l0 lo.l1 hi.l0 hi.l1] */
    z = _mm512_shuffle_i64x2(z, z, 0xD8);                                      /* [lo.l0 hi.l0 lo.l1 hi.l1] */
    return _mm512_sub_epi8(z, _mm512_set1_epi8(8));
}

static void pack_task(void *arg, int p, int thread) {
    (void)thread;
    qjob *j = arg;
    int8_t *dst = j->P + (size_t)p * j->panel_bytes;
    int32_t *corr = (int32_t *)(dst + (size_t)j->Kp * PANEL);
    float *scl = (float *)(corr + (size_t)j->nb * PANEL);
    const int K = j->K, Kq = j->Kp / 4, qq = j->qb / 4, nsb = K / j->W->qblock;
    const __m512i ones = _mm512_set1_epi8(1), m128 = _mm512_set1_epi32(-128);
    __m512i csum[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()};
    for (int k0 = 0; k0 < K; k0 += 64) {
        for (int h = 0; h < 2; h++) {
            __m512i r[16];
            for (int i = 0; i < 16; i++) {
                int64_t n = (int64_t)p * PANEL + 16 * h + i;
                r[i] = n < j->N ? load_codes64(j->W, n, K, k0) : _mm512_setzero_si512();
            }
            tr16(r);
            for (int q = 0; q < 16; q++) {
                int gq = k0 / 4 + q;
                if (gq >= Kq) break;
                _mm512_store_si512(dst + ((size_t)gq * PANEL + 16 * h) * 4, r[q]);
                csum[h] = _mm512_dpbusd_epi32(csum[h], ones, r[q]);
                if ((gq + 1) % qq == 0) {
                    _mm512_store_si512(corr + (gq / qq) * PANEL + 16 * h, _mm512_mullo_epi32(csum[h], m128));
                    csum[h] = _mm512_setzero_si512();
                }
            }
        }
    }
    for (int c = 0; c < PANEL; c++) {
        int64_t n = (int64_t)p * PANEL + c;
        for (int b = 0; b < j->nb; b++) scl[b * PANEL + c] = n < j->N ? j->W->qscale[n * nsb + b] : 0.0f;
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

/* acc += dot4(u8 a, s8 w) per lane, in place: GCC's _mm512_dpbusd_epi32 copies the accumulator around
 * every instruction in unrolled loops (two extra moves per vpdpbusd); the asm ties it to one register. */
#define DPBUSD(acc, a, w) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(w))

/* Per-row scales, 8 rows x 32 columns, written out with named accumulators (GCC shuffled the array form
 * through the stack): 16 int32 accumulators, 2 weight vectors, 1 broadcast. */
#define QROW_DECL(r) __m512i c##r##0 = c0, c##r##1 = c1; const uint8_t *a##r = A + (r < mr ? r : 0) * lda;
#define QROW_STEP(r)                                                                                       \
    {                                                                                                      \
        __m512i a = bcast4(a##r, q);                                                                       \
        DPBUSD(c##r##0, a, w0);                                                                            \
        DPBUSD(c##r##1, a, w1);                                                                            \
    }
#define QROW_OUT(r) f0[r] = _mm512_mul_ps(_mm512_cvtepi32_ps(c##r##0), s0), f1[r] = _mm512_mul_ps(_mm512_cvtepi32_ps(c##r##1), s1);

static void ukr_row(int mr, int nr, const qjob *j, const uint8_t *A, const int8_t *P, const float *sa, const float *bias,
                    float *y) {
    const int64_t lda = j->Kp;
    const int Kq = j->Kp / 4;
    const int32_t *corr = (const int32_t *)(P + (size_t)j->Kp * PANEL);
    const float *scl = (const float *)(corr + PANEL);
    const __m512i c0 = _mm512_load_si512(corr), c1 = _mm512_load_si512(corr + 16);
    QROW_DECL(0) QROW_DECL(1) QROW_DECL(2) QROW_DECL(3) QROW_DECL(4) QROW_DECL(5) QROW_DECL(6) QROW_DECL(7)
    for (int q = 0; q < Kq; q++) {
        const __m512i w0 = _mm512_load_si512(P + (size_t)q * 128), w1 = _mm512_load_si512(P + (size_t)q * 128 + 64);
        QROW_STEP(0) QROW_STEP(1) QROW_STEP(2) QROW_STEP(3) QROW_STEP(4) QROW_STEP(5) QROW_STEP(6) QROW_STEP(7)
    }
    const __m512 s0 = _mm512_load_ps(scl), s1 = _mm512_load_ps(scl + 16);   /* fma(d, s, 0) == d s */
    __m512 f0[8], f1[8];
    QROW_OUT(0) QROW_OUT(1) QROW_OUT(2) QROW_OUT(3) QROW_OUT(4) QROW_OUT(5) QROW_OUT(6) QROW_OUT(7)
    store_tile(8, f0, f1, mr, nr, sa, bias, y, j->N);
}

/* Block scales, 6 rows x 32 columns: per block the int32 sums start at the block's corrections and are
 * scaled into 12 float accumulators. */
#define QBLK_DECL(r) __m512i c##r##0, c##r##1; __m512 f##r##0 = _mm512_setzero_ps(), f##r##1 = _mm512_setzero_ps(); \
    const uint8_t *a##r = A + (r < mr ? r : 0) * lda;
#define QBLK_INIT(r) c##r##0 = k0, c##r##1 = k1;
#define QBLK_STEP(r)                                                                                       \
    {                                                                                                      \
        __m512i a = bcast4(a##r, q0 + q);                                                                  \
        DPBUSD(c##r##0, a, w0);                                                                            \
        DPBUSD(c##r##1, a, w1);                                                                            \
    }
#define QBLK_ACC(r) f##r##0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(c##r##0), s0, f##r##0), \
                    f##r##1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(c##r##1), s1, f##r##1);
#define QBLK_OUT(r) f0[r] = f##r##0, f1[r] = f##r##1;

static void ukr_blk(int mr, int nr, const qjob *j, const uint8_t *A, const int8_t *P, const float *sa, const float *bias,
                    float *y) {
    const int64_t lda = j->Kp;
    const int qq = j->qb / 4;
    const int32_t *corr = (const int32_t *)(P + (size_t)j->Kp * PANEL);
    const float *scl = (const float *)(corr + (size_t)j->nb * PANEL);
    QBLK_DECL(0) QBLK_DECL(1) QBLK_DECL(2) QBLK_DECL(3) QBLK_DECL(4) QBLK_DECL(5)
    for (int b = 0; b < j->nb; b++) {
        const __m512i k0 = _mm512_load_si512(corr + b * PANEL), k1 = _mm512_load_si512(corr + b * PANEL + 16);
        QBLK_INIT(0) QBLK_INIT(1) QBLK_INIT(2) QBLK_INIT(3) QBLK_INIT(4) QBLK_INIT(5)
        const int8_t *pb = P + (size_t)b * qq * 128;
        const int q0 = b * qq;
        for (int q = 0; q < qq; q++) {
            const __m512i w0 = _mm512_load_si512(pb + q * 128), w1 = _mm512_load_si512(pb + q * 128 + 64);
            QBLK_STEP(0) QBLK_STEP(1) QBLK_STEP(2) QBLK_STEP(3) QBLK_STEP(4) QBLK_STEP(5)
        }
        const __m512 s0 = _mm512_load_ps(scl + b * PANEL), s1 = _mm512_load_ps(scl + b * PANEL + 16);
        QBLK_ACC(0) QBLK_ACC(1) QBLK_ACC(2) QBLK_ACC(3) QBLK_ACC(4) QBLK_ACC(5)
    }
    __m512 f0[6], f1[6];
    QBLK_OUT(0) QBLK_OUT(1) QBLK_OUT(2) QBLK_OUT(3) QBLK_OUT(4) QBLK_OUT(5)
    store_tile(6, f0, f1, mr, nr, sa, bias, y, j->N);
}

/* One task: rows [mb tm, mb tm + mb) x panels [PG tp, PG tp + PG). */
static void gemm_task(void *arg, int t, int thread) {
    (void)thread;
    const qjob *j = arg;
    int tm = t % j->ntm, tp = t / j->ntm;
    int m0 = tm * j->mb, m1 = m0 + j->mb < j->M ? m0 + j->mb : j->M;
    int mrx = j->blocked ? 6 : 8;
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

/* ---- small M, blocks of 32 codes (Q4, or Q8 with qblock 32): 64 codes = two blocks per vpdpbusd, the two
 * 8-lane halves reduced to one sum per block, then the float steps in block order. */
static void small_blk_task(void *arg, int t, int thread) {
    (void)thread;
    const small_job *s = arg;
    const qjob *j = s->j;
    int n0 = t * s->chunk, n1 = n0 + s->chunk < j->N ? n0 + s->chunk : j->N, K = j->K, nb = K / 32;
    const __m512i k128 = _mm512_set1_epi8((char)0x80), zero = _mm512_setzero_si512();
    for (int n = n0; n < n1; n++) {
        float acc[SMALL_M] = {0};
        for (int k0 = 0; k0 < K; k0 += 64) {
            __m512i w = load_codes64(j->W, n, K, k0);
            int two = K - k0 >= 64;
            __m512i corr = _mm512_dpbusd_epi32(zero, k128, w);   /* 128 x (sum of each lane's 4 codes) */
            const float *sc = j->W->qscale + (int64_t)n * nb + k0 / 32;
            __mmask64 mk = two ? ~(__mmask64)0 : (__mmask64)0xffffffffu;
            for (int m = 0; m < j->M; m++) {
                __m512i a = _mm512_maskz_loadu_epi8(mk, j->A + (int64_t)m * j->Kp + k0);
                __m512i v = _mm512_sub_epi32(_mm512_dpbusd_epi32(zero, a, w), corr);
                __m256i p = _mm256_hadd_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
                p = _mm256_hadd_epi32(p, p);
                __m128i q = _mm_add_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1));   /* [b, b+1, b, b+1] */
                acc[m] = fmaf((float)_mm_cvtsi128_si32(q), sc[0], acc[m]);
                if (two) acc[m] = fmaf((float)_mm_extract_epi32(q, 1), sc[1], acc[m]);
            }
        }
        for (int m = 0; m < j->M; m++) j->y[(int64_t)m * j->N + n] = fmaf(acc[m], j->sa[m], j->bias ? j->bias[n] : 0.0f);
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
    if (M <= SMALL_M && (per_row || qblock == 32)) {
        small_job s = {&j, 0};
        int nt = pool_threads() * 4;
        s.chunk = (N + nt - 1) / nt;
        if (s.chunk < 8) s.chunk = 8;
        pool_run((N + s.chunk - 1) / s.chunk, per_row ? small_task : small_blk_task, &s);
    } else {
        j.npanel = (N + PANEL - 1) / PANEL;
        j.panel_bytes = (size_t)j.Kp * PANEL + (size_t)j.nb * PANEL * 8;
        j.P = sd3_malloc(j.panel_bytes * (size_t)j.npanel);
        if (!j.P) { sd3_free(j.A); sd3_free(j.sa); return 0; }
        pool_run(j.npanel, pack_task, &j);
        j.mb = (int)((256 * 1024) / (size_t)j.Kp) / 24 * 24;
        j.mb = j.mb < 24 ? 24 : j.mb > MB_MAX ? MB_MAX : j.mb;
        j.ntm = (M + j.mb - 1) / j.mb;
        j.ntp = (j.npanel + PG - 1) / PG;
        pool_run(j.ntm * j.ntp, gemm_task, &j);
        sd3_free(j.P);
    }
    sd3_free(j.A);
    sd3_free(j.sa);
    return 1;
}

/* k_quant_weight_row with AVX-512: the same divisions and roundings as the ref (IEEE division, cvtps rounds
 * half to even), so the codes and scales are identical. Blocks must be multiples of 16 (else declines). */
int kq_quant_weight_row_avx512(const float *w, int K, int qb, int qmax, int8_t *q, float *s) {
    if (qb % 16 || K % qb) return 0;
    const __m512 fq = _mm512_set1_ps((float)qmax), nq = _mm512_set1_ps(-(float)qmax), zero = _mm512_setzero_ps();
    for (int b = 0; b < K / qb; b++) {
        const float *wb = w + (int64_t)b * qb;
        __m512 mx = zero, chk = zero;
        for (int k = 0; k < qb; k += 16) {
            __m512 v = _mm512_loadu_ps(wb + k);
            mx = _mm512_max_ps(mx, _mm512_abs_ps(v));
            chk = _mm512_add_ps(chk, _mm512_mul_ps(v, zero));   /* NaN once any w is Inf or NaN */
        }
        float amax = _mm512_reduce_max_ps(mx), bad = _mm512_reduce_add_ps(chk);
        float sc = bad == 0.0f ? amax / (float)qmax : NAN;
        s[b] = sc;
        if (!(sc > 0.0f)) { memset(q + (int64_t)b * qb, 0, (size_t)qb); continue; }
        __m512 vs = _mm512_set1_ps(sc);
        for (int k = 0; k < qb; k += 16) {
            __m512 v = _mm512_div_ps(_mm512_loadu_ps(wb + k), vs);
            v = _mm512_min_ps(_mm512_max_ps(_mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), nq), fq);
            _mm_storeu_si128((__m128i *)(q + (int64_t)b * qb + k), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)));
        }
    }
    return 1;
}

#else
int kq_quant_weight_row_avx512(const float *w, int K, int qb, int qmax, int8_t *q, float *s) {
    (void)w, (void)K, (void)qb, (void)qmax, (void)q, (void)s;
    return 0;
}
int kq_linear_avx512(float *y, const float *x, const tensor *W, const float *bias, int M, int N, int K) {
    (void)y, (void)x, (void)W, (void)bias, (void)M, (void)N, (void)K;
    return 0;
}
#endif

/* gemm_avx512.c — AVX-512 GEMM microkernels (F32 FMA 12x32 and AVX512_BF16 dot product 12x32), F16/BF16
 * row widening and the small-M linear. Compiled with -mavx512f/bw/vl/dq/bf16 (Makefile: "_avx512" files);
 * only reached after cpu_get() confirmed the features. */
#include <string.h>
#include "kernels/cpu/kcpu.h"

#if defined(__AVX512F__) && defined(__AVX512BF16__)
#include <immintrin.h>
#include "kernels/cpu/simd_avx512.h"

#define X_MR 12
#define X_NR 32

/* Lane masks for the two 16-wide halves of an nr-wide (nr <= 32) column sliver. */
static inline void nr_masks(int nr, __mmask16 *m0, __mmask16 *m1) {
    *m0 = nr >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << nr) - 1);
    *m1 = nr >= 32 ? (__mmask16)0xffff : nr > 16 ? (__mmask16)((1u << (nr - 16)) - 1) : 0;
}

/* Store (or accumulate) the 12x32 accumulator block into C, rows < mr, columns < nr, with biases. */
static inline __attribute__((always_inline)) void store_block(__m512 *c0, __m512 *c1, float *C, int64_t ldc, int mr, int nr,
                                                              int accum, const float *bias_n, const float *bias_m) {
    __mmask16 k0, k1;
    nr_masks(nr, &k0, &k1);
    __m512 bn0 = _mm512_setzero_ps(), bn1 = _mm512_setzero_ps();
    if (!accum && bias_n) { bn0 = _mm512_maskz_loadu_ps(k0, bias_n); bn1 = _mm512_maskz_loadu_ps(k1, bias_n + 16); }
#pragma GCC unroll 12
    for (int i = 0; i < X_MR; i++) {
        if (i >= mr) break;
        float *c = C + i * ldc;
        __m512 v0 = c0[i], v1 = c1[i];
        if (accum) {
            v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(k0, c));
            v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(k1, c + 16));
        } else {
            v0 = _mm512_add_ps(v0, bn0);
            v1 = _mm512_add_ps(v1, bn1);
            if (bias_m) {
                __m512 bm = _mm512_set1_ps(bias_m[i]);
                v0 = _mm512_add_ps(v0, bm);
                v1 = _mm512_add_ps(v1, bm);
            }
        }
        _mm512_mask_storeu_ps(c, k0, v0);
        _mm512_mask_storeu_ps(c + 16, k1, v1);
    }
}

/* F32 microkernel: 12 rows x 32 columns, 24 zmm accumulators, one broadcast + two FMAs per row and k. */
static void ukr_f32(int kc, const float *Ap, const float *Bp, float *C, int64_t ldc, int mr, int nr, int accum,
                    const float *bias_n, const float *bias_m) {
    __m512 c0[X_MR], c1[X_MR];
#pragma GCC unroll 12
    for (int i = 0; i < X_MR; i++) c0[i] = c1[i] = _mm512_setzero_ps();
    for (int k = 0; k < kc; k++) {
        __m512 b0 = _mm512_load_ps(Bp), b1 = _mm512_load_ps(Bp + 16);
        _mm_prefetch((const char *)(Bp + 8 * X_NR), _MM_HINT_T0);
#pragma GCC unroll 12
        for (int i = 0; i < X_MR; i++) {
            __m512 a = _mm512_set1_ps(Ap[i]);
            c0[i] = _mm512_fmadd_ps(a, b0, c0[i]);
            c1[i] = _mm512_fmadd_ps(a, b1, c1[i]);
        }
        Ap += X_MR;
        Bp += X_NR;
    }
    store_block(c0, c1, C, ldc, mr, nr, accum, bias_n, bias_m);
}

/* F32 microkernel reading A straight from 12 full rows of a row-major F32 matrix (row stride lda): no
 * packing of the activations. Rows are addressed as 4 advancing pointers (rows 0, 3, 6, 9) plus offsets
 * lda and 2·lda, so the loop needs few registers. */
static void ukr_f32_direct(int kc, const float *A, int64_t lda, const float *Bp, float *C, int64_t ldc, int nr, int accum,
                           const float *bias_n, const float *bias_m) {
    __m512 c0[X_MR], c1[X_MR];
#pragma GCC unroll 12
    for (int i = 0; i < X_MR; i++) c0[i] = c1[i] = _mm512_setzero_ps();
    const float *p0 = A, *p3 = A + 3 * lda, *p6 = A + 6 * lda, *p9 = A + 9 * lda;
    const int64_t l1 = lda, l2 = 2 * lda;
    for (int k = 0; k < kc; k++) {
        __m512 b0 = _mm512_load_ps(Bp), b1 = _mm512_load_ps(Bp + 16);
        __m512 a;
#define ROW(i, p, off)                                                                                                 \
    a = _mm512_set1_ps(p[off]);                                                                                        \
    c0[i] = _mm512_fmadd_ps(a, b0, c0[i]);                                                                             \
    c1[i] = _mm512_fmadd_ps(a, b1, c1[i]);
        ROW(0, p0, 0) ROW(1, p0, l1) ROW(2, p0, l2)
        ROW(3, p3, 0) ROW(4, p3, l1) ROW(5, p3, l2)
        ROW(6, p6, 0) ROW(7, p6, l1) ROW(8, p6, l2)
        ROW(9, p9, 0) ROW(10, p9, l1) ROW(11, p9, l2)
#undef ROW
        p0++; p3++; p6++; p9++;
        Bp += X_NR;
    }
    store_block(c0, c1, C, ldc, X_MR, nr, accum, bias_n, bias_m);
}

/* bf16 microkernel: the same block with vdpbf16ps, two k per instruction (pairs packed by the driver). */
static void ukr_bf16(int kc2, const uint32_t *Ap, const uint32_t *Bp, float *C, int64_t ldc, int mr, int nr, int accum,
                     const float *bias_n, const float *bias_m) {
    __m512 c0[X_MR], c1[X_MR];
#pragma GCC unroll 12
    for (int i = 0; i < X_MR; i++) c0[i] = c1[i] = _mm512_setzero_ps();
    /* C's rows are fetched while the products run (the tile is usually far out of cache), and A a few
     * lines ahead: the first call on a fresh A sliver otherwise waits on memory (measured ~15%). */
#pragma GCC unroll 12
    for (int i = 0; i < X_MR; i++)
        if (i < mr) { _mm_prefetch((const char *)(C + i * ldc), _MM_HINT_T0); _mm_prefetch((const char *)(C + i * ldc + 16), _MM_HINT_T0); }
    for (int t = 0; t < kc2; t++) {
        __m512bh b0 = (__m512bh)_mm512_load_si512((const void *)Bp), b1 = (__m512bh)_mm512_load_si512((const void *)(Bp + 16));
        _mm_prefetch((const char *)(Ap + 64 * X_MR), _MM_HINT_T0);
#pragma GCC unroll 12
        for (int i = 0; i < X_MR; i++) {
            __m512bh a = (__m512bh)_mm512_set1_epi32((int)Ap[i]);
            c0[i] = _mm512_dpbf16_ps(c0[i], a, b0);
            c1[i] = _mm512_dpbf16_ps(c1[i], a, b1);
        }
        Ap += X_MR;
        Bp += X_NR;
    }
    store_block(c0, c1, C, ldc, mr, nr, accum, bias_n, bias_m);
}

/* Widen n elements of t from off to F32 (vcvtph2ps for F16, a 16-bit shift for BF16). */
static void cvt_row_avx512(const tensor *t, int64_t off, int n, float *dst) {
    int i = 0;
    if (t->dt == DT_F32) {
        memcpy(dst, (const float *)t->data + off, sizeof(float) * (size_t)n);
    } else if (t->dt == DT_F16) {
        const uint16_t *s = (const uint16_t *)t->data + off;
        for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(s + i))));
        if (i < n) {
            __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
            _mm512_mask_storeu_ps(dst + i, m, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, s + i)));
        }
    } else if (t->dt == DT_BF16) {
        const uint16_t *s = (const uint16_t *)t->data + off;
        for (; i + 16 <= n; i += 16) {
            __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(s + i)));
            _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
        }
        if (i < n) {
            __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
            __m512i v = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, s + i));
            _mm512_mask_storeu_ps(dst + i, m, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
        }
    } else if (kc_f8_lut(t->dt)) {
        const float *lut = kc_f8_lut(t->dt);
        const uint8_t *s8 = (const uint8_t *)t->data + off;
        for (; i < n; i++) dst[i] = lut[s8[i]];
    } else {
        tensor_to_f32(t, off, n, dst);
    }
}

/* 16 values of a row of a kc_rows matrix at element off (masked), widened to F32. */
static inline __m512 load_row16(const kc_rows *c, int64_t off, __mmask16 m, const float *lut) {
    if (c->f32) return _mm512_maskz_loadu_ps(m, c->f32 + off);
    if (c->t->dt == DT_F32) return _mm512_maskz_loadu_ps(m, (const float *)c->t->data + off);
    if (lut) /* fp8: bytes -> table indices (masked lanes read entry 0, which is +0) */
        return _mm512_i32gather_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, (const uint8_t *)c->t->data + off)), lut, 4);
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)c->t->data + off);
    if (c->t->dt == DT_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* kc_pack_rows for F32/F16/BF16 data: 16x16 blocks widened and transposed in registers, written as whole
 * vectors (masked to R columns when R is no multiple of 16). Returns 0 when it cannot handle the case. */
static int pack_rows_avx512(const void *vctx, int idx0, int cnt, int k0, int kc, int R, float *dst) {
    const kc_rows *c = vctx;
    const float *lut = c->f32 ? NULL : kc_f8_lut(c->t->dt);
    if (!c->f32 && !lut && c->t->dt != DT_F32 && c->t->dt != DT_F16 && c->t->dt != DT_BF16) return 0;
    for (int g = 0; g < R; g += 16) {
        int rows = cnt - g < 16 ? (cnt - g > 0 ? cnt - g : 0) : 16, width = R - g < 16 ? R - g : 16;
        __mmask16 wm = width == 16 ? (__mmask16)0xffff : (__mmask16)((1u << width) - 1);
        for (int k = 0; k < kc; k += 16) {
            int kl = kc - k < 16 ? kc - k : 16;
            __mmask16 m = kl == 16 ? (__mmask16)0xffff : (__mmask16)((1u << kl) - 1);
            __m512 r[16];
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++)
                r[i] = i < rows ? load_row16(c, (int64_t)(idx0 + g + i) * c->ld + k0 + k, m, lut) : _mm512_setzero_ps();
            transpose16(r);
            if (width == 16 && R % 16 == 0)
                for (int t = 0; t < kl; t++) _mm512_store_ps(dst + (int64_t)(k + t) * R + g, r[t]);
            else
                for (int t = 0; t < kl; t++) _mm512_mask_storeu_ps(dst + (int64_t)(k + t) * R + g, wm, r[t]);
        }
    }
    return 1;
}

/* F32 sliver [kc][R] -> bf16 pairs [ceil(kc/2)][R] for R a multiple of 16: vcvtne2ps2bf16 rounds two
 * k-rows to nearest even, a word permutation interleaves them into (k even, k odd) pairs. */
static int to_bf16_pairs_avx512(const float *src, int kc, int R, uint32_t *dst) {
    if (R % 16) return 0;
    const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
                                         19, 3, 18, 2, 17, 1, 16, 0);
    for (int t = 0; t < (kc + 1) / 2; t++) {
        const float *r0 = src + (int64_t)2 * t * R, *r1 = r0 + R;
        int has1 = 2 * t + 1 < kc;
        for (int i = 0; i < R; i += 16) {
            __m512 lo = _mm512_loadu_ps(r0 + i), hi = has1 ? _mm512_loadu_ps(r1 + i) : _mm512_setzero_ps();
            __m512i both = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);   /* words 0..15 = lo, 16..31 = hi */
            _mm512_storeu_si512((void *)(dst + (int64_t)t * R + i), _mm512_permutexvar_epi16(idx, both));
        }
    }
    return 1;
}

/* 16 bf16 pairs (32 consecutive elements from element off, the first e of them valid, the rest read as 0)
 * of one row of a kc_rows source, as 16 dwords: word 2t = element 2t, word 2t+1 = element 2t+1. BF16
 * data is copied as is; F32/F16 rounds to nearest even (vcvtne2ps2bf16, like f32_to_bf16). */
static inline __m512i row_pairs16(const kc_rows *c, int64_t off, int e) {
    __mmask16 m0 = e >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << e) - 1);
    __mmask16 m1 = e >= 32 ? (__mmask16)0xffff : e > 16 ? (__mmask16)((1u << (e - 16)) - 1) : 0;
    __m512 lo, hi;
    if (c->f32 || c->t->dt == DT_F32) {
        const float *p = c->f32 ? c->f32 + off : (const float *)c->t->data + off;
        lo = _mm512_maskz_loadu_ps(m0, p);
        hi = _mm512_maskz_loadu_ps(m1, p + 16);
    } else if (c->t->dt == DT_BF16) {
        __mmask32 m = e >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << e) - 1);
        return _mm512_maskz_loadu_epi16(m, (const uint16_t *)c->t->data + off);
    } else { /* F16 */
        const uint16_t *p = (const uint16_t *)c->t->data + off;
        lo = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m0, p));
        hi = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m1, p + 16));
    }
    return (__m512i)_mm512_cvtne2ps_pbh(hi, lo); /* words 0..15 = lo, 16..31 = hi: the pairs in order */
}

/* kc_isa.pack_rows_bf16: rows idx0.. (cnt of them, zero rows up to R) x elements k0..k0+kc-1 straight into
 * bf16 pairs [ceil(kc/2)][R]: 16 rows x 16 pairs per in-register 16x16 dword transpose. A BF16 weight is
 * never widened (its pairs are already adjacent in memory). Declines fp8 and quantised tensors. */
static int pack_rows_bf16_avx512(const void *vctx, int idx0, int cnt, int k0, int kc, int R, uint32_t *dst) {
    const kc_rows *c = vctx;
    if (!c->f32 && c->t->dt != DT_F32 && c->t->dt != DT_F16 && c->t->dt != DT_BF16) return 0;
    int kc2 = (kc + 1) / 2;
    for (int g = 0; g < R; g += 16) {
        int rows = cnt - g < 16 ? (cnt - g > 0 ? cnt - g : 0) : 16, width = R - g < 16 ? R - g : 16;
        __mmask16 wm = width == 16 ? (__mmask16)0xffff : (__mmask16)((1u << width) - 1);
        for (int t0 = 0; t0 < kc2; t0 += 16) {
            int e = kc - 2 * t0, tl = kc2 - t0 < 16 ? kc2 - t0 : 16;
            __m512 r[16];
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++)
                r[i] = i < rows ? _mm512_castsi512_ps(row_pairs16(c, (int64_t)(idx0 + g + i) * c->ld + k0 + 2 * t0, e))
                                : _mm512_setzero_ps();
            transpose16(r);
            for (int t = 0; t < tl; t++) _mm512_mask_storeu_ps((float *)dst + (int64_t)(t0 + t) * R + g, wm, r[t]);
        }
    }
    return 1;
}

/* 16 weights at element off (masked by m) widened to F32. */
static inline __m512 load_w16(const tensor *W, int64_t off, __mmask16 m) {
    if (W->dt == DT_F32) return _mm512_maskz_loadu_ps(m, (const float *)W->data + off);
    const uint16_t *s = (const uint16_t *)W->data + off;
    __m256i h = _mm256_maskz_loadu_epi16(m, s);
    if (W->dt == DT_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* Horizontal sum of 16 lanes. */
static inline float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }

/* Small-M linear (M <= 4): y[m, n] = x[m] . W[n] + b[n] for n in [n0, n1); W streamed once, two rows of W
 * at a time so that 2*M independent FMA chains hide the latency. */
static void gemv_avx512(float *y, const float *x, const tensor *W, const float *bias, int M, int N, int K, int n0, int n1) {
    if (W->dt != DT_F32 && W->dt != DT_F16 && W->dt != DT_BF16) {
        kc_isa_portable()->gemv(y, x, W, bias, M, N, K, n0, n1);
        return;
    }
    int n = n0;
    for (; n + 2 <= n1; n += 2) {
        __m512 a0[4], a1[4];
        for (int m = 0; m < 4; m++) a0[m] = a1[m] = _mm512_setzero_ps();
        for (int k = 0; k < K; k += 16) {
            __mmask16 mk = K - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (K - k)) - 1);
            __m512 w0 = load_w16(W, (int64_t)n * K + k, mk), w1 = load_w16(W, (int64_t)(n + 1) * K + k, mk);
            for (int m = 0; m < M; m++) {
                __m512 xv = _mm512_maskz_loadu_ps(mk, x + (int64_t)m * K + k);
                a0[m] = _mm512_fmadd_ps(xv, w0, a0[m]);
                a1[m] = _mm512_fmadd_ps(xv, w1, a1[m]);
            }
        }
        for (int m = 0; m < M; m++) {
            y[(int64_t)m * N + n] = hsum(a0[m]) + (bias ? bias[n] : 0.0f);
            y[(int64_t)m * N + n + 1] = hsum(a1[m]) + (bias ? bias[n + 1] : 0.0f);
        }
    }
    for (; n < n1; n++) {
        __m512 a0[4];
        for (int m = 0; m < 4; m++) a0[m] = _mm512_setzero_ps();
        for (int k = 0; k < K; k += 16) {
            __mmask16 mk = K - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (K - k)) - 1);
            __m512 w0 = load_w16(W, (int64_t)n * K + k, mk);
            for (int m = 0; m < M; m++) a0[m] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, x + (int64_t)m * K + k), w0, a0[m]);
        }
        for (int m = 0; m < M; m++) y[(int64_t)m * N + n] = hsum(a0[m]) + (bias ? bias[n] : 0.0f);
    }
}

/* From attn_avx512.c and norm_avx512.c. */
void kc_attn_tile_avx512(float *o, const float *q, const float *k, const float *v, const attn_params *p, int b, int h, int i0,
                         int i1, float *scratch);
void kc_attn_tile_bf16_avx512(float *o, const float *q, const float *k, const float *v, const attn_params *p, int b, int h, int i0,
                              int i1, float *scratch);
void kc_act_avx512(int kind, float *y, const float *x, size_t n);
void kc_layernorm_avx512(float *y, const float *x, const float *w, const float *b, int rows, int C, float eps);
void kc_rmsnorm_avx512(float *y, const float *x, const float *w, int rows, int C, float eps);
void kc_groupnorm_group_avx512(float *y, const float *x, const float *w, const float *b, int cg, int HW, float eps);

static const kc_isa g_avx512 = {
    .name = "avx512", .MR = X_MR, .NR = X_NR, .ukr = ukr_f32, .ukr_direct = ukr_f32_direct, .ukr_bf16 = ukr_bf16, .cvt_row = cvt_row_avx512,
    .gemv = gemv_avx512, .pack_rows = pack_rows_avx512, .pack_rows_bf16 = pack_rows_bf16_avx512, .to_bf16_pairs = to_bf16_pairs_avx512, .attn_tile = kc_attn_tile_avx512, .attn_tile_bf16 = kc_attn_tile_bf16_avx512, .act = kc_act_avx512,
    .layernorm = kc_layernorm_avx512, .rmsnorm = kc_rmsnorm_avx512, .groupnorm_group = kc_groupnorm_group_avx512,
};
/* The AVX-512 table (dispatch checks the CPU first). */
const kc_isa *kc_isa_avx512(void) { return &g_avx512; }

#else
/* Not compiled with AVX-512: no table. */
const kc_isa *kc_isa_avx512(void) { return NULL; }
#endif

/* attn_avx2.c — AVX2+FMA flash-attention tile and exp-based activations, for x86-64 CPUs without
 * AVX-512 (same algorithm as attn_avx512.c, 8-wide, with 16 ymm registers: two query rows at a time).
 *
 * exp: as in attn_avx512.c (Cody–Waite reduction, degree-7 Taylor polynomial), with 2^n built in the
 * exponent field in two halves (2^(n/2)·2^(n - n/2)) so that the result overflows to inf and underflows
 * through the subnormals like expf. */
#include <math.h>
#include <string.h>
#include "kernels/cpu/kcpu.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

/* 2^n for integer-valued n in [-254, 254] as a float (exact, as two factors). */
static inline __m256 pow2_256(__m256 n) {
    __m256i ni = _mm256_cvtps_epi32(n);
    __m256i h = _mm256_srai_epi32(ni, 1), r = _mm256_sub_epi32(ni, h);
    __m256 a = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(h, _mm256_set1_epi32(127)), 23));
    __m256 b = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(r, _mm256_set1_epi32(127)), 23));
    return _mm256_mul_ps(a, b);
}

/* e^x for 8 lanes; NaN stays NaN. */
static inline __m256 exp256(__m256 x) {
    __m256 nanm = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
    __m256 xc = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-150.0f)), _mm256_set1_ps(89.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606820309417232e-6f), r);
    __m256 pl = _mm256_set1_ps(1.0f / 5040.0f);
    pl = _mm256_fmadd_ps(pl, r, _mm256_set1_ps(1.0f / 720.0f));
    pl = _mm256_fmadd_ps(pl, r, _mm256_set1_ps(1.0f / 120.0f));
    pl = _mm256_fmadd_ps(pl, r, _mm256_set1_ps(1.0f / 24.0f));
    pl = _mm256_fmadd_ps(pl, r, _mm256_set1_ps(1.0f / 6.0f));
    pl = _mm256_fmadd_ps(pl, r, _mm256_set1_ps(0.5f));
    pl = _mm256_fmadd_ps(pl, r, _mm256_set1_ps(1.0f));
    pl = _mm256_fmadd_ps(pl, r, _mm256_set1_ps(1.0f));
    __m256 y = _mm256_mul_ps(pl, pow2_256(n));
    return _mm256_blendv_ps(y, x, nanm);
}

/* Lane mask (all ones) for the first `left` of 8 lanes. */
static inline __m256i lanes8(int left) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(left), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* See kc_isa.act; gelu_erf stays scalar erff (as in the AVX-512 version). */
void kc_act_avx2(int kind, float *y, const float *x, size_t n) {
    if (kind == KC_ACT_GELU_ERF) {
        for (size_t i = 0; i < n; i++) y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
        return;
    }
    for (size_t i = 0; i < n; i += 8) {
        int left = n - i >= 8 ? 8 : (int)(n - i);
        __m256i m = lanes8(left);
        __m256 v = _mm256_maskload_ps(x + i, m), r, cx;
        switch (kind) {
        case KC_ACT_SILU: cx = v; break;
        case KC_ACT_QUICK_GELU: cx = _mm256_mul_ps(v, _mm256_set1_ps(1.702f)); break;
        case KC_ACT_GELU_TANH: {
            __m256 v3 = _mm256_mul_ps(_mm256_mul_ps(v, v), v);
            __m256 z = _mm256_mul_ps(_mm256_set1_ps(0.79788456080286536f), _mm256_fmadd_ps(_mm256_set1_ps(0.044715f), v3, v));
            cx = _mm256_add_ps(z, z);
            break;
        }
        default: cx = v; break;
        }
        if (kind == KC_ACT_EXP) r = exp256(v);
        else r = _mm256_div_ps(v, _mm256_add_ps(_mm256_set1_ps(1.0f), exp256(_mm256_sub_ps(_mm256_setzero_ps(), cx))));
        _mm256_maskstore_ps(y + i, m, r);
    }
}

/* Horizontal max / sum of 8 lanes. */
static inline float hmax8(__m256 v) {
    __m128 a = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_max_ps(a, _mm_movehl_ps(a, a));
    a = _mm_max_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
}
static inline float hsum8(__m256 v) {
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
}

#define BQ KC_ATTN_BQ
#define BK KC_ATTN_BK

/* One (batch b, head h, queries [i0, i1)) task: K^T packed once, then two query rows at a time. */
void kc_attn_tile_avx2(float *o, const float *q, const float *k, const float *v, const attn_params *p, int b, int h, int i0,
                       int i1, float *scratch) {
    int D = p->D, Dp = (D + 15) / 16 * 16;
    float *S = scratch, *O = S + (size_t)BQ * BK, *m = O + (size_t)BQ * Dp, *l = m + BQ, *alpha = l + 16 * BQ, *Kt = alpha + BQ;
    const float *kb = k + b * p->k_bstride + (int64_t)h * D;
    const float *vb = v + b * p->v_bstride + (int64_t)h * D;
    const float ninf = -INFINITY;
    /* K^T of every key the task needs, once: tile t (keys t*BK ..) is a [D][BK] block at Kt + t*D*BK */
    int Tk_all = p->causal && i1 < p->Tk ? i1 : p->Tk;
    for (int j0 = 0; j0 < Tk_all; j0 += BK) {
        int nk = Tk_all - j0 < BK ? Tk_all - j0 : BK;
        float *blk = Kt + (int64_t)(j0 / BK) * D * BK;
        for (int jj = 0; jj < BK; jj++) {
            const float *kj = kb + (int64_t)(j0 + jj) * p->k_ld;
            for (int d = 0; d < D; d++) blk[(int64_t)d * BK + jj] = jj < nk ? kj[d] : 0.0f;
        }
    }
    for (int c0 = i0; c0 < i1; c0 += BQ) {
        int c1 = c0 + BQ < i1 ? c0 + BQ : i1, nq = c1 - c0;
        int Tk = p->causal && c1 < p->Tk ? c1 : p->Tk;
        const float *qb = q + b * p->q_bstride + (int64_t)c0 * p->q_ld + (int64_t)h * D;
        for (int r = 0; r < nq; r++) { m[r] = ninf; l[r] = 0.0f; }
        memset(O, 0, sizeof(float) * (size_t)nq * Dp);
        for (int j0 = 0; j0 < Tk; j0 += BK) {
            int nk = Tk - j0 < BK ? Tk - j0 : BK;
            const float *Ktj = Kt + (int64_t)(j0 / BK) * D * BK;
            for (int r = 0; r < nq; r += 2) {
                int two = r + 1 < nq;
                const float *q0 = qb + (int64_t)r * p->q_ld, *q1 = two ? q0 + p->q_ld : q0;
                /* scores, 32 keys per pass: 2 rows x 4 ymm accumulators */
                for (int jh = 0; jh < BK; jh += 32) {
                    __m256 a0[4], a1[4];
                    #pragma GCC unroll 4
                    for (int c = 0; c < 4; c++) a0[c] = a1[c] = _mm256_setzero_ps();
                    for (int d = 0; d < D; d++) {
                        const float *kt = Ktj + (int64_t)d * BK + jh;
                        __m256 b0 = _mm256_broadcast_ss(q0 + d), b1 = _mm256_broadcast_ss(q1 + d);
                        #pragma GCC unroll 4
                        for (int c = 0; c < 4; c++) {
                            __m256 kv = _mm256_load_ps(kt + 8 * c);
                            a0[c] = _mm256_fmadd_ps(b0, kv, a0[c]);
                            a1[c] = _mm256_fmadd_ps(b1, kv, a1[c]);
                        }
                    }
                    __m256 sc = _mm256_set1_ps(p->scale);
                    #pragma GCC unroll 4
                    for (int c = 0; c < 4; c++) {
                        _mm256_store_ps(S + (int64_t)r * BK + jh + 8 * c, _mm256_mul_ps(a0[c], sc));
                        if (two) _mm256_store_ps(S + (int64_t)(r + 1) * BK + jh + 8 * c, _mm256_mul_ps(a1[c], sc));
                    }
                }
                /* bias, mask, online softmax per row */
                for (int rr = r; rr < r + 1 + two; rr++) {
                    int i = c0 + rr, lim = nk;
                    if (p->causal && i + 1 - j0 < lim) lim = i + 1 - j0;
                    if (lim < 0) lim = 0;
                    float *Sr = S + (int64_t)rr * BK;
                    const float *brow = p->bias ? p->bias + ((int64_t)h * p->Tq + i) * p->Tk + j0 : NULL;
                    __m256 mx = _mm256_set1_ps(ninf);
                    for (int c = 0; c < BK; c += 8) {
                        __m256i vm = lanes8(lim - c);
                        __m256 sv = _mm256_load_ps(Sr + c);
                        if (brow) sv = _mm256_add_ps(sv, _mm256_maskload_ps(brow + c, vm));
                        sv = _mm256_blendv_ps(_mm256_set1_ps(ninf), sv, _mm256_castsi256_ps(vm));
                        _mm256_store_ps(Sr + c, sv);
                        mx = _mm256_max_ps(mx, sv);
                    }
                    float mn = hmax8(mx);
                    if (m[rr] > mn) mn = m[rr];
                    float mu = mn == ninf ? 0.0f : mn;
                    float al = mn == m[rr] ? 1.0f : expf(m[rr] - mu);
                    __m256 muv = _mm256_set1_ps(mu), sum = _mm256_setzero_ps();
                    for (int c = 0; c < BK; c += 8) {
                        __m256 e = exp256(_mm256_sub_ps(_mm256_load_ps(Sr + c), muv));
                        sum = _mm256_add_ps(sum, e);
                        _mm256_store_ps(Sr + c, e);
                    }
                    l[rr] = l[rr] * al + hsum8(sum);
                    alpha[rr] = al;
                    m[rr] = mn;
                }
                /* O = alpha O + P V, 32 dims per pass */
                for (int d0 = 0; d0 < D; d0 += 32) {
                    __m256i mk[4];
                    __m256 a0[4], a1[4];
                    float *o0 = O + (int64_t)r * Dp + d0, *o1 = O + (int64_t)(r + two) * Dp + d0;
                    __m256 al0 = _mm256_set1_ps(alpha[r]), al1 = _mm256_set1_ps(alpha[r + two]);
                    #pragma GCC unroll 4
                    for (int c = 0; c < 4; c++) {
                        mk[c] = lanes8(D - d0 - 8 * c);
                        a0[c] = _mm256_mul_ps(al0, _mm256_maskload_ps(o0 + 8 * c, mk[c]));
                        a1[c] = _mm256_mul_ps(al1, _mm256_maskload_ps(o1 + 8 * c, mk[c]));
                    }
                    const float *p0 = S + (int64_t)r * BK, *p1 = S + (int64_t)(r + two) * BK;
                    for (int j = 0; j < nk; j++) {
                        const float *vj = vb + (int64_t)(j0 + j) * p->v_ld + d0;
                        __m256 b0 = _mm256_broadcast_ss(p0 + j), b1 = _mm256_broadcast_ss(p1 + j);
                        #pragma GCC unroll 4
                        for (int c = 0; c < 4; c++) {
                            __m256 vv = _mm256_maskload_ps(vj + 8 * c, mk[c]);
                            a0[c] = _mm256_fmadd_ps(b0, vv, a0[c]);
                            a1[c] = _mm256_fmadd_ps(b1, vv, a1[c]);
                        }
                    }
                    #pragma GCC unroll 4
                    for (int c = 0; c < 4; c++) {
                        _mm256_maskstore_ps(o0 + 8 * c, mk[c], a0[c]);
                        if (two) _mm256_maskstore_ps(o1 + 8 * c, mk[c], a1[c]);
                    }
                }
            }
        }
        for (int r = 0; r < nq; r++) {
            float *oi = o + b * p->o_bstride + (int64_t)(c0 + r) * p->o_ld + (int64_t)h * D;
            float inv = 1.0f / l[r];
            for (int d = 0; d < D; d++) oi[d] = O[(int64_t)r * Dp + d] * inv;
        }
    }
}

#endif

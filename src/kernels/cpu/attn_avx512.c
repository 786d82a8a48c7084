/* attn_avx512.c — AVX-512 flash-attention tile and exp-based activations.
 *
 * exp: x = n·ln2 + r with n = round(x/ln2), r by a two-constant Cody–Waite reduction (ln2_hi has 16
 * significant bits, so n·ln2_hi is exact for |n| < 256), e^r by its degree-7 Taylor polynomial on
 * |r| <= ln2/2 (truncation error < 6e-9 relative, below u/10), then vscalefps for 2^n (exact, and it
 * overflows to inf / underflows through the subnormals to 0 like expf). Measured against exp in double
 * over [-87, 88]: max 0.93 ulp (libm expf: 0.50). The activations built on it: silu within 2.4 ulp of
 * the exact function; quick_gelu and gelu_tanh round their argument (1.702x, the cubic) in F32 exactly as
 * the refs do, which costs up to ~40 ulp where y is tiny (x ≈ -20) and nothing near y ~ x. test_kernels
 * checks them against the refs at 8 ulp + 4u·|x|. */
#include <math.h>
#include <string.h>
#include "kernels/cpu/kcpu.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#include "kernels/cpu/simd_avx512.h"

/* e^x for 16 lanes, see the top of the file. NaN stays NaN. */
static inline __m512 exp512(__m512 x) {
    x = _mm512_max_ps(_mm512_set1_ps(-150.0f), x);   /* second operand wins for NaN: NaN propagates */
    x = _mm512_min_ps(_mm512_set1_ps(89.0f), x);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606820309417232e-6f), r);
    __m512 pl = _mm512_set1_ps(1.0f / 5040.0f);
    pl = _mm512_fmadd_ps(pl, r, _mm512_set1_ps(1.0f / 720.0f));
    pl = _mm512_fmadd_ps(pl, r, _mm512_set1_ps(1.0f / 120.0f));
    pl = _mm512_fmadd_ps(pl, r, _mm512_set1_ps(1.0f / 24.0f));
    pl = _mm512_fmadd_ps(pl, r, _mm512_set1_ps(1.0f / 6.0f));
    pl = _mm512_fmadd_ps(pl, r, _mm512_set1_ps(0.5f));
    pl = _mm512_fmadd_ps(pl, r, _mm512_set1_ps(1.0f));
    pl = _mm512_fmadd_ps(pl, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(pl, n);
}

/* ---- activations -------------------------------------------------------------------------------- */

/* y = x · sigmoid(c·x) = x / (1 + e^(-c x)) for 16 lanes. */
static inline __m512 x_sigmoid(__m512 x, __m512 cx) {
    __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), cx));
    return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

/* One activation over n floats (y may equal x). gelu_tanh uses 0.5x(1 + tanh z) = x·sigmoid(2z), which
 * avoids the cancellation of 1 + tanh for negative z. KC_ACT_GELU_ERF has no vector form here (an
 * accurate vector erf is not worth it for its one user, CLIP-G): scalar erff. */
void kc_act_avx512(int kind, float *y, const float *x, size_t n) {
    size_t i = 0;
    if (kind == KC_ACT_GELU_ERF) {
        for (; i < n; i++) y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
        return;
    }
    for (; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m512 v = _mm512_maskz_loadu_ps(m, x + i), r;
        switch (kind) {
        case KC_ACT_SILU: r = x_sigmoid(v, v); break;
        case KC_ACT_QUICK_GELU: r = x_sigmoid(v, _mm512_mul_ps(v, _mm512_set1_ps(1.702f))); break;
        case KC_ACT_GELU_TANH: {
            __m512 v3 = _mm512_mul_ps(_mm512_mul_ps(v, v), v);
            __m512 z = _mm512_mul_ps(_mm512_set1_ps(0.79788456080286536f), _mm512_fmadd_ps(_mm512_set1_ps(0.044715f), v3, v));
            r = x_sigmoid(v, _mm512_add_ps(z, z));
            break;
        }
        default: r = exp512(v); break;
        }
        _mm512_mask_storeu_ps(y + i, m, r);
    }
}

/* ---- attention tile ---------------------------------------------------------------------------- */

#define BQ KC_ATTN_BQ
#define BK KC_ATTN_BK

/* Online-softmax update for R (1..4) query rows from their raw scores acc[r][0..3] (keys j0..j0+63, nk
 * of them valid): scale, bias, masks (beyond nk, causal, -inf bias give weight 0), the new running max
 * m, alpha = e^(m_old - m_new), the unnormalised weights P = e^(s - m) into S[r][0..BK) and the running
 * sums l (16 partial sums per row). Shared by the F32 and the bf16 score products. */
static inline __attribute__((always_inline)) void softmax_rows(const int R, __m512 acc[][4], int nk, int j0, int i_abs0,
                                                               const attn_params *p, int h, float *S, float *m, float *l, float *alpha) {
    __m512 sc = _mm512_set1_ps(p->scale), ninf = _mm512_set1_ps(-INFINITY);
    __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) {
        int i = i_abs0 + r;
        int lim = nk;                                   /* keys [j0, j0 + lim) are visible to row i */
        if (p->causal && i + 1 - j0 < lim) lim = i + 1 - j0;
        if (lim < 0) lim = 0;
        const float *brow = p->bias ? p->bias + ((int64_t)h * p->Tq + i) * p->Tk + j0 : NULL;
        __m512 s[4], mx = ninf;
        if (lim == BK) { /* full tile: no masking */
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) {
                __m512 v = _mm512_mul_ps(acc[r][c], sc);
                if (brow) v = _mm512_add_ps(v, _mm512_loadu_ps(brow + 16 * c));
                s[c] = v;
                mx = _mm512_max_ps(mx, v);
            }
        } else {
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) {
                __mmask16 valid = _mm512_cmplt_epi32_mask(_mm512_add_epi32(lane, _mm512_set1_epi32(16 * c)), _mm512_set1_epi32(lim));
                __m512 v = _mm512_mul_ps(acc[r][c], sc);
                if (brow) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(valid, brow + 16 * c));
                s[c] = _mm512_mask_blend_ps(valid, ninf, v);
                mx = _mm512_max_ps(mx, s[c]);
            }
        }
        float mn = _mm512_reduce_max_ps(mx);
        if (m[r] > mn) mn = m[r];
        float mu = mn == -INFINITY ? 0.0f : mn;
        float al = mn == m[r] ? 1.0f : expf(m[r] - mu);  /* the max did not move: nothing to rescale */
        __m512 muv = _mm512_set1_ps(mu), sum = _mm512_setzero_ps();
        float *Sr = S + (int64_t)r * BK;
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            __m512 e = exp512(_mm512_sub_ps(s[c], muv));
            sum = _mm512_add_ps(sum, e);
            _mm512_store_ps(Sr + 16 * c, e);
        }
        /* the running sum stays a vector of 16 partial sums (reduced once, at the end) */
        _mm512_store_ps(l + 16 * r, _mm512_fmadd_ps(_mm512_load_ps(l + 16 * r), _mm512_set1_ps(al), sum));
        alpha[r] = al;
        m[r] = mn;
    }
}

/* For R (1..4) query rows starting at local row r0: scores against the packed key tile Kt [D][ldkt]
 * (nk valid keys from j0) in F32, then the online-softmax update (softmax_rows). */
static inline __attribute__((always_inline)) void score_rows(const int R, const float *q, int64_t q_ld, int D, const float *Kt,
                                                             int64_t ldkt, int nk, int j0, int i_abs0, const attn_params *p, int h, float *S,
                                                             float *m, float *l, float *alpha) {
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) acc[r][c] = _mm512_setzero_ps();
    for (int d = 0; d < D; d++) {
        const float *kt = Kt + (int64_t)d * ldkt;
        __m512 k0 = _mm512_load_ps(kt), k1 = _mm512_load_ps(kt + 16), k2 = _mm512_load_ps(kt + 32), k3 = _mm512_load_ps(kt + 48);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            __m512 qb = _mm512_set1_ps(q[r * q_ld + d]);
            acc[r][0] = _mm512_fmadd_ps(qb, k0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(qb, k1, acc[r][1]);
            acc[r][2] = _mm512_fmadd_ps(qb, k2, acc[r][2]);
            acc[r][3] = _mm512_fmadd_ps(qb, k3, acc[r][3]);
        }
    }
    softmax_rows(R, acc, nk, j0, i_abs0, p, h, S, m, l, alpha);
}

/* O[r] = alpha[r]·O[r] + Σ_j P[r][j]·V[j] for R rows, over D in chunks of 64 (4 zmm, masked tail). */
static inline __attribute__((always_inline)) void pv_rows(const int R, float *O, int Dp, const float *S, const float *alpha,
                                                          const float *vb, int64_t v_ld, int nk, int D) {
    for (int d0 = 0; d0 < D; d0 += 64) {
        __mmask16 mk[4];
        for (int c = 0; c < 4; c++) {
            int left = D - d0 - 16 * c;
            mk[c] = left >= 16 ? (__mmask16)0xffff : left <= 0 ? 0 : (__mmask16)((1u << left) - 1);
        }
        __m512 acc[4][4];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            __m512 a = _mm512_set1_ps(alpha[r]);
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++)
                acc[r][c] = d0 + 16 * c < Dp ? _mm512_mul_ps(a, _mm512_load_ps(O + (int64_t)r * Dp + d0 + 16 * c)) : _mm512_setzero_ps();
        }
        for (int j = 0; j < nk; j++) {
            const float *vj = vb + j * v_ld + d0;
            __m512 v0 = _mm512_maskz_loadu_ps(mk[0], vj), v1 = _mm512_maskz_loadu_ps(mk[1], vj + 16);
            __m512 v2 = _mm512_maskz_loadu_ps(mk[2], vj + 32), v3 = _mm512_maskz_loadu_ps(mk[3], vj + 48);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                __m512 pb = _mm512_set1_ps(S[(int64_t)r * BK + j]);
                acc[r][0] = _mm512_fmadd_ps(pb, v0, acc[r][0]);
                acc[r][1] = _mm512_fmadd_ps(pb, v1, acc[r][1]);
                acc[r][2] = _mm512_fmadd_ps(pb, v2, acc[r][2]);
                acc[r][3] = _mm512_fmadd_ps(pb, v3, acc[r][3]);
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++)
                if (d0 + 16 * c < Dp) _mm512_store_ps(O + (int64_t)r * Dp + d0 + 16 * c, acc[r][c]);
    }
}

/* Pack K^T for keys [0, nk) of one head, tile by tile: tile t (keys t·BK ..) is a contiguous [D][BK]
 * block at Kt + t·D·BK (zero beyond nk up to ldkt keys); 16x16 blocks transposed in registers. */
static void pack_kt(float *Kt, int64_t ldkt, const float *kb, int64_t k_ld, int nk, int D) {
    const int64_t Dk = D;
    for (int j = 0; j < (int)ldkt; j += 16) {
        int rows = nk - j < 16 ? (nk - j > 0 ? nk - j : 0) : 16;
        for (int d = 0; d < D; d += 16) {
            int dl = D - d < 16 ? D - d : 16;
            __mmask16 m = dl == 16 ? (__mmask16)0xffff : (__mmask16)((1u << dl) - 1);
            __m512 r[16];
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++) r[i] = i < rows ? _mm512_maskz_loadu_ps(m, kb + (int64_t)(j + i) * k_ld + d) : _mm512_setzero_ps();
            transpose16(r);
            float *blk = Kt + (int64_t)(j / BK) * Dk * BK + (j % BK);   /* tile-major: [tile][D][BK] */
            for (int t = 0; t < dl; t++) _mm512_store_ps(blk + (int64_t)(d + t) * BK, r[t]);
        }
    }
}

/* One (batch b, head h, queries [i0, i1)) task; see attention.c for the algorithm. K^T is packed once
 * for all the keys the task needs, then the queries go in chunks of BQ over key tiles of BK. */
void kc_attn_tile_avx512(float *o, const float *q, const float *k, const float *v, const attn_params *p, int b, int h, int i0,
                         int i1, float *scratch) {
    int D = p->D, Dp = (D + 15) / 16 * 16;
    int Tk = p->Tk;
    if (p->causal && i1 < Tk) Tk = i1;                 /* keys past the last query row are all masked */
    int64_t ldkt = (int64_t)(Tk + BK - 1) / BK * BK;
    if (ldkt == 0) ldkt = BK;
    /* S [BQ][BK], O [BQ][Dp], m [BQ], l [BQ][16] (vector partial sums), alpha [BQ], then K^T (all 64-byte aligned) */
    float *S = scratch, *O = S + (size_t)BQ * BK, *m = O + (size_t)BQ * Dp, *l = m + BQ, *alpha = l + 16 * BQ;
    float *Kt = alpha + BQ;
    float *Vp = Kt + (size_t)D * ldkt;                 /* V rows packed contiguously, row stride Dp */
    const float *kb = k + b * p->k_bstride + (int64_t)h * D;
    const float *vb = v + b * p->v_bstride + (int64_t)h * D;
    pack_kt(Kt, ldkt, kb, p->k_ld, Tk, D);
    /* V: one contiguous copy per task (the strided rows of a fused qkv buffer each sit on their own page) */
    for (int j = 0; j < Tk; j++) memcpy(Vp + (int64_t)j * Dp, vb + (int64_t)j * p->v_ld, sizeof(float) * (size_t)D);
    for (int c0 = i0; c0 < i1; c0 += BQ) {
        int c1 = c0 + BQ < i1 ? c0 + BQ : i1, nq = c1 - c0;
        int Tkc = p->causal && c1 < Tk ? c1 : Tk;
        const float *qb = q + b * p->q_bstride + (int64_t)c0 * p->q_ld + (int64_t)h * D;
        for (int r = 0; r < nq; r++) { m[r] = -INFINITY; _mm512_store_ps(l + 16 * r, _mm512_setzero_ps()); }
        memset(O, 0, sizeof(float) * (size_t)nq * Dp);
        for (int j0 = 0; j0 < Tkc; j0 += BK) {
            int nk = Tkc - j0 < BK ? Tkc - j0 : BK;
            const float *Ktj = Kt + (int64_t)(j0 / BK) * D * BK;
            int r = 0;
            for (; r + 4 <= nq; r += 4) {
                score_rows(4, qb + r * p->q_ld, p->q_ld, D, Ktj, BK, nk, j0, c0 + r, p, h, S + (int64_t)r * BK, m + r, l + 16 * r, alpha + r);
                pv_rows(4, O + (int64_t)r * Dp, Dp, S + (int64_t)r * BK, alpha + r, Vp + (int64_t)j0 * Dp, Dp, nk, D);
            }
            for (; r < nq; r++) {
                score_rows(1, qb + r * p->q_ld, p->q_ld, D, Ktj, BK, nk, j0, c0 + r, p, h, S + (int64_t)r * BK, m + r, l + 16 * r, alpha + r);
                pv_rows(1, O + (int64_t)r * Dp, Dp, S + (int64_t)r * BK, alpha + r, Vp + (int64_t)j0 * Dp, Dp, nk, D);
            }
        }
        for (int r = 0; r < nq; r++) {
            float *oi = o + b * p->o_bstride + (int64_t)(c0 + r) * p->o_ld + (int64_t)h * D;
            __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(_mm512_load_ps(l + 16 * r)));
            for (int d = 0; d < D; d += 16) {
                __mmask16 mk = D - d >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (D - d)) - 1);
                _mm512_mask_storeu_ps(oi + d, mk, _mm512_mul_ps(_mm512_load_ps(O + (int64_t)r * Dp + d), inv));
            }
        }
    }
}

#if defined(__AVX512BF16__)
/* ---- bf16 attention tile (the opt-in bf16 precision mode) -----------------------------------------
 * The same flash algorithm with both products on vdpbf16ps: q, k, v and the unnormalised weights P are
 * rounded to bf16 (nearest even), the scores, the softmax, the running sums and the output accumulate in
 * F32. Layouts (uint32 = a pair of bf16, low half first):
 *   Qp [BQ][D2p]          pairs of q along d, one row per query (broadcast per pair)
 *   Kp [tile][D2p][BK]    pairs of k along d, 64 keys per row (4 zmm)
 *   Vp [Tk2][Dp]          pairs of v along the keys (keys 2u, 2u+1), all d of them
 *   Pp [BQ][BK/2]         pairs of P along the keys
 * with D2 = ceil(D/2) pairs (D2p rounded to 16), Dp = D rounded to 16, Tk2 = ceil(Tk/2); pads are zero.
 * Twin: kc_attn_tile_bf16_portable (attention.c), which rounds at the same points. */

/* The interleave that turns vcvtne2ps2bf16(hi, lo) (words 0..15 = lo, 16..31 = hi) into pairs (lo_i, hi_i). */
static inline __m512i pair_interleave(__m512i both) {
    const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
                                         19, 3, 18, 2, 17, 1, 16, 0);
    return _mm512_permutexvar_epi16(idx, both);
}

/* 16 pairs along one F32 row: elements [off, off + 32) of which the first e are valid (the rest 0). */
static inline __m512i row_pairs(const float *x, int e) {
    __mmask16 m0 = e >= 16 ? (__mmask16)0xffff : e > 0 ? (__mmask16)((1u << e) - 1) : 0;
    __mmask16 m1 = e >= 32 ? (__mmask16)0xffff : e > 16 ? (__mmask16)((1u << (e - 16)) - 1) : 0;
    return (__m512i)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(m1, x + 16), _mm512_maskz_loadu_ps(m0, x));
}

/* 2^x for 16 lanes, x <= 8 (or -inf): n = round(x), f = x - n in [-1/2, 1/2], 2^f by its degree-4 Taylor
 * polynomial in f·ln2 (relative error < 4.3e-5: 2% of the 2^-9 of the bf16 rounding P goes through
 * next), then vscalefps. x below -200 gives exactly 0. Twin: exp2_bf16mode in attention.c. */
static inline __m512 exp2_p4(__m512 x) {
    x = _mm512_max_ps(_mm512_set1_ps(-200.0f), x);
    __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(x, n);
    __m512 pl = _mm512_set1_ps(9.6181291076284772e-3f);                 /* ln2^4 / 24 */
    pl = _mm512_fmadd_ps(pl, f, _mm512_set1_ps(5.5504108664821580e-2f)); /* ln2^3 / 6 */
    pl = _mm512_fmadd_ps(pl, f, _mm512_set1_ps(2.4022650695910071e-1f)); /* ln2^2 / 2 */
    pl = _mm512_fmadd_ps(pl, f, _mm512_set1_ps(6.9314718055994531e-1f)); /* ln2 */
    pl = _mm512_fmadd_ps(pl, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(pl, n);
}

/* The bf16 tile's online-softmax update for one query row, in base 2 with a lazily moved maximum. The
 * scores arrive already in log2 units (q was scaled by scale·log2(e) before its bf16 rounding), plus
 * bias·log2(e); masked keys are -inf. The running max m only moves when a score exceeds it by more than
 * KC_ATTN_LAZY (then m = the row's max so far, alpha = 2^(m_old - m_new) rescales O and l); otherwise
 * alpha = 1 and P = 2^(t - m) may reach 2^KC_ATTN_LAZY, harmless in F32 and bf16. That skips the
 * horizontal max, the scalar exp2f and the rescale of O in almost every tile. P goes out as bf16 pairs,
 * the running sum l (16 partial sums) takes the F32 P. */
#define KC_ATTN_LAZY 8.0f
static inline __attribute__((always_inline)) void softmax_row_bf16(const __m512 acc[4], int nk, int j0, int i, const attn_params *p,
                                                                   int h, uint32_t *Pp, float *m, float *l, float *alpha) {
    const float L2E = 1.44269504088896341f;
    __m512 ninf = _mm512_set1_ps(-INFINITY);
    int lim = nk;
    if (p->causal && i + 1 - j0 < lim) lim = i + 1 - j0;
    if (lim < 0) lim = 0;
    const float *brow = p->bias ? p->bias + ((int64_t)h * p->Tq + i) * p->Tk + j0 : NULL;
    __m512 t[4], mx = ninf;
    __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
#pragma GCC unroll 4
    for (int q = 0; q < 4; q++) {
        __mmask16 valid = lim == BK ? (__mmask16)0xffff
                                    : _mm512_cmplt_epi32_mask(_mm512_add_epi32(lane, _mm512_set1_epi32(16 * q)), _mm512_set1_epi32(lim));
        __m512 v = brow ? _mm512_fmadd_ps(_mm512_maskz_loadu_ps(valid, brow + 16 * q), _mm512_set1_ps(L2E), acc[q]) : acc[q];
        t[q] = lim == BK ? v : _mm512_mask_blend_ps(valid, ninf, v);
        mx = _mm512_max_ps(mx, t[q]);
    }
    float al = 1.0f;
    if (_mm512_cmp_ps_mask(mx, _mm512_set1_ps(*m + KC_ATTN_LAZY), _CMP_GT_OQ)) { /* rare: the max moves */
        float mn = _mm512_reduce_max_ps(mx);
        al = exp2f(*m - mn);  /* 0 when m was -inf (O and l are 0 then) */
        *m = mn;
    }
    float mu = *m == -INFINITY ? 0.0f : *m;
    __m512 muv = _mm512_set1_ps(mu), e[4];
#pragma GCC unroll 4
    for (int q = 0; q < 4; q++) e[q] = exp2_p4(_mm512_sub_ps(t[q], muv));
    __m512 sum = _mm512_add_ps(_mm512_add_ps(e[0], e[1]), _mm512_add_ps(e[2], e[3]));
    __m512 lv = _mm512_load_ps(l);
    _mm512_store_ps(l, al == 1.0f ? _mm512_add_ps(lv, sum) : _mm512_fmadd_ps(lv, _mm512_set1_ps(al), sum));
    _mm512_store_si512(Pp, (__m512i)_mm512_cvtne2ps_pbh(e[1], e[0]));
    _mm512_store_si512(Pp + 16, (__m512i)_mm512_cvtne2ps_pbh(e[3], e[2]));
    *alpha = al;
}

/* row_pairs of x·c (F32 product, then rounded to bf16). */
static inline __m512i row_pairs_scaled(const float *x, int e, __m512 c) {
    __mmask16 m0 = e >= 16 ? (__mmask16)0xffff : e > 0 ? (__mmask16)((1u << e) - 1) : 0;
    __mmask16 m1 = e >= 32 ? (__mmask16)0xffff : e > 16 ? (__mmask16)((1u << (e - 16)) - 1) : 0;
    return (__m512i)_mm512_cvtne2ps_pbh(_mm512_mul_ps(_mm512_maskz_loadu_ps(m1, x + 16), c), _mm512_mul_ps(_mm512_maskz_loadu_ps(m0, x), c));
}

/* Scores of R (1..4) query rows (pairs Qp, row stride D2p) against one key tile Kp [D2][BK] with
 * vdpbf16ps, then each row's softmax update (softmax_row_bf16); P goes out as bf16 pairs Pp[r][0..BK/2). */
static inline __attribute__((always_inline)) void score_rows_bf16(const int R, const uint32_t *Qp, int D2p, int D2, const uint32_t *Kp,
                                                                  int nk, int j0, int i_abs0, const attn_params *p, int h, uint32_t *Pp,
                                                                  float *m, float *l, float *alpha) {
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) acc[r][c] = _mm512_setzero_ps();
    for (int t = 0; t < D2; t++) {
        const uint32_t *kt = Kp + (int64_t)t * BK;
        __m512bh k0 = (__m512bh)_mm512_load_si512(kt), k1 = (__m512bh)_mm512_load_si512(kt + 16);
        __m512bh k2 = (__m512bh)_mm512_load_si512(kt + 32), k3 = (__m512bh)_mm512_load_si512(kt + 48);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            __m512bh qb = (__m512bh)_mm512_set1_epi32((int)Qp[(int64_t)r * D2p + t]);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], qb, k0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], qb, k1);
            acc[r][2] = _mm512_dpbf16_ps(acc[r][2], qb, k2);
            acc[r][3] = _mm512_dpbf16_ps(acc[r][3], qb, k3);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) softmax_row_bf16(acc[r], nk, j0, i_abs0 + r, p, h, Pp + (int64_t)r * (BK / 2), m + r, l + 16 * r, alpha + r);
}

/* O[r] = alpha[r]·O[r] + Σ_u Pp[r][u]·Vp[u] (pairs of keys) for R rows, over D in chunks of 64. */
static inline __attribute__((always_inline)) void pv_rows_bf16(const int R, float *O, int Dp, const uint32_t *Pp, const float *alpha,
                                                               const uint32_t *Vp, int nk2) {
    for (int d0 = 0; d0 < Dp; d0 += 64) {
        int nc = Dp - d0 >= 64 ? 4 : (Dp - d0) / 16;  /* Dp is a multiple of 16 */
        __m512 acc[4][4];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            __m512 a = _mm512_set1_ps(alpha[r]);
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) {
                __m512 o = c < nc ? _mm512_load_ps(O + (int64_t)r * Dp + d0 + 16 * c) : _mm512_setzero_ps();
                acc[r][c] = alpha[r] == 1.0f ? o : _mm512_mul_ps(a, o);
            }
        }
        if (nc == 4) {
            for (int u = 0; u < nk2; u++) {
                const uint32_t *vu = Vp + (int64_t)u * Dp + d0;
                __m512bh v0 = (__m512bh)_mm512_load_si512(vu), v1 = (__m512bh)_mm512_load_si512(vu + 16);
                __m512bh v2 = (__m512bh)_mm512_load_si512(vu + 32), v3 = (__m512bh)_mm512_load_si512(vu + 48);
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) {
                    __m512bh pb = (__m512bh)_mm512_set1_epi32((int)Pp[(int64_t)r * (BK / 2) + u]);
                    acc[r][0] = _mm512_dpbf16_ps(acc[r][0], pb, v0);
                    acc[r][1] = _mm512_dpbf16_ps(acc[r][1], pb, v1);
                    acc[r][2] = _mm512_dpbf16_ps(acc[r][2], pb, v2);
                    acc[r][3] = _mm512_dpbf16_ps(acc[r][3], pb, v3);
                }
            }
        } else {
            for (int u = 0; u < nk2; u++) {
                const uint32_t *vu = Vp + (int64_t)u * Dp + d0;
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) {
                    __m512bh pb = (__m512bh)_mm512_set1_epi32((int)Pp[(int64_t)r * (BK / 2) + u]);
                    for (int c = 0; c < nc; c++) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], pb, (__m512bh)_mm512_load_si512(vu + 16 * c));
                }
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++)
                if (c < nc) _mm512_store_ps(O + (int64_t)r * Dp + d0 + 16 * c, acc[r][c]);
    }
}

/* One (batch b, head h, queries [i0, i1)) task in the bf16 mode; the same structure as the F32 tile. */
void kc_attn_tile_bf16_avx512(float *o, const float *q, const float *k, const float *v, const attn_params *p, int b, int h, int i0,
                              int i1, float *scratch) {
    int D = p->D, Dp = (D + 15) / 16 * 16, D2 = (D + 1) / 2, D2p = (D2 + 15) / 16 * 16;
    int Tk = p->Tk;
    if (p->causal && i1 < Tk) Tk = i1;
    int ntile = (Tk + BK - 1) / BK;
    if (ntile == 0) ntile = 1;
    int Tk2 = ntile * BK / 2;
    /* S [BQ][BK] (unused here), O [BQ][Dp], m [BQ], l [BQ][16], alpha [BQ], then (uint32) Pp [BQ][BK/2], Qp [BQ][D2p],
     * Kp [ntile][D2p][BK], Vp [Tk2][Dp]: within kc_attn_scratch_floats (the F32 tile's K^T and V are twice
     * this size) */
    float *S = scratch, *O = S + (size_t)BQ * BK, *m = O + (size_t)BQ * Dp, *l = m + BQ, *alpha = l + 16 * BQ;
    uint32_t *Pp = (uint32_t *)(alpha + BQ), *Qp = Pp + (size_t)BQ * (BK / 2), *Kp = Qp + (size_t)BQ * D2p;
    uint32_t *Vp = Kp + (size_t)ntile * D2p * BK;
    const float *kb = k + b * p->k_bstride + (int64_t)h * D;
    const float *vb = v + b * p->v_bstride + (int64_t)h * D;
    /* K: 16 keys x 16 pairs at a time, transposed in registers into [tile][t][key] */
    for (int j = 0; j < ntile * BK; j += 16) {
        int rows = Tk - j < 16 ? (Tk - j > 0 ? Tk - j : 0) : 16;
        for (int t0 = 0; t0 < D2p; t0 += 16) {
            __m512 r[16];
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++)
                r[i] = i < rows ? _mm512_castsi512_ps(row_pairs(kb + (int64_t)(j + i) * p->k_ld + 2 * t0, D - 2 * t0)) : _mm512_setzero_ps();
            transpose16(r);
            uint32_t *blk = Kp + (int64_t)(j / BK) * D2p * BK + (j % BK);
            for (int t = 0; t < 16; t++) _mm512_store_si512(blk + (int64_t)(t0 + t) * BK, _mm512_castps_si512(r[t]));
        }
    }
    /* V: keys 2u and 2u + 1 interleaved per d */
    for (int u = 0; u < Tk2; u++) {
        int ja = 2 * u, jb = 2 * u + 1;
        for (int d = 0; d < Dp; d += 16) {
            int e = D - d;
            __mmask16 mk = e >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << e) - 1);
            __m512 lo = ja < Tk ? _mm512_maskz_loadu_ps(mk, vb + (int64_t)ja * p->v_ld + d) : _mm512_setzero_ps();
            __m512 hi = jb < Tk ? _mm512_maskz_loadu_ps(mk, vb + (int64_t)jb * p->v_ld + d) : _mm512_setzero_ps();
            _mm512_store_si512(Vp + (int64_t)u * Dp + d, pair_interleave((__m512i)_mm512_cvtne2ps_pbh(hi, lo)));
        }
    }
    const __m512 qscale = _mm512_set1_ps(p->scale * 1.44269504088896341f); /* scores in log2 units */
    for (int c0 = i0; c0 < i1; c0 += BQ) {
        int c1 = c0 + BQ < i1 ? c0 + BQ : i1, nq = c1 - c0;
        int Tkc = p->causal && c1 < Tk ? c1 : Tk;
        const float *qb = q + b * p->q_bstride + (int64_t)c0 * p->q_ld + (int64_t)h * D;
        for (int r = 0; r < nq; r++) {
            m[r] = -INFINITY;
            _mm512_store_ps(l + 16 * r, _mm512_setzero_ps());
            for (int t0 = 0; t0 < D2p; t0 += 16)
                _mm512_store_si512(Qp + (int64_t)r * D2p + t0, row_pairs_scaled(qb + (int64_t)r * p->q_ld + 2 * t0, D - 2 * t0, qscale));
        }
        memset(O, 0, sizeof(float) * (size_t)nq * Dp);
        for (int j0 = 0; j0 < Tkc; j0 += BK) {
            int nk = Tkc - j0 < BK ? Tkc - j0 : BK, nk2 = (nk + 1) / 2;
            const uint32_t *Kpj = Kp + (int64_t)(j0 / BK) * D2p * BK, *Vpj = Vp + (int64_t)(j0 / 2) * Dp;
            int r = 0;
            for (; r + 4 <= nq; r += 4) {
                score_rows_bf16(4, Qp + (int64_t)r * D2p, D2p, D2, Kpj, nk, j0, c0 + r, p, h, Pp, m + r, l + 16 * r, alpha + r);
                pv_rows_bf16(4, O + (int64_t)r * Dp, Dp, Pp, alpha + r, Vpj, nk2);
            }
            for (; r < nq; r++) {
                score_rows_bf16(1, Qp + (int64_t)r * D2p, D2p, D2, Kpj, nk, j0, c0 + r, p, h, Pp, m + r, l + 16 * r, alpha + r);
                pv_rows_bf16(1, O + (int64_t)r * Dp, Dp, Pp, alpha + r, Vpj, nk2);
            }
        }
        for (int r = 0; r < nq; r++) {
            float *oi = o + b * p->o_bstride + (int64_t)(c0 + r) * p->o_ld + (int64_t)h * D;
            __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(_mm512_load_ps(l + 16 * r)));
            for (int d = 0; d < D; d += 16) {
                __mmask16 mk = D - d >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (D - d)) - 1);
                _mm512_mask_storeu_ps(oi + d, mk, _mm512_mul_ps(_mm512_load_ps(O + (int64_t)r * Dp + d), inv));
            }
        }
    }
}
#endif /* __AVX512BF16__ */

#endif

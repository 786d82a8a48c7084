/*
 * kernels_q.h — linears with quantised weights (DT_Q8 / DT_Q4, see core.h and src/quant/quant.h).
 *
 * k_linear sends every W of dtype DT_Q8 / DT_Q4 here. The product is computed with integer dot products:
 *
 *   activations: each row x[m, 0..K) is quantised on the fly, symmetric, one scale per row:
 *       a = max_k |x[m, k]|,  s_a = a / 127,  q_a[k] = nearbyint(x[m, k] * (127 / a))  (clamped to +-127;
 *       round half to even, the IEEE default mode; an all-zero row has s_a = 0, q_a = 0)
 *   weights: q_w with one f32 scale s_w[n, b] per block b of qblock K-elements (qblock = K: per row)
 *   product: d[m, n, b] = sum over k in block b of q_a[k] q_w[n, k]                   (exact, int32)
 *            acc = 0; for b in order: acc = fma(float(d[m, n, b]), s_w[n, b], acc)   (fused, C fmaf)
 *            y[m, n] = fma(acc, s_a[m], bias[n])                                    (bias 0 when none)
 *
 * Every variant (the scalar ref, AVX-512 VNNI, AVX2) computes exactly these operations, so the fast variants
 * agree with k_linear_q_ref bit for bit (the integer sums are exact and the float steps are the same).
 * Limits: K <= 65536 (the int32 sums cannot overflow), and for DT_Q4 qblock = 32 and K % 32 == 0.
 */
#ifndef SD3_KERNELS_Q_H
#define SD3_KERNELS_Q_H

#include "core/core.h"

/* y[M,N] = x[M,K] . W[N,K]^T (+ b[N]) for W of dtype DT_Q8 / DT_Q4 (b any float dtype or NULL). Threaded. */
void k_linear_q(float *y, const float *x, const tensor *W, const tensor *b, int M, int N, int K);
/* Scalar reference twin (single thread). */
void k_linear_q_ref(float *y, const float *x, const tensor *W, const tensor *b, int M, int N, int K);

/* Quantise one activation row as described above: q[0..K) and the returned scale s_a. */
float k_quant_act_row_ref(int8_t *q, const float *x, int K);

/* Quantise one weight row w[0..K) in blocks of qb (K % qb == 0) with qmax 127 (int8) or 7 (int4): per block
 * s = max|w| / qmax (NaN when the block holds Inf/NaN), q = nearbyint(w / s) clamped to +-qmax, q = 0 where
 * s is 0 or NaN. Codes to q[0..K), scales to s[0..K/qb). The rule of quant.h; vectorised where possible. */
void k_quant_weight_row(const float *w, int K, int qb, int qmax, int8_t *q, float *s);
void k_quant_weight_row_ref(const float *w, int K, int qb, int qmax, int8_t *q, float *s);

/* Cap the variant k_linear_q may use: K_ISA_PORTABLE (threaded ref), K_ISA_AVX2, K_ISA_AVX512, K_ISA_ANY
 * (kernels.h's levels; default ANY). For tests and benchmarks; returns the previous cap. */
int k_q_set_isa_cap(int level);
/* Name of the variant k_linear_q runs for W ("avx512_vnni", "avx2", "ref", ...). */
const char *k_linear_q_variant(const tensor *W);

/* Internal, per-ISA entry points (return 0 when they decline: shape or CPU not supported). */
int kq_linear_avx512(float *y, const float *x, const tensor *W, const float *bias, int M, int N, int K);
int kq_linear_avx2(float *y, const float *x, const tensor *W, const float *bias, int M, int N, int K);
int kq_quant_weight_row_avx512(const float *w, int K, int qb, int qmax, int8_t *q, float *s);

#endif /* SD3_KERNELS_Q_H */

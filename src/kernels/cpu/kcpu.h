/* kcpu.h — internal interface of the fast CPU kernels (not for model code): one table of function pointers
 * per instruction-set level (portable C, AVX2+FMA, AVX-512), and the shared blocked GEMM driver that
 * linear, matmul and conv2d are built on. */
#ifndef SD3_KCPU_H
#define SD3_KCPU_H

#include "kernels/kernels.h"

/* ---- GEMM microkernel contract ----------------------------------------------------------------
 * C[mr, nr] (row stride ldc) = (accum ? C : bias) + Ap · Bp, where Ap is a packed MR-row sliver
 * ([kc][MR] floats, rows >= mr zero) and Bp a packed NR-column sliver ([kc][NR] floats, columns >= nr
 * zero). Only rows < mr and columns < nr of C are touched. On a non-accumulating call the bias is
 * bias_n[j] (per column, may be NULL) plus bias_m[i] (per row, may be NULL). The bf16 variant takes the
 * same slivers converted to bf16 pairs: Ap [kc2][MR] and Bp [kc2][NR] uint32, each holding the bf16 of
 * k = 2t (low half) and k = 2t + 1 (high half). */
typedef void (*kc_ukr_fn)(int kc, const float *Ap, const float *Bp, float *C, int64_t ldc, int mr, int nr, int accum,
                          const float *bias_n, const float *bias_m);
typedef void (*kc_ukr_bf16_fn)(int kc2, const uint32_t *Ap, const uint32_t *Bp, float *C, int64_t ldc, int mr, int nr,
                               int accum, const float *bias_n, const float *bias_m);

typedef struct kc_isa {
    const char *name;
    int MR, NR;
    kc_ukr_fn ukr;
    /* optional: the same with A read in place from MR full rows of an F32 matrix (row stride lda) */
    void (*ukr_direct)(int kc, const float *A, int64_t lda, const float *Bp, float *C, int64_t ldc, int nr, int accum,
                       const float *bias_n, const float *bias_m);
    kc_ukr_bf16_fn ukr_bf16;        /* NULL where the CPU has no bf16 dot product */
    /* n elements of a float tensor (F32/F16/BF16) from element off, widened to F32 */
    void (*cvt_row)(const tensor *t, int64_t off, int n, float *dst);
    /* optional fast kc_pack_rows (returns 0 to decline) */
    int (*pack_rows)(const void *ctx, int idx0, int cnt, int k0, int kc, int R, float *dst);
    /* optional: kc_pack_rows straight into bf16 pairs ([ceil(kc/2)][R] uint32, see the ukr contract) for a
     * kc_rows source (F32 rows, or an F32/F16/BF16 tensor), without the F32 sliver in between; k0 even;
     * returns 0 to decline. Twin: kc_pack_rows_bf16_ref. */
    int (*pack_rows_bf16)(const void *ctx, int idx0, int cnt, int k0, int kc, int R, uint32_t *dst);
    /* optional fast F32 sliver -> bf16 pairs (see the driver; returns 0 to decline) */
    int (*to_bf16_pairs)(const float *src, int kc, int R, uint32_t *dst);
    /* small-M linear: y[m, n] for n in [n0, n1), all m < M (M <= 4), W rows read and widened directly */
    void (*gemv)(float *y, const float *x, const tensor *W, const float *bias, int M, int N, int K, int n0, int n1);
    /* flash attention for one (batch, head, query tile); NULL = use the portable one */
    void (*attn_tile)(float *o, const float *q, const float *k, const float *v, const struct attn_params *p, int b, int h,
                      int i0, int i1, float *scratch);
    /* the same with bf16 products (q, k, v, P rounded to bf16; see attn_avx512.c); NULL = none */
    void (*attn_tile_bf16)(float *o, const float *q, const float *k, const float *v, const struct attn_params *p, int b, int h,
                           int i0, int i1, float *scratch);
    /* vector norms (NULL = the refs); affine parameters already widened to F32, NULL for none */
    void (*layernorm)(float *y, const float *x, const float *w, const float *b, int rows, int C, float eps);
    void (*rmsnorm)(float *y, const float *x, const float *w, int rows, int C, float eps);
    void (*groupnorm_group)(float *y, const float *x, const float *w, const float *b, int cg, int HW, float eps);
    /* vector row helpers for norms/activations (NULL = portable) */
    void (*act)(int kind, float *y, const float *x, size_t n);
} kc_isa;

const kc_isa *kc_isa_portable(void);
const kc_isa *kc_isa_avx2(void);     /* NULL when not compiled in */
const kc_isa *kc_isa_avx512(void);   /* NULL when not compiled in */

/* ---- the blocked GEMM driver --------------------------------------------------------------------
 * A packer fills dst[k*R + i] for i < cnt (rows/columns idx0 + i, k0 + k), zeroing i in [cnt, R). */
typedef void (*kc_pack_fn)(const void *ctx, const kc_isa *isa, int idx0, int cnt, int k0, int kc, int R, float *dst);

typedef struct kc_gemm {
    int M, N, K;
    kc_pack_fn pack_a; const void *actx;   /* A: M x K */
    kc_pack_fn pack_b; const void *bctx;   /* B: N x K (i.e. C = A · B^T) */
    float *C; int64_t ldc;
    const float *bias_n, *bias_m;
    int bf16;                              /* use the bf16 microkernel */
    int epilogue_act;                      /* 0: none; else 1 + KC_ACT_*: applied to each finished C tile
                                            * (after the bias) while it is in cache, via the ISA's act */
    /* bf16 mode hand-off to a following product (both need the ISA's pack_rows_bf16):
     * out_pairs: each finished tile (after bias and act) is written as bf16 pairs in the A-sliver layout
     *   of a GEMM with K = this N ([ceil(M/MR) slivers][ceil(N/2)][MR] uint32), and C is only a per-thread
     *   scratch (the F32 result never reaches memory; C and ldc are ignored);
     * a_pairs: A given already in that layout (pack_a / actx unused). */
    uint32_t *out_pairs;
    const uint32_t *a_pairs;
} kc_gemm;

/* Run one GEMM over the thread pool (or serially when called from inside a pool task). */
void kc_gemm_run(const kc_isa *isa, const kc_gemm *g);
/* Run ng (<= KC_MULTI_MAX) GEMMs that share A (same M, K, pack_a, actx, bf16) as one pool job: A is packed
 * (bf16: converted) once, and the tasks of all of them balance together. Each C is what kc_gemm_run
 * alone gives, bit for bit (blocking never changes an element's sum). */
#define KC_MULTI_MAX 4
void kc_gemm_run_multi(const kc_isa *isa, const kc_gemm *gs, int ng);

/* Packer for a row-major [rows, K] matrix of any float dtype (x or W of a linear, conv weights). */
typedef struct kc_rows { const tensor *t; const float *f32; int64_t ld; } kc_rows;
void kc_pack_rows(const void *ctx, const kc_isa *isa, int idx0, int cnt, int k0, int kc, int R, float *dst);
/* Scalar twin of kc_isa.pack_rows_bf16: kc_pack_rows (portable) then round to nearest even bf16 pairs. */
void kc_pack_rows_bf16_ref(const void *ctx, int idx0, int cnt, int k0, int kc, int R, uint32_t *dst);
/* Packer for a row-major [K, cols] F32 matrix read by columns (B of a plain matmul, 1x1 conv input). */
typedef struct kc_cols { const float *p; int64_t ld; } kc_cols;
void kc_pack_cols(const void *ctx, const kc_isa *isa, int idx0, int cnt, int k0, int kc, int R, float *dst);

/* Lookup table fp8 byte -> F32 for DT_F8_E4M3 / DT_F8_E5M2 (NULL for other dtypes); built once. */
const float *kc_f8_lut(dtype dt);

/* Front ends used by dispatch.c. */
/* act: 0 none, else 1 + KC_ACT_* applied to y (fused into the GEMM's tile epilogue). */
void kc_linear(const kc_isa *isa, int bf16, int act, float *y, const float *x, const tensor *W, const tensor *b, int M, int N, int K);
/* n (<= KC_MULTI_MAX) linears y[i] = x W[i]^T + b[i] on one input x [M, K] through kc_gemm_run_multi. */
void kc_linear_multi(const kc_isa *isa, int bf16, int n, float *const *y, const float *x, const tensor *const *W,
                     const tensor *const *b, int M, const int *N, int K);
/* Words of the A-sliver bf16 layout for an M x K matrix (kc_gemm.out_pairs / a_pairs). */
size_t kc_pairs_words(const kc_isa *isa, int M, int K);
/* bf16 mode, M > 4: pairs = act(x W^T + b) in the A-sliver layout (never as F32 rows), and y = A W2^T + b2
 * from such pairs; the same values as kc_linear + kc_linear (the pairs are what the second one's packing
 * would make of the first one's F32 output). */
void kc_linear_to_pairs(const kc_isa *isa, int act, uint32_t *pairs, const float *x, const tensor *W, const tensor *b, int M, int N,
                        int K);
void kc_linear_from_pairs(const kc_isa *isa, float *y, const uint32_t *pairs, const tensor *W, const tensor *b, int M, int N, int K);
/* The activation kind (KC_ACT_*) over n floats with the ISA's vector form, else the ref (y may equal x). */
void kc_act_rows(const kc_isa *isa, int kind, float *y, const float *x, size_t n);
void kc_matmul(const kc_isa *isa, int bf16, float *C, const float *A, const float *B, int batch, int M, int N, int K, int transB);
void kc_conv2d(const kc_isa *isa, int bf16, float *y, const float *x, const tensor *w, const tensor *b, const conv2d_params *p);
void kc_attention(const kc_isa *isa, int bf16, float *o, const float *q, const float *k, const float *v, const attn_params *p);

/* Portable flash-attention tile (used when the ISA has none). */
void kc_attn_tile_portable(float *o, const float *q, const float *k, const float *v, const attn_params *p, int b, int h,
                           int i0, int i1, float *scratch);
/* Portable twin of the bf16 attention tiles (same rounding points, plain C). */
void kc_attn_tile_bf16_portable(float *o, const float *q, const float *k, const float *v, const attn_params *p, int b, int h,
                                int i0, int i1, float *scratch);
/* Floats of scratch one attention tile needs. */
size_t kc_attn_scratch_floats(const attn_params *p);
#define KC_ATTN_BQ 64   /* queries per task */
#define KC_ATTN_BK 64   /* keys per inner tile */

/* Activation kinds for kc_isa.act. */
enum { KC_ACT_GELU_ERF, KC_ACT_GELU_TANH, KC_ACT_QUICK_GELU, KC_ACT_SILU, KC_ACT_EXP };

#endif /* SD3_KCPU_H */

/*
 * kernels.h — every numeric op the models use, one signature each. Model code calls only these.
 *
 * Each op `k_X` dispatches at run time (CPU features, weight dtype) to a fast variant in cpu/ and falls
 * back to its scalar reference twin `k_X_ref` in ref/ (never optimised; the tests compare every fast
 * variant against it). Threads (the pool in core/) and SIMD live below this interface.
 *
 * Conventions: activations are F32, row-major; "rows" are tokens. Weights are tensors in their stored
 * dtype (F32/F16/BF16, later quantised) and are converted per tile, never as a whole. Linear weights are
 * [N, K] (PyTorch layout: y = x W^T + b). Image tensors are NCHW. In-place use (y == x) is allowed where
 * a comment says so.
 */
#ifndef SD3_KERNELS_H
#define SD3_KERNELS_H

#include "core/core.h"

/* ---- matrix products ------------------------------------------------------------------------ */

/* y[M,N] = x[M,K] · W[N,K]^T (+ b[N]); W and b any float dtype (b may be NULL). y must not alias x. */
void k_linear(float *y, const float *x, const tensor *W, const tensor *b, int M, int N, int K);
/* n (1..4) linears y[i] = x W[i]^T + b[i] (b or b[i] may be NULL) on one input: the same values as n k_linear
 * calls; x is packed (bf16 mode: converted) once for all of them. */
void k_linear_multi(int n, float *const y[], const float *x, const tensor *const W[], const tensor *const b[], int M, const int N[],
                    int K);
/* A layer output that only the next linear reads (an FF's hidden activation), in a caller's buffer of M x N
 * floats: in the bf16 mode as that product's packed bf16 input (the F32 values never reach memory), else as
 * F32 rows. The next linear sees exactly the values of the unfused k_linear_gelu_tanh + k_linear. */
typedef struct k_handoff {
    int M, N;
    float *f32;        /* [M, N] when not packed */
    uint32_t *pairs;   /* packed bf16 (internal layout) when the bf16 products run */
} k_handoff;
/* h = gelu_tanh(x W^T + b) [M, N] into buf (M * N floats), for the linear whose weight is W_next. */
void k_linear_gelu_tanh_handoff(k_handoff *h, float *buf, const float *x, const tensor *W, const tensor *b, const tensor *W_next, int M,
                                int N, int K);
/* y [M, N2] = h W_next^T + b2. */
void k_linear_from_handoff(float *y, const k_handoff *h, const tensor *W_next, const tensor *b, int N2);
/* y = gelu_tanh(x W^T + b) with the activation fused into the product's tile epilogue (same values as
 * k_linear then k_gelu_tanh; one pass less over y). */
void k_linear_gelu_tanh(float *y, const float *x, const tensor *W, const tensor *b, int M, int N, int K);
void k_linear_ref(float *y, const float *x, const tensor *W, const tensor *b, int M, int N, int K);

/* Batched F32 matmul: for each of `batch`, C[M,N] = A[M,K] · B (B is [K,N], or [N,K] when transB);
 * consecutive batches are M*K, K*N and M*N floats apart. */
void k_matmul(float *C, const float *A, const float *B, int batch, int M, int N, int K, int transB);
void k_matmul_ref(float *C, const float *A, const float *B, int batch, int M, int N, int K, int transB);

/* ---- attention ------------------------------------------------------------------------------ */

/* Scaled dot-product attention over heads, never materialising the Tq x Tk matrix (online softmax
 * over tiles of keys). Token t of batch b, head h of q starts at q + b*q_bstride + t*q_ld + h*D (same
 * for k, v, o), so q/k/v may be slices of a fused qkv buffer. out = softmax(scale * q k^T + bias) v, with
 * bias[h, i, j] (H x Tq x Tk, shared by the batch; NULL for none) and, if causal, key j > i masked out. */
typedef struct attn_params {
    int B, H, Tq, Tk, D;
    int64_t q_ld, k_ld, v_ld, o_ld;               /* floats between consecutive tokens */
    int64_t q_bstride, k_bstride, v_bstride, o_bstride; /* floats between consecutive batch items */
    float scale;
    int causal;
    const float *bias;
} attn_params;
void k_attention(float *o, const float *q, const float *k, const float *v, const attn_params *p);
void k_attention_ref(float *o, const float *q, const float *k, const float *v, const attn_params *p);

/* ---- normalisation (y may equal x) ---------------------------------------------------------- */

/* Row softmax in place over n values per row. */
void k_softmax(float *x, int rows, int n);
void k_softmax_ref(float *x, int rows, int n);

/* LayerNorm over the last C values of each row, biased variance; w, b NULL = no affine. */
void k_layernorm(float *y, const float *x, const tensor *w, const tensor *b, int rows, int C, float eps);
void k_layernorm_ref(float *y, const float *x, const tensor *w, const tensor *b, int rows, int C, float eps);

/* RMSNorm: y = x / sqrt(mean(x^2) + eps) * w (w NULL = no scale). */
void k_rmsnorm(float *y, const float *x, const tensor *w, int rows, int C, float eps);
void k_rmsnorm_ref(float *y, const float *x, const tensor *w, int rows, int C, float eps);

/* GroupNorm on NCHW: G groups of C/G channels, statistics over (C/G) x HW; per-channel affine w, b. */
void k_groupnorm(float *y, const float *x, const tensor *w, const tensor *b, int N, int C, int HW, int G, float eps);
void k_groupnorm_ref(float *y, const float *x, const tensor *w, const tensor *b, int N, int C, int HW, int G, float eps);

/* ---- activations (y may equal x) ------------------------------------------------------------ */

void k_gelu_erf(float *y, const float *x, size_t n);       /* 0.5 x (1 + erf(x / sqrt 2)) */
void k_gelu_erf_ref(float *y, const float *x, size_t n);
void k_gelu_tanh(float *y, const float *x, size_t n);      /* 0.5 x (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3))) */
void k_gelu_tanh_ref(float *y, const float *x, size_t n);
void k_quick_gelu(float *y, const float *x, size_t n);     /* x sigmoid(1.702 x) */
void k_quick_gelu_ref(float *y, const float *x, size_t n);
void k_silu(float *y, const float *x, size_t n);           /* x sigmoid(x) */
void k_silu_ref(float *y, const float *x, size_t n);

/* ---- convolution and resampling (NCHW) ------------------------------------------------------ */

/* 2-D convolution: x [N, Cin, H, W], w [Cout, Cin, kh, kw] (any float dtype), b [Cout] or NULL;
 * padding pad_t/pad_b/pad_l/pad_r zeros (asymmetric allowed), stride s. Output [N, Cout, Ho, Wo] with
 * Ho = (H * u + pad_t + pad_b - kh) / s + 1, Wo likewise, u = up (0 counts as 1).
 * up > 1 convolves the nearest-neighbour u-times upsampled input without materialising it: the conv
 * sees an (H*u) x (W*u) image whose pixel (ih, iw) is x[ih / u, iw / u] (diffusers' Upsample2D
 * interpolate + conv, fused; bit-identical to k_upsample_nearest2x then the conv when u = 2). */
typedef struct conv2d_params {
    int N, Cin, H, W, Cout, kh, kw, stride, pad_t, pad_b, pad_l, pad_r;
    int up;   /* input upsampling factor (0 or 1: none) */
} conv2d_params;
void conv2d_out_size(const conv2d_params *p, int *Ho, int *Wo);
void k_conv2d(float *y, const float *x, const tensor *w, const tensor *b, const conv2d_params *p);
void k_conv2d_ref(float *y, const float *x, const tensor *w, const tensor *b, const conv2d_params *p);

/* Nearest-neighbour 2x upsampling: x [N, C, H, W] -> y [N, C, 2H, 2W]. */
void k_upsample_nearest2x(float *y, const float *x, int N, int C, int H, int W);
void k_upsample_nearest2x_ref(float *y, const float *x, int N, int C, int H, int W);

/* ---- elementwise (y may equal a or x) --------------------------------------------------------- */

void k_add(float *y, const float *a, const float *b, size_t n);            /* y = a + b */
void k_mul(float *y, const float *a, const float *b, size_t n);            /* y = a * b */
void k_scale(float *y, const float *x, float s, size_t n);                 /* y = s x */
void k_axpy(float *y, float a, const float *x, size_t n);                  /* y += a x */
/* adaLN modulation per row: y[r, c] = x[r, c] * (1 + scale[c]) + shift[c] for rows r of C channels. */
void k_modulate(float *y, const float *x, const float *shift, const float *scale, int rows, int C);
void k_modulate_ref(float *y, const float *x, const float *shift, const float *scale, int rows, int C);
/* y = LayerNorm(x) (no affine, biased variance) * (1 + scale) + shift: k_layernorm then k_modulate, done on
 * blocks of rows while they are in cache (the same values, one pass over memory less). */
void k_layernorm_modulate(float *y, const float *x, const float *shift, const float *scale, int rows, int C, float eps);
void k_layernorm_modulate_ref(float *y, const float *x, const float *shift, const float *scale, int rows, int C, float eps);
/* Gated residual per row: y[r, c] += gate[c] * x[r, c]. */
void k_gated_add(float *y, const float *x, const float *gate, int rows, int C);
void k_gated_add_ref(float *y, const float *x, const float *gate, int rows, int C);
/* Add a per-row bias vector: y[r, c] += b[c]. */
void k_add_bias(float *y, const tensor *b, int rows, int C);

/* Human-readable name of the variant k_linear picks for weight dtype dt ("avx512_bf16", "ref", ...). */
const char *k_linear_variant(dtype dt);

/* ---- precision and variant control (added by the kernels engineer) ---------------------------- */

/* Precision mode of the matrix products (k_linear, k_matmul, k_conv2d). 0 (the default): exact F32
 * products with F32 accumulation, whatever the weight dtype (F16/BF16 weights are widened per tile).
 * 1: opt-in bf16 mode — activations and weights are rounded to bf16 per tile and multiplied with
 * AVX512_BF16 dot products (F32 accumulation); about 3 significant digits per product, ~1.8x the F32
 * speed. Where the CPU lacks AVX512_BF16 the mode is accepted but the F32 path runs, and k_linear with
 * M <= 4 (memory-bound: W streamed once) always uses F32 products. Returns the previous mode. Set it
 * from the main thread between calls, not while kernels run. */
int k_set_precision(int bf16);
int k_get_precision(void);

/* Cap the SIMD level dispatch may use: K_ISA_PORTABLE (plain C, threaded), K_ISA_AVX2, K_ISA_AVX512,
 * K_ISA_ANY (the default: best the CPU has). For tests and benchmarks; returns the previous cap.
 * SD3_FORCE_REF=1 / cpu_force_ref(1) still wins and selects the scalar _ref twins. */
enum { K_ISA_PORTABLE = 0, K_ISA_AVX2 = 1, K_ISA_AVX512 = 2, K_ISA_ANY = 3 };
int k_set_isa_cap(int level);

/* Name of the variant k_attention / k_conv2d run with the current settings ("avx512", "ref", ...). */
const char *k_attention_variant(void);
const char *k_conv2d_variant(void);

#endif /* SD3_KERNELS_H */

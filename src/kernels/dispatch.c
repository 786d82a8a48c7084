/* dispatch.c — the public k_* entry points: pick the fast variant for this CPU and weight dtype, split
 * the work over the thread pool, or fall back to the scalar twin. (Fast variants land in cpu/.) */
#include <string.h>
#include "kernels/kernels.h"

/* ---- linear: split output rows M into chunks over the pool ---- */
typedef struct { float *y; const float *x; const tensor *W, *b; int M, N, K, chunk; } linear_job;

static void linear_task(void *a, int t, int thread) {
    (void)thread;
    linear_job *j = a;
    int m0 = t * j->chunk, m1 = m0 + j->chunk < j->M ? m0 + j->chunk : j->M;
    if (m0 < m1) k_linear_ref(j->y + (int64_t)m0 * j->N, j->x + (int64_t)m0 * j->K, j->W, j->b, m1 - m0, j->N, j->K);
}

void k_linear(float *y, const float *x, const tensor *W, const tensor *b, int M, int N, int K) {
    int nt = pool_threads();
    int chunk = (M + nt - 1) / nt;
    if (chunk < 1) chunk = 1;
    linear_job j = {y, x, W, b, M, N, K, chunk};
    pool_run((M + chunk - 1) / chunk, linear_task, &j);
}

const char *k_linear_variant(dtype dt) { (void)dt; return "ref"; }

void k_matmul(float *C, const float *A, const float *B, int batch, int M, int N, int K, int transB) {
    k_matmul_ref(C, A, B, batch, M, N, K, transB);
}

void k_attention(float *o, const float *q, const float *k, const float *v, const attn_params *p) {
    k_attention_ref(o, q, k, v, p);
}

void k_softmax(float *x, int rows, int n) { k_softmax_ref(x, rows, n); }
void k_layernorm(float *y, const float *x, const tensor *w, const tensor *b, int rows, int C, float eps) {
    k_layernorm_ref(y, x, w, b, rows, C, eps);
}
void k_rmsnorm(float *y, const float *x, const tensor *w, int rows, int C, float eps) { k_rmsnorm_ref(y, x, w, rows, C, eps); }
void k_groupnorm(float *y, const float *x, const tensor *w, const tensor *b, int N, int C, int HW, int G, float eps) {
    k_groupnorm_ref(y, x, w, b, N, C, HW, G, eps);
}
void k_gelu_erf(float *y, const float *x, size_t n) { k_gelu_erf_ref(y, x, n); }
void k_gelu_tanh(float *y, const float *x, size_t n) { k_gelu_tanh_ref(y, x, n); }
void k_quick_gelu(float *y, const float *x, size_t n) { k_quick_gelu_ref(y, x, n); }
void k_silu(float *y, const float *x, size_t n) { k_silu_ref(y, x, n); }
void k_conv2d(float *y, const float *x, const tensor *w, const tensor *b, const conv2d_params *p) { k_conv2d_ref(y, x, w, b, p); }
void k_upsample_nearest2x(float *y, const float *x, int N, int C, int H, int W) { k_upsample_nearest2x_ref(y, x, N, C, H, W); }
void k_modulate(float *y, const float *x, const float *shift, const float *scale, int rows, int C) {
    k_modulate_ref(y, x, shift, scale, rows, C);
}
void k_gated_add(float *y, const float *x, const float *gate, int rows, int C) { k_gated_add_ref(y, x, gate, rows, C); }

void k_add(float *y, const float *a, const float *b, size_t n) { for (size_t i = 0; i < n; i++) y[i] = a[i] + b[i]; }
void k_mul(float *y, const float *a, const float *b, size_t n) { for (size_t i = 0; i < n; i++) y[i] = a[i] * b[i]; }
void k_scale(float *y, const float *x, float s, size_t n) { for (size_t i = 0; i < n; i++) y[i] = s * x[i]; }
void k_axpy(float *y, float a, const float *x, size_t n) { for (size_t i = 0; i < n; i++) y[i] += a * x[i]; }
void k_add_bias(float *y, const tensor *b, int rows, int C) {
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < C; c++) y[(int64_t)r * C + c] += tensor_get_f32(b, c);
}

static int g_prec = 0, g_isa_cap = K_ISA_ANY;
int k_set_precision(int bf16) { int o = g_prec; g_prec = bf16 ? 1 : 0; return o; }
int k_get_precision(void) { return g_prec; }
int k_set_isa_cap(int level) { int o = g_isa_cap; g_isa_cap = level; return o; }
const char *k_attention_variant(void) { return "ref"; }
const char *k_conv2d_variant(void) { return "ref"; }

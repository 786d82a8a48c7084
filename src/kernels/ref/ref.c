/* ref.c — scalar reference twins of every kernel: plain loops, double-free of cleverness, single
 * threaded. They define what each op means; every fast variant is tested against them. */
#include <math.h>
#include <string.h>
#include "kernels/kernels.h"

/* Weight element access in any float dtype. */
static inline float wget(const tensor *t, int64_t i) { return tensor_get_f32(t, i); }

void k_linear_ref(float *y, const float *x, const tensor *W, const tensor *b, int M, int N, int K) {
    for (int m = 0; m < M; m++) {
        for (int n = 0; n < N; n++) {
            float acc = 0.0f;
            for (int k = 0; k < K; k++) acc += x[(int64_t)m * K + k] * wget(W, (int64_t)n * K + k);
            y[(int64_t)m * N + n] = acc + (b ? wget(b, n) : 0.0f);
        }
    }
}

void k_matmul_ref(float *C, const float *A, const float *B, int batch, int M, int N, int K, int transB) {
    for (int bi = 0; bi < batch; bi++) {
        const float *a = A + (int64_t)bi * M * K, *bb = B + (int64_t)bi * K * N;
        float *c = C + (int64_t)bi * M * N;
        for (int m = 0; m < M; m++)
            for (int n = 0; n < N; n++) {
                float acc = 0.0f;
                for (int k = 0; k < K; k++)
                    acc += a[(int64_t)m * K + k] * (transB ? bb[(int64_t)n * K + k] : bb[(int64_t)k * N + n]);
                c[(int64_t)m * N + n] = acc;
            }
    }
}

/* Reference attention: one query row at a time, full score row (Tk floats), exact softmax. */
void k_attention_ref(float *o, const float *q, const float *k, const float *v, const attn_params *p) {
    float *s = malloc(sizeof(float) * (size_t)(p->Tk > 0 ? p->Tk : 1));
    SD3_ASSERT(s);
    for (int b = 0; b < p->B; b++)
        for (int h = 0; h < p->H; h++)
            for (int i = 0; i < p->Tq; i++) {
                const float *qi = q + b * p->q_bstride + (int64_t)i * p->q_ld + (int64_t)h * p->D;
                float mx = -INFINITY;
                int nk = p->causal ? (i + 1 < p->Tk ? i + 1 : p->Tk) : p->Tk;
                for (int j = 0; j < nk; j++) {
                    const float *kj = k + b * p->k_bstride + (int64_t)j * p->k_ld + (int64_t)h * p->D;
                    float acc = 0.0f;
                    for (int d = 0; d < p->D; d++) acc += qi[d] * kj[d];
                    acc *= p->scale;
                    if (p->bias) acc += p->bias[((int64_t)h * p->Tq + i) * p->Tk + j];
                    s[j] = acc;
                    if (acc > mx) mx = acc;
                }
                float sum = 0.0f;
                for (int j = 0; j < nk; j++) { s[j] = expf(s[j] - mx); sum += s[j]; }
                float *oi = o + b * p->o_bstride + (int64_t)i * p->o_ld + (int64_t)h * p->D;
                for (int d = 0; d < p->D; d++) {
                    float acc = 0.0f;
                    for (int j = 0; j < nk; j++)
                        acc += s[j] * v[b * p->v_bstride + (int64_t)j * p->v_ld + (int64_t)h * p->D + d];
                    oi[d] = acc / sum;
                }
            }
    free(s);
}

void k_softmax_ref(float *x, int rows, int n) {
    for (int r = 0; r < rows; r++) {
        float *row = x + (int64_t)r * n, mx = -INFINITY, sum = 0.0f;
        for (int i = 0; i < n; i++) if (row[i] > mx) mx = row[i];
        for (int i = 0; i < n; i++) { row[i] = expf(row[i] - mx); sum += row[i]; }
        for (int i = 0; i < n; i++) row[i] /= sum;
    }
}

void k_layernorm_ref(float *y, const float *x, const tensor *w, const tensor *b, int rows, int C, float eps) {
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (int64_t)r * C;
        float *yr = y + (int64_t)r * C;
        double mean = 0, var = 0;
        for (int c = 0; c < C; c++) mean += xr[c];
        mean /= C;
        for (int c = 0; c < C; c++) var += ((double)xr[c] - mean) * ((double)xr[c] - mean);
        var /= C;
        float rstd = (float)(1.0 / sqrt(var + eps));
        for (int c = 0; c < C; c++) {
            float v = (xr[c] - (float)mean) * rstd;
            if (w) v *= wget(w, c);
            if (b) v += wget(b, c);
            yr[c] = v;
        }
    }
}

void k_rmsnorm_ref(float *y, const float *x, const tensor *w, int rows, int C, float eps) {
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (int64_t)r * C;
        float *yr = y + (int64_t)r * C;
        double ss = 0;
        for (int c = 0; c < C; c++) ss += (double)xr[c] * xr[c];
        float rs = (float)(1.0 / sqrt(ss / C + eps));
        for (int c = 0; c < C; c++) yr[c] = xr[c] * rs * (w ? wget(w, c) : 1.0f);
    }
}

void k_groupnorm_ref(float *y, const float *x, const tensor *w, const tensor *b, int N, int C, int HW, int G, float eps) {
    int cg = C / G;
    for (int n = 0; n < N; n++)
        for (int g = 0; g < G; g++) {
            const float *xg = x + ((int64_t)n * C + (int64_t)g * cg) * HW;
            float *yg = y + ((int64_t)n * C + (int64_t)g * cg) * HW;
            int64_t cnt = (int64_t)cg * HW;
            double mean = 0, var = 0;
            for (int64_t i = 0; i < cnt; i++) mean += xg[i];
            mean /= (double)cnt;
            for (int64_t i = 0; i < cnt; i++) var += ((double)xg[i] - mean) * ((double)xg[i] - mean);
            var /= (double)cnt;
            float rstd = (float)(1.0 / sqrt(var + eps));
            for (int c = 0; c < cg; c++) {
                float sc = w ? wget(w, g * cg + c) : 1.0f, sh = b ? wget(b, g * cg + c) : 0.0f;
                for (int i = 0; i < HW; i++) {
                    int64_t idx = (int64_t)c * HW + i;
                    yg[idx] = (xg[idx] - (float)mean) * rstd * sc + sh;
                }
            }
        }
}

void k_gelu_erf_ref(float *y, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
}

void k_gelu_tanh_ref(float *y, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        y[i] = 0.5f * v * (1.0f + tanhf(0.79788456080286536f * (v + 0.044715f * v * v * v)));
    }
}

void k_quick_gelu_ref(float *y, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = x[i] / (1.0f + expf(-1.702f * x[i]));
}

void k_silu_ref(float *y, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = x[i] / (1.0f + expf(-x[i]));
}

void conv2d_out_size(const conv2d_params *p, int *Ho, int *Wo) {
    int u = p->up > 1 ? p->up : 1;
    *Ho = (p->H * u + p->pad_t + p->pad_b - p->kh) / p->stride + 1;
    *Wo = (p->W * u + p->pad_l + p->pad_r - p->kw) / p->stride + 1;
}

void k_conv2d_ref(float *y, const float *x, const tensor *w, const tensor *b, const conv2d_params *p) {
    int Ho, Wo, u = p->up > 1 ? p->up : 1;
    int Hu = p->H * u, Wu = p->W * u;   /* the (virtually) upsampled input */
    conv2d_out_size(p, &Ho, &Wo);
    for (int n = 0; n < p->N; n++)
        for (int co = 0; co < p->Cout; co++)
            for (int oh = 0; oh < Ho; oh++)
                for (int ow = 0; ow < Wo; ow++) {
                    float acc = b ? wget(b, co) : 0.0f;
                    for (int ci = 0; ci < p->Cin; ci++)
                        for (int i = 0; i < p->kh; i++) {
                            int ih = oh * p->stride + i - p->pad_t;
                            if (ih < 0 || ih >= Hu) continue;
                            for (int j = 0; j < p->kw; j++) {
                                int iw = ow * p->stride + j - p->pad_l;
                                if (iw < 0 || iw >= Wu) continue;
                                acc += x[(((int64_t)n * p->Cin + ci) * p->H + ih / u) * p->W + iw / u] *
                                       wget(w, (((int64_t)co * p->Cin + ci) * p->kh + i) * p->kw + j);
                            }
                        }
                    y[(((int64_t)n * p->Cout + co) * Ho + oh) * Wo + ow] = acc;
                }
}

void k_upsample_nearest2x_ref(float *y, const float *x, int N, int C, int H, int W) {
    for (int64_t nc = 0; nc < (int64_t)N * C; nc++)
        for (int i = 0; i < 2 * H; i++)
            for (int j = 0; j < 2 * W; j++)
                y[(nc * 2 * H + i) * 2 * W + j] = x[(nc * H + i / 2) * W + j / 2];
}

void k_modulate_ref(float *y, const float *x, const float *shift, const float *scale, int rows, int C) {
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < C; c++) {
            int64_t i = (int64_t)r * C + c;
            y[i] = x[i] * (1.0f + scale[c]) + shift[c];
        }
}

void k_layernorm_modulate_ref(float *y, const float *x, const float *shift, const float *scale, int rows, int C, float eps) {
    k_layernorm_ref(y, x, NULL, NULL, rows, C, eps);
    k_modulate_ref(y, y, shift, scale, rows, C);
}

void k_gated_add_ref(float *y, const float *x, const float *gate, int rows, int C) {
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < C; c++) y[(int64_t)r * C + c] += gate[c] * x[(int64_t)r * C + c];
}

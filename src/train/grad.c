/*
 * grad.c — backward passes of the MMDiT ops for LoRA training (see grad.h for the contracts: every
 * gradient is accumulated, never written). Long reductions (over rows) accumulate in double; matrix
 * products go through k_matmul.
 */
#include <math.h>
#include <string.h>
#include "train/grad.h"

#define GELU_K 0.79788456080286536     /* sqrt(2 / pi) */
#define GELU_C 0.044715
#define ATT_TILE 64                    /* queries and keys per attention tile */

/* ================================================================================================ */
/* Matrix products                                                                                  */
/* ================================================================================================ */

/* Bound on one scratch slab of linear_backward in floats (16 MB by default; tests lower it). */
static int64_t scratch_floats = 4 << 20;

int64_t grad_set_scratch_limit(int64_t floats) {
    int64_t old = scratch_floats;
    scratch_floats = floats > 0 ? floats : 4 << 20;
    return old;
}

/* dx[M,K] += dy[M,N] W[N,K], in slabs of kc columns of W converted to F32 (only the slab is held). */
static sd3_status linear_backward_dx(float *dx, const float *dy, const tensor *W, int M, int N, int K, sd3_err *err) {
    int64_t per_col = (int64_t)N + M; /* slab column + tmp column */
    int64_t kc64 = scratch_floats / per_col;
    if (kc64 > K) kc64 = K;
    const int kc = kc64 < 1 ? 1 : (int)kc64;
    float *slab = sd3_malloc(sizeof(float) * (size_t)N * kc);
    float *tmp = sd3_malloc(sizeof(float) * (size_t)M * kc);
    if (!slab || !tmp) {
        sd3_free(slab);
        sd3_free(tmp);
        return sd3_errf(err, SD3_ERR_NOMEM, "linear_backward: out of memory for a %dx%d slab (M %d)", N, kc, M);
    }
    for (int k0 = 0; k0 < K; k0 += kc) {
        int w = K - k0 < kc ? K - k0 : kc;
        for (int n = 0; n < N; n++) tensor_to_f32(W, (int64_t)n * K + k0, w, slab + (int64_t)n * w);
        k_matmul(tmp, dy, slab, 1, M, w, N, 0); /* tmp[M,w] = dy[M,N] slab[N,w] */
        for (int m = 0; m < M; m++) {
            float *d = dx + (int64_t)m * K + k0;
            const float *t = tmp + (int64_t)m * w;
            for (int j = 0; j < w; j++) d[j] += t[j];
        }
    }
    sd3_free(slab);
    sd3_free(tmp);
    return SD3_OK;
}

/* dW[N,K] += dy[M,N]^T x[M,K], in blocks of nc rows of dW (dy^T block and product held). */
static sd3_status linear_backward_dw(float *dW, const float *dy, const float *x, int M, int N, int K, sd3_err *err) {
    int64_t per_row = (int64_t)M + K;
    int64_t nc64 = scratch_floats / per_row;
    if (nc64 > N) nc64 = N;
    const int nc = nc64 < 1 ? 1 : (int)nc64;
    float *dyt = sd3_malloc(sizeof(float) * (size_t)nc * M);
    float *tmp = sd3_malloc(sizeof(float) * (size_t)nc * K);
    if (!dyt || !tmp) {
        sd3_free(dyt);
        sd3_free(tmp);
        return sd3_errf(err, SD3_ERR_NOMEM, "linear_backward: out of memory for dW blocks (%d rows, M %d, K %d)", nc,
                        M, K);
    }
    for (int n0 = 0; n0 < N; n0 += nc) {
        int h = N - n0 < nc ? N - n0 : nc;
        for (int m = 0; m < M; m++)
            for (int j = 0; j < h; j++) dyt[(int64_t)j * M + m] = dy[(int64_t)m * N + n0 + j];
        k_matmul(tmp, dyt, x, 1, h, K, M, 0); /* tmp[h,K] = dyt[h,M] x[M,K] */
        float *d = dW + (int64_t)n0 * K;
        for (int64_t i = 0; i < (int64_t)h * K; i++) d[i] += tmp[i];
    }
    sd3_free(dyt);
    sd3_free(tmp);
    return SD3_OK;
}

/* Column sums of a rows x C matrix accumulated in double, added to out[C] (chunks of 256 columns). */
static void add_colsum(float *out, const float *a, int rows, int C) {
    double acc[256];
    for (int c0 = 0; c0 < C; c0 += 256) {
        int w = C - c0 < 256 ? C - c0 : 256;
        memset(acc, 0, sizeof(double) * (size_t)w);
        for (int r = 0; r < rows; r++) {
            const float *ar = a + (int64_t)r * C + c0;
            for (int j = 0; j < w; j++) acc[j] += ar[j];
        }
        for (int j = 0; j < w; j++) out[c0 + j] += (float)acc[j];
    }
}

/* Column sums of the elementwise product a * b (rows x C), in double, added to out[C]. */
static void add_colsum_prod(float *out, const float *a, const float *b, int rows, int C) {
    double acc[256];
    for (int c0 = 0; c0 < C; c0 += 256) {
        int w = C - c0 < 256 ? C - c0 : 256;
        memset(acc, 0, sizeof(double) * (size_t)w);
        for (int r = 0; r < rows; r++) {
            const float *ar = a + (int64_t)r * C + c0, *br = b + (int64_t)r * C + c0;
            for (int j = 0; j < w; j++) acc[j] += (double)ar[j] * br[j];
        }
        for (int j = 0; j < w; j++) out[c0 + j] += (float)acc[j];
    }
}

sd3_status linear_backward(float *dx, float *dW, float *db, const float *dy, const float *x, const tensor *W,
                           int M, int N, int K, sd3_err *err) {
    SD3_ASSERT(dy && W && M >= 0 && N > 0 && K > 0);
    SD3_ASSERT(tensor_numel(W) == (int64_t)N * K);
    if (M == 0) return SD3_OK;
    if (dx) {
        sd3_status s = linear_backward_dx(dx, dy, W, M, N, K, err);
        if (s != SD3_OK) return s;
    }
    if (dW) {
        SD3_ASSERT(x);
        sd3_status s = linear_backward_dw(dW, dy, x, M, N, K, err);
        if (s != SD3_OK) return s;
    }
    if (db) add_colsum(db, dy, M, N);
    return SD3_OK;
}

void lora_forward(float *y, float *h, const float *x, const float *A, const float *Bm, float s, int M, int N,
                  int K, int r) {
    SD3_ASSERT(y && h && x && A && Bm && r > 0);
    k_matmul(h, x, A, 1, M, r, K, 1); /* h[M,r] = x[M,K] A[r,K]^T */
    for (int m = 0; m < M; m++) {
        const float *hm = h + (int64_t)m * r;
        float *ym = y + (int64_t)m * N;
        for (int n = 0; n < N; n++) {
            const float *bn = Bm + (int64_t)n * r;
            float acc = 0.0f;
            for (int j = 0; j < r; j++) acc += hm[j] * bn[j];
            ym[n] += acc * s;
        }
    }
}

sd3_status lora_backward(float *dx, float *dA, float *dB, const float *dy, const float *x, const float *h,
                         const float *A, const float *Bm, float s, int M, int N, int K, int r, sd3_err *err) {
    SD3_ASSERT(dy && A && Bm && r > 0 && N > 0 && K > 0);
    if (M == 0) return SD3_OK;
    /* dB[n, j] += s sum_m dy[m, n] h[m, j] (double accumulators per row of dB). */
    if (dB) {
        SD3_ASSERT(h);
        double *acc = sd3_calloc((size_t)N * r, sizeof(double));
        if (!acc) return sd3_errf(err, SD3_ERR_NOMEM, "lora_backward: out of memory (dB %dx%d)", N, r);
        for (int m = 0; m < M; m++) {
            const float *dym = dy + (int64_t)m * N, *hm = h + (int64_t)m * r;
            for (int n = 0; n < N; n++) {
                double g = dym[n];
                double *an = acc + (int64_t)n * r;
                for (int j = 0; j < r; j++) an[j] += g * hm[j];
            }
        }
        for (int64_t i = 0; i < (int64_t)N * r; i++) dB[i] += (float)(acc[i] * s);
        sd3_free(acc);
    }
    if (!dA && !dx) return SD3_OK;
    /* dh[M, r] = s dy Bm. */
    float *dh = sd3_malloc(sizeof(float) * (size_t)M * r);
    if (!dh) return sd3_errf(err, SD3_ERR_NOMEM, "lora_backward: out of memory (dh %dx%d)", M, r);
    k_matmul(dh, dy, Bm, 1, M, r, N, 0); /* dh[M,r] = dy[M,N] Bm[N,r] */
    for (int64_t i = 0; i < (int64_t)M * r; i++) dh[i] *= s;
    if (dA) { /* dA[j, k] += sum_m dh[m, j] x[m, k] */
        SD3_ASSERT(x);
        double *acc = sd3_calloc((size_t)r * K, sizeof(double));
        if (!acc) {
            sd3_free(dh);
            return sd3_errf(err, SD3_ERR_NOMEM, "lora_backward: out of memory (dA %dx%d)", r, K);
        }
        for (int m = 0; m < M; m++) {
            const float *xm = x + (int64_t)m * K;
            for (int j = 0; j < r; j++) {
                double g = dh[(int64_t)m * r + j];
                double *aj = acc + (int64_t)j * K;
                for (int k = 0; k < K; k++) aj[k] += g * xm[k];
            }
        }
        for (int64_t i = 0; i < (int64_t)r * K; i++) dA[i] += (float)acc[i];
        sd3_free(acc);
    }
    if (dx) { /* dx[m, k] += sum_j dh[m, j] A[j, k] */
        for (int m = 0; m < M; m++) {
            float *dxm = dx + (int64_t)m * K;
            for (int j = 0; j < r; j++) {
                float g = dh[(int64_t)m * r + j];
                const float *aj = A + (int64_t)j * K;
                for (int k = 0; k < K; k++) dxm[k] += g * aj[k];
            }
        }
    }
    sd3_free(dh);
    return SD3_OK;
}

/* ================================================================================================ */
/* Normalisation                                                                                    */
/* ================================================================================================ */

void layernorm_backward(float *dx, const float *dy, const float *x, int rows, int C, float eps) {
    SD3_ASSERT(dx && dy && x && C > 0);
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (int64_t)r * C, *gr = dy + (int64_t)r * C;
        float *dr = dx + (int64_t)r * C;
        double mean = 0, var = 0;
        for (int c = 0; c < C; c++) mean += xr[c];
        mean /= C;
        for (int c = 0; c < C; c++) var += ((double)xr[c] - mean) * ((double)xr[c] - mean);
        var /= C;
        double rstd = 1.0 / sqrt(var + eps);
        double mg = 0, mgx = 0;
        for (int c = 0; c < C; c++) {
            mg += gr[c];
            mgx += gr[c] * (((double)xr[c] - mean) * rstd);
        }
        mg /= C;
        mgx /= C;
        for (int c = 0; c < C; c++) {
            double xh = ((double)xr[c] - mean) * rstd;
            dr[c] += (float)(rstd * (gr[c] - mg - xh * mgx));
        }
    }
}

void rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x, const tensor *w, int rows, int C,
                      float eps) {
    SD3_ASSERT(dy && x && C > 0);
    SD3_ASSERT(!dw || w);
    float wbuf[256];
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (int64_t)r * C, *gr = dy + (int64_t)r * C;
        double ss = 0;
        for (int c = 0; c < C; c++) ss += (double)xr[c] * xr[c];
        double rs = 1.0 / sqrt(ss / C + eps);
        if (dx) {
            double sgx = 0;
            for (int c0 = 0; c0 < C; c0 += 256) {
                int n = C - c0 < 256 ? C - c0 : 256;
                if (w) tensor_to_f32(w, c0, n, wbuf);
                for (int j = 0; j < n; j++) sgx += (double)gr[c0 + j] * (w ? wbuf[j] : 1.0f) * xr[c0 + j];
            }
            double k = rs * rs * rs * sgx / C;
            float *dr = dx + (int64_t)r * C;
            for (int c0 = 0; c0 < C; c0 += 256) {
                int n = C - c0 < 256 ? C - c0 : 256;
                if (w) tensor_to_f32(w, c0, n, wbuf);
                for (int j = 0; j < n; j++)
                    dr[c0 + j] += (float)(rs * gr[c0 + j] * (w ? wbuf[j] : 1.0f) - k * xr[c0 + j]);
            }
        }
        if (dw)
            for (int c = 0; c < C; c++) dw[c] += (float)((double)gr[c] * xr[c] * rs);
    }
}

/* ================================================================================================ */
/* adaLN pieces                                                                                     */
/* ================================================================================================ */

void modulate_backward(float *dx, float *dscale, float *dshift, const float *dy, const float *x, const float *scale,
                       int rows, int C) {
    SD3_ASSERT(dy);
    if (dx) {
        SD3_ASSERT(scale);
        for (int r = 0; r < rows; r++) {
            const float *g = dy + (int64_t)r * C;
            float *d = dx + (int64_t)r * C;
            for (int c = 0; c < C; c++) d[c] += g[c] * (1.0f + scale[c]);
        }
    }
    if (dscale) {
        SD3_ASSERT(x);
        add_colsum_prod(dscale, dy, x, rows, C);
    }
    if (dshift) add_colsum(dshift, dy, rows, C);
}

void gated_add_backward(float *dx, float *dgate, const float *dy, const float *x, const float *gate, int rows,
                        int C) {
    SD3_ASSERT(dy);
    if (dx) {
        SD3_ASSERT(gate);
        for (int r = 0; r < rows; r++) {
            const float *g = dy + (int64_t)r * C;
            float *d = dx + (int64_t)r * C;
            for (int c = 0; c < C; c++) d[c] += g[c] * gate[c];
        }
    }
    if (dgate) {
        SD3_ASSERT(x);
        add_colsum_prod(dgate, dy, x, rows, C);
    }
}

/* ================================================================================================ */
/* Activations                                                                                      */
/* ================================================================================================ */

void gelu_tanh_backward(float *dx, const float *dy, const float *x, size_t n) {
    SD3_ASSERT(dx && dy && x);
    const float kk = (float)GELU_K, cc = (float)GELU_C;
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        float t = tanhf(kk * (v + cc * v * v * v));
        float du = kk * (1.0f + 3.0f * cc * v * v);
        dx[i] += dy[i] * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du);
    }
}

void silu_backward(float *dx, const float *dy, const float *x, size_t n) {
    SD3_ASSERT(dx && dy && x);
    for (size_t i = 0; i < n; i++) {
        float s = 1.0f / (1.0f + expf(-x[i]));
        dx[i] += dy[i] * (s * (1.0f + x[i] * (1.0f - s)));
    }
}

/* ================================================================================================ */
/* Attention                                                                                        */
/* ================================================================================================ */

void softmax_backward(float *dx, const float *dy, const float *y, int rows, int n) {
    SD3_ASSERT(dx && dy && y && n > 0);
    for (int r = 0; r < rows; r++) {
        const float *yr = y + (int64_t)r * n, *gr = dy + (int64_t)r * n;
        float *dr = dx + (int64_t)r * n;
        double dot = 0;
        for (int j = 0; j < n; j++) dot += (double)gr[j] * yr[j];
        for (int j = 0; j < n; j++) dr[j] += (float)(yr[j] * (gr[j] - dot));
    }
}

/* Number of keys query row i may see. */
static int att_nk(const attn_params *p, int i) {
    return p->causal ? (i + 1 < p->Tk ? i + 1 : p->Tk) : p->Tk;
}

typedef struct att_job {
    float *lse;
    float *dq, *dk, *dv;
    const float *d_o, *q, *k, *v, *o;
    const float *lse_in;
    const attn_params *p;
    float *scratch;      /* per thread: scratch_n floats */
    int64_t scratch_n;
} att_job;

/* lse of the Tq rows of one head from its contiguous Q [Tq,D] and K [Tk,D], per block of ATT_TILE
 * queries: S = Q_blk K^T (k_matmul), then max and sum of exp per row (sum in double). S: ATT_TILE x Tk. */
static void head_lse(float *L, const float *Q, const float *Kh, const attn_params *p, int h, float *S) {
    const int Tq = p->Tq, Tk = p->Tk, D = p->D;
    for (int i0 = 0; i0 < Tq; i0 += ATT_TILE) {
        const int ni = Tq - i0 < ATT_TILE ? Tq - i0 : ATT_TILE;
        k_matmul(S, Q + (int64_t)i0 * D, Kh, 1, ni, Tk, D, 1);
        for (int a = 0; a < ni; a++) {
            const int i = i0 + a, nk = att_nk(p, i);
            const float *bias = p->bias ? p->bias + ((int64_t)h * Tq + i) * Tk : NULL;
            float *sr = S + (int64_t)a * Tk, mx = -INFINITY;
            for (int j = 0; j < nk; j++) {
                sr[j] = sr[j] * p->scale + (bias ? bias[j] : 0.0f);
                if (sr[j] > mx) mx = sr[j];
            }
            double sum = 0;
            for (int j = 0; j < nk; j++) sum += expf(sr[j] - mx);
            L[i] = nk ? mx + (float)log(sum) : -INFINITY;
        }
    }
}

/* Gather head h of batch item b of x (strided: bstride, ld) into dst [T, D]. */
static void gather_head(float *dst, const float *x, int64_t bstride, int64_t ld, int b, int h, int T, int D) {
    for (int t = 0; t < T; t++)
        memcpy(dst + (int64_t)t * D, x + b * bstride + (int64_t)t * ld + (int64_t)h * D, sizeof(float) * (size_t)D);
}

/* attention_lse for head (b, h) = task (scratch: Q, K and one block of scores). */
static void lse_task(void *arg, int task, int thread) {
    const att_job *J = arg;
    const attn_params *p = J->p;
    const int b = task / p->H, h = task % p->H;
    float *Q = J->scratch + (int64_t)thread * J->scratch_n, *Kh = Q + (int64_t)p->Tq * p->D;
    float *S = Kh + (int64_t)p->Tk * p->D;
    gather_head(Q, J->q, p->q_bstride, p->q_ld, b, h, p->Tq, p->D);
    gather_head(Kh, J->k, p->k_bstride, p->k_ld, b, h, p->Tk, p->D);
    head_lse(J->lse + ((int64_t)b * p->H + h) * p->Tq, Q, Kh, p, h, S);
}

sd3_status attention_lse(float *lse, const float *q, const float *k, const attn_params *p, sd3_err *err) {
    SD3_ASSERT(lse && q && k && p && p->B >= 0 && p->H > 0 && p->D > 0 && p->Tq >= 0 && p->Tk >= 0);
    if (p->B == 0 || p->Tq == 0) return SD3_OK;
    int nt = pool_threads() < 1 ? 1 : pool_threads();
    int64_t per = ((int64_t)p->Tq + p->Tk) * p->D + (int64_t)ATT_TILE * p->Tk;
    float *scratch = per <= (int64_t)(SIZE_MAX / sizeof(float)) / nt ? sd3_malloc(sizeof(float) * (size_t)(per * nt))
                                                                      : NULL;
    if (!scratch)
        return sd3_errf(err, SD3_ERR_NOMEM, "attention_lse: out of memory for %d x %lld floats of scratch", nt,
                        (long long)per);
    att_job J = {.lse = lse, .q = q, .k = k, .p = p, .scratch = scratch, .scratch_n = per};
    pool_run(p->B * p->H, lse_task, &J);
    sd3_free(scratch);
    return SD3_OK;
}

/* Floats of scratch one (b, h) of attention_backward needs. */
static int64_t att_scratch_floats(const attn_params *p) {
    int64_t D = p->D, Tq = p->Tq, Tk = p->Tk;
    return 3 * Tq * D + 5 * Tk * D + 2 * Tq + 3 * (int64_t)ATT_TILE * Tk;
}

/* Gradient of head (b, h) = task: gather the head contiguous, then per block of ATT_TILE queries against
 * all keys (products through k_matmul, which runs serially inside a pool task):
 *     S = Q_blk K^T, dP = dO_blk V^T, P = exp(scale S + bias - lse), dS = scale P (dP - Di),
 *     dQ_blk = dS K, dV += P^T dO_blk, dK += dS^T Q_blk,
 * and finally add dq, dk, dv into the strided outputs. Only ATT_TILE x Tk scores live at a time. */
static void att_bwd_task(void *arg, int task, int thread) {
    const att_job *J = arg;
    const attn_params *p = J->p;
    const int b = task / p->H, h = task % p->H, D = p->D, Tq = p->Tq, Tk = p->Tk;
    const int64_t hD = (int64_t)h * D;
    float *s = J->scratch + (int64_t)thread * J->scratch_n;
    float *Q = s, *dO = Q + (int64_t)Tq * D, *dQ = dO + (int64_t)Tq * D;
    float *Kh = dQ + (int64_t)Tq * D, *Vh = Kh + (int64_t)Tk * D, *dK = Vh + (int64_t)Tk * D;
    float *dV = dK + (int64_t)Tk * D, *tmp = dV + (int64_t)Tk * D, *L = tmp + (int64_t)Tk * D, *Di = L + Tq;
    float *S = Di + Tq, *dP = S + (int64_t)ATT_TILE * Tk, *T = dP + (int64_t)ATT_TILE * Tk;

    for (int i = 0; i < Tq; i++) {
        const float *qi = J->q + b * p->q_bstride + (int64_t)i * p->q_ld + hD;
        const float *gi = J->d_o + b * p->o_bstride + (int64_t)i * p->o_ld + hD;
        const float *oi = J->o + b * p->o_bstride + (int64_t)i * p->o_ld + hD;
        double di = 0;
        for (int d = 0; d < D; d++) {
            Q[(int64_t)i * D + d] = qi[d];
            dO[(int64_t)i * D + d] = gi[d];
            di += (double)gi[d] * oi[d];
        }
        Di[i] = (float)di;
    }
    gather_head(Kh, J->k, p->k_bstride, p->k_ld, b, h, Tk, D);
    gather_head(Vh, J->v, p->v_bstride, p->v_ld, b, h, Tk, D);
    memset(dK, 0, sizeof(float) * (size_t)Tk * D);
    memset(dV, 0, sizeof(float) * (size_t)Tk * D);
    if (J->lse_in) memcpy(L, J->lse_in + ((int64_t)b * p->H + h) * Tq, sizeof(float) * (size_t)Tq);
    else head_lse(L, Q, Kh, p, h, S);

    for (int i0 = 0; i0 < Tq; i0 += ATT_TILE) {
        const int ni = Tq - i0 < ATT_TILE ? Tq - i0 : ATT_TILE;
        k_matmul(S, Q + (int64_t)i0 * D, Kh, 1, ni, Tk, D, 1);  /* S[ni,Tk] = Q_blk K^T */
        k_matmul(dP, dO + (int64_t)i0 * D, Vh, 1, ni, Tk, D, 1); /* dP[ni,Tk] = dO_blk V^T */
        for (int a = 0; a < ni; a++) {
            const int i = i0 + a, nk = att_nk(p, i);
            const float *bias = p->bias ? p->bias + ((int64_t)h * Tq + i) * Tk : NULL;
            float *sr = S + (int64_t)a * Tk, *dr = dP + (int64_t)a * Tk;
            for (int j = 0; j < Tk; j++) {
                float pij = 0.0f;
                if (j < nk) pij = expf(sr[j] * p->scale + (bias ? bias[j] : 0.0f) - L[i]);
                sr[j] = pij;                                   /* S now holds P */
                dr[j] = pij * (dr[j] - Di[i]) * p->scale;      /* dP now holds scale dS */
            }
        }
        k_matmul(dQ + (int64_t)i0 * D, dP, Kh, 1, ni, D, Tk, 0); /* dQ_blk = dS K */
        for (int a = 0; a < ni; a++)                             /* T[Tk,ni] = P^T */
            for (int j = 0; j < Tk; j++) T[(int64_t)j * ni + a] = S[(int64_t)a * Tk + j];
        k_matmul(tmp, T, dO + (int64_t)i0 * D, 1, Tk, D, ni, 0); /* P^T dO_blk */
        for (int64_t x = 0; x < (int64_t)Tk * D; x++) dV[x] += tmp[x];
        for (int a = 0; a < ni; a++)                             /* T = dS^T */
            for (int j = 0; j < Tk; j++) T[(int64_t)j * ni + a] = dP[(int64_t)a * Tk + j];
        k_matmul(tmp, T, Q + (int64_t)i0 * D, 1, Tk, D, ni, 0);  /* dS^T Q_blk */
        for (int64_t x = 0; x < (int64_t)Tk * D; x++) dK[x] += tmp[x];
    }

    if (J->dq)
        for (int i = 0; i < Tq; i++) {
            float *o = J->dq + b * p->q_bstride + (int64_t)i * p->q_ld + hD;
            for (int d = 0; d < D; d++) o[d] += dQ[(int64_t)i * D + d];
        }
    for (int j = 0; j < Tk; j++) {
        if (J->dk) {
            float *o = J->dk + b * p->k_bstride + (int64_t)j * p->k_ld + hD;
            for (int d = 0; d < D; d++) o[d] += dK[(int64_t)j * D + d];
        }
        if (J->dv) {
            float *o = J->dv + b * p->v_bstride + (int64_t)j * p->v_ld + hD;
            for (int d = 0; d < D; d++) o[d] += dV[(int64_t)j * D + d];
        }
    }
}

sd3_status attention_backward(float *dq, float *dk, float *dv, const float *d_o, const float *q, const float *k,
                              const float *v, const float *o, const float *lse, const attn_params *p,
                              sd3_err *err) {
    SD3_ASSERT(p && d_o && q && k && v && o && p->B >= 0 && p->H > 0 && p->D > 0 && p->Tq >= 0 && p->Tk >= 0);
    if (!dq && !dk && !dv) return SD3_OK;
    if (p->B == 0 || p->Tq == 0 || p->Tk == 0) return SD3_OK;
    int nt = pool_threads();
    if (nt < 1) nt = 1;
    int64_t per = att_scratch_floats(p);
    if (per > (int64_t)(SIZE_MAX / sizeof(float)) / nt)
        return sd3_errf(err, SD3_ERR_NOMEM, "attention_backward: scratch for %d+%d tokens is too large", p->Tq, p->Tk);
    float *scratch = sd3_malloc(sizeof(float) * (size_t)(per * nt));
    if (!scratch)
        return sd3_errf(err, SD3_ERR_NOMEM, "attention_backward: out of memory for %d x %lld floats of scratch", nt,
                        (long long)per);
    att_job J = {.dq = dq, .dk = dk, .dv = dv, .d_o = d_o, .q = q, .k = k, .v = v, .o = o, .lse_in = lse, .p = p,
                 .scratch = scratch, .scratch_n = per};
    pool_run(p->B * p->H, att_bwd_task, &J);
    sd3_free(scratch);
    return SD3_OK;
}

/* ================================================================================================ */
/* Loss                                                                                             */
/* ================================================================================================ */

float rf_loss_backward(float *d_raw, float *pred_out, const float *raw, const float *noisy, const float *target,
                       const float *sigma, const float *weighting, int B, int64_t n) {
    SD3_ASSERT(raw && target && B > 0 && n > 0);
    SD3_ASSERT(!sigma || noisy);
    double total = 0;
    for (int b = 0; b < B; b++) {
        const float w = weighting ? weighting[b] : 1.0f;
        double sum = 0;
        for (int64_t i = 0; i < n; i++) {
            int64_t idx = (int64_t)b * n + i;
            float pred = raw[idx];
            if (sigma) {
                pred = raw[idx] * -sigma[b];
                pred = pred + noisy[idx];
            }
            if (pred_out) pred_out[idx] = pred;
            float diff = pred - target[idx];
            float term = w * (diff * diff);
            sum += term;
            if (d_raw) {
                double g = 2.0 * w * diff / ((double)B * (double)n);
                if (sigma) g *= -sigma[b];
                d_raw[idx] += (float)g;
            }
        }
        total += (float)(sum / (double)n); /* per-sample mean, float as torch's */
    }
    return (float)(total / B);
}

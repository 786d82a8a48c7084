/*
 * test_grad.c — every backward of src/train/grad.h against central finite differences in double.
 *
 * Method: each op (and two composed chains) is written again here in double precision. A test draws
 * random F32 inputs and a random upstream gradient G, takes the scalar L = sum(G * forward(inputs)) in
 * double, and perturbs every input element by +-h (h = 1e-6): dL/dx ~ (L(x+h) - L(x-h)) / 2h, whose
 * truncation error is O(h^2) and rounding error about 1e-16 / h = 1e-10 relative. The analytic gradient
 * comes from the F32 backward under test, called with dy = G. An element passes when
 *     |analytic - numeric| <= 1e-3 |numeric| + 1e-5
 * (relative 1e-3, absolute floor 1e-5 for O(1) inputs, so elements whose true gradient is ~0 are judged
 * on the floor). One CHECK per gradient tensor; the worst absolute and relative errors are printed
 * (relative over elements with |numeric| > 1e-3).
 *
 * Shapes are small and odd (M 3, K 5, N 7, heads 2, head_dim 4, Tq 5, Tk 6), plus tile-crossing
 * attention (Tq 70, Tk 130) and linear_backward with a tiny scratch cap (many slabs).
 */
#include <math.h>
#include <string.h>
#include "kernels/kernels.h"
#include "test.h"
#include "train/grad.h"

#define FD_H 1e-6
#define TOL_REL 1e-3
#define TOL_ABS 1e-5

static double worst_rel_all = 0, worst_abs_all = 0;

/* ================================================================================================ */
/* Random data and conversions                                                                      */
/* ================================================================================================ */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

/* Uniform in [-1, 1) from a 64-bit LCG (test data only). */
static float frand(void) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static float *frand_buf(int64_t n, float amp) {
    float *p = malloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++) p[i] = amp * frand();
    return p;
}

static double *to_d(const float *x, int64_t n) {
    double *p = malloc(sizeof(double) * (size_t)n);
    for (int64_t i = 0; i < n; i++) p[i] = x[i];
    return p;
}

static float *zeros(int64_t n) { return calloc((size_t)n, sizeof(float)); }

/* An F32 tensor view of data. */
static tensor tview(float *data, int64_t rows, int64_t cols) {
    tensor t = {.dt = DT_F32, .ndim = 2, .shape = {rows, cols}, .data = data};
    return t;
}

/* ================================================================================================ */
/* Finite differences                                                                               */
/* ================================================================================================ */

typedef double (*loss_fn)(void *ctx);

/* Compare analytic[n] (F32, from the backward) with central differences of f over x[n] (double, the
 * input of the test's double forward, perturbed in place and restored). */
static void fd_check(const char *what, loss_fn f, void *ctx, double *x, int64_t n, const float *analytic) {
    double worst_abs = 0, worst_rel = 0;
    int64_t bad = 0, first_bad = -1;
    double bad_num = 0, bad_an = 0;
    for (int64_t i = 0; i < n; i++) {
        double x0 = x[i];
        x[i] = x0 + FD_H;
        double lp = f(ctx);
        x[i] = x0 - FD_H;
        double lm = f(ctx);
        x[i] = x0;
        double num = (lp - lm) / (2 * FD_H), an = analytic[i];
        double e = fabs(an - num);
        if (e > worst_abs) worst_abs = e;
        if (fabs(num) > 1e-3 && e / fabs(num) > worst_rel) worst_rel = e / fabs(num);
        if (e > TOL_REL * fabs(num) + TOL_ABS) {
            if (!bad++) {
                first_bad = i;
                bad_num = num;
                bad_an = an;
            }
        }
    }
    printf("  %-40s n=%-5lld max abs err %.2e  max rel err %.2e\n", what, (long long)n, worst_abs, worst_rel);
    if (worst_rel > worst_rel_all) worst_rel_all = worst_rel;
    if (worst_abs > worst_abs_all) worst_abs_all = worst_abs;
    CHECK(bad == 0, "%s: %lld of %lld elements off; first [%lld] analytic %.8g numeric %.8g", what, (long long)bad,
          (long long)n, (long long)first_bad, bad_an, bad_num);
}

/* sum(G * y) in double. */
static double dot_g(const double *y, const float *G, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += y[i] * G[i];
    return s;
}

/* ================================================================================================ */
/* Double references of the forward ops                                                             */
/* ================================================================================================ */

static void d_linear(double *y, const double *x, const double *W, const double *b, int M, int N, int K) {
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double a = b ? b[n] : 0;
            for (int k = 0; k < K; k++) a += x[(int64_t)m * K + k] * W[(int64_t)n * K + k];
            y[(int64_t)m * N + n] = a;
        }
}

/* y += s (x A^T) B^T */
static void d_lora(double *y, const double *x, const double *A, const double *Bm, double s, int M, int N, int K,
                   int r) {
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double a = 0;
            for (int j = 0; j < r; j++) {
                double h = 0;
                for (int k = 0; k < K; k++) h += x[(int64_t)m * K + k] * A[(int64_t)j * K + k];
                a += h * Bm[(int64_t)n * r + j];
            }
            y[(int64_t)m * N + n] += s * a;
        }
}

static void d_layernorm(double *y, const double *x, int rows, int C, double eps) {
    for (int r = 0; r < rows; r++) {
        const double *xr = x + (int64_t)r * C;
        double mean = 0, var = 0;
        for (int c = 0; c < C; c++) mean += xr[c];
        mean /= C;
        for (int c = 0; c < C; c++) var += (xr[c] - mean) * (xr[c] - mean);
        var /= C;
        for (int c = 0; c < C; c++) y[(int64_t)r * C + c] = (xr[c] - mean) / sqrt(var + eps);
    }
}

static void d_rmsnorm(double *y, const double *x, const double *w, int rows, int C, double eps) {
    for (int r = 0; r < rows; r++) {
        const double *xr = x + (int64_t)r * C;
        double ss = 0;
        for (int c = 0; c < C; c++) ss += xr[c] * xr[c];
        double rs = 1.0 / sqrt(ss / C + eps);
        for (int c = 0; c < C; c++) y[(int64_t)r * C + c] = xr[c] * rs * (w ? w[c] : 1.0);
    }
}

static void d_modulate(double *y, const double *x, const double *shift, const double *scale, int rows, int C) {
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < C; c++) y[(int64_t)r * C + c] = x[(int64_t)r * C + c] * (1 + scale[c]) + shift[c];
}

static double d_gelu(double v) { return 0.5 * v * (1 + tanh(0.79788456080286536 * (v + 0.044715 * v * v * v))); }
static double d_silu(double v) { return v / (1 + exp(-v)); }

/* Attention in double over the strided layouts of p (exact softmax per row). */
static void d_attention(double *o, const double *q, const double *k, const double *v, const attn_params *p) {
    double *s = malloc(sizeof(double) * (size_t)p->Tk);
    for (int b = 0; b < p->B; b++)
        for (int h = 0; h < p->H; h++)
            for (int i = 0; i < p->Tq; i++) {
                const double *qi = q + b * p->q_bstride + (int64_t)i * p->q_ld + (int64_t)h * p->D;
                int nk = p->causal ? (i + 1 < p->Tk ? i + 1 : p->Tk) : p->Tk;
                double mx = -INFINITY;
                for (int j = 0; j < nk; j++) {
                    const double *kj = k + b * p->k_bstride + (int64_t)j * p->k_ld + (int64_t)h * p->D;
                    double a = 0;
                    for (int d = 0; d < p->D; d++) a += qi[d] * kj[d];
                    a *= p->scale;
                    if (p->bias) a += p->bias[((int64_t)h * p->Tq + i) * p->Tk + j];
                    s[j] = a;
                    if (a > mx) mx = a;
                }
                double sum = 0;
                for (int j = 0; j < nk; j++) sum += (s[j] = exp(s[j] - mx));
                double *oi = o + b * p->o_bstride + (int64_t)i * p->o_ld + (int64_t)h * p->D;
                for (int d = 0; d < p->D; d++) {
                    double a = 0;
                    for (int j = 0; j < nk; j++) a += s[j] * v[b * p->v_bstride + (int64_t)j * p->v_ld + (int64_t)h * p->D + d];
                    oi[d] = a / sum;
                }
            }
    free(s);
}

/* ================================================================================================ */
/* Linear                                                                                           */
/* ================================================================================================ */

typedef struct lin_ctx {
    int M, N, K, r;
    double *x, *W, *b, *A, *Bm, s;
    const float *G;
    double *y;
} lin_ctx;

static double lin_loss(void *p) {
    lin_ctx *c = p;
    d_linear(c->y, c->x, c->W, c->b, c->M, c->N, c->K);
    if (c->A) d_lora(c->y, c->x, c->A, c->Bm, c->s, c->M, c->N, c->K, c->r);
    return dot_g(c->y, c->G, (int64_t)c->M * c->N);
}

/* linear_backward for W stored as dt (values pre-rounded to bf16 so F32 and BF16 hold the same numbers);
 * dx / dW / db start at 0.25 to check that they accumulate. */
static void test_linear(dtype dt, int M, int N, int K, int64_t scratch_cap) {
    printf("linear_backward: W %s, M %d N %d K %d, scratch cap %lld\n", dtype_name(dt), M, N, K,
           (long long)scratch_cap);
    float *x = frand_buf((int64_t)M * K, 1), *W = frand_buf((int64_t)N * K, 0.5f), *b = frand_buf(N, 0.1f);
    float *G = frand_buf((int64_t)M * N, 1);
    for (int64_t i = 0; i < (int64_t)N * K; i++) W[i] = bf16_to_f32(f32_to_bf16(W[i]));
    tensor Wt = tview(W, N, K);
    uint16_t *wb = NULL;
    if (dt == DT_BF16) {
        wb = malloc(sizeof(uint16_t) * (size_t)N * K);
        f32_to_bf16_row(W, wb, (size_t)N * K);
        Wt.dt = DT_BF16;
        Wt.data = wb;
    }
    float *dx = zeros((int64_t)M * K), *dW = zeros((int64_t)N * K), *db = zeros(N);
    for (int64_t i = 0; i < (int64_t)M * K; i++) dx[i] = 0.25f;
    for (int64_t i = 0; i < (int64_t)N * K; i++) dW[i] = 0.25f;
    for (int i = 0; i < N; i++) db[i] = 0.25f;
    int64_t old = grad_set_scratch_limit(scratch_cap);
    sd3_err err = {0};
    CHECK(linear_backward(dx, dW, db, G, x, &Wt, M, N, K, &err) == SD3_OK, "%s", err.msg);
    grad_set_scratch_limit(old);
    for (int64_t i = 0; i < (int64_t)M * K; i++) dx[i] -= 0.25f;
    for (int64_t i = 0; i < (int64_t)N * K; i++) dW[i] -= 0.25f;
    for (int i = 0; i < N; i++) db[i] -= 0.25f;
    lin_ctx c = {.M = M, .N = N, .K = K, .x = to_d(x, (int64_t)M * K), .W = to_d(W, (int64_t)N * K),
                 .b = to_d(b, N), .G = G, .y = malloc(sizeof(double) * (size_t)M * N)};
    fd_check("linear dx", lin_loss, &c, c.x, (int64_t)M * K, dx);
    fd_check("linear dW", lin_loss, &c, c.W, (int64_t)N * K, dW);
    fd_check("linear db", lin_loss, &c, c.b, N, db);

    /* NULL gradients are skipped; dx alone matches the full call's dx. */
    float *dx2 = zeros((int64_t)M * K);
    CHECK(linear_backward(dx2, NULL, NULL, G, NULL, &Wt, M, N, K, &err) == SD3_OK, "%s", err.msg);
    double dmax = 0;
    for (int64_t i = 0; i < (int64_t)M * K; i++) dmax = fmax(dmax, fabs((double)dx2[i] - dx[i]));
    CHECK(dmax < 1e-5, "dx-only call differs by %g", dmax);
    free(x), free(W), free(b), free(G), free(wb), free(dx), free(dW), free(db), free(dx2);
    free(c.x), free(c.W), free(c.b), free(c.y);
}

/* Base Linear + LoRA: lora_forward against double, then dx (base + LoRA), dA, dB against FD. */
static void test_lora(void) {
    const int M = 3, N = 7, K = 5, r = 2;
    const float s = 0.75f;
    printf("lora_forward / lora_backward: M %d N %d K %d rank %d scale %g\n", M, N, K, r, s);
    float *x = frand_buf(M * K, 1), *W = frand_buf(N * K, 0.5f), *b = frand_buf(N, 0.1f);
    float *A = frand_buf(r * K, 0.5f), *Bm = frand_buf(N * r, 0.5f), *G = frand_buf(M * N, 1);
    tensor Wt = tview(W, N, K), bt = {.dt = DT_F32, .ndim = 1, .shape = {N}, .data = b};
    float *y = zeros(M * N), *h = zeros(M * r);
    k_linear(y, x, &Wt, &bt, M, N, K);
    lora_forward(y, h, x, A, Bm, s, M, N, K, r);
    lin_ctx c = {.M = M, .N = N, .K = K, .r = r, .x = to_d(x, M * K), .W = to_d(W, N * K), .b = to_d(b, N),
                 .A = to_d(A, r * K), .Bm = to_d(Bm, N * r), .s = s, .G = G, .y = malloc(sizeof(double) * M * N)};
    lin_loss(&c);
    double e = 0;
    for (int i = 0; i < M * N; i++) e = fmax(e, fabs(y[i] - c.y[i]));
    printf("  lora_forward max abs err vs double %.2e\n", e);
    CHECK(e < 1e-5, "lora_forward off by %g", e);

    float *dx = zeros(M * K), *dA = zeros(r * K), *dB = zeros(N * r);
    sd3_err err = {0};
    CHECK(lora_backward(dx, dA, dB, G, x, h, A, Bm, s, M, N, K, r, &err) == SD3_OK, "%s", err.msg);
    CHECK(linear_backward(dx, NULL, NULL, G, x, &Wt, M, N, K, &err) == SD3_OK, "%s", err.msg);
    fd_check("lora dx (base + LoRA)", lin_loss, &c, c.x, M * K, dx);
    fd_check("lora dA", lin_loss, &c, c.A, r * K, dA);
    fd_check("lora dB", lin_loss, &c, c.Bm, N * r, dB);

    /* B = 0 (peft's initialisation): dA must be exactly 0, dB not. */
    float *B0 = zeros(N * r), *dA0 = zeros(r * K), *dB0 = zeros(N * r);
    CHECK(lora_backward(NULL, dA0, dB0, G, x, h, A, B0, s, M, N, K, r, &err) == SD3_OK, "%s", err.msg);
    double sa = 0, sb = 0;
    for (int i = 0; i < r * K; i++) sa += fabs(dA0[i]);
    for (int i = 0; i < N * r; i++) sb += fabs(dB0[i]);
    CHECK(sa == 0 && sb > 0, "fresh LoRA: |dA| %g (want 0), |dB| %g (want > 0)", sa, sb);
    free(x), free(W), free(b), free(A), free(Bm), free(G), free(y), free(h), free(dx), free(dA), free(dB);
    free(B0), free(dA0), free(dB0);
    free(c.x), free(c.W), free(c.b), free(c.A), free(c.Bm), free(c.y);
}

/* ================================================================================================ */
/* Norms, modulation, gated residual, activations                                                   */
/* ================================================================================================ */

typedef struct ew_ctx {
    int rows, C;
    double *x, *w, *a, *b, *r; /* op inputs (which ones depends on op) */
    const float *G;
    double *y;
    int op;
} ew_ctx;

enum { OP_LN, OP_RMS, OP_MOD, OP_GATE, OP_GELU, OP_SILU, OP_SOFTMAX };

static double ew_loss(void *p) {
    ew_ctx *c = p;
    int64_t n = (int64_t)c->rows * c->C;
    switch (c->op) {
    case OP_LN: d_layernorm(c->y, c->x, c->rows, c->C, 1e-6); break;
    case OP_RMS: d_rmsnorm(c->y, c->x, c->w, c->rows, c->C, 1e-6); break;
    case OP_MOD: d_modulate(c->y, c->x, c->a, c->b, c->rows, c->C); break; /* a shift, b scale */
    case OP_GATE:                                                          /* y = r + a[c] x */
        for (int64_t i = 0; i < n; i++) c->y[i] = c->r[i] + c->a[i % c->C] * c->x[i];
        break;
    case OP_GELU: for (int64_t i = 0; i < n; i++) c->y[i] = d_gelu(c->x[i]); break;
    case OP_SILU: for (int64_t i = 0; i < n; i++) c->y[i] = d_silu(c->x[i]); break;
    case OP_SOFTMAX:
        for (int r = 0; r < c->rows; r++) {
            const double *xr = c->x + (int64_t)r * c->C;
            double mx = -INFINITY, sum = 0;
            for (int j = 0; j < c->C; j++) mx = fmax(mx, xr[j]);
            for (int j = 0; j < c->C; j++) sum += exp(xr[j] - mx);
            for (int j = 0; j < c->C; j++) c->y[(int64_t)r * c->C + j] = exp(xr[j] - mx) / sum;
        }
        break;
    }
    return dot_g(c->y, c->G, n);
}

static void test_norms(void) {
    const int rows = 3, C = 7;
    const int64_t n = rows * C;
    printf("layernorm / rmsnorm / modulate / gated_add / gelu_tanh / silu / softmax: rows %d C %d\n", rows, C);
    float *x = frand_buf(n, 2), *G = frand_buf(n, 1);
    for (int i = 0; i < C; i++) x[i] += 3.0f; /* a row with a large mean */
    ew_ctx c = {.rows = rows, .C = C, .x = to_d(x, n), .G = G, .y = malloc(sizeof(double) * n)};

    /* layernorm: the forward matches k_layernorm, then dx */
    float *y = zeros(n), *dx = zeros(n);
    k_layernorm(y, x, NULL, NULL, rows, C, 1e-6f);
    c.op = OP_LN;
    ew_loss(&c);
    double e = 0;
    for (int64_t i = 0; i < n; i++) e = fmax(e, fabs(y[i] - c.y[i]));
    CHECK(e < 1e-5, "double layernorm reference differs from k_layernorm by %g", e);
    layernorm_backward(dx, G, x, rows, C, 1e-6f);
    fd_check("layernorm dx", ew_loss, &c, c.x, n, dx);

    /* rmsnorm with an F32 weight, and without */
    float *w = frand_buf(C, 0.3f), *dw = zeros(C);
    for (int i = 0; i < C; i++) w[i] += 1.0f;
    tensor wt = {.dt = DT_F32, .ndim = 1, .shape = {C}, .data = w};
    c.op = OP_RMS;
    c.w = to_d(w, C);
    memset(dx, 0, sizeof(float) * n);
    rmsnorm_backward(dx, dw, G, x, &wt, rows, C, 1e-6f);
    fd_check("rmsnorm dx", ew_loss, &c, c.x, n, dx);
    fd_check("rmsnorm dw", ew_loss, &c, c.w, C, dw);
    free(c.w);
    c.w = NULL;
    memset(dx, 0, sizeof(float) * n);
    rmsnorm_backward(dx, NULL, G, x, NULL, rows, C, 1e-6f);
    fd_check("rmsnorm dx (no weight)", ew_loss, &c, c.x, n, dx);

    /* modulate */
    float *shift = frand_buf(C, 0.5f), *scale = frand_buf(C, 0.5f), *dsh = zeros(C), *dsc = zeros(C);
    c.op = OP_MOD;
    c.a = to_d(shift, C);
    c.b = to_d(scale, C);
    memset(dx, 0, sizeof(float) * n);
    modulate_backward(dx, dsc, dsh, G, x, scale, rows, C);
    fd_check("modulate dx", ew_loss, &c, c.x, n, dx);
    fd_check("modulate dscale", ew_loss, &c, c.b, C, dsc);
    fd_check("modulate dshift", ew_loss, &c, c.a, C, dsh);
    free(c.a), free(c.b);

    /* gated residual: y = r + gate x; the residual's gradient is G itself */
    float *res = frand_buf(n, 1), *gate = frand_buf(C, 1), *dg = zeros(C);
    c.op = OP_GATE;
    c.r = to_d(res, n);
    c.a = to_d(gate, C);
    memset(dx, 0, sizeof(float) * n);
    gated_add_backward(dx, dg, G, x, gate, rows, C);
    fd_check("gated_add dx", ew_loss, &c, c.x, n, dx);
    fd_check("gated_add dgate", ew_loss, &c, c.a, C, dg);
    fd_check("gated_add d(residual) = dy", ew_loss, &c, c.r, n, G);
    free(c.r), free(c.a);

    /* activations over a wider range */
    for (int64_t i = 0; i < n; i++) c.x[i] = x[i] = 4.0f * frand();
    c.op = OP_GELU;
    memset(dx, 0, sizeof(float) * n);
    gelu_tanh_backward(dx, G, x, (size_t)n);
    fd_check("gelu_tanh dx", ew_loss, &c, c.x, n, dx);
    c.op = OP_SILU;
    memset(dx, 0, sizeof(float) * n);
    silu_backward(dx, G, x, (size_t)n);
    fd_check("silu dx", ew_loss, &c, c.x, n, dx);
    /* softmax: backward from the F32 forward's output */
    c.op = OP_SOFTMAX;
    memcpy(y, x, sizeof(float) * n);
    k_softmax(y, rows, C);
    memset(dx, 0, sizeof(float) * n);
    softmax_backward(dx, G, y, rows, C);
    fd_check("softmax dx", ew_loss, &c, c.x, n, dx);

    free(x), free(G), free(y), free(dx), free(w), free(dw), free(shift), free(scale), free(dsh), free(dsc);
    free(res), free(gate), free(dg), free(c.x), free(c.y);
}

/* ================================================================================================ */
/* Attention                                                                                        */
/* ================================================================================================ */

typedef struct att_ctx {
    attn_params p;     /* bias points at float data; the double forward reads it too */
    double *q, *kv;    /* q buffer; fused k|v buffer (v at offset C) */
    double *o;
    int64_t no, C;
    const float *G;
} att_ctx;

static double att_loss(void *pp) {
    att_ctx *c = pp;
    d_attention(c->o, c->q, c->kv, c->kv + c->C, &c->p);
    return dot_g(c->o, c->G, c->no);
}

/* q in its own buffer with padded rows (q_ld = C + 3), k and v as slices of one fused [Tk, 2C] buffer,
 * o [Tq, C]: exercises every stride of attn_params. */
static void test_attention(int B, int H, int D, int Tq, int Tk, int causal, int with_bias, int with_lse) {
    const int C = H * D;
    printf("attention_backward: B %d H %d D %d Tq %d Tk %d%s%s%s\n", B, H, D, Tq, Tk, causal ? " causal" : "",
           with_bias ? " bias" : "", with_lse ? " (lse from attention_lse)" : " (lse recomputed)");
    const int64_t qld = C + 3, nq = (int64_t)B * Tq * qld, nkv = (int64_t)B * Tk * 2 * C, no = (int64_t)B * Tq * C;
    float *q = frand_buf(nq, 1.5f), *kv = frand_buf(nkv, 1.5f), *G = frand_buf(no, 1);
    float *bias = with_bias ? frand_buf((int64_t)H * Tq * Tk, 1) : NULL;
    attn_params p = {.B = B, .H = H, .Tq = Tq, .Tk = Tk, .D = D, .q_ld = qld, .k_ld = 2 * C, .v_ld = 2 * C, .o_ld = C,
                     .q_bstride = Tq * qld, .k_bstride = (int64_t)Tk * 2 * C, .v_bstride = (int64_t)Tk * 2 * C,
                     .o_bstride = (int64_t)Tq * C, .scale = 1.3f / sqrtf((float)D), .causal = causal, .bias = bias};
    float *o = zeros(no);
    k_attention(o, q, kv, kv + C, &p);
    att_ctx c = {.p = p, .q = to_d(q, nq), .kv = to_d(kv, nkv), .o = malloc(sizeof(double) * no), .no = no, .C = C,
                 .G = G};
    att_loss(&c);
    double e = 0;
    for (int64_t i = 0; i < no; i++) e = fmax(e, fabs(o[i] - c.o[i]));
    CHECK(e < 1e-5, "double attention reference differs from k_attention by %g", e);

    sd3_err err = {0};
    float *lse = NULL;
    if (with_lse) { /* against the log-sum-exp in double */
        lse = zeros((int64_t)B * H * Tq);
        CHECK(attention_lse(lse, q, kv, &p, &err) == SD3_OK, "%s", err.msg);
        double le = 0;
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++)
                for (int i = 0; i < Tq; i++) {
                    int nk = causal ? (i + 1 < Tk ? i + 1 : Tk) : Tk;
                    double sum = 0;
                    for (int j = 0; j < nk; j++) {
                        double a = 0;
                        for (int d = 0; d < D; d++)
                            a += c.q[b * p.q_bstride + i * qld + h * D + d] * c.kv[b * p.k_bstride + j * 2 * C + h * D + d];
                        a = a * p.scale + (bias ? bias[((int64_t)h * Tq + i) * Tk + j] : 0);
                        sum += exp(a);
                    }
                    le = fmax(le, fabs(lse[((int64_t)b * H + h) * Tq + i] - log(sum)));
                }
        printf("  attention_lse max abs err vs double %.2e\n", le);
        CHECK(le < 1e-5, "attention_lse off by %g", le);
    }
    float *dq = zeros(nq), *dkv = zeros(nkv);
    CHECK(attention_backward(dq, dkv, dkv + C, G, q, kv, kv + C, o, lse, &p, &err) == SD3_OK, "%s", err.msg);
    /* the padding columns of q and dq must stay untouched (0) */
    double pad = 0;
    for (int64_t t = 0; t < (int64_t)B * Tq; t++)
        for (int j = C; j < qld; j++) pad += fabs(dq[t * qld + j]);
    CHECK(pad == 0, "attention_backward wrote %g into the padding of dq", pad);
    fd_check("attention dq", att_loss, &c, c.q, nq, dq);
    fd_check("attention dk, dv (fused buffer)", att_loss, &c, c.kv, nkv, dkv);
    free(q), free(kv), free(G), free(bias), free(o), free(lse), free(dq), free(dkv);
    free(c.q), free(c.kv), free(c.o);
}

/* ================================================================================================ */
/* Composed chains                                                                                  */
/* ================================================================================================ */

/* The MMDiT feed-forward half-block: y = x + gate * (GELU(LN(x)(1 + scale) + shift) W1^T + b1) W2^T + b2,
 * with a LoRA on W2. All of x, shift, scale, gate, W1, b1, W2, b2, A, B get gradients. */
typedef struct ff_ctx {
    int T, C, F, r;
    double *x, *shift, *scale, *gate, *W1, *b1, *W2, *b2, *A, *Bm;
    double s;
    double *xn, *h, *f, *y;
    const float *G;
} ff_ctx;

static double ff_loss(void *p) {
    ff_ctx *c = p;
    const int T = c->T, C = c->C, F = c->F;
    d_layernorm(c->xn, c->x, T, C, 1e-6);
    d_modulate(c->xn, c->xn, c->shift, c->scale, T, C);
    d_linear(c->h, c->xn, c->W1, c->b1, T, F, C);
    for (int64_t i = 0; i < (int64_t)T * F; i++) c->h[i] = d_gelu(c->h[i]);
    d_linear(c->f, c->h, c->W2, c->b2, T, C, F);
    d_lora(c->f, c->h, c->A, c->Bm, c->s, T, C, F, c->r);
    for (int64_t i = 0; i < (int64_t)T * C; i++) c->y[i] = c->x[i] + c->gate[i % C] * c->f[i];
    return dot_g(c->y, c->G, (int64_t)T * C);
}

static void test_ff_chain(void) {
    const int T = 5, C = 6, F = 4 * C, r = 3;
    const float s = 1.0f;
    printf("chain: layernorm -> modulate -> linear -> gelu_tanh -> linear (+LoRA) -> gated add: T %d C %d F %d\n",
           T, C, F);
    float *x = frand_buf(T * C, 1), *shift = frand_buf(C, 0.3f), *scale = frand_buf(C, 0.3f), *gate = frand_buf(C, 1);
    float *W1 = frand_buf(F * C, 0.6f), *b1 = frand_buf(F, 0.1f), *W2 = frand_buf(C * F, 0.3f), *b2 = frand_buf(C, 0.1f);
    float *A = frand_buf(r * F, 0.3f), *Bm = frand_buf(C * r, 0.3f), *G = frand_buf(T * C, 1);
    tensor W1t = tview(W1, F, C), W2t = tview(W2, C, F);
    tensor b1t = {.dt = DT_F32, .ndim = 1, .shape = {F}, .data = b1}, b2t = {.dt = DT_F32, .ndim = 1, .shape = {C}, .data = b2};

    /* F32 forward as the MMDiT does it (in place where it is in place), keeping what the backward needs:
     * ln (LayerNorm output = modulate input), xm (modulated), pre (GELU input), h (GELU output), lh. */
    float *y = malloc(sizeof(float) * T * C), *ln = zeros(T * C), *xm = zeros(T * C), *pre = zeros(T * F);
    float *hh = zeros(T * F), *f = zeros(T * C), *lh = zeros(T * r);
    memcpy(y, x, sizeof(float) * T * C);
    k_layernorm(ln, x, NULL, NULL, T, C, 1e-6f);
    k_modulate(xm, ln, shift, scale, T, C);
    k_linear(pre, xm, &W1t, &b1t, T, F, C);
    k_gelu_tanh(hh, pre, (size_t)T * F);
    k_linear(f, hh, &W2t, &b2t, T, C, F);
    lora_forward(f, lh, hh, A, Bm, s, T, C, F, r);
    k_gated_add(y, f, gate, T, C);

    /* backward: dy = G; the residual passes G straight into dx */
    float *dx = zeros(T * C), *dsh = zeros(C), *dsc = zeros(C), *dg = zeros(C), *dW1 = zeros(F * C), *db1 = zeros(F);
    float *dW2 = zeros(C * F), *db2 = zeros(C), *dA = zeros(r * F), *dB = zeros(C * r);
    float *df = zeros(T * C), *dh = zeros(T * F), *dpre = zeros(T * F), *dxm = zeros(T * C), *dln = zeros(T * C);
    sd3_err err = {0};
    for (int i = 0; i < T * C; i++) dx[i] += G[i];
    gated_add_backward(df, dg, G, f, gate, T, C);
    CHECK(lora_backward(dh, dA, dB, df, hh, lh, A, Bm, s, T, C, F, r, &err) == SD3_OK, "%s", err.msg);
    CHECK(linear_backward(dh, dW2, db2, df, hh, &W2t, T, C, F, &err) == SD3_OK, "%s", err.msg);
    gelu_tanh_backward(dpre, dh, pre, (size_t)T * F);
    CHECK(linear_backward(dxm, dW1, db1, dpre, xm, &W1t, T, F, C, &err) == SD3_OK, "%s", err.msg);
    modulate_backward(dln, dsc, dsh, dxm, ln, scale, T, C);
    layernorm_backward(dx, dln, x, T, C, 1e-6f);

    ff_ctx c = {.T = T, .C = C, .F = F, .r = r, .x = to_d(x, T * C), .shift = to_d(shift, C), .scale = to_d(scale, C),
                .gate = to_d(gate, C), .W1 = to_d(W1, F * C), .b1 = to_d(b1, F), .W2 = to_d(W2, C * F),
                .b2 = to_d(b2, C), .A = to_d(A, r * F), .Bm = to_d(Bm, C * r), .s = s,
                .xn = malloc(sizeof(double) * T * C), .h = malloc(sizeof(double) * T * F),
                .f = malloc(sizeof(double) * T * C), .y = malloc(sizeof(double) * T * C), .G = G};
    ff_loss(&c);
    double e = 0;
    for (int i = 0; i < T * C; i++) e = fmax(e, fabs(y[i] - c.y[i]));
    CHECK(e < 1e-5, "chain forward: F32 vs double %g", e);
    fd_check("chain dx", ff_loss, &c, c.x, T * C, dx);
    fd_check("chain dshift", ff_loss, &c, c.shift, C, dsh);
    fd_check("chain dscale", ff_loss, &c, c.scale, C, dsc);
    fd_check("chain dgate", ff_loss, &c, c.gate, C, dg);
    fd_check("chain dW1", ff_loss, &c, c.W1, F * C, dW1);
    fd_check("chain db1", ff_loss, &c, c.b1, F, db1);
    fd_check("chain dW2", ff_loss, &c, c.W2, C * F, dW2);
    fd_check("chain db2", ff_loss, &c, c.b2, C, db2);
    fd_check("chain dA (LoRA on linear 2)", ff_loss, &c, c.A, r * F, dA);
    fd_check("chain dB (LoRA on linear 2)", ff_loss, &c, c.Bm, C * r, dB);

    free(x), free(shift), free(scale), free(gate), free(W1), free(b1), free(W2), free(b2), free(A), free(Bm), free(G);
    free(y), free(ln), free(xm), free(pre), free(hh), free(f), free(lh);
    free(dx), free(dsh), free(dsc), free(dg), free(dW1), free(db1), free(dW2), free(db2), free(dA), free(dB);
    free(df), free(dh), free(dpre), free(dxm), free(dln);
    free(c.x), free(c.shift), free(c.scale), free(c.gate), free(c.W1), free(c.b1), free(c.W2), free(c.b2), free(c.A);
    free(c.Bm), free(c.xn), free(c.h), free(c.f), free(c.y);
}

/* The joint-attention half-block with two streams (image Tx rows, text Tc rows), as the MMDiT does it:
 * xn = LN(x)(1+sc)+sh, cn = LN(c)(1+scc)+shc; q,k,v = xn Wq^T.. (LoRA on q of the image stream), added
 * projections for the text; RMS qk-norm per head; ONE attention over [image ; text] per batch item; the
 * image part of the output through Wo (LoRA) and a gated add onto x. Loss = sum(G * x_out); gradients
 * with respect to x, c, the LoRA factors and the text-side modulation. */
typedef struct ja_ctx {
    int Tx, Tc, C, H, D, r;
    double *x, *c, *sh, *sc, *shc, *scc, *gate;
    double *Wq, *Wk, *Wv, *Wqc, *Wkc, *Wvc, *Wo, *nq, *nk, *Aq, *Bq, *Ao, *Bo;
    double s;
    double *xn, *cn, *q, *k, *v, *o, *ao, *y;
    const float *G;
} ja_ctx;

static double ja_loss(void *p) {
    ja_ctx *c = p;
    const int Tx = c->Tx, Tc = c->Tc, T = Tx + Tc, C = c->C, H = c->H, D = c->D;
    d_layernorm(c->xn, c->x, Tx, C, 1e-6);
    d_modulate(c->xn, c->xn, c->sh, c->sc, Tx, C);
    d_layernorm(c->cn, c->c, Tc, C, 1e-6);
    d_modulate(c->cn, c->cn, c->shc, c->scc, Tc, C);
    d_linear(c->q, c->xn, c->Wq, NULL, Tx, C, C);
    d_lora(c->q, c->xn, c->Aq, c->Bq, c->s, Tx, C, C, c->r);
    d_linear(c->k, c->xn, c->Wk, NULL, Tx, C, C);
    d_linear(c->v, c->xn, c->Wv, NULL, Tx, C, C);
    d_linear(c->q + Tx * C, c->cn, c->Wqc, NULL, Tc, C, C);
    d_linear(c->k + Tx * C, c->cn, c->Wkc, NULL, Tc, C, C);
    d_linear(c->v + Tx * C, c->cn, c->Wvc, NULL, Tc, C, C);
    d_rmsnorm(c->q, c->q, c->nq, T * H, D, 1e-6);
    d_rmsnorm(c->k, c->k, c->nk, T * H, D, 1e-6);
    attn_params ap = {.B = 1, .H = H, .Tq = T, .Tk = T, .D = D, .q_ld = C, .k_ld = C, .v_ld = C, .o_ld = C,
                      .q_bstride = T * C, .k_bstride = T * C, .v_bstride = T * C, .o_bstride = T * C,
                      .scale = 1.0f / sqrtf((float)D)};
    d_attention(c->o, c->q, c->k, c->v, &ap);
    d_linear(c->ao, c->o, c->Wo, NULL, Tx, C, C);
    d_lora(c->ao, c->o, c->Ao, c->Bo, c->s, Tx, C, C, c->r);
    for (int64_t i = 0; i < (int64_t)Tx * C; i++) c->y[i] = c->x[i] + c->gate[i % C] * c->ao[i];
    return dot_g(c->y, c->G, (int64_t)Tx * C);
}

static void test_joint_attention_chain(void) {
    const int Tx = 4, Tc = 3, T = Tx + Tc, H = 2, D = 4, C = H * D, r = 2;
    const float s = 0.5f, eps = 1e-6f;
    printf("chain: joint attention (LN, modulate, q/k/v + LoRA on q, qk RMSNorm, attention, out + LoRA, gated "
           "add): Tx %d Tc %d H %d D %d\n", Tx, Tc, H, D);
    float *x = frand_buf(Tx * C, 1), *cc = frand_buf(Tc * C, 1), *G = frand_buf(Tx * C, 1);
    float *sh = frand_buf(C, 0.3f), *sc = frand_buf(C, 0.3f), *shc = frand_buf(C, 0.3f), *scc = frand_buf(C, 0.3f);
    float *gate = frand_buf(C, 1);
    float *Wq = frand_buf(C * C, 0.5f), *Wk = frand_buf(C * C, 0.5f), *Wv = frand_buf(C * C, 0.5f);
    float *Wqc = frand_buf(C * C, 0.5f), *Wkc = frand_buf(C * C, 0.5f), *Wvc = frand_buf(C * C, 0.5f);
    float *Wo = frand_buf(C * C, 0.5f), *nq = frand_buf(D, 0.2f), *nk = frand_buf(D, 0.2f);
    float *Aq = frand_buf(r * C, 0.4f), *Bq = frand_buf(C * r, 0.4f), *Ao = frand_buf(r * C, 0.4f), *Bo = frand_buf(C * r, 0.4f);
    for (int i = 0; i < D; i++) nq[i] += 1.0f, nk[i] += 1.0f;
    tensor tq = tview(Wq, C, C), tk = tview(Wk, C, C), tv = tview(Wv, C, C), tqc = tview(Wqc, C, C);
    tensor tkc = tview(Wkc, C, C), tvc = tview(Wvc, C, C), to = tview(Wo, C, C);
    tensor tnq = {.dt = DT_F32, .ndim = 1, .shape = {D}, .data = nq}, tnk = {.dt = DT_F32, .ndim = 1, .shape = {D}, .data = nk};

    /* F32 forward, saving: lnx, lnc (LN outputs), xn, cn (modulated), qpre, kpre (before qk-norm), q, k, v,
     * o (attention output), hq, ho (LoRA h). */
    float *lnx = zeros(Tx * C), *lnc = zeros(Tc * C), *xn = zeros(Tx * C), *cn = zeros(Tc * C);
    float *qpre = zeros(T * C), *kpre = zeros(T * C), *q = zeros(T * C), *k = zeros(T * C), *v = zeros(T * C);
    float *o = zeros(T * C), *ao = zeros(Tx * C), *hq = zeros(Tx * r), *ho = zeros(Tx * r), *y = zeros(Tx * C);
    k_layernorm(lnx, x, NULL, NULL, Tx, C, eps);
    k_modulate(xn, lnx, sh, sc, Tx, C);
    k_layernorm(lnc, cc, NULL, NULL, Tc, C, eps);
    k_modulate(cn, lnc, shc, scc, Tc, C);
    k_linear(qpre, xn, &tq, NULL, Tx, C, C);
    lora_forward(qpre, hq, xn, Aq, Bq, s, Tx, C, C, r);
    k_linear(kpre, xn, &tk, NULL, Tx, C, C);
    k_linear(v, xn, &tv, NULL, Tx, C, C);
    k_linear(qpre + Tx * C, cn, &tqc, NULL, Tc, C, C);
    k_linear(kpre + Tx * C, cn, &tkc, NULL, Tc, C, C);
    k_linear(v + Tx * C, cn, &tvc, NULL, Tc, C, C);
    k_rmsnorm(q, qpre, &tnq, T * H, D, eps);
    k_rmsnorm(k, kpre, &tnk, T * H, D, eps);
    attn_params ap = {.B = 1, .H = H, .Tq = T, .Tk = T, .D = D, .q_ld = C, .k_ld = C, .v_ld = C, .o_ld = C,
                      .q_bstride = T * C, .k_bstride = T * C, .v_bstride = T * C, .o_bstride = T * C,
                      .scale = 1.0f / sqrtf((float)D)};
    k_attention(o, q, k, v, &ap);
    k_linear(ao, o, &to, NULL, Tx, C, C);
    lora_forward(ao, ho, o, Ao, Bo, s, Tx, C, C, r);
    memcpy(y, x, sizeof(float) * Tx * C);
    k_gated_add(y, ao, gate, Tx, C);

    /* backward */
    sd3_err err = {0};
    float *dx = zeros(Tx * C), *dc = zeros(Tc * C), *dgate = zeros(C), *dshc = zeros(C), *dscc = zeros(C);
    float *dAq = zeros(r * C), *dBq = zeros(C * r), *dAo = zeros(r * C), *dBo = zeros(C * r);
    float *dao = zeros(Tx * C), *d_o = zeros(T * C), *dq = zeros(T * C), *dk = zeros(T * C), *dv = zeros(T * C);
    float *dqpre = zeros(T * C), *dkpre = zeros(T * C), *dxn = zeros(Tx * C), *dcn = zeros(Tc * C);
    float *dlnx = zeros(Tx * C), *dlnc = zeros(Tc * C);
    for (int i = 0; i < Tx * C; i++) dx[i] = G[i];
    gated_add_backward(dao, dgate, G, ao, gate, Tx, C);
    CHECK(lora_backward(d_o, dAo, dBo, dao, o, ho, Ao, Bo, s, Tx, C, C, r, &err) == SD3_OK, "%s", err.msg);
    CHECK(linear_backward(d_o, NULL, NULL, dao, NULL, &to, Tx, C, C, &err) == SD3_OK, "%s", err.msg);
    /* text rows of o feed nothing here (context_pre_only-like): d_o stays 0 there */
    CHECK(attention_backward(dq, dk, dv, d_o, q, k, v, o, NULL, &ap, &err) == SD3_OK, "%s", err.msg);
    rmsnorm_backward(dqpre, NULL, dq, qpre, &tnq, T * H, D, eps);
    rmsnorm_backward(dkpre, NULL, dk, kpre, &tnk, T * H, D, eps);
    CHECK(lora_backward(dxn, dAq, dBq, dqpre, xn, hq, Aq, Bq, s, Tx, C, C, r, &err) == SD3_OK, "%s", err.msg);
    CHECK(linear_backward(dxn, NULL, NULL, dqpre, NULL, &tq, Tx, C, C, &err) == SD3_OK, "%s", err.msg);
    CHECK(linear_backward(dxn, NULL, NULL, dkpre, NULL, &tk, Tx, C, C, &err) == SD3_OK, "%s", err.msg);
    CHECK(linear_backward(dxn, NULL, NULL, dv, NULL, &tv, Tx, C, C, &err) == SD3_OK, "%s", err.msg);
    CHECK(linear_backward(dcn, NULL, NULL, dqpre + Tx * C, NULL, &tqc, Tc, C, C, &err) == SD3_OK, "%s", err.msg);
    CHECK(linear_backward(dcn, NULL, NULL, dkpre + Tx * C, NULL, &tkc, Tc, C, C, &err) == SD3_OK, "%s", err.msg);
    CHECK(linear_backward(dcn, NULL, NULL, dv + Tx * C, NULL, &tvc, Tc, C, C, &err) == SD3_OK, "%s", err.msg);
    modulate_backward(dlnx, NULL, NULL, dxn, lnx, sc, Tx, C);
    modulate_backward(dlnc, dscc, dshc, dcn, lnc, scc, Tc, C);
    layernorm_backward(dx, dlnx, x, Tx, C, eps);
    layernorm_backward(dc, dlnc, cc, Tc, C, eps);

    ja_ctx c = {.Tx = Tx, .Tc = Tc, .C = C, .H = H, .D = D, .r = r, .s = s, .G = G, .x = to_d(x, Tx * C),
                .c = to_d(cc, Tc * C), .sh = to_d(sh, C), .sc = to_d(sc, C), .shc = to_d(shc, C), .scc = to_d(scc, C),
                .gate = to_d(gate, C), .Wq = to_d(Wq, C * C), .Wk = to_d(Wk, C * C), .Wv = to_d(Wv, C * C),
                .Wqc = to_d(Wqc, C * C), .Wkc = to_d(Wkc, C * C), .Wvc = to_d(Wvc, C * C), .Wo = to_d(Wo, C * C),
                .nq = to_d(nq, D), .nk = to_d(nk, D), .Aq = to_d(Aq, r * C), .Bq = to_d(Bq, C * r),
                .Ao = to_d(Ao, r * C), .Bo = to_d(Bo, C * r)};
    c.xn = malloc(sizeof(double) * Tx * C), c.cn = malloc(sizeof(double) * Tc * C);
    c.q = malloc(sizeof(double) * T * C), c.k = malloc(sizeof(double) * T * C), c.v = malloc(sizeof(double) * T * C);
    c.o = malloc(sizeof(double) * T * C), c.ao = malloc(sizeof(double) * Tx * C), c.y = malloc(sizeof(double) * Tx * C);
    ja_loss(&c);
    double e = 0;
    for (int i = 0; i < Tx * C; i++) e = fmax(e, fabs(y[i] - c.y[i]));
    CHECK(e < 1e-5, "joint chain forward: F32 vs double %g", e);
    fd_check("joint chain dx (image stream)", ja_loss, &c, c.x, Tx * C, dx);
    fd_check("joint chain dc (text stream)", ja_loss, &c, c.c, Tc * C, dc);
    fd_check("joint chain dgate", ja_loss, &c, c.gate, C, dgate);
    fd_check("joint chain dshift (text)", ja_loss, &c, c.shc, C, dshc);
    fd_check("joint chain dscale (text)", ja_loss, &c, c.scc, C, dscc);
    fd_check("joint chain dA (to_q LoRA)", ja_loss, &c, c.Aq, r * C, dAq);
    fd_check("joint chain dB (to_q LoRA)", ja_loss, &c, c.Bq, C * r, dBq);
    fd_check("joint chain dA (to_out LoRA)", ja_loss, &c, c.Ao, r * C, dAo);
    fd_check("joint chain dB (to_out LoRA)", ja_loss, &c, c.Bo, C * r, dBo);

    float *fl[] = {x, cc, G, sh, sc, shc, scc, gate, Wq, Wk, Wv, Wqc, Wkc, Wvc, Wo, nq, nk, Aq, Bq, Ao, Bo, lnx, lnc, xn,
                   cn, qpre, kpre, q, k, v, o, ao, hq, ho, y, dx, dc, dgate, dshc, dscc, dAq, dBq, dAo, dBo, dao, d_o,
                   dq, dk, dv, dqpre, dkpre, dxn, dcn, dlnx, dlnc};
    for (size_t i = 0; i < sizeof fl / sizeof fl[0]; i++) free(fl[i]);
    double *dl[] = {c.x, c.c, c.sh, c.sc, c.shc, c.scc, c.gate, c.Wq, c.Wk, c.Wv, c.Wqc, c.Wkc, c.Wvc, c.Wo, c.nq,
                    c.nk, c.Aq, c.Bq, c.Ao, c.Bo, c.xn, c.cn, c.q, c.k, c.v, c.o, c.ao, c.y};
    for (size_t i = 0; i < sizeof dl / sizeof dl[0]; i++) free(dl[i]);
}

/* ================================================================================================ */
/* Loss                                                                                             */
/* ================================================================================================ */

typedef struct loss_ctx {
    int B;
    int64_t n;
    double *raw;
    const float *noisy, *target, *sigma, *w;
} loss_ctx;

static double loss_d(void *p) {
    loss_ctx *c = p;
    double total = 0;
    for (int b = 0; b < c->B; b++) {
        double s = 0;
        for (int64_t i = 0; i < c->n; i++) {
            int64_t idx = b * c->n + i;
            double pred = c->sigma ? c->raw[idx] * -(double)c->sigma[b] + c->noisy[idx] : c->raw[idx];
            double d = pred - c->target[idx];
            s += (c->w ? c->w[b] : 1.0) * d * d;
        }
        total += s / c->n;
    }
    return total / c->B;
}

static void test_loss(void) {
    const int B = 3;
    const int64_t n = 7;
    printf("rf_loss_backward: B %d n %lld\n", B, (long long)n);
    float *raw = frand_buf(B * n, 2), *noisy = frand_buf(B * n, 1), *target = frand_buf(B * n, 1);
    float sigma[3] = {0.9f, 0.3f, 0.55f}, w[3] = {1.5f, 0.7f, 2.0f};
    for (int pre = 0; pre < 2; pre++) {
        float *d = zeros(B * n), *pred = zeros(B * n);
        loss_ctx c = {.B = B, .n = n, .raw = to_d(raw, B * n), .noisy = noisy, .target = target,
                      .sigma = pre ? sigma : NULL, .w = w};
        float L = rf_loss_backward(d, pred, raw, noisy, target, c.sigma, w, B, n);
        double Ld = loss_d(&c);
        CHECK(fabs(L - Ld) <= 1e-6 * fabs(Ld), "loss %.9g vs double %.9g", L, Ld);
        double pe = 0;
        for (int64_t i = 0; i < B * n; i++) {
            double pd = pre ? c.raw[i] * -(double)sigma[i / n] + noisy[i] : c.raw[i];
            pe = fmax(pe, fabs(pred[i] - pd));
        }
        CHECK(pe < 1e-6, "pred off by %g", pe);
        fd_check(pre ? "loss d_raw (precondition_outputs)" : "loss d_raw (no preconditioning)", loss_d, &c, c.raw,
                 B * n, d);
        free(d), free(pred), free(c.raw);
    }
    free(raw), free(noisy), free(target);
}

/* ================================================================================================ */

int main(void) {
    pool_set_threads(2);
    test_linear(DT_F32, 3, 7, 5, 0);
    test_linear(DT_BF16, 3, 7, 5, 0);
    test_linear(DT_F32, 9, 13, 11, 40);   /* slabs of a few columns / rows */
    test_lora();
    test_norms();
    test_attention(2, 2, 4, 5, 6, 0, 0, 0);
    test_attention(2, 2, 4, 5, 6, 0, 1, 1);
    test_attention(1, 2, 4, 6, 6, 1, 0, 1);
    test_attention(1, 2, 3, 70, 130, 0, 0, 0); /* crosses 64-row tiles both ways */
    test_ff_chain();
    test_joint_attention_chain();
    test_loss();
    printf("worst over all gradients: abs %.2e, rel %.2e (tolerance rel %.0e + abs %.0e)\n", worst_abs_all,
           worst_rel_all, TOL_REL, TOL_ABS);
    TEST_MAIN_END("test_grad");
}

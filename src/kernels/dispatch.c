/* dispatch.c — the public k_* entry points: pick the variant for this CPU (AVX-512, AVX2+FMA or portable
 * C, capped by k_set_isa_cap), the weight dtype and the precision mode, split the work over the thread
 * pool, or fall back to the scalar _ref twin when SD3_FORCE_REF=1 / cpu_force_ref(1). The fast variants
 * live in cpu/. */
#include <math.h>
#include <string.h>
#include "kernels/kernels.h"
#include "kernels/cpu/kcpu.h"
#include "kernels/kernels_q.h"

/* ================================================================================================ */
/* Variant selection                                                                                */
/* ================================================================================================ */

static int g_prec = 0, g_isa_cap = K_ISA_ANY;

/* Settings (see kernels.h): plain globals, set between calls from the main thread. */
int k_set_precision(int bf16) { int o = g_prec; g_prec = bf16 ? 1 : 0; return o; }
int k_get_precision(void) { return g_prec; }
int k_set_isa_cap(int level) { int o = g_isa_cap; g_isa_cap = level; return o; }

/* The fast-kernel table to use, or NULL for the scalar refs. */
static const kc_isa *pick(void) {
    if (cpu_ref_forced()) return NULL;
    const cpu_features *f = cpu_get();
    if (g_isa_cap >= K_ISA_AVX512 && f->avx512f && f->avx512bw && f->avx512vl && f->fma && f->f16c && kc_isa_avx512())
        return kc_isa_avx512();
    if (g_isa_cap >= K_ISA_AVX2 && f->avx2 && f->fma && f->f16c && kc_isa_avx2()) return kc_isa_avx2();
    return kc_isa_portable();
}

/* Whether the bf16 products run: the mode is on and the CPU and the table have the dot product. */
static int use_bf16(const kc_isa *isa) { return g_prec && isa && isa->ukr_bf16 && cpu_get()->avx512_bf16; }

/* What k_linear runs for weight dtype dt under the current settings. */
const char *k_linear_variant(dtype dt) {
    if (dt == DT_Q8 || dt == DT_Q4) return "k_linear_q (see k_linear_q_variant)";
    const kc_isa *isa = pick();
    if (!isa) return "ref";
    static char buf[4][48];
    int i = dt == DT_F16 ? 1 : dt == DT_BF16 ? 2 : 0;
    if (use_bf16(isa)) snprintf(buf[3], sizeof buf[3], "%s_bf16dot", isa->name), i = 3;
    else snprintf(buf[i], sizeof buf[i], "%s_f32fma%s", isa->name, dt == DT_F16 ? "(f16->f32 per tile)" : dt == DT_BF16 ? "(bf16->f32 per tile)" : "");
    return buf[i];
}
/* What k_attention and k_conv2d run under the current settings. */
const char *k_attention_variant(void) {
    const kc_isa *isa = pick();
    if (!isa) return "ref";
    if (use_bf16(isa)) return isa->attn_tile_bf16 ? "avx512_bf16dot" : "portable_bf16";
    return isa->attn_tile ? isa->name : "portable";
}
const char *k_conv2d_variant(void) { const kc_isa *isa = pick(); return !isa ? "ref" : isa->name; }

/* ================================================================================================ */
/* Matrix products, attention, convolution                                                          */
/* ================================================================================================ */

/* Ref fallback for linear: split output rows over the pool. */
typedef struct { float *y; const float *x; const tensor *W, *b; int M, N, K, chunk; } linear_job;

/* One pool task of the ref fallback: a chunk of output rows. */
static void linear_task(void *a, int t, int thread) {
    (void)thread;
    linear_job *j = a;
    int m0 = t * j->chunk, m1 = m0 + j->chunk < j->M ? m0 + j->chunk : j->M;
    if (m0 < m1) k_linear_ref(j->y + (int64_t)m0 * j->N, j->x + (int64_t)m0 * j->K, j->W, j->b, m1 - m0, j->N, j->K);
}

/* Public entry points: the fast table when there is one, else the ref (split over rows for linear). */
void k_linear(float *y, const float *x, const tensor *W, const tensor *b, int M, int N, int K) {
    if (W->dt == DT_Q8 || W->dt == DT_Q4) { k_linear_q(y, x, W, b, M, N, K); return; }  /* kernels_q.h */
    const kc_isa *isa = pick();
    if (isa) { kc_linear(isa, use_bf16(isa), 0, y, x, W, b, M, N, K); return; }
    int nt = pool_threads();
    int chunk = (M + nt - 1) / nt;
    if (chunk < 1) chunk = 1;
    linear_job j = {y, x, W, b, M, N, K, chunk};
    pool_run((M + chunk - 1) / chunk, linear_task, &j);
}

void k_matmul(float *C, const float *A, const float *B, int batch, int M, int N, int K, int transB) {
    const kc_isa *isa = pick();
    if (isa) kc_matmul(isa, use_bf16(isa), C, A, B, batch, M, N, K, transB);
    else k_matmul_ref(C, A, B, batch, M, N, K, transB);
}

void k_attention(float *o, const float *q, const float *k, const float *v, const attn_params *p) {
    const kc_isa *isa = pick();
    if (isa) kc_attention(isa, use_bf16(isa), o, q, k, v, p);
    else k_attention_ref(o, q, k, v, p);
}

void k_conv2d(float *y, const float *x, const tensor *w, const tensor *b, const conv2d_params *p) {
    const kc_isa *isa = pick();
    if (isa) kc_conv2d(isa, use_bf16(isa), y, x, w, b, p);
    else k_conv2d_ref(y, x, w, b, p);
}

/* ================================================================================================ */
/* Row-parallel ops: norms, softmax, activations, elementwise                                       */
/* ================================================================================================ */

/* Work below this many floats runs on the calling thread (a pool round trip costs a few microseconds). */
#define PAR_MIN 32768

/* Split [0, n) into about 4 chunks per thread (multiples of `align`) and run fn on each. */
typedef void (*range_fn)(void *ctx, size_t i0, size_t i1);
typedef struct { range_fn fn; void *ctx; size_t n, chunk; } range_job;

/* One pool task of par_range. */
static void range_task(void *a, int t, int thread) {
    (void)thread;
    range_job *j = a;
    size_t i0 = (size_t)t * j->chunk, i1 = i0 + j->chunk < j->n ? i0 + j->chunk : j->n;
    if (i0 < i1) j->fn(j->ctx, i0, i1);
}

/* Run fn over [0, n) items of `cost` floats each, in parallel when the total is large enough. */
static void par_range(size_t n, size_t cost, size_t align, range_fn fn, void *ctx) {
    if (n == 0) return;
    int nt = pool_threads();
    if (nt <= 1 || n * cost < PAR_MIN || n < 2) { fn(ctx, 0, n); return; }
    size_t chunk = (n + 4 * (size_t)nt - 1) / (4 * (size_t)nt);
    chunk = (chunk + align - 1) / align * align;
    range_job j = {fn, ctx, n, chunk};
    pool_run((int)((n + chunk - 1) / chunk), range_task, &j);
}

/* ---- softmax ---- */
typedef struct { float *x; int n; const kc_isa *isa; } softmax_ctx;

/* Softmax of rows [r0, r1): max, exp(x - max) with the vector exp, sum, divide (as the ref). */
static void softmax_rows(void *c, size_t r0, size_t r1) {
    softmax_ctx *s = c;
    for (size_t r = r0; r < r1; r++) {
        float *row = s->x + (int64_t)r * s->n, mx = -INFINITY, sum = 0.0f;
        if (!s->isa || !s->isa->act) { k_softmax_ref(row, 1, s->n); continue; }
        for (int i = 0; i < s->n; i++) if (row[i] > mx) mx = row[i];
        for (int i = 0; i < s->n; i++) row[i] -= mx;
        s->isa->act(KC_ACT_EXP, row, row, (size_t)s->n);
        for (int i = 0; i < s->n; i++) sum += row[i];
        for (int i = 0; i < s->n; i++) row[i] /= sum;
    }
}

/* Rows split over the pool. */
void k_softmax(float *x, int rows, int n) {
    const kc_isa *isa = pick();
    if (!isa) { k_softmax_ref(x, rows, n); return; }
    softmax_ctx c = {x, n, isa};
    par_range((size_t)rows, (size_t)n, 1, softmax_rows, &c);
}

/* ---- layernorm / rmsnorm: rows split over the pool; vector rows where the ISA has them ---- */
typedef struct { float *y; const float *x; const tensor *w, *b; const float *wf, *bf; int C; float eps; int rms; const kc_isa *isa; } norm_ctx;

/* LayerNorm or RMSNorm of rows [r0, r1). */
static void norm_rows(void *c, size_t r0, size_t r1) {
    norm_ctx *s = c;
    int64_t off = (int64_t)r0 * s->C;
    int n = (int)(r1 - r0);
    if (s->rms) {
        if (s->isa->rmsnorm) s->isa->rmsnorm(s->y + off, s->x + off, s->wf, n, s->C, s->eps);
        else k_rmsnorm_ref(s->y + off, s->x + off, s->w, n, s->C, s->eps);
    } else {
        if (s->isa->layernorm) s->isa->layernorm(s->y + off, s->x + off, s->wf, s->bf, n, s->C, s->eps);
        else k_layernorm_ref(s->y + off, s->x + off, s->w, s->b, n, s->C, s->eps);
    }
}

/* A per-channel parameter widened to F32 once per call (NULL stays NULL). */
static float *widen(const tensor *t, int n) {
    if (!t) return NULL;
    float *p = sd3_malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    SD3_ASSERT(p);
    tensor_to_f32(t, 0, n, p);
    return p;
}

/* Widen the affine parameters once, then split the rows over the pool. */
static void norm_run(float *y, const float *x, const tensor *w, const tensor *b, int rows, int C, float eps, int rms,
                     const kc_isa *isa) {
    norm_ctx c = {y, x, w, b, widen(w, C), widen(b, C), C, eps, rms, isa};
    par_range((size_t)rows, (size_t)C * 4, 1, norm_rows, &c);
    sd3_free((void *)c.wf);
    sd3_free((void *)c.bf);
}

/* Public norm entry points (the refs when forced). */
void k_layernorm(float *y, const float *x, const tensor *w, const tensor *b, int rows, int C, float eps) {
    const kc_isa *isa = pick();
    if (!isa) { k_layernorm_ref(y, x, w, b, rows, C, eps); return; }
    norm_run(y, x, w, b, rows, C, eps, 0, isa);
}

void k_rmsnorm(float *y, const float *x, const tensor *w, int rows, int C, float eps) {
    const kc_isa *isa = pick();
    if (!isa) { k_rmsnorm_ref(y, x, w, rows, C, eps); return; }
    norm_run(y, x, w, NULL, rows, C, eps, 1, isa);
}

/* ---- groupnorm: (image, group) pairs split over the pool ---- */
typedef struct { float *y; const float *x; const tensor *w, *b; const float *wf, *bf; int C, HW, G; float eps; const kc_isa *isa; } gn_ctx;

/* A view of channels [c0, c0 + n) of a per-channel tensor (NULL stays NULL). */
static const tensor *chan_view(const tensor *t, int c0, int n, tensor *view) {
    if (!t) return NULL;
    *view = *t;
    view->ndim = 1;
    view->shape[0] = n;
    view->owned = 0;
    view->data = (char *)t->data + (size_t)c0 * dtype_size(t->dt);
    return view;
}

/* GroupNorm of (image, group) items [i0, i1). */
static void gn_items(void *c, size_t i0, size_t i1) {
    gn_ctx *s = c;
    int cg = s->C / s->G;
    for (size_t it = i0; it < i1; it++) {
        int n = (int)(it / (size_t)s->G), g = (int)(it % (size_t)s->G);
        int64_t off = ((int64_t)n * s->C + (int64_t)g * cg) * s->HW;
        if (s->isa->groupnorm_group) {
            s->isa->groupnorm_group(s->y + off, s->x + off, s->wf ? s->wf + g * cg : NULL, s->bf ? s->bf + g * cg : NULL, cg, s->HW,
                                    s->eps);
        } else {
            tensor wv, bv;
            k_groupnorm_ref(s->y + off, s->x + off, chan_view(s->w, g * cg, cg, &wv), chan_view(s->b, g * cg, cg, &bv), 1, cg, s->HW, 1,
                            s->eps);
        }
    }
}

/* (image, group) pairs split over the pool. */
void k_groupnorm(float *y, const float *x, const tensor *w, const tensor *b, int N, int C, int HW, int G, float eps) {
    const kc_isa *isa = pick();
    if (!isa) { k_groupnorm_ref(y, x, w, b, N, C, HW, G, eps); return; }
    gn_ctx c = {y, x, w, b, widen(w, C), widen(b, C), C, HW, G, eps, isa};
    par_range((size_t)N * G, (size_t)(C / G) * HW * 4, 1, gn_items, &c);
    sd3_free((void *)c.wf);
    sd3_free((void *)c.bf);
}

/* ---- activations ---- */
typedef struct { int kind; float *y; const float *x; const kc_isa *isa; } act_ctx;

/* One activation over [i0, i1): the ISA's vector form, else the ref. */
static void act_range(void *c, size_t i0, size_t i1) {
    act_ctx *s = c;
    float *y = s->y + i0;
    const float *x = s->x + i0;
    size_t n = i1 - i0;
    if (s->isa && s->isa->act) { s->isa->act(s->kind, y, x, n); return; }
    switch (s->kind) {
    case KC_ACT_GELU_ERF: k_gelu_erf_ref(y, x, n); break;
    case KC_ACT_GELU_TANH: k_gelu_tanh_ref(y, x, n); break;
    case KC_ACT_QUICK_GELU: k_quick_gelu_ref(y, x, n); break;
    default: k_silu_ref(y, x, n); break;
    }
}

/* See kcpu.h: one activation over n floats on the calling thread. */
void kc_act_rows(const kc_isa *isa, int kind, float *y, const float *x, size_t n) {
    act_ctx c = {kind, y, (const float *)x, isa};
    act_range(&c, 0, n);
}

/* n linears on one input x (q, k and v of an attention): in the fast path one job whose GEMMs share the
 * packing (bf16: the conversion) of x; each y[i] is exactly what k_linear gives. Quantised weights or
 * the refs: one k_linear each. */
void k_linear_multi(int n, float *const y[], const float *x, const tensor *const W[], const tensor *const b[], int M, const int N[],
                    int K) {
    const kc_isa *isa = pick();
    int plain = isa && n >= 1 && n <= KC_MULTI_MAX;
    for (int i = 0; i < n; i++)
        if (W[i]->dt == DT_Q8 || W[i]->dt == DT_Q4) plain = 0;
    if (plain) { kc_linear_multi(isa, use_bf16(isa), n, y, x, W, b, M, N, K); return; }
    for (int i = 0; i < n; i++) k_linear(y[i], x, W[i], b ? b[i] : NULL, M, N[i], K);
}

/* Whether a hand-off can be packed: bf16 products on an ISA with the bf16 packer, plain float weights, M
 * past the streamed small-M path. */
static int handoff_packs(const kc_isa *isa, const tensor *W, int M) {
    return isa && use_bf16(isa) && isa->pack_rows_bf16 && M > 4 && W->dt != DT_Q8 && W->dt != DT_Q4;
}

void k_linear_gelu_tanh_handoff(k_handoff *h, float *buf, const float *x, const tensor *W, const tensor *b, const tensor *W_next, int M,
                                int N, int K) {
    const kc_isa *isa = pick();
    memset(h, 0, sizeof *h);
    h->M = M, h->N = N;
    /* packed when the products run in bf16 and the pairs fit the buffer (not for a handful of rows) */
    if (handoff_packs(isa, W, M) && handoff_packs(isa, W_next, M) && kc_pairs_words(isa, M, N) <= (size_t)M * N) {
        h->pairs = (uint32_t *)buf;
        kc_linear_to_pairs(isa, 1 + KC_ACT_GELU_TANH, h->pairs, x, W, b, M, N, K);
        return;
    }
    h->f32 = buf;
    k_linear_gelu_tanh(h->f32, x, W, b, M, N, K);
}

void k_linear_from_handoff(float *y, const k_handoff *h, const tensor *W_next, const tensor *b, int N2) {
    const kc_isa *isa = pick();
    if (h->pairs) {
        SD3_ASSERT(handoff_packs(isa, W_next, h->M));   /* packed pairs need the mode they were made in */
        kc_linear_from_pairs(isa, y, h->pairs, W_next, b, h->M, N2, h->N);
        return;
    }
    k_linear(y, h->f32, W_next, b, h->M, N2, h->N);
}

/* y = gelu_tanh(x W^T + b): the activation runs on each output tile as the GEMM finishes it (while it is
 * in cache) instead of as a second pass over y; the same values as k_linear then k_gelu_tanh. */
void k_linear_gelu_tanh(float *y, const float *x, const tensor *W, const tensor *b, int M, int N, int K) {
    const kc_isa *isa = pick();
    if (isa && W->dt != DT_Q8 && W->dt != DT_Q4) { kc_linear(isa, use_bf16(isa), 1 + KC_ACT_GELU_TANH, y, x, W, b, M, N, K); return; }
    k_linear(y, x, W, b, M, N, K);
    k_gelu_tanh(y, y, (size_t)M * N);
}

/* An activation split over the pool in 64-float-aligned chunks. */
static void act_run(int kind, float *y, const float *x, size_t n) {
    act_ctx c = {kind, y, x, pick()};
    par_range(n, 16, 64, act_range, &c);
}

/* Public activation entry points. */
void k_gelu_erf(float *y, const float *x, size_t n) { if (!pick()) k_gelu_erf_ref(y, x, n); else act_run(KC_ACT_GELU_ERF, y, x, n); }
void k_gelu_tanh(float *y, const float *x, size_t n) { if (!pick()) k_gelu_tanh_ref(y, x, n); else act_run(KC_ACT_GELU_TANH, y, x, n); }
void k_quick_gelu(float *y, const float *x, size_t n) { if (!pick()) k_quick_gelu_ref(y, x, n); else act_run(KC_ACT_QUICK_GELU, y, x, n); }
void k_silu(float *y, const float *x, size_t n) { if (!pick()) k_silu_ref(y, x, n); else act_run(KC_ACT_SILU, y, x, n); }

/* ---- upsample: (image·channel) planes split over the pool ---- */
typedef struct { float *y; const float *x; int H, W; } up_ctx;

/* Nearest 2x upsampling of planes [p0, p1): duplicate each value, then each row. */
static void up_planes(void *c, size_t p0, size_t p1) {
    up_ctx *s = c;
    for (size_t p = p0; p < p1; p++) {
        const float *x = s->x + (int64_t)p * s->H * s->W;
        float *y = s->y + (int64_t)p * 4 * s->H * s->W;
        for (int i = 0; i < s->H; i++) {
            float *r0 = y + (int64_t)(2 * i) * 2 * s->W;
            for (int j = 0; j < s->W; j++) r0[2 * j] = r0[2 * j + 1] = x[(int64_t)i * s->W + j];
            memcpy(r0 + 2 * s->W, r0, sizeof(float) * 2 * (size_t)s->W);
        }
    }
}

/* Planes split over the pool. */
void k_upsample_nearest2x(float *y, const float *x, int N, int C, int H, int W) {
    if (!pick()) { k_upsample_nearest2x_ref(y, x, N, C, H, W); return; }
    up_ctx c = {y, x, H, W};
    par_range((size_t)N * C, (size_t)H * W * 4, 1, up_planes, &c);
}

/* ---- modulate, gated_add: rows split over the pool ---- */
typedef struct { float *y; const float *x; const float *a, *b; int C; } rowop_ctx;

/* modulate / gated_add on rows [r0, r1) (the refs' loops, which the compiler vectorises). */
static void modulate_rows(void *c, size_t r0, size_t r1) {
    rowop_ctx *s = c;
    int64_t off = (int64_t)r0 * s->C;
    k_modulate_ref(s->y + off, s->x + off, s->a, s->b, (int)(r1 - r0), s->C);
}
static void gated_rows(void *c, size_t r0, size_t r1) {
    rowop_ctx *s = c;
    int64_t off = (int64_t)r0 * s->C;
    k_gated_add_ref(s->y + off, s->x + off, s->a, (int)(r1 - r0), s->C);
}

/* LayerNorm + modulate of rows [r0, r1), 16 rows at a time so the modulate reads what the norm just wrote
 * from cache. */
typedef struct { float *y; const float *x, *shift, *scale; int C; float eps; const kc_isa *isa; } lnmod_ctx;
static void lnmod_rows(void *c, size_t r0, size_t r1) {
    lnmod_ctx *s = c;
    for (size_t a = r0; a < r1; a += 16) {
        int n = (int)(r1 - a < 16 ? r1 - a : 16);
        int64_t off = (int64_t)a * s->C;
        if (s->isa->layernorm) s->isa->layernorm(s->y + off, s->x + off, NULL, NULL, n, s->C, s->eps);
        else k_layernorm_ref(s->y + off, s->x + off, NULL, NULL, n, s->C, s->eps);
        k_modulate_ref(s->y + off, s->y + off, s->shift, s->scale, n, s->C);
    }
}

void k_layernorm_modulate(float *y, const float *x, const float *shift, const float *scale, int rows, int C, float eps) {
    const kc_isa *isa = pick();
    if (!isa) { k_layernorm_modulate_ref(y, x, shift, scale, rows, C, eps); return; }
    lnmod_ctx c = {y, x, shift, scale, C, eps, isa};
    par_range((size_t)rows, (size_t)C * 8, 1, lnmod_rows, &c);
}

/* Rows split over the pool. */
void k_modulate(float *y, const float *x, const float *shift, const float *scale, int rows, int C) {
    if (!pick()) { k_modulate_ref(y, x, shift, scale, rows, C); return; }
    rowop_ctx c = {y, x, shift, scale, C};
    par_range((size_t)rows, (size_t)C, 1, modulate_rows, &c);
}
void k_gated_add(float *y, const float *x, const float *gate, int rows, int C) {
    if (!pick()) { k_gated_add_ref(y, x, gate, rows, C); return; }
    rowop_ctx c = {y, x, gate, NULL, C};
    par_range((size_t)rows, (size_t)C, 1, gated_rows, &c);
}

/* ---- plain elementwise (no _ref twins: these loops are their own definition) ---- */
typedef struct { int op; float *y; const float *a, *b; float s; } ew_ctx;

/* One elementwise op over [i0, i1). */
static void ew_range(void *c, size_t i0, size_t i1) {
    ew_ctx *e = c;
    float *y = e->y;
    const float *a = e->a, *b = e->b;
    switch (e->op) {
    case 0: for (size_t i = i0; i < i1; i++) y[i] = a[i] + b[i]; break;
    case 1: for (size_t i = i0; i < i1; i++) y[i] = a[i] * b[i]; break;
    case 2: for (size_t i = i0; i < i1; i++) y[i] = e->s * a[i]; break;
    default: for (size_t i = i0; i < i1; i++) y[i] += e->s * a[i]; break;
    }
}

/* Elementwise entry points, split over the pool above PAR_MIN floats. */
void k_add(float *y, const float *a, const float *b, size_t n) { ew_ctx c = {0, y, a, b, 0}; par_range(n, 1, 64, ew_range, &c); }
void k_mul(float *y, const float *a, const float *b, size_t n) { ew_ctx c = {1, y, a, b, 0}; par_range(n, 1, 64, ew_range, &c); }
void k_scale(float *y, const float *x, float s, size_t n) { ew_ctx c = {2, y, x, NULL, s}; par_range(n, 1, 64, ew_range, &c); }
void k_axpy(float *y, float a, const float *x, size_t n) { ew_ctx c = {3, y, x, NULL, a}; par_range(n, 1, 64, ew_range, &c); }

/* y[r, c] += b[c] with b widened once (C floats). */
void k_add_bias(float *y, const tensor *b, int rows, int C) {
    float stackb[1024], *bf = C <= 1024 ? stackb : sd3_malloc(sizeof(float) * (size_t)C);
    SD3_ASSERT(bf);
    tensor_to_f32(b, 0, C, bf);
    for (int r = 0; r < rows; r++) {
        float *yr = y + (int64_t)r * C;
        for (int c = 0; c < C; c++) yr[c] += bf[c];
    }
    if (bf != stackb) sd3_free(bf);
}

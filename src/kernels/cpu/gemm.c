/* gemm.c — the blocked, threaded GEMM driver shared by linear, matmul and conv2d, its packers, and the
 * portable (plain C) microkernel.
 *
 * C[M,N] = A[M,K] · B[N,K]^T. Goto/BLIS-style blocking: per task a block of NC columns of B and MC rows
 * of A; per KC slice of K the B block is packed (converted to F32 from its stored dtype, NR-column slivers,
 * [kc][NR] each: it stays in L2) and each MR-row sliver of A is packed ([kc][MR]: it stays in L1), then the
 * microkernel runs over the B slivers. Weights are therefore only ever converted one NC x KC tile at a time.
 * Tasks are (column block, row block) pairs spread over the pool; blocks shrink until there are at least
 * two tasks per thread, so even a short M keeps both cores busy. */
#include <math.h>
#include <pthread.h>
#include <string.h>
#include "kernels/cpu/kcpu.h"

#define KC_MAX 1024
static int KC_BLOCK = 512, NC_BLOCK = 256;  /* measured on Zen: KC 512 beats 256 by ~10% (fewer passes over C) */
/* Tuning hook for benchmarks: SD3_GEMM_KC / SD3_GEMM_NC override the block sizes (read once). */
static void gemm_tune(void) {
    static int done = 0;
    if (done) return;
    const char *e = getenv("SD3_GEMM_KC");
    if (e && atoi(e) >= 16 && atoi(e) <= KC_MAX) KC_BLOCK = atoi(e) & ~15; /* multiple of 16: aligned blocks, bf16 pairs never straddle */
    e = getenv("SD3_GEMM_NC");
    if (e && atoi(e) >= 16) NC_BLOCK = atoi(e);
    done = 1;
}

/* ---- packers ---------------------------------------------------------------------------------- */

static float g_f8_lut[2][256];
static pthread_once_t g_f8_once = PTHREAD_ONCE_INIT;

/* Fill the fp8 tables once (256 entries per format, from the exact scalar conversions in core). */
static void f8_lut_init(void) {
    for (int i = 0; i < 256; i++) {
        g_f8_lut[0][i] = fp8e4m3_to_f32((uint8_t)i);
        g_f8_lut[1][i] = fp8e5m2_to_f32((uint8_t)i);
    }
}

/* See kcpu.h. */
const float *kc_f8_lut(dtype dt) {
    if (dt != DT_F8_E4M3 && dt != DT_F8_E5M2) return NULL;
    pthread_once(&g_f8_once, f8_lut_init);
    return g_f8_lut[dt == DT_F8_E4M3 ? 0 : 1];
}

/* Widen n elements of t from off to F32, portable (fp8 through a 256-entry table). */
static void cvt_row_portable(const tensor *t, int64_t off, int n, float *dst) {
    switch (t->dt) {
    case DT_F32: memcpy(dst, (const float *)t->data + off, sizeof(float) * (size_t)n); break;
    case DT_F16: fp16_to_f32_row((const uint16_t *)t->data + off, dst, (size_t)n); break;
    case DT_BF16: bf16_to_f32_row((const uint16_t *)t->data + off, dst, (size_t)n); break;
    case DT_F8_E4M3:
    case DT_F8_E5M2: {
        const float *lut = kc_f8_lut(t->dt);
        const uint8_t *src = (const uint8_t *)t->data + off;
        for (int i = 0; i < n; i++) dst[i] = lut[src[i]];
        break;
    }
    default: tensor_to_f32(t, off, n, dst); break;
    }
}

/* Pack rows idx0..idx0+cnt-1, columns k0..k0+kc-1 of a row-major [rows, K] matrix, transposed into
 * dst[k*R + i]. Rows are widened to F32 a KC-long piece at a time. */
void kc_pack_rows(const void *vctx, const kc_isa *isa, int idx0, int cnt, int k0, int kc, int R, float *dst) {
    const kc_rows *c = vctx;
    if (isa->pack_rows && isa->pack_rows(vctx, idx0, cnt, k0, kc, R, dst)) return;
    float tmp[KC_MAX];
    for (int i = 0; i < cnt; i++) {
        const float *src;
        if (c->f32) src = c->f32 + (int64_t)(idx0 + i) * c->ld + k0;
        else if (c->t->dt == DT_F32) src = (const float *)c->t->data + (int64_t)(idx0 + i) * c->ld + k0;
        else { isa->cvt_row(c->t, (int64_t)(idx0 + i) * c->ld + k0, kc, tmp); src = tmp; }
        for (int k = 0; k < kc; k++) dst[(int64_t)k * R + i] = src[k];
    }
    for (int i = cnt; i < R; i++)
        for (int k = 0; k < kc; k++) dst[(int64_t)k * R + i] = 0.0f;
}

/* Pack columns idx0..idx0+cnt-1 of a row-major [K, cols] F32 matrix: dst[k*R + j] = p[(k0+k)*ld + idx0+j]. */
void kc_pack_cols(const void *vctx, const kc_isa *isa, int idx0, int cnt, int k0, int kc, int R, float *dst) {
    (void)isa;
    const kc_cols *c = vctx;
    for (int k = 0; k < kc; k++) {
        const float *src = c->p + (int64_t)(k0 + k) * c->ld + idx0;
        float *d = dst + (int64_t)k * R;
        memcpy(d, src, sizeof(float) * (size_t)cnt);
        for (int j = cnt; j < R; j++) d[j] = 0.0f;
    }
}

/* ---- portable microkernel (4 x 16; the compiler may vectorise the j loops) --------------------- */

#define P_MR 4
#define P_NR 16

/* See kc_ukr_fn. */
static void ukr_portable(int kc, const float *Ap, const float *Bp, float *C, int64_t ldc, int mr, int nr, int accum,
                         const float *bias_n, const float *bias_m) {
    float acc[P_MR][P_NR];
    memset(acc, 0, sizeof acc);
    for (int k = 0; k < kc; k++) {
        const float *a = Ap + k * P_MR, *b = Bp + k * P_NR;
        for (int i = 0; i < P_MR; i++)
            for (int j = 0; j < P_NR; j++) acc[i][j] += a[i] * b[j];
    }
    for (int i = 0; i < mr; i++) {
        float *c = C + i * ldc;
        if (accum)
            for (int j = 0; j < nr; j++) c[j] += acc[i][j];
        else
            for (int j = 0; j < nr; j++)
                c[j] = acc[i][j] + (bias_n ? bias_n[j] : 0.0f) + (bias_m ? bias_m[i] : 0.0f);
    }
}

/* Portable small-M linear: plain dot products, W widened a piece at a time. */
static void gemv_portable(float *y, const float *x, const tensor *W, const float *bias, int M, int N, int K, int n0, int n1) {
    float tmp[KC_MAX];
    for (int n = n0; n < n1; n++) {
        float acc[4] = {0, 0, 0, 0};
        for (int k0 = 0; k0 < K; k0 += KC_BLOCK) {
            int kc = K - k0 < KC_BLOCK ? K - k0 : KC_BLOCK;
            cvt_row_portable(W, (int64_t)n * K + k0, kc, tmp);
            for (int m = 0; m < M; m++) {
                const float *xm = x + (int64_t)m * K + k0;
                float s = 0.0f;
                for (int k = 0; k < kc; k++) s += xm[k] * tmp[k];
                acc[m] += s;
            }
        }
        for (int m = 0; m < M; m++) y[(int64_t)m * N + n] = acc[m] + (bias ? bias[n] : 0.0f);
    }
}

static const kc_isa g_portable = {
    .name = "portable", .MR = P_MR, .NR = P_NR, .ukr = ukr_portable, .ukr_bf16 = NULL, .cvt_row = cvt_row_portable,
    .gemv = gemv_portable, .attn_tile = NULL, .act = NULL,
};
/* The portable table (always available). */
const kc_isa *kc_isa_portable(void) { return &g_portable; }

/* ---- the driver -------------------------------------------------------------------------------- */

typedef struct gemm_job {
    const kc_isa *isa;
    const kc_gemm *g;             /* gs[0]: the A, M and K all of them share */
    const kc_gemm *gs;
    int ng;
    int NC, MC, n_mblk, KCb;
    int n_nblk[KC_MULTI_MAX];     /* column blocks of each GEMM */
    int task0[KC_MULTI_MAX + 1];  /* first task of each GEMM */
    float *scratch;               /* per thread: B block then A sliver (F32), then bf16 copies */
    size_t scratch_per_thread;    /* floats */
    uint32_t *Aall;               /* bf16 mode: all of A as bf16 pairs (owned unless a_pairs) */
    size_t cblock_off;            /* out_pairs: floats into each thread's scratch where its C block starts */
    size_t a_words;               /* words per MR-row sliver of Aall */
} gemm_job;

/* Convert a packed F32 sliver [kc][R] into bf16 pairs [ceil(kc/2)][R] (round to nearest even; an odd
 * last k is paired with zero). */
static void to_bf16_pairs(const kc_isa *isa, const float *src, int kc, int R, uint32_t *dst) {
    if (isa->to_bf16_pairs && isa->to_bf16_pairs(src, kc, R, dst)) return;
    for (int t = 0; t < (kc + 1) / 2; t++)
        for (int i = 0; i < R; i++) {
            uint32_t lo = f32_to_bf16(src[(int64_t)2 * t * R + i]);
            uint32_t hi = 2 * t + 1 < kc ? f32_to_bf16(src[(int64_t)(2 * t + 1) * R + i]) : 0;
            dst[(int64_t)t * R + i] = lo | hi << 16;
        }
}

/* See kcpu.h: the scalar twin of the ISAs' pack_rows_bf16 (portable packer, then scalar rounding). */
void kc_pack_rows_bf16_ref(const void *ctx, int idx0, int cnt, int k0, int kc, int R, uint32_t *dst) {
    float *tmp = sd3_malloc(sizeof(float) * (size_t)(kc > 0 ? kc : 1) * (size_t)R);
    SD3_ASSERT(tmp);
    kc_pack_rows(ctx, kc_isa_portable(), idx0, cnt, k0, kc, R, tmp);
    to_bf16_pairs(kc_isa_portable(), tmp, kc, R, dst);
    sd3_free(tmp);
}

/* Pack rows of a kc_pack_rows source straight into bf16 pairs when the ISA can (returns 1), else 0. */
static int pack_bf16_direct(const kc_isa *isa, kc_pack_fn pack, const void *ctx, int idx0, int cnt, int k0, int kc, int R,
                            uint32_t *dst) {
    return pack == kc_pack_rows && isa->pack_rows_bf16 && isa->pack_rows_bf16(ctx, idx0, cnt, k0, kc, R, dst);
}

/* bf16 mode: every MR-row sliver of A converted to bf16 pairs once per GEMM (activations, not weights),
 * chunk k0 of sliver s at Aall + s * a_words + (k0 / 2) * MR. One task per sliver. */
static void prepack_a_task(void *arg, int s, int thread) {
    gemm_job *j = arg;
    const kc_gemm *g = j->g;
    int MR = j->isa->MR, m = s * MR, mr = g->M - m < MR ? g->M - m : MR;
    float *tmp = j->scratch + j->scratch_per_thread * (size_t)thread + (size_t)j->NC * j->KCb;
    for (int k0 = 0; k0 < g->K; k0 += j->KCb) {
        int kc = g->K - k0 < j->KCb ? g->K - k0 : j->KCb;
        uint32_t *dst = j->Aall + (size_t)s * j->a_words + (size_t)(k0 / 2) * MR;
        if (pack_bf16_direct(j->isa, g->pack_a, g->actx, m, mr, k0, kc, MR, dst)) continue;
        g->pack_a(g->actx, j->isa, m, mr, k0, kc, MR, tmp);
        to_bf16_pairs(j->isa, tmp, kc, MR, dst);
    }
}

/* The epilogue activation on the finished mr x nr tile at C (row stride ldc). */
static void tile_act(const kc_isa *isa, int act, float *C, int64_t ldc, int mr, int nr) {
    for (int i = 0; i < mr; i++) kc_act_rows(isa, act - 1, C + i * ldc, C + i * ldc, (size_t)nr);
}

/* out_pairs: the finished mr x nr tile at C (row stride ldc; rows m.., columns n.., m a multiple of MR, n
 * even) into the A-sliver layout, through the packer the consuming GEMM would run on F32 rows (same bits). */
static void tile_pairs(const struct gemm_job *j, const kc_gemm *g, const float *C, int64_t ldc, int m, int mr, int n, int nr) {
    const kc_isa *isa = j->isa;
    int MR = isa->MR;
    size_t words = (size_t)(g->N + 1) / 2 * MR;
    SD3_ASSERT(m % MR == 0 && n % 2 == 0);
    for (int r0 = 0; r0 < mr; r0 += MR) {
        int rr = mr - r0 < MR ? mr - r0 : MR;
        kc_rows src = {.t = NULL, .f32 = C + (int64_t)r0 * ldc, .ld = ldc};
        uint32_t *dst = g->out_pairs + (size_t)((m + r0) / MR) * words + (size_t)(n / 2) * MR;
        int ok = isa->pack_rows_bf16(&src, 0, rr, 0, nr, MR, dst);
        SD3_ASSERT(ok);
    }
}

/* One task: column block nb x row block mb of one of the GEMMs, all of K. */
static void gemm_task(void *arg, int task, int thread) {
    gemm_job *j = arg;
    int gi = 0;
    while (task >= j->task0[gi + 1]) gi++;
    const kc_gemm *g = j->gs + gi;
    const kc_isa *isa = j->isa;
    int MR = isa->MR, NR = isa->NR;
    int local = task - j->task0[gi], nb = local % j->n_nblk[gi], mb = local / j->n_nblk[gi];
    int n0 = nb * j->NC, n1 = n0 + j->NC < g->N ? n0 + j->NC : g->N;
    int m0 = mb * j->MC, m1 = m0 + j->MC < g->M ? m0 + j->MC : g->M;
    float *Bp = j->scratch + j->scratch_per_thread * (size_t)thread;
    float *Ap = Bp + (size_t)j->NC * j->KCb;
    uint32_t *Bh = (uint32_t *)(Ap + (size_t)MR * j->KCb);
    /* the F32 output: C itself, or (out_pairs) this thread's MC x NC block */
    float *Cbase = g->C;
    int64_t ldc = g->ldc;
    if (g->out_pairs) {
        ldc = j->NC;
        Cbase = j->scratch + j->scratch_per_thread * (size_t)thread + j->cblock_off - ((int64_t)m0 * ldc + n0);
    }
    const uint32_t *Ah = NULL;
    int bf16 = g->bf16 && isa->ukr_bf16;
    int direct = !bf16 && isa->ukr_direct && g->pack_a == kc_pack_rows && ((const kc_rows *)g->actx)->f32;

    if (g->K == 0) { /* no products: C = bias */
        for (int m = m0; m < m1; m++)
            for (int n = n0; n < n1; n++)
                Cbase[(int64_t)m * ldc + n] = (g->bias_n ? g->bias_n[n] : 0.0f) + (g->bias_m ? g->bias_m[m] : 0.0f);
        if (g->epilogue_act) tile_act(isa, g->epilogue_act, Cbase + (int64_t)m0 * ldc + n0, ldc, m1 - m0, n1 - n0);
        if (g->out_pairs) tile_pairs(j, g, Cbase + (int64_t)m0 * ldc + n0, ldc, m0, m1 - m0, n0, n1 - n0);
        return;
    }
    for (int k0 = 0; k0 < g->K; k0 += j->KCb) {
        int kc = g->K - k0 < j->KCb ? g->K - k0 : j->KCb, last = k0 + kc >= g->K;
        int nsl = (n1 - n0 + NR - 1) / NR;
        for (int s = 0; s < nsl; s++) {
            int ns = n0 + s * NR, nr = n1 - ns < NR ? n1 - ns : NR;
            float *dst = Bp + (size_t)s * NR * kc;
            uint32_t *dsth = Bh + (size_t)s * NR * ((kc + 1) / 2);
            if (bf16 && pack_bf16_direct(isa, g->pack_b, g->bctx, ns, nr, k0, kc, NR, dsth)) continue;
            g->pack_b(g->bctx, isa, ns, nr, k0, kc, NR, dst);
            if (bf16) to_bf16_pairs(isa, dst, kc, NR, dsth);
        }
        for (int m = m0; m < m1; m += MR) {
            int mr = m1 - m < MR ? m1 - m : MR;
            if (direct && mr == MR) { /* F32 rows: the microkernel reads A in place */
                const kc_rows *ar = g->actx;
                const float *A = ar->f32 + (int64_t)m * ar->ld + k0;
                for (int s = 0; s < nsl; s++) {
                    int ns = n0 + s * NR, nr = n1 - ns < NR ? n1 - ns : NR;
                    isa->ukr_direct(kc, A, ar->ld, Bp + (size_t)s * NR * kc, Cbase + (int64_t)m * ldc + ns, ldc, nr, k0 > 0,
                                    g->bias_n ? g->bias_n + ns : NULL, g->bias_m ? g->bias_m + m : NULL);
                    if (last && g->epilogue_act) tile_act(isa, g->epilogue_act, Cbase + (int64_t)m * ldc + ns, ldc, MR, nr);
                }
                continue;
            }
            if (bf16) Ah = j->Aall + (size_t)(m / MR) * j->a_words + (size_t)(k0 / 2) * MR;
            else g->pack_a(g->actx, isa, m, mr, k0, kc, MR, Ap);
            for (int s = 0; s < nsl; s++) {
                int ns = n0 + s * NR, nr = n1 - ns < NR ? n1 - ns : NR;
                float *C = Cbase + (int64_t)m * ldc + ns;
                const float *bn = g->bias_n ? g->bias_n + ns : NULL, *bm = g->bias_m ? g->bias_m + m : NULL;
                if (bf16)
                    isa->ukr_bf16((kc + 1) / 2, Ah, Bh + (size_t)s * NR * ((kc + 1) / 2), C, ldc, mr, nr, k0 > 0, bn, bm);
                else
                    isa->ukr(kc, Ap, Bp + (size_t)s * NR * kc, C, ldc, mr, nr, k0 > 0, bn, bm);
                if (last && g->epilogue_act) tile_act(isa, g->epilogue_act, C, ldc, mr, nr);
                if (last && g->out_pairs) tile_pairs(j, g, C, ldc, m, mr, ns, nr);
            }
        }
    }
}

/* Column blocks of all the GEMMs for a block width NC. */
static int total_nblk(const kc_gemm *gs, int ng, int NC) {
    int t = 0;
    for (int i = 0; i < ng; i++) t += (gs[i].N + NC - 1) / NC;
    return t;
}

/* See kcpu.h: choose the block sizes (at least two tasks per thread over all the GEMMs), allocate
 * per-thread packing scratch, convert the shared A once in the bf16 mode, and run the tasks (every GEMM's
 * column blocks x row blocks) over the pool. */
void kc_gemm_run_multi(const kc_isa *isa, const kc_gemm *gs, int ng) {
    SD3_ASSERT(ng >= 1 && ng <= KC_MULTI_MAX);
    const kc_gemm *g = gs;
    int maxN = 0;
    for (int i = 0; i < ng; i++) {
        SD3_ASSERT(gs[i].M == g->M && gs[i].K == g->K && gs[i].pack_a == g->pack_a && gs[i].actx == g->actx && gs[i].bf16 == g->bf16);
        if (gs[i].N > maxN) maxN = gs[i].N;
    }
    if (g->M <= 0 || maxN <= 0) return;
    gemm_tune();
    int nt = pool_threads();
    int MR = isa->MR, NR = isa->NR;
    int KCb = (g->K + 15) / 16 * 16;             /* a multiple of 16 (keeps every packed block 64-byte aligned) */
    if (KCb > KC_BLOCK) KCb = KC_BLOCK;          /* and no longer than K needs */
    if (KCb < 16) KCb = 16;
    gemm_job j = {.isa = isa, .g = g, .gs = gs, .ng = ng, .KCb = KCb};
    /* column blocks: NC_BLOCK, shrunk (in NR steps) until there are >= 2 tasks per thread */
    int NC = (NC_BLOCK + NR - 1) / NR * NR;   /* whole slivers: the B block holds NC/NR of them */
    if (NC > (maxN + NR - 1) / NR * NR) NC = (maxN + NR - 1) / NR * NR;
    while (NC > NR && total_nblk(gs, ng, NC) < 2 * nt) NC -= NR;
    j.NC = NC;
    int nblk = total_nblk(gs, ng, NC);
    /* row blocks: all of M unless more tasks are needed */
    int want_m = (2 * nt + nblk - 1) / nblk;
    int MC = (g->M + want_m - 1) / want_m;
    MC = (MC + MR - 1) / MR * MR;
    if (MC < MR) MC = MR;
    j.MC = MC;
    j.n_mblk = (g->M + MC - 1) / MC;
    j.task0[0] = 0;
    for (int i = 0; i < ng; i++) {
        j.n_nblk[i] = gs[i].N > 0 ? (gs[i].N + NC - 1) / NC : 0;
        j.task0[i + 1] = j.task0[i] + j.n_nblk[i] * j.n_mblk;
    }
    int ntask = j.task0[ng];
    int nthr = nt < ntask ? nt : ntask;
    /* scratch per thread: B block + A sliver in F32, the same again as bf16 pairs (half the words) */
    size_t per = (size_t)NC * j.KCb + (size_t)MR * j.KCb;
    per += per / 2 + 64;
    per = (per + 15) / 16 * 16;
    int any_out_pairs = 0;
    for (int i = 0; i < ng; i++) any_out_pairs |= gs[i].out_pairs != NULL;
    if (any_out_pairs) { /* and the task's F32 block (MC x NC) */
        SD3_ASSERT(g->bf16 && isa->ukr_bf16 && isa->pack_rows_bf16);
        j.cblock_off = per;
        per += (size_t)MC * NC;
        per = (per + 15) / 16 * 16;
    }
    j.scratch_per_thread = per;
    j.scratch = sd3_malloc(sizeof(float) * per * (size_t)(nthr < 1 ? 1 : nt));
    SD3_ASSERT(j.scratch);
    if (g->a_pairs) {   /* A handed over already as bf16 pairs */
        SD3_ASSERT(g->bf16 && isa->ukr_bf16);
        j.a_words = (size_t)(g->K + 1) / 2 * MR;
        j.Aall = (uint32_t *)g->a_pairs;
    } else if (g->bf16 && isa->ukr_bf16 && g->K > 0) {
        int nsl = (g->M + MR - 1) / MR;
        j.a_words = (size_t)(g->K + 1) / 2 * MR;
        j.Aall = sd3_malloc(sizeof(uint32_t) * j.a_words * (size_t)nsl);
        SD3_ASSERT(j.Aall);
        pool_run(nsl, prepack_a_task, &j);
    }
    pool_run(ntask, gemm_task, &j);
    if (!g->a_pairs) sd3_free(j.Aall);
    sd3_free(j.scratch);
}

/* See kcpu.h: one GEMM. */
void kc_gemm_run(const kc_isa *isa, const kc_gemm *g) { kc_gemm_run_multi(isa, g, 1); }

/* ---- front ends -------------------------------------------------------------------------------- */

/* Bias (any dtype) widened to F32 once per call (N floats, not a weight matrix). */
static float *bias_f32(const kc_isa *isa, const tensor *b, int n) {
    if (!b) return NULL;
    float *p = sd3_malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    SD3_ASSERT(p);
    isa->cvt_row(b, 0, n, p);
    return p;
}

typedef struct gemv_job { const kc_isa *isa; float *y; const float *x; const tensor *W; const float *bias; int M, N, K, chunk; } gemv_job;

/* One pool task of the small-M linear: a range of output columns. */
static void gemv_task(void *arg, int t, int thread) {
    (void)thread;
    gemv_job *j = arg;
    int n0 = t * j->chunk, n1 = n0 + j->chunk < j->N ? n0 + j->chunk : j->N;
    if (n0 < n1) j->isa->gemv(j->y, j->x, j->W, j->bias, j->M, j->N, j->K, n0, n1);
}

/* Linear y = x W^T + b: M <= 4 streams W once through the ISA's gemv (memory-bound: adaLN, pooled
 * vectors), larger M runs the blocked GEMM with x read in place and W packed per tile. */
void kc_linear(const kc_isa *isa, int bf16, int act, float *y, const float *x, const tensor *W, const tensor *b, int M, int N, int K) {
    if (M <= 0 || N <= 0) return;
    float *bias = bias_f32(isa, b, N);
    if (M <= 4) { /* memory-bound: stream W once, split N over the pool */
        int nt = pool_threads(), ntask = 8 * nt;
        int chunk = (N + ntask - 1) / ntask;
        if (chunk < 16) chunk = 16;
        gemv_job j = {isa, y, x, W, bias, M, N, K, chunk};
        pool_run((N + chunk - 1) / chunk, gemv_task, &j);
        if (act) kc_act_rows(isa, act - 1, y, y, (size_t)M * N);
    } else {
        kc_rows a = {.t = NULL, .f32 = x, .ld = K}, w = {.t = W, .f32 = NULL, .ld = K};
        kc_gemm g = {.M = M, .N = N, .K = K, .pack_a = kc_pack_rows, .actx = &a, .pack_b = kc_pack_rows, .bctx = &w,
                     .C = y, .ldc = N, .bias_n = bias, .bias_m = NULL, .bf16 = bf16, .epilogue_act = act};
        kc_gemm_run(isa, &g);
    }
    sd3_free(bias);
}

/* See kcpu.h. */
size_t kc_pairs_words(const kc_isa *isa, int M, int K) { return (size_t)(M + isa->MR - 1) / isa->MR * (size_t)((K + 1) / 2) * isa->MR; }

/* See kcpu.h. Rows past M in the last sliver are zeroed (the next product's microkernel reads them). */
void kc_linear_to_pairs(const kc_isa *isa, int act, uint32_t *pairs, const float *x, const tensor *W, const tensor *b, int M, int N,
                        int K) {
    SD3_ASSERT(M > 4 && N > 0 && isa->ukr_bf16 && isa->pack_rows_bf16);
    float *bias = bias_f32(isa, b, N);
    kc_rows a = {.t = NULL, .f32 = x, .ld = K}, w = {.t = W, .f32 = NULL, .ld = K};
    kc_gemm g = {.M = M, .N = N, .K = K, .pack_a = kc_pack_rows, .actx = &a, .pack_b = kc_pack_rows, .bctx = &w,
                 .C = NULL, .ldc = 0, .bias_n = bias, .bf16 = 1, .epilogue_act = act, .out_pairs = pairs};
    kc_gemm_run(isa, &g);
    sd3_free(bias);
}

/* See kcpu.h. */
void kc_linear_from_pairs(const kc_isa *isa, float *y, const uint32_t *pairs, const tensor *W, const tensor *b, int M, int N, int K) {
    SD3_ASSERT(M > 4 && isa->ukr_bf16);
    float *bias = bias_f32(isa, b, N);
    kc_rows w = {.t = W, .f32 = NULL, .ld = K};
    kc_gemm g = {.M = M, .N = N, .K = K, .pack_a = kc_pack_rows, .actx = NULL, .pack_b = kc_pack_rows, .bctx = &w,
                 .C = y, .ldc = N, .bias_n = bias, .bf16 = 1, .a_pairs = pairs};
    kc_gemm_run(isa, &g);
    sd3_free(bias);
}

/* See kcpu.h: n linears on one input; the blocked GEMMs share A's packing (bf16: its conversion). */
void kc_linear_multi(const kc_isa *isa, int bf16, int n, float *const *y, const float *x, const tensor *const *W,
                     const tensor *const *b, int M, const int *N, int K) {
    SD3_ASSERT(n >= 1 && n <= KC_MULTI_MAX);
    if (M <= 4) { /* memory-bound small M: nothing to share */
        for (int i = 0; i < n; i++) kc_linear(isa, bf16, 0, y[i], x, W[i], b ? b[i] : NULL, M, N[i], K);
        return;
    }
    kc_rows a = {.t = NULL, .f32 = x, .ld = K}, w[KC_MULTI_MAX];
    kc_gemm gs[KC_MULTI_MAX];
    float *bias[KC_MULTI_MAX];
    for (int i = 0; i < n; i++) {
        bias[i] = bias_f32(isa, b ? b[i] : NULL, N[i]);
        w[i] = (kc_rows){.t = W[i], .f32 = NULL, .ld = K};
        gs[i] = (kc_gemm){.M = M, .N = N[i], .K = K, .pack_a = kc_pack_rows, .actx = &a, .pack_b = kc_pack_rows, .bctx = &w[i],
                          .C = y[i], .ldc = N[i], .bias_n = bias[i], .bias_m = NULL, .bf16 = bf16};
    }
    kc_gemm_run_multi(isa, gs, n);
    for (int i = 0; i < n; i++) sd3_free(bias[i]);
}

/* Batched F32 matmul: one blocked GEMM per batch item (B packed by rows when transB, else by columns). */
typedef struct matmul_job { const kc_isa *isa; int bf16; float *C; const float *A, *B; int M, N, K, transB; } matmul_job;

static void matmul_one(const matmul_job *j, int bi);

/* One pool task: one batch item, its GEMM run serially on this thread (nested pool_run). */
static void matmul_task(void *arg, int bi, int thread) {
    (void)thread;
    matmul_one(arg, bi);
}

/* Batched matmul: items split over the pool when they are many and small, else one threaded GEMM each. */
void kc_matmul(const kc_isa *isa, int bf16, float *C, const float *A, const float *B, int batch, int M, int N, int K, int transB) {
    matmul_job j = {isa, bf16, C, A, B, M, N, K, transB};
    /* many small items (attention-sized products): one item per task; else each GEMM splits itself */
    if (batch >= 2 * pool_threads() && (double)M * N * K < 4e6) {
        pool_run(batch, matmul_task, &j);
        return;
    }
    for (int bi = 0; bi < batch; bi++) matmul_one(&j, bi);
}

/* The GEMM of batch item bi. */
static void matmul_one(const matmul_job *j, int bi) {
    const kc_isa *isa = j->isa;
    int M = j->M, N = j->N, K = j->K, transB = j->transB, bf16 = j->bf16;
    const float *A = j->A, *B = j->B;
    float *C = j->C;
    {
        const float *a = A + (int64_t)bi * M * K, *bb = B + (int64_t)bi * K * N;
        kc_rows ar = {.f32 = a, .ld = K}, br = {.f32 = bb, .ld = K};
        kc_cols bc = {.p = bb, .ld = N};
        kc_gemm g = {.M = M, .N = N, .K = K, .pack_a = kc_pack_rows, .actx = &ar,
                     .pack_b = transB ? kc_pack_rows : kc_pack_cols, .bctx = transB ? (const void *)&br : (const void *)&bc,
                     .C = C + (int64_t)bi * M * N, .ldc = N, .bf16 = bf16};
        kc_gemm_run(isa, &g);
    }
}

/* ---- conv2d as an implicit GEMM: M = Cout (weights), N = output pixels, K = Cin*kh*kw ---------- */

typedef struct conv_b { const float *x; const conv2d_params *p; int Ho, Wo, up; } conv_b;

/* d[t] = xr[(iw + t) / 2] for t < run (iw >= 0): one row segment of a 2x nearest-upsampled image, each
 * source value stored twice. */
static void up2_row(float *d, const float *xr, int iw, int run) {
    int t = 0;
    if (iw & 1) d[t++] = xr[iw >> 1];
    const float *src = xr + ((iw + t) >> 1);
    float *dd = d + t;
    int pairs = (run - t) / 2;
    for (int s = 0; s < pairs; s++) {   /* vectorisable: interleave src with itself */
        dd[2 * s] = src[s];
        dd[2 * s + 1] = src[s];
    }
    t += 2 * pairs;
    if (t < run) d[t] = src[pairs];
}

/* Pack output pixels idx0.. (cnt of them) x reduction indices k0..: dst[k*R + j] = the input value under
 * tap (ci, i, jj) of pixel idx0 + j, zero in the padding. Runs of pixels along an output row are filled
 * row segment by row segment (contiguous for stride 1). With up > 1 the taps index the virtually
 * upsampled image: pixel (ih, iw) reads x[ih / up, iw / up] (nothing upsampled is materialised). */
static void pack_conv_b(const void *vctx, const kc_isa *isa, int idx0, int cnt, int k0, int kc, int R, float *dst) {
    (void)isa;
    const conv_b *c = vctx;
    const conv2d_params *p = c->p;
    int khw = p->kh * p->kw, u = c->up, Hu = p->H * u, Wu = p->W * u;
    for (int k = 0; k < kc; k++) {
        int kk = k0 + k, ci = kk / khw, r = kk % khw, ki = r / p->kw, kj = r % p->kw;
        const float *xc = c->x + (int64_t)ci * p->H * p->W;
        float *d = dst + (int64_t)k * R;
        int j = 0;
        while (j < cnt) {
            int pix = idx0 + j, oh = pix / c->Wo, ow = pix % c->Wo;
            int run = c->Wo - ow;
            if (run > cnt - j) run = cnt - j;
            int ih = oh * p->stride + ki - p->pad_t;
            if (ih < 0 || ih >= Hu) {
                for (int t = 0; t < run; t++) d[j + t] = 0.0f;
            } else {
                const float *xr = xc + (int64_t)(ih / u) * p->W;
                int iw = ow * p->stride + kj - p->pad_l;
                if (p->stride == 1) {   /* zeros left of the image, a copy, zeros right of it */
                    int t0 = iw < 0 ? (-iw < run ? -iw : run) : 0;
                    int t1 = Wu - iw < run ? Wu - iw : run;
                    if (t1 < t0) t1 = t0;
                    for (int t = 0; t < t0; t++) d[j + t] = 0.0f;
                    if (u == 1) memcpy(d + j + t0, xr + iw + t0, sizeof(float) * (size_t)(t1 - t0));
                    else if (u == 2) up2_row(d + j + t0, xr, iw + t0, t1 - t0);
                    else for (int t = t0; t < t1; t++) d[j + t] = xr[(iw + t) / u];
                    for (int t = t1; t < run; t++) d[j + t] = 0.0f;
                } else if (u == 1) {
                    for (int t = 0; t < run; t++, iw += p->stride) d[j + t] = (iw >= 0 && iw < Wu) ? xr[iw] : 0.0f;
                } else {
                    for (int t = 0; t < run; t++, iw += p->stride) d[j + t] = (iw >= 0 && iw < Wu) ? xr[iw / u] : 0.0f;
                }
            }
            j += run;
        }
        for (j = cnt; j < R; j++) d[j] = 0.0f;
    }
}

/* conv2d per image as an implicit GEMM (weights x im2col tiles packed on the fly, upsampling folded into
 * the packer); a 1x1 stride-1 unpadded conv without upsampling is a plain GEMM on the image itself. */
void kc_conv2d(const kc_isa *isa, int bf16, float *y, const float *x, const tensor *w, const tensor *b, const conv2d_params *p) {
    int Ho, Wo, up = p->up > 1 ? p->up : 1;
    conv2d_out_size(p, &Ho, &Wo);
    if (Ho <= 0 || Wo <= 0 || p->Cout <= 0) return;
    int K = p->Cin * p->kh * p->kw;
    float *bias = bias_f32(isa, b, p->Cout);
    kc_rows a = {.t = w, .f32 = w->dt == DT_F32 ? (const float *)w->data : NULL, .ld = K};  /* F32 weights: read in place */
    int plain = p->kh == 1 && p->kw == 1 && p->stride == 1 && up == 1 && !p->pad_t && !p->pad_b && !p->pad_l && !p->pad_r;
    for (int n = 0; n < p->N; n++) {
        const float *xn = x + (int64_t)n * p->Cin * p->H * p->W;
        conv_b cb = {.x = xn, .p = p, .Ho = Ho, .Wo = Wo, .up = up};
        kc_cols cc = {.p = xn, .ld = (int64_t)p->H * p->W};  /* 1x1: x is already [Cin, HW] = [K, N] */
        kc_gemm g = {.M = p->Cout, .N = Ho * Wo, .K = K, .pack_a = kc_pack_rows, .actx = &a,
                     .pack_b = plain ? kc_pack_cols : pack_conv_b, .bctx = plain ? (const void *)&cc : (const void *)&cb,
                     .C = y + (int64_t)n * p->Cout * Ho * Wo, .ldc = (int64_t)Ho * Wo, .bias_n = NULL, .bias_m = bias, .bf16 = bf16};
        kc_gemm_run(isa, &g);
    }
    sd3_free(bias);
}

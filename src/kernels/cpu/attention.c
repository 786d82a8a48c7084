/* attention.c — flash-style attention driver and its portable tile: tasks are (batch, head, tile of
 * KC_ATTN_BQ queries) spread over the pool; each task walks the keys in tiles of KC_ATTN_BK with an online
 * softmax (running max m, running sum l, output rescaled by exp(m_old - m_new)), so no Tq x Tk matrix
 * is ever stored. Scores are scale·q·k + bias; with `causal`, key j > query i is skipped. */
#include <math.h>
#include <string.h>
#include "kernels/cpu/kcpu.h"

/* Floats of scratch one attention task needs (the largest of the tile variants' layouts). */
size_t kc_attn_scratch_floats(const attn_params *p) {
    size_t Dp = (size_t)(p->D + 15) / 16 * 16, Tkp = (size_t)(p->Tk + KC_ATTN_BK - 1) / KC_ATTN_BK * KC_ATTN_BK + KC_ATTN_BK;
    /* S [BQ][BK] + O [BQ][Dp] + m, alpha [BQ] + l [BQ][16] + K^T and V of every key [Dp][Tkp] each */
    size_t f32_tile = 2 * Dp * Tkp;
    /* the bf16 tile instead: Pp [BQ][BK/2], Qp [BQ][D2p], K pairs [Tkp][D2p], V pairs [Tkp/2][Dp] (uint32) */
    size_t D2p = ((size_t)(p->D + 1) / 2 + 15) / 16 * 16;
    size_t bf16_tile = (size_t)KC_ATTN_BQ * (KC_ATTN_BK / 2 + D2p) + Tkp * D2p + Tkp / 2 * Dp;
    return (size_t)KC_ATTN_BQ * KC_ATTN_BK + (size_t)KC_ATTN_BQ * Dp + 18 * KC_ATTN_BQ + 64 +
           (f32_tile > bf16_tile ? f32_tile : bf16_tile);
}

/* Round to bf16 (nearest even) and back: the value the bf16 products see. */
static inline float bf16_round(float x) { return bf16_to_f32(f32_to_bf16(x)); }

/* 2^x as the bf16 tiles compute it (attn_avx512.c exp2_p4): n = round(x), f = x - n, degree-4 Taylor
 * polynomial of 2^f, times 2^n; x below -200 gives 0. */
static float exp2_bf16mode(float x) {
    if (!(x >= -200.0f)) x = -200.0f; /* also -inf */
    float n = nearbyintf(x), f = x - n;
    float pl = 9.6181291076284772e-3f;
    pl = pl * f + 5.5504108664821580e-2f;
    pl = pl * f + 2.4022650695910071e-1f;
    pl = pl * f + 6.9314718055994531e-1f;
    pl = pl * f + 1.0f;
    return ldexpf(pl, (int)n);
}

/* Portable twin of the bf16 tiles: the portable algorithm (one query row at a time, keys in tiles of BK,
 * online softmax) with the fast tile's arithmetic: q·scale·log2(e), k, v and the unnormalised weights P
 * rounded to bf16, the softmax in base 2 with the lazily moved maximum (m moves only when a tile's max
 * exceeds it by more than 8; P = exp2_bf16mode(t - m)), the running sum from the unrounded P. */
void kc_attn_tile_bf16_portable(float *o, const float *q, const float *k, const float *v, const attn_params *p, int b, int h,
                                int i0, int i1, float *scratch) {
    const float L2E = 1.44269504088896341f;
    int D = p->D;
    float *s = scratch, *acc = scratch + KC_ATTN_BK, *qr = acc + D;
    for (int i = i0; i < i1; i++) {
        const float *qi = q + b * p->q_bstride + (int64_t)i * p->q_ld + (int64_t)h * D;
        for (int d = 0; d < D; d++) qr[d] = bf16_round(qi[d] * (p->scale * L2E));
        int nk = p->causal ? (i + 1 < p->Tk ? i + 1 : p->Tk) : p->Tk;
        float m = -INFINITY, l = 0.0f;
        for (int d = 0; d < D; d++) acc[d] = 0.0f;
        for (int j0 = 0; j0 < nk; j0 += KC_ATTN_BK) {
            int j1 = j0 + KC_ATTN_BK < nk ? j0 + KC_ATTN_BK : nk;
            float mx = -INFINITY;
            for (int j = j0; j < j1; j++) {
                const float *kj = k + b * p->k_bstride + (int64_t)j * p->k_ld + (int64_t)h * D;
                float a = 0.0f;
                for (int d = 0; d < D; d++) a += qr[d] * bf16_round(kj[d]);
                if (p->bias) a += p->bias[((int64_t)h * p->Tq + i) * p->Tk + j] * L2E;
                s[j - j0] = a;
                if (a > mx) mx = a;
            }
            if (mx > m + 8.0f) { /* the lazy maximum moves */
                float alpha = exp2f(m - mx);
                l *= alpha;
                for (int d = 0; d < D; d++) acc[d] *= alpha;
                m = mx;
            }
            float mu = m == -INFINITY ? 0.0f : m;
            for (int j = j0; j < j1; j++) {
                float pj = exp2_bf16mode(s[j - j0] - mu), pr = bf16_round(pj);
                l += pj;
                const float *vj = v + b * p->v_bstride + (int64_t)j * p->v_ld + (int64_t)h * D;
                for (int d = 0; d < D; d++) acc[d] += pr * bf16_round(vj[d]);
            }
        }
        float *oi = o + b * p->o_bstride + (int64_t)i * p->o_ld + (int64_t)h * D;
        for (int d = 0; d < D; d++) oi[d] = acc[d] / l;
    }
}

/* Portable tile: one query row at a time, keys in tiles of BK, online softmax. */
void kc_attn_tile_portable(float *o, const float *q, const float *k, const float *v, const attn_params *p, int b, int h,
                           int i0, int i1, float *scratch) {
    int D = p->D;
    float *s = scratch, *acc = scratch + KC_ATTN_BK;
    for (int i = i0; i < i1; i++) {
        const float *qi = q + b * p->q_bstride + (int64_t)i * p->q_ld + (int64_t)h * D;
        int nk = p->causal ? (i + 1 < p->Tk ? i + 1 : p->Tk) : p->Tk;
        float m = -INFINITY, l = 0.0f;
        for (int d = 0; d < D; d++) acc[d] = 0.0f;
        for (int j0 = 0; j0 < nk; j0 += KC_ATTN_BK) {
            int j1 = j0 + KC_ATTN_BK < nk ? j0 + KC_ATTN_BK : nk;
            float mx = -INFINITY;
            for (int j = j0; j < j1; j++) {
                const float *kj = k + b * p->k_bstride + (int64_t)j * p->k_ld + (int64_t)h * D;
                float a = 0.0f;
                for (int d = 0; d < D; d++) a += qi[d] * kj[d];
                a *= p->scale;
                if (p->bias) a += p->bias[((int64_t)h * p->Tq + i) * p->Tk + j];
                s[j - j0] = a;
                if (a > mx) mx = a;
            }
            float mn = mx > m ? mx : m;
            float mu = mn == -INFINITY ? 0.0f : mn;       /* all masked so far: keep weights 0, not NaN */
            float alpha = expf(m - mu);
            l *= alpha;
            for (int d = 0; d < D; d++) acc[d] *= alpha;
            for (int j = j0; j < j1; j++) {
                float pj = expf(s[j - j0] - mu);
                l += pj;
                const float *vj = v + b * p->v_bstride + (int64_t)j * p->v_ld + (int64_t)h * D;
                for (int d = 0; d < D; d++) acc[d] += pj * vj[d];
            }
            m = mn;
        }
        float *oi = o + b * p->o_bstride + (int64_t)i * p->o_ld + (int64_t)h * D;
        for (int d = 0; d < D; d++) oi[d] = acc[d] / l;
    }
}

typedef struct attn_job {
    const kc_isa *isa;
    int bf16;
    float *o;
    const float *q, *k, *v;
    const attn_params *p;
    int nqt, qchunk;
    float *scratch;
    size_t per;
} attn_job;

/* One pool task: a (batch, head, query range) through the ISA's tile, on this thread's scratch. */
static void attn_task(void *arg, int t, int thread) {
    attn_job *j = arg;
    const attn_params *p = j->p;
    int qt = t % j->nqt, bh = t / j->nqt, h = bh % p->H, b = bh / p->H;
    int i0 = qt * j->qchunk, i1 = i0 + j->qchunk < p->Tq ? i0 + j->qchunk : p->Tq;
    float *scr = j->scratch + j->per * (size_t)thread;
    if (j->bf16) {
        if (j->isa->attn_tile_bf16) j->isa->attn_tile_bf16(j->o, j->q, j->k, j->v, p, b, h, i0, i1, scr);
        else kc_attn_tile_bf16_portable(j->o, j->q, j->k, j->v, p, b, h, i0, i1, scr);
    } else if (j->isa->attn_tile) {
        j->isa->attn_tile(j->o, j->q, j->k, j->v, p, b, h, i0, i1, scr);
    } else {
        kc_attn_tile_portable(j->o, j->q, j->k, j->v, p, b, h, i0, i1, scr);
    }
}

/* Attention over the pool: one task per (batch, head) when there are >= 4 per thread (K^T and V are then
 * packed once per head), else per (batch, head, KC_ATTN_BQ queries) so that small problems still split.
 * bf16: the products on bf16 inputs (the ISA's bf16 tile, else the portable twin). */
void kc_attention(const kc_isa *isa, int bf16, float *o, const float *q, const float *k, const float *v, const attn_params *p) {
    if (p->B <= 0 || p->H <= 0 || p->Tq <= 0 || p->D <= 0) return;
    attn_job j = {.isa = isa, .bf16 = bf16, .o = o, .q = q, .k = k, .v = v, .p = p};
    int nt = pool_threads();
    /* a task per (batch, head) when there are enough of them (K^T is then packed once per head);
     * otherwise per tile of KC_ATTN_BQ queries too */
    j.qchunk = p->B * p->H >= 4 * nt ? p->Tq : KC_ATTN_BQ;
    j.nqt = (p->Tq + j.qchunk - 1) / j.qchunk;
    j.per = (kc_attn_scratch_floats(p) + 15) / 16 * 16;
    j.scratch = sd3_malloc(sizeof(float) * j.per * (size_t)nt);
    SD3_ASSERT(j.scratch);
    pool_run(p->B * p->H * j.nqt, attn_task, &j);
    sd3_free(j.scratch);
}

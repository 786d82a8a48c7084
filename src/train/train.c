/*
 * train.c — the MMDiT training forward / backward with LoRA gradients and per-block gradient
 * checkpointing, and the script's training step (see train.h). The forward mirrors mmdit.c op for op;
 * the backward follows the recipe in grad.h.
 */
#include <math.h>
#include <string.h>
#include "kernels/kernels.h"
#include "train/grad.h"
#include "train/train.h"

/* Everything one joint block's backward reads, written by its forward. */
struct train_block_acts {
    float *modx, *modc;              /* adaLN outputs [B, 6C] each */
    float *lnx, *lnc;                /* LN(x_in) [B Tx C], LN(c_in) [B Tc C] */
    float *xn, *cn;                  /* modulated: q/k/v inputs */
    float *q, *k, *v, *qp, *kp;      /* [B T C]; qp/kp: q, k before qk-norm (qk_norm models) */
    float *o, *lse;                  /* attention output [B T C], log-sum-exp [B nh T] */
    float *ax, *ac;                  /* to_out.0 / to_add_out outputs */
    float *x1, *c1;                  /* streams after the attention residual */
    float *lnx1, *lnc1, *xm, *cm;    /* FF: LN and modulated inputs */
    float *xpre, *xg, *cpre, *cg;    /* FF hidden before / after GELU [B Tx F], [B Tc F] */
    float *xff, *cff;                /* FF outputs */
    /* MMDiT-X (dual) blocks: the image-only attn2 branch */
    float *xn2;                      /* LN(x_in) modulated with shift/scale_msa2 [B Tx C] */
    float *q2, *k2, *v2, *qp2, *kp2, *o2, *lse2, *ax2;
};

void trainer_init(trainer *tr, const mmdit_model *m, lt_set *lora, int checkpointing) {
    memset(tr, 0, sizeof *tr);
    tr->m = m;
    tr->lora = lora;
    tr->checkpointing = checkpointing;
    tr->precondition_outputs = 1;
}

void trainer_free(trainer *tr) {
    sd3_free(tr->mem);
    sd3_free(tr->xin);
    sd3_free(tr->acts);
    const mmdit_model *m = tr->m;
    lt_set *l = tr->lora;
    int ck = tr->checkpointing, pc = tr->precondition_outputs;
    memset(tr, 0, sizeof *tr);
    tr->m = m, tr->lora = l, tr->checkpointing = ck, tr->precondition_outputs = pc;
}

/* A list of buffers to carve out of one allocation. */
typedef struct carve {
    float **p[512];
    int64_t n[512];
    int k;
} carve;

/* Add a buffer of n floats (n == 0 leaves *p NULL). */
static void carve_add(carve *cv, float **p, int64_t n) {
    SD3_ASSERT(cv->k < 512);
    cv->p[cv->k] = p;
    cv->n[cv->k++] = n;
}

/* (Re)allocate the buffers for the shapes in tr (already set). */
static sd3_status trainer_alloc(trainer *tr, sd3_err *err) {
    sd3_free(tr->mem), sd3_free(tr->xin), sd3_free(tr->acts);
    tr->mem = NULL, tr->xin = NULL, tr->acts = NULL;
    const int64_t B = tr->B, Tx = tr->Tx, Tc = tr->Tc, T = tr->T, C = tr->C, F = tr->F, L = tr->L;
    const int qk = tr->m->cfg.qk_norm;
    tr->n_acts = tr->checkpointing ? 1 : tr->L;
    tr->xin = sd3_calloc((size_t)(2 * (L + 1)), sizeof(float *));
    tr->acts = sd3_calloc((size_t)tr->n_acts, sizeof *tr->acts);
    if (!tr->xin || !tr->acts) return sd3_errf(err, SD3_ERR_NOMEM, "train: out of memory");
    tr->cin = tr->xin + L + 1;
    carve cv = {.k = 0};
    carve_add(&cv, &tr->patches, B * Tx * tr->Pin);
    carve_add(&cv, &tr->sin, B * MMDIT_FREQ_DIM);
    carve_add(&cv, &tr->t1, B * C), carve_add(&cv, &tr->t2, B * C);
    carve_add(&cv, &tr->temb, B * C), carve_add(&cv, &tr->stemb, B * C);
    for (int i = 0; i <= L; i++) carve_add(&cv, &tr->xin[i], B * Tx * C), carve_add(&cv, &tr->cin[i], B * Tc * C);
    carve_add(&cv, &tr->modo, B * 2 * C), carve_add(&cv, &tr->lno, B * Tx * C);
    carve_add(&cv, &tr->xo, B * Tx * C), carve_add(&cv, &tr->po, B * Tx * tr->Pout);
    for (int s = 0; s < tr->n_acts; s++) {
        train_block_acts *a = &tr->acts[s];
        carve_add(&cv, &a->modx, B * 9 * C), carve_add(&cv, &a->modc, B * 6 * C);
        carve_add(&cv, &a->lnx, B * Tx * C), carve_add(&cv, &a->lnc, B * Tc * C);
        carve_add(&cv, &a->xn, B * Tx * C), carve_add(&cv, &a->cn, B * Tc * C);
        carve_add(&cv, &a->q, B * T * C), carve_add(&cv, &a->k, B * T * C), carve_add(&cv, &a->v, B * T * C);
        if (qk) carve_add(&cv, &a->qp, B * T * C), carve_add(&cv, &a->kp, B * T * C);
        carve_add(&cv, &a->o, B * T * C), carve_add(&cv, &a->lse, B * tr->nh * T);
        carve_add(&cv, &a->ax, B * Tx * C), carve_add(&cv, &a->ac, B * Tc * C);
        carve_add(&cv, &a->x1, B * Tx * C), carve_add(&cv, &a->c1, B * Tc * C);
        carve_add(&cv, &a->lnx1, B * Tx * C), carve_add(&cv, &a->lnc1, B * Tc * C);
        carve_add(&cv, &a->xm, B * Tx * C), carve_add(&cv, &a->cm, B * Tc * C);
        carve_add(&cv, &a->xpre, B * Tx * F), carve_add(&cv, &a->xg, B * Tx * F);
        carve_add(&cv, &a->cpre, B * Tc * F), carve_add(&cv, &a->cg, B * Tc * F);
        carve_add(&cv, &a->xff, B * Tx * C), carve_add(&cv, &a->cff, B * Tc * C);
        if (tr->n_dual) {
            carve_add(&cv, &a->xn2, B * Tx * C), carve_add(&cv, &a->q2, B * Tx * C);
            carve_add(&cv, &a->k2, B * Tx * C), carve_add(&cv, &a->v2, B * Tx * C);
            if (qk) carve_add(&cv, &a->qp2, B * Tx * C), carve_add(&cv, &a->kp2, B * Tx * C);
            carve_add(&cv, &a->o2, B * Tx * C), carve_add(&cv, &a->lse2, B * tr->nh * Tx);
            carve_add(&cv, &a->ax2, B * Tx * C);
        }
    }
    carve_add(&cv, &tr->gx, B * Tx * C), carve_add(&cv, &tr->gc, B * Tc * C);
    carve_add(&cv, &tr->dpo, B * Tx * tr->Pout);
    carve_add(&cv, &tr->dA1, B * T * C), carve_add(&cv, &tr->dA2, B * T * C), carve_add(&cv, &tr->dA3, B * T * C);
    carve_add(&cv, &tr->dT1, B * T * F), carve_add(&cv, &tr->dT2, B * T * F);
    carve_add(&cv, &tr->d_o, B * T * C), carve_add(&cv, &tr->dq, B * T * C);
    carve_add(&cv, &tr->dk, B * T * C), carve_add(&cv, &tr->dv, B * T * C);
    if (qk) carve_add(&cv, &tr->dq2, B * T * C), carve_add(&cv, &tr->dk2, B * T * C);
    if (tr->n_dual) carve_add(&cv, &tr->dA4, B * Tx * C);
    int64_t total = 0;
    for (int i = 0; i < cv.k; i++) total += (cv.n[i] + 15) & ~(int64_t)15;
    if ((uint64_t)total > SIZE_MAX / sizeof(float) || !(tr->mem = sd3_malloc((size_t)total * sizeof(float))))
        return sd3_errf(err, SD3_ERR_NOMEM, "train: out of memory for activations (%.1f GiB; try gradient "
                        "checkpointing or a smaller batch)", (double)total * 4 / (1 << 30));
    tr->mem_floats = (size_t)total;
    int64_t off = 0;
    for (int i = 0; i < cv.k; i++) {
        *cv.p[i] = cv.n[i] ? tr->mem + off : NULL;
        off += (cv.n[i] + 15) & ~(int64_t)15;
    }
    return lt_reserve(tr->lora, B * T, err);
}

/* y = x W^T + b for a frozen Linear, plus the LoRA of tr->lora on it (if any), keeping h at row hrow. */
static void tlin(const trainer *tr, float *y, const float *x, const mmdit_linear *l, int M, int N, int K,
                 int64_t hrow) {
    k_linear(y, x, &l->weight, &l->bias, M, N, K);
    const lt_module *md = lt_find(tr->lora, l);
    if (md) lora_forward(y, md->h + hrow * md->r, x, md->A, md->B, md->s, M, N, K, md->r);
}

/* Backward of tlin: dx += dy (W + s B A) (dx may be NULL), LoRA gradients accumulated. */
static sd3_status tlin_bwd(const trainer *tr, float *dx, const float *dy, const float *x, const mmdit_linear *l,
                           int M, int N, int K, int64_t hrow, sd3_err *err) {
    lt_module *md = lt_find(tr->lora, l);
    sd3_status s = SD3_OK;
    if (md) s = lora_backward(dx, md->dA, md->dB, dy, x, md->h + hrow * md->r, md->A, md->B, md->s, M, N, K, md->r,
                              err);
    if (s == SD3_OK && dx) s = linear_backward(dx, NULL, NULL, dy, NULL, &l->weight, M, N, K, err);
    return s;
}

/* The joint-attention parameters over [image ; text] rows of width C. */
static attn_params joint_ap(const trainer *tr) {
    const int64_t TC = (int64_t)tr->T * tr->C;
    attn_params ap = {.B = tr->B, .H = tr->nh, .Tq = tr->T, .Tk = tr->T, .D = tr->D, .q_ld = tr->C, .k_ld = tr->C,
                      .v_ld = tr->C, .o_ld = tr->C, .q_bstride = TC, .k_bstride = TC, .v_bstride = TC,
                      .o_bstride = TC, .scale = 1.0f / sqrtf((float)tr->D), .causal = 0, .bias = NULL};
    return ap;
}

/* The image-only attention of MMDiT-X's attn2 (Tx tokens per item). */
static attn_params image_ap(const trainer *tr) {
    attn_params ap = joint_ap(tr);
    ap.Tq = ap.Tk = tr->Tx;
    ap.q_bstride = ap.k_bstride = ap.v_bstride = ap.o_bstride = (int64_t)tr->Tx * tr->C;
    return ap;
}

/* JointTransformerBlock.forward of block i from xin[i], cin[i] into xin[i+1], cin[i+1], keeping its
 * activations in a (mmdit.c joint_block, op for op, with the LoRA through tlin). need_lse = 0 skips the
 * attention log-sum-exp (an extra Q K^T pass) when these activations will not be used by a backward
 * (the first pass under checkpointing recomputes them anyway). */
static sd3_status block_forward(trainer *tr, int i, train_block_acts *a, int need_lse, sd3_err *err) {
    const mmdit_block *bl = &tr->m->blocks[i];
    const int B = tr->B, Tx = tr->Tx, Tc = tr->Tc, T = tr->T, C = tr->C, F = tr->F;
    const int nx = bl->dual ? 9 : 6, nc = bl->context_pre_only ? 2 : 6;
    const float *x = tr->xin[i], *c = tr->cin[i];
    float *xout = tr->xin[i + 1], *cout = tr->cin[i + 1];

    tlin(tr, a->modx, tr->stemb, &bl->norm1_linear, B, nx * C, C, 0);
    tlin(tr, a->modc, tr->stemb, &bl->norm1_context_linear, B, nc * C, C, 0);
    k_layernorm(a->lnx, x, NULL, NULL, B * Tx, C, MMDIT_EPS);
    k_layernorm(a->lnc, c, NULL, NULL, B * Tc, C, MMDIT_EPS);
    for (int b = 0; b < B; b++) {
        const float *mx = a->modx + (int64_t)b * nx * C, *mc = a->modc + (int64_t)b * nc * C;
        int64_t xo = (int64_t)b * Tx * C, co = (int64_t)b * Tc * C;
        if (bl->dual) k_modulate(a->xn2 + xo, a->lnx + xo, mx + 6 * C, mx + 7 * C, Tx, C);
        k_modulate(a->xn + xo, a->lnx + xo, mx, mx + C, Tx, C);
        if (bl->context_pre_only) k_modulate(a->cn + co, a->lnc + co, mc + C, mc, Tc, C);
        else k_modulate(a->cn + co, a->lnc + co, mc, mc + C, Tc, C);
    }
    for (int b = 0; b < B; b++) {
        const float *xn = a->xn + (int64_t)b * Tx * C, *cn = a->cn + (int64_t)b * Tc * C;
        int64_t bo = (int64_t)b * T * C, co = bo + (int64_t)Tx * C;
        tlin(tr, a->q + bo, xn, &bl->attn_to_q, Tx, C, C, (int64_t)b * Tx);
        tlin(tr, a->k + bo, xn, &bl->attn_to_k, Tx, C, C, (int64_t)b * Tx);
        tlin(tr, a->v + bo, xn, &bl->attn_to_v, Tx, C, C, (int64_t)b * Tx);
        tlin(tr, a->q + co, cn, &bl->attn_add_q_proj, Tc, C, C, (int64_t)b * Tc);
        tlin(tr, a->k + co, cn, &bl->attn_add_k_proj, Tc, C, C, (int64_t)b * Tc);
        tlin(tr, a->v + co, cn, &bl->attn_add_v_proj, Tc, C, C, (int64_t)b * Tc);
    }
    if (tr->m->cfg.qk_norm) {
        memcpy(a->qp, a->q, sizeof(float) * (size_t)B * T * C);
        memcpy(a->kp, a->k, sizeof(float) * (size_t)B * T * C);
        for (int b = 0; b < B; b++) {
            int64_t bo = (int64_t)b * T * C, co = bo + (int64_t)Tx * C;
            k_rmsnorm(a->q + bo, a->q + bo, &bl->attn_norm_q, Tx * tr->nh, tr->D, MMDIT_EPS);
            k_rmsnorm(a->k + bo, a->k + bo, &bl->attn_norm_k, Tx * tr->nh, tr->D, MMDIT_EPS);
            k_rmsnorm(a->q + co, a->q + co, &bl->attn_norm_added_q, Tc * tr->nh, tr->D, MMDIT_EPS);
            k_rmsnorm(a->k + co, a->k + co, &bl->attn_norm_added_k, Tc * tr->nh, tr->D, MMDIT_EPS);
        }
    }
    attn_params ap = joint_ap(tr);
    k_attention(a->o, a->q, a->k, a->v, &ap);
    sd3_status s = need_lse ? attention_lse(a->lse, a->q, a->k, &ap, err) : SD3_OK;
    if (s != SD3_OK) return s;
    for (int b = 0; b < B; b++) {
        int64_t bo = (int64_t)b * T * C;
        tlin(tr, a->ax + (int64_t)b * Tx * C, a->o + bo, &bl->attn_to_out_0, Tx, C, C, (int64_t)b * Tx);
        if (!bl->context_pre_only)
            tlin(tr, a->ac + (int64_t)b * Tc * C, a->o + bo + (int64_t)Tx * C, &bl->attn_to_add_out, Tc, C, C,
                 (int64_t)b * Tc);
    }
    memcpy(a->x1, x, sizeof(float) * (size_t)B * Tx * C);
    for (int b = 0; b < B; b++)
        k_gated_add(a->x1 + (int64_t)b * Tx * C, a->ax + (int64_t)b * Tx * C, a->modx + (int64_t)b * nx * C + 2 * C,
                    Tx, C);
    if (bl->dual) {
        /* MMDiT-X: x1 += gate_msa2 * attn2(xn2), image-only self-attention (mmdit.c) */
        tlin(tr, a->q2, a->xn2, &bl->attn2_to_q, B * Tx, C, C, 0);
        tlin(tr, a->k2, a->xn2, &bl->attn2_to_k, B * Tx, C, C, 0);
        tlin(tr, a->v2, a->xn2, &bl->attn2_to_v, B * Tx, C, C, 0);
        if (tr->m->cfg.qk_norm) {
            memcpy(a->qp2, a->q2, sizeof(float) * (size_t)B * Tx * C);
            memcpy(a->kp2, a->k2, sizeof(float) * (size_t)B * Tx * C);
            k_rmsnorm(a->q2, a->q2, &bl->attn2_norm_q, B * Tx * tr->nh, tr->D, MMDIT_EPS);
            k_rmsnorm(a->k2, a->k2, &bl->attn2_norm_k, B * Tx * tr->nh, tr->D, MMDIT_EPS);
        }
        attn_params ap2 = image_ap(tr);
        k_attention(a->o2, a->q2, a->k2, a->v2, &ap2);
        if (need_lse && (s = attention_lse(a->lse2, a->q2, a->k2, &ap2, err)) != SD3_OK) return s;
        tlin(tr, a->ax2, a->o2, &bl->attn2_to_out_0, B * Tx, C, C, 0);
        for (int b = 0; b < B; b++)
            k_gated_add(a->x1 + (int64_t)b * Tx * C, a->ax2 + (int64_t)b * Tx * C,
                        a->modx + (int64_t)b * nx * C + 8 * C, Tx, C);
    }
    k_layernorm(a->lnx1, a->x1, NULL, NULL, B * Tx, C, MMDIT_EPS);
    for (int b = 0; b < B; b++) {
        const float *mx = a->modx + (int64_t)b * nx * C;
        k_modulate(a->xm + (int64_t)b * Tx * C, a->lnx1 + (int64_t)b * Tx * C, mx + 3 * C, mx + 4 * C, Tx, C);
    }
    tlin(tr, a->xpre, a->xm, &bl->ff_net_0_proj, B * Tx, F, C, 0);
    k_gelu_tanh(a->xg, a->xpre, (size_t)B * Tx * F);
    tlin(tr, a->xff, a->xg, &bl->ff_net_2, B * Tx, C, F, 0);
    memcpy(xout, a->x1, sizeof(float) * (size_t)B * Tx * C);
    for (int b = 0; b < B; b++)
        k_gated_add(xout + (int64_t)b * Tx * C, a->xff + (int64_t)b * Tx * C, a->modx + (int64_t)b * nx * C + 5 * C,
                    Tx, C);
    if (bl->context_pre_only) {
        memcpy(cout, c, sizeof(float) * (size_t)B * Tc * C); /* unused downstream */
        return SD3_OK;
    }
    memcpy(a->c1, c, sizeof(float) * (size_t)B * Tc * C);
    for (int b = 0; b < B; b++)
        k_gated_add(a->c1 + (int64_t)b * Tc * C, a->ac + (int64_t)b * Tc * C, a->modc + (int64_t)b * nc * C + 2 * C,
                    Tc, C);
    k_layernorm(a->lnc1, a->c1, NULL, NULL, B * Tc, C, MMDIT_EPS);
    for (int b = 0; b < B; b++) {
        const float *mc = a->modc + (int64_t)b * nc * C;
        k_modulate(a->cm + (int64_t)b * Tc * C, a->lnc1 + (int64_t)b * Tc * C, mc + 3 * C, mc + 4 * C, Tc, C);
    }
    tlin(tr, a->cpre, a->cm, &bl->ff_context_net_0_proj, B * Tc, F, C, 0);
    k_gelu_tanh(a->cg, a->cpre, (size_t)B * Tc * F);
    tlin(tr, a->cff, a->cg, &bl->ff_context_net_2, B * Tc, C, F, 0);
    memcpy(cout, a->c1, sizeof(float) * (size_t)B * Tc * C);
    for (int b = 0; b < B; b++)
        k_gated_add(cout + (int64_t)b * Tc * C, a->cff + (int64_t)b * Tc * C, a->modc + (int64_t)b * nc * C + 5 * C,
                    Tc, C);
    return SD3_OK;
}

#define TRY(expr)                                                                                      \
    do {                                                                                               \
        sd3_status s_ = (expr);                                                                        \
        if (s_ != SD3_OK) return s_;                                                                   \
    } while (0)

/* Zero n floats. */
static void zero(float *p, int64_t n) { memset(p, 0, sizeof(float) * (size_t)n); }

/* Backward of one gated FeedForward branch: stream_out = s1 + gate FF(LN(s1) (1 + scale) + shift).
 * g holds d stream_out on entry and d s1 on return. rows per batch item R, modulation rows mod (stride
 * ms floats per item, chunks shift/scale/gate at 3C/4C/5C). */
static sd3_status ff_backward(trainer *tr, float *g, const float *s1, const float *xm, const float *pre,
                              const float *gel, const float *mod, int ms, int R, const mmdit_linear *l0,
                              const mmdit_linear *l2, int need_dx, sd3_err *err) {
    const int B = tr->B, C = tr->C, F = tr->F;
    const int64_t n = (int64_t)B * R;
    float *dff = tr->dA1, *dh = tr->dT1, *dpre = tr->dT2, *dxm = tr->dA2, *dln = tr->dA3;
    zero(dff, n * C);
    for (int b = 0; b < B; b++)
        gated_add_backward(dff + (int64_t)b * R * C, NULL, g + (int64_t)b * R * C, NULL, mod + (int64_t)b * ms + 5 * C,
                           R, C);
    zero(dh, n * F);
    TRY(tlin_bwd(tr, dh, dff, gel, l2, (int)n, C, F, 0, err));
    zero(dpre, n * F);
    gelu_tanh_backward(dpre, dh, pre, (size_t)(n * F));
    float *dx = need_dx ? dxm : NULL;
    if (dx) zero(dxm, n * C);
    TRY(tlin_bwd(tr, dx, dpre, xm, l0, (int)n, F, C, 0, err));
    if (!need_dx) return SD3_OK;
    zero(dln, n * C);
    for (int b = 0; b < B; b++)
        modulate_backward(dln + (int64_t)b * R * C, NULL, NULL, dxm + (int64_t)b * R * C, NULL,
                          mod + (int64_t)b * ms + 4 * C, R, C);
    layernorm_backward(g, dln, s1, (int)n, C, MMDIT_EPS);
    return SD3_OK;
}

/* Backward of block i: tr->gx / tr->gc hold the gradients of its output streams on entry and of its
 * input streams on return (need_in = 0: the input gradients are not needed and not formed). */
static sd3_status block_backward(trainer *tr, int i, const train_block_acts *a, int need_in, sd3_err *err) {
    const mmdit_block *bl = &tr->m->blocks[i];
    const int B = tr->B, Tx = tr->Tx, Tc = tr->Tc, T = tr->T, C = tr->C;
    const int nx = bl->dual ? 9 : 6, nc = bl->context_pre_only ? 2 : 6;
    float *gx = tr->gx, *gc = tr->gc;

    /* FeedForwards: g of stream out -> g of the stream after the attention residual. */
    TRY(ff_backward(tr, gx, a->x1, a->xm, a->xpre, a->xg, a->modx, nx * C, Tx, &bl->ff_net_0_proj,
                    &bl->ff_net_2, 1, err));
    if (!bl->context_pre_only)
        TRY(ff_backward(tr, gc, a->c1, a->cm, a->cpre, a->cg, a->modc, nc * C, Tc, &bl->ff_context_net_0_proj,
                        &bl->ff_context_net_2, 1, err));

    /* MMDiT-X attn2 branch: d xn2 into dA4 (its LayerNorm input is x_in, shared with attn). */
    float *dxn2 = NULL;
    if (bl->dual) {
        float *dp = tr->dA1, *d_o2 = tr->d_o, *dq = tr->dq, *dk = tr->dk, *dv = tr->dv;
        const int64_t nxc = (int64_t)B * Tx * C;
        zero(dp, nxc);
        for (int b = 0; b < B; b++)
            gated_add_backward(dp + (int64_t)b * Tx * C, NULL, gx + (int64_t)b * Tx * C, NULL,
                               a->modx + (int64_t)b * nx * C + 8 * C, Tx, C);
        zero(d_o2, nxc);
        TRY(tlin_bwd(tr, d_o2, dp, a->o2, &bl->attn2_to_out_0, B * Tx, C, C, 0, err));
        attn_params ap2 = image_ap(tr);
        zero(dq, nxc), zero(dk, nxc), zero(dv, nxc);
        TRY(attention_backward(dq, dk, dv, d_o2, a->q2, a->k2, a->v2, a->o2, a->lse2, &ap2, err));
        if (tr->m->cfg.qk_norm) {
            zero(tr->dq2, nxc), zero(tr->dk2, nxc);
            rmsnorm_backward(tr->dq2, NULL, dq, a->qp2, &bl->attn2_norm_q, B * Tx * tr->nh, tr->D, MMDIT_EPS);
            rmsnorm_backward(tr->dk2, NULL, dk, a->kp2, &bl->attn2_norm_k, B * Tx * tr->nh, tr->D, MMDIT_EPS);
            dq = tr->dq2, dk = tr->dk2;
        }
        dxn2 = need_in ? tr->dA4 : NULL;
        if (dxn2) zero(dxn2, nxc);
        TRY(tlin_bwd(tr, dxn2, dq, a->xn2, &bl->attn2_to_q, B * Tx, C, C, 0, err));
        TRY(tlin_bwd(tr, dxn2, dk, a->xn2, &bl->attn2_to_k, B * Tx, C, C, 0, err));
        TRY(tlin_bwd(tr, dxn2, dv, a->xn2, &bl->attn2_to_v, B * Tx, C, C, 0, err));
    }

    /* Attention outputs: d o from both gated residuals. */
    float *d_o = tr->d_o, *dproj = tr->dA1;
    zero(d_o, (int64_t)B * T * C);
    for (int b = 0; b < B; b++) {
        int64_t bo = (int64_t)b * T * C;
        zero(dproj, (int64_t)Tx * C);
        gated_add_backward(dproj, NULL, gx + (int64_t)b * Tx * C, NULL, a->modx + (int64_t)b * nx * C + 2 * C, Tx, C);
        TRY(tlin_bwd(tr, d_o + bo, dproj, a->o + bo, &bl->attn_to_out_0, Tx, C, C, (int64_t)b * Tx, err));
        if (!bl->context_pre_only) {
            zero(dproj, (int64_t)Tc * C);
            gated_add_backward(dproj, NULL, gc + (int64_t)b * Tc * C, NULL, a->modc + (int64_t)b * nc * C + 2 * C, Tc,
                               C);
            TRY(tlin_bwd(tr, d_o + bo + (int64_t)Tx * C, dproj, a->o + bo + (int64_t)Tx * C, &bl->attn_to_add_out, Tc,
                         C, C, (int64_t)b * Tc, err));
        }
    }
    attn_params ap = joint_ap(tr);
    float *dq = tr->dq, *dk = tr->dk, *dv = tr->dv;
    zero(dq, (int64_t)B * T * C), zero(dk, (int64_t)B * T * C), zero(dv, (int64_t)B * T * C);
    TRY(attention_backward(dq, dk, dv, d_o, a->q, a->k, a->v, a->o, a->lse, &ap, err));
    if (tr->m->cfg.qk_norm) {
        zero(tr->dq2, (int64_t)B * T * C), zero(tr->dk2, (int64_t)B * T * C);
        for (int b = 0; b < B; b++) {
            int64_t bo = (int64_t)b * T * C, co = bo + (int64_t)Tx * C;
            rmsnorm_backward(tr->dq2 + bo, NULL, dq + bo, a->qp + bo, &bl->attn_norm_q, Tx * tr->nh, tr->D, MMDIT_EPS);
            rmsnorm_backward(tr->dk2 + bo, NULL, dk + bo, a->kp + bo, &bl->attn_norm_k, Tx * tr->nh, tr->D, MMDIT_EPS);
            rmsnorm_backward(tr->dq2 + co, NULL, dq + co, a->qp + co, &bl->attn_norm_added_q, Tc * tr->nh, tr->D,
                             MMDIT_EPS);
            rmsnorm_backward(tr->dk2 + co, NULL, dk + co, a->kp + co, &bl->attn_norm_added_k, Tc * tr->nh, tr->D,
                             MMDIT_EPS);
        }
        dq = tr->dq2, dk = tr->dk2;
    }
    /* q/k/v projections -> d of the modulated streams. */
    float *dxn = need_in ? tr->dA2 : NULL, *dcn = need_in ? tr->dA3 : NULL;
    if (need_in) zero(dxn, (int64_t)B * Tx * C), zero(dcn, (int64_t)B * Tc * C);
    for (int b = 0; b < B; b++) {
        int64_t bo = (int64_t)b * T * C, co = bo + (int64_t)Tx * C, xo = (int64_t)b * Tx * C, cco = (int64_t)b * Tc * C;
        const float *xn = a->xn + xo, *cn = a->cn + cco;
        float *dx = dxn ? dxn + xo : NULL, *dc = dcn ? dcn + cco : NULL;
        TRY(tlin_bwd(tr, dx, dq + bo, xn, &bl->attn_to_q, Tx, C, C, (int64_t)b * Tx, err));
        TRY(tlin_bwd(tr, dx, dk + bo, xn, &bl->attn_to_k, Tx, C, C, (int64_t)b * Tx, err));
        TRY(tlin_bwd(tr, dx, dv + bo, xn, &bl->attn_to_v, Tx, C, C, (int64_t)b * Tx, err));
        TRY(tlin_bwd(tr, dc, dq + co, cn, &bl->attn_add_q_proj, Tc, C, C, (int64_t)b * Tc, err));
        TRY(tlin_bwd(tr, dc, dk + co, cn, &bl->attn_add_k_proj, Tc, C, C, (int64_t)b * Tc, err));
        TRY(tlin_bwd(tr, dc, dv + co, cn, &bl->attn_add_v_proj, Tc, C, C, (int64_t)b * Tc, err));
    }
    if (!need_in) return SD3_OK;
    /* adaLN modulation and the pre-attention LayerNorms -> the block inputs (added to the residual). */
    float *dln = tr->dA1;
    zero(dln, (int64_t)B * Tx * C);
    for (int b = 0; b < B; b++)
        modulate_backward(dln + (int64_t)b * Tx * C, NULL, NULL, dxn + (int64_t)b * Tx * C, NULL,
                          a->modx + (int64_t)b * nx * C + C, Tx, C);
    if (dxn2)
        for (int b = 0; b < B; b++)
            modulate_backward(dln + (int64_t)b * Tx * C, NULL, NULL, dxn2 + (int64_t)b * Tx * C, NULL,
                              a->modx + (int64_t)b * nx * C + 7 * C, Tx, C);
    layernorm_backward(gx, dln, tr->xin[i], B * Tx, C, MMDIT_EPS);
    zero(dln, (int64_t)B * Tc * C);
    for (int b = 0; b < B; b++) {
        const float *mc = a->modc + (int64_t)b * nc * C;
        modulate_backward(dln + (int64_t)b * Tc * C, NULL, NULL, dcn + (int64_t)b * Tc * C, NULL,
                          bl->context_pre_only ? mc : mc + C, Tc, C);
    }
    layernorm_backward(gc, dln, tr->cin[i], B * Tc, C, MMDIT_EPS);
    return SD3_OK;
}

/* The lowest block holding a trainable module (tr->L when none): nothing below it needs a backward. */
static int lowest_block(const trainer *tr) {
    int lowest = tr->L;
    for (int i = 0; i < tr->lora->n; i++)
        if (tr->lora->mods[i].block >= 0 && tr->lora->mods[i].block < lowest) lowest = tr->lora->mods[i].block;
    return lowest;
}

sd3_status trainer_forward(trainer *tr, const float *x, int B, int H, int W, const float *ctx, int S,
                           const float *pooled, const float *timestep, float *out, sd3_err *err) {
    const mmdit_model *m = tr->m;
    const mmdit_config *cfg = &m->cfg;
    SD3_ASSERT(m && tr->lora && x && ctx && pooled && timestep && out);
    const int p = cfg->patch_size, Cin = cfg->in_channels, Cout = cfg->out_channels, M = cfg->pos_embed_max_size;
    if (B < 1 || H < 1 || W < 1 || S < 1 || H % p || W % p || H / p > M || W / p > M)
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "train: latent %dx%d (batch %d, text %d) does not fit the model "
                        "(multiples of %d, at most %d)", H, W, B, S, p, M * p);
    int n_dual = 0;
    for (int i = 0; i < cfg->num_layers; i++) n_dual += m->blocks[i].dual;
    const int h = H / p, w = W / p;
    if (tr->B != B || tr->H != H || tr->W != W || tr->S != S || !tr->mem) {
        tr->n_dual = n_dual;
        tr->B = B, tr->H = H, tr->W = W, tr->S = S;
        tr->Tx = h * w, tr->Tc = S, tr->T = h * w + S;
        tr->C = cfg->num_attention_heads * cfg->attention_head_dim;
        tr->F = 4 * tr->C, tr->nh = cfg->num_attention_heads, tr->D = cfg->attention_head_dim;
        tr->Pin = Cin * p * p, tr->Pout = Cout * p * p, tr->L = cfg->num_layers;
        sd3_status s = trainer_alloc(tr, err);
        if (s != SD3_OK) {
            trainer_free(tr);
            return s;
        }
    }
    const int C = tr->C, Tx = tr->Tx, Pin = tr->Pin, Pout = tr->Pout;
    /* Patch embedding + centre crop of the sin-cos table, as mmdit.c. */
    for (int b = 0; b < B; b++)
        for (int i = 0; i < h; i++)
            for (int j = 0; j < w; j++) {
                float *row = tr->patches + ((int64_t)b * Tx + (int64_t)i * w + j) * Pin;
                for (int c = 0; c < Cin; c++)
                    for (int pi = 0; pi < p; pi++)
                        for (int pj = 0; pj < p; pj++)
                            row[(c * p + pi) * p + pj] = x[(((int64_t)b * Cin + c) * H + i * p + pi) * W + j * p + pj];
            }
    tensor pw = m->pos_embed_proj.weight;
    pw.ndim = 2;
    pw.shape[1] = Pin;
    float *x0 = tr->xin[0];
    k_linear(x0, tr->patches, &pw, &m->pos_embed_proj.bias, B * Tx, C, Pin);
    const int top = (M - h) / 2, left = (M - w) / 2;
    for (int i = 0; i < h; i++) {
        float *pos = tr->xo;
        tensor_to_f32(&m->pos_embed_pos_embed, ((int64_t)(top + i) * M + left) * C, (int64_t)w * C, pos);
        for (int b = 0; b < B; b++) {
            float *xr = x0 + ((int64_t)b * Tx + (int64_t)i * w) * C;
            k_add(xr, xr, pos, (size_t)w * C);
        }
    }
    mmdit_timestep_sinusoid(tr->sin, timestep, B);
    tlin(tr, tr->t1, tr->sin, &m->time_text_embed_timestep_embedder_linear_1, B, C, MMDIT_FREQ_DIM, 0);
    k_silu(tr->t1, tr->t1, (size_t)B * C);
    tlin(tr, tr->temb, tr->t1, &m->time_text_embed_timestep_embedder_linear_2, B, C, C, 0);
    tlin(tr, tr->t1, pooled, &m->time_text_embed_text_embedder_linear_1, B, C, cfg->pooled_projection_dim, 0);
    k_silu(tr->t1, tr->t1, (size_t)B * C);
    tlin(tr, tr->t2, tr->t1, &m->time_text_embed_text_embedder_linear_2, B, C, C, 0);
    k_add(tr->temb, tr->temb, tr->t2, (size_t)B * C);
    k_silu(tr->stemb, tr->temb, (size_t)B * C);
    tlin(tr, tr->cin[0], ctx, &m->context_embedder, B * S, C, cfg->joint_attention_dim, 0);

    int lowest = lowest_block(tr);
    for (int i = 0; i < tr->L; i++)
        TRY(block_forward(tr, i, &tr->acts[tr->checkpointing ? 0 : i],
                          i >= lowest && (!tr->checkpointing || i == tr->L - 1), err));

    tlin(tr, tr->modo, tr->stemb, &m->norm_out_linear, B, 2 * C, C, 0);
    k_layernorm(tr->lno, tr->xin[tr->L], NULL, NULL, B * Tx, C, MMDIT_EPS);
    for (int b = 0; b < B; b++) {
        const float *mo = tr->modo + (int64_t)b * 2 * C;
        k_modulate(tr->xo + (int64_t)b * Tx * C, tr->lno + (int64_t)b * Tx * C, mo + C, mo, Tx, C);
    }
    tlin(tr, tr->po, tr->xo, &m->proj_out, B * Tx, Pout, C, 0);
    for (int b = 0; b < B; b++)
        for (int i = 0; i < h; i++)
            for (int j = 0; j < w; j++) {
                const float *row = tr->po + ((int64_t)b * Tx + (int64_t)i * w + j) * Pout;
                for (int pi = 0; pi < p; pi++)
                    for (int pj = 0; pj < p; pj++)
                        for (int c = 0; c < Cout; c++)
                            out[(((int64_t)b * Cout + c) * H + i * p + pi) * W + j * p + pj] = row[(pi * p + pj) * Cout + c];
            }
    return SD3_OK;
}

sd3_status trainer_backward(trainer *tr, const float *d_out, sd3_err *err) {
    const mmdit_model *m = tr->m;
    SD3_ASSERT(tr->mem && d_out);
    const int B = tr->B, H = tr->H, W = tr->W, C = tr->C, Tx = tr->Tx, Pout = tr->Pout;
    const int p = m->cfg.patch_size, Cout = m->cfg.out_channels, w = W / p, h = H / p;
    const int lowest = lowest_block(tr);
    if (lowest == tr->L) return SD3_OK; /* nothing trainable */
    /* Unpatchify backward: a permutation. */
    for (int b = 0; b < B; b++)
        for (int i = 0; i < h; i++)
            for (int j = 0; j < w; j++) {
                float *row = tr->dpo + ((int64_t)b * Tx + (int64_t)i * w + j) * Pout;
                for (int pi = 0; pi < p; pi++)
                    for (int pj = 0; pj < p; pj++)
                        for (int c = 0; c < Cout; c++)
                            row[(pi * p + pj) * Cout + c] = d_out[(((int64_t)b * Cout + c) * H + i * p + pi) * W + j * p + pj];
            }
    /* proj_out, AdaLayerNormContinuous (scale = first chunk), final LayerNorm. */
    float *dxo = tr->dA1, *dln = tr->dA2;
    zero(dxo, (int64_t)B * Tx * C);
    TRY(tlin_bwd(tr, dxo, tr->dpo, tr->xo, &m->proj_out, B * Tx, Pout, C, 0, err));
    zero(dln, (int64_t)B * Tx * C);
    for (int b = 0; b < B; b++)
        modulate_backward(dln + (int64_t)b * Tx * C, NULL, NULL, dxo + (int64_t)b * Tx * C, NULL,
                          tr->modo + (int64_t)b * 2 * C, Tx, C);
    zero(tr->gx, (int64_t)B * Tx * C);
    zero(tr->gc, (int64_t)B * tr->Tc * C);
    layernorm_backward(tr->gx, dln, tr->xin[tr->L], B * Tx, C, MMDIT_EPS);
    for (int i = tr->L - 1; i >= lowest; i--) {
        train_block_acts *a = &tr->acts[tr->checkpointing ? 0 : i];
        /* the slot still holds the last block's activations from the forward pass: no recompute there */
        if (tr->checkpointing && i != tr->L - 1) TRY(block_forward(tr, i, a, 1, err));
        TRY(block_backward(tr, i, a, i > lowest, err));
    }
    return SD3_OK;
}

sd3_status train_loss_backward_prior(trainer *tr, const float *x0, const float *noise, const float *sigmas,
                                     const float *timesteps, const float *weighting, const float *ctx,
                                     const float *pooled, int B, int n_prior, float prior_weight, int H, int W, int S,
                                     float loss_scale, float *loss, float *noisy_out, float *raw_out, float *pred_out,
                                     sd3_err *err) {
    const int Cl = tr->m->cfg.in_channels, Co = tr->m->cfg.out_channels;
    if (Cl != Co) return sd3_errf(err, SD3_ERR_UNSUPPORTED, "train: in_channels %d != out_channels %d", Cl, Co);
    if (n_prior < 0 || n_prior >= B)
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "train: %d prior samples in a batch of %d", n_prior, B);
    const int64_t n = (int64_t)Cl * H * W, tot = (int64_t)B * n;
    const int Bi = B - n_prior;
    const int pc = tr->precondition_outputs;
    float *buf = sd3_malloc(sizeof(float) * (size_t)((pc ? 3 : 4) * tot));
    if (!buf) return sd3_errf(err, SD3_ERR_NOMEM, "train: out of memory");
    float *noisy = buf, *raw = buf + tot, *draw = buf + 2 * tot;
    const float *target = x0, *sg = pc ? sigmas : NULL;
    if (!pc) {
        float *t = buf + 3 * tot; /* noise - model_input */
        for (int64_t i = 0; i < tot; i++) t[i] = noise[i] - x0[i];
        target = t;
    }
    /* noisy_model_input = (1.0 - sigmas) * model_input + sigmas * noise, float32 as torch. */
    for (int b = 0; b < B; b++) {
        const float s = sigmas[b], oms = 1.0f - s;
        for (int64_t i = 0; i < n; i++) {
            float a = oms * x0[b * n + i], c = s * noise[b * n + i];
            noisy[b * n + i] = a + c;
        }
    }
    sd3_status st = trainer_forward(tr, noisy, B, H, W, ctx, S, pooled, timesteps, raw, err);
    if (st == SD3_OK) {
        memset(draw, 0, sizeof(float) * (size_t)tot);
        /* instance loss over the first Bi samples; prior loss (weighted) over the last n_prior */
        float L = rf_loss_backward(draw, pred_out, raw, noisy, target, sg, weighting, Bi, n);
        if (n_prior > 0) {
            const int64_t o = (int64_t)Bi * n;
            float Lp = rf_loss_backward(draw + o, pred_out ? pred_out + o : NULL, raw + o, noisy + o, target + o,
                                        sg ? sg + Bi : NULL, weighting ? weighting + Bi : NULL, n_prior, n);
            for (int64_t i = o; i < tot; i++) draw[i] *= prior_weight;
            L = L + prior_weight * Lp;
        }
        if (loss) *loss = L;
        if (loss_scale != 1.0f)
            for (int64_t i = 0; i < tot; i++) draw[i] *= loss_scale;
        st = trainer_backward(tr, draw, err);
    }
    if (noisy_out) memcpy(noisy_out, noisy, sizeof(float) * (size_t)tot);
    if (raw_out) memcpy(raw_out, raw, sizeof(float) * (size_t)tot);
    sd3_free(buf);
    return st;
}

sd3_status train_loss_backward(trainer *tr, const float *x0, const float *noise, const float *sigmas,
                               const float *timesteps, const float *weighting, const float *ctx, const float *pooled,
                               int B, int H, int W, int S, float loss_scale, float *loss, float *noisy_out,
                               float *raw_out, float *pred_out, sd3_err *err) {
    return train_loss_backward_prior(tr, x0, noise, sigmas, timesteps, weighting, ctx, pooled, B, 0, 0.0f, H, W, S,
                                     loss_scale, loss, noisy_out, raw_out, pred_out, err);
}

/* Pointers to every gradient (A then B per module) and their sizes; returns the count (2 n). */
static int grad_list(const lt_set *L, float **g, float **p, float **m, float **v, int64_t *sz) {
    int k = 0;
    for (int i = 0; i < L->n; i++) {
        lt_module *md = &L->mods[i];
        g[k] = md->dA, p[k] = md->A, m[k] = md->mA, v[k] = md->vA, sz[k++] = (int64_t)md->r * md->K;
        g[k] = md->dB, p[k] = md->B, m[k] = md->mB, v[k] = md->vB, sz[k++] = (int64_t)md->N * md->r;
    }
    return k;
}

float train_grad_norm(const lt_set *L) {
    float **g = sd3_calloc((size_t)(8 * L->n + 4), sizeof(float *));
    int64_t *sz = sd3_calloc((size_t)(2 * L->n + 1), sizeof(int64_t));
    SD3_ASSERT(g && sz);
    int k = grad_list(L, g, g + 2 * L->n, g + 4 * L->n, g + 6 * L->n, sz);
    float nrm = grad_total_norm((const float *const *)g, sz, k);
    sd3_free(g), sd3_free(sz);
    return nrm;
}

float train_clip_and_step(lt_set *L, double max_norm, int64_t step, const adamw_params *hp) {
    float **g = sd3_calloc((size_t)(8 * L->n + 4), sizeof(float *));
    int64_t *sz = sd3_calloc((size_t)(2 * L->n + 1), sizeof(int64_t));
    SD3_ASSERT(g && sz);
    float **p = g + 2 * L->n, **m = g + 4 * L->n, **v = g + 6 * L->n;
    int k = grad_list(L, g, p, m, v, sz);
    float nrm = max_norm > 0 ? clip_grad_norm(g, sz, k, max_norm) : grad_total_norm((const float *const *)g, sz, k);
    for (int i = 0; i < k; i++) adamw_step(p[i], g[i], m[i], v[i], sz[i], step, hp);
    sd3_free(g), sd3_free(sz);
    return nrm;
}

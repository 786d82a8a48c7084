/*
 * mmdit.c — the SD3 transformer forward (diffusers SD3Transformer2DModel.forward, v0.32 semantics):
 *
 *   x tokens  = PatchEmbed(latents) + centre crop of the sin-cos table          (B, Tx, C)
 *   temb      = TimestepEmbedding(sinusoid(t)) + TextProjection(pooled)         (B, C)
 *   c tokens  = context_embedder(ctx)                                           (B, Tc, C)
 *   for each joint block not in skip_layers:
 *       adaLN-Zero of both streams -> ONE attention over [image ; text] -> gated residuals
 *       (+ MMDiT-X image-only attn2) -> gated FeedForward (GELU tanh); the last block's text stream
 *       only feeds the attention (context_pre_only)
 *   out       = unpatchify(proj_out(AdaLayerNormContinuous(x, temb)))            (B, out, H, W)
 *
 * All activations live in one buffer sized per call. Every numeric op is a k_* kernel.
 */
#include <math.h>
#include <string.h>
#include "kernels/kernels.h"
#include "mmdit/mmdit.h"

/* ================================================================================================ */
/* Small helpers                                                                                    */
/* ================================================================================================ */

/* Hand an intermediate to the hook, if any. */
static void emit(const mmdit_hook *hook, const char *name, const float *data, int64_t n) {
    if (hook && hook->fn) hook->fn(hook->user, name, data, n);
}

/* Same, with a block-numbered name ("block3_hidden_out"). */
static void emit_block(const mmdit_hook *hook, int i, const char *what, const float *data, int64_t n) {
    if (!hook || !hook->fn) return;
    char name[64];
    snprintf(name, sizeof name, "block%d_%s", i, what);
    hook->fn(hook->user, name, data, n);
}

/* LoRA hook: y[M, N] += scale * (x A^T) B^T for each adapter in the list (attached by src/lora/). The two
 * rank-r products run through k_linear on row chunks, so the scratch (t = x A^T, d = t B^T) stays at most
 * about 4 MiB; W + B A is never formed. Not reached on a model without adapters. */
static void linear_lora(float *y, const float *x, const mmdit_lora_adapter *ad, int M, int N, int K) {
    for (; ad; ad = ad->next) {
        const int r = (int)ad->A.shape[0];
        const int64_t per_row = (int64_t)r + N;
        int64_t rows = ((int64_t)1 << 20) / per_row;
        if (rows < 1) rows = 1;
        if (rows > M) rows = M;
        float *t = NULL;
        while (!(t = sd3_malloc((size_t)(rows * per_row) * sizeof(float))) && rows > 1) rows /= 2;
        /* A few KiB could not be had after the forward's own buffer was: nothing sensible is left to do. */
        SD3_ASSERT(t != NULL);
        float *d = t + rows * r;
        for (int64_t m0 = 0; m0 < M; m0 += rows) {
            const int mr = (int)(M - m0 < rows ? M - m0 : rows);
            k_linear(t, x + m0 * K, &ad->A, NULL, mr, r, K);
            k_linear(d, t, &ad->B, NULL, mr, N, r);
            k_axpy(y + m0 * N, ad->scale, d, (size_t)mr * N);
        }
        sd3_free(t);
    }
}

/* y[M, N] = x[M, K] W^T + b for an mmdit_linear (+ its LoRA adapters, if any are attached). */
static void linear(float *y, const float *x, const mmdit_linear *l, int M, int N, int K) {
    k_linear(y, x, &l->weight, &l->bias, M, N, K);
    if (l->lora) linear_lora(y, x, l->lora, M, N, K);
}

/* q, k, v = three linears of one input x [M, K] (N = K each): one GEMM job sharing x's packing, then
 * each one's LoRA deltas, if any. */
static void linear_qkv(float *q, float *k, float *v, const float *x, const mmdit_linear *lq, const mmdit_linear *lk,
                       const mmdit_linear *lv, int M, int K) {
    float *const y[3] = {q, k, v};
    const tensor *const W[3] = {&lq->weight, &lk->weight, &lv->weight}, *const b[3] = {&lq->bias, &lk->bias, &lv->bias};
    const int N[3] = {K, K, K};
    k_linear_multi(3, y, x, W, b, M, N, K);
    const mmdit_linear *l[3] = {lq, lk, lv};
    for (int i = 0; i < 3; i++)
        if (l[i]->lora) linear_lora(y[i], x, l[i]->lora, M, K, K);
}

/* y = l2(gelu_tanh(l1(x))), the feed-forward: the hidden activation goes from one product to the next as a
 * hand-off in hbuf (M x F floats; in the bf16 mode it never exists as F32 in memory) unless LoRA deltas
 * must act on it. */
static void feed_forward(float *y, float *hbuf, const float *x, const mmdit_linear *l1, const mmdit_linear *l2, int M, int F, int C) {
    if (l1->lora || l2->lora) {
        linear(hbuf, x, l1, M, F, C);
        k_gelu_tanh(hbuf, hbuf, (size_t)M * F);
        linear(y, hbuf, l2, M, C, F);
        return;
    }
    k_handoff h;
    k_linear_gelu_tanh_handoff(&h, hbuf, x, &l1->weight, &l1->bias, &l2->weight, M, F, C);
    k_linear_from_handoff(y, &h, &l2->weight, &l2->bias, C);
}

/* diffusers get_timestep_embedding in float32, with the same operation order as torch:
 * exponent = (-ln(10000) * k) / half, f = exp(exponent), a = t * f, [cos a, sin a]. */
void mmdit_timestep_sinusoid(float *out, const float *timestep, int B) {
    const int half = MMDIT_FREQ_DIM / 2;
    const float neg_log = -(float)log(10000.0);
    for (int b = 0; b < B; b++) {
        float *o = out + (int64_t)b * MMDIT_FREQ_DIM;
        for (int k = 0; k < half; k++) {
            float e = (neg_log * (float)k) / (float)half;
            float a = timestep[b] * expf(e);
            o[k] = cosf(a);
            o[half + k] = sinf(a);
        }
    }
}

/* ================================================================================================ */
/* Activation buffer                                                                                */
/* ================================================================================================ */

typedef struct acts {
    float *patches;   /* (B, Tx, in*p*p)   latent patches in (c, p, q) order, as the conv kernel */
    float *x;         /* (B, Tx, C)        image stream */
    float *c;         /* (B, Tc, C)        text stream */
    float *sin;       /* (B, 256)          timestep sinusoid */
    float *temb;      /* (B, C) */
    float *stemb;     /* (B, C)            SiLU(temb), the input of every adaLN linear */
    float *t1, *t2;   /* (B, C)            embedder scratch */
    float *modx;      /* (B, 9C)           image adaLN chunks */
    float *modc;      /* (B, 6C)           text adaLN chunks */
    float *xn, *xn2;  /* (B, Tx, C)        normed image stream (attn / attn2 inputs) */
    float *cn;        /* (B, Tc, C)        normed text stream */
    float *q, *k, *v; /* (B, T, C)         joint q/k/v: per batch item Tx image rows then Tc text rows */
    float *o;         /* (B, T, C)         attention output */
    float *ax;        /* (B, Tx, C)        projected image attention / FF output */
    float *ac;        /* (B, Tc, C)        projected text attention / FF output */
    float *ffh;       /* (B, max(Tx,Tc), F) FF hidden */
    float *po;        /* (B, Tx, p*p*out)  proj_out */
} acts;

/* Size everything once, allocate one block, carve pointers. Returns the block (NULL if out of memory). */
static float *acts_alloc(acts *a, int64_t B, int64_t Tx, int64_t Tc, int64_t C, int64_t Pin, int64_t Pout) {
    int64_t T = Tx + Tc, Tm = Tx > Tc ? Tx : Tc, F = 4 * C;
    struct { float **p; int64_t n; } parts[] = {
        {&a->patches, B * Tx * Pin}, {&a->x, B * Tx * C},   {&a->c, B * Tc * C},     {&a->sin, B * MMDIT_FREQ_DIM},
        {&a->temb, B * C},           {&a->stemb, B * C},    {&a->t1, B * C},         {&a->t2, B * C},
        {&a->modx, B * 9 * C},       {&a->modc, B * 6 * C}, {&a->xn, B * Tx * C},    {&a->xn2, B * Tx * C},
        {&a->cn, B * Tc * C},        {&a->q, B * T * C},    {&a->k, B * T * C},      {&a->v, B * T * C},
        {&a->o, B * T * C},          {&a->ax, B * Tx * C},  {&a->ac, B * Tc * C},    {&a->ffh, B * Tm * F},
        {&a->po, B * Tx * Pout},
    };
    int n = (int)(sizeof parts / sizeof parts[0]);
    int64_t total = 0;
    for (int i = 0; i < n; i++) total += (parts[i].n + 15) & ~(int64_t)15; /* 64-byte aligned parts */
    if (total <= 0 || (uint64_t)total > SIZE_MAX / sizeof(float)) return NULL;
    float *buf = sd3_malloc((size_t)total * sizeof(float));
    if (!buf) return NULL;
    int64_t off = 0;
    for (int i = 0; i < n; i++) {
        *parts[i].p = buf + off;
        off += (parts[i].n + 15) & ~(int64_t)15;
    }
    return buf;
}

/* ================================================================================================ */
/* One joint block                                                                                  */
/* ================================================================================================ */

typedef struct dims {
    int B, Tx, Tc, T, C, H, D, F;
} dims;

/* RMS-normalise each head of `rows` tokens in place (tokens ld floats apart, H heads of D). */
static void qk_norm(float *x, const tensor *w, int rows, const dims *d) {
    k_rmsnorm(x, x, w, rows * d->H, d->D, MMDIT_EPS);
}

/* JointTransformerBlock.forward for block i (and its MMDiT-X attn2 when dual). */
static void joint_block(const mmdit_model *m, const mmdit_block *bl, int i, const acts *a, const dims *d,
                        const mmdit_hook *hook) {
    const int B = d->B, Tx = d->Tx, Tc = d->Tc, T = d->T, C = d->C, F = d->F;
    const int nx = bl->dual ? 9 : 6, nc = bl->context_pre_only ? 2 : 6;

    /* adaLN: emb = Linear(SiLU(temb)) chunked; image chunks shift, scale, gate (msa), shift, scale,
     * gate (mlp) [, shift2, scale2, gate2]; last-block text chunks scale, shift (AdaLayerNormContinuous). */
    linear(a->modx, a->stemb, &bl->norm1_linear, B, nx * C, C);
    linear(a->modc, a->stemb, &bl->norm1_context_linear, B, nc * C, C);
    if (bl->dual) k_layernorm(a->xn, a->x, NULL, NULL, B * Tx, C, MMDIT_EPS);  /* two modulations of one norm */
    for (int b = 0; b < B; b++) {
        const float *mx = a->modx + (int64_t)b * nx * C, *mc = a->modc + (int64_t)b * nc * C;
        float *xn = a->xn + (int64_t)b * Tx * C, *cn = a->cn + (int64_t)b * Tc * C;
        const float *xb = a->x + (int64_t)b * Tx * C, *cb = a->c + (int64_t)b * Tc * C;
        if (bl->dual) {
            k_modulate(a->xn2 + (int64_t)b * Tx * C, xn, mx + 6 * C, mx + 7 * C, Tx, C);
            k_modulate(xn, xn, mx, mx + C, Tx, C);
        } else {
            k_layernorm_modulate(xn, xb, mx, mx + C, Tx, C, MMDIT_EPS);
        }
        if (bl->context_pre_only) k_layernorm_modulate(cn, cb, mc + C, mc, Tc, C, MMDIT_EPS);
        else k_layernorm_modulate(cn, cb, mc, mc + C, Tc, C, MMDIT_EPS);
    }
    emit_block(hook, i, "norm1_hidden", a->xn, (int64_t)B * Tx * C);
    emit_block(hook, i, "norm1_context", a->cn, (int64_t)B * Tc * C);

    /* Joint attention: per batch item rows [0, Tx) image, [Tx, T) text. */
    for (int b = 0; b < B; b++) {
        const float *xn = a->xn + (int64_t)b * Tx * C, *cn = a->cn + (int64_t)b * Tc * C;
        int64_t bo = (int64_t)b * T * C, co = bo + (int64_t)Tx * C;
        linear_qkv(a->q + bo, a->k + bo, a->v + bo, xn, &bl->attn_to_q, &bl->attn_to_k, &bl->attn_to_v, Tx, C);
        linear_qkv(a->q + co, a->k + co, a->v + co, cn, &bl->attn_add_q_proj, &bl->attn_add_k_proj, &bl->attn_add_v_proj, Tc, C);
        if (m->cfg.qk_norm) {
            qk_norm(a->q + bo, &bl->attn_norm_q, Tx, d);
            qk_norm(a->k + bo, &bl->attn_norm_k, Tx, d);
            qk_norm(a->q + co, &bl->attn_norm_added_q, Tc, d);
            qk_norm(a->k + co, &bl->attn_norm_added_k, Tc, d);
        }
    }
    attn_params ap = {.B = B, .H = d->H, .Tq = T, .Tk = T, .D = d->D, .q_ld = C, .k_ld = C, .v_ld = C, .o_ld = C,
                      .q_bstride = (int64_t)T * C, .k_bstride = (int64_t)T * C, .v_bstride = (int64_t)T * C,
                      .o_bstride = (int64_t)T * C, .scale = 1.0f / sqrtf((float)d->D), .causal = 0, .bias = NULL};
    k_attention(a->o, a->q, a->k, a->v, &ap);
    for (int b = 0; b < B; b++) {
        int64_t bo = (int64_t)b * T * C;
        linear(a->ax + (int64_t)b * Tx * C, a->o + bo, &bl->attn_to_out_0, Tx, C, C);
        if (!bl->context_pre_only)
            linear(a->ac + (int64_t)b * Tc * C, a->o + bo + (int64_t)Tx * C, &bl->attn_to_add_out, Tc, C, C);
    }
    emit_block(hook, i, "attn_hidden", a->ax, (int64_t)B * Tx * C);
    if (!bl->context_pre_only) emit_block(hook, i, "attn_context", a->ac, (int64_t)B * Tc * C);

    /* Image stream: x += gate_msa * attn. */
    for (int b = 0; b < B; b++)
        k_gated_add(a->x + (int64_t)b * Tx * C, a->ax + (int64_t)b * Tx * C, a->modx + (int64_t)b * nx * C + 2 * C,
                    Tx, C);

    /* MMDiT-X: x += gate_msa2 * attn2(norm2 input), image-only self-attention. */
    if (bl->dual) {
        linear_qkv(a->q, a->k, a->v, a->xn2, &bl->attn2_to_q, &bl->attn2_to_k, &bl->attn2_to_v, B * Tx, C);
        if (m->cfg.qk_norm) {
            qk_norm(a->q, &bl->attn2_norm_q, B * Tx, d);
            qk_norm(a->k, &bl->attn2_norm_k, B * Tx, d);
        }
        attn_params ap2 = ap;
        ap2.Tq = ap2.Tk = Tx;
        ap2.q_bstride = ap2.k_bstride = ap2.v_bstride = ap2.o_bstride = (int64_t)Tx * C;
        k_attention(a->o, a->q, a->k, a->v, &ap2);
        linear(a->ax, a->o, &bl->attn2_to_out_0, B * Tx, C, C);
        emit_block(hook, i, "attn2_hidden", a->ax, (int64_t)B * Tx * C);
        for (int b = 0; b < B; b++)
            k_gated_add(a->x + (int64_t)b * Tx * C, a->ax + (int64_t)b * Tx * C,
                        a->modx + (int64_t)b * nx * C + 8 * C, Tx, C);
    }

    /* Image FF: x += gate_mlp * FF(LN(x) (1 + scale_mlp) + shift_mlp). */
    for (int b = 0; b < B; b++) {
        const float *mx = a->modx + (int64_t)b * nx * C;
        k_layernorm_modulate(a->xn + (int64_t)b * Tx * C, a->x + (int64_t)b * Tx * C, mx + 3 * C, mx + 4 * C, Tx, C, MMDIT_EPS);
    }
    feed_forward(a->ax, a->ffh, a->xn, &bl->ff_net_0_proj, &bl->ff_net_2, B * Tx, F, C);
    for (int b = 0; b < B; b++)
        k_gated_add(a->x + (int64_t)b * Tx * C, a->ax + (int64_t)b * Tx * C, a->modx + (int64_t)b * nx * C + 5 * C,
                    Tx, C);
    emit_block(hook, i, "hidden_out", a->x, (int64_t)B * Tx * C);

    if (bl->context_pre_only) return;
    /* Text stream: c += c_gate_msa * attn; c += c_gate_mlp * FF_context(LN(c) (1 + c_scale_mlp) + c_shift_mlp). */
    for (int b = 0; b < B; b++)
        k_gated_add(a->c + (int64_t)b * Tc * C, a->ac + (int64_t)b * Tc * C, a->modc + (int64_t)b * nc * C + 2 * C,
                    Tc, C);
    for (int b = 0; b < B; b++) {
        const float *mc = a->modc + (int64_t)b * nc * C;
        k_layernorm_modulate(a->cn + (int64_t)b * Tc * C, a->c + (int64_t)b * Tc * C, mc + 3 * C, mc + 4 * C, Tc, C, MMDIT_EPS);
    }
    feed_forward(a->ac, a->ffh, a->cn, &bl->ff_context_net_0_proj, &bl->ff_context_net_2, B * Tc, F, C);
    for (int b = 0; b < B; b++)
        k_gated_add(a->c + (int64_t)b * Tc * C, a->ac + (int64_t)b * Tc * C, a->modc + (int64_t)b * nc * C + 5 * C,
                    Tc, C);
    emit_block(hook, i, "context_out", a->c, (int64_t)B * Tc * C);
}

/* ================================================================================================ */
/* Forward                                                                                          */
/* ================================================================================================ */

/* Check the call's sizes against the model; errors name the limit that was crossed. */
static sd3_status check_inputs(const mmdit_model *m, int B, int H, int W, int S, const int *skip, int n_skip,
                               sd3_err *err) {
    const mmdit_config *c = &m->cfg;
    const int p = c->patch_size, M = c->pos_embed_max_size;
    if (B < 1 || H < 1 || W < 1 || S < 1)
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "mmdit: batch %d, latent %dx%d, text length %d: all must be >= 1",
                        B, H, W, S);
    if (H % p || W % p)
        return sd3_errf(err, SD3_ERR_INVALID_ARG,
                        "mmdit: latent size %dx%d is not a multiple of the patch size %d (image size must be a "
                        "multiple of %d pixels)",
                        H, W, p, 8 * p);
    if (H / p > M || W / p > M)
        return sd3_errf(err, SD3_ERR_INVALID_ARG,
                        "mmdit: latent size %dx%d gives a %dx%d patch grid, beyond pos_embed_max_size %d (largest "
                        "latent %dx%d, image %dx%d pixels)",
                        H, W, H / p, W / p, M, M * p, M * p, 8 * M * p, 8 * M * p);
    if ((int64_t)B * (H / p) * (W / p) > (1 << 24) || (int64_t)B * S > (1 << 24))
        return sd3_errf(err, SD3_ERR_NOMEM, "mmdit: batch %d x tokens is too large", B);
    if (n_skip < 0 || (n_skip > 0 && !skip))
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "mmdit: skip_layers list of %d entries is invalid", n_skip);
    for (int k = 0; k < n_skip; k++)
        if (skip[k] < 0 || skip[k] >= c->num_layers)
            return sd3_errf(err, SD3_ERR_INVALID_ARG, "mmdit: skip_layers[%d] = %d is outside the blocks [0, %d)", k,
                            skip[k], c->num_layers);
    return SD3_OK;
}

sd3_status mmdit_forward_hooked(const mmdit_model *m, const float *x, int B, int H, int W, const float *ctx,
                                int S, const float *pooled, const float *timestep, const int *skip_layers,
                                int n_skip, float *out, const mmdit_hook *hook, sd3_err *err) {
    SD3_ASSERT(m && m->blocks && x && ctx && pooled && timestep && out);
    sd3_status s = check_inputs(m, B, H, W, S, skip_layers, n_skip, err);
    if (s != SD3_OK) return s;
    const mmdit_config *cfg = &m->cfg;
    const int p = cfg->patch_size, Cin = cfg->in_channels, Cout = cfg->out_channels, M = cfg->pos_embed_max_size;
    const int h = H / p, w = W / p;
    dims d = {.B = B, .Tx = h * w, .Tc = S, .T = h * w + S, .C = cfg->num_attention_heads * cfg->attention_head_dim,
              .H = cfg->num_attention_heads, .D = cfg->attention_head_dim};
    d.F = 4 * d.C;
    const int C = d.C, Tx = d.Tx, Pin = Cin * p * p, Pout = Cout * p * p;
    acts a;
    float *buf = acts_alloc(&a, B, Tx, S, C, Pin, Pout);
    if (!buf)
        return sd3_errf(err, SD3_ERR_NOMEM, "mmdit: out of memory for activations (batch %d, %d+%d tokens, width %d)",
                        B, Tx, S, C);

    /* Patch embedding: Conv2d(k = s = p) as a linear over (c, p, q)-ordered patches, then + the centre
     * crop of the M x M sin-cos table. */
    for (int b = 0; b < B; b++)
        for (int i = 0; i < h; i++)
            for (int j = 0; j < w; j++) {
                float *row = a.patches + ((int64_t)b * Tx + (int64_t)i * w + j) * Pin;
                for (int c = 0; c < Cin; c++)
                    for (int pi = 0; pi < p; pi++)
                        for (int pj = 0; pj < p; pj++)
                            row[(c * p + pi) * p + pj] = x[(((int64_t)b * Cin + c) * H + i * p + pi) * W + j * p + pj];
            }
    tensor pw = m->pos_embed_proj.weight; /* [C, Cin, p, p] viewed as [C, Cin*p*p] */
    pw.ndim = 2;
    pw.shape[1] = Pin;
    k_linear(a.x, a.patches, &pw, &m->pos_embed_proj.bias, B * Tx, C, Pin);
    const int top = (M - h) / 2, left = (M - w) / 2;
    for (int i = 0; i < h; i++) {
        float *pos = a.xn; /* one row of the table in F32 (xn is free here) */
        tensor_to_f32(&m->pos_embed_pos_embed, ((int64_t)(top + i) * M + left) * C, (int64_t)w * C, pos);
        for (int b = 0; b < B; b++) {
            float *xr = a.x + ((int64_t)b * Tx + (int64_t)i * w) * C;
            k_add(xr, xr, pos, (size_t)w * C);
        }
    }
    emit(hook, "patch_embed_plus_pos", a.x, (int64_t)B * Tx * C);

    /* temb = TimestepEmbedding(sinusoid(t)) + PixArtAlphaTextProjection(pooled). */
    mmdit_timestep_sinusoid(a.sin, timestep, B);
    emit(hook, "timestep_sinusoid", a.sin, (int64_t)B * MMDIT_FREQ_DIM);
    linear(a.t1, a.sin, &m->time_text_embed_timestep_embedder_linear_1, B, C, MMDIT_FREQ_DIM);
    k_silu(a.t1, a.t1, (size_t)B * C);
    linear(a.temb, a.t1, &m->time_text_embed_timestep_embedder_linear_2, B, C, C);
    emit(hook, "timestep_embedding", a.temb, (int64_t)B * C);
    linear(a.t1, pooled, &m->time_text_embed_text_embedder_linear_1, B, C, cfg->pooled_projection_dim);
    k_silu(a.t1, a.t1, (size_t)B * C);
    linear(a.t2, a.t1, &m->time_text_embed_text_embedder_linear_2, B, C, C);
    emit(hook, "pooled_embedding", a.t2, (int64_t)B * C);
    k_add(a.temb, a.temb, a.t2, (size_t)B * C);
    emit(hook, "temb", a.temb, (int64_t)B * C);
    k_silu(a.stemb, a.temb, (size_t)B * C);

    linear(a.c, ctx, &m->context_embedder, B * S, C, cfg->joint_attention_dim);
    emit(hook, "context_after_caption_projection", a.c, (int64_t)B * S * C);

    /* Layer streaming (mmdit.h): block i + 1 is read ahead while block i computes; block i leaves the
     * resident set once done. The next block to run (skipped ones are neither read nor dropped). */
    const int L = cfg->num_layers;
    int first = 1;
    for (int i = 0; i < L; i++) {
        int skip = 0;
        for (int k = 0; k < n_skip; k++) skip |= skip_layers[k] == i;
        if (skip) continue;
        if (m->stream_layers) {
            if (first) mmdit_stream_advise(m, i, MMDIT_STREAM_PREFETCH);   /* the first one run */
            first = 0;
            int next;
            for (next = i + 1; next < L; next++) {
                int sk = 0;
                for (int k = 0; k < n_skip; k++) sk |= skip_layers[k] == next;
                if (!sk) break;
            }
            if (next < L) mmdit_stream_advise(m, next, MMDIT_STREAM_PREFETCH);
        }
        joint_block(m, &m->blocks[i], i, &a, &d, hook);
        if (m->stream_layers) mmdit_stream_advise(m, i, MMDIT_STREAM_RELEASE);
    }

    /* norm_out: AdaLayerNormContinuous, (scale, shift) = chunk(Linear(SiLU(temb)), 2), scale first. */
    linear(a.modx, a.stemb, &m->norm_out_linear, B, 2 * C, C);
    k_layernorm(a.xn, a.x, NULL, NULL, B * Tx, C, MMDIT_EPS);
    for (int b = 0; b < B; b++) {
        const float *mo = a.modx + (int64_t)b * 2 * C;
        k_modulate(a.xn + (int64_t)b * Tx * C, a.xn + (int64_t)b * Tx * C, mo + C, mo, Tx, C);
    }
    emit(hook, "norm_out", a.xn, (int64_t)B * Tx * C);
    linear(a.po, a.xn, &m->proj_out, B * Tx, Pout, C);
    emit(hook, "proj_out", a.po, (int64_t)B * Tx * Pout);

    /* Unpatchify: token (i, j) holds a p x p x Cout patch in (p, q, c) order -> out[c, i p + pi, j p + pj]. */
    for (int b = 0; b < B; b++)
        for (int i = 0; i < h; i++)
            for (int j = 0; j < w; j++) {
                const float *row = a.po + ((int64_t)b * Tx + (int64_t)i * w + j) * Pout;
                for (int pi = 0; pi < p; pi++)
                    for (int pj = 0; pj < p; pj++)
                        for (int c = 0; c < Cout; c++)
                            out[(((int64_t)b * Cout + c) * H + i * p + pi) * W + j * p + pj] = row[(pi * p + pj) * Cout + c];
            }
    sd3_free(buf);
    return SD3_OK;
}

sd3_status mmdit_forward(const mmdit_model *m, const float *x, int B, int H, int W, const float *ctx, int S,
                         const float *pooled, const float *timestep, const int *skip_layers, int n_skip,
                         float *out, sd3_err *err) {
    return mmdit_forward_hooked(m, x, B, H, W, ctx, S, pooled, timestep, skip_layers, n_skip, out, NULL, err);
}

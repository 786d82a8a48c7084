/* encode_prompt.c — diffusers' SD3 encode_prompt over our tokenizers and text encoders (see the header). */
#include <string.h>
#include "io/json_util.h"
#include "pipeline/components.h"
#include "pipeline/encode_prompt.h"
#include "quant/quant_models.h"
#include "lora/lora.h"
#include "lora/lora_clip.h"
#include "text/clip.h"
#include "text/clip_tok.h"
#include "text/t5.h"
#include "text/t5_tok.h"

#define CLIP_T 77

void encode_out_free(encode_out *o) {
    sd3_free(o->pe);
    sd3_free(o->pooled);
    sd3_free(o->npe);
    sd3_free(o->npooled);
    memset(o, 0, sizeof *o);
}

/* The texts one encoder sees: the positive prompts, then (with CFG) the negatives. */
typedef struct texts {
    int n;                  /* rows: n_prompts, or 2 * n_prompts with CFG */
    const char *t[2 * 256];
} texts;

#define MAX_PROMPTS 256

/* Rows for encoder e (0 = CLIP-L, 1 = CLIP-G, 2 = T5) with diffusers' defaulting. */
static void texts_for(const encode_req *r, int e, texts *out) {
    out->n = 0;
    for (int i = 0; i < r->n_prompts; i++) {
        const char *p = r->prompt[i];
        if (e == 1 && r->prompt_2 && r->prompt_2[i]) p = r->prompt_2[i];
        if (e == 2 && r->prompt_3 && r->prompt_3[i]) p = r->prompt_3[i];
        out->t[out->n++] = p;
    }
    if (!r->cfg) return;
    for (int i = 0; i < r->n_prompts; i++) {
        const char *n = (r->negative && r->negative[i]) ? r->negative[i] : "";
        if (e == 1 && r->negative_2 && r->negative_2[i]) n = r->negative_2[i];
        if (e == 2 && r->negative_3 && r->negative_3[i]) n = r->negative_3[i];
        out->t[out->n++] = n;
    }
}

/* Load one CLIP (tokenizer folder tok_name, model folder enc_name), tokenize rows, and write for each
 * row the chosen hidden state [77, C] into hid (row stride 77*C) and text_embeds [P] into pooled.
 * Positive rows (the first n_pos) use hidden index hi_pos; negatives use -2. */
static sd3_status run_clip(const model_store *ms, const encode_req *r, const char *tok_name, const char *enc_name,
                           const texts *tx, int n_pos, int hi_pos, float **hid_out, float **pooled_out, int *C_out,
                           int *P_out, sd3_err *err) {
    char dir[MS_PATH_MAX];
    sd3_status s;
    clip_tok tok;
    memset(&tok, 0, sizeof tok);
    clip_model m;
    memset(&m, 0, sizeof m);
    comp_te te;
    memset(&te, 0, sizeof te);
    int64_t *ids = NULL;
    float *hid = NULL, *pooled = NULL, *tmp = NULL;
    lora_clip_state *lst = NULL;

    /* folder, single file or override (components.h) */
    if ((s = comp_tokenizer_dir(ms, comp_role_of(enc_name), dir, sizeof dir, err))) goto done;
    if ((s = clip_tok_load(&tok, dir, err))) goto done;
    ids = malloc(sizeof(int64_t) * CLIP_T * (size_t)tx->n);
    if (!ids) { s = sd3_errf(err, SD3_ERR_NOMEM, "out of memory"); goto done; }
    for (int i = 0; i < tx->n; i++) {
        int64_t mask[CLIP_T];
        if ((s = clip_tok_encode(&tok, tx->t[i], ids + (size_t)i * CLIP_T, mask, err))) {
            sd3_err_prefix(err, "%s (prompt %d)", tok_name, i);
            goto done;
        }
    }
    if ((s = comp_te_open(ms, comp_role_of(enc_name), &te, err))) goto done;
    if ((s = clip_load(&m, &te.w, te.config, enc_name, err))) goto done;
    /* text-encoder LoRA modules, fused while this encoder runs (diffusers applies the same scale) */
    for (int k = 0; k < r->n_loras; k++) {
        lora_file *lf = NULL;
        if ((s = lora_open(&lf, r->loras[k], err))) goto done;
        lora_target which = comp_role_of(enc_name) == TE_ROLE_CLIP_L ? LORA_TARGET_CLIP_L : LORA_TARGET_CLIP_G;
        if (lora_count(lf, which) > 0)
            s = lora_clip_fuse(&m, which, lf, r->lora_scales ? r->lora_scales[k] : 1.0f, r->lora_lenient, &lst, err);
        lora_close(lf);
        if (s) goto done;
    }
    int C = m.cfg.hidden_size, P = m.cfg.projection_dim;
    hid = sd3_malloc(sizeof(float) * (size_t)tx->n * CLIP_T * C);
    pooled = sd3_malloc(sizeof(float) * (size_t)tx->n * P);
    if (!hid || !pooled) { s = sd3_errf(err, SD3_ERR_NOMEM, "out of memory for %s activations", enc_name); goto done; }
    /* positives (maybe with clip_skip) and negatives (always -2) */
    if ((s = clip_forward(&m, ids, n_pos, CLIP_T, hi_pos, hid, NULL, pooled, err))) goto done;
    if (tx->n > n_pos &&
        (s = clip_forward(&m, ids + (size_t)n_pos * CLIP_T, tx->n - n_pos, CLIP_T, -2, hid + (size_t)n_pos * CLIP_T * C, NULL,
                          pooled + (size_t)n_pos * P, err)))
        goto done;
    *hid_out = hid;
    *pooled_out = pooled;
    *C_out = C;
    *P_out = P;
    hid = pooled = NULL;
done:
    sd3_free(tmp);
    sd3_free(hid);
    sd3_free(pooled);
    free(ids);
    lora_clip_unfuse(&m, &lst);
    clip_free(&m);
    comp_te_close(&te);
    clip_tok_free(&tok);
    return s;
}

/* Load T5 and its tokenizer, and run every row: out [rows, T, d]. */
static sd3_status run_t5(const model_store *ms, const texts *tx, int T, int quant, float **out, int *d_out, sd3_err *err) {
    sd3_status s;
    t5_tok tok;
    memset(&tok, 0, sizeof tok);
    t5_model m;
    memset(&m, 0, sizeof m);
    comp_te te;
    memset(&te, 0, sizeof te);
    int64_t *ids = NULL, *mask = NULL;
    float *h = NULL;

    char td[MS_PATH_MAX];
    if ((s = comp_tokenizer_dir(ms, TE_ROLE_T5, td, sizeof td, err))) goto done;
    if ((s = t5_tok_load(&tok, td, err))) goto done;
    ids = malloc(sizeof(int64_t) * (size_t)T * tx->n);
    mask = malloc(sizeof(int64_t) * (size_t)T);
    if (!ids || !mask) { s = sd3_errf(err, SD3_ERR_NOMEM, "out of memory"); goto done; }
    for (int i = 0; i < tx->n; i++)
        if ((s = t5_tok_encode(&tok, tx->t[i], T, ids + (size_t)i * T, mask, err))) {
            sd3_err_prefix(err, "tokenizer_3 (prompt %d)", i);
            goto done;
        }
    /* keep_loaded with a T5 quantised at load: the quantised model stays in the context (comp_res.t5q) */
    comp_res *res = comp_res_of(ms);
    int keep_q = quant && res && res->keep;
    const t5_model *mp = &m;
    if (keep_q && res->have_t5q && res->t5q_bits == quant) {
        mp = &res->t5q;
    } else {
        if ((s = comp_te_open(ms, TE_ROLE_T5, &te, err))) goto done;
        if ((s = t5_load(&m, &te.w, te.config, "text_encoder_3", err))) goto done;
        if (quant) {   /* owned int8/int4 copies of the Linears; the float pages of the mapping can go */
            if ((s = quant_t5(&m, quant, &te.w, NULL, err))) goto done;
            weights_release_pages(&te.w);
        }
        if (keep_q && te.resident) {   /* hand the quantised model to the context */
            if (res->have_t5q) t5_free(&res->t5q);
            res->t5q = m;
            res->have_t5q = 1;
            res->t5q_bits = quant;
            res->t5q_made++;
            memset(&m, 0, sizeof m);
            mp = &res->t5q;
        }
    }
    int d = mp->cfg.d_model;
    h = sd3_malloc(sizeof(float) * (size_t)tx->n * T * d);
    if (!h) { s = sd3_errf(err, SD3_ERR_NOMEM, "out of memory for T5 activations"); goto done; }
    if ((s = t5_forward(mp, ids, tx->n, T, h, err))) goto done;
    *out = h;
    *d_out = d;
    h = NULL;
done:
    sd3_free(h);
    free(ids);
    free(mask);
    t5_free(&m);
    comp_te_close(&te);
    t5_tok_free(&tok);
    return s;
}

/* The joint width J: the transformer's joint_attention_dim if its config is there, else T5's d_model,
 * else 4096 (SD3). */
static int joint_width(const model_store *ms, int t5_d) {
    if (t5_d > 0) return t5_d;
    return comp_joint_width(ms);
}

sd3_status encode_prompt(const model_store *ms, const encode_req *r, encode_out *o, sd3_err *err) {
    memset(o, 0, sizeof *o);
    if (r->n_prompts < 1 || r->n_prompts > MAX_PROMPTS || !r->prompt)
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "encode_prompt: %d prompts (1..%d)", r->n_prompts, MAX_PROMPTS);
    if (r->num_images_per_prompt < 1) return sd3_errf(err, SD3_ERR_INVALID_ARG, "num_images_per_prompt must be >= 1");
    if (r->clip_skip < 0) return sd3_errf(err, SD3_ERR_INVALID_ARG, "clip_skip must be >= 0");
    int use_t5 = !r->no_t5 && comp_has_t5(ms);
    if (use_t5 && (r->max_sequence_length < 1 || r->max_sequence_length > 512))
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "max_sequence_length %d: must be in [1, 512]", r->max_sequence_length);

    sd3_status s;
    int n = r->n_prompts, rows = r->cfg ? 2 * n : n;
    float *hl = NULL, *pl = NULL, *hg = NULL, *pg = NULL, *ht = NULL;
    int Cl = 0, Pl = 0, Cg = 0, Pg = 0, d5 = 0;
    texts tx;

    texts_for(r, 0, &tx);
    if ((s = run_clip(ms, r, "tokenizer", "text_encoder", &tx, n, -(r->clip_skip + 2), &hl, &pl, &Cl, &Pl, err))) goto done;
    texts_for(r, 1, &tx);
    if ((s = run_clip(ms, r, "tokenizer_2", "text_encoder_2", &tx, n, -(r->clip_skip + 2), &hg, &pg, &Cg, &Pg, err))) goto done;
    int T5T = use_t5 ? r->max_sequence_length : CLIP_T;
    if (use_t5) {
        texts_for(r, 2, &tx);
        if ((s = run_t5(ms, &tx, T5T, r->t5_quant, &ht, &d5, err))) goto done;
    }
    int J = joint_width(ms, d5);
    if (Cl + Cg > J) {
        s = sd3_errf(err, SD3_ERR_SHAPE, "text encoders: CLIP widths %d + %d exceed the joint width %d", Cl, Cg, J);
        goto done;
    }

    int ni = r->num_images_per_prompt, B = n * ni, S = CLIP_T + T5T, P = Pl + Pg;
    o->B = B;
    o->S = S;
    o->J = J;
    o->P = P;
    for (int neg = 0; neg < (r->cfg ? 2 : 1); neg++) {
        float *pe = sd3_calloc((size_t)B * S * J, sizeof(float));
        float *pooled = sd3_calloc((size_t)B * P, sizeof(float));
        if (!pe || !pooled) {
            sd3_free(pe);
            sd3_free(pooled);
            s = sd3_errf(err, SD3_ERR_NOMEM, "out of memory for prompt embeddings");
            goto done;
        }
        if (neg) { o->npe = pe; o->npooled = pooled; } else { o->pe = pe; o->pooled = pooled; }
        for (int i = 0; i < n; i++) {
            int src = neg * n + i;  /* row of the encoders' batch */
            for (int k = 0; k < ni; k++) {
                float *dst = pe + (size_t)(i * ni + k) * S * J;
                for (int t = 0; t < CLIP_T; t++) {
                    memcpy(dst + (size_t)t * J, hl + ((size_t)src * CLIP_T + t) * Cl, sizeof(float) * Cl);
                    memcpy(dst + (size_t)t * J + Cl, hg + ((size_t)src * CLIP_T + t) * Cg, sizeof(float) * Cg);
                }
                if (ht) memcpy(dst + (size_t)CLIP_T * J, ht + (size_t)src * T5T * J, sizeof(float) * (size_t)T5T * J);
                /* diffusers repeats the 2-D pooled tensor with .repeat(1, n, 1): that TILES the batch
                 * (rows p0, p1, p0, p1, ...) while prompt_embeds are interleaved (p0, p0, p1, p1). We
                 * follow it, since the image a user gets depends on it when batch and n both exceed 1. */
                float *pd = pooled + (size_t)(k * n + i) * P;
                memcpy(pd, pl + (size_t)src * Pl, sizeof(float) * Pl);
                memcpy(pd + Pl, pg + (size_t)src * Pg, sizeof(float) * Pg);
            }
        }
    }
    s = SD3_OK;
done:
    (void)rows;
    sd3_free(hl);
    sd3_free(pl);
    sd3_free(hg);
    sd3_free(pg);
    sd3_free(ht);
    if (s) encode_out_free(o);
    return s;
}

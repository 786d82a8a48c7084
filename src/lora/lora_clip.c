/*
 * lora_clip.c — LoRA for the CLIP text encoders by fusing (see lora_clip.h): map the file's CLIP modules
 * onto the clip_model's Linear weights, check shapes, build every fused copy, then swap them in.
 */
#include <math.h>
#include <string.h>
#include "lora/lora_clip.h"
#include "lora/lora_internal.h"

/* A replaced weight: where it lives in the model, the view as loaded, and our copy. */
typedef struct clip_saved {
    tensor *slot;
    tensor original;
    float *copy;
} clip_saved;

struct lora_clip_state {
    clip_model *m;
    clip_saved *saved;
    int n, cap;
};

/* A Linear weight of the model with its module path. */
typedef struct clip_lin {
    char name[96];
    tensor *w;
} clip_lin;

/* Per layer: module path under text_model.encoder.layers.{i}. and the weight's offset in clip_layer. */
static const struct { const char *mod; size_t off; } LAYER_LINEARS[] = {
    {"self_attn.q_proj", offsetof(clip_layer, q_w)},   {"self_attn.k_proj", offsetof(clip_layer, k_w)},
    {"self_attn.v_proj", offsetof(clip_layer, v_w)},   {"self_attn.out_proj", offsetof(clip_layer, o_w)},
    {"mlp.fc1", offsetof(clip_layer, fc1_w)},          {"mlp.fc2", offsetof(clip_layer, fc2_w)},
};
#define N_LAYER_LINEARS ((int)(sizeof LAYER_LINEARS / sizeof LAYER_LINEARS[0]))

/* Every Linear of m (6 per layer + text_projection) into out (sized by the caller). */
static int clip_linears(clip_model *m, clip_lin *out) {
    int n = 0;
    for (int i = 0; i < m->cfg.num_hidden_layers; i++)
        for (int k = 0; k < N_LAYER_LINEARS; k++, n++) {
            snprintf(out[n].name, sizeof out[n].name, "text_model.encoder.layers.%d.%s", i, LAYER_LINEARS[k].mod);
            out[n].w = (tensor *)((char *)&m->layers[i] + LAYER_LINEARS[k].off);
        }
    snprintf(out[n].name, sizeof out[n].name, "text_projection");
    out[n++].w = &m->proj_w;
    return n;
}

/* One module onto one weight. */
typedef struct clip_plan {
    const lora_module *md;
    tensor *w;
} clip_plan;

sd3_status lora_clip_fuse(clip_model *m, lora_target which, const lora_file *f, float scale, int lenient,
                          lora_clip_state **stp, sd3_err *err) {
    SD3_ASSERT(m && f && stp);
    if (which != LORA_TARGET_CLIP_L && which != LORA_TARGET_CLIP_G)
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: lora_clip_fuse needs LORA_TARGET_CLIP_L or _CLIP_G", f->path);
    if (!m->layers) return sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: CLIP model is not loaded", f->path);
    if (*stp && (*stp)->m != m)
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: LoRA state belongs to another CLIP model", f->path);
    if (!isfinite(scale)) return sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: LoRA scale %g is not finite", f->path, scale);
    const int n_lin = m->cfg.num_hidden_layers * N_LAYER_LINEARS + 1;
    clip_lin *lins = sd3_calloc((size_t)n_lin, sizeof *lins);
    clip_plan *plans = sd3_calloc((size_t)f->n_mods + 1, sizeof *plans);
    const char **unmatched = sd3_calloc((size_t)f->n_mods + 1, sizeof *unmatched);
    mmdit_lora_adapter *ads = sd3_calloc((size_t)f->n_mods + 1, sizeof *ads);
    float **copies = sd3_calloc((size_t)n_lin, sizeof *copies);
    sd3_status s = SD3_OK;
    int n_plans = 0, n_unmatched = 0, n_skipped = 0;
    if (!lins || !plans || !unmatched || !ads || !copies) {
        s = sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", f->path);
        goto done;
    }
    clip_linears(m, lins);
    for (int i = 0; i < f->n_mods; i++) {
        const lora_module *md = &f->mods[i];
        if (md->target != which) continue;
        if (!md->key_a || !md->key_b || md->has_dora) {
            if (!lenient) {
                s = sd3_errf(err, md->has_dora && md->key_a && md->key_b ? SD3_ERR_UNSUPPORTED : SD3_ERR_FORMAT,
                             "%s: LoRA module '%s' %s", f->path, md->stem,
                             md->key_a && md->key_b ? "is a DoRA (.dora_scale), which is not supported"
                                                    : "lacks its down (A) or up (B) tensor");
                goto done;
            }
            if (!md->key_a || !md->key_b) {
                n_skipped++;
                continue;
            }
        }
        tensor *w = NULL;
        for (int j = 0; j < n_lin && !w; j++) {
            int same = md->naming == LORA_NAME_DIFFUSERS ? !strcmp(md->path, lins[j].name)
                                                         : lora_us_equal(md->path, lins[j].name);
            if (same) w = lins[j].w;
        }
        if (!w) {
            unmatched[n_unmatched++] = md->stem;
            continue;
        }
        const int64_t N = w->shape[0], K = w->shape[1], r = md->A.shape[0];
        if (md->A.shape[1] != K || md->B.shape[0] != N || md->B.shape[1] != r) {
            char sa[64], sb[64];
            s = sd3_errf(err, SD3_ERR_SHAPE,
                         "%s: LoRA module '%s' does not fit %s: '%s' is %s and '%s' is %s, but the weight is "
                         "[%lld, %lld], so A must be [r, %lld] and B [%lld, r] with the same rank r",
                         f->path, md->stem, m->label, md->key_a, tensor_shape_str(&md->A, sa, sizeof sa), md->key_b,
                         tensor_shape_str(&md->B, sb, sizeof sb), (long long)N, (long long)K, (long long)K,
                         (long long)N);
            goto done;
        }
        if (w->dt != DT_F32 && w->dt != DT_F16 && w->dt != DT_BF16) {
            s = sd3_errf(err, SD3_ERR_UNSUPPORTED, "%s: cannot fuse LoRA '%s' into a %s weight", f->path, md->stem,
                         dtype_name(w->dt));
            goto done;
        }
        plans[n_plans++] = (clip_plan){md, w};
    }
    char list[1024];
    if (n_unmatched) {
        lora_name_list(list, sizeof list, unmatched, n_unmatched);
        if (!lenient) {
            s = sd3_errf(err, SD3_ERR_NOT_FOUND, "%s: %d LoRA module(s) match no Linear of %s: %s", f->path,
                         n_unmatched, m->label, list);
            goto done;
        }
        LOG_WARN("%s: skipping %d LoRA module(s) that match no Linear of %s: %s", f->path, n_unmatched, m->label, list);
    }
    if (n_skipped) LOG_WARN("%s: skipping %d incomplete LoRA module(s) for %s", f->path, n_skipped, m->label);
    if (!n_plans) goto done;

    /* Build the fused copies (one per weight, every module on it chained), then reserve and swap in. */
    for (int j = 0; j < n_lin; j++) {
        mmdit_lora_adapter *head = NULL, **tail = &head;
        for (int i = 0; i < n_plans; i++) {
            if (plans[i].w != lins[j].w) continue;
            mmdit_lora_adapter *ad = &ads[i];
            ad->A = plans[i].md->A;
            ad->B = plans[i].md->B;
            ad->scale = scale * plans[i].md->alpha / (float)plans[i].md->A.shape[0];
            *tail = ad;
            tail = &ad->next;
        }
        if (head && !(copies[j] = lora_fused_copy(lins[j].w, head))) {
            s = sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory fusing into %s", f->path, m->label);
            goto done;
        }
    }
    lora_clip_state *st = *stp;
    if (!st && !(st = sd3_calloc(1, sizeof *st))) {
        s = sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", f->path);
        goto done;
    }
    st->m = m;
    *stp = st;
    if (st->n + n_lin > st->cap) {
        clip_saved *ns = sd3_calloc((size_t)(st->n + n_lin), sizeof *ns);
        if (!ns) {
            s = sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", f->path);
            goto done;
        }
        if (st->n) memcpy(ns, st->saved, (size_t)st->n * sizeof *ns);
        sd3_free(st->saved);
        st->saved = ns;
        st->cap = st->n + n_lin;
    }
    for (int j = 0; j < n_lin; j++) {
        if (!copies[j]) continue;
        clip_saved *sv = NULL;
        for (int k = 0; k < st->n && !sv; k++)
            if (st->saved[k].slot == lins[j].w) sv = &st->saved[k];
        if (sv) {
            sd3_free(sv->copy); /* our previous copy; the original stays saved */
        } else {
            sv = &st->saved[st->n++];
            sv->slot = lins[j].w;
            sv->original = *lins[j].w;
        }
        sv->copy = copies[j];
        copies[j] = NULL;
        tensor nw;
        memset(&nw, 0, sizeof nw);
        nw.dt = DT_F32;
        nw.ndim = 2;
        nw.shape[0] = sv->original.shape[0];
        nw.shape[1] = sv->original.shape[1];
        nw.data = sv->copy; /* not marked owned: the state frees it */
        *lins[j].w = nw;
    }
    LOG_INFO("%s: %d LoRA module(s) fused into %s at scale %g", f->path, n_plans, m->label, scale);

done:
    for (int j = 0; copies && j < n_lin; j++) sd3_free(copies[j]);
    sd3_free(copies);
    sd3_free(ads);
    sd3_free(unmatched);
    sd3_free(plans);
    sd3_free(lins);
    return s;
}

void lora_clip_unfuse(clip_model *m, lora_clip_state **stp) {
    lora_clip_state *st = stp ? *stp : NULL;
    if (!st) return;
    for (int k = 0; k < st->n; k++) {
        if (m && m == st->m) *st->saved[k].slot = st->saved[k].original;
        sd3_free(st->saved[k].copy);
    }
    sd3_free(st->saved);
    sd3_free(st);
    *stp = NULL;
}

/*
 * lora_train.c — the trainable LoRA set (see lora_train.h): target matching as peft, gaussian init,
 * loading and saving in the script's key format.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "train/lora_train.h"

/* Module suffixes (after "transformer_blocks.N.") whose gradient the training backward carries. */
static const char *const k_trainable[] = {
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
    "attn.add_v_proj", "attn.to_add_out", "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
};

/* peft's match: name == target, or name ends with "." + target. */
static int peft_match(const char *name, const char *target) {
    size_t n = strlen(name), t = strlen(target);
    if (n == t) return !strcmp(name, target);
    return n > t && name[n - t - 1] == '.' && !strcmp(name + n - t, target);
}

/* Block index of "transformer_blocks.N.rest" (rest returned), or -1. */
static int block_of(const char *name, const char **rest) {
    const char *pre = "transformer_blocks.";
    if (strncmp(name, pre, strlen(pre))) return -1;
    char *end;
    long b = strtol(name + strlen(pre), &end, 10);
    if (end == name + strlen(pre) || *end != '.') return -1;
    *rest = end + 1;
    return (int)b;
}

/* Split a comma list into trimmed items (in place in buf); returns the count (at most cap). */
static int split_csv(char *buf, char **items, int cap) {
    int n = 0;
    for (char *tok = strtok(buf, ","); tok && n < cap; tok = strtok(NULL, ",")) {
        while (*tok == ' ' || *tok == '\t') tok++;
        char *e = tok + strlen(tok);
        while (e > tok && (e[-1] == ' ' || e[-1] == '\t')) *--e = 0;
        if (*tok) items[n++] = tok;
    }
    return n;
}

/* Free one module's buffers. */
static void mod_free(lt_module *md) {
    sd3_free(md->A), sd3_free(md->B), sd3_free(md->dA), sd3_free(md->dB);
    sd3_free(md->mA), sd3_free(md->vA), sd3_free(md->mB), sd3_free(md->vB), sd3_free(md->h);
}

sd3_status lt_create(lt_set *L, const mmdit_model *m, int rank, float alpha, const char *layers, const char *blocks,
                     sd3_err *err) {
    memset(L, 0, sizeof *L);
    if (rank < 1 || rank > 4096 || !(alpha > 0))
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "lora: rank %d / alpha %g out of range", rank, alpha);
    char lbuf[2048], bbuf[2048];
    char *targets[64], *bitems[MMDIT_MAX_LAYERS];
    snprintf(lbuf, sizeof lbuf, "%s", layers ? layers : LT_DEFAULT_LAYERS);
    int nt = split_csv(lbuf, targets, 64), nb = 0;
    if (nt == 0) return sd3_errf(err, SD3_ERR_INVALID_ARG, "lora: --lora_layers names no module");
    int want_block[MMDIT_MAX_LAYERS];
    for (int i = 0; i < MMDIT_MAX_LAYERS; i++) want_block[i] = blocks == NULL;
    if (blocks) {
        snprintf(bbuf, sizeof bbuf, "%s", blocks);
        nb = split_csv(bbuf, bitems, MMDIT_MAX_LAYERS);
        for (int i = 0; i < nb; i++) {
            char *end;
            long b = strtol(bitems[i], &end, 10);
            if (*end || b < 0 || b >= m->cfg.num_layers)
                return sd3_errf(err, SD3_ERR_INVALID_ARG, "lora: --lora_blocks item '%s' is not a block in [0, %d)",
                                bitems[i], m->cfg.num_layers);
            want_block[b] = 1;
        }
    }
    int nl = mmdit_list_linears((mmdit_model *)m, NULL, 0);
    mmdit_named_linear *lins = sd3_calloc((size_t)nl, sizeof *lins);
    L->mods = sd3_calloc((size_t)(nl ? nl : 1), sizeof *L->mods);
    if (!lins || !L->mods) {
        sd3_free(lins);
        lt_free(L);
        return sd3_errf(err, SD3_ERR_NOMEM, "lora: out of memory");
    }
    mmdit_list_linears((mmdit_model *)m, lins, nl);
    int used[64] = {0};
    sd3_status st = SD3_OK;
    for (int j = 0; j < nl && st == SD3_OK; j++) {
        const char *name = lins[j].diffusers, *rest = NULL;
        int hit = 0;
        for (int t = 0; t < nt; t++)
            if (peft_match(name, targets[t])) hit = 1, used[t] = 1;
        if (!hit) continue;
        int b = block_of(name, &rest);
        if (b >= 0 && !want_block[b]) continue;
        int ok = 0;
        for (size_t k = 0; b >= 0 && k < sizeof k_trainable / sizeof k_trainable[0]; k++) ok |= !strcmp(rest, k_trainable[k]);
        if (!ok) {
            st = sd3_errf(err, SD3_ERR_UNSUPPORTED,
                          "lora: training a LoRA on '%s' is not supported (trainable: the joint blocks' attn.* and "
                          "attn2.* projections and ff / ff_context Linears)",
                          name);
            break;
        }
        lt_module *md = &L->mods[L->n++];
        snprintf(md->name, sizeof md->name, "%s", name);
        md->lin = lins[j].lin;
        md->block = b;
        md->N = (int)lins[j].lin->weight.shape[0];
        md->K = (int)lins[j].lin->weight.shape[1];
        md->r = rank;
        md->s = alpha / (float)rank;
        size_t na = (size_t)rank * md->K, nbb = (size_t)md->N * rank;
        md->A = sd3_calloc(na, 4), md->dA = sd3_calloc(na, 4), md->mA = sd3_calloc(na, 4), md->vA = sd3_calloc(na, 4);
        md->B = sd3_calloc(nbb, 4), md->dB = sd3_calloc(nbb, 4), md->mB = sd3_calloc(nbb, 4), md->vB = sd3_calloc(nbb, 4);
        if (!md->A || !md->dA || !md->mA || !md->vA || !md->B || !md->dB || !md->mB || !md->vB)
            st = sd3_errf(err, SD3_ERR_NOMEM, "lora: out of memory for %s", name);
    }
    for (int t = 0; st == SD3_OK && t < nt; t++)
        if (!used[t])
            st = sd3_errf(err, SD3_ERR_INVALID_ARG, "lora: target module '%s' matches no module of the transformer",
                          targets[t]);
    if (st == SD3_OK && L->n == 0)
        st = sd3_errf(err, SD3_ERR_INVALID_ARG, "lora: the targets and --lora_blocks select no module");
    sd3_free(lins);
    if (st != SD3_OK) {
        lt_free(L);
        return st;
    }
    L->rank = rank;
    L->alpha = alpha;
    return SD3_OK;
}

void lt_free(lt_set *L) {
    for (int i = 0; L->mods && i < L->n; i++) mod_free(&L->mods[i]);
    sd3_free(L->mods);
    memset(L, 0, sizeof *L);
}

void lt_init_gaussian(lt_set *L, torch_gen *g) {
    for (int i = 0; i < L->n; i++) {
        lt_module *md = &L->mods[i];
        tgen_normal(g, md->A, (int64_t)md->r * md->K, 0.0f, 1.0f / (float)md->r);
        memset(md->B, 0, sizeof(float) * (size_t)md->N * md->r);
    }
}

/* Copy one factor from f into dst after checking its shape. */
static sd3_status load_one(const st_file *f, const char *key, float *dst, int64_t d0, int64_t d1, sd3_err *err) {
    tensor t;
    sd3_status s = st_get(f, key, &t, err);
    if (s != SD3_OK) return s;
    if (t.ndim != 2 || t.shape[0] != d0 || t.shape[1] != d1)
        return sd3_errf(err, SD3_ERR_FORMAT, "lora: %s has shape %s, expected [%lld, %lld]", key,
                        t.ndim == 2 ? "other" : "of another rank", (long long)d0, (long long)d1);
    tensor_to_f32(&t, 0, d0 * d1, dst);
    return SD3_OK;
}

sd3_status lt_load_st(lt_set *L, const st_file *f, const char *prefix, sd3_err *err) {
    char key[256];
    for (int i = 0; i < L->n; i++) {
        lt_module *md = &L->mods[i];
        snprintf(key, sizeof key, "%s%s.lora_A.weight", prefix, md->name);
        sd3_status s = load_one(f, key, md->A, md->r, md->K, err);
        if (s != SD3_OK) return s;
        snprintf(key, sizeof key, "%s%s.lora_B.weight", prefix, md->name);
        if ((s = load_one(f, key, md->B, md->N, md->r, err)) != SD3_OK) return s;
    }
    return SD3_OK;
}

sd3_status lt_save(const lt_set *L, const char *path, sd3_err *err) {
    st_writer *w = st_writer_new();
    if (!w) return sd3_errf(err, SD3_ERR_NOMEM, "lora: out of memory writing %s", path);
    sd3_status s = SD3_OK;
    char key[256];
    for (int i = 0; i < L->n && s == SD3_OK; i++) {
        const lt_module *md = &L->mods[i];
        int64_t sa[2] = {md->r, md->K}, sb[2] = {md->N, md->r};
        snprintf(key, sizeof key, "transformer.%s.lora_A.weight", md->name);
        s = st_writer_add(w, key, DT_F32, 2, sa, md->A, err);
        snprintf(key, sizeof key, "transformer.%s.lora_B.weight", md->name);
        if (s == SD3_OK) s = st_writer_add(w, key, DT_F32, 2, sb, md->B, err);
    }
    if (s == SD3_OK) s = st_writer_meta(w, "format", "pt", err);
    if (s == SD3_OK) s = st_writer_write(w, path, err);
    st_writer_free(w);
    return s;
}

void lt_zero_grad(lt_set *L) {
    for (int i = 0; i < L->n; i++) {
        lt_module *md = &L->mods[i];
        memset(md->dA, 0, sizeof(float) * (size_t)md->r * md->K);
        memset(md->dB, 0, sizeof(float) * (size_t)md->N * md->r);
    }
}

sd3_status lt_reserve(lt_set *L, int64_t rows, sd3_err *err) {
    for (int i = 0; i < L->n; i++) {
        lt_module *md = &L->mods[i];
        if (md->h_rows >= rows) continue;
        sd3_free(md->h);
        md->h = sd3_malloc(sizeof(float) * (size_t)(rows * md->r));
        md->h_rows = md->h ? rows : 0;
        if (!md->h) return sd3_errf(err, SD3_ERR_NOMEM, "lora: out of memory for %s", md->name);
    }
    return SD3_OK;
}

lt_module *lt_find(const lt_set *L, const mmdit_linear *lin) {
    for (int i = 0; i < L->n; i++)
        if (L->mods[i].lin == lin) return &L->mods[i];
    return NULL;
}

int64_t lt_numel(const lt_set *L) {
    int64_t n = 0;
    for (int i = 0; i < L->n; i++) n += (int64_t)L->mods[i].r * (L->mods[i].K + L->mods[i].N);
    return n;
}

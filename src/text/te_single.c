/* te_single.c — text encoders from single-file checkpoints and bare files: where they sit and their
 * configs inferred from tensor shapes (see te_single.h). */
#include <string.h>
#include "text/te_single.h"

#define CLIP_ANCHOR "text_model.embeddings.token_embedding.weight"
#define T5_ANCHOR "encoder.block.0.layer.0.SelfAttention.q.weight"

const char *te_role_name(te_role r) { return r == TE_ROLE_CLIP_L ? "CLIP-L" : r == TE_ROLE_CLIP_G ? "CLIP-G" : "T5-XXL"; }

/* Whether s ends with suffix; *stem gets the length before it. */
static int ends_with(const char *s, const char *suffix, size_t *stem) {
    size_t a = strlen(s), b = strlen(suffix);
    if (a < b || strcmp(s + a - b, suffix)) return 0;
    *stem = a - b;
    return 1;
}

/* Whether a prefix names the role ("clip_l", "clip_g", "t5"). */
static int prefix_names_role(const char *p, size_t n, te_role role) {
    const char *want = role == TE_ROLE_CLIP_L ? "clip_l" : role == TE_ROLE_CLIP_G ? "clip_g" : "t5";
    size_t w = strlen(want);
    for (size_t i = 0; i + w <= n; i++)
        if (!strncmp(p + i, want, w)) return 1;
    return 0;
}

/* Find the prefix of the role's encoder in f; see te_single.h. */
sd3_status te_find(const st_file *f, te_role role, char *prefix, size_t n, sd3_err *err) {
    const char *anchor = role == TE_ROLE_T5 ? T5_ANCHOR : CLIP_ANCHOR;
    int found = 0, named = -1, first = -1, other = 0, scaled = 0;
    size_t stem = 0, first_stem = 0, named_stem = 0;
    for (int i = 0; i < f->n; i++) {
        const char *k = f->entries[i].name;
        if (!strcmp(k, "scaled_fp8") || ends_with(k, ".scale_weight", &stem)) scaled = 1;
        if (ends_with(k, role == TE_ROLE_T5 ? CLIP_ANCHOR : T5_ANCHOR, &stem)) other = 1;
        if (!ends_with(k, anchor, &stem)) continue;
        if (!found++) { first = i; first_stem = stem; }
        if (named < 0 && prefix_names_role(k, stem, role)) { named = i; named_stem = stem; }
    }
    if (scaled)
        return sd3_errf(err, SD3_ERR_UNSUPPORTED,
                        "%s: a 'scaled fp8' checkpoint (per-tensor scale_weight keys) is not supported; use a plain "
                        "F8_E4M3, F16 or BF16 %s file",
                        f->path, te_role_name(role));
    if (!found) {
        const char *has = other ? (role == TE_ROLE_T5 ? "it holds a CLIP text encoder" : "it holds a T5 encoder")
                                : "it holds no text encoder";
        return sd3_errf(err, SD3_ERR_NOT_FOUND, "%s: expected a %s text encoder (a tensor '[prefix]%s'), but %s", f->path,
                        te_role_name(role), anchor, has);
    }
    int pick = first;
    size_t ps = first_stem;
    if (found > 1) {
        if (named < 0)
            return sd3_errf(err, SD3_ERR_FORMAT, "%s: %d text encoders of the %s kind and none named for the role (clip_l/clip_g/t5)",
                            f->path, found, te_role_name(role));
        pick = named;
        ps = named_stem;
    }
    if (ps + 1 > n) return sd3_errf(err, SD3_ERR_FORMAT, "%s: key prefix too long", f->path);
    memcpy(prefix, f->entries[pick].name, ps);
    prefix[ps] = 0;
    return SD3_OK;
}

/* Get a tensor's shape (rank must be ndim); errors name the file and the key. */
static sd3_status shape_of(const weights *w, const char *key, int ndim, int64_t *d0, int64_t *d1, const char *label,
                           sd3_err *err) {
    if (!weights_find(w, key, NULL)) return sd3_errf(err, SD3_ERR_NOT_FOUND, "%s: tensor '%s%s' is missing", label, w->prefix, key);
    tensor t;   /* through weights_get: a stored quantised pair has its logical [N, K] shape (quant.h) */
    sd3_status s = weights_get(w, key, &t, err);
    if (s != SD3_OK) return s;
    if (t.ndim != ndim)
        return sd3_errf(err, SD3_ERR_SHAPE, "%s: tensor '%s%s' has rank %d, expected %d", label, w->prefix, key, t.ndim, ndim);
    *d0 = t.shape[0];
    if (d1) *d1 = ndim > 1 ? t.shape[1] : 0;
    return SD3_OK;
}

/* Count numbered blocks: the first i for which fmt (with %d) is absent. */
static int count_blocks(const weights *w, const char *fmt) {
    int i = 0;
    char key[256];
    for (;; i++) {
        snprintf(key, sizeof key, fmt, i);
        if (!weights_has(w, key)) return i;
    }
}

/* CLIPTextConfig from shapes; see te_single.h for the rules. */
cJSON *te_clip_config_infer(const weights *w, te_role role, const char *label, sd3_err *err) {
    int64_t V, C, T, C2, F, F2, P = 0, PC = 0;
    if (shape_of(w, CLIP_ANCHOR, 2, &V, &C, label, err) ||
        shape_of(w, "text_model.embeddings.position_embedding.weight", 2, &T, &C2, label, err) ||
        shape_of(w, "text_model.encoder.layers.0.mlp.fc1.weight", 2, &F, &F2, label, err))
        return NULL;
    if (weights_has(w, "text_projection.weight") && shape_of(w, "text_projection.weight", 2, &P, &PC, label, err)) return NULL;
    if (!P) P = PC = C;
    if (C2 != C || F2 != C || PC != C) {
        sd3_errf(err, SD3_ERR_SHAPE, "%s: CLIP widths disagree (token embedding %lld, position embedding %lld, fc1 input %lld, "
                                     "projection input %lld)",
                 label, (long long)C, (long long)C2, (long long)F2, (long long)PC);
        return NULL;
    }
    if (C % TE_CLIP_HEAD_DIM) {
        sd3_errf(err, SD3_ERR_UNSUPPORTED, "%s: CLIP width %lld is no multiple of the head size %d: not a standard CLIP text encoder; give its "
                                          "config.json through a config folder", label,
                 (long long)C, TE_CLIP_HEAD_DIM);
        return NULL;
    }
    int want = role == TE_ROLE_CLIP_L ? TE_CLIP_L_WIDTH : TE_CLIP_G_WIDTH, alt = role == TE_ROLE_CLIP_L ? TE_CLIP_G_WIDTH : TE_CLIP_L_WIDTH;
    if (role != TE_ROLE_T5 && C != want) {
        sd3_errf(err, SD3_ERR_SHAPE, "%s: this CLIP text encoder has width %lld%s; %s (width %d) was expected here", label,
                 (long long)C, C == alt ? (role == TE_ROLE_CLIP_L ? " (it is CLIP-G)" : " (it is CLIP-L)") : "", te_role_name(role),
                 want);
        return NULL;
    }
    int L = count_blocks(w, "text_model.encoder.layers.%d.layer_norm1.weight");
    cJSON *j = cJSON_CreateObject();
    if (!j) { sd3_errf(err, SD3_ERR_NOMEM, "out of memory"); return NULL; }
    cJSON_AddNumberToObject(j, "hidden_size", (double)C);
    cJSON_AddNumberToObject(j, "num_hidden_layers", L);
    cJSON_AddNumberToObject(j, "num_attention_heads", (double)(C / TE_CLIP_HEAD_DIM));
    cJSON_AddNumberToObject(j, "intermediate_size", (double)F);
    cJSON_AddNumberToObject(j, "projection_dim", (double)P);
    cJSON_AddNumberToObject(j, "max_position_embeddings", (double)T);
    cJSON_AddNumberToObject(j, "vocab_size", (double)V);
    cJSON_AddNumberToObject(j, "eos_token_id", 2);
    cJSON_AddNumberToObject(j, "layer_norm_eps", 1e-5);
    cJSON_AddStringToObject(j, "hidden_act", role == TE_ROLE_CLIP_L ? "quick_gelu" : "gelu");
    return j;
}

/* T5Config from shapes; see te_single.h for the rules. */
cJSON *te_t5_config_infer(const weights *w, const char *label, sd3_err *err) {
    int64_t V, d, nb, H, I, dq, FF, df;
    const char *emb = weights_has(w, "shared.weight") ? "shared.weight" : "encoder.embed_tokens.weight";
    if (shape_of(w, emb, 2, &V, &d, label, err) ||
        shape_of(w, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", 2, &nb, &H, label, err) ||
        shape_of(w, T5_ANCHOR, 2, &I, &dq, label, err) ||
        shape_of(w, "encoder.block.0.layer.1.DenseReluDense.wi_0.weight", 2, &FF, &df, label, err))
        return NULL;
    if (dq != d || df != d || H < 1 || I % H) {
        sd3_errf(err, SD3_ERR_SHAPE, "%s: T5 shapes disagree (d_model %lld, q input %lld, wi_0 input %lld, q rows %lld for %lld heads)",
                 label, (long long)d, (long long)dq, (long long)df, (long long)I, (long long)H);
        return NULL;
    }
    cJSON *j = cJSON_CreateObject();
    if (!j) { sd3_errf(err, SD3_ERR_NOMEM, "out of memory"); return NULL; }
    cJSON_AddNumberToObject(j, "d_model", (double)d);
    cJSON_AddNumberToObject(j, "d_kv", (double)(I / H));
    cJSON_AddNumberToObject(j, "num_heads", (double)H);
    cJSON_AddNumberToObject(j, "d_ff", (double)FF);
    cJSON_AddNumberToObject(j, "num_layers", count_blocks(w, "encoder.block.%d.layer.0.layer_norm.weight"));
    cJSON_AddNumberToObject(j, "vocab_size", (double)V);
    cJSON_AddNumberToObject(j, "relative_attention_num_buckets", (double)nb);
    cJSON_AddNumberToObject(j, "relative_attention_max_distance", 128);
    cJSON_AddNumberToObject(j, "layer_norm_epsilon", 1e-6);
    cJSON_AddStringToObject(j, "feed_forward_proj", "gated-gelu");
    return j;
}

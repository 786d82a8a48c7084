/*
 * mmdit_load.c — the transformer's config (config.json, or inferred from a single file's shapes), the key
 * table (diffusers key <-> original single-file key, with shapes), and loading with every tensor checked.
 *
 * Original single-file layout (sd3_medium.safetensors style, under "model.diffusion_model."):
 *   fused x_block/context_block attn.qkv rows [q; k; v] -> three row-slice views (no copy);
 *   the last block's context adaLN and final_layer adaLN store [shift; scale] where diffusers has
 *   [scale; shift] -> an owned copy with the halves swapped.
 */
#include <math.h>
#include <stddef.h>
#include <string.h>
#include "io/json_util.h"
#include "mmdit/mmdit.h"
#include "quant/quant.h"

/* ================================================================================================ */
/* Config                                                                                           */
/* ================================================================================================ */

/* diffusers' SD3Transformer2DModel defaults (the SD3-medium shape). */
mmdit_config mmdit_config_default(void) {
    mmdit_config c;
    memset(&c, 0, sizeof c);
    c.sample_size = 128;
    c.patch_size = 2;
    c.in_channels = 16;
    c.out_channels = 16;
    c.num_layers = 18;
    c.attention_head_dim = 64;
    c.num_attention_heads = 18;
    c.joint_attention_dim = 4096;
    c.caption_projection_dim = 1152;
    c.pooled_projection_dim = 2048;
    c.pos_embed_max_size = 96;
    return c;
}

int mmdit_config_is_dual(const mmdit_config *cfg, int i) {
    for (int k = 0; k < cfg->n_dual; k++)
        if (cfg->dual_attention_layers[k] == i) return 1;
    return 0;
}

/* Ranges and consistency; the limits keep every size product inside int arithmetic of the kernels. */
sd3_status mmdit_config_validate(const mmdit_config *c, const char *label, sd3_err *err) {
    struct { const char *name; int v, max; } f[] = {
        {"sample_size", c->sample_size, 1 << 16},
        {"patch_size", c->patch_size, 64},
        {"in_channels", c->in_channels, 1 << 12},
        {"out_channels", c->out_channels, 1 << 12},
        {"num_layers", c->num_layers, MMDIT_MAX_LAYERS},
        {"attention_head_dim", c->attention_head_dim, 1 << 12},
        {"num_attention_heads", c->num_attention_heads, 1 << 10},
        {"joint_attention_dim", c->joint_attention_dim, 1 << 16},
        {"caption_projection_dim", c->caption_projection_dim, 1 << 16},
        {"pooled_projection_dim", c->pooled_projection_dim, 1 << 16},
        {"pos_embed_max_size", c->pos_embed_max_size, 1 << 12},
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (f[i].v < 1 || f[i].v > f[i].max)
            return sd3_errf(err, SD3_ERR_FORMAT, "%s: %s = %d is out of range [1, %d]", label, f[i].name, f[i].v,
                            f[i].max);
    long inner = (long)c->num_attention_heads * c->attention_head_dim;
    if (inner > (1 << 16))
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: num_attention_heads x attention_head_dim = %ld is too large", label,
                        inner);
    if (inner != c->caption_projection_dim)
        return sd3_errf(err, SD3_ERR_UNSUPPORTED,
                        "%s: caption_projection_dim %d differs from num_attention_heads x attention_head_dim = %ld "
                        "(the joint blocks need both streams equally wide)",
                        label, c->caption_projection_dim, inner);
    if ((long)c->in_channels * c->patch_size * c->patch_size > (1 << 16) ||
        (long)c->out_channels * c->patch_size * c->patch_size > (1 << 16))
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: channels x patch_size^2 is too large", label);
    for (int k = 0; k < c->n_dual; k++) {
        int d = c->dual_attention_layers[k];
        if (d < 0 || d >= c->num_layers)
            return sd3_errf(err, SD3_ERR_FORMAT, "%s: dual_attention_layers[%d] = %d is outside [0, %d)", label, k, d,
                            c->num_layers);
        for (int j = 0; j < k; j++)
            if (c->dual_attention_layers[j] == d)
                return sd3_errf(err, SD3_ERR_FORMAT, "%s: dual_attention_layers lists %d twice", label, d);
    }
    return SD3_OK;
}

sd3_status mmdit_config_from_json(mmdit_config *cfg, const cJSON *j, const char *label, sd3_err *err) {
    mmdit_config c = mmdit_config_default();
    if (!cJSON_IsObject(j)) return sd3_errf(err, SD3_ERR_FORMAT, "%s: not a JSON object", label);
    c.sample_size = json_int(j, "sample_size", c.sample_size);
    c.patch_size = json_int(j, "patch_size", c.patch_size);
    c.in_channels = json_int(j, "in_channels", c.in_channels);
    /* diffusers: an explicit null out_channels means "same as in_channels". */
    const cJSON *oc = cJSON_GetObjectItemCaseSensitive(j, "out_channels");
    c.out_channels = cJSON_IsNull(oc) ? c.in_channels : json_int(j, "out_channels", c.out_channels);
    c.num_layers = json_int(j, "num_layers", c.num_layers);
    c.attention_head_dim = json_int(j, "attention_head_dim", c.attention_head_dim);
    c.num_attention_heads = json_int(j, "num_attention_heads", c.num_attention_heads);
    c.joint_attention_dim = json_int(j, "joint_attention_dim", c.joint_attention_dim);
    c.caption_projection_dim = json_int(j, "caption_projection_dim", c.caption_projection_dim);
    c.pooled_projection_dim = json_int(j, "pooled_projection_dim", c.pooled_projection_dim);
    c.pos_embed_max_size = json_int(j, "pos_embed_max_size", c.pos_embed_max_size);
    const cJSON *qk = cJSON_GetObjectItemCaseSensitive(j, "qk_norm");
    if (!qk || cJSON_IsNull(qk)) c.qk_norm = 0;
    else if (cJSON_IsString(qk) && !strcmp(qk->valuestring, "rms_norm")) c.qk_norm = 1;
    else
        return sd3_errf(err, SD3_ERR_UNSUPPORTED, "%s: qk_norm %s is not supported (null or \"rms_norm\")", label,
                        cJSON_IsString(qk) ? qk->valuestring : "(not a string)");
    sd3_status s = json_int_array(j, "dual_attention_layers", c.dual_attention_layers, MMDIT_MAX_LAYERS, &c.n_dual,
                                  label, err);
    if (s != SD3_OK) return s;
    if ((s = mmdit_config_validate(&c, label, err)) != SD3_OK) return s;
    *cfg = c;
    return SD3_OK;
}

sd3_status mmdit_config_load(mmdit_config *cfg, const char *path, sd3_err *err) {
    cJSON *j = json_load_file(path, err);
    if (!j) return err ? err->status : SD3_ERR_FORMAT;
    sd3_status s = mmdit_config_from_json(cfg, j, path, err);
    cJSON_Delete(j);
    return s;
}

const char *mmdit_original_prefix(const weights *w) {
    if (weights_has(w, "model.diffusion_model.x_embedder.proj.weight")) return "model.diffusion_model.";
    if (weights_has(w, "x_embedder.proj.weight") && weights_has(w, "joint_blocks.0.x_block.attn.qkv.weight"))
        return "";
    return NULL;
}

/* A tensor of an original-layout set that config inference needs, with its rank checked. */
static sd3_status infer_get(const weights *w, const char *key, int ndim, tensor *t, sd3_err *err) {
    return weights_get_shape(w, key, t, err, ndim, -1, -1, -1, -1);
}

/* As diffusers' single-file conversion: every size from a tensor shape, except head_dim. */
sd3_status mmdit_config_infer(mmdit_config *cfg, const weights *w, int head_dim, sd3_err *err) {
    mmdit_config c = mmdit_config_default();
    tensor t;
    sd3_status s;
    if ((s = infer_get(w, "x_embedder.proj.weight", 4, &t, err)) != SD3_OK) return s;
    int C = (int)t.shape[0];
    c.in_channels = (int)t.shape[1];
    c.patch_size = (int)t.shape[2];
    if (t.shape[2] != t.shape[3])
        return sd3_errf(err, SD3_ERR_SHAPE, "%s: x_embedder.proj.weight has a non-square %lldx%lld kernel", w->label,
                        (long long)t.shape[2], (long long)t.shape[3]);
    if (head_dim < 1 || C % head_dim)
        return sd3_errf(err, SD3_ERR_SHAPE, "%s: hidden width %d is not a multiple of head_dim %d; give the config",
                        w->label, C, head_dim);
    c.attention_head_dim = head_dim;
    c.num_attention_heads = C / head_dim;
    int depth = 0;
    char key[128];
    for (;; depth++) {
        snprintf(key, sizeof key, "joint_blocks.%d.x_block.attn.qkv.weight", depth);
        if (!weights_has(w, key) || depth == MMDIT_MAX_LAYERS) break;
    }
    if (depth == 0) return sd3_errf(err, SD3_ERR_NOT_FOUND, "%s: no joint_blocks.0.x_block.attn.qkv.weight", w->label);
    c.num_layers = depth;
    if ((s = infer_get(w, "context_embedder.weight", 2, &t, err)) != SD3_OK) return s;
    c.caption_projection_dim = (int)t.shape[0];
    c.joint_attention_dim = (int)t.shape[1];
    if ((s = infer_get(w, "y_embedder.mlp.0.weight", 2, &t, err)) != SD3_OK) return s;
    c.pooled_projection_dim = (int)t.shape[1];
    if ((s = infer_get(w, "final_layer.linear.weight", 2, &t, err)) != SD3_OK) return s;
    int pp = c.patch_size * c.patch_size;
    if (pp < 1 || t.shape[0] % pp)
        return sd3_errf(err, SD3_ERR_SHAPE, "%s: final_layer.linear.weight has %lld rows, not a multiple of %d",
                        w->label, (long long)t.shape[0], pp);
    c.out_channels = (int)(t.shape[0] / pp);
    if ((s = infer_get(w, "pos_embed", 3, &t, err)) != SD3_OK) return s;
    int M = (int)llround(sqrt((double)t.shape[1]));
    if ((int64_t)M * M != t.shape[1])
        return sd3_errf(err, SD3_ERR_SHAPE, "%s: pos_embed has %lld rows, not a square number", w->label,
                        (long long)t.shape[1]);
    c.pos_embed_max_size = M;
    c.qk_norm = weights_has(w, "joint_blocks.0.x_block.attn.ln_q.weight");
    c.n_dual = 0;
    for (int i = 0; i < depth; i++) {
        snprintf(key, sizeof key, "joint_blocks.%d.x_block.attn2.qkv.weight", i);
        if (weights_has(w, key)) c.dual_attention_layers[c.n_dual++] = i;
    }
    if ((s = mmdit_config_validate(&c, w->label, err)) != SD3_OK) return s;
    *cfg = c;
    return SD3_OK;
}

/* ================================================================================================ */
/* Key table                                                                                        */
/* ================================================================================================ */

/* Conditions under which a block tensor exists. */
enum {
    REQ_LAST = 1,       /* only the last (context_pre_only) block */
    REQ_NOT_LAST = 2,   /* every block but the last */
    REQ_QK = 4,         /* qk_norm "rms_norm" */
    REQ_DUAL = 8,       /* dual-attention (MMDiT-X) block */
    REQ_NOT_DUAL = 16,
};
/* Dimension codes: n > 0 means n x C; DIM_D is the head dim. */
#define DIM_D (-1)

typedef struct block_key {
    size_t off;             /* offsetof(mmdit_block, field): an mmdit_linear, or a tensor for norms */
    int is_linear;          /* weight [rows, cols] + bias [rows]; else a norm scale [D] */
    int req;                /* REQ_* bits that must all hold */
    int exclusive;          /* the key exists ONLY under req (present otherwise = config mismatch) */
    const char *diffusers;  /* under transformer_blocks.{i}. */
    const char *original;   /* under joint_blocks.{i}. */
    int part;               /* original is a fused qkv: row third 0 (q), 1 (k), 2 (v); -1 whole */
    int swap;               /* original stores [shift; scale], diffusers [scale; shift] */
    int rows, cols;         /* dimension codes */
} block_key;

#define BK(field) offsetof(mmdit_block, field)
static const block_key BLOCK_KEYS[] = {
    {BK(norm1_linear), 1, REQ_NOT_DUAL, 0, "norm1.linear", "x_block.adaLN_modulation.1", -1, 0, 6, 1},
    {BK(norm1_linear), 1, REQ_DUAL, 0, "norm1.linear", "x_block.adaLN_modulation.1", -1, 0, 9, 1},
    {BK(norm1_context_linear), 1, REQ_NOT_LAST, 0, "norm1_context.linear", "context_block.adaLN_modulation.1", -1, 0, 6, 1},
    {BK(norm1_context_linear), 1, REQ_LAST, 0, "norm1_context.linear", "context_block.adaLN_modulation.1", -1, 1, 2, 1},
    {BK(attn_to_q), 1, 0, 0, "attn.to_q", "x_block.attn.qkv", 0, 0, 1, 1},
    {BK(attn_to_k), 1, 0, 0, "attn.to_k", "x_block.attn.qkv", 1, 0, 1, 1},
    {BK(attn_to_v), 1, 0, 0, "attn.to_v", "x_block.attn.qkv", 2, 0, 1, 1},
    {BK(attn_add_q_proj), 1, 0, 0, "attn.add_q_proj", "context_block.attn.qkv", 0, 0, 1, 1},
    {BK(attn_add_k_proj), 1, 0, 0, "attn.add_k_proj", "context_block.attn.qkv", 1, 0, 1, 1},
    {BK(attn_add_v_proj), 1, 0, 0, "attn.add_v_proj", "context_block.attn.qkv", 2, 0, 1, 1},
    {BK(attn_norm_q), 0, REQ_QK, 1, "attn.norm_q", "x_block.attn.ln_q", -1, 0, DIM_D, 0},
    {BK(attn_norm_k), 0, REQ_QK, 1, "attn.norm_k", "x_block.attn.ln_k", -1, 0, DIM_D, 0},
    {BK(attn_norm_added_q), 0, REQ_QK, 1, "attn.norm_added_q", "context_block.attn.ln_q", -1, 0, DIM_D, 0},
    {BK(attn_norm_added_k), 0, REQ_QK, 1, "attn.norm_added_k", "context_block.attn.ln_k", -1, 0, DIM_D, 0},
    {BK(attn_to_out_0), 1, 0, 0, "attn.to_out.0", "x_block.attn.proj", -1, 0, 1, 1},
    {BK(attn_to_add_out), 1, REQ_NOT_LAST, 1, "attn.to_add_out", "context_block.attn.proj", -1, 0, 1, 1},
    {BK(attn2_to_q), 1, REQ_DUAL, 1, "attn2.to_q", "x_block.attn2.qkv", 0, 0, 1, 1},
    {BK(attn2_to_k), 1, REQ_DUAL, 1, "attn2.to_k", "x_block.attn2.qkv", 1, 0, 1, 1},
    {BK(attn2_to_v), 1, REQ_DUAL, 1, "attn2.to_v", "x_block.attn2.qkv", 2, 0, 1, 1},
    {BK(attn2_norm_q), 0, REQ_DUAL | REQ_QK, 1, "attn2.norm_q", "x_block.attn2.ln_q", -1, 0, DIM_D, 0},
    {BK(attn2_norm_k), 0, REQ_DUAL | REQ_QK, 1, "attn2.norm_k", "x_block.attn2.ln_k", -1, 0, DIM_D, 0},
    {BK(attn2_to_out_0), 1, REQ_DUAL, 1, "attn2.to_out.0", "x_block.attn2.proj", -1, 0, 1, 1},
    {BK(ff_net_0_proj), 1, 0, 0, "ff.net.0.proj", "x_block.mlp.fc1", -1, 0, 4, 1},
    {BK(ff_net_2), 1, 0, 0, "ff.net.2", "x_block.mlp.fc2", -1, 0, 1, 4},
    {BK(ff_context_net_0_proj), 1, REQ_NOT_LAST, 1, "ff_context.net.0.proj", "context_block.mlp.fc1", -1, 0, 4, 1},
    {BK(ff_context_net_2), 1, REQ_NOT_LAST, 1, "ff_context.net.2", "context_block.mlp.fc2", -1, 0, 1, 4},
};
#define N_BLOCK_KEYS ((int)(sizeof BLOCK_KEYS / sizeof BLOCK_KEYS[0]))

/* ================================================================================================ */
/* Loading                                                                                          */
/* ================================================================================================ */

typedef struct loader {
    weights w;              /* the set, seen through the original prefix when original */
    int original;
    sd3_err *err;
} loader;

/* Float dtypes the kernels take for weights (quantised types come later). */
static sd3_status check_dtype(const loader *ld, const char *key, const tensor *t) {
    if (t->dt == DT_F32 || t->dt == DT_F16 || t->dt == DT_BF16) return SD3_OK;
    if ((t->dt == DT_Q8 || t->dt == DT_Q4) && t->ndim == 2) return SD3_OK;   /* quantised Linear (quant.h) */
    return sd3_errf(ld->err, SD3_ERR_SHAPE, "%s: tensor '%s%s' has dtype %s (F32, F16 or BF16 expected)", ld->w.label,
                    ld->w.prefix, key, dtype_name(t->dt));
}

/* Get tensor `key` with rank ndim and dims d (-1 = any), as a view; if part >= 0 the stored tensor is a
 * fused [q; k; v] along dim 0 (3 x d[0] rows) and the view is its part-th third; if swap, an owned copy
 * with the two halves of dim 0 exchanged. */
static sd3_status get_tensor(loader *ld, const char *key, int part, int swap, int ndim, const int64_t *d, tensor *out) {
    int64_t e[4] = {-1, -1, -1, -1};
    for (int i = 0; i < ndim; i++) e[i] = d[i];
    if (part >= 0) e[0] = 3 * d[0];
    tensor t;
    sd3_status s = weights_get_shape(&ld->w, key, &t, ld->err, ndim, e[0], e[1], e[2], e[3]);
    if (s != SD3_OK) return s;
    if ((s = check_dtype(ld, key, &t)) != SD3_OK) return s;
    if (t.dt == DT_Q8 || t.dt == DT_Q4) {   /* rows of a quantised Linear: codes and scales move together */
        if (part >= 0) quant_row_view(&t, part * d[0], d[0]);
        if (swap && (s = quant_swap_halves(&t, ld->err)) != SD3_OK) {
            sd3_err_prefix(ld->err, "%s: tensor '%s%s'", ld->w.label, ld->w.prefix, key);
            return s;
        }
        *out = t;
        return SD3_OK;
    }
    size_t row_bytes = dtype_size(t.dt);
    for (int i = 1; i < ndim; i++) row_bytes *= (size_t)t.shape[i];
    if (part >= 0) {
        t.shape[0] = d[0];
        t.data = (char *)t.data + (size_t)part * (size_t)d[0] * row_bytes;
    }
    if (swap) {
        if (t.shape[0] % 2)
            return sd3_errf(ld->err, SD3_ERR_SHAPE, "%s: tensor '%s%s' has an odd number of rows", ld->w.label,
                            ld->w.prefix, key);
        size_t half = (size_t)(t.shape[0] / 2) * row_bytes;
        char *buf = sd3_malloc(2 * half);
        if (!buf) return sd3_errf(ld->err, SD3_ERR_NOMEM, "out of memory copying '%s'", key);
        memcpy(buf, (const char *)t.data + half, half);
        memcpy(buf + half, t.data, half);
        t.data = buf;
        t.owned = 1;
    }
    *out = t;
    return SD3_OK;
}

/* A Linear [N, K] (+ bias [N]) under the diffusers or original module name. */
static sd3_status get_linear(loader *ld, const char *dmod, const char *omod, int part, int swap, int64_t N, int64_t K,
                             mmdit_linear *out) {
    char key[256];
    const char *mod = ld->original ? omod : dmod;
    if (!ld->original) part = -1, swap = 0;
    int64_t wd[2] = {N, K}, bd[1] = {N};
    snprintf(key, sizeof key, "%s.weight", mod);
    sd3_status s = get_tensor(ld, key, part, swap, 2, wd, &out->weight);
    if (s != SD3_OK) return s;
    snprintf(key, sizeof key, "%s.bias", mod);
    return get_tensor(ld, key, part, swap, 1, bd, &out->bias);
}

/* Free the owned copies in a linear (views are left alone). */
static void free_linear(mmdit_linear *l) {
    tensor_free(&l->weight);
    tensor_free(&l->bias);
}

/* Dimension code -> size. */
static int64_t dim_of(int code, int64_t C, int64_t D) { return code == DIM_D ? D : code * C; }

/* Load block i: every table entry whose conditions hold, and a check that no entry that exists only under
 * unmet conditions (qk-norm, attn2, ...) is present, so a config that disagrees with the file fails. */
static sd3_status load_block(loader *ld, const mmdit_config *cfg, int i, mmdit_block *b) {
    int64_t C = (int64_t)cfg->num_attention_heads * cfg->attention_head_dim, D = cfg->attention_head_dim;
    b->context_pre_only = i == cfg->num_layers - 1;
    b->dual = mmdit_config_is_dual(cfg, i);
    int have = (b->context_pre_only ? REQ_LAST : REQ_NOT_LAST) | (cfg->qk_norm ? REQ_QK : 0) |
               (b->dual ? REQ_DUAL : REQ_NOT_DUAL);
    char dmod[160], omod[160], key[200];
    for (int k = 0; k < N_BLOCK_KEYS; k++) {
        const block_key *e = &BLOCK_KEYS[k];
        snprintf(dmod, sizeof dmod, "transformer_blocks.%d.%s", i, e->diffusers);
        snprintf(omod, sizeof omod, "joint_blocks.%d.%s", i, e->original);
        if ((e->req & have) != e->req) {
            if (!e->exclusive) continue;
            snprintf(key, sizeof key, "%s.weight", ld->original ? omod : dmod);
            if (weights_has(&ld->w, key))
                return sd3_errf(ld->err, SD3_ERR_SHAPE,
                                "%s: tensor '%s%s' is present but the config says block %d has no such weight "
                                "(qk_norm %s, dual attention %s, last block %s)",
                                ld->w.label, ld->w.prefix, key, i, cfg->qk_norm ? "rms_norm" : "null",
                                b->dual ? "yes" : "no", b->context_pre_only ? "yes" : "no");
            continue;
        }
        sd3_status s;
        if (e->is_linear) {
            s = get_linear(ld, dmod, omod, e->part, e->swap, dim_of(e->rows, C, D), dim_of(e->cols, C, D),
                           (mmdit_linear *)((char *)b + e->off));
        } else {
            int64_t d[1] = {D};
            snprintf(key, sizeof key, "%s.weight", ld->original ? omod : dmod);
            s = get_tensor(ld, key, -1, 0, 1, d, (tensor *)((char *)b + e->off));
        }
        if (s != SD3_OK) return s;
    }
    return SD3_OK;
}

/* Fill m's tensors from w (either layout) for config cfg; m->w / owns_weights are left as they are. */
static sd3_status load_into(mmdit_model *m, const weights *w, const mmdit_config *cfg, sd3_err *err) {
    sd3_status s = mmdit_config_validate(cfg, w->label, err);
    if (s != SD3_OK) return s;
    m->cfg = *cfg;
    loader ld;
    memset(&ld, 0, sizeof ld);
    ld.err = err;
    const char *prefix = NULL;
    if (weights_has(w, "pos_embed.proj.weight") || weights_has(w, "transformer_blocks.0.norm1.linear.weight")) {
        weights_view(&ld.w, w, "");
    } else if ((prefix = mmdit_original_prefix(w))) {
        weights_view(&ld.w, w, prefix);
        ld.original = 1;
    } else {
        return sd3_errf(err, SD3_ERR_NOT_FOUND,
                        "%s: no SD3 transformer found (neither 'pos_embed.proj.weight' nor "
                        "'model.diffusion_model.x_embedder.proj.weight')",
                        w->label);
    }
    m->original_layout = ld.original;
    const int64_t C = (int64_t)cfg->num_attention_heads * cfg->attention_head_dim, p = cfg->patch_size;
    const int64_t M = cfg->pos_embed_max_size;
    int o = ld.original;

    int64_t pd[3] = {1, M * M, C};
    if ((s = get_tensor(&ld, o ? "pos_embed" : "pos_embed.pos_embed", -1, 0, 3, pd, &m->pos_embed_pos_embed)) != SD3_OK)
        return s;
    int64_t cd[4] = {C, cfg->in_channels, p, p}, cb[1] = {C};
    if ((s = get_tensor(&ld, o ? "x_embedder.proj.weight" : "pos_embed.proj.weight", -1, 0, 4, cd,
                        &m->pos_embed_proj.weight)) != SD3_OK)
        return s;
    if ((s = get_tensor(&ld, o ? "x_embedder.proj.bias" : "pos_embed.proj.bias", -1, 0, 1, cb,
                        &m->pos_embed_proj.bias)) != SD3_OK)
        return s;
    struct { const char *d, *o; int swap; int64_t N, K; mmdit_linear *dst; } top[] = {
        {"time_text_embed.timestep_embedder.linear_1", "t_embedder.mlp.0", 0, C, MMDIT_FREQ_DIM,
         &m->time_text_embed_timestep_embedder_linear_1},
        {"time_text_embed.timestep_embedder.linear_2", "t_embedder.mlp.2", 0, C, C,
         &m->time_text_embed_timestep_embedder_linear_2},
        {"time_text_embed.text_embedder.linear_1", "y_embedder.mlp.0", 0, C, cfg->pooled_projection_dim,
         &m->time_text_embed_text_embedder_linear_1},
        {"time_text_embed.text_embedder.linear_2", "y_embedder.mlp.2", 0, C, C,
         &m->time_text_embed_text_embedder_linear_2},
        {"context_embedder", "context_embedder", 0, C, cfg->joint_attention_dim, &m->context_embedder},
        {"norm_out.linear", "final_layer.adaLN_modulation.1", 1, 2 * C, C, &m->norm_out_linear},
        {"proj_out", "final_layer.linear", 0, p * p * cfg->out_channels, C, &m->proj_out},
    };
    for (size_t k = 0; k < sizeof top / sizeof top[0]; k++)
        if ((s = get_linear(&ld, top[k].d, top[k].o, -1, top[k].swap, top[k].N, top[k].K, top[k].dst)) != SD3_OK)
            return s;

    /* More blocks in the file than the config says is a mismatch (checked first: it
     * would otherwise show as a misshaped last block). */
    char key[128];
    snprintf(key, sizeof key, o ? "joint_blocks.%d.x_block.attn.qkv.weight" : "transformer_blocks.%d.norm1.linear.weight",
             cfg->num_layers);
    if (weights_has(&ld.w, key))
        return sd3_errf(err, SD3_ERR_SHAPE, "%s: tensor '%s%s' exists but the config has num_layers %d", w->label,
                        ld.w.prefix, key, cfg->num_layers);
    m->blocks = sd3_calloc((size_t)cfg->num_layers, sizeof *m->blocks);
    if (!m->blocks) return sd3_errf(err, SD3_ERR_NOMEM, "out of memory (%d blocks)", cfg->num_layers);
    for (int i = 0; i < cfg->num_layers; i++)
        if ((s = load_block(&ld, cfg, i, &m->blocks[i])) != SD3_OK) return s;
    return SD3_OK;
}

sd3_status mmdit_load_weights(mmdit_model *m, const weights *w, const mmdit_config *cfg, sd3_err *err) {
    memset(m, 0, sizeof *m);
    sd3_status s = load_into(m, w, cfg, err);
    if (s != SD3_OK) mmdit_free(m);
    return s;
}

sd3_status mmdit_load_dir(mmdit_model *m, const char *dir, sd3_err *err) {
    memset(m, 0, sizeof *m);
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    mmdit_config cfg;
    sd3_status s = mmdit_config_load(&cfg, path, err);
    if (s != SD3_OK) return s;
    if ((s = weights_open_dir(&m->w, dir, "diffusion_pytorch_model", err)) != SD3_OK) return s;
    m->owns_weights = 1;
    if ((s = load_into(m, &m->w, &cfg, err)) != SD3_OK) mmdit_free(m);
    return s;
}

sd3_status mmdit_load_file(mmdit_model *m, const char *path, const char *config_json, sd3_err *err) {
    memset(m, 0, sizeof *m);
    sd3_status s = weights_open_file(&m->w, path, err);
    if (s != SD3_OK) return s;
    m->owns_weights = 1;
    mmdit_config cfg;
    const char *prefix = mmdit_original_prefix(&m->w);
    if (config_json) {
        s = mmdit_config_load(&cfg, config_json, err);
    } else if (prefix) {
        weights pv;
        weights_view(&pv, &m->w, prefix);
        s = mmdit_config_infer(&cfg, &pv, 64, err);
    } else {
        s = sd3_errf(err, SD3_ERR_NOT_FOUND,
                     "%s: no original-layout SD3 transformer ('model.diffusion_model.x_embedder.proj.weight'); "
                     "a diffusers-layout file needs its config.json",
                     path);
    }
    if (s == SD3_OK) s = load_into(m, &m->w, &cfg, err);
    if (s != SD3_OK) mmdit_free(m);
    return s;
}

void mmdit_free(mmdit_model *m) {
    if (m->lora_release) m->lora_release(m); /* LoRA hook: restore fused weights, free adapters first */
    if (m->blocks) {
        for (int i = 0; i < m->cfg.num_layers; i++)
            for (int k = 0; k < N_BLOCK_KEYS; k++) {
                char *f = (char *)&m->blocks[i] + BLOCK_KEYS[k].off;
                if (BLOCK_KEYS[k].is_linear) free_linear((mmdit_linear *)f);
                else tensor_free((tensor *)f);
            }
        sd3_free(m->blocks);
    }
    free_linear(&m->norm_out_linear);
    /* views unless replaced by owned quantised copies (quant_mmdit) */
    free_linear(&m->time_text_embed_timestep_embedder_linear_1);
    free_linear(&m->time_text_embed_timestep_embedder_linear_2);
    free_linear(&m->time_text_embed_text_embedder_linear_1);
    free_linear(&m->time_text_embed_text_embedder_linear_2);
    free_linear(&m->context_embedder);
    free_linear(&m->proj_out);
    tensor_free(&m->pos_embed_pos_embed);
    if (m->owns_weights) weights_close(&m->w);
    memset(m, 0, sizeof *m);
}

/* LoRA hook: the model's Linears with both checkpoint names, from the same key table the loader uses
 * (top-level Linears first, then each block's in table order; the dual/non-dual norm1 entries and the
 * entries whose conditions a block does not meet are skipped). */
int mmdit_list_linears(mmdit_model *m, mmdit_named_linear *out, int cap) {
    static const struct { const char *d, *o; int swap; size_t off; } TOP[] = {
        {"time_text_embed.timestep_embedder.linear_1", "t_embedder.mlp.0", 0,
         offsetof(mmdit_model, time_text_embed_timestep_embedder_linear_1)},
        {"time_text_embed.timestep_embedder.linear_2", "t_embedder.mlp.2", 0,
         offsetof(mmdit_model, time_text_embed_timestep_embedder_linear_2)},
        {"time_text_embed.text_embedder.linear_1", "y_embedder.mlp.0", 0,
         offsetof(mmdit_model, time_text_embed_text_embedder_linear_1)},
        {"time_text_embed.text_embedder.linear_2", "y_embedder.mlp.2", 0,
         offsetof(mmdit_model, time_text_embed_text_embedder_linear_2)},
        {"context_embedder", "context_embedder", 0, offsetof(mmdit_model, context_embedder)},
        {"norm_out.linear", "final_layer.adaLN_modulation.1", 1, offsetof(mmdit_model, norm_out_linear)},
        {"proj_out", "final_layer.linear", 0, offsetof(mmdit_model, proj_out)},
    };
    int n = 0;
    for (size_t k = 0; k < sizeof TOP / sizeof TOP[0]; k++, n++) {
        if (n >= cap) continue;
        out[n].lin = (mmdit_linear *)((char *)m + TOP[k].off);
        snprintf(out[n].diffusers, sizeof out[n].diffusers, "%s", TOP[k].d);
        snprintf(out[n].original, sizeof out[n].original, "%s", TOP[k].o);
        out[n].part = -1;
        out[n].swap = TOP[k].swap;
    }
    for (int i = 0; m->blocks && i < m->cfg.num_layers; i++) {
        const mmdit_block *b = &m->blocks[i];
        int have = (b->context_pre_only ? REQ_LAST : REQ_NOT_LAST) | (m->cfg.qk_norm ? REQ_QK : 0) |
                   (b->dual ? REQ_DUAL : REQ_NOT_DUAL);
        for (int k = 0; k < N_BLOCK_KEYS; k++, n++) {
            const block_key *e = &BLOCK_KEYS[k];
            if (!e->is_linear || (e->req & have) != e->req) { n--; continue; }
            if (n >= cap) continue;
            out[n].lin = (mmdit_linear *)((char *)&m->blocks[i] + e->off);
            snprintf(out[n].diffusers, sizeof out[n].diffusers, "transformer_blocks.%d.%s", i, e->diffusers);
            snprintf(out[n].original, sizeof out[n].original, "joint_blocks.%d.%s", i, e->original);
            out[n].part = e->part;
            out[n].swap = e->swap;
        }
    }
    return n;
}

/* clip.c — CLIP text transformer with projection (see clip.h for the computation). */
#include <math.h>
#include <stddef.h>
#include <string.h>
#include "io/json_util.h"
#include "kernels/kernels.h"
#include "text/clip.h"

/* ------------------------------------------------------------------------------------------------ */
/* Config                                                                                           */
/* ------------------------------------------------------------------------------------------------ */

/* Read CLIPTextConfig keys; every structural key is required, hidden_act must be one we implement. */
sd3_status clip_config_read(clip_config *c, const cJSON *config, const char *label, sd3_err *err) {
    memset(c, 0, sizeof *c);
    if (!cJSON_IsObject(config)) return sd3_errf(err, SD3_ERR_FORMAT, "%s: config is not a JSON object", label);
    struct { const char *key; int *dst; } ints[] = {
        {"hidden_size", &c->hidden_size},           {"num_hidden_layers", &c->num_hidden_layers},
        {"num_attention_heads", &c->num_attention_heads}, {"intermediate_size", &c->intermediate_size},
        {"projection_dim", &c->projection_dim},     {"max_position_embeddings", &c->max_position_embeddings},
        {"vocab_size", &c->vocab_size},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        sd3_status s = json_req_int(config, ints[i].key, ints[i].dst, label, err);
        if (s != SD3_OK) return s;
        if (*ints[i].dst < 1 || *ints[i].dst > (1 << 24))
            return sd3_errf(err, SD3_ERR_FORMAT, "%s: key '%s' = %d is out of range", label, ints[i].key, *ints[i].dst);
    }
    double eps;
    sd3_status s = json_req_num(config, "layer_norm_eps", &eps, label, err);
    if (s != SD3_OK) return s;
    if (!(eps > 0 && eps < 1)) return sd3_errf(err, SD3_ERR_FORMAT, "%s: key 'layer_norm_eps' = %g is out of range", label, eps);
    c->layer_norm_eps = (float)eps;
    const char *act = json_str(config, "hidden_act", NULL);
    if (!act) return sd3_errf(err, SD3_ERR_FORMAT, "%s: key 'hidden_act' missing or not a string", label);
    if (!strcmp(act, "quick_gelu")) c->act = CLIP_ACT_QUICK_GELU;
    else if (!strcmp(act, "gelu")) c->act = CLIP_ACT_GELU;
    else return sd3_errf(err, SD3_ERR_UNSUPPORTED, "%s: hidden_act '%s' is not supported (quick_gelu or gelu)", label, act);
    c->eos_token_id = json_int(config, "eos_token_id", 2);
    if (c->hidden_size % c->num_attention_heads)
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: hidden_size %d is not a multiple of num_attention_heads %d", label,
                        c->hidden_size, c->num_attention_heads);
    return SD3_OK;
}

/* ------------------------------------------------------------------------------------------------ */
/* Loading: one table of checkpoint keys per layer, dims given as letters resolved from the config   */
/* ------------------------------------------------------------------------------------------------ */

typedef struct clip_key {
    const char *key;   /* under text_model.encoder.layers.{i}. */
    size_t off;        /* field in clip_layer */
    int ndim;
    char d0, d1;       /* 'C' hidden, 'F' MLP width */
} clip_key;

static const clip_key CLIP_LAYER_KEYS[] = {
    {"layer_norm1.weight", offsetof(clip_layer, ln1_w), 1, 'C', 0},
    {"layer_norm1.bias", offsetof(clip_layer, ln1_b), 1, 'C', 0},
    {"self_attn.q_proj.weight", offsetof(clip_layer, q_w), 2, 'C', 'C'},
    {"self_attn.q_proj.bias", offsetof(clip_layer, q_b), 1, 'C', 0},
    {"self_attn.k_proj.weight", offsetof(clip_layer, k_w), 2, 'C', 'C'},
    {"self_attn.k_proj.bias", offsetof(clip_layer, k_b), 1, 'C', 0},
    {"self_attn.v_proj.weight", offsetof(clip_layer, v_w), 2, 'C', 'C'},
    {"self_attn.v_proj.bias", offsetof(clip_layer, v_b), 1, 'C', 0},
    {"self_attn.out_proj.weight", offsetof(clip_layer, o_w), 2, 'C', 'C'},
    {"self_attn.out_proj.bias", offsetof(clip_layer, o_b), 1, 'C', 0},
    {"layer_norm2.weight", offsetof(clip_layer, ln2_w), 1, 'C', 0},
    {"layer_norm2.bias", offsetof(clip_layer, ln2_b), 1, 'C', 0},
    {"mlp.fc1.weight", offsetof(clip_layer, fc1_w), 2, 'F', 'C'},
    {"mlp.fc1.bias", offsetof(clip_layer, fc1_b), 1, 'F', 0},
    {"mlp.fc2.weight", offsetof(clip_layer, fc2_w), 2, 'C', 'F'},
    {"mlp.fc2.bias", offsetof(clip_layer, fc2_b), 1, 'C', 0},
};

/* A dimension letter of the key table as a number. */
static int64_t clip_dim(const clip_config *c, char d) { return d == 'F' ? c->intermediate_size : c->hidden_size; }

/* Bind one tensor with a shape check and a float dtype check; errors name the model and the key. */
static sd3_status clip_bind(const weights *w, const char *key, tensor *t, const char *label, sd3_err *err, int ndim,
                          int64_t d0, int64_t d1) {
    sd3_status s = weights_get_weight(w, key, t, err, ndim, d0, d1, -1, -1);
    if (s != SD3_OK) sd3_err_prefix(err, "%s", label);
    return s;
}

void clip_free(clip_model *m) {
    free(m->layers);
    memset(m, 0, sizeof *m);
}

/* Read config and bind every tensor, failing on the first missing/misshaped one. */
sd3_status clip_load(clip_model *m, const weights *w, const cJSON *config, const char *label, sd3_err *err) {
    memset(m, 0, sizeof *m);
    snprintf(m->label, sizeof m->label, "%s", label ? label : "clip");
    clip_config *c = &m->cfg;
    sd3_status s = clip_config_read(c, config, m->label, err);
    if (s != SD3_OK) return s;
    const int64_t C = c->hidden_size;
    if ((s = clip_bind(w, "text_model.embeddings.token_embedding.weight", &m->tok_emb, m->label, err, 2, c->vocab_size, C)) ||
        (s = clip_bind(w, "text_model.embeddings.position_embedding.weight", &m->pos_emb, m->label, err, 2,
                       c->max_position_embeddings, C)) ||
        (s = clip_bind(w, "text_model.final_layer_norm.weight", &m->final_ln_w, m->label, err, 1, C, -1)) ||
        (s = clip_bind(w, "text_model.final_layer_norm.bias", &m->final_ln_b, m->label, err, 1, C, -1)) ||
        (s = clip_bind(w, "text_projection.weight", &m->proj_w, m->label, err, 2, c->projection_dim, C)))
        goto fail;
    m->layers = calloc((size_t)c->num_hidden_layers, sizeof *m->layers);
    if (!m->layers) { s = sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", m->label); goto fail; }
    for (int i = 0; i < c->num_hidden_layers; i++) {
        for (size_t k = 0; k < sizeof CLIP_LAYER_KEYS / sizeof CLIP_LAYER_KEYS[0]; k++) {
            const clip_key *ck = &CLIP_LAYER_KEYS[k];
            char key[256];
            snprintf(key, sizeof key, "text_model.encoder.layers.%d.%s", i, ck->key);
            tensor *t = (tensor *)((char *)&m->layers[i] + ck->off);
            s = clip_bind(w, key, t, m->label, err, ck->ndim, clip_dim(c, ck->d0), ck->ndim > 1 ? clip_dim(c, ck->d1) : -1);
            if (s != SD3_OK) goto fail;
        }
    }
    /* A layer beyond num_hidden_layers means the config does not describe these weights. */
    char extra[128];
    snprintf(extra, sizeof extra, "text_model.encoder.layers.%d.layer_norm1.weight", c->num_hidden_layers);
    if (weights_has(w, extra)) {
        s = sd3_errf(err, SD3_ERR_SHAPE, "%s: %s: tensor '%s' exists but num_hidden_layers is %d", m->label, w->label,
                     extra, c->num_hidden_layers);
        goto fail;
    }
    return SD3_OK;
fail:
    clip_free(m);
    return s;
}

/* ------------------------------------------------------------------------------------------------ */
/* Forward                                                                                          */
/* ------------------------------------------------------------------------------------------------ */

/* Row of ids[b] whose last_hidden_state is pooled: argmax(ids) (first maximum) under the legacy rule
 * (eos_token_id 2), else the first eos_token_id (0 if none), as transformers v4.46 does. */
static int clip_pool_index(const clip_config *c, const int64_t *ids, int T) {
    int best = 0;
    if (c->eos_token_id == 2) {
        for (int t = 1; t < T; t++)
            if (ids[t] > ids[best]) best = t;
        return best;
    }
    for (int t = 0; t < T; t++)
        if (ids[t] == c->eos_token_id) return t;
    return 0;
}

/* Run embeddings and the layers needed, copying out what was asked for (see clip.h). */
sd3_status clip_forward(const clip_model *m, const int64_t *ids, int B, int T, int hidden_index, float *hidden_out,
                        float *last_out, float *embeds_out, sd3_err *err) {
    const clip_config *c = &m->cfg;
    const int L = c->num_hidden_layers, C = c->hidden_size, F = c->intermediate_size, P = c->projection_dim;
    const int NH = c->num_attention_heads, D = C / NH;
    SD3_ASSERT(m->layers);
    if (B < 1 || T < 1 || T > c->max_position_embeddings)
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: bad input size B=%d T=%d (T must be 1..%d)", m->label, B, T,
                        c->max_position_embeddings);
    if (B > (1 << 20) / T) return sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: batch %d too large", m->label, B);
    if (!ids) return sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: no input ids", m->label);
    for (int64_t i = 0; i < (int64_t)B * T; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab_size)
            return sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: token id %lld at [%lld, %lld] is outside the vocabulary (0..%d)",
                            m->label, (long long)ids[i], (long long)(i / T), (long long)(i % T), c->vocab_size - 1);
    int hidx = hidden_index < 0 ? hidden_index + L + 1 : hidden_index;
    if (hidden_out && (hidx < 0 || hidx > L))
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: hidden state index %d is out of range (-%d..%d)", m->label,
                        hidden_index, L + 1, L);
    int n_run = (last_out || embeds_out) ? L : (hidden_out ? hidx : 0);

    /* Activations, sized once and carved: h, x [BT, C]; q, k, v, a [BT, C]; mlp [BT, F]. */
    const int BT = B * T;
    const size_t nC = (size_t)BT * C;
    float *buf = sd3_malloc(sizeof(float) * (6 * nC + (size_t)BT * F));
    if (!buf) return sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory for activations (B=%d T=%d)", m->label, B, T);
    float *h = buf, *x = h + nC, *q = x + nC, *k = q + nC, *v = k + nC, *a = v + nC, *mlp = a + nC;

    /* hidden_states[0] = token embedding + position embedding. */
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            size_t r = (size_t)b * T + t;
            tensor_to_f32(&m->tok_emb, ids[r] * C, C, h + r * C);
            tensor_to_f32(&m->pos_emb, (int64_t)t * C, C, x + r * C);
        }
    k_add(h, h, x, nC);
    if (hidden_out && hidx == 0) memcpy(hidden_out, h, nC * sizeof(float));

    attn_params ap = {.B = B, .H = NH, .Tq = T, .Tk = T, .D = D, .q_ld = C, .k_ld = C, .v_ld = C, .o_ld = C,
                      .q_bstride = (int64_t)T * C, .k_bstride = (int64_t)T * C, .v_bstride = (int64_t)T * C,
                      .o_bstride = (int64_t)T * C, .scale = (float)pow((double)D, -0.5), .causal = 1, .bias = NULL};
    for (int l = 0; l < n_run; l++) {
        const clip_layer *ly = &m->layers[l];
        /* h += out_proj(causal self-attention(LN1(h))) */
        k_layernorm(x, h, &ly->ln1_w, &ly->ln1_b, BT, C, c->layer_norm_eps);
        k_linear(q, x, &ly->q_w, &ly->q_b, BT, C, C);
        k_linear(k, x, &ly->k_w, &ly->k_b, BT, C, C);
        k_linear(v, x, &ly->v_w, &ly->v_b, BT, C, C);
        k_attention(a, q, k, v, &ap);
        k_linear(x, a, &ly->o_w, &ly->o_b, BT, C, C);
        k_add(h, h, x, nC);
        /* h += fc2(act(fc1(LN2(h)))) */
        k_layernorm(x, h, &ly->ln2_w, &ly->ln2_b, BT, C, c->layer_norm_eps);
        k_linear(mlp, x, &ly->fc1_w, &ly->fc1_b, BT, F, C);
        if (c->act == CLIP_ACT_QUICK_GELU) k_quick_gelu(mlp, mlp, (size_t)BT * F);
        else k_gelu_erf(mlp, mlp, (size_t)BT * F);
        k_linear(x, mlp, &ly->fc2_w, &ly->fc2_b, BT, C, F);
        k_add(h, h, x, nC);
        if (hidden_out && hidx == l + 1) memcpy(hidden_out, h, nC * sizeof(float));
    }

    if (last_out || embeds_out) {
        k_layernorm(x, h, &m->final_ln_w, &m->final_ln_b, BT, C, c->layer_norm_eps);
        if (last_out) memcpy(last_out, x, nC * sizeof(float));
        if (embeds_out) {
            for (int b = 0; b < B; b++) {
                int p = clip_pool_index(c, ids + (size_t)b * T, T);
                memcpy(q + (size_t)b * C, x + ((size_t)b * T + p) * C, (size_t)C * sizeof(float));
            }
            k_linear(embeds_out, q, &m->proj_w, NULL, B, P, C);
        }
    }
    sd3_free(buf);
    return SD3_OK;
}

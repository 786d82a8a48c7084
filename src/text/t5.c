/* t5.c — T5 v1.1 encoder (see t5.h for the computation). */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include "io/json_util.h"
#include "kernels/kernels.h"
#include "text/t5.h"

/* ------------------------------------------------------------------------------------------------ */
/* Config                                                                                           */
/* ------------------------------------------------------------------------------------------------ */

/* Read T5Config keys: structural ints required; max_distance and epsilon default as in transformers. */
sd3_status t5_config_read(t5_config *c, const cJSON *config, const char *label, sd3_err *err) {
    memset(c, 0, sizeof *c);
    if (!cJSON_IsObject(config)) return sd3_errf(err, SD3_ERR_FORMAT, "%s: config is not a JSON object", label);
    struct { const char *key; int *dst; } ints[] = {
        {"d_model", &c->d_model},       {"d_kv", &c->d_kv},         {"num_heads", &c->num_heads},
        {"d_ff", &c->d_ff},             {"num_layers", &c->num_layers}, {"vocab_size", &c->vocab_size},
        {"relative_attention_num_buckets", &c->relative_attention_num_buckets},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        sd3_status s = json_req_int(config, ints[i].key, ints[i].dst, label, err);
        if (s != SD3_OK) return s;
        if (*ints[i].dst < 1 || *ints[i].dst > (1 << 24))
            return sd3_errf(err, SD3_ERR_FORMAT, "%s: key '%s' = %d is out of range", label, ints[i].key, *ints[i].dst);
    }
    c->relative_attention_max_distance = 128;
    if (cJSON_GetObjectItemCaseSensitive(config, "relative_attention_max_distance")) {
        sd3_status s = json_req_int(config, "relative_attention_max_distance", &c->relative_attention_max_distance, label, err);
        if (s != SD3_OK) return s;
    }
    double eps = json_num(config, "layer_norm_epsilon", 1e-6);
    if (!(eps > 0 && eps < 1)) return sd3_errf(err, SD3_ERR_FORMAT, "%s: key 'layer_norm_epsilon' = %g is out of range", label, eps);
    c->layer_norm_epsilon = (float)eps;
    const char *ff = json_str(config, "feed_forward_proj", "relu");
    if (strcmp(ff, "gated-gelu"))
        return sd3_errf(err, SD3_ERR_UNSUPPORTED, "%s: feed_forward_proj '%s' is not supported (T5 v1.1 'gated-gelu' only)",
                        label, ff);
    int nb = c->relative_attention_num_buckets;
    if (nb < 4 || nb % 2 || c->relative_attention_max_distance <= nb / 4)
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: relative_attention_num_buckets %d / max_distance %d make no buckets", label,
                        nb, c->relative_attention_max_distance);
    return SD3_OK;
}

/* ------------------------------------------------------------------------------------------------ */
/* Loading                                                                                          */
/* ------------------------------------------------------------------------------------------------ */

typedef struct t5_key {
    const char *key;   /* under encoder.block.{i}. */
    size_t off;        /* field in t5_block */
    int ndim;
    char d0, d1;       /* 'd' model width, 'I' inner (heads x d_kv), 'F' d_ff */
} t5_key;

static const t5_key T5_BLOCK_KEYS[] = {
    {"layer.0.layer_norm.weight", offsetof(t5_block, ln0_w), 1, 'd', 0},
    {"layer.0.SelfAttention.q.weight", offsetof(t5_block, q_w), 2, 'I', 'd'},
    {"layer.0.SelfAttention.k.weight", offsetof(t5_block, k_w), 2, 'I', 'd'},
    {"layer.0.SelfAttention.v.weight", offsetof(t5_block, v_w), 2, 'I', 'd'},
    {"layer.0.SelfAttention.o.weight", offsetof(t5_block, o_w), 2, 'd', 'I'},
    {"layer.1.layer_norm.weight", offsetof(t5_block, ln1_w), 1, 'd', 0},
    {"layer.1.DenseReluDense.wi_0.weight", offsetof(t5_block, wi0_w), 2, 'F', 'd'},
    {"layer.1.DenseReluDense.wi_1.weight", offsetof(t5_block, wi1_w), 2, 'F', 'd'},
    {"layer.1.DenseReluDense.wo.weight", offsetof(t5_block, wo_w), 2, 'd', 'F'},
};

/* A dimension letter of the key table as a number. */
static int64_t t5_dim(const t5_config *c, char d) {
    return d == 'I' ? (int64_t)c->num_heads * c->d_kv : d == 'F' ? c->d_ff : c->d_model;
}

/* Bind one tensor with a shape check and a float dtype check; errors name the model and the key. */
static sd3_status t5_bind(const weights *w, const char *key, tensor *t, const char *label, sd3_err *err, int ndim,
                          int64_t d0, int64_t d1) {
    sd3_status s = weights_get_weight(w, key, t, err, ndim, d0, d1, -1, -1);
    if (s != SD3_OK) sd3_err_prefix(err, "%s", label);
    return s;
}

void t5_free(t5_model *m) {
    /* tensors are views (tensor_free leaves them alone) unless replaced by owned quantised copies (quant_t5) */
    for (int i = 0; m->blocks && i < m->cfg.num_layers; i++) {
        t5_block *b = &m->blocks[i];
        tensor *ts[9] = {&b->ln0_w, &b->q_w, &b->k_w, &b->v_w, &b->o_w, &b->ln1_w, &b->wi0_w, &b->wi1_w, &b->wo_w};
        for (int k = 0; k < 9; k++) tensor_free(ts[k]);
    }
    free(m->blocks);
    memset(m, 0, sizeof *m);
}

/* Read config and bind every tensor, failing on the first missing/misshaped one. */
sd3_status t5_load(t5_model *m, const weights *w, const cJSON *config, const char *label, sd3_err *err) {
    memset(m, 0, sizeof *m);
    snprintf(m->label, sizeof m->label, "%s", label ? label : "t5");
    t5_config *c = &m->cfg;
    sd3_status s = t5_config_read(c, config, m->label, err);
    if (s != SD3_OK) return s;
    const char *emb_key = weights_has(w, "shared.weight") ? "shared.weight" : "encoder.embed_tokens.weight";
    if (!weights_has(w, emb_key)) {
        s = sd3_errf(err, SD3_ERR_NOT_FOUND, "%s: %s: tensor 'shared.weight' (or 'encoder.embed_tokens.weight') is missing",
                     m->label, w->label);
        goto fail;
    }
    if ((s = t5_bind(w, emb_key, &m->shared, m->label, err, 2, c->vocab_size, c->d_model)) ||
        (s = t5_bind(w, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", &m->rel_bias, m->label, err,
                     2, c->relative_attention_num_buckets, c->num_heads)) ||
        (s = t5_bind(w, "encoder.final_layer_norm.weight", &m->final_ln_w, m->label, err, 1, c->d_model, -1)))
        goto fail;
    m->blocks = calloc((size_t)c->num_layers, sizeof *m->blocks);
    if (!m->blocks) { s = sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", m->label); goto fail; }
    for (int i = 0; i < c->num_layers; i++) {
        for (size_t k = 0; k < sizeof T5_BLOCK_KEYS / sizeof T5_BLOCK_KEYS[0]; k++) {
            const t5_key *tk = &T5_BLOCK_KEYS[k];
            char key[256];
            snprintf(key, sizeof key, "encoder.block.%d.%s", i, tk->key);
            tensor *t = (tensor *)((char *)&m->blocks[i] + tk->off);
            s = t5_bind(w, key, t, m->label, err, tk->ndim, t5_dim(c, tk->d0), tk->ndim > 1 ? t5_dim(c, tk->d1) : -1);
            if (s != SD3_OK) goto fail;
        }
    }
    char extra[128];
    snprintf(extra, sizeof extra, "encoder.block.%d.layer.0.layer_norm.weight", c->num_layers);
    if (weights_has(w, extra)) {
        s = sd3_errf(err, SD3_ERR_SHAPE, "%s: %s: tensor '%s' exists but num_layers is %d", m->label, w->label, extra,
                     c->num_layers);
        goto fail;
    }
    return SD3_OK;
fail:
    t5_free(m);
    return s;
}

/* ------------------------------------------------------------------------------------------------ */
/* Forward                                                                                          */
/* ------------------------------------------------------------------------------------------------ */

/* transformers' _relative_position_bucket(bidirectional=True): half the buckets per direction, exact
 * below max_exact = buckets/4, logarithmic up to max_distance (float32 arithmetic as torch does it). */
int t5_relative_bucket(int rel, int num_buckets, int max_distance) {
    int nb = num_buckets / 2;
    int ret = rel > 0 ? nb : 0;
    int n = rel < 0 ? -rel : rel;
    int max_exact = nb / 2;
    if (n < max_exact) return ret + n;
    float lg = logf((float)n / (float)max_exact) / (float)log((double)max_distance / max_exact) * (float)(nb - max_exact);
    int large = max_exact + (int)lg;
    return ret + (large < nb - 1 ? large : nb - 1);
}

/* Embed, run blocks 0..n_run-1, and write hidden_states[index] (see t5.h). */
sd3_status t5_forward_hidden(const t5_model *m, const int64_t *ids, int B, int T, int index, float *out, sd3_err *err) {
    const t5_config *c = &m->cfg;
    const int L = c->num_layers, d = c->d_model, H = c->num_heads, Dh = c->d_kv, I = H * Dh, FF = c->d_ff;
    const int NB = c->relative_attention_num_buckets;
    SD3_ASSERT(m->blocks);
    if (B < 1 || T < 1 || T > 65536 || B > (1 << 22) / T)
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: bad input size B=%d T=%d", m->label, B, T);
    if (!ids || !out) return sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: no input ids or no output buffer", m->label);
    const int64_t V = m->shared.shape[0];
    for (int64_t i = 0; i < (int64_t)B * T; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: token id %lld at [%lld, %lld] is outside the vocabulary (0..%lld)",
                            m->label, (long long)ids[i], (long long)(i / T), (long long)(i % T), (long long)V - 1);
    int idx = index < 0 ? index + L + 1 : index;
    if (idx < 0 || idx > L)
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: hidden state index %d is out of range (-%d..%d)", m->label, index,
                        L + 1, L);
    const int n_run = idx;   /* hidden_states[idx] needs blocks 0..idx-1 (the final norm follows for idx == L) */

    /* Activations, sized once and carved: h, x [BT, d]; q, k, v, a [BT, I]; f0, f1 [BT, FF];
     * bias [H, T, T]; the bias table [NB, H]. */
    const int BT = B * T;
    const size_t nd = (size_t)BT * d, nI = (size_t)BT * I, nF = (size_t)BT * FF;
    const size_t nbias = n_run > 0 ? (size_t)H * T * T : 0;
    float *buf = sd3_malloc(sizeof(float) * (2 * nd + 4 * nI + 2 * nF + nbias + (size_t)NB * H));
    if (!buf) return sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory for activations (B=%d T=%d)", m->label, B, T);
    float *h = buf, *x = h + nd, *q = x + nd, *k = q + nI, *v = k + nI, *a = v + nI, *f0 = a + nI, *f1 = f0 + nF;
    float *bias = f1 + nF, *table = bias + nbias;

    /* hidden_states[0] = shared[ids] */
    for (size_t r = 0; r < (size_t)BT; r++) tensor_to_f32(&m->shared, ids[r] * d, d, h + r * d);

    if (n_run > 0) {
        /* bias[hh, i, j] = rel_bias[bucket(j - i), hh], computed once and used by every block. */
        tensor_to_f32(&m->rel_bias, 0, (int64_t)NB * H, table);
        for (int i = 0; i < T; i++)
            for (int j = 0; j < T; j++) {
                int bk = t5_relative_bucket(j - i, NB, c->relative_attention_max_distance);
                for (int hh = 0; hh < H; hh++) bias[((size_t)hh * T + i) * T + j] = table[(size_t)bk * H + hh];
            }
    }
    attn_params ap = {.B = B, .H = H, .Tq = T, .Tk = T, .D = Dh, .q_ld = I, .k_ld = I, .v_ld = I, .o_ld = I,
                      .q_bstride = (int64_t)T * I, .k_bstride = (int64_t)T * I, .v_bstride = (int64_t)T * I,
                      .o_bstride = (int64_t)T * I, .scale = 1.0f, .causal = 0, .bias = bias};
    const float eps = c->layer_norm_epsilon;
    for (int l = 0; l < n_run; l++) {
        const t5_block *bl = &m->blocks[l];
        /* h += o(attention(RMS(h))) with the relative position bias and no scaling */
        k_rmsnorm(x, h, &bl->ln0_w, BT, d, eps);
        k_linear(q, x, &bl->q_w, NULL, BT, I, d);
        k_linear(k, x, &bl->k_w, NULL, BT, I, d);
        k_linear(v, x, &bl->v_w, NULL, BT, I, d);
        k_attention(a, q, k, v, &ap);
        k_linear(x, a, &bl->o_w, NULL, BT, d, I);
        k_add(h, h, x, nd);
        /* h += wo(gelu_new(wi_0 x) * wi_1 x), x = RMS(h) */
        k_rmsnorm(x, h, &bl->ln1_w, BT, d, eps);
        k_linear(f0, x, &bl->wi0_w, NULL, BT, FF, d);
        k_linear(f1, x, &bl->wi1_w, NULL, BT, FF, d);
        k_gelu_tanh(f0, f0, nF);
        k_mul(f0, f0, f1, nF);
        k_linear(x, f0, &bl->wo_w, NULL, BT, d, FF);
        k_add(h, h, x, nd);
    }
    if (idx == L) k_rmsnorm(out, h, &m->final_ln_w, BT, d, eps);
    else memcpy(out, h, nd * sizeof(float));
    sd3_free(buf);
    return SD3_OK;
}

/* last_hidden_state: hidden_states[L]. */
sd3_status t5_forward(const t5_model *m, const int64_t *ids, int B, int T, float *out, sd3_err *err) {
    return t5_forward_hidden(m, ids, B, T, -1, out, err);
}

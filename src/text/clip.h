/*
 * clip.h — the CLIP text transformer with its projection (transformers' CLIPTextModelWithProjection),
 * as SD3 uses it twice: CLIP-L (text_encoder, quick_gelu) and CLIP-G (text_encoder_2, gelu).
 *
 * Usage:
 *     weights w;  cJSON *cfg = json_load_file("<dir>/config.json", &err);
 *     weights_open_dir(&w, dir, "model", &err);
 *     clip_model m;
 *     if (clip_load(&m, &w, cfg, "text_encoder", &err) != SD3_OK) ...
 *     clip_forward(&m, ids, B, T, -2, hidden, last, embeds, &err);   // hidden_states[-2], ...
 *     clip_free(&m);  weights_close(&w);
 *
 * The model's tensors are views into the weight set's mapping (stored dtype, never copied), so the
 * weights must stay open while the model is used. A loaded model is read-only: several threads may
 * run clip_forward on it at once (each forward allocates its own activations).
 *
 * Computation (transformers v4.46): h = tok_emb[ids] + pos_emb[0..T-1] = hidden_states[0]; per layer
 * h += out_proj(causal_attn(LN1(h))), h += fc2(act(fc1(LN2(h)))) = hidden_states[i+1];
 * last_hidden_state = final_LN(h); pooled row = last_hidden_state at argmax(ids) (eos_token_id 2, the
 * legacy rule SD3's configs select) or at the first eos_token_id; text_embeds = pooled W_proj^T.
 * No padding mask (the SD3 pipeline passes none). Dimension letters: B batch, T tokens, C hidden,
 * F MLP width, P projection, V vocabulary, L layers.
 */
#ifndef SD3_TEXT_CLIP_H
#define SD3_TEXT_CLIP_H

#include <cjson/cJSON.h>
#include "core/core.h"
#include "io/weights.h"

typedef enum clip_act { CLIP_ACT_QUICK_GELU = 0, CLIP_ACT_GELU } clip_act;

/* From config.json (transformers' CLIPTextConfig keys). */
typedef struct clip_config {
    int hidden_size;             /* C */
    int num_hidden_layers;       /* L */
    int num_attention_heads;     /* NH (head dim C / NH) */
    int intermediate_size;       /* F */
    int projection_dim;          /* P */
    int max_position_embeddings; /* longest T */
    int vocab_size;              /* V */
    int eos_token_id;            /* 2 = pool at argmax(ids) (legacy rule), else at the first eos id */
    float layer_norm_eps;
    clip_act act;                /* hidden_act: "quick_gelu" | "gelu" */
} clip_config;

/* text_model.encoder.layers.{i}.* */
typedef struct clip_layer {
    tensor ln1_w, ln1_b;         /* layer_norm1.{weight,bias}          [C] */
    tensor q_w, q_b;             /* self_attn.q_proj.{weight,bias}     [C, C], [C] */
    tensor k_w, k_b;             /* self_attn.k_proj.{weight,bias}     [C, C], [C] */
    tensor v_w, v_b;             /* self_attn.v_proj.{weight,bias}     [C, C], [C] */
    tensor o_w, o_b;             /* self_attn.out_proj.{weight,bias}   [C, C], [C] */
    tensor ln2_w, ln2_b;         /* layer_norm2.{weight,bias}          [C] */
    tensor fc1_w, fc1_b;         /* mlp.fc1.{weight,bias}              [F, C], [F] */
    tensor fc2_w, fc2_b;         /* mlp.fc2.{weight,bias}              [C, F], [C] */
} clip_layer;

typedef struct clip_model {
    clip_config cfg;
    char label[128];             /* what errors call this model ("text_encoder", ...) */
    tensor tok_emb;              /* text_model.embeddings.token_embedding.weight    [V, C] */
    tensor pos_emb;              /* text_model.embeddings.position_embedding.weight [max_pos, C] */
    clip_layer *layers;          /* L of them (owned) */
    tensor final_ln_w, final_ln_b; /* text_model.final_layer_norm.{weight,bias}     [C] */
    tensor proj_w;               /* text_projection.weight                          [P, C] (no bias) */
} clip_model;

/* Read the config keys (every structural key required; error names label and the key). */
sd3_status clip_config_read(clip_config *c, const cJSON *config, const char *label, sd3_err *err);

/* Read config and bind every tensor of w, checking shapes and float dtypes. A missing or misshaped
 * tensor or config key fails with a message naming it; *m is then left freed (clip_free is safe). */
sd3_status clip_load(clip_model *m, const weights *w, const cJSON *config, const char *label, sd3_err *err);
void clip_free(clip_model *m);

/* Run the model on ids [B, T] (1 <= T <= max_position_embeddings, every id in [0, V)). Outputs, each
 * optional (NULL = not wanted):
 *   hidden_out [B, T, C]: hidden_states[hidden_index], Python indexing over the L+1 hidden states
 *              (0 = embeddings, i = after layer i, -1 = after the last layer before the final LN,
 *              -2 = what SD3 uses; clip_skip k means -(k+2)); must be in [-(L+1), L] when wanted;
 *   last_out   [B, T, C]: last_hidden_state (final LayerNorm);
 *   embeds_out [B, P]:    text_embeds (pooled and projected).
 * Layers after the last one needed are not run. Bad arguments give SD3_ERR_INVALID_ARG. */
sd3_status clip_forward(const clip_model *m, const int64_t *ids, int B, int T, int hidden_index, float *hidden_out,
                        float *last_out, float *embeds_out, sd3_err *err);

#endif /* SD3_TEXT_CLIP_H */

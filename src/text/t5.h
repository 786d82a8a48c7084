/*
 * t5.h — the T5 v1.1 encoder (transformers' T5EncoderModel) SD3 uses as text_encoder_3 (T5-XXL:
 * d_model 4096, 64 heads x 64, d_ff 10240, 24 blocks, 4.7 B parameters).
 *
 * Usage:
 *     t5_model m;
 *     if (t5_load(&m, &w, cfg, "text_encoder_3", &err) != SD3_OK) ...
 *     t5_forward(&m, ids, B, T, out, &err);            // last_hidden_state [B, T, d_model]
 *     t5_free(&m);
 *
 * The model's tensors are views into the weight set's mapping (stored dtype, never copied or
 * converted as a whole), so the weights must stay open while the model is used; a forward holds only
 * activations (B*T*d_model floats a few times, the FFN intermediate and the H*T*T position bias).
 * A loaded model is read-only: several threads may run forwards on it at once.
 *
 * Computation (transformers v4.46): h = shared[ids]; bias[h, i, j] = rel_bias[bucket(j - i), h]
 * (bidirectional buckets, computed once per forward, shared by every block); per block
 * h += o(attn(RMS(h))) with scores q k^T + bias (no 1/sqrt(d_kv) scaling, no padding mask), then
 * h += wo(gelu_new(wi_0 x) * wi_1 x), x = RMS(h); output = RMS_final(h).
 * Dimension letters: B batch, T tokens, d d_model, I inner = H*d_kv, FF d_ff, V vocabulary, L blocks.
 */
#ifndef SD3_TEXT_T5_H
#define SD3_TEXT_T5_H

#include <cjson/cJSON.h>
#include "core/core.h"
#include "io/weights.h"

/* From config.json (transformers' T5Config keys). */
typedef struct t5_config {
    int d_model;                          /* d */
    int d_kv;                             /* head dim */
    int num_heads;                        /* H */
    int d_ff;                             /* FF */
    int num_layers;                       /* L */
    int vocab_size;                       /* V (the embedding's rows are checked against it) */
    int relative_attention_num_buckets;   /* 32 */
    int relative_attention_max_distance;  /* 128 (optional key, transformers' default) */
    float layer_norm_epsilon;             /* 1e-6 (optional key, transformers' default) */
} t5_config;

/* encoder.block.{i}.* */
typedef struct t5_block {
    tensor ln0_w;      /* layer.0.layer_norm.weight              [d] */
    tensor q_w;        /* layer.0.SelfAttention.q.weight         [I, d] */
    tensor k_w;        /* layer.0.SelfAttention.k.weight         [I, d] */
    tensor v_w;        /* layer.0.SelfAttention.v.weight         [I, d] */
    tensor o_w;        /* layer.0.SelfAttention.o.weight         [d, I] */
    tensor ln1_w;      /* layer.1.layer_norm.weight              [d] */
    tensor wi0_w;      /* layer.1.DenseReluDense.wi_0.weight     [FF, d] (gelu_new branch) */
    tensor wi1_w;      /* layer.1.DenseReluDense.wi_1.weight     [FF, d] (linear branch) */
    tensor wo_w;       /* layer.1.DenseReluDense.wo.weight       [d, FF] */
} t5_block;

typedef struct t5_model {
    t5_config cfg;
    char label[128];
    tensor shared;     /* shared.weight (or encoder.embed_tokens.weight)                          [V, d] */
    tensor rel_bias;   /* encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight [buckets, H] */
    t5_block *blocks;  /* L of them (owned) */
    tensor final_ln_w; /* encoder.final_layer_norm.weight                                         [d] */
} t5_model;

/* Read the config keys; error names label and the missing key. feed_forward_proj must be "gated-gelu". */
sd3_status t5_config_read(t5_config *c, const cJSON *config, const char *label, sd3_err *err);

/* Read config and bind every tensor, checking shapes and float dtypes; a missing or misshaped tensor
 * or config key fails with a message naming it (*m is then left freed; t5_free is safe). */
sd3_status t5_load(t5_model *m, const weights *w, const cJSON *config, const char *label, sd3_err *err);
void t5_free(t5_model *m);

/* Bidirectional relative position bucket of rel = key_pos - query_pos (transformers'
 * _relative_position_bucket with bidirectional=True, float32 log, truncation toward zero). */
int t5_relative_bucket(int rel, int num_buckets, int max_distance);

/* last_hidden_state [B, T, d] of ids [B, T] (T >= 1, every id in [0, V)). */
sd3_status t5_forward(const t5_model *m, const int64_t *ids, int B, int T, float *out, sd3_err *err);

/* hidden_states[index] in transformers' numbering [B, T, d]: 0 = embeddings, i < L = output of block
 * i-1, L (or -1) = last_hidden_state (after the final norm; the last block's raw output is not one of
 * them). Blocks after the one needed are not run. */
sd3_status t5_forward_hidden(const t5_model *m, const int64_t *ids, int B, int T, int index, float *out,
                             sd3_err *err);

#endif /* SD3_TEXT_T5_H */

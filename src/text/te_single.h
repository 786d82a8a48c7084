/*
 * te_single.h — text encoders outside a diffusers folder: inside a single-file checkpoint
 * (`text_encoders.clip_l.transformer.`, `text_encoders.clip_g.transformer.`, `text_encoders.t5xxl.transformer.`)
 * or in a file of their own (clip_l.safetensors, clip_g.safetensors, t5xxl_fp16.safetensors,
 * t5xxl_fp8_e4m3fn.safetensors, as stable-diffusion.cpp and ComfyUI users have them), whose keys are the
 * transformers keys, possibly under some prefix.
 *
 * Usage:
 *     char prefix[256];
 *     te_kind k;
 *     if (te_find(f, TE_ROLE_T5, &k, prefix, sizeof prefix, &err) != SD3_OK) ...   // which prefix holds a T5
 *     weights w;  ... a view of f with that prefix ...
 *     cJSON *cfg = te_t5_config_infer(&w, "t5xxl.safetensors", &err);                // T5Config keys
 *     t5_load(&m, &w, cfg, "t5xxl", &err);
 *
 * Config rules (a checkpoint has no config.json; these are what the real SD3 encoders are):
 *   CLIP: hidden_size C and vocab_size from text_model.embeddings.token_embedding.weight [V, C];
 *         max_position_embeddings from position_embedding [T, C]; num_hidden_layers = count of
 *         text_model.encoder.layers.N; intermediate_size from mlp.fc1.weight [F, C];
 *         num_attention_heads = C / 64 (the head size is not visible in the weights; every OpenAI/OpenCLIP
 *         text tower has 64: CLIP-L 12 x 64, CLIP-G 20 x 64); projection_dim from text_projection.weight
 *         [P, C] (C when absent); hidden_act by role: quick_gelu for CLIP-L (OpenAI), gelu for CLIP-G
 *         (OpenCLIP bigG); layer_norm_eps 1e-5; eos_token_id 2 (pool at the argmax id, the legacy rule
 *         SD3's configs select).
 *   T5:   d_model and vocab_size from shared.weight (or encoder.embed_tokens.weight) [V, d]; num_layers =
 *         count of encoder.block.N; num_heads and relative_attention_num_buckets from
 *         block 0's relative_attention_bias [buckets, H]; d_kv = rows of SelfAttention.q.weight / H;
 *         d_ff from DenseReluDense.wi_0.weight [FF, d]; feed_forward_proj gated-gelu (T5 v1.1);
 *         relative_attention_max_distance 128; layer_norm_epsilon 1e-6. Every value is visible, so T5
 *         configs are exact for any size.
 * With the real sizes a CLIP file given for the wrong role (CLIP-G width 1280 as --clip-l, or CLIP-L
 * width 768 as --clip-g) is an error naming the file and the width expected.
 *
 * Failure contract: every function leaves a message in err naming the file (label) and what was expected.
 */
#ifndef SD3_TEXT_TE_SINGLE_H
#define SD3_TEXT_TE_SINGLE_H

#include <cjson/cJSON.h>
#include "core/core.h"
#include "io/weights.h"

typedef enum te_role { TE_ROLE_CLIP_L = 0, TE_ROLE_CLIP_G, TE_ROLE_T5 } te_role;
typedef enum te_kind { TE_KIND_NONE = 0, TE_KIND_CLIP, TE_KIND_T5 } te_kind;

/* The head size assumed when inferring CLIP configs. */
#define TE_CLIP_HEAD_DIM 64
/* Widths of the real SD3 CLIP encoders (the role check applies to these). */
#define TE_CLIP_L_WIDTH 768
#define TE_CLIP_G_WIDTH 1280

/* A short name of a role: "CLIP-L", "CLIP-G", "T5-XXL". */
const char *te_role_name(te_role r);

/* Find the text encoder of a role in f: the key prefix under which a CLIP (…text_model.embeddings.
 * token_embedding.weight) or T5 (…encoder.block.0.layer.0.SelfAttention.q.weight) sits. When several
 * encoders of that kind are in the file, the one whose prefix names the role (clip_l / clip_g / t5) is
 * taken. SD3_ERR_NOT_FOUND names the file, the role expected and what the file does hold instead;
 * SD3_ERR_UNSUPPORTED for "scaled fp8" files (per-tensor scale_weight keys). */
sd3_status te_find(const st_file *f, te_role role, char *prefix, size_t n, sd3_err *err);

/* transformers' CLIPTextConfig keys inferred from the tensor shapes of w (see the rules above); label
 * names the file in errors. NULL + err on failure. Free with cJSON_Delete. */
cJSON *te_clip_config_infer(const weights *w, te_role role, const char *label, sd3_err *err);
/* T5Config keys inferred from the shapes of w. NULL + err on failure. */
cJSON *te_t5_config_infer(const weights *w, const char *label, sd3_err *err);

#endif /* SD3_TEXT_TE_SINGLE_H */

/*
 * mmdit.h — the SD3 / SD3.5 transformer (diffusers' SD3Transformer2DModel): MMDiT joint blocks with
 * adaLN-Zero, optional QK RMSNorm (SD3.5), MMDiT-X image-only second attention (SD3.5 medium).
 *
 * Usage:
 *
 *     mmdit_model m;
 *     sd3_err err = {0};
 *     if (mmdit_load_dir(&m, "sd3/transformer", &err) != SD3_OK) ...        // diffusers folder
 *     // or: mmdit_load_file(&m, "sd3_medium.safetensors", NULL, &err)      // original single file
 *     mmdit_forward(&m, x, B, H, W, ctx, S, pooled, t, NULL, 0, out, &err);
 *     mmdit_free(&m);
 *
 * Weights stay views into the mmapped files in their stored dtype (except the two adaLN linears the
 * original layout stores with swapped halves, which get a small owned copy). Activations are F32,
 * allocated once per forward (one block, carved). A model is read-only during forward; the kernels'
 * thread pool is process-wide, so run one forward at a time.
 *
 * Dimension letters: B batch, C hidden width (heads x head_dim), D head_dim, Tx image tokens
 * ((H/p) x (W/p)), Tc text tokens (S), J joint_attention_dim, P pooled_projection_dim.
 */
#ifndef SD3_MMDIT_H
#define SD3_MMDIT_H

#include "core/core.h"
#include "io/weights.h"
#include <cjson/cJSON.h>

#define MMDIT_MAX_LAYERS 256
#define MMDIT_FREQ_DIM 256       /* timestep sinusoid width (Timesteps(256)) */
#define MMDIT_EPS 1e-6f          /* every LayerNorm and RMSNorm of the model */

/* The diffusers config.json fields (SD3Transformer2DModel). */
typedef struct mmdit_config {
    int sample_size;             /* default latent size (pipeline default resolution / 8) */
    int patch_size;              /* p: 2 */
    int in_channels;             /* latent channels: 16 */
    int out_channels;            /* 16 */
    int num_layers;              /* number of joint blocks */
    int attention_head_dim;      /* D */
    int num_attention_heads;     /* C / D */
    int joint_attention_dim;     /* J: T5 width (4096) */
    int caption_projection_dim;  /* must equal C */
    int pooled_projection_dim;   /* P: 2048 */
    int pos_embed_max_size;      /* M: the stored sin-cos table is M x M */
    int qk_norm;                 /* 0 = none, 1 = "rms_norm" */
    int n_dual;                  /* dual_attention_layers (MMDiT-X blocks with attn2) */
    int dual_attention_layers[MMDIT_MAX_LAYERS];
} mmdit_config;

/* diffusers' defaults (SD3 medium) for fields a config.json leaves out. */
mmdit_config mmdit_config_default(void);
/* Read a parsed config.json; label names it in errors. Validates every field. */
sd3_status mmdit_config_from_json(mmdit_config *cfg, const cJSON *j, const char *label, sd3_err *err);
/* Read a config.json file. */
sd3_status mmdit_config_load(mmdit_config *cfg, const char *path, sd3_err *err);
/* Check ranges and consistency (positive sizes, heads x head_dim == caption_projection_dim, dual
 * layers inside [0, num_layers), no repeats). */
sd3_status mmdit_config_validate(const mmdit_config *cfg, const char *label, sd3_err *err);
/* Infer the config of an original-layout (single-file) checkpoint from its tensor shapes, as diffusers'
 * conversion does; w is the set seen through the prefix of the transformer (see mmdit_original_prefix).
 * head_dim is not inferable from shapes: pass the model's (64 for every released SD3/SD3.5). */
sd3_status mmdit_config_infer(mmdit_config *cfg, const weights *w, int head_dim, sd3_err *err);
/* The key prefix of the transformer in a single-file checkpoint: "model.diffusion_model." or "" (a
 * bare original-layout transformer); NULL if w holds no original-layout transformer. */
const char *mmdit_original_prefix(const weights *w);
/* Is 0 <= i < num_layers one of the dual-attention (MMDiT-X) blocks? */
int mmdit_config_is_dual(const mmdit_config *cfg, int i);

/* ------------------------------------------------------------------------------------------------ */
/* Weights: named after the diffusers keys (original single-file keys in the key table, mmdit_load.c) */
/* ------------------------------------------------------------------------------------------------ */

/* LoRA hook (filled and owned by src/lora/; see lora.h): one low-rank adapter on a Linear. The forward
 * adds scale * (x A^T) B^T to the Linear's output for every adapter in the list, computing the rank-r
 * products with k_linear (W + B A is never formed at run time). */
typedef struct mmdit_lora_adapter {
    tensor A;                              /* lora_A / lora_down [r, K], any float dtype */
    tensor B;                              /* lora_B / lora_up [N, r] (may be a row slice of a fused qkv B) */
    float scale;                           /* user scale x alpha / r */
    struct mmdit_lora_adapter *next;
} mmdit_lora_adapter;

/* A Linear: weight [N, K], bias [N]. */
typedef struct mmdit_linear {
    tensor weight;
    tensor bias;
    mmdit_lora_adapter *lora;              /* LoRA hook: adapters applied at run time; NULL = plain Linear */
} mmdit_linear;

/* transformer_blocks.{i}.* — C = hidden, D = head_dim, F = 4C (FeedForward mult 4). */
typedef struct mmdit_block {
    mmdit_linear norm1_linear;          /* norm1.linear [6C | 9C (dual), C] */
    mmdit_linear norm1_context_linear;  /* norm1_context.linear [6C | 2C (last block), C] */
    mmdit_linear attn_to_q;             /* attn.to_q [C, C] */
    mmdit_linear attn_to_k;             /* attn.to_k [C, C] */
    mmdit_linear attn_to_v;             /* attn.to_v [C, C] */
    mmdit_linear attn_add_q_proj;       /* attn.add_q_proj [C, C] */
    mmdit_linear attn_add_k_proj;       /* attn.add_k_proj [C, C] */
    mmdit_linear attn_add_v_proj;       /* attn.add_v_proj [C, C] */
    tensor attn_norm_q;                 /* attn.norm_q.weight [D] (qk_norm) */
    tensor attn_norm_k;                 /* attn.norm_k.weight [D] (qk_norm) */
    tensor attn_norm_added_q;           /* attn.norm_added_q.weight [D] (qk_norm) */
    tensor attn_norm_added_k;           /* attn.norm_added_k.weight [D] (qk_norm) */
    mmdit_linear attn_to_out_0;         /* attn.to_out.0 [C, C] */
    mmdit_linear attn_to_add_out;       /* attn.to_add_out [C, C] (not in the last block) */
    mmdit_linear attn2_to_q;            /* attn2.to_q [C, C] (dual) */
    mmdit_linear attn2_to_k;            /* attn2.to_k [C, C] (dual) */
    mmdit_linear attn2_to_v;            /* attn2.to_v [C, C] (dual) */
    tensor attn2_norm_q;                /* attn2.norm_q.weight [D] (dual and qk_norm) */
    tensor attn2_norm_k;                /* attn2.norm_k.weight [D] (dual and qk_norm) */
    mmdit_linear attn2_to_out_0;        /* attn2.to_out.0 [C, C] (dual) */
    mmdit_linear ff_net_0_proj;         /* ff.net.0.proj [F, C] */
    mmdit_linear ff_net_2;              /* ff.net.2 [C, F] */
    mmdit_linear ff_context_net_0_proj; /* ff_context.net.0.proj [F, C] (not in the last block) */
    mmdit_linear ff_context_net_2;      /* ff_context.net.2 [C, F] (not in the last block) */
    int context_pre_only;               /* last block: context stream only feeds the attention */
    int dual;                           /* MMDiT-X block (attn2) */
} mmdit_block;

typedef struct mmdit_model {
    mmdit_config cfg;
    tensor pos_embed_pos_embed;                        /* pos_embed.pos_embed [1, M*M, C] */
    mmdit_linear pos_embed_proj;                       /* pos_embed.proj [C, in, p, p] (conv k=s=p) */
    mmdit_linear time_text_embed_timestep_embedder_linear_1; /* [C, 256] */
    mmdit_linear time_text_embed_timestep_embedder_linear_2; /* [C, C] */
    mmdit_linear time_text_embed_text_embedder_linear_1;     /* [C, P] */
    mmdit_linear time_text_embed_text_embedder_linear_2;     /* [C, C] */
    mmdit_linear context_embedder;                     /* context_embedder [C, J] */
    mmdit_block *blocks;                               /* transformer_blocks, num_layers of them */
    mmdit_linear norm_out_linear;                      /* norm_out.linear [2C, C] (scale; shift) */
    mmdit_linear proj_out;                             /* proj_out [p*p*out, C] */
    int original_layout;                               /* loaded from a single-file checkpoint */
    weights w;                                         /* the files, when the model opened them */
    int owns_weights;
    /* LoRA hook: src/lora/'s bookkeeping (attached adapters, fused weight copies) and the function that
     * undoes it all; mmdit_free calls lora_release(m) first when set. NULL on a plain model. */
    void *lora_state;
    void (*lora_release)(struct mmdit_model *m);
    /* Layer streaming (set by the caller after loading; 0 = off): while block i runs, block i+1's byte
     * ranges in the model's file mappings are advised in (MADV_WILLNEED, the kernel reads ahead), and once
     * block i is done the page-aligned interior of its ranges is dropped from the resident set
     * (MADV_DONTNEED; the file stays mapped and the pages come back from the page cache or the disk at the
     * next step). Output is bit-identical. Only weights used in place from the mapping shrink; owned copies
     * (int8/int4 quantised Linears, fused LoRA weights, swapped adaLN halves) and in-memory files stay. */
    int stream_layers;
} mmdit_model;

/* Load a diffusers transformer folder: <dir>/config.json + diffusion_pytorch_model[.fp16].safetensors
 * (or shards). The model owns the files. */
sd3_status mmdit_load_dir(mmdit_model *m, const char *dir, sd3_err *err);
/* Load an original-layout single-file checkpoint (sd3_medium.safetensors, sd3.5_large.safetensors, ...
 * or a bare transformer). config_json: the diffusers transformer config.json to use, or NULL to infer the
 * config from the tensor shapes (head_dim 64). The model owns the file. */
sd3_status mmdit_load_file(mmdit_model *m, const char *path, const char *config_json, sd3_err *err);
/* Build the model over an already open weight set (diffusers keys, or the original keys with or without
 * "model.diffusion_model."), checking every tensor against cfg. w must outlive m (its tensors are views). */
sd3_status mmdit_load_weights(mmdit_model *m, const weights *w, const mmdit_config *cfg, sd3_err *err);
/* Free owned copies and, if owned, close the files (after detaching any LoRA through m->lora_release).
 * Safe on a zeroed or failed-load model. */
void mmdit_free(mmdit_model *m);

/* One Linear of a loaded model with its checkpoint names, for code that addresses Linears by key (LoRA). */
typedef struct mmdit_named_linear {
    mmdit_linear *lin;
    char diffusers[96];   /* diffusers module path without ".weight": "transformer_blocks.3.attn.to_q" */
    char original[96];    /* original single-file module path: "joint_blocks.3.x_block.attn.qkv" */
    int part;             /* original is a fused [q; k; v]: this Linear is row third `part`; -1: whole */
    int swap;             /* the original stores this Linear's two row halves swapped ([shift; scale]) */
} mmdit_named_linear;
/* Every Linear of m that the forward runs through its Linear helper (all but the patch-embedding conv),
 * in a fixed order. Writes up to cap entries to out (may be NULL when cap is 0); returns the total count. */
int mmdit_list_linears(mmdit_model *m, mmdit_named_linear *out, int cap);

/* ------------------------------------------------------------------------------------------------ */
/* Forward                                                                                          */
/* ------------------------------------------------------------------------------------------------ */

/* Called with named intermediate activations during a forward (names as in the golden files:
 * "patch_embed_plus_pos" (B, Tx, C), "timestep_sinusoid" (B, 256), "timestep_embedding",
 * "pooled_embedding", "temb" (B, C), "context_after_caption_projection" (B, Tc, C),
 * "block{i}_norm1_hidden", "block{i}_norm1_context", "block{i}_attn_hidden", "block{i}_attn_context",
 * "block{i}_attn2_hidden", "block{i}_hidden_out", "block{i}_context_out", "norm_out",
 * "proj_out" (B, Tx, p*p*out)). Data is valid only during the call. */
typedef struct mmdit_hook {
    void (*fn)(void *user, const char *name, const float *data, int64_t n);
    void *user;
} mmdit_hook;

/* Velocity prediction for latents x (B, in, H, W), text embeddings ctx (B, S, J), pooled (B, P) and
 * timesteps t (B) (sigma * 1000). out: (B, out, H, W). skip_layers: n_skip block indices in
 * [0, num_layers) whose blocks are not run (skip-layer guidance, as diffusers' forward(skip_layers=...):
 * both streams pass through unchanged); NULL/0 for none; an index outside the blocks is an error (diffusers
 * would ignore it silently). H and W must be multiples of patch_size with (H/p, W/p) inside
 * pos_embed_max_size (SD3_ERR_INVALID_ARG naming the limit otherwise). */
sd3_status mmdit_forward(const mmdit_model *m, const float *x, int B, int H, int W, const float *ctx, int S,
                         const float *pooled, const float *timestep, const int *skip_layers, int n_skip,
                         float *out, sd3_err *err);
/* Same, calling hook (may be NULL) with the intermediates. */
sd3_status mmdit_forward_hooked(const mmdit_model *m, const float *x, int B, int H, int W, const float *ctx,
                                int S, const float *pooled, const float *timestep, const int *skip_layers,
                                int n_skip, float *out, const mmdit_hook *hook, sd3_err *err);

/* Layer streaming (m->stream_layers): apply advice (MMDIT_STREAM_PREFETCH = MADV_WILLNEED, the kernel
 * reads block i in ahead; MMDIT_STREAM_RELEASE = MADV_DONTNEED, block i leaves the resident set) to the ranges of block i's weights that lie in the model's own file mappings
 * (whole pages for WILLNEED; only pages lying entirely inside the block's ranges for DONTNEED, so a page
 * shared with a neighbour's tensor stays). Returns the bytes advised (0 when nothing of block i is in a
 * mapping, e.g. quantised copies or weights the model does not own). Read-only mappings only: never
 * changes what the weights hold. */
enum { MMDIT_STREAM_PREFETCH = 1, MMDIT_STREAM_RELEASE = 2 };
int64_t mmdit_stream_advise(const mmdit_model *m, int i, int advice);

/* Timestep sinusoid exactly as diffusers computes it in float32 (Timesteps(256, flip_sin_to_cos=True,
 * shift 0)): out[b] = [cos(t f_k) (128), sin(t f_k) (128)], f_k = exp(-ln(10000) k / 128). */
void mmdit_timestep_sinusoid(float *out, const float *timestep, int B);

#endif /* SD3_MMDIT_H */

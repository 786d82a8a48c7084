/*
 * lora_train.h — the trainable LoRA parameter set of train_dreambooth_lora_sd3.py: peft's LoraConfig(r=rank,
 * lora_alpha=alpha, init_lora_weights="gaussian", target_modules=...) on the SD3 transformer.
 *
 * Usage:
 *
 *     lt_set L;
 *     lt_create(&L, &model, 4, 4.0f, NULL, NULL, &err);  // script defaults: the 8 attention projections
 *     lt_init_gaussian(&L, &gen);                          // A ~ N(0, 1/r), B = 0 (peft "gaussian")
 *     ... train (train.h), lt_zero_grad(&L) before each accumulation window ...
 *     lt_save(&L, "out/pytorch_lora_weights.safetensors", &err);  // the script's keys
 *     lt_free(&L);
 *
 * Target modules (--lora_layers, --lora_blocks) follow peft's rule: a module is adapted when its full name
 * equals a target or ends with "." + target; --lora_blocks i,j restricts to transformer_blocks.{i,j}.
 * Trainable here: the Linears of the joint blocks' attention (attn.to_q/k/v, to_out.0, add_q/k/v_proj,
 * to_add_out), MMDiT-X attention (attn2.to_q/k/v, attn2.to_out.0) and feed-forwards (ff.net.0.proj,
 * ff.net.2, ff_context.net.0.proj, ff_context.net.2). A target naming anything else that exists
 * (norm1.linear, proj_out, ...) is SD3_ERR_UNSUPPORTED (the backward does not carry gradients into the
 * adaLN path); a target that matches no module is SD3_ERR_INVALID_ARG, as peft raises.
 *
 * Every factor is F32, owned, with its gradient and AdamW state (m, v) beside it.
 */
#ifndef SD3_LORA_TRAIN_H
#define SD3_LORA_TRAIN_H

#include "core/core.h"
#include "core/rng.h"
#include "io/safetensors.h"
#include "mmdit/mmdit.h"

/* One adapted Linear: y += s (x A^T) B^T. */
typedef struct lt_module {
    char name[96];              /* diffusers module path: "transformer_blocks.3.attn.to_q" */
    const mmdit_linear *lin;    /* the frozen base Linear of the model */
    int block;                  /* transformer block index */
    int N, K, r;                /* out, in features, rank */
    float s;                    /* alpha / r */
    float *A, *B;               /* lora_A.weight [r, K], lora_B.weight [N, r] */
    float *dA, *dB;             /* gradients (same shapes) */
    float *mA, *vA, *mB, *vB;   /* AdamW exp_avg / exp_avg_sq */
    float *h;                   /* forward's x A^T (h_rows x r), kept for the backward */
    int64_t h_rows;
} lt_module;

typedef struct lt_set {
    lt_module *mods;
    int n;
    int rank;
    float alpha;
} lt_set;

/* The script's default target modules (comma-separated, as --lora_layers takes them). */
#define LT_DEFAULT_LAYERS \
    "attn.add_k_proj,attn.add_q_proj,attn.add_v_proj,attn.to_add_out,attn.to_k,attn.to_out.0,attn.to_q,attn.to_v"

/* Build the set on m: layers = --lora_layers (NULL = LT_DEFAULT_LAYERS), blocks = --lora_blocks (NULL = all).
 * Factors start at zero (call lt_init_gaussian or lt_load). m must outlive the set. */
sd3_status lt_create(lt_set *L, const mmdit_model *m, int rank, float alpha, const char *layers, const char *blocks,
                     sd3_err *err);
void lt_free(lt_set *L);

/* peft's "gaussian" init: A ~ N(0, (1/r)^2) drawn with torch.normal_ per module in set order, B = 0. */
void lt_init_gaussian(lt_set *L, torch_gen *g);

/* Set the factors from a file's tensors "<prefix><module>.lora_A.weight" / ".lora_B.weight" (prefix e.g.
 * "transformer." or "param_before."); every module must be present with the right shape. */
sd3_status lt_load_st(lt_set *L, const st_file *f, const char *prefix, sd3_err *err);

/* Write the factors with keys "transformer.<module>.lora_{A,B}.weight" (the script's
 * pytorch_lora_weights.safetensors), atomically (temporary file + rename). */
sd3_status lt_save(const lt_set *L, const char *path, sd3_err *err);

/* Zero every gradient. */
void lt_zero_grad(lt_set *L);

/* Make sure every module's h holds `rows` rows (SD3_ERR_NOMEM otherwise). */
sd3_status lt_reserve(lt_set *L, int64_t rows, sd3_err *err);

/* The module adapting lin, or NULL. */
lt_module *lt_find(const lt_set *L, const mmdit_linear *lin);

/* Total number of trainable parameters. */
int64_t lt_numel(const lt_set *L);

#endif /* SD3_LORA_TRAIN_H */

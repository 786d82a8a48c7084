/*
 * lora.h — LoRA adapters for the SD3 transformer at inference (diffusers/PEFT semantics): an adapted Linear
 * computes  y = W x + b + scale * (alpha / r) * B (A x)  with A = lora_A / lora_down [r, in] and
 * B = lora_B / lora_up [out, r]; alpha = r when the file stores none.
 *
 * Usage (several LoRAs at once, each with its own scale):
 *
 *     lora_file *f;
 *     if (lora_open(&f, "pytorch_lora_weights.safetensors", &err) != SD3_OK) ...
 *     if (lora_attach(&model, f, 0.8f, 0, &err) != SD3_OK) ...    // run time: y += s (x A^T) B^T
 *     lora_close(f);                   // the model keeps the file open while adapters use it
 *     mmdit_forward(&model, ...);
 *     lora_fuse(&model, &err);         // optional: W' = W + s B A (owned F32 copies), adapters folded in
 *     lora_unfuse(&model);             // the original weights back, bit for bit; adapters run again
 *     lora_detach_all(&model);         // plain model again (mmdit_free does this too)
 *
 * Key formats understood (grouped per module; tensor suffixes .lora_A.weight / .lora_B.weight,
 * .lora_down.weight / .lora_up.weight, .lora.down.weight / .lora.up.weight,
 * .lora_linear_layer.down.weight / .lora_linear_layer.up.weight, and .alpha):
 *   - diffusers / PEFT (what train_dreambooth_lora_sd3.py saves): "transformer.<diffusers module>", also
 *     bare "<diffusers module>" and "base_model.model.<diffusers module>";
 *     e.g. transformer.transformer_blocks.3.attn.to_q.lora_A.weight
 *   - kohya / ComfyUI: "lora_unet_<original module with '_' for '.'>", e.g.
 *     lora_unet_joint_blocks_3_x_block_attn_qkv.lora_down.weight; OneTrainer "lora_transformer_<diffusers
 *     module with '_'>";
 *   - original single-file layout: "diffusion_model.<original module>" (or "model.diffusion_model.",
 *     or bare), e.g. diffusion_model.joint_blocks.3.context_block.attn.qkv.lora_A.weight.
 *   Original-layout modules are mapped as mmdit_load.c maps the weights: a fused attn.qkv adapter
 *   (B [3C, r], A [r, C]) becomes three adapters on q, k, v sharing A with the matching third of B's rows;
 *   the last context adaLN and final_layer adaLN store [shift; scale], so B's row halves are swapped.
 *   Text-encoder LoRAs ("text_encoder.", "text_encoder_2.", "text_encoder_3.", "lora_te1_", "lora_te2_",
 *   "lora_te3_", "lora_te_") are read and counted (lora_count) and skipped by lora_attach: the CLIP ones
 *   are applied with lora_clip_fuse (lora_clip.h); T5 ones are not supported (lora_attach warns).
 *
 * Errors: a module that maps onto no Linear of the model, or a tensor that is not part of a LoRA, fails
 * lora_attach listing the first few names and the count (lenient: LOG_WARN and go on without them); a
 * rank / in / out mismatch fails naming the key and both shapes; A without B (or B without A) and DoRA
 * (.dora_scale / .lora_magnitude_vector) modules fail too (lenient: warned about and skipped / applied
 * without the magnitude, as diffusers does). lora_attach changes nothing when it fails.
 *
 * Fusing: each affected weight becomes an owned F32 copy W + sum_i s_i B_i A_i (F32/F16/BF16 bases only;
 * quantised bases are SD3_ERR_UNSUPPORTED for fusing, run-time adapters work on any weight dtype k_linear
 * takes). The original view is kept, so lora_unfuse restores the exact base weights. Fused copies take
 * 4 bytes per weight of each affected Linear.
 *
 * Threading: attach / fuse / unfuse / detach change the model; do not call them during a forward.
 */
#ifndef SD3_LORA_H
#define SD3_LORA_H

#include "core/core.h"
#include "io/safetensors.h"
#include "mmdit/mmdit.h"

/* Which model a LoRA module belongs to (from its key prefix). */
typedef enum lora_target {
    LORA_TARGET_TRANSFORMER = 0,
    LORA_TARGET_CLIP_L,      /* text_encoder. / lora_te1_ / lora_te_ */
    LORA_TARGET_CLIP_G,      /* text_encoder_2. / lora_te2_ */
    LORA_TARGET_T5,          /* text_encoder_3. / lora_te3_ */
    LORA_TARGET_COUNT
} lora_target;

/* How a module's path inside its target is spelled. */
typedef enum lora_naming {
    LORA_NAME_DIFFUSERS = 0,     /* "transformer_blocks.3.attn.to_q" */
    LORA_NAME_DIFFUSERS_US,      /* "transformer_blocks_3_attn_to_q" */
    LORA_NAME_ORIGINAL,          /* "joint_blocks.3.x_block.attn.qkv" */
    LORA_NAME_ORIGINAL_US,       /* "joint_blocks_3_x_block_attn_qkv" */
    LORA_NAME_ANY,               /* bare dotted name: diffusers or original */
} lora_naming;

/* One adapted module of a file: the tensors sharing one key stem. */
typedef struct lora_module {
    char *stem;          /* key without the tensor suffix, as in the file */
    char *key_a, *key_b; /* full keys of A and B (NULL if absent) */
    tensor A;            /* [r, in] (a [r, in, 1, 1] kernel is viewed as [r, in]) */
    tensor B;            /* [out, r] */
    float alpha;         /* stored alpha, or r when the file has none */
    int has_alpha;
    int has_dora;        /* a .dora_scale was stored (DoRA; not supported) */
    lora_target target;
    lora_naming naming;
    const char *path;    /* the module path inside the target (points into stem) */
} lora_module;

/* An open LoRA file (reference-counted: lora_attach keeps it open for the adapters). */
typedef struct lora_file {
    char *path;
    st_file *st;
    lora_module *mods;
    int n_mods;
    char **stray;        /* tensor names that are no LoRA part (no known suffix) */
    int n_stray;
    void **copies;       /* owned aligned copies of misaligned tensors */
    int n_copies;
    int refs;
} lora_file;

/* Open and parse a LoRA safetensors file (keys grouped per module, formats detected per key). Fails
 * only on an unreadable file or a malformed LoRA tensor (wrong rank, non-float dtype, alpha not a
 * scalar); mapping onto a model happens in lora_attach. */
sd3_status lora_open(lora_file **out, const char *path, sd3_err *err);
/* Drop the caller's reference (the file is freed once no model uses it). NULL is fine. */
void lora_close(lora_file *f);
/* Number of modules of the file for a target (e.g. LORA_TARGET_CLIP_L). */
int lora_count(const lora_file *f, lora_target t);

/* Attach every transformer module of f to m at run time with user scale `scale` (effective scale =
 * scale * alpha / r per module). Several files (or the same file twice) may be attached; their deltas add.
 * lenient: modules/keys that map to nothing (and incomplete or DoRA modules) are warned about instead of
 * failing. Text-encoder modules are left out (see above). Nothing changes on failure. */
sd3_status lora_attach(mmdit_model *m, lora_file *f, float scale, int lenient, sd3_err *err);
/* Unfuse, remove every adapter and release the files. Safe on a model without LoRA. */
void lora_detach_all(mmdit_model *m);
/* Number of run-time adapters now on m's Linears (a fused qkv module counts three) and, if n_fused is
 * not NULL, the number folded into fused weights. */
int lora_adapter_count(const mmdit_model *m, int *n_fused);

/* Fold every run-time adapter into its weight: W' = W + sum s B A as an owned F32 copy (the original view
 * is kept). Adapters attached later run at run time until the next fuse. SD3_ERR_UNSUPPORTED (nothing
 * changed) if an affected weight is quantised; SD3_ERR_NOMEM likewise. */
sd3_status lora_fuse(mmdit_model *m, sd3_err *err);
/* Restore the original weights exactly and make the folded adapters run-time adapters again. */
void lora_unfuse(mmdit_model *m);

/* Parse a command-line spec "FILE[:SCALE]" (SCALE a finite number; a suffix after the last ':' that is
 * not a number is part of the path). path gets the file name; scale defaults to 1. */
sd3_status lora_parse_spec(const char *spec, char *path, size_t path_size, float *scale, sd3_err *err);

#endif /* SD3_LORA_H */

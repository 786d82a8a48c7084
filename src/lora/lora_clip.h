/*
 * lora_clip.h — LoRA modules for the CLIP text encoders (text_encoder.* / lora_te1_* for CLIP-L,
 * text_encoder_2.* / lora_te2_* for CLIP-G), applied by fusing: clip.c has no run-time hook, so each
 * adapted Linear's weight is replaced by an owned F32 copy W + sum s B A (s = user scale x alpha / r; the
 * SD3 pipeline scales text-encoder LoRAs with the same `scale` as the transformer's). The original views
 * are kept and lora_clip_unfuse puts them back exactly.
 *
 *     lora_clip_state *st = NULL;
 *     lora_clip_fuse(&clip_l, LORA_TARGET_CLIP_L, f, 0.8f, 0, &st, &err);   // more files: same st
 *     ... clip_forward ...
 *     lora_clip_unfuse(&clip_l, &st);                                      // before clip_free
 *
 * Module paths are those of transformers' CLIPTextModelWithProjection: text_model.encoder.layers.{i}.
 * self_attn.{q,k,v,out}_proj, text_model.encoder.layers.{i}.mlp.fc{1,2} and text_projection (underscored
 * after lora_te1_ / lora_te2_). Unmatched / incomplete / DoRA modules and shape mismatches are handled as in
 * lora_attach (lenient mode warns instead). T5 LoRAs (text_encoder_3., lora_te3_) are not supported.
 */
#ifndef SD3_LORA_CLIP_H
#define SD3_LORA_CLIP_H

#include "lora/lora.h"
#include "text/clip.h"

typedef struct lora_clip_state lora_clip_state;

/* Fuse the modules of f for `which` (LORA_TARGET_CLIP_L or LORA_TARGET_CLIP_G) into m. *st is NULL the
 * first time and is then reused for further files on the same model. Nothing changes on failure; a file
 * without modules for `which` is a no-op. Weights must be F32/F16/BF16 (else SD3_ERR_UNSUPPORTED). */
sd3_status lora_clip_fuse(clip_model *m, lora_target which, const lora_file *f, float scale, int lenient,
                          lora_clip_state **st, sd3_err *err);
/* Restore m's original weights and free the copies and *st (set to NULL). Call before clip_free; with m NULL
 * (the model is already gone) only the copies are freed. */
void lora_clip_unfuse(clip_model *m, lora_clip_state **st);

#endif /* SD3_LORA_CLIP_H */

/*
 * encode_prompt.h — StableDiffusion3Pipeline.encode_prompt: three tokenizers, CLIP-L, CLIP-G and T5,
 * each loaded, run on every prompt (positive and negative together) and released before the next, so
 * only one text encoder is ever resident.
 *
 * Semantics (diffusers v0.32.2): prompt_2 / prompt_3 default to prompt; with CFG, negative_prompt
 * defaults to "" and negative_prompt_2/_3 to it. CLIP part = hidden_states[-(clip_skip+2)] of CLIP-L
 * (positive prompts only; negatives always use -2) concatenated on channels with CLIP-G's, zero-padded
 * to the joint width J; T5 part = last_hidden_state of max_sequence_length tokens (zeros [77, J] when
 * T5 is absent); prompt_embeds = [CLIP part; T5 part] along tokens; pooled = [pooled_L, pooled_G]. Each
 * prompt's prompt_embeds rows are repeated num_images_per_prompt times consecutively (row = prompt * n +
 * image) while the pooled rows are tiled (row = image * n_prompts + prompt) — diffusers' 2-D .repeat quirk.
 */
#ifndef SD3_ENCODE_PROMPT_H
#define SD3_ENCODE_PROMPT_H

#include "core/core.h"
#include "io/model_store.h"

typedef struct encode_req {
    int n_prompts;                       /* batch of prompts (>= 1) */
    const char *const *prompt;           /* [n_prompts] */
    const char *const *prompt_2;         /* [n_prompts] or NULL (= prompt) */
    const char *const *prompt_3;         /* [n_prompts] or NULL (= prompt) */
    const char *const *negative;         /* [n_prompts] or NULL (= "") */
    const char *const *negative_2;       /* NULL = negative */
    const char *const *negative_3;       /* NULL = negative */
    int num_images_per_prompt;           /* >= 1 */
    int cfg;                             /* compute the negatives */
    int clip_skip;                       /* 0 = none */
    int max_sequence_length;             /* T5 tokens (256 default) */
    int no_t5;                           /* zeros instead of T5 (also when the pipeline has no text_encoder_3) */
    int t5_quant;                        /* 0, or 8 / 4: T5 Linears quantised at load (quant_models.h) */
    const char *const *loras;            /* LoRA files whose text_encoder / text_encoder_2 modules are fused into */
    const float *lora_scales;            /* the CLIPs while they run (NULL scales = 1) */
    int n_loras;
    int lora_lenient;
} encode_req;

typedef struct encode_out {
    int B;          /* n_prompts * num_images_per_prompt */
    int S;          /* 77 + (T5 ? max_sequence_length : 77) */
    int J;          /* joint width (T5 d_model = transformer joint_attention_dim) */
    int P;          /* pooled width (CLIP-L + CLIP-G projections) */
    float *pe;      /* prompt_embeds [B, S, J] */
    float *pooled;  /* pooled_prompt_embeds [B, P] */
    float *npe;     /* negative_prompt_embeds [B, S, J], NULL without CFG */
    float *npooled; /* negative_pooled_prompt_embeds [B, P], NULL without CFG */
} encode_out;

/* Run encode_prompt on the model in ms; on failure o is left empty and err names the component. */
sd3_status encode_prompt(const model_store *ms, const encode_req *r, encode_out *o, sd3_err *err);
void encode_out_free(encode_out *o);

#endif

/*
 * generate.h — the denoising pipeline of StableDiffusion3Pipeline (txt2img) and
 * StableDiffusion3Img2ImgPipeline (img2img), under the memory policy: text encoders one at a time
 * (encode_prompt), then the MMDiT, released before the VAE is loaded — or all kept resident between calls
 * when the model_store's comp_res says so (keep_loaded, components.h); optionally with the MMDiT's blocks
 * streamed (stream_layers).
 *
 * Order of work and of random draws, as diffusers: encode prompts; img2img: VAE-encode the init image,
 * draw the posterior noise (randn of the latent shape of ONE image), then the forward-process noise
 * (randn (B, 16, h, w)), both from one generator seeded with `seed`; txt2img: draw the initial latents
 * (randn (B, 16, h, w)) unless given. Then for each timestep: the MMDiT on [uncond, cond] (CFG when
 * guidance > 1), v = v_u + g (v_c - v_u), skip-layer guidance v += (v_c - v_skip) * slg for steps i with
 * n*start < i < n*stop, Euler step. Finally latents / scaling + shift -> VAE decode.
 * Inpainting (StableDiffusion3InpaintPipeline with the 16-channel transformer): draws as img2img (pure
 * noise at strength 1), and after every step latents = (1 - m) * image_latents re-noised to the next
 * timestep + m * latents, with m the mask at latent resolution (nearest).
 */
#ifndef SD3_GENERATE_H
#define SD3_GENERATE_H

#include "io/model_store.h"
#include "pipeline/encode_prompt.h"

typedef struct pipe_req {
    encode_req text;            /* prompts and text options; text.cfg is set from cfg_scale by pipe_generate */
    int width, height, steps;
    float cfg_scale;
    float shift;                /* 0 = scheduler_config's */
    const float *sigmas;        /* custom schedule (n_sigmas = steps values) or NULL */
    int n_sigmas;
    uint64_t seed;
    float slg_scale, slg_start, slg_stop;
    const int *skip_layers;
    int n_skip_layers;
    const float *latents_in;    /* (B, 16, h, w) initial latents for txt2img, or NULL to draw them */
    const float *init_image;    /* img2img: (1, 3, height, width) in [-1, 1], or NULL for txt2img */
    double strength;            /* a double, as Python passes it: t_start = (int)(n - n * strength) */
    const char *const *loras;   /* LoRA files attached to the transformer at run time, with their scales */
    const float *lora_scales;
    int n_loras;
    int lora_lenient;
    const float *mask;          /* inpainting: (height, width) binarised mask, 1 = repaint (needs init_image) */
    int decode;                 /* run the VAE (else stop at the latents) */
    int vae_tiling;             /* 1: tiled VAE whenever diffusers' enable_tiling would tile (bounded memory);
                                   0: only above VAE_TILE_ABOVE_PIXELS (untiled = diffusers' default output) */
    int mmdit_quant;            /* 0, or 8 / 4: the transformer's Linears quantised at load (quant_models.h) */
    int stream_layers;          /* stream the transformer's blocks through memory (mmdit.h, mmdit_model.stream_layers) */
    sd3_progress_fn progress;
    void *progress_user;
} pipe_req;

/* Observation points for tests: name is "timesteps", "sigmas", "random_draw_0/1", "latents_init" (the
 * starting latents), "noise_pred_raw" (per
 * step: the transformer's output for the whole batch, [uncond; cond] with CFG), "latents" (per step,
 * after the scheduler step); step = -1 for the once-only ones. */
typedef struct pipe_taps {
    void (*fn)(void *user, const char *name, int step, const float *x, int64_t n);
    void *user;
} pipe_taps;

typedef struct pipe_out {
    int B, C, h, w;             /* latent batch and shape */
    float *latents;             /* (B, C, h, w) final latents */
    float *decoded;             /* (B, 3, 8h, 8w) raw VAE output, when decode was asked */
} pipe_out;

sd3_status pipe_generate(const model_store *ms, const pipe_req *r, const pipe_taps *taps, pipe_out *o, sd3_err *err);
void pipe_out_free(pipe_out *o);

#endif

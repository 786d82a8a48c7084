/*
 * sd3.h — Stable Diffusion 3 in C: the public API.
 *
 * Usage (the shape every caller follows):
 *
 *     sd3_ctx *ctx = sd3_ctx_create(NULL);            // default params: threads = cores
 *     if (sd3_load(ctx, "path/to/sd3-folder") != SD3_OK)
 *         fprintf(stderr, "%s\n", sd3_last_error(ctx));
 *     ...
 *     sd3_ctx_free(ctx);
 *
 * Thread safety: one sd3_ctx is used by one thread at a time. Two contexts may be used from two threads.
 * Failure contract: every call that can fail returns an sd3_status; on failure the context keeps a
 * one-line message (sd3_last_error) that names the file or parameter and the problem. The library
 * never prints (except through the log callback) and never exits.
 */
#ifndef SD3_H
#define SD3_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Every fallible call returns one of these. */
typedef enum sd3_status {
    SD3_OK = 0,
    SD3_ERR_INVALID_ARG,   /* a parameter the caller gave is out of range or malformed */
    SD3_ERR_IO,            /* a file could not be opened, read, mapped or written */
    SD3_ERR_FORMAT,        /* a file's content is malformed or lies about itself */
    SD3_ERR_NOT_FOUND,     /* a file, component or tensor that must exist does not */
    SD3_ERR_SHAPE,         /* a tensor has the wrong shape or dtype for the model */
    SD3_ERR_NOMEM,         /* an allocation failed or a limit on sizes was exceeded */
    SD3_ERR_UNSUPPORTED,   /* valid input we do not handle (yet) */
    SD3_ERR_INTERNAL       /* a bug: an invariant did not hold */
} sd3_status;

/* A short English name of a status ("invalid argument", ...). */
const char *sd3_status_str(sd3_status s);

/* Log levels and the callback that receives every log line (default: stderr at WARN and above). */
typedef enum sd3_log_level { SD3_LOG_DEBUG = 0, SD3_LOG_INFO, SD3_LOG_WARN, SD3_LOG_ERROR } sd3_log_level;
typedef void (*sd3_log_fn)(sd3_log_level level, const char *msg, void *user);
void sd3_set_log(sd3_log_fn fn, void *user, sd3_log_level min_level);

/* Parameters of a context. */
typedef struct sd3_ctx_params {
    int n_threads;         /* worker threads for the kernels; 0 = number of cores */
    int bf16;              /* 1: matrix products in bf16 (AVX512_BF16 dot products, F32 accumulation, about 3
                              significant digits per product); 0: exact F32 (default). Process-wide setting. */
} sd3_ctx_params;
sd3_ctx_params sd3_ctx_params_default(void);

typedef struct sd3_ctx sd3_ctx;

/* Create a context (NULL params = defaults). Returns NULL only when out of memory. */
sd3_ctx *sd3_ctx_create(const sd3_ctx_params *params);
void sd3_ctx_free(sd3_ctx *ctx);
/* The message of the last failed call on this context ("" when none). */
const char *sd3_last_error(const sd3_ctx *ctx);


/* ------------------------------------------------------------------------------------------------ */
/* Models and generation                                                                            */
/* ------------------------------------------------------------------------------------------------ */

/* Where the model comes from. `model` is a diffusers pipeline folder, a single-file checkpoint
 * (.safetensors), or a Hub repo id ("stabilityai/stable-diffusion-3-medium-diffusers") looked up in the
 * Hugging Face cache ($HF_HOME/hub or ~/.cache/huggingface/hub). The overrides replace one component
 * with a file of its own (stable-diffusion.cpp style); NULL = from `model`. */
typedef struct sd3_model_params {
    const char *model;
    const char *clip_l, *clip_g, *t5xxl, *vae;
    const char *config;    /* a diffusers folder whose <component>/config.json files describe a single-file
                              checkpoint (like from_single_file(config=)); NULL = infer from tensor shapes */
    int no_t5;             /* run without T5 (zeros in its place), like text_encoder_3=None */
    int keep_loaded;       /* 0 (default, diffusers' enable_model_cpu_offload order): each sd3_generate maps,
                              uses and releases the text encoders, the transformer and the VAE in turn, so
                              one component is resident at a time. 1: a component stays mapped (and, when
                              quantised at load, quantised) in the context from its first use until
                              sd3_ctx_free or the next sd3_load, so later calls open no weights (a server, a
                              batch of prompts); peak memory is then all components together */
    int t5_quant;          /* T5 Linears quantised at load (`--t5 int8`): 0 = stored dtype, 8 = int8 per row,
                              4 = int4 blocks of 32; weights stored quantised (`sd3 quantize`) are used as they are */
    int mmdit_quant;       /* the transformer's Linears quantised at load (`--precision int8|int4`): 0, 8 or 4 */
    int stream_layers;     /* 1: stream the transformer's blocks through memory (`--stream-layers`): block i+1
                              is read ahead while block i runs, and block i's pages leave the resident set
                              once it is done (the file stays mapped), so only a block or two of its weights
                              are resident at a time. Same images. Helps where weights are used in place from
                              the file (fp32/fp16/bf16/fp8 as stored, in any precision mode, and int8/int4
                              files written by `sd3 quantize`); mmdit_quant on a float model makes owned
                              copies, which stay resident */
} sd3_model_params;
sd3_model_params sd3_model_params_default(void);

/* Progress callback: called after each denoising step (step counts from 1). Return non-zero to cancel. */
typedef int (*sd3_progress_fn)(int step, int n_steps, double seconds_this_step, void *user);

/* One generation request (txt2img, or img2img when init_image is set). */
typedef struct sd3_gen_params {
    const char *prompt, *prompt_2, *prompt_3;                 /* prompt_2/_3 default to prompt */
    const char *negative_prompt, *negative_prompt_2, *negative_prompt_3; /* default "" / negative_prompt */
    int width, height;          /* multiples of 16 (default 1024 x 1024; 512 is common on CPUs) */
    int steps;                  /* denoising steps, >= 1 (default 28) */
    float cfg_scale;            /* classifier-free guidance scale; CFG only when > 1 (default 7.0) */
    float shift;                /* scheduler shift; 0 = the model's scheduler_config (3.0 for SD3) */
    const float *sigmas;        /* optional custom sigma list (n_sigmas values, decreasing, > 0) */
    int n_sigmas;
    uint64_t seed;              /* torch.manual_seed equivalent */
    int batch;                  /* images per prompt (default 1) */
    int clip_skip;              /* 0 = none */
    int max_sequence_length;    /* T5 tokens (default 256) */
    float slg_scale;            /* skip-layer guidance scale (0 = off) */
    const int *skip_layers;     /* blocks skipped for the SLG pass */
    int n_skip_layers;
    float slg_start, slg_stop;  /* fractions of the steps where SLG applies (default 0.01, 0.2) */
    const char *init_image;     /* img2img: path of the init image (PNG/JPEG), NULL for txt2img; resized to
                                 * width x height (Pillow LANCZOS, as diffusers' preprocess) when it differs */
    double strength;            /* img2img strength in (0, 1] (default 0.6); a double as in Python, since
                                   (int)(steps - steps * strength) decides the first step */
    const char *mask_image;     /* inpainting mask (white = repaint); resized like the init image, then
                                 * grayscale and binarised at 0.5 (diffusers' mask processor) */
    const char *latents_in;     /* optional initial latents (.safetensors with tensor "latents") */
    const char *const *loras;   /* LoRA files for the transformer (diffusers/PEFT, kohya or original keys) */
    const float *lora_scales;   /* one scale per LoRA (NULL = all 1) */
    int n_loras;
    int lora_lenient;           /* keys that map onto nothing are warnings instead of errors */
    int vae_tiling;             /* tile the VAE as diffusers' enable_tiling() does (bounded memory at large sizes;
                                   otherwise it tiles only above 1536 x 1536) */
    sd3_progress_fn progress;
    void *progress_user;
} sd3_gen_params;
sd3_gen_params sd3_gen_params_default(void);
/* Check a request before any work: sizes, steps, strength, guidance, files that must exist. */
sd3_status sd3_gen_params_check(sd3_ctx *ctx, const sd3_gen_params *p);

/* A generated image: 8-bit RGB, rows top to bottom. */
typedef struct sd3_image {
    int width, height;
    uint8_t *rgb;
} sd3_image;
void sd3_image_free(sd3_image *img);

/* Resolve and open the model (components are mapped lazily, used and released in turn). */
sd3_status sd3_load(sd3_ctx *ctx, const sd3_model_params *mp);
/* Run one request. images: array of p->batch images filled on success (free each with sd3_image_free).
 * latents_out (optional): receives a malloc'd (batch, 16, H/8, W/8) float array of the final latents
 * (what diffusers' output_type="latent" returns); free with free(). */
sd3_status sd3_generate(sd3_ctx *ctx, const sd3_gen_params *p, sd3_image *images, float **latents_out);

/* Library version string, and a one-line description of the CPU features the kernels dispatch on. */
const char *sd3_version(void);
const char *sd3_cpu_features(void);

#ifdef __cplusplus
}
#endif
#endif /* SD3_H */

/*
 * vae.h — the SD3 autoencoder (diffusers AutoencoderKL): config, weights, encoder and decoder forward,
 * the tiled variants, and the small pieces of pipeline glue around them (latent scaling, posterior).
 *
 * Usage:
 *
 *     vae_model m;
 *     if (vae_open_dir(&m, "sd3/vae", &err) != SD3_OK) ...              // config.json + safetensors
 *     // or vae_open_file(&m, "sd3_medium.safetensors", NULL, &err)    // single file, config inferred
 *     vae_latents_to_decoder(&m.cfg, latents, z, n);                     // z = latents / scaling + shift
 *     vae_decode(&m, z, B, 16, h, w, image, NULL, &err);                 // image (B, 3, 8h, 8w) in ~[-1, 1]
 *     vae_free(&m);
 *
 * Structure (diffusers v0.32.2 semantics; every GroupNorm has eps 1e-6 and cfg.norm_num_groups groups):
 *   Encoder: conv_in 3x3 -> per level i: layers_per_block ResnetBlock2D (channels boc[i-1] -> boc[i]),
 *            then (except the last level) Downsample2D = zero pad (left 0, right 1, top 0, bottom 1) and
 *            conv 3x3 stride 2 pad 0 -> mid block (resnet, single-head attention over HW tokens, resnet)
 *            -> GroupNorm, SiLU, conv_out 3x3 to 2 * latent channels (mean; logvar) -> [quant_conv 1x1].
 *   Decoder: [post_quant_conv 1x1] -> conv_in 3x3 -> mid block -> per up level i (channels reversed):
 *            layers_per_block + 1 resnets, then (except the last) nearest 2x upsample and conv 3x3 ->
 *            GroupNorm, SiLU, conv_out 3x3.
 *   ResnetBlock2D: h = conv2(SiLU(GN2(conv1(SiLU(GN1(x)))))); out = shortcut(x) + h, shortcut = 1x1 conv
 *            when the channel count changes, else identity.
 *   Mid attention: residual + to_out(softmax(q k^T / sqrt(C)) v) with q, k, v = to_q/k/v(GN(x)) over the
 *            H*W tokens of C channels (1 head, rescale factor 1).
 *
 * Memory: each activation is its own allocation, freed once its last reader is done; GroupNorm + SiLU
 * run in place, 3x3 convs whose output fits write over their input in row bands, and the decoder's
 * upsampling is folded into the following conv (nothing 4x is materialised). A decode therefore holds
 * about its largest stage's input plus output (SD3 at 1024^2: ~1.5 GB, see vae.c). Results are
 * bit-identical to the straightforward order. Weights stay views into the memory-mapped file.
 * Thread safety: a loaded vae_model is read-only during forward calls.
 */
#ifndef SD3_VAE_H
#define SD3_VAE_H

#include "core/core.h"
#include "io/weights.h"

#define VAE_MAX_LEVELS 8
#define VAE_MAX_RESNETS 8          /* per level: layers_per_block + 1 in the decoder */
#define VAE_MAX_SIDE 16384         /* largest image side (pixels) a forward accepts */
#define VAE_MAX_BATCH 1024
#define VAE_MAX_PIXELS ((int64_t)1 << 30)   /* batch x height x width per call (keeps kernel row counts in int) */

/* ---- config ------------------------------------------------------------------------------------ */

typedef struct vae_config {
    int in_channels, out_channels, latent_channels;
    int n_levels;                              /* len(block_out_channels) */
    int block_out_channels[VAE_MAX_LEVELS];
    int layers_per_block;
    int norm_num_groups;
    int sample_size;                           /* pixels; sets the default tile size */
    double scaling_factor, shift_factor;
    int use_quant_conv, use_post_quant_conv, mid_block_add_attention;
} vae_config;

/* The SD3 / SD3.5 VAE: [128, 256, 512, 512], 2 layers, 32 groups, 16 latent channels, 1.5305 / 0.0609. */
void vae_config_sd3(vae_config *c);
/* Read a diffusers config.json; absent keys take diffusers' AutoencoderKL defaults. Errors name the file
 * and key; unsupported block types or activations are SD3_ERR_UNSUPPORTED. */
sd3_status vae_config_load(vae_config *c, const char *path, sd3_err *err);
/* Check a config for values the model cannot be built with (err names the field). */
sd3_status vae_config_validate(const vae_config *c, const char *label, sd3_err *err);
/* Pixels per latent along each side: 2^(n_levels - 1) (8 for SD3). */
int vae_downscale(const vae_config *c);

/* ---- weights ----------------------------------------------------------------------------------- */

/* Which key layout the checkpoint uses. */
typedef enum vae_key_style {
    VAE_KEYS_DIFFUSERS = 0,   /* encoder.down_blocks.i.resnets.j..., mid_block.attentions.0.to_q ... */
    VAE_KEYS_ORIGINAL         /* single file: encoder.down.i.block.j..., decoder.up.(n-1-i)..., mid.attn_1.q */
} vae_key_style;

/* ResnetBlock2D: `<prefix>.{norm1,conv1,norm2,conv2,conv_shortcut}` (original: `nin_shortcut`). */
typedef struct vae_resnet {
    int cin, cout;
    tensor norm1_w, norm1_b;      /* norm1.{weight,bias}          (cin) */
    tensor conv1_w, conv1_b;      /* conv1.{weight,bias}          (cout, cin, 3, 3), (cout) */
    tensor norm2_w, norm2_b;      /* norm2.{weight,bias}          (cout) */
    tensor conv2_w, conv2_b;      /* conv2.{weight,bias}          (cout, cout, 3, 3), (cout) */
    tensor short_w, short_b;      /* conv_shortcut.{weight,bias}  (cout, cin, 1, 1), (cout); data NULL when cin == cout */
} vae_resnet;

/* Mid-block attention: `mid_block.attentions.0.*` (original: `mid.attn_1.*`). Projection weights are
 * viewed as (C, C) linears; the original layout's (C, C, 1, 1) conv kernels are the same memory. */
typedef struct vae_attn {
    int C;
    tensor norm_w, norm_b;        /* group_norm.{weight,bias}     (C)      original: norm */
    tensor q_w, q_b;              /* to_q.{weight,bias}           (C, C), (C)   original: q */
    tensor k_w, k_b;              /* to_k                          (C, C), (C)   original: k */
    tensor v_w, v_b;              /* to_v                          (C, C), (C)   original: v */
    tensor out_w, out_b;          /* to_out.0                      (C, C), (C)   original: proj_out */
} vae_attn;

/* UNetMidBlock2D: resnets.0, attentions.0 (if mid_block_add_attention), resnets.1
 * (original: mid.block_1, mid.attn_1, mid.block_2). */
typedef struct vae_mid {
    vae_resnet res[2];
    int has_attn;
    vae_attn attn;
} vae_mid;

/* One encoder down block or decoder up block: its resnets and its optional resampling conv
 * (`downsamplers.0.conv` / `upsamplers.0.conv`; original `downsample.conv` / `upsample.conv`). */
typedef struct vae_level {
    int n_res;
    vae_resnet res[VAE_MAX_RESNETS];
    int has_resample;
    tensor resample_w, resample_b;   /* (cout, cout, 3, 3), (cout) */
} vae_level;

typedef struct vae_encoder {
    tensor conv_in_w, conv_in_b;     /* encoder.conv_in        (boc[0], in_channels, 3, 3) */
    vae_level down[VAE_MAX_LEVELS];  /* encoder.down_blocks.i */
    vae_mid mid;                     /* encoder.mid_block      (boc[n-1]) */
    tensor norm_out_w, norm_out_b;   /* encoder.conv_norm_out  (boc[n-1])   original: norm_out */
    tensor conv_out_w, conv_out_b;   /* encoder.conv_out       (2 * latent, boc[n-1], 3, 3) */
} vae_encoder;

typedef struct vae_decoder {
    tensor conv_in_w, conv_in_b;     /* decoder.conv_in        (boc[n-1], latent, 3, 3) */
    vae_mid mid;                     /* decoder.mid_block      (boc[n-1]) */
    vae_level up[VAE_MAX_LEVELS];    /* decoder.up_blocks.i    (i = 0 is the deepest; original up.(n-1-i)) */
    tensor norm_out_w, norm_out_b;   /* decoder.conv_norm_out  (boc[0]) */
    tensor conv_out_w, conv_out_b;   /* decoder.conv_out       (out_channels, boc[0], 3, 3) */
} vae_decoder;

typedef struct vae_model {
    vae_config cfg;
    vae_encoder enc;
    vae_decoder dec;
    tensor quant_conv_w, quant_conv_b;            /* quant_conv       (2L, 2L, 1, 1), (2L); if use_quant_conv */
    tensor post_quant_conv_w, post_quant_conv_b;  /* post_quant_conv  (L, L, 1, 1), (L); if use_post_quant_conv */
    /* Tiling parameters (diffusers' names and defaults: sample_size, sample_size / downscale, 0.25);
     * a caller may change them before calling the tiled functions. */
    int tile_sample_min_size, tile_latent_min_size;
    double tile_overlap_factor;
    /* Output rows per band of the forward's in-place 3x3 convs; 0 (the default) sizes bands to ~16 MB of
     * input. Any value gives the same bits (tests set small ones to exercise the band edges). */
    int conv_band_rows;
    /* Files this model owns (vae_open_*); the tensors above are views into them. */
    weights files;
    int owns_files;
} vae_model;

/* Bind every tensor of the model from weight set w (w must outlive m; m does not own it). A missing or
 * misshaped tensor fails with SD3_ERR_NOT_FOUND / SD3_ERR_SHAPE naming it. */
sd3_status vae_load(vae_model *m, const weights *w, vae_key_style style, const vae_config *cfg, sd3_err *err);
/* A diffusers component folder: <dir>/config.json and <dir>/diffusion_pytorch_model[.fp16].safetensors. */
sd3_status vae_open_dir(vae_model *m, const char *dir, sd3_err *err);
/* A single .safetensors file: keys under `first_stage_model.` (an SD3 single-file checkpoint), or a bare
 * VAE file in either layout (detected from its keys). cfg NULL: infer the config from tensor shapes
 * (vae_config_infer); the tiny test models need their config given. */
sd3_status vae_open_file(vae_model *m, const char *path, const vae_config *cfg, sd3_err *err);
/* Infer the structure from shapes (channels, levels, layers, quant convs, attention). norm_num_groups
 * cannot be seen in the weights and is set to 32 (every released SD VAE); scaling and shift are SD3's
 * for 16 latent channels, else SD1's (0.18215, 0). */
sd3_status vae_config_infer(vae_config *c, const weights *w, vae_key_style style, sd3_err *err);
void vae_free(vae_model *m);

/* ---- forward ----------------------------------------------------------------------------------- */

/* Optional observer of intermediate activations (NCHW, N*C*H*W floats, valid only during the call).
 * Names: decoder_conv_in, decoder_mid_block, decoder_up_block<i>, encoder_conv_in,
 * encoder_down_block<i>, encoder_mid_block, encoder_moments. */
typedef struct vae_tap {
    void (*fn)(void *user, const char *name, const float *x, int N, int C, int H, int W);
    void *user;
} vae_tap;

/* Decode z (N, C, h, w) — already scaled for the decoder (vae_latents_to_decoder) — into
 * img (N, out_channels, h*f, w*f), f = vae_downscale. C must equal latent_channels. */
sd3_status vae_decode(const vae_model *m, const float *z, int N, int C, int h, int w, float *img,
                      const vae_tap *tap, sd3_err *err);
/* Encode x (N, C, H, W) in [-1, 1] into moments (N, 2 * latent, H/f, W/f): the first latent channels are
 * the mean, the rest the raw logvar (see vae_moments_split). H and W must be multiples of f. */
sd3_status vae_encode(const vae_model *m, const float *x, int N, int C, int H, int W, float *moments,
                      const vae_tap *tap, sd3_err *err);

/* diffusers' tiled_decode: latent tiles of tile_latent_min_size, stepping by tile_latent_min_size *
 * (1 - overlap), each decoded alone, then blended linearly with the tile above and the tile to the left
 * over tile_sample_min_size * overlap pixels (blend_v, blend_h) and cropped. Same arguments and output as
 * vae_decode. The result differs from vae_decode (each tile sees only its own context); it equals
 * diffusers' tiled output. SD3_ERR_UNSUPPORTED when the tile sizes do not fit together exactly. */
sd3_status vae_decode_tiled(const vae_model *m, const float *z, int N, int C, int h, int w, float *img, sd3_err *err);
/* diffusers' _tiled_encode: image tiles of tile_sample_min_size, blended in latent space over
 * tile_latent_min_size * overlap latents. Output as vae_encode (moments). */
sd3_status vae_encode_tiled(const vae_model *m, const float *x, int N, int C, int H, int W, float *moments, sd3_err *err);
/* Whether diffusers (with enable_tiling) would tile a decode of an h x w latent / an encode of H x W pixels. */
int vae_decode_wants_tiling(const vae_model *m, int h, int w);
int vae_encode_wants_tiling(const vae_model *m, int H, int W);

/* ---- pipeline glue ------------------------------------------------------------------------------ */

/* Transformer-space latents to decoder input: z = x / scaling_factor + shift_factor (n floats). */
void vae_latents_to_decoder(const vae_config *c, const float *x, float *z, size_t n);
/* Encoder latents to transformer space: y = (x - shift_factor) * scaling_factor. */
void vae_latents_from_encoder(const vae_config *c, const float *x, float *y, size_t n);
/* Split moments (N, 2L, HW) into mean (N, L, HW) and logvar = clamp(second half, -30, 20). */
void vae_moments_split(const float *moments, int N, int L, int64_t HW, float *mean, float *logvar);
/* std = exp(0.5 * logvar). */
void vae_posterior_std(const float *logvar, float *std, size_t n);
/* DiagonalGaussianDistribution.sample with given standard-normal noise: mean + exp(0.5 logvar) * noise. */
void vae_posterior_sample(const float *mean, const float *logvar, const float *noise, float *out, size_t n);
/* Image [0, 1] -> VAE input [-1, 1]: 2x - 1. */
void vae_image_from_01(const float *x01, float *x, size_t n);
/* Decoder output -> [0, 1]: clamp(x / 2 + 0.5, 0, 1). */
void vae_image_to_01(const float *x, float *x01, size_t n);
/* [0, 1] NCHW -> 8-bit NHWC: round-half-even(x * 255), as numpy's round in diffusers' numpy_to_pil. */
void vae_image_to_u8_hwc(const float *x01, int N, int C, int H, int W, uint8_t *out);

#endif /* SD3_VAE_H */

/* pipeline.c — the public generation calls: resolve the model, turn an sd3_gen_params into a pipeline
 * request (prompts, seeded noise or given latents, init image), run it, and hand back 8-bit images. */
#include <math.h>
#include <string.h>
#include "io/image.h"
#include "io/image_resize.h"
#include "io/safetensors.h"
#include "pipeline/components.h"
#include "pipeline/generate.h"
#include "pipeline/pipeline.h"

void pipeline_unload(sd3_ctx *ctx) {
    comp_res_detach(ctx->res);   /* resident components first: they hold views of the store's files */
    ctx->res = NULL;
    ms_close(ctx->ms);
    ctx->ms = NULL;
}

/* Load count of one component (pipeline.h), from the context's comp_res. */
int pipeline_component_loads(const sd3_ctx *ctx, int comp) {
    if (!ctx || !ctx->res || comp < 0 || comp >= COMP_COUNT) return -1;
    return ctx->res->loads[comp];
}

int pipeline_t5_quantised_kept(const sd3_ctx *ctx) { return ctx && ctx->res ? ctx->res->t5q_made : -1; }

sd3_status sd3_load(sd3_ctx *ctx, const sd3_model_params *mp) {
    sd3_err_clear(&ctx->err);
    pipeline_unload(ctx);
    if (!mp || !mp->model || !*mp->model) return sd3_errf(&ctx->err, SD3_ERR_INVALID_ARG, "model: no model given");
    if ((mp->t5_quant && mp->t5_quant != 8 && mp->t5_quant != 4) || (mp->mmdit_quant && mp->mmdit_quant != 8 && mp->mmdit_quant != 4))
        return sd3_errf(&ctx->err, SD3_ERR_INVALID_ARG, "t5_quant %d / mmdit_quant %d: 0 (none), 8 (int8) or 4 (int4)",
                        mp->t5_quant, mp->mmdit_quant);
    sd3_status s = ms_open(&ctx->ms, mp->model, &ctx->err);
    if (s != SD3_OK) {
        if (ms_is_repo_id(mp->model) && s == SD3_ERR_NOT_FOUND) {
            char msg[sizeof ctx->err.msg + 512];
            snprintf(msg, sizeof msg, "%.700s. Download it first, e.g. `huggingface-cli download %s` (SD3 repos are gated: accept "
                                      "the licence on huggingface.co and log in), or pass a folder with -m",
                     ctx->err.msg, mp->model);
            memcpy(ctx->err.msg, msg, sizeof ctx->err.msg - 1);
            ctx->err.msg[sizeof ctx->err.msg - 1] = 0;
        }
        return s;
    }
    /* --clip-l/--clip-g/--t5xxl/--vae, checked now (components.h) */
    if ((s = comp_set_overrides(ctx->ms, mp->clip_l, mp->clip_g, mp->t5xxl, mp->vae, &ctx->err)) ||
        (mp->config && (s = comp_set_config_dir(ctx->ms, mp->config, &ctx->err)))) {
        pipeline_unload(ctx);
        return s;
    }
    if ((s = comp_res_attach(ctx->ms, mp->keep_loaded, &ctx->res, &ctx->err))) {
        pipeline_unload(ctx);
        return s;
    }
    ctx->model = *mp;
    return SD3_OK;
}

/* Initial latents from a .safetensors file with an F32 tensor "latents" of shape (B, C, h, w). */
static sd3_status read_latents(const char *path, int B, int C, int h, int w, float **out, sd3_err *err) {
    st_file *f;
    sd3_status s = st_open(&f, path, err);
    if (s) return s;
    tensor t;
    if ((s = st_get(f, "latents", &t, err))) { st_close(f); return s; }
    if (t.ndim != 4 || t.shape[0] != B || t.shape[1] != C || t.shape[2] != h || t.shape[3] != w) {
        char have[96];
        s = sd3_errf(err, SD3_ERR_SHAPE, "%s: tensor 'latents' has shape %s, expected [%d, %d, %d, %d]", path,
                     tensor_shape_str(&t, have, sizeof have), B, C, h, w);
        st_close(f);
        return s;
    }
    int64_t n = tensor_numel(&t);
    float *buf = sd3_malloc(sizeof(float) * n);
    if (!buf) { st_close(f); return sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", path); }
    if (t.dt != DT_F32 && t.dt != DT_F16 && t.dt != DT_BF16) {
        sd3_free(buf);
        st_close(f);
        return sd3_errf(err, SD3_ERR_SHAPE, "%s: tensor 'latents' is %s, expected a float type", path, dtype_name(t.dt));
    }
    tensor_to_f32(&t, 0, n, buf);
    st_close(f);
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(buf[i])) {
            sd3_free(buf);
            return sd3_errf(err, SD3_ERR_FORMAT, "%s: tensor 'latents' holds a NaN or infinity at element %lld", path, (long long)i);
        }
    *out = buf;
    return SD3_OK;
}

/* Load an init image or mask (RGB, as diffusers' load_image gives it) at W x H: an image of another size
 * is resized the way diffusers' VaeImageProcessor.preprocess(image, height=H, width=W) does it, PIL
 * image.resize((W, H), Image.LANCZOS) on the 8-bit RGB image (image_resize.h, Pillow-exact). */
static sd3_status load_at_size(const char *path, int W, int H, image *out, sd3_err *err) {
    image im;
    sd3_status s = image_load(&im, path, err);
    if (s) return s;
    if (im.w == W && im.h == H) {
        *out = im;
        return SD3_OK;
    }
    s = image_resize(&im, W, H, out, err);
    if (s) {
        char msg[sizeof err->msg + 64];   /* the resize's message names both sizes */
        snprintf(msg, sizeof msg, "%s: %s", path, err->msg);
        sd3_errf(err, s, "%s", msg);
    }
    image_free(&im);
    return s;
}

/* The inpainting mask as diffusers' mask_processor makes it: resized to the image's W x H like the image
 * (load_at_size; the mask processor's resample is LANCZOS too, and it resizes before converting), then
 * PIL convert("L") (L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16), / 255, binarised at 0.5
 * (1 = repaint). A gray mask read as RGB (v, v, v) gives L = v, so this equals resizing it in mode L. */
static sd3_status read_mask(const char *path, int W, int H, float **out, sd3_err *err) {
    image im;
    sd3_status s = load_at_size(path, W, H, &im, err);
    if (s) return s;
    float *m = sd3_malloc(sizeof(float) * (size_t)W * H);
    if (!m) { image_free(&im); return sd3_errf(err, SD3_ERR_NOMEM, "out of memory"); }
    for (int64_t i = 0; i < (int64_t)W * H; i++) {
        const uint8_t *px = im.rgb + 3 * i;
        uint32_t l = ((uint32_t)px[0] * 19595u + (uint32_t)px[1] * 38470u + (uint32_t)px[2] * 7471u + 0x8000u) >> 16;
        m[i] = ((float)l / 255.0f) < 0.5f ? 0.0f : 1.0f;
    }
    image_free(&im);
    *out = m;
    return SD3_OK;
}

sd3_status sd3_generate(sd3_ctx *ctx, const sd3_gen_params *p, sd3_image *images, float **latents_out) {
    sd3_err *err = &ctx->err;
    sd3_err_clear(err);
    sd3_status s = gen_params_check(p, err);
    if (s) return s;
    if (!ctx->ms) return sd3_errf(err, SD3_ERR_INVALID_ARG, "generate: no model loaded (call sd3_load first)");

    const char *prompt[1] = {p->prompt}, *prompt_2[1] = {p->prompt_2}, *prompt_3[1] = {p->prompt_3};
    const char *neg[1] = {p->negative_prompt}, *neg_2[1] = {p->negative_prompt_2}, *neg_3[1] = {p->negative_prompt_3};
    pipe_req r;
    memset(&r, 0, sizeof r);
    r.text.n_prompts = 1;
    r.text.prompt = prompt;
    r.text.prompt_2 = prompt_2;
    r.text.prompt_3 = prompt_3;
    r.text.negative = neg;
    r.text.negative_2 = neg_2;
    r.text.negative_3 = neg_3;
    r.text.num_images_per_prompt = p->batch;
    r.text.clip_skip = p->clip_skip;
    r.text.max_sequence_length = p->max_sequence_length;
    r.text.no_t5 = ctx->model.no_t5;
    r.text.t5_quant = ctx->model.t5_quant;
    r.mmdit_quant = ctx->model.mmdit_quant;
    r.stream_layers = ctx->model.stream_layers;
    r.width = p->width;
    r.height = p->height;
    r.steps = p->steps;
    r.cfg_scale = p->cfg_scale;
    r.shift = p->shift;
    r.sigmas = p->sigmas;
    r.n_sigmas = p->n_sigmas;
    r.seed = p->seed;
    r.slg_scale = p->slg_scale;
    r.slg_start = p->slg_start;
    r.slg_stop = p->slg_stop;
    r.skip_layers = p->skip_layers;
    r.n_skip_layers = p->n_skip_layers;
    r.decode = 1;
    r.vae_tiling = p->vae_tiling;
    r.loras = p->loras;
    r.lora_scales = p->lora_scales;
    r.n_loras = p->n_loras;
    r.lora_lenient = p->lora_lenient;
    r.progress = p->progress;
    r.progress_user = p->progress_user;

    float *lat_in = NULL, *init = NULL;
    if (p->latents_in && (s = read_latents(p->latents_in, p->batch, 16, p->height / 8, p->width / 8, &lat_in, err))) return s;
    r.latents_in = lat_in;
    if (p->init_image) {
        image im;
        if ((s = load_at_size(p->init_image, p->width, p->height, &im, err))) { sd3_free(lat_in); return s; }
        init = sd3_malloc(sizeof(float) * 3 * (size_t)im.w * im.h);
        if (!init) { image_free(&im); sd3_free(lat_in); return sd3_errf(err, SD3_ERR_NOMEM, "out of memory"); }
        image_to_chw(&im, init);
        image_free(&im);
        r.init_image = init;
        r.strength = p->strength;
    }

    float *mask = NULL;
    if (p->mask_image) {
        if ((s = read_mask(p->mask_image, p->width, p->height, &mask, err))) { sd3_free(lat_in); sd3_free(init); return s; }
        r.mask = mask;
    }
    pipe_out o;
    s = pipe_generate(ctx->ms, &r, NULL, &o, err);
    sd3_free(lat_in);
    sd3_free(init);
    sd3_free(mask);
    if (s) return s;
    int H = o.h * 8, W = o.w * 8;
    for (int b = 0; b < o.B; b++) {
        images[b].width = W;
        images[b].height = H;
        images[b].rgb = malloc((size_t)W * H * 3);
        if (!images[b].rgb) {
            for (int k = 0; k < b; k++) sd3_image_free(&images[k]);
            pipe_out_free(&o);
            return sd3_errf(err, SD3_ERR_NOMEM, "out of memory for the images");
        }
        image im = {W, H, images[b].rgb};
        image_from_chw(&im, o.decoded + (size_t)b * 3 * H * W, H, W);
    }
    if (latents_out) {
        size_t n = (size_t)o.B * o.C * o.h * o.w;
        *latents_out = malloc(sizeof(float) * n);
        if (*latents_out) memcpy(*latents_out, o.latents, sizeof(float) * n);
    }
    pipe_out_free(&o);
    return SD3_OK;
}

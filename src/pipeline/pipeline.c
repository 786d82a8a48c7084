/* pipeline.c — text-to-image and image-to-image as diffusers' StableDiffusion3Pipeline does them.
 * (Being assembled as the components land; until then sd3_generate says so.) */
#include <string.h>
#include "pipeline/pipeline.h"

void pipeline_unload(sd3_ctx *ctx) { ctx->loaded = 0; }

sd3_status sd3_load(sd3_ctx *ctx, const sd3_model_params *mp) {
    sd3_err_clear(&ctx->err);
    if (!mp || !mp->model) return sd3_errf(&ctx->err, SD3_ERR_INVALID_ARG, "model: no model given");
    snprintf(ctx->model_path, sizeof ctx->model_path, "%s", mp->model);
    ctx->model = *mp;
    ctx->loaded = 1;
    return SD3_OK;
}

sd3_status sd3_generate(sd3_ctx *ctx, const sd3_gen_params *p, sd3_image *images, float **latents_out) {
    (void)images;
    (void)latents_out;
    sd3_err_clear(&ctx->err);
    sd3_status s = gen_params_check(p, &ctx->err);
    if (s) return s;
    return sd3_errf(&ctx->err, SD3_ERR_UNSUPPORTED, "generate: not implemented yet (the pipeline lands with issue 5)");
}

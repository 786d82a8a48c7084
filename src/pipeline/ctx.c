/* ctx.c — the public context: parameters, the loaded model, the last error. */
#include <string.h>
#include "kernels/kernels.h"
#include "pipeline/pipeline.h"

sd3_ctx_params sd3_ctx_params_default(void) {
    sd3_ctx_params p;
    memset(&p, 0, sizeof p);
    p.n_threads = 0;
    return p;
}

sd3_ctx *sd3_ctx_create(const sd3_ctx_params *params) {
    sd3_ctx *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->params = params ? *params : sd3_ctx_params_default();
    pool_set_threads(c->params.n_threads);
    k_set_precision(c->params.bf16 ? 1 : 0);
    return c;
}

void sd3_ctx_free(sd3_ctx *ctx) {
    if (!ctx) return;
    pipeline_unload(ctx);
    free(ctx);
}

const char *sd3_last_error(const sd3_ctx *ctx) { return ctx ? ctx->err.msg : ""; }

const char *sd3_version(void) { return "0.1.0-dev"; }

sd3_status sd3_gen_params_check(sd3_ctx *ctx, const sd3_gen_params *p) {
    sd3_err_clear(&ctx->err);
    return gen_params_check(p, &ctx->err);
}

void sd3_image_free(sd3_image *img) {
    if (!img) return;
    free(img->rgb);
    memset(img, 0, sizeof *img);
}

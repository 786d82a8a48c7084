/* ctx.c — the public context: parameters, the last error, and library-wide facts. */
#include <string.h>
#include "core/core.h"

struct sd3_ctx {
    sd3_ctx_params params;
    sd3_err err;
};

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
    return c;
}

void sd3_ctx_free(sd3_ctx *ctx) { free(ctx); }

const char *sd3_last_error(const sd3_ctx *ctx) { return ctx ? ctx->err.msg : ""; }

const char *sd3_version(void) { return "0.1.0-dev"; }

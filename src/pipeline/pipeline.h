/* pipeline.h — internal side of the public API (sd3.h): the context struct, which holds the resolved
 * model and the last error. */
#ifndef SD3_PIPELINE_H
#define SD3_PIPELINE_H

#include "core/core.h"
#include "io/model_store.h"

struct sd3_ctx {
    sd3_ctx_params params;
    sd3_err err;
    sd3_model_params model;     /* as given to sd3_load */
    model_store *ms;            /* the resolved model (NULL until sd3_load) */
    struct comp_res *res;       /* memory policy: load counts and, with keep_loaded, the resident
                                   components (components.h) */
};

/* How many times component (comp_id, components.h: 0 CLIP-L .. 4 VAE) was opened from its files since
 * sd3_load; -1 without a loaded model. With keep_loaded each is opened at most once; without, once per
 * generation (the VAE twice for img2img: encode, then decode). For tests and servers. */
int pipeline_component_loads(const sd3_ctx *ctx, int comp);
/* How many times a keep_loaded context stored a T5 quantised at load (-1 without a model). */
int pipeline_t5_quantised_kept(const sd3_ctx *ctx);

/* Validate a request (see sd3_gen_params_check); err names the parameter. */
sd3_status gen_params_check(const sd3_gen_params *p, sd3_err *err);
/* Release whatever the context holds of the model. */
void pipeline_unload(sd3_ctx *ctx);

#endif

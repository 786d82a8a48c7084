/* params.c — defaults and up-front validation of generation requests, so a bad size or strength is
 * reported before minutes of work, with the parameter named. */
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include "pipeline/pipeline.h"

sd3_model_params sd3_model_params_default(void) {
    sd3_model_params p;
    memset(&p, 0, sizeof p);
    return p;
}

sd3_gen_params sd3_gen_params_default(void) {
    sd3_gen_params p;
    memset(&p, 0, sizeof p);
    p.width = 1024;
    p.height = 1024;
    p.steps = 28;
    p.cfg_scale = 7.0f;
    p.shift = 0.0f;
    p.batch = 1;
    p.max_sequence_length = 256;
    p.slg_scale = 0.0f;
    p.slg_start = 0.01f;
    p.slg_stop = 0.2f;
    p.strength = 0.6;
    return p;
}

/* A path the request reads must be a readable regular file. */
static sd3_status check_input_file(const char *what, const char *path, sd3_err *err) {
    struct stat sb;
    if (stat(path, &sb) != 0) return sd3_errf(err, SD3_ERR_NOT_FOUND, "%s: %s does not exist", path, what);
    if (!S_ISREG(sb.st_mode)) return sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: %s is not a regular file", path, what);
    return SD3_OK;
}

sd3_status gen_params_check(const sd3_gen_params *p, sd3_err *err) {
    if (!p->prompt) return sd3_errf(err, SD3_ERR_INVALID_ARG, "prompt: missing");
    if (p->width < 16 || p->height < 16 || p->width % 16 || p->height % 16)
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "size %dx%d: width and height must be positive multiples of 16",
                        p->width, p->height);
    if (p->width > 8192 || p->height > 8192)
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "size %dx%d: at most 8192 per side", p->width, p->height);
    if (p->steps < 1 || p->steps > 10000) return sd3_errf(err, SD3_ERR_INVALID_ARG, "steps %d: must be in [1, 10000]", p->steps);
    if (!isfinite(p->cfg_scale) || p->cfg_scale < 0 || p->cfg_scale > 100)
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "cfg scale %g: must be in [0, 100]", (double)p->cfg_scale);
    if (!isfinite(p->shift) || p->shift < 0 || p->shift > 100)
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "shift %g: must be in (0, 100] (0 = the model's)", (double)p->shift);
    if (p->batch < 1 || p->batch > 64) return sd3_errf(err, SD3_ERR_INVALID_ARG, "batch %d: must be in [1, 64]", p->batch);
    if (p->clip_skip < 0 || p->clip_skip > 10) return sd3_errf(err, SD3_ERR_INVALID_ARG, "clip skip %d: must be in [0, 10]", p->clip_skip);
    if (p->max_sequence_length < 1 || p->max_sequence_length > 512)
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "max sequence length %d: must be in [1, 512]", p->max_sequence_length);
    if (p->n_sigmas < 0 || (p->n_sigmas > 0 && !p->sigmas))
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "sigmas: bad list");
    for (int i = 0; i < p->n_sigmas; i++)
        if (!isfinite(p->sigmas[i]) || p->sigmas[i] <= 0 || p->sigmas[i] > 1 || (i && p->sigmas[i] >= p->sigmas[i - 1]))
            return sd3_errf(err, SD3_ERR_INVALID_ARG, "sigmas: value %d (%g) must be in (0, 1] and below the one before",
                            i, (double)p->sigmas[i]);
    if (!isfinite(p->slg_scale) || p->slg_scale < 0)
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "skip-layer guidance scale %g: must be >= 0", (double)p->slg_scale);
    if (!(p->slg_start >= 0 && p->slg_start <= 1 && p->slg_stop >= 0 && p->slg_stop <= 1 && p->slg_start <= p->slg_stop))
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "skip-layer guidance start/stop %g/%g: need 0 <= start <= stop <= 1",
                        (double)p->slg_start, (double)p->slg_stop);
    if (p->slg_scale > 0 && p->n_skip_layers == 0)
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "skip-layer guidance: a scale is set but no layers to skip");
    for (int i = 0; i < p->n_skip_layers; i++)
        if (p->skip_layers[i] < 0) return sd3_errf(err, SD3_ERR_INVALID_ARG, "skip layer %d: must be >= 0", p->skip_layers[i]);
    if (p->init_image) {
        if (!(p->strength > 0 && p->strength <= 1))
            return sd3_errf(err, SD3_ERR_INVALID_ARG, "strength %g: must be in (0, 1]", (double)p->strength);
        sd3_status s = check_input_file("init image", p->init_image, err);
        if (s) return s;
    }
    if (p->mask_image) {
        if (!p->init_image) return sd3_errf(err, SD3_ERR_INVALID_ARG, "mask: inpainting needs an init image too");
        sd3_status s = check_input_file("mask image", p->mask_image, err);
        if (s) return s;
    }
    if (p->n_loras < 0 || p->n_loras > 64 || (p->n_loras && !p->loras))
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "loras: bad list");
    for (int i = 0; i < p->n_loras; i++) {
        sd3_status s = check_input_file("LoRA file", p->loras[i], err);
        if (s) return s;
        if (p->lora_scales && !isfinite(p->lora_scales[i]))
            return sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: LoRA scale is not a finite number", p->loras[i]);
    }
    if (p->latents_in) {
        sd3_status s = check_input_file("latents file", p->latents_in, err);
        if (s) return s;
    }
    return SD3_OK;
}

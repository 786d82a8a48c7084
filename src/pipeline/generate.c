/* generate.c — txt2img and img2img denoising as diffusers' SD3 pipelines (see generate.h). */
#include <math.h>
#include <string.h>
#include "core/rng.h"
#include "io/json_util.h"
#include "lora/lora.h"
#include "mmdit/mmdit.h"
#include "pipeline/components.h"
#include "pipeline/generate.h"
#include "sample/flow.h"
#include "vae/vae.h"

void pipe_out_free(pipe_out *o) {
    sd3_free(o->latents);
    sd3_free(o->decoded);
    memset(o, 0, sizeof *o);
}

/* Above this many output pixels the VAE runs tiled (diffusers' enable_tiling): an untiled 1024^2 SD3
 * decode needs about 3 GiB of activations, tiles keep it bounded. Below it we run untiled, which is what
 * diffusers' pipeline does by default, so the image is the same. */
#define VAE_TILE_ABOVE_PIXELS (1536ll * 1536ll)

static void tap(const pipe_taps *t, const char *name, int step, const float *x, int64_t n) {
    if (t && t->fn) t->fn(t->user, name, step, x, n);
}

/* The scheduler from scheduler/scheduler_config.json (SD3's defaults for a single file), with an
 * optional shift override. */
static sd3_status open_scheduler(const model_store *ms, float shift, flow_sched *s, sd3_err *err) {
    flow_config cfg = flow_config_default();
    cfg.shift = 3.0;
    if (ms->kind == MS_PIPELINE_DIR && ms_has(ms, "scheduler")) {
        cJSON *j = ms_load_config(ms, "scheduler", err);
        if (!j) return err ? err->status : SD3_ERR_IO;
        sd3_status st = flow_config_from_json(j, &cfg, "scheduler/scheduler_config.json", err);
        cJSON_Delete(j);
        if (st) return st;
    }
    if (shift > 0) cfg.shift = shift;
    return flow_create(s, &cfg, err);
}

/* img2img / inpainting: encode the init image and build the starting latents (B, L, h, w) at the first
 * timestep: posterior sample (noise draw 0), scaled, repeated over the batch (-> image_latents), then
 * the forward-process noise (draw 1, kept in `noise`) and scale_noise (or the pure noise when inpainting
 * at strength 1, as StableDiffusion3InpaintPipeline does). */
static sd3_status img2img_latents(const model_store *ms, const pipe_req *r, torch_gen *g, flow_sched *sch, float t0,
                                  int B, int L, int h, int w, float *latents, float *image_latents, float *noise,
                                  const pipe_taps *taps, sd3_err *err) {
    vae_model vl, *vp = NULL;   /* resident (keep_loaded) or opened for this use (components.h) */
    sd3_status s = comp_vae_get(ms, &vl, &vp, err);
    if (s) return s;
    int64_t hw = (int64_t)h * w, one = (int64_t)L * hw;
    float *mom = sd3_malloc(sizeof(float) * 2 * one), *mean = sd3_malloc(sizeof(float) * one);
    float *logvar = sd3_malloc(sizeof(float) * one);
    if (!mom || !mean || !logvar) { s = sd3_errf(err, SD3_ERR_NOMEM, "out of memory"); goto done; }
    if (vp->cfg.latent_channels != L) {
        s = sd3_errf(err, SD3_ERR_SHAPE, "vae has %d latent channels, the transformer %d", vp->cfg.latent_channels, L);
        goto done;
    }
    s = (r->vae_tiling || (int64_t)r->height * r->width > VAE_TILE_ABOVE_PIXELS) && vae_encode_wants_tiling(vp, r->height, r->width)
            ? vae_encode_tiled(vp, r->init_image, 1, 3, r->height, r->width, mom, err)
            : vae_encode(vp, r->init_image, 1, 3, r->height, r->width, mom, NULL, err);
    if (s) goto done;
    vae_moments_split(mom, 1, L, hw, mean, logvar);
    tgen_randn(g, noise, one);                       /* random draw 0: the posterior sample */
    tap(taps, "random_draw_0", -1, noise, one);
    vae_posterior_sample(mean, logvar, noise, mean, (size_t)one);
    vae_latents_from_encoder(&vp->cfg, mean, mean, (size_t)one);
    for (int b = 0; b < B; b++) memcpy(image_latents + b * one, mean, sizeof(float) * one);
    tgen_randn(g, noise, B * one);                   /* random draw 1: the forward-process noise */
    tap(taps, "random_draw_1", -1, noise, B * one);
    if (r->mask && r->strength == 1.0) memcpy(latents, noise, sizeof(float) * B * one);
    else s = flow_scale_noise(sch, t0, image_latents, noise, latents, B * one, err);
done:
    sd3_free(mom);
    sd3_free(mean);
    sd3_free(logvar);
    comp_vae_put(ms, vp);
    return s;
}

/* NaN or infinity in a result means non-finite weights or an overflow: stop with a message instead of
 * writing a garbage image. */
static sd3_status check_finite(const float *x, int64_t n, const char *what, int step, sd3_err *err) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return sd3_errf(err, SD3_ERR_FORMAT, "%s %d produced NaN or infinity (non-finite weights in the model, or an overflow)",
                            what, step);
    return SD3_OK;
}

/* The inpainting mask at latent resolution: torch's nearest interpolation from (H, W) to (h, w) picks
 * pixel (floor(y * H / h), floor(x * W / w)). */
static void mask_to_latent(const float *mask, int H, int W, int h, int w, float *out) {
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) out[y * w + x] = mask[(int64_t)(y * H / h) * W + (x * W / w)];
}

sd3_status pipe_generate(const model_store *ms, const pipe_req *r, const pipe_taps *taps, pipe_out *o, sd3_err *err) {
    memset(o, 0, sizeof *o);
    sd3_status s;
    int cfg = r->cfg_scale > 1.0f;
    encode_req tr = r->text;
    tr.cfg = cfg;
    tr.loras = r->loras;
    tr.lora_scales = r->lora_scales;
    tr.n_loras = r->n_loras;
    tr.lora_lenient = r->lora_lenient;
    encode_out eo;
    memset(&eo, 0, sizeof eo);
    flow_sched sch;
    memset(&sch, 0, sizeof sch);
    mmdit_model m_local, *mp = NULL;   /* resident (keep_loaded) or opened for this call (components.h) */
    float *lat2 = NULL, *ctx2 = NULL, *pool2 = NULL, *ts = NULL, *pred = NULL, *v = NULL, *skip_out = NULL;
    float *img_lat = NULL, *noise = NULL, *mask_lat = NULL, *proper = NULL;

    /* 1. prompts (each text encoder loaded, run and released in turn) */
    if ((s = encode_prompt(ms, &tr, &eo, err))) return s;
    int B = eo.B, S = eo.S, J = eo.J, P = eo.P;

    /* 2. scheduler */
    if ((s = open_scheduler(ms, r->shift, &sch, err))) goto done;
    flow_timesteps_opts fo;
    memset(&fo, 0, sizeof fo);
    fo.sigmas = r->sigmas;
    int n_steps = r->sigmas ? r->n_sigmas : r->steps;

    /* 3. transformer (needed for the latent shape) */
    if ((s = comp_mmdit_get(ms, r->mmdit_quant, &m_local, &mp, err))) goto done;
    mmdit_model *m = mp;
    m->stream_layers = r->stream_layers;
    for (int k = 0; k < r->n_skip_layers; k++)  /* checked now: the SLG window may never reach them */
        if (r->skip_layers[k] < 0 || r->skip_layers[k] >= m->cfg.num_layers) {
            s = sd3_errf(err, SD3_ERR_INVALID_ARG, "skip layer %d: the transformer has blocks 0..%d", r->skip_layers[k],
                         m->cfg.num_layers - 1);
            goto done;
        }
    for (int k = 0; k < r->n_loras; k++) {
        lora_file *lf = NULL;
        if ((s = lora_open(&lf, r->loras[k], err))) goto done;
        s = lora_attach(m, lf, r->lora_scales ? r->lora_scales[k] : 1.0f, r->lora_lenient, err);
        lora_close(lf);  /* the model keeps its own reference while adapters use it */
        if (s) goto done;
    }
    int L = m->cfg.in_channels, h = r->height / 8, w = r->width / 8;
    if (sch.cfg.use_dynamic_shifting) {
        int seq = (h / m->cfg.patch_size) * (w / m->cfg.patch_size);
        fo.has_mu = 1;
        fo.mu = flow_calculate_shift(seq, sch.cfg.base_image_seq_len, sch.cfg.max_image_seq_len, sch.cfg.base_shift,
                                     sch.cfg.max_shift);
    }
    if ((s = flow_set_timesteps(&sch, n_steps, &fo, err))) goto done;
    int t_start = 0;
    if (r->init_image && (s = flow_img2img_begin(&sch, r->strength, &t_start, err))) goto done;
    int n_run = sch.n_steps - t_start;
    tap(taps, "timesteps", -1, sch.timesteps, sch.n_steps);
    tap(taps, "sigmas", -1, sch.sigmas, sch.n_steps + 1);

    /* 4. initial latents */
    int64_t one = (int64_t)L * h * w, nlat = (int64_t)B * one;
    o->B = B;
    o->C = L;
    o->h = h;
    o->w = w;
    o->latents = sd3_malloc(sizeof(float) * nlat);
    int Bm = cfg ? 2 * B : B;
    lat2 = sd3_malloc(sizeof(float) * Bm * one);
    pred = sd3_malloc(sizeof(float) * Bm * one);
    v = sd3_malloc(sizeof(float) * nlat);
    ctx2 = sd3_malloc(sizeof(float) * (size_t)Bm * S * J);
    pool2 = sd3_malloc(sizeof(float) * (size_t)Bm * P);
    ts = sd3_malloc(sizeof(float) * Bm);
    if (r->slg_scale > 0 && r->n_skip_layers > 0 && cfg) skip_out = sd3_malloc(sizeof(float) * nlat);
    if (!o->latents || !lat2 || !pred || !v || !ctx2 || !pool2 || !ts || (r->slg_scale > 0 && cfg && r->n_skip_layers && !skip_out)) {
        s = sd3_errf(err, SD3_ERR_NOMEM, "out of memory for the denoising buffers");
        goto done;
    }
    torch_gen g;
    tgen_init(&g, r->seed, TGEN_KERNEL_AVX2);
    if (r->init_image) {
        /* the MMDiT is not needed while the VAE encodes: still mapped, its pages are only read later */
        img_lat = sd3_malloc(sizeof(float) * nlat);
        noise = sd3_malloc(sizeof(float) * nlat);
        if (!img_lat || !noise) { s = sd3_errf(err, SD3_ERR_NOMEM, "out of memory"); goto done; }
        if ((s = img2img_latents(ms, r, &g, &sch, sch.timesteps[t_start], B, L, h, w, o->latents, img_lat, noise, taps, err)))
            goto done;
        if (r->mask) {
            mask_lat = sd3_malloc(sizeof(float) * (size_t)h * w);
            proper = sd3_malloc(sizeof(float) * nlat);
            if (!mask_lat || !proper) { s = sd3_errf(err, SD3_ERR_NOMEM, "out of memory"); goto done; }
            mask_to_latent(r->mask, r->height, r->width, h, w, mask_lat);
        }
    } else if (r->latents_in) {
        memcpy(o->latents, r->latents_in, sizeof(float) * nlat);
    } else {
        tgen_randn(&g, o->latents, nlat);
    }
    tap(taps, "latents_init", -1, o->latents, nlat);

    /* CFG batch order: [uncond; cond] */
    if (cfg) {
        memcpy(ctx2, eo.npe, sizeof(float) * (size_t)B * S * J);
        memcpy(ctx2 + (size_t)B * S * J, eo.pe, sizeof(float) * (size_t)B * S * J);
        memcpy(pool2, eo.npooled, sizeof(float) * (size_t)B * P);
        memcpy(pool2 + (size_t)B * P, eo.pooled, sizeof(float) * (size_t)B * P);
    } else {
        memcpy(ctx2, eo.pe, sizeof(float) * (size_t)B * S * J);
        memcpy(pool2, eo.pooled, sizeof(float) * (size_t)B * P);
    }

    /* 5. the denoising loop */
    for (int i = 0; i < n_run; i++) {
        double t0 = sd3_time();
        float t = sch.timesteps[t_start + i];
        memcpy(lat2, o->latents, sizeof(float) * nlat);
        if (cfg) memcpy(lat2 + nlat, o->latents, sizeof(float) * nlat);
        for (int b = 0; b < Bm; b++) ts[b] = t;
        if ((s = mmdit_forward(m, lat2, Bm, h, w, ctx2, S, pool2, ts, NULL, 0, pred, err))) goto done;
        tap(taps, "noise_pred_raw", i, pred, (int64_t)Bm * one);
        if (cfg) {
            const float *u = pred, *c = pred + nlat;
            for (int64_t k = 0; k < nlat; k++) v[k] = u[k] + r->cfg_scale * (c[k] - u[k]);
            int slg = r->slg_scale > 0 && r->n_skip_layers > 0 && (double)i > n_run * (double)r->slg_start &&
                      (double)i < n_run * (double)r->slg_stop;
            if (slg) {
                if ((s = mmdit_forward(m, o->latents, B, h, w, eo.pe, S, eo.pooled, ts, r->skip_layers, r->n_skip_layers,
                                       skip_out, err)))
                    goto done;
                for (int64_t k = 0; k < nlat; k++) v[k] = v[k] + (c[k] - skip_out[k]) * r->slg_scale;
            }
        } else {
            memcpy(v, pred, sizeof(float) * nlat);
        }
        if ((s = flow_step(&sch, t, v, o->latents, o->latents, nlat, err))) goto done;
        if (r->mask) {
            /* inpainting (16-channel transformer): keep the unmasked part on the image's own trajectory,
             * re-noised to the next timestep (the clean image latents after the last step) */
            if (i < n_run - 1) {
                if ((s = flow_scale_noise(&sch, sch.timesteps[t_start + i + 1], img_lat, noise, proper, nlat, err))) goto done;
            } else {
                memcpy(proper, img_lat, sizeof(float) * nlat);
            }
            int64_t hw = (int64_t)h * w;
            for (int64_t k = 0; k < nlat; k++) {
                float mk = mask_lat[k % hw];
                o->latents[k] = (1.0f - mk) * proper[k] + mk * o->latents[k];
            }
        }
        tap(taps, "latents", i, o->latents, nlat);
        if ((s = check_finite(o->latents, nlat, "the denoising step", i + 1, err))) goto done;
        if (r->progress && r->progress(i + 1, n_run, sd3_time() - t0, r->progress_user)) {
            s = sd3_errf(err, SD3_ERR_INVALID_ARG, "generation cancelled at step %d", i + 1);
            goto done;
        }
    }
    comp_mmdit_put(ms, mp);   /* release the transformer before the VAE comes in (unless kept resident) */
    mp = NULL;

    /* 6. decode */
    if (r->decode) {
        vae_model vl, *vm = NULL;
        if ((s = comp_vae_get(ms, &vl, &vm, err))) goto done;
        int H = h * vae_downscale(&vm->cfg), W = w * vae_downscale(&vm->cfg);
        float *z = sd3_malloc(sizeof(float) * nlat);
        o->decoded = sd3_malloc(sizeof(float) * (size_t)B * 3 * H * W);
        if (!z || !o->decoded) {
            sd3_free(z);
            comp_vae_put(ms, vm);
            s = sd3_errf(err, SD3_ERR_NOMEM, "out of memory for the decode");
            goto done;
        }
        vae_latents_to_decoder(&vm->cfg, o->latents, z, (size_t)nlat);
        s = (r->vae_tiling || (int64_t)H * W > VAE_TILE_ABOVE_PIXELS) && vae_decode_wants_tiling(vm, h, w) ? vae_decode_tiled(vm, z, B, L, h, w, o->decoded, err)
                                               : vae_decode(vm, z, B, L, h, w, o->decoded, NULL, err);
        sd3_free(z);
        comp_vae_put(ms, vm);
        if (s) goto done;
        if ((s = check_finite(o->decoded, (int64_t)B * 3 * H * W, "the VAE decode", 1, err))) goto done;
    }
    s = SD3_OK;
done:
    comp_mmdit_put(ms, mp);
    flow_free(&sch);
    encode_out_free(&eo);
    sd3_free(lat2);
    sd3_free(ctx2);
    sd3_free(pool2);
    sd3_free(ts);
    sd3_free(pred);
    sd3_free(v);
    sd3_free(skip_out);
    sd3_free(img_lat);
    sd3_free(noise);
    sd3_free(mask_lat);
    sd3_free(proper);
    if (s) pipe_out_free(o);
    return s;
}

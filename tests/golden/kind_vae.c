/*
 * kind_vae.c — golden kinds vae_decode and vae_encode: run the case's VAE (model_dir, a diffusers
 * folder) on the stored inputs and compare every stored tensor — the pipeline scaling, each
 * intermediate the case carries, the outputs and their post-processing — then repeat the main output
 * with the same weights read from the original single-file checkpoint (`first_stage_model.*`).
 */
#include <string.h>
#include <sys/stat.h>
#include "golden.h"
#include "io/json_util.h"
#include "vae/vae.h"

/* The tap: compare each intermediate the case has, count the ones compared. */
typedef struct tap_state {
    golden_case *gc;
    int n_seen;
} tap_state;

/* Compare an intermediate with the case tensor of the same name, if the case has one. */
static void tap_check(void *user, const char *name, const float *x, int N, int C, int H, int W) {
    tap_state *t = user;
    if (!golden_tensor_json(t->gc, name)) return;
    golden_check(t->gc, name, x, (int64_t)N * C * H * W);
    t->n_seen++;
}

/* Number of case tensors whose name starts with prefix (the intermediates the tap must have met). */
static int count_prefixed(const golden_case *gc, const char *prefix) {
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(gc->json, "tensors");
    int n = 0;
    for (const cJSON *t = ts ? ts->child : NULL; t; t = t->next)
        if (!strncmp(t->string, prefix, strlen(prefix))) n++;
    return n;
}

/* Open the case's model; 0 on success. */
static int open_model(golden_case *gc, vae_model *m, vae_config *cfg) {
    const char *dir = golden_model_dir(gc);
    if (!dir) { golden_fail(gc, "case has no model_dir"); return -1; }
    sd3_err err = {0};
    if (vae_open_dir(m, dir, &err) != SD3_OK) { golden_fail(gc, "%s", err.msg); return -1; }
    *cfg = m->cfg;
    return 0;
}

/* The single-file checkpoint holding the same VAE, if this case's model has one: for model_dir
 * "<name>/vae", "<root>/<name>-single-file/sd3_tiny.safetensors" (the tiny-sd3 layout of the README).
 * Returns 1 and the path if it exists; 0 if the model has none; -1 (after golden_fail) if it should exist. */
static int single_file_path(golden_case *gc, char *out, size_t n) {
    const char *md = json_str(gc->json, "model_dir", "");
    if (strcmp(md, "tiny-sd3/vae")) return 0;
    golden_root_path(gc, "tiny-sd3-single-file/sd3_tiny.safetensors", out, n);
    struct stat sb;
    if (stat(out, &sb) != 0) { golden_fail(gc, "%s: single-file checkpoint missing", out); return -1; }
    return 1;
}

/* Shape of an input tensor as 4 ints; 0 on success. */
static int shape4(golden_case *gc, const char *name, int d[4]) {
    tensor t;
    if (golden_tensor(gc, name, &t)) return -1;
    if (t.ndim != 4) { golden_fail(gc, "%s: expected 4 dims, got %d", name, t.ndim); return -1; }
    for (int i = 0; i < 4; i++) d[i] = (int)t.shape[i];
    return 0;
}

int golden_vae_decode(golden_case *gc) {
    vae_model m;
    vae_config cfg;
    if (open_model(gc, &m, &cfg)) return -1;
    int d[4];
    int64_t n = 0;
    float *lat = NULL, *z = NULL, *img = NULL, *img01 = NULL, *u8f = NULL;
    uint8_t *u8 = NULL;
    int rc = -1;
    if (shape4(gc, "latents", d) || !(lat = golden_f32(gc, "latents", &n))) goto done;
    int N = d[0], C = d[1], h = d[2], w = d[3], f = vae_downscale(&cfg);
    int64_t nimg = (int64_t)N * cfg.out_channels * h * f * w * f;
    z = sd3_malloc((size_t)n * sizeof(float));
    img = sd3_malloc((size_t)nimg * sizeof(float));
    img01 = sd3_malloc((size_t)nimg * sizeof(float));
    u8f = sd3_malloc((size_t)nimg * sizeof(float));
    u8 = sd3_malloc((size_t)nimg);
    if (!z || !img || !img01 || !u8f || !u8) { golden_fail(gc, "out of memory"); goto done; }

    vae_latents_to_decoder(&cfg, lat, z, (size_t)n);
    golden_check(gc, "vae_input", z, n);
    tap_state ts = {gc, 0};
    vae_tap tap = {tap_check, &ts};
    sd3_err err = {0};
    if (vae_decode(&m, z, N, C, h, w, img, &tap, &err) != SD3_OK) { golden_fail(gc, "%s", err.msg); goto done; }
    if (ts.n_seen != count_prefixed(gc, "decoder_"))
        golden_fail(gc, "the decoder met %d of the case's %d decoder_* intermediates", ts.n_seen, count_prefixed(gc, "decoder_"));
    golden_check(gc, "image", img, nimg);
    vae_image_to_01(img, img01, (size_t)nimg);
    golden_check(gc, "image_01", img01, nimg);

    /* The README allows off-by-one here: round(image_01 * 255) flips where image_01 * 255 lies within
     * float error of x.5, so compare with atol 1.0 and report how many values differ at all. */
    vae_image_to_u8_hwc(img01, N, cfg.out_channels, h * f, w * f, u8);
    for (int64_t i = 0; i < nimg; i++) u8f[i] = u8[i];
    if (golden_check_atol(gc, "image_uint8_hwc", u8f, nimg, 1.0) == 0) {
        tensor t;
        golden_tensor(gc, "image_uint8_hwc", &t);
        int64_t off = 0;
        for (int64_t i = 0; i < nimg; i++) off += tensor_get_f32(&t, i) != u8f[i];
        if (gc->verbose) printf("         image_uint8_hwc: %lld of %lld values off by one\n", (long long)off, (long long)nimg);
    }

    /* the same VAE from the single-file checkpoint (original key layout) */
    char sf[4096];
    int has_sf = single_file_path(gc, sf, sizeof sf);
    if (has_sf < 0) goto done;
    if (has_sf) {
        vae_model ms;
        if (vae_open_file(&ms, sf, &cfg, &err) != SD3_OK) { golden_fail(gc, "%s", err.msg); goto done; }
        if (vae_decode(&ms, z, N, C, h, w, img, NULL, &err) != SD3_OK) golden_fail(gc, "single file: %s", err.msg);
        else {
            if (gc->verbose) printf("    single file %s:\n", sf);
            golden_check(gc, "image", img, nimg);
        }
        vae_free(&ms);
    }
    rc = 0;
done:
    vae_free(&m);
    sd3_free(lat);
    sd3_free(z);
    sd3_free(img);
    sd3_free(img01);
    sd3_free(u8f);
    sd3_free(u8);
    return rc;
}

int golden_vae_encode(golden_case *gc) {
    vae_model m;
    vae_config cfg;
    if (open_model(gc, &m, &cfg)) return -1;
    int d[4];
    int64_t n = 0, nn = 0;
    float *img01 = NULL, *x = NULL, *mom = NULL, *mean = NULL, *logvar = NULL, *tmp = NULL, *noise = NULL, *smp = NULL;
    int rc = -1;
    if (shape4(gc, "image_01", d) || !(img01 = golden_f32(gc, "image_01", &n))) goto done;
    int N = d[0], C = d[1], H = d[2], W = d[3], f = vae_downscale(&cfg), L = cfg.latent_channels;
    int64_t hw = (int64_t)(H / f) * (W / f), nl = (int64_t)N * L * hw;
    x = sd3_malloc((size_t)n * sizeof(float));
    mom = sd3_malloc((size_t)(2 * nl) * sizeof(float));
    mean = sd3_malloc((size_t)nl * sizeof(float));
    logvar = sd3_malloc((size_t)nl * sizeof(float));
    tmp = sd3_malloc((size_t)nl * sizeof(float));
    smp = sd3_malloc((size_t)nl * sizeof(float));
    if (!x || !mom || !mean || !logvar || !tmp || !smp) { golden_fail(gc, "out of memory"); goto done; }

    vae_image_from_01(img01, x, (size_t)n);
    golden_check_atol(gc, "vae_input", x, n, 0.0);   /* 2x - 1 is exact in float32 */
    tap_state ts = {gc, 0};
    vae_tap tap = {tap_check, &ts};
    sd3_err err = {0};
    if (vae_encode(&m, x, N, C, H, W, mom, &tap, &err) != SD3_OK) { golden_fail(gc, "%s", err.msg); goto done; }
    if (ts.n_seen != count_prefixed(gc, "encoder_"))
        golden_fail(gc, "the encoder met %d of the case's %d encoder_* intermediates", ts.n_seen, count_prefixed(gc, "encoder_"));
    vae_moments_split(mom, N, L, hw, mean, logvar);
    golden_check(gc, "latent_mean", mean, nl);
    golden_check(gc, "latent_logvar", logvar, nl);
    vae_posterior_std(logvar, tmp, (size_t)nl);
    golden_check(gc, "latent_std", tmp, nl);
    if (!(noise = golden_f32(gc, "sample_noise", &nn))) goto done;
    if (nn != nl) { golden_fail(gc, "sample_noise has %lld values, want %lld", (long long)nn, (long long)nl); goto done; }
    vae_posterior_sample(mean, logvar, noise, smp, (size_t)nl);
    golden_check(gc, "latent_sample", smp, nl);
    vae_latents_from_encoder(&cfg, smp, tmp, (size_t)nl);
    golden_check(gc, "latent_sample_scaled", tmp, nl);
    vae_latents_from_encoder(&cfg, mean, tmp, (size_t)nl);
    golden_check(gc, "latent_mean_scaled", tmp, nl);

    char sf[4096];
    int has_sf = single_file_path(gc, sf, sizeof sf);
    if (has_sf < 0) goto done;
    if (has_sf) {
        vae_model ms;
        if (vae_open_file(&ms, sf, &cfg, &err) != SD3_OK) { golden_fail(gc, "%s", err.msg); goto done; }
        if (vae_encode(&ms, x, N, C, H, W, mom, NULL, &err) != SD3_OK) golden_fail(gc, "single file: %s", err.msg);
        else {
            if (gc->verbose) printf("    single file %s:\n", sf);
            vae_moments_split(mom, N, L, hw, mean, logvar);
            golden_check(gc, "latent_mean", mean, nl);
            golden_check(gc, "latent_logvar", logvar, nl);
        }
        vae_free(&ms);
    }
    rc = 0;
done:
    vae_free(&m);
    sd3_free(img01);
    sd3_free(x);
    sd3_free(mom);
    sd3_free(mean);
    sd3_free(logvar);
    sd3_free(tmp);
    sd3_free(noise);
    sd3_free(smp);
    return rc;
}

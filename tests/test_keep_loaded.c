/* test_keep_loaded.c — the memory policy through the public API on the tiny golden pipeline:
 *   - default (keep_loaded 0): every sd3_generate opens each component again (load count 2 after two calls);
 *   - keep_loaded 1: each component is opened once for any number of calls (count 1), and the images and
 *     latents are bit-identical to the default policy's, call by call (different prompts and seeds);
 *   - the same for img2img (the VAE serves the encode and the decode: 1 load instead of 2 per call), for an
 *     int8-quantised transformer (quantised once), with a run-time LoRA on one call only (the resident
 *     transformer must come back plain), and after sd3_load again (counts restart, the old model is gone);
 *   - stream_layers 1 (alone and with keep_loaded) gives the same images. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "sd3.h"
#include "io/image.h"
#include "pipeline/components.h"
#include "pipeline/pipeline.h"
#include "test.h"

static char model[4096], lora[4096], tmpdir[256];

/* One generation's result: the image and the final latents. */
typedef struct result {
    sd3_image img;
    float *lat;
    int ok;
} result;

/* A request: prompt, seed, optional init image and LoRA. */
static sd3_gen_params request(const char *prompt, uint64_t seed, const char *init, const char *lora_path) {
    static const char *loras[1];
    static const float scales[1] = {0.8f};
    sd3_gen_params p = sd3_gen_params_default();
    p.prompt = prompt;
    p.width = p.height = 64;
    p.steps = 2;
    p.cfg_scale = 7.0f;
    p.seed = seed;
    p.max_sequence_length = 16;
    if (init) {
        p.init_image = init;
        p.strength = 0.6;
    }
    if (lora_path) {
        loras[0] = lora_path;
        p.loras = loras;
        p.lora_scales = scales;
        p.n_loras = 1;
        p.lora_lenient = 1;
    }
    return p;
}

/* A context over the tiny pipeline with the given policy. */
static int g_t5_quant = 0;   /* t5_quant of the contexts open_ctx makes */
static sd3_ctx *open_ctx(int keep, int stream, int quant) {
    sd3_ctx *c = sd3_ctx_create(NULL);
    sd3_model_params mp = sd3_model_params_default();
    mp.model = model;
    mp.keep_loaded = keep;
    mp.stream_layers = stream;
    mp.mmdit_quant = quant;
    mp.t5_quant = g_t5_quant;
    if (sd3_load(c, &mp) != SD3_OK) {
        CHECK(0, "sd3_load: %s", sd3_last_error(c));
        sd3_ctx_free(c);
        return NULL;
    }
    return c;
}

/* One sd3_generate with its image and latents (ok = 0 on failure, reported). */
static result gen(sd3_ctx *c, const sd3_gen_params *p) {
    result r;
    memset(&r, 0, sizeof r);
    if (!c) return r;
    r.ok = sd3_generate(c, p, &r.img, &r.lat) == SD3_OK;
    CHECK(r.ok, "sd3_generate '%s': %s", p->prompt, sd3_last_error(c));
    return r;
}

/* Free a result. */
static void result_free(result *r) {
    sd3_image_free(&r->img);
    free(r->lat);
    memset(r, 0, sizeof *r);
}

/* Bit-identical image and latents. */
static void same(const result *a, const result *b, const char *what) {
    if (!a->ok || !b->ok) { CHECK(0, "%s: a generation failed", what); return; }
    CHECK(a->img.width == b->img.width && a->img.height == b->img.height, "%s: sizes differ", what);
    CHECK(!memcmp(a->img.rgb, b->img.rgb, (size_t)a->img.width * a->img.height * 3), "%s: images differ", what);
    CHECK(!memcmp(a->lat, b->lat, sizeof(float) * 16 * 8 * 8), "%s: latents differ", what);
}

/* Every component's load count equals want (VAE: want_vae). */
static void loads(const sd3_ctx *c, int want, int want_vae, const char *what) {
    for (int k = 0; k < COMP_COUNT; k++) {
        int w = k == COMP_VAE ? want_vae : want, got = pipeline_component_loads(c, k);
        CHECK(got == w, "%s: %s loaded %d times, expected %d", what, comp_id_name((comp_id)k), got, w);
    }
}

int main(void) {
    const char *g = getenv("SD3_GOLDEN");
    snprintf(model, sizeof model, "%s/tiny-sd3", g ? g : "../shared/golden");
    snprintf(lora, sizeof lora, "%s/diffusion/lora/pytorch_lora_weights.safetensors", g ? g : "../shared/golden");
    snprintf(tmpdir, sizeof tmpdir, "/tmp/sd3c_keep_XXXXXX");
    if (!mkdtemp(tmpdir)) { printf("mkdtemp failed\n"); return 1; }
    sd3_gen_params p1 = request("a photo of a cat", 1, NULL, NULL), p2 = request("a red bicycle, watercolour", 2, NULL, NULL);

    /* 1. default policy: two calls, two loads of everything */
    sd3_ctx *def = open_ctx(0, 0, 0);
    loads(def, 0, 0, "default, before any call");
    result d1 = gen(def, &p1), d2 = gen(def, &p2);
    loads(def, 2, 2, "default, two calls");

    /* 2. keep_loaded: one load each, same images call by call */
    sd3_ctx *keep = open_ctx(1, 0, 0);
    result k1 = gen(keep, &p1);
    loads(keep, 1, 1, "keep_loaded, one call");
    result k2 = gen(keep, &p2);
    loads(keep, 1, 1, "keep_loaded, two calls");
    same(&d1, &k1, "keep_loaded call 1");
    same(&d2, &k2, "keep_loaded call 2");
    CHECK(d1.ok && d2.ok && memcmp(d1.img.rgb, d2.img.rgb, 64 * 64 * 3), "the two requests gave the same image");
    result k3 = gen(keep, &p1);   /* the first request again, after another: nothing left over */
    same(&d1, &k3, "keep_loaded call 3 (= call 1)");
    loads(keep, 1, 1, "keep_loaded, three calls");

    /* 3. a LoRA on one call of the resident transformer, then none: the plain model is back */
    sd3_gen_params pl = request("a photo of a cat", 1, NULL, lora);
    result dl = gen(def, &pl), kl = gen(keep, &pl), k4 = gen(keep, &p1);
    same(&dl, &kl, "keep_loaded with a LoRA");
    same(&d1, &k4, "keep_loaded after a LoRA call");
    CHECK(dl.ok && memcmp(dl.lat, d1.lat, sizeof(float) * 16 * 64), "the LoRA changed nothing (not applied?)");
    loads(keep, 1, 1, "keep_loaded, with the LoRA call");

    /* 4. img2img: the VAE encodes and decodes; kept, it is opened once for both and every call */
    char init[512];
    snprintf(init, sizeof init, "%s/init.png", tmpdir);
    sd3_err err = {0};
    image im = {d1.img.width, d1.img.height, d1.img.rgb};
    CHECK(d1.ok && image_write_png(&im, init, NULL, 0, &err) == SD3_OK, "writing %s: %s", init, err.msg);
    sd3_gen_params pi = request("a photo of a dog", 3, init, NULL);
    sd3_ctx *def_i = open_ctx(0, 0, 0), *keep_i = open_ctx(1, 0, 0);
    result di = gen(def_i, &pi), ki1 = gen(keep_i, &pi), ki2 = gen(keep_i, &pi);
    loads(def_i, 1, 2, "default img2img: VAE for encode and decode");
    loads(keep_i, 1, 1, "keep_loaded img2img, two calls");
    same(&di, &ki1, "keep_loaded img2img call 1");
    same(&di, &ki2, "keep_loaded img2img call 2");

    /* 5. sd3_load again on a keeping context: the residents go, counts restart */
    sd3_model_params mp = sd3_model_params_default();
    mp.model = model;
    mp.keep_loaded = 1;
    CHECK(sd3_load(keep, &mp) == SD3_OK, "reload: %s", sd3_last_error(keep));
    loads(keep, 0, 0, "keep_loaded after sd3_load again");
    result k5 = gen(keep, &p2);
    same(&d2, &k5, "keep_loaded after reload");
    loads(keep, 1, 1, "keep_loaded after reload, one call");

    /* 6. int8 transformer (quantised at load): quantised once when kept, same images as quantising per call */
    sd3_ctx *dq = open_ctx(0, 0, 8), *kq = open_ctx(1, 0, 8);
    result dq1 = gen(dq, &p1), dq2 = gen(dq, &p2), kq1 = gen(kq, &p1), kq2 = gen(kq, &p2);
    same(&dq1, &kq1, "int8 keep_loaded call 1");
    same(&dq2, &kq2, "int8 keep_loaded call 2");
    loads(kq, 1, 1, "int8 keep_loaded, two calls");
    CHECK(dq1.ok && memcmp(dq1.lat, d1.lat, sizeof(float) * 16 * 64), "int8 gave the float latents (not quantised?)");

    /* 6b. int8 T5 (quantised at load): kept quantised, so quantised once for three calls; same images */
    g_t5_quant = 8;
    sd3_ctx *dt = open_ctx(0, 0, 0), *kt = open_ctx(1, 0, 0);
    g_t5_quant = 0;
    result dt1 = gen(dt, &p1), dt2 = gen(dt, &p2), kt1 = gen(kt, &p1), kt2 = gen(kt, &p2), kt3 = gen(kt, &p1);
    same(&dt1, &kt1, "int8 T5 keep_loaded call 1");
    same(&dt2, &kt2, "int8 T5 keep_loaded call 2");
    same(&dt1, &kt3, "int8 T5 keep_loaded call 3");
    loads(kt, 1, 1, "int8 T5 keep_loaded, three calls");
    CHECK(pipeline_t5_quantised_kept(kt) == 1, "int8 T5 kept: quantised %d times for three calls", pipeline_t5_quantised_kept(kt));
    CHECK(pipeline_t5_quantised_kept(dt) == 0, "default policy stored a quantised T5 (%d)", pipeline_t5_quantised_kept(dt));
    CHECK(dt1.ok && memcmp(dt1.lat, d1.lat, sizeof(float) * 16 * 64), "int8 T5 gave the float latents (not quantised?)");
    result_free(&dt1), result_free(&dt2), result_free(&kt1), result_free(&kt2), result_free(&kt3);
    sd3_ctx_free(dt), sd3_ctx_free(kt);

    /* 7. layer streaming: same images, alone and with keep_loaded */
    sd3_ctx *st = open_ctx(0, 1, 0), *stk = open_ctx(1, 1, 0);
    result s1 = gen(st, &p1), s2 = gen(stk, &p1), s3 = gen(stk, &p2);
    same(&d1, &s1, "stream_layers");
    same(&d1, &s2, "stream_layers + keep_loaded call 1");
    same(&d2, &s3, "stream_layers + keep_loaded call 2");
    loads(stk, 1, 1, "stream_layers + keep_loaded, two calls");

    /* 8. no model: -1 */
    sd3_ctx *none = sd3_ctx_create(NULL);
    CHECK(pipeline_component_loads(none, COMP_MMDIT) == -1, "a context without a model reports loads");
    sd3_ctx_free(none);

    result *all[] = {&d1, &d2, &k1, &k2, &k3, &dl, &kl, &k4, &di, &ki1, &ki2, &k5, &dq1, &dq2, &kq1, &kq2, &s1, &s2, &s3};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) result_free(all[i]);
    sd3_ctx *ctxs[] = {def, keep, def_i, keep_i, dq, kq, st, stk};
    for (size_t i = 0; i < sizeof ctxs / sizeof ctxs[0]; i++) sd3_ctx_free(ctxs[i]);
    unlink(init);
    rmdir(tmpdir);
    TEST_MAIN_END("test_keep_loaded");
}

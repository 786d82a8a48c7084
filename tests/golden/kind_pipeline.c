/* kind_pipeline.c — golden kinds txt2img and img2img: the whole StableDiffusion3Pipeline /
 * StableDiffusion3Img2ImgPipeline on the tiny pipeline. The initial latents are drawn from our
 * torch-identical generator with the case's seed (and checked bit-exact against the stored latents_in /
 * random draws), so these cases also prove the seeded noise. */
#include <math.h>
#include <string.h>
#include "golden.h"
#include "io/json_util.h"
#include "io/model_store.h"
#include "pipeline/generate.h"

#define MAXP 16
#define MAX_STEPS 64

typedef struct taps_state {
    golden_case *gc;
    float *per_step_latents, *per_step_out;  /* collected [steps, ...] */
    int64_t lat_n, out_n;
    int steps_seen;
} taps_state;

static void on_tap(void *user, const char *name, int step, const float *x, int64_t n) {
    taps_state *t = user;
    golden_case *gc = t->gc;
    if (!strcmp(name, "timesteps") || !strcmp(name, "sigmas")) {
        golden_check_atol(gc, name, x, n, 0.0);  /* the scheduler is reproduced bit for bit */
    } else if (!strcmp(name, "latents_init") && st_find(gc->st, "latents_in")) {
        golden_check_atol(gc, "latents_in", x, n, 0.0);  /* torch.randn with the case's seed, bit-exact */
    } else if (!strncmp(name, "random_draw_", 12) && st_find(gc->st, name)) {
        golden_check_atol(gc, name, x, n, 0.0);
    } else if (!strcmp(name, "latents") && t->per_step_latents && step < MAX_STEPS) {
        t->lat_n = n;
        memcpy(t->per_step_latents + step * n, x, sizeof(float) * n);
        t->steps_seen = step + 1;
    } else if (!strcmp(name, "noise_pred_raw") && t->per_step_out && step < MAX_STEPS) {
        t->out_n = n;
        memcpy(t->per_step_out + step * n, x, sizeof(float) * n);
    }
}

static int str_list(const cJSON *params, const char *key, const char **out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(params, key);
    if (!v || cJSON_IsNull(v)) return 0;
    if (cJSON_IsString(v)) { out[0] = v->valuestring; return 1; }
    int n = 0;
    if (!cJSON_IsArray(v)) return -1;
    for (const cJSON *e = v->child; e && n < MAXP; e = e->next) {
        if (!cJSON_IsString(e)) return -1;
        out[n++] = e->valuestring;
    }
    return n;
}

static int run_pipeline_case(golden_case *gc, int img2img) {
    const cJSON *pa = cJSON_GetObjectItemCaseSensitive(gc->json, "parameters");
    const char *mdir = golden_model_dir(gc);
    if (!pa || !mdir) { golden_fail(gc, "case has no parameters or model_dir"); return -1; }
    const char *prompts[MAXP], *negs[MAXP] = {0};
    int n = str_list(pa, "prompt", prompts);
    int nn = str_list(pa, "negative_prompt", negs);
    if (n < 1 || nn < 0 || (nn > 1 && nn != n)) { golden_fail(gc, "malformed prompts"); return -1; }
    if (nn == 1) for (int i = 1; i < n; i++) negs[i] = negs[0];

    pipe_req r;
    memset(&r, 0, sizeof r);
    r.text.n_prompts = n;
    r.text.prompt = prompts;
    r.text.negative = nn ? negs : NULL;
    r.text.num_images_per_prompt = json_int(pa, "num_images_per_prompt", 1);
    r.text.max_sequence_length = json_int(pa, "max_sequence_length", 256);
    r.text.clip_skip = json_int(pa, "clip_skip", 0);
    r.text.no_t5 = json_bool(pa, "drop_t5", 0) || json_bool(gc->json, "drop_t5", 0);
    r.width = json_int(pa, "width", 0);
    r.height = json_int(pa, "height", 0);
    r.steps = json_int(pa, "num_inference_steps", 28);
    r.cfg_scale = (float)json_num(pa, "guidance_scale", 7.0);
    r.shift = (float)json_num(pa, "scheduler_shift", 0.0);
    r.seed = (uint64_t)json_num(pa, "seed", 0);
    int skip[16], n_skip = 0;
    sd3_err err = {0};
    if (json_int_array(pa, "skip_guidance_layers", skip, 16, &n_skip, "parameters", &err)) { golden_fail(gc, "%s", err.msg); return -1; }
    r.skip_layers = skip;
    r.n_skip_layers = n_skip;
    r.slg_scale = n_skip ? (float)json_num(pa, "skip_layer_guidance_scale", 2.8) : 0.0f;
    r.slg_start = (float)json_num(pa, "skip_layer_guidance_start", 0.01);
    r.slg_stop = (float)json_num(pa, "skip_layer_guidance_stop", 0.2);
    r.decode = 1;
    float *init = NULL;
    if (img2img) {
        r.strength = json_num(pa, "strength", 0.6);
        tensor t;
        if (golden_tensor(gc, "init_image_uint8", &t)) return -1;
        int H = (int)t.shape[0], W = (int)t.shape[1];
        init = sd3_malloc(sizeof(float) * 3 * H * W);
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
                for (int c = 0; c < 3; c++)  /* image_processor.preprocess: uint8 / 127.5 - 1, HWC -> CHW */
                    init[(size_t)c * H * W + (size_t)y * W + x] = tensor_get_f32(&t, ((int64_t)y * W + x) * 3 + c) / 127.5f - 1.0f;
        golden_check(gc, "init_image_preprocessed", init, 3 * (int64_t)H * W);
        r.init_image = init;
    }

    taps_state ts;
    memset(&ts, 0, sizeof ts);
    ts.gc = gc;
    const st_entry *psl = st_find(gc->st, "per_step_latents"), *pso = st_find(gc->st, "per_step_transformer_out");
    if (psl) ts.per_step_latents = sd3_malloc(sizeof(float) * (size_t)(psl->end - psl->begin) / 4);
    if (pso) ts.per_step_out = sd3_malloc(sizeof(float) * (size_t)(pso->end - pso->begin) / 4);
    pipe_taps taps = {on_tap, &ts};
    model_store *ms = NULL;
    int rc = 0;
    if (ms_open(&ms, mdir, &err) != SD3_OK) { golden_fail(gc, "%s", err.msg); rc = -1; goto done; }
    pipe_out o;
    if (pipe_generate(ms, &r, &taps, &o, &err) != SD3_OK) { golden_fail(gc, "%s", err.msg); rc = -1; goto done; }
    int64_t nlat = (int64_t)o.B * o.C * o.h * o.w;
    int H = o.h * 8, W = o.w * 8;
    golden_check(gc, "latents_out", o.latents, nlat);
    golden_check(gc, "vae_decode_raw", o.decoded, (int64_t)o.B * 3 * H * W);
    /* output_type "np": clamp(x / 2 + 0.5, 0, 1) as [B, H, W, 3]; then uint8 = round-half-even(x * 255) */
    float *img = sd3_malloc(sizeof(float) * (size_t)o.B * H * W * 3), *u8 = sd3_malloc(sizeof(float) * (size_t)o.B * H * W * 3);
    for (int b = 0; b < o.B; b++)
        for (int c = 0; c < 3; c++)
            for (int i = 0; i < H * W; i++) {
                float x = o.decoded[((size_t)b * 3 + c) * H * W + i] / 2.0f + 0.5f;
                x = x < 0 ? 0 : x > 1 ? 1 : x;
                img[((size_t)b * H * W + i) * 3 + c] = x;
                u8[((size_t)b * H * W + i) * 3 + c] = nearbyintf(x * 255.0f);
            }
    golden_check(gc, "image_float", img, (int64_t)o.B * H * W * 3);
    /* ties at .5 may differ by 1 (README): atol 1 */
    golden_check_atol(gc, "image_uint8", u8, (int64_t)o.B * H * W * 3, 1.0);
    sd3_free(img);
    sd3_free(u8);
    if (ts.per_step_latents) golden_check(gc, "per_step_latents", ts.per_step_latents, ts.lat_n * ts.steps_seen);
    if (ts.per_step_out) golden_check(gc, "per_step_transformer_out", ts.per_step_out, ts.out_n * ts.steps_seen);
    pipe_out_free(&o);
done:
    ms_close(ms);
    sd3_free(init);
    sd3_free(ts.per_step_latents);
    sd3_free(ts.per_step_out);
    return rc;
}

int golden_txt2img(golden_case *gc) { return run_pipeline_case(gc, 0); }
int golden_img2img(golden_case *gc) { return run_pipeline_case(gc, 1); }

/*
 * train_cli.c — `sd3 train-lora`: DreamBooth LoRA fine-tuning of the SD3 transformer as diffusers'
 * train_dreambooth_lora_sd3.py (flag names as the script's, with '-' for '_'; both spellings accepted).
 *
 * Steps: instance images (PNG/JPEG/... of a folder) -> Resize(shorter side = resolution, bilinear WITHOUT
 * the antialias torchvision applies when shrinking; documented difference) -> random horizontal flip
 * (--random-flip, p 0.5) -> center crop (--center-crop) or random crop -> [-1, 1]; all done once, as the
 * script's DreamBoothDataset does. The instance prompt is encoded once (the three text encoders one at a
 * time, then released); every image is VAE-encoded once (latents cached: posterior mean and std, so each
 * step still draws latent_dist.sample()), the VAE released; then the training loop (src/train/checkpoint.h)
 * on the transformer. Validation images go through the pipeline with the current LoRA attached.
 *
 * Prior preservation: missing class images are generated first (the pipeline, 28 steps, CFG 7, seeds
 * derived from --seed; the script draws them unseeded), then encoded like the instance images.
 * Not supported yet (refused with a message): --train-text-encoder.
 */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "core/core.h"
#include "core/rng.h"
#include "io/image.h"
#include "io/model_store.h"
#include "kernels/kernels.h"
#include "pipeline/components.h"
#include "pipeline/encode_prompt.h"
#include "pipeline/generate.h"
#include "train/checkpoint.h"
#include "train/density.h"
#include "vae/vae.h"

int sd3_cmd_train_lora(int argc, char **argv);

/* Print the usage. */
static void train_usage(FILE *f) {
    fprintf(f,
            "usage: sd3 train-lora -m MODEL --instance-data-dir DIR --instance-prompt TEXT [options]\n"
            "  -m, --pretrained-model-name-or-path PATH   diffusers SD3 pipeline folder (or Hub id in the HF cache)\n"
            "  --instance-data-dir DIR       folder of instance images (PNG, JPEG, BMP, ...)\n"
            "  --instance-prompt TEXT        prompt with the identifier, e.g. \"a photo of sks dog\"\n"
            "  --output-dir DIR              default sd3-dreambooth-lora\n"
            "  --resolution N                default 512 (multiple of 16)\n"
            "  --center-crop                 center crop (default: random crop)\n"
            "  --random-flip                 random horizontal flip\n"
            "  --train-batch-size N          default 4\n"
            "  --gradient-accumulation-steps N   default 1\n"
            "  --max-train-steps N           default 500\n"
            "  --num-train-epochs N          used when --max-train-steps is not given\n"
            "  --learning-rate X             default 1e-4\n"
            "  --lr-scheduler S              constant | constant_with_warmup | linear | cosine |\n"
            "                                cosine_with_restarts | polynomial (default constant)\n"
            "  --lr-num-cycles N --lr-power X   cosine_with_restarts cycles (1), polynomial power (1.0)\n"
            "  --lr-warmup-steps N           default 500\n"
            "  --rank N                      LoRA rank = alpha, default 4\n"
            "  --lora-layers L1,L2,...       target modules (default: the 8 attention projections)\n"
            "  --lora-blocks I,J,...         only these transformer blocks\n"
            "  --weighting-scheme S          logit_normal | sigma_sqrt | mode | cosmap | none (default logit_normal)\n"
            "  --logit-mean X --logit-std X --mode-scale X   defaults 0, 1, 1.29\n"
            "  --adam-beta1 X --adam-beta2 X --adam-weight-decay X --adam-epsilon X --max-grad-norm X\n"
            "  --precondition-outputs 0|1    default 1 (pred = raw (-sigma) + x_t, target x0; 0: target noise - x0)\n"
            "  --seed N                      default 0\n"
            "  --checkpointing-steps N       default 500 (checkpoint-N folders, written atomically)\n"
            "  --resume-from-checkpoint P    a checkpoint folder or \"latest\"\n"
            "  --stop-after-steps N          stop after N steps (as an interruption; resume later)\n"
            "  --with-prior-preservation --class-data-dir DIR --class-prompt TEXT   prior preservation; missing\n"
            "                                class images (up to --num-class-images, default 100) are generated\n"
            "  --prior-loss-weight X         default 1.0\n"
            "  --validation-prompt TEXT --validation-epochs N (default 50) --num-validation-images N (default 4)\n"
            "  --validation-steps N          validate every N optimizer steps instead of epochs\n"
            "  --max-sequence-length N       T5 tokens, default 77\n"
            "  --cache-latents               accepted: latents are always cached (posterior sampled each step)\n"
            "  --gradient-checkpointing / --no-gradient-checkpointing   default on\n"
            "  --mixed-precision no|bf16     bf16: the matrix products in bf16 (F32 accumulation; kernels.h)\n"
            "  --threads N\n");
}

/* Parse a number or fail with the flag's name. */
static int num_arg(const char *flag, const char *v, double lo, double hi, double *out) {
    char *end;
    double x = v ? strtod(v, &end) : 0;
    if (!v || end == v || *end || !(x >= lo && x <= hi)) {
        fprintf(stderr, "train-lora: %s: '%s' is not a number in [%g, %g]\n", flag, v ? v : "", lo, hi);
        return -1;
    }
    *out = x;
    return 0;
}

/* Whether a file name looks like an image. */
static int is_image_name(const char *n) {
    const char *dot = strrchr(n, '.');
    if (!dot) return 0;
    const char *ext[] = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tga", ".gif", ".PNG", ".JPG", ".JPEG"};
    for (size_t i = 0; i < sizeof ext / sizeof ext[0]; i++)
        if (!strcmp(dot, ext[i])) return 1;
    return 0;
}

/* Bilinear resize (half-pixel centres, align_corners False, no antialias) of 8-bit RGB to float RGB. */
static void resize_bilinear(const image *im, int W, int H, float *out /* H x W x 3, [0, 255] */) {
    const double sx = (double)im->w / W, sy = (double)im->h / H;
    for (int y = 0; y < H; y++) {
        double fy = (y + 0.5) * sy - 0.5;
        if (fy < 0) fy = 0;
        int y0 = (int)fy, y1 = y0 + 1 < im->h ? y0 + 1 : y0;
        double wy = fy - y0;
        for (int x = 0; x < W; x++) {
            double fx = (x + 0.5) * sx - 0.5;
            if (fx < 0) fx = 0;
            int x0 = (int)fx, x1 = x0 + 1 < im->w ? x0 + 1 : x0;
            double wx = fx - x0;
            for (int c = 0; c < 3; c++) {
                double a = im->rgb[((size_t)y0 * im->w + x0) * 3 + c], b = im->rgb[((size_t)y0 * im->w + x1) * 3 + c];
                double d = im->rgb[((size_t)y1 * im->w + x0) * 3 + c], e = im->rgb[((size_t)y1 * im->w + x1) * 3 + c];
                out[((size_t)y * W + x) * 3 + c] = (float)((a * (1 - wx) + b * wx) * (1 - wy) + (d * (1 - wx) + e * wx) * wy);
            }
        }
    }
}

/* The script's train transforms on one image -> CHW in [-1, 1] (res x res). */
static int preprocess(const image *im, int res, int center_crop, int random_flip, torch_gen *g, float *chw) {
    int W, H;
    if (im->w <= im->h) W = res, H = (int)((long long)res * im->h / im->w);
    else H = res, W = (int)((long long)res * im->w / im->h);
    float *rs = malloc(sizeof(float) * (size_t)W * H * 3);
    if (!rs) return -1;
    resize_bilinear(im, W, H, rs);
    int flip = random_flip && tgen_uniform_f64(g) < 0.5;
    int top, left;
    if (center_crop) {
        top = (int)lround((H - res) / 2.0), left = (int)lround((W - res) / 2.0);
    } else {
        top = H > res ? (int)(tgen_u64(g) % (uint64_t)(H - res + 1)) : 0;
        left = W > res ? (int)(tgen_u64(g) % (uint64_t)(W - res + 1)) : 0;
    }
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < res; y++)
            for (int x = 0; x < res; x++) {
                int sx = flip ? W - 1 - (left + x) : left + x;
                float v = rs[((size_t)(top + y) * W + sx) * 3 + c];
                v = (float)floor(v + 0.5) / 255.0f;   /* back to 8 bits as PIL does, then ToTensor */
                chw[((size_t)c * res + y) * res + x] = (v - 0.5f) / 0.5f;
            }
    free(rs);
    return 0;
}

/* A folder of images and, once encoded, their VAE posteriors (mean, std; n x 16 x h x h each). */
typedef struct img_set {
    const char *dir;
    char **names;
    int n;
    float *mean, *std;
} img_set;

static void img_set_free(img_set *s) {
    for (int i = 0; i < s->n; i++) free(s->names[i]);
    free(s->names), free(s->mean), free(s->std);
    memset(s, 0, sizeof *s);
}

/* The image files of dir, sorted by name (runs are reproducible whatever the directory order). */
static int list_images(const char *dir, img_set *s) {
    memset(s, 0, sizeof *s);
    s->dir = dir;
    DIR *dd = opendir(dir);
    if (!dd) {
        fprintf(stderr, "train-lora: %s: %s\n", dir, strerror(errno));
        return -1;
    }
    struct dirent *e;
    while ((e = readdir(dd)))
        if (e->d_name[0] != '.' && is_image_name(e->d_name)) {
            char **nn = realloc(s->names, sizeof(char *) * (size_t)(s->n + 1));
            if (!nn) break;
            s->names = nn;
            s->names[s->n++] = strdup(e->d_name);
        }
    closedir(dd);
    for (int i = 0; i < s->n; i++)
        for (int j = i + 1; j < s->n; j++)
            if (strcmp(s->names[j], s->names[i]) < 0) { char *t = s->names[i]; s->names[i] = s->names[j]; s->names[j] = t; }
    return 0;
}

/* Preprocess and VAE-encode every image of s into s->mean / s->std. */
static int encode_set(const vae_model *vae, img_set *s, int res, int center_crop, int random_flip, torch_gen *g) {
    const int f = vae_downscale(&vae->cfg), L = vae->cfg.latent_channels, h = res / f;
    const int64_t n1 = (int64_t)L * h * h;
    float *pix = malloc(sizeof(float) * 3 * (size_t)res * res), *mom = malloc(sizeof(float) * (size_t)(2 * n1));
    s->mean = malloc(sizeof(float) * (size_t)(s->n * n1));
    s->std = malloc(sizeof(float) * (size_t)(s->n * n1));
    int rc = -1;
    sd3_err err = {0};
    if (!pix || !mom || !s->mean || !s->std) { fprintf(stderr, "train-lora: out of memory\n"); goto done; }
    for (int i = 0; i < s->n; i++) {
        char path[4400];
        snprintf(path, sizeof path, "%s/%s", s->dir, s->names[i]);
        image im = {0};
        if (image_load(&im, path, &err) != SD3_OK) { fprintf(stderr, "train-lora: %s\n", err.msg); goto done; }
        int bad = preprocess(&im, res, center_crop, random_flip, g, pix);
        image_free(&im);
        sd3_status st = bad ? sd3_errf(&err, SD3_ERR_NOMEM, "out of memory")
                            : vae_encode(vae, pix, 1, 3, res, res, mom, NULL, &err);
        if (st != SD3_OK) { fprintf(stderr, "train-lora: %s: %s\n", path, err.msg); goto done; }
        vae_moments_split(mom, 1, L, (int64_t)h * h, s->mean + i * n1, s->std + i * n1);
        vae_posterior_std(s->std + i * n1, s->std + i * n1, (size_t)n1);
        fprintf(stderr, "train-lora: encoded %s\n", path);
    }
    rc = 0;
done:
    free(pix), free(mom);
    return rc;
}

/* encode_prompt for one prompt without negatives. */
static int encode_one(const model_store *ms, const char *prompt, int seq_len, encode_out *o, sd3_err *err) {
    const char *pr[1] = {prompt};
    encode_req er;
    memset(&er, 0, sizeof er);
    er.n_prompts = 1, er.prompt = pr, er.num_images_per_prompt = 1, er.max_sequence_length = seq_len;
    return encode_prompt(ms, &er, o, err) == SD3_OK ? 0 : -1;
}

/* One image of the pipeline (28 steps, CFG 7, the script's pipeline defaults) written as PNG to path. */
static int generate_png(const model_store *ms, const char *prompt, const char *lora, int res, int seq_len,
                        uint64_t seed, const char *path) {
    const char *pr[1] = {prompt}, *loras[1] = {lora};
    float scales[1] = {1.0f};
    pipe_req r;
    memset(&r, 0, sizeof r);
    r.text.n_prompts = 1;
    r.text.prompt = pr;
    r.text.num_images_per_prompt = 1;
    r.text.max_sequence_length = seq_len;
    r.width = r.height = res;
    r.steps = 28;
    r.cfg_scale = 7.0f;
    r.seed = seed;
    if (lora) r.loras = loras, r.lora_scales = scales, r.n_loras = 1;
    r.decode = 1;
    pipe_out o;
    memset(&o, 0, sizeof o);
    sd3_err err = {0};
    if (pipe_generate(ms, &r, NULL, &o, &err) != SD3_OK) {
        fprintf(stderr, "train-lora: generating '%s': %s\n", prompt, err.msg);
        return -1;
    }
    const int H = 8 * o.h, W = 8 * o.w;
    image im = {.w = W, .h = H, .rgb = malloc((size_t)W * H * 3)}; /* image_from_chw fills a given buffer */
    int rc = -1;
    image_text tx[1] = {{"prompt", prompt}};
    if (im.rgb) {
        image_from_chw(&im, o.decoded, H, W);
        if (image_write_png(&im, path, tx, 1, &err) == SD3_OK) rc = 0;
        else fprintf(stderr, "train-lora: %s\n", err.msg);
    }
    free(im.rgb);
    pipe_out_free(&o);
    return rc;
}

/* The script's class-image generation: the missing images, one pipeline run each (seed + index). */
static int generate_class_images(const model_store *ms, const char *dir, const char *prompt, int have, int n_new,
                                 int res, int seq_len, uint64_t seed) {
    fprintf(stderr, "train-lora: generating %d class images in %s\n", n_new, dir);
    for (int k = 0; k < n_new; k++) {
        char path[4400];
        snprintf(path, sizeof path, "%s/%d-sd3c.png", dir, have + k);
        if (generate_png(ms, prompt, NULL, res, seq_len, seed + 1000003ULL * (uint64_t)(have + k + 1), path)) return -1;
    }
    return 0;
}

/* State for the validation / progress callbacks. */
typedef struct cli_ctx {
    const model_store *ms;
    const char *out_dir, *prompt;
    int n_images, res, seq_len;
    uint64_t seed;
    double t_start;
} cli_ctx;

/* The progress line: step, loss, lr and seconds per step. */
static void on_progress(void *user, int64_t step, int64_t total, float loss, double lr, double sec) {
    (void)user;
    fprintf(stderr, "step %lld/%lld  loss %.4f  lr %.3g  %.2f s/step  ETA %.0f s\n", (long long)step, (long long)total,
            loss, lr, sec, sec * (double)(total - step));
}

/* Validation: save the current LoRA, run the pipeline with it attached, write the images. */
static int on_validation(void *user, int64_t step, const lt_set *L) {
    cli_ctx *c = user;
    char lp[4200], ip[4300];
    snprintf(lp, sizeof lp, "%s/validation_lora.safetensors", c->out_dir);
    sd3_err err = {0};
    if (lt_save(L, lp, &err) != SD3_OK) {
        fprintf(stderr, "validation: %s\n", err.msg);
        return -1;
    }
    for (int k = 0; k < c->n_images; k++) {
        snprintf(ip, sizeof ip, "%s/validation-step%lld-%d.png", c->out_dir, (long long)step, k);
        if (generate_png(c->ms, c->prompt, lp, c->res, c->seq_len, c->seed + (uint64_t)k, ip)) return -1;
        fprintf(stderr, "validation: wrote %s\n", ip);
    }
    return 0;
}

int sd3_cmd_train_lora(int argc, char **argv) {
    train_opts o = train_opts_default();
    const char *model = NULL, *data_dir = NULL, *prompt = NULL, *val_prompt = NULL;
    int res = 512, center_crop = 0, random_flip = 0, seq_len = 77, val_epochs = 50, n_val = 4, val_steps = 0;
    int epochs = 1, steps_given = 0, threads = 0, prior = 0, n_class_images = 100;
    const char *class_dir = NULL, *class_prompt = NULL;
    double v;
    for (int i = 0; i < argc; i++) {
        char a[128];
        snprintf(a, sizeof a, "%s", argv[i]);
        for (char *p = a + 2; a[0] == '-' && a[1] == '-' && *p; p++)
            if (*p == '_') *p = '-';
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
#define NUM(lo, hi) (num_arg(a, val, lo, hi, &v) ? 2 : (i++, 0))
        int bad = 0;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { train_usage(stdout); return 0; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model") || !strcmp(a, "--pretrained-model-name-or-path")) model = val, i++;
        else if (!strcmp(a, "--instance-data-dir")) data_dir = val, i++;
        else if (!strcmp(a, "--instance-prompt")) prompt = val, i++;
        else if (!strcmp(a, "--output-dir")) o.output_dir = val, i++;
        else if (!strcmp(a, "--validation-prompt")) val_prompt = val, i++;
        else if (!strcmp(a, "--resume-from-checkpoint")) o.resume_from = val, i++;
        else if (!strcmp(a, "--lora-layers")) o.lora_layers = val, i++;
        else if (!strcmp(a, "--lora-blocks")) o.lora_blocks = val, i++;
        else if (!strcmp(a, "--center-crop")) center_crop = 1;
        else if (!strcmp(a, "--random-flip")) random_flip = 1;
        else if (!strcmp(a, "--cache-latents")) {}
        else if (!strcmp(a, "--gradient-checkpointing")) o.gradient_checkpointing = 1;
        else if (!strcmp(a, "--no-gradient-checkpointing")) o.gradient_checkpointing = 0;
        else if (!strcmp(a, "--resolution")) { if (!(bad = NUM(16, 8192))) res = (int)v; }
        else if (!strcmp(a, "--train-batch-size")) { if (!(bad = NUM(1, 256))) o.train_batch_size = (int)v; }
        else if (!strcmp(a, "--gradient-accumulation-steps")) { if (!(bad = NUM(1, 1e6))) o.gradient_accumulation_steps = (int)v; }
        else if (!strcmp(a, "--max-train-steps")) { if (!(bad = NUM(0, 1e9))) o.max_train_steps = (int)v, steps_given = 1; }
        else if (!strcmp(a, "--stop-after-steps")) { if (!(bad = NUM(0, 1e9))) o.stop_after_steps = (int)v; }
        else if (!strcmp(a, "--num-train-epochs")) { if (!(bad = NUM(1, 1e9))) epochs = (int)v; }
        else if (!strcmp(a, "--learning-rate")) { if (!(bad = NUM(0, 10))) o.learning_rate = v; }
        else if (!strcmp(a, "--precondition-outputs")) { if (!(bad = NUM(0, 1))) o.precondition_outputs = (int)v; }
        else if (!strcmp(a, "--lr-num-cycles")) { if (!(bad = NUM(1, 1e6))) o.lr_num_cycles = (int)v; }
        else if (!strcmp(a, "--lr-power")) { if (!(bad = NUM(0, 1e3))) o.lr_power = v; }
        else if (!strcmp(a, "--lr-warmup-steps")) { if (!(bad = NUM(0, 1e9))) o.lr_warmup_steps = (int)v; }
        else if (!strcmp(a, "--rank")) { if (!(bad = NUM(1, 4096))) o.rank = (int)v; }
        else if (!strcmp(a, "--logit-mean")) { if (!(bad = NUM(-100, 100))) o.logit_mean = v; }
        else if (!strcmp(a, "--logit-std")) { if (!(bad = NUM(0, 100))) o.logit_std = v; }
        else if (!strcmp(a, "--mode-scale")) { if (!(bad = NUM(-100, 100))) o.mode_scale = v; }
        else if (!strcmp(a, "--adam-beta1")) { if (!(bad = NUM(0, 1))) o.adam.beta1 = v; }
        else if (!strcmp(a, "--adam-beta2")) { if (!(bad = NUM(0, 1))) o.adam.beta2 = v; }
        else if (!strcmp(a, "--adam-weight-decay")) { if (!(bad = NUM(0, 10))) o.adam.weight_decay = v; }
        else if (!strcmp(a, "--adam-epsilon")) { if (!(bad = NUM(0, 1))) o.adam.eps = v; }
        else if (!strcmp(a, "--max-grad-norm")) { if (!(bad = NUM(0, 1e9))) o.max_grad_norm = v; }
        else if (!strcmp(a, "--seed")) { if (!(bad = NUM(0, 1.8e19))) o.seed = (uint64_t)v; }
        else if (!strcmp(a, "--checkpointing-steps")) { if (!(bad = NUM(0, 1e9))) o.checkpointing_steps = (int)v; }
        else if (!strcmp(a, "--validation-epochs")) { if (!(bad = NUM(1, 1e9))) val_epochs = (int)v; }
        else if (!strcmp(a, "--validation-steps")) { if (!(bad = NUM(1, 1e9))) val_steps = (int)v; }
        else if (!strcmp(a, "--num-validation-images")) { if (!(bad = NUM(1, 64))) n_val = (int)v; }
        else if (!strcmp(a, "--max-sequence-length")) { if (!(bad = NUM(1, 512))) seq_len = (int)v; }
        else if (!strcmp(a, "--threads")) { if (!(bad = NUM(1, 1024))) threads = (int)v; }
        else if (!strcmp(a, "--lr-scheduler")) {
            int s = val ? lr_sched_parse(val) : -1;
            if (s < 0) {
                fprintf(stderr, "train-lora: --lr-scheduler: '%s' is not constant, constant_with_warmup, linear, cosine, "
                                "cosine_with_restarts or polynomial\n", val ? val : "");
                return 2;
            }
            o.lr_scheduler = (lr_sched)s, i++;
        } else if (!strcmp(a, "--weighting-scheme")) {
            if (!val) { fprintf(stderr, "train-lora: --weighting-scheme needs a value\n"); return 2; }
            o.weighting = density_scheme_parse(val), i++;
        } else if (!strcmp(a, "--with-prior-preservation")) prior = 1;
        else if (!strcmp(a, "--class-data-dir")) class_dir = val, i++;
        else if (!strcmp(a, "--class-prompt")) class_prompt = val, i++;
        else if (!strcmp(a, "--prior-loss-weight")) { if (!(bad = NUM(0, 1e6))) o.prior_loss_weight = v; }
        else if (!strcmp(a, "--num-class-images")) { if (!(bad = NUM(0, 1e6))) n_class_images = (int)v; }
        else if (!strcmp(a, "--mixed-precision")) {
            if (!val || (strcmp(val, "no") && strcmp(val, "bf16"))) {
                fprintf(stderr, "train-lora: --mixed-precision: '%s' is not no or bf16\n", val ? val : "");
                return 2;
            }
            k_set_precision(!strcmp(val, "bf16")), i++;
        } else if (!strcmp(a, "--train-text-encoder")) {
            fprintf(stderr, "train-lora: %s is not supported yet (text-encoder LoRA)\n", a);
            return 2;
        } else {
            fprintf(stderr, "train-lora: unknown option '%s' (see sd3 train-lora --help)\n", argv[i]);
            return 2;
        }
        if (bad) return 2;
        if (i >= argc) { fprintf(stderr, "train-lora: %s needs a value\n", a); return 2; }
#undef NUM
    }
    if (!model || !data_dir || !prompt) {
        fprintf(stderr, "train-lora: -m MODEL, --instance-data-dir and --instance-prompt are required\n");
        train_usage(stderr);
        return 2;
    }
    if (res % 16) { fprintf(stderr, "train-lora: --resolution %d is not a multiple of 16\n", res); return 2; }
    if (threads) pool_set_threads(threads);

    if (prior && (!class_dir || !class_prompt)) {
        fprintf(stderr, "train-lora: --with-prior-preservation needs --class-data-dir and --class-prompt\n");
        return 2;
    }
    if (mkdir(o.output_dir, 0777) && errno != EEXIST) {
        fprintf(stderr, "train-lora: --output-dir %s: %s\n", o.output_dir, strerror(errno));
        return 1;
    }
    model_store *ms = NULL;
    sd3_err err = {0};
    if (ms_open(&ms, model, &err) != SD3_OK) { fprintf(stderr, "train-lora: %s\n", err.msg); return 1; }
    int rc = 1;
    img_set inst = {0}, cls = {0};
    encode_out eo, ec;
    memset(&eo, 0, sizeof eo);
    memset(&ec, 0, sizeof ec);
    mmdit_model mm;
    memset(&mm, 0, sizeof mm);
    vae_model vae;
    memset(&vae, 0, sizeof vae);
    int vae_open = 0;

    if (list_images(data_dir, &inst) || inst.n == 0) {
        fprintf(stderr, "train-lora: --instance-data-dir %s: no images\n", data_dir);
        goto out;
    }
    if (prior) {
        /* the script generates the missing class images with the pipeline first */
        if (mkdir(class_dir, 0777) && errno != EEXIST) {
            fprintf(stderr, "train-lora: --class-data-dir %s: %s\n", class_dir, strerror(errno));
            goto out;
        }
        if (list_images(class_dir, &cls)) goto out;
        if (cls.n < n_class_images &&
            generate_class_images(ms, class_dir, class_prompt, cls.n, n_class_images - cls.n, res, seq_len, o.seed))
            goto out;
        img_set_free(&cls);
        if (list_images(class_dir, &cls) || cls.n == 0) {
            fprintf(stderr, "train-lora: --class-data-dir %s: no images\n", class_dir);
            goto out;
        }
    }

    /* prompt embeddings, once (each text encoder loaded and released in turn) */
    fprintf(stderr, "train-lora: encoding the prompts\n");
    if (encode_one(ms, prompt, seq_len, &eo, &err) || (prior && encode_one(ms, class_prompt, seq_len, &ec, &err))) {
        fprintf(stderr, "train-lora: %s\n", err.msg);
        goto out;
    }

    /* VAE-encode every image once */
    if (comp_open_vae(ms, &vae, &err) != SD3_OK) { fprintf(stderr, "train-lora: %s\n", err.msg); goto out; }
    vae_open = 1;
    torch_gen pg;
    tgen_init(&pg, o.seed ^ 0x5eedULL, TGEN_KERNEL_AVX2);
    if (encode_set(&vae, &inst, res, center_crop, random_flip, &pg) ||
        (prior && encode_set(&vae, &cls, res, center_crop, random_flip, &pg)))
        goto out;
    const int h = res / vae_downscale(&vae.cfg);
    train_data d = {.n = inst.n, .C = vae.cfg.latent_channels, .H = h, .W = h, .S = eo.S, .J = eo.J, .P = eo.P,
                    .mean = inst.mean, .std = inst.std, .shift = vae.cfg.shift_factor,
                    .scale = vae.cfg.scaling_factor, .ctx = eo.pe, .pooled = eo.pooled};
    if (prior) {
        d.n_class = cls.n, d.class_mean = cls.mean, d.class_std = cls.std, d.class_ctx = ec.pe;
        d.class_pooled = ec.pooled;
    }
    vae_free(&vae);
    vae_open = 0;

    if (comp_open_mmdit(ms, &mm, &err) != SD3_OK) { fprintf(stderr, "train-lora: %s\n", err.msg); goto out; }
    const int len = prior && cls.n > inst.n ? cls.n : inst.n;   /* DreamBoothDataset's length */
    int steps_per_epoch = ((len + o.train_batch_size - 1) / o.train_batch_size + o.gradient_accumulation_steps - 1) /
                          o.gradient_accumulation_steps;
    if (!steps_given) o.max_train_steps = epochs * steps_per_epoch;
    cli_ctx cc = {.ms = ms, .out_dir = o.output_dir, .prompt = val_prompt, .n_images = n_val, .res = res,
                  .seq_len = seq_len, .seed = o.seed};
    o.progress = on_progress;
    o.user = &cc;
    if (val_prompt) {
        o.validation = on_validation;
        o.validation_steps = val_steps ? val_steps : val_epochs * steps_per_epoch;
    }
    fprintf(stderr, "train-lora: %d images%s, %dx%d latents, %d steps (batch %d x %d accumulation), rank %d, %s\n",
            inst.n, prior ? " + class images" : "", h, h, o.max_train_steps, o.train_batch_size,
            o.gradient_accumulation_steps, o.rank, density_scheme_name(o.weighting));
    if (train_run(&mm, &o, &d, &err) != SD3_OK) { fprintf(stderr, "train-lora: %s\n", err.msg); goto out; }
    if (o.stop_after_steps > 0 && o.stop_after_steps < o.max_train_steps)
        fprintf(stderr, "train-lora: stopped after step %d (resume with --resume-from-checkpoint latest)\n",
                o.stop_after_steps);
    else fprintf(stderr, "train-lora: wrote %s/pytorch_lora_weights.safetensors\n", o.output_dir);
    rc = 0;
out:
    if (vae_open) vae_free(&vae);
    mmdit_free(&mm);
    encode_out_free(&eo);
    encode_out_free(&ec);
    ms_close(ms);
    img_set_free(&inst);
    img_set_free(&cls);
    return rc;
}

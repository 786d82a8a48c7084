/*
 * sd3.c — the sd3 command-line tool. The only place that prints usage or calls exit().
 *
 *   sd3 [generate] -m MODEL -p PROMPT [options]   text-to-image, image-to-image (default command)
 *   sd3 info IMAGE.png                            print the generation parameters stored in an image
 *   sd3 version                                   version and detected CPU features
 */
#include <errno.h>
#include <stdarg.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "sd3.h"
#include "io/image.h"
#include "io/json_util.h"
#include "core/core.h"
#include "io/model_store.h"
#include "io/safetensors.h"
#include "lora/lora.h"
#include "pipeline/components.h"
#include "pipeline/encode_prompt.h"
#include "text/clip_tok.h"
#include "text/t5_tok.h"

#define MAX_SKIP 64
#define MAX_SIGMAS 1000

static const char *prog = "sd3";

/* Subcommands that live in their own files (tools/NAME_cli.c). */
int sd3_cmd_train_lora(int argc, char **argv); /* tools/train_cli.c */
int sd3_cmd_bench(int argc, char **argv);      /* tools/bench_cli.c */
int sd3_cmd_quantize(int argc, char **argv);   /* tools/quant_cli.c */

/* Print a one-line error and exit with status 1 (2 for usage errors). */
static void die(int code, const char *fmt, ...) __attribute__((noreturn, format(printf, 2, 3)));
static void die(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: error: ", prog);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(code);
}

static void usage_generate(FILE *f) {
    sd3_gen_params d = sd3_gen_params_default();
    fprintf(f,
            "usage: sd3 [generate] [options]\n"
            "  -m, --model PATH|REPO     diffusers folder, single-file .safetensors, or Hub repo id in the HF cache\n"
            "                            (default: stabilityai/stable-diffusion-3-medium-diffusers)\n"
            "      --clip-l/--clip-g/--t5xxl/--vae FILE   component overrides for single-file checkpoints\n"
            "      --config DIR          diffusers folder whose config.json files describe a single file\n"
            "  -p, --prompt TEXT         the prompt (or -f/--prompt-file FILE: the whole file is one prompt)\n"
            "      --prompts FILE        one prompt per line (blank lines skipped): the model is loaded once\n"
            "                            (--keep-loaded) and image k is written to -o with _%%04d before the\n"
            "                            extension (out.png -> out_0001.png, out_0002.png, ...), same seed for each\n"
            "      --prompt-2/--prompt-3 TEXT             prompts for CLIP-G / T5 (default: the prompt)\n"
            "  -n, --negative-prompt TEXT  (also --negative-prompt-2/--negative-prompt-3)\n"
            "  -W, --width N / -H, --height N   image size, multiples of 16 (default %d x %d)\n"
            "      --steps N             denoising steps (default %d)\n"
            "      --cfg X               guidance scale, CFG when > 1 (default %.1f)\n"
            "      --shift X             scheduler shift (default: the model's, 3.0 for SD3)\n"
            "      --sigmas a,b,...      custom sigma schedule\n"
            "      --seed N              seed (random when absent; always printed)\n"
            "      --batch N             images per prompt (default 1)\n"
            "      --clip-skip N         CLIP layers to skip (default 0)\n"
            "      --max-sequence-length N  T5 tokens (default %d)\n"
            "      --slg-scale X --skip-layers a,b --slg-start X --slg-stop X   skip-layer guidance\n"
            "      --init-img FILE --strength X   image-to-image (strength in (0, 1], default %.1f); with -W/-H\n"
            "                            the image is resized to that size as diffusers does (Pillow's LANCZOS,\n"
            "                            bit-exact); without them its own size is used (diffusers would make 1024x1024);\n"
            "                            an EXIF orientation (JPEG, PNG) is applied first, like diffusers' load_image\n"
            "      --mask FILE           inpainting mask (with --init-img; white = repaint): EXIF-oriented and resized\n"
            "                            to the image's size the same way, then grayscale and binarised at 0.5, as\n"
            "                            diffusers does\n"
            "      --latents FILE        initial latents (.safetensors, tensor 'latents')\n"
            "      --save-latents FILE   write the final latents (.safetensors)\n"
            "  -o, --output FILE         PNG to write (default output.png; %%d for batches)\n"
            "      --threads N           worker threads (default: all cores)\n"
            "      --no-t5               run without T5 (zeros in its place)\n"
            "      --t5 stored|int8|int4 quantise T5's weights at load (int8 = the 8-bit T5 of diffusers' docs)\n"
            "      --precision P         fp32 (exact, default) | bf16 (bf16 products) | int8 | int4 (quantised MMDiT)\n"
            "      --lora FILE[:SCALE]   apply a LoRA to the transformer (repeatable; scale default 1)\n"
            "      --lora-lenient        LoRA keys that match nothing are warnings, not errors\n"
            "      --vae-tiling          tiled VAE as diffusers' enable_tiling (less memory; tiles anyway above 1536^2)\n"
            "      --keep-loaded         keep every component loaded between images (with --prompts; default: each\n"
            "                            component is mapped, used and released in turn, one resident at a time)\n"
            "      --stream-layers       stream the transformer's blocks through memory: the next block is read\n"
            "                            ahead, a finished one leaves RAM (the file stays mapped); same image, far\n"
            "                            less resident memory for weights used as stored (any --precision with\n"
            "                            fp32/fp16/bf16/fp8 files, or files from sd3 quantize); --precision int8|int4\n"
            "                            on a float model makes owned copies, which do not shrink\n"
            "  -v, --verbose\n",
            d.width, d.height, d.steps, (double)d.cfg_scale, d.max_sequence_length, (double)d.strength);
}

static void usage(FILE *f) {
    fprintf(f, "usage: sd3 <command> [options]\n"
               "commands:\n"
               "  generate   text-to-image / image-to-image (default)\n"
               "  info       print the parameters stored in a generated PNG\n"
               "  tokenize   print the token ids of a text (-m MODEL --tokenizer clip_l|clip_g|t5 TEXT)\n"
               "  encode     write prompt embeddings to a .safetensors file (-m MODEL -p TEXT -o FILE)\n"
               "  train-lora DreamBooth LoRA fine-tuning of the transformer (sd3 train-lora --help)\n"
               "  bench      time a component on full-size random weights (sd3 bench --help)\n"
               "  quantize   write an int8/int4 copy of a pipeline, component or file (sd3 quantize IN OUT [--t5 int8|int4|keep]\n"
               "             [--precision int8|int4|keep] [--component auto|mmdit|t5])\n"
               "  version    print version and detected CPU features\n"
               "Run 'sd3 generate --help' for the generation options.\n");
}

/* ---- strict number parsing: the whole string, in range, or a one-line error naming the flag ---- */

static long parse_long(const char *flag, const char *s, long lo, long hi) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end) die(2, "%s: '%s' is not an integer", flag, s);
    if (v < lo || v > hi) die(2, "%s: %ld is out of range [%ld, %ld]", flag, v, lo, hi);
    return v;
}

static uint64_t parse_u64(const char *flag, const char *s) {
    char *end;
    errno = 0;
    if (*s == '-') die(2, "%s: '%s' must be a non-negative integer", flag, s);
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end) die(2, "%s: '%s' is not a non-negative integer below 2^64", flag, s);
    return (uint64_t)v;
}

static double parse_double(const char *flag, const char *s) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || fabs(v) > 3.4e38) die(2, "%s: '%s' is not a finite number", flag, s);
    return v;
}

static float parse_float(const char *flag, const char *s) { return (float)parse_double(flag, s); }

/* Comma-separated list of numbers into out (at most max). */
static int parse_float_list(const char *flag, const char *s, float *out, int max) {
    int n = 0;
    char buf[8192];
    if (strlen(s) >= sizeof buf) die(2, "%s: list too long", flag);
    strcpy(buf, s);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        if (n == max) die(2, "%s: more than %d values", flag, max);
        out[n++] = parse_float(flag, tok);
    }
    if (!n) die(2, "%s: empty list", flag);
    return n;
}

static int parse_int_list(const char *flag, const char *s, int *out, int max) {
    float tmp[MAX_SKIP];
    int n = parse_float_list(flag, s, tmp, max < MAX_SKIP ? max : MAX_SKIP);
    for (int i = 0; i < n; i++) {
        if (tmp[i] != floorf(tmp[i]) || tmp[i] < 0 || tmp[i] > 1000) die(2, "%s: '%g' is not a layer index", flag, (double)tmp[i]);
        out[i] = (int)tmp[i];
    }
    return n;
}

/* Read a whole prompt file (trailing newline removed). */
static char *read_prompt_file(const char *path) {
    sd3_err err = {0};
    size_t n;
    char *s = file_read_all(path, 1u << 20, &n, &err);
    if (!s) die(1, "%s", err.msg);
    while (n && (s[n - 1] == '\n' || s[n - 1] == '\r')) s[--n] = 0;
    return s;
}

/* Read a file of prompts, one per line (trailing CR removed, blank lines skipped) into *out (pointers into
 * the returned buffer); at least one, at most max. Errors name the file. */
static char *read_prompt_lines(const char *path, const char ***out, int *n_out) {
    sd3_err err = {0};
    size_t n;
    char *s = file_read_all(path, 16u << 20, &n, &err);
    if (!s) die(1, "--prompts: %s", err.msg);
    if (memchr(s, 0, n)) die(1, "--prompts %s: holds a NUL byte (not a text file of prompts)", path);
    int cap = 16, k = 0;
    const char **v = malloc(sizeof *v * (size_t)cap);
    if (!v) die(1, "out of memory");
    for (char *line = s, *next; line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = 0;
        size_t l = strlen(line);
        while (l && (line[l - 1] == '\r')) line[--l] = 0;
        if (strspn(line, " \t") == l) continue;   /* blank */
        if (k == 100000) die(1, "--prompts %s: more than 100000 prompts", path);
        if (k == cap) {
            cap *= 2;
            const char **nv = realloc(v, sizeof *v * (size_t)cap);
            if (!nv) die(1, "out of memory");
            v = nv;
        }
        v[k++] = line;
    }
    if (!k) die(1, "--prompts %s: no prompts (the file is empty or blank; one prompt per line)", path);
    *out = v;
    *n_out = k;
    return s;
}

/* The output pattern of prompt k (1-based) of a --prompts run: _NNNN before the extension of pat. */
static void numbered_name(const char *pat, int k, char *out, size_t n) {
    const char *dot = strrchr(pat, '.'), *slash = strrchr(pat, '/');
    if (dot && (!slash || dot > slash) && dot != pat && (!slash || dot > slash + 1))
        snprintf(out, n, "%.*s_%04d%s", (int)(dot - pat), pat, k, dot);
    else
        snprintf(out, n, "%s_%04d", pat, k);
}

/* The output must be writable before we spend minutes computing it: its folder exists and accepts files,
 * and the path is not a directory. */
static void check_output_path(const char *flag, const char *path) {
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) die(1, "%s: %s is a directory", flag, path);
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) { if (slash == dir) slash[1] = 0; else *slash = 0; } else strcpy(dir, ".");
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) die(1, "%s: %s: folder %s does not exist", flag, path, dir);
    if (access(dir, W_OK) != 0) die(1, "%s: %s: folder %s is not writable", flag, path, dir);
}

/* Number of "%d" in an output pattern, and whether any other '%' appears (we never pass it to printf). */
static int count_pct_d(const char *s) {
    int n = 0;
    for (const char *p = strstr(s, "%d"); p; p = strstr(p + 2, "%d")) n++;
    return n;
}
static int strchr_other_pct(const char *s) {
    for (const char *p = strchr(s, '%'); p; p = strchr(p + 1, '%'))
        if (p[1] != 'd') return 1;
        else p++;
    return 0;
}

/* The file name of image b: the pattern with %d replaced by b; for a batch without %d, "_b" goes before
 * the extension (out.png -> out_0.png, out_1.png). */
static void output_name(const char *pat, int b, int batch, char *out, size_t n) {
    const char *d = strstr(pat, "%d");
    if (d) {
        snprintf(out, n, "%.*s%d%s", (int)(d - pat), pat, b, d + 2);
    } else if (batch > 1) {
        const char *dot = strrchr(pat, '.'), *slash = strrchr(pat, '/');
        if (dot && (!slash || dot > slash)) snprintf(out, n, "%.*s_%d%s", (int)(dot - pat), pat, b, dot);
        else snprintf(out, n, "%s_%d", pat, b);
    } else {
        snprintf(out, n, "%s", pat);
    }
}

static int progress_cb(int step, int n, double sec, void *user) {
    int tty = *(int *)user;
    double eta = sec * (n - step);
    if (tty) {
        int w = 30, filled = step * w / n;
        fprintf(stderr, "\r  [%.*s%*s] %d/%d  %.2fs/step  ETA %.0fs  ", filled, "##############################", w - filled, "",
                step, n, sec, eta);
        if (step == n) fprintf(stderr, "\n");
    } else {
        fprintf(stderr, "step %d/%d %.2fs eta %.0fs\n", step, n, sec, eta);
    }
    return 0;
}

/* One sd3_generate for the request gp, its images written to pattern pat (output_name) with the generation
 * parameters as PNG text, and the latents to lat_path when given; exits with a one-line error on failure. */
static void generate_one(sd3_ctx *ctx, const sd3_gen_params *gp, const sd3_model_params *mp, int bf16, const char *pat,
                         const char *lat_path, sd3_image *imgs) {
    float *lat = NULL;
    if (sd3_generate(ctx, gp, imgs, lat_path ? &lat : NULL) != SD3_OK) die(1, "%s", sd3_last_error(ctx));
    if (lat_path) {
        sd3_err err = {0};
        int64_t shape[4] = {gp->batch, 16, gp->height / 8, gp->width / 8};
        st_writer *w = st_writer_new();
        int bad = !w || st_writer_add(w, "latents", DT_F32, 4, shape, lat, &err) ||
                  st_writer_meta(w, "format", "sd3c-latents", &err) || st_writer_write(w, lat_path, &err);
        st_writer_free(w);
        if (bad) die(1, "--save-latents: %s", err.msg[0] ? err.msg : "out of memory");
        fprintf(stderr, "wrote %s\n", lat_path);
    }
    free(lat);
    for (int b = 0; b < gp->batch; b++) {
        char path[4096], seedbuf[32], stepbuf[16], cfgbuf[32], shiftbuf[32], wbuf[16], hbuf[16], bbuf[32], strbuf[32];
        output_name(pat, b, gp->batch, path, sizeof path);
        snprintf(seedbuf, sizeof seedbuf, "%llu", (unsigned long long)gp->seed);
        snprintf(stepbuf, sizeof stepbuf, "%d", gp->steps);
        snprintf(cfgbuf, sizeof cfgbuf, "%g", (double)gp->cfg_scale);
        snprintf(shiftbuf, sizeof shiftbuf, "%g", gp->shift > 0 ? (double)gp->shift : 3.0);
        snprintf(wbuf, sizeof wbuf, "%d", gp->width);
        snprintf(hbuf, sizeof hbuf, "%d", gp->height);
        snprintf(bbuf, sizeof bbuf, "%d of %d", b, gp->batch);
        snprintf(strbuf, sizeof strbuf, "%g", gp->strength);
        image_text tx[24];
        int nt = 0;
        tx[nt++] = (image_text){"prompt", gp->prompt};
        if (gp->prompt_2) tx[nt++] = (image_text){"prompt_2", gp->prompt_2};
        if (gp->prompt_3) tx[nt++] = (image_text){"prompt_3", gp->prompt_3};
        tx[nt++] = (image_text){"negative_prompt", gp->negative_prompt ? gp->negative_prompt : ""};
        tx[nt++] = (image_text){"seed", seedbuf};
        tx[nt++] = (image_text){"steps", stepbuf};
        tx[nt++] = (image_text){"cfg_scale", cfgbuf};
        tx[nt++] = (image_text){"shift", shiftbuf};
        tx[nt++] = (image_text){"width", wbuf};
        tx[nt++] = (image_text){"height", hbuf};
        tx[nt++] = (image_text){"batch_index", bbuf};
        tx[nt++] = (image_text){"model", mp->model};
        tx[nt++] = (image_text){"sampler", "flow-match euler (FlowMatchEulerDiscreteScheduler)"};
        if (gp->init_image) tx[nt++] = (image_text){"strength", strbuf};
        if (mp->no_t5) tx[nt++] = (image_text){"no_t5", "true"};
        tx[nt++] = (image_text){"precision", mp->mmdit_quant == 8 ? "int8" : mp->mmdit_quant == 4 ? "int4" : bf16 ? "bf16" : "fp32"};
        if (mp->t5_quant) tx[nt++] = (image_text){"t5", mp->t5_quant == 8 ? "int8" : "int4"};
        char lorabuf[4096] = "";
        for (int k = 0; k < gp->n_loras; k++) {
            size_t l = strlen(lorabuf);
            snprintf(lorabuf + l, sizeof lorabuf - l, "%s%s:%g", k ? ", " : "", gp->loras[k], (double)gp->lora_scales[k]);
        }
        if (gp->n_loras) tx[nt++] = (image_text){"loras", lorabuf};
        char sw[64];
        snprintf(sw, sizeof sw, "sd3c %s", sd3_version());
        tx[nt++] = (image_text){"software", sw};
        image im = {imgs[b].width, imgs[b].height, imgs[b].rgb};
        sd3_err err = {0};
        if (image_write_png(&im, path, tx, nt, &err) != SD3_OK) die(1, "--output: %s", err.msg);
        fprintf(stderr, "wrote %s (seed %llu)\n", path, (unsigned long long)gp->seed);
    }
    for (int b = 0; b < gp->batch; b++) sd3_image_free(&imgs[b]);
}

static int cmd_generate(int argc, char **argv) {
    sd3_model_params mp = sd3_model_params_default();
    sd3_gen_params gp = sd3_gen_params_default();
    const char *out = "output.png", *save_latents = NULL, *prompts_file = NULL;
    int threads = 0, verbose = 0, have_seed = 0, set_w = 0, set_h = 0, bf16 = 0;
    static float sigmas[MAX_SIGMAS];
    static int skip[MAX_SKIP];
    static char lora_paths[64][4096];
    static const char *lora_ptr[64];
    static float lora_scale[64];
    mp.model = "stabilityai/stable-diffusion-3-medium-diffusers";
#define NEXT() (i + 1 < argc ? argv[++i] : (die(2, "%s: missing value", a), (char *)NULL))
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage_generate(stdout); return 0; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) mp.model = NEXT();
        else if (!strcmp(a, "--clip-l")) mp.clip_l = NEXT();
        else if (!strcmp(a, "--clip-g")) mp.clip_g = NEXT();
        else if (!strcmp(a, "--t5xxl")) mp.t5xxl = NEXT();
        else if (!strcmp(a, "--vae")) mp.vae = NEXT();
        else if (!strcmp(a, "--config")) mp.config = NEXT();
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) gp.prompt = NEXT();
        else if (!strcmp(a, "-f") || !strcmp(a, "--prompt-file")) gp.prompt = read_prompt_file(NEXT());
        else if (!strcmp(a, "--prompt-2")) gp.prompt_2 = NEXT();
        else if (!strcmp(a, "--prompt-3")) gp.prompt_3 = NEXT();
        else if (!strcmp(a, "-n") || !strcmp(a, "--negative-prompt")) gp.negative_prompt = NEXT();
        else if (!strcmp(a, "--negative-prompt-2")) gp.negative_prompt_2 = NEXT();
        else if (!strcmp(a, "--negative-prompt-3")) gp.negative_prompt_3 = NEXT();
        else if (!strcmp(a, "-W") || !strcmp(a, "--width")) { gp.width = (int)parse_long(a, NEXT(), 1, 100000); set_w = 1; }
        else if (!strcmp(a, "-H") || !strcmp(a, "--height")) { gp.height = (int)parse_long(a, NEXT(), 1, 100000); set_h = 1; }
        else if (!strcmp(a, "--steps")) gp.steps = (int)parse_long(a, NEXT(), 1, 10000);
        else if (!strcmp(a, "--cfg")) gp.cfg_scale = parse_float(a, NEXT());
        else if (!strcmp(a, "--shift")) gp.shift = parse_float(a, NEXT());
        else if (!strcmp(a, "--sigmas")) { gp.n_sigmas = parse_float_list(a, NEXT(), sigmas, MAX_SIGMAS); gp.sigmas = sigmas; }
        else if (!strcmp(a, "--seed")) { gp.seed = parse_u64(a, NEXT()); have_seed = 1; }
        else if (!strcmp(a, "--batch")) gp.batch = (int)parse_long(a, NEXT(), 1, 64);
        else if (!strcmp(a, "--clip-skip")) gp.clip_skip = (int)parse_long(a, NEXT(), 0, 10);
        else if (!strcmp(a, "--max-sequence-length")) gp.max_sequence_length = (int)parse_long(a, NEXT(), 1, 512);
        else if (!strcmp(a, "--slg-scale")) gp.slg_scale = parse_float(a, NEXT());
        else if (!strcmp(a, "--skip-layers")) { gp.n_skip_layers = parse_int_list(a, NEXT(), skip, MAX_SKIP); gp.skip_layers = skip; }
        else if (!strcmp(a, "--slg-start")) gp.slg_start = parse_float(a, NEXT());
        else if (!strcmp(a, "--slg-stop")) gp.slg_stop = parse_float(a, NEXT());
        else if (!strcmp(a, "--init-img")) gp.init_image = NEXT();
        else if (!strcmp(a, "--strength")) gp.strength = parse_double(a, NEXT());
        else if (!strcmp(a, "--mask")) gp.mask_image = NEXT();
        else if (!strcmp(a, "--latents")) gp.latents_in = NEXT();
        else if (!strcmp(a, "--save-latents")) save_latents = NEXT();
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) out = NEXT();
        else if (!strcmp(a, "--threads")) threads = (int)parse_long(a, NEXT(), 1, 256);
        else if (!strcmp(a, "--lora")) {
            if (gp.n_loras == 64) die(2, "--lora: at most 64 LoRAs");
            sd3_err err = {0};
            if (lora_parse_spec(NEXT(), lora_paths[gp.n_loras], sizeof lora_paths[0], &lora_scale[gp.n_loras], &err) != SD3_OK)
                die(2, "--lora: %s", err.msg);
            lora_ptr[gp.n_loras] = lora_paths[gp.n_loras];
            gp.n_loras++;
            gp.loras = lora_ptr;
            gp.lora_scales = lora_scale;
        } else if (!strcmp(a, "--lora-lenient")) gp.lora_lenient = 1;
        else if (!strcmp(a, "--vae-tiling")) gp.vae_tiling = 1;
        else if (!strcmp(a, "--prompts")) prompts_file = NEXT();
        else if (!strcmp(a, "--keep-loaded")) mp.keep_loaded = 1;
        else if (!strcmp(a, "--stream-layers")) mp.stream_layers = 1;
        else if (!strcmp(a, "--no-t5")) mp.no_t5 = 1;
        else if (!strcmp(a, "--precision")) {
            const char *v = NEXT();
            if (!strcmp(v, "fp32")) bf16 = 0, mp.mmdit_quant = 0;
            else if (!strcmp(v, "bf16")) bf16 = 1, mp.mmdit_quant = 0;
            else if (!strcmp(v, "int8")) mp.mmdit_quant = 8;
            else if (!strcmp(v, "int4")) mp.mmdit_quant = 4;
            else die(2, "--precision: '%s' is not one of fp32, bf16, int8, int4", v);
        } else if (!strcmp(a, "--t5")) {
            const char *v = NEXT();
            if (!strcmp(v, "fp") || !strcmp(v, "stored")) mp.t5_quant = 0;
            else if (!strcmp(v, "int8")) mp.t5_quant = 8;
            else if (!strcmp(v, "int4")) mp.t5_quant = 4;
            else die(2, "--t5: '%s' is not one of stored, int8, int4", v);
        }
        else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) verbose = 1;
        else die(2, "unknown option '%s' (see sd3 generate --help)", a);
    }
#undef NEXT
    if (prompts_file && gp.prompt) die(2, "--prompts: give either -p/-f or --prompts, not both");
    const char **prompts = &gp.prompt;
    int n_prompts = 1;
    char *prompts_buf = NULL;
    if (prompts_file) {
        prompts_buf = read_prompt_lines(prompts_file, &prompts, &n_prompts);
        gp.prompt = prompts[0];
        mp.keep_loaded = 1;   /* one load, many images */
    }
    if (!gp.prompt) die(2, "no prompt: give -p TEXT, -f FILE or --prompts FILE");
    if (!have_seed) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        gp.seed = ((uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ (uint64_t)getpid()) & 0xffffffffu;
    }
    if (gp.init_image) {
        /* read the init image now: a bad one is reported before any work; without -W/-H its size is used,
         * with them the pipeline resizes it (diffusers' LANCZOS resize, pipeline.c) */
        image im;
        sd3_err err = {0};
        if (image_load(&im, gp.init_image, &err) != SD3_OK) die(1, "--init-img: %s", err.msg);
        int iw = im.w, ih = im.h;
        image_free(&im);
        if (!set_w) gp.width = iw;
        if (!set_h) gp.height = ih;
        if ((!set_w && iw % 16) || (!set_h && ih % 16))
            die(2, "--init-img: %s is %dx%d, not multiples of 16: give -W and -H to resize it (e.g. -W %d -H %d)", gp.init_image,
                iw, ih, gp.width >= 16 ? gp.width / 16 * 16 : 16, gp.height >= 16 ? gp.height / 16 * 16 : 16);
    }
    if (count_pct_d(out) > 1 || strchr_other_pct(out)) die(2, "--output: only one %%d (the batch index) may appear in '%s'", out);
    char first[4096], pat[4096], lat_path[4096];
    if (prompts_file) numbered_name(out, 1, pat, sizeof pat);
    else snprintf(pat, sizeof pat, "%s", out);
    output_name(pat, 0, gp.batch, first, sizeof first);
    check_output_path("--output", first);
    if (save_latents) {
        if (prompts_file) numbered_name(save_latents, 1, lat_path, sizeof lat_path);
        else snprintf(lat_path, sizeof lat_path, "%s", save_latents);
        check_output_path("--save-latents", lat_path);
    }

    sd3_ctx_params cp = sd3_ctx_params_default();
    cp.n_threads = threads;
    cp.bf16 = bf16;
    if (verbose) sd3_set_log(NULL, NULL, SD3_LOG_INFO);
    sd3_ctx *ctx = sd3_ctx_create(&cp);
    if (!ctx) die(1, "out of memory");
    if (sd3_gen_params_check(ctx, &gp) != SD3_OK) die(1, "%s", sd3_last_error(ctx));
    int tty = isatty(2);
    gp.progress = progress_cb;
    gp.progress_user = &tty;
    if (sd3_load(ctx, &mp) != SD3_OK) die(1, "%s", sd3_last_error(ctx));
    if (verbose) fprintf(stderr, "seed %llu\n", (unsigned long long)gp.seed);
    sd3_image *imgs = calloc((size_t)gp.batch, sizeof *imgs);
    if (!imgs) die(1, "out of memory");
    double t0 = sd3_time();
    for (int k = 0; k < n_prompts; k++) {
        gp.prompt = prompts[k];
        if (prompts_file) {
            numbered_name(out, k + 1, pat, sizeof pat);
            if (save_latents) numbered_name(save_latents, k + 1, lat_path, sizeof lat_path);
            fprintf(stderr, "prompt %d/%d: %s\n", k + 1, n_prompts, gp.prompt);
        }
        generate_one(ctx, &gp, &mp, bf16, pat, save_latents ? lat_path : NULL, imgs);
    }
    if (verbose) fprintf(stderr, "total %.1fs, peak RSS %.0f MB\n", sd3_time() - t0, (double)sd3_peak_rss() / 1e6);
    free(imgs);
    free(prompts_buf);
    if (prompts_file) free((void *)prompts);
    sd3_ctx_free(ctx);
    return 0;
}

/* Resolve -m for the text subcommands (folder, single file or HF cache repo id) with the component
 * overrides and config folder. */
static model_store *open_model_or_die(const char *model, const char *clip_l, const char *clip_g, const char *t5xxl,
                                      const char *config) {
    model_store *ms = NULL;
    sd3_err err = {0};
    if (ms_open(&ms, model, &err) != SD3_OK) die(1, "%s", err.msg);
    if (comp_set_overrides(ms, clip_l, clip_g, t5xxl, NULL, &err) != SD3_OK ||
        (config && comp_set_config_dir(ms, config, &err) != SD3_OK))
        die(1, "%s", err.msg);
    return ms;
}

/* sd3 tokenize -m MODEL --tokenizer clip_l|clip_g|t5 [--max-length N] "text": print the ids as the
 * pipeline feeds them (padded), one line, space separated. */
static int cmd_tokenize(int argc, char **argv) {
    const char *model = "stabilityai/stable-diffusion-3-medium-diffusers", *which = "clip_l", *text = NULL;
    int max_len = 256, full = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if ((!strcmp(a, "-m") || !strcmp(a, "--model")) && i + 1 < argc) model = argv[++i];
        else if (!strcmp(a, "--tokenizer") && i + 1 < argc) which = argv[++i];
        else if (!strcmp(a, "--max-length") && i + 1 < argc) max_len = (int)parse_long(a, argv[++i], 1, 4096);
        else if (!strcmp(a, "--no-padding")) full = 1;
        else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            printf("usage: sd3 tokenize [-m MODEL] [--tokenizer clip_l|clip_g|t5] [--max-length N (t5)] [--no-padding] TEXT\n");
            return 0;
        } else if (a[0] == '-' && a[1]) die(2, "tokenize: unknown option '%s'", a);
        else if (!text) text = a;
        else die(2, "tokenize: give the text as one argument (quote it)");
    }
    if (!text) die(2, "tokenize: no text");
    const char *folder = !strcmp(which, "clip_l") ? "tokenizer" : !strcmp(which, "clip_g") ? "tokenizer_2"
                       : !strcmp(which, "t5") ? "tokenizer_3" : NULL;
    if (!folder) die(2, "--tokenizer: '%s' is not one of clip_l, clip_g, t5", which);
    model_store *ms = open_model_or_die(model, NULL, NULL, NULL, NULL);
    sd3_err err = {0};
    char dir[4096];
    te_role role = !strcmp(which, "clip_l") ? TE_ROLE_CLIP_L : !strcmp(which, "clip_g") ? TE_ROLE_CLIP_G : TE_ROLE_T5;
    if (comp_tokenizer_dir(ms, role, dir, sizeof dir, &err) != SD3_OK) die(1, "%s", err.msg);
    int64_t *ids = NULL;
    size_t n = 0;
    if (!strcmp(folder, "tokenizer_3")) {
        t5_tok tok;
        if (t5_tok_load(&tok, dir, &err) != SD3_OK) die(1, "%s", err.msg);
        if (full) {
            if (t5_tok_encode_full(&tok, text, strlen(text), &ids, &n, &err) != SD3_OK) die(1, "%s", err.msg);
        } else {
            ids = malloc(sizeof(int64_t) * 2 * (size_t)max_len);
            if (!ids) die(1, "out of memory");
            if (t5_tok_encode(&tok, text, max_len, ids, ids + max_len, &err) != SD3_OK) die(1, "%s", err.msg);
            n = (size_t)max_len;
        }
        t5_tok_free(&tok);
    } else {
        clip_tok tok;
        if (clip_tok_load(&tok, dir, &err) != SD3_OK) die(1, "%s", err.msg);
        if (full) {
            if (clip_tok_encode_full(&tok, text, strlen(text), &ids, &n, &err) != SD3_OK) die(1, "%s", err.msg);
        } else {
            ids = malloc(sizeof(int64_t) * 2 * CLIP_TOK_LEN);
            if (!ids) die(1, "out of memory");
            if (clip_tok_encode(&tok, text, ids, ids + CLIP_TOK_LEN, &err) != SD3_OK) die(1, "%s", err.msg);
            n = CLIP_TOK_LEN;
        }
        clip_tok_free(&tok);
    }
    for (size_t i = 0; i < n; i++) printf(i ? " %lld" : "%lld", (long long)ids[i]);
    printf("\n");
    free(ids);
    ms_close(ms);
    return 0;
}

/* sd3 encode -m MODEL -p PROMPT [-n NEG] ... -o cond.safetensors: diffusers' encode_prompt, written as
 * prompt_embeds / pooled_prompt_embeds (+ negative_*), for users who cache prompt embeddings. */
static int cmd_encode(int argc, char **argv) {
    const char *model = "stabilityai/stable-diffusion-3-medium-diffusers", *out = NULL;
    const char *clip_l = NULL, *clip_g = NULL, *t5xxl = NULL, *config = NULL;
    const char *p1 = NULL, *p2 = NULL, *p3 = NULL, *n1 = NULL, *n2 = NULL, *n3 = NULL;
    encode_req r;
    memset(&r, 0, sizeof r);
    r.n_prompts = 1;
    r.num_images_per_prompt = 1;
    r.cfg = 1;
    r.max_sequence_length = 256;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
#define ARG() (i + 1 < argc ? argv[++i] : (die(2, "%s: missing value", a), (char *)NULL))
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) model = ARG();
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) p1 = ARG();
        else if (!strcmp(a, "-f") || !strcmp(a, "--prompt-file")) p1 = read_prompt_file(ARG());
        else if (!strcmp(a, "--prompt-2")) p2 = ARG();
        else if (!strcmp(a, "--prompt-3")) p3 = ARG();
        else if (!strcmp(a, "-n") || !strcmp(a, "--negative-prompt")) n1 = ARG();
        else if (!strcmp(a, "--negative-prompt-2")) n2 = ARG();
        else if (!strcmp(a, "--negative-prompt-3")) n3 = ARG();
        else if (!strcmp(a, "--clip-skip")) r.clip_skip = (int)parse_long(a, ARG(), 0, 10);
        else if (!strcmp(a, "--max-sequence-length")) r.max_sequence_length = (int)parse_long(a, ARG(), 1, 512);
        else if (!strcmp(a, "--no-t5")) r.no_t5 = 1;
        else if (!strcmp(a, "--no-negative")) r.cfg = 0;
        else if (!strcmp(a, "--clip-l")) clip_l = ARG();
        else if (!strcmp(a, "--clip-g")) clip_g = ARG();
        else if (!strcmp(a, "--t5xxl")) t5xxl = ARG();
        else if (!strcmp(a, "--config")) config = ARG();
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) out = ARG();
        else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            printf("usage: sd3 encode [-m MODEL] -p PROMPT [--prompt-2 T] [--prompt-3 T] [-n NEG] [--negative-prompt-2/3 T]\n"
                   "                  [--clip-skip N] [--max-sequence-length N] [--no-t5] [--no-negative]\n"
                   "                  [--clip-l F --clip-g F --t5xxl F --config DIR] -o cond.safetensors\n");
            return 0;
        } else die(2, "encode: unknown option '%s'", a);
#undef ARG
    }
    if (!p1) die(2, "encode: no prompt: give -p TEXT or -f FILE");
    if (!out) die(2, "encode: no output: give -o FILE.safetensors");
    check_output_path("--output", out);
    const char *a1[1] = {p1}, *a2[1] = {p2}, *a3[1] = {p3}, *b1[1] = {n1}, *b2[1] = {n2}, *b3[1] = {n3};
    r.prompt = a1;
    r.prompt_2 = a2;
    r.prompt_3 = a3;
    r.negative = b1;
    r.negative_2 = b2;
    r.negative_3 = b3;
    model_store *ms = open_model_or_die(model, clip_l, clip_g, t5xxl, config);
    sd3_err err = {0};
    encode_out o;
    if (encode_prompt(ms, &r, &o, &err) != SD3_OK) die(1, "%s", err.msg);
    st_writer *w = st_writer_new();
    int64_t se[3] = {o.B, o.S, o.J}, sp[2] = {o.B, o.P};
    int bad = !w || st_writer_add(w, "prompt_embeds", DT_F32, 3, se, o.pe, &err) ||
              st_writer_add(w, "pooled_prompt_embeds", DT_F32, 2, sp, o.pooled, &err) ||
              (r.cfg && (st_writer_add(w, "negative_prompt_embeds", DT_F32, 3, se, o.npe, &err) ||
                         st_writer_add(w, "negative_pooled_prompt_embeds", DT_F32, 2, sp, o.npooled, &err))) ||
              st_writer_meta(w, "prompt", p1, &err) || st_writer_meta(w, "model", model, &err) || st_writer_write(w, out, &err);
    st_writer_free(w);
    if (bad) die(1, "%s", err.msg[0] ? err.msg : "out of memory");
    encode_out_free(&o);
    ms_close(ms);
    fprintf(stderr, "wrote %s (prompt_embeds [%d, %d, %d], pooled [%d, %d])\n", out, (int)se[0], (int)se[1], (int)se[2],
            (int)sp[0], (int)sp[1]);
    return 0;
}

static void print_text(const char *key, const char *value, void *user) {
    (void)user;
    printf("%s: %s\n", key, value);
}

static int cmd_info(int argc, char **argv) {
    if (argc != 1) die(2, "usage: sd3 info IMAGE.png");
    sd3_err err = {0};
    if (image_read_png_text(argv[0], print_text, NULL, &err) != SD3_OK) die(1, "%s", err.msg);
    return 0;
}

int main(int argc, char **argv) {
    const char *cmd = argc > 1 ? argv[1] : "generate";
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) { usage(stdout); return 0; }
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("sd3c %s (cpu: %s)\n", sd3_version(), sd3_cpu_features());
        return 0;
    }
    if (!strcmp(cmd, "info")) return cmd_info(argc - 2, argv + 2);
    if (!strcmp(cmd, "tokenize")) return cmd_tokenize(argc - 2, argv + 2);
    if (!strcmp(cmd, "train-lora")) return sd3_cmd_train_lora(argc - 2, argv + 2);
    if (!strcmp(cmd, "bench")) return sd3_cmd_bench(argc - 2, argv + 2);
    if (!strcmp(cmd, "quantize")) return sd3_cmd_quantize(argc - 2, argv + 2);
    if (!strcmp(cmd, "encode")) return cmd_encode(argc - 2, argv + 2);
    if (!strcmp(cmd, "generate")) return cmd_generate(argc - 2, argv + 2);
    if (cmd[0] == '-') return cmd_generate(argc - 1, argv + 1);
    fprintf(stderr, "%s: error: unknown command '%s'\n", prog, cmd);
    usage(stderr);
    return 2;
}

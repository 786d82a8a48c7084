/* test_single_file.c — generating from single-file checkpoints and component overrides (components.h,
 * te_single.h) on the tiny golden pipeline, against the diffusers-folder run of the same request:
 *   - single files built here with st_writer: the tiny MMDiT + VAE (original keys, from
 *     tiny-sd3-single-file/sd3_tiny.safetensors) and the tiny text encoders under text_encoders.*.transformer.,
 *     once with the T5 in F32 and once quantised to F8_E4M3 (round to nearest even, saturating at 448);
 *   - the reference is the diffusers folder with CLIP-L's text_projection replaced by the identity (what
 *     diffusers' single-file loader does for SD3's CLIP-L; components.h), made here as a folder of links;
 *   - runs through pipe_generate and through sd3_load / sd3_generate, with --clip-l/--clip-g/--t5xxl bare files
 *     next to an MMDiT+VAE single file, a --vae override, no T5, and the error cases;
 *   - config inference from shapes (T5 exactly, a real-size CLIP-L header), the shipped tokenizers, and
 *     F8_E4M3 weights through k_linear against a double-precision product of the decoded weights.
 * The tiny models' head sizes cannot be seen in their weights, so the runs pass the golden folder as the
 * config folder (ms->ov.config_dir). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "io/json_util.h"
#include "io/safetensors.h"
#include "kernels/kernels.h"
#include "pipeline/components.h"
#include "pipeline/generate.h"
#include "pipeline/pipeline.h"
#include "text/clip_tok.h"
#include "test.h"

static char g_root[PATH_MAX], g_tiny[PATH_MAX + 16], g_tmp[256];

/* ---- fp8 e4m3fn, written independently of src/core/half.c ---------------------------------------- */

/* f32 -> e4m3fn: round to nearest, ties to even; |x| >= 448 saturates to 448 (0x7e); NaN -> 0x7f. */
static uint8_t f32_to_e4m3(float x) {
    uint8_t sign = signbit(x) ? 0x80 : 0;
    if (isnan(x)) return 0x7f;
    double a = fabs((double)x);
    if (a >= 448.0) return sign | 0x7e;
    if (a < ldexp(1.0, -6)) {                    /* subnormal: m * 2^-9 */
        double m = nearbyint(a * 512.0);         /* default rounding: half to even */
        return sign | (uint8_t)m;                /* m == 8 is code 0x08 = 2^-6, the first normal */
    }
    int e;
    frexp(a, &e);
    e -= 1;                                      /* a = (1 + f) 2^e */
    double q = nearbyint((a / ldexp(1.0, e) - 1.0) * 8.0);
    if (q == 8.0) { q = 0; e++; }
    int code = ((e + 7) << 3) | (int)q;
    if (code > 0x7e) code = 0x7e;
    return sign | (uint8_t)code;
}

/* e4m3fn -> double. */
static double e4m3_value(uint8_t b) {
    int e = (b >> 3) & 15, m = b & 7;
    double v = e == 0 ? ldexp(m, -9) : ldexp(1.0 + m / 8.0, e - 7);
    return (b & 0x80) ? -v : v;
}

/* ---- helpers ---------------------------------------------------------------------------------------- */

static float *tensor_f32(const st_entry *e) {
    tensor t;
    sd3_err err = {0};
    if (st_entry_tensor(NULL, e, &t, &err)) return NULL;
    int64_t n = tensor_numel(&t);
    float *o = malloc(sizeof(float) * (size_t)(n ? n : 1));
    tensor_to_f32(&t, 0, n, o);
    return o;
}

/* Add every tensor of f to w under prefix; with fp8, float tensors are quantised into bufs (kept). */
static int add_all(st_writer *w, const st_file *f, const char *prefix, int fp8, int dequant, void **bufs, int *nb,
                   const char *skip) {
    sd3_err err = {0};
    for (int i = 0; i < f->n; i++) {
        const st_entry *e = &f->entries[i];
        if (skip && !strcmp(e->name, skip)) continue;
        char name[512];
        snprintf(name, sizeof name, "%s%s", prefix, e->name);
        if (fp8 || dequant) {
            float *v = tensor_f32(e);
            int64_t n = 1;
            for (int d = 0; d < e->ndim; d++) n *= e->shape[d];
            if (fp8) {
                uint8_t *q = malloc((size_t)(n ? n : 1));
                for (int64_t k = 0; k < n; k++) q[k] = f32_to_e4m3(v[k]);
                free(v);
                bufs[(*nb)++] = q;
                if (st_writer_add(w, name, DT_F8_E4M3, e->ndim, e->shape, q, &err)) { printf("%s\n", err.msg); return 0; }
            } else {
                for (int64_t k = 0; k < n; k++) v[k] = (float)e4m3_value(f32_to_e4m3(v[k]));
                bufs[(*nb)++] = v;
                if (st_writer_add(w, name, DT_F32, e->ndim, e->shape, v, &err)) { printf("%s\n", err.msg); return 0; }
            }
        } else if (st_writer_add(w, name, e->dt, e->ndim, e->shape, e->data, &err)) {
            printf("%s\n", err.msg);
            return 0;
        }
    }
    return 1;
}

static st_file *open_or_die(const char *path) {
    st_file *f = NULL;
    sd3_err err = {0};
    if (st_open(&f, path, &err)) { printf("cannot open %s: %s\n", path, err.msg); exit(2); }
    return f;
}

/* Write a single file: the tiny MMDiT+VAE (unless !with_dit) plus, under text_encoders.*.transformer.,
 * the text encoders asked for (t5: 0 none, 1 as is, 2 fp8). */
static int write_single(const char *out, int with_dit, int clip, int t5) {
    char p[PATH_MAX + 64];
    st_writer *w = st_writer_new();
    st_file *f[4] = {0};
    void *bufs[512];
    int nb = 0, ok = 1;
    sd3_err err = {0};
    if (with_dit) {
        snprintf(p, sizeof p, "%s/tiny-sd3-single-file/sd3_tiny.safetensors", g_root);
        f[0] = open_or_die(p);
        ok &= add_all(w, f[0], "", 0, 0, bufs, &nb, NULL);
    }
    if (clip) {
        snprintf(p, sizeof p, "%s/text_encoder/model.safetensors", g_tiny);
        f[1] = open_or_die(p);
        ok &= add_all(w, f[1], "text_encoders.clip_l.transformer.", 0, 0, bufs, &nb, NULL);
        snprintf(p, sizeof p, "%s/text_encoder_2/model.safetensors", g_tiny);
        f[2] = open_or_die(p);
        ok &= add_all(w, f[2], "text_encoders.clip_g.transformer.", 0, 0, bufs, &nb, NULL);
    }
    if (t5) {
        snprintf(p, sizeof p, "%s/text_encoder_3/model.safetensors", g_tiny);
        f[3] = open_or_die(p);
        ok &= add_all(w, f[3], "text_encoders.t5xxl.transformer.", t5 == 2, 0, bufs, &nb, NULL);
    }
    if (ok && st_writer_write(w, out, &err)) { printf("%s: %s\n", out, err.msg); ok = 0; }
    st_writer_free(w);
    for (int i = 0; i < 4; i++) if (f[i]) st_close(f[i]);
    for (int i = 0; i < nb; i++) free(bufs[i]);
    return ok;
}

/* A bare encoder file from one tiny folder: under prefix, quantised (fp8) or not. */
static int write_bare(const char *out, const char *folder, const char *prefix, int fp8, int dequant) {
    char p[PATH_MAX + 64];
    snprintf(p, sizeof p, "%s/%s/model.safetensors", g_tiny, folder);
    st_file *f = open_or_die(p);
    st_writer *w = st_writer_new();
    void *bufs[512];
    int nb = 0;
    sd3_err err = {0};
    int ok = add_all(w, f, prefix, fp8, dequant, bufs, &nb, NULL);
    if (ok && st_writer_write(w, out, &err)) { printf("%s: %s\n", out, err.msg); ok = 0; }
    st_writer_free(w);
    st_close(f);
    for (int i = 0; i < nb; i++) free(bufs[i]);
    return ok;
}

/* A diffusers folder of links to the tiny pipeline, with text_encoder's text_projection = eye and
 * (dequant) text_encoder_3 replaced by its fp8-rounded F32 weights. */
static int make_ref_folder(const char *dir, int dequant) {
    char p[PATH_MAX + 64], q[PATH_MAX + 64];
    mkdir(dir, 0755);
    const char *links[] = {"model_index.json", "scheduler", "tokenizer", "tokenizer_2", "tokenizer_3", "text_encoder_2", "transformer", "vae"};
    for (size_t i = 0; i < sizeof links / sizeof links[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", g_tiny, links[i]);
        snprintf(q, sizeof q, "%s/%s", dir, links[i]);
        if (symlink(p, q)) { perror(q); return 0; }
    }
    snprintf(q, sizeof q, "%s/text_encoder_3", dir);
    if (dequant) {
        mkdir(q, 0755);
        snprintf(p, sizeof p, "%s/text_encoder_3/config.json", g_tiny);
        snprintf(q, sizeof q, "%s/text_encoder_3/config.json", dir);
        if (symlink(p, q)) return 0;
        snprintf(q, sizeof q, "%s/text_encoder_3/model.safetensors", dir);
        if (!write_bare(q, "text_encoder_3", "", 0, 1)) return 0;
    } else {
        snprintf(p, sizeof p, "%s/text_encoder_3", g_tiny);
        if (symlink(p, q)) return 0;
    }
    snprintf(q, sizeof q, "%s/text_encoder", dir);
    mkdir(q, 0755);
    snprintf(p, sizeof p, "%s/text_encoder/config.json", g_tiny);
    snprintf(q, sizeof q, "%s/text_encoder/config.json", dir);
    if (symlink(p, q)) return 0;
    snprintf(p, sizeof p, "%s/text_encoder/model.safetensors", g_tiny);
    st_file *f = open_or_die(p);
    st_writer *w = st_writer_new();
    void *bufs[4];
    int nb = 0;
    int ok = add_all(w, f, "", 0, 0, bufs, &nb, "text_projection.weight");
    const st_entry *e = st_find(f, "text_projection.weight");
    int64_t C = e->shape[1];
    float *eye = calloc((size_t)(C * C), sizeof(float));
    for (int64_t i = 0; i < C; i++) eye[i * C + i] = 1.0f;
    sd3_err err = {0};
    int64_t shape[2] = {C, C};
    ok = ok && !st_writer_add(w, "text_projection.weight", DT_F32, 2, shape, eye, &err);
    snprintf(q, sizeof q, "%s/text_encoder/model.safetensors", dir);
    ok = ok && !st_writer_write(w, q, &err);
    if (!ok) printf("%s: %s\n", q, err.msg);
    st_writer_free(w);
    st_close(f);
    free(eye);
    return ok;
}

/* ---- runs ------------------------------------------------------------------------------------------- */

typedef struct run_out {
    sd3_status s;
    char msg[1024];
    pipe_out o;
} run_out;

/* The golden t2i_4steps_cfg7 request (prompt "a photo of a cat", 64x64, 4 steps, cfg 7, seed 0). */
static void run_pipe(const char *model, const char *config_dir, const char *ov[4], int no_t5, run_out *r) {
    memset(r, 0, sizeof *r);
    model_store *ms;
    sd3_err err = {0};
    if ((r->s = ms_open(&ms, model, &err))) { snprintf(r->msg, sizeof r->msg, "%s", err.msg); return; }
    if ((r->s = comp_set_config_dir(ms, config_dir, &err))) {
        snprintf(r->msg, sizeof r->msg, "%s", err.msg);
        ms_close(ms);
        return;
    }
    if ((r->s = comp_set_overrides(ms, ov ? ov[0] : NULL, ov ? ov[1] : NULL, ov ? ov[2] : NULL, ov ? ov[3] : NULL, &err))) {
        snprintf(r->msg, sizeof r->msg, "%s", err.msg);
        ms_close(ms);
        return;
    }
    const char *prompt[1] = {"a photo of a cat"};
    pipe_req q;
    memset(&q, 0, sizeof q);
    q.text.n_prompts = 1;
    q.text.prompt = prompt;
    q.text.num_images_per_prompt = 1;
    q.text.max_sequence_length = 256;
    q.text.no_t5 = no_t5;
    q.width = q.height = 64;
    q.steps = 4;
    q.cfg_scale = 7.0f;
    q.seed = 0;
    q.decode = 1;
    r->s = pipe_generate(ms, &q, NULL, &r->o, &err);
    if (r->s) snprintf(r->msg, sizeof r->msg, "%s", err.msg);
    ms_close(ms);
}

static double max_diff(const float *a, const float *b, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= m)) m = d;  /* NaN counts as infinitely far */
    }
    return m;
}

/* Compare a run with the reference: latents and decoded image within tol. Returns the latent diff. */
static double compare(const char *what, const run_out *r, const run_out *ref, double tol) {
    CHECK(r->s == SD3_OK, "%s: %s", what, r->msg);
    if (r->s || ref->s) return INFINITY;
    int64_t nl = (int64_t)ref->o.B * ref->o.C * ref->o.h * ref->o.w, ni = (int64_t)ref->o.B * 3 * 64 * 64;
    CHECK(r->o.B == ref->o.B && r->o.h == ref->o.h && r->o.w == ref->o.w, "%s: shape", what);
    double dl = max_diff(r->o.latents, ref->o.latents, nl), di = max_diff(r->o.decoded, ref->o.decoded, ni);
    printf("  %-58s latents max|diff| %.3g, image %.3g (bound %.3g)\n", what, dl, di, tol);
    CHECK(dl <= tol && di <= tol * 4, "%s: latents %.3g image %.3g > %.3g", what, dl, di, tol);
    return dl;
}

/* sd3_load + sd3_generate with the golden request; latents into *lat (malloc'd). */
static sd3_status run_api(const sd3_model_params *mp, const char *config_dir, float **lat, char *msg, size_t n) {
    sd3_ctx *ctx = sd3_ctx_create(NULL);
    *lat = NULL;
    sd3_status s = sd3_load(ctx, mp);
    if (!s) {
        sd3_err e = {0};
        if (config_dir && comp_set_config_dir(ctx->ms, config_dir, &e)) { snprintf(msg, n, "%s", e.msg); sd3_ctx_free(ctx); return e.status; }
        sd3_gen_params p = sd3_gen_params_default();
        p.prompt = "a photo of a cat";
        p.width = p.height = 64;
        p.steps = 4;
        p.cfg_scale = 7.0f;
        p.seed = 0;
        sd3_image img[1];
        s = sd3_generate(ctx, &p, img, lat);
        if (!s) sd3_image_free(&img[0]);
    }
    snprintf(msg, n, "%s", sd3_last_error(ctx));
    sd3_ctx_free(ctx);
    return s;
}

/* ---- tests ------------------------------------------------------------------------------------------ */

static void test_fp8_codec_and_linear(void) {
    /* the quantiser on values whose codes are known from the e4m3fn definition */
    struct { float x; uint8_t code; } kv[] = {
        {0.0f, 0x00}, {1.0f, 0x38}, {-1.0f, 0xb8}, {448.0f, 0x7e}, {1000.0f, 0x7e}, {-1e30f, 0xfe},
        {0.001953125f, 0x01},            /* 2^-9, smallest subnormal */
        {0.0009765625f, 0x00},           /* 2^-10: halfway 0 / 2^-9, ties to even -> 0 */
        {0.0029296875f, 0x02},           /* 1.5 * 2^-9: halfway 1 / 2 -> 2 */
        {1.0625f, 0x38},                 /* halfway 1.0 / 1.125 -> 1.0 (even) */
        {1.1875f, 0x3a},                 /* halfway 1.125 / 1.25 -> 1.25 (even) */
        {240.0f, 0x77},                  /* 1.875 * 2^7 */
        {0.015625f, 0x08},               /* 2^-6, first normal */
    };
    for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++)
        CHECK(f32_to_e4m3(kv[i].x) == kv[i].code, "e4m3(%g) = 0x%02x, expected 0x%02x", kv[i].x, f32_to_e4m3(kv[i].x), kv[i].code);
    /* the library's decoder agrees on every non-NaN code */
    int bad = 0;
    for (int b = 0; b < 256; b++) {
        if ((b & 0x7f) == 0x7f) continue;
        uint8_t u = (uint8_t)b;
        tensor t = {0};
        t.dt = DT_F8_E4M3;
        t.ndim = 1;
        t.shape[0] = 1;
        t.data = &u;
        float v;
        tensor_to_f32(&t, 0, 1, &v);
        bad += (double)v != e4m3_value(u);
    }
    CHECK(bad == 0, "%d e4m3 codes decode differently", bad);

    /* k_linear with F8_E4M3 weights == a double product of the decoded weights */
    const int M = 7, N = 45, K = 333;
    uint8_t *W = malloc((size_t)N * K);
    float *x = malloc(sizeof(float) * M * K), *y = malloc(sizeof(float) * M * N), *bias = malloc(sizeof(float) * N);
    uint64_t st = 12345;
    for (int i = 0; i < N * K; i++) {
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        W[i] = f32_to_e4m3((float)(((double)(st >> 11) / 9007199254740992.0 - 0.5) * 8.0));
    }
    for (int i = 0; i < M * K; i++) x[i] = (float)sin(i * 0.37) * 2.0f;
    for (int i = 0; i < N; i++) bias[i] = (float)cos(i * 0.5);
    tensor tw = {0}, tb = {0};
    tw.dt = DT_F8_E4M3;
    tw.ndim = 2;
    tw.shape[0] = N;
    tw.shape[1] = K;
    tw.data = W;
    tb.dt = DT_F32;
    tb.ndim = 1;
    tb.shape[0] = N;
    tb.data = bias;
    k_linear(y, x, &tw, &tb, M, N, K);
    double worst = 0;
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double acc = bias[n], mag = fabs(bias[n]);
            for (int k = 0; k < K; k++) {
                acc += (double)x[m * K + k] * e4m3_value(W[n * K + k]);
                mag += fabs((double)x[m * K + k] * e4m3_value(W[n * K + k]));
            }
            double e = fabs(y[m * N + n] - acc) / (mag + 1e-30);
            if (!(e <= worst)) worst = e;
        }
    printf("  k_linear F8_E4M3 (%s): max error / sum|terms| %.3g\n", k_linear_variant(DT_F8_E4M3), worst);
    CHECK(worst < 1e-6, "k_linear with F8_E4M3 weights: relative error %.3g", worst);
    free(W);
    free(x);
    free(y);
    free(bias);
}

/* Config inference: T5 exactly (every value is visible), CLIP on a real-size CLIP-L header. */
static void test_infer(void) {
    char p[PATH_MAX + 64];
    sd3_err err = {0};
    snprintf(p, sizeof p, "%s/text_encoder_3/model.safetensors", g_tiny);
    weights w;
    if (weights_open_file(&w, p, &err)) { CHECK(0, "%s", err.msg); return; }
    cJSON *j = te_t5_config_infer(&w, p, &err);
    snprintf(p, sizeof p, "%s/text_encoder_3/config.json", g_tiny);
    cJSON *ref = json_load_file(p, &err);
    CHECK(j && ref, "%s", err.msg);
    const char *keys[] = {"d_model", "d_kv", "num_heads", "d_ff", "num_layers", "vocab_size", "relative_attention_num_buckets",
                          "relative_attention_max_distance"};
    for (size_t i = 0; j && ref && i < sizeof keys / sizeof keys[0]; i++)
        CHECK(json_int(j, keys[i], -1) == json_int(ref, keys[i], -2), "T5 %s inferred %d, config %d", keys[i], json_int(j, keys[i], -1),
              json_int(ref, keys[i], -2));
    cJSON_Delete(j);
    cJSON_Delete(ref);
    weights_close(&w);

    /* a CLIP-L shaped header (vocab cut to 8 rows): 12 layers of width 768, 3072 MLP, no projection */
    snprintf(p, sizeof p, "%s/fake_clip_l.safetensors", g_tmp);
    st_writer *sw = st_writer_new();
    uint16_t *z = calloc(3072 * 768, 2);
    int64_t s_tok[2] = {8, 768}, s_pos[2] = {77, 768}, s_fc1[2] = {3072, 768}, s_ln[1] = {768};
    st_writer_add(sw, "te.text_model.embeddings.token_embedding.weight", DT_F16, 2, s_tok, z, &err);
    st_writer_add(sw, "te.text_model.embeddings.position_embedding.weight", DT_F16, 2, s_pos, z, &err);
    st_writer_add(sw, "te.text_model.encoder.layers.0.mlp.fc1.weight", DT_F16, 2, s_fc1, z, &err);
    for (int i = 0; i < 12; i++) {
        char k[128];
        snprintf(k, sizeof k, "te.text_model.encoder.layers.%d.layer_norm1.weight", i);
        st_writer_add(sw, k, DT_F16, 1, s_ln, z, &err);
    }
    CHECK(st_writer_write(sw, p, &err) == SD3_OK, "%s", err.msg);
    st_writer_free(sw);
    free(z);
    st_file *f = open_or_die(p);
    char prefix[256];
    CHECK(te_find(f, TE_ROLE_CLIP_L, prefix, sizeof prefix, &err) == SD3_OK && !strcmp(prefix, "te."), "prefix '%s' %s", prefix, err.msg);
    weights base = {0}, v;
    base.files[0] = f;
    base.n_files = 1;
    snprintf(base.label, sizeof base.label, "%.500s", p);
    weights_view(&v, &base, "te.");
    j = te_clip_config_infer(&v, TE_ROLE_CLIP_L, p, &err);
    CHECK(j != NULL, "%s", err.msg);
    if (j) {
        CHECK(json_int(j, "hidden_size", 0) == 768 && json_int(j, "num_attention_heads", 0) == 12 &&
                  json_int(j, "num_hidden_layers", 0) == 12 && json_int(j, "intermediate_size", 0) == 3072 &&
                  json_int(j, "projection_dim", 0) == 768 && json_int(j, "max_position_embeddings", 0) == 77 &&
                  json_int(j, "eos_token_id", 0) == 2 && !strcmp(json_str(j, "hidden_act", ""), "quick_gelu"),
              "CLIP-L config inferred wrongly");
        cJSON_Delete(j);
    }
    j = te_clip_config_infer(&v, TE_ROLE_CLIP_G, p, &err);
    CHECK(!j && strstr(err.msg, "it is CLIP-L") && strstr(err.msg, "1280") && strstr(err.msg, p), "CLIP-L as CLIP-G: %s", err.msg);
    cJSON_Delete(j);
    CHECK(te_find(f, TE_ROLE_T5, prefix, sizeof prefix, &err) == SD3_ERR_NOT_FOUND && strstr(err.msg, "holds a CLIP"), "%s", err.msg);
    st_close(f);
}

/* The shipped tokenizers: found next to the executable, and CLIG-G's differs by its "!" pad/added token. */
static void test_tokenizers(void) {
    model_store ms;
    memset(&ms, 0, sizeof ms);
    ms.kind = MS_SINGLE_FILE;
    snprintf(ms.path, sizeof ms.path, "x.safetensors");
    char d[MS_PATH_MAX];
    sd3_err err = {0};
    int64_t ids[CLIP_TOK_LEN], mask[CLIP_TOK_LEN];
    for (int g = 0; g < 2; g++) {
        CHECK(comp_tokenizer_dir(&ms, g ? TE_ROLE_CLIP_G : TE_ROLE_CLIP_L, d, sizeof d, &err) == SD3_OK, "%s", err.msg);
        clip_tok t;
        if (clip_tok_load(&t, d, &err)) { CHECK(0, "%s: %s", d, err.msg); continue; }
        clip_tok_encode(&t, "! !! !!!", ids, mask, &err);
        /* golden README: tokenizer_2 "49406 0 0 0 0 0 0 49407" then pad 0; tokenizer "49406 256 748 995 49407" then pad 49407 */
        const int64_t want_g[] = {49406, 0, 0, 0, 0, 0, 0, 49407, 0}, want_l[] = {49406, 256, 748, 995, 49407, 49407};
        const int64_t *want = g ? want_g : want_l;
        int n = g ? 9 : 6, ok = 1;
        for (int i = 0; i < n; i++) ok &= ids[i] == want[i];
        CHECK(ok, "shipped %s tokenizer: '! !! !!!' -> %lld %lld %lld %lld %lld ...", g ? "CLIP-G" : "CLIP-L", (long long)ids[0],
              (long long)ids[1], (long long)ids[2], (long long)ids[3], (long long)ids[4]);
        clip_tok_free(&t);
    }
    CHECK(comp_tokenizer_dir(&ms, TE_ROLE_T5, d, sizeof d, &err) == SD3_OK, "%s", err.msg);
    snprintf(ms.ov.tokenizers, sizeof ms.ov.tokenizers, "%s/nowhere", g_tmp);
    CHECK(comp_tokenizer_dir(&ms, TE_ROLE_T5, d, sizeof d, &err) == SD3_ERR_NOT_FOUND && strstr(err.msg, "SD3_TOKENIZERS"), "%s",
          err.msg);
}

int main(void) {
    const char *g = getenv("SD3_GOLDEN");
    if (!realpath(g ? g : "../shared/golden", g_root)) {
        printf("no golden folder (%s): set SD3_GOLDEN\n", g ? g : "../shared/golden");
        return 1;
    }
    snprintf(g_tiny, sizeof g_tiny, "%s/tiny-sd3", g_root);
    snprintf(g_tmp, sizeof g_tmp, "/tmp/sd3_single_XXXXXX");
    if (!mkdtemp(g_tmp)) { perror("mkdtemp"); return 1; }

    test_fp8_codec_and_linear();
    test_infer();
    test_tokenizers();

    char full[512], full8[512], dit[PATH_MAX + 64], ref[512], ref8[512], l_file[PATH_MAX + 64], g_file[512], t_file[512], t8_file[512];
    /* (g_tmp is short: the 512-byte names fit) */
    snprintf(full, sizeof full, "%s/sd3_tiny_incl_clips_t5.safetensors", g_tmp);
    snprintf(full8, sizeof full8, "%s/sd3_tiny_incl_clips_t5xxlfp8.safetensors", g_tmp);
    snprintf(dit, sizeof dit, "%s/tiny-sd3-single-file/sd3_tiny.safetensors", g_root);
    snprintf(ref, sizeof ref, "%s/ref", g_tmp);
    snprintf(ref8, sizeof ref8, "%s/ref_fp8", g_tmp);
    snprintf(l_file, sizeof l_file, "%s/text_encoder/model.safetensors", g_tiny);
    snprintf(g_file, sizeof g_file, "%s/clip_g.safetensors", g_tmp);
    snprintf(t_file, sizeof t_file, "%s/t5xxl.safetensors", g_tmp);
    snprintf(t8_file, sizeof t8_file, "%s/t5xxl_fp8_e4m3fn.safetensors", g_tmp);
    int ok = write_single(full, 1, 1, 1) && write_single(full8, 1, 1, 2) && make_ref_folder(ref, 0) && make_ref_folder(ref8, 1) &&
             write_bare(g_file, "text_encoder_2", "conditioner.embedders.clip_g.transformer.", 0, 0) &&
             write_bare(t_file, "text_encoder_3", "", 0, 0) && write_bare(t8_file, "text_encoder_3", "", 1, 0);
    CHECK(ok, "building the test files in %s", g_tmp);
    if (!ok) TEST_MAIN_END("test_single_file");

    /* references: the folder with eye(C) as CLIP-L's projection; the original folder must differ from it
     * (so the identity rule is visible in these tests) */
    run_out r_ref, r_ref8, r_ref_not5, r, r2;
    run_pipe(ref, NULL, NULL, 0, &r_ref);
    CHECK(r_ref.s == SD3_OK, "reference folder run: %s", r_ref.msg);
    if (r_ref.s) TEST_MAIN_END("test_single_file");
    run_pipe(g_tiny, NULL, NULL, 0, &r);
    int64_t nl = (int64_t)r_ref.o.B * r_ref.o.C * r_ref.o.h * r_ref.o.w;
    CHECK(r.s == SD3_OK && max_diff(r.o.latents, r_ref.o.latents, nl) > 1e-3, "the identity CLIP-L projection changes nothing?");
    pipe_out_free(&r.o);

    /* 1. single file with everything in it, through pipe_generate */
    run_pipe(full, g_tiny, NULL, 0, &r);
    compare("incl_clips_t5 single file (pipe_generate)", &r, &r_ref, 1e-6);
    pipe_out_free(&r.o);

    /* 2. fp8 T5: equal to the folder whose T5 holds the same rounded values in F32 (the check that matters:
     * measured 0, bit-identical); and the distance from the unrounded run, which is the effect of e4m3
     * rounding (3 mantissa bits) on this random tiny model, measured 0.14 on the latents and 0.070 on
     * the decoded image (bound 0.3 / 1.2, only to catch a broken path) */
    run_pipe(ref8, NULL, NULL, 0, &r_ref8);
    run_pipe(full8, g_tiny, NULL, 0, &r);
    compare("incl_clips_t5xxlfp8 vs folder with fp8-rounded F32 T5", &r, &r_ref8, 1e-5);
    compare("incl_clips_t5xxlfp8 vs unquantised folder", &r, &r_ref, 0.3);
    pipe_out_free(&r.o);

    /* 3. MMDiT+VAE single file + bare --clip-l (has its own projection: ignored), --clip-g (under a prefix),
     * --t5xxl (F32 and fp8) */
    const char *ov[4] = {l_file, g_file, t_file, NULL};
    run_pipe(dit, g_tiny, ov, 0, &r);
    compare("sd3_tiny + --clip-l --clip-g --t5xxl", &r, &r_ref, 1e-6);
    pipe_out_free(&r.o);
    ov[2] = t8_file;
    run_pipe(dit, g_tiny, ov, 0, &r);
    compare("sd3_tiny + --clip-l --clip-g --t5xxl (fp8)", &r, &r_ref8, 1e-5);
    pipe_out_free(&r.o);

    /* 3b. a single file with the CLIPs but no T5 (sd3_medium_incl_clips) + --t5xxl fp8 */
    char clips[600];
    snprintf(clips, sizeof clips, "%s/sd3_tiny_incl_clips.safetensors", g_tmp);
    CHECK(write_single(clips, 1, 1, 0), "writing %s", clips);
    const char *ovt[4] = {NULL, NULL, t8_file, NULL};
    run_pipe(clips, g_tiny, ovt, 0, &r);
    compare("incl_clips single file + --t5xxl (fp8)", &r, &r_ref8, 1e-5);
    pipe_out_free(&r.o);

    /* 4. no T5 anywhere (sd3_medium.safetensors without --t5xxl) = the folder run with no_t5 */
    run_pipe(ref, NULL, NULL, 1, &r_ref_not5);
    ov[2] = NULL;
    run_pipe(dit, g_tiny, ov, 0, &r);
    compare("sd3_tiny + --clip-l --clip-g, no T5", &r, &r_ref_not5, 1e-6);
    pipe_out_free(&r.o);

    /* 5. --vae on a diffusers folder (the single file's first_stage_model.*) */
    const char *ovv[4] = {NULL, NULL, NULL, dit};
    run_pipe(ref, g_tiny, ovv, 0, &r);
    compare("folder + --vae sd3_tiny.safetensors", &r, &r_ref, 1e-6);
    pipe_out_free(&r.o);

    /* 6. the library API: sd3_load / sd3_generate (seeded like the reference) */
    sd3_model_params mp = sd3_model_params_default();
    float *lat = NULL;
    char msg[1024];
    mp.model = full;
    sd3_status s = run_api(&mp, g_tiny, &lat, msg, sizeof msg);
    CHECK(s == SD3_OK, "sd3_generate on the single file: %s", msg);
    if (lat) {
        double d = max_diff(lat, r_ref.o.latents, nl);
        printf("  %-58s latents max|diff| %.3g\n", "sd3_load/sd3_generate single file", d);
        CHECK(d <= 1e-6, "sd3_generate single file: %.3g", d);
        free(lat);
    }
    mp.model = dit;
    mp.clip_l = l_file;
    mp.clip_g = g_file;
    mp.t5xxl = t_file;
    s = run_api(&mp, g_tiny, &lat, msg, sizeof msg);
    CHECK(s == SD3_OK, "sd3_generate with overrides: %s", msg);
    if (lat) {
        double d = max_diff(lat, r_ref.o.latents, nl);
        printf("  %-58s latents max|diff| %.3g\n", "sd3_load/sd3_generate + overrides", d);
        CHECK(d <= 1e-6, "sd3_generate with overrides: %.3g", d);
        free(lat);
    }

    /* 7. errors: a missing override file, a file of the wrong model, a single file without CLIPs */
    mp = sd3_model_params_default();
    mp.model = dit;
    mp.clip_l = "/nonexistent/clip_l.safetensors";
    s = run_api(&mp, g_tiny, &lat, msg, sizeof msg);
    CHECK(s == SD3_ERR_NOT_FOUND && strstr(msg, "--clip-l") && strstr(msg, "/nonexistent/clip_l.safetensors"), "%d %s", s, msg);
    mp.clip_l = t_file;  /* a T5 as --clip-l */
    s = run_api(&mp, g_tiny, &lat, msg, sizeof msg);
    CHECK(s == SD3_ERR_NOT_FOUND && strstr(msg, t_file) && strstr(msg, "CLIP-L") && strstr(msg, "T5"), "%d %s", s, msg);
    mp.clip_l = NULL;
    mp.t5xxl = l_file;   /* a CLIP as --t5xxl */
    s = run_api(&mp, g_tiny, &lat, msg, sizeof msg);
    CHECK(s == SD3_ERR_NOT_FOUND && strstr(msg, "--t5xxl") && strstr(msg, l_file) && strstr(msg, "T5-XXL") && strstr(msg, "CLIP"),
          "%d %s", s, msg);
    mp.t5xxl = NULL;
    mp.vae = t_file;     /* a T5 as --vae */
    s = run_api(&mp, g_tiny, &lat, msg, sizeof msg);
    CHECK(s == SD3_ERR_NOT_FOUND && strstr(msg, "--vae") && strstr(msg, t_file) && strstr(msg, "VAE"), "%d %s", s, msg);
    mp.vae = NULL;
    s = run_api(&mp, g_tiny, &lat, msg, sizeof msg);   /* no CLIPs anywhere */
    CHECK(s == SD3_ERR_NOT_FOUND && strstr(msg, "--clip-l") && strstr(msg, dit), "%d %s", s, msg);
    /* a "scaled fp8" T5 (per-tensor scale_weight keys) is refused with a clear message */
    {
        char sc[600];
        snprintf(sc, sizeof sc, "%s/t5xxl_fp8_e4m3fn_scaled.safetensors", g_tmp);
        st_file *f3;
        char p3[PATH_MAX + 64];
        snprintf(p3, sizeof p3, "%s/text_encoder_3/model.safetensors", g_tiny);
        f3 = open_or_die(p3);
        st_writer *w3 = st_writer_new();
        void *bufs[256];
        int nb = 0;
        float one = 1.0f;
        int64_t sh1[1] = {1};
        sd3_err e3 = {0};
        int ok3 = add_all(w3, f3, "", 1, 0, bufs, &nb, NULL) &&
                  !st_writer_add(w3, "encoder.block.0.layer.0.SelfAttention.q.scale_weight", DT_F32, 1, sh1, &one, &e3) &&
                  !st_writer_write(w3, sc, &e3);
        CHECK(ok3, "%s", e3.msg);
        st_writer_free(w3);
        st_close(f3);
        for (int i = 0; i < nb; i++) free(bufs[i]);
        mp.model = full;
        mp.t5xxl = sc;
        s = run_api(&mp, g_tiny, &lat, msg, sizeof msg);
        CHECK(s == SD3_ERR_UNSUPPORTED && strstr(msg, "scaled fp8") && strstr(msg, sc), "%d %s", s, msg);
        mp.t5xxl = NULL;
    }
    /* a config folder that does not exist */
    run_pipe(full, "/nonexistent-config", NULL, 0, &r);
    CHECK(r.s == SD3_ERR_NOT_FOUND && strstr(r.msg, "--config /nonexistent-config"), "%d %s", r.s, r.msg);
    /* no config folder: the tiny CLIP's head size cannot be inferred, and the error says what to do */
    run_pipe(full, NULL, NULL, 0, &r);
    CHECK(r.s == SD3_ERR_UNSUPPORTED && strstr(r.msg, "config folder") && strstr(r.msg, full), "%d %s", r.s, r.msg);
    mp.model = t_file;   /* a text encoder file as the model */
    s = run_api(&mp, g_tiny, &lat, msg, sizeof msg);
    CHECK(s != SD3_OK && strstr(msg, t_file), "%d %s", s, msg);
    free(lat);

    pipe_out_free(&r_ref.o);
    pipe_out_free(&r_ref8.o);
    pipe_out_free(&r_ref_not5.o);
    (void)r2;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    if (system(cmd)) printf("could not remove %s\n", g_tmp);
    TEST_MAIN_END("test_single_file");
}

/*
 * test_mmdit.c — the SD3 transformer on bad input and on the facts the golden cases do not reach:
 *   - a latent beyond the position table, an odd latent size, bad skip_layers: errors naming the limit;
 *   - a config whose in_channels disagrees with the weights, a block tensor missing (diffusers and
 *     single-file layout), qk-norm tensors the config does not expect, more blocks than num_layers:
 *     errors naming the tensor;
 *   - single-file config inference (needs the head dim for the tiny files);
 *   - skip_layers: skipping nothing equals the plain forward; skipping block 1 changes the output and
 *     equals a model rebuilt without that block (an independent copy of the weights with block 2
 *     renamed to 1 and num_layers 2); batch items are independent.
 *
 *   test_mmdit [GOLDEN_ROOT]    (default $SD3_GOLDEN, else ../shared/golden)
 *
 * The damaged files are copies of the tiny SD3 transformer written with st_writer into a temp folder.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "io/safetensors.h"
#include "io/weights.h"
#include "mmdit/mmdit.h"
#include "test.h"

static char g_root[2048];     /* golden root */
static char g_tmp[256];       /* temp folder for the damaged copies */

/* Path under the golden root. */
static void gpath(char *out, size_t n, const char *rel) { snprintf(out, n, "%s/%s", g_root, rel); }

/* A rename rule for copies: name -> new name in buf, or NULL to drop the tensor. */
typedef const char *(*rename_fn)(const char *name, char *buf, size_t n, const void *arg);

/* Copy safetensors src to dst, renaming / dropping tensors with fn, converting F32 tensors to F16 when
 * to_f16; 0 on success. */
static int write_copy_as(const char *src, const char *dst, rename_fn fn, const void *arg, int to_f16) {
    sd3_err err = {0};
    st_file *f;
    if (st_open(&f, src, &err) != SD3_OK) { printf("  cannot open %s: %s\n", src, err.msg); return -1; }
    st_writer *w = st_writer_new();
    void **conv = calloc((size_t)f->n, sizeof *conv);
    int rc = 0;
    for (int i = 0; i < f->n && !rc; i++) {
        const st_entry *en = &f->entries[i];
        char buf[512];
        const char *name = fn(en->name, buf, sizeof buf, arg);
        if (!name) continue;
        const void *data = en->data;
        dtype dt = en->dt;
        if (to_f16 && dt == DT_F32) {
            size_t n = (en->end - en->begin) / 4;
            conv[i] = malloc(n * 2 + 2);
            f32_to_fp16_row(en->data, conv[i], n);
            data = conv[i];
            dt = DT_F16;
        }
        if (st_writer_add(w, name, dt, en->ndim, en->shape, data, &err) != SD3_OK) {
            printf("  %s\n", err.msg);
            rc = -1;
        }
    }
    if (!rc && st_writer_write(w, dst, &err) != SD3_OK) { printf("  %s\n", err.msg); rc = -1; }
    st_writer_free(w);
    for (int i = 0; i < f->n; i++) free(conv[i]);
    free(conv);
    st_close(f);
    return rc;
}

static int write_copy(const char *src, const char *dst, rename_fn fn, const void *arg) {
    return write_copy_as(src, dst, fn, arg, 0);
}

/* Rename rule: keep everything. */
static const char *keep_all(const char *name, char *buf, size_t n, const void *arg) {
    (void)buf, (void)n, (void)arg;
    return name;
}

/* Rename rule: drop the tensor named by arg. */
static const char *drop_one(const char *name, char *buf, size_t n, const void *arg) {
    (void)buf, (void)n;
    return strcmp(name, (const char *)arg) ? name : NULL;
}

/* Rename rule: drop transformer_blocks.1.*, rename transformer_blocks.2.* to transformer_blocks.1.*. */
static const char *remove_block1(const char *name, char *buf, size_t n, const void *arg) {
    (void)arg;
    if (!strncmp(name, "transformer_blocks.1.", 21)) return NULL;
    if (!strncmp(name, "transformer_blocks.2.", 21)) {
        snprintf(buf, n, "transformer_blocks.1.%s", name + 21);
        return buf;
    }
    return name;
}

/* Deterministic pseudo-random inputs in [-1, 1). */
static void fill(float *x, size_t n, uint32_t seed) {
    uint32_t s = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        x[i] = (float)((s >> 8) & 0xffffff) / (float)(1 << 23) - 1.0f;
    }
}

static float max_diff(const float *a, const float *b, size_t n) {
    float m = 0;
    for (size_t i = 0; i < n; i++) {
        float d = fabsf(a[i] - b[i]);
        if (!(d <= m)) m = d;
    }
    return m;
}

/* Inputs for the tiny models: batch B, latent H x W, S text tokens. */
typedef struct inputs {
    int B, H, W, S;
    float *x, *ctx, *pooled, *t, *out;
} inputs;

static void inputs_make(inputs *in, const mmdit_config *c, int B, int H, int W, int S) {
    in->B = B, in->H = H, in->W = W, in->S = S;
    in->x = malloc(sizeof(float) * (size_t)B * c->in_channels * H * W);
    in->ctx = malloc(sizeof(float) * (size_t)B * S * c->joint_attention_dim);
    in->pooled = malloc(sizeof(float) * (size_t)B * c->pooled_projection_dim);
    in->t = malloc(sizeof(float) * (size_t)B);
    in->out = malloc(sizeof(float) * (size_t)B * c->out_channels * H * W);
    fill(in->x, (size_t)B * c->in_channels * H * W, 1);
    fill(in->ctx, (size_t)B * S * c->joint_attention_dim, 2);
    fill(in->pooled, (size_t)B * c->pooled_projection_dim, 3);
    for (int b = 0; b < B; b++) in->t[b] = 1000.0f * (float)(b + 1) / (float)(B + 1);
}

static void inputs_free(inputs *in) {
    free(in->x), free(in->ctx), free(in->pooled), free(in->t), free(in->out);
}

static size_t out_n(const mmdit_model *m, const inputs *in) {
    return (size_t)in->B * m->cfg.out_channels * in->H * in->W;
}

static sd3_status fwd(const mmdit_model *m, inputs *in, const int *skip, int n_skip, sd3_err *err) {
    return mmdit_forward(m, in->x, in->B, in->H, in->W, in->ctx, in->S, in->pooled, in->t, skip, n_skip, in->out, err);
}

/* ---- input-size errors ------------------------------------------------------------------------ */

static void test_sizes(const mmdit_model *m) {
    sd3_err err = {0};
    inputs in;
    /* pos_embed_max_size 32, patch 2: the largest latent is 64 x 64. */
    inputs_make(&in, &m->cfg, 1, 66, 16, 5);
    sd3_status s = fwd(m, &in, NULL, 0, &err);
    CHECK(s == SD3_ERR_INVALID_ARG && strstr(err.msg, "pos_embed_max_size 32") && strstr(err.msg, "66x16"),
          "latent beyond the table: %s", err.msg);
    inputs_free(&in);

    inputs_make(&in, &m->cfg, 1, 16, 66, 5);
    s = fwd(m, &in, NULL, 0, &err);
    CHECK(s == SD3_ERR_INVALID_ARG && strstr(err.msg, "pos_embed_max_size 32"), "wide latent: %s", err.msg);
    inputs_free(&in);

    inputs_make(&in, &m->cfg, 1, 64, 64, 5); /* exactly at the limit: fine */
    s = fwd(m, &in, NULL, 0, &err);
    CHECK(s == SD3_OK, "latent 64x64 at the limit: %s", err.msg);
    inputs_free(&in);

    inputs_make(&in, &m->cfg, 1, 17, 16, 5);
    s = fwd(m, &in, NULL, 0, &err);
    CHECK(s == SD3_ERR_INVALID_ARG && strstr(err.msg, "17x16") && strstr(err.msg, "patch size 2"),
          "odd latent: %s", err.msg);
    inputs_free(&in);

    inputs_make(&in, &m->cfg, 1, 16, 16, 5);
    int bad[1] = {3};
    s = fwd(m, &in, bad, 1, &err);
    CHECK(s == SD3_ERR_INVALID_ARG && strstr(err.msg, "skip_layers[0] = 3"), "skip index out of range: %s", err.msg);
    inputs_free(&in);
}

/* ---- load errors ------------------------------------------------------------------------------- */

/* Load a damaged copy of the tiny diffusers weights with cfg; returns the status, err the message. */
static sd3_status try_copy(const char *src, const char *drop, const mmdit_config *cfg, sd3_err *err) {
    char dst[512];
    snprintf(dst, sizeof dst, "%s/copy.safetensors", g_tmp);
    if (write_copy(src, dst, drop_one, drop)) return SD3_ERR_INTERNAL;
    weights w;
    sd3_status s = weights_open_file(&w, dst, err);
    if (s != SD3_OK) return s;
    mmdit_model m;
    s = mmdit_load_weights(&m, &w, cfg, err);
    CHECK(s == SD3_OK || m.blocks == NULL, "a failed load must leave the model freed");
    mmdit_free(&m);
    weights_close(&w);
    return s;
}

static void test_load_errors(void) {
    char dir[3000], src[4096], cfgp[4096], sf[4096];
    gpath(dir, sizeof dir, "tiny-sd3/transformer");
    snprintf(src, sizeof src, "%s/diffusion_pytorch_model.safetensors", dir);
    snprintf(cfgp, sizeof cfgp, "%s/config.json", dir);
    gpath(sf, sizeof sf, "tiny-sd3-single-file/sd3_tiny.safetensors");
    sd3_err err = {0};
    mmdit_config cfg;
    CHECK(mmdit_config_load(&cfg, cfgp, &err) == SD3_OK, "config: %s", err.msg);

    /* in_channels 8 in the config, 16 in pos_embed.proj.weight. */
    mmdit_config bad = cfg;
    bad.in_channels = 8;
    weights w;
    CHECK(weights_open_file(&w, src, &err) == SD3_OK, "open: %s", err.msg);
    mmdit_model m;
    sd3_status s = mmdit_load_weights(&m, &w, &bad, &err);
    CHECK(s == SD3_ERR_SHAPE && strstr(err.msg, "pos_embed.proj.weight") && strstr(err.msg, "[32, 16, 2, 2]"),
          "channel mismatch: %s", err.msg);
    mmdit_free(&m);

    /* More blocks in the file than num_layers. */
    bad = cfg;
    bad.num_layers = 2;
    s = mmdit_load_weights(&m, &w, &bad, &err);
    CHECK(s != SD3_OK && strstr(err.msg, "transformer_blocks.2."), "num_layers too small: %s", err.msg);
    mmdit_free(&m);

    /* Dual attention claimed for block 1, which has no attn2. */
    bad = cfg;
    bad.n_dual = 1;
    bad.dual_attention_layers[0] = 1;
    s = mmdit_load_weights(&m, &w, &bad, &err);
    CHECK(s == SD3_ERR_SHAPE && strstr(err.msg, "transformer_blocks.1.norm1.linear.weight"),
          "dual layer without its weights: %s", err.msg);
    mmdit_free(&m);
    weights_close(&w);

    /* A missing block tensor. */
    s = try_copy(src, "transformer_blocks.1.attn.to_k.weight", &cfg, &err);
    CHECK(s == SD3_ERR_NOT_FOUND && strstr(err.msg, "'transformer_blocks.1.attn.to_k.weight' is missing"),
          "missing tensor: %s", err.msg);
    s = try_copy(src, "transformer_blocks.0.ff_context.net.2.bias", &cfg, &err);
    CHECK(s == SD3_ERR_NOT_FOUND && strstr(err.msg, "transformer_blocks.0.ff_context.net.2.bias"),
          "missing context FF bias: %s", err.msg);
    /* The same in the single-file layout (the fused qkv is what is missing). */
    s = try_copy(sf, "model.diffusion_model.joint_blocks.1.context_block.attn.qkv.weight", &cfg, &err);
    CHECK(s == SD3_ERR_NOT_FOUND && strstr(err.msg, "model.diffusion_model.joint_blocks.1.context_block.attn.qkv.weight"),
          "missing single-file tensor: %s", err.msg);

    /* SD3.5-large-like weights (with qk-norm) under the SD3 config (qk_norm null). */
    char l[4096];
    gpath(l, sizeof l, "tiny-sd35-large-like/transformer/diffusion_pytorch_model.safetensors");
    CHECK(weights_open_file(&w, l, &err) == SD3_OK, "open: %s", err.msg);
    s = mmdit_load_weights(&m, &w, &cfg, &err);
    CHECK(s == SD3_ERR_SHAPE && strstr(err.msg, "attn.norm_q.weight") && strstr(err.msg, "qk_norm null"),
          "unexpected qk-norm: %s", err.msg);
    mmdit_free(&m);
    weights_close(&w);

    /* A non-transformer file. */
    char vae[4096];
    gpath(vae, sizeof vae, "tiny-sd3/vae/diffusion_pytorch_model.safetensors");
    s = mmdit_load_file(&m, vae, NULL, &err);
    CHECK(s == SD3_ERR_NOT_FOUND && strstr(err.msg, "x_embedder"), "VAE file as transformer: %s", err.msg);
}

/* ---- single-file config inference --------------------------------------------------------------- */

static void test_infer(void) {
    char sf[4096], cfgp[4096];
    gpath(sf, sizeof sf, "tiny-sd3-single-file/sd35_medium_like_tiny.safetensors");
    gpath(cfgp, sizeof cfgp, "tiny-sd35-medium-like/transformer/config.json");
    sd3_err err = {0};
    mmdit_config want, got;
    CHECK(mmdit_config_load(&want, cfgp, &err) == SD3_OK, "config: %s", err.msg);
    weights w, pv;
    CHECK(weights_open_file(&w, sf, &err) == SD3_OK, "open: %s", err.msg);
    const char *prefix = mmdit_original_prefix(&w);
    CHECK(prefix && !strcmp(prefix, "model.diffusion_model."), "prefix %s", prefix ? prefix : "(none)");
    weights_view(&pv, &w, prefix ? prefix : "");
    CHECK(mmdit_config_infer(&got, &pv, 8, &err) == SD3_OK, "infer: %s", err.msg);
    got.sample_size = want.sample_size; /* not stored in the weights */
    CHECK(!memcmp(&got, &want, sizeof got), "inferred config differs: layers %d heads %d M %d qk %d dual %d",
          got.num_layers, got.num_attention_heads, got.pos_embed_max_size, got.qk_norm, got.n_dual);
    /* Default head dim 64 cannot split the 32-wide tiny model. */
    mmdit_model m;
    sd3_status s = mmdit_load_file(&m, sf, NULL, &err);
    CHECK(s == SD3_ERR_SHAPE && strstr(err.msg, "head_dim 64"), "tiny file without config: %s", err.msg);
    weights_close(&w);
}

/* ---- skip_layers and batch independence ------------------------------------------------------- */

static void test_skip(const mmdit_model *m) {
    sd3_err err = {0};
    inputs in;
    inputs_make(&in, &m->cfg, 2, 16, 24, 7);
    size_t n = out_n(m, &in);
    float *plain = malloc(sizeof(float) * n), *skip1 = malloc(sizeof(float) * n);
    CHECK(fwd(m, &in, NULL, 0, &err) == SD3_OK, "plain: %s", err.msg);
    memcpy(plain, in.out, sizeof(float) * n);
    int none[1] = {0};
    CHECK(fwd(m, &in, none, 0, &err) == SD3_OK && max_diff(plain, in.out, n) == 0.0f,
          "skipping nothing must equal the plain forward");
    int one[1] = {1};
    CHECK(fwd(m, &in, one, 1, &err) == SD3_OK, "skip 1: %s", err.msg);
    memcpy(skip1, in.out, sizeof(float) * n);
    float d = max_diff(plain, skip1, n);
    CHECK(d > 1e-2f, "skipping block 1 must change the output (max diff %g)", d);
    int last[1] = {2};
    CHECK(fwd(m, &in, last, 1, &err) == SD3_OK && max_diff(plain, in.out, n) > 1e-2f, "skipping the last block");

    /* Independent: the weights without block 1 (block 2 renamed to 1), num_layers 2. */
    char src[4096], dst[512];
    gpath(src, sizeof src, "tiny-sd3/transformer/diffusion_pytorch_model.safetensors");
    snprintf(dst, sizeof dst, "%s/two_blocks.safetensors", g_tmp);
    weights w;
    mmdit_model m2;
    mmdit_config c2 = m->cfg;
    c2.num_layers = 2;
    if (!write_copy(src, dst, remove_block1, NULL) && weights_open_file(&w, dst, &err) == SD3_OK) {
        CHECK(mmdit_load_weights(&m2, &w, &c2, &err) == SD3_OK, "two-block model: %s", err.msg);
        if (m2.blocks) {
            CHECK(fwd(&m2, &in, NULL, 0, &err) == SD3_OK, "two-block forward: %s", err.msg);
            d = max_diff(skip1, in.out, n);
            CHECK(d == 0.0f, "skip [1] must equal the model without block 1 (max diff %g)", d);
        }
        mmdit_free(&m2);
        weights_close(&w);
    } else CHECK(0, "cannot write %s: %s", dst, err.msg);

    /* Batch item 1 alone gives the same result as inside the batch of 2. */
    inputs one_in = in;
    one_in.B = 1;
    const mmdit_config *c = &m->cfg;
    one_in.x = in.x + (size_t)c->in_channels * in.H * in.W;
    one_in.ctx = in.ctx + (size_t)in.S * c->joint_attention_dim;
    one_in.pooled = in.pooled + c->pooled_projection_dim;
    one_in.t = in.t + 1;
    one_in.out = malloc(sizeof(float) * n / 2);
    CHECK(fwd(m, &one_in, NULL, 0, &err) == SD3_OK, "batch 1: %s", err.msg);
    d = max_diff(plain + n / 2, one_in.out, n / 2);
    CHECK(d < 1e-5f, "batch item 1 alone differs by %g", d);
    free(one_in.out);
    free(plain), free(skip1);
    inputs_free(&in);
}

/* ---- diffusers folder and single file give the same numbers ----------------------------------- */

static void test_single_equals_dir(const mmdit_model *m) {
    char sf[4096], cfgp[4096];
    gpath(sf, sizeof sf, "tiny-sd3-single-file/sd3_tiny.safetensors");
    gpath(cfgp, sizeof cfgp, "tiny-sd3/transformer/config.json");
    sd3_err err = {0};
    mmdit_model s;
    if (mmdit_load_file(&s, sf, cfgp, &err) != SD3_OK) { CHECK(0, "single file: %s", err.msg); return; }
    CHECK(s.original_layout && !m->original_layout, "layouts detected");
    inputs in;
    inputs_make(&in, &m->cfg, 1, 8, 12, 3);
    size_t n = out_n(m, &in);
    float *a = malloc(sizeof(float) * n);
    CHECK(fwd(m, &in, NULL, 0, &err) == SD3_OK, "%s", err.msg);
    memcpy(a, in.out, sizeof(float) * n);
    CHECK(fwd(&s, &in, NULL, 0, &err) == SD3_OK, "%s", err.msg);
    CHECK(max_diff(a, in.out, n) == 0.0f, "single file and diffusers folder differ by %g", max_diff(a, in.out, n));
    free(a);
    inputs_free(&in);
    mmdit_free(&s);
}

/* ---- F16 weights: used in their stored dtype; fused-qkv slices and swapped halves of 2-byte rows ---- */

static void test_f16(const mmdit_model *m32) {
    char src[4096], sf[4096], cfgp[4096], d1[512], d2[512];
    gpath(src, sizeof src, "tiny-sd3/transformer/diffusion_pytorch_model.safetensors");
    gpath(sf, sizeof sf, "tiny-sd3-single-file/sd3_tiny.safetensors");
    gpath(cfgp, sizeof cfgp, "tiny-sd3/transformer/config.json");
    snprintf(d1, sizeof d1, "%s/f16_dir.safetensors", g_tmp);
    snprintf(d2, sizeof d2, "%s/f16_single.safetensors", g_tmp);
    if (write_copy_as(src, d1, keep_all, NULL, 1) || write_copy_as(sf, d2, keep_all, NULL, 1)) {
        CHECK(0, "cannot write the F16 copies");
        return;
    }
    sd3_err err = {0};
    weights w;
    mmdit_model a, b;
    CHECK(weights_open_file(&w, d1, &err) == SD3_OK, "%s", err.msg);
    sd3_status s1 = mmdit_load_weights(&a, &w, &m32->cfg, &err);
    CHECK(s1 == SD3_OK, "F16 diffusers copy: %s", err.msg);
    sd3_status s2 = mmdit_load_file(&b, d2, cfgp, &err);
    CHECK(s2 == SD3_OK, "F16 single-file copy: %s", err.msg);
    if (s1 == SD3_OK && s2 == SD3_OK) {
        CHECK(a.blocks[0].attn_to_k.weight.dt == DT_F16 && b.blocks[0].attn_to_k.weight.dt == DT_F16 &&
                  b.norm_out_linear.weight.dt == DT_F16,
              "weights stay F16");
        inputs in;
        inputs_make(&in, &m32->cfg, 2, 16, 8, 4);
        size_t n = out_n(m32, &in);
        float *ref = malloc(sizeof(float) * n), *fa = malloc(sizeof(float) * n);
        CHECK(fwd(m32, &in, NULL, 0, &err) == SD3_OK, "%s", err.msg);
        memcpy(ref, in.out, sizeof(float) * n);
        CHECK(fwd(&a, &in, NULL, 0, &err) == SD3_OK, "%s", err.msg);
        memcpy(fa, in.out, sizeof(float) * n);
        CHECK(fwd(&b, &in, NULL, 0, &err) == SD3_OK, "%s", err.msg);
        float dab = max_diff(fa, in.out, n), dref = max_diff(ref, fa, n);
        CHECK(dab == 0.0f, "F16 single file and F16 diffusers folder differ by %g", dab);
        /* fp16 weights (relative rounding 2^-11) on outputs of size ~3: bound 0.01, written down here. */
        CHECK(dref < 0.01f && dref > 0.0f, "F16 vs F32 weights: max diff %g (bound 0.01)", dref);
        printf("  F16 weights vs F32: max |diff| %.3g (bound 0.01)\n", dref);
        free(ref), free(fa);
        inputs_free(&in);
    }
    mmdit_free(&a);
    mmdit_free(&b);
    weights_close(&w);
    unlink(d1);
    unlink(d2);
}

int main(int argc, char **argv) {
    const char *root = argc > 1 ? argv[1] : getenv("SD3_GOLDEN");
    snprintf(g_root, sizeof g_root, "%s", root ? root : "../shared/golden");
    char probe[4096];
    gpath(probe, sizeof probe, "tiny-sd3/transformer/config.json");
    if (access(probe, R_OK)) {
        CHECK(0, "golden data not found: %s (pass the golden root as argument or set SD3_GOLDEN)", probe);
        TEST_MAIN_END("test_mmdit");
    }
    snprintf(g_tmp, sizeof g_tmp, "/tmp/test_mmdit.XXXXXX");
    if (!mkdtemp(g_tmp)) {
        CHECK(0, "mkdtemp failed");
        TEST_MAIN_END("test_mmdit");
    }
    char dir[4096];
    gpath(dir, sizeof dir, "tiny-sd3/transformer");
    sd3_err err = {0};
    mmdit_model m;
    if (mmdit_load_dir(&m, dir, &err) != SD3_OK) {
        CHECK(0, "load %s: %s", dir, err.msg);
    } else {
        test_sizes(&m);
        test_skip(&m);
        test_single_equals_dir(&m);
        test_f16(&m);
        mmdit_free(&m);
    }
    test_load_errors();
    test_infer();

    char p[512];
    snprintf(p, sizeof p, "%s/copy.safetensors", g_tmp);
    unlink(p);
    snprintf(p, sizeof p, "%s/two_blocks.safetensors", g_tmp);
    unlink(p);
    rmdir(g_tmp);
    TEST_MAIN_END("test_mmdit");
}

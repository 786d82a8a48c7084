/* test_vae.c — the VAE on bad input (every error names the tensor or the limit) and its tiled decode /
 * encode: the tiling algorithm checked piece by piece against separate untiled runs of the tile crops,
 * and the overall tiled-vs-untiled difference measured on a tiny random image and bounded.
 * Uses the tiny VAE of the golden data; run from the repo root; SD3_GOLDEN overrides the golden root
 * (default ../shared/golden). SD3_TEST_VERBOSE=1 prints the messages and the measured differences. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "io/json_util.h"
#include "io/safetensors.h"
#include "test.h"
#include "vae/vae.h"

static const char *g_root;
static char g_vae_dir[4096], g_tmp[256];
static int g_verbose;

/* Deterministic standard normals (xorshift + Box-Muller); the values only need to be reproducible. */
static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
/* A uniform in (0, 1) (xorshift64). */
static double urand(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return ((g_rng >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}
/* n standard normals by Box-Muller. */
static void randn(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = (float)(sqrt(-2 * log(urand())) * cos(6.283185307179586 * urand()));
}

/* Print an error message in verbose mode (to show what users would read). */
static void say(const char *what, const sd3_err *e) {
    if (g_verbose) printf("  %-40s -> %s\n", what, e->msg);
}

/* max |a - b| and mean |a - b| over n. */
static double max_diff(const float *a, const float *b, size_t n, double *mean) {
    double mx = 0, sum = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= mx)) mx = d;
        sum += d;
    }
    if (mean) *mean = sum / (double)n;
    return mx;
}

/* Pearson correlation of a and b over n (1 = the same picture up to gain and offset). */
static double corr(const float *a, const float *b, size_t n) {
    double ma = 0, mb = 0, sab = 0, saa = 0, sbb = 0;
    for (size_t i = 0; i < n; i++) { ma += a[i]; mb += b[i]; }
    ma /= (double)n;
    mb /= (double)n;
    for (size_t i = 0; i < n; i++) {
        sab += (a[i] - ma) * (b[i] - mb);
        saa += (a[i] - ma) * (a[i] - ma);
        sbb += (b[i] - mb) * (b[i] - mb);
    }
    return saa > 0 && sbb > 0 ? sab / sqrt(saa * sbb) : 0;
}

/* mean |a| over n. */
static double mean_abs(const float *a, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += fabs(a[i]);
    return s / (double)n;
}

/* ---------------------------------------------------------------------------------------------- */
/* Bad input                                                                                       */
/* ---------------------------------------------------------------------------------------------- */

/* Config channel counts that disagree with the weights fail the load naming the first misshaped tensor. */
static void test_channel_mismatch(void) {
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", g_vae_dir);
    vae_config cfg;
    sd3_err err = {0};
    CHECK(vae_config_load(&cfg, path, &err) == SD3_OK, "tiny config: %s", err.msg);
    weights w;
    CHECK(weights_open_dir(&w, g_vae_dir, "diffusion_pytorch_model", &err) == SD3_OK, "tiny weights: %s", err.msg);
    vae_model m;

    vae_config c = cfg;
    c.block_out_channels[0] = 32;   /* weights have 16 */
    sd3_status s = vae_load(&m, &w, VAE_KEYS_DIFFUSERS, &c, &err);
    say("block_out_channels[0] 32 (weights 16)", &err);
    CHECK(s == SD3_ERR_SHAPE, "status %d: %s", (int)s, err.msg);
    CHECK(strstr(err.msg, "encoder.conv_in.weight") && strstr(err.msg, "[16, 3, 3, 3]"), "message: %s", err.msg);

    c = cfg;
    c.latent_channels = 4;          /* weights have 16 */
    s = vae_load(&m, &w, VAE_KEYS_DIFFUSERS, &c, &err);
    say("latent_channels 4 (weights 16)", &err);
    CHECK(s == SD3_ERR_SHAPE && strstr(err.msg, "encoder.conv_out.weight"), "status %d: %s", (int)s, err.msg);

    c = cfg;
    c.in_channels = 4;              /* an RGBA VAE config on RGB weights */
    s = vae_load(&m, &w, VAE_KEYS_DIFFUSERS, &c, &err);
    say("in_channels 4 (weights 3)", &err);
    CHECK(s == SD3_ERR_SHAPE && strstr(err.msg, "encoder.conv_in.weight"), "status %d: %s", (int)s, err.msg);

    c = cfg;
    c.block_out_channels[1] = 30;   /* not a multiple of norm_num_groups 4 */
    s = vae_load(&m, &w, VAE_KEYS_DIFFUSERS, &c, &err);
    say("block_out_channels[1] 30, 4 groups", &err);
    CHECK(s == SD3_ERR_FORMAT && strstr(err.msg, "block_out_channels[1]"), "status %d: %s", (int)s, err.msg);

    c = cfg;
    c.use_quant_conv = 1;           /* the SD3 VAE has none */
    s = vae_load(&m, &w, VAE_KEYS_DIFFUSERS, &c, &err);
    say("use_quant_conv on SD3 weights", &err);
    CHECK(s == SD3_ERR_NOT_FOUND && strstr(err.msg, "'quant_conv.weight' is missing"), "status %d: %s", (int)s, err.msg);

    /* the diffusers weights read with the original key layout: the first key it looks for is absent */
    s = vae_load(&m, &w, VAE_KEYS_ORIGINAL, &cfg, &err);
    say("diffusers file as original layout", &err);
    CHECK(s == SD3_ERR_NOT_FOUND && strstr(err.msg, "encoder.down.0.block.0.norm1.weight"), "status %d: %s", (int)s,
          err.msg);
    weights_close(&w);
}

/* A folder whose weights lack one tensor (or have one misshaped) fails naming it. */
static void test_missing_tensor(void) {
    sd3_err err = {0};
    weights w;
    CHECK(weights_open_dir(&w, g_vae_dir, "diffusion_pytorch_model", &err) == SD3_OK, "tiny weights: %s", err.msg);
    const st_file *f = w.files[0];
    const char *drop = "decoder.mid_block.attentions.0.to_v.bias";
    const char *bend = "decoder.up_blocks.2.upsamplers.0.conv.weight";
    /* variant 0: a tensor dropped; 1: a conv kernel flattened to 2-D; 2: a pre-0.14 diffusers file (attention
     * named query/key/value/proj_attn) with the projections stored as (C, C, 1, 1) kernels, which must load
     * and decode exactly as the original */
    for (int variant = 0; variant < 3; variant++) {
        char dir[512], path[600], names[3][160];
        snprintf(dir, sizeof dir, "%s/vae%d", g_tmp, variant);
        mkdir(dir, 0700);
        st_writer *wr = st_writer_new();
        for (int i = 0; i < f->n; i++) {
            const st_entry *e = &f->entries[i];
            if (variant == 0 && !strcmp(e->name, drop)) continue;
            int64_t shape[8];
            memcpy(shape, e->shape, sizeof shape);
            int nd = e->ndim;
            if (variant == 1 && !strcmp(e->name, bend)) { nd = 2; shape[1] = shape[1] * shape[2] * shape[3]; }
            const char *name = e->name, *at = strstr(e->name, "attentions.0.");
            if (variant == 2 && at) {
                static const char *const from[4] = {"to_q.", "to_k.", "to_v.", "to_out.0."};
                static const char *const to[4] = {"query.", "key.", "value.", "proj_attn."};
                const char *rest = at + strlen("attentions.0.");
                for (int k = 0; k < 4; k++)
                    if (!strncmp(rest, from[k], strlen(from[k]))) {
                        char *nm = names[i % 3];
                        snprintf(nm, sizeof names[0], "%.*s%s%s", (int)(rest - e->name), e->name, to[k], rest + strlen(from[k]));
                        name = nm;
                        if (nd == 2) { nd = 4; shape[2] = shape[3] = 1; }
                    }
            }
            st_writer_add(wr, name, e->dt, nd, shape, e->data, &err);
        }
        snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir);
        CHECK(st_writer_write(wr, path, &err) == SD3_OK, "write: %s", err.msg);
        st_writer_free(wr);
        /* the same config */
        char src[4200], dst[600];
        snprintf(src, sizeof src, "%s/config.json", g_vae_dir);
        snprintf(dst, sizeof dst, "%s/config.json", dir);
        size_t len;
        char *txt = file_read_all(src, 1 << 20, &len, &err);
        FILE *o = fopen(dst, "wb");
        if (o && txt) fwrite(txt, 1, len, o);
        if (o) fclose(o);
        free(txt);

        vae_model m;
        sd3_err_clear(&err);
        sd3_status s = vae_open_dir(&m, dir, &err);
        say(variant == 2 ? "old attention names, 1x1 kernels" : variant ? "misshaped upsampler conv" : "missing to_v.bias", &err);
        if (variant == 2) {
            CHECK(s == SD3_OK, "old attention names: %s", err.msg);
            vae_model ref;
            float z[16 * 4 * 4], a[3 * 32 * 32], b[3 * 32 * 32];
            randn(z, 16 * 4 * 4);
            int ok = s == SD3_OK && vae_open_dir(&ref, g_vae_dir, &err) == SD3_OK;
            if (ok) {
                CHECK(m.dec.mid.attn.q_w.ndim == 2 && m.dec.mid.attn.q_w.shape[0] == 64, "1x1 kernel viewed as (C, C)");
                CHECK(vae_decode(&ref, z, 1, 16, 4, 4, a, NULL, &err) == SD3_OK, "%s", err.msg);
                CHECK(vae_decode(&m, z, 1, 16, 4, 4, b, NULL, &err) == SD3_OK, "%s", err.msg);
                CHECK(memcmp(a, b, sizeof a) == 0, "old-name file decodes differently");
                vae_free(&ref);
            }
        } else if (variant == 0)
            CHECK(s == SD3_ERR_NOT_FOUND && strstr(err.msg, drop) && strstr(err.msg, dir), "status %d: %s", (int)s, err.msg);
        else
            CHECK(s == SD3_ERR_SHAPE && strstr(err.msg, bend) && strstr(err.msg, "expected [32, 32, 3, 3]"),
                  "status %d: %s", (int)s, err.msg);
        if (s == SD3_OK) vae_free(&m);
    }
    weights_close(&w);

    /* a file with no VAE at all */
    vae_model m;
    char p[4200];
    snprintf(p, sizeof p, "%s/tiny-sd3/transformer/diffusion_pytorch_model.safetensors", g_root);
    sd3_status s = vae_open_file(&m, p, NULL, &err);
    say("transformer file as VAE", &err);
    CHECK(s == SD3_ERR_NOT_FOUND && strstr(err.msg, "no VAE found"), "status %d: %s", (int)s, err.msg);
}

/* The single-file checkpoint: structure inferred from shapes (everything but norm_num_groups, which the
 * weights do not show: the inferred 32 does not divide the tiny model's 16 channels, a clear error). */
static void test_single_file_infer(void) {
    char p[4200];
    snprintf(p, sizeof p, "%s/tiny-sd3-single-file/sd3_tiny.safetensors", g_root);
    weights base, w;
    sd3_err err = {0};
    if (weights_open_file(&base, p, &err) != SD3_OK) { CHECK(0, "single file: %s", err.msg); return; }
    weights_view(&w, &base, "first_stage_model.");
    vae_config c;
    sd3_status s = vae_config_infer(&c, &w, VAE_KEYS_ORIGINAL, &err);
    say("infer config of the tiny single file", &err);
    CHECK(s == SD3_ERR_FORMAT && strstr(err.msg, "norm_num_groups 32"), "status %d: %s", (int)s, err.msg);
    CHECK(c.in_channels == 3 && c.out_channels == 3 && c.latent_channels == 16 && c.n_levels == 4 &&
              c.block_out_channels[0] == 16 && c.block_out_channels[1] == 32 && c.block_out_channels[2] == 64 &&
              c.block_out_channels[3] == 64 && c.layers_per_block == 2 && c.mid_block_add_attention == 1 &&
              !c.use_quant_conv && !c.use_post_quant_conv && c.scaling_factor == 1.5305 && c.shift_factor == 0.0609,
          "inferred config: in %d out %d latent %d levels %d boc %d %d %d %d lpb %d attn %d quant %d/%d", c.in_channels,
          c.out_channels, c.latent_channels, c.n_levels, c.block_out_channels[0], c.block_out_channels[1],
          c.block_out_channels[2], c.block_out_channels[3], c.layers_per_block, c.mid_block_add_attention,
          c.use_quant_conv, c.use_post_quant_conv);
    vae_model m;
    s = vae_open_file(&m, p, NULL, &err);
    say("open tiny single file without config", &err);
    CHECK(s == SD3_ERR_FORMAT && strstr(err.msg, p), "status %d: %s", (int)s, err.msg);
    /* with the groups given, the inferred structure loads */
    c.norm_num_groups = 4;
    s = vae_open_file(&m, p, &c, &err);
    CHECK(s == SD3_OK, "single file with inferred config + groups: %s", err.msg);
    if (s == SD3_OK) vae_free(&m);
    /* a bare diffusers-layout file through vae_open_file */
    snprintf(p, sizeof p, "%s/diffusion_pytorch_model.safetensors", g_vae_dir);
    s = vae_open_file(&m, p, &c, &err);
    CHECK(s == SD3_OK, "diffusers file via vae_open_file: %s", err.msg);
    if (s == SD3_OK) vae_free(&m);
    weights_close(&base);
}

/* Forward arguments out of range: wrong latent / image channels, size not a multiple of 8, batch 0. */
static void test_bad_forward_args(const vae_model *m) {
    sd3_err err = {0};
    float *buf = calloc(16 * 64 * 64 * 2, sizeof(float)), *out = calloc(16 * 64 * 64 * 2, sizeof(float));
    sd3_status s = vae_decode(m, buf, 1, 4, 8, 8, out, NULL, &err);
    say("decode 4-channel latent", &err);
    CHECK(s == SD3_ERR_SHAPE && strstr(err.msg, "4 channels") && strstr(err.msg, "latent_channels = 16"), "status %d: %s",
          (int)s, err.msg);
    s = vae_decode_tiled(m, buf, 1, 32, 8, 8, out, &err);
    CHECK(s == SD3_ERR_SHAPE && strstr(err.msg, "latent_channels = 16"), "tiled: status %d: %s", (int)s, err.msg);
    s = vae_encode(m, buf, 1, 3, 60, 64, out, NULL, &err);
    say("encode 60x64", &err);
    CHECK(s == SD3_ERR_INVALID_ARG && strstr(err.msg, "60x64") && strstr(err.msg, "multiple of 8"), "status %d: %s", (int)s,
          err.msg);
    s = vae_encode_tiled(m, buf, 1, 3, 64, 36, out, &err);
    CHECK(s == SD3_ERR_INVALID_ARG && strstr(err.msg, "multiple of 8"), "tiled: status %d: %s", (int)s, err.msg);
    s = vae_encode(m, buf, 1, 4, 64, 64, out, NULL, &err);
    say("encode 4-channel image", &err);
    CHECK(s == SD3_ERR_SHAPE && strstr(err.msg, "in_channels = 3"), "status %d: %s", (int)s, err.msg);
    s = vae_decode(m, buf, 0, 16, 8, 8, out, NULL, &err);
    say("decode batch 0", &err);
    CHECK(s == SD3_ERR_INVALID_ARG && strstr(err.msg, "batch size 0"), "status %d: %s", (int)s, err.msg);
    s = vae_decode(m, buf, 1, 16, 0, 8, out, NULL, &err);
    say("decode 0x8 latent", &err);
    CHECK(s == SD3_ERR_INVALID_ARG && strstr(err.msg, "0x8"), "status %d: %s", (int)s, err.msg);
    s = vae_decode(m, buf, 1, 16, 8, 1 << 20, out, NULL, &err);
    say("decode 8x1048576 latent", &err);
    CHECK(s == SD3_ERR_INVALID_ARG && strstr(err.msg, "out of range"), "status %d: %s", (int)s, err.msg);
    vae_model t = *m;
    t.tile_latent_min_size = 6;   /* 6 x 8 = 48 != tile_sample_min_size 64 */
    s = vae_decode_tiled(&t, buf, 1, 16, 8, 8, out, &err);
    say("tiles 6 latent / 64 pixels", &err);
    CHECK(s == SD3_ERR_UNSUPPORTED && strstr(err.msg, "tile"), "status %d: %s", (int)s, err.msg);
    free(buf);
    free(out);
}

/* ---------------------------------------------------------------------------------------------- */
/* Tiling                                                                                          */
/* ---------------------------------------------------------------------------------------------- */

/* Copy rows [y0, y0+h) x cols [x0, x0+w) of x (NC planes of H x W) into y (NC planes of h x w). */
static void crop(float *y, const float *x, int NC, int H, int W, int y0, int x0, int h, int w) {
    for (int p = 0; p < NC; p++)
        for (int r = 0; r < h; r++) memcpy(y + ((size_t)p * h + r) * w, x + ((size_t)p * H + y0 + r) * W + x0, (size_t)w * 4);
}

/* diffusers' tiled_decode / _tiled_encode written out literally, as the Python reads: every tile run
 * alone through the untiled public forward, kept whole in a list, blended in place in raster order with
 * blend_v(rows[i-1][j], tile) then blend_h(row[j-1], tile) (extent = min of both sizes and the blend),
 * cropped with slice semantics [:row_limit, :row_limit], concatenated along W then H. Returns the
 * output size in *oH, *oW (out must hold it); 0 on success. */
typedef struct rtile { float *d; int h, w; } rtile;

/* blend_v: b's first rows fade in from a's last rows. */
static void ref_blend_v(const rtile *a, rtile *b, int NC, int extent) {
    int e = extent < a->h ? extent : a->h;
    if (b->h < e) e = b->h;
    for (int y = 0; y < e; y++)
        for (int p = 0; p < NC; p++)
            for (int x = 0; x < b->w; x++) {
                float av = a->d[((size_t)p * a->h + a->h - e + y) * a->w + x];
                float *bv = &b->d[((size_t)p * b->h + y) * b->w + x];
                *bv = av * (float)(1 - (double)y / e) + *bv * (float)((double)y / e);
            }
}

/* blend_h: b's first columns fade in from a's last columns. */
static void ref_blend_h(const rtile *a, rtile *b, int NC, int extent) {
    int e = extent < a->w ? extent : a->w;
    if (b->w < e) e = b->w;
    for (int x = 0; x < e; x++)
        for (int p = 0; p < NC; p++)
            for (int y = 0; y < b->h; y++) {
                float av = a->d[((size_t)p * a->h + y) * a->w + a->w - e + x];
                float *bv = &b->d[((size_t)p * b->h + y) * b->w + x];
                *bv = av * (float)(1 - (double)x / e) + *bv * (float)((double)x / e);
            }
}

/* The whole tiled pass, literally (see above). */
static int ref_tiled(const vae_model *m, int dec, const float *in, int Cin, int H, int W, float *out, int *oH, int *oW) {
    int f = 8, Cout = dec ? 3 : 32;
    int tin = dec ? m->tile_latent_min_size : m->tile_sample_min_size;
    int tout = dec ? m->tile_sample_min_size : m->tile_latent_min_size;
    int step = (int)(tin * (1 - m->tile_overlap_factor)), blend = (int)(tout * m->tile_overlap_factor), keep = tout - blend;
    int ni = (H + step - 1) / step, nj = (W + step - 1) / step;
    rtile *t = calloc((size_t)ni * nj, sizeof *t);
    float *crop_in = malloc((size_t)Cin * tin * tin * 4);
    sd3_err err = {0};
    int rc = 0;
    for (int i = 0; i < ni; i++)
        for (int j = 0; j < nj; j++) {
            int h = H - i * step < tin ? H - i * step : tin, w = W - j * step < tin ? W - j * step : tin;
            crop(crop_in, in, Cin, H, W, i * step, j * step, h, w);
            rtile *r = &t[i * nj + j];
            r->h = dec ? h * f : h / f;
            r->w = dec ? w * f : w / f;
            r->d = malloc((size_t)Cout * r->h * r->w * 4);
            sd3_status s = dec ? vae_decode(m, crop_in, 1, Cin, h, w, r->d, NULL, &err)
                               : vae_encode(m, crop_in, 1, Cin, h, w, r->d, NULL, &err);
            if (s) rc = -1;
        }
    /* result rows: widths from the cropped tiles; the output is (Cout, sum of row heights, row width) */
    int total_h = 0, row_w = 0;
    for (int i = 0; i < ni; i++) total_h += t[i * nj].h < keep ? t[i * nj].h : keep;
    for (int j = 0; j < nj; j++) row_w += t[j].w < keep ? t[j].w : keep;
    int y0 = 0;
    for (int i = 0; i < ni; i++) {
        int x0 = 0;
        for (int j = 0; j < nj; j++) {
            rtile *b = &t[i * nj + j];
            if (i > 0) ref_blend_v(&t[(i - 1) * nj + j], b, Cout, blend);
            if (j > 0) ref_blend_h(&t[i * nj + j - 1], b, Cout, blend);
            int kh = b->h < keep ? b->h : keep, kw = b->w < keep ? b->w : keep;
            for (int p = 0; p < Cout; p++)
                for (int y = 0; y < kh; y++)
                    memcpy(out + ((size_t)p * total_h + y0 + y) * row_w + x0, b->d + ((size_t)p * b->h + y) * b->w, (size_t)kw * 4);
            x0 += kw;
        }
        y0 += t[i * nj].h < keep ? t[i * nj].h : keep;
    }
    for (int k = 0; k < ni * nj; k++) free(t[k].d);
    free(t);
    free(crop_in);
    *oH = total_h;
    *oW = row_w;
    return rc;
}

/* Tiled decode checked against separately decoded crops (tile latent 4 = 32 pixels, step 3 latents = 24
 * pixels, blend 8 pixels), then the tiled-vs-untiled difference on the same 8x8 latent. */
static void test_tiled_decode(vae_model *m) {
    const int h = 8, w = 8, f = 8, C = 16, O = 3, H = h * f, W = w * f;
    m->tile_latent_min_size = 4;
    m->tile_sample_min_size = 32;
    size_t nz = (size_t)C * h * w, ni = (size_t)O * H * W;
    float *z = malloc(nz * 4), *full = malloc(ni * 4), *tiled = malloc(ni * 4);
    float *zt = malloc(nz * 4), *t00 = malloc(ni * 4), *t01 = malloc(ni * 4);
    randn(z, nz);
    sd3_err err = {0};
    CHECK(vae_decode(m, z, 1, C, h, w, full, NULL, &err) == SD3_OK, "%s", err.msg);
    CHECK(vae_decode_tiled(m, z, 1, C, h, w, tiled, &err) == SD3_OK, "%s", err.msg);

    /* tile (0,0) alone: the output's top-left 24x24 is that tile's top-left 24x24, untouched by blending */
    crop(zt, z, C, h, w, 0, 0, 4, 4);
    CHECK(vae_decode(m, zt, 1, C, 4, 4, t00, NULL, &err) == SD3_OK, "%s", err.msg);
    /* tile (0,1) starts at latent column 3 */
    crop(zt, z, C, h, w, 0, 3, 4, 4);
    CHECK(vae_decode(m, zt, 1, C, 4, 4, t01, NULL, &err) == SD3_OK, "%s", err.msg);
    double worst_plain = 0, worst_blend = 0;
    for (int o = 0; o < O; o++)
        for (int y = 0; y < 24; y++) {
            for (int x = 0; x < 24; x++) {
                double d = fabs(tiled[((size_t)o * H + y) * W + x] - t00[((size_t)o * 32 + y) * 32 + x]);
                if (d > worst_plain) worst_plain = d;
            }
            /* output columns 24..31: tile (0,1)'s first 8 columns blended with tile (0,0)'s last 8:
             * a * (1 - x/8) + b * (x/8), the first row of tiles having no vertical blend */
            for (int x = 0; x < 8; x++) {
                float a = t00[((size_t)o * 32 + y) * 32 + 24 + x], b = t01[((size_t)o * 32 + y) * 32 + x];
                float want = a * (float)(1.0 - x / 8.0) + b * (float)(x / 8.0);
                double d = fabs(tiled[((size_t)o * H + y) * W + 24 + x] - want);
                if (d > worst_blend) worst_blend = d;
            }
        }
    CHECK(worst_plain == 0, "tiled decode: unblended corner differs from its tile by %g", worst_plain);
    CHECK(worst_blend == 0, "tiled decode: horizontal blend band differs from a*(1-x/8)+b*(x/8) by %g", worst_blend);

    int oh = 0, ow = 0;
    float *ref = calloc(ni * 2, 4);
    CHECK(ref_tiled(m, 1, z, C, h, w, ref, &oh, &ow) == 0, "reference tiling failed");
    CHECK(oh == H && ow == W, "reference tiled decode gives %dx%d", oh, ow);
    double dref = max_diff(ref, tiled, ni, NULL);
    CHECK(dref == 0, "tiled decode differs from the literal diffusers algorithm by %g", dref);
    free(ref);

    /* Tiled vs untiled: tiles of 4 latents see far less context than the whole 8x8 latent, with their own
     * GroupNorm statistics and their own mid-block attention, so on this random-weight VAE the two differ
     * by design (measured: max |diff| 1.17, mean 0.17 against mean |value| 0.24, correlation 0.73);
     * diffusers' own tiled output differs from its untiled output the same way. The bounds below only say
     * "the same picture": a misplaced or mis-blended tile drops the correlation towards 0. */
    double mean, mx = max_diff(full, tiled, ni, &mean), r = corr(full, tiled, ni), ma = mean_abs(full, ni);
    if (g_verbose)
        printf("  tiled vs untiled decode (8x8 latent, tiles 4/32, 9 tiles): max |diff| %.4g, mean %.4g, mean |value| "
               "%.3g, correlation %.4f\n", mx, mean, ma, r);
    CHECK(r > 0.6 && mean < ma, "tiled decode too far from untiled: max %g, mean %g, correlation %g", mx, mean, r);

    /* one tile covering the latent (tile 16 latents, step 12): tiled == untiled exactly */
    m->tile_latent_min_size = 16;
    m->tile_sample_min_size = 128;
    CHECK(vae_decode_tiled(m, z, 1, C, h, w, tiled, &err) == SD3_OK, "%s", err.msg);
    mx = max_diff(full, tiled, ni, NULL);
    CHECK(mx == 0, "single-tile tiled decode differs from untiled by %g", mx);
    CHECK(!vae_decode_wants_tiling(m, 16, 16) && vae_decode_wants_tiling(m, 8, 17), "decode tiling threshold");
    free(z); free(full); free(tiled); free(zt); free(t00); free(t01);
}

/* Tiled encode (tiles of 32 pixels = 4 latents, step 24 pixels, blend 1 latent) on a smooth random
 * image: pieces checked against crops encoded alone, then the difference to the untiled encode. */
static void test_tiled_encode(vae_model *m) {
    const int H = 64, W = 64, f = 8, L2 = 32, h = H / f, w = W / f;
    m->tile_sample_min_size = 32;
    m->tile_latent_min_size = 4;
    size_t nx = (size_t)3 * H * W, nm = (size_t)L2 * h * w;
    float *x = malloc(nx * 4), *full = malloc(nm * 4), *tiled = malloc(nm * 4), *xt = malloc(nx * 4);
    float *m00 = malloc(nm * 4), *m10 = malloc(nm * 4);
    /* a smooth image: low-frequency waves plus a little noise, in [-1, 1] */
    float *noise = malloc(nx * 4);
    randn(noise, nx);
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < H; y++)
            for (int xx = 0; xx < W; xx++) {
                double v = 0.6 * sin(0.09 * (c + 1) * xx + 0.05 * y) * cos(0.07 * y - 0.3 * c) + 0.05 * noise[(c * H + y) * W + xx];
                x[((size_t)c * H + y) * W + xx] = (float)(v > 1 ? 1 : v < -1 ? -1 : v);
            }
    sd3_err err = {0};
    CHECK(vae_encode(m, x, 1, 3, H, W, full, NULL, &err) == SD3_OK, "%s", err.msg);
    CHECK(vae_encode_tiled(m, x, 1, 3, H, W, tiled, &err) == SD3_OK, "%s", err.msg);

    crop(xt, x, 3, H, W, 0, 0, 32, 32);
    CHECK(vae_encode(m, xt, 1, 3, 32, 32, m00, NULL, &err) == SD3_OK, "%s", err.msg);
    crop(xt, x, 3, H, W, 24, 0, 32, 32);   /* tile (1,0) */
    CHECK(vae_encode(m, xt, 1, 3, 32, 32, m10, NULL, &err) == SD3_OK, "%s", err.msg);
    double worst_plain = 0, worst_blend = 0;
    for (int c = 0; c < L2; c++) {
        for (int y = 0; y < 3; y++)
            for (int xx = 0; xx < 3; xx++) {
                double d = fabs(tiled[((size_t)c * h + y) * w + xx] - m00[((size_t)c * 4 + y) * 4 + xx]);
                if (d > worst_plain) worst_plain = d;
            }
        /* latent row 3 = tile (1,0)'s row 0 blended with extent int(4 * 0.25) = 1: weight 1 - 0/1 on the
         * tile above's LAST row (a[aH - e + y]) and 0 on its own, so exactly tile (0,0)'s row 3
         * (columns 0..2: tile (1,0) is first in its row, no horizontal blend) */
        for (int xx = 0; xx < 3; xx++) {
            float a = m00[((size_t)c * 4 + 3) * 4 + xx], b = m10[((size_t)c * 4 + 0) * 4 + xx];
            double d = fabs(tiled[((size_t)c * h + 3) * w + xx] - (a * 1.0f + b * 0.0f));
            if (d > worst_blend) worst_blend = d;
        }
    }
    CHECK(worst_plain == 0, "tiled encode: unblended corner differs from its tile by %g", worst_plain);
    CHECK(worst_blend == 0, "tiled encode: blend row differs by %g", worst_blend);

    int oh = 0, ow = 0;
    float *ref = calloc(nm * 2, 4);
    CHECK(ref_tiled(m, 0, x, 3, H, W, ref, &oh, &ow) == 0, "reference tiling failed");
    CHECK(oh == h && ow == w, "reference tiled encode gives %dx%d", oh, ow);
    double dref = max_diff(ref, tiled, nm, NULL);
    CHECK(dref == 0, "tiled encode differs from the literal diffusers algorithm by %g", dref);
    free(ref);

    /* as for decode (measured on the mean half: max |diff| 1.74, mean 0.36 against mean |value| 0.44,
     * correlation 0.65; 32-pixel tiles give 4x4 latents, blended over int(4 * 0.25) = 1 latent) */
    size_t nmean = nm / 2;   /* the mean channels; logvar is the other half */
    double mean, mx = max_diff(full, tiled, nmean, &mean), r = corr(full, tiled, nmean), ma = mean_abs(full, nmean);
    if (g_verbose)
        printf("  tiled vs untiled encode (64x64 image, tiles 32/4, 9 tiles): latent mean max |diff| %.4g, mean %.4g, "
               "mean |value| %.3g, correlation %.4f\n", mx, mean, ma, r);
    CHECK(r > 0.5 && mean < ma, "tiled encode too far from untiled: max %g, mean %g, correlation %g", mx, mean, r);
    m->tile_sample_min_size = 64;
    m->tile_latent_min_size = 8;
    CHECK(!vae_encode_wants_tiling(m, 64, 64) && vae_encode_wants_tiling(m, 72, 64), "encode tiling threshold");
    free(x); free(full); free(tiled); free(xt); free(m00); free(m10); free(noise);
}

/* Tiled vs untiled at tiles that are a quarter of the picture per side (the regime tiling is meant for,
 * scaled down: SD3 tiles 1024 pixels): decode a random 32x32 latent with 16-latent tiles, encode a smooth
 * 256x256 image with 128-pixel tiles. Measured here: decode max |diff| 0.49, mean 0.036 (mean |value|
 * 0.23, correlation 0.987); encode mean max 1.6, mean 0.10 (mean |value| 0.47, correlation 0.976). The
 * difference shrinks as tiles grow (8x8 latent with 4-latent tiles: correlation 0.73), as it must when the
 * only cause is the context each tile lacks. */
static void test_tiling_agreement(vae_model *m) {
    const int h = 32, w = 32, H = 256, W = 256;
    size_t nz = (size_t)16 * h * w, ni = (size_t)3 * H * W, nm = (size_t)32 * h * w;
    float *z = malloc(nz * 4), *a = malloc(ni * 4), *b = malloc(ni * 4), *x = malloc(ni * 4);
    float *ma = malloc(nm * 4), *mb = malloc(nm * 4);
    randn(z, nz);
    m->tile_latent_min_size = 16;
    m->tile_sample_min_size = 128;
    sd3_err err = {0};
    CHECK(vae_decode(m, z, 1, 16, h, w, a, NULL, &err) == SD3_OK, "%s", err.msg);
    CHECK(vae_decode_tiled(m, z, 1, 16, h, w, b, &err) == SD3_OK, "%s", err.msg);
    double mean, mx = max_diff(a, b, ni, &mean), r = corr(a, b, ni), mabs = mean_abs(a, ni);
    if (g_verbose)
        printf("  tiled vs untiled decode (32x32 latent, tiles 16/128, 9 tiles): max |diff| %.4g, mean %.4g, mean "
               "|value| %.3g, correlation %.4f\n", mx, mean, mabs, r);
    CHECK(r > 0.97 && mean < 0.25 * mabs, "tiled decode too far from untiled: max %g, mean %g, correlation %g", mx, mean, r);

    for (int c = 0; c < 3; c++)
        for (int y = 0; y < H; y++)
            for (int xx = 0; xx < W; xx++)
                x[((size_t)c * H + y) * W + xx] = (float)(0.6 * sin(0.09 * (c + 1) * xx + 0.05 * y) * cos(0.07 * y - 0.3 * c));
    CHECK(vae_encode(m, x, 1, 3, H, W, ma, NULL, &err) == SD3_OK, "%s", err.msg);
    CHECK(vae_encode_tiled(m, x, 1, 3, H, W, mb, &err) == SD3_OK, "%s", err.msg);
    size_t nmean = nm / 2;
    mx = max_diff(ma, mb, nmean, &mean);
    r = corr(ma, mb, nmean);
    mabs = mean_abs(ma, nmean);
    if (g_verbose)
        printf("  tiled vs untiled encode (256x256 image, tiles 128/16, 9 tiles): latent mean max |diff| %.4g, mean "
               "%.4g, mean |value| %.3g, correlation %.4f\n", mx, mean, mabs, r);
    CHECK(r > 0.94 && mean < 0.3 * mabs, "tiled encode too far from untiled: max %g, mean %g, correlation %g", mx, mean, r);
    free(z); free(a); free(b); free(x); free(ma); free(mb);
}

int main(void) {
    g_root = getenv("SD3_GOLDEN") ? getenv("SD3_GOLDEN") : "../shared/golden";
    g_verbose = getenv("SD3_TEST_VERBOSE") != NULL;
    snprintf(g_vae_dir, sizeof g_vae_dir, "%s/tiny-sd3/vae", g_root);
    snprintf(g_tmp, sizeof g_tmp, "/tmp/sd3c_test_vae_XXXXXX");
    if (!mkdtemp(g_tmp)) { perror("mkdtemp"); return 2; }

    test_channel_mismatch();
    test_missing_tensor();
    test_single_file_infer();
    vae_model m;
    sd3_err err = {0};
    int ok = vae_open_dir(&m, g_vae_dir, &err) == SD3_OK;
    CHECK(ok, "tiny VAE: %s", err.msg);
    if (ok) {
        CHECK(m.tile_sample_min_size == 64 && m.tile_latent_min_size == 8, "default tiles %d / %d (want 64 / 8)",
              m.tile_sample_min_size, m.tile_latent_min_size);
        test_bad_forward_args(&m);
        test_tiled_decode(&m);
        test_tiled_encode(&m);
        test_tiling_agreement(&m);
        vae_free(&m);
    }
    for (int v = 0; v < 3; v++) {   /* remove what test_missing_tensor wrote */
        char p[600];
        const char *names[2] = {"diffusion_pytorch_model.safetensors", "config.json"};
        for (int k = 0; k < 2; k++) {
            snprintf(p, sizeof p, "%s/vae%d/%s", g_tmp, v, names[k]);
            unlink(p);
        }
        snprintf(p, sizeof p, "%s/vae%d", g_tmp, v);
        rmdir(p);
    }
    rmdir(g_tmp);
    TEST_MAIN_END("test_vae");
}

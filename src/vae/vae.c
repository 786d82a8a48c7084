/*
 * vae.c — VAE encoder and decoder forward (diffusers AutoencoderKL semantics, see vae.h), the tiled
 * variants (diffusers' tiled_decode / _tiled_encode), and the latent / image glue.
 *
 * Every forward runs twice through the same code: a dry run (r->dry) that only records the largest
 * activation and attention sizes, then the real run on one allocation carved into three ping-pong
 * activation buffers and four attention buffers. So the sizing can never disagree with the use.
 */
#include <math.h>
#include <string.h>
#include "kernels/kernels.h"
#include "vae/vae.h"

#define VAE_EPS 1e-6f   /* every GroupNorm of the VAE (resnet_eps, attention group_norm, conv_norm_out) */

/* One forward's state: the buffers (NULL in the dry run) and the sizes the dry run records. */
typedef struct vae_run {
    int dry;
    int N, G;                    /* batch, GroupNorm groups */
    size_t act_max, attn_max;    /* floats */
    float *buf[3];               /* act_max floats each */
    float *tok, *q, *k, *v;      /* attn_max floats each */
    const vae_tap *tap;
} vae_run;

/* An activation: which buffer holds it and its NCHW dims (N is the run's). */
typedef struct act {
    float *x;
    int C, H, W;
} act;

/* Record that an activation of C x H x W per batch item exists. */
static void need(vae_run *r, int C, int H, int W) {
    size_t n = (size_t)r->N * (size_t)C * (size_t)H * (size_t)W;
    if (n > r->act_max) r->act_max = n;
}

/* A buffer that is neither a nor b (by identity; both may be NULL in the dry run). */
static float *other(vae_run *r, const float *a, const float *b) {
    if (r->dry) return NULL;
    for (int i = 0; i < 3; i++)
        if (r->buf[i] != a && r->buf[i] != b) return r->buf[i];
    SD3_ASSERT(!"vae: no free buffer");
    return NULL;
}

/* Hand a finished stage output to the caller's observer (real run only). */
static void tap(vae_run *r, const char *name, act a) {
    if (!r->dry && r->tap && r->tap->fn) r->tap->fn(r->tap->user, name, a.x, r->N, a.C, a.H, a.W);
}

/* ---- ops: each records sizes in the dry run and computes in the real one ---------------------- */

/* y = conv(x) with a k x k kernel, stride s and padding (t, b, l, r). */
static act conv(vae_run *r, float *y, act x, const tensor *w, const tensor *b, int cout, int k, int s, int pt, int pb,
                int pl, int pr) {
    conv2d_params p = {r->N, x.C, x.H, x.W, cout, k, k, s, pt, pb, pl, pr, 1};
    act o = {y, cout, 0, 0};
    conv2d_out_size(&p, &o.H, &o.W);
    need(r, x.C, x.H, x.W);
    need(r, cout, o.H, o.W);
    if (!r->dry) k_conv2d(y, x.x, w, b, &p);
    return o;
}

/* y = SiLU(GroupNorm(x)) (y may be x). */
static act norm_silu(vae_run *r, float *y, act x, const tensor *w, const tensor *b) {
    act o = {y, x.C, x.H, x.W};
    need(r, x.C, x.H, x.W);
    if (!r->dry) {
        k_groupnorm(y, x.x, w, b, r->N, x.C, x.H * x.W, r->G, VAE_EPS);
        k_silu(y, y, (size_t)r->N * x.C * x.H * x.W);
    }
    return o;
}

/* ResnetBlock2D (temb none, output scale 1): out = shortcut(x) + conv2(SiLU(GN2(conv1(SiLU(GN1(x)))))). */
static act resnet(vae_run *r, act x, const vae_resnet *p) {
    float *A = other(r, x.x, NULL), *B = other(r, x.x, A);
    act h = norm_silu(r, A, x, &p->norm1_w, &p->norm1_b);
    h = conv(r, B, h, &p->conv1_w, &p->conv1_b, p->cout, 3, 1, 1, 1, 1, 1);
    h = norm_silu(r, B, h, &p->norm2_w, &p->norm2_b);
    h = conv(r, A, h, &p->conv2_w, &p->conv2_b, p->cout, 3, 1, 1, 1, 1, 1);
    size_t n = (size_t)r->N * h.C * h.H * h.W;
    if (p->cin != p->cout) {
        act sc = conv(r, B, x, &p->short_w, &p->short_b, p->cout, 1, 1, 0, 0, 0, 0);
        if (!r->dry) k_add(A, sc.x, A, n);
    } else if (!r->dry) {
        k_add(A, x.x, A, n);
    }
    return h;
}

/* Mid-block attention, in place on x: x += to_out(attention(to_q/k/v(GN(x)))) over H*W tokens, 1 head. */
static act attention(vae_run *r, act x, const vae_attn *p) {
    int C = x.C, HW = x.H * x.W, M = r->N * HW;
    size_t n = (size_t)r->N * C * HW;
    need(r, C, x.H, x.W);
    if (n > r->attn_max) r->attn_max = n;
    if (r->dry) return x;
    float *A = other(r, x.x, NULL);
    k_groupnorm(A, x.x, &p->norm_w, &p->norm_b, r->N, C, HW, r->G, VAE_EPS);
    for (int b = 0; b < r->N; b++)       /* NCHW -> tokens (N, HW, C) */
        for (int c = 0; c < C; c++)
            for (int t = 0; t < HW; t++) r->tok[((size_t)b * HW + t) * C + c] = A[((size_t)b * C + c) * HW + t];
    k_linear(r->q, r->tok, &p->q_w, &p->q_b, M, C, C);
    k_linear(r->k, r->tok, &p->k_w, &p->k_b, M, C, C);
    k_linear(r->v, r->tok, &p->v_w, &p->v_b, M, C, C);
    attn_params ap = {.B = r->N, .H = 1, .Tq = HW, .Tk = HW, .D = C, .q_ld = C, .k_ld = C, .v_ld = C, .o_ld = C,
                      .q_bstride = (int64_t)HW * C, .k_bstride = (int64_t)HW * C, .v_bstride = (int64_t)HW * C,
                      .o_bstride = (int64_t)HW * C, .scale = (float)(1.0 / sqrt((double)C)), .causal = 0, .bias = NULL};
    k_attention(r->tok, r->q, r->k, r->v, &ap);
    k_linear(A, r->tok, &p->out_w, &p->out_b, M, C, C);
    for (int b = 0; b < r->N; b++)       /* tokens -> NCHW, plus the residual */
        for (int c = 0; c < C; c++)
            for (int t = 0; t < HW; t++) {
                float *d = &x.x[((size_t)b * C + c) * HW + t];
                *d = A[((size_t)b * HW + t) * C + c] + *d;
            }
    return x;
}

/* UNetMidBlock2D: resnet, [attention], resnet. */
static act mid_block(vae_run *r, act x, const vae_mid *m) {
    x = resnet(r, x, &m->res[0]);
    if (m->has_attn) x = attention(r, x, &m->attn);
    return resnet(r, x, &m->res[1]);
}

/* ---- encoder / decoder --------------------------------------------------------------------------- */

/* x (N, in, H, W) -> moments (N, 2L, H/f, W/f) written to out. */
static void encoder_run(vae_run *r, const vae_model *m, const float *in, int H, int W, float *out) {
    const vae_config *c = &m->cfg;
    const vae_encoder *e = &m->enc;
    act x = {(float *)in, c->in_channels, H, W};
    need(r, x.C, H, W);
    x = conv(r, r->dry ? NULL : r->buf[0], x, &e->conv_in_w, &e->conv_in_b, c->block_out_channels[0], 3, 1, 1, 1, 1, 1);
    tap(r, "encoder_conv_in", x);
    char name[64];
    for (int i = 0; i < c->n_levels; i++) {
        const vae_level *L = &e->down[i];
        for (int j = 0; j < L->n_res; j++) x = resnet(r, x, &L->res[j]);
        if (L->has_resample)   /* Downsample2D: F.pad (0, 1, 0, 1), conv 3x3 stride 2 padding 0 */
            x = conv(r, other(r, x.x, NULL), x, &L->resample_w, &L->resample_b, x.C, 3, 2, 0, 1, 0, 1);
        snprintf(name, sizeof name, "encoder_down_block%d", i);
        tap(r, name, x);
    }
    x = mid_block(r, x, &e->mid);
    tap(r, "encoder_mid_block", x);
    x = norm_silu(r, other(r, x.x, NULL), x, &e->norm_out_w, &e->norm_out_b);
    int L2 = 2 * c->latent_channels;
    if (c->use_quant_conv) {
        x = conv(r, other(r, x.x, NULL), x, &e->conv_out_w, &e->conv_out_b, L2, 3, 1, 1, 1, 1, 1);
        x = conv(r, out, x, &m->quant_conv_w, &m->quant_conv_b, L2, 1, 1, 0, 0, 0, 0);
    } else {
        x = conv(r, out, x, &e->conv_out_w, &e->conv_out_b, L2, 3, 1, 1, 1, 1, 1);
    }
    tap(r, "encoder_moments", x);
}

/* z (N, L, h, w) -> image (N, out, h*f, w*f) written to out. */
static void decoder_run(vae_run *r, const vae_model *m, const float *z, int h, int w, float *out) {
    const vae_config *c = &m->cfg;
    const vae_decoder *d = &m->dec;
    int n = c->n_levels;
    act x = {(float *)z, c->latent_channels, h, w};
    need(r, x.C, h, w);
    if (c->use_post_quant_conv)
        x = conv(r, r->dry ? NULL : r->buf[1], x, &m->post_quant_conv_w, &m->post_quant_conv_b, x.C, 1, 1, 0, 0, 0, 0);
    x = conv(r, other(r, x.x, NULL), x, &d->conv_in_w, &d->conv_in_b, c->block_out_channels[n - 1], 3, 1, 1, 1, 1, 1);
    tap(r, "decoder_conv_in", x);
    x = mid_block(r, x, &d->mid);
    tap(r, "decoder_mid_block", x);
    char name[64];
    for (int i = 0; i < n; i++) {
        const vae_level *L = &d->up[i];
        for (int j = 0; j < L->n_res; j++) x = resnet(r, x, &L->res[j]);
        if (L->has_resample) {   /* Upsample2D: nearest 2x, then conv 3x3 padding 1 */
            float *U = other(r, x.x, NULL);
            need(r, x.C, 2 * x.H, 2 * x.W);
            if (!r->dry) k_upsample_nearest2x(U, x.x, r->N, x.C, x.H, x.W);
            act u = {U, x.C, 2 * x.H, 2 * x.W};
            x = conv(r, other(r, U, NULL), u, &L->resample_w, &L->resample_b, x.C, 3, 1, 1, 1, 1, 1);
        }
        snprintf(name, sizeof name, "decoder_up_block%d", i);
        tap(r, name, x);
    }
    x = norm_silu(r, other(r, x.x, NULL), x, &d->norm_out_w, &d->norm_out_b);
    conv(r, out, x, &d->conv_out_w, &d->conv_out_b, c->out_channels, 3, 1, 1, 1, 1, 1);
}

/* Allocate the run's buffers from the sizes its dry run recorded (one block, carved). */
static sd3_status run_alloc(vae_run *r, float **block, sd3_err *err) {
    size_t total = 3 * r->act_max + 4 * r->attn_max;
    if (r->act_max > SIZE_MAX / 16 || r->attn_max > SIZE_MAX / 32 || total > SIZE_MAX / sizeof(float))
        return sd3_errf(err, SD3_ERR_NOMEM, "vae: activation size overflows");
    *block = sd3_malloc(total * sizeof(float));
    if (!*block)
        return sd3_errf(err, SD3_ERR_NOMEM, "vae: cannot allocate %.1f MiB of activations",
                        (double)total * sizeof(float) / 1048576.0);
    float *p = *block;
    for (int i = 0; i < 3; i++, p += r->act_max) r->buf[i] = p;
    r->tok = p; p += r->attn_max;
    r->q = p; p += r->attn_max;
    r->k = p; p += r->attn_max;
    r->v = p;
    r->dry = 0;
    return SD3_OK;
}

/* ---- argument checks ---------------------------------------------------------------------------- */

/* Batch size within 1..VAE_MAX_BATCH. */
static sd3_status check_batch(int N, sd3_err *err) {
    if (N < 1 || N > VAE_MAX_BATCH)
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "vae: batch size %d out of range 1..%d", N, VAE_MAX_BATCH);
    return SD3_OK;
}

/* Latent channels, sizes and pixel count a decode accepts (errors name the value and the limit). */
static sd3_status check_decode_args(const vae_model *m, int N, int C, int h, int w, sd3_err *err) {
    int f = vae_downscale(&m->cfg);
    if (check_batch(N, err)) return err->status;
    if (C != m->cfg.latent_channels)
        return sd3_errf(err, SD3_ERR_SHAPE, "vae decode: latent has %d channels, the VAE expects latent_channels = %d", C,
                        m->cfg.latent_channels);
    if (h < 1 || w < 1 || h > VAE_MAX_SIDE / f || w > VAE_MAX_SIDE / f)
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "vae decode: latent size %dx%d out of range 1..%d per side", h, w,
                        VAE_MAX_SIDE / f);
    if ((int64_t)N * h * w * f * f > VAE_MAX_PIXELS)
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "vae decode: %d images of %dx%d pixels exceed the limit of %lld pixels "
                        "per call (decode fewer at a time)", N, h * f, w * f, (long long)VAE_MAX_PIXELS);
    return SD3_OK;
}

/* Image channels, sizes (multiples of the downscale factor) and pixel count an encode accepts. */
static sd3_status check_encode_args(const vae_model *m, int N, int C, int H, int W, sd3_err *err) {
    int f = vae_downscale(&m->cfg);
    if (check_batch(N, err)) return err->status;
    if (C != m->cfg.in_channels)
        return sd3_errf(err, SD3_ERR_SHAPE, "vae encode: image has %d channels, the VAE expects in_channels = %d", C,
                        m->cfg.in_channels);
    if (H < f || W < f || H > VAE_MAX_SIDE || W > VAE_MAX_SIDE)
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "vae encode: image size %dx%d out of range %d..%d per side", H, W, f,
                        VAE_MAX_SIDE);
    if ((int64_t)N * H * W > VAE_MAX_PIXELS)
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "vae encode: %d images of %dx%d pixels exceed the limit of %lld pixels "
                        "per call (encode fewer at a time)", N, H, W, (long long)VAE_MAX_PIXELS);
    if (H % f || W % f)
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "vae encode: image size %dx%d is not a multiple of %d (the VAE's "
                        "downscale factor)", H, W, f);
    return SD3_OK;
}

/* ---- public forward ------------------------------------------------------------------------------ */

sd3_status vae_decode(const vae_model *m, const float *z, int N, int C, int h, int w, float *img, const vae_tap *tp,
                      sd3_err *err) {
    sd3_status s = check_decode_args(m, N, C, h, w, err);
    if (s) return s;
    vae_run r = {.dry = 1, .N = N, .G = m->cfg.norm_num_groups, .tap = tp};
    decoder_run(&r, m, z, h, w, NULL);
    float *block = NULL;
    if ((s = run_alloc(&r, &block, err))) return s;
    decoder_run(&r, m, z, h, w, img);
    sd3_free(block);
    return SD3_OK;
}

sd3_status vae_encode(const vae_model *m, const float *x, int N, int C, int H, int W, float *moments, const vae_tap *tp,
                      sd3_err *err) {
    sd3_status s = check_encode_args(m, N, C, H, W, err);
    if (s) return s;
    vae_run r = {.dry = 1, .N = N, .G = m->cfg.norm_num_groups, .tap = tp};
    encoder_run(&r, m, x, H, W, NULL);
    float *block = NULL;
    if ((s = run_alloc(&r, &block, err))) return s;
    encoder_run(&r, m, x, H, W, moments);
    sd3_free(block);
    return SD3_OK;
}

/* ================================================================================================ */
/* Tiling (diffusers' tiled_decode / _tiled_encode, including the in-place order of the blends)      */
/* ================================================================================================ */

/* b's first rows take a's last rows: b[y] = a[aH - e + y] * (1 - y/e) + b[y] * (y/e), e = min(aH, bH, extent).
 * Tensors (N, C, H, W) with the same W. The weights are double quotients rounded to float, as torch
 * multiplies a float tensor by a Python float. */
static void blend_v(const float *a, int aH, float *b, int bH, int NC, int W, int extent) {
    int e = extent < aH ? extent : aH;
    if (bH < e) e = bH;
    for (int y = 0; y < e; y++) {
        float wa = (float)(1.0 - (double)y / e), wb = (float)((double)y / e);
        for (int nc = 0; nc < NC; nc++) {
            const float *ar = a + ((size_t)nc * aH + (aH - e + y)) * W;
            float *br = b + ((size_t)nc * bH + y) * W;
            for (int x = 0; x < W; x++) br[x] = ar[x] * wa + br[x] * wb;
        }
    }
}

/* The same along the width: tensors (N, C, H, W) with the same H. */
static void blend_h(const float *a, int aW, float *b, int bW, int NC, int H, int extent) {
    int e = extent < aW ? extent : aW;
    if (bW < e) e = bW;
    for (int x = 0; x < e; x++) {
        float wa = (float)(1.0 - (double)x / e), wb = (float)((double)x / e);
        for (int nc = 0; nc < NC; nc++)
            for (int y = 0; y < H; y++) {
                const float *ar = a + ((size_t)nc * H + y) * aW;
                float *br = b + ((size_t)nc * H + y) * bW;
                br[x] = ar[aW - e + x] * wa + br[x] * wb;
            }
    }
}

/* Geometry of one tiled pass: inputs tiled by `tin` with step `step`, outputs of `tout` per tile, blended
 * over `blend` and cropped to `keep` = tout - blend; `f_in`/`f_out` convert input to output units. */
typedef struct tiling {
    int tin, step, blend, keep, ni, nj;
} tiling;

/* Set up diffusers' tiling of an inH x inW input whose tiles of `tin` give outputs of `tout`; scale is
 * output per input unit (f for decode, 1/f for encode, given as num/den). */
static sd3_status tiling_plan(tiling *t, int inH, int inW, int tin, int tout, double overlap, int num, int den,
                              const char *what, sd3_err *err) {
    t->tin = tin;
    t->step = (int)(tin * (1 - overlap));
    t->blend = (int)(tout * overlap);
    t->keep = tout - t->blend;
    if (tin < 1 || tout < 1 || t->step < 1 || !(overlap >= 0 && overlap < 1) || (int64_t)tin * num != (int64_t)tout * den ||
        (int64_t)t->step * num != (int64_t)t->keep * den)
        return sd3_errf(err, SD3_ERR_UNSUPPORTED, "vae %s: tiles of %d give %d, step %d, kept %d (overlap %g): the tile "
                        "sizes do not fit together (tile_latent_min_size x downscale must equal tile_sample_min_size "
                        "and the step must match the kept part)", what, tin, tout, t->step, t->keep, overlap);
    t->ni = (inH + t->step - 1) / t->step;
    t->nj = (inW + t->step - 1) / t->step;
    return SD3_OK;
}

/* Run a tiled pass. dec selects decode (z -> image) or encode (image -> moments). */
static sd3_status tiled_run(const vae_model *m, int dec, const float *in, int N, int inH, int inW, float *out,
                            sd3_err *err) {
    const vae_config *c = &m->cfg;
    int f = vae_downscale(c);
    int cin = dec ? c->latent_channels : c->in_channels, cout = dec ? c->out_channels : 2 * c->latent_channels;
    int tin = dec ? m->tile_latent_min_size : m->tile_sample_min_size;
    int tout = dec ? m->tile_sample_min_size : m->tile_latent_min_size;
    tiling t = {0};
    sd3_status s = tiling_plan(&t, inH, inW, tin, tout, m->tile_overlap_factor, dec ? f : 1, dec ? 1 : f,
                               dec ? "tiled decode" : "tiled encode", err);
    if (s) return s;
    int outH = dec ? inH * f : inH / f, outW = dec ? inW * f : inW / f;
    int64_t ntiles = (int64_t)t.ni * t.nj;
    if (ntiles > 1000000) return sd3_errf(err, SD3_ERR_NOMEM, "vae: %lld tiles is too many", (long long)ntiles);

    /* sizes: every tile's output is kept (blending reads the finished neighbours above and left) */
    size_t *off = sd3_calloc((size_t)ntiles + 1, sizeof(size_t));
    if (!off) return sd3_errf(err, SD3_ERR_NOMEM, "vae: out of memory");
    int tH0 = inH < tin ? inH : tin, tW0 = inW < tin ? inW : tin;   /* the largest tile */
    for (int i = 0; i < t.ni; i++)
        for (int j = 0; j < t.nj; j++) {
            int th = inH - i * t.step < tin ? inH - i * t.step : tin, tw = inW - j * t.step < tin ? inW - j * t.step : tin;
            int oh = dec ? th * f : th / f, ow = dec ? tw * f : tw / f;
            off[i * t.nj + j + 1] = off[i * t.nj + j] + (size_t)N * cout * oh * ow;
        }
    /* one workspace for the largest tile, sized by a dry run */
    vae_run r = {.dry = 1, .N = N, .G = c->norm_num_groups, .tap = NULL};
    if (dec) decoder_run(&r, m, NULL, tH0, tW0, NULL);
    else encoder_run(&r, m, NULL, tH0, tW0, NULL);
    size_t act_max = r.act_max, attn_max = r.attn_max;
    size_t tile_in = (size_t)N * cin * tH0 * tW0;
    float *tiles = sd3_malloc((off[ntiles] + tile_in) * sizeof(float)), *block = NULL;
    if (!tiles) { sd3_free(off); return sd3_errf(err, SD3_ERR_NOMEM, "vae: cannot allocate the tiles"); }
    float *tin_buf = tiles + off[ntiles];
    if ((s = run_alloc(&r, &block, err))) { sd3_free(tiles); sd3_free(off); return s; }

    for (int i = 0; i < t.ni; i++)
        for (int j = 0; j < t.nj; j++) {
            int y0 = i * t.step, x0 = j * t.step;
            int th = inH - y0 < tin ? inH - y0 : tin, tw = inW - x0 < tin ? inW - x0 : tin;
            for (int nc = 0; nc < N * cin; nc++)   /* crop the input tile */
                for (int y = 0; y < th; y++)
                    memcpy(tin_buf + ((size_t)nc * th + y) * tw, in + ((size_t)nc * inH + y0 + y) * inW + x0,
                           (size_t)tw * sizeof(float));
            r.act_max = act_max;
            r.attn_max = attn_max;
            float *o = tiles + off[i * t.nj + j];
            if (dec) decoder_run(&r, m, tin_buf, th, tw, o);
            else encoder_run(&r, m, tin_buf, th, tw, o);
        }

    /* blend in raster order, in place, as diffusers does (a neighbour is final when it is read) */
    int oy = 0;
    for (int i = 0; i < t.ni; i++) {
        int ox = 0, th = inH - i * t.step < tin ? inH - i * t.step : tin;
        int oh = dec ? th * f : th / f;
        int kh = oh < t.keep ? oh : t.keep;
        for (int j = 0; j < t.nj; j++) {
            int tw = inW - j * t.step < tin ? inW - j * t.step : tin;
            int ow = dec ? tw * f : tw / f;
            float *b = tiles + off[i * t.nj + j];
            if (i > 0) {
                int ph = inH - (i - 1) * t.step < tin ? inH - (i - 1) * t.step : tin;
                blend_v(tiles + off[(i - 1) * t.nj + j], dec ? ph * f : ph / f, b, oh, N * cout, ow, t.blend);
            }
            if (j > 0) {
                int pw = inW - (j - 1) * t.step < tin ? inW - (j - 1) * t.step : tin;
                blend_h(tiles + off[i * t.nj + j - 1], dec ? pw * f : pw / f, b, ow, N * cout, oh, t.blend);
            }
            int kw = ow < t.keep ? ow : t.keep;
            if (oy + kh > outH || ox + kw > outW) continue;   /* cannot happen when tiling_plan passed */
            for (int nc = 0; nc < N * cout; nc++)
                for (int y = 0; y < kh; y++)
                    memcpy(out + ((size_t)nc * outH + oy + y) * outW + ox, b + ((size_t)nc * oh + y) * ow,
                           (size_t)kw * sizeof(float));
            ox += kw;
        }
        SD3_ASSERT(ox == outW);
        oy += kh;
    }
    SD3_ASSERT(oy == outH);
    sd3_free(block);
    sd3_free(tiles);
    sd3_free(off);
    return SD3_OK;
}

sd3_status vae_decode_tiled(const vae_model *m, const float *z, int N, int C, int h, int w, float *img, sd3_err *err) {
    sd3_status s = check_decode_args(m, N, C, h, w, err);
    if (s) return s;
    return tiled_run(m, 1, z, N, h, w, img, err);
}

sd3_status vae_encode_tiled(const vae_model *m, const float *x, int N, int C, int H, int W, float *moments, sd3_err *err) {
    sd3_status s = check_encode_args(m, N, C, H, W, err);
    if (s) return s;
    return tiled_run(m, 0, x, N, H, W, moments, err);
}

int vae_decode_wants_tiling(const vae_model *m, int h, int w) {
    return w > m->tile_latent_min_size || h > m->tile_latent_min_size;
}

int vae_encode_wants_tiling(const vae_model *m, int H, int W) {
    return W > m->tile_sample_min_size || H > m->tile_sample_min_size;
}

/* ================================================================================================ */
/* Pipeline glue (float32 arithmetic in torch's order; scalars are rounded to float as torch does)   */
/* ================================================================================================ */

void vae_latents_to_decoder(const vae_config *c, const float *x, float *z, size_t n) {
    float s = (float)c->scaling_factor, sh = (float)c->shift_factor;
    for (size_t i = 0; i < n; i++) z[i] = x[i] / s + sh;
}

void vae_latents_from_encoder(const vae_config *c, const float *x, float *y, size_t n) {
    float s = (float)c->scaling_factor, sh = (float)c->shift_factor;
    for (size_t i = 0; i < n; i++) y[i] = (x[i] - sh) * s;
}

void vae_moments_split(const float *moments, int N, int L, int64_t HW, float *mean, float *logvar) {
    size_t per = (size_t)L * (size_t)HW;
    for (int b = 0; b < N; b++) {
        const float *mb = moments + (size_t)b * 2 * per;
        memcpy(mean + (size_t)b * per, mb, per * sizeof(float));
        for (size_t i = 0; i < per; i++) {
            float v = mb[per + i];
            logvar[(size_t)b * per + i] = v < -30.0f ? -30.0f : v > 20.0f ? 20.0f : v;
        }
    }
}

void vae_posterior_std(const float *logvar, float *std, size_t n) {
    for (size_t i = 0; i < n; i++) std[i] = expf(0.5f * logvar[i]);
}

void vae_posterior_sample(const float *mean, const float *logvar, const float *noise, float *out, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = mean[i] + expf(0.5f * logvar[i]) * noise[i];
}

void vae_image_from_01(const float *x01, float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = 2.0f * x01[i] - 1.0f;
}

void vae_image_to_01(const float *x, float *x01, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float v = x[i] / 2.0f + 0.5f;
        x01[i] = v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v;   /* NaN stays NaN, as torch's clamp */
    }
}

void vae_image_to_u8_hwc(const float *x01, int N, int C, int H, int W, uint8_t *out) {
    for (int b = 0; b < N; b++)
        for (int c = 0; c < C; c++)
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++) {
                    float v = rintf(x01[(((size_t)b * C + c) * H + y) * W + x] * 255.0f);
                    out[(((size_t)b * H + y) * W + x) * C + c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
                }
}

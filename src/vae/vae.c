/*
 * vae.c — VAE encoder and decoder forward (diffusers AutoencoderKL semantics, see vae.h), the tiled
 * variants (diffusers' tiled_decode / _tiled_encode), and the latent / image glue.
 *
 * Memory: every activation is its own allocation, freed as soon as its last reader is done, and the
 * big steps reuse their input's memory, so a decode holds little more than its largest stage's input
 * and output: GroupNorm + SiLU run in place, a resnet's 1x1 shortcut is computed before its input is
 * normalised in place, the 3x3 convs whose output fits in their input's buffer write over it in bands
 * (conv3_inplace), and Upsample2D's conv reads the small tensor through conv2d_params.up instead of a
 * materialised 4x copy. All of it is bit-identical to the straightforward order: every output value is
 * the same dot product with the same operands. SD3 VAE decode, bf16 products, peak RSS with ~110 MB of
 * weights: 512^2 779 -> 528 MB, 1024^2 2816 -> 1685 MB (the peak is the last up block's first resnet:
 * its 256-channel 1024^2 input, 1 GB, plus its 128-channel shortcut, 512 MB), 2048^2 tiled 2977 -> 1731 MB.
 */
#include <math.h>
#include <string.h>
#include "kernels/kernels.h"
#include "vae/vae.h"

#define VAE_EPS 1e-6f   /* every GroupNorm of the VAE (resnet_eps, attention group_norm, conv_norm_out) */
/* Input floats per band of an in-place conv (~16 MB): large enough for efficient GEMM tiles, small next
 * to the activations it saves (a 256-channel 1024^2 activation is 1 GB). */
#define VAE_BAND_FLOATS ((size_t)4 << 20)

/* One forward's state. After a failed allocation every op only frees what it consumes. */
typedef struct vae_run {
    int N, G;                    /* batch, GroupNorm groups */
    int band_rows;               /* rows per band of the in-place convs (0: from VAE_BAND_FLOATS) */
    int failed;                  /* an allocation failed (the forward returns SD3_ERR_NOMEM) */
    size_t live;                 /* floats allocated now (activations, scratch, the spare) */
    float *band;                 /* the in-place convs' band buffers, grown as needed, freed by run_end */
    size_t band_n;
    float *spare;                /* the last activation dropped, kept for an act_new of about its size */
    size_t spare_n;
    const vae_tap *tap;
} vae_run;

/* An activation (NCHW, N is the run's): its data, dims, and the floats its buffer holds when this
 * forward owns it (a caller's input or output is not owned and never freed or written over). */
typedef struct act {
    float *x;
    int C, H, W;
    size_t cap;
    int owned;
} act;

/* N * C * H * W of an activation shape. */
static size_t numel(const vae_run *r, int C, int H, int W) {
    return (size_t)r->N * (size_t)C * (size_t)H * (size_t)W;
}

/* Free the spare activation buffer (if any). */
static void free_spare(vae_run *r) {
    if (!r->spare) return;
    sd3_free(r->spare);
    r->live -= r->spare_n;
    r->spare = NULL;
    r->spare_n = 0;
}

/* n floats of scratch counted in the run's live total; NULL (and r->failed) when out of memory. The
 * spare is freed first, so holding it never raises the peak. */
static float *run_alloc(vae_run *r, size_t n) {
    free_spare(r);
    if (r->failed) return NULL;
    float *p = n <= SIZE_MAX / sizeof(float) ? sd3_malloc(n * sizeof(float)) : NULL;
    if (!p) {
        r->failed = 1;
        return NULL;
    }
    r->live += n;
    return p;
}

/* Free scratch from run_alloc (p may be NULL). */
static void run_release(vae_run *r, float *p, size_t n) {
    if (!p) return;
    sd3_free(p);
    r->live -= n;
}

/* At least n floats of band scratch, kept for the rest of the run (fresh pages fault on every touch;
 * reusing one block keeps that cost once per run). NULL (and r->failed) when out of memory. */
static float *band_scratch(vae_run *r, size_t n) {
    if (r->failed) return NULL;
    if (n > r->band_n) {
        run_release(r, r->band, r->band_n);
        r->band = NULL;
        r->band_n = 0;
        if (!(r->band = run_alloc(r, n))) return NULL;
        r->band_n = n;
    }
    return r->band;
}

/* Free what the run keeps between ops (the band scratch and the spare). */
static void run_end(vae_run *r) {
    free_spare(r);
    run_release(r, r->band, r->band_n);
    r->band = NULL;
    r->band_n = 0;
}

/* A fresh owned activation of C x H x W per batch item (x NULL after a failure): the spare when it
 * holds n to n + n/8 floats (its pages are already mapped: no page faults), else a new buffer. */
static act act_new(vae_run *r, int C, int H, int W) {
    size_t n = numel(r, C, H, W);
    if (!r->failed && r->spare && r->spare_n >= n && r->spare_n - n <= n / 8) {
        act a = {r->spare, C, H, W, r->spare_n, 1};
        r->spare = NULL;
        r->spare_n = 0;
        return a;
    }
    act a = {run_alloc(r, n), C, H, W, n, 1};
    if (!a.x) a.owned = 0;
    return a;
}

/* Release an owned activation (it becomes the spare, the previous spare is freed); a borrowed one is
 * only forgotten. */
static void drop(vae_run *r, act *a) {
    if (a->owned && a->x) {
        free_spare(r);
        r->spare = a->x;
        r->spare_n = a->cap;
    }
    a->x = NULL;
    a->owned = 0;
}

/* Make a writable copy of a borrowed activation (the caller's input), so ops may work in place. */
static void own(vae_run *r, act *a) {
    if (a->owned || r->failed) return;
    act b = act_new(r, a->C, a->H, a->W);
    if (b.x) memcpy(b.x, a->x, numel(r, a->C, a->H, a->W) * sizeof(float));
    *a = b;
}

/* Hand a finished stage output to the caller's observer. */
static void tap(vae_run *r, const char *name, act a) {
    if (!r->failed && r->tap && r->tap->fn) r->tap->fn(r->tap->user, name, a.x, r->N, a.C, a.H, a.W);
}

/* ---- ops ---------------------------------------------------------------------------------------- */

/* conv(x) with a k x k kernel, stride s, padding (t, b, l, r) and input upsampling factor up, into dst
 * (the caller's output) or, when dst is NULL, a fresh activation. x is kept. */
static act conv_to(vae_run *r, float *dst, act x, const tensor *w, const tensor *b, int cout, int k, int s, int pt,
                   int pb, int pl, int pr, int up) {
    conv2d_params p = {r->N, x.C, x.H, x.W, cout, k, k, s, pt, pb, pl, pr, up};
    int Ho, Wo;
    conv2d_out_size(&p, &Ho, &Wo);
    act o = {dst, cout, Ho, Wo, 0, 0};
    if (!dst) o = act_new(r, cout, Ho, Wo);
    if (!r->failed && x.x) k_conv2d(o.x, x.x, w, b, &p);
    return o;
}

/* *x = conv3x3(x) (stride 1, padding 1) into x's own buffer when the output fits there (cout <= the
 * channels it was allocated for), else into a fresh one (x freed). In place, the output is computed in
 * bands of R rows from a copy of the band's input rows plus a halo row above and below, then stored
 * over the input; the next band's upper halo (input row r1 - 1, overwritten by this band for the
 * channels the output occupies) is kept in `halo` first. Every output pixel is the same dot product as
 * in one whole conv (same taps, same zero padding), so the bits are the same; the extra memory is two
 * band buffers instead of a second full activation. */
static void conv3_inplace(vae_run *r, act *x, const tensor *w, const tensor *b, int cout) {
    int H = x->H, W = x->W, Cin = x->C;
    size_t HW = (size_t)H * W;
    if (!x->owned || numel(r, cout, H, W) > x->cap) {
        act y = conv_to(r, NULL, *x, w, b, cout, 3, 1, 1, 1, 1, 1, 1);
        drop(r, x);
        *x = y;
        return;
    }
    int R = r->band_rows;
    if (R <= 0) {
        size_t rows = VAE_BAND_FLOATS / ((size_t)Cin * W);
        R = rows > (size_t)H ? H : (int)rows;
    }
    if (R < 1) R = 1;
    if (R > H) R = H;
    size_t tin_n = (size_t)Cin * (R + 2) * W, tout_n = (size_t)cout * R * W, halo_n = (size_t)Cin * W;
    float *tin = band_scratch(r, tin_n + tout_n + halo_n), *tout = tin ? tin + tin_n : NULL, *halo = tin ? tout + tout_n : NULL;
    if (tin) {
        for (int n = 0; n < r->N; n++) {
            /* item n's output starts at or below its input: items before n are consumed, and item n's
             * bands only overwrite input rows above the current band (its top halo is in `halo`) */
            const float *xi = x->x + (size_t)n * Cin * HW;
            float *yo = x->x + (size_t)n * cout * HW;
            for (int r0 = 0; r0 < H; r0 += R) {
                int r1 = r0 + R < H ? r0 + R : H;
                int a = r0 > 0 ? r0 - 1 : 0, last = r1 < H ? r1 : H - 1, hb = last - a + 1;   /* input rows a..last */
                for (int c = 0; c < Cin; c++) {
                    float *d = tin + (size_t)c * hb * W;
                    const float *src = xi + (size_t)c * HW + (size_t)r0 * W;
                    if (r0 > 0) {
                        memcpy(d, halo + (size_t)c * W, (size_t)W * sizeof(float));
                        d += W;
                    }
                    memcpy(d, src, (size_t)(last - r0 + 1) * W * sizeof(float));
                }
                if (r1 < H)   /* input row r1 - 1: the next band's upper halo */
                    for (int c = 0; c < Cin; c++)
                        memcpy(halo + (size_t)c * W, tin + ((size_t)c * hb + (r1 - 1 - a)) * W, (size_t)W * sizeof(float));
                conv2d_params p = {1, Cin, hb, W, cout, 3, 3, 1, r0 == 0, r1 == H, 1, 1, 1};
                k_conv2d(tout, tin, w, b, &p);
                for (int c = 0; c < cout; c++)
                    memcpy(yo + (size_t)c * HW + (size_t)r0 * W, tout + (size_t)c * (r1 - r0) * W,
                           (size_t)(r1 - r0) * W * sizeof(float));
            }
        }
        x->C = cout;
    }
}

/* x = SiLU(GroupNorm(x)) in place (a borrowed x is copied first). */
static void norm_silu_inplace(vae_run *r, act *x, const tensor *w, const tensor *b) {
    own(r, x);
    if (r->failed) return;
    k_groupnorm(x->x, x->x, w, b, r->N, x->C, x->H * x->W, r->G, VAE_EPS);
    k_silu(x->x, x->x, numel(r, x->C, x->H, x->W));
}

/* SiLU(GroupNorm(x)) into a fresh activation; x is kept. */
static act norm_silu_new(vae_run *r, act x, const tensor *w, const tensor *b) {
    act y = act_new(r, x.C, x.H, x.W);
    if (r->failed) return y;
    k_groupnorm(y.x, x.x, w, b, r->N, x.C, x.H * x.W, r->G, VAE_EPS);
    k_silu(y.x, y.x, numel(r, x.C, x.H, x.W));
    return y;
}

/* ResnetBlock2D (temb none, output scale 1): out = shortcut(x) + conv2(SiLU(GN2(conv1(SiLU(GN1(x)))))).
 * Consumes x. With a 1x1 shortcut it is computed first, so x's buffer can take GN1 in place and then
 * conv1's output; with the identity shortcut x stays as the residual and h gets its own buffer. */
static act resnet(vae_run *r, act x, const vae_resnet *p) {
    act sc, h;
    if (p->cin != p->cout) {
        sc = conv_to(r, NULL, x, &p->short_w, &p->short_b, p->cout, 1, 1, 0, 0, 0, 0, 1);
        h = x;
        norm_silu_inplace(r, &h, &p->norm1_w, &p->norm1_b);
    } else {
        sc = x;
        h = norm_silu_new(r, x, &p->norm1_w, &p->norm1_b);
    }
    conv3_inplace(r, &h, &p->conv1_w, &p->conv1_b, p->cout);
    norm_silu_inplace(r, &h, &p->norm2_w, &p->norm2_b);
    conv3_inplace(r, &h, &p->conv2_w, &p->conv2_b, p->cout);
    if (!r->failed) k_add(h.x, sc.x, h.x, numel(r, h.C, h.H, h.W));
    drop(r, &sc);
    return h;
}

/* Mid-block attention, in place on x: x += to_out(attention(to_q/k/v(GN(x)))) over H*W tokens, 1 head.
 * The attention kernel never forms the HW x HW matrix; the scratch is five C x HW buffers. */
static act attention(vae_run *r, act x, const vae_attn *p) {
    int C = x.C, HW = x.H * x.W, M = r->N * HW;
    size_t n = numel(r, C, x.H, x.W);
    own(r, &x);
    float *A = run_alloc(r, n), *tok = run_alloc(r, n), *q = run_alloc(r, n), *k = run_alloc(r, n), *v = run_alloc(r, n);
    if (!r->failed) {
        k_groupnorm(A, x.x, &p->norm_w, &p->norm_b, r->N, C, HW, r->G, VAE_EPS);
        for (int b = 0; b < r->N; b++)       /* NCHW -> tokens (N, HW, C) */
            for (int c = 0; c < C; c++)
                for (int t = 0; t < HW; t++) tok[((size_t)b * HW + t) * C + c] = A[((size_t)b * C + c) * HW + t];
        k_linear(q, tok, &p->q_w, &p->q_b, M, C, C);
        k_linear(k, tok, &p->k_w, &p->k_b, M, C, C);
        k_linear(v, tok, &p->v_w, &p->v_b, M, C, C);
        attn_params ap = {.B = r->N, .H = 1, .Tq = HW, .Tk = HW, .D = C, .q_ld = C, .k_ld = C, .v_ld = C, .o_ld = C,
                          .q_bstride = (int64_t)HW * C, .k_bstride = (int64_t)HW * C, .v_bstride = (int64_t)HW * C,
                          .o_bstride = (int64_t)HW * C, .scale = (float)(1.0 / sqrt((double)C)), .causal = 0, .bias = NULL};
        k_attention(tok, q, k, v, &ap);
        k_linear(A, tok, &p->out_w, &p->out_b, M, C, C);
        for (int b = 0; b < r->N; b++)       /* tokens -> NCHW, plus the residual */
            for (int c = 0; c < C; c++)
                for (int t = 0; t < HW; t++) {
                    float *d = &x.x[((size_t)b * C + c) * HW + t];
                    *d = A[((size_t)b * HW + t) * C + c] + *d;
                }
    }
    run_release(r, A, n);
    run_release(r, tok, n);
    run_release(r, q, n);
    run_release(r, k, n);
    run_release(r, v, n);
    return x;
}

/* UNetMidBlock2D: resnet, [attention], resnet. Consumes x. */
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
    act x = {(float *)in, c->in_channels, H, W, 0, 0};
    x = conv_to(r, NULL, x, &e->conv_in_w, &e->conv_in_b, c->block_out_channels[0], 3, 1, 1, 1, 1, 1, 1);
    tap(r, "encoder_conv_in", x);
    char name[64];
    for (int i = 0; i < c->n_levels; i++) {
        const vae_level *L = &e->down[i];
        for (int j = 0; j < L->n_res; j++) x = resnet(r, x, &L->res[j]);
        if (L->has_resample) {   /* Downsample2D: F.pad (0, 1, 0, 1), conv 3x3 stride 2 padding 0 */
            act y = conv_to(r, NULL, x, &L->resample_w, &L->resample_b, x.C, 3, 2, 0, 1, 0, 1, 1);
            drop(r, &x);
            x = y;
        }
        snprintf(name, sizeof name, "encoder_down_block%d", i);
        tap(r, name, x);
    }
    x = mid_block(r, x, &e->mid);
    tap(r, "encoder_mid_block", x);
    norm_silu_inplace(r, &x, &e->norm_out_w, &e->norm_out_b);
    int L2 = 2 * c->latent_channels;
    act o;
    if (c->use_quant_conv) {
        act y = conv_to(r, NULL, x, &e->conv_out_w, &e->conv_out_b, L2, 3, 1, 1, 1, 1, 1, 1);
        o = conv_to(r, out, y, &m->quant_conv_w, &m->quant_conv_b, L2, 1, 1, 0, 0, 0, 0, 1);
        drop(r, &y);
    } else {
        o = conv_to(r, out, x, &e->conv_out_w, &e->conv_out_b, L2, 3, 1, 1, 1, 1, 1, 1);
    }
    drop(r, &x);
    tap(r, "encoder_moments", o);
}

/* z (N, L, h, w) -> image (N, out, h*f, w*f) written to out. */
static void decoder_run(vae_run *r, const vae_model *m, const float *z, int h, int w, float *out) {
    const vae_config *c = &m->cfg;
    const vae_decoder *d = &m->dec;
    int n = c->n_levels;
    act x = {(float *)z, c->latent_channels, h, w, 0, 0};
    if (c->use_post_quant_conv)
        x = conv_to(r, NULL, x, &m->post_quant_conv_w, &m->post_quant_conv_b, x.C, 1, 1, 0, 0, 0, 0, 1);
    act y = conv_to(r, NULL, x, &d->conv_in_w, &d->conv_in_b, c->block_out_channels[n - 1], 3, 1, 1, 1, 1, 1, 1);
    drop(r, &x);
    x = y;
    tap(r, "decoder_conv_in", x);
    x = mid_block(r, x, &d->mid);
    tap(r, "decoder_mid_block", x);
    char name[64];
    for (int i = 0; i < n; i++) {
        const vae_level *L = &d->up[i];
        for (int j = 0; j < L->n_res; j++) x = resnet(r, x, &L->res[j]);
        if (L->has_resample) {   /* Upsample2D: nearest 2x, then conv 3x3 padding 1 (fused: up = 2) */
            y = conv_to(r, NULL, x, &L->resample_w, &L->resample_b, x.C, 3, 1, 1, 1, 1, 1, 2);
            drop(r, &x);
            x = y;
        }
        snprintf(name, sizeof name, "decoder_up_block%d", i);
        tap(r, name, x);
    }
    norm_silu_inplace(r, &x, &d->norm_out_w, &d->norm_out_b);
    conv_to(r, out, x, &d->conv_out_w, &d->conv_out_b, c->out_channels, 3, 1, 1, 1, 1, 1, 1);
    drop(r, &x);
}

/* The run's outcome: SD3_OK, or SD3_ERR_NOMEM when an activation could not be allocated. */
static sd3_status run_status(const vae_run *r, const char *what, sd3_err *err) {
    if (!r->failed) return SD3_OK;
    return sd3_errf(err, SD3_ERR_NOMEM, "vae %s: out of memory for the activations (%.1f MiB were allocated)", what,
                    (double)r->live * sizeof(float) / 1048576.0);
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
    vae_run r = {.N = N, .G = m->cfg.norm_num_groups, .band_rows = m->conv_band_rows, .tap = tp};
    decoder_run(&r, m, z, h, w, img);
    run_end(&r);
    return run_status(&r, "decode", err);
}

sd3_status vae_encode(const vae_model *m, const float *x, int N, int C, int H, int W, float *moments, const vae_tap *tp,
                      sd3_err *err) {
    sd3_status s = check_encode_args(m, N, C, H, W, err);
    if (s) return s;
    vae_run r = {.N = N, .G = m->cfg.norm_num_groups, .band_rows = m->conv_band_rows, .tap = tp};
    encoder_run(&r, m, x, H, W, moments);
    run_end(&r);
    return run_status(&r, "encode", err);
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
    size_t tile_in = (size_t)N * cin * tH0 * tW0;
    float *tiles = sd3_malloc((off[ntiles] + tile_in) * sizeof(float));
    if (!tiles) { sd3_free(off); return sd3_errf(err, SD3_ERR_NOMEM, "vae: cannot allocate the tiles"); }
    float *tin_buf = tiles + off[ntiles];

    for (int i = 0; i < t.ni; i++)
        for (int j = 0; j < t.nj; j++) {
            int y0 = i * t.step, x0 = j * t.step;
            int th = inH - y0 < tin ? inH - y0 : tin, tw = inW - x0 < tin ? inW - x0 : tin;
            for (int nc = 0; nc < N * cin; nc++)   /* crop the input tile */
                for (int y = 0; y < th; y++)
                    memcpy(tin_buf + ((size_t)nc * th + y) * tw, in + ((size_t)nc * inH + y0 + y) * inW + x0,
                           (size_t)tw * sizeof(float));
            vae_run r = {.N = N, .G = c->norm_num_groups, .band_rows = m->conv_band_rows, .tap = NULL};
            float *o = tiles + off[i * t.nj + j];
            if (dec) decoder_run(&r, m, tin_buf, th, tw, o);
            else encoder_run(&r, m, tin_buf, th, tw, o);
            run_end(&r);
            if ((s = run_status(&r, dec ? "tiled decode" : "tiled encode", err))) {
                sd3_free(tiles);
                sd3_free(off);
                return s;
            }
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

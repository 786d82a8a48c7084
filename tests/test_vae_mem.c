/* test_vae_mem.c — the pieces that keep the VAE decoder lean: the conv2d with a fused nearest upsample
 * (conv2d_params.up) against the scalar reference and against materialising the upsample first, and
 * the VAE forward's banded in-place convolutions (every band height gives the same bits).
 * Uses the tiny VAE of the golden data for the forward checks (skipped with a note when it is absent);
 * SD3_GOLDEN overrides the golden root (default ../shared/golden). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "kernels/kernels.h"
#include "test.h"
#include "vae/vae.h"

/* Deterministic uniforms in (-1, 1) (xorshift64); the values only need to be reproducible. */
static uint64_t g_rng = 0x243F6A8885A308D3ull;
static float urand(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (float)(((g_rng >> 11) + 0.5) * (2.0 / 9007199254740992.0) - 1.0);
}

/* n floats of uniform noise (sd3_malloc'd). */
static float *frand(size_t n) {
    float *x = sd3_malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) x[i] = urand();
    return x;
}

/* A weight tensor of the given dtype (F32/F16/BF16) and 4-D shape (1-D when d is 0), uniform values. */
static tensor wrand(dtype dt, int a, int b, int c, int d) {
    int64_t shape[4] = {a, b, c, d};
    tensor t;
    sd3_err err;
    SD3_ASSERT(tensor_alloc(&t, dt, d ? 4 : 1, shape, &err) == SD3_OK);
    for (int64_t i = 0; i < tensor_numel(&t); i++) {
        float v = urand();
        if (dt == DT_F32) ((float *)t.data)[i] = v;
        else if (dt == DT_BF16) ((uint16_t *)t.data)[i] = f32_to_bf16(v);
        else ((uint16_t *)t.data)[i] = f32_to_fp16(v);
    }
    return t;
}

/* ---------------------------------------------------------------------------------------------- */
/* conv2d with a fused upsample                                                                    */
/* ---------------------------------------------------------------------------------------------- */

/* One case: the fused conv equals upsample-then-conv bit for bit (ref and fast, each ISA cap and
 * precision mode), and the fast fused conv is within F32 rounding of the ref one. */
static void conv_up_case(conv2d_params p, dtype wdt, int with_bias) {
    int u = p.up;
    conv2d_params q = p;   /* the same conv on the materialised upsampled input */
    q.H *= u;
    q.W *= u;
    q.up = 0;
    int Ho, Wo, Ho2, Wo2;
    conv2d_out_size(&p, &Ho, &Wo);
    conv2d_out_size(&q, &Ho2, &Wo2);
    CHECK(Ho == Ho2 && Wo == Wo2, "conv up=%d: out size %dx%d vs %dx%d", u, Ho, Wo, Ho2, Wo2);
    size_t nx = (size_t)p.N * p.Cin * p.H * p.W, nu = nx * u * u, ny = (size_t)p.N * p.Cout * Ho * Wo;
    tensor w = wrand(wdt, p.Cout, p.Cin, p.kh, p.kw), b = {0};
    if (with_bias) b = wrand(DT_F32, p.Cout, 0, 0, 0);
    const tensor *bp = with_bias ? &b : NULL;
    float *x = frand(nx), *xu = sd3_malloc(sizeof(float) * nu), *y = sd3_malloc(sizeof(float) * ny),
          *y2 = sd3_malloc(sizeof(float) * ny), *yr = sd3_malloc(sizeof(float) * ny);
    /* the reference input: an explicit nearest upsample (u = 2 through the kernel, else by hand) */
    if (u == 2) k_upsample_nearest2x_ref(xu, x, p.N, p.Cin, p.H, p.W);
    else
        for (int64_t nc = 0; nc < (int64_t)p.N * p.Cin; nc++)
            for (int i = 0; i < q.H; i++)
                for (int j = 0; j < q.W; j++) xu[(nc * q.H + i) * q.W + j] = x[(nc * p.H + i / u) * p.W + j / u];
    k_conv2d_ref(yr, x, &w, bp, &p);
    k_conv2d_ref(y2, xu, &w, bp, &q);
    CHECK(!memcmp(yr, y2, sizeof(float) * ny), "conv_ref up=%d Cin=%d %dx%d: fused differs from upsample + conv", u,
          p.Cin, p.H, p.W);
    static const int caps[] = {K_ISA_PORTABLE, K_ISA_AVX2, K_ISA_ANY};
    for (int ci = 0; ci < 3; ci++)
        for (int bf = 0; bf < 2; bf++) {
            int old_cap = k_set_isa_cap(caps[ci]), old_prec = k_set_precision(bf);
            k_conv2d(y, x, &w, bp, &p);
            k_conv2d(y2, xu, &w, bp, &q);
            CHECK(!memcmp(y, y2, sizeof(float) * ny), "conv [%s] bf16=%d up=%d Cin=%d %dx%d k%d s%d: fused differs from "
                  "upsample + conv", k_conv2d_variant(), bf, u, p.Cin, p.H, p.W, p.kh, p.stride);
            if (!bf) {   /* F32 products: within a few ulps of the sum of |terms| */
                double worst = 0;
                for (size_t i = 0; i < ny; i++) {
                    double d = fabs((double)y[i] - yr[i]), lim = 1e-5 * (p.Cin * p.kh * p.kw + 1);
                    if (!(d <= lim)) worst = d > worst || d != d ? d : worst;
                }
                CHECK(worst == 0, "conv [%s] up=%d Cin=%d %dx%d: fast vs ref differ by %g", k_conv2d_variant(), u, p.Cin,
                      p.H, p.W, worst);
            }
            k_set_precision(old_prec);
            k_set_isa_cap(old_cap);
        }
    sd3_free(x); sd3_free(xu); sd3_free(y); sd3_free(y2); sd3_free(yr);
    tensor_free(&w);
    tensor_free(&b);
}

/* The VAE's Upsample2D conv (3x3 pad 1 on the 2x image) and odd cases: 1x1, stride 2, asymmetric
 * padding, factor 3, a 1x1 image, wide rows crossing packing tiles. */
static void test_conv_upsample(void) {
    /* N, Cin, H, W, Cout, kh, kw, stride, pad t, b, l, r, up */
    static const conv2d_params cases[] = {
        {1, 8, 6, 7, 5, 3, 3, 1, 1, 1, 1, 1, 2},     /* Upsample2D conv */
        {2, 3, 5, 5, 4, 3, 3, 1, 1, 1, 1, 1, 2},     /* batch */
        {1, 16, 9, 40, 16, 3, 3, 1, 1, 1, 1, 1, 2},  /* output rows longer than a packing tile */
        {1, 5, 4, 6, 3, 1, 1, 1, 0, 0, 0, 0, 2},     /* 1x1 (not the plain GEMM path) */
        {1, 4, 5, 5, 3, 3, 3, 2, 0, 1, 0, 1, 2},     /* stride 2, asymmetric padding */
        {1, 3, 4, 5, 2, 3, 3, 1, 1, 1, 1, 1, 3},     /* factor 3 */
        {1, 6, 1, 1, 4, 3, 3, 1, 1, 1, 1, 1, 2},     /* 1x1 image */
        {1, 2, 3, 4, 2, 2, 3, 1, 2, 0, 1, 2, 2},     /* 2x3 kernel, uneven padding */
    };
    dtype dts[3] = {DT_F32, DT_BF16, DT_F16};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        for (int bias = 0; bias < 2; bias++) conv_up_case(cases[c], dts[(c + bias) % 3], bias);
}

/* ---------------------------------------------------------------------------------------------- */
/* The lean forward against the straightforward one                                                */
/* ---------------------------------------------------------------------------------------------- */

/* A plain forward written the obvious way (a fresh buffer per op, the upsample materialised), with the
 * same kernels: the lean forward must give the same bits. Buffers are leaked into a list freed at the end. */
typedef struct plain { int N, G; float *keep[512]; int nkeep; } plain;

/* A fresh buffer of n floats, freed by plain_free. */
static float *pbuf(plain *p, size_t n) {
    SD3_ASSERT(p->nkeep < 512);
    return p->keep[p->nkeep++] = sd3_malloc(sizeof(float) * n);
}
/* Free every buffer pbuf handed out. */
static void plain_free(plain *p) {
    for (int i = 0; i < p->nkeep; i++) sd3_free(p->keep[i]);
    p->nkeep = 0;
}

/* conv into a fresh buffer; C, H and W become the output dims. */
static float *pconv(plain *p, const float *x, int *C, int *H, int *W, const tensor *w, const tensor *b, int cout, int k,
                    int s, int pt, int pb, int pl, int pr) {
    conv2d_params cp = {.N = p->N, .Cin = *C, .H = *H, .W = *W, .Cout = cout, .kh = k, .kw = k, .stride = s, .pad_t = pt,
                        .pad_b = pb, .pad_l = pl, .pad_r = pr};
    int Ho, Wo;
    conv2d_out_size(&cp, &Ho, &Wo);
    float *y = pbuf(p, (size_t)p->N * cout * Ho * Wo);
    k_conv2d(y, x, w, b, &cp);
    *C = cout, *H = Ho, *W = Wo;
    return y;
}

/* SiLU(GroupNorm(x)) into a fresh buffer. */
static float *pnorm(plain *p, const float *x, int C, int H, int W, const tensor *w, const tensor *b) {
    size_t n = (size_t)p->N * C * H * W;
    float *y = pbuf(p, n);
    k_groupnorm(y, x, w, b, p->N, C, H * W, p->G, 1e-6f);
    k_silu(y, y, n);
    return y;
}

/* ResnetBlock2D, plainly. */
static float *presnet(plain *p, const float *x, int *C, int H, int W, const vae_resnet *r) {
    int c = *C, h = H, w = W;
    float *t = pnorm(p, x, c, h, w, &r->norm1_w, &r->norm1_b);
    t = pconv(p, t, &c, &h, &w, &r->conv1_w, &r->conv1_b, r->cout, 3, 1, 1, 1, 1, 1);
    t = pnorm(p, t, c, h, w, &r->norm2_w, &r->norm2_b);
    t = pconv(p, t, &c, &h, &w, &r->conv2_w, &r->conv2_b, r->cout, 3, 1, 1, 1, 1, 1);
    const float *sc = x;
    if (r->cin != r->cout) {
        int c2 = *C, h2 = H, w2 = W;
        sc = pconv(p, x, &c2, &h2, &w2, &r->short_w, &r->short_b, r->cout, 1, 1, 0, 0, 0, 0);
    }
    float *o = pbuf(p, (size_t)p->N * c * h * w);
    k_add(o, sc, t, (size_t)p->N * c * h * w);
    *C = c;
    return o;
}

/* Mid-block attention, plainly (the same sequence of kernels as diffusers' Attention). */
static float *pattn(plain *p, const float *x, int C, int H, int W, const vae_attn *a) {
    int HW = H * W, M = p->N * HW;
    size_t n = (size_t)p->N * C * HW;
    float *g = pbuf(p, n), *tok = pbuf(p, n), *q = pbuf(p, n), *k = pbuf(p, n), *v = pbuf(p, n), *o = pbuf(p, n),
          *pr = pbuf(p, n), *y = pbuf(p, n);
    k_groupnorm(g, x, &a->norm_w, &a->norm_b, p->N, C, HW, p->G, 1e-6f);
    for (int b = 0; b < p->N; b++)
        for (int c = 0; c < C; c++)
            for (int t = 0; t < HW; t++) tok[((size_t)b * HW + t) * C + c] = g[((size_t)b * C + c) * HW + t];
    k_linear(q, tok, &a->q_w, &a->q_b, M, C, C);
    k_linear(k, tok, &a->k_w, &a->k_b, M, C, C);
    k_linear(v, tok, &a->v_w, &a->v_b, M, C, C);
    attn_params ap = {.B = p->N, .H = 1, .Tq = HW, .Tk = HW, .D = C, .q_ld = C, .k_ld = C, .v_ld = C, .o_ld = C,
                      .q_bstride = (int64_t)HW * C, .k_bstride = (int64_t)HW * C, .v_bstride = (int64_t)HW * C,
                      .o_bstride = (int64_t)HW * C, .scale = (float)(1.0 / sqrt((double)C))};
    k_attention(o, q, k, v, &ap);
    k_linear(pr, o, &a->out_w, &a->out_b, M, C, C);
    for (int b = 0; b < p->N; b++)
        for (int c = 0; c < C; c++)
            for (int t = 0; t < HW; t++) {
                size_t i = ((size_t)b * C + c) * HW + t;
                y[i] = pr[((size_t)b * HW + t) * C + c] + x[i];
            }
    return y;
}

/* The decoder, plainly: post_quant_conv?, conv_in, mid, up blocks (materialised 2x upsample), out. */
static void plain_decode(const vae_model *m, const float *z, int N, int h, int w, float *img) {
    const vae_config *c = &m->cfg;
    const vae_decoder *d = &m->dec;
    plain p = {.N = N, .G = c->norm_num_groups};
    int C = c->latent_channels, H = h, W = w, n = c->n_levels;
    const float *x = z;
    if (c->use_post_quant_conv) x = pconv(&p, x, &C, &H, &W, &m->post_quant_conv_w, &m->post_quant_conv_b, C, 1, 1, 0, 0, 0, 0);
    float *t = pconv(&p, x, &C, &H, &W, &d->conv_in_w, &d->conv_in_b, c->block_out_channels[n - 1], 3, 1, 1, 1, 1, 1);
    t = presnet(&p, t, &C, H, W, &d->mid.res[0]);
    if (d->mid.has_attn) t = pattn(&p, t, C, H, W, &d->mid.attn);
    t = presnet(&p, t, &C, H, W, &d->mid.res[1]);
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < d->up[i].n_res; j++) t = presnet(&p, t, &C, H, W, &d->up[i].res[j]);
        if (d->up[i].has_resample) {
            float *u = pbuf(&p, (size_t)N * C * 4 * H * W);
            k_upsample_nearest2x(u, t, N, C, H, W);
            H *= 2, W *= 2;
            t = pconv(&p, u, &C, &H, &W, &d->up[i].resample_w, &d->up[i].resample_b, C, 3, 1, 1, 1, 1, 1);
        }
    }
    t = pnorm(&p, t, C, H, W, &d->norm_out_w, &d->norm_out_b);
    float *o = pconv(&p, t, &C, &H, &W, &d->conv_out_w, &d->conv_out_b, c->out_channels, 3, 1, 1, 1, 1, 1);
    memcpy(img, o, sizeof(float) * (size_t)N * C * H * W);
    plain_free(&p);
}

/* The encoder, plainly. */
static void plain_encode(const vae_model *m, const float *img, int N, int H, int W, float *mom) {
    const vae_config *c = &m->cfg;
    const vae_encoder *e = &m->enc;
    plain p = {.N = N, .G = c->norm_num_groups};
    int C = c->in_channels;
    float *t = pconv(&p, img, &C, &H, &W, &e->conv_in_w, &e->conv_in_b, c->block_out_channels[0], 3, 1, 1, 1, 1, 1);
    for (int i = 0; i < c->n_levels; i++) {
        for (int j = 0; j < e->down[i].n_res; j++) t = presnet(&p, t, &C, H, W, &e->down[i].res[j]);
        if (e->down[i].has_resample)
            t = pconv(&p, t, &C, &H, &W, &e->down[i].resample_w, &e->down[i].resample_b, C, 3, 2, 0, 1, 0, 1);
    }
    t = presnet(&p, t, &C, H, W, &e->mid.res[0]);
    if (e->mid.has_attn) t = pattn(&p, t, C, H, W, &e->mid.attn);
    t = presnet(&p, t, &C, H, W, &e->mid.res[1]);
    t = pnorm(&p, t, C, H, W, &e->norm_out_w, &e->norm_out_b);
    t = pconv(&p, t, &C, &H, &W, &e->conv_out_w, &e->conv_out_b, 2 * c->latent_channels, 3, 1, 1, 1, 1, 1);
    if (c->use_quant_conv) t = pconv(&p, t, &C, &H, &W, &m->quant_conv_w, &m->quant_conv_b, C, 1, 1, 0, 0, 0, 0);
    memcpy(mom, t, sizeof(float) * (size_t)N * C * H * W);
    plain_free(&p);
}

/* Decode and encode of the tiny VAE: the lean forward equals the plain one bit for bit, for automatic
 * bands and bands of 1, 2 and 3 rows (every band edge case: first, middle, last, a short last band),
 * batch 1 and 2 (the in-place conv's items shift down when the channels shrink), F32 and bf16 products. */
static void test_forward(const char *vae_dir) {
    vae_model m;
    sd3_err err = {0};
    if (vae_open_dir(&m, vae_dir, &err) != SD3_OK) {
        printf("note: no tiny VAE at %s (%s): forward checks skipped\n", vae_dir, err.msg);
        return;
    }
    const int h = 7, w = 5;   /* 56 x 40 pixels: odd latent sides, short last bands */
    int f = vae_downscale(&m.cfg), L = m.cfg.latent_channels;
    for (int N = 1; N <= 2; N++)
        for (int bf = 0; bf < 2; bf++) {
            int old_prec = k_set_precision(bf);
            size_t nz = (size_t)N * L * h * w, ni = (size_t)N * 3 * h * f * w * f, nm = 2 * nz;
            float *z = frand(nz), *img = frand(ni), *ref = sd3_malloc(sizeof(float) * ni), *out = sd3_malloc(sizeof(float) * ni);
            float *mref = sd3_malloc(sizeof(float) * nm), *mout = sd3_malloc(sizeof(float) * nm);
            plain_decode(&m, z, N, h, w, ref);
            plain_encode(&m, img, N, h * f, w * f, mref);
            static const int bands[] = {0, 1, 2, 3};
            for (int bi = 0; bi < 4; bi++) {
                m.conv_band_rows = bands[bi];
                memset(out, 0, sizeof(float) * ni);
                CHECK(vae_decode(&m, z, N, L, h, w, out, NULL, &err) == SD3_OK, "decode: %s", err.msg);
                CHECK(!memcmp(out, ref, sizeof(float) * ni), "decode N=%d bf16=%d band %d rows: differs from the plain "
                      "forward", N, bf, bands[bi]);
                memset(mout, 0, sizeof(float) * nm);
                CHECK(vae_encode(&m, img, N, 3, h * f, w * f, mout, NULL, &err) == SD3_OK, "encode: %s", err.msg);
                CHECK(!memcmp(mout, mref, sizeof(float) * nm), "encode N=%d bf16=%d band %d rows: differs from the plain "
                      "forward", N, bf, bands[bi]);
            }
            m.conv_band_rows = 0;
            k_set_precision(old_prec);
            sd3_free(z); sd3_free(img); sd3_free(ref); sd3_free(out); sd3_free(mref); sd3_free(mout);
        }
    vae_free(&m);
}

/* A line "Key:  N kB" of /proc/self/status in MB (-1 when unreadable). */
static double status_mb(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kb = -1;
    size_t n = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, n)) kb = atof(line + n);
    if (f) fclose(f);
    return kb >= 0 ? kb / 1024.0 : -1;
}

/* Reset the peak-RSS mark (VmHWM) to the current RSS (Linux clear_refs 5); 0 on success. */
static int rss_reset(void) {
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (!f) return -1;
    int bad = fputs("5", f) < 0;
    bad |= fclose(f) != 0;
    return bad ? -1 : 0;
}

/* The memory the lean decode adds: the tiny VAE at 1024^2 pixels, whose largest activation is the
 * 32-channel 1024^2 input of the last up block's first resnet (128 MB). The straightforward forward held
 * three such buffers (and the materialised upsample); the lean one holds that input, its 16-channel
 * shortcut (64 MB) and ~25 MB of band buffers, so the peak RSS it adds must stay under 2x the activation
 * (the straightforward forward added over 3x). */
static void test_decode_peak(const char *vae_dir) {
#if defined(__SANITIZE_ADDRESS__)
    (void)vae_dir;
    printf("note: ASan build: peak RSS check skipped\n");
#else
    vae_model m;
    sd3_err err = {0};
    if (vae_open_dir(&m, vae_dir, &err) != SD3_OK) return;
    int h = 128, w = 128, f = vae_downscale(&m.cfg), L = m.cfg.latent_channels, n = m.cfg.n_levels;
    size_t nz = (size_t)L * h * w, ni = (size_t)3 * h * f * w * f;
    float *z = frand(nz), *img = sd3_malloc(sizeof(float) * ni);
    memset(img, 0, sizeof(float) * ni);   /* touched before the mark: the output is the caller's */
    double biggest = (double)m.cfg.block_out_channels[n > 1 ? 1 : 0] * h * f * w * f * sizeof(float) / 1048576.0;
    double rss0 = status_mb("VmRSS:");
    if (rss_reset() != 0 || rss0 < 0) {
        printf("note: cannot reset the peak RSS mark: peak check skipped\n");
    } else {
        CHECK(vae_decode(&m, z, 1, L, h, w, img, NULL, &err) == SD3_OK, "decode: %s", err.msg);
        double added = status_mb("VmHWM:") - rss0;
        CHECK(added <= 2.0 * biggest, "1024^2 tiny decode added %.0f MB of peak RSS (largest activation %.0f MB)", added,
              biggest);
        if (getenv("SD3_TEST_VERBOSE")) printf("  tiny 1024^2 decode: +%.0f MB peak RSS, largest activation %.0f MB\n", added, biggest);
    }
    sd3_free(z);
    sd3_free(img);
    vae_free(&m);
#endif
}

int main(void) {
    test_conv_upsample();
    const char *root = getenv("SD3_GOLDEN") ? getenv("SD3_GOLDEN") : "../shared/golden";
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tiny-sd3/vae", root);
    test_forward(dir);
    test_decode_peak(dir);
    TEST_MAIN_END("test_vae_mem");
}

/* image_resize.c — Pillow's LANCZOS resize of 8-bit images, reimplemented to give the same bytes
 * (see image_resize.h for the algorithm and why). Scalar code: it runs once per generation, on one
 * image, and exactness matters more than speed here. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "io/image_resize.h"

/* Fixed-point fraction bits of the 8-bit path: 32 bits less 8 for the value and 2 for the overshoot of a
 * kernel with negative lobes (Pillow's PRECISION_BITS). */
#define RS_PRECISION_BITS (32 - 8 - 2)
#define RS_LANCZOS_SUPPORT 3.0

/* One axis of the resize: for each output index, the first source index it reads, how many it reads,
 * and that many fixed-point weights (ksize slots per output index, unused ones zero). */
typedef struct rs_axis {
    int ksize;
    int *first, *count;   /* (out) */
    int32_t *k;           /* (out, ksize) */
} rs_axis;

/* sin(pi x) / (pi x), 1 at 0: the ideal low-pass kernel. */
static double rs_sinc(double x) {
    if (x == 0.0) return 1.0;
    x = x * M_PI;
    return sin(x) / x;
}

/* The Lanczos-3 window: sinc(x) sinc(x/3) on [-3, 3), 0 outside (Pillow's half-open interval). */
static double rs_lanczos(double x) {
    if (-3.0 <= x && x < 3.0) return rs_sinc(x) * rs_sinc(x / 3.0);
    return 0.0;
}

/* Free one axis' weights (a zeroed axis is fine). */
static void rs_axis_free(rs_axis *a) {
    free(a->first);
    free(a->count);
    free(a->k);
    memset(a, 0, sizeof *a);
}

/* Weights of one axis mapping in_size source samples onto out_size, the whole source range (Pillow's box
 * (0, in_size), whose float difference is the scale's numerator). The kernel is widened by the downscale
 * factor (never narrowed); each output's span is rounded from its centre +- support and clamped to the
 * source; the double weights are normalised to sum 1 and then rounded half away from zero to
 * RS_PRECISION_BITS fraction bits. Returns 0, or -1 when memory runs out. */
static int rs_axis_make(rs_axis *a, int in_size, int out_size) {
    memset(a, 0, sizeof *a);
    double scale = (double)(float)in_size / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = RS_LANCZOS_SUPPORT * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    a->ksize = ksize;
    a->first = malloc(sizeof(int) * (size_t)out_size);
    a->count = malloc(sizeof(int) * (size_t)out_size);
    a->k = calloc((size_t)out_size * ksize, sizeof(int32_t));
    double *w = malloc(sizeof(double) * (size_t)ksize);
    if (!a->first || !a->count || !a->k || !w) {
        free(w);
        rs_axis_free(a);
        return -1;
    }
    double ss = 1.0 / filterscale;
    for (int xx = 0; xx < out_size; xx++) {
        double center = (xx + 0.5) * scale;
        int xmin = (int)(center - support + 0.5);   /* truncation toward zero, as in C's cast */
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double ww = 0.0;
        for (int x = 0; x < xmax; x++) {
            w[x] = rs_lanczos((x + xmin - center + 0.5) * ss);
            ww += w[x];
        }
        int32_t *k = a->k + (size_t)xx * ksize;
        for (int x = 0; x < xmax; x++) {
            double v = ww != 0.0 ? w[x] / ww : w[x];
            double f = v * (1 << RS_PRECISION_BITS);
            k[x] = (int32_t)(v < 0 ? -0.5 + f : 0.5 + f);
        }
        a->first[xx] = xmin;
        a->count[xx] = xmax;
    }
    free(w);
    return 0;
}

/* A fixed-point sum (with its rounding half already added) back to 8 bits, clipped to [0, 255]
 * (Pillow's clip8 table, which covers every sum the normalised weights can produce). */
static uint8_t rs_clip8(int64_t ss) {
    if (ss < 0) return 0;
    int64_t v = ss >> RS_PRECISION_BITS;
    return (uint8_t)(v > 255 ? 255 : v);
}

/* Horizontal pass: rows [row0, row0 + rows) of src (w wide) filtered along x into dst (a->count's length
 * wide, `rows` rows). */
static void rs_horizontal(const uint8_t *src, int w, int C, int row0, int rows, const rs_axis *a, int out_w, uint8_t *dst) {
    for (int yy = 0; yy < rows; yy++) {
        const uint8_t *in = src + (size_t)(yy + row0) * w * C;
        uint8_t *out = dst + (size_t)yy * out_w * C;
        for (int xx = 0; xx < out_w; xx++) {
            const int32_t *k = a->k + (size_t)xx * a->ksize;
            const uint8_t *p = in + (size_t)a->first[xx] * C;
            for (int c = 0; c < C; c++) {
                int64_t ss = 1 << (RS_PRECISION_BITS - 1);
                for (int x = 0; x < a->count[xx]; x++) ss += (int64_t)p[(size_t)x * C + c] * k[x];
                out[(size_t)xx * C + c] = rs_clip8(ss);
            }
        }
    }
}

/* Vertical pass: src (w wide) filtered along y into dst (out_h rows); the axis' first rows are relative
 * to src's first row, minus `shift`. */
static void rs_vertical(const uint8_t *src, int w, int C, int shift, const rs_axis *a, int out_h, uint8_t *dst) {
    size_t stride = (size_t)w * C;
    for (int yy = 0; yy < out_h; yy++) {
        const int32_t *k = a->k + (size_t)yy * a->ksize;
        const uint8_t *in = src + (size_t)(a->first[yy] - shift) * stride;
        uint8_t *out = dst + (size_t)yy * stride;
        for (size_t i = 0; i < stride; i++) {
            int64_t ss = 1 << (RS_PRECISION_BITS - 1);
            for (int y = 0; y < a->count[yy]; y++) ss += (int64_t)in[(size_t)y * stride + i] * k[y];
            out[i] = rs_clip8(ss);
        }
    }
}

/* Check one image size against the limits of image.h. */
static int rs_size_ok(int w, int h) {
    return w >= 1 && h >= 1 && w <= IMAGE_MAX_SIDE && h <= IMAGE_MAX_SIDE && (int64_t)w * h <= IMAGE_MAX_PIXELS;
}

/* The whole resize (image_resize.h), in Pillow 13's pass order: when the height shrinks by more than
 * twice what the width shrinks (in pixels), the vertical pass runs first over the full width and the
 * horizontal pass second; otherwise the horizontal pass runs first, over only the source rows the vertical
 * pass reads (the first output row's first to the last one's end). An axis whose size is unchanged is
 * skipped; with neither, a copy. */
sd3_status image_resize_lanczos(const uint8_t *src, int w, int h, int channels, uint8_t *dst, int out_w, int out_h,
                                sd3_err *err) {
    if (!src || !dst || channels < 1 || channels > 4)
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "resize: no image, or %d channels (1 to 4)", channels);
    if (!rs_size_ok(w, h) || !rs_size_ok(out_w, out_h))
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "resize: %dx%d -> %dx%d: sizes must be 1 to %d per side and at most %lld pixels",
                        w, h, out_w, out_h, IMAGE_MAX_SIDE, (long long)IMAGE_MAX_PIXELS);
    int C = channels;
    int need_h = out_w != w, need_v = out_h != h;
    if (!need_h && !need_v) {
        memcpy(dst, src, (size_t)w * h * C);
        return SD3_OK;
    }
    int vertical_first = h - out_h > 0 && h - out_h > (w - out_w) * 2;
    rs_axis ax = {0}, ay = {0};
    uint8_t *tmp = NULL;
    sd3_status s = SD3_OK;
    if ((need_v && rs_axis_make(&ay, h, out_h)) || (need_h && rs_axis_make(&ax, w, out_w))) { s = SD3_ERR_NOMEM; goto done; }
    if (!need_h) {
        rs_vertical(src, w, C, 0, &ay, out_h, dst);
    } else if (!need_v) {
        rs_horizontal(src, w, C, 0, h, &ax, out_w, dst);
    } else if (vertical_first) {
        tmp = malloc((size_t)w * out_h * C);
        if (!tmp) { s = SD3_ERR_NOMEM; goto done; }
        rs_vertical(src, w, C, 0, &ay, out_h, tmp);
        rs_horizontal(tmp, w, C, 0, out_h, &ax, out_w, dst);
    } else {
        int row0 = ay.first[0], row1 = ay.first[out_h - 1] + ay.count[out_h - 1];
        tmp = malloc((size_t)out_w * (row1 - row0) * C);
        if (!tmp) { s = SD3_ERR_NOMEM; goto done; }
        rs_horizontal(src, w, C, row0, row1 - row0, &ax, out_w, tmp);
        rs_vertical(tmp, out_w, C, row0, &ay, out_h, dst);
    }
done:
    free(tmp);
    rs_axis_free(&ax);
    rs_axis_free(&ay);
    if (s) return sd3_errf(err, s, "resize: %dx%d -> %dx%d: out of memory", w, h, out_w, out_h);
    return SD3_OK;
}

/* Resize an RGB image into a new one (image_resize.h). */
sd3_status image_resize(const image *in, int out_w, int out_h, image *out, sd3_err *err) {
    memset(out, 0, sizeof *out);
    if (!in || !in->rgb) return sd3_errf(err, SD3_ERR_INVALID_ARG, "resize: no image");
    if (!rs_size_ok(out_w, out_h))
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "resize: %dx%d -> %dx%d: sizes must be 1 to %d per side and at most %lld pixels",
                        in->w, in->h, out_w, out_h, IMAGE_MAX_SIDE, (long long)IMAGE_MAX_PIXELS);
    uint8_t *px = malloc((size_t)out_w * out_h * 3);
    if (!px) return sd3_errf(err, SD3_ERR_NOMEM, "resize: %dx%d -> %dx%d: out of memory", in->w, in->h, out_w, out_h);
    sd3_status s = image_resize_lanczos(in->rgb, in->w, in->h, 3, px, out_w, out_h, err);
    if (s) { free(px); return s; }
    out->w = out_w;
    out->h = out_h;
    out->rgb = px;
    return SD3_OK;
}

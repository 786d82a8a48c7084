/* image.c — image loading with stb_image (size-checked before decoding) and PNG writing with libpng
 * (text metadata, atomic rename). */
#include <errno.h>
#include <math.h>
#include <png.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "io/image.h"

#include <stb/stb_image.h>

sd3_status image_load(image *img, const char *path, sd3_err *err) {
    memset(img, 0, sizeof *img);
    struct stat sb;
    if (stat(path, &sb) != 0)
        return sd3_errf(err, errno == ENOENT ? SD3_ERR_NOT_FOUND : SD3_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    if (!S_ISREG(sb.st_mode)) return sd3_errf(err, SD3_ERR_IO, "%s: not a regular file", path);
    FILE *f = fopen(path, "rb");
    if (!f) return sd3_errf(err, SD3_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    int w = 0, h = 0, c = 0;
    if (!stbi_info_from_file(f, &w, &h, &c)) {
        fclose(f);
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: not a readable image (%s)", path, stbi_failure_reason());
    }
    if (w <= 0 || h <= 0) { fclose(f); return sd3_errf(err, SD3_ERR_FORMAT, "%s: image is %dx%d", path, w, h); }
    if (w > IMAGE_MAX_SIDE || h > IMAGE_MAX_SIDE || (int64_t)w * h > IMAGE_MAX_PIXELS) {
        fclose(f);
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: image is %dx%d, over the limit of %d per side and %lld pixels", path, w, h,
                        IMAGE_MAX_SIDE, (long long)IMAGE_MAX_PIXELS);
    }
    fseek(f, 0, SEEK_SET);
    unsigned char *px = stbi_load_from_file(f, &w, &h, &c, 3);
    fclose(f);
    if (!px) return sd3_errf(err, SD3_ERR_FORMAT, "%s: cannot decode image (%s)", path, stbi_failure_reason());
    img->w = w;
    img->h = h;
    img->rgb = malloc((size_t)w * h * 3);
    if (!img->rgb) { stbi_image_free(px); return sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", path); }
    memcpy(img->rgb, px, (size_t)w * h * 3);
    stbi_image_free(px);
    return SD3_OK;
}

void image_free(image *img) {
    free(img->rgb);
    memset(img, 0, sizeof *img);
}

/* libpng reports errors through longjmp; keep the message for sd3_err. */
typedef struct { char msg[256]; } png_errbuf;
static void png_err_fn(png_structp p, png_const_charp msg) {
    png_errbuf *e = png_get_error_ptr(p);
    if (e) snprintf(e->msg, sizeof e->msg, "%s", msg);
    png_longjmp(p, 1);
}
static void png_warn_fn(png_structp p, png_const_charp msg) { (void)p; (void)msg; }

sd3_status image_write_png(const image *img, const char *path, const image_text *text, int n_text, sd3_err *err) {
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof tmp)
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: path too long", path);
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) return sd3_errf(err, SD3_ERR_IO, "%s: is a directory", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return sd3_errf(err, SD3_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
    png_errbuf eb = {{0}};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &eb, png_err_fn, png_warn_fn);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    png_textp tx = NULL;
    if (!png || !info) {
        png_destroy_write_struct(&png, &info);
        fclose(f);
        unlink(tmp);
        return sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", path);
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(tx);
        fclose(f);
        unlink(tmp);
        return sd3_errf(err, SD3_ERR_IO, "%s: PNG write failed: %s", path, eb.msg);
    }
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)img->w, (png_uint_32)img->h, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (n_text > 0) {
        tx = calloc((size_t)n_text, sizeof *tx);
        if (!tx) png_error(png, "out of memory");
        for (int i = 0; i < n_text; i++) {
            tx[i].compression = PNG_ITXT_COMPRESSION_NONE;  /* UTF-8 prompts need iTXt */
            tx[i].key = (png_charp)text[i].key;
            tx[i].text = (png_charp)text[i].value;
            tx[i].lang = NULL;
            tx[i].lang_key = NULL;
        }
        png_set_text(png, info, tx, n_text);
    }
    png_write_info(png, info);
    for (int y = 0; y < img->h; y++) png_write_row(png, img->rgb + (size_t)y * img->w * 3);
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    free(tx);
    int bad = fflush(f) != 0 || fsync(fileno(f)) != 0;
    int saved = errno;
    if (fclose(f) != 0 && !bad) { bad = 1; saved = errno; }
    if (bad) { unlink(tmp); return sd3_errf(err, SD3_ERR_IO, "%s: write failed: %s", path, strerror(saved)); }
    if (rename(tmp, path) != 0) {
        saved = errno;
        unlink(tmp);
        return sd3_errf(err, SD3_ERR_IO, "%s: cannot rename into place: %s", path, strerror(saved));
    }
    return SD3_OK;
}

sd3_status image_read_png_text(const char *path, void (*fn)(const char *, const char *, void *), void *user, sd3_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return sd3_errf(err, errno == ENOENT ? SD3_ERR_NOT_FOUND : SD3_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    unsigned char sig[8];
    if (fread(sig, 1, 8, f) != 8 || png_sig_cmp(sig, 0, 8)) {
        fclose(f);
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: not a PNG file", path);
    }
    png_errbuf eb = {{0}};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &eb, png_err_fn, png_warn_fn);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info) {
        png_destroy_read_struct(&png, &info, NULL);
        fclose(f);
        return sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", path);
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, NULL);
        fclose(f);
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: corrupt PNG: %s", path, eb.msg);
    }
    png_init_io(png, f);
    png_set_sig_bytes(png, 8);
    png_read_info(png, info);
    png_textp tx;
    int n = 0;
    png_get_text(png, info, &tx, &n);
    for (int i = 0; i < n; i++) fn(tx[i].key, tx[i].text, user);
    png_destroy_read_struct(&png, &info, NULL);
    fclose(f);
    return SD3_OK;
}

void image_from_chw(image *img, const float *chw, int H, int W) {
    size_t plane = (size_t)H * W;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            for (int c = 0; c < 3; c++) {
                float v = chw[c * plane + (size_t)y * W + x] / 2.0f + 0.5f;
                v = v < 0 ? 0 : v > 1 ? 1 : v;
                img->rgb[((size_t)y * W + x) * 3 + c] = (uint8_t)nearbyintf(v * 255.0f);
            }
}

void image_to_chw(const image *img, float *chw) {
    size_t plane = (size_t)img->h * img->w;
    for (int y = 0; y < img->h; y++)
        for (int x = 0; x < img->w; x++)
            for (int c = 0; c < 3; c++)
                chw[c * plane + (size_t)y * img->w + x] = (float)img->rgb[((size_t)y * img->w + x) * 3 + c] / 127.5f - 1.0f;
}

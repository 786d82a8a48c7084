/* image.h — images in (PNG, JPEG and what else stb_image reads) and PNG out with text metadata,
 * written atomically (temp file + rename) so a failed write never leaves a partial image. */
#ifndef SD3_IMAGE_H
#define SD3_IMAGE_H

#include "core/core.h"

#define IMAGE_MAX_SIDE 16384
#define IMAGE_MAX_PIXELS (64ll * 1024 * 1024)
#define IMAGE_MAX_FILE ((size_t)1 << 30)   /* bytes of an image file read into memory */

/* An 8-bit RGB image, rows top to bottom, pixels interleaved (H, W, 3). */
typedef struct image {
    int w, h;
    uint8_t *rgb;
} image;

/* Load a PNG (libpng) or JPEG (stb_image), converted to RGB. Rejects 0-sized images and images over
 * IMAGE_MAX_SIDE per side or IMAGE_MAX_PIXELS pixels before decoding them. An EXIF Orientation of 2..8
 * (JPEG APP1 "Exif", PNG eXIf; Pillow's XMP and PNG "Raw profile type exif" fallbacks too) is applied
 * after decoding, as diffusers' load_image does with PIL.ImageOps.exif_transpose (so img->w/h are swapped
 * for 5..8); EXIF that Pillow finds no orientation in, or cannot read, leaves the image as decoded. */
sd3_status image_load(image *img, const char *path, sd3_err *err);
void image_free(image *img);

/* A text chunk for PNG metadata. */
typedef struct image_text { const char *key, *value; } image_text;

/* Write img as PNG with n_text tEXt/iTXt chunks, atomically. */
sd3_status image_write_png(const image *img, const char *path, const image_text *text, int n_text, sd3_err *err);
/* Read the text chunks of a PNG: calls fn(key, value, user) for each. */
sd3_status image_read_png_text(const char *path, void (*fn)(const char *key, const char *value, void *user),
                               void *user, sd3_err *err);

/* Float image [B?, 3, H, W] in [-1, 1] (VAE output) -> 8-bit RGB: clamp(x/2 + 0.5, 0, 1), x 255, round half
 * to even (numpy's rounding, as diffusers' output does). Writes one image of batch item b. */
void image_from_chw(image *img, const float *chw, int H, int W);
/* 8-bit RGB -> float [3, H, W] in [-1, 1] (x / 127.5 - 1), the img2img preprocessing. */
void image_to_chw(const image *img, float *chw);

#endif

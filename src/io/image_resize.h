/* image_resize.h — Pillow-exact image resizing, so that an init image (or mask) of another size is
 * resized the way diffusers' VaeImageProcessor.resize does it: PIL `image.resize((W, H), Image.LANCZOS)`
 * on the 8-bit image. The result equals Pillow's byte for byte (tests/test_image_resize.c checks it
 * against PNGs written by Pillow itself, scripts/gen_resize_refs.py).
 *
 * Pillow's algorithm (libImaging/Resample.c, 8 bits per channel): per axis, a Lanczos-3 kernel stretched
 * by max(in/out, 1), its weights normalised to sum 1 in double and then rounded to fixed point with
 * 22 fraction bits; two passes through an 8-bit (clipped) temporary. The pass order is Pillow 13's:
 * vertical first when the height shrinks by more than twice as many pixels as the width does, otherwise
 * horizontal first (over only the source rows the vertical pass reads). Pillow 12 and older always went
 * horizontal first, so for those (portrait-to-square-like) sizes they differ from Pillow 13 (and us) by a
 * unit here and there. An axis whose size does not change is not filtered at all. */
#ifndef SD3_IMAGE_RESIZE_H
#define SD3_IMAGE_RESIZE_H

#include "core/core.h"
#include "io/image.h"

/* Resize an 8-bit interleaved image of `channels` channels (1 = PIL mode "L", 3 = "RGB"; each channel is
 * filtered on its own, as Pillow does) from w x h to out_w x out_h with Pillow's LANCZOS filter.
 * src holds h rows of w * channels bytes; dst must hold out_h rows of out_w * channels bytes and may not
 * overlap src. Sizes must be in 1..IMAGE_MAX_SIDE per side and IMAGE_MAX_PIXELS in all, and channels
 * 1..4; anything else is SD3_ERR_INVALID_ARG (nothing written). SD3_ERR_NOMEM when the scratch memory
 * cannot be had. Equal sizes copy. */
sd3_status image_resize_lanczos(const uint8_t *src, int w, int h, int channels, uint8_t *dst, int out_w, int out_h,
                                sd3_err *err);

/* Resize an RGB image (image.h) to out_w x out_h as above into *out, a new image freed with image_free.
 * On failure *out is left zeroed. */
sd3_status image_resize(const image *in, int out_w, int out_h, image *out, sd3_err *err);

#endif

/* test_img2img_resize.c — img2img and inpainting with an init image (and mask) of another size than
 * -W/-H, end to end through the sd3 command line on the tiny golden pipeline. diffusers resizes both with
 * PIL's LANCZOS (VaeImageProcessor.preprocess -> image.resize((W, H), Image.LANCZOS)); so a 96x80 init
 * image run at -W 64 -H 64 must give exactly the latents and image of a run on that image resized
 * first: by our resampler (written to a PNG here) and by Pillow itself (tests/data/resize, written by
 * scripts/gen_resize_refs.py). The same for a mask of another size, for one axis only (-H alone), the
 * image's own size without -W/-H, and the error for an init image whose own size is no multiple of 16.
 * Run from the repository root (make test does). */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "io/image.h"
#include "io/image_resize.h"
#include "test.h"
#include "cli_harness.h"

#define REF "tests/data/resize/"

static char model[2048];

/* One seeded generation writing <tmp>/<name>.png and <tmp>/<name>.safetensors; `args` adds the init
 * image, mask and sizes. Returns the exit status (output in out). */
static int gen(char *out, size_t n, const char *name, const char *args) {
    return run(out, n, "%s -m %s -p 'a red cube' --steps 2 --seed 7 --strength 0.7 %s --save-latents %s/%s.safetensors -o %s/%s.png",
               sd3_bin, model, args, tmpdir, name, tmpdir, name);
}

/* Whether two files have the same bytes (the latents files: same tensors, same header). */
static int same_file(const char *a, const char *b) {
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "cmp -s %s/%s %s/%s", tmpdir, a, tmpdir, b);
    return system(cmd) == 0;
}

/* Whether two PNGs in tmpdir have the same size and pixels (their text metadata may differ). */
static int same_pixels(const char *a, const char *b, int *w, int *h) {
    char pa[512], pb[512];
    snprintf(pa, sizeof pa, "%s/%s", tmpdir, a);
    snprintf(pb, sizeof pb, "%s/%s", tmpdir, b);
    image ia = {0}, ib = {0};
    sd3_err err = {0};
    int ok = image_load(&ia, pa, &err) == SD3_OK && image_load(&ib, pb, &err) == SD3_OK && ia.w == ib.w && ia.h == ib.h &&
             !memcmp(ia.rgb, ib.rgb, (size_t)ia.w * ia.h * 3);
    if (w) *w = ia.w;
    if (h) *h = ia.h;
    image_free(&ia);
    image_free(&ib);
    return ok;
}

int main(int argc, char **argv) {
    (void)argc;
    cli_find_sd3(argv[0]);
    const char *g = getenv("SD3_GOLDEN");
    snprintf(model, sizeof model, "%s/tiny-sd3", g ? g : "../shared/golden");
    snprintf(tmpdir, sizeof tmpdir, "/tmp/sd3c_i2i_resize_XXXXXX");
    if (!mkdtemp(tmpdir)) { printf("mkdtemp failed\n"); return 1; }
    char out[16384], args[2048];
    sd3_err err = {0};

    /* 0. our resampler on the 96x80 init image equals Pillow's 64x64 byte for byte; kept as ours.png */
    image src = {0}, pil = {0}, ours = {0};
    CHECK(image_load(&src, REF "rgb96x80.png", &err) == SD3_OK, "%s", err.msg);
    CHECK(image_load(&pil, REF "rgb96x80_to_64x64.png", &err) == SD3_OK, "%s", err.msg);
    CHECK(src.rgb && image_resize(&src, 64, 64, &ours, &err) == SD3_OK, "resize: %s", err.msg);
    CHECK(ours.rgb && pil.rgb && pil.w == 64 && pil.h == 64 && !memcmp(ours.rgb, pil.rgb, 64 * 64 * 3), "96x80 -> 64x64 differs from Pillow's");
    char p[512];
    snprintf(p, sizeof p, "%s/ours.png", tmpdir);
    CHECK(ours.rgb && image_write_png(&ours, p, NULL, 0, &err) == SD3_OK, "%s", err.msg);
    image_free(&src);
    image_free(&pil);
    image_free(&ours);

    /* 1. img2img: 96x80 at -W 64 -H 64 == our resized image at its own size == Pillow's resized image */
    int rc = gen(out, sizeof out, "big", "--init-img " REF "rgb96x80.png -W 64 -H 64");
    CHECK(rc == 0, "96x80 init at -W 64 -H 64 failed: %s", out);
    snprintf(args, sizeof args, "--init-img %s/ours.png", tmpdir);
    rc = gen(out, sizeof out, "ours", args);
    CHECK(rc == 0, "64x64 init (ours) failed: %s", out);
    rc = gen(out, sizeof out, "pil", "--init-img " REF "rgb96x80_to_64x64.png");
    CHECK(rc == 0, "64x64 init (Pillow's) failed: %s", out);
    int w = 0, h = 0;
    CHECK(same_file("big.safetensors", "ours.safetensors"), "resized in the pipeline != resized first with our resampler (latents)");
    CHECK(same_pixels("big.png", "ours.png", &w, &h) && w == 64 && h == 64, "images differ (or not 64x64: %dx%d)", w, h);
    CHECK(same_file("big.safetensors", "pil.safetensors"), "resized in the pipeline != resized first by Pillow (latents)");
    CHECK(same_pixels("big.png", "pil.png", NULL, NULL), "image differs from the run on Pillow's resize");

    /* 2. one axis: -H 64 alone keeps the width (96) and resizes only the height, as Pillow's 96x64 */
    rc = gen(out, sizeof out, "tall", "--init-img " REF "rgb96x80.png -H 64");
    CHECK(rc == 0, "-H 64 alone failed: %s", out);
    rc = gen(out, sizeof out, "tallpil", "--init-img " REF "rgb96x80_to_96x64.png");
    CHECK(rc == 0, "96x64 init (Pillow's) failed: %s", out);
    CHECK(same_file("tall.safetensors", "tallpil.safetensors"), "-H 64 != Pillow's 96x64 resize");
    CHECK(same_pixels("tall.png", "tallpil.png", &w, &h) && w == 96 && h == 64, "-H 64: image differs or is %dx%d", w, h);

    /* 3. inpainting: a 29x17 mask and a 96x80 image at -W 64 -H 64 == both resized by Pillow first; and a mask
     * of another size than an init image of the right size is resized too (no -W/-H) */
    rc = gen(out, sizeof out, "inp", "--init-img " REF "rgb96x80.png --mask " REF "lmask29x17.png -W 64 -H 64");
    CHECK(rc == 0, "inpaint with 96x80 image and 29x17 mask failed: %s", out);
    rc = gen(out, sizeof out, "inppil", "--init-img " REF "rgb96x80_to_64x64.png --mask " REF "lmask29x17_to_64x64.png");
    CHECK(rc == 0, "inpaint with Pillow's resizes failed: %s", out);
    rc = gen(out, sizeof out, "inpmask", "--init-img " REF "rgb96x80_to_64x64.png --mask " REF "lmask29x17.png");
    CHECK(rc == 0, "inpaint with a 29x17 mask on a 64x64 image failed: %s", out);
    CHECK(same_file("inp.safetensors", "inppil.safetensors"), "inpaint: resized in the pipeline != resized by Pillow first");
    CHECK(same_file("inpmask.safetensors", "inppil.safetensors"), "inpaint: mask resized in the pipeline != Pillow's");
    CHECK(same_pixels("inp.png", "inppil.png", NULL, NULL), "inpaint images differ");
    CHECK(!same_file("inp.safetensors", "big.safetensors"), "the mask changed nothing (inpaint == img2img)");

    /* 4. without -W/-H the image's own size is used (96x80) */
    rc = gen(out, sizeof out, "own", "--init-img " REF "rgb96x80.png");
    CHECK(rc == 0, "96x80 at its own size failed: %s", out);
    CHECK(same_pixels("own.png", "own.png", &w, &h) && w == 96 && h == 80, "own size: %dx%d, expected 96x80", w, h);

    /* 5. an image whose own size is no multiple of 16: an error naming -W/-H without them, a resize with them */
    rc = gen(out, sizeof out, "odd", "--init-img " REF "rgb37x23.png");
    CHECK(rc != 0 && strstr(out, "37x23") && strstr(out, "-W and -H"), "37x23 without -W/-H: rc %d: %s", rc, out);
    rc = gen(out, sizeof out, "odd", "--init-img " REF "rgb37x23.png -W 48 -H 32");
    CHECK(rc == 0, "37x23 at -W 48 -H 32 failed: %s", out);
    CHECK(same_pixels("odd.png", "odd.png", &w, &h) && w == 48 && h == 32, "37x23 -> %dx%d, expected 48x32", w, h);

    snprintf(args, sizeof args, "rm -rf %s", tmpdir);
    if (system(args)) {}
    TEST_MAIN_END("test_img2img_resize");
}

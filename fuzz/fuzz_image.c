/*
 * fuzz_image.c — the image decoders as sd3 uses them: the input is written to a temp file and read with
 * image_load (stb_image behind the size checks: PNG, JPEG, BMP, GIF, ...; --init-img) and
 * image_read_png_text (libpng's text chunks; `sd3 info`). stb_image is compiled into this target with the
 * fuzzer's instrumentation (fuzz/stb_image_impl.c), not taken from the system library, so the decoder
 * itself is covered and checked by ASan. A decoded image must respect the limits of image.h. JPEGs that
 * hit stb 2.27's known DHT overflow are skipped (jpeg_guard.h) so the run can find the next bug.
 */
#include "fuzz_common.h"
#include "io/image.h"
#include "jpeg_guard.h"

#ifndef FZ_SKIP_KNOWN
#define FZ_SKIP_KNOWN 1   /* -DFZ_SKIP_KNOWN=0 once image.c guards against the bug */
#endif

static void on_text(const char *k, const char *v, void *user) {
    (void)user;
    if (strlen(k) + strlen(v) > (size_t)1 << 30) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* the known stb_image 2.27 DHT overflow (jpeg_guard.h; reported, regression case in tests/test_bad_inputs.c) */
    if (FZ_SKIP_KNOWN && !jpeg_dht_ok(data, size)) return 0;
    fz_write("img", data, size);
    char p[512];
    fz_path(p, sizeof p, "img");
    image im;
    sd3_err err = {0};
    sd3_status st = image_load(&im, p, &err);
    fz_check_err(st, &err, "image_load");
    if (st == SD3_OK) {
        if (im.w <= 0 || im.h <= 0 || im.w > IMAGE_MAX_SIDE || im.h > IMAGE_MAX_SIDE ||
            (int64_t)im.w * im.h > IMAGE_MAX_PIXELS || !im.rgb)
            abort();
        volatile uint8_t s = im.rgb[0] ^ im.rgb[(size_t)im.w * im.h * 3 - 1];
        (void)s;
        image_free(&im);
    }
    memset(&err, 0, sizeof err);
    st = image_read_png_text(p, on_text, NULL, &err);
    fz_check_err(st, &err, "image_read_png_text");
    return 0;
}

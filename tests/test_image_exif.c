/* test_image_exif.c — image_load applies the EXIF Orientation as diffusers' load_image does
 * (PIL.ImageOps.exif_transpose). Every line of tests/data/exif/cases.txt (scripts/gen_exif_refs.py asked
 * Pillow 13 about each file) is checked:
 *   ref FILE PNG         PNG with orientation 1..8: our load == Pillow's exif_transpose(...).convert("RGB")
 *                        PNG, byte for byte;
 *   case FILE BASE K     our load of FILE == our load of BASE (the same pixels, no EXIF) turned by
 *                        orientation K with this file's own transform (written here as a forward mapping,
 *                        independently of image.c's): JPEG orientations 1..8 (decoders differ, so only the
 *                        geometry is compared with Pillow) and hostile EXIF (truncated blocks, offsets past
 *                        the end, huge counts, both byte orders, values 0/9/65535, duplicate entries, ...),
 *                        which must load, and load untransformed where Pillow finds no usable orientation;
 *                        and Pillow's fallbacks (JPEG/PNG XMP tiff:Orientation, PNG "Raw profile type exif"
 *                        text, chunks after the image data);
 *   nocrash FILE         broken beyond its EXIF: an error or an image, no crash.
 * Run from the repository root; ASan/UBSan builds (make asan) check that no EXIF read leaves its block. */
#include <stdlib.h>
#include <string.h>
#include "io/image.h"
#include "test.h"

#define DIR "tests/data/exif/"

/* Orientation k applied to src (w x h) by mapping each source pixel (x, y) forward to where the EXIF
 * meaning of k puts it (TIFF 6.0: k says where row 0 / column 0 of the stored image belong), the
 * inverse way round from image.c's per-output-pixel lookup. */
static image turn(const image *src, int k) {
    int w = src->w, h = src->h, swap = k >= 5;
    image out = {swap ? h : w, swap ? w : h, malloc((size_t)w * h * 3)};
    if (!out.rgb) return out;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            int dx, dy;
            switch (k) {
            case 2: dx = w - 1 - x; dy = y; break;           /* mirrored left-right */
            case 3: dx = w - 1 - x; dy = h - 1 - y; break;   /* upside down */
            case 4: dx = x; dy = h - 1 - y; break;           /* mirrored top-bottom */
            case 5: dx = y; dy = x; break;                   /* main-diagonal transpose */
            case 6: dx = h - 1 - y; dy = x; break;           /* stored turned left: turn right (clockwise) */
            case 7: dx = h - 1 - y; dy = w - 1 - x; break;   /* anti-diagonal transpose */
            case 8: dx = y; dy = w - 1 - x; break;           /* stored turned right: turn left */
            default: dx = x; dy = y; break;
            }
            memcpy(out.rgb + ((size_t)dy * out.w + dx) * 3, src->rgb + ((size_t)y * w + x) * 3, 3);
        }
    return out;
}

/* Load DIR name; 0 on success (message on failure). */
static int load(const char *name, image *im) {
    char p[512];
    sd3_err err = {0};
    snprintf(p, sizeof p, DIR "%s", name);
    sd3_status s = image_load(im, p, &err);
    CHECK(s == SD3_OK, "%s: %s", p, err.msg);
    return s != SD3_OK;
}

/* Byte-for-byte equality of two images, with the first difference named. */
static void same(const image *a, const image *b, const char *what) {
    if (a->w != b->w || a->h != b->h) {
        CHECK(0, "%s: %dx%d, expected %dx%d", what, a->w, a->h, b->w, b->h);
        return;
    }
    size_t n = (size_t)a->w * a->h * 3, i = 0;
    while (i < n && a->rgb[i] == b->rgb[i]) i++;
    CHECK(i == n, "%s: byte %zu (pixel %zu of %dx%d) is %d, expected %d", what, i, i / 3, a->w, a->h,
          i < n ? a->rgb[i] : 0, i < n ? b->rgb[i] : 0);
}

int main(void) {
    FILE *f = fopen(DIR "cases.txt", "r");
    CHECK(f != NULL, "cannot open " DIR "cases.txt (run from the repository root)");
    if (!f) TEST_MAIN_END("test_image_exif");
    char line[1024];
    int n_ref = 0, n_case = 0, n_turned = 0, n_nocrash = 0;
    while (fgets(line, sizeof line, f)) {
        char kind[16], a[256], b[256];
        int k = 0;
        if (line[0] == '#' || sscanf(line, "%15s", kind) != 1) continue;
        if (!strcmp(kind, "ref") && sscanf(line, "%*s %255s %255s", a, b) == 2) {
            image got = {0}, want = {0};
            if (!load(a, &got) && !load(b, &want)) same(&got, &want, a);
            image_free(&got);
            image_free(&want);
            n_ref++;
        } else if (!strcmp(kind, "case") && sscanf(line, "%*s %255s %255s %d", a, b, &k) == 3) {
            CHECK(k >= 1 && k <= 8, "cases.txt: bad orientation in: %s", line);
            image got = {0}, base = {0};
            if (!load(a, &got) && !load(b, &base)) {
                image want = turn(&base, k);
                CHECK(want.rgb != NULL, "out of memory");
                if (want.rgb) same(&got, &want, a);
                image_free(&want);
            }
            image_free(&got);
            image_free(&base);
            n_case++;
            n_turned += k != 1;
        } else if (!strcmp(kind, "nocrash") && sscanf(line, "%*s %255s", a) == 1) {
            char p[512];
            sd3_err err = {0};
            image im = {0};
            snprintf(p, sizeof p, DIR "%s", a);
            sd3_status s = image_load(&im, p, &err);
            CHECK(s == SD3_OK ? im.rgb != NULL && im.w > 0 && im.h > 0 : err.msg[0] != 0, "%s: status %d without a message or image", a,
                  (int)s);
            image_free(&im);
            n_nocrash++;
        } else {
            CHECK(0, "cases.txt: unknown line: %s", line);
        }
    }
    fclose(f);
    /* the data must hold what the header comment promises, so an emptied cases.txt cannot pass */
    CHECK(n_ref == 8 && n_case >= 60 && n_turned >= 25 && n_nocrash >= 1, "cases.txt: %d ref, %d case (%d turned), %d nocrash lines",
          n_ref, n_case, n_turned, n_nocrash);

    /* the orientations that swap the sides: a 5x3 PNG and a 24x16 JPEG come out 3x5 and 16x24 */
    static const char *const swapped[] = {"png_o5.png", "png_o6.png", "png_o7.png", "png_o8.png", "jpg_o5.jpg", "jpg_o8.jpg"};
    for (size_t i = 0; i < sizeof swapped / sizeof *swapped; i++) {
        image im = {0};
        if (!load(swapped[i], &im)) CHECK((im.w == 3 && im.h == 5) || (im.w == 16 && im.h == 24), "%s is %dx%d", swapped[i], im.w, im.h);
        image_free(&im);
    }
    /* the test's own transform agrees with Pillow's (so the JPEG cases check the same geometry) */
    image base = {0};
    if (!load("png_base.png", &base)) {
        for (int k = 1; k <= 8; k++) {
            char name[64], what[96];
            image want = {0};
            snprintf(name, sizeof name, "png_o%d_pillow.png", k);
            snprintf(what, sizeof what, "turn(png_base, %d) vs %s", k, name);
            if (!load(name, &want)) {
                image t = turn(&base, k);
                if (t.rgb) same(&t, &want, what);
                image_free(&t);
            }
            image_free(&want);
        }
    }
    image_free(&base);
    TEST_MAIN_END("test_image_exif");
}

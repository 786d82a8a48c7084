/* test_image_resize.c — image_resize_lanczos against Pillow itself: every case of
 * tests/data/resize/cases.txt (written by scripts/gen_resize_refs.py with PIL's
 * image.resize((W, H), Image.LANCZOS), RGB and L, up and down, non-uniform ratios, 1-pixel edges, one
 * axis only) must come out byte for byte equal to Pillow's PNG. Then the bad sizes (0, negative, over the
 * limits, too many channels) must give an error and write nothing. Run from the repository root. */
#include <stdlib.h>
#include <string.h>
#include "io/image.h"
#include "io/image_resize.h"
#include "test.h"

#define DIR "tests/data/resize/"

/* One case: load input and Pillow's output (PNG, expanded to RGB by image_load), resize the input with
 * ours (on 3 channels, or on one channel for mode L), compare every byte. */
static void check_case(const char *in_name, const char *out_name, int ow, int oh, const char *mode) {
    char p[512];
    image in = {0}, ref = {0};
    sd3_err err = {0};
    snprintf(p, sizeof p, DIR "%s", in_name);
    sd3_status s = image_load(&in, p, &err);
    CHECK(s == SD3_OK, "%s: %s", p, err.msg);
    snprintf(p, sizeof p, DIR "%s", out_name);
    sd3_status s2 = image_load(&ref, p, &err);
    CHECK(s2 == SD3_OK, "%s: %s", p, err.msg);
    if (s || s2) { image_free(&in); image_free(&ref); return; }
    CHECK(ref.w == ow && ref.h == oh, "%s is %dx%d, cases.txt says %dx%d", out_name, ref.w, ref.h, ow, oh);
    int C = strcmp(mode, "L") ? 3 : 1;
    size_t n_in = (size_t)in.w * in.h, n_out = (size_t)ow * oh;
    uint8_t *src = malloc(n_in * C), *mine = malloc(n_out * C), *want = malloc(n_out * C);
    if (!src || !mine || !want) { CHECK(0, "out of memory"); goto done; }
    for (size_t i = 0; i < n_in; i++)
        for (int c = 0; c < C; c++) src[i * C + c] = in.rgb[i * 3 + c];
    for (size_t i = 0; i < n_out && ref.w == ow && ref.h == oh; i++)
        for (int c = 0; c < C; c++) want[i * C + c] = ref.rgb[i * 3 + c];
    s = image_resize_lanczos(src, in.w, in.h, C, mine, ow, oh, &err);
    CHECK(s == SD3_OK, "%s -> %dx%d: %s", in_name, ow, oh, err.msg);
    if (s || ref.w != ow || ref.h != oh) goto done;
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n_out * C; i++)
        if (mine[i] != want[i]) { if (!bad) first = i; bad++; }
    CHECK(bad == 0, "%s -> %dx%d (%s): %zu of %zu bytes differ from Pillow's, first at pixel %zu channel %zu: %d vs %d",
          in_name, ow, oh, mode, bad, n_out * C, first / C, first % C, mine[first], want[first]);
    if (C == 3) {   /* the image-level call gives the same bytes */
        image out;
        s = image_resize(&in, ow, oh, &out, &err);
        CHECK(s == SD3_OK && out.w == ow && out.h == oh && !memcmp(out.rgb, want, n_out * 3), "image_resize %s -> %dx%d differs",
              in_name, ow, oh);
        image_free(&out);
    }
done:
    free(src);
    free(mine);
    free(want);
    image_free(&in);
    image_free(&ref);
}

/* A bad size or channel count: an error status with a message, the output untouched. */
static void check_bad(int w, int h, int C, int ow, int oh) {
    uint8_t src[64] = {0}, dst[64];
    memset(dst, 0xAB, sizeof dst);
    sd3_err err = {0};
    sd3_status s = image_resize_lanczos(src, w, h, C, dst, ow, oh, &err);
    int untouched = 1;
    for (size_t i = 0; i < sizeof dst; i++) untouched &= dst[i] == 0xAB;
    CHECK(s == SD3_ERR_INVALID_ARG && err.msg[0] && untouched, "%dx%d x%d -> %dx%d: status %d '%s'", w, h, C, ow, oh, s, err.msg);
}

int main(void) {
    FILE *f = fopen(DIR "cases.txt", "r");
    CHECK(f != NULL, "cannot open " DIR "cases.txt (run from the repository root)");
    int n = 0;
    char line[512];
    while (f && fgets(line, sizeof line, f)) {
        if (line[0] == '#' || line[0] == '\n') continue;
        char in_name[200], out_name[200], mode[8];
        int ow, oh;
        if (sscanf(line, "%199s %199s %d %d %7s", in_name, out_name, &ow, &oh, mode) != 5) {
            CHECK(0, "cases.txt: bad line '%s'", line);
            continue;
        }
        check_case(in_name, out_name, ow, oh, mode);
        n++;
    }
    if (f) fclose(f);
    CHECK(n >= 20, "only %d cases in cases.txt", n);

    check_bad(0, 4, 3, 4, 4);
    check_bad(4, 4, 3, 0, 4);
    check_bad(4, 4, 3, 4, -2);
    check_bad(-1, 4, 3, 4, 4);
    check_bad(4, 4, 3, 1 << 20, 4);
    check_bad(4, 4, 3, IMAGE_MAX_SIDE, IMAGE_MAX_SIDE);   /* each side fine, the pixel count over */
    check_bad(4, 4, 3, 0x7fffffff, 0x7fffffff);
    check_bad(4, 4, 0, 4, 4);
    check_bad(4, 4, 5, 4, 4);
    image out;
    sd3_err err = {0};
    image tiny = {2, 2, (uint8_t[12]){0}};
    CHECK(image_resize(&tiny, -5, 3, &out, &err) == SD3_ERR_INVALID_ARG && out.rgb == NULL, "image_resize to -5x3: %s", err.msg);
    CHECK(image_resize(NULL, 4, 4, &out, &err) == SD3_ERR_INVALID_ARG, "image_resize of NULL");
    /* equal sizes copy (Pillow returns a copy) */
    CHECK(image_resize(&tiny, 2, 2, &out, &err) == SD3_OK && out.w == 2 && !memcmp(out.rgb, tiny.rgb, 12), "2x2 -> 2x2 is not a copy");
    image_free(&out);
    TEST_MAIN_END("test_image_resize");
}

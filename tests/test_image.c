/* test_image.c — images in and out: a PNG written by image_write_png reads back bit for bit through
 * image_load (libpng), agrees with stb_image's decode of the same file, carries its text chunks, and
 * the float <-> 8-bit conversions round as diffusers/numpy do (half to even). */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <stb/stb_image.h>
#include "io/image.h"
#include "test.h"

static int n_text = 0;
static void on_text(const char *k, const char *v, void *u) {
    (void)u;
    if (!strcmp(k, "prompt") && !strcmp(v, "caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87")) n_text++;
}

int main(void) {
    enum { W = 37, H = 23 };
    image im = {W, H, malloc(W * H * 3)};
    for (int i = 0; i < W * H * 3; i++) im.rgb[i] = (uint8_t)((i * 7919) >> 3);
    char path[256];
    snprintf(path, sizeof path, "/tmp/sd3c_img_%d.png", (int)getpid());
    sd3_err err = {0};
    image_text tx[1] = {{"prompt", "caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87"}};
    CHECK(image_write_png(&im, path, tx, 1, &err) == SD3_OK, "%s", err.msg);
    image back;
    CHECK(image_load(&back, path, &err) == SD3_OK, "%s", err.msg);
    CHECK(back.w == W && back.h == H && !memcmp(back.rgb, im.rgb, W * H * 3), "PNG round trip differs");
    int sw, sh, sc;
    unsigned char *st = stbi_load(path, &sw, &sh, &sc, 3);
    CHECK(st && sw == W && sh == H && !memcmp(st, back.rgb, W * H * 3), "libpng and stb decodes differ");
    stbi_image_free(st);
    CHECK(image_read_png_text(path, on_text, NULL, &err) == SD3_OK && n_text == 1, "text chunk lost: %s", err.msg);
    image_free(&back);

    /* float -> 8-bit: clamp(x / 2 + 0.5) * 255, rounded half to even (numpy) */
    float chw[3] = {-1.0f, 1.0f, 0.5f / 255.0f * 2.0f - 1.0f};  /* 0, 255 and exactly 0.5 -> 0 (even) */
    image px = {1, 1, malloc(3)};
    image_from_chw(&px, chw, 1, 1);
    CHECK(px.rgb[0] == 0 && px.rgb[1] == 255 && px.rgb[2] == 0, "rounding: %d %d %d", px.rgb[0], px.rgb[1], px.rgb[2]);
    float back3[3];
    image_to_chw(&px, back3);
    CHECK(back3[0] == -1.0f && back3[1] == 1.0f, "preprocess: %g %g", (double)back3[0], (double)back3[1]);
    image_free(&px);
    image_free(&im);
    unlink(path);
    TEST_MAIN_END("test_image");
}

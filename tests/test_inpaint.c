/* test_inpaint.c — inpainting invariants on the tiny golden pipeline (no diffusers golden exists for it):
 *  - a mask of ones repaints everything: bit-identical to img2img with the same seed and strength;
 *  - a mask of zeros keeps everything: the final latents are the image's own latents, whatever the
 *    prompt (two different prompts give bit-identical latents);
 *  - a half mask: the kept half equals the all-zeros run, the repainted half differs from it;
 *  - strength 1 starts from pure noise (diffusers' is_strength_max) and still keeps the unmasked part. */
#include <stdlib.h>
#include <string.h>
#include "io/model_store.h"
#include "pipeline/generate.h"
#include "test.h"

enum { H = 64, W = 64, h = 8, w = 8 };

static float init_img[3 * H * W];

/* Run the pipeline with an optional mask; returns malloc'd final latents (16 x h x w). */
static float *run(model_store *ms, const char *prompt, const float *mask, double strength) {
    const char *p[1] = {prompt};
    pipe_req r;
    memset(&r, 0, sizeof r);
    r.text.n_prompts = 1;
    r.text.prompt = p;
    r.text.num_images_per_prompt = 1;
    r.text.max_sequence_length = 32;
    r.width = W;
    r.height = H;
    r.steps = 4;
    r.cfg_scale = 5.0f;
    r.seed = 7;
    r.init_image = init_img;
    r.strength = strength;
    r.mask = mask;
    pipe_out o;
    sd3_err err = {0};
    if (pipe_generate(ms, &r, NULL, &o, &err) != SD3_OK) {
        printf("pipe_generate: %s\n", err.msg);
        return NULL;
    }
    float *lat = malloc(sizeof(float) * 16 * h * w);
    memcpy(lat, o.latents, sizeof(float) * 16 * h * w);
    pipe_out_free(&o);
    return lat;
}

static int same(const float *a, const float *b, int n) { return a && b && memcmp(a, b, sizeof(float) * n) == 0; }

int main(void) {
    const char *g = getenv("SD3_GOLDEN");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tiny-sd3", g ? g : "../shared/golden");
    model_store *ms;
    sd3_err err = {0};
    if (ms_open(&ms, dir, &err) != SD3_OK) { printf("%s\n", err.msg); return 1; }
    for (int c = 0; c < 3; c++)  /* a smooth test picture in [-1, 1] */
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) init_img[(c * H + y) * W + x] = (float)((x * (c + 1) + 2 * y) % 64) / 32.0f - 1.0f;
    static float ones[H * W], zeros[H * W], half[H * W];
    for (int i = 0; i < H * W; i++) { ones[i] = 1; zeros[i] = 0; half[i] = (i % W) < W / 2 ? 1.0f : 0.0f; }
    const int n = 16 * h * w;

    float *i2i = run(ms, "a cat", NULL, 0.6);
    float *all = run(ms, "a cat", ones, 0.6);
    CHECK(same(i2i, all, n), "mask of ones differs from img2img");

    float *keep1 = run(ms, "a cat", zeros, 0.6), *keep2 = run(ms, "a dog in the rain", zeros, 0.6);
    CHECK(same(keep1, keep2, n), "mask of zeros depends on the prompt");
    CHECK(keep1 && i2i && !same(keep1, i2i, n), "mask of zeros equals img2img");

    float *hm = run(ms, "a cat", half, 0.6);
    int kept_same = 1, painted_diff = 0;
    for (int k = 0; hm && keep1 && k < n; k++) {
        int x = k % w;  /* latent column x covers pixel columns 8x..8x+7: the left half is repainted */
        if (x >= w / 2) kept_same &= hm[k] == keep1[k];
        else painted_diff |= hm[k] != keep1[k];
    }
    CHECK(kept_same, "half mask: the kept half moved");
    CHECK(painted_diff, "half mask: the repainted half did not change");

    float *s1 = run(ms, "a cat", half, 1.0), *s1z = run(ms, "a cat", zeros, 1.0);
    int s1_kept = 1;
    for (int k = 0; s1 && s1z && k < n; k++)
        if (k % w >= w / 2) s1_kept &= s1[k] == s1z[k];
    CHECK(s1 && s1z && s1_kept, "strength 1: the kept half moved");

    free(i2i); free(all); free(keep1); free(keep2); free(hm); free(s1); free(s1z);
    ms_close(ms);
    TEST_MAIN_END("test_inpaint");
}

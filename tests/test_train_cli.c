/*
 * test_train_cli.c — `sd3 train-lora` (tools/train_cli.c, compiled into this test by inclusion, since the
 * tool is linked only into build/sd3) on the golden tiny SD3 pipeline: synthetic 80x64 instance images,
 * resolution 64, checkpoints, --stop-after-steps + --resume-from-checkpoint latest == the uninterrupted run,
 * a validation image, prior preservation with generated class images, the final LoRA through src/lora, and
 * the bad-input exits.
 *
 *   test_train_cli [GOLDEN_ROOT]   (default $SD3_GOLDEN or ../shared/golden)
 */
#include <stdarg.h>
#include <unistd.h>
#include "../tools/train_cli.c"
#include "lora/lora.h"
#include "test.h"

/* Run the command with a NULL-terminated argument list; returns its exit code. */
static int run_cli(const char *first, ...) {
    const char *args[64];
    int n = 0;
    va_list ap;
    va_start(ap, first);
    for (const char *a = first; a && n < 63; a = va_arg(ap, const char *)) args[n++] = a;
    va_end(ap);
    args[n] = NULL;
    return sd3_cmd_train_lora(n, (char **)args);
}

/* Byte-equal files? */
static int same_bytes(const char *a, const char *b) {
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    int same = fa && fb;
    while (same) {
        int ca = fgetc(fa), cb = fgetc(fb);
        if (ca != cb) same = 0;
        if (ca == EOF || cb == EOF) break;
    }
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    return same;
}

/* Does path exist? */
static int exists(const char *p) { return access(p, F_OK) == 0; }

int main(int argc, char **argv) {
    const char *root = argc > 1 ? argv[1] : getenv("SD3_GOLDEN");
    if (!root) root = "../shared/golden";
    char model[4096], tmp[] = "/tmp/sd3_test_train_cli_XXXXXX", imgs[256], o1[256], o2[256], o3[256], cls[256];
    char p1[4400], p2[4400];
    snprintf(model, sizeof model, "%s/tiny-sd3", root);
    CHECK(mkdtemp(tmp) != NULL, "mkdtemp");
    snprintf(imgs, sizeof imgs, "%s/imgs", tmp), snprintf(cls, sizeof cls, "%s/cls", tmp);
    snprintf(o1, sizeof o1, "%s/o1", tmp), snprintf(o2, sizeof o2, "%s/o2", tmp), snprintf(o3, sizeof o3, "%s/o3", tmp);
    mkdir(imgs, 0777);
    for (int k = 0; k < 4; k++) { /* a disc on a gradient, moving a little per image */
        image im = {.w = 80, .h = 64, .rgb = malloc(80 * 64 * 3)};
        for (int y = 0; y < 64; y++)
            for (int x = 0; x < 80; x++) {
                unsigned char *p = im.rgb + (y * 80 + x) * 3;
                double dd = hypot(x - 40 - 4 * k, y - 32);
                p[0] = dd < 18 ? 220 : (unsigned char)(40 + 2 * y);
                p[1] = dd < 18 ? (unsigned char)(60 + 30 * k) : 120;
                p[2] = (unsigned char)(x * 3);
            }
        snprintf(p1, sizeof p1, "%s/img%d.png", imgs, k);
        sd3_err err = {0};
        CHECK(image_write_png(&im, p1, NULL, 0, &err) == SD3_OK, "%s", err.msg);
        free(im.rgb);
    }
#define COMMON "-m", model, "--instance-data-dir", imgs, "--instance-prompt", "a photo of sks dog", "--resolution", \
               "64", "--random-flip", "--train-batch-size", "2", "--gradient-accumulation-steps", "2",              \
               "--checkpointing-steps", "3", "--seed", "5", "--lr-scheduler", "cosine", "--lr-warmup-steps", "2",   \
               "--learning-rate", "1e-3", "--max-train-steps", "6"
    CHECK(run_cli(COMMON, "--output-dir", o1, "--validation-prompt", "sks dog", "--validation-steps", "6",
                  "--num-validation-images", "1", NULL) == 0, "uninterrupted run");
    CHECK(run_cli(COMMON, "--output-dir", o2, "--stop-after-steps", "3", NULL) == 0, "first half");
    snprintf(p1, sizeof p1, "%s/checkpoint-3/training_state.safetensors", o2);
    CHECK(exists(p1), "no checkpoint-3 after the first half");
    snprintf(p1, sizeof p1, "%s/pytorch_lora_weights.safetensors", o2);
    CHECK(!exists(p1), "an interrupted run wrote the final LoRA");
    CHECK(run_cli(COMMON, "--output-dir", o2, "--resume-from-checkpoint", "latest", NULL) == 0, "resumed run");
    snprintf(p1, sizeof p1, "%s/pytorch_lora_weights.safetensors", o1);
    snprintf(p2, sizeof p2, "%s/pytorch_lora_weights.safetensors", o2);
    int same = same_bytes(p1, p2);
    printf("train-lora: stop at 3 + resume == uninterrupted 6 steps (cosine LR, batch 2 x 2): %s\n", same ? "yes" : "NO");
    CHECK(same, "resumed CLI run differs");
    snprintf(p2, sizeof p2, "%s/validation-step6-0.png", o1);
    CHECK(exists(p2), "no validation image");

    /* the final LoRA through src/lora */
    mmdit_model m;
    memset(&m, 0, sizeof m);
    sd3_err err = {0};
    lora_file *lf = NULL;
    snprintf(p2, sizeof p2, "%s/transformer", model);
    CHECK(mmdit_load_dir(&m, p2, &err) == SD3_OK && lora_open(&lf, p1, &err) == SD3_OK &&
              lora_attach(&m, lf, 1.0f, 0, &err) == SD3_OK && lora_adapter_count(&m, NULL) == 23,
          "LoRA file does not attach: %s", err.msg);
    lora_close(lf);
    mmdit_free(&m);

    /* prior preservation: 2 class images generated, then trained with */
    CHECK(run_cli(COMMON, "--output-dir", o3, "--with-prior-preservation", "--class-data-dir", cls, "--class-prompt",
                  "a photo of a dog", "--num-class-images", "2", NULL) == 0, "prior preservation run");
    snprintf(p1, sizeof p1, "%s/1-sd3c.png", cls);
    snprintf(p2, sizeof p2, "%s/pytorch_lora_weights.safetensors", o3);
    CHECK(exists(p1) && exists(p2), "class images or LoRA missing");

    /* bad input */
    CHECK(run_cli("--bogus", NULL) == 2, "unknown flag");
    CHECK(run_cli(COMMON, "--output-dir", o1, "--rank", "x", NULL) == 2, "bad number");
    CHECK(run_cli(COMMON, "--output-dir", o1, "--lr-scheduler", "piecewise_constant", NULL) == 2, "unknown schedule");
    CHECK(run_cli(COMMON, "--output-dir", o1, "--with-prior-preservation", NULL) == 2, "prior without class dir");
    CHECK(run_cli(COMMON, "--output-dir", o1, "--lora-layers", "attn.nope", NULL) == 1, "unknown target module");
    CHECK(run_cli("-m", model, "--instance-data-dir", "/nonexistent", "--instance-prompt", "x", "--output-dir", o1,
                  NULL) == 1, "missing data dir");
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd)) printf("note: could not remove %s\n", tmp);
    TEST_MAIN_END("test_train_cli");
}

/* test_cli.c — the sd3 command line end to end on the tiny golden pipeline: a seeded txt2img whose
 * --save-latents must equal the golden latents made by diffusers with that seed, PNG metadata read back
 * with `sd3 info`, and the bad-input matrix of the generate command (one-line error, non-zero exit, no
 * output file left behind). */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "io/safetensors.h"
#include "test.h"
#include "cli_harness.h"

static char golden[2048];


/* A bad invocation: non-zero exit, exactly one line on stderr containing `want`, and no out.png. */
static void expect_fail(const char *args, const char *want) {
    char out[8192], png[512];
    snprintf(png, sizeof png, "%s/out.png", tmpdir);
    unlink(png);
    int rc = run(out, sizeof out, "%s generate -m %s/tiny-sd3 -W 64 -H 64 --steps 2 --seed 1 -o %s %s", sd3_bin, golden, png, args);
    CHECK(rc != 0, "'%s' exited 0", args);
    CHECK(lines(out) == 1, "'%s' printed %d lines: %s", args, lines(out), out);
    CHECK(strstr(out, want) != NULL, "'%s': error '%s' does not mention '%s'", args, out, want);
    CHECK(!exists(png), "'%s' left %s behind", args, png);
}

int main(int argc, char **argv) {
    (void)argc;
    /* the sd3 binary sits at <build>/sd3, this test at <build>/tests/test_cli */
    cli_find_sd3(argv[0]);
    const char *g = getenv("SD3_GOLDEN");
    snprintf(golden, sizeof golden, "%s", g ? g : "../shared/golden");
    snprintf(tmpdir, sizeof tmpdir, "/tmp/sd3c_cli_XXXXXX");
    if (!mkdtemp(tmpdir)) { printf("mkdtemp failed\n"); return 1; }
    char out[16384];

    /* 1. seeded txt2img == the golden case made with that seed (t2i_4steps_cfg7: seed 0, 4 steps, cfg 7) */
    int rc = run(out, sizeof out, "%s -m %s/tiny-sd3 -p 'a photo of a cat' -W 64 -H 64 --steps 4 --cfg 7 --seed 0 "
                                  "--save-latents %s/lat.safetensors -o %s/cat.png", sd3_bin, golden, tmpdir, tmpdir);
    CHECK(rc == 0, "seeded generate failed: %s", out);
    char p[512];
    snprintf(p, sizeof p, "%s/lat.safetensors", tmpdir);
    st_file *mine = NULL, *ref = NULL;
    sd3_err err = {0};
    char gp[4096];
    snprintf(gp, sizeof gp, "%s/pipeline/t2i_4steps_cfg7.safetensors", golden);
    CHECK(st_open(&mine, p, &err) == SD3_OK, "%s", err.msg);
    CHECK(st_open(&ref, gp, &err) == SD3_OK, "%s", err.msg);
    if (mine && ref) {
        tensor a, b, bin;
        CHECK(st_get(mine, "latents", &a, &err) == SD3_OK, "%s", err.msg);
        CHECK(st_get(ref, "latents_out", &b, &err) == SD3_OK, "%s", err.msg);
        CHECK(st_get(ref, "latents_in", &bin, &err) == SD3_OK, "%s", err.msg);
        CHECK(tensor_numel(&a) == tensor_numel(&b), "latent sizes differ");
        double worst = 0;
        for (int64_t i = 0; i < tensor_numel(&a) && i < tensor_numel(&b); i++) {
            double d = (double)tensor_get_f32(&a, i) - tensor_get_f32(&b, i);
            if (d < 0) d = -d;
            if (d > worst) worst = d;
        }
        /* 6e-05 = the case's suggested_atol for latents_out (golden JSON) */
        CHECK(worst <= 6e-5, "CLI latents differ from diffusers' by %g", worst);
        printf("seeded CLI latents vs golden: max |diff| %.3g (atol 6e-05)\n", worst);
    }
    st_close(mine);
    st_close(ref);

    /* 2. the PNG carries its parameters */
    rc = run(out, sizeof out, "%s info %s/cat.png", sd3_bin, tmpdir);
    CHECK(rc == 0 && strstr(out, "prompt: a photo of a cat") && strstr(out, "seed: 0") && strstr(out, "steps: 4"),
          "sd3 info: %s", out);

    /* 3. --latents in gives the same image as the seed that made them */
    rc = run(out, sizeof out, "%s -m %s/tiny-sd3 -p 'a photo of a cat' -W 64 -H 64 --steps 4 --seed 99 --latents %s/lat0.safetensors "
                              "-o %s/x.png", sd3_bin, golden, tmpdir, tmpdir);
    CHECK(rc != 0 && strstr(out, "lat0.safetensors"), "missing latents file: %s", out);

    char f[512], args[4096];
    /* 4. sd3 tokenize: the README's hand-checked ids (diffusers issue #4153) */
    rc = run(out, sizeof out, "%s tokenize -m %s/tiny-sd3 --no-padding 'a photo of a cat'", sd3_bin, golden);
    CHECK(rc == 0 && !strcmp(out, "49406 320 1125 539 320 2368 49407\n"), "tokenize clip_l: %s", out);
    rc = run(out, sizeof out, "%s tokenize -m %s/tiny-sd3 --tokenizer clip_g --no-padding '! !! !!!'", sd3_bin, golden);
    CHECK(rc == 0 && !strcmp(out, "49406 0 0 0 0 0 0 49407\n"), "tokenize clip_g: %s", out);
    rc = run(out, sizeof out, "%s tokenize -m %s/tiny-sd3 --tokenizer bert x", sd3_bin, golden);
    CHECK(rc != 0 && strstr(out, "bert"), "tokenize bad tokenizer: %s", out);

    /* 5. sd3 encode == the golden encode_prompt "basic" case */
    rc = run(out, sizeof out, "%s encode -m %s/tiny-sd3 -p 'a photo of a cat' -o %s/cond.safetensors", sd3_bin, golden, tmpdir);
    CHECK(rc == 0, "encode: %s", out);
    snprintf(p, sizeof p, "%s/cond.safetensors", tmpdir);
    snprintf(gp, sizeof gp, "%s/text/encode_prompt/basic.safetensors", golden);
    mine = ref = NULL;
    if (st_open(&mine, p, &err) == SD3_OK && st_open(&ref, gp, &err) == SD3_OK) {
        const char *names[4] = {"prompt_embeds", "pooled_prompt_embeds", "negative_prompt_embeds", "negative_pooled_prompt_embeds"};
        for (int k = 0; k < 4; k++) {
            tensor a, b;
            int ok = st_get(mine, names[k], &a, &err) == SD3_OK && st_get(ref, names[k], &b, &err) == SD3_OK &&
                     tensor_numel(&a) == tensor_numel(&b);
            double worst = 0;
            for (int64_t i = 0; ok && i < tensor_numel(&a); i++) {
                double d = (double)tensor_get_f32(&a, i) - tensor_get_f32(&b, i);
                if (d < 0) d = -d;
                if (d > worst) worst = d;
            }
            /* 3e-4 = the largest suggested_atol of the encode_prompt cases (golden README table) */
            CHECK(ok && worst <= 3e-4, "encode %s: max |diff| %g", names[k], worst);
        }
    } else {
        CHECK(0, "encode output: %s", err.msg);
    }
    st_close(mine);
    st_close(ref);

    /* 6. --lora: applied, recorded in the PNG, and a file that is no LoRA is refused */
    rc = run(out, sizeof out, "%s -m %s/tiny-sd3 -p 'a cat' -W 64 -H 64 --steps 2 --seed 1 --lora %s/diffusion/lora/pytorch_lora_weights.safetensors:0.5 "
                              "-o %s/lora.png && %s info %s/lora.png", sd3_bin, golden, golden, tmpdir, sd3_bin, tmpdir);
    CHECK(rc == 0 && strstr(out, "loras: ") && strstr(out, "pytorch_lora_weights.safetensors:0.5"), "--lora: %s", out);
    snprintf(args, sizeof args, "-p x --lora %s/tiny-sd3/vae/diffusion_pytorch_model.safetensors", golden);
    expect_fail(args, "match no Linear");
    expect_fail("-p x --lora /nonexistent/lora.safetensors", "/nonexistent/lora.safetensors");

    /* 7. --vae-tiling runs the tiled decoder (tiny VAE tiles at 32 px, so 256 x 256 is many tiles) */
    rc = run(out, sizeof out, "%s -m %s/tiny-sd3 -p 'a cat' -W 256 -H 256 --steps 1 --seed 1 --vae-tiling -o %s/tiled.png",
             sd3_bin, golden, tmpdir);
    CHECK(rc == 0 && strstr(out, "tiled.png"), "--vae-tiling: %s", out);

    /* 8. sd3 quantize: a quantised copy generates exactly what on-the-fly int8 generates */
    rc = run(out, sizeof out, "%s quantize %s/tiny-sd3 %s/q8 --t5 int8 --precision int8 && "
                              "%s -m %s/q8 -p 'a cat' -W 64 -H 64 --steps 2 --seed 3 --save-latents %s/q8a.safetensors -o %s/q8a.png && "
                              "%s -m %s/tiny-sd3 -p 'a cat' -W 64 -H 64 --steps 2 --seed 3 --t5 int8 --precision int8 "
                              "--save-latents %s/q8b.safetensors -o %s/q8b.png && cmp %s/q8a.safetensors %s/q8b.safetensors",
             sd3_bin, golden, tmpdir, sd3_bin, tmpdir, tmpdir, tmpdir, sd3_bin, golden, tmpdir, tmpdir, tmpdir, tmpdir);
    CHECK(rc == 0, "quantize round trip: %s", out);

    /* 9. JPEG init images (baseline, progressive, grayscale; made with libjpeg-turbo's cjpeg) pass the JPEG
     * screens in image.c and decode */
    const char *jpegs[3] = {"baseline_64.jpg", "progressive_64.jpg", "gray_64.jpg"};
    for (int k = 0; k < 3; k++) {
        rc = run(out, sizeof out, "%s -m %s/tiny-sd3 -p x --steps 1 --seed 1 --init-img tests/data/%s -o %s/j.png", sd3_bin, golden,
                 jpegs[k], tmpdir);
        CHECK(rc == 0, "--init-img %s: %s", jpegs[k], out);
    }

    /* 10. the bad-input matrix */
    expect_fail("-p x -W 100", "multiples of 16");
    expect_fail("-p x -H 0", "out of range");
    expect_fail("-p x --steps 0", "--steps");
    expect_fail("-p x --steps abc", "not an integer");
    expect_fail("-p x --cfg nan", "--cfg");
    expect_fail("-p x --init-img /nonexistent.png", "/nonexistent.png");
    snprintf(f, sizeof f, "%s/garbage.png", tmpdir);
    FILE *gf = fopen(f, "w");
    fputs("this is not an image", gf);
    fclose(gf);
    snprintf(args, sizeof args, "-p x --init-img %s", f);
    expect_fail(args, "garbage.png");
    snprintf(args, sizeof args, "-p x --init-img %s/cat.png --strength 0", tmpdir);
    expect_fail(args, "strength");
    snprintf(args, sizeof args, "-p x --init-img %s/cat.png --strength 1.5", tmpdir);
    expect_fail(args, "strength");
    expect_fail("-f /nonexistent/prompt.txt", "/nonexistent/prompt.txt");
    snprintf(args, sizeof args, "-p x --mask %s/cat.png", tmpdir);
    expect_fail(args, "init image");
    snprintf(args, sizeof args, "-p x --init-img %s/cat.png --mask /nonexistent/mask.png", tmpdir);
    expect_fail(args, "/nonexistent/mask.png");
    expect_fail("", "no prompt");
    expect_fail("-p x --bogus", "--bogus");
    expect_fail("-p x --seed -3", "--seed");
    expect_fail("-p x --batch 0", "--batch");
    expect_fail("-p x -m /nonexistent/model", "/nonexistent/model");
    expect_fail("-p x --slg-scale 2", "skip");
    expect_fail("-p x --precision fp8", "--precision");
    expect_fail("-p x --t5 int3", "--t5");
    expect_fail("-p x --skip-layers 99 --slg-scale 2 --steps 1", "skip layer 99");
    /* unwritable output: a folder that does not exist, and a directory as the output */
    rc = run(out, sizeof out, "%s -m %s/tiny-sd3 -p x -W 64 -H 64 --steps 1 -o /nonexistent/dir/x.png", sd3_bin, golden);
    CHECK(rc != 0 && strstr(out, "/nonexistent/dir"), "unwritable output: %s", out);
    rc = run(out, sizeof out, "%s -m %s/tiny-sd3 -p x -W 64 -H 64 --steps 1 -o %s", sd3_bin, golden, tmpdir);
    CHECK(rc != 0 && strstr(out, "is a directory"), "directory output: %s", out);

    snprintf(args, sizeof args, "rm -rf %s", tmpdir);
    if (system(args)) {}
    TEST_MAIN_END("test_cli");
}

/* test_cli_prompts.c — `sd3 generate --prompts FILE` (one model load, many images), `--keep-loaded` and
 * `--stream-layers` end to end on the tiny golden pipeline:
 *   - a file of 3 prompts (a blank line and CRLF endings among them) writes out_0001.png .. out_0003.png and
 *     nothing more; with -v every component is loaded once ("load 1 in this context", never "load 2");
 *   - image k has prompt k in its PNG text and the same pixels as a single run of that prompt with the
 *     same seed; --stream-layers and --keep-loaded on a single run give the same pixels too;
 *   - bad input (missing, empty, blank-only, directory, NUL byte, -p with --prompts, unwritable output):
 *     non-zero exit, one line naming the file, and no image written. */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "io/image.h"
#include "test.h"
#include "cli_harness.h"

static char golden[2048];


/* Write n bytes to path (test setup). */
static void write_file(const char *path, const char *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (f) {
        fwrite(data, 1, n, f);
        fclose(f);
    }
}

/* Same pixels in two PNGs. */
static int same_pixels(const char *a, const char *b) {
    image x, y;
    sd3_err err = {0};
    if (image_load(&x, a, &err) != SD3_OK) { printf("  %s\n", err.msg); return 0; }
    if (image_load(&y, b, &err) != SD3_OK) { printf("  %s\n", err.msg); image_free(&x); return 0; }
    int ok = x.w == y.w && x.h == y.h && !memcmp(x.rgb, y.rgb, (size_t)x.w * x.h * 3);
    image_free(&x);
    image_free(&y);
    return ok;
}

#define GEN "%s generate -m %s/tiny-sd3 -W 64 -H 64 --steps 2 --cfg 5 --seed 7 --max-sequence-length 16"

/* A bad --prompts invocation: non-zero, one line mentioning want, no out_0001.png. */
static void expect_fail(const char *args, const char *want, const char *what) {
    char out[8192], png[512], first[512];
    snprintf(png, sizeof png, "%s/bad.png", tmpdir);
    snprintf(first, sizeof first, "%s/bad_0001.png", tmpdir);
    int rc = run(out, sizeof out, GEN " -o %s %s", sd3_bin, golden, png, args);
    CHECK(rc != 0, "%s: exited 0", what);
    CHECK(lines(out) == 1, "%s: printed %d lines: %s", what, lines(out), out);
    CHECK(strstr(out, want) != NULL, "%s: error '%s' does not mention '%s'", what, out, want);
    CHECK(!exists(first) && !exists(png), "%s: left an image behind", what);
}

int main(int argc, char **argv) {
    (void)argc;
    cli_find_sd3(argv[0]);
    const char *g = getenv("SD3_GOLDEN");
    snprintf(golden, sizeof golden, "%s", g ? g : "../shared/golden");
    snprintf(tmpdir, sizeof tmpdir, "/tmp/sd3c_prompts_XXXXXX");
    if (!mkdtemp(tmpdir)) { printf("mkdtemp failed\n"); return 1; }
    char out[65536], f[512], a[512], b[512];

    /* 1. three prompts, one load */
    snprintf(f, sizeof f, "%s/prompts.txt", tmpdir);
    const char *text = "a photo of a cat\r\n\n   \nred bicycle, watercolour\r\nan owl at night";
    write_file(f, text, strlen(text));
    int rc = run(out, sizeof out, GEN " -v --prompts %s -o %s/out.png", sd3_bin, golden, f, tmpdir);
    CHECK(rc == 0, "--prompts run failed: %s", out);
    for (int k = 1; k <= 3; k++) {
        snprintf(a, sizeof a, "%s/out_%04d.png", tmpdir, k);
        CHECK(exists(a), "%s was not written", a);
    }
    snprintf(a, sizeof a, "%s/out_0004.png", tmpdir);
    CHECK(!exists(a), "a blank line became an image");
    snprintf(a, sizeof a, "%s/out.png", tmpdir);
    CHECK(!exists(a), "out.png written besides the numbered files");
    const char *comps[] = {"text_encoder ", "text_encoder_2 ", "text_encoder_3 ", "transformer ", "vae "};
    for (int k = 0; k < 5; k++) {
        char want[128];
        snprintf(want, sizeof want, "loaded %s", comps[k]);
        const char *hit = strstr(out, want);
        CHECK(hit && strstr(hit, "load 1 in this context"), "no load line for %s: %s", comps[k], out);
    }
    CHECK(!strstr(out, "load 2 in this context"), "a component was loaded twice: %s", out);

    /* 2. image 2 == a single run of prompt 2; its PNG text names prompt 2 */
    rc = run(out, sizeof out, "%s info %s/out_0002.png", sd3_bin, tmpdir);
    CHECK(rc == 0 && strstr(out, "prompt: red bicycle, watercolour\n"), "sd3 info out_0002.png: %s", out);
    rc = run(out, sizeof out, GEN " -p 'red bicycle, watercolour' -o %s/single.png", sd3_bin, golden, tmpdir);
    CHECK(rc == 0, "single run: %s", out);
    snprintf(a, sizeof a, "%s/out_0002.png", tmpdir);
    snprintf(b, sizeof b, "%s/single.png", tmpdir);
    CHECK(same_pixels(a, b), "--prompts image 2 differs from the single run of that prompt");
    snprintf(a, sizeof a, "%s/out_0001.png", tmpdir);
    CHECK(!same_pixels(a, b), "images 1 and 2 are the same (prompt not used?)");

    /* 3. --stream-layers and --keep-loaded: same pixels */
    rc = run(out, sizeof out, GEN " -p 'red bicycle, watercolour' --stream-layers -o %s/stream.png", sd3_bin, golden, tmpdir);
    snprintf(a, sizeof a, "%s/stream.png", tmpdir);
    CHECK(rc == 0 && same_pixels(a, b), "--stream-layers image differs: %s", out);
    rc = run(out, sizeof out, GEN " -p 'red bicycle, watercolour' --keep-loaded -o %s/keep.png", sd3_bin, golden, tmpdir);
    snprintf(a, sizeof a, "%s/keep.png", tmpdir);
    CHECK(rc == 0 && same_pixels(a, b), "--keep-loaded image differs: %s", out);
    rc = run(out, sizeof out, GEN " --prompts %s --stream-layers -o %s/sk.png", sd3_bin, golden, f, tmpdir);
    snprintf(a, sizeof a, "%s/sk_0002.png", tmpdir);
    CHECK(rc == 0 && same_pixels(a, b), "--prompts --stream-layers image 2 differs: %s", out);

    /* 4. help */
    rc = run(out, sizeof out, "%s generate --help", sd3_bin);
    CHECK(rc == 0 && strstr(out, "--prompts FILE") && strstr(out, "--keep-loaded") && strstr(out, "--stream-layers"),
          "help does not list the flags: %s", out);

    /* 5. bad input */
    char args[1024], p[512];
    snprintf(p, sizeof p, "%s/missing.txt", tmpdir);
    snprintf(args, sizeof args, "--prompts %s", p);
    expect_fail(args, "missing.txt", "missing prompt file");
    snprintf(p, sizeof p, "%s/empty.txt", tmpdir);
    write_file(p, "", 0);
    snprintf(args, sizeof args, "--prompts %s", p);
    expect_fail(args, "empty.txt", "empty prompt file");
    snprintf(p, sizeof p, "%s/blank.txt", tmpdir);
    write_file(p, "\n  \r\n\t\n", 6);
    snprintf(args, sizeof args, "--prompts %s", p);
    expect_fail(args, "blank.txt", "blank prompt file");
    snprintf(args, sizeof args, "--prompts %s", tmpdir);
    expect_fail(args, tmpdir, "prompt file is a directory");
    snprintf(p, sizeof p, "%s/nul.txt", tmpdir);
    write_file(p, "a cat\n\0a dog\n", 13);
    snprintf(args, sizeof args, "--prompts %s", p);
    expect_fail(args, "nul.txt", "prompt file with a NUL byte");
    snprintf(args, sizeof args, "-p cat --prompts %s", f);
    expect_fail(args, "--prompts", "-p and --prompts");
    snprintf(args, sizeof args, "--prompts %s -o %s/no/such/dir/x.png", f, tmpdir);
    expect_fail(args, "no/such/dir", "unwritable output folder");
    snprintf(a, sizeof a, "%s/no/such/dir/x_0001.png", tmpdir);
    CHECK(!exists(a), "image written into a missing folder");
    if (geteuid() != 0) {   /* root reads anything */
        snprintf(p, sizeof p, "%s/secret.txt", tmpdir);
        write_file(p, "a cat\n", 6);
        chmod(p, 0);
        snprintf(args, sizeof args, "--prompts %s", p);
        expect_fail(args, "secret.txt", "unreadable prompt file");
    }

    rc = run(out, sizeof out, "rm -rf %s", tmpdir);
    TEST_MAIN_END("test_cli_prompts");
}

/* test_bench_synth.c — the benchmark's synthesised components (src/bench/synth.h): parameter counts
 * against the published sizes of the released models, the architectures' configs accepted by the
 * transformer's validator, and the small components (VAE, CLIP-L) written into a temporary cache and
 * loaded back through the real loaders (so every key name and shape matches what they expect), run on a
 * tiny input with finite O(1) outputs, reused on a second call and regenerated when the file is damaged. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "bench/synth.h"
#include "io/json_util.h"
#include "io/weights.h"
#include "text/clip.h"
#include "vae/vae.h"
#include "test.h"

/* Remove the files of one component folder and the folder (the cache is ours, in a mkdtemp folder). */
static void rm_component(const char *dir) {
    char p[4400];
    const char *files[] = {"config.json", "model.safetensors", "diffusion_pytorch_model.safetensors"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        unlink(p);
    }
    rmdir(dir);
}

/* Largest |x| and whether every value is finite. */
static float max_abs(const float *x, size_t n, int *finite) {
    float m = 0;
    *finite = 1;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(x[i])) *finite = 0;
        else if (fabsf(x[i]) > m) m = fabsf(x[i]);
    }
    return m;
}

int main(void) {
    /* published parameter counts: CLIPTextModelWithProjection ViT-L/14 (SD3 text_encoder) 123,650,304;
     * OpenCLIP bigG text model with projection (text_encoder_2) 694,659,840; T5-v1.1-XXL encoder 4,762,310,656;
     * the 16-channel SD3 AutoencoderKL 83,819,683 */
    CHECK(syn_component_params(SYN_SD3_MEDIUM, SYN_CLIP_L) == 123650304LL, "clip-l %lld",
          (long long)syn_component_params(SYN_SD3_MEDIUM, SYN_CLIP_L));
    CHECK(syn_component_params(SYN_SD3_MEDIUM, SYN_CLIP_G) == 694659840LL, "clip-g %lld",
          (long long)syn_component_params(SYN_SD3_MEDIUM, SYN_CLIP_G));
    CHECK(syn_component_params(SYN_SD3_MEDIUM, SYN_T5) == 4762310656LL, "t5 %lld",
          (long long)syn_component_params(SYN_SD3_MEDIUM, SYN_T5));
    CHECK(syn_component_params(SYN_SD3_MEDIUM, SYN_VAE) == 83819683LL, "vae %lld",
          (long long)syn_component_params(SYN_SD3_MEDIUM, SYN_VAE));
    /* transformers: about 2 B (SD3 Medium), 2.5 B (SD3.5 Medium), 8 B (SD3.5 Large) */
    int64_t pm = syn_component_params(SYN_SD3_MEDIUM, SYN_MMDIT), p5m = syn_component_params(SYN_SD35_MEDIUM, SYN_MMDIT);
    int64_t p5l = syn_component_params(SYN_SD35_LARGE, SYN_MMDIT);
    CHECK(pm > 1.9e9 && pm < 2.2e9, "sd3-medium %lld", (long long)pm);
    CHECK(p5m > 2.3e9 && p5m < 2.7e9, "sd3.5-medium %lld", (long long)p5m);
    CHECK(p5l > 7.8e9 && p5l < 8.3e9, "sd3.5-large %lld", (long long)p5l);
    for (int a = 0; a < SYN_ARCH_COUNT; a++) {
        mmdit_config c;
        syn_mmdit_config((syn_arch)a, &c);
        sd3_err e = {0};
        CHECK(mmdit_config_validate(&c, syn_arch_name((syn_arch)a), &e) == SD3_OK, "%s", e.msg);
        syn_arch back;
        CHECK(syn_arch_parse(syn_arch_name((syn_arch)a), &back) == 0 && back == (syn_arch)a, "arch name %d", a);
    }
    syn_arch dummy;
    CHECK(syn_arch_parse("sd4", &dummy) == -1, "unknown arch accepted");

    char cache[] = "/tmp/sd3c-synth-test-XXXXXX";
    CHECK(mkdtemp(cache) != NULL, "mkdtemp");
    sd3_err err = {0};
    char vdir[4096] = "", cdir[4096] = "", path[4400];
    int gen = -1;

    /* VAE in F16: written, loaded by vae_open_dir, decodes a 2x2 latent to a finite O(1) 16x16 image */
    sd3_status s = syn_component_dir(SYN_SD3_MEDIUM, SYN_VAE, DT_F16, cache, vdir, sizeof vdir, &gen, &err);
    CHECK(s == SD3_OK && gen == 1, "vae generate: %s", err.msg);
    vae_model vm;
    memset(&vm, 0, sizeof vm);
    s = vae_open_dir(&vm, vdir, &err);
    CHECK(s == SD3_OK, "vae load: %s", err.msg);
    if (s == SD3_OK) {
        float z[16 * 2 * 2], img[3 * 16 * 16];
        for (int i = 0; i < 64; i++) z[i] = (float)((i * 37) % 11) / 5.0f - 1.0f;
        s = vae_decode(&vm, z, 1, 16, 2, 2, img, NULL, &err);
        int fin;
        float m = max_abs(img, sizeof img / sizeof img[0], &fin);
        CHECK(s == SD3_OK && fin && m > 1e-3f && m < 1e3f, "vae decode: %s, max %g", err.msg, m);
        CHECK(vm.enc.down[0].res[0].conv1_w.dt == DT_F16, "stored dtype kept");
        vae_free(&vm);
    }
    /* second call: reused, not rewritten */
    s = syn_component_dir(SYN_SD3_MEDIUM, SYN_VAE, DT_F16, cache, vdir, sizeof vdir, &gen, &err);
    CHECK(s == SD3_OK && gen == 0, "vae reuse: %s gen %d", err.msg, gen);

    /* CLIP-L in BF16: loaded by clip_load over weights_open_dir, forward on 3 tokens */
    s = syn_component_dir(SYN_SD3_MEDIUM, SYN_CLIP_L, DT_BF16, cache, cdir, sizeof cdir, &gen, &err);
    CHECK(s == SD3_OK && gen == 1, "clip-l generate: %s", err.msg);
    snprintf(path, sizeof path, "%s/config.json", cdir);
    cJSON *cfg = json_load_file(path, &err);
    weights w;
    memset(&w, 0, sizeof w);
    CHECK(cfg != NULL, "clip config: %s", err.msg);
    s = cfg ? weights_open_dir(&w, cdir, "model", &err) : SD3_ERR_IO;
    CHECK(s == SD3_OK, "clip weights: %s", err.msg);
    if (s == SD3_OK) {
        clip_model cm;
        s = clip_load(&cm, &w, cfg, "text_encoder", &err);
        CHECK(s == SD3_OK, "clip load: %s", err.msg);
        if (s == SD3_OK) {
            int64_t ids[3] = {49406, 320, 49407};
            float hid[3 * 768], emb[768];
            s = clip_forward(&cm, ids, 1, 3, -2, hid, NULL, emb, &err);
            int f1, f2;
            float m1 = max_abs(hid, 3 * 768, &f1), m2 = max_abs(emb, 768, &f2);
            CHECK(s == SD3_OK && f1 && f2 && m1 > 1e-2f && m1 < 1e3f && m2 > 1e-2f && m2 < 1e3f,
                  "clip forward: %s, max %g %g", err.msg, m1, m2);
            CHECK(cm.cfg.act == CLIP_ACT_QUICK_GELU && cm.cfg.num_hidden_layers == 12, "clip-l config");
            clip_free(&cm);
        }
        weights_close(&w);
    }
    cJSON_Delete(cfg);

    /* a damaged (truncated) file is regenerated, not reused */
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", vdir);
    CHECK(truncate(path, 1000) == 0, "truncate");
    s = syn_component_dir(SYN_SD3_MEDIUM, SYN_VAE, DT_F16, cache, vdir, sizeof vdir, &gen, &err);
    CHECK(s == SD3_OK && gen == 1, "vae regenerate: %s gen %d", err.msg, gen);

    /* an unsupported stored dtype is an error naming it */
    s = syn_component_dir(SYN_SD3_MEDIUM, SYN_CLIP_L, DT_I8, cache, cdir, sizeof cdir, &gen, &err);
    CHECK(s == SD3_ERR_INVALID_ARG && strstr(err.msg, "I8"), "bad dtype: %s", err.msg);

    rm_component(vdir);
    rm_component(cdir);
    rmdir(cache);
    TEST_MAIN_END("test_bench_synth");
}

/*
 * fuzz_lora.c — LoRA key mapping and shape checks (src/lora/) on the tiny golden transformer, loaded once.
 * The input is a text list of tensors, one per line: "<key> <dtype> <d0> <d1> ..." (dtype F32, F16, BF16,
 * I64, ...; no dims = a scalar); the target writes them as a safetensors file (values from a fixed hash,
 * small, with the odd NaN when the key asks for it with "nan"), then lora_open, lora_count, lora_attach
 * (strict and lenient), and for an accepted file a forward pass with the adapters, lora_fuse, a forward,
 * lora_unfuse and lora_detach_all; then the CLIP-L modules through lora_clip_fuse / lora_clip_unfuse on the
 * tiny text encoder. Structured input keeps the fuzzer on the key grammar instead of the
 * safetensors header (fuzz_safetensors covers that).
 */
#include <math.h>
#include "fuzz_common.h"
#include "io/safetensors.h"
#include "io/json_util.h"
#include "io/weights.h"
#include "lora/lora.h"
#include "lora/lora_clip.h"
#include "mmdit/mmdit.h"
#include "text/clip.h"

#define MAX_T 64
#define MAX_NUMEL 65536

static mmdit_model model;
static clip_model clip_l;
static weights clip_w;
static float *x, *ctx, *pooled, *outb;
static float tstep[1] = {500.0f};

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    char dir[1024];
    sd3_err err = {0};
    snprintf(dir, sizeof dir, "%s/tiny-sd3/transformer", fz_golden());
    if (mmdit_load_dir(&model, dir, &err) != SD3_OK) { fprintf(stderr, "%s\n", err.msg); abort(); }
    snprintf(dir, sizeof dir, "%s/tiny-sd3/text_encoder", fz_golden());
    char cfgp[1100];
    snprintf(cfgp, sizeof cfgp, "%s/config.json", dir);
    cJSON *cfg = json_load_file(cfgp, &err);
    if (!cfg || weights_open_dir(&clip_w, dir, "model", &err) != SD3_OK || clip_load(&clip_l, &clip_w, cfg, "text_encoder", &err) != SD3_OK) {
        fprintf(stderr, "%s\n", err.msg);
        abort();
    }
    cJSON_Delete(cfg);
    x = calloc(16 * 4 * 4, sizeof *x);
    ctx = calloc(4 * 96, sizeof *ctx);
    pooled = calloc(80, sizeof *pooled);
    outb = calloc(16 * 4 * 4, sizeof *outb);
    for (int i = 0; i < 16 * 16; i++) x[i] = (float)((i * 37) % 11) / 11.0f - 0.5f;
    for (int i = 0; i < 4 * 96; i++) ctx[i] = (float)((i * 13) % 7) / 7.0f - 0.5f;
    return 0;
}

/* A forward pass must not crash; with finite adapters the output must stay finite. */
static void forward(int expect_finite) {
    sd3_err err = {0};
    sd3_status st = mmdit_forward(&model, x, 1, 4, 4, ctx, 4, pooled, tstep, NULL, 0, outb, &err);
    fz_check_err(st, &err, "mmdit_forward");
    if (st == SD3_OK && expect_finite)
        for (int i = 0; i < 16 * 16; i++)
            if (!isfinite(outb[i])) { fprintf(stderr, "non-finite output with finite adapters\n"); abort(); }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *s = fz_cstr(data, size);
    st_writer *w = st_writer_new();
    void *bufs[MAX_T];
    int nb = 0, any_nan = 0;
    char *save = NULL;
    for (char *line = strtok_r(s, "\n", &save); line && nb < MAX_T; line = strtok_r(NULL, "\n", &save)) {
        char *sv2 = NULL, *key = strtok_r(line, " ", &sv2), *dts = strtok_r(NULL, " ", &sv2);
        if (!key || !dts) continue;
        dtype dt;
        if (dtype_parse(dts, &dt) != 0 || !dtype_size(dt)) continue;
        int64_t shape[8];
        int nd = 0;
        int64_t numel = 1;
        for (char *d = strtok_r(NULL, " ", &sv2); d && nd < 8; d = strtok_r(NULL, " ", &sv2)) {
            long v = strtol(d, NULL, 10);
            if (v < 0 || v > MAX_NUMEL) v = 1;
            shape[nd++] = v;
            numel *= v;
            if (numel > MAX_NUMEL) break;
        }
        if (numel > MAX_NUMEL) continue;
        size_t es = dtype_size(dt);
        uint8_t *b = calloc((size_t)numel * es + 1, 1);
        uint32_t h = 2166136261u;
        for (const char *c = key; *c; c++) h = (h ^ (uint8_t)*c) * 16777619u;
        int nan = strstr(key, "nan") != NULL;
        any_nan |= nan;
        for (int64_t i = 0; i < numel; i++) {
            h = h * 1664525u + 1013904223u;
            float v = ((float)(h >> 8) / 16777216.0f - 0.5f) * 0.2f;
            if (nan && i == 0) v = NAN;
            if (strstr(key, "alpha")) v = 4.0f;
            switch (dt) {
            case DT_F32: memcpy(b + i * 4, &v, 4); break;
            case DT_F16: { uint16_t u = f32_to_fp16(v); memcpy(b + i * 2, &u, 2); break; }
            case DT_BF16: { uint16_t u = f32_to_bf16(v); memcpy(b + i * 2, &u, 2); break; }
            case DT_F64: { double d = v; memcpy(b + i * 8, &d, 8); break; }
            default: memset(b + i * (int64_t)es, (int)(h >> 24), es); break;
            }
        }
        bufs[nb++] = b;
        sd3_err err = {0};
        if (st_writer_add(w, key, dt, nd, shape, b, &err) != SD3_OK) fz_check_err(SD3_ERR_INVALID_ARG, &err, "st_writer_add");
    }
    char p[512];
    fz_path(p, sizeof p, "lora.safetensors");
    sd3_err err = {0};
    sd3_status st = st_writer_write(w, p, &err);
    st_writer_free(w);
    for (int i = 0; i < nb; i++) free(bufs[i]);
    free(s);
    if (st != SD3_OK) return 0;

    lora_file *f = NULL;
    memset(&err, 0, sizeof err);
    st = lora_open(&f, p, &err);
    fz_check_err(st, &err, "lora_open");
    if (st != SD3_OK) return 0;
    for (int t = 0; t < LORA_TARGET_COUNT; t++) (void)lora_count(f, (lora_target)t);
    for (int lenient = 0; lenient < 2; lenient++) {
        memset(&err, 0, sizeof err);
        st = lora_attach(&model, f, lenient ? 0.5f : 1.0f, lenient, &err);
        fz_check_err(st, &err, "lora_attach");
        if (st != SD3_OK) {
            if (lora_adapter_count(&model, NULL) != 0) { fprintf(stderr, "failed attach changed the model\n"); abort(); }
            continue;
        }
        forward(!any_nan);
        memset(&err, 0, sizeof err);
        st = lora_fuse(&model, &err);
        fz_check_err(st, &err, "lora_fuse");
        if (st == SD3_OK) forward(!any_nan);
        lora_unfuse(&model);
        lora_detach_all(&model);
        break;
    }
    /* the CLIP-L modules of the same file, fused into the tiny text encoder and taken out again */
    for (int lenient = 0; lenient < 2; lenient++) {
        lora_clip_state *cs = NULL;
        memset(&err, 0, sizeof err);
        st = lora_clip_fuse(&clip_l, LORA_TARGET_CLIP_L, f, 0.7f, lenient, &cs, &err);
        fz_check_err(st, &err, "lora_clip_fuse");
        lora_clip_unfuse(&clip_l, &cs);
        if (st == SD3_OK) break;
    }
    lora_close(f);
    if (lora_adapter_count(&model, NULL) != 0) abort();
    return 0;
}

/*
 * kind_lora.c — golden kind "lora_forward": the case's tiny SD3 transformer ("base_model", under the golden
 * root) with the diffusers-format LoRA ("lora_file", beside the case) on the stored inputs:
 *   output_base             no LoRA;
 *   output_lora_scale1.0    run-time adapters, scale 1.0;
 *   output_lora_scale0.5    run-time adapters, scale 0.5;
 *   output_fused_scale1.0   after lora_fuse at scale 1.0, and every fused_weight.<module> (W + B A).
 * The run-time scale-1.0 output is checked a second time on the original single-file checkpoint of the same
 * transformer (tiny-sd3-single-file/sd3_tiny.safetensors), where q/k/v are row slices of a fused qkv.
 *
 * The fused weights carry no suggested_atol (the case computed them once, in float32): they are compared
 * within 4 float32 ulps of their largest magnitude, the rounding of one add after a rank-r sum.
 */
#include <float.h>
#include <math.h>
#include <string.h>
#include "golden.h"
#include "io/json_util.h"
#include "lora/lora.h"
#include "mmdit/mmdit.h"


/* Forward m on the inputs and compare with expected tensor `name`; `what` labels failures. */
static void run_check(golden_case *gc, const mmdit_model *m, const golden_mmdit_inputs *in, const char *name,
                      const char *what) {
    int64_t n = (int64_t)in->B * m->cfg.out_channels * in->H * in->W;
    float *out = sd3_malloc((size_t)n * sizeof(float));
    if (!out) { golden_fail(gc, "out of memory"); return; }
    sd3_err err = {0};
    if (mmdit_forward(m, in->x, in->B, in->H, in->W, in->ctx, in->S, in->pooled, in->t, NULL, 0, out, &err) != SD3_OK)
        golden_fail(gc, "%s: forward: %s", what, err.msg);
    else
        golden_check(gc, name, out, n);
    sd3_free(out);
}

/* Attach f at scale to m; records a failure and returns -1 if it does not attach. */
static int attach(golden_case *gc, mmdit_model *m, lora_file *f, float scale) {
    sd3_err err = {0};
    if (lora_attach(m, f, scale, 0, &err) != SD3_OK) {
        golden_fail(gc, "lora_attach: %s", err.msg);
        return -1;
    }
    return 0;
}

/* Compare every fused_weight.<module> of the case with the fused model's weights. */
static void check_fused_weights(golden_case *gc, mmdit_model *m) {
    int n_lin = mmdit_list_linears(m, NULL, 0);
    mmdit_named_linear *lins = sd3_calloc((size_t)n_lin, sizeof *lins);
    if (!lins) { golden_fail(gc, "out of memory"); return; }
    mmdit_list_linears(m, lins, n_lin);
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(gc->json, "tensors");
    int n_fw = 0;
    for (const cJSON *t = ts ? ts->child : NULL; t; t = t->next) {
        const char *pre = "fused_weight.";
        if (strncmp(t->string, pre, strlen(pre))) continue;
        n_fw++;
        const char *mod = t->string + strlen(pre);
        const mmdit_linear *lin = NULL;
        for (int j = 0; j < n_lin && !lin; j++)
            if (!strcmp(lins[j].diffusers, mod)) lin = lins[j].lin;
        if (!lin) { golden_fail(gc, "%s: no such Linear in the model", t->string); continue; }
        if (lin->weight.dt != DT_F32) { golden_fail(gc, "%s: the fused weight is not F32", t->string); continue; }
        int64_t n = tensor_numel(&lin->weight);
        float *want = golden_f32(gc, t->string, NULL);
        if (!want) continue;
        double mx = 0;
        for (int64_t i = 0; i < n; i++) mx = fmax(mx, fabs(want[i]));
        sd3_free(want);
        golden_check_atol(gc, t->string, lin->weight.data, n, 4.0 * FLT_EPSILON * mx);
    }
    int n_adapted = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(gc->json, "adapted_modules"));
    if (n_fw == 0 || (n_adapted > 0 && n_fw != n_adapted))
        golden_fail(gc, "the case lists %d fused weights for %d adapted modules", n_fw, n_adapted);
    sd3_free(lins);
}

int golden_lora_forward(golden_case *gc) {
    char model_dir[4096], lora_path[4096], single[4096], config[4200];
    golden_root_path(gc, json_str(gc->json, "base_model", "tiny-sd3/transformer"), model_dir, sizeof model_dir);
    golden_case_path(gc, json_str(gc->json, "lora_file", "pytorch_lora_weights.safetensors"), lora_path,
                     sizeof lora_path);
    golden_mmdit_inputs in;
    if (golden_mmdit_inputs_load(gc, &in)) { golden_mmdit_inputs_free(&in); return -1; }
    sd3_err err = {0};
    lora_file *f = NULL;
    if (lora_open(&f, lora_path, &err) != SD3_OK) {
        golden_fail(gc, "lora_open: %s", err.msg);
        golden_mmdit_inputs_free(&in);
        return -1;
    }
    mmdit_model m;
    if (mmdit_load_dir(&m, model_dir, &err) != SD3_OK) {
        golden_fail(gc, "load %s: %s", model_dir, err.msg);
    } else {
        run_check(gc, &m, &in, "output_base", "base");
        if (!attach(gc, &m, f, 1.0f)) run_check(gc, &m, &in, "output_lora_scale1.0", "run-time scale 1.0");
        lora_detach_all(&m);
        if (!attach(gc, &m, f, 0.5f)) run_check(gc, &m, &in, "output_lora_scale0.5", "run-time scale 0.5");
        lora_detach_all(&m);
        if (!attach(gc, &m, f, 1.0f)) {
            if (lora_fuse(&m, &err) != SD3_OK) {
                golden_fail(gc, "lora_fuse: %s", err.msg);
            } else {
                run_check(gc, &m, &in, "output_fused_scale1.0", "fused scale 1.0");
                check_fused_weights(gc, &m);
                lora_unfuse(&m);
                run_check(gc, &m, &in, "output_lora_scale1.0", "unfused again (run-time scale 1.0)");
            }
        }
        mmdit_free(&m); /* detaches through the model's release hook */
    }

    /* Same transformer from its original single-file checkpoint (fused qkv rows as q/k/v views). */
    golden_root_path(gc, "tiny-sd3-single-file/sd3_tiny.safetensors", single, sizeof single);
    snprintf(config, sizeof config, "%s/config.json", model_dir);
    if (mmdit_load_file(&m, single, config, &err) != SD3_OK) {
        golden_fail(gc, "load %s: %s", single, err.msg);
    } else {
        if (!attach(gc, &m, f, 1.0f)) run_check(gc, &m, &in, "output_lora_scale1.0", "single file, scale 1.0");
        mmdit_free(&m);
    }
    lora_close(f);
    golden_mmdit_inputs_free(&in);
    return 0;
}

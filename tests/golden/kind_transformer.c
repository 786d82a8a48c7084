/*
 * kind_transformer.c — golden kind "transformer_forward": run the case's SD3Transformer2DModel (model_dir)
 * on the stored inputs and compare `output` and every intermediate the case carries (through the forward
 * hook); then run the same case from the variant's original-layout single-file checkpoint
 * (tiny-sd3-single-file/, config.json from the diffusers folder) and compare again.
 */
#include <string.h>
#include "golden.h"
#include "io/json_util.h"
#include "mmdit/mmdit.h"

/* What the hook compares against, and which expected tensors it has seen. */
typedef struct hook_state {
    golden_case *gc;
    char seen[256][64];
    int n_seen;
} hook_state;

/* Forward hook: compare every intermediate the case file carries (others are ignored). */
static void on_tensor(void *user, const char *name, const float *data, int64_t n) {
    hook_state *hs = user;
    if (!golden_tensor_json(hs->gc, name)) return;
    golden_check(hs->gc, name, data, n);
    if (hs->n_seen < 256) snprintf(hs->seen[hs->n_seen++], sizeof hs->seen[0], "%s", name);
}

/* Run m on the inputs, checking intermediates through the hook and then `output`; afterwards every tensor
 * of the case with a tolerance must have been compared. `what` labels failures. */
static void run_and_check(golden_case *gc, const mmdit_model *m, const golden_mmdit_inputs *in, const char *what) {
    const mmdit_config *c = &m->cfg;
    if (in->C != c->in_channels || in->J != c->joint_attention_dim || in->P != c->pooled_projection_dim) {
        golden_fail(gc, "%s: inputs (channels %d, text width %d, pooled %d) do not fit the model (%d, %d, %d)", what,
                    in->C, in->J, in->P, c->in_channels, c->joint_attention_dim, c->pooled_projection_dim);
        return;
    }
    int64_t n_out = (int64_t)in->B * c->out_channels * in->H * in->W;
    float *out = sd3_malloc((size_t)n_out * sizeof(float));
    if (!out) { golden_fail(gc, "out of memory"); return; }
    hook_state hs;
    memset(&hs, 0, sizeof hs);
    hs.gc = gc;
    mmdit_hook hook = {on_tensor, &hs};
    sd3_err err = {0};
    if (mmdit_forward_hooked(m, in->x, in->B, in->H, in->W, in->ctx, in->S, in->pooled, in->t, NULL, 0, out, &hook,
                             &err) != SD3_OK) {
        golden_fail(gc, "%s: forward: %s", what, err.msg);
    } else {
        golden_check(gc, "output", out, n_out);
        const cJSON *ts = cJSON_GetObjectItemCaseSensitive(gc->json, "tensors");
        for (const cJSON *t = ts ? ts->child : NULL; t; t = t->next) {
            if (!strcmp(t->string, "output") || json_num(t, "suggested_atol", -1) < 0) continue;
            int seen = 0;
            for (int i = 0; i < hs.n_seen && !seen; i++) seen = !strcmp(hs.seen[i], t->string);
            if (!seen) golden_fail(gc, "%s: the forward produced no intermediate '%s'", what, t->string);
        }
    }
    sd3_free(out);
}

/* The single-file checkpoint of a case's variant, from the case file's name prefix (NULL if unknown). */
static const char *single_file_of(const golden_case *gc) {
    const char *f = json_str(gc->json, "file", "");
    const char *base = strrchr(f, '/') ? strrchr(f, '/') + 1 : f;
    if (!strncmp(base, "sd35l_", 6)) return "sd35_large_like_tiny.safetensors";
    if (!strncmp(base, "sd35m_", 6)) return "sd35_medium_like_tiny.safetensors";
    if (!strncmp(base, "sd3_", 4)) return "sd3_tiny.safetensors";
    return NULL;
}

int golden_transformer_forward(golden_case *gc) {
    const char *dir = golden_model_dir(gc);
    if (!dir) { golden_fail(gc, "case has no model_dir"); return -1; }
    char model_dir[4096];
    snprintf(model_dir, sizeof model_dir, "%s", dir);
    golden_mmdit_inputs in;
    if (golden_mmdit_inputs_load(gc, &in)) { golden_mmdit_inputs_free(&in); return -1; }

    sd3_err err = {0};
    mmdit_model m;
    if (mmdit_load_dir(&m, model_dir, &err) != SD3_OK) {
        golden_fail(gc, "load %s: %s", model_dir, err.msg);
    } else {
        run_and_check(gc, &m, &in, "diffusers folder");
        mmdit_free(&m);
    }

    const char *sf = single_file_of(gc);
    if (sf) {
        char path[4096], cfg[4200];
        golden_root_path(gc, "tiny-sd3-single-file", path, sizeof path);
        strncat(path, "/", sizeof path - strlen(path) - 1);
        strncat(path, sf, sizeof path - strlen(path) - 1);
        snprintf(cfg, sizeof cfg, "%s/config.json", model_dir);
        if (gc->verbose) printf("    -- again from single file %s\n", sf);
        if (mmdit_load_file(&m, path, cfg, &err) != SD3_OK) {
            golden_fail(gc, "load %s: %s", path, err.msg);
        } else {
            if (!m.original_layout) golden_fail(gc, "%s was not read as an original-layout checkpoint", path);
            run_and_check(gc, &m, &in, sf);
            mmdit_free(&m);
        }
    }
    golden_mmdit_inputs_free(&in);
    return gc->n_failed ? -1 : 0;
}

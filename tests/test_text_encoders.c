/*
 * test_text_encoders.c — bad input for the CLIP and T5 text encoders: weight files with a tensor
 * missing, misshaped or of an integer dtype, configs with a key missing or an unsupported value, and
 * forward calls with ids, lengths or hidden-state indices out of range. Each must fail with the right
 * status and a message naming the tensor / key. Also: the T5 embedding under its other name loads,
 * and BF16 / F16 copies of the weights run from their stored dtype within a written-down bound of the
 * golden F32 outputs.
 *
 *   test_text_encoders [GOLDEN_ROOT]    (default $SD3_GOLDEN, else ../shared/golden)
 *
 * The damaged files are copies of the tiny SD3 encoders written with st_writer into a temp folder.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "io/json_util.h"
#include "io/safetensors.h"
#include "io/weights.h"
#include "test.h"
#include "text/clip.h"
#include "text/t5.h"

static char g_tmp[256];       /* temp folder for the damaged copies */
static char g_root[2048];     /* golden root */

/* How to damage a copy: drop a tensor, give one a new shape (same bytes), rename one, change one's
 * dtype to I32 (same bytes), or convert every tensor to another float dtype. */
typedef struct edit {
    const char *drop;
    const char *reshape;
    int ndim;
    int64_t shape[2];
    const char *rename_from, *rename_to;
    const char *as_int;
    dtype convert;            /* DT_F32 = keep */
} edit;

/* Copy the safetensors file src to dst applying e; 0 on success. */
static int write_copy(const char *src, const char *dst, const edit *e) {
    sd3_err err = {0};
    st_file *f;
    if (st_open(&f, src, &err) != SD3_OK) { printf("  cannot open %s: %s\n", src, err.msg); return -1; }
    st_writer *w = st_writer_new();
    void **conv = calloc((size_t)f->n, sizeof *conv);
    int rc = 0;
    for (int i = 0; i < f->n && !rc; i++) {
        const st_entry *en = &f->entries[i];
        if (e->drop && !strcmp(en->name, e->drop)) continue;
        const char *name = (e->rename_from && !strcmp(en->name, e->rename_from)) ? e->rename_to : en->name;
        dtype dt = en->dt;
        int ndim = en->ndim;
        int64_t shape[ST_MAX_RANK];
        memcpy(shape, en->shape, sizeof shape);
        const void *data = en->data;
        if (e->reshape && !strcmp(en->name, e->reshape)) {
            ndim = e->ndim;
            shape[0] = e->shape[0];
            shape[1] = e->shape[1];
        }
        if (e->as_int && !strcmp(en->name, e->as_int)) dt = DT_I32;
        if (e->convert != DT_F32 && en->dt == DT_F32) {
            size_t n = (en->end - en->begin) / 4;
            conv[i] = malloc(n * 2 + 2);
            if (e->convert == DT_BF16) f32_to_bf16_row(en->data, conv[i], n);
            else f32_to_fp16_row(en->data, conv[i], n);
            data = conv[i];
            dt = e->convert;
        }
        if (st_writer_add(w, name, dt, ndim, shape, data, &err) != SD3_OK) { printf("  %s\n", err.msg); rc = -1; }
    }
    if (!rc && st_writer_write(w, dst, &err) != SD3_OK) { printf("  %s\n", err.msg); rc = -1; }
    st_writer_free(w);
    for (int i = 0; i < f->n; i++) free(conv[i]);
    free(conv);
    st_close(f);
    return rc;
}

/* Path of a tiny SD3 part's file. */
static void part_path(char *out, size_t n, const char *part, const char *file) {
    snprintf(out, n, "%s/tiny-sd3/%s/%s", g_root, part, file);
}

/* The part's config.json, parsed (NULL + failure if absent). */
static cJSON *part_config(const char *part) {
    char p[4096];
    part_path(p, sizeof p, part, "config.json");
    sd3_err err = {0};
    cJSON *c = json_load_file(p, &err);
    CHECK(c != NULL, "%s", err.msg);
    return c;
}

/* Load a CLIP model from a damaged copy of part with config cfg; returns the status, message in err. */
static sd3_status clip_try(const char *part, const edit *e, const cJSON *cfg, sd3_err *err) {
    char src[4096], dst[512];
    part_path(src, sizeof src, part, "model.safetensors");
    snprintf(dst, sizeof dst, "%s/model.safetensors", g_tmp);
    if (write_copy(src, dst, e)) return SD3_ERR_INTERNAL;
    weights w;
    sd3_status s = weights_open_file(&w, dst, err);
    if (s != SD3_OK) return s;
    clip_model m;
    s = clip_load(&m, &w, cfg, part, err);
    CHECK(m.layers == NULL || s == SD3_OK, "a failed load must leave the model freed");
    clip_free(&m);
    weights_close(&w);
    return s;
}

/* Same for T5. */
static sd3_status t5_try(const edit *e, const cJSON *cfg, sd3_err *err) {
    char src[4096], dst[512];
    part_path(src, sizeof src, "text_encoder_3", "model.safetensors");
    snprintf(dst, sizeof dst, "%s/model.safetensors", g_tmp);
    if (write_copy(src, dst, e)) return SD3_ERR_INTERNAL;
    weights w;
    sd3_status s = weights_open_file(&w, dst, err);
    if (s != SD3_OK) return s;
    t5_model m;
    s = t5_load(&m, &w, cfg, "text_encoder_3", err);
    CHECK(m.blocks == NULL || s == SD3_OK, "a failed load must leave the model freed");
    t5_free(&m);
    weights_close(&w);
    return s;
}

/* A copy of cfg with key removed (or set to a string value when val is given). */
static cJSON *config_edit(const cJSON *cfg, const char *key, const char *val) {
    cJSON *c = cJSON_Duplicate(cfg, 1);
    cJSON_DeleteItemFromObjectCaseSensitive(c, key);
    if (val) cJSON_AddStringToObject(c, key, val);
    return c;
}

#define HAS(msg, s) (strstr((msg), (s)) != NULL)

/* ---- CLIP ------------------------------------------------------------------------------------- */

static void test_clip_bad_weights(void) {
    cJSON *cfg = part_config("text_encoder");
    if (!cfg) return;
    sd3_err err = {0};
    edit none = {.convert = DT_F32};
    CHECK(clip_try("text_encoder", &none, cfg, &err) == SD3_OK, "untouched copy must load: %s", err.msg);

    const char *gone = "text_model.encoder.layers.1.mlp.fc2.weight";
    edit e1 = {.drop = gone, .convert = DT_F32};
    CHECK(clip_try("text_encoder", &e1, cfg, &err) == SD3_ERR_NOT_FOUND && HAS(err.msg, gone), "missing: %s", err.msg);

    const char *proj = "text_projection.weight";
    edit e1b = {.drop = proj, .convert = DT_F32};
    CHECK(clip_try("text_encoder", &e1b, cfg, &err) == SD3_ERR_NOT_FOUND && HAS(err.msg, proj), "missing: %s", err.msg);

    const char *bad = "text_model.encoder.layers.0.self_attn.k_proj.weight";   /* [32, 32] stored as [16, 64] */
    edit e2 = {.reshape = bad, .ndim = 2, .shape = {16, 64}, .convert = DT_F32};
    CHECK(clip_try("text_encoder", &e2, cfg, &err) == SD3_ERR_SHAPE && HAS(err.msg, bad) && HAS(err.msg, "[16, 64]"),
          "wrong shape: %s", err.msg);

    const char *flat = "text_model.final_layer_norm.bias";                     /* [32] stored as [1, 32] */
    edit e3 = {.reshape = flat, .ndim = 2, .shape = {1, 32}, .convert = DT_F32};
    CHECK(clip_try("text_encoder", &e3, cfg, &err) == SD3_ERR_SHAPE && HAS(err.msg, flat), "wrong rank: %s", err.msg);

    const char *intw = "text_model.encoder.layers.0.layer_norm2.weight";
    edit e4 = {.as_int = intw, .convert = DT_F32};
    CHECK(clip_try("text_encoder", &e4, cfg, &err) == SD3_ERR_SHAPE && HAS(err.msg, intw) && HAS(err.msg, "I32"),
          "integer weight: %s", err.msg);

    /* Config and weights that disagree: one layer fewer in the config than in the file. */
    cJSON *c1 = cJSON_Duplicate(cfg, 1);
    cJSON_ReplaceItemInObjectCaseSensitive(c1, "num_hidden_layers", cJSON_CreateNumber(1));
    CHECK(clip_try("text_encoder", &none, c1, &err) == SD3_ERR_SHAPE && HAS(err.msg, "layers.1"), "extra layer: %s", err.msg);
    cJSON_Delete(c1);
    /* hidden_size that does not match the tensors. */
    c1 = cJSON_Duplicate(cfg, 1);
    cJSON_ReplaceItemInObjectCaseSensitive(c1, "intermediate_size", cJSON_CreateNumber(128));
    CHECK(clip_try("text_encoder", &none, c1, &err) == SD3_ERR_SHAPE && HAS(err.msg, "mlp.fc1.weight"),
          "wrong intermediate_size: %s", err.msg);
    cJSON_Delete(c1);
    cJSON_Delete(cfg);
}

static void test_clip_bad_config(void) {
    cJSON *cfg = part_config("text_encoder_2");
    if (!cfg) return;
    sd3_err err = {0};
    edit none = {.convert = DT_F32};
    const char *keys[] = {"hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                          "projection_dim", "max_position_embeddings", "vocab_size", "layer_norm_eps", "hidden_act"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        cJSON *c = config_edit(cfg, keys[i], NULL);
        CHECK(clip_try("text_encoder_2", &none, c, &err) == SD3_ERR_FORMAT && HAS(err.msg, keys[i]) &&
                  HAS(err.msg, "text_encoder_2"),
              "missing key %s: %s", keys[i], err.msg);
        cJSON_Delete(c);
    }
    cJSON *c = config_edit(cfg, "hidden_act", "relu");
    CHECK(clip_try("text_encoder_2", &none, c, &err) == SD3_ERR_UNSUPPORTED && HAS(err.msg, "relu"), "act: %s", err.msg);
    cJSON_Delete(c);
    c = config_edit(cfg, "hidden_size", "48");   /* a string, not a number */
    CHECK(clip_try("text_encoder_2", &none, c, &err) == SD3_ERR_FORMAT && HAS(err.msg, "hidden_size"), "string: %s", err.msg);
    cJSON_Delete(c);
    c = cJSON_Duplicate(cfg, 1);
    cJSON_ReplaceItemInObjectCaseSensitive(c, "num_attention_heads", cJSON_CreateNumber(5));
    CHECK(clip_try("text_encoder_2", &none, c, &err) == SD3_ERR_FORMAT && HAS(err.msg, "num_attention_heads"),
          "heads: %s", err.msg);
    cJSON_Delete(c);
    c = cJSON_CreateArray();
    CHECK(clip_try("text_encoder_2", &none, c, &err) == SD3_ERR_FORMAT, "not an object: %s", err.msg);
    cJSON_Delete(c);
    cJSON_Delete(cfg);
}

/* Forward on the real tiny CLIP-L: bad ids, lengths and indices fail cleanly; good ones run. */
static void test_clip_bad_forward(void) {
    cJSON *cfg = part_config("text_encoder");
    if (!cfg) return;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tiny-sd3/text_encoder", g_root);
    sd3_err err = {0};
    weights w;
    clip_model m;
    if (weights_open_dir(&w, dir, "model", &err) != SD3_OK) { CHECK(0, "%s", err.msg); cJSON_Delete(cfg); return; }
    CHECK(clip_load(&m, &w, cfg, "text_encoder", &err) == SD3_OK, "%s", err.msg);
    if (!m.layers) goto done;
    int64_t ids[2 * 78];
    for (int i = 0; i < 2 * 78; i++) ids[i] = 49407;
    ids[0] = 49406;
    float *h = malloc(sizeof(float) * 2 * 78 * 32), e[2 * 32];
    CHECK(clip_forward(&m, ids, 2, 77, -2, h, h, e, &err) == SD3_OK, "%s", err.msg);
    CHECK(clip_forward(&m, ids, 1, 78, -2, h, NULL, NULL, &err) == SD3_ERR_INVALID_ARG && HAS(err.msg, "T=78"),
          "too long: %s", err.msg);
    CHECK(clip_forward(&m, ids, 0, 77, -2, h, NULL, NULL, &err) == SD3_ERR_INVALID_ARG, "B=0: %s", err.msg);
    CHECK(clip_forward(&m, ids, 1, 0, -2, h, NULL, NULL, &err) == SD3_ERR_INVALID_ARG, "T=0: %s", err.msg);
    CHECK(clip_forward(&m, ids, 1, 77, 3, h, NULL, NULL, &err) == SD3_ERR_INVALID_ARG && HAS(err.msg, "index 3"),
          "index 3: %s", err.msg);
    CHECK(clip_forward(&m, ids, 1, 77, -4, h, NULL, NULL, &err) == SD3_ERR_INVALID_ARG, "index -4: %s", err.msg);
    CHECK(clip_forward(&m, ids, 1, 77, -3, h, NULL, NULL, &err) == SD3_OK, "index -3: %s", err.msg);
    CHECK(clip_forward(&m, ids, 1, 77, 99, NULL, NULL, e, &err) == SD3_OK, "index unused when hidden_out is NULL: %s", err.msg);
    ids[77 + 5] = 49408;
    CHECK(clip_forward(&m, ids, 2, 77, -2, h, NULL, NULL, &err) == SD3_ERR_INVALID_ARG && HAS(err.msg, "49408") &&
              HAS(err.msg, "[1, 5]"),
          "id too large: %s", err.msg);
    ids[77 + 5] = -1;
    CHECK(clip_forward(&m, ids, 2, 77, -2, h, NULL, NULL, &err) == SD3_ERR_INVALID_ARG && HAS(err.msg, "-1"),
          "negative id: %s", err.msg);
    free(h);
done:
    clip_free(&m);
    weights_close(&w);
    cJSON_Delete(cfg);
}

/* ---- T5 --------------------------------------------------------------------------------------- */

static void test_t5_bad_weights(void) {
    cJSON *cfg = part_config("text_encoder_3");
    if (!cfg) return;
    sd3_err err = {0};
    edit none = {.convert = DT_F32};
    CHECK(t5_try(&none, cfg, &err) == SD3_OK, "untouched copy must load: %s", err.msg);

    const char *rb = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight";
    edit e1 = {.drop = rb, .convert = DT_F32};
    CHECK(t5_try(&e1, cfg, &err) == SD3_ERR_NOT_FOUND && HAS(err.msg, rb), "missing: %s", err.msg);

    const char *wo = "encoder.block.1.layer.1.DenseReluDense.wo.weight";
    edit e2 = {.drop = wo, .convert = DT_F32};
    CHECK(t5_try(&e2, cfg, &err) == SD3_ERR_NOT_FOUND && HAS(err.msg, wo), "missing: %s", err.msg);

    edit e3 = {.drop = "shared.weight", .convert = DT_F32};
    CHECK(t5_try(&e3, cfg, &err) == SD3_ERR_NOT_FOUND && HAS(err.msg, "shared.weight") &&
              HAS(err.msg, "encoder.embed_tokens.weight"),
          "no embedding: %s", err.msg);

    edit e4 = {.rename_from = "shared.weight", .rename_to = "encoder.embed_tokens.weight", .convert = DT_F32};
    CHECK(t5_try(&e4, cfg, &err) == SD3_OK, "embedding under encoder.embed_tokens.weight must load: %s", err.msg);

    const char *wi1 = "encoder.block.0.layer.1.DenseReluDense.wi_1.weight";   /* [64, 96] as [96, 64] */
    edit e5 = {.reshape = wi1, .ndim = 2, .shape = {96, 64}, .convert = DT_F32};
    CHECK(t5_try(&e5, cfg, &err) == SD3_ERR_SHAPE && HAS(err.msg, wi1) && HAS(err.msg, "[96, 64]"), "shape: %s", err.msg);

    edit e6 = {.reshape = rb, .ndim = 2, .shape = {4, 32}, .convert = DT_F32};   /* [32 buckets, 4 heads] transposed */
    CHECK(t5_try(&e6, cfg, &err) == SD3_ERR_SHAPE && HAS(err.msg, rb), "bias shape: %s", err.msg);

    cJSON *c = cJSON_Duplicate(cfg, 1);
    cJSON_ReplaceItemInObjectCaseSensitive(c, "vocab_size", cJSON_CreateNumber(32100));
    CHECK(t5_try(&none, c, &err) == SD3_ERR_SHAPE && HAS(err.msg, "shared.weight"), "vocab: %s", err.msg);
    cJSON_Delete(c);
    c = cJSON_Duplicate(cfg, 1);
    cJSON_ReplaceItemInObjectCaseSensitive(c, "num_layers", cJSON_CreateNumber(3));
    CHECK(t5_try(&none, c, &err) == SD3_ERR_NOT_FOUND && HAS(err.msg, "encoder.block.2."), "layers: %s", err.msg);
    cJSON_Delete(c);
    cJSON_Delete(cfg);
}

static void test_t5_bad_config(void) {
    cJSON *cfg = part_config("text_encoder_3");
    if (!cfg) return;
    sd3_err err = {0};
    edit none = {.convert = DT_F32};
    const char *keys[] = {"d_model", "d_kv", "num_heads", "d_ff", "num_layers", "vocab_size",
                          "relative_attention_num_buckets"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        cJSON *c = config_edit(cfg, keys[i], NULL);
        CHECK(t5_try(&none, c, &err) == SD3_ERR_FORMAT && HAS(err.msg, keys[i]) && HAS(err.msg, "text_encoder_3"),
              "missing key %s: %s", keys[i], err.msg);
        cJSON_Delete(c);
    }
    cJSON *c = config_edit(cfg, "feed_forward_proj", "relu");
    CHECK(t5_try(&none, c, &err) == SD3_ERR_UNSUPPORTED && HAS(err.msg, "feed_forward_proj"), "relu: %s", err.msg);
    cJSON_Delete(c);
    c = config_edit(cfg, "feed_forward_proj", NULL);   /* transformers' default is "relu": unsupported */
    CHECK(t5_try(&none, c, &err) == SD3_ERR_UNSUPPORTED, "default ff: %s", err.msg);
    cJSON_Delete(c);
    c = config_edit(cfg, "relative_attention_max_distance", NULL);   /* optional: 128 */
    CHECK(t5_try(&none, c, &err) == SD3_OK, "max_distance defaults to 128: %s", err.msg);
    cJSON_Delete(c);
    c = config_edit(cfg, "relative_attention_max_distance", "far");
    CHECK(t5_try(&none, c, &err) == SD3_ERR_FORMAT && HAS(err.msg, "relative_attention_max_distance"), "md: %s", err.msg);
    cJSON_Delete(c);
    cJSON_Delete(cfg);
}

static void test_t5_bad_forward(void) {
    cJSON *cfg = part_config("text_encoder_3");
    if (!cfg) return;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tiny-sd3/text_encoder_3", g_root);
    sd3_err err = {0};
    weights w;
    t5_model m;
    if (weights_open_dir(&w, dir, "model", &err) != SD3_OK) { CHECK(0, "%s", err.msg); cJSON_Delete(cfg); return; }
    CHECK(t5_load(&m, &w, cfg, "text_encoder_3", &err) == SD3_OK, "%s", err.msg);
    if (!m.blocks) goto done;
    int64_t ids[300] = {0};
    float *out = malloc(sizeof(float) * 300 * 96);
    CHECK(t5_forward(&m, ids, 1, 300, out, &err) == SD3_OK, "T=300 (longer than 256) is fine for T5: %s", err.msg);
    CHECK(t5_forward(&m, ids, 1, 0, out, &err) == SD3_ERR_INVALID_ARG, "T=0: %s", err.msg);
    CHECK(t5_forward(&m, ids, 0, 5, out, &err) == SD3_ERR_INVALID_ARG, "B=0: %s", err.msg);
    CHECK(t5_forward(&m, ids, 1, 5, NULL, &err) == SD3_ERR_INVALID_ARG, "no output: %s", err.msg);
    CHECK(t5_forward_hidden(&m, ids, 1, 5, 3, out, &err) == SD3_ERR_INVALID_ARG && HAS(err.msg, "index 3"), "idx: %s", err.msg);
    CHECK(t5_forward_hidden(&m, ids, 1, 5, -3, out, &err) == SD3_OK, "idx -3 = embeddings: %s", err.msg);
    ids[3] = 32128;
    CHECK(t5_forward(&m, ids, 1, 5, out, &err) == SD3_ERR_INVALID_ARG && HAS(err.msg, "32128"), "id: %s", err.msg);
    free(out);
done:
    t5_free(&m);
    weights_close(&w);
    cJSON_Delete(cfg);
}

/* Buckets at hand-computed points (transformers' formula, 32 buckets, max_distance 128). */
static void test_t5_buckets(void) {
    struct { int rel, want; } cases[] = {{0, 0}, {-1, 1}, {1, 17}, {-7, 7}, {7, 23}, {-8, 8}, {8, 24}, {-15, 9},
                                         {-16, 10}, {16, 26}, {-31, 11}, {-32, 12}, {-64, 14}, {-127, 15},
                                         {-128, 15}, {1000, 31}, {-1000, 15}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int got = t5_relative_bucket(cases[i].rel, 32, 128);
        CHECK(got == cases[i].want, "bucket(%d) = %d, want %d", cases[i].rel, got, cases[i].want);
    }
}

/* ---- weights kept in BF16 / F16 ------------------------------------------------------------------ */

/* Max |a - b| over n floats. */
static double max_diff(const float *a, const float *b, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= m)) m = d;
    }
    return m;
}

/* The golden tensor `name` of text/text_encoders.safetensors, first n floats, into out. */
static int golden_ref(const char *name, float *out, int64_t n, int64_t **ids_out, const char *ids_name, int64_t nids) {
    char p[4096];
    snprintf(p, sizeof p, "%s/text/text_encoders.safetensors", g_root);
    sd3_err err = {0};
    st_file *f;
    if (st_open(&f, p, &err) != SD3_OK) { CHECK(0, "%s", err.msg); return -1; }
    tensor t, ti;
    int rc = -1;
    if (st_get(f, name, &t, &err) == SD3_OK && st_get(f, ids_name, &ti, &err) == SD3_OK && tensor_numel(&t) >= n &&
        tensor_numel(&ti) >= nids) {
        tensor_to_f32(&t, 0, n, out);
        *ids_out = malloc(sizeof(int64_t) * (size_t)nids);
        memcpy(*ids_out, ti.data, sizeof(int64_t) * (size_t)nids);
        rc = 0;
    } else CHECK(0, "golden tensors %s / %s: %s", name, ids_name, err.msg);
    st_close(f);
    return rc;
}

/* CLIP-G and T5 from half-precision copies (weights used in their stored dtype) stay within a loose,
 * written-down bound of the F32 golden outputs: 0.1 absolute for BF16 (8-bit mantissa weights) and
 * 0.01 for F16 (11-bit), on outputs of magnitude up to ~7. A dtype mix-up would be off by O(1). */
static void test_half_weights(void) {
    const dtype dts[2] = {DT_BF16, DT_F16};
    const double bound[2] = {0.1, 0.01};
    const int B = 2;
    float *want = malloc(sizeof(float) * B * 77 * 96), *got = malloc(sizeof(float) * B * 77 * 96);
    for (int k = 0; k < 2; k++) {
        sd3_err err = {0};
        char src[4096], dst[512];
        edit e = {.convert = dts[k]};
        snprintf(dst, sizeof dst, "%s/model.safetensors", g_tmp);
        /* CLIP-G last_hidden_state */
        cJSON *cfg = part_config("text_encoder_2");
        part_path(src, sizeof src, "text_encoder_2", "model.safetensors");
        int64_t *ids = NULL;
        weights w;
        clip_model cm;
        if (cfg && !write_copy(src, dst, &e) && !golden_ref("clip_g.last_hidden_state", want, B * 77 * 48, &ids,
                                                           "clip_g_input_ids", B * 77)) {
            CHECK(weights_open_file(&w, dst, &err) == SD3_OK, "%s", err.msg);
            CHECK(clip_load(&cm, &w, cfg, "text_encoder_2", &err) == SD3_OK, "%s", err.msg);
            CHECK(cm.layers && cm.layers[0].q_w.dt == dts[k], "weights must stay %s", dtype_name(dts[k]));
            if (cm.layers && clip_forward(&cm, ids, B, 77, -1, NULL, got, NULL, &err) == SD3_OK) {
                double d = max_diff(got, want, B * 77 * 48);
                CHECK(d < bound[k], "CLIP-G from %s weights: max diff %g", dtype_name(dts[k]), d);
                printf("  CLIP-G last_hidden_state from %s weights: max |diff| vs F32 golden %.3g (bound %g)\n",
                       dtype_name(dts[k]), d, bound[k]);
            } else CHECK(0, "forward: %s", err.msg);
            clip_free(&cm);
            weights_close(&w);
        }
        free(ids);
        ids = NULL;
        cJSON_Delete(cfg);
        /* T5 last_hidden_state, 77 tokens */
        cfg = part_config("text_encoder_3");
        part_path(src, sizeof src, "text_encoder_3", "model.safetensors");
        t5_model tm;
        if (cfg && !write_copy(src, dst, &e) && !golden_ref("t5.last_hidden_state_77", want, B * 77 * 96, &ids,
                                                           "t5_input_ids_77", B * 77)) {
            CHECK(weights_open_file(&w, dst, &err) == SD3_OK, "%s", err.msg);
            CHECK(t5_load(&tm, &w, cfg, "text_encoder_3", &err) == SD3_OK, "%s", err.msg);
            CHECK(tm.blocks && tm.blocks[0].wi0_w.dt == dts[k], "weights must stay %s", dtype_name(dts[k]));
            if (tm.blocks && t5_forward(&tm, ids, B, 77, got, &err) == SD3_OK) {
                double d = max_diff(got, want, B * 77 * 96);
                CHECK(d < bound[k], "T5 from %s weights: max diff %g", dtype_name(dts[k]), d);
                printf("  T5 last_hidden_state from %s weights: max |diff| vs F32 golden %.3g (bound %g)\n",
                       dtype_name(dts[k]), d, bound[k]);
            } else CHECK(0, "forward: %s", err.msg);
            t5_free(&tm);
            weights_close(&w);
        }
        free(ids);
        cJSON_Delete(cfg);
    }
    free(want);
    free(got);
}

int main(int argc, char **argv) {
    const char *root = argc > 1 ? argv[1] : getenv("SD3_GOLDEN");
    snprintf(g_root, sizeof g_root, "%s", root ? root : "../shared/golden");
    char probe[4096];
    part_path(probe, sizeof probe, "text_encoder", "config.json");
    if (access(probe, R_OK) != 0) {
        CHECK(0, "golden data not found: %s (pass the golden root as argument or set SD3_GOLDEN)", probe);
        TEST_MAIN_END("test_text_encoders");
    }
    snprintf(g_tmp, sizeof g_tmp, "/tmp/sd3_test_te_XXXXXX");
    if (!mkdtemp(g_tmp)) { CHECK(0, "cannot create a temp folder"); TEST_MAIN_END("test_text_encoders"); }

    test_clip_bad_weights();
    test_clip_bad_config();
    test_clip_bad_forward();
    test_t5_bad_weights();
    test_t5_bad_config();
    test_t5_bad_forward();
    test_t5_buckets();
    test_half_weights();

    char p[512];
    snprintf(p, sizeof p, "%s/model.safetensors", g_tmp);
    unlink(p);
    rmdir(g_tmp);
    TEST_MAIN_END("test_text_encoders");
}

/* test_model_store.c — the model store on the golden tiny-sd3 pipeline folder and single-file
 * checkpoints, and on hand-built temp folders: missing and malformed model_index.json, missing component
 * folders / configs / weights, null components, sharded and fp16-variant weights, hostile shard names,
 * and the Hugging Face cache layout. Run from the repo root; SD3_GOLDEN overrides ../shared/golden. */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "io/json_util.h"
#include "io/model_store.h"
#include "test.h"

static char g_dir[256];
static const char *g_golden;

/* ---------------------------------------------------------------------------------------------- */
/* Building folders                                                                                */
/* ---------------------------------------------------------------------------------------------- */

/* Write text to <a>/<b> (b may contain sub folders that already exist). */
static void put(const char *a, const char *b, const char *text) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", a, b);
    FILE *f = fopen(p, "wb");
    if (!f) { perror(p); exit(2); }
    fputs(text, f);
    fclose(f);
}

static void mk(const char *a, const char *b) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", a, b);
    mkdir(p, 0755);
}

/* A fresh folder <g_dir>/<name>; path into out. */
static void fresh(const char *name, char *out, size_t n) {
    snprintf(out, n, "%s/%s", g_dir, name);
    mkdir(out, 0755);
}

/* A small safetensors file at <dir>/<file> holding F32 tensors names[i] of 4 values base+i*4+k. */
static void write_shard(const char *dir, const char *file, const char **names, int n, float base) {
    static float data[16][4];
    st_writer *w = st_writer_new();
    sd3_err err = {0};
    int64_t shape[1] = {4};
    for (int i = 0; i < n; i++) {
        for (int k = 0; k < 4; k++) data[i][k] = base + (float)(i * 4 + k);
        st_writer_add(w, names[i], DT_F32, 1, shape, data[i], &err);
    }
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, file);
    if (st_writer_write(w, p, &err) != SD3_OK) { printf("setup: %s\n", err.msg); exit(2); }
    st_writer_free(w);
}

static const char *INDEX_MIN =
    "{\"_class_name\": \"StableDiffusion3Pipeline\", \"_diffusers_version\": \"0.32.2\",\n"
    " \"transformer\": [\"diffusers\", \"SD3Transformer2DModel\"],\n"
    " \"text_encoder_3\": [\"transformers\", \"T5EncoderModel\"],\n"
    " \"scheduler\": [\"diffusers\", \"FlowMatchEulerDiscreteScheduler\"]}";

/* Expect ms_open(path) to fail with status want and a message containing a and b (b may be NULL). */
static void open_fails(const char *what, const char *path, sd3_status want, const char *a, const char *b) {
    model_store *ms = (model_store *)1;
    sd3_err err = {0};
    sd3_status s = ms_open(&ms, path, &err);
    CHECK(s == want && ms == NULL, "%s: status %d want %d: %s", what, (int)s, (int)want, err.msg);
    CHECK(strstr(err.msg, a) != NULL, "%s: message lacks '%s': %s", what, a, err.msg);
    if (b) CHECK(strstr(err.msg, b) != NULL, "%s: message lacks '%s': %s", what, b, err.msg);
    if (getenv("SD3_TEST_VERBOSE")) printf("  %-28s -> %s\n", what, err.msg);
    if (ms && ms != (model_store *)1) ms_close(ms);
}

/* ---------------------------------------------------------------------------------------------- */
/* Golden folders                                                                                  */
/* ---------------------------------------------------------------------------------------------- */

static void test_golden_pipeline(void) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/tiny-sd3/", g_golden); /* trailing slash on purpose */
    model_store *ms = NULL;
    sd3_err err = {0};
    CHECK(ms_open(&ms, dir, &err) == SD3_OK && ms, "open golden tiny-sd3: %s", err.msg);
    if (!ms) return;
    CHECK(ms->kind == MS_PIPELINE_DIR, "pipeline kind");
    CHECK(!strcmp(ms->pipeline_class, "StableDiffusion3Pipeline"), "class %s", ms->pipeline_class);
    CHECK(!strcmp(ms->diffusers_version, "0.32.2"), "version %s", ms->diffusers_version);
    CHECK(ms->n_comp == 9, "9 components, got %d", ms->n_comp);
    static const struct { const char *name, *lib, *cls; ms_role role; } want[] = {
        {"scheduler", "diffusers", "FlowMatchEulerDiscreteScheduler", MS_ROLE_SCHEDULER},
        {"text_encoder", "transformers", "CLIPTextModelWithProjection", MS_ROLE_MODEL},
        {"text_encoder_2", "transformers", "CLIPTextModelWithProjection", MS_ROLE_MODEL},
        {"text_encoder_3", "transformers", "T5EncoderModel", MS_ROLE_MODEL},
        {"tokenizer", "transformers", "CLIPTokenizer", MS_ROLE_TOKENIZER},
        {"tokenizer_2", "transformers", "CLIPTokenizer", MS_ROLE_TOKENIZER},
        {"tokenizer_3", "transformers", "T5TokenizerFast", MS_ROLE_TOKENIZER},
        {"transformer", "diffusers", "SD3Transformer2DModel", MS_ROLE_MODEL},
        {"vae", "diffusers", "AutoencoderKL", MS_ROLE_MODEL},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const ms_component *c = ms_find(ms, want[i].name);
        CHECK(c && c->present && c->dir_exists && !strcmp(c->library, want[i].lib) &&
                  !strcmp(c->class_name, want[i].cls) && c->role == want[i].role,
              "component %s", want[i].name);
        CHECK(ms_has(ms, want[i].name), "ms_has %s", want[i].name);
        const char *cd = ms_component_dir(ms, want[i].name);
        CHECK(cd && strstr(cd, want[i].name) && !strstr(cd, "//"), "dir of %s: %s", want[i].name, cd ? cd : "NULL");
        cJSON *cfg = ms_load_config(ms, want[i].name, &err);
        CHECK(cfg != NULL, "config of %s: %s", want[i].name, err.msg);
        if (cfg && want[i].role == MS_ROLE_SCHEDULER)
            CHECK(json_num(cfg, "shift", 0) == 3.0 && json_int(cfg, "num_train_timesteps", 0) == 1000, "scheduler config");
        if (cfg && !strcmp(want[i].name, "transformer"))
            CHECK(json_int(cfg, "num_layers", 0) == 3 && json_int(cfg, "joint_attention_dim", 0) == 96,
                  "transformer config");
        cJSON_Delete(cfg);
        weights w;
        sd3_status s = ms_open_weights(ms, want[i].name, &w, &err);
        if (want[i].role == MS_ROLE_MODEL) {
            CHECK(s == SD3_OK && w.n_files == 1, "weights of %s: %s", want[i].name, err.msg);
        } else {
            CHECK(s == SD3_ERR_INVALID_ARG && strstr(err.msg, want[i].name), "no weights for %s: %s", want[i].name,
                  err.msg);
        }
        if (s == SD3_OK && !strcmp(want[i].name, "transformer")) {
            tensor t;
            CHECK(weights_get_shape(&w, "context_embedder.weight", &t, &err, 2, 32, 96, -1, -1) == SD3_OK,
                  "transformer context_embedder.weight [32, 96]: %s", err.msg);
            CHECK(weights_get(&w, "no.such.key", &t, &err) == SD3_ERR_NOT_FOUND && strstr(err.msg, "no.such.key") &&
                      strstr(err.msg, "transformer"),
                  "missing key names the key and the file: %s", err.msg);
        }
        if (s == SD3_OK && !strcmp(want[i].name, "text_encoder_3"))
            CHECK(strstr(w.label, "text_encoder_3/model.safetensors") != NULL, "T5 uses the 'model' stem: %s", w.label);
        weights_close(&w);
    }
    char p[MS_PATH_MAX + 64];
    CHECK(ms_file_path(ms, "tokenizer", "vocab.json", p, sizeof p, &err) == SD3_OK, "vocab.json: %s", err.msg);
    CHECK(ms_file_path(ms, "tokenizer_3", "spiece.model", p, sizeof p, &err) == SD3_OK, "spiece.model: %s", err.msg);
    CHECK(ms_file_path(ms, "tokenizer", "spiece.model", p, sizeof p, &err) == SD3_ERR_NOT_FOUND &&
              strstr(err.msg, "tokenizer/spiece.model"),
          "absent tokenizer file named: %s", err.msg);
    CHECK(ms_file_path(ms, "tokenizer", "../model_index.json", p, sizeof p, &err) == SD3_ERR_INVALID_ARG,
          "file names cannot climb out");
    CHECK(ms_config_path(ms, "scheduler", p, sizeof p, &err) == SD3_OK && strstr(p, "scheduler/scheduler_config.json"),
          "scheduler config path %s", p);
    CHECK(ms_config_path(ms, "tokenizer_2", p, sizeof p, &err) == SD3_OK && strstr(p, "tokenizer_config.json"),
          "tokenizer config path %s", p);
    CHECK(ms_check(ms, &err) == SD3_OK, "golden folder passes ms_check: %s", err.msg);
    CHECK(!ms_has(ms, "image_encoder") && ms_find(ms, "image_encoder") == NULL, "unlisted component");
    CHECK(ms_require(ms, "image_encoder", &err) == SD3_ERR_NOT_FOUND && strstr(err.msg, "image_encoder") &&
              strstr(err.msg, "model_index.json"),
          "unlisted component error: %s", err.msg);
    char desc[4096];
    ms_describe(ms, desc, sizeof desc);
    CHECK(strstr(desc, "StableDiffusion3Pipeline") && strstr(desc, "text_encoder_3") &&
              strstr(desc, "T5EncoderModel") && strstr(desc, "model.safetensors") &&
              strstr(desc, "diffusion_pytorch_model.safetensors") && strstr(desc, "scheduler_config.json") &&
              strstr(desc, "spiece.model") && !strstr(desc, "MISSING"),
          "describe:\n%s", desc);
    char tiny[64];
    ms_describe(ms, tiny, sizeof tiny);
    CHECK(strlen(tiny) == 63, "describe truncates safely");
    if (getenv("SD3_TEST_VERBOSE")) printf("%s", desc);
    ms_close(ms);
}

static void test_golden_single_file(void) {
    char p[1024];
    snprintf(p, sizeof p, "%s/tiny-sd3-single-file/sd3_tiny.safetensors", g_golden);
    model_store *ms = NULL;
    sd3_err err = {0};
    CHECK(ms_open(&ms, p, &err) == SD3_OK && ms, "single file: %s", err.msg);
    if (ms) {
        CHECK(ms->kind == MS_SINGLE_FILE && ms->single_parts == (MS_PART_MMDIT | MS_PART_VAE),
              "sd3_tiny holds mmdit + vae (parts %#x)", ms->single_parts);
        CHECK(ms->n_comp == 0 && !ms_has(ms, "transformer"), "no components in a single file");
        weights w;
        CHECK(ms_open_weights(ms, "transformer", &w, &err) == SD3_ERR_UNSUPPORTED && strstr(err.msg, p),
              "single file: component weights unsupported here: %s", err.msg);
        char desc[512];
        ms_describe(ms, desc, sizeof desc);
        CHECK(strstr(desc, "single-file") && strstr(desc, "mmdit") && strstr(desc, "vae"), "describe: %s", desc);
        ms_close(ms);
    }
    snprintf(p, sizeof p, "%s/tiny-sd3-single-file/sd35_large_like_tiny.safetensors", g_golden);
    CHECK(ms_open(&ms, p, &err) == SD3_OK && ms && ms->single_parts == MS_PART_MMDIT, "sd35 large single file: %s",
          err.msg);
    ms_close(ms);
    /* a safetensors file that is not a checkpoint */
    snprintf(p, sizeof p, "%s/tiny-sd3/transformer/diffusion_pytorch_model.safetensors", g_golden);
    open_fails("diffusers file as checkpoint", p, SD3_ERR_FORMAT, p, "prefixes");
}

/* ---------------------------------------------------------------------------------------------- */
/* Bad folders                                                                                     */
/* ---------------------------------------------------------------------------------------------- */

static void test_bad_index(void) {
    char d[512], p[600];
    fresh("empty", d, sizeof d);
    snprintf(p, sizeof p, "%s/model_index.json", d);
    open_fails("missing model_index.json", d, SD3_ERR_NOT_FOUND, p, NULL);

    fresh("component_only", d, sizeof d);
    put(d, "config.json", "{}");
    open_fails("component folder", d, SD3_ERR_NOT_FOUND, "model_index.json", "single component");

    struct { const char *name, *json, *mention; } bad[] = {
        {"bad_json", "{\"_class_name\": \"X\", \"vae\": [\"diffusers\", ", NULL},
        {"json_array", "[\"diffusers\", \"AutoencoderKL\"]", "not a JSON object"},
        {"no_class", "{\"vae\": [\"diffusers\", \"AutoencoderKL\"]}", "_class_name"},
        {"class_number", "{\"_class_name\": 3, \"vae\": [\"diffusers\", \"AutoencoderKL\"]}", "_class_name"},
        {"one_elem", "{\"_class_name\": \"P\", \"vae\": [\"diffusers\"]}", "'vae'"},
        {"three_elem", "{\"_class_name\": \"P\", \"vae\": [\"diffusers\", \"A\", \"B\"]}", "'vae'"},
        {"half_null", "{\"_class_name\": \"P\", \"vae\": [\"diffusers\", null]}", "'vae'"},
        {"number_class", "{\"_class_name\": \"P\", \"vae\": [\"diffusers\", 7]}", "'vae'"},
        {"climbing_name", "{\"_class_name\": \"P\", \"..\": [\"diffusers\", \"AutoencoderKL\"]}", "'..'"},
        {"slash_name", "{\"_class_name\": \"P\", \"a/b\": [\"diffusers\", \"AutoencoderKL\"]}", "'a/b'"},
        {"duplicate", "{\"_class_name\": \"P\", \"vae\": [\"diffusers\", \"A\"], \"vae\": [\"diffusers\", \"A\"]}",
         "twice"},
        {"no_components", "{\"_class_name\": \"P\", \"force_zeros_for_empty_prompt\": true}", "no components"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        fresh(bad[i].name, d, sizeof d);
        put(d, "model_index.json", bad[i].json);
        snprintf(p, sizeof p, "%s/model_index.json", d);
        open_fails(bad[i].name, d, SD3_ERR_FORMAT, p, bad[i].mention);
    }
    /* a folder path that does not exist (and is not a repo id) */
    snprintf(p, sizeof p, "%s/nope/nothing", g_dir);
    open_fails("missing folder", p, SD3_ERR_NOT_FOUND, p, NULL);
    /* a file that is not safetensors */
    snprintf(p, sizeof p, "%s/model.ckpt", g_dir);
    put(g_dir, "model.ckpt", "PK");
    open_fails("ckpt file", p, SD3_ERR_UNSUPPORTED, p, NULL);
    /* a .safetensors that is broken: the reader's message comes through */
    snprintf(p, sizeof p, "%s/broken.safetensors", g_dir);
    put(g_dir, "broken.safetensors", "xx");
    open_fails("broken single file", p, SD3_ERR_FORMAT, p, NULL);
}

/* A folder whose index lists components that are null, missing, or incomplete. */
static void test_incomplete(void) {
    char d[512], p[MS_PATH_MAX + 64];
    fresh("incomplete", d, sizeof d);
    put(d, "model_index.json",
        "{\"_class_name\": \"StableDiffusion3Pipeline\", \"force_zeros_for_empty_prompt\": true,\n"
        " \"add_watermarker\": null,\n"
        " \"text_encoder_3\": [null, null], \"tokenizer_3\": [null, null],\n"
        " \"vae\": [\"diffusers\", \"AutoencoderKL\"],\n"
        " \"transformer\": [\"diffusers\", \"SD3Transformer2DModel\"],\n"
        " \"text_encoder\": [\"transformers\", \"CLIPTextModelWithProjection\"],\n"
        " \"scheduler\": [\"diffusers\", \"FlowMatchEulerDiscreteScheduler\"]}");
    mk(d, "transformer");
    put(d, "transformer/config.json", "{\"num_layers\": 2}");       /* no weights */
    mk(d, "text_encoder");                                            /* no config */
    write_shard(d, "text_encoder/model.safetensors", (const char *[]){"a"}, 1, 0);
    mk(d, "scheduler");
    put(d, "scheduler/scheduler_config.json", "[1, 2]");             /* config not an object */
    /* no vae folder at all */
    model_store *ms = NULL;
    sd3_err err = {0};
    CHECK(ms_open(&ms, d, &err) == SD3_OK && ms, "incomplete folder opens: %s", err.msg);
    if (!ms) return;
    CHECK(ms->n_comp == 6, "6 components (options skipped), got %d", ms->n_comp);
    CHECK(ms_find(ms, "text_encoder_3") && !ms_has(ms, "text_encoder_3") && !ms_component_dir(ms, "text_encoder_3"),
          "null component is listed but absent");
    CHECK(ms_require(ms, "text_encoder_3", &err) == SD3_ERR_NOT_FOUND && strstr(err.msg, "text_encoder_3") &&
              strstr(err.msg, "null"),
          "null component error: %s", err.msg);
    weights w;
    char vae[600];
    snprintf(vae, sizeof vae, "%s/vae", d);
    CHECK(ms_has(ms, "vae") && !ms_find(ms, "vae")->dir_exists, "vae listed, folder missing");
    CHECK(ms_open_weights(ms, "vae", &w, &err) == SD3_ERR_NOT_FOUND && strstr(err.msg, vae) && strstr(err.msg, "'vae'"),
          "missing component folder named: %s", err.msg);
    CHECK(ms_load_config(ms, "vae", &err) == NULL && err.status == SD3_ERR_NOT_FOUND && strstr(err.msg, vae),
          "missing folder config: %s", err.msg);
    snprintf(p, sizeof p, "%s/transformer", d);
    CHECK(ms_open_weights(ms, "transformer", &w, &err) == SD3_ERR_NOT_FOUND && strstr(err.msg, p) &&
              strstr(err.msg, "diffusion_pytorch_model.safetensors"),
          "missing weights named: %s", err.msg);
    cJSON *cfg = ms_load_config(ms, "transformer", &err);
    CHECK(cfg && json_int(cfg, "num_layers", 0) == 2, "transformer config loads: %s", err.msg);
    cJSON_Delete(cfg);
    snprintf(p, sizeof p, "%s/text_encoder/config.json", d);
    CHECK(ms_load_config(ms, "text_encoder", &err) == NULL && err.status == SD3_ERR_NOT_FOUND && strstr(err.msg, p),
          "missing config named: %s", err.msg);
    CHECK(ms_open_weights(ms, "text_encoder", &w, &err) == SD3_OK && weights_has(&w, "a"), "text_encoder weights: %s",
          err.msg);
    weights_close(&w);
    snprintf(p, sizeof p, "%s/scheduler/scheduler_config.json", d);
    CHECK(ms_load_config(ms, "scheduler", &err) == NULL && err.status == SD3_ERR_FORMAT && strstr(err.msg, p),
          "config that is not an object: %s", err.msg);
    CHECK(ms_check(ms, &err) == SD3_ERR_NOT_FOUND, "ms_check fails: %s", err.msg);
    char desc[4096];
    ms_describe(ms, desc, sizeof desc);
    CHECK(strstr(desc, "MISSING folder") && strstr(desc, "absent") && strstr(desc, "MISSING weights") &&
              strstr(desc, "MISSING config.json"),
          "describe shows what is missing:\n%s", desc);
    if (getenv("SD3_TEST_VERBOSE")) printf("%s", desc);
    ms_close(ms);

    /* only a PyTorch pickle */
    fresh("only_bin", d, sizeof d);
    put(d, "model_index.json", "{\"_class_name\": \"P\", \"vae\": [\"diffusers\", \"AutoencoderKL\"]}");
    mk(d, "vae");
    put(d, "vae/config.json", "{}");
    put(d, "vae/diffusion_pytorch_model.bin", "PK");
    CHECK(ms_open(&ms, d, &err) == SD3_OK, "only_bin opens: %s", err.msg);
    if (ms) {
        CHECK(ms_open_weights(ms, "vae", &w, &err) == SD3_ERR_UNSUPPORTED && strstr(err.msg, ".bin"),
              "pickle-only weights: %s", err.msg);
        CHECK(ms_check(ms, &err) == SD3_ERR_UNSUPPORTED && strstr(err.msg, "'vae'"), "ms_check names it: %s", err.msg);
        ms_close(ms);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* Sharded and variant weights                                                                     */
/* ---------------------------------------------------------------------------------------------- */

/* Build a pipeline folder whose text_encoder_3 is sharded (two shards + index), with file names made
 * from the given variant infix ("" or ".fp16") and index name. */
static void build_sharded(const char *d, const char *shard_fmt, const char *index_name) {
    put(d, "model_index.json", "{\"_class_name\": \"P\", \"text_encoder_3\": [\"transformers\", \"T5EncoderModel\"]}");
    mk(d, "text_encoder_3");
    put(d, "text_encoder_3/config.json", "{\"d_model\": 4}");
    char sub[600], s1[128], s2[128], idx[1024];
    snprintf(sub, sizeof sub, "%s/text_encoder_3", d);
    snprintf(s1, sizeof s1, shard_fmt, 1);
    snprintf(s2, sizeof s2, shard_fmt, 2);
    write_shard(sub, s1, (const char *[]){"shared.weight", "encoder.block.0.layer.0.SelfAttention.q.weight"}, 2, 0);
    write_shard(sub, s2, (const char *[]){"encoder.final_layer_norm.weight"}, 1, 100);
    snprintf(idx, sizeof idx,
             "{\"metadata\": {\"total_size\": 48}, \"weight_map\": {"
             "\"shared.weight\": \"%s\", \"encoder.block.0.layer.0.SelfAttention.q.weight\": \"%s\","
             "\"encoder.final_layer_norm.weight\": \"%s\"}}",
             s1, s1, s2);
    snprintf(sub, sizeof sub, "text_encoder_3/%s", index_name);
    put(d, sub, idx);
}

static void check_sharded(const char *what, const char *d) {
    model_store *ms = NULL;
    sd3_err err = {0};
    CHECK(ms_open(&ms, d, &err) == SD3_OK && ms, "%s: open: %s", what, err.msg);
    if (!ms) return;
    weights w;
    CHECK(ms_open_weights(ms, "text_encoder_3", &w, &err) == SD3_OK, "%s: sharded weights: %s", what, err.msg);
    CHECK(w.n_files == 2, "%s: 2 shards, got %d", what, w.n_files);
    tensor t;
    CHECK(weights_get_shape(&w, "shared.weight", &t, &err, 1, 4, -1, -1, -1) == SD3_OK &&
              ((float *)t.data)[1] == 1.0f,
          "%s: tensor from shard 1: %s", what, err.msg);
    CHECK(weights_get(&w, "encoder.block.0.layer.0.SelfAttention.q.weight", &t, &err) == SD3_OK &&
              ((float *)t.data)[0] == 4.0f,
          "%s: second tensor of shard 1: %s", what, err.msg);
    CHECK(weights_get(&w, "encoder.final_layer_norm.weight", &t, &err) == SD3_OK && ((float *)t.data)[3] == 103.0f,
          "%s: tensor from shard 2: %s", what, err.msg);
    CHECK(weights_get(&w, "lm_head.weight", &t, &err) == SD3_ERR_NOT_FOUND && strstr(err.msg, "lm_head.weight"),
          "%s: missing key: %s", what, err.msg);
    weights_close(&w);
    CHECK(ms_check(ms, &err) == SD3_OK, "%s: ms_check: %s", what, err.msg);
    char desc[4096];
    ms_describe(ms, desc, sizeof desc);
    CHECK(strstr(desc, "(sharded)") != NULL, "%s: describe says sharded:\n%s", what, desc);
    ms_close(ms);
}

static void test_sharded(void) {
    char d[512];
    fresh("sharded", d, sizeof d);
    build_sharded(d, "model-%05d-of-00002.safetensors", "model.safetensors.index.json");
    check_sharded("sharded", d);

    fresh("sharded_fp16", d, sizeof d);
    build_sharded(d, "model.fp16-%05d-of-00002.safetensors", "model.safetensors.index.fp16.json");
    check_sharded("sharded fp16 variant", d);

    /* fp16 single-file variants for both stems */
    fresh("variant", d, sizeof d);
    put(d, "model_index.json", INDEX_MIN);
    mk(d, "transformer");
    put(d, "transformer/config.json", "{}");
    mk(d, "text_encoder_3");
    put(d, "text_encoder_3/config.json", "{}");
    char sub[600];
    snprintf(sub, sizeof sub, "%s/transformer", d);
    write_shard(sub, "diffusion_pytorch_model.fp16.safetensors", (const char *[]){"pos_embed.pos_embed"}, 1, 0);
    snprintf(sub, sizeof sub, "%s/text_encoder_3", d);
    write_shard(sub, "model.fp16.safetensors", (const char *[]){"shared.weight"}, 1, 0);
    model_store *ms = NULL;
    sd3_err err = {0};
    CHECK(ms_open(&ms, d, &err) == SD3_OK, "variant open: %s", err.msg);
    if (ms) {
        weights w;
        CHECK(ms_open_weights(ms, "transformer", &w, &err) == SD3_OK && weights_has(&w, "pos_embed.pos_embed") &&
                  strstr(w.label, "diffusion_pytorch_model.fp16.safetensors"),
              "diffusers fp16 variant: %s", err.msg);
        weights_close(&w);
        CHECK(ms_open_weights(ms, "text_encoder_3", &w, &err) == SD3_OK && weights_has(&w, "shared.weight") &&
                  strstr(w.label, "model.fp16.safetensors"),
              "transformers fp16 variant: %s", err.msg);
        weights_close(&w);
        ms_close(ms);
    }
}

/* Indexes that must be refused: a shard outside the folder, a missing shard, a key absent from its
 * shard, a map that is not an object, broken JSON. */
static void test_bad_shards(void) {
    struct { const char *name, *index, *mention; sd3_status want; } bad[] = {
        {"climb", "{\"weight_map\": {\"shared.weight\": \"../x\"}}", "'../x'", SD3_ERR_FORMAT},
        {"abs", "{\"weight_map\": {\"shared.weight\": \"/etc/passwd\"}}", "'/etc/passwd'", SD3_ERR_FORMAT},
        {"dotdot", "{\"weight_map\": {\"shared.weight\": \"..\"}}", "'..'", SD3_ERR_FORMAT},
        {"empty_name", "{\"weight_map\": {\"shared.weight\": \"\"}}", "'shared.weight'", SD3_ERR_FORMAT},
        {"not_string", "{\"weight_map\": {\"shared.weight\": 3}}", "'shared.weight'", SD3_ERR_FORMAT},
        {"no_map", "{\"metadata\": {}}", "weight_map", SD3_ERR_FORMAT},
        {"map_array", "{\"weight_map\": [\"a.safetensors\"]}", "weight_map", SD3_ERR_FORMAT},
        {"empty_map", "{\"weight_map\": {}}", "no files", SD3_ERR_FORMAT},
        {"index_array", "[1]", "weight_map", SD3_ERR_FORMAT},
        {"bad_json", "{\"weight_map\": {", "JSON", SD3_ERR_FORMAT},
        {"missing_shard", "{\"weight_map\": {\"shared.weight\": \"model-00009-of-00009.safetensors\"}}",
         "model-00009-of-00009.safetensors", SD3_ERR_NOT_FOUND},
        {"stale", "{\"weight_map\": {\"shared.weight\": \"s1.safetensors\", \"gone\": \"s1.safetensors\"}}", "'gone'",
         SD3_ERR_FORMAT},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char d[512], idx[700];
        fresh(bad[i].name, d, sizeof d);
        put(d, "model_index.json", INDEX_MIN);
        mk(d, "text_encoder_3");
        put(d, "text_encoder_3/config.json", "{}");
        char sub[600];
        snprintf(sub, sizeof sub, "%s/text_encoder_3", d);
        write_shard(sub, "s1.safetensors", (const char *[]){"shared.weight"}, 1, 0);
        put(d, "text_encoder_3/model.safetensors.index.json", bad[i].index);
        snprintf(idx, sizeof idx, "%s/text_encoder_3/model.safetensors.index.json", d);
        model_store *ms = NULL;
        sd3_err err = {0};
        if (ms_open(&ms, d, &err) != SD3_OK) { CHECK(0, "%s: open: %s", bad[i].name, err.msg); continue; }
        weights w;
        sd3_status s = ms_open_weights(ms, "text_encoder_3", &w, &err);
        CHECK(s == bad[i].want, "%s: status %d want %d: %s", bad[i].name, (int)s, (int)bad[i].want, err.msg);
        CHECK(strstr(err.msg, idx) == err.msg, "%s: message starts with the index path: %s", bad[i].name, err.msg);
        CHECK(strstr(err.msg, bad[i].mention) != NULL, "%s: message lacks %s: %s", bad[i].name, bad[i].mention, err.msg);
        CHECK(w.n_files == 0, "%s: nothing left open", bad[i].name);
        if (getenv("SD3_TEST_VERBOSE")) printf("  %-28s -> %s\n", bad[i].name, err.msg);
        ms_close(ms);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* Hugging Face cache                                                                              */
/* ---------------------------------------------------------------------------------------------- */

static void test_hf_cache(void) {
    char hub[512], repo[700], snap[800], p[MS_PATH_MAX];
    const char *h1 = "0123456789abcdef0123456789abcdef01234567";
    const char *h2 = "fedcba9876543210fedcba9876543210fedcba98";
    fresh("hfhome", hub, sizeof hub);
    mk(hub, "hub");
    strcat(hub, "/hub");
    unsetenv("HF_HUB_CACHE");
    unsetenv("HUGGINGFACE_HUB_CACHE");
    char home[512];
    snprintf(home, sizeof home, "%s/hfhome", g_dir);
    setenv("HF_HOME", home, 1);
    CHECK(!strcmp(ms_hf_hub_dir(p, sizeof p), hub), "HF_HOME/hub: %s", p);

    snprintf(repo, sizeof repo, "%s/models--stabilityai--tiny-sd3", hub);
    mkdir(repo, 0755);
    mk(repo, "refs");
    mk(repo, "snapshots");
    mk(repo, "blobs");
    snprintf(snap, sizeof snap, "%s/snapshots/%s", repo, h1);
    mkdir(snap, 0755);
    put(snap, "model_index.json",
        "{\"_class_name\": \"StableDiffusion3Pipeline\", \"scheduler\": [\"diffusers\", \"FlowMatchEulerDiscreteScheduler\"]}");
    mk(snap, "scheduler");
    /* the cache stores files as symlinks into blobs/ */
    char blob[900], link[900];
    snprintf(blob, sizeof blob, "%s/blobs/abc123", repo);
    put(repo, "blobs/abc123", "{\"shift\": 3.0}");
    snprintf(link, sizeof link, "%s/scheduler/scheduler_config.json", snap);
    CHECK(symlink(blob, link) == 0, "symlink setup");

    sd3_err err = {0};
    /* no refs/main, one snapshot */
    CHECK(ms_hf_resolve("stabilityai/tiny-sd3", NULL, p, sizeof p, &err) == SD3_OK && !strcmp(p, snap),
          "single snapshot without refs: %s", err.msg);
    /* refs/main picks among several */
    snprintf(p, sizeof p, "%s/snapshots/%s", repo, h2);
    mkdir(p, 0755);
    CHECK(ms_hf_resolve("stabilityai/tiny-sd3", NULL, p, sizeof p, &err) == SD3_ERR_NOT_FOUND &&
              strstr(err.msg, "stabilityai/tiny-sd3") && strstr(err.msg, "2 snapshots"),
          "ambiguous without refs: %s", err.msg);
    char ref[100];
    snprintf(ref, sizeof ref, "%s\n", h1);
    put(repo, "refs/main", ref);
    CHECK(ms_hf_resolve("stabilityai/tiny-sd3", NULL, p, sizeof p, &err) == SD3_OK && !strcmp(p, snap),
          "refs/main: %s (%s)", p, err.msg);
    CHECK(ms_hf_resolve("stabilityai/tiny-sd3", h2, p, sizeof p, &err) == SD3_OK && strstr(p, h2),
          "explicit commit: %s", err.msg);
    CHECK(ms_hf_resolve("stabilityai/tiny-sd3", "v2", p, sizeof p, &err) == SD3_ERR_NOT_FOUND &&
              strstr(err.msg, "refs/v2"),
          "unknown revision: %s", err.msg);
    CHECK(ms_hf_resolve("stabilityai/nothing", NULL, p, sizeof p, &err) == SD3_ERR_NOT_FOUND &&
              strstr(err.msg, "models--stabilityai--nothing") && strstr(err.msg, hub),
          "repo not downloaded: %s", err.msg);
    CHECK(ms_hf_resolve("../../etc", NULL, p, sizeof p, &err) == SD3_ERR_INVALID_ARG, "hostile repo id: %s", err.msg);
    put(repo, "refs/bad", "../../x");
    CHECK(ms_hf_resolve("stabilityai/tiny-sd3", "bad", p, sizeof p, &err) == SD3_ERR_FORMAT, "hostile ref: %s", err.msg);

    /* ms_open on a repo id goes through the cache */
    model_store *ms = NULL;
    CHECK(ms_open(&ms, "stabilityai/tiny-sd3", &err) == SD3_OK && ms, "ms_open(repo id): %s", err.msg);
    if (ms) {
        CHECK(!strcmp(ms->path, snap) && !strcmp(ms->hf_repo, "stabilityai/tiny-sd3"), "resolved path %s", ms->path);
        cJSON *cfg = ms_load_config(ms, "scheduler", &err);
        CHECK(cfg && json_num(cfg, "shift", 0) == 3.0, "config through a blob symlink: %s", err.msg);
        cJSON_Delete(cfg);
        ms_close(ms);
    }
    open_fails("repo id not cached", "someorg/some-model", SD3_ERR_NOT_FOUND, "someorg/some-model",
               "models--someorg--some-model");

    /* HF_HUB_CACHE wins over HF_HOME */
    setenv("HF_HUB_CACHE", "/nonexistent/hubcache", 1);
    CHECK(!strcmp(ms_hf_hub_dir(p, sizeof p), "/nonexistent/hubcache"), "HF_HUB_CACHE: %s", p);
    CHECK(ms_hf_resolve("stabilityai/tiny-sd3", NULL, p, sizeof p, &err) == SD3_ERR_NOT_FOUND &&
              strstr(err.msg, "/nonexistent/hubcache/models--stabilityai--tiny-sd3"),
          "error names the folder looked for: %s", err.msg);
    unsetenv("HF_HUB_CACHE");
    unsetenv("HF_HOME");

    CHECK(ms_is_repo_id("stabilityai/stable-diffusion-3-medium-diffusers"), "repo id");
    CHECK(!ms_is_repo_id("a/b/c") && !ms_is_repo_id("/abs/path") && !ms_is_repo_id("../x") &&
              !ms_is_repo_id("a/..") && !ms_is_repo_id("noslash") && !ms_is_repo_id("a/") && !ms_is_repo_id("a b/c"),
          "not repo ids");
}

/* Remove the temp tree (only what this test created; symlinks are unlinked, never followed). */
static void rm_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        char p[1024];
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        struct stat sb;
        if (lstat(p, &sb) == 0 && S_ISDIR(sb.st_mode)) rm_tree(p);
        else unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

int main(void) {
    g_golden = getenv("SD3_GOLDEN") ? getenv("SD3_GOLDEN") : "../shared/golden";
    snprintf(g_dir, sizeof g_dir, "/tmp/sd3c_test_ms_XXXXXX");
    if (!mkdtemp(g_dir)) { perror("mkdtemp"); return 2; }
    test_golden_pipeline();
    test_golden_single_file();
    test_bad_index();
    test_incomplete();
    test_sharded();
    test_bad_shards();
    test_hf_cache();
    rm_tree(g_dir);
    TEST_MAIN_END("test_model_store");
}

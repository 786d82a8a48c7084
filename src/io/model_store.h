/*
 * model_store.h — where a model's files are: a diffusers pipeline folder (model_index.json and one
 * folder per component), the same folder inside the Hugging Face Hub cache, or a single-file checkpoint
 * (one .safetensors with the original key layout: model.diffusion_model.*, first_stage_model.*, ...).
 *
 * Usage:
 *     model_store *ms;
 *     sd3_err err = {0};
 *     // a folder, a .safetensors file, or a Hub repo id found in the local HF cache
 *     if (ms_open(&ms, "stabilityai/stable-diffusion-3-medium-diffusers", &err) != SD3_OK) fail(err.msg);
 *     if (ms->kind == MS_PIPELINE_DIR) {
 *         cJSON *cfg = ms_load_config(ms, "transformer", &err);     // transformer/config.json
 *         weights w;
 *         ms_open_weights(ms, "transformer", &w, &err);             // single, fp16 variant or sharded
 *         ...
 *         if (ms_has(ms, "text_encoder_3")) ...                     // [null, null] in model_index = absent
 *         cJSON_Delete(cfg);
 *         weights_close(&w);
 *     }
 *     ms_close(ms);
 *
 * What ms_open checks: model_index.json is a JSON object with a string "_class_name"; every key not
 * starting with '_' whose value is an array is a component, and that array must be [library, class]
 * (two strings) or [null, null] (the component is deliberately absent, as diffusers allows); other
 * values (booleans such as "force_zeros_for_empty_prompt") are pipeline options and are skipped. A
 * component name must be a plain folder name. ms_open does NOT require every component folder to
 * exist (a caller may not need them all); ms_require / ms_load_config / ms_open_weights on a component
 * whose folder or file is missing fail with SD3_ERR_NOT_FOUND naming the path, and ms_check verifies
 * every listed component at once.
 *
 * Failure contract: every function returning sd3_status leaves a message in err that starts with the
 * path (folder, file, or "Hugging Face cache: <repo id>") and names the component where one is involved.
 * Thread safety: a model_store is read-only after ms_open; concurrent readers are fine.
 */
#ifndef SD3_MODEL_STORE_H
#define SD3_MODEL_STORE_H

#include <cjson/cJSON.h>
#include "core/core.h"
#include "io/weights.h"

#define MS_MAX_COMPONENTS 32
#define MS_PATH_MAX 4096

typedef enum ms_kind {
    MS_PIPELINE_DIR = 0,   /* a diffusers pipeline folder with model_index.json */
    MS_SINGLE_FILE         /* one .safetensors checkpoint (original key layout) */
} ms_kind;

/* What a component folder holds, from its class: decides the config file and the weights stem. */
typedef enum ms_role {
    MS_ROLE_MODEL = 0,     /* config.json + <stem>.safetensors (diffusers / transformers models) */
    MS_ROLE_SCHEDULER,     /* scheduler_config.json, no weights */
    MS_ROLE_TOKENIZER,     /* tokenizer_config.json + vocab/merges/spiece/tokenizer.json, no weights */
    MS_ROLE_PROCESSOR      /* preprocessor_config.json (image processors / feature extractors), no weights */
} ms_role;

/* Parts found in a single-file checkpoint, by key prefix (bit flags of model_store.single_parts). */
enum {
    MS_PART_MMDIT = 1 << 0,  /* model.diffusion_model.* */
    MS_PART_VAE = 1 << 1,    /* first_stage_model.* */
    MS_PART_CLIP_L = 1 << 2, /* text_encoders.clip_l.* */
    MS_PART_CLIP_G = 1 << 3, /* text_encoders.clip_g.* */
    MS_PART_T5 = 1 << 4      /* text_encoders.t5xxl.* */
};

typedef struct ms_component {
    char name[64];         /* key in model_index.json: "transformer", "text_encoder_3", ... */
    char library[64];      /* "diffusers" or "transformers" ("" when absent) */
    char class_name[128];  /* "SD3Transformer2DModel", "T5EncoderModel", ... ("" when absent) */
    int present;           /* 0 when model_index.json says [null, null] */
    int dir_exists;        /* the component folder exists */
    ms_role role;
    char dir[MS_PATH_MAX]; /* <root>/<name> */
} ms_component;

/* Component overrides and config sources for single files (filled by comp_set_overrides in
 * src/pipeline/components.h; all "" after ms_open). */
typedef struct ms_overrides {
    char te[3][MS_PATH_MAX];        /* --clip-l, --clip-g, --t5xxl files ("" = from the model) */
    char vae[MS_PATH_MAX];          /* --vae file ("" = from the model) */
    char config_dir[MS_PATH_MAX];   /* a diffusers-layout folder whose <component>/config.json replace the
                                       configs inferred from tensor shapes (diffusers' from_single_file(config=)) */
    char tokenizers[MS_PATH_MAX];   /* tokenizer fallback folder (clip/, clip_g/, t5/); "" = search */
} ms_overrides;

typedef struct model_store {
    ms_kind kind;
    char path[MS_PATH_MAX];        /* the folder (pipeline) or the file (single file) */
    char hf_repo[256];             /* the Hub repo id when path was resolved from the HF cache, else "" */
    char pipeline_class[128];      /* model_index.json "_class_name" */
    char diffusers_version[32];    /* model_index.json "_diffusers_version" ("" if absent) */
    ms_component comp[MS_MAX_COMPONENTS];
    int n_comp;
    unsigned single_parts;         /* MS_PART_* flags (single file only) */
    int single_n_tensors;          /* tensors in the single file */
    ms_overrides ov;               /* component overrides (src/pipeline/components.h) */
} model_store;

/* Open path: a folder with model_index.json, a .safetensors file (classified only), or, when path does
 * not exist and looks like a Hub repo id ("org/name"), that repo's snapshot in the local HF cache.
 * *out is NULL on failure. Free with ms_close. */
sd3_status ms_open(model_store **out, const char *path, sd3_err *err);
void ms_close(model_store *ms);

/* The component named name, or NULL if model_index.json does not list it. */
const ms_component *ms_find(const model_store *ms, const char *name);
/* Listed and not [null, null] (its folder may still be missing: ms_require says so). */
int ms_has(const model_store *ms, const char *name);
/* <root>/<name> for a present component, else NULL. */
const char *ms_component_dir(const model_store *ms, const char *name);
/* SD3_OK if name is listed, present and its folder exists; else SD3_ERR_NOT_FOUND saying which. */
sd3_status ms_require(const model_store *ms, const char *name, sd3_err *err);
/* Check every present component: folder, config file, and weights for model components (located, not
 * opened). The first problem is returned. */
sd3_status ms_check(const model_store *ms, sd3_err *err);

/* Path of the component's config file (config.json, scheduler_config.json, tokenizer_config.json or
 * preprocessor_config.json by role), checked to exist. */
sd3_status ms_config_path(const model_store *ms, const char *name, char *out, size_t n, sd3_err *err);
/* Parse the component's config file; the result must be a JSON object. NULL + err on failure. Free with
 * cJSON_Delete. */
cJSON *ms_load_config(const model_store *ms, const char *name, sd3_err *err);
/* Path of <component dir>/<file> (e.g. "vocab.json", "spiece.model"), checked to be a regular file. */
sd3_status ms_file_path(const model_store *ms, const char *name, const char *file, char *out, size_t n, sd3_err *err);

/* The weights file stem for a component: "diffusion_pytorch_model" for diffusers classes, "model" for
 * transformers classes. */
const char *ms_weights_stem(const ms_component *c);
/* Open a model component's weights via weights_open_dir (single file, fp16 variant or sharded index).
 * SD3_ERR_INVALID_ARG for a scheduler/tokenizer component, SD3_ERR_UNSUPPORTED on a single-file store
 * (its key mapping lives elsewhere). */
sd3_status ms_open_weights(const model_store *ms, const char *name, weights *w, sd3_err *err);

/* A human-readable multi-line summary of what was found (components, classes, config and weights files,
 * what is missing) into buf (always NUL-terminated); returns buf. */
const char *ms_describe(const model_store *ms, char *buf, size_t n);

/* ---- Hugging Face Hub cache ---- */

/* The hub cache folder: $HF_HUB_CACHE, else $HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub, else
 * $XDG_CACHE_HOME/huggingface/hub, else $HOME/.cache/huggingface/hub. Returns out. */
const char *ms_hf_hub_dir(char *out, size_t n);
/* Resolve a repo id ("org/name" or "name") in the hub cache: <hub>/models--org--name/snapshots/<rev>/.
 * revision NULL means "main": refs/main is read if present, else the single snapshot folder is used (an
 * error if there are several). A revision of 40 hex digits is taken as a commit; any other name is read
 * from refs/<revision>. The error says exactly what was looked for. */
sd3_status ms_hf_resolve(const char *repo_id, const char *revision, char *out, size_t n, sd3_err *err);
/* Does s look like a Hub repo id ("org/name" of [A-Za-z0-9._-], no "..")? */
int ms_is_repo_id(const char *s);

#endif /* SD3_MODEL_STORE_H */

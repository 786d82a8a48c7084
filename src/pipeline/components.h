/*
 * components.h — where each component of a generation comes from, whatever the model is:
 *
 *   component        diffusers folder (-m DIR)      single file (-m FILE)                      override
 *   CLIP-L           text_encoder/                  text_encoders.clip_l.transformer.*         --clip-l FILE
 *   CLIP-G           text_encoder_2/                text_encoders.clip_g.transformer.*         --clip-g FILE
 *   T5-XXL           text_encoder_3/                text_encoders.t5xxl.transformer.*          --t5xxl FILE
 *   MMDiT            transformer/                   model.diffusion_model.*                    -
 *   VAE              vae/                           first_stage_model.*                        --vae FILE
 *   tokenizers       tokenizer{,_2,_3}/             models/tokenizers/{clip,clip_g,t5}/ (shipped)
 *
 * An override wins over the model; an override file holds the encoder's transformers keys, under any
 * prefix (te_single.h). A T5 that is nowhere (sd3_medium.safetensors without --t5xxl) means "no T5":
 * zeros, as text_encoder_3=None. A CLIP that is nowhere is an error saying which flag to pass.
 *
 * Configs: from the component folder's config.json; for single files and overrides from
 * <ov.config_dir>/<component>/config.json when a config folder is given (diffusers' from_single_file(config=);
 * the tiny test models need it), else inferred from the tensor shapes (te_single.h for the text encoders,
 * mmdit_config_infer, vae_config_infer).
 *
 * CLIP-L's text_projection: taken from a diffusers folder as it is. From a single file or an override
 * file it is the identity, whether or not the file carries one: diffusers' single-file loader
 * (create_diffusers_clip_model_from_ldm) sets text_projection = eye(C) for the SD3 CLIP-L, and ComfyUI and
 * stable-diffusion.cpp pool SD3's CLIP-L without a projection, so the pooled CLIP-L vector is the final-LN
 * eos state itself. CLIP-G's text_projection must be in the file (all three keep it).
 *
 * Tokenizers: the pipeline folder's tokenizer/, tokenizer_2/, tokenizer_3/ when present, else the
 * fallback folder: ov.tokenizers, else $SD3_TOKENIZERS, else <exe dir>/../share/sd3c/tokenizers,
 * <exe dir>/models/tokenizers, <exe dir>/../models/tokenizers, <exe dir>/../../models/tokenizers (a build
 * folder inside the source tree), then SD3_TOKENIZERS_DIR (compiled in, default
 * /usr/local/share/sd3c/tokenizers). The fallback holds clip/ (CLIP-L: vocab.json, merges.txt and
 * SD3's tokenizer/ configs), clip_g/ (the same vocabulary with tokenizer_2/'s configs: pad "!" = id 0,
 * which is also an added token) and t5/ (spiece.model and tokenizer_3/'s configs).
 */
#ifndef SD3_PIPELINE_COMPONENTS_H
#define SD3_PIPELINE_COMPONENTS_H

#include <cjson/cJSON.h>
#include "io/model_store.h"
#include "mmdit/mmdit.h"
#include "text/t5.h"
#include "text/te_single.h"
#include "vae/vae.h"

/* A text encoder's weights and config, from wherever they are. */
typedef struct comp_te {
    weights w;            /* what the model binds: diffusers keys, prefix applied */
    weights owned;        /* the files opened for it (closed by comp_te_close) */
    st_file *eye;         /* in-memory file holding the identity text_projection (CLIP-L outside a folder) */
    void *eye_buf;
    cJSON *config;
    char label[MS_PATH_MAX];  /* what errors call it: the folder, the file, or "file:prefix" */
    int resident;         /* a copy of the one a comp_res keeps: comp_te_close only forgets it */
} comp_te;

/* Record the overrides (any may be NULL or "") in ms->ov and check each file now: it must exist and hold
 * the expected model (the text encoder of that role, or a VAE); the error names the file, the flag and
 * what was expected. A single-file model must have an MMDiT, a VAE (or --vae) and both CLIPs (in the file or
 * as overrides). */
sd3_status comp_set_overrides(model_store *ms, const char *clip_l, const char *clip_g, const char *t5xxl, const char *vae,
                              sd3_err *err);

/* Take component configs from <dir>/<component>/config.json (transformer, vae, text_encoder, text_encoder_2,
 * text_encoder_3) instead of inferring them from shapes, for single files and overrides; dir NULL/"" = infer.
 * SD3_ERR_NOT_FOUND when dir is no folder. A missing config.json is an error when that component is opened. */
sd3_status comp_set_config_dir(model_store *ms, const char *dir, sd3_err *err);

/* Whether the T5 is available (folder, single file or override) with a tokenizer. */
int comp_has_t5(const model_store *ms);
/* Role of a diffusers folder name ("text_encoder" -> CLIP-L, "text_encoder_2" -> CLIP-G, else T5). */
te_role comp_role_of(const char *folder);
/* Open a text encoder's weights and config (see the table above). */
sd3_status comp_te_open(const model_store *ms, te_role role, comp_te *te, sd3_err *err);
void comp_te_close(comp_te *te);
/* The tokenizer folder of a role into out. */
sd3_status comp_tokenizer_dir(const model_store *ms, te_role role, char *out, size_t n, sd3_err *err);

/* Open the MMDiT / the VAE from the model (or the --vae override). */
sd3_status comp_open_mmdit(const model_store *ms, mmdit_model *m, sd3_err *err);
sd3_status comp_open_vae(const model_store *ms, vae_model *v, sd3_err *err);
/* The transformer's joint attention width (context_embedder input), 4096 when it cannot be read. */
int comp_joint_width(const model_store *ms);

/* ------------------------------------------------------------------------------------------------ */
/* Memory policy: load counts and resident components (sd3_model_params.keep_loaded)                */
/* ------------------------------------------------------------------------------------------------ */

/* The components the policy counts, in diffusers' enable_model_cpu_offload order. */
typedef enum comp_id { COMP_CLIP_L = 0, COMP_CLIP_G, COMP_T5, COMP_MMDIT, COMP_VAE, COMP_COUNT } comp_id;
/* "text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "vae". */
const char *comp_id_name(comp_id c);

/* What a context keeps of its model between generations. Default policy (keep = 0): every component is
 * opened (mapped, its header and config parsed), used and closed in turn, each generation again. keep = 1:
 * a component opened once stays open here until comp_res_detach (sd3_load of another model, sd3_ctx_free),
 * so a second generation opens, maps and parses no weights: the text encoders' weight sets and configs, the
 * MMDiT (with its int8/int4 copies when quantised at load) and the VAE. Per generation, still: the
 * tokenizers are read and the text encoders' tensor views are bound (clip_load / t5_load, no I/O); a T5
 * quantised at load (`--t5 int8`) is kept quantised (t5q) and not quantised again.
 * The registry is found by model_store, so the opening functions above (and encode_prompt, which calls
 * them) use it without a new parameter; a model_store without one (tools, tests, golden runner) follows
 * the default policy and is not counted. */
typedef struct comp_res {
    const model_store *ms;
    int keep;
    int loads[COMP_COUNT];        /* times each component was opened from its files */
    comp_te te[3];                /* resident text encoders (keep) */
    int have_te[3];
    mmdit_model mmdit;            /* resident transformer (keep), quantised as mmdit_quant says */
    int have_mmdit, mmdit_quant;
    vae_model vae;                /* resident VAE (keep) */
    int have_vae;
    t5_model t5q;                 /* resident T5 quantised at load (keep + --t5 int8/int4): quantised once; its
                                   * float tensors are views into te[2], which stays open with it */
    int have_t5q, t5q_bits;
    int t5q_made;                 /* times a quantised T5 was handed to the context (tests: once when kept) */
    struct comp_res *next;
} comp_res;

/* Register ms with the policy keep (0 or 1); *out is owned by the caller (comp_res_detach). */
sd3_status comp_res_attach(const model_store *ms, int keep, comp_res **out, sd3_err *err);
/* Close every resident component and unregister (NULL is fine). Call before ms_close. */
void comp_res_detach(comp_res *r);
/* The registry of ms, or NULL. */
comp_res *comp_res_of(const model_store *ms);

/* The MMDiT for one generation: the resident one, or opened now (and quantised when quant is 8 or 4, the
 * float pages then released); kept resident when the policy keeps. local is storage for a model that is
 * not kept. Hand it back with comp_mmdit_put, which detaches run-time LoRAs from a resident model and
 * frees any other. */
sd3_status comp_mmdit_get(const model_store *ms, int quant, mmdit_model *local, mmdit_model **out, sd3_err *err);
void comp_mmdit_put(const model_store *ms, mmdit_model *m);
/* The VAE for one use, in the same way (comp_vae_put frees one that is not resident). */
sd3_status comp_vae_get(const model_store *ms, vae_model *local, vae_model **out, sd3_err *err);
void comp_vae_put(const model_store *ms, vae_model *v);

#endif /* SD3_PIPELINE_COMPONENTS_H */

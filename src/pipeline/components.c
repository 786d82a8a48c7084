/* components.c — where each component of a generation comes from: diffusers folder, single-file
 * checkpoint, or override file (see components.h). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "io/json_util.h"
#include "lora/lora.h"
#include "pipeline/components.h"
#include "quant/quant_models.h"

#ifndef SD3_TOKENIZERS_DIR
#define SD3_TOKENIZERS_DIR "/usr/local/share/sd3c/tokenizers"
#endif

static const char *TE_FOLDER[3] = {"text_encoder", "text_encoder_2", "text_encoder_3"};
static const char *TOK_FOLDER[3] = {"tokenizer", "tokenizer_2", "tokenizer_3"};
static const char *TOK_FALLBACK[3] = {"clip", "clip_g", "t5"};
static const char *SF_PREFIX[3] = {"text_encoders.clip_l.transformer.", "text_encoders.clip_g.transformer.",
                                   "text_encoders.t5xxl.transformer."};
static const unsigned SF_PART[3] = {MS_PART_CLIP_L, MS_PART_CLIP_G, MS_PART_T5};
static const char *FLAG[3] = {"--clip-l", "--clip-g", "--t5xxl"};

/* Whether path is an existing regular file / folder. */
static int is_file(const char *p) { struct stat sb; return stat(p, &sb) == 0 && S_ISREG(sb.st_mode); }
static int is_dir(const char *p) { struct stat sb; return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode); }

te_role comp_role_of(const char *folder) {
    return !strcmp(folder, "text_encoder") ? TE_ROLE_CLIP_L : !strcmp(folder, "text_encoder_2") ? TE_ROLE_CLIP_G : TE_ROLE_T5;
}

/* Copy an override path into dst, checking the file exists and is not too long. */
static sd3_status take_path(char *dst, const char *src, const char *flag, sd3_err *err) {
    dst[0] = 0;
    if (!src || !*src) return SD3_OK;
    if (strlen(src) >= MS_PATH_MAX) return sd3_errf(err, SD3_ERR_INVALID_ARG, "%s %s: path too long", flag, src);
    if (!is_file(src)) return sd3_errf(err, SD3_ERR_NOT_FOUND, "%s %s: no such file", flag, src);
    snprintf(dst, MS_PATH_MAX, "%s", src);
    return SD3_OK;
}

/* Whether any key of f ends with suffix. */
static int has_key_ending(const st_file *f, const char *suffix) {
    size_t b = strlen(suffix);
    for (int i = 0; i < f->n; i++) {
        size_t a = strlen(f->entries[i].name);
        if (a >= b && !strcmp(f->entries[i].name + a - b, suffix)) return 1;
    }
    return 0;
}

/* Record and check the overrides; see components.h. */
sd3_status comp_set_overrides(model_store *ms, const char *clip_l, const char *clip_g, const char *t5xxl, const char *vae,
                              sd3_err *err) {
    const char *te[3] = {clip_l, clip_g, t5xxl};
    sd3_status s;
    for (int r = 0; r < 3; r++) {
        if ((s = take_path(ms->ov.te[r], te[r], FLAG[r], err))) return s;
        if (!ms->ov.te[r][0]) continue;
        st_file *f;
        if ((s = st_open(&f, ms->ov.te[r], err))) { sd3_err_prefix(err, "%s", FLAG[r]); return s; }
        char prefix[256];
        s = te_find(f, (te_role)r, prefix, sizeof prefix, err);
        st_close(f);
        if (s) { sd3_err_prefix(err, "%s", FLAG[r]); return s; }
    }
    if ((s = take_path(ms->ov.vae, vae, "--vae", err))) return s;
    if (ms->ov.vae[0]) {
        st_file *f;
        if ((s = st_open(&f, ms->ov.vae, err))) { sd3_err_prefix(err, "--vae"); return s; }
        int ok = has_key_ending(f, "decoder.conv_in.weight");
        st_close(f);
        if (!ok)
            return sd3_errf(err, SD3_ERR_NOT_FOUND, "--vae %s: expected a VAE (a tensor '[first_stage_model.]decoder.conv_in.weight'), "
                            "found none", ms->ov.vae);
    }
    if (ms->kind == MS_SINGLE_FILE && !(ms->single_parts & MS_PART_MMDIT))
        return sd3_errf(err, SD3_ERR_NOT_FOUND, "%s: this single file has no transformer (model.diffusion_model.*): it cannot "
                        "be the model (-m); pass it as the override it is", ms->path);
    if (ms->kind == MS_SINGLE_FILE && !(ms->single_parts & MS_PART_VAE) && !ms->ov.vae[0])
        return sd3_errf(err, SD3_ERR_NOT_FOUND, "%s: this single file has no VAE (first_stage_model.*): pass --vae FILE", ms->path);
    /* both CLIPs are needed (T5 is optional): say so now rather than after loading */
    for (int r = 0; r < 2 && ms->kind == MS_SINGLE_FILE; r++)
        if (!ms->ov.te[r][0] && !(ms->single_parts & SF_PART[r]))
            return sd3_errf(err, SD3_ERR_NOT_FOUND, "%s: this single file has no %s text encoder (%s*): pass %s FILE (%s)", ms->path,
                            te_role_name((te_role)r), SF_PREFIX[r], FLAG[r], r ? "clip_g.safetensors" : "clip_l.safetensors");
    return SD3_OK;
}

/* Use <dir>/<component>/config.json for single files and overrides; see components.h. */
sd3_status comp_set_config_dir(model_store *ms, const char *dir, sd3_err *err) {
    ms->ov.config_dir[0] = 0;
    if (!dir || !*dir) return SD3_OK;
    if (strlen(dir) >= MS_PATH_MAX) return sd3_errf(err, SD3_ERR_INVALID_ARG, "--config %s: path too long", dir);
    if (!is_dir(dir)) return sd3_errf(err, SD3_ERR_NOT_FOUND, "--config %s: no such folder (a diffusers-layout folder with "
                                                              "transformer/, vae/, text_encoder*/ config.json files)", dir);
    snprintf(ms->ov.config_dir, MS_PATH_MAX, "%s", dir);
    return SD3_OK;
}

/* Where role r's encoder is: 1 = override file, 2 = folder component, 3 = single-file prefix, 0 = nowhere. */
static int te_source(const model_store *ms, te_role r) {
    if (ms->ov.te[r][0]) return 1;
    if (ms->kind == MS_PIPELINE_DIR) return ms_has(ms, TE_FOLDER[r]) ? 2 : 0;
    return (ms->single_parts & SF_PART[r]) ? 3 : 0;
}

int comp_has_t5(const model_store *ms) {
    if (!te_source(ms, TE_ROLE_T5)) return 0;
    /* a folder without tokenizer_3 falls back to the shipped one, as a single file does */
    return 1;
}

/* The folder of the running executable into out ("" when unknown). */
static void exe_dir(char *out, size_t n) {
    out[0] = 0;
    char buf[MS_PATH_MAX];
    ssize_t l = readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (l <= 0) return;
    buf[l] = 0;
    char *slash = strrchr(buf, '/');
    if (!slash) return;
    *slash = 0;
    snprintf(out, n, "%s", buf);
}

/* The tokenizer folder of a role; see components.h for the search order. */
sd3_status comp_tokenizer_dir(const model_store *ms, te_role role, char *out, size_t n, sd3_err *err) {
    if (ms->kind == MS_PIPELINE_DIR && ms_has(ms, TOK_FOLDER[role])) {
        const char *d = ms_component_dir(ms, TOK_FOLDER[role]);
        snprintf(out, n, "%s", d);
        return SD3_OK;
    }
    char ed[MS_PATH_MAX], cand[8][MS_PATH_MAX + 64];
    int nc = 0;
    exe_dir(ed, sizeof ed);
    const char *env = getenv("SD3_TOKENIZERS");
    if (ms->ov.tokenizers[0]) snprintf(cand[nc++], sizeof cand[0], "%s", ms->ov.tokenizers);
    else if (env && *env) snprintf(cand[nc++], sizeof cand[0], "%s", env);
    else {
        if (ed[0]) {
            snprintf(cand[nc++], sizeof cand[0], "%s/../share/sd3c/tokenizers", ed);
            snprintf(cand[nc++], sizeof cand[0], "%s/models/tokenizers", ed);         /* source tree: sd3 at the root, */
            snprintf(cand[nc++], sizeof cand[0], "%s/../models/tokenizers", ed);      /* in build/, */
            snprintf(cand[nc++], sizeof cand[0], "%s/../../models/tokenizers", ed);   /* in build/tests/ */
        }
        snprintf(cand[nc++], sizeof cand[0], "%s", SD3_TOKENIZERS_DIR);
    }
    for (int i = 0; i < nc; i++) {
        char d[MS_PATH_MAX + 80];
        snprintf(d, sizeof d, "%.4000s/%s", cand[i], TOK_FALLBACK[role]);
        if (is_dir(d)) {
            if (strlen(d) >= n) return sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: path too long", d);
            snprintf(out, n, "%s", d);
            return SD3_OK;
        }
    }
    return sd3_errf(err, SD3_ERR_NOT_FOUND,
                    "%s: no %s tokenizer: the model has no %s/ folder and the shipped tokenizers were not found (looked in "
                    "%s%s; set SD3_TOKENIZERS to the sd3c source tree's models/tokenizers)",
                    ms->path, te_role_name(role), TOK_FOLDER[role], cand[0], nc > 1 ? " and the install paths" : "");
}

/* Build an in-memory safetensors file holding key = eye(C) (F32). */
static sd3_status make_eye(comp_te *te, const char *key, int64_t C, sd3_err *err) {
    char hdr[512];
    int hl = snprintf(hdr, sizeof hdr, "{\"%s\":{\"dtype\":\"F32\",\"shape\":[%lld,%lld],\"data_offsets\":[0,%lld]}}", key,
                      (long long)C, (long long)C, (long long)(C * C * 4));
    if (hl < 0 || (size_t)hl >= sizeof hdr - 8) return sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: key too long", key);
    while (hl % 8) hdr[hl++] = ' ';
    size_t total = 8 + (size_t)hl + (size_t)(C * C * 4);
    unsigned char *b = calloc(1, total);
    if (!b) return sd3_errf(err, SD3_ERR_NOMEM, "out of memory for the identity text_projection");
    uint64_t n = (uint64_t)hl;
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(n >> (8 * i));
    memcpy(b + 8, hdr, (size_t)hl);
    float one = 1.0f;
    for (int64_t i = 0; i < C; i++) memcpy(b + 8 + hl + (size_t)(i * C + i) * 4, &one, 4);
    sd3_status s = st_open_memory(&te->eye, b, total, "identity text_projection", err);
    if (s) { free(b); return s; }
    te->eye_buf = b;
    return SD3_OK;
}

void comp_te_close(comp_te *te) {
    if (te->resident) { memset(te, 0, sizeof *te); return; }   /* the comp_res keeps it open */
    weights_close(&te->owned);
    if (te->eye) st_close(te->eye);
    free(te->eye_buf);
    cJSON_Delete(te->config);
    memset(te, 0, sizeof *te);
}

/* The config.json of a component from the config folder, or NULL (err untouched) when there is none. */
static cJSON *config_from_dir(const model_store *ms, const char *folder, sd3_status *s, sd3_err *err) {
    *s = SD3_OK;
    if (!ms->ov.config_dir[0]) return NULL;
    char p[MS_PATH_MAX + 80];
    snprintf(p, sizeof p, "%s/%s/config.json", ms->ov.config_dir, folder);
    cJSON *j = json_load_file(p, err);
    if (!j) *s = err ? err->status : SD3_ERR_IO;
    return j;
}

/* Open a text encoder from its files (folder, single file or override); see components.h. */
static sd3_status te_open_files(const model_store *ms, te_role r, comp_te *te, sd3_err *err) {
    memset(te, 0, sizeof *te);
    sd3_status s;
    int src = te_source(ms, r);
    if (src == 0) {
        if (ms->kind == MS_PIPELINE_DIR) return sd3_errf(err, SD3_ERR_NOT_FOUND, "%s: pipeline has no %s", ms->path, TE_FOLDER[r]);
        return sd3_errf(err, SD3_ERR_NOT_FOUND, "%s: this single file has no %s text encoder (%s*): pass %s FILE", ms->path,
                        te_role_name(r), SF_PREFIX[r], FLAG[r]);
    }
    if (src == 2) {
        snprintf(te->label, sizeof te->label, "%s", TE_FOLDER[r]);
        if (!(te->config = ms_load_config(ms, TE_FOLDER[r], err))) return err ? err->status : SD3_ERR_IO;
        if ((s = ms_open_weights(ms, TE_FOLDER[r], &te->owned, err))) { comp_te_close(te); return s; }
        weights_view(&te->w, &te->owned, "");
        return SD3_OK;
    }
    const char *path = src == 1 ? ms->ov.te[r] : ms->path;
    if ((s = weights_open_file(&te->owned, path, err))) return s;
    char prefix[sizeof te->w.prefix];
    if (src == 3) snprintf(prefix, sizeof prefix, "%s", SF_PREFIX[r]);
    else if ((s = te_find(te->owned.files[0], r, prefix, sizeof prefix, err))) { sd3_err_prefix(err, "%s", FLAG[r]); goto fail; }
    snprintf(te->label, sizeof te->label, "%.3800s%s%.127s", path, prefix[0] ? ":" : "", prefix);
    if (!(te->config = config_from_dir(ms, TE_FOLDER[r], &s, err))) {
        if (s) goto fail;
        weights pv;
        weights_view(&pv, &te->owned, prefix);
        if (!(te->config = r == TE_ROLE_T5 ? te_t5_config_infer(&pv, te->label, err) : te_clip_config_infer(&pv, r, te->label, err))) {
            s = err ? err->status : SD3_ERR_FORMAT;
            goto fail;
        }
    }
    /* the weight set the model binds: [identity projection,] the file, through the prefix */
    memset(&te->w, 0, sizeof te->w);
    if (r == TE_ROLE_CLIP_L) {
        int C = json_int(te->config, "hidden_size", 0), P = json_int(te->config, "projection_dim", 0);
        if (C < 1 || P != C) {
            s = sd3_errf(err, SD3_ERR_SHAPE, "%s: CLIP-L projection_dim %d differs from hidden_size %d: the identity "
                                             "text_projection SD3 single files use needs them equal",
                         te->label, P, C);
            goto fail;
        }
        char key[320];
        snprintf(key, sizeof key, "%stext_projection.weight", prefix);
        if ((s = make_eye(te, key, C, err))) goto fail;
        te->w.files[te->w.n_files++] = te->eye;
    }
    te->w.files[te->w.n_files++] = te->owned.files[0];
    te->w.owns_files = 0;
    memcpy(te->w.prefix, prefix, sizeof prefix);
    snprintf(te->w.label, sizeof te->w.label, "%.*s", (int)sizeof te->w.label - 1, path);
    return SD3_OK;
fail:
    comp_te_close(te);
    return s;
}

/* Open a text encoder: the resident one when the context keeps it, else from its files (counted, and
 * kept when the policy keeps). */
sd3_status comp_te_open(const model_store *ms, te_role r, comp_te *te, sd3_err *err) {
    comp_res *res = comp_res_of(ms);
    if (res && res->keep && res->have_te[r]) {
        *te = res->te[r];
        te->resident = 1;
        return SD3_OK;
    }
    sd3_status s = te_open_files(ms, r, te, err);
    if (s || !res) return s;
    res->loads[r]++;
    if (strcmp(te->label, comp_id_name((comp_id)r)))
        LOG_INFO("loaded %s (%s; load %d in this context)", comp_id_name((comp_id)r), te->label, res->loads[r]);
    else
        LOG_INFO("loaded %s (load %d in this context)", comp_id_name((comp_id)r), res->loads[r]);
    if (res->keep) {
        res->te[r] = *te;
        res->have_te[r] = 1;
        te->resident = 1;
    }
    return SD3_OK;
}

/* Count one opening of component c of ms, with a log line. */
static void count_load(const model_store *ms, comp_id c) {
    comp_res *res = comp_res_of(ms);
    if (!res) return;
    res->loads[c]++;
    LOG_INFO("loaded %s (load %d in this context)", comp_id_name(c), res->loads[c]);
}

static sd3_status open_mmdit_files(const model_store *ms, mmdit_model *m, sd3_err *err);

/* Open the MMDiT (counted). */
sd3_status comp_open_mmdit(const model_store *ms, mmdit_model *m, sd3_err *err) {
    sd3_status s = open_mmdit_files(ms, m, err);
    if (!s) count_load(ms, COMP_MMDIT);
    return s;
}

/* Open the MMDiT: folder, or the single file (config from the config folder, else inferred). */
static sd3_status open_mmdit_files(const model_store *ms, mmdit_model *m, sd3_err *err) {
    if (ms->kind == MS_SINGLE_FILE) {
        char cfg[MS_PATH_MAX + 80];
        if (ms->ov.config_dir[0]) snprintf(cfg, sizeof cfg, "%s/transformer/config.json", ms->ov.config_dir);
        return mmdit_load_file(m, ms->path, ms->ov.config_dir[0] ? cfg : NULL, err);
    }
    const char *d = ms_component_dir(ms, "transformer");
    if (!d) return sd3_errf(err, SD3_ERR_NOT_FOUND, "%s: pipeline has no transformer", ms->path);
    return mmdit_load_dir(m, d, err);
}

static sd3_status open_vae_files(const model_store *ms, vae_model *v, sd3_err *err);

/* Open the VAE (counted). */
sd3_status comp_open_vae(const model_store *ms, vae_model *v, sd3_err *err) {
    sd3_status s = open_vae_files(ms, v, err);
    if (!s) count_load(ms, COMP_VAE);
    return s;
}

/* Open the VAE: --vae override, folder, or the single file's first_stage_model.*. */
static sd3_status open_vae_files(const model_store *ms, vae_model *v, sd3_err *err) {
    const char *file = ms->ov.vae[0] ? ms->ov.vae : ms->kind == MS_SINGLE_FILE ? ms->path : NULL;
    if (file) {
        vae_config c;
        int have = 0;
        if (ms->ov.config_dir[0]) {
            char p[MS_PATH_MAX + 80];
            snprintf(p, sizeof p, "%s/vae/config.json", ms->ov.config_dir);
            sd3_status s = vae_config_load(&c, p, err);
            if (s) return s;
            have = 1;
        }
        sd3_status s = vae_open_file(v, file, have ? &c : NULL, err);
        if (s && ms->ov.vae[0]) sd3_err_prefix(err, "--vae");
        return s;
    }
    const char *d = ms_component_dir(ms, "vae");
    if (!d) return sd3_errf(err, SD3_ERR_NOT_FOUND, "%s: pipeline has no vae", ms->path);
    return vae_open_dir(v, d, err);
}

/* The joint width: transformer config (folder) or the context_embedder's input width (single file). */
int comp_joint_width(const model_store *ms) {
    int J = 4096;
    sd3_err e = {0};
    if (ms->kind == MS_PIPELINE_DIR) {
        cJSON *c = ms_has(ms, "transformer") ? ms_load_config(ms, "transformer", &e) : NULL;
        J = json_int(c, "joint_attention_dim", 4096);
        cJSON_Delete(c);
        return J;
    }
    st_file *f;
    if (st_open(&f, ms->path, &e)) return J;
    const st_entry *t = st_find(f, "model.diffusion_model.context_embedder.weight");
    if (t && t->ndim == 2) J = (int)t->shape[1];
    /* an int4 pair written by `sd3 quantize` stores [C, J/2] packed bytes (quant.h) */
    if (t && t->ndim == 2 && t->dt == DT_U8 && st_find(f, "model.diffusion_model.context_embedder.weight.qscale")) J *= 2;
    st_close(f);
    return J;
}

/* ------------------------------------------------------------------------------------------------ */
/* Memory policy (components.h)                                                                     */
/* ------------------------------------------------------------------------------------------------ */

/* The diffusers folder name of a component, for messages and logs. */
const char *comp_id_name(comp_id c) {
    static const char *names[COMP_COUNT] = {"text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "vae"};
    return c >= 0 && c < COMP_COUNT ? names[c] : "?";
}

/* Every registered comp_res, by model_store (contexts may live in several threads: guarded). */
static comp_res *g_res;
static pthread_mutex_t g_res_lock = PTHREAD_MUTEX_INITIALIZER;

/* Register a context's model with its policy; see components.h. */
sd3_status comp_res_attach(const model_store *ms, int keep, comp_res **out, sd3_err *err) {
    *out = NULL;
    comp_res *r = calloc(1, sizeof *r);
    if (!r) return sd3_errf(err, SD3_ERR_NOMEM, "out of memory");
    r->ms = ms;
    r->keep = keep ? 1 : 0;
    pthread_mutex_lock(&g_res_lock);
    r->next = g_res;
    g_res = r;
    pthread_mutex_unlock(&g_res_lock);
    *out = r;
    return SD3_OK;
}

/* Look a model_store up in the registry (NULL: default policy, not counted). */
comp_res *comp_res_of(const model_store *ms) {
    comp_res *found = NULL;
    pthread_mutex_lock(&g_res_lock);
    for (comp_res *r = g_res; r && !found; r = r->next)
        if (r->ms == ms) found = r;
    pthread_mutex_unlock(&g_res_lock);
    return found;
}

/* Unregister, then close what is resident (the store is still open: views stay valid until here). */
void comp_res_detach(comp_res *r) {
    if (!r) return;
    pthread_mutex_lock(&g_res_lock);
    for (comp_res **p = &g_res; *p; p = &(*p)->next)
        if (*p == r) { *p = r->next; break; }
    pthread_mutex_unlock(&g_res_lock);
    for (int k = 0; k < 3; k++)
        if (r->have_te[k]) comp_te_close(&r->te[k]);
    if (r->have_mmdit) mmdit_free(&r->mmdit);
    if (r->have_vae) vae_free(&r->vae);
    if (r->have_t5q) t5_free(&r->t5q);   /* before te[2] would matter: its views are not touched here */
    free(r);
}

/* The transformer for one generation, resident or opened now; see components.h. */
sd3_status comp_mmdit_get(const model_store *ms, int quant, mmdit_model *local, mmdit_model **out, sd3_err *err) {
    *out = NULL;
    comp_res *res = comp_res_of(ms);
    if (res && res->keep && res->have_mmdit && res->mmdit_quant == quant) {
        *out = &res->mmdit;
        return SD3_OK;
    }
    memset(local, 0, sizeof *local);
    sd3_status s = comp_open_mmdit(ms, local, err);
    if (s) return s;
    if (quant) {   /* owned int8/int4 copies of the Linears (before LoRAs attach); float pages released */
        if ((s = quant_mmdit(local, quant, local->owns_weights ? &local->w : NULL, NULL, err))) { mmdit_free(local); return s; }
        if (local->owns_weights) weights_release_pages(&local->w);
    }
    if (res && res->keep) {
        if (res->have_mmdit) mmdit_free(&res->mmdit);   /* kept with another quantisation */
        res->mmdit = *local;
        res->have_mmdit = 1;
        res->mmdit_quant = quant;
        memset(local, 0, sizeof *local);
        *out = &res->mmdit;
    } else {
        *out = local;
    }
    return SD3_OK;
}

/* Hand the transformer back: a resident one loses this call's LoRAs and streaming flag, another is freed. */
void comp_mmdit_put(const model_store *ms, mmdit_model *m) {
    if (!m) return;
    comp_res *res = comp_res_of(ms);
    if (res && res->have_mmdit && m == &res->mmdit) {
        lora_detach_all(m);   /* run-time LoRAs belong to one generation */
        m->stream_layers = 0;
        return;
    }
    mmdit_free(m);
}

/* The VAE for one use, resident or opened now; see components.h. */
sd3_status comp_vae_get(const model_store *ms, vae_model *local, vae_model **out, sd3_err *err) {
    *out = NULL;
    comp_res *res = comp_res_of(ms);
    if (res && res->keep && res->have_vae) {
        *out = &res->vae;
        return SD3_OK;
    }
    memset(local, 0, sizeof *local);
    sd3_status s = comp_open_vae(ms, local, err);
    if (s) return s;
    if (res && res->keep) {
        res->vae = *local;
        res->have_vae = 1;
        memset(local, 0, sizeof *local);
        *out = &res->vae;
    } else {
        *out = local;
    }
    return SD3_OK;
}

/* Hand the VAE back: freed unless resident. */
void comp_vae_put(const model_store *ms, vae_model *v) {
    if (!v) return;
    comp_res *res = comp_res_of(ms);
    if (res && res->have_vae && v == &res->vae) return;
    vae_free(v);
}

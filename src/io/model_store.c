/* model_store.c — diffusers pipeline folders, the Hugging Face cache, single-file checkpoints (see
 * model_store.h). Nothing here reads tensor data: it finds files, validates model_index.json, and hands
 * component folders to weights_open_dir / json_load_file. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include "io/json_util.h"
#include "io/model_store.h"

/* ---------------------------------------------------------------------------------------------- */
/* Small helpers                                                                                   */
/* ---------------------------------------------------------------------------------------------- */

static int is_dir(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static int is_file(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* snprintf that reports truncation (a path we cannot hold is an error, never silently cut). */
static int fmt_path(char *out, size_t n, const char *fmt, const char *a, const char *b) {
    int k = snprintf(out, n, fmt, a, b);
    return k >= 0 && (size_t)k < n;
}

/* A component name usable as a folder name: non-empty, no separators, not "." or "..". */
static int plain_name(const char *s) {
    return *s && strcmp(s, ".") && strcmp(s, "..") && !strchr(s, '/') && !strchr(s, '\\');
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* The role of a component from its class (and name, for hand-made indexes). */
static ms_role role_of(const char *name, const char *cls) {
    if (strstr(cls, "Scheduler") || strcmp(name, "scheduler") == 0) return MS_ROLE_SCHEDULER;
    if (strstr(cls, "Tokenizer") || strncmp(name, "tokenizer", 9) == 0) return MS_ROLE_TOKENIZER;
    if (strstr(cls, "ImageProcessor") || strstr(cls, "FeatureExtractor")) return MS_ROLE_PROCESSOR;
    return MS_ROLE_MODEL;
}

static const char *role_config_name(ms_role r) {
    switch (r) {
    case MS_ROLE_SCHEDULER: return "scheduler_config.json";
    case MS_ROLE_TOKENIZER: return "tokenizer_config.json";
    case MS_ROLE_PROCESSOR: return "preprocessor_config.json";
    default: return "config.json";
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* Hugging Face cache                                                                              */
/* ---------------------------------------------------------------------------------------------- */

/* Where huggingface_hub keeps its cache, following its own environment variables in its order. */
const char *ms_hf_hub_dir(char *out, size_t n) {
    const char *v;
    if ((v = getenv("HF_HUB_CACHE")) && *v) snprintf(out, n, "%s", v);
    else if ((v = getenv("HUGGINGFACE_HUB_CACHE")) && *v) snprintf(out, n, "%s", v);
    else if ((v = getenv("HF_HOME")) && *v) snprintf(out, n, "%s/hub", v);
    else if ((v = getenv("XDG_CACHE_HOME")) && *v) snprintf(out, n, "%s/huggingface/hub", v);
    else snprintf(out, n, "%s/.cache/huggingface/hub", (v = getenv("HOME")) && *v ? v : ".");
    return out;
}

/* One repo id part: [A-Za-z0-9._-]+, not starting with '.' or '-', no "..". */
static int repo_part_ok(const char *s, size_t len) {
    if (len == 0 || len > 96 || s[0] == '.' || s[0] == '-') return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!(isalnum(c) || c == '.' || c == '_' || c == '-')) return 0;
        if (c == '.' && i + 1 < len && s[i + 1] == '.') return 0;
    }
    return 1;
}

/* "org/name" as the Hub spells repo ids (the form ms_open tries in the cache). */
int ms_is_repo_id(const char *s) {
    const char *slash = s ? strchr(s, '/') : NULL;
    if (!slash || strchr(slash + 1, '/')) return 0;
    return repo_part_ok(s, (size_t)(slash - s)) && repo_part_ok(slash + 1, strlen(slash + 1));
}

static int is_commit_hash(const char *s) {
    size_t i = 0;
    for (; s[i]; i++)
        if (!isxdigit((unsigned char)s[i])) return 0;
    return i == 40;
}

/* Resolve a repo id to its snapshot folder in the local cache; see model_store.h. */
sd3_status ms_hf_resolve(const char *repo_id, const char *revision, char *out, size_t n, sd3_err *err) {
    if (!repo_id || !(ms_is_repo_id(repo_id) || (!strchr(repo_id, '/') && repo_part_ok(repo_id, strlen(repo_id)))))
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "Hugging Face cache: '%s' is not a repo id (org/name)",
                        repo_id ? repo_id : "(null)");
    const char *rev = revision && *revision ? revision : "main";
    if (!repo_part_ok(rev, strlen(rev)))
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "Hugging Face cache: %s: revision '%s' is not a plain name",
                        repo_id, rev);
    char hub[MS_PATH_MAX], folder[256], repo[MS_PATH_MAX + 256], p[MS_PATH_MAX + 512];
    ms_hf_hub_dir(hub, sizeof hub);
    /* models--org--name */
    size_t k = (size_t)snprintf(folder, sizeof folder, "models--");
    for (const char *c = repo_id; *c && k + 3 < sizeof folder; c++) {
        if (*c == '/') { folder[k++] = '-'; folder[k++] = '-'; }
        else folder[k++] = *c;
    }
    folder[k] = 0;
    snprintf(repo, sizeof repo, "%s/%s", hub, folder);
    if (!is_dir(repo))
        return sd3_errf(err, SD3_ERR_NOT_FOUND,
                        "Hugging Face cache: %s: not downloaded (looked for %s; the cache is $HF_HUB_CACHE, "
                        "$HF_HOME/hub or ~/.cache/huggingface/hub)",
                        repo_id, repo);
    char commit[256] = "";
    if (is_commit_hash(rev)) {
        snprintf(commit, sizeof commit, "%s", rev);
    } else {
        snprintf(p, sizeof p, "%s/refs/%s", repo, rev);
        if (is_file(p)) {
            FILE *f = fopen(p, "r");
            size_t got = f ? fread(commit, 1, sizeof commit - 1, f) : 0;
            if (f) fclose(f);
            commit[got] = 0;
            while (got && isspace((unsigned char)commit[got - 1])) commit[--got] = 0;
            if (!repo_part_ok(commit, strlen(commit)))
                return sd3_errf(err, SD3_ERR_FORMAT, "Hugging Face cache: %s: %s does not hold a commit hash", repo_id, p);
        } else if (revision && *revision && strcmp(revision, "main") != 0) {
            return sd3_errf(err, SD3_ERR_NOT_FOUND, "Hugging Face cache: %s: revision '%s' not found (no %s)", repo_id,
                            rev, p);
        } else {
            /* no refs/main: accept the one snapshot there is */
            snprintf(p, sizeof p, "%s/snapshots", repo);
            DIR *d = opendir(p);
            int count = 0;
            if (d) {
                struct dirent *de;
                while ((de = readdir(d))) {
                    if (de->d_name[0] == '.') continue;
                    char sp[MS_PATH_MAX + 768];
                    snprintf(sp, sizeof sp, "%s/%s", p, de->d_name);
                    if (!is_dir(sp)) continue;
                    if (++count == 1) snprintf(commit, sizeof commit, "%s", de->d_name);
                }
                closedir(d);
            }
            if (count == 0)
                return sd3_errf(err, SD3_ERR_NOT_FOUND, "Hugging Face cache: %s: no refs/main and no snapshot in %s",
                                repo_id, p);
            if (count > 1)
                return sd3_errf(err, SD3_ERR_NOT_FOUND,
                                "Hugging Face cache: %s: no refs/main and %d snapshots in %s; name a revision",
                                repo_id, count, p);
        }
    }
    snprintf(p, sizeof p, "%s/snapshots/%.128s", repo, commit);
    if (!is_dir(p))
        return sd3_errf(err, SD3_ERR_NOT_FOUND, "Hugging Face cache: %s: snapshot folder %s is missing (revision '%s')",
                        repo_id, p, rev);
    if (strlen(p) >= n) return sd3_errf(err, SD3_ERR_INVALID_ARG, "Hugging Face cache: %s: path too long", repo_id);
    snprintf(out, n, "%s", p);
    return SD3_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* Opening                                                                                         */
/* ---------------------------------------------------------------------------------------------- */

/* Read and validate model_index.json into ms (ms->path is the folder). */
static sd3_status parse_index(model_store *ms, sd3_err *err) {
    char p[MS_PATH_MAX];
    if (!fmt_path(p, sizeof p, "%s/%s", ms->path, "model_index.json"))
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: path too long", ms->path);
    if (!is_file(p)) {
        char cfg[MS_PATH_MAX];
        int component = fmt_path(cfg, sizeof cfg, "%s/%s", ms->path, "config.json") && is_file(cfg);
        return sd3_errf(err, SD3_ERR_NOT_FOUND, "%s: missing, so %s is not a diffusers pipeline folder%s", p, ms->path,
                        component ? " (it has a config.json: it looks like a single component folder; pass its parent)"
                                  : "");
    }
    cJSON *j = json_load_file(p, err);
    if (!j) return err ? err->status : SD3_ERR_FORMAT;
    sd3_status s = SD3_OK;
    if (!cJSON_IsObject(j)) { s = sd3_errf(err, SD3_ERR_FORMAT, "%s: not a JSON object", p); goto done; }
    const cJSON *cls = cJSON_GetObjectItemCaseSensitive(j, "_class_name");
    if (!cJSON_IsString(cls)) { s = sd3_errf(err, SD3_ERR_FORMAT, "%s: '_class_name' missing or not a string", p); goto done; }
    snprintf(ms->pipeline_class, sizeof ms->pipeline_class, "%s", cls->valuestring);
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(j, "_diffusers_version");
    if (cJSON_IsString(ver)) snprintf(ms->diffusers_version, sizeof ms->diffusers_version, "%s", ver->valuestring);

    for (const cJSON *it = j->child; it; it = it->next) {
        const char *name = it->string;
        if (!name || name[0] == '_' || !cJSON_IsArray(it)) continue; /* metadata or a pipeline option */
        if (!plain_name(name) || strlen(name) >= sizeof ms->comp[0].name) {
            s = sd3_errf(err, SD3_ERR_FORMAT, "%s: component name '%.80s' is not a plain folder name", p, name);
            goto done;
        }
        const cJSON *lib = cJSON_GetArrayItem(it, 0), *cl = cJSON_GetArrayItem(it, 1);
        int nulls = cJSON_GetArraySize(it) == 2 && cJSON_IsNull(lib) && cJSON_IsNull(cl);
        int strs = cJSON_GetArraySize(it) == 2 && cJSON_IsString(lib) && cJSON_IsString(cl);
        if (!nulls && !strs) {
            s = sd3_errf(err, SD3_ERR_FORMAT,
                         "%s: component '%s' must be [library, class] (two strings) or [null, null]", p, name);
            goto done;
        }
        if (strs && (strlen(lib->valuestring) >= sizeof ms->comp[0].library ||
                     strlen(cl->valuestring) >= sizeof ms->comp[0].class_name)) {
            s = sd3_errf(err, SD3_ERR_FORMAT, "%s: component '%s': library or class name too long", p, name);
            goto done;
        }
        for (int i = 0; i < ms->n_comp; i++)
            if (!strcmp(ms->comp[i].name, name)) {
                s = sd3_errf(err, SD3_ERR_FORMAT, "%s: component '%s' listed twice", p, name);
                goto done;
            }
        if (ms->n_comp == MS_MAX_COMPONENTS) {
            s = sd3_errf(err, SD3_ERR_FORMAT, "%s: more than %d components", p, MS_MAX_COMPONENTS);
            goto done;
        }
        ms_component *c = &ms->comp[ms->n_comp++];
        snprintf(c->name, sizeof c->name, "%s", name);
        c->present = strs;
        if (strs) {
            snprintf(c->library, sizeof c->library, "%s", lib->valuestring);
            snprintf(c->class_name, sizeof c->class_name, "%s", cl->valuestring);
        }
        c->role = role_of(c->name, c->class_name);
        if (!fmt_path(c->dir, sizeof c->dir, "%s/%s", ms->path, name)) {
            s = sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: component '%s': path too long", p, name);
            goto done;
        }
        c->dir_exists = is_dir(c->dir);
    }
    if (ms->n_comp == 0) s = sd3_errf(err, SD3_ERR_FORMAT, "%s: lists no components", p);
done:
    cJSON_Delete(j);
    return s;
}

/* Classify a single-file checkpoint by the key prefixes of its tensors (the header only is read). */
static sd3_status classify_single(model_store *ms, sd3_err *err) {
    st_file *f;
    sd3_status s = st_open(&f, ms->path, err);
    if (s != SD3_OK) return s;
    static const struct { const char *prefix; unsigned part; } P[] = {
        {"model.diffusion_model.", MS_PART_MMDIT}, {"first_stage_model.", MS_PART_VAE},
        {"text_encoders.clip_l.", MS_PART_CLIP_L}, {"text_encoders.clip_g.", MS_PART_CLIP_G},
        {"text_encoders.t5xxl.", MS_PART_T5},
    };
    for (int i = 0; i < f->n; i++)
        for (size_t k = 0; k < sizeof P / sizeof P[0]; k++)
            if (strncmp(f->entries[i].name, P[k].prefix, strlen(P[k].prefix)) == 0) ms->single_parts |= P[k].part;
    ms->single_n_tensors = f->n;
    st_close(f);
    if (!ms->single_parts)
        return sd3_errf(err, SD3_ERR_FORMAT,
                        "%s: a safetensors file with none of the single-file checkpoint prefixes "
                        "(model.diffusion_model., first_stage_model., text_encoders.*): not an SD3 checkpoint",
                        ms->path);
    return SD3_OK;
}

/* Open a folder, a single file, or a cached Hub repo; see model_store.h. */
sd3_status ms_open(model_store **out, const char *path, sd3_err *err) {
    SD3_ASSERT(out != NULL);
    *out = NULL;
    if (!path || !*path) return sd3_errf(err, SD3_ERR_INVALID_ARG, "model path is empty");
    model_store *ms = calloc(1, sizeof *ms);
    if (!ms) return sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", path);
    sd3_status s = SD3_OK;
    struct stat sb;
    if (stat(path, &sb) != 0) {
        if (ms_is_repo_id(path)) {
            sd3_err e2 = {0};
            if ((s = ms_hf_resolve(path, NULL, ms->path, sizeof ms->path, &e2)) != SD3_OK) {
                sd3_errf(err, s, "%s: no such file or folder, and %s", path, e2.msg);
                goto fail;
            }
            snprintf(ms->hf_repo, sizeof ms->hf_repo, "%s", path);
            if (stat(ms->path, &sb) != 0) { s = sd3_errf(err, SD3_ERR_IO, "%s: cannot stat", ms->path); goto fail; }
        } else {
            int e = errno;
            s = sd3_errf(err, e == ENOENT ? SD3_ERR_NOT_FOUND : SD3_ERR_IO, "%s: %s", path, strerror(e));
            goto fail;
        }
    } else {
        if (strlen(path) >= sizeof ms->path) { s = sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: path too long", path); goto fail; }
        snprintf(ms->path, sizeof ms->path, "%s", path);
        /* "folder/" and "folder" are the same folder; keep component paths tidy */
        size_t l = strlen(ms->path);
        while (l > 1 && ms->path[l - 1] == '/') ms->path[--l] = 0;
    }
    if (S_ISDIR(sb.st_mode)) {
        ms->kind = MS_PIPELINE_DIR;
        s = parse_index(ms, err);
    } else if (S_ISREG(sb.st_mode)) {
        ms->kind = MS_SINGLE_FILE;
        if (!ends_with(ms->path, ".safetensors")) {
            s = sd3_errf(err, SD3_ERR_UNSUPPORTED,
                         "%s: not a .safetensors file (a model is a diffusers folder or a single .safetensors "
                         "checkpoint; .ckpt/.pt pickles are not read)",
                         ms->path);
        } else {
            s = classify_single(ms, err);
        }
    } else {
        s = sd3_errf(err, SD3_ERR_IO, "%s: neither a folder nor a regular file", ms->path);
    }
    if (s != SD3_OK) goto fail;
    *out = ms;
    return SD3_OK;
fail:
    free(ms);
    return s;
}

void ms_close(model_store *ms) { free(ms); }

/* ---------------------------------------------------------------------------------------------- */
/* Components                                                                                      */
/* ---------------------------------------------------------------------------------------------- */

const ms_component *ms_find(const model_store *ms, const char *name) {
    if (!ms || !name) return NULL;
    for (int i = 0; i < ms->n_comp; i++)
        if (!strcmp(ms->comp[i].name, name)) return &ms->comp[i];
    return NULL;
}

int ms_has(const model_store *ms, const char *name) {
    const ms_component *c = ms_find(ms, name);
    return c && c->present;
}

const char *ms_component_dir(const model_store *ms, const char *name) {
    const ms_component *c = ms_find(ms, name);
    return c && c->present ? c->dir : NULL;
}

/* Listed, not null, folder present: the precondition of everything that reads a component. */
sd3_status ms_require(const model_store *ms, const char *name, sd3_err *err) {
    if (ms->kind != MS_PIPELINE_DIR)
        return sd3_errf(err, SD3_ERR_UNSUPPORTED, "%s: a single-file checkpoint has no component folders ('%s')",
                        ms->path, name);
    const ms_component *c = ms_find(ms, name);
    if (!c)
        return sd3_errf(err, SD3_ERR_NOT_FOUND, "%s/model_index.json: does not list component '%s'", ms->path, name);
    if (!c->present)
        return sd3_errf(err, SD3_ERR_NOT_FOUND, "%s/model_index.json: component '%s' is [null, null] (absent)",
                        ms->path, name);
    if (!is_dir(c->dir))
        return sd3_errf(err, SD3_ERR_NOT_FOUND, "%s: folder of component '%s' (%s %s) is missing", c->dir, name,
                        c->library, c->class_name);
    return SD3_OK;
}

sd3_status ms_config_path(const model_store *ms, const char *name, char *out, size_t n, sd3_err *err) {
    sd3_status s = ms_require(ms, name, err);
    if (s != SD3_OK) return s;
    const ms_component *c = ms_find(ms, name);
    const char *file = role_config_name(c->role);
    if (!fmt_path(out, n, "%s/%s", c->dir, file)) return sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: path too long", c->dir);
    if (!is_file(out))
        return sd3_errf(err, SD3_ERR_NOT_FOUND, "%s: missing (the %s of component '%s')", out, file, name);
    return SD3_OK;
}

cJSON *ms_load_config(const model_store *ms, const char *name, sd3_err *err) {
    char p[MS_PATH_MAX + 64];
    if (ms_config_path(ms, name, p, sizeof p, err) != SD3_OK) return NULL;
    cJSON *j = json_load_file(p, err);
    if (j && !cJSON_IsObject(j)) {
        cJSON_Delete(j);
        sd3_errf(err, SD3_ERR_FORMAT, "%s: not a JSON object (config of component '%s')", p, name);
        return NULL;
    }
    return j;
}

sd3_status ms_file_path(const model_store *ms, const char *name, const char *file, char *out, size_t n, sd3_err *err) {
    sd3_status s = ms_require(ms, name, err);
    if (s != SD3_OK) return s;
    const ms_component *c = ms_find(ms, name);
    if (!file || !plain_name(file))
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: '%s' is not a plain file name", c->dir, file ? file : "(null)");
    if (!fmt_path(out, n, "%s/%s", c->dir, file)) return sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: path too long", c->dir);
    if (!is_file(out)) return sd3_errf(err, SD3_ERR_NOT_FOUND, "%s: missing (component '%s')", out, name);
    return SD3_OK;
}

const char *ms_weights_stem(const ms_component *c) {
    return strcmp(c->library, "transformers") == 0 ? "model" : "diffusion_pytorch_model";
}

sd3_status ms_open_weights(const model_store *ms, const char *name, weights *w, sd3_err *err) {
    memset(w, 0, sizeof *w);
    sd3_status s = ms_require(ms, name, err);
    if (s != SD3_OK) return s;
    const ms_component *c = ms_find(ms, name);
    if (c->role != MS_ROLE_MODEL)
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: component '%s' (%s) has no weights", c->dir, name, c->class_name);
    return weights_open_dir(w, c->dir, ms_weights_stem(c), err);
}

/* Everything a full load needs, checked without reading any weights. */
sd3_status ms_check(const model_store *ms, sd3_err *err) {
    if (ms->kind != MS_PIPELINE_DIR) return SD3_OK;
    for (int i = 0; i < ms->n_comp; i++) {
        const ms_component *c = &ms->comp[i];
        if (!c->present) continue;
        char p[MS_PATH_MAX + 64];
        sd3_status s = ms_config_path(ms, c->name, p, sizeof p, err);
        if (s != SD3_OK) return s;
        if (c->role == MS_ROLE_MODEL) {
            int sharded;
            s = weights_locate(c->dir, ms_weights_stem(c), p, sizeof p, &sharded, err);
            if (s != SD3_OK) {
                sd3_err_prefix(err, "component '%s'", c->name);
                return s;
            }
        }
    }
    return SD3_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* Description                                                                                     */
/* ---------------------------------------------------------------------------------------------- */

/* Append printf output to buf at *o without overflowing (output is cut at n - 1). */
static void cat(char *buf, size_t n, size_t *o, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void cat(char *buf, size_t n, size_t *o, const char *fmt, ...) {
    if (*o >= n) return;
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(buf + *o, n - *o, fmt, ap);
    va_end(ap);
    if (k > 0) *o = (*o + (size_t)k < n) ? *o + (size_t)k : n - 1;
}

/* Base name of a path (for short listings). */
static const char *base_name(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

const char *ms_describe(const model_store *ms, char *buf, size_t n) {
    if (!buf || !n) return buf;
    buf[0] = 0;
    size_t o = 0;
    if (ms->kind == MS_SINGLE_FILE) {
        cat(buf, n, &o, "single-file checkpoint %s: %d tensors;", ms->path, ms->single_n_tensors);
        static const char *parts[] = {"mmdit", "vae", "clip_l", "clip_g", "t5xxl"};
        for (int i = 0; i < 5; i++)
            if (ms->single_parts & (1u << i)) cat(buf, n, &o, " %s", parts[i]);
        cat(buf, n, &o, "\n");
        return buf;
    }
    cat(buf, n, &o, "%s: %s (diffusers %s)%s%s\n", ms->path, ms->pipeline_class,
        ms->diffusers_version[0] ? ms->diffusers_version : "?", ms->hf_repo[0] ? ", from the HF cache: " : "",
        ms->hf_repo);
    for (int i = 0; i < ms->n_comp; i++) {
        const ms_component *c = &ms->comp[i];
        cat(buf, n, &o, "  %-16s ", c->name);
        if (!c->present) { cat(buf, n, &o, "absent ([null, null])\n"); continue; }
        cat(buf, n, &o, "%s %s: ", c->library, c->class_name);
        if (!is_dir(c->dir)) { cat(buf, n, &o, "MISSING folder %s\n", c->dir); continue; }
        char p[MS_PATH_MAX + 64];
        const char *cfg = role_config_name(c->role);
        fmt_path(p, sizeof p, "%s/%s", c->dir, cfg);
        cat(buf, n, &o, "%s%s", is_file(p) ? cfg : "MISSING ", is_file(p) ? "" : cfg);
        if (c->role == MS_ROLE_MODEL) {
            int sharded = 0;
            if (weights_locate(c->dir, ms_weights_stem(c), p, sizeof p, &sharded, NULL) == SD3_OK)
                cat(buf, n, &o, ", %s%s", base_name(p), sharded ? " (sharded)" : "");
            else
                cat(buf, n, &o, ", MISSING weights (%s*.safetensors)", ms_weights_stem(c));
        } else if (c->role == MS_ROLE_TOKENIZER) {
            static const char *tok[] = {"vocab.json", "merges.txt", "spiece.model", "tokenizer.json"};
            for (int k = 0; k < 4; k++) {
                fmt_path(p, sizeof p, "%s/%s", c->dir, tok[k]);
                if (is_file(p)) cat(buf, n, &o, ", %s", tok[k]);
            }
        }
        cat(buf, n, &o, "\n");
    }
    return buf;
}

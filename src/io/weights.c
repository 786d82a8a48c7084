/* weights.c — weight sets over one or several safetensors files (see weights.h). */
#include <string.h>
#include <sys/stat.h>
#include "io/json_util.h"
#include "io/weights.h"
#include "quant/quant.h"

/* A regular file (following symlinks, as the Hugging Face cache's snapshot entries are). */
static int file_exists(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* Open one .safetensors file as a set of one. */
sd3_status weights_open_file(weights *w, const char *path, sd3_err *err) {
    memset(w, 0, sizeof *w);
    snprintf(w->label, sizeof w->label, "%s", path);
    w->owns_files = 1;
    sd3_status s = st_open(&w->files[0], path, err);
    if (s != SD3_OK) return s;
    w->n_files = 1;
    return SD3_OK;
}

/* A shard name from an index must be a plain file name inside the folder: no separators, not "", "."
 * or "..", so an index can never reach outside its folder. */
static int plain_file_name(const char *s) {
    return *s && strcmp(s, ".") && strcmp(s, "..") && !strchr(s, '/') && !strchr(s, '\\');
}

/* Open the shards named in an index.json's weight_map (each file once), then check that every key the
 * map lists is really in the shard it names (a stale index would otherwise surface as a missing tensor
 * much later). */
static sd3_status open_index(weights *w, const char *dir, const char *index_path, sd3_err *err) {
    cJSON *j = json_load_file(index_path, err);
    if (!j) return err ? err->status : SD3_ERR_FORMAT;
    sd3_status s = SD3_OK;
    const cJSON *map = cJSON_IsObject(j) ? cJSON_GetObjectItemCaseSensitive(j, "weight_map") : NULL;
    if (!cJSON_IsObject(map)) { s = sd3_errf(err, SD3_ERR_FORMAT, "%s: no 'weight_map' object", index_path); goto done; }
    for (const cJSON *it = map->child; it; it = it->next) {
        if (!cJSON_IsString(it) || !plain_file_name(it->valuestring)) {
            s = sd3_errf(err, SD3_ERR_FORMAT, "%s: weight_map entry '%s' does not name a plain file in the folder (%s%.64s%s)",
                         index_path, it->string ? it->string : "?", cJSON_IsString(it) ? "'" : "",
                         cJSON_IsString(it) ? it->valuestring : "not a string", cJSON_IsString(it) ? "'" : "");
            goto done;
        }
        char path[4096];
        int pl = snprintf(path, sizeof path, "%s/%s", dir, it->valuestring);
        if (pl < 0 || (size_t)pl >= sizeof path) {
            s = sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: shard path too long", index_path);
            goto done;
        }
        int seen = 0;
        for (int i = 0; i < w->n_files; i++) seen |= !strcmp(w->files[i]->path, path);
        if (seen) continue;
        if (w->n_files == WEIGHTS_MAX_FILES) {
            s = sd3_errf(err, SD3_ERR_FORMAT, "%s: more than %d shards", index_path, WEIGHTS_MAX_FILES);
            goto done;
        }
        if ((s = st_open(&w->files[w->n_files], path, err)) != SD3_OK) {
            sd3_err_prefix(err, "%s: shard '%s' (listed for tensor '%s')", index_path, it->valuestring, it->string);
            goto done;
        }
        w->n_files++;
    }
    if (w->n_files == 0) { s = sd3_errf(err, SD3_ERR_FORMAT, "%s: weight_map lists no files", index_path); goto done; }
    for (const cJSON *it = map->child; it; it = it->next) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, it->valuestring);
        for (int i = 0; i < w->n_files; i++)
            if (!strcmp(w->files[i]->path, path) && !st_find(w->files[i], it->string)) {
                s = sd3_errf(err, SD3_ERR_FORMAT, "%s: weight_map puts tensor '%s' in '%s', which does not contain it",
                             index_path, it->string, it->valuestring);
                goto done;
            }
    }
done:
    cJSON_Delete(j);
    return s;
}

/* Find a component folder's weights without opening them: the candidate names in order of preference
 * (diffusers' naming: a variant goes before the last dot, "model.fp16.safetensors",
 * "model.safetensors.index.fp16.json"; the older "model.fp16.safetensors.index.json" is accepted too). */
sd3_status weights_locate(const char *dir, const char *stem, char *path, size_t n, int *sharded, sd3_err *err) {
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return sd3_errf(err, SD3_ERR_NOT_FOUND, "%s: weights folder does not exist or is not a folder", dir);
    static const char *single[] = {"%s/%s.safetensors", "%s/%s.fp16.safetensors"};
    static const char *index[] = {"%s/%s.safetensors.index.json", "%s/%s.safetensors.index.fp16.json",
                                  "%s/%s.fp16.safetensors.index.json"};
    for (int v = 0; v < 2; v++) {
        snprintf(path, n, single[v], dir, stem);
        if (file_exists(path)) { if (sharded) *sharded = 0; return SD3_OK; }
    }
    for (int v = 0; v < 3; v++) {
        snprintf(path, n, index[v], dir, stem);
        if (file_exists(path)) { if (sharded) *sharded = 1; return SD3_OK; }
    }
    char bin[4096];
    snprintf(bin, sizeof bin, "%s/%s.bin", dir, stem);
    if (!file_exists(bin)) snprintf(bin, sizeof bin, "%s/pytorch_model.bin", dir);
    if (file_exists(bin))
        return sd3_errf(err, SD3_ERR_UNSUPPORTED,
                        "%s: only a PyTorch pickle checkpoint (%s) is here; sd3c reads .safetensors only (convert it, "
                        "or download the safetensors files)",
                        dir, bin);
    return sd3_errf(err, SD3_ERR_NOT_FOUND,
                    "%s: no weights: looked for %s.safetensors, %s.fp16.safetensors, %s.safetensors.index.json and "
                    "%s.safetensors.index.fp16.json",
                    dir, stem, stem, stem, stem);
}

/* Open a component folder's weights, single file or sharded; see weights.h. */
sd3_status weights_open_dir(weights *w, const char *dir, const char *stem, sd3_err *err) {
    memset(w, 0, sizeof *w);
    snprintf(w->label, sizeof w->label, "%s", dir);
    w->owns_files = 1;
    char p[4096];
    int sharded = 0;
    sd3_status s = weights_locate(dir, stem, p, sizeof p, &sharded, err);
    if (s != SD3_OK) return s;
    snprintf(w->label, sizeof w->label, "%.*s", (int)sizeof w->label - 1, p);
    if (!sharded) {
        s = st_open(&w->files[0], p, err);
        if (s == SD3_OK) w->n_files = 1;
        return s;
    }
    s = open_index(w, dir, p, err);
    if (s != SD3_OK) {
        weights_close(w);
        return s;
    }
    return SD3_OK;
}

/* A view of base whose look-ups prepend prefix (for single-file checkpoints); shares base's files. */
void weights_view(weights *w, const weights *base, const char *prefix) {
    memcpy(w, base, sizeof *w);
    w->owns_files = 0;
    snprintf(w->prefix, sizeof w->prefix, "%s%s", base->prefix, prefix);
}

/* Close the files if this set owns them and zero the struct (safe to call twice). */
void weights_close(weights *w) {
    if (w->owns_files)
        for (int i = 0; i < w->n_files; i++) st_close(w->files[i]);
    memset(w, 0, sizeof *w);
}

/* Find prefix+key in the first file that has it. */
const st_entry *weights_find(const weights *w, const char *key, const st_file **file) {
    char full[1024];
    int fl = snprintf(full, sizeof full, "%s%s", w->prefix, key);
    if (fl < 0 || (size_t)fl >= sizeof full) return NULL; /* no checkpoint key is this long */
    for (int i = 0; i < w->n_files; i++) {
        const st_entry *e = st_find(w->files[i], full);
        if (e) {
            if (file) *file = w->files[i];
            return e;
        }
    }
    return NULL;
}

int weights_has(const weights *w, const char *key) { return weights_find(w, key, NULL) != NULL; }

/* View prefix+key as a tensor; a missing key is an error naming the set and the key. */
sd3_status weights_get(const weights *w, const char *key, tensor *out, sd3_err *err) {
    const st_file *f;
    const st_entry *e = weights_find(w, key, &f);
    if (!e) return sd3_errf(err, SD3_ERR_NOT_FOUND, "%s: tensor '%s%s' is missing", w->label, w->prefix, key);
    int is_quant = 0;   /* a stored quantised pair <key> + <key>.qscale is one DT_Q8/DT_Q4 tensor (quant.h) */
    sd3_status s = quant_bind(f, e, out, &is_quant, err);
    if (s != SD3_OK || is_quant) return s;
    return st_entry_tensor(f, e, out, err);
}

/* Compare a tensor's rank and dims with what the model expects (-1 = any dim). */
sd3_status tensor_expect(const tensor *t, const char *name, sd3_err *err, int ndim, int64_t d0, int64_t d1,
                         int64_t d2, int64_t d3) {
    int64_t want[4] = {d0, d1, d2, d3};
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = want[i] < 0 || t->shape[i] == want[i];
    if (ok) return SD3_OK;
    char have[96], exp[96] = "[";
    tensor_shape_str(t, have, sizeof have);
    for (int i = 0; i < ndim; i++) {
        char d[24];
        if (want[i] < 0) snprintf(d, sizeof d, i ? ", *" : "*");
        else snprintf(d, sizeof d, i ? ", %lld" : "%lld", (long long)want[i]);
        strncat(exp, d, sizeof exp - strlen(exp) - 1);
    }
    strncat(exp, "]", sizeof exp - strlen(exp) - 1);
    return sd3_errf(err, SD3_ERR_SHAPE, "tensor '%s' has shape %s, expected %s", name, have, exp);
}

/* weights_get + tensor_expect, with the set's label on a shape error. */
sd3_status weights_get_shape(const weights *w, const char *key, tensor *out, sd3_err *err, int ndim, int64_t d0,
                             int64_t d1, int64_t d2, int64_t d3) {
    sd3_status s = weights_get(w, key, out, err);
    if (s != SD3_OK) return s;
    s = tensor_expect(out, key, err, ndim, d0, d1, d2, d3);
    if (s != SD3_OK) sd3_err_prefix(err, "%s", w->label);
    return s;
}

/* Let the kernel drop the resident pages of every file of the set. */
void weights_release_pages(weights *w) {
    for (int i = 0; i < w->n_files; i++) st_release_pages(w->files[i]);
}

int dtype_is_weight(dtype dt) {
    return dt == DT_F32 || dt == DT_F16 || dt == DT_BF16 || dt == DT_F8_E4M3 || dt == DT_F8_E5M2 || dt == DT_Q8 ||
           dt == DT_Q4;  /* quantised (src/quant/quant.h): k_linear and tensor_to_f32 take them */
}

sd3_status weights_get_weight(const weights *w, const char *key, tensor *out, sd3_err *err, int ndim, int64_t d0,
                              int64_t d1, int64_t d2, int64_t d3) {
    sd3_status s = weights_get_shape(w, key, out, err, ndim, d0, d1, d2, d3);
    if (s == SD3_OK && !dtype_is_weight(out->dt))
        s = sd3_errf(err, SD3_ERR_SHAPE, "%s: tensor '%s' has dtype %s, expected a float type (F32/F16/BF16/F8) or a quantised one",
                     w->label, key, dtype_name(out->dt));
    return s;
}

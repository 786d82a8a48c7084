/* weights.c — weight sets over one or several safetensors files (see weights.h). */
#include <string.h>
#include <sys/stat.h>
#include "io/json_util.h"
#include "io/weights.h"

static int file_exists(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

sd3_status weights_open_file(weights *w, const char *path, sd3_err *err) {
    memset(w, 0, sizeof *w);
    snprintf(w->label, sizeof w->label, "%s", path);
    w->owns_files = 1;
    sd3_status s = st_open(&w->files[0], path, err);
    if (s != SD3_OK) return s;
    w->n_files = 1;
    return SD3_OK;
}

/* Open the shards named in an index.json's weight_map (each file once). */
static sd3_status open_index(weights *w, const char *dir, const char *index_path, sd3_err *err) {
    cJSON *j = json_load_file(index_path, err);
    if (!j) return err ? err->status : SD3_ERR_FORMAT;
    sd3_status s = SD3_OK;
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(j, "weight_map");
    if (!cJSON_IsObject(map)) { s = sd3_errf(err, SD3_ERR_FORMAT, "%s: no 'weight_map' object", index_path); goto done; }
    for (const cJSON *it = map->child; it; it = it->next) {
        if (!cJSON_IsString(it) || strchr(it->valuestring, '/') || !strcmp(it->valuestring, "..")) {
            s = sd3_errf(err, SD3_ERR_FORMAT, "%s: weight_map entry '%s' is not a plain file name", index_path, it->string);
            goto done;
        }
        int seen = 0;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, it->valuestring);
        for (int i = 0; i < w->n_files; i++) seen |= !strcmp(w->files[i]->path, path);
        if (seen) continue;
        if (w->n_files == WEIGHTS_MAX_FILES) {
            s = sd3_errf(err, SD3_ERR_FORMAT, "%s: more than %d shards", index_path, WEIGHTS_MAX_FILES);
            goto done;
        }
        if ((s = st_open(&w->files[w->n_files], path, err)) != SD3_OK) goto done;
        w->n_files++;
    }
    if (w->n_files == 0) s = sd3_errf(err, SD3_ERR_FORMAT, "%s: weight_map lists no files", index_path);
done:
    cJSON_Delete(j);
    return s;
}

sd3_status weights_open_dir(weights *w, const char *dir, const char *stem, sd3_err *err) {
    memset(w, 0, sizeof *w);
    snprintf(w->label, sizeof w->label, "%s", dir);
    w->owns_files = 1;
    char p[4096];
    const char *variants[] = {"", ".fp16"};
    for (int v = 0; v < 2; v++) {
        snprintf(p, sizeof p, "%s/%s%s.safetensors", dir, stem, variants[v]);
        if (file_exists(p)) {
            sd3_status s = st_open(&w->files[0], p, err);
            if (s == SD3_OK) w->n_files = 1;
            return s;
        }
    }
    for (int v = 0; v < 2; v++) {
        snprintf(p, sizeof p, "%s/%s%s.safetensors.index.json", dir, stem, variants[v]);
        if (file_exists(p)) {
            sd3_status s = open_index(w, dir, p, err);
            if (s != SD3_OK) weights_close(w);
            return s;
        }
    }
    return sd3_errf(err, SD3_ERR_NOT_FOUND, "%s: no weights (%s.safetensors, %s.fp16.safetensors or a sharded index)",
                    dir, stem, stem);
}

void weights_view(weights *w, const weights *base, const char *prefix) {
    memcpy(w, base, sizeof *w);
    w->owns_files = 0;
    snprintf(w->prefix, sizeof w->prefix, "%s%s", base->prefix, prefix);
}

void weights_close(weights *w) {
    if (w->owns_files)
        for (int i = 0; i < w->n_files; i++) st_close(w->files[i]);
    memset(w, 0, sizeof *w);
}

const st_entry *weights_find(const weights *w, const char *key, const st_file **file) {
    char full[1024];
    snprintf(full, sizeof full, "%s%s", w->prefix, key);
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

sd3_status weights_get(const weights *w, const char *key, tensor *out, sd3_err *err) {
    const st_file *f;
    const st_entry *e = weights_find(w, key, &f);
    if (!e) return sd3_errf(err, SD3_ERR_NOT_FOUND, "%s: tensor '%s%s' is missing", w->label, w->prefix, key);
    return st_entry_tensor(f, e, out, err);
}

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

sd3_status weights_get_shape(const weights *w, const char *key, tensor *out, sd3_err *err, int ndim, int64_t d0,
                             int64_t d1, int64_t d2, int64_t d3) {
    sd3_status s = weights_get(w, key, out, err);
    if (s != SD3_OK) return s;
    s = tensor_expect(out, key, err, ndim, d0, d1, d2, d3);
    if (s != SD3_OK) sd3_err_prefix(err, "%s", w->label);
    return s;
}

void weights_release_pages(weights *w) {
    for (int i = 0; i < w->n_files; i++) st_release_pages(w->files[i]);
}

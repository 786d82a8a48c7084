/* safetensors.c — strict mmap reader and atomic writer for .safetensors files (see safetensors.h). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "io/safetensors.h"

/* ---------------------------------------------------------------------------------------------- */
/* Reading                                                                                         */
/* ---------------------------------------------------------------------------------------------- */

static uint64_t name_hash(const char *s) {
    uint64_t h = 1469598103934665603ull;
    while (*s) h = (h ^ (unsigned char)*s++) * 1099511628211ull;
    return h;
}

/* Insert entry i into the name index; returns -1 if the name is already there. */
static int hash_insert(st_file *f, int i) {
    uint64_t h = name_hash(f->entries[i].name);
    for (int k = 0; k < f->hash_cap; k++) {
        int slot = (int)((h + (uint64_t)k) % (uint64_t)f->hash_cap);
        if (f->hash[slot] < 0) { f->hash[slot] = i; return 0; }
        if (strcmp(f->entries[f->hash[slot]].name, f->entries[i].name) == 0) return -1;
    }
    return -1;
}

const st_entry *st_find(const st_file *f, const char *name) {
    if (!f || !f->hash_cap) return NULL;
    uint64_t h = name_hash(name);
    for (int k = 0; k < f->hash_cap; k++) {
        int slot = (int)((h + (uint64_t)k) % (uint64_t)f->hash_cap);
        int i = f->hash[slot];
        if (i < 0) return NULL;
        if (strcmp(f->entries[i].name, name) == 0) return &f->entries[i];
    }
    return NULL;
}

const char *st_meta(const st_file *f, const char *key) {
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_vals[i];
    return NULL;
}

void st_close(st_file *f) {
    if (!f) return;
    for (int i = 0; i < f->n; i++) free(f->entries[i].name);
    free(f->entries);
    free(f->hash);
    for (int i = 0; i < f->n_meta; i++) { free(f->meta_keys[i]); free(f->meta_vals[i]); }
    free(f->meta_keys);
    free(f->meta_vals);
    if (f->fd >= 0) {
        if (f->map && f->map != MAP_FAILED) munmap(f->map, f->size);
        close(f->fd);
    }
    free(f->path);
    free(f);
}

/* A JSON number that is an exact non-negative integer below 2^53. */
static int json_uint(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return -1;
    double d = j->valuedouble;
    if (!(d >= 0) || d > 9007199254740992.0 || d != (double)(uint64_t)d) return -1;
    *out = (uint64_t)d;
    return 0;
}

typedef struct { uint64_t begin, end; int idx; } range;
static int range_cmp(const void *a, const void *b) {
    const range *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : (x->end < y->end ? -1 : x->end > y->end);
}

/* Parse one tensor's header object into e; returns 0 or sets err. */
static sd3_status parse_entry(const char *label, const cJSON *obj, st_entry *e, uint64_t data_size, sd3_err *err) {
    const char *name = obj->string;
    if (!cJSON_IsObject(obj))
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: tensor '%s': header entry is not an object", label, name);
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(obj, "dtype");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(obj, "shape");
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(obj, "data_offsets");
    if (!cJSON_IsString(jd) || !cJSON_IsArray(js) || !cJSON_IsArray(jo))
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: tensor '%s': needs string dtype, array shape and array data_offsets",
                        label, name);
    if (dtype_parse(jd->valuestring, &e->dt) != 0)
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: tensor '%s': unknown dtype '%.32s'", label, name, jd->valuestring);
    int nd = cJSON_GetArraySize(js);
    if (nd > ST_MAX_RANK)
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: tensor '%s': rank %d exceeds the limit %d", label, name, nd, ST_MAX_RANK);
    e->ndim = nd;
    /* numel x size must fit the data section; check for overflow on the way */
    uint64_t numel = 1;
    int overflow = 0;
    for (int i = 0; i < nd; i++) {
        uint64_t d;
        if (json_uint(cJSON_GetArrayItem(js, i), &d) != 0)
            return sd3_errf(err, SD3_ERR_FORMAT, "%s: tensor '%s': shape[%d] is not a non-negative integer", label, name, i);
        e->shape[i] = (int64_t)d;
        if (d && numel > UINT64_MAX / d) overflow = 1;
        else numel *= d;
    }
    if (cJSON_GetArraySize(jo) != 2 || json_uint(cJSON_GetArrayItem(jo, 0), &e->begin) != 0 ||
        json_uint(cJSON_GetArrayItem(jo, 1), &e->end) != 0)
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: tensor '%s': data_offsets must be two non-negative integers", label, name);
    if (e->end < e->begin)
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: tensor '%s': data_offsets end %llu < begin %llu", label, name,
                        (unsigned long long)e->end, (unsigned long long)e->begin);
    if (e->end > data_size)
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: tensor '%s': data_offsets [%llu, %llu] run past the end of the file (data section is %llu bytes)",
                        label, name, (unsigned long long)e->begin, (unsigned long long)e->end, (unsigned long long)data_size);
    uint64_t es = dtype_size(e->dt);
    if (overflow || numel > UINT64_MAX / es || numel * es != e->end - e->begin)
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: tensor '%s': shape x %s needs %s%llu bytes but data_offsets span %llu",
                        label, name, dtype_name(e->dt), overflow ? "more than " : "",
                        overflow ? (unsigned long long)UINT64_MAX : (unsigned long long)(numel * es),
                        (unsigned long long)(e->end - e->begin));
    return SD3_OK;
}

/* Validate the buffer [map, map+size) and fill f's entries and metadata. */
static sd3_status st_parse(st_file *f, const char *label, sd3_err *err) {
    const unsigned char *p = f->map;
    if (f->size < 8)
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: file is %zu bytes, too short for a safetensors header", label, f->size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | p[i];
    if (n > ST_MAX_HEADER)
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: header length %llu exceeds the limit of %u bytes", label,
                        (unsigned long long)n, ST_MAX_HEADER);
    if (n > f->size - 8)
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: header length %llu runs past the end of the file (%zu bytes)", label,
                        (unsigned long long)n, f->size);
    if (n < 2) return sd3_errf(err, SD3_ERR_FORMAT, "%s: header of %llu bytes is not a JSON object", label, (unsigned long long)n);
    f->header_len = n;
    uint64_t data_size = f->size - 8 - n;

    cJSON *root = cJSON_ParseWithLength((const char *)p + 8, (size_t)n);
    if (!root) return sd3_errf(err, SD3_ERR_FORMAT, "%s: header is not valid JSON", label);
    sd3_status st = SD3_OK;
    if (!cJSON_IsObject(root)) { st = sd3_errf(err, SD3_ERR_FORMAT, "%s: header is not a JSON object", label); goto done; }

    int count = 0;
    for (cJSON *it = root->child; it; it = it->next) {
        if (!it->string) { st = sd3_errf(err, SD3_ERR_FORMAT, "%s: header has an unnamed entry", label); goto done; }
        if (strcmp(it->string, "__metadata__") != 0) count++;
        if (count > ST_MAX_TENSORS) { st = sd3_errf(err, SD3_ERR_FORMAT, "%s: more than %d tensors", label, ST_MAX_TENSORS); goto done; }
    }
    f->entries = calloc(count ? (size_t)count : 1, sizeof *f->entries);
    f->hash_cap = 2 * count + 1;
    f->hash = malloc(sizeof(int) * (size_t)f->hash_cap);
    if (!f->entries || !f->hash) { st = sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory for %d tensor entries", label, count); goto done; }
    for (int i = 0; i < f->hash_cap; i++) f->hash[i] = -1;

    int seen_meta = 0;
    for (cJSON *it = root->child; it; it = it->next) {
        if (strcmp(it->string, "__metadata__") == 0) {
            if (seen_meta++) { st = sd3_errf(err, SD3_ERR_FORMAT, "%s: duplicate __metadata__", label); goto done; }
            if (!cJSON_IsObject(it)) { st = sd3_errf(err, SD3_ERR_FORMAT, "%s: __metadata__ is not an object", label); goto done; }
            int nm = cJSON_GetArraySize(it);
            f->meta_keys = calloc(nm ? (size_t)nm : 1, sizeof(char *));
            f->meta_vals = calloc(nm ? (size_t)nm : 1, sizeof(char *));
            if (!f->meta_keys || !f->meta_vals) { st = sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", label); goto done; }
            for (cJSON *m = it->child; m; m = m->next) {
                if (!cJSON_IsString(m)) {
                    st = sd3_errf(err, SD3_ERR_FORMAT, "%s: __metadata__ value of '%.64s' is not a string", label, m->string);
                    goto done;
                }
                f->meta_keys[f->n_meta] = strdup(m->string);
                f->meta_vals[f->n_meta] = strdup(m->valuestring);
                f->n_meta++;
            }
            continue;
        }
        st_entry *e = &f->entries[f->n];
        e->name = strdup(it->string);
        if (!e->name) { st = sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", label); goto done; }
        f->n++;
        if ((st = parse_entry(label, it, e, data_size, err)) != SD3_OK) goto done;
        if (hash_insert(f, f->n - 1) != 0) { st = sd3_errf(err, SD3_ERR_FORMAT, "%s: duplicate tensor name '%s'", label, e->name); goto done; }
        e->data = (const unsigned char *)f->map + 8 + n + e->begin;
    }

    /* no two tensors may share bytes */
    if (f->n > 1) {
        range *r = malloc(sizeof(range) * (size_t)f->n);
        if (!r) { st = sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", label); goto done; }
        for (int i = 0; i < f->n; i++) r[i] = (range){f->entries[i].begin, f->entries[i].end, i};
        qsort(r, (size_t)f->n, sizeof *r, range_cmp);
        for (int i = 1; i < f->n; i++) {
            if (r[i].begin < r[i - 1].end && r[i].end > r[i].begin) {
                st = sd3_errf(err, SD3_ERR_FORMAT, "%s: tensors '%s' and '%s' overlap in the data section", label,
                              f->entries[r[i - 1].idx].name, f->entries[r[i].idx].name);
                break;
            }
        }
        free(r);
    }
done:
    cJSON_Delete(root);
    return st;
}

sd3_status st_open(st_file **out, const char *path, sd3_err *err) {
    *out = NULL;
    st_file *f = calloc(1, sizeof *f);
    if (!f) return sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", path);
    f->fd = -1;
    f->path = strdup(path);
    f->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (f->fd < 0) {
        sd3_status s = sd3_errf(err, errno == ENOENT ? SD3_ERR_NOT_FOUND : SD3_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        st_close(f);
        return s;
    }
    struct stat sb;
    if (fstat(f->fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        sd3_status s = sd3_errf(err, SD3_ERR_IO, "%s: not a regular file", path);
        st_close(f);
        return s;
    }
    f->size = (size_t)sb.st_size;
    if (f->size > 0) {
        f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, f->fd, 0);
        if (f->map == MAP_FAILED) {
            f->map = NULL;
            sd3_status s = sd3_errf(err, SD3_ERR_IO, "%s: cannot mmap: %s", path, strerror(errno));
            st_close(f);
            return s;
        }
    }
    sd3_status s = st_parse(f, path, err);
    if (s != SD3_OK) { st_close(f); return s; }
    *out = f;
    return SD3_OK;
}

sd3_status st_open_memory(st_file **out, const void *buf, size_t size, const char *label, sd3_err *err) {
    *out = NULL;
    st_file *f = calloc(1, sizeof *f);
    if (!f) return sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", label);
    f->fd = -1;
    f->path = strdup(label);
    f->map = (void *)buf;
    f->size = size;
    sd3_status s = st_parse(f, label, err);
    if (s != SD3_OK) { st_close(f); return s; }
    *out = f;
    return SD3_OK;
}

sd3_status st_entry_tensor(const st_file *f, const st_entry *e, tensor *out, sd3_err *err) {
    memset(out, 0, sizeof *out);
    if (e->ndim > TENSOR_MAX_DIMS)
        return sd3_errf(err, SD3_ERR_SHAPE, "%s: tensor '%s' has rank %d (at most %d supported)", f->path, e->name,
                        e->ndim, TENSOR_MAX_DIMS);
    out->dt = e->dt;
    out->ndim = e->ndim;
    for (int i = 0; i < e->ndim; i++) out->shape[i] = e->shape[i];
    out->data = (void *)e->data;
    out->owned = 0;
    return SD3_OK;
}

sd3_status st_get(const st_file *f, const char *name, tensor *out, sd3_err *err) {
    const st_entry *e = st_find(f, name);
    if (!e) return sd3_errf(err, SD3_ERR_NOT_FOUND, "%s: tensor '%s' is missing", f->path, name);
    return st_entry_tensor(f, e, out, err);
}

void st_release_pages(st_file *f) {
    if (f && f->fd >= 0 && f->map) madvise(f->map, f->size, MADV_DONTNEED);
}

/* ---------------------------------------------------------------------------------------------- */
/* Writing                                                                                         */
/* ---------------------------------------------------------------------------------------------- */

typedef struct { char *name; dtype dt; int ndim; int64_t shape[ST_MAX_RANK]; const void *data; uint64_t nbytes; } wt;

struct st_writer {
    wt *t;
    int n, cap;
    cJSON *meta;
};

st_writer *st_writer_new(void) {
    st_writer *w = calloc(1, sizeof *w);
    if (w) w->meta = cJSON_CreateObject();
    return w;
}

void st_writer_free(st_writer *w) {
    if (!w) return;
    for (int i = 0; i < w->n; i++) free(w->t[i].name);
    free(w->t);
    cJSON_Delete(w->meta);
    free(w);
}

sd3_status st_writer_add(st_writer *w, const char *name, dtype dt, int ndim, const int64_t *shape, const void *data,
                         sd3_err *err) {
    if (ndim < 0 || ndim > ST_MAX_RANK) return sd3_errf(err, SD3_ERR_INVALID_ARG, "tensor '%s': rank %d", name, ndim);
    if (!strcmp(name, "__metadata__")) return sd3_errf(err, SD3_ERR_INVALID_ARG, "tensor name '__metadata__' is reserved");
    for (int i = 0; i < w->n; i++)
        if (!strcmp(w->t[i].name, name)) return sd3_errf(err, SD3_ERR_INVALID_ARG, "duplicate tensor name '%s'", name);
    if (w->n == w->cap) {
        int cap = w->cap ? 2 * w->cap : 16;
        wt *nt = realloc(w->t, sizeof(wt) * (size_t)cap);
        if (!nt) return sd3_errf(err, SD3_ERR_NOMEM, "out of memory");
        w->t = nt;
        w->cap = cap;
    }
    wt *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    t->dt = dt;
    t->ndim = ndim;
    uint64_t numel = 1;
    for (int i = 0; i < ndim; i++) { t->shape[i] = shape[i]; numel *= (uint64_t)shape[i]; }
    t->nbytes = numel * dtype_size(dt);
    t->data = data;
    w->n++;
    return SD3_OK;
}

sd3_status st_writer_add_tensor(st_writer *w, const char *name, const tensor *t, sd3_err *err) {
    return st_writer_add(w, name, t->dt, t->ndim, t->shape, t->data, err);
}

sd3_status st_writer_meta(st_writer *w, const char *key, const char *value, sd3_err *err) {
    cJSON_DeleteItemFromObjectCaseSensitive(w->meta, key);
    if (!cJSON_AddStringToObject(w->meta, key, value)) return sd3_errf(err, SD3_ERR_NOMEM, "out of memory");
    return SD3_OK;
}

static int write_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n) {
        ssize_t k = write(fd, p, n > (1u << 30) ? (1u << 30) : n);
        if (k < 0) { if (errno == EINTR) continue; return -1; }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

sd3_status st_writer_write(st_writer *w, const char *path, sd3_err *err) {
    cJSON *root = cJSON_CreateObject();
    if (!root) return sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", path);
    if (cJSON_GetArraySize(w->meta) > 0) cJSON_AddItemToObject(root, "__metadata__", cJSON_Duplicate(w->meta, 1));
    uint64_t off = 0;
    for (int i = 0; i < w->n; i++) {
        wt *t = &w->t[i];
        cJSON *o = cJSON_AddObjectToObject(root, t->name);
        cJSON_AddStringToObject(o, "dtype", dtype_name(t->dt));
        cJSON *s = cJSON_AddArrayToObject(o, "shape");
        for (int d = 0; d < t->ndim; d++) cJSON_AddItemToArray(s, cJSON_CreateNumber((double)t->shape[d]));
        cJSON *r = cJSON_AddArrayToObject(o, "data_offsets");
        cJSON_AddItemToArray(r, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(r, cJSON_CreateNumber((double)(off + t->nbytes)));
        off += t->nbytes;
    }
    char *json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!json) return sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", path);
    size_t jl = strlen(json);
    size_t padded = (jl + 7) & ~(size_t)7;  /* pad with spaces so the data starts 8-aligned */

    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        free(json);
        return sd3_errf(err, SD3_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    int bad = write_all(fd, len8, 8) || write_all(fd, json, jl);
    for (size_t i = jl; i < padded && !bad; i++) bad = write_all(fd, " ", 1);
    free(json);
    for (int i = 0; i < w->n && !bad; i++)
        if (w->t[i].nbytes) bad = write_all(fd, w->t[i].data, (size_t)w->t[i].nbytes);
    int saved = errno;
    if (!bad && fsync(fd) != 0) { bad = 1; saved = errno; }
    if (close(fd) != 0 && !bad) { bad = 1; saved = errno; }
    if (bad) {
        unlink(tmp);
        return sd3_errf(err, SD3_ERR_IO, "%s: write failed: %s", path, strerror(saved));
    }
    if (rename(tmp, path) != 0) {
        saved = errno;
        unlink(tmp);
        return sd3_errf(err, SD3_ERR_IO, "%s: cannot rename into place: %s", path, strerror(saved));
    }
    return SD3_OK;
}

/* safetensors.c — strict mmap reader and atomic writer for .safetensors files (see safetensors.h).
 *
 * The reader treats every byte of the file as hostile: the header length, the JSON, every number in it
 * and every byte range are checked before anything is dereferenced, and every failure names the file
 * (and the tensor, where one is involved). Gaps between tensors in the data section are allowed, as in
 * the format description; overlapping ranges are not. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "io/safetensors.h"

/* ---------------------------------------------------------------------------------------------- */
/* Reading                                                                                         */
/* ---------------------------------------------------------------------------------------------- */

/* FNV-1a over a NUL-terminated name: the index is small and names are short. */
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

/* Look a tensor up by name through the open-addressing index (O(1) on average). */
const st_entry *st_find(const st_file *f, const char *name) {
    if (!f || !name || !f->hash_cap) return NULL;
    uint64_t h = name_hash(name);
    for (int k = 0; k < f->hash_cap; k++) {
        int slot = (int)((h + (uint64_t)k) % (uint64_t)f->hash_cap);
        int i = f->hash[slot];
        if (i < 0) return NULL;
        if (strcmp(f->entries[i].name, name) == 0) return &f->entries[i];
    }
    return NULL;
}

/* A value of the header's __metadata__ object, by key (linear: there are only a handful). */
const char *st_meta(const st_file *f, const char *key) {
    if (!f || !key) return NULL;
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_vals[i];
    return NULL;
}

/* Free everything st_open / st_open_memory built; safe on a half-built st_file. */
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

/* A JSON number that is an exact non-negative integer no larger than 2^53 (the largest range in which
 * every integer is a double): rejects strings, negatives, fractions, 1e300 and inf. */
static int json_uint(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return -1;
    double d = j->valuedouble;
    if (!(d >= 0) || d > 9007199254740992.0 || d != (double)(uint64_t)d) return -1;
    *out = (uint64_t)d;
    return 0;
}

typedef struct { uint64_t begin, end; int idx; } range;
/* Order ranges by begin, then end, for the overlap sweep. */
static int range_cmp(const void *a, const void *b) {
    const range *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : (x->end < y->end ? -1 : x->end > y->end);
}

/* Parse one tensor's header object into e (e->name already set); returns SD3_OK or sets err naming
 * the file and the tensor. data_size is the number of bytes after the header. */
static sd3_status parse_entry(const char *label, const cJSON *obj, st_entry *e, uint64_t data_size, sd3_err *err) {
    const char *name = e->name;
    if (!cJSON_IsObject(obj))
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: tensor '%s': header entry is not an object", label, name);
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(obj, "dtype");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(obj, "shape");
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(obj, "data_offsets");
    if (!cJSON_IsString(jd))
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: tensor '%s': 'dtype' is missing or not a string", label, name);
    if (!cJSON_IsArray(js))
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: tensor '%s': 'shape' is missing or not an array", label, name);
    if (!cJSON_IsArray(jo))
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: tensor '%s': 'data_offsets' is missing or not an array", label, name);
    if (dtype_parse(jd->valuestring, &e->dt) != 0)
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: tensor '%s': unknown dtype '%.32s'", label, name, jd->valuestring);
    int nd = cJSON_GetArraySize(js);
    if (nd > ST_MAX_RANK)
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: tensor '%s': rank %d exceeds the limit %d", label, name, nd,
                        ST_MAX_RANK);
    e->ndim = nd;
    /* numel = product of dims, exactly: a zero dim makes it 0 whatever the others; otherwise an
     * overflow of 64 bits means the tensor cannot possibly fit the file */
    uint64_t numel = 1;
    int overflow = 0, zero = 0, i = 0;
    for (const cJSON *d = js->child; d; d = d->next, i++) {
        uint64_t v;
        if (json_uint(d, &v) != 0) {
            char got[48] = "not a number";
            if (cJSON_IsNumber(d)) snprintf(got, sizeof got, "%.17g", d->valuedouble);
            return sd3_errf(err, SD3_ERR_FORMAT, "%s: tensor '%s': shape[%d] (%s) is not a non-negative integer",
                            label, name, i, got);
        }
        e->shape[i] = (int64_t)v;
        if (v == 0) zero = 1;
        else if (numel > UINT64_MAX / v) overflow = 1;
        else numel *= v;
    }
    if (zero) { numel = 0; overflow = 0; }
    if (cJSON_GetArraySize(jo) != 2 || json_uint(jo->child, &e->begin) != 0 ||
        json_uint(jo->child->next, &e->end) != 0)
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: tensor '%s': data_offsets must be two non-negative integers",
                        label, name);
    if (e->end < e->begin)
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: tensor '%s': data_offsets end %llu < begin %llu", label, name,
                        (unsigned long long)e->end, (unsigned long long)e->begin);
    if (e->end > data_size)
        return sd3_errf(err, SD3_ERR_FORMAT,
                        "%s: tensor '%s': data_offsets [%llu, %llu] run past the end of the file (data section is "
                        "%llu bytes)",
                        label, name, (unsigned long long)e->begin, (unsigned long long)e->end,
                        (unsigned long long)data_size);
    uint64_t es = dtype_size(e->dt);
    if (overflow || (es && numel > UINT64_MAX / es))
        return sd3_errf(err, SD3_ERR_FORMAT,
                        "%s: tensor '%s': shape x %s needs more than 2^64 bytes but data_offsets span %llu", label,
                        name, dtype_name(e->dt), (unsigned long long)(e->end - e->begin));
    if (numel * es != e->end - e->begin)
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: tensor '%s': shape x %s needs %llu bytes but data_offsets span %llu",
                        label, name, dtype_name(e->dt), (unsigned long long)(numel * es),
                        (unsigned long long)(e->end - e->begin));
    return SD3_OK;
}

/* Copy __metadata__ (an object of string values only) into f. */
static sd3_status parse_meta(st_file *f, const char *label, const cJSON *it, sd3_err *err) {
    if (!cJSON_IsObject(it)) return sd3_errf(err, SD3_ERR_FORMAT, "%s: __metadata__ is not an object", label);
    int nm = cJSON_GetArraySize(it);
    f->meta_keys = calloc(nm ? (size_t)nm : 1, sizeof(char *));
    f->meta_vals = calloc(nm ? (size_t)nm : 1, sizeof(char *));
    if (!f->meta_keys || !f->meta_vals) return sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", label);
    for (const cJSON *m = it->child; m && f->n_meta < nm; m = m->next) {
        if (!cJSON_IsString(m) || !m->string)
            return sd3_errf(err, SD3_ERR_FORMAT, "%s: __metadata__ value of '%.64s' is not a string", label,
                            m->string ? m->string : "?");
        for (int k = 0; k < f->n_meta; k++)
            if (strcmp(f->meta_keys[k], m->string) == 0)
                return sd3_errf(err, SD3_ERR_FORMAT, "%s: __metadata__ key '%.64s' appears twice", label, m->string);
        char *k = strdup(m->string), *v = strdup(m->valuestring);
        if (!k || !v) { free(k); free(v); return sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", label); }
        f->meta_keys[f->n_meta] = k;
        f->meta_vals[f->n_meta] = v;
        f->n_meta++;
    }
    return SD3_OK;
}

/* Validate the buffer [map, map+size) and fill f's entries and metadata. */
static sd3_status st_parse(st_file *f, const char *label, sd3_err *err) {
    const unsigned char *p = f->map;
    if (f->size < 8)
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: file is %zu bytes, too short for a safetensors header", label,
                        f->size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | p[i];
    if (n > ST_MAX_HEADER)
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: header length %llu exceeds the limit of %u bytes", label,
                        (unsigned long long)n, ST_MAX_HEADER);
    if (n > f->size - 8)
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: header length %llu runs past the end of the file (%zu bytes)",
                        label, (unsigned long long)n, f->size);
    if (n < 2)
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: header of %llu bytes is not a JSON object", label,
                        (unsigned long long)n);
    f->header_len = n;
    uint64_t data_size = f->size - 8 - n;

    /* the header is the JSON object followed only by padding spaces (no NUL terminator in the file) */
    const char *hdr = (const char *)p + 8, *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(hdr, (size_t)n, &end, 0);
    if (!root) {
        long at = (end && end >= hdr && end <= hdr + n) ? (long)(end - hdr) : -1;
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: header is not valid JSON (error near byte %ld of %llu)", label, at,
                        (unsigned long long)n);
    }
    sd3_status st = SD3_OK;
    if (!cJSON_IsObject(root)) { st = sd3_errf(err, SD3_ERR_FORMAT, "%s: header is not a JSON object", label); goto done; }
    if (end)
        for (const char *q = end; q < hdr + n; q++)
            if (*q != ' ' && *q != '\t' && *q != '\n' && *q != '\r') {
                st = sd3_errf(err, SD3_ERR_FORMAT, "%s: header has trailing bytes after the JSON object (at byte %ld)",
                              label, (long)(q - hdr));
                goto done;
            }

    int count = 0;
    for (cJSON *it = root->child; it; it = it->next) {
        if (!it->string) { st = sd3_errf(err, SD3_ERR_FORMAT, "%s: header has an unnamed entry", label); goto done; }
        if (strcmp(it->string, "__metadata__") != 0) count++;
        if (count > ST_MAX_TENSORS) {
            st = sd3_errf(err, SD3_ERR_FORMAT, "%s: more than %d tensors", label, ST_MAX_TENSORS);
            goto done;
        }
    }
    f->entries = calloc(count ? (size_t)count : 1, sizeof *f->entries);
    f->hash_cap = 2 * count + 1;
    f->hash = malloc(sizeof(int) * (size_t)f->hash_cap);
    if (!f->entries || !f->hash) {
        f->hash_cap = 0;
        st = sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory for %d tensor entries", label, count);
        goto done;
    }
    for (int i = 0; i < f->hash_cap; i++) f->hash[i] = -1;

    int seen_meta = 0;
    for (cJSON *it = root->child; it; it = it->next) {
        if (strcmp(it->string, "__metadata__") == 0) {
            if (seen_meta++) { st = sd3_errf(err, SD3_ERR_FORMAT, "%s: duplicate __metadata__", label); goto done; }
            if ((st = parse_meta(f, label, it, err)) != SD3_OK) goto done;
            continue;
        }
        st_entry *e = &f->entries[f->n];
        e->name = strdup(it->string);
        if (!e->name) { st = sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", label); goto done; }
        f->n++;
        if ((st = parse_entry(label, it, e, data_size, err)) != SD3_OK) goto done;
        if (hash_insert(f, f->n - 1) != 0) {
            st = sd3_errf(err, SD3_ERR_FORMAT, "%s: duplicate tensor name '%s'", label, e->name);
            goto done;
        }
        e->data = (const unsigned char *)f->map + 8 + n + e->begin;
    }

    /* no two tensors may share a byte: sweep the ranges in order of begin, keeping the one that reaches
     * furthest so far (empty tensors own no bytes and may sit anywhere) */
    if (f->n > 1) {
        range *r = malloc(sizeof(range) * (size_t)f->n);
        if (!r) { st = sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", label); goto done; }
        int m = 0;
        for (int i = 0; i < f->n; i++)
            if (f->entries[i].end > f->entries[i].begin) r[m++] = (range){f->entries[i].begin, f->entries[i].end, i};
        qsort(r, (size_t)m, sizeof *r, range_cmp);
        int far = 0;
        for (int i = 1; i < m; i++) {
            if (r[i].begin < r[far].end) {
                st = sd3_errf(err, SD3_ERR_FORMAT, "%s: tensors '%s' [%llu, %llu] and '%s' [%llu, %llu] overlap in the data section",
                              label, f->entries[r[far].idx].name, (unsigned long long)r[far].begin,
                              (unsigned long long)r[far].end, f->entries[r[i].idx].name,
                              (unsigned long long)r[i].begin, (unsigned long long)r[i].end);
                break;
            }
            if (r[i].end > r[far].end) far = i;
        }
        free(r);
    }
done:
    cJSON_Delete(root);
    return st;
}

/* Open, map and validate a file; see safetensors.h. */
sd3_status st_open(st_file **out, const char *path, sd3_err *err) {
    SD3_ASSERT(out != NULL);
    *out = NULL;
    if (!path || !*path) return sd3_errf(err, SD3_ERR_INVALID_ARG, "safetensors: empty path");
    st_file *f = calloc(1, sizeof *f);
    if (!f) return sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", path);
    f->fd = -1;
    f->path = strdup(path);
    if (!f->path) { st_close(f); return sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", path); }
    /* O_NONBLOCK: opening a FIFO by mistake must fail below, not wait for a writer (no effect on files) */
    f->fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (f->fd < 0) {
        int e = errno;
        st_close(f);
        return sd3_errf(err, e == ENOENT ? SD3_ERR_NOT_FOUND : SD3_ERR_IO, "%s: cannot open: %s", path, strerror(e));
    }
    struct stat sb;
    if (fstat(f->fd, &sb) != 0) {
        int e = errno;
        st_close(f);
        return sd3_errf(err, SD3_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        st_close(f);
        return sd3_errf(err, SD3_ERR_IO, "%s: not a regular file%s", path, S_ISDIR(sb.st_mode) ? " (a directory)" : "");
    }
    if (sb.st_size < 0 || (uint64_t)sb.st_size > (uint64_t)SIZE_MAX) {
        st_close(f);
        return sd3_errf(err, SD3_ERR_IO, "%s: file size %lld cannot be mapped", path, (long long)sb.st_size);
    }
    f->size = (size_t)sb.st_size;
    if (f->size > 0) {
        f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, f->fd, 0);
        if (f->map == MAP_FAILED) {
            int e = errno;
            f->map = NULL;
            st_close(f);
            return sd3_errf(err, SD3_ERR_IO, "%s: cannot mmap: %s", path, strerror(e));
        }
    }
    sd3_status s = st_parse(f, path, err);
    if (s != SD3_OK) { st_close(f); return s; }
    *out = f;
    return SD3_OK;
}

/* Validate a caller-owned buffer as a safetensors file; see safetensors.h. */
sd3_status st_open_memory(st_file **out, const void *buf, size_t size, const char *label, sd3_err *err) {
    SD3_ASSERT(out != NULL);
    *out = NULL;
    if (!label) label = "<memory>";
    if (!buf && size) return sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: NULL buffer of %zu bytes", label, size);
    st_file *f = calloc(1, sizeof *f);
    if (!f) return sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", label);
    f->fd = -1;
    f->path = strdup(label);
    if (!f->path) { st_close(f); return sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", label); }
    f->map = (void *)buf;
    f->size = size;
    sd3_status s = st_parse(f, label, err);
    if (s != SD3_OK) { st_close(f); return s; }
    *out = f;
    return SD3_OK;
}

/* A borrowed tensor view of an entry (rank <= TENSOR_MAX_DIMS). */
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

/* Look up and view a tensor; a missing one is an error naming the file and the tensor. */
sd3_status st_get(const st_file *f, const char *name, tensor *out, sd3_err *err) {
    const st_entry *e = st_find(f, name);
    if (!e) {
        memset(out, 0, sizeof *out);
        return sd3_errf(err, SD3_ERR_NOT_FOUND, "%s: tensor '%s' is missing", f->path, name);
    }
    return st_entry_tensor(f, e, out, err);
}

/* Element alignment of the mapped data (the mapping itself is page aligned; memory buffers may not be). */
int st_entry_is_aligned(const st_entry *e) {
    size_t es = dtype_size(e->dt);
    return es <= 1 || ((uintptr_t)e->data % es) == 0;
}

/* Drop the mapping's resident pages (file-backed, so they are re-read if touched again). */
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

/* An empty writer (NULL when out of memory). */
st_writer *st_writer_new(void) {
    st_writer *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    w->meta = cJSON_CreateObject();
    if (!w->meta) { free(w); return NULL; }
    return w;
}

/* Free the writer and its copies of the names (never the borrowed tensor data). */
void st_writer_free(st_writer *w) {
    if (!w) return;
    for (int i = 0; i < w->n; i++) free(w->t[i].name);
    free(w->t);
    cJSON_Delete(w->meta);
    free(w);
}

/* Queue a tensor; checks what a reader would reject later (dtype, rank, dims, size, unique name). */
sd3_status st_writer_add(st_writer *w, const char *name, dtype dt, int ndim, const int64_t *shape, const void *data,
                         sd3_err *err) {
    if (!w || !name) return sd3_errf(err, SD3_ERR_INVALID_ARG, "st_writer_add: NULL writer or name");
    if (ndim < 0 || ndim > ST_MAX_RANK)
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "st_writer: tensor '%s': rank %d (0..%d allowed)", name, ndim,
                        ST_MAX_RANK);
    if ((unsigned)dt >= DT_COUNT || dt == DT_Q8_ROW)
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "st_writer: tensor '%s': dtype %d has no safetensors name", name,
                        (int)dt);
    if (!strcmp(name, "__metadata__"))
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "st_writer: tensor name '__metadata__' is reserved");
    for (int i = 0; i < w->n; i++)
        if (!strcmp(w->t[i].name, name))
            return sd3_errf(err, SD3_ERR_INVALID_ARG, "st_writer: duplicate tensor name '%s'", name);
    uint64_t numel = 1;
    int zero = 0, overflow = 0;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return sd3_errf(err, SD3_ERR_INVALID_ARG, "st_writer: tensor '%s': shape[%d] = %lld is negative", name, i,
                            (long long)shape[i]);
        uint64_t d = (uint64_t)shape[i];
        if (d == 0) zero = 1;
        else if (numel > UINT64_MAX / d) overflow = 1;
        else numel *= d;
    }
    if (zero) numel = 0;
    else if (overflow || numel > ((uint64_t)1 << 53) / dtype_size(dt))
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "st_writer: tensor '%s': too large", name);
    uint64_t nbytes = numel * dtype_size(dt);
    if (nbytes && !data) return sd3_errf(err, SD3_ERR_INVALID_ARG, "st_writer: tensor '%s': NULL data", name);
    if (w->n == w->cap) {
        int cap = w->cap ? 2 * w->cap : 16;
        wt *nt = realloc(w->t, sizeof(wt) * (size_t)cap);
        if (!nt) return sd3_errf(err, SD3_ERR_NOMEM, "st_writer: out of memory");
        w->t = nt;
        w->cap = cap;
    }
    wt *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    if (!t->name) return sd3_errf(err, SD3_ERR_NOMEM, "st_writer: out of memory");
    t->dt = dt;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->nbytes = nbytes;
    t->data = data;
    w->n++;
    return SD3_OK;
}

/* Queue a tensor descriptor (its data is borrowed). */
sd3_status st_writer_add_tensor(st_writer *w, const char *name, const tensor *t, sd3_err *err) {
    return st_writer_add(w, name, t->dt, t->ndim, t->shape, t->data, err);
}

/* Set a __metadata__ string (replacing an earlier value of the same key). */
sd3_status st_writer_meta(st_writer *w, const char *key, const char *value, sd3_err *err) {
    if (!w || !key || !value) return sd3_errf(err, SD3_ERR_INVALID_ARG, "st_writer_meta: NULL argument");
    cJSON_DeleteItemFromObjectCaseSensitive(w->meta, key);
    if (!cJSON_AddStringToObject(w->meta, key, value)) return sd3_errf(err, SD3_ERR_NOMEM, "st_writer: out of memory");
    return SD3_OK;
}

/* write(2) the whole buffer, retrying on EINTR and short writes. */
static int write_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n) {
        ssize_t k = write(fd, p, n > (1u << 30) ? (1u << 30) : n);
        if (k < 0) { if (errno == EINTR) continue; return -1; }
        if (k == 0) { errno = EIO; return -1; }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* A JSON integer written as digits (cJSON would print large doubles in exponent form). */
static cJSON *json_u64(uint64_t v) {
    char b[32];
    snprintf(b, sizeof b, "%llu", (unsigned long long)v);
    return cJSON_CreateRaw(b);
}

/* Build the header JSON: tensors in the order added, data laid out by dtype size (largest first, stable)
 * so that every tensor starts aligned to its element size with no gaps, as the reference writer does. */
static char *build_header(st_writer *w, int *order) {
    int k = 0;
    static const size_t sizes[] = {8, 4, 2, 1};
    for (int s = 0; s < 4; s++)
        for (int i = 0; i < w->n; i++)
            if (dtype_size(w->t[i].dt) == sizes[s]) order[k++] = i;
    SD3_ASSERT(k == w->n);
    uint64_t *begin = calloc((size_t)w->n + 1, sizeof *begin);
    cJSON *root = cJSON_CreateObject();
    char *json = NULL;
    if (!begin || !root) goto done;
    uint64_t off = 0;
    for (int j = 0; j < w->n; j++) { begin[order[j]] = off; off += w->t[order[j]].nbytes; }
    if (cJSON_GetArraySize(w->meta) > 0) {
        cJSON *m = cJSON_Duplicate(w->meta, 1);
        if (!m || !cJSON_AddItemToObject(root, "__metadata__", m)) { cJSON_Delete(m); goto done; }
    }
    for (int i = 0; i < w->n; i++) {
        wt *t = &w->t[i];
        cJSON *o = cJSON_AddObjectToObject(root, t->name);
        if (!o || !cJSON_AddStringToObject(o, "dtype", dtype_name(t->dt))) goto done;
        cJSON *s = cJSON_AddArrayToObject(o, "shape");
        cJSON *r = cJSON_AddArrayToObject(o, "data_offsets");
        if (!s || !r) goto done;
        for (int d = 0; d < t->ndim; d++)
            if (!cJSON_AddItemToArray(s, json_u64((uint64_t)t->shape[d]))) goto done;
        if (!cJSON_AddItemToArray(r, json_u64(begin[i])) || !cJSON_AddItemToArray(r, json_u64(begin[i] + t->nbytes)))
            goto done;
    }
    json = cJSON_PrintUnformatted(root);
done:
    free(begin);
    cJSON_Delete(root);
    return json;
}

/* fsync the directory holding path, so the rename itself survives a crash (best effort). */
static void sync_parent_dir(const char *path) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash) snprintf(dir, sizeof dir, ".");
    else if (slash == dir) dir[1] = 0;
    else *slash = 0;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) { (void)fsync(fd); close(fd); }
}

/* Write everything queued to path atomically: a temp file beside it, fsync, rename; on any failure the
 * temp file is removed and path is left as it was. */
sd3_status st_writer_write(st_writer *w, const char *path, sd3_err *err) {
    static atomic_uint counter;
    if (!w || !path || !*path) return sd3_errf(err, SD3_ERR_INVALID_ARG, "st_writer_write: NULL writer or empty path");
    char tmp[4096];
    int tl = snprintf(tmp, sizeof tmp, "%s.tmp.%d.%u", path, (int)getpid(), atomic_fetch_add(&counter, 1));
    if (tl < 0 || (size_t)tl >= sizeof tmp) return sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: path too long", path);
    int *order = malloc(sizeof(int) * ((size_t)w->n + 1));
    char *json = order ? build_header(w, order) : NULL;
    if (!json) { free(order); return sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory building the header", path); }
    size_t jl = strlen(json);
    size_t padded = (jl + 7) & ~(size_t)7; /* pad with spaces so the data starts 8-aligned */
    if (padded > ST_MAX_HEADER) {
        free(json); free(order);
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: header of %zu bytes exceeds the limit of %u", path, padded,
                        ST_MAX_HEADER);
    }

    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = errno;
        free(json); free(order);
        return sd3_errf(err, SD3_ERR_IO, "%s: cannot create %s: %s", path, tmp, strerror(e));
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    int bad = write_all(fd, len8, 8) || write_all(fd, json, jl) || write_all(fd, "        ", padded - jl);
    int saved = errno;
    free(json);
    for (int j = 0; j < w->n && !bad; j++) {
        const wt *t = &w->t[order[j]];
        if (t->nbytes && write_all(fd, t->data, (size_t)t->nbytes)) { bad = 1; saved = errno; }
    }
    free(order);
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
    sync_parent_dir(path);
    return SD3_OK;
}

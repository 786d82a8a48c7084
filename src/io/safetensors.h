/*
 * safetensors.h — read (mmap, read-only, strictly validated) and write (atomically) .safetensors files.
 *
 * Format: 8-byte little-endian header length N, N bytes of JSON
 *   {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ..., "__metadata__": {str: str}}
 * then the data; offsets count from the end of the header.
 * Validation on open: N sane (<= ST_MAX_HEADER) and inside the file, valid JSON object, known dtype, rank
 * <= ST_MAX_RANK, non-negative dims, numel x dtype size == end - begin, every range inside the file, no two
 * ranges overlapping, unique names, at most ST_MAX_TENSORS tensors. Every failure names the file.
 */
#ifndef SD3_SAFETENSORS_H
#define SD3_SAFETENSORS_H

#include "core/core.h"

#define ST_MAX_HEADER (100u * 1000u * 1000u)
#define ST_MAX_TENSORS 1000000
#define ST_MAX_RANK 8

typedef struct st_entry {
    char *name;
    dtype dt;
    int ndim;
    int64_t shape[ST_MAX_RANK];
    uint64_t begin, end;      /* byte range relative to the data section */
    const void *data;         /* pointer into the mapping */
} st_entry;

typedef struct st_file {
    char *path;
    int fd;
    void *map;
    size_t size;
    uint64_t header_len;
    st_entry *entries;        /* in header order */
    int n;
    int *hash;                /* open-addressing index over entries by name (size hash_cap) */
    int hash_cap;
    char **meta_keys, **meta_vals;
    int n_meta;
} st_file;

/* Open and validate path; *out is NULL on failure and err says why (message starts with the path). */
sd3_status st_open(st_file **out, const char *path, sd3_err *err);
/* Same, on a caller-owned buffer (not copied; must outlive the st_file). For fuzzing and tests. */
sd3_status st_open_memory(st_file **out, const void *buf, size_t size, const char *label, sd3_err *err);
void st_close(st_file *f);

/* Look up a tensor by name (NULL if absent). */
const st_entry *st_find(const st_file *f, const char *name);
/* A value of __metadata__ (NULL if absent). */
const char *st_meta(const st_file *f, const char *key);
/* A tensor view of entry e (rank must be <= 4; data borrowed from the mapping). */
sd3_status st_entry_tensor(const st_file *f, const st_entry *e, tensor *out, sd3_err *err);
/* Look up name and view it; SD3_ERR_NOT_FOUND naming the file and tensor if absent. */
sd3_status st_get(const st_file *f, const char *name, tensor *out, sd3_err *err);
/* Advise the kernel that the mapping's pages may be dropped (after a component is used). */
void st_release_pages(st_file *f);

/* Writing: collect tensors (borrowed pointers, must stay valid until st_writer_write) and metadata,
 * then write to `path.tmp.<pid>` and rename over path, so a crash never leaves a half-written file. */
typedef struct st_writer st_writer;
st_writer *st_writer_new(void);
/* Add a tensor (dtype, rank <= 8, shape, data of numel x dtype size bytes). Names must be unique. */
sd3_status st_writer_add(st_writer *w, const char *name, dtype dt, int ndim, const int64_t *shape,
                         const void *data, sd3_err *err);
sd3_status st_writer_add_tensor(st_writer *w, const char *name, const tensor *t, sd3_err *err);
sd3_status st_writer_meta(st_writer *w, const char *key, const char *value, sd3_err *err);
sd3_status st_writer_write(st_writer *w, const char *path, sd3_err *err);
void st_writer_free(st_writer *w);

/* Whether e's data pointer is aligned to its element size. The format does not promise it (real files,
 * golden ones included, hold I64 tensors at 4-byte offsets); code that reads elements through a typed
 * pointer must check this and copy (memcpy) a misaligned tensor first, or read elements with memcpy. */
int st_entry_is_aligned(const st_entry *e);

#endif /* SD3_SAFETENSORS_H */

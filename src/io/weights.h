/*
 * weights.h — a model component's weights: one or more safetensors files (a single file, a sharded
 * set listed by *.safetensors.index.json, or a single-file checkpoint seen through a key prefix),
 * looked up by checkpoint key with shape checks whose errors name the tensor.
 */
#ifndef SD3_WEIGHTS_H
#define SD3_WEIGHTS_H

#include "io/safetensors.h"

#define WEIGHTS_MAX_FILES 64

typedef struct weights {
    st_file *files[WEIGHTS_MAX_FILES];
    int n_files;
    int owns_files;          /* close files on weights_close */
    char prefix[128];        /* prepended to every key looked up ("" for diffusers folders) */
    char label[512];         /* what error messages call this set (folder or file path) */
} weights;

/* Open one .safetensors file as a weight set. */
sd3_status weights_open_file(weights *w, const char *path, sd3_err *err);
/* Open a diffusers component folder: <dir>/<stem>.safetensors, else <dir>/<stem>.fp16.safetensors,
 * else the shards listed by <dir>/<stem>[.fp16].safetensors.index.json (or diffusers'
 * <stem>.safetensors.index.fp16.json). stem is e.g.
 * "diffusion_pytorch_model" or "model". Error names what is missing. */
sd3_status weights_open_dir(weights *w, const char *dir, const char *stem, sd3_err *err);
/* A view of another set with a key prefix (files not owned). */
void weights_view(weights *w, const weights *base, const char *prefix);
void weights_close(weights *w);

/* Find key (prefix applied); NULL if absent. */
const st_entry *weights_find(const weights *w, const char *key, const st_file **file);
int weights_has(const weights *w, const char *key);
/* Get key as a tensor view; SD3_ERR_NOT_FOUND "<label>: tensor '<key>' is missing". */
sd3_status weights_get(const weights *w, const char *key, tensor *out, sd3_err *err);
/* Get key and check its rank and dims (a dim of -1 matches anything); SD3_ERR_SHAPE naming the tensor. */
sd3_status weights_get_shape(const weights *w, const char *key, tensor *out, sd3_err *err, int ndim,
                             int64_t d0, int64_t d1, int64_t d2, int64_t d3);
/* Whether dt is a dtype the kernels take as a weight: F32/F16/BF16/F8 or quantised Q8/Q4. */
int dtype_is_weight(dtype dt);
/* weights_get_shape plus that dtype check: SD3_ERR_SHAPE "<label>: tensor '<key>' has dtype I64, ..." */
sd3_status weights_get_weight(const weights *w, const char *key, tensor *out, sd3_err *err, int ndim, int64_t d0,
                              int64_t d1, int64_t d2, int64_t d3);
/* Check a tensor's rank and dims (-1 = any); name used in the error. */
sd3_status tensor_expect(const tensor *t, const char *name, sd3_err *err, int ndim, int64_t d0, int64_t d1,
                         int64_t d2, int64_t d3);
/* Drop the page cache pages of every file (after the component is used). */
void weights_release_pages(weights *w);

/* Find a component folder's weights without opening them: on success path holds
 * <dir>/<stem>.safetensors, <dir>/<stem>.fp16.safetensors, or (with *sharded = 1) the index
 * <stem>.safetensors.index.json / <stem>.safetensors.index.fp16.json, in that order of preference.
 * SD3_ERR_NOT_FOUND naming what was looked for; SD3_ERR_UNSUPPORTED if only a .bin pickle is there. */
sd3_status weights_locate(const char *dir, const char *stem, char *path, size_t n, int *sharded, sd3_err *err);

#endif

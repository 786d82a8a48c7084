/*
 * sd3.h — Stable Diffusion 3 in C: the public API.
 *
 * Usage (the shape every caller follows):
 *
 *     sd3_ctx *ctx = sd3_ctx_create(NULL);            // default params: threads = cores
 *     if (sd3_load(ctx, "path/to/sd3-folder") != SD3_OK)
 *         fprintf(stderr, "%s\n", sd3_last_error(ctx));
 *     ...
 *     sd3_ctx_free(ctx);
 *
 * Thread safety: one sd3_ctx is used by one thread at a time. Two contexts may be used from two threads.
 * Failure contract: every call that can fail returns an sd3_status; on failure the context keeps a
 * one-line message (sd3_last_error) that names the file or parameter and the problem. The library
 * never prints (except through the log callback) and never exits.
 */
#ifndef SD3_H
#define SD3_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Every fallible call returns one of these. */
typedef enum sd3_status {
    SD3_OK = 0,
    SD3_ERR_INVALID_ARG,   /* a parameter the caller gave is out of range or malformed */
    SD3_ERR_IO,            /* a file could not be opened, read, mapped or written */
    SD3_ERR_FORMAT,        /* a file's content is malformed or lies about itself */
    SD3_ERR_NOT_FOUND,     /* a file, component or tensor that must exist does not */
    SD3_ERR_SHAPE,         /* a tensor has the wrong shape or dtype for the model */
    SD3_ERR_NOMEM,         /* an allocation failed or a limit on sizes was exceeded */
    SD3_ERR_UNSUPPORTED,   /* valid input we do not handle (yet) */
    SD3_ERR_INTERNAL       /* a bug: an invariant did not hold */
} sd3_status;

/* A short English name of a status ("invalid argument", ...). */
const char *sd3_status_str(sd3_status s);

/* Log levels and the callback that receives every log line (default: stderr at WARN and above). */
typedef enum sd3_log_level { SD3_LOG_DEBUG = 0, SD3_LOG_INFO, SD3_LOG_WARN, SD3_LOG_ERROR } sd3_log_level;
typedef void (*sd3_log_fn)(sd3_log_level level, const char *msg, void *user);
void sd3_set_log(sd3_log_fn fn, void *user, sd3_log_level min_level);

/* Parameters of a context. */
typedef struct sd3_ctx_params {
    int n_threads;         /* worker threads for the kernels; 0 = number of cores */
} sd3_ctx_params;
sd3_ctx_params sd3_ctx_params_default(void);

typedef struct sd3_ctx sd3_ctx;

/* Create a context (NULL params = defaults). Returns NULL only when out of memory. */
sd3_ctx *sd3_ctx_create(const sd3_ctx_params *params);
void sd3_ctx_free(sd3_ctx *ctx);
/* The message of the last failed call on this context ("" when none). */
const char *sd3_last_error(const sd3_ctx *ctx);

/* Library version string, and a one-line description of the CPU features the kernels dispatch on. */
const char *sd3_version(void);
const char *sd3_cpu_features(void);

#ifdef __cplusplus
}
#endif
#endif /* SD3_H */

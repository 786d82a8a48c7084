/*
 * core.h — the runtime every other module stands on: errors kept in a caller-owned struct, logging,
 * checked allocation, the tensor descriptor, fp16/bf16 conversion, CPU features and the thread pool.
 */
#ifndef SD3_CORE_H
#define SD3_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include "sd3.h"

/* ------------------------------------------------------------------------------------------------ */
/* Errors: a status plus a one-line message, owned by the caller (a context holds one).             */
/* ------------------------------------------------------------------------------------------------ */

typedef struct sd3_err {
    sd3_status status;
    char msg[1024];
} sd3_err;

/* Record status s with a printf-style message in e (e may be NULL) and return s. */
sd3_status sd3_errf(sd3_err *e, sd3_status s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Prefix the message already in e with "prefix: " (for adding the file or tensor name on the way up). */
void sd3_err_prefix(sd3_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Clear e to SD3_OK / "". */
void sd3_err_clear(sd3_err *e);

/* Invariant check that stays on in release builds: a failure is a bug, so print file:line and abort. */
#define SD3_ASSERT(cond)                                                                               \
    do {                                                                                               \
        if (!(cond)) sd3_assert_fail(#cond, __FILE__, __LINE__);                                       \
    } while (0)
void sd3_assert_fail(const char *cond, const char *file, int line) __attribute__((noreturn));

/* Logging through the callback set with sd3_set_log. */
void sd3_log(sd3_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define LOG_DEBUG(...) sd3_log(SD3_LOG_DEBUG, __VA_ARGS__)
#define LOG_INFO(...) sd3_log(SD3_LOG_INFO, __VA_ARGS__)
#define LOG_WARN(...) sd3_log(SD3_LOG_WARN, __VA_ARGS__)

/* ------------------------------------------------------------------------------------------------ */
/* Memory                                                                                           */
/* ------------------------------------------------------------------------------------------------ */

/* 64-byte aligned allocation (NULL on failure or size 0 overflow); free with sd3_free. */
void *sd3_malloc(size_t n);
void *sd3_calloc(size_t count, size_t size);   /* zeroed, overflow-checked */
void sd3_free(void *p);
/* Peak resident set size of this process in bytes (from getrusage), for benchmarks. */
size_t sd3_peak_rss(void);

/* ------------------------------------------------------------------------------------------------ */
/* Tensors                                                                                          */
/* ------------------------------------------------------------------------------------------------ */

typedef enum dtype {
    DT_F32 = 0,
    DT_F16,
    DT_BF16,
    DT_F64,
    DT_I64,
    DT_I32,
    DT_I16,
    DT_I8,
    DT_U8,
    DT_BOOL,
    DT_F8_E4M3,  /* fp8 e4m3fn as in *_t5xxlfp8* checkpoints */
    DT_F8_E5M2,
    DT_Q8_ROW,   /* room for quantised types: int8 with one f32 scale per row (see quantisation issue) */
    /* Quantised linear weights [N, K] (src/quant/quant.h has the full rules). Symmetric, scale per block of
     * qblock consecutive K-elements of a row, s = max|w| / qmax over the block (0 for an all-zero block),
     * q = round-half-to-even(w / s) (IEEE nearbyint), w ~ s q. qscale points to N x (K / qblock) f32 scales. */
    DT_Q8,       /* int8 q in [-127, 127], one byte per element; qblock = K means one scale per row */
    DT_Q4,       /* int4 q in [-8, 7] (|q| <= 7 from the rounding), blocks of qblock = 32: 16 bytes per block,
                    byte j holds (q_j + 8) in its low nibble and (q_{j+16} + 8) in its high nibble */
    DT_COUNT
} dtype;

/* Bytes per element (0 for block-quantised types whose size is not per element). */
size_t dtype_size(dtype dt);
/* Canonical safetensors name ("F32", "F16", "BF16", ...). */
const char *dtype_name(dtype dt);
/* Parse a safetensors dtype name; returns 0 and sets *dt, or -1 if unknown. */
int dtype_parse(const char *s, dtype *dt);

#define TENSOR_MAX_DIMS 4

/* A tensor descriptor: dtype, up to 4 dims (row-major, last fastest), data that is borrowed (e.g. from
 * an mmap) unless `owned` says this descriptor must free it with sd3_free. */
typedef struct tensor {
    dtype dt;
    int ndim;
    int64_t shape[TENSOR_MAX_DIMS];
    void *data;
    int owned;
    /* Quantised dtypes only (DT_Q8 / DT_Q4): the f32 scales [N, K / qblock] (inside `data`'s allocation when
     * owned, else borrowed like data) and the block length along K. NULL / 0 for every other dtype. */
    const float *qscale;
    int qblock;
} tensor;

int64_t tensor_numel(const tensor *t);
size_t tensor_nbytes(const tensor *t);
/* A fresh zeroed F32 (or other dtype) tensor owning its memory; ndim dims from shape. */
sd3_status tensor_alloc(tensor *t, dtype dt, int ndim, const int64_t *shape, sd3_err *err);
/* Free the data if owned and zero the descriptor. */
void tensor_free(tensor *t);
/* "[2, 16, 32, 32]" into buf. */
const char *tensor_shape_str(const tensor *t, char *buf, size_t n);
/* Element i of a float tensor (F32/F16/BF16/F64/F8) as float; used by reference code and tests. */
float tensor_get_f32(const tensor *t, int64_t i);
/* Copy/convert n elements of a float tensor (any float dtype) starting at element off into dst (F32). */
void tensor_to_f32(const tensor *t, int64_t off, int64_t n, float *dst);

/* ------------------------------------------------------------------------------------------------ */
/* fp16 / bf16 / fp8 conversion (exact IEEE rounding: round-to-nearest-even)                          */
/* ------------------------------------------------------------------------------------------------ */

float fp16_to_f32(uint16_t h);
uint16_t f32_to_fp16(float f);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);
float fp8e4m3_to_f32(uint8_t v);
float fp8e5m2_to_f32(uint8_t v);
void fp16_to_f32_row(const uint16_t *src, float *dst, size_t n);
void bf16_to_f32_row(const uint16_t *src, float *dst, size_t n);
void f32_to_bf16_row(const float *src, uint16_t *dst, size_t n);
void f32_to_fp16_row(const float *src, uint16_t *dst, size_t n);

/* ------------------------------------------------------------------------------------------------ */
/* CPU features (detected once, at first use)                                                       */
/* ------------------------------------------------------------------------------------------------ */

typedef struct cpu_features {
    int avx2, fma, f16c;
    int avx512f, avx512bw, avx512vl, avx512_bf16, avx512_vnni;
    int neon;
} cpu_features;
const cpu_features *cpu_get(void);
/* Force the portable path for every dispatched kernel (SD3_FORCE_REF=1 in the environment does too). */
void cpu_force_ref(int on);
int cpu_ref_forced(void);

/* ------------------------------------------------------------------------------------------------ */
/* Thread pool: persistent workers; kernels split their work with pool_run.                          */
/* ------------------------------------------------------------------------------------------------ */

/* Work item: called for task indices in [0, n_tasks), on worker `thread` in [0, pool_threads()). */
typedef void (*pool_fn)(void *arg, int task, int thread);
/* Set the number of threads (0 = cores). Starts or restarts the workers; not callable from a task. */
void pool_set_threads(int n);
int pool_threads(void);
/* Run fn for tasks 0..n_tasks-1 on all threads (the caller works too) and wait for all of them.
 * Nested calls from inside a task run serially on the calling thread. */
void pool_run(int n_tasks, pool_fn fn, void *arg);
/* Number of cores online. */
int cpu_count(void);

/* Monotonic wall time in seconds. */
double sd3_time(void);

#endif /* SD3_CORE_H */

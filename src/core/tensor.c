/* tensor.c — dtype facts and the tensor descriptor's helpers. */
#include <string.h>
#include "core/core.h"

static const struct { const char *name; size_t size; } DT[DT_COUNT] = {
    [DT_F32] = {"F32", 4},  [DT_F16] = {"F16", 2},   [DT_BF16] = {"BF16", 2},
    [DT_F64] = {"F64", 8},  [DT_I64] = {"I64", 8},   [DT_I32] = {"I32", 4},
    [DT_I16] = {"I16", 2},  [DT_I8] = {"I8", 1},     [DT_U8] = {"U8", 1},
    [DT_BOOL] = {"BOOL", 1}, [DT_F8_E4M3] = {"F8_E4M3", 1}, [DT_F8_E5M2] = {"F8_E5M2", 1},
    [DT_Q8_ROW] = {"Q8_ROW", 1},
    [DT_Q8] = {"Q8", 1},     /* int8 codes; the scales are extra (see tensor_nbytes) */
    [DT_Q4] = {"Q4", 0},     /* two codes per byte: no per-element size */
};

size_t dtype_size(dtype dt) { return (unsigned)dt < DT_COUNT ? DT[dt].size : 0; }
const char *dtype_name(dtype dt) { return (unsigned)dt < DT_COUNT ? DT[dt].name : "?"; }

int dtype_parse(const char *s, dtype *dt) {
    for (int i = 0; i < DT_COUNT; i++) {
        if (i == DT_Q8_ROW || i == DT_Q8 || i == DT_Q4) continue; /* not safetensors dtypes */
        if (strcmp(s, DT[i].name) == 0) { *dt = (dtype)i; return 0; }
    }
    return -1;
}

int64_t tensor_numel(const tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

/* Bytes of the data array: numel x element size; for DT_Q8 the int8 codes (numel bytes) and for DT_Q4 the
 * packed codes (numel / 2 bytes), in both cases without the f32 scales that qscale points to. */
size_t tensor_nbytes(const tensor *t) {
    if (t->dt == DT_Q4) return (size_t)tensor_numel(t) / 2;
    return (size_t)tensor_numel(t) * dtype_size(t->dt);
}

/* Element i of a quantised [.., K] tensor dequantised: s q (see DT_Q8 / DT_Q4 in core.h). */
static float quant_get(const tensor *t, int64_t i) {
    int64_t K = t->shape[t->ndim - 1], row = i / K, k = i % K;
    SD3_ASSERT(t->qscale && t->qblock > 0);
    float s = t->qscale[row * (K / t->qblock) + k / t->qblock];
    if (t->dt == DT_Q8) return s * (float)((const int8_t *)t->data)[i];
    int64_t blk = k / 32, j = k % 32;
    uint8_t byte = ((const uint8_t *)t->data)[row * (K / 2) + blk * 16 + (j & 15)];
    int q = (j < 16 ? (byte & 15) : (byte >> 4)) - 8;
    return s * (float)q;
}

sd3_status tensor_alloc(tensor *t, dtype dt, int ndim, const int64_t *shape, sd3_err *err) {
    memset(t, 0, sizeof *t);
    if (ndim < 0 || ndim > TENSOR_MAX_DIMS)
        return sd3_errf(err, SD3_ERR_INTERNAL, "tensor_alloc: rank %d unsupported", ndim);
    t->dt = dt;
    t->ndim = ndim;
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || (shape[i] && n > INT64_MAX / shape[i]))
            return sd3_errf(err, SD3_ERR_NOMEM, "tensor_alloc: bad dimension %lld", (long long)shape[i]);
        t->shape[i] = shape[i];
        n *= shape[i];
    }
    t->data = sd3_calloc((size_t)n, dtype_size(dt));
    if (!t->data)
        return sd3_errf(err, SD3_ERR_NOMEM, "cannot allocate %lld elements of %s", (long long)n, dtype_name(dt));
    t->owned = 1;
    return SD3_OK;
}

void tensor_free(tensor *t) {
    if (t->owned) sd3_free(t->data);
    memset(t, 0, sizeof *t);
}

const char *tensor_shape_str(const tensor *t, char *buf, size_t n) {
    size_t o = 0;
    o += (size_t)snprintf(buf + o, n - o, "[");
    for (int i = 0; i < t->ndim && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, i ? ", %lld" : "%lld", (long long)t->shape[i]);
    if (o < n) snprintf(buf + o, n - o, "]");
    return buf;
}

/* Element i of any numeric tensor as float. Reads through memcpy: safetensors files may place a tensor
 * at an offset that is not a multiple of its element size (seen in real files). */
float tensor_get_f32(const tensor *t, int64_t i) {
    const unsigned char *p = (const unsigned char *)t->data + (size_t)i * dtype_size(t->dt);
    switch (t->dt) {
    case DT_F32: { float v; memcpy(&v, p, 4); return v; }
    case DT_F16: { uint16_t v; memcpy(&v, p, 2); return fp16_to_f32(v); }
    case DT_BF16: { uint16_t v; memcpy(&v, p, 2); return bf16_to_f32(v); }
    case DT_F64: { double v; memcpy(&v, p, 8); return (float)v; }
    case DT_F8_E4M3: return fp8e4m3_to_f32(*p);
    case DT_F8_E5M2: return fp8e5m2_to_f32(*p);
    case DT_I64: { int64_t v; memcpy(&v, p, 8); return (float)v; }
    case DT_I32: { int32_t v; memcpy(&v, p, 4); return (float)v; }
    case DT_Q8: case DT_Q4: return quant_get(t, i);
    default: SD3_ASSERT(!"tensor_get_f32: not a float dtype");
    }
    return 0;
}

void tensor_to_f32(const tensor *t, int64_t off, int64_t n, float *dst) {
    if (t->dt == DT_Q8 || t->dt == DT_Q4) {
        for (int64_t i = 0; i < n; i++) dst[i] = quant_get(t, off + i);
        return;
    }
    int aligned = ((uintptr_t)t->data % dtype_size(t->dt)) == 0;
    switch (aligned ? t->dt : DT_COUNT) {
    case DT_F32: memcpy(dst, (const float *)t->data + off, (size_t)n * 4); break;
    case DT_F16: fp16_to_f32_row((const uint16_t *)t->data + off, dst, (size_t)n); break;
    case DT_BF16: bf16_to_f32_row((const uint16_t *)t->data + off, dst, (size_t)n); break;
    default:
        for (int64_t i = 0; i < n; i++) dst[i] = tensor_get_f32(t, off + i);
    }
}

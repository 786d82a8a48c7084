/*
 * fuzz_safetensors.c — the safetensors header parser (st_open_memory) on arbitrary bytes. After a
 * successful open every promise of safetensors.h is checked: each entry's byte range lies inside the
 * buffer and matches numel x dtype size, names are found again by st_find, metadata reads back, and the
 * first and last element of every float tensor view can be read (ASan catches any read outside).
 */
#include "fuzz_common.h"
#include "io/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    st_file *f = NULL;
    sd3_err err = {0};
    sd3_status st = st_open_memory(&f, data, size, "fuzz.safetensors", &err);
    fz_check_err(st, &err, "st_open_memory");
    if (st != SD3_OK) {
        if (f) abort();   /* *out must be NULL on failure */
        return 0;
    }
    const uint8_t *lo = data, *hi = data + size;
    volatile uint8_t sink = 0;
    for (int i = 0; i < f->n; i++) {
        const st_entry *e = &f->entries[i];
        if (st_find(f, e->name) != e) abort();
        uint64_t nb = e->end - e->begin;
        int64_t numel = 1;
        for (int d = 0; d < e->ndim; d++) numel *= e->shape[d];
        if (dtype_size(e->dt) && (uint64_t)numel * dtype_size(e->dt) != nb) abort();
        const uint8_t *p = e->data;
        if (nb && (p < lo || p + nb > hi)) abort();
        if (nb) sink ^= p[0] ^ p[nb - 1];
        tensor t;
        sd3_err e2 = {0};
        sd3_status s2 = st_entry_tensor(f, e, &t, &e2);
        fz_check_err(s2, &e2, "st_entry_tensor");
        if (s2 == SD3_OK && numel > 0 &&
            (t.dt == DT_F32 || t.dt == DT_F16 || t.dt == DT_BF16 || t.dt == DT_F64 || t.dt == DT_F8_E4M3 || t.dt == DT_F8_E5M2)) {
            float a = tensor_get_f32(&t, 0), b = tensor_get_f32(&t, tensor_numel(&t) - 1);
            sink ^= (uint8_t)(a != b);
        }
    }
    for (int i = 0; i < f->n_meta; i++) {
        const char *v = st_meta(f, f->meta_keys[i]);
        if (!v) abort();
        sink ^= (uint8_t)v[0];
    }
    (void)st_find(f, "");
    (void)st_find(f, "missing.tensor.name");
    (void)sink;
    st_close(f);
    return 0;
}

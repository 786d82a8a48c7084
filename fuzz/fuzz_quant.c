/*
 * fuzz_quant.c — quantised-file metadata (src/quant/): arbitrary bytes opened as a safetensors file, then
 * quant_bind on every entry, as weights_get does for each tensor a model asks for. A bound quantised tensor
 * must be self-consistent (DT_Q8 / DT_Q4, rank 2, qblock > 0 dividing K, scales present) and its first and
 * last code byte and scale must be readable (ASan: the input buffer is exactly its size); a Q tensor with
 * an even row count also goes through quant_swap_halves (the original-layout adaLN path) and
 * quant_row_view. Seeds: small q8_row / q4_block32 files written by mkseeds.py.
 */
#include "fuzz_common.h"
#include "io/safetensors.h"
#include "quant/quant.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    st_file *f = NULL;
    sd3_err err = {0};
    if (st_open_memory(&f, data, size, "fuzz-quant.safetensors", &err) != SD3_OK) return 0;
    volatile uint8_t sink = 0;
    for (int i = 0; i < f->n; i++) {
        tensor t;
        int is_q = 0;
        memset(&err, 0, sizeof err);
        sd3_status st = quant_bind(f, &f->entries[i], &t, &is_q, &err);
        fz_check_err(st, &err, "quant_bind");
        if (st != SD3_OK || !is_q) continue;
        if ((t.dt != DT_Q8 && t.dt != DT_Q4) || t.ndim != 2 || t.qblock <= 0 || !t.qscale || !t.data ||
            t.shape[0] <= 0 || t.shape[1] <= 0 || t.shape[1] % t.qblock) {
            fprintf(stderr, "inconsistent quantised tensor %s\n", f->entries[i].name);
            abort();
        }
        int64_t N = t.shape[0], K = t.shape[1];
        size_t code_bytes = (size_t)(t.dt == DT_Q8 ? N * K : N * K / 2);
        const uint8_t *c = t.data;
        sink ^= c[0] ^ c[code_bytes - 1];
        float s0 = t.qscale[0], s1 = t.qscale[N * (K / t.qblock) - 1];
        sink ^= (uint8_t)(s0 < s1);
        if (N % 2 == 0) {
            tensor sw = t;
            sw.owned = 0;
            memset(&err, 0, sizeof err);
            st = quant_swap_halves(&sw, &err);
            fz_check_err(st, &err, "quant_swap_halves");
            if (st == SD3_OK) tensor_free(&sw);
        }
        tensor v = t;
        quant_row_view(&v, N - 1, 1);
        sink ^= ((const uint8_t *)v.data)[0];
    }
    (void)sink;
    st_close(f);
    return 0;
}

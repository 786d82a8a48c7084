/*
 * kind_rng.c — golden kind torch_cpu_randn: torch's CPU generator reproduced bit for bit (src/core/rng.h).
 *
 * Every tensor of the case is checked with atol 0 (the README: RNG outputs are bit-exact):
 *   mt19937_first32_uint32   the first raw words after manual_seed(seed)            (I64, exact)
 *   randn_<shape>            manual_seed(seed); randn(shape)   — AVX2 kernel emulation
 *   portable_kernel_<shape>  the same under ATEN_CPU_CAPABILITY=default (libm kernel)
 *   randn_f64_as_f32_<n>     randn(n, dtype=float64) rounded to float32
 *   sequence_<k>             randn(shape_k) drawn one after another from one generator, k = 0, 1, ...
 * Sizes come from the tensors' shapes in the file; a tensor name not listed here fails the case.
 */
#include <string.h>
#include "golden.h"
#include "core/rng.h"

/* Draw what tensor `name` holds from a fresh generator seeded with `seed` and compare it bit-exactly. */
static void check_fresh(golden_case *gc, const char *name, uint64_t seed, tgen_kernel k, int f64) {
    tensor t;
    if (golden_tensor(gc, name, &t)) return;
    int64_t n = tensor_numel(&t);
    float *got = sd3_malloc((size_t)(n ? n : 1) * sizeof(float));
    double *gd = f64 ? sd3_malloc((size_t)(n ? n : 1) * sizeof(double)) : NULL;
    if (!got || (f64 && !gd)) {
        golden_fail(gc, "%s: out of memory", name);
        sd3_free(got); sd3_free(gd);
        return;
    }
    torch_gen g;
    tgen_init(&g, seed, k);
    if (f64) {
        tgen_randn_f64(&g, gd, n);
        for (int64_t i = 0; i < n; i++) got[i] = (float)gd[i];
    } else {
        tgen_randn(&g, got, n);
    }
    golden_check_atol(gc, name, got, n, 0.0);
    sd3_free(got);
    sd3_free(gd);
}

int golden_torch_cpu_randn(golden_case *gc) {
    const cJSON *seed_j = cJSON_GetObjectItemCaseSensitive(gc->json, "seed");
    if (!cJSON_IsNumber(seed_j) || seed_j->valuedouble < 0) {
        golden_fail(gc, "case has no non-negative numeric \"seed\"");
        return 1;
    }
    uint64_t seed = (uint64_t)seed_j->valuedouble;
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(gc->json, "tensors");
    if (!cJSON_IsObject(ts)) {
        golden_fail(gc, "case has no \"tensors\" object");
        return 1;
    }

    /* sequence_k tensors: counted first, then drawn in k order from one generator. */
    int n_seq = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, ts) {
        if (!strncmp(it->string, "sequence_", 9)) n_seq++;
    }

    cJSON_ArrayForEach(it, ts) {
        const char *name = it->string;
        if (!strcmp(name, "mt19937_first32_uint32")) {
            tensor t;
            if (golden_tensor(gc, name, &t)) continue;
            int64_t n = tensor_numel(&t);
            int64_t *w = sd3_malloc((size_t)(n ? n : 1) * sizeof(int64_t));
            if (!w) { golden_fail(gc, "out of memory"); continue; }
            torch_gen g;
            tgen_init(&g, seed, TGEN_KERNEL_AVX2);
            for (int64_t i = 0; i < n; i++) w[i] = tgen_u32(&g);
            golden_check_i64(gc, name, w, n);
            sd3_free(w);
        } else if (!strncmp(name, "randn_f64_as_f32_", 17)) {
            check_fresh(gc, name, seed, TGEN_KERNEL_AVX2, 1);
        } else if (!strncmp(name, "randn_", 6)) {
            check_fresh(gc, name, seed, TGEN_KERNEL_AVX2, 0);
        } else if (!strncmp(name, "portable_kernel_randn_", 22)) {
            check_fresh(gc, name, seed, TGEN_KERNEL_PORTABLE, 0);
        } else if (!strncmp(name, "sequence_", 9)) {
            /* handled below, in order */
        } else {
            golden_fail(gc, "%s: unknown tensor for kind torch_cpu_randn", name);
        }
    }

    if (n_seq) {
        torch_gen g;
        tgen_init(&g, seed, TGEN_KERNEL_AVX2);
        for (int k = 0; k < n_seq; k++) {
            char name[64];
            snprintf(name, sizeof name, "sequence_%d", k);
            tensor t;
            if (golden_tensor(gc, name, &t)) break;
            int64_t n = tensor_numel(&t);
            float *got = sd3_malloc((size_t)(n ? n : 1) * sizeof(float));
            if (!got) { golden_fail(gc, "out of memory"); break; }
            tgen_randn(&g, got, n);
            golden_check_atol(gc, name, got, n, 0.0);
            sd3_free(got);
        }
    }
    return 0;
}

/* test_gemm_pack.c — the bf16-mode packers of the GEMM driver against their scalar twin, word for word.
 *
 * kc_isa.pack_rows_bf16 packs rows of an activation (F32) or a weight (F32/F16/BF16) straight into the
 * bf16 pairs the vdpbf16ps microkernel reads; kc_pack_rows_bf16_ref does the same through the portable
 * F32 packer and scalar round-to-nearest-even. Every row count (full and partial slivers, R = 12 = MR
 * and R = 32 = NR), odd and even kc, k0 offsets and all three dtypes must agree exactly. Values are
 * normal floats, zeros, ±inf and ties for the rounding; subnormal inputs are left out on purpose
 * (vcvtne2ps2bf16 treats them as zero, the scalar rounds them: both are within the bf16 mode's bound). */
#include <math.h>
#include <stdlib.h>
#include "kernels/cpu/kcpu.h"
#include "test.h"

/* A value that exercises rounding: random normals, with exact ties, zeros and infinities mixed in. */
static float test_value(unsigned *s) {
    *s = *s * 1103515245u + 12345u;
    unsigned r = *s >> 8;
    switch (r % 16) {
    case 0: return 0.0f;
    case 1: return -0.0f;
    case 2: return (r & 64) ? INFINITY : -INFINITY;
    case 3: { /* a bf16 tie: the low 16 bits exactly 0x8000 */
        uint32_t u = (0x3f800000u + ((r & 0xff) << 16)) | 0x8000u;
        float f;
        memcpy(&f, &u, 4);
        return (r & 512) ? -f : f;
    }
    default: return ((float)(r % 20001) - 10000.0f) * 0.001234f;
    }
}

/* One packing case: a rows x K source of dtype dt (or F32 rows when dt < 0), rows idx0.. (cnt), columns
 * k0..k0+kc-1, sliver width R. */
static void pack_case(const kc_isa *isa, int dt, int rows, int K, int idx0, int cnt, int k0, int kc, int R) {
    unsigned seed = (unsigned)(rows * 7919 + K * 31 + k0 * 3 + kc + R);
    float *f = malloc(sizeof(float) * (size_t)rows * K);
    uint16_t *h = malloc(sizeof(uint16_t) * (size_t)rows * K);
    for (int i = 0; i < rows * K; i++) {
        f[i] = test_value(&seed);
        if (dt == DT_F16) { h[i] = f32_to_fp16(f[i]); f[i] = fp16_to_f32(h[i]); }
        if (dt == DT_BF16) { h[i] = f32_to_bf16(f[i]); f[i] = bf16_to_f32(h[i]); }
    }
    tensor t = {.dt = dt < 0 ? DT_F32 : (dtype)dt, .ndim = 2, .shape = {rows, K}};
    t.data = (dt == DT_F16 || dt == DT_BF16) ? (void *)h : (void *)f;
    kc_rows src = {.t = dt < 0 ? NULL : &t, .f32 = dt < 0 ? f : NULL, .ld = K};
    size_t words = (size_t)(kc + 1) / 2 * R;
    uint32_t *got = malloc(sizeof(uint32_t) * words), *want = malloc(sizeof(uint32_t) * words);
    for (size_t i = 0; i < words; i++) got[i] = 0xdeadbeefu;
    kc_pack_rows_bf16_ref(&src, idx0, cnt, k0, kc, R, want);
    int took = isa->pack_rows_bf16(&src, idx0, cnt, k0, kc, R, got);
    CHECK(took, "%s declined dtype %d", isa->name, dt);
    size_t bad = 0, first = 0;
    for (size_t i = 0; took && i < words; i++)
        if (got[i] != want[i] && !bad++) first = i;
    CHECK(!took || bad == 0, "dt %d rows %d K %d idx0 %d cnt %d k0 %d kc %d R %d: %zu words differ, first [%zu] %08x vs %08x", dt,
          rows, K, idx0, cnt, k0, kc, R, bad, first, got[first], want[first]);
    free(f); free(h); free(got); free(want);
}

/* Every combination of dtype, sliver width, partial slivers and K slices. */
static void test_pack_rows_bf16(const kc_isa *isa) {
    const int dts[4] = {-1, DT_F32, DT_F16, DT_BF16};
    const int Rs[2] = {12, 32};
    const int Ks[6] = {1, 2, 31, 33, 64, 515};
    for (int d = 0; d < 4; d++)
        for (int r = 0; r < 2; r++)
            for (int ki = 0; ki < 6; ki++) {
                int K = Ks[ki], R = Rs[r], rows = 40;
                int cnts[3] = {R, R - 5, 1};
                for (int c = 0; c < 3; c++) {
                    pack_case(isa, dts[d], rows, K, 3, cnts[c], 0, K, R);            /* all of K */
                    if (K > 20) pack_case(isa, dts[d], rows, K, 7, cnts[c], 16, K - 16 < 48 ? K - 16 : 48, R); /* a slice */
                    if (K > 20) pack_case(isa, dts[d], rows, K, 0, cnts[c], 2, K - 3, R);                     /* odd kc */
                }
            }
}

int main(void) {
    const kc_isa *isa = kc_isa_avx512();
    if (isa && cpu_get()->avx512f && cpu_get()->avx512bw && cpu_get()->avx512_bf16 && isa->pack_rows_bf16) {
        test_pack_rows_bf16(isa);
    } else {
        printf("no AVX-512 BF16 on this CPU: the bf16 packer is not used here; checking the twin alone\n");
        /* the twin must still round like f32_to_bf16 on a tiny case */
        float f[4] = {1.0f, 1.00390625f, -2.5f, 3.0f};
        kc_rows src = {.f32 = f, .ld = 4};
        uint32_t w[2];
        kc_pack_rows_bf16_ref(&src, 0, 1, 0, 4, 1, w);
        CHECK(w[0] == (uint32_t)(f32_to_bf16(f[0]) | (uint32_t)f32_to_bf16(f[1]) << 16), "pair 0 %08x", w[0]);
        CHECK(w[1] == (uint32_t)(f32_to_bf16(f[2]) | (uint32_t)f32_to_bf16(f[3]) << 16), "pair 1 %08x", w[1]);
    }
    TEST_MAIN_END("test_gemm_pack");
}

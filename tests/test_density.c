/*
 * test_density.c — timestep densities and loss weightings (src/train/density.h) without golden data:
 * scheme names, ranges and means, which generator draws each scheme makes, the formulas, errors.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "train/density.h"
#include "test.h"

static void test_names(void) {
    CHECK(density_scheme_parse("logit_normal") == DENSITY_LOGIT_NORMAL, "logit_normal");
    CHECK(density_scheme_parse("sigma_sqrt") == DENSITY_SIGMA_SQRT, "sigma_sqrt");
    CHECK(density_scheme_parse("mode") == DENSITY_MODE, "mode");
    CHECK(density_scheme_parse("cosmap") == DENSITY_COSMAP, "cosmap");
    CHECK(density_scheme_parse("none") == DENSITY_NONE && density_scheme_parse("whatever") == DENSITY_NONE &&
              density_scheme_parse(NULL) == DENSITY_NONE, "other names behave like none");
    CHECK(!strcmp(density_scheme_name(DENSITY_COSMAP), "cosmap"), "name round trip");
}

/* The formulas at points with known values. */
static void test_weighting(void) {
    const float s[3] = {0.5f, 1.0f, 0.25f};
    float w[3];
    density_loss_weighting(DENSITY_SIGMA_SQRT, s, w, 3);
    CHECK(w[0] == 4.0f && w[1] == 1.0f && w[2] == 16.0f, "sigma^-2: %g %g %g", (double)w[0], (double)w[1], (double)w[2]);
    density_loss_weighting(DENSITY_COSMAP, s, w, 3);
    /* 2 / (pi (1 - 2s + 2s^2)): s = 0.5 -> 4/pi, s = 1 -> 2/pi, s = 0.25 -> 2/(pi * 0.625) */
    CHECK(fabs(w[0] - 4.0 / M_PI) < 1e-6 && fabs(w[1] - 2.0 / M_PI) < 1e-6 && fabs(w[2] - 3.2 / M_PI) < 1e-6,
          "cosmap: %g %g %g", (double)w[0], (double)w[1], (double)w[2]);
    density_loss_weighting(DENSITY_LOGIT_NORMAL, s, w, 3);
    CHECK(w[0] == 1.0f && w[1] == 1.0f && w[2] == 1.0f, "logit_normal weighting is 1");
    density_loss_weighting(DENSITY_MODE, s, w, 3);
    CHECK(w[0] == 1.0f, "mode weighting is 1");
}

/* Published torch values: torch.manual_seed(0); torch.rand(3) = 0.4963, 0.7682, 0.0885 — what the
 * uniform schemes draw; and the index mapping (u * 1000).long(). */
static void test_uniform_schemes(void) {
    torch_gen g;
    float u[3];
    sd3_err err = {0};
    tgen_init(&g, 0, TGEN_KERNEL_AVX2);
    CHECK(density_sample(&g, DENSITY_COSMAP, 3, 0, 1, 1.29, u, &err) == SD3_OK, "%s", err.msg);
    CHECK(fabsf(u[0] - 0.4963f) < 6e-5f && fabsf(u[1] - 0.7682f) < 6e-5f && fabsf(u[2] - 0.0885f) < 6e-5f,
          "seed 0 rand(3): %.4f %.4f %.4f", u[0], u[1], u[2]);
    CHECK(density_index(u[0], 1000) == 496 && density_index(u[2], 1000) == 88, "indices %lld %lld",
          (long long)density_index(u[0], 1000), (long long)density_index(u[2], 1000));
    CHECK(density_index(0.0f, 1000) == 0 && density_index(0.9999999f, 1000) == 999, "index ends");
}

/* Ranges and means over many draws; mode with scale 0 is 1 - u; logit_normal is sigmoid(normal). */
static void test_distributions(void) {
    enum { B = 20000 };
    float *u = malloc(B * sizeof(float)), *r = malloc(B * sizeof(float));
    if (!u || !r) { CHECK(0, "out of memory"); free(u); free(r); return; }
    sd3_err err = {0};
    torch_gen g, h;
    const density_scheme all[] = {DENSITY_LOGIT_NORMAL, DENSITY_SIGMA_SQRT, DENSITY_MODE, DENSITY_COSMAP, DENSITY_NONE};
    for (size_t k = 0; k < sizeof all / sizeof *all; k++) {
        tgen_init(&g, 42 + k, TGEN_KERNEL_AVX2);
        CHECK(density_sample(&g, all[k], B, 0.0, 1.0, 1.29, u, &err) == SD3_OK, "%s", err.msg);
        double m = 0;
        int out = 0;
        for (int i = 0; i < B; i++) {
            out += !(u[i] >= 0.0f && u[i] <= 1.0f);
            m += u[i];
        }
        CHECK(out == 0, "%s: %d values outside [0, 1]", density_scheme_name(all[k]), out);
        CHECK(fabs(m / B - 0.5) < 0.01, "%s: mean %g (symmetric around 1/2)", density_scheme_name(all[k]), m / B);
    }
    /* mode with scale 0 is 1 - u, u from rand */
    tgen_init(&g, 9, TGEN_KERNEL_AVX2);
    tgen_init(&h, 9, TGEN_KERNEL_AVX2);
    density_sample(&g, DENSITY_MODE, 64, 0, 1, 0.0, u, &err);
    tgen_rand(&h, r, 64);
    int ok = 1;
    for (int i = 0; i < 64; i++) ok &= u[i] == 1.0f - r[i];
    CHECK(ok, "mode_scale 0 gives 1 - u");
    /* mode with scale 1.29 against a double evaluation of the formula */
    tgen_init(&g, 9, TGEN_KERNEL_AVX2);
    density_sample(&g, DENSITY_MODE, 64, 0, 1, 1.29, u, &err);
    double worst = 0;
    for (int i = 0; i < 64; i++) {
        double x = r[i], c = cos(M_PI * x / 2);
        worst = fmax(worst, fabs(u[i] - (1 - x - 1.29 * (c * c - 1 + x))));
    }
    CHECK(worst < 5e-7, "mode formula off by %g", worst);
    /* logit_normal: sigmoid of torch.normal, both below and above 16 elements */
    const int sizes[] = {8, 40};
    for (int k = 0; k < 2; k++) {
        int n = sizes[k];
        tgen_init(&g, 5, TGEN_KERNEL_AVX2);
        tgen_init(&h, 5, TGEN_KERNEL_AVX2);
        density_sample(&g, DENSITY_LOGIT_NORMAL, n, 0.5, 2.0, 0, u, &err);
        tgen_normal(&h, r, n, 0.5f, 2.0f);
        worst = 0;
        for (int i = 0; i < n; i++) worst = fmax(worst, fabs(u[i] - 1.0 / (1.0 + exp(-(double)r[i]))));
        CHECK(worst < 2e-7, "B=%d: sigmoid(normal) off by %g", n, worst);
        CHECK(tgen_u32(&g) == tgen_u32(&h), "B=%d: logit_normal draws exactly torch.normal's words", n);
    }
    free(u);
    free(r);
}

static void test_errors(void) {
    torch_gen g;
    float u[4];
    sd3_err err = {0};
    tgen_init(&g, 1, TGEN_KERNEL_AVX2);
    CHECK(density_sample(&g, DENSITY_NONE, 0, 0, 1, 1.29, u, &err) == SD3_ERR_INVALID_ARG, "batch 0 must fail");
    CHECK(strstr(err.msg, "batch") != NULL, "message names the batch: %s", err.msg);
    CHECK(density_sample(&g, DENSITY_LOGIT_NORMAL, 4, 0, -1, 1.29, u, &err) == SD3_ERR_INVALID_ARG, "std < 0 must fail");
    CHECK(density_sample(&g, DENSITY_LOGIT_NORMAL, 4, NAN, 1, 1.29, u, &err) == SD3_ERR_INVALID_ARG, "NaN mean must fail");
    CHECK(density_sample(&g, DENSITY_MODE, 4, 0, 1, INFINITY, u, &err) == SD3_ERR_INVALID_ARG, "inf mode_scale must fail");
}

int main(void) {
    test_names();
    test_weighting();
    test_uniform_schemes();
    test_distributions();
    test_errors();
    TEST_MAIN_END("test_density");
}

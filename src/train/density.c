/*
 * density.c — timestep densities and loss weightings of the SD3 training script. See density.h.
 *
 * Every float expression mirrors one torch float32 op (compiled with -ffp-contract=off: no fusing);
 * Python float scalars enter torch's float32 ops rounded to float, as torch casts them.
 */
/* Bit-exactness needs every a*b+c below to round twice unless written as fma: the Makefile passes
 * -ffp-contract=off, and these pragmas keep it so under the compilers' default modes (not clang
 * -ffp-contract=fast, which ignores pragmas). */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
#include <math.h>
#include <stdint.h>
#include <string.h>
#include "train/density.h"

static const float PI_F = 3.14159265358979323846f;   /* math.pi as torch casts it to float32 */

/* ------------------------------------------------------------------------------------------------ */
/* torch.cos on float32: SLEEF's Sleef_cosf8_u10 (AVX2 + FMA build), one lane                        */
/* ------------------------------------------------------------------------------------------------ */

/* torch's vectorised cos of float32 tensors is SLEEF's 1-ulp cosf (xcosf_u1, double-float arithmetic
 * with FMA). It is not always the correctly rounded value (cos(1.0561316f) rounds up by one ulp), so
 * the algorithm is reproduced here for |d| < 125 (the "mode" density only needs [0, pi/2)). */
typedef struct { float x, y; } df2;   /* x + y, |y| <= ulp(x)/2 */

static df2 df_add2_ff(float x, float y) {
    float s = x + y, v = s - x;
    return (df2){s, (x - (s - v)) + (y - v)};
}
static df2 df_add2_f2f(df2 x, float y) {
    float s = x.x + y, v = s - x.x;
    float t = (x.x - (s - v)) + (y - v);
    return (df2){s, t + x.y};
}
static df2 df_add_ff(float x, float y) {
    float s = x + y;
    return (df2){s, (x - s) + y};
}
static df2 df_add_f_f2(float x, df2 y) {
    float s = x + y.x;
    return (df2){s, ((x - s) + y.x) + y.y};
}
static df2 df_squ(df2 x) {
    float s = x.x * x.x;
    return (df2){s, fmaf(x.x + x.x, x.y, fmaf(x.x, x.x, -s))};
}
static df2 df_mul_f2f2(df2 x, df2 y) {
    float s = x.x * y.x;
    return (df2){s, fmaf(x.x, y.y, fmaf(x.y, y.x, fmaf(x.x, y.x, -s)))};
}
static float df_mul_f_f2f2(df2 x, df2 y) { return fmaf(x.x, y.x, fmaf(x.y, y.x, x.x * y.y)); }

/* SLEEF xexpf (Sleef_expf8_u10, AVX2 + FMA), one lane: torch.sigmoid's vectorised exp on float32. */
static float sleef_expf_u10(float d) {
    if (isnan(d)) return d;
    if (d < -104.0f) return 0.0f;
    if (d > 100.0f) return INFINITY;
    const float r_ln2 = 1.442695040888963407359924681001892137426645954152985934135449406931f;
    const float l2u = 0.693145751953125f, l2l = 1.428606765330187045e-06f;
    int q = (int)lrintf(d * r_ln2);
    float qf = (float)q;
    float s = fmaf(qf, -l2u, d);
    s = fmaf(qf, -l2l, s);
    float u = 0.000198527617612853646278381f;
    u = fmaf(u, s, 0.00139304355252534151077271f);
    u = fmaf(u, s, 0.00833336077630519866943359f);
    u = fmaf(u, s, 0.0416664853692054748535156f);
    u = fmaf(u, s, 0.166666671633720397949219f);
    u = fmaf(u, s, 0.5f);
    u = 1.0f + fmaf(s * s, u, s);
    /* vldexp2: u * 2^(q >> 1) * 2^(q - (q >> 1)), each power built from its exponent bits */
    int e1 = q >> 1, e2 = q - e1;
    uint32_t b1 = (uint32_t)(e1 + 0x7f) << 23, b2 = (uint32_t)(e2 + 0x7f) << 23;
    float p1, p2;
    memcpy(&p1, &b1, 4);
    memcpy(&p2, &b2, 4);
    return u * p1 * p2;
}

/* SLEEF xcosf_u1 (fast range |d| < 125; libm beyond, which the callers here never reach). */
static float sleef_cosf_u1(float d) {
    if (!(fabsf(d) < 125.0f)) return cosf(d);
    const float pi_a2 = 3.1414794921875f, pi_b2 = 0.00011315941810607910156f, pi_c2 = 1.9841872589410058936e-09f;
    float dq = fmaf(rintf(fmaf(d, (float)(1.0 / 3.14159265358979323846), -0.5f)), 2.0f, 1.0f);
    int q = (int)lrintf(dq);
    df2 s = df_add2_ff(d, dq * (-pi_a2 * 0.5f));
    s = df_add2_f2f(s, dq * (-pi_b2 * 0.5f));
    s = df_add2_f2f(s, dq * (-pi_c2 * 0.5f));
    df2 t = s;
    s = df_squ(s);
    float u = 2.6083159809786593541503e-06f;
    u = fmaf(u, s.x, -0.0001981069071916863322258f);
    u = fmaf(u, s.x, 0.00833307858556509017944336f);
    df2 x = df_add_f_f2(1.0f, df_mul_f2f2(df_add_ff(-0.166666597127914428710938f, u * s.x), s));
    u = df_mul_f_f2f2(t, x);
    return (q & 2) == 0 ? -u : u;
}

density_scheme density_scheme_parse(const char *name) {
    if (!name) return DENSITY_NONE;
    if (!strcmp(name, "logit_normal")) return DENSITY_LOGIT_NORMAL;
    if (!strcmp(name, "sigma_sqrt")) return DENSITY_SIGMA_SQRT;
    if (!strcmp(name, "mode")) return DENSITY_MODE;
    if (!strcmp(name, "cosmap")) return DENSITY_COSMAP;
    return DENSITY_NONE;
}

const char *density_scheme_name(density_scheme s) {
    switch (s) {
    case DENSITY_LOGIT_NORMAL: return "logit_normal";
    case DENSITY_SIGMA_SQRT: return "sigma_sqrt";
    case DENSITY_MODE: return "mode";
    case DENSITY_COSMAP: return "cosmap";
    default: return "none";
    }
}

sd3_status density_sample(torch_gen *g, density_scheme scheme, int batch, double logit_mean, double logit_std,
                          double mode_scale, float *u, sd3_err *err) {
    if (batch < 1) return sd3_errf(err, SD3_ERR_INVALID_ARG, "timestep sampling: batch size %d must be >= 1", batch);
    if (scheme == DENSITY_LOGIT_NORMAL) {
        if (!isfinite(logit_mean) || !isfinite(logit_std) || logit_std < 0.0)
            return sd3_errf(err, SD3_ERR_INVALID_ARG,
                            "timestep sampling: logit_normal needs a finite mean and std >= 0 (got %g, %g)",
                            logit_mean, logit_std);
        /* torch.normal(mean, std, size=(B,)) on a float32 tensor, then torch.sigmoid: 1 / (1 + exp(-x)).
         * torch's loop runs whole blocks of 16 through the vector path (SLEEF exp) and the rest through
         * the scalar lambda (std::exp = libm expf). */
        tgen_normal(g, u, batch, (float)logit_mean, (float)logit_std);
        int n_vec = batch / 16 * 16;
        for (int i = 0; i < batch; i++) {
            float e = i < n_vec ? sleef_expf_u10(0.0f - u[i]) : expf(-u[i]);
            u[i] = 1.0f / (1.0f + e);
        }
    } else if (scheme == DENSITY_MODE) {
        if (!isfinite(mode_scale))
            return sd3_errf(err, SD3_ERR_INVALID_ARG, "timestep sampling: mode_scale %g is not finite", mode_scale);
        /* u = 1 - u - mode_scale * (cos(pi * u / 2) ** 2 - 1 + u), one float32 op at a time */
        const float ms = (float)mode_scale;
        tgen_rand(g, u, batch);
        for (int i = 0; i < batch; i++) {
            float x = u[i];
            float a = PI_F * x;
            a = a / 2.0f;
            float c = sleef_cosf_u1(a);
            c = c * c;
            c = c - 1.0f;
            c = c + x;
            c = ms * c;
            float r = 1.0f - x;
            u[i] = r - c;
        }
    } else {
        tgen_rand(g, u, batch);
    }
    return SD3_OK;
}

int64_t density_index(float u, int num_train_timesteps) {
    float x = u * (float)num_train_timesteps;
    return (int64_t)x;
}

void density_loss_weighting(density_scheme scheme, const float *sigmas, float *w, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float s = sigmas[i];
        if (scheme == DENSITY_SIGMA_SQRT) {
            /* sigmas ** -2.0: torch's pow special case 1 / (s * s) */
            float s2 = s * s;
            w[i] = 1.0f / s2;
        } else if (scheme == DENSITY_COSMAP) {
            /* bot = 1 - 2 * s + 2 * s ** 2; w = 2 / (math.pi * bot) */
            float a = 2.0f * s;
            float b = 1.0f - a;
            float s2 = s * s;
            float c = 2.0f * s2;
            float bot = b + c;
            float d = PI_F * bot;
            w[i] = 2.0f / d;
        } else {
            w[i] = 1.0f;
        }
    }
}

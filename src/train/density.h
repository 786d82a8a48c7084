/*
 * density.h — the timestep sampling and loss weighting of train_dreambooth_lora_sd3.py
 * (diffusers.training_utils.compute_density_for_timestep_sampling / compute_loss_weighting_for_sd3).
 *
 * Usage (one training step, as the script does):
 *
 *     float u[B];
 *     density_sample(&gen, DENSITY_LOGIT_NORMAL, B, 0.0, 1.0, 1.29, u, &err);
 *     for (b...) { int64_t i = density_index(u[b], N);     // (u * N).long()
 *                  t[b] = sched.train_timesteps[i]; sigma[b] = sched.train_sigmas[i]; }
 *     density_loss_weighting(DENSITY_LOGIT_NORMAL, sigma, w, B);
 *
 * The draws come from a torch_gen (src/core/rng.h) exactly as torch draws them on the CPU, so the same
 * seed gives the script's u:
 *  - logit_normal: torch.normal(mean, std, size=(B,)) then sigmoid. For B < 16 that is the per-element
 *    double Box-Muller with the cached second value (rng.h); for B >= 16 torch switches to the float32
 *    block kernel (all B uniforms, blocks of 16, tail block redrawn, mean/std applied with one fma) —
 *    tgen_normal does the same, so both sizes match torch.
 *  - mode and every other name: torch.rand(B), one 24-bit uniform per element, for any B.
 * The float32 arithmetic follows torch's op by op, including its transcendental functions: torch.cos
 * (mode) is SLEEF's Sleef_cosf8_u10 for every element, and torch.sigmoid (logit_normal) uses SLEEF's
 * Sleef_expf8_u10 for whole blocks of 16 and libm expf for the rest (so expf for B < 16). Both SLEEF
 * functions are reproduced in scalar C (density.c); they are not always correctly rounded, and the
 * golden data shows torch's exact ulp.
 */
#ifndef SD3_DENSITY_H
#define SD3_DENSITY_H

#include "core/core.h"
#include "core/rng.h"

/* The script's --weighting_scheme; any name other than the four below behaves like DENSITY_NONE
 * (uniform u, weighting 1). */
typedef enum density_scheme {
    DENSITY_LOGIT_NORMAL = 0,   /* "logit_normal" (the script's default) */
    DENSITY_SIGMA_SQRT,         /* "sigma_sqrt" */
    DENSITY_MODE,               /* "mode" */
    DENSITY_COSMAP,             /* "cosmap" */
    DENSITY_NONE                /* "none" and any other name */
} density_scheme;

/* The scheme for a --weighting_scheme name (unknown names give DENSITY_NONE, as the script). */
density_scheme density_scheme_parse(const char *name);
const char *density_scheme_name(density_scheme s);

/* compute_density_for_timestep_sampling: u[0..batch) in [0, 1] drawn from g. logit_mean/logit_std are
 * used by logit_normal (std >= 0), mode_scale by mode. Errors: batch < 1, std negative or not finite. */
sd3_status density_sample(torch_gen *g, density_scheme scheme, int batch, double logit_mean, double logit_std,
                          double mode_scale, float *u, sd3_err *err);

/* (u * N).long(): the index into the scheduler's construction tables (float32 product, truncated).
 * u == 1 (possible after sigmoid) gives N, which torch would reject as out of range; callers check. */
int64_t density_index(float u, int num_train_timesteps);

/* compute_loss_weighting_for_sd3: sigma_sqrt -> sigma^-2, cosmap -> 2 / (pi (1 - 2 sigma + 2 sigma^2)),
 * otherwise 1; float32 as torch computes it. */
void density_loss_weighting(density_scheme scheme, const float *sigmas, float *w, int64_t n);

#endif /* SD3_DENSITY_H */

/*
 * flow.h — diffusers' FlowMatchEulerDiscreteScheduler (v0.32.2), reproduced with the same roundings.
 *
 * Usage (txt2img):
 *
 *     flow_config cfg = flow_config_default();
 *     cfg.shift = 3.0;                                   // SD3's scheduler_config.json
 *     flow_sched s;
 *     if (flow_create(&s, &cfg, &err) != SD3_OK) ...
 *     if (flow_set_timesteps(&s, 28, NULL, &err) != SD3_OK) ...
 *     for (int i = 0; i < s.n_steps; i++) {
 *         ... model_output = transformer(latents, s.timesteps[i]) ...
 *         flow_step(&s, s.timesteps[i], model_output, latents, latents, n, &err);
 *     }
 *     flow_free(&s);
 *
 * img2img: after flow_set_timesteps, flow_img2img_begin(&s, strength, &t_start, &err) picks the first
 * step (s.timesteps + t_start are run) and sets the begin index; flow_scale_noise(&s, s.timesteps[t_start],
 * init_latents, noise, out, n, &err) makes the noisy start latents.
 *
 * Precision (as diffusers, see ../shared/golden/README.md "Scheduler"):
 *  - construction, float32: t = 1000..1, s = t / 1000, s = shift*s / (1 + (shift-1)*s), timesteps = s*1000;
 *    sigma_max = s[0], sigma_min = s[N-1] kept as doubles. These tables (train_timesteps/train_sigmas)
 *    stay untouched by set_timesteps: training maps u -> index -> timestep/sigma through them.
 *  - set_timesteps(n): numpy linspace(sigma_max*N, sigma_min*N, n) and the shift in DOUBLE, then sigmas =
 *    (float) s, timesteps = sigmas * N in float32, a trailing 0 on sigmas (1 when invert_sigmas). As in
 *    diffusers, sigma_min is the already shifted table value and is shifted again (shift 3: the last
 *    non-zero sigma is 0.00893, not 0.00299).
 *    Dynamic shifting replaces the shift by exp(mu) / (exp(mu) + (1/s - 1)).
 *  - custom sigmas (diffusers' `sigmas=`): converted to float32 first, so the shift runs in float32.
 *  - step: prev = sample + (sigma_next - sigma) * model_output, float32, the difference rounded first.
 *  - scale_noise: sigma * noise + (1 - sigma) * sample, float32, each product rounded.
 * Not implemented (SD3 does not use them): use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas,
 * stochastic sampling; a config asking for them is refused with SD3_ERR_UNSUPPORTED.
 *
 * Thread safety: a flow_sched is plain data owned by one caller.
 */
#ifndef SD3_FLOW_H
#define SD3_FLOW_H

#include <cjson/cJSON.h>
#include "core/core.h"

/* The scheduler's configuration (scheduler_config.json fields). */
typedef struct flow_config {
    int num_train_timesteps;     /* N, default 1000 */
    double shift;                /* static shift, default 1.0 (SD3 / SD3.5 ship 3.0); > 0 */
    int use_dynamic_shifting;    /* shift from mu at set_timesteps (exponential time shift) */
    double base_shift, max_shift;                /* for flow_calculate_shift: 0.5, 1.15 */
    int base_image_seq_len, max_image_seq_len;   /* 256, 4096 */
    int invert_sigmas;           /* sigmas = 1 - sigmas, trailing 1 (default 0) */
    double shift_terminal;       /* stretch so the last sigma is this; 0 = off (diffusers' None) */
} flow_config;

/* diffusers' defaults: N 1000, shift 1, no dynamic shifting, base/max shift 0.5/1.15, seq 256/4096. */
flow_config flow_config_default(void);
/* Read a scheduler_config.json object over the defaults (absent/null keys keep them). Fails with
 * SD3_ERR_UNSUPPORTED for use_karras/exponential/beta_sigmas true, SD3_ERR_INVALID_ARG for bad values;
 * `label` (e.g. the file path) starts the error message. */
sd3_status flow_config_from_json(const cJSON *j, flow_config *cfg, const char *label, sd3_err *err);

/* Options of flow_set_timesteps; NULL means none of them. */
typedef struct flow_timesteps_opts {
    const float *sigmas;   /* custom sigma list (diffusers' `sigmas=`), n_steps values; NULL = linspace */
    int has_mu;            /* mu given (required when the config uses dynamic shifting, else ignored) */
    double mu;
} flow_timesteps_opts;

typedef struct flow_sched {
    flow_config cfg;
    /* construction tables (N values each, float32; used by training) */
    float *train_timesteps;      /* (N) */
    float *train_sigmas;         /* (N) */
    double sigma_min, sigma_max; /* train_sigmas[N-1], train_sigmas[0] */
    /* after flow_set_timesteps */
    int n_steps;
    float *timesteps;            /* (n_steps) */
    float *sigmas;               /* (n_steps + 1), last 0 (1 with invert_sigmas) */
    int step_index;              /* -1 until the first step (or scale_noise lookup) */
    int begin_index;             /* -1 = not set (diffusers' None) */
} flow_sched;

/* Build the scheduler and its construction tables. On failure *s is zeroed (flow_free is safe). */
sd3_status flow_create(flow_sched *s, const flow_config *cfg, sd3_err *err);
void flow_free(flow_sched *s);

/* set_timesteps(n_steps): the inference schedule (n_steps >= 1; with opts->sigmas, n_steps is their
 * count). Resets step_index and begin_index. Errors: n_steps < 1 or > 1e6, dynamic shifting without mu,
 * custom sigmas that are not finite values in [0, 1], out of memory. */
sd3_status flow_set_timesteps(flow_sched *s, int n_steps, const flow_timesteps_opts *opts, sd3_err *err);

/* diffusers' calculate_shift: mu growing linearly with the image token count from base to max shift. */
double flow_calculate_shift(int image_seq_len, int base_seq_len, int max_seq_len, double base_shift, double max_shift);

/* The SD3 img2img pipeline's get_timesteps: init = min(n * strength, n) (double), t_start = (int) max(n -
 * init, 0); the steps run are timesteps[t_start..n) and begin_index = t_start. strength must be in (0, 1]
 * and leave at least one step; otherwise SD3_ERR_INVALID_ARG and nothing changes. */
sd3_status flow_img2img_begin(flow_sched *s, double strength, int *t_start, sd3_err *err);

/* index_for_timestep: position of t in s->timesteps (the second match if t occurs more than once, as
 * diffusers does), or -1 if absent. */
int flow_index_for_timestep(const flow_sched *s, float t);

/* scale_noise (the forward process): out = sigma * noise + (1 - sigma) * sample with sigma =
 * sigmas[index], index = step_index if stepping has begun, else begin_index if set, else the index of
 * `timestep` in s->timesteps. out may alias sample or noise. */
sd3_status flow_scale_noise(const flow_sched *s, float timestep, const float *sample, const float *noise,
                            float *out, int64_t n, sd3_err *err);

/* One Euler step at `timestep`: prev = sample + (sigma[i+1] - sigma[i]) * model_output, i = step_index
 * (initialised on the first call from begin_index, or by looking `timestep` up), then step_index++.
 * prev may alias sample. Errors: timestep not in the schedule, stepping past the last step. */
sd3_status flow_step(flow_sched *s, float timestep, const float *model_output, const float *sample, float *prev,
                     int64_t n, sd3_err *err);

/* The Euler update on its own: prev[i] = sample[i] + (sigma_next - sigma) * model_output[i]. */
void flow_euler(const float *model_output, const float *sample, float *prev, int64_t n, float sigma, float sigma_next);

#endif /* SD3_FLOW_H */

/*
 * flow.c — FlowMatchEulerDiscreteScheduler (diffusers v0.32.2) with diffusers' roundings. See flow.h.
 *
 * Compiled with -ffp-contract=off: every float expression below rounds exactly where torch / numpy
 * round (one rounding per tensor op), which is what makes the tables and the Euler step bit-exact.
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
#include <string.h>
#include "io/json_util.h"
#include "sample/flow.h"

#define FLOW_MAX_STEPS 1000000

/* ------------------------------------------------------------------------------------------------ */
/* Configuration                                                                                    */
/* ------------------------------------------------------------------------------------------------ */

flow_config flow_config_default(void) {
    flow_config c;
    memset(&c, 0, sizeof c);
    c.num_train_timesteps = 1000;
    c.shift = 1.0;
    c.use_dynamic_shifting = 0;
    c.base_shift = 0.5;
    c.max_shift = 1.15;
    c.base_image_seq_len = 256;
    c.max_image_seq_len = 4096;
    c.invert_sigmas = 0;
    c.shift_terminal = 0.0;
    return c;
}

/* Check a configuration's values (used by flow_create and flow_config_from_json). */
static sd3_status config_check(const flow_config *c, const char *label, sd3_err *err) {
    if (c->num_train_timesteps < 1 || c->num_train_timesteps > FLOW_MAX_STEPS)
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: num_train_timesteps %d out of range [1, %d]", label,
                        c->num_train_timesteps, FLOW_MAX_STEPS);
    if (!(c->shift > 0.0) || !isfinite(c->shift))
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: shift %g must be a positive finite number", label, c->shift);
    if (!isfinite(c->shift_terminal) || c->shift_terminal < 0.0 || c->shift_terminal >= 1.0)
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: shift_terminal %g must be in [0, 1) (0 = none)", label,
                        c->shift_terminal);
    if (!isfinite(c->base_shift) || !isfinite(c->max_shift))
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: base_shift/max_shift must be finite", label);
    if (c->use_dynamic_shifting && c->max_image_seq_len == c->base_image_seq_len)
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: max_image_seq_len equals base_image_seq_len (%d)", label,
                        c->base_image_seq_len);
    return SD3_OK;
}

sd3_status flow_config_from_json(const cJSON *j, flow_config *cfg, const char *label, sd3_err *err) {
    if (!label) label = "scheduler config";
    if (!cJSON_IsObject(j)) return sd3_errf(err, SD3_ERR_FORMAT, "%s: not a JSON object", label);
    static const char *unsupported[] = {"use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"};
    for (size_t i = 0; i < sizeof unsupported / sizeof *unsupported; i++)
        if (json_bool(j, unsupported[i], 0))
            return sd3_errf(err, SD3_ERR_UNSUPPORTED, "%s: %s is not supported", label, unsupported[i]);
    const char *tst = json_str(j, "time_shift_type", "exponential");
    if (strcmp(tst, "exponential") != 0)
        return sd3_errf(err, SD3_ERR_UNSUPPORTED, "%s: time_shift_type '%s' is not supported", label, tst);
    cfg->num_train_timesteps = json_int(j, "num_train_timesteps", cfg->num_train_timesteps);
    cfg->shift = json_num(j, "shift", cfg->shift);
    cfg->use_dynamic_shifting = json_bool(j, "use_dynamic_shifting", cfg->use_dynamic_shifting);
    cfg->base_shift = json_num(j, "base_shift", cfg->base_shift);
    cfg->max_shift = json_num(j, "max_shift", cfg->max_shift);
    cfg->base_image_seq_len = json_int(j, "base_image_seq_len", cfg->base_image_seq_len);
    cfg->max_image_seq_len = json_int(j, "max_image_seq_len", cfg->max_image_seq_len);
    cfg->invert_sigmas = json_bool(j, "invert_sigmas", cfg->invert_sigmas);
    cfg->shift_terminal = json_num(j, "shift_terminal", cfg->shift_terminal);
    return config_check(cfg, label, err);
}

double flow_calculate_shift(int image_seq_len, int base_seq_len, int max_seq_len, double base_shift, double max_shift) {
    double m = (max_shift - base_shift) / (double)(max_seq_len - base_seq_len);
    double b = base_shift - m * (double)base_seq_len;
    return (double)image_seq_len * m + b;
}

/* ------------------------------------------------------------------------------------------------ */
/* Construction and set_timesteps                                                                   */
/* ------------------------------------------------------------------------------------------------ */

void flow_free(flow_sched *s) {
    if (!s) return;
    sd3_free(s->train_timesteps);
    sd3_free(s->train_sigmas);
    sd3_free(s->timesteps);
    sd3_free(s->sigmas);
    memset(s, 0, sizeof *s);
    s->step_index = s->begin_index = -1;
}

sd3_status flow_create(flow_sched *s, const flow_config *cfg, sd3_err *err) {
    memset(s, 0, sizeof *s);
    s->step_index = s->begin_index = -1;
    sd3_status st = config_check(cfg, "scheduler", err);
    if (st != SD3_OK) return st;
    s->cfg = *cfg;
    int N = cfg->num_train_timesteps;
    s->train_timesteps = sd3_malloc((size_t)N * sizeof(float));
    s->train_sigmas = sd3_malloc((size_t)N * sizeof(float));
    if (!s->train_timesteps || !s->train_sigmas) {
        flow_free(s);
        return sd3_errf(err, SD3_ERR_NOMEM, "scheduler: out of memory for %d train timesteps", N);
    }
    /* numpy linspace(1, N, N, float32)[::-1] holds the integers N..1; torch float32 ops from there. */
    const float fN = (float)N, shift = (float)cfg->shift, shift_m1 = (float)(cfg->shift - 1.0);
    for (int i = 0; i < N; i++) {
        float sg = (float)(N - i) / fN;
        if (!cfg->use_dynamic_shifting) sg = shift * sg / (1.0f + shift_m1 * sg);
        s->train_sigmas[i] = sg;
        s->train_timesteps[i] = sg * fN;
    }
    s->sigma_max = (double)s->train_sigmas[0];
    s->sigma_min = (double)s->train_sigmas[N - 1];
    return SD3_OK;
}

/* numpy.linspace(start, stop, n) (endpoint=True) in double: start + i*step, the last value = stop. */
static void linspace_f64(double start, double stop, int n, double *out) {
    if (n == 1) { out[0] = start; return; }
    double delta = stop - start, div = (double)(n - 1), step = delta / div;
    for (int i = 0; i < n; i++) {
        if (step == 0.0) out[i] = (double)i / div * delta + start;
        else out[i] = (double)i * step + start;
    }
    out[n - 1] = stop;
}

sd3_status flow_set_timesteps(flow_sched *s, int n_steps, const flow_timesteps_opts *opts, sd3_err *err) {
    const flow_config *c = &s->cfg;
    const float *custom = opts ? opts->sigmas : NULL;
    int has_mu = opts && opts->has_mu;
    double mu = has_mu ? opts->mu : 0.0;
    if (!s->train_sigmas) return sd3_errf(err, SD3_ERR_INVALID_ARG, "scheduler: not created (flow_create failed?)");
    if (n_steps < 1 || n_steps > FLOW_MAX_STEPS)
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "scheduler: number of steps %d out of range [1, %d]", n_steps,
                        FLOW_MAX_STEPS);
    if (c->use_dynamic_shifting && !has_mu)
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "scheduler: use_dynamic_shifting needs a value for mu");
    if (c->use_dynamic_shifting && !isfinite(mu))
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "scheduler: mu %g is not finite", mu);
    if (custom)
        for (int i = 0; i < n_steps; i++)
            if (!(custom[i] >= 0.0f && custom[i] <= 1.0f))
                return sd3_errf(err, SD3_ERR_INVALID_ARG, "scheduler: custom sigma[%d] = %g is not in [0, 1]", i,
                                (double)custom[i]);

    float *ts = sd3_malloc((size_t)n_steps * sizeof(float));
    float *sg = sd3_malloc((size_t)(n_steps + 1) * sizeof(float));
    double *d = custom ? NULL : sd3_malloc((size_t)n_steps * sizeof(double));
    if (!ts || !sg || (!custom && !d)) {
        sd3_free(ts); sd3_free(sg); sd3_free(d);
        return sd3_errf(err, SD3_ERR_NOMEM, "scheduler: out of memory for %d steps", n_steps);
    }
    const double N = (double)c->num_train_timesteps;
    if (!custom) {
        /* double path: numpy linspace of timesteps, then sigmas = t / N and the shift in float64 */
        linspace_f64(s->sigma_max * N, s->sigma_min * N, n_steps, d);
        for (int i = 0; i < n_steps; i++) {
            double x = d[i] / N;
            if (c->use_dynamic_shifting) {
                double e = exp(mu);
                x = e / (e + (1.0 / x - 1.0));
            } else {
                x = c->shift * x / (1.0 + (c->shift - 1.0) * x);
            }
            d[i] = x;
        }
        if (c->shift_terminal > 0.0) {
            double scale = (1.0 - d[n_steps - 1]) / (1.0 - c->shift_terminal);
            for (int i = 0; i < n_steps; i++) d[i] = 1.0 - (1.0 - d[i]) / scale;
        }
        for (int i = 0; i < n_steps; i++) sg[i] = (float)d[i];
    } else {
        /* float32 path: np.array(sigmas).astype(float32), numpy float32 ops with the Python scalars cast */
        const float shift = (float)c->shift, shift_m1 = (float)(c->shift - 1.0), e = (float)exp(mu);
        for (int i = 0; i < n_steps; i++) {
            float x = custom[i];
            if (c->use_dynamic_shifting) x = e / (e + (1.0f / x - 1.0f));
            else x = shift * x / (1.0f + shift_m1 * x);
            sg[i] = x;
        }
        if (c->shift_terminal > 0.0) {
            float scale = (float)((double)(1.0f - sg[n_steps - 1]) / (1.0 - c->shift_terminal));
            for (int i = 0; i < n_steps; i++) sg[i] = 1.0f - (1.0f - sg[i]) / scale;
        }
    }
    const float fN = (float)c->num_train_timesteps;
    if (c->invert_sigmas)
        for (int i = 0; i < n_steps; i++) sg[i] = 1.0f - sg[i];
    for (int i = 0; i < n_steps; i++) ts[i] = sg[i] * fN;
    sg[n_steps] = c->invert_sigmas ? 1.0f : 0.0f;

    sd3_free(d);
    sd3_free(s->timesteps);
    sd3_free(s->sigmas);
    s->timesteps = ts;
    s->sigmas = sg;
    s->n_steps = n_steps;
    s->step_index = -1;
    s->begin_index = -1;
    return SD3_OK;
}

/* ------------------------------------------------------------------------------------------------ */
/* img2img, scale_noise, step                                                                       */
/* ------------------------------------------------------------------------------------------------ */

sd3_status flow_img2img_begin(flow_sched *s, double strength, int *t_start, sd3_err *err) {
    if (!s->timesteps) return sd3_errf(err, SD3_ERR_INVALID_ARG, "scheduler: set_timesteps was not called");
    if (!(strength > 0.0 && strength <= 1.0))
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "img2img: strength %g must be in (0, 1]", strength);
    int n = s->n_steps;
    double init = (double)n * strength;
    if (init > (double)n) init = (double)n;
    double rest = (double)n - init;
    int t0 = rest > 0.0 ? (int)rest : 0;
    if (t0 >= n)
        return sd3_errf(err, SD3_ERR_INVALID_ARG,
                        "img2img: strength %g with %d steps leaves no denoising step (raise strength or steps)",
                        strength, n);
    s->begin_index = t0;
    s->step_index = -1;
    if (t_start) *t_start = t0;
    return SD3_OK;
}

int flow_index_for_timestep(const flow_sched *s, float t) {
    int first = -1;
    for (int i = 0; i < s->n_steps; i++)
        if (s->timesteps[i] == t) {
            if (first >= 0) return i;   /* the second match, as diffusers */
            first = i;
        }
    return first;
}

sd3_status flow_scale_noise(const flow_sched *s, float timestep, const float *sample, const float *noise,
                            float *out, int64_t n, sd3_err *err) {
    if (!s->timesteps) return sd3_errf(err, SD3_ERR_INVALID_ARG, "scheduler: set_timesteps was not called");
    int idx;
    if (s->begin_index < 0) {
        idx = flow_index_for_timestep(s, timestep);
        if (idx < 0)
            return sd3_errf(err, SD3_ERR_INVALID_ARG, "scale_noise: timestep %.9g is not in the schedule",
                            (double)timestep);
    } else {
        idx = s->step_index >= 0 ? s->step_index : s->begin_index;
    }
    if (idx > s->n_steps) return sd3_errf(err, SD3_ERR_INTERNAL, "scale_noise: index %d past the schedule", idx);
    const float sigma = s->sigmas[idx], one_m = 1.0f - sigma;
    for (int64_t i = 0; i < n; i++) {
        float a = sigma * noise[i];
        float b = one_m * sample[i];
        out[i] = a + b;
    }
    return SD3_OK;
}

void flow_euler(const float *model_output, const float *sample, float *prev, int64_t n, float sigma, float sigma_next) {
    const float dt = sigma_next - sigma;
    for (int64_t i = 0; i < n; i++) {
        float v = dt * model_output[i];
        prev[i] = sample[i] + v;
    }
}

sd3_status flow_step(flow_sched *s, float timestep, const float *model_output, const float *sample, float *prev,
                     int64_t n, sd3_err *err) {
    if (!s->timesteps) return sd3_errf(err, SD3_ERR_INVALID_ARG, "scheduler: set_timesteps was not called");
    if (s->step_index < 0) {
        if (s->begin_index >= 0) {
            s->step_index = s->begin_index;
        } else {
            int idx = flow_index_for_timestep(s, timestep);
            if (idx < 0)
                return sd3_errf(err, SD3_ERR_INVALID_ARG, "step: timestep %.9g is not in the schedule",
                                (double)timestep);
            s->step_index = idx;
        }
    }
    if (s->step_index >= s->n_steps)
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "step: all %d steps are done", s->n_steps);
    flow_euler(model_output, sample, prev, n, s->sigmas[s->step_index], s->sigmas[s->step_index + 1]);
    s->step_index++;
    return SD3_OK;
}

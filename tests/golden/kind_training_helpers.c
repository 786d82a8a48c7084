/*
 * kind_training_helpers.c — golden kind training_helpers: compute_density_for_timestep_sampling,
 * compute_loss_weighting_for_sd3 and the scheduler's init timesteps (src/train/density.h).
 *
 * Tensors:
 *   density_<scheme>_u    torch.manual_seed(S); compute_density_for_timestep_sampling(scheme, B, logit_mean,
 *                         logit_std, mode_scale); S and the parameters are read from the tensor's
 *                         description (the case has no other place for them), B from its shape.
 *   weighting_<scheme>    compute_loss_weighting_for_sd3(scheme, sigmas_in)
 *   init_timesteps_shift<S>  FlowMatchEulerDiscreteScheduler(shift=S).timesteps right after construction
 *   sigmas_in             input
 * Tolerances: bit-exact (atol 0) for all, unless a tensor gives a suggested_atol. u of the uniform
 * schemes is a pure function of the generator; weighting and the tables are fixed float32 op sequences.
 * logit_normal (sigmoid's exp) and mode (torch.cos) reproduce torch's own exp/cos (libm expf, SLEEF
 * cosf_u1; see density.h), so they are held to atol 0 too: with libm cosf one element of density_mode_u
 * is one ulp off.
 */
#include <stdlib.h>
#include <string.h>
#include "golden.h"
#include "io/json_util.h"
#include "core/rng.h"
#include "sample/flow.h"
#include "train/density.h"

/* Compare with the tensor's suggested_atol if the case gives one, else bit-exactly. */
static int th_check(golden_case *gc, const char *name, const float *got, int64_t n) {
    double atol = golden_atol(gc, name);
    return golden_check_atol(gc, name, got, n, atol >= 0 ? atol : 0.0);
}

/* The number after `key` in string s ("manual_seed(" -> 810, "logit_std=" -> 1); 0 if key is absent. */
static int find_num(const char *s, const char *key, double *out) {
    const char *p = s ? strstr(s, key) : NULL;
    if (!p) return 0;
    char *end;
    *out = strtod(p + strlen(key), &end);
    return end != p + strlen(key);
}

int golden_training_helpers(golden_case *gc) {
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(gc->json, "tensors"), *it;
    if (!cJSON_IsObject(ts)) { golden_fail(gc, "case has no \"tensors\" object"); return 1; }
    int64_t n_sig = 0;
    float *sig = golden_f32(gc, "sigmas_in", &n_sig);
    if (!sig) return 1;
    float *w = sd3_malloc((size_t)(n_sig ? n_sig : 1) * sizeof(float));
    if (!w) { sd3_free(sig); golden_fail(gc, "out of memory"); return 1; }

    cJSON_ArrayForEach(it, ts) {
        const char *name = it->string;
        size_t l = strlen(name);
        double shift;
        if (!strcmp(name, "sigmas_in")) continue;
        if (!strncmp(name, "weighting_", 10)) {
            density_loss_weighting(density_scheme_parse(name + 10), sig, w, n_sig);
            th_check(gc, name, w, n_sig);
        } else if (!strncmp(name, "density_", 8) && l > 10 && !strcmp(name + l - 2, "_u")) {
            char scheme[64];
            snprintf(scheme, sizeof scheme, "%.*s", (int)(l - 10), name + 8);
            const char *desc = json_str(it, "description", NULL);
            double seed, mean, std, mode_scale;
            if (!find_num(desc, "manual_seed(", &seed) || !find_num(desc, "logit_mean=", &mean) ||
                !find_num(desc, "logit_std=", &std) || !find_num(desc, "mode_scale=", &mode_scale)) {
                golden_fail(gc, "%s: description lacks manual_seed(..)/logit_mean=/logit_std=/mode_scale=", name);
                continue;
            }
            tensor t;
            if (golden_tensor(gc, name, &t)) continue;
            int64_t B = tensor_numel(&t);
            float *u = sd3_malloc((size_t)(B ? B : 1) * sizeof(float));
            if (!u) { golden_fail(gc, "out of memory"); continue; }
            torch_gen g;
            tgen_init(&g, (uint64_t)seed, TGEN_KERNEL_AVX2);
            sd3_err err = {0};
            if (density_sample(&g, density_scheme_parse(scheme), (int)B, mean, std, mode_scale, u, &err) != SD3_OK)
                golden_fail(gc, "%s: %s", name, err.msg);
            else
                th_check(gc, name, u, B);
            sd3_free(u);
        } else if (sscanf(name, "init_timesteps_shift%lf", &shift) == 1) {
            flow_config cfg = flow_config_default();
            cfg.shift = shift;
            flow_sched s;
            sd3_err err = {0};
            if (flow_create(&s, &cfg, &err) != SD3_OK) golden_fail(gc, "%s: %s", name, err.msg);
            else th_check(gc, name, s.train_timesteps, s.cfg.num_train_timesteps);
            flow_free(&s);
        } else {
            golden_fail(gc, "%s: unknown tensor for kind training_helpers", name);
        }
    }
    sd3_free(sig);
    sd3_free(w);
    return 0;
}

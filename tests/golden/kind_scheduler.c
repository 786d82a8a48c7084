/*
 * kind_scheduler.c — golden kinds scheduler_set_timesteps, scheduler_img2img, scheduler_step
 * (FlowMatchEulerDiscreteScheduler, src/sample/flow.h).
 *
 * Tolerances: every tensor here is produced by a fixed sequence of float32/float64 roundings that
 * flow.c reproduces exactly (README "Scheduler": tables, linspace + shift in double, scale_noise and the
 * Euler step in float32 without FMA), so each is compared bit-exactly (atol 0). Should a future case
 * give a tensor a suggested_atol, that one is used instead (sched_check).
 *
 * The scheduler's shift: the case's "shift" field if present, else 3.0 (SD3's scheduler_config.json);
 * set_timesteps tensors carry theirs in the name (init_shift<S>_*, shift<S>_steps<n>_*).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "golden.h"
#include "core/rng.h"
#include "sample/flow.h"

/* Compare with the tensor's suggested_atol if the case gives one, else bit-exactly (see top). */
static int sched_check(golden_case *gc, const char *name, const float *got, int64_t n) {
    double atol = golden_atol(gc, name);
    return golden_check_atol(gc, name, got, n, atol >= 0 ? atol : 0.0);
}

/* A scheduler with `shift` (diffusers defaults otherwise); records a failure and returns -1 on error. */
static int make_sched(golden_case *gc, flow_sched *s, double shift) {
    flow_config cfg = flow_config_default();
    cfg.shift = shift;
    sd3_err err = {0};
    if (flow_create(s, &cfg, &err) != SD3_OK) {
        golden_fail(gc, "flow_create: %s", err.msg);
        return -1;
    }
    return 0;
}

static double case_shift(golden_case *gc) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(gc->json, "shift");
    return cJSON_IsNumber(j) ? j->valuedouble : 3.0;
}

/* ------------------------------------------------------------------------------------------------ */

int golden_scheduler_set_timesteps(golden_case *gc) {
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(gc->json, "tensors"), *it;
    if (!cJSON_IsObject(ts)) { golden_fail(gc, "case has no \"tensors\" object"); return 1; }
    cJSON_ArrayForEach(it, ts) {
        const char *name = it->string;
        double shift;
        int steps = 0, init;
        char what[32] = "";
        if (sscanf(name, "init_shift%lf_%31s", &shift, what) == 2) init = 1;
        else if (sscanf(name, "shift%lf_steps%d_%31s", &shift, &steps, what) == 3) init = 0;
        else { golden_fail(gc, "%s: unknown tensor for kind scheduler_set_timesteps", name); continue; }
        int want_ts = !strcmp(what, "timesteps");
        if (!want_ts && strcmp(what, "sigmas") != 0) {
            golden_fail(gc, "%s: unknown tensor for kind scheduler_set_timesteps", name);
            continue;
        }
        flow_sched s;
        if (make_sched(gc, &s, shift)) continue;
        if (init) {
            sched_check(gc, name, want_ts ? s.train_timesteps : s.train_sigmas, s.cfg.num_train_timesteps);
        } else {
            sd3_err err = {0};
            if (flow_set_timesteps(&s, steps, NULL, &err) != SD3_OK) golden_fail(gc, "%s: %s", name, err.msg);
            else sched_check(gc, name, want_ts ? s.timesteps : s.sigmas, want_ts ? s.n_steps : s.n_steps + 1);
        }
        flow_free(&s);
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------------ */

/* Compare a scalar the case lists under values with what we computed. */
static void check_value(golden_case *gc, const char *key, const cJSON *v, const char *field, double got) {
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(v, field);
    if (!f) return;
    gc->n_checked++;
    if (!cJSON_IsNumber(f) || f->valuedouble != got)
        golden_fail(gc, "%s.%s: got %.17g, want %.17g", key, field, got, cJSON_IsNumber(f) ? f->valuedouble : NAN);
    else if (gc->verbose)
        printf("    ok   %s.%s = %.9g (exact)\n", key, field, got);
}

int golden_scheduler_img2img(golden_case *gc) {
    const cJSON *values = cJSON_GetObjectItemCaseSensitive(gc->json, "values"), *v;
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(gc->json, "tensors"), *it;
    if (!cJSON_IsObject(values) || !cJSON_IsObject(ts)) {
        golden_fail(gc, "case has no \"values\"/\"tensors\" objects");
        return 1;
    }
    int64_t n = 0, n2 = 0;
    float *init = golden_f32(gc, "init_latents", &n), *noise = golden_f32(gc, "noise", &n2);
    float *out = sd3_malloc((size_t)(n ? n : 1) * sizeof(float));
    if (!init || !noise || !out || n != n2) {
        if (init && noise && n != n2) golden_fail(gc, "init_latents and noise differ in size");
        sd3_free(init); sd3_free(noise); sd3_free(out);
        return 1;
    }
    const double shift = case_shift(gc);
    cJSON_ArrayForEach(v, values) {
        const char *key = v->string;
        char tname[256];
        flow_sched s;
        sd3_err err = {0};
        int steps, idx;
        if (make_sched(gc, &s, shift)) break;
        if (sscanf(key, "lookup_steps%d_idx%d", &steps, &idx) == 2) {
            /* scale_noise without begin_index: the sigma index is found from the timestep's value */
            if (flow_set_timesteps(&s, steps, NULL, &err) != SD3_OK || idx < 0 || idx >= steps) {
                golden_fail(gc, "%s: %s", key, err.msg[0] ? err.msg : "index out of range");
                flow_free(&s);
                continue;
            }
            float t = s.timesteps[idx];
            check_value(gc, key, v, "timestep", t);
            check_value(gc, key, v, "sigma_used", s.sigmas[flow_index_for_timestep(&s, t)]);
            snprintf(tname, sizeof tname, "%s_noisy_latents", key);
            if (flow_scale_noise(&s, t, init, noise, out, n, &err) != SD3_OK) golden_fail(gc, "%s: %s", key, err.msg);
            else sched_check(gc, tname, out, n);
        } else {
            const cJSON *js = cJSON_GetObjectItemCaseSensitive(v, "num_inference_steps");
            const cJSON *jst = cJSON_GetObjectItemCaseSensitive(v, "strength");
            if (!cJSON_IsNumber(js) || !cJSON_IsNumber(jst)) {
                golden_fail(gc, "%s: values need num_inference_steps and strength", key);
                flow_free(&s);
                continue;
            }
            int t_start = -1;
            if (flow_set_timesteps(&s, js->valueint, NULL, &err) != SD3_OK ||
                flow_img2img_begin(&s, jst->valuedouble, &t_start, &err) != SD3_OK) {
                golden_fail(gc, "%s: %s", key, err.msg);
                flow_free(&s);
                continue;
            }
            check_value(gc, key, v, "t_start", t_start);
            check_value(gc, key, v, "begin_index", s.begin_index);
            check_value(gc, key, v, "num_steps_run", s.n_steps - t_start);
            check_value(gc, key, v, "first_timestep", s.timesteps[t_start]);
            check_value(gc, key, v, "sigma_used", s.sigmas[t_start]);
            snprintf(tname, sizeof tname, "%s_timesteps", key);
            sched_check(gc, tname, s.timesteps + t_start, s.n_steps - t_start);
            snprintf(tname, sizeof tname, "%s_noisy_latents", key);
            /* the pipeline calls scale_noise with timesteps[:1] after set_begin_index(t_start) */
            if (flow_scale_noise(&s, s.timesteps[t_start], init, noise, out, n, &err) != SD3_OK)
                golden_fail(gc, "%s: %s", key, err.msg);
            else sched_check(gc, tname, out, n);
        }
        flow_free(&s);
    }
    /* every tensor must be an input or belong to one of the listed keys */
    cJSON_ArrayForEach(it, ts) {
        const char *name = it->string;
        if (!strcmp(name, "init_latents") || !strcmp(name, "noise")) continue;
        int found = 0;
        cJSON_ArrayForEach(v, values) {
            size_t l = strlen(v->string);
            if (!strncmp(name, v->string, l) && name[l] == '_' &&
                (!strcmp(name + l, "_timesteps") || !strcmp(name + l, "_noisy_latents")))
                found = 1;
        }
        if (!found) golden_fail(gc, "%s: tensor not covered by the case's values", name);
    }
    sd3_free(init);
    sd3_free(noise);
    sd3_free(out);
    return 0;
}

/* ------------------------------------------------------------------------------------------------ */

/* The generator seed in a values note ("... seed 604"), or -1. */
static long note_seed(const cJSON *v) {
    const char *note = cJSON_IsString(v) ? v->valuestring : NULL;
    if (!note) return -1;
    const char *p = strstr(note, "seed ");
    return p ? strtol(p + 5, NULL, 10) : -1;
}

int golden_scheduler_step(golden_case *gc) {
    const cJSON *values = cJSON_GetObjectItemCaseSensitive(gc->json, "values"), *v;
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(gc->json, "tensors"), *it;
    if (!cJSON_IsObject(values) || !cJSON_IsObject(ts)) {
        golden_fail(gc, "case has no \"values\"/\"tensors\" objects");
        return 1;
    }
    const double shift = case_shift(gc);
    cJSON_ArrayForEach(v, values) {
        const char *key = v->string;   /* "steps<n>" */
        int steps;
        if (sscanf(key, "steps%d", &steps) != 1 || steps < 1) {
            golden_fail(gc, "%s: cannot read the number of steps from the key", key);
            continue;
        }
        char name[256];
        snprintf(name, sizeof name, "%s_sample_0", key);
        int64_t n = 0;
        float *sample0 = golden_f32(gc, name, &n);
        if (!sample0) continue;
        float *x = sd3_malloc((size_t)n * sizeof(float)), *mo = sd3_malloc((size_t)n * sizeof(float));
        flow_sched s;
        if (!x || !mo || make_sched(gc, &s, shift)) {
            sd3_free(sample0); sd3_free(x); sd3_free(mo);
            continue;
        }
        sd3_err err = {0};
        if (flow_set_timesteps(&s, steps, NULL, &err) != SD3_OK) golden_fail(gc, "%s: %s", key, err.msg);
        /* Model outputs the file does not store are redrawn: the case drew sample_0 and then one randn of
         * the sample's shape per step from one generator (values.<key>.note gives the seed); the redrawn
         * sample_0 and stored model outputs are checked against the file first. */
        long seed = note_seed(cJSON_GetObjectItemCaseSensitive(v, "note"));
        torch_gen g;
        if (seed >= 0) {
            tgen_init(&g, (uint64_t)seed, TGEN_KERNEL_AVX2);
            tgen_randn(&g, x, n);
            sched_check(gc, name, x, n);
        }
        memcpy(x, sample0, (size_t)n * sizeof(float));
        for (int i = 0; i < s.n_steps && s.timesteps; i++) {
            snprintf(name, sizeof name, "%s_model_output_%d", key, i);
            int stored = golden_tensor_json(gc, name) != NULL;
            if (seed >= 0) {
                tgen_randn(&g, mo, n);
                if (stored) sched_check(gc, name, mo, n);
            } else if (stored) {
                float *m = golden_f32(gc, name, NULL);
                if (!m) break;
                memcpy(mo, m, (size_t)n * sizeof(float));
                sd3_free(m);
            } else {
                golden_fail(gc, "%s: not stored and no seed in values.%s.note to redraw it", name, key);
                break;
            }
            if (flow_step(&s, s.timesteps[i], mo, x, x, n, &err) != SD3_OK) {
                golden_fail(gc, "%s step %d: %s", key, i, err.msg);
                break;
            }
            snprintf(name, sizeof name, "%s_sample_%d", key, i + 1);
            if (golden_tensor_json(gc, name)) sched_check(gc, name, x, n);
        }
        flow_free(&s);
        sd3_free(sample0);
        sd3_free(x);
        sd3_free(mo);
    }
    /* every tensor must belong to one of the listed keys */
    cJSON_ArrayForEach(it, ts) {
        int found = 0;
        cJSON_ArrayForEach(v, values) {
            size_t l = strlen(v->string);
            if (!strncmp(it->string, v->string, l) && it->string[l] == '_') found = 1;
        }
        if (!found) golden_fail(gc, "%s: tensor not covered by the case's values", it->string);
    }
    return 0;
}

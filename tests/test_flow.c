/*
 * test_flow.c — FlowMatchEulerDiscreteScheduler (src/sample/flow.h) without golden data: the schedule's
 * shape, the shift formula, img2img edge cases, stepping, dynamic shifting, custom sigmas, errors.
 */
#include <math.h>
#include <string.h>
#include "io/json_util.h"
#include "sample/flow.h"
#include "test.h"

static flow_sched make(double shift) {
    flow_config c = flow_config_default();
    c.shift = shift;
    flow_sched s;
    sd3_err err = {0};
    sd3_status st = flow_create(&s, &c, &err);
    CHECK(st == SD3_OK, "flow_create: %s", err.msg);
    return s;
}

/* The construction tables: N values from sigma 1 down, timesteps = sigma * N, shift formula. */
static void test_construction(void) {
    flow_sched s = make(3.0);
    int N = s.cfg.num_train_timesteps;
    CHECK(N == 1000, "N %d", N);
    CHECK(s.train_sigmas[0] == 1.0f && s.train_timesteps[0] == 1000.0f, "first sigma %g", (double)s.train_sigmas[0]);
    double want_last = 3.0 * 0.001 / (1.0 + 2.0 * 0.001);
    CHECK(fabs(s.train_sigmas[N - 1] - want_last) < 1e-7, "last sigma %g want %g", (double)s.train_sigmas[N - 1], want_last);
    CHECK(s.sigma_max == 1.0 && s.sigma_min == (double)s.train_sigmas[N - 1], "sigma_min/max");
    int mono = 1, consistent = 1;
    for (int i = 1; i < N; i++) mono &= s.train_sigmas[i] < s.train_sigmas[i - 1];
    for (int i = 0; i < N; i++) consistent &= s.train_timesteps[i] == s.train_sigmas[i] * 1000.0f;
    CHECK(mono, "train sigmas strictly decreasing");
    CHECK(consistent, "train timesteps = sigmas * 1000");
    flow_free(&s);
    flow_free(&s);   /* double free is safe: the struct is zeroed */

    flow_sched u = make(1.0);
    CHECK(u.train_sigmas[500] == 500.0f / 1000.0f && u.train_timesteps[999] == 1.0f, "shift 1 is the identity");
    flow_free(&u);
}

/* set_timesteps: n values, n+1 sigmas ending in 0, decreasing, first 1000, the shift of a linear ramp. */
static void test_set_timesteps(void) {
    flow_sched s = make(3.0);
    sd3_err err = {0};
    const int ns[] = {1, 2, 4, 28, 50, 1000};
    for (size_t k = 0; k < sizeof ns / sizeof *ns; k++) {
        int n = ns[k];
        CHECK(flow_set_timesteps(&s, n, NULL, &err) == SD3_OK, "set_timesteps(%d): %s", n, err.msg);
        CHECK(s.n_steps == n, "n_steps %d", s.n_steps);
        CHECK(s.sigmas[n] == 0.0f, "last sigma %g", (double)s.sigmas[n]);
        CHECK(s.timesteps[0] == 1000.0f && s.sigmas[0] == 1.0f, "first timestep %g", (double)s.timesteps[0]);
        int dec = 1, ok = 1;
        double worst = 0;
        for (int i = 0; i < n; i++) {
            dec &= s.sigmas[i + 1] < s.sigmas[i];
            ok &= s.timesteps[i] == s.sigmas[i] * 1000.0f;
            double lin = n == 1 ? 1.0 : 1.0 + (double)i / (n - 1) * (s.sigma_min - 1.0);
            double want = 3.0 * lin / (1.0 + 2.0 * lin);
            worst = fmax(worst, fabs(s.sigmas[i] - want));
        }
        CHECK(dec, "steps %d: sigmas strictly decreasing", n);
        CHECK(ok, "steps %d: timesteps = sigmas * 1000", n);
        CHECK(worst < 1e-7, "steps %d: sigma off the shifted ramp by %g", n, worst);
        /* diffusers shifts sigma_min (already shifted at construction) a second time */
        if (n > 1)
            CHECK(s.sigmas[n - 1] == (float)(3.0 * s.sigma_min / (1.0 + 2.0 * s.sigma_min)),
                  "steps %d: last non-zero sigma is shift(sigma_min)", n);
    }
    /* invalid counts leave the schedule alone */
    CHECK(flow_set_timesteps(&s, 0, NULL, &err) == SD3_ERR_INVALID_ARG, "0 steps must fail");
    CHECK(strstr(err.msg, "steps") != NULL, "message names the steps: %s", err.msg);
    CHECK(flow_set_timesteps(&s, -3, NULL, &err) == SD3_ERR_INVALID_ARG, "-3 steps must fail");
    CHECK(flow_set_timesteps(&s, 2000000, NULL, &err) == SD3_ERR_INVALID_ARG, "2e6 steps must fail");
    CHECK(s.n_steps == 1000, "a failed call keeps the previous schedule");
    flow_free(&s);

    flow_config c = flow_config_default();
    c.shift = 0.0;
    CHECK(flow_create(&s, &c, &err) == SD3_ERR_INVALID_ARG, "shift 0 must fail");
    c.shift = 1.0;
    c.num_train_timesteps = 0;
    CHECK(flow_create(&s, &c, &err) == SD3_ERR_INVALID_ARG, "0 train timesteps must fail");
    CHECK(flow_set_timesteps(&s, 4, NULL, &err) == SD3_ERR_INVALID_ARG, "set_timesteps on a failed create must fail");
}

/* img2img: strength 1 runs everything, strength s runs about s*n steps, bad strengths fail. */
static void test_img2img(void) {
    flow_sched s = make(3.0);
    sd3_err err = {0};
    int t0 = -1;
    CHECK(flow_img2img_begin(&s, 0.5, &t0, &err) == SD3_ERR_INVALID_ARG, "img2img before set_timesteps must fail");
    flow_set_timesteps(&s, 28, NULL, &err);
    CHECK(flow_img2img_begin(&s, 1.0, &t0, &err) == SD3_OK && t0 == 0 && s.begin_index == 0, "strength 1: t_start %d", t0);
    CHECK(flow_img2img_begin(&s, 0.5, &t0, &err) == SD3_OK && t0 == 14, "strength 0.5: t_start %d", t0);
    /* 28 * 0.04 = 1.12 -> t_start = int(26.88) = 26: two steps */
    CHECK(flow_img2img_begin(&s, 0.04, &t0, &err) == SD3_OK && t0 == 26, "strength 0.04: t_start %d", t0);
    /* a small strength still runs one step (28 - 2.8e-5 truncates to 27) */
    CHECK(flow_img2img_begin(&s, 1e-6, &t0, &err) == SD3_OK && t0 == 27, "strength 1e-6: t_start %d", t0);
    /* a strength so small that n - n*strength rounds to n leaves no step: error, begin index unchanged */
    CHECK(flow_img2img_begin(&s, 1e-20, &t0, &err) == SD3_ERR_INVALID_ARG, "strength 1e-20 must fail");
    CHECK(s.begin_index == 27, "a failed call keeps the begin index (%d)", s.begin_index);
    const double bad[] = {0.0, -0.1, 1.5, NAN, INFINITY};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        CHECK(flow_img2img_begin(&s, bad[i], &t0, &err) == SD3_ERR_INVALID_ARG, "strength %g must fail", bad[i]);
    CHECK(strstr(err.msg, "strength") != NULL, "message names strength: %s", err.msg);

    /* scale_noise at the begin index: sigma * noise + (1 - sigma) * sample */
    float x[4] = {1, 2, 3, 4}, nz[4] = {-1, 0.5f, 0, 8}, out[4];
    flow_img2img_begin(&s, 1.0, &t0, &err);
    CHECK(flow_scale_noise(&s, s.timesteps[0], x, nz, out, 4, &err) == SD3_OK, "%s", err.msg);
    CHECK(!memcmp(out, nz, sizeof out), "sigma 1 gives pure noise");
    flow_img2img_begin(&s, 0.5, &t0, &err);
    flow_scale_noise(&s, s.timesteps[t0], x, nz, out, 4, &err);
    float sg = s.sigmas[t0];
    int ok = 1;
    for (int i = 0; i < 4; i++) ok &= fabsf(out[i] - (sg * nz[i] + (1 - sg) * x[i])) <= 1e-6f;
    CHECK(ok, "scale_noise mixes with sigma %g", (double)sg);
    /* without a begin index the sigma is looked up by timestep value */
    flow_set_timesteps(&s, 28, NULL, &err);
    CHECK(flow_scale_noise(&s, s.timesteps[10], x, nz, out, 4, &err) == SD3_OK, "lookup: %s", err.msg);
    CHECK(out[3] == s.sigmas[10] * 8.0f + (1.0f - s.sigmas[10]) * 4.0f, "lookup uses sigmas[10]");
    CHECK(flow_scale_noise(&s, 123.25f, x, nz, out, 4, &err) == SD3_ERR_INVALID_ARG, "unknown timestep must fail");
    flow_free(&s);
}

/* Euler stepping: a constant velocity v moves the sample by (0 - 1) * v over the whole schedule. */
static void test_step(void) {
    flow_sched s = make(3.0);
    sd3_err err = {0};
    float x[3] = {0.5f, -1.0f, 2.0f}, v[3] = {1.0f, 2.0f, -0.25f};
    CHECK(flow_step(&s, 1000.0f, v, x, x, 3, &err) == SD3_ERR_INVALID_ARG, "step before set_timesteps must fail");
    flow_set_timesteps(&s, 28, NULL, &err);
    float x0[3];
    memcpy(x0, x, sizeof x);
    for (int i = 0; i < s.n_steps; i++)
        CHECK(flow_step(&s, s.timesteps[i], v, x, x, 3, &err) == SD3_OK, "step %d: %s", i, err.msg);
    for (int j = 0; j < 3; j++) CHECK(fabsf(x[j] - (x0[j] - v[j])) < 2e-6f, "x[%d] = %g want %g", j, (double)x[j], (double)(x0[j] - v[j]));
    CHECK(flow_step(&s, s.timesteps[27], v, x, x, 3, &err) == SD3_ERR_INVALID_ARG, "stepping past the end must fail");

    /* first step found by timestep value when no begin index is set; the update's roundings */
    flow_set_timesteps(&s, 4, NULL, &err);
    float y[1] = {1.0f}, m[1] = {0.3f};
    CHECK(flow_step(&s, s.timesteps[2], m, y, y, 1, &err) == SD3_OK && s.step_index == 3, "lookup of step 2");
    float dt = s.sigmas[3] - s.sigmas[2];
    float prod = dt * 0.3f;
    CHECK(y[0] == 1.0f + prod, "prev = sample + (sigma_next - sigma) * v with the difference rounded first");
    flow_set_timesteps(&s, 4, NULL, &err);
    CHECK(flow_step(&s, 777.0f, m, y, y, 1, &err) == SD3_ERR_INVALID_ARG, "unknown timestep must fail");
    flow_free(&s);
}

/* Dynamic shifting: mu = log(3) reproduces the static shift 3, mu = 0 the identity; mu is required. */
static void test_dynamic(void) {
    flow_config c = flow_config_default();
    c.use_dynamic_shifting = 1;
    flow_sched d, st = make(3.0);
    sd3_err err = {0};
    CHECK(flow_create(&d, &c, &err) == SD3_OK, "%s", err.msg);
    CHECK(d.train_sigmas[999] == 0.001f, "no shift at construction with dynamic shifting");
    CHECK(flow_set_timesteps(&d, 10, NULL, &err) == SD3_ERR_INVALID_ARG, "dynamic shifting without mu must fail");
    flow_timesteps_opts o = {NULL, 1, log(3.0)};
    CHECK(flow_set_timesteps(&d, 10, &o, &err) == SD3_OK, "%s", err.msg);
    /* static shift 3 on the same linear ramp (the ramps differ: sigma_min is 0.001 here) */
    double worst = 0;
    for (int i = 0; i < 10; i++) {
        double lin = 1.0 + i / 9.0 * (0.001 - 1.0);
        worst = fmax(worst, fabs(d.sigmas[i] - 3.0 * lin / (1.0 + 2.0 * lin)));
    }
    CHECK(worst < 1e-7, "mu = log 3 is shift 3 (off by %g)", worst);
    o.mu = 0.0;
    flow_set_timesteps(&d, 10, &o, &err);
    CHECK(fabsf(d.sigmas[9] - 0.001f) < 1e-9f && d.sigmas[0] == 1.0f, "mu = 0 is no shift");
    double m0 = flow_calculate_shift(256, 256, 4096, 0.5, 1.15), m1 = flow_calculate_shift(4096, 256, 4096, 0.5, 1.15);
    CHECK(fabs(m0 - 0.5) < 1e-12 && fabs(m1 - 1.15) < 1e-12, "calculate_shift ends %g %g", m0, m1);
    flow_free(&d);
    flow_free(&st);
}

/* Custom sigmas (float32 path), index_for_timestep with duplicates, invert_sigmas, config JSON. */
static void test_custom_and_config(void) {
    flow_sched s = make(1.0);
    sd3_err err = {0};
    const float sig[4] = {1.0f, 0.5f, 0.5f, 0.25f};
    flow_timesteps_opts o = {sig, 0, 0};
    CHECK(flow_set_timesteps(&s, 4, &o, &err) == SD3_OK, "%s", err.msg);
    CHECK(s.sigmas[1] == 0.5f && s.sigmas[4] == 0.0f && s.timesteps[3] == 250.0f, "custom sigmas kept (shift 1)");
    CHECK(flow_index_for_timestep(&s, 500.0f) == 2, "a duplicated timestep gives the second match");
    CHECK(flow_index_for_timestep(&s, 250.0f) == 3 && flow_index_for_timestep(&s, 1.0f) == -1, "lookup");
    const float badsig[2] = {1.5f, 0.2f};
    o.sigmas = badsig;
    CHECK(flow_set_timesteps(&s, 2, &o, &err) == SD3_ERR_INVALID_ARG, "sigma 1.5 must fail");
    const float nansig[2] = {NAN, 0.2f};
    o.sigmas = nansig;
    CHECK(flow_set_timesteps(&s, 2, &o, &err) == SD3_ERR_INVALID_ARG, "NaN sigma must fail");
    flow_free(&s);

    flow_sched t = make(3.0);
    o.sigmas = sig;
    flow_set_timesteps(&t, 4, &o, &err);
    CHECK(t.sigmas[3] == 3.0f * 0.25f / (1.0f + 2.0f * 0.25f), "custom sigmas are shifted in float32");
    flow_free(&t);

    flow_config c = flow_config_default();
    c.invert_sigmas = 1;
    CHECK(flow_create(&t, &c, &err) == SD3_OK && flow_set_timesteps(&t, 4, NULL, &err) == SD3_OK, "%s", err.msg);
    CHECK(t.sigmas[4] == 1.0f && t.sigmas[0] == 0.0f, "invert_sigmas: %g .. %g", (double)t.sigmas[0], (double)t.sigmas[4]);
    flow_free(&t);

    cJSON *j = cJSON_Parse("{\"_class_name\": \"FlowMatchEulerDiscreteScheduler\", \"num_train_timesteps\": 1000,"
                           " \"shift\": 3.0, \"shift_terminal\": null, \"use_dynamic_shifting\": false,"
                           " \"use_karras_sigmas\": false}");
    c = flow_config_default();
    CHECK(flow_config_from_json(j, &c, "cfg.json", &err) == SD3_OK && c.shift == 3.0 && c.shift_terminal == 0.0,
          "config from JSON: %s", err.msg);
    cJSON_Delete(j);
    j = cJSON_Parse("{\"use_karras_sigmas\": true}");
    CHECK(flow_config_from_json(j, &c, "cfg.json", &err) == SD3_ERR_UNSUPPORTED, "karras sigmas are refused");
    CHECK(strstr(err.msg, "cfg.json") != NULL, "message names the file: %s", err.msg);
    cJSON_Delete(j);
    j = cJSON_Parse("{\"shift\": -2}");
    c = flow_config_default();
    CHECK(flow_config_from_json(j, &c, "cfg.json", &err) == SD3_ERR_INVALID_ARG, "negative shift refused");
    cJSON_Delete(j);
}

int main(void) {
    test_construction();
    test_set_timesteps();
    test_img2img();
    test_step();
    test_dynamic();
    test_custom_and_config();
    TEST_MAIN_END("test_flow");
}

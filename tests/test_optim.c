/*
 * test_optim.c — AdamW, clip_grad_norm_ and the rectified-flow loss (src/train/optim.h, grad.h):
 *
 *  - AdamW against the textbook algorithm written in double (bias-corrected moments, decoupled weight
 *    decay) over several steps, the zero-gradient case (pure decay), and the first-step closed form;
 *  - clip_grad_norm on hand-computed norms (3-4-12-13), clipped and not;
 *  - torch's own numbers from the golden training cases (diffusion/training/train_step_*): the AdamW step
 *    applied to torch's gradients must give torch's param_after_adamw, grad_total_norm of torch's
 *    gradients torch's grad_total_norm, and rf_loss_backward on torch's model_pred_raw torch's model_pred
 *    and loss, each within the tensor's suggested_atol from the case JSON.
 *
 *   test_optim [GOLDEN_ROOT]    (default $SD3_GOLDEN, else ../shared/golden)
 */
#include <math.h>
#include <string.h>
#include <unistd.h>
#include <cjson/cJSON.h>
#include "io/json_util.h"
#include "io/safetensors.h"
#include "test.h"
#include "train/grad.h"
#include "train/optim.h"

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;

/* Uniform in [-1, 1) (test data only). */
static float frand(void) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* ================================================================================================ */
/* AdamW and clipping on synthetic data                                                             */
/* ================================================================================================ */

/* Several AdamW steps against the textbook form in double: m_t = b1 m + (1-b1) g, v_t = b2 v + (1-b2) g^2,
 * p = p (1 - lr wd) - lr (m_t / (1-b1^t)) / (sqrt(v_t / (1-b2^t)) + eps). */
static void test_adamw_textbook(void) {
    enum { N = 37, STEPS = 6 };
    adamw_params hp = adamw_default();
    hp.lr = 1e-2; /* large enough that the updates dominate float rounding of p */
    hp.weight_decay = 0.05;
    float p[N], m[N] = {0}, v[N] = {0};
    double pd[N], md[N] = {0}, vd[N] = {0};
    for (int i = 0; i < N; i++) pd[i] = p[i] = frand();
    double worst = 0;
    for (int t = 1; t <= STEPS; t++) {
        float g[N];
        for (int i = 0; i < N; i++) g[i] = (i % 5 == 0 ? 1e-3f : 1.0f) * frand();
        adamw_step(p, g, m, v, N, t, &hp);
        for (int i = 0; i < N; i++) {
            pd[i] *= 1 - hp.lr * hp.weight_decay;
            md[i] = hp.beta1 * md[i] + (1 - hp.beta1) * g[i];
            vd[i] = hp.beta2 * vd[i] + (1 - hp.beta2) * (double)g[i] * g[i];
            double mh = md[i] / (1 - pow(hp.beta1, t)), vh = vd[i] / (1 - pow(hp.beta2, t));
            pd[i] -= hp.lr * mh / (sqrt(vh) + hp.eps);
            worst = fmax(worst, fabs(p[i] - pd[i]));
        }
    }
    printf("adamw vs double textbook, %d steps: max |p - p_double| %.2e (lr %g)\n", STEPS, worst, hp.lr);
    CHECK(worst < 1e-6, "adamw drifts %g from the double textbook form", worst);
    double mw = 0, vw = 0;
    for (int i = 0; i < N; i++) {
        mw = fmax(mw, fabs(m[i] - md[i]) / (fabs(md[i]) + 1e-12));
        vw = fmax(vw, fabs(v[i] - vd[i]) / (fabs(vd[i]) + 1e-20));
    }
    CHECK(mw < 1e-5 && vw < 1e-5, "moments off: m rel %g, v rel %g", mw, vw);
}

/* A zero gradient leaves only the decay: p * f(1 - lr wd) exactly; m and v stay 0. */
static void test_adamw_zero_grad(void) {
    adamw_params hp = adamw_default();
    float p[3] = {0.5f, -1.25f, 3.0f}, g[3] = {0}, m[3] = {0}, v[3] = {0};
    adamw_step(p, g, m, v, 3, 1, &hp);
    float d = (float)(1.0 - hp.lr * hp.weight_decay);
    CHECK(p[0] == 0.5f * d && p[1] == -1.25f * d && p[2] == 3.0f * d && m[0] == 0 && v[2] == 0,
          "zero gradient: p %.9g %.9g %.9g", p[0], p[1], p[2]);
}

/* First step, the README's closed form: p (1 - lr wd) - (lr / 0.1) m / (sqrt(v) / sqrt(0.001) + eps). */
static void test_adamw_first_step(void) {
    adamw_params hp = adamw_default();
    enum { N = 8 };
    float p[N], g[N] = {1e-3f, -2e-4f, 5e-9f, -1e-8f, 0.3f, -7.0f, 2e-6f, 1e-12f}, m[N] = {0}, v[N] = {0};
    double pd[N];
    for (int i = 0; i < N; i++) pd[i] = p[i] = frand();
    adamw_step(p, g, m, v, N, 1, &hp);
    double worst = 0;
    for (int i = 0; i < N; i++) {
        double mm = 0.1 * g[i], vv = 0.001 * (double)g[i] * g[i];
        double e = pd[i] * (1 - hp.lr * hp.weight_decay) - (hp.lr / 0.1) * mm / (sqrt(vv) / sqrt(0.001) + hp.eps);
        worst = fmax(worst, fabs(p[i] - e));
    }
    printf("adamw first step vs closed form (gradients 1e-12 .. 7): max err %.2e\n", worst);
    CHECK(worst < 2e-7, "first step off by %g", worst);
}

static void test_clip(void) {
    float a[2] = {3, 4}, b[1] = {12};
    float *gs[2] = {a, b};
    int64_t ns[2] = {2, 1};
    CHECK(grad_total_norm((const float *const *)gs, ns, 2) == 13.0f, "norm of (3, 4, 12) is %g",
          grad_total_norm((const float *const *)gs, ns, 2));
    float t = clip_grad_norm(gs, ns, 2, 100.0);
    CHECK(t == 13.0f && a[0] == 3 && a[1] == 4 && b[0] == 12, "no clipping expected: %g %g %g %g", t, a[0], a[1], b[0]);
    t = clip_grad_norm(gs, ns, 2, 1.0);
    float coef = 1.0f / (13.0f + 1e-6f);
    CHECK(t == 13.0f && a[0] == 3 * coef && a[1] == 4 * coef && b[0] == 12 * coef, "clipped: %g %g %g", a[0], a[1],
          b[0]);
    double after = sqrt((double)a[0] * a[0] + (double)a[1] * a[1] + (double)b[0] * b[0]);
    CHECK(fabs(after - 1.0) < 1e-6, "norm after clipping %.9g", after);
    CHECK(grad_total_norm(NULL, NULL, 0) == 0.0f, "empty set");
}

/* ================================================================================================ */
/* torch's numbers from the golden training cases                                                   */
/* ================================================================================================ */

/* A golden tensor copied to F32 (NULL if absent); *n gets its element count. */
static float *gload(const st_file *f, const char *name, int64_t *n) {
    tensor t;
    sd3_err err = {0};
    if (st_get(f, name, &t, &err) != SD3_OK) {
        CHECK(0, "%s", err.msg);
        return NULL;
    }
    int64_t k = tensor_numel(&t);
    float *p = malloc(sizeof(float) * (size_t)(k ? k : 1));
    tensor_to_f32(&t, 0, k, p);
    if (n) *n = k;
    return p;
}

/* suggested_atol of a tensor in the case JSON (0 if absent). */
static double atol_of(const cJSON *j, const char *name) {
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(j, "tensors");
    const cJSON *t = ts ? cJSON_GetObjectItemCaseSensitive(ts, name) : NULL;
    return t ? json_num(t, "suggested_atol", 0) : 0;
}

static void test_golden_case(const char *root, const char *cname) {
    char path[4096], jpath[4096];
    snprintf(path, sizeof path, "%s/diffusion/training/%s.safetensors", root, cname);
    snprintf(jpath, sizeof jpath, "%s/diffusion/training/%s.json", root, cname);
    sd3_err err = {0};
    st_file *f = NULL;
    cJSON *j = json_load_file(jpath, &err);
    if (!j || st_open(&f, path, &err) != SD3_OK) {
        CHECK(0, "%s", err.msg);
        cJSON_Delete(j);
        return;
    }
    const cJSON *opt = cJSON_GetObjectItemCaseSensitive(j, "optimizer");
    const cJSON *betas = opt ? cJSON_GetObjectItemCaseSensitive(opt, "betas") : NULL;
    adamw_params hp = adamw_default();
    CHECK(opt && betas && cJSON_GetArraySize(betas) == 2, "%s: optimizer block missing", cname);
    if (opt && betas) {
        hp.lr = json_num(opt, "lr", -1);
        hp.weight_decay = json_num(opt, "weight_decay", -1);
        hp.eps = json_num(opt, "eps", -1);
        hp.beta1 = cJSON_GetArrayItem(betas, 0)->valuedouble;
        hp.beta2 = cJSON_GetArrayItem(betas, 1)->valuedouble;
        adamw_params d = adamw_default();
        CHECK(hp.lr == d.lr && hp.weight_decay == d.weight_decay && hp.eps == d.eps && hp.beta1 == d.beta1 &&
                  hp.beta2 == d.beta2,
              "%s: optimizer settings differ from adamw_default()", cname);
    }

    /* every LoRA factor: grad, param_before, param_after_adamw */
    enum { MAXT = 256 };
    float *grads[MAXT];
    int64_t sizes[MAXT];
    int nt = 0, n_ok = 0, n_bad = 0, n_exact = 0;
    double worst_ratio = 0, worst_abs = 0;
    char worst_name[256] = "none";
    for (int e = 0; e < f->n && nt < MAXT; e++) {
        const char *name = f->entries[e].name;
        if (strncmp(name, "grad.", 5) != 0) continue;
        const char *key = name + 5;
        char nb[512], na[512];
        snprintf(nb, sizeof nb, "param_before.%s", key);
        snprintf(na, sizeof na, "param_after_adamw.%s", key);
        int64_t n = 0, n1 = 0, n2 = 0;
        float *g = gload(f, name, &n), *p = gload(f, nb, &n1), *pa = gload(f, na, &n2);
        if (!g || !p || !pa || n != n1 || n != n2) {
            CHECK(0, "%s: tensors for %s missing or misshaped", cname, key);
            free(g), free(p), free(pa);
            continue;
        }
        float *m = calloc((size_t)n, sizeof(float)), *v = calloc((size_t)n, sizeof(float));
        adamw_step(p, g, m, v, n, 1, &hp);
        double atol = atol_of(j, na), worst = 0;
        for (int64_t i = 0; i < n; i++) worst = fmax(worst, fabs((double)p[i] - pa[i]));
        if (atol > 0 && worst <= atol) n_ok++;
        else n_bad++;
        n_exact += worst == 0;
        worst_abs = fmax(worst_abs, worst);
        if (atol > 0 && worst / atol > worst_ratio) {
            worst_ratio = worst / atol;
            snprintf(worst_name, sizeof worst_name, "%s (err %.2e, atol %.0e)", key, worst, atol);
        }
        grads[nt] = g;
        sizes[nt++] = n;
        free(p), free(pa), free(m), free(v);
    }
    printf("%s: AdamW on torch's gradients: %d of %d factors within suggested_atol (%d bit-exact), max err %.2e; "
           "worst relative to atol: %s\n", cname, n_ok, n_ok + n_bad, n_exact, worst_abs, worst_name);
    CHECK(nt > 0 && n_bad == 0, "%s: %d factors off", cname, n_bad);

    /* grad_total_norm (no clipping happens in these cases) */
    int64_t one;
    float *tn = gload(f, "grad_total_norm", &one);
    if (tn) {
        float norm = clip_grad_norm(grads, sizes, nt, json_num(j, "max_grad_norm", 1.0));
        double atol = atol_of(j, "grad_total_norm");
        printf("%s: grad_total_norm %.9g vs torch %.9g (atol %.0e)\n", cname, norm, tn[0], atol);
        CHECK(fabs(norm - tn[0]) <= atol, "%s: total norm %.9g vs %.9g", cname, norm, tn[0]);
    }
    free(tn);
    for (int t = 0; t < nt; t++) free(grads[t]);

    /* the loss on torch's transformer output */
    int64_t n = 0, nb = 0;
    float *raw = gload(f, "model_pred_raw", &n), *noisy = gload(f, "noisy_model_input", NULL);
    float *target = gload(f, "target", NULL), *sig = gload(f, "sigmas", &nb), *w = gload(f, "weighting", NULL);
    float *mp = gload(f, "model_pred", NULL), *loss = gload(f, "loss", NULL);
    if (raw && noisy && target && sig && w && mp && loss && nb > 0) {
        float *pred = malloc(sizeof(float) * (size_t)n), *d = calloc((size_t)n, sizeof(float));
        float L = rf_loss_backward(d, pred, raw, noisy, target, sig, w, (int)nb, n / nb);
        double pe = 0;
        for (int64_t i = 0; i < n; i++) pe = fmax(pe, fabs(pred[i] - mp[i]));
        double la = atol_of(j, "loss"), pa = atol_of(j, "model_pred");
        printf("%s: loss %.9g vs torch %.9g (atol %.0e); model_pred max err %.2e (atol %.0e)\n", cname, L, loss[0],
               la, pe, pa);
        CHECK(fabs(L - loss[0]) <= la, "%s: loss %.9g vs %.9g", cname, L, loss[0]);
        CHECK(pe <= pa, "%s: model_pred off by %g", cname, pe);
        free(pred), free(d);
    } else CHECK(0, "%s: loss tensors missing", cname);
    free(raw), free(noisy), free(target), free(sig), free(w), free(mp), free(loss);
    st_close(f);
    cJSON_Delete(j);
}

int main(int argc, char **argv) {
    test_adamw_textbook();
    test_adamw_zero_grad();
    test_adamw_first_step();
    test_clip();
    const char *root = argc > 1 ? argv[1] : getenv("SD3_GOLDEN");
    if (!root) root = "../shared/golden";
    char probe[4096];
    snprintf(probe, sizeof probe, "%s/diffusion/training/train_step_none.json", root);
    if (access(probe, R_OK)) {
        CHECK(0, "golden data not found: %s (pass the golden root as argument or set SD3_GOLDEN)", probe);
        TEST_MAIN_END("test_optim");
    }
    const char *cases[] = {"train_step_logit_normal", "train_step_logit_normal_fresh_lora", "train_step_sigma_sqrt",
                           "train_step_cosmap", "train_step_mode", "train_step_none"};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) test_golden_case(root, cases[i]);
    TEST_MAIN_END("test_optim");
}

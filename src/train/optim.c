/*
 * optim.c — AdamW and gradient-norm clipping as torch 1.13 computes them (see optim.h for the exact
 * order of the float32 operations).
 */
/* Every a*b+c below rounds twice as torch's kernels do: the Makefile passes -ffp-contract=off, and these
 * pragmas keep it so under the compilers' default modes. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
#include <math.h>
#include "train/optim.h"

adamw_params adamw_default(void) {
    adamw_params hp = {.lr = 1e-4, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 1e-4};
    return hp;
}

void adamw_step(float *p, const float *g, float *m, float *v, int64_t n, int64_t step, const adamw_params *hp) {
    SD3_ASSERT(p && g && m && v && hp && n >= 0 && step >= 1);
    /* Python-level scalars (double), as _single_tensor_adamw computes them. */
    const double bc1 = 1.0 - pow(hp->beta1, (double)step);
    const double bc2 = 1.0 - pow(hp->beta2, (double)step);
    const double step_size = hp->lr / bc1;
    const double bc2_sqrt = sqrt(bc2);
    /* The same scalars as the float32 kernels see them. */
    const float decay = (float)(1.0 - hp->lr * hp->weight_decay);
    const float b1 = (float)hp->beta1, a1 = (float)(1.0 - hp->beta1);
    const float b2 = (float)hp->beta2, a2 = (float)(1.0 - hp->beta2);
    const float bc2s = (float)bc2_sqrt, eps = (float)hp->eps, neg_step = (float)(-step_size);
    for (int64_t i = 0; i < n; i++) {
        float pi = p[i] * decay;
        float mi = m[i] * b1;
        mi = mi + a1 * g[i];
        float vi = v[i] * b2;
        vi = vi + (a2 * g[i]) * g[i];
        float denom = sqrtf(vi) / bc2s + eps;
        p[i] = pi + (neg_step * mi) / denom;
        m[i] = mi;
        v[i] = vi;
    }
}

float grad_total_norm(const float *const *grads, const int64_t *n, int count) {
    SD3_ASSERT(count >= 0 && (count == 0 || (grads && n)));
    double total = 0;
    for (int t = 0; t < count; t++) {
        double ss = 0;
        for (int64_t i = 0; i < n[t]; i++) ss += (double)grads[t][i] * grads[t][i];
        float norm = (float)sqrt(ss);
        total += (double)norm * norm;
    }
    return (float)sqrt(total);
}

float clip_grad_norm(float *const *grads, const int64_t *n, int count, double max_norm) {
    float total = grad_total_norm((const float *const *)grads, n, count);
    float coef = (float)max_norm / (total + 1e-6f);
    if (coef < 1.0f)
        for (int t = 0; t < count; t++)
            for (int64_t i = 0; i < n[t]; i++) grads[t][i] *= coef;
    return total;
}

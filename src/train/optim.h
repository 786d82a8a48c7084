/*
 * optim.h — the optimiser side of train_dreambooth_lora_sd3.py: torch.optim.AdamW (torch 1.13 single-tensor
 * path, amsgrad off, maximize off) and torch.nn.utils.clip_grad_norm_ (L2), in float32 op by op as torch.
 *
 * Usage (one step over the LoRA factors, after the backward filled the gradients):
 *
 *     adamw_params hp = adamw_default();                          // the script's defaults
 *     float norm = clip_grad_norm(grads, sizes, count, 1.0);      // --max_grad_norm 1.0
 *     step++;                                                     // torch's state["step"] after += 1
 *     for (i...) adamw_step(params[i], grads[i], m[i], v[i], sizes[i], step, &hp);
 *
 * m and v (exp_avg, exp_avg_sq) start at zero, one float per parameter each, owned by the caller.
 */
#ifndef SD3_OPTIM_H
#define SD3_OPTIM_H

#include "core/core.h"

/* AdamW hyper-parameters, as Python floats (double); converted to float where torch converts them. */
typedef struct adamw_params {
    double lr;            /* learning rate (after the scheduler; the script's constant schedule: --learning_rate) */
    double beta1, beta2;  /* --adam_beta1 / --adam_beta2 */
    double eps;           /* --adam_epsilon */
    double weight_decay;  /* --adam_weight_decay (decoupled) */
} adamw_params;

/* The script's defaults: lr 1e-4, betas (0.9, 0.999), weight_decay 1e-4 (not torch's 1e-2), eps 1e-8. */
adamw_params adamw_default(void);

/* One AdamW step on n parameters p with gradients g and state m, v; step is the step number counting
 * this one (1 on the first call). torch 1.13 _single_tensor_adamw, in its order, in float32:
 *     p  = p * f(1 - lr wd)
 *     m  = m * f(b1);  m = m + f(1 - b1) g
 *     v  = v * f(b2);  v = v + (f(1 - b2) g) g
 *     denom = sqrt(v) / f(sqrt(1 - b2^step)) + f(eps)
 *     p  = p + (f(-lr / (1 - b1^step)) m) / denom
 * where f() rounds a double scalar to float (the bias corrections are computed in double as Python does).
 * torch's vectorised add may fuse m + a g into one FMA; here it is not fused (at most 1 ulp of m apart). */
void adamw_step(float *p, const float *g, float *m, float *v, int64_t n, int64_t step, const adamw_params *hp);

/* L2 norm over `count` gradient tensors (grads[i] of n[i] floats) as clip_grad_norm_ computes it: each
 * tensor's norm (accumulated in double, rounded to float), then the norm of those norms (float). */
float grad_total_norm(const float *const *grads, const int64_t *n, int count);

/* torch.nn.utils.clip_grad_norm_(params, max_norm): total = grad_total_norm, coef = f(max_norm) /
 * (total + 1e-6f), and when coef < 1 every gradient is multiplied by coef in place (torch multiplies by
 * the clamped coef, 1.0, otherwise, which changes nothing). Returns the total norm (before clipping). */
float clip_grad_norm(float *const *grads, const int64_t *n, int count, double max_norm);

#endif /* SD3_OPTIM_H */

/*
 * grad.h — backward passes of the ops between the rectified-flow loss and the LoRA parameters of the
 * MMDiT (issue 10: DreamBooth LoRA fine-tuning as diffusers' train_dreambooth_lora_sd3.py), in the llm.c
 * style: one `_backward` beside each forward op of kernels.h, same layouts, same argument order.
 *
 * Usage (one Linear with a LoRA on it, then a gated residual), all gradient buffers zeroed first:
 *
 *     k_linear(y, x, &W, &b, M, N, K);                        // frozen base
 *     lora_forward(y, h, x, A, Bm, s, M, N, K, r);            // y += s (x A^T) B^T, keeps h = x A^T
 *     ...
 *     lora_backward(dx, dA, dB, dy, x, h, A, Bm, s, M, N, K, r, &err);
 *     linear_backward(dx, NULL, NULL, dy, x, &W, M, N, K, &err); // base: dx only
 *
 * THE CONTRACT OF EVERY FUNCTION HERE: gradients are ACCUMULATED (dst += contribution), never written,
 * exactly as llm.c's backward does. Zero every gradient buffer (activations and parameters alike) before
 * the first contribution; a tensor read by two consumers (a residual stream feeding both a norm and the
 * skip path) then simply receives both contributions. Any gradient pointer documented "optional" may be
 * NULL to skip that gradient (frozen weights need only dx). Gradient outputs never alias inputs.
 *
 * Types: activations and gradients are F32 row-major ("rows" are tokens), as in kernels.h. Frozen weights
 * are tensors in any float dtype (F32/F16/BF16, views into the mmap); trainable LoRA factors are F32
 * arrays. Matrix products go through k_matmul (threaded; they follow k_set_precision like the forward).
 *
 * What to save from the forward is stated per function: mostly the op's INPUT (the forward of the MMDiT
 * works in place — k_modulate on the normed stream, k_gelu_tanh and qk RMSNorm in place — so a training
 * forward must keep the pre-op tensor, or recompute it, e.g. a LayerNorm output from its input).
 *
 * Errors: functions that need scratch memory return SD3_ERR_NOMEM (with a message in err) when it cannot
 * be allocated; everything else is a programmer error (SD3_ASSERT). Thread safety: none of these keep
 * state; the kernels' pool is process-wide, so run one at a time.
 *
 * Dimension letters: M rows, K input features, N output features, r LoRA rank, C channels of a row,
 * B batch, H heads, D head_dim, Tq/Tk query/key tokens.
 *
 * Recipe: the backward of one MMDiT joint block (mmdit.c joint_block), as tests/test_grad.c composes it.
 * gx / gc hold the gradient of the image / text stream and are carried through the residuals (the
 * gradient of a stream before a gated add is the gradient after it). The adaLN chunks (shift, scale,
 * gate) come from temb, which no LoRA factor influences: pass NULL for dshift / dscale / dgate.
 *   saved in the forward: x, c (block inputs), xn, cn (modulated: the q/k/v and LoRA inputs), every LoRA h,
 *   q, k before and after qk-norm, v, o (attention output), x1 (after the attention residual), its FF
 *   input xm, pre (FF hidden before GELU), GELU(pre), and the same for the text stream.
 *   FF:    df = 0; gated_add_backward(df, NULL, gx, ..., gate_mlp); lora/linear_backward(dh, ..., df, ff.net.2);
 *          gelu_tanh_backward(dpre, dh, pre); linear_backward(dxm, ..., dpre, ff.net.0.proj);
 *          modulate_backward(dln, NULL, NULL, dxm, NULL, scale_mlp); layernorm_backward(gx, dln, x1)
 *   attn:  dax = gate_msa gx (gated_add_backward); d_o[image rows] = to_out.0 backward (+ lora_backward);
 *          d_o[text rows] likewise through to_add_out (zero in the context_pre_only block);
 *          attention_backward(dq, dk, dv, d_o, q, k, v, o); rmsnorm_backward for qk-norm (pre-norm input);
 *          dxn += q/k/v Linear + LoRA backward on the image rows, dcn on the text rows;
 *          modulate_backward(dlnx, ..., dxn, ..., scale_msa); layernorm_backward(gx, dlnx, x); same for gc.
 *   The final AdaLayerNormContinuous + proj_out: linear_backward(proj_out), modulate_backward (scale and
 *   shift swapped as in the forward), layernorm_backward. Unpatchify is a permutation of the gradient.
 */
#ifndef SD3_GRAD_H
#define SD3_GRAD_H

#include "core/core.h"
#include "kernels/kernels.h"

/* ---- matrix products ------------------------------------------------------------------------ */

/* Backward of y[M,N] = x[M,K] W[N,K]^T + b[N] (k_linear). Accumulates dx[M,K] += dy W (optional),
 * dW[N,K] += dy^T x (optional, F32; x needed only then), db[N] += column sums of dy (optional).
 * W any float dtype. Saved from the forward: x (only if dW is wanted). Scratch: a slab of W in F32 and
 * a transposed copy of dy; SD3_ERR_NOMEM if that cannot be allocated. */
sd3_status linear_backward(float *dx, float *dW, float *db, const float *dy, const float *x, const tensor *W,
                           int M, int N, int K, sd3_err *err);

/* Cap the floats one scratch slab of linear_backward may take (default 4 Mi floats = 16 MB; slabs then
 * shrink to fit, down to one column). For tests of the slab loop; <= 0 restores the default. Returns the
 * previous cap. Set it from the main thread between calls. */
int64_t grad_set_scratch_limit(int64_t floats);

/* LoRA branch of a Linear (peft's LoraLayer with dropout 0): y[M,N] += s (x A^T) B^T, with
 * A [r,K] (lora_A.weight), Bm [N,r] (lora_B.weight), s = scale * alpha / r. Writes h[M,r] = x A^T, which
 * lora_backward needs (keep it; r floats per row). Accumulates into y: call after the base k_linear. */
void lora_forward(float *y, float *h, const float *x, const float *A, const float *Bm, float s, int M, int N,
                  int K, int r);

/* Backward of lora_forward. With dh = s dy Bm [M,r]: accumulates dB[N,r] += s dy^T h, dA[r,K] += dh^T x,
 * dx[M,K] += dh A (each optional). Saved from the forward: x and h. The base Linear's own dx contribution
 * is separate (linear_backward with dW = NULL). Scratch: dh (M r floats) and a transposed dy. */
sd3_status lora_backward(float *dx, float *dA, float *dB, const float *dy, const float *x, const float *h,
                         const float *A, const float *Bm, float s, int M, int N, int K, int r, sd3_err *err);

/* ---- normalisation -------------------------------------------------------------------------- */

/* Backward of the affine-free LayerNorm y = (x - mean) / sqrt(var + eps) over C per row (k_layernorm with
 * w = b = NULL; biased variance). dx[rows,C] += rstd (dy - mean(dy) - xhat mean(dy xhat)). Saved: the
 * INPUT x (statistics are recomputed in double, as k_layernorm_ref does). */
void layernorm_backward(float *dx, const float *dy, const float *x, int rows, int C, float eps);

/* Backward of RMSNorm y = x rs w, rs = 1 / sqrt(mean(x^2) + eps) (k_rmsnorm; qk-norm over D per head:
 * rows = tokens x heads, C = D, heads contiguous). dx += rs (g - x rs^2 mean(g x)) with g = dy w;
 * dw[C] += sum over rows of dy x rs (optional, F32). w any float dtype or NULL (no scale). Saved: the
 * INPUT x (the forward normalises q and k in place). */
void rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x, const tensor *w, int rows, int C,
                      float eps);

/* ---- adaLN pieces ----------------------------------------------------------------------------- */

/* Backward of y[r,c] = x[r,c] (1 + scale[c]) + shift[c] (k_modulate). dx += dy (1 + scale) (optional);
 * dscale[C] += sum_r dy x (optional); dshift[C] += sum_r dy (optional). Saved: x (for the MMDiT the
 * LayerNorm output, recomputable from its input) and scale. In the MMDiT shift/scale are chunks of the
 * adaLN Linear's output: accumulate into the matching chunks of that output's gradient. */
void modulate_backward(float *dx, float *dscale, float *dshift, const float *dy, const float *x, const float *scale,
                       int rows, int C);

/* Backward of the gated residual y[r,c] += gate[c] x[r,c] (k_gated_add). dx += gate dy (optional);
 * dgate[C] += sum_r dy x (optional). The residual path passes dy through unchanged: the gradient of the
 * stream before the add IS dy, so a caller keeping the stream's gradient in one buffer does nothing for
 * it. Saved: x (the branch output) and gate. */
void gated_add_backward(float *dx, float *dgate, const float *dy, const float *x, const float *gate, int rows,
                        int C);

/* ---- activations ---------------------------------------------------------------------------- */

/* Backward of GELU (tanh approximation) y = 0.5 x (1 + tanh(u)), u = sqrt(2/pi)(x + 0.044715 x^3):
 * dx += dy (0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 0.044715 x^2)). Saved: the INPUT x (the
 * MMDiT forward applies it in place on the FF hidden). */
void gelu_tanh_backward(float *dx, const float *dy, const float *x, size_t n);

/* Backward of SiLU y = x sigmoid(x): dx += dy s (1 + x (1 - s)), s = sigmoid(x). Saved: the INPUT x. */
void silu_backward(float *dx, const float *dy, const float *x, size_t n);

/* ---- softmax and attention ------------------------------------------------------------------ */

/* Backward of the row softmax y = softmax(x) over n values per row (k_softmax, in place there):
 * dx += y (dy - sum(dy y)). Saved: the OUTPUT y. */
void softmax_backward(float *dx, const float *dy, const float *y, int rows, int n);


/* Per-row log-sum-exp of the attention scores, lse[(b H + h) Tq + i] = log sum_j exp(scale q_i.k_j +
 * bias) over the unmasked keys (B H Tq floats), as attention_backward can take it. Same layout and
 * attn_params as k_attention; per (b, h) in parallel, per block of 64 queries against all keys (64 x Tk
 * scores at a time). SD3_ERR_NOMEM if the scratch cannot be allocated. */
sd3_status attention_lse(float *lse, const float *q, const float *k, const attn_params *p, sd3_err *err);

/* Backward of o = softmax(scale q k^T + bias) v (k_attention, same attn_params and strided layouts).
 * Accumulates dq += ..., dk += ..., dv += ... (each optional), written in the q / k / v layouts of p
 * (token t, head h of batch b at b*X_bstride + t*X_ld + h*D), so they may be slices of one fused dqkv
 * buffer. d_o is in the o layout. Saved from the forward: q, k, v (post qk-norm) and o; lse (B H Tq, from
 * attention_lse) is optional: NULL recomputes it. No gradient flows to bias. Work: per (b, h) in parallel
 * (disjoint outputs, no atomics), per block of 64 queries against all keys, recomputing P = exp(S - lse)
 * (FlashAttention-2's backward, products through k_matmul); nothing Tq x Tk is stored: scratch per
 * thread is the head's q, k, v, do, dq, dk, dv gathered contiguous plus 3 blocks of 64 x Tk floats
 * (about 3 T D + 5 T D + 192 T floats; 4 MB at T = 4429, D = 64). SD3_ERR_NOMEM if it cannot be allocated. */
sd3_status attention_backward(float *dq, float *dk, float *dv, const float *d_o, const float *q, const float *k,
                              const float *v, const float *o, const float *lse, const attn_params *p,
                              sd3_err *err);

/* ---- loss ----------------------------------------------------------------------------------- */

/* The script's loss: with precondition_outputs = 1 (its default; pass sigma) pred = raw (-sigma_b) + noisy
 * and target = the clean latents; with sigma = NULL pred = raw (precondition_outputs = 0, target = noise -
 * latents; noisy unused). loss = mean_b( mean_i( w_b (pred - target)^2 ) ) over B samples of n values each,
 * in float32 op by op as torch (the means accumulated in double). weighting NULL = 1. Returns the loss and,
 * if d_raw is not NULL, ACCUMULATES d_raw[b, i] += (-sigma_b) 2 w_b (pred - target) / (B n) (without
 * the -sigma_b factor when sigma is NULL): the gradient of the loss with respect to the transformer
 * output. If pred_out is not NULL it receives pred (B n floats). */
float rf_loss_backward(float *d_raw, float *pred_out, const float *raw, const float *noisy, const float *target,
                       const float *sigma, const float *weighting, int B, int64_t n);

#endif /* SD3_GRAD_H */

/*
 * train.h — LoRA training of the SD3 transformer as diffusers' train_dreambooth_lora_sd3.py: the MMDiT
 * training forward (keeping what the backward needs), the backward through the whole MMDiT into the
 * LoRA gradients (lora_train.h), gradient checkpointing per block, and the script's training step.
 *
 * Usage (one step, as the script's inner loop):
 *
 *     trainer tr;
 *     trainer_init(&tr, &model, &lora, 1);                 // 1 = gradient checkpointing
 *     lt_zero_grad(&lora);
 *     float loss;
 *     train_loss_backward(&tr, latents, noise, sigmas, timesteps, weighting, ctx, pooled, B, H, W, S,
 *                         1.0f, &loss, NULL, NULL, &err);     // accumulates the LoRA gradients
 *     float norm = train_clip_and_step(&lora, 1.0, ++step, &hp);   // clip_grad_norm_ + AdamW
 *     trainer_free(&tr);
 *
 * The forward is mmdit_forward's (same kernels, same op order), with the LoRA factors of lt_set applied
 * through lora_forward (grad.h) instead of the model's run-time adapter hook (which must be empty).
 * Memory: without checkpointing every block's activations stay until the backward (about
 * (14 C + 2 F) T floats per block and batch item); with checkpointing only each block's two input streams
 * are kept (C T floats per block) and a block's forward is recomputed, into one set of buffers, just
 * before its backward — the gradients are bit-identical either way (the recompute is deterministic).
 *
 * Supported: SD3 (plain joint blocks), qk RMSNorm (SD3.5), MMDiT-X dual-attention blocks (SD3.5 medium:
 * the image-only attn2 branch). Not supported: skip_layers. One trainer per thread; the kernels' pool is process-wide.
 */
#ifndef SD3_TRAIN_H
#define SD3_TRAIN_H

#include "core/core.h"
#include "mmdit/mmdit.h"
#include "train/lora_train.h"
#include "train/optim.h"

typedef struct train_block_acts train_block_acts;

typedef struct trainer {
    const mmdit_model *m;
    lt_set *lora;
    int checkpointing;
    int precondition_outputs;   /* the script's --precondition_outputs (1, set by trainer_init): pred = raw (-sigma)
                                   + noisy, target = x0; 0: pred = raw, target = noise - x0 */
    /* shapes of the current buffers */
    int B, H, W, S, Tx, Tc, T, C, F, nh, D, Pin, Pout, L;
    float *mem;                 /* one allocation carved into the buffers below */
    size_t mem_floats;
    float *patches, *sin, *t1, *t2, *temb, *stemb;
    float **xin, **cin;         /* block inputs: xin[i] is block i's image stream, xin[L] the final one */
    float *modo, *lno, *xo, *po;/* norm_out modulation, LN(x), modulated, proj_out output */
    train_block_acts *acts;     /* L slots (no checkpointing) or 1 */
    int n_acts;
    /* backward scratch */
    float *gx, *gc, *dpo, *dA1, *dA2, *dA3, *dA4, *dT1, *dT2, *d_o, *dq, *dk, *dv, *dq2, *dk2;
    int n_dual;                 /* MMDiT-X blocks in the model (their attn2 buffers are allocated) */
} trainer;

/* Set up (no allocation yet: buffers follow the shapes of the first forward). */
void trainer_init(trainer *tr, const mmdit_model *m, lt_set *lora, int checkpointing);
void trainer_free(trainer *tr);

/* Training forward: out (B, out, H, W) = the transformer with the LoRA of tr->lora, keeping what
 * trainer_backward needs. Same arguments as mmdit_forward (no skip_layers). */
sd3_status trainer_forward(trainer *tr, const float *x, int B, int H, int W, const float *ctx, int S,
                           const float *pooled, const float *timestep, float *out, sd3_err *err);

/* Backward of the last trainer_forward: d_out (B, out, H, W) = dLoss/dout. ACCUMULATES into the LoRA
 * gradients (dA, dB of every module); zero them first (lt_zero_grad). */
sd3_status trainer_backward(trainer *tr, const float *d_out, sd3_err *err);

/* The script's loss part of one step on B samples of latents (B, 16, H, W):
 *   noisy = (1 - sigma) x0 + sigma noise;  raw = transformer(noisy, t, ctx, pooled);
 *   pred = raw (-sigma) + noisy, target = x0 (tr->precondition_outputs, the default; else pred = raw,
 *   target = noise - x0);
 *   loss = mean_b(mean(w_b (pred - target)^2)),
 * then the backward of loss * loss_scale (loss_scale = 1 / gradient_accumulation_steps when averaging
 * over accumulation as accelerate does) into the LoRA gradients. Optional outputs: noisy, raw, pred
 * (B*16*H*W each). */
sd3_status train_loss_backward(trainer *tr, const float *x0, const float *noise, const float *sigmas,
                               const float *timesteps, const float *weighting, const float *ctx, const float *pooled,
                               int B, int H, int W, int S, float loss_scale, float *loss, float *noisy_out,
                               float *raw_out, float *pred_out, sd3_err *err);

/* Same with prior preservation (--with_prior_preservation): the last n_prior of the B samples are class
 * images; loss = instance loss (mean over the first B - n_prior) + prior_weight * prior loss (mean over
 * the last n_prior), as the script's torch.chunk(.., 2) split. n_prior 0 = train_loss_backward. */
sd3_status train_loss_backward_prior(trainer *tr, const float *x0, const float *noise, const float *sigmas,
                                     const float *timesteps, const float *weighting, const float *ctx,
                                     const float *pooled, int B, int n_prior, float prior_weight, int H, int W, int S,
                                     float loss_scale, float *loss, float *noisy_out, float *raw_out, float *pred_out,
                                     sd3_err *err);

/* clip_grad_norm_(max_norm) over every LoRA gradient (max_norm <= 0: no clipping), then one AdamW step
 * (step counts this one, from 1). Returns the total norm before clipping. */
float train_clip_and_step(lt_set *L, double max_norm, int64_t step, const adamw_params *hp);

/* The total L2 norm of the LoRA gradients, as clip_grad_norm_ computes it. */
float train_grad_norm(const lt_set *L);

#endif /* SD3_TRAIN_H */

/*
 * checkpoint.h — the training loop of train_dreambooth_lora_sd3.py over cached latents and prompt
 * embeddings, with atomic checkpoints and bit-identical resume.
 *
 * Usage:
 *
 *     train_opts o = train_opts_default();        // the script's defaults
 *     o.max_train_steps = 200; o.output_dir = "out";
 *     train_data d = {.n = 5, .H = 8, .W = 8, .latents = lat, ...};
 *     train_run(&model, &o, &d, &err);           // writes out/pytorch_lora_weights.safetensors
 *
 * A checkpoint "<output_dir>/checkpoint-<step>/" holds pytorch_lora_weights.safetensors (the LoRA, the
 * script's keys, loadable by src/lora) and training_state.safetensors (AdamW exp_avg/exp_avg_sq per
 * factor, the step, the generator's state, the data order), both written to "checkpoint-<step>.tmp/"
 * and renamed into place, so a crash never leaves a half checkpoint. Resuming restores all of it: the
 * run then continues exactly as the uninterrupted one (same bits).
 *
 * Randomness (one torch_gen seeded with --seed): per step, the batch's data indices (a fresh random
 * permutation of the instance set per epoch, drawn with tgen_u64), the posterior sample noise of each
 * latent (when std is given), the noise, and u from the density. The LoRA init (gaussian) draws first.
 */
#ifndef SD3_TRAIN_CHECKPOINT_H
#define SD3_TRAIN_CHECKPOINT_H

#include "core/core.h"
#include "mmdit/mmdit.h"
#include "train/density.h"
#include "train/lora_train.h"
#include "train/optim.h"

typedef enum lr_sched {
    LR_CONSTANT = 0, LR_CONSTANT_WARMUP, LR_LINEAR, LR_COSINE, LR_COSINE_RESTARTS, LR_POLYNOMIAL
} lr_sched;

/* diffusers.optimization.get_scheduler's factor for optimizer step `step` (0-based), warmup and total
 * steps: constant 1; constant_with_warmup step/warmup then 1; linear warmup then (total - step) /
 * (total - warmup); cosine warmup then 0.5 (1 + cos(pi progress)) (num_cycles 0.5). */
double lr_factor(lr_sched s, int64_t step, int64_t warmup, int64_t total);
/* The same with the script's --lr_num_cycles (cosine_with_restarts: hard restarts; plain cosine ignores it,
 * as get_scheduler does not pass it on) and --lr_power (polynomial decay to lr_end 1e-7 from lr_init):
 * cosine_with_restarts: progress >= 1 -> 0, else 0.5 (1 + cos(pi ((cycles progress) mod 1)));
 * polynomial: step > total -> lr_end / lr_init, else ((lr_init - lr_end) (1 - (step - warmup) /
 * (total - warmup))^power + lr_end) / lr_init. */
double lr_factor_ex(lr_sched s, int64_t step, int64_t warmup, int64_t total, int num_cycles, double power,
                    double lr_init);
/* "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"; -1 for
 * other names. */
int lr_sched_parse(const char *name);

typedef struct train_opts {
    int rank;                       /* --rank 4 (alpha = rank, as the script) */
    const char *lora_layers;        /* --lora_layers (NULL: the script's 8 attention projections) */
    const char *lora_blocks;        /* --lora_blocks (NULL: all) */
    int train_batch_size;           /* --train_batch_size 4 */
    int gradient_accumulation_steps;/* 1 */
    int max_train_steps;            /* optimizer steps (also the LR schedule's length) */
    int stop_after_steps;           /* stop (as if interrupted) once this many steps are done, leaving a
                                       checkpoint there and no final weights; 0 = never */
    int checkpointing_steps;        /* 500; 0 = none */
    int checkpoints_total_limit;    /* 0 = keep all */
    double learning_rate;           /* 1e-4 */
    lr_sched lr_scheduler;          /* constant */
    int lr_num_cycles;              /* 1 (cosine_with_restarts) */
    double lr_power;                /* 1.0 (polynomial) */
    int lr_warmup_steps;            /* 500 */
    double max_grad_norm;           /* 1.0 */
    adamw_params adam;              /* betas, eps, weight decay (lr is set per step) */
    density_scheme weighting;       /* logit_normal */
    double logit_mean, logit_std, mode_scale; /* 0, 1, 1.29 */
    uint64_t seed;                  /* --seed (0 when not given) */
    double flow_shift;              /* the scheduler's shift (3.0 for SD3 / SD3.5) */
    double prior_loss_weight;       /* --prior_loss_weight 1.0 (used when the data has class images) */
    int gradient_checkpointing;     /* 1 */
    int precondition_outputs;       /* 1 (the script's default) */
    const char *output_dir;
    const char *resume_from;        /* NULL, a checkpoint dir, or "latest" */
    /* progress: called after every optimizer step (may be NULL); validation: every validation_steps */
    void (*progress)(void *user, int64_t step, int64_t total, float loss, double lr, double seconds);
    int (*validation)(void *user, int64_t step, const lt_set *lora);
    int validation_steps;
    void *user;
    /* optional: the final state for tests */
    float *loss_curve;              /* max_train_steps floats: the mean loss of each optimizer step */
} train_opts;

train_opts train_opts_default(void);

/* The training set: n instance latents (16 x H x W) — the VAE posterior mean and, optionally, its std
 * (then each step samples mean + std * randn as latent_dist.sample()) — mapped with (x - shift) * scale,
 * and one prompt embedding (S x J, pooled P) shared by every instance (the instance prompt).
 * Prior preservation: n_class > 0 class latents with the class prompt's embedding. As the script's
 * DreamBoothDataset, the epoch runs over max(n, n_class) indices k (shuffled), each giving instance k % n
 * and class k % n_class; a micro-batch is [B instances ; B class images], each with its own prompt
 * (the script in diffusers v0.32.2 passes the 2-row prompt tensor unrepeated, which only works for batch 1;
 * for batch 1 the two agree). */
typedef struct train_data {
    int n, C, H, W, S, J, P;
    const float *mean, *std;        /* n x C x H x W each; std may be NULL */
    double shift, scale;            /* vae shift_factor / scaling_factor */
    const float *ctx, *pooled;      /* S x J, P */
    int n_class;                    /* class images (0: no prior preservation) */
    const float *class_mean, *class_std, *class_ctx, *class_pooled;
} train_data;

/* Run the loop (resuming when o->resume_from is set), writing checkpoints and, at the end,
 * <output_dir>/pytorch_lora_weights.safetensors. */
sd3_status train_run(const mmdit_model *m, const train_opts *o, const train_data *d, sd3_err *err);

#endif /* SD3_TRAIN_CHECKPOINT_H */

/*
 * bench_train.c — one LoRA training step of the SD3 transformer at full size (SD3 Medium shapes, random
 * bf16 weights from src/bench/synth: 24 blocks, width 1536), 512x512 (64x64 latents, 1024 image tokens),
 * batch 1, the script's max_sequence_length 77 (154 text tokens), the script's default LoRA (rank 4 on the
 * 8 attention projections of every block), gradient checkpointing on.
 *
 *   bench_train [--layers N] [--res PX] [--seq S] [--steps K] [--bf16] [--no-checkpointing] [--threads T]
 *
 * --layers N runs only the first N blocks (the model's config is cut): default 2, so `make bench` stays
 * short; 0 = all 24. The step time scales with the block count (plus the small fixed embedding /
 * final-layer part), and the report extrapolates to all blocks. Prints forward+backward seconds, seconds per block and
 * peak RSS (getrusage). --bf16 selects k_set_precision(1) (bf16 products where the CPU has them).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include "bench/synth.h"
#include "core/rng.h"
#include "kernels/kernels.h"
#include "train/grad.h"
#include "train/train.h"

/* Monotonic seconds. */
static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(int argc, char **argv) {
    int layers = 2, res = 512, S = 154, steps = 1, bf16 = 0, ckpt = 1, threads = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--layers") && i + 1 < argc) layers = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--res") && i + 1 < argc) res = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seq") && i + 1 < argc) S = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--bf16")) bf16 = 1;
        else if (!strcmp(argv[i], "--no-checkpointing")) ckpt = 0;
        else {
            fprintf(stderr, "usage: bench_train [--layers N] [--res PX] [--seq S] [--steps K] [--bf16] "
                            "[--no-checkpointing] [--threads T]\n");
            return 2;
        }
    }
    if (threads) pool_set_threads(threads);
    if (bf16) k_set_precision(1);
    sd3_err err = {0};
    char dir[4096];
    if (syn_component_dir(SYN_SD3_MEDIUM, SYN_MMDIT, DT_BF16, NULL, dir, sizeof dir, NULL, &err) != SD3_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    mmdit_model m;
    memset(&m, 0, sizeof m);
    if (mmdit_load_dir(&m, dir, &err) != SD3_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    const int all = m.cfg.num_layers;
    if (layers > 0 && layers < all) m.cfg.num_layers = layers;
    const int L = m.cfg.num_layers, h = res / 8, J = m.cfg.joint_attention_dim, P = m.cfg.pooled_projection_dim;
    const int64_t n = 16LL * h * h;
    lt_set lora;
    if (lt_create(&lora, &m, 4, 4.0f, NULL, NULL, &err) != SD3_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    torch_gen g;
    tgen_init(&g, 1, TGEN_KERNEL_AVX2);
    lt_init_gaussian(&lora, &g);
    float *x0 = malloc(sizeof(float) * (size_t)n), *noise = malloc(sizeof(float) * (size_t)n);
    float *ctx = malloc(sizeof(float) * (size_t)S * J), *pooled = malloc(sizeof(float) * (size_t)P);
    tgen_randn(&g, x0, n), tgen_randn(&g, noise, n), tgen_randn(&g, ctx, (int64_t)S * J), tgen_randn(&g, pooled, P);
    float sig = 0.7f, t = 700.0f, w = 1.0f;
    trainer tr;
    trainer_init(&tr, &m, &lora, ckpt);
    printf("bench_train: SD3 Medium shapes (bf16 weights), %d of %d blocks, %dx%d (%d image + %d text tokens), batch 1, "
           "LoRA rank 4 on %d modules (%lld parameters), checkpointing %s, precision %s, %d threads\n",
           L, all, res, res, h * h / 4, S, lora.n, (long long)lt_numel(&lora), ckpt ? "on" : "off",
           bf16 ? "bf16" : "f32", pool_threads());
    double best = 1e30;
    for (int s = 0; s < steps; s++) {
        lt_zero_grad(&lora);
        float loss;
        double t0 = now_s();
        if (train_loss_backward(&tr, x0, noise, &sig, &t, &w, ctx, pooled, 1, h, h, S, 1.0f, &loss, NULL, NULL, NULL,
                                &err) != SD3_OK) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
        adamw_params hp = adamw_default();
        train_clip_and_step(&lora, 1.0, s + 1, &hp);
        double dt = now_s() - t0;
        if (dt < best) best = dt;
        printf("step %d: %.2f s (loss %.4f)\n", s + 1, dt, loss);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("best step %.2f s for %d blocks = %.2f s per block -> about %.0f s per step for all %d blocks; "
           "activation buffers %.0f MiB; peak RSS %.0f MiB\n",
           best, L, best / L, best / L * all, all, (double)tr.mem_floats * 4 / 1048576, ru.ru_maxrss / 1024.0);
    trainer_free(&tr);
    lt_free(&lora);
    mmdit_free(&m);
    free(x0), free(noise), free(ctx), free(pooled);
    return 0;
}

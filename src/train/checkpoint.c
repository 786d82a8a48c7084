/*
 * checkpoint.c — the training loop, LR schedules and atomic checkpoints / resume (see checkpoint.h).
 */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "sample/flow.h"
#include "train/checkpoint.h"
#include "train/train.h"

double lr_factor_ex(lr_sched s, int64_t step, int64_t warmup, int64_t total, int num_cycles, double power,
                    double lr_init) {
    if (s == LR_CONSTANT) return 1.0;
    if (step < warmup) return (double)step / (double)(warmup > 1 ? warmup : 1);
    if (s == LR_CONSTANT_WARMUP) return 1.0;
    double span = (double)(total - warmup > 1 ? total - warmup : 1);
    if (s == LR_LINEAR) return fmax(0.0, (double)(total - step) / span);
    double progress = (double)(step - warmup) / span;
    if (s == LR_COSINE) return fmax(0.0, 0.5 * (1.0 + cos(M_PI * 0.5 * 2.0 * progress)));
    if (s == LR_COSINE_RESTARTS) {
        if (progress >= 1.0) return 0.0;
        return fmax(0.0, 0.5 * (1.0 + cos(M_PI * fmod((double)num_cycles * progress, 1.0))));
    }
    /* polynomial */
    const double lr_end = 1e-7;
    if (step > total) return lr_end / lr_init;
    double pct = 1.0 - (double)(step - warmup) / (double)(total - warmup);
    return ((lr_init - lr_end) * pow(pct, power) + lr_end) / lr_init;
}

double lr_factor(lr_sched s, int64_t step, int64_t warmup, int64_t total) {
    return lr_factor_ex(s, step, warmup, total, 1, 1.0, 1e-4);
}

int lr_sched_parse(const char *name) {
    if (!strcmp(name, "constant")) return LR_CONSTANT;
    if (!strcmp(name, "constant_with_warmup")) return LR_CONSTANT_WARMUP;
    if (!strcmp(name, "linear")) return LR_LINEAR;
    if (!strcmp(name, "cosine")) return LR_COSINE;
    if (!strcmp(name, "cosine_with_restarts")) return LR_COSINE_RESTARTS;
    if (!strcmp(name, "polynomial")) return LR_POLYNOMIAL;
    return -1;
}

train_opts train_opts_default(void) {
    train_opts o;
    memset(&o, 0, sizeof o);
    o.rank = 4;
    o.train_batch_size = 4;
    o.gradient_accumulation_steps = 1;
    o.max_train_steps = 500;
    o.checkpointing_steps = 500;
    o.learning_rate = 1e-4;
    o.lr_scheduler = LR_CONSTANT;
    o.lr_warmup_steps = 500;
    o.lr_num_cycles = 1;
    o.lr_power = 1.0;
    o.max_grad_norm = 1.0;
    o.adam = adamw_default();
    o.weighting = DENSITY_LOGIT_NORMAL;
    o.logit_mean = 0.0, o.logit_std = 1.0, o.mode_scale = 1.29;
    o.flow_shift = 3.0;
    o.prior_loss_weight = 1.0;
    o.gradient_checkpointing = 1;
    o.precondition_outputs = 1;
    o.output_dir = "sd3-dreambooth-lora";
    return o;
}

/* The loop's mutable state besides the LoRA set: what a checkpoint must hold. */
typedef struct loop_state {
    int64_t step;          /* optimizer steps done */
    torch_gen gen;
    int32_t *perm;         /* current epoch's order of the instances */
    int64_t pos;           /* next position in perm (n: draw a new permutation first) */
} loop_state;

/* Next instance index: a new Fisher-Yates permutation (tgen_u64) at each epoch start. */
static int next_index(loop_state *ls, int n) {
    if (ls->pos >= n) {
        for (int i = 0; i < n; i++) ls->perm[i] = i;
        for (int i = n - 1; i > 0; i--) {
            int j = (int)(tgen_u64(&ls->gen) % (uint64_t)(i + 1));
            int32_t t = ls->perm[i];
            ls->perm[i] = ls->perm[j], ls->perm[j] = t;
        }
        ls->pos = 0;
    }
    return ls->perm[ls->pos++];
}

/* Remove a directory's plain files and the directory (checkpoint folders hold only files). */
static void remove_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char p[4400];
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            unlink(p);
        }
    closedir(d);
    rmdir(dir);
}

/* Write checkpoint-<step> atomically: into checkpoint-<step>.tmp, then renamed. */
static sd3_status save_checkpoint(const char *out, const lt_set *L, const loop_state *ls, int n, sd3_err *err) {
    char dir[4096], tmp[4200], path[4400];
    snprintf(dir, sizeof dir, "%s/checkpoint-%lld", out, (long long)ls->step);
    snprintf(tmp, sizeof tmp, "%s.tmp", dir);
    remove_dir(tmp);
    if (mkdir(tmp, 0777) && errno != EEXIST)
        return sd3_errf(err, SD3_ERR_IO, "checkpoint: cannot create %s: %s", tmp, strerror(errno));
    snprintf(path, sizeof path, "%s/pytorch_lora_weights.safetensors", tmp);
    sd3_status s = lt_save(L, path, err);
    if (s != SD3_OK) return s;
    st_writer *w = st_writer_new();
    if (!w) return sd3_errf(err, SD3_ERR_NOMEM, "checkpoint: out of memory");
    char key[256];
    for (int i = 0; i < L->n && s == SD3_OK; i++) {
        const lt_module *md = &L->mods[i];
        int64_t sa[2] = {md->r, md->K}, sb[2] = {md->N, md->r};
        snprintf(key, sizeof key, "%s.lora_A.exp_avg", md->name);
        s = st_writer_add(w, key, DT_F32, 2, sa, md->mA, err);
        snprintf(key, sizeof key, "%s.lora_A.exp_avg_sq", md->name);
        if (s == SD3_OK) s = st_writer_add(w, key, DT_F32, 2, sa, md->vA, err);
        snprintf(key, sizeof key, "%s.lora_B.exp_avg", md->name);
        if (s == SD3_OK) s = st_writer_add(w, key, DT_F32, 2, sb, md->mB, err);
        snprintf(key, sizeof key, "%s.lora_B.exp_avg_sq", md->name);
        if (s == SD3_OK) s = st_writer_add(w, key, DT_F32, 2, sb, md->vB, err);
    }
    int64_t one = 1, ng = (int64_t)sizeof ls->gen, nn = n;
    if (s == SD3_OK) s = st_writer_add(w, "step", DT_I64, 1, &one, &ls->step, err);
    if (s == SD3_OK) s = st_writer_add(w, "rng_state", DT_U8, 1, &ng, &ls->gen, err);
    if (s == SD3_OK) s = st_writer_add(w, "data_perm", DT_I32, 1, &nn, ls->perm, err);
    if (s == SD3_OK) s = st_writer_add(w, "data_pos", DT_I64, 1, &one, &ls->pos, err);
    snprintf(path, sizeof path, "%s/training_state.safetensors", tmp);
    if (s == SD3_OK) s = st_writer_write(w, path, err);
    st_writer_free(w);
    if (s != SD3_OK) return s;
    remove_dir(dir);
    if (rename(tmp, dir))
        return sd3_errf(err, SD3_ERR_IO, "checkpoint: cannot rename %s to %s: %s", tmp, dir, strerror(errno));
    return SD3_OK;
}

/* "latest": the checkpoint-<N> folder of out with the largest N (empty string if none). */
static void latest_checkpoint(const char *out, char *dir, size_t n) {
    dir[0] = 0;
    DIR *d = opendir(out);
    if (!d) return;
    long long best = -1;
    struct dirent *e;
    while ((e = readdir(d))) {
        char *end;
        if (strncmp(e->d_name, "checkpoint-", 11)) continue;
        long long k = strtoll(e->d_name + 11, &end, 10);
        if (*end || end == e->d_name + 11) continue;
        if (k > best) best = k;
    }
    closedir(d);
    if (best >= 0) snprintf(dir, n, "%s/checkpoint-%lld", out, best);
}

/* Copy a tensor of the state file into dst (n bytes, exact size required). */
static sd3_status state_get(const st_file *f, const char *name, void *dst, size_t n, sd3_err *err) {
    tensor t;
    sd3_status s = st_get(f, name, &t, err);
    if (s != SD3_OK) return s;
    if ((size_t)tensor_numel(&t) * dtype_size(t.dt) != n)
        return sd3_errf(err, SD3_ERR_FORMAT, "checkpoint: %s has %lld elements of another size than expected "
                        "(a checkpoint of another model or build?)", name, (long long)tensor_numel(&t));
    memcpy(dst, t.data, n);
    return SD3_OK;
}

/* Restore LoRA, optimizer state, step, generator and data order from a checkpoint folder. */
static sd3_status load_checkpoint(const char *dir, lt_set *L, loop_state *ls, int n, sd3_err *err) {
    char path[4400];
    st_file *f = NULL;
    snprintf(path, sizeof path, "%s/pytorch_lora_weights.safetensors", dir);
    sd3_status s = st_open(&f, path, err);
    if (s != SD3_OK) return s;
    s = lt_load_st(L, f, "transformer.", err);
    st_close(f);
    if (s != SD3_OK) return s;
    snprintf(path, sizeof path, "%s/training_state.safetensors", dir);
    if ((s = st_open(&f, path, err)) != SD3_OK) return s;
    char key[256];
    for (int i = 0; i < L->n && s == SD3_OK; i++) {
        lt_module *md = &L->mods[i];
        size_t na = sizeof(float) * (size_t)md->r * md->K, nb = sizeof(float) * (size_t)md->N * md->r;
        snprintf(key, sizeof key, "%s.lora_A.exp_avg", md->name);
        s = state_get(f, key, md->mA, na, err);
        snprintf(key, sizeof key, "%s.lora_A.exp_avg_sq", md->name);
        if (s == SD3_OK) s = state_get(f, key, md->vA, na, err);
        snprintf(key, sizeof key, "%s.lora_B.exp_avg", md->name);
        if (s == SD3_OK) s = state_get(f, key, md->mB, nb, err);
        snprintf(key, sizeof key, "%s.lora_B.exp_avg_sq", md->name);
        if (s == SD3_OK) s = state_get(f, key, md->vB, nb, err);
    }
    if (s == SD3_OK) s = state_get(f, "step", &ls->step, sizeof ls->step, err);
    if (s == SD3_OK) s = state_get(f, "rng_state", &ls->gen, sizeof ls->gen, err);
    if (s == SD3_OK) s = state_get(f, "data_perm", ls->perm, sizeof(int32_t) * (size_t)n, err);
    if (s == SD3_OK) s = state_get(f, "data_pos", &ls->pos, sizeof ls->pos, err);
    st_close(f);
    return s;
}

/* Monotonic seconds. */
static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

sd3_status train_run(const mmdit_model *m, const train_opts *o, const train_data *d, sd3_err *err) {
    if (d->n < 1 || o->train_batch_size < 1 || o->gradient_accumulation_steps < 1 || o->max_train_steps < 0 ||
        d->C != m->cfg.in_channels || d->J != m->cfg.joint_attention_dim || d->P != m->cfg.pooled_projection_dim)
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "train: inconsistent data (%d instances, %d channels, J %d, P %d) "
                        "or options for this transformer", d->n, d->C, d->J, d->P);
    if (mkdir(o->output_dir, 0777) && errno != EEXIST)
        return sd3_errf(err, SD3_ERR_IO, "train: cannot create %s: %s", o->output_dir, strerror(errno));
    if (o->lr_scheduler == LR_POLYNOMIAL && !(o->learning_rate > 1e-7))
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "train: polynomial schedule: lr_end (1e-7) must be smaller than "
                        "the learning rate (%g)", o->learning_rate);
    if (d->n_class < 0 || (d->n_class > 0 && (!d->class_mean || !d->class_ctx || !d->class_pooled)))
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "train: prior preservation needs class latents and embeddings");
    const int Bi = o->train_batch_size, np = d->n_class > 0 ? Bi : 0, B = Bi + np;
    const int nlen = d->n > d->n_class ? d->n : d->n_class; /* DreamBoothDataset's length */
    const int C = d->C, H = d->H, W = d->W, S = d->S, J = d->J, P = d->P;
    const int64_t n1 = (int64_t)C * H * W;
    flow_config fc = flow_config_default();
    fc.shift = o->flow_shift;
    flow_sched fs;
    sd3_status s = flow_create(&fs, &fc, err);
    if (s != SD3_OK) return s;
    lt_set L;
    loop_state ls = {0};
    trainer tr;
    trainer_init(&tr, m, &L, o->gradient_checkpointing);
    tr.precondition_outputs = o->precondition_outputs;
    s = lt_create(&L, m, o->rank, (float)o->rank, o->lora_layers, o->lora_blocks, err);
    float *x0 = sd3_malloc(sizeof(float) * (size_t)(3 * B * n1));
    float *ctx = sd3_malloc(sizeof(float) * (size_t)B * S * J), *pooled = sd3_malloc(sizeof(float) * (size_t)B * P);
    ls.perm = sd3_calloc((size_t)nlen, sizeof(int32_t));
    if (s == SD3_OK && (!x0 || !ctx || !pooled || !ls.perm)) s = sd3_errf(err, SD3_ERR_NOMEM, "train: out of memory");
    if (s != SD3_OK) goto done;
    float *noise = x0 + B * n1, *tmp = x0 + 2 * B * n1;
    for (int b = 0; b < B; b++) {
        const int cls = b >= Bi;
        memcpy(ctx + (int64_t)b * S * J, cls ? d->class_ctx : d->ctx, sizeof(float) * (size_t)S * J);
        memcpy(pooled + (int64_t)b * P, cls ? d->class_pooled : d->pooled, sizeof(float) * (size_t)P);
    }
    tgen_init(&ls.gen, o->seed, TGEN_KERNEL_AVX2);
    lt_init_gaussian(&L, &ls.gen);
    ls.pos = nlen;
    if (o->resume_from) {
        char dir[4096];
        if (!strcmp(o->resume_from, "latest")) latest_checkpoint(o->output_dir, dir, sizeof dir);
        else snprintf(dir, sizeof dir, "%s", o->resume_from);
        if (!dir[0]) {
            LOG_WARN("train: no checkpoint in %s; starting a new run", o->output_dir);
        } else {
            if ((s = load_checkpoint(dir, &L, &ls, nlen, err)) != SD3_OK) goto done;
            LOG_INFO("train: resumed from %s at step %lld", dir, (long long)ls.step);
        }
    }
    const float inv_acc = 1.0f / (float)o->gradient_accumulation_steps;
    while (ls.step < o->max_train_steps && !(o->stop_after_steps > 0 && ls.step >= o->stop_after_steps)) {
        double t0 = now_s();
        lt_zero_grad(&L);
        float step_loss = 0;
        for (int a = 0; a < o->gradient_accumulation_steps; a++) {
            int kidx[256];
            if (B > 256) { s = sd3_errf(err, SD3_ERR_INVALID_ARG, "train: batch %d > 256", B); goto done; }
            for (int b = 0; b < Bi; b++) kidx[b] = next_index(&ls, nlen);
            for (int b = 0; b < B; b++) {
                /* collate_fn order: the instances, then the class images of the same dataset items */
                const int cls = b >= Bi, k = kidx[cls ? b - Bi : b], i = cls ? k % d->n_class : k % d->n;
                const float *mu = (cls ? d->class_mean : d->mean) + (int64_t)i * n1;
                const float *sdv = cls ? d->class_std : d->std;
                float *xb = x0 + (int64_t)b * n1;
                if (sdv) {
                    tgen_randn(&ls.gen, tmp, n1);
                    const float *sd = sdv + (int64_t)i * n1;
                    for (int64_t e = 0; e < n1; e++) xb[e] = mu[e] + sd[e] * tmp[e];
                } else memcpy(xb, mu, sizeof(float) * (size_t)n1);
                const float sh = (float)d->shift, sc = (float)d->scale;
                for (int64_t e = 0; e < n1; e++) xb[e] = (xb[e] - sh) * sc;
            }
            tgen_randn(&ls.gen, noise, B * n1);
            float u[256], ts[256], sig[256], wt[256];
            if ((s = density_sample(&ls.gen, o->weighting, B, o->logit_mean, o->logit_std, o->mode_scale, u, err)) !=
                SD3_OK)
                goto done;
            for (int b = 0; b < B; b++) {
                int64_t k = density_index(u[b], fs.cfg.num_train_timesteps);
                if (k >= fs.cfg.num_train_timesteps) k = fs.cfg.num_train_timesteps - 1;
                ts[b] = fs.train_timesteps[k], sig[b] = fs.train_sigmas[k];
            }
            density_loss_weighting(o->weighting, sig, wt, B);
            float loss = 0;
            s = train_loss_backward_prior(&tr, x0, noise, sig, ts, wt, ctx, pooled, B, np, (float)o->prior_loss_weight,
                                          H, W, S, inv_acc, &loss, NULL, NULL, NULL, err);
            if (s != SD3_OK) goto done;
            step_loss += loss * inv_acc;
        }
        adamw_params hp = o->adam;
        hp.lr = o->learning_rate * lr_factor_ex(o->lr_scheduler, ls.step, o->lr_warmup_steps, o->max_train_steps,
                                                o->lr_num_cycles, o->lr_power, o->learning_rate);
        train_clip_and_step(&L, o->max_grad_norm, ls.step + 1, &hp);
        if (o->loss_curve) o->loss_curve[ls.step] = step_loss;
        ls.step++;
        if (o->progress) o->progress(o->user, ls.step, o->max_train_steps, step_loss, hp.lr, now_s() - t0);
        if (o->checkpointing_steps > 0 && ls.step % o->checkpointing_steps == 0 &&
            (s = save_checkpoint(o->output_dir, &L, &ls, nlen, err)) != SD3_OK)
            goto done;
        if (o->validation && o->validation_steps > 0 && ls.step % o->validation_steps == 0 &&
            o->validation(o->user, ls.step, &L))
            LOG_WARN("train: validation at step %lld failed", (long long)ls.step);
    }
    if (ls.step < o->max_train_steps) {
        /* stopped early (stop_after_steps): leave a checkpoint to resume from, not final weights */
        char dir[4200];
        snprintf(dir, sizeof dir, "%s/checkpoint-%lld", o->output_dir, (long long)ls.step);
        struct stat sb;
        if (stat(dir, &sb) != 0) s = save_checkpoint(o->output_dir, &L, &ls, nlen, err);
        goto done;
    }
    char path[4400];
    snprintf(path, sizeof path, "%s/pytorch_lora_weights.safetensors", o->output_dir);
    s = lt_save(&L, path, err);
done:
    trainer_free(&tr);
    lt_free(&L);
    flow_free(&fs);
    sd3_free(x0), sd3_free(ctx), sd3_free(pooled), sd3_free(ls.perm);
    return s;
}

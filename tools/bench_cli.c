/*
 * bench_cli.c — `sd3 bench`: time one component of a named SD3 architecture on full-size random weights
 * (src/bench/synth.h writes them once into a cache folder and the real loaders read them back), after a
 * warm-up, as the median of several runs; FLOPs counted analytically; the machine's peak measured in the
 * same run (an FMA-chain / vdpbf16ps-chain microbenchmark on every pool thread) and the ratio reported.
 * The last line printed is one JSON object.
 *
 *   sd3 bench [--arch sd3-medium|sd3.5-medium|sd3.5-large] [--component C] [--width W] [--height H]
 *             [--precision fp32|bf16] [--threads N] [--runs N] [--warmup N] [--steps N] [--batch B]
 *             [--tokens T] [--layers N] [--dtype bf16|fp16|fp32] [--no-t5] [--stream-layers] [--no-peak] [--standard]
 *
 * Components: mmdit (one CFG forward, batch 2, 77 + tokens text tokens), t5 (batch x tokens), clip-l,
 * clip-g (batch x 77, hidden_states[-2] and the pooled projection, as encode_prompt), vae-decode,
 * vae-encode (batch 1), pipeline (a whole txt2img through pipe_generate: prompts, --steps CFG steps,
 * decode; time and peak RSS per stage), peak (the microbenchmark only).
 * --layers N runs only the first N blocks of the MMDiT (the others skipped, as skip-layer guidance does)
 * or of the T5, and scales the time to the full model by the FLOP ratio ("seconds_full_estimate").
 * --standard: a short set (what `make bench` runs), one JSON line each.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <cjson/cJSON.h>
#include "bench/peak.h"
#include "bench/synth.h"
#include "core/core.h"
#include "io/json_util.h"
#include "io/model_store.h"
#include "io/weights.h"
#include "kernels/kernels.h"
#include "mmdit/mmdit.h"
#include "pipeline/generate.h"
#include "text/clip.h"
#include "text/t5.h"
#include "vae/vae.h"

#define MAX_RUNS 64

/* ================================================================================================ */
/* Peak (src/bench/peak.h: the chains shared with bench/bench_kernels.c)                             */
/* ================================================================================================ */

#define PEAK_ITERS 10000000L


/* CPU seconds (user + system, all threads) this process has used. */
static double cpu_seconds(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru)) return 0;
    return (double)ru.ru_utime.tv_sec + 1e-6 * ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_sec + 1e-6 * ru.ru_stime.tv_usec;
}

/* GFLOP/s of kind (0 avx512 fma, 1 avx2 fma, 2 bf16 dot) on every pool thread, best of 3 (0 if the CPU
 * lacks it); *per_cpu: the same per CPU time given to the threads (flops / (CPU seconds / threads)), which
 * a busy machine does not lower. */
static double measure_peak(int kind, double *per_cpu) {
    *per_cpu = 0;
    if (!peak_supported(kind)) return 0;
    int nt = pool_threads();
    long iters = PEAK_ITERS / (kind == PEAK_FMA_AVX2 ? 1 : 2);
    double fpi = peak_flops_per_iter(kind), best = 0;
    peak_run(kind, iters);  /* warm-up (clocks, workers) */
    for (int r = 0; r < 3; r++) {
        double t0 = sd3_time(), c0 = cpu_seconds();
        peak_run(kind, iters);
        double fl = fpi * (double)iters * nt, g = fl / (sd3_time() - t0) * 1e-9, dc = cpu_seconds() - c0;
        if (g > best) best = g;
        if (dc > 0 && fl / (dc / nt) * 1e-9 > *per_cpu) *per_cpu = fl / (dc / nt) * 1e-9;
    }
    return best;
}

/* The fp32 and bf16 peaks of this machine with the current threads (wall time and per CPU time). */
static void machine_peaks(double *fp32, double *bf16, double *fp32_cpu, double *bf16_cpu) {
    *fp32 = measure_peak(0, fp32_cpu);
    if (*fp32 == 0) *fp32 = measure_peak(1, fp32_cpu);
    *bf16 = measure_peak(2, bf16_cpu);
    if (*bf16 == 0) { *bf16 = *fp32; *bf16_cpu = *fp32_cpu; }   /* no bf16 dot products: the bf16 mode runs f32 */
}

/* ================================================================================================ */
/* FLOP counts                                                                                      */
/* ================================================================================================ */

/* One CFG-batch forward of the MMDiT: every Linear 2 M N K for its token count, the joint attention
 * 4 T^2 C per block (QK^T and PV, T = Tx + Tc), the MMDiT-X image attention 4 Tx^2 C; blocks >= n_run
 * skipped. */
static double flops_mmdit(const mmdit_config *c, int B, int h, int w, int S, int n_run) {
    const double C = (double)c->num_attention_heads * c->attention_head_dim, p = c->patch_size;
    const double Tx = (double)(h / c->patch_size) * (w / c->patch_size), Tc = S;
    double f = 2 * Tx * C * c->in_channels * p * p + 2 * (MMDIT_FREQ_DIM * C + C * C) +
               2 * (c->pooled_projection_dim * C + C * C) + 2 * Tc * c->joint_attention_dim * C;
    for (int i = 0; i < n_run && i < c->num_layers; i++) {
        int last = i == c->num_layers - 1, dual = mmdit_config_is_dual(c, i);
        f += 2 * C * (dual ? 9 : 6) * C + 2 * C * (last ? 2 : 6) * C;
        f += 6 * Tx * C * C + 6 * Tc * C * C;
        f += 4 * (Tx + Tc) * (Tx + Tc) * C;
        f += 2 * Tx * C * C + (last ? 0 : 2 * Tc * C * C);
        f += 16 * Tx * C * C + (last ? 0 : 16 * Tc * C * C);
        if (dual) f += 8 * Tx * C * C + 4 * Tx * Tx * C;
    }
    f += 2 * C * 2 * C + 2 * Tx * C * p * p * c->out_channels;
    return B * f;
}

/* T5 encoder: q, k, v, o, gated FFN (wi_0, wi_1, wo), attention 4 T^2 I, per block run. */
static double flops_t5(const syn_t5_shape *s, int B, int T, int n_run) {
    const double d = s->d_model, I = (double)s->heads * s->d_kv, F = s->d_ff;
    return (double)B * n_run * (8.0 * T * d * I + 6.0 * T * d * F + 4.0 * T * T * I);
}

/* CLIP text model over T tokens: q, k, v, o, fc1, fc2, attention 4 T^2 C (counted in full, though causal),
 * every layer, plus the pooled projection. */
static double flops_clip(const syn_clip_shape *s, int B, int T) {
    const double C = s->hidden, F = s->inter;
    return (double)B * (s->layers * (8.0 * T * C * C + 4.0 * T * C * F + 4.0 * T * T * C) + 2.0 * C * s->proj);
}

/* 2 cout cin k^2 Ho Wo. */
static double conv_f(double cin, double cout, double k, double H, double W) { return 2 * cout * cin * k * k * H * W; }

/* ResnetBlock2D at H x W. */
static double resnet_f(double cin, double cout, double H, double W) {
    return conv_f(cin, cout, 3, H, W) + conv_f(cout, cout, 3, H, W) + (cin != cout ? conv_f(cin, cout, 1, H, W) : 0);
}

/* Mid block: two resnets and the single-head attention over H W tokens (q, k, v, out + 4 T^2 C). */
static double mid_f(double C, double H, double W) {
    double T = H * W;
    return 2 * resnet_f(C, C, H, W) + 8 * T * C * C + 4 * T * T * C;
}

/* VAE decoder of a (h, w) latent, or encoder of an (8h, 8w) image: every conv and the mid attention. */
static double flops_vae(const vae_config *c, int B, int h, int w, int decode) {
    const int *boc = c->block_out_channels, n = c->n_levels;
    double f = 0;
    if (decode) {
        double H = h, W = w;
        if (c->use_post_quant_conv) f += conv_f(c->latent_channels, c->latent_channels, 1, H, W);
        f += conv_f(c->latent_channels, boc[n - 1], 3, H, W) + mid_f(boc[n - 1], H, W);
        int prev = boc[n - 1];
        for (int i = 0; i < n; i++) {
            int cout = boc[n - 1 - i];
            for (int j = 0; j < c->layers_per_block + 1; j++) f += resnet_f(j ? cout : prev, cout, H, W);
            if (i < n - 1) { H *= 2; W *= 2; f += conv_f(cout, cout, 3, H, W); }
            prev = cout;
        }
        f += conv_f(boc[0], c->out_channels, 3, H, W);
    } else {
        double H = (double)h * vae_downscale(c), W = (double)w * vae_downscale(c);
        f += conv_f(c->in_channels, boc[0], 3, H, W);
        for (int i = 0; i < n; i++) {
            for (int j = 0; j < c->layers_per_block; j++) f += resnet_f(j ? boc[i] : (i ? boc[i - 1] : boc[0]), boc[i], H, W);
            if (i < n - 1) { H /= 2; W /= 2; f += conv_f(boc[i], boc[i], 3, H, W); }
        }
        f += mid_f(boc[n - 1], H, W) + conv_f(boc[n - 1], 2 * c->latent_channels, 3, H, W);
        if (c->use_quant_conv) f += conv_f(2 * c->latent_channels, 2 * c->latent_channels, 1, H, W);
    }
    return B * f;
}

/* ================================================================================================ */
/* Measurement helpers                                                                              */
/* ================================================================================================ */

/* The 1-minute load average (-1 if unknown). */
static double load_avg(void) {
    FILE *f = fopen("/proc/loadavg", "r");
    double l = -1;
    if (f) {
        if (fscanf(f, "%lf", &l) != 1) l = -1;
        fclose(f);
    }
    return l;
}

/* Peak RSS since the last rss_reset (VmHWM), in MB; falls back to the process peak. */
static double rss_hwm_mb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6)) kb = atof(line + 6);
    if (f) fclose(f);
    return kb >= 0 ? kb / 1024.0 : (double)sd3_peak_rss() / (1024.0 * 1024.0);
}

/* Reset the peak-RSS mark to the current RSS (Linux clear_refs 5); returns 0 on success. */
static int rss_reset(void) {
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (!f) return -1;
    int bad = fputs("5", f) < 0;
    bad |= fclose(f) != 0;
    return bad ? -1 : 0;
}

/* qsort order of doubles. */
static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median of v[0..n) (sorts v). */
static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Fill n floats with deterministic N(0, 1)-ish values (sum of uniforms), for inputs. */
static void fill_randn(float *x, size_t n, uint64_t seed) {
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; i++) {
        float a = 0;
        for (int k = 0; k < 4; k++) {
            s ^= s >> 12; s ^= s << 25; s ^= s >> 27;
            a += (float)((s * 2685821657736338717ull) >> 40) * (1.0f / 16777216.0f);
        }
        x[i] = (a - 2.0f) * 1.7320508f;
    }
}

/* ================================================================================================ */
/* Options and one benchmark                                                                        */
/* ================================================================================================ */

typedef struct bench_opts {
    syn_arch arch;
    const char *component;
    int width, height, bf16, threads, runs, warmup, steps, batch, tokens, layers, no_t5, no_peak, breakdown;
    int stream_layers;   /* pipeline: the MMDiT's blocks streamed through memory (pipe_req.stream_layers) */
    dtype stored;
    double peak_fp32, peak_bf16, peak_fp32_cpu, peak_bf16_cpu;
} bench_opts;

/* What one benchmark measured. */
typedef struct bench_result {
    double flops, seconds, full_flops;   /* full_flops: of the whole model when --layers ran part of it */
    double cpu_s;                        /* CPU seconds of the median run (all threads; < threads x seconds on a busy machine) */
    int tokens, layers_run, layers_total, runs;
    double stage_s[3], stage_rss[3];     /* pipeline: encode, denoise, decode */
    int have_stages;
} bench_result;

/* A timed function: one run of the workload. */
typedef sd3_status (*bench_fn)(void *ctx, sd3_err *err);

/* Warm up, then time runs of fn; the median wall time into *sec, the CPU time of that run into *cpu. */
static sd3_status time_runs(const bench_opts *o, bench_fn fn, void *ctx, double *sec, double *cpu, int *runs_done,
                            sd3_err *err) {
    double t[MAX_RUNS], tc[MAX_RUNS], ts[MAX_RUNS];
    sd3_status s;
    for (int i = 0; i < o->warmup; i++) {
        double t0 = sd3_time();
        if ((s = fn(ctx, err))) return s;
        fprintf(stderr, "bench:   warm-up %.3f s\n", sd3_time() - t0);
    }
    for (int i = 0; i < o->runs; i++) {
        double t0 = sd3_time(), c0 = cpu_seconds();
        if ((s = fn(ctx, err))) return s;
        t[i] = ts[i] = sd3_time() - t0;
        tc[i] = cpu_seconds() - c0;
        fprintf(stderr, "bench:   run %d: %.3f s (%.3f CPU s)\n", i + 1, t[i], tc[i]);
    }
    *sec = median(ts, o->runs);
    *cpu = tc[0];
    for (int i = 0; i < o->runs; i++)
        if (t[i] == *sec) *cpu = tc[i];
    *runs_done = o->runs;
    return SD3_OK;
}

/* ---- MMDiT ---- */

typedef struct mmdit_ctx {
    mmdit_model m;
    float *x, *ctx, *pooled, *t, *out;
    int B, h, w, S, n_skip;
    int skip[MMDIT_MAX_LAYERS];
} mmdit_ctx;

/* One CFG-batch forward (the blocks past --layers skipped). */
static sd3_status run_mmdit(void *p, sd3_err *err) {
    mmdit_ctx *c = p;
    return mmdit_forward(&c->m, c->x, c->B, c->h, c->w, c->ctx, c->S, c->pooled, c->t, c->n_skip ? c->skip : NULL,
                         c->n_skip, c->out, err);
}

/* Phases of an MMDiT forward, told apart by the forward's hook names (the time since the previous hook
 * call goes to the phase the new name closes). */
enum { PH_EMBED, PH_NORM, PH_ATTN, PH_ATTN2, PH_FF_X, PH_FF_C, PH_OUT, PH_COUNT };
static const char *const PHASE_NAMES[PH_COUNT] = {
    "embeddings", "adaLN + norms", "joint attention (q/k/v, attention, out)", "MMDiT-X attention (attn2)",
    "image FF (+ norm2, gates)", "context FF (+ norm2, gates)", "norm_out + proj_out"};

typedef struct phase_watch { double last, t[PH_COUNT]; } phase_watch;

/* Hook: charge the time since the previous call to the phase that `name` ends. */
static void phase_hook(void *user, const char *name, const float *data, int64_t n) {
    (void)data;
    (void)n;
    phase_watch *w = user;
    double now = sd3_time();
    const char *u = strchr(name, '_');
    int ph = PH_EMBED;
    if (!strncmp(name, "block", 5) && u) {
        u++;
        ph = !strncmp(u, "norm1", 5) ? PH_NORM : !strncmp(u, "attn2", 5) ? PH_ATTN2 : !strncmp(u, "attn", 4) ? PH_ATTN
             : !strcmp(u, "hidden_out") ? PH_FF_X : PH_FF_C;
    } else if (!strcmp(name, "norm_out") || !strcmp(name, "proj_out")) {
        ph = PH_OUT;
    }
    w->t[ph] += now - w->last;
    w->last = now;
}

/* Analytic FLOPs of each phase of one forward (as flops_mmdit, split). */
static void phase_flops(const mmdit_config *c, int B, int h, int w, int S, int n_run, double *f) {
    const double C = (double)c->num_attention_heads * c->attention_head_dim, p = c->patch_size;
    const double Tx = (double)(h / c->patch_size) * (w / c->patch_size), Tc = S;
    memset(f, 0, sizeof(double) * PH_COUNT);
    f[PH_EMBED] = B * (2 * Tx * C * c->in_channels * p * p + 2 * (MMDIT_FREQ_DIM * C + C * C) +
                       2 * (c->pooled_projection_dim * C + C * C) + 2 * Tc * c->joint_attention_dim * C);
    for (int i = 0; i < n_run && i < c->num_layers; i++) {
        int last = i == c->num_layers - 1, dual = mmdit_config_is_dual(c, i);
        f[PH_NORM] += B * (2 * C * (dual ? 9 : 6) * C + 2 * C * (last ? 2 : 6) * C);
        f[PH_ATTN] += B * (6 * Tx * C * C + 6 * Tc * C * C + 4 * (Tx + Tc) * (Tx + Tc) * C + 2 * Tx * C * C +
                           (last ? 0 : 2 * Tc * C * C));
        if (dual) f[PH_ATTN2] += B * (8 * Tx * C * C + 4 * Tx * Tx * C);
        f[PH_FF_X] += B * 16 * Tx * C * C;
        f[PH_FF_C] += last ? 0 : B * 16 * Tc * C * C;
    }
    f[PH_OUT] = B * (2 * C * 2 * C + 2 * Tx * C * p * p * c->out_channels);
}

/* The transformer: load the synthesised folder with mmdit_load_dir, random latents / text / pooled inputs at
 * t = 500, time forwards. */
static sd3_status bench_mmdit(const bench_opts *o, bench_result *r, sd3_err *err) {
    char dir[4096];
    sd3_status s = syn_component_dir(o->arch, SYN_MMDIT, o->stored, NULL, dir, sizeof dir, NULL, err);
    if (s) return s;
    mmdit_ctx c;
    memset(&c, 0, sizeof c);
    if ((s = mmdit_load_dir(&c.m, dir, err))) return s;
    const mmdit_config *cfg = &c.m.cfg;
    c.B = o->batch;
    c.h = o->height / 8;
    c.w = o->width / 8;
    c.S = 77 + (o->no_t5 ? 77 : o->tokens);
    int L = cfg->num_layers, n_run = o->layers > 0 && o->layers < L ? o->layers : L;
    for (int i = n_run; i < L; i++) c.skip[c.n_skip++] = i;
    size_t nx = (size_t)c.B * cfg->in_channels * c.h * c.w;
    c.x = sd3_malloc(sizeof(float) * nx);
    c.out = sd3_malloc(sizeof(float) * nx);
    c.ctx = sd3_malloc(sizeof(float) * (size_t)c.B * c.S * cfg->joint_attention_dim);
    c.pooled = sd3_malloc(sizeof(float) * (size_t)c.B * cfg->pooled_projection_dim);
    c.t = sd3_malloc(sizeof(float) * (size_t)c.B);
    if (!c.x || !c.out || !c.ctx || !c.pooled || !c.t) { s = sd3_errf(err, SD3_ERR_NOMEM, "bench: out of memory"); goto done; }
    fill_randn(c.x, nx, 1);
    fill_randn(c.ctx, (size_t)c.B * c.S * cfg->joint_attention_dim, 2);
    fill_randn(c.pooled, (size_t)c.B * cfg->pooled_projection_dim, 3);
    for (int b = 0; b < c.B; b++) c.t[b] = 500.0f;
    r->tokens = c.B * ((c.h / cfg->patch_size) * (c.w / cfg->patch_size) + c.S);
    r->layers_run = n_run;
    r->layers_total = L;
    r->flops = flops_mmdit(cfg, c.B, c.h, c.w, c.S, n_run);
    r->full_flops = flops_mmdit(cfg, c.B, c.h, c.w, c.S, L);
    fprintf(stderr, "bench: mmdit %s: %d of %d blocks, batch %d, %d image + %d text tokens per sample\n",
            syn_arch_name(o->arch), n_run, L, c.B, (c.h / cfg->patch_size) * (c.w / cfg->patch_size), c.S);
    s = time_runs(o, run_mmdit, &c, &r->seconds, &r->cpu_s, &r->runs, err);
    if (!s) {
        double mx = 0;
        int bad = 0;
        for (size_t i = 0; i < nx; i++) {
            if (!isfinite(c.out[i])) bad = 1;
            else if (fabsf(c.out[i]) > mx) mx = fabsf(c.out[i]);
        }
        fprintf(stderr, "bench:   output max |v| %.3g%s\n", mx, bad ? " (NON-FINITE VALUES)" : "");
    }
    if (!s && o->breakdown) {
        phase_watch pw;
        memset(&pw, 0, sizeof pw);
        mmdit_hook hk = {phase_hook, &pw};
        double f[PH_COUNT], peak = o->bf16 ? o->peak_bf16 : o->peak_fp32, t0 = sd3_time(), c0 = cpu_seconds();
        pw.last = t0;
        s = mmdit_forward_hooked(&c.m, c.x, c.B, c.h, c.w, c.ctx, c.S, c.pooled, c.t, c.n_skip ? c.skip : NULL, c.n_skip,
                                 c.out, &hk, err);
        double total = sd3_time() - t0, cpu = cpu_seconds() - c0;
        phase_flops(cfg, c.B, c.h, c.w, c.S, n_run, f);
        printf("breakdown of one more forward (%.3f s, %.3f CPU s):\n", total, cpu);
        for (int k = 0; k < PH_COUNT; k++) {
            if (pw.t[k] <= 0 && f[k] <= 0) continue;
            double g = pw.t[k] > 0 ? f[k] / pw.t[k] * 1e-9 : 0;
            printf("  %-42s %8.3f s %5.1f%%  %9.1f GFLOP  %7.1f GFLOP/s  %5.1f%% of peak (wall)\n", PHASE_NAMES[k],
                   pw.t[k], 100 * pw.t[k] / total, f[k] * 1e-9, g, peak > 0 ? 100 * g / peak : 0);
        }
    }
done:
    sd3_free(c.x);
    sd3_free(c.out);
    sd3_free(c.ctx);
    sd3_free(c.pooled);
    sd3_free(c.t);
    mmdit_free(&c.m);
    return s;
}

/* ---- text encoders ---- */

/* Open a component folder's weights (stem "model") and config. */
static sd3_status open_te(syn_comp comp, const bench_opts *o, weights *w, cJSON **cfg, sd3_err *err) {
    char dir[4096], path[4200];
    sd3_status s = syn_component_dir(o->arch, comp, o->stored, NULL, dir, sizeof dir, NULL, err);
    if (s) return s;
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (!(*cfg = json_load_file(path, err))) return err->status;
    if ((s = weights_open_dir(w, dir, "model", err))) { cJSON_Delete(*cfg); *cfg = NULL; }
    return s;
}

typedef struct t5_ctx { t5_model m; int64_t *ids; int B, T, n_run; float *out; } t5_ctx;

/* One T5 encode (up to block n_run). */
static sd3_status run_t5(void *p, sd3_err *err) {
    t5_ctx *c = p;
    if (c->n_run < c->m.cfg.num_layers) return t5_forward_hidden(&c->m, c->ids, c->B, c->T, c->n_run, c->out, err);
    return t5_forward(&c->m, c->ids, c->B, c->T, c->out, err);
}

/* T5-XXL through t5_load on batch x tokens of spread-out ids. */
static sd3_status bench_t5(const bench_opts *o, bench_result *r, sd3_err *err) {
    weights w;
    cJSON *cfg = NULL;
    sd3_status s = open_te(SYN_T5, o, &w, &cfg, err);
    if (s) return s;
    t5_ctx c;
    memset(&c, 0, sizeof c);
    if ((s = t5_load(&c.m, &w, cfg, "text_encoder_3", err))) goto done;
    c.B = o->batch;
    c.T = o->tokens;
    int L = c.m.cfg.num_layers;
    c.n_run = o->layers > 0 && o->layers < L ? o->layers : L;
    c.ids = malloc(sizeof(int64_t) * (size_t)c.B * c.T);
    c.out = sd3_malloc(sizeof(float) * (size_t)c.B * c.T * c.m.cfg.d_model);
    if (!c.ids || !c.out) { s = sd3_errf(err, SD3_ERR_NOMEM, "bench: out of memory"); goto done; }
    for (int i = 0; i < c.B * c.T; i++) c.ids[i] = (int64_t)((i * 2654435761u) % (unsigned)c.m.cfg.vocab_size);
    syn_t5_shape sh = syn_t5xxl();
    r->tokens = c.B * c.T;
    r->layers_run = c.n_run;
    r->layers_total = L;
    r->flops = flops_t5(&sh, c.B, c.T, c.n_run);
    r->full_flops = flops_t5(&sh, c.B, c.T, L);
    fprintf(stderr, "bench: t5xxl: %d of %d blocks, %d x %d tokens\n", c.n_run, L, c.B, c.T);
    s = time_runs(o, run_t5, &c, &r->seconds, &r->cpu_s, &r->runs, err);
done:
    free(c.ids);
    sd3_free(c.out);
    t5_free(&c.m);
    weights_close(&w);
    cJSON_Delete(cfg);
    return s;
}

typedef struct clip_ctx { clip_model m; int64_t *ids; int B, T; float *hidden, *embeds; } clip_ctx;

/* One CLIP forward with the outputs encode_prompt takes (hidden_states[-2] and the pooled projection). */
static sd3_status run_clip(void *p, sd3_err *err) {
    clip_ctx *c = p;
    return clip_forward(&c->m, c->ids, c->B, c->T, -2, c->hidden, NULL, c->embeds, err);
}

/* CLIP-L or CLIP-G through clip_load on batch x 77 tokens (bos, 19 words, eos padding). */
static sd3_status bench_clip(const bench_opts *o, syn_comp comp, bench_result *r, sd3_err *err) {
    weights w;
    cJSON *cfg = NULL;
    sd3_status s = open_te(comp, o, &w, &cfg, err);
    if (s) return s;
    clip_ctx c;
    memset(&c, 0, sizeof c);
    if ((s = clip_load(&c.m, &w, cfg, comp == SYN_CLIP_L ? "text_encoder" : "text_encoder_2", err))) goto done;
    c.B = o->batch;
    c.T = 77;
    c.ids = malloc(sizeof(int64_t) * (size_t)c.B * c.T);
    c.hidden = sd3_malloc(sizeof(float) * (size_t)c.B * c.T * c.m.cfg.hidden_size);
    c.embeds = sd3_malloc(sizeof(float) * (size_t)c.B * c.m.cfg.projection_dim);
    if (!c.ids || !c.hidden || !c.embeds) { s = sd3_errf(err, SD3_ERR_NOMEM, "bench: out of memory"); goto done; }
    for (int b = 0; b < c.B; b++)
        for (int t = 0; t < c.T; t++)   /* bos, random words, eos at 20, then padding (eos) */
            c.ids[b * c.T + t] = t == 0 ? 49406 : t < 20 ? (int64_t)(((b * 77 + t) * 2654435761u) % 49406u) : 49407;
    syn_clip_shape sh = comp == SYN_CLIP_L ? syn_clip_l() : syn_clip_g();
    r->tokens = c.B * c.T;
    r->layers_run = r->layers_total = sh.layers;
    r->flops = r->full_flops = flops_clip(&sh, c.B, c.T);
    fprintf(stderr, "bench: %s: %d x %d tokens\n", syn_comp_name(comp), c.B, c.T);
    s = time_runs(o, run_clip, &c, &r->seconds, &r->cpu_s, &r->runs, err);
done:
    free(c.ids);
    sd3_free(c.hidden);
    sd3_free(c.embeds);
    clip_free(&c.m);
    weights_close(&w);
    cJSON_Delete(cfg);
    return s;
}

/* ---- VAE ---- */

typedef struct vae_ctx { vae_model m; float *in, *out; int B, h, w, decode; } vae_ctx;

/* One VAE decode of the latents or encode of the image. */
static sd3_status run_vae(void *p, sd3_err *err) {
    vae_ctx *c = p;
    int f = vae_downscale(&c->m.cfg), L = c->m.cfg.latent_channels;
    if (c->decode) return vae_decode(&c->m, c->in, c->B, L, c->h, c->w, c->out, NULL, err);
    return vae_encode(&c->m, c->in, c->B, 3, c->h * f, c->w * f, c->out, NULL, err);
}

/* The VAE through vae_open_dir: decode a (batch, 16, H/8, W/8) latent or encode a (batch, 3, H, W) image. */
static sd3_status bench_vae(const bench_opts *o, int decode, bench_result *r, sd3_err *err) {
    char dir[4096];
    sd3_status s = syn_component_dir(o->arch, SYN_VAE, o->stored, NULL, dir, sizeof dir, NULL, err);
    if (s) return s;
    vae_ctx c;
    memset(&c, 0, sizeof c);
    if ((s = vae_open_dir(&c.m, dir, err))) return s;
    int f = vae_downscale(&c.m.cfg), L = c.m.cfg.latent_channels;
    c.B = o->batch;
    c.h = o->height / f;
    c.w = o->width / f;
    c.decode = decode;
    size_t nlat = (size_t)c.B * L * c.h * c.w, nimg = (size_t)c.B * 3 * c.h * f * c.w * f;
    c.in = sd3_malloc(sizeof(float) * (decode ? nlat : nimg));
    c.out = sd3_malloc(sizeof(float) * (decode ? nimg : 2 * nlat));
    if (!c.in || !c.out) { s = sd3_errf(err, SD3_ERR_NOMEM, "bench: out of memory"); goto done; }
    fill_randn(c.in, decode ? nlat : nimg, 4);
    r->tokens = c.B * (decode ? c.h * c.w : c.h * f * c.w * f);
    r->layers_run = r->layers_total = 0;
    r->flops = r->full_flops = flops_vae(&c.m.cfg, c.B, c.h, c.w, decode);
    fprintf(stderr, "bench: vae %s %dx%d, batch %d\n", decode ? "decode" : "encode", c.w * f, c.h * f, c.B);
    s = time_runs(o, run_vae, &c, &r->seconds, &r->cpu_s, &r->runs, err);
done:
    sd3_free(c.in);
    sd3_free(c.out);
    vae_free(&c.m);
    return s;
}

/* ---- pipeline ---- */

typedef struct pipe_watch {
    double t0, t_enc, t_last;
    double rss[3];
    int n_steps;
    int reset_ok;
} pipe_watch;

/* Stage boundaries from the pipeline's taps: "timesteps" comes after the prompts are encoded (and the
 * transformer opened), "latents" after each step. */
static void pipe_tap(void *user, const char *name, int step, const float *x, int64_t n) {
    (void)x;
    (void)n;
    pipe_watch *w = user;
    if (!strcmp(name, "timesteps")) {
        w->t_enc = sd3_time();
        w->rss[0] = rss_hwm_mb();
        w->reset_ok = rss_reset() == 0;
    } else if (!strcmp(name, "latents") && step == w->n_steps - 1) {
        w->t_last = sd3_time();
        w->rss[1] = rss_hwm_mb();
        rss_reset();
    }
}

/* A whole txt2img (CFG 7, --steps, decode) through pipe_generate on a synthesised pipeline folder, with the
 * time and peak RSS of each stage. */
static sd3_status bench_pipeline(const bench_opts *o, bench_result *r, sd3_err *err) {
    char dir[4096];
    sd3_status s = syn_pipeline_dir(o->arch, o->stored, !o->no_t5, NULL, NULL, dir, sizeof dir, err);
    if (s) return s;
    model_store *ms = NULL;
    if ((s = ms_open(&ms, dir, err))) return s;
    const char *prompt[1] = {"a photograph of an astronaut riding a horse on the moon, highly detailed"};
    pipe_req q;
    memset(&q, 0, sizeof q);
    q.text.n_prompts = 1;
    q.text.prompt = prompt;
    q.text.num_images_per_prompt = 1;
    q.text.max_sequence_length = o->tokens;
    q.text.no_t5 = o->no_t5;
    q.stream_layers = o->stream_layers;
    q.width = o->width;
    q.height = o->height;
    q.steps = o->steps;
    q.cfg_scale = 7.0f;
    q.seed = 42;
    q.decode = 1;
    pipe_watch w;
    memset(&w, 0, sizeof w);
    w.n_steps = o->steps;
    pipe_taps taps = {pipe_tap, &w};
    pipe_out out;
    memset(&out, 0, sizeof out);
    rss_reset();
    w.t0 = sd3_time();
    double c0 = cpu_seconds();
    s = pipe_generate(ms, &q, &taps, &out, err);
    double t_end = sd3_time();
    r->cpu_s = cpu_seconds() - c0;
    if (!s) {
        w.rss[2] = rss_hwm_mb();
        r->seconds = t_end - w.t0;
        r->runs = 1;
        r->have_stages = 1;
        r->stage_s[0] = w.t_enc - w.t0;
        r->stage_s[1] = w.t_last - w.t_enc;
        r->stage_s[2] = t_end - w.t_last;
        memcpy(r->stage_rss, w.rss, sizeof w.rss);
        if (!w.reset_ok) fprintf(stderr, "bench: note: peak RSS could not be reset per stage (cumulative values)\n");
        mmdit_config mc;
        syn_mmdit_config(o->arch, &mc);
        vae_config vc;
        vae_config_sd3(&vc);
        syn_clip_shape cl = syn_clip_l(), cg = syn_clip_g();
        syn_t5_shape t5 = syn_t5xxl();
        int S = 77 + (o->no_t5 ? 77 : o->tokens), h = o->height / 8, wd = o->width / 8;
        r->flops = flops_clip(&cl, 2, 77) + flops_clip(&cg, 2, 77) + (o->no_t5 ? 0 : flops_t5(&t5, 2, o->tokens, t5.layers)) +
                   o->steps * flops_mmdit(&mc, 2, h, wd, S, mc.num_layers) + flops_vae(&vc, 1, h, wd, 1);
        r->full_flops = r->flops;
        r->tokens = 2 * ((h / 2) * (wd / 2) + S);
        r->layers_run = r->layers_total = mc.num_layers;
    }
    pipe_out_free(&out);
    ms_close(ms);
    return s;
}

/* ================================================================================================ */
/* Driver                                                                                           */
/* ================================================================================================ */

static const char *USAGE =
    "usage: sd3 bench [options]\n"
    "  --arch sd3-medium|sd3.5-medium|sd3.5-large   architecture (default sd3-medium)\n"
    "  --component C      mmdit|t5|clip-l|clip-g|vae-decode|vae-encode|pipeline|peak (default mmdit)\n"
    "  --width W --height H   image size, multiples of 16 (default 512 x 512)\n"
    "  --precision fp32|bf16  matrix-product mode (default fp32)\n"
    "  --threads N        worker threads, 0 = all cores (default 0)\n"
    "  --runs N           timed runs, the median is reported (default 3; pipeline 1)\n"
    "  --warmup N         untimed runs first (default 1; pipeline 0)\n"
    "  --batch B          batch (default 2 = the CFG batch; VAE 1)\n"
    "  --tokens T         T5 tokens (default 256; the MMDiT sees 77 + T text tokens)\n"
    "  --steps N          pipeline steps (default 2)\n"
    "  --layers N         only the first N MMDiT / T5 blocks; the time is scaled to the whole model by FLOPs\n"
    "  --dtype bf16|fp16|fp32  stored dtype of the generated weights (default bf16)\n"
    "  --no-t5            without the T5 (zeros, as text_encoder_3=None)\n"
    "  --stream-layers    pipeline: stream the MMDiT's blocks (read ahead, dropped after use; sd3 --stream-layers)\n"
    "  --no-peak          skip the peak microbenchmark\n"
    "  --breakdown        mmdit: one more forward timed per phase (adaLN/norms, joint attention with its\n"
    "                     projections, MMDiT-X attention, image FF, context FF, embeddings, output)\n"
    "  --standard         the short standard set (what `make bench` runs), one JSON line each\n"
    "  Weights are generated once into $SD3_BENCH_CACHE (default /tmp/sd3c-bench). The last line is one JSON\n"
    "  object (seconds, flops, gflops, peak_rss_mb, the peaks measured in the same run and the ratios).\n";

/* Run the benchmark o describes and print its report and JSON line. */
static int bench_one(bench_opts *o) {
    sd3_err err = {0};
    bench_result r;
    memset(&r, 0, sizeof r);
    k_set_precision(o->bf16);
    int rss_fresh = rss_reset() == 0;   /* the peak RSS of this benchmark alone (the standard set runs several) */
    double load0 = load_avg();
    const char *c = o->component;
    sd3_status s;
    if (!strcmp(c, "mmdit")) s = bench_mmdit(o, &r, &err);
    else if (!strcmp(c, "t5")) s = bench_t5(o, &r, &err);
    else if (!strcmp(c, "clip-l")) s = bench_clip(o, SYN_CLIP_L, &r, &err);
    else if (!strcmp(c, "clip-g")) s = bench_clip(o, SYN_CLIP_G, &r, &err);
    else if (!strcmp(c, "vae-decode")) s = bench_vae(o, 1, &r, &err);
    else if (!strcmp(c, "vae-encode")) s = bench_vae(o, 0, &r, &err);
    else if (!strcmp(c, "pipeline")) s = bench_pipeline(o, &r, &err);
    else if (!strcmp(c, "peak")) s = SD3_OK;
    else s = sd3_errf(&err, SD3_ERR_INVALID_ARG, "unknown component '%s'", c);
    const char *variant = k_linear_variant(o->stored);   /* with the precision mode still set */
    k_set_precision(0);
    if (s) {
        fprintf(stderr, "sd3 bench: error: %s\n", err.msg);
        return 1;
    }
    double peak = o->bf16 ? o->peak_bf16 : o->peak_fp32, load1 = load_avg();
    double peak_cpu = o->bf16 ? o->peak_bf16_cpu : o->peak_fp32_cpu;
    double gflops = r.seconds > 0 ? r.flops / r.seconds * 1e-9 : 0, ratio = peak > 0 ? gflops / peak : 0;
    double full_s = r.flops > 0 ? r.seconds * r.full_flops / r.flops : 0;
    /* GFLOP/s per CPU time given to the threads: what the run would reach with its cores to itself */
    double gflops_cpu = r.cpu_s > 0 ? r.flops / (r.cpu_s / pool_threads()) * 1e-9 : 0;
    double rss = rss_fresh ? rss_hwm_mb() : (double)sd3_peak_rss() / (1024.0 * 1024.0);
    if (r.have_stages)
        for (int i = 0; i < 3; i++) rss = r.stage_rss[i] > rss ? r.stage_rss[i] : rss;
    if (strcmp(c, "peak")) {
        printf("%s %s %dx%d %s threads %d: %.3f s (median of %d), %.4g GFLOP, %.1f GFLOP/s = %.1f%% of the %s peak "
               "%.1f GFLOP/s; peak RSS %.0f MB\n",
               syn_arch_name(o->arch), c, o->width, o->height, o->bf16 ? "bf16" : "fp32", pool_threads(), r.seconds, r.runs,
               r.flops * 1e-9, gflops, 100 * ratio, o->bf16 ? "bf16" : "fp32", peak, rss);
        if (r.seconds > 0 && r.cpu_s < 0.9 * r.seconds * pool_threads())
            printf("  note: %.2f CPU s in %.2f s on %d threads (%.0f%% of the threads' time): the machine is busy; "
                   "per CPU time %.1f GFLOP/s = %.1f%% of the peak per CPU time (about %.2f s on an idle machine)\n",
                   r.cpu_s, r.seconds, pool_threads(), 100 * r.cpu_s / (r.seconds * pool_threads()), gflops_cpu,
                   peak_cpu > 0 ? 100 * gflops_cpu / peak_cpu : 0, r.cpu_s / pool_threads());
        if (r.layers_run && r.layers_run < r.layers_total)
            printf("  %d of %d blocks run: whole model estimated at %.2f s (scaled by FLOPs)\n", r.layers_run,
                   r.layers_total, full_s);
        if (r.have_stages)
            printf("  stages: encode prompts %.2f s (peak RSS %.0f MB), denoise %d steps %.2f s (%.0f MB), "
                   "VAE decode %.2f s (%.0f MB)\n",
                   r.stage_s[0], r.stage_rss[0], o->steps, r.stage_s[1], r.stage_rss[1], r.stage_s[2], r.stage_rss[2]);
    }
    printf("{\"arch\": \"%s\", \"component\": \"%s\", \"width\": %d, \"height\": %d, \"precision\": \"%s\", "
           "\"stored_dtype\": \"%s\", \"threads\": %d, \"tokens\": %d, \"flops\": %.6g, \"seconds\": %.4f, "
           "\"gflops\": %.2f, \"peak_rss_mb\": %.0f, \"peak_gflops_fp32\": %.1f, \"peak_gflops_bf16\": %.1f, "
           "\"ratio_to_peak\": %.4f, \"runs\": %d, \"warmup\": %d, \"layers_run\": %d, \"layers_total\": %d, "
           "\"seconds_full_estimate\": %.4f, \"cpu_seconds\": %.3f, \"seconds_idle_estimate_full\": %.3f, "
           "\"gflops_cpu\": %.2f, \"peak_gflops_cpu\": %.1f, \"ratio_to_peak_cpu\": %.4f, \"load_before\": %.2f, "
           "\"load_after\": %.2f, "
           "\"gemm\": \"%s\"",
           syn_arch_name(o->arch), c, o->width, o->height, o->bf16 ? "bf16" : "fp32", dtype_name(o->stored),
           pool_threads(), r.tokens, r.flops, r.seconds, gflops, rss, o->peak_fp32, o->peak_bf16, ratio, r.runs,
           o->warmup, r.layers_run, r.layers_total, full_s, r.cpu_s, full_s > 0 ? r.cpu_s / pool_threads() * full_s / r.seconds : 0, gflops_cpu, peak_cpu,
           peak_cpu > 0 ? gflops_cpu / peak_cpu : 0, load0, load1, variant);
    if (r.have_stages)
        printf(", \"steps\": %d, \"no_t5\": %s, \"stream_layers\": %s, \"encode_s\": %.3f, \"encode_rss_mb\": %.0f, \"denoise_s\": %.3f, "
               "\"denoise_rss_mb\": %.0f, \"decode_s\": %.3f, \"decode_rss_mb\": %.0f",
               o->steps, o->no_t5 ? "true" : "false", o->stream_layers ? "true" : "false", r.stage_s[0], r.stage_rss[0], r.stage_s[1], r.stage_rss[1],
               r.stage_s[2], r.stage_rss[2]);
    printf("}\n");
    fflush(stdout);
    return 0;
}

/* Parse a positive integer option value in [lo, hi]; -1 on error. */
static long int_arg(const char *opt, const char *v, long lo, long hi) {
    char *end;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || *end || x < lo || x > hi) {
        fprintf(stderr, "sd3 bench: error: %s needs an integer in [%ld, %ld]\n", opt, lo, hi);
        return -1;
    }
    return x;
}

/* `sd3 bench` (argv without "sd3 bench"): parse the options, measure the peak, run one benchmark or the
 * standard set. Returns the process exit status (2 for bad usage). */
int sd3_cmd_bench(int argc, char **argv) {
    bench_opts o;
    memset(&o, 0, sizeof o);
    o.arch = SYN_SD3_MEDIUM;
    o.component = "mmdit";
    o.width = o.height = 512;
    o.runs = -1;
    o.warmup = -1;
    o.steps = 2;
    o.batch = -1;
    o.tokens = 256;
    o.stored = DT_BF16;
    int standard = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long x = 0;
#define INTOPT(name, lo, hi, dst)                              \
    else if (!strcmp(a, name)) {                               \
        if ((x = int_arg(a, v, lo, hi)) < 0) return 2;         \
        dst = (int)x;                                          \
        i++;                                                   \
    }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(USAGE, stdout); return 0; }
        else if (!strcmp(a, "--arch")) {
            if (!v || syn_arch_parse(v, &o.arch)) { fprintf(stderr, "sd3 bench: error: --arch sd3-medium|sd3.5-medium|sd3.5-large\n"); return 2; }
            i++;
        } else if (!strcmp(a, "--component")) {
            if (!v) { fputs(USAGE, stderr); return 2; }
            o.component = v;
            i++;
        } else if (!strcmp(a, "--precision")) {
            if (!v || (strcmp(v, "fp32") && strcmp(v, "bf16"))) { fprintf(stderr, "sd3 bench: error: --precision fp32|bf16\n"); return 2; }
            o.bf16 = !strcmp(v, "bf16");
            i++;
        } else if (!strcmp(a, "--dtype")) {
            if (!v || (strcmp(v, "bf16") && strcmp(v, "fp16") && strcmp(v, "fp32"))) { fprintf(stderr, "sd3 bench: error: --dtype bf16|fp16|fp32\n"); return 2; }
            o.stored = !strcmp(v, "bf16") ? DT_BF16 : !strcmp(v, "fp16") ? DT_F16 : DT_F32;
            i++;
        }
        INTOPT("--width", 16, 4096, o.width)
        INTOPT("--height", 16, 4096, o.height)
        INTOPT("--threads", 0, 256, o.threads)
        INTOPT("--runs", 1, MAX_RUNS, o.runs)
        INTOPT("--warmup", 0, 16, o.warmup)
        INTOPT("--steps", 1, 1000, o.steps)
        INTOPT("--batch", 1, 64, o.batch)
        INTOPT("--tokens", 1, 512, o.tokens)
        INTOPT("--layers", 1, 1000, o.layers)
        else if (!strcmp(a, "--no-t5")) o.no_t5 = 1;
        else if (!strcmp(a, "--stream-layers")) o.stream_layers = 1;
        else if (!strcmp(a, "--no-peak")) o.no_peak = 1;
        else if (!strcmp(a, "--breakdown")) o.breakdown = 1;
        else if (!strcmp(a, "--standard")) standard = 1;
        else { fprintf(stderr, "sd3 bench: error: unknown option '%s'\n", a); fputs(USAGE, stderr); return 2; }
#undef INTOPT
    }
    if (o.width % 16 || o.height % 16) { fprintf(stderr, "sd3 bench: error: width and height must be multiples of 16\n"); return 2; }
    pool_set_threads(o.threads);
    if (!o.no_peak) {
        machine_peaks(&o.peak_fp32, &o.peak_bf16, &o.peak_fp32_cpu, &o.peak_bf16_cpu);
        printf("peak (%d threads): fp32 FMA %.1f GFLOP/s, bf16 dot %.1f GFLOP/s (per CPU time: %.1f, %.1f)\n",
               pool_threads(), o.peak_fp32, o.peak_bf16, o.peak_fp32_cpu, o.peak_bf16_cpu);
    }
    if (!standard) {
        int pipe = !strcmp(o.component, "pipeline");
        if (o.runs < 0) o.runs = pipe ? 1 : 3;
        if (o.warmup < 0) o.warmup = pipe ? 0 : 1;
        if (o.batch < 0) o.batch = !strncmp(o.component, "vae", 3) ? 1 : 2;
        if (pipe && o.runs != 1) fprintf(stderr, "bench: the pipeline runs once (--runs ignored)\n");
        return bench_one(&o);
    }
    /* the short standard set: every component at its SD3 shape, the big ones on a few blocks */
    static const struct { const char *comp; int size, bf16, layers, batch; } SET[] = {
        {"mmdit", 512, 1, 2, 2}, {"mmdit", 512, 0, 2, 2}, {"t5", 0, 1, 2, 2},
        {"clip-l", 0, 1, 0, 2},  {"clip-g", 0, 1, 0, 2},  {"vae-decode", 256, 1, 0, 1},
    };
    int rc = 0;
    for (size_t k = 0; k < sizeof SET / sizeof SET[0]; k++) {
        bench_opts q = o;
        q.component = SET[k].comp;
        if (SET[k].size) q.width = q.height = SET[k].size;
        q.bf16 = SET[k].bf16;
        q.layers = SET[k].layers;
        q.batch = SET[k].batch;
        q.runs = 1;
        q.warmup = 1;
        rc |= bench_one(&q);
    }
    return rc;
}

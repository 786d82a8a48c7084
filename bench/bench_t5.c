/*
 * bench_t5.c — time the T5-XXL encoder (SD3's text_encoder_3) at full size on random BF16 weights.
 *
 *   bench_t5 [--path FILE] [--batch B] [--tokens T] [--layers N] [--max-seconds S]
 *
 * Shapes: d_model 4096, 64 heads x 64, d_ff 10240, 24 blocks, vocab 32128 (4.76 B parameters, 9.5 GB
 * as BF16). The weights are generated ONCE into FILE (default /tmp/sd3_bench_t5xxl_bf16.safetensors,
 * streamed tensor by tensor so generation needs little memory; skipped with a message if the disk
 * lacks space) and reused by later runs; the encoder then mmaps them like a real checkpoint. Default
 * workload: 2 x 256 tokens through all 24 blocks, as encode_prompt does with CFG.
 *
 * The first block is timed on its own; if the estimated full encode would take longer than
 * --max-seconds (default 600; 0 = no limit) the bench prints the estimate instead of running it (the
 * scalar reference kernels need hours for the full encode). Prints seconds, the k_linear variant used
 * for BF16, and the peak RSS (which includes the mapped weight pages touched).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include "io/weights.h"
#include "kernels/kernels.h"
#include "text/t5.h"

enum { XXL_D = 4096, XXL_H = 64, XXL_DKV = 64, XXL_FF = 10240, XXL_L = 24, XXL_V = 32128, XXL_NB = 32 };

/* One tensor of the generated file: name, shape, which value pool fills it. */
typedef struct gen_tensor {
    char name[96];
    int64_t rows, cols;        /* cols 0 = 1-D */
    int pool;                  /* 0: N(0, 1/4096), 1: N(0, 1/10240), 2: ones + noise (norms), 3: N(0, 1) */
} gen_tensor;

/* Every tensor of a T5-XXL encoder checkpoint, in file order; returns the count. */
static int xxl_tensors(gen_tensor *t) {
    int n = 0;
    const int I = XXL_H * XXL_DKV;
    t[n++] = (gen_tensor){"shared.weight", XXL_V, XXL_D, 3};
    t[n++] = (gen_tensor){"encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", XXL_NB, XXL_H, 3};
    for (int i = 0; i < XXL_L; i++) {
        struct { const char *k; int64_t r, c; int pool; } ks[] = {
            {"layer.0.layer_norm.weight", XXL_D, 0, 2},
            {"layer.0.SelfAttention.q.weight", I, XXL_D, 0},
            {"layer.0.SelfAttention.k.weight", I, XXL_D, 0},
            {"layer.0.SelfAttention.v.weight", I, XXL_D, 0},
            {"layer.0.SelfAttention.o.weight", XXL_D, I, 0},
            {"layer.1.layer_norm.weight", XXL_D, 0, 2},
            {"layer.1.DenseReluDense.wi_0.weight", XXL_FF, XXL_D, 0},
            {"layer.1.DenseReluDense.wi_1.weight", XXL_FF, XXL_D, 0},
            {"layer.1.DenseReluDense.wo.weight", XXL_D, XXL_FF, 1},
        };
        for (size_t k = 0; k < sizeof ks / sizeof ks[0]; k++) {
            snprintf(t[n].name, sizeof t[n].name, "encoder.block.%d.%s", i, ks[k].k);
            t[n].rows = ks[k].r;
            t[n].cols = ks[k].c;
            t[n].pool = ks[k].pool;
            n++;
        }
    }
    t[n++] = (gen_tensor){"encoder.final_layer_norm.weight", XXL_D, 0, 2};
    return n;
}

/* Bytes of tensor t as BF16. */
static uint64_t gen_bytes(const gen_tensor *t) { return (uint64_t)t->rows * (t->cols ? t->cols : 1) * 2; }

/* xorshift64* in [0, 1). */
static double urand(uint64_t *s) {
    *s ^= *s >> 12; *s ^= *s << 25; *s ^= *s >> 27;
    return (double)((*s * 2685821657736338717ull) >> 11) * (1.0 / 9007199254740992.0);
}

/* Write the whole buffer, retrying on short writes. */
static int write_all(FILE *f, const void *p, size_t n) { return fwrite(p, 1, n, f) == n ? 0 : -1; }

/* Generate the checkpoint into path (via path.tmp, renamed at the end). Values come from four pools of
 * 8 M random BF16 values each, read at a random offset per 1 M-value chunk: random enough for timing,
 * fast enough to be limited by the disk. */
static int generate(const char *path, const gen_tensor *t, int n) {
    const size_t POOL = (size_t)8 << 20, CHUNK = (size_t)1 << 20;
    uint16_t *pool[4];
    uint64_t s = 0x9E3779B97F4A7C15ull;
    const double sd[4] = {1.0 / 64.0, 1.0 / sqrt(10240.0), 0.1, 1.0};
    for (int p = 0; p < 4; p++) {
        pool[p] = malloc((POOL + CHUNK) * 2);
        if (!pool[p]) return -1;
        for (size_t i = 0; i < POOL + CHUNK; i++) {
            double u1 = urand(&s) + 1e-300, u2 = urand(&s);
            double g = sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2) * sd[p];
            pool[p][i] = f32_to_bf16((float)(p == 2 ? 1.0 + g : g));
        }
    }
    /* header */
    size_t cap = (size_t)n * 256 + 64, len = 0;
    char *hdr = malloc(cap);
    uint64_t off = 0;
    len += (size_t)snprintf(hdr + len, cap - len, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int i = 0; i < n; i++) {
        uint64_t b = gen_bytes(&t[i]);
        if (t[i].cols)
            len += (size_t)snprintf(hdr + len, cap - len, ",\"%s\":{\"dtype\":\"BF16\",\"shape\":[%lld,%lld],\"data_offsets\":[%llu,%llu]}",
                                    t[i].name, (long long)t[i].rows, (long long)t[i].cols, (unsigned long long)off,
                                    (unsigned long long)(off + b));
        else
            len += (size_t)snprintf(hdr + len, cap - len, ",\"%s\":{\"dtype\":\"BF16\",\"shape\":[%lld],\"data_offsets\":[%llu,%llu]}",
                                    t[i].name, (long long)t[i].rows, (unsigned long long)off, (unsigned long long)(off + b));
        off += b;
    }
    len += (size_t)snprintf(hdr + len, cap - len, "}");
    while ((8 + len) % 64) hdr[len++] = ' ';
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    int rc = f ? 0 : -1;
    uint64_t hl = len;
    unsigned char l8[8];
    for (int i = 0; i < 8; i++) l8[i] = (unsigned char)(hl >> (8 * i));
    if (!rc) rc = write_all(f, l8, 8) || write_all(f, hdr, len);
    double t0 = sd3_time();
    uint64_t done = 0;
    for (int i = 0; i < n && !rc; i++) {
        uint64_t left = gen_bytes(&t[i]) / 2;
        while (left && !rc) {
            size_t c = left < CHUNK ? (size_t)left : CHUNK;
            size_t at = (size_t)(urand(&s) * (double)POOL);
            rc = write_all(f, pool[t[i].pool] + at, c * 2);
            left -= c;
            done += c * 2;
        }
        if (i % 27 == 0) { printf("\r  generating %s: %.1f / %.1f GB", path, done / 1e9, off / 1e9); fflush(stdout); }
    }
    printf("\n");
    if (f && fclose(f)) rc = -1;
    if (!rc) rc = rename(tmp, path);
    if (rc) { fprintf(stderr, "bench_t5: writing %s failed: %s\n", tmp, strerror(errno)); unlink(tmp); }
    else printf("  wrote %.2f GB in %.1f s\n", (8 + len + off) / 1e9, sd3_time() - t0);
    free(hdr);
    for (int p = 0; p < 4; p++) free(pool[p]);
    return rc;
}

/* The XXL config as a cJSON object (keys as in SD3's text_encoder_3/config.json). */
static cJSON *xxl_config(void) {
    cJSON *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "d_model", XXL_D);
    cJSON_AddNumberToObject(c, "d_kv", XXL_DKV);
    cJSON_AddNumberToObject(c, "num_heads", XXL_H);
    cJSON_AddNumberToObject(c, "d_ff", XXL_FF);
    cJSON_AddNumberToObject(c, "num_layers", XXL_L);
    cJSON_AddNumberToObject(c, "vocab_size", XXL_V);
    cJSON_AddNumberToObject(c, "relative_attention_num_buckets", XXL_NB);
    cJSON_AddNumberToObject(c, "relative_attention_max_distance", 128);
    cJSON_AddNumberToObject(c, "layer_norm_epsilon", 1e-6);
    cJSON_AddStringToObject(c, "feed_forward_proj", "gated-gelu");
    return c;
}

int main(int argc, char **argv) {
    const char *path = "/tmp/sd3_bench_t5xxl_bf16.safetensors";
    int B = 2, T = 256, layers = XXL_L;
    double max_s = 600;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--path") && i + 1 < argc) path = argv[++i];
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc) B = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--tokens") && i + 1 < argc) T = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--layers") && i + 1 < argc) layers = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--max-seconds") && i + 1 < argc) max_s = atof(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_t5 [--path FILE] [--batch B] [--tokens T] [--layers N] [--max-seconds S]\n");
            return 2;
        }
    }
    if (B < 1 || T < 1 || T > 4096 || layers < 1 || layers > XXL_L) { fprintf(stderr, "bench_t5: bad sizes\n"); return 2; }

    static gen_tensor gt[2 + XXL_L * 9 + 1];
    int n = xxl_tensors(gt);
    uint64_t total = 0;
    for (int i = 0; i < n; i++) total += gen_bytes(&gt[i]);
    printf("bench_t5: T5-XXL encoder, %.2f B params (%.2f GB BF16), %d x %d tokens, %d of %d blocks\n",
           total / 2 / 1e9, total / 1e9, B, T, layers, XXL_L);

    /* Reuse the generated file when it is there and valid; else generate it if the disk has room. */
    sd3_err err = {0};
    weights w;
    if (weights_open_file(&w, path, &err) != SD3_OK) {
        if (access(path, F_OK) == 0) { fprintf(stderr, "bench_t5: %s exists but is not usable: %s\n", path, err.msg); return 1; }
        char dir[4096];
        snprintf(dir, sizeof dir, "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash) *slash = 0; else snprintf(dir, sizeof dir, ".");
        struct statvfs sv;
        uint64_t need = total + ((uint64_t)2 << 30);
        if (statvfs(dir[0] ? dir : "/", &sv) != 0 || (uint64_t)sv.f_bavail * sv.f_frsize < need) {
            printf("bench_t5: skipped: %s lacks %.1f GB free for the generated weights\n", dir, need / 1e9);
            return 0;
        }
        if (generate(path, gt, n)) return 1;
        if (weights_open_file(&w, path, &err) != SD3_OK) { fprintf(stderr, "bench_t5: %s\n", err.msg); return 1; }
    }
    cJSON *cfg = xxl_config();
    t5_model m;
    if (t5_load(&m, &w, cfg, "t5xxl-bench", &err) != SD3_OK) { fprintf(stderr, "bench_t5: %s\n", err.msg); return 1; }
    printf("  weights %s, k_linear variant for BF16: %s, %d threads\n", path, k_linear_variant(DT_BF16), pool_threads());

    int64_t *ids = malloc(sizeof(int64_t) * (size_t)B * T);
    uint64_t s = 12345;
    for (int i = 0; i < B * T; i++) ids[i] = (int64_t)(urand(&s) * 32000);
    float *out = sd3_malloc(sizeof(float) * (size_t)B * T * XXL_D);
    if (!ids || !out) { fprintf(stderr, "bench_t5: out of memory\n"); return 1; }

    /* One block first (hidden_states[1]: embedding + bias table + block 0), for the estimate. */
    double t0 = sd3_time();
    if (t5_forward_hidden(&m, ids, B, T, 1, out, &err) != SD3_OK) { fprintf(stderr, "bench_t5: %s\n", err.msg); return 1; }
    double t1 = sd3_time() - t0;
    printf("  1 block:  %.2f s  (%.1f GFLOP/s in the linears)\n", t1,
           2.0 * B * T * (4.0 * XXL_D * XXL_D + 3.0 * XXL_D * XXL_FF) / t1 / 1e9);
    double est = t1 * layers;
    if (max_s > 0 && est > max_s) {
        printf("  %d blocks: estimated %.0f s (not run: over --max-seconds %.0f)\n", layers, est, max_s);
    } else {
        t0 = sd3_time();
        sd3_status st = layers == XXL_L ? t5_forward(&m, ids, B, T, out, &err)
                                        : t5_forward_hidden(&m, ids, B, T, layers, out, &err);
        if (st != SD3_OK) { fprintf(stderr, "bench_t5: %s\n", err.msg); return 1; }
        double tt = sd3_time() - t0;
        double sum = 0;
        for (size_t i = 0; i < (size_t)B * T * XXL_D; i++) sum += fabs(out[i]);
        printf("  %d blocks%s: %.2f s  (mean |out| %.3g)\n", layers, layers == XXL_L ? " + final norm" : "", tt,
               sum / ((double)B * T * XXL_D));
    }
    printf("  peak RSS %.2f GB\n", sd3_peak_rss() / 1e9);
    t5_free(&m);
    weights_close(&w);
    cJSON_Delete(cfg);
    free(ids);
    sd3_free(out);
    return 0;
}

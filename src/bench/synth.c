/* synth.c — full-size random SD3 components written as diffusers folders for benchmarks (see synth.h). */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include "bench/synth.h"
#include "io/safetensors.h"

#define SYN_DEFAULT_CACHE "/tmp/sd3c-bench"
#define SYN_DEFAULT_TOKENIZERS "/work/shared/golden/tiny-sd3"
#define SYN_BENCH_T5_FILE "/tmp/sd3_bench_t5xxl_bf16.safetensors"   /* bench/bench_t5's generated T5-XXL */
#define SYN_POOL (1 << 22)      /* standard normals in the value pool */
#define SYN_CHUNK (1 << 20)     /* values per random offset */

/* ================================================================================================ */
/* Names and shapes                                                                                 */
/* ================================================================================================ */

static const char *const ARCH_NAMES[SYN_ARCH_COUNT] = {"sd3-medium", "sd3.5-medium", "sd3.5-large"};
static const char *const COMP_NAMES[SYN_COMP_COUNT] = {"mmdit", "vae", "clip-l", "clip-g", "t5xxl"};

/* Names by enum value ("?" outside the range). */
const char *syn_arch_name(syn_arch a) { return a >= 0 && a < SYN_ARCH_COUNT ? ARCH_NAMES[a] : "?"; }
const char *syn_comp_name(syn_comp c) { return c >= 0 && c < SYN_COMP_COUNT ? COMP_NAMES[c] : "?"; }

int syn_arch_parse(const char *s, syn_arch *a) {
    for (int i = 0; i < SYN_ARCH_COUNT; i++)
        if (!strcmp(s, ARCH_NAMES[i])) { *a = (syn_arch)i; return 0; }
    return -1;
}

void syn_mmdit_config(syn_arch a, mmdit_config *c) {
    *c = mmdit_config_default();
    c->sample_size = 128;
    c->patch_size = 2;
    c->in_channels = c->out_channels = 16;
    c->attention_head_dim = 64;
    c->joint_attention_dim = 4096;
    c->pooled_projection_dim = 2048;
    c->num_layers = c->num_attention_heads = a == SYN_SD35_LARGE ? 38 : 24;
    c->caption_projection_dim = c->num_attention_heads * 64;
    c->pos_embed_max_size = a == SYN_SD35_MEDIUM ? 384 : 192;
    c->qk_norm = a != SYN_SD3_MEDIUM;
    c->n_dual = 0;
    if (a == SYN_SD35_MEDIUM)
        for (int i = 0; i <= 12; i++) c->dual_attention_layers[c->n_dual++] = i;
}

syn_clip_shape syn_clip_l(void) { return (syn_clip_shape){768, 12, 12, 3072, 768, 49408, 77, 1}; }
syn_clip_shape syn_clip_g(void) { return (syn_clip_shape){1280, 32, 20, 5120, 1280, 49408, 77, 0}; }
syn_t5_shape syn_t5xxl(void) { return (syn_t5_shape){4096, 64, 64, 10240, 24, 32128, 32, 128}; }

/* One tensor to generate: checkpoint key and shape. */
typedef struct syn_tensor {
    char name[120];
    int ndim;
    int64_t shape[4];
} syn_tensor;

typedef struct syn_list {
    syn_tensor *v;
    int n, cap;
    int oom;
} syn_list;

/* Append a tensor of ndim dims (printf-style name); sets l->oom on allocation failure. */
static void add(syn_list *l, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));
static void add(syn_list *l, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3, const char *fmt, ...) {
    if (l->oom) return;
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 256;
        syn_tensor *v = realloc(l->v, sizeof *v * (size_t)cap);
        if (!v) { l->oom = 1; return; }
        l->v = v;
        l->cap = cap;
    }
    syn_tensor *t = &l->v[l->n++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    t->ndim = ndim;
    int64_t d[4] = {d0, d1, d2, d3};
    memcpy(t->shape, d, sizeof d);
}

/* A Linear "<mod>.weight" [N, K] and "<mod>.bias" [N]. */
static void add_linear(syn_list *l, const char *mod, int64_t N, int64_t K, int bias) {
    add(l, 2, N, K, 0, 0, "%s.weight", mod);
    if (bias) add(l, 1, N, 0, 0, 0, "%s.bias", mod);
}

/* A conv "<mod>.weight" [cout, cin, k, k] + bias. */
static void add_conv(syn_list *l, const char *mod, int64_t cout, int64_t cin, int64_t k) {
    add(l, 4, cout, cin, k, k, "%s.weight", mod);
    add(l, 1, cout, 0, 0, 0, "%s.bias", mod);
}

/* A norm with weight and bias [C]. */
static void add_norm(syn_list *l, const char *mod, int64_t C) {
    add(l, 1, C, 0, 0, 0, "%s.weight", mod);
    add(l, 1, C, 0, 0, 0, "%s.bias", mod);
}

/* SD3Transformer2DModel keys (diffusers layout; the loader's key table in mmdit_load.c). */
static void list_mmdit(syn_list *l, const mmdit_config *c) {
    const int64_t C = (int64_t)c->num_attention_heads * c->attention_head_dim, D = c->attention_head_dim;
    const int64_t M = c->pos_embed_max_size, p = c->patch_size;
    add(l, 3, 1, M * M, C, 0, "pos_embed.pos_embed");
    add_conv(l, "pos_embed.proj", C, c->in_channels, p);
    add_linear(l, "time_text_embed.timestep_embedder.linear_1", C, MMDIT_FREQ_DIM, 1);
    add_linear(l, "time_text_embed.timestep_embedder.linear_2", C, C, 1);
    add_linear(l, "time_text_embed.text_embedder.linear_1", C, c->pooled_projection_dim, 1);
    add_linear(l, "time_text_embed.text_embedder.linear_2", C, C, 1);
    add_linear(l, "context_embedder", C, c->joint_attention_dim, 1);
    char m[160];
    for (int i = 0; i < c->num_layers; i++) {
        int last = i == c->num_layers - 1, dual = mmdit_config_is_dual(c, i);
#define BL(name, N, K) (snprintf(m, sizeof m, "transformer_blocks.%d.%s", i, name), add_linear(l, m, N, K, 1))
#define BN(name) add(l, 1, D, 0, 0, 0, "transformer_blocks.%d.%s.weight", i, name)
        BL("norm1.linear", (dual ? 9 : 6) * C, C);
        BL("norm1_context.linear", (last ? 2 : 6) * C, C);
        BL("attn.to_q", C, C);
        BL("attn.to_k", C, C);
        BL("attn.to_v", C, C);
        BL("attn.add_q_proj", C, C);
        BL("attn.add_k_proj", C, C);
        BL("attn.add_v_proj", C, C);
        if (c->qk_norm) {
            BN("attn.norm_q");
            BN("attn.norm_k");
            BN("attn.norm_added_q");
            BN("attn.norm_added_k");
        }
        BL("attn.to_out.0", C, C);
        if (!last) BL("attn.to_add_out", C, C);
        if (dual) {
            BL("attn2.to_q", C, C);
            BL("attn2.to_k", C, C);
            BL("attn2.to_v", C, C);
            if (c->qk_norm) {
                BN("attn2.norm_q");
                BN("attn2.norm_k");
            }
            BL("attn2.to_out.0", C, C);
        }
        BL("ff.net.0.proj", 4 * C, C);
        BL("ff.net.2", C, 4 * C);
        if (!last) {
            BL("ff_context.net.0.proj", 4 * C, C);
            BL("ff_context.net.2", C, 4 * C);
        }
#undef BL
#undef BN
    }
    add_linear(l, "norm_out.linear", 2 * C, C, 1);
    add_linear(l, "proj_out", p * p * c->out_channels, C, 1);
}

/* A ResnetBlock2D at prefix (diffusers names). */
static void list_resnet(syn_list *l, const char *prefix, int cin, int cout) {
    char m[200];
    snprintf(m, sizeof m, "%s.norm1", prefix);
    add_norm(l, m, cin);
    snprintf(m, sizeof m, "%s.conv1", prefix);
    add_conv(l, m, cout, cin, 3);
    snprintf(m, sizeof m, "%s.norm2", prefix);
    add_norm(l, m, cout);
    snprintf(m, sizeof m, "%s.conv2", prefix);
    add_conv(l, m, cout, cout, 3);
    if (cin != cout) {
        snprintf(m, sizeof m, "%s.conv_shortcut", prefix);
        add_conv(l, m, cout, cin, 1);
    }
}

/* UNetMidBlock2D of part ("encoder"/"decoder") with C channels. */
static void list_vae_mid(syn_list *l, const char *part, int C) {
    char m[200];
    for (int k = 0; k < 2; k++) {
        snprintf(m, sizeof m, "%s.mid_block.resnets.%d", part, k);
        list_resnet(l, m, C, C);
    }
    const char *names[4] = {"to_q", "to_k", "to_v", "to_out.0"};
    snprintf(m, sizeof m, "%s.mid_block.attentions.0.group_norm", part);
    add_norm(l, m, C);
    for (int k = 0; k < 4; k++) {
        snprintf(m, sizeof m, "%s.mid_block.attentions.0.%s", part, names[k]);
        add_linear(l, m, C, C, 1);
    }
}

/* AutoencoderKL keys (diffusers layout; vae_load.c). */
static void list_vae(syn_list *l, const vae_config *c) {
    const int *boc = c->block_out_channels, n = c->n_levels;
    char m[200];
    add_conv(l, "encoder.conv_in", boc[0], c->in_channels, 3);
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < c->layers_per_block; j++) {
            snprintf(m, sizeof m, "encoder.down_blocks.%d.resnets.%d", i, j);
            list_resnet(l, m, j ? boc[i] : (i ? boc[i - 1] : boc[0]), boc[i]);
        }
        if (i < n - 1) {
            snprintf(m, sizeof m, "encoder.down_blocks.%d.downsamplers.0.conv", i);
            add_conv(l, m, boc[i], boc[i], 3);
        }
    }
    list_vae_mid(l, "encoder", boc[n - 1]);
    add_norm(l, "encoder.conv_norm_out", boc[n - 1]);
    add_conv(l, "encoder.conv_out", 2 * c->latent_channels, boc[n - 1], 3);
    add_conv(l, "decoder.conv_in", boc[n - 1], c->latent_channels, 3);
    list_vae_mid(l, "decoder", boc[n - 1]);
    int prev = boc[n - 1];
    for (int i = 0; i < n; i++) {
        int cout = boc[n - 1 - i];
        for (int j = 0; j < c->layers_per_block + 1; j++) {
            snprintf(m, sizeof m, "decoder.up_blocks.%d.resnets.%d", i, j);
            list_resnet(l, m, j ? cout : prev, cout);
        }
        if (i < n - 1) {
            snprintf(m, sizeof m, "decoder.up_blocks.%d.upsamplers.0.conv", i);
            add_conv(l, m, cout, cout, 3);
        }
        prev = cout;
    }
    add_norm(l, "decoder.conv_norm_out", boc[0]);
    add_conv(l, "decoder.conv_out", c->out_channels, boc[0], 3);
}

/* CLIPTextModelWithProjection keys (clip.c). */
static void list_clip(syn_list *l, const syn_clip_shape *s) {
    const int64_t C = s->hidden, F = s->inter;
    char m[200];
    add(l, 2, s->vocab, C, 0, 0, "text_model.embeddings.token_embedding.weight");
    add(l, 2, s->max_pos, C, 0, 0, "text_model.embeddings.position_embedding.weight");
    for (int i = 0; i < s->layers; i++) {
#define CL(name, N, K) (snprintf(m, sizeof m, "text_model.encoder.layers.%d.%s", i, name), add_linear(l, m, N, K, 1))
#define CN(name) (snprintf(m, sizeof m, "text_model.encoder.layers.%d.%s", i, name), add_norm(l, m, C))
        CN("layer_norm1");
        CL("self_attn.q_proj", C, C);
        CL("self_attn.k_proj", C, C);
        CL("self_attn.v_proj", C, C);
        CL("self_attn.out_proj", C, C);
        CN("layer_norm2");
        CL("mlp.fc1", F, C);
        CL("mlp.fc2", C, F);
#undef CL
#undef CN
    }
    add_norm(l, "text_model.final_layer_norm", C);
    add(l, 2, s->proj, C, 0, 0, "text_projection.weight");
}

/* T5EncoderModel keys (t5.c), in bench/bench_t5's order. */
static void list_t5(syn_list *l, const syn_t5_shape *s) {
    const int64_t d = s->d_model, I = (int64_t)s->heads * s->d_kv, F = s->d_ff;
    add(l, 2, s->vocab, d, 0, 0, "shared.weight");
    add(l, 2, s->buckets, s->heads, 0, 0, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight");
    for (int i = 0; i < s->layers; i++) {
        add(l, 1, d, 0, 0, 0, "encoder.block.%d.layer.0.layer_norm.weight", i);
        add(l, 2, I, d, 0, 0, "encoder.block.%d.layer.0.SelfAttention.q.weight", i);
        add(l, 2, I, d, 0, 0, "encoder.block.%d.layer.0.SelfAttention.k.weight", i);
        add(l, 2, I, d, 0, 0, "encoder.block.%d.layer.0.SelfAttention.v.weight", i);
        add(l, 2, d, I, 0, 0, "encoder.block.%d.layer.0.SelfAttention.o.weight", i);
        add(l, 1, d, 0, 0, 0, "encoder.block.%d.layer.1.layer_norm.weight", i);
        add(l, 2, F, d, 0, 0, "encoder.block.%d.layer.1.DenseReluDense.wi_0.weight", i);
        add(l, 2, F, d, 0, 0, "encoder.block.%d.layer.1.DenseReluDense.wi_1.weight", i);
        add(l, 2, d, F, 0, 0, "encoder.block.%d.layer.1.DenseReluDense.wo.weight", i);
    }
    add(l, 1, d, 0, 0, 0, "encoder.final_layer_norm.weight");
}

/* The tensor list of a component. */
static void list_component(syn_list *l, syn_arch a, syn_comp c) {
    if (c == SYN_MMDIT) {
        mmdit_config mc;
        syn_mmdit_config(a, &mc);
        list_mmdit(l, &mc);
    } else if (c == SYN_VAE) {
        vae_config vc;
        vae_config_sd3(&vc);
        list_vae(l, &vc);
    } else if (c == SYN_CLIP_L || c == SYN_CLIP_G) {
        syn_clip_shape s = c == SYN_CLIP_L ? syn_clip_l() : syn_clip_g();
        list_clip(l, &s);
    } else {
        syn_t5_shape s = syn_t5xxl();
        list_t5(l, &s);
    }
}

/* Elements of t. */
static int64_t numel(const syn_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

int64_t syn_component_params(syn_arch a, syn_comp c) {
    syn_list l = {0};
    list_component(&l, a, c);
    int64_t n = 0;
    for (int i = 0; i < l.n; i++) n += numel(&l.v[i]);
    free(l.v);
    return l.oom ? -1 : n;
}

/* ================================================================================================ */
/* Values                                                                                           */
/* ================================================================================================ */

/* xorshift64* step. */
static uint64_t rng_next(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

/* Uniform in (0, 1). */
static double rng_u01(uint64_t *s) { return ((double)(rng_next(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0); }

/* The standard-normal pool (Box-Muller), filled once. */
static float *normal_pool(uint64_t *s) {
    float *p = sd3_malloc(sizeof(float) * SYN_POOL);
    if (!p) return NULL;
    for (int i = 0; i < SYN_POOL; i += 2) {
        double r = sqrt(-2.0 * log(rng_u01(s))), th = 6.283185307179586 * rng_u01(s);
        p[i] = (float)(r * cos(th));
        p[i + 1] = (float)(r * sin(th));
    }
    return p;
}

/* How tensor t is initialised: *mean + *std x N(0, 1). */
static void init_of(const syn_tensor *t, float *mean, float *std) {
    const char *n = t->name;
    size_t len = strlen(n);
    int is_bias = len > 5 && !strcmp(n + len - 5, ".bias");
    *mean = 0.0f;
    if (strstr(n, "embedding") || strstr(n, "shared.weight") || strstr(n, "pos_embed.pos_embed") ||
        strstr(n, "relative_attention_bias")) {
        *std = 1.0f;
    } else if (is_bias) {
        *std = 0.02f;
    } else if (t->ndim == 1) {          /* norm scales */
        *mean = 1.0f;
        *std = 0.02f;
    } else {
        int64_t fan_in = numel(t) / t->shape[0];
        *std = (float)(1.0 / sqrt((double)fan_in));
    }
}

/* ================================================================================================ */
/* Writing                                                                                          */
/* ================================================================================================ */

/* Append printf-style text to a growing buffer; returns -1 on allocation failure. */
static int buf_printf(char **b, size_t *len, size_t *cap, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int buf_printf(char **b, size_t *len, size_t *cap, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(*b ? *b + *len : NULL, *b ? *cap - *len : 0, fmt, ap);
        va_end(ap);
        if (k < 0) return -1;
        if (*b && *len + (size_t)k < *cap) { *len += (size_t)k; return 0; }
        size_t nc = (*cap ? *cap * 2 : 65536) + (size_t)k;
        char *nb = realloc(*b, nc);
        if (!nb) return -1;
        *b = nb;
        *cap = nc;
    }
}

/* Bytes of free space on the file system holding path (-1 if unknown). */
static int64_t free_bytes(const char *path) {
    struct statvfs v;
    if (statvfs(path, &v)) return -1;
    return (int64_t)v.f_bavail * (int64_t)v.f_frsize;
}

/* Write the safetensors file of list l in dtype dt to path (streamed chunk by chunk; via a temp file). */
static sd3_status write_weights(const syn_list *l, dtype dt, const char *path, const char *what, sd3_err *err) {
    const size_t es = dtype_size(dt);
    char *hdr = NULL;
    size_t hl = 0, hc = 0;
    uint64_t off = 0;
    int bad = buf_printf(&hdr, &hl, &hc, "{\"__metadata__\":{\"format\":\"pt\",\"generator\":\"sd3c bench synth\"}");
    for (int i = 0; i < l->n && !bad; i++) {
        const syn_tensor *t = &l->v[i];
        uint64_t nb = (uint64_t)numel(t) * es;
        bad |= buf_printf(&hdr, &hl, &hc, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", t->name, dtype_name(dt));
        for (int k = 0; k < t->ndim; k++) bad |= buf_printf(&hdr, &hl, &hc, "%s%lld", k ? "," : "", (long long)t->shape[k]);
        bad |= buf_printf(&hdr, &hl, &hc, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                          (unsigned long long)(off + nb));
        off += nb;
    }
    bad |= buf_printf(&hdr, &hl, &hc, "}");
    while (!bad && hl % 8) bad |= buf_printf(&hdr, &hl, &hc, " ");
    if (bad) { free(hdr); return sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory building the header", path); }

    char dir[4400];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    int64_t need = (int64_t)(8 + hl + off) + (1ll << 30), have = free_bytes(dir);
    if (have >= 0 && have < need) {
        free(hdr);
        return sd3_errf(err, SD3_ERR_IO, "%s: not enough disk space to generate %s: %.1f GB needed (with 1 GB spare), "
                        "%.1f GB free; set SD3_BENCH_CACHE to a larger disk", dir, what, need / 1e9, have / 1e9);
    }
    char tmp[4500];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f) { free(hdr); return sd3_errf(err, SD3_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno)); }
    setvbuf(f, NULL, _IOFBF, 8 << 20);
    uint64_t s = 0x9E3779B97F4A7C15ull ^ (uint64_t)off;
    float *pool = normal_pool(&s), *fb = sd3_malloc(sizeof(float) * SYN_CHUNK);
    void *ob = sd3_malloc(es * SYN_CHUNK);
    sd3_status st = SD3_OK;
    if (!pool || !fb || !ob) { st = sd3_errf(err, SD3_ERR_NOMEM, "out of memory generating %s", what); goto done; }
    uint8_t len8[8];
    for (int k = 0; k < 8; k++) len8[k] = (uint8_t)((uint64_t)hl >> (8 * k));
    if (fwrite(len8, 1, 8, f) != 8 || fwrite(hdr, 1, hl, f) != hl) goto io;
    double t0 = sd3_time();
    uint64_t done_b = 0, next_report = 1ull << 30;
    fprintf(stderr, "bench: generating %s (%.2f GB, %s) into %s\n", what, off / 1e9, dtype_name(dt), path);
    for (int i = 0; i < l->n; i++) {
        const syn_tensor *t = &l->v[i];
        float mean, std;
        init_of(t, &mean, &std);
        for (int64_t left = numel(t); left > 0;) {
            int64_t n = left < SYN_CHUNK ? left : SYN_CHUNK;
            const float *src = pool + rng_next(&s) % (uint64_t)(SYN_POOL - SYN_CHUNK);
            for (int64_t k = 0; k < n; k++) fb[k] = mean + std * src[k];
            if (dt == DT_BF16) f32_to_bf16_row(fb, ob, (size_t)n);
            else if (dt == DT_F16) f32_to_fp16_row(fb, ob, (size_t)n);
            else memcpy(ob, fb, sizeof(float) * (size_t)n);
            if (fwrite(ob, es, (size_t)n, f) != (size_t)n) goto io;
            left -= n;
            done_b += (uint64_t)n * es;
            if (done_b >= next_report) {
                fprintf(stderr, "bench:   %.1f / %.1f GB (%.0f s)\n", done_b / 1e9, off / 1e9, sd3_time() - t0);
                next_report += 1ull << 30;
            }
        }
    }
    if (fflush(f)) goto io;
    if (fclose(f)) { f = NULL; goto io; }
    f = NULL;
    if (rename(tmp, path)) goto io;
    fprintf(stderr, "bench: %s written in %.1f s\n", what, sd3_time() - t0);
    goto done;
io:
    st = sd3_errf(err, SD3_ERR_IO, "%s: write failed: %s", tmp, strerror(errno));
    if (f) fclose(f);
    f = NULL;
    unlink(tmp);
done:
    if (f) fclose(f);
    free(hdr);
    sd3_free(pool);
    sd3_free(fb);
    sd3_free(ob);
    return st;
}

/* Does the file at path hold exactly the tensors of l in dtype dt (names, shapes, dtype)? */
static int file_matches(const syn_list *l, dtype dt, const char *path) {
    st_file *f = NULL;
    sd3_err e = {0};
    if (st_open(&f, path, &e) != SD3_OK) return 0;
    int ok = f->n == l->n;
    for (int i = 0; i < l->n && ok; i++) {
        const st_entry *en = st_find(f, l->v[i].name);
        ok = en && en->dt == dt && en->ndim == l->v[i].ndim;
        for (int k = 0; ok && k < en->ndim; k++) ok = en->shape[k] == l->v[i].shape[k];
    }
    st_close(f);
    return ok;
}

/* Write text to path (via a temp file). */
static sd3_status write_text(const char *path, const char *text, sd3_err *err) {
    char tmp[4500];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) return sd3_errf(err, SD3_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    int bad = fputs(text, f) < 0;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path)) {
        unlink(tmp);
        return sd3_errf(err, SD3_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    }
    return SD3_OK;
}

/* mkdir -p for one level (existing is fine). */
static sd3_status make_dir(const char *path, sd3_err *err) {
    if (mkdir(path, 0755) && errno != EEXIST)
        return sd3_errf(err, SD3_ERR_IO, "%s: cannot create folder: %s", path, strerror(errno));
    return SD3_OK;
}

/* The config.json text of a component into buf. */
static void config_text(syn_arch a, syn_comp c, char *b, size_t n) {
    if (c == SYN_MMDIT) {
        mmdit_config m;
        syn_mmdit_config(a, &m);
        char dual[256] = "";
        size_t k = 0;
        for (int i = 0; i < m.n_dual; i++)
            k += (size_t)snprintf(dual + k, sizeof dual - k, "%s%d", i ? ", " : "", m.dual_attention_layers[i]);
        snprintf(b, n,
                 "{\n  \"_class_name\": \"SD3Transformer2DModel\",\n  \"_diffusers_version\": \"0.32.2\",\n"
                 "  \"attention_head_dim\": %d,\n  \"caption_projection_dim\": %d,\n  \"dual_attention_layers\": [%s],\n"
                 "  \"in_channels\": %d,\n  \"joint_attention_dim\": %d,\n  \"num_attention_heads\": %d,\n"
                 "  \"num_layers\": %d,\n  \"out_channels\": %d,\n  \"patch_size\": %d,\n  \"pooled_projection_dim\": %d,\n"
                 "  \"pos_embed_max_size\": %d,\n  \"qk_norm\": %s,\n  \"sample_size\": %d\n}\n",
                 m.attention_head_dim, m.caption_projection_dim, dual, m.in_channels, m.joint_attention_dim,
                 m.num_attention_heads, m.num_layers, m.out_channels, m.patch_size, m.pooled_projection_dim,
                 m.pos_embed_max_size, m.qk_norm ? "\"rms_norm\"" : "null", m.sample_size);
    } else if (c == SYN_VAE) {
        snprintf(b, n,
                 "{\n  \"_class_name\": \"AutoencoderKL\",\n  \"_diffusers_version\": \"0.32.2\",\n  \"act_fn\": \"silu\",\n"
                 "  \"block_out_channels\": [128, 256, 512, 512],\n"
                 "  \"down_block_types\": [\"DownEncoderBlock2D\", \"DownEncoderBlock2D\", \"DownEncoderBlock2D\", "
                 "\"DownEncoderBlock2D\"],\n  \"force_upcast\": true,\n  \"in_channels\": 3,\n  \"latent_channels\": 16,\n"
                 "  \"latents_mean\": null,\n  \"latents_std\": null,\n  \"layers_per_block\": 2,\n"
                 "  \"mid_block_add_attention\": true,\n  \"norm_num_groups\": 32,\n  \"out_channels\": 3,\n"
                 "  \"sample_size\": 1024,\n  \"scaling_factor\": 1.5305,\n  \"shift_factor\": 0.0609,\n"
                 "  \"up_block_types\": [\"UpDecoderBlock2D\", \"UpDecoderBlock2D\", \"UpDecoderBlock2D\", "
                 "\"UpDecoderBlock2D\"],\n  \"use_post_quant_conv\": false,\n  \"use_quant_conv\": false\n}\n");
    } else if (c == SYN_CLIP_L || c == SYN_CLIP_G) {
        syn_clip_shape s = c == SYN_CLIP_L ? syn_clip_l() : syn_clip_g();
        snprintf(b, n,
                 "{\n  \"architectures\": [\"CLIPTextModelWithProjection\"],\n  \"attention_dropout\": 0.0,\n"
                 "  \"bos_token_id\": 0,\n  \"dropout\": 0.0,\n  \"eos_token_id\": 2,\n  \"hidden_act\": \"%s\",\n"
                 "  \"hidden_size\": %d,\n  \"initializer_factor\": 1.0,\n  \"initializer_range\": 0.02,\n"
                 "  \"intermediate_size\": %d,\n  \"layer_norm_eps\": 1e-05,\n  \"max_position_embeddings\": %d,\n"
                 "  \"model_type\": \"clip_text_model\",\n  \"num_attention_heads\": %d,\n  \"num_hidden_layers\": %d,\n"
                 "  \"pad_token_id\": 1,\n  \"projection_dim\": %d,\n  \"torch_dtype\": \"float16\",\n"
                 "  \"transformers_version\": \"4.46.0\",\n  \"vocab_size\": %d\n}\n",
                 s.quick_gelu ? "quick_gelu" : "gelu", s.hidden, s.inter, s.max_pos, s.heads, s.layers, s.proj, s.vocab);
    } else {
        syn_t5_shape s = syn_t5xxl();
        snprintf(b, n,
                 "{\n  \"architectures\": [\"T5EncoderModel\"],\n  \"classifier_dropout\": 0.0,\n  \"d_ff\": %d,\n"
                 "  \"d_kv\": %d,\n  \"d_model\": %d,\n  \"decoder_start_token_id\": 0,\n  \"dense_act_fn\": \"gelu_new\",\n"
                 "  \"dropout_rate\": 0.1,\n  \"eos_token_id\": 1,\n  \"feed_forward_proj\": \"gated-gelu\",\n"
                 "  \"initializer_factor\": 1.0,\n  \"is_encoder_decoder\": true,\n  \"is_gated_act\": true,\n"
                 "  \"layer_norm_epsilon\": 1e-06,\n  \"model_type\": \"t5\",\n  \"num_decoder_layers\": %d,\n"
                 "  \"num_heads\": %d,\n  \"num_layers\": %d,\n  \"pad_token_id\": 0,\n"
                 "  \"relative_attention_max_distance\": %d,\n  \"relative_attention_num_buckets\": %d,\n"
                 "  \"tie_word_embeddings\": false,\n  \"torch_dtype\": \"float16\",\n"
                 "  \"transformers_version\": \"4.46.0\",\n  \"use_cache\": true,\n  \"vocab_size\": %d\n}\n",
                 s.d_ff, s.d_kv, s.d_model, s.layers, s.heads, s.layers, s.max_distance, s.buckets, s.vocab);
    }
}

/* Folder suffix of a stored dtype. */
static const char *dt_tag(dtype dt) { return dt == DT_BF16 ? "bf16" : dt == DT_F16 ? "fp16" : "fp32"; }

sd3_status syn_cache_dir(char *out, size_t n, sd3_err *err) {
    const char *e = getenv("SD3_BENCH_CACHE");
    snprintf(out, n, "%s", e && *e ? e : SYN_DEFAULT_CACHE);
    return make_dir(out, err);
}

sd3_status syn_component_dir(syn_arch a, syn_comp c, dtype dt, const char *cache, char *out, size_t n, int *generated,
                             sd3_err *err) {
    if (generated) *generated = 0;
    if (dt != DT_BF16 && dt != DT_F16 && dt != DT_F32)
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "bench: stored dtype %s is not supported (bf16, fp16, fp32)", dtype_name(dt));
    char cbuf[4096];
    sd3_status s;
    if (!cache) {
        if ((s = syn_cache_dir(cbuf, sizeof cbuf, err))) return s;
        cache = cbuf;
    } else if ((s = make_dir(cache, err))) {
        return s;
    }
    if (c == SYN_MMDIT) snprintf(out, n, "%s/mmdit-%s-%s", cache, syn_arch_name(a), dt_tag(dt));
    else snprintf(out, n, "%s/%s-%s", cache, syn_comp_name(c), dt_tag(dt));
    if ((s = make_dir(out, err))) return s;
    char path[4400], what[128];
    snprintf(path, sizeof path, "%s/config.json", out);
    char cfg[4096];
    config_text(a, c, cfg, sizeof cfg);
    if ((s = write_text(path, cfg, err))) return s;
    const char *stem = c == SYN_MMDIT || c == SYN_VAE ? "diffusion_pytorch_model" : "model";
    snprintf(path, sizeof path, "%s/%s.safetensors", out, stem);
    syn_list l = {0};
    list_component(&l, a, c);
    if (l.oom) { free(l.v); return sd3_errf(err, SD3_ERR_NOMEM, "out of memory listing %s", syn_comp_name(c)); }
    if (file_matches(&l, dt, path)) { free(l.v); return SD3_OK; }
    unlink(path);
    if (c == SYN_T5 && dt == DT_BF16 && file_matches(&l, dt, SYN_BENCH_T5_FILE)) {
        if (!symlink(SYN_BENCH_T5_FILE, path)) {
            fprintf(stderr, "bench: reusing %s (bench_t5's T5-XXL, same keys and shapes) via a link\n", SYN_BENCH_T5_FILE);
            free(l.v);
            return SD3_OK;
        }
    }
    snprintf(what, sizeof what, "%s%s%s", c == SYN_MMDIT ? syn_arch_name(a) : "", c == SYN_MMDIT ? " " : "",
             syn_comp_name(c));
    s = write_weights(&l, dt, path, what, err);
    free(l.v);
    if (!s && generated) *generated = 1;
    return s;
}

/* Make link -> target, replacing whatever link was there. */
static sd3_status make_link(const char *target, const char *link, sd3_err *err) {
    struct stat st;
    if (!lstat(link, &st)) {
        if (!S_ISLNK(st.st_mode)) return SD3_OK;   /* a real folder someone put there: leave it */
        unlink(link);
    }
    if (symlink(target, link))
        return sd3_errf(err, SD3_ERR_IO, "%s: cannot link to %s: %s", link, target, strerror(errno));
    return SD3_OK;
}

sd3_status syn_pipeline_dir(syn_arch a, dtype dt, int with_t5, const char *cache, const char *tokenizers, char *out,
                            size_t n, sd3_err *err) {
    char cbuf[4096], comp[SYN_COMP_COUNT][4096], path[4400];
    sd3_status s;
    if (!cache) {
        if ((s = syn_cache_dir(cbuf, sizeof cbuf, err))) return s;
        cache = cbuf;
    }
    if (!tokenizers) {
        const char *e = getenv("SD3_BENCH_TOKENIZERS");
        tokenizers = e && *e ? e : SYN_DEFAULT_TOKENIZERS;
    }
    for (int c = 0; c < SYN_COMP_COUNT; c++) {
        if (c == SYN_T5 && !with_t5) continue;
        if ((s = syn_component_dir(a, (syn_comp)c, dt, cache, comp[c], sizeof comp[c], NULL, err))) return s;
    }
    snprintf(out, n, "%s/pipe-%s-%s%s", cache, syn_arch_name(a), dt_tag(dt), with_t5 ? "" : "-no-t5");
    if ((s = make_dir(out, err))) return s;
    const char *t5 = with_t5 ? "[\"transformers\", \"T5EncoderModel\"]" : "[null, null]";
    const char *t5tok = with_t5 ? "[\"transformers\", \"T5TokenizerFast\"]" : "[null, null]";
    char idx[2048];
    snprintf(idx, sizeof idx,
             "{\n  \"_class_name\": \"StableDiffusion3Pipeline\",\n  \"_diffusers_version\": \"0.32.2\",\n"
             "  \"scheduler\": [\"diffusers\", \"FlowMatchEulerDiscreteScheduler\"],\n"
             "  \"text_encoder\": [\"transformers\", \"CLIPTextModelWithProjection\"],\n"
             "  \"text_encoder_2\": [\"transformers\", \"CLIPTextModelWithProjection\"],\n"
             "  \"text_encoder_3\": %s,\n  \"tokenizer\": [\"transformers\", \"CLIPTokenizer\"],\n"
             "  \"tokenizer_2\": [\"transformers\", \"CLIPTokenizer\"],\n  \"tokenizer_3\": %s,\n"
             "  \"transformer\": [\"diffusers\", \"SD3Transformer2DModel\"],\n  \"vae\": [\"diffusers\", \"AutoencoderKL\"]\n}\n",
             t5, t5tok);
    snprintf(path, sizeof path, "%s/model_index.json", out);
    if ((s = write_text(path, idx, err))) return s;
    snprintf(path, sizeof path, "%s/scheduler", out);
    if ((s = make_dir(path, err))) return s;
    snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", out);
    if ((s = write_text(path,
                        "{\n  \"_class_name\": \"FlowMatchEulerDiscreteScheduler\",\n  \"_diffusers_version\": \"0.32.2\",\n"
                        "  \"base_image_seq_len\": 256,\n  \"base_shift\": 0.5,\n  \"invert_sigmas\": false,\n"
                        "  \"max_image_seq_len\": 4096,\n  \"max_shift\": 1.15,\n  \"num_train_timesteps\": 1000,\n"
                        "  \"shift\": 3.0,\n  \"shift_terminal\": null,\n  \"use_beta_sigmas\": false,\n"
                        "  \"use_dynamic_shifting\": false,\n  \"use_exponential_sigmas\": false,\n"
                        "  \"use_karras_sigmas\": false\n}\n",
                        err)))
        return s;
    static const struct { const char *name; int c; } LINKS[] = {
        {"transformer", SYN_MMDIT}, {"vae", SYN_VAE}, {"text_encoder", SYN_CLIP_L},
        {"text_encoder_2", SYN_CLIP_G}, {"text_encoder_3", SYN_T5},
    };
    for (size_t k = 0; k < sizeof LINKS / sizeof LINKS[0]; k++) {
        if (LINKS[k].c == SYN_T5 && !with_t5) continue;
        snprintf(path, sizeof path, "%s/%s", out, LINKS[k].name);
        if ((s = make_link(comp[LINKS[k].c], path, err))) return s;
    }
    const char *toks[3] = {"tokenizer", "tokenizer_2", "tokenizer_3"};
    for (int k = 0; k < (with_t5 ? 3 : 2); k++) {
        char src[4400];
        snprintf(src, sizeof src, "%s/%s", tokenizers, toks[k]);
        struct stat st;
        if (stat(src, &st) || !S_ISDIR(st.st_mode))
            return sd3_errf(err, SD3_ERR_NOT_FOUND, "%s: tokenizer folder missing (set SD3_BENCH_TOKENIZERS to a folder "
                            "holding tokenizer/, tokenizer_2/, tokenizer_3/)", src);
        snprintf(path, sizeof path, "%s/%s", out, toks[k]);
        if ((s = make_link(src, path, err))) return s;
    }
    return SD3_OK;
}

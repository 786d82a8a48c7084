/*
 * test_stream.c — layer streaming of the MMDiT (mmdit_model.stream_layers, mmdit_stream_advise):
 *   - on a synthetic transformer big enough to measure (4 blocks of 128 wide, F32, ~9 MB, written to a temp
 *     folder): the forward with streaming gives bit-identical output, and afterwards the resident part of
 *     the weights file's mapping (/proc/self/smaps Rss) is below what the blocks occupy, while after a plain
 *     forward it holds them all; a plain forward after a streamed one reads the pages back (same output);
 *   - streaming with skip_layers equals the plain forward with the same skips;
 *   - mmdit_stream_advise: bytes released for a block ~ its size; nothing for an index outside the blocks,
 *     for a model over an in-memory file (never MADV_DONTNEED on heap memory), and almost nothing for
 *     int8-quantised Linears (owned copies); streaming an int8 model still gives the same output; a file
 *     written by `sd3 quantize` (int8 in the file, used in place) streams like a float one;
 *   - the tiny golden transformers (SD3, SD3.5-medium-like with attn2): streamed == plain, bit for bit.
 *
 *   test_stream [GOLDEN_ROOT]    (default $SD3_GOLDEN, else ../shared/golden)
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "io/safetensors.h"
#include "io/weights.h"
#include "mmdit/mmdit.h"
#include "quant/quant.h"
#include "quant/quant_models.h"
#include "test.h"

static char g_root[2048], g_tmp[256];

/* Resident bytes of the mapping that starts at addr (its "Rss:" in /proc/self/smaps), -1 if not found. */
static int64_t mapping_rss(const void *addr) {
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return -1;
    char line[512];
    int in = 0;
    int64_t rss = -1;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            in = (uintptr_t)lo == (uintptr_t)addr;
            continue;
        }
        long kb;
        if (in && sscanf(line, "Rss: %ld kB", &kb) == 1) { rss = (int64_t)kb * 1024; break; }
    }
    fclose(f);
    return rss;
}

/* Deterministic values ~ N(0, s^2)-ish (sum of uniforms), so activations stay O(1). */
static uint64_t rng = 88172645463325252ull;
static float rnd(float s) {
    float a = 0;
    for (int k = 0; k < 3; k++) {
        rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
        a += (float)((rng >> 40) & 0xffffff) / 16777216.0f - 0.5f;
    }
    return a * 2.0f * s;
}

/* The tensors of a synthetic SD3 transformer (diffusers keys, as src/bench/synth.c lists them). */
typedef struct syn { st_writer *w; float *bufs[1024]; int n; int64_t block_bytes[8]; int cur_block; } syn;

/* Add one F32 tensor of random values (mean + ~N(0, scale^2)), counted into the current block's bytes. */
static void add(syn *s, const char *name, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3, float scale, float mean) {
    int64_t shape[4] = {d0, d1, d2, d3}, n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    float *b = malloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++) b[i] = mean + rnd(scale);
    s->bufs[s->n++] = b;
    sd3_err err = {0};
    if (st_writer_add(s->w, name, DT_F32, ndim, shape, b, &err) != SD3_OK) printf("setup: %s\n", err.msg);
    if (s->cur_block >= 0) s->block_bytes[s->cur_block] += n * 4;
}

/* Add a Linear: weight [N, K] scaled by 1/sqrt(K), bias [N]. */
static void lin(syn *s, const char *name, int64_t N, int64_t K) {
    char k[256];
    snprintf(k, sizeof k, "%s.weight", name);
    add(s, k, 2, N, K, 0, 0, 1.0f / sqrtf((float)K), 0);
    snprintf(k, sizeof k, "%s.bias", name);
    add(s, k, 1, N, 0, 0, 0, 0.02f, 0);
}

/* Write <g_tmp>/big/{config.json, diffusion_pytorch_model.safetensors}: 4 blocks, 2 heads x 64. */
static int write_big(char *dir, size_t n, int64_t *block_bytes) {
    const int L = 4, C = 128, J = 64, P = 32, M = 16, Cin = 16, p = 2;
    snprintf(dir, n, "%s/big", g_tmp);
    mkdir(dir, 0755);
    char path[600];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fprintf(f, "{\"_class_name\": \"SD3Transformer2DModel\", \"sample_size\": 8, \"patch_size\": %d, \"in_channels\": %d, "
               "\"out_channels\": %d, \"num_layers\": %d, \"attention_head_dim\": 64, \"num_attention_heads\": 2, "
               "\"joint_attention_dim\": %d, \"caption_projection_dim\": %d, \"pooled_projection_dim\": %d, "
               "\"pos_embed_max_size\": %d}\n", p, Cin, Cin, L, J, C, P, M);
    fclose(f);
    syn s;
    memset(&s, 0, sizeof s);
    s.w = st_writer_new();
    s.cur_block = -1;
    add(&s, "pos_embed.pos_embed", 3, 1, M * M, C, 0, 0.5f, 0);
    add(&s, "pos_embed.proj.weight", 4, C, Cin, p, p, 1.0f / 8, 0);
    add(&s, "pos_embed.proj.bias", 1, C, 0, 0, 0, 0.02f, 0);
    lin(&s, "time_text_embed.timestep_embedder.linear_1", C, 256);
    lin(&s, "time_text_embed.timestep_embedder.linear_2", C, C);
    lin(&s, "time_text_embed.text_embedder.linear_1", C, P);
    lin(&s, "time_text_embed.text_embedder.linear_2", C, C);
    lin(&s, "context_embedder", C, J);
    for (int i = 0; i < L; i++) {
        int last = i == L - 1;
        char m[128];
        s.cur_block = i;
#define BL(name, N, K) (snprintf(m, sizeof m, "transformer_blocks.%d.%s", i, name), lin(&s, m, N, K))
        BL("norm1.linear", 6 * C, C);
        BL("norm1_context.linear", (last ? 2 : 6) * C, C);
        BL("attn.to_q", C, C);
        BL("attn.to_k", C, C);
        BL("attn.to_v", C, C);
        BL("attn.add_q_proj", C, C);
        BL("attn.add_k_proj", C, C);
        BL("attn.add_v_proj", C, C);
        BL("attn.to_out.0", C, C);
        if (!last) BL("attn.to_add_out", C, C);
        BL("ff.net.0.proj", 4 * C, C);
        BL("ff.net.2", C, 4 * C);
        if (!last) {
            BL("ff_context.net.0.proj", 4 * C, C);
            BL("ff_context.net.2", C, 4 * C);
        }
#undef BL
    }
    s.cur_block = -1;
    lin(&s, "norm_out.linear", 2 * C, C);
    lin(&s, "proj_out", p * p * Cin, C);
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir);
    sd3_err err = {0};
    int rc = st_writer_write(s.w, path, &err) == SD3_OK ? 0 : -1;
    if (rc) printf("setup: %s\n", err.msg);
    st_writer_free(s.w);
    for (int i = 0; i < s.n; i++) free(s.bufs[i]);
    memcpy(block_bytes, s.block_bytes, sizeof s.block_bytes);
    return rc;
}

/* Inputs for a (B=2) forward at latent H x W with S text tokens. */
typedef struct inputs { int B, H, W, S; float *x, *ctx, *pooled, t[2]; } inputs;

/* Random inputs shaped for model m. */
static inputs make_inputs(const mmdit_model *m, int H, int W, int S) {
    inputs in = {.B = 2, .H = H, .W = W, .S = S};
    int64_t nx = 2LL * m->cfg.in_channels * H * W, nc = 2LL * S * m->cfg.joint_attention_dim, np = 2LL * m->cfg.pooled_projection_dim;
    in.x = malloc(sizeof(float) * nx);
    in.ctx = malloc(sizeof(float) * nc);
    in.pooled = malloc(sizeof(float) * np);
    for (int64_t i = 0; i < nx; i++) in.x[i] = rnd(1);
    for (int64_t i = 0; i < nc; i++) in.ctx[i] = rnd(1);
    for (int64_t i = 0; i < np; i++) in.pooled[i] = rnd(1);
    in.t[0] = 900.0f;
    in.t[1] = 250.0f;
    return in;
}

/* Free the input buffers. */
static void free_inputs(inputs *in) { free(in->x); free(in->ctx); free(in->pooled); }

/* Forward into a fresh buffer (NULL on error, reported). */
static float *fwd(const mmdit_model *m, const inputs *in, const int *skip, int n_skip) {
    int64_t n = (int64_t)in->B * m->cfg.out_channels * in->H * in->W;
    float *out = malloc(sizeof(float) * n);
    sd3_err err = {0};
    if (mmdit_forward(m, in->x, in->B, in->H, in->W, in->ctx, in->S, in->pooled, in->t, skip, n_skip, out, &err) != SD3_OK) {
        CHECK(0, "forward: %s", err.msg);
        free(out);
        return NULL;
    }
    return out;
}

/* Bit-identical outputs (both present). */
static int same(const float *a, const float *b, const mmdit_model *m, const inputs *in) {
    return a && b && !memcmp(a, b, sizeof(float) * (size_t)in->B * m->cfg.out_channels * in->H * in->W);
}

/* The synthetic transformer: identical output, resident set of the mapping with and without streaming. */
static void test_big(void) {
    char dir[512];
    int64_t bb[8];
    if (write_big(dir, sizeof dir, bb)) { CHECK(0, "cannot write the synthetic transformer"); return; }
    int64_t blocks = bb[0] + bb[1] + bb[2] + bb[3], smallest = bb[3];
    mmdit_model m;
    sd3_err err = {0};
    if (mmdit_load_dir(&m, dir, &err) != SD3_OK) { CHECK(0, "load: %s", err.msg); return; }
    const void *map = m.w.files[0]->map;
    const int64_t fsize = (int64_t)m.w.files[0]->size;
    inputs in = make_inputs(&m, 8, 8, 8);

    float *a = fwd(&m, &in, NULL, 0);
    int64_t rss_plain = mapping_rss(map);
    CHECK(rss_plain >= blocks, "after a plain forward only %lld of the blocks' %lld bytes are resident", (long long)rss_plain,
          (long long)blocks);

    m.stream_layers = 1;
    float *b = fwd(&m, &in, NULL, 0);
    int64_t rss_stream = mapping_rss(map);
    CHECK(same(a, b, &m, &in), "streamed forward differs from the plain one");
    /* every block dropped after use: what stays is the rest of the file plus at most a page per block edge */
    CHECK(rss_stream >= 0 && rss_stream <= fsize - blocks + 8 * 4096, "after a streamed forward %lld bytes resident (file %lld, "
          "blocks %lld): the blocks were not released", (long long)rss_stream, (long long)fsize, (long long)blocks);
    CHECK(rss_stream < rss_plain - 3 * smallest, "streaming saved only %lld bytes", (long long)(rss_plain - rss_stream));
    printf("  synthetic transformer: mapping resident after a plain forward %.2f MB, after a streamed one %.2f MB "
           "(blocks %.2f MB of %.2f MB)\n", rss_plain / 1e6, rss_stream / 1e6, blocks / 1e6, fsize / 1e6);

    /* pages come back when touched again */
    m.stream_layers = 0;
    float *c = fwd(&m, &in, NULL, 0);
    CHECK(same(a, c, &m, &in), "plain forward after a streamed one differs");
    CHECK(mapping_rss(map) >= blocks, "a plain forward after streaming did not bring the blocks back");

    /* skip_layers */
    int skip[2] = {1, 2};
    float *d = fwd(&m, &in, skip, 2);
    m.stream_layers = 1;
    float *e = fwd(&m, &in, skip, 2);
    CHECK(same(d, e, &m, &in), "streamed forward with skip_layers differs");
    int skip0[1] = {0};
    m.stream_layers = 0;
    float *f0 = fwd(&m, &in, skip0, 1);
    m.stream_layers = 1;
    float *f1 = fwd(&m, &in, skip0, 1);
    CHECK(same(f0, f1, &m, &in), "streamed forward skipping block 0 differs");

    /* the advice itself */
    m.stream_layers = 0;
    free(fwd(&m, &in, NULL, 0));
    int64_t rel = mmdit_stream_advise(&m, 1, MMDIT_STREAM_RELEASE);
    CHECK(rel > bb[1] - 2 * 4096 && rel <= bb[1], "block 1 release advised %lld bytes of %lld", (long long)rel, (long long)bb[1]);
    CHECK(mmdit_stream_advise(&m, 1, MMDIT_STREAM_PREFETCH) >= bb[1], "block 1 prefetch advised too little");
    CHECK(mmdit_stream_advise(&m, 4, MMDIT_STREAM_RELEASE) == 0, "a block beyond num_layers was advised");
    CHECK(mmdit_stream_advise(&m, -1, MMDIT_STREAM_RELEASE) == 0, "block -1 was advised");

    /* int8 copies are owned: almost nothing left to stream, output unchanged by streaming */
    if (quant_mmdit(&m, 8, NULL, NULL, &err) != SD3_OK) {
        CHECK(0, "quant: %s", err.msg);
    } else {
        m.stream_layers = 0;
        float *q0 = fwd(&m, &in, NULL, 0);
        m.stream_layers = 1;
        float *q1 = fwd(&m, &in, NULL, 0);
        CHECK(same(q0, q1, &m, &in), "streamed int8 forward differs");
        int64_t qrel = mmdit_stream_advise(&m, 1, MMDIT_STREAM_PREFETCH);
        CHECK(qrel < bb[1] / 10, "int8 block 1: %lld bytes still in the mapping", (long long)qrel);
        free(q0);
        free(q1);
    }
    free(a); free(b); free(c); free(d); free(e); free(f0); free(f1);
    free_inputs(&in);
    mmdit_free(&m);

    /* a model over an in-memory copy of the file: nothing is advised (MADV_DONTNEED there would zero heap memory) */
    char path[700];
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir);
    FILE *fp = fopen(path, "rb");
    void *buf = malloc((size_t)fsize);
    size_t got = fp ? fread(buf, 1, (size_t)fsize, fp) : 0;
    if (fp) fclose(fp);
    st_file *sf = NULL;
    mmdit_model mm;
    memset(&mm, 0, sizeof mm);
    mmdit_config cfg;
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (got != (size_t)fsize || st_open_memory(&sf, buf, (size_t)fsize, "memory", &err) != SD3_OK ||
        mmdit_config_load(&cfg, path, &err) != SD3_OK) {
        CHECK(0, "in-memory setup: %s", err.msg);
    } else {
        weights w;
        memset(&w, 0, sizeof w);
        w.files[w.n_files++] = sf;
        snprintf(w.label, sizeof w.label, "memory");
        if (mmdit_load_weights(&mm, &w, &cfg, &err) != SD3_OK) {
            CHECK(0, "in-memory load: %s", err.msg);
        } else {
            inputs in2 = make_inputs(&mm, 8, 8, 8);
            float *p0 = fwd(&mm, &in2, NULL, 0);
            mm.stream_layers = 1;
            CHECK(mmdit_stream_advise(&mm, 0, MMDIT_STREAM_RELEASE) == 0, "in-memory weights were advised");
            float *p1 = fwd(&mm, &in2, NULL, 0);
            CHECK(same(p0, p1, &mm, &in2), "in-memory model changed by streaming");
            free(p0);
            free(p1);
            free_inputs(&in2);
        }
        mmdit_free(&mm);
    }
    if (sf) st_close(sf);
    free(buf);

    /* a transformer written by `sd3 quantize` (int8 stored in the file): its Q8 weights are views, and stream */
    char qdir[600];
    snprintf(qdir, sizeof qdir, "%s/big_q8", g_tmp);
    mmdit_model q;
    if (quant_path(dir, qdir, 0, 8, 'm', NULL, NULL, &err) != SD3_OK || mmdit_load_dir(&q, qdir, &err) != SD3_OK) {
        CHECK(0, "quantised copy: %s", err.msg);
    } else {
        inputs in3 = make_inputs(&q, 8, 8, 8);
        float *r0 = fwd(&q, &in3, NULL, 0);
        int64_t rss0 = mapping_rss(q.w.files[0]->map);
        q.stream_layers = 1;
        float *r1 = fwd(&q, &in3, NULL, 0);
        int64_t rss1 = mapping_rss(q.w.files[0]->map);
        CHECK(same(r0, r1, &q, &in3), "streamed forward of the sd3-quantize file differs");
        CHECK(rss1 >= 0 && rss1 < rss0 / 2, "sd3-quantize file: resident %lld after streaming vs %lld plain", (long long)rss1,
              (long long)rss0);
        CHECK(mmdit_stream_advise(&q, 1, MMDIT_STREAM_PREFETCH) > bb[1] / 5, "sd3-quantize file: block 1 not in the mapping");
        printf("  sd3-quantize int8 file: mapping resident %.2f MB plain, %.2f MB streamed\n", rss0 / 1e6, rss1 / 1e6);
        free(r0);
        free(r1);
        free_inputs(&in3);
        mmdit_free(&q);
    }
    char rm[700];
    snprintf(rm, sizeof rm, "rm -rf %s", qdir);
    if (system(rm) != 0) printf("  could not remove %s\n", qdir);
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/config.json", dir);
    unlink(path);
    rmdir(dir);
}

/* A tiny golden transformer: streamed == plain, bit for bit. */
static void test_golden(const char *rel) {
    char dir[2300];
    snprintf(dir, sizeof dir, "%s/%s", g_root, rel);
    mmdit_model m;
    sd3_err err = {0};
    if (mmdit_load_dir(&m, dir, &err) != SD3_OK) { CHECK(0, "%s: %s", rel, err.msg); return; }
    inputs in = make_inputs(&m, 16, 16, 12);
    float *a = fwd(&m, &in, NULL, 0);
    m.stream_layers = 1;
    float *b = fwd(&m, &in, NULL, 0);
    float *c = fwd(&m, &in, NULL, 0);   /* a second streamed step (pages dropped by the first) */
    CHECK(same(a, b, &m, &in) && same(a, c, &m, &in), "%s: streamed forward differs", rel);
    free(a); free(b); free(c);
    free_inputs(&in);
    mmdit_free(&m);
}

int main(int argc, char **argv) {
    const char *g = argc > 1 ? argv[1] : getenv("SD3_GOLDEN");
    snprintf(g_root, sizeof g_root, "%s", g ? g : "../shared/golden");
    snprintf(g_tmp, sizeof g_tmp, "/tmp/sd3c_stream_XXXXXX");
    if (!mkdtemp(g_tmp)) { printf("mkdtemp failed\n"); return 1; }
    test_big();
    test_golden("tiny-sd3/transformer");
    test_golden("tiny-sd35-medium-like/transformer");
    test_golden("tiny-sd35-large-like/transformer");
    rmdir(g_tmp);
    TEST_MAIN_END("test_stream");
}

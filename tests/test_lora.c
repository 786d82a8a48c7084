/*
 * test_lora.c — LoRA adapters on the tiny SD3 transformer, beyond the golden case:
 *   - key formats: a kohya copy (lora_unet_*, q/k/v fused into one qkv adapter with a block-diagonal up
 *     matrix, alphas stored) and an original-layout copy (diffusion_model.*.qkv, lora_A/lora_B) of the
 *     golden diffusers LoRA give the diffusers LoRA's output, on the folder model and on the single file;
 *     original-name adaLN adapters of the last context block and final layer get their B halves swapped;
 *   - errors: wrong rank, in or out features (key and both shapes named), keys that match nothing (listed,
 *     counted; lenient mode warns and attaches the rest), incomplete and DoRA modules, bad alpha, non-float
 *     tensors, an empty file, a non-finite scale, fusing into a quantised weight; a failed attach leaves
 *     the model untouched;
 *   - text-encoder modules: lora_attach leaves them out (a warning for T5); lora_clip_fuse puts CLIP ones
 *     into the tiny CLIP-L (fused weights = W + s B A in double, kohya lora_te1_ = diffusers text_encoder.,
 *     0.5 + 0.5 = 1.0, unfuse restores the output bit for bit, unmatched / misfit modules are errors);
 *   - several LoRAs: run-time output equals the fused output, fused weights equal W + sum s B A computed
 *     here in double, the same LoRA at 0.3 + 0.7 equals it at 1.0, at +1 and -1 it cancels;
 *   - unfuse restores the weights (same views) and the run-time output bit for bit; detaching restores the
 *     plain output bit for bit;
 *   - lora_parse_spec.
 *
 *   test_lora [GOLDEN_ROOT]    (default $SD3_GOLDEN, else ../shared/golden)
 *
 * Every LoRA besides the golden one is written here with st_writer into a temp folder.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "io/safetensors.h"
#include "io/json_util.h"
#include "lora/lora.h"
#include "lora/lora_clip.h"
#include "mmdit/mmdit.h"
#include "test.h"

static char g_root[2048]; /* golden root */
static char g_tmp[256];   /* temp folder */
static char g_lora[4096]; /* the golden diffusers-format LoRA */

/* The inputs of the golden lora case (B 2, 16 x 32 x 32 latents, 77 x 96 text, 80 pooled). */
static float *g_x, *g_ctx, *g_pooled, *g_t;
static int g_B, g_H, g_W, g_S;
static int64_t g_nout;

/* ---- log capture ------------------------------------------------------------------------------- */

static char g_log[8192];

/* Keep warnings for the checks (appended). */
static void on_log(sd3_log_level level, const char *msg, void *user) {
    (void)user;
    if (level < SD3_LOG_WARN) return;
    size_t o = strlen(g_log);
    snprintf(g_log + o, sizeof g_log - o, "%s\n", msg);
}

/* ---- helpers ----------------------------------------------------------------------------------- */

/* Forward m on the golden inputs into a fresh buffer (NULL and a failed check on error). */
static float *fwd(const mmdit_model *m) {
    float *out = malloc((size_t)g_nout * sizeof(float));
    sd3_err err = {0};
    if (mmdit_forward(m, g_x, g_B, g_H, g_W, g_ctx, g_S, g_pooled, g_t, NULL, 0, out, &err) != SD3_OK) {
        CHECK(0, "forward: %s", err.msg);
        free(out);
        return NULL;
    }
    return out;
}

/* max |a - b| over n floats (infinity if either is NULL). */
static double max_diff(const float *a, const float *b, int64_t n) {
    if (!a || !b) return INFINITY;
    double m = 0;
    for (int64_t i = 0; i < n; i++)
        m = fmax(m, fabs((double)a[i] - b[i]));
    return m;
}

/* The Linear of m named (diffusers name) mod, or NULL. */
static mmdit_linear *find_linear(mmdit_model *m, const char *mod) {
    mmdit_named_linear nl[512];
    int n = mmdit_list_linears(m, nl, 512);
    for (int i = 0; i < n && i < 512; i++)
        if (!strcmp(nl[i].diffusers, mod)) return nl[i].lin;
    return NULL;
}

/* A LoRA file under construction: tensors are copied (st_writer borrows until written). */
typedef struct lw {
    st_writer *w;
    void *bufs[1024];
    int nb;
    int failed;
} lw;

/* Start a file. */
static void lw_init(lw *l) {
    memset(l, 0, sizeof *l);
    l->w = st_writer_new();
}

/* Add a tensor (data copied) of dtype dt. */
static void lw_add_dt(lw *l, const char *name, dtype dt, int ndim, const int64_t *shape, const void *data) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= shape[i];
    size_t bytes = (size_t)n * dtype_size(dt);
    void *buf = malloc(bytes ? bytes : 1);
    memcpy(buf, data, bytes);
    l->bufs[l->nb++] = buf;
    sd3_err err = {0};
    if (st_writer_add(l->w, name, dt, ndim, shape, buf, &err) != SD3_OK) {
        printf("  st_writer_add %s: %s\n", name, err.msg);
        l->failed = 1;
    }
}

/* Add an F32 matrix [r0, r1]. */
static void lw_mat(lw *l, const char *name, int64_t r0, int64_t r1, const float *data) {
    int64_t sh[2] = {r0, r1};
    lw_add_dt(l, name, DT_F32, 2, sh, data);
}

/* Add an F32 scalar (shape []). */
static void lw_scalar(lw *l, const char *name, float v) { lw_add_dt(l, name, DT_F32, 0, NULL, &v); }

/* Write the file to g_tmp/<file> (full path into path) and free the builder; 0 on success. */
static int lw_write(lw *l, const char *file, char *path, size_t n) {
    snprintf(path, n, "%s/%s", g_tmp, file);
    sd3_err err = {0};
    int rc = l->failed;
    if (!rc && st_writer_write(l->w, path, &err) != SD3_OK) {
        printf("  write %s: %s\n", path, err.msg);
        rc = -1;
    }
    st_writer_free(l->w);
    for (int i = 0; i < l->nb; i++)
        free(l->bufs[i]);
    return rc;
}

/* Deterministic uniform numbers in [-a, a] (xorshift; any fixed sequence does). */
static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static float urand(float a) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return a * (float)((double)(g_rng >> 11) / (double)(1ull << 53) * 2.0 - 1.0);
}
static void fill(float *p, int64_t n, float a) {
    for (int64_t i = 0; i < n; i++)
        p[i] = urand(a);
}

/* Open path and attach at scale; returns the status (message in err). */
static sd3_status open_attach(mmdit_model *m, const char *path, float scale, int lenient, sd3_err *err) {
    lora_file *f;
    sd3_status s = lora_open(&f, path, err);
    if (s != SD3_OK) return s;
    s = lora_attach(m, f, scale, lenient, err);
    lora_close(f);
    return s;
}

/* The golden LoRA's A (lora_A) or B (lora_B) of a diffusers module as an F32 copy, with its shape. */
static float *golden_ab(const st_file *st, const char *mod, char which, int64_t *r0, int64_t *r1) {
    char key[256];
    snprintf(key, sizeof key, "transformer.%s.lora_%c.weight", mod, which);
    tensor t;
    sd3_err err = {0};
    if (st_get(st, key, &t, &err) != SD3_OK) {
        CHECK(0, "%s", err.msg);
        return NULL;
    }
    *r0 = t.shape[0], *r1 = t.shape[1];
    float *p = malloc((size_t)tensor_numel(&t) * sizeof(float));
    tensor_to_f32(&t, 0, tensor_numel(&t), p);
    return p;
}

/* ---- key formats ------------------------------------------------------------------------------- */

/* Write the golden LoRA re-keyed in the original layout: per block, x and context attention q/k/v fused
 * into one qkv module (A rows [Aq; Ak; Av], B block-diagonal, rank 3r) and the output projections.
 * kohya: lora_unet_* names, lora_down/lora_up, alphas (qkv alpha 3r, proj alpha r/2 with B doubled: the
 * same delta); else diffusion_model.* names, lora_A/lora_B, no alphas (alpha = rank). */
static int write_original_copy(const char *file, int kohya, char *path, size_t n) {
    st_file *st;
    sd3_err err = {0};
    if (st_open(&st, g_lora, &err) != SD3_OK) {
        CHECK(0, "%s", err.msg);
        return -1;
    }
    lw l;
    lw_init(&l);
    for (int i = 0; i < 3; i++) {
        static const char *streams[2][5] = {{"x_block", "to_q", "to_k", "to_v", "to_out.0"},
                                            {"context_block", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"}};
        for (int sidx = 0; sidx < 2; sidx++) {
            const char *const *s = streams[sidx];
            char mod[128], name[256], stem[200];
            float *A[3], *B[3];
            int64_t r = 0, C = 0, N = 0, tmp;
            for (int q = 0; q < 3; q++) {
                snprintf(mod, sizeof mod, "transformer_blocks.%d.attn.%s", i, s[1 + q]);
                A[q] = golden_ab(st, mod, 'A', &r, &C);
                B[q] = golden_ab(st, mod, 'B', &N, &tmp);
            }
            float *Af = calloc((size_t)(3 * r * C), sizeof(float)),
                  *Bf = calloc((size_t)(3 * N * 3 * r), sizeof(float));
            for (int q = 0; q < 3; q++) {
                if (A[q]) memcpy(Af + q * r * C, A[q], (size_t)(r * C) * sizeof(float));
                for (int64_t row = 0; row < N && B[q]; row++)
                    for (int64_t j = 0; j < r; j++)
                        Bf[(q * N + row) * 3 * r + q * r + j] = B[q][row * r + j];
                free(A[q]);
                free(B[q]);
            }
            snprintf(stem, sizeof stem,
                     kohya ? "lora_unet_joint_blocks_%d_%s_attn_qkv" : "diffusion_model.joint_blocks.%d.%s.attn.qkv", i,
                     s[0]);
            snprintf(name, sizeof name, "%s.%s", stem, kohya ? "lora_down.weight" : "lora_A.weight");
            lw_mat(&l, name, 3 * r, C, Af);
            snprintf(name, sizeof name, "%s.%s", stem, kohya ? "lora_up.weight" : "lora_B.weight");
            lw_mat(&l, name, 3 * N, 3 * r, Bf);
            if (kohya) {
                snprintf(name, sizeof name, "%s.alpha", stem);
                lw_scalar(&l, name, (float)(3 * r));
            }
            free(Af);
            free(Bf);
            if (sidx == 1 && i == 2) continue; /* the last block has no to_add_out */
            snprintf(mod, sizeof mod, "transformer_blocks.%d.attn.%s", i, s[4]);
            float *Ap = golden_ab(st, mod, 'A', &r, &C), *Bp = golden_ab(st, mod, 'B', &N, &tmp);
            if (!Ap || !Bp) {
                free(Ap);
                free(Bp);
                continue;
            }
            snprintf(stem, sizeof stem,
                     kohya ? "lora_unet_joint_blocks_%d_%s_attn_proj" : "diffusion_model.joint_blocks.%d.%s.attn.proj",
                     i, s[0]);
            if (kohya)
                for (int64_t k = 0; k < N * r; k++)
                    Bp[k] *= 2.0f;
            snprintf(name, sizeof name, "%s.%s", stem, kohya ? "lora_down.weight" : "lora_A.weight");
            lw_mat(&l, name, r, C, Ap);
            snprintf(name, sizeof name, "%s.%s", stem, kohya ? "lora_up.weight" : "lora_B.weight");
            lw_mat(&l, name, N, r, Bp);
            if (kohya) {
                snprintf(name, sizeof name, "%s.alpha", stem);
                lw_scalar(&l, name, (float)r / 2);
            }
            free(Ap);
            free(Bp);
        }
    }
    st_close(st);
    return lw_write(&l, file, path, n);
}

/* The kohya and original-layout copies of the golden LoRA give the diffusers LoRA's output. */
static void test_formats(mmdit_model *m, mmdit_model *single) {
    sd3_err err = {0};
    float *base = fwd(m);
    CHECK(open_attach(m, g_lora, 1.0f, 0, &err) == SD3_OK, "%s", err.msg);
    CHECK(lora_adapter_count(m, NULL) == 23, "diffusers LoRA: %d adapters", lora_adapter_count(m, NULL));
    float *ref = fwd(m);
    lora_detach_all(m);
    CHECK(max_diff(ref, base, g_nout) > 1e-2, "the LoRA changes the output (%g)", max_diff(ref, base, g_nout));

    char kohya[4096], orig[4096];
    CHECK(write_original_copy("kohya.safetensors", 1, kohya, sizeof kohya) == 0, "write kohya copy");
    CHECK(write_original_copy("original.safetensors", 0, orig, sizeof orig) == 0, "write original copy");
    lora_file *f;
    if (lora_open(&f, kohya, &err) == SD3_OK) {
        CHECK(f->n_mods == 11 && lora_count(f, LORA_TARGET_TRANSFORMER) == 11, "kohya copy: %d modules", f->n_mods);
        lora_close(f);
    } else {
        CHECK(0, "%s", err.msg);
    }
    const char *paths[2] = {kohya, orig};
    for (int k = 0; k < 2; k++) {
        mmdit_model *models[2] = {m, single};
        for (int j = 0; j < 2; j++) {
            CHECK(open_attach(models[j], paths[k], 1.0f, 0, &err) == SD3_OK, "%s", err.msg);
            /* 6 qkv modules x 3 thirds + 5 projections */
            CHECK(lora_adapter_count(models[j], NULL) == 23, "%s: %d adapters", paths[k],
                  lora_adapter_count(models[j], NULL));
            float *out = fwd(models[j]);
            double d = max_diff(out, ref, g_nout);
            CHECK(d <= 2e-5, "%s on the %s model: max |diff| to the diffusers LoRA %g", paths[k],
                  j ? "single-file" : "folder", d);
            free(out);
            lora_detach_all(models[j]);
        }
    }
    /* The diffusers LoRA on the single-file model (q/k/v are row slices of the stored qkv). */
    CHECK(open_attach(single, g_lora, 1.0f, 0, &err) == SD3_OK, "%s", err.msg);
    float *out = fwd(single);
    CHECK(max_diff(out, ref, g_nout) <= 2e-5, "diffusers LoRA on the single-file model: %g",
          max_diff(out, ref, g_nout));
    free(out);
    lora_detach_all(single);
    free(ref);
    free(base);
}

/* Fuse the file at path (scale 1) and copy the weight of Linear mod (N x K) to a fresh buffer. */
static float *fused_weight_of(mmdit_model *m, const char *path, const char *mod, int64_t *n) {
    sd3_err err = {0};
    float *w = NULL;
    if (open_attach(m, path, 1.0f, 0, &err) != SD3_OK || lora_fuse(m, &err) != SD3_OK) {
        CHECK(0, "%s: %s", path, err.msg);
    } else {
        mmdit_linear *l = find_linear(m, mod);
        *n = tensor_numel(&l->weight);
        w = malloc((size_t)*n * sizeof(float));
        tensor_to_f32(&l->weight, 0, *n, w);
    }
    lora_detach_all(m);
    return w;
}

/* Original-name adaLN adapters of the last context block and the final layer have their B halves swapped
 * (the original stores [shift; scale]); a non-last context block's adaLN is not swapped; OneTrainer
 * "lora_transformer_" names match the diffusers ones. Compared on the fused weights. */
static void test_swapped_halves(mmdit_model *m) {
    const int C = 32, r = 2;
    struct {
        const char *kohya, *diffusers;
        int N, swap;
    } mods[] = {
        {"lora_unet_joint_blocks_2_context_block_adaLN_modulation_1", "transformer_blocks.2.norm1_context.linear",
         2 * C, 1},
        {"lora_unet_final_layer_adaLN_modulation_1", "norm_out.linear", 2 * C, 1},
        {"lora_unet_joint_blocks_0_context_block_adaLN_modulation_1", "transformer_blocks.0.norm1_context.linear",
         6 * C, 0},
        {"lora_transformer_transformer_blocks_1_ff_net_0_proj", "transformer_blocks.1.ff.net.0.proj", 4 * C, 0},
    };
    for (size_t k = 0; k < sizeof mods / sizeof mods[0]; k++) {
        const int N = mods[k].N;
        float *A = malloc((size_t)r * C * sizeof(float)), *B = malloc((size_t)N * r * sizeof(float)),
              *Bs = malloc((size_t)N * r * sizeof(float));
        fill(A, (int64_t)r * C, 0.5f);
        fill(B, (int64_t)N * r, 0.1f);
        for (int row = 0; row < N; row++)
            memcpy(Bs + (size_t)row * r, B + (size_t)((mods[k].swap ? (row + N / 2) % N : row) * r), r * sizeof(float));
        char name[256], p1[4096], p2[4096];
        lw l;
        lw_init(&l);
        snprintf(name, sizeof name, "%s.lora_down.weight", mods[k].kohya);
        lw_mat(&l, name, r, C, A);
        snprintf(name, sizeof name, "%s.lora_up.weight", mods[k].kohya);
        lw_mat(&l, name, N, r, B);
        CHECK(lw_write(&l, "swap_k.safetensors", p1, sizeof p1) == 0, "write");
        lw_init(&l);
        snprintf(name, sizeof name, "transformer.%s.lora_A.weight", mods[k].diffusers);
        lw_mat(&l, name, r, C, A);
        snprintf(name, sizeof name, "transformer.%s.lora_B.weight", mods[k].diffusers);
        lw_mat(&l, name, N, r, Bs);
        CHECK(lw_write(&l, "swap_d.safetensors", p2, sizeof p2) == 0, "write");
        int64_t n1 = 0, n2 = 0;
        float *w1 = fused_weight_of(m, p1, mods[k].diffusers, &n1),
              *w2 = fused_weight_of(m, p2, mods[k].diffusers, &n2);
        CHECK(n1 == (int64_t)N * C && n1 == n2 && max_diff(w1, w2, n1) <= 1e-7, "%s vs %s: max |diff| %g",
              mods[k].kohya, mods[k].diffusers, max_diff(w1, w2, n1));
        free(w1);
        free(w2);
        free(A);
        free(B);
        free(Bs);
    }
}

/* ---- errors ------------------------------------------------------------------------------------ */

/* Write a one-module diffusers LoRA on `mod` with A [ra0, ra1] and B [rb0, rb1] (random values). */
static void write_one(const char *file, const char *mod, int64_t ra0, int64_t ra1, int64_t rb0, int64_t rb1, char *path,
                      size_t n) {
    float *a = malloc((size_t)(ra0 * ra1) * sizeof(float)), *b = malloc((size_t)(rb0 * rb1) * sizeof(float));
    fill(a, ra0 * ra1, 0.5f);
    fill(b, rb0 * rb1, 0.1f);
    lw l;
    lw_init(&l);
    char name[256];
    snprintf(name, sizeof name, "%s.lora_A.weight", mod);
    lw_mat(&l, name, ra0, ra1, a);
    snprintf(name, sizeof name, "%s.lora_B.weight", mod);
    lw_mat(&l, name, rb0, rb1, b);
    CHECK(lw_write(&l, file, path, n) == 0, "write %s", file);
    free(a);
    free(b);
}

/* Is the model free of any LoRA state? */
static int untouched(const mmdit_model *m) {
    return !m->lora_state && !m->lora_release && lora_adapter_count(m, NULL) == 0;
}

/* Wrong rank / in / out features: SD3_ERR_SHAPE naming the key and both shapes; the model is untouched. */
static void test_shape_errors(mmdit_model *m) {
    char p[4096];
    sd3_err err = {0};
    struct {
        const char *mod;
        int64_t a0, a1, b0, b1;
        const char *want[3];
    } cases[] = {
        {"transformer.transformer_blocks.0.attn.to_q",
         4,
         32,
         32,
         3,
         {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight' is [4, 32]", "lora_B.weight' is [32, 3]",
          "[32, 32]"}},
        {"transformer.transformer_blocks.1.ff.net.0.proj", 4, 31, 128, 4, {"[4, 31]", "[128, 4]", "weight [128, 32]"}},
        {"transformer.transformer_blocks.1.ff.net.0.proj", 4, 32, 127, 4, {"[127, 4]", "[128, 32]", "[128, r]"}},
        {"lora_unet_joint_blocks_0_x_block_attn_qkv", 4, 32, 95, 4, {"[95, 4]", "fused qkv", "[96, r]"}},
        {"diffusion_model.joint_blocks.1.context_block.attn.qkv", 4, 32, 32, 4, {"[32, 4]", "[96, r]", "qkv.lora_B"}},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        write_one("shape.safetensors", cases[k].mod, cases[k].a0, cases[k].a1, cases[k].b0, cases[k].b1, p, sizeof p);
        sd3_err_clear(&err);
        sd3_status s = open_attach(m, p, 1.0f, 1, &err); /* lenient does not excuse a misfit */
        CHECK(s == SD3_ERR_SHAPE, "case %zu: status %d (%s)", k, (int)s, err.msg);
        for (int j = 0; j < 3; j++)
            CHECK(strstr(err.msg, cases[k].want[j]) != NULL, "case %zu: '%s' not in: %s", k, cases[k].want[j], err.msg);
        CHECK(untouched(m), "case %zu: the model changed", k);
    }
    /* A failing attach after a good one keeps the good one and adds nothing. */
    CHECK(open_attach(m, g_lora, 1.0f, 0, &err) == SD3_OK, "%s", err.msg);
    CHECK(open_attach(m, p, 1.0f, 0, &err) == SD3_ERR_SHAPE, "second attach fails");
    CHECK(lora_adapter_count(m, NULL) == 23, "after a failed second attach: %d adapters", lora_adapter_count(m, NULL));
    lora_detach_all(m);
    CHECK(untouched(m), "detached");
}

/* Keys that match nothing: an error listing them (first four + count); lenient warns and attaches the rest.
 * Incomplete and DoRA modules; text-encoder modules are counted and left out with a warning. */
static void test_unmatched(mmdit_model *m) {
    const int C = 32, r = 2;
    float A[2 * 32], B[32 * 2], B4[128 * 2];
    fill(A, r * C, 0.5f);
    fill(B, C * r, 0.1f);
    fill(B4, 4 * C * r, 0.1f);
    const char *stems[] = {
        "transformer.transformer_blocks.0.attn.to_q",  /* good */
        "transformer.transformer_blocks.9.attn.to_q",  /* no block 9 */
        "transformer.transformer_blocks.0.attn.to_qq", /* no such module */
        "lora_unet_joint_blocks_0_x_block_attn_qkvv",
        "transformer.transformer_blocks.2.attn.to_add_out", /* the last block has none */
        "transformer.transformer_blocks.0.attn2.to_q",      /* tiny-sd3 has no MMDiT-X blocks */
    };
    lw l;
    lw_init(&l);
    char name[256], p[4096];
    for (size_t k = 0; k < sizeof stems / sizeof stems[0]; k++) {
        snprintf(name, sizeof name, "%s.lora_A.weight", stems[k]);
        lw_mat(&l, name, r, C, A);
        snprintf(name, sizeof name, "%s.lora_B.weight", stems[k]);
        lw_mat(&l, name, C, r, B);
    }
    lw_mat(&l, "foo.weight", r, C, A); /* no LoRA suffix at all */
    CHECK(lw_write(&l, "unmatched.safetensors", p, sizeof p) == 0, "write");
    sd3_err err = {0};
    CHECK(open_attach(m, p, 1.0f, 0, &err) == SD3_ERR_NOT_FOUND, "strict: %s", err.msg);
    CHECK(strstr(err.msg, "6 LoRA module(s)/tensor(s) match no Linear") && strstr(err.msg, "blocks.9.attn.to_q'") &&
              strstr(err.msg, "attn.to_qq'") && strstr(err.msg, "and 2 more (6 in all)") &&
              !strstr(err.msg, "blocks.0.attn.to_q'"),
          "message: %s", err.msg);
    CHECK(untouched(m), "strict failure leaves the model untouched");
    g_log[0] = 0;
    CHECK(open_attach(m, p, 1.0f, 1, &err) == SD3_OK, "lenient: %s", err.msg);
    CHECK(strstr(g_log, "skipping 6 LoRA") != NULL, "lenient warning: %s", g_log);
    CHECK(lora_adapter_count(m, NULL) == 1, "lenient: %d adapters", lora_adapter_count(m, NULL));
    lora_detach_all(m);

    /* Incomplete (A only) and DoRA modules. */
    lw_init(&l);
    lw_mat(&l, "transformer.transformer_blocks.0.attn.to_k.lora_A.weight", r, C, A);
    lw_mat(&l, "transformer.transformer_blocks.0.attn.to_q.lora_A.weight", r, C, A);
    lw_mat(&l, "transformer.transformer_blocks.0.attn.to_q.lora_B.weight", C, r, B);
    CHECK(lw_write(&l, "incomplete.safetensors", p, sizeof p) == 0, "write");
    CHECK(open_attach(m, p, 1.0f, 0, &err) == SD3_ERR_FORMAT && strstr(err.msg, "attn.to_k' has a down (A) but no up"),
          "incomplete: %s", err.msg);
    CHECK(untouched(m), "untouched");
    g_log[0] = 0;
    CHECK(open_attach(m, p, 1.0f, 1, &err) == SD3_OK && lora_adapter_count(m, NULL) == 1 && strstr(g_log, "incomplete"),
          "incomplete, lenient: %s / %s", err.msg, g_log);
    lora_detach_all(m);

    lw_init(&l);
    lw_mat(&l, "transformer.transformer_blocks.1.ff.net.0.proj.lora_A.weight", r, C, A);
    lw_mat(&l, "transformer.transformer_blocks.1.ff.net.0.proj.lora_B.weight", 4 * C, r, B4);
    int64_t dsh[2] = {4 * C, 1};
    lw_add_dt(&l, "transformer.transformer_blocks.1.ff.net.0.proj.dora_scale", DT_F32, 2, dsh, B4);
    CHECK(lw_write(&l, "dora.safetensors", p, sizeof p) == 0, "write");
    CHECK(open_attach(m, p, 1.0f, 0, &err) == SD3_ERR_UNSUPPORTED && strstr(err.msg, "DoRA"), "dora: %s", err.msg);
    g_log[0] = 0;
    CHECK(open_attach(m, p, 1.0f, 1, &err) == SD3_OK && lora_adapter_count(m, NULL) == 1 && strstr(g_log, "DoRA"),
          "dora, lenient: %s / %s", err.msg, g_log);
    lora_detach_all(m);

    /* Text-encoder modules: counted per encoder, left out with a warning, no error. */
    lw_init(&l);
    lw_mat(&l, "transformer.transformer_blocks.0.attn.to_q.lora_A.weight", r, C, A);
    lw_mat(&l, "transformer.transformer_blocks.0.attn.to_q.lora_B.weight", C, r, B);
    lw_mat(&l, "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight", r, C, A);
    lw_mat(&l, "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight", C, r, B);
    lw_mat(&l, "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight", r, C, A);
    lw_mat(&l, "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight", C, r, B);
    lw_scalar(&l, "lora_te2_text_model_encoder_layers_0_mlp_fc1.alpha", 1.0f);
    lw_mat(&l, "lora_te3_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight", r, C, A);
    lw_mat(&l, "lora_te3_encoder_block_0_layer_0_SelfAttention_q.lora_up.weight", C, r, B);
    CHECK(lw_write(&l, "te.safetensors", p, sizeof p) == 0, "write");
    lora_file *f;
    if (lora_open(&f, p, &err) == SD3_OK) {
        CHECK(lora_count(f, LORA_TARGET_CLIP_L) == 1 && lora_count(f, LORA_TARGET_CLIP_G) == 1 &&
                  lora_count(f, LORA_TARGET_T5) == 1 && lora_count(f, LORA_TARGET_TRANSFORMER) == 1,
              "te counts %d %d %d %d", lora_count(f, LORA_TARGET_CLIP_L), lora_count(f, LORA_TARGET_CLIP_G),
              lora_count(f, LORA_TARGET_T5), lora_count(f, LORA_TARGET_TRANSFORMER));
        g_log[0] = 0;
        CHECK(lora_attach(m, f, 1.0f, 0, &err) == SD3_OK, "te attach: %s", err.msg);
        CHECK(lora_adapter_count(m, NULL) == 1, "te: %d adapters", lora_adapter_count(m, NULL));
        CHECK(strstr(g_log, "1 LoRA module(s) for the T5 text encoder are not applied") && !strstr(g_log, "CLIP"),
              "te warning (T5 only; the CLIP modules are lora_clip_fuse's): %s", g_log);
        lora_close(f);
        lora_detach_all(m);
    } else {
        CHECK(0, "%s", err.msg);
    }

    /* Malformed files: bad alpha shape, integer tensor, empty file; non-finite scale. */
    lw_init(&l);
    lw_mat(&l, "transformer.transformer_blocks.0.attn.to_q.lora_A.weight", r, C, A);
    lw_mat(&l, "transformer.transformer_blocks.0.attn.to_q.lora_B.weight", C, r, B);
    lw_mat(&l, "transformer.transformer_blocks.0.attn.to_q.alpha", 1, 2, A);
    CHECK(lw_write(&l, "alpha.safetensors", p, sizeof p) == 0, "write");
    CHECK(lora_open(&f, p, &err) == SD3_ERR_FORMAT && strstr(err.msg, "alpha") && strstr(err.msg, "[1, 2]") && !f,
          "bad alpha: %s", err.msg);
    lw_init(&l);
    int64_t ish[2] = {r, C}, ibuf[64] = {0};
    lw_add_dt(&l, "transformer.transformer_blocks.0.attn.to_q.lora_A.weight", DT_I64, 2, ish, ibuf);
    CHECK(lw_write(&l, "int.safetensors", p, sizeof p) == 0, "write");
    CHECK(lora_open(&f, p, &err) == SD3_ERR_FORMAT && strstr(err.msg, "I64"), "int tensor: %s", err.msg);
    lw_init(&l);
    CHECK(lw_write(&l, "empty.safetensors", p, sizeof p) == 0, "write");
    CHECK(lora_open(&f, p, &err) == SD3_ERR_FORMAT && strstr(err.msg, "no tensors"), "empty: %s", err.msg);
    CHECK(lora_open(&f, "/nonexistent/x.safetensors", &err) == SD3_ERR_NOT_FOUND, "missing file: %s", err.msg);
    CHECK(open_attach(m, g_lora, NAN, 0, &err) == SD3_ERR_INVALID_ARG && untouched(m), "NaN scale: %s", err.msg);
}

/* ---- several LoRAs, fuse / unfuse ------------------------------------------------------------- */

/* A second LoRA (rank 2, alpha 1) on Linears the golden one leaves alone, top-level ones included. */
static const struct {
    const char *mod;
    int N, K;
} L2_MODS[] = {
    {"transformer_blocks.0.ff.net.0.proj", 128, 32},
    {"transformer_blocks.1.ff.net.2", 32, 128},
    {"transformer_blocks.0.norm1.linear", 192, 32},
    {"context_embedder", 32, 96},
    {"proj_out", 64, 32},
    {"time_text_embed.timestep_embedder.linear_1", 32, 256},
    {"transformer_blocks.1.attn.to_q", 32, 32}, /* also adapted by the golden LoRA */
};
#define N_L2 ((int)(sizeof L2_MODS / sizeof L2_MODS[0]))

static int write_l2(char *path, size_t n) {
    lw l;
    lw_init(&l);
    for (int k = 0; k < N_L2; k++) {
        float *a = malloc((size_t)2 * L2_MODS[k].K * sizeof(float)),
              *b = malloc((size_t)L2_MODS[k].N * 2 * sizeof(float));
        fill(a, 2 * L2_MODS[k].K, 0.3f);
        fill(b, 2 * L2_MODS[k].N, 0.05f);
        char name[256];
        snprintf(name, sizeof name, "transformer.%s.lora_A.weight", L2_MODS[k].mod);
        lw_mat(&l, name, 2, L2_MODS[k].K, a);
        snprintf(name, sizeof name, "transformer.%s.lora_B.weight", L2_MODS[k].mod);
        lw_mat(&l, name, L2_MODS[k].N, 2, b);
        snprintf(name, sizeof name, "transformer.%s.alpha", L2_MODS[k].mod);
        lw_scalar(&l, name, 1.0f);
        free(a);
        free(b);
    }
    return lw_write(&l, "l2.safetensors", path, n);
}

/* W + s1 B1 A1 (golden LoRA, alpha = r) + s2 (1/2) B2 A2 for Linear mod, in double, from the files. */
static double *expected_fused(mmdit_model *m, const char *mod, const char *l2path, float s1, float s2, int64_t *n) {
    mmdit_linear *lin = find_linear(m, mod);
    const int64_t N = lin->weight.shape[0], K = lin->weight.shape[1];
    double *w = malloc((size_t)(N * K) * sizeof(double));
    for (int64_t i = 0; i < N * K; i++)
        w[i] = tensor_get_f32(&lin->weight, i);
    const char *paths[2] = {g_lora, l2path};
    const double sc[2] = {s1, s2 * 0.5};
    for (int f = 0; f < 2; f++) {
        st_file *st;
        sd3_err err = {0};
        if (st_open(&st, paths[f], &err) != SD3_OK) continue;
        char ka[256], kb[256];
        snprintf(ka, sizeof ka, "transformer.%s.lora_A.weight", mod);
        snprintf(kb, sizeof kb, "transformer.%s.lora_B.weight", mod);
        tensor A, B;
        if (st_get(st, ka, &A, &err) == SD3_OK && st_get(st, kb, &B, &err) == SD3_OK) {
            const int64_t r = A.shape[0];
            for (int64_t i = 0; i < N; i++)
                for (int64_t j = 0; j < K; j++) {
                    double acc = 0;
                    for (int64_t q = 0; q < r; q++)
                        acc += (double)tensor_get_f32(&B, i * r + q) * tensor_get_f32(&A, q * K + j);
                    w[i * K + j] += sc[f] * acc;
                }
        }
        st_close(st);
    }
    *n = N * K;
    return w;
}

/* Two LoRAs with their own scales: run time = fused; fused weights = W + sum s B A; unfuse and detach restore
 * outputs bit for bit; the same LoRA at 0.3 + 0.7 = at 1.0; at +1 and -1 it cancels. */
static void test_several(mmdit_model *m) {
    sd3_err err = {0};
    char l2[4096];
    CHECK(write_l2(l2, sizeof l2) == 0, "write l2");
    float *base = fwd(m);
    mmdit_linear *q1 = find_linear(m, "transformer_blocks.1.attn.to_q");
    const tensor q1_before = q1->weight;

    CHECK(open_attach(m, g_lora, 0.7f, 0, &err) == SD3_OK, "%s", err.msg);
    CHECK(open_attach(m, l2, 1.5f, 0, &err) == SD3_OK, "%s", err.msg);
    CHECK(lora_adapter_count(m, NULL) == 23 + N_L2, "%d adapters", lora_adapter_count(m, NULL));
    float *rt = fwd(m);
    CHECK(max_diff(rt, base, g_nout) > 1e-2, "two LoRAs change the output");
    CHECK(lora_fuse(m, &err) == SD3_OK, "fuse: %s", err.msg);
    int nf = 0;
    CHECK(lora_adapter_count(m, &nf) == 0 && nf == 23 + N_L2, "after fuse: %d run-time, %d folded",
          lora_adapter_count(m, NULL), nf);
    float *fu = fwd(m);
    CHECK(max_diff(fu, rt, g_nout) <= 2e-5, "fused vs run-time: %g", max_diff(fu, rt, g_nout));
    /* Fused weights against the sum computed here (the original weights are still reachable: unfuse). */
    const char *check_mods[] = {"transformer_blocks.1.attn.to_q", "context_embedder",
                                "transformer_blocks.0.norm1.linear", "transformer_blocks.0.attn.add_v_proj"};
    for (int k = 0; k < 4; k++) {
        mmdit_linear *lin = find_linear(m, check_mods[k]);
        int64_t n = tensor_numel(&lin->weight);
        float *got = malloc((size_t)n * sizeof(float));
        tensor_to_f32(&lin->weight, 0, n, got);
        CHECK(lin->weight.dt == DT_F32 && lin->weight.owned, "%s: fused weight is an owned F32 copy", check_mods[k]);
        lora_unfuse(m);
        int64_t ne;
        double *want = expected_fused(m, check_mods[k], l2, 0.7f, 1.5f, &ne);
        double d = 0, mx = 0;
        for (int64_t i = 0; i < n && ne == n; i++)
            d = fmax(d, fabs(got[i] - want[i])), mx = fmax(mx, fabs(want[i]));
        CHECK(ne == n && d <= 8 * 1.2e-7 * mx, "%s: fused weight off by %g (max |w| %g)", check_mods[k], d, mx);
        free(want);
        free(got);
        CHECK(lora_fuse(m, &err) == SD3_OK, "refuse: %s", err.msg);
    }
    lora_unfuse(m);
    CHECK(q1->weight.data == q1_before.data && q1->weight.dt == q1_before.dt && !q1->weight.owned,
          "unfuse restores the original weight view");
    float *un = fwd(m);
    CHECK(un && rt && !memcmp(un, rt, (size_t)g_nout * sizeof(float)),
          "unfused output equals the run-time one exactly");
    /* Fuse with a quantised weight among the affected: refused, nothing changes. */
    q1->weight.dt = DT_Q8_ROW;
    CHECK(lora_fuse(m, &err) == SD3_ERR_UNSUPPORTED && strstr(err.msg, "Q8"), "quantised fuse: %s", err.msg);
    q1->weight.dt = q1_before.dt;
    CHECK(lora_adapter_count(m, &nf) == 23 + N_L2 && nf == 0, "refused fuse changed nothing");
    /* Fuse, then attach more at run time on top, then detach everything. */
    CHECK(lora_fuse(m, &err) == SD3_OK, "%s", err.msg);
    CHECK(open_attach(m, g_lora, -0.7f, 0, &err) == SD3_OK, "%s", err.msg);
    float *mix = fwd(m);
    lora_detach_all(m);
    CHECK(untouched(m) && q1->weight.data == q1_before.data, "detach restores the model");
    float *b2 = fwd(m);
    CHECK(b2 && base && !memcmp(b2, base, (size_t)g_nout * sizeof(float)), "detached output equals the base exactly");
    /* golden at 0.7 (fused) - 0.7 (run time) + l2 at 1.5 = l2 alone at 1.5 */
    CHECK(open_attach(m, l2, 1.5f, 0, &err) == SD3_OK, "%s", err.msg);
    float *only2 = fwd(m);
    lora_detach_all(m);
    CHECK(max_diff(mix, only2, g_nout) <= 2e-5, "+0.7 fused, -0.7 run time cancel: %g", max_diff(mix, only2, g_nout));

    /* Same LoRA at 0.3 + 0.7 equals it at 1.0; at +1 and -1 the deltas cancel. */
    CHECK(open_attach(m, g_lora, 1.0f, 0, &err) == SD3_OK, "%s", err.msg);
    float *one = fwd(m);
    lora_detach_all(m);
    CHECK(open_attach(m, g_lora, 0.3f, 0, &err) == SD3_OK && open_attach(m, g_lora, 0.7f, 0, &err) == SD3_OK, "%s",
          err.msg);
    float *split = fwd(m);
    lora_detach_all(m);
    CHECK(max_diff(split, one, g_nout) <= 2e-5, "0.3 + 0.7 vs 1.0: %g", max_diff(split, one, g_nout));
    CHECK(open_attach(m, g_lora, 1.0f, 0, &err) == SD3_OK && open_attach(m, g_lora, -1.0f, 0, &err) == SD3_OK, "%s",
          err.msg);
    float *cancel = fwd(m);
    lora_detach_all(m);
    CHECK(max_diff(cancel, base, g_nout) <= 2e-5, "+1 and -1 cancel: %g", max_diff(cancel, base, g_nout));
    free(base), free(rt), free(fu), free(un), free(mix), free(b2), free(only2), free(one), free(split), free(cancel);
}

/* The file stays usable after the caller's lora_close while attached, and mmdit_free detaches. */
static void test_lifetime(const char *dir) {
    mmdit_model m;
    sd3_err err = {0};
    if (mmdit_load_dir(&m, dir, &err) != SD3_OK) {
        CHECK(0, "%s", err.msg);
        return;
    }
    lora_file *f;
    CHECK(lora_open(&f, g_lora, &err) == SD3_OK, "%s", err.msg);
    CHECK(lora_attach(&m, f, 1.0f, 0, &err) == SD3_OK, "%s", err.msg);
    CHECK(f->refs == 2, "refs %d", f->refs);
    lora_close(f);
    float *a = fwd(&m);
    CHECK(lora_fuse(&m, &err) == SD3_OK, "%s", err.msg);
    free(a);
    mmdit_free(&m); /* fused copies and adapters freed through the release hook (valgrind/asan clean) */
    CHECK(!m.lora_state && !m.blocks, "freed");
}

/* CLIP-L text-encoder LoRA by fusing. */
static void test_clip(void) {
    char dir[4096], cfgp[4200];
    snprintf(dir, sizeof dir, "%s/tiny-sd3/text_encoder", g_root);
    snprintf(cfgp, sizeof cfgp, "%s/config.json", dir);
    sd3_err err = {0};
    weights w;
    cJSON *cfg = json_load_file(cfgp, &err);
    if (!cfg || weights_open_dir(&w, dir, "model", &err) != SD3_OK) {
        CHECK(0, "tiny CLIP-L: %s", err.msg);
        cJSON_Delete(cfg);
        return;
    }
    clip_model cm;
    if (clip_load(&cm, &w, cfg, "text_encoder", &err) != SD3_OK) {
        CHECK(0, "%s", err.msg);
        weights_close(&w);
        cJSON_Delete(cfg);
        return;
    }
    const int T = 8, C = 32, r = 2;
    const int64_t ids[8] = {49406, 320, 1125, 539, 320, 2368, 49407, 49407};
    const int64_t n_out = (int64_t)T * C + C;
    float *out[6];
    for (int i = 0; i < 6; i++)
        out[i] = calloc((size_t)n_out, sizeof(float));
#define CLIP_RUN(o) CHECK(clip_forward(&cm, ids, 1, T, -2, NULL, (o), (o) + T * C, &err) == SD3_OK, "clip: %s", err.msg)
    CLIP_RUN(out[0]);
    /* Modules: layer 0 q_proj (alpha 1, rank 2), layer 1 fc1 (no alpha), text_projection; kohya copy with
     * the same tensors (q_proj B doubled and alpha 0.5: the same delta). */
    struct {
        const char *d, *k;
        int N, K;
    } mods[3] = {
        {"text_model.encoder.layers.0.self_attn.q_proj", "text_model_encoder_layers_0_self_attn_q_proj", 32, 32},
        {"text_model.encoder.layers.1.mlp.fc1", "text_model_encoder_layers_1_mlp_fc1", 64, 32},
        {"text_projection", "text_projection", 32, 32},
    };
    float *A[3], *B[3];
    lw ld, lk;
    lw_init(&ld);
    lw_init(&lk);
    char name[256], pd[4096], pk[4096], pbad[4096], pmis[4096];
    for (int k = 0; k < 3; k++) {
        A[k] = malloc((size_t)r * mods[k].K * sizeof(float));
        B[k] = malloc((size_t)mods[k].N * r * sizeof(float));
        fill(A[k], (int64_t)r * mods[k].K, 0.5f);
        fill(B[k], (int64_t)mods[k].N * r, 0.2f);
        snprintf(name, sizeof name, "text_encoder.%s.lora_A.weight", mods[k].d);
        lw_mat(&ld, name, r, mods[k].K, A[k]);
        snprintf(name, sizeof name, "text_encoder.%s.lora_B.weight", mods[k].d);
        lw_mat(&ld, name, mods[k].N, r, B[k]);
        float *B2 = malloc((size_t)mods[k].N * r * sizeof(float));
        for (int64_t i = 0; i < (int64_t)mods[k].N * r; i++)
            B2[i] = k == 0 ? 2 * B[k][i] : B[k][i];
        snprintf(name, sizeof name, "lora_te1_%s.lora_down.weight", mods[k].k);
        lw_mat(&lk, name, r, mods[k].K, A[k]);
        snprintf(name, sizeof name, "lora_te1_%s.lora_up.weight", mods[k].k);
        lw_mat(&lk, name, mods[k].N, r, B2);
        free(B2);
    }
    lw_scalar(&ld, "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.alpha", 1.0f);
    lw_scalar(&lk, "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.alpha", 0.5f);
    lw_scalar(&lk, "lora_te1_text_model_encoder_layers_1_mlp_fc1.alpha", 2.0f);
    CHECK(lw_write(&ld, "clip_d.safetensors", pd, sizeof pd) == 0 &&
              lw_write(&lk, "clip_k.safetensors", pk, sizeof pk) == 0,
          "write");
    write_one("clip_bad.safetensors", "text_encoder.text_model.encoder.layers.1.mlp.fc2", 2, 64, 31, 2, pbad,
              sizeof pbad);
    write_one("clip_mis.safetensors", "text_encoder.text_model.encoder.layers.7.mlp.fc2", 2, 64, 32, 2, pmis,
              sizeof pmis);

    lora_file *fd = NULL, *fk = NULL, *fb = NULL, *fm = NULL;
    if (lora_open(&fd, pd, &err) || lora_open(&fk, pk, &err) || lora_open(&fb, pbad, &err) ||
        lora_open(&fm, pmis, &err)) {
        CHECK(0, "%s", err.msg);
    } else {
        const void *q0 = cm.layers[0].q_w.data;
        lora_clip_state *st = NULL;
        /* Wrong encoder: a no-op. */
        CHECK(lora_clip_fuse(&cm, LORA_TARGET_CLIP_G, fd, 1.0f, 0, &st, &err) == SD3_OK && !st, "CLIP-G no-op");
        CHECK(lora_clip_fuse(&cm, LORA_TARGET_CLIP_L, fd, 0.8f, 0, &st, &err) == SD3_OK && st, "%s", err.msg);
        CLIP_RUN(out[1]);
        CHECK(max_diff(out[1], out[0], n_out) > 1e-3, "the CLIP LoRA changes the output (%g)",
              max_diff(out[1], out[0], n_out));
        /* Fused q_proj of layer 0 vs W + 0.8 (1/2) B A in double. */
        float *gotw = malloc(32 * 32 * sizeof(float));
        tensor_to_f32(&cm.layers[0].q_w, 0, 32 * 32, gotw);
        lora_clip_unfuse(&cm, &st);
        CHECK(!st && cm.layers[0].q_w.data == q0, "unfuse restores the view");
        double d = 0, mx = 0;
        for (int i = 0; i < 32; i++)
            for (int j = 0; j < 32; j++) {
                double acc = 0;
                for (int q = 0; q < r; q++)
                    acc += (double)B[0][i * r + q] * A[0][q * 32 + j];
                double want = tensor_get_f32(&cm.layers[0].q_w, i * 32 + j) + 0.8 * 0.5 * acc;
                d = fmax(d, fabs(gotw[i * 32 + j] - want)), mx = fmax(mx, fabs(want));
            }
        CHECK(d <= 8 * 1.2e-7 * mx, "fused CLIP q_proj off by %g", d);
        free(gotw);
        CLIP_RUN(out[2]);
        CHECK(!memcmp(out[2], out[0], (size_t)n_out * sizeof(float)), "unfused CLIP output equals the base exactly");
        CHECK(lora_clip_fuse(&cm, LORA_TARGET_CLIP_L, fk, 0.8f, 0, &st, &err) == SD3_OK, "%s", err.msg);
        CLIP_RUN(out[3]);
        lora_clip_unfuse(&cm, &st);
        CHECK(max_diff(out[3], out[1], n_out) <= 1e-5, "kohya lora_te1_ vs text_encoder.: %g",
              max_diff(out[3], out[1], n_out));
        CHECK(lora_clip_fuse(&cm, LORA_TARGET_CLIP_L, fd, 0.4f, 0, &st, &err) == SD3_OK &&
                  lora_clip_fuse(&cm, LORA_TARGET_CLIP_L, fd, 0.4f, 0, &st, &err) == SD3_OK,
              "%s", err.msg);
        CLIP_RUN(out[4]);
        CHECK(max_diff(out[4], out[1], n_out) <= 1e-5, "0.4 + 0.4 vs 0.8: %g", max_diff(out[4], out[1], n_out));
        lora_clip_unfuse(&cm, &st);
        CLIP_RUN(out[5]);
        CHECK(!memcmp(out[5], out[0], (size_t)n_out * sizeof(float)),
              "unfuse after two fuses restores the base exactly");
        CHECK(lora_clip_fuse(&cm, LORA_TARGET_CLIP_L, fb, 1.0f, 1, &st, &err) == SD3_ERR_SHAPE &&
                  strstr(err.msg, "[31, 2]") && strstr(err.msg, "[32, 64]") && !st,
              "misfit: %s", err.msg);
        CHECK(lora_clip_fuse(&cm, LORA_TARGET_CLIP_L, fm, 1.0f, 0, &st, &err) == SD3_ERR_NOT_FOUND &&
                  strstr(err.msg, "layers.7.mlp.fc2'") && !st,
              "unmatched: %s", err.msg);
        g_log[0] = 0;
        CHECK(lora_clip_fuse(&cm, LORA_TARGET_CLIP_L, fm, 1.0f, 1, &st, &err) == SD3_OK && !st &&
                  strstr(g_log, "skipping 1"),
              "unmatched, lenient: %s", g_log);
        CHECK(cm.layers[0].q_w.data == q0 && cm.layers[1].fc2_w.data != NULL, "model as loaded");
    }
#undef CLIP_RUN
    lora_close(fd), lora_close(fk), lora_close(fb), lora_close(fm);
    for (int k = 0; k < 3; k++)
        free(A[k]), free(B[k]);
    for (int i = 0; i < 6; i++)
        free(out[i]);
    clip_free(&cm);
    weights_close(&w);
    cJSON_Delete(cfg);
}

/* FILE[:SCALE] specs. */
static void test_spec(void) {
    char p[64];
    float s;
    sd3_err err = {0};
    CHECK(lora_parse_spec("a.safetensors:0.5", p, sizeof p, &s, &err) == SD3_OK && !strcmp(p, "a.safetensors") &&
              s == 0.5f,
          "%s %g", p, s);
    CHECK(lora_parse_spec("dir/a.safetensors", p, sizeof p, &s, &err) == SD3_OK && !strcmp(p, "dir/a.safetensors") &&
              s == 1.0f,
          "%s %g", p, s);
    CHECK(lora_parse_spec("x:-1.25e0", p, sizeof p, &s, &err) == SD3_OK && !strcmp(p, "x") && s == -1.25f, "%s %g", p,
          s);
    CHECK(lora_parse_spec("c:lora.st", p, sizeof p, &s, &err) == SD3_OK && !strcmp(p, "c:lora.st") && s == 1.0f, "%s",
          p);
    CHECK(lora_parse_spec("x:", p, sizeof p, &s, &err) == SD3_OK && !strcmp(p, "x:"), "%s", p);
    CHECK(lora_parse_spec("x:inf", p, sizeof p, &s, &err) == SD3_ERR_INVALID_ARG, "inf scale");
    CHECK(lora_parse_spec(":0.5", p, sizeof p, &s, &err) == SD3_OK && !strcmp(p, ":0.5"), "%s", p);
    CHECK(lora_parse_spec("", p, sizeof p, &s, &err) == SD3_ERR_INVALID_ARG, "empty");
    CHECK(lora_parse_spec("0123456789012345678901234567890123456789012345678901234567890123456789", p, sizeof p, &s,
                          &err) == SD3_ERR_INVALID_ARG,
          "too long");
}

/* Load the golden case inputs. */
static int load_inputs(void) {
    char path[4096];
    snprintf(path, sizeof path, "%s/diffusion/lora/lora_forward.safetensors", g_root);
    st_file *st;
    sd3_err err = {0};
    if (st_open(&st, path, &err) != SD3_OK) {
        CHECK(0, "%s", err.msg);
        return -1;
    }
    tensor t[4];
    const char *names[4] = {"hidden_states", "encoder_hidden_states", "pooled_projections", "timestep"};
    float **dst[4] = {&g_x, &g_ctx, &g_pooled, &g_t};
    for (int i = 0; i < 4; i++) {
        if (st_get(st, names[i], &t[i], &err) != SD3_OK) {
            CHECK(0, "%s", err.msg);
            st_close(st);
            return -1;
        }
        *dst[i] = malloc((size_t)tensor_numel(&t[i]) * sizeof(float));
        tensor_to_f32(&t[i], 0, tensor_numel(&t[i]), *dst[i]);
    }
    g_B = (int)t[0].shape[0], g_H = (int)t[0].shape[2], g_W = (int)t[0].shape[3], g_S = (int)t[1].shape[1];
    g_nout = tensor_numel(&t[0]);
    st_close(st);
    return 0;
}

int main(int argc, char **argv) {
    const char *root = argc > 1 ? argv[1] : getenv("SD3_GOLDEN");
    snprintf(g_root, sizeof g_root, "%s", root ? root : "../shared/golden");
    snprintf(g_lora, sizeof g_lora, "%s/diffusion/lora/pytorch_lora_weights.safetensors", g_root);
    if (access(g_lora, R_OK)) {
        CHECK(0, "golden data not found: %s (pass the golden root as argument or set SD3_GOLDEN)", g_lora);
        TEST_MAIN_END("test_lora");
    }
    snprintf(g_tmp, sizeof g_tmp, "/tmp/test_lora.XXXXXX");
    if (!mkdtemp(g_tmp)) {
        CHECK(0, "mkdtemp failed");
        TEST_MAIN_END("test_lora");
    }
    sd3_set_log(on_log, NULL, SD3_LOG_WARN);
    char dir[4096], single[4096], config[4200];
    snprintf(dir, sizeof dir, "%s/tiny-sd3/transformer", g_root);
    snprintf(single, sizeof single, "%s/tiny-sd3-single-file/sd3_tiny.safetensors", g_root);
    snprintf(config, sizeof config, "%s/config.json", dir);
    sd3_err err = {0};
    mmdit_model m, ms;
    if (load_inputs() == 0 && mmdit_load_dir(&m, dir, &err) == SD3_OK) {
        if (mmdit_load_file(&ms, single, config, &err) == SD3_OK) {
            test_formats(&m, &ms);
            mmdit_free(&ms);
        } else {
            CHECK(0, "load %s: %s", single, err.msg);
        }
        test_swapped_halves(&m);
        test_shape_errors(&m);
        test_unmatched(&m);
        test_several(&m);
        mmdit_free(&m);
        test_lifetime(dir);
    } else {
        CHECK(0, "load %s: %s", dir, err.msg);
    }
    test_clip();
    test_spec();
    free(g_x), free(g_ctx), free(g_pooled), free(g_t);

    const char *files[] = {"kohya",      "original", "swap_k", "swap_d",   "shape",   "unmatched",
                           "incomplete", "dora",     "te",     "alpha",    "int",     "empty",
                           "l2",         "clip_d",   "clip_k", "clip_bad", "clip_mis"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char p[512];
        snprintf(p, sizeof p, "%s/%s.safetensors", g_tmp, files[i]);
        unlink(p);
    }
    rmdir(g_tmp);
    TEST_MAIN_END("test_lora");
}

/*
 * golden_main.c — the golden runner: walks a golden root (default ../shared/golden), runs every case
 * JSON through the function registered for its kind, compares every expected tensor, prints one line
 * per case and a final "N passed, N failed", and exits non-zero on any failure.
 *
 *   golden [ROOT] [--only KIND[,KIND]] [--implemented] [--case SUBSTRING] [-v]
 *
 * --implemented runs only kinds that have an implementation (what `make test` uses); without it an
 * unimplemented kind is a failure ("not implemented: <kind>").
 */
#include <dirent.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include "golden.h"
#include "io/json_util.h"
#include "kernels/kernels.h"

/* ---- the case API (golden.h) ---- */

/* out = a + "/" + b, truncated to n bytes. */
static void join_path(char *out, size_t n, const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la + 1 + lb + 1 > n) { out[0] = 0; return; }
    memcpy(out, a, la);
    out[la] = '/';
    memcpy(out + la + 1, b, lb + 1);
}

void golden_root_path(const golden_case *gc, const char *rel, char *out, size_t n) { join_path(out, n, gc->root, rel); }

void golden_case_path(const golden_case *gc, const char *rel, char *out, size_t n) { join_path(out, n, gc->dir, rel); }

const char *golden_model_dir(golden_case *gc) {
    static _Thread_local char buf[4096];
    const char *m = json_str(gc->json, "model_dir", NULL);
    if (!m) return NULL;
    golden_root_path(gc, m, buf, sizeof buf);
    return buf;
}

void golden_fail(golden_case *gc, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (!gc->n_failed) snprintf(gc->first_failure, sizeof gc->first_failure, "%s", msg);
    gc->n_failed++;
    if (gc->verbose) printf("    FAIL %s\n", msg);
}

int golden_tensor(golden_case *gc, const char *name, tensor *out) {
    sd3_err err = {0};
    const st_entry *e = st_find(gc->st, name);
    if (e && e->ndim > TENSOR_MAX_DIMS) {
        /* a view with the leading dimensions folded into one (e.g. per-step stacks [steps, B, C, H, W]) */
        memset(out, 0, sizeof *out);
        out->dt = e->dt;
        out->ndim = TENSOR_MAX_DIMS;
        int fold = e->ndim - TENSOR_MAX_DIMS + 1;
        out->shape[0] = 1;
        for (int i = 0; i < fold; i++) out->shape[0] *= e->shape[i];
        for (int i = fold; i < e->ndim; i++) out->shape[i - fold + 1] = e->shape[i];
        out->data = (void *)e->data;
        return 0;
    }
    if (st_get(gc->st, name, out, &err) != SD3_OK) {
        golden_fail(gc, "%s", err.msg);
        return -1;
    }
    return 0;
}

float *golden_f32(golden_case *gc, const char *name, int64_t *n) {
    tensor t;
    if (golden_tensor(gc, name, &t)) return NULL;
    int64_t cnt = tensor_numel(&t);
    float *buf = sd3_malloc((size_t)(cnt ? cnt : 1) * sizeof(float));
    if (!buf) { golden_fail(gc, "out of memory"); return NULL; }
    tensor_to_f32(&t, 0, cnt, buf);
    if (n) *n = cnt;
    return buf;
}

const cJSON *golden_tensor_json(const golden_case *gc, const char *name) {
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(gc->json, "tensors");
    return ts ? cJSON_GetObjectItemCaseSensitive(ts, name) : NULL;
}

double golden_atol(const golden_case *gc, const char *name) {
    const cJSON *t = golden_tensor_json(gc, name);
    return json_num(t, "suggested_atol", -1.0);
}

/* The opt-in bf16 mode (--precision bf16): every case runs with bf16 products, and a tensor passes when
 * |got - want| <= atol + beta·max|want| for all its values. beta is the bound of the bf16 mode against the
 * F32 reference (diffusers' F32 numbers), measured over every golden case with `golden --precision bf16
 * --bf16-beta 1 -v` (which prints the beta each tensor needs): see GOLDEN_BF16_BETA. */
/* Measured 2026-11-28 (AVX-512 BF16 GEMM + bf16 flash attention), largest beta per kind: transformer_forward
 * 0.0065, lora_forward 0.0036, text_encoders 0.0102, encode_prompt 0.0074, vae_decode 0.0103, vae_encode
 * 0.0123, txt2img 0.0182 (8 steps, CFG 7), img2img 0.0168; bound 0.03. The training kinds are left out
 * of this mode: AdamW's first step moves each parameter by ~lr·sign(g), so a bf16-sized change of a
 * near-zero gradient flips whole updates (measured beta up to 2) and no relative bound applies. */
#define GOLDEN_BF16_BETA 0.03
static double g_beta = 0;          /* 0: the F32 mode, atol alone */
static double g_beta_needed = 0;   /* the largest beta a tensor needed in this run */
static char g_beta_where[160];

int golden_check_atol(golden_case *gc, const char *name, const float *got, int64_t n, double atol) {
    tensor t;
    gc->n_checked++;
    if (golden_tensor(gc, name, &t)) return -1;
    if (tensor_numel(&t) != n) {
        char s[96];
        golden_fail(gc, "%s: expected %lld values %s, got %lld", name, (long long)tensor_numel(&t),
                    tensor_shape_str(&t, s, sizeof s), (long long)n);
        return -1;
    }
    double max_abs = 0, max_val = 0;
    int64_t worst = -1, bad = 0;
    if (g_beta > 0) { /* bf16 mode: atol + beta·max|want| */
        double need = 0;
        for (int64_t i = 0; i < n; i++) max_val = fmax(max_val, fabs(tensor_get_f32(&t, i)));
        for (int64_t i = 0; i < n; i++) {
            double d = fabs((double)got[i] - tensor_get_f32(&t, i));
            if (isnan(d)) d = INFINITY;
            if (d > max_abs) { max_abs = d; worst = i; }
        }
        if (max_abs > atol) need = max_val > 0 ? (max_abs - atol) / max_val : INFINITY;
        if (need > g_beta_needed) {
            g_beta_needed = need;
            snprintf(g_beta_where, sizeof g_beta_where, "%s: %s", gc->json_path + strlen(gc->root) + 1, name);
        }
        if (!(max_abs <= atol + g_beta * max_val)) {
            golden_fail(gc, "%s (bf16 mode): max |diff| %.3g at [%lld] (got %.9g, want %.9g) > atol %.3g + %.3g x max|want| %.3g", name,
                        max_abs, (long long)worst, (double)got[worst], (double)tensor_get_f32(&t, worst), atol, g_beta, max_val);
            return -1;
        }
        if (gc->verbose) printf("    ok   %-48s max|diff| %.3g (atol %.3g, max|value| %.3g): beta needed %.4f\n", name, max_abs, atol, max_val, need);
        return 0;
    }
    for (int64_t i = 0; i < n; i++) {
        double e = tensor_get_f32(&t, i), g = got[i];
        double d = fabs(g - e);
        if (fabs(e) > max_val) max_val = fabs(e);
        if (!(d <= atol)) {  /* NaN fails too */
            bad++;
            if (worst < 0 || !(d <= max_abs)) { max_abs = isnan(d) ? INFINITY : d; worst = i; }
        } else if (d > max_abs && worst < 0) {
            max_abs = d;
        }
    }
    if (bad) {
        golden_fail(gc, "%s: %lld of %lld values off, max |diff| %.3g at [%lld] (got %.9g, want %.9g), atol %.3g", name,
                    (long long)bad, (long long)n, max_abs, (long long)worst, (double)got[worst],
                    (double)tensor_get_f32(&t, worst), atol);
        return -1;
    }
    if (gc->verbose) printf("    ok   %-48s max|diff| %.3g (atol %.3g, max|value| %.3g)\n", name, max_abs, atol, max_val);
    return 0;
}

int golden_check(golden_case *gc, const char *name, const float *got, int64_t n) {
    double atol = golden_atol(gc, name);
    if (atol < 0) {
        gc->n_checked++;
        golden_fail(gc, "%s: the case gives no suggested_atol for this tensor", name);
        return -1;
    }
    return golden_check_atol(gc, name, got, n, atol);
}

int golden_check_i64(golden_case *gc, const char *name, const int64_t *got, int64_t n) {
    tensor t;
    gc->n_checked++;
    if (golden_tensor(gc, name, &t)) return -1;
    if (tensor_numel(&t) != n || (t.dt != DT_I64)) {
        golden_fail(gc, "%s: expected %lld I64 values, got %lld", name, (long long)tensor_numel(&t), (long long)n);
        return -1;
    }
    for (int64_t i = 0; i < n; i++) {
        int64_t e;  /* memcpy: I64 tensors may sit at unaligned offsets in real files */
        memcpy(&e, (const char *)t.data + 8 * i, 8);
        if (e != got[i]) {
            golden_fail(gc, "%s: first mismatch at [%lld]: got %lld, want %lld", name, (long long)i, (long long)got[i],
                        (long long)e);
            return -1;
        }
    }
    if (gc->verbose) printf("    ok   %-48s %lld ids exact\n", name, (long long)n);
    return 0;
}

/* ---- shared inputs of the MMDiT kinds (transformer_forward, lora_forward) ---- */

void golden_mmdit_inputs_free(golden_mmdit_inputs *in) {
    sd3_free(in->x);
    sd3_free(in->ctx);
    sd3_free(in->pooled);
    sd3_free(in->t);
}

int golden_mmdit_inputs_load(golden_case *gc, golden_mmdit_inputs *in) {
    memset(in, 0, sizeof *in);
    tensor hs, eh, pp, ts;
    if (golden_tensor(gc, "hidden_states", &hs) || golden_tensor(gc, "encoder_hidden_states", &eh) ||
        golden_tensor(gc, "pooled_projections", &pp) || golden_tensor(gc, "timestep", &ts))
        return -1;
    if (hs.ndim != 4 || eh.ndim != 3 || pp.ndim != 2 || ts.ndim != 1 || eh.shape[0] != hs.shape[0] ||
        pp.shape[0] != hs.shape[0] || ts.shape[0] != hs.shape[0]) {
        golden_fail(gc, "inputs have inconsistent shapes");
        return -1;
    }
    in->B = (int)hs.shape[0], in->C = (int)hs.shape[1], in->H = (int)hs.shape[2], in->W = (int)hs.shape[3];
    in->S = (int)eh.shape[1], in->J = (int)eh.shape[2], in->P = (int)pp.shape[1];
    in->x = golden_f32(gc, "hidden_states", NULL);
    in->ctx = golden_f32(gc, "encoder_hidden_states", NULL);
    in->pooled = golden_f32(gc, "pooled_projections", NULL);
    in->t = golden_f32(gc, "timestep", NULL);
    return in->x && in->ctx && in->pooled && in->t ? 0 : -1;
}

/* ---- discovery ---- */

typedef struct { char **v; int n, cap; } strlist;

static void sl_push(strlist *l, const char *s) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        l->v = realloc(l->v, sizeof(char *) * (size_t)l->cap);
        SD3_ASSERT(l->v);
    }
    l->v[l->n++] = strdup(s);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Every *.json under dir, recursively. */
static void walk(const char *dir, strlist *out) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char p[4096];
        join_path(p, sizeof p, dir, e->d_name);
        struct stat sb;
        if (stat(p, &sb) != 0) continue;
        if (S_ISDIR(sb.st_mode)) walk(p, out);
        else {
            size_t l = strlen(e->d_name);
            if (l > 5 && !strcmp(e->d_name + l - 5, ".json")) sl_push(out, p);
        }
    }
    closedir(d);
}

typedef struct { const char *name; golden_fn fn; } kind_entry;
#define GOLDEN_ENTRY(k) {#k, golden_##k},

static int in_list(const char *list, const char *kind) {
    if (!list) return 1;
    size_t kl = strlen(kind);
    for (const char *p = list; *p;) {
        const char *c = strchr(p, ',');
        size_t l = c ? (size_t)(c - p) : strlen(p);
        if (l == kl && !strncmp(p, kind, l)) return 1;
        if (!c) break;
        p = c + 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *root = "../shared/golden", *only = NULL, *case_filter = NULL;
    int implemented_only = 0, verbose = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
        else if (!strcmp(argv[i], "--case") && i + 1 < argc) case_filter = argv[++i];
        else if (!strcmp(argv[i], "--implemented")) implemented_only = 1;
        else if (!strcmp(argv[i], "-v")) verbose = 1;
        else if (!strcmp(argv[i], "--precision") && i + 1 < argc && !strcmp(argv[i + 1], "bf16")) g_beta = GOLDEN_BF16_BETA, i++;
        else if (!strcmp(argv[i], "--bf16-beta") && i + 1 < argc && atof(argv[i + 1]) > 0) g_beta = atof(argv[++i]);
        else if (argv[i][0] == '-') {
            fprintf(stderr, "usage: golden [ROOT] [--only KIND[,KIND]] [--implemented] [--case SUBSTRING] [-v] "
                            "[--precision bf16 | --bf16-beta B]\n");
            return 2;
        } else root = argv[i];
    }
    if (only && !*only) only = NULL;
    if (g_beta > 0) {
        k_set_precision(1);
        printf("golden: bf16 mode (bf16 products: linear %s, attention %s), bound atol + %.3g x max|value|\n", k_linear_variant(DT_BF16),
               k_attention_variant(), g_beta);
    }
    kind_entry kinds[] = {GOLDEN_KINDS(GOLDEN_ENTRY)};
    int n_kinds = (int)(sizeof kinds / sizeof kinds[0]);

    struct stat sb;
    if (stat(root, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        fprintf(stderr, "golden: %s: not a directory\n", root);
        printf("0 passed, 1 failed\n");
        return 1;
    }
    strlist files = {0};
    walk(root, &files);
    qsort(files.v, (size_t)files.n, sizeof(char *), cmp_str);

    int passed = 0, failed = 0;
    for (int f = 0; f < files.n; f++) {
        sd3_err err = {0};
        cJSON *j = json_load_file(files.v[f], &err);
        if (!j) continue;  /* not ours to judge: unreadable non-case JSON is skipped only if not a case */
        const cJSON *jk = cJSON_GetObjectItemCaseSensitive(j, "kind");
        const cJSON *jf = cJSON_GetObjectItemCaseSensitive(j, "file");
        if (!cJSON_IsObject(j) || !cJSON_IsString(jk) || !jf) { cJSON_Delete(j); continue; }
        const char *kind = jk->valuestring;
        const char *rel = files.v[f] + strlen(root) + 1;
        if (!in_list(only, kind) || (case_filter && !strstr(rel, case_filter))) { cJSON_Delete(j); continue; }
        golden_fn fn = NULL;
        for (int k = 0; k < n_kinds; k++)
            if (!strcmp(kinds[k].name, kind)) fn = kinds[k].fn;
        if (!fn && implemented_only) { cJSON_Delete(j); continue; }

        golden_case gc;
        memset(&gc, 0, sizeof gc);
        gc.root = root;
        gc.kind = kind;
        gc.json = j;
        gc.verbose = verbose;
        snprintf(gc.json_path, sizeof gc.json_path, "%s", files.v[f]);
        snprintf(gc.dir, sizeof gc.dir, "%s", files.v[f]);
        char *slash = strrchr(gc.dir, '/');
        if (slash) *slash = 0;
        double t0 = sd3_time();
        if (verbose) printf("%s (%s)\n", rel, kind);
        if (!fn) {
            golden_fail(&gc, "not implemented: %s", kind);
        } else if (!cJSON_IsString(jf)) {
            golden_fail(&gc, "case 'file' is not a string");
        } else {
            char p[4096];
            golden_case_path(&gc, jf->valuestring, p, sizeof p);
            if (st_open(&gc.st, p, &err) != SD3_OK) golden_fail(&gc, "%s", err.msg);
            else {
                int rc = fn(&gc);
                if (rc && !gc.n_failed) golden_fail(&gc, "case function failed without a message");
                if (!gc.n_failed && gc.n_checked == 0) golden_fail(&gc, "case checked no tensor");
            }
        }
        double dt = sd3_time() - t0;
        if (gc.n_failed) {
            failed++;
            printf("FAIL %-60s %s\n", rel, gc.first_failure);
        } else {
            passed++;
            printf("ok   %-60s %d tensors (%.2fs)\n", rel, gc.n_checked, dt);
        }
        fflush(stdout);
        st_close(gc.st);
        cJSON_Delete(j);
    }
    for (int i = 0; i < files.n; i++) free(files.v[i]);
    free(files.v);
    if (g_beta > 0) printf("golden: bf16 mode: the largest beta needed was %.4f (%s); bound %.3g\n", g_beta_needed, g_beta_where, g_beta);
    printf("golden: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}

/* test_bad_inputs.c — the bad-input matrix (issue 8): every class of bad input the sd3 CLI and the library
 * accept, each of which must give one clear error line naming the problem, a non-zero exit, no crash and
 * no output file (not even a temp file) left behind.
 *
 * Files: damaged copies of the tiny golden pipeline (a symlink farm in a temp folder with one component
 * replaced: missing, empty, truncated, corrupt or lying safetensors header, I64 or misshaped weights,
 * NaN/Inf weights, a directory where a file is expected, broken configs and tokenizer files); latents
 * files; single-file checkpoints. Parameters out of range. Images: wrong format, 0x0, 100000x100000
 * (rejected from the header, before any allocation), odd sizes. Outputs: unwritable, a directory, a disk
 * that fills up (RLIMIT_FSIZE in the child, SIGXFSZ ignored so the write fails with EFBIG as on a full
 * disk). Plus the same inputs through the library API, and regression cases for the bugs the fuzz
 * targets found (see fuzz/). test_cli.c covers the basic CLI flag errors; nothing here repeats them.
 *
 * The sd3 binary is found next to this test (<build>/tests/test_bad_inputs -> <build>/sd3); the golden
 * folder is $SD3_GOLDEN or ../shared/golden. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cjson/cJSON.h>
#include "io/image.h"
#include "io/json_util.h"
#include "io/model_store.h"
#include "io/safetensors.h"
#include "mmdit/mmdit.h"
#include "text/clip_tok.h"
#include "text/t5_tok.h"
#include "test.h"

static char sd3_bin[4096], golden[2048], tiny[2300], tmpdir[256], outdir[512], outpng[600];

/* ---- running the CLI ---------------------------------------------------------------------------- */

typedef struct run_result {
    long maxrss_kb;  /* the child's peak resident memory */
    int rc;          /* exit status, or -1 when killed by a signal */
    int sig;         /* the signal, or 0 */
    char out[32768]; /* stdout + stderr */
} run_result;

static run_result R;

/* Run sd3 with the NULL-terminated argument list, stdout and stderr into R.out. fsize > 0 sets
 * RLIMIT_FSIZE in the child (with SIGXFSZ ignored, so writes fail with EFBIG as on a full disk). */
static void run_argv(long fsize, const char **args) {
    char log[600];
    snprintf(log, sizeof log, "%s/run.log", tmpdir);
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd < 0) _exit(126);
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
        if (fsize > 0) {
            struct rlimit rl = {(rlim_t)fsize, (rlim_t)fsize};
            signal(SIGXFSZ, SIG_IGN);
            setrlimit(RLIMIT_FSIZE, &rl);
        }
        const char *argv[64];
        int n = 0;
        argv[n++] = sd3_bin;
        for (int i = 0; args[i] && n < 63; i++) argv[n++] = args[i];
        argv[n] = NULL;
        execv(sd3_bin, (char *const *)argv);
        _exit(127);
    }
    int st = 0;
    struct rusage ru;
    memset(&ru, 0, sizeof ru);
    wait4(pid, &st, 0, &ru);
    R.maxrss_kb = ru.ru_maxrss;
    R.sig = WIFSIGNALED(st) ? WTERMSIG(st) : 0;
    R.rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    FILE *f = fopen(log, "r");
    size_t k = f ? fread(R.out, 1, sizeof R.out - 1, f) : 0;
    if (f) fclose(f);
    R.out[k] = 0;
}

#define SD3(...) run_argv(0, (const char *[]){__VA_ARGS__, NULL})
#define SD3_FSIZE(lim, ...) run_argv(lim, (const char *[]){__VA_ARGS__, NULL})

/* Files left in the output folder (a partial image, a temp file): names into buf, count returned. */
static int leftovers(char *buf, size_t n) {
    DIR *d = opendir(outdir);
    int c = 0;
    buf[0] = 0;
    if (!d) return 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        c++;
        size_t l = strlen(buf);
        snprintf(buf + l, n - l, "%s ", e->d_name);
    }
    closedir(d);
    return c;
}

/* Empty the output folder (after a case that may legitimately have written something). */
static void clean_outdir(void) {
    DIR *d = opendir(outdir);
    if (!d) return;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        char p[1200];
        snprintf(p, sizeof p, "%s/%s", outdir, e->d_name);
        if (unlink(p) != 0) rmdir(p);
    }
    closedir(d);
}

/* The lines of R.out that carry an error, and the first of them. */
static int error_lines(const char **first) {
    int n = 0;
    *first = NULL;
    for (const char *s = R.out; *s;) {
        const char *e = strchr(s, '\n');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        if (memmem(s, len, "error", 5)) { if (!n) *first = s; n++; }
        s += len + (e ? 1 : 0);
    }
    return n;
}

/* The case just run failed cleanly: non-zero exit (no signal, no sanitizer report), exactly one error line
 * and it contains `want`, at most a few lines in all (seed / progress lines of a run that got going are
 * fine), and nothing left in the output folder. */
static void expect_clean_failure(const char *name, const char *want) {
    const char *first;
    int ne = error_lines(&first);
    char left[1024];
    CHECK(R.sig == 0, "[%s] killed by signal %d: %s", name, R.sig, R.out);
    CHECK(R.rc != 0 && R.rc != 127, "[%s] exit %d (want a failure): %s", name, R.rc, R.out);
    CHECK(!strstr(R.out, "Sanitizer") && !strstr(R.out, "runtime error"), "[%s] sanitizer report: %s", name, R.out);
    CHECK(ne == 1, "[%s] %d error lines: %s", name, ne, R.out);
    if (ne >= 1) {
        const char *nl = strchr(first, '\n');
        size_t len = nl ? (size_t)(nl - first) : strlen(first);
        CHECK(memmem(first, len, want, strlen(want)) != NULL, "[%s] error does not mention '%s': %.*s", name, want, (int)len, first);
    }
    CHECK(leftovers(left, sizeof left) == 0, "[%s] left files behind: %s", name, left);
    clean_outdir();
}

/* A case where refusing and succeeding are both acceptable (e.g. NaN weights): no crash, and a failure
 * must look like expect_clean_failure's. Returns 1 if it succeeded. */
static int expect_no_crash(const char *name) {
    CHECK(R.sig == 0, "[%s] killed by signal %d: %s", name, R.sig, R.out);
    CHECK(!strstr(R.out, "Sanitizer") && !strstr(R.out, "runtime error"), "[%s] sanitizer report: %s", name, R.out);
    if (R.rc == 0) { clean_outdir(); return 1; }
    const char *first;
    int ne = error_lines(&first);
    char left[1024];
    CHECK(ne == 1, "[%s] failed with %d error lines: %s", name, ne, R.out);
    CHECK(leftovers(left, sizeof left) == 0, "[%s] left files behind: %s", name, left);
    clean_outdir();
    return 0;
}

/* A generate call on model folder `model` with the small fast defaults plus extra arguments. */
#define GEN(model, ...) SD3("generate", "-m", model, "-W", "64", "-H", "64", "--steps", "1", "--seed", "1", "-o", outpng, __VA_ARGS__)

/* ---- damaged pipeline copies --------------------------------------------------------------------- */

static void die_setup(const char *what) {
    printf("setup failed: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* A fresh copy of the tiny pipeline at <tmp>/<name>: real folders, every file a symlink to the golden one
 * (so a case replaces just the file it damages). Returns the folder path (static per call slot). */
static const char *make_pipe(const char *name) {
    static char paths[8][700];
    static int slot;
    char *root = paths[slot++ % 8];
    snprintf(root, 700, "%s/%s", tmpdir, name);
    char cmd[2000];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (system(cmd)) {}
    if (mkdir(root, 0700)) die_setup(root);
    DIR *d = opendir(tiny);
    if (!d) die_setup(tiny);
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        char src[3000], dst[3000];
        snprintf(src, sizeof src, "%s/%s", tiny, e->d_name);
        snprintf(dst, sizeof dst, "%s/%s", root, e->d_name);
        struct stat sb;
        stat(src, &sb);
        if (!S_ISDIR(sb.st_mode)) { if (symlink(src, dst)) die_setup(dst); continue; }
        if (mkdir(dst, 0700)) die_setup(dst);
        DIR *d2 = opendir(src);
        for (struct dirent *f; d2 && (f = readdir(d2));) {
            if (f->d_name[0] == '.') continue;
            char s2[3400], d2p[3400];
            snprintf(s2, sizeof s2, "%s/%s", src, f->d_name);
            snprintf(d2p, sizeof d2p, "%s/%s", dst, f->d_name);
            if (symlink(s2, d2p)) die_setup(d2p);
        }
        if (d2) closedir(d2);
    }
    closedir(d);
    return root;
}

/* <pipe>/<rel> into out. */
static void pipe_file(char *out, size_t n, const char *pipe, const char *rel) { snprintf(out, n, "%s/%s", pipe, rel); }

/* Replace <pipe>/<rel> with a regular file holding n bytes of data (data NULL: remove it). */
static void put_file(const char *pipe, const char *rel, const void *data, size_t n) {
    char p[1200];
    pipe_file(p, sizeof p, pipe, rel);
    unlink(p);
    if (!data) return;
    FILE *f = fopen(p, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f)) die_setup(p);
}

/* Read a whole golden file of the tiny pipeline. */
static uint8_t *read_tiny(const char *rel, size_t *n) {
    char p[3000];
    snprintf(p, sizeof p, "%s/%s", tiny, rel);
    sd3_err err = {0};
    char *b = file_read_all(p, 64u << 20, n, &err);
    if (!b) { printf("setup failed: %s\n", err.msg); exit(1); }
    return (uint8_t *)b;
}

/* Replace <pipe>/<rel> with its first `keep` bytes. */
static void truncate_file(const char *pipe, const char *rel, size_t keep) {
    size_t n;
    uint8_t *b = read_tiny(rel, &n);
    put_file(pipe, rel, b, keep < n ? keep : n);
    free(b);
}

/* Replace <pipe>/<rel> (a JSON object) with a copy whose key is set to v (v is consumed). */
static void edit_json(const char *pipe, const char *rel, const char *key, cJSON *v) {
    size_t n;
    uint8_t *b = read_tiny(rel, &n);
    cJSON *j = cJSON_ParseWithLength((const char *)b, n);
    if (!j) die_setup(rel);
    if (cJSON_GetObjectItemCaseSensitive(j, key)) cJSON_ReplaceItemInObjectCaseSensitive(j, key, v);
    else cJSON_AddItemToObject(j, key, v);
    char *t = cJSON_Print(j);
    put_file(pipe, rel, t, strlen(t));
    free(t);
    cJSON_Delete(j);
    free(b);
}

/* Rewrite the safetensors header of <rel> (JSON edited by fn), data section unchanged. */
static void edit_header(const char *pipe, const char *rel, void (*fn)(cJSON *hdr)) {
    size_t n;
    uint8_t *b = read_tiny(rel, &n);
    uint64_t hl;
    memcpy(&hl, b, 8);
    cJSON *h = cJSON_ParseWithLength((const char *)b + 8, (size_t)hl);
    if (!h) die_setup("golden header");
    fn(h);
    char *txt = cJSON_PrintUnformatted(h);
    uint64_t nl = strlen(txt);
    size_t total = 8 + nl + (n - 8 - hl);
    uint8_t *o = malloc(total);
    memcpy(o, &nl, 8);
    memcpy(o + 8, txt, nl);
    memcpy(o + 8 + nl, b + 8 + hl, n - 8 - hl);
    put_file(pipe, rel, o, total);
    free(o);
    free(txt);
    cJSON_Delete(h);
    free(b);
}

/* How rewrite_tensors changes the tensor named `name`. */
typedef enum { TW_DROP, TW_I64, TW_HALF_SHAPE, TW_NAN, TW_INF } tw_kind;

/* Rewrite the safetensors file <rel> with st_writer (a consistent file) with one tensor changed. */
static void rewrite_tensors(const char *pipe, const char *rel, const char *name, tw_kind kind) {
    char src[3000], dst[1200];
    snprintf(src, sizeof src, "%s/%s", tiny, rel);
    pipe_file(dst, sizeof dst, pipe, rel);
    unlink(dst);
    st_file *f;
    sd3_err err = {0};
    if (st_open(&f, src, &err)) { printf("setup: %s\n", err.msg); exit(1); }
    st_writer *w = st_writer_new();
    void *extra = NULL;
    for (int i = 0; i < f->n; i++) {
        const st_entry *e = &f->entries[i];
        if (strcmp(e->name, name)) {
            if (st_writer_add(w, e->name, e->dt, e->ndim, e->shape, e->data, &err)) { printf("setup: %s\n", err.msg); exit(1); }
            continue;
        }
        int64_t numel = 1, shape[ST_MAX_RANK];
        for (int d = 0; d < e->ndim; d++) numel *= e->shape[d], shape[d] = e->shape[d];
        switch (kind) {
        case TW_DROP: break;
        case TW_I64: {
            int64_t *v = extra = malloc(sizeof(int64_t) * (size_t)numel);
            for (int64_t k = 0; k < numel; k++) v[k] = k % 3;
            st_writer_add(w, e->name, DT_I64, e->ndim, shape, v, &err);
            break;
        }
        case TW_HALF_SHAPE:
            shape[e->ndim - 1] /= 2;
            st_writer_add(w, e->name, e->dt, e->ndim, shape, e->data, &err);
            break;
        case TW_NAN:
        case TW_INF: {
            float *v = extra = malloc(sizeof(float) * (size_t)numel);
            for (int64_t k = 0; k < numel; k++) v[k] = kind == TW_NAN ? NAN : (k & 1 ? -INFINITY : INFINITY);
            st_writer_add(w, e->name, DT_F32, e->ndim, shape, v, &err);
            break;
        }
        }
    }
    if (st_writer_write(w, dst, &err)) { printf("setup: %s\n", err.msg); exit(1); }
    st_writer_free(w);
    st_close(f);
    free(extra);
}

/* header edits */
static cJSON *first_tensor(cJSON *h) {
    for (cJSON *c = h->child; c; c = c->next)
        if (strcmp(c->string, "__metadata__")) return c;
    return NULL;
}
static void hdr_lying_offsets(cJSON *h) {
    cJSON *off = cJSON_GetObjectItem(first_tensor(h), "data_offsets");
    double b = cJSON_GetArrayItem(off, 0)->valuedouble;
    (void)b;
    cJSON_ReplaceItemInArray(off, 1, cJSON_CreateNumber(1e12));
}
static void hdr_overlap(cJSON *h) {
    /* the second tensor claims the first one's bytes (sizes kept equal by giving it the first's shape) */
    cJSON *a = first_tensor(h), *b = a ? a->next : NULL;
    while (b && !strcmp(b->string, "__metadata__")) b = b->next;
    cJSON_ReplaceItemInObject(b, "shape", cJSON_Duplicate(cJSON_GetObjectItem(a, "shape"), 1));
    cJSON_ReplaceItemInObject(b, "dtype", cJSON_Duplicate(cJSON_GetObjectItem(a, "dtype"), 1));
    cJSON_ReplaceItemInObject(b, "data_offsets", cJSON_Duplicate(cJSON_GetObjectItem(a, "data_offsets"), 1));
}
static void hdr_dtype_i64(cJSON *h) { cJSON_ReplaceItemInObject(first_tensor(h), "dtype", cJSON_CreateString("I64")); }
static void hdr_bad_dtype(cJSON *h) { cJSON_ReplaceItemInObject(first_tensor(h), "dtype", cJSON_CreateString("F33")); }
static void hdr_neg_dim(cJSON *h) {
    cJSON *s = cJSON_GetObjectItem(first_tensor(h), "shape");
    cJSON_ReplaceItemInArray(s, 0, cJSON_CreateNumber(-32));
}
static void hdr_huge_dims(cJSON *h) {
    cJSON *s = cJSON_CreateIntArray((const int[]){65536, 65536, 65536, 65536}, 4);
    cJSON_ReplaceItemInObject(first_tensor(h), "shape", s);
}
static void hdr_dup_name(cJSON *h) {
    cJSON *a = first_tensor(h);
    cJSON *b = a->next;
    free(b->string);
    b->string = strdup(a->string);
}

/* ---- small file makers --------------------------------------------------------------------------- */

static void write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f)) die_setup(path);
}

static uint32_t crc32_png(const uint8_t *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1)));
    }
    return c ^ 0xFFFFFFFFu;
}

/* A PNG signature + IHDR claiming w x h (RGB 8-bit) + an empty IDAT + IEND: only the header is real. */
static size_t png_header_only(uint8_t *o, uint32_t w, uint32_t h) {
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    size_t n = 0;
    memcpy(o, sig, 8);
    n = 8;
    uint8_t ihdr[17] = {'I', 'H', 'D', 'R', (uint8_t)(w >> 24), (uint8_t)(w >> 16), (uint8_t)(w >> 8), (uint8_t)w,
                        (uint8_t)(h >> 24), (uint8_t)(h >> 16), (uint8_t)(h >> 8), (uint8_t)h, 8, 2, 0, 0, 0};
    const uint8_t len13[4] = {0, 0, 0, 13};
    memcpy(o + n, len13, 4);
    memcpy(o + n + 4, ihdr, 17);
    uint32_t c = crc32_png(ihdr, 17);
    uint8_t cb[4] = {(uint8_t)(c >> 24), (uint8_t)(c >> 16), (uint8_t)(c >> 8), (uint8_t)c};
    memcpy(o + n + 21, cb, 4);
    n += 25;
    static const uint8_t idat_iend[] = {0, 0, 0, 0, 'I', 'D', 'A', 'T', 0x35, 0xAF, 0x06, 0x1E,
                                        0, 0, 0, 0, 'I', 'E', 'N', 'D', 0xAE, 0x42, 0x60, 0x82};
    memcpy(o + n, idat_iend, sizeof idat_iend);
    return n + sizeof idat_iend;
}

/* A small JPEG-looking file whose DHT segment declares 16 x 255 codes: stb_image 2.27 writes past
 * stbi__huffman.size[257] on it (found by fuzz_image; fuzz/jpeg_guard.h). */
static size_t jpeg_bad_dht(uint8_t *o) {
    size_t n = 0;
    o[n++] = 0xFF; o[n++] = 0xD8;
    o[n++] = 0xFF; o[n++] = 0xC4;
    size_t L = 2 + 17 + 16 * 255;
    o[n++] = (uint8_t)(L >> 8); o[n++] = (uint8_t)L;
    o[n++] = 0x13;
    for (int i = 0; i < 16; i++) o[n++] = 255;
    memset(o + n, 0, 16 * 255);
    n += 16 * 255;
    o[n++] = 0xFF; o[n++] = 0xD9;
    return n;
}

/* The same bug through a DHT segment that runs past the end of the file: stb reads zeros after the end,
 * so the last, partial table's counts (ten 0xFF bytes = 2550 codes) still reach stbi__build_huffman;
 * a screen that only checks complete tables misses it (found by fuzz_image after the first fix). */
static size_t jpeg_bad_dht_truncated(uint8_t *o) {
    static const uint8_t b[] = {0xFF, 0xD8, 0xFF, 0xC4, 0x01, 0x00, 0x00,
                                0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF};
    memcpy(o, b, sizeof b);
    return sizeof b;
}

/* ---- base64 (for the T5 charsmap regression case) ------------------------------------------------ */

static const char b64c[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static uint8_t *b64_decode(const char *s, size_t *n) {
    size_t len = strlen(s);
    uint8_t *o = malloc(len / 4 * 3 + 3);
    uint32_t acc = 0;
    int bits = 0;
    *n = 0;
    for (size_t i = 0; i < len; i++) {
        const char *p = strchr(b64c, s[i]);
        if (!p || !s[i]) continue;
        acc = (acc << 6) | (uint32_t)(p - b64c);
        bits += 6;
        if (bits >= 8) { bits -= 8; o[(*n)++] = (uint8_t)(acc >> bits); }
    }
    return o;
}

static char *b64_encode(const uint8_t *b, size_t n) {
    char *o = malloc((n + 2) / 3 * 4 + 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)b[i] << 16 | (i + 1 < n ? (uint32_t)b[i + 1] << 8 : 0) | (i + 2 < n ? b[i + 2] : 0);
        o[k++] = b64c[v >> 18 & 63];
        o[k++] = b64c[v >> 12 & 63];
        o[k++] = i + 1 < n ? b64c[v >> 6 & 63] : '=';
        o[k++] = i + 2 < n ? b64c[v & 63] : '=';
    }
    o[k] = 0;
    return o;
}

/* ================================================================================================== */

/* Damaged model files, through the CLI. */
static void test_model_files(void) {
    const char *p;
    char f[1200];

    p = make_pipe("missing_weights");
    put_file(p, "transformer/diffusion_pytorch_model.safetensors", NULL, 0);
    GEN(p, "-p", "x");
    expect_clean_failure("transformer weights missing", "transformer");

    p = make_pipe("empty_weights");
    put_file(p, "transformer/diffusion_pytorch_model.safetensors", "", 0);
    GEN(p, "-p", "x");
    expect_clean_failure("transformer weights empty", "diffusion_pytorch_model.safetensors");

    p = make_pipe("truncated_weights");
    truncate_file(p, "transformer/diffusion_pytorch_model.safetensors", 300000);
    GEN(p, "-p", "x");
    expect_clean_failure("transformer weights truncated", "diffusion_pytorch_model.safetensors");

    p = make_pipe("truncated_in_header");
    truncate_file(p, "vae/diffusion_pytorch_model.safetensors", 100);
    GEN(p, "-p", "x");
    expect_clean_failure("vae weights cut inside the header", "vae");

    p = make_pipe("corrupt_header_len");
    {
        uint8_t b[64];
        memset(b, 0xFF, 8);
        memset(b + 8, ' ', 56);
        put_file(p, "text_encoder/model.safetensors", b, sizeof b);
    }
    GEN(p, "-p", "x");
    expect_clean_failure("header length 2^64-1", "model.safetensors");

    p = make_pipe("header_not_json");
    {
        const char junk[] = "\x10\0\0\0\0\0\0\0{not json at all";
        put_file(p, "text_encoder_2/model.safetensors", junk, sizeof junk - 1);
    }
    GEN(p, "-p", "x");
    expect_clean_failure("header is not JSON", "text_encoder_2");

    p = make_pipe("lying_offsets");
    edit_header(p, "transformer/diffusion_pytorch_model.safetensors", hdr_lying_offsets);
    GEN(p, "-p", "x");
    expect_clean_failure("data_offsets past the end", "diffusion_pytorch_model.safetensors");

    p = make_pipe("overlap");
    edit_header(p, "transformer/diffusion_pytorch_model.safetensors", hdr_overlap);
    GEN(p, "-p", "x");
    expect_clean_failure("overlapping tensors", "diffusion_pytorch_model.safetensors");

    p = make_pipe("hdr_i64");
    edit_header(p, "transformer/diffusion_pytorch_model.safetensors", hdr_dtype_i64);
    GEN(p, "-p", "x");
    expect_clean_failure("header says I64, sizes disagree", "context_embedder.bias");

    p = make_pipe("hdr_unknown_dtype");
    edit_header(p, "vae/diffusion_pytorch_model.safetensors", hdr_bad_dtype);
    GEN(p, "-p", "x");
    expect_clean_failure("unknown dtype F33", "F33");

    p = make_pipe("hdr_neg_dim");
    edit_header(p, "text_encoder_3/model.safetensors", hdr_neg_dim);
    GEN(p, "-p", "x");
    expect_clean_failure("negative dimension", "text_encoder_3");

    p = make_pipe("hdr_huge_dims");
    edit_header(p, "transformer/diffusion_pytorch_model.safetensors", hdr_huge_dims);
    GEN(p, "-p", "x");
    expect_clean_failure("2^64-element tensor", "context_embedder.bias");

    p = make_pipe("hdr_dup_name");
    edit_header(p, "transformer/diffusion_pytorch_model.safetensors", hdr_dup_name);
    GEN(p, "-p", "x");
    expect_clean_failure("duplicate tensor name", "diffusion_pytorch_model.safetensors");

    p = make_pipe("i64_weights");
    rewrite_tensors(p, "transformer/diffusion_pytorch_model.safetensors", "context_embedder.weight", TW_I64);
    GEN(p, "-p", "x");
    expect_clean_failure("I64 weights", "context_embedder.weight");

    p = make_pipe("wrong_shape");
    rewrite_tensors(p, "transformer/diffusion_pytorch_model.safetensors", "norm_out.linear.weight", TW_HALF_SHAPE);
    GEN(p, "-p", "x");
    expect_clean_failure("misshaped weight", "norm_out.linear.weight");

    p = make_pipe("wrong_shape_t5");
    rewrite_tensors(p, "text_encoder_3/model.safetensors", "encoder.block.0.layer.0.SelfAttention.k.weight", TW_HALF_SHAPE);
    GEN(p, "-p", "x");
    expect_clean_failure("misshaped T5 weight", "SelfAttention.k.weight");

    p = make_pipe("missing_tensor");
    rewrite_tensors(p, "vae/diffusion_pytorch_model.safetensors", "decoder.conv_in.weight", TW_DROP);
    GEN(p, "-p", "x");
    expect_clean_failure("missing VAE tensor", "decoder.conv_in.weight");

    /* NaN / Inf weights load (values are not checked at load), but the run must stop with a clear error
     * at the first non-finite step or decode instead of writing a garbage image */
    p = make_pipe("nan_weights");
    rewrite_tensors(p, "transformer/diffusion_pytorch_model.safetensors", "norm_out.linear.weight", TW_NAN);
    GEN(p, "-p", "x");
    expect_clean_failure("NaN transformer weights", "NaN or infinity");

    p = make_pipe("inf_weights");
    rewrite_tensors(p, "vae/diffusion_pytorch_model.safetensors", "decoder.conv_in.weight", TW_INF);
    GEN(p, "-p", "x");
    expect_clean_failure("Inf VAE weights", "NaN or infinity");

    p = make_pipe("weights_dir");
    put_file(p, "vae/diffusion_pytorch_model.safetensors", NULL, 0);
    pipe_file(f, sizeof f, p, "vae/diffusion_pytorch_model.safetensors");
    mkdir(f, 0700);
    GEN(p, "-p", "x");
    expect_clean_failure("weights path is a directory", "vae");

    p = make_pipe("config_dir");
    put_file(p, "transformer/config.json", NULL, 0);
    pipe_file(f, sizeof f, p, "transformer/config.json");
    mkdir(f, 0700);
    GEN(p, "-p", "x");
    expect_clean_failure("config.json is a directory", "config.json");

    p = make_pipe("config_missing");
    put_file(p, "text_encoder/config.json", NULL, 0);
    GEN(p, "-p", "x");
    expect_clean_failure("text_encoder config.json missing", "text_encoder");

    p = make_pipe("config_garbage");
    put_file(p, "vae/config.json", "{\"in_channels\": 3,", strlen("{\"in_channels\": 3,"));
    GEN(p, "-p", "x");
    expect_clean_failure("vae config.json cut short", "config.json");

    p = make_pipe("config_layers");
    edit_json(p, "transformer/config.json", "num_layers", cJSON_CreateNumber(4));
    GEN(p, "-p", "x");
    expect_clean_failure("config says 4 layers, weights have 3", "transformer_blocks.");

    p = make_pipe("config_huge_int");
    {
        const char cfg[] = "{\"_class_name\": \"SD3Transformer2DModel\", \"num_layers\": 55555555553, \"attention_head_dim\": 8}";
        put_file(p, "transformer/config.json", cfg, sizeof cfg - 1);
    }
    GEN(p, "-p", "x");
    expect_clean_failure("num_layers beyond int (json_util int cast)", "num_layers");

    /* regressions (fuzz_config): vae config values at int's edge */
    p = make_pipe("vae_layers_intmax");
    edit_json(p, "vae/config.json", "layers_per_block", cJSON_CreateNumber(2147483647.0));
    GEN(p, "-p", "x");
    expect_clean_failure("vae layers_per_block 2^31-1 (overflow in +1)", "layers_per_block");

    p = make_pipe("vae_sample_size_huge");
    {   /* [1e10, 1e10]: beyond int (cJSON's int arrays cannot hold it: write the text) */
        size_t n;
        uint8_t *b = read_tiny("vae/config.json", &n);
        cJSON *j = cJSON_ParseWithLength((const char *)b, n);
        cJSON_DeleteItemFromObject(j, "sample_size");
        char *t = cJSON_PrintUnformatted(j);
        char *t2 = malloc(strlen(t) + 64);
        snprintf(t2, strlen(t) + 64, "{\"sample_size\": [1e10, 1e10], %s", t + 1);
        put_file(p, "vae/config.json", t2, strlen(t2));
        free(t2);
        free(t);
        cJSON_Delete(j);
        free(b);
    }
    GEN(p, "-p", "x");
    expect_clean_failure("vae sample_size [1e10, 1e10] (unchecked cast)", "sample_size");

    p = make_pipe("scheduler_bad_shift");
    {
        const char cfg[] = "{\"_class_name\": \"FlowMatchEulerDiscreteScheduler\", \"num_train_timesteps\": 1000, \"shift\": -3.0}";
        put_file(p, "scheduler/scheduler_config.json", cfg, sizeof cfg - 1);
    }
    GEN(p, "-p", "x");
    expect_clean_failure("scheduler shift -3", "shift");

    p = make_pipe("index_missing");
    put_file(p, "model_index.json", NULL, 0);
    GEN(p, "-p", "x");
    expect_clean_failure("model_index.json missing", "model_index.json");

    p = make_pipe("index_empty");
    put_file(p, "model_index.json", "", 0);
    GEN(p, "-p", "x");
    expect_clean_failure("model_index.json empty", "model_index.json");

    p = make_pipe("index_array");
    put_file(p, "model_index.json", "[1, 2, 3]", 9);
    GEN(p, "-p", "x");
    expect_clean_failure("model_index.json is an array", "model_index.json");

    p = make_pipe("index_traversal");
    {
        const char idx[] = "{\"_class_name\": \"StableDiffusion3Pipeline\", \"../../etc\": [\"diffusers\", \"AutoencoderKL\"]}";
        put_file(p, "model_index.json", idx, sizeof idx - 1);
    }
    GEN(p, "-p", "x");
    expect_clean_failure("component name with ../", "../../etc");

    p = make_pipe("vocab_missing");
    put_file(p, "tokenizer/vocab.json", NULL, 0);
    GEN(p, "-p", "x");
    expect_clean_failure("tokenizer vocab.json missing", "vocab.json");

    p = make_pipe("merges_garbage");
    put_file(p, "tokenizer_2/merges.txt", "#version: 0.2\nonly_one_part\n", strlen("#version: 0.2\nonly_one_part\n"));
    GEN(p, "-p", "x");
    expect_no_crash("merges.txt with a malformed line");

    p = make_pipe("spiece_truncated");
    truncate_file(p, "tokenizer_3/spiece.model", 400000);
    GEN(p, "-p", "x");
    expect_clean_failure("spiece.model truncated", "spiece.model");

    p = make_pipe("tokenizer_json_garbage");
    put_file(p, "tokenizer_3/spiece.model", NULL, 0);
    put_file(p, "tokenizer_3/tokenizer.json", "{\"model\": {\"type\": \"BPE\"}}", 26);
    GEN(p, "-p", "x");
    expect_clean_failure("tokenizer.json of the wrong model type", "tokenizer.json");

    /* a model path that is a file, but no checkpoint */
    snprintf(f, sizeof f, "%s/empty.safetensors", tmpdir);
    write_file(f, "", 0);
    GEN(f, "-p", "x");
    expect_clean_failure("-m an empty .safetensors", "empty.safetensors");

    snprintf(f, sizeof f, "%s/notes.txt", tmpdir);
    write_file(f, "hello\n", 6);
    GEN(f, "-p", "x");
    expect_clean_failure("-m a text file", "notes.txt");

    snprintf(f, sizeof f, "%s/emptydir", tmpdir);
    mkdir(f, 0700);
    GEN(f, "-p", "x");
    expect_clean_failure("-m a folder without model_index.json", "emptydir");

    {
        char single[3000], cut[1200];
        snprintf(single, sizeof single, "%s/tiny-sd3-single-file/sd3_tiny.safetensors", golden);
        snprintf(cut, sizeof cut, "%s/single_cut.safetensors", tmpdir);
        sd3_err err = {0};
        size_t n;
        char *b = file_read_all(single, 64u << 20, &n, &err);
        if (b) {
            write_file(cut, b, n / 2);
            free(b);
            GEN(cut, "-p", "x");
            expect_clean_failure("single-file checkpoint truncated", "single_cut.safetensors");
        } else {
            CHECK(0, "%s", err.msg);
        }
    }
}

/* Latents files given with --latents. */
static void test_latents_files(void) {
    char f[1200];
    sd3_err err = {0};
    int64_t shape[4] = {1, 16, 8, 8};
    float v[16 * 64];
    /* NaN-filled latents */
    for (int i = 0; i < 16 * 64; i++) v[i] = NAN;
    snprintf(f, sizeof f, "%s/nan_latents.safetensors", tmpdir);
    st_writer *w = st_writer_new();
    st_writer_add(w, "latents", DT_F32, 4, shape, v, &err);
    st_writer_write(w, f, &err);
    st_writer_free(w);
    GEN(tiny, "-p", "x", "--latents", f);
    expect_clean_failure("NaN latents", "NaN");

    /* wrong shape (a 32x32 latent for a 64x64 image) */
    int64_t big[4] = {1, 16, 4, 4};
    for (int i = 0; i < 16 * 16; i++) v[i] = 0.5f;
    snprintf(f, sizeof f, "%s/small_latents.safetensors", tmpdir);
    w = st_writer_new();
    st_writer_add(w, "latents", DT_F32, 4, big, v, &err);
    st_writer_write(w, f, &err);
    st_writer_free(w);
    GEN(tiny, "-p", "x", "--latents", f);
    expect_clean_failure("latents of the wrong shape", "shape");

    /* integer latents */
    int64_t iv[16 * 64] = {0};
    snprintf(f, sizeof f, "%s/int_latents.safetensors", tmpdir);
    w = st_writer_new();
    st_writer_add(w, "latents", DT_I64, 4, shape, iv, &err);
    st_writer_write(w, f, &err);
    st_writer_free(w);
    GEN(tiny, "-p", "x", "--latents", f);
    expect_clean_failure("I64 latents", "latents");

    /* no tensor called latents */
    snprintf(f, sizeof f, "%s/other_latents.safetensors", tmpdir);
    w = st_writer_new();
    st_writer_add(w, "noise", DT_F32, 4, shape, v, &err);
    st_writer_write(w, f, &err);
    st_writer_free(w);
    GEN(tiny, "-p", "x", "--latents", f);
    expect_clean_failure("no 'latents' tensor", "latents");

    /* garbage */
    snprintf(f, sizeof f, "%s/garbage_latents.safetensors", tmpdir);
    write_file(f, "garbage garbage garbage", 23);
    GEN(tiny, "-p", "x", "--latents", f);
    expect_clean_failure("latents file is garbage", "garbage_latents.safetensors");

    /* a directory */
    GEN(tiny, "-p", "x", "--latents", tmpdir);
    expect_clean_failure("latents path is a directory", tmpdir);
}

/* Generation parameters out of range (test_cli covers -W 100, -H 0, --steps 0/abc, --cfg nan, --strength
 * 0/1.5, --seed -3, --batch 0, --slg-scale without layers). */
static void test_parameters(void) {
    GEN(tiny, "-p", "x", "-W", "100000");
    expect_clean_failure("width 100000", "100000");
    SD3("generate", "-m", tiny, "-p", "x", "-W", "16384", "-H", "16384", "--steps", "1", "-o", outpng);
    expect_clean_failure("16384x16384", "16384");
    GEN(tiny, "-p", "x", "-W", "-64");
    expect_clean_failure("negative width", "-64");
    GEN(tiny, "-p", "x", "--steps", "100001");
    expect_clean_failure("steps 100001", "--steps");
    GEN(tiny, "-p", "x", "--steps", "99999999999999999999");
    expect_clean_failure("steps beyond long", "--steps");
    GEN(tiny, "-p", "x", "--cfg", "inf");
    expect_clean_failure("cfg inf", "--cfg");
    GEN(tiny, "-p", "x", "--cfg", "1e39");
    expect_clean_failure("cfg 1e39 (beyond float)", "--cfg");
    GEN(tiny, "-p", "x", "--cfg", "-2");
    expect_clean_failure("cfg -2", "cfg");
    GEN(tiny, "-p", "x", "--shift", "-1");
    expect_clean_failure("shift -1", "shift");
    GEN(tiny, "-p", "x", "--shift", "nan");
    expect_clean_failure("shift nan", "--shift");
    GEN(tiny, "-p", "x", "--seed", "18446744073709551616");
    expect_clean_failure("seed 2^64", "--seed");
    GEN(tiny, "-p", "x", "--seed", "12abc");
    expect_clean_failure("seed with junk", "--seed");
    GEN(tiny, "-p", "x", "--threads", "0");
    expect_clean_failure("threads 0", "--threads");
    GEN(tiny, "-p", "x", "--threads", "100000");
    expect_clean_failure("threads 100000", "--threads");
    GEN(tiny, "-p", "x", "--threads", "-4");
    expect_clean_failure("threads -4", "--threads");
    GEN(tiny, "-p", "x", "--batch", "1000");
    expect_clean_failure("batch 1000", "--batch");
    GEN(tiny, "-p", "x", "--max-sequence-length", "513");
    expect_clean_failure("max sequence length 513", "--max-sequence-length");
    GEN(tiny, "-p", "x", "--clip-skip", "-1");
    expect_clean_failure("clip skip -1", "--clip-skip");
    GEN(tiny, "-p", "x", "--sigmas", "1,nan");
    expect_clean_failure("sigmas with nan", "--sigmas");
    GEN(tiny, "-p", "x", "--sigmas", "0.5,0.9");
    expect_clean_failure("sigmas increasing", "sigmas");
    GEN(tiny, "-p", "x", "--skip-layers", "99", "--slg-scale", "2");
    expect_clean_failure("skip layer 99 of a 3-layer model", "99");
    GEN(tiny, "-p", "x", "--slg-start", "0.5", "--slg-stop", "0.1", "--skip-layers", "1", "--slg-scale", "2");
    expect_clean_failure("slg start after stop", "start");
    GEN(tiny, "-p", "x", "--steps");
    expect_clean_failure("--steps without a value", "--steps");
    GEN(tiny, "-p", "\xff\xfe not utf-8");
    expect_clean_failure("prompt not UTF-8", "UTF-8");
    /* long prompts are legal (CLIP truncates to 77 tokens, T5 to --max-sequence-length): one 120,000-byte
     * word and 40,000 CJK characters must go through without a crash or a quadratic blow-up */
    {
        char *big = malloc(130000);
        memset(big, 'x', 120000);
        big[120000] = 0;
        GEN(tiny, "-p", big);
        CHECK(expect_no_crash("one 120,000-byte word") && R.rc == 0, "long word: %s", R.out);
        for (int i = 0; i < 40000; i++) memcpy(big + 3 * i, "\xe4\xb8\x80", 3);
        big[120000] = 0;
        GEN(tiny, "-p", big);
        CHECK(expect_no_crash("40,000 CJK characters") && R.rc == 0, "CJK prompt: %s", R.out);
        free(big);
    }
    /* a prompt file over the 1 MB limit */
    char f[1200];
    snprintf(f, sizeof f, "%s/big_prompt.txt", tmpdir);
    {
        size_t n = (1u << 20) + 10;
        char *b = malloc(n);
        memset(b, 'a', n);
        write_file(f, b, n);
        free(b);
    }
    GEN(tiny, "-f", f);
    expect_clean_failure("prompt file over 1 MB", "big_prompt.txt");
    GEN(tiny, "-f", tmpdir);
    expect_clean_failure("prompt file is a directory", tmpdir);
}

/* Init images (--init-img) and masks. */
static void test_images(void) {
    char f[1200];
    uint8_t b[8192];
    size_t n;

    n = png_header_only(b, 0, 0);
    snprintf(f, sizeof f, "%s/zero.png", tmpdir);
    write_file(f, b, n);
    GEN(tiny, "-p", "x", "--init-img", f);
    expect_clean_failure("0x0 PNG", "zero.png");

    /* 100000 x 100000: must be refused from the header, naming the size and the limit, before any
     * allocation (the file has no pixel data, so a decode attempt would fail differently) */
    n = png_header_only(b, 100000, 100000);
    snprintf(f, sizeof f, "%s/huge.png", tmpdir);
    write_file(f, b, n);
    GEN(tiny, "-p", "x", "--init-img", f);
    expect_clean_failure("100000x100000 PNG", "100000x100000");

    n = png_header_only(b, 16385, 16);
    snprintf(f, sizeof f, "%s/wide.png", tmpdir);
    write_file(f, b, n);
    GEN(tiny, "-p", "x", "--init-img", f);
    expect_clean_failure("16385-pixel-wide PNG", "16385x16");

    n = png_header_only(b, 64, 64);   /* a valid header, no pixel data */
    snprintf(f, sizeof f, "%s/nodata.png", tmpdir);
    write_file(f, b, n);
    GEN(tiny, "-p", "x", "--init-img", f);
    expect_clean_failure("PNG without pixel data", "nodata.png");

    snprintf(f, sizeof f, "%s/empty.png", tmpdir);
    write_file(f, "", 0);
    GEN(tiny, "-p", "x", "--init-img", f);
    expect_clean_failure("empty image file", "empty.png");

    GEN(tiny, "-p", "x", "--init-img", tmpdir);
    expect_clean_failure("init image is a directory", tmpdir);

    snprintf(f, sizeof f, "%s/fake.jpg", tmpdir);
    write_file(f, "\xFF\xD8\xFF\xE0 this is not really a jpeg", strlen("\xFF\xD8\xFF\xE0 this is not really a jpeg"));
    GEN(tiny, "-p", "x", "--init-img", f);
    expect_clean_failure("JPEG signature, garbage after", "fake.jpg");

    /* regression (fuzz_image): stb_image 2.27's DHT overflow must end as a clean error */
    n = jpeg_bad_dht(b);
    snprintf(f, sizeof f, "%s/dht.jpg", tmpdir);
    write_file(f, b, n);
    GEN(tiny, "-p", "x", "--init-img", f);
    expect_clean_failure("JPEG with 4080 Huffman codes", "Huffman");
    n = jpeg_bad_dht_truncated(b);
    snprintf(f, sizeof f, "%s/dht_cut.jpg", tmpdir);
    write_file(f, b, n);
    GEN(tiny, "-p", "x", "--init-img", f);
    expect_clean_failure("JPEG whose DHT runs past the end (2550 codes)", "Huffman");
    b[0] = 0xFF;   /* FF FF D8 ...: stb skips fill bytes before SOI, so this is a JPEG to it */
    n = jpeg_bad_dht(b + 1) + 1;
    snprintf(f, sizeof f, "%s/dht_fill.jpg", tmpdir);
    write_file(f, b, n);
    GEN(tiny, "-p", "x", "--init-img", f);
    expect_clean_failure("JPEG with a fill byte before SOI and 4080 Huffman codes", "Huffman");

    /* a PNM whose maxval overflows int: UB in stb 2.27's PNM reader (fuzz_image; only an instrumented stb
     * sees it), refused either way */
    snprintf(f, sizeof f, "%s/maxval.ppm", tmpdir);
    write_file(f, "P6\n3 2\n11111111111111111111\n\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 46);
    GEN(tiny, "-p", "x", "--init-img", f);
    expect_clean_failure("PPM with a 20-digit maxval", "maxval.ppm");

    /* an odd-sized image with no -W/-H: its size is not a multiple of 16 */
    {
        image im = {70, 50, calloc(70 * 50 * 3, 1)};
        sd3_err err = {0};
        snprintf(f, sizeof f, "%s/odd.png", tmpdir);
        CHECK(image_write_png(&im, f, NULL, 0, &err) == SD3_OK, "%s", err.msg);
        free(im.rgb);
        SD3("generate", "-m", tiny, "-p", "x", "--steps", "1", "--init-img", f, "-o", outpng);
        expect_clean_failure("70x50 init image", "70x50");
    }

    snprintf(f, sizeof f, "%s/garbage_mask.png", tmpdir);
    write_file(f, "not a mask", 10);
    GEN(tiny, "-p", "x", "--mask", f);
    expect_clean_failure("mask without init image", "mask");

    /* sd3 info on files that are not PNGs with text */
    SD3("info", tmpdir);
    expect_clean_failure("info on a directory", tmpdir);
    snprintf(f, sizeof f, "%s/dht.jpg", tmpdir);
    SD3("info", f);
    expect_clean_failure("info on a JPEG", "dht.jpg");
    n = png_header_only(b, 100000, 100000);
    snprintf(f, sizeof f, "%s/huge.png", tmpdir);
    SD3("info", f);
    expect_no_crash("info on a header-only PNG");
    /* regression (fuzz_image, out-of-memory): a 389-byte PNG whose tEXt chunk claims 2,113,929,223 bytes
     * made `sd3 info` (libpng, no chunk size limit) allocate and touch 2 GB; reading text chunks must stay
     * within a bounded size (libpng's png_set_chunk_malloc_max) */
    {
        size_t k = png_header_only(b, 8, 8) - 24;   /* signature + IHDR */
        static const uint8_t text[] = {0x7E, 0x00, 0x00, 0x00, 't', 'E', 'X', 't', 's', 'e', 'e', 'd', 0, '4', '2'};
        memcpy(b + k, text, sizeof text);
        k += sizeof text;
        snprintf(f, sizeof f, "%s/textbomb.png", tmpdir);
        write_file(f, b, k);
        SD3("info", f);
        expect_clean_failure("info on a PNG whose tEXt claims 2 GB", "textbomb.png");
        CHECK(R.maxrss_kb < 256 * 1024, "sd3 info on a %zu-byte PNG peaked at %ld MB", k, R.maxrss_kb / 1024);
    }
}

/* Outputs: unwritable, directories, a full disk. */
static void test_outputs(void) {
    char f[1200];
    GEN(tiny, "-p", "x", "--save-latents", outdir);
    expect_clean_failure("--save-latents is a directory", "is a directory");

    SD3("generate", "-m", tiny, "-p", "x", "-W", "64", "-H", "64", "--steps", "1", "-o", "/dev/null/x.png");
    expect_clean_failure("output folder is a device", "/dev/null");

    snprintf(f, sizeof f, "%s/out%%s.png", outdir);
    SD3("generate", "-m", tiny, "-p", "x", "-W", "64", "-H", "64", "--steps", "1", "-o", f);
    expect_clean_failure("output pattern with %s", "%d");

    {
        char *longp = malloc(6000);
        snprintf(longp, 6000, "%s/", outdir);
        size_t l = strlen(longp);
        memset(longp + l, 'a', 5000 - l);
        strcpy(longp + 5000, ".png");
        SD3("generate", "-m", tiny, "-p", "x", "-W", "64", "-H", "64", "--steps", "1", "-o", longp);
        expect_clean_failure("output path of 5004 characters", "--output");
        free(longp);
    }

    /* a full disk: 4 KB per file is less than a 64x64 PNG (~12 KB) and the latents (4 KB + header) */
    SD3_FSIZE(4096, "generate", "-m", tiny, "-p", "x", "-W", "64", "-H", "64", "--steps", "1", "--seed", "1", "-o", outpng);
    expect_clean_failure("disk full writing the PNG", "out.png");
    snprintf(f, sizeof f, "%s/lat.safetensors", outdir);
    SD3_FSIZE(4096, "generate", "-m", tiny, "-p", "x", "-W", "64", "-H", "64", "--steps", "1", "--seed", "1", "-o", outpng,
              "--save-latents", f);
    expect_clean_failure("disk full writing the latents", "lat.safetensors");
}

/* regression (fuzz_t5_tok_load): a tokenizer.json whose charsmap maps a character to a broken UTF-8
 * sequence ("A" -> 0xF0 here) must be refused at load or handled at encode, never read or written
 * outside viterbi()'s arrays (ASan: heap-buffer-overflow in t5_tok.c viterbi; a plain build segfaults).
 * Runs in a child process (it returns the number of failed checks as its exit status). */
static int t5_bad_charsmap_case(void) {
    sd3_err err = {0};
    t5_tok tt;
    int fails = 0;
    char src[3000];
    snprintf(src, sizeof src, "%s/tokenizer_3/tokenizer.json", tiny);
    cJSON *j = json_load_file(src, &err);
    cJSON *norms = j ? cJSON_GetObjectItem(cJSON_GetObjectItem(j, "normalizer"), "normalizers") : NULL;
    cJSON *pc = norms ? cJSON_GetArrayItem(norms, 0) : NULL;
    cJSON *cm = pc ? cJSON_GetObjectItem(pc, "precompiled_charsmap") : NULL;
    if (!cJSON_IsString(cm)) { printf("golden tokenizer.json has no precompiled_charsmap\n"); return 1; }
    size_t n;
    uint8_t *blob = b64_decode(cm->valuestring, &n);
    uint32_t ts;
    memcpy(&ts, blob, 4);
    for (size_t i = 4 + (size_t)ts; i < n; i++)
        if (blob[i] == 'A') blob[i] = 0xF0;
    char *enc = b64_encode(blob, n);
    cJSON_SetValuestring(cm, enc);
    free(enc);
    free(blob);
    char dir[1200], p[1300];
    snprintf(dir, sizeof dir, "%s/t5_badmap", tmpdir);
    mkdir(dir, 0700);
    snprintf(p, sizeof p, "%s/tokenizer.json", dir);
    char *txt = cJSON_PrintUnformatted(j);
    write_file(p, txt, strlen(txt));
    free(txt);
    cJSON_Delete(j);
    sd3_status s = t5_tok_load_from(&tt, dir, T5_SRC_JSON, &err);
    printf("T5 tokenizer.json with a broken charsmap: load %s\n", s == SD3_OK ? "accepted it" : err.msg);
    if (s == SD3_OK) {
        static const char *texts[] = {"\xef\xbc\xa1", "\xef\xbc\xa1 fullwidth A", "x\xef\xbc\xa1\xef\xbc\xa1y",
                                      "caf\xc3\xa9 \xef\xbc\xa1\xe2\x91\xa0 \xe6\x97\xa5  two  spaces "};
        for (int k = 0; k < 4; k++) {
            int64_t ids[32], mask[32];
            memset(&err, 0, sizeof err);
            s = t5_tok_encode(&tt, texts[k], 32, ids, mask, &err);
            if (s != SD3_OK && !err.msg[0]) { printf("encode failed without a message\n"); fails++; }
        }
        t5_tok_free(&tt);
    } else if (!strstr(err.msg, "tokenizer.json")) {
        printf("load error does not name the file: %s\n", err.msg);
        fails++;
    }
    return fails;
}

/* Run fn in a child: 1 if it exited 0 (no crash, no failed check), else 0 with the reason printed. */
static int in_child(const char *name, int (*fn)(void)) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        int r = fn();
        fflush(stdout);
        _exit(r ? 1 : 0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    if (WIFSIGNALED(st)) printf("[%s] crashed with signal %d\n", name, WTERMSIG(st));
    return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

/* The same kinds of input straight through the library API. */
static void test_library(void) {
    sd3_err err = {0};
    char f[1200];
    st_file *st = NULL;

    CHECK(st_open(&st, "/nonexistent/x.safetensors", &err) == SD3_ERR_NOT_FOUND && !st && strstr(err.msg, "/nonexistent/x.safetensors"),
          "st_open missing: %s", err.msg);
    memset(&err, 0, sizeof err);
    CHECK(st_open(&st, tmpdir, &err) != SD3_OK && !st && strstr(err.msg, tmpdir), "st_open dir: %s", err.msg);
    {
        uint8_t b[16] = {0};
        for (size_t n = 0; n <= 16; n += 4) {
            memset(&err, 0, sizeof err);
            CHECK(st_open_memory(&st, b, n, "mem", &err) != SD3_OK && !st && strstr(err.msg, "mem"), "%zu bytes: %s", n, err.msg);
        }
        uint64_t hl = (uint64_t)1 << 62;
        memcpy(b, &hl, 8);
        memset(&err, 0, sizeof err);
        CHECK(st_open_memory(&st, b, 16, "mem", &err) != SD3_OK && err.msg[0], "header 2^62: %s", err.msg);
        /* hostile header: a million-deep nesting must not blow the stack */
        size_t n = 8 + 2000000;
        uint8_t *deep = malloc(n);
        uint64_t dl = n - 8;
        memcpy(deep, &dl, 8);
        for (size_t i = 0; i < dl; i++) deep[8 + i] = i < dl / 2 ? '[' : ']';
        memset(&err, 0, sizeof err);
        CHECK(st_open_memory(&st, deep, n, "deep", &err) != SD3_OK && err.msg[0], "deep nesting: %s", err.msg);
        free(deep);
    }

    /* images */
    image im;
    memset(&err, 0, sizeof err);
    CHECK(image_load(&im, tmpdir, &err) != SD3_OK && strstr(err.msg, "not a regular file"), "image dir: %s", err.msg);
    snprintf(f, sizeof f, "%s/huge.png", tmpdir);
    memset(&err, 0, sizeof err);
    CHECK(image_load(&im, f, &err) != SD3_OK && strstr(err.msg, "100000x100000") && strstr(err.msg, "limit"), "huge image: %s", err.msg);
    snprintf(f, sizeof f, "%s/dht.jpg", tmpdir);
    memset(&err, 0, sizeof err);
    CHECK(image_load(&im, f, &err) != SD3_OK && strstr(err.msg, "dht.jpg") && strstr(err.msg, "Huffman"), "DHT jpeg: %s", err.msg);
    snprintf(f, sizeof f, "%s/dht_cut.jpg", tmpdir);
    memset(&err, 0, sizeof err);
    CHECK(image_load(&im, f, &err) != SD3_OK && strstr(err.msg, "Huffman"), "truncated DHT jpeg: %s", err.msg);
    /* regression (fuzz_image): a 24-byte 16-bit PGM makes stb 2.27 read past its heap buffer
     * (stbi__convert_16_to_8); it must be refused before stb decodes it */
    {
        static const uint8_t pgm16[24] = {'P', '5', '\n', '3', 0x0c, 0x0c, 0x0c, '6', 0x0c, 0x0c, 0x0c, 0x0c, 0x0c, 0x0c,
                                          ' ', '2', '2', '2', '5', '2', 0x0e, 0x0f, 0x10, 0x11};
        snprintf(f, sizeof f, "%s/pgm16.pgm", tmpdir);
        write_file(f, pgm16, sizeof pgm16);
        memset(&err, 0, sizeof err);
        sd3_status s16 = image_load(&im, f, &err);
        CHECK(s16 != SD3_OK && strstr(err.msg, "pgm16.pgm"), "16-bit PGM of 6 bytes of data was decoded (%dx%d)", im.w, im.h);
        if (s16 == SD3_OK) image_free(&im);
    }

    /* model store */
    model_store *ms = NULL;
    snprintf(f, sizeof f, "%s/notes.txt", tmpdir);
    memset(&err, 0, sizeof err);
    CHECK(ms_open(&ms, f, &err) != SD3_OK && !ms && strstr(err.msg, "notes.txt"), "ms_open text file: %s", err.msg);

    /* tokenizers from broken folders */
    clip_tok ct;
    memset(&err, 0, sizeof err);
    CHECK(clip_tok_load(&ct, tmpdir, &err) != SD3_OK && strstr(err.msg, "vocab.json"), "clip_tok_load empty: %s", err.msg);
    t5_tok tt;
    memset(&err, 0, sizeof err);
    CHECK(t5_tok_load(&tt, tmpdir, &err) != SD3_OK && err.msg[0], "t5_tok_load empty: %s", err.msg);

    /* regression (fuzz_config): JSON numbers beyond int must be refused by name, not cast (UB) */
    {
        cJSON *j = cJSON_Parse("{\"num_layers\": 55555555553, \"attention_head_dim\": 8, \"num_attention_heads\": 4,"
                               " \"caption_projection_dim\": 32}");
        mmdit_config mc;
        memset(&err, 0, sizeof err);
        CHECK(mmdit_config_from_json(&mc, j, "cfg", &err) != SD3_OK && strstr(err.msg, "num_layers"), "num_layers 5.5e10: %s", err.msg);
        cJSON_Delete(j);
        j = cJSON_Parse("{\"num_layers\": 3, \"dual_attention_layers\": [1e300]}");
        memset(&err, 0, sizeof err);
        CHECK(mmdit_config_from_json(&mc, j, "cfg", &err) != SD3_OK && strstr(err.msg, "dual_attention_layers"), "dual 1e300: %s", err.msg);
        cJSON_Delete(j);
        j = cJSON_Parse("{\"hidden_size\": -1e20}");
        int v = 0;
        memset(&err, 0, sizeof err);
        CHECK(json_req_int(j, "hidden_size", &v, "cfg", &err) != SD3_OK && strstr(err.msg, "hidden_size"), "req_int -1e20: %s", err.msg);
        cJSON_Delete(j);
    }

    CHECK(in_child("T5 charsmap with broken UTF-8", t5_bad_charsmap_case), "T5 tokenizer with a broken charsmap crashed or failed");
}

int main(int argc, char **argv) {
    (void)argc;
    snprintf(sd3_bin, sizeof sd3_bin, "%s", argv[0]);
    char *slash = strrchr(sd3_bin, '/');
    if (slash) *slash = 0; else strcpy(sd3_bin, ".");
    strcat(sd3_bin, "/../sd3");
    const char *g = getenv("SD3_GOLDEN");
    snprintf(golden, sizeof golden, "%s", g ? g : "../shared/golden");
    {   /* absolute paths: the damaged copies symlink into the golden folder */
        char *abs = realpath(golden, NULL);
        if (abs) { snprintf(golden, sizeof golden, "%s", abs); free(abs); }
    }
    snprintf(tiny, sizeof tiny, "%s/tiny-sd3", golden);
    if (access(sd3_bin, X_OK) != 0) { printf("no sd3 binary at %s\n", sd3_bin); return 1; }
    snprintf(tmpdir, sizeof tmpdir, "/tmp/sd3c_bad_XXXXXX");
    if (!mkdtemp(tmpdir)) { printf("mkdtemp failed\n"); return 1; }
    snprintf(outdir, sizeof outdir, "%s/o", tmpdir);
    mkdir(outdir, 0700);
    snprintf(outpng, sizeof outpng, "%s/out.png", outdir);

    /* the baseline works, so every failure below is the damage's doing */
    GEN(tiny, "-p", "x");
    CHECK(R.rc == 0, "baseline generate failed: %s", R.out);
    clean_outdir();

    test_parameters();
    test_images();
    test_outputs();
    test_latents_files();
    test_model_files();
    test_library();

    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd)) {}
    TEST_MAIN_END("test_bad_inputs");
}

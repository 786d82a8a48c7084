/* quant_dir.c — quant_path: `sd3 quantize` over a file, a component folder or a whole pipeline folder
 * (see quant.h). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "quant/quant.h"

static int is_dir(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}
static int exists(const char *p) {
    struct stat sb;
    return lstat(p, &sb) == 0;
}
static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

/* Copy a regular file byte for byte (through a temporary name, renamed at the end). */
static sd3_status copy_file(const char *src, const char *dst, sd3_err *err) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", dst, (int)getpid());
    int in = open(src, O_RDONLY), out = -1;
    if (in < 0) return sd3_errf(err, SD3_ERR_IO, "%s: cannot open: %s", src, strerror(errno));
    out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (out < 0) {
        close(in);
        return sd3_errf(err, SD3_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    }
    static char buf[1 << 20];
    sd3_status s = SD3_OK;
    for (;;) {
        ssize_t n = read(in, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) { s = sd3_errf(err, SD3_ERR_IO, "%s: read failed: %s", src, strerror(errno)); break; }
        if (n == 0) break;
        for (ssize_t o = 0; o < n;) {
            ssize_t w = write(out, buf + o, (size_t)(n - o));
            if (w < 0 && errno == EINTR) continue;
            if (w < 0) { s = sd3_errf(err, SD3_ERR_IO, "%s: write failed: %s", tmp, strerror(errno)); break; }
            o += w;
        }
        if (s) break;
    }
    close(in);
    if (close(out) != 0 && !s) s = sd3_errf(err, SD3_ERR_IO, "%s: write failed: %s", tmp, strerror(errno));
    if (!s && rename(tmp, dst) != 0) s = sd3_errf(err, SD3_ERR_IO, "%s: cannot rename: %s", dst, strerror(errno));
    if (s) unlink(tmp);
    return s;
}

/* Whether a safetensors file holds an MMDiT in diffusers or bare original keys (its 2-D weights are Linears). */
static int file_is_mmdit(const char *path) {
    st_file *f = NULL;
    if (st_open(&f, path, NULL) != SD3_OK) return 0;
    int r = st_find(f, "transformer_blocks.0.norm1.linear.weight") || st_find(f, "joint_blocks.0.x_block.attn.qkv.weight") ||
            st_find(f, "joint_blocks.0.x_block.adaLN_modulation.1.weight");
    st_close(f);
    return r;
}

typedef struct { int t5, mm; void (*log)(const char *, void *); void *user; } qopts;

/* One line to the caller's log: "wrote PATH (N tensors quantised)" or "copied PATH" (n < 0). */
static void log_line(const qopts *o, const char *what, const char *path, int n) {
    if (!o->log) return;
    char line[4400];
    if (n >= 0) snprintf(line, sizeof line, "%s %s (%d tensors quantised)", what, path, n);
    else snprintf(line, sizeof line, "%s %s", what, path);
    o->log(line, o->user);
}

/* One .safetensors file: a bare transformer (component 'm', or its keys say so) gets the MMDiT bits on every
 * 2-D weight; component 't' the T5 bits on T5 Linears; otherwise (a single-file checkpoint) both by key. */
static sd3_status do_file(const char *in, const char *out, int component, const qopts *o, sd3_err *err) {
    int mm = component == 'm' || (component == 0 && file_is_mmdit(in)), n = 0;
    int t5 = mm ? 0 : o->t5, mmb = component == 't' ? 0 : o->mm;
    sd3_status s = quant_file(in, out, t5, mmb, mm, &n, err);
    if (!s) log_line(o, "wrote", out, n);
    return s;
}

/* Every file of a folder: .safetensors quantised as component says, other regular files copied,
 * subfolders (copy_only) copied recursively. */
static sd3_status do_dir(const char *in, const char *out, int component, int copy_only, const qopts *o, sd3_err *err) {
    if (mkdir(out, 0755) != 0 && errno != EEXIST) return sd3_errf(err, SD3_ERR_IO, "%s: cannot create folder: %s", out, strerror(errno));
    DIR *d = opendir(in);
    if (!d) return sd3_errf(err, SD3_ERR_IO, "%s: cannot read folder: %s", in, strerror(errno));
    sd3_status s = SD3_OK;
    struct dirent *de;
    while (!s && (de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        char src[4096], dst[4096];
        if (snprintf(src, sizeof src, "%s/%s", in, de->d_name) >= (int)sizeof src ||
            snprintf(dst, sizeof dst, "%s/%s", out, de->d_name) >= (int)sizeof dst) {
            s = sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: path too long", in);
            break;
        }
        if (is_dir(src)) {
            int sub = 0, cp = 1;
            if (!copy_only && !strcmp(de->d_name, "transformer")) sub = 'm', cp = 0;
            if (!copy_only && !strcmp(de->d_name, "text_encoder_3")) sub = 't', cp = 0;
            s = do_dir(src, dst, sub, cp, o, err);
        } else if (!copy_only && ends_with(de->d_name, ".safetensors")) {
            int n = 0;
            s = quant_file(src, dst, component == 't' ? o->t5 : 0, component == 'm' ? o->mm : 0, component == 'm', &n, err);
            if (!s) log_line(o, "wrote", dst, n);
        } else {
            s = copy_file(src, dst, err);
            if (!s) log_line(o, "copied", dst, -1);
        }
    }
    closedir(d);
    return s;
}

sd3_status quant_path(const char *in, const char *out, int t5_bits, int mmdit_bits, int component,
                      void (*log)(const char *line, void *user), void *user, sd3_err *err) {
    if ((t5_bits && t5_bits != 8 && t5_bits != 4) || (mmdit_bits && mmdit_bits != 8 && mmdit_bits != 4))
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "quantize: bits %d / %d (8, 4 or 0 to keep)", t5_bits, mmdit_bits);
    if (exists(out)) return sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: already exists (not overwritten)", out);
    qopts o = {t5_bits, mmdit_bits, log, user};
    if (!is_dir(in)) {
        if (!exists(in)) return sd3_errf(err, SD3_ERR_NOT_FOUND, "%s: no such file or folder", in);
        return do_file(in, out, component, &o, err);
    }
    char p[4096];
    snprintf(p, sizeof p, "%s/model_index.json", in);
    if (exists(p)) return do_dir(in, out, 0, 0, &o, err);   /* a pipeline */
    if (!component) {
        const char *base = strrchr(in, '/');
        base = base ? base + 1 : in;
        if (!strcmp(base, "transformer")) component = 'm';
        else if (!strcmp(base, "text_encoder_3")) component = 't';
        else {   /* from the keys of its first .safetensors file */
            DIR *d = opendir(in);
            struct dirent *de;
            while (d && (de = readdir(d)))
                if (ends_with(de->d_name, ".safetensors")) {
                    snprintf(p, sizeof p, "%s/%s", in, de->d_name);
                    component = file_is_mmdit(p) ? 'm' : 't';
                    break;
                }
            if (d) closedir(d);
        }
    }
    if (!component) return sd3_errf(err, SD3_ERR_NOT_FOUND, "%s: no .safetensors file in the folder", in);
    return do_dir(in, out, component, 0, &o, err);
}

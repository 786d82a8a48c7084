/*
 * fuzz_common.h — helpers shared by the libFuzzer targets in fuzz/: a private temp folder per process
 * (for APIs that read from a path), writing a buffer to a file there, the golden folder, and a check that
 * every failure left a message (the error contract: a status without a message is a bug).
 */
#ifndef SD3_FUZZ_COMMON_H
#define SD3_FUZZ_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "core/core.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* The process's private temp folder (created on first use, removed at exit with its files). */
static char fz_dir_buf[256];
static inline void fz_cleanup(void) {
    if (!fz_dir_buf[0]) return;
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", fz_dir_buf);
    if (system(cmd)) {}
}
static inline const char *fz_dir(void) {
    if (!fz_dir_buf[0]) {
        snprintf(fz_dir_buf, sizeof fz_dir_buf, "/tmp/sd3c_fuzz_XXXXXX");
        if (!mkdtemp(fz_dir_buf)) { perror("mkdtemp"); abort(); }
        atexit(fz_cleanup);
    }
    return fz_dir_buf;
}

/* <temp folder>/<rel> into out. */
static inline void fz_path(char *out, size_t n, const char *rel) { snprintf(out, n, "%s/%s", fz_dir(), rel); }

/* Write size bytes to <temp folder>/<rel> (a folder part must exist); aborts on a write failure (the
 * harness, not the code under test, failed). */
static inline void fz_write(const char *rel, const void *data, size_t size) {
    char p[512];
    fz_path(p, sizeof p, rel);
    FILE *f = fopen(p, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f)) { perror(p); abort(); }
}

/* mkdir <temp folder>/<rel> (fine if it exists). */
static inline void fz_mkdir(const char *rel) {
    char p[512];
    fz_path(p, sizeof p, rel);
    mkdir(p, 0700);
}

/* Read a whole file (for loading fixed inputs at start-up); aborts when it is missing. */
static inline uint8_t *fz_slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "fuzz: cannot read %s (set SD3_GOLDEN)\n", path); abort(); }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)len + 1);
    if (!b || fread(b, 1, (size_t)len, f) != (size_t)len) abort();
    fclose(f);
    b[len] = 0;
    *n = (size_t)len;
    return b;
}

/* The golden folder: $SD3_GOLDEN, else ../shared/golden (relative to the repository root). */
static inline const char *fz_golden(void) {
    const char *g = getenv("SD3_GOLDEN");
    return g && *g ? g : "../shared/golden";
}

/* A failing call must say why: abort (a finding) when status != OK but the message is empty. */
static inline void fz_check_err(sd3_status st, const sd3_err *err, const char *what) {
    if (st != SD3_OK && !err->msg[0]) {
        fprintf(stderr, "fuzz: %s failed with status %d and no message\n", what, (int)st);
        abort();
    }
    if (strlen(err->msg) >= sizeof err->msg) abort();
}

/* A NUL-terminated copy of the input (for parsers that want a C string). */
static inline char *fz_cstr(const uint8_t *data, size_t size) {
    char *s = malloc(size + 1);
    if (!s) abort();
    memcpy(s, data, size);
    s[size] = 0;
    return s;
}

#endif /* SD3_FUZZ_COMMON_H */

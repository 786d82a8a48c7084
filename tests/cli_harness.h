/* cli_harness.h — what the tests that run the sd3 binary share (one copy instead of one per test file):
 * where the binary is, running a command line with its output captured, and small checks on files and
 * messages. Include once, from a test's .c file; it defines static objects. */
#ifndef SD3_TESTS_CLI_HARNESS_H
#define SD3_TESTS_CLI_HARNESS_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

static char sd3_bin[4096], tmpdir[256];

/* sd3_bin = the sd3 next to this test's folder (<build>/tests/test_x -> <build>/sd3). */
static inline void cli_find_sd3(const char *argv0) {
    snprintf(sd3_bin, sizeof sd3_bin, "%s", argv0);
    char *slash = strrchr(sd3_bin, '/');
    if (slash) *slash = 0; else strcpy(sd3_bin, ".");
    strcat(sd3_bin, "/../sd3");
}

/* Run a shell command line, capturing stderr+stdout into out (via tmpdir/out.txt); returns the exit status. */
static inline int run(char *out, size_t n, const char *fmt, ...) {
    char cmd[16384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    char full[17000];
    snprintf(full, sizeof full, "%s > %s/out.txt 2>&1", cmd, tmpdir);
    int st = system(full);
    char p[512];
    snprintf(p, sizeof p, "%s/out.txt", tmpdir);
    FILE *f = fopen(p, "r");
    size_t k = f ? fread(out, 1, n - 1, f) : 0;
    if (f) fclose(f);
    out[k] = 0;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* Whether a path exists. */
static inline int exists(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0;
}

/* Count the lines of s (an error must be one line). */
static inline int lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

#endif

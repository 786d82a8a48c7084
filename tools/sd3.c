/*
 * sd3.c — the sd3 command-line tool. The only place that prints usage or calls exit().
 *   sd3 [generate] ...    text-to-image / image-to-image (default command)
 *   sd3 version           version and CPU features
 */
#include <stdio.h>
#include <string.h>
#include "sd3.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: sd3 <command> [options]\n"
            "commands:\n"
            "  generate   text-to-image (default; not implemented yet)\n"
            "  version    print version and detected CPU features\n");
}

int main(int argc, char **argv) {
    const char *cmd = argc > 1 ? argv[1] : "generate";
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("sd3c %s (cpu: %s)\n", sd3_version(), sd3_cpu_features());
        return 0;
    }
    if (!strcmp(cmd, "generate") || cmd[0] == '-') {
        fprintf(stderr, "sd3: generate: not implemented yet (the pipeline lands with issue 5)\n");
        return 1;
    }
    fprintf(stderr, "sd3: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}

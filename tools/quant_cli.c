/*
 * quant_cli.c — `sd3 quantize IN OUT [options]`: write a quantised copy of a component or a whole pipeline
 * (src/quant/quant.h: quant_path). The copy loads without re-quantising: the models see DT_Q8 / DT_Q4
 * tensors under the float checkpoint's keys.
 *
 *   sd3 quantize sd3-medium-diffusers sd3-medium-q8             whole pipeline: int8 T5 and transformer
 *   sd3 quantize sd3-medium-diffusers/transformer tr-q4 --precision int4
 *   sd3 quantize sd3_medium_incl_clips_t5xxlfp8.safetensors out.safetensors --t5 int8 --precision keep
 */
#include <stdio.h>
#include <string.h>
#include "core/core.h"
#include "quant/quant.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: sd3 quantize IN OUT [options]\n"
            "  IN                  a diffusers pipeline folder, a component folder (transformer/, text_encoder_3/)\n"
            "                      or a .safetensors file (bare transformer, T5, or a single-file checkpoint)\n"
            "  OUT                 where the copy goes (must not exist)\n"
            "  --t5 int8|int4|keep         T5 encoder Linears (default int8)\n"
            "  --precision int8|int4|keep  transformer Linears (default int8)\n"
            "  --component auto|mmdit|t5   what a component folder or file holds (default auto: from the name/keys)\n"
            "  -q, --quiet         no per-file lines\n"
            "Schemes: int8 = q8_row (one f32 scale per output row), int4 = q4_block32 (one f32 scale per 32 weights);\n"
            "symmetric, scale = max|w| / 127 (int8) or / 7 (int4), codes rounded half to even. Other tensors are copied.\n");
}

static int parse_bits(const char *v, int *bits) {
    if (!strcmp(v, "int8") || !strcmp(v, "8") || !strcmp(v, "q8_row")) *bits = 8;
    else if (!strcmp(v, "int4") || !strcmp(v, "4") || !strcmp(v, "q4_block32")) *bits = 4;
    else if (!strcmp(v, "keep") || !strcmp(v, "none") || !strcmp(v, "0")) *bits = 0;
    else return -1;
    return 0;
}

static void print_line(const char *line, void *user) {
    (void)user;
    printf("%s\n", line);
    fflush(stdout);
}

/* The subcommand: returns the process exit status (0 ok, 1 failure, 2 usage). */
int sd3_cmd_quantize(int argc, char **argv) {
    const char *pos[2] = {NULL, NULL};
    int npos = 0, t5 = 8, mm = 8, comp = 0, quiet = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) { quiet = 1; continue; }
        if (!strcmp(a, "--t5") || !strcmp(a, "--precision") || !strcmp(a, "--component")) {
            if (i + 1 >= argc) { fprintf(stderr, "sd3 quantize: error: %s needs a value\n", a); return 2; }
            const char *v = argv[++i];
            if (!strcmp(a, "--component")) {
                if (!strcmp(v, "auto")) comp = 0;
                else if (!strcmp(v, "mmdit") || !strcmp(v, "transformer")) comp = 'm';
                else if (!strcmp(v, "t5") || !strcmp(v, "text_encoder_3")) comp = 't';
                else { fprintf(stderr, "sd3 quantize: error: --component %s: auto, mmdit or t5\n", v); return 2; }
            } else if (parse_bits(v, !strcmp(a, "--t5") ? &t5 : &mm)) {
                fprintf(stderr, "sd3 quantize: error: %s %s: int8, int4 or keep\n", a, v);
                return 2;
            }
            continue;
        }
        if (a[0] == '-' && a[1]) { fprintf(stderr, "sd3 quantize: error: unknown option %s\n", a); usage(stderr); return 2; }
        if (npos == 2) { fprintf(stderr, "sd3 quantize: error: unexpected argument %s\n", a); return 2; }
        pos[npos++] = a;
    }
    if (npos != 2) { usage(stderr); return 2; }
    if (!t5 && !mm) { fprintf(stderr, "sd3 quantize: error: nothing to do (--t5 keep and --precision keep)\n"); return 2; }
    sd3_err err = {0};
    double t0 = sd3_time();
    if (quant_path(pos[0], pos[1], t5, mm, comp, quiet ? NULL : print_line, NULL, &err) != SD3_OK) {
        fprintf(stderr, "sd3 quantize: error: %s\n", err.msg);
        return 1;
    }
    if (!quiet) printf("done in %.1f s (t5: %s, transformer: %s)\n", sd3_time() - t0, t5 ? quant_scheme_name(t5) : "kept",
                       mm ? quant_scheme_name(mm) : "kept");
    return 0;
}

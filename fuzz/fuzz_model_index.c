/*
 * fuzz_model_index.c — model_index.json through ms_open on a temp pipeline folder (the API reads folders):
 * the input becomes <tmp>/pipe/model_index.json; a few component folders exist with real configs from
 * the tiny golden pipeline, so an accepted index also walks ms_check, ms_load_config, ms_file_path and
 * ms_describe.
 */
#include "fuzz_common.h"
#include "io/model_store.h"

static const char *comps[] = {"transformer", "vae", "scheduler", "tokenizer", "text_encoder"};
static const char *cfgs[] = {"config.json", "config.json", "scheduler_config.json", "tokenizer_config.json", "config.json"};

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    fz_mkdir("pipe");
    for (int i = 0; i < 5; i++) {
        char rel[256], src[1024];
        snprintf(rel, sizeof rel, "pipe/%s", comps[i]);
        fz_mkdir(rel);
        snprintf(src, sizeof src, "%s/tiny-sd3/%s/%s", fz_golden(), comps[i], cfgs[i]);
        size_t n;
        uint8_t *b = fz_slurp(src, &n);
        snprintf(rel, sizeof rel, "pipe/%s/%s", comps[i], cfgs[i]);
        fz_write(rel, b, n);
        free(b);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_write("pipe/model_index.json", data, size);
    char dir[512];
    fz_path(dir, sizeof dir, "pipe");
    model_store *ms = NULL;
    sd3_err err = {0};
    sd3_status st = ms_open(&ms, dir, &err);
    fz_check_err(st, &err, "ms_open");
    if (st != SD3_OK) {
        if (ms) abort();
        return 0;
    }
    if (ms->n_comp < 0 || ms->n_comp > MS_MAX_COMPONENTS) abort();
    char buf[8192];
    ms_describe(ms, buf, sizeof buf);
    if (strlen(buf) >= sizeof buf) abort();
    memset(&err, 0, sizeof err);
    fz_check_err(ms_check(ms, &err), &err, "ms_check");
    for (int i = 0; i < ms->n_comp; i++) {
        const char *name = ms->comp[i].name;
        if (ms_find(ms, name) == NULL) abort();
        (void)ms_has(ms, name);
        (void)ms_component_dir(ms, name);
        (void)ms_weights_stem(&ms->comp[i]);
        memset(&err, 0, sizeof err);
        fz_check_err(ms_require(ms, name, &err), &err, "ms_require");
        memset(&err, 0, sizeof err);
        cJSON *c = ms_load_config(ms, name, &err);
        fz_check_err(c ? SD3_OK : SD3_ERR_IO, &err, "ms_load_config");
        cJSON_Delete(c);
        char p[MS_PATH_MAX];
        memset(&err, 0, sizeof err);
        fz_check_err(ms_file_path(ms, name, "vocab.json", p, sizeof p, &err), &err, "ms_file_path");
    }
    ms_close(ms);
    return 0;
}

/*
 * fuzz_config.c — every JSON config reader on the same arbitrary bytes: cJSON parse, then the MMDiT
 * config (mmdit_config_from_json), the VAE config (vae_config_load, via a temp file, then
 * vae_config_validate), the CLIP and T5 configs (clip_config_read, t5_config_read) and the scheduler
 * config (flow_config_from_json; an accepted one is built and given a 4-step schedule, so that values the
 * reader lets through are also safe to compute with).
 */
#include <cjson/cJSON.h>
#include <limits.h>
#include "fuzz_common.h"
#include "mmdit/mmdit.h"
#include "sample/flow.h"
#include "text/clip.h"
#include "text/t5.h"
#include "vae/vae.h"

/* Known bugs (reported; regression cases in tests/test_bad_inputs.c), skipped until fixed so the run goes
 * on (-DFZ_SKIP_KNOWN=0 checks the fixes): vae_config_validate computes layers_per_block + 1, a signed
 * overflow for INT_MAX (UBSan, vae_load.c:41), and vae_config_load casts sample_size[0] of an array to
 * int unchecked (float-cast-overflow beyond int). */
#ifndef FZ_SKIP_KNOWN
#define FZ_SKIP_KNOWN 1
#endif
static int vae_known_bug(const cJSON *j) {
    const cJSON *l = cJSON_GetObjectItemCaseSensitive(j, "layers_per_block");
    if (cJSON_IsNumber(l) && l->valuedouble >= 2147483647.0) return 1;
    const cJSON *ss = cJSON_GetObjectItemCaseSensitive(j, "sample_size");
    const cJSON *s0 = cJSON_IsArray(ss) ? cJSON_GetArrayItem(ss, 0) : NULL;
    if (cJSON_IsNumber(s0) && !(s0->valuedouble > -2147483649.0 && s0->valuedouble < 2147483648.0)) return 1;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *s = fz_cstr(data, size);
    cJSON *j = cJSON_ParseWithLength(s, size);
    int skip_vae = FZ_SKIP_KNOWN && j && vae_known_bug(j);
    sd3_err err = {0};
    sd3_status st;
    if (j) {
        mmdit_config mc;
        memset(&err, 0, sizeof err);
        st = mmdit_config_from_json(&mc, j, "transformer/config.json", &err);
        fz_check_err(st, &err, "mmdit_config_from_json");

        clip_config cc;
        memset(&err, 0, sizeof err);
        st = clip_config_read(&cc, j, "text_encoder", &err);
        fz_check_err(st, &err, "clip_config_read");

        t5_config tc;
        memset(&err, 0, sizeof err);
        st = t5_config_read(&tc, j, "text_encoder_3", &err);
        fz_check_err(st, &err, "t5_config_read");

        flow_config fc;
        memset(&err, 0, sizeof err);
        st = flow_config_from_json(j, &fc, "scheduler_config.json", &err);
        fz_check_err(st, &err, "flow_config_from_json");
        if (st == SD3_OK) {
            flow_sched sc;
            memset(&err, 0, sizeof err);
            st = flow_create(&sc, &fc, &err);
            fz_check_err(st, &err, "flow_create");
            if (st == SD3_OK) {
                flow_timesteps_opts o = {NULL, 1, 0.5};
                memset(&err, 0, sizeof err);
                st = flow_set_timesteps(&sc, 4, &o, &err);
                fz_check_err(st, &err, "flow_set_timesteps");
                flow_free(&sc);
            }
        }
        cJSON_Delete(j);
    }
    /* the VAE reader takes a path: the raw bytes (valid JSON or not) go through the file path */
    char p[512];
    if (skip_vae) { free(s); return 0; }
    fz_write("config.json", data, size);
    fz_path(p, sizeof p, "config.json");
    vae_config vc;
    memset(&err, 0, sizeof err);
    st = vae_config_load(&vc, p, &err);
    fz_check_err(st, &err, "vae_config_load");
    if (st == SD3_OK) {
        memset(&err, 0, sizeof err);
        st = vae_config_validate(&vc, "vae", &err);
        fz_check_err(st, &err, "vae_config_validate");
        if (st == SD3_OK) (void)vae_downscale(&vc);
    }
    free(s);
    return 0;
}

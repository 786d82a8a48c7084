/*
 * fuzz_config.c — every JSON config reader on the same arbitrary bytes: cJSON parse, then the MMDiT
 * config (mmdit_config_from_json), the VAE config (vae_config_load, via a temp file, then
 * vae_config_validate), the CLIP and T5 configs (clip_config_read, t5_config_read) and the scheduler
 * config (flow_config_from_json; an accepted one is built and given a 4-step schedule, so that values the
 * reader lets through are also safe to compute with).
 */
#include <cjson/cJSON.h>
#include "fuzz_common.h"
#include "mmdit/mmdit.h"
#include "sample/flow.h"
#include "text/clip.h"
#include "text/t5.h"
#include "vae/vae.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *s = fz_cstr(data, size);
    cJSON *j = cJSON_ParseWithLength(s, size);
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

/* kind_encode_prompt.c — golden kind encode_prompt: StableDiffusion3Pipeline.encode_prompt(**parameters)
 * on the case's pipeline folder; checks prompt_embeds, pooled_prompt_embeds and (with CFG) the negatives. */
#include <string.h>
#include "golden.h"
#include "io/json_util.h"
#include "io/model_store.h"
#include "pipeline/encode_prompt.h"

#define MAXP 64

/* A parameter that is null, a string or a list of strings -> n strings (NULL entries for null). Returns
 * the count, or -1 if malformed; a single string (or null) is broadcast to `want` entries. */
static int str_param(const cJSON *params, const char *key, const char **out, int want) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(params, key);
    if (!v || cJSON_IsNull(v)) {
        for (int i = 0; i < want; i++) out[i] = NULL;
        return want;
    }
    if (cJSON_IsString(v)) {
        for (int i = 0; i < want; i++) out[i] = v->valuestring;
        return want;
    }
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) > MAXP) return -1;
    int n = 0;
    for (const cJSON *e = v->child; e; e = e->next) {
        if (!cJSON_IsString(e)) return -1;
        out[n++] = e->valuestring;
    }
    return n;
}

int golden_encode_prompt(golden_case *gc) {
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(gc->json, "parameters");
    const char *mdir = golden_model_dir(gc);
    if (!params || !mdir) { golden_fail(gc, "case has no parameters or model_dir"); return -1; }
    const char *p1[MAXP], *p2[MAXP], *p3[MAXP], *n1[MAXP], *n2[MAXP], *n3[MAXP];
    const cJSON *pv = cJSON_GetObjectItemCaseSensitive(params, "prompt");
    int n = cJSON_IsArray(pv) ? cJSON_GetArraySize(pv) : 1;
    if (n < 1 || n > MAXP || str_param(params, "prompt", p1, n) != n || str_param(params, "prompt_2", p2, n) != n ||
        str_param(params, "prompt_3", p3, n) != n || str_param(params, "negative_prompt", n1, n) != n ||
        str_param(params, "negative_prompt_2", n2, n) != n || str_param(params, "negative_prompt_3", n3, n) != n) {
        golden_fail(gc, "malformed prompt parameters");
        return -1;
    }
    encode_req r;
    memset(&r, 0, sizeof r);
    r.n_prompts = n;
    r.prompt = p1;
    r.prompt_2 = p2;
    r.prompt_3 = p3;
    r.negative = n1;
    r.negative_2 = n2;
    r.negative_3 = n3;
    r.num_images_per_prompt = json_int(params, "num_images_per_prompt", 1);
    r.cfg = json_bool(params, "do_classifier_free_guidance", 1);
    r.clip_skip = json_int(params, "clip_skip", 0);
    r.max_sequence_length = json_int(params, "max_sequence_length", 256);
    r.no_t5 = json_bool(gc->json, "drop_t5", 0);

    sd3_err err = {0};
    model_store *ms = NULL;
    if (ms_open(&ms, mdir, &err) != SD3_OK) { golden_fail(gc, "%s", err.msg); return -1; }
    encode_out o;
    int rc = 0;
    if (encode_prompt(ms, &r, &o, &err) != SD3_OK) {
        golden_fail(gc, "%s", err.msg);
        rc = -1;
    } else {
        golden_check(gc, "prompt_embeds", o.pe, (int64_t)o.B * o.S * o.J);
        golden_check(gc, "pooled_prompt_embeds", o.pooled, (int64_t)o.B * o.P);
        if (r.cfg) {
            golden_check(gc, "negative_prompt_embeds", o.npe, (int64_t)o.B * o.S * o.J);
            golden_check(gc, "negative_pooled_prompt_embeds", o.npooled, (int64_t)o.B * o.P);
        }
        encode_out_free(&o);
    }
    ms_close(ms);
    return rc;
}

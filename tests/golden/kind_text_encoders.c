/*
 * kind_text_encoders.c — golden kind "text_encoders": the three tiny SD3 text encoders (CLIP-L,
 * CLIP-G, T5) of the case's model_dir run on the id tensors stored in the case, every output and
 * debug intermediate compared with its suggested_atol. Batch sizes and tokens come from the file's
 * shapes (the m3 / 256-token / debug tensors exist for a prefix of the prompts only).
 */
#include <string.h>
#include "golden.h"
#include "io/json_util.h"
#include "io/weights.h"
#include "text/clip.h"
#include "text/t5.h"

/* Open <model_dir>/<sub>/{config.json, model.safetensors}; 0 on success, else a recorded failure. */
static int open_part(golden_case *gc, const char *sub, weights *w, cJSON **cfg) {
    const char *md = golden_model_dir(gc);
    if (!md) { golden_fail(gc, "case has no model_dir"); return -1; }
    char dir[4096], path[4200];
    snprintf(dir, sizeof dir, "%s/%s", md, sub);
    snprintf(path, sizeof path, "%s/config.json", dir);
    sd3_err err = {0};
    *cfg = json_load_file(path, &err);
    if (!*cfg) { golden_fail(gc, "%s", err.msg); return -1; }
    if (weights_open_dir(w, dir, "model", &err) != SD3_OK) {
        golden_fail(gc, "%s", err.msg);
        cJSON_Delete(*cfg);
        return -1;
    }
    return 0;
}

/* Rows B and tokens T of a stored [B, T] id tensor (the ids themselves are views). */
static const int64_t *ids_of(golden_case *gc, const char *name, int *B, int *T) {
    tensor t;
    if (golden_tensor(gc, name, &t)) return NULL;
    if (t.dt != DT_I64 || t.ndim != 2) { golden_fail(gc, "%s: expected an I64 [B, T] tensor", name); return NULL; }
    *B = (int)t.shape[0];
    *T = (int)t.shape[1];
    return t.data;
}

/* First dim of a stored tensor (how many prompts it covers), or -1 with a recorded failure. */
static int rows_of(golden_case *gc, const char *name) {
    tensor t;
    if (golden_tensor(gc, name, &t)) return -1;
    return (int)t.shape[0];
}

/* The CLIP half: hidden_states_m2, last_hidden_state, text_embeds for all prompts, hidden_states_m3
 * for the rows stored, debug_hidden_states_i for every stored i. */
static void check_clip(golden_case *gc, const char *sub, const char *pfx) {
    weights w;
    cJSON *cfg;
    if (open_part(gc, sub, &w, &cfg)) return;
    clip_model m;
    sd3_err err = {0};
    char name[128], ids_name[64];
    float *hid = NULL, *last = NULL, *emb = NULL;
    if (clip_load(&m, &w, cfg, sub, &err) != SD3_OK) { golden_fail(gc, "%s", err.msg); goto done; }
    snprintf(ids_name, sizeof ids_name, "%s_input_ids", pfx);
    int B, T;
    const int64_t *ids = ids_of(gc, ids_name, &B, &T);
    if (!ids) goto done;
    const int C = m.cfg.hidden_size, P = m.cfg.projection_dim, L = m.cfg.num_hidden_layers;
    hid = sd3_malloc(sizeof(float) * (size_t)B * T * C);
    last = sd3_malloc(sizeof(float) * (size_t)B * T * C);
    emb = sd3_malloc(sizeof(float) * (size_t)B * P);
    SD3_ASSERT(hid && last && emb);

    if (clip_forward(&m, ids, B, T, -2, hid, last, emb, &err) != SD3_OK) { golden_fail(gc, "%s", err.msg); goto done; }
    snprintf(name, sizeof name, "%s.hidden_states_m2", pfx);
    golden_check(gc, name, hid, (int64_t)B * T * C);
    snprintf(name, sizeof name, "%s.last_hidden_state", pfx);
    golden_check(gc, name, last, (int64_t)B * T * C);
    snprintf(name, sizeof name, "%s.text_embeds", pfx);
    golden_check(gc, name, emb, (int64_t)B * P);

    /* hidden_states[-3] (clip_skip = 1) for the prompts it is stored for; only that output wanted. */
    snprintf(name, sizeof name, "%s.hidden_states_m3", pfx);
    int b3 = rows_of(gc, name);
    if (b3 > 0 && b3 <= B) {
        if (clip_forward(&m, ids, b3, T, -3, hid, NULL, NULL, &err) != SD3_OK) golden_fail(gc, "%s", err.msg);
        else golden_check(gc, name, hid, (int64_t)b3 * T * C);
    }
    /* Every stored hidden state (0 = embeddings, i = after layer i), positive indices. */
    for (int i = 0; i <= L; i++) {
        snprintf(name, sizeof name, "%s.debug_hidden_states_%d", pfx, i);
        if (!golden_tensor_json(gc, name)) { golden_fail(gc, "%s: not in the case", name); continue; }
        int bd = rows_of(gc, name);
        if (bd < 1 || bd > B) continue;
        if (clip_forward(&m, ids, bd, T, i, hid, NULL, NULL, &err) != SD3_OK) golden_fail(gc, "%s", err.msg);
        else golden_check(gc, name, hid, (int64_t)bd * T * C);
    }
    snprintf(name, sizeof name, "%s.debug_hidden_states_%d", pfx, L + 1);
    if (golden_tensor_json(gc, name)) golden_fail(gc, "%s: the model has only %d hidden states", name, L + 1);
done:
    sd3_free(hid);
    sd3_free(last);
    sd3_free(emb);
    clip_free(&m);
    weights_close(&w);
    cJSON_Delete(cfg);
}

/* The T5 half: buckets, last_hidden_state for 77 and 256 tokens, every debug hidden state. */
static void check_t5(golden_case *gc, const char *sub) {
    weights w;
    cJSON *cfg;
    if (open_part(gc, sub, &w, &cfg)) return;
    t5_model m;
    sd3_err err = {0};
    float *out = NULL;
    if (t5_load(&m, &w, cfg, sub, &err) != SD3_OK) { golden_fail(gc, "%s", err.msg); goto done; }
    const int d = m.cfg.d_model, L = m.cfg.num_layers;

    /* Relative position buckets: entry k is for key_pos - query_pos = k - (n-1)/2. */
    tensor bt;
    if (!golden_tensor(gc, "t5_relative_position_bucket", &bt)) {
        int64_t n = tensor_numel(&bt), half = (n - 1) / 2;
        int64_t *got = malloc(sizeof(int64_t) * (size_t)n);
        SD3_ASSERT(got);
        for (int64_t i = 0; i < n; i++)
            got[i] = t5_relative_bucket((int)(i - half), m.cfg.relative_attention_num_buckets,
                                        m.cfg.relative_attention_max_distance);
        golden_check_i64(gc, "t5_relative_position_bucket", got, n);
        free(got);
    }

    const char *runs[][2] = {{"t5_input_ids_77", "t5.last_hidden_state_77"}, {"t5_input_ids_256", "t5.last_hidden_state_256"}};
    for (int r = 0; r < 2; r++) {
        int B, T;
        const int64_t *ids = ids_of(gc, runs[r][0], &B, &T);
        if (!ids) continue;
        int bo = rows_of(gc, runs[r][1]);
        if (bo < 1 || bo > B) continue;
        out = sd3_malloc(sizeof(float) * (size_t)bo * T * d);
        SD3_ASSERT(out);
        if (t5_forward(&m, ids, bo, T, out, &err) != SD3_OK) golden_fail(gc, "%s", err.msg);
        else golden_check(gc, runs[r][1], out, (int64_t)bo * T * d);
        if (r == 0) {
            for (int i = 0; i <= L; i++) {
                char name[64];
                snprintf(name, sizeof name, "t5.debug_hidden_states_%d", i);
                if (!golden_tensor_json(gc, name)) { golden_fail(gc, "%s: not in the case", name); continue; }
                int bd = rows_of(gc, name);
                if (bd < 1 || bd > bo) continue;
                if (t5_forward_hidden(&m, ids, bd, T, i, out, &err) != SD3_OK) golden_fail(gc, "%s", err.msg);
                else golden_check(gc, name, out, (int64_t)bd * T * d);
            }
        }
        sd3_free(out);
        out = NULL;
    }
done:
    sd3_free(out);
    t5_free(&m);
    weights_close(&w);
    cJSON_Delete(cfg);
}

/* The case: CLIP-L (text_encoder), CLIP-G (text_encoder_2), T5 (text_encoder_3). */
int golden_text_encoders(golden_case *gc) {
    check_clip(gc, "text_encoder", "clip_l");
    check_clip(gc, "text_encoder_2", "clip_g");
    check_t5(gc, "text_encoder_3");
    return 0;
}

/*
 * kind_tokenizers.c — golden kind "tokenizers": every prompt of the case (text given as utf8_hex) through
 * the case model's tokenizer/ (CLIP-L), tokenizer_2/ (CLIP-G) and tokenizer_3/ (T5) folders; the
 * [N, 77] / [N, 256] id and mask tensors must match exactly, and so must the per-prompt untruncated ids
 * the JSON lists (clip_l_untruncated_ids, clip_g_untruncated_ids, t5_untruncated_ids).
 */
#include <stdlib.h>
#include <string.h>
#include "golden.h"
#include "io/json_util.h"
#include "text/clip_tok.h"
#include "text/t5_tok.h"

/* Decode the hex string of a prompt into a malloc'd buffer (*len bytes); NULL if malformed. */
static char *hex_decode(const char *hex, size_t *len) {
    size_t n = strlen(hex);
    if (n % 2) return NULL;
    char *out = malloc(n / 2 + 1);
    if (!out) return NULL;
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v = 0;
        for (int k = 0; k < 2; k++) {
            char c = hex[2 * i + (size_t)k];
            unsigned d = c >= '0' && c <= '9' ? (unsigned)(c - '0') : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                       : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10) : 16u;
            if (d > 15) { free(out); return NULL; }
            v = v * 16 + d;
        }
        out[i] = (char)v;
    }
    out[n / 2] = 0;
    *len = n / 2;
    return out;
}

/* Compare got[0..n) with the JSON integer array `key` of prompt p; 1 if equal, 0 (and a failure) if not,
 * -1 if the prompt has no such key. */
static int check_list(golden_case *gc, const cJSON *p, int idx, const char *key, const int64_t *got, size_t n) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(p, key);
    if (!cJSON_IsArray(a)) return -1;
    size_t m = (size_t)cJSON_GetArraySize(a), i = 0;
    for (const cJSON *it = a->child; it; it = it->next, i++)
        if (i >= n || !cJSON_IsNumber(it) || (int64_t)it->valuedouble != got[i]) {
            golden_fail(gc, "prompt %d: %s differs at [%zu]: got %lld, want %lld (lengths %zu vs %zu)", idx, key, i,
                        i < n ? (long long)got[i] : -1LL, (long long)it->valuedouble, n, m);
            return 0;
        }
    if (m != n) {
        golden_fail(gc, "prompt %d: %s: got %zu ids, want %zu", idx, key, n, m);
        return 0;
    }
    return 1;
}

/* Tokenize every prompt with the three tokenizers and compare all tensors and untruncated id lists. */
int golden_tokenizers(golden_case *gc) {
    const char *model = golden_model_dir(gc);
    if (!model) { golden_fail(gc, "case has no model_dir"); return 1; }
    const cJSON *prompts = cJSON_GetObjectItemCaseSensitive(gc->json, "prompts");
    if (!cJSON_IsArray(prompts)) { golden_fail(gc, "case has no prompts array"); return 1; }
    int np = cJSON_GetArraySize(prompts);
    char dir[4096];
    sd3_err err = { 0 };
    clip_tok tl, tg;
    t5_tok t5;
    int have_t5 = 0;
    snprintf(dir, sizeof dir, "%s/tokenizer", model);
    if (clip_tok_load(&tl, dir, &err) != SD3_OK) { golden_fail(gc, "%s", err.msg); return 1; }
    snprintf(dir, sizeof dir, "%s/tokenizer_2", model);
    if (clip_tok_load(&tg, dir, &err) != SD3_OK) { golden_fail(gc, "%s", err.msg); clip_tok_free(&tl); return 1; }
    snprintf(dir, sizeof dir, "%s/tokenizer_3", model);
    int want_t5 = golden_tensor_json(gc, "t5_input_ids_256") || golden_tensor_json(gc, "t5_input_ids_77");
    if (want_t5) {
        if (t5_tok_load(&t5, dir, &err) != SD3_OK) golden_fail(gc, "%s", err.msg);
        else have_t5 = 1;
    }

    size_t N = (size_t)np;
    int64_t *l_ids = calloc(N * 77, 8), *l_mask = calloc(N * 77, 8), *g_ids = calloc(N * 77, 8), *g_mask = calloc(N * 77, 8);
    int64_t *t_ids256 = calloc(N * 256, 8), *t_mask256 = calloc(N * 256, 8), *t_ids77 = calloc(N * 77, 8), *t_mask77 = calloc(N * 77, 8);
    int ok_run = l_ids && l_mask && g_ids && g_mask && t_ids256 && t_mask256 && t_ids77 && t_mask77;
    int un_checked[3] = { 0, 0, 0 }, un_failed[3] = { 0, 0, 0 };
    static const char *const un_key[3] = { "clip_l_untruncated_ids", "clip_g_untruncated_ids", "t5_untruncated_ids" };
    for (int i = 0; i < np && ok_run; i++) {
        const cJSON *p = cJSON_GetArrayItem(prompts, i);
        const char *hex = json_str(p, "utf8_hex", NULL);
        size_t len = 0;
        char *text = hex ? hex_decode(hex, &len) : NULL;
        if (!text) { golden_fail(gc, "prompt %d: missing or malformed utf8_hex", i); ok_run = 0; break; }
        sd3_status st = clip_tok_encode_n(&tl, text, len, l_ids + (size_t)i * 77, l_mask + (size_t)i * 77, &err);
        if (st == SD3_OK) st = clip_tok_encode_n(&tg, text, len, g_ids + (size_t)i * 77, g_mask + (size_t)i * 77, &err);
        if (st == SD3_OK && have_t5) st = t5_tok_encode_n(&t5, text, len, 256, t_ids256 + (size_t)i * 256, t_mask256 + (size_t)i * 256, &err);
        if (st == SD3_OK && have_t5) st = t5_tok_encode_n(&t5, text, len, 77, t_ids77 + (size_t)i * 77, t_mask77 + (size_t)i * 77, &err);
        for (int k = 0; k < 3 && st == SD3_OK; k++) {
            int64_t *all = NULL;
            size_t n = 0;
            if (k == 2 && !have_t5) break;
            st = k == 0 ? clip_tok_encode_full(&tl, text, len, &all, &n, &err)
               : k == 1 ? clip_tok_encode_full(&tg, text, len, &all, &n, &err)
                        : t5_tok_encode_full(&t5, text, len, &all, &n, &err);
            if (st != SD3_OK) break;
            int r = check_list(gc, p, i, un_key[k], all, n);
            if (r >= 0) { un_checked[k]++; if (!r) un_failed[k]++; }
            free(all);
        }
        free(text);
        if (st != SD3_OK) { golden_fail(gc, "prompt %d: %s", i, err.msg); ok_run = 0; }
    }
    if (ok_run) {
        golden_check_i64(gc, "clip_l_input_ids", l_ids, (int64_t)N * 77);
        golden_check_i64(gc, "clip_l_attention_mask", l_mask, (int64_t)N * 77);
        golden_check_i64(gc, "clip_g_input_ids", g_ids, (int64_t)N * 77);
        golden_check_i64(gc, "clip_g_attention_mask", g_mask, (int64_t)N * 77);
        if (have_t5) {
            if (golden_tensor_json(gc, "t5_input_ids_256")) {
                golden_check_i64(gc, "t5_input_ids_256", t_ids256, (int64_t)N * 256);
                golden_check_i64(gc, "t5_attention_mask_256", t_mask256, (int64_t)N * 256);
            }
            if (golden_tensor_json(gc, "t5_input_ids_77")) {
                golden_check_i64(gc, "t5_input_ids_77", t_ids77, (int64_t)N * 77);
                golden_check_i64(gc, "t5_attention_mask_77", t_mask77, (int64_t)N * 77);
            }
        }
        for (int k = 0; k < 3; k++) {
            if (!un_checked[k]) continue;
            gc->n_checked++;
            if (gc->verbose && !un_failed[k]) printf("    ok   %-48s %d prompts exact\n", un_key[k], un_checked[k]);
        }
    }
    free(l_ids); free(l_mask); free(g_ids); free(g_mask);
    free(t_ids256); free(t_mask256); free(t_ids77); free(t_mask77);
    clip_tok_free(&tl);
    clip_tok_free(&tg);
    if (have_t5) t5_tok_free(&t5);
    return ok_run ? 0 : 1;
}

/*
 * test_tokenizers.c — the tokenizers beyond the golden prompts:
 *   - every row of text/t5_tokenizer_rust_check.json (edge inputs) against the Rust `tokenizers` ids,
 *     with the model read from spiece.model and from tokenizer.json;
 *   - the README's hand-checked CLIP examples ("a photo of a cat", "! !! !!!" for both tokenizers);
 *   - Unicode pieces against values fixed by the Unicode standard / Python (lower, NFC, categories);
 *   - the heap BPE against transformers' literal merge loop on random words;
 *   - bad input: missing vocab.json, malformed merges.txt, truncated / corrupt spiece.model,
 *     invalid UTF-8 prompts, a 100 000-character prompt (result and time).
 *
 *   test_tokenizers [GOLDEN_ROOT]   (default $SD3_GOLDEN, else ../shared/golden; run from the repo root)
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "test.h"
#include "core/core.h"
#include "io/json_util.h"
#include "text/clip_tok.h"
#include "text/t5_tok.h"
#include "text/unicode.h"

static char g_root[4096];

/* Hex string -> malloc'd bytes. */
static char *unhex(const char *hex, size_t *len) {
    size_t n = strlen(hex);
    char *out = malloc(n / 2 + 1);
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        sscanf(hex + 2 * i, "%2x", &v);
        out[i] = (char)v;
    }
    out[n / 2] = 0;
    *len = n / 2;
    return out;
}

/* Whether ids[0..n) equals the JSON integer array a. */
static int ids_equal_json(const int64_t *ids, size_t n, const cJSON *a) {
    if (!cJSON_IsArray(a) || (size_t)cJSON_GetArraySize(a) != n) return 0;
    size_t i = 0;
    for (const cJSON *it = a->child; it; it = it->next, i++)
        if ((int64_t)it->valuedouble != ids[i]) return 0;
    return 1;
}

/* Print the first ids (for a failure report). */
static void print_ids(const char *what, const int64_t *ids, size_t n) {
    printf("  %s:", what);
    for (size_t i = 0; i < n && i < 40; i++) printf(" %lld", (long long)ids[i]);
    printf("%s\n", n > 40 ? " ..." : "");
}

/* Copy a file (for building damaged tokenizer folders). */
static int copy_file(const char *from, const char *to) {
    size_t n;
    char *buf = file_read_all(from, 64u << 20, &n, NULL);
    if (!buf) return -1;
    FILE *f = fopen(to, "wb");
    if (!f) { free(buf); return -1; }
    size_t w = fwrite(buf, 1, n, f);
    fclose(f);
    free(buf);
    return w == n ? 0 : -1;
}

/* Write n bytes to a file (damaged tokenizer files). */
static int write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(data, 1, n, f);
    fclose(f);
    return w == n ? 0 : -1;
}

/* ------------------------------------------------------------------------------------------------ */

/* Every row of the Rust check file: ids identical to the Rust tokenizers library's. */
static void test_rust_rows(const t5_tok *t5, const char *src) {
    char path[4200];
    snprintf(path, sizeof path, "%s/text/t5_tokenizer_rust_check.json", g_root);
    sd3_err err = { 0 };
    cJSON *j = json_load_file(path, &err);
    CHECK(j != NULL, "%s", err.msg);
    if (!j) return;
    const cJSON *rows = cJSON_GetObjectItemCaseSensitive(j, "rows");
    int nrows = 0, nok = 0;
    for (const cJSON *r = rows ? rows->child : NULL; r; r = r->next) {
        size_t len;
        char *text = unhex(json_str(r, "utf8_hex", ""), &len);
        int64_t *ids = NULL;
        size_t n = 0;
        sd3_status st = t5_tok_encode_full(t5, text, len, &ids, &n, &err);
        const cJSON *want = cJSON_GetObjectItemCaseSensitive(r, "rust_ids");
        int ok = st == SD3_OK && ids_equal_json(ids, n, want);
        nrows++;
        nok += ok;
        CHECK(ok, "[%s] rust row %d (%s) '%s': ids differ from the Rust tokenizers ids", src, nrows - 1,
              json_str(r, "kind", "?"), json_str(r, "text", ""));
        if (!ok) print_ids("got", ids, n);
        free(ids);
        free(text);
    }
    CHECK(nrows >= 72, "only %d rust rows", nrows);
    printf("  t5 (%s): %d/%d Rust rows exact\n", src, nok, nrows);
    cJSON_Delete(j);
}

/* Encode with a CLIP tokenizer and compare the padded 77 ids with want[] + padding. */
static void check_clip(clip_tok *t, const char *text, const int64_t *want, size_t nw, int64_t pad, const char *name) {
    int64_t ids[CLIP_TOK_LEN], mask[CLIP_TOK_LEN];
    sd3_err err = { 0 };
    sd3_status st = clip_tok_encode(t, text, ids, mask, &err);
    CHECK(st == SD3_OK, "%s '%s': %s", name, text, err.msg);
    if (st != SD3_OK) return;
    int ok = 1;
    for (size_t i = 0; i < CLIP_TOK_LEN; i++) {
        int64_t w = i < nw ? want[i] : pad;
        if (ids[i] != w || mask[i] != (i < nw)) ok = 0;
    }
    CHECK(ok, "%s '%s': ids differ", name, text);
    if (!ok) print_ids("got", ids, 12);
}

/* The hand-checked CLIP ids of the golden README. */
static void test_clip_examples(clip_tok *tl, clip_tok *tg) {
    /* golden README, "How the text side was verified" (values published in diffusers issue #4153) */
    const int64_t cat[] = { 49406, 320, 1125, 539, 320, 2368, 49407 };
    check_clip(tl, "a photo of a cat", cat, 7, 49407, "tokenizer");
    check_clip(tg, "a photo of a cat", cat, 7, 0, "tokenizer_2");
    const int64_t bang_l[] = { 49406, 256, 748, 995, 49407 };
    const int64_t bang_g[] = { 49406, 0, 0, 0, 0, 0, 0, 49407 };
    check_clip(tl, "! !! !!!", bang_l, 5, 49407, "tokenizer");
    check_clip(tg, "! !! !!!", bang_g, 8, 0, "tokenizer_2");
    CHECK(tl->pad_id == 49407 && tg->pad_id == 0, "pad ids %lld %lld", (long long)tl->pad_id, (long long)tg->pad_id);
}

/* Values fixed by the Unicode data Python 3.11 uses. */
static void test_unicode(void) {
    CHECK(!strcmp(uc_version(), "14.0.0"), "version %s", uc_version());
    uint32_t out[16];
    const uint32_t idot[] = { 0x130 };  /* İ -> i + COMBINING DOT ABOVE */
    size_t n = uc_lower_py(idot, 1, out);
    CHECK(n == 2 && out[0] == 'i' && out[1] == 0x307, "lower(U+0130) n=%zu", n);
    const uint32_t odos[] = { 0x39F, 0x394, 0x39F, 0x3A3 };  /* ΟΔΟΣ -> οδος with final sigma */
    n = uc_lower_py(odos, 4, out);
    CHECK(n == 4 && out[3] == 0x3C2 && out[0] == 0x3BF, "final sigma: %X", (unsigned)out[3]);
    const uint32_t sig[] = { 0x3A3 };  /* a lone capital sigma lowers to the non-final form */
    n = uc_lower_py(sig, 1, out);
    CHECK(n == 1 && out[0] == 0x3C3, "lone sigma %X", (unsigned)out[0]);
    const uint32_t e_acute[] = { 'e', 0x301 };
    n = uc_nfc(e_acute, 2, out);
    CHECK(n == 1 && out[0] == 0xE9, "NFC e+acute");
    const uint32_t hangul[] = { 0x1100, 0x1161, 0x11A8 };  /* ᄀ + ᅡ + ᆨ -> 각 */
    n = uc_nfc(hangul, 3, out);
    CHECK(n == 1 && out[0] == 0xAC01, "NFC hangul %X", (unsigned)out[0]);
    const uint32_t reorder[] = { 'a', 0x301, 0x323 };  /* dot below (220) sorts before acute (230) */
    n = uc_nfc(reorder, 3, out);
    CHECK(n == 2 && out[0] == 0x1EA1 && out[1] == 0x301, "NFC reorder %X %X", (unsigned)out[0], (unsigned)out[1]);
    const uint32_t ohm[] = { 0x2126 };  /* singleton: OHM SIGN -> GREEK CAPITAL OMEGA */
    n = uc_nfc(ohm, 1, out);
    CHECK(n == 1 && out[0] == 0x3A9, "NFC ohm");
    CHECK(uc_category_of(0x200B) == UC_Cf && uc_category_of(0xA0) == UC_Zs && uc_category_of(0x4E2D) == UC_Lo &&
          uc_category_of(0xBD) == UC_No && uc_category_of(0x378) == UC_Cn && uc_category_of(0xE000) == UC_Co,
          "categories");
    CHECK(uc_is_py_space(0x1C) && uc_is_py_space(0x2028) && !uc_is_py_space(0x200B), "isspace");
    const uint32_t crlf[] = { '\r', '\n', 'e', 0x301, 0x1F469, 0x200D, 0x1F4BB, 0x1F1E9, 0x1F1EA, 0x1F1EB };
    size_t g1 = uc_grapheme_end(crlf, 10, 0), g2 = uc_grapheme_end(crlf, 10, 2), g3 = uc_grapheme_end(crlf, 10, 4),
           g4 = uc_grapheme_end(crlf, 10, 7);
    CHECK(g1 == 2 && g2 == 4 && g3 == 7 && g4 == 9, "graphemes %zu %zu %zu %zu", g1, g2, g3, g4);
    /* strict UTF-8 */
    static const char *const bad[] = { "\xff", "ab\xc3", "\xed\xa0\x80", "\xc0\xaf", "\xf4\x90\x80\x80", "\xe2\x82" };
    for (int i = 0; i < 6; i++) {
        uint32_t *cps;
        size_t nc;
        sd3_err err = { 0 };
        sd3_status st = uc_utf8_decode(bad[i], strlen(bad[i]), &cps, &nc, &err);
        CHECK(st == SD3_ERR_INVALID_ARG && strstr(err.msg, "UTF-8"), "bad utf-8 #%d accepted", i);
        if (st == SD3_OK) free(cps);
    }
    uint32_t *cps;
    size_t nc;
    CHECK(uc_utf8_decode("\xf0\x9f\x90\xb1x", 5, &cps, &nc, NULL) == SD3_OK && nc == 2 && cps[0] == 0x1F431, "emoji");
    free(cps);
}

/* The O(n log n) heap BPE against the reference loop (merges_ordered off) on random words. */
static void test_bpe_equivalence(clip_tok *t) {
    static const char *const frag[] = { "a", "b", "c", "e", "er", "in", "th", "ing", "q", "z", "x", "é", "ß", "1",
                                        "!", "ab", "ba", "aa", "na", "an", "ss", "'", "中", "🐱", "tion", "o", "ol" };
    uint64_t s = 12345;
    int mism = 0;
    char word[2200];
    for (int it = 0; it < 400; it++) {
        size_t len = 0, target = 1 + (size_t)(it % 40) * (it % 7 == 0 ? 50 : 1);
        while (len < target && len + 8 < sizeof word - 1) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            const char *f = frag[(s >> 33) % (sizeof frag / sizeof frag[0])];
            memcpy(word + len, f, strlen(f));
            len += strlen(f);
        }
        word[len] = 0;
        int64_t *a = NULL, *b = NULL;
        size_t na = 0, nb = 0;
        sd3_err err = { 0 };
        t->merges_ordered = 1;
        clip_tok_encode_full(t, word, len, &a, &na, &err);
        tok_strmap_free(&t->cache);
        t->cache_ids.n = 0;
        t->merges_ordered = 0;
        clip_tok_encode_full(t, word, len, &b, &nb, &err);
        tok_strmap_free(&t->cache);
        t->cache_ids.n = 0;
        t->merges_ordered = 1;
        if (!a || !b || na != nb || memcmp(a, b, na * sizeof *a)) {
            if (!mism) printf("  bpe mismatch on '%s'\n", word);
            mism++;
        }
        free(a);
        free(b);
    }
    CHECK(mism == 0, "%d of 400 words: heap BPE differs from the reference loop", mism);
}

/* Damaged folders and files, and invalid prompts: errors with a clear status, never a crash. */
static void test_bad_input(clip_tok *tl, clip_tok *tg, t5_tok *t5) {
    sd3_err err = { 0 };
    char tmp[] = "/tmp/sd3_tok_XXXXXX";
    CHECK(mkdtemp(tmp) != NULL, "mkdtemp");
    char p[4400], q[4400];

    /* missing vocab.json */
    snprintf(p, sizeof p, "%s/tiny-sd3/tokenizer/merges.txt", g_root);
    snprintf(q, sizeof q, "%s/merges.txt", tmp);
    CHECK(copy_file(p, q) == 0, "copy merges");
    clip_tok t;
    sd3_status st = clip_tok_load(&t, tmp, &err);
    CHECK(st == SD3_ERR_NOT_FOUND && strstr(err.msg, "vocab.json"), "missing vocab.json: %d %s", st, err.msg);
    clip_tok_free(&t);

    /* malformed merges.txt (three symbols on a line) */
    snprintf(p, sizeof p, "%s/tiny-sd3/tokenizer/vocab.json", g_root);
    snprintf(q, sizeof q, "%s/vocab.json", tmp);
    CHECK(copy_file(p, q) == 0, "copy vocab");
    snprintf(q, sizeof q, "%s/merges.txt", tmp);
    const char *bad_merges = "#version: 0.2\ni n\nt h e\n";
    write_file(q, bad_merges, strlen(bad_merges));
    st = clip_tok_load(&t, tmp, &err);
    CHECK(st == SD3_ERR_FORMAT && strstr(err.msg, "line 3"), "malformed merges: %d %s", st, err.msg);
    clip_tok_free(&t);
    /* vocab.json that is not an object of ids */
    snprintf(q, sizeof q, "%s/vocab.json", tmp);
    write_file(q, "{\"a\": \"x\"}", 10);
    st = clip_tok_load(&t, tmp, &err);
    CHECK(st == SD3_ERR_FORMAT, "bad vocab: %d %s", st, err.msg);
    clip_tok_free(&t);
    remove(q);
    snprintf(q, sizeof q, "%s/merges.txt", tmp);
    remove(q);

    /* spiece.model: truncated at several points, and with garbage */
    snprintf(p, sizeof p, "%s/tiny-sd3/tokenizer_3/spiece.model", g_root);
    size_t n;
    char *model = file_read_all(p, 64u << 20, &n, &err);
    CHECK(model != NULL, "%s", err.msg);
    snprintf(q, sizeof q, "%s/spiece.model", tmp);
    const size_t cuts[] = { 0, 1, 7, 1000, 400000, n > 10 ? n - 3 : 1 };
    for (int i = 0; model && i < 6; i++) {
        write_file(q, model, cuts[i]);
        t5_tok tt;
        st = t5_tok_load_from(&tt, tmp, T5_SRC_SPIECE, &err);
        CHECK(st == SD3_ERR_FORMAT, "spiece.model cut at %zu: %d %s", cuts[i], st, err.msg);
        t5_tok_free(&tt);
    }
    const char garbage[] = "\x0a\xff\xff\xff\xff\x0f\x01\x02";
    write_file(q, garbage, sizeof garbage - 1);
    t5_tok tt;
    st = t5_tok_load_from(&tt, tmp, T5_SRC_SPIECE, &err);
    CHECK(st == SD3_ERR_FORMAT, "garbage spiece.model: %d %s", st, err.msg);
    t5_tok_free(&tt);
    /* a corrupted charsmap: the trie size field made larger than the blob */
    if (model) {
        char *m2 = malloc(n);
        memcpy(m2, model, n);
        /* the charsmap's 4-byte trie size (00 B4 02 00 in SD3's), after its field tag 0x12 and a 3-byte length */
        for (size_t i = 4; i + 4 < n; i++)
            if ((unsigned char)m2[i - 4] == 0x12 && (unsigned char)m2[i] == 0x00 && (unsigned char)m2[i + 1] == 0xB4 && (unsigned char)m2[i + 2] == 0x02 &&
                (unsigned char)m2[i + 3] == 0x00) { m2[i + 3] = 0x7F; break; }
        write_file(q, m2, n);
        st = t5_tok_load_from(&tt, tmp, T5_SRC_SPIECE, &err);
        CHECK(st == SD3_ERR_FORMAT, "corrupt charsmap: %d %s", st, err.msg);
        t5_tok_free(&tt);
        free(m2);
    }
    st = t5_tok_load_from(&tt, "/nonexistent/dir", T5_SRC_AUTO, &err);
    CHECK(st == SD3_ERR_NOT_FOUND, "missing t5 folder: %d %s", st, err.msg);
    t5_tok_free(&tt);
    free(model);
    remove(q);
    rmdir(tmp);

    /* invalid UTF-8 prompts: a clear error from every tokenizer */
    static const char *const bad[] = { "a photo of \xff a cat", "caf\xc3", "\xed\xa0\x80" };
    for (int i = 0; i < 3; i++) {
        int64_t ids[256], mask[256];
        st = clip_tok_encode(tl, bad[i], ids, mask, &err);
        CHECK(st == SD3_ERR_INVALID_ARG && strstr(err.msg, "UTF-8"), "clip_l bad utf-8 #%d: %d", i, st);
        st = clip_tok_encode(tg, bad[i], ids, mask, &err);
        CHECK(st == SD3_ERR_INVALID_ARG, "clip_g bad utf-8 #%d: %d", i, st);
        st = t5_tok_encode(t5, bad[i], 256, ids, mask, &err);
        CHECK(st == SD3_ERR_INVALID_ARG && strstr(err.msg, "UTF-8"), "t5 bad utf-8 #%d: %d", i, st);
    }
    int64_t ids[8], mask[8];
    st = t5_tok_encode(t5, "x", 0, ids, mask, &err);
    CHECK(st == SD3_ERR_INVALID_ARG, "t5 max_len 0 accepted");
}

/* 100 000-character prompts: the truncated result and the time. */
static void test_long_prompt(clip_tok *tl, t5_tok *t5) {
    size_t n = 100000;
    char *s = malloc(n + 1);
    for (size_t i = 0; i < n; i += 4) memcpy(s + i, "cat ", 4);
    s[n] = 0;
    int64_t ids[256], mask[256];
    sd3_err err = { 0 };
    double t0 = sd3_time();
    sd3_status st = clip_tok_encode(tl, s, ids, mask, &err);
    double t1 = sd3_time();
    int ok = st == SD3_OK && ids[0] == 49406 && ids[76] == 49407 && mask[76] == 1;
    for (int i = 1; i < 76 && ok; i++) ok = ids[i] == 2368;
    CHECK(ok, "clip 25000 x 'cat ': %s", err.msg);
    st = t5_tok_encode(t5, s, 256, ids, mask, &err);
    double t2 = sd3_time();
    ok = st == SD3_OK && ids[255] == 1 && mask[255] == 1;
    for (int i = 0; i < 255 && ok; i++) ok = ids[i] == 1712;  /* "▁cat" */
    CHECK(ok, "t5 25000 x 'cat ': %s", err.msg);
    /* one 100 000-letter word: BPE must stay fast */
    memset(s, 'a', n);
    int64_t *all = NULL;
    size_t na = 0;
    st = clip_tok_encode_full(tl, s, n, &all, &na, &err);
    double t3 = sd3_time();
    CHECK(st == SD3_OK && na > 2 && all[0] == 49406 && all[na - 1] == 49407, "clip 100000 x 'a': %s", err.msg);
    /* the same word through transformers' literal loop (few distinct merges apply, so it is quick here) */
    int64_t *ref = NULL;
    size_t nr = 0;
    tl->merges_ordered = 0;
    tok_strmap_free(&tl->cache);
    tl->cache_ids.n = 0;
    sd3_status st2 = clip_tok_encode_full(tl, s, n, &ref, &nr, &err);
    tl->merges_ordered = 1;
    CHECK(st2 == SD3_OK && st == SD3_OK && nr == na && !memcmp(ref, all, na * sizeof *all),
          "clip 100000 x 'a': heap BPE (%zu ids) differs from the reference loop (%zu ids)", na, nr);
    free(ref);
    free(all);
    double t3b = sd3_time();
    st = t5_tok_encode(t5, s, 77, ids, mask, &err);
    double t4 = sd3_time();
    CHECK(st == SD3_OK && ids[76] == 1 && mask[76] == 1, "t5 100000 x 'a': %s", err.msg);
    printf("  100000-char prompts: clip %.3fs, t5 %.3fs; one 100000-letter word: clip %.3fs (reference loop %.3fs), t5 %.3fs\n",
           t1 - t0, t2 - t1, t3 - t2, t3b - t3, t4 - t3b);
    CHECK(t1 - t0 + t2 - t1 + t3 - t2 + t4 - t3b < 20.0, "long prompts took %.1fs", t1 - t0 + t2 - t1 + t3 - t2 + t4 - t3b);
    free(s);
}

/* T5 truncation and padding shapes. */
static void test_t5_shapes(t5_tok *t5) {
    int64_t ids[256], mask[256];
    sd3_err err = { 0 };
    CHECK(t5_tok_encode(t5, "a photo of a cat", 77, ids, mask, &err) == SD3_OK, "%s", err.msg);
    const int64_t want[] = { 3, 9, 1202, 13, 3, 9, 1712, 1 };
    int ok = 1;
    for (int i = 0; i < 77; i++) ok &= ids[i] == (i < 8 ? want[i] : 0) && mask[i] == (i < 8);
    CHECK(ok, "t5 'a photo of a cat' at 77");
    CHECK(t5_tok_encode(t5, "a photo of a cat", 1, ids, mask, &err) == SD3_OK && ids[0] == 1 && mask[0] == 1,
          "t5 max_len 1 keeps only </s>");
}

/* Load the real SD3 tokenizers of the golden tiny-sd3 folder and run every group of checks. */
int main(int argc, char **argv) {
    const char *root = argc > 1 ? argv[1] : getenv("SD3_GOLDEN");
    snprintf(g_root, sizeof g_root, "%s", root ? root : "../shared/golden");
    char dir[4200];
    sd3_err err = { 0 };
    test_unicode();

    clip_tok tl, tg;
    t5_tok t5s, t5j;
    snprintf(dir, sizeof dir, "%s/tiny-sd3/tokenizer", g_root);
    int ok_l = clip_tok_load(&tl, dir, &err) == SD3_OK;
    CHECK(ok_l, "%s", err.msg);
    snprintf(dir, sizeof dir, "%s/tiny-sd3/tokenizer_2", g_root);
    int ok_g = clip_tok_load(&tg, dir, &err) == SD3_OK;
    CHECK(ok_g, "%s", err.msg);
    snprintf(dir, sizeof dir, "%s/tiny-sd3/tokenizer_3", g_root);
    int ok_s = t5_tok_load_from(&t5s, dir, T5_SRC_SPIECE, &err) == SD3_OK;
    CHECK(ok_s, "%s", err.msg);
    int ok_j = t5_tok_load_from(&t5j, dir, T5_SRC_JSON, &err) == SD3_OK;
    CHECK(ok_j, "%s", err.msg);
    if (ok_s && ok_j) {
        CHECK(t5s.n_vocab == 32100 && t5j.n_vocab == 32100, "vocab sizes %d %d", t5s.n_vocab, t5j.n_vocab);
        CHECK(t5s.unk_score == t5j.unk_score, "unk scores differ");
    }
    if (ok_s) { test_rust_rows(&t5s, "spiece.model"); test_t5_shapes(&t5s); }
    if (ok_j) test_rust_rows(&t5j, "tokenizer.json");
    if (ok_l && ok_g) test_clip_examples(&tl, &tg);
    if (ok_l) test_bpe_equivalence(&tl);
    if (ok_l && ok_g && ok_s) test_bad_input(&tl, &tg, &t5s);
    if (ok_l && ok_s) test_long_prompt(&tl, &t5s);
    /* the bare vocabulary folders of shared/tokenizers (no configs): the built-in defaults must give the
     * same ids */
    snprintf(dir, sizeof dir, "%s/../tokenizers/t5/spiece.model", g_root);
    struct stat sb;
    if (stat(dir, &sb) == 0) {
        t5_tok bare;
        snprintf(dir, sizeof dir, "%s/../tokenizers/t5", g_root);
        int ok_b = t5_tok_load_from(&bare, dir, T5_SRC_SPIECE, &err) == SD3_OK;
        CHECK(ok_b, "%s", err.msg);
        if (ok_b) { test_rust_rows(&bare, "bare spiece.model, default added tokens"); t5_tok_free(&bare); }
        clip_tok bc;
        snprintf(dir, sizeof dir, "%s/../tokenizers/clip", g_root);
        int ok_c = clip_tok_load(&bc, dir, &err) == SD3_OK;
        CHECK(ok_c, "%s", err.msg);
        if (ok_c) {
            const int64_t cat[] = { 49406, 320, 1125, 539, 320, 2368, 49407 };
            check_clip(&bc, "a photo of a cat", cat, 7, 49407, "bare clip folder");
            clip_tok_free(&bc);
        }
    } else {
        printf("  (no %s: bare-folder checks not run)\n", dir);
    }
    if (ok_l) clip_tok_free(&tl);
    if (ok_g) clip_tok_free(&tg);
    if (ok_s) t5_tok_free(&t5s);
    if (ok_j) t5_tok_free(&t5j);
    TEST_MAIN_END("test_tokenizers");
}

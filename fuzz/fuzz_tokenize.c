/*
 * fuzz_tokenize.c — both tokenizers on arbitrary bytes, with the real SD3 vocabularies of the tiny golden
 * pipeline loaded once: CLIP (tokenizer/) padded/truncated and full, T5 (tokenizer_3/, from spiece.model
 * and from tokenizer.json) at 77 and 256 tokens and full. Checks: a failure has a message (invalid UTF-8
 * is an error, never a crash), ids lie inside the vocabulary, the mask is 0/1, and the two T5 sources
 * agree.
 */
#include "fuzz_common.h"
#include "text/clip_tok.h"
#include "text/t5_tok.h"

static clip_tok clip;
static t5_tok t5s, t5j;
static long n_runs;

static void load_all(void) {
    char dir[1024];
    sd3_err err = {0};
    snprintf(dir, sizeof dir, "%s/tiny-sd3/tokenizer", fz_golden());
    if (clip_tok_load(&clip, dir, &err) != SD3_OK) { fprintf(stderr, "%s\n", err.msg); abort(); }
    snprintf(dir, sizeof dir, "%s/tiny-sd3/tokenizer_3", fz_golden());
    if (t5_tok_load_from(&t5s, dir, T5_SRC_SPIECE, &err) != SD3_OK) { fprintf(stderr, "%s\n", err.msg); abort(); }
    if (t5_tok_load_from(&t5j, dir, T5_SRC_JSON, &err) != SD3_OK) { fprintf(stderr, "%s\n", err.msg); abort(); }
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    load_all();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *text = (const char *)data;
    sd3_err err = {0};
    /* the CLIP word cache grows with every new word by design; start afresh now and then so a long run
     * measures the code, not the cache */
    if (++n_runs % 20000 == 0) {
        char dir[1024];
        snprintf(dir, sizeof dir, "%s/tiny-sd3/tokenizer", fz_golden());
        clip_tok_free(&clip);
        if (clip_tok_load(&clip, dir, &err) != SD3_OK) { fprintf(stderr, "%s\n", err.msg); abort(); }
    }
    int64_t ids[256], mask[256];
    sd3_status st = clip_tok_encode_n(&clip, text, size, ids, mask, &err);
    fz_check_err(st, &err, "clip_tok_encode_n");
    if (st == SD3_OK)
        for (int i = 0; i < CLIP_TOK_LEN; i++)
            if (ids[i] < 0 || ids[i] >= clip.vocab_size || (mask[i] != 0 && mask[i] != 1)) abort();
    int64_t *full = NULL;
    size_t n = 0;
    memset(&err, 0, sizeof err);
    st = clip_tok_encode_full(&clip, text, size, &full, &n, &err);
    fz_check_err(st, &err, "clip_tok_encode_full");
    free(full);

    for (int which = 0; which < 2; which++) {
        int L = which ? 256 : 77;
        int64_t ids2[256], mask2[256];
        memset(&err, 0, sizeof err);
        sd3_status a = t5_tok_encode_n(&t5s, text, size, L, ids, mask, &err);
        fz_check_err(a, &err, "t5_tok_encode_n (spiece)");
        memset(&err, 0, sizeof err);
        sd3_status b = t5_tok_encode_n(&t5j, text, size, L, ids2, mask2, &err);
        fz_check_err(b, &err, "t5_tok_encode_n (json)");
        if ((a == SD3_OK) != (b == SD3_OK)) { fprintf(stderr, "spiece/json disagree on success\n"); abort(); }
        if (a == SD3_OK) {
            if (memcmp(ids, ids2, sizeof(int64_t) * (size_t)L) || memcmp(mask, mask2, sizeof(int64_t) * (size_t)L)) {
                fprintf(stderr, "spiece and tokenizer.json ids differ\n");
                abort();
            }
            for (int i = 0; i < L; i++)
                if (ids[i] < 0 || (mask[i] != 0 && mask[i] != 1)) abort();
        }
    }
    memset(&err, 0, sizeof err);
    st = t5_tok_encode_full(&t5s, text, size, &full, &n, &err);
    fz_check_err(st, &err, "t5_tok_encode_full");
    free(full);
    return 0;
}

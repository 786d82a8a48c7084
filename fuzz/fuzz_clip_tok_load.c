/*
 * fuzz_clip_tok_load.c — the CLIP tokenizer folder loader (clip_tok_load) on arbitrary files: the input
 * is cut at FZ_SEP into vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json of a
 * temp folder (absent parts = absent files). A tokenizer that loads is then used on a few fixed prompts
 * (specials, Unicode, long words), so structures a bad file leaves behind are exercised too.
 */
#include "fuzz_common.h"
#include "fuzz_split.h"
#include "text/clip_tok.h"

static const char *files[4] = {"tok/vocab.json", "tok/merges.txt", "tok/tokenizer_config.json", "tok/special_tokens_map.json"};
static const char *prompts[] = {"a photo of a cat", "<|startoftext|>hello<|endoftext|> world!!", "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac 's 'll 123",
                                "", "   ", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa b"};

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    fz_mkdir("tok");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *ptr[4];
    size_t len[4];
    int n = fz_split(data, size, ptr, len, 4);
    for (int i = 0; i < 4; i++) {
        char p[512];
        fz_path(p, sizeof p, files[i]);
        if (i < n) fz_write(files[i], ptr[i], len[i]);
        else unlink(p);
    }
    char dir[512];
    fz_path(dir, sizeof dir, "tok");
    clip_tok tok;
    sd3_err err = {0};
    sd3_status st = clip_tok_load(&tok, dir, &err);
    fz_check_err(st, &err, "clip_tok_load");
    if (st != SD3_OK) return 0;
    for (size_t k = 0; k < sizeof prompts / sizeof *prompts; k++) {
        int64_t ids[CLIP_TOK_LEN], mask[CLIP_TOK_LEN];
        memset(&err, 0, sizeof err);
        st = clip_tok_encode(&tok, prompts[k], ids, mask, &err);
        fz_check_err(st, &err, "clip_tok_encode");
    }
    clip_tok_free(&tok);
    return 0;
}

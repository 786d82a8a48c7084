/*
 * fuzz_t5_tok_load.c — the T5 tokenizer loaders on arbitrary files: byte 0 picks the source (even:
 * spiece.model, a SentencePiece protobuf; odd: tokenizer.json), the rest is cut at FZ_SEP into that file
 * and tokenizer_config.json of a temp folder. A tokenizer that loads is used on a few fixed prompts.
 */
#include "fuzz_common.h"
#include "fuzz_split.h"
#include "text/t5_tok.h"

static const char *prompts[] = {"a photo of a cat", "<extra_id_0> x </s> <pad><unk>", "caf\xc3\xa9 \xef\xbc\xa1\xe2\x91\xa0 \xe6\x97\xa5  two  spaces ",
                                "", "\xe2\x96\x81\xe2\x96\x81", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"};

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    fz_mkdir("tok");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    t5_source src = (data[0] & 1) ? T5_SRC_JSON : T5_SRC_SPIECE;
    const uint8_t *ptr[2];
    size_t len[2];
    int n = fz_split(data + 1, size - 1, ptr, len, 2);
    char p[512];
    fz_path(p, sizeof p, "tok/spiece.model");
    unlink(p);
    fz_path(p, sizeof p, "tok/tokenizer.json");
    unlink(p);
    fz_path(p, sizeof p, "tok/tokenizer_config.json");
    unlink(p);
    fz_write(src == T5_SRC_JSON ? "tok/tokenizer.json" : "tok/spiece.model", ptr[0], len[0]);
    if (n > 1) fz_write("tok/tokenizer_config.json", ptr[1], len[1]);
    char dir[512];
    fz_path(dir, sizeof dir, "tok");
    t5_tok tok;
    sd3_err err = {0};
    sd3_status st = t5_tok_load_from(&tok, dir, src, &err);
    fz_check_err(st, &err, "t5_tok_load_from");
    if (st != SD3_OK) return 0;
    for (size_t k = 0; k < sizeof prompts / sizeof *prompts; k++) {
        int64_t ids[32], mask[32];
        memset(&err, 0, sizeof err);
        st = t5_tok_encode(&tok, prompts[k], 32, ids, mask, &err);
        fz_check_err(st, &err, "t5_tok_encode");
    }
    t5_tok_free(&tok);
    return 0;
}

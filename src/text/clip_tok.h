/*
 * clip_tok.h — the CLIP BPE tokenizer of SD3's `tokenizer/` (CLIP-L) and `tokenizer_2/` (CLIP-G)
 * folders, reproducing transformers' slow CLIPTokenizer without ftfy (golden README, "CLIP
 * tokenizers: exact behaviour").
 *
 *   clip_tok tok;
 *   sd3_err err = {0};
 *   if (clip_tok_load(&tok, "model/tokenizer", &err) != SD3_OK) { ... err.msg ... }
 *   int64_t ids[CLIP_TOK_LEN], mask[CLIP_TOK_LEN];
 *   clip_tok_encode(&tok, "a photo of a cat", ids, mask, &err);  // 49406 320 1125 539 320 2368 49407 pad...
 *   clip_tok_free(&tok);
 *
 * Folder: vocab.json, merges.txt (header line + merges; at most the first 48894 are used, as
 * transformers does), tokenizer_config.json / special_tokens_map.json (bos, eos, unk, pad and the
 * added tokens; the pad id comes from the folder: 49407 for tokenizer, 0 = "!" for tokenizer_2).
 *
 * Thread safety: encoding fills a per-tokenizer word cache, so one clip_tok must not be used by two
 * threads at once. Failure contract: every function returns SD3_OK or an error status with a message
 * in err naming the file and the problem; invalid UTF-8 in the text is SD3_ERR_INVALID_ARG.
 */
#ifndef SD3_CLIP_TOK_H
#define SD3_CLIP_TOK_H

#include <stdint.h>
#include "core/core.h"
#include "text/tok_util.h"

#define CLIP_TOK_LEN 77          /* ids per prompt: bos + 75 + eos, padded */
#define CLIP_TOK_MAX_MERGES 48894 /* transformers reads merges[1 : 49152 - 256 - 2 + 1] */

typedef struct clip_added {
    uint32_t *cps;  /* the token text as code points */
    size_t n;
    int64_t id;
} clip_added;

typedef struct clip_tok {
    tok_strmap sym;          /* BPE symbol string -> symbol index (vocab tokens and merge results) */
    int32_t *sym_vocab;      /* symbol index -> vocab id, -1 if not in the vocabulary */
    size_t sym_vocab_cap;
    tok_u64map merges;       /* (left symbol << 32 | right symbol) -> (rank << 32 | merged symbol) */
    int n_merges;
    int merges_ordered;      /* every merge's parts exist before it (lets BPE use a heap) */
    int32_t byte_sym[256];     /* symbol of each byte (bytes_to_unicode), -1 if missing */
    int32_t byte_sym_end[256]; /* the same + "</w>" */
    clip_added *added;       /* added tokens, cut out of the text before anything else */
    int n_added;
    int64_t bos_id, eos_id, pad_id, unk_id;
    int64_t special_bpe[2];  /* vocab ids of "<|startoftext|>" / "<|endoftext|>" met by the regex */
    tok_strmap cache;        /* word (mapped bytes) -> offset into cache_ids (count at that offset) */
    tok_ids cache_ids;
    int vocab_size;
} clip_tok;

/* Load a tokenizer folder. On failure tok is left freed (clip_tok_free is harmless). */
sd3_status clip_tok_load(clip_tok *tok, const char *folder, sd3_err *err);
void clip_tok_free(clip_tok *tok);

/* Encode len bytes of UTF-8 (len = (size_t)-1: NUL-terminated) as the SD3 pipeline does: [bos] + the
 * first 75 BPE ids + [eos], padded to 77 with the pad id; mask 1 on bos/text/eos, 0 on padding. */
sd3_status clip_tok_encode_n(clip_tok *tok, const char *text, size_t len, int64_t ids[CLIP_TOK_LEN],
                             int64_t mask[CLIP_TOK_LEN], sd3_err *err);
static inline sd3_status clip_tok_encode(clip_tok *tok, const char *text, int64_t ids[CLIP_TOK_LEN],
                                         int64_t mask[CLIP_TOK_LEN], sd3_err *err) {
    return clip_tok_encode_n(tok, text, (size_t)-1, ids, mask, err);
}
/* All ids without truncation or padding, bos and eos included: *ids malloc'd (free()), *n ids. */
sd3_status clip_tok_encode_full(clip_tok *tok, const char *text, size_t len, int64_t **ids, size_t *n,
                                sd3_err *err);

#endif /* SD3_CLIP_TOK_H */

/*
 * t5_tok.h — the T5 tokenizer of SD3's `tokenizer_3/` folder: a SentencePiece unigram model run the way
 * the Rust `tokenizers` library runs SD3's tokenizer.json (what T5TokenizerFast uses; golden README,
 * "T5 tokenizer: exact behaviour"):
 *   added tokens cut out first (<pad> <unk> </s>, <extra_id_N> which also swallow whitespace around them),
 *   per remaining piece: the precompiled nmt_nfkc charsmap (per grapheme cluster, as Rust does),
 *   trailing whitespace stripped, runs of 2+ spaces -> one "▁", spaces -> "▁", "▁" prepended,
 *   split before every "▁", unigram Viterbi per word (unknown characters -> one fused <unk>),
 *   then "</s>" appended, truncation to max_len-1 ids + "</s>", padding with <pad>=0.
 *
 *   t5_tok tok;
 *   sd3_err err = {0};
 *   if (t5_tok_load(&tok, "model/tokenizer_3", &err) != SD3_OK) { ... err.msg ... }
 *   int64_t ids[256], mask[256];
 *   t5_tok_encode(&tok, "a photo of a cat", 256, ids, mask, &err);  // 3 9 1202 13 3 9 1712 1 0 ...
 *   t5_tok_free(&tok);
 *
 * Sources: spiece.model (protobuf: pieces + normalizer_spec.precompiled_charsmap; the sentinel tokens
 * <extra_id_0..99> are added as the transformers T5 converter does) or tokenizer.json (Unigram model +
 * Precompiled normalizer). tokenizer_config.json, when present, gives the added tokens.
 *
 * Thread safety: a loaded t5_tok is read-only; encoding from several threads at once is fine.
 * Failure contract: SD3_OK or an error status with a message naming the file and the problem; invalid
 * UTF-8 in the text is SD3_ERR_INVALID_ARG.
 */
#ifndef SD3_T5_TOK_H
#define SD3_T5_TOK_H

#include <stdint.h>
#include "core/core.h"
#include "text/tok_util.h"

typedef struct t5_added {
    uint32_t *cps;  /* token text as code points */
    size_t n;
    int64_t id;
    int lstrip, rstrip;  /* swallow White_Space before / after */
} t5_added;

typedef struct t5_tok {
    tok_strmap pieces;      /* piece text -> id */
    double *scores;         /* [n_vocab] */
    int n_vocab, scores_cap;
    int max_piece_bytes;
    double unk_score;       /* min score - 10, as the Rust Unigram model */
    int64_t unk_id, eos_id, pad_id;
    uint32_t *trie;         /* precompiled charsmap: Darts double-array units (NULL: no charsmap) */
    size_t trie_n;
    char *norm;             /* the replacement strings, NUL-separated */
    size_t norm_len;
    t5_added *added;
    int n_added;
} t5_tok;

typedef enum t5_source { T5_SRC_AUTO = 0, T5_SRC_SPIECE, T5_SRC_JSON } t5_source;

/* Load a tokenizer_3 folder: spiece.model if present, else tokenizer.json. On failure tok is freed. */
sd3_status t5_tok_load(t5_tok *tok, const char *folder, sd3_err *err);
/* Same, choosing the source explicitly. */
sd3_status t5_tok_load_from(t5_tok *tok, const char *folder, t5_source src, sd3_err *err);
void t5_tok_free(t5_tok *tok);

/* Encode len bytes of UTF-8 (len = (size_t)-1: NUL-terminated) into ids[max_len], mask[max_len]
 * (max_len >= 1): the first max_len-1 ids, "</s>", then <pad> with mask 0. */
sd3_status t5_tok_encode_n(const t5_tok *tok, const char *text, size_t len, int max_len, int64_t *ids,
                           int64_t *mask, sd3_err *err);
static inline sd3_status t5_tok_encode(const t5_tok *tok, const char *text, int max_len, int64_t *ids,
                                       int64_t *mask, sd3_err *err) {
    return t5_tok_encode_n(tok, text, (size_t)-1, max_len, ids, mask, err);
}
/* All ids, "</s>" included, no truncation or padding: *ids malloc'd (free()), *n ids. */
sd3_status t5_tok_encode_full(const t5_tok *tok, const char *text, size_t len, int64_t **ids, size_t *n,
                              sd3_err *err);

#endif /* SD3_T5_TOK_H */

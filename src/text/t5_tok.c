/*
 * t5_tok.c — SentencePiece unigram tokenizer for T5, following the Rust `tokenizers` pipeline of SD3's
 * tokenizer.json (see t5_tok.h). Parses spiece.model's protobuf by hand or reads tokenizer.json.
 */
#include "text/t5_tok.h"

#include <stdlib.h>
#include <string.h>
#include "io/json_util.h"
#include "text/unicode.h"

#define T5_MAX_MODEL_BYTES (256u << 20)
#define K_UNK_PENALTY 10.0
static const char METASPACE[] = "\xE2\x96\x81";  /* U+2581 "▁" */

/* ------------------------------------------------------------------------------------------------ */
/* Precompiled charsmap: a Darts-clone double array over UTF-8 bytes + a NUL-separated string pool     */
/* ------------------------------------------------------------------------------------------------ */

/* Offset of the first byte of p[0..n) that breaks UTF-8 (strict: no overlongs, surrogates or values past
 * U+10FFFF; NUL separators are fine), or (size_t)-1 if it is all valid. */
static size_t pool_utf8_error(const char *p, size_t n) {
    const unsigned char *s = (const unsigned char *)p;
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t k = c < 0x80 ? 1 : (c >= 0xC2 && c <= 0xDF) ? 2 : (c >= 0xE0 && c <= 0xEF) ? 3 : (c >= 0xF0 && c <= 0xF4) ? 4 : 0;
        if (!k || i + k > n) return i;
        for (size_t j = 1; j < k; j++)
            if ((s[i + j] & 0xC0) != 0x80) return i;
        if (k == 3 && ((c == 0xE0 && s[i + 1] < 0xA0) || (c == 0xED && s[i + 1] >= 0xA0))) return i;
        if (k == 4 && ((c == 0xF0 && s[i + 1] < 0x90) || (c == 0xF4 && s[i + 1] >= 0x90))) return i;
        i += k;
    }
    return (size_t)-1;
}

/* Split a charsmap blob (u32 trie byte size, the trie units, the replacement pool) into tok. */
static sd3_status charsmap_parse(t5_tok *t, const unsigned char *b, size_t n, const char *what, sd3_err *err) {
    if (n < 4) return sd3_errf(err, SD3_ERR_FORMAT, "%s: precompiled_charsmap of %zu bytes is truncated", what, n);
    uint32_t tsize = (uint32_t)b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16) | ((uint32_t)b[3] << 24);
    if (tsize % 4 || tsize == 0 || (size_t)tsize > n - 4)
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: precompiled_charsmap trie size %u does not fit its %zu bytes", what, tsize, n);
    t->trie_n = tsize / 4;
    t->trie = malloc(tsize);
    t->norm_len = n - 4 - tsize;
    t->norm = malloc(t->norm_len + 1);
    if (!t->trie || !t->norm) return sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", what);
    for (size_t i = 0; i < t->trie_n; i++) {
        const unsigned char *p = b + 4 + 4 * i;
        t->trie[i] = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
    }
    memcpy(t->norm, b + 4 + tsize, t->norm_len);
    t->norm[t->norm_len] = 0;
    /* The encoder walks replacements by UTF-8 lead bytes: a pool that is not valid UTF-8 would make it step
     * past its buffers (found by fuzzing), so reject it here. */
    size_t bad = pool_utf8_error(t->norm, t->norm_len);
    if (bad != (size_t)-1)
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: precompiled_charsmap replacement strings are not valid UTF-8 (byte %zu)", what, bad);
    return SD3_OK;
}

/* Darts-clone unit fields: child offset, label byte (with the leaf bit kept so leaves never match a
 * label), has-leaf flag, leaf value. */
static inline uint32_t du_offset(uint32_t u) { return (u >> 10) << ((u & (1u << 9)) >> 6); }
static inline uint32_t du_label(uint32_t u) { return u & ((1u << 31) | 0xFFu); }
static inline int du_has_leaf(uint32_t u) { return (u >> 8) & 1; }
static inline uint32_t du_value(uint32_t u) { return u & ((1u << 31) - 1); }

/* spm_precompiled's transform(): the replacement under the SHORTEST trie key that is a prefix of
 * key[0..n) (a NUL byte ends the search), or NULL; *rlen its length. Indices are bounds-checked so a
 * corrupt charsmap cannot read outside the arrays. */
static const char *charsmap_transform(const t5_tok *t, const char *key, size_t n, size_t *rlen) {
    if (!t->trie) return NULL;
    size_t pos = 0;
    uint32_t unit = t->trie[0];
    pos ^= du_offset(unit);
    for (size_t i = 0; i < n; i++) {
        unsigned c = (unsigned char)key[i];
        if (!c) return NULL;
        pos ^= c;
        if (pos >= t->trie_n) return NULL;
        unit = t->trie[pos];
        if (du_label(unit) != c) return NULL;
        pos ^= du_offset(unit);
        if (pos >= t->trie_n) return NULL;
        if (du_has_leaf(unit)) {
            uint32_t v = du_value(t->trie[pos]);
            if (v >= t->norm_len) return NULL;
            *rlen = strlen(t->norm + v);
            return t->norm + v;
        }
    }
    return NULL;
}

/* ------------------------------------------------------------------------------------------------ */
/* Loading                                                                                          */
/* ------------------------------------------------------------------------------------------------ */

/* Add a vocabulary piece (id = its position; a repeated text maps to its last id, as Rust's
 * token_to_ids built by insertion does); -1 when out of memory. */
static int add_piece(t5_tok *t, const char *s, size_t len, double score) {
    if (t->n_vocab == t->scores_cap) {
        int nc = t->scores_cap ? t->scores_cap * 2 : 32768;
        double *ns = realloc(t->scores, (size_t)nc * sizeof *ns);
        if (!ns) return -1;
        t->scores = ns;
        t->scores_cap = nc;
    }
    if (tok_strmap_put(&t->pieces, s, len, t->n_vocab) < 0) return -1;
    t->scores[t->n_vocab++] = score;
    if ((int)len > t->max_piece_bytes) t->max_piece_bytes = (int)len;
    return 0;
}

/* Read a protobuf varint at *p (< end); -1 if truncated or longer than 10 bytes. */
static int pb_varint(const unsigned char **p, const unsigned char *end, uint64_t *v) {
    uint64_t r = 0;
    for (int s = 0; s < 70; s += 7) {
        if (*p >= end) return -1;
        unsigned char b = *(*p)++;
        r |= (uint64_t)(b & 0x7F) << s;
        if (!(b & 0x80)) { *v = r; return 0; }
    }
    return -1;
}

/* Skip one field of wire type wt; -1 on malformed data (groups are not used by sentencepiece). */
static int pb_skip(const unsigned char **p, const unsigned char *end, unsigned wt) {
    uint64_t v;
    switch (wt) {
    case 0: return pb_varint(p, end, &v);
    case 1: if (end - *p < 8) return -1; *p += 8; return 0;
    case 2: if (pb_varint(p, end, &v) || v > (uint64_t)(end - *p)) return -1; *p += v; return 0;
    case 5: if (end - *p < 4) return -1; *p += 4; return 0;
    default: return -1;
    }
}

/* spiece.model: ModelProto { repeated SentencePiece pieces = 1 {string piece = 1; float score = 2;
 * Type type = 3}; TrainerSpec trainer_spec = 2 {int32 vocab_size = 4}; NormalizerSpec normalizer_spec = 3
 * {string name = 1; bytes precompiled_charsmap = 2} }. Protobuf has no end marker, so a file cut at a
 * field boundary is caught by the checks after parsing: the normalizer_spec must be there and the
 * number of pieces must equal trainer_spec.vocab_size. */
static sd3_status load_spiece(t5_tok *t, const char *path, sd3_err *err) {
    size_t len;
    char *buf = file_read_all(path, T5_MAX_MODEL_BYTES, &len, err);
    if (!buf) return err ? err->status : SD3_ERR_IO;
    const unsigned char *p = (const unsigned char *)buf, *end = p + len;
    sd3_status st = SD3_OK;
    int bad = 0, have_norm = 0;
    long long declared = -1;
    const unsigned char *cmap = NULL;
    size_t cmap_len = 0;
    t->unk_id = -1;
    while (p < end && !bad && st == SD3_OK) {
        uint64_t tag, l;
        if (pb_varint(&p, end, &tag)) { bad = 1; break; }
        unsigned field = (unsigned)(tag >> 3), wt = (unsigned)(tag & 7);
        if (!(field >= 1 && field <= 3 && wt == 2)) {
            if (pb_skip(&p, end, wt)) bad = 1;
            continue;
        }
        if (pb_varint(&p, end, &l) || l > (uint64_t)(end - p)) { bad = 1; break; }
        const unsigned char *q = p, *qe = p + l;
        p = qe;
        const char *piece = NULL;
        size_t piece_len = 0;
        float score = 0;
        uint64_t type = 1, v;
        if (field == 3) have_norm = 1;
        while (q < qe && !bad) {
            uint64_t t2, l2;
            if (pb_varint(&q, qe, &t2)) { bad = 1; break; }
            unsigned f2 = (unsigned)(t2 >> 3), w2 = (unsigned)(t2 & 7);
            if (field == 1 && f2 == 1 && w2 == 2) {
                if (pb_varint(&q, qe, &l2) || l2 > (uint64_t)(qe - q)) { bad = 1; break; }
                piece = (const char *)q; piece_len = (size_t)l2; q += l2;
            } else if (field == 1 && f2 == 2 && w2 == 5) {
                if (qe - q < 4) { bad = 1; break; }
                uint32_t bits = (uint32_t)q[0] | ((uint32_t)q[1] << 8) | ((uint32_t)q[2] << 16) | ((uint32_t)q[3] << 24);
                memcpy(&score, &bits, 4);
                q += 4;
            } else if (field == 1 && f2 == 3 && w2 == 0) {
                if (pb_varint(&q, qe, &type)) bad = 1;
            } else if (field == 2 && f2 == 4 && w2 == 0) {
                if (pb_varint(&q, qe, &v)) bad = 1;
                else declared = (long long)(int32_t)v;
            } else if (field == 3 && f2 == 2 && w2 == 2) {
                if (pb_varint(&q, qe, &l2) || l2 > (uint64_t)(qe - q)) { bad = 1; break; }
                cmap = q; cmap_len = (size_t)l2; q += l2;
            } else if (pb_skip(&q, qe, w2)) bad = 1;
        }
        if (bad || field != 1) continue;
        uint32_t *cps;
        size_t ncp;
        if (!piece || !piece_len) { st = sd3_errf(err, SD3_ERR_FORMAT, "%s: piece %d has no text", path, t->n_vocab); break; }
        if (uc_utf8_decode(piece, piece_len, &cps, &ncp, NULL) != SD3_OK) {
            st = sd3_errf(err, SD3_ERR_FORMAT, "%s: piece %d is not valid UTF-8", path, t->n_vocab);
            break;
        }
        free(cps);
        if (type == 2 && t->unk_id < 0) t->unk_id = t->n_vocab;  /* UNKNOWN */
        if (add_piece(t, piece, piece_len, (double)score)) st = sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", path);
    }
    if (st == SD3_OK && bad)
        st = sd3_errf(err, SD3_ERR_FORMAT, "%s: not a valid SentencePiece model (truncated or corrupt protobuf near byte %zu)",
                      path, (size_t)(p - (const unsigned char *)buf));
    if (st == SD3_OK && t->n_vocab == 0) st = sd3_errf(err, SD3_ERR_FORMAT, "%s: no pieces (not a SentencePiece model?)", path);
    if (st == SD3_OK && !have_norm) st = sd3_errf(err, SD3_ERR_FORMAT, "%s: no normalizer_spec (truncated file?)", path);
    if (st == SD3_OK && declared >= 0 && declared != t->n_vocab)
        st = sd3_errf(err, SD3_ERR_FORMAT, "%s: trainer_spec says %lld pieces but the file has %d (truncated file?)", path,
                      declared, t->n_vocab);
    if (st == SD3_OK && cmap_len) st = charsmap_parse(t, cmap, cmap_len, path, err);
    if (st == SD3_OK && t->unk_id < 0) {
        int32_t u;
        if (tok_strmap_get(&t->pieces, "<unk>", 5, &u)) t->unk_id = u;
        else st = sd3_errf(err, SD3_ERR_FORMAT, "%s: no unknown piece", path);
    }
    free(buf);
    return st;
}

/* Standard base64 (padding optional); NULL on a bad character. */
static unsigned char *b64_decode(const char *s, size_t *out_len) {
    size_t n = strlen(s);
    unsigned char *out = malloc(n / 4 * 3 + 4);
    if (!out) return NULL;
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int v = c >= 'A' && c <= 'Z' ? c - 'A' : c >= 'a' && c <= 'z' ? c - 'a' + 26 : c >= '0' && c <= '9' ? c - '0' + 52
              : c == '+' ? 62 : c == '/' ? 63 : c == '=' ? -2 : -1;
        if (v == -2) break;
        if (v < 0) { free(out); return NULL; }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) { bits -= 8; out[o++] = (unsigned char)(acc >> bits); }
    }
    *out_len = o;
    return out;
}

/* Find the Precompiled normalizer (directly or inside a Sequence). */
static const cJSON *find_precompiled(const cJSON *n) {
    if (!cJSON_IsObject(n)) return NULL;
    const char *type = json_str(n, "type", "");
    if (!strcmp(type, "Precompiled")) return n;
    const cJSON *seq = cJSON_GetObjectItemCaseSensitive(n, "normalizers");
    for (const cJSON *it = cJSON_IsArray(seq) ? seq->child : NULL; it; it = it->next) {
        const cJSON *r = find_precompiled(it);
        if (r) return r;
    }
    return NULL;
}

/* tokenizer.json: model {type Unigram, unk_id, vocab [[piece, score], ...]}, normalizer with the
 * Precompiled charsmap (base64), added_tokens [{id, content, lstrip, rstrip}]. */
static sd3_status load_json(t5_tok *t, const char *path, cJSON **root, sd3_err *err) {
    cJSON *j = json_load_file(path, err);
    if (!j) return err ? err->status : SD3_ERR_FORMAT;
    *root = j;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(j, "model");
    if (!cJSON_IsObject(model) || strcmp(json_str(model, "type", ""), "Unigram"))
        return sd3_errf(err, SD3_ERR_UNSUPPORTED, "%s: model is not a Unigram model", path);
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    if (!cJSON_IsArray(vocab)) return sd3_errf(err, SD3_ERR_FORMAT, "%s: model.vocab missing", path);
    for (const cJSON *it = vocab->child; it; it = it->next) {
        const cJSON *s = cJSON_GetArrayItem(it, 0), *sc = cJSON_GetArrayItem(it, 1);
        if (!cJSON_IsString(s) || !cJSON_IsNumber(sc) || !s->valuestring[0])
            return sd3_errf(err, SD3_ERR_FORMAT, "%s: model.vocab[%d] is not [piece, score]", path, t->n_vocab);
        if (add_piece(t, s->valuestring, strlen(s->valuestring), sc->valuedouble)) 
            return sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", path);
    }
    if (!t->n_vocab) return sd3_errf(err, SD3_ERR_FORMAT, "%s: empty vocabulary", path);
    t->unk_id = json_int(model, "unk_id", -1);
    if (t->unk_id < 0 || t->unk_id >= t->n_vocab) return sd3_errf(err, SD3_ERR_FORMAT, "%s: model.unk_id missing or out of range", path);
    const cJSON *pc = find_precompiled(cJSON_GetObjectItemCaseSensitive(j, "normalizer"));
    const char *b64 = pc ? json_str(pc, "precompiled_charsmap", NULL) : NULL;
    if (b64) {
        size_t n;
        unsigned char *blob = b64_decode(b64, &n);
        if (!blob) return sd3_errf(err, SD3_ERR_FORMAT, "%s: precompiled_charsmap is not base64", path);
        sd3_status st = charsmap_parse(t, blob, n, path, err);
        free(blob);
        if (st != SD3_OK) return st;
    }
    return SD3_OK;
}

/* Add an added token (texts are unique; the first declaration wins). */
static sd3_status add_added(t5_tok *t, const char *content, int64_t id, int lstrip, int rstrip, sd3_err *err) {
    uint32_t *cps;
    size_t n;
    if (uc_utf8_decode(content, strlen(content), &cps, &n, err) != SD3_OK) return err ? err->status : SD3_ERR_FORMAT;
    if (!n) { free(cps); return SD3_OK; }
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].n == n && !memcmp(t->added[i].cps, cps, n * sizeof *cps)) { free(cps); return SD3_OK; }
    t5_added *na = realloc(t->added, (size_t)(t->n_added + 1) * sizeof *na);
    if (!na) { free(cps); return sd3_errf(err, SD3_ERR_NOMEM, "t5 tokenizer: out of memory"); }
    t->added = na;
    t->added[t->n_added++] = (t5_added){ cps, n, id, lstrip, rstrip };
    return SD3_OK;
}

/* Added tokens from a list of {id, content, lstrip, rstrip} objects: an array (tokenizer.json) or an
 * object keyed by id (tokenizer_config.json's added_tokens_decoder). Tokens past the model's pieces
 * (the sentinels) join the unigram vocabulary with score 0, as the T5 converter puts them there. */
static sd3_status added_from_json(t5_tok *t, const cJSON *list, const char *what, sd3_err *err) {
    for (const cJSON *it = list ? list->child : NULL; it; it = it->next) {
        const char *c = json_str(it, "content", NULL);
        long long id = cJSON_IsArray(list) ? (long long)json_int(it, "id", -1) : (it->string ? strtoll(it->string, NULL, 10) : -1);
        if (!c || id < 0 || id > INT32_MAX) return sd3_errf(err, SD3_ERR_FORMAT, "%s: bad added token entry", what);
        sd3_status st = add_added(t, c, id, json_bool(it, "lstrip", 0), json_bool(it, "rstrip", 0), err);
        if (st != SD3_OK) return st;
        if (id == t->n_vocab && !tok_strmap_get(&t->pieces, c, strlen(c), NULL) && add_piece(t, c, strlen(c), 0.0))
            return sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", what);
    }
    return SD3_OK;
}

/* Model pieces and charsmap from the chosen file, then the added tokens (tokenizer.json's list, the
 * folder's tokenizer_config.json, or T5's defaults), the eos/pad ids and the <unk> score. */
sd3_status t5_tok_load_from(t5_tok *t, const char *folder, t5_source src, sd3_err *err) {
    memset(t, 0, sizeof *t);
    char sp[4096], js[4096], cfgp[4096];
    snprintf(sp, sizeof sp, "%s/spiece.model", folder);
    snprintf(js, sizeof js, "%s/tokenizer.json", folder);
    snprintf(cfgp, sizeof cfgp, "%s/tokenizer_config.json", folder);
    if (src == T5_SRC_AUTO) {
        FILE *f = fopen(sp, "rb");
        if (f) fclose(f);
        src = f ? T5_SRC_SPIECE : T5_SRC_JSON;
    }
    cJSON *root = NULL, *cfg = NULL;
    sd3_status st = src == T5_SRC_SPIECE ? load_spiece(t, sp, err) : load_json(t, js, &root, err);
    if (st == SD3_OK) {
        FILE *f = fopen(cfgp, "rb");
        if (f) { fclose(f); if (!(cfg = json_load_file(cfgp, err))) st = err ? err->status : SD3_ERR_FORMAT; }
    }
    if (st == SD3_OK && root) st = added_from_json(t, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), js, err);
    const cJSON *dec = cfg ? cJSON_GetObjectItemCaseSensitive(cfg, "added_tokens_decoder") : NULL;
    if (st == SD3_OK && cJSON_IsObject(dec)) st = added_from_json(t, dec, cfgp, err);
    if (st == SD3_OK && !root && !cJSON_IsObject(dec)) {
        /* no config: T5's defaults, <pad> </s> <unk> and extra_ids sentinels <extra_id_N> = n_pieces + 99 - N */
        static const char *const base[3] = { "<pad>", "</s>", "<unk>" };
        for (int k = 0; k < 3 && st == SD3_OK; k++) {
            int32_t v;
            if (tok_strmap_get(&t->pieces, base[k], strlen(base[k]), &v)) st = add_added(t, base[k], v, 0, 0, err);
        }
        int extra = json_int(cfg, "extra_ids", 100), n0 = t->n_vocab;
        for (int k = extra - 1; k >= 0 && st == SD3_OK; k--) {
            char name[32];
            snprintf(name, sizeof name, "<extra_id_%d>", k);
            st = add_added(t, name, n0 + (extra - 1 - k), 1, 1, err);
            if (st == SD3_OK && add_piece(t, name, strlen(name), 0.0))  st = sd3_errf(err, SD3_ERR_NOMEM, "out of memory");
        }
    }
    if (st == SD3_OK) {
        int32_t v;
        t->eos_id = tok_strmap_get(&t->pieces, "</s>", 4, &v) ? v : -1;
        t->pad_id = tok_strmap_get(&t->pieces, "<pad>", 5, &v) ? v : -1;
        for (int i = 0; i < t->n_added; i++) {
            const t5_added *a = &t->added[i];
            if (a->n == 4 && a->cps[0] == '<' && a->cps[1] == '/' && a->cps[2] == 's' && a->cps[3] == '>') t->eos_id = a->id;
            if (a->n == 5 && a->cps[0] == '<' && a->cps[1] == 'p' && a->cps[2] == 'a' && a->cps[3] == 'd') t->pad_id = a->id;
        }
        if (t->eos_id < 0 || t->pad_id < 0) st = sd3_errf(err, SD3_ERR_FORMAT, "%s: no </s> or <pad> token", folder);
    }
    if (st == SD3_OK) {
        double mn = 0;
        for (int i = 0; i < t->n_vocab; i++) if (i == 0 || t->scores[i] < mn) mn = t->scores[i];
        t->unk_score = mn - K_UNK_PENALTY;
    }
    cJSON_Delete(root);
    cJSON_Delete(cfg);
    if (st != SD3_OK) t5_tok_free(t);
    return st;
}

/* spiece.model when the folder has one, else tokenizer.json. */
sd3_status t5_tok_load(t5_tok *t, const char *folder, sd3_err *err) { return t5_tok_load_from(t, folder, T5_SRC_AUTO, err); }

/* Release everything; safe on a zeroed or failed tokenizer. */
void t5_tok_free(t5_tok *t) {
    tok_strmap_free(&t->pieces);
    free(t->scores);
    free(t->trie);
    free(t->norm);
    for (int i = 0; i < t->n_added; i++) free(t->added[i].cps);
    free(t->added);
    memset(t, 0, sizeof *t);
}

/* ------------------------------------------------------------------------------------------------ */
/* Encoding                                                                                         */
/* ------------------------------------------------------------------------------------------------ */

typedef struct bytebuf { char *p; size_t n, cap; } bytebuf;

/* Append n bytes (kept NUL-terminated); -1 when out of memory. */
static int bb_put(bytebuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (b->n + n + 1 > nc) nc *= 2;
        char *np = realloc(b->p, nc);
        if (!np) return -1;
        b->p = np;
        b->cap = nc;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

/* The Precompiled normalizer as Rust applies it: per extended grapheme cluster, a cluster under 6 bytes
 * is replaced whole by the charsmap entry of its shortest matching prefix, if any; otherwise each
 * character is replaced by its own entry, or kept. */
static int normalize_precompiled(const t5_tok *t, const uint32_t *s, size_t n, bytebuf *out) {
    char g[64];
    for (size_t i = 0; i < n;) {
        size_t e = uc_grapheme_end(s, n, i), gl = 0, rl;
        const char *r;
        for (size_t k = i; k < e && gl < 8; k++) gl += (size_t)uc_utf8_encode(s[k], g + gl);
        if (gl < 6 && (r = charsmap_transform(t, g, gl, &rl))) {
            if (bb_put(out, r, rl)) return -1;
            i = e;
            continue;
        }
        for (size_t k = i; k < e; k++) {
            char c[4];
            int cl = uc_utf8_encode(s[k], c);
            r = charsmap_transform(t, c, (size_t)cl, &rl);
            if (r ? bb_put(out, r, rl) : bb_put(out, c, (size_t)cl)) return -1;
        }
        i = e;
    }
    return 0;
}

/* Byte length of the UTF-8 sequence starting with lead byte c. */
static size_t u8len(unsigned char c) { return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4; }

/* Unigram Viterbi over one word w[0..n) (Rust Unigram::encode_optimized: best path by summed score,
 * candidates visited by increasing length, an <unk> node of one character where no single-character
 * piece exists; consecutive <unk>s fused into one token), ids appended to out. */
static int viterbi(const t5_tok *t, const char *w, size_t n, tok_ids *out) {
    double *score = malloc((n + 1) * sizeof *score);
    long *from = malloc((n + 1) * sizeof *from);
    int32_t *id = malloc((n + 1) * sizeof *id);
    if (!score || !from || !id) { free(score); free(from); free(id); return -1; }
    for (size_t i = 0; i <= n; i++) { score[i] = 0; from[i] = -1; id[i] = -1; }
    for (size_t s = 0; s < n; s += u8len((unsigned char)w[s])) {
        if (s > 0 && from[s] < 0) continue;  /* unreachable (cannot happen: every char has a node) */
        double base = score[s];
        size_t mb = u8len((unsigned char)w[s]);
        int single = 0;
        for (size_t e = s; e < n;) {
            e += u8len((unsigned char)w[e]);
            if (e > n || e - s > (size_t)t->max_piece_bytes) break;
            int32_t v;
            if (tok_strmap_get(&t->pieces, w + s, e - s, &v)) {
                double c = base + t->scores[v];
                if (from[e] < 0 || c > score[e]) { score[e] = c; from[e] = (long)s; id[e] = v; }
                if (e - s == mb) single = 1;
            }
        }
        if (!single) {
            double c = base + t->unk_score;
            size_t e = s + mb;
            if (from[e] < 0 || c > score[e]) { score[e] = c; from[e] = (long)s; id[e] = (int32_t)t->unk_id; }
        }
    }
    /* backtrack into (start, end, id) triples, fusing runs of unknowns */
    size_t cnt = 0;
    for (size_t e = n; e > 0; e = (size_t)from[e]) cnt++;
    size_t *st = malloc((cnt + 1) * sizeof *st), *en = malloc((cnt + 1) * sizeof *en);
    int32_t *ids = malloc((cnt + 1) * sizeof *ids);
    int rc = 0;
    if (!st || !en || !ids) rc = -1;
    else {
        size_t k = cnt;
        for (size_t e = n; e > 0; e = (size_t)from[e]) { k--; st[k] = (size_t)from[e]; en[k] = e; ids[k] = id[e]; }
        for (size_t i = 0; i < cnt && !rc;) {
            if (ids[i] == t->unk_id) {
                size_t j = i;
                while (j + 1 < cnt && ids[j + 1] == t->unk_id) j++;
                int32_t v;
                int64_t x = (j > i && tok_strmap_get(&t->pieces, w + st[i], en[j] - st[i], &v)) ? v : t->unk_id;
                rc = tok_ids_push(out, x);
                i = j + 1;
            } else {
                rc = tok_ids_push(out, ids[i]);
                i++;
            }
        }
    }
    free(st); free(en); free(ids);
    free(score); free(from); free(id);
    return rc;
}

/* One stretch of text between added tokens: charsmap, strip right, " {2,}" -> "▁", " " -> "▁",
 * "▁" prepended unless already there, split before each "▁", Viterbi per word. */
static int encode_text(const t5_tok *t, const uint32_t *s, size_t n, tok_ids *out) {
    if (!n) return 0;
    bytebuf a = { 0 }, b = { 0 };
    int rc = normalize_precompiled(t, s, n, &a);
    if (!rc && a.n) {
        /* strip trailing White_Space (the pool is valid UTF-8: charsmap output or decoded text) */
        size_t end = a.n;
        while (end > 0) {
            size_t k = end - 1;
            while (k > 0 && ((unsigned char)a.p[k] & 0xC0) == 0x80) k--;
            const unsigned char *q = (const unsigned char *)a.p + k;
            size_t l = end - k;
            uint32_t cp = l == 1 ? q[0] : l == 2 ? ((q[0] & 0x1Fu) << 6) | (q[1] & 0x3Fu)
                        : l == 3 ? ((q[0] & 0x0Fu) << 12) | ((q[1] & 0x3Fu) << 6) | (q[2] & 0x3Fu)
                                 : ((q[0] & 0x07u) << 18) | ((q[1] & 0x3Fu) << 12) | ((q[2] & 0x3Fu) << 6) | (q[3] & 0x3Fu);
            if (!uc_is_white_space(cp)) break;
            end = k;
        }
        /* spaces: runs of 2+ become one "▁", single ones "▁" */
        for (size_t i = 0; i < end && !rc;) {
            if (a.p[i] == ' ') {
                size_t j = i;
                while (j < end && a.p[j] == ' ') j++;
                rc = bb_put(&b, METASPACE, 3);
                i = j;
            } else {
                rc = bb_put(&b, a.p + i, 1);
                i++;
            }
        }
    }
    if (!rc && b.n) {
        const char *w = b.p;
        size_t wn = b.n;
        bytebuf c = { 0 };
        if (wn < 3 || memcmp(w, METASPACE, 3)) {
            rc = bb_put(&c, METASPACE, 3);
            if (!rc) rc = bb_put(&c, w, wn);
            w = c.p;
            wn = c.n;
        }
        /* words: each starts at a "▁" (MergedWithNext) */
        for (size_t i = 0; i < wn && !rc;) {
            size_t j = i + (memcmp(w + i, METASPACE, 3) == 0 ? 3 : 0);
            while (j < wn && !(j + 3 <= wn && memcmp(w + j, METASPACE, 3) == 0)) j++;
            if (j == i) j = i + 1;
            rc = viterbi(t, w + i, j - i, out);
            i = j;
        }
        free(c.p);
    }
    free(a.p);
    free(b.p);
    return rc;
}

/* Added tokens cut out of the raw text, each stretch between them encoded, "</s>" appended. */
sd3_status t5_tok_encode_full(const t5_tok *t, const char *text, size_t len, int64_t **ids, size_t *n, sd3_err *err) {
    *ids = NULL;
    *n = 0;
    if (!t->n_vocab) return sd3_errf(err, SD3_ERR_INVALID_ARG, "t5 tokenizer: not loaded");
    if (!text) return sd3_errf(err, SD3_ERR_INVALID_ARG, "t5 tokenizer: NULL text");
    if (len == (size_t)-1) len = strlen(text);
    uint32_t *cps;
    size_t nc;
    sd3_status st = uc_utf8_decode(text, len, &cps, &nc, err);
    if (st != SD3_OK) return st;
    tok_ids out = { 0 };
    int rc = 0;
    /* added tokens: leftmost-longest matches on the raw text; lstrip/rstrip widen a match over
     * White_Space (never back into the previous match) */
    size_t seg = 0;
    for (size_t i = 0; i < nc && !rc;) {
        int best = -1;
        for (int k = 0; k < t->n_added; k++) {
            const t5_added *ad = &t->added[k];
            if (ad->n <= nc - i && (best < 0 || ad->n > t->added[best].n) && !memcmp(cps + i, ad->cps, ad->n * sizeof *cps))
                best = k;
        }
        if (best < 0) { i++; continue; }
        const t5_added *ad = &t->added[best];
        size_t ms = i, me = i + ad->n;
        if (ad->lstrip) while (ms > seg && uc_is_white_space(cps[ms - 1])) ms--;
        if (ad->rstrip) while (me < nc && uc_is_white_space(cps[me])) me++;
        rc = encode_text(t, cps + seg, ms - seg, &out);
        if (!rc) rc = tok_ids_push(&out, ad->id);
        i = seg = me;
    }
    if (!rc) rc = encode_text(t, cps + seg, nc - seg, &out);
    if (!rc) rc = tok_ids_push(&out, t->eos_id);
    free(cps);
    if (rc) { tok_ids_free(&out); return sd3_errf(err, SD3_ERR_NOMEM, "t5 tokenizer: out of memory"); }
    *ids = out.v;
    *n = out.n;
    return SD3_OK;
}

/* The pipeline's call: the first max_len-1 ids, "</s>", then padding with mask 0. */
sd3_status t5_tok_encode_n(const t5_tok *t, const char *text, size_t len, int max_len, int64_t *ids, int64_t *mask,
                           sd3_err *err) {
    if (max_len < 1) return sd3_errf(err, SD3_ERR_INVALID_ARG, "t5 tokenizer: max_len %d < 1", max_len);
    int64_t *all;
    size_t n;
    sd3_status st = t5_tok_encode_full(t, text, len, &all, &n, err);
    if (st != SD3_OK) return st;
    size_t keep = n - 1 > (size_t)max_len - 1 ? (size_t)max_len - 1 : n - 1, k = 0;
    for (; k < keep; k++) ids[k] = all[k];
    ids[k++] = t->eos_id;
    for (size_t i = 0; i < (size_t)max_len; i++) {
        mask[i] = i < k;
        if (i >= k) ids[i] = t->pad_id;
    }
    free(all);
    return SD3_OK;
}

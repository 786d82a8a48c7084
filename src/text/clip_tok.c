/*
 * clip_tok.c — CLIP BPE tokenizer (see clip_tok.h). The steps follow transformers' slow CLIPTokenizer
 * with ftfy absent: added-token split, BasicTokenizer clean-up (control characters dropped, whitespace
 * to space, CJK ideographs spaced, NFC, whitespace split, str.lower()), the CLIP regex written out by
 * hand, GPT-2 byte-to-unicode mapping, BPE by merge rank, ids from vocab.json.
 */
#include "text/clip_tok.h"

#include <stdlib.h>
#include <string.h>
#include "io/json_util.h"
#include "text/unicode.h"

#define CLIP_CACHE_MAX_WORD 256       /* longer words are not cached */
#define CLIP_CACHE_MAX_ENTRIES 200000 /* the cache is dropped when it grows past this */

/* ------------------------------------------------------------------------------------------------ */
/* Symbols                                                                                          */
/* ------------------------------------------------------------------------------------------------ */

/* Index of symbol string s (len bytes), adding it (not in the vocabulary) if new; -1 on OOM. */
static long sym_intern(clip_tok *t, const char *s, size_t len) {
    int32_t v;
    if (tok_strmap_get(&t->sym, s, len, &v)) return v;
    long idx = (long)t->sym.n;
    if (idx >= INT32_MAX) return -1;
    if (tok_strmap_put(&t->sym, s, len, (int32_t)idx) < 0) return -1;
    if ((size_t)idx >= t->sym_vocab_cap) {
        size_t nc = t->sym_vocab_cap ? t->sym_vocab_cap * 2 : 65536;
        int32_t *nv = realloc(t->sym_vocab, nc * sizeof *nv);
        if (!nv) return -1;
        t->sym_vocab = nv;
        t->sym_vocab_cap = nc;
    }
    t->sym_vocab[idx] = -1;
    return idx;
}

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the other 68 bytes to
 * U+0100.. in byte order, so every byte has a visible, unambiguous symbol. */
static uint32_t byte_to_unicode(int b) {
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) return (uint32_t)b;
    int n = 0;
    for (int x = 0; x < b; x++)
        if (!((x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF))) n++;
    return 256u + (uint32_t)n;
}

/* ------------------------------------------------------------------------------------------------ */
/* Loading                                                                                          */
/* ------------------------------------------------------------------------------------------------ */

/* vocab.json: {"token": id, ...}. */
static sd3_status load_vocab(clip_tok *t, const char *path, sd3_err *err) {
    cJSON *j = json_load_file(path, err);
    if (!j) return err ? err->status : SD3_ERR_FORMAT;
    if (!cJSON_IsObject(j)) { cJSON_Delete(j); return sd3_errf(err, SD3_ERR_FORMAT, "%s: not a JSON object", path); }
    int n = 0;
    for (const cJSON *it = j->child; it; it = it->next) {
        double v = cJSON_IsNumber(it) ? it->valuedouble : -1;
        if (!it->string || v < 0 || v > INT32_MAX || v != (double)(int32_t)v) {
            sd3_errf(err, SD3_ERR_FORMAT, "%s: entry %d ('%s') is not a non-negative integer id", path, n,
                     it->string ? it->string : "?");
            cJSON_Delete(j);
            return SD3_ERR_FORMAT;
        }
        long s = sym_intern(t, it->string, strlen(it->string));
        if (s < 0) { cJSON_Delete(j); return sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", path); }
        t->sym_vocab[s] = (int32_t)v;
        if ((int)v + 1 > t->vocab_size) t->vocab_size = (int)v + 1;
        n++;
    }
    cJSON_Delete(j);
    if (!n) return sd3_errf(err, SD3_ERR_FORMAT, "%s: empty vocabulary", path);
    return SD3_OK;
}

/* Whether c is Python-str.split() whitespace in ASCII/Latin-1 terms (merges.txt is split with split()). */
static int is_ws_byte(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

/* merges.txt: a header line, then "left right" per line; rank = line number - 2. transformers strips
 * the file, drops the first line and keeps at most CLIP_TOK_MAX_MERGES merges. */
static sd3_status load_merges(clip_tok *t, const char *path, sd3_err *err) {
    size_t len;
    char *buf = file_read_all(path, 64u << 20, &len, err);
    if (!buf) return err ? err->status : SD3_ERR_IO;
    size_t b = 0, e = len;
    while (b < e && is_ws_byte(buf[b])) b++;
    while (e > b && is_ws_byte(buf[e - 1])) e--;
    if (memchr(buf + b, 0, e - b)) { free(buf); return sd3_errf(err, SD3_ERR_FORMAT, "%s: contains a NUL byte", path); }
    /* skip the header line */
    char *p = memchr(buf + b, '\n', e - b);
    size_t pos = p ? (size_t)(p - buf) + 1 : e;
    int32_t (*trip)[3] = NULL;
    size_t ntrip = 0, trip_cap = 0;
    sd3_status st = SD3_OK;
    int line = 2;
    char *tmp = NULL;
    size_t tmp_cap = 0;
    while (pos < e && t->n_merges < CLIP_TOK_MAX_MERGES) {
        char *nl = memchr(buf + pos, '\n', e - pos);
        size_t end = nl ? (size_t)(nl - buf) : e;
        /* split the line on whitespace: exactly two symbols */
        const char *f[3];
        size_t fl[3];
        int nf = 0;
        size_t i = pos;
        while (i < end) {
            while (i < end && is_ws_byte(buf[i])) i++;
            if (i >= end) break;
            size_t s = i;
            while (i < end && !is_ws_byte(buf[i])) i++;
            if (nf < 3) { f[nf] = buf + s; fl[nf] = i - s; }
            nf++;
        }
        if (nf != 2) {
            st = sd3_errf(err, SD3_ERR_FORMAT, "%s: line %d: expected two symbols separated by a space, found %d",
                          path, line, nf);
            break;
        }
        if (fl[0] + fl[1] > tmp_cap) {
            tmp_cap = (fl[0] + fl[1]) * 2 + 64;
            char *nt = realloc(tmp, tmp_cap);
            if (!nt) { st = sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", path); break; }
            tmp = nt;
        }
        memcpy(tmp, f[0], fl[0]);
        memcpy(tmp + fl[0], f[1], fl[1]);
        long sa = sym_intern(t, f[0], fl[0]), sb = sym_intern(t, f[1], fl[1]), sm = sym_intern(t, tmp, fl[0] + fl[1]);
        if (sa < 0 || sb < 0 || sm < 0) { st = sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", path); break; }
        if (ntrip == trip_cap) {
            trip_cap = trip_cap ? trip_cap * 2 : 4096;
            void *nt = realloc(trip, trip_cap * sizeof *trip);
            if (!nt) { st = sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", path); break; }
            trip = nt;
        }
        trip[ntrip][0] = (int32_t)sa;
        trip[ntrip][1] = (int32_t)sb;
        trip[ntrip][2] = (int32_t)sm;
        ntrip++;
        /* a repeated pair keeps its last rank, as a Python dict built from the list does */
        if (tok_u64map_put(&t->merges, ((uint64_t)sa << 32) | (uint64_t)sb,
                           ((uint64_t)t->n_merges << 32) | (uint64_t)sm)) {
            st = sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", path);
            break;
        }
        t->n_merges++;
        line++;
        pos = end + 1;
    }
    free(tmp);
    free(buf);
    if (st == SD3_OK) {
        /* Ordered merge lists (each part a byte symbol or an earlier merge's result, as BPE training
         * produces) let the heap-based BPE reproduce the pass-by-pass reference exactly. */
        unsigned char *avail = calloc(t->sym.n ? t->sym.n : 1, 1);
        if (!avail) st = sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", path);
        else {
            for (int b2 = 0; b2 < 256; b2++) {
                char u[8];
                int n = uc_utf8_encode(byte_to_unicode(b2), u);
                int32_t v;
                if (tok_strmap_get(&t->sym, u, (size_t)n, &v)) avail[v] = 1;
                memcpy(u + n, "</w>", 4);
                if (tok_strmap_get(&t->sym, u, (size_t)n + 4, &v)) avail[v] = 1;
            }
            t->merges_ordered = 1;
            for (size_t k = 0; k < ntrip; k++) {
                if (!avail[trip[k][0]] || !avail[trip[k][1]]) { t->merges_ordered = 0; break; }
                avail[trip[k][2]] = 1;
            }
            free(avail);
        }
    }
    free(trip);
    return st;
}

/* A special token entry of a config: a string or {"content": string}. */
static const char *token_content(const cJSON *o, const char *key) {
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
    if (cJSON_IsString(v)) return v->valuestring;
    if (cJSON_IsObject(v)) return json_str(v, "content", NULL);
    return NULL;
}

/* Add an added token (no-op if its text is already one). */
static sd3_status add_added(clip_tok *t, const char *content, int64_t id, sd3_err *err) {
    uint32_t *cps;
    size_t n;
    if (uc_utf8_decode(content, strlen(content), &cps, &n, err) != SD3_OK) return err ? err->status : SD3_ERR_FORMAT;
    if (!n) { free(cps); return SD3_OK; }
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].n == n && !memcmp(t->added[i].cps, cps, n * sizeof *cps)) { free(cps); return SD3_OK; }
    clip_added *na = realloc(t->added, (size_t)(t->n_added + 1) * sizeof *na);
    if (!na) { free(cps); return sd3_errf(err, SD3_ERR_NOMEM, "out of memory"); }
    t->added = na;
    t->added[t->n_added++] = (clip_added){ cps, n, id };
    return SD3_OK;
}

/* Id of a special token's text: the added token with that text, else the vocabulary entry; -1. */
static int64_t token_id(const clip_tok *t, const cJSON *decoder, const char *content) {
    for (const cJSON *it = decoder ? decoder->child : NULL; it; it = it->next) {
        const char *c = json_str(it, "content", NULL);
        if (c && !strcmp(c, content) && it->string) return strtoll(it->string, NULL, 10);
    }
    int32_t s;
    if (tok_strmap_get(&t->sym, content, strlen(content), &s) && t->sym_vocab[s] >= 0) return t->sym_vocab[s];
    return -1;
}

/* tokenizer_config.json + special_tokens_map.json: the special tokens and added tokens. */
static sd3_status load_specials(clip_tok *t, const char *folder, sd3_err *err) {
    char path[4096];
    cJSON *cfg = NULL, *map = NULL;
    snprintf(path, sizeof path, "%s/tokenizer_config.json", folder);
    FILE *f = fopen(path, "rb");
    if (f) { fclose(f); if (!(cfg = json_load_file(path, err))) return err ? err->status : SD3_ERR_FORMAT; }
    snprintf(path, sizeof path, "%s/special_tokens_map.json", folder);
    f = fopen(path, "rb");
    if (f) {
        fclose(f);
        if (!(map = json_load_file(path, err))) { cJSON_Delete(cfg); return err ? err->status : SD3_ERR_FORMAT; }
    }
    const cJSON *decoder = cfg ? cJSON_GetObjectItemCaseSensitive(cfg, "added_tokens_decoder") : NULL;
    static const char *const keys[4] = { "bos_token", "eos_token", "pad_token", "unk_token" };
    static const char *const defs[4] = { "<|startoftext|>", "<|endoftext|>", "<|endoftext|>", "<|endoftext|>" };
    int64_t *dst[4] = { &t->bos_id, &t->eos_id, &t->pad_id, &t->unk_id };
    sd3_status st = SD3_OK;
    /* added tokens declared in the config, in id order of the file */
    for (const cJSON *it = cJSON_IsObject(decoder) ? decoder->child : NULL; it && st == SD3_OK; it = it->next) {
        const char *c = json_str(it, "content", NULL);
        if (!c || !it->string) { st = sd3_errf(err, SD3_ERR_FORMAT, "%s/tokenizer_config.json: bad added_tokens_decoder entry", folder); break; }
        st = add_added(t, c, strtoll(it->string, NULL, 10), err);
    }
    for (int k = 0; k < 4 && st == SD3_OK; k++) {
        const char *c = token_content(map, keys[k]);
        if (!c) c = token_content(cfg, keys[k]);
        if (!c) c = defs[k];
        int64_t id = token_id(t, cJSON_IsObject(decoder) ? decoder : NULL, c);
        if (id < 0) { st = sd3_errf(err, SD3_ERR_FORMAT, "%s: %s '%s' is neither an added token nor in vocab.json", folder, keys[k], c); break; }
        *dst[k] = id;
        st = add_added(t, c, id, err);  /* special tokens are added tokens too */
    }
    cJSON_Delete(cfg);
    cJSON_Delete(map);
    return st;
}

/* Vocabulary, merges, byte symbols, then the special/added tokens of the folder's configs. */
sd3_status clip_tok_load(clip_tok *t, const char *folder, sd3_err *err) {
    memset(t, 0, sizeof *t);
    char path[4096];
    sd3_status st;
    snprintf(path, sizeof path, "%s/vocab.json", folder);
    if ((st = load_vocab(t, path, err)) != SD3_OK) goto fail;
    snprintf(path, sizeof path, "%s/merges.txt", folder);
    if ((st = load_merges(t, path, err)) != SD3_OK) goto fail;
    for (int b = 0; b < 256; b++) {
        char u[8];
        int n = uc_utf8_encode(byte_to_unicode(b), u);
        int32_t v;
        t->byte_sym[b] = tok_strmap_get(&t->sym, u, (size_t)n, &v) ? v : -1;
        memcpy(u + n, "</w>", 4);
        t->byte_sym_end[b] = tok_strmap_get(&t->sym, u, (size_t)n + 4, &v) ? v : -1;
    }
    if ((st = load_specials(t, folder, err)) != SD3_OK) goto fail;
    static const char *const sp[2] = { "<|startoftext|>", "<|endoftext|>" };
    for (int k = 0; k < 2; k++) {
        int32_t s;
        t->special_bpe[k] = tok_strmap_get(&t->sym, sp[k], strlen(sp[k]), &s) && t->sym_vocab[s] >= 0 ? t->sym_vocab[s] : t->unk_id;
    }
    return SD3_OK;
fail:
    clip_tok_free(t);
    return st;
}

/* Release everything a load or encode allocated; safe on a zeroed or failed tokenizer. */
void clip_tok_free(clip_tok *t) {
    tok_strmap_free(&t->sym);
    free(t->sym_vocab);
    tok_u64map_free(&t->merges);
    for (int i = 0; i < t->n_added; i++) free(t->added[i].cps);
    free(t->added);
    tok_strmap_free(&t->cache);
    tok_ids_free(&t->cache_ids);
    memset(t, 0, sizeof *t);
}

/* ------------------------------------------------------------------------------------------------ */
/* BPE                                                                                              */
/* ------------------------------------------------------------------------------------------------ */

/* Rank and merged symbol of the pair (a, b); 0 if the pair never merges. */
static int merge_of(const clip_tok *t, int32_t a, int32_t b, uint32_t *rank, int32_t *merged) {
    if (a < 0 || b < 0) return 0;
    uint64_t v;
    if (!tok_u64map_get(&t->merges, ((uint64_t)a << 32) | (uint64_t)b, &v)) return 0;
    *rank = (uint32_t)(v >> 32);
    *merged = (int32_t)(v & 0xFFFFFFFFu);
    return 1;
}

typedef struct heap_ent { uint32_t rank; uint32_t pos; } heap_ent;

/* Heap order: lowest merge rank first, leftmost position among equal ranks. */
static int heap_less(heap_ent a, heap_ent b) { return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos); }

/* Binary min-heap insert. */
static void heap_push(heap_ent *h, size_t *n, heap_ent e) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(e, h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = e;
}

/* Binary min-heap: remove and return the top. */
static heap_ent heap_pop(heap_ent *h, size_t *n) {
    heap_ent top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && heap_less(h[c + 1], h[c])) c++;
        if (!heap_less(h[c], last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = last;
    return top;
}

/* BPE over n initial symbols, in place: returns the number of symbols left in sym[]. With an ordered
 * merge list, repeatedly merging the lowest-ranked pair (leftmost first) equals transformers' loop
 * (all occurrences of the best pair per pass), in O(n log n); otherwise run that loop literally. */
static size_t bpe(const clip_tok *t, int32_t *sym, size_t n) {
    if (n < 2) return n;
    if (!t->merges_ordered) {
        for (;;) {
            uint32_t best = UINT32_MAX, r;
            int32_t m, first = -1, second = -1, merged = -1;
            for (size_t i = 0; i + 1 < n; i++)
                if (merge_of(t, sym[i], sym[i + 1], &r, &m) && r < best) { best = r; first = sym[i]; second = sym[i + 1]; merged = m; }
            if (best == UINT32_MAX) break;
            size_t o = 0;
            for (size_t i = 0; i < n;) {
                if (i + 1 < n && sym[i] == first && sym[i + 1] == second) { sym[o++] = merged; i += 2; }
                else sym[o++] = sym[i++];
            }
            n = o;
            if (n == 1) break;
        }
        return n;
    }
    int32_t *next = malloc(n * sizeof *next), *prev = malloc(n * sizeof *prev);
    heap_ent *h = malloc(3 * n * sizeof *h);  /* n-1 initial pairs + at most 2 per merge */
    if (!next || !prev || !h) { free(next); free(prev); free(h); return (size_t)-1; }
    size_t hn = 0;
    for (size_t i = 0; i < n; i++) { next[i] = i + 1 < n ? (int32_t)(i + 1) : -1; prev[i] = (int32_t)i - 1; }
    uint32_t r;
    int32_t m;
    for (size_t i = 0; i + 1 < n; i++)
        if (merge_of(t, sym[i], sym[i + 1], &r, &m)) heap_push(h, &hn, (heap_ent){ r, (uint32_t)i });
    while (hn) {
        heap_ent e = heap_pop(h, &hn);
        int32_t L = (int32_t)e.pos, R = next[L];
        /* stale entries: the left symbol died (prev link cut) or the pair changed */
        if (sym[L] < 0 || R < 0 || !merge_of(t, sym[L], sym[R], &r, &m) || r != e.rank) continue;
        sym[L] = m;
        sym[R] = -1;
        next[L] = next[R];
        if (next[R] >= 0) prev[next[R]] = L;
        if (prev[L] >= 0 && merge_of(t, sym[prev[L]], sym[L], &r, &m)) heap_push(h, &hn, (heap_ent){ r, (uint32_t)prev[L] });
        if (next[L] >= 0 && merge_of(t, sym[L], sym[next[L]], &r, &m)) heap_push(h, &hn, (heap_ent){ r, (uint32_t)L });
    }
    size_t o = 0;
    for (int32_t i = 0; i >= 0; i = next[i]) sym[o++] = sym[i];
    free(next);
    free(prev);
    free(h);
    return o;
}

/* BPE ids of one pre-token (UTF-8 bytes), through the word cache. */
static sd3_status bpe_token(clip_tok *t, const char *bytes, size_t nb, tok_ids *out, sd3_err *err) {
    int32_t off;
    if (nb <= CLIP_CACHE_MAX_WORD && tok_strmap_get(&t->cache, bytes, nb, &off)) {
        int64_t cnt = t->cache_ids.v[off];
        for (int64_t k = 0; k < cnt; k++)
            if (tok_ids_push(out, t->cache_ids.v[off + 1 + k])) return sd3_errf(err, SD3_ERR_NOMEM, "clip tokenizer: out of memory");
        return SD3_OK;
    }
    int32_t stack[64];
    int32_t *sym = nb <= 64 ? stack : malloc(nb * sizeof *sym);
    if (!sym) return sd3_errf(err, SD3_ERR_NOMEM, "clip tokenizer: out of memory");
    for (size_t i = 0; i < nb; i++) {
        unsigned char b = (unsigned char)bytes[i];
        sym[i] = i + 1 == nb ? t->byte_sym_end[b] : t->byte_sym[b];
    }
    size_t n = bpe(t, sym, nb);
    if (n == (size_t)-1) { if (sym != stack) free(sym); return sd3_errf(err, SD3_ERR_NOMEM, "clip tokenizer: out of memory"); }
    size_t first = out->n;
    for (size_t i = 0; i < n; i++) {
        int64_t id = sym[i] >= 0 && t->sym_vocab[sym[i]] >= 0 ? t->sym_vocab[sym[i]] : t->unk_id;
        if (tok_ids_push(out, id)) { if (sym != stack) free(sym); return sd3_errf(err, SD3_ERR_NOMEM, "clip tokenizer: out of memory"); }
    }
    if (sym != stack) free(sym);
    if (nb <= CLIP_CACHE_MAX_WORD) {
        if (t->cache.n >= CLIP_CACHE_MAX_ENTRIES) { tok_strmap_free(&t->cache); t->cache_ids.n = 0; }
        size_t at = t->cache_ids.n;
        if (at < INT32_MAX / 2) {
            int bad = tok_ids_push(&t->cache_ids, (int64_t)n);
            for (size_t i = 0; i < n && !bad; i++) bad = tok_ids_push(&t->cache_ids, out->v[first + i]);
            if (!bad) bad = tok_strmap_put(&t->cache, bytes, nb, (int32_t)at) < 0;
            if (bad) { tok_strmap_free(&t->cache); t->cache_ids.n = 0; }  /* the cache is optional */
        }
    }
    return SD3_OK;
}

/* ------------------------------------------------------------------------------------------------ */
/* Text                                                                                             */
/* ------------------------------------------------------------------------------------------------ */

/* CJK Unified Ideographs blocks as BasicTokenizer._is_chinese_char lists them (not kana or hangul). */
static int is_cjk(uint32_t c) {
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
           (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

/* Simple case folding onto ASCII, as the regex's IGNORECASE sees the letters of its literals. */
static uint32_t fold_ascii(uint32_t c) {
    if (c >= 'A' && c <= 'Z') return c + 32;
    if (c == 0x17F) return 's';   /* LATIN SMALL LETTER LONG S folds to s */
    if (c == 0x212A) return 'k';  /* KELVIN SIGN folds to k */
    return c;
}

/* Whether w[i..] starts with the ASCII literal lit (case-insensitively). */
static int match_lit(const uint32_t *w, size_t n, size_t i, const char *lit) {
    size_t k = 0;
    for (; lit[k]; k++)
        if (i + k >= n || fold_ascii(w[i + k]) != (uint32_t)(unsigned char)lit[k]) return 0;
    return (int)k;
}

/* The CLIP pre-tokenizer regex, by hand:
 *   <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
 * over one lower-cased word (no whitespace inside), each match BPE-encoded into out. */
static sd3_status pretokenize_word(clip_tok *t, const uint32_t *w, size_t n, char *bytes, tok_ids *out, sd3_err *err) {
    static const char *const contractions[7] = { "'s", "'t", "'re", "'ve", "'m", "'ll", "'d" };
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        int special = -1;
        if (w[i] == '<') {
            int k;
            if ((k = match_lit(w, n, i, "<|startoftext|>"))) { j = i + (size_t)k; special = 0; }
            else if ((k = match_lit(w, n, i, "<|endoftext|>"))) { j = i + (size_t)k; special = 1; }
        }
        if (j == i && w[i] == '\'') {
            for (int c = 0; c < 7 && j == i; c++) {
                int k = match_lit(w, n, i, contractions[c]);
                if (k) j = i + (size_t)k;
            }
        }
        if (j == i) {
            if (uc_is_letter(w[i])) {
                while (j < n && uc_is_letter(w[j])) j++;
            } else if (uc_is_number(w[i])) {
                j = i + 1;
            } else if (uc_is_white_space(w[i])) {
                i++;
                continue;
            } else {
                while (j < n && !uc_is_letter(w[j]) && !uc_is_number(w[j]) && !uc_is_white_space(w[j])) j++;
            }
        }
        if (special >= 0) {
            /* transformers' bpe() cache holds these two strings as themselves */
            if (tok_ids_push(out, t->special_bpe[special])) return sd3_errf(err, SD3_ERR_NOMEM, "clip tokenizer: out of memory");
        } else {
            size_t nb = 0;
            for (size_t k = i; k < j; k++) nb += (size_t)uc_utf8_encode(w[k], bytes + nb);
            sd3_status st = bpe_token(t, bytes, nb, out, err);
            if (st != SD3_OK) return st;
        }
        i = j;
    }
    return SD3_OK;
}

/* One stretch of text between added tokens: BasicTokenizer clean-up, then the regex and BPE. */
static sd3_status encode_text(clip_tok *t, const uint32_t *s, size_t n, tok_ids *out, sd3_err *err) {
    if (!n) return SD3_OK;
    /* sizes: CJK spacing at most triples, canonical decomposition at most quadruples, lower-casing at
     * most doubles a word, UTF-8 takes at most 4 bytes a code point */
    uint32_t *a = malloc(3 * n * sizeof *a), *b = malloc(12 * n * sizeof *b), *low = NULL;
    char *bytes = NULL;
    sd3_status st = SD3_OK;
    if (!a || !b) { st = sd3_errf(err, SD3_ERR_NOMEM, "clip tokenizer: out of memory"); goto done; }
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t c = s[i];
        if (c == 0 || c == 0xFFFD) continue;
        int ws = c == ' ' || c == '\t' || c == '\n' || c == '\r';
        if (!ws && uc_is_other(c)) continue;
        if (ws || uc_category_of(c) == UC_Zs) a[m++] = ' ';
        else if (is_cjk(c)) { a[m++] = ' '; a[m++] = c; a[m++] = ' '; }
        else a[m++] = c;
    }
    size_t nb = uc_nfc(a, m, b);
    low = malloc((2 * nb + 1) * sizeof *low);
    bytes = malloc(8 * nb + 4);
    if (!low || !bytes) { st = sd3_errf(err, SD3_ERR_NOMEM, "clip tokenizer: out of memory"); goto done; }
    for (size_t i = 0; i < nb && st == SD3_OK;) {
        while (i < nb && uc_is_py_space(b[i])) i++;
        size_t j = i;
        while (j < nb && !uc_is_py_space(b[j])) j++;
        if (j > i) {
            size_t nl = uc_lower_py(b + i, j - i, low);
            st = pretokenize_word(t, low, nl, bytes, out, err);
        }
        i = j;
    }
done:
    free(a);
    free(b);
    free(low);
    free(bytes);
    return st;
}

/* bos, then added tokens cut out leftmost-longest with the text between them encoded, then eos. */
sd3_status clip_tok_encode_full(clip_tok *t, const char *text, size_t len, int64_t **ids, size_t *n, sd3_err *err) {
    *ids = NULL;
    *n = 0;
    if (!t->sym.n) return sd3_errf(err, SD3_ERR_INVALID_ARG, "clip tokenizer: not loaded");
    if (!text) return sd3_errf(err, SD3_ERR_INVALID_ARG, "clip tokenizer: NULL text");
    if (len == (size_t)-1) len = strlen(text);
    uint32_t *cps;
    size_t nc;
    sd3_status st = uc_utf8_decode(text, len, &cps, &nc, err);
    if (st != SD3_OK) return st;
    tok_ids out = { 0 };
    if (tok_ids_push(&out, t->bos_id)) { st = sd3_errf(err, SD3_ERR_NOMEM, "clip tokenizer: out of memory"); goto done; }
    /* added tokens first: leftmost, longest at that position */
    size_t seg = 0;
    for (size_t i = 0; i < nc && st == SD3_OK;) {
        int best = -1;
        for (int k = 0; k < t->n_added; k++) {
            const clip_added *ad = &t->added[k];
            if (ad->n <= nc - i && (best < 0 || ad->n > t->added[best].n) && !memcmp(cps + i, ad->cps, ad->n * sizeof *cps))
                best = k;
        }
        if (best < 0) { i++; continue; }
        st = encode_text(t, cps + seg, i - seg, &out, err);
        if (st == SD3_OK && tok_ids_push(&out, t->added[best].id)) st = sd3_errf(err, SD3_ERR_NOMEM, "clip tokenizer: out of memory");
        i += t->added[best].n;
        seg = i;
    }
    if (st == SD3_OK) st = encode_text(t, cps + seg, nc - seg, &out, err);
    if (st == SD3_OK && tok_ids_push(&out, t->eos_id)) st = sd3_errf(err, SD3_ERR_NOMEM, "clip tokenizer: out of memory");
done:
    free(cps);
    if (st != SD3_OK) { tok_ids_free(&out); return st; }
    *ids = out.v;
    *n = out.n;
    return SD3_OK;
}

/* The pipeline's call: truncate to 75 text ids between bos/eos, pad to 77 with the pad id. */
sd3_status clip_tok_encode_n(clip_tok *t, const char *text, size_t len, int64_t ids[CLIP_TOK_LEN],
                             int64_t mask[CLIP_TOK_LEN], sd3_err *err) {
    int64_t *all;
    size_t n;
    sd3_status st = clip_tok_encode_full(t, text, len, &all, &n, err);
    if (st != SD3_OK) return st;
    /* all = bos, text..., eos: keep bos + the first 75 text ids + eos */
    size_t ntext = n - 2 > CLIP_TOK_LEN - 2 ? CLIP_TOK_LEN - 2 : n - 2;
    size_t k = 0;
    ids[k++] = t->bos_id;
    for (size_t i = 0; i < ntext; i++) ids[k++] = all[1 + i];
    ids[k++] = t->eos_id;
    for (size_t i = 0; i < CLIP_TOK_LEN; i++) {
        mask[i] = i < k;
        if (i >= k) ids[i] = t->pad_id;
    }
    free(all);
    return SD3_OK;
}

/*
 * unicode.c — UTF-8, properties, str.lower(), NFC and grapheme clusters over the generated tables
 * (see unicode.h and scripts/gen_unicode_tables.py).
 */
#include "text/unicode.h"

#include <stdlib.h>
#include <string.h>
#include "text/unicode_tables.h"

const char *uc_version(void) { return UCT_UNICODE_VERSION; }

/* ------------------------------------------------------------------------------------------------ */
/* UTF-8                                                                                            */
/* ------------------------------------------------------------------------------------------------ */

/* Strict decoder (the rules of Python's "strict" utf-8 codec): a prompt that is not valid UTF-8 is a
 * caller error, reported with the offset of the first bad byte, never guessed at. */
sd3_status uc_utf8_decode(const char *s, size_t len, uint32_t **out, size_t *n, sd3_err *err) {
    *out = NULL;
    *n = 0;
    if (!s && len) return sd3_errf(err, SD3_ERR_INVALID_ARG, "utf-8: NULL text");
    uint32_t *cps = malloc((len ? len : 1) * sizeof(uint32_t));
    if (!cps) return sd3_errf(err, SD3_ERR_NOMEM, "utf-8: out of memory decoding %zu bytes", len);
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, k = 0;
    while (i < len) {
        uint32_t c = p[i];
        int extra;
        uint32_t min;
        if (c < 0x80) { cps[k++] = c; i++; continue; }
        else if (c >= 0xC2 && c <= 0xDF) { extra = 1; c &= 0x1F; min = 0x80; }
        else if (c >= 0xE0 && c <= 0xEF) { extra = 2; c &= 0x0F; min = 0x800; }
        else if (c >= 0xF0 && c <= 0xF4) { extra = 3; c &= 0x07; min = 0x10000; }
        else goto bad;
        if ((size_t)extra >= len - i) goto bad;  /* truncated sequence */
        for (int j = 1; j <= extra; j++) {
            unsigned char b = p[i + (size_t)j];
            if ((b & 0xC0) != 0x80) goto bad;
            c = (c << 6) | (b & 0x3F);
        }
        if (c < min || c > UC_MAX || (c >= 0xD800 && c <= 0xDFFF)) goto bad;
        cps[k++] = c;
        i += (size_t)extra + 1;
    }
    *out = cps;
    *n = k;
    return SD3_OK;
bad:
    free(cps);
    return sd3_errf(err, SD3_ERR_INVALID_ARG, "text is not valid UTF-8: bad byte 0x%02X at offset %zu",
                    (unsigned)p[i], i);
}

/* Standard UTF-8 encoding of one scalar value. */
int uc_utf8_encode(uint32_t cp, char buf[4]) {
    if (cp < 0x80) { buf[0] = (char)cp; return 1; }
    if (cp < 0x800) { buf[0] = (char)(0xC0 | (cp >> 6)); buf[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        buf[0] = (char)(0xE0 | (cp >> 12));
        buf[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        buf[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    buf[0] = (char)(0xF0 | (cp >> 18));
    buf[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    buf[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    buf[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Bytes of cp in UTF-8. */
int uc_utf8_len(uint32_t cp) { return cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4; }

/* ------------------------------------------------------------------------------------------------ */
/* Table lookups                                                                                    */
/* ------------------------------------------------------------------------------------------------ */

/* Index of the run containing cp in a sorted array of run starts (starts[0] == 0). */
static size_t run_index(const uint32_t *starts, size_t n, uint32_t cp) {
    size_t lo = 0, hi = n;  /* answer in [lo, hi) */
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (starts[mid] <= cp) lo = mid;
        else hi = mid;
    }
    return lo;
}

/* Whether cp lies in one of n sorted inclusive ranges. */
static int in_ranges(const uint32_t (*r)[2], size_t n, uint32_t cp) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < r[mid][0]) hi = mid;
        else if (cp > r[mid][1]) lo = mid + 1;
        else return 1;
    }
    return 0;
}

/* Row of a sorted {key, ...} table whose first column equals cp, or -1. */
static long find_row3(const uint32_t (*t)[3], size_t n, uint32_t cp) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (t[mid][0] < cp) lo = mid + 1;
        else if (t[mid][0] > cp) hi = mid;
        else return (long)mid;
    }
    return -1;
}

uc_category uc_category_of(uint32_t cp) {
    if (cp > UC_MAX) return UC_Cn;
    return (uc_category)uct_gc_val[run_index(uct_gc_start, UCT_N_GC, cp)];
}

/* Canonical combining class from the run table. */
int uc_ccc(uint32_t cp) {
    if (cp > UC_MAX) return 0;
    return uct_ccc_val[run_index(uct_ccc_start, UCT_N_CCC, cp)];
}

uc_gcb uc_gcb_of(uint32_t cp) {
    if (cp > UC_MAX) return UC_GCB_OTHER;
    return (uc_gcb)uct_gcb_val[run_index(uct_gcb_start, UCT_N_GCB, cp)];
}

/* Extended_Pictographic and White_Space from their range tables. */
int uc_is_ext_pict(uint32_t cp) { return in_ranges(uct_extpict, UCT_N_EXTPICT, cp); }
int uc_is_white_space(uint32_t cp) { return in_ranges(uct_white, UCT_N_WHITE, cp); }

/* Python str.isspace(): a short sorted list. */
int uc_is_py_space(uint32_t cp) {
    size_t lo = 0, hi = UCT_N_PYSPACE;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (uct_pyspace[mid] < cp) lo = mid + 1;
        else if (uct_pyspace[mid] > cp) hi = mid;
        else return 1;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------------ */
/* str.lower()                                                                                      */
/* ------------------------------------------------------------------------------------------------ */

/* CPython's handle_capital_sigma: U+03A3 lowers to final sigma U+03C2 when preceded by a cased letter
 * (skipping case-ignorables) and not followed by one. */
static uint32_t lower_sigma(const uint32_t *s, size_t n, size_t i) {
    long j;
    uint32_t c = 0;
    for (j = (long)i - 1; j >= 0; j--) {
        c = s[j];
        if (!in_ranges(uct_caseign, UCT_N_CASEIGN, c)) break;
    }
    int final_sigma = j >= 0 && in_ranges(uct_cased, UCT_N_CASED, c);
    if (final_sigma && i + 1 < n) {
        size_t k;
        for (k = i + 1; k < n; k++) {
            c = s[k];
            if (!in_ranges(uct_caseign, UCT_N_CASEIGN, c)) break;
        }
        final_sigma = k == n || !in_ranges(uct_cased, UCT_N_CASED, c);
    }
    return final_sigma ? 0x3C2 : 0x3C3;
}

/* str.lower(): ASCII inline, the generated mapping otherwise, the sigma rule for U+03A3. */
size_t uc_lower_py(const uint32_t *in, size_t n, uint32_t *out) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t c = in[i];
        if (c == 0x3A3) { out[o++] = lower_sigma(in, n, i); continue; }
        if (c < 0x80) { out[o++] = (c >= 'A' && c <= 'Z') ? c + 32 : c; continue; }
        long r = find_row3(uct_lower, UCT_N_LOWER, c);
        if (r < 0) { out[o++] = c; continue; }
        out[o++] = uct_lower[r][1];
        if (uct_lower[r][2]) out[o++] = uct_lower[r][2];
    }
    return o;
}

/* ------------------------------------------------------------------------------------------------ */
/* NFC                                                                                              */
/* ------------------------------------------------------------------------------------------------ */

enum { SBASE = 0xAC00, LBASE = 0x1100, VBASE = 0x1161, TBASE = 0x11A7, LCOUNT = 19, VCOUNT = 21,
       TCOUNT = 28, NCOUNT = VCOUNT * TCOUNT, SCOUNT = LCOUNT * NCOUNT };

/* Canonical composite of (a, b) or 0 (Hangul algorithmically, the rest from the primary composites). */
static uint32_t compose_pair(uint32_t a, uint32_t b) {
    if (a >= LBASE && a < LBASE + LCOUNT && b >= VBASE && b < VBASE + VCOUNT)
        return SBASE + ((a - LBASE) * VCOUNT + (b - VBASE)) * TCOUNT;
    if (a >= SBASE && a < SBASE + SCOUNT && (a - SBASE) % TCOUNT == 0 && b > TBASE && b < TBASE + TCOUNT)
        return a + (b - TBASE);
    uint64_t key = ((uint64_t)a << 21) | b;
    size_t lo = 0, hi = UCT_N_COMP;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        uint64_t k = ((uint64_t)uct_comp[mid][0] << 21) | uct_comp[mid][1];
        if (k < key) lo = mid + 1;
        else if (k > key) hi = mid;
        else return uct_comp[mid][2];
    }
    return 0;
}

/* NFC in three passes over out: decompose, reorder marks, compose. */
size_t uc_nfc(const uint32_t *in, size_t n, uint32_t *out) {
    /* 1. full canonical decomposition */
    size_t d = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t c = in[i];
        if (c >= SBASE && c < SBASE + SCOUNT) {
            uint32_t s = c - SBASE;
            out[d++] = LBASE + s / NCOUNT;
            out[d++] = VBASE + (s % NCOUNT) / TCOUNT;
            if (s % TCOUNT) out[d++] = TBASE + s % TCOUNT;
            continue;
        }
        long r = c < 0xC0 ? -1 : find_row3(uct_decomp, UCT_N_DECOMP, c);
        if (r < 0) { out[d++] = c; continue; }
        for (uint32_t k = 0; k < uct_decomp[r][2]; k++) out[d++] = uct_decomp_pool[uct_decomp[r][1] + k];
    }
    /* 2. canonical ordering: stable sort of each run of non-starters by combining class */
    for (size_t i = 1; i < d; i++) {
        int cc = uc_ccc(out[i]);
        if (!cc) continue;
        size_t j = i;
        uint32_t c = out[i];
        while (j > 0) {
            int pc = uc_ccc(out[j - 1]);
            if (pc <= cc) break;
            out[j] = out[j - 1];
            j--;
        }
        out[j] = c;
    }
    /* 3. canonical composition, in place (the output never outruns the input position) */
    size_t o = 0;
    long sp = -1;  /* position of the last starter in the output */
    int last_cc = 0;
    for (size_t i = 0; i < d; i++) {
        uint32_t c = out[i];
        int cc = uc_ccc(c);
        if (sp >= 0 && ((size_t)sp + 1 == o || (last_cc != 0 && last_cc < cc))) {
            uint32_t comp = compose_pair(out[sp], c);
            if (comp) { out[sp] = comp; continue; }
        }
        if (cc == 0) sp = (long)o;
        last_cc = cc;
        out[o++] = c;
    }
    return o;
}

/* ------------------------------------------------------------------------------------------------ */
/* Grapheme clusters (UAX #29 extended grapheme clusters, rules GB3-GB13)                           */
/* ------------------------------------------------------------------------------------------------ */

/* Walk forward while no UAX #29 rule allows a break (GB9c, Unicode 15.1, is not applied: it only
 * joins clusters already 6+ bytes long, which the T5 charsmap treats character by character anyway). */
size_t uc_grapheme_end(const uint32_t *cps, size_t n, size_t i) {
    uc_gcb prev = uc_gcb_of(cps[i]);
    int ri_run = prev == UC_GCB_RI;              /* regional indicators ending at prev */
    int ep = uc_is_ext_pict(cps[i]) ? 1 : 0;     /* 1: ExtPict Extend*, 2: ExtPict Extend* ZWJ */
    size_t j = i + 1;
    for (; j < n; j++) {
        uc_gcb cur = uc_gcb_of(cps[j]);
        int cur_ep = uc_is_ext_pict(cps[j]);
        int join;
        if (prev == UC_GCB_CR && cur == UC_GCB_LF) join = 1;                                      /* GB3 */
        else if (prev == UC_GCB_CONTROL || prev == UC_GCB_CR || prev == UC_GCB_LF) join = 0;      /* GB4 */
        else if (cur == UC_GCB_CONTROL || cur == UC_GCB_CR || cur == UC_GCB_LF) join = 0;         /* GB5 */
        else if (prev == UC_GCB_L && (cur == UC_GCB_L || cur == UC_GCB_V || cur == UC_GCB_LV || cur == UC_GCB_LVT))
            join = 1;                                                                             /* GB6 */
        else if ((prev == UC_GCB_LV || prev == UC_GCB_V) && (cur == UC_GCB_V || cur == UC_GCB_T)) join = 1; /* GB7 */
        else if ((prev == UC_GCB_LVT || prev == UC_GCB_T) && cur == UC_GCB_T) join = 1;           /* GB8 */
        else if (cur == UC_GCB_EXTEND || cur == UC_GCB_ZWJ) join = 1;                             /* GB9 */
        else if (cur == UC_GCB_SPACINGMARK) join = 1;                                             /* GB9a */
        else if (prev == UC_GCB_PREPEND) join = 1;                                                /* GB9b */
        else if (ep == 2 && cur_ep) join = 1;                                                     /* GB11 */
        else if (prev == UC_GCB_RI && cur == UC_GCB_RI && (ri_run % 2) == 1) join = 1;            /* GB12/13 */
        else join = 0;                                                                            /* GB999 */
        if (!join) break;
        ri_run = cur == UC_GCB_RI ? (prev == UC_GCB_RI ? ri_run + 1 : 1) : 0;
        if (cur_ep) ep = 1;
        else if (ep == 1 && cur == UC_GCB_EXTEND) ep = 1;
        else if (ep == 1 && cur == UC_GCB_ZWJ) ep = 2;
        else ep = 0;
        prev = cur;
    }
    return j;
}

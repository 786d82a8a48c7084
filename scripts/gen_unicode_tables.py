#!/usr/bin/env python3
"""gen_unicode_tables.py - generate src/text/unicode_tables.{h,c} for the tokenizers.

The reference tokenizers ran on Python 3.11 (unicodedata = Unicode 14.0.0), so every table comes from
that same `unicodedata`: general category, canonical combining class, canonical decompositions and
compositions (NFC), Python's str.lower() mapping and str.isspace() set.  Properties that Python does not
expose (Grapheme_Cluster_Break, Extended_Pictographic, Cased, Case_Ignorable, White_Space) come from
Perl's Unicode::UCD, which on Debian 12 (perl 5.36) is also Unicode 14.0.0; the script checks both
versions.  Run it from the repository root:  python3 scripts/gen_unicode_tables.py
The product never runs this script: its output is committed.
"""
import subprocess
import sys
import unicodedata

MAXCP = 0x110000
OUT_H = "src/text/unicode_tables.h"
OUT_C = "src/text/unicode_tables.c"

CATS = ["Cc", "Cf", "Cn", "Co", "Cs", "Ll", "Lm", "Lo", "Lt", "Lu", "Mc", "Me", "Mn", "Nd", "Nl", "No",
        "Pc", "Pd", "Pe", "Pf", "Pi", "Po", "Ps", "Sc", "Sk", "Sm", "So", "Zl", "Zp", "Zs"]
GCB = ["Other", "CR", "LF", "Control", "Extend", "ZWJ", "RI", "Prepend", "SpacingMark", "L", "V", "T",
       "LV", "LVT"]


def perl_invlist(prop):
    """Inversion list of a Unicode property from Perl's Unicode::UCD."""
    out = subprocess.run(["perl", "-MUnicode::UCD=prop_invlist", "-e",
                          'print join(" ", prop_invlist($ARGV[0])), "\\n"', prop],
                         check=True, capture_output=True, text=True).stdout.split()
    return [int(x) for x in out]


def invlist_ranges(inv):
    """[(first, last)] inclusive ranges from an inversion list."""
    res = []
    for i in range(0, len(inv), 2):
        hi = inv[i + 1] - 1 if i + 1 < len(inv) else MAXCP - 1
        res.append((inv[i], hi))
    return res


def runs(values):
    """Run-length encode a per-code-point list: [(start, value)] where the value changes."""
    res = []
    prev = None
    for cp, v in enumerate(values):
        if v != prev:
            res.append((cp, v))
            prev = v
    return res


def canon_decomp(cp):
    """Full canonical decomposition of one code point (Hangul excluded: done algorithmically)."""
    if 0xAC00 <= cp <= 0xD7A3:
        return [cp]
    d = unicodedata.decomposition(chr(cp))
    if not d or d.startswith("<"):
        return [cp]
    res = []
    for x in d.split():
        res.extend(canon_decomp(int(x, 16)))
    return res


def fmt_list(items, per_line, indent="    "):
    lines = []
    for i in range(0, len(items), per_line):
        lines.append(indent + ", ".join(items[i:i + per_line]) + ",")
    return "\n".join(lines)


def main():
    if unicodedata.unidata_version != "14.0.0":
        sys.exit("need Python's unicodedata 14.0.0 (Python 3.11), found %s" % unicodedata.unidata_version)
    pv = subprocess.run(["perl", "-MUnicode::UCD", "-e", "print Unicode::UCD::UnicodeVersion()"],
                        check=True, capture_output=True, text=True).stdout.strip()
    if pv != "14.0.0":
        sys.exit("need Perl Unicode::UCD 14.0.0, found %s" % pv)

    cat_idx = {c: i for i, c in enumerate(CATS)}
    gc = [cat_idx[unicodedata.category(chr(cp))] for cp in range(MAXCP)]
    ccc = [unicodedata.combining(chr(cp)) for cp in range(MAXCP)]

    gcb = [0] * MAXCP
    for i, name in enumerate(GCB):
        if i == 0:
            continue
        for lo, hi in invlist_ranges(perl_invlist("GCB=" + name)):
            for cp in range(lo, hi + 1):
                gcb[cp] = i
    ext_pict = invlist_ranges(perl_invlist("Extended_Pictographic"))
    cased = invlist_ranges(perl_invlist("Cased"))
    case_ign = invlist_ranges(perl_invlist("Case_Ignorable"))
    white = invlist_ranges(perl_invlist("White_Space"))

    # Python str.lower(): single code points (U+03A3 handled in C with the Final_Sigma rule, as CPython).
    lower = []
    for cp in range(MAXCP):
        if cp == 0x3A3 or 0xD800 <= cp <= 0xDFFF:
            continue
        lo = chr(cp).lower()
        if lo != chr(cp):
            if len(lo) > 2:
                sys.exit("lower-case mapping longer than 2 code points: U+%04X" % cp)
            lower.append((cp, ord(lo[0]), ord(lo[1]) if len(lo) > 1 else 0))
    pyspace = [cp for cp in range(MAXCP) if chr(cp).isspace()]

    # Canonical decompositions (fully expanded) and primary composites for NFC.
    decomp = []
    pool = []
    comp = []
    for cp in range(MAXCP):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        d = canon_decomp(cp)
        if d != [cp]:
            decomp.append((cp, len(pool), len(d)))
            pool.extend(d)
        raw = unicodedata.decomposition(chr(cp))
        if raw and not raw.startswith("<"):
            parts = [int(x, 16) for x in raw.split()]
            if len(parts) == 2 and unicodedata.normalize("NFC", chr(parts[0]) + chr(parts[1])) == chr(cp):
                comp.append((parts[0], parts[1], cp))
    comp.sort()
    if max(n for _, _, n in decomp) > 4:
        sys.exit("canonical decomposition longer than 4")

    gc_runs = runs(gc)
    ccc_runs = runs(ccc)
    gcb_runs = runs(gcb)

    h = []
    h.append("/* unicode_tables.h - GENERATED by scripts/gen_unicode_tables.py from Python 3.11 unicodedata")
    h.append(" * (Unicode %s) and Perl Unicode::UCD (Unicode %s). Do not edit. */" % (unicodedata.unidata_version, pv))
    h.append("#ifndef SD3_UNICODE_TABLES_H\n#define SD3_UNICODE_TABLES_H\n\n#include <stdint.h>\n")
    h.append('#define UCT_UNICODE_VERSION "%s"' % unicodedata.unidata_version)
    h.append("#define UCT_N_GC %d\n#define UCT_N_CCC %d\n#define UCT_N_GCB %d" % (len(gc_runs), len(ccc_runs), len(gcb_runs)))
    h.append("#define UCT_N_EXTPICT %d\n#define UCT_N_CASED %d\n#define UCT_N_CASEIGN %d\n#define UCT_N_WHITE %d"
             % (len(ext_pict), len(cased), len(case_ign), len(white)))
    h.append("#define UCT_N_LOWER %d\n#define UCT_N_PYSPACE %d\n#define UCT_N_DECOMP %d\n#define UCT_N_DECOMP_POOL %d\n#define UCT_N_COMP %d\n"
             % (len(lower), len(pyspace), len(decomp), len(pool), len(comp)))
    h.append("/* Runs over all code points: value v[i] holds from start[i] up to start[i+1]-1. */")
    h.append("extern const uint32_t uct_gc_start[UCT_N_GC];\nextern const uint8_t uct_gc_val[UCT_N_GC];  /* index into the category list of unicode.h */")
    h.append("extern const uint32_t uct_ccc_start[UCT_N_CCC];\nextern const uint8_t uct_ccc_val[UCT_N_CCC];")
    h.append("extern const uint32_t uct_gcb_start[UCT_N_GCB];\nextern const uint8_t uct_gcb_val[UCT_N_GCB];")
    h.append("/* Inclusive ranges [first, last]. */")
    h.append("extern const uint32_t uct_extpict[UCT_N_EXTPICT][2];\nextern const uint32_t uct_cased[UCT_N_CASED][2];")
    h.append("extern const uint32_t uct_caseign[UCT_N_CASEIGN][2];\nextern const uint32_t uct_white[UCT_N_WHITE][2];")
    h.append("/* str.lower(): {code point, first, second or 0}, sorted. */")
    h.append("extern const uint32_t uct_lower[UCT_N_LOWER][3];")
    h.append("/* str.isspace() code points, sorted. */\nextern const uint32_t uct_pyspace[UCT_N_PYSPACE];")
    h.append("/* Full canonical decomposition: {code point, pool offset, length}, sorted. */")
    h.append("extern const uint32_t uct_decomp[UCT_N_DECOMP][3];\nextern const uint32_t uct_decomp_pool[UCT_N_DECOMP_POOL];")
    h.append("/* Primary composites: {first, second, composite}, sorted by (first, second). */")
    h.append("extern const uint32_t uct_comp[UCT_N_COMP][3];\n\n#endif")

    c = []
    c.append("/* unicode_tables.c - GENERATED by scripts/gen_unicode_tables.py (Unicode %s). Do not edit. */"
             % unicodedata.unidata_version)
    c.append('#include "text/unicode_tables.h"\n')

    def arr1(ctype, name, vals, per=12, hexa=True):
        items = [("0x%X" % v) if hexa else str(v) for v in vals]
        c.append("const %s %s[%d] = {\n%s\n};\n" % (ctype, name, len(vals), fmt_list(items, per)))

    def arrn(name, rows, per=6):
        items = ["{" + ", ".join("0x%X" % x for x in r) + "}" for r in rows]
        c.append("const uint32_t %s[%d][%d] = {\n%s\n};\n" % (name, len(rows), len(rows[0]), fmt_list(items, per)))

    arr1("uint32_t", "uct_gc_start", [s for s, _ in gc_runs])
    arr1("uint8_t", "uct_gc_val", [v for _, v in gc_runs], 24, False)
    arr1("uint32_t", "uct_ccc_start", [s for s, _ in ccc_runs])
    arr1("uint8_t", "uct_ccc_val", [v for _, v in ccc_runs], 24, False)
    arr1("uint32_t", "uct_gcb_start", [s for s, _ in gcb_runs])
    arr1("uint8_t", "uct_gcb_val", [v for _, v in gcb_runs], 24, False)
    arrn("uct_extpict", ext_pict)
    arrn("uct_cased", cased)
    arrn("uct_caseign", case_ign)
    arrn("uct_white", white)
    arrn("uct_lower", lower, 4)
    arr1("uint32_t", "uct_pyspace", pyspace)
    arrn("uct_decomp", decomp, 4)
    arr1("uint32_t", "uct_decomp_pool", pool)
    arrn("uct_comp", comp, 4)

    with open(OUT_H, "w") as f:
        f.write("\n".join(h) + "\n")
    with open(OUT_C, "w") as f:
        f.write("\n".join(c))
    print("wrote %s, %s: %d category runs, %d lower, %d decomp, %d comp" %
          (OUT_H, OUT_C, len(gc_runs), len(lower), len(decomp), len(comp)))


if __name__ == "__main__":
    main()

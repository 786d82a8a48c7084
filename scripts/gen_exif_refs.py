#!/usr/bin/env python3
"""Write the reference data of tests/test_image_exif.c: small PNGs and JPEGs carrying an EXIF Orientation
(PNG eXIf chunk, JPEG APP1 "Exif\\0\\0" segment), well-formed and hostile, into tests/data/exif/, plus
cases.txt saying what Pillow does with each.

diffusers' load_image runs PIL.ImageOps.exif_transpose(image) before image.convert("RGB"); this script asks
Pillow itself what that gives for every file:
  ref  FILE PILLOW_PNG        the PNG Pillow writes from exif_transpose(open(FILE)).convert("RGB") (the
                              test's loader must equal it byte for byte; PNG only, lossless)
  case FILE BASE K NOTE       Pillow's exif_transpose of FILE equals Pillow's own decode of BASE (the same
                              pixels without EXIF) transposed by EXIF orientation K (1 = untouched); where
                              Pillow raises on the EXIF (diffusers could not load the file at all) K is 1,
                              what sd3c does, and NOTE says "pillow-raises"
  nocrash FILE NOTE           a file broken beyond its EXIF: loading may fail but must not crash
The files are built byte by byte here (chunks, segments, TIFF blocks), so the hostile ones say exactly
what they lie about.

Tooling only: the product and its tests never run Python; they read the committed files. Rerun it (from the
repository root: python3 scripts/gen_exif_refs.py) only to change the cases; it needs Pillow.
"""
import io
import os
import struct
import warnings
import zlib

import PIL
from PIL import Image, ImageOps

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "exif")

# exif_transpose's table (PIL/ImageOps.py)
METHOD = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
          5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
          8: Image.Transpose.ROTATE_90}


def base_image(w, h):
    """An RGB image with every pixel different, so each of the 8 orientations gives a different image."""
    im = Image.new("RGB", (w, h))
    im.putdata([((x * 53 + y * 7) % 256, (y * 61 + x * 3) % 256, (x * y * 29 + 17) % 256)
                for y in range(h) for x in range(w)])
    return im


# ---- TIFF blocks ----------------------------------------------------------------------------------------

def tiff(entries, be=False, magic=None, ifd_off=8, count=None, tail=b"", next_ifd=True):
    """A TIFF block: header, IFD0 at ifd_off (the header is padded up to an ifd_off of at most 64; a larger
    ifd_off points past the block), its entries (tag, type,
    count, 4 value bytes), the next-IFD pointer, then tail (out-of-line values start at 8 + pad + 2 +
    12 * n + 4)."""
    e = ">" if be else "<"
    head = (b"MM" if be else b"II") + (magic if magic is not None else struct.pack(e + "H", 42))
    head += struct.pack(e + "L", ifd_off)
    pad = b"\0" * (ifd_off - 8 if 8 < ifd_off <= 64 else 0)
    body = struct.pack(e + "H", len(entries) if count is None else count)
    for tag, typ, cnt, val in entries:
        body += struct.pack(e + "HHL", tag, typ, cnt) + val
    return head + pad + body + (struct.pack(e + "L", 0) if next_ifd else b"") + tail


def short(v, be=False):
    return struct.pack(">HH" if be else "<HH", v, 0)


def orient(k, be=False):
    return tiff([(0x0112, 3, 1, short(k, be))], be=be)


# ---- containers -----------------------------------------------------------------------------------------

def chunk(t, d):
    return struct.pack(">L", len(d)) + t + d + struct.pack(">L", zlib.crc32(t + d))


def png_bytes(im, exif_chunks=(), after_idat=(), pre=(), post=(), iend=True):
    """im as an RGB PNG with eXIf chunks before/after IDAT and other (type, data) chunks before/after it."""
    w, h = im.size
    raw = b"".join(b"\0" + b"".join(bytes(im.getpixel((x, y))) for x in range(w)) for y in range(h))
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">LLBBBBB", w, h, 8, 2, 0, 0, 0))
    out += b"".join(chunk(b"eXIf", d) for d in exif_chunks) + b"".join(chunk(t, d) for t, d in pre)
    out += chunk(b"IDAT", zlib.compress(raw, 9))
    out += b"".join(chunk(b"eXIf", d) for d in after_idat) + b"".join(chunk(t, d) for t, d in post)
    return out + (chunk(b"IEND", b"") if iend else b"")


def text(key, value, kind="tEXt"):
    """A (type, data) text chunk: tEXt, zTXt (zlib), iTXt (uncompressed) or iTXt+z (compressed)."""
    if kind == "tEXt":
        return b"tEXt", key + b"\0" + value
    if kind == "zTXt":
        return b"zTXt", key + b"\0\0" + zlib.compress(value)
    if kind == "iTXt":
        return b"iTXt", key + b"\0\0\0" + b"\0\0" + value
    return b"iTXt", key + b"\0\1\0" + b"\0\0" + zlib.compress(value)


def raw_profile(blk, sep=""):
    """An ImageMagick "Raw profile type exif" text: newline, name, newline, length, newline, hex lines."""
    hx = sep.join("%02x" % b for b in blk)
    return ("\nexif\n%8d\n" % len(blk) + "\n".join(hx[i:i + 72] for i in range(0, len(hx), 72)) + "\n").encode()


def jpeg_with(base_jpeg, segments):
    """base_jpeg with APP1 segments (payloads) right after its SOI (and its JFIF APP0, if any)."""
    assert base_jpeg[:2] == b"\xff\xd8"
    i = 2
    if base_jpeg[2:4] == b"\xff\xe0":
        i = 4 + struct.unpack(">H", base_jpeg[4:6])[0]
    app = b""
    for p in segments:
        if isinstance(p, tuple):            # (payload, declared length) to lie about the length
            p, L = p
        else:
            L = len(p) + 2
        app += b"\xff\xe1" + struct.pack(">H", L) + p
    return base_jpeg[:i] + app + base_jpeg[i:]


# ---- what Pillow does -----------------------------------------------------------------------------------

def pillow_orientation(data, base_data):
    """The orientation K with exif_transpose(open(data)) == transpose_K(open(base_data)), or (1, 'pillow-raises')."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            got = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
        except Exception as ex:  # noqa: BLE001 - any failure means diffusers' load_image fails
            return 1, "pillow-raises:" + type(ex).__name__
    base = Image.open(io.BytesIO(base_data)).convert("RGB")
    found = [k for k in range(1, 9) if (base if k == 1 else base.transpose(METHOD[k])).tobytes() == got.tobytes()
             and (base if k == 1 else base.transpose(METHOD[k])).size == got.size]
    assert len(found) == 1, found
    return found[0], "pillow"


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        os.remove(os.path.join(OUT, f))
    lines = ["# kind file ... (written by scripts/gen_exif_refs.py with Pillow %s; see its docstring)" % PIL.__version__]
    files = {}

    def put(name, data):
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
        files[name] = data

    # ---- PNG: the eight orientations, little- and big-endian, against Pillow's PNG byte for byte
    pim = base_image(5, 3)
    put("png_base.png", png_bytes(pim))
    for k in range(1, 9):
        name = "png_o%d.png" % k
        put(name, png_bytes(pim, [orient(k, be=(k % 2 == 0))]))
        ref = "png_o%d_pillow.png" % k
        out = io.BytesIO()
        ImageOps.exif_transpose(Image.open(io.BytesIO(files[name]))).convert("RGB").save(out, "PNG")
        put(ref, out.getvalue())
        lines.append("ref %s %s" % (name, ref))

    # ---- hostile and unusual TIFF blocks (used in PNG eXIf and JPEG APP1 alike)
    big = 0xFFFF
    hostile = {
        "trunc_header": b"II*\0\x08\0",
        "trunc_entry": orient(6)[:-8],                         # the entry cut in the middle
        "no_next_ifd": orient(6)[:-4],                         # whole entry, next-IFD pointer missing
        "ifd_past_end": tiff([(0x0112, 3, 1, short(6))], ifd_off=0x7FFFFFF0),
        "ifd_offset_max": tiff([(0x0112, 3, 1, short(6))], ifd_off=0xFFFFFFFF),
        "ifd_in_header": tiff([(0x0112, 3, 1, short(6))], ifd_off=4),
        "huge_count_first": tiff([(0x0112, 3, 1, short(6))], count=big),
        "huge_count_absent": tiff([(0x0100, 3, 1, short(6))], count=big),
        "be_6": orient(6, be=True),
        "be_with_le_value": tiff([(0x0112, 3, 1, short(6))], be=True),
        "val_0": orient(0), "val_9": orient(9), "val_65535": orient(65535), "val_1": orient(1),
        "dup_6_then_3": tiff([(0x0112, 3, 1, short(6)), (0x0112, 3, 1, short(3))]),
        "dup_badtype_then_3": tiff([(0x0112, 99, 1, short(6)), (0x0112, 3, 1, short(3))]),
        "dup_byte_then_3": tiff([(0x0112, 1, 1, b"\x06\0\0\0"), (0x0112, 3, 1, short(3))]),
        "dup_count0_then_3": tiff([(0x0112, 3, 0, short(6)), (0x0112, 3, 1, short(3))]),
        "long_6": tiff([(0x0112, 4, 1, struct.pack("<L", 6))]),
        "sshort_6": tiff([(0x0112, 8, 1, short(6))]),
        "sshort_neg": tiff([(0x0112, 8, 1, struct.pack("<hh", -6, 0))]),
        "short_count2": tiff([(0x0112, 3, 2, struct.pack("<HH", 8, 1))]),
        "short_count3_ool": tiff([(0x0112, 3, 3, struct.pack("<L", 26))], tail=struct.pack("<HHH", 5, 1, 1)),
        "short_count_huge": tiff([(0x0112, 3, 0xFFFFFFFF, struct.pack("<L", 26))]),
        "rational_6": tiff([(0x0112, 5, 1, struct.pack("<L", 26))], tail=struct.pack("<LL", 12, 2)),
        "rational_den0": tiff([(0x0112, 5, 1, struct.pack("<L", 26))], tail=struct.pack("<LL", 6, 0)),
        "rational_past_end": tiff([(0x0112, 5, 1, struct.pack("<L", 0xFFFFFFF0))]),
        "double_7": tiff([(0x0112, 12, 1, struct.pack("<L", 26))], tail=struct.pack("<d", 7.0)),
        "float_7_5": tiff([(0x0112, 11, 1, struct.pack("<f", 7.5))]),
        "ascii_6": tiff([(0x0112, 2, 2, b"6\0\0\0")]),
        "ool_past_end_before": tiff([(0x010F, 2, 20, struct.pack("<L", 5000)), (0x0112, 3, 1, short(6))]),
        "ool_runs_past_end_before": tiff([(0x010F, 2, 20, struct.pack("<L", 30)), (0x0112, 3, 1, short(6))]),
        "ool_huge_before": tiff([(0x010F, 2, 0x10000000, struct.pack("<L", 30)), (0x0112, 3, 1, short(6))]),
        "ool_dup_tag_before": tiff([(0x010F, 2, 2, b"a\0\0\0"), (0x010F, 2, 20, struct.pack("<L", 5000)),
                                    (0x0112, 3, 1, short(5))]),
        "exif_prefix_inside": b"Exif\0\0" + orient(7),
        "exif_prefix_twice_inside": b"Exif\0\0Exif\0\0" + orient(7),
        "bigtiff_magic": tiff([(0x0112, 3, 1, short(6))], magic=b"\x2b\0"),
        "swapped_magic_le": tiff([(0x0112, 3, 1, short(6))], magic=b"\0\x2a"),
        "swapped_magic_be": tiff([(0x0112, 3, 1, short(6, True))], be=True, magic=b"\x2a\0"),
        "bad_magic": tiff([(0x0112, 3, 1, short(6))], magic=b"\x2c\0"),
        "not_tiff": b"XX*\0\x08\0\0\0",
        "empty": b"",
        "one_byte": b"I",
    }
    for name, blk in hostile.items():
        f = "png_%s.png" % name
        put(f, png_bytes(pim, [blk]))
        k, note = pillow_orientation(files[f], files["png_base.png"])
        lines.append("case %s png_base.png %d %s" % (f, k, note))
    # PNG only: where the eXIf chunk sits, several of them
    extra = {
        "after_idat_6": png_bytes(pim, [], [orient(6)]),
        "two_3_then_6": png_bytes(pim, [orient(3), orient(6)]),
        "before_3_after_8": png_bytes(pim, [orient(3)], [orient(8)]),
    }
    # PNG only: Pillow's fallbacks, a "Raw profile type exif" text without eXIf, XMP text without an Orientation
    RAW, XMPK = b"Raw profile type exif", b"XML:com.adobe.xmp"
    def pxmp(v):
        return b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description tiff:Orientation="%d"/></x:xmpmeta>' % v
    extra.update({
        "raw_ztxt_6": png_bytes(pim, pre=[text(RAW, raw_profile(b"Exif\0\0" + orient(6)), "zTXt")]),
        "raw_text_8": png_bytes(pim, pre=[text(RAW, raw_profile(orient(8, be=True)))]),
        "raw_itxt_z_after_idat_5": png_bytes(pim, post=[text(RAW, raw_profile(b"Exif\0\0" + orient(5)), "iTXt+z")]),
        "raw_spaces_7": png_bytes(pim, pre=[text(RAW, raw_profile(orient(7), sep=" "))]),
        "raw_bad_hex": png_bytes(pim, pre=[text(RAW, raw_profile(orient(6)).replace(b"49", b"zz", 1))]),
        "raw_odd_digits": png_bytes(pim, pre=[text(RAW, raw_profile(orient(6))[:-2] + b"\n")]),
        "raw_two_lines": png_bytes(pim, pre=[text(RAW, b"\nexif\n" + orient(6).hex().encode())]),
        "raw_and_exif_chunk": png_bytes(pim, [tiff([(0x0100, 3, 1, short(6))])],
                                        pre=[text(RAW, raw_profile(orient(6)))]),
        "raw_no_orient_xmp_3": png_bytes(pim, pre=[text(RAW, raw_profile(tiff([(0x0100, 3, 1, short(6))]))),
                                                   text(XMPK, pxmp(3), "iTXt")]),
        "xmp_itxt_8": png_bytes(pim, pre=[text(XMPK, pxmp(8), "iTXt")]),
        "xmp_itxt_z_3": png_bytes(pim, pre=[text(XMPK, pxmp(3), "iTXt+z")]),
        "xmp_ztxt_7": png_bytes(pim, pre=[text(XMPK, pxmp(7), "zTXt")]),
        "xmp_text_after_idat_5": png_bytes(pim, post=[text(XMPK, pxmp(5))]),
        "xmp_after_idat_no_iend_6": png_bytes(pim, post=[text(XMPK, pxmp(6), "iTXt")], iend=False),
        "xmp_two_last_wins_2": png_bytes(pim, pre=[text(XMPK, pxmp(4), "iTXt")], post=[text(XMPK, pxmp(2), "iTXt")]),
        "exif_1_xmp_6": png_bytes(pim, [orient(1)], pre=[text(XMPK, pxmp(6), "iTXt")]),
        "exif_no_tag_xmp_6": png_bytes(pim, [tiff([(0x0100, 3, 1, short(6))])], pre=[text(XMPK, pxmp(6), "iTXt")]),
    })
    for name, data in extra.items():
        f = "png_%s.png" % name
        put(f, data)
        k, note = pillow_orientation(data, files["png_base.png"])
        lines.append("case %s png_base.png %d %s" % (f, k, note))

    # ---- JPEG: the eight orientations and the hostile blocks on one base JPEG (same entropy-coded data)
    jim = base_image(24, 16)
    out = io.BytesIO()
    jim.save(out, "JPEG", quality=90)
    put("jpg_base.jpg", out.getvalue())
    base = files["jpg_base.jpg"]
    for k in range(1, 9):
        f = "jpg_o%d.jpg" % k
        put(f, jpeg_with(base, [b"Exif\0\0" + orient(k, be=(k % 2 == 1))]))
        kk, note = pillow_orientation(files[f], base)
        assert kk == k
        lines.append("case %s jpg_base.jpg %d %s" % (f, kk, note))
    for name in ("trunc_header", "trunc_entry", "ifd_past_end", "huge_count_first", "huge_count_absent", "be_6",
                 "val_0", "val_9", "val_65535", "dup_6_then_3", "dup_badtype_then_3", "ool_runs_past_end_before",
                 "ool_huge_before", "rational_past_end", "short_count_huge", "bigtiff_magic", "empty",
                 "exif_prefix_inside"):
        f = "jpg_%s.jpg" % name
        put(f, jpeg_with(base, [b"Exif\0\0" + hostile[name]]))
        k, note = pillow_orientation(files[f], base)
        lines.append("case %s jpg_base.jpg %d %s" % (f, k, note))
    # JPEG only: Pillow joins the APP1 "Exif" segments; the orientation entry may sit in the second one
    blk = orient(6)
    jextra = {
        "split_2_segments": jpeg_with(base, [b"Exif\0\0" + blk[:12], b"Exif\0\0" + blk[12:]]),
        "second_segment_only_prefix": jpeg_with(base, [b"Exif\0\0" + orient(8), b"Exif\0\0"]),
        "not_exif_app1": jpeg_with(base, [b"Exix\0\0" + orient(6)]),
        "app1_len_short": jpeg_with(base, [(b"Exif\0\0" + orient(6), 8)]),  # segment ends inside the TIFF block
    }
    # Pillow reads the markers only up to the first scan: an APP1 "Exif" between the scan and EOI is not its EXIF
    assert base[-2:] == b"\xff\xd9"
    app = b"Exif\0\0" + orient(6)
    jextra["app1_after_scan"] = base[:-2] + b"\xff\xe1" + struct.pack(">H", len(app) + 2) + app + base[-2:]
    for name, data in jextra.items():
        f = "jpg_%s.jpg" % name
        put(f, data)
        k, note = pillow_orientation(data, base)
        lines.append("case %s jpg_base.jpg %d %s" % (f, k, note))
    # JPEG only: Pillow's fallback on XMP (APP1 "http://ns.adobe.com/xap/1.0/\0") when the EXIF has no Orientation
    def xmp(body):
        return b"http://ns.adobe.com/xap/1.0/\0" + b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description ' + body + \
            b"</rdf:Description></x:xmpmeta>"
    xcases = {
        "xmp_attr_6": [xmp(b'tiff:Orientation="6">')],
        "xmp_element_8": [xmp(b"><tiff:Orientation>8</tiff:Orientation>")],
        "xmp_first_match": [xmp(b'tiff:Orientation="x" tiff:Orientation=6 tiff:Orientation="5">')],
        "xmp_last_segment": [xmp(b'tiff:Orientation="3">'), xmp(b'tiff:Orientation="6">')],
        "xmp_cut": [xmp(b"")[:-40] + b'tiff:Orientation="'],
        "xmp_9": [xmp(b'tiff:Orientation="9" tiff:Orientation="6">')],
        "exif_1_xmp_6": [b"Exif\0\0" + orient(1), xmp(b'tiff:Orientation="6">')],
        "exif_no_tag_xmp_3": [b"Exif\0\0" + tiff([(0x0100, 3, 1, short(6))]), xmp(b'tiff:Orientation="3">')],
        "exif_bad_type_xmp_3": [b"Exif\0\0" + tiff([(0x0112, 99, 1, short(6))]), xmp(b'tiff:Orientation="3">')],
    }
    for name, segs in xcases.items():
        f = "jpg_%s.jpg" % name
        put(f, jpeg_with(base, segs))
        k, note = pillow_orientation(files[f], base)
        lines.append("case %s jpg_base.jpg %d %s" % (f, k, note))
    # a camera-like EXIF written by Pillow itself (strings and rationals stored out of line before the
    # Orientation, an Exif sub-IFD), through Pillow's own JPEG and PNG writers
    ex = Image.Exif()
    ex[0x010F] = "SomePhone Inc."
    ex[0x0110] = "Model 12 Pro Max"
    ex[0x011A] = 72.0
    ex[0x011B] = 72.0
    ex[0x0128] = 2
    ex[0x0131] = "Camera 1.2.3"
    ex[0x0112] = 6
    ex.get_ifd(0x8769)[0x9003] = "2024:05:06 07:08:09"
    ex.get_ifd(0x8769)[0x829A] = 1 / 120
    exb = ex.tobytes()
    out = io.BytesIO()
    Image.open(io.BytesIO(base)).save(out, "JPEG", quality=90, exif=exb)
    put("jpg_camera_6.jpg", out.getvalue())
    # the JPEG was re-encoded: its orientation-free twin is the same save without the EXIF (the same
    # entropy-coded data, so our two decodes differ only by the orientation)
    out2 = io.BytesIO()
    Image.open(io.BytesIO(base)).save(out2, "JPEG", quality=90)
    put("jpg_camera_base.jpg", out2.getvalue())
    k, note = pillow_orientation(files["jpg_camera_6.jpg"], files["jpg_camera_base.jpg"])
    lines.append("case jpg_camera_6.jpg jpg_camera_base.jpg %d %s" % (k, note))
    out = io.BytesIO()
    pim.save(out, "PNG", exif=exb)
    put("png_camera_6.png", out.getvalue())
    k, note = pillow_orientation(files["png_camera_6.png"], files["png_base.png"])
    lines.append("case png_camera_6.png png_base.png %d %s" % (k, note))

    # an APP1 claiming more bytes than the file has: the JPEG itself is broken
    put("jpg_app1_past_eof.jpg", base[:2] + b"\xff\xe1\xff\xf0Exif\0\0" + orient(6))
    lines.append("nocrash jpg_app1_past_eof.jpg app1-claims-past-end-of-file")

    with open(os.path.join(OUT, "cases.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    total = sum(len(d) for d in files.values())
    print("%d files, %d bytes, %d lines in cases.txt" % (len(files), total, len(lines) - 1))


if __name__ == "__main__":
    main()

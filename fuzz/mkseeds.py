#!/usr/bin/env python3
"""mkseeds.py OUT GOLDEN — seed corpora for the fuzz targets, made from the golden files (stdlib only).

Writes OUT/<target>/<name> for every target in fuzz/. Large golden files are cut down so the fuzzer runs
fast: safetensors files keep a few small tensors (offsets recomputed), vocabularies keep their first
pieces (plus the special ones), spiece.model keeps its first pieces with trainer_spec.vocab_size fixed up
to match. The committed hand-written seeds in fuzz/seeds/<target>/ are copied in as well.
"""
import json, os, shutil, struct, sys, zlib

SEP = b"\n#@sd3c-next-file@#\n"
out, golden = sys.argv[1], sys.argv[2]
here = os.path.dirname(os.path.abspath(__file__))
TINY = [os.path.join(golden, d) for d in ("tiny-sd3", "tiny-sd35-medium-like", "tiny-sd35-large-like")]


def put(target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def read(p):
    with open(p, "rb") as f:
        return f.read()


# ---- safetensors: a few small tensors of each golden file, real data, offsets recomputed ----
def st_read(p):
    b = read(p)
    n = struct.unpack("<Q", b[:8])[0]
    return json.loads(b[8:8 + n]), b[8 + n:]


def st_build(items, meta=None):
    hdr, data = {}, b""
    if meta is not None:
        hdr["__metadata__"] = meta
    for name, dt, shape, raw in items:
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


st_files = []
for root, _, files in os.walk(golden):
    for f in sorted(files):
        if f.endswith(".safetensors"):
            st_files.append(os.path.join(root, f))
st_files.sort()
for i, p in enumerate(st_files[:40]):
    hdr, data = st_read(p)
    meta = hdr.pop("__metadata__", None)
    items = []
    for name, e in sorted(hdr.items(), key=lambda kv: kv[1]["data_offsets"][1] - kv[1]["data_offsets"][0]):
        a, b = e["data_offsets"]
        if b - a <= 512:
            items.append((name, e["dtype"], e["shape"], data[a:b]))
        if len(items) >= 6:
            break
    put("fuzz_safetensors", "golden_%02d" % i, st_build(items, meta))
put("fuzz_safetensors", "empty_header", st_build([]))
put("fuzz_safetensors", "scalar_i64", st_build([("x", "I64", [], struct.pack("<q", 7)), ("y", "BOOL", [2], b"\x01\x00")], {"a": "b"}))

# ---- quantised files (src/quant/quant.h format): q8_row and q4_block32 pairs, both in one file ----
def f32s(vals):
    return b"".join(struct.pack("<f", v) for v in vals)


q8 = [("blk.q.weight", "I8", [4, 32], bytes((i * 7) % 255 - 127 & 0xFF for i in range(128))),
      ("blk.q.weight.qscale", "F32", [4, 1], f32s([0.01, 0.02, 0.0, 0.5]))]
q4 = [("blk.wo.weight", "U8", [2, 32], bytes((i * 13) & 0xFF for i in range(64))),
      ("blk.wo.weight.qscale", "F32", [2, 2], f32s([0.1, 0.2, 0.3, 0.0]))]
plain = [("blk.ln.weight", "F32", [4], f32s([1, 1, 1, 1]))]
put("fuzz_quant", "q8_row", st_build(q8 + plain, {"sd3c.quant": "q8_row", "sd3c.quant.version": "1"}))
put("fuzz_quant", "q4_block32", st_build(q4 + plain, {"sd3c.quant": "q4_block32", "sd3c.quant.version": "1"}))
put("fuzz_quant", "both", st_build(q8 + q4, {"sd3c.quant": "q8_row", "sd3c.quant.version": "1"}))
put("fuzz_quant", "no_meta", st_build(q8))

# ---- configs and model_index.json ----
for t in TINY:
    tag = os.path.basename(t)
    for root, _, files in os.walk(t):
        for f in sorted(files):
            if f.endswith(".json") and f not in ("tokenizer.json", "vocab.json"):
                b = read(os.path.join(root, f))
                name = tag + "_" + os.path.relpath(os.path.join(root, f), t).replace("/", "_")
                if len(b) < 64 * 1024:
                    put("fuzz_config", name, b)
                if f == "model_index.json":
                    put("fuzz_model_index", name, b)

# ---- CLIP tokenizer folder: first pieces of vocab.json and merges.txt + the two configs ----
tok = os.path.join(golden, "tiny-sd3", "tokenizer")
vocab = json.loads(read(os.path.join(tok, "vocab.json")))
merges = read(os.path.join(tok, "merges.txt")).split(b"\n")
for n_v, n_m in ((600, 300), (3000, 2000)):
    small = {k: v for k, v in vocab.items() if v < n_v or k in ("<|startoftext|>", "<|endoftext|>")}
    parts = [json.dumps(small).encode(), b"\n".join(merges[:n_m + 1]) + b"\n",
             read(os.path.join(tok, "tokenizer_config.json")), read(os.path.join(tok, "special_tokens_map.json"))]
    put("fuzz_clip_tok_load", "clip_%d" % n_v, SEP.join(parts))
    put("fuzz_clip_tok_load", "clip_%d_no_configs" % n_v, SEP.join(parts[:2]))
tok2 = os.path.join(golden, "tiny-sd3", "tokenizer_2")
put("fuzz_clip_tok_load", "clip_g_configs", SEP.join([json.dumps({k: v for k, v in vocab.items() if v < 300}).encode(),
                                                       b"\n".join(merges[:100]), read(os.path.join(tok2, "tokenizer_config.json")),
                                                       read(os.path.join(tok2, "special_tokens_map.json"))]))

# ---- T5 tokenizer: tokenizer.json with the first pieces; spiece.model cut to its first pieces ----
t5 = os.path.join(golden, "tiny-sd3", "tokenizer_3")
tj = json.loads(read(os.path.join(t5, "tokenizer.json")))
cfg3 = read(os.path.join(t5, "tokenizer_config.json"))
for n_v, keep_norm in ((400, False), (2000, False), (400, True)):
    j = dict(tj)
    j["model"] = dict(tj["model"])
    j["model"]["vocab"] = tj["model"]["vocab"][:n_v]
    j["added_tokens"] = [a for a in tj["added_tokens"] if a["id"] < 3]
    if not keep_norm:
        j["normalizer"] = None
    body = json.dumps(j).encode()
    put("fuzz_t5_tok_load", "json_%d%s" % (n_v, "_charsmap" if keep_norm else ""), b"\x01" + body)
    put("fuzz_t5_tok_load", "json_%d%s_cfg" % (n_v, "_charsmap" if keep_norm else ""), b"\x01" + body + SEP + cfg3)


def pb_fields(b):
    """Top-level fields of a protobuf message: (field, wiretype, raw bytes of the whole field)."""
    i, res = 0, []
    while i < len(b):
        start = i
        key, i = varint(b, i)
        f, wt = key >> 3, key & 7
        if wt == 0:
            _, i = varint(b, i)
        elif wt == 1:
            i += 8
        elif wt == 5:
            i += 4
        elif wt == 2:
            n, i = varint(b, i)
            i += n
        else:
            raise ValueError("wire type %d" % wt)
        res.append((f, wt, b[start:i]))
    return res


def varint(b, i):
    v, s = 0, 0
    while True:
        c = b[i]
        i += 1
        v |= (c & 0x7F) << s
        s += 7
        if c < 0x80:
            return v, i


def enc_varint(v):
    o = b""
    while True:
        c = v & 0x7F
        v >>= 7
        if v:
            o += bytes([c | 0x80])
        else:
            return o + bytes([c])


def ld_payload(raw):
    _, i = varint(raw, 0)
    _, i = varint(raw, i)
    return raw[i:]


sp = read(os.path.join(t5, "spiece.model"))
put("fuzz_t5_tok_load", "spiece_full", b"\x00" + sp)
for n_p in (300, 1500):
    fields, kept, o = pb_fields(sp), 0, b""
    for f, wt, raw in fields:
        if f == 1:
            if kept < n_p:
                o += raw
                kept += 1
        elif f == 2:  # trainer_spec: vocab_size (field 3) set to the pieces kept
            ts = b"".join(r for ff, _, r in pb_fields(ld_payload(raw)) if ff != 3) + enc_varint(3 << 3) + enc_varint(n_p)
            o += enc_varint((2 << 3) | 2) + enc_varint(len(ts)) + ts
        elif f == 3 and n_p == 300:  # normalizer_spec with its charsmap dropped in the smallest seed
            ns = b"".join(r for ff, _, r in pb_fields(ld_payload(raw)) if ff != 2)
            o += enc_varint((3 << 3) | 2) + enc_varint(len(ns)) + ns
        else:
            o += raw
    put("fuzz_t5_tok_load", "spiece_%d" % n_p, b"\x00" + o)
    put("fuzz_t5_tok_load", "spiece_%d_cfg" % n_p, b"\x00" + o + SEP + cfg3)

# ---- tokenizers on text: the golden prompts ----
tj = json.loads(read(os.path.join(golden, "text", "tokenizers.json")))
for p in tj["prompts"]:
    put("fuzz_tokenize", "prompt_%02d" % p["index"], bytes.fromhex(p["utf8_hex"])[:4096])

# ---- images: tiny PNGs (with text chunks, odd sizes, 16-bit, palette), a BMP; JPEG etc. from fuzz.sh ----
def png(w, h, ctype=2, depth=8, text=(), rows=None, interlace=0):
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    ch = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[ctype]
    bpp = max(1, ch * depth // 8)
    if rows is None:
        rows = b"".join(b"\x00" + bytes((x * 7 + y * 13) & 0xFF for x in range(w * bpp)) for y in range(h))
    o = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, interlace))
    if ctype == 3:
        o += chunk(b"PLTE", bytes(range(48)))
    for k, v in text:
        o += chunk(b"tEXt", k + b"\x00" + v)
    o += chunk(b"iTXt", b"prompt\x00\x00\x00\x00\x00a photo of a cat \xc3\xa9") if text else b""
    return o + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


put("fuzz_image", "rgb_8x8.png", png(8, 8, text=[(b"seed", b"42"), (b"steps", b"4")]))
put("fuzz_image", "rgba_5x3.png", png(5, 3, ctype=6))
put("fuzz_image", "gray16_4x4.png", png(4, 4, ctype=0, depth=16))
put("fuzz_image", "palette_6x2.png", png(6, 2, ctype=3))
put("fuzz_image", "interlaced_9x9.png", png(9, 9, interlace=1))
put("fuzz_image", "zero_0x0.png", png(0, 0, rows=b""))
put("fuzz_image", "huge_100000x100000.png", png(100000, 100000, rows=b"\x00"))
bmp_px = b"".join(bytes((x * 20, y * 30, 99)) * 1 for y in range(4) for x in range(4))
put("fuzz_image", "rgb_4x4.bmp", b"BM" + struct.pack("<IHHI", 54 + len(bmp_px), 0, 0, 54) +
    struct.pack("<IiiHHIIiiII", 40, 4, 4, 1, 24, 0, len(bmp_px), 2835, 2835, 0, 0) + bmp_px)
put("fuzz_image", "ppm_3x2.ppm", b"P6\n3 2\n255\n" + bytes(range(18)))

# ---- committed hand-written seeds ----
seeds = os.path.join(here, "seeds")
if os.path.isdir(seeds):
    for t in os.listdir(seeds):
        for f in os.listdir(os.path.join(seeds, t)):
            put(t, "committed_" + f, read(os.path.join(seeds, t, f)))

# ---- LoRA: the golden LoRA's keys and shapes as the text list fuzz_lora reads ----
for p in st_files:
    if "lora" in os.path.basename(p):
        hdr, _ = st_read(p)
        lines = ["%s %s %s" % (k, e["dtype"], " ".join(str(d) for d in e["shape"])) for k, e in hdr.items() if k != "__metadata__"]
        put("fuzz_lora", os.path.basename(p).replace(".safetensors", ""), "\n".join(lines) + "\n")
        put("fuzz_lora", os.path.basename(p).replace(".safetensors", "") + "_first8", "\n".join(lines[:8]) + "\n")
print("seeds written to", out)

#!/usr/bin/env python3
"""Write the reference data of tests/test_image_resize.c: small deterministic test images and Pillow's own
LANCZOS resize of each (what diffusers' VaeImageProcessor.resize does: PIL image.resize((W, H),
resample=Image.LANCZOS)), as PNGs in tests/data/resize/, plus cases.txt listing them.

Tooling only: the product and its tests never run Python; they read the committed PNGs. Rerun it (from the
repository root: python3 scripts/gen_resize_refs.py) only to change the cases; it needs Pillow.
"""
import os
import random

import PIL
from PIL import Image

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "resize")


def make(mode, w, h, seed, kind):
    """A deterministic test image: 'noise' is gradients plus uniform noise (every channel different), 'edges'
    is hard black/white shapes (a mask-like image whose resize overshoots and must clip)."""
    rng = random.Random(seed)
    nb = len(mode)
    px = []
    for y in range(h):
        for x in range(w):
            if kind == "noise":
                v = [(x * 255 // max(w - 1, 1) + rng.randrange(-60, 61)) % 256,
                     (y * 255 // max(h - 1, 1) + rng.randrange(-60, 61)) % 256,
                     rng.randrange(256)]
            else:
                on = ((x // 5 + y // 3) % 2 == 0) or (x - w // 2) ** 2 + (y - h // 2) ** 2 < (min(w, h) // 3) ** 2
                v = [255 if on else 0] * 3
            px.append(tuple(v[:nb]) if nb > 1 else v[0])
    im = Image.new(mode, (w, h))
    im.putdata(px)
    return im


# (name, mode, input size, seed, kind, output sizes)
CASES = [
    ("rgb37x23", "RGB", (37, 23), 1, "noise",
     [(64, 48), (16, 9), (37, 5), (11, 23), (100, 7), (5, 60), (1, 1), (37, 1), (1, 23), (3, 2)]),
    ("rgb96x80", "RGB", (96, 80), 2, "noise", [(64, 64), (128, 96), (96, 64)]),
    ("rgb1x1", "RGB", (1, 1), 3, "noise", [(5, 3), (1, 4)]),
    ("rgb2x3", "RGB", (2, 3), 4, "noise", [(7, 1), (1, 9)]),
    ("l37x23", "L", (37, 23), 5, "noise", [(20, 31), (64, 64), (1, 1), (36, 22)]),
    ("lmask29x17", "L", (29, 17), 6, "edges", [(64, 64), (16, 16), (58, 34)]),
    ("rgbmask40x24", "RGB", (40, 24), 7, "edges", [(64, 48), (17, 13)]),
]


def main():
    os.makedirs(OUT, exist_ok=True)
    lines = ["# input output out_w out_h mode (written by scripts/gen_resize_refs.py with Pillow %s)" % PIL.__version__]
    for name, mode, (w, h), seed, kind, outs in CASES:
        src = make(mode, w, h, seed, kind)
        src_name = "%s.png" % name
        src.save(os.path.join(OUT, src_name))
        for ow, oh in outs:
            dst_name = "%s_to_%dx%d.png" % (name, ow, oh)
            src.resize((ow, oh), resample=Image.LANCZOS).save(os.path.join(OUT, dst_name))
            lines.append("%s %s %d %d %s" % (src_name, dst_name, ow, oh, mode))
    with open(os.path.join(OUT, "cases.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Writes a small EM-like test stack as greyscale PNGs: noise plus a bright disc that drifts over time.

    make_stack.py --out DIR --n 45 --h 64 --w 48 [--seed 7] [--bits 8]
"""
import argparse
import os

import numpy as np
from PIL import Image


def stack(n, h, w, seed, bits):
    rng = np.random.default_rng(seed)
    top = 255 if bits == 8 else 65535
    y = np.arange(h)[:, None]
    x = np.arange(w)[None, :]
    out = []
    for z in range(n):
        cy = h * (0.3 + 0.4 * (z % 17) / 17)
        cx = w * (0.35 + 0.3 * (z % 11) / 11)
        disc = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * (min(h, w) / 6) ** 2))
        img = 0.15 * rng.random((h, w)) + 0.8 * disc
        out.append(np.clip(img * top, 0, top).astype(np.uint8 if bits == 8 else np.uint16))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--h", type=int, required=True)
    ap.add_argument("--w", type=int, required=True)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--bits", type=int, default=8, choices=[8, 16])
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    for z, img in enumerate(stack(a.n, a.h, a.w, a.seed, a.bits)):
        Image.fromarray(img).save(os.path.join(a.out, "slice_%05d.png" % z))


if __name__ == "__main__":
    main()

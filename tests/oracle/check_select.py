#!/usr/bin/env python3
"""NumPy oracle for select stages, montage and value outputs (the job of cli/tests/select_montage.rs):
recomputes every selected array with NumPy indexing from the input PNGs, draws the expected montages pixel by
pixel (tiles, gaps, digit labels) and compares with what arrayjob wrote.

    check_select.py --data DIR --out OUT

Prints one line per check and exits 1 if any check fails.
"""
import argparse
import csv
import glob
import json
import os
import sys

import numpy as np
import zarr
from PIL import Image

from check_pipeline import autoscale, check, checks, recenter

# The montage's 5 x 7 digit font (bit 4 = leftmost column), gap and label band, as docs/manifest.md states.
DIGITS = [
    [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
    [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
    [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
    [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
    [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
    [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
    [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
    [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
    [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
    [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
]
GAP = 4


def montage(slices, labels, columns):
    """The expected montage: tiles scaled together, each under a band with its label in white."""
    n, h, w = slices.shape
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    s = max(1, min(h, w) // 100)
    band = 9 * s
    img = np.zeros((rows * (band + h) + (rows - 1) * GAP, columns * w + (columns - 1) * GAP), np.uint8)
    grey = autoscale(slices.astype(np.float64))
    for k in range(n):
        r, c = divmod(k, columns)
        x0, y0 = c * (w + GAP), r * (band + h + GAP)
        img[y0 + band:y0 + band + h, x0:x0 + w] = grey[k]
        for d, ch in enumerate(str(labels[k])):
            for gy, bits in enumerate(DIGITS[int(ch)]):
                for gx in range(5):
                    if bits & (0x10 >> gx):
                        x = s + d * 6 * s + gx * s
                        y = y0 + s + gy * s
                        img[y:y + s, x0 + x:x0 + min(x + s, w)] = 255
    return img


def read_zarr(out, name):
    return zarr.open_array(os.path.join(out, name), mode="r")[...]


def read_png(out, name):
    return np.asarray(Image.open(os.path.join(out, name)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    files = sorted(glob.glob(os.path.join(a.data, "slice_*.png")))
    stack = np.stack([np.asarray(Image.open(f)) for f in files])
    out = a.out

    sample = stack[20]
    check("sample zarr (stack[20])", read_zarr(out, "sample.zarr"), sample, 0)
    check("sample png", read_png(out, "sample.png"), autoscale(sample.astype(np.float64)), 0)
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    value = [s.get("value") for s in summary["stages"] if s["name"] == "sample-mean"]
    check("stack[20].mean() in summary.json", np.array(value, np.float64), np.array([sample.mean()]), 1e-12)
    with open(os.path.join(out, "sample-mean.csv")) as f:
        rows = list(csv.reader(f))
    check("sample-mean csv", np.array([float(rows[1][0])]), np.array([sample.mean()]), 1e-12)

    row = stack[2:45:5]
    check("row zarr (stack[2:45:5])", read_zarr(out, "row.zarr"), row, 0)
    got = read_png(out, "row.png")
    want = montage(row, list(range(2, 45, 5)), 4)
    check("row montage (3 rows of 4, labels 2..42)", got, want, 0)
    check("row montage has labels", np.array([int((got == 255).sum()) > 9 * 10]), np.array([True]), 0)

    crop = stack[np.ix_([0, 6, 7, 8, 30, 44], range(3, 60, 4), [0, 1, 47])]
    check("crop zarr (three axes)", read_zarr(out, "crop.zarr"), crop, 0)

    picked = stack[1:44:3][:, [0, 9, 10, 11, 35, 63]][:, :, 5::7]
    check("picked zarr (select of a rechunked stage)", read_zarr(out, "picked.zarr"), picked, 0)
    with open(os.path.join(out, "pixel.csv")) as f:
        rows = list(csv.reader(f))[1:]
    check("pixel csv (picked[2, 3])", np.array([float(r[1]) for r in rows]), picked[2, 3].astype(np.float64), 0)

    recentered = np.stack([recenter(stack[i], 32, 24) for i in [4, 5, 40]])
    check("recentered montage labelled with source indices", read_png(out, "rrow.png"), montage(recentered, [4, 5, 40], 3), 0)

    trio = stack[[3, 5, 6]].astype(np.float64)
    check("power spectrum of a select that is one chunk along the FFT's axis", read_zarr(out, "trio-power.zarr"),
          np.abs(np.fft.fft(trio, axis=0)) ** 2, 1e-9, 1e-6)

    failed = 0
    for name, ok, msg in checks:
        print("%s %s: %s" % ("ok  " if ok else "FAIL", name, msg))
        failed += not ok
    print("%d checks, %d failed" % (len(checks), failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

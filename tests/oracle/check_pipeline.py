#!/usr/bin/env python3
"""NumPy oracle for the imaging pipeline: recomputes every stage of tests' pipeline job from the input PNGs
with the Dask post's code (plain NumPy instead of dask.array) and compares with what arrayjob wrote.

    check_pipeline.py --data DIR --out OUT --window R C

Reads arrayjob's Zarr outputs with zarr-python, its CSVs and PNGs, prints one line per check with the
largest error, and exits 1 if any check fails.
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


def centroid(im):
    # The post's centroid, vectorised: x is the row centroid, y the column centroid; (0, 0) for a black image.
    total = im.sum(dtype=np.int64)
    if total == 0:
        return 0, 0
    i = np.arange(im.shape[0], dtype=np.int64)
    j = np.arange(im.shape[1], dtype=np.int64)
    tx = (im.sum(axis=1, dtype=np.int64) * i).sum()
    ty = (im.sum(axis=0, dtype=np.int64) * j).sum()
    return tx / total, ty / total


def recenter(im, wr, wc):
    H, W = im.shape
    hr, hc = wr // 2, wc // 2
    x, y = centroid(im)
    x, y = int(x), int(y)
    x = min(max(x, hr), H - (wr - hr))
    y = min(max(y, hc), W - (wc - hc))
    return im[x - hr:x - hr + wr, y - hc:y - hc + wc]


checks = []


def check(name, got, want, rtol, atol=0.0):
    got = np.asarray(got)
    want = np.asarray(want)
    if got.shape != want.shape:
        checks.append((name, False, "shape %s != %s" % (got.shape, want.shape)))
        return
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    tol = atol + rtol * np.abs(want.astype(np.float64))
    ok = bool(np.all(err <= tol))
    checks.append((name, ok, "max abs err %.3g (max |want| %.3g)" % (err.max(), np.abs(want).max())))


def autoscale(a):
    # matplotlib's imshow with the grey colormap: normalise to [0, 1], then 256 levels.
    lo, hi = a.min(), a.max()
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.minimum(np.floor((a - lo) / (hi - lo) * 256.0), 255).astype(np.uint8)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--window", type=int, nargs=2, required=True)
    a = ap.parse_args()
    files = sorted(glob.glob(os.path.join(a.data, "slice_*.png")))
    stack = np.stack([np.asarray(Image.open(f)) for f in files])
    out = a.out

    time_mean = stack.mean(axis=0)
    check("time-mean zarr", zarr.open_array(os.path.join(out, "time-mean.zarr"), mode="r")[...], time_mean, 1e-12)
    png = np.asarray(Image.open(os.path.join(out, "time-mean.png")))
    check("time-mean png", png, autoscale(time_mean), 0, 1)

    brightness = stack.mean(axis=(1, 2))
    with open(os.path.join(out, "brightness.csv")) as f:
        rows = list(csv.reader(f))
    got = np.array([float(r[1]) for r in rows[1:]])
    check("brightness csv", got, brightness, 1e-12)
    check("brightness csv index", np.array([int(r[0]) for r in rows[1:]]), np.arange(len(stack)), 0)

    check("std over time", zarr.open_array(os.path.join(out, "time-std.zarr"), mode="r")[...], stack.std(axis=0), 1e-9, 1e-9)
    check("max over rows", zarr.open_array(os.path.join(out, "row-max.zarr"), mode="r")[...], stack.max(axis=1), 0)
    check("max over axes 0,1", zarr.open_array(os.path.join(out, "col-max.zarr"), mode="r")[...], stack.max(axis=(0, 1)), 0)
    check("min over time", zarr.open_array(os.path.join(out, "time-min.zarr"), mode="r")[...], stack.min(axis=0), 0)
    check("sum over axes 0,2", zarr.open_array(os.path.join(out, "sum02.zarr"), mode="r")[...], stack.sum(axis=(0, 2), dtype=np.float64), 1e-12)

    wr, wc = a.window
    recentered = np.stack([recenter(im, wr, wc) for im in stack])
    check("recentered zarr", zarr.open_array(os.path.join(out, "recentered.zarr"), mode="r")[...], recentered, 0)
    check("recentered mean", zarr.open_array(os.path.join(out, "recentered-mean.zarr"), mode="r")[...], recentered.mean(axis=0), 1e-12)

    x = np.fft.fft(recentered, axis=0)
    power = abs(x ** 2).astype("float32")
    zp = zarr.open_array(os.path.join(out, "power.zarr"), mode="r")
    check("power zarr dtype", np.array([zp.dtype == np.float32]), np.array([True]), 0)
    check("power zarr", zp[...], power, 2e-5, 1e-3)
    amp = np.abs(np.fft.rfft(recentered.astype(np.float64), axis=0))
    check("onesided amplitude zarr", zarr.open_array(os.path.join(out, "amplitude.zarr"), mode="r")[...], amp, 1e-9, 1e-9)

    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    names = [s["name"] for s in summary["stages"]]
    check("summary stages", np.array([n in names for n in ["source", "time-mean", "power"]]), np.array([True] * 3), 0)

    failed = 0
    for name, ok, msg in checks:
        print("%s %s: %s" % ("ok  " if ok else "FAIL", name, msg))
        failed += not ok
    print("%d checks, %d failed" % (len(checks), failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""What this machine allows, without Dask or arrayjob: memcpy bandwidth, Pillow PNG decode of the
benchmark's PNG files from memory, the post's numba centroid (+ the crop copy), and one bare
FFT call over the recentered-sized stack.  Every kernel runs in a non-main thread (numpy.fft from
the main thread page-faults much more with glibc malloc); single-thread unless the name says 2t.

usage: limits.py --data DIR --out limits.json [--n N] [--reps 3]
"""
import argparse
import io
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402

import common  # noqa: E402

POOL = ThreadPoolExecutor(1)
RES = {}


def measure(name, fn, reps, items=None, nbytes=None, **info):
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        POOL.submit(fn).result()
        times.append(time.perf_counter() - t0)
    best = min(times)
    rec = {"best_s": best, "median_s": float(np.median(times)), "times": times, **info}
    if items:
        rec["items"] = items
        rec["per_item_ms"] = best / items * 1e3
    if nbytes:
        rec["bytes"] = nbytes
        rec["MBps"] = nbytes / best / 1e6
    RES[name] = rec
    print("  %-40s best %8.4f s  median %8.4f s%s%s" % (
        name, best, rec["median_s"],
        ("  %.3f ms/item" % rec["per_item_ms"]) if items else "",
        ("  %.0f MB/s" % rec["MBps"]) if nbytes else ""), flush=True)
    return rec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="dataset directory (slice_%%05d.png)")
    ap.add_argument("--n", type=int, default=200, help="slices used for decode/centroid")
    ap.add_argument("--fft-sizes", default="200,1000")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    from PIL import Image
    import scipy.fft as sfft

    # memory bandwidth: 1 GB uint8
    src = np.ones(10**9, np.uint8)
    dst = np.zeros_like(src)
    measure("memcpy_1GB_copyto", lambda: np.copyto(dst, src), max(a.reps, 5), nbytes=10**9)
    measure("memcpy_1GB_np.copy_new_alloc", lambda: np.copy(src), a.reps, nbytes=10**9)
    del src, dst

    # PNG decode from memory, Pillow, one thread
    blobs = [open(os.path.join(a.data, "slice_%05d.png" % i), "rb").read() for i in range(a.n)]
    H, W = np.asarray(Image.open(io.BytesIO(blobs[0]))).shape
    slices = np.empty((a.n, H, W), np.uint8)

    def decode():
        for i, b in enumerate(blobs):
            slices[i] = np.asarray(Image.open(io.BytesIO(b)))
    measure("png_decode_pillow_1t", decode, a.reps, items=a.n, nbytes=a.n * H * W,
            png_bytes=sum(len(b) for b in blobs))

    # the post's centroid (numba, integer sums) and centroid + crop copy, per slice
    common.recenter(slices[0])
    measure("centroid_numba_1t", lambda: [common.centroid(s) for s in slices], a.reps,
            items=a.n, nbytes=a.n * H * W)
    out = np.empty((a.n, H // 2, W // 2), np.uint8)

    def rec():
        for i in range(a.n):
            out[i] = common.recenter(slices[i])
    measure("centroid+crop_copy_1t", rec, a.reps, items=a.n, nbytes=a.n * H * W)
    del slices, out, blobs

    # bare FFT over the recentered-sized stack: N x (H/2*W/2) series, time-major, one call
    rng = np.random.default_rng(0)
    for n in [int(x) for x in a.fft_sizes.split(",")]:
        x = rng.integers(0, 256, size=(n, (H // 2) * (W // 2)), dtype=np.uint8)
        x32 = x.astype(np.float32)
        nb = x.size
        for workers in (1, 2):
            measure("fft_N%d_rfft_f32_%dt" % (n, workers),
                    lambda: sfft.rfft(x32, axis=0, workers=workers), a.reps, nbytes=nb, series=x.shape[1])

        def rfft_power():
            y = sfft.rfft(x32, axis=0, workers=1)
            return (y.real * y.real + y.imag * y.imag).astype(np.float32)
        measure("fft_N%d_rfft_power_f32_1t" % n, rfft_power, a.reps, nbytes=nb, series=x.shape[1])
        x64 = x.astype(np.float64)
        measure("fft_N%d_rfft_f64_1t" % n, lambda: sfft.rfft(x64, axis=0, workers=1), a.reps,
                nbytes=nb, series=x.shape[1])
        del x, x32, x64
    RES["_meta"] = {"data": a.data, "n": a.n, "H": H, "W": W, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    with open(a.out, "w") as f:
        json.dump(RES, f, indent=1)


if __name__ == "__main__":
    main()

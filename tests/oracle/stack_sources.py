"""Writes image stacks as users' tools write them, and checks arrayjob's reading of them against NumPy's.

make DIR: TIFF stacks written by tifffile (8- and 16-bit, uncompressed, deflate, LZW, ImageJ, tiled, BigTIFF, big-endian), bad TIFFs
(an RGB page, pages of two sizes), Zarr arrays written by zarr-python (v2 float32, v3 int16 with a chunk left
unwritten, v3 uint16 sharded), OME-Zarr images (v0.5 on Zarr v3 and v0.4 on Zarr v2, two levels each) and bad
Zarr arrays (2-D, 4-D, bool).

check INPUT LEVEL OUT: INPUT (a .tif, or a Zarr array or OME-Zarr image, LEVEL its level or -1) read with
tifffile or zarr-python must equal OUT/copy.zarr (arrayjob's copy of the source) exactly, and OUT/mean.zarr
must be its float64 mean over axis 0. Prints "ok SHAPE DTYPE".
"""

import os
import sys

import numpy as np
import tifffile
import zarr

RNG = np.random.default_rng(20261130)
SHAPE = (11, 12, 10)


def make_tiffs(d):
    a8 = RNG.integers(0, 256, SHAPE, dtype=np.uint8)
    a16 = RNG.integers(0, 65536, SHAPE, dtype=np.uint16)
    tifffile.imwrite(f"{d}/u8.tif", a8)
    tifffile.imwrite(f"{d}/u16.tif", a16)
    tifffile.imwrite(f"{d}/u8_deflate.tif", a8, compression="zlib")
    tifffile.imwrite(f"{d}/u16_deflate.tif", a16, compression="zlib", predictor=True)
    tifffile.imwrite(f"{d}/u16_lzw.tif", a16, compression="lzw")
    tifffile.imwrite(f"{d}/u16_imagej.tif", a16, imagej=True, metadata={"axes": "ZYX"})
    tifffile.imwrite(f"{d}/u8_tiled.tif", a8, tile=(16, 16), compression="zlib")
    tifffile.imwrite(f"{d}/u16_big.tif", a16, bigtiff=True)
    tifffile.imwrite(f"{d}/u16_be.tif", a16, byteorder=">", compression="zlib")
    with tifffile.TiffWriter(f"{d}/bad_rgb.tif") as w:
        w.write(a8[0])
        w.write(a8[1])
        w.write(RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8), photometric="rgb")
    with tifffile.TiffWriter(f"{d}/bad_sizes.tif") as w:
        w.write(a8[0])
        w.write(a8[1, :10, :9])


def ome_attrs(levels):
    return {
        "version": "0.5",
        "multiscales": [
            {
                "axes": [
                    {"name": "z", "type": "space"},
                    {"name": "y", "type": "space"},
                    {"name": "x", "type": "space"},
                ],
                "datasets": [
                    {
                        "path": str(i),
                        "coordinateTransformations": [{"type": "scale", "scale": [1.0, 2.0**i, 2.0**i]}],
                    }
                    for i in range(levels)
                ],
            }
        ],
    }


def make_ome(path, zarr_format):
    attrs = ome_attrs(2)
    if zarr_format == 3:
        group = zarr.open_group(path, mode="w", zarr_format=3, attributes={"ome": attrs})
    else:
        del attrs["version"]
        attrs["multiscales"][0]["version"] = "0.4"
        group = zarr.open_group(path, mode="w", zarr_format=2, attributes={"multiscales": attrs["multiscales"]})
    base = RNG.integers(0, 4096, SHAPE, dtype=np.uint16)
    for level, data in enumerate([base, base[:, ::2, ::2]]):
        arr = group.create_array(str(level), shape=data.shape, chunks=(4, 5, 5), dtype=data.dtype)
        arr[:] = data


def make_zarrs(d):
    v2 = zarr.create_array(f"{d}/v2.zarr", shape=SHAPE, chunks=(3, 7, 10), dtype="float32", zarr_format=2)
    v2[:] = RNG.random(SHAPE, dtype=np.float32)
    v3 = zarr.create_array(f"{d}/v3.zarr", shape=SHAPE, chunks=(4, 5, 6), dtype="int16", fill_value=-7)
    data = RNG.integers(-30000, 30000, SHAPE).astype(np.int16)
    v3[:4] = data[:4]
    v3[8:] = data[8:]  # chunks of slices 4..8 are never written: they read as the fill value
    sharded = zarr.create_array(
        f"{d}/sharded.zarr", shape=SHAPE, chunks=(2, 6, 5), shards=(4, 12, 10), dtype="uint16"
    )
    sharded[:] = RNG.integers(0, 65536, SHAPE, dtype=np.uint16)
    make_ome(f"{d}/ome3.zarr", 3)
    make_ome(f"{d}/ome2.zarr", 2)
    zarr.create_array(f"{d}/flat.zarr", shape=(12, 10), chunks=(6, 5), dtype="uint8")[:] = 1
    zarr.create_array(f"{d}/four.zarr", shape=(2, 3, 12, 10), chunks=(1, 1, 12, 10), dtype="uint8")[:] = 1
    zarr.create_array(f"{d}/bools.zarr", shape=SHAPE, chunks=(4, 12, 10), dtype="bool")[:] = True
    os.makedirs(f"{d}/empty.zarr", exist_ok=True)


def read_input(path, level):
    if path.endswith(".tif"):
        return tifffile.imread(path)
    if level >= 0:
        group = zarr.open_group(path, mode="r")
        attrs = group.attrs.asdict()
        multiscales = attrs.get("ome", attrs)["multiscales"]
        return group[multiscales[0]["datasets"][level]["path"]][:]
    return zarr.open_array(path, mode="r")[:]


def check(path, level, out):
    want = read_input(path, level)
    copy = zarr.open_array(f"{out}/copy.zarr", mode="r")[:]
    native = want.dtype in (np.uint8, np.uint16, np.float32, np.float64)
    expected_dtype = want.dtype if native else np.float64
    assert copy.dtype == expected_dtype, f"copy is {copy.dtype}, expected {expected_dtype}"
    assert copy.shape == want.shape, f"copy is {copy.shape}, expected {want.shape}"
    assert np.array_equal(copy, want.astype(expected_dtype)), "copy differs from the input"
    mean = zarr.open_array(f"{out}/mean.zarr", mode="r")[:]
    want_mean = want.astype(np.float64).mean(axis=0)
    assert np.allclose(mean, want_mean, rtol=1e-12, atol=1e-9), "mean differs"
    print("ok", list(want.shape), want.dtype)


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make_tiffs(sys.argv[2])
        make_zarrs(sys.argv[2])
    else:
        check(sys.argv[2], int(sys.argv[3]), sys.argv[4])

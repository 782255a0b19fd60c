#!/usr/bin/env python3
"""One Dask run of the imaging pipeline of the Dask blog post (2017-01-17), timed stage by stage.

Stages (wall clock each, graph construction included):
  load             skimage.io.imread(url) per slice as dask.delayed -> from_delayed -> stack
                   -> rechunk to (C, H, W) -> persist
  mean_t           stack.mean(axis=0).compute()
  mean_xy          stack.mean(axis=(1, 2)).compute()
  recenter         stack.map_blocks(recenter_block) -> persist          (numba centroid)
  recentered_mean  recentered.mean(axis=0).compute()
  rechunk_fft      recentered.rechunk((N, 10, 10)) -> da.fft.fft(axis=0)
                   -> abs(x ** 2).astype(float32) -> persist(optimize_graph=False)

usage: dask_run.py --base-url http://127.0.0.1:PORT/DIR/ --n N --h H --w W
                   --scheduler threads|distributed --out run.json
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
os.environ["PYTHONPATH"] = HERE + os.pathsep + os.environ.get("PYTHONPATH", "")

import numpy as np  # noqa: E402

import common  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--h", type=int, default=1000)
    ap.add_argument("--w", type=int, default=1000)
    ap.add_argument("--chunk", type=int, default=20)
    ap.add_argument("--pix", type=int, default=10)
    ap.add_argument("--scheduler", choices=["threads", "distributed"], required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    N, H, W, C = a.n, a.h, a.w, a.chunk

    sampler = common.RssSampler(interval=0.02)
    import dask
    import dask.array as da
    import skimage.io

    t_setup = time.perf_counter()
    client = cluster = None
    if a.scheduler == "distributed":
        import logging
        from dask.distributed import Client, LocalCluster, wait
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
        client = Client(cluster)
        client.run(common.warmup)
        client.compute(da.ones((64, 64), chunks=32).sum()).result()

        def persist(x, **kw):
            x = client.persist(x, **kw)
            wait(x)
            return x
    else:
        dask.config.set(scheduler="threads")
        common.warmup()
        da.ones((64, 64), chunks=32).sum().compute()

        def persist(x, **kw):
            return dask.persist(x, **kw)[0]

    urls = [a.base_url + "slice_%05d.png" % i for i in range(N)]
    first = skimage.io.imread(urls[0])
    assert first.shape == (H, W) and first.dtype == np.uint8, (first.shape, first.dtype)
    setup_s = time.perf_counter() - t_setup

    stages = []
    keep = {}

    def timed(name, fn):
        sampler.take_window_peak()
        cpu0 = sampler.cpu_seconds()
        t0 = time.perf_counter()
        r = fn()
        dt = time.perf_counter() - t0
        cpu = sampler.cpu_seconds() - cpu0
        peak = sampler.take_window_peak()
        stages.append({"stage": name, "seconds": dt, "peak_rss_MB": peak / 1e6, "cpu_s": cpu})
        print("  %-16s %7.3f s  peak %7.0f MB  cpu %6.2f s" % (name, dt, peak / 1e6, cpu), flush=True)
        return r

    def load():
        read = dask.delayed(skimage.io.imread, pure=True)
        slices = [da.from_delayed(read(u), shape=(H, W), dtype=np.uint8) for u in urls]
        return persist(da.stack(slices, axis=0).rechunk((C, H, W)))

    stack = timed("load", load)
    timed("mean_t", lambda: stack.mean(axis=0).compute())
    keep["mean_xy"] = timed("mean_xy", lambda: stack.mean(axis=(1, 2)).compute())
    rec = timed("recenter", lambda: persist(
        stack.map_blocks(common.recenter_block, chunks=(C, H // 2, W // 2), dtype=np.uint8)))
    timed("recentered_mean", lambda: rec.mean(axis=0).compute())

    def rechunk_fft():
        series = rec.rechunk((N, a.pix, a.pix))
        power = abs(da.fft.fft(series, axis=0) ** 2).astype("float32")
        keep["fft_tasks"] = len(power.__dask_graph__())
        return persist(power, optimize_graph=False)

    power = timed("rechunk_fft", rechunk_fft)
    total = sum(s["seconds"] for s in stages)
    peak = sampler.peak
    print("  %-16s %7.3f s  peak %7.0f MB" % ("TOTAL", total, peak / 1e6), flush=True)
    check = {"power_px0_sum": float(power[:, 0, 0].sum(dtype=np.float64).compute()),
             "power_pxc_sum": float(power[:, H // 4, W // 4].sum(dtype=np.float64).compute())}
    sampler.stop()
    if client is not None:
        logging.getLogger("distributed").setLevel(logging.CRITICAL)
        client.close()
        cluster.close()

    import distributed
    import numba
    import scipy
    import PIL
    out = {"engine": "dask", "scheduler": a.scheduler, "N": N, "H": H, "W": W, "chunk": C, "pix": a.pix,
           "setup_s": setup_s, "stages": stages, "total_s": total, "peak_rss_MB": peak / 1e6,
           "rss_samples": sampler.samples, "fft_graph_tasks": keep["fft_tasks"],
           "mean_xy": [float(x) for x in keep["mean_xy"]], "check": check,
           "versions": {"python": sys.version.split()[0], "dask": dask.__version__,
                        "distributed": distributed.__version__, "numpy": np.__version__,
                        "numba": numba.__version__, "scipy": scipy.__version__,
                        "scikit-image": skimage.__version__, "pillow": PIL.__version__}}
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()

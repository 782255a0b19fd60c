#!/usr/bin/env python3
"""Markdown report from a suite's raw JSON (bench/results/raw-*.json).

usage: report.py RAW.json [--out report.md]     (also printed)
"""
import argparse
import json
import statistics

DASK_STAGES = ["load", "mean_t", "mean_xy", "recenter", "recentered_mean", "rechunk_fft"]
AJ_STAGES = ["source", "time-mean", "brightness", "recentered", "recentered-mean", "series", "power"]


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def fmt(x, digits=3):
    if x != x:
        return "-"
    if abs(x) >= 100:
        return "%.0f" % x
    if abs(x) >= 10:
        return "%.1f" % x
    return ("%%.%dg" % digits) % x


def cell(xs, unit=""):
    if not xs:
        return "-"
    return "%s%s [%s-%s]" % (fmt(med(xs)), unit, fmt(min(xs)), fmt(max(xs)))


def ratio(a, b):
    return "%.1fx" % (a / b) if a == a and b == b and b > 0 else "-"


class Data:
    def __init__(self, raw):
        self.raw = raw
        self.ok = [r for r in raw["runs"] if r["rc"] == 0 and not r["contaminated"]]

    def runs(self, cfg, n):
        return [r for r in self.ok if r["config"] == cfg and r["N"] == n]

    # Dask
    def dask_stage(self, cfg, n, st):
        return [next(s["seconds"] for s in r["dask"]["stages"] if s["stage"] == st) for r in self.runs(cfg, n)]

    def dask_total(self, cfg, n, stages=DASK_STAGES):
        return [sum(s["seconds"] for s in r["dask"]["stages"] if s["stage"] in stages) for r in self.runs(cfg, n)]

    def dask_peak(self, cfg, n):
        return [r["dask"]["peak_rss_MB"] for r in self.runs(cfg, n)]

    # arrayjob
    def aj(self, cfg, n, fn):
        out = []
        for r in self.runs(cfg, n):
            st = {s["name"]: s for s in r["summary"]["stages"]}
            out.append(fn(r, st))
        return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("raw")
    ap.add_argument("--out")
    a = ap.parse_args()
    with open(a.raw) as f:
        raw = json.load(f)
    D = Data(raw)
    m = raw["meta"]
    L = []
    p = L.append
    sizes = m["sizes"]
    H, W = m["H"], m["W"]
    p("# arrayjob vs Dask: imaging pipeline benchmark\n")
    p("Raw results: `%s`. Started %s, finished %s." % (a.raw.split("/")[-1], m["started"], m.get("finished", "?")))
    p("Machine: %d CPUs (%s), %.1f GiB RAM, %s; python %s." % (
        m["host"]["cpus"], m["host"]["cpu_model"], m["host"]["mem_GB"], m["host"]["platform"], m["python"]))
    vers = next((r["dask"]["versions"] for r in D.ok if "dask" in r), {})
    p("Dask side: " + ", ".join("%s %s" % kv for kv in vers.items()) + ".")
    p("arrayjob: `%s` (%s), `--threads %d`." % (m["arrayjob_version"], m.get("arrayjob_commit") or "?", m["threads"]))
    la0, la1 = m.get("loadavg_at_start", [0] * 3), m.get("loadavg_at_end", [0] * 3)
    allr = raw["runs"]
    fc = [r["foreign_cores"] for r in D.ok]
    lab = [r["loadavg_before"][0] for r in D.ok]
    p("Load: 1-min load average %.2f at the start, %.2f at the end; before each kept run %.2f-%.2f "
      "(includes our own previous run); CPU used by other processes during kept runs: median %.3f, "
      "max %.3f cores. Runs: %d kept, %d contaminated (> %s foreign cores, re-run), %d failed.\n" % (
          la0[0], la1[0], min(lab or [0]), max(lab or [0]), med(fc), max(fc or [0]), len(D.ok),
          sum(1 for r in allr if r["contaminated"]), "0.15", sum(1 for r in allr if r["rc"] != 0)))
    p("Seconds are wall clock, **median [min-max]** over fresh-process repetitions. Dask total = sum of "
      "its six timed stages (imports, cluster start and warm-up excluded); arrayjob total = wall time "
      "of the whole `arrayjob run` process (start-up, HTTP, decode, all stages, writing every output "
      "incl. the %s power Zarr, summary.json). Peak RSS: Dask = summed RSS of the driver and all its "
      "child processes (workers, nannies), sampled every 20 ms; arrayjob = max RSS of the process "
      "(`wait4` rusage).\n" % "float32")

    # ---------------- headline
    p("## Whole pipeline (headline)\n")
    p("| N | Dask threaded s | Dask distributed s | arrayjob s | threaded / arrayjob | distributed / arrayjob "
      "| peak RSS MB threaded / distributed / arrayjob | runs (thr/dist/aj) |")
    p("|---|---:|---:|---:|---:|---:|---|---|")
    head = {}
    for n in sizes:
        t = D.dask_total("dask-threads", n)
        d = D.dask_total("dask-distributed", n)
        j = [r["wall_s"] for r in D.runs("aj-full", n)]
        pk = (med(D.dask_peak("dask-threads", n)), med(D.dask_peak("dask-distributed", n)),
              med([r["maxrss_MB"] for r in D.runs("aj-full", n)]))
        head[n] = (med(t), med(d), med(j), pk)
        p("| %d | %s | %s | %s | **%s** | **%s** | %s / %s / %s | %d/%d/%d |" % (
            n, cell(t), cell(d), cell(j), ratio(med(t), med(j)), ratio(med(d), med(j)),
            fmt(pk[0]), fmt(pk[1]), fmt(pk[2]), len(t), len(d), len(j)))
    p("")
    for n in sizes:
        raw_runs = D.runs("aj-full-raw", n)
        if raw_runs:
            j = [r["wall_s"] for r in raw_runs]
            ph = D.aj("aj-full-raw", n, lambda r, s: s["power"]["endSeconds"]
                      - r["summary"].get("loadEndSeconds", s["source"]["endSeconds"]))
            p("`aj-full-raw` (N = %d; the same job, power.zarr stored uncompressed, `zarrCompression: {codec: none}`): "
              "%s s, **%s** faster than Dask threaded and **%s** than distributed; peak RSS %s MB; rechunk + FFT "
              "after the last load %s s.\n" % (
                  n, cell(j), ratio(head[n][0], med(j)), ratio(head[n][1], med(j)),
                  fmt(med([r["maxrss_MB"] for r in raw_runs])), cell(ph)))

    # ---------------- per stage
    for n in sizes:
        p("## N = %d: stage by stage\n" % n)
        p("Dask stages (seconds):\n")
        p("| stage | threaded | distributed | threaded peak RSS MB | distributed peak RSS MB |")
        p("|---|---:|---:|---:|---:|")
        for st in DASK_STAGES:
            pt = [next(s["peak_rss_MB"] for s in r["dask"]["stages"] if s["stage"] == st)
                  for r in D.runs("dask-threads", n)]
            pd = [next(s["peak_rss_MB"] for s in r["dask"]["stages"] if s["stage"] == st)
                  for r in D.runs("dask-distributed", n)]
            p("| %s | %s | %s | %s | %s |" % (st, cell(D.dask_stage("dask-threads", n, st)),
                                            cell(D.dask_stage("dask-distributed", n, st)), fmt(med(pt)), fmt(med(pd))))
        p("| **total** | %s | %s | | |" % (cell(D.dask_total("dask-threads", n)),
                                           cell(D.dask_total("dask-distributed", n))))
        p("| setup (imports done; cluster start + warm-up, not in total) | %s | %s | | |\n" % (
            cell([r["dask"]["setup_s"] for r in D.runs("dask-threads", n)]),
            cell([r["dask"]["setup_s"] for r in D.runs("dask-distributed", n)])))

        p("arrayjob `aj-full` (one job, stages fused and overlapping; from `summary.json`):\n")
        p("| stage | start s | end s | busy s (thread-seconds) | tasks |")
        p("|---|---:|---:|---:|---:|")
        for st in AJ_STAGES:
            p("| %s | %s | %s | %s | %s |" % (
                st, cell(D.aj("aj-full", n, lambda r, s: s[st]["startSeconds"])),
                cell(D.aj("aj-full", n, lambda r, s: s[st]["endSeconds"])),
                cell(D.aj("aj-full", n, lambda r, s: s[st]["busySeconds"])),
                fmt(med(D.aj("aj-full", n, lambda r, s: s[st]["tasksDone"])))))
        p("| job (`summary.seconds`) | | %s | | |" % cell(D.aj("aj-full", n, lambda r, s: r["summary"]["seconds"])))
        p("| process wall | | %s | | |\n" % cell([r["wall_s"] for r in D.runs("aj-full", n)]))

        load_end = D.aj("aj-full", n, lambda r, s: r["summary"].get("loadEndSeconds", s["source"]["endSeconds"]))
        srv_cpu = [r["server_cpu_s"] for r in D.runs("aj-full", n)]
        load_end_files = D.aj("aj-full-files", n,
                              lambda r, s: r["summary"].get("loadEndSeconds", s["source"]["endSeconds"]))
        fft_after_load = D.aj("aj-full", n, lambda r, s: s["power"]["endSeconds"]
                              - r["summary"].get("loadEndSeconds", s["source"]["endSeconds"]))
        five_end = D.aj("aj-full", n, lambda r, s: max(s[x]["endSeconds"] for x in AJ_STAGES[:5]))
        fft_phase = D.aj("aj-full", n, lambda r, s: s["power"]["endSeconds"] - s["source"]["endSeconds"])
        tail = D.aj("aj-full", n, lambda r, s: r["wall_s"] - s["power"]["endSeconds"])
        d5t = D.dask_total("dask-threads", n, DASK_STAGES[:5])
        d5d = D.dask_total("dask-distributed", n, DASK_STAGES[:5])
        rft = D.dask_stage("dask-threads", n, "rechunk_fft")
        rfd = D.dask_stage("dask-distributed", n, "rechunk_fft")
        p("Phases (what is compared: arrayjob phase boundaries from `summary.json` of the full job):\n")
        p("| phase | Dask threaded | Dask distributed | arrayjob | threaded / aj | distributed / aj |")
        p("|---|---:|---:|---:|---:|---:|")
        p("| load + means + recenter (Dask: first five stages; aj: 0 -> last end of source, time-mean, "
          "brightness, recentered, recentered-mean) | %s | %s | %s | %s | %s |" % (
              cell(d5t), cell(d5d), cell(five_end), ratio(med(d5t), med(five_end)), ratio(med(d5d), med(five_end))))
        p("| rechunk + FFT (Dask: rechunk_fft stage; aj: `source.endSeconds` -> `power.endSeconds`, "
          "incl. writing power.zarr) | %s | %s | %s | **%s** | **%s** |" % (
              cell(rft), cell(rfd), cell(fft_phase), ratio(med(rft), med(fft_phase)), ratio(med(rfd), med(fft_phase))))
        p("| aj: after `power.endSeconds` (remaining outputs, summary, exit) | | | %s | | |" % cell(tail))
        p("| aj: end of loading over HTTP (`loadEndSeconds`: all slices decoded, both means, recenter and the "
          "rechunk split done) | | | %s | | |" % cell(load_end))
        p("| aj: CPU seconds the HTTP server (%s) burnt during the same `aj-full` runs | | | %s | | |"
          % (m.get("server", "python"), cell(srv_cpu)))
        if load_end_files:
            p("| aj: end of loading with the `files` source (`aj-full-files` `loadEndSeconds`) | | | %s | | |"
              % cell(load_end_files))
        p("| aj: rechunk + FFT after the last load (`loadEndSeconds` -> `power.endSeconds`, power.zarr "
          "written) | | | %s | | |\n" % cell(fft_after_load))

        # isolated jobs
        p("Stage-isolated arrayjob jobs (each a whole `arrayjob run`, compared with the same Dask stages incl. load):\n")
        p("| job | Dask threaded | Dask distributed | arrayjob | threaded / aj | distributed / aj |")
        p("|---|---:|---:|---:|---:|---:|")
        for cfg, stg, label in [("aj-means", ["load", "mean_t", "mean_xy"], "load + time-mean + brightness"),
                                ("aj-fftpath", ["load", "recenter", "rechunk_fft"],
                                 "load + recenter + rechunk + FFT (power.zarr)")]:
            dt = D.dask_total("dask-threads", n, stg)
            dd = D.dask_total("dask-distributed", n, stg)
            j = [r["wall_s"] for r in D.runs(cfg, n)]
            if not j:
                continue
            p("| `%s`: %s | %s | %s | %s | %s | %s |" % (cfg, label, cell(dt), cell(dd), cell(j),
                                                       ratio(med(dt), med(j)), ratio(med(dd), med(j))))
        if D.runs("aj-fftpath", n):
            ph = D.aj("aj-fftpath", n, lambda r, s: s["power"]["endSeconds"] - s["source"]["endSeconds"])
            p("\n`aj-fftpath` rechunk+FFT phase (`source.end` -> `power.end`): %s s." % cell(ph))
        if D.runs("aj-full-files", n):
            j = [r["wall_s"] for r in D.runs("aj-full-files", n)]
            p("\n`aj-full-files` (the same full job reading the PNG files from disk instead of HTTP): %s s; "
              "end of loading %s s.\n" % (cell(j), cell(D.aj("aj-full-files", n,
                                                                lambda r, s: s["source"]["endSeconds"]))))

        if D.runs("aj-dist2", n):
            j = [r["wall_s"] for r in D.runs("aj-dist2", n)]
            mem = [r["tree_peak_rss_MB"] for r in D.runs("aj-dist2", n)]
            dd = D.dask_total("dask-distributed", n)
            dmem = D.dask_peak("dask-distributed", n)
            moved = [r["workers"]["bytesMoved"] / 1e6 for r in D.runs("aj-dist2", n) if r.get("workers")]
            p("\n`aj-dist2` (the full job on 2 worker processes x 1 thread, over loopback HTTP, against "
              "dask.distributed 2 workers x 1 thread): %s s, dask.distributed %s s (%s); peak memory of the "
              "process tree %s MB against %s MB; moved between workers %s MB.\n"
              % (cell(j), cell(dd), ratio(med(dd), med(j)), cell(mem), cell(dmem), cell(moved)))

        # correctness cross-check
        dm = [r["dask"]["mean_xy"] for r in D.runs("dask-threads", n)]
        ab = [r.get("brightness") for r in D.runs("aj-full", n) if r.get("brightness")]
        if dm and ab and len(dm[0]) == len(ab[0]):
            rel = max(abs(x - y) / max(abs(x), 1e-300) for x, y in zip(dm[0], ab[0]))
            p("Cross-check: arrayjob `brightness.csv` vs Dask `mean_xy`: max relative difference %.2e over %d "
              "slices.\n" % (rel, len(ab[0])))

    # ---------------- limits
    lim = raw.get("limits")
    if lim:
        p("## Machine limits (same run, no Dask, no arrayjob)\n")
        p("Loadavg before: %.2f. Best of %d; single thread unless marked 2t.\n" % (
            lim["_meta"].get("loadavg_before", [float("nan")])[0], len(lim["memcpy_1GB_copyto"]["times"])))
        p("| measurement | best s | MB/s | per item |")
        p("|---|---:|---:|---:|")
        for k, v in lim.items():
            if k.startswith("_") or "best_s" not in v:
                continue
            p("| %s | %s | %s | %s |" % (k, fmt(v["best_s"], 4), fmt(v.get("MBps", float("nan"))),
                                         ("%.3f ms" % v["per_item_ms"]) if "per_item_ms" in v else ""))
        p("")
        n = max(sizes)
        dec = lim["png_decode_pillow_1t"]["per_item_ms"]
        cen = lim["centroid+crop_copy_1t"]["per_item_ms"]
        cen0 = lim["centroid_numba_1t"]["per_item_ms"]
        p("### arrayjob against the limits (N = %d, per-thread costs from `busySeconds`)\n" % n)
        p("| kernel | machine (1 thread) | arrayjob (busy thread-seconds) | arrayjob / machine | within 2x? |")
        p("|---|---:|---:|---:|---|")
        rows = []
        fs = D.aj("aj-full-files", n, lambda r, s: s["source"]["busySeconds"] / n * 1e3)
        hs = D.aj("aj-full", n, lambda r, s: s["source"]["busySeconds"] / n * 1e3)
        if fs:
            rows.append(("PNG decode per slice (aj: files source busy / N, incl. file read + split into "
                         "chunks)", dec, med(fs), "ms"))
        if hs:
            rows.append(("PNG fetch+decode per slice (aj: http source busy / N, incl. waiting on HTTP)",
                         dec, med(hs), "ms"))
        rc = D.aj("aj-full", n, lambda r, s: s["recentered"]["busySeconds"] / n * 1e3)
        if rc:
            rows.append(("centroid + crop per slice (aj: recentered busy / N; machine: numba centroid + crop "
                         "copy; numba centroid alone %.3f ms)" % cen0, cen, med(rc), "ms"))
        fk = "fft_N%d_rfft_power_f32_1t" % n
        if fk in lim:
            pw = D.aj("aj-full", n, lambda r, s: s["power"]["busySeconds"])
            sr = D.aj("aj-full", n, lambda r, s: s["series"]["busySeconds"])
            rows.append(("FFT + power, all 250k series (aj: power busy; machine: one rfft+|X|^2 call)",
                         lim[fk]["best_s"], med(pw), "s"))
            rows.append(("rechunk + FFT + power (aj: series + power busy; machine: same one call)",
                         lim[fk]["best_s"], med([x + y for x, y in zip(pw, sr)]), "s"))
        for name, mach, ajv, unit in rows:
            r_ = ajv / mach
            p("| %s | %s %s | %s %s | %.2f | %s |" % (name, fmt(mach), unit, fmt(ajv), unit, r_,
                                                      "yes" if r_ <= 2 else "**no**"))
        p("")

    # ---------------- floors measured with the engine's own crates
    fl = (lim or {}).get("rust_floor")
    if fl:
        n = fl["n"]
        p("## Floors with the engine's own crates (`bench/floor`, same data, same run)\n")
        p("`arrayjob-bench-floor` runs the crates the engine uses, without the engine: `png`/`image` decode from "
          "memory, `realfft` (f64) + |X|^2 over %d series of length %d, memcpy, zstd level 1 on float32 spectra. "
          "Best of the repetitions.\n" % (fl["fft"]["series"], fl["fft"]["length"]))
        dp, di, ff = fl["decode"]["png"], fl["decode"]["image"], fl["fft"]
        p("| floor | 1 thread | %d threads |" % fl["threads"])
        p("|---|---:|---:|")
        p("| PNG decode, `png` crate, per slice | %.3f ms | all %d: %.3f s |" % (dp["ms_per_slice_1t"], n, dp["seconds_nt"]))
        p("| PNG decode, `image` crate, per slice | %.3f ms | all %d: %.3f s |" % (di["ms_per_slice_1t"], n, di["seconds_nt"]))
        if "load" in fl:
            p("| loading: read file + `image` decode + one fused pass (time sum, slice sum, centroid marginals), all %d slices | %.3f s | %.3f s |" % (
                n, fl["load"]["seconds_1t"], fl["load"]["seconds_nt"]))
        p("| realfft + power, all series | %.3f s (%.2f us/series) | %.3f s |" % (
            ff["seconds_1t"], ff["us_per_series_1t"], ff["seconds_nt"]))
        p("| memcpy | %.1f GB/s | |" % fl["memcpy"]["gb_per_s_1t"])
        p("| zstd level 1 on float32 spectra | %.0f MB/s (ratio %.2f) | |" % (
            fl["zstd1"]["mb_per_s_1t"], fl["zstd1"]["ratio"]))
        if "zstd_fast" in fl:
            p("| zstd level %d on float32 spectra | %.0f MB/s (ratio %.2f) | |" % (
                fl["zstd_fast"]["level"], fl["zstd_fast"]["mb_per_s_1t"], fl["zstd_fast"]["ratio"]))
        if "gb_per_s_first" in fl.get("write", {}):
            w = fl["write"]
            p("| writing 1 GB as %d new files (page cache) | first %.2f GB/s, best %.2f GB/s | |" % (
                w["files"], w["gb_per_s_first"], w["gb_per_s_best"]))
        if "gb_per_s_first" in fl.get("write_direct", {}):
            w = fl["write_direct"]
            p("| writing 1 GB as %d new files (direct I/O, the engine's shard writer) | first %.2f GB/s, best %.2f GB/s | |" % (
                w["files"], w["gb_per_s_first"], w["gb_per_s_best"]))
        p("")
        fs = D.aj("aj-full-files", n, lambda r, s: s["source"]["busySeconds"] / n * 1e3)
        pw = D.aj("aj-full", n, lambda r, s: s["power"]["busySeconds"])
        p("| stage (N = %d) | floor | arrayjob | arrayjob / floor |" % n)
        p("|---|---:|---:|---:|")
        if fs:
            p("| decode per slice (aj: `files` source busy / N, incl. file read) | %.3f ms | %.3f ms | %.2f |" % (
                di["ms_per_slice_1t"], med(fs), med(fs) / di["ms_per_slice_1t"]))
        if pw:
            p("| FFT + power of every series (aj: `power` busy thread-seconds, incl. gathers) | %.3f s | %.3f s | "
              "%.2f |" % (ff["seconds_1t"], med(pw), med(pw) / ff["seconds_1t"]))
        p("")

    # ---------------- all runs
    p("## All runs\n")
    p("| config | N | rep | attempt | rc | total s | process wall s | peak RSS MB | CPU s | foreign cores | loadavg before | kept |")
    p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in raw["runs"]:
        tot = r["dask"]["total_s"] if "dask" in r else r["wall_s"]
        pk = r["dask"]["peak_rss_MB"] if "dask" in r else r["maxrss_MB"]
        p("| %s | %d | %d | %d | %d | %s | %s | %s | %s | %.3f | %.2f | %s |" % (
            r["config"], r["N"], r["rep"], r["attempt"], r["rc"], fmt(tot), fmt(r["wall_s"]), fmt(pk),
            fmt(r["cpu_s"]), r["foreign_cores"], r["loadavg_before"][0],
            "yes" if (r["rc"] == 0 and not r["contaminated"]) else "no"))
    text = "\n".join(L) + "\n"
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The benchmark matrix: Dask (threaded, distributed) and arrayjob on the same PNG stack served
over HTTP from 127.0.0.1, every run a fresh process, repetitions interleaved, each run started on a
quiet machine and checked afterwards for CPU used by other processes.  Then the machine limits.

usage: suite.py --data-root DIR --arrayjob BIN --results DIR [--sizes 200,1000] [--reps 5]
                [--dist-reps 5] [--configs ...]
Writes DIR/raw-<stamp>.json (all runs, rewritten after each run) and DIR/report-<stamp>.md.
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import psutil  # noqa: E402

import common  # noqa: E402

SEED = 20170117
ALL_CONFIGS = ["dask-threads", "dask-distributed", "aj-full", "aj-means", "aj-fftpath", "aj-full-files",
               "aj-full-raw", "aj-dist2"]


def dataset_dir(root, n, h, w):
    return os.path.join(root, "emstack-v1-n%d-%dx%d-s%d" % (n, h, w, SEED))


# ---------------------------------------------------------------- arrayjob manifests

def manifest(kind, n, h, w, url_base, data_dir):
    if kind == "aj-full-files":
        src = "    files: {pattern: \"%s/slice_{index:05}.png\", start: 0, stop: %d}\n" % (data_dir, n)
    else:
        src = ("    http: {urlTemplate: \"%sslice_{index:05}.png\", start: 0, stop: %d}\n"
               % (url_base, n))
    means = """  - name: time-mean
    input: source
    reduce: {op: mean, axes: [0]}
    output: {image: time-mean.png}
  - name: brightness
    input: source
    reduce: {op: mean, axes: [1, 2]}
    output: {plot: {file: brightness.png}, csv: brightness.csv}
"""
    recenter = """  - name: recentered
    input: source
    recenter: {window: [%d, %d]}
""" % (h // 2, w // 2)
    rmean = """  - name: recentered-mean
    input: recentered
    reduce: {op: mean, axes: [0]}
    output: {image: recentered-mean.png}
"""
    # aj-full-raw: the same job with the power spectrum stored uncompressed (zarrCompression: none)
    codec = ", zarrCompression: {codec: none}" if kind == "aj-full-raw" else ""
    fft = """  - name: series
    input: recentered
    rechunk: {chunks: [-1, 10, 10]}
  - name: power
    input: series
    fft: {axis: 0, power: true, dtype: float32}
    output: {zarr: power.zarr%s}
""" % codec
    # aj-dist2: the full job on 2 local worker processes (1 thread each), like dask.distributed's 2 x 1
    stages = {"aj-full": means + recenter + rmean + fft, "aj-full-files": means + recenter + rmean + fft,
              "aj-dist2": means + recenter + rmean + fft,
              "aj-full-raw": means + recenter + rmean + fft,
              "aj-means": means, "aj-fftpath": recenter + fft}[kind]
    return ("apiVersion: arrayjob.dev/v1alpha1\nkind: ArrayJob\nmetadata: {name: bench-%s-n%d}\nspec:\n"
            "  source:\n%s    slicesPerChunk: 20\n  stages:\n%s" % (kind[3:], n, src, stages))


# ---------------------------------------------------------------- one run

class Suite:
    def __init__(self, a):
        self.a = a
        self.server = None
        self.runs = []
        os.makedirs(a.results, exist_ok=True)
        self.stamp = time.strftime("%Y%m%d-%H%M%S")
        self.raw_path = os.path.join(a.results, "raw-%s.json" % self.stamp)
        self.scratch = os.path.join(a.scratch, "run-%d" % os.getpid())
        os.makedirs(self.scratch, exist_ok=True)

    def start_server(self):
        if self.a.server == "nginx":
            self.start_nginx()
        else:
            self.server = subprocess.Popen([sys.executable, os.path.join(HERE, "serve.py"), self.a.data_root],
                                           stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
            line = self.server.stdout.readline().decode()
            assert line.startswith("PORT "), line
            self.port = int(line.split()[1])
        self.meta["server"] = self.a.server
        print("HTTP server (%s) pid %d on 127.0.0.1:%d serving %s"
              % (self.a.server, self.server.pid, self.port, self.a.data_root))

    def start_nginx(self):
        """nginx in the foreground, one process, loopback only, files by sendfile, no access log."""
        import socket
        with socket.socket() as s_:
            s_.bind(("127.0.0.1", 0))
            self.port = s_.getsockname()[1]
        d = os.path.join(self.scratch, "nginx")
        os.makedirs(d, exist_ok=True)
        conf = os.path.join(d, "nginx.conf")
        temps = "".join("  %s_temp_path %s/%s;\n" % (t, d, t)
                        for t in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        with open(conf, "w") as f:
            f.write("daemon off;\nmaster_process off;\nworker_processes 1;\npid %s/nginx.pid;\n"
                    "error_log %s/error.log;\nevents { worker_connections 1024; }\n"
                    "http {\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n%s"
                    "  server { listen 127.0.0.1:%d; root %s; }\n}\n"
                    % (d, d, temps, self.port, self.a.data_root))
        self.server = subprocess.Popen(["nginx", "-c", conf, "-p", d], stdin=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not start; see %s/error.log" % d)

    def server_cpu(self):
        return common.proc_tree_cpu(self.server.pid)

    def execute(self, cmd, env=None):
        """Run cmd; return wall s, rusage of the child (incl. reaped descendants), sampled tree
        peak RSS and CPU, foreign CPU (other processes) during the run."""
        busy0, srv0 = common.busy_cpu_seconds(), self.server_cpu()
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=env)
        try:
            samp = common.RssSampler(root=p.pid, interval=0.02)
        except psutil.Error:
            samp = common.RssSampler(interval=3600)
        out_chunks = []
        # read output while the process runs (avoid pipe stalls)
        for line in p.stdout:
            out_chunks.append(line)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        tree_cpu_sampled = samp.cpu_seconds()
        peak = samp.stop()
        busy1, srv1 = common.busy_cpu_seconds(), self.server_cpu()
        own_cpu = max(ru.ru_utime + ru.ru_stime, tree_cpu_sampled)
        srv = srv1 - srv0
        foreign = max(0.0, (busy1 - busy0) - own_cpu - srv)
        return {"rc": p.returncode, "wall_s": wall, "maxrss_MB": ru.ru_maxrss * 1024 / 1e6,
                "tree_peak_rss_MB": peak / 1e6, "cpu_s": own_cpu, "server_cpu_s": srv,
                "foreign_cpu_s": foreign, "foreign_cores": foreign / wall,
                "output": b"".join(out_chunks).decode(errors="replace")[-4000:]}

    def one(self, cfg, n, rep):
        a = self.a
        d = dataset_dir(a.data_root, n, a.h, a.w)
        url = "http://127.0.0.1:%d/%s/" % (self.port, os.path.basename(d))
        paths = [os.path.join(d, "slice_%05d.png" % i) for i in range(n)]
        for attempt in range(1, a.max_attempts + 1):
            waited, quiet = common.wait_quiet(self.server_cpu, threshold=a.quiet, window=2.0,
                                              max_wait=a.max_wait)
            common.prewarm(paths)
            rec = {"config": cfg, "N": n, "rep": rep, "attempt": attempt, "loadavg_before": os.getloadavg(),
                   "foreign_cores_before": quiet, "quiet_wait_s": waited,
                   "time": time.strftime("%Y-%m-%d %H:%M:%S")}
            if cfg.startswith("dask-"):
                js = os.path.join(self.scratch, "dask.json")
                if os.path.exists(js):
                    os.remove(js)
                cmd = [sys.executable, os.path.join(HERE, "dask_run.py"), "--base-url", url, "--n", str(n),
                       "--h", str(a.h), "--w", str(a.w), "--scheduler", cfg[5:], "--out", js]
                r = self.execute(cmd)
                rec.update(r)
                if r["rc"] == 0:
                    with open(js) as f:
                        rec["dask"] = json.load(f)
            else:
                yml = os.path.join(self.scratch, "%s-n%d.yaml" % (cfg, n))
                with open(yml, "w") as f:
                    f.write(manifest(cfg, n, a.h, a.w, url, d))
                outd = os.path.join(self.scratch, "out")
                shutil.rmtree(outd, ignore_errors=True)
                cmd = [a.arrayjob, "run", yml, "--out", outd, "-q", "--threads", str(a.threads)]
                if cfg == "aj-dist2":
                    cmd += ["--workers", "2", "--worker-threads", "1"]
                r = self.execute(cmd)
                rec.update(r)
                if r["rc"] == 0:
                    with open(os.path.join(outd, "summary.json")) as f:
                        rec["summary"] = json.load(f)
                    wj = os.path.join(outd, "workers.json")
                    if os.path.exists(wj):
                        with open(wj) as f:
                            rec["workers"] = json.load(f)
                    bcsv = os.path.join(outd, "brightness.csv")
                    if os.path.exists(bcsv):
                        with open(bcsv) as f:
                            rows = [l.strip().split(",") for l in f if l.strip()]
                        rec["brightness"] = [float(r_[1]) for r_ in rows if r_[0].isdigit()]
                    rec["out_bytes"] = sum(os.path.getsize(os.path.join(dp, fn))
                                           for dp, _, fns in os.walk(outd) for fn in fns)
                shutil.rmtree(outd, ignore_errors=True)
            rec["contaminated"] = rec["foreign_cores"] > a.max_foreign
            tot = rec.get("dask", {}).get("total_s") if "dask" in rec else rec.get("wall_s")
            print("%s %-16s N=%-5d rep %d/%d att %d: rc %d  %s %.2f s  peak %.0f MB  foreign %.2f cores%s"
                  % (time.strftime("%H:%M:%S"), cfg, n, rep, self.reps_for(cfg, n), attempt, rec["rc"],
                     "stages" if "dask" in rec else "wall", tot or float("nan"),
                     rec.get("dask", {}).get("peak_rss_MB", rec["tree_peak_rss_MB"]), rec["foreign_cores"],
                     "  CONTAMINATED" if rec["contaminated"] else ""), flush=True)
            if rec["rc"] != 0:
                print(rec["output"][-2000:])
            self.runs.append(rec)
            self.save()
            if not rec["contaminated"] and rec["rc"] == 0:
                return

    def reps_for(self, cfg, n):
        if cfg == "dask-distributed" and n >= 1000 and self.a.dist_reps:
            return self.a.dist_reps
        return self.a.reps

    def save(self, extra=None):
        doc = {"meta": self.meta, "runs": self.runs}
        if extra:
            doc.update(extra)
        tmp = self.raw_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1)
        os.replace(tmp, self.raw_path)

    def run(self):
        a = self.a
        sizes = [int(x) for x in a.sizes.split(",")]
        configs = a.configs.split(",")
        ver = subprocess.run([a.arrayjob, "--version"], capture_output=True, text=True).stdout.strip()
        self.meta = {"server": a.server, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "sizes": sizes, "configs": configs,
                     "reps": a.reps, "dist_reps_n1000": a.dist_reps, "threads": a.threads,
                     "arrayjob": a.arrayjob, "arrayjob_version": ver, "arrayjob_commit": a.commit,
                     "host": {"cpus": os.cpu_count(), "platform": platform.platform(),
                              "mem_GB": psutil.virtual_memory().total / 2**30,
                              "cpu_model": cpu_model()},
                     "python": sys.version.split()[0], "H": a.h, "W": a.w}
        self.start_server()
        try:
            # an idle machine before the first timed run (1-min load average)
            t0 = time.monotonic()
            while os.getloadavg()[0] > a.start_loadavg and time.monotonic() - t0 < a.max_wait:
                print("  waiting for load average < %.2f (now %.2f)" % (a.start_loadavg, os.getloadavg()[0]),
                      flush=True)
                time.sleep(10)
            self.meta["loadavg_at_start"] = os.getloadavg()
            print("load average at start: %.2f %.2f %.2f" % self.meta["loadavg_at_start"], flush=True)
            for n in sizes:
                maxreps = max(self.reps_for(c, n) for c in configs)
                for rep in range(1, maxreps + 1):
                    for cfg in configs:
                        if rep <= self.reps_for(cfg, n):
                            self.one(cfg, n, rep)
            if not a.skip_limits:
                lim = os.path.join(self.scratch, "limits.json")
                d = dataset_dir(a.data_root, max(sizes), a.h, a.w)
                common.wait_quiet(self.server_cpu, threshold=a.quiet, window=2.0, max_wait=a.max_wait)
                la = os.getloadavg()
                print("limits (loadavg %.2f)" % la[0], flush=True)
                subprocess.run([sys.executable, os.path.join(HERE, "limits.py"), "--data", d, "--n",
                                str(min(200, max(sizes))), "--fft-sizes", a.sizes, "--out", lim], check=True)
                with open(lim) as f:
                    self.limits = json.load(f)
                self.limits["_meta"]["loadavg_before"] = la
                if a.floor:
                    common.wait_quiet(self.server_cpu, threshold=a.quiet, window=2.0, max_wait=a.max_wait)
                    out = subprocess.run([a.floor, "--data", d, "--n", str(max(sizes)), "--threads",
                                          str(a.threads), "--window", str(a.h // 2)],
                                         check=True, capture_output=True, text=True).stdout
                    self.limits["rust_floor"] = json.loads(out)
            else:
                self.limits = None
        finally:
            self.server.terminate()
            self.server.wait()
        self.meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        self.meta["loadavg_at_end"] = os.getloadavg()
        self.save({"limits": self.limits})
        shutil.rmtree(self.scratch, ignore_errors=True)
        return self.raw_path


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--arrayjob", required=True)
    ap.add_argument("--commit", default="")
    ap.add_argument("--results", required=True)
    ap.add_argument("--scratch", default=os.path.join(os.path.expanduser("~"), ".cache", "arrayjob", "bench-scratch"))
    ap.add_argument("--sizes", default="200,1000")
    ap.add_argument("--h", type=int, default=1000)
    ap.add_argument("--w", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dist-reps", type=int, default=0, help="reps of dask-distributed at N>=1000 (0: --reps)")
    ap.add_argument("--configs", default=",".join(ALL_CONFIGS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quiet", type=float, default=0.15, help="max foreign cores before a run")
    ap.add_argument("--max-foreign", type=float, default=0.15, help="runs with more foreign cores are re-run")
    ap.add_argument("--max-attempts", type=int, default=3)
    ap.add_argument("--start-loadavg", type=float, default=0.5)
    ap.add_argument("--max-wait", type=float, default=900)
    ap.add_argument("--skip-limits", action="store_true")
    ap.add_argument("--floor", help="arrayjob-bench-floor binary: machine floors with the engine's own crates")
    ap.add_argument("--server", choices=["nginx", "python"], default="nginx" if shutil.which("nginx") else "python",
                    help="HTTP server for the PNG files (both Dask and arrayjob fetch from it)")
    a = ap.parse_args()
    s = Suite(a)
    raw = s.run()
    print("raw results:", raw)
    rep = os.path.join(a.results, "report-%s.md" % s.stamp)
    subprocess.run([sys.executable, os.path.join(HERE, "report.py"), raw, "--out", rep], check=True)


if __name__ == "__main__":
    main()

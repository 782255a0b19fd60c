"""Helpers shared by the arrayjob-vs-Dask benchmark scripts.

* the blog post's image functions (numba ``centroid``, ``recenter``,
  ``recenter_block``) with the crop expressed for an H x W slice
  (clamp the centroid to [H/4, 3H/4] x [W/4, 3W/4], crop H/2 x W/2);
* ``RssSampler``: summed RSS of a process and all its descendants, sampled
  in a background thread;
* CPU accounting of "foreign" processes (everything that is not ours),
  used to wait for a quiet machine and to flag contaminated runs.

Kept in an importable module so dask.distributed workers import the
functions by reference and reuse the numba dispatcher compiled at warm-up.
"""
import os
import threading
import time

import numpy as np
import psutil

try:
    from numba import jit
except ImportError:  # the suite driver does not need numba
    jit = None

if jit is not None:
    @jit(nogil=True)
    def centroid(im):
        # the post's centroid, unchanged: integer accumulation, row then column
        n, m = im.shape
        total_x = 0
        total_y = 0
        total = 0
        for i in range(n):
            for j in range(m):
                total += im[i, j]
                total_x += i * im[i, j]
                total_y += j * im[i, j]
        if total > 0:
            total_x /= total
            total_y /= total
        return total_x, total_y


def recenter(im):
    """Crop one slice to H/2 x W/2 around its (clamped) centroid (post's recenter)."""
    H, W = im.shape[-2], im.shape[-1]
    qh, qw = H // 4, W // 4
    r, c = centroid(im.squeeze())
    r = min(max(int(r), qh), H - qh)
    c = min(max(int(c), qw), W - qw)
    return im[..., r - qh:r + qh, c - qw:c + qw]


def recenter_block(block):
    return np.stack([recenter(block[i]) for i in range(block.shape[0])])


def warmup():
    """Import the image stack and compile the centroid (writable and read-only arrays)."""
    import skimage.io  # noqa: F401
    import imageio.v3  # noqa: F401
    import PIL.PngImagePlugin  # noqa: F401
    t = time.perf_counter()
    a = np.zeros((2, 64, 64), np.uint8)
    a[:, 20, 30] = 9
    recenter_block(a)
    a.setflags(write=False)
    recenter_block(a)
    return time.perf_counter() - t


class RssSampler:
    """Peak of the summed RSS of ``root`` (a pid, default: this process) and its
    descendants, minus pids in ``exclude``; sampled every ``interval`` s."""

    def __init__(self, root=None, interval=0.02, exclude=()):
        self.root = psutil.Process(root or os.getpid())
        self.interval = interval
        self.exclude = set(exclude)
        self.peak = 0
        self.window_peak = 0
        self.samples = 0
        self._procs = [self.root]
        self._last_scan = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._cpu = {}
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _members(self, rescan=False):
        now = time.monotonic()
        if rescan or now - self._last_scan > 0.25:
            try:
                kids = [p for p in self.root.children(recursive=True) if p.pid not in self.exclude]
            except psutil.Error:
                kids = []
            self._procs = [self.root] + kids
            self._last_scan = now
        return self._procs

    def sample(self, rescan=False):
        total = 0
        for p in self._members(rescan):
            try:
                total += p.memory_info().rss
                ct = p.cpu_times()
                self._cpu[(p.pid, p.create_time())] = ct.user + ct.system
            except psutil.Error:
                pass
        with self._lock:
            self.samples += 1
            self.peak = max(self.peak, total)
            self.window_peak = max(self.window_peak, total)
        return total

    def cpu_seconds(self):
        """CPU seconds (user+system) of every member seen so far (dead ones at their last sample)."""
        self.sample(rescan=True)
        return sum(self._cpu.values())

    def take_window_peak(self):
        self.sample(rescan=True)
        with self._lock:
            p, self.window_peak = self.window_peak, 0
        return p

    def _loop(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def stop(self):
        self._stop.set()
        self._thread.join()
        return self.peak


def busy_cpu_seconds():
    """All cores' user+nice+system seconds since boot (irq/softirq left out)."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system


def proc_tree_cpu(pid):
    """CPU seconds of a live process and its live descendants."""
    tot = 0.0
    try:
        p = psutil.Process(pid)
        for q in [p] + p.children(recursive=True):
            try:
                ct = q.cpu_times()
                tot += ct.user + ct.system
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return tot


def foreign_load(window, own_cpu):
    """Cores used by processes other than ours over `window` seconds.
    `own_cpu()` -> CPU seconds of everything we started (incl. the HTTP server)."""
    b0, o0 = busy_cpu_seconds(), own_cpu()
    time.sleep(window)
    b1, o1 = busy_cpu_seconds(), own_cpu()
    return max(0.0, (b1 - b0) - (o1 - o0)) / window


def wait_quiet(own_cpu, threshold=0.15, window=3.0, max_wait=900.0, log=print):
    """Wait until foreign processes use < threshold cores over `window` s.
    Returns (seconds waited, last measured foreign load in cores)."""
    t0 = time.monotonic()
    while True:
        load = foreign_load(window, own_cpu)
        waited = time.monotonic() - t0
        if load < threshold or waited > max_wait:
            return waited, load
        if log:
            log("  machine busy: %.2f cores used by other processes (loadavg %.2f); waiting (%.0f s)"
                % (load, os.getloadavg()[0], waited))
        time.sleep(2.0)


def prewarm(paths):
    """Read files into the page cache (this VM pages out file pages idle for ~60 s)."""
    n = 0
    for p in paths:
        with open(p, "rb") as f:
            n += len(f.read())
    return n

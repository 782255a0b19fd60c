//! `--threads` bounds all CPU use: sources, kernels and output encoding share the executor's threads, so a run
//! with `--threads 1` keeps one core busy at most. Measured as the child's CPU time over its wall time.

mod common;
use common::*;

use std::time::Instant;

use nix::sys::resource::{UsageWho, getrusage};

/// Wall seconds and CPU seconds (user + system) of one `arrayjob run` child process.
fn cpu_and_wall(args: &[&str]) -> (f64, f64) {
    let before = getrusage(UsageWho::RUSAGE_CHILDREN).expect("getrusage");
    let t0 = Instant::now();
    let out = arrayjob(args);
    let wall = t0.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "arrayjob failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = getrusage(UsageWho::RUSAGE_CHILDREN).expect("getrusage");
    let secs = |r: &nix::sys::resource::Usage| {
        let (u, s) = (r.user_time(), r.system_time());
        u.tv_sec() as f64 + u.tv_usec() as f64 / 1e6 + s.tv_sec() as f64 + s.tv_usec() as f64 / 1e6
    };
    (wall, secs(&after) - secs(&before))
}

/// The post's pipeline on a synthetic stack and on PNG files written from it: every kind of work (generation or
/// decode, reductions, recenter, rechunk, FFT, Zarr encoding) in one run.
fn job(source: &str) -> String {
    format!(
        r#"
apiVersion: arrayjob.dev/v1alpha1
kind: ArrayJob
metadata: {{name: threads}}
spec:
  source:
    {source}
    slicesPerChunk: 10
  stages:
  - {{name: time-mean, input: source, reduce: {{op: mean, axes: [0]}}, output: {{image: time-mean.png}}}}
  - {{name: recentered, input: source, recenter: {{}}}}
  - {{name: series, input: recentered, rechunk: {{chunks: [-1, 10, 10]}}}}
  - {{name: power, input: series, fft: {{axis: 0, power: true}}, output: {{zarr: power.zarr}}}}
"#
    )
}

#[test]
fn one_thread_uses_one_core() {
    let dir = tempfile::tempdir().expect("tmp");
    let synthetic = write(
        dir.path(),
        "synthetic.yaml",
        &job("synthetic: {slices: 480, height: 600, width: 600}"),
    );
    let out = dir.path().join("out").display().to_string();
    let (wall, cpu) = cpu_and_wall(&["run", &synthetic, "--out", &out, "--threads", "1", "-q"]);
    assert!(wall > 0.2, "the job is too short to measure: {wall:.2} s");
    assert!(
        cpu / wall < 1.15,
        "synthetic source, --threads 1: {cpu:.2} CPU-s in {wall:.2} s = {:.2} cores",
        cpu / wall
    );

    // The same stack as PNG files: decoding runs on the executor's thread too.
    let data = dir.path().join("png");
    std::fs::create_dir_all(&data).expect("mkdir");
    for z in 0..160u64 {
        let pixels = arrayjob_engine::source::emstack::generate_slice(z, 600, 600, 0);
        image::GrayImage::from_raw(600, 600, pixels)
            .expect("buffer size")
            .save(data.join(format!("slice_{z:05}.png")))
            .expect("write png");
    }
    let files = write(
        dir.path(),
        "files.yaml",
        &job(&format!(
            "files: {{pattern: \"{}/slice_{{index:05}}.png\", start: 0, stop: 160}}",
            data.display()
        )),
    );
    let (wall, cpu) = cpu_and_wall(&["run", &files, "--out", &out, "--threads", "1", "-q"]);
    assert!(
        cpu / wall < 1.15,
        "files source, --threads 1: {cpu:.2} CPU-s in {wall:.2} s = {:.2} cores",
        cpu / wall
    );
}

//! The whole pipeline against a NumPy oracle: arrayjob runs the post's workflow (plus every reduction kind)
//! over a PNG stack; `tests/oracle/check_pipeline.py` recomputes it with NumPy from the same PNGs and compares
//! with the Zarr (read by zarr-python), CSV and PNG outputs.

mod common;
use common::*;

fn job(data: &str, slices_per_chunk: usize) -> String {
    format!(
        r#"
apiVersion: arrayjob.dev/v1alpha1
kind: ArrayJob
metadata: {{name: oracle}}
spec:
  source:
    files: {{pattern: "{data}/slice_%05d.png", start: 0, stop: 45}}
    slicesPerChunk: {slices_per_chunk}
  stages:
  - {{name: time-mean, input: source, reduce: {{op: mean, axes: [0]}}, output: {{zarr: time-mean.zarr, image: time-mean.png}}}}
  - {{name: brightness, input: source, reduce: {{op: mean, axes: [1, 2]}}, output: {{csv: brightness.csv, plot: {{file: brightness.png}}}}}}
  - {{name: time-std, input: source, reduce: {{op: std, axes: [0]}}, output: {{zarr: time-std.zarr}}}}
  - {{name: row-max, input: source, reduce: {{op: max, axes: [1]}}, output: {{zarr: row-max.zarr}}}}
  - {{name: col-max, input: source, reduce: {{op: max, axes: [0, 1]}}, output: {{zarr: col-max.zarr}}}}
  - {{name: time-min, input: source, reduce: {{op: min, axes: [0]}}, output: {{zarr: time-min.zarr}}}}
  - {{name: sum02, input: source, reduce: {{op: sum, axes: [0, 2]}}, output: {{zarr: sum02.zarr}}}}
  - {{name: recentered, input: source, recenter: {{window: [32, 24]}}, output: {{zarr: recentered.zarr}}}}
  - {{name: recentered-mean, input: recentered, reduce: {{op: mean, axes: [0]}}, output: {{zarr: recentered-mean.zarr}}}}
  - {{name: series, input: recentered, rechunk: {{chunks: [-1, 5, 7]}}}}
  - {{name: power, input: series, fft: {{axis: 0, power: true, dtype: float32}}, output: {{zarr: power.zarr, plot: {{file: power.png, pixels: [[0, 0], [16, 12]], logY: true}}}}}}
  - {{name: amplitude, input: series, fft: {{axis: 0, power: false, onesided: true, dtype: float64}}, output: {{zarr: amplitude.zarr}}}}
"#
    )
}

/// Runs the job and the oracle; returns the parsed summary.json.
fn run_and_check(slices_per_chunk: usize, bits: &str, extra: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    oracle(
        "make_stack.py",
        &[
            "--out",
            &data.display().to_string(),
            "--n",
            "45",
            "--h",
            "64",
            "--w",
            "48",
            "--bits",
            bits,
        ],
    );
    let manifest = write(
        dir.path(),
        "job.yaml",
        &job(&data.display().to_string(), slices_per_chunk),
    );
    let out = dir.path().join("out").display().to_string();
    let mut args = vec!["run", &manifest, "--out", &out];
    args.extend_from_slice(extra);
    let (ok, stdout, stderr) = arrayjob_text(&args);
    assert!(ok, "arrayjob run failed:\n{stdout}\n{stderr}");
    let report = oracle(
        "check_pipeline.py",
        &[
            "--data",
            &data.display().to_string(),
            "--out",
            &out,
            "--window",
            "32",
            "24",
        ],
    );
    assert!(report.contains(" checks, 0 failed"), "{report}");
    println!("{report}");
    // Only final outputs and the summary are left; no staging directory.
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .expect("out dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
    assert!(
        names.contains(&"summary.json".to_string()) && names.contains(&"power.png".to_string()),
        "{names:?}"
    );
    let summary =
        std::fs::read_to_string(std::path::Path::new(&out).join("summary.json")).expect("summary");
    serde_json::from_str(&summary).expect("summary json")
}

#[test]
fn pipeline_matches_numpy() {
    let s = run_and_check(7, "8", &[]);
    assert_eq!(s["store"]["spilledBytes"], 0, "{s}");
    let power = s["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .find(|x| x["name"] == "power")
        .expect("power");
    // series chunks of (45, 5, 7) over (45, 32, 24): 7 x 4 FFT tasks.
    assert_eq!(power["tasksDone"], 28, "{power}");
}

#[test]
fn pipeline_matches_numpy_with_spilling_and_one_thread() {
    // 45 x 32 x 24 recentered bytes = 34560 pieces' worth; a 4 KB budget forces nearly everything to disk.
    let s = run_and_check(4, "8", &["--memory-limit", "4KB", "--threads", "1"]);
    // The exchange holds 45 x 32 x 24 bytes of pieces; with a 4 KB budget most of it goes through the disk.
    let spilled = s["store"]["spilledBytes"].as_u64().expect("spilledBytes");
    assert!(spilled > 20_000, "{s}");
    assert_eq!(
        s["store"]["unspilledBytes"], s["store"]["spilledBytes"],
        "{s}"
    );
}

#[test]
fn sixteen_bit_pipeline_matches_numpy() {
    let s = run_and_check(10, "16", &[]);
    let source = &s["stages"][0];
    // 45 slices of 64 x 48 uint16.
    assert_eq!(source["bytesOut"], 45 * 64 * 48 * 2, "{source}");
}

#[test]
fn results_do_not_depend_on_threads_or_memory() {
    // The same job with 1 and 2 threads, with and without spilling, gives byte-identical Zarr chunks.
    let dir = tempfile::tempdir().expect("tmp");
    let job = r#"
apiVersion: arrayjob.dev/v1alpha1
kind: ArrayJob
metadata: {name: det}
spec:
  source: {synthetic: {slices: 50, height: 64, width: 64}, slicesPerChunk: 3}
  stages:
  - {name: sd, input: source, reduce: {op: std, axes: [0]}, output: {zarr: sd.zarr}}
  - {name: r, input: source, recenter: {}}
  - {name: s, input: r, rechunk: {chunks: [-1, 4, 4]}}
  - {name: p, input: s, fft: {axis: 0, dtype: float64}, output: {zarr: p.zarr}}
"#;
    let m = write(dir.path(), "det.yaml", job);
    let mut trees = Vec::new();
    for (i, extra) in [
        vec!["--threads", "1"],
        vec!["--threads", "2", "--memory-limit", "1KB"],
    ]
    .iter()
    .enumerate()
    {
        let out = dir.path().join(format!("o{i}")).display().to_string();
        let mut args = vec!["run", m.as_str(), "--out", &out];
        args.extend(extra.iter().copied());
        let (ok, o, e) = arrayjob_text(&args);
        assert!(ok, "{o}{e}");
        let mut files = Vec::new();
        for z in ["sd.zarr", "p.zarr"] {
            let root = std::path::Path::new(&out).join(z);
            let mut stack = vec![root.clone()];
            while let Some(p) = stack.pop() {
                for e in std::fs::read_dir(&p).expect("dir") {
                    let e = e.expect("entry").path();
                    if e.is_dir() {
                        stack.push(e);
                    } else {
                        let rel = e.strip_prefix(&out).expect("prefix").display().to_string();
                        files.push((rel, std::fs::read(&e).expect("read")));
                    }
                }
            }
        }
        files.sort();
        trees.push(files);
    }
    // sd.zarr has a file per chunk; p.zarr (the FFT of a rechunk) a shard per merge group.
    assert!(trees[0].len() > 8, "{} files", trees[0].len());
    assert!(trees[0] == trees[1], "outputs differ between runs");
}

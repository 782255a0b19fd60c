//! `select` stages, `montage` and `value` outputs: checked against NumPy (`tests/oracle/check_select.py`),
//! in one process and on two workers; a select of the source reads only its slices; bad selections are refused
//! naming their field; the Janelia example validates and plans offline.

mod common;
use common::*;

use std::path::Path;

fn job(data: &str) -> String {
    format!(
        r#"
apiVersion: arrayjob.dev/v1alpha1
kind: ArrayJob
metadata: {{name: select}}
spec:
  source:
    files: {{pattern: "{data}/slice_%05d.png", start: 0, stop: 45}}
    slicesPerChunk: 7
  stages:
  - {{name: sample, input: source, select: [{{axis: 0, index: 20}}], output: {{image: sample.png, zarr: sample.zarr}}}}
  - {{name: sample-mean, input: sample, reduce: {{op: mean, axes: [0, 1]}}, output: {{value: true, csv: sample-mean.csv}}}}
  - {{name: row, input: source, select: [{{axis: 0, start: 2, stop: 45, step: 5}}], output: {{montage: {{file: row.png, columns: 4}}, zarr: row.zarr}}}}
  - name: crop
    input: source
    select: [{{axis: 0, indices: [0, 6, 7, 8, 30, 44]}}, {{axis: 1, start: 3, stop: 60, step: 4}}, {{axis: 2, indices: [0, 1, 47]}}]
    output: {{zarr: crop.zarr}}
  - {{name: series, input: source, rechunk: {{chunks: [-1, 10, 9]}}}}
  - name: picked
    input: series
    select: [{{axis: 1, indices: [0, 9, 10, 11, 35, 63]}}, {{axis: 2, start: 5, step: 7}}, {{axis: 0, start: 1, stop: 44, step: 3}}]
    output: {{zarr: picked.zarr}}
  - {{name: pixel, input: picked, select: [{{axis: 0, index: 2}}, {{axis: 1, index: 3}}], output: {{csv: pixel.csv}}}}
  - {{name: recentered, input: source, recenter: {{window: [32, 24]}}}}
  - {{name: rrow, input: recentered, select: [{{axis: 0, indices: [4, 5, 40]}}], output: {{montage: {{file: rrow.png}}}}}}
  - {{name: trio, input: source, select: [{{axis: 0, indices: [3, 5, 6]}}]}}
  - {{name: trio-power, input: trio, fft: {{axis: 0, power: true, dtype: float64}}, output: {{zarr: trio-power.zarr}}}}
"#
    )
}

/// Writes the 45 x 64 x 48 test stack into `dir`.
fn make_stack(dir: &Path) {
    oracle(
        "make_stack.py",
        &[
            "--out",
            &dir.display().to_string(),
            "--n",
            "45",
            "--h",
            "64",
            "--w",
            "48",
        ],
    );
}

fn run_ok(manifest: &str, out: &Path, extra: &[&str]) -> String {
    let out = out.display().to_string();
    let mut args = vec!["run", manifest, "--out", &out];
    args.extend_from_slice(extra);
    let (ok, stdout, stderr) = arrayjob_text(&args);
    assert!(ok, "arrayjob run failed:\n{stdout}\n{stderr}");
    stdout
}

/// Output files of a run without its own reports.
fn outputs(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut files = files_under(dir);
    for report in [
        "summary.json",
        "workers.json",
        "timeline.html",
        "timeline.png",
    ] {
        files.remove(report);
    }
    files
}

#[test]
fn selects_montages_and_values_match_numpy_in_one_process_and_on_two_workers() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    make_stack(&data);
    let manifest = write(dir.path(), "job.yaml", &job(&data.display().to_string()));
    let one = dir.path().join("one");
    let stdout = run_ok(&manifest, &one, &[]);
    let report = oracle(
        "check_select.py",
        &[
            "--data",
            &data.display().to_string(),
            "--out",
            &one.display().to_string(),
        ],
    );
    println!("{report}");
    assert!(report.contains(" checks, 0 failed"), "{report}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(one.join("summary.json")).expect("summary"))
            .expect("json");
    let value = summary["stages"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "sample-mean"))
        .and_then(|s| s["value"].as_f64())
        .expect("sample-mean value");
    assert!(
        stdout.contains(&format!("sample-mean = {value:?}")),
        "the run's table shows the value: {stdout}"
    );
    let two = dir.path().join("two");
    run_ok(&manifest, &two, &["--workers", "2"]);
    let (a, b) = (outputs(&one), outputs(&two));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, bytes) in &a {
        assert!(bytes == &b[name], "{name} differs on two workers");
    }
}

#[test]
fn a_select_of_the_source_reads_only_the_selected_slices() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    make_stack(&data);
    let stages = "  - {name: picked, input: source, select: [{axis: 0, indices: [20, 21, 22, 40]}], output: {zarr: picked.zarr}}
  - {name: one, input: source, select: [{axis: 0, index: 33}, {axis: 2, start: 10, stop: 20}], output: {csv: one.csv}}
";
    let text = |stages: &str| {
        format!(
            "apiVersion: arrayjob.dev/v1alpha1\nkind: ArrayJob\nmetadata: {{name: sparse}}\nspec:\n  source:\n    \
             files: {{pattern: \"{}/slice_%05d.png\", start: 0, stop: 45}}\n    slicesPerChunk: 7\n  stages:\n{stages}",
            data.display()
        )
    };
    let manifest = write(dir.path(), "job.yaml", &text(stages));
    let intact = dir.path().join("intact");
    run_ok(&manifest, &intact, &[]);
    // Slice 0 (read for the slice shape) and the selected ones stay; the others are corrupt, and one is gone.
    for i in (1..45).filter(|i| ![20, 21, 22, 33, 40].contains(i)) {
        std::fs::write(data.join(format!("slice_{i:05}.png")), b"not a png").expect("corrupt");
    }
    std::fs::remove_file(data.join("slice_00030.png")).expect("remove");
    let sparse = dir.path().join("sparse");
    run_ok(&manifest, &sparse, &[]);
    assert_eq!(
        outputs(&intact),
        outputs(&sparse),
        "same bytes from the selected slices alone"
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sparse.join("summary.json")).expect("summary"))
            .expect("json");
    assert_eq!(summary["stages"][0]["name"], "source");
    assert_eq!(
        summary["stages"][0]["tasksDone"], 0,
        "no source chunk was loaded: {summary}"
    );
    // The corruption is real: a stage that reads the whole source fails on it.
    let whole = text(
        "  - {name: m, input: source, reduce: {op: mean, axes: [0]}, output: {image: m.png}}\n",
    );
    let m = write(dir.path(), "whole.yaml", &whole);
    let out = dir.path().join("whole").display().to_string();
    let (ok, _, stderr) = arrayjob_text(&["run", &m, "--out", &out]);
    // Which corrupt slice is met first depends on which load runs first: any of them, never a selected one.
    let named: Option<usize> = stderr
        .split("slice ")
        .nth(1)
        .and_then(|t| t.split(':').next())
        .and_then(|n| n.parse().ok());
    assert!(
        !ok && stderr.contains("not a PNG, TIFF or JPEG image")
            && named.is_some_and(|n| ![0, 20, 21, 22, 33, 40].contains(&n)),
        "{stderr}"
    );
}

/// `arrayjob validate` of a synthetic 200 x 64 x 64 source with `stages`; returns (success, stderr).
fn validate(stages: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tmp");
    let m = write(
        dir.path(),
        "job.yaml",
        &format!(
            "apiVersion: arrayjob.dev/v1alpha1\nkind: ArrayJob\nmetadata: {{name: bad}}\nspec:\n  source: \
             {{synthetic: {{slices: 200, height: 64, width: 64}}}}\n  stages:\n{stages}"
        ),
    );
    let (ok, _, stderr) = arrayjob_text(&["validate", &m]);
    (ok, stderr)
}

#[test]
fn bad_selections_and_outputs_are_refused_naming_the_field() {
    let cases = [
        (
            "  - {name: s, input: source, select: [{axis: 0, index: 1}, {axis: 1, indices: [0, 5, 9, 64]}]}\n",
            "spec.stages[0].select[1].indices[3]: index 64 out of range: the axis has length 64 (indices 0 to 63)",
        ),
        (
            "  - {name: s, input: source, select: [{axis: 0, index: 200}]}\n",
            "spec.stages[0].select[0].index: index 200 out of range: the axis has length 200",
        ),
        (
            "  - {name: s, input: source, select: [{axis: 0, start: 3, stop: 9, step: 0}]}\n",
            "spec.stages[0].select[0].step: must be positive, found 0",
        ),
        (
            "  - {name: s, input: source, select: [{axis: 0, start: 9, stop: 9}]}\n",
            "spec.stages[0].select[0].stop: selects nothing: stop 9 is not after start 9",
        ),
        (
            "  - {name: s, input: source, select: [{axis: 0, start: 250}]}\n",
            "spec.stages[0].select[0].start: selects nothing: start 250 is out of range, the axis has length 200",
        ),
        (
            "  - {name: s, input: source, select: [{axis: 1, indices: []}]}\n",
            "spec.stages[0].select[0].indices: selects nothing",
        ),
        (
            "  - {name: s, input: source, select: [{axis: 1, index: 2}, {axis: 1, index: 3}]}\n",
            "spec.stages[0].select[1].axis: axis 1 is selected twice",
        ),
        (
            "  - {name: s, input: source, select: [{axis: 3, index: 2}]}\n",
            "spec.stages[0].select[0].axis: axis 3 out of range: the input is 3-D",
        ),
        (
            "  - {name: s, input: source, select: [{axis: 0, indices: [5, 3]}]}\n",
            "spec.stages[0].select[0].indices[1]: indices must be strictly increasing, but 3 follows 5",
        ),
        (
            "  - {name: s, input: source, select: [{axis: 0, index: 5, start: 2}]}\n",
            "spec.stages[0].select[0]: exactly one of 'index', 'indices' or a range",
        ),
        (
            "  - {name: s, input: source, select: []}\n",
            "spec.stages[0].select: list at least one axis to select",
        ),
        (
            "  - {name: s, input: source, select: [{axis: 0, index: 5}], output: {montage: {file: m.png}}}\n",
            "spec.stages[0].output.montage: a montage needs a 3-D result (slices along axis 0), but stage 's' is 2-D",
        ),
        (
            "  - {name: s, input: source, select: [{axis: 0, indices: [5]}], output: {montage: {file: m.png, columns: 0}}}\n",
            "spec.stages[0].output.montage.columns: must be positive, found 0",
        ),
        (
            "  - {name: s, input: source, reduce: {op: mean, axes: [1, 2]}, output: {value: true}}\n",
            "spec.stages[0].output.value: a value is a single number, but stage 's' is 1-D",
        ),
        (
            // 30 slices in chunks of 20 (the default): two chunks along the FFT's axis.
            "  - {name: s, input: source, select: [{axis: 0, stop: 30}]}\n  - {name: f, input: s, fft: {axis: 0}}\n",
            "spec.stages[1].fft.axis: input 's' is split into several chunks along axis 0",
        ),
        (
            "  - {name: s, input: source, select: [{axis: 0, index: 5}]}\n  - {name: r, input: s, recenter: {}}\n",
            "spec.stages[1].recenter: needs a 3-D input (slices along axis 0), but input 's' is 2-D",
        ),
    ];
    for (stages, want) in cases {
        let (ok, stderr) = validate(stages);
        assert!(!ok, "accepted: {stages}");
        assert!(
            stderr.contains(want),
            "want '{want}' for {stages}, got:\n{stderr}"
        );
    }
    let (ok, stderr) = validate(
        "  - {name: s, input: source, select: [{axis: 0, start: 190, stop: 1000, step: 4}]}\n  - {name: m, input: s, reduce: {op: max, axes: [0, 1, 2]}, output: {value: true}}\n",
    );
    assert!(
        ok,
        "a range's stop is clipped to the axis like NumPy's: {stderr}"
    );
    let (ok, stderr) = validate(
        "  - {name: s, input: source, select: [{axis: 0, start: 3, stop: 200, step: 10}]}\n  - {name: f, input: s, fft: {axis: 0}}\n",
    );
    assert!(
        ok,
        "20 selected slices in chunks of 20 are one chunk: an FFT along them runs: {stderr}"
    );
}

#[test]
fn the_janelia_example_validates_and_plans_offline() {
    let m = repo_root()
        .join("examples/janelia-em.yaml")
        .display()
        .to_string();
    let (ok, stdout, stderr) = arrayjob_text(&["validate", &m]);
    assert!(ok, "{stdout}{stderr}");
    // No network: the slice shape and type are declared, and a select of the source reads nothing to plan.
    let (ok, stdout, stderr) = arrayjob_text(&["plan", &m]);
    assert!(ok, "{stdout}{stderr}");
    for line in [
        "sample         select    [2000, 2000]",
        "sample-mean    reduce    []",
        "row            select    [9, 250, 250]",
        "time-mean      reduce    [2000, 2000]",
        "recentered     recenter  [10000, 1000, 1000]",
        "power          fft       [10000, 1000, 1000]",
    ] {
        assert!(stdout.contains(line), "'{line}' in:\n{stdout}");
    }
}

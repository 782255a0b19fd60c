//! CSV outputs through `arrayjob run`: exact text for 0-D, 1-D and 2-D results, values computed here.

mod common;
use common::*;

use std::path::Path;

const SLICES: usize = 3;
const ROWS: usize = 3;
const COLS: usize = 4;

/// Pixel (r, c) of slice i.
fn pixel(i: usize, r: usize, c: usize) -> u8 {
    ((i * 37 + r * 11 + c * 5) % 251) as u8
}

/// Slices `s0.png` .. `s2.png` of 3x4 pixels.
fn stack(dir: &Path) {
    for i in 0..SLICES {
        let img = image::GrayImage::from_fn(COLS as u32, ROWS as u32, |c, r| {
            image::Luma([pixel(i, r as usize, c as usize)])
        });
        img.save(dir.join(format!("s{i}.png"))).expect("png");
    }
}

#[test]
fn csv_of_0d_1d_and_2d_results_has_header_and_rows() {
    let d = tempfile::tempdir().expect("tmp");
    stack(d.path());
    let m = write(
        d.path(),
        "job.yaml",
        "apiVersion: arrayjob.dev/v1alpha1\nkind: ArrayJob\nmetadata: {name: csv}\nspec:\n  source: {files: {pattern: \"s{index}.png\", stop: 3}}\n  stages:\n  - {name: total, input: source, reduce: {op: sum, axes: [0, 1, 2]}, output: {csv: total.csv}}\n  - {name: per-slice, input: source, reduce: {op: sum, axes: [1, 2]}, output: {csv: per-slice.csv}}\n  - {name: peak, input: source, reduce: {op: max, axes: [0]}, output: {csv: peak.csv}}\n",
    );
    let out = d.path().join("out");
    let (ok, _, err) = arrayjob_text(&["run", &m, "--out", &out.display().to_string()]);
    assert!(ok, "{err}");

    let slice_sum = |i: usize| -> f64 {
        (0..ROWS)
            .flat_map(|r| (0..COLS).map(move |c| f64::from(pixel(i, r, c))))
            .sum()
    };
    let total: f64 = (0..SLICES).map(slice_sum).sum();
    let read = |name: &str| std::fs::read_to_string(out.join(name)).expect(name);
    assert_eq!(read("total.csv"), format!("value\n{total:?}\n"));

    let mut per_slice = String::from("index,value\n");
    for i in 0..SLICES {
        per_slice.push_str(&format!("{i},{:?}\n", slice_sum(i)));
    }
    assert_eq!(read("per-slice.csv"), per_slice);

    let mut peak = String::from("row,c0,c1,c2,c3\n");
    for r in 0..ROWS {
        let maxes: Vec<String> = (0..COLS)
            .map(|c| {
                let m = (0..SLICES).map(|i| pixel(i, r, c)).max().expect("slices");
                format!("{:?}", f64::from(m))
            })
            .collect();
        peak.push_str(&format!("{r},{}\n", maxes.join(",")));
    }
    assert_eq!(read("peak.csv"), peak);

    // `plan` shows the task graph and the hash that the run records in summary.json.
    let (ok, plan, err) = arrayjob_text(&["plan", &m, "--json"]);
    assert!(ok, "{err}");
    let plan: serde_json::Value = serde_json::from_str(&plan).expect("plan json");
    assert_eq!(
        plan["taskCounts"],
        serde_json::json!({"load": 1, "combine": 3})
    );
    let summary: serde_json::Value =
        serde_json::from_str(&read("summary.json")).expect("summary json");
    let hash = summary["planHash"].as_str().expect("planHash");
    assert_eq!(hash.len(), 64);
    assert_eq!(plan["planHash"], hash);
}

/// Runs `job.yaml` of `dir` (slices `s0.png`..`s2.png` beside it, found by `source`) and returns `total.csv`.
fn total_of_slices_beside_the_manifest(dir: &Path, source: &str) -> String {
    std::fs::create_dir_all(dir).expect("dir");
    stack(dir);
    let m = write(
        dir,
        "job.yaml",
        &format!(
            "apiVersion: arrayjob.dev/v1alpha1\nkind: ArrayJob\nmetadata: {{name: odd-dir}}\nspec:\n  source: {source}\n  stages:\n  - {{name: total, input: source, reduce: {{op: sum, axes: [0, 1, 2]}}, output: {{csv: total.csv}}}}\n"
        ),
    );
    let out = dir.join("out");
    let (ok, _, err) = arrayjob_text(&["run", &m, "--out", &out.display().to_string()]);
    assert!(ok, "{}: {err}", dir.display());
    std::fs::read_to_string(out.join("total.csv")).expect("total.csv")
}

#[test]
fn manifest_directory_is_not_parsed_as_template_or_glob() {
    let d = tempfile::tempdir().expect("tmp");
    let total: f64 = (0..SLICES)
        .flat_map(|i| {
            (0..ROWS).flat_map(move |r| (0..COLS).map(move |c| f64::from(pixel(i, r, c))))
        })
        .sum();
    let expected = format!("value\n{total:?}\n");
    for (dir, source) in [
        ("run%d", "{files: {pattern: \"s%d.png\", stop: 3}}"),
        (
            "data{index}",
            "{files: {pattern: \"s{index}.png\", stop: 3}}",
        ),
        ("data[1]", "{files: {glob: \"s*.png\"}}"),
        ("run%d-glob", "{files: {glob: \"s?.png\"}}"),
    ] {
        let got = total_of_slices_beside_the_manifest(&d.path().join(dir), source);
        assert_eq!(got, expected, "{dir}");
    }
}

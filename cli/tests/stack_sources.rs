//! The `tiff` and `zarr` sources on files written by the tools users use (tifffile, zarr-python; see
//! `tests/oracle/stack_sources.py`): `arrayjob run` copies the source to a Zarr array and takes its mean over
//! axis 0, and both must equal NumPy's reading of the same file, locally and over a loopback HTTP server (with
//! and without range requests). Bad stacks fail with one error naming the file and the page or key.

mod common;
use common::*;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The stacks and bad inputs of `stack_sources.py make`, in a fresh temporary directory.
fn stacks() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tmp");
    oracle(
        "stack_sources.py",
        &["make", &d.path().display().to_string()],
    );
    d
}

/// A job copying `source` to `copy.zarr` and writing its mean over axis 0 to `mean.zarr`.
fn job(source: &str) -> String {
    format!(
        "apiVersion: arrayjob.dev/v1alpha1\nkind: ArrayJob\nmetadata: {{name: stack}}\nspec:\n  source: {source}\n  \
         stages:\n  - {{name: copy, input: source, rechunk: {{chunks: [-1, 12, 10]}}, output: {{zarr: copy.zarr}}}}\n  \
         - {{name: mean, input: source, reduce: {{op: mean, axes: [0]}}, output: {{zarr: mean.zarr}}}}\n"
    )
}

/// Runs the job over `source` in `dir` (outputs in `dir/out-{tag}`); returns (success, stderr, out dir).
fn run(dir: &Path, source: &str, tag: &str) -> (bool, String, String) {
    let m = write(dir, &format!("job-{tag}.yaml"), &job(source));
    let out = dir.join(format!("out-{tag}")).display().to_string();
    let (ok, _, stderr) = arrayjob_text(&["run", &m, "--out", &out, "--threads", "2"]);
    (ok, stderr, out)
}

/// Runs the job over `source` and checks its outputs against NumPy's reading of `input` (of OME-Zarr `level`).
fn run_and_compare(dir: &Path, source: &str, input: &str, level: i32, tag: &str) {
    let (ok, stderr, out) = run(dir, source, tag);
    assert!(ok, "{source}: {stderr}");
    let input = dir.join(input).display().to_string();
    let said = oracle(
        "stack_sources.py",
        &["check", &input, &level.to_string(), &out],
    );
    assert!(said.starts_with("ok [11, "), "{source}: {said}");
}

/// Runs the job over `source`, which must fail with an error holding every one of `expected`.
fn fails_with(dir: &Path, source: &str, expected: &[&str]) {
    let (ok, stderr, _) = run(dir, source, "bad");
    assert!(!ok, "{source} ran");
    for e in expected {
        assert!(stderr.contains(e), "{source}: no {e:?} in:\n{stderr}");
    }
}

const TIFFS: [&str; 9] = [
    "u8.tif",
    "u16.tif",
    "u8_deflate.tif",
    "u16_deflate.tif",
    "u16_lzw.tif",
    "u16_imagej.tif",
    "u8_tiled.tif",
    "u16_big.tif",
    "u16_be.tif",
];

#[test]
fn tiff_stacks_written_by_tifffile_equal_numpy() {
    let d = stacks();
    for (i, tif) in TIFFS.iter().enumerate() {
        let source = format!("{{tiff: {{path: {tif}}}, slicesPerChunk: 4}}");
        run_and_compare(d.path(), &source, tif, -1, &i.to_string());
    }
}

#[test]
fn zarr_arrays_and_ome_zarr_levels_written_by_zarr_python_equal_numpy() {
    let d = stacks();
    let cases = [
        ("{zarr: {path: v2.zarr}}", "v2.zarr", -1),
        ("{zarr: {path: v3.zarr}}", "v3.zarr", -1),
        ("{zarr: {path: sharded.zarr}}", "sharded.zarr", -1),
        ("{zarr: {path: ome3.zarr}}", "ome3.zarr", 0),
        ("{zarr: {path: ome3.zarr, level: 1}}", "ome3.zarr", 1),
        ("{zarr: {path: ome2.zarr}}", "ome2.zarr", 0),
        (
            "{zarr: {path: ome2.zarr, level: 1}, slicesPerChunk: 3}",
            "ome2.zarr",
            1,
        ),
    ];
    for (i, (source, input, level)) in cases.iter().enumerate() {
        run_and_compare(d.path(), source, input, *level, &i.to_string());
    }
}

#[test]
fn plan_reports_the_zarr_chunk_grid_and_loads_along_its_chunks() {
    let d = stacks();
    let m = write(d.path(), "plan.yaml", &job("{zarr: {path: v3.zarr}}"));
    let (ok, stdout, stderr) = arrayjob_text(&["plan", &m]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("v3.zarr [11, 12, 10] float64 (read as float64 from int16), chunks [4, 5, 6], chunk grid [3, 3, 2]"),
        "{stdout}"
    );
    let source_row = stdout
        .lines()
        .find(|l| l.starts_with("source"))
        .unwrap_or_default();
    let cols: Vec<&str> = source_row.split_whitespace().collect();
    assert_eq!(
        cols.get(2..=7).map(|c| c.join(" ")).unwrap_or_default(),
        "[11, 12, 10] [4, 12, 10]",
        "{stdout}"
    );
}

/// A loopback HTTP server over `dir`: answers `Range` requests with 206 when `ranges`, else the whole file with
/// 200; `fail` maps a path to a status answered instead of it. Records every request as (path, range header).
type Requests = Arc<Mutex<Vec<(String, Option<String>)>>>;

fn serve(dir: &Path, ranges: bool, fail: HashMap<String, u16>) -> (String, Requests) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let requests: Requests = Arc::default();
    let (dir, log) = (dir.to_path_buf(), requests.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = vec![0u8; 8192];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let path = req.split_whitespace().nth(1).unwrap_or("/");
            let path = path.trim_start_matches('/').to_string();
            let range = req.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("range")
                    .then(|| v.trim().to_string())
            });
            log.lock().expect("log").push((path.clone(), range.clone()));
            let (status, body) = match (fail.get(&path), std::fs::read(dir.join(&path))) {
                (Some(code), _) => (*code, b"refused".to_vec()),
                (None, Ok(b)) => match range.as_deref().filter(|_| ranges).and_then(parse_range) {
                    Some((a, z)) => (206, b[a.min(b.len())..(z + 1).min(b.len())].to_vec()),
                    None => (200, b),
                },
                (None, Err(_)) => (404, b"not found".to_vec()),
            };
            let head = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s
                .write_all(head.as_bytes())
                .and_then(|_| s.write_all(&body));
        }
    });
    (base, requests)
}

/// `bytes=a-z` as (a, z).
fn parse_range(header: &str) -> Option<(usize, usize)> {
    let (a, z) = header.strip_prefix("bytes=")?.split_once('-')?;
    Some((a.parse().ok()?, z.parse().ok()?))
}

#[test]
fn tiff_over_http_reads_ranges_or_falls_back_to_one_get() {
    let d = stacks();
    let (base, requests) = serve(d.path(), true, HashMap::new());
    for (i, tif) in ["u16_deflate.tif", "u8_tiled.tif", "u16_imagej.tif"]
        .iter()
        .enumerate()
    {
        let source = format!("{{tiff: {{url: \"{base}/{tif}\"}}, slicesPerChunk: 3}}");
        run_and_compare(d.path(), &source, tif, -1, &format!("r{i}"));
    }
    let log = requests.lock().expect("log").clone();
    assert!(!log.is_empty());
    assert!(
        log.iter().all(|(_, range)| range.is_some()),
        "every request is ranged: {log:?}"
    );
    let (base, requests) = serve(d.path(), false, HashMap::new());
    let source = format!("{{tiff: {{url: \"{base}/u16_lzw.tif\"}}, slicesPerChunk: 3}}");
    run_and_compare(d.path(), &source, "u16_lzw.tif", -1, "whole");
    let log = requests.lock().expect("log").clone();
    assert_eq!(log.len(), 1, "one GET when ranges are refused: {log:?}");
}

#[test]
fn zarr_over_http_equals_numpy_and_a_refused_chunk_is_named() {
    let d = stacks();
    let (base, _) = serve(d.path(), true, HashMap::new());
    let source = format!("{{zarr: {{url: \"{base}/ome3.zarr\", level: 1}}}}");
    run_and_compare(d.path(), &source, "ome3.zarr", 1, "ome");
    let source = format!("{{zarr: {{url: \"{base}/v3.zarr\"}}}}");
    run_and_compare(d.path(), &source, "v3.zarr", -1, "v3");
    let source = format!("{{zarr: {{url: \"{base}/sharded.zarr\"}}}}");
    run_and_compare(d.path(), &source, "sharded.zarr", -1, "sharded");
    let (base, _) = serve(
        d.path(),
        true,
        HashMap::from([("v2.zarr/1.0.0".to_string(), 403)]),
    );
    let source = format!("{{zarr: {{url: \"{base}/v2.zarr\"}}}}");
    fails_with(
        d.path(),
        &source,
        &[&format!("{base}/v2.zarr/1.0.0"), "HTTP 403"],
    );
}

#[test]
fn bad_stacks_fail_with_one_clear_error() {
    let d = stacks();
    let cases: [(&str, &[&str]); 12] = [
        (
            "{files: {glob: \"u8.tif\"}}",
            &["u8.tif", "a multi-page TIFF of 11 pages", "tiff source"],
        ),
        (
            "{tiff: {path: bad_rgb.tif}}",
            &["page 2 of ", "bad_rgb.tif", "RGB(8)", "greyscale"],
        ),
        (
            "{tiff: {path: bad_sizes.tif}}",
            &[
                "page 1 of ",
                "bad_sizes.tif",
                "is 10x9 uint8, expected 12x10 uint8",
            ],
        ),
        (
            "{tiff: {path: v3.zarr/zarr.json}}",
            &[
                "zarr.json: cannot read it as a TIFF file",
                "no II/MM signature",
            ],
        ),
        ("{tiff: {path: none.tif}}", &["none.tif: not found"]),
        (
            "{zarr: {path: flat.zarr}}",
            &["flat.zarr: the array has shape [12, 10]", "3-D"],
        ),
        (
            "{zarr: {path: four.zarr}}",
            &["four.zarr: the array has shape [2, 3, 12, 10]", "3-D"],
        ),
        (
            // Slices 4..8 of v3.zarr were never written: with `missingChunks: error` its first unstored
            // chunk (v3 key c/1/0/0) is named instead of read as the fill value.
            "{zarr: {path: v3.zarr, missingChunks: error}}",
            &[
                "chunk ",
                "v3.zarr/c/1/0/0 is not stored (spec.source.zarr.missingChunks: error)",
            ],
        ),
        (
            "{zarr: {path: bools.zarr}}",
            &["bools.zarr: data type bool is not supported"],
        ),
        (
            "{zarr: {path: empty.zarr}}",
            &["empty.zarr: no zarr.json, .zarray or .zattrs"],
        ),
        (
            "{zarr: {path: ome3.zarr, level: 2}}",
            &["ome3.zarr: OME-Zarr level 2 does not exist: the image has 2 level(s)"],
        ),
        (
            "{zarr: {path: v3.zarr, level: 0}}",
            &[
                "spec.source.zarr.level",
                "is a Zarr array, not an OME-Zarr image",
            ],
        ),
    ];
    for (source, expected) in cases {
        fails_with(d.path(), source, expected);
    }
}

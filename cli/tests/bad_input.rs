//! Bad input through the `arrayjob` command: each case must fail with a message naming the field, index,
//! URL or file, exit non-zero, and leave the output directory as it was.

mod common;
use common::*;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A grey PNG of `h` x `w` with value `v` (or a 16-bit one).
fn png(path: &Path, h: u32, w: u32, v: u8, sixteen: bool) {
    if sixteen {
        image::ImageBuffer::<image::Luma<u16>, _>::from_pixel(w, h, image::Luma([v as u16 * 256]))
            .save(path)
    } else {
        image::GrayImage::from_pixel(w, h, image::Luma([v])).save(path)
    }
    .expect("write png");
}

/// Five 30x40 slices `s0.png` .. `s4.png` with values 10, 20, .. 50.
fn stack(dir: &Path) {
    for i in 0..5u8 {
        png(&dir.join(format!("s{i}.png")), 30, 40, 10 * (i + 1), false);
    }
}

fn manifest(source: &str, stages: &str) -> String {
    format!(
        "apiVersion: arrayjob.dev/v1alpha1\nkind: ArrayJob\nmetadata: {{name: bad}}\nspec:\n  source: {source}\n  stages:\n{stages}"
    )
}

const MEAN_XY: &str = "  - {name: brightness, input: source, reduce: {op: mean, axes: [1, 2]}, output: {csv: b.csv}}\n";

/// Runs `arrayjob run` on `text`; returns (success, stderr) and checks a failed run wrote nothing.
fn run(dir: &Path, text: &str) -> (bool, String) {
    let m = write(dir, "job.yaml", text);
    let out = dir.join("out");
    std::fs::create_dir_all(&out).expect("out");
    std::fs::write(out.join("keep.txt"), "previous run").expect("marker");
    let (ok, _, stderr) = arrayjob_text(&["run", &m, "--out", &out.display().to_string()]);
    if !ok {
        let names: Vec<String> = std::fs::read_dir(&out)
            .expect("out")
            .map(|e| e.expect("e").file_name().to_string_lossy().into())
            .collect();
        assert_eq!(
            names,
            vec!["keep.txt".to_string()],
            "a failed run left files behind"
        );
        assert_eq!(
            std::fs::read_to_string(out.join("keep.txt")).expect("marker"),
            "previous run"
        );
    }
    (ok, stderr)
}

fn fails_with(dir: &Path, text: &str, expected: &[&str]) {
    let (ok, stderr) = run(dir, text);
    assert!(!ok, "expected failure, got success");
    for e in expected {
        assert!(stderr.contains(e), "expected {e:?} in:\n{stderr}");
    }
}

#[test]
fn malformed_yaml_names_the_file_and_line() {
    let d = tempfile::tempdir().expect("tmp");
    fails_with(
        d.path(),
        "apiVersion: arrayjob.dev/v1alpha1\nkind: [ArrayJob\n",
        &["job.yaml", "line 2"],
    );
}

#[test]
fn unknown_field_is_named() {
    let d = tempfile::tempdir().expect("tmp");
    let t = manifest(
        "{synthetic: {slices: 4, height: 8, width: 8, colour: red}}",
        MEAN_XY,
    );
    fails_with(d.path(), &t, &["unknown field `colour`"]);
}

#[test]
fn every_spec_problem_is_reported_at_once() {
    let d = tempfile::tempdir().expect("tmp");
    let stages = "  - {name: m, input: source, reduce: {op: mean, axes: [3]}}\n  - {name: r, input: source, recenter: {}}\n  - {name: s, input: r, rechunk: {chunks: [-1, 10]}}\n";
    let t = manifest("{synthetic: {slices: 4, height: 8, width: 8}}", stages);
    fails_with(
        d.path(),
        &t,
        &[
            "2 problem(s)",
            "spec.stages[0].reduce.axes[0]: axis 3 out of range: input 'source' is 3-D",
            "spec.stages[2].rechunk.chunks: 2 entries, but input 'r' is 3-D",
        ],
    );
}

#[test]
fn cycle_is_refused() {
    let d = tempfile::tempdir().expect("tmp");
    let stages = "  - {name: a, input: b, rechunk: {chunks: [1, 1, 1]}}\n  - {name: b, input: a, rechunk: {chunks: [2, 2, 2]}}\n";
    let t = manifest("{synthetic: {slices: 4, height: 8, width: 8}}", stages);
    fails_with(
        d.path(),
        &t,
        &["spec.stages: stage inputs form a cycle: a <- b, b <- a"],
    );
}

#[test]
fn empty_range_is_refused() {
    let d = tempfile::tempdir().expect("tmp");
    let t = manifest(
        "{files: {pattern: \"s{index}.png\", start: 5, stop: 5}}",
        MEAN_XY,
    );
    fails_with(
        d.path(),
        &t,
        &["spec.source.files.stop: empty range [5, 5): stop must be greater than start"],
    );
}

#[test]
fn missing_file_names_index_and_path() {
    let d = tempfile::tempdir().expect("tmp");
    stack(d.path());
    let t = manifest(
        "{files: {pattern: \"s{index}.png\", start: 0, stop: 6}}",
        MEAN_XY,
    );
    fails_with(d.path(), &t, &["slice 5", "s5.png"]);
}

#[test]
fn corrupt_png_names_index_and_file() {
    let d = tempfile::tempdir().expect("tmp");
    stack(d.path());
    std::fs::write(
        d.path().join("s3.png"),
        b"\x89PNG\r\n\x1a\nthis is not a png",
    )
    .expect("write");
    let t = manifest(
        "{files: {pattern: \"s{index}.png\", start: 0, stop: 5}}",
        MEAN_XY,
    );
    fails_with(d.path(), &t, &["slice 3", "s3.png", "cannot decode"]);
}

#[test]
fn truncated_png_names_index_and_file() {
    let d = tempfile::tempdir().expect("tmp");
    stack(d.path());
    let p = d.path().join("s2.png");
    let bytes = std::fs::read(&p).expect("read");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).expect("truncate");
    let t = manifest(
        "{files: {pattern: \"s{index}.png\", start: 0, stop: 5}}",
        MEAN_XY,
    );
    fails_with(d.path(), &t, &["slice 2", "s2.png", "cannot decode"]);
}

#[test]
fn mismatched_slice_shape_names_the_index() {
    let d = tempfile::tempdir().expect("tmp");
    stack(d.path());
    png(&d.path().join("s4.png"), 31, 40, 1, false);
    let t = manifest(
        "{files: {pattern: \"s{index}.png\", start: 0, stop: 5}}",
        MEAN_XY,
    );
    fails_with(
        d.path(),
        &t,
        &["slice 4", "s4.png", "31x40 uint8", "30x40 uint8"],
    );
}

#[test]
fn sixteen_bit_among_eight_bit_names_the_index() {
    let d = tempfile::tempdir().expect("tmp");
    stack(d.path());
    png(&d.path().join("s1.png"), 30, 40, 1, true);
    let t = manifest(
        "{files: {pattern: \"s{index}.png\", start: 0, stop: 5}, slicesPerChunk: 2}",
        MEAN_XY,
    );
    fails_with(d.path(), &t, &["slice 1", "uint16", "uint8"]);
}

#[test]
fn window_larger_than_the_slices_is_named() {
    let d = tempfile::tempdir().expect("tmp");
    stack(d.path());
    let stages = "  - {name: r, input: source, recenter: {window: [31, 10]}}\n";
    let t = manifest(
        "{files: {pattern: \"s{index}.png\", start: 0, stop: 5}}",
        stages,
    );
    // Known once slice 0 is read: refused by the same rule as a declared slice shape, with its message.
    fails_with(
        d.path(),
        &t,
        &["spec.stages[0].recenter.window[0]: 31 rows do not fit in slices of 30 rows"],
    );
}

/// A loopback HTTP server over a directory; `fail` maps a path to statuses answered before the real file.
fn serve(
    dir: &Path,
    fail: HashMap<String, Vec<u16>>,
) -> (String, Arc<Mutex<HashMap<String, usize>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let (dir, h) = (dir.to_path_buf(), hits.clone());
    let fail = Arc::new(Mutex::new(fail));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let path = req
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .trim_start_matches('/')
                .to_string();
            *h.lock().expect("hits").entry(path.clone()).or_default() += 1;
            let injected = fail
                .lock()
                .expect("fail")
                .get_mut(&path)
                .and_then(|v| (!v.is_empty()).then(|| v.remove(0)));
            let (status, body) = match (injected, std::fs::read(dir.join(&path))) {
                (Some(code), _) => (code, b"injected".to_vec()),
                (None, Ok(b)) => (200, b),
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
    (base, hits)
}

#[test]
fn http_404_names_the_url() {
    let d = tempfile::tempdir().expect("tmp");
    stack(d.path());
    let (base, hits) = serve(d.path(), HashMap::new());
    let t = manifest(
        &format!("{{http: {{urlTemplate: \"{base}/s{{index}}.png\", stop: 6}}}}"),
        MEAN_XY,
    );
    fails_with(
        d.path(),
        &t,
        &[
            "slice 5",
            &format!("GET {base}/s5.png failed with HTTP 404"),
        ],
    );
    assert_eq!(
        hits.lock().expect("hits").get("s5.png"),
        Some(&1),
        "a 404 is not retried"
    );
}

#[test]
fn http_500_then_success_completes_with_the_right_numbers() {
    let d = tempfile::tempdir().expect("tmp");
    stack(d.path());
    let (base, hits) = serve(
        d.path(),
        HashMap::from([("s2.png".to_string(), vec![500, 503])]),
    );
    let t = manifest(
        &format!("{{http: {{urlTemplate: \"{base}/s{{index}}.png\", stop: 5}}}}"),
        MEAN_XY,
    );
    let (ok, stderr) = run(d.path(), &t);
    assert!(ok, "{stderr}");
    assert_eq!(hits.lock().expect("hits").get("s2.png"), Some(&3));
    let csv = std::fs::read_to_string(d.path().join("out/b.csv")).expect("csv");
    let values: Vec<f64> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).expect("col").parse().expect("num"))
        .collect();
    assert_eq!(values, vec![10.0, 20.0, 30.0, 40.0, 50.0]);
}

#[test]
fn previous_outputs_survive_a_failed_rerun() {
    let d = tempfile::tempdir().expect("tmp");
    stack(d.path());
    let good = manifest(
        "{files: {pattern: \"s{index}.png\", start: 0, stop: 5}}",
        MEAN_XY,
    );
    let m = write(d.path(), "good.yaml", &good);
    let out = d.path().join("out2").display().to_string();
    let (ok, _, err) = arrayjob_text(&["run", &m, "--out", &out]);
    assert!(ok, "{err}");
    let before = std::fs::read(d.path().join("out2/b.csv")).expect("csv");
    std::fs::write(d.path().join("s4.png"), b"garbage").expect("corrupt");
    let (ok, _, err) = arrayjob_text(&["run", &m, "--out", &out]);
    assert!(!ok && err.contains("slice 4"), "{err}");
    assert_eq!(
        std::fs::read(d.path().join("out2/b.csv")).expect("csv"),
        before
    );
    assert!(d.path().join("out2/summary.json").exists());
    let hidden: Vec<_> = std::fs::read_dir(d.path().join("out2"))
        .expect("dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with('.'))
        })
        .collect();
    assert!(hidden.is_empty(), "staging left behind");
}

#[test]
fn examples_validate_and_janelia_plans_offline() {
    let root = repo_root();
    for ex in ["examples/quickstart.yaml", "examples/janelia-em.yaml"] {
        let (ok, out, err) = arrayjob_text(&["validate", &root.join(ex).display().to_string()]);
        assert!(ok && out.contains("valid ArrayJob"), "{ex}: {out}{err}");
    }
    let (ok, out, err) = arrayjob_text(&[
        "plan",
        &root.join("examples/janelia-em.yaml").display().to_string(),
    ]);
    assert!(ok, "{err}");
    // 10000 x 2000 x 2000 uint8 source; the exchange moves the recentered 10000 x 1000 x 1000 array.
    assert!(
        out.contains("[10000, 2000, 2000]") && out.contains("[10000, 1000, 1000]"),
        "{out}"
    );
    assert!(out.contains("bytes moved by rechunks: 10000.0 MB"), "{out}");
    assert!(out.contains("power") && out.contains("10000"), "{out}");
}

#[test]
fn overlapping_and_reserved_output_paths_are_refused() {
    let d = tempfile::tempdir().expect("tmp");
    let stages = "  - {name: a, input: source, rechunk: {chunks: [2, 8, 8]}, output: {zarr: a.zarr}}\n  - {name: b, input: source, reduce: {op: mean, axes: [1, 2]}, output: {csv: a.zarr/b.csv}}\n  - {name: c, input: source, reduce: {op: sum, axes: [0, 1, 2]}, output: {csv: .arrayjob-backup}}\n  - {name: d, input: source, reduce: {op: mean, axes: [0]}, output: {image: timeline.png}}\n";
    let t = manifest("{synthetic: {slices: 4, height: 8, width: 8}}", stages);
    fails_with(
        d.path(),
        &t,
        &[
            "3 problem(s)",
            "spec.stages[1].output.csv: 'a.zarr/b.csv' lies inside 'a.zarr', written by spec.stages[0].output.zarr",
            "spec.stages[2].output.csv: '.arrayjob-backup' is reserved",
            // A distributed run publishes its timeline there: refused before any run, on one process too.
            "spec.stages[3].output.image: 'timeline.png' is reserved: workers.json, timeline.html, timeline.png",
        ],
    );
}

/// The problem lines (`  field: message`) of a failed command's stderr.
fn problem_lines(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.starts_with("  spec."))
        .map(str::to_owned)
        .collect()
}

#[test]
fn bad_templates_get_the_same_message_from_validate_and_run() {
    let d = tempfile::tempdir().expect("tmp");
    for (source, expected) in [
        (
            "{files: {pattern: \"slices.png\", stop: 3}}",
            "  spec.source.files.pattern: template \"slices.png\" has no index placeholder: put {index}, {index:05}, %d or %05d where the slice index goes",
        ),
        (
            "{http: {urlTemplate: \"http://127.0.0.1:9/{index:5}.png\", stop: 3}}",
            "  spec.source.http.urlTemplate: bad placeholder {index:5} in \"http://127.0.0.1:9/{index:5}.png\": use {index} or a zero-padded width such as {index:05}",
        ),
        (
            "{http: {urlTemplate: \"http://127.0.0.1:9/s%d.png\", stop: 3}}",
            "  spec.source.http.urlTemplate: template \"http://127.0.0.1:9/s%d.png\" has no index placeholder: put {index} or {index:05} where the slice index goes",
        ),
    ] {
        let m = write(d.path(), "job.yaml", &manifest(source, MEAN_XY));
        let (ok, _, validate_err) = arrayjob_text(&["validate", &m]);
        assert!(!ok, "validate accepted {source}");
        assert_eq!(problem_lines(&validate_err), vec![expected.to_string()]);
        let (ok, run_err) = run(d.path(), &manifest(source, MEAN_XY));
        assert!(!ok, "run accepted {source}");
        assert_eq!(problem_lines(&run_err), vec![expected.to_string()]);
    }
}

#[test]
fn huge_values_are_refused_before_anything_runs() {
    let d = tempfile::tempdir().expect("tmp");
    for (source, expected) in [
        (
            "{http: {urlTemplate: \"http://127.0.0.1:9/{index}\", stop: 3, concurrency: 4611686018427387904}}",
            "spec.source.http.concurrency: 4611686018427387904 requests in flight is more than the limit of 1024",
        ),
        (
            "{http: {urlTemplate: \"http://127.0.0.1:9/{index}\", stop: 1000000000000}}",
            "spec.source.http.stop: 1000000000000 slices is more than the limit of 10000000",
        ),
        (
            "{synthetic: {slices: 1000000000000, height: 8, width: 8}}",
            "spec.source.synthetic.slices: 1000000000000 slices is more than the limit of 10000000",
        ),
        (
            "{synthetic: {slices: 4, height: 4294967296, width: 4294967296}}",
            "spec.source.synthetic.height: 4294967296 pixels is more than the limit of 65536",
        ),
        (
            "{synthetic: {slices: 4, height: 8, width: 8}, slicesPerChunk: 18446744073709551615}",
            "spec.source.slicesPerChunk: 18446744073709551615 slices is more than the limit of 10000000",
        ),
    ] {
        fails_with(d.path(), &manifest(source, MEAN_XY), &[expected]);
    }
}

#[test]
fn http_body_larger_than_the_limit_names_url_and_limit() {
    let d = tempfile::tempdir().expect("tmp");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2147483648\r\nConnection: close\r\n\r\n\x89PNG",
            );
        }
    });
    let t = manifest(
        &format!("{{http: {{urlTemplate: \"{base}/s{{index}}.png\", stop: 3}}}}"),
        MEAN_XY,
    );
    fails_with(
        d.path(),
        &t,
        &[&format!(
            "slice 0: GET {base}/s0.png failed after 1 attempt(s): response body of 2147483648 bytes (Content-Length) exceeds the limit of 1073741824 bytes per slice"
        )],
    );
}

#[test]
fn distributed_flags_with_bad_values_are_refused_naming_the_flag() {
    let d = tempfile::tempdir().expect("tmp");
    let m = write(
        d.path(),
        "job.yaml",
        &manifest("{synthetic: {slices: 4, height: 8, width: 8}}", MEAN_XY),
    );
    let out = d.path().join("out").display().to_string();
    // `Duration::from_secs_f64` panicked on these (exit 101) or took them silently.
    for bad in ["inf", "NaN", "-1", "0", "1e300"] {
        let flag = format!("--worker-timeout={bad}");
        let o = arrayjob(&["run", &m, "--out", &out, "--workers", "2", &flag]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{bad}: {err}");
        assert!(
            err.contains(&format!(
                "invalid value '{bad}' for '--worker-timeout <WORKER_TIMEOUT>': '{bad}' is not a duration from 0.5 to 86400 seconds"
            )),
            "{bad}: {err}"
        );
    }
    assert!(!d.path().join("out").exists(), "nothing ran");
    // A worker told to advertise an address nobody can dial.
    let o = arrayjob(&[
        "worker",
        "--coordinator",
        "http://127.0.0.1:9",
        "--advertise",
        "0.0.0.0:7071",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("invalid value '0.0.0.0:7071' for '--advertise <ADVERTISE>'")
            && err.contains("means every interface, which no peer can dial"),
        "{err}"
    );
}

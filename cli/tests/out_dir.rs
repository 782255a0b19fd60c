//! The output directory through `arrayjob run`: all-or-nothing replacement of the previous outputs, the lock
//! against concurrent runs, leftovers of killed runs, and SIGTERM.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn job(name: &str, source: &str, stages: &str) -> String {
    format!(
        "apiVersion: arrayjob.dev/v1alpha1\nkind: ArrayJob\nmetadata: {{name: {name}}}\nspec:\n  source: {source}\n  stages:\n{stages}"
    )
}

const SMALL: &str = "{synthetic: {slices: 6, height: 8, width: 8}}";

/// Every file under `dir` (relative path -> bytes).
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    assert!(dir.exists(), "{} exists", dir.display());
    files_under(dir)
}

/// A first run writing `a.csv`, `b.csv` and `m.zarr` into `out`; returns its manifest path.
fn first_run(dir: &Path, out: &Path) {
    let stages = "  - {name: a, input: source, reduce: {op: mean, axes: [1, 2]}, output: {csv: a.csv}}\n  - {name: b, input: source, reduce: {op: max, axes: [0, 1, 2]}, output: {csv: b.csv}}\n  - {name: m, input: source, reduce: {op: mean, axes: [0]}, output: {zarr: m.zarr}}\n";
    let m = write(dir, "first.yaml", &job("first", SMALL, stages));
    let (ok, _, err) = arrayjob_text(&["run", &m, "--out", &out.display().to_string()]);
    assert!(ok, "{err}");
}

#[test]
fn failed_commit_keeps_every_previous_output() {
    let d = tempfile::tempdir().expect("tmp");
    let out = d.path().join("out");
    first_run(d.path(), &out);
    // Not an output of the first run: the second run's `sub/c.csv` cannot be moved in under a file `sub`,
    // after its `a.csv` and `m.zarr` have replaced the first run's.
    std::fs::write(out.join("sub"), "in the way").expect("sub");
    let before = snapshot(&out);
    let stages = "  - {name: m, input: source, reduce: {op: sum, axes: [0]}, output: {zarr: m.zarr}}\n  - {name: a, input: source, reduce: {op: sum, axes: [1, 2]}, output: {csv: a.csv}}\n  - {name: c, input: source, reduce: {op: min, axes: [1, 2]}, output: {csv: sub/c.csv}}\n";
    let m = write(d.path(), "second.yaml", &job("second", SMALL, stages));
    let (ok, _, err) = arrayjob_text(&["run", &m, "--out", &out.display().to_string()]);
    assert!(!ok, "the second run should fail");
    assert_eq!(
        err,
        format!(
            "error: output directory {}: File exists (os error 17)\n",
            out.join("sub").display()
        )
    );
    assert_eq!(snapshot(&out), before, "the previous outputs changed");
    assert!(before.contains_key("summary.json") && before.contains_key("b.csv"));
}

#[test]
fn rerun_replaces_all_previous_outputs() {
    let d = tempfile::tempdir().expect("tmp");
    let out = d.path().join("out");
    first_run(d.path(), &out);
    std::fs::write(out.join("notes.txt"), "mine").expect("notes");
    let stages =
        "  - {name: a, input: source, reduce: {op: sum, axes: [0, 1, 2]}, output: {csv: a.csv}}\n";
    let m = write(d.path(), "second.yaml", &job("second", SMALL, stages));
    let (ok, _, err) = arrayjob_text(&["run", &m, "--out", &out.display().to_string()]);
    assert!(ok, "{err}");
    let names: Vec<String> = snapshot(&out).into_keys().collect();
    // b.csv and m.zarr were the previous run's: gone with it; notes.txt is not arrayjob's: kept.
    assert_eq!(names, vec!["a.csv", "notes.txt", "summary.json"]);
    let a = std::fs::read_to_string(out.join("a.csv")).expect("a.csv");
    assert!(a.starts_with("value\n"), "{a}");
}

#[test]
fn stale_staging_of_a_killed_run_is_removed() {
    let d = tempfile::tempdir().expect("tmp");
    let out = d.path().join("out");
    let stale = out.join(".arrayjob-staging-Xy12ab");
    std::fs::create_dir_all(stale.join("m.zarr")).expect("stale");
    std::fs::write(stale.join(".spill"), vec![0u8; 4096]).expect("spill");
    first_run(d.path(), &out);
    let hidden: Vec<String> = std::fs::read_dir(&out)
        .expect("out")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "left behind: {hidden:?}");
}

/// 2 GB of synthetic slices reduced on one thread: about 5 s on a quiet machine (400 slices took 0.95 s).
fn slow_job(dir: &Path) -> String {
    let stages =
        "  - {name: a, input: source, reduce: {op: std, axes: [1, 2]}, output: {csv: slow.csv}}\n";
    write(
        dir,
        "slow.yaml",
        &job(
            "slow",
            "{synthetic: {slices: 2000, height: 1000, width: 1000}}",
            stages,
        ),
    )
}

fn spawn_run(manifest: &str, out: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_arrayjob"))
        .args([
            "run",
            manifest,
            "--out",
            &out.display().to_string(),
            "--threads",
            "1",
        ])
        .env("ARRAYJOB_QUIET", "true")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn arrayjob")
}

/// Waits until a run has taken the lock of `out`.
fn wait_for_lock(out: &Path) -> PathBuf {
    let lock = out.join(".arrayjob.lock");
    let t = Instant::now();
    // The holder writes its pid once it has the lock.
    while std::fs::read_to_string(&lock).map_or(true, |t| t.is_empty()) {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the run never locked {}",
            out.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    lock
}

#[test]
fn sigterm_cancels_cleanly_and_keeps_previous_outputs() {
    let d = tempfile::tempdir().expect("tmp");
    let out = d.path().join("out");
    first_run(d.path(), &out);
    let before = snapshot(&out);
    let child = spawn_run(&slow_job(d.path()), &out);
    wait_for_lock(&out);
    std::thread::sleep(Duration::from_millis(500));
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let t = Instant::now();
    let done = child.wait_with_output().expect("wait");
    assert!(t.elapsed() < Duration::from_secs(10), "slow to stop");
    let err = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "error: interrupted (Ctrl-C or SIGTERM): run cancelled, the outputs in {}/ are as they were",
            out.display()
        )),
        "{err}"
    );
    assert_eq!(
        snapshot(&out),
        before,
        "staging or lock left, or outputs changed"
    );
}

#[test]
fn second_run_into_a_busy_directory_is_refused_at_once() {
    let d = tempfile::tempdir().expect("tmp");
    let out = d.path().join("out");
    let first = spawn_run(&slow_job(d.path()), &out);
    let pid = first.id();
    let lock = wait_for_lock(&out);
    let stages =
        "  - {name: b, input: source, reduce: {op: max, axes: [0, 1, 2]}, output: {csv: b.csv}}\n";
    let m = write(d.path(), "quick.yaml", &job("quick", SMALL, stages));
    let (ok, _, err) = arrayjob_text(&["run", &m, "--out", &out.display().to_string()]);
    assert!(!ok);
    let dir = out.display();
    assert!(
        err.contains(&format!(
            "output directory {dir} is in use by another arrayjob run (pid {pid} holds {dir}/.arrayjob.lock)"
        )),
        "{err}"
    );
    assert!(lock.exists(), "the refused run removed the holder's lock");
    let done = first.wait_with_output().expect("wait");
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let names: Vec<String> = snapshot(&out).into_keys().collect();
    assert_eq!(names, vec!["slow.csv", "summary.json"]);
}

#[test]
fn a_summary_arrayjob_did_not_write_moves_nothing() {
    let d = tempfile::tempdir().expect("tmp");
    let out = d.path().join("out");
    std::fs::create_dir_all(out.join("keep")).expect("mkdir");
    std::fs::write(out.join("keep/notes.txt"), "mine").expect("write");
    std::fs::write(out.join("data.csv"), "mine too").expect("write");
    // Hand-written, or another program's: it lists the user's own files.
    std::fs::write(
        out.join("summary.json"),
        r#"{"outputs": [{"path": "keep"}, {"path": "data.csv", "fingerprint": {"files": 1, "bytes": 8, "sha256": "00"}}]}"#,
    )
    .expect("write");
    let stages =
        "  - {name: a, input: source, reduce: {op: mean, axes: [1, 2]}, output: {csv: a.csv}}\n";
    let m = write(d.path(), "job.yaml", &job("own", SMALL, stages));
    let (ok, _, err) = arrayjob_text(&["run", &m, "--out", &out.display().to_string()]);
    assert!(ok, "{err}");
    let after = snapshot(&out);
    assert_eq!(
        after.get("keep/notes.txt").map(Vec::as_slice),
        Some(&b"mine"[..])
    );
    assert_eq!(
        after.get("data.csv").map(Vec::as_slice),
        Some(&b"mine too"[..])
    );
    assert!(after.contains_key("a.csv"));
    // The run's own summary replaced the hand-written one, with fingerprints: a later run of another job
    // removes `a.csv`, and only it.
    let stages =
        "  - {name: b, input: source, reduce: {op: max, axes: [1, 2]}, output: {csv: b.csv}}\n";
    let m = write(d.path(), "other.yaml", &job("other", SMALL, stages));
    let (ok, _, err) = arrayjob_text(&["run", &m, "--out", &out.display().to_string()]);
    assert!(ok, "{err}");
    let after = snapshot(&out);
    assert!(
        !after.contains_key("a.csv") && after.contains_key("b.csv"),
        "{:?}",
        after.keys()
    );
    assert_eq!(
        after.get("keep/notes.txt").map(Vec::as_slice),
        Some(&b"mine"[..])
    );
    assert_eq!(
        after.get("data.csv").map(Vec::as_slice),
        Some(&b"mine too"[..])
    );
}

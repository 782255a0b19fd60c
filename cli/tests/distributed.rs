//! Distributed runs with real worker processes on loopback addresses: the same bytes as one process, worker
//! loss (kill -9) during loading, the exchange and the FFT, a worker joining mid-job, spilling workers, and
//! refused requests (no token, another job's token, another plan hash).

mod common;
use common::*;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "test-token-0123456789abcdef";

// One distributed run at a time (`serial()`): each starts several processes, and on a 2-core machine nine of
// them at once would starve heartbeats and make loss detection a matter of luck.

/// The post's pipeline on a synthetic stack: 60 loads of 5 slices, means, recentering, the exchange into
/// per-pixel series, and the power spectrum as Zarr and a plot.
const JOB: &str = "apiVersion: arrayjob.dev/v1alpha1
kind: ArrayJob
metadata: {name: dist}
spec:
  source:
    synthetic: {slices: 300, height: 400, width: 400}
    slicesPerChunk: 5
  stages:
  - {name: time-mean, input: source, reduce: {op: mean, axes: [0]}, output: {image: time-mean.png, zarr: time-mean.zarr}}
  - {name: brightness, input: source, reduce: {op: mean, axes: [1, 2]}, output: {csv: brightness.csv}}
  - {name: recentered, input: source, recenter: {window: [200, 200]}}
  - {name: series, input: recentered, rechunk: {chunks: [-1, 10, 10]}}
  - name: power
    input: series
    fft: {axis: 0, power: true, dtype: float32}
    output: {zarr: power.zarr, plot: {file: power.png, pixels: [[0, 0], [100, 100]], logY: true}}
";

/// Files of a run's output directory (relative path -> bytes), without the run's own reports.
fn outputs(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = files_under(dir);
    for report in [
        "summary.json",
        "workers.json",
        "timeline.html",
        "timeline.png",
    ] {
        out.remove(report);
    }
    out
}

fn assert_same_outputs(want: &Path, got: &Path) {
    let (a, b) = (outputs(want), outputs(got));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "same files"
    );
    for (name, bytes) in &a {
        assert!(bytes == &b[name], "{name} differs from the one-process run");
    }
    assert!(
        a.keys().any(|k| k.starts_with("power.zarr/c")),
        "power shards written"
    );
}

/// The undisturbed one-process run of `JOB`, made once per test binary.
fn reference(dir: &Path) -> PathBuf {
    let m = write(dir, "job.yaml", JOB);
    let out = dir.join("reference");
    let (ok, _, err) = arrayjob_text(&["run", &m, "--out", &out.display().to_string()]);
    assert!(ok, "{err}");
    out
}

/// `arrayjob run` as a coordinator on `port` with `workers` local workers.
fn start_run(
    manifest: &str,
    out: &Path,
    port: u16,
    workers: usize,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Child {
    Command::new(env!("CARGO_BIN_EXE_arrayjob"))
        .args(["run", manifest, "--out", &out.display().to_string()])
        .args([
            "--workers",
            &workers.to_string(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["--worker-threads", "1", "--worker-timeout", "2"])
        .args(extra)
        .env("ARRAYJOB_QUIET", "true")
        .env("ARRAYJOB_TOKEN", TOKEN)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start arrayjob")
}

/// `arrayjob worker` joining the coordinator on `port`, with `args` after the coordinator's URL.
fn worker_command(port: u16, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_arrayjob"));
    c.args([
        "worker",
        "--coordinator",
        &format!("http://127.0.0.1:{port}"),
    ])
    .args(args)
    .env("ARRAYJOB_TOKEN", TOKEN);
    c
}

fn finish(child: Child) -> (bool, String, String) {
    let o = child.wait_with_output().expect("wait");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

/// (done, total) of a stage in a progress snapshot.
fn stage(p: &serde_json::Value, name: &str) -> (u64, u64) {
    let s = p["stages"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name))
        .unwrap_or(&serde_json::Value::Null);
    (
        s["tasksDone"].as_u64().unwrap_or(0),
        s["tasksTotal"].as_u64().unwrap_or(0),
    )
}

/// Polls the progress until `when` holds (or the run ends: None).
fn wait_for(
    port: u16,
    child: &mut Child,
    when: impl Fn(&serde_json::Value) -> bool,
) -> Option<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if child.try_wait().expect("poll").is_some() {
            return None;
        }
        if let Some(p) = progress(port, TOKEN)
            && when(&p)
        {
            return Some(p);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

fn workers_json(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("workers.json")).expect("workers.json"))
        .expect("json")
}

#[test]
fn two_and_four_workers_write_the_same_bytes_as_one_process() {
    let _serial = serial();
    let d = tempfile::tempdir().expect("tmp");
    let want = reference(d.path());
    let m = d.path().join("job.yaml").display().to_string();
    for n in [2, 4] {
        let out = d.path().join(format!("w{n}"));
        let (ok, stdout, err) = arrayjob_text(&[
            "run",
            &m,
            "--out",
            &out.display().to_string(),
            "--workers",
            &n.to_string(),
        ]);
        assert!(ok, "{n} workers: {err}");
        assert_same_outputs(&want, &out);
        let w = workers_json(&out);
        let ws = w["workers"].as_array().expect("workers");
        assert_eq!(ws.len(), n, "{w}");
        let mut hosts: Vec<String> = ws
            .iter()
            .map(|worker| {
                assert!(
                    worker["tasksDone"].as_u64() > Some(0),
                    "every worker ran tasks: {w}"
                );
                let addr = worker["address"].as_str().expect("address");
                addr.rsplit_once(':').expect("host:port").0.to_string()
            })
            .collect();
        hosts.sort();
        let want: Vec<String> = (0..n).map(|i| format!("127.0.0.{}", i + 2)).collect();
        assert_eq!(hosts, want, "one loopback address per worker");
        assert!(
            w["bytesMoved"].as_u64() > Some(0),
            "pieces crossed the network: {w}"
        );
        // Every merge of the exchange reads a piece of each of the 60 loads, so wherever it runs, the pieces
        // cut on the other workers (half of them or more) must travel: they move as soon as they are cut.
        // The pieces are the recentered stack, 300 x 200 x 200 uint8: 12 MB.
        let early = w["bytesMovedEarly"].as_u64().expect("bytesMovedEarly");
        let pieces = 300 * 200 * 200;
        assert!(
            early >= pieces * 2 / 5 && early <= pieces,
            "{early} of {pieces} bytes of pieces moved early: {w}"
        );
        assert!(stdout.contains("moved between workers"), "{stdout}");
        let html = std::fs::read_to_string(out.join("timeline.html")).expect("timeline");
        assert!(html.contains("worker 1"), "a lane per worker");
    }
}

/// Which worker a kill test kills.
#[derive(Clone, Copy, PartialEq)]
enum Victim {
    /// One the run started: the coordinator sees its process exit.
    Local,
    /// One started by hand: only its missing heartbeats tell.
    External,
}

#[test]
fn the_quickstart_on_four_workers_writes_the_same_bytes_as_one_process() {
    let _serial = serial();
    let d = tempfile::tempdir().expect("tmp");
    let m = repo_root()
        .join("examples/quickstart.yaml")
        .display()
        .to_string();
    let one = d.path().join("one");
    let four = d.path().join("four");
    let (ok, _, err) = arrayjob_text(&["run", &m, "--out", &one.display().to_string()]);
    assert!(ok, "{err}");
    let (ok, _, err) = arrayjob_text(&[
        "run",
        &m,
        "--out",
        &four.display().to_string(),
        "--workers",
        "4",
    ]);
    assert!(ok, "{err}");
    assert_same_outputs(&one, &four);
    for f in [
        "time-mean.png",
        "recentered-mean.png",
        "power-spectrum.png",
        "brightness.csv",
    ] {
        assert!(outputs(&four).contains_key(f), "{f} written");
    }
}

/// Kills one worker (-9) when `when` first holds; the run must still write the reference bytes, having
/// declared the worker lost (within the 2 s heartbeat timeout, plus slack) and recomputed its lost data.
fn survives_a_kill(phase: &str, victim: Victim, when: impl Fn(&serde_json::Value) -> bool) {
    let d = tempfile::tempdir().expect("tmp");
    let want = reference(d.path());
    let m = d.path().join("job.yaml").display().to_string();
    let out = d.path().join("out");
    let port = free_port();
    let local = if victim == Victim::External { 2 } else { 3 };
    // The outside worker starts first (it waits for the coordinator), so it joins with the local ones
    // rather than after a slow machine has already loaded most of the stack.
    let external = (victim == Victim::External).then(|| {
        worker_command(port, &["--listen", "127.0.0.9:0", "--threads", "1"])
            .stderr(Stdio::null())
            .spawn()
            .expect("start a worker")
    });
    let mut child = start_run(&m, &out, port, local, &[], &[]);
    // The victim must hold results someone still needs (else a speculative copy of its task may finish the
    // job before its loss is even noticed): it has finished two tasks.
    let victim_busy = |p: &serde_json::Value| {
        p["workers"].as_array().is_some_and(|ws| {
            ws.len() == 3
                && (victim == Victim::Local
                    || ws.iter().any(|w| {
                        w["address"]
                            .as_str()
                            .is_some_and(|a| a.starts_with("127.0.0.9:"))
                            && w["tasksDone"].as_u64() >= Some(2)
                    }))
        })
    };
    let seen = wait_for(port, &mut child, |p| victim_busy(p) && when(p));
    let Some(seen) = seen else {
        let (_, _, err) = finish(child);
        panic!("{phase}: the run ended before the kill point: {err}");
    };
    let pid = match &external {
        Some(w) => w.id() as i32,
        None => {
            let locals = children_of(child.id());
            assert_eq!(locals.len(), 3, "three local workers");
            locals[1]
        }
    };
    let killed_at = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    let noticed = wait_for(port, &mut child, |p| p["workersLost"].as_u64() == Some(1));
    if noticed.is_some() {
        assert!(
            killed_at.elapsed() < Duration::from_secs(4),
            "{phase}: the loss was noticed after {:?}",
            killed_at.elapsed()
        );
    }
    let (ok, _, err) = finish(child);
    if let Some(mut w) = external {
        let _ = w.wait();
    }
    assert!(ok, "{phase}: {err}\nkilled at {seen}");
    assert_same_outputs(&want, &out);
    let w = workers_json(&out);
    assert_eq!(w["workersLost"], 1, "{phase}: {w}");
    assert!(
        w["recomputed"].as_u64() > Some(0),
        "{phase}: lost data was recomputed: {w}"
    );
}

#[test]
fn a_worker_killed_during_loading_is_recomputed_and_the_bytes_are_the_same() {
    let _serial = serial();
    // Any moment while loads remain (the victim has done two of them by then): no merge can end before the
    // last load (each series spans every slice), so every piece the victim holds is still needed. A narrower
    // window (the first two thirds) was missed when the outside worker got its two loads late.
    survives_a_kill("loading", Victim::External, |p| {
        let (done, total) = stage(p, "source");
        total > 0 && done < total
    });
}

#[test]
fn a_worker_killed_during_the_exchange_is_recomputed_and_the_bytes_are_the_same() {
    let _serial = serial();
    // After the last load, in the first half of the merges: every merge left fetches pieces from every
    // worker. (Before the first merge ended was a window of one merge task, missed in a whole-suite run.)
    survives_a_kill("exchange", Victim::Local, |p| {
        let (loads, total) = stage(p, "source");
        let (merges, merges_total) = stage(p, "series");
        total > 0 && loads == total && merges < merges_total / 2
    });
}

#[test]
fn a_worker_killed_during_the_fft_is_recomputed_and_the_bytes_are_the_same() {
    let _serial = serial();
    // Merge tasks compute the spectra they paste (the FFT is fused into them): the middle half of them.
    survives_a_kill("fft", Victim::Local, |p| {
        let (merges, total) = stage(p, "series");
        total > 0 && merges >= total / 4 && merges < total * 3 / 4
    });
}

#[test]
fn a_task_that_kills_three_workers_fails_the_job_naming_it() {
    let _serial = serial();
    let d = tempfile::tempdir().expect("tmp");
    let m = write(d.path(), "job.yaml", JOB);
    let out = d.path().join("out");
    // Task 7 is the load of slices 35..40: every worker that starts it aborts.
    let child = start_run(
        &m,
        &out,
        free_port(),
        4,
        &[],
        &[("ARRAYJOB_FAULT_ABORT_TASK", "7")],
    );
    let (ok, _, err) = finish(child);
    assert!(!ok, "the job must fail");
    assert!(
        err.contains(
            "the load of slices 35..40 (source chunk 7) was running on 3 workers that died"
        ),
        "{err}"
    );
    assert!(!out.join("power.zarr").exists(), "no outputs published");
}

#[test]
fn a_worker_joining_mid_job_gets_work() {
    let _serial = serial();
    let d = tempfile::tempdir().expect("tmp");
    let want = reference(d.path());
    let m = d.path().join("job.yaml").display().to_string();
    let out = d.path().join("out");
    let port = free_port();
    let mut child = start_run(&m, &out, port, 1, &[], &[]);
    let seen = wait_for(port, &mut child, |p| stage(p, "source").0 >= 3);
    assert!(seen.is_some(), "the run went on");
    let joiner = worker_command(port, &["--listen", "127.0.0.9:0", "--threads", "1"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a worker");
    // The joiner's own endpoints: metrics without the token, data only with it (refusals counted).
    let joined = wait_for(port, &mut child, |p| {
        p["workers"].as_array().is_some_and(|w| w.len() == 2)
    })
    .expect("the joiner registered");
    let addr = joined["workers"][1]["address"]
        .as_str()
        .expect("address")
        .to_string();
    assert!(addr.starts_with("127.0.0.9:"), "{joined}");
    let refused = http()
        .post(format!("http://{addr}/v1/fetch"))
        .json(&serde_json::json!({"keys": []}))
        .send()
        .expect("fetch");
    assert_eq!(refused.status(), 401);
    let metrics = http()
        .get(format!("http://{addr}/metrics"))
        .send()
        .expect("metrics")
        .text()
        .expect("text");
    assert!(
        metrics.contains("arrayjob_worker_auth_refused 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("arrayjob_worker_tasks_done_total"),
        "{metrics}"
    );
    let (ok, _, err) = finish(child);
    let j = joiner.wait_with_output().expect("joiner");
    assert!(ok, "{err}");
    assert!(j.status.success(), "{}", String::from_utf8_lossy(&j.stderr));
    assert_same_outputs(&want, &out);
    let w = workers_json(&out);
    let joined = w["workers"]
        .as_array()
        .and_then(|ws| {
            ws.iter().find(|x| {
                x["address"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("127.0.0.9:"))
            })
        })
        .expect("the joiner is listed")
        .clone();
    assert!(joined["tasksDone"].as_u64() > Some(0), "{w}");
}

#[test]
fn workers_with_a_tiny_memory_budget_spill_and_finish() {
    let _serial = serial();
    let d = tempfile::tempdir().expect("tmp");
    let want = reference(d.path());
    let m = d.path().join("job.yaml").display().to_string();
    let out = d.path().join("out");
    let (ok, _, err) = arrayjob_text(&[
        "run",
        &m,
        "--out",
        &out.display().to_string(),
        "--workers",
        "2",
        "--memory-limit",
        "4MB",
    ]);
    assert!(ok, "{err}");
    assert_same_outputs(&want, &out);
    let w = workers_json(&out);
    for worker in w["workers"].as_array().expect("workers") {
        assert!(worker["store"]["spilledBytes"].as_u64() > Some(0), "{w}");
    }
}

#[test]
fn requests_not_signed_with_the_job_token_are_refused_and_counted() {
    let _serial = serial();
    let d = tempfile::tempdir().expect("tmp");
    let m = write(d.path(), "job.yaml", JOB);
    let out = d.path().join("out");
    let port = free_port();
    // No local workers: the coordinator waits for workers that never come while we knock.
    let mut child = start_run(&m, &out, port, 0, &[], &[]);
    let first = wait_for(port, &mut child, |_| true).expect("the coordinator answers");
    assert_eq!(first["authRefused"], 0);
    let url = format!("http://127.0.0.1:{port}/v1/job");
    let none = http().get(&url).send().expect("send");
    assert_eq!(none.status(), 401);
    // The job token itself is not taken where a worker talks (only the read-only progress takes it).
    for bearer in ["another-jobs-token-0123456789", TOKEN] {
        let other = http()
            .get(&url)
            .header("authorization", format!("Bearer {bearer}"))
            .send()
            .expect("send");
        assert_eq!(other.status(), 401);
        assert!(
            other
                .text()
                .expect("text")
                .contains("never the job token itself")
        );
    }
    // A worker whose plan differs (another engine version or other data) is refused by name.
    let token = arrayjob_auth::Token::from_text(TOKEN).expect("token");
    let (status, text) = on_tokio(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let reg = client
            .post(format!("http://127.0.0.1:{port}/v1/register"))
            .json(&serde_json::json!({"address": "127.0.0.5:1", "cores": 1, "memoryBudget": 1, "planHash": "00ff", "version": "0.0.0"}));
        let answer = arrayjob_auth::send(reg, &token)
            .await
            .expect("a proven answer");
        (answer.status(), answer.text().await.expect("text"))
    });
    assert_eq!(status, 409);
    assert!(
        text.contains("computed plan hash 00ff") && text.contains("127.0.0.5:1"),
        "{text}"
    );
    let p = progress(port, TOKEN).expect("progress");
    assert_eq!(p["authRefused"], 3, "{p}");
    // `arrayjob progress` signs (the token stays here) and reads the same snapshot; with another job's
    // token it reads nothing and says why.
    let coordinator = format!("http://127.0.0.1:{port}");
    let signed = std::process::Command::new(env!("CARGO_BIN_EXE_arrayjob"))
        .args(["progress", &coordinator])
        .env("ARRAYJOB_TOKEN", TOKEN)
        .output()
        .expect("arrayjob progress");
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    let snapshot: serde_json::Value = serde_json::from_slice(&signed.stdout).expect("json");
    assert_eq!(snapshot["authRefused"], 3, "{snapshot}");
    assert_eq!(snapshot["phase"], "running", "{snapshot}");
    let stranger = std::process::Command::new(env!("CARGO_BIN_EXE_arrayjob"))
        .args(["progress", &coordinator])
        .env("ARRAYJOB_TOKEN", "another-jobs-token-0123456789")
        .output()
        .expect("arrayjob progress");
    assert!(!stranger.status.success());
    let err = String::from_utf8_lossy(&stranger.stderr);
    assert!(
        err.contains(&format!(
            "{coordinator}/v1/progress answered 401 Unauthorized without proving it holds the job token"
        )),
        "{err}"
    );
    let metrics = http()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .expect("metrics")
        .text()
        .expect("text");
    assert!(metrics.contains("arrayjob_auth_refused 4"), "{metrics}");
    assert_eq!(
        http()
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .expect("health")
            .text()
            .expect("text"),
        "ok"
    );
    // A worker started for another plan refuses to join, naming both hashes.
    let w = worker_command(
        port,
        &["--listen", "127.0.0.6:0", "--expect-plan-hash", "abcd"],
    )
    .output()
    .expect("worker");
    let err = String::from_utf8_lossy(&w.stderr);
    assert!(!w.status.success());
    assert!(err.contains("started for plan hash abcd"), "{err}");
    child.kill().expect("stop the coordinator");
    let _ = child.wait();
}

#[test]
fn a_worker_leaves_at_once_on_sigterm() {
    // A coordinator that never answers: the worker waits for its job description.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let worker = worker_command(
        port,
        &["--listen", "127.0.0.1:0", "--advertise", "127.0.0.1:7"],
    )
    .stderr(Stdio::piped())
    .spawn()
    .expect("start a worker");
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let o = worker.wait_with_output().expect("wait");
    // Handled, not the default action: so it also leaves as PID 1 in a container, which has none.
    assert_eq!(o.status.code(), Some(143), "{:?}", o.status);
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("terminated (SIGTERM or Ctrl-C); leaving the job"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

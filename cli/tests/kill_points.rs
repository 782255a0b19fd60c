//! Kill points: a run killed (SIGKILL, with its workers) at a moment taken from its own progress, then the same
//! command started again, must end with exactly the bytes of an uninterrupted run (or fail saying why), never
//! exit 0 with less. The moments cover every phase: the loads (the n-th slice read), the exchange (the n-th
//! exchange object), the merges (the n-th shard written), the ledger, each request of the S3 publish and each
//! filesystem change of the local commit, and a resume that is itself killed. (`docs/architecture.md`,
//! "Committing outputs", says which test kills which state.)
//!
//! How the moments are taken:
//! - S3 requests go through [`FaultProxy`], which kills the run's process group right before the n-th request
//!   matching a kill point reaches SeaweedFS (the request never lands);
//! - local filesystem changes of the coordinator are counted by `fixtures/killshim.c` (LD_PRELOAD), which
//!   kills the process right before its k-th change outside the staging directory, or its k-th file made at a
//!   path matching a pattern (a shard of the power spectrum: the merges).
//!
//! Every location starts with a previous run's outputs in it (another variant of the job: an output the new
//! run does not write, and the power spectrum with other shards), so the replacing of previous outputs is
//! killed too.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use arrayjob_testenv::{AfterFault, FaultProxy, S3Request, S3Server};

const BUCKET: &str = "kill";
const SLICES: usize = 24;
const TOKEN: &str = "kill-points-token";
/// Leases of the test's locks: a killed run's expire this soon.
const LEASE_SECONDS: u64 = 5;

struct Bench {
    server: S3Server,
    proxy: FaultProxy,
}

/// SeaweedFS with the slices, and the proxy in front of it.
fn bench() -> &'static Bench {
    static BENCH: OnceLock<Bench> = OnceLock::new();
    BENCH.get_or_init(|| {
        let server = S3Server::start().unwrap_or_else(|e| panic!("start SeaweedFS: {e}"));
        let s3 = server.endpoint();
        s3_create_bucket(s3, BUCKET);
        for i in 0..SLICES {
            s3_put(
                s3,
                BUCKET,
                &format!("slices/{i:03}.png"),
                &slice_png(i, 128),
            );
        }
        let proxy = FaultProxy::start(&s3.endpoint).unwrap_or_else(|e| panic!("proxy: {e}"));
        Bench { server, proxy }
    })
}

fn proxy() -> &'static FaultProxy {
    &bench().proxy
}

/// The job, reading its slices through the proxy. `previous`: the variant a location holds before the run
/// under test (an extra `old.csv`, the spectrum sharded otherwise).
fn manifest(previous: bool, exchange: &str) -> String {
    let s3 = &bench().server.endpoint();
    // The previous variant's `power.zarr` is the stack itself in chunks of 4 slices: keys (`c/1/0/0`, ...) the
    // new spectrum does not have, left stale unless deleted; and it has an output the new one does not write.
    let tail = if previous {
        "  - {name: power, input: source, rechunk: {chunks: [4, 128, 128]}, output: {zarr: power.zarr}}\n  \
         - {name: old, input: source, reduce: {op: max, axes: [1, 2]}, output: {csv: old.csv}}\n"
    } else {
        "  - {name: series, input: source, rechunk: {chunks: [-1, 4, 4]}}\n  \
         - {name: power, input: series, fft: {axis: 0, power: true, dtype: float32}, output: {zarr: power.zarr}}\n"
    };
    format!(
        "apiVersion: arrayjob.dev/v1alpha1\nkind: ArrayJob\nmetadata: {{name: kp}}\nspec:\n  exchange: {exchange}\n  \
         storage: {{s3: {{bucket: {BUCKET}, endpoint: \"{}\", region: {}, forcePathStyle: true, leaseSeconds: \
         {LEASE_SECONDS}}}}}\n  source: {{s3: {{keys: \"slices/{{index:03}}.png\", stop: {SLICES}}}, slicesPerChunk: 4}}\n  \
         stages:\n  \
         - {{name: mean, input: source, reduce: {{op: mean, axes: [0]}}, output: {{zarr: mean.zarr, image: mean.png}}}}\n  \
         - {{name: brightness, input: source, reduce: {{op: mean, axes: [1, 2]}}, output: {{csv: brightness.csv}}}}\n{tail}",
        proxy().endpoint(),
        s3.region
    )
}

/// How a run is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `arrayjob run` in one process.
    Local,
    /// `--workers 3` (one thread each).
    Workers,
}

/// Starts `arrayjob run` of `manifest` into `out` in a process group of its own (so that killing the group kills
/// its workers), with the kill shim's environment `shim`.
fn start(
    dir: &Path,
    manifest: &str,
    out: &str,
    mode: Mode,
    extra: &[&str],
    shim: &[(&str, String)],
) -> Child {
    let m = write(dir, "job.yaml", manifest);
    let empty = write(dir, "empty-aws-file", "");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_arrayjob"));
    cmd.args(["run", &m, "--out", out]);
    if mode == Mode::Workers {
        cmd.args([
            "--workers",
            "3",
            "--worker-threads",
            "1",
            "--worker-timeout",
            "2",
        ])
        .args(["--listen", &format!("127.0.0.1:{}", free_port())]);
    }
    cmd.args(extra)
        .env("ARRAYJOB_QUIET", "true")
        .env("ARRAYJOB_TOKEN", TOKEN)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env("AWS_CONFIG_FILE", &empty)
        .env("AWS_SHARED_CREDENTIALS_FILE", &empty)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(s3_credentials(bench().server.endpoint()))
        .envs(shim.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    cmd.spawn().expect("start arrayjob")
}

/// How long a run of the test job may take before it counts as hung.
const HUNG: Duration = Duration::from_secs(180);

/// Waits for a run; returns (exit status, stderr). A run still going after [`HUNG`] is killed with its group and
/// fails the test: a hang is a failure, not a CI timeout.
fn finish(child: Child) -> (std::process::ExitStatus, String) {
    let pgid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let o = match rx.recv_timeout(HUNG) {
        Ok(o) => o.expect("wait"),
        Err(_) => {
            kill_group(pgid);
            let o = rx.recv().expect("the run").expect("wait");
            panic!(
                "the run hung for {HUNG:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    };
    (o.status, String::from_utf8_lossy(&o.stderr).into())
}

fn kill_group(pgid: u32) {
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pgid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Every object under `prefix`.
fn objects(prefix: &str) -> BTreeMap<String, Vec<u8>> {
    s3_objects(bench().server.endpoint(), BUCKET, prefix).expect("list the objects")
}

/// The outputs as the tests compare them: the run's reports (whose timings differ from run to run) left out.
fn outputs(mut files: BTreeMap<String, Vec<u8>>) -> BTreeMap<String, Vec<u8>> {
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

/// The reference: the job, uninterrupted, on one process into a fresh local directory.
fn reference() -> &'static BTreeMap<String, Vec<u8>> {
    static REF: OnceLock<BTreeMap<String, Vec<u8>>> = OnceLock::new();
    REF.get_or_init(|| {
        let d = tempfile::tempdir().expect("tmp");
        let out = d.path().join("out");
        let child = start(
            d.path(),
            &manifest(false, "direct"),
            &out.display().to_string(),
            Mode::Local,
            &[],
            &[],
        );
        let (status, err) = finish(child);
        assert!(status.success(), "reference run failed: {err}");
        let files = outputs(files_under(&out));
        assert!(files.contains_key("power.zarr/zarr.json") && files.contains_key("mean.png"));
        files
    })
}

/// Asserts that the S3 location `prefix` (ending in `/`) holds exactly the reference outputs and a summary
/// listing them, and nothing of the protocol (staging, journal, lock); and for a resumable run (`job_id`), that
/// its scratch (ledger, exchange) is gone. (A killed run without an id keeps its scratch for `arrayjob gc
/// --scratch`: no later run knows it.)
fn assert_s3_complete(prefix: &str, job_id: Option<&str>, what: &str) {
    let all = objects(prefix);
    let summary: serde_json::Value = serde_json::from_slice(
        all.get("summary.json")
            .unwrap_or_else(|| panic!("{what}: no summary.json")),
    )
    .expect("summary JSON");
    let listed: Vec<&str> = summary["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .map(|o| o["path"].as_str().expect("path"))
        .collect();
    assert!(
        listed.contains(&"power.zarr") && !listed.contains(&"old.csv"),
        "{what}: {listed:?}"
    );
    let leftovers: Vec<&String> = all.keys().filter(|k| k.starts_with(".arrayjob")).collect();
    assert!(leftovers.is_empty(), "{what}: left behind {leftovers:?}");
    let got = outputs(all.clone());
    let expected = reference();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "{what}: the objects differ from an uninterrupted run's"
    );
    for (k, v) in expected {
        assert!(
            got[k] == *v,
            "{what}: {k} differs from an uninterrupted run's"
        );
    }
    if let Some(id) = job_id {
        let scratch = objects(&format!("scratch/kp/{id}/"));
        assert!(
            scratch.is_empty(),
            "{what}: scratch left: {:?}",
            scratch.keys().collect::<Vec<_>>()
        );
    }
}

/// Asserts that the local directory holds exactly the reference outputs, a summary, and nothing of the
/// protocol.
fn assert_dir_complete(dir: &Path, what: &str) {
    let all = files_under(dir);
    assert!(all.contains_key("summary.json"), "{what}: no summary.json");
    let leftovers: Vec<&String> = all.keys().filter(|k| k.starts_with(".arrayjob")).collect();
    assert!(leftovers.is_empty(), "{what}: left behind {leftovers:?}");
    let entries: Vec<String> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".arrayjob"))
        .collect();
    assert!(entries.is_empty(), "{what}: left behind {entries:?}");
    let got = outputs(all);
    let expected = reference();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "{what}: the files differ from an uninterrupted run's"
    );
    for (k, v) in expected {
        assert!(
            got[k] == *v,
            "{what}: {k} differs from an uninterrupted run's"
        );
    }
}

/// Publishes the previous variant of the job at `out` (uninterrupted, one process).
fn previous_run(dir: &Path, out: &str) {
    let child = start(dir, &manifest(true, "direct"), out, Mode::Local, &[], &[]);
    let (status, err) = finish(child);
    assert!(status.success(), "previous run failed: {err}");
}

/// A kill point on S3: before the `nth` request (from 1) matching `matches`.
struct S3Point {
    name: &'static str,
    matches: Matcher,
    nth: usize,
}

type Matcher = std::sync::Arc<dyn Fn(&S3Request, &Ctx) -> bool + Send + Sync>;

/// What a kill point knows of its run: the output prefix (ending in `/`).
#[derive(Debug, Clone)]
struct Ctx {
    out: String,
}

impl Ctx {
    /// The part of `key` after the run's staging prefix (`{out}.arrayjob-staging-{run}/`), if it is in one.
    fn staged<'k>(&self, key: &'k str) -> Option<&'k str> {
        let rest = key
            .strip_prefix(&self.out)?
            .strip_prefix(".arrayjob-staging-")?;
        rest.split_once('/').map(|(_, r)| r)
    }
}

fn point(
    name: &'static str,
    nth: usize,
    matches: impl Fn(&S3Request, &Ctx) -> bool + Send + Sync + 'static,
) -> S3Point {
    S3Point {
        name,
        matches: std::sync::Arc::new(matches),
        nth,
    }
}

fn put_under(r: &S3Request, prefix: &str) -> bool {
    matches!(r.op(), "PutObject" | "UploadPart") && r.key.starts_with(prefix)
}

fn copy_to(r: &S3Request, prefix: &str) -> bool {
    r.op() == "CopyObject" && r.key.starts_with(prefix)
}

fn deletes_under(r: &S3Request, prefix: &str) -> bool {
    r.op() == "DeleteObjects" && r.deleted.iter().any(|k| k.starts_with(prefix))
}

/// The kill points of a run into an S3 location: every phase, each step of the publish.
fn s3_points(resumable: bool) -> Vec<S3Point> {
    let mut points = vec![
        point("a slice read (loads)", 7, |r, _| {
            r.op() == "GetObject" && r.key.starts_with("slices/")
        }),
        point("a shard of the spectrum written (merges)", 2, |r, c| {
            put_under(r, &c.out)
                && c.staged(&r.key)
                    .is_some_and(|k| k.starts_with("power.zarr/c"))
        }),
        point("the small outputs uploaded (publish)", 1, |r, c| {
            put_under(r, &c.out) && c.staged(&r.key) == Some("mean.png")
        }),
        point("the previous summary read (publish)", 1, |r, c| {
            r.op() == "GetObject" && r.key == format!("{}summary.json", c.out)
        }),
        point("the journal written (publish)", 1, |r, c| {
            r.changes(&format!("{}.arrayjob-publish.json", c.out))
        }),
        point("the previous summary deleted (publish)", 1, |r, c| {
            r.op() == "DeleteObjects" && r.changes(&format!("{}summary.json", c.out))
        }),
        point("the first copy (publish)", 1, |r, c| copy_to(r, &c.out)),
        point("a later copy (publish)", 6, |r, c| copy_to(r, &c.out)),
        point("the spectrum's zarr.json copied (publish)", 1, |r, c| {
            r.op() == "CopyObject" && r.key == format!("{}power.zarr/zarr.json", c.out)
        }),
        point("stale shards deleted (publish)", 1, |r, c| {
            deletes_under(r, &format!("{}power.zarr/", c.out))
        }),
        point("the previous output deleted (publish)", 1, |r, c| {
            r.changes(&format!("{}old.csv", c.out))
        }),
        point(
            "the summary copied (publish, the commit point)",
            1,
            |r, c| r.op() == "CopyObject" && r.key == format!("{}summary.json", c.out),
        ),
        point("the journal deleted (publish)", 1, |r, c| {
            r.op() == "DeleteObjects" && r.changes(&format!("{}.arrayjob-publish.json", c.out))
        }),
        point("the staging deleted (publish)", 1, |r, c| {
            r.op() == "DeleteObjects"
                && r.deleted
                    .iter()
                    .any(|k| c.staged(k).is_some_and(|k| k != ".arrayjob-ledger"))
        }),
        point("the lock released (after the publish)", 1, |r, c| {
            r.op() == "DeleteObjects" && r.changes(&format!("{}.arrayjob.lock", c.out))
        }),
    ];
    if resumable {
        points.extend([
            point("an exchange object stored (exchange)", 3, |r, _| {
                put_under(r, "scratch/kp/") && r.key.contains("/exchange/")
            }),
            point("a ledger segment written", 2, |r, _| {
                put_under(r, "scratch/kp/") && r.key.contains("/ledger/seg-")
            }),
            point("a small output's block kept in the ledger", 1, |r, _| {
                put_under(r, "scratch/kp/") && r.key.contains("/ledger/gathered/")
            }),
            point("the staging marker deleted (publish)", 1, |r, c| {
                r.op() == "DeleteObjects"
                    && r.deleted
                        .iter()
                        .any(|k| c.staged(k) == Some(".arrayjob-ledger"))
            }),
            point("the scratch deleted (after the publish)", 1, |r, _| {
                deletes_under(r, "scratch/kp/") && r.deleted.iter().any(|k| k.contains("/ledger/"))
            }),
        ]);
    }
    points
}

/// Arms the proxy to kill, before the `nth` request matching `matches` in a run into `ctx`, the process group
/// whose id is put in the returned cell once the run is started.
fn arm(matches: &Matcher, nth: usize, ctx: &Ctx) -> std::sync::Arc<std::sync::atomic::AtomicU32> {
    let pgid = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let (m, c, g) = (matches.clone(), ctx.clone(), pgid.clone());
    proxy().arm(
        move |r| m(r, &c),
        nth,
        move |_| {
            kill_group(g.load(std::sync::atomic::Ordering::SeqCst));
            AfterFault::Drop
        },
    );
    pgid
}

/// Starts a run armed to die at the `nth` request matching `matches`, and waits for it; asserts that it was
/// killed there. Returns the request it died at.
fn run_killed(
    dir: &Path,
    ctx: &Ctx,
    matches: &Matcher,
    nth: usize,
    mode: Mode,
    extra: &[&str],
    what: &str,
) -> S3Request {
    let pgid = arm(matches, nth, ctx);
    let out = format!("s3://{BUCKET}/{}", ctx.out);
    let child = start(
        dir,
        &manifest(false, exchange(mode)),
        &out,
        mode,
        extra,
        &[],
    );
    pgid.store(child.id(), std::sync::atomic::Ordering::SeqCst);
    let id = child.id();
    let (status, err) = finish(child);
    kill_group(id);
    let fired = proxy().fired();
    proxy().disarm();
    let fired = fired
        .unwrap_or_else(|| panic!("{what}: the kill point was never reached; the run said: {err}"));
    assert_eq!(
        status.signal(),
        Some(9),
        "{what}: the run was not killed ({status}): {err}"
    );
    fired
}

/// The exchange a mode runs with: through S3 on workers (so there is an exchange to kill), none locally.
fn exchange(mode: Mode) -> &'static str {
    match mode {
        Mode::Local => "direct",
        Mode::Workers => "s3",
    }
}

/// The same command again, to its end: it must succeed.
fn run_again(dir: &Path, ctx: &Ctx, mode: Mode, extra: &[&str], what: &str) -> String {
    let out = format!("s3://{BUCKET}/{}", ctx.out);
    let child = start(
        dir,
        &manifest(false, exchange(mode)),
        &out,
        mode,
        extra,
        &[],
    );
    let id = child.id();
    let (status, err) = finish(child);
    kill_group(id);
    assert!(
        status.success(),
        "{what}: the run started again failed ({status}): {err}"
    );
    err
}

/// Each S3 kill point, on a run of `mode`: previous outputs in place, the run killed at the point, the same
/// command again; the location then holds exactly the uninterrupted run's outputs.
fn kill_each_s3_point(tag: &str, mode: Mode, resumable: bool) {
    let d = tempfile::tempdir().expect("tmp");
    let run = format!("{tag}-run");
    let job_id = ["--job-id", run.as_str()];
    let extra: &[&str] = if resumable { &job_id } else { &[] };
    for (i, p) in s3_points(resumable).iter().enumerate() {
        let ctx = Ctx {
            out: format!("{tag}-{i}/"),
        };
        let what = format!("{tag}: killed before {} (#{})", p.name, p.nth);
        previous_run(d.path(), &format!("s3://{BUCKET}/{}", ctx.out));
        let fired = run_killed(d.path(), &ctx, &p.matches, p.nth, mode, extra, &what);
        eprintln!(
            "{what}: killed at request {} {} {}",
            fired.seq,
            fired.op(),
            fired.key
        );
        if !resumable {
            // The killed run's lock expires before another run may take the location.
            std::thread::sleep(Duration::from_secs(LEASE_SECONDS + 1));
        }
        run_again(d.path(), &ctx, mode, extra, &what);
        assert_s3_complete(&ctx.out, resumable.then_some(run.as_str()), &what);
    }
}

#[test]
fn s3_outputs_on_three_workers_resume_whole_from_every_kill_point() {
    let _serial = serial();
    kill_each_s3_point("w3", Mode::Workers, true);
}

#[test]
fn s3_outputs_of_one_process_end_whole_after_every_kill_point() {
    let _serial = serial();
    kill_each_s3_point("p1", Mode::Local, false);
}

fn find_point(name: &str) -> S3Point {
    s3_points(true)
        .into_iter()
        .find(|p| p.name.starts_with(name))
        .unwrap_or_else(|| panic!("no kill point {name}"))
}

#[test]
fn a_resume_killed_again_still_ends_whole() {
    let _serial = serial();
    let d = tempfile::tempdir().expect("tmp");
    let extra = ["--job-id", "again"];
    for (i, (first, second)) in [
        ("a later copy", "the first copy"),
        ("a shard of the spectrum", "a ledger segment"),
        ("the journal written", "the summary copied"),
    ]
    .into_iter()
    .enumerate()
    {
        let ctx = Ctx {
            out: format!("again-{i}/"),
        };
        let what = format!("killed before {first}, then its resume before {second}");
        previous_run(d.path(), &format!("s3://{BUCKET}/{}", ctx.out));
        let (p, q) = (find_point(first), find_point(second));
        run_killed(
            d.path(),
            &ctx,
            &p.matches,
            p.nth,
            Mode::Workers,
            &extra,
            &what,
        );
        let fired = run_killed(d.path(), &ctx, &q.matches, 1, Mode::Workers, &extra, &what);
        eprintln!(
            "{what}: the resume was killed at request {} {} {}",
            fired.seq,
            fired.op(),
            fired.key
        );
        run_again(d.path(), &ctx, Mode::Workers, &extra, &what);
        assert_s3_complete(&ctx.out, Some("again"), &what);
    }
}

#[test]
fn a_resume_of_a_published_job_computes_nothing_again() {
    let _serial = serial();
    let d = tempfile::tempdir().expect("tmp");
    // Killed before its journal is deleted, the resume finishes the publish from the journal (copies again,
    // harmlessly); killed after, it copies nothing. Either way it computes and uploads nothing.
    for (i, point, copies) in [
        (0, "the journal deleted", true),
        (1, "the staging marker deleted", false),
    ] {
        let ctx = Ctx {
            out: format!("published-{i}/"),
        };
        let id = format!("published-{i}");
        let extra = ["--job-id", id.as_str()];
        let what = format!("killed before {point}");
        previous_run(d.path(), &format!("s3://{BUCKET}/{}", ctx.out));
        let p = find_point(point);
        run_killed(d.path(), &ctx, &p.matches, 1, Mode::Workers, &extra, &what);
        let summary = objects(&ctx.out)["summary.json"].clone();
        proxy().take_log();
        let err = run_again(d.path(), &ctx, Mode::Workers, &extra, &what);
        assert!(
            err.contains("published by the run that was interrupted"),
            "{what}: {err}"
        );
        assert_eq!(
            err.contains("finishing the publish"),
            copies,
            "{what}: {err}"
        );
        let log = proxy().take_log();
        let copied = log.iter().filter(|r| r.op() == "CopyObject").count();
        assert_eq!(copied > 0, copies, "{what}: {copied} copies");
        let uploads: Vec<&S3Request> = log
            .iter()
            .filter(|r| {
                r.op() == "PutObject"
                    && !r.key.ends_with(".arrayjob.lock")
                    && !r.key.contains("owner.lock")
            })
            .collect();
        assert!(uploads.is_empty(), "{what}: uploaded again: {uploads:?}");
        assert_s3_complete(&ctx.out, Some(&id), &what);
        assert_eq!(
            objects(&ctx.out)["summary.json"],
            summary,
            "{what}: a new summary"
        );
    }
}

#[test]
fn a_worker_killed_at_the_end_changes_nothing_and_the_publish_needs_no_worker() {
    let _serial = serial();
    let d = tempfile::tempdir().expect("tmp");
    let ctx = Ctx {
        out: "worker-lost/".into(),
    };
    previous_run(d.path(), &format!("s3://{BUCKET}/{}", ctx.out));
    let coordinator = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    // While a worker uploads a shard of the spectrum (its last tasks), another worker dies.
    let killed = std::sync::Arc::new(Mutex::new(None));
    let p = find_point("a shard of the spectrum");
    let (m, c, co, k) = (
        p.matches.clone(),
        ctx.clone(),
        coordinator.clone(),
        killed.clone(),
    );
    proxy().arm(
        move |r| m(r, &c),
        2,
        move |_| {
            let workers = children_of(co.load(std::sync::atomic::Ordering::SeqCst));
            if let Some(&w) = workers.last() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(w),
                    nix::sys::signal::Signal::SIGKILL,
                );
                *k.lock().unwrap_or_else(|e| e.into_inner()) = Some(w);
            }
            AfterFault::Forward
        },
    );
    let out = format!("s3://{BUCKET}/{}", ctx.out);
    let child = start(
        d.path(),
        &manifest(false, "s3"),
        &out,
        Mode::Workers,
        &[],
        &[],
    );
    coordinator.store(child.id(), std::sync::atomic::Ordering::SeqCst);
    // Then, when the publish writes its journal, no worker is left: the publish depends on none.
    let alive = std::sync::Arc::new(Mutex::new(None));
    let wait_for_journal = {
        let (co, alive, ctx) = (coordinator.clone(), alive.clone(), ctx.clone());
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while proxy().fired().is_none() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let j = find_point("the journal written");
            let (m, c, co2, a) = (j.matches.clone(), ctx.clone(), co.clone(), alive.clone());
            proxy().arm(
                move |r| m(r, &c),
                1,
                move |_| {
                    let left = children_of(co2.load(std::sync::atomic::Ordering::SeqCst));
                    *a.lock().unwrap_or_else(|e| e.into_inner()) = Some(left);
                    AfterFault::Forward
                },
            );
        })
    };
    let id = child.id();
    let (status, err) = finish(child);
    kill_group(id);
    let _ = wait_for_journal.join();
    proxy().disarm();
    assert!(
        killed.lock().unwrap_or_else(|e| e.into_inner()).is_some(),
        "no worker was killed"
    );
    assert!(
        status.success(),
        "the run failed after losing a worker: {err}"
    );
    assert_eq!(
        alive.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        Some(Vec::new()),
        "workers were still running when the publish began (or it never began)"
    );
    assert_s3_complete(&ctx.out, None, "a worker killed at the end");
}

/// The kill shim, built once with the machine's C compiler.
fn shim() -> &'static Path {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    SHIM.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("arrayjob-killshim-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let so = dir.join("killshim.so");
        let src = repo_root().join("cli/tests/fixtures/killshim.c");
        let o = Command::new("cc")
            .args(["-shared", "-fPIC", "-O1", "-o"])
            .arg(&so)
            .arg(&src)
            .arg("-ldl")
            .output()
            .expect("run cc");
        assert!(
            o.status.success(),
            "cc: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        so
    })
}

/// The shim's environment: count changes under `dir` (or only files made at paths containing `pattern`),
/// kill at the `at`-th (0: never), log to `log`.
fn shim_env(
    dir: &Path,
    at: usize,
    pattern: Option<&str>,
    log: Option<&Path>,
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("LD_PRELOAD", shim().display().to_string()),
        ("KILLSHIM_UNDER", dir.display().to_string()),
        ("KILLSHIM_AT", at.to_string()),
    ];
    if let Some(p) = pattern {
        env.push(("KILLSHIM_MATCH", p.to_owned()));
    }
    if let Some(l) = log {
        env.push(("KILLSHIM_LOG", l.display().to_string()));
    }
    env
}

/// A local run into `out` with the shim; returns its exit status and stderr.
fn run_local(
    dir: &Path,
    out: &Path,
    mode: Mode,
    shim: &[(&str, String)],
) -> (std::process::ExitStatus, String) {
    let child = start(
        dir,
        &manifest(false, "direct"),
        &out.display().to_string(),
        mode,
        &[],
        shim,
    );
    let id = child.id();
    let r = finish(child);
    kill_group(id);
    r
}

/// Whether every output the summary in `dir` lists (if there is one) has the fingerprint it records there: a
/// reader that trusts `summary.json` sees whole outputs at every kill point. Computed here independently of the
/// engine: sha256 of the sorted lines `relative-path TAB size`.
fn assert_summary_truthful(dir: &Path, what: &str) {
    use sha2::Digest;
    let Ok(text) = std::fs::read(dir.join("summary.json")) else {
        return;
    };
    let summary: serde_json::Value = serde_json::from_slice(&text).expect("summary JSON");
    for o in summary["outputs"].as_array().expect("outputs") {
        let path = o["path"].as_str().expect("path");
        let top = dir.join(path);
        let mut lines: Vec<String> = if top.is_dir() {
            files_under(&top)
                .into_iter()
                .map(|(k, v)| format!("{k}\t{}\n", v.len()))
                .collect()
        } else {
            match std::fs::metadata(&top) {
                Ok(m) => vec![format!("\t{}\n", m.len())],
                Err(_) => panic!("{what}: summary.json lists {path}, which is not there"),
            }
        };
        lines.sort();
        let digest: String = sha2::Sha256::digest(lines.concat().as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            o["fingerprint"]["sha256"].as_str(),
            Some(digest.as_str()),
            "{what}: {path} is not what summary.json says"
        );
    }
}

/// The changes an uninterrupted local run into a directory holding a previous run makes outside its staging
/// directory (the commit's, and the lock's).
fn commit_changes(d: &Path, mode: Mode) -> Vec<String> {
    let out = d.join("record");
    previous_run(d, &out.display().to_string());
    let log = d.join("record.log");
    let (status, err) = run_local(d, &out, mode, &shim_env(&out, 0, None, Some(&log)));
    assert!(status.success(), "recording run failed: {err}");
    assert_dir_complete(&out, "the recording run");
    let changes: Vec<String> = std::fs::read_to_string(&log)
        .expect("the shim's log")
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(
        changes
            .iter()
            .any(|l| l.contains("rename") && l.contains("summary.json")),
        "the shim saw no commit: {changes:?}"
    );
    eprintln!(
        "{mode:?}: {} changes outside staging:\n{}",
        changes.len(),
        changes.join("\n")
    );
    changes
}

#[test]
fn a_local_commit_killed_at_each_change_then_run_again_ends_whole() {
    let _serial = serial();
    let d = tempfile::tempdir().expect("tmp");
    let changes = commit_changes(d.path(), Mode::Local);
    for (k, change) in changes.iter().enumerate() {
        let at = k + 1;
        let out = d.path().join(format!("k{at}"));
        let what = format!("killed before change {at} ({change})");
        previous_run(d.path(), &out.display().to_string());
        let (status, err) = run_local(d.path(), &out, Mode::Local, &shim_env(&out, at, None, None));
        assert_eq!(
            status.signal(),
            Some(9),
            "{what}: not killed ({status}): {err}"
        );
        assert_summary_truthful(&out, &what);
        let (status, err) = run_local(d.path(), &out, Mode::Local, &[]);
        assert!(status.success(), "{what}: run again: {err}");
        assert_dir_complete(&out, &what);
    }
}

#[test]
fn a_local_recovery_killed_again_still_ends_whole() {
    let _serial = serial();
    let d = tempfile::tempdir().expect("tmp");
    let changes = commit_changes(d.path(), Mode::Local);
    // Kill in the middle of moving outputs (the previous ones aside, the new ones in): the next run rolls back.
    let moves: Vec<usize> = changes
        .iter()
        .enumerate()
        .filter(|(_, c)| c.contains("rename") && !c.contains("journal"))
        .map(|(k, _)| k + 1)
        .collect();
    assert!(moves.len() >= 4, "{changes:?}");
    for &first in &[moves[1], moves[moves.len() / 2], moves[moves.len() - 1]] {
        for second in 1..=3 {
            let out = d.path().join(format!("r{first}-{second}"));
            let what = format!("killed before change {first}, its recovery before change {second}");
            previous_run(d.path(), &out.display().to_string());
            let (status, _) = run_local(
                d.path(),
                &out,
                Mode::Local,
                &shim_env(&out, first, None, None),
            );
            assert_eq!(status.signal(), Some(9), "{what}");
            let (status, err) = run_local(
                d.path(),
                &out,
                Mode::Local,
                &shim_env(&out, second, None, None),
            );
            assert_eq!(
                status.signal(),
                Some(9),
                "{what}: the second run was not killed: {err}"
            );
            assert_summary_truthful(&out, &what);
            let (status, err) = run_local(d.path(), &out, Mode::Local, &[]);
            assert!(status.success(), "{what}: third run: {err}");
            assert_dir_complete(&out, &what);
        }
    }
}

#[test]
fn local_outputs_killed_in_the_loads_and_merges_end_whole() {
    let _serial = serial();
    let d = tempfile::tempdir().expect("tmp");
    for mode in [Mode::Local, Mode::Workers] {
        // Loads: the 7th slice read. Merges: the 2nd shard of the spectrum made (in one process; on workers,
        // the 3rd exchange object stored).
        let out = d.path().join(format!("loads-{mode:?}"));
        previous_run(d.path(), &out.display().to_string());
        let ctx = Ctx { out: String::new() };
        let p = find_point("a slice read");
        let pgid = arm(&p.matches, p.nth, &ctx);
        let child = start(
            d.path(),
            &manifest(false, exchange(mode)),
            &out.display().to_string(),
            mode,
            &[],
            &[],
        );
        pgid.store(child.id(), std::sync::atomic::Ordering::SeqCst);
        let id = child.id();
        let (status, _) = finish(child);
        kill_group(id);
        assert!(
            proxy().fired().is_some(),
            "{mode:?}: never read a 7th slice"
        );
        proxy().disarm();
        assert_eq!(status.signal(), Some(9));
        let (status, err) = run_local(d.path(), &out, mode, &[]);
        assert!(
            status.success(),
            "{mode:?} after a kill in the loads: {err}"
        );
        assert_dir_complete(&out, &format!("{mode:?}: killed in the loads"));

        let out = d.path().join(format!("merges-{mode:?}"));
        previous_run(d.path(), &out.display().to_string());
        let status = if mode == Mode::Local {
            run_local(
                d.path(),
                &out,
                mode,
                &shim_env(&out, 2, Some("power.zarr/c"), None),
            )
            .0
        } else {
            let p = find_point("an exchange object");
            let pgid = arm(&p.matches, p.nth, &ctx);
            let child = start(
                d.path(),
                &manifest(false, "s3"),
                &out.display().to_string(),
                mode,
                &[],
                &[],
            );
            pgid.store(child.id(), std::sync::atomic::Ordering::SeqCst);
            let id = child.id();
            let (status, _) = finish(child);
            kill_group(id);
            assert!(
                proxy().fired().is_some(),
                "never stored a 3rd exchange object"
            );
            proxy().disarm();
            status
        };
        assert_eq!(
            status.signal(),
            Some(9),
            "{mode:?}: not killed in the merges"
        );
        let (status, err) = run_local(d.path(), &out, mode, &[]);
        assert!(
            status.success(),
            "{mode:?} after a kill in the merges: {err}"
        );
        assert_dir_complete(&out, &format!("{mode:?}: killed in the merges"));
    }
}

#[test]
fn a_distributed_local_commit_killed_at_its_steps_then_run_again_ends_whole() {
    let _serial = serial();
    let d = tempfile::tempdir().expect("tmp");
    let changes = commit_changes(d.path(), Mode::Workers);
    // The commit is the one-process run's (killed at each change above); here, one change of each step: the
    // journal, a previous output moved aside, a new one moved in, the summary (the commit point), the backup
    // removed.
    let step = |what: &str, f: &dyn Fn(&str) -> bool| {
        changes
            .iter()
            .position(|c| f(c))
            .map(|k| k + 1)
            .unwrap_or_else(|| panic!("no change of {what}: {changes:?}"))
    };
    let points = [
        step("the journal", &|c| {
            c.contains("rename") && c.contains("journal.json")
        }),
        step("a move aside", &|c| {
            c.contains("rename") && c.contains(".arrayjob-backup/files/")
        }),
        step("a move in", &|c| {
            c.contains("rename") && c.contains(".arrayjob-staging-") && !c.contains("summary.json")
        }),
        step("the summary", &|c| {
            c.contains("rename") && c.contains(".arrayjob-staging-") && c.contains("summary.json")
        }),
        step("the backup removed", &|c| {
            c.contains("unlink") && c.contains(".arrayjob-backup")
        }),
    ];
    for at in points {
        let out = d.path().join(format!("w{at}"));
        let what = format!("workers: killed before change {at} ({})", changes[at - 1]);
        previous_run(d.path(), &out.display().to_string());
        let (status, err) = run_local(
            d.path(),
            &out,
            Mode::Workers,
            &shim_env(&out, at, None, None),
        );
        assert_eq!(
            status.signal(),
            Some(9),
            "{what}: not killed ({status}): {err}"
        );
        assert_summary_truthful(&out, &what);
        let (status, err) = run_local(d.path(), &out, Mode::Workers, &[]);
        assert!(status.success(), "{what}: run again: {err}");
        assert_dir_complete(&out, &what);
    }
}

//! The runtime as a library, in this process, on loopback: a coordinator (an executor of the engine's runner)
//! and two workers run a small synthetic job whose files are byte for byte those of the engine's local run,
//! with the coordinator's progress and report typed; a coordinator refuses unsigned requests and fails a job
//! no worker joins with its typed error; a worker whose coordinator cannot be reached ends with its typed
//! error, naming the URL.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use arrayjob_auth::Token;
use arrayjob_engine::exec::JobProgress;
use arrayjob_engine::runner::{self, OutLocation, Prepared, RunError, RunOptions};
use arrayjob_runtime::coordinator::{
    Coordinator, CoordinatorOptions, JobPhase, ProgressSnapshot, WorkerState,
};
use arrayjob_runtime::worker::{WorkerError, WorkerOptions, WorkerOutcome};

/// A small job that still takes every path: loads, a reduction gathered to the coordinator (the image and
/// the CSV), Zarr chunks written by the workers, the all-to-all exchange between the workers (the rechunk)
/// and the FFT.
const JOB: &str = "apiVersion: arrayjob.dev/v1alpha1
kind: ArrayJob
metadata: {name: lib-cluster}
spec:
  source:
    synthetic: {slices: 24, height: 48, width: 40}
    slicesPerChunk: 3
  stages:
  - {name: time-mean, input: source, reduce: {op: mean, axes: [0]}, output: {image: time-mean.png, zarr: time-mean.zarr}}
  - {name: brightness, input: source, reduce: {op: mean, axes: [1, 2]}, output: {csv: brightness.csv}}
  - {name: series, input: source, rechunk: {chunks: [-1, 8, 8]}}
  - {name: power, input: series, fft: {axis: 0, power: true, dtype: float32}, output: {zarr: power.zarr}}
";

const TOKEN: &str = "runtime-test-token-0123456789";

fn prepared(dir: &Path) -> Prepared {
    let m = arrayjob_engine::validate::parse_manifest(JOB, "job.yaml").expect("manifest");
    let valid = arrayjob_engine::validate::validate(&m.spec).expect("valid");
    runner::prepare(m, &valid, dir).expect("prepare")
}

fn run_options(out: &Path) -> RunOptions {
    RunOptions {
        out: OutLocation::Dir(out.to_path_buf()),
        threads: 2,
        memory_budget: 256 << 20,
        spill_disk_limit: None,
        job_id: None,
    }
}

/// Every file under `dir` (relative path -> bytes).
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).expect("prefix").display().to_string();
                out.insert(rel, std::fs::read(&p).expect("read"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// A loopback port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

fn coordinator_options(port: u16, base: &Path) -> CoordinatorOptions {
    let mut o = CoordinatorOptions::local(JOB.to_owned(), base.to_path_buf(), 0, Vec::new())
        .expect("options");
    o.listen = SocketAddr::from(([127, 0, 0, 1], port));
    o.token = Token::from_text(TOKEN).expect("token");
    o
}

fn worker_options(coordinator: &str, host: [u8; 4], spill: PathBuf) -> WorkerOptions {
    WorkerOptions {
        coordinator: coordinator.to_owned(),
        token: Token::from_text(TOKEN).expect("token"),
        listen: SocketAddr::from((host, 0)),
        advertise: None,
        threads: 1,
        memory_budget: 64 << 20,
        spill_dir: spill,
        spill_disk_limit: None,
        expect_plan_hash: None,
        launch_id: None,
        join_timeout: Duration::from_secs(30),
        abort_on_task: None,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

#[test]
fn a_coordinator_and_two_workers_in_process_write_the_bytes_of_the_local_run() {
    let tmp = tempfile::tempdir().expect("tmp");
    let job = prepared(tmp.path());
    let local = tmp.path().join("local");
    runner::run(
        &job,
        &run_options(&local),
        &JobProgress::new(&job.plan),
        &AtomicBool::new(false),
    )
    .expect("local run");

    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    // The workers start first: they wait for the coordinator to listen.
    let workers: Vec<_> = [[127, 0, 0, 21], [127, 0, 0, 22]]
        .into_iter()
        .enumerate()
        .map(|(i, host)| {
            let o = worker_options(&url, host, tmp.path().join(format!("spill-{i}")));
            std::thread::spawn(move || arrayjob_runtime::worker::run(o))
        })
        .collect();
    let mut coordinator = Coordinator::new(coordinator_options(port, tmp.path()));
    let dist = tmp.path().join("dist");
    let summary = runner::run_with(
        &job,
        &run_options(&dist),
        &mut coordinator,
        &JobProgress::new(&job.plan),
        &AtomicBool::new(false),
    )
    .expect("distributed run");
    let outcomes: Vec<WorkerOutcome> = workers
        .into_iter()
        .map(|w| w.join().expect("worker thread").expect("worker"))
        .collect();

    // The same files, byte for byte, but the run's own reports.
    let mut want = files(&local);
    let mut got = files(&dist);
    want.remove("summary.json");
    for report in [
        "summary.json",
        arrayjob_runtime::coordinator::WORKERS_FILE,
        arrayjob_runtime::coordinator::TIMELINE_HTML,
        arrayjob_runtime::coordinator::TIMELINE_PNG,
    ] {
        assert!(got.remove(report).is_some(), "{report} missing");
    }
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>()
    );
    for (name, bytes) in &want {
        assert!(got[name] == *bytes, "{name} differs from the local run's");
    }
    assert!(
        want.keys().any(|k| k.starts_with("power.zarr/")),
        "{:?}",
        want.keys()
    );
    assert_eq!(summary.plan_hash, job.plan.hash);

    // The report: both workers, each with the tasks it says it ran, and every task of the graph done once at
    // least.
    let report = coordinator.report().expect("report");
    assert_eq!(report.workers.len(), 2);
    let ids: Vec<u32> = outcomes.iter().map(|o| o.worker.0).collect();
    for w in &report.workers {
        assert_eq!(w.state, WorkerState::Done, "{w:?}");
        let outcome = outcomes
            .iter()
            .find(|o| o.worker == w.id)
            .unwrap_or_else(|| panic!("worker {} not among {ids:?}", w.id.0));
        assert_eq!(w.tasks_done as u64, outcome.tasks, "{w:?}");
    }
    let ran: u64 = outcomes.iter().map(|o| o.tasks).sum();
    assert!(ran >= report.tasks as u64, "{ran} < {}", report.tasks);
    assert_eq!(report.auth_refused, 0);
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dist.join(arrayjob_runtime::coordinator::WORKERS_FILE))
            .expect("workers.json"),
    )
    .expect("json");
    assert_eq!(json["workers"][0]["state"], "done", "{json}");
}

#[test]
fn a_coordinator_refuses_unsigned_requests_and_fails_a_job_no_worker_joins_with_its_typed_error() {
    let tmp = tempfile::tempdir().expect("tmp");
    let job = prepared(tmp.path());
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut opts = coordinator_options(port, tmp.path());
    opts.no_worker_timeout = Duration::from_secs(3);
    let out = tmp.path().join("out");
    let run = {
        let out = out.clone();
        std::thread::spawn(move || {
            let mut c = Coordinator::new(opts);
            runner::run_with(
                &job,
                &run_options(&out),
                &mut c,
                &JobProgress::new(&job.plan),
                &AtomicBool::new(false),
            )
        })
    };
    let rt = runtime();
    let http = client();
    let deadline = Instant::now() + Duration::from_secs(20);
    while rt
        .block_on(async { http.get(format!("{url}/healthz")).send().await })
        .is_err()
    {
        assert!(Instant::now() < deadline, "the coordinator never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Unsigned: refused before any handler, the refusal counted.
    let register = rt
        .block_on(async {
            let body = serde_json::json!({"address": "127.0.0.9:1", "cores": 1, "memoryBudget": 1,
                "planHash": "x", "version": "0"});
            http.post(format!("{url}/v1/register"))
                .json(&body)
                .send()
                .await
        })
        .expect("send");
    assert_eq!(register.status(), 401);
    let job_desc = rt
        .block_on(async { http.get(format!("{url}/v1/job")).send().await })
        .expect("send");
    assert_eq!(job_desc.status(), 401);
    // Signed: the progress, typed, while the job waits for workers.
    let token = Token::from_text(TOKEN).expect("token");
    let snapshot: ProgressSnapshot = rt.block_on(async {
        let answer = arrayjob_auth::send(http.get(format!("{url}/v1/progress")), &token)
            .await
            .expect("a proven answer");
        assert_eq!(answer.status(), 200);
        answer.json().await.expect("snapshot")
    });
    assert_eq!(snapshot.phase, JobPhase::Running);
    assert!(snapshot.workers.is_empty());
    assert_eq!(snapshot.auth_refused, 2);
    let names: Vec<&str> = snapshot.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["source", "time-mean", "brightness", "series"],
        "the stages that have tasks of their own (the FFT runs in the rechunk's merges)"
    );
    assert!(
        snapshot
            .stages
            .iter()
            .all(|s| s.tasks_done == 0 && s.tasks_total > 0)
    );

    // Nobody comes: the job fails after `no_worker_timeout`, as an internal error of the run saying so, and
    // nothing is published.
    let err = run
        .join()
        .expect("coordinator thread")
        .expect_err("no worker");
    assert!(
        matches!(&err, RunError::Exec(arrayjob_engine::exec::ExecError::Internal(m))
            if m == "no worker for 3 s: the job cannot go on"),
        "{err:?}"
    );
    assert!(!out.join("summary.json").exists());
}

#[test]
fn a_worker_whose_coordinator_cannot_be_reached_ends_with_its_typed_error() {
    let tmp = tempfile::tempdir().expect("tmp");
    let url = format!("http://127.0.0.1:{}", free_port());
    let mut o = worker_options(&url, [127, 0, 0, 23], tmp.path().to_path_buf());
    o.join_timeout = Duration::from_millis(600);
    let t0 = Instant::now();
    let err = arrayjob_runtime::worker::run(o).expect_err("nobody there");
    let waited = t0.elapsed();
    match &err {
        WorkerError::Unreachable {
            url: asked,
            seconds,
            ..
        } => {
            assert_eq!(asked, &format!("{url}/v1/job"));
            assert!((seconds - 0.6).abs() < 1e-9, "{seconds}");
        }
        other => panic!("not Unreachable: {other:?}"),
    }
    assert!(
        waited >= Duration::from_millis(600) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    assert!(
        err.to_string().starts_with(&format!(
            "cannot reach the coordinator at {url}/v1/job for 0.6 s"
        )),
        "{err}"
    );
}

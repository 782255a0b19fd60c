//! `exchange: s3` and the ledger against a real SeaweedFS server: slices read from S3, three worker processes
//! exchanging the rechunk's pieces through the job's scratch prefix, outputs published to S3 and equal to a
//! local run (zarr-python reads them); a coordinator killed (-9, with its workers) in the middle of the rechunk
//! and started again with the same `--job-id` does not run again the tasks its ledger saved; a worker killed
//! after shipping its pieces has them read back, not recomputed; a damaged exchange object is rebuilt, never
//! used.

mod common;
use common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arrayjob_testenv::{S3Endpoint, S3Server};

const BUCKET: &str = "exchange";
const SLICES: usize = 48;
const TOKEN: &str = "exchange-test-token";
/// 12 loads (4 slices each) x 64 merge groups (row bands of 4 of the 256 x 256 slices).
const LOADS: u64 = 12;
const GROUPS: u64 = 64;

fn server() -> &'static S3Endpoint {
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            let server = S3Server::start().unwrap_or_else(|e| panic!("start SeaweedFS: {e}"));
            let s3 = server.endpoint();
            s3_create_bucket(s3, BUCKET);
            for i in 0..SLICES {
                s3_put(
                    s3,
                    BUCKET,
                    &format!("slices/{i:03}.png"),
                    &slice_png(i, 256),
                );
            }
            server
        })
        .endpoint()
}

/// The job: named `name`, with the given `exchange`; leases of 5 s so a killed coordinator's expire soon. The
/// kill tests leave the reductions out: their combine chains would end at a time the test cannot pick.
fn manifest(name: &str, exchange: &str) -> String {
    job(name, exchange, true)
}

fn job(name: &str, exchange: &str, reductions: bool) -> String {
    let s3 = server();
    let text = format!(
        "apiVersion: arrayjob.dev/v1alpha1\nkind: ArrayJob\nmetadata: {{name: {name}}}\nspec:\n  exchange: \
         {exchange}\n  storage: {{s3: {{bucket: {BUCKET}, endpoint: \"{}\", region: {}, forcePathStyle: true, \
         leaseSeconds: 5}}}}\n  source: {{s3: {{keys: \"slices/{{index:03}}.png\", stop: {SLICES}}}, \
         slicesPerChunk: 4}}\n  stages:\n  \
         - {{name: mean, input: source, reduce: {{op: mean, axes: [0]}}, output: {{zarr: mean.zarr, image: mean.png}}}}\n  \
         - {{name: brightness, input: source, reduce: {{op: mean, axes: [1, 2]}}, output: {{csv: brightness.csv}}}}\n  \
         - {{name: series, input: source, rechunk: {{chunks: [-1, 4, 4]}}}}\n  \
         - {{name: power, input: series, fft: {{axis: 0, power: true, dtype: float32}}, output: {{zarr: power.zarr, \
         plot: {{file: power.png, pixels: [[0, 0], [128, 128]]}}}}}}\n",
        s3.endpoint, s3.region
    );
    if reductions {
        return text;
    }
    text.lines()
        .filter(|l| !l.contains("reduce:"))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn objects(prefix: &str) -> BTreeMap<String, Vec<u8>> {
    s3_objects(server(), BUCKET, prefix).expect("list the objects")
}

/// The reference: the job on one process into a local directory (without `summary.json`).
fn local_outputs(dir: &Path, manifest: &str) -> BTreeMap<String, Vec<u8>> {
    let m = write(dir, "local.yaml", manifest);
    let out = dir.join("local");
    let (ok, _, err) = arrayjob_aws(
        dir,
        &["run", &m, "--out", &out.display().to_string()],
        &s3_credentials(server()),
    );
    assert!(ok, "local run failed: {err}");
    let mut files = files_under(&out);
    files.remove("summary.json");
    files
}

/// A distributed run into `s3://BUCKET/{out}/` with 3 one-thread workers, coordinator on `port`.
fn start_run(dir: &Path, manifest: &str, out: &str, port: u16, extra: &[&str]) -> Child {
    let m = write(dir, "job.yaml", manifest);
    let empty = write(dir, "empty-aws-file", "");
    Command::new(env!("CARGO_BIN_EXE_arrayjob"))
        .args(["run", &m, "--out", &format!("s3://{BUCKET}/{out}")])
        .args([
            "--workers",
            "3",
            "--worker-threads",
            "1",
            "--worker-timeout",
            "2",
        ])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .env("ARRAYJOB_QUIET", "true")
        .env("ARRAYJOB_TOKEN", TOKEN)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env("AWS_CONFIG_FILE", &empty)
        .env("AWS_SHARED_CREDENTIALS_FILE", &empty)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(s3_credentials(server()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start arrayjob")
}

fn finish(child: Child) -> (bool, String) {
    let o = child.wait_with_output().expect("wait");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

/// Tasks done of stage `name` in a progress snapshot.
fn done(p: &serde_json::Value, name: &str) -> u64 {
    p["stages"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name))
        .and_then(|s| s["tasksDone"].as_u64())
        .unwrap_or(0)
}

/// Polls the progress until `when` holds; panics when the run ends first.
fn wait_for(
    port: u16,
    child: &mut Child,
    when: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        assert!(
            child.try_wait().expect("poll").is_none(),
            "the run ended before the point the test waits for"
        );
        if let Some(p) = progress(port, TOKEN)
            && when(&p)
        {
            return p;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("the run never reached the point the test waits for");
}

fn signal(pids: &[i32], sig: nix::sys::signal::Signal) {
    for &pid in pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

fn kill9(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// The published outputs under `out/`, checked equal to `local` (the distributed run's own reports aside);
/// returns `workers.json`.
fn assert_published_equal(out: &str, local: &BTreeMap<String, Vec<u8>>) -> serde_json::Value {
    let mut remote = objects(&format!("{out}/"));
    assert!(remote.remove("summary.json").is_some(), "no summary.json");
    let workers: serde_json::Value =
        serde_json::from_slice(&remote.remove("workers.json").expect("workers.json"))
            .expect("json");
    remote.remove("timeline.html");
    remote.remove("timeline.png");
    assert_eq!(
        remote.keys().collect::<Vec<_>>(),
        local.keys().collect::<Vec<_>>()
    );
    for (k, v) in local {
        assert!(remote[k] == *v, "{k} differs from the local run's file");
    }
    workers
}

/// What the ledger of run `job_id` of job `job` says: (tasks done, live objects: name -> keys).
fn read_ledger(job: &str, job_id: &str) -> (BTreeSet<u64>, BTreeMap<String, usize>) {
    let segs = objects(&format!("scratch/{job}/{job_id}/ledger/seg-"));
    assert!(!segs.is_empty(), "no ledger segment was written");
    let mut done = BTreeSet::new();
    let mut live = BTreeMap::new();
    for body in segs.values() {
        let seg: serde_json::Value = serde_json::from_slice(body).expect("segment JSON");
        for t in seg["done"].as_array().expect("done") {
            done.insert(t.as_u64().expect("task id"));
        }
        for o in seg["stored"].as_array().expect("stored") {
            let keys = o["keys"].as_array().expect("keys").len();
            live.insert(o["object"].as_str().expect("object").to_owned(), keys);
        }
        for o in seg["deleted"].as_array().expect("deleted") {
            live.remove(o.as_str().expect("object"));
        }
    }
    (done, live)
}

#[test]
fn three_workers_exchanging_through_s3_write_the_local_runs_bytes_and_leave_no_scratch() {
    let _serial = serial();
    let d = tempfile::tempdir().expect("tmp");
    let local = local_outputs(d.path(), &manifest("swap", "direct"));
    let child = start_run(d.path(), &manifest("swap", "s3"), "swap", free_port(), &[]);
    let (ok, err) = finish(child);
    assert!(ok, "run failed: {err}");
    let workers = assert_published_equal("swap", &local);
    let store = &workers["store"];
    assert_eq!(store["shippedKeys"], LOADS * GROUPS, "{store}");
    // Pieces went through S3, not from worker to worker (which still carry the reductions' partials).
    assert_eq!(workers["bytesMovedEarly"], 0, "{workers}");
    let got: u64 = workers["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| w["s3"]["bytesGot"].as_u64().expect("bytesGot"))
        .sum();
    assert!(
        got >= store["shippedBytes"].as_u64().expect("shippedBytes"),
        "the merges did not read the pieces from S3: {workers}"
    );
    assert!(
        objects("scratch/swap/").is_empty(),
        "the run's scratch (exchange objects) was not removed"
    );

    let mut py = Command::new(python());
    py.arg(repo_root().join("tests/oracle/zarr_s3_equal.py"))
        .args([
            &server().endpoint,
            BUCKET,
            "swap",
            &d.path().join("local").display().to_string(),
        ])
        .args(["mean.zarr", "power.zarr"])
        .envs(s3_credentials(server()));
    let o = py.output().expect("run python");
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "zarr-python over S3:\n{text}");
    assert_eq!(text.matches(" equal").count(), 2, "{text}");
}

/// Keys stored in the exchange according to the ledger of run `job_id` of `job` (deleted objects included).
fn ledger_stored_keys(job: &str, job_id: &str) -> u64 {
    objects(&format!("scratch/{job}/{job_id}/ledger/seg-"))
        .values()
        .filter_map(|body| serde_json::from_slice::<serde_json::Value>(body).ok())
        .flat_map(|seg| seg["stored"].as_array().cloned().unwrap_or_default())
        .map(|o| o["keys"].as_array().map_or(0, Vec::len) as u64)
        .sum()
}

/// Starts a resumable run (without reductions) and kills its coordinator and workers (-9) in the middle of the
/// rechunk: the loads done, every piece stored in the exchange and the ledger saying so, at least `merges` merges
/// done and not all; returns the tasks the ledger saved and its live objects.
fn kill_mid_rechunk(
    dir: &Path,
    job: &str,
    merges: u64,
) -> (BTreeSet<u64>, BTreeMap<String, usize>) {
    let port = free_port();
    let manifest = self::job(job, "s3", false);
    let mut child = start_run(dir, &manifest, job, port, &["--job-id", "run-1"]);
    wait_for(port, &mut child, |p| {
        p["store"]["shippedKeys"].as_u64() == Some(LOADS * GROUPS)
            && (merges..GROUPS - 2).contains(&done(p, "series"))
    });
    // Freeze the workers, let the coordinator's ledger catch up with what it knows, then kill everything.
    let workers = children_of(child.id());
    for &w in &workers {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(w),
            nix::sys::signal::Signal::SIGSTOP,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while ledger_stored_keys(job, "run-1") < LOADS * GROUPS {
        assert!(
            Instant::now() < deadline,
            "the ledger never recorded every piece"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    kill9(child.id() as i32);
    for w in workers {
        kill9(w);
    }
    let _ = finish(child);
    let (saved, live) = read_ledger(job, "run-1");
    assert!(
        saved.len() as u64 >= LOADS + merges,
        "the ledger saved {} tasks",
        saved.len()
    );

    (saved, live)
}

#[test]
fn a_coordinator_killed_mid_rechunk_resumes_without_running_the_saved_tasks_again() {
    let _serial = serial();
    let d = tempfile::tempdir().expect("tmp");
    let local = local_outputs(d.path(), &job("resume", "direct", false));
    let (saved, _) = kill_mid_rechunk(d.path(), "resume", 2);

    let t0 = Instant::now();
    let child = start_run(
        d.path(),
        &job("resume", "s3", false),
        "resume",
        free_port(),
        &["--job-id", "run-1"],
    );
    let (ok, err) = finish(child);
    assert!(ok, "the resumed run failed: {err}");
    assert!(
        err.contains("resuming the job from its ledger"),
        "no resume was logged: {err}"
    );
    let workers = assert_published_equal("resume", &local);
    let store = &workers["store"];
    assert_eq!(store["restoredTasks"], saved.len() as u64, "{store}");
    assert_eq!(store["restoredReopened"], 0, "{store}");
    assert_eq!(workers["recomputed"], 0, "{workers}");
    // Every task ran exactly once across the two runs: the resumed one ran only what was not saved.
    let ran: u64 = workers["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| w["tasksDone"].as_u64().expect("tasksDone"))
        .sum();
    let summary: serde_json::Value =
        serde_json::from_slice(&objects("resume/summary.json")[""]).expect("summary");
    let loads_run = summary["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .find(|s| s["name"] == "source")
        .and_then(|s| s["tasksDone"].as_u64());
    assert_eq!(loads_run, Some(0), "loads ran again: {summary}");
    assert!(ran > 0, "nothing was left to run after the kill");
    // Every task ran once across the two runs (a speculative copy of a slow one runs twice).
    let tasks = workers["tasks"].as_u64().expect("tasks");
    let copies = workers["speculated"].as_u64().expect("speculated");
    let runs = ran + saved.len() as u64;
    assert!(
        (tasks..=tasks + copies).contains(&runs),
        "{runs} runs for {tasks} tasks: {workers}"
    );
    assert!(objects("scratch/resume/").is_empty(), "scratch left behind");
    assert!(t0.elapsed() < Duration::from_secs(60));
}

#[test]
fn a_damaged_exchange_object_is_rebuilt_from_lineage_and_never_used() {
    let _serial = serial();
    let d = tempfile::tempdir().expect("tmp");
    let local = local_outputs(d.path(), &job("damage", "direct", false));
    let (_, live) = kill_mid_rechunk(d.path(), "damage", 1);
    let (object, _) = live.iter().next().expect("a live exchange object");
    let body = &objects(object)[""];
    // Truncated and one byte flipped: both caught by the frames' lengths and checksums.
    let mut bad = body[..body.len() - 3].to_vec();
    bad[body.len() / 2] ^= 0x40;
    s3_put(server(), BUCKET, object, &bad);

    let child = start_run(
        d.path(),
        &job("damage", "s3", false),
        "damage",
        free_port(),
        &["--job-id", "run-1"],
    );
    let (ok, err) = finish(child);
    assert!(ok, "the resumed run failed: {err}");
    assert!(
        err.contains("inputs unreadable (object store or spill)"),
        "{err}"
    );
    let workers = assert_published_equal("damage", &local);
    assert!(
        workers["store"]["unreadable"].as_u64() >= Some(1),
        "{workers}"
    );
    assert!(workers["recomputed"].as_u64() >= Some(1), "{workers}");
}

#[test]
fn a_worker_lost_after_shipping_has_its_pieces_read_back_not_recomputed() {
    let _serial = serial();
    let d = tempfile::tempdir().expect("tmp");
    // Without reductions: their partials live on workers only, and the loss would rebuild them.
    let local = local_outputs(d.path(), &job("lose", "direct", false));
    let port = free_port();
    let mut child = start_run(d.path(), &job("lose", "s3", false), "lose", port, &[]);
    // In the first half of the merges (a quarter was sometimes over before a poll saw every piece shipped);
    // the victim is the worker that shipped the most pieces (it surely holds some that merges still read).
    let p = wait_for(port, &mut child, |p| {
        p["store"]["shippedKeys"].as_u64() == Some(LOADS * GROUPS) && done(p, "series") < GROUPS / 2
    });
    let busiest = p["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .max_by_key(|w| w["s3"]["objectsPut"].as_u64())
        .and_then(|w| w["address"].as_str())
        .and_then(|a| a.split_once(':'))
        .map(|(host, _)| format!("{host}:0"))
        .expect("a worker's address");
    let workers = children_of(child.id());
    assert_eq!(workers.len(), 3, "three local workers");
    let (victim, others): (Vec<i32>, Vec<i32>) = workers.iter().partition(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.split(|&b| b == 0).any(|arg| arg == busiest.as_bytes()))
    });
    assert_eq!(victim.len(), 1, "one local worker listens on {busiest}");
    // The others pause until the coordinator has handled the loss (it notices an exited child within
    // 200 ms, well inside their 2 s heartbeat timeout): else the last merges may all be done by then, and
    // nothing is left to read back.
    signal(&others, nix::sys::signal::Signal::SIGSTOP);
    kill9(victim[0]);
    let deadline = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < deadline
        && progress(port, TOKEN).is_none_or(|p| p["workersLost"].as_u64() != Some(1))
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    signal(&others, nix::sys::signal::Signal::SIGCONT);
    let (ok, err) = finish(child);
    assert!(ok, "run failed: {err}");
    let report = assert_published_equal("lose", &local);
    assert_eq!(report["workersLost"], 1, "{report}");
    assert_eq!(report["recomputed"], 0, "{report}");
    assert!(
        report["store"]["readBackAfterLoss"].as_u64() > Some(0),
        "{report}"
    );
}

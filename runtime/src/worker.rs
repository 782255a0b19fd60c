//! The worker process: joins a coordinator, builds the job's plan itself (and refuses to run when its plan
//! hash differs), runs the tasks it is sent on its threads, keeps what they make in its own chunk store
//! (spilling to local disk over its budget) until the coordinator releases it, and serves those chunks to
//! peers.
//!
//! Threads: `threads` compute threads run tasks (fetching remote inputs first, as one batch per holder); a
//! small tokio runtime serves peers and talks to the coordinator with two loops, one long-polling for work
//! (which is also the heartbeat) and one sending reports as soon as a task ends. It also copies the pieces
//! of the merges this worker gathers as soon as their holders have them ([`Command::Move`]): one batch in
//! flight per holder, while the loads go on.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use arrayjob_engine::array::Chunk;
use arrayjob_engine::data::{Data, DataKey};
use arrayjob_engine::exec::{ChunkSink, ExecError, JobProgress, KeepingIo, TaskRunner};
use arrayjob_engine::graph::{TaskGraph, TaskId};
use arrayjob_engine::job::Prepared;
use arrayjob_engine::output::sink::{BlockOutputs, Gather};
use arrayjob_engine::output::zarr::ArrayPlace;
use arrayjob_engine::s3::objects::{Bucket, S3Location};
use arrayjob_engine::schedule::WorkerId;
use arrayjob_engine::store::{ChunkStore, FileSpill, StoreError};
use arrayjob_engine::tracker::Attempt;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::auth::{AuthError, Guard, Token};
use crate::metrics::WorkerMetrics;
use crate::protocol::{
    self, Command, FetchRequest, InputLocation, JobDescription, RegisterRequest, RegisterResponse,
    Report, SyncRequest, SyncResponse,
};

/// How a worker is started (flags and environment variables of `arrayjob-worker`).
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The coordinator's URL (`http://host:port`).
    pub coordinator: String,
    /// The job token.
    pub token: Token,
    /// Where the data server listens (port 0: any free port).
    pub listen: SocketAddr,
    /// The `host:port` peers reach the data server at (default: the address it is bound to, or when it
    /// listens on every interface, the address it reaches the coordinator from; see [`advertised_address`]).
    pub advertise: Option<String>,
    /// Compute threads.
    pub threads: usize,
    /// Bytes kept in memory before spilling to `spill_dir`.
    pub memory_budget: usize,
    /// Where spill files go.
    pub spill_dir: PathBuf,
    /// Bytes spilled to `spill_dir` before the rest goes to the run's S3 scratch (when the job has one).
    pub spill_disk_limit: Option<u64>,
    /// Refuse to join a job whose plan hash is not this one (set by whoever starts workers for one job).
    pub expect_plan_hash: Option<String>,
    /// Who started this worker, when a coordinator did (`--workers N`): sent when it registers, so the
    /// coordinator knows which registered worker a process that exited was.
    pub launch_id: Option<String>,
    /// Fault injection for recovery tests (`ARRAYJOB_FAULT_ABORT_TASK`): abort the process when this task
    /// has run, before reporting it, as a crash in a kernel or an out-of-memory kill would.
    pub abort_on_task: Option<usize>,
}

/// What a worker did, returned when the job is over.
#[derive(Debug, Clone)]
pub struct WorkerOutcome {
    /// Its number in the job.
    pub worker: WorkerId,
    /// Tasks it ran to completion.
    pub tasks: u64,
}

/// A task to run, as the coordinator sent it.
#[derive(Debug)]
struct Assignment {
    task: TaskId,
    attempt: Attempt,
    inputs: Vec<InputLocation>,
}

/// Everything the worker's threads share.
struct Shared {
    id: WorkerId,
    job: Prepared,
    graph: TaskGraph,
    store: Arc<ChunkStore>,
    progress: JobProgress,
    sink: WorkerSink,
    queue: Mutex<VecDeque<Assignment>>,
    queued: Condvar,
    moves: Moves,
    reports: Mutex<Vec<Report>>,
    report_ready: tokio::sync::Notify,
    stop: AtomicBool,
    http: Http,
    tasks_done: AtomicU64,
    metrics: Arc<WorkerMetrics>,
    abort_on_task: Option<usize>,
    /// The job's scratch bucket (`exchange: s3` ships and reads pieces there), and uploads in flight.
    store_bucket: Option<Bucket>,
    uploads: Arc<tokio::sync::Semaphore>,
}

/// Uploads of [`Command::Ship`] in flight at once.
const SHIP_CONCURRENCY: usize = 8;

/// Keys being copied here from peers ahead of their merges ([`Command::Move`]): queued per peer, one batch in
/// flight per peer. A task reading one of them waits for it rather than fetching it a second time.
#[derive(Default)]
struct Moves {
    state: Mutex<MovesState>,
    arrived: Condvar,
}

#[derive(Default)]
struct MovesState {
    /// Per peer: its address and the keys not asked for yet, with their sizes.
    queued: BTreeMap<WorkerId, (String, VecDeque<(DataKey, u64)>)>,
    /// Peers with a batch in flight.
    busy: BTreeSet<WorkerId>,
    /// Keys queued or in flight.
    pending: HashSet<DataKey>,
}

/// Keys and bytes asked for in one request of a move (at least one key), so a batch in flight stays small
/// next to the worker's budget.
const MOVE_BATCH: usize = 64;
const MOVE_BATCH_BYTES: u64 = 64 << 20;

impl Moves {
    /// Queues `keys` from `from`; true when nothing is being copied from it (the caller starts a mover).
    fn queue(&self, from: WorkerId, address: String, keys: Vec<(DataKey, u64)>) -> bool {
        let mut st = lock(&self.state);
        st.pending.extend(keys.iter().map(|&(k, _)| k));
        st.queued
            .entry(from)
            .or_insert_with(|| (address, VecDeque::new()))
            .1
            .extend(keys);
        st.busy.insert(from)
    }

    /// The next batch from `from`, or None (and the peer no longer busy) when nothing is queued.
    fn next_batch(&self, from: WorkerId) -> Option<(String, Vec<DataKey>)> {
        let mut st = lock(&self.state);
        let Some((address, keys)) = st.queued.get_mut(&from).filter(|(_, k)| !k.is_empty()) else {
            st.queued.remove(&from);
            st.busy.remove(&from);
            return None;
        };
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(&(key, size)) = keys.front() {
            if !batch.is_empty() && (batch.len() == MOVE_BATCH || bytes + size > MOVE_BATCH_BYTES) {
                break;
            }
            batch.push(key);
            bytes += size;
            keys.pop_front();
        }
        Some((address.clone(), batch))
    }

    /// `keys` arrived (or will not): tasks waiting for them go on.
    fn settled(&self, keys: &[DataKey]) {
        let mut st = lock(&self.state);
        for k in keys {
            st.pending.remove(k);
        }
        self.arrived.notify_all();
    }

    /// Waits until none of `keys` is on its way here (or the worker stops).
    fn wait_for(&self, keys: &[DataKey], stop: &AtomicBool) {
        let mut st = lock(&self.state);
        while keys.iter().any(|k| st.pending.contains(k)) && !stop.load(Ordering::Relaxed) {
            st = self
                .arrived
                .wait_timeout(st, Duration::from_millis(200))
                .map_or_else(|e| e.into_inner().0, |(g, _)| g);
        }
    }
}

/// Copies what is queued from `from` into this worker's store, a batch at a time, and reports each batch.
/// A failed batch is only logged: its keys stay where they were, and a task reading them fetches them
/// itself (or finds their holder gone, as any fetch would).
async fn move_from(shared: Arc<Shared>, from: WorkerId) {
    while let Some((address, keys)) = shared.moves.next_batch(from) {
        let wanted: Vec<DataKey> = keys
            .iter()
            .copied()
            .filter(|&k| !shared.store.contains(k))
            .collect();
        let t0 = Instant::now();
        let got = if wanted.is_empty() {
            Ok((Vec::new(), 0))
        } else {
            fetch_keys(&shared.http.client, &shared.http.token, &address, &wanted).await
        };
        let stored = got.map_err(|e| e.to_string()).and_then(|(data, bytes)| {
            for (&key, d) in wanted.iter().zip(data) {
                shared
                    .store
                    .put(key, d, usize::MAX)
                    .map_err(|e| e.to_string())?;
            }
            Ok(bytes)
        });
        shared.moves.settled(&keys);
        match stored {
            Ok(bytes) => {
                shared.metrics.bytes_fetched.inc_by(bytes);
                push_report(
                    &shared,
                    Report::Moved {
                        from,
                        // Those a duplicate task wrote here meanwhile included: this worker holds them.
                        keys,
                        bytes,
                        seconds: t0.elapsed().as_secs_f64(),
                    },
                );
            }
            Err(e) => tracing::info!(
                "moving {} key(s) from worker {} at {address}: {e}",
                wanted.len(),
                from.0
            ),
        }
    }
}

/// The worker's HTTP client side: the coordinator's URL, the token, and a runtime handle to block on from
/// compute threads.
#[derive(Clone)]
struct Http {
    client: reqwest::Client,
    coordinator: String,
    token: Token,
    rt: tokio::runtime::Handle,
}

impl Http {
    /// Signs and sends a request; the answer comes back once the server proved it holds the job's token.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, AuthError> {
        crate::auth::send(request, &self.token).await
    }
}

/// Runs a worker until its job is over.
///
/// # Errors
/// When it cannot reach the coordinator, is refused by it (wrong token, another plan hash), or cannot build
/// the job's plan.
pub fn run(opts: WorkerOptions) -> anyhow::Result<WorkerOutcome> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("arrayjob-worker-io")
        .enable_all()
        .build()
        .context("cannot start the worker's I/O runtime")?;
    let http = Http {
        client: reqwest::Client::builder()
            .no_proxy()
            .build()
            .context("cannot build the HTTP client")?,
        coordinator: opts.coordinator.trim_end_matches('/').to_string(),
        token: opts.token.clone(),
        rt: rt.handle().clone(),
    };
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(opts.listen))
        .with_context(|| format!("cannot listen on {}", opts.listen))?;
    let bound = listener.local_addr()?;
    let desc: JobDescription = rt.block_on(fetch_job(&http))?;
    let address = rt.block_on(advertised_address(
        opts.advertise.as_deref(),
        bound,
        &http.coordinator,
    ))?;
    let job = prepare(&desc)?;
    let hash = job.plan.hash.to_string();
    if let Some(want) = &opts.expect_plan_hash
        && *want != desc.plan_hash
    {
        anyhow::bail!(
            "the coordinator at {} runs a job with plan hash {}, this worker was started for plan hash {want}",
            http.coordinator,
            desc.plan_hash
        );
    }
    let id = rt.block_on(register(
        &http,
        &RegisterRequest {
            address: address.clone(),
            cores: opts.threads.max(1),
            memory_budget: opts.memory_budget as u64,
            plan_hash: hash,
            version: env!("CARGO_PKG_VERSION").to_string(),
            launch_id: opts.launch_id.clone(),
        },
    ))?;
    tracing::info!(worker = id.0, %address, "joined the job");
    let spill = FileSpill::new(&opts.spill_dir)
        .with_context(|| format!("cannot create a spill file in {}", opts.spill_dir.display()))?;
    let spill = spill_backend(spill, &job, &desc, id, opts.spill_disk_limit)?;
    let graph = TaskGraph::build(&job.plan).map_err(|e| anyhow::anyhow!("task graph: {e}"))?;
    let sink = WorkerSink::open(&job, &desc, http.clone())?;
    let store_bucket = desc
        .scratch
        .as_deref()
        .map(|uri| -> anyhow::Result<Bucket> {
            let location = S3Location::parse("scratch", uri)?;
            Ok(arrayjob_engine::s3::bucket(
                job.manifest.spec.s3_storage(),
                &location.bucket,
            )?)
        })
        .transpose()?;
    let shared = Arc::new(Shared {
        id,
        progress: JobProgress::new(&job.plan),
        job,
        graph,
        store: Arc::new(ChunkStore::new(opts.memory_budget, spill)),
        sink,
        queue: Mutex::new(VecDeque::new()),
        queued: Condvar::new(),
        moves: Moves::default(),
        reports: Mutex::new(Vec::new()),
        report_ready: tokio::sync::Notify::new(),
        stop: AtomicBool::new(false),
        http,
        tasks_done: AtomicU64::new(0),
        metrics: Arc::new(WorkerMetrics::new()),
        abort_on_task: opts.abort_on_task,
        store_bucket,
        uploads: Arc::new(tokio::sync::Semaphore::new(SHIP_CONCURRENCY)),
    });
    // Peers sign their requests for the address they were given: a request signed for another worker is
    // not taken here.
    let guard = Guard::new(opts.token.clone()).addressed_as(&address);
    let (damaged_tx, damaged_rx) = tokio::sync::mpsc::unbounded_channel();
    let data = DataServer {
        worker: id,
        store: shared.store.clone(),
        metrics: shared.metrics.clone(),
        refused: guard.refused().clone(),
        damaged: Some(damaged_tx),
    };
    rt.spawn(report_damaged(shared.clone(), damaged_rx));
    let server = rt.spawn(serve_data(listener, data, guard));
    let heartbeat = Duration::from_millis(desc.heartbeat_ms.max(50));
    let loops = rt.spawn(talk(shared.clone(), heartbeat));
    std::thread::scope(|s| {
        let (written_tx, written_rx) = std::sync::mpsc::channel::<(Report, Vec<u64>)>();
        for t in 0..opts.threads.max(1) {
            let shared = shared.clone();
            let tx = written_tx.clone();
            std::thread::Builder::new()
                .name(format!("arrayjob-task-{t}"))
                .spawn_scoped(s, move || compute(&shared, t as u32, &tx))
                .map(|_| ())
                .unwrap_or_else(|e| tracing::error!("cannot start a compute thread: {e}"));
        }
        drop(written_tx);
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("arrayjob-reports".into())
            .spawn_scoped(s, move || report_when_written(&shared, &written_rx))
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!("cannot start the report thread: {e}"));
    });
    let ended = rt
        .block_on(loops)
        .context("the coordinator loop panicked")?;
    server.abort();
    ended?;
    Ok(WorkerOutcome {
        worker: id,
        tasks: shared.tasks_done.load(Ordering::Relaxed),
    })
}

/// Asks the coordinator for the job, retrying while it is not up yet (a worker may start first).
async fn fetch_job(http: &Http) -> anyhow::Result<JobDescription> {
    let url = format!("{}/v1/job", http.coordinator);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match http.send(http.client.get(&url)).await {
            Ok(r) if r.status().is_success() => {
                return r.json().await.context("the coordinator's job description");
            }
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                anyhow::bail!("the coordinator at {url} refused this worker ({status}): {text}");
            }
            Err(e @ AuthError::Send { .. }) if Instant::now() > deadline => {
                anyhow::bail!("cannot reach the coordinator at {url} for 30 s: {e}")
            }
            Err(AuthError::Send { .. }) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => anyhow::bail!("the coordinator at {url}: {e}"),
        }
    }
}

/// The address peers reach this worker at: `advertise` when given; else the address it is bound to; else,
/// when it listens on every interface (`0.0.0.0` or `::`, which nobody can dial), the local address of a
/// connection to the coordinator (the interface that routes to the job's network, e.g. a pod's IP) with the
/// bound port.
///
/// # Errors
/// When it listens on every interface and that address cannot be found, naming `--advertise`.
pub async fn advertised_address(
    advertise: Option<&str>,
    bound: SocketAddr,
    coordinator: &str,
) -> anyhow::Result<String> {
    if let Some(a) = advertise {
        return Ok(a.to_owned());
    }
    if !bound.ip().is_unspecified() {
        return Ok(bound.to_string());
    }
    let hint = "give the address peers reach this worker at with --advertise (ARRAYJOB_ADVERTISE)";
    let url = reqwest::Url::parse(coordinator)
        .with_context(|| format!("the coordinator's URL {coordinator}"))?;
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        anyhow::bail!("the coordinator's URL {coordinator} has no host and port; {hint}");
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .with_context(|| {
            format!(
                "this worker listens on {bound} (every interface) and cannot reach the coordinator at                  {coordinator} to find its own address; {hint}"
            )
        })?;
    let local = stream.local_addr()?.ip();
    if local.is_unspecified() {
        anyhow::bail!("this worker listens on {bound} and has no address of its own; {hint}");
    }
    let address = SocketAddr::new(local, bound.port()).to_string();
    if local.is_loopback() {
        // Right when every worker runs on this host; peers elsewhere would dial themselves.
        tracing::warn!(
            %address,
            "this worker reaches the coordinator over loopback, so it advertises a loopback address: only \
             workers on this host can fetch from it; {hint} if others run elsewhere"
        );
    }
    Ok(address)
}

/// Builds the plan from the job description, as the coordinator did.
fn prepare(desc: &JobDescription) -> anyhow::Result<Prepared> {
    let m = arrayjob_engine::validate::parse_manifest(&desc.manifest, "job manifest")?;
    let order = arrayjob_engine::validate::validate(&m.spec)
        .map_err(|p| anyhow::anyhow!("the job's manifest is invalid here: {p:?}"))?;
    Ok(arrayjob_engine::job::prepare(
        m,
        &order,
        std::path::Path::new(&desc.base_dir),
    )?)
}

async fn register(http: &Http, req: &RegisterRequest) -> anyhow::Result<WorkerId> {
    let url = format!("{}/v1/register", http.coordinator);
    let r = http.send(http.client.post(&url).json(req)).await?;
    if !r.status().is_success() {
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        anyhow::bail!("the coordinator at {url} refused this worker ({status}): {text}");
    }
    Ok(r.json::<RegisterResponse>().await?.worker)
}

/// Talks to the coordinator until the job is over: a long-polling loop (the heartbeat, and how work arrives
/// when nothing is reported) and a loop sending reports as soon as there are some.
async fn talk(shared: Arc<Shared>, heartbeat: Duration) -> anyhow::Result<()> {
    let poller = tokio::spawn(sync_loop(shared.clone(), false, heartbeat));
    let reporter = tokio::spawn(sync_loop(shared.clone(), true, heartbeat));
    let (a, b) = tokio::join!(poller, reporter);
    shared.stop.store(true, Ordering::Relaxed);
    shared.queued.notify_all();
    a??;
    b??;
    Ok(())
}

async fn sync_loop(shared: Arc<Shared>, reporter: bool, heartbeat: Duration) -> anyhow::Result<()> {
    let mut failures = 0u32;
    while !shared.stop.load(Ordering::Relaxed) {
        if reporter {
            let _ = tokio::time::timeout(heartbeat, shared.report_ready.notified()).await;
        }
        let reports = std::mem::take(&mut *lock(&shared.reports));
        if reporter && reports.is_empty() {
            continue;
        }
        // Only the poller takes commands: one ordered stream (a release must not overtake the run that
        // writes the key again).
        let req = sync_request(
            &shared,
            reports.clone(),
            if reporter {
                0
            } else {
                heartbeat.as_millis() as u64
            },
            !reporter,
        );
        match send_sync(&shared.http, &req).await {
            Ok(resp) => {
                failures = 0;
                if resp.finished {
                    shared.stop.store(true, Ordering::Relaxed);
                    shared.queued.notify_all();
                    shared.report_ready.notify_one();
                    return Ok(());
                }
                obey(&shared, resp.commands);
            }
            Err(SyncError::Refused(msg)) => {
                shared.stop.store(true, Ordering::Relaxed);
                shared.queued.notify_all();
                shared.report_ready.notify_one();
                anyhow::bail!("the coordinator dropped this worker: {msg}");
            }
            Err(SyncError::Unreachable(e)) => {
                // Put the reports back; they go with the next attempt.
                lock(&shared.reports).splice(0..0, reports);
                failures += 1;
                if failures > 50 {
                    shared.stop.store(true, Ordering::Relaxed);
                    shared.queued.notify_all();
                    shared.report_ready.notify_one();
                    anyhow::bail!("lost the coordinator at {}: {e}", shared.http.coordinator);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Ok(())
}

enum SyncError {
    Refused(String),
    Unreachable(String),
}

fn sync_request(
    shared: &Shared,
    reports: Vec<Report>,
    wait_ms: u64,
    take_commands: bool,
) -> SyncRequest {
    SyncRequest {
        take_commands,
        worker: shared.id,
        reports,
        store: shared.store.stats(),
        resident_bytes: shared.store.resident_bytes() as u64,
        s3: arrayjob_engine::s3::objects::counters(),
        stages: shared.progress.snapshot(),
        load_end_seconds: shared.progress.load_end_seconds(),
        wait_ms,
    }
}

async fn send_sync(http: &Http, req: &SyncRequest) -> Result<SyncResponse, SyncError> {
    let r = http
        .send(
            http.client
                .post(format!("{}/v1/sync", http.coordinator))
                .json(req),
        )
        .await
        .map_err(|e| SyncError::Unreachable(e.to_string()))?;
    let status = r.status();
    if status.is_client_error() {
        return Err(SyncError::Refused(format!(
            "{status}: {}",
            r.text().await.unwrap_or_default()
        )));
    }
    if !status.is_success() {
        return Err(SyncError::Unreachable(status.to_string()));
    }
    r.json()
        .await
        .map_err(|e| SyncError::Unreachable(e.to_string()))
}

/// Carries out the coordinator's commands: tasks are queued for the compute threads, releases free the
/// store, probes time a link in the background.
fn obey(shared: &Arc<Shared>, commands: Vec<Command>) {
    for c in commands {
        match c {
            Command::Run {
                task,
                attempt,
                inputs,
            } => {
                lock(&shared.queue).push_back(Assignment {
                    task,
                    attempt,
                    inputs,
                });
                shared.queued.notify_one();
            }
            Command::Move {
                from,
                address,
                keys,
            } => {
                if shared.moves.queue(from, address, keys) {
                    tokio::spawn(move_from(shared.clone(), from));
                }
            }
            Command::Ship { object, keys } => {
                tokio::spawn(ship(shared.clone(), object, keys));
            }
            Command::Release { keys } => {
                for key in keys {
                    if let Err(e) = shared.store.remove(key) {
                        tracing::warn!("releasing {key}: {e}");
                    }
                }
            }
            Command::Probe {
                from,
                address,
                bytes,
            } => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let t0 = Instant::now();
                    let url = format!("http://{address}/v1/probe?bytes={bytes}");
                    let got = shared.http.send(shared.http.client.get(url)).await;
                    if let Ok(r) = got
                        && r.status().is_success()
                        && let Ok(body) = r.bytes().await
                    {
                        push_report(
                            &shared,
                            Report::Transfer {
                                from,
                                bytes: body.len() as u64,
                                seconds: t0.elapsed().as_secs_f64(),
                            },
                        );
                    }
                });
            }
        }
    }
}

/// Uploads `keys` from the store as one object at `object` (their frames in order, as a fetch answer) and
/// reports it; a failed upload (after the S3 retries and outage budget) fails the job.
async fn ship(shared: Arc<Shared>, object: String, keys: Vec<DataKey>) {
    let Ok(_permit) = shared.uploads.clone().acquire_owned().await else {
        return;
    };
    let s = shared.clone();
    let report = tokio::task::spawn_blocking(move || ship_now(&s, &object, &keys))
        .await
        .unwrap_or_else(|e| Report::ShipFailed {
            error: format!("the upload task stopped: {e}"),
        });
    push_report(&shared, report);
}

fn ship_now(shared: &Shared, object: &str, keys: &[DataKey]) -> Report {
    let t0 = Instant::now();
    let Some(bucket) = shared.store_bucket.clone() else {
        return Report::ShipFailed {
            error: "exchange through S3 without a scratch bucket".into(),
        };
    };
    let mut body = Vec::new();
    let mut sized = Vec::with_capacity(keys.len());
    for &key in keys {
        match shared.store.get(key) {
            Ok(d) => {
                sized.push((key, d.nbytes() as u64));
                for part in protocol::answer_parts(&d) {
                    body.extend_from_slice(&part);
                }
            }
            Err(e) => {
                return Report::ShipFailed {
                    error: format!("worker {} cannot ship {key}: {e}", shared.id.0),
                };
            }
        }
    }
    let crc32c = crc32c::crc32c(&body);
    let bytes = body.len() as u64;
    let key = object.to_owned();
    let put = arrayjob_engine::s3::objects::block(async move {
        bucket.put(&key, bytes::Bytes::from(body)).await
    });
    match put {
        Ok(()) => Report::Shipped {
            object: object.to_owned(),
            keys: sized,
            bytes,
            crc32c,
            seconds: t0.elapsed().as_secs_f64(),
        },
        Err(e) => Report::ShipFailed {
            error: e.to_string(),
        },
    }
}

/// Reports the keys the data server found damaged in this worker's spill: dropped here, rebuilt elsewhere.
async fn report_damaged(
    shared: Arc<Shared>,
    mut keys: tokio::sync::mpsc::UnboundedReceiver<DataKey>,
) {
    while let Some(key) = keys.recv().await {
        forget_damaged(&shared, key);
        push_report(&shared, Report::Damaged { keys: vec![key] });
    }
}

/// Drops a damaged key from the store (its spilled frame included).
fn forget_damaged(shared: &Shared, key: DataKey) {
    tracing::warn!(worker = shared.id.0, %key, "a spilled chunk came back damaged; it is rebuilt");
    if let Err(e) = shared.store.remove(key) {
        tracing::warn!("dropping damaged {key}: {e}");
    }
}

fn push_report(shared: &Shared, r: Report) {
    lock(&shared.reports).push(r);
    shared.report_ready.notify_one();
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends each finished task's report once the output files it submitted are written (Zarr shards are
/// written by a background thread while the compute threads go on): a task reported done has its outputs on
/// disk.
fn report_when_written(shared: &Shared, done: &std::sync::mpsc::Receiver<(Report, Vec<u64>)>) {
    for (report, marks) in done {
        let report = match (shared.sink.wait_written(&marks), report) {
            (Ok(()), r) => r,
            (Err(e), Report::Done { task, attempt, .. }) => Report::Failed {
                task,
                attempt,
                input_unavailable: false,
                error: e.to_string(),
                unreadable: Vec::new(),
            },
            (Err(_), r) => r,
        };
        push_report(shared, report);
    }
}

/// A compute thread: runs queued tasks until the job is over.
fn compute(shared: &Shared, thread: u32, written: &std::sync::mpsc::Sender<(Report, Vec<u64>)>) {
    loop {
        let next = {
            let mut q = lock(&shared.queue);
            loop {
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                if let Some(a) = q.pop_front() {
                    break a;
                }
                q = shared
                    .queued
                    .wait_timeout(q, Duration::from_millis(200))
                    .map_or_else(|e| e.into_inner().0, |(g, _)| g);
            }
        };
        let report = run_assignment(shared, next, thread);
        if matches!(report, Report::Done { .. }) {
            if let Err(e) = written.send((report, shared.sink.write_marks())) {
                push_report(shared, e.0.0);
            }
        } else {
            push_report(shared, report);
        }
    }
}

/// Fetches the inputs held elsewhere, runs the task and says how it went.
fn run_assignment(shared: &Shared, a: Assignment, thread: u32) -> Report {
    let t0 = Instant::now();
    let kind = shared.graph.task(a.task).kind;
    let fetched = match fetch_inputs(shared, &a.inputs) {
        Ok(f) => f,
        Err(f) => {
            return Report::Failed {
                task: a.task,
                attempt: a.attempt,
                input_unavailable: f.unreadable.is_empty() || !f.fatal,
                error: f.error,
                unreadable: f.unreadable,
            };
        }
    };
    let io = KeepingIo::new(&shared.store, fetched);
    let runner = TaskRunner {
        plan: &shared.job.plan,
        source: shared.job.source.as_ref(),
        sink: &shared.sink,
        progress: &shared.progress,
        store: &shared.store,
        cancel: &shared.stop,
    };
    let result = runner.run(kind, &io);
    if shared.abort_on_task == Some(a.task.0) {
        // As a kernel crash or an out-of-memory kill would, after the work and before the report.
        tracing::error!(task = a.task.0, "ARRAYJOB_FAULT_ABORT_TASK: aborting");
        std::process::abort();
    }
    match result {
        Ok(()) => {
            shared.tasks_done.fetch_add(1, Ordering::Relaxed);
            shared.metrics.tasks_done.inc();
            Report::Done {
                task: a.task,
                attempt: a.attempt,
                outputs: io.into_outputs(),
                seconds: t0.elapsed().as_secs_f64(),
                thread,
            }
        }
        Err(ExecError::Store(StoreError::Damaged { key, message })) => {
            forget_damaged(shared, key);
            Report::Failed {
                task: a.task,
                attempt: a.attempt,
                input_unavailable: true,
                error: format!(
                    "{} {}: {key} came back damaged: {message}",
                    kind.name(),
                    a.task.0
                ),
                unreadable: vec![key],
            }
        }
        Err(e) => Report::Failed {
            task: a.task,
            attempt: a.attempt,
            // A local input released meanwhile: a copy of this task finished elsewhere first.
            input_unavailable: matches!(e, ExecError::Store(StoreError::Missing(_))),
            error: format!("{} {}: {e}", kind.name(), a.task.0),
            unreadable: Vec::new(),
        },
    }
}

/// Why a task's inputs could not be fetched.
struct FetchFailure {
    error: String,
    /// Inputs whose object in the store is damaged or gone (rebuilt by the coordinator).
    unreadable: Vec<DataKey>,
    /// The store could not be reached at all (beyond the outage budget): the job fails.
    fatal: bool,
}

impl From<String> for FetchFailure {
    fn from(error: String) -> Self {
        FetchFailure {
            error,
            unreadable: Vec::new(),
            fatal: false,
        }
    }
}

/// Fetches the inputs not held here: from the job's object store, one GET per object; from peers, one
/// request per holder (each transfer reported).
fn fetch_inputs(
    shared: &Shared,
    inputs: &[InputLocation],
) -> Result<HashMap<DataKey, Arc<Data>>, FetchFailure> {
    let (stored, inputs): (Vec<&InputLocation>, Vec<&InputLocation>) =
        inputs.iter().partition(|i| i.worker == WorkerId::STORE);
    let mut out = read_stored(shared, &stored)?;
    out.extend(fetch_from_peers(shared, &inputs)?);
    Ok(out)
}

/// Reads inputs held by the job's object store: each object once, its frames decoded and checked; an object
/// missing or damaged names the keys it should have held.
fn read_stored(
    shared: &Shared,
    stored: &[&InputLocation],
) -> Result<HashMap<DataKey, Arc<Data>>, FetchFailure> {
    let mut out = HashMap::new();
    if stored.is_empty() {
        return Ok(out);
    }
    let Some(bucket) = shared.store_bucket.clone() else {
        return Err("inputs in the object store but no scratch bucket"
            .to_string()
            .into());
    };
    let mut by_object: BTreeMap<&str, Vec<&InputLocation>> = BTreeMap::new();
    for i in stored {
        by_object.entry(i.address.as_str()).or_default().push(i);
    }
    for (object, wanted) in by_object {
        let keys: Vec<DataKey> = wanted.iter().map(|i| i.key).collect();
        let (b, k) = (bucket.clone(), object.to_owned());
        let got = arrayjob_engine::s3::objects::block(async move { b.get(&k).await });
        let unreadable = |error: String| FetchFailure {
            error: format!("s3://{}/{object}: {error}", bucket.name()),
            unreadable: keys.clone(),
            fatal: false,
        };
        let body = match got {
            Ok(Some((body, _))) => body,
            Ok(None) => return Err(unreadable("not found".into())),
            Err(e) => {
                return Err(FetchFailure {
                    error: e.to_string(),
                    unreadable: keys.clone(),
                    fatal: true,
                });
            }
        };
        let mut reader = protocol::FrameReader::default();
        let decoded = match reader.push(&body) {
            Ok(()) => reader.finish(),
            Err(e) => Err(e),
        };
        let mut frames: Vec<Option<Data>> = decoded
            .map_err(|e| unreadable(format!("damaged: {e}")))?
            .into_iter()
            .map(Some)
            .collect();
        shared.metrics.bytes_fetched.inc_by(body.len() as u64);
        for i in wanted {
            let d = i
                .position
                .and_then(|p| frames.get_mut(p)?.take())
                .ok_or_else(|| unreadable(format!("has no frame {:?}", i.position)))?;
            out.insert(i.key, Arc::new(d));
        }
    }
    Ok(out)
}

/// Fetches the inputs held by other workers, one request per holder; reports each transfer.
fn fetch_from_peers(
    shared: &Shared,
    inputs: &[&InputLocation],
) -> Result<HashMap<DataKey, Arc<Data>>, String> {
    let remote: Vec<&InputLocation> = inputs
        .iter()
        .copied()
        .filter(|i| i.worker != shared.id)
        .collect();
    // Keys on their way here are waited for, then read from the store like local ones.
    let keys: Vec<DataKey> = remote.iter().map(|i| i.key).collect();
    shared.moves.wait_for(&keys, &shared.stop);
    let mut by_holder: BTreeMap<WorkerId, (String, Vec<DataKey>)> = BTreeMap::new();
    for i in remote.into_iter().filter(|i| !shared.store.contains(i.key)) {
        by_holder
            .entry(i.worker)
            .or_insert_with(|| (i.address.clone(), Vec::new()))
            .1
            .push(i.key);
    }
    let mut out = HashMap::new();
    for (holder, (address, keys)) in by_holder {
        let t0 = Instant::now();
        let (data, bytes) = shared
            .http
            .rt
            .block_on(fetch_keys(
                &shared.http.client,
                &shared.http.token,
                &address,
                &keys,
            ))
            .map_err(|e| {
                format!(
                    "fetching {} input(s) from worker {} at {address}: {e}",
                    keys.len(),
                    holder.0
                )
            })?;
        for (key, d) in keys.iter().zip(data) {
            out.insert(*key, Arc::new(d));
        }
        shared.metrics.bytes_fetched.inc_by(bytes);
        push_report(
            shared,
            Report::Transfer {
                from: holder,
                bytes,
                seconds: t0.elapsed().as_secs_f64(),
            },
        );
    }
    Ok(out)
}

/// The worker's spill: its disk, then (beyond `disk_limit`, when the job has a scratch prefix on S3)
/// `{scratch}spill/w{id}/`.
fn spill_backend(
    disk: FileSpill,
    job: &Prepared,
    desc: &JobDescription,
    id: WorkerId,
    disk_limit: Option<u64>,
) -> anyhow::Result<Box<dyn arrayjob_engine::store::SpillBackend>> {
    let (Some(uri), Some(limit)) = (&desc.scratch, disk_limit) else {
        return Ok(Box::new(disk));
    };
    let location = S3Location::parse("scratch", uri)?;
    let storage = job.manifest.spec.s3_storage();
    let scratch = arrayjob_engine::s3::spill::Scratch {
        bucket: arrayjob_engine::s3::bucket(storage, &location.bucket)?,
        location,
    };
    let mut tier = scratch.spill_tier(&format!("w{}", id.0), limit);
    // Fault injection for the recovery test of a damaged spilled object.
    tier.damage_first = std::env::var_os("ARRAYJOB_FAULT_DAMAGE_SPILL").is_some();
    Ok(Box::new(arrayjob_engine::s3::spill::TieredSpill::new(
        disk, tier,
    )))
}

/// Where the coordinator created the job's Zarr arrays: the shared staging directory, or the run's prefix on
/// S3 (reached with the job's own S3 settings).
fn zarr_root(job: &Prepared, desc: &JobDescription) -> anyhow::Result<ArrayPlace> {
    let Some(uri) = &desc.zarr_root else {
        return Ok(ArrayPlace::Dir(desc.staging_dir.clone().into()));
    };
    let location = S3Location::parse("zarrRoot", uri)?;
    let storage = job.manifest.spec.s3_storage();
    Ok(ArrayPlace::S3 {
        bucket: arrayjob_engine::s3::bucket(storage, &location.bucket)?,
        prefix: location.prefix,
    })
}

/// Where a worker's finished blocks go: Zarr chunks into the arrays the coordinator created (written here,
/// by the worker that made them); blocks of small outputs (images, plots, CSVs) to the coordinator.
struct WorkerSink {
    blocks: BlockOutputs,
    http: Http,
}

impl WorkerSink {
    fn open(job: &Prepared, desc: &JobDescription, http: Http) -> anyhow::Result<WorkerSink> {
        let root = zarr_root(job, desc)?;
        Ok(WorkerSink {
            blocks: BlockOutputs::open(job, &root)?,
            http,
        })
    }

    /// Marks of the Zarr writes submitted so far, one per node.
    fn write_marks(&self) -> Vec<u64> {
        self.blocks.write_marks()
    }

    /// Waits until the writes before `marks` are in their files.
    fn wait_written(&self, marks: &[u64]) -> Result<(), ExecError> {
        self.blocks.wait_written(marks)
    }

    /// Sends one block (or one pixel's series) to the coordinator.
    fn send(
        &self,
        node: usize,
        start: &[usize],
        pixel: Option<usize>,
        chunk: Chunk,
    ) -> Result<(), ExecError> {
        let frame = arrayjob_engine::frame::encode(&Data::Chunk(chunk));
        let mut url = format!(
            "{}/v1/gather?node={node}&start={}",
            self.http.coordinator,
            protocol::format_index(start)
        );
        if let Some(k) = pixel {
            url.push_str(&format!("&pixel={k}"));
        }
        let sent = self.http.rt.block_on(async {
            let r = self
                .http
                .send(self.http.client.post(url).body(frame))
                .await
                .map_err(|e| e.to_string())?;
            r.error_for_status().map(|_| ()).map_err(|e| e.to_string())
        });
        sent.map_err(|e| ExecError::Output {
            stage: self.blocks.stage(node).to_owned(),
            target: "coordinator".into(),
            message: format!("sending a block to the coordinator failed: {e}"),
        })
    }
}

impl Gather for WorkerSink {
    fn gather_dense(&self, node: usize, start: &[usize], chunk: &Chunk) -> Result<(), ExecError> {
        self.send(node, start, None, chunk.clone())
    }

    fn gather_series(
        &self,
        node: usize,
        k: usize,
        t0: usize,
        values: Vec<f64>,
    ) -> Result<(), ExecError> {
        let series = Chunk::F64(
            ndarray::ArrayD::from_shape_vec(vec![values.len()], values)
                .map_err(|e| ExecError::Internal(format!("pixel series: {e}")))?,
        );
        self.send(node, &[t0], Some(k), series)
    }
}

impl ChunkSink for WorkerSink {
    fn tile_shape(&self, node: usize) -> Option<Vec<usize>> {
        self.blocks.tile_shape(node)
    }

    fn deliver_tiles(
        &self,
        node: usize,
        start: &[usize],
        _shape: &[usize],
        tiles: &[Chunk],
    ) -> Result<(), ExecError> {
        self.blocks.deliver_tiles(node, start, tiles)
    }

    fn deliver(&self, node: usize, start: &[usize], block: &Chunk) -> Result<(), ExecError> {
        self.blocks.deliver(node, start, block, self)
    }
}

/// What the data server serves: one worker's store, and its metrics.
#[derive(Debug, Clone)]
pub struct DataServer {
    /// Whose store.
    pub worker: WorkerId,
    /// The store.
    pub store: Arc<ChunkStore>,
    /// The worker's metrics.
    pub metrics: Arc<WorkerMetrics>,
    /// Requests refused by the signature check.
    pub refused: Arc<AtomicU64>,
    /// Where keys found damaged while serving them go (the worker reports them to be rebuilt).
    pub damaged: Option<tokio::sync::mpsc::UnboundedSender<DataKey>>,
}

/// Serves `data` on `listener`: peers fetch keys (`POST /v1/fetch`), a probe times the link
/// (`GET /v1/probe`), `/healthz` says the worker is up and `/metrics` gives its counters. Every other request
/// must be signed with the job token ([`crate::auth`]).
///
/// # Errors
/// When the listener fails.
pub async fn serve_data(
    listener: tokio::net::TcpListener,
    data: DataServer,
    guard: Guard,
) -> anyhow::Result<()> {
    let authed = Router::new()
        .route("/v1/fetch", post(fetch_handler))
        .route("/v1/probe", get(probe_handler))
        .with_state(data.clone())
        .layer(axum::middleware::from_fn_with_state(
            guard,
            crate::auth::require_signature,
        ));
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics_handler))
        .with_state(data)
        .merge(authed);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}

async fn metrics_handler(State(data): State<DataServer>) -> Response {
    let m = &data.metrics;
    m.resident_bytes.set(data.store.resident_bytes() as i64);
    m.spilled_bytes.set(data.store.stats().spilled_bytes as i64);
    m.auth_refused
        .set(data.refused.load(Ordering::Relaxed) as i64);
    crate::metrics::openmetrics_response(m.encode())
}

async fn fetch_handler(
    State(data): State<DataServer>,
    mut request: axum::extract::Request,
) -> Response {
    // A fetch asking for the frames protocol gets them on the bare connection once the answer is sent.
    let upgrade = request
        .headers()
        .get(axum::http::header::UPGRADE)
        .is_some_and(|v| {
            v.as_bytes()
                .eq_ignore_ascii_case(protocol::FRAMES_PROTOCOL.as_bytes())
        })
        .then(|| {
            request
                .extensions_mut()
                .remove::<hyper::upgrade::OnUpgrade>()
        })
        .flatten();
    let req = match axum::Json::<FetchRequest>::from_request(request, &()).await {
        Ok(axum::Json(req)) => req,
        Err(rejection) => return rejection.into_response(),
    };
    let mut found = Vec::with_capacity(req.keys.len());
    for key in &req.keys {
        match data.store.get(*key) {
            Ok(d) => found.push(d),
            Err(e) => {
                if let (StoreError::Damaged { .. }, Some(tx)) = (&e, &data.damaged) {
                    let _ = tx.send(*key);
                }
                return (
                    StatusCode::NOT_FOUND,
                    format!("worker {} cannot serve {key}: {e}", data.worker.0),
                )
                    .into_response();
            }
        }
    }
    if let Some(upgrade) = upgrade {
        tokio::spawn(async move {
            let sent = match upgrade.await {
                Ok(io) => protocol::write_frames(hyper_util::rt::TokioIo::new(io), &found).await,
                Err(e) => Err(std::io::Error::other(e)),
            };
            match sent {
                Ok(bytes) => {
                    data.metrics.bytes_served.inc_by(bytes);
                }
                Err(e) => tracing::info!("sending {} key(s) to a peer: {e}", found.len()),
            }
        });
        return (
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (axum::http::header::CONNECTION, "upgrade"),
                (axum::http::header::UPGRADE, protocol::FRAMES_PROTOCOL),
            ],
        )
            .into_response();
    }
    // The elements go out from the store's own buffers (no copy): a stream of header, payload and checksum
    // per key, each preceded by the frame's length.
    let parts: Vec<Bytes> = found.iter().flat_map(protocol::answer_parts).collect();
    let sent: usize = parts.iter().map(Bytes::len).sum();
    data.metrics.bytes_served.inc_by(sent as u64);
    let stream = futures::stream::iter(parts.into_iter().map(Ok::<_, std::convert::Infallible>));
    axum::body::Body::from_stream(stream).into_response()
}

#[derive(serde::Deserialize)]
struct ProbeQuery {
    bytes: u64,
}

async fn probe_handler(Query(q): Query<ProbeQuery>) -> Response {
    let n = q.bytes.min(64 << 20) as usize;
    vec![0u8; n].into_response()
}

/// Fetches `keys` from the data server at `address` in one request and decodes their frames, in order. The
/// request is signed for `address`, and nothing of the answer is read unless the peer proves it holds the
/// job's token.
///
/// # Errors
/// When the peer cannot be reached, does not prove it holds the token, does not hold a key, or answers bytes
/// that are not the keys' frames.
pub async fn fetch_keys(
    client: &reqwest::Client,
    token: &Token,
    address: &str,
    keys: &[DataKey],
) -> Result<(Vec<Data>, u64), String> {
    let request = client
        .post(format!("http://{address}/v1/fetch"))
        .header(reqwest::header::CONNECTION, "upgrade")
        .header(reqwest::header::UPGRADE, protocol::FRAMES_PROTOCOL)
        .json(&FetchRequest {
            keys: keys.to_vec(),
        });
    let r = crate::auth::send(request, token)
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    if status == reqwest::StatusCode::SWITCHING_PROTOCOLS {
        // The frames on the bare connection (used once), each chunk's elements read straight into it: the
        // buffer only gathers headers and small frames (larger reads bypass it).
        let io = r.upgrade().await.map_err(|e| e.to_string())?;
        let mut io = tokio::io::BufReader::with_capacity(64 << 10, io);
        return protocol::read_frames(&mut io, keys.len()).await;
    }
    if !status.is_success() {
        return Err(format!("{status}: {}", r.text().await.unwrap_or_default()));
    }
    // A server that ignored the upgrade: the frames are the body (no more than asked for).
    let mut reader = protocol::FrameReader::expecting(keys.len());
    let mut bytes = 0u64;
    let mut r = r;
    while let Some(piece) = r.chunk().await.map_err(|e| e.to_string())? {
        bytes += piece.len() as u64;
        reader.push(&piece)?;
    }
    let data = reader.finish()?;
    if data.len() != keys.len() {
        return Err(format!(
            "answered {} frames for {} keys",
            data.len(),
            keys.len()
        ));
    }
    Ok((data, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_get_frames_on_an_upgraded_connection_or_as_a_body() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let tmp = tempfile::tempdir().expect("tmp");
        let store = Arc::new(ChunkStore::new(
            usize::MAX,
            Box::new(FileSpill::new(tmp.path()).expect("spill")),
        ));
        let key = |group| DataKey::Piece {
            node: 1,
            group,
            part: 0,
        };
        let values: Vec<Data> = (0..3)
            .map(|i| {
                Data::Chunk(Chunk::F32(ndarray::ArrayD::from_shape_fn(
                    ndarray::IxDyn(&[100 + i, 1000]),
                    |ix| (ix[0] * 1000 + ix[1] + i) as f32,
                )))
            })
            .collect();
        for (i, d) in values.iter().enumerate() {
            store.put(key(i), d.clone(), usize::MAX).expect("put");
        }
        let token = Token::generate().expect("token");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("listen");
        let address = listener.local_addr().expect("address").to_string();
        let guard = Guard::new(token.clone()).addressed_as(&address);
        let data = DataServer {
            worker: WorkerId(0),
            store,
            metrics: Arc::new(WorkerMetrics::new()),
            refused: guard.refused().clone(),
            damaged: None,
        };
        rt.spawn(serve_data(listener, data, guard.clone()));
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let keys = [key(2), key(0), key(1)];
        let (got, bytes) = rt
            .block_on(fetch_keys(&client, &token, &address, &keys))
            .expect("fetch");
        assert_eq!(
            got,
            vec![values[2].clone(), values[0].clone(), values[1].clone()]
        );
        // A client that does not ask for the upgrade gets the same frames as the body (proven too).
        let body = rt.block_on(async {
            let r = crate::auth::send(
                client
                    .post(format!("http://{address}/v1/fetch"))
                    .json(&FetchRequest {
                        keys: keys.to_vec(),
                    }),
                &token,
            )
            .await
            .expect("post");
            assert_eq!(r.status(), StatusCode::OK);
            r.bytes().await.expect("body")
        });
        assert_eq!(body.len() as u64, bytes);
        let mut reader = protocol::FrameReader::default();
        reader.push(&body).expect("frames");
        assert_eq!(reader.finish().expect("finish"), got);
        // A key it does not hold: the (proven) refusal says which.
        let err = rt
            .block_on(fetch_keys(&client, &token, &address, &[key(7)]))
            .expect_err("missing");
        assert!(
            err.contains("404") && err.contains("worker 0 cannot serve"),
            "{err}"
        );
        assert_eq!(guard.refused().load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_worker_listening_everywhere_advertises_the_address_it_reaches_the_coordinator_from() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        // A coordinator on 127.0.0.7: the connection to it leaves from a loopback address peers can dial.
        let coordinator = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.7:0"))
            .expect("listen");
        let url = format!("http://{}", coordinator.local_addr().expect("address"));
        let everywhere: SocketAddr = "0.0.0.0:7171".parse().expect("address");
        let a = rt
            .block_on(advertised_address(None, everywhere, &url))
            .expect("derived");
        assert_eq!(a, "127.0.0.1:7171");
        let given = rt
            .block_on(advertised_address(Some("b.example:7071"), everywhere, &url))
            .expect("given");
        assert_eq!(given, "b.example:7071");
        let bound: SocketAddr = "127.0.0.9:7171".parse().expect("address");
        let own = rt
            .block_on(advertised_address(None, bound, &url))
            .expect("bound");
        assert_eq!(own, "127.0.0.9:7171");
        // Nobody at the coordinator's address: no guess, the flag is named.
        drop(coordinator);
        let err = rt
            .block_on(advertised_address(None, everywhere, &url))
            .expect_err("unreachable");
        let text = format!("{err:#}");
        assert!(
            text.contains("--advertise") && text.contains("0.0.0.0:7171"),
            "{text}"
        );
    }
}

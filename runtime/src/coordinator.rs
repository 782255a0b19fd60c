//! The coordinator: one job's scheduler behind an HTTP endpoint. Workers join it, long-poll it for tasks
//! and report what they did; it places tasks with the engine's [`Scheduler`], tells holders to release data
//! nobody will read, declares silent workers lost (their data is recomputed from lineage), gathers the
//! blocks of small outputs, and serves a progress snapshot and Prometheus metrics. It never touches chunk
//! bytes except those gathered blocks.
//!
//! It is a [`runner::Executor`], so a distributed run goes through the same staging and all-or-nothing
//! commit as a local one.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrayjob_engine::data::Data;
use arrayjob_engine::error::RunError;
use arrayjob_engine::exec::{ExecError, JobProgress, NodeSnapshot};
use arrayjob_engine::graph::{TaskGraph, TaskKind};
use arrayjob_engine::job::Prepared;
use arrayjob_engine::output::sink::{OutputRecord, Outputs};
use arrayjob_engine::output::timeline;
use arrayjob_engine::plan::{Plan, unlinear};
use arrayjob_engine::runner;
use arrayjob_engine::s3::ledger::{GatheredBlock, Ledger, StoredObject};
use arrayjob_engine::s3::objects::Bucket;
use arrayjob_engine::s3::objects::S3Counters;
use arrayjob_engine::schedule::{
    Action, Scheduler, SchedulerOptions, Steal, StoreCounts, WorkerId,
};
use arrayjob_engine::store::StoreStats;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::auth::{Guard, Token};
use crate::exchange::{self, StoreBook};
use crate::metrics::CoordinatorMetrics;
use crate::protocol::{
    self, Command, InputLocation, JobDescription, RegisterRequest, RegisterResponse, Report,
    SyncRequest, SyncResponse,
};

/// How a coordinator runs (flags and environment variables of `arrayjob run --workers` and
/// `arrayjob coordinator`).
#[derive(Debug, Clone)]
pub struct CoordinatorOptions {
    /// Where it listens (port 0: any free port).
    pub listen: SocketAddr,
    /// The address workers reach it at (default: the bound address; loopback when bound to every
    /// interface).
    pub advertise: Option<String>,
    /// The job token.
    pub token: Token,
    /// The manifest text, sent to workers.
    pub manifest: String,
    /// Where relative source paths are resolved (workers must see the same files there).
    pub base_dir: PathBuf,
    /// Worker processes to start on this machine, each on its own loopback address ([`local_worker_host`]).
    pub local_workers: usize,
    /// The program and leading arguments that start a worker (`arrayjob worker`).
    pub worker_command: Vec<String>,
    /// Threads of each local worker.
    pub worker_threads: usize,
    /// Memory budget of each local worker, bytes.
    pub worker_memory: usize,
    /// Bytes each local worker spills to its disk before the job's S3 scratch takes the rest.
    pub worker_spill_disk_limit: Option<u64>,
    /// How often workers must be heard from.
    pub heartbeat: Duration,
    /// Silence after which a worker is lost.
    pub worker_timeout: Duration,
    /// How long the job may go without any live worker before it fails.
    pub no_worker_timeout: Duration,
    /// The placement policy's knobs.
    pub scheduler: SchedulerOptions,
    /// Print the coordinator's URL once it listens (for workers started by hand).
    pub announce: bool,
}

impl CoordinatorOptions {
    /// Options for `local_workers` worker processes started with `worker_command`, everything else at its
    /// default: loopback, a fresh token, 0.5 s heartbeats, 3 s timeout.
    ///
    /// # Errors
    /// When no token can be generated.
    pub fn local(
        manifest: String,
        base_dir: PathBuf,
        local_workers: usize,
        worker_command: Vec<String>,
    ) -> anyhow::Result<CoordinatorOptions> {
        Ok(CoordinatorOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            token: Token::generate()?,
            manifest,
            base_dir,
            local_workers,
            worker_command,
            worker_threads: 1,
            worker_memory: 1 << 30,
            worker_spill_disk_limit: None,
            heartbeat: Duration::from_millis(500),
            worker_timeout: Duration::from_secs(3),
            no_worker_timeout: Duration::from_secs(60),
            scheduler: SchedulerOptions::default(),
            announce: false,
        })
    }
}

/// What the distributed run did, beyond the local summary: per worker, and the network.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DistributedReport {
    /// The coordinator's address.
    pub coordinator: String,
    /// Every worker that joined.
    pub workers: Vec<WorkerProgress>,
    /// Bytes workers fetched from each other.
    pub bytes_moved: u64,
    /// Of these, pieces moved to their merge's worker as soon as they were written.
    pub bytes_moved_early: u64,
    /// Tasks moved to idle workers, and why.
    pub steals: Vec<Steal>,
    /// Tasks given a second copy.
    pub speculated: usize,
    /// Tasks run again because data was lost with a worker.
    pub recomputed: usize,
    /// Workers declared lost.
    pub workers_lost: usize,
    /// Requests refused for a missing or wrong token.
    pub auth_refused: u64,
    /// Workers refused for another plan hash.
    pub plan_hash_refused: u64,
    /// Scheduling decisions made.
    pub decisions: u64,
    /// Tasks of the job's graph.
    pub tasks: usize,
    /// What went through the job's object store (`exchange: s3`, a resumed run).
    pub store: StoreCounts,
    /// Every task run: who, when (seconds after the start), how long.
    #[serde(skip)]
    pub spans: Vec<Span>,
    /// Transfers and losses, for the timeline.
    #[serde(skip)]
    pub events: Vec<Event>,
}

/// A task run as the coordinator saw it.
#[derive(Debug, Clone)]
pub struct Span {
    /// Worker.
    pub worker: WorkerId,
    /// Its thread.
    pub thread: u32,
    /// Stage name.
    pub stage: String,
    /// Task description.
    pub task: String,
    /// Start, seconds after the job started.
    pub start: f64,
    /// End.
    pub end: f64,
}

/// Something between workers.
#[derive(Debug, Clone)]
pub enum Event {
    /// `to` fetched `bytes` from `from`, ending at `at` after `seconds`.
    Transfer {
        /// Sender.
        from: WorkerId,
        /// Receiver.
        to: WorkerId,
        /// Bytes.
        bytes: u64,
        /// End time.
        at: f64,
        /// Duration.
        seconds: f64,
    },
    /// A worker was declared lost at `at`.
    Lost {
        /// Who.
        worker: WorkerId,
        /// When.
        at: f64,
    },
}

/// One worker in the progress snapshot.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerProgress {
    /// Its number.
    pub id: WorkerId,
    /// Its data address.
    pub address: String,
    /// `running`, `lost` or `done`.
    pub state: String,
    /// Threads.
    pub cores: usize,
    /// Memory budget, bytes.
    pub memory_budget: u64,
    /// Tasks it finished.
    pub tasks_done: usize,
    /// Bytes resident in its store at its last report.
    pub resident_bytes: u64,
    /// Its store counters.
    pub store: StoreStats,
    /// Its S3 requests and bytes (Zarr chunks and shards it uploaded, slices it read).
    pub s3: S3Counters,
}

/// The coordinator as an executor of [`runner::run_with`].
#[derive(Debug)]
pub struct Coordinator {
    opts: CoordinatorOptions,
    report: Option<DistributedReport>,
}

impl Coordinator {
    /// A coordinator with these options.
    pub fn new(opts: CoordinatorOptions) -> Coordinator {
        Coordinator { opts, report: None }
    }

    /// Bytes each local worker spills to its disk before the job's S3 scratch takes the rest.
    pub fn set_worker_spill_disk_limit(&mut self, limit: Option<u64>) {
        self.opts.worker_spill_disk_limit = limit;
    }

    /// What the last run did (after [`runner::Executor::execute`]).
    pub fn report(&self) -> Option<&DistributedReport> {
        self.report.as_ref()
    }
}

/// A block of a small output sent by a worker.
struct Gathered {
    node: usize,
    start: Vec<usize>,
    pixel: Option<usize>,
    frame: Bytes,
}

struct WorkerInfo {
    address: String,
    /// The id this coordinator gave the process when it started it (local workers only).
    launch_id: Option<String>,
    cores: usize,
    memory_budget: u64,
    last_seen: Instant,
    /// Seconds between the job's start and the worker's registration.
    joined: f64,
    lost: bool,
    mailbox: Vec<Command>,
    wake: Arc<tokio::sync::Notify>,
    stages: Vec<NodeSnapshot>,
    load_end: f64,
    store: StoreStats,
    resident: u64,
    tasks_done: usize,
    s3: S3Counters,
}

impl WorkerInfo {
    /// A worker registering now, `joined` seconds after the job started.
    fn joining(req: &RegisterRequest, joined: f64) -> WorkerInfo {
        WorkerInfo {
            address: req.address.clone(),
            launch_id: req.launch_id.clone(),
            cores: req.cores.max(1),
            memory_budget: req.memory_budget,
            last_seen: Instant::now(),
            joined,
            lost: false,
            mailbox: Vec::new(),
            wake: Arc::new(tokio::sync::Notify::new()),
            stages: Vec::new(),
            load_end: 0.0,
            store: StoreStats::default(),
            resident: 0,
            tasks_done: 0,
            s3: S3Counters::default(),
        }
    }
}

struct CoordState {
    sched: Scheduler,
    workers: BTreeMap<WorkerId, WorkerInfo>,
    next_id: u32,
    failure: Option<String>,
    finished: bool,
    bytes_moved: u64,
    workers_lost: usize,
    spans: Vec<Span>,
    events: Vec<Event>,
    /// When the job last had a live worker.
    last_alive: Instant,
    /// Per task: when a run of it first could not get an input since the last worker loss.
    unavailable: HashMap<arrayjob_engine::graph::TaskId, Instant>,
    /// Which object holds each key in the job's object store, and what the ledger is to be told.
    book: StoreBook,
    /// Per plan node: when its first task started and its last one ended, and the bytes its tasks wrote.
    clocks: BTreeMap<usize, StageClock>,
}

/// When a stage's work ran, and what it wrote (first completion of each task only).
#[derive(Debug, Clone, Copy, Default)]
struct StageClock {
    start: Option<f64>,
    end: f64,
    bytes: u64,
}

impl StageClock {
    fn record(&mut self, start: f64, end: f64, bytes: u64) {
        self.start = Some(self.start.map_or(start, |s| s.min(start)));
        self.end = self.end.max(end);
        self.bytes += bytes;
    }
}

/// A task that keeps failing to get its inputs this long with no worker lost meanwhile fails the job rather
/// than being placed again forever (their holders answer but do not have them: a bookkeeping bug). A dead
/// holder is declared lost long before.
const MAX_INPUT_WAIT: Duration = Duration::from_secs(30);

struct CoordShared {
    state: Mutex<CoordState>,
    desc: JobDescription,
    plan: Plan,
    started: Instant,
    /// `started` on the wall clock, seconds since the Unix epoch.
    started_at_unix: f64,
    gather: Mutex<std::sync::mpsc::Sender<Gathered>>,
    guard: Guard,
    metrics: CoordinatorMetrics,
    probe_bytes: u64,
    hash_refused: AtomicU64,
    /// The run's ledger (a resumable run) and the scratch bucket (exchange objects).
    ledger: Option<Arc<Ledger>>,
    store_bucket: Option<Bucket>,
}

impl CoordShared {
    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CoordState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl runner::Executor for Coordinator {
    fn execute(
        &mut self,
        job: &Prepared,
        outputs: &Outputs,
        staging: &Path,
        progress: &JobProgress,
        cancel: &AtomicBool,
    ) -> Result<StoreStats, RunError> {
        let internal = |m: String| RunError::Exec(ExecError::Internal(m));
        let graph = TaskGraph::build(&job.plan).map_err(|e| internal(e.to_string()))?;
        let staging = staging.canonicalize().map_err(runner::io_err(staging))?;
        let desc = JobDescription {
            manifest: self.opts.manifest.clone(),
            base_dir: self
                .opts
                .base_dir
                .canonicalize()
                .unwrap_or_else(|_| self.opts.base_dir.clone())
                .display()
                .to_string(),
            staging_dir: staging.display().to_string(),
            zarr_root: outputs.zarr_root().s3_uri(),
            scratch: outputs.scratch().map(|s| s.location.to_string()),
            plan_hash: job.plan.hash.to_string(),
            heartbeat_ms: self.opts.heartbeat.as_millis() as u64,
            worker_timeout_ms: self.opts.worker_timeout.as_millis() as u64,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("arrayjob-coordinator")
            .enable_all()
            .build()
            .map_err(|e| internal(format!("cannot start the coordinator runtime: {e}")))?;
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(self.opts.listen))
            .map_err(|e| internal(format!("cannot listen on {}: {e}", self.opts.listen)))?;
        let bound = listener.local_addr().map_err(|e| internal(e.to_string()))?;
        let url = format!(
            "http://{}",
            self.opts
                .advertise
                .clone()
                .unwrap_or_else(|| dialable(bound).to_string())
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let mut sched_opts = self.opts.scheduler.clone();
        sched_opts.exchange_store =
            job.manifest.spec.exchange == Some(arrayjob_engine::spec::Exchange::S3);
        let mut sched = Scheduler::new(graph, sched_opts);
        let ledger = outputs.ledger().cloned();
        let scratch = outputs.scratch();
        let mut book = StoreBook::new(
            scratch.map_or_else(String::new, |s| {
                s.location.key(&format!("exchange/{}/", runner::run_id()))
            }),
            ledger.is_some(),
        );
        if let Some(l) = &ledger {
            resume(l, &mut sched, &mut book, outputs, &job.plan)?;
        }
        let shared = Arc::new(CoordShared {
            state: Mutex::new(CoordState {
                sched,
                workers: BTreeMap::new(),
                next_id: 0,
                failure: None,
                finished: false,
                bytes_moved: 0,
                workers_lost: 0,
                spans: Vec::new(),
                events: Vec::new(),
                last_alive: Instant::now(),
                unavailable: HashMap::new(),
                clocks: BTreeMap::new(),
                book,
            }),
            desc,
            plan: job.plan.clone(),
            started: Instant::now(),
            started_at_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            gather: Mutex::new(tx),
            guard: Guard::new(self.opts.token.clone()),
            metrics: CoordinatorMetrics::new(),
            probe_bytes: self.opts.scheduler.probe_bytes,
            hash_refused: AtomicU64::new(0),
            ledger,
            store_bucket: scratch.map(|s| s.bucket.clone()),
        });
        let server = rt.spawn(serve(listener, shared.clone()));
        if self.opts.announce {
            eprintln!(
                "coordinator listening at {url} (plan hash {})",
                job.plan.hash
            );
        }
        let mut children = LocalWorkers::start(&self.opts, &url, &staging)
            .map_err(|e| internal(format!("cannot start local workers: {e}")))?;
        let result = drive(
            &shared,
            &self.opts,
            outputs,
            progress,
            cancel,
            &rx,
            &mut children,
        );
        // Tell the workers the job is over, and give them a moment to hear it.
        shared.lock().finished = true;
        for w in shared.lock().workers.values() {
            w.wake.notify_one();
        }
        children.wait_or_kill(Duration::from_secs(3));
        server.abort();
        let (report, stats) = final_report(&shared, &url);
        self.report = Some(report);
        result.map(|()| stats)
    }

    fn extra_outputs(&mut self, staging: &Path) -> Result<Vec<OutputRecord>, RunError> {
        self.write_reports(staging)
    }
}

impl Coordinator {
    /// Writes `workers.json` (the [`DistributedReport`]) into `staging`.
    fn write_reports(&self, staging: &Path) -> Result<Vec<OutputRecord>, RunError> {
        let Some(r) = &self.report else {
            return Ok(Vec::new());
        };
        let path = staging.join(WORKERS_FILE);
        let text = serde_json::to_string_pretty(r)
            .map_err(|e| RunError::Exec(ExecError::Internal(e.to_string())))?;
        std::fs::write(&path, text + "\n").map_err(runner::io_err(&path))?;
        let t = timeline(r);
        timeline::write_timeline_html(&staging.join(TIMELINE_HTML), &t)?;
        timeline::write_timeline_png(&staging.join(TIMELINE_PNG), &t)?;
        Ok([
            (WORKERS_FILE, "report"),
            (TIMELINE_HTML, "timeline"),
            (TIMELINE_PNG, "timeline"),
        ]
        .into_iter()
        .map(|(path, kind)| OutputRecord {
            stage: "-".into(),
            kind: kind.into(),
            path: path.into(),
            fingerprint: None,
        })
        .collect())
    }
}

/// The task-stream timeline of a run: a bar per task run, transfers, steals and worker losses.
fn timeline(r: &DistributedReport) -> timeline::Timeline {
    use timeline::{Marker, MarkerKind, TaskSpan};
    let spans = r
        .spans
        .iter()
        .map(|s| TaskSpan {
            worker: s.worker.0,
            thread: s.thread,
            stage: s.stage.clone(),
            task: s.task.clone(),
            start: s.start,
            end: s.end,
        })
        .collect();
    let mut markers: Vec<Marker> = r
        .events
        .iter()
        .map(|e| match *e {
            Event::Transfer {
                from,
                to,
                bytes,
                at,
                seconds,
            } => Marker {
                kind: MarkerKind::Transfer,
                from: Some(from.0),
                to: Some(to.0),
                at: (at - seconds).max(0.0),
                end: Some(at),
                bytes: Some(bytes),
                note: format!("{:.1} MB in {:.3} s", bytes as f64 / 1e6, seconds),
            },
            Event::Lost { worker, at } => Marker {
                kind: MarkerKind::WorkerLost,
                from: Some(worker.0),
                to: None,
                at,
                end: None,
                bytes: None,
                note: "no heartbeat: declared lost".into(),
            },
        })
        .collect();
    markers.extend(r.steals.iter().map(|s| Marker {
        kind: MarkerKind::Steal,
        from: Some(s.from.0),
        to: Some(s.to.0),
        at: s.at,
        end: None,
        bytes: None,
        note: format!(
            "task {}: would wait {:.2} s, moves in {:.2} s",
            s.task.0, s.wait_seconds, s.transfer_seconds
        ),
    }));
    timeline::Timeline {
        title: format!("arrayjob task stream ({} workers)", r.workers.len()),
        spans,
        markers,
    }
}

/// The timeline files published with a distributed run's outputs (names the engine's validation reserves).
pub use arrayjob_engine::validate::{TIMELINE_HTML, TIMELINE_PNG};

/// Largest block a worker may send the coordinator for a small output.
const MAX_GATHERED_BYTES: usize = 1 << 30;

/// The distributed run's report, published with the outputs (a name the engine's validation reserves).
pub const WORKERS_FILE: &str = arrayjob_engine::validate::WORKERS_REPORT;

/// Takes over what the run's ledger holds: the scheduler restores the tasks done whose outputs are durable
/// (and reopens the others), the book learns the stored objects, and the small outputs' blocks are delivered.
fn resume(
    ledger: &Ledger,
    sched: &mut Scheduler,
    book: &mut StoreBook,
    outputs: &Outputs,
    plan: &Plan,
) -> Result<(), RunError> {
    let found = ledger.found();
    if found.segments == 0 {
        return Ok(());
    }
    book.load(&found.stored);
    let restored = sched.restore(&found.done, &found.durable());
    for b in ledger.gathered()? {
        deliver(
            outputs,
            plan,
            Gathered {
                node: b.node,
                start: b.start,
                pixel: b.pixel,
                frame: b.frame,
            },
        )?;
    }
    let counts = sched.store_counts();
    tracing::warn!(
        ledger = %ledger.uri(),
        restored,
        reopened = counts.restored_reopened,
        "resuming the job from its ledger"
    );
    Ok(())
}

/// Writes what the ledger has not been told yet, then deletes the exchange objects nobody reads.
fn flush_book(shared: &CoordShared) -> Result<(), RunError> {
    let (seg, deletes) = shared.lock().book.take();
    exchange::flush(
        shared.ledger.as_deref(),
        shared.store_bucket.as_ref(),
        seg,
        deletes,
    )
}

/// The coordinator's own loop: delivers gathered blocks, watches heartbeats and local processes, lets the
/// scheduler look for stragglers, and ends when every task is done (or the job failed or was cancelled).
fn drive(
    shared: &CoordShared,
    opts: &CoordinatorOptions,
    outputs: &Outputs,
    progress: &JobProgress,
    cancel: &AtomicBool,
    rx: &std::sync::mpsc::Receiver<Gathered>,
    children: &mut LocalWorkers,
) -> Result<(), RunError> {
    let mut last_tick = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(g) => deliver(outputs, &shared.plan, g)?,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(ExecError::Internal("the coordinator's server stopped".into()).into());
            }
        }
        if cancel.load(Ordering::Relaxed) {
            return Err(ExecError::Cancelled.into());
        }
        // The ledger hears of what is durable within about 50 ms (a write only when there is news).
        flush_book(shared)?;
        if last_tick.elapsed() < Duration::from_millis(200) {
            continue;
        }
        last_tick = Instant::now();
        let gone = children.newly_exited();
        let exited = children.exited();
        let (failure, finished) = housekeeping(shared, opts, &gone, exited);
        absorb_progress(shared, progress);
        if let Some(f) = failure {
            return Err(ExecError::Internal(f).into());
        }
        if finished {
            // Every block of a finished task was sent before its report: they are all queued here.
            while let Ok(g) = rx.try_recv() {
                deliver(outputs, &shared.plan, g)?;
            }
            flush_book(shared)?;
            return Ok(());
        }
    }
}

/// The workers to declare lost now: those not heard from for `timeout`, and those whose process (started
/// here) exited, matched by the launch id they registered with (not by address: two workers may share a
/// host).
fn lost_now(
    workers: &BTreeMap<WorkerId, WorkerInfo>,
    timeout: Duration,
    exited: &[String],
) -> Vec<WorkerId> {
    workers
        .iter()
        .filter(|(_, w)| {
            !w.lost
                && (w.last_seen.elapsed() > timeout
                    || w.launch_id.as_ref().is_some_and(|l| exited.contains(l)))
        })
        .map(|(&id, _)| id)
        .collect()
}

/// Declares silent workers lost, fails a job left without workers, and ticks the scheduler. Returns the
/// job's failure, if any, and whether it is finished.
fn housekeeping(
    shared: &CoordShared,
    opts: &CoordinatorOptions,
    exited: &[String],
    local_exited: Option<String>,
) -> (Option<String>, bool) {
    let now = shared.now();
    let mut g = shared.lock();
    let silent = lost_now(&g.workers, opts.worker_timeout, exited);
    for id in silent {
        lose_worker(shared, &mut g, id, now);
    }
    let alive = g.workers.values().filter(|w| !w.lost).count();
    shared.metrics.workers_alive.set(alive as i64);
    if alive > 0 {
        g.last_alive = Instant::now();
    } else if g.failure.is_none() && !g.sched.finished() {
        if let Some(why) = local_exited {
            g.failure = Some(format!("every worker process exited ({why})"));
        } else if g.last_alive.elapsed() > opts.no_worker_timeout {
            g.failure = Some(format!(
                "no worker for {} s: the job cannot go on",
                opts.no_worker_timeout.as_secs()
            ));
        }
    }
    if g.failure.is_none() {
        let actions = g.sched.tick(now);
        route(shared, &mut g, actions);
    }
    (g.failure.clone(), g.sched.finished())
}

fn lose_worker(shared: &CoordShared, g: &mut CoordState, id: WorkerId, now: f64) {
    let Some(w) = g.workers.get_mut(&id) else {
        return;
    };
    w.lost = true;
    w.mailbox.clear();
    g.unavailable.clear();
    tracing::warn!(worker = id.0, address = %w.address, "worker lost (exited, or no heartbeat)");
    g.workers_lost += 1;
    g.events.push(Event::Lost {
        worker: id,
        at: now,
    });
    shared.metrics.workers_lost.inc();
    match g.sched.worker_lost(id, now) {
        Ok(actions) => route(shared, g, actions),
        Err(f) => {
            let kind = g.sched.graph().task(f.task).kind;
            g.failure = Some(format!(
                "{} was running on {} workers that died: the job fails rather than lose more workers",
                describe_task(&shared.plan, kind),
                f.strikes
            ));
        }
    }
}

/// A task in words a user can act on: its stage and chunk.
pub fn describe_task(plan: &Plan, kind: TaskKind) -> String {
    match kind {
        TaskKind::Load { chunk } => {
            let meta = &plan.nodes[0].meta;
            let (start, len) = meta.chunk_region(&unlinear(&meta.grid(), chunk));
            format!(
                "the load of slices {}..{} (source chunk {chunk})",
                start[0],
                start[0] + len[0]
            )
        }
        TaskKind::Merge { node, group } => {
            format!("merge group {group} of stage '{}'", plan.nodes[node].name)
        }
        TaskKind::Combine { node, out, leaf } => format!(
            "the combine of partial {leaf} into chunk {out} of stage '{}'",
            plan.nodes[node].name
        ),
    }
}

/// Turns the scheduler's actions into commands in the workers' mailboxes, and wakes those workers.
fn route(shared: &CoordShared, g: &mut CoordState, actions: Vec<Action>) {
    let mut woken: Vec<WorkerId> = Vec::new();
    for a in actions {
        let (to, cmd) = match a {
            Action::Run {
                worker,
                task,
                attempt,
            } => {
                let inputs = g
                    .sched
                    .graph()
                    .task(task)
                    .inputs
                    .iter()
                    .filter_map(|&key| {
                        let (holder, _) = g.sched.location(key)?;
                        if holder == WorkerId::STORE {
                            let (object, position) = g.book.location(key)?;
                            return Some(InputLocation {
                                key,
                                worker: holder,
                                address: object.to_owned(),
                                position: Some(position),
                            });
                        }
                        let address = g.workers.get(&holder)?.address.clone();
                        Some(InputLocation {
                            key,
                            worker: holder,
                            address,
                            position: None,
                        })
                    })
                    .collect();
                (
                    worker,
                    Command::Run {
                        task,
                        attempt,
                        inputs,
                    },
                )
            }
            Action::Probe { from, to } => {
                let Some(address) = g.workers.get(&from).map(|w| w.address.clone()) else {
                    continue;
                };
                (
                    to,
                    Command::Probe {
                        from,
                        address,
                        bytes: shared.probe_bytes,
                    },
                )
            }
            Action::Move { key, from, to } => {
                let Some(address) = g.workers.get(&from).map(|w| w.address.clone()) else {
                    continue;
                };
                let sized = (key, g.sched.location(key).map_or(0, |(_, b)| b));
                if let Some(Command::Move { from: f, keys, .. }) =
                    g.workers.get_mut(&to).and_then(|w| w.mailbox.last_mut())
                    && *f == from
                {
                    keys.push(sized);
                    continue;
                }
                (
                    to,
                    Command::Move {
                        from,
                        address,
                        keys: vec![sized],
                    },
                )
            }
            Action::Ship {
                worker,
                merge,
                keys,
            } => {
                let object = g.book.object_name(merge, worker);
                let keys = keys.into_iter().map(|(k, _)| k).collect();
                (worker, Command::Ship { object, keys })
            }
            Action::Release {
                worker: WorkerId::STORE,
                key,
            } => {
                g.book.released(key);
                continue;
            }
            Action::Release { worker, key } => {
                if let Some(Command::Release { keys }) = g
                    .workers
                    .get_mut(&worker)
                    .and_then(|w| w.mailbox.last_mut())
                {
                    keys.push(key);
                    continue;
                }
                (worker, Command::Release { keys: vec![key] })
            }
        };
        if let Some(w) = g.workers.get_mut(&to).filter(|w| !w.lost) {
            w.mailbox.push(cmd);
            if !woken.contains(&to) {
                woken.push(to);
            }
        }
    }
    for id in woken {
        if let Some(w) = g.workers.get(&id) {
            w.wake.notify_one();
        }
    }
}

fn deliver(outputs: &Outputs, plan: &Plan, g: Gathered) -> Result<(), RunError> {
    let stage = plan
        .nodes
        .get(g.node)
        .map_or_else(|| format!("node {}", g.node), |n| n.name.clone());
    let bad = |m: String| ExecError::Output {
        stage: stage.clone(),
        target: "gathered block".into(),
        message: m,
    };
    let data = arrayjob_engine::frame::decode(&g.frame).map_err(|e| bad(e.to_string()))?;
    let Data::Chunk(chunk) = data else {
        return Err(bad("a gathered block is not a chunk".into()).into());
    };
    match g.pixel {
        Some(k) => {
            let values = chunk.to_f64();
            let values: Vec<f64> = values.iter().copied().collect();
            let t0 = g.start.first().copied().unwrap_or(0);
            outputs.deliver_series(g.node, k, t0, &values)?;
        }
        None => outputs.deliver_dense(g.node, &g.start, &chunk)?,
    }
    Ok(())
}

/// Sets the run's progress counters from the workers' latest snapshots.
fn absorb_progress(shared: &CoordShared, progress: &JobProgress) {
    let g = shared.lock();
    let views: Vec<(f64, &[NodeSnapshot], f64)> = g
        .workers
        .values()
        .map(|w| (w.joined, w.stages.as_slice(), w.load_end))
        .collect();
    progress.absorb(&views);
}

fn final_report(shared: &CoordShared, url: &str) -> (DistributedReport, StoreStats) {
    let g = shared.lock();
    let mut stats = StoreStats::default();
    let workers = g
        .workers
        .iter()
        .map(|(&id, w)| {
            stats.peak_resident_bytes += w.store.peak_resident_bytes;
            stats.spilled_bytes += w.store.spilled_bytes;
            stats.unspilled_bytes += w.store.unspilled_bytes;
            stats.spilled_to_s3_bytes += w.store.spilled_to_s3_bytes;
            worker_progress(id, w, g.finished)
        })
        .collect();
    let report = DistributedReport {
        coordinator: url.to_string(),
        workers,
        bytes_moved: g.bytes_moved,
        bytes_moved_early: g.sched.moved_bytes(),
        steals: g.sched.steals().to_vec(),
        speculated: g.sched.speculated().len(),
        recomputed: g.sched.recomputed(),
        workers_lost: g.workers_lost,
        auth_refused: shared.guard.refused().load(Ordering::Relaxed),
        plan_hash_refused: shared.hash_refused.load(Ordering::Relaxed),
        decisions: g.sched.decisions(),
        tasks: g.sched.graph().len(),
        store: g.sched.store_counts(),
        spans: g.spans.clone(),
        events: g.events.clone(),
    };
    (report, stats)
}

fn worker_progress(id: WorkerId, w: &WorkerInfo, finished: bool) -> WorkerProgress {
    WorkerProgress {
        id,
        address: w.address.clone(),
        state: if w.lost {
            "lost"
        } else if finished {
            "done"
        } else {
            "running"
        }
        .into(),
        cores: w.cores,
        memory_budget: w.memory_budget,
        tasks_done: w.tasks_done,
        resident_bytes: w.resident,
        store: w.store,
        s3: w.s3,
    }
}

async fn serve(listener: tokio::net::TcpListener, shared: Arc<CoordShared>) -> anyhow::Result<()> {
    let guard = shared.guard.clone();
    let signed = Router::new()
        .route("/v1/job", get(job_handler))
        .route("/v1/register", post(register_handler))
        .route("/v1/sync", post(sync_handler))
        .route("/v1/gather", post(gather_handler))
        // Gathered blocks are whole small results (a 2-D mean of a large stack is tens of MB).
        .layer(axum::extract::DefaultBodyLimit::max(MAX_GATHERED_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            guard.clone(),
            crate::auth::require_signature,
        ))
        .with_state(shared.clone());
    // The progress is read-only: it also takes the token as a bearer, for `curl` on a trusted path
    // (docs/security.md); `arrayjob progress` and the operator sign.
    let progress = Router::new()
        .route("/v1/progress", get(progress_handler))
        .layer(axum::middleware::from_fn_with_state(
            guard,
            crate::auth::require_signature_or_bearer,
        ))
        .with_state(shared.clone());
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics_handler))
        .with_state(shared)
        .merge(signed)
        .merge(progress);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}

/// An address to dial for `bound`: itself, or loopback when it is every interface (`0.0.0.0`, `::`), which
/// nobody can dial.
fn dialable(bound: SocketAddr) -> SocketAddr {
    match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), bound.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), bound.port())
        }
        _ => bound,
    }
}

async fn job_handler(State(shared): State<Arc<CoordShared>>) -> Response {
    axum::Json(shared.desc.clone()).into_response()
}

async fn register_handler(
    State(shared): State<Arc<CoordShared>>,
    axum::Json(req): axum::Json<RegisterRequest>,
) -> Response {
    if req.plan_hash != shared.desc.plan_hash {
        shared.hash_refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(address = %req.address, hash = %req.plan_hash, "refused a worker with another plan hash");
        return (
            StatusCode::CONFLICT,
            format!(
                "worker at {} (version {}) computed plan hash {}, but this job's plan hash is {}: it runs \
                 another engine version or sees other source data; it cannot take part",
                req.address, req.version, req.plan_hash, shared.desc.plan_hash
            ),
        )
            .into_response();
    }
    let now = shared.now();
    let mut g = shared.lock();
    if g.finished || g.failure.is_some() {
        return (StatusCode::GONE, "the job is over").into_response();
    }
    let id = WorkerId(g.next_id);
    g.next_id += 1;
    g.workers.insert(id, WorkerInfo::joining(&req, now));
    tracing::info!(worker = id.0, address = %req.address, cores = req.cores, "worker joined");
    let actions = g.sched.add_worker(id, req.cores.max(1), now);
    route(&shared, &mut g, actions);
    axum::Json(RegisterResponse { worker: id }).into_response()
}

async fn sync_handler(
    State(shared): State<Arc<CoordShared>>,
    axum::Json(req): axum::Json<SyncRequest>,
) -> Response {
    let had_reports = !req.reports.is_empty();
    let wait = Duration::from_millis(req.wait_ms.min(5_000));
    let wake = {
        let mut g = shared.lock();
        match g.workers.get_mut(&req.worker) {
            None => return (StatusCode::NOT_FOUND, "unknown worker").into_response(),
            Some(w) if w.lost => {
                return (
                    StatusCode::GONE,
                    format!(
                        "worker {} was declared lost; its tasks went elsewhere",
                        req.worker.0
                    ),
                )
                    .into_response();
            }
            Some(w) => {
                w.last_seen = Instant::now();
                w.stages = req.stages;
                w.load_end = req.load_end_seconds;
                w.store = req.store;
                w.resident = req.resident_bytes;
                w.s3 = req.s3;
            }
        }
        for r in req.reports {
            take_report(&shared, &mut g, req.worker, r);
        }
        let over = g.finished || g.failure.is_some();
        match g.workers.get_mut(&req.worker) {
            Some(w) if req.take_commands && w.mailbox.is_empty() && !had_reports && !over => {
                Some(w.wake.clone())
            }
            _ => None,
        }
    };
    if let Some(wake) = wake {
        let _ = tokio::time::timeout(wait, wake.notified()).await;
    }
    let mut g = shared.lock();
    let finished = g.finished || g.failure.is_some();
    let commands = g
        .workers
        .get_mut(&req.worker)
        .map(|w| {
            w.last_seen = Instant::now();
            if req.take_commands {
                std::mem::take(&mut w.mailbox)
            } else {
                Vec::new()
            }
        })
        .unwrap_or_default();
    axum::Json(SyncResponse { commands, finished }).into_response()
}

/// Applies one worker report to the scheduler.
fn take_report(shared: &CoordShared, g: &mut CoordState, worker: WorkerId, r: Report) {
    let now = shared.now();
    let actions = match r {
        Report::Done {
            task,
            outputs,
            seconds,
            thread,
            ..
        } => {
            let kind = g.sched.graph().task(task).kind;
            let stage = stage_name(&shared.plan, kind);
            shared.metrics.task_done(&stage);
            g.spans.push(Span {
                worker,
                thread,
                stage,
                task: describe_task(&shared.plan, kind),
                start: (now - seconds).max(0.0),
                end: now,
            });
            if let Some(w) = g.workers.get_mut(&worker) {
                w.tasks_done += 1;
            }
            if !g.sched.is_done(task) {
                g.book.done(task);
                let bytes = outputs.iter().map(|&(_, b)| b).sum();
                g.clocks.entry(stage_node(kind)).or_default().record(
                    (now - seconds).max(0.0),
                    now,
                    bytes,
                );
            }
            g.sched.task_done(worker, task, &outputs, seconds, now)
        }
        Report::Shipped {
            object,
            keys,
            bytes,
            crc32c,
            ..
        } => {
            let names: Vec<_> = keys.iter().map(|&(k, _)| k).collect();
            let (accepted, actions) = g.sched.keys_shipped(worker, &names, now);
            g.book.shipped(
                StoredObject {
                    object,
                    keys,
                    bytes,
                    crc32c,
                },
                &accepted,
            );
            actions
        }
        Report::Damaged { keys } => {
            tracing::warn!(
                worker = worker.0,
                "spilled chunks came back damaged; rebuilding them"
            );
            g.sched.keys_unreadable(worker, &keys, now)
        }
        Report::ShipFailed { error } => {
            if g.failure.is_none() {
                g.failure = Some(format!("worker {}: {error}", worker.0));
            }
            Vec::new()
        }
        Report::Failed {
            task,
            input_unavailable: true,
            error,
            unreadable,
            ..
        } if !unreadable.is_empty() => {
            tracing::warn!(
                worker = worker.0,
                task = task.0,
                "inputs unreadable (object store or spill), rebuilding them: {error}"
            );
            for &k in &unreadable {
                g.book.forget(k);
            }
            let mut actions = g.sched.keys_unreadable(worker, &unreadable, now);
            actions.extend(g.sched.task_failed(worker, task, now));
            actions
        }
        Report::Failed {
            task,
            input_unavailable: true,
            error,
            ..
        } => {
            tracing::info!(
                worker = worker.0,
                task = task.0,
                "input unavailable: {error}"
            );
            let since = *g.unavailable.entry(task).or_insert_with(Instant::now);
            let limit =
                MAX_INPUT_WAIT.max(Duration::from_millis(shared.desc.worker_timeout_ms) * 3);
            if since.elapsed() > limit && g.failure.is_none() {
                let kind = g.sched.graph().task(task).kind;
                g.failure = Some(format!(
                    "{} could not get its inputs for {} s with every worker alive; last: {error}",
                    describe_task(&shared.plan, kind),
                    limit.as_secs()
                ));
            }
            g.sched.task_failed(worker, task, now)
        }
        Report::Failed { error, .. } => {
            if g.failure.is_none() {
                g.failure = Some(format!("worker {}: {error}", worker.0));
            }
            Vec::new()
        }
        Report::Moved {
            from,
            keys,
            bytes,
            seconds,
        } => {
            let mut actions = Vec::new();
            for key in keys {
                actions.extend(g.sched.key_moved(key, from, worker, now));
            }
            actions.extend(transfer(shared, g, from, worker, bytes, seconds));
            actions
        }
        Report::Transfer {
            from,
            bytes,
            seconds,
        } => transfer(shared, g, from, worker, bytes, seconds),
    };
    route(shared, g, actions);
}

/// Counts bytes `to` received from `from` and gives the scheduler the link's rate.
fn transfer(
    shared: &CoordShared,
    g: &mut CoordState,
    from: WorkerId,
    to: WorkerId,
    bytes: u64,
    seconds: f64,
) -> Vec<Action> {
    let now = shared.now();
    g.bytes_moved += bytes;
    shared.metrics.bytes_moved.inc_by(bytes);
    g.events.push(Event::Transfer {
        from,
        to,
        bytes,
        at: now,
        seconds,
    });
    g.sched.transfer_observed(from, to, bytes, seconds, now)
}

/// The stage a task belongs to, by name (loads: the source).
fn stage_name(plan: &Plan, kind: TaskKind) -> String {
    plan.nodes[stage_node(kind)].name.clone()
}

/// The plan node a task works for (loads work for the source, node 0).
fn stage_node(kind: TaskKind) -> usize {
    match kind {
        TaskKind::Load { .. } => 0,
        TaskKind::Merge { node, .. } | TaskKind::Combine { node, .. } => node,
    }
}

#[derive(serde::Deserialize)]
struct GatherQuery {
    node: usize,
    start: String,
    pixel: Option<usize>,
}

async fn gather_handler(
    State(shared): State<Arc<CoordShared>>,
    Query(q): Query<GatherQuery>,
    body: Bytes,
) -> Response {
    let start = match protocol::parse_index(&q.start) {
        Ok(s) => s,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    if q.node >= shared.plan.nodes.len() {
        return (StatusCode::BAD_REQUEST, format!("no node {}", q.node)).into_response();
    }
    // A resumable run keeps the block before acknowledging it: the task reported done after this has its
    // small outputs in the ledger.
    if let Some(ledger) = shared.ledger.clone() {
        let block = GatheredBlock {
            node: q.node,
            start: start.clone(),
            pixel: q.pixel,
            frame: body.clone(),
        };
        let stored = tokio::task::spawn_blocking(move || ledger.put_gathered(&block)).await;
        match stored {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
            Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        }
    }
    let sent = shared
        .gather
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(Gathered {
            node: q.node,
            start,
            pixel: q.pixel,
            frame: body,
        });
    match sent {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(_) => (StatusCode::GONE, "the job is over").into_response(),
    }
}

/// The progress snapshot: per stage, per worker, and the network. `GET /v1/progress` answers it as JSON;
/// the operator reads it back with this type (the fields it does not use default when absent, so a
/// coordinator of another version still gives its stages).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgressSnapshot {
    /// `running`, `finished` or `failed`.
    pub phase: String,
    /// Why it failed.
    pub failure: Option<String>,
    /// Seconds since the job started.
    #[serde(default)]
    pub elapsed_seconds: f64,
    /// When the job started (this coordinator's clock), seconds since the Unix epoch.
    #[serde(default)]
    pub started_at_unix: f64,
    /// Per stage: tasks done and total.
    pub stages: Vec<StageProgress>,
    /// Per worker.
    #[serde(default)]
    pub workers: Vec<WorkerProgress>,
    /// Bytes workers fetched from each other.
    #[serde(default)]
    pub bytes_moved: u64,
    /// Of these, pieces moved to their merge's worker as soon as they were written.
    #[serde(default)]
    pub bytes_moved_early: u64,
    /// Bytes workers spilled to their disks.
    #[serde(default)]
    pub spilled_bytes: u64,
    /// Tasks moved to idle workers, and why.
    #[serde(default)]
    pub steals: Vec<Steal>,
    /// Tasks given a second copy.
    #[serde(default)]
    pub speculated: usize,
    /// Tasks run again after a worker loss.
    #[serde(default)]
    pub recomputed: usize,
    /// Workers declared lost.
    #[serde(default)]
    pub workers_lost: usize,
    /// Requests refused for a missing or wrong token.
    #[serde(default)]
    pub auth_refused: u64,
    /// What went through the job's object store.
    #[serde(default)]
    pub store: StoreCounts,
}

/// One stage's tasks.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageProgress {
    /// Stage name.
    pub name: String,
    /// Tasks of the stage done (loads for the source, merges for a rechunk, combines for a reduction).
    pub tasks_done: usize,
    /// Tasks of the stage.
    pub tasks_total: usize,
    /// Bytes its tasks wrote so far.
    #[serde(default)]
    pub bytes_out: u64,
    /// When its first task started, seconds after the job started.
    pub start_seconds: Option<f64>,
    /// When its last task ended, once all are done.
    pub end_seconds: Option<f64>,
}

async fn progress_handler(State(shared): State<Arc<CoordShared>>) -> Response {
    axum::Json(progress_snapshot(&shared)).into_response()
}

fn progress_snapshot(shared: &CoordShared) -> ProgressSnapshot {
    let g = shared.lock();
    let mut per: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
    for (id, t) in g.sched.graph().tasks() {
        let e = per.entry(stage_node(t.kind)).or_default();
        e.1 += 1;
        if g.sched.is_done(id) {
            e.0 += 1;
        }
    }
    let finished = g.sched.finished();
    ProgressSnapshot {
        phase: match (&g.failure, finished) {
            (Some(_), _) => "failed",
            (None, true) => "finished",
            (None, false) => "running",
        }
        .into(),
        failure: g.failure.clone(),
        elapsed_seconds: shared.now(),
        started_at_unix: shared.started_at_unix,
        stages: per
            .into_iter()
            .map(|(node, (done, total))| {
                let clock = g.clocks.get(&node).copied().unwrap_or_default();
                StageProgress {
                    name: shared.plan.nodes[node].name.clone(),
                    tasks_done: done,
                    tasks_total: total,
                    bytes_out: clock.bytes,
                    start_seconds: clock.start,
                    end_seconds: (done == total && total > 0).then_some(clock.end),
                }
            })
            .collect(),
        workers: g
            .workers
            .iter()
            .map(|(&id, w)| worker_progress(id, w, finished))
            .collect(),
        bytes_moved: g.bytes_moved,
        bytes_moved_early: g.sched.moved_bytes(),
        spilled_bytes: g.workers.values().map(|w| w.store.spilled_bytes).sum(),
        steals: g.sched.steals().to_vec(),
        speculated: g.sched.speculated().len(),
        recomputed: g.sched.recomputed(),
        workers_lost: g.workers_lost,
        auth_refused: shared.guard.refused().load(Ordering::Relaxed),
        store: g.sched.store_counts(),
    }
}

async fn metrics_handler(State(shared): State<Arc<CoordShared>>) -> Response {
    shared
        .metrics
        .auth_refused
        .set(shared.guard.refused().load(Ordering::Relaxed) as i64);
    crate::metrics::openmetrics_response(shared.metrics.encode())
}

/// The loopback address of the `i`-th local worker: 127.0.0.2, 127.0.0.3, ... on through the whole 127/8
/// (127.0.1.0 follows 127.0.0.255), so every worker has its own, as on separate machines; None past the last
/// (127.255.255.254: 127.255.255.255 is the /8's broadcast address).
pub fn local_worker_host(i: usize) -> Option<Ipv4Addr> {
    let n = u32::try_from(i).ok()?.checked_add(2)?;
    (n < (1 << 24) - 1).then(|| Ipv4Addr::from(0x7f00_0000 | n))
}

/// Worker processes this coordinator started on loopback addresses.
struct LocalWorkers {
    children: Vec<std::process::Child>,
    /// The launch id of each child (it registers with it).
    launch_ids: Vec<String>,
    /// Whether each child's exit was already handed to the coordinator.
    seen_exit: Vec<bool>,
}

impl LocalWorkers {
    fn start(
        opts: &CoordinatorOptions,
        url: &str,
        staging: &Path,
    ) -> std::io::Result<LocalWorkers> {
        let mut workers = LocalWorkers {
            children: Vec::new(),
            launch_ids: Vec::new(),
            seen_exit: Vec::new(),
        };
        let Some((program, lead)) = opts.worker_command.split_first() else {
            return Ok(workers);
        };
        // Launch ids unique to this coordinator's run: a worker started by hand does not carry one.
        let mut run = [0u8; 8];
        getrandom::fill(&mut run).map_err(|e| std::io::Error::other(e.to_string()))?;
        let run = hex::encode(run);
        for i in 0..opts.local_workers {
            let host = local_worker_host(i).ok_or_else(|| {
                std::io::Error::other(format!(
                    "worker {i} has no loopback address of its own left (127.0.0.2 to 127.255.255.254)"
                ))
            })?;
            let listen = format!("{host}:0");
            let launch_id = format!("{run}-{i}");
            let mut cmd = std::process::Command::new(program);
            cmd.args(lead)
                .args(["--coordinator", url, "--listen", &listen])
                .args(["--threads", &opts.worker_threads.to_string()])
                .args(["--memory-limit", &format!("{}B", opts.worker_memory)])
                .arg("--spill-dir")
                .arg(staging.join(format!(".spill-w{i}")))
                .env("ARRAYJOB_TOKEN", opts.token.expose())
                .env("ARRAYJOB_LAUNCH_ID", &launch_id)
                .stdin(std::process::Stdio::null());
            if let Some(limit) = opts.worker_spill_disk_limit {
                cmd.args(["--spill-disk-limit", &format!("{limit}B")]);
            }
            let child = cmd.spawn()?;
            workers.children.push(child);
            workers.launch_ids.push(launch_id);
            workers.seen_exit.push(false);
        }
        Ok(workers)
    }

    /// The launch ids of the children that exited since the last call: those workers are gone now,
    /// whatever their last heartbeat says.
    fn newly_exited(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for ((c, id), seen) in self
            .children
            .iter_mut()
            .zip(&self.launch_ids)
            .zip(&mut self.seen_exit)
        {
            if !*seen && matches!(c.try_wait(), Ok(Some(_))) {
                *seen = true;
                out.push(id.clone());
            }
        }
        out
    }

    /// When every local worker has exited (and there were some): how they ended.
    fn exited(&mut self) -> Option<String> {
        if self.children.is_empty() {
            return None;
        }
        let mut how = Vec::new();
        for c in &mut self.children {
            match c.try_wait() {
                Ok(Some(status)) => how.push(format!("pid {}: {status}", c.id())),
                _ => return None,
            }
        }
        Some(how.join("; "))
    }

    fn wait_or_kill(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        for c in &mut self.children {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

impl Drop for LocalWorkers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_local_worker_has_its_own_loopback_address_across_the_whole_8() {
        let host = |i| local_worker_host(i).map(|h| h.to_string());
        assert_eq!(host(0).as_deref(), Some("127.0.0.2"));
        assert_eq!(host(252).as_deref(), Some("127.0.0.254"));
        // Beyond the 253rd, on into 127.0.1.x, ... (these shared 127.0.0.254 before).
        assert_eq!(host(253).as_deref(), Some("127.0.0.255"));
        assert_eq!(host(254).as_deref(), Some("127.0.1.0"));
        assert_eq!(host(1000).as_deref(), Some("127.0.3.234"));
        assert_eq!(host(70_000).as_deref(), Some("127.1.17.114"));
        let last = (1 << 24) - 4;
        assert_eq!(host(last).as_deref(), Some("127.255.255.254"));
        assert_eq!(
            host(last + 1),
            None,
            "127.255.255.255 is the broadcast address"
        );
        assert_eq!(host(usize::MAX), None);
        let mut seen = std::collections::HashSet::new();
        for i in 0..100_000 {
            let h = local_worker_host(i).expect("an address");
            assert!(h.is_loopback() && h != Ipv4Addr::LOCALHOST, "{h}");
            assert!(seen.insert(h), "worker {i} shares {h}");
        }
    }

    fn registered(address: &str, launch_id: Option<&str>) -> WorkerInfo {
        WorkerInfo::joining(
            &RegisterRequest {
                address: address.into(),
                cores: 1,
                memory_budget: 1 << 20,
                plan_hash: "00".into(),
                version: "0".into(),
                launch_id: launch_id.map(str::to_owned),
            },
            0.0,
        )
    }

    #[test]
    fn an_exited_local_process_loses_exactly_its_worker_not_others_on_its_host() {
        let mut workers = BTreeMap::new();
        // Two local workers on one host (as 127.0.0.254 was shared past the 253rd), a worker started by hand
        // on it too, and one whose address starts with the same characters.
        workers.insert(WorkerId(0), registered("127.0.0.254:4001", Some("r-252")));
        workers.insert(WorkerId(1), registered("127.0.0.254:4002", Some("r-253")));
        workers.insert(WorkerId(2), registered("127.0.0.254:4003", None));
        workers.insert(WorkerId(3), registered("127.0.0.25:4004", Some("r-23")));
        let long = Duration::from_secs(3600);
        assert_eq!(lost_now(&workers, long, &[]), vec![]);
        assert_eq!(
            lost_now(&workers, long, &["r-253".into()]),
            vec![WorkerId(1)]
        );
        assert_eq!(
            lost_now(&workers, long, &["r-252".into(), "r-2".into()]),
            vec![WorkerId(0)]
        );
        // Already lost: not lost again; silence still loses a worker whatever its launch id.
        workers.get_mut(&WorkerId(1)).expect("w1").lost = true;
        assert_eq!(lost_now(&workers, long, &["r-253".into()]), vec![]);
        assert_eq!(
            lost_now(&workers, Duration::ZERO, &[]),
            vec![WorkerId(0), WorkerId(2), WorkerId(3)]
        );
    }

    #[test]
    fn local_workers_dial_loopback_when_the_coordinator_listens_everywhere() {
        let at = |s: &str| s.parse::<SocketAddr>().expect("address");
        assert_eq!(dialable(at("0.0.0.0:7070")), at("127.0.0.1:7070"));
        assert_eq!(dialable(at("[::]:7070")), at("[::1]:7070"));
        assert_eq!(dialable(at("10.1.2.3:7070")), at("10.1.2.3:7070"));
    }
}

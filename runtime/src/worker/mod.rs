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
//!
//! Its parts: `join` (the client to the coordinator, and joining), `shared` (what the threads share),
//! `talk` (the loops with the coordinator and its commands), `exec` (the compute threads), `sink` (where
//! finished blocks go), `serve` (the data server peers fetch from, and its client) and `error`.
//!
//! [`Command::Move`]: crate::protocol::Command::Move

mod error;
mod exec;
mod join;
mod serve;
mod shared;
mod sink;
mod talk;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use arrayjob_auth::{Guard, Token};
use arrayjob_engine::exec::JobProgress;
use arrayjob_engine::graph::TaskGraph;
use arrayjob_engine::runner::Prepared;
use arrayjob_engine::s3::objects::{Bucket, S3Location};
use arrayjob_engine::schedule::WorkerId;
use arrayjob_engine::store::{ChunkStore, FileSpill};

pub use self::error::{ADVERTISE_HINT, FetchError, WorkerError};
pub use self::join::{DEFAULT_JOIN_TIMEOUT, advertised_address};
pub use self::serve::{DataServer, fetch_keys, serve_data};

use self::exec::{compute, report_when_written};
use self::join::{Http, fetch_job, prepare, register, spill_backend};
use self::shared::{Moves, SHIP_CONCURRENCY, Shared};
use self::sink::WorkerSink;
use self::talk::{report_damaged, talk};
use crate::metrics::WorkerMetrics;
use crate::protocol::{JobDescription, RegisterRequest, Report};

/// How a worker is started (flags and environment variables of `arrayjob worker`).
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
    /// How long to wait for the coordinator to answer at all before giving up (a worker may start before
    /// its coordinator listens): [`DEFAULT_JOIN_TIMEOUT`] from the command line.
    pub join_timeout: Duration,
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

/// A worker that joined its job: what it was told, who it is, and where it serves.
struct Joined {
    desc: JobDescription,
    job: Prepared,
    id: WorkerId,
    address: String,
    listener: tokio::net::TcpListener,
}

/// Runs a worker until its job is over.
///
/// # Errors
/// When it cannot reach the coordinator, is refused by it (wrong token, another plan hash), cannot build the
/// job's plan, or loses the coordinator while the job runs.
pub fn run(opts: WorkerOptions) -> Result<WorkerOutcome, WorkerError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("arrayjob-io")
        .enable_all()
        .build()
        .map_err(WorkerError::Runtime)?;
    let http = Http {
        client: reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(WorkerError::Client)?,
        coordinator: opts.coordinator.trim_end_matches('/').to_string(),
        token: opts.token.clone(),
        rt: rt.handle().clone(),
    };
    let joined = join(&opts, &http, &rt)?;
    tracing::info!(worker = joined.id.0, address = %joined.address, "joined the job");
    let Joined {
        desc,
        job,
        id,
        address,
        listener,
    } = joined;
    let shared = Arc::new(start(&opts, &desc, job, id, http)?);
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
    run_threads(&shared, opts.threads.max(1));
    let ended = rt
        .block_on(loops)
        .map_err(|e| WorkerError::Panicked(e.to_string()))?;
    server.abort();
    ended?;
    Ok(WorkerOutcome {
        worker: id,
        tasks: shared.tasks_done.load(Ordering::Relaxed),
    })
}

/// Listens, asks the coordinator for the job, finds the address peers reach this worker at, builds the
/// plan (refusing another plan hash than expected) and registers. The plan is built outside the async
/// runtime: opening the source may open S3 connections, which block on the process-wide S3 runtime.
fn join(
    opts: &WorkerOptions,
    http: &Http,
    rt: &tokio::runtime::Runtime,
) -> Result<Joined, WorkerError> {
    let (listener, desc, address) = rt.block_on(contact(opts, http))?;
    let job = prepare(&desc)?;
    if let Some(want) = &opts.expect_plan_hash
        && *want != desc.plan_hash
    {
        return Err(WorkerError::PlanHash {
            coordinator: http.coordinator.clone(),
            theirs: desc.plan_hash.clone(),
            expected: want.clone(),
        });
    }
    let id = rt.block_on(register(
        http,
        &RegisterRequest {
            address: address.clone(),
            cores: opts.threads.max(1),
            memory_budget: opts.memory_budget as u64,
            plan_hash: job.plan.hash.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            launch_id: opts.launch_id.clone(),
        },
    ))?;
    Ok(Joined {
        desc,
        job,
        id,
        address,
        listener,
    })
}

/// Listens, asks the coordinator for the job and finds the address peers reach this worker at.
async fn contact(
    opts: &WorkerOptions,
    http: &Http,
) -> Result<(tokio::net::TcpListener, JobDescription, String), WorkerError> {
    let listen = |source| WorkerError::Listen {
        address: opts.listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(listen)?;
    let bound = listener.local_addr().map_err(listen)?;
    let desc = fetch_job(http, opts.join_timeout).await?;
    let address = advertised_address(opts.advertise.as_deref(), bound, &http.coordinator).await?;
    Ok((listener, desc, address))
}

/// What the worker's threads share once it joined: its store (spilling to disk, then the job's S3 scratch),
/// its sink, and the job's scratch bucket.
fn start(
    opts: &WorkerOptions,
    desc: &JobDescription,
    job: Prepared,
    id: WorkerId,
    http: Http,
) -> Result<Shared, WorkerError> {
    let spill = FileSpill::new(&opts.spill_dir).map_err(|source| WorkerError::Spill {
        dir: opts.spill_dir.clone(),
        source,
    })?;
    let spill = spill_backend(spill, &job, desc, id, opts.spill_disk_limit)?;
    let graph = TaskGraph::build(&job.plan)?;
    let sink = WorkerSink::open(&job, desc, http.clone())?;
    let store_bucket = desc
        .scratch
        .as_deref()
        .map(|uri| -> Result<Bucket, WorkerError> {
            let location = S3Location::parse("scratch", uri)?;
            Ok(arrayjob_engine::s3::bucket(
                job.manifest.spec.s3_storage(),
                &location.bucket,
            )?)
        })
        .transpose()?;
    Ok(Shared {
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
    })
}

/// Runs `threads` compute threads and the thread reporting finished tasks once their files are written,
/// until the job is over.
fn run_threads(shared: &Arc<Shared>, threads: usize) {
    std::thread::scope(|s| {
        let (written_tx, written_rx) = std::sync::mpsc::channel::<(Report, Vec<u64>)>();
        for t in 0..threads {
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
}

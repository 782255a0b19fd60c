//! What the coordinator knows while a job runs: the scheduler, every worker that joined (its mailbox, its
//! last report of progress and store), the job's failure, and what the reports and the progress snapshot are
//! drawn from; and how a task or stage is named for a user.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::ledger::Ledger;
use arrayjob_auth::Guard;
use arrayjob_engine::exec::NodeSnapshot;
use arrayjob_engine::graph::TaskKind;
use arrayjob_engine::plan::{Plan, unlinear};
use arrayjob_engine::s3::objects::{Bucket, S3Counters};
use arrayjob_engine::schedule::{Scheduler, WorkerId};
use arrayjob_engine::store::StoreStats;
use axum::body::Bytes;

use super::options::CoordinatorOptions;
use super::report::{DistributedReport, Event, Span};
use crate::exchange::StoreBook;
use crate::metrics::CoordinatorMetrics;
use crate::protocol::{Command, JobDescription, RegisterRequest};
use arrayjob_spec::progress::{
    JobPhase, ProgressSnapshot, StageProgress, WorkerProgress, WorkerState,
};

/// A block of a small output sent by a worker.
pub(super) struct Gathered {
    pub(super) node: usize,
    pub(super) start: Vec<usize>,
    pub(super) pixel: Option<usize>,
    pub(super) frame: Bytes,
}

/// A worker that joined: where it is, what it offered, its mailbox, and its last report.
pub(super) struct WorkerInfo {
    pub(super) address: String,
    /// The id this coordinator gave the process when it started it (local workers only).
    pub(super) launch_id: Option<String>,
    pub(super) cores: usize,
    pub(super) memory_budget: u64,
    pub(super) last_seen: Instant,
    /// Seconds between the job's start and the worker's registration.
    pub(super) joined: f64,
    pub(super) lost: bool,
    pub(super) mailbox: Vec<Command>,
    pub(super) wake: Arc<tokio::sync::Notify>,
    pub(super) stages: Vec<NodeSnapshot>,
    pub(super) load_end: f64,
    pub(super) store: StoreStats,
    pub(super) resident: u64,
    pub(super) tasks_done: usize,
    pub(super) s3: S3Counters,
}

impl WorkerInfo {
    /// A worker registering now, `joined` seconds after the job started.
    pub(super) fn joining(req: &RegisterRequest, joined: f64) -> WorkerInfo {
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

/// What changes while the job runs, behind one lock.
pub(super) struct CoordState {
    pub(super) sched: Scheduler,
    pub(super) workers: BTreeMap<WorkerId, WorkerInfo>,
    pub(super) next_id: u32,
    pub(super) failure: Option<String>,
    pub(super) finished: bool,
    pub(super) bytes_moved: u64,
    pub(super) workers_lost: usize,
    pub(super) spans: Vec<Span>,
    pub(super) events: Vec<Event>,
    /// When the job last had a live worker.
    pub(super) last_alive: Instant,
    /// Per task: when a run of it first could not get an input since the last worker loss.
    pub(super) unavailable: HashMap<arrayjob_engine::graph::TaskId, Instant>,
    /// Which object holds each key in the job's object store, and what the ledger is to be told.
    pub(super) book: StoreBook,
    /// Per plan node: when its first task started and its last one ended, and the bytes its tasks wrote.
    pub(super) clocks: BTreeMap<usize, StageClock>,
}

/// When a stage's work ran, and what it wrote (first completion of each task only).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct StageClock {
    pub(super) start: Option<f64>,
    pub(super) end: f64,
    pub(super) bytes: u64,
}

impl StageClock {
    pub(super) fn record(&mut self, start: f64, end: f64, bytes: u64) {
        self.start = Some(self.start.map_or(start, |s| s.min(start)));
        self.end = self.end.max(end);
        self.bytes += bytes;
    }
}

/// What the coordinator's loop and its HTTP handlers share.
pub(super) struct CoordShared {
    pub(super) state: Mutex<CoordState>,
    pub(super) desc: JobDescription,
    pub(super) plan: Plan,
    pub(super) started: Instant,
    /// `started` on the wall clock, seconds since the Unix epoch.
    pub(super) started_at_unix: f64,
    pub(super) gather: Mutex<std::sync::mpsc::Sender<Gathered>>,
    pub(super) guard: Guard,
    pub(super) metrics: CoordinatorMetrics,
    pub(super) probe_bytes: u64,
    pub(super) hash_refused: AtomicU64,
    /// The run's ledger (a resumable run) and the scratch bucket (exchange objects).
    pub(super) ledger: Option<Arc<Ledger>>,
    pub(super) store_bucket: Option<Bucket>,
}

impl CoordShared {
    /// The shared state of a job about to start: no worker yet, the scheduler and the book as the ledger
    /// left them (a resumed run).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        sched: Scheduler,
        book: StoreBook,
        desc: JobDescription,
        plan: Plan,
        gather: std::sync::mpsc::Sender<Gathered>,
        opts: &CoordinatorOptions,
        ledger: Option<Arc<Ledger>>,
        store_bucket: Option<Bucket>,
    ) -> CoordShared {
        CoordShared {
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
            plan,
            started: Instant::now(),
            started_at_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            gather: Mutex::new(gather),
            guard: Guard::new(opts.token.clone()),
            metrics: CoordinatorMetrics::new(),
            probe_bytes: opts.scheduler.probe_bytes,
            hash_refused: AtomicU64::new(0),
            ledger,
            store_bucket,
        }
    }

    /// Seconds since the job started.
    pub(super) fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// The state, locked (a panic while it was held leaves it as it was: the job goes on).
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, CoordState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
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

/// The stage a task belongs to, by name (loads: the source).
pub(super) fn stage_name(plan: &Plan, kind: TaskKind) -> String {
    plan.nodes[stage_node(kind)].name.clone()
}

/// The plan node a task works for (loads work for the source, node 0).
pub(super) fn stage_node(kind: TaskKind) -> usize {
    match kind {
        TaskKind::Load { .. } => 0,
        TaskKind::Merge { node, .. } | TaskKind::Combine { node, .. } => node,
    }
}

/// A worker as the progress snapshot and the report show it.
pub(super) fn worker_progress(id: WorkerId, w: &WorkerInfo, finished: bool) -> WorkerProgress {
    WorkerProgress {
        id,
        address: w.address.clone(),
        state: WorkerState::of(w.lost, finished),
        cores: w.cores,
        memory_budget: w.memory_budget,
        tasks_done: w.tasks_done,
        resident_bytes: w.resident,
        store: w.store,
        s3: w.s3,
    }
}

/// The progress snapshot now.
pub(super) fn progress_snapshot(shared: &CoordShared) -> ProgressSnapshot {
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
        phase: JobPhase::of(g.failure.is_some(), finished),
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

/// The run's report once it is over, and its workers' store counters summed.
pub(super) fn final_report(shared: &CoordShared, url: &str) -> (DistributedReport, StoreStats) {
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
